#[derive(truffle_actors::Syncable)]
#[syncable(id = "todos", id = "todos-v2")]
struct TodoState;

fn main() {}

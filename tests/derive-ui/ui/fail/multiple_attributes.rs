#[derive(truffle_actors::Syncable)]
#[syncable(id = "todos")]
#[syncable(id = "todos-v2")]
struct TodoState;

fn main() {}

#[derive(truffle_actors::Syncable)]
#[syncable(idd = "todos")]
struct Misspelled;

#[derive(truffle_actors::Syncable)]
#[syncable(id = "todos", name = "Todos")]
struct ExtraKey;

fn main() {}

#[derive(truffle_actors::Syncable)]
#[syncable(id)]
struct IdWithoutValue;

#[derive(truffle_actors::Syncable)]
#[syncable = "todos"]
struct NameValue;

#[derive(truffle_actors::Syncable)]
#[syncable]
struct BarePath;

fn main() {}

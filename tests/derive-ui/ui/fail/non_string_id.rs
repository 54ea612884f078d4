#[derive(truffle_actors::Syncable)]
#[syncable(id = 5)]
struct Number;

#[derive(truffle_actors::Syncable)]
#[syncable(id = todos)]
struct Ident;

fn main() {}

#[derive(truffle_actors::Syncable)]
#[syncable()]
struct TodoState {
    items: Vec<String>,
}

fn main() {}

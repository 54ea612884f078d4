#[derive(truffle_actors::Syncable)]
struct TodoState {
    items: Vec<String>,
}

fn main() {}

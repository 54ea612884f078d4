#[derive(truffle_actors::Syncable)]
#[syncable(idd = "x", id = "bad id!")]
struct TodoState {
    items: Vec<String>,
}

fn main() {}

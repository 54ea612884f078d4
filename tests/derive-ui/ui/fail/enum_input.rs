#[derive(truffle_actors::Syncable)]
#[syncable(id = "mode")]
enum Mode {
    Light,
    Dark,
}

fn main() {}

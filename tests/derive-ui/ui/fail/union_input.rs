#[derive(truffle_actors::Syncable)]
#[syncable(id = "bits")]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}

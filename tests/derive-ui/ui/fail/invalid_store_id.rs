#[derive(truffle_actors::Syncable)]
#[syncable(id = "my todos")]
struct Space;

#[derive(truffle_actors::Syncable)]
#[syncable(id = "app/todos")]
struct Slash;

#[derive(truffle_actors::Syncable)]
#[syncable(id = "")]
struct Empty;

#[derive(truffle_actors::Syncable)]
// 129 bytes, split with a string continuation to keep the line short.
#[syncable(id = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
                 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")]
struct TooLong;

fn main() {}

use serde::{Deserialize, Serialize};

#[derive(truffle_actors::Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "my_app.todos-v2")]
struct Todos {
    count: u64,
}

// Raw strings, trailing commas and the full charset are accepted.
#[derive(truffle_actors::Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = r"AZaz09._-",)]
struct Everything {}

fn main() {
    assert_eq!(<Todos as truffle_actors::Syncable>::STORE_ID, "my_app.todos-v2");
    assert_eq!(<Everything as truffle_actors::Syncable>::STORE_ID, "AZaz09._-");
    assert_eq!(Todos::default().count, 0);
}

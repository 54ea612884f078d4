use serde::{Deserialize, Serialize};

#[derive(truffle_actors::Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "counter")]
struct Counter(u64);

#[derive(truffle_actors::Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "presence")]
struct Presence;

fn main() {
    assert_eq!(<Counter as truffle_actors::Syncable>::STORE_ID, "counter");
    assert_eq!(<Presence as truffle_actors::Syncable>::STORE_ID, "presence");
    assert_eq!(Counter::default().0, 0);
}

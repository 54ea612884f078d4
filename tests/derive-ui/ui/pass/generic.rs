use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

// The derive copies generics and where clauses onto the impl unchanged, so
// the parameters must be bounded for `Wrapper<T>` to meet the supertraits of
// `Syncable`. `DeserializeOwned` in the struct's bounds clashes with the
// `T: Deserialize<'de>` bound serde would add, hence
// `#[serde(bound(deserialize = ""))]`: the struct's bounds already suffice.
#[derive(truffle_actors::Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(bound(deserialize = ""))]
#[syncable(id = "wrapper")]
struct Wrapper<T>
where
    T: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static,
{
    inner: T,
}

// Inline bounds and const generics work too.
#[derive(truffle_actors::Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(bound(deserialize = ""))]
#[syncable(id = "pair")]
struct Pair<A: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static, const N: usize>
{
    values: Vec<A>,
}

fn store_id<S: truffle_actors::Syncable>() -> &'static str {
    S::STORE_ID
}

fn main() {
    assert_eq!(<Wrapper<u32> as truffle_actors::Syncable>::STORE_ID, "wrapper");
    assert_eq!(<Wrapper<String> as truffle_actors::Syncable>::STORE_ID, "wrapper");
    assert_eq!(store_id::<Wrapper<Vec<u8>>>(), "wrapper");
    assert_eq!(<Pair<i64, 3> as truffle_actors::Syncable>::STORE_ID, "pair");
    assert_eq!(Wrapper::<u32>::default().inner, 0);
    assert!(Pair::<i64, 3>::default().values.is_empty());
}

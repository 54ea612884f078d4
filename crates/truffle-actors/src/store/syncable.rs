// The `Syncable` trait, alone in this file so that the derive's UI tests
// (tests/derive-ui) compile the very same trait without the runtime: see the comment in
// tests/derive-ui/src/lib.rs. Paths are absolute because the file is `include!`d.

/// A data type that is a synced store of its own: what `#[derive(Syncable)]` implements.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use truffle_actors::Syncable;
///
/// #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
/// #[syncable(id = "presence")]
/// struct Presence { status: String }
///
/// assert_eq!(Presence::STORE_ID, "presence");
/// ```
pub trait Syncable:
    ::serde::Serialize + ::serde::de::DeserializeOwned + Clone + Default + Send + Sync + 'static
{
    /// The store id; every node that joins this store uses it to name the gossip topic.
    const STORE_ID: &'static str;
}

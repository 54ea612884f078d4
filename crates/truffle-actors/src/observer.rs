//! Read-only observers of a store ([`crate::MeshNode::observe`]): every device's slice,
//! decoded from MessagePack without knowing the store's type, and no slice of its own.

use std::time::Duration;

use serde_json::Value;

use crate::ids::StoreId;
use crate::store::{RemoteSlices, Store, StoreEvents};

/// A store joined read-only (see [`crate::MeshNode::observe`]). Cheap to clone.
///
/// Slice data arrives as [`serde_json::Value`], decoded from the slice's MessagePack
/// without knowing the type that wrote it. Data that JSON cannot hold (MessagePack binary
/// or extension values, maps with non-string keys that are not numbers) does not decode;
/// such a slice is dropped here and counted as `data_decode`.
#[derive(Clone)]
pub struct Observer {
    store: Store<Value>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("store", self.store.id())
            .finish_non_exhaustive()
    }
}

/// Every device's slice an observer holds (cheap to clone: see [`RemoteSlices`]).
pub type ObservedSlices = RemoteSlices<Value>;

impl Observer {
    pub(crate) fn new(store: Store<Value>) -> Self {
        Self { store }
    }

    /// The store observed.
    pub fn id(&self) -> &StoreId {
        self.store.id()
    }

    /// Every live device's slice, as held now.
    pub fn slices(&self) -> ObservedSlices {
        self.store.snapshot().remote.clone()
    }

    /// Follows changes: `RemoteUpdated`, `RemoteRemoved`, `RemoteUndecodable`, `Lagged`
    /// (never `LocalChanged`: an observer writes nothing).
    pub fn subscribe(&self) -> StoreEvents<Value> {
        self.store.subscribe()
    }

    /// Waits until `cond` holds for the slices, or `timeout` passes; returns the slices
    /// that satisfied it, or the last ones seen as the error.
    pub async fn wait_until<F>(
        &self,
        timeout: Duration,
        mut cond: F,
    ) -> Result<ObservedSlices, ObservedSlices>
    where
        F: FnMut(&ObservedSlices) -> bool,
    {
        self.store
            .wait_until(timeout, |s| cond(&s.remote))
            .await
            .map(|s| s.remote.clone())
            .map_err(|s| s.remote.clone())
    }
}

//! Persistence: what a node keeps on disk between runs, behind a small [`Storage`] trait.
//!
//! The store actors never touch the disk. A write hands the newest slice to the node's
//! writer thread, which keeps only the newest pending slice per store
//! (last write wins, like publishing) and commits whatever is pending in one transaction.
//! So `Store::update` never waits for the disk, and a burst of writes costs one commit.

mod memory;
mod redb_store;
mod writer;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ids::{DeviceId, Incarnation, StoreId, Version};

pub use memory::MemoryStorage;
pub use redb_store::RedbStorage;
pub(crate) use writer::{Persistence, StorePersist};

/// A slice as saved: the data stays MessagePack (as on the wire), so saving and loading
/// never need the store's Rust type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedSlice {
    /// The device that wrote it.
    pub device_id: DeviceId,
    /// Its version when it was saved.
    pub version: Version,
    /// When the owner wrote it (milliseconds since the Unix epoch, the owner's clock).
    pub updated_at: u64,
    /// The slice data, MessagePack with named fields.
    pub data: Vec<u8>,
}

/// Another device's slice kept for the offline view (see
/// [`crate::MeshNodeBuilder::offline_view`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRemote {
    /// The slice last received from that device.
    pub slice: SavedSlice,
    /// When this node last saw the device (milliseconds since the Unix epoch, this node's
    /// clock).
    pub last_seen: u64,
}

/// One change for [`Storage::write`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SavedWrite {
    /// This device's slice of `store` (replaces the saved one).
    Local {
        /// The store.
        store: StoreId,
        /// The slice.
        slice: SavedSlice,
    },
    /// Another device's last slice of `store` (replaces the one saved for that device).
    Remote {
        /// The store.
        store: StoreId,
        /// The slice and when it was last seen.
        remote: SavedRemote,
    },
}

/// Where a node keeps its data between runs. [`RedbStorage`] (what
/// [`crate::MeshNodeBuilder::data_dir`] uses) and [`MemoryStorage`] (tests) are built in;
/// an application can bring its own through [`crate::MeshNodeBuilder::storage`].
///
/// `write` is called from the node's writer thread; `claim_incarnation` once from
/// `start()` and the loads once per store from `store()` / `join()`, which they block
/// while they run, so keep them short. Errors should name the file and say what to do
/// ([`crate::Error::Storage`]).
pub trait Storage: Send + Sync + 'static {
    /// Where the data lives, for errors and logs.
    fn location(&self) -> &Path;

    /// Returns an incarnation for this run: `candidate`, or one more than the highest ever
    /// claimed from this storage if that is higher (the clock went back). It is saved
    /// before returning, so incarnations only grow, and a restored slice published under
    /// it is newer than anything an earlier run published.
    fn claim_incarnation(&self, candidate: Incarnation) -> Result<Incarnation>;

    /// This device's saved slice of `store`, if any.
    fn load_local(&self, store: &StoreId) -> Result<Option<SavedSlice>>;

    /// Other devices' saved slices of `store` (the offline view).
    fn load_remote(&self, store: &StoreId) -> Result<Vec<SavedRemote>>;

    /// Saves `batch` atomically: after a crash either all of it or none of it is there.
    /// Returns once it is durable.
    fn write(&self, batch: &[SavedWrite]) -> Result<()>;
}

/// The on-disk record of a slice (MessagePack, named fields, like the wire).
#[derive(Serialize, Deserialize)]
struct Record {
    /// Record format; 1 today.
    v: u8,
    device: String,
    incarnation: u64,
    counter: u64,
    updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen: Option<u64>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

const RECORD_FORMAT: u8 = 1;

impl SavedSlice {
    /// Encodes the slice (with `last_seen` for the offline view) as a self-describing
    /// record: what [`RedbStorage`] keeps, and a ready format for other backends.
    pub fn to_record(&self, last_seen: Option<u64>) -> Vec<u8> {
        let r = Record {
            v: RECORD_FORMAT,
            device: self.device_id.to_string(),
            incarnation: self.version.incarnation,
            counter: self.version.counter,
            updated_at: self.updated_at,
            last_seen,
            data: self.data.clone(),
        };
        // Encoding a struct of integers, a string and bytes into a Vec cannot fail.
        rmp_serde::to_vec_named(&r).unwrap_or_default()
    }

    /// Decodes [`to_record`](Self::to_record)'s output; the error says what is wrong.
    pub fn from_record(bytes: &[u8]) -> std::result::Result<(Self, Option<u64>), String> {
        let r: Record =
            rmp_serde::from_slice(bytes).map_err(|e| format!("unreadable slice record: {e}"))?;
        if r.v != RECORD_FORMAT {
            return Err(format!(
                "slice record format {} is not {RECORD_FORMAT} (written by a newer Truffle?)",
                r.v
            ));
        }
        let device_id = r
            .device
            .parse()
            .map_err(|e| format!("slice record names no valid device: {e}"))?;
        Ok((
            SavedSlice {
                device_id,
                version: Version::new(r.incarnation, r.counter),
                updated_at: r.updated_at,
                data: r.data,
            },
            r.last_seen,
        ))
    }
}

#[cfg(test)]
mod tests;

//! Stores: the contract ([`SyncableStore`]), the generic implementation ([`SliceStore`]),
//! the actor that owns one, and the typed handle ([`Store`]) the application holds.

mod actor;
mod durable;
mod handle;
mod inbox;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ids::{DeviceId, StoreId, Version};
use crate::slice::DeviceSlice;

pub(crate) use actor::{
    sink_for, spawn_store, Outbox, StoreInput, StoreParams, StorePort, StoreSink,
};
pub use handle::{Store, StoreEvents};

include!("syncable.rs");

/// Why a remote device's slice was removed from a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalReason {
    /// The device shut down gracefully and said so (signed leave).
    Left,
    /// This node heard nothing from the device for the presence timeout.
    Timeout,
    /// The device restarted (new incarnation) and no longer has a slice in this store.
    Restarted,
}

impl RemovalReason {
    /// `left`, `timeout` or `restarted`: the name in logs, metric labels and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            RemovalReason::Left => "left",
            RemovalReason::Timeout => "timeout",
            RemovalReason::Restarted => "restarted",
        }
    }
}

impl fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change in a store, delivered to every subscriber (see [`Store::subscribe`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreEvent<T> {
    /// This device's slice changed (after [`Store::update`]).
    LocalChanged {
        /// The new local slice.
        slice: Arc<DeviceSlice<T>>,
    },
    /// A remote device's slice arrived or was replaced by a newer version.
    RemoteUpdated {
        /// The new remote slice.
        slice: Arc<DeviceSlice<T>>,
    },
    /// A remote device's slice was removed.
    RemoteRemoved {
        /// The device whose slice is gone.
        device_id: DeviceId,
        /// Why.
        reason: RemovalReason,
    },
    /// A slice from a remote device did not decode as this node's type of the store (the
    /// two apps changed the type incompatibly; see the book's "Changing a store type").
    /// Reported once per device until a slice of it decodes again; the store keeps the
    /// device's last readable slice, if any, and goes on syncing with everyone else.
    /// Each such slice is also counted in [`crate::Metrics`] as `data_decode`.
    RemoteUndecodable {
        /// The device whose slice was dropped.
        device_id: DeviceId,
        /// The dropped version.
        version: Version,
        /// The decoder's message: which field or variant did not fit.
        reason: String,
    },
    /// This subscriber fell more than the event buffer behind and missed `missed` events.
    /// Nothing was dropped silently: read [`Store::snapshot`] to resynchronise.
    Lagged {
        /// How many events were skipped.
        missed: u64,
    },
}

impl<T> Clone for StoreEvent<T> {
    fn clone(&self) -> Self {
        match self {
            StoreEvent::LocalChanged { slice } => StoreEvent::LocalChanged {
                slice: slice.clone(),
            },
            StoreEvent::RemoteUpdated { slice } => StoreEvent::RemoteUpdated {
                slice: slice.clone(),
            },
            StoreEvent::RemoteRemoved { device_id, reason } => StoreEvent::RemoteRemoved {
                device_id: *device_id,
                reason: *reason,
            },
            StoreEvent::RemoteUndecodable {
                device_id,
                version,
                reason,
            } => StoreEvent::RemoteUndecodable {
                device_id: *device_id,
                version: *version,
                reason: reason.clone(),
            },
            StoreEvent::Lagged { missed } => StoreEvent::Lagged { missed: *missed },
        }
    }
}

/// The last slice of a device that is no longer live, kept for the offline view (see
/// [`crate::MeshNodeBuilder::offline_view`] and [`Store::offline`]).
#[derive(Debug)]
pub struct OfflineSlice<T> {
    /// The device's last slice this node received.
    pub slice: Arc<DeviceSlice<T>>,
    /// When this node last saw the device, in milliseconds since the Unix epoch (this
    /// node's clock): when it was removed, or when this node stopped while it was live.
    pub last_seen: u64,
}

impl<T> Clone for OfflineSlice<T> {
    fn clone(&self) -> Self {
        Self {
            slice: self.slice.clone(),
            last_seen: self.last_seen,
        }
    }
}

/// Every other live device's slice of a store, by device: a persistent ordered map
/// ([`imbl::OrdMap`]), read like a `BTreeMap` (`get`, `len`, `iter`, `keys`, `values`).
///
/// A store publishes a new snapshot at every change, so the map is one that shares its
/// unchanged parts between versions: a change costs O(log n) and cloning it O(1), where a
/// `BTreeMap` had to be copied whole, every slice pointer of every device, at every event.
pub type RemoteSlices<T> = imbl::OrdMap<DeviceId, Arc<DeviceSlice<T>>>;

/// Every live device's slice of a store, as this node holds it: the seed's `useSyncedStore`.
#[derive(Debug)]
pub struct StoreSnapshot<T> {
    /// This device's slice.
    pub local: Arc<DeviceSlice<T>>,
    /// Every other live device's latest slice, by device.
    pub remote: RemoteSlices<T>,
}

impl<T> Clone for StoreSnapshot<T> {
    fn clone(&self) -> Self {
        Self {
            local: self.local.clone(),
            remote: self.remote.clone(),
        }
    }
}

impl<T> StoreSnapshot<T> {
    /// All slices, this device's first, then the others by device id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<DeviceSlice<T>>> {
        std::iter::once(&self.local).chain(self.remote.values())
    }

    /// One device's slice (this device's included).
    pub fn get(&self, device: &DeviceId) -> Option<&Arc<DeviceSlice<T>>> {
        if *device == self.local.device_id {
            Some(&self.local)
        } else {
            self.remote.get(device)
        }
    }

    /// Number of devices held, this one included.
    pub fn len(&self) -> usize {
        1 + self.remote.len()
    }

    /// Always false: a snapshot holds at least this device's slice.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The version held for each device.
    pub fn versions(&self) -> BTreeMap<DeviceId, Version> {
        self.iter().map(|s| (s.device_id, s.version)).collect()
    }
}

/// The store contract from Truffle's `ISyncableStore`, for stores written by hand.
///
/// The store actor is the only caller: it calls [`init`](Self::init) once, then the other
/// methods as local writes and remote slices arrive, and [`on_event`](Self::on_event) after
/// every change it reports to subscribers. [`SliceStore`] implements it for any
/// [`Syncable`] type, which is all `#[derive(Syncable)]` needs.
pub trait SyncableStore: Send + 'static {
    /// The slice data type.
    type Data: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// The store id (names the gossip topic).
    fn store_id(&self) -> StoreId;

    /// Creates this device's initial slice (version `(incarnation, 0)`) and returns it.
    fn init(
        &mut self,
        device_id: DeviceId,
        version: Version,
        updated_at: u64,
    ) -> Arc<DeviceSlice<Self::Data>>;

    /// This device's slice, once initialised.
    fn local_slice(&self) -> Option<Arc<DeviceSlice<Self::Data>>>;

    /// Replaces this device's slice after a local write.
    fn set_local_slice(&mut self, slice: Arc<DeviceSlice<Self::Data>>);

    /// Applies a remote slice if it is newer than the one held; returns whether it was.
    /// The store's snapshots show the slice from then on if it was (the actor keeps their
    /// map itself, from what this and [`remove_remote_slice`](Self::remove_remote_slice)
    /// return).
    fn apply_remote_slice(&mut self, slice: Arc<DeviceSlice<Self::Data>>) -> bool;

    /// Removes a device's slice; returns it if it was held.
    fn remove_remote_slice(
        &mut self,
        device_id: &DeviceId,
        reason: RemovalReason,
    ) -> Option<Arc<DeviceSlice<Self::Data>>>;

    /// Drops every remote slice (the node is leaving the mesh).
    fn clear_remote_slices(&mut self);

    /// Every remote slice held. Read when the node shuts down (what the offline view
    /// keeps); snapshots are not built from it.
    fn remote_slices(&self) -> BTreeMap<DeviceId, Arc<DeviceSlice<Self::Data>>>;

    /// Change notification, called after every change the actor reports to subscribers.
    fn on_event(&mut self, event: &StoreEvent<Self::Data>) {
        let _ = event;
    }
}

/// The generic store: a local slice plus a map of remote slices, for any [`Syncable`] type.
#[derive(Debug)]
pub struct SliceStore<T> {
    id: StoreId,
    local: Option<Arc<DeviceSlice<T>>>,
    remote: BTreeMap<DeviceId, Arc<DeviceSlice<T>>>,
}

impl<T: Syncable> SliceStore<T> {
    /// A store named by `T::STORE_ID`.
    pub fn new() -> crate::Result<Self> {
        Self::with_id(StoreId::new(T::STORE_ID)?)
    }
}

impl<T> SliceStore<T> {
    /// A store with an explicit id (several stores of one type).
    pub fn with_id(id: StoreId) -> crate::Result<Self> {
        Ok(Self {
            id,
            local: None,
            remote: BTreeMap::new(),
        })
    }
}

impl<T> SyncableStore for SliceStore<T>
where
    T: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static,
{
    type Data = T;

    fn store_id(&self) -> StoreId {
        self.id.clone()
    }

    fn init(
        &mut self,
        device_id: DeviceId,
        version: Version,
        updated_at: u64,
    ) -> Arc<DeviceSlice<T>> {
        let slice = Arc::new(DeviceSlice {
            device_id,
            data: T::default(),
            version,
            updated_at,
        });
        self.local = Some(slice.clone());
        slice
    }

    fn local_slice(&self) -> Option<Arc<DeviceSlice<T>>> {
        self.local.clone()
    }

    fn set_local_slice(&mut self, slice: Arc<DeviceSlice<T>>) {
        self.local = Some(slice);
    }

    fn apply_remote_slice(&mut self, slice: Arc<DeviceSlice<T>>) -> bool {
        match self.remote.get(&slice.device_id) {
            Some(held) if held.version >= slice.version => false,
            _ => {
                self.remote.insert(slice.device_id, slice);
                true
            }
        }
    }

    fn remove_remote_slice(
        &mut self,
        device_id: &DeviceId,
        _: RemovalReason,
    ) -> Option<Arc<DeviceSlice<T>>> {
        self.remote.remove(device_id)
    }

    fn clear_remote_slices(&mut self) {
        self.remote.clear();
    }

    fn remote_slices(&self) -> BTreeMap<DeviceId, Arc<DeviceSlice<T>>> {
        self.remote.clone()
    }
}

#[cfg(test)]
mod tests;

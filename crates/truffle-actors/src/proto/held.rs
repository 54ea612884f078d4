//! The signed slices a node holds, per store, each with its version, and per store an
//! order-independent hash of those versions (what watch liveness compares with a peer).
//! Every change goes through [`Held::insert`] and the removals, which keep the hash in
//! step in O(1).

use std::sync::Arc;

use super::{DetMap, DetState};
use crate::ids::{DeviceId, StoreId, Version};

/// One store's slices and their hash.
#[derive(Debug)]
pub(crate) struct StoreHeld {
    slices: DetMap<DeviceId, (Version, Arc<[u8]>)>,
    hash: u64,
}

impl StoreHeld {
    /// `device`'s signed slice, if held.
    pub fn slice(&self, device: &DeviceId) -> Option<&Arc<[u8]>> {
        self.slices.get(device).map(|(_, raw)| raw)
    }

    /// Every signed slice held.
    pub fn slices(&self) -> impl Iterator<Item = &Arc<[u8]>> {
        self.slices.values().map(|(_, raw)| raw)
    }

    /// Every `(device, version)` held.
    pub fn versions(&self) -> impl Iterator<Item = (DeviceId, Version)> + '_ {
        self.slices.iter().map(|(d, (v, _))| (*d, *v))
    }
}

/// The slices held, own included, exactly as their owners signed them.
#[derive(Debug)]
pub(crate) struct Held {
    hasher: DetState,
    stores: DetMap<StoreId, StoreHeld>,
}

/// The hash of one held `(device, version)`, the same on every node (fixed seed).
fn slice_hash(device: &DeviceId, version: Version) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x736c_6963).hash_one((
        device,
        version.incarnation,
        version.counter,
    ))
}

impl Held {
    pub fn new(hasher: DetState) -> Self {
        Self {
            stores: DetMap::with_hasher(hasher.clone()),
            hasher,
        }
    }

    /// Holds `raw` as `device`'s slice of `store` at `version`, replacing what was held.
    pub fn insert(&mut self, store: &StoreId, device: DeviceId, version: Version, raw: Arc<[u8]>) {
        let h = &self.hasher;
        let s = self
            .stores
            .entry(store.clone())
            .or_insert_with(|| StoreHeld {
                slices: DetMap::with_hasher(h.clone()),
                hash: 0,
            });
        if let Some((old, _)) = s.slices.insert(device, (version, raw)) {
            s.hash ^= slice_hash(&device, old);
        }
        s.hash ^= slice_hash(&device, version);
    }

    /// Drops `device`'s slice of `store`; whether one was held.
    pub fn remove(&mut self, store: &StoreId, device: &DeviceId) -> bool {
        let Some(s) = self.stores.get_mut(store) else {
            return false;
        };
        match s.slices.remove(device) {
            Some((old, _)) => {
                s.hash ^= slice_hash(device, old);
                true
            }
            None => false,
        }
    }

    /// Drops `device`'s slices in every store.
    pub fn remove_device(&mut self, device: &DeviceId) {
        for s in self.stores.values_mut() {
            if let Some((old, _)) = s.slices.remove(device) {
                s.hash ^= slice_hash(device, old);
            }
        }
    }

    /// What is held in `store`.
    pub fn store(&self, store: &StoreId) -> Option<&StoreHeld> {
        self.stores.get(store)
    }

    /// The hash of `store`'s held versions (0 when nothing is held).
    pub fn hash(&self, store: &StoreId) -> u64 {
        self.stores.get(store).map_or(0, |s| s.hash)
    }

    /// Slices held in all stores.
    pub fn count(&self) -> usize {
        self.stores.values().map(|s| s.slices.len()).sum()
    }
}

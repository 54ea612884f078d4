//! A backend in memory: for tests, and for restarting a node inside one process.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use super::{SavedRemote, SavedSlice, SavedWrite, Storage};
use crate::error::Result;
use crate::ids::{DeviceId, Incarnation, StoreId};

#[derive(Default)]
struct Inner {
    incarnation: Incarnation,
    local: BTreeMap<StoreId, SavedSlice>,
    remote: BTreeMap<(StoreId, DeviceId), SavedRemote>,
    commits: u64,
}

/// Keeps everything in memory. Share one (in an `Arc`) between a node and its successor
/// to test restarts without a disk; nothing survives the process.
#[derive(Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStorage")
    }
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many batches [`Storage::write`] committed: tests check coalescing with it.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Storage for MemoryStorage {
    fn location(&self) -> &Path {
        Path::new("<memory>")
    }

    fn claim_incarnation(&self, candidate: Incarnation) -> Result<Incarnation> {
        let mut inner = self.lock();
        inner.incarnation = candidate.max(inner.incarnation.saturating_add(1));
        Ok(inner.incarnation)
    }

    fn load_local(&self, store: &StoreId) -> Result<Option<SavedSlice>> {
        Ok(self.lock().local.get(store).cloned())
    }

    fn load_remote(&self, store: &StoreId) -> Result<Vec<SavedRemote>> {
        Ok(self
            .lock()
            .remote
            .iter()
            .filter(|((s, _), _)| s == store)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn write(&self, batch: &[SavedWrite]) -> Result<()> {
        let mut inner = self.lock();
        for w in batch {
            match w {
                SavedWrite::Local { store, slice } => {
                    inner.local.insert(store.clone(), slice.clone());
                }
                SavedWrite::Remote { store, remote } => {
                    inner
                        .remote
                        .insert((store.clone(), remote.slice.device_id), remote.clone());
                }
            }
        }
        inner.commits += 1;
        Ok(())
    }
}

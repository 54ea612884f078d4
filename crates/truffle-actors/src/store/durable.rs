//! What a store keeps beyond the live mesh: its saved local slice, the offline view, and
//! which devices send data this node's type cannot read. The store actor calls these
//! hooks; they never touch the disk themselves (the node's writer thread does).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use super::OfflineSlice;
use crate::error::{Error, Result};
use crate::ids::{DeviceId, StoreId, Version};
use crate::slice::{now_millis, DeviceSlice};
use crate::storage::{SavedRemote, SavedSlice, StorePersist};

/// The offline view as the handle reads it.
pub(crate) type OfflineView<T> = Arc<BTreeMap<DeviceId, OfflineSlice<T>>>;

pub(crate) struct Durable<T> {
    id: StoreId,
    persist: Option<StorePersist>,
    keep_offline: bool,
    offline: BTreeMap<DeviceId, OfflineSlice<T>>,
    offline_tx: watch::Sender<OfflineView<T>>,
    /// Devices whose latest slice did not decode, reported once until one decodes again.
    undecodable: BTreeSet<DeviceId>,
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Durable<T> {
    pub fn new(id: StoreId, persist: Option<StorePersist>, keep_offline: bool) -> Self {
        Self {
            id,
            persist,
            keep_offline,
            offline: BTreeMap::new(),
            offline_tx: watch::Sender::new(Arc::default()),
            undecodable: BTreeSet::new(),
        }
    }

    /// The store's [`crate::Store::persisted`] watch; closed when nothing is saved.
    pub fn persisted(&self) -> watch::Receiver<Version> {
        match &self.persist {
            Some(p) => p.persisted(),
            None => watch::channel(Version::default()).1,
        }
    }

    pub fn offline_rx(&self) -> watch::Receiver<OfflineView<T>> {
        self.offline_tx.subscribe()
    }

    /// This device's saved slice, as the local slice of a run whose initial version is
    /// `version`: the data and `updated_at` are kept, the version is the new run's.
    /// Also loads the offline view. Fails (naming the file) if the saved data no longer
    /// decodes as `T`: starting empty would overwrite it on the next write.
    pub fn restore(&mut self, me: DeviceId, version: Version) -> Result<Option<DeviceSlice<T>>> {
        let Some(p) = &self.persist else {
            return Ok(None);
        };
        let storage = p.storage();
        let restored = match storage.load_local(&self.id)? {
            Some(saved) => {
                let data = rmp_serde::from_slice::<T>(&saved.data).map_err(|e| Error::Storage {
                    path: storage.location().to_owned(),
                    reason: format!(
                        "the saved slice of store `{}` (version {}) does not decode as the store's current type ({e}); change the type compatibly (see the book's \"Changing a store type\") or move the data directory away to start empty",
                        self.id, saved.version
                    ),
                })?;
                if saved.device_id != me {
                    tracing::info!(store = %self.id, saved_by = %saved.device_id, device = %me, "restoring a slice saved under another device id (the identity changed)");
                }
                tracing::info!(store = %self.id, saved = %saved.version, %version, "restored this device's slice");
                p.mark_persisted(version);
                Some(DeviceSlice {
                    device_id: me,
                    data,
                    version,
                    updated_at: saved.updated_at,
                })
            }
            None => None,
        };
        if self.keep_offline {
            for saved in storage.load_remote(&self.id)? {
                let device = saved.slice.device_id;
                if device == me {
                    continue;
                }
                match rmp_serde::from_slice::<T>(&saved.slice.data) {
                    Ok(data) => {
                        self.offline.insert(
                            device,
                            OfflineSlice {
                                slice: Arc::new(DeviceSlice {
                                    device_id: device,
                                    data,
                                    version: saved.slice.version,
                                    updated_at: saved.slice.updated_at,
                                }),
                                last_seen: saved.last_seen,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(store = %self.id, %device, error = %e, "a saved slice of another device does not decode as the store's type; left out of the offline view");
                    }
                }
            }
            self.publish_offline();
        }
        Ok(restored)
    }

    /// After a local write; `data` is the slice data already encoded for publishing.
    pub fn local_written(&self, slice: &DeviceSlice<T>, data: &[u8]) {
        if let Some(p) = &self.persist {
            p.local(SavedSlice {
                device_id: slice.device_id,
                version: slice.version,
                updated_at: slice.updated_at,
                data: data.to_vec(),
            });
        }
    }

    /// After a remote slice was applied (the device is live): it leaves the offline view,
    /// and its data is saved for the next time it goes offline.
    pub fn remote_applied(&mut self, slice: &DeviceSlice<T>, data: &[u8]) {
        self.undecodable.remove(&slice.device_id);
        if !self.keep_offline {
            return;
        }
        self.save_remote(slice, Some(data), now_millis());
        if self.offline.remove(&slice.device_id).is_some() {
            self.publish_offline();
        }
    }

    /// After a remote device's slice was removed (it left, timed out or restarted).
    pub fn remote_removed(&mut self, slice: Arc<DeviceSlice<T>>) {
        if !self.keep_offline {
            return;
        }
        let last_seen = now_millis();
        self.save_remote(&slice, None, last_seen);
        self.offline
            .insert(slice.device_id, OfflineSlice { slice, last_seen });
        self.publish_offline();
    }

    /// When the node stops: the devices live until now were last seen now.
    pub fn stopping(&mut self, live: impl IntoIterator<Item = Arc<DeviceSlice<T>>>) {
        if !self.keep_offline {
            return;
        }
        let now = now_millis();
        for slice in live {
            self.save_remote(&slice, None, now);
        }
    }

    /// A slice from `device` did not decode; true the first time since its last slice
    /// that did (so it is logged and reported once, not for every version).
    pub fn first_decode_failure(&mut self, device: DeviceId) -> bool {
        self.undecodable.insert(device)
    }

    fn save_remote(&self, slice: &DeviceSlice<T>, data: Option<&[u8]>, last_seen: u64) {
        let Some(p) = &self.persist else { return };
        let data = match data {
            Some(d) => d.to_vec(),
            None => match rmp_serde::to_vec_named(&slice.data) {
                Ok(d) => d,
                Err(_) => return,
            },
        };
        p.remote(SavedRemote {
            slice: SavedSlice {
                device_id: slice.device_id,
                version: slice.version,
                updated_at: slice.updated_at,
                data,
            },
            last_seen,
        });
    }

    fn publish_offline(&self) {
        self.offline_tx.send_replace(Arc::new(self.offline.clone()));
    }
}

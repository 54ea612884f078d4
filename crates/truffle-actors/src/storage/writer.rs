//! The node's writer thread: coalesces slices per store (and per remote device) and
//! commits what is pending in one transaction, off the store actors.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{SavedRemote, SavedSlice, SavedWrite, Storage};
use crate::error::{Error, Result};
use crate::ids::{DeviceId, StoreId, Version};

/// How long the writer waits before retrying after a failed commit (disk full, say).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The least time between the starts of two commits while writes come faster than the
/// disk takes them (the last batch coalesced several). Writes made meanwhile coalesce into
/// the next commit, so an application writing flat out costs at most a few hundred fsynced
/// commits a second instead of one per write the disk can take. A write that finds the
/// writer keeping up (one write per commit, such as a caller waiting on
/// `Store::persisted` before the next) is committed at once.
const MIN_COMMIT_GAP: Duration = Duration::from_millis(5);

/// `None` for this device's slice, the device for another's.
type Key = (StoreId, Option<DeviceId>);

struct Entry {
    write: SavedWrite,
    /// For this device's slices: the store's [`crate::Store::persisted`] watch.
    persisted: Option<Arc<watch::Sender<Version>>>,
}

#[derive(Default)]
struct Queue {
    pending: BTreeMap<Key, Entry>,
    /// Writes queued since the last batch was taken (several per entry when they
    /// coalesce).
    puts: u64,
    closing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, key: Key, entry: Entry) {
        let mut q = self.lock();
        let was_empty = q.pending.is_empty();
        q.pending.insert(key, entry);
        q.puts += 1;
        // The writer only sleeps with an empty queue, so only the write that fills it
        // needs to wake it: a burst costs one wake-up.
        if was_empty {
            self.wake.notify_one();
        }
    }

    fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }
}

/// The node's persistence: its [`Storage`] and the writer thread in front of it.
pub(crate) struct Persistence {
    storage: Arc<dyn Storage>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Persistence {
    /// Starts the writer thread.
    pub fn start(storage: Arc<dyn Storage>) -> Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            let writer = storage.clone();
            std::thread::Builder::new()
                .name("truffle-storage".into())
                .spawn(move || run(&*writer, &shared))
                .map_err(|e| Error::Storage {
                    path: storage_path(&*storage),
                    reason: format!("cannot start the writer thread: {e}"),
                })?
        };
        Ok(Self {
            storage,
            shared,
            thread: Some(thread),
        })
    }

    /// What one store actor needs: its slot in the queue and its saved data.
    pub fn for_store(&self, store: StoreId) -> StorePersist {
        StorePersist {
            store,
            storage: self.storage.clone(),
            shared: self.shared.clone(),
            persisted: Arc::new(watch::Sender::new(Version::default())),
        }
    }

    /// Writes what is pending and stops the thread (waits up to 10 s).
    pub async fn close(mut self) {
        self.shared.close();
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(Duration::from_secs(10), joined)
                .await
                .is_err()
            {
                tracing::warn!(path = %self.storage.location().display(), "the storage writer did not finish in time; the newest writes may be lost");
            }
        }
    }
}

impl Drop for Persistence {
    fn drop(&mut self) {
        // Without `close` (the node was dropped): the thread still writes what is pending,
        // then ends on its own.
        self.shared.close();
    }
}

fn storage_path(s: &dyn Storage) -> std::path::PathBuf {
    s.location().to_owned()
}

fn run(storage: &dyn Storage, shared: &Shared) {
    let mut failing = false;
    // When the last commit started, if writes were outpacing commits.
    let mut busy_since: Option<Instant> = None;
    loop {
        {
            let mut q = shared.lock();
            while q.pending.is_empty() && !q.closing {
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.pending.is_empty() {
                return;
            }
            // Right after a commit, let more writes gather (not when stopping).
            let due = busy_since.map(|t| t + MIN_COMMIT_GAP);
            if let Some(wait) = due.and_then(|d| d.checked_duration_since(Instant::now())) {
                if !q.closing {
                    drop(q);
                    std::thread::sleep(wait);
                }
            }
        }
        let (batch, puts) = {
            let mut q = shared.lock();
            (std::mem::take(&mut q.pending), std::mem::take(&mut q.puts))
        };
        if batch.is_empty() {
            continue;
        }
        busy_since = (puts > batch.len() as u64).then(Instant::now);
        let writes: Vec<SavedWrite> = batch.values().map(|e| e.write.clone()).collect();
        let Ok(result) = catch_unwind(AssertUnwindSafe(|| storage.write(&writes))) else {
            // A backend that panics is in no state to be retried: stop saving, say so
            // once, and let the node run on in memory.
            tracing::error!(path = %storage.location().display(), "the storage backend panicked while writing; nothing more is saved in this run");
            return;
        };
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!(path = %storage.location().display(), "saving slices works again");
                    failing = false;
                }
                for entry in batch.values() {
                    if let (Some(tx), SavedWrite::Local { slice, .. }) =
                        (&entry.persisted, &entry.write)
                    {
                        advance(tx, slice.version);
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "could not save slices; retrying every second (the newest slice of each store is kept for the retry)");
                    failing = true;
                }
                let mut q = shared.lock();
                // Newer writes made meanwhile replace the failed ones.
                for (k, entry) in batch {
                    q.pending.entry(k).or_insert(entry);
                }
                if q.closing {
                    tracing::error!(error = %e, "giving up saving slices: the node is stopping");
                    return;
                }
                let _ = shared.wake.wait_timeout(q, RETRY_AFTER);
            }
        }
    }
}

fn advance(tx: &watch::Sender<Version>, version: Version) {
    tx.send_if_modified(|v| {
        let newer = version > *v;
        if newer {
            *v = version;
        }
        newer
    });
}

/// One store's way to its saved data.
pub(crate) struct StorePersist {
    store: StoreId,
    storage: Arc<dyn Storage>,
    shared: Arc<Shared>,
    persisted: Arc<watch::Sender<Version>>,
}

impl StorePersist {
    /// Queues this device's newest slice (replacing any not yet written).
    pub fn local(&self, slice: SavedSlice) {
        self.shared.put(
            (self.store.clone(), None),
            Entry {
                write: SavedWrite::Local {
                    store: self.store.clone(),
                    slice,
                },
                persisted: Some(self.persisted.clone()),
            },
        );
    }

    /// Queues another device's newest slice for the offline view.
    pub fn remote(&self, remote: SavedRemote) {
        self.shared.put(
            (self.store.clone(), Some(remote.slice.device_id)),
            Entry {
                write: SavedWrite::Remote {
                    store: self.store.clone(),
                    remote,
                },
                persisted: None,
            },
        );
    }

    /// Marks `version` durable without a write (a restored slice).
    pub fn mark_persisted(&self, version: Version) {
        advance(&self.persisted, version);
    }

    /// Follows the newest durable version of this device's slice.
    pub fn persisted(&self) -> watch::Receiver<Version> {
        self.persisted.subscribe()
    }

    /// The storage, for loading at join.
    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }
}

//! The built-in backend: one `redb` file (`truffle.redb`) in the node's data directory.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableTable, TableDefinition, TableError};

use super::{SavedRemote, SavedSlice, SavedWrite, Storage};
use crate::error::{Error, Result};
use crate::ids::{Incarnation, StoreId};

/// `format` → [`FORMAT`], `incarnation` → the highest incarnation claimed (u64, big-endian).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("truffle_meta");
/// Store id → this device's slice record.
const LOCAL: TableDefinition<&str, &[u8]> = TableDefinition::new("truffle_local");
/// `<store id>/<device id>` → another device's slice record, with when it was last seen.
/// (`/` never occurs in a store id, so one store's keys form one range.)
const REMOTE: TableDefinition<&str, &[u8]> = TableDefinition::new("truffle_remote");

/// What marks a redb file as Truffle's.
const FORMAT: &[u8] = b"truffle-data 1";

/// The file name inside the data directory.
pub const FILE_NAME: &str = "truffle.redb";

/// Slices in a `redb` database (pure Rust, ACID, crash-safe: every commit is fsynced, and
/// after a crash the file holds the last committed transaction).
///
/// redb locks the file, so a second process opening the same data directory is refused
/// ([`Error::DataDirInUse`]).
pub struct RedbStorage {
    /// Always `Some` until dropped (see the `Drop` impl).
    db: Option<Database>,
    path: PathBuf,
    /// Set once redb panicked on this file: it is damaged, and every later call fails at
    /// once instead of reaching redb again.
    broken: AtomicBool,
}

impl Drop for RedbStorage {
    fn drop(&mut self) {
        // redb checks its allocator state when a database closes and can panic on a
        // damaged file; a bad file must never take the process down.
        if let Some(db) = self.db.take() {
            if catch_unwind(AssertUnwindSafe(move || drop(db))).is_err() {
                tracing::warn!(path = %self.path.display(), "the storage engine failed while closing a damaged data file");
            }
        }
    }
}

impl std::fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStorage")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStorage {
    /// Opens (or creates) `dir/truffle.redb`, creating `dir` if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join(FILE_NAME);
        let err = |reason: String| Error::Storage {
            path: path.clone(),
            reason,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Storage {
                path: dir.to_owned(),
                reason: "the data directory is a file; give a directory (it is created if missing)"
                    .into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::Storage {
            path: dir.to_owned(),
            reason: format!("cannot create the data directory: {e}"),
        })?;
        // redb reports a damaged file as an error, but a defensive catch keeps a bad file
        // from ever taking the process down.
        let opened = catch_unwind(AssertUnwindSafe(|| Database::create(&path)))
            .map_err(|_| err(damaged("the storage engine panicked while opening it")))?;
        let db = match opened {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(Error::DataDirInUse { path });
            }
            Err(redb::DatabaseError::UpgradeRequired(v)) => {
                return Err(err(format!(
                    "written in redb file format {v}, which this build cannot read; open it with the Truffle version that wrote it, or move it away to start empty"
                )));
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(err(format!(
                    "cannot open: {e} (check the directory's permissions and free space)"
                )));
            }
            Err(e) => return Err(err(damaged(&e.to_string()))),
        };
        let s = Self {
            db: Some(db),
            path,
            broken: AtomicBool::new(false),
        };
        s.guarded(|s| s.check_format())?;
        Ok(s)
    }

    fn db(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database is only taken when dropped")
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        let e: redb::Error = e.into();
        let reason = match e {
            redb::Error::Io(io) => format!("I/O error: {io} (is the disk full or read-only?)"),
            other => damaged(&other.to_string()),
        };
        Error::Storage {
            path: self.path.clone(),
            reason,
        }
    }

    /// Runs `f`, turning a panic inside the storage engine into an error naming the file.
    fn guarded<R>(&self, f: impl FnOnce(&Self) -> Result<R>) -> Result<R> {
        let failed = || Error::Storage {
            path: self.path.clone(),
            reason: damaged("the storage engine failed on it"),
        };
        if self.broken.load(Ordering::Relaxed) {
            return Err(failed());
        }
        catch_unwind(AssertUnwindSafe(|| f(self))).unwrap_or_else(|_| {
            self.broken.store(true, Ordering::Relaxed);
            Err(failed())
        })
    }

    /// Accepts a Truffle file, initialises a new one, refuses anything else.
    fn check_format(&self) -> Result<()> {
        let read = self.db().begin_read().map_err(|e| self.err(e))?;
        match read.open_table(META) {
            Ok(meta) => {
                let format = meta.get("format").map_err(|e| self.err(e))?;
                match format {
                    Some(f) if f.value() == FORMAT => Ok(()),
                    other => Err(Error::Storage {
                        path: self.path.clone(),
                        reason: format!(
                            "not a Truffle data file (format {:?}); move it away or choose another data directory",
                            other.map(|f| String::from_utf8_lossy(f.value()).into_owned())
                        ),
                    }),
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {
                let tables = read.list_tables().map_err(|e| self.err(e))?.count();
                if tables > 0 {
                    return Err(Error::Storage {
                        path: self.path.clone(),
                        reason: "a redb database of another application, not a Truffle data file; choose another data directory".into(),
                    });
                }
                drop(read);
                let w = self.db().begin_write().map_err(|e| self.err(e))?;
                {
                    let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
                    meta.insert("format", FORMAT).map_err(|e| self.err(e))?;
                    w.open_table(LOCAL).map_err(|e| self.err(e))?;
                    w.open_table(REMOTE).map_err(|e| self.err(e))?;
                }
                w.commit().map_err(|e| self.err(e))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<(SavedSlice, Option<u64>)> {
        SavedSlice::from_record(bytes).map_err(|reason| Error::Storage {
            path: self.path.clone(),
            reason: damaged(&format!("entry {key:?}: {reason}")),
        })
    }
}

fn damaged(what: &str) -> String {
    format!("damaged or not a Truffle data file ({what}); move it away to start with an empty data directory")
}

impl Storage for RedbStorage {
    fn location(&self) -> &Path {
        &self.path
    }

    fn claim_incarnation(&self, candidate: Incarnation) -> Result<Incarnation> {
        self.guarded(|s| {
            let w = s.db().begin_write().map_err(|e| s.err(e))?;
            let claimed = {
                let mut meta = w.open_table(META).map_err(|e| s.err(e))?;
                let last = meta
                    .get("incarnation")
                    .map_err(|e| s.err(e))?
                    .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                let claimed = candidate.max(last.saturating_add(1));
                meta.insert("incarnation", claimed.to_be_bytes().as_slice())
                    .map_err(|e| s.err(e))?;
                claimed
            };
            w.commit().map_err(|e| s.err(e))?;
            Ok(claimed)
        })
    }

    fn load_local(&self, store: &StoreId) -> Result<Option<SavedSlice>> {
        self.guarded(|s| {
            let read = s.db().begin_read().map_err(|e| s.err(e))?;
            let table = read.open_table(LOCAL).map_err(|e| s.err(e))?;
            let got = table.get(store.as_str()).map_err(|e| s.err(e))?;
            got.map(|v| s.decode(store.as_str(), v.value()).map(|(slice, _)| slice))
                .transpose()
        })
    }

    fn load_remote(&self, store: &StoreId) -> Result<Vec<SavedRemote>> {
        self.guarded(|s| {
            let read = s.db().begin_read().map_err(|e| s.err(e))?;
            let table = read.open_table(REMOTE).map_err(|e| s.err(e))?;
            let prefix = format!("{store}/");
            let mut out = Vec::new();
            for entry in table.range(prefix.as_str()..).map_err(|e| s.err(e))? {
                let (k, v) = entry.map_err(|e| s.err(e))?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let (slice, last_seen) = s.decode(k.value(), v.value())?;
                out.push(SavedRemote {
                    last_seen: last_seen.unwrap_or(slice.updated_at),
                    slice,
                });
            }
            Ok(out)
        })
    }

    fn write(&self, batch: &[SavedWrite]) -> Result<()> {
        self.guarded(|s| {
            let w = s.db().begin_write().map_err(|e| s.err(e))?;
            {
                let mut local = w.open_table(LOCAL).map_err(|e| s.err(e))?;
                let mut remote = w.open_table(REMOTE).map_err(|e| s.err(e))?;
                for write in batch {
                    match write {
                        SavedWrite::Local { store, slice } => {
                            local
                                .insert(store.as_str(), slice.to_record(None).as_slice())
                                .map_err(|e| s.err(e))?;
                        }
                        SavedWrite::Remote { store, remote: r } => {
                            let key = format!("{store}/{}", r.slice.device_id);
                            remote
                                .insert(
                                    key.as_str(),
                                    r.slice.to_record(Some(r.last_seen)).as_slice(),
                                )
                                .map_err(|e| s.err(e))?;
                        }
                    }
                }
            }
            w.commit().map_err(|e| s.err(e))
        })
    }
}

//! The identity key file and the incarnation file kept beside it.
//!
//! Both are written atomically (a temporary file in the same folder, then a rename), so a
//! crash or a full disk never leaves a half-written key or incarnation behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

use crate::error::{Error, Result};
use crate::ids::Incarnation;

/// Reads the identity from `path`, or creates it. The incarnation is kept beside it
/// (`<path>.incarnation`) so that it grows across restarts even if the clock goes back.
pub(crate) fn load_or_create_key(path: &Path, now: Incarnation) -> Result<(Keypair, Incarnation)> {
    let key = load_or_create(path)?;
    let incarnation = next_incarnation(path, now)?;
    Ok((key, incarnation))
}

fn key_err(path: &Path, reason: String) -> Error {
    Error::KeyFile {
        path: path.to_owned(),
        reason,
    }
}

fn load_or_create(path: &Path) -> Result<Keypair> {
    let err = |reason: String| key_err(path, reason);
    match std::fs::read(path) {
        Ok(bytes) => {
            check_private(path)?;
            decode_key(&bytes).map_err(err)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| err(format!("cannot encode the new key: {e}")))?;
            match write_atomic(path, &bytes, false) {
                Ok(()) => Ok(key),
                // Another process created it first: use theirs, so both agree on the id.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let bytes =
                        std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
                    decode_key(&bytes).map_err(err)
                }
                Err(e) => Err(err(format!("cannot write a new key: {e}"))),
            }
        }
        Err(e) => Err(err(format!("cannot read: {e}"))),
    }
}

fn decode_key(bytes: &[u8]) -> std::result::Result<Keypair, String> {
    if bytes.is_empty() {
        return Err("the file is empty (an earlier version may have crashed while writing it); \
             restore it from a backup to keep this device id, or delete it to create a new identity"
            .into());
    }
    Keypair::from_protobuf_encoding(bytes).map_err(|e| {
        format!(
            "not a libp2p protobuf-encoded ed25519 keypair ({} bytes; decoder says: {e}); \
             restore it from a backup to keep this device id, or delete it to create a new identity",
            bytes.len()
        )
    })
}

/// Refuses a key file that other users can read or write (as ssh does): anyone who can
/// read it can sign as this device.
fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| key_err(path, format!("cannot read its permissions: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(key_err(
                path,
                format!(
                    "is accessible by other users (mode {mode:03o}); anyone who can read it can \
                     write as this device. Run `chmod 600 {}` (and keep it owned by the user \
                     running the node)",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The path of the incarnation file that belongs to the key file `key`.
pub(crate) fn incarnation_path(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.incarnation", key.display()))
}

/// This run's incarnation: the clock, but always above the one saved by the last run.
/// Saved before it is used, so that a crash right after start still counts as a run.
fn next_incarnation(key: &Path, now: Incarnation) -> Result<Incarnation> {
    let path = incarnation_path(key);
    let err = |reason: String| Error::KeyFile {
        path: path.clone(),
        reason,
    };
    let last: Incarnation = match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse() {
            Ok(n) => n,
            Err(_) if text.trim().is_empty() => 0,
            Err(e) => {
                return Err(err(format!(
                    "holds {:?}, not a number ({e}); it records this device's last run. \
                     Delete it only if the clock of this host is right: the next run then \
                     takes the current time as its incarnation",
                    truncate(&text, 40)
                )))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(err(format!("cannot read: {e}"))),
    };
    let Some(after_last) = last.checked_add(1) else {
        return Err(err(format!(
            "holds {last}, the largest possible incarnation: no later run of this device \
             can start, because peers that saw it would take every new run as stale. \
             Start with a new identity (delete {} and this file)",
            key.display()
        )));
    };
    let incarnation = now.max(after_last);
    write_atomic(&path, incarnation.to_string().as_bytes(), true)
        .map_err(|e| err(format!("cannot write: {e}")))?;
    Ok(incarnation)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Writes `bytes` to a temporary file (mode 0600) in `path`'s folder and renames it over
/// `path` (or, without `overwrite`, to `path` only if nothing is there yet).
fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> std::io::Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir
        }
        None => Path::new("."),
    };
    // tempfile creates the file with mode 0600 on unix.
    let mut tmp = tempfile::Builder::new()
        .prefix(".truffle-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    if overwrite {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("node.key")
    }

    #[test]
    fn creates_a_private_key_and_reloads_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_in(&dir);
        let (a, inc_a) = load_or_create_key(&path, 1000).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (b, inc_b) = load_or_create_key(&path, 1000).unwrap();
        assert_eq!(a.public(), b.public());
        assert_eq!(inc_a, 1000);
        // The clock did not move: the incarnation still grows.
        assert_eq!(inc_b, 1001);
        // The clock went back: still above the last run.
        let (_, inc_c) = load_or_create_key(&path, 5).unwrap();
        assert_eq!(inc_c, 1002);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn the_largest_incarnation_is_a_clear_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_in(&dir);
        load_or_create_key(&path, 1).unwrap();
        std::fs::write(incarnation_path(&path), "18446744073709551615\n").unwrap();
        let e = load_or_create_key(&path, 1).unwrap_err().to_string();
        assert!(e.contains("largest possible incarnation"), "{e}");
        assert!(e.contains("new identity"), "{e}");
        // One below the maximum still starts, at the maximum.
        std::fs::write(incarnation_path(&path), "18446744073709551614").unwrap();
        assert_eq!(load_or_create_key(&path, 1).unwrap().1, u64::MAX);
    }

    #[test]
    fn a_garbled_incarnation_file_is_an_error_and_an_empty_one_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_in(&dir);
        load_or_create_key(&path, 1).unwrap();
        std::fs::write(incarnation_path(&path), "-3").unwrap();
        let e = load_or_create_key(&path, 1).unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
        std::fs::write(incarnation_path(&path), "").unwrap();
        assert_eq!(load_or_create_key(&path, 7).unwrap().1, 7);
    }

    #[test]
    fn an_empty_or_foreign_key_file_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_in(&dir);
        std::fs::write(&path, b"").unwrap();
        set_mode(&path, 0o600);
        let e = load_or_create_key(&path, 1).unwrap_err().to_string();
        assert!(e.contains("the file is empty"), "{e}");
        assert!(!e.contains("rsa"), "{e}");
        std::fs::write(&path, b"hello, not a key").unwrap();
        let e = load_or_create_key(&path, 1).unwrap_err().to_string();
        assert!(
            e.contains("not a libp2p protobuf-encoded ed25519 keypair"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_in(&dir);
        load_or_create_key(&path, 1).unwrap();
        set_mode(&path, 0o644);
        let e = load_or_create_key(&path, 1).unwrap_err().to_string();
        assert!(e.contains("mode 644"), "{e}");
        assert!(e.contains("chmod 600"), "{e}");
        set_mode(&path, 0o600);
        load_or_create_key(&path, 1).unwrap();
    }

    fn set_mode(path: &Path, mode: u32) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = (path, mode);
    }
}

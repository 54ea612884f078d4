use super::*;
use crate::error::Error;

fn dev(n: u8) -> DeviceId {
    let mut seed = [0u8; 32];
    seed[0] = n;
    let kp = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
    DeviceId::from(kp.public().to_peer_id())
}

fn saved(d: DeviceId, counter: u64, data: &[u8]) -> SavedSlice {
    SavedSlice {
        device_id: d,
        version: Version::new(7, counter),
        updated_at: 1_700_000_000_000 + counter,
        data: data.to_vec(),
    }
}

fn store(id: &str) -> StoreId {
    StoreId::new(id).unwrap()
}

/// The same contract for every backend.
fn round_trip(s: &dyn Storage) {
    assert_eq!(s.load_local(&store("a")).unwrap(), None);
    assert!(s.load_remote(&store("a")).unwrap().is_empty());
    let remote = SavedRemote {
        slice: saved(dev(2), 3, b"\x91\x02"),
        last_seen: 42,
    };
    s.write(&[
        SavedWrite::Local {
            store: store("a"),
            slice: saved(dev(1), 1, b"\x91\x01"),
        },
        SavedWrite::Local {
            store: store("a"),
            slice: saved(dev(1), 2, b"\x91\x05"),
        },
        SavedWrite::Remote {
            store: store("a"),
            remote: remote.clone(),
        },
        // A store whose id is a prefix of another's keeps its own remote slices.
        SavedWrite::Remote {
            store: store("ab"),
            remote: SavedRemote {
                slice: saved(dev(3), 1, b"\x90"),
                last_seen: 1,
            },
        },
    ])
    .unwrap();
    assert_eq!(
        s.load_local(&store("a")).unwrap(),
        Some(saved(dev(1), 2, b"\x91\x05"))
    );
    assert_eq!(s.load_local(&store("b")).unwrap(), None);
    assert_eq!(s.load_remote(&store("a")).unwrap(), vec![remote]);
    assert_eq!(s.load_remote(&store("ab")).unwrap().len(), 1);

    let first = s.claim_incarnation(1000).unwrap();
    assert_eq!(first, 1000);
    // The clock went back: the incarnation still grows.
    assert_eq!(s.claim_incarnation(10).unwrap(), 1001);
    assert_eq!(s.claim_incarnation(5000).unwrap(), 5000);
}

#[test]
fn memory_backend_contract() {
    round_trip(&MemoryStorage::new());
}

#[test]
fn redb_backend_contract_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = RedbStorage::open(dir.path().join("data")).unwrap();
        round_trip(&s);
    }
    let s = RedbStorage::open(dir.path().join("data")).unwrap();
    assert_eq!(
        s.load_local(&store("a")).unwrap(),
        Some(saved(dev(1), 2, b"\x91\x05"))
    );
    assert_eq!(s.claim_incarnation(10).unwrap(), 5001);
}

#[test]
fn a_second_open_of_one_data_dir_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RedbStorage::open(dir.path()).unwrap();
    let err = RedbStorage::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::DataDirInUse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.path().join("truffle.redb").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("another process"), "{msg}");
}

fn expect_storage_error(dir: &std::path::Path, want: &str) {
    let err = RedbStorage::open(dir).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(msg.contains(want), "{msg}");
}

#[test]
fn foreign_and_damaged_files_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // Not a database at all.
    std::fs::write(
        dir.path().join("truffle.redb"),
        b"hello, I am a text file\n",
    )
    .unwrap();
    expect_storage_error(dir.path(), "move it away");

    // Random bytes of a plausible size.
    let dir = tempfile::tempdir().unwrap();
    let junk: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("truffle.redb"), junk).unwrap();
    expect_storage_error(dir.path(), "move it away");

    // Another application's redb database.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join("truffle.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w
                .open_table(redb::TableDefinition::<&str, u64>::new("users"))
                .unwrap();
            t.insert("ann", 1).unwrap();
        }
        w.commit().unwrap();
    }
    expect_storage_error(dir.path(), "another application");

    // The data directory is a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    expect_storage_error(&file, "is a file");
}

#[test]
fn a_damaged_truffle_file_never_panics() {
    // Overwrite every part of a real data file in turn: opening and reading either work
    // or fail with an error naming the file, and never panic.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truffle.redb");
    {
        let s = RedbStorage::open(dir.path()).unwrap();
        s.write(&[SavedWrite::Local {
            store: store("a"),
            slice: saved(dev(1), 1, &[0x91; 300]),
        }])
        .unwrap();
    }
    let good = std::fs::read(&path).unwrap();
    let step = (good.len() / 64).max(1);
    for at in (0..good.len()).step_by(step) {
        let mut bad = good.clone();
        for b in bad.iter_mut().skip(at).take(step) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &bad).unwrap();
        let names_the_file = |e: Error| {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        };
        match RedbStorage::open(dir.path()) {
            // Either the damage missed what we read, or it is reported.
            Ok(s) => {
                let _ = s.load_local(&store("a")).map_err(names_the_file);
                let _ = s.load_remote(&store("a")).map_err(names_the_file);
            }
            Err(e) => names_the_file(e),
        }
    }
}

#[test]
fn records_refuse_garbage_and_future_formats() {
    let r = saved(dev(1), 1, b"\x90").to_record(Some(9));
    assert_eq!(
        SavedSlice::from_record(&r).unwrap(),
        (saved(dev(1), 1, b"\x90"), Some(9))
    );
    assert!(SavedSlice::from_record(b"junk").is_err());
    let mut future: Vec<u8> = r.clone();
    // The first field after the map header and key "v" is the format byte.
    let pos = future.windows(2).position(|w| w == [0xa1, b'v']).unwrap();
    future[pos + 2] = 9;
    let err = SavedSlice::from_record(&future).unwrap_err();
    assert!(err.contains("format 9"), "{err}");
}

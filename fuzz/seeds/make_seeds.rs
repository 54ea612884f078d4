//! Not a fuzz target: writes the seed corpora and exits before fuzzing starts.
//!
//! It is built by `cargo fuzz build` alongside the targets (same flags, so no extra build
//! of the dependencies) and does its work in libFuzzer's init hook:
//!
//! ```text
//! cargo fuzz run make_seeds        # or: target/<triple>/release/make_seeds
//! ```
//!
//! Seeds go to `corpus/wire_decode/` and `corpus/slice_envelope/` next to this crate's
//! Cargo.toml (or under `$TRUFFLE_SEEDS_DIR` when set). Slices are encoded and signed by
//! the library itself (`truffle_actors::testing::signed_slice`); presence, leave, and
//! sync request/response messages use the library's field names (`crates/truffle-actors/
//! src/wire.rs`) and its framing (4-byte big-endian length, then the MessagePack body).
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use truffle_actors::identity::{Keypair, PeerId};
use truffle_actors::wire::{
    SyncRequest, SyncResponse, Want, WireDigest, WireSuspicion, PROTOCOL_VERSION,
};
use truffle_actors::{DeviceId, StoreId, Version};

#[derive(Serialize)]
struct Todo {
    text: String,
    done: bool,
}

/// Mirrors the library's `DigestEntry`.
#[derive(Serialize)]
struct DigestEntry {
    store: String,
    incarnation: u64,
    version: u64,
}

/// Mirrors the library's `Presence`.
#[derive(Serialize)]
struct Presence {
    v: u8,
    kind: String,
    device: String,
    incarnation: u64,
    seq: u64,
    addrs: Vec<String>,
    partial: bool,
    digest: Vec<DigestEntry>,
}

/// Mirrors the library's `Leave`.
#[derive(Serialize)]
struct Leave {
    v: u8,
    kind: String,
    device: String,
    incarnation: u64,
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn named<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("seed encodes")
}

fn write_seeds() {
    let root = std::env::var_os("TRUFFLE_SEEDS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));

    let key = Keypair::ed25519_from_bytes([7u8; 32]).expect("valid seed");
    let device = DeviceId::from(key.public().to_peer_id());
    // The source peer `decode_everything` checks presence messages against.
    let source = PeerId::from_bytes(&[0, 2, 8, 1]).expect("identity peer id");
    let store = StoreId::new("todos").expect("valid store id");

    let slice = truffle_actors::testing::signed_slice(
        &key,
        &store,
        device,
        Version::new(1_700_000_000_000, 3),
        &Todo {
            text: "buy milk".into(),
            done: false,
        },
    );
    let empty_slice = truffle_actors::testing::signed_slice(
        &key,
        &StoreId::new("s").expect("valid store id"),
        device,
        Version::new(1, 0),
        &(),
    );
    let presence = |device: String| {
        named(&Presence {
            v: PROTOCOL_VERSION,
            kind: "presence".into(),
            device,
            incarnation: 1_700_000_000_000,
            seq: 42,
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            partial: false,
            digest: vec![DigestEntry {
                store: "todos".into(),
                incarnation: 1_700_000_000_000,
                version: 3,
            }],
        })
    };
    let leave = |device: String| {
        named(&Leave {
            v: PROTOCOL_VERSION,
            kind: "leave".into(),
            device,
            incarnation: 1_700_000_000_000,
        })
    };
    let fetch = named(&SyncRequest {
        v: PROTOCOL_VERSION,
        kind: "fetch".into(),
        want: vec![
            Want {
                store: "todos".into(),
                device: None,
            },
            Want {
                store: "todos".into(),
                device: Some(device.to_string()),
            },
        ],
        incarnation: 0,
        ..SyncRequest::default()
    });
    let leave_request = named(&SyncRequest {
        v: PROTOCOL_VERSION,
        kind: "leave".into(),
        want: vec![],
        incarnation: 1_700_000_000_000,
        ..SyncRequest::default()
    });
    let response = named(&SyncResponse {
        v: PROTOCOL_VERSION,
        slices: vec![slice.clone().into(), empty_slice.clone().into()],
        ..SyncResponse::default()
    });
    // Watch liveness: its requests, the answers to them, and an accusation.
    let watch_request = |kind: &str| SyncRequest {
        v: PROTOCOL_VERSION,
        kind: kind.into(),
        ..SyncRequest::default()
    };
    let digest_request = named(&SyncRequest {
        digest: Some(WireDigest {
            members: 0x1234_5678_9abc_def0,
            stores: vec![("todos".into(), 42)],
        }),
        ..watch_request("digest")
    });
    let members_request = named(&SyncRequest {
        devices: vec![device.to_string(), source.to_string()],
        ..watch_request("members")
    });
    let accused_request = named(&SyncRequest {
        accused: Some(WireSuspicion {
            device: device.to_string(),
            incarnation: 1_700_000_000_000,
            seq: 42,
        }),
        ..watch_request("accused")
    });
    let trim_request = named(&watch_request("trim"));
    let digest_response = named(&SyncResponse {
        v: PROTOCOL_VERSION,
        members: Some(vec![(device.to_string(), 1_700_000_000_000, 42)]),
        stores: vec![(
            "todos".into(),
            vec![(device.to_string(), 1_700_000_000_000, 3)],
        )],
        ..SyncResponse::default()
    });
    let members_response = named(&SyncResponse {
        v: PROTOCOL_VERSION,
        presences: vec![truffle_actors::testing::signed_presence(
            &key,
            1_700_000_000_000,
            42,
            &[],
        )
        .into()],
        ..SyncResponse::default()
    });
    let suspect = truffle_actors::testing::signed_suspect(&key, device, 1_700_000_000_000, 42);

    let wire_seeds: Vec<(&str, Vec<u8>)> = vec![
        ("slice", slice.clone()),
        ("slice_empty_data", empty_slice),
        ("presence_from_source", presence(source.to_string())),
        ("presence_forged", presence(device.to_string())),
        ("leave_from_source", leave(source.to_string())),
        ("leave_forged", leave(device.to_string())),
        ("sync_fetch", fetch.clone()),
        ("sync_fetch_framed", framed(&fetch)),
        ("sync_leave", leave_request.clone()),
        ("sync_leave_framed", framed(&leave_request)),
        ("sync_response", response.clone()),
        ("sync_response_framed", framed(&response)),
        ("watch_digest_framed", framed(&digest_request)),
        ("watch_members_framed", framed(&members_request)),
        ("watch_accused_framed", framed(&accused_request)),
        ("watch_trim_framed", framed(&trim_request)),
        ("watch_digest_answer_framed", framed(&digest_response)),
        ("watch_members_answer_framed", framed(&members_response)),
        ("watch_suspect", suspect),
    ];
    // Arbitrary-encoded `Input`s for slice_envelope: all-zero bytes pick the first variant
    // of every enum (a valid slice, signed by its owner, sent bare); the others vary it.
    let envelope_seeds: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("zeros", vec![0; 64]),
        ("ones", vec![0xff; 64]),
        ("slice_bytes", slice),
    ];

    for (dir, seeds) in [("wire_decode", wire_seeds), ("slice_envelope", envelope_seeds)] {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        for (name, bytes) in seeds {
            let path = dir.join(format!("seed_{name}"));
            std::fs::write(&path, bytes).expect("write seed");
            eprintln!("wrote {}", path.display());
        }
    }
}

/// Ends the process once the seeds are written (libFuzzer never starts fuzzing).
fn finish() {
    std::process::exit(0)
}

fuzz_target!(
    init: {
        write_seeds();
        finish();
    },
    |_data: &[u8]| {}
);

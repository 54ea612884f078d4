//! Criterion micro-benchmarks of Truffle's hot paths:
//!
//! - `envelope`: encode + sign a slice (`testing::signed_slice`) and decode + verify it
//!   (`testing::decode_everything`, which runs every network decoder over the bytes; only
//!   the slice decoder gets far, the others reject the bytes early), beside bare ed25519
//!   sign and verify of the same bytes for scale;
//! - `apply_remote_actor`: a signed slice handed to a node as a sync response
//!   (`MeshNode::test_inject_response`) until its store's snapshot shows it: decode and
//!   verify in the gossip actor, admission, decode in the store actor, apply, snapshot
//!   publish; with 1 and 256 other devices held;
//! - `slice_store`: the pure part, `SliceStore::apply_remote_slice`, and the
//!   `remote_slices()` copy the store actor makes for every snapshot it publishes;
//! - `sync_codec`: writing and reading a late joiner's sync response (32 x 64 KiB);
//! - `presence`: building a presence digest of 1, 64 and 256 stores, encoding and signing
//!   it (`testing::signed_presence`, the same encoder the gossip actor uses), and decoding
//!   and verifying it (`testing::decode_everything`).
//!
//! `cargo bench -p truffle-bench --bench micro` (short settings: 0.5 s warm-up, 2 s
//! measurement, 20 samples).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use libp2p::request_response::Codec;
use serde::{Deserialize, Serialize};
use truffle_actors::identity::Keypair;
use truffle_actors::testing::{decode_everything, signed_presence, signed_slice};
use truffle_actors::wire::{SyncCodec, SyncResponse, SYNC_PROTOCOL};
use truffle_actors::{
    DeviceId, DeviceSlice, MeshNode, SliceStore, Store, StoreId, Syncable, SyncableStore, Version,
};

#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "micro")]
struct Payload {
    seq: u64,
    data: String,
}

fn store_id() -> StoreId {
    StoreId::new(Payload::STORE_ID).expect("valid store id")
}

fn device_of(key: &Keypair) -> DeviceId {
    DeviceId::from(key.public().to_peer_id())
}

fn envelope(c: &mut Criterion) {
    let key = Keypair::generate_ed25519();
    let device = device_of(&key);
    let id = store_id();
    let mut g = c.benchmark_group("envelope");
    for size in [64usize, 4096, 65536] {
        let p = Payload {
            seq: 1,
            data: "x".repeat(size),
        };
        g.throughput(Throughput::Bytes(size as u64));
        let mut v = 0u64;
        g.bench_with_input(BenchmarkId::new("encode_sign", size), &p, |b, p| {
            b.iter(|| {
                v += 1;
                signed_slice(&key, &id, device, Version::new(1, v), black_box(p))
            })
        });
        let bytes = signed_slice(&key, &id, device, Version::new(1, 1), &p);
        g.bench_with_input(
            BenchmarkId::new("decode_verify", size),
            &bytes,
            |b, bytes| b.iter(|| decode_everything(black_box(bytes))),
        );
        g.bench_with_input(
            BenchmarkId::new("ed25519_sign_only", size),
            &bytes,
            |b, bytes| b.iter(|| key.sign(black_box(bytes)).expect("ed25519 signs")),
        );
        let sig = key.sign(&bytes).expect("ed25519 signs");
        let public = key.public();
        g.bench_with_input(
            BenchmarkId::new("ed25519_verify_only", size),
            &bytes,
            |b, bytes| b.iter(|| public.verify(black_box(bytes), &sig)),
        );
    }
    g.finish();
}

fn presence(c: &mut Criterion) {
    let key = Keypair::generate_ed25519();
    let stores: Vec<StoreId> = (0..256)
        .map(|i| StoreId::new(format!("store-{i:03}")).expect("valid store id"))
        .collect();
    let mut g = c.benchmark_group("presence");
    for n in [1usize, 64, 256] {
        let digest: Vec<(&StoreId, Version)> = stores[..n]
            .iter()
            .enumerate()
            .map(|(i, s)| (s, Version::new(1_700_000_000_000, i as u64)))
            .collect();
        let mut seq = 0u64;
        g.bench_with_input(BenchmarkId::new("build_sign", n), &digest, |b, d| {
            b.iter(|| {
                seq += 1;
                signed_presence(&key, 1_700_000_000_000, seq, black_box(d))
            })
        });
        let bytes = signed_presence(&key, 1_700_000_000_000, 1, &digest);
        g.bench_with_input(BenchmarkId::new("decode_verify", n), &bytes, |b, bytes| {
            b.iter(|| decode_everything(black_box(bytes)))
        });
    }
    g.finish();
}

/// A lone node (presence timeout 1 h, so forged devices stay) holding `held` remote
/// slices, plus the keys of those devices.
async fn holder(held: usize) -> (MeshNode, Store<Payload>, Vec<Keypair>) {
    let node = MeshNode::builder()
        .listen("/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"))
        .mdns(false)
        .presence_timeout(Duration::from_secs(3600))
        .start()
        .await
        .expect("node starts");
    let store = node.store::<Payload>().await.expect("store joins");
    let keys: Vec<Keypair> = (0..held).map(|_| Keypair::generate_ed25519()).collect();
    let id = store_id();
    let p = Payload {
        seq: 1,
        data: "x".repeat(64),
    };
    let slices = keys
        .iter()
        .map(|k| signed_slice(k, &id, device_of(k), Version::new(1, 1), &p))
        .collect();
    node.test_inject_response(device_of(&keys[0]), slices);
    store
        .wait_until(Duration::from_secs(10), |s| s.remote.len() == held)
        .await
        .expect("initial slices applied");
    (node, store, keys)
}

fn apply_remote_actor(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let id = store_id();
    let mut g = c.benchmark_group("apply_remote_actor");
    for held in [1usize, 256] {
        let (node, store, keys) = rt.block_on(holder(held));
        let dev = device_of(&keys[0]);
        let mut version = 1u64;
        g.bench_function(BenchmarkId::new("inject_until_in_snapshot", held), |b| {
            b.iter_custom(|iters| {
                // Signing is not what this measures: sign first, then time the applies.
                let slices: Vec<(u64, Vec<u8>)> = (1..=iters)
                    .map(|i| {
                        let v = version + i;
                        let p = Payload {
                            seq: v,
                            data: "x".repeat(64),
                        };
                        (v, signed_slice(&keys[0], &id, dev, Version::new(1, v), &p))
                    })
                    .collect();
                version += iters;
                rt.block_on(async {
                    let start = Instant::now();
                    for (v, raw) in slices {
                        node.test_inject_response(dev, vec![raw]);
                        store
                            .wait_until(Duration::from_secs(5), |s| {
                                s.get(&dev).is_some_and(|x| x.version.counter >= v)
                            })
                            .await
                            .expect("slice applied");
                    }
                    start.elapsed()
                })
            })
        });
        rt.block_on(async move {
            drop(store);
            let _ = node.shutdown().await;
        });
    }
    g.finish();
}

fn slice_store(c: &mut Criterion) {
    let mut g = c.benchmark_group("slice_store");
    for held in [1usize, 32, 256, 1024] {
        let devices: Vec<DeviceId> = (0..held)
            .map(|_| device_of(&Keypair::generate_ed25519()))
            .collect();
        let mut s = SliceStore::<Payload>::new().expect("store");
        for d in &devices {
            s.apply_remote_slice(Arc::new(DeviceSlice {
                device_id: *d,
                data: Payload::default(),
                version: Version::new(1, 1),
                updated_at: 0,
            }));
        }
        let mut v = 1u64;
        g.bench_function(BenchmarkId::new("apply_remote_slice", held), |b| {
            b.iter(|| {
                v += 1;
                s.apply_remote_slice(Arc::new(DeviceSlice {
                    device_id: devices[0],
                    data: Payload {
                        seq: v,
                        data: String::new(),
                    },
                    version: Version::new(1, v),
                    updated_at: 0,
                }))
            })
        });
        g.bench_function(BenchmarkId::new("remote_slices_copy", held), |b| {
            b.iter(|| black_box(s.remote_slices()))
        });
    }
    g.finish();
}

fn sync_codec(c: &mut Criterion) {
    let key = Keypair::generate_ed25519();
    let id = store_id();
    let p = Payload {
        seq: 1,
        data: "x".repeat(64 * 1024),
    };
    let slices: Vec<std::sync::Arc<[u8]>> = (0..32)
        .map(|i| {
            std::sync::Arc::from(signed_slice(
                &key,
                &id,
                device_of(&key),
                Version::new(1, i),
                &p,
            ))
        })
        .collect();
    let response = SyncResponse {
        v: 1,
        slices,
        ..SyncResponse::default()
    };
    let mut codec = SyncCodec {
        max_request: 1 << 20,
        max_response: 64 << 20,
    };
    let mut encoded = futures::io::Cursor::new(Vec::new());
    futures::executor::block_on(codec.write_response(
        &SYNC_PROTOCOL,
        &mut encoded,
        response.clone(),
    ))
    .expect("response encodes");
    let encoded = encoded.into_inner();
    let mut g = c.benchmark_group("sync_codec");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("write_response_32x64KiB", |b| {
        b.iter_batched(
            || response.clone(),
            |r| {
                let mut out = futures::io::Cursor::new(Vec::with_capacity(encoded.len()));
                futures::executor::block_on(codec.write_response(&SYNC_PROTOCOL, &mut out, r))
                    .expect("response encodes");
                out
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("read_response_32x64KiB", |b| {
        b.iter(|| {
            let mut input = futures::io::Cursor::new(black_box(&encoded[..]));
            futures::executor::block_on(codec.read_response(&SYNC_PROTOCOL, &mut input))
                .expect("response decodes")
        })
    });
    g.finish();
}

/// Short settings: the suite must fit a CI-sized machine in a couple of minutes.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args()
}

fn main() {
    let mut c = config();
    envelope(&mut c);
    slice_store(&mut c);
    sync_codec(&mut c);
    presence(&mut c);
    apply_remote_actor(&mut c);
    c.final_summary();
}

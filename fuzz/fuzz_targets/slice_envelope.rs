//! Structured slice messages: the fuzzer picks the fields of a slice body and of its
//! signed envelope, the target encodes them as MessagePack maps exactly as a real sender
//! would (`{v, kind, body, sig}` around `{store, device, incarnation, version, updated_at,
//! data}`) and, when asked, signs the body with a real ed25519 key. That gets the fuzzer
//! past the outer MessagePack layer to the field, key and signature checks, which random
//! bytes almost never reach. The result goes through `decode_everything`, bare or inside
//! a sync response.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use truffle_actors::identity::{Keypair, PeerId};
use truffle_actors::wire::{SyncResponse, PROTOCOL_VERSION, SLICE_SIGNING_CONTEXT};

/// Mirrors the library's `SliceBody` (same field names and order).
#[derive(Serialize)]
struct SliceBody<'a> {
    store: &'a str,
    device: &'a str,
    incarnation: u64,
    version: u64,
    updated_at: u64,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

/// Mirrors the library's `SignedMsg` envelope.
#[derive(Serialize)]
struct SignedSliceMsg<'a> {
    v: u8,
    kind: &'a str,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
    #[serde(with = "serde_bytes")]
    sig: &'a [u8],
}

const KEYS: usize = 4;

/// A few fixed ed25519 keys (seeded, so runs are reproducible).
fn keys() -> &'static [(Keypair, String); KEYS] {
    static KEYS_CELL: OnceLock<[(Keypair, String); KEYS]> = OnceLock::new();
    KEYS_CELL.get_or_init(|| {
        std::array::from_fn(|i| {
            let key = Keypair::ed25519_from_bytes([i as u8 + 1; 32]).expect("valid seed");
            let id = key.public().to_peer_id().to_string();
            (key, id)
        })
    })
}

#[derive(Arbitrary, Debug)]
enum Version {
    Current,
    Other(u8),
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Slice,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Store {
    /// A valid store id: the fuzzer's bytes mapped onto `[A-Za-z0-9._-]`.
    Valid(Vec<u8>),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Device {
    /// The peer id of one of the fixed keys.
    Key(u8),
    /// A peer id that is a sha2-256 multihash, so carries no inline key.
    Hashed([u8; 32]),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Signer {
    /// The claimed device's own key (when it is one of ours), else key 0.
    Owner,
    /// One of the fixed keys, whoever the body claims to be.
    Key(u8),
}

#[derive(Arbitrary, Debug)]
enum Sig {
    Valid(Signer),
    /// A valid signature with one bit flipped.
    Flipped(Signer, u16, u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Body {
    Fields {
        store: Store,
        device: Device,
        incarnation: u64,
        version: u64,
        updated_at: u64,
        data: Vec<u8>,
    },
    /// Arbitrary bytes as the body (still signed if `sig` asks).
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Wrap {
    Bare,
    /// Inside a sync response's `slices`, between other (raw) entries.
    InResponse { before: Vec<Vec<u8>>, after: Vec<Vec<u8>> },
    /// Cut short after `n` bytes.
    Truncated(u16),
    /// With one byte replaced.
    Patched(u16, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    v: Version,
    kind: Kind,
    body: Body,
    sig: Sig,
    wrap: Wrap,
}

fn sign(signer: &Signer, device: Option<usize>, body: &[u8]) -> Vec<u8> {
    let index = match signer {
        Signer::Owner => device.unwrap_or(0),
        Signer::Key(k) => *k as usize % KEYS,
    };
    let mut signed = Vec::with_capacity(SLICE_SIGNING_CONTEXT.len() + body.len());
    signed.extend_from_slice(SLICE_SIGNING_CONTEXT);
    signed.extend_from_slice(body);
    keys()[index].0.sign(&signed).expect("ed25519 signs")
}

fn build(input: &Input) -> Option<Vec<u8>> {
    let (body, device) = match &input.body {
        Body::Fields {
            store,
            device,
            incarnation,
            version,
            updated_at,
            data,
        } => {
            let store = match store {
                Store::Valid(bytes) => {
                    const ALPHABET: &[u8] =
                        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
                    let mut s: String = bytes
                        .iter()
                        .take(160)
                        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
                        .collect();
                    if s.is_empty() {
                        s.push('s');
                    }
                    s
                }
                Store::Raw(s) => s.clone(),
            };
            let (device_str, device_index) = match device {
                Device::Key(k) => {
                    let i = *k as usize % KEYS;
                    (keys()[i].1.clone(), Some(i))
                }
                Device::Hashed(digest) => {
                    let mut mh = vec![0x12, 0x20];
                    mh.extend_from_slice(digest);
                    match PeerId::from_bytes(&mh) {
                        Ok(p) => (p.to_string(), None),
                        Err(_) => return None,
                    }
                }
                Device::Raw(s) => (s.clone(), None),
            };
            let body = rmp_serde::to_vec_named(&SliceBody {
                store: &store,
                device: &device_str,
                incarnation: *incarnation,
                version: *version,
                updated_at: *updated_at,
                data,
            })
            .ok()?;
            (body, device_index)
        }
        Body::Raw(bytes) => (bytes.clone(), None),
    };
    let sig = match &input.sig {
        Sig::Valid(signer) => sign(signer, device, &body),
        Sig::Flipped(signer, at, bit) => {
            let mut sig = sign(signer, device, &body);
            let n = sig.len();
            sig[*at as usize % n] ^= 1 << (bit % 8);
            sig
        }
        Sig::Raw(sig) => sig.clone(),
    };
    let v = match input.v {
        Version::Current => PROTOCOL_VERSION,
        Version::Other(v) => v,
    };
    let kind = match &input.kind {
        Kind::Slice => "slice",
        Kind::Other(k) => k.as_str(),
    };
    let msg = rmp_serde::to_vec_named(&SignedSliceMsg {
        v,
        kind,
        body: &body,
        sig: &sig,
    })
    .ok()?;
    Some(match &input.wrap {
        Wrap::Bare => msg,
        Wrap::InResponse { before, after } => {
            let slices = before
                .iter()
                .cloned()
                .chain(std::iter::once(msg))
                .chain(after.iter().cloned())
                .map(std::sync::Arc::<[u8]>::from)
                .collect();
            rmp_serde::to_vec_named(&SyncResponse {
                v,
                slices,
                ..SyncResponse::default()
            })
            .ok()?
        }
        Wrap::Truncated(n) => {
            let mut msg = msg;
            msg.truncate(*n as usize);
            msg
        }
        Wrap::Patched(at, byte) => {
            let mut msg = msg;
            let n = msg.len();
            msg[*at as usize % n] = *byte;
            msg
        }
    })
}

fuzz_target!(|input: Input| {
    if let Some(bytes) = build(&input) {
        truffle_actors::testing::decode_everything(&bytes);
    }
});

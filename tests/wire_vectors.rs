//! The test vectors of the wire chapter ("Writing a peer in another language"): a fixed
//! key, its device id, a signed slice byte for byte, and its gossipsub message id. The
//! values are computed here from the library and must appear verbatim in the chapter, so
//! the chapter cannot drift from the code.

use serde::Serialize;
use sha2::{Digest, Sha256};
use truffle_actors::identity::Keypair;
use truffle_actors::testing::signed_slice;
use truffle_actors::{DeviceId, StoreId, Version};

const CHAPTER: &str = include_str!("../book/src/wire-protocol.md");

/// The todo example's data type, as the chapter spells it out.
#[derive(Serialize)]
struct TodoState {
    name: String,
    items: Vec<Todo>,
}

#[derive(Serialize)]
struct Todo {
    text: String,
    done: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex in lines of 32 bytes, as the chapter prints long values.
fn hex_lines(bytes: &[u8]) -> String {
    bytes.chunks(32).map(hex).collect::<Vec<_>>().join("\n")
}

/// Collects every value the chapter lacks, so one failing run shows them all.
#[derive(Default)]
struct Missing(Vec<String>);

impl Missing {
    fn check(&mut self, what: &str, text: &str) {
        if !CHAPTER.contains(text) {
            self.0.push(format!("{what}:\n{text}"));
        }
    }
}

#[test]
fn the_wire_chapter_test_vectors_match_the_code() {
    let mut missing = Missing::default();
    // Secret key bytes 01 02 … 20.
    let mut secret: Vec<u8> = (1..=32).collect();
    missing.check("secret key", &hex(&secret));
    let key = Keypair::ed25519_from_bytes(&mut secret).unwrap();
    let public = key.public().try_into_ed25519().unwrap().to_bytes();
    missing.check("public key", &hex(&public));
    let device = DeviceId::from(key.public().to_peer_id());
    missing.check("device id", &device.to_string());

    let store = StoreId::new("todos").unwrap();
    let data = TodoState {
        name: "alice".into(),
        items: vec![Todo {
            text: "milk".into(),
            done: false,
        }],
    };
    let data_bytes = rmp_serde::to_vec_named(&data).unwrap();
    missing.check("data bytes", &hex_lines(&data_bytes));
    let envelope = signed_slice(
        &key,
        &store,
        device,
        Version::new(1_700_000_000_000, 1),
        &data,
    );
    missing.check("signed slice", &hex_lines(&envelope));
    missing.check("signed slice size", &format!("({} bytes)", envelope.len()));

    let topic = "truffle/v1/store/todos";
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    h.update(&envelope);
    let id = &h.finalize()[..20];
    missing.check("message id", &hex(id));
    assert_eq!(
        truffle_actors::wire::message_id(topic, &envelope),
        id,
        "the library's message id of a canonical envelope is the hash of its bytes"
    );
    // The id covers the signed content, not the envelope's bytes: the same message
    // re-encoded (here with one more field) has the same id.
    #[derive(Serialize)]
    struct Padded<'a> {
        v: u8,
        kind: &'a str,
        #[serde(with = "serde_bytes")]
        body: &'a [u8],
        #[serde(with = "serde_bytes")]
        sig: &'a [u8],
        pad: u8,
    }
    #[derive(serde::Deserialize)]
    struct Env {
        v: u8,
        kind: String,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        #[serde(with = "serde_bytes")]
        sig: Vec<u8>,
    }
    let e: Env = rmp_serde::from_slice(&envelope).unwrap();
    let padded = rmp_serde::to_vec_named(&Padded {
        v: e.v,
        kind: &e.kind,
        body: &e.body,
        sig: &e.sig,
        pad: 0,
    })
    .unwrap();
    assert_ne!(padded, envelope);
    assert_eq!(
        truffle_actors::wire::message_id(topic, &padded),
        id,
        "a re-encoded copy has the original's id"
    );
    // An accusation (watch liveness), signed by the test key and naming its own device id
    // (a real accuser names another), at incarnation 1700000000000 and heartbeat 7.
    let suspect = truffle_actors::testing::signed_suspect(&key, device, 1_700_000_000_000, 7);
    missing.check("signed suspect", &hex_lines(&suspect));
    missing.check("signed suspect size", &format!("({} bytes)", suspect.len()));
    assert!(
        missing.0.is_empty(),
        "the wire chapter does not show the current test vectors; it should contain:\n\n{}",
        missing.0.join("\n\n")
    );
}

//! The test vectors of the wire chapter ("Writing a peer in another language"): a fixed
//! key, its device id, a signed slice byte for byte and its gossipsub message id, and the
//! messages of watch liveness: a signed presence, a signed accusation, and the sync
//! requests and answers it exchanges. The values are computed here from the library and
//! must appear verbatim in the chapter, so the chapter cannot drift from the code. Run
//! with `--nocapture` to print them all.

use std::sync::Arc;

use libp2p::request_response::Codec as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use truffle_actors::identity::Keypair;
use truffle_actors::proto::{self, Ask, DigestReply, Heartbeat, Reply, Suspicion};
use truffle_actors::testing::{self, signed_slice};
use truffle_actors::wire::{self, SyncCodec, SyncRequest, SyncResponse, SYNC_PROTOCOL};
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

/// Hex with a space between bytes, as the chapter prints short values.
fn hex_spaced(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The MessagePack of a request as the library's sync codec frames it (and reads it back).
fn request_bytes(req: SyncRequest) -> Vec<u8> {
    let mut out = futures::io::Cursor::new(Vec::new());
    futures::executor::block_on(codec().write_request(&SYNC_PROTOCOL, &mut out, req.clone()))
        .unwrap();
    let frame = out.into_inner();
    let back = futures::executor::block_on(
        codec().read_request(&SYNC_PROTOCOL, &mut futures::io::Cursor::new(&frame)),
    )
    .unwrap();
    assert_eq!(back, req, "a request reads back as written");
    unframe(frame)
}

/// The MessagePack of an answer as the library's sync codec frames it (and reads it back).
fn response_bytes(res: SyncResponse) -> Vec<u8> {
    let mut out = futures::io::Cursor::new(Vec::new());
    futures::executor::block_on(codec().write_response(&SYNC_PROTOCOL, &mut out, res.clone()))
        .unwrap();
    let frame = out.into_inner();
    let back = futures::executor::block_on(
        codec().read_response(&SYNC_PROTOCOL, &mut futures::io::Cursor::new(&frame)),
    )
    .unwrap();
    assert_eq!(back, res, "an answer reads back as written");
    unframe(frame)
}

fn codec() -> SyncCodec {
    SyncCodec {
        max_request: 1 << 20,
        max_response: 1 << 20,
    }
}

/// The MessagePack of a frame, checking its 4-byte big-endian length.
fn unframe(frame: Vec<u8>) -> Vec<u8> {
    let (len, body) = frame.split_at(4);
    assert_eq!(len, (body.len() as u32).to_be_bytes(), "the frame's length");
    body.to_vec()
}

/// Collects every value the chapter lacks, so one failing run shows them all.
#[derive(Default)]
struct Missing(Vec<String>);

impl Missing {
    fn check(&mut self, what: &str, text: &str) {
        println!("{what}:\n{text}\n");
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

    // Watch liveness. A second device, from the secret key bytes 21 22 … 40.
    let mut secret2: Vec<u8> = (0x21..=0x40).collect();
    missing.check("second secret key", &hex(&secret2));
    let key2 = Keypair::ed25519_from_bytes(&mut secret2).unwrap();
    let public2 = key2.public().try_into_ed25519().unwrap().to_bytes();
    missing.check("second public key", &hex(&public2));
    let device2 = DeviceId::from(key2.public().to_peer_id());
    missing.check("second device id", &device2.to_string());

    let incarnation = 1_700_000_000_000;
    // The test device's heartbeat 7, with one address and the slice above in its digest.
    let beat = Heartbeat {
        device,
        incarnation,
        seq: 7,
        addrs: vec!["/ip4/192.0.2.1/tcp/4001".into()],
        partial: false,
        digest: vec![(store.clone(), Version::new(incarnation, 1))],
    };
    let presence = testing::signed_heartbeat(&key, &beat);
    missing.check("signed presence", &hex_lines(&presence));
    missing.check(
        "signed presence size",
        &format!("({} bytes)", presence.len()),
    );
    assert_eq!(presence.len(), wire::heartbeat_wire_len(&beat));

    // The test device accuses the second one, at its incarnation 1700000000000 and
    // heartbeat 7.
    let suspect = truffle_actors::testing::signed_suspect(&key, device2, incarnation, 7);
    missing.check("signed suspect", &hex_lines(&suspect));
    missing.check("signed suspect size", &format!("({} bytes)", suspect.len()));

    // The sync requests of watch liveness. The digest's hashes are arbitrary here: what
    // is fixed is how they are written.
    let digest = request_bytes(testing::watch_request(Ask::Digest(proto::Digest {
        members: 0x0123_4567_89ab_cdef,
        stores: vec![(store.clone(), 0xfedc_ba98_7654_3210)],
    })));
    missing.check("digest request", &hex_lines(&digest));
    missing.check("digest request size", &format!("({} bytes)", digest.len()));
    let members = request_bytes(testing::watch_request(Ask::Members(vec![device])));
    missing.check("members request", &hex_lines(&members));
    missing.check(
        "members request size",
        &format!("({} bytes)", members.len()),
    );
    let accused = request_bytes(testing::watch_request(Ask::Accused(Suspicion {
        device: device2,
        incarnation,
        seq: 7,
    })));
    missing.check("accused request", &hex_lines(&accused));
    missing.check(
        "accused request size",
        &format!("({} bytes)", accused.len()),
    );
    let trim = request_bytes(testing::watch_request(Ask::Trim));
    missing.check("trim request", &hex_lines(&trim));
    missing.check("trim request size", &format!("({} bytes)", trim.len()));

    // The answers: to a digest whose member and `todos` hashes both differ, from a node
    // whose only live member is the test device (so itself) at heartbeat 7 and that holds
    // the slice above; to the members request, the presence above; to trim and accused,
    // nothing.
    let diff = response_bytes(testing::watch_response(
        Reply::Digest(DigestReply {
            members: Some(vec![(device, incarnation, 7)]),
            stores: vec![(store.clone(), vec![(device, Version::new(incarnation, 1))])],
        }),
        &[],
    ));
    missing.check("digest answer", &hex_lines(&diff));
    missing.check("digest answer size", &format!("({} bytes)", diff.len()));
    let presences = response_bytes(testing::watch_response(
        Reply::Members(vec![Arc::new(beat.clone())]),
        &[(&beat, &presence)],
    ));
    missing.check("members answer", &hex_lines(&presences));
    missing.check(
        "members answer size",
        &format!("({} bytes)", presences.len()),
    );
    assert!(
        presences.ends_with(&presence),
        "the answer carries the presence as signed"
    );
    let done = response_bytes(testing::watch_response(Reply::Done, &[]));
    missing.check("empty answer", &hex_spaced(&done));

    assert!(
        missing.0.is_empty(),
        "the wire chapter does not show the current test vectors; it should contain:\n\n{}",
        missing.0.join("\n\n")
    );
}

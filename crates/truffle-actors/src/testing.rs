//! Test support (feature `test-hooks`): build signed messages by hand.

use libp2p::identity::Keypair;

use crate::ids::{DeviceId, StoreId, Version};

/// Encodes `data` as a slice of `device` in `store`, signed with `key` (which need not be
/// `device`'s key: that is how tests forge).
pub fn signed_slice<T: serde::Serialize>(
    key: &Keypair,
    store: &StoreId,
    device: DeviceId,
    version: Version,
    data: &T,
) -> Vec<u8> {
    let data = rmp_serde::to_vec_named(data).expect("test data encodes");
    crate::wire::encode_slice(key, store, device, version, 0, data).expect("test slice encodes")
}

/// Encodes a presence heartbeat of `key`'s device, signed with `key`: incarnation,
/// sequence number, and a digest of `(store, version)` entries. For tests that play a
/// hostile peer speaking the protocol by hand.
pub fn signed_presence(
    key: &Keypair,
    incarnation: u64,
    seq: u64,
    digest: &[(&StoreId, Version)],
) -> Vec<u8> {
    let p = crate::wire::Presence {
        device: key.public().to_peer_id().to_string(),
        incarnation,
        seq,
        addrs: Vec::new(),
        partial: false,
        digest: digest
            .iter()
            .map(|(s, v)| crate::wire::DigestEntry {
                store: s.to_string(),
                incarnation: v.incarnation,
                version: v.counter,
            })
            .collect(),
        name: None,
    };
    crate::wire::encode_presence(key, &p).expect("test presence encodes")
}

/// Encodes an accusation (watch liveness) by `key`'s device that `device`, in its run
/// `incarnation`, stopped answering after its heartbeat `seq`; signed with `key`.
pub fn signed_suspect(key: &Keypair, device: DeviceId, incarnation: u64, seq: u64) -> Vec<u8> {
    let s = crate::wire::Suspect {
        accuser: key.public().to_peer_id().to_string(),
        device: device.to_string(),
        incarnation,
        seq,
    };
    crate::wire::encode_suspect(key, &s).expect("test accusation encodes")
}

/// Runs every decoder that sees network bytes over `bytes`: the slice and presence-topic
/// decoders (presence, leave, and watch liveness's accusations), the sync codec's request
/// and response readers, and watch liveness's reading of what they decoded (its digest,
/// members, trim and accusation requests, and the answers to them). For fuzzing and property
/// tests: it must never panic, whatever the input.
pub fn decode_everything(bytes: &[u8]) {
    use libp2p::request_response::Codec as _;

    let keys = &mut crate::wire::KeyCache::default();
    let _ = crate::wire::decode_slice(bytes, 1 << 20, keys);
    let _ = crate::wire::decode_presence_msg(bytes, 1 << 20, keys);
    let mut codec = crate::wire::SyncCodec {
        max_request: 1 << 20,
        max_response: 1 << 20,
    };
    let protocol = crate::wire::SYNC_PROTOCOL;
    // The raw bytes, then the same bytes as the body of a well-framed message.
    let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    for input in [bytes, &framed[..]] {
        futures::executor::block_on(async {
            if let Ok(req) = codec
                .read_request(&protocol, &mut futures::io::Cursor::new(input))
                .await
            {
                // What watch liveness makes of a request (digest, members, trim, accused).
                let _ = crate::gossip::watch_wire::ask_of(&req);
            }
            if let Ok(res) = codec
                .read_response(&protocol, &mut futures::io::Cursor::new(input))
                .await
            {
                // ... and of an answer, read as each kind of answer it could be.
                use crate::gossip::watch_wire::{reply_of, AskKind, Presences};
                // Fixed identities, so that a fuzzer's run depends on its input alone.
                static IDS: std::sync::OnceLock<[crate::ids::DeviceId; 2]> =
                    std::sync::OnceLock::new();
                let [me, via] = *IDS.get_or_init(|| {
                    [1u8, 2].map(|b| {
                        let key = Keypair::ed25519_from_bytes([b; 32]).expect("32 bytes");
                        crate::ids::DeviceId::from(key.public().to_peer_id())
                    })
                });
                // Admission at its defaults, for a node that has met nobody yet.
                let mut admission = crate::proto::admission::Admission::new(
                    me,
                    4096,
                    std::time::Duration::from_millis(1000 / 64),
                    256,
                    std::time::Duration::from_secs(60),
                    crate::proto::DetState::default(),
                );
                let mut kept = Presences::for_liveness(crate::proto::Liveness::Watch);
                for kind in [AskKind::Digest, AskKind::Members, AskKind::Done] {
                    let _ = reply_of(kind, res.clone(), keys, &mut kept, &mut admission, via);
                }
            }
        });
    }
}

/// The signed presence message of `h`, as a node publishes it (a node adds its name when
/// it has one). For the wire chapter's test vectors.
pub fn signed_heartbeat(key: &Keypair, h: &crate::proto::Heartbeat) -> Vec<u8> {
    crate::wire::encode_presence(key, &crate::wire::presence_of(h)).expect("a heartbeat encodes")
}

/// The sync request watch liveness sends for `ask`. For the wire chapter's test vectors.
pub fn watch_request(ask: crate::proto::Ask) -> crate::wire::SyncRequest {
    crate::gossip::watch_wire::request_of(ask).0
}

/// The answer watch liveness sends for `reply`, keeping the presence messages `kept` (each
/// with the heartbeat it signs) to answer a `members` request. For the wire chapter's
/// test vectors.
pub fn watch_response(
    reply: crate::proto::Reply,
    kept: &[(&crate::proto::Heartbeat, &[u8])],
) -> crate::wire::SyncResponse {
    use crate::gossip::watch_wire::{response_of, Presences};
    let mut presences = Presences::for_liveness(crate::proto::Liveness::Watch);
    for (h, raw) in kept {
        presences.keep(
            h.device.peer_id(),
            (h.incarnation, h.seq),
            std::sync::Arc::from(*raw),
        );
    }
    response_of(reply, &presences)
}

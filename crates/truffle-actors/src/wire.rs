//! The wire format: MessagePack maps with named fields, so any language can read them.
//!
//! The book's "Wire protocol" chapter documents every field; keep the two in step.

use std::fmt;
use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, Incarnation, StoreId, Version};

/// The protocol version carried in every message as `v`.
pub const PROTOCOL_VERSION: u8 = 1;
/// Prefix of a store's gossipsub topic: `truffle/v1/store/<store id>`.
pub const STORE_TOPIC_PREFIX: &str = "truffle/v1/store/";
/// The node-wide gossipsub topic for presence and leave messages.
pub const PRESENCE_TOPIC: &str = "truffle/v1/presence";
/// The request-response protocol id for direct full-state exchange and leave.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/truffle/sync/1");
/// Bytes prepended to a slice body before signing it, so a slice signature can never be
/// mistaken for a signature over anything else.
pub const SLICE_SIGNING_CONTEXT: &[u8] = b"truffle/v1/slice:";
/// Bytes prepended to a presence body before signing it.
pub const PRESENCE_SIGNING_CONTEXT: &[u8] = b"truffle/v1/presence:";
/// Bytes prepended to a leave body before signing it.
pub const LEAVE_SIGNING_CONTEXT: &[u8] = b"truffle/v1/leave:";
/// Bytes prepended to an accusation body before signing it (watch liveness).
pub const SUSPECT_SIGNING_CONTEXT: &[u8] = b"truffle/v1/suspect:";
/// Most digest entries one presence message carries; stores past it are announced in
/// later rounds (the digest rotates).
pub const MAX_DIGEST_ENTRIES: usize = 256;
/// Largest presence or leave message accepted, in bytes (a full digest of
/// [`MAX_DIGEST_ENTRIES`] entries with 128-byte store ids fits well within it).
pub const MAX_PRESENCE_BYTES: usize = 64 * 1024;
/// Bytes a slice message may carry beyond its data: field names, ids, signature.
pub const SLICE_OVERHEAD: usize = 4 * 1024;
/// Most listen addresses one presence message carries.
pub const MAX_PRESENCE_ADDRS: usize = 8;
/// Most stores one node joins (observed stores included). A node announces the topics it
/// takes part in (these stores and the presence topic) in one gossipsub message when it
/// connects, and its peers ignore, whole and before any work per topic, a message with more
/// subscriptions than that: a peer churning 10,000 subscriptions a message cost each
/// receiver milliseconds of its one swarm task per message.
pub const MAX_STORES_PER_NODE: usize = 1_000;
/// Most (un)subscriptions in one gossipsub message, and most topics of one peer that
/// gossipsub records: the stores a node may join, and the presence topic.
pub const MAX_TOPICS_PER_PEER: usize = MAX_STORES_PER_NODE + 1;

/// The gossipsub topic of a store.
pub fn store_topic(store: &StoreId) -> String {
    format!("{STORE_TOPIC_PREFIX}{store}")
}

/// Why a message from the network was dropped. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RejectReason {
    /// Not MessagePack, or not the expected map.
    Undecodable,
    /// A protocol version this node does not speak.
    UnknownVersion,
    /// A message kind this node does not know on that topic or channel.
    UnknownKind,
    /// Larger than the configured limit.
    Oversized,
    /// The signature does not verify against the key of the device the message names.
    BadSignature,
    /// The claimed device is not the sender. Not produced since messages carry their
    /// owner's signature and may be relayed by anyone (a relayed copy is checked like any
    /// other); the counter stays so that metric keys are stable.
    Forged,
    /// A slice for another store than the topic or request it came on.
    WrongStore,
    /// A field is out of range (bad store id, bad device id).
    BadField,
    /// Older than (or equal to) what this node already holds.
    Stale,
    /// From an incarnation of a device that already said it left.
    AfterLeave,
    /// The data did not decode as the store's type.
    DataDecode,
    /// A gossip message on a topic this node has not joined (neither the presence topic
    /// nor a joined store's): dropped before gossipsub caches or forwards it.
    UnjoinedTopic,
    /// A signed message whose envelope is not in its canonical form (an extra field,
    /// another field order, a longer encoding than needed): a re-encoded copy. It is not
    /// forwarded and costs its sender peer score; its signed content, when valid, is
    /// still used (a re-encoded copy shares the original's message id, so it may be the
    /// only copy this node gets).
    NonCanonical,
}

impl RejectReason {
    /// All reasons, in counter order.
    pub const ALL: [RejectReason; 13] = [
        RejectReason::Undecodable,
        RejectReason::UnknownVersion,
        RejectReason::UnknownKind,
        RejectReason::Oversized,
        RejectReason::BadSignature,
        RejectReason::Forged,
        RejectReason::WrongStore,
        RejectReason::BadField,
        RejectReason::Stale,
        RejectReason::AfterLeave,
        RejectReason::DataDecode,
        RejectReason::UnjoinedTopic,
        RejectReason::NonCanonical,
    ];

    /// A stable snake_case name, used as the metric key.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Undecodable => "undecodable",
            RejectReason::UnknownVersion => "unknown_version",
            RejectReason::UnknownKind => "unknown_kind",
            RejectReason::Oversized => "oversized",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::Forged => "forged",
            RejectReason::WrongStore => "wrong_store",
            RejectReason::BadField => "bad_field",
            RejectReason::Stale => "stale",
            RejectReason::AfterLeave => "after_leave",
            RejectReason::DataDecode => "data_decode",
            RejectReason::UnjoinedTopic => "unjoined_topic",
            RejectReason::NonCanonical => "non_canonical",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Just enough of any message to route it: `v` and `kind`.
#[derive(Deserialize)]
struct Header {
    v: u8,
    #[serde(default)]
    kind: String,
}

fn header(bytes: &[u8]) -> Result<Header, RejectReason> {
    let h: Header = rmp_serde::from_slice(bytes).map_err(|_| RejectReason::Undecodable)?;
    if h.v != PROTOCOL_VERSION {
        return Err(RejectReason::UnknownVersion);
    }
    Ok(h)
}

/// The signed part of a slice message, borrowed from the bytes it is read from or
/// written with.
#[derive(Serialize, Deserialize)]
struct SliceBody<'a> {
    store: &'a str,
    device: &'a str,
    incarnation: u64,
    version: u64,
    updated_at: u64,
    #[serde(borrow, with = "serde_bytes")]
    data: &'a [u8],
}

/// Every gossiped message as it travels: a body signed by the device it names. Slices
/// travel so on store topics and inside sync responses; presence and leave on the presence
/// topic.
#[derive(Serialize, Deserialize)]
struct SignedMsg {
    v: u8,
    kind: String,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

/// A [`SignedMsg`] borrowed from the bytes it is read from. Unknown fields are skipped.
#[derive(Deserialize)]
struct EnvelopeRef<'a> {
    v: u8,
    kind: &'a str,
    #[serde(borrow, with = "serde_bytes")]
    body: &'a [u8],
    #[serde(borrow, with = "serde_bytes")]
    sig: &'a [u8],
}

impl<'a> EnvelopeRef<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        rmp_serde::from_slice(bytes).ok()
    }

    /// The canonical encoding of this envelope (what [`seal`] writes: the map `v`, `kind`,
    /// `body`, `sig` in that order, each value in its shortest form) in the pieces it is
    /// made of, without copying the body: the head up to the body's bytes, the body, the
    /// part up to the signature's bytes, the signature.
    fn canonical_parts(&self) -> Option<[CowBytes<'a>; 4]> {
        use rmp::encode;
        let mut head = Vec::with_capacity(32 + self.kind.len());
        encode::write_map_len(&mut head, 4).ok()?;
        encode::write_str(&mut head, "v").ok()?;
        encode::write_uint(&mut head, u64::from(self.v)).ok()?;
        encode::write_str(&mut head, "kind").ok()?;
        encode::write_str(&mut head, self.kind).ok()?;
        encode::write_str(&mut head, "body").ok()?;
        encode::write_bin_len(&mut head, u32::try_from(self.body.len()).ok()?).ok()?;
        let mut mid = Vec::with_capacity(8);
        encode::write_str(&mut mid, "sig").ok()?;
        encode::write_bin_len(&mut mid, u32::try_from(self.sig.len()).ok()?).ok()?;
        Some([
            CowBytes::Owned(head),
            CowBytes::Borrowed(self.body),
            CowBytes::Owned(mid),
            CowBytes::Borrowed(self.sig),
        ])
    }

    /// Whether `bytes`, which this envelope was read from, is its canonical encoding.
    fn is_canonical_in(&self, bytes: &[u8]) -> bool {
        let Some(parts) = self.canonical_parts() else {
            return false;
        };
        let mut rest = bytes;
        for part in &parts {
            match rest.strip_prefix(part.as_ref()) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }

    /// The canonical encoding, as bytes of its own.
    fn canonical(&self) -> Option<Vec<u8>> {
        Some(self.canonical_parts()?.concat())
    }
}

/// Bytes either made here or borrowed from a message.
type CowBytes<'a> = std::borrow::Cow<'a, [u8]>;

/// Whether `bytes` is a signed message in its canonical encoding (see
/// [`RejectReason::NonCanonical`]); false for anything that is not a signed message.
pub(crate) fn is_canonical(bytes: &[u8]) -> bool {
    EnvelopeRef::parse(bytes).is_some_and(|e| e.is_canonical_in(bytes))
}

/// The gossipsub message id of `data` published on `topic`: the first 20 bytes of SHA-256
/// over the topic, a zero byte, and the canonical encoding of the signed message in
/// `data` (its `v`, `kind`, `body` and `sig`; for a message as Truffle writes it, `data`
/// itself). Data that is not a signed message is hashed as it is.
///
/// So a re-encoded copy of a message (an extra field, another field order) has the
/// original's id, and gossipsub drops it as a duplicate of the original before anything
/// checks it. The book's wire chapter documents this function; other implementations
/// must compute the same.
///
/// ```
/// let id = truffle_actors::wire::message_id("truffle/v1/presence", &[0x81, 0xa1, 0x76, 0x01]);
/// assert_eq!(id[..4], [0x42, 0xf0, 0xa4, 0xa3]);
/// ```
pub fn message_id(topic: &str, data: &[u8]) -> [u8; 20] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    match EnvelopeRef::parse(data).and_then(|e| e.canonical_parts()) {
        Some(parts) => parts.iter().for_each(|p| h.update(p)),
        None => h.update(data),
    }
    let mut id = [0u8; 20];
    id.copy_from_slice(&h.finalize()[..20]);
    id
}

/// A slice whose owner signature has been checked (the protocol core's [`crate::proto::Slice`]).
pub(crate) type VerifiedSlice = crate::proto::Slice;

/// Signs `context ++ body` and wraps both in a [`SignedMsg`] of `kind`.
fn seal(key: &Keypair, kind: &str, context: &[u8], body: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut signed = Vec::with_capacity(context.len() + body.len());
    signed.extend_from_slice(context);
    signed.extend_from_slice(&body);
    let sig = key.sign(&signed).map_err(|e| e.to_string())?;
    rmp_serde::to_vec_named(&SignedMsg {
        v: PROTOCOL_VERSION,
        kind: kind.into(),
        body,
        sig,
    })
    .map_err(|e| e.to_string())
}

/// Checks `sig` over `context ++ body` with `device`'s key.
fn verify(
    keys: &mut KeyCache,
    device: &PeerId,
    context: &[u8],
    body: &[u8],
    sig: &[u8],
) -> Result<(), RejectReason> {
    let key = keys.get(device).ok_or(RejectReason::BadSignature)?;
    let mut signed = Vec::with_capacity(context.len() + body.len());
    signed.extend_from_slice(context);
    signed.extend_from_slice(body);
    if key.verify(&signed, sig) {
        Ok(())
    } else {
        Err(RejectReason::BadSignature)
    }
}

/// Encodes and signs a slice. The signature covers `SLICE_SIGNING_CONTEXT ++ body`.
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) fn encode_slice(
    key: &Keypair,
    store: &StoreId,
    device: DeviceId,
    version: Version,
    updated_at: u64,
    data: Vec<u8>,
) -> Result<Vec<u8>, String> {
    encode_slice_as(key, store, &device.to_string(), version, updated_at, &data)
}

/// [`encode_slice`] with the device id already in text form (the gossip actor keeps its
/// own, so that publishing does not re-encode it in base58 every time).
pub(crate) fn encode_slice_as(
    key: &Keypair,
    store: &StoreId,
    device: &str,
    version: Version,
    updated_at: u64,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    let mut body = Vec::with_capacity(data.len() + 160);
    rmp_serde::encode::write_named(
        &mut body,
        &SliceBody {
            store: store.as_str(),
            device,
            incarnation: version.incarnation,
            version: version.counter,
            updated_at,
            data,
        },
    )
    .map_err(|e| e.to_string())?;
    seal(key, "slice", SLICE_SIGNING_CONTEXT, body)
}

/// The public key inside an identity-multihash peer id (ed25519 keys are inlined).
pub(crate) fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

/// Public keys already taken out of peer ids. Decoding a key decompresses a curve point,
/// about a third of the cost of the signature check itself, and the same few devices sign
/// nearly every message a node sees. Bounded: emptied when full.
#[derive(Default)]
pub(crate) struct KeyCache {
    keys: std::collections::HashMap<PeerId, Option<PublicKey>>,
}

impl KeyCache {
    /// Most keys kept before the cache is emptied.
    const CAPACITY: usize = 4096;

    pub(crate) fn get(&mut self, peer: &PeerId) -> Option<PublicKey> {
        if let Some(k) = self.keys.get(peer) {
            return k.clone();
        }
        if self.keys.len() >= Self::CAPACITY {
            self.keys.clear();
        }
        let k = public_key_of(peer);
        self.keys.insert(*peer, k.clone());
        k
    }
}

/// Decodes a slice message and checks it fully: version, size, fields, and the owner's
/// signature. `max_data` bounds the slice data; the whole message may add
/// [`SLICE_OVERHEAD`].
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) fn decode_slice(
    bytes: &[u8],
    max_data: usize,
    keys: &mut KeyCache,
) -> Result<VerifiedSlice, RejectReason> {
    decode_slice_if(bytes, max_data, keys, |_, _, _| true)
        // `None` cannot happen: nothing is declined.
        .and_then(|v| v.ok_or(RejectReason::Undecodable))
}

/// [`decode_slice`], except that once the slice's device, store and version are read
/// (from the signed body, not yet verified) `check` may decline it: then `Ok(None)`, and
/// the signature check, the expensive part, is skipped.
pub(crate) fn decode_slice_if(
    bytes: &[u8],
    max_data: usize,
    keys: &mut KeyCache,
    check: impl FnOnce(&DeviceId, &StoreId, Version) -> bool,
) -> Result<Option<VerifiedSlice>, RejectReason> {
    if bytes.len() > max_data.saturating_add(SLICE_OVERHEAD) {
        return Err(RejectReason::Oversized);
    }
    let h = header(bytes)?;
    if h.kind != "slice" {
        return Err(RejectReason::UnknownKind);
    }
    let msg = EnvelopeRef::parse(bytes).ok_or(RejectReason::Undecodable)?;
    let body: SliceBody = rmp_serde::from_slice(msg.body).map_err(|_| RejectReason::Undecodable)?;
    if body.data.len() > max_data {
        return Err(RejectReason::Oversized);
    }
    let store = StoreId::new(body.store).map_err(|_| RejectReason::BadField)?;
    let device: DeviceId = body.device.parse().map_err(|_| RejectReason::BadField)?;
    let version = Version::new(body.incarnation, body.version);
    if !check(&device, &store, version) {
        return Ok(None);
    }
    verify(
        keys,
        &device.peer_id(),
        SLICE_SIGNING_CONTEXT,
        msg.body,
        msg.sig,
    )?;
    // What is kept (and relayed in sync answers) is the canonical form, whatever form
    // it came in.
    let raw = match msg.is_canonical_in(bytes) {
        true => Arc::from(bytes),
        false => Arc::from(msg.canonical().ok_or(RejectReason::Undecodable)?),
    };
    Ok(Some(VerifiedSlice {
        store,
        device,
        version,
        updated_at: body.updated_at,
        data: Arc::from(body.data),
        raw,
    }))
}

/// One store's own-slice version in a presence digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DigestEntry {
    pub store: String,
    pub incarnation: u64,
    pub version: u64,
}

/// Periodic "I am alive, and these are my slice versions": the signed body of a
/// `presence` message on the presence topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Presence {
    pub device: String,
    pub incarnation: u64,
    pub seq: u64,
    /// Listen addresses (informative).
    #[serde(default)]
    pub addrs: Vec<String>,
    /// True when the digest lists only some of the device's stores (more than
    /// [`MAX_DIGEST_ENTRIES`]); the rest follow in later rounds.
    #[serde(default)]
    pub partial: bool,
    #[serde(default)]
    pub digest: Vec<DigestEntry>,
    /// The device's human-readable name, when it set one (informative; added after v1
    /// shipped, so absent from older peers' messages and omitted when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// "I am leaving": the signed body of a `leave` message, sent on graceful shutdown on the
/// presence topic (a direct leave request carries only the incarnation: the stream is
/// authenticated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Leave {
    pub device: String,
    pub incarnation: u64,
}

/// "`device` stopped answering me": the signed body of a `suspect` message (watch
/// liveness), published on the presence topic and signed by the accuser. `seq` is the
/// accused's latest heartbeat the accuser knew; a heartbeat of the same run with a higher
/// `seq` refutes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Suspect {
    pub accuser: String,
    pub device: String,
    pub incarnation: u64,
    pub seq: u64,
}

/// A decoded message from the presence topic.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PresenceMsg {
    Presence(Presence),
    Leave(Leave),
    Suspect(Suspect),
}

/// The wire form of the core's heartbeat.
pub(crate) fn presence_of(h: &crate::proto::Heartbeat) -> Presence {
    Presence {
        device: h.device.to_string(),
        incarnation: h.incarnation,
        seq: h.seq,
        addrs: h.addrs.clone(),
        partial: h.partial,
        digest: h
            .digest
            .iter()
            .map(|(s, v)| DigestEntry {
                store: s.to_string(),
                incarnation: v.incarnation,
                version: v.counter,
            })
            .collect(),
        name: None,
    }
}

/// Bytes a signed `presence` message carrying `h` takes on the wire (what a simulator
/// charges for one, without a key to sign it).
///
/// ```
/// # use truffle_actors::{proto::Heartbeat, wire::heartbeat_wire_len, DeviceId};
/// let me = DeviceId::from(truffle_actors::identity::Keypair::generate_ed25519().public().to_peer_id());
/// let h = Heartbeat { device: me, incarnation: 1, seq: 1, addrs: vec![], partial: false, digest: vec![] };
/// assert!(heartbeat_wire_len(&h) > 64); // at least the signature
/// ```
pub fn heartbeat_wire_len(h: &crate::proto::Heartbeat) -> usize {
    let body = rmp_serde::to_vec_named(&presence_of(h))
        .map(|b| b.len())
        .unwrap_or(0);
    let bin_header = match body {
        0..=255 => 2,
        256..=65_535 => 3,
        _ => 5,
    };
    SIGNED_ENVELOPE_OVERHEAD + "presence".len() + bin_header + body
}

/// The bytes a [`SignedMsg`] adds around its body besides the kind's name and the body's
/// bin header: the map, the field names, the version, the kind's string header and the
/// 64-byte ed25519 signature with its bin header.
const SIGNED_ENVELOPE_OVERHEAD: usize = 1 + (2 + 1) + (5 + 1) + 5 + (4 + 2 + 64);

/// Encodes and signs a presence message.
pub(crate) fn encode_presence(key: &Keypair, p: &Presence) -> Result<Vec<u8>, String> {
    let body = rmp_serde::to_vec_named(p).map_err(|e| e.to_string())?;
    seal(key, "presence", PRESENCE_SIGNING_CONTEXT, body)
}

/// Encodes and signs a leave message.
pub(crate) fn encode_leave(key: &Keypair, l: &Leave) -> Result<Vec<u8>, String> {
    let body = rmp_serde::to_vec_named(l).map_err(|e| e.to_string())?;
    seal(key, "leave", LEAVE_SIGNING_CONTEXT, body)
}

/// Encodes and signs an accusation (the accuser's key).
pub(crate) fn encode_suspect(key: &Keypair, s: &Suspect) -> Result<Vec<u8>, String> {
    let body = rmp_serde::to_vec_named(s).map_err(|e| e.to_string())?;
    seal(key, "suspect", SUSPECT_SIGNING_CONTEXT, body)
}

/// [`decode_presence_msg_if`] with nothing declined.
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) fn decode_presence_msg(
    bytes: &[u8],
    max_bytes: usize,
    keys: &mut KeyCache,
) -> Result<(PeerId, PresenceMsg), RejectReason> {
    decode_presence_msg_if(bytes, max_bytes, keys, |_| Screen::Verify)?
        .ok_or(RejectReason::Undecodable)
}

/// What [`decode_presence_msg_if`] does with a message once it knows the device that
/// signed it, before checking the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Screen {
    /// Check the signature.
    Verify,
    /// The caller already checked the signature of these exact bytes, as this device's
    /// (a heartbeat it holds, again in another peer's `members` answer or in gossip):
    /// take them without checking it again. Only for bytes equal to ones verified before.
    Verified,
    /// Not worth a signature check: the result is `Ok(None)`.
    Decline,
}

/// Decodes a presence-topic message and checks that the device it names signed it.
/// Returns that device with the message; but first `screen` decides, from the device the
/// decoded and not yet verified message names, whether to check the signature (see
/// [`Screen`]).
pub(crate) fn decode_presence_msg_if(
    bytes: &[u8],
    max_bytes: usize,
    keys: &mut KeyCache,
    screen: impl FnOnce(&PeerId) -> Screen,
) -> Result<Option<(PeerId, PresenceMsg)>, RejectReason> {
    if bytes.len() > max_bytes {
        return Err(RejectReason::Oversized);
    }
    let h = header(bytes)?;
    let context = match h.kind.as_str() {
        "presence" => PRESENCE_SIGNING_CONTEXT,
        "leave" => LEAVE_SIGNING_CONTEXT,
        "suspect" => SUSPECT_SIGNING_CONTEXT,
        _ => return Err(RejectReason::UnknownKind),
    };
    let msg: SignedMsg = rmp_serde::from_slice(bytes).map_err(|_| RejectReason::Undecodable)?;
    let (out, device) = if h.kind == "presence" {
        let mut p: Presence =
            rmp_serde::from_slice(&msg.body).map_err(|_| RejectReason::Undecodable)?;
        if p.digest.len() > MAX_DIGEST_ENTRIES {
            return Err(RejectReason::Oversized);
        }
        p.addrs.truncate(MAX_PRESENCE_ADDRS);
        if let Some(name) = &mut p.name {
            truncate_name(name);
        }
        let d = p.device.clone();
        (PresenceMsg::Presence(p), d)
    } else if h.kind == "suspect" {
        let s: Suspect = rmp_serde::from_slice(&msg.body).map_err(|_| RejectReason::Undecodable)?;
        // Signed by the accuser, who names itself.
        let d = s.accuser.clone();
        (PresenceMsg::Suspect(s), d)
    } else {
        let l: Leave = rmp_serde::from_slice(&msg.body).map_err(|_| RejectReason::Undecodable)?;
        let d = l.device.clone();
        (PresenceMsg::Leave(l), d)
    };
    let device: PeerId = device
        .parse::<DeviceId>()
        .map_err(|_| RejectReason::BadField)?
        .peer_id();
    match screen(&device) {
        Screen::Decline => return Ok(None),
        Screen::Verify => verify(keys, &device, context, &msg.body, &msg.sig)?,
        Screen::Verified => {}
    }
    Ok(Some((device, out)))
}

/// Cuts a peer-supplied name to [`crate::introspect::MAX_NAME_LEN`] bytes (at a character
/// boundary) and replaces control characters, so it is safe to log and show.
fn truncate_name(name: &mut String) {
    let max = crate::introspect::MAX_NAME_LEN;
    if name.chars().any(char::is_control) {
        *name = name
            .chars()
            .take(max)
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect();
    }
    if name.len() > max {
        let mut end = max;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
}

/// What a sync request asks for: all slices a peer holds for `store`, or only `device`'s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    /// The store id.
    pub store: String,
    /// One device (peer id, base58), or every device held when absent.
    #[serde(default)]
    pub device: Option<String>,
}

/// A direct request over [`SYNC_PROTOCOL`].
///
/// The fields after `incarnation` belong to watch liveness (kinds `digest`, `members`,
/// `trim`, `accused`); they are left out when empty, so a `fetch` or `leave` encodes as it
/// always did, and a node that does not know a kind answers it with no slices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// [`PROTOCOL_VERSION`].
    pub v: u8,
    /// `"fetch"`, `"leave"`, `"digest"`, `"members"`, `"trim"` or `"accused"`.
    pub kind: String,
    /// For `fetch`: what to send back.
    #[serde(default)]
    pub want: Vec<Want>,
    /// For `leave`: the incarnation that is leaving.
    #[serde(default)]
    pub incarnation: Incarnation,
    /// For `digest`: the asker's view, hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<WireDigest>,
    /// For `members`: the devices whose latest presence the asker wants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// For `accused`: the accusation passed on to the accused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accused: Option<WireSuspicion>,
}

/// In a `digest` answer: a store id and the slice versions held in it, each
/// `(device, incarnation, counter)`.
pub type StoreVersions = (String, Vec<(String, u64, u64)>);

/// A node's view, hashed (see the book's Simulation chapter, "Watch liveness").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireDigest {
    /// XOR of the member entry hashes.
    pub members: u64,
    /// Per store: XOR of the held slice version hashes.
    #[serde(default)]
    pub stores: Vec<(String, u64)>,
}

/// An accusation passed on directly (`accused` request).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSuspicion {
    /// The accused.
    pub device: String,
    /// Its run.
    pub incarnation: u64,
    /// Its latest heartbeat the accuser knew.
    pub seq: u64,
}

/// The answer to a [`SyncRequest`]: signed slice messages, relayed as their owners signed them.
///
/// The slices are shared (`Arc`), not owned: an answer hands over the very bytes the
/// answering node holds, and [`SyncCodec`] writes them to the stream from there, so an
/// answer costs no copy of its slices however often it is asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// [`PROTOCOL_VERSION`].
    pub v: u8,
    /// Slice messages exactly as their owners encoded and signed them (MessagePack `bin`s).
    #[serde(default, with = "shared_bins")]
    pub slices: Vec<Arc<[u8]>>,
    /// Answer to `digest` when the member hashes differ: the answering node's live
    /// members, `(device, incarnation, presence seq)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<(String, u64, u64)>>,
    /// Answer to `digest`: for each store whose hash differs, the slice versions held,
    /// `(device, incarnation, counter)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<StoreVersions>,
    /// Answer to `members`: presence messages exactly as their devices signed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "shared_bins")]
    pub presences: Vec<Arc<[u8]>>,
}

/// `Vec<Arc<[u8]>>` as a MessagePack array of `bin`s (serde would write each `[u8]` as an
/// array of integers).
mod shared_bins {
    use std::sync::Arc;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(slices: &[Arc<[u8]>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(slices.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<[u8]>>, D::Error> {
        let bufs: Vec<serde_bytes::ByteBuf> = serde::Deserialize::deserialize(d)?;
        Ok(bufs.into_iter().map(|b| Arc::from(b.into_vec())).collect())
    }
}

/// The MessagePack encoding of `res` up to its slices' bytes: the map, `v`, the `slices`
/// array, and each slice's `bin` header. Written before each slice's bytes, it gives
/// exactly what `rmp_serde::to_vec_named(res)` gives, without building that copy.
/// Returns the head of the message and each slice's `bin` header.
fn response_headers(res: &SyncResponse) -> io::Result<(Vec<u8>, Vec<Vec<u8>>)> {
    use rmp::encode;
    let fail = |e: encode::ValueWriteError| invalid(e);
    let mut head = Vec::with_capacity(16);
    encode::write_map_len(&mut head, 2).map_err(fail)?;
    encode::write_str(&mut head, "v").map_err(fail)?;
    encode::write_uint(&mut head, u64::from(res.v)).map_err(fail)?;
    encode::write_str(&mut head, "slices").map_err(fail)?;
    let n = u32::try_from(res.slices.len()).map_err(invalid)?;
    encode::write_array_len(&mut head, n).map_err(fail)?;
    let bins = res
        .slices
        .iter()
        .map(|s| {
            let len = u32::try_from(s.len()).map_err(invalid)?;
            let mut h = Vec::with_capacity(5);
            encode::write_bin_len(&mut h, len).map_err(fail)?;
            Ok(h)
        })
        .collect::<io::Result<_>>()?;
    Ok((head, bins))
}

/// The `request_response` codec of [`SYNC_PROTOCOL`]: length-prefixed MessagePack over a
/// libp2p stream, a 4-byte big-endian length then the body. Lengths over the limit are
/// refused before anything is allocated.
#[derive(Clone, Debug)]
pub struct SyncCodec {
    /// Largest request body read, in bytes.
    pub max_request: usize,
    /// Largest response body read, in bytes.
    pub max_response: usize,
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sync frame of {len} bytes is over the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "sync frame over 4 GiB"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await?;
    io.close().await
}

fn invalid(e: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_frame(io, self.max_request).await?;
        let h = header(&buf).map_err(invalid)?;
        if !matches!(
            h.kind.as_str(),
            "fetch" | "leave" | "digest" | "members" | "trim" | "accused"
        ) {
            return Err(invalid(RejectReason::UnknownKind));
        }
        rmp_serde::from_slice(&buf).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_frame(io, self.max_response).await?;
        header(&buf).map_err(invalid)?;
        rmp_serde::from_slice(&buf).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body = rmp_serde::to_vec_named(&req).map_err(invalid)?;
        write_frame(io, &body).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SyncResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if res.members.is_some() || !res.stores.is_empty() || !res.presences.is_empty() {
            // A watch-liveness answer: small next to a slice answer, encoded whole.
            let body = rmp_serde::to_vec_named(&res).map_err(invalid)?;
            return write_frame(io, &body).await;
        }
        // The slices go to the stream straight from the shared bytes the node holds: no
        // copy of the answer (up to `max_response_bytes`) is built first, and a peer that
        // does not read its answers holds only what the stream buffers.
        let (head, bins) = response_headers(&res)?;
        let len = head.len()
            + bins
                .iter()
                .zip(&res.slices)
                .map(|(h, s)| h.len() + s.len())
                .sum::<usize>();
        let len = u32::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "sync frame over 4 GiB"))?;
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(&head).await?;
        for (h, s) in bins.iter().zip(&res.slices) {
            io.write_all(h).await?;
            io.write_all(s).await?;
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (Keypair, DeviceId) {
        let k = Keypair::generate_ed25519();
        let d = DeviceId::from(k.public().to_peer_id());
        (k, d)
    }

    /// What the simulator charges for a presence is what a node sends.
    #[test]
    fn the_heartbeat_wire_length_is_the_signed_presence_length() {
        let (k, d) = key();
        for stores in [0usize, 1, 3, 300] {
            let h = crate::proto::Heartbeat {
                device: d,
                incarnation: 1_764_000_000_000,
                seq: 77,
                addrs: vec!["/ip4/10.0.0.7/tcp/4001".into()],
                partial: stores > MAX_DIGEST_ENTRIES,
                digest: (0..stores.min(MAX_DIGEST_ENTRIES))
                    .map(|i| {
                        (
                            StoreId::new(format!("store-{i}")).unwrap(),
                            Version::new(1, i as u64),
                        )
                    })
                    .collect(),
            };
            let signed = encode_presence(&k, &presence_of(&h)).unwrap();
            assert_eq!(heartbeat_wire_len(&h), signed.len(), "{stores} stores");
        }
    }

    #[test]
    fn slice_round_trips_and_verifies() {
        let (k, d) = key();
        let store = StoreId::new("todos").unwrap();
        let bytes = encode_slice(&k, &store, d, Version::new(7, 3), 42, vec![1, 2, 3]).unwrap();
        let s = decode_slice(&bytes, 1 << 20, &mut KeyCache::default()).unwrap();
        assert_eq!(s.store, store);
        assert_eq!(s.device, d);
        assert_eq!(s.version, Version::new(7, 3));
        assert_eq!(s.updated_at, 42);
        assert_eq!(&*s.data, &[1, 2, 3]);
        assert_eq!(&*s.raw, &bytes[..]);
    }

    #[test]
    fn slice_is_a_named_msgpack_map() {
        let (k, d) = key();
        let store = StoreId::new("s").unwrap();
        let bytes = encode_slice(&k, &store, d, Version::new(1, 1), 0, vec![]).unwrap();
        // fixmap with 4 entries, first key "v"
        assert_eq!(bytes[0], 0x84);
        assert_eq!(&bytes[1..3], &[0xa1, b'v']);
    }

    #[test]
    fn tampered_or_foreign_slices_fail_the_signature() {
        let (k, d) = key();
        let (_, other) = key();
        let store = StoreId::new("todos").unwrap();
        // signed by k but claiming to be `other`
        let forged = encode_slice(&k, &store, other, Version::new(1, 1), 0, vec![]).unwrap();
        assert_eq!(
            decode_slice(&forged, 1 << 20, &mut KeyCache::default()).unwrap_err(),
            RejectReason::BadSignature
        );
        // flip a byte of the body
        let good = encode_slice(&k, &store, d, Version::new(1, 1), 0, vec![9; 16]).unwrap();
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 70] ^= 1;
        assert!(decode_slice(&bad, 1 << 20, &mut KeyCache::default()).is_err());
    }

    #[test]
    fn junk_is_rejected_by_reason() {
        assert_eq!(
            decode_slice(b"\xc1garbage", 1 << 20, &mut KeyCache::default()).unwrap_err(),
            RejectReason::Undecodable
        );
        let v2 = rmp_serde::to_vec_named(&SignedMsg {
            v: 2,
            kind: "slice".into(),
            body: vec![],
            sig: vec![],
        })
        .unwrap();
        assert_eq!(
            decode_slice(&v2, 1 << 20, &mut KeyCache::default()).unwrap_err(),
            RejectReason::UnknownVersion
        );
        assert_eq!(
            decode_slice(
                &vec![0u8; 10 + SLICE_OVERHEAD + 1],
                10,
                &mut KeyCache::default()
            )
            .unwrap_err(),
            RejectReason::Oversized
        );
        let (k, d) = key();
        let store = StoreId::new("s").unwrap();
        let big = encode_slice(&k, &store, d, Version::new(1, 1), 0, vec![0; 11]).unwrap();
        assert_eq!(
            decode_slice(&big, 10, &mut KeyCache::default()).unwrap_err(),
            RejectReason::Oversized
        );
        assert!(decode_slice(&big, 11, &mut KeyCache::default()).is_ok());
    }

    #[test]
    fn presence_and_leave_must_be_signed_by_their_device() {
        let (k, d) = key();
        let (other_key, _) = key();
        let keys = &mut KeyCache::default();
        let p = Presence {
            device: d.to_string(),
            incarnation: 5,
            seq: 1,
            addrs: vec![],
            partial: false,
            digest: vec![DigestEntry {
                store: "todos".into(),
                incarnation: 5,
                version: 2,
            }],
            name: Some("laptop".into()),
        };
        let bytes = encode_presence(&k, &p).unwrap();
        assert_eq!(
            decode_presence_msg(&bytes, 1 << 16, keys).unwrap(),
            (d.peer_id(), PresenceMsg::Presence(p.clone()))
        );
        // Someone else's key, claiming `d`.
        let forged = encode_presence(&other_key, &p).unwrap();
        assert_eq!(
            decode_presence_msg(&forged, 1 << 16, keys).unwrap_err(),
            RejectReason::BadSignature
        );
        let l = Leave {
            device: d.to_string(),
            incarnation: 5,
        };
        assert_eq!(
            decode_presence_msg(&encode_leave(&k, &l).unwrap(), 1 << 16, keys).unwrap(),
            (d.peer_id(), PresenceMsg::Leave(l.clone()))
        );
        assert_eq!(
            decode_presence_msg(&encode_leave(&other_key, &l).unwrap(), 1 << 16, keys).unwrap_err(),
            RejectReason::BadSignature
        );
        // A presence signature does not pass for a leave: the same signed body relabelled
        // `leave` decodes as a leave (extra fields are ignored), but the contexts differ.
        let mut swapped: SignedMsg = rmp_serde::from_slice(&bytes).unwrap();
        swapped.kind = "leave".into();
        let swapped = rmp_serde::to_vec_named(&swapped).unwrap();
        assert_eq!(
            decode_presence_msg(&swapped, 1 << 16, keys).unwrap_err(),
            RejectReason::BadSignature
        );
        assert_eq!(
            decode_presence_msg(&bytes, bytes.len() - 1, keys).unwrap_err(),
            RejectReason::Oversized
        );
    }

    /// A name is optional on the wire (older peers send none), and a peer's name is
    /// bounded and cleaned before anyone shows it.
    #[test]
    fn presence_names_are_optional_and_bounded() {
        let (k, d) = key();
        let keys = &mut KeyCache::default();
        let mut p = Presence {
            device: d.to_string(),
            incarnation: 5,
            seq: 1,
            addrs: vec![],
            partial: false,
            digest: vec![],
            name: None,
        };
        let unnamed = rmp_serde::to_vec_named(&p).unwrap();
        assert!(
            !unnamed.windows(4).any(|w| w == b"name"),
            "no name field when unset"
        );
        p.name = Some(format!("é\u{7}{}", "x".repeat(200)));
        let bytes = encode_presence(&k, &p).unwrap();
        let Ok((_, PresenceMsg::Presence(got))) = decode_presence_msg(&bytes, 1 << 16, keys) else {
            panic!("a named presence decodes");
        };
        let name = got.name.unwrap();
        assert!(name.len() <= crate::introspect::MAX_NAME_LEN, "{name}");
        assert!(name.starts_with("é\u{fffd}x"), "{name}");
    }

    /// The sizes the book's wire chapter gives for its presence and leave examples.
    #[test]
    fn the_wire_chapter_examples_have_the_sizes_it_gives() {
        let (k, _) = key();
        let device = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp".to_string();
        let p = Presence {
            device: device.clone(),
            incarnation: 1_700_000_000_000,
            seq: 7,
            addrs: vec![],
            partial: false,
            digest: vec![DigestEntry {
                store: "todos".into(),
                incarnation: 1_700_000_000_000,
                version: 3,
            }],
            name: None,
        };
        assert_eq!(rmp_serde::to_vec_named(&p).unwrap().len(), 155);
        assert_eq!(encode_presence(&k, &p).unwrap().len(), 250);
        let l = Leave {
            device,
            incarnation: 1_700_000_000_000,
        };
        assert_eq!(rmp_serde::to_vec_named(&l).unwrap().len(), 83);
        assert_eq!(encode_leave(&k, &l).unwrap().len(), 175);
    }

    /// The streamed answer is byte for byte the frame of its plain MessagePack encoding
    /// (what other implementations read), for every size class of array and `bin` header.
    #[test]
    fn a_streamed_answer_is_its_msgpack_encoding() {
        for (count, size) in [(0, 0), (1, 0), (3, 200), (15, 300), (16, 70_000), (17, 5)] {
            let res = SyncResponse {
                v: PROTOCOL_VERSION,
                slices: (0..count)
                    .map(|i| Arc::from(vec![i as u8; size + i]))
                    .collect(),
                ..SyncResponse::default()
            };
            let mut codec = SyncCodec {
                max_request: 1 << 20,
                max_response: 1 << 24,
            };
            let mut out = futures::io::Cursor::new(Vec::new());
            futures::executor::block_on(libp2p::request_response::Codec::write_response(
                &mut codec,
                &SYNC_PROTOCOL,
                &mut out,
                res.clone(),
            ))
            .unwrap();
            let out = out.into_inner();
            let plain = rmp_serde::to_vec_named(&res).unwrap();
            assert_eq!(out[..4], (plain.len() as u32).to_be_bytes(), "{count}");
            assert_eq!(out[4..], plain[..], "{count} slices of {size}");
            let back = futures::executor::block_on(libp2p::request_response::Codec::read_response(
                &mut codec,
                &SYNC_PROTOCOL,
                &mut futures::io::Cursor::new(out),
            ))
            .unwrap();
            assert_eq!(back, res);
        }
    }

    /// What `seal` writes is canonical, and the id of a message is the id of its
    /// canonical form: re-encoded copies share it, and a slice read from one keeps the
    /// canonical bytes.
    #[test]
    fn re_encoded_copies_are_not_canonical_and_share_the_original_id() {
        let (k, d) = key();
        let store = StoreId::new("todos").unwrap();
        let topic = store_topic(&store);
        for size in [0usize, 10, 300, 70_000] {
            let good = encode_slice(&k, &store, d, Version::new(1, 1), 0, vec![7; size]).unwrap();
            assert!(is_canonical(&good), "{size}");
            let plain = {
                use sha2::{Digest, Sha256};
                let mut h = Sha256::new();
                h.update(topic.as_bytes());
                h.update([0u8]);
                h.update(&good);
                h.finalize()[..20].to_vec()
            };
            assert_eq!(
                message_id(&topic, &good)[..],
                plain[..],
                "canonical: the data"
            );
            let env: SignedMsg = rmp_serde::from_slice(&good).unwrap();
            #[derive(Serialize)]
            struct Extra<'a> {
                #[serde(flatten)]
                e: &'a SignedMsg,
                pad: u8,
            }
            #[derive(Serialize)]
            struct Reordered<'a> {
                kind: &'a str,
                v: u8,
                #[serde(with = "serde_bytes")]
                body: &'a [u8],
                #[serde(with = "serde_bytes")]
                sig: &'a [u8],
            }
            let copies = [
                rmp_serde::to_vec_named(&Extra { e: &env, pad: 1 }).unwrap(),
                rmp_serde::to_vec_named(&Reordered {
                    kind: &env.kind,
                    v: env.v,
                    body: &env.body,
                    sig: &env.sig,
                })
                .unwrap(),
            ];
            for copy in copies {
                assert_ne!(copy, good);
                assert!(!is_canonical(&copy), "{size}");
                assert_eq!(message_id(&topic, &copy), message_id(&topic, &good));
                let s = decode_slice(&copy, 1 << 20, &mut KeyCache::default()).unwrap();
                assert_eq!(&*s.raw, &good[..], "the canonical form is kept");
            }
        }
        assert!(!is_canonical(b"\xc1 junk"));
        let junk_id = message_id(&topic, b"\xc1 junk");
        assert_ne!(junk_id, message_id(&topic, b"\xc1 junk!"));
    }

    #[test]
    fn the_key_cache_gives_the_key_inside_the_peer_id() {
        let (k, d) = key();
        let keys = &mut KeyCache::default();
        assert_eq!(keys.get(&d.peer_id()), Some(k.public()));
        assert_eq!(keys.get(&d.peer_id()), Some(k.public()));
        // A peer id that is a hash of its key has no key inside.
        let hashed = PeerId::from_multihash(
            libp2p::multihash::Multihash::<64>::wrap(0x12, &[7; 32]).unwrap(),
        )
        .unwrap();
        assert_eq!(keys.get(&hashed), None);
    }

    #[test]
    fn public_key_comes_out_of_an_ed25519_peer_id() {
        let (k, d) = key();
        assert_eq!(public_key_of(&d.peer_id()), Some(k.public()));
    }
}

//! Identifiers: devices, stores, and the `(incarnation, counter)` version order.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use libp2p::PeerId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// Longest store id accepted, in bytes.
pub const MAX_STORE_ID_LEN: usize = 128;

/// A device (node) identity: the node's libp2p [`PeerId`].
///
/// Every slice is owned by exactly one device, and only that device can write it: slices
/// are signed with the device's key and checked against this id.
///
/// ```
/// use truffle_actors::DeviceId;
/// let id: DeviceId = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp".parse().unwrap();
/// assert_eq!(id.to_string(), "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp");
/// ```
#[derive(Clone, Copy, PartialOrd, Ord)]
pub struct DeviceId {
    /// The peer id's multihash bytes, zero-padded, with their length in the last byte,
    /// read as big-endian words: compared as numbers, these order ids exactly as their
    /// bytes do (and so as [`PeerId`] does), and they compare and hash a word at a time.
    words: [u64; WORDS],
}

/// Longest multihash of a peer id: an identity multihash (code and length, one byte each)
/// of a public key of at most 42 bytes; longer keys are hashed with sha2-256 (34 bytes).
const MAX_PEER_ID_BYTES: usize = 44;
const WORDS: usize = (MAX_PEER_ID_BYTES + 1).div_ceil(8);

// Every node tracks every device in several maps, so the size of an id is much of what a
// member costs: a `PeerId` takes 80 bytes, this 48.
const _: () = assert!(std::mem::size_of::<DeviceId>() == 48);

impl DeviceId {
    /// Wraps a libp2p peer id.
    pub fn from_peer_id(peer: PeerId) -> Self {
        let raw = peer.to_bytes();
        let mut bytes = [0u8; WORDS * 8];
        // libp2p builds a peer id only from an identity multihash of at most 42 bytes or a
        // sha2-256 one, so it always fits (the test below checks the longest).
        let len = raw.len().min(MAX_PEER_ID_BYTES);
        debug_assert_eq!(
            len,
            raw.len(),
            "peer id longer than {MAX_PEER_ID_BYTES} bytes"
        );
        bytes[..len].copy_from_slice(&raw[..len]);
        bytes[WORDS * 8 - 1] = len as u8;
        let mut words = [0u64; WORDS];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_be_bytes(b);
        }
        Self { words }
    }

    /// The underlying libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        let mut bytes = [0u8; WORDS * 8];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(self.words) {
            chunk.copy_from_slice(&w.to_be_bytes());
        }
        let len = usize::from(bytes[WORDS * 8 - 1]);
        PeerId::from_bytes(&bytes[..len]).expect("a device id holds the bytes of a valid peer id")
    }
}

// By hand: the derived comparison of the array calls `memcmp`, which the lookups in every
// node's member map spent a tenth of a large simulation in.
impl PartialEq for DeviceId {
    fn eq(&self, other: &Self) -> bool {
        self.words
            .iter()
            .zip(other.words)
            .fold(0, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl Eq for DeviceId {}

impl std::hash::Hash for DeviceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.words.hash(state);
    }
}

impl From<PeerId> for DeviceId {
    fn from(peer: PeerId) -> Self {
        Self::from_peer_id(peer)
    }
}

/// Most device ids whose base58 text each thread remembers, each way.
const TEXT_CACHE: usize = 4096;

/// Device ids to their text, and text to device ids.
type TextCache = (HashMap<DeviceId, Arc<str>>, HashMap<Arc<str>, DeviceId>);

thread_local! {
    /// Base58 text of device ids lately written or read on this thread. A device id is
    /// text on the wire (sync requests and answers, envelopes), and one node writes and
    /// reads the same few hundred ids over and over: converting each time (quadratic in
    /// the id's length) took about a twelfth of the CPU of a 128-node join wave. Both maps
    /// are emptied when full, so a flood of new ids costs them no more than their bound.
    static TEXT: RefCell<TextCache> = RefCell::new((HashMap::new(), HashMap::new()));
}

impl DeviceId {
    /// The id's base58 text, converted once per thread (see [`TEXT`]).
    fn text(&self) -> Arc<str> {
        TEXT.with_borrow_mut(|(texts, _)| {
            if let Some(t) = texts.get(self) {
                return t.clone();
            }
            if texts.len() >= TEXT_CACHE {
                texts.clear();
            }
            let t: Arc<str> = self.peer_id().to_base58().into();
            texts.insert(*self, t.clone());
            t
        })
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(d) = TEXT.with_borrow(|(_, ids)| ids.get(s).copied()) {
            return Ok(d);
        }
        let d =
            s.parse::<PeerId>()
                .map(Self::from_peer_id)
                .map_err(|e| Error::InvalidDeviceId {
                    id: s.to_owned(),
                    reason: e.to_string(),
                })?;
        TEXT.with_borrow_mut(|(_, ids)| {
            if ids.len() >= TEXT_CACHE {
                ids.clear();
            }
            ids.insert(s.into(), d);
        });
        Ok(d)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The name of a store, shared by every node that joins it (it names the gossip topic).
///
/// 1 to 128 bytes of `[A-Za-z0-9._-]`.
///
/// ```
/// use truffle_actors::StoreId;
/// assert!(StoreId::new("todos").is_ok());
/// assert!(StoreId::new("no spaces").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreId(Arc<str>);

impl StoreId {
    /// Validates and wraps a store id.
    pub fn new(id: impl AsRef<str>) -> Result<Self, Error> {
        let id = id.as_ref();
        validate_store_id(id).map_err(|reason| Error::InvalidStoreId {
            id: id.to_owned(),
            reason,
        })?;
        Ok(Self(Arc::from(id)))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rule shared with `#[derive(Syncable)]`, which checks it at compile time.
pub(crate) fn validate_store_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("a store id must not be empty");
    }
    if id.len() > MAX_STORE_ID_LEN {
        return Err("a store id must be at most 128 bytes");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a store id may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreId({:?})", &*self.0)
    }
}

impl Serialize for StoreId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StoreId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StoreId::new(s).map_err(serde::de::Error::custom)
    }
}

/// One run of a node process. A restarted node picks a new, higher incarnation (its start
/// time in milliseconds since the Unix epoch), so its fresh slices order after every slice
/// of its earlier runs even though its write counter starts again at 0.
pub type Incarnation = u64;

/// The order of a device's slice versions: first by incarnation, then by the write counter
/// within that incarnation.
///
/// ```
/// use truffle_actors::Version;
/// let before_restart = Version::new(1_700_000_000_000, 57);
/// let after_restart = Version::new(1_700_000_100_000, 1);
/// assert!(after_restart > before_restart);
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Version {
    /// The run of the node that wrote this version.
    pub incarnation: Incarnation,
    /// Writes within that run, starting at 0 for the initial (default) slice.
    pub counter: u64,
}

impl Version {
    /// Builds a version.
    pub const fn new(incarnation: Incarnation, counter: u64) -> Self {
        Self {
            incarnation,
            counter,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.incarnation, self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_orders_by_incarnation_then_counter() {
        let a = Version::new(1, 100);
        let b = Version::new(2, 0);
        let c = Version::new(2, 1);
        assert!(a < b && b < c);
        let mut v = vec![c, a, b];
        v.sort();
        assert_eq!(v, vec![a, b, c]);
    }

    #[test]
    fn device_ids_keep_every_kind_of_peer_id_and_its_order() {
        use libp2p::multihash::Multihash;
        let ed = PeerId::from(libp2p::identity::Keypair::generate_ed25519().public());
        // The longest identity multihash libp2p makes (a 42-byte key) and a hashed one.
        let long = PeerId::from_multihash(Multihash::wrap(0x00, &[7u8; 42]).unwrap()).unwrap();
        let hashed = PeerId::from_multihash(Multihash::wrap(0x12, &[9u8; 32]).unwrap()).unwrap();
        let mut peers = vec![ed, long, hashed, PeerId::random(), PeerId::random()];
        for p in &peers {
            let d = DeviceId::from_peer_id(*p);
            assert_eq!(d.peer_id(), *p);
            assert_eq!(d.to_string(), p.to_string());
            assert_eq!(d.to_string().parse::<DeviceId>().unwrap(), d);
        }
        let mut devices: Vec<DeviceId> = peers.iter().copied().map(DeviceId::from).collect();
        peers.sort();
        devices.sort();
        let back: Vec<PeerId> = devices.iter().map(DeviceId::peer_id).collect();
        assert_eq!(back, peers);
    }

    #[test]
    fn store_id_rules() {
        assert!(StoreId::new("a.b-c_D9").is_ok());
        assert!(StoreId::new("").is_err());
        assert!(StoreId::new("x".repeat(129)).is_err());
        assert!(StoreId::new("x".repeat(128)).is_ok());
        assert!(StoreId::new("a/b").is_err());
        assert!(StoreId::new("é").is_err());
    }

    #[test]
    fn device_id_round_trips_through_text() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let id = DeviceId::from(peer);
        let parsed: DeviceId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert!("not-a-peer".parse::<DeviceId>().is_err());
    }

    #[test]
    fn text_is_the_peer_ids_however_full_the_cache() {
        // More ids than the per-thread cache holds, each way, twice over: every one still
        // reads and writes as its peer id does.
        let ids: Vec<PeerId> = (0..TEXT_CACHE + 100).map(|_| PeerId::random()).collect();
        for _ in 0..2 {
            for p in &ids {
                let id = DeviceId::from(*p);
                assert_eq!(id.to_string(), p.to_base58());
                assert_eq!(p.to_base58().parse::<DeviceId>().unwrap(), id);
            }
        }
        assert!("not-a-peer".parse::<DeviceId>().is_err());
        assert!(
            "not-a-peer".parse::<DeviceId>().is_err(),
            "errors are not cached"
        );
    }
}

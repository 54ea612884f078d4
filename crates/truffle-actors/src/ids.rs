//! Identifiers: devices, stores, and the `(incarnation, counter)` version order.

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
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(PeerId);

impl DeviceId {
    /// Wraps a libp2p peer id.
    pub fn from_peer_id(peer: PeerId) -> Self {
        Self(peer)
    }

    /// The underlying libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.0
    }
}

impl From<PeerId> for DeviceId {
    fn from(peer: PeerId) -> Self {
        Self(peer)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

impl FromStr for DeviceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        s.parse::<PeerId>()
            .map(Self)
            .map_err(|e| Error::InvalidDeviceId {
                id: s.to_owned(),
                reason: e.to_string(),
            })
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
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
}

//! Timings and limits of a node, shared by the node builder, the protocol core and the
//! runtime (so none of them imports another for its settings).

use std::time::Duration;

use libp2p::pnet::PreSharedKey;

/// Timings and limits of a node. Set through [`crate::MeshNodeBuilder`].
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub presence_interval: Duration,
    pub presence_timeout: Duration,
    pub max_slice_size: usize,
    pub max_response_bytes: usize,
    pub gossip_heartbeat: Duration,
    pub event_buffer: usize,
    pub leave_timeout: Duration,
    pub target_peers: usize,
    pub listen_timeout: Duration,
    pub connect_timeout: Duration,
    pub inbound_handshake_timeout: Duration,
    pub max_pending_incoming: u32,
    pub max_established_incoming: u32,
    pub max_connections_per_peer: u32,
    pub mdns: bool,
    pub psk: Option<PreSharedKey>,
    pub offline_view: bool,
    pub liveness: crate::proto::Liveness,
    /// Per device and store, gossiped versions beyond `gossip_burst` are forwarded at
    /// most one per this interval.
    pub gossip_rate_interval: Duration,
    pub gossip_burst: u32,
    /// Test hook: the forget window (see [`crate::proto::ProtoConfig::forget_after`]).
    pub forget_after: Duration,
    /// Most devices tracked (see [`crate::proto::admission`]).
    pub max_devices: usize,
    /// Per neighbour, new devices beyond `new_devices_burst` are admitted at most one per
    /// this interval (zero: no rate).
    pub new_devices_interval: Duration,
    pub new_devices_burst: u32,
    /// Per peer, most subscriptions to stores not joined here that are kept.
    pub max_unjoined_topics: usize,
    /// When set, the only remote devices admitted.
    pub allowed_devices: Option<Vec<crate::ids::DeviceId>>,
    /// Per peer, gossip messages a second (after a burst) past which each costs the peer
    /// points (see [`crate::gossip::conduct`]); `None`: no limit.
    pub peer_message_rate: Option<(u32, u32)>,
    /// Versions of its own slices a second a peer may send past the gossip rate before
    /// each further one costs it points; `None`: no limit.
    pub own_versions_allowance: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            presence_interval: Duration::from_millis(500),
            presence_timeout: Duration::from_millis(2500),
            max_slice_size: 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            gossip_heartbeat: Duration::from_millis(500),
            event_buffer: 1024,
            leave_timeout: Duration::from_secs(2),
            target_peers: 8,
            listen_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            inbound_handshake_timeout: Duration::from_secs(5),
            max_pending_incoming: 2048,
            max_established_incoming: 512,
            max_connections_per_peer: 4,
            mdns: true,
            psk: None,
            offline_view: false,
            liveness: crate::proto::Liveness::default(),
            forget_after: Duration::from_secs(60),
            gossip_rate_interval: Duration::from_millis(20),
            gossip_burst: 8,
            max_devices: 4096,
            new_devices_interval: Duration::from_secs(1) / 64,
            new_devices_burst: 256,
            max_unjoined_topics: crate::gossip::topics::MAX_UNJOINED_TOPICS_PER_PEER,
            allowed_devices: None,
            peer_message_rate: None,
            own_versions_allowance: None,
        }
    }
}

//! The mesh node: identity, transport, and the stores it has joined.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PreSharedKey;
use libp2p::swarm::SwarmEvent;
use libp2p::Multiaddr;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef};
use tokio::sync::mpsc;

use crate::addrs::{
    check_dialable, check_listen_addr, error_chain, is_own_address, is_unspecified,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::faults::FaultHandle;
use crate::gossip::conduct::PeerConduct;
use crate::gossip::swarm::{build_swarm, SwarmCmd, SwarmTask};
use crate::gossip::topics::Topics;
use crate::gossip::watch_wire::Presences;
use crate::gossip::{GossipActor, GossipArgs, GossipMsg};
use crate::ids::{DeviceId, Incarnation, StoreId};
use crate::introspect::{NodeEvents, PeerInfo, StoreInfo};
use crate::key_file::load_or_create_key;
use crate::metrics::{Counters, Metrics};
use crate::observer::Observer;
use crate::proto::admission::Admission;
use crate::proto::gate::GossipGate;
use crate::proto::{Engine, Input, ProtoConfig};
use crate::slice::now_millis;
use crate::storage::{Persistence, RedbStorage, Storage};
use crate::store::{
    sink_for, spawn_store, Outbox, SliceStore, Store, StoreParams, StorePort, Syncable,
    SyncableStore,
};

enum StorageSource {
    None,
    Dir(PathBuf),
    Custom(Arc<dyn Storage>),
}

enum KeySource {
    Generate,
    Keypair(Keypair),
    File(PathBuf),
}

/// Configures and starts a [`MeshNode`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use truffle_actors::MeshNode;
///
/// let node = MeshNode::builder()
///     .name("laptop")
///     .listen("/ip4/0.0.0.0/tcp/4001".parse()?)
///     .bootstrap("/ip4/192.0.2.7/tcp/4001".parse()?)
///     .mdns(false)
///     .key_file("laptop.key")
///     .presence_timeout(Duration::from_secs(5))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
pub struct MeshNodeBuilder {
    name: Option<String>,
    listen: Vec<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
    key: KeySource,
    psk_file: Option<PathBuf>,
    storage: StorageSource,
    cfg: Config,
    #[cfg(feature = "admin")]
    admin: Option<std::net::SocketAddr>,
}

impl MeshNodeBuilder {
    /// A human-readable name for logs (defaults to the device id).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a listen address, e.g. `/ip4/0.0.0.0/tcp/0`. With none, the node listens on
    /// `/ip4/0.0.0.0/tcp/0` (every interface, a free port).
    pub fn listen(mut self, addr: Multiaddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Adds a peer to dial at start: `/ip4/ADDR/tcp/PORT`, `/ip6/...` or
    /// `/dns4/HOST/tcp/PORT` (resolved at each dial). With a `/p2p/<peer id>` suffix the
    /// dial checks who answers, and the peer is re-dialled every second while not
    /// connected; a bare address is re-dialled only while this node has no connection at
    /// all. This node's own addresses are skipped, so every node can share one seed list.
    pub fn bootstrap(mut self, addr: Multiaddr) -> Self {
        self.bootstrap.push(addr);
        self
    }

    /// Turns mDNS discovery of peers on the local network on or off (default on).
    pub fn mdns(mut self, on: bool) -> Self {
        self.cfg.mdns = on;
        self
    }

    /// Uses this identity (the device id is its peer id). Must be ed25519.
    ///
    /// The incarnation is then the start time and is not saved: if the clock goes back
    /// between runs, peers that remember the old run take the new run's slices as stale
    /// (until they restart, or their tombstone of the old run is dropped: a day after it
    /// was last heard of at most; see the book's Security chapter).
    /// [`key_file`](Self::key_file) saves the incarnation and forces it to grow.
    pub fn keypair(mut self, key: Keypair) -> Self {
        self.key = KeySource::Keypair(key);
        self
    }

    /// Keeps the identity in a file, created (mode 0600) if missing, so the device id
    /// survives restarts. Without it every start is a new device. A key file that other
    /// users can read or write is refused (anyone who reads it can write as this device).
    /// The run's incarnation is kept beside it, in `<path>.incarnation`; both files are
    /// written atomically.
    pub fn key_file(mut self, path: impl AsRef<Path>) -> Self {
        self.key = KeySource::File(path.as_ref().to_owned());
        self
    }

    /// With [`Liveness::Heartbeats`](crate::proto::Liveness::Heartbeats), how often this
    /// node announces itself and its versions (default 500 ms). With watch liveness (the
    /// default) a node announces itself only when something changed, and this is how often
    /// a pending announcement is sent.
    pub fn presence_interval(mut self, every: Duration) -> Self {
        self.cfg.presence_interval = every;
        self
    }

    /// With [`Liveness::Heartbeats`](crate::proto::Liveness::Heartbeats), how long without
    /// evidence before a device is removed here (default 2.5 s). Silence is checked every
    /// tenth of the timeout, so a device that vanishes is removed at most
    /// `timeout + timeout / 10` after the last message this node heard from it. With watch
    /// liveness (the default) removal follows an accusation instead, and this only sets
    /// how often probe and suspicion deadlines are checked (a tenth of it, between 20 ms
    /// and the presence interval).
    pub fn presence_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.presence_timeout = timeout;
        self
    }

    /// Largest encoded slice data this node writes or accepts (default 1 MiB).
    pub fn max_slice_size(mut self, bytes: usize) -> Self {
        self.cfg.max_slice_size = bytes;
        self
    }

    /// The gossipsub heartbeat (mesh maintenance; default 500 ms).
    pub fn gossip_heartbeat(mut self, every: Duration) -> Self {
        self.cfg.gossip_heartbeat = every;
        self
    }

    /// How many peers this node keeps connections to (default 8, at least 1), whatever
    /// the size of the mesh. Bootstrap addresses only seed this view: the node dials
    /// random members (at the addresses they announce in their signed heartbeats) while
    /// it has fewer connections, and closes random older ones while it has more than a
    /// quarter again as many, so the mesh stays connected when any node, the bootstrap
    /// node included, goes away. More peers: faster spreading and more redundancy, at more
    /// traffic per node.
    ///
    /// ```
    /// # use truffle_actors::MeshNode;
    /// let builder = MeshNode::builder().target_peers(12);
    /// ```
    pub fn target_peers(mut self, peers: usize) -> Self {
        self.cfg.target_peers = peers.max(1);
        self
    }

    /// How this node judges which devices are alive (default
    /// [`Liveness::Watch`](crate::proto::Liveness::Watch)).
    ///
    /// With watch, each node watches only its connected peers, accuses one it cannot reach
    /// again, and the accused refutes with a newer signed heartbeat; views are compared
    /// by hash with one random peer per second. Its cost per node does not grow with the
    /// mesh. [`Liveness::Heartbeats`](crate::proto::Liveness::Heartbeats), the default
    /// before watch, floods every device's announcement to every node twice a second.
    /// Every node of a mesh must run the same liveness: a heartbeats node removes a watch
    /// node after the presence timeout, since watch nodes announce themselves only when
    /// something changes.
    ///
    /// ```
    /// # use truffle_actors::{MeshNode, proto::Liveness};
    /// let builder = MeshNode::builder().liveness(Liveness::Watch);
    /// ```
    pub fn liveness(mut self, liveness: crate::proto::Liveness) -> Self {
        self.cfg.liveness = liveness;
        self
    }

    /// Events a subscriber may fall behind before it gets `Lagged` (default 1024).
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.cfg.event_buffer = events;
        self
    }

    /// How long [`MeshNode::shutdown`] waits for peers to acknowledge the leave (default 2 s).
    pub fn leave_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.leave_timeout = timeout;
        self
    }

    /// Makes the mesh private: only nodes with this pre-shared key can connect at all
    /// (libp2p `pnet`, XSalsa20 under the key, below noise). See [`psk_file`](Self::psk_file).
    pub fn psk(mut self, key: PreSharedKey) -> Self {
        self.cfg.psk = Some(key);
        self
    }

    /// Reads the pre-shared key from a file in the IPFS `swarm.key` format:
    ///
    /// ```text
    /// /key/swarm/psk/1.0.0/
    /// /base16/
    /// <64 hex digits>
    /// ```
    pub fn psk_file(mut self, path: impl AsRef<Path>) -> Self {
        self.psk_file = Some(path.as_ref().to_owned());
        self
    }

    /// Keeps this device's slices in `dir` (created if missing), in one `redb` file,
    /// `truffle.redb`: on the next start each store begins with the slice it had, published
    /// under the new run's incarnation, so peers see the old data again instead of an
    /// empty slice. Writes are saved in the background, coalesced (see
    /// [`Store::persisted`]); after a crash or `kill -9` the node restarts with a slice
    /// that was written, never a torn one.
    ///
    /// Without it (the default) nothing is saved and every start begins with
    /// `Default::default()`. Only one process can use a data directory at a time: a
    /// second one fails to start with [`Error::DataDirInUse`]. Use it with
    /// [`key_file`](Self::key_file), so the restarted node is also the same device.
    pub fn data_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.storage = StorageSource::Dir(dir.as_ref().to_owned());
        self
    }

    /// Saves slices in `storage` instead of a data directory: another backend, or a
    /// shared [`crate::storage::MemoryStorage`] to test restarts without a disk.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = StorageSource::Custom(storage);
        self
    }

    /// Keeps the last slice of each device that goes offline, with when it was last seen,
    /// readable through [`Store::offline`] (default off). The live
    /// [`Store::snapshot`] is unchanged. With a data directory, the view is saved too
    /// (each remote device's newest slice is written, coalesced), so a node started
    /// without network shows what it last knew.
    pub fn offline_view(mut self, on: bool) -> Self {
        self.cfg.offline_view = on;
        self
    }

    /// Serves the admin endpoint on `addr` (off by default): Prometheus metrics at
    /// `/metrics`, a JSON API under `/api/` (node, peers, stores, each store's slices),
    /// server-sent events at `/api/events`, and a live dashboard at `/`. Port 0 picks a
    /// free port; [`MeshNode::admin_addr`] tells which.
    ///
    /// Anyone who can reach the address reads every slice of every joined store, and
    /// there is no authentication: keep it on a loopback address (`127.0.0.1:9090`) unless
    /// the network in front of it is trusted. [`start`](Self::start) fails with
    /// [`Error::Admin`] when the address cannot be bound.
    #[cfg(feature = "admin")]
    pub fn admin(mut self, addr: std::net::SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// How long a connection may take to be established, handshakes included (default 10 s).
    /// With a mismatched pre-shared key, a dial fails only after this long.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.connect_timeout = timeout;
        self
    }

    /// How long an incoming connection may take to complete its handshakes (pre-shared
    /// key, noise, multiplexer) before it is closed (default 5 s). A peer that opens TCP
    /// connections and stays silent holds each one this long, and one slot of
    /// [`max_pending_incoming`](Self::max_pending_incoming).
    pub fn inbound_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.inbound_handshake_timeout = timeout;
        self
    }

    /// Most incoming connections still in their handshakes at once (default 2048); more
    /// are closed as soon as they are accepted (counted in
    /// [`Metrics::connection_failures`](crate::Metrics::connection_failures)). Room for a
    /// burst of joining nodes, and for a peer that opens many silent connections without
    /// taking every slot a newcomer needs; each costs a file descriptor (see the book's
    /// Security chapter).
    pub fn max_pending_incoming(mut self, connections: u32) -> Self {
        self.cfg.max_pending_incoming = connections;
        self
    }

    /// Most established incoming connections at once (default 512): a node keeps about
    /// [`target_peers`](Self::target_peers) connections, but a bootstrap node briefly
    /// takes one from every node that starts with it as its seed. More are closed once
    /// their handshake completes.
    pub fn max_established_incoming(mut self, connections: u32) -> Self {
        self.cfg.max_established_incoming = connections;
        self
    }

    /// Most established connections with any one peer, both directions (default 4;
    /// honest nodes need one, two after simultaneous dials or a restart). More are
    /// closed once their handshake completes.
    pub fn max_connections_per_peer(mut self, connections: u32) -> Self {
        self.cfg.max_connections_per_peer = connections;
        self
    }

    /// How many versions of one device's slice in one store this node forwards: `burst`
    /// at once, then one per `interval` (default 8, then one per 20 ms: 50 a second). A
    /// member that signs new versions faster is relayed at this rate, not at its own; its
    /// direct neighbours still verify and use every version they get from it (so a fast
    /// honest writer keeps its throughput to them), while relayed copies past the rate are
    /// not checked then. Of the versions past the rate, the newest of each device and
    /// store is held back and forwarded (checked first if relayed) once the rate allows,
    /// unless a newer one comes first, so a burst's last version goes on within one
    /// interval. Slices are last-write-wins, so nothing of the latest state is lost: a
    /// version held back is replaced by a newer one, and the newest always arrives, if not
    /// by gossip then through the digests, within about a presence interval after the
    /// writes stop. A zero interval turns the rate off; versions not newer than
    /// one already verified are declined unchecked either way. Counted in
    /// [`Metrics::gossip_over_rate`](crate::Metrics::gossip_over_rate).
    pub fn gossip_rate(mut self, interval: Duration, burst: u32) -> Self {
        self.cfg.gossip_rate_interval = interval;
        self.cfg.gossip_burst = burst.max(1);
        self
    }

    /// Most remote devices this node tracks (default 4,096): members, live or silent for
    /// less than the forget window (60 s, at least 10 × the presence timeout). Messages of
    /// further devices are ignored (neither verified nor forwarded, counted in
    /// [`Metrics::devices_refused`](crate::Metrics::devices_refused)) until silent ones
    /// make room. In an open mesh anyone can mint identities; this bounds what they cost
    /// a node (and, once it is reached, keeps newcomers out while the minted identities
    /// keep talking: a pre-shared key keeps such peers out altogether).
    pub fn max_devices(mut self, devices: usize) -> Self {
        self.cfg.max_devices = devices.max(1);
        self
    }

    /// How many devices this node starts tracking through any one neighbour (the peer that
    /// delivered the first message of the device): `burst` at once, then `per_second`
    /// (default 256, then 64 a second). Messages of further new devices from that
    /// neighbour are ignored, before their signature check, and counted in
    /// [`Metrics::devices_refused`](crate::Metrics::devices_refused); an honest device
    /// refused is admitted at one of its next heartbeats. Devices already tracked are
    /// never held back. Zero `per_second` turns the rate off.
    pub fn new_devices_per_peer(mut self, per_second: u32, burst: u32) -> Self {
        self.cfg.new_devices_interval = match per_second {
            0 => Duration::ZERO,
            n => Duration::from_secs(1) / n,
        };
        self.cfg.new_devices_burst = burst.max(1);
        self
    }

    /// How many of a peer's subscriptions to stores this node has not joined are kept
    /// (default 256): gossipsub announces subscriptions once, so a peer's subscription to
    /// a store this node joins later is known only if it was kept. Subscriptions to the
    /// presence topic and to joined stores are always kept, those to other topics never;
    /// the rest are counted in
    /// [`Metrics::subscriptions_refused`](crate::Metrics::subscriptions_refused).
    pub fn max_unjoined_topics_per_peer(mut self, topics: usize) -> Self {
        self.cfg.max_unjoined_topics = topics;
        self
    }

    /// How many gossip messages a second any one peer may send this node before the rest
    /// cost it peer score (default: no limit): `burst` at once, then `per_second`. Every
    /// copy counts, duplicates included. Past the rate a message is still handled as
    /// usual, but it costs the peer 0.1 points; points drain at 50 a second, and a peer
    /// that holds more than 100 (with its other junk) is graylisted: gossipsub then ignores
    /// everything it sends for about 8 s. So a peer may exceed the rate by up to 500
    /// messages a second (a burst of 1,000) for good. An honest peer
    /// relays everything its mesh carries (every device's heartbeats, twice a second by
    /// default, and slices), so set this well above what the busiest honest neighbour
    /// sends; each peer's inbound rate is shown by [`MeshNode::peers`]. Zero `per_second`
    /// turns the rate off.
    pub fn peer_message_rate(mut self, per_second: u32, burst: u32) -> Self {
        self.cfg.peer_message_rate = (per_second > 0).then_some((per_second, burst.max(1)));
        self
    }

    /// How many versions of its own slices a second a neighbour may send this node past
    /// the gossip rate ([`gossip_rate`](Self::gossip_rate)) before each further one costs
    /// it peer score (default: no limit). Each costs `50 / per_second` points; points drain
    /// at 50 a second, and a peer that holds more than 100 (with its other junk) is
    /// graylisted: gossipsub ignores everything it sends, its heartbeats included, for
    /// about 8 s, so this node soon counts it as gone. So `own_versions_allowance(500)`
    /// lets a neighbour sign 500 versions a second past the rate (a burst of 1,000) for
    /// good, and graylists one flooding its own slice at thousands a second within a
    /// second or so. Off by default because a fast writer is not misbehaving: its direct
    /// neighbours use every version it sends (the `b5` benchmark has one writer deliver
    /// over 20,000 versions a second to its neighbour). Set it when no device of the mesh
    /// should write that fast; a relay is never charged for what it relays. Zero turns it
    /// off.
    pub fn own_versions_allowance(mut self, per_second: u32) -> Self {
        self.cfg.own_versions_allowance = (per_second > 0).then_some(per_second);
        self
    }

    /// Admits only these remote devices (default: any): messages of every other device
    /// (heartbeats, leaves, slices, gossiped or in sync answers) are ignored before their
    /// signature check, never forwarded, and counted in
    /// [`Metrics::devices_refused`](crate::Metrics::devices_refused), so no other device
    /// appears in this node's membership or stores. Other nodes may still connect and
    /// relay the messages of the devices listed. Give every node of the mesh the same list
    /// (a node that lacks it relays what the others ignore); with a pre-shared key, the
    /// key says who may connect and this list says who may write.
    pub fn allow_devices(mut self, devices: impl IntoIterator<Item = DeviceId>) -> Self {
        self.cfg.allowed_devices = Some(devices.into_iter().collect());
        self
    }

    /// Test hook: how long a silent device is remembered in full before only its tombstone
    /// is kept (default 60 s, never below 10 × the presence timeout).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_forget_after(mut self, after: Duration) -> Self {
        self.cfg.forget_after = after;
        self
    }

    /// Starts the node: binds the listen addresses, dials the bootstrap peers and spawns
    /// the actors. Returns once every listen address is bound; for a `0.0.0.0` (or `::`)
    /// listener, once the addresses of the host's interfaces are known, so that
    /// [`MeshNode::listen_addrs`] lists the ones to hand to other hosts.
    ///
    /// Fails with [`Error::Listen`] when a listen port is already in use (even by another
    /// Truffle node: libp2p would share it) or the address is not on this host, and with
    /// [`Error::Dial`] for a bootstrap address that is not a TCP address. Bootstrap
    /// addresses of this node itself (a shared seed list) are skipped.
    pub async fn start(self) -> Result<MeshNode> {
        let mut cfg = self.cfg;
        if let Some(path) = &self.psk_file {
            cfg.psk = Some(read_psk(path)?);
        }
        if cfg.presence_interval.is_zero() || cfg.presence_timeout <= cfg.presence_interval {
            return Err(Error::Config(format!(
                "presence_timeout ({:?}) must be longer than presence_interval ({:?})",
                cfg.presence_timeout, cfg.presence_interval
            )));
        }
        if cfg.max_slice_size == 0 || cfg.max_slice_size > 256 * 1024 * 1024 {
            return Err(Error::Config(format!(
                "max_slice_size {} must be between 1 byte and 256 MiB",
                cfg.max_slice_size
            )));
        }
        let (key, incarnation) = match self.key {
            KeySource::Generate => (Keypair::generate_ed25519(), now_millis()),
            KeySource::Keypair(k) => (k, now_millis()),
            KeySource::File(path) => load_or_create_key(&path, now_millis())?,
        };
        if key.clone().try_into_ed25519().is_err() {
            return Err(Error::Config(
                "only ed25519 identities are supported (their public key is part of the device id)"
                    .into(),
            ));
        }
        let device = DeviceId::from(key.public().to_peer_id());
        // Only a name the user chose travels in presence messages (the default, the device
        // id, is in them anyway).
        let announced_name = self.name.clone();
        let name = self.name.unwrap_or_else(|| device.to_string());
        let storage: Option<Arc<dyn Storage>> = match self.storage {
            StorageSource::None => None,
            StorageSource::Dir(dir) => Some(Arc::new(RedbStorage::open(dir)?)),
            StorageSource::Custom(s) => Some(s),
        };
        // The storage remembers the incarnations it saw: a restored slice must be newer
        // than anything an earlier run published, even if the clock went back.
        let incarnation = match &storage {
            Some(s) => s.claim_incarnation(incarnation)?,
            None => incarnation,
        };
        let persistence = storage.map(Persistence::start).transpose()?;
        let listen = if self.listen.is_empty() {
            vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr")]
        } else {
            self.listen
        };

        for addr in &self.bootstrap {
            check_dialable(addr).map_err(|reason| Error::Dial {
                addr: addr.to_string(),
                reason,
            })?;
        }
        for addr in &listen {
            check_listen_addr(addr).map_err(|reason| Error::Listen {
                addr: addr.to_string(),
                reason,
            })?;
        }

        raise_open_file_limit(&cfg);
        let counters = Arc::new(Counters::default());
        let topics = Topics::new(cfg.max_unjoined_topics);
        let conduct = PeerConduct::new(
            cfg.peer_message_rate,
            cfg.own_versions_allowance,
            counters.clone(),
            std::time::Instant::now(),
        );
        let (reached_tx, reached_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut swarm = build_swarm(
            key.clone(),
            &cfg,
            topics.clone(),
            counters.clone(),
            conduct.clone(),
            reached_tx,
        )?;
        let mut pending = std::collections::HashSet::new();
        for addr in &listen {
            let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
                addr: addr.to_string(),
                reason: error_chain(&e),
            })?;
            pending.insert((id, addr.clone()));
        }
        let mut bound = Vec::new();
        let deadline = tokio::time::Instant::now() + cfg.listen_timeout;
        // A listener on 0.0.0.0 (or ::) reports one address per interface as libp2p finds
        // them, the first one usually alone: after every listener has an address, keep
        // collecting until the reports pause, so the caller sees them all.
        let wildcard = listen.iter().any(is_unspecified);
        loop {
            let wait_until = if !pending.is_empty() {
                deadline
            } else if wildcard {
                deadline.min(tokio::time::Instant::now() + INTERFACES_SETTLE)
            } else {
                break;
            };
            let ev = match tokio::time::timeout_at(wait_until, swarm.select_next_some()).await {
                Ok(ev) => ev,
                Err(_) if pending.is_empty() => break,
                Err(_) => {
                    return Err(Error::Listen {
                        addr: pending
                            .iter()
                            .map(|p| p.1.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        reason: format!(
                            "no address bound within {:?}; is the network up?",
                            cfg.listen_timeout
                        ),
                    })
                }
            };
            match ev {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    pending.retain(|(id, _)| *id != listener_id);
                    if !bound.contains(&address) {
                        bound.push(address);
                    }
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } => {
                    if let Some((_, addr)) = pending.iter().find(|(id, _)| *id == listener_id) {
                        return Err(Error::Listen {
                            addr: addr.to_string(),
                            reason: match reason {
                                Ok(()) => "the listener closed".into(),
                                Err(e) => error_chain(&e),
                            },
                        });
                    }
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    if let Some((_, addr)) = pending.iter().find(|(id, _)| *id == listener_id) {
                        return Err(Error::Listen {
                            addr: addr.to_string(),
                            reason: error_chain(&error),
                        });
                    }
                }
                _ => {}
            }
        }
        let me = key.public().to_peer_id();
        let (own, bootstrap): (Vec<Multiaddr>, Vec<Multiaddr>) = self
            .bootstrap
            .into_iter()
            .partition(|a| is_own_address(a, &me, &bound));
        for addr in &own {
            tracing::debug!(%addr, "not dialling this node's own address among the bootstrap peers");
        }
        for addr in &bootstrap {
            swarm.dial(addr.clone()).map_err(|e| Error::Dial {
                addr: addr.to_string(),
                reason: error_chain(&e),
            })?;
        }

        counters
            .intro
            .configure(device, announced_name, cfg.presence_timeout, cfg.liveness);
        let faults = FaultHandle::default();
        let inbox = Arc::new(crate::gossip::inbox::Inbox::new(counters.clone()));
        let listen_addrs = Arc::new(Mutex::new(bound));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        // Every log line of this node's gossip actor and swarm task carries its name, so
        // several nodes in one process (tests, benchmarks) can be told apart.
        // At error level, so that a level filter on the crate never drops it (an info span
        // under a `warn` filter would be dropped, and its warnings would lose the name). A
        // filter on another module alone (`truffle_actors::gossip=debug`) still does: the
        // Logging section of the book says so.
        let span = tracing::error_span!("node", name = %name);
        let mut engine = Engine::new(
            device,
            incarnation,
            proto_config(&cfg),
            seed_for(&device),
            bootstrap.clone(),
        );
        let mut ignored = Vec::new();
        let addrs = listen_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|a| a.to_string())
            .collect();
        engine.handle(
            Input::ListenAddrs(addrs),
            std::time::Instant::now(),
            &mut ignored,
        );
        let (gossip, _) = Actor::spawn(
            None,
            GossipActor,
            GossipArgs {
                engine,
                key: key.clone(),
                counters: counters.clone(),
                cmds: cmd_tx.clone(),
                inbox: inbox.clone(),
                faults: faults.clone(),
                span: span.clone(),
            },
        )
        .await
        .map_err(|e| Error::NodeStopped(format!("gossip actor failed to start: {e}")))?;
        let task = SwarmTask {
            swarm,
            cmds: cmd_rx,
            reached: reached_rx,
            actor: gossip.clone(),
            inbox,
            counters: counters.clone(),
            bootstrap: bootstrap.clone(),
            listen_addrs: listen_addrs.clone(),
            max_slice: cfg.max_slice_size,
            faults: faults.clone(),
            psk_fingerprint: cfg.psk.map(|k| k.fingerprint().to_string()),
            dial_warnings: Default::default(),
            keys: Default::default(),
            held: Default::default(),
            gate: GossipGate::new(
                cfg.gossip_rate_interval,
                cfg.gossip_burst,
                // Randomly keyed: peers choose the device ids.
                crate::proto::DetState::with_seed(seed_for(&device)),
            ),
            outbound: HashMap::new(),
            asks: HashMap::new(),
            presences: Presences::for_liveness(cfg.liveness),
            unsent_presence: None,
            me: device.peer_id(),
            inbound: HashMap::new(),
            inbound_budget: Default::default(),
            topics,
            admission: Admission::new(
                device,
                cfg.max_devices,
                cfg.new_devices_interval,
                cfg.new_devices_burst,
                // The protocol core's forget window: a device silent that long is
                // forgotten there too.
                cfg.forget_after.max(cfg.presence_timeout * 10),
                crate::proto::DetState::with_seed(seed_for(&device)),
            )
            .allow_only(cfg.allowed_devices.clone()),
            conduct,
            graylisted: Default::default(),
            trimming: Default::default(),
            next_token: 0,
            key: key.clone(),
            me_text: device.to_string(),
            outboxes: HashMap::new(),
            leaving: false,
            stopping: false,
        };
        let swarm_task = tokio::spawn(tracing::Instrument::instrument(task.run(), span));
        match cfg.psk {
            Some(k) => {
                tracing::info!(%device, %name, incarnation, psk_fingerprint = %k.fingerprint(), "mesh node started (private mesh)")
            }
            None => tracing::info!(%device, %name, incarnation, "mesh node started"),
        }
        let mut node = MeshNode {
            device,
            name,
            incarnation,
            cfg,
            gossip,
            counters,
            listen_addrs,
            stores: tokio::sync::Mutex::new(HashMap::new()),
            swarm_task: Some(swarm_task),
            cmds: cmd_tx,
            faults,
            persistence,
            #[cfg(feature = "admin")]
            admin: None,
        };
        #[cfg(feature = "admin")]
        if let Some(addr) = self.admin {
            // On failure `node` drops here, which stops it as a crash would: nobody has
            // seen it yet.
            node.admin = Some(crate::admin::serve(addr, node.admin_source()).await?);
        }
        Ok(node)
    }
}

/// The protocol core's share of the node's settings.
/// Open files a node needs besides its connections: storage, the admin endpoint, logs.
const OTHER_FILES: u64 = 256;

/// Raises this process's soft limit on open files to its hard limit, where the OS allows:
/// every connection, even one that never completes its handshake, holds a file
/// descriptor, and the common soft limit of 1024 is reached by about a thousand silent
/// connections (after which nothing, a newcomer's connection included, is accepted until
/// some close). Warns when the limit stays below what the connection limits allow.
fn raise_open_file_limit(cfg: &Config) {
    let need = u64::from(cfg.max_pending_incoming)
        + u64::from(cfg.max_established_incoming)
        + cfg.target_peers as u64 * 2
        + OTHER_FILES;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < need => tracing::warn!(
            limit,
            need,
            "the open-file limit is lower than the connection limits allow: a flood of \
             connections can use up the file descriptors; raise the hard limit (ulimit -Hn) \
             or lower max_pending_incoming and max_established_incoming"
        ),
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::debug!(error = %e, "cannot raise the open-file limit"),
    }
}

fn proto_config(cfg: &Config) -> ProtoConfig {
    let mut p = ProtoConfig::default().with_presence(cfg.presence_interval, cfg.presence_timeout);
    p.max_response_bytes = cfg.max_response_bytes;
    p.leave_timeout = cfg.leave_timeout;
    p.target_peers = cfg.target_peers;
    p.liveness = cfg.liveness;
    p.forget_after = cfg.forget_after;
    p
}

/// A seed for the engine's random choices (timer jitter): different for every node and
/// run, so that nodes started together do not tick together.
fn seed_for(device: &DeviceId) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    device.hash(&mut h);
    std::time::Instant::now().hash(&mut h);
    h.finish()
}

/// Reads a pre-shared key in the `swarm.key` format.
fn read_psk(path: &Path) -> Result<PreSharedKey> {
    let err = |reason: String| Error::Psk {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    text.parse::<PreSharedKey>().map_err(|e| {
        err(format!(
            "not a swarm.key file ({e}); expected the lines `/key/swarm/psk/1.0.0/`, `/base16/` and 64 hex digits"
        ))
    })
}

/// How long `start()` waits for more interface addresses of a `0.0.0.0` listener after
/// the last one reported.
const INTERFACES_SETTLE: Duration = Duration::from_millis(150);

struct Joined {
    handle: Box<dyn Any + Send + Sync>,
    actor: ActorCell,
}

/// A running node of the mesh. Join stores with [`store`](Self::store); leave with
/// [`shutdown`](Self::shutdown). Dropping it without `shutdown` stops it abruptly, as a
/// crash would: peers remove its slices after their presence timeout.
pub struct MeshNode {
    device: DeviceId,
    name: String,
    incarnation: Incarnation,
    cfg: Config,
    gossip: ActorRef<GossipMsg>,
    counters: Arc<Counters>,
    listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    stores: tokio::sync::Mutex<HashMap<StoreId, Joined>>,
    swarm_task: Option<tokio::task::JoinHandle<()>>,
    /// Commands to the swarm task (store actors send their flushes there directly).
    cmds: mpsc::UnboundedSender<SwarmCmd>,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    faults: FaultHandle,
    /// The storage and its writer thread, with a data directory.
    persistence: Option<Persistence>,
    #[cfg(feature = "admin")]
    admin: Option<crate::admin::AdminServer>,
}

impl std::fmt::Debug for MeshNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshNode")
            .field("device", &self.device)
            .field("name", &self.name)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

impl MeshNode {
    /// A builder with defaults: listen on all interfaces, mDNS on, a fresh identity.
    pub fn builder() -> MeshNodeBuilder {
        MeshNodeBuilder {
            name: None,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            key: KeySource::Generate,
            psk_file: None,
            storage: StorageSource::None,
            cfg: Config::default(),
            #[cfg(feature = "admin")]
            admin: None,
        }
    }

    /// This device's id (its libp2p peer id).
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// The name given to the builder (or the device id).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This run's incarnation (see [`crate::Version`]).
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The addresses this node listens on, each ending in `/p2p/<device id>`, ready to pass
    /// to another node's [`MeshNodeBuilder::bootstrap`].
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let addrs = self.listen_addrs.lock().unwrap_or_else(|p| p.into_inner());
        addrs
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(self.device.peer_id())))
            .collect()
    }

    /// A copy of the node's counters.
    pub fn metrics(&self) -> Metrics {
        self.counters.snapshot()
    }

    /// Registers this node's metrics in an application's Prometheus registry: Truffle's
    /// under `truffle_` (see the book's "Operating a mesh" for the list), libp2p's own
    /// (connections, gossipsub, identify, ping) under `libp2p_`. Truffle's values count
    /// from the node's start; libp2p's from the call.
    ///
    /// Each node registers the same names: for several nodes in one process, give each
    /// its own sub-registry, e.g. `registry.sub_registry_with_label(("node".into(),
    /// name.into()))`.
    ///
    /// ```no_run
    /// # async fn run(node: truffle_actors::MeshNode) {
    /// use truffle_actors::prometheus_client::{encoding::text::encode, registry::Registry};
    /// let mut registry = Registry::default();
    /// node.register_metrics(&mut registry);
    /// let mut text = String::new();
    /// encode(&mut text, &registry).unwrap(); // OpenMetrics text, for a /metrics route
    /// assert!(text.contains("truffle_peers_online"));
    /// # }
    /// ```
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        crate::metrics::register(&self.counters, registry);
    }

    /// Every remote device this node knows of: live, suspected, or gone recently (offline
    /// devices are forgotten after ten minutes), with its name, incarnation, addresses,
    /// connections, last evidence of life, round-trip time and the slice versions held.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.counters.intro.peers()
    }

    /// The stores this node joined, each with the device, version and write time of every
    /// slice it holds (its own first).
    pub fn stores(&self) -> Vec<StoreInfo> {
        self.counters.intro.stores()
    }

    /// Follows what happens to this node's view of the mesh: peers online, suspected,
    /// offline (with the reason) or restarted, connections up and down, slices updated
    /// and removed. Events before the call are not replayed: read [`peers`](Self::peers)
    /// and [`stores`](Self::stores) after subscribing for the current state.
    pub fn events(&self) -> NodeEvents {
        self.counters.intro.subscribe()
    }

    /// The address the admin endpoint listens on, when [`MeshNodeBuilder::admin`] asked
    /// for one (with port 0, the port picked).
    #[cfg(feature = "admin")]
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(|a| a.addr())
    }

    #[cfg(feature = "admin")]
    fn admin_source(&self) -> crate::admin::Source {
        crate::admin::Source {
            device: self.device,
            name: self.name.clone(),
            incarnation: self.incarnation,
            listen_addrs: self.listen_addrs.clone(),
            counters: self.counters.clone(),
            started: std::time::SystemTime::now(),
        }
    }

    /// Joins the store of a [`Syncable`] type (what `#[derive(Syncable)]` gives you).
    /// Calling it again for the same type returns another handle to the same store; for
    /// another type with the same store id it fails with [`Error::StoreIdInUse`].
    pub async fn store<T: Syncable>(&self) -> Result<Store<T>> {
        let id = StoreId::new(T::STORE_ID)?;
        {
            let stores = self.stores.lock().await;
            if let Some(j) = stores.get(&id) {
                return j
                    .handle
                    .downcast_ref::<Store<T>>()
                    .cloned()
                    .ok_or(Error::StoreIdInUse {
                        id,
                        requested: std::any::type_name::<T>(),
                    });
            }
        }
        self.join(SliceStore::<T>::new()?).await
    }

    /// Joins a hand-written store. Fails if a store with the same id is already joined.
    pub async fn join<S: SyncableStore>(&self, store: S) -> Result<Store<S::Data>> {
        self.join_as(store, false).await
    }

    /// Joins `store` read-only, as an observer: this node receives every device's slice
    /// (a full exchange with the peers that joined it, then gossip and anti-entropy like
    /// any member) but never publishes a slice of its own, so no device holds one of it:
    /// other devices do not see it in the store. They still see the node itself as a
    /// device of the mesh (in `peers()`), and it relays the store's slices like a member.
    ///
    /// Slice data is decoded without knowing the store's type (see [`Observer`]), which
    /// suits dashboards and tools (`truffle peek`). Fails if the store is joined already.
    pub async fn observe(&self, store: StoreId) -> Result<Observer> {
        let joined = self
            .join_as(SliceStore::<serde_json::Value>::with_id(store)?, true)
            .await?;
        Ok(Observer::new(joined))
    }

    async fn join_as<S: SyncableStore>(&self, store: S, observer: bool) -> Result<Store<S::Data>> {
        let id = store.store_id();
        let mut stores = self.stores.lock().await;
        if stores.contains_key(&id) {
            return Err(Error::StoreAlreadyJoined(id));
        }
        if stores.len() >= crate::wire::MAX_STORES_PER_NODE {
            return Err(Error::TooManyStores {
                store: id,
                max: crate::wire::MAX_STORES_PER_NODE,
            });
        }
        let outbox = Outbox::default();
        // The store's port: a wake-up for the swarm task, which signs and publishes what
        // the outbox holds, and a word to the engine when a slice does not decode.
        let port = {
            let (cmds, gossip) = (self.cmds.clone(), self.gossip.clone());
            let (wake_id, bad_id) = (id.clone(), id.clone());
            StorePort::new(
                outbox.clone(),
                move || {
                    let _ = cmds.send(SwarmCmd::Flush(wake_id.clone()));
                },
                move |device| {
                    let _ = gossip.cast(GossipMsg::Input(Input::Undecodable {
                        store: bad_id.clone(),
                        device,
                    }));
                },
            )
        };
        let spawned = spawn_store(
            store,
            StoreParams {
                port,
                device: self.device,
                incarnation: self.incarnation,
                max_slice_size: self.cfg.max_slice_size,
                event_buffer: self.cfg.event_buffer,
                counters: self.counters.clone(),
                // An observer has no slice worth keeping, and keeps no view of the past.
                persist: match observer {
                    true => None,
                    false => self.persistence.as_ref().map(|p| p.for_store(id.clone())),
                },
                offline_view: self.cfg.offline_view && !observer,
            },
        )
        .await?;
        let handle = spawned.handle;
        let sink = sink_for(handle.actor.clone(), spawned.inbox);
        let joined = self
            .gossip
            .call(
                |reply| GossipMsg::Join {
                    store: id.clone(),
                    sink,
                    outbox: outbox.clone(),
                    reply,
                },
                None,
            )
            .await;
        match joined {
            Ok(CallResult::Success(Ok(()))) => {}
            Ok(CallResult::Success(Err(e))) => {
                handle.actor.stop(None);
                return Err(e);
            }
            _ => {
                handle.actor.stop(None);
                return Err(Error::NodeStopped("the gossip actor is not running".into()));
            }
        }
        // The gossip actor queued the store's subscription (with its outbox) for the swarm
        // task before it answered `Join`, so this flush arrives after it.
        // An observer's initial slice never leaves this node: nothing is ever in its outbox.
        if !observer && outbox.put(spawned.initial) {
            let _ = self.cmds.send(SwarmCmd::Flush(id.clone()));
        }
        tracing::info!(store = %id, device = %self.device, observer, "joined store");
        self.counters.intro.add_store(
            id.clone(),
            Arc::new(crate::introspect::View {
                rx: handle.view.clone(),
                with_local: !observer,
            }),
        );
        stores.insert(
            id,
            Joined {
                actor: handle.actor.get_cell(),
                handle: Box::new(handle.clone()),
            },
        );
        Ok(handle)
    }

    /// Test hook: publishes `bytes` as is on `store`'s topic (gossipsub still signs the
    /// message as coming from this node).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_publish_raw(&self, store: &StoreId, bytes: Vec<u8>) {
        let _ = self.gossip.cast(GossipMsg::RawPublish {
            store: store.clone(),
            bytes,
        });
    }

    /// Test hook: drops this fraction (0.0–1.0) of inbound gossip messages, chosen by a
    /// generator seeded with `seed`.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_set_inbound_loss(&self, fraction: f64, seed: u64) {
        let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        f.drop_fraction = fraction;
        f.seed(seed);
    }

    /// Test hook: how many inbound gossip messages the fault hooks have dropped.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_dropped_inbound(&self) -> u64 {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dropped
    }

    /// Test hook: drops everything these devices send or relay to this node (one side of an
    /// emulated partition; block both ways for a full cut). An empty list heals.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_block(&self, devices: &[DeviceId]) {
        let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        f.blocked = devices.iter().map(|d| d.peer_id()).collect();
    }

    /// Test hook: the gossip actor waits this long per network event it takes from its
    /// inbox, as a slow protocol core would (zero: no wait).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_slow_engine(&self, per_input: Duration) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .engine_delay = per_input;
    }

    /// Test hook: handles `slices` as if `from` had sent them in answer to a sync request.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_inject_response(&self, from: DeviceId, slices: Vec<Vec<u8>>) {
        let _ = self.cmds.send(SwarmCmd::InjectResponse {
            peer: from.peer_id(),
            slices,
        });
    }

    /// Leaves the mesh gracefully: tells peers (signed leave, acknowledged directly by
    /// connected peers, up to the leave timeout) so they drop this device's slices at once,
    /// then stops the stores and the network.
    pub async fn shutdown(mut self) -> Result<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.gossip.cast(GossipMsg::Leave { done }).is_ok() {
            let _ =
                tokio::time::timeout(self.cfg.leave_timeout + Duration::from_secs(1), wait).await;
        }
        self.stop().await;
        tracing::info!(device = %self.device, name = %self.name, "mesh node shut down");
        Ok(())
    }

    async fn stop(&mut self) {
        #[cfg(feature = "admin")]
        if let Some(admin) = self.admin.take() {
            admin.stop().await;
        }
        let stores: Vec<ActorCell> = self
            .stores
            .lock()
            .await
            .drain()
            .map(|(_, j)| j.actor)
            .collect();
        self.counters.intro.clear_stores();
        for actor in stores {
            let _ = actor
                .stop_and_wait(None, Some(Duration::from_secs(5)))
                .await;
        }
        // The stores are stopped: what they saved last is queued. Write it before returning.
        if let Some(p) = self.persistence.take() {
            p.close().await;
        }
        let _ = self
            .gossip
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        if let Some(task) = self.swarm_task.take() {
            // The task ends at `Stop` (store actors and this handle also hold the command
            // channel, so it does not close by itself) and drops the swarm.
            let _ = self.cmds.send(SwarmCmd::Stop);
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("swarm task did not stop in time");
            }
        }
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        if let Some(task) = self.swarm_task.take() {
            task.abort();
            self.gossip.stop(None);
            if let Ok(stores) = self.stores.try_lock() {
                for j in stores.values() {
                    j.actor.stop(None);
                }
            }
        }
    }
}

//! The task that owns and continuously polls the libp2p `Swarm`.
//!
//! It does transport work only: subscribe, sign and publish local slices (coalesced per
//! store), decode and verify what arrives (gossip and sync answers), send requests and
//! answers, dial. Every protocol decision is the engine's ([`crate::proto`]), which the
//! gossip actor runs; the two talk through an unbounded command channel (local, bounded by
//! the engine's own behaviour) and actor messages carrying engine inputs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::Either;
use futures::StreamExt;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::upgrade::Version as UpgradeVersion;
use libp2p::core::Transport as _;
use libp2p::gossipsub::{
    self, IdentTopic, MaxCountSubscriptionFilter, MessageAcceptance, MessageAuthenticity,
    MessageId, PeerScoreParams, PeerScoreThresholds, TopicScoreParams, ValidationMode,
};
use libp2p::identity::Keypair;
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{
    self, InboundRequestId, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, dns, identify, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm,
};
use ractor::ActorRef;
use tokio::sync::mpsc;

use super::budget::InboundBudget;
use super::conduct::PeerConduct;
use super::topics::{JoinedTopicsOnly, PeerAware, SubscriptionFilter, Topics};
use super::watch_wire::{self, AskKind, Presences};
use super::{goodbye, GossipMsg};
use crate::addrs::{error_chain, peer_of};
use crate::config::Config;
use crate::connect_errors::{ConnectFailure, WarnLimiter};
use crate::error::Error;
use crate::faults::{blocked, drop_inbound, FaultHandle};
use crate::ids::{DeviceId, StoreId, Version};
use crate::metrics::{inc, Counters};
use crate::proto::admission::{Admission, Verdict};
use crate::proto::gate::{Gate, GossipGate, Release};
use crate::proto::{Ask, Input, Reply, RequestId, Token, Want};
use crate::store::Outbox;
use crate::wire::{
    decode_presence_msg_if, decode_slice_if, encode_slice_as, is_canonical, store_topic, KeyCache,
    PresenceMsg, RejectReason, Screen, SyncCodec, SyncRequest, SyncResponse, MAX_PRESENCE_BYTES,
    MAX_TOPICS_PER_PEER, PRESENCE_TOPIC, PROTOCOL_VERSION, STORE_TOPIC_PREFIX, SYNC_PROTOCOL,
};

type Gossipsub = PeerAware<MaxCountSubscriptionFilter<SubscriptionFilter>>;

/// Extra room in the transmit limit for the envelope around a maximal slice.
const ENVELOPE_OVERHEAD: usize = 64 * 1024;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Pending and established incoming connections, and connections per peer.
    limits: connection_limits::Behaviour,
    gossipsub: Gossipsub,
    sync: request_response::Behaviour<SyncCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The largest gossip frame gossipsub accepts: a maximal slice plus ample room, so that
/// slightly oversized messages still reach Truffle's own checks and are counted.
pub(crate) fn max_transmit_size(cfg: &Config) -> usize {
    cfg.max_slice_size + ENVELOPE_OVERHEAD
}

/// Peer scoring that only punishes misbehaviour: invalid messages (which Truffle reports
/// as `Reject`) quickly push a peer under the graylist threshold, after which gossipsub
/// ignores it. Penalties for quiet peers (P3) and shared IPs (P6, everyone on loopback or
/// behind one NAT) are off: an idle honest mesh must never score itself out.
///
/// The behaviour penalty (P7: broken IWANT promises, GRAFT during backoff) is off too: a
/// score is kept for an hour after a peer disconnects, so a device that crashed or left
/// with promises outstanding would come back — same peer id, new run — already
/// graylisted, and its fresh slices would be ignored.
///
/// The application-specific score (P5) carries what gossipsub cannot see as invalid:
/// messages on topics this node has not joined, and, when the builder set them, a peer's
/// own slice versions past an allowance and messages past a rate (see
/// [`super::conduct`]). It is 0 for a peer within its slack, and
/// Truffle sets it back to 0 once the peer's meter drains, so the hour-long memory does
/// not outlast the penalty.
fn score_params() -> PeerScoreParams {
    PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        app_specific_weight: APP_SCORE_WEIGHT,
        ..PeerScoreParams::default()
    }
}

/// The weight of the application-specific score: ten points of junk past the slack put a
/// peer at −100, under the graylist threshold.
const APP_SCORE_WEIGHT: f64 = 10.0;

/// Turns on TCP keepalive and a TCP user timeout for a new connection (see
/// [`crate::proto::ProtoConfig::link_timeout`]): the kernel closes a connection whose link
/// went dead, and the protocol sees it as lost contact. Where the OS refuses, the pings
/// still notice, later.
fn watch_link(stream: &tokio::net::TcpStream) {
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(crate::proto::KEEPALIVE_IDLE)
        .with_interval(crate::proto::KEEPALIVE_INTERVAL)
        .with_retries(crate::proto::KEEPALIVE_PROBES);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot turn on TCP keepalive");
    }
    if let Err(e) = socket.set_tcp_user_timeout(Some(crate::proto::LINK_TIMEOUT)) {
        tracing::debug!(error = %e, "cannot set the TCP user timeout");
    }
}

/// The peer a dial is for (its address ends in `/p2p/<peer>`: libp2p adds it to a dial by
/// peer), or none for an incoming connection or a dial by address alone.
fn dialled_peer(endpoint: &libp2p::core::ConnectedPoint) -> Option<PeerId> {
    match endpoint {
        libp2p::core::ConnectedPoint::Dialer { address, .. } => peer_of(address),
        libp2p::core::ConnectedPoint::Listener { .. } => None,
    }
}

/// How often the swarm task hands gossipsub the peers' application scores and looks at
/// every connected peer's score.
const CONDUCT_TICK: Duration = Duration::from_millis(500);
/// Longest a trimmed connection stays open for the requests in flight on it.
const TRIM_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn topic_score_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..TopicScoreParams::default()
    }
}

/// The gossipsub message id, [`crate::wire::message_id`]: over the topic and the signed
/// content of the message (its canonical encoding), documented in the book's wire chapter.
///
/// Messages are anonymous at the gossipsub layer (no source, sequence number or gossipsub
/// signature): each carries its owner's signature inside, which makes it valid whoever
/// relays it. So the id depends on the signed content only, and gossipsub drops every
/// further copy of a message, re-encoded ones included, before anything checks a
/// signature.
fn message_id(m: &gossipsub::Message) -> MessageId {
    MessageId::from(&crate::wire::message_id(m.topic.as_str(), &m.data)[..])
}

/// Gossipsub's mesh per topic: `MESH_N` peers, kept between `MESH_N_LOW` and
/// `MESH_N_HIGH` (gossipsub's defaults are 6, 5 and 12). Every node keeps about 8
/// connections (the view), so with the defaults nearly every connection was in the mesh
/// and each node got each message about as many times as it had connections. A mesh of 4
/// with lazy gossip to 3 other peers for one heartbeat sends about a third fewer bytes
/// per version (B2), with B1's latency unchanged; a publish still goes to every connected
/// subscriber (flood publishing). A mesh of 3 halved B2's bytes, but a B1 trial then now
/// and again took about half a second, and in the simulator a lying accuser had a live
/// device removed in 1 seed of 40. See the Performance chapter. The anti-entropy
/// digests, not the mesh, are what guarantee delivery.
const MESH_N: usize = 4;
const MESH_N_LOW: usize = 3;
const MESH_N_HIGH: usize = 6;
/// Non-mesh peers each heartbeat's IHAVE goes to (gossipsub's default is 6).
const GOSSIP_LAZY: usize = 3;

/// Builds the swarm. Each dial that reaches its host (the TCP connection is up, the
/// handshakes not yet done) sends the peer dialled on `reached` (see
/// [`Input::DialReached`]).
pub(crate) fn build_swarm(
    key: Keypair,
    cfg: &Config,
    topics: Topics,
    counters: Arc<Counters>,
    conduct: PeerConduct,
    reached: mpsc::UnboundedSender<PeerId>,
) -> Result<Swarm<Behaviour>, Error> {
    let max_msg = max_transmit_size(cfg);
    let heartbeat = cfg.gossip_heartbeat;
    let mdns_on = cfg.mdns;
    let max_response = cfg.max_response_bytes;
    let psk = cfg.psk;
    let connect_timeout = cfg.connect_timeout;
    let inbound_timeout = cfg.inbound_handshake_timeout;
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(cfg.max_pending_incoming))
        .with_max_established_incoming(Some(cfg.max_established_incoming))
        .with_max_established_per_peer(Some(cfg.max_connections_per_peer));
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                // TCP (with /dns* addresses resolved at each dial), then (with a pre-shared
                // key) the pnet handshake, then noise and yamux.
                let tcp = || tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
                let tcp = dns::tokio::Transport::system(tcp()).unwrap_or_else(|e| {
                    // No /etc/resolv.conf (a bare container, say): names resolve from the
                    // hosts file only.
                    tracing::warn!(error = %e, "cannot read the system's DNS settings; /dns addresses resolve from the hosts file only");
                    dns::tokio::Transport::custom(
                        tcp(),
                        dns::ResolverConfig::default(),
                        dns::ResolverOpts::default(),
                    )
                });
                let private = tcp.and_then(move |socket, endpoint| {
                    if let Some(peer) = dialled_peer(&endpoint) {
                        // Nobody listening any more only means the node is stopping.
                        let _ = reached.send(peer);
                    }
                    async move {
                        watch_link(&socket.0);
                        match psk {
                            Some(psk) => PnetConfig::new(psk)
                                .handshake(socket)
                                .await
                                .map(Either::Left)
                                .map_err(std::io::Error::other),
                            None => Ok(Either::Right(socket)),
                        }
                    }
                });
                let upgraded = private
                    .upgrade(UpgradeVersion::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default());
                // An incoming connection gets less time than a dial: a peer that opens
                // connections and stays silent holds each one (and a file descriptor)
                // until this runs out.
                Ok(TransportTimeout::with_ingoing_timeout(
                    TransportTimeout::with_outgoing_timeout(upgraded, connect_timeout),
                    inbound_timeout,
                ))
            },
        )
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let gs_config = gossipsub::ConfigBuilder::default()
                .mesh_n(MESH_N)
                .mesh_n_low(MESH_N_LOW)
                .mesh_n_high(MESH_N_HIGH)
                .gossip_lazy(GOSSIP_LAZY)
                .history_gossip(1)
                .validation_mode(ValidationMode::Anonymous)
                .validate_messages()
                .heartbeat_interval(heartbeat)
                .max_transmit_size(max_msg)
                .max_control_message_size(max_msg)
                .message_id_fn(message_id)
                .build()
                .map_err(|e| e.to_string())?;
            let filter = MaxCountSubscriptionFilter {
                filter: SubscriptionFilter {
                    topics: topics.clone(),
                    counters: counters.clone(),
                },
                // Most topics of a peer that gossipsub records, and most subscriptions in
                // one of its messages: past that, gossipsub ignores the message's
                // subscriptions whole, at no cost per topic (its default filter caps both
                // at 100). What is recorded is bounded further by `SubscriptionFilter`:
                // joined topics, and a few others per peer.
                max_subscribed_topics: MAX_TOPICS_PER_PEER,
                max_subscriptions_per_request: MAX_TOPICS_PER_PEER,
            };
            let transform = JoinedTopicsOnly {
                topics: topics.clone(),
                counters,
                conduct,
            };
            let mut inner = gossipsub::Behaviour::new_with_subscription_filter_and_transform(
                MessageAuthenticity::Anonymous,
                gs_config,
                filter,
                transform,
            )?;
            inner.with_peer_score(score_params(), PeerScoreThresholds::default())?;
            let gossipsub = PeerAware { inner, topics };
            let sync = request_response::Behaviour::with_codec(
                SyncCodec {
                    max_request: 1024 * 1024,
                    // Room for the response map around the slices the answerer counted.
                    max_response: max_response + 1024,
                },
                [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            );
            let identify = identify::Behaviour::new(identify::Config::new(
                "/truffle/id/1".into(),
                key.public(),
            ));
            // Watch liveness notices a peer that stopped answering by its pings.
            let ping = match cfg.liveness {
                crate::proto::Liveness::Watch => {
                    let p = crate::proto::ProtoConfig::default();
                    ping::Behaviour::new(
                        ping::Config::new()
                            .with_interval(p.ping_every)
                            .with_timeout(p.ping_timeout),
                    )
                }
                _ => ping::Behaviour::default(),
            };
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                gossipsub,
                sync,
                identify,
                ping,
                mdns: mdns.into(),
            })
        })
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// A slice waiting in the swarm task to be published (newest per store wins): its bytes,
/// and for own slices its version and the store's outbox, to report it flushed once
/// published (none for raw test publishes).
type Pub = (Arc<[u8]>, Option<(Version, Option<Outbox>)>);

/// Commands from the gossip actor (the engine's outputs) and from store actors.
pub(crate) enum SwarmCmd {
    /// Join a store's topic; `outbox` is where its store actor leaves local slices.
    Subscribe {
        store: StoreId,
        outbox: Outbox,
    },
    /// The store's outbox holds a new local slice (sent by the store actor itself).
    Flush(StoreId),
    /// End the task (the node is stopping); the swarm is dropped with it.
    Stop,
    /// Test hook: publish these bytes on the store's topic as they are.
    #[cfg(feature = "test-hooks")]
    RawPublish {
        store: StoreId,
        raw: Arc<[u8]>,
    },
    /// Test hook: handle these slices as if `peer` had sent them in a sync answer.
    #[cfg(feature = "test-hooks")]
    InjectResponse {
        peer: PeerId,
        slices: Vec<Vec<u8>>,
    },
    /// Publish on the presence topic: a heartbeat (with its `(incarnation, seq)`, kept to
    /// answer `members` requests) or an accusation.
    PublishPresence(Vec<u8>, Option<(u64, u64)>),
    /// Send a watch-liveness request.
    Ask {
        peer: DeviceId,
        id: RequestId,
        ask: Ask,
    },
    /// Answer a watch-liveness request.
    Reply {
        token: Token,
        reply: Reply,
    },
    /// Publish this signed leave (if not empty) and no more local slices.
    Goodbye(Vec<u8>),
    /// Publish an own slice again (it reached nobody before).
    Republish {
        store: StoreId,
        version: Version,
        raw: Arc<[u8]>,
    },
    Fetch {
        peer: DeviceId,
        id: RequestId,
        want: Vec<Want>,
    },
    SendGoodbye {
        peer: DeviceId,
        id: RequestId,
        incarnation: u64,
    },
    Respond {
        token: Token,
        slices: Vec<Arc<[u8]>>,
    },
    /// Dial a peer by id, with these addresses besides those the swarm knows.
    Dial(DeviceId, Vec<Multiaddr>),
    DialAddr(Multiaddr),
    Disconnect(DeviceId),
    /// Close every connection to a peer once its requests in flight are answered (at most
    /// [`TRIM_GRACE`] later).
    Trim(DeviceId),
}

/// A gossiped slice whose forwarding waits for its device's rate (see [`HeldSlices`]).
struct HeldRelay {
    version: Version,
    id: MessageId,
    via: PeerId,
    /// A relayed copy not yet verified (checked once the rate allows); `None` for one
    /// straight from its author, verified and used already.
    unverified: Option<gossipsub::Message>,
}

impl HeldRelay {
    fn unverified_bytes(&self) -> usize {
        self.unverified.as_ref().map_or(0, |m| m.data.len())
    }
}

/// The newest slice of each (device, store) that came over the gossip rate, its
/// validation result withheld (gossipsub keeps the message meanwhile) until the rate lets
/// it be forwarded (see [`GossipGate::release`]). One straight from its author is
/// verified and used at once; a relayed one is checked then. Declining the last version
/// of a burst instead would leave it to the digests (a second or more), and a relayed
/// copy declined before the author's own copy arrived would make gossipsub drop that
/// one as a duplicate.
#[derive(Default)]
pub(crate) struct HeldSlices {
    lanes: HashMap<(DeviceId, StoreId), HeldRelay>,
    /// Data bytes of the unverified copies held.
    bytes: usize,
    /// Set when a slice is held (see [`take_added`](Self::take_added)).
    added: bool,
}

impl HeldSlices {
    fn remove(&mut self, lane: &(DeviceId, StoreId)) -> Option<HeldRelay> {
        let h = self.lanes.remove(lane)?;
        self.bytes -= h.unverified_bytes();
        Some(h)
    }

    /// Whether one more slice, with `bytes` of data held unverified, stays within bounds.
    fn has_room(&self, bytes: usize) -> bool {
        self.lanes.len() < MAX_HELD && self.bytes + bytes <= MAX_HELD_BYTES
    }

    /// Holds `h` for `lane`, which holds nothing (see [`SwarmTask::hold`]).
    fn insert(&mut self, lane: (DeviceId, StoreId), h: HeldRelay) {
        self.bytes += h.unverified_bytes();
        self.lanes.insert(lane, h);
        self.added = true;
    }

    /// Whether something was held since the last call: the next release time must be
    /// worked out again.
    fn take_added(&mut self) -> bool {
        std::mem::take(&mut self.added)
    }
}

/// What becomes of a gossip message once checked.
enum Relay {
    /// Report this to gossipsub now.
    Now(MessageAcceptance),
    /// A slice over its device's rate in its store, verified (straight from its author)
    /// or not (relayed): forward it once the rate allows, unless a newer version comes
    /// first.
    Later {
        lane: (DeviceId, StoreId),
        version: Version,
        verified: bool,
    },
}

/// Most slices held back at once (one per device and store). Past it, a slice over the
/// rate is used but not forwarded if it comes from its author, and declined if relayed,
/// as before holding was added.
const MAX_HELD: usize = 1024;
/// Most data bytes of the unverified relayed copies held at once.
const MAX_HELD_BYTES: usize = 4 * 1024 * 1024;

pub(crate) struct SwarmTask {
    pub swarm: Swarm<Behaviour>,
    pub cmds: mpsc::UnboundedReceiver<SwarmCmd>,
    /// Peers whose dial reached the host (from the transport, see [`build_swarm`]).
    pub reached: mpsc::UnboundedReceiver<PeerId>,
    pub actor: ActorRef<GossipMsg>,
    /// Where network events wait for the gossip actor (coalesced per device).
    pub inbox: Arc<super::inbox::Inbox>,
    pub counters: Arc<Counters>,
    pub listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    /// Largest slice data accepted.
    pub max_slice: usize,
    pub faults: FaultHandle,
    /// Fingerprint of the pre-shared key, when the mesh is private.
    pub psk_fingerprint: Option<String>,
    /// Rate limits the warnings about failed connections, per cause.
    pub dial_warnings: WarnLimiter,
    /// The bootstrap addresses (the engine dials them), to name them in warnings.
    pub bootstrap: Vec<Multiaddr>,
    /// Keys of the devices whose signatures this task checks.
    pub keys: KeyCache,
    /// Declines stale and over-rate slices before their signature is checked.
    pub gate: GossipGate,
    /// Slices over their device's rate, forwarded once it allows.
    pub held: HeldSlices,
    /// Our requests in flight, by libp2p id, with the engine's id.
    pub outbound: HashMap<OutboundRequestId, (RequestId, PeerId)>,
    /// Our watch-liveness requests in flight, with the engine's id and the answer expected.
    pub asks: HashMap<OutboundRequestId, (RequestId, AskKind, PeerId)>,
    /// The latest presence message of each device, to answer `members` requests.
    pub presences: Presences,
    /// This node's latest presence message while no peer is known to subscribe to the
    /// presence topic (just after the first connection, before subscriptions arrive):
    /// published as soon as one does, so a heartbeat sent only on change is not lost.
    pub unsent_presence: Option<Vec<u8>>,
    /// This device (its own presence is kept too).
    pub me: PeerId,
    /// Inbound requests waiting for the engine's answer, with libp2p's id of each.
    pub inbound: HashMap<Token, (ResponseChannel<SyncResponse>, InboundRequestId)>,
    /// What each peer's inbound requests may cost at a time (see [`super::budget`]).
    pub inbound_budget: InboundBudget<PeerId, InboundRequestId>,
    /// The topics this node joined (shared with gossipsub's transform and filter).
    pub topics: Topics,
    /// Which new devices are worth tracking (see [`crate::proto::admission`]).
    pub admission: Admission,
    /// What each peer sends, and what its junk costs it (shared with gossipsub's
    /// transform).
    pub conduct: PeerConduct,
    /// Connected peers last seen under the graylist threshold.
    pub graylisted: std::collections::HashSet<PeerId>,
    /// Peers whose connections close once nothing is in flight on them, with the
    /// deadline (see [`SwarmCmd::Trim`]).
    pub trimming: HashMap<PeerId, Instant>,
    pub next_token: Token,
    /// Signs this node's slices as they are published.
    pub key: Keypair,
    /// This device's id in text (base58) form, as slices carry it.
    pub me_text: String,
    /// Each joined store's outbox.
    pub outboxes: HashMap<StoreId, Outbox>,
    /// Set by `Goodbye`: local slices are no longer published.
    pub leaving: bool,
    /// Set by `Stop`: the task ends once the commands queued with it are handled.
    pub stopping: bool,
}

impl SwarmTask {
    pub async fn run(mut self) {
        let presence = IdentTopic::new(PRESENCE_TOPIC);
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .set_topic_params(presence.clone(), topic_score_params());
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&presence) {
            tracing::error!(error = %e, "cannot subscribe to the presence topic");
        }
        let mut pending: HashMap<StoreId, Pub> = HashMap::new();
        let mut tick = tokio::time::interval(CONDUCT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Wakes the task when a held-back slice may be forwarded (see `held`).
        // Release times only move when a slice is held or one is released, so they are
        // worked out then, not on every event.
        let release = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(release);
        let (mut armed, mut due) = (false, false);
        loop {
            if due || self.held.take_added() {
                due = false;
                let wake = self.release_held(Instant::now());
                if let Some(at) = wake {
                    release.as_mut().reset(at.into());
                }
                armed = wake.is_some();
            }
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                () = &mut release, if armed => due = true,
                _ = tick.tick() => self.on_conduct_tick(),
                Some(peer) = self.reached.recv() => {
                    tracing::trace!(%peer, "dial reached the host");
                    self.forward(Input::DialReached { peer: peer.into() });
                }
                cmd = self.cmds.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.on_cmd(cmd, &mut pending);
                    // Drain what is already queued, then publish each store's newest slice
                    // once: last write wins, so older pending versions need not go out.
                    while let Ok(cmd) = self.cmds.try_recv() {
                        self.on_cmd(cmd, &mut pending);
                    }
                    for (store, (raw, own)) in pending.drain() {
                        let reached = self.publish(&store, &raw);
                        if let Some((version, outbox)) = own {
                            if let Some(outbox) = outbox {
                                outbox.mark_flushed(version);
                            }
                            self.forward(Input::Published { store, version, raw, reached_nobody: !reached });
                        }
                    }
                    if self.stopping {
                        break;
                    }
                }
            }
        }
        tracing::debug!("swarm task stopped");
    }

    /// Hands gossipsub the peers' application scores (see [`PeerConduct::tick`]), shows
    /// introspection each connected peer's score and traffic, and counts the peers newly
    /// under the graylist threshold.
    fn on_conduct_tick(&mut self) {
        let now = Instant::now();
        self.close_overdue_trims(now);
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        for (peer, score) in self.conduct.tick(now) {
            gs.set_application_score(&peer, score);
        }
        let graylist = PeerScoreThresholds::default().graylist_threshold;
        let peers: Vec<PeerId> = gs.all_peers().map(|(p, _)| *p).collect();
        for peer in peers {
            let score = gs.peer_score(&peer);
            if score.is_some_and(|s| s < graylist) {
                if self.graylisted.insert(peer) {
                    inc(&self.counters.peers_graylisted);
                    tracing::debug!(%peer, score, "peer under the graylist threshold: its gossip is ignored");
                }
            } else {
                self.graylisted.remove(&peer);
            }
            let traffic = self.conduct.traffic(&peer).unwrap_or_default();
            self.counters.intro.conduct(peer.into(), score, traffic);
        }
    }

    /// Publishes on the store's topic; false when no peer has joined it yet.
    fn publish(&mut self, store: &StoreId, raw: &Arc<[u8]>) -> bool {
        let topic = IdentTopic::new(store_topic(store));
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, raw.to_vec())
        {
            Ok(_) => {
                inc(&self.counters.published);
                self.counters.prom.published(store);
                true
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                tracing::trace!(%store, "no peers subscribed yet");
                false
            }
            Err(gossipsub::PublishError::Duplicate) => {
                // These exact bytes went out before (gossipsub keeps their id for a while):
                // peers that missed them get the slice through anti-entropy.
                tracing::debug!(%store, "slice already published (same signed bytes)");
                true
            }
            Err(e) => {
                tracing::warn!(%store, error = %e, "publish failed; anti-entropy will retry");
                true
            }
        }
    }

    fn on_cmd(&mut self, cmd: SwarmCmd, pending: &mut HashMap<StoreId, Pub>) {
        match cmd {
            SwarmCmd::Subscribe { store, outbox } => {
                self.outboxes.insert(store.clone(), outbox);
                let topic = IdentTopic::new(store_topic(&store));
                self.topics.join(topic.hash());
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                let _ = gs.set_topic_params(topic.clone(), topic_score_params());
                if let Err(e) = gs.subscribe(&topic) {
                    tracing::error!(%store, error = %e, "cannot subscribe to store topic");
                }
                // Peers that subscribed before this node joined: their `Subscribed` events
                // were not passed on (see `on_gossip`), but gossipsub kept a few of each
                // peer's subscriptions to stores not joined yet, for this.
                let hash = topic.hash();
                let already: Vec<PeerId> = gs
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .map(|(p, _)| *p)
                    .collect();
                for peer in already {
                    if !drop_inbound(&self.faults, &[peer]) {
                        self.forward(Input::Subscribed {
                            peer: peer.into(),
                            store: store.clone(),
                        });
                    }
                }
            }
            SwarmCmd::Stop => self.stopping = true,
            SwarmCmd::Flush(store) => {
                if let Some(signed) = self.sign_local(&store) {
                    pending.insert(store, signed);
                }
            }
            #[cfg(feature = "test-hooks")]
            SwarmCmd::RawPublish { store, raw } => {
                pending.insert(store, (raw, None));
            }
            #[cfg(feature = "test-hooks")]
            SwarmCmd::InjectResponse { peer, slices } => {
                let slices = slices.into_iter().map(Arc::from).collect();
                self.on_response(peer, 0, slices);
            }
            SwarmCmd::PublishPresence(bytes, own) => {
                if let (Some(at), true) = (own, self.presences.enabled()) {
                    self.presences
                        .keep(self.me, at, Arc::from(bytes.as_slice()));
                }
                self.publish_presence(bytes);
            }
            SwarmCmd::Goodbye(payload) => {
                self.leaving = true;
                if !payload.is_empty() {
                    let topic = IdentTopic::new(PRESENCE_TOPIC);
                    let _ = self.swarm.behaviour_mut().gossipsub.publish(topic, payload);
                }
            }
            SwarmCmd::Republish {
                store,
                version,
                raw,
            } => {
                if !self.leaving {
                    pending.entry(store).or_insert((raw, Some((version, None))));
                }
            }
            SwarmCmd::Fetch { peer, id, want } => {
                let req = SyncRequest {
                    v: PROTOCOL_VERSION,
                    kind: "fetch".into(),
                    want: want
                        .into_iter()
                        .map(|w| crate::wire::Want {
                            store: w.store.to_string(),
                            device: w.device.map(|d| d.to_string()),
                        })
                        .collect(),
                    incarnation: 0,
                    ..SyncRequest::default()
                };
                self.request(peer, id, req);
            }
            SwarmCmd::SendGoodbye {
                peer,
                id,
                incarnation,
            } => {
                let req = SyncRequest {
                    v: PROTOCOL_VERSION,
                    kind: "leave".into(),
                    incarnation,
                    ..SyncRequest::default()
                };
                self.request(peer, id, req);
            }
            SwarmCmd::Ask { peer, id, ask } => {
                let (req, kind) = watch_wire::request_of(ask);
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer.peer_id(), req);
                self.asks.insert(rid, (id, kind, peer.peer_id()));
            }
            SwarmCmd::Reply { token, reply } => {
                let Some((channel, request)) = self.inbound.remove(&token) else {
                    return;
                };
                let res = watch_wire::response_of(reply, &self.presences);
                let sizes = res.presences.iter().map(|p| p.len());
                if self.inbound_budget.fit(request, sizes).is_some() {
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, res);
                }
            }
            SwarmCmd::Respond { token, mut slices } => {
                let Some((channel, request)) = self.inbound.remove(&token) else {
                    return;
                };
                // Only what fits the asking peer's bytes in flight goes out (nothing when
                // the request already failed); the slices are shared with what the engine
                // holds, never copied.
                let sizes = slices.iter().map(|s| s.len());
                if let Some(fit) = self.inbound_budget.fit(request, sizes) {
                    if fit < slices.len() {
                        slices.truncate(fit);
                        inc(&self.counters.sync_over_budget);
                    }
                    let _ = self.swarm.behaviour_mut().sync.send_response(
                        channel,
                        SyncResponse {
                            v: PROTOCOL_VERSION,
                            slices,
                            ..SyncResponse::default()
                        },
                    );
                }
            }
            SwarmCmd::Dial(peer, addrs) => {
                let opts = DialOpts::peer_id(peer.peer_id())
                    .condition(PeerCondition::DisconnectedAndNotDialing);
                let opts = match addrs.is_empty() {
                    true => opts.build(),
                    false => opts
                        .addresses(addrs)
                        .extend_addresses_through_behaviour()
                        .build(),
                };
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::trace!(%peer, error = %e, "dial not started");
                }
            }
            SwarmCmd::DialAddr(addr) => {
                let result = match peer_of(&addr) {
                    Some(peer) => self.swarm.dial(
                        DialOpts::peer_id(peer)
                            .addresses(vec![addr.clone()])
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build(),
                    ),
                    None => self.swarm.dial(addr.clone()),
                };
                if let Err(e) = result {
                    tracing::trace!(%addr, error = %e, "redial not started");
                }
            }
            SwarmCmd::Disconnect(peer) => {
                tracing::debug!(%peer, "disconnecting (to reconnect afresh, or unresponsive)");
                self.trimming.remove(&peer.peer_id());
                let _ = self.swarm.disconnect_peer_id(peer.peer_id());
            }
            SwarmCmd::Trim(peer) => {
                let peer = peer.peer_id();
                self.trimming.insert(peer, Instant::now() + TRIM_GRACE);
                self.close_if_settled(peer);
            }
        }
    }

    /// Sends a sync request, remembering the engine's id for its answer.
    fn publish_presence(&mut self, bytes: Vec<u8>) {
        let topic = IdentTopic::new(PRESENCE_TOPIC);
        self.unsent_presence = None;
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, bytes.clone())
        {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                self.unsent_presence = Some(bytes);
            }
            Err(e) => tracing::debug!(error = %e, "presence publish failed"),
        }
    }

    fn request(&mut self, peer: DeviceId, id: RequestId, req: SyncRequest) {
        let rid = self
            .swarm
            .behaviour_mut()
            .sync
            .send_request(&peer.peer_id(), req);
        self.outbound.insert(rid, (id, peer.peer_id()));
    }

    /// Closes a trimmed peer's connections if nothing is in flight on them either way.
    fn close_if_settled(&mut self, peer: PeerId) {
        if !self.trimming.contains_key(&peer) || self.inbound_budget.load(peer).0 > 0 {
            return;
        }
        let ours = self.outbound.values().any(|(_, p)| *p == peer)
            || self.asks.values().any(|(_, _, p)| *p == peer);
        if ours {
            return;
        }
        self.trimming.remove(&peer);
        tracing::debug!(%peer, "closing a trimmed connection");
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Closes the trimmed connections whose grace ran out.
    fn close_overdue_trims(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .trimming
            .iter()
            .filter(|(_, t)| now >= **t)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            self.trimming.remove(&peer);
            tracing::debug!(%peer, "closing a trimmed connection (grace over)");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Takes the store's newest local slice out of its outbox and encodes and signs it.
    /// `None` when there is nothing to publish, or the node is leaving.
    fn sign_local(&mut self, store: &StoreId) -> Option<Pub> {
        if self.leaving {
            return None;
        }
        let outbox = self.outboxes.get(store)?.clone();
        let p = outbox.take()?;
        let raw: Arc<[u8]> = match encode_slice_as(
            &self.key,
            store,
            &self.me_text,
            p.version,
            p.updated_at,
            &p.data,
        ) {
            Ok(raw) => raw.into(),
            Err(e) => {
                tracing::error!(%store, error = %e, "cannot sign local slice; not published");
                return None;
            }
        };
        Some((raw, Some((p.version, Some(outbox)))))
    }

    fn forward(&self, input: Input) {
        if self.inbox.put(input) && self.actor.cast(GossipMsg::Inbox).is_err() {
            tracing::debug!("gossip actor gone; dropping network event");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        record_libp2p_metrics(&self.counters, &event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.counters.intro.rtt(peer.into(), rtt),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Err(error),
                ..
            })) => {
                tracing::debug!(%peer, %error, "ping failed");
                self.forward(Input::Unresponsive { peer: peer.into() });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => self.on_gossip(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => self.on_sync(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs.into_iter().take(16) {
                    self.swarm.add_peer_address(peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "mdns discovered a peer");
                    self.swarm.add_peer_address(peer, addr);
                    self.forward(Input::Discovered { peer: peer.into() });
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let mut addrs = self.listen_addrs.lock().unwrap_or_else(|p| p.into_inner());
                if !addrs.contains(&address) {
                    addrs.push(address);
                }
                let list = addrs.iter().map(|a| a.to_string()).collect();
                drop(addrs);
                self.forward(Input::ListenAddrs(list));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let mut addrs = self.listen_addrs.lock().unwrap_or_else(|p| p.into_inner());
                addrs.retain(|a| a != &address);
                let list = addrs.iter().map(|a| a.to_string()).collect();
                drop(addrs);
                self.forward(Input::ListenAddrs(list));
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                tracing::debug!(peer = %peer_id, "connected");
                self.conduct.connected(peer_id, Instant::now());
                self.forward(Input::Connected {
                    peer: peer_id.into(),
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, remaining = num_established, "connection closed");
                if num_established == 0 {
                    // Its requests in flight fail now (`OutboundFailure` follows).
                    self.trimming.remove(&peer_id);
                    self.admission.peer_gone(&peer_id.into());
                    self.conduct.disconnected(peer_id);
                    self.graylisted.remove(&peer_id);
                }
                self.forward(Input::ConnectionClosed {
                    peer: peer_id.into(),
                    remaining: num_established,
                });
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                inc(&self.counters.connection_failures);
                if let Some(peer) = peer_id {
                    self.forward(Input::DialFailed { peer: peer.into() });
                }
                self.connection_failed(
                    &format!(
                        "dial to {}",
                        peer_id
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "a peer".into())
                    ),
                    &error.to_string(),
                );
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                inc(&self.counters.connection_failures);
                self.connection_failed(
                    &format!("incoming connection from {send_back_addr}"),
                    &error_chain(&error),
                );
            }
            _ => {}
        }
    }

    /// Logs a failed connection with its cause first and what to check, each cause at most
    /// every 30 s (a bootstrap peer that is down is re-dialled every second). A connection
    /// that fails or stalls in its handshake is the only sign of a pre-shared-key
    /// mismatch (libp2p reports no specific error), so only those mention the key.
    fn connection_failed(&mut self, what: &str, error: &str) {
        let inbound = what.starts_with("incoming");
        let kind = ConnectFailure::classify(error, inbound);
        // A bootstrap peer that cannot be reached is worth naming as such.
        let bootstrap = self.bootstrap.iter().find(|b| {
            let plain: Multiaddr = b
                .iter()
                .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                .collect();
            error.contains(&format!("{plain}/")) || error.contains(&format!("{plain}:"))
        });
        let what = match bootstrap {
            Some(addr) if kind.is_unreachable() => format!("bootstrap peer {addr} unreachable"),
            Some(addr) => format!("bootstrap peer {addr}"),
            None => what.to_string(),
        };
        // A refused re-dial of a peer that was met in the mesh (not a bootstrap address) is
        // the normal sequel of its leaving: not worth a warning.
        let quiet = kind.is_quiet(self.psk_fingerprint.is_some())
            || (kind == ConnectFailure::Refused && bootstrap.is_none());
        let repeats = match quiet {
            true => None,
            false => self.dial_warnings.allow(kind, std::time::Instant::now()),
        };
        let Some(repeats) = repeats else {
            tracing::debug!(what, error, "connection failed");
            return;
        };
        let hint = kind.explain(self.psk_fingerprint.is_some());
        match &self.psk_fingerprint {
            Some(fp)
                if matches!(
                    kind,
                    ConnectFailure::Handshake
                        | ConnectFailure::Abandoned
                        | ConnectFailure::Timeout
                        | ConnectFailure::InboundTimeout
                ) =>
            {
                tracing::warn!(psk_fingerprint = %fp, error, repeats, "{what}: {hint}")
            }
            _ => tracing::warn!(error, repeats, "{what}: {hint}"),
        }
    }

    fn on_gossip(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => match self.check_gossip(propagation_source, &message) {
                Relay::Now(acceptance) => self.report(&message_id, &propagation_source, acceptance),
                Relay::Later {
                    lane,
                    version,
                    verified,
                } => {
                    let held = HeldRelay {
                        version,
                        id: message_id,
                        via: propagation_source,
                        unverified: (!verified).then_some(message),
                    };
                    self.hold(lane, held);
                }
            },
            gossipsub::Event::Subscribed { peer_id, topic }
                if !drop_inbound(&self.faults, &[peer_id]) =>
            {
                if topic.as_str() == PRESENCE_TOPIC && !self.leaving {
                    if let Some(bytes) = self.unsent_presence.take() {
                        self.publish_presence(bytes);
                    }
                }
                // Only joined stores concern the protocol core; subscriptions to others
                // are looked up in gossipsub when this node joins one (`Subscribe`).
                if !self.topics.is_joined(&topic) {
                    return;
                }
                if let Some(store) = store_of_topic(topic.as_str()) {
                    self.forward(Input::Subscribed {
                        peer: peer_id.into(),
                        store,
                    });
                }
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                if !self.topics.is_joined(&topic) {
                    return;
                }
                if let Some(store) = store_of_topic(topic.as_str()) {
                    self.forward(Input::Unsubscribed {
                        peer: peer_id.into(),
                        store,
                    });
                }
            }
            _ => {}
        }
    }

    /// Checks one gossip message (gossipsub has already dropped copies of messages seen
    /// before): decode, bounds, the signature of the device it names. Valid messages go to
    /// the engine and on through gossipsub; invalid ones count against `via`.
    fn check_gossip(&mut self, via: PeerId, message: &gossipsub::Message) -> Relay {
        let topic = message.topic.as_str();
        let now = Instant::now();
        if topic != PRESENCE_TOPIC {
            return match topic.strip_prefix(STORE_TOPIC_PREFIX) {
                Some(store) => {
                    inc(&self.counters.delivered);
                    self.check_slice(via, message, store, now)
                }
                None => Relay::Now(MessageAcceptance::Ignore),
            };
        }
        Relay::Now(self.check_presence(via, message, now))
    }

    /// [`check_gossip`](Self::check_gossip) of a message on the presence topic.
    fn check_presence(
        &mut self,
        via: PeerId,
        message: &gossipsub::Message,
        now: Instant,
    ) -> MessageAcceptance {
        let topic = message.topic.as_str();
        let admission = &mut self.admission;
        let kept = &self.presences;
        let mut verdict = Verdict::Known;
        let mut screened = Screen::Verify;
        let decoded =
            decode_presence_msg_if(&message.data, MAX_PRESENCE_BYTES, &mut self.keys, |d| {
                verdict = admission.check(&(*d).into(), &via.into(), now);
                screened = watch_wire::screen(verdict, kept, d, &message.data);
                screened
            });
        let decoded = match decoded {
            Ok(Some(decoded)) => Ok(decoded),
            Ok(None) => {
                self.refused_device(via, verdict);
                return MessageAcceptance::Ignore;
            }
            Err(reason) => Err(reason),
        };
        if let Ok((device, _)) = &decoded {
            self.admission.admitted((*device).into(), &via.into(), now);
        }
        match decoded {
            Ok((device, _)) if drop_inbound(&self.faults, &[via, device]) => {
                MessageAcceptance::Ignore
            }
            Ok((device, PresenceMsg::Presence(p))) => {
                inc(&self.counters.presence_received);
                self.counters
                    .intro
                    .heard_name(device.into(), p.name.as_deref());
                // A copy of the kept message is kept already.
                if self.presences.enabled() && screened != Screen::Verified {
                    let raw = Arc::from(message.data.as_slice());
                    self.presences.keep(device, (p.incarnation, p.seq), raw);
                }
                let heartbeat = watch_wire::heartbeat_of(device, p);
                self.forward(Input::Heartbeat {
                    via: via.into(),
                    heartbeat: Arc::new(heartbeat),
                });
                self.accept_if_canonical(via, &message.data, topic)
            }
            Ok((device, PresenceMsg::Leave(l))) => {
                inc(&self.counters.presence_received);
                self.forward(goodbye(device.into(), l.incarnation));
                self.accept_if_canonical(via, &message.data, topic)
            }
            Ok((accuser, PresenceMsg::Suspect(sus))) => {
                let Ok(accused) = sus.device.parse::<DeviceId>() else {
                    self.counters.reject(
                        crate::wire::RejectReason::BadField,
                        &via,
                        "presence topic",
                    );
                    return MessageAcceptance::Reject;
                };
                self.forward(Input::Suspect {
                    accuser: accuser.into(),
                    suspicion: crate::proto::Suspicion {
                        device: accused,
                        incarnation: sus.incarnation,
                        seq: sus.seq,
                    },
                });
                MessageAcceptance::Accept
            }
            Err(reason) => {
                self.counters.reject(reason, &via, "presence topic");
                MessageAcceptance::Reject
            }
        }
    }

    /// [`check_gossip`](Self::check_gossip) of a slice on the topic of `topic_store`.
    fn check_slice(
        &mut self,
        via: PeerId,
        message: &gossipsub::Message,
        topic_store: &str,
        now: Instant,
    ) -> Relay {
        let topic = message.topic.as_str();
        let gate = &self.gate;
        let admission = &mut self.admission;
        let mut verdict = Gate::Pass;
        let mut admit = Verdict::Known;
        let mut over_rate = None;
        let checked = decode_slice_if(&message.data, self.max_slice, &mut self.keys, |d, s, v| {
            admit = admission.check(d, &via.into(), now);
            if !admit.pass() {
                return false;
            }
            verdict = gate.check(d, s, v, d.peer_id() == via, now);
            if verdict == Gate::OverRate {
                over_rate = Some((*d, s.clone(), v));
            }
            matches!(verdict, Gate::Pass | Gate::UseOnly)
        });
        let slice = match checked {
            Ok(Some(slice)) => {
                self.admission.admitted(slice.device, &via.into(), now);
                Ok(slice)
            }
            Ok(None) if !admit.pass() => {
                self.refused_device(via, admit);
                return Relay::Now(MessageAcceptance::Ignore);
            }
            Ok(None) => {
                inc(&self.counters.gossip_over_rate);
                if let Some((device, store, version)) = over_rate {
                    // Relayed past its device's rate in that store: checked only if it is
                    // still the newest once the rate allows.
                    return Relay::Later {
                        lane: (device, store),
                        version,
                        verified: false,
                    };
                }
                // Not newer than what was verified already: not checked, not forwarded.
                tracing::trace!(%via, ?verdict, "gossiped slice declined before its check");
                return Relay::Now(MessageAcceptance::Ignore);
            }
            Err(reason) => Err(reason),
        };
        match slice {
            Ok(slice) if slice.store.as_str() != topic_store => {
                self.counters.reject(RejectReason::WrongStore, &via, topic);
                Relay::Now(MessageAcceptance::Reject)
            }
            Ok(slice) if drop_inbound(&self.faults, &[via, slice.device.peer_id()]) => {
                Relay::Now(MessageAcceptance::Ignore)
            }
            Ok(slice) => {
                let forward = verdict == Gate::Pass;
                let (lane, version) = ((slice.device, slice.store.clone()), slice.version);
                if forward {
                    // A version held back for this lane is older: only this one goes on.
                    self.drop_held(&lane);
                }
                self.gate
                    .passed(slice.device, &slice.store, slice.version, forward, now);
                self.forward(Input::Slice {
                    via: via.into(),
                    slice,
                });
                let acceptance = self.accept_if_canonical(via, &message.data, topic);
                if !forward && acceptance == MessageAcceptance::Accept {
                    // Its author writes faster than the gossip rate: used here, forwarded
                    // only once the rate allows and if no newer version comes first; with
                    // an allowance set, it costs the author (`via`) points, which become
                    // score only far past the rate (see `conduct`).
                    inc(&self.counters.gossip_over_rate);
                    self.conduct.own_version_past_rate(via, now);
                    return Relay::Later {
                        lane,
                        version,
                        verified: true,
                    };
                }
                Relay::Now(acceptance)
            }
            Err(reason) => {
                self.counters.reject(reason, &via, topic);
                Relay::Now(MessageAcceptance::Reject)
            }
        }
    }

    /// Withholds the validation result of a slice that came over its device's rate (see
    /// [`HeldSlices`]); an older one held for the same lane is dropped.
    fn hold(&mut self, lane: (DeviceId, StoreId), h: HeldRelay) {
        if self
            .held
            .lanes
            .get(&lane)
            .is_some_and(|old| old.version >= h.version)
        {
            // A relayed copy no newer than the one held: the held one stays.
            self.report(&h.id, &h.via, MessageAcceptance::Ignore);
            return;
        }
        self.drop_held(&lane);
        match self.held.has_room(h.unverified_bytes()) {
            true => self.held.insert(lane, h),
            false => self.report(&h.id, &h.via, MessageAcceptance::Ignore),
        }
    }

    /// Drops the slice held for `lane`, if any (gossipsub forgets it).
    fn drop_held(&mut self, lane: &(DeviceId, StoreId)) {
        if self.held.lanes.is_empty() {
            return;
        }
        if let Some(h) = self.held.remove(lane) {
            self.report(&h.id, &h.via, MessageAcceptance::Ignore);
        }
    }

    /// Forwards the held slices whose rate allows it now (checking relayed ones first),
    /// drops those a newer version overtook, and returns when the next of the others may
    /// go.
    fn release_held(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut done = Vec::new();
        for ((device, store), h) in &self.held.lanes {
            match self.gate.release(device, store, h.version, now) {
                Release::Now => done.push(((*device, store.clone()), true)),
                Release::Superseded => done.push(((*device, store.clone()), false)),
                Release::At(at) => next = Some(next.map_or(at, |n| n.min(at))),
            }
        }
        for (lane, due) in done {
            let Some(h) = self.held.remove(&lane) else {
                continue;
            };
            let acceptance = match (due, &h.unverified) {
                (false, _) => MessageAcceptance::Ignore,
                (true, None) => {
                    self.gate.passed(lane.0, &lane.1, h.version, true, now);
                    MessageAcceptance::Accept
                }
                // Its check now passes the gate, so a valid one is used and spends a
                // token as it is forwarded.
                (true, Some(m)) => match self.check_slice(h.via, m, lane.1.as_str(), now) {
                    Relay::Now(acceptance) => acceptance,
                    Relay::Later { .. } => MessageAcceptance::Ignore,
                },
            };
            self.report(&h.id, &h.via, acceptance);
        }
        next
    }

    fn report(&mut self, id: &MessageId, via: &PeerId, acceptance: MessageAcceptance) {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, via, acceptance);
    }

    /// `Accept` for a valid message in its canonical form. A re-encoded copy (its signed
    /// content valid, and already used: it shares the original's message id, so it may
    /// be the only copy this node gets) is not forwarded, and costs `via` peer score.
    fn accept_if_canonical(&self, via: PeerId, data: &[u8], context: &str) -> MessageAcceptance {
        if is_canonical(data) {
            return MessageAcceptance::Accept;
        }
        self.counters
            .reject(RejectReason::NonCanonical, &via, context);
        MessageAcceptance::Reject
    }

    /// Counts a message of a device not tracked that admission turned away.
    fn refused_device(&self, via: PeerId, verdict: Verdict) {
        inc(&self.counters.devices_refused);
        tracing::trace!(%via, ?verdict, "message of a new device ignored");
    }

    /// Verifies the slices of a sync answer and hands them to the engine.
    fn on_response(&mut self, peer: PeerId, id: RequestId, raw: Vec<Arc<[u8]>>) {
        let mut slices = Vec::new();
        let now = Instant::now();
        let via: DeviceId = peer.into();
        for bytes in raw.into_iter().take(crate::proto::MAX_WANTS) {
            inc(&self.counters.delivered);
            let admission = &mut self.admission;
            let mut admit = Verdict::Known;
            let checked = decode_slice_if(&bytes, self.max_slice, &mut self.keys, |d, _, _| {
                admit = admission.check(d, &via, now);
                admit.pass()
            });
            match checked {
                Ok(Some(v)) => {
                    self.admission.admitted(v.device, &via, now);
                    // Verified here: a gossiped copy of this version, or of an older one,
                    // is declined before its check (in a 128-node join wave a thousand a
                    // second arrived after their fetched copy, each verified in vain).
                    self.gate.passed(v.device, &v.store, v.version, false, now);
                    slices.push(v);
                }
                Ok(None) => self.refused_device(peer, admit),
                Err(reason) => self.counters.reject(reason, &peer, "sync response"),
            }
        }
        self.forward(Input::Response {
            peer: peer.into(),
            id,
            slices,
        });
    }

    fn on_sync(&mut self, ev: request_response::Event<SyncRequest, SyncResponse>) {
        if let request_response::Event::Message { peer, .. } = &ev {
            if blocked(&self.faults, peer) {
                return;
            }
        }
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => {
                if request.kind == "leave" {
                    let _ = self.swarm.behaviour_mut().sync.send_response(
                        channel,
                        SyncResponse {
                            v: PROTOCOL_VERSION,
                            ..SyncResponse::default()
                        },
                    );
                    // The stream is authenticated: `peer` is the device that is leaving.
                    self.forward(goodbye(peer.into(), request.incarnation));
                } else if !self.inbound_budget.admit(peer, request_id) {
                    // The peer has its most requests being answered: an empty answer now,
                    // before the engine does any work for it.
                    inc(&self.counters.sync_over_budget);
                    tracing::debug!(%peer, "sync request over the peer's budget; answered empty");
                    let _ = self.swarm.behaviour_mut().sync.send_response(
                        channel,
                        SyncResponse {
                            v: PROTOCOL_VERSION,
                            ..SyncResponse::default()
                        },
                    );
                } else if let Some(ask) = watch_wire::ask_of(&request) {
                    self.next_token += 1;
                    let token = self.next_token;
                    self.inbound.insert(token, (channel, request_id));
                    self.forward(Input::Asked {
                        peer: peer.into(),
                        token,
                        ask,
                    });
                } else {
                    self.next_token += 1;
                    let token = self.next_token;
                    self.inbound.insert(token, (channel, request_id));
                    let want = request
                        .want
                        .iter()
                        .take(crate::proto::MAX_WANTS)
                        .filter_map(|w| {
                            Some(Want {
                                store: StoreId::new(&w.store).ok()?,
                                device: match &w.device {
                                    None => None,
                                    Some(d) => Some(d.parse::<DeviceId>().ok()?),
                                },
                            })
                        })
                        .collect();
                    self.forward(Input::Request {
                        peer: peer.into(),
                        token,
                        want,
                    });
                }
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((id, _)) = self.outbound.remove(&request_id) {
                    self.close_if_settled(peer);
                    self.on_response(peer, id, response.slices);
                } else if let Some((id, kind, _)) = self.asks.remove(&request_id) {
                    self.close_if_settled(peer);
                    let (reply, rejected, refused) = watch_wire::reply_of(
                        kind,
                        response,
                        &mut self.keys,
                        &mut self.presences,
                        &mut self.admission,
                        peer.into(),
                    );
                    for _ in 0..refused {
                        self.refused_device(peer, Verdict::OverRate);
                    }
                    for reason in rejected {
                        self.counters.reject(reason, &peer, "members answer");
                    }
                    self.forward(Input::Replied {
                        peer: peer.into(),
                        id,
                        reply,
                    });
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "sync request failed");
                let id = self
                    .outbound
                    .remove(&request_id)
                    .map(|(id, _)| id)
                    .or_else(|| self.asks.remove(&request_id).map(|(id, _, _)| id));
                if let Some(id) = id {
                    self.close_if_settled(peer);
                    self.forward(Input::RequestFailed {
                        peer: peer.into(),
                        id,
                    });
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
                self.inbound_budget.release(request_id);
                self.close_if_settled(peer);
            }
            request_response::Event::ResponseSent {
                peer, request_id, ..
            } => {
                self.inbound_budget.release(request_id);
                self.close_if_settled(peer);
            }
        }
    }
}

/// Feeds libp2p's own metrics (connections, gossipsub, identify, ping), when some registry
/// asked for them (see [`crate::MeshNode::register_metrics`]).
fn record_libp2p_metrics(counters: &Counters, event: &SwarmEvent<BehaviourEvent>) {
    use libp2p::metrics::Recorder;
    let recorders = counters
        .prom
        .libp2p
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for m in recorders.iter() {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
            _ => {}
        }
        m.record(event);
    }
}

/// The store a topic names, if it is a store topic.
fn store_of_topic(topic: &str) -> Option<StoreId> {
    StoreId::new(topic.strip_prefix(STORE_TOPIC_PREFIX)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dial_whose_host_accepts_but_never_handshakes_is_reported_as_reached() {
        // A host whose kernel accepts the TCP connection and whose process never answers
        // (the listener below accepts and holds the socket, silent).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let cfg = Config::default();
        let counters = Arc::new(Counters::default());
        let conduct = PeerConduct::new(
            cfg.peer_message_rate,
            cfg.own_versions_allowance,
            counters.clone(),
            Instant::now(),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut swarm = build_swarm(
            Keypair::generate_ed25519(),
            &cfg,
            Topics::new(cfg.max_unjoined_topics),
            counters,
            conduct,
            tx,
        )
        .unwrap();
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        swarm
            .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build())
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                tokio::select! {
                    _ = swarm.select_next_some() => {}
                    p = rx.recv() => break p,
                }
            }
        })
        .await
        .expect("no dial reported as reached");
        assert_eq!(got, Some(peer));
        held.abort();
    }

    #[tokio::test]
    async fn a_connection_gets_tcp_keepalive_and_the_link_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        watch_link(&stream);
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            crate::proto::KEEPALIVE_IDLE
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            crate::proto::KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().unwrap(),
            crate::proto::KEEPALIVE_PROBES
        );
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(crate::proto::LINK_TIMEOUT)
        );
    }
}

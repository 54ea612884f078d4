//! The task that owns and continuously polls the libp2p `Swarm`.
//!
//! It does transport work only: subscribe, publish (coalesced per store), first-line
//! validation of gossip messages, direct requests. Protocol decisions are the gossip
//! actor's; the two talk through an unbounded command channel (local, bounded by the actor's
//! own behaviour) and actor messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::Either;
use futures::StreamExt;
use libp2p::core::upgrade::Version as UpgradeVersion;
use libp2p::core::Transport as _;
use libp2p::gossipsub::{
    self, AllowAllSubscriptionFilter, IdentTopic, IdentityTransform, MaxCountSubscriptionFilter,
    MessageAcceptance, MessageAuthenticity, MessageId, PeerScoreParams, PeerScoreThresholds,
    TopicScoreParams, ValidationMode,
};
use libp2p::identity::Keypair;
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot};

use super::{GossipMsg, NetEvent};
use crate::error::Error;
use crate::faults::{blocked, drop_inbound, FaultHandle};
use crate::ids::{StoreId, Version};
use crate::metrics::{inc, Counters};
use crate::config::Config;
use crate::store::Outbox;
use crate::wire::{
    decode_presence_msg, decode_slice, encode_slice_as, store_topic, KeyCache, Leave, PresenceMsg,
    SyncCodec, SyncRequest, SyncResponse, Want, MAX_PRESENCE_BYTES, PRESENCE_TOPIC,
    PROTOCOL_VERSION, STORE_TOPIC_PREFIX, SYNC_PROTOCOL,
};

type Gossipsub =
    gossipsub::Behaviour<IdentityTransform, MaxCountSubscriptionFilter<AllowAllSubscriptionFilter>>;

/// Most topics a remote peer may subscribe to before gossipsub ignores its subscriptions.
/// (gossipsub's default filter caps this at 100 and rejects the whole list past it.)
const MAX_REMOTE_TOPICS: usize = 10_000;
/// Extra room in the transmit limit for the envelope around a maximal slice.
const ENVELOPE_OVERHEAD: usize = 64 * 1024;
/// How often bootstrap peers are re-dialled while not connected.
const REDIAL_EVERY: Duration = Duration::from_secs(1);
/// Most peers asked, one after the other, for a slice that the first one asked lacked.
const FETCH_TRIES: usize = 4;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
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
fn score_params() -> PeerScoreParams {
    PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        ..PeerScoreParams::default()
    }
}

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

/// The gossipsub message id: the first 20 bytes of SHA-256 over the topic, a zero byte and
/// the data (documented in the book's wire chapter; other implementations must match it).
///
/// Messages are anonymous at the gossipsub layer (no source, sequence number or gossipsub
/// signature): each carries its owner's signature inside, which makes it valid whoever
/// relays it. So the id depends on the content only, and gossipsub drops every further
/// copy of a message before anything checks a signature.
fn message_id(m: &gossipsub::Message) -> MessageId {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(m.topic.as_str().as_bytes());
    h.update([0u8]);
    h.update(&m.data);
    MessageId::from(&h.finalize()[..20])
}

pub(crate) fn build_swarm(key: Keypair, cfg: &Config) -> Result<Swarm<Behaviour>, Error> {
    let max_msg = max_transmit_size(cfg);
    let heartbeat = cfg.gossip_heartbeat;
    let mdns_on = cfg.mdns;
    let max_response = cfg.max_response_bytes;
    let psk = cfg.psk;
    let connect_timeout = cfg.connect_timeout;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                // TCP, then (with a pre-shared key) the pnet handshake, then noise and yamux.
                let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
                let private = tcp.and_then(move |socket, _| async move {
                    match psk {
                        Some(psk) => PnetConfig::new(psk)
                            .handshake(socket)
                            .await
                            .map(Either::Left)
                            .map_err(std::io::Error::other),
                        None => Ok(Either::Right(socket)),
                    }
                });
                Ok(private
                    .upgrade(UpgradeVersion::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .timeout(connect_timeout))
            },
        )
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let gs_config = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Anonymous)
                .validate_messages()
                .heartbeat_interval(heartbeat)
                .max_transmit_size(max_msg)
                .max_control_message_size(max_msg)
                .message_id_fn(message_id)
                .build()
                .map_err(|e| e.to_string())?;
            let filter = MaxCountSubscriptionFilter {
                filter: AllowAllSubscriptionFilter {},
                max_subscribed_topics: MAX_REMOTE_TOPICS,
                max_subscriptions_per_request: MAX_REMOTE_TOPICS,
            };
            let mut gossipsub = Gossipsub::new_with_subscription_filter(
                MessageAuthenticity::Anonymous,
                gs_config,
                filter,
            )?;
            gossipsub.with_peer_score(score_params(), PeerScoreThresholds::default())?;
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
            let ping = ping::Behaviour::default();
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
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

/// A slice waiting in the swarm task to be published (newest per store wins), with the
/// local version and its store's outbox, to report it flushed once published (none for
/// raw test publishes).
type Pub = (Arc<[u8]>, Option<(Version, Outbox)>);

/// Commands from the gossip actor.
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
    PublishPresence(Vec<u8>),
    Fetch {
        peer: PeerId,
        want: Vec<Want>,
    },
    Respond {
        channel: ResponseChannel<SyncResponse>,
        response: SyncResponse,
    },
    Leave {
        payload: Vec<u8>,
        incarnation: u64,
        done: oneshot::Sender<()>,
    },
}

/// A fetch in flight: what it asked for, and whom we asked so far.
pub(crate) struct PendingFetch {
    want: Vec<Want>,
    tried: Vec<PeerId>,
}

struct PendingLeave {
    waiting: HashSet<OutboundRequestId>,
    done: oneshot::Sender<()>,
    deadline: tokio::time::Instant,
}

pub(crate) struct SwarmTask {
    pub swarm: Swarm<Behaviour>,
    pub cmds: mpsc::UnboundedReceiver<SwarmCmd>,
    pub actor: ActorRef<GossipMsg>,
    pub counters: Arc<Counters>,
    pub bootstrap: Vec<Multiaddr>,
    pub listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    /// Largest slice data accepted.
    pub max_slice: usize,
    pub leave_timeout: Duration,
    pub faults: FaultHandle,
    /// Fingerprint of the pre-shared key, when the mesh is private.
    pub psk_fingerprint: Option<String>,
    pub last_handshake_warning: Option<std::time::Instant>,
    /// Own slices whose last publish found no subscribed peer.
    pub unpublished: HashMap<StoreId, Arc<[u8]>>,
    /// Peers disconnected on purpose, to dial again at the next redial tick.
    pub reconnect: HashSet<PeerId>,
    /// Keys of the devices whose signatures this task checks.
    pub keys: KeyCache,
    /// Fetches of single slices in flight, by request.
    pub fetches: HashMap<OutboundRequestId, PendingFetch>,
    /// Signs this node's slices as they are published.
    pub key: Keypair,
    /// This device's id in text (base58) form, as slices carry it.
    pub me_text: String,
    /// Each joined store's outbox.
    pub outboxes: HashMap<StoreId, Outbox>,
    /// Set by `Leave`: local slices are no longer published.
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
        let mut leave: Option<PendingLeave> = None;
        let mut redial = tokio::time::interval(REDIAL_EVERY);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let leave_deadline = leave.as_ref().map(|l| l.deadline);
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event, &mut leave),
                cmd = self.cmds.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.on_cmd(cmd, &mut pending, &mut leave);
                    // Drain what is already queued, then publish each store's newest slice
                    // once: last write wins, so older pending versions need not go out.
                    while let Ok(cmd) = self.cmds.try_recv() {
                        self.on_cmd(cmd, &mut pending, &mut leave);
                    }
                    for (store, (raw, flushed)) in pending.drain() {
                        self.publish(&store, &raw);
                        if let Some((version, outbox)) = flushed {
                            outbox.mark_flushed(version);
                        }
                    }
                    if self.stopping {
                        break;
                    }
                }
                _ = redial.tick() => self.redial(),
                _ = async { tokio::time::sleep_until(leave_deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if leave_deadline.is_some() => {
                    if let Some(l) = leave.take() {
                        tracing::warn!(unanswered = l.waiting.len(), "leave not acknowledged by every peer before the deadline");
                        let _ = l.done.send(());
                    }
                }
            }
        }
        tracing::debug!("swarm task stopped");
    }

    /// Re-dials bootstrap peers we are not connected to (after a restart, a partition, a
    /// network change). Addresses with `/p2p/<id>` are re-dialled whenever that peer is not
    /// connected and not being dialled; bare addresses only while we have no connection.
    fn redial(&mut self) {
        for peer in std::mem::take(&mut self.reconnect) {
            if !self.swarm.is_connected(&peer) {
                let _ = self.swarm.dial(
                    DialOpts::peer_id(peer)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build(),
                );
            }
        }
        let none_connected = self.swarm.connected_peers().next().is_none();
        for addr in self.bootstrap.clone() {
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            let result = match peer {
                Some(peer) if !self.swarm.is_connected(&peer) => self.swarm.dial(
                    DialOpts::peer_id(peer)
                        .addresses(vec![addr.clone()])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build(),
                ),
                None if none_connected => self.swarm.dial(addr.clone()),
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::trace!(%addr, error = %e, "redial not started");
            }
        }
    }

    fn publish(&mut self, store: &StoreId, raw: &Arc<[u8]>) {
        let topic = IdentTopic::new(store_topic(store));
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, raw.to_vec())
        {
            Ok(_) => {
                inc(&self.counters.published);
                self.unpublished.remove(store);
            }
            // Nobody has joined yet: publish again as soon as someone does, so the slice
            // spreads through the mesh, not only to the neighbours that fetch it.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                tracing::trace!(%store, "no peers subscribed yet");
                self.unpublished.insert(store.clone(), raw.clone());
            }
            Err(e) => tracing::warn!(%store, error = %e, "publish failed; anti-entropy will retry"),
        }
    }

    fn on_cmd(
        &mut self,
        cmd: SwarmCmd,
        pending: &mut HashMap<StoreId, Pub>,
        leave: &mut Option<PendingLeave>,
    ) {
        match cmd {
            SwarmCmd::Subscribe { store, outbox } => {
                self.outboxes.insert(store.clone(), outbox);
                let topic = IdentTopic::new(store_topic(&store));
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                let _ = gs.set_topic_params(topic.clone(), topic_score_params());
                if let Err(e) = gs.subscribe(&topic) {
                    tracing::error!(%store, error = %e, "cannot subscribe to store topic");
                }
                // Peers that joined this store before we did announced it already: their
                // `Subscribed` events are behind us, so exchange slices with them now.
                let hash = topic.hash();
                let already: Vec<PeerId> = gs
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .map(|(p, _)| *p)
                    .collect();
                for peer in already {
                    if !drop_inbound(&self.faults, &[peer]) {
                        self.forward(NetEvent::Subscribed {
                            peer,
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
            SwarmCmd::PublishPresence(bytes) => {
                let topic = IdentTopic::new(PRESENCE_TOPIC);
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    if !matches!(e, gossipsub::PublishError::NoPeersSubscribedToTopic) {
                        tracing::debug!(error = %e, "presence publish failed");
                    }
                }
            }
            SwarmCmd::Fetch { peer, want } => self.fetch(peer, want, Vec::new()),
            SwarmCmd::Respond { channel, response } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response);
            }
            SwarmCmd::Leave {
                payload,
                incarnation,
                done,
            } => {
                self.leaving = true;
                let topic = IdentTopic::new(PRESENCE_TOPIC);
                if !payload.is_empty() {
                    let _ = self.swarm.behaviour_mut().gossipsub.publish(topic, payload);
                }
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                let mut waiting = HashSet::new();
                for peer in peers {
                    let req = SyncRequest {
                        v: PROTOCOL_VERSION,
                        kind: "leave".into(),
                        want: Vec::new(),
                        incarnation,
                    };
                    waiting.insert(self.swarm.behaviour_mut().sync.send_request(&peer, req));
                }
                if waiting.is_empty() {
                    let _ = done.send(());
                } else {
                    *leave = Some(PendingLeave {
                        waiting,
                        done,
                        deadline: tokio::time::Instant::now() + self.leave_timeout,
                    });
                }
            }
        }
    }

    /// Takes the store's newest local slice out of its outbox, encodes and signs it, and
    /// tells the gossip actor (for digests and answers). `None` when there is nothing to
    /// publish, or the node is leaving.
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
        if self
            .actor
            .cast(GossipMsg::Published {
                store: store.clone(),
                version: p.version,
                raw: raw.clone(),
            })
            .is_err()
        {
            tracing::debug!("gossip actor gone; local slice not recorded");
        }
        Some((raw, Some((p.version, outbox))))
    }

    /// Asks `peer` for `want`. Wants for one device's slice are remembered, so that the
    /// ones `peer` cannot answer are asked of another neighbour at once (see
    /// [`Self::fetch_elsewhere`]) rather than at the next presence round.
    fn fetch(&mut self, peer: PeerId, want: Vec<Want>, mut tried: Vec<PeerId>) {
        let single: Vec<Want> = want
            .iter()
            .filter(|w| w.device.is_some())
            .cloned()
            .collect();
        let req = SyncRequest {
            v: PROTOCOL_VERSION,
            kind: "fetch".into(),
            want,
            incarnation: 0,
        };
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, req);
        if !single.is_empty() {
            tried.push(peer);
            self.fetches.insert(
                id,
                PendingFetch {
                    want: single,
                    tried,
                },
            );
        }
    }

    /// The peer asked in `fetch` could not give some of what we wanted (it lacks them, or
    /// the request failed): ask another connected peer that joined the store, up to
    /// [`FETCH_TRIES`] peers in all. A relaying peer need not hold the slice whose
    /// presence it relayed; a neighbour that does is usually one request away.
    fn fetch_elsewhere(&mut self, fetch: PendingFetch, answered: &[(String, String)]) {
        let missing: Vec<Want> = fetch
            .want
            .into_iter()
            .filter(|w| {
                !answered
                    .iter()
                    .any(|(s, d)| *s == w.store && Some(d) == w.device.as_ref())
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        if fetch.tried.len() >= FETCH_TRIES {
            self.forward(NetEvent::FetchMissed { want: missing });
            return;
        }
        // Per store: the next peer must have joined that store.
        let mut by_store: HashMap<String, Vec<Want>> = HashMap::new();
        for w in missing {
            by_store.entry(w.store.clone()).or_default().push(w);
        }
        for (store, want) in by_store {
            let topic = IdentTopic::new(format!("{STORE_TOPIC_PREFIX}{store}")).hash();
            let next = self
                .swarm
                .behaviour()
                .gossipsub
                .all_peers()
                .filter(|(p, topics)| topics.contains(&&topic) && !fetch.tried.contains(p))
                .map(|(p, _)| *p)
                .next();
            match next {
                Some(peer) => {
                    tracing::debug!(%peer, %store, wants = want.len(), "asking another neighbour for slices");
                    self.fetch(peer, want, fetch.tried.clone());
                }
                // Nobody near has it yet: the gossip actor asks again at the next presence.
                None => self.forward(NetEvent::FetchMissed { want }),
            }
        }
    }

    fn leave_answered(&mut self, id: &OutboundRequestId, leave: &mut Option<PendingLeave>) -> bool {
        let Some(l) = leave.as_mut() else {
            return false;
        };
        if !l.waiting.remove(id) {
            return false;
        }
        if l.waiting.is_empty() {
            if let Some(l) = leave.take() {
                let _ = l.done.send(());
            }
        }
        true
    }

    fn forward(&self, ev: NetEvent) {
        if self.actor.cast(GossipMsg::Net(ev)).is_err() {
            tracing::debug!("gossip actor gone; dropping network event");
        }
    }

    fn on_swarm_event(
        &mut self,
        event: SwarmEvent<BehaviourEvent>,
        leave: &mut Option<PendingLeave>,
    ) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => self.on_gossip(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => self.on_sync(ev, leave),
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
                    if !self.swarm.is_connected(&peer) {
                        tracing::debug!(%peer, %addr, "mdns discovered a peer; dialling");
                        let _ = self
                            .swarm
                            .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let mut addrs = self.listen_addrs.lock().unwrap_or_else(|p| p.into_inner());
                if !addrs.contains(&address) {
                    addrs.push(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let mut addrs = self.listen_addrs.lock().unwrap_or_else(|p| p.into_inner());
                addrs.retain(|a| a != &address);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                tracing::debug!(peer = %peer_id, "connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                // Not a liveness signal on its own: presence timeouts decide removals.
                tracing::debug!(peer = %peer_id, "last connection closed");
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } => {
                // One connection to the peer closed while another stays: typically a device
                // that restarted with the same identity, whose old connection goes down after
                // the new one came up. gossipsub 0.50 keeps the old connection's send queue
                // for the peer then, and gossip to and from it stalls until every connection
                // is gone (rust-libp2p #5097). So drop them all and connect afresh.
                tracing::debug!(peer = %peer_id, "a connection closed while another stays; reconnecting afresh");
                let _ = self.swarm.disconnect_peer_id(peer_id);
                self.reconnect.insert(peer_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                inc(&self.counters.connection_failures);
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
                    &error.to_string(),
                );
            }
            _ => {}
        }
    }

    /// A connection that fails its handshake is the only sign of a key mismatch (libp2p
    /// reports no specific error): say so plainly, at most every few seconds.
    fn connection_failed(&mut self, what: &str, error: &str) {
        let refused = error.contains("Connection refused") || error.contains("os error 111");
        if refused {
            tracing::debug!(what, error, "connection failed");
            return;
        }
        let now = std::time::Instant::now();
        if self
            .last_handshake_warning
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(5))
        {
            tracing::debug!(what, error, "connection failed");
            return;
        }
        self.last_handshake_warning = Some(now);
        match &self.psk_fingerprint {
            Some(fp) => tracing::warn!(
                what,
                error,
                psk_fingerprint = %fp,
                "connection failed during the handshake: this mesh is private; the other node must use the same pre-shared key (compare fingerprints)"
            ),
            None => tracing::warn!(
                what,
                error,
                "connection failed: if the other node uses a pre-shared key (private mesh), this node needs the same key"
            ),
        }
    }

    fn on_gossip(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let acceptance = self.check_gossip(propagation_source, &message);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            gossipsub::Event::Subscribed { peer_id, topic }
                if !drop_inbound(&self.faults, &[peer_id]) =>
            {
                if let Some(store) = topic.as_str().strip_prefix(STORE_TOPIC_PREFIX) {
                    if let Ok(store) = StoreId::new(store) {
                        if let Some(raw) = self.unpublished.get(&store).cloned() {
                            self.publish(&store, &raw);
                        }
                        self.forward(NetEvent::Subscribed {
                            peer: peer_id,
                            store,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// Checks one gossip message (gossipsub has already dropped copies of messages seen
    /// before): decode, bounds, the signature of the device it names. Valid messages go to
    /// the gossip actor and on through gossipsub; invalid ones count against `via`.
    fn check_gossip(&mut self, via: PeerId, message: &gossipsub::Message) -> MessageAcceptance {
        let topic = message.topic.as_str();
        if topic == PRESENCE_TOPIC {
            return match decode_presence_msg(&message.data, MAX_PRESENCE_BYTES, &mut self.keys) {
                Ok((device, _)) if drop_inbound(&self.faults, &[via, device]) => {
                    MessageAcceptance::Ignore
                }
                Ok((_, msg)) => {
                    self.forward(NetEvent::Presence { via, msg });
                    MessageAcceptance::Accept
                }
                Err(reason) => {
                    self.counters.reject(reason, &via, "presence topic");
                    MessageAcceptance::Reject
                }
            };
        }
        let Some(topic_store) = topic.strip_prefix(STORE_TOPIC_PREFIX) else {
            return MessageAcceptance::Ignore;
        };
        inc(&self.counters.delivered);
        match decode_slice(&message.data, self.max_slice, &mut self.keys) {
            Ok(slice) if slice.store.as_str() != topic_store => {
                self.counters
                    .reject(crate::wire::RejectReason::WrongStore, &via, topic);
                MessageAcceptance::Reject
            }
            Ok(slice) if drop_inbound(&self.faults, &[via, slice.device.peer_id()]) => {
                MessageAcceptance::Ignore
            }
            Ok(slice) => {
                self.forward(NetEvent::Slice { slice });
                MessageAcceptance::Accept
            }
            Err(reason) => {
                self.counters.reject(reason, &via, topic);
                MessageAcceptance::Reject
            }
        }
    }

    fn on_sync(
        &mut self,
        ev: request_response::Event<SyncRequest, SyncResponse>,
        leave: &mut Option<PendingLeave>,
    ) {
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
                        request, channel, ..
                    },
                ..
            } => {
                if request.kind == "leave" {
                    let _ = self.swarm.behaviour_mut().sync.send_response(
                        channel,
                        SyncResponse {
                            v: PROTOCOL_VERSION,
                            slices: Vec::new(),
                        },
                    );
                    // The stream is authenticated: `peer` is the device that is leaving.
                    self.forward(NetEvent::Presence {
                        via: peer,
                        msg: PresenceMsg::Leave(Leave {
                            device: peer.to_string(),
                            incarnation: request.incarnation,
                        }),
                    });
                } else {
                    self.forward(NetEvent::Request {
                        peer,
                        request,
                        channel,
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
            } if !self.leave_answered(&request_id, leave) => {
                if let Some(fetch) = self.fetches.remove(&request_id) {
                    let answered: Vec<(String, String)> = response
                        .slices
                        .iter()
                        .filter_map(|raw| crate::wire::peek_slice_owner(raw))
                        .collect();
                    self.fetch_elsewhere(fetch, &answered);
                }
                self.forward(NetEvent::Response { peer, response });
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } if !self.leave_answered(&request_id, leave) => {
                tracing::debug!(%peer, %error, "sync request failed");
                if let Some(fetch) = self.fetches.remove(&request_id) {
                    self.fetch_elsewhere(fetch, &[]);
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            _ => {}
        }
    }
}

//! What a running node knows, for people: its peers (name, incarnation, addresses,
//! connections, last heard, round-trip time, membership state), the stores it joined with
//! the versions it holds, and a stream of node-level events.
//!
//! Nothing here decides anything. The gossip actor shows the [`Observatory`] every input
//! it hands the protocol core and every output the core returns; the swarm task adds what
//! only it sees (round-trip times, names in presence messages); store actors add slice
//! changes. Readers ([`crate::MeshNode::peers`], the admin endpoint) take a short lock
//! and copy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::gossip::conduct::Traffic;
use crate::ids::{DeviceId, Incarnation, StoreId, Version};
use crate::lazy_broadcast::LazySender;
use crate::proto::{Input, Liveness, Output, Report, Timer};
use crate::store::RemovalReason;

/// Most peer records kept; past it, the longest-gone offline peers are forgotten first.
const MAX_PEER_RECORDS: usize = 4096;
/// Offline peers are forgotten after this long (they are gone from every store already).
const FORGET_OFFLINE_AFTER: Duration = Duration::from_secs(600);
/// Node events a subscriber may fall behind before it is told it lagged.
const EVENT_BUFFER: usize = 1024;
/// Longest name kept from a peer's presence message, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// Where a peer stands in this node's membership view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PeerState {
    /// Connected, but it has not announced itself (no presence, no slice) yet.
    Connecting,
    /// Live: it spoke within half the presence timeout.
    Online,
    /// Still live, but silent for more than half the presence timeout: it is removed at
    /// the timeout unless it speaks again. (A view of this node's own evidence only.)
    Suspected,
    /// Removed: it timed out or restarted without this store; see `removal`.
    Offline,
    /// It left gracefully (signed leave).
    Left,
}

/// One remote device as this node sees it (see [`crate::MeshNode::peers`]).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The device (its libp2p peer id).
    pub device_id: DeviceId,
    /// The name it announces (its builder's `.name(..)`), if it set one.
    pub name: Option<String>,
    /// Its current run (0 until heard from).
    pub incarnation: Incarnation,
    /// The listen addresses it announces.
    pub addresses: Vec<String>,
    /// Whether this node has an open connection to it.
    pub connected: bool,
    /// Open connections to it.
    pub connections: u32,
    /// When this node last had evidence of life from it (a fresh presence or a new
    /// slice), in milliseconds since the Unix epoch.
    pub last_heard_ms: Option<u64>,
    /// How long ago that was, in milliseconds.
    pub silent_for_ms: Option<u64>,
    /// The last ping round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Its membership state here.
    pub state: PeerState,
    /// Why it was last removed, if it was.
    pub removal: Option<&'static str>,
    /// The version of its slice held here, per store.
    pub stores: BTreeMap<StoreId, Version>,
    /// The versions of its own slices it announced in its last presence message, per
    /// store (a rotating part of them past 256 stores). One newer than in `stores` is a
    /// slice this node has not received yet: anti-entropy fetches it.
    pub announced: BTreeMap<StoreId, Version>,
    /// Its gossipsub peer score here, while connected (updated every 500 ms). Below −80
    /// it is graylisted: everything it sends over gossip is ignored. See the book's
    /// Security chapter, "Peer scoring".
    pub score: Option<f64>,
    /// Gossip messages received from it over its current connections (every copy,
    /// duplicates included, until it is graylisted).
    pub inbound_messages: u64,
    /// The data bytes of those messages.
    pub inbound_bytes: u64,
    /// Gossip messages a second received from it, over the last 500 ms.
    pub inbound_messages_per_sec: f64,
    /// Data bytes a second received from it over gossip, over the last 500 ms.
    pub inbound_bytes_per_sec: f64,
    /// Its messages that cost it points: messages on topics this node has not joined,
    /// and, where set, its own slice versions past the allowance and messages past its
    /// inbound rate.
    pub charged: u64,
}

/// One slice held in a store (see [`StoreInfo`]).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SliceInfo {
    /// Its owner.
    pub device_id: DeviceId,
    /// Whether that is this node.
    pub local: bool,
    /// Its version.
    pub version: Version,
    /// The owner's write time, ms since the Unix epoch (the owner's clock).
    pub updated_at: u64,
}

/// A store this node joined, with the slices it holds (see [`crate::MeshNode::stores`]).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct StoreInfo {
    /// The store id.
    pub id: StoreId,
    /// Every slice held, this node's own first.
    pub slices: Vec<SliceInfo>,
}

/// Something that happened to the node's view of the mesh (see
/// [`crate::MeshNode::events`]). Serialised with an `event` tag, as the admin endpoint's
/// server-sent events carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeEvent {
    /// A device is live (first heard, or back after a removal).
    PeerOnline {
        /// The device.
        device_id: DeviceId,
    },
    /// A live device has been silent for more than half the presence timeout.
    PeerSuspected {
        /// The device.
        device_id: DeviceId,
        /// How long it has been silent, in milliseconds.
        silent_for_ms: u64,
    },
    /// A suspected device spoke again before the timeout.
    PeerRecovered {
        /// The device.
        device_id: DeviceId,
    },
    /// A device was removed: it left, timed out or restarted.
    PeerOffline {
        /// The device.
        device_id: DeviceId,
        /// `left`, `timeout` or `restarted`.
        reason: &'static str,
    },
    /// A device announced a new run (it restarted with the same identity).
    PeerRestarted {
        /// The device.
        device_id: DeviceId,
        /// Its new run.
        incarnation: Incarnation,
    },
    /// The first connection to a device opened.
    ConnectionUp {
        /// The device.
        device_id: DeviceId,
    },
    /// The last connection to a device closed.
    ConnectionDown {
        /// The device.
        device_id: DeviceId,
    },
    /// A store holds a new version of a device's slice (this node's own included).
    SliceUpdated {
        /// The store.
        store: StoreId,
        /// The slice's owner.
        device_id: DeviceId,
        /// The new version.
        version: Version,
    },
    /// A store dropped a device's slice.
    SliceRemoved {
        /// The store.
        store: StoreId,
        /// The slice's owner.
        device_id: DeviceId,
        /// `left`, `timeout` or `restarted`.
        reason: &'static str,
    },
    /// The subscriber fell behind and missed this many events (read the current state
    /// again with [`crate::MeshNode::peers`] / [`crate::MeshNode::stores`]).
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

impl NodeEvent {
    /// The store the event is about, for slice events.
    pub fn store(&self) -> Option<&StoreId> {
        match self {
            NodeEvent::SliceUpdated { store, .. } | NodeEvent::SliceRemoved { store, .. } => {
                Some(store)
            }
            _ => None,
        }
    }
}

/// A stream of [`NodeEvent`]s (see [`crate::MeshNode::events`]).
pub struct NodeEvents {
    rx: broadcast::Receiver<NodeEvent>,
}

impl std::fmt::Debug for NodeEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEvents").finish_non_exhaustive()
    }
}

impl NodeEvents {
    /// The next event; [`NodeEvent::Lagged`] if this subscriber fell behind, `None` once
    /// the node has stopped.
    pub async fn recv(&mut self) -> Option<NodeEvent> {
        match self.rx.recv().await {
            Ok(ev) => Some(ev),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(NodeEvent::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// A joined store's slices, read through its snapshot without knowing its type.
pub(crate) trait StoreView: Send + Sync {
    /// Every slice held, own first.
    fn slices(&self) -> Vec<SliceInfo>;
    /// Every slice held with its data as JSON (own first).
    fn slices_json(&self) -> Vec<(SliceInfo, serde_json::Value)>;
}

/// A store's snapshot channel (what [`crate::Store::snapshot`] reads), and whether the
/// node's own slice counts (not for an observer, which has none worth showing).
pub(crate) struct View<T> {
    pub rx: tokio::sync::watch::Receiver<Arc<crate::StoreSnapshot<T>>>,
    pub with_local: bool,
}

impl<T: serde::Serialize + Send + Sync + 'static> View<T> {
    fn each<R>(&self, mut f: impl FnMut(SliceInfo, &T) -> R) -> Vec<R> {
        let snap = self.rx.borrow().clone();
        snap.iter()
            .filter(|s| self.with_local || s.device_id != snap.local.device_id)
            .map(|s| {
                f(
                    SliceInfo {
                        device_id: s.device_id,
                        local: s.device_id == snap.local.device_id,
                        version: s.version,
                        updated_at: s.updated_at,
                    },
                    &s.data,
                )
            })
            .collect()
    }
}

impl<T: serde::Serialize + Send + Sync + 'static> StoreView for View<T> {
    fn slices(&self) -> Vec<SliceInfo> {
        self.each(|info, _| info)
    }

    fn slices_json(&self) -> Vec<(SliceInfo, serde_json::Value)> {
        self.each(|info, data| {
            let json = serde_json::to_value(data).unwrap_or_else(
                |e| serde_json::json!({ "error": format!("not representable as JSON: {e}") }),
            );
            (info, json)
        })
    }
}

#[derive(Debug)]
struct PeerRecord {
    name: Option<String>,
    incarnation: Incarnation,
    /// Highest `(incarnation, presence seq)` heard.
    presence: (Incarnation, u64),
    addresses: Vec<String>,
    connections: u32,
    last_heard: Option<(Instant, SystemTime)>,
    rtt: Option<Duration>,
    /// Whether the core considers it live.
    online: bool,
    suspected: bool,
    removal: Option<RemovalReason>,
    /// When it went offline (to forget it later).
    gone_at: Option<Instant>,
    stores: BTreeMap<StoreId, Version>,
    announced: BTreeMap<StoreId, Version>,
    score: Option<f64>,
    traffic: Traffic,
}

impl PeerRecord {
    fn new() -> Self {
        Self {
            name: None,
            incarnation: 0,
            presence: (0, 0),
            addresses: Vec::new(),
            connections: 0,
            last_heard: None,
            rtt: None,
            online: false,
            suspected: false,
            removal: None,
            gone_at: None,
            stores: BTreeMap::new(),
            announced: BTreeMap::new(),
            score: None,
            traffic: Traffic::default(),
        }
    }
}

#[derive(Default)]
struct Inner {
    peers: BTreeMap<DeviceId, PeerRecord>,
    /// Heartbeats liveness: a live peer silent this long counts as suspected. Watch
    /// liveness announces only on change, so there silence means nothing and a peer is
    /// suspected only while an accusation of it is open (`Report::Suspected`).
    suspect_after: Option<Duration>,
    /// This node: never a peer of itself.
    me: Option<DeviceId>,
}

/// The node's observations (see the [module docs](self)).
pub(crate) struct Observatory {
    inner: Mutex<Inner>,
    events: LazySender<NodeEvent>,
    stores: Mutex<BTreeMap<StoreId, Arc<dyn StoreView>>>,
    /// This node's name as it announces it (`None` when the builder set none).
    own_name: Mutex<Option<String>>,
}

impl std::fmt::Debug for Observatory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observatory").finish_non_exhaustive()
    }
}

impl Default for Observatory {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                peers: BTreeMap::new(),
                suspect_after: Some(Duration::from_millis(1250)),
                me: None,
            }),
            events: LazySender::new(EVENT_BUFFER),
            stores: Mutex::new(BTreeMap::new()),
            own_name: Mutex::new(None),
        }
    }
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Observatory {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, ev: NodeEvent) {
        // Costs nothing without subscribers; a full buffer makes the slowest lag.
        if self.events.receiver_count() > 0 {
            self.events.send(ev);
        }
    }

    /// Sets what the node announces and when a peer counts as suspected: with heartbeats,
    /// when silent for half the presence timeout; with watch, while it stands accused.
    pub fn configure(
        &self,
        me: DeviceId,
        own_name: Option<String>,
        presence_timeout: Duration,
        liveness: Liveness,
    ) {
        *self.own_name.lock().unwrap_or_else(|p| p.into_inner()) = own_name;
        let mut inner = self.inner();
        inner.suspect_after = match liveness {
            Liveness::Watch => None,
            _ => Some(presence_timeout / 2),
        };
        inner.me = Some(me);
    }

    /// Forgets the joined stores (the node stopped them).
    pub fn clear_stores(&self) {
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The name this node puts in its presence messages.
    pub fn own_name(&self) -> Option<String> {
        self.own_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Open event subscriptions (dashboards, `truffle watch`, [`crate::MeshNode::events`]).
    pub fn subscribers(&self) -> usize {
        self.events.receiver_count()
    }

    pub fn subscribe(&self) -> NodeEvents {
        NodeEvents {
            rx: self.events.subscribe(),
        }
    }

    pub fn add_store(&self, id: StoreId, view: Arc<dyn StoreView>) {
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, view);
    }

    pub fn store_count(&self) -> usize {
        self.stores.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn store_view(&self, id: &StoreId) -> Option<Arc<dyn StoreView>> {
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn stores(&self) -> Vec<StoreInfo> {
        let views: Vec<(StoreId, Arc<dyn StoreView>)> = self
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        views
            .into_iter()
            .map(|(id, v)| StoreInfo {
                id,
                slices: v.slices(),
            })
            .collect()
    }

    /// (peers known, peers connected, open connections).
    pub fn counts(&self) -> (usize, usize, u64) {
        let inner = self.inner();
        let connected = inner.peers.values().filter(|p| p.connections > 0).count();
        let conns = inner.peers.values().map(|p| u64::from(p.connections)).sum();
        (inner.peers.len(), connected, conns)
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        let inner = self.inner();
        let now = Instant::now();
        inner
            .peers
            .iter()
            .map(|(id, p)| {
                let silent = p.last_heard.map(|(t, _)| now.saturating_duration_since(t));
                let state = if p.online {
                    if p.suspected || silent.zip(inner.suspect_after).is_some_and(|(s, a)| s > a) {
                        PeerState::Suspected
                    } else {
                        PeerState::Online
                    }
                } else {
                    match p.removal {
                        Some(RemovalReason::Left) => PeerState::Left,
                        Some(_) => PeerState::Offline,
                        None if p.connections > 0 => PeerState::Connecting,
                        None => PeerState::Offline,
                    }
                };
                PeerInfo {
                    device_id: *id,
                    name: p.name.clone(),
                    incarnation: p.incarnation,
                    addresses: p.addresses.clone(),
                    connected: p.connections > 0,
                    connections: p.connections,
                    last_heard_ms: p.last_heard.map(|(_, wall)| ms_since_epoch(wall)),
                    silent_for_ms: silent.map(|s| s.as_millis() as u64),
                    rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    state,
                    removal: p.removal.map(RemovalReason::as_str),
                    stores: p.stores.clone(),
                    announced: p.announced.clone(),
                    score: p.score.filter(|_| p.connections > 0),
                    inbound_messages: p.traffic.messages,
                    inbound_bytes: p.traffic.bytes,
                    inbound_messages_per_sec: p.traffic.messages_per_sec,
                    inbound_bytes_per_sec: p.traffic.bytes_per_sec,
                    charged: p.traffic.charged,
                }
            })
            .collect()
    }

    /// Runs `f` on `device`'s record, creating it if there is room.
    fn with_peer<R>(&self, device: DeviceId, f: impl FnOnce(&mut PeerRecord) -> R) -> Option<R> {
        let mut inner = self.inner();
        if inner.me == Some(device) {
            return None;
        }
        if !inner.peers.contains_key(&device) {
            if inner.peers.len() >= MAX_PEER_RECORDS {
                let oldest = inner
                    .peers
                    .iter()
                    .filter(|(_, p)| !p.online && p.connections == 0)
                    .min_by_key(|(_, p)| p.gone_at.or(p.last_heard.map(|l| l.0)))
                    .map(|(id, _)| *id);
                match oldest {
                    Some(id) => {
                        inner.peers.remove(&id);
                    }
                    None => return None,
                }
            }
            inner.peers.insert(device, PeerRecord::new());
        }
        inner.peers.get_mut(&device).map(f)
    }

    /// A peer's name, as its signed presence announced it.
    pub fn heard_name(&self, device: DeviceId, name: Option<&str>) {
        if let Some(name) = name {
            self.with_peer(device, |p| {
                if p.name.as_deref() != Some(name) {
                    p.name = Some(name.to_string());
                }
            });
        }
    }

    /// A connected peer's gossipsub score and what it sent (the swarm task, every tick).
    /// Only peers with a record already: connected ones have one.
    pub fn conduct(&self, device: DeviceId, score: Option<f64>, traffic: Traffic) {
        let mut inner = self.inner();
        if let Some(p) = inner.peers.get_mut(&device) {
            p.score = score;
            p.traffic = traffic;
        }
    }

    /// A ping round trip to `device`.
    pub fn rtt(&self, device: DeviceId, rtt: Duration) {
        let mut inner = self.inner();
        if let Some(p) = inner.peers.get_mut(&device) {
            p.rtt = Some(rtt);
        }
    }

    fn heard(p: &mut PeerRecord, now: Instant) -> bool {
        p.last_heard = Some((now, SystemTime::now()));
        std::mem::replace(&mut p.suspected, false)
    }

    /// An input the gossip actor is about to hand the protocol core.
    pub fn on_input(&self, input: &Input, now: Instant) {
        match input {
            Input::Heartbeat { heartbeat, .. } => {
                let h = heartbeat.clone();
                let seen = self.with_peer(h.device, |p| {
                    let restarted = p.incarnation != 0 && h.incarnation > p.incarnation;
                    let mut recovered = false;
                    // Only a heartbeat newer than any before is evidence (the core's rule).
                    if (h.incarnation, h.seq) > p.presence {
                        p.presence = (h.incarnation, h.seq);
                        p.incarnation = h.incarnation;
                        p.addresses = h.addrs.clone();
                        if !h.partial {
                            p.announced.clear();
                        }
                        p.announced.extend(h.digest.iter().cloned());
                        recovered = Self::heard(p, now);
                    }
                    (restarted, recovered)
                });
                let (restarted, recovered) = seen.unwrap_or_default();
                if restarted {
                    self.emit(NodeEvent::PeerRestarted {
                        device_id: h.device,
                        incarnation: h.incarnation,
                    });
                }
                if recovered {
                    self.emit(NodeEvent::PeerRecovered {
                        device_id: h.device,
                    });
                }
            }
            Input::Connected { peer } => {
                let first = self.with_peer(*peer, |p| {
                    p.connections += 1;
                    p.connections == 1
                });
                if first == Some(true) {
                    self.emit(NodeEvent::ConnectionUp { device_id: *peer });
                }
            }
            Input::ConnectionClosed { peer, remaining } => {
                let last = self.with_peer(*peer, |p| {
                    let was = p.connections;
                    p.connections = *remaining;
                    // A peer that never spoke is forgotten like one that went offline.
                    if *remaining == 0 && !p.online && p.gone_at.is_none() {
                        p.gone_at = Some(now);
                    }
                    if *remaining == 0 {
                        // Traffic and score are those of its current connections.
                        p.traffic = Traffic::default();
                        p.score = None;
                    }
                    was > 0 && *remaining == 0
                });
                if last == Some(true) {
                    self.emit(NodeEvent::ConnectionDown { device_id: *peer });
                }
            }
            Input::Timer(Timer::Expire) => self.sweep(now),
            _ => {}
        }
    }

    /// An output of the protocol core, before the gossip actor carries it out.
    pub fn on_output(&self, output: &Output, now: Instant) {
        match output {
            Output::Report(Report::DeviceOnline { device }) => {
                let came_online = self.with_peer(*device, |p| {
                    p.removal = None;
                    p.gone_at = None;
                    Self::heard(p, now);
                    !std::mem::replace(&mut p.online, true)
                });
                if came_online == Some(true) {
                    self.emit(NodeEvent::PeerOnline { device_id: *device });
                }
            }
            Output::Report(Report::Suspected { device, .. }) => {
                let newly = self.with_peer(*device, |p| {
                    let silent = p.last_heard.map_or(0, |(t, _)| {
                        now.saturating_duration_since(t).as_millis() as u64
                    });
                    (p.online && !std::mem::replace(&mut p.suspected, true)).then_some(silent)
                });
                if let Some(silent_for_ms) = newly.flatten() {
                    self.emit(NodeEvent::PeerSuspected {
                        device_id: *device,
                        silent_for_ms,
                    });
                }
            }
            // A heartbeat that did not come as an input of its own (the answer to a
            // `members` request of anti-entropy) ended the suspicion.
            Output::Report(Report::Refuted { device, .. }) => {
                let recovered = self.with_peer(*device, |p| Self::heard(p, now));
                if recovered == Some(true) {
                    self.emit(NodeEvent::PeerRecovered { device_id: *device });
                }
            }
            Output::Report(Report::DeviceRemoved { device, reason, .. }) => {
                self.with_peer(*device, |p| {
                    p.online = false;
                    p.suspected = false;
                    p.removal = Some(*reason);
                    p.gone_at = Some(now);
                    p.stores.clear();
                });
                self.emit(NodeEvent::PeerOffline {
                    device_id: *device,
                    reason: reason.as_str(),
                });
            }
            Output::Deliver(slice) => {
                let seen = self.with_peer(slice.device, |p| {
                    match p.stores.get_mut(&slice.store) {
                        Some(v) => *v = slice.version,
                        None => {
                            p.stores.insert(slice.store.clone(), slice.version);
                        }
                    }
                    if slice.version.incarnation > p.incarnation {
                        p.incarnation = slice.version.incarnation;
                    }
                    // The core delivers only versions newer than any seen (or the held one
                    // again after the device spoke): evidence of life, and the core counts
                    // the device live from here, without a report.
                    let came_online = !std::mem::replace(&mut p.online, true);
                    if came_online {
                        p.removal = None;
                        p.gone_at = None;
                    }
                    (came_online, Self::heard(p, now))
                });
                let (came_online, recovered) = seen.unwrap_or_default();
                if came_online {
                    self.emit(NodeEvent::PeerOnline {
                        device_id: slice.device,
                    });
                } else if recovered {
                    self.emit(NodeEvent::PeerRecovered {
                        device_id: slice.device,
                    });
                }
            }
            Output::Remove { store, device, .. } => {
                let mut inner = self.inner();
                if let Some(p) = inner.peers.get_mut(device) {
                    p.stores.remove(store);
                }
            }
            _ => {}
        }
    }

    /// Marks silent live peers suspected (once each), and forgets long-gone ones.
    fn sweep(&self, now: Instant) {
        let mut suspected = Vec::new();
        {
            let mut inner = self.inner();
            // Only with heartbeats liveness does silence make a peer suspected.
            let after = inner.suspect_after.unwrap_or(Duration::MAX);
            for (id, p) in inner.peers.iter_mut() {
                if !p.online || p.suspected {
                    continue;
                }
                if let Some((t, _)) = p.last_heard {
                    let silent = now.saturating_duration_since(t);
                    if silent > after {
                        p.suspected = true;
                        suspected.push((*id, silent));
                    }
                }
            }
            inner.peers.retain(|_, p| {
                p.online
                    || p.connections > 0
                    || p.gone_at
                        .is_none_or(|g| now.saturating_duration_since(g) < FORGET_OFFLINE_AFTER)
            });
        }
        for (device_id, silent) in suspected {
            self.emit(NodeEvent::PeerSuspected {
                device_id,
                silent_for_ms: silent.as_millis() as u64,
            });
        }
    }

    /// A store changed a slice (called by store actors).
    pub fn slice_updated(&self, store: &StoreId, device: DeviceId, version: Version) {
        if self.events.receiver_count() > 0 {
            self.emit(NodeEvent::SliceUpdated {
                store: store.clone(),
                device_id: device,
                version,
            });
        }
    }

    /// A store dropped a slice (called by store actors).
    pub fn slice_removed(&self, store: &StoreId, device: DeviceId, reason: RemovalReason) {
        self.emit(NodeEvent::SliceRemoved {
            store: store.clone(),
            device_id: device,
            reason: reason.as_str(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Heartbeat;

    fn dev() -> DeviceId {
        DeviceId::from(libp2p::PeerId::random())
    }

    fn heartbeat(device: DeviceId, incarnation: u64, seq: u64) -> Input {
        Input::Heartbeat {
            via: device,
            heartbeat: Arc::new(Heartbeat {
                device,
                incarnation,
                seq,
                addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
                partial: false,
                digest: vec![],
            }),
        }
    }

    fn drain(rx: &mut NodeEvents) -> Vec<NodeEvent> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.rx.try_recv() {
            out.push(ev);
        }
        out
    }

    /// An observatory of `me` with one peer `d` heard (incarnation 5, heartbeat 1) and
    /// online at `t0`, under `liveness` with a 2 s presence timeout; its events from the
    /// start.
    fn one_peer_online(
        me: DeviceId,
        liveness: Liveness,
    ) -> (Observatory, NodeEvents, DeviceId, Instant) {
        let o = Observatory::default();
        o.configure(me, None, Duration::from_secs(2), liveness);
        let rx = o.subscribe();
        let (d, t0) = (dev(), Instant::now());
        o.on_input(&heartbeat(d, 5, 1), t0);
        o.on_output(&Output::Report(Report::DeviceOnline { device: d }), t0);
        (o, rx, d, t0)
    }

    #[test]
    fn with_watch_liveness_a_peer_is_suspected_while_accused_not_while_silent() {
        let (o, mut rx, d, t0) = one_peer_online(dev(), Liveness::Watch);
        drain(&mut rx);
        // Watch announces only on change: a minute of silence is no sign of trouble.
        o.on_input(&Input::Timer(Timer::Expire), t0 + Duration::from_secs(60));
        assert!(drain(&mut rx).is_empty());
        assert_eq!(o.peers()[0].state, PeerState::Online);
        // An accusation is (once, however many accusers).
        let accused = Output::Report(Report::Suspected {
            device: d,
            accuser: dev(),
        });
        o.on_output(&accused, t0 + Duration::from_secs(61));
        o.on_output(&accused, t0 + Duration::from_secs(61));
        assert_eq!(
            drain(&mut rx),
            vec![NodeEvent::PeerSuspected {
                device_id: d,
                silent_for_ms: 61_000
            }]
        );
        assert_eq!(o.peers()[0].state, PeerState::Suspected);
        // The refutation, a newer heartbeat, ends it.
        o.on_input(&heartbeat(d, 5, 2), t0 + Duration::from_secs(62));
        assert_eq!(
            drain(&mut rx),
            vec![NodeEvent::PeerRecovered { device_id: d }]
        );
        assert_eq!(o.peers()[0].state, PeerState::Online);
    }

    #[test]
    fn a_silent_peer_is_suspected_once_then_recovers_or_goes() {
        let me = dev();
        let (o, mut rx, d, t0) = one_peer_online(me, Liveness::Heartbeats);
        assert_eq!(o.peers()[0].incarnation, 5);
        assert_eq!(drain(&mut rx), vec![NodeEvent::PeerOnline { device_id: d }]);

        // Silent for more than half the timeout: suspected, once.
        o.on_input(
            &Input::Timer(Timer::Expire),
            t0 + Duration::from_millis(1100),
        );
        o.on_input(
            &Input::Timer(Timer::Expire),
            t0 + Duration::from_millis(1200),
        );
        assert_eq!(
            drain(&mut rx),
            vec![NodeEvent::PeerSuspected {
                device_id: d,
                silent_for_ms: 1100
            }]
        );
        assert_eq!(o.peers()[0].state, PeerState::Suspected);
        // A replayed heartbeat is no evidence; a new one is.
        o.on_input(&heartbeat(d, 5, 1), t0 + Duration::from_millis(1300));
        assert!(drain(&mut rx).is_empty());
        o.on_input(&heartbeat(d, 5, 2), t0 + Duration::from_millis(1300));
        assert_eq!(
            drain(&mut rx),
            vec![NodeEvent::PeerRecovered { device_id: d }]
        );

        // A new run of the same device.
        o.on_input(&heartbeat(d, 6, 1), t0 + Duration::from_millis(1400));
        assert_eq!(
            drain(&mut rx),
            vec![NodeEvent::PeerRestarted {
                device_id: d,
                incarnation: 6
            }]
        );
        o.on_output(
            &Output::Report(Report::DeviceRemoved {
                device: d,
                reason: RemovalReason::Timeout,
                stores: 0,
            }),
            t0 + Duration::from_secs(4),
        );
        let p = &o.peers()[0];
        assert_eq!((p.state, p.removal), (PeerState::Offline, Some("timeout")));
        // Forgotten ten minutes after it went.
        o.on_input(
            &Input::Timer(Timer::Expire),
            t0 + Duration::from_secs(4) + FORGET_OFFLINE_AFTER,
        );
        assert!(o.peers().is_empty());
        // This node is never its own peer.
        o.on_input(&Input::Connected { peer: me }, t0);
        assert!(o.peers().is_empty());
    }
}

//! N protocol engines on a virtual clock, joined by a modelled network.
//!
//! # The network model
//!
//! * **Links.** Every pair of nodes can reach each other unless a partition says
//!   otherwise: each node sits in a group, and a message crosses only between nodes of the
//!   same group whose link is not cut (`cut` holds arbitrary link sets). Each crossing takes
//!   the configured one-way latency, scaled by a random factor in [0.5, 1.5).
//! * **Loss** is the test hook's (`MeshNode::test_set_inbound_loss`): a node drops the
//!   configured fraction of the gossip messages it receives, after de-duplication — it
//!   neither handles nor forwards a dropped one. Requests and answers are not lost (they
//!   run on streams).
//! * **Connections** follow the engines' dials (bootstrap addresses, re-dials): a dial to a
//!   live, reachable node connects both ends after a round trip, and each end learns the
//!   other's topic subscriptions, as gossipsub's hello does. A crashed node's connections
//!   close at once at the other end (its kernel resets them); a partition closes nothing —
//!   messages across it are just lost, as on a real cable that was pulled.
//! * **Topics** (the presence topic and one per store) are modelled as gossipsub's mesh
//!   over the connections: a published message crosses every link from the publisher to
//!   its subscribed neighbours (flood publishing), and every other subscriber that gets it
//!   forwards it over its mesh links.
//!   Gossipsub's mesh is symmetric and keeps between `D_lo` and `D_hi` (6) peers per
//!   topic, so a link is in the mesh when either end has at most `D_hi` subscribed links
//!   (such a node keeps, and is grafted by, all of them), or when it is among the
//!   `mesh_degree` (D, 4) links either end picked. (A node picked by many keeps them all
//!   here, where gossipsub would prune its mesh back to `D_hi`: the simulated mesh is
//!   somewhat denser than the real one.) Links outside the mesh carry a
//!   message only through lazy gossip (IHAVE/IWANT): with the chance that the message id
//!   reaches that peer in the one heartbeat it is gossiped (3 random non-mesh peers per
//!   heartbeat), a heartbeat late. The first
//!   copy a node gets is handed to its engine; later copies are counted as received bytes
//!   and dropped (gossipsub's duplicate cache). Not modelled: gossip recovery of messages
//!   lost between mesh peers, mesh maintenance (GRAFT/PRUNE, backoff) and all control
//!   traffic (IHAVE, IWANT, IDONTWANT, subscriptions are not charged), peer scoring,
//!   rust-libp2p #5097, transport costs (TCP, noise, yamux framing), CPU time.
//! * **Requests** (fetches, leaves) go straight to the peer and back; one to a peer that is
//!   not connected fails after a round trip, one across a partition after the request
//!   timeout (10 s).
//!
//! Everything random (latency, loss, the engines' timer jitter) comes from generators
//! seeded from the run's seed, and every collection iterates in a fixed order, so a run
//! replays byte for byte.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use truffle_actors::proto::{
    Ask, DetMap, DigestReply, Engine, Heartbeat, Input, Output, ProtoConfig, Reply, Report, Slice,
    Suspicion, Timer, Token, Want,
};
use truffle_actors::wire::{heartbeat_wire_len, RejectReason};
use truffle_actors::{DeviceId, RemovalReason, StoreId, Version};

/// Time on the virtual clock, in microseconds since the start of the run.
pub type Micros = u64;

/// How the simulated nodes find each other at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Node `i` bootstraps to 3 distinct random earlier nodes (what `truffle-bench` does).
    Random3,
    /// Every node bootstraps to node 0 (the README's recipe).
    Star,
    /// Two halves, each built like [`Topology::Random3`] within itself, bridged by the
    /// last three nodes each bootstrapping to one of the last eight nodes of the first
    /// half as well: splitting the halves leaves each side connected.
    Halves,
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Mean one-way latency of a link.
    pub latency: Duration,
    /// Probability that one crossing of a link is lost.
    pub loss: f64,
    /// Bytes of slice data every node writes.
    pub slice_bytes: usize,
    /// Gossipsub mesh degree (how many links a node forwards a message on).
    pub mesh_degree: usize,
    /// Bootstrap graph.
    pub topology: Topology,
    /// The engines' settings.
    pub proto: ProtoConfig,
    /// Stores every node joins.
    pub stores: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 16,
            seed: 1,
            latency: Duration::from_millis(1),
            loss: 0.0,
            slice_bytes: 64,
            mesh_degree: 4,
            topology: Topology::Random3,
            // The protocol the simulator was first built to measure; `--liveness watch`
            // and the watch tests set watch.
            proto: ProtoConfig::default()
                .with_liveness(truffle_actors::proto::Liveness::Heartbeats),
            stores: 1,
        }
    }
}

/// Gossipsub's upper bound on mesh peers per topic, as Truffle configures it.
const D_HI: usize = 6;
/// Gossipsub's lazy-gossip fanout (IHAVE targets per heartbeat), as Truffle configures it.
const D_LAZY: usize = 3;
/// Heartbeats a message id stays in IHAVE gossip, as Truffle configures it.
const HISTORY_GOSSIP: i32 = 1;
/// Gossipsub's heartbeat as Truffle configures it (500 ms).
const GOSSIP_HEARTBEAT: Micros = 500_000;

/// Whether `node` picks its `index`th of `links` subscribed links for its mesh: `degree`
/// consecutive ones from an offset that depends on the node (see the module docs).
fn picks(node: usize, index: usize, links: usize, degree: usize) -> bool {
    (index + links - node % links.max(1)) % links < degree
}

/// Request timeout for a peer across a partition.
const REQUEST_TIMEOUT: Micros = 10_000_000;
/// A dial across a partition fails after this (TCP's connect timeout is longer; the
/// engines stop waiting sooner).
const DIAL_TIMEOUT: Micros = 5_000_000;

fn us(d: Duration) -> Micros {
    d.as_micros() as Micros
}

/// Traffic of one node.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    /// Messages sent (every copy on every link).
    pub sent_msgs: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Messages received (duplicates included).
    pub recv_msgs: u64,
    /// Bytes received.
    pub recv_bytes: u64,
    /// Distinct messages handed to the engine (gossip first copies, requests, answers).
    pub delivered: u64,
    /// Distinct gossip messages handed to the engine (what a node's `presence_received`
    /// and gossip `delivered` counters count).
    pub gossip: u64,
}

struct Node {
    id: DeviceId,
    engine: Option<Engine>,
    /// Bumped at every crash and restart, so timers and messages of an earlier run are
    /// dropped.
    generation: u32,
    incarnation: u64,
    group: u32,
    topics: BTreeSet<Topic>,
    conns: BTreeSet<usize>,
    bootstrap: Vec<usize>,
    traffic: Traffic,
}

/// A gossip topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Topic {
    Presence,
    Store(u32),
}

/// What a request stream carries.
enum Request {
    Fetch(Vec<Want>),
    Goodbye(u64),
    Ask(Ask),
}

/// What a gossip message carries.
#[derive(Clone, Debug)]
enum Gossip {
    Heartbeat(Arc<Heartbeat>),
    Goodbye(Box<(DeviceId, u64)>),
    Slice(Arc<Slice>),
    Suspect(Box<(DeviceId, Suspicion)>),
}

/// An event on the queue, ordered by time, then by when it was scheduled.
struct Queued {
    at: Micros,
    seq: u64,
    ev: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

// Millions are queued while a large mesh forms: kept to a few words (see `Event::Input`).
const _: () = assert!(std::mem::size_of::<Event>() <= 48);

enum Event {
    Timer(usize, u32, Timer),
    /// Boxed, like the rarer gossip kinds, so that an event (the simulator keeps millions
    /// of them queued while a large mesh forms) stays a few words.
    Input(usize, u32, Box<Input>),
    Gossip(usize, u32, usize, Gossip),
    Connect(usize, usize),
    /// A ping from the first node to the second is due to have failed if their link is
    /// still cut.
    PingCheck(usize, u32, usize),
    /// The node finished its graceful leave: it stops.
    Stop(usize, u32),
    Action(usize),
}

/// Something the scenario observes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// `node` removed `device` for `reason`.
    Removed {
        /// Time.
        at: Micros,
        /// The observer.
        node: usize,
        /// The device removed.
        device: usize,
        /// Why.
        reason: RemovalReason,
        /// Whether the device was up and its link to the observer up at that moment (a
        /// timeout removal of such a device is a false removal).
        reachable: bool,
    },
}

/// The running simulation.
pub struct Sim {
    /// Settings.
    pub cfg: SimConfig,
    now: Micros,
    base: Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    nodes: Vec<Node>,
    index: DetMap<DeviceId, usize>,
    store_ids: Vec<StoreId>,
    rng: Xoshiro256PlusPlus,
    cut: BTreeSet<(usize, usize)>,
    tokens: DetMap<Token, (usize, u32, u64)>,
    next_token: Token,
    /// When traffic counting started (see [`Sim::reset_traffic`]).
    pub traffic_since: Micros,
    /// Removals seen, in order.
    pub observations: Vec<Observation>,
    /// Each node's current own version per store, and whether it is live.
    latest: Vec<Option<Version>>,
    /// `holds[n]`: devices whose current slice (store 0) node `n` holds.
    holds: Vec<BTreeSet<usize>>,
    /// Messages rejected as stale or after-leave, mesh-wide.
    pub stale: u64,
    /// Engine inputs handled, mesh-wide.
    pub steps: u64,
    out: Vec<Output>,
    /// `mark[n] == stamp`: node `n` already got the message being spread.
    mark: Vec<u64>,
    stamp: u64,
    /// See [`Sim::beat_len`].
    beat_lens: DetMap<(DeviceId, u64, u64), usize>,
}

impl Sim {
    /// Builds the nodes (not started: see [`Sim::start_node`]).
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
        let ids: Vec<DeviceId> = (0..cfg.nodes).map(device_id).collect();
        let mut nodes = Vec::with_capacity(cfg.nodes);
        for (i, id) in ids.iter().enumerate() {
            let bootstrap = match cfg.topology {
                Topology::Star => {
                    if i == 0 {
                        vec![]
                    } else {
                        vec![0]
                    }
                }
                Topology::Random3 => distinct(&mut rng, i, 3),
                Topology::Halves => {
                    let half = cfg.nodes.div_ceil(2);
                    let (base, k) = if i < half { (0, i) } else { (half, i - half) };
                    let mut b: Vec<usize> = distinct(&mut rng, k, 3)
                        .into_iter()
                        .map(|x| x + base)
                        .collect();
                    // Three bridges between late (so lightly connected) nodes of each half:
                    // both ends keep them in their gossipsub mesh.
                    if i + 3 >= cfg.nodes && i > half {
                        b.push(rng.random_range(half.saturating_sub(8)..half));
                    }
                    b
                }
            };
            nodes.push(Node {
                id: *id,
                engine: None,
                generation: 0,
                incarnation: 0,
                group: 0,
                topics: BTreeSet::new(),
                conns: BTreeSet::new(),
                bootstrap,
                traffic: Traffic::default(),
            });
        }
        let index = ids.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        let store_ids = (0..cfg.stores.max(1))
            .map(|s| StoreId::new(format!("s{s}")).expect("valid store id"))
            .collect();
        let n = cfg.nodes;
        Self {
            cfg,
            now: 0,
            base: Instant::now(),
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            index,
            store_ids,
            rng,
            cut: BTreeSet::new(),
            tokens: DetMap::default(),
            next_token: 0,
            traffic_since: 0,
            observations: Vec::new(),
            latest: vec![None; n],
            holds: vec![BTreeSet::new(); n],
            stale: 0,
            steps: 0,
            out: Vec::new(),
            mark: vec![0; n],
            stamp: 0,
            beat_lens: DetMap::default(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Micros {
        self.now
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].engine.is_some()
    }

    /// Node `i`'s device id.
    pub fn id(&self, i: usize) -> DeviceId {
        self.nodes[i].id
    }

    /// Node `i`'s engine, if it runs.
    pub fn engine(&self, i: usize) -> Option<&Engine> {
        self.nodes[i].engine.as_ref()
    }

    /// Node `i`'s traffic since [`Sim::reset_traffic`].
    pub fn traffic(&self, i: usize) -> Traffic {
        self.nodes[i].traffic
    }

    /// Open connections of node `i`.
    pub fn connections(&self, i: usize) -> usize {
        self.nodes[i].conns.len()
    }

    /// Starts counting traffic afresh.
    pub fn reset_traffic(&mut self) {
        for n in &mut self.nodes {
            n.traffic = Traffic::default();
        }
        self.traffic_since = self.now;
    }

    /// Schedules a scenario action; [`Sim::run_until`] returns `Some(k)` when it is due.
    pub fn schedule_action(&mut self, at: Micros, k: usize) {
        self.push(at, Event::Action(k));
    }

    fn push(&mut self, at: Micros, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    fn latency(&mut self) -> Micros {
        let f = 0.5 + self.rng.random::<f64>();
        (us(self.cfg.latency) as f64 * f) as Micros
    }

    /// When a node notices that a connection's link was cut now: the kernel closes it
    /// once TCP keepalive goes unanswered ([`ProtoConfig::link_timeout`] after the last
    /// traffic, which on an idle connection is somewhere in the last
    /// [`KEEPALIVE_IDLE`](truffle_actors::proto::KEEPALIVE_IDLE)), or its pings do
    /// (within a ping period plus the ping timeout), whichever comes first, as the
    /// runtime sets them up.
    fn ping_failure_at(&mut self) -> Micros {
        let link = us(self.cfg.proto.link_timeout);
        let idle = us(truffle_actors::proto::KEEPALIVE_IDLE).clamp(1, link.max(1));
        let by_link = link - self.rng.random_range(0..idle);
        let every = us(self.cfg.proto.ping_every).max(1);
        let by_ping = self.rng.random_range(0..every) + us(self.cfg.proto.ping_timeout);
        self.now + by_link.min(by_ping)
    }

    fn lost(&mut self) -> bool {
        self.cfg.loss > 0.0 && self.rng.random::<f64>() < self.cfg.loss
    }

    /// Whether a message can cross from `a` to `b` now.
    pub fn link_up(&self, a: usize, b: usize) -> bool {
        self.nodes[a].group == self.nodes[b].group && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Puts each node in a group; messages cross only within a group.
    pub fn partition(&mut self, groups: &[u32]) {
        for (n, g) in self.nodes.iter_mut().zip(groups) {
            n.group = *g;
        }
        self.check_pings();
    }

    /// Schedules, for every connection whose link is now cut, the ping failure each end
    /// will see: within a ping period plus the ping timeout.
    fn check_pings(&mut self) {
        let mut cut = Vec::new();
        for a in 0..self.nodes.len() {
            for &b in &self.nodes[a].conns {
                if !self.link_up(a, b) {
                    cut.push((a, b));
                }
            }
        }
        for (a, b) in cut {
            let at = self.ping_failure_at();
            let g = self.nodes[a].generation;
            self.push(at, Event::PingCheck(a, g, b));
        }
    }

    /// Cuts (or, with `up`, restores) the link between `a` and `b`.
    pub fn set_link(&mut self, a: usize, b: usize, up: bool) {
        let key = (a.min(b), a.max(b));
        if up {
            self.cut.remove(&key);
        } else {
            self.cut.insert(key);
            for (x, y) in [(a, b), (b, a)] {
                if self.nodes[x].conns.contains(&y) {
                    let at = self.ping_failure_at();
                    let g = self.nodes[x].generation;
                    self.push(at, Event::PingCheck(x, g, y));
                }
            }
        }
    }

    /// The halves of [`Topology::Halves`] as partition groups.
    pub fn halves(&self) -> Vec<u32> {
        let half = self.nodes.len().div_ceil(2);
        (0..self.nodes.len())
            .map(|i| u32::from(i >= half))
            .collect()
    }

    /// Heals every partition and cut link.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
        self.cut.clear();
    }

    /// Sets the loss probability from now on.
    pub fn set_loss(&mut self, loss: f64) {
        self.cfg.loss = loss;
    }

    /// Starts node `i` (first start, or a restart with the same identity and a higher
    /// incarnation): its engine joins every store and writes its initial slice.
    pub fn start_node(&mut self, i: usize) {
        if self.nodes[i].engine.is_some() {
            return;
        }
        let bootstrap: Vec<Multiaddr> = self.nodes[i]
            .bootstrap
            .iter()
            .map(|&b| Multiaddr::empty().with(Protocol::P2p(self.nodes[b].id.peer_id())))
            .collect();
        let node = &mut self.nodes[i];
        node.generation += 1;
        node.incarnation += 1;
        let node = &mut self.nodes[i];
        let seed = self.cfg.seed ^ ((i as u64) << 20) ^ u64::from(node.generation);
        let mut engine = Engine::new(
            node.id,
            node.incarnation,
            self.cfg.proto.clone(),
            seed,
            bootstrap,
        );
        let mut out = std::mem::take(&mut self.out);
        let now = self.base + Duration::from_micros(self.now);
        // A listen address to announce, as a node's runtime reports its own: members dial
        // each other at the addresses in their heartbeats (the simulator routes by id).
        let addr = format!(
            "/ip4/10.{}.{}.{}/tcp/4001",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        );
        engine.handle(Input::ListenAddrs(vec![addr]), now, &mut out);
        engine.start(now, &mut out);
        for s in self.store_ids.clone() {
            engine.handle(Input::Join(s), now, &mut out);
        }
        self.nodes[i].engine = Some(engine);
        self.latest[i] = Some(Version::new(self.nodes[i].incarnation, 0));
        self.invalidate(i);
        // The first dial goes out at once, as `MeshNode::start` does.
        for b in self.nodes[i].bootstrap.clone() {
            self.dial(i, b);
        }
        self.execute(i, &mut out);
        self.out = out;
        for s in 0..self.store_ids.len() {
            self.write(i, s as u32);
        }
    }

    /// Starts every node in index order, one every `gap`.
    pub fn start_all(&mut self, gap: Micros) {
        for i in 0..self.len() {
            let t = self.now + gap;
            self.run_until(t);
            self.start_node(i);
        }
    }

    /// Runs until the mesh has converged (checked every 10 ms), or until `deadline`;
    /// returns when it converged.
    pub fn converge_by(&mut self, deadline: Micros) -> Option<Micros> {
        while self.now < deadline {
            if self.converged() {
                return Some(self.now);
            }
            let t = self.now + 10_000;
            self.run_until(t);
        }
        self.converged().then_some(self.now)
    }

    /// Node `i` writes a new version of its slice in store `s` (its runtime signs and
    /// publishes it, then tells the engine).
    pub fn write(&mut self, i: usize, s: u32) {
        let Some(engine) = self.nodes[i].engine.as_ref() else {
            return;
        };
        let store = self.store_ids[s as usize].clone();
        let version = match engine.held_version(&store, &self.nodes[i].id) {
            Some(v) => Version::new(v.incarnation, v.counter + 1),
            None => Version::new(self.nodes[i].incarnation, 0),
        };
        let slice = self.make_slice(i, s, version);
        self.publish_own(i, s, slice);
    }

    fn make_slice(&self, i: usize, s: u32, version: Version) -> Slice {
        // The raw bytes name the slice (so a peer that relays them can be understood)
        // and are padded to the configured size.
        let mut raw = Vec::with_capacity(24 + self.cfg.slice_bytes);
        raw.extend_from_slice(&(i as u64).to_le_bytes());
        raw.extend_from_slice(&u64::from(s).to_le_bytes());
        raw.extend_from_slice(&version.incarnation.to_le_bytes());
        raw.extend_from_slice(&version.counter.to_le_bytes());
        raw.resize(32 + self.cfg.slice_bytes + 120, 0);
        Slice {
            store: self.store_ids[s as usize].clone(),
            device: self.nodes[i].id,
            version,
            updated_at: 0,
            data: Arc::from(&[][..]),
            raw: Arc::from(raw),
        }
    }

    fn decode_raw(&self, raw: &Arc<[u8]>) -> Option<Slice> {
        let word = |k: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                raw.get(k * 8..k * 8 + 8)?.try_into().ok()?,
            ))
        };
        let (i, s) = (word(0)? as usize, word(1)? as usize);
        Some(Slice {
            store: self.store_ids.get(s)?.clone(),
            device: self.nodes.get(i)?.id,
            version: Version::new(word(2)?, word(3)?),
            updated_at: 0,
            data: Arc::from(&[][..]),
            raw: raw.clone(),
        })
    }

    fn publish_own(&mut self, i: usize, s: u32, slice: Slice) {
        if s == 0 {
            self.latest[i] = Some(slice.version);
            self.invalidate(i);
        }
        let version = slice.version;
        let raw = slice.raw.clone();
        let store = slice.store.clone();
        let reached = self.broadcast(i, Topic::Store(s), Gossip::Slice(Arc::new(slice)));
        self.input(
            i,
            Input::Published {
                store,
                version,
                raw,
                reached_nobody: !reached,
            },
        );
    }

    /// Stops node `i` abruptly (kill -9): its connections close at the other ends.
    pub fn crash(&mut self, i: usize) {
        if self.nodes[i].engine.take().is_none() {
            return;
        }
        self.nodes[i].generation += 1;
        self.nodes[i].topics.clear();
        self.latest[i] = None;
        self.invalidate(i);
        self.holds[i].clear();
        for p in std::mem::take(&mut self.nodes[i].conns) {
            self.nodes[p].conns.remove(&i);
            let g = self.nodes[p].generation;
            let peer = self.nodes[i].id;
            self.push(
                self.now,
                Event::Input(
                    p,
                    g,
                    Box::new(Input::ConnectionClosed { peer, remaining: 0 }),
                ),
            );
        }
    }

    /// Node `liar` publishes an accusation of `device` (watch liveness) that nothing
    /// justifies, naming a heartbeat no one has heard yet.
    pub fn accuse(&mut self, liar: usize, device: usize) {
        let incarnation = self.nodes[device].incarnation;
        let suspicion = Suspicion {
            device: self.nodes[device].id,
            incarnation,
            seq: u64::MAX,
        };
        let me = self.nodes[liar].id;
        self.broadcast(
            liar,
            Topic::Presence,
            Gossip::Suspect(Box::new((me, suspicion))),
        );
    }

    /// Node `i` leaves gracefully; it stops once the leave is acknowledged.
    pub fn leave(&mut self, i: usize) {
        self.input(i, Input::Leave);
    }

    /// Removals by timeout of a device that was up and reachable from the remover.
    pub fn false_removals(&self) -> Vec<&Observation> {
        self.observations
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Observation::Removed {
                        reason: RemovalReason::Timeout,
                        reachable: true,
                        ..
                    }
                )
            })
            .collect()
    }

    /// Pairs `(i, j)` of live nodes where `i`'s view of `j` disagrees with `groups` (a
    /// partition as given to [`Sim::partition`]): `i` counts `j` live across the split, or
    /// not live on its own side. Empty once each side has removed the other, and only it.
    pub fn views_across(&self, groups: &[u32]) -> Vec<(usize, usize)> {
        let mut wrong = Vec::new();
        for i in (0..self.nodes.len()).filter(|&i| self.is_up(i)) {
            let Some(e) = self.engine(i) else { continue };
            for j in (0..self.nodes.len()).filter(|&j| j != i && self.is_up(j)) {
                if e.is_online(&self.id(j)) != (groups[i] == groups[j]) {
                    wrong.push((i, j));
                }
            }
        }
        wrong
    }

    /// Whether every live node holds every other live device's current slice of the
    /// first store.
    pub fn converged(&self) -> bool {
        self.lagging() == 0
    }

    /// Live nodes that do not yet hold every other live device's current slice.
    pub fn lagging(&self) -> usize {
        // `holds[n]` only ever names live devices other than `n` (a device's entries are
        // dropped everywhere when it writes or goes down), so counting is enough.
        let live = (0..self.nodes.len()).filter(|&i| self.is_up(i)).count();
        (0..self.nodes.len())
            .filter(|&n| self.is_up(n) && self.holds[n].len() + 1 < live)
            .count()
    }

    /// `d`'s current slice changed (or it went down): nobody holds the current one yet.
    fn invalidate(&mut self, d: usize) {
        for h in &mut self.holds {
            h.remove(&d);
        }
    }

    /// Runs events until `until` or a scenario action is due; returns that action.
    pub fn run_until(&mut self, until: Micros) -> Option<usize> {
        while self.queue.peek().is_some_and(|Reverse(q)| q.at <= until) {
            let Some(Reverse(Queued { at, ev, .. })) = self.queue.pop() else {
                break;
            };
            self.now = at;
            match ev {
                Event::Action(k) => return Some(k),
                Event::Timer(i, g, t) => {
                    if self.nodes[i].generation == g {
                        self.input(i, Input::Timer(t));
                    }
                }
                Event::Input(i, g, input) => {
                    if self.nodes[i].generation == g {
                        self.nodes[i].traffic.delivered += 1;
                        self.input(i, *input);
                    }
                }
                Event::Gossip(i, g, via, msg) => {
                    if self.nodes[i].generation == g {
                        self.nodes[i].traffic.delivered += 1;
                        self.nodes[i].traffic.gossip += 1;
                        let via = self.nodes[via].id;
                        let input = match msg {
                            Gossip::Heartbeat(h) => Input::Heartbeat { via, heartbeat: h },
                            Gossip::Goodbye(b) => Input::Goodbye {
                                device: b.0,
                                incarnation: b.1,
                            },
                            Gossip::Slice(s) => Input::Slice {
                                via,
                                slice: (*s).clone(),
                            },
                            Gossip::Suspect(b) => {
                                let (accuser, suspicion) = *b;
                                Input::Suspect { accuser, suspicion }
                            }
                        };
                        self.input(i, input);
                    }
                }
                Event::Connect(a, b) => self.connect(a, b),
                Event::PingCheck(a, g, b) => {
                    if self.nodes[a].generation == g
                        && self.nodes[a].conns.contains(&b)
                        && !self.link_up(a, b)
                    {
                        let peer = self.nodes[b].id;
                        self.input(a, Input::Unresponsive { peer });
                    }
                }
                Event::Stop(i, g) => {
                    if self.nodes[i].generation == g {
                        self.crash(i);
                    }
                }
            }
        }
        self.now = self.now.max(until);
        None
    }

    fn input(&mut self, i: usize, input: Input) {
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return;
        };
        self.steps += 1;
        let mut out = std::mem::take(&mut self.out);
        engine.handle(input, self.base + Duration::from_micros(self.now), &mut out);
        self.execute(i, &mut out);
        self.out = out;
    }

    fn dial(&mut self, i: usize, peer: usize) {
        if i == peer || self.nodes[i].conns.contains(&peer) {
            return;
        }
        if !self.is_up(peer) || !self.link_up(i, peer) {
            // Refused at once by a host whose process is gone; unanswered across a cut.
            let after = if self.link_up(i, peer) {
                self.latency() + self.latency()
            } else {
                DIAL_TIMEOUT
            };
            let g = self.nodes[i].generation;
            let peer = self.nodes[peer].id;
            self.push(
                self.now + after,
                Event::Input(i, g, Box::new(Input::DialFailed { peer })),
            );
            return;
        }
        let rtt = self.latency() + self.latency();
        self.push(self.now + rtt, Event::Connect(i, peer));
    }

    fn connect(&mut self, a: usize, b: usize) {
        if !self.is_up(a)
            || !self.is_up(b)
            || !self.link_up(a, b)
            || self.nodes[a].conns.contains(&b)
        {
            return;
        }
        self.nodes[a].conns.insert(b);
        self.nodes[b].conns.insert(a);
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.nodes[y].id;
            let g = self.nodes[x].generation;
            self.push(
                self.now,
                Event::Input(x, g, Box::new(Input::Connected { peer })),
            );
            for t in self.nodes[y].topics.clone() {
                if let Topic::Store(s) = t {
                    let store = self.store_ids[s as usize].clone();
                    self.push(
                        self.now,
                        Event::Input(x, g, Box::new(Input::Subscribed { peer, store })),
                    );
                }
            }
        }
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        if !self.nodes[a].conns.remove(&b) {
            return;
        }
        self.nodes[b].conns.remove(&a);
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.nodes[y].id;
            let g = self.nodes[x].generation;
            self.push(
                self.now,
                Event::Input(
                    x,
                    g,
                    Box::new(Input::ConnectionClosed { peer, remaining: 0 }),
                ),
            );
        }
    }

    /// Sends a message of `bytes` from `a` to `b`, counting it; `None` when it does not
    /// arrive.
    fn send(&mut self, a: usize, b: usize, bytes: usize) -> Option<Micros> {
        self.nodes[a].traffic.sent_msgs += 1;
        self.nodes[a].traffic.sent_bytes += bytes as u64;
        if !self.link_up(a, b) || !self.is_up(b) {
            return None;
        }
        self.nodes[b].traffic.recv_msgs += 1;
        self.nodes[b].traffic.recv_bytes += bytes as u64;
        Some(self.latency())
    }

    /// Spreads `msg` from `src` over the topic's mesh; false when `src` has no subscribed
    /// neighbour (gossipsub's `NoPeersSubscribedToTopic`).
    fn broadcast(&mut self, src: usize, topic: Topic, msg: Gossip) -> bool {
        let bytes = match &msg {
            Gossip::Heartbeat(h) => self.beat_len(h),
            Gossip::Goodbye(..) => 160,
            Gossip::Suspect(..) => 200,
            Gossip::Slice(s) => s.raw.len(),
        } + 8;
        let subscribed = |sim: &Sim, n: usize| match &topic {
            Topic::Presence => sim.is_up(n),
            t => sim.nodes[n].topics.contains(t),
        };
        let first: Vec<usize> = self.nodes[src]
            .conns
            .iter()
            .copied()
            .filter(|&p| subscribed(self, p))
            .collect();
        if first.is_empty() {
            return false;
        }
        // Dijkstra over the links: each node handles the first copy to arrive, in time
        // order, and forwards from then.
        self.stamp += 1;
        let stamp = self.stamp;
        self.mark[src] = stamp;
        let mut queue = BinaryHeap::new();
        for p in first {
            if let Some(d) = self.send(src, p, bytes) {
                queue.push(Reverse((self.now + d, p, src)));
            }
        }
        while let Some(Reverse((at, n, from))) = queue.pop() {
            if self.mark[n] == stamp {
                continue;
            }
            self.mark[n] = stamp;
            if self.lost() {
                // Dropped on arrival: neither handled nor forwarded.
                continue;
            }
            let g = self.nodes[n].generation;
            self.push(at, Event::Gossip(n, g, from, msg.clone()));
            // Forward over the mesh (see the module docs).
            let links: Vec<usize> = self.nodes[n]
                .conns
                .iter()
                .copied()
                .filter(|&p| subscribed(self, p))
                .collect();
            let k = links.len();
            for (j, &p) in links.iter().enumerate() {
                if p == from {
                    continue;
                }
                let in_mesh = k <= D_HI || picks(n, j, k, self.cfg.mesh_degree) || {
                    // Or `p` picked this link (the mesh is symmetric: a graft puts each
                    // end in the other's mesh).
                    let (mut kp, mut at) = (0, None);
                    for &q in &self.nodes[p].conns {
                        if subscribed(self, q) {
                            if q == n {
                                at = Some(kp);
                            }
                            kp += 1;
                        }
                    }
                    kp <= D_HI || at.is_some_and(|i| picks(p, i, kp, self.cfg.mesh_degree))
                };
                let mut delay = 0;
                if !in_mesh {
                    // Lazy gossip: the message id goes out in IHAVE to `D_LAZY` random
                    // non-mesh peers per heartbeat, for `HISTORY_GOSSIP` heartbeats; a
                    // peer that lacks it asks (IWANT) and gets it a heartbeat or so late.
                    let nonmesh = k.saturating_sub(self.cfg.mesh_degree).max(1) as f64;
                    let miss = (1.0 - (D_LAZY as f64 / nonmesh).min(1.0)).powi(HISTORY_GOSSIP);
                    if self.rng.random::<f64>() >= 1.0 - miss {
                        continue;
                    }
                    let beats = 1.0 + self.rng.random::<f64>() * f64::from(HISTORY_GOSSIP - 1);
                    delay = (GOSSIP_HEARTBEAT as f64 * beats) as Micros;
                }
                if let Some(d) = self.send(n, p, bytes) {
                    queue.push(Reverse((at + d + delay, p, n)));
                }
            }
        }
        true
    }

    /// The signed length of a heartbeat, encoded once per heartbeat (a device's
    /// `(incarnation, seq)` names one heartbeat): answers to heartbeat requests carry the
    /// same ones again and again.
    fn beat_len(&mut self, h: &Heartbeat) -> usize {
        *self
            .beat_lens
            .entry((h.device, h.incarnation, h.seq))
            .or_insert_with(|| heartbeat_wire_len(h))
    }

    fn peer_index(&self, d: &DeviceId) -> Option<usize> {
        self.index.get(d).copied()
    }

    fn execute(&mut self, i: usize, out: &mut Vec<Output>) {
        let g = self.nodes[i].generation;
        for o in out.drain(..) {
            match o {
                Output::Subscribe(store) => {
                    let s = self.store_ids.iter().position(|x| *x == store).unwrap_or(0) as u32;
                    self.nodes[i].topics.insert(Topic::Store(s));
                    let me = self.nodes[i].id;
                    for p in self.nodes[i].conns.clone() {
                        if let Some(d) = self.send(i, p, 64) {
                            let gp = self.nodes[p].generation;
                            self.push(
                                self.now + d,
                                Event::Input(
                                    p,
                                    gp,
                                    Box::new(Input::Subscribed {
                                        peer: me,
                                        store: store.clone(),
                                    }),
                                ),
                            );
                        }
                    }
                }
                Output::PublishHeartbeat(h) => {
                    self.broadcast(i, Topic::Presence, Gossip::Heartbeat(Arc::new(h)));
                }
                Output::PublishSuspect(suspicion) => {
                    let me = self.nodes[i].id;
                    self.broadcast(
                        i,
                        Topic::Presence,
                        Gossip::Suspect(Box::new((me, suspicion))),
                    );
                }
                Output::Ask { peer, id, ask } => {
                    let bytes = match &ask {
                        Ask::Digest(d) => 24 + d.stores.len() * 24,
                        Ask::Members(m) => 16 + m.len() * 40,
                        Ask::Accused(_) => 120,
                        _ => 16,
                    };
                    self.request(i, peer, id, bytes, Request::Ask(ask));
                }
                Output::Reply { token, reply } => {
                    let Some((to, tg, id)) = self.tokens.remove(&token) else {
                        continue;
                    };
                    let bytes = match &reply {
                        Reply::Digest(DigestReply { members, stores }) => {
                            16 + members.as_ref().map_or(0, |m| m.len() * 56)
                                + stores.iter().map(|(_, e)| 24 + e.len() * 56).sum::<usize>()
                        }
                        Reply::Members(beats) => {
                            8 + beats.iter().map(|b| self.beat_len(b)).sum::<usize>()
                        }
                        _ => 8,
                    };
                    let peer = self.nodes[i].id;
                    if let Some(d) = self.send(i, to, bytes) {
                        self.push(
                            self.now + d,
                            Event::Input(to, tg, Box::new(Input::Replied { peer, id, reply })),
                        );
                    } else {
                        self.push(
                            self.now + REQUEST_TIMEOUT,
                            Event::Input(to, tg, Box::new(Input::RequestFailed { peer, id })),
                        );
                    }
                }
                Output::PublishGoodbye { incarnation } => {
                    let me = self.nodes[i].id;
                    self.broadcast(
                        i,
                        Topic::Presence,
                        Gossip::Goodbye(Box::new((me, incarnation))),
                    );
                }
                Output::Publish {
                    store,
                    version,
                    raw,
                } => {
                    let s = self.store_ids.iter().position(|x| *x == store).unwrap_or(0) as u32;
                    let reached = self.broadcast(
                        i,
                        Topic::Store(s),
                        Gossip::Slice(Arc::new(Slice {
                            store: store.clone(),
                            device: self.nodes[i].id,
                            version,
                            updated_at: 0,
                            data: Arc::from(&[][..]),
                            raw: raw.clone(),
                        })),
                    );
                    let input = Input::Published {
                        store,
                        version,
                        raw,
                        reached_nobody: !reached,
                    };
                    self.push(self.now, Event::Input(i, g, Box::new(input)));
                }
                Output::Fetch { peer, id, want } => {
                    let bytes = 16 + want.len() * 70;
                    self.request(i, peer, id, bytes, Request::Fetch(want));
                }
                Output::SendGoodbye {
                    peer,
                    id,
                    incarnation,
                } => {
                    self.request(i, peer, id, 64, Request::Goodbye(incarnation));
                }
                Output::Respond { token, slices } => {
                    let Some((to, tg, id)) = self.tokens.remove(&token) else {
                        continue;
                    };
                    let bytes = 8 + slices.iter().map(|s| s.len() + 5).sum::<usize>();
                    if let Some(d) = self.send(i, to, bytes) {
                        let slices = slices.iter().filter_map(|r| self.decode_raw(r)).collect();
                        let peer = self.nodes[i].id;
                        self.push(
                            self.now + d,
                            Event::Input(to, tg, Box::new(Input::Response { peer, id, slices })),
                        );
                    } else {
                        let peer = self.nodes[i].id;
                        self.push(
                            self.now + REQUEST_TIMEOUT,
                            Event::Input(to, tg, Box::new(Input::RequestFailed { peer, id })),
                        );
                    }
                }
                Output::Deliver(slice) => {
                    if let Some(d) = self.peer_index(&slice.device) {
                        if slice.store == self.store_ids[0] && self.latest[d] == Some(slice.version)
                        {
                            self.holds[i].insert(d);
                        }
                    }
                }
                Output::Remove {
                    store,
                    device,
                    reason,
                } => {
                    if let Some(d) = self.peer_index(&device) {
                        if store == self.store_ids[0] {
                            self.holds[i].remove(&d);
                            let reachable = self.is_up(d) && self.link_up(i, d);
                            self.observations.push(Observation::Removed {
                                at: self.now,
                                node: i,
                                device: d,
                                reason,
                                reachable,
                            });
                        }
                    }
                }
                Output::Schedule { after, timer } => {
                    self.push(self.now + us(after), Event::Timer(i, g, timer));
                }
                Output::Dial { peer, .. } => {
                    if let Some(p) = self.peer_index(&peer) {
                        self.dial(i, p);
                    }
                }
                Output::DialAddr { addr } => {
                    let peer = addr.iter().find_map(|p| match p {
                        Protocol::P2p(id) => Some(DeviceId::from(id)),
                        _ => None,
                    });
                    if let Some(p) = peer.and_then(|d| self.peer_index(&d)) {
                        self.dial(i, p);
                    }
                }
                // The model has no requests in flight to wait for: a trim closes at once.
                Output::Disconnect { peer } | Output::Trim { peer } => {
                    if let Some(p) = self.peer_index(&peer) {
                        self.disconnect(i, p);
                    }
                }
                Output::LeaveDone { .. } => {
                    // The node stops once its leave is done, like `MeshNode::shutdown`.
                    self.push(self.now, Event::Stop(i, g));
                }
                Output::Report(Report::Rejected { reason, .. }) => {
                    if matches!(reason, RejectReason::Stale | RejectReason::AfterLeave) {
                        self.stale += 1;
                    }
                }
                Output::Report(_) => {}
                _ => {}
            }
        }
    }

    /// Opens a request stream from `i` to `peer` carrying `what` (not lost: streams are
    /// reliable). It fails after a round trip when the two are not connected, and after
    /// the request timeout across a cut.
    fn request(&mut self, i: usize, peer: DeviceId, id: u64, bytes: usize, what: Request) {
        let g = self.nodes[i].generation;
        let Some(p) = self.peer_index(&peer) else {
            return;
        };
        let me = self.nodes[i].id;
        let failed = if !self.nodes[i].conns.contains(&p) {
            Some(2 * us(self.cfg.latency))
        } else {
            None
        };
        let sent = match failed {
            Some(_) => None,
            None => self.send(i, p, bytes),
        };
        let Some(d) = sent else {
            let after = failed.unwrap_or(REQUEST_TIMEOUT);
            self.push(
                self.now + after,
                Event::Input(i, g, Box::new(Input::RequestFailed { peer, id })),
            );
            return;
        };
        let gp = self.nodes[p].generation;
        let mut token = || {
            self.next_token += 1;
            self.tokens.insert(self.next_token, (i, g, id));
            self.next_token
        };
        let input = match what {
            Request::Fetch(want) => Input::Request {
                peer: me,
                token: token(),
                want,
            },
            Request::Ask(ask) => Input::Asked {
                peer: me,
                token: token(),
                ask,
            },
            Request::Goodbye(incarnation) => {
                // Answered at once, with an empty response.
                let back = self.send(p, i, 16).map(|b| self.now + d + b);
                let answer = match back {
                    Some(_) => Input::Response {
                        peer,
                        id,
                        slices: Vec::new(),
                    },
                    None => Input::RequestFailed { peer, id },
                };
                self.push(
                    back.unwrap_or(self.now + REQUEST_TIMEOUT),
                    Event::Input(i, g, Box::new(answer)),
                );
                Input::Goodbye {
                    device: me,
                    incarnation,
                }
            }
        };
        self.push(self.now + d, Event::Input(p, gp, Box::new(input)));
    }
}

/// The device id of simulated node `i`: the peer id of an ed25519 key from a fixed seed.
pub fn device_id(i: usize) -> DeviceId {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed[8] = 0x5a;
    let key =
        libp2p::identity::Keypair::ed25519_from_bytes(seed).expect("32 bytes is a valid seed");
    DeviceId::from(key.public().to_peer_id())
}

/// `k` distinct random indices below `n`.
fn distinct(rng: &mut Xoshiro256PlusPlus, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for i in (1..all.len()).rev() {
        let j = rng.random_range(0..=i);
        all.swap(i, j);
    }
    all.truncate(k.min(n));
    all
}

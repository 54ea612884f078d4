//! The protocol core: every protocol decision of a node, as a state machine with no IO.
//!
//! [`Engine::handle`] takes one [`Input`] (a decoded, signature-checked message, a local
//! command, a timer expiry, a connection or subscription event) and the current time, and
//! appends [`Output`]s (publish on a topic, send a request or response, deliver to or
//! remove from a store, schedule a timer, dial or disconnect). Time, randomness (a seed)
//! and identities are injected; nothing in here touches a socket, a clock, a task or an
//! actor, so the same core runs inside a node (the runtime in `gossip/` executes its
//! outputs) and by the thousand inside the deterministic simulator (`truffle-sim`).
//!
//! Signatures stay at the boundary: the runtime verifies before it builds an input and
//! signs what an output asks it to publish.
//!
//! This module is public for the simulator and for protocol tests; it is not part of the
//! stable API of the crate.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use truffle_actors::proto::{Engine, Input, Liveness, Output, ProtoConfig, Timer};
//! use truffle_actors::{DeviceId, StoreId};
//!
//! let me = DeviceId::from(truffle_actors::identity::Keypair::generate_ed25519().public().to_peer_id());
//! // Heartbeats liveness: a heartbeat every presence period (watch announces on change).
//! let cfg = ProtoConfig::default().with_liveness(Liveness::Heartbeats);
//! let mut core = Engine::new(me, 1, cfg, 7, Vec::new());
//! let (now, mut out) = (Instant::now(), Vec::new());
//! core.start(now, &mut out);
//! core.handle(Input::Join(StoreId::new("todos").unwrap()), now, &mut out);
//! assert!(out.iter().any(|o| matches!(o, Output::Subscribe(s) if s.as_str() == "todos")));
//! out.clear();
//! core.handle(Input::Timer(Timer::Presence), now + Duration::from_millis(500), &mut out);
//! assert!(out.iter().any(|o| matches!(o, Output::PublishHeartbeat(_))));
//! ```

pub(crate) mod admission;
pub(crate) mod gate;
mod held;
mod membership;
#[cfg(test)]
mod tests;
mod watch;

pub use self::watch::{
    Ask, Digest, DigestReply, Reply, Suspicion, MAX_MEMBERS_ASKED, MAX_MEMBER_ENTRIES,
    MAX_STORE_ENTRIES,
};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use self::membership::{Admit, Membership, Removal};
use crate::ids::{DeviceId, Incarnation, StoreId, Version};
use crate::store::RemovalReason;
use crate::wire::{RejectReason, MAX_DIGEST_ENTRIES, MAX_PRESENCE_ADDRS};

/// The hasher of the engine's maps: keyed by the engine's seed, not by per-process random
/// keys, so that iteration order depends only on the seed and what was inserted and a
/// simulation replays exactly. A node seeds its engine randomly, so peers cannot predict
/// the keys (their device ids are map keys here).
pub type DetState = foldhash::fast::FixedState;
/// A hash map with a [`DetState`] hasher.
pub type DetMap<K, V> = HashMap<K, V, DetState>;
/// The set counterpart of [`DetMap`].
pub type DetSet<K> = HashSet<K, DetState>;

/// Most wants honoured from one sync request, and slices accepted from one response.
pub const MAX_WANTS: usize = 4096;
/// The default of [`ProtoConfig::forget_after`]; also how long watch liveness keeps
/// dialling a member it lost.
const FORGET_AFTER_MIN: Duration = Duration::from_secs(60);
/// A slice asked for is not asked for again, at the same or an older version, until it is
/// answered or this long has passed.
const REFETCH_AFTER: Duration = Duration::from_secs(1);
/// Most peers asked, one after the other, for a slice that the first one asked lacked.
const FETCH_TRIES: usize = 4;
/// Slices a heartbeat shows missing are asked of the peer that relayed it at once, and
/// then at most once per this period per relay: what further heartbeats show missing
/// meanwhile is asked for together at the end of the period, if gossip has not brought it
/// by then. A slice usually travels right behind the heartbeat that announces it, so a
/// burst of new devices (a join wave, or an attacker's minted identities) costs one
/// request per relay and period instead of one per device, and most of those wants are
/// met before they are sent.
const FETCH_WINDOW: Duration = Duration::from_millis(200);
/// A member dialled to fill the view is not dialled again sooner than this.
const DIAL_BACKOFF: Duration = Duration::from_secs(2);
/// A connection younger than this is never closed to trim the view: the peer at the other
/// end may have just joined through it and not yet met anyone else.
const TRIM_MIN_AGE: Duration = Duration::from_secs(10);
/// Every this many redial ticks the view is refreshed: one random member (or bootstrap
/// peer) is dialled even when the view is full, so the overlay keeps mixing and the two
/// sides of a healed partition find each other.
const REFRESH_TICKS: u64 = 30;

/// TCP keepalive on every connection: the first probe after this long without traffic.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(4);
/// TCP keepalive: then one probe this often.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// TCP keepalive: the connection closes after this many unanswered probes.
pub const KEEPALIVE_PROBES: u32 = 3;
/// [`ProtoConfig::link_timeout`]: the first keepalive probe after 4 s of silence, then one
/// a second, three unanswered closing the connection (and a TCP user timeout as long for
/// data not acknowledged), so a dead link is noticed 3 to 7 s after it died. Close to
/// what pings every 5 s with a 3 s timeout gave (3 to 8 s), which the partition tests
/// and the simulator's false-removal counts were tuned with.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(7);

/// The protocol's timings and limits (the subset of the node's settings it decides with).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProtoConfig {
    /// How often this node announces itself and its versions.
    pub presence_interval: Duration,
    /// How long without evidence before a device is removed.
    pub presence_timeout: Duration,
    /// Most bytes of slices in one sync answer.
    pub max_response_bytes: usize,
    /// How long a graceful leave waits for acknowledgements.
    pub leave_timeout: Duration,
    /// How often the view of connected peers is checked: filled up to
    /// [`target_peers`](Self::target_peers), trimmed above a quarter more than that
    /// (rounded up), and bootstrap peers (and peers disconnected on purpose) re-dialled
    /// while it is short.
    pub redial_every: Duration,
    /// How many connections a node keeps (its view): it dials random members, chosen from
    /// the addresses they announce in their signed heartbeats, while it has fewer, and
    /// closes random older connections while it has more than a quarter again as many
    /// (rounded up: 10 for 8).
    pub target_peers: usize,
    /// How devices are judged alive (see [`Liveness`]).
    pub liveness: Liveness,
    /// Watch liveness: how long an accusation by one member waits for the accused to
    /// answer before it removes the device. Each further independent accuser shortens the
    /// wait, down to half of this with three. A node whose own dials of members lately
    /// took long (a slow link, a starved CPU) waits longer: up to twice the upper quartile
    /// of those dial times, at most four times this; a node whose own timers lately fired
    /// late (short of CPU) waits three times as long again.
    pub suspect_timeout: Duration,
    /// Watch liveness: how long a node tries to reach a peer whose connection dropped
    /// before it accuses it; stretched like `suspect_timeout` when this node's dials are
    /// slow.
    pub probe_timeout: Duration,
    /// Watch liveness: how often a node compares its view (members and slice versions) with
    /// one random connected peer while anything changes (see `anti_entropy_idle`).
    pub anti_entropy_every: Duration,
    /// Watch liveness: the longest a node waits between comparisons while nothing changes.
    /// Each comparison that finds nothing to repair doubles the wait, from
    /// `anti_entropy_every` up to this; anything new (a slice, a member, a neighbour, a
    /// comparison either way that finds a difference) brings it back, and there is no
    /// back-off while the node is alert or lately removed members by suspicion (a
    /// partition may be healing; the simulator's `partition-heal` at 16 nodes did not
    /// converge within 10 s of the heal with it). Each comparison
    /// costs a request on both ends, about a quarter of an idle mesh's CPU at one a
    /// second.
    pub anti_entropy_idle: Duration,
    /// How long a connection's link may stay silent before the kernel closes it. A
    /// process that dies closes its connections at once; for what closes nothing (a host
    /// that loses power, a cut cable, a partition) every connection has TCP keepalive
    /// ([`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_PROBES`]) and a TCP user
    /// timeout of this long, so a dead link is noticed within about this long without
    /// waking the process while the link is fine. Set by the runtime for its own connections; the
    /// simulator models it.
    pub link_timeout: Duration,
    /// Watch liveness: how often each end of a connection pings the other (libp2p ping),
    /// for a peer whose host still answers for it but whose process hangs (stopped, out
    /// of CPU for good); a dead link is [`link_timeout`](Self::link_timeout)'s. Each ping
    /// wakes both ends: at every 5 s pings were about a fifth of an idle 64-node mesh's
    /// CPU (the Performance chapter has the runs).
    pub ping_every: Duration,
    /// Watch liveness: how long a ping may take before its peer counts as unresponsive.
    pub ping_timeout: Duration,
    /// Devices silent (and holding nothing here) for this long, and at least 10 × the
    /// presence timeout, are forgotten; a compact tombstone of each (the versions last
    /// seen of it) is kept much longer, so that replaying its old messages cannot bring
    /// it back.
    pub forget_after: Duration,
}

/// How a node decides that a device is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Liveness {
    /// Every device floods a signed heartbeat to the whole mesh every presence interval, and
    /// each node removes a device it has not heard from for the presence timeout. Simple
    /// and judged only from the device's own words, but every node handles every device's
    /// heartbeats: the cost per node grows with the mesh.
    Heartbeats,
    /// Each node watches only the peers it is connected to. A node that loses its
    /// connection to a member and cannot reach it again within the probe timeout publishes
    /// a signed accusation; the accused, if alive, refutes it at once with a newer signed
    /// heartbeat, and otherwise every node removes it when the suspicion times out
    /// (sooner the more members accuse it). Heartbeats go out only when something changed.
    /// Views are compared with one random peer per period by hash, so a node's cost does
    /// not grow with the mesh. The default.
    #[default]
    Watch,
}

impl Liveness {
    /// The name used on command lines and in logs: `heartbeats` or `watch`.
    pub fn name(self) -> &'static str {
        match self {
            Liveness::Heartbeats => "heartbeats",
            Liveness::Watch => "watch",
        }
    }
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a [`Liveness`] (see its `FromStr`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown liveness `{0}`: expected heartbeats or watch")]
pub struct UnknownLiveness(pub String);

/// Parses `heartbeats` or `watch`, so command lines can take a liveness directly.
///
/// ```
/// use truffle_actors::proto::Liveness;
/// assert_eq!("watch".parse::<Liveness>(), Ok(Liveness::Watch));
/// assert!("gossip".parse::<Liveness>().is_err());
/// ```
impl std::str::FromStr for Liveness {
    type Err = UnknownLiveness;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Liveness::Heartbeats, Liveness::Watch]
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| UnknownLiveness(s.to_string()))
    }
}

impl Default for ProtoConfig {
    fn default() -> Self {
        Self {
            presence_interval: Duration::from_millis(500),
            presence_timeout: Duration::from_millis(2500),
            max_response_bytes: 64 * 1024 * 1024,
            leave_timeout: Duration::from_secs(2),
            redial_every: Duration::from_secs(1),
            target_peers: 8,
            liveness: Liveness::default(),
            suspect_timeout: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(2),
            anti_entropy_every: Duration::from_secs(1),
            anti_entropy_idle: Duration::from_secs(8),
            link_timeout: LINK_TIMEOUT,
            ping_every: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(3),
            forget_after: FORGET_AFTER_MIN,
        }
    }
}

impl ProtoConfig {
    /// Sets the liveness.
    ///
    /// ```
    /// use truffle_actors::proto::{Liveness, ProtoConfig};
    /// let cfg = ProtoConfig::default().with_liveness(Liveness::Heartbeats);
    /// assert_eq!(cfg.liveness, Liveness::Heartbeats);
    /// ```
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// Sets the presence interval and timeout.
    pub fn with_presence(mut self, interval: Duration, timeout: Duration) -> Self {
        self.presence_interval = interval;
        self.presence_timeout = timeout;
        self
    }

    /// How often silent devices are looked for: a tenth of the timeout, so a removal is
    /// at most that late.
    pub fn expire_every(&self) -> Duration {
        (self.presence_timeout / 10).clamp(Duration::from_millis(20), self.presence_interval)
    }
}

/// A slice whose owner signature the runtime has checked.
#[derive(Clone, Debug)]
pub struct Slice {
    /// The store it belongs to.
    pub store: StoreId,
    /// Its owner.
    pub device: DeviceId,
    /// Its version.
    pub version: Version,
    /// The owner's write time (ms since the Unix epoch; informative).
    pub updated_at: u64,
    /// The slice data as MessagePack (decoded by the store, which knows the type).
    pub data: Arc<[u8]>,
    /// The exact signed encoding, relayed as is to peers that ask for it.
    pub raw: Arc<[u8]>,
}

/// A device's periodic "I am alive, and these are my slice versions" (the wire's
/// `presence` body, parsed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Who announces.
    pub device: DeviceId,
    /// Its current run.
    pub incarnation: Incarnation,
    /// Grows with every heartbeat of the run.
    pub seq: u64,
    /// Its listen addresses (informative).
    pub addrs: Vec<String>,
    /// True when `digest` lists only some of its stores.
    pub partial: bool,
    /// Its own slice version in each store (all, or a rotating part).
    pub digest: Vec<(StoreId, Version)>,
}

/// What a fetch asks for: every slice a peer holds in `store`, or only `device`'s.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Want {
    /// The store.
    pub store: StoreId,
    /// One device, or all when `None`.
    pub device: Option<DeviceId>,
}

/// Names an outbound request, so its answer (or failure) can be matched.
pub type RequestId = u64;
/// Names an inbound request, so the answer goes back on the right stream.
pub type Token = u64;

/// The core's timers. Each is scheduled by an [`Output::Schedule`] and comes back as an
/// [`Input::Timer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timer {
    /// Announce presence.
    Presence,
    /// Ask relays for the slices that heartbeats showed missing (at most one request per relay per 200 ms).
    Fetch,
    /// Look for silent devices.
    Expire,
    /// Re-dial bootstrap peers and peers disconnected on purpose.
    Redial,
    /// Stop waiting for leave acknowledgements.
    LeaveDeadline,
    /// Compare views with a random peer (watch liveness).
    AntiEntropy,
}

/// Something that happened to the node: a local command, a verified message, a timer, a
/// connection or subscription change.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// The application joined a store.
    Join(StoreId),
    /// The runtime published this node's own slice (signed from the store's outbox), or
    /// tried to: `reached_nobody` when no peer had joined the store's topic yet.
    Published {
        /// The store.
        store: StoreId,
        /// The version published.
        version: Version,
        /// The signed encoding.
        raw: Arc<[u8]>,
        /// Whether the publish found no subscribed peer.
        reached_nobody: bool,
    },
    /// A store could not use `device`'s slice (its data did not decode as the store's
    /// type): it is not held, so a later copy is not mistaken for a duplicate.
    Undecodable {
        /// The store.
        store: StoreId,
        /// The slice's owner.
        device: DeviceId,
    },
    /// The application asked to leave the mesh gracefully.
    Leave,
    /// The node's listen addresses changed (the full list).
    ListenAddrs(Vec<String>),
    /// A slice from a store topic, relayed by `via`.
    Slice {
        /// The neighbour that forwarded it.
        via: DeviceId,
        /// The verified slice.
        slice: Slice,
    },
    /// A presence heartbeat, relayed by `via`.
    Heartbeat {
        /// The neighbour that forwarded it.
        via: DeviceId,
        /// The verified heartbeat (shared: a simulator hands one to many engines).
        heartbeat: Arc<Heartbeat>,
    },
    /// A signed leave (gossiped), or a direct leave request (authenticated stream).
    Goodbye {
        /// The device that is leaving.
        device: DeviceId,
        /// Its run that is leaving.
        incarnation: Incarnation,
    },
    /// A peer joined a store topic.
    Subscribed {
        /// The peer.
        peer: DeviceId,
        /// The store.
        store: StoreId,
    },
    /// A peer left a store topic.
    Unsubscribed {
        /// The peer.
        peer: DeviceId,
        /// The store.
        store: StoreId,
    },
    /// Local discovery (mDNS) found `peer`; the runtime knows its addresses.
    Discovered {
        /// The peer.
        peer: DeviceId,
    },
    /// A connection to `peer` was established.
    Connected {
        /// The peer.
        peer: DeviceId,
    },
    /// A connection to `peer` closed; `remaining` are still open.
    ConnectionClosed {
        /// The peer.
        peer: DeviceId,
        /// Connections to it still open.
        remaining: u32,
    },
    /// A peer asks for slices.
    Request {
        /// The peer.
        peer: DeviceId,
        /// Names the answer's stream.
        token: Token,
        /// What it wants.
        want: Vec<Want>,
    },
    /// A peer answered one of our fetches (the slices already verified).
    Response {
        /// The peer.
        peer: DeviceId,
        /// The request answered.
        id: RequestId,
        /// Slices received.
        slices: Vec<Slice>,
    },
    /// One of our requests failed (timeout, disconnect, refused).
    RequestFailed {
        /// The peer.
        peer: DeviceId,
        /// The request.
        id: RequestId,
    },
    /// A timer expired.
    Timer(Timer),
    /// `accuser` (signature checked) says `suspicion.device` stopped answering.
    Suspect {
        /// The member that accuses.
        accuser: DeviceId,
        /// Whom, and at which of its heartbeats.
        suspicion: Suspicion,
    },
    /// A dial to `peer` failed.
    DialFailed {
        /// The peer.
        peer: DeviceId,
    },
    /// A dial to `peer` reached its host: the transport connection (TCP) is up, and the
    /// handshakes (noise, yamux) are under way. A host that answers is there; a handshake
    /// that then takes long is most often a slow process, not a cut link.
    DialReached {
        /// The peer.
        peer: DeviceId,
    },
    /// `peer` stopped answering pings on its connection.
    Unresponsive {
        /// The peer.
        peer: DeviceId,
    },
    /// A peer asks something other than slices (watch liveness).
    Asked {
        /// The peer.
        peer: DeviceId,
        /// Names the answer's stream.
        token: Token,
        /// What it asks.
        ask: Ask,
    },
    /// A peer answered one of our [`Output::Ask`]s.
    Replied {
        /// The peer.
        peer: DeviceId,
        /// The request answered.
        id: RequestId,
        /// Its answer.
        reply: Reply,
    },
}

/// What the runtime must do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Join the store's topic.
    Subscribe(StoreId),
    /// Sign and publish this heartbeat on the presence topic.
    PublishHeartbeat(Heartbeat),
    /// Sign and publish a leave of this run on the presence topic, and publish no more
    /// local slices.
    PublishGoodbye {
        /// This run.
        incarnation: Incarnation,
    },
    /// Publish an own slice again (it reached nobody before); report it back as
    /// [`Input::Published`].
    Publish {
        /// The store.
        store: StoreId,
        /// Its version.
        version: Version,
        /// The signed encoding.
        raw: Arc<[u8]>,
    },
    /// Ask `peer` for slices.
    Fetch {
        /// The peer.
        peer: DeviceId,
        /// Names the request.
        id: RequestId,
        /// What to ask for.
        want: Vec<Want>,
    },
    /// Tell `peer` directly that this run is leaving.
    SendGoodbye {
        /// The peer.
        peer: DeviceId,
        /// Names the request.
        id: RequestId,
        /// This run.
        incarnation: Incarnation,
    },
    /// Answer an inbound request with these signed slices.
    Respond {
        /// The request's stream.
        token: Token,
        /// Slices, exactly as their owners signed them.
        slices: Vec<Arc<[u8]>>,
    },
    /// Give a newer remote slice to its store.
    Deliver(Slice),
    /// Remove a device's slice from a store.
    Remove {
        /// The store.
        store: StoreId,
        /// The device.
        device: DeviceId,
        /// Why.
        reason: RemovalReason,
    },
    /// Feed [`Input::Timer`] back after `after`.
    Schedule {
        /// Delay.
        after: Duration,
        /// Which timer.
        timer: Timer,
    },
    /// Dial a known peer: by id, with `addrs` (what it announced in its heartbeats, may be
    /// empty) and the addresses the runtime knows.
    Dial {
        /// The peer.
        peer: DeviceId,
        /// Addresses to try.
        addrs: Vec<Multiaddr>,
    },
    /// Dial an address (a bootstrap peer).
    DialAddr {
        /// The address, possibly ending in `/p2p/<id>`.
        addr: Multiaddr,
    },
    /// Close every connection to `peer` now (to reconnect afresh, or an unresponsive
    /// peer).
    Disconnect {
        /// The peer.
        peer: DeviceId,
    },
    /// Close every connection to `peer` to trim the view, once the requests in flight on
    /// them (either way) are answered, or after a short grace at most: a trim closing a
    /// connection under a fetch made the fetch fail.
    Trim {
        /// The peer.
        peer: DeviceId,
    },
    /// The graceful leave is complete (acknowledged, or timed out).
    LeaveDone {
        /// Peers that did not acknowledge in time.
        unanswered: usize,
    },
    /// Something worth counting or logging.
    Report(Report),
    /// Sign and publish this accusation on the presence topic.
    PublishSuspect(Suspicion),
    /// Ask `peer` something other than slices; the answer comes back as
    /// [`Input::Replied`], a failure as [`Input::RequestFailed`].
    Ask {
        /// The peer.
        peer: DeviceId,
        /// Names the request.
        id: RequestId,
        /// What to ask.
        ask: Ask,
    },
    /// Answer an [`Input::Asked`].
    Reply {
        /// The request's stream.
        token: Token,
        /// The answer.
        reply: Reply,
    },
}

/// Observations for metrics and logs; they change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Report {
    /// A message was dropped.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// The device it named.
        device: DeviceId,
        /// The store it named.
        store: StoreId,
    },
    /// A device was offline (or unknown) and is live again.
    DeviceOnline {
        /// The device.
        device: DeviceId,
    },
    /// A device was accused of being gone (by this node or another member).
    Suspected {
        /// The device.
        device: DeviceId,
        /// Who accused it.
        accuser: DeviceId,
    },
    /// A heartbeat newer than the accusation named ended a suspicion of a device.
    Refuted {
        /// The device.
        device: DeviceId,
        /// The peer the heartbeat came from (the device itself, a gossip relay, or a
        /// neighbour this node asked).
        via: DeviceId,
    },
    /// A device was removed.
    DeviceRemoved {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: RemovalReason,
        /// In how many stores it had a slice.
        stores: usize,
    },
}

/// The latest heartbeats of a member: the latest of all (what watch liveness hands a peer
/// that asks for it) and the latest that announced an address this node can dial (how it
/// fills its view). Usually the same one, shared, not copied: every node keeps one of
/// these per member, so they hold the heartbeats as received and parse the addresses
/// only to dial.
struct Known {
    beat: Arc<Heartbeat>,
    dial: Option<Arc<Heartbeat>>,
}

/// A fetch in flight: what it asked for, and whom we asked so far.
struct PendingFetch {
    want: Vec<Want>,
    tried: Vec<DeviceId>,
}

/// The slices (device, store, version) that heartbeats relayed by one peer showed missing
/// while its [`FETCH_WINDOW`] is open.
struct FetchWindow {
    until: Instant,
    want: Vec<(DeviceId, StoreId, Version)>,
}

struct PendingLeave {
    waiting: DetSet<RequestId>,
}

/// One node's protocol state. See the [module docs](self).
pub struct Engine {
    hasher: DetState,
    me: DeviceId,
    incarnation: Incarnation,
    cfg: ProtoConfig,
    rng: Xoshiro256PlusPlus,
    bootstrap: Vec<Multiaddr>,
    listen_addrs: Vec<String>,
    joined: DetSet<StoreId>,
    /// This node's own slice versions, for the presence digest.
    own: BTreeMap<StoreId, Version>,
    /// Signed slices held, own included, exactly as their owners signed them.
    held: held::Held,
    /// Own slices whose last publish reached nobody: published again when a peer joins.
    unpublished: DetMap<StoreId, (Version, Arc<[u8]>)>,
    membership: Membership,
    seq: u64,
    digest_cursor: usize,
    /// Slices asked for and not yet answered: the version wanted, and when.
    fetched: DetMap<(DeviceId, StoreId), (Version, Instant)>,
    fetches: DetMap<RequestId, PendingFetch>,
    /// Per relay, the wants held back until its fetch window closes.
    fetch_windows: DetMap<DeviceId, FetchWindow>,
    next_request: RequestId,
    /// Open connections per peer.
    conns: DetMap<DeviceId, u32>,
    /// When the first of the open connections to each peer came up.
    connected_at: DetMap<DeviceId, Instant>,
    /// The latest heartbeats heard of each device, and so where to dial it to fill the
    /// view. Kept while membership remembers the device.
    known: DetMap<DeviceId, Known>,
    /// When each member was last dialled to fill the view.
    dialled: DetMap<DeviceId, Instant>,
    /// Redial ticks so far, from a per-node phase (every [`REFRESH_TICKS`]th refreshes the
    /// view).
    ticks: u64,
    /// The store topics each connected peer joined.
    subs: DetMap<DeviceId, DetSet<StoreId>>,
    /// Peers disconnected on purpose, to dial again at the next redial tick.
    reconnect: DetSet<DeviceId>,
    leaving: bool,
    leave: Option<PendingLeave>,
    /// Redial ticks so far with watch liveness (housekeeping that walks every member runs
    /// on every eighth of them; with heartbeats it runs at every expiry check).
    expire_ticks: u64,
    /// Whether [`Engine::start`] ran: one-shot timers are armed only from then on (an
    /// input handled before it, such as the listen addresses at node start, may have its
    /// outputs dropped).
    started: bool,
    /// Watch liveness state.
    watch: watch::WatchState,
}

impl Engine {
    /// A core for device `me` in its run `incarnation`; `seed` drives every random choice
    /// (timer jitter); `bootstrap` are the addresses to keep dialling while not connected.
    pub fn new(
        me: DeviceId,
        incarnation: Incarnation,
        cfg: ProtoConfig,
        seed: u64,
        bootstrap: Vec<Multiaddr>,
    ) -> Self {
        let timeout = cfg.presence_timeout;
        let h = DetState::with_seed(seed.rotate_left(17) ^ 0x7275_6666_6c65);
        Self {
            hasher: h.clone(),
            me,
            incarnation,
            cfg,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            bootstrap,
            listen_addrs: Vec::new(),
            joined: DetSet::with_hasher(h.clone()),
            own: BTreeMap::new(),
            held: held::Held::new(h.clone()),
            unpublished: DetMap::with_hasher(h.clone()),
            membership: Membership::new(timeout, h.clone()),
            seq: 0,
            digest_cursor: 0,
            fetched: DetMap::with_hasher(h.clone()),
            fetches: DetMap::with_hasher(h.clone()),
            fetch_windows: DetMap::with_hasher(h.clone()),
            next_request: 0,
            conns: DetMap::with_hasher(h.clone()),
            connected_at: DetMap::with_hasher(h.clone()),
            known: DetMap::with_hasher(h.clone()),
            dialled: DetMap::with_hasher(h.clone()),
            // Each node starts at its own phase, so the view refreshes and random probes
            // of nodes started together do not all fall in the same second (each opens a
            // connection; in-process meshes of 128 nodes started at once showed bursts of
            // about 100 new connections a second while idle).
            ticks: seed % REFRESH_TICKS,
            subs: DetMap::with_hasher(h.clone()),
            reconnect: DetSet::with_hasher(h.clone()),
            leaving: false,
            leave: None,
            expire_ticks: 0,
            started: false,
            watch: watch::WatchState::new(&h),
        }
    }

    /// Arms the timers. Call once, before the first [`handle`](Self::handle).
    pub fn start(&mut self, now: Instant, out: &mut Vec<Output>) {
        // Jittered, so that nodes started together do not all announce in the same
        // instant, every interval, forever.
        // With watch liveness the other timers are one-shots armed when they have work
        // (`arm_watch_timers`).
        if !self.watching() {
            let first = self.jitter(self.cfg.presence_interval);
            out.push(Output::Schedule {
                after: first,
                timer: Timer::Presence,
            });
            out.push(Output::Schedule {
                after: self.cfg.expire_every(),
                timer: Timer::Expire,
            });
        }
        out.push(Output::Schedule {
            after: self.cfg.redial_every,
            timer: Timer::Redial,
        });
        self.started = true;
        if self.watching() {
            self.watch.announce = true;
            self.arm_watch_timers(now, out);
        }
    }

    /// This device.
    pub fn me(&self) -> DeviceId {
        self.me
    }

    /// Remote devices currently considered live.
    pub fn online_count(&self) -> usize {
        self.membership.online_count()
    }

    /// Peers with at least one open connection (the view).
    pub fn connected_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether `device` is currently considered live.
    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.membership.is_online(device)
    }

    /// Whether `device` is accused and its suspicion not yet over (watch liveness).
    pub fn is_suspected(&self, device: &DeviceId) -> bool {
        self.membership.is_suspected(device)
    }

    /// Whether the application joined `store` here.
    pub fn is_joined(&self, store: &StoreId) -> bool {
        self.joined.contains(store)
    }

    /// The version of `device`'s slice in `store` held here, if any.
    pub fn held_version(&self, store: &StoreId, device: &DeviceId) -> Option<Version> {
        if *device == self.me {
            return self.own.get(store).copied();
        }
        self.membership.held_version(device, store)
    }

    /// Devices forgotten but remembered by a tombstone (so a replay of their old messages
    /// cannot bring them back).
    pub fn tombstones(&self) -> usize {
        self.membership.tombstones()
    }

    /// Size of the state kept: (devices tracked, slices held, fetches remembered).
    pub fn state_size(&self) -> (usize, usize, usize) {
        (
            self.membership.known(),
            self.held.count(),
            self.fetched.len() + self.fetches.len(),
        )
    }

    /// Handles one input at time `now`, appending what to do to `out`.
    pub fn handle(&mut self, input: Input, now: Instant, out: &mut Vec<Output>) {
        self.dispatch(input, now, out);
        if self.watching() && self.started {
            self.arm_watch_timers(now, out);
        }
    }

    fn dispatch(&mut self, input: Input, now: Instant, out: &mut Vec<Output>) {
        match input {
            Input::Join(store) => self.join(store, out),
            Input::Published {
                store,
                version,
                raw,
                reached_nobody,
            } => {
                // A re-publish of an older version (of one that reached nobody) can finish
                // after a newer local write was published: the own version never goes
                // back, or the digest and sync answers would offer the old slice.
                if self.own.get(&store).is_some_and(|held| *held > version) {
                    return;
                }
                self.stirred();
                self.own.insert(store.clone(), version);
                self.held.insert(&store, self.me, version, raw.clone());
                if reached_nobody {
                    self.unpublished.insert(store, (version, raw));
                } else {
                    self.unpublished.remove(&store);
                }
            }
            Input::Undecodable { store, device } => {
                self.membership.unhold(&device, &store);
                self.held.remove(&store, &device);
            }
            Input::Leave => self.start_leave(out),
            Input::ListenAddrs(addrs) => {
                if addrs != self.listen_addrs && self.watching() {
                    self.watch.announce = true;
                }
                self.listen_addrs = addrs;
            }
            Input::Slice { slice, .. } => self.ingest(slice, now, out),
            Input::Heartbeat { via, heartbeat } => self.on_heartbeat(via, heartbeat, now, out),
            Input::Goodbye {
                device,
                incarnation,
            } => {
                if let Some(r) = self.membership.on_leave(device, incarnation, now) {
                    self.remove(r, out);
                }
            }
            Input::Subscribed { peer, store } => self.on_subscribed(peer, store, now, out),
            Input::Unsubscribed { peer, store } => {
                if let Some(s) = self.subs.get_mut(&peer) {
                    s.remove(&store);
                }
            }
            Input::Discovered { peer } => {
                // A local peer feeds the view like any member: dialled while it is short.
                if peer != self.me
                    && !self.leaving
                    && !self.conns.contains_key(&peer)
                    && self.conns.len() < self.cfg.target_peers
                {
                    self.dialled.insert(peer, now);
                    out.push(self.dial(peer));
                }
            }
            Input::Connected { peer } => {
                let first = !self.conns.contains_key(&peer);
                *self.conns.entry(peer).or_default() += 1;
                self.connected_at.entry(peer).or_insert(now);
                if self.watching() {
                    self.on_connected(peer, first, now, out);
                }
            }
            Input::ConnectionClosed { peer, remaining } => {
                if remaining == 0 {
                    // Not a liveness signal on its own: presence timeouts decide removals,
                    // or (watch liveness) a probe that cannot reach the peer again.
                    self.conns.remove(&peer);
                    self.connected_at.remove(&peer);
                    self.subs.remove(&peer);
                    if self.watching() {
                        self.lost_contact(peer, now, out);
                    }
                } else {
                    // One connection closed while another stays: typically a device that
                    // restarted with the same identity, whose old connection goes down
                    // after the new one came up. gossipsub 0.50 keeps the old connection's
                    // send queue then, and gossip to and from the peer stalls until every
                    // connection is gone (rust-libp2p #5097). So drop them all and
                    // connect afresh at the next redial.
                    self.conns.insert(peer, remaining);
                    self.reconnect.insert(peer);
                    out.push(Output::Disconnect { peer });
                }
            }
            Input::Request { token, want, .. } => {
                let slices = self.answer(&want);
                out.push(Output::Respond { token, slices });
            }
            Input::Response { id, slices, .. } => {
                if self.leave_answered(id, out) || self.trim_answered(id, out) {
                    return;
                }
                if let Some(fetch) = self.fetches.remove(&id) {
                    let answered: Vec<(StoreId, DeviceId)> =
                        slices.iter().map(|s| (s.store.clone(), s.device)).collect();
                    // Answered: no longer under way (what is still missing after this
                    // answer, a newer digest entry asks for again).
                    for key in &answered {
                        self.fetched.remove(&(key.1, key.0.clone()));
                    }
                    self.fetch_elsewhere(fetch, &answered, out);
                }
                for s in slices.into_iter().take(MAX_WANTS) {
                    self.ingest(s, now, out);
                }
            }
            Input::RequestFailed { id, .. } => {
                if self.leave_answered(id, out) || self.trim_answered(id, out) {
                    return;
                }
                if let Some(fetch) = self.fetches.remove(&id) {
                    self.fetch_elsewhere(fetch, &[], out);
                }
            }
            Input::Timer(t) => self.on_timer(t, now, out),
            Input::Suspect { accuser, suspicion } => self.on_suspect(accuser, suspicion, now, out),
            Input::DialFailed { peer } => {
                self.dial_failed(&peer);
                if self.watch.probes.contains_key(&peer) {
                    self.accuse(peer, now, out);
                }
            }
            Input::DialReached { peer } => self.dial_reached(peer),
            Input::Unresponsive { peer } => {
                if self.watching() && self.conns.contains_key(&peer) {
                    out.push(Output::Disconnect { peer });
                    self.lost_contact(peer, now, out);
                }
            }
            Input::Asked { peer, token, ask } => self.on_asked(peer, token, ask, now, out),
            Input::Replied { peer, id, reply } => {
                if self.trim_answered(id, out) {
                    return;
                }
                self.on_replied(peer, reply, now, out);
            }
        }
    }

    fn jitter(&mut self, base: Duration) -> Duration {
        // A random factor in [0.8, 1.2): the mean stays `base`.
        base.mul_f64(0.8 + 0.4 * self.rng.random::<f64>())
    }

    fn join(&mut self, store: StoreId, out: &mut Vec<Output>) {
        if !self.joined.insert(store.clone()) {
            return;
        }
        out.push(Output::Subscribe(store.clone()));
        // Peers that joined this store before we did announced it already: exchange slices
        // with them now (their `Subscribed` is behind us).
        let mut already: Vec<DeviceId> = self
            .subs
            .iter()
            .filter(|(_, s)| s.contains(&store))
            .map(|(p, _)| *p)
            .collect();
        already.sort();
        for peer in already {
            self.fetch_all(peer, &store, out);
        }
    }

    fn fetch_all(&mut self, peer: DeviceId, store: &StoreId, out: &mut Vec<Output>) {
        let id = self.request_id();
        out.push(Output::Fetch {
            peer,
            id,
            want: vec![Want {
                store: store.clone(),
                device: None,
            }],
        });
    }

    /// Whether to ask for `device`'s slice in `store` at `version`: not while a request
    /// for that version or a newer one is under way (see [`REFETCH_AFTER`]). Notes the
    /// request when it is to be made.
    fn asking(
        &mut self,
        device: DeviceId,
        store: &StoreId,
        version: Version,
        now: Instant,
    ) -> bool {
        let key = (device, store.clone());
        let pending = self.fetched.get(&key).is_some_and(|(v, t)| {
            *v >= version && now.saturating_duration_since(*t) < REFETCH_AFTER
        });
        if !pending {
            self.fetched.insert(key, (version, now));
        }
        !pending
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        self.next_request
    }

    fn on_subscribed(
        &mut self,
        peer: DeviceId,
        store: StoreId,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if peer == self.me {
            return;
        }
        let h = &self.hasher;
        self.subs
            .entry(peer)
            .or_insert_with(|| DetSet::with_hasher(h.clone()))
            .insert(store.clone());
        if let Some((version, raw)) = self.unpublished.get(&store).cloned() {
            // Publish again now that someone listens, so the slice spreads through the
            // mesh, not only to the neighbours that fetch it.
            out.push(Output::Publish {
                store: store.clone(),
                version,
                raw,
            });
        }
        if self.joined.contains(&store) {
            if self.watching() {
                // Compare by hash first: a converged pair exchanges a few bytes, not every
                // slice of the store (views change all the time; slices seldom differ).
                self.ask_digest(peer, now, out);
            } else {
                self.fetch_all(peer, &store, out);
            }
        }
    }

    fn ingest(&mut self, v: Slice, now: Instant, out: &mut Vec<Output>) {
        if v.device == self.me {
            return;
        }
        if !self.joined.contains(&v.store) {
            out.push(Output::Report(Report::Rejected {
                reason: RejectReason::WrongStore,
                device: v.device,
                store: v.store,
            }));
            return;
        }
        match self.membership.admit(v.device, &v.store, v.version, now) {
            Admit::Apply => {
                self.stirred();
                self.held
                    .insert(&v.store, v.device, v.version, v.raw.clone());
                self.fetched.remove(&(v.device, v.store.clone()));
                out.push(Output::Deliver(v));
            }
            Admit::Stale => out.push(Output::Report(Report::Rejected {
                reason: RejectReason::Stale,
                device: v.device,
                store: v.store,
            })),
            Admit::AfterLeave => out.push(Output::Report(Report::Rejected {
                reason: RejectReason::AfterLeave,
                device: v.device,
                store: v.store,
            })),
        }
    }

    fn remove(&mut self, r: Removal, out: &mut Vec<Output>) {
        self.stirred();
        out.push(Output::Report(Report::DeviceRemoved {
            device: r.device,
            reason: r.reason,
            stores: r.stores.len(),
        }));
        for store in r.stores {
            self.drop_slice(store, r.device, r.reason, out);
        }
        self.held.remove_device(&r.device);
    }

    fn drop_slice(
        &mut self,
        store: StoreId,
        device: DeviceId,
        reason: RemovalReason,
        out: &mut Vec<Output>,
    ) {
        self.held.remove(&store, &device);
        if self.joined.contains(&store) {
            out.push(Output::Remove {
                store,
                device,
                reason,
            });
        }
    }

    fn on_heartbeat(
        &mut self,
        via: DeviceId,
        p: Arc<Heartbeat>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let device = p.device;
        if device == self.me {
            return;
        }
        let suspected = self.membership.is_suspected(&device);
        let outcome =
            self.membership
                .on_presence(device, p.incarnation, p.seq, &p.digest, !p.partial, now);
        if !outcome.fresh {
            return;
        }
        self.learn(device, &p);
        self.stirred();
        if suspected && !self.membership.is_suspected(&device) {
            out.push(Output::Report(Report::Refuted { device, via }));
        }
        if outcome.came_online {
            out.push(Output::Report(Report::DeviceOnline { device }));
        }
        for store in outcome.drop_stale_incarnation {
            self.drop_slice(store, device, RemovalReason::Restarted, out);
        }
        // Anti-entropy: fetch what the digest shows we are missing, from whoever relayed it.
        let mut want = Vec::new();
        for (store, version) in p.digest.iter().cloned() {
            if !self.joined.contains(&store) || !self.membership.wants(&device, &store, version) {
                continue;
            }
            if self.asking(device, &store, version, now) {
                want.push((device, store, version));
            }
        }
        if want.is_empty() {
            return;
        }
        match self.fetch_windows.get_mut(&via) {
            Some(w) if now < w.until => {
                // Past the room a want is dropped; it was noted in `fetched`, so it is
                // asked again by the next heartbeat that shows it after REFETCH_AFTER.
                let room = MAX_WANTS.saturating_sub(w.want.len());
                w.want.extend(want.into_iter().take(room));
            }
            // Closed, but its timer has not fired (or was lost): what it held goes too.
            Some(_) => {
                let mut held = self.held_wants(via);
                held.extend(want);
                self.fetch_from_relay(via, held, now, out);
            }
            None => self.fetch_from_relay(via, want, now, out),
        }
    }

    /// Asks `via` for `want` and opens its fetch window (see [`FETCH_WINDOW`]).
    fn fetch_from_relay(
        &mut self,
        via: DeviceId,
        want: Vec<(DeviceId, StoreId, Version)>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.fetch_windows.insert(
            via,
            FetchWindow {
                until: now + FETCH_WINDOW,
                want: Vec::new(),
            },
        );
        out.push(Output::Schedule {
            after: FETCH_WINDOW,
            timer: Timer::Fetch,
        });
        let want = want
            .into_iter()
            .map(|(device, store, _)| Want {
                store,
                device: Some(device),
            })
            .collect();
        self.fetch(via, want, Vec::new(), out);
    }

    /// Closes `via`'s fetch window: what it held that is still unmet (gossip may have
    /// brought it, or the store been left, meanwhile).
    fn held_wants(&mut self, via: DeviceId) -> Vec<(DeviceId, StoreId, Version)> {
        let mut held = self
            .fetch_windows
            .remove(&via)
            .map(|w| w.want)
            .unwrap_or_default();
        held.retain(|(d, store, v)| {
            self.joined.contains(store) && self.membership.wants(d, store, *v)
        });
        held
    }

    /// The fetch timer: closes every window whose period is over, asking each relay for
    /// what it held that gossip has not brought meanwhile (which opens its window again).
    fn close_fetch_windows(&mut self, now: Instant, out: &mut Vec<Output>) {
        let mut due: Vec<DeviceId> = self
            .fetch_windows
            .iter()
            .filter(|(_, w)| w.until <= now + watch::TIMER_SLACK)
            .map(|(via, _)| *via)
            .collect();
        due.sort();
        for via in due {
            let want = self.held_wants(via);
            if !want.is_empty() {
                self.fetch_from_relay(via, want, now, out);
            }
        }
    }

    /// Asks `peer` for `want`. Wants for one device's slice are remembered, so that the
    /// ones `peer` cannot answer are asked of another neighbour at once (see
    /// [`Self::fetch_elsewhere`]) rather than at the next presence round.
    fn fetch(
        &mut self,
        peer: DeviceId,
        want: Vec<Want>,
        mut tried: Vec<DeviceId>,
        out: &mut Vec<Output>,
    ) {
        let id = self.request_id();
        let single: Vec<Want> = want
            .iter()
            .filter(|w| w.device.is_some())
            .cloned()
            .collect();
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
        out.push(Output::Fetch { peer, id, want });
    }

    /// The peer asked in `fetch` could not give some of what we wanted (it lacks them, or
    /// the request failed): ask another connected peer that joined the store, up to
    /// [`FETCH_TRIES`] peers in all. A relaying peer need not hold the slice whose
    /// presence it relayed; a neighbour that does is usually one request away. When no
    /// one has it, the next presence of the device triggers a new fetch at once.
    fn fetch_elsewhere(
        &mut self,
        fetch: PendingFetch,
        answered: &[(StoreId, DeviceId)],
        out: &mut Vec<Output>,
    ) {
        // An answer may carry thousands of slices (a whole store at join): a set, so this
        // stays linear.
        let answered: HashSet<(&StoreId, &DeviceId)> =
            answered.iter().map(|(s, d)| (s, d)).collect();
        let missing: Vec<Want> = fetch
            .want
            .into_iter()
            .filter(|w| {
                w.device
                    .as_ref()
                    .is_none_or(|d| !answered.contains(&(&w.store, d)))
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        if fetch.tried.len() >= FETCH_TRIES {
            self.forget_fetches(&missing);
            return;
        }
        // Per store: the next peer must have joined that store.
        let mut by_store: BTreeMap<StoreId, Vec<Want>> = BTreeMap::new();
        for w in missing {
            by_store.entry(w.store.clone()).or_default().push(w);
        }
        for (store, want) in by_store {
            // A random one: the lowest id, as before, sent every neighbour's retries of a
            // join wave to the same few nodes.
            let mut candidates: Vec<DeviceId> = self
                .subs
                .iter()
                .filter(|(p, s)| s.contains(&store) && !fetch.tried.contains(p))
                .map(|(p, _)| *p)
                .collect();
            candidates.sort();
            let next = match candidates.len() {
                0 => None,
                n => Some(candidates[self.rng.random_range(0..n)]),
            };
            match next {
                Some(peer) => self.fetch(peer, want, fetch.tried.clone(), out),
                None => self.forget_fetches(&want),
            }
        }
    }

    fn forget_fetches(&mut self, want: &[Want]) {
        for w in want {
            if let Some(d) = w.device {
                self.fetched.remove(&(d, w.store.clone()));
            }
        }
    }

    /// The held slices `want` names, each at most once however often it is named (a
    /// whole-store want covers every device's slice in that store), up to
    /// `max_response_bytes`. The slices are shared, not copied.
    fn answer(&self, want: &[Want]) -> Vec<Arc<[u8]>> {
        let want = &want[..want.len().min(MAX_WANTS)];
        let whole: HashSet<&StoreId> = want
            .iter()
            .filter(|w| w.device.is_none())
            .map(|w| &w.store)
            .collect();
        let mut named: HashSet<(&StoreId, Option<&DeviceId>)> = HashSet::new();
        let mut slices = Vec::new();
        let mut bytes = 0usize;
        'wants: for w in want {
            let covered = w.device.is_some() && whole.contains(&w.store);
            if covered || !named.insert((&w.store, w.device.as_ref())) {
                continue;
            }
            let Some(held) = self.held.store(&w.store) else {
                continue;
            };
            let pick: Vec<&Arc<[u8]>> = match &w.device {
                None => held.slices().collect(),
                Some(d) => held.slice(d).into_iter().collect(),
            };
            for raw in pick {
                // Each entry costs its bytes plus a msgpack bin header (at most 5 bytes).
                if bytes + raw.len() + 5 > self.cfg.max_response_bytes {
                    break 'wants;
                }
                bytes += raw.len() + 5;
                slices.push(raw.clone());
            }
        }
        slices
    }

    fn heartbeat(&mut self) -> Heartbeat {
        self.seq += 1;
        let n = self.own.len();
        let partial = n > MAX_DIGEST_ENTRIES;
        let entries = self.own.iter().map(|(s, v)| (s.clone(), *v));
        let digest: Vec<(StoreId, Version)> = if partial {
            // Rotate through the stores so each is announced every few rounds.
            let start = self.digest_cursor % n;
            self.digest_cursor = (start + MAX_DIGEST_ENTRIES) % n;
            entries
                .cycle()
                .skip(start)
                .take(MAX_DIGEST_ENTRIES)
                .collect()
        } else {
            entries.collect()
        };
        Heartbeat {
            device: self.me,
            incarnation: self.incarnation,
            seq: self.seq,
            addrs: self
                .listen_addrs
                .iter()
                .take(MAX_PRESENCE_ADDRS)
                .cloned()
                .collect(),
            partial,
            digest,
        }
    }

    fn on_timer(&mut self, t: Timer, now: Instant, out: &mut Vec<Output>) {
        if self.watching() {
            return self.on_watch_timer(t, now, out);
        }
        match t {
            Timer::Presence => {
                let next = self.jitter(self.cfg.presence_interval);
                out.push(Output::Schedule {
                    after: next,
                    timer: Timer::Presence,
                });
                if !self.leaving {
                    let hb = self.heartbeat();
                    out.push(Output::PublishHeartbeat(hb));
                }
            }
            Timer::Expire => {
                out.push(Output::Schedule {
                    after: self.cfg.expire_every(),
                    timer: Timer::Expire,
                });
                self.housekeeping(now);
                for r in self.membership.expire(now) {
                    self.remove(r, out);
                }
            }
            Timer::Redial => {
                out.push(Output::Schedule {
                    after: self.cfg.redial_every,
                    timer: Timer::Redial,
                });
                if !self.leaving {
                    self.dial_tick(now, out);
                }
            }
            // Armed with watch liveness only.
            Timer::AntiEntropy => {}
            Timer::LeaveDeadline => self.leave_deadline(out),
            Timer::Fetch => self.close_fetch_windows(now, out),
        }
    }

    /// Timers with watch liveness: the redial tick is periodic, the others are one-shots
    /// armed by [`Engine::arm_watch_timers`] when they have work.
    fn on_watch_timer(&mut self, t: Timer, now: Instant, out: &mut Vec<Output>) {
        if !self.watch_timer_fired(t, now) {
            return;
        }
        match t {
            Timer::Presence => self.announce_if_due(now, out),
            Timer::Expire => {
                self.prune_recent(now);
                self.watch_expire(now, out);
            }
            Timer::Redial => {
                out.push(Output::Schedule {
                    after: self.cfg.redial_every,
                    timer: Timer::Redial,
                });
                self.check_health(now);
                // Housekeeping that walks every member, every eighth tick (and the scan
                // for unheard members in `watch_tick`, every fourth): its other per-tick
                // work does not grow with N.
                self.expire_ticks += 1;
                if self.expire_ticks.is_multiple_of(8) {
                    self.housekeeping(now);
                } else {
                    self.prune_recent(now);
                }
                self.watch_expire(now, out);
                if !self.leaving {
                    self.dial_tick(now, out);
                    self.watch_tick(now, out);
                }
            }
            Timer::AntiEntropy => {
                if !self.leaving {
                    self.compare_if_due(now, out);
                }
            }
            Timer::LeaveDeadline => self.leave_deadline(out),
            Timer::Fetch => self.close_fetch_windows(now, out),
        }
    }

    /// The redial tick's dialling: redials and the view, with a refresh of the view every
    /// [`REFRESH_TICKS`] ticks.
    fn dial_tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.ticks += 1;
        let refresh = self.ticks.is_multiple_of(REFRESH_TICKS);
        self.redial(refresh, out);
        self.maintain_view(now, refresh, out);
    }

    /// Forgets members silent past the forget window, and the short-lived records.
    fn housekeeping(&mut self, now: Instant) {
        let forget_after = (self.cfg.presence_timeout * 10).max(self.cfg.forget_after);
        self.membership.forget_silent(now, forget_after);
        let m = &self.membership;
        self.known.retain(|d, _| m.knows(d));
        self.prune_recent(now);
    }

    /// Drops dial and fetch records past their back-off.
    fn prune_recent(&mut self, now: Instant) {
        self.dialled
            .retain(|_, t| now.saturating_duration_since(*t) < DIAL_BACKOFF);
        self.fetched
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < REFETCH_AFTER);
    }

    fn leave_deadline(&mut self, out: &mut Vec<Output>) {
        if let Some(l) = self.leave.take() {
            out.push(Output::LeaveDone {
                unanswered: l.waiting.len(),
            });
        }
    }

    /// Re-dials peers disconnected on purpose, and bootstrap peers we are not connected to
    /// while the view is short (after a restart, a partition, a network change). Addresses
    /// with `/p2p/<id>` are re-dialled whenever that peer is not connected; bare addresses
    /// only while we have no connection at all. Every [`REFRESH_TICKS`]th tick one
    /// bootstrap address is dialled even when the view is full, so that the two sides of a
    /// healed partition meet again.
    fn redial(&mut self, refresh: bool, out: &mut Vec<Output>) {
        let mut again: Vec<DeviceId> = self.reconnect.drain().collect();
        again.sort();
        for peer in again {
            if !self.conns.contains_key(&peer) {
                out.push(self.dial(peer));
            }
        }
        let short = self.conns.len() < self.cfg.target_peers;
        // Watch liveness mixes the view with its random probes; the refresh dial of a
        // bootstrap peer would have every node that shares one seed dial it in the same
        // second.
        let refresh_pick = match refresh && !self.bootstrap.is_empty() && !self.watching() {
            true => self.rng.random_range(0..self.bootstrap.len()),
            false => usize::MAX,
        };
        let none_connected = self.conns.is_empty();
        for (i, addr) in self.bootstrap.iter().enumerate() {
            let peer = p2p_peer(addr);
            let dial = match peer {
                Some(peer) => {
                    peer != self.me
                        && !self.conns.contains_key(&peer)
                        && (short || i == refresh_pick)
                }
                None => none_connected,
            };
            if dial {
                out.push(Output::DialAddr { addr: addr.clone() });
            }
        }
    }

    /// Remembers where `device` says it listens (its latest heartbeat, signed by it).
    /// Keeps `p` as `device`'s latest heartbeat, and as the one to dial it by if it
    /// announces an address that can be dialled (else the addresses heard before stay).
    fn learn(&mut self, device: DeviceId, p: &Arc<Heartbeat>) {
        if let Some(k) = self.known.get_mut(&device) {
            k.beat = p.clone();
            if k.dial.as_ref().is_some_and(|d| d.addrs == p.addrs)
                || !dial_addrs(device, &p.addrs).is_empty()
            {
                k.dial = Some(p.clone());
            }
            return;
        }
        let dial = (!dial_addrs(device, &p.addrs).is_empty()).then(|| p.clone());
        self.known.insert(
            device,
            Known {
                beat: p.clone(),
                dial,
            },
        );
    }

    /// Whether this node knows an address to dial `peer` at.
    fn dialable(&self, peer: &DeviceId) -> bool {
        self.known.get(peer).is_some_and(|k| k.dial.is_some())
    }

    /// Dials `peer` at the addresses it announced (if any).
    fn dial(&self, peer: DeviceId) -> Output {
        let addrs = match self.known.get(&peer).and_then(|k| k.dial.as_ref()) {
            Some(beat) => dial_addrs(peer, &beat.addrs),
            None => Vec::new(),
        };
        Output::Dial { peer, addrs }
    }

    /// Connections past this many are trimmed: the target and a quarter (10 for 8). The
    /// margin keeps a view that a refresh or an incoming connection took past the target
    /// from being trimmed at once; a wider one let views settle well above the target
    /// (11 on average at 128 nodes with a bound of 12, each connection costing memory and
    /// wake-ups).
    fn view_high(&self) -> usize {
        self.cfg.target_peers + self.cfg.target_peers.div_ceil(4)
    }

    /// Keeps the view (the peers this node is connected to) near the target: dials random
    /// members while it is short (half the shortfall per tick), closes random connections
    /// (never young ones) while it is above [`Engine::view_high`], and every
    /// [`REFRESH_TICKS`] ticks dials one more member so the overlay keeps mixing. Members come from the addresses announced in
    /// heartbeats: live ones first when filling, ones silent lately (perhaps the other
    /// side of a partition) first when refreshing.
    fn maintain_view(&mut self, now: Instant, refresh: bool, out: &mut Vec<Output>) {
        let target = self.cfg.target_peers;
        let high = self.view_high();
        let have = self.conns.len();
        let short = have < target;
        // Dials still under way count: a dial can take longer than a tick when the machine
        // is busy, and dialling again every tick overshot the view (to 20 connections per
        // node in a 128-node join wave).
        let pending = self
            .dialled
            .iter()
            .filter(|(d, t)| {
                !self.conns.contains_key(*d) && now.saturating_duration_since(**t) < DIAL_BACKOFF
            })
            .count();
        let want = match (short, refresh) {
            // Half of what is missing per tick: members short at the same time (a join
            // wave, a heal) dial each other, so each gets about as many connections as it
            // dials. Dialling all that was missing at once overshot to twice the target
            // in a 128-node join wave, every connection a handshake and more gossip.
            (true, _) => target.saturating_sub(have + pending).div_ceil(2),
            // A refresh adds one connection: not past the trim bound.
            (false, true) => usize::from(have + pending < high),
            (false, false) => 0,
        };
        if want > 0 {
            let mut candidates: Vec<(bool, DeviceId)> = self
                .known
                .iter()
                .filter(|(_, k)| k.dial.is_some())
                .map(|(d, _)| d)
                .filter(|d| {
                    **d != self.me
                        && !self.conns.contains_key(*d)
                        && self
                            .dialled
                            .get(*d)
                            .is_none_or(|t| now.saturating_duration_since(*t) >= DIAL_BACKOFF)
                })
                // Sorted live members first; when refreshing a full view, silent ones first
                // (most likely across a partition that may have healed).
                .map(|d| (self.membership.is_online(d) == (refresh && !short), *d))
                .collect();
            candidates.sort();
            // Each of the two groups in random order.
            let split = candidates.iter().take_while(|c| !c.0).count();
            let (first, second) = candidates.split_at_mut(split);
            shuffle(&mut self.rng, first);
            shuffle(&mut self.rng, second);
            for (_, peer) in candidates.into_iter().take(want) {
                self.dialled.insert(peer, now);
                if short && self.watching() {
                    // A live member this node cannot connect to is accused like any other
                    // probe that fails: a node that learned a dead member second-hand (after
                    // a restart) is otherwise connected to none of its old neighbours, and
                    // nobody is left to accuse it.
                    self.probe_for_view(peer, now);
                }
                out.push(self.dial(peer));
            }
        }
        if have > high {
            let mut old: Vec<DeviceId> = self
                .connected_at
                .iter()
                .filter(|(_, t)| now.saturating_duration_since(**t) >= TRIM_MIN_AGE)
                .map(|(d, _)| *d)
                .collect();
            old.sort();
            shuffle(&mut self.rng, &mut old);
            for peer in old.into_iter().take(have - high) {
                if self.watching() {
                    self.trim(peer, now, out);
                } else {
                    out.push(Output::Trim { peer });
                }
            }
        }
    }

    fn start_leave(&mut self, out: &mut Vec<Output>) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        out.push(Output::PublishGoodbye {
            incarnation: self.incarnation,
        });
        let mut peers: Vec<DeviceId> = self.conns.keys().copied().collect();
        peers.sort();
        let mut waiting = DetSet::with_hasher(self.hasher.clone());
        for peer in peers {
            let id = self.request_id();
            waiting.insert(id);
            out.push(Output::SendGoodbye {
                peer,
                id,
                incarnation: self.incarnation,
            });
        }
        if waiting.is_empty() {
            out.push(Output::LeaveDone { unanswered: 0 });
        } else {
            self.leave = Some(PendingLeave { waiting });
            out.push(Output::Schedule {
                after: self.cfg.leave_timeout,
                timer: Timer::LeaveDeadline,
            });
        }
    }

    fn leave_answered(&mut self, id: RequestId, out: &mut Vec<Output>) -> bool {
        let Some(l) = self.leave.as_mut() else {
            return false;
        };
        if !l.waiting.remove(&id) {
            return false;
        }
        if l.waiting.is_empty() {
            self.leave = None;
            out.push(Output::LeaveDone { unanswered: 0 });
        }
        true
    }
}

/// Puts `v` in a random order drawn from `rng` (Fisher–Yates).
fn shuffle<T>(rng: &mut Xoshiro256PlusPlus, v: &mut [T]) {
    for k in (1..v.len()).rev() {
        let j = rng.random_range(0..=k);
        v.swap(k, j);
    }
}

/// The addresses `device` announced that can be dialled: the first
/// [`MAX_PRESENCE_ADDRS`], those that parse, less any naming another peer.
fn dial_addrs(device: DeviceId, announced: &[String]) -> Vec<Multiaddr> {
    announced
        .iter()
        .take(MAX_PRESENCE_ADDRS)
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        // An address naming another peer is not one of the device's own.
        .filter(|a| p2p_peer(a).is_none_or(|p| p == device))
        .collect()
}

/// The peer an address names with a trailing `/p2p/<id>`, if it does.
fn p2p_peer(addr: &Multiaddr) -> Option<DeviceId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(DeviceId::from(id)),
        _ => None,
    })
}

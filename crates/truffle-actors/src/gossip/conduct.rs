//! What each neighbour sends this node over gossip (messages and bytes, totals and rates),
//! and what it costs the neighbour in gossipsub score when that is junk.
//!
//! gossipsub scores invalid messages itself (Truffle reports them `Reject`, P4), but two
//! kinds of junk are valid messages or never reach validation, and cost a sender nothing
//! there:
//!
//! * versions of a peer's *own* slice past the gossip rate ([`crate::proto::gate`]): still
//!   verified and used here, but not forwarded (`Ignore`, no score). These count only
//!   with an allowance set (`own_versions_allowance`, off by default): a fast writer is
//!   not misbehaving, its neighbours use every version, and the `b5` benchmark has one
//!   deliver over 20,000 a second;
//! * messages on topics this node has not joined, which the inbound transform drops before
//!   gossipsub caches them (gossipsub scores only topics with score parameters).
//!
//! Each such message adds points to its sender's meter, a leaky bucket that drains at
//! [`LEAK_PER_SEC`]. A meter that goes past [`SLACK`] fills at once to the slack plus
//! [`MAX_EXCESS`]; what it holds past the slack is the peer's application score, negated
//! (gossipsub's P5, weight 10): −4,000 at first, far under the graylist threshold (−80),
//! so gossipsub ignores everything the peer sends and prunes it from every mesh. It is
//! back above the threshold once the meter has drained to within 8 points of the slack
//! (about 8 s of quiet: gossipsub drops a graylisted peer's messages before the
//! transform, so they add nothing), and at 0 at the slack.
//!
//! Honest peers stay clear of it by construction, which is why only these kinds count:
//!
//! * only a peer's own slices count against it (the slice's device is the neighbour that
//!   sent it). A relay is never charged for what it relays: an honest relay keeps to the
//!   same rate, but the versions of one device that several relays forward, or that
//!   arrive bunched, can still be over the rate here;
//! * with an allowance of `a` versions a second, an honest writer faster than the gossip
//!   rate is charged 50 / `a` points a version, so it may sign `a` versions a second past
//!   the rate (a burst of 2 `a`) before it loses score; with 500, a member flooding
//!   11,000 a second crosses the line in a few hundred milliseconds of what its
//!   neighbour manages to check;
//! * an honest peer sends a node only messages on topics it subscribed to, and Truffle
//!   never leaves a store; a peer with a stale view of this node's subscriptions (an old
//!   connection of a previous run, rust-libp2p #5097) may, for a while. Such messages
//!   cost 0.25 each: 200 a second (a burst of 400) are free.
//!
//! Peers sending more than a configured number of gossip messages a second (off by
//! default) are charged 0.1 a message past it, as a writer past an allowance of 500.
//!
//! The swarm task applies the scores on a tick ([`PeerConduct::tick`]), so a peer is
//! graylisted at most one tick after it crossed the line. The ledger is bounded: at most
//! [`MAX_TRACKED_PEERS`] peers; a disconnected peer is kept only while its meter drains
//! (gossipsub keeps a disconnected peer's score for an hour, so the application score must
//! be set back to 0 before the entry goes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::metrics::{inc, Counters};

/// Points a peer may hold before it loses score.
pub(crate) const SLACK: f64 = 100.0;
/// Points drained from every meter per second.
pub(crate) const LEAK_PER_SEC: f64 = 50.0;
/// What a meter that crossed the slack holds past it (an application score of −400, × 10):
/// far below the graylist threshold, and more than the most topic credit a peer can earn
/// (3,600), yet drained in about 8 s once the peer stops.
pub(crate) const MAX_EXCESS: f64 = 400.0;
/// Most peers with a ledger entry.
pub(crate) const MAX_TRACKED_PEERS: usize = 4096;

/// Points of a message on a topic not joined here: 200 a second are free.
const UNJOINED_POINTS: f64 = 0.25;
/// Points of a message past the peer's inbound message rate: 500 a second past it are
/// free.
const OVER_PEER_RATE_POINTS: f64 = 0.1;

/// What one peer sent, as introspection shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Traffic {
    /// Gossip messages received from the peer since it connected (every copy gossipsub
    /// read, duplicates included, until it graylisted the peer).
    pub messages: u64,
    /// Their data bytes.
    pub bytes: u64,
    /// Messages per second over the last tick.
    pub messages_per_sec: f64,
    /// Bytes per second over the last tick.
    pub bytes_per_sec: f64,
    /// Messages that cost the peer points.
    pub charged: u64,
}

#[derive(Debug)]
struct Ledger {
    traffic: Traffic,
    /// Messages and bytes since the last tick.
    window: (u64, u64),
    /// Points held, as of `at`.
    level: f64,
    at: Instant,
    /// The application score last handed to gossipsub.
    applied: f64,
    connected: bool,
    /// The inbound message rate as a theoretical arrival time (GCRA, as in the gossip
    /// gate).
    next: Instant,
}

impl Ledger {
    fn new(now: Instant) -> Self {
        Self {
            traffic: Traffic::default(),
            window: (0, 0),
            level: 0.0,
            at: now,
            applied: 0.0,
            connected: true,
            next: now,
        }
    }

    fn drain(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level - secs * LEAK_PER_SEC).max(0.0);
        self.at = self.at.max(now);
    }

    fn score(&self) -> f64 {
        -(self.level - SLACK).max(0.0)
    }
}

struct State {
    peers: HashMap<PeerId, Ledger>,
    /// When the last tick was.
    tick: Instant,
    /// Per peer, gossip messages past `burst` at once are charged unless one per
    /// `interval` (none: no rate).
    rate: Option<(Duration, u32)>,
    /// Points of one of a peer's own versions past the gossip rate (none: free).
    own_points: Option<f64>,
    counters: Arc<Counters>,
}

/// The per-peer ledger, shared by gossipsub's inbound transform and the swarm task.
/// Cheap to clone (one `Arc`). See the [module docs](self).
#[derive(Clone)]
pub(crate) struct PeerConduct(Arc<Mutex<State>>);

impl PeerConduct {
    /// A ledger charging peers past `rate` gossip messages a second (`(per_second,
    /// burst)`), when given, and peers sending more than `own_allowance` versions of their
    /// own slices a second past the gossip rate, when given.
    pub fn new(
        rate: Option<(u32, u32)>,
        own_allowance: Option<u32>,
        counters: Arc<Counters>,
        now: Instant,
    ) -> Self {
        let rate = rate
            .filter(|(per_sec, _)| *per_sec > 0)
            .map(|(per_sec, burst)| (Duration::from_secs(1) / per_sec, burst.max(1)));
        let own_points = own_allowance
            .filter(|a| *a > 0)
            .map(|a| LEAK_PER_SEC / f64::from(a));
        Self(Arc::new(Mutex::new(State {
            peers: HashMap::new(),
            tick: now,
            rate,
            own_points,
            counters,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer's ledger, made if there is room: first by forgetting a disconnected peer
    /// whose meter is empty, else the disconnected peer with the fewest points.
    fn ledger(
        peers: &mut HashMap<PeerId, Ledger>,
        peer: PeerId,
        now: Instant,
    ) -> Option<&mut Ledger> {
        if !peers.contains_key(&peer) && peers.len() >= MAX_TRACKED_PEERS {
            let victim = peers
                .iter()
                .filter(|(_, l)| !l.connected)
                .min_by(|a, b| a.1.level.total_cmp(&b.1.level))
                .map(|(p, _)| *p)?;
            peers.remove(&victim);
        }
        Some(peers.entry(peer).or_insert_with(|| Ledger::new(now)))
    }

    /// A gossip message of `bytes` data bytes from `peer`; `joined` when its topic is one
    /// this node joined.
    pub fn inbound(&self, peer: PeerId, bytes: usize, joined: bool, now: Instant) {
        let mut s = self.lock();
        let State {
            peers,
            rate,
            counters,
            ..
        } = &mut *s;
        let Some(l) = Self::ledger(peers, peer, now) else {
            return;
        };
        l.traffic.messages += 1;
        l.traffic.bytes += bytes as u64;
        l.window.0 += 1;
        l.window.1 += bytes as u64;
        if let Some((interval, burst)) = *rate {
            if l.next > now + interval * (burst - 1) {
                Self::charge_ledger(l, OVER_PEER_RATE_POINTS, now);
                inc(&counters.messages_charged);
            } else {
                l.next = l.next.max(now) + interval;
            }
        }
        if !joined {
            Self::charge_ledger(l, UNJOINED_POINTS, now);
            inc(&counters.messages_charged);
        }
    }

    fn charge_ledger(l: &mut Ledger, points: f64, now: Instant) {
        l.drain(now);
        l.level += points;
        if l.level > SLACK {
            // Past the slack the meter fills at once: a peer that crossed it stays
            // graylisted until it has kept quiet for about 8 s, rather than being heard
            // again as soon as it dips under the threshold, flood still running.
            l.level = SLACK + MAX_EXCESS;
        }
        l.traffic.charged += 1;
    }

    /// `peer` sent a version of its own slice past the gossip rate: it costs the peer
    /// points if an allowance is set.
    pub fn own_version_past_rate(&self, peer: PeerId, now: Instant) {
        let mut s = self.lock();
        let Some(points) = s.own_points else {
            return;
        };
        inc(&s.counters.messages_charged);
        if let Some(l) = Self::ledger(&mut s.peers, peer, now) {
            Self::charge_ledger(l, points, now);
        }
    }

    /// The peer's first connection opened (again).
    pub fn connected(&self, peer: PeerId, now: Instant) {
        let mut s = self.lock();
        if let Some(l) = Self::ledger(&mut s.peers, peer, now) {
            l.connected = true;
        }
    }

    /// The peer's last connection closed: its traffic is forgotten, its meter kept until
    /// it drains.
    pub fn disconnected(&self, peer: PeerId) {
        if let Some(l) = self.lock().peers.get_mut(&peer) {
            l.connected = false;
            l.traffic = Traffic::default();
            l.window = (0, 0);
        }
    }

    /// Drains every meter and computes the rates since the last tick. Returns the peers
    /// whose application score is not 0, or just went back to 0, with that score (handed
    /// to gossipsub again at every tick while it is not 0, in case gossipsub did not know
    /// the peer yet); forgets disconnected peers whose meter is empty.
    pub fn tick(&self, now: Instant) -> Vec<(PeerId, f64)> {
        let mut s = self.lock();
        let secs = now.saturating_duration_since(s.tick).as_secs_f64();
        s.tick = now;
        let mut changed = Vec::new();
        s.peers.retain(|peer, l| {
            l.drain(now);
            if secs > 0.0 {
                l.traffic.messages_per_sec = l.window.0 as f64 / secs;
                l.traffic.bytes_per_sec = l.window.1 as f64 / secs;
            }
            l.window = (0, 0);
            let score = l.score();
            if score != l.applied || score != 0.0 {
                l.applied = score;
                changed.push((*peer, score));
            }
            l.connected || l.level > 0.0
        });
        changed
    }

    /// What `peer` sent since it connected, if it is tracked.
    pub fn traffic(&self, peer: &PeerId) -> Option<Traffic> {
        self.lock().peers.get(peer).map(|l| l.traffic)
    }

    /// Peers tracked (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_flooding_author_loses_score_within_a_tick_and_gets_it_back_once_it_stops() {
        let t0 = Instant::now();
        let c = PeerConduct::new(None, Some(500), Default::default(), t0);
        let rogue = PeerId::random();
        c.connected(rogue, t0);
        // 12,500 own versions a second past the rate: past the slack after about 85 ms
        // (and 4.2 points drained), when the meter fills.
        for i in 0..2400u64 {
            c.own_version_past_rate(rogue, t0 + Duration::from_micros(i * 80));
            if i == 900 {
                assert!(c.tick(t0 + Duration::from_micros(i * 80)).is_empty());
            }
        }
        let scores = c.tick(t0 + ms(200));
        assert_eq!(scores.len(), 1);
        assert!(
            (-MAX_EXCESS..=-MAX_EXCESS + 2.0).contains(&scores[0].1),
            "{scores:?}"
        );
        // More of it keeps it there; once it stops, the meter drains: about 8 s to the
        // slack, then the score is 0 again.
        for i in 0..20_000u64 {
            c.own_version_past_rate(rogue, t0 + ms(200) + Duration::from_micros(i * 80));
        }
        let stop = t0 + ms(1800);
        let scores = c.tick(stop);
        assert_eq!(scores.len(), 1);
        assert!(scores[0].1 < -MAX_EXCESS + 0.1, "{scores:?}");
        let score = c.tick(stop + ms(7000))[0].1;
        assert!((-51.0..=-49.0).contains(&score), "{score}");
        assert_eq!(c.tick(stop + ms(8100)), vec![(rogue, 0.0)]);
        assert!(
            c.tick(stop + ms(20_000)).is_empty(),
            "unchanged: not handed again"
        );
    }

    #[test]
    fn an_honest_fast_writer_and_a_few_stray_messages_cost_nothing() {
        let t0 = Instant::now();
        let c = PeerConduct::new(None, Some(500), Default::default(), t0);
        let writer = PeerId::random();
        c.connected(writer, t0);
        // 450 versions a second past the rate (500 a second in all, for 60 s), and 300
        // messages on a topic not joined here at once.
        for i in 0..27_000u64 {
            let now = t0 + Duration::from_micros(i * 2222);
            c.own_version_past_rate(writer, now);
            if i % 500 == 0 {
                assert!(c.tick(now).is_empty(), "charged at {i}");
            }
        }
        for _ in 0..300 {
            c.inbound(writer, 100, false, t0 + ms(60_000));
        }
        assert!(c.tick(t0 + ms(60_000)).is_empty());
        let t = c.traffic(&writer).unwrap();
        assert_eq!((t.messages, t.bytes, t.charged), (300, 30_000, 27_300));
    }

    #[test]
    fn without_an_allowance_own_versions_cost_nothing() {
        let t0 = Instant::now();
        let counters = Arc::new(Counters::default());
        let c = PeerConduct::new(None, None, counters.clone(), t0);
        let writer = PeerId::random();
        for i in 0..20_000u64 {
            c.own_version_past_rate(writer, t0 + Duration::from_micros(i * 50));
        }
        assert!(c.tick(t0 + ms(1000)).is_empty());
        let charged = counters
            .messages_charged
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(charged, 0);
    }

    #[test]
    fn junk_on_topics_not_joined_costs_score() {
        let t0 = Instant::now();
        let c = PeerConduct::new(None, Some(500), Default::default(), t0);
        let rogue = PeerId::random();
        for i in 0..1000u64 {
            c.inbound(rogue, 10, false, t0 + Duration::from_micros(i * 100));
        }
        // 250 points in 100 ms: past the slack after about 40 ms.
        let scores = c.tick(t0 + ms(100));
        assert!(scores[0].1 < -MAX_EXCESS + 5.0, "{scores:?}");
    }

    #[test]
    fn rates_are_per_tick_and_the_peer_rate_charges_past_its_budget() {
        let t0 = Instant::now();
        let c = PeerConduct::new(Some((100, 10)), None, Default::default(), t0);
        let (a, b) = (PeerId::random(), PeerId::random());
        c.tick(t0);
        for i in 0..50u64 {
            c.inbound(a, 1000, true, t0 + ms(i * 10));
        }
        for i in 0..5000u64 {
            c.inbound(b, 10, true, t0 + Duration::from_micros(i * 100));
        }
        let scores = c.tick(t0 + ms(500));
        let ta = c.traffic(&a).unwrap();
        assert_eq!(ta.messages_per_sec, 100.0);
        assert_eq!(ta.bytes_per_sec, 100_000.0);
        assert_eq!(ta.charged, 0);
        let tb = c.traffic(&b).unwrap();
        // 10 at once, then one per 10 ms over 500 ms: about 60 within the rate.
        assert!((4930..=4950).contains(&tb.charged), "{}", tb.charged);
        assert!(
            scores.iter().any(|(p, s)| *p == b && *s < -100.0),
            "{scores:?}"
        );
        assert!(!scores.iter().any(|(p, _)| *p == a));
    }

    #[test]
    fn the_ledger_is_bounded_and_keeps_a_departed_peer_until_its_score_is_back_to_0() {
        let t0 = Instant::now();
        let c = PeerConduct::new(None, Some(500), Default::default(), t0);
        let rogue = PeerId::random();
        for _ in 0..1000 {
            c.inbound(rogue, 1, false, t0);
        }
        c.disconnected(rogue);
        assert_eq!(c.traffic(&rogue).unwrap().messages, 0);
        assert_eq!(c.tick(t0)[0].0, rogue);
        for _ in 0..MAX_TRACKED_PEERS + 100 {
            let p = PeerId::random();
            c.inbound(p, 1, true, t0);
            c.disconnected(p);
            assert!(c.len() <= MAX_TRACKED_PEERS);
        }
        // The peers with empty meters went first.
        assert!(c.traffic(&rogue).is_some());
        assert_eq!(c.tick(t0 + ms(60_000)), vec![(rogue, 0.0)]);
        assert_eq!(c.len(), 0);
    }
}

//! Watch liveness ([`Liveness::Watch`]): failure detection and anti-entropy whose cost per
//! node does not grow with the mesh.
//!
//! * **Who watches whom.** A node watches only the peers in its view (the ~8 it is
//!   connected to). When the last connection to a live member closes without notice, or
//!   stops answering pings, the node dials it again; if that fails, or has not connected
//!   within [`ProtoConfig::probe_timeout`], it publishes a signed accusation
//!   ([`Suspicion`]) on the presence topic. A peer closing a connection on purpose to trim
//!   its view says so first ([`Ask::Trim`]), so the other end does not probe.
//! * **Suspicion and refutation.** An accusation names the accused's latest heartbeat the
//!   accuser knew. Every node that hears it starts a timer for the accused; the accused,
//!   if alive, answers with a new signed heartbeat (a higher sequence number), which ends
//!   the suspicion everywhere. A suspicion that runs out removes the device. One accuser
//!   waits [`ProtoConfig::suspect_timeout`]; each further independent accuser shortens the
//!   wait (down to half at three), as in Lifeguard. So no single member can make a live
//!   device disappear: the device itself must stay silent for the whole wait.
//! * **Patience.** Both timeouts stretch on a node whose own dials have lately been slow
//!   (see `Engine::probe_wait`): when answers take about as long as the timeouts, fixed
//!   ones accuse live members and the refutations slow everything further.
//! * **Heartbeats only on change.** A device announces itself when it starts, when its
//!   addresses change, to refute an accusation and when it learns a peer does not count
//!   it as live (after a partition heals): not every period.
//! * **Anti-entropy by hash.** Every [`ProtoConfig::anti_entropy_every`], and at once on
//!   every new connection, a node sends one random peer a [`Digest`]: one hash of its
//!   member view and one per store of the slice versions it holds, each an XOR of entry
//!   hashes kept up to date in O(1) per change. The peer answers only what differs
//!   ([`DigestReply`]); the asker fetches the newer heartbeats and slices. While nothing
//!   changes, each comparison that finds nothing doubles the wait before the next, up to
//!   [`ProtoConfig::anti_entropy_idle`]; anything new brings it back to the short period.
//!   An idle, converged mesh exchanges a few dozen bytes per node every few seconds
//!   whatever its size.
//! * **Healing.** A node keeps dialling one member it lost (accused or timed out, not
//!   left) per redial tick, so after a partition heals the two sides reconnect within
//!   about a second, compare digests, and every device missing on the other side
//!   announces itself.

use super::*;

use self::membership::member_hash;

/// Most member entries in one digest answer.
pub const MAX_MEMBER_ENTRIES: usize = 16_384;
/// Most stores compared in one digest, and most slice entries per store in one answer.
pub const MAX_STORE_ENTRIES: usize = 4096;
/// Most heartbeats asked for (and answered) in one request.
pub const MAX_MEMBERS_ASKED: usize = 4096;
/// After an accusation (made or heard), a node probes [`ALERT_PROBES`] members per redial
/// tick instead of one every [`PROBE_EVERY_TICKS`] ticks, for this long: a failure seldom comes alone (a
/// partition cuts off a whole group), and the members cut off are found sooner.
const ALERT_FOR: Duration = Duration::from_secs(10);
/// Probes per redial tick while alert.
const ALERT_PROBES: usize = 2;
/// Otherwise one probe every this many redial ticks. A probe of a live member costs a
/// connection (handshake, then a trim): at one every 2 s, an idle 64-node mesh used
/// about 1.6 times the CPU it uses at one every 10 s (the Faults chapter has the runs).
/// One every 30 s cost little less CPU once the other idle costs were cut, and the
/// simulator's `partition-heal` at 1,024 nodes then removed 39 reachable devices instead
/// of 7 (2026-12-01).
/// A failure that cuts connections is noticed by the neighbours that lose them, which
/// turns every node alert; the slow steady probing is for a group that no connection
/// crosses.
const PROBE_EVERY_TICKS: u64 = 10;
/// A redial tick this late means this node is short of CPU (Lifeguard's local health):
/// its own slowness would look like its peers' (pings and redials time out, refutations
/// wait in its queues), so for [`UNHEALTHY_FOR`] it accuses no one, probes no one at
/// random, and gives a lost peer longer to answer a redial and an accused member longer
/// to refute ([`UNHEALTHY_PATIENCE`] times).
const LATE_TICK: Duration = Duration::from_millis(300);
const UNHEALTHY_FOR: Duration = Duration::from_secs(10);
/// How many times longer an unhealthy node waits for a lost peer or an accused member
/// (see [`Engine::patient`]).
const UNHEALTHY_PATIENCE: u32 = 3;
/// A dial to fill the view that is neither connected nor failed at the probe timeout is
/// given this much longer before its member is accused. Such a dial is made to a member
/// that no connection of this node has lost, and a member whose process is gone fails it
/// at once (its host refuses the connection); one still connecting is most often only
/// slow. In a 128-node join wave in one process the handshakes of these dials took up to
/// 3.6 s on a starved CPU, and their accusations removed live members.
///
/// A random probe gets the same grace only once its dial has reached the host
/// ([`Input::DialReached`]): its handshake is slow, its link is not cut. Giving every
/// random probe the grace ended the join-wave removals left in ten loaded runs of
/// `tests/scale.rs`, but in the simulator's `partition-heal` (dials across the cut hang,
/// and never reach the host) it raised the false removals at 1,024 nodes from 1 to 126
/// and the traffic after the cut three- to fivefold (2026-12-03; the Faults chapter has
/// the runs). The probe of a lost connection keeps the plain probe timeout, reached or
/// not: a hung process (its kernel still accepts connections) is found that way.
pub(super) const VIEW_DIAL_GRACE: Duration = Duration::from_secs(4);
/// A node's watch timeouts stretch with how slow its own dials of members have lately
/// been (see [`Engine::probe_wait`]): dials that connected within this window count.
const PATIENCE_WINDOW: Duration = Duration::from_secs(30);
/// Most dial times remembered for the window (the newest).
const PATIENCE_SAMPLES: usize = 32;
/// The timeouts stretch to at most this many times their setting.
const PATIENCE_MAX: u32 = 4;
/// A trim whose notice is not acknowledged within this closes the connection anyway.
const TRIM_ACK_WAIT: Duration = Duration::from_secs(1);
/// A member known only from its slices (no heartbeat, so no address to probe), silent
/// this long and not listed by a peer, is accused outright (see `probe_one_missing`).
const BLIND_ACCUSE_AFTER: Duration = Duration::from_secs(5);
/// Every this many redial ticks a node looks for members it holds slices of but has never
/// had a heartbeat of (see `accuse_unheard`), and accuses at most [`UNHEARD_ACCUSED`] of
/// them.
const UNHEARD_SCAN_TICKS: u64 = 4;
/// Most members [`Engine::accuse_unheard`] accuses per scan.
const UNHEARD_ACCUSED: usize = 4;
/// A refutation or re-announcement is not published sooner than this after the previous
/// heartbeat, so a flood of accusations costs the accused one heartbeat per this period.
const ANNOUNCE_MIN_GAP: Duration = Duration::from_millis(200);

/// How much earlier than armed a one-shot timer may fire and still count as the armed
/// one (see [`Engine::watch_timer_fired`]).
pub(super) const TIMER_SLACK: Duration = Duration::from_millis(1);
/// A one-shot timer this long past its time without firing counts as lost.
const LOST_TIMER: Duration = Duration::from_secs(5);

/// "`device` stopped answering me": an accusation, signed by the accuser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspicion {
    /// The accused.
    pub device: DeviceId,
    /// Its run the accuser knew.
    pub incarnation: Incarnation,
    /// Its latest heartbeat the accuser knew: a heartbeat with a higher one refutes.
    pub seq: u64,
}

/// A summary of a node's view, to compare with a peer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// XOR of the entry hashes of every live member (the sender included).
    pub members: u64,
    /// Per store joined: XOR of the hashes of every `(device, version)` slice held.
    pub stores: Vec<(StoreId, u64)>,
}

/// What differs from a [`Digest`]: the answering node's entries where its hash differs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestReply {
    /// Its live members with their latest `(incarnation, heartbeat seq)`, when the member
    /// hashes differ.
    pub members: Option<Vec<(DeviceId, Incarnation, u64)>>,
    /// For each store whose hash differs, the slice versions it holds.
    pub stores: Vec<(StoreId, Vec<(DeviceId, Version)>)>,
}

/// A request other than a fetch of slices.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ask {
    /// Compare views.
    Digest(Digest),
    /// The latest heartbeats of these devices.
    Members(Vec<DeviceId>),
    /// "I am closing our connection to trim my view, not because you are gone."
    Trim,
    /// "You are accused": a neighbour of the accused passes an accusation on directly, so
    /// the accused refutes it even if the gossiped copy never reached it.
    Accused(Suspicion),
}

/// The answer to an [`Ask`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Reply {
    /// What differs.
    Digest(DigestReply),
    /// Heartbeats held (signed by their devices).
    Members(Vec<Arc<Heartbeat>>),
    /// Nothing to say (a trim acknowledged).
    Done,
}

/// The watch liveness part of an engine.
pub(super) struct WatchState {
    /// Publish a heartbeat at the next chance (start, new addresses, a refutation, a peer
    /// that does not count us live).
    pub announce: bool,
    last_announce: Option<Instant>,
    /// This node's latest heartbeat, to answer [`Ask::Members`].
    last_beat: Option<Arc<Heartbeat>>,
    /// Peers whose connection dropped, being dialled again: accused at the deadline.
    pub probes: DetMap<DeviceId, Instant>,
    /// When this node began dialling each member it probes (or dials to fill its view),
    /// until that member connects or [`PATIENCE_WINDOW`] passes.
    dial_started: DetMap<DeviceId, Instant>,
    /// How long the dials in `dial_started` took to connect, newest last, with when they
    /// connected (see [`Engine::probe_wait`]).
    dial_times: VecDeque<(Instant, Duration)>,
    /// Peers whose next connection close is expected (a trim, either way).
    expect_close: DetSet<DeviceId>,
    /// Trims asked and not yet acknowledged, by request: the peer, and when.
    trims: DetMap<RequestId, (DeviceId, Instant)>,
    /// Members removed by suspicion, and when: dialled now and then for a while, in case
    /// they were only cut off.
    lost: DetMap<DeviceId, Instant>,
    /// When this node last removed a member by suspicion.
    lost_at: Option<Instant>,
    /// Members still to probe this round, in random order (see [`Engine::probe_random`]).
    probe_order: Vec<DeviceId>,
    /// Probes started by [`Engine::probe_random`] rather than by a lost connection.
    random_probes: DetSet<DeviceId>,
    /// Probes given [`VIEW_DIAL_GRACE`] once their probe timeout passes, until it has
    /// passed once: dials to fill the view, and random probes whose dial reached the host
    /// ([`Input::DialReached`]).
    graced: DetSet<DeviceId>,
    /// When the next redial tick is due (to notice late ticks).
    next_tick: Option<Instant>,
    /// Until when this node counts itself short of CPU.
    unhealthy_until: Option<Instant>,
    /// Until when this node probes more members per tick (after an accusation).
    alert_until: Option<Instant>,
    /// When this node last sent each connected peer its digest.
    compared: DetMap<DeviceId, Instant>,
    /// Whether this run announced itself again once its view had formed.
    view_announced: bool,
    /// Random comparisons in a row since anything changed (the wait doubles with each).
    quiet: u32,
    /// No random comparison before this (while nothing changes).
    compare_after: Option<Instant>,
    /// When the armed one-shot timers fire (see [`Engine::arm_watch_timers`]); a timer
    /// that fires before its entry is one replaced by an earlier one, and does nothing.
    announce_timer: Option<Instant>,
    expire_timer: Option<Instant>,
    compare_timer: Option<Instant>,
}

impl WatchState {
    pub fn new(h: &DetState) -> Self {
        Self {
            announce: false,
            last_announce: None,
            last_beat: None,
            probes: DetMap::with_hasher(h.clone()),
            dial_started: DetMap::with_hasher(h.clone()),
            dial_times: VecDeque::new(),
            expect_close: DetSet::with_hasher(h.clone()),
            trims: DetMap::with_hasher(h.clone()),
            lost: DetMap::with_hasher(h.clone()),
            lost_at: None,
            probe_order: Vec::new(),
            random_probes: DetSet::with_hasher(h.clone()),
            graced: DetSet::with_hasher(h.clone()),
            next_tick: None,
            unhealthy_until: None,
            alert_until: None,
            compared: DetMap::with_hasher(h.clone()),
            view_announced: false,
            quiet: 0,
            compare_after: None,
            announce_timer: None,
            expire_timer: None,
            compare_timer: None,
        }
    }
}

impl Engine {
    /// Whether this engine runs watch liveness.
    pub(super) fn watching(&self) -> bool {
        self.cfg.liveness == Liveness::Watch
    }

    /// The hash of this node's member view (itself included; watch liveness): two nodes
    /// that count the same devices live, at the same heartbeats, have the same.
    pub fn members_digest(&self) -> u64 {
        self.digest().members
    }

    fn own_presence(&self) -> (Incarnation, u64) {
        (self.incarnation, self.seq)
    }

    /// This node's digest: its member view (itself included) and its stores' hashes.
    fn digest(&self) -> Digest {
        let mut stores: Vec<(StoreId, u64)> = self
            .joined
            .iter()
            .map(|s| (s.clone(), self.held.hash(s)))
            .collect();
        stores.sort();
        stores.truncate(MAX_STORE_ENTRIES);
        Digest {
            members: self.membership.members_hash() ^ member_hash(&self.me, self.own_presence()),
            stores,
        }
    }

    /// Arms the watch timers that have work, after every input. With watch liveness an
    /// idle node has nothing to announce, nothing to expire and (backed off) no comparison
    /// due for seconds, so instead of ticking at fixed rates (four expiry checks, two
    /// announcement checks and one comparison check a second, each a wake-up of the
    /// runtime) each timer is a one-shot armed only for its next piece of work: an
    /// announcement while one is pending and a neighbour can hear it, expiry checks while
    /// a probe or a suspicion runs, a comparison when the next one is due. The redial tick
    /// (once a second) does the housekeeping.
    pub(super) fn arm_watch_timers(&mut self, now: Instant, out: &mut Vec<Output>) {
        // A timer this far past its time was lost (its output dropped, say): arm anew. A
        // merely late one that still fires later finds a newer entry and does nothing.
        let lost = |slot: &mut Option<Instant>| {
            if slot.is_some_and(|at| now.saturating_duration_since(at) > LOST_TIMER) {
                *slot = None;
            }
        };
        lost(&mut self.watch.announce_timer);
        lost(&mut self.watch.expire_timer);
        lost(&mut self.watch.compare_timer);
        if self.watch.announce
            && !self.leaving
            && !self.conns.is_empty()
            && self.watch.announce_timer.is_none()
        {
            // Half the heartbeat period on average, as the periodic check gave.
            let after = self.jitter(self.cfg.presence_interval / 2);
            self.watch.announce_timer = Some(now + after);
            out.push(Output::Schedule {
                after,
                timer: Timer::Presence,
            });
        }
        if (!self.watch.probes.is_empty() || self.membership.has_suspects())
            && self.watch.expire_timer.is_none()
        {
            let after = self.cfg.expire_every();
            self.watch.expire_timer = Some(now + after);
            out.push(Output::Schedule {
                after,
                timer: Timer::Expire,
            });
        }
        if !self.leaving {
            let every = self.cfg.anti_entropy_every;
            let after = match self.views_drifting(now) {
                true => None,
                false => self.watch.compare_after,
            };
            let needed_by = match after {
                None => now + every + every / 5,
                Some(t) => t.max(now) + every,
            };
            if self.watch.compare_timer.is_none_or(|t| t > needed_by) {
                let at = match after {
                    None => now + self.jitter(every),
                    Some(t) => t.max(now) + self.jitter(every / 2),
                };
                self.watch.compare_timer = Some(at);
                out.push(Output::Schedule {
                    after: at - now,
                    timer: Timer::AntiEntropy,
                });
            }
        }
    }

    /// A watch timer fired: whether it is the armed one (and disarm it), not one that an
    /// earlier timer replaced.
    pub(super) fn watch_timer_fired(&mut self, t: Timer, now: Instant) -> bool {
        let slot = match t {
            Timer::Presence => &mut self.watch.announce_timer,
            Timer::Expire => &mut self.watch.expire_timer,
            Timer::AntiEntropy => &mut self.watch.compare_timer,
            _ => return true,
        };
        // A runtime or simulator may round the delay down a little (to whole
        // microseconds, say): a timer this close to its entry is the armed one.
        if slot.is_some_and(|at| now + TIMER_SLACK < at) {
            return false;
        }
        *slot = None;
        true
    }

    /// Publishes a heartbeat if one is due and someone can hear it.
    pub(super) fn announce_if_due(&mut self, now: Instant, out: &mut Vec<Output>) {
        if !self.watch.announce || self.leaving || self.conns.is_empty() {
            return;
        }
        if self
            .watch
            .last_announce
            .is_some_and(|t| now.saturating_duration_since(t) < ANNOUNCE_MIN_GAP)
        {
            return;
        }
        self.watch.announce = false;
        self.watch.last_announce = Some(now);
        let hb = self.heartbeat();
        self.watch.last_beat = Some(Arc::new(hb.clone()));
        out.push(Output::PublishHeartbeat(hb));
    }

    pub(super) fn on_connected(
        &mut self,
        peer: DeviceId,
        first: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let probed = self.end_probe(&peer);
        if let Some(t) = self.watch.dial_started.remove(&peer) {
            let times = &mut self.watch.dial_times;
            if times.len() == PATIENCE_SAMPLES {
                times.pop_front();
            }
            times.push_back((now, now.saturating_duration_since(t)));
        }
        if !first || self.leaving {
            return;
        }
        if !self.membership.is_online(&peer) {
            // A member this node had lost (a heal) or not heard of yet (a newcomer): the
            // views have likely drifted apart, so compare often again. A live member's
            // new connection (a probe, a view refresh) says nothing of the sort.
            self.stirred();
        }
        if self.membership.is_suspected(&peer) {
            // A suspect just connected (often the accuser's own dial, slower than its
            // probe timeout on a node short of CPU): it is alive, so tell it directly, and
            // it refutes before the suspicion runs out elsewhere.
            self.tell_accused(peer, out);
        }
        if probed && self.conns.len() > self.cfg.target_peers {
            // It answered; the view is full: close the probe's connection again.
            self.trim(peer, now, out);
        } else {
            // A new neighbour: compare views now (a join, a heal, a view change). Only a
            // difference found stirs anti-entropy (view refreshes and probes bring new
            // neighbours to an idle mesh too).
            self.ask_digest(peer, now, out);
        }
    }

    /// Notes whether this redial tick came late (see [`LATE_TICK`]).
    pub(super) fn check_health(&mut self, now: Instant) {
        if let Some(due) = self.watch.next_tick {
            if now.saturating_duration_since(due) > LATE_TICK {
                self.watch.unhealthy_until = Some(now + UNHEALTHY_FOR);
            }
        }
        self.watch.next_tick = Some(now + self.cfg.redial_every);
    }

    fn healthy(&self, now: Instant) -> bool {
        self.watch.unhealthy_until.is_none_or(|t| now >= t)
    }

    /// `wait`, or [`UNHEALTHY_PATIENCE`] times it while this node is short of CPU.
    fn patient(&self, wait: Duration, now: Instant) -> Duration {
        match self.healthy(now) {
            true => wait,
            false => wait * UNHEALTHY_PATIENCE,
        }
    }

    /// How long a probe waits for its member to connect: [`ProtoConfig::probe_timeout`],
    /// stretched when this node's dials of members that connected within
    /// [`PATIENCE_WINDOW`] were slow (see [`Engine::stretched`]).
    /// On a network or a CPU slow enough that an answer takes about as long as the
    /// timeout (one-way delays of 0.7 s in the simulator; handshakes queued behind a
    /// saturated CPU), fixed timeouts accused live members, whose refutations and
    /// re-announcements slowed everything further: at 128 simulated nodes, 9 false
    /// removals at 700 ms and hundreds at 800 ms. Detection on a fast network is as
    /// before.
    pub(super) fn probe_wait(&self) -> Duration {
        self.stretched(self.cfg.probe_timeout)
    }

    /// How long one accuser's suspicion waits for the accused to refute:
    /// [`ProtoConfig::suspect_timeout`], stretched as [`Engine::probe_wait`] is. A
    /// refutation crosses the mesh twice (the accusation out, the new heartbeat back).
    pub(super) fn suspect_wait(&self) -> Duration {
        self.stretched(self.cfg.suspect_timeout)
    }

    /// `setting`, or twice the upper quartile of the recent dial times if that is longer,
    /// up to [`PATIENCE_MAX`] times `setting`. A quartile rather than the slowest: one
    /// member slow to answer (or one that stalls its handshakes on purpose) does not
    /// stretch every timeout; a slow network or CPU slows most dials.
    fn stretched(&self, setting: Duration) -> Duration {
        let mut times: Vec<Duration> = self.watch.dial_times.iter().map(|(_, d)| *d).collect();
        if times.is_empty() {
            return setting;
        }
        times.sort();
        let upper_quartile = times[times.len() * 3 / 4];
        setting.max(upper_quartile * 2).min(setting * PATIENCE_MAX)
    }

    /// A dial of `peer` failed: a connection it opens later (a restart, a heal) says
    /// nothing of how slow this node's dials are.
    pub(super) fn dial_failed(&mut self, peer: &DeviceId) {
        self.watch.dial_started.remove(peer);
    }

    /// The watch part of a redial tick: lost members, random probes, overdue trims.
    pub(super) fn watch_tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        let mut overdue: Vec<RequestId> = self
            .watch
            .trims
            .iter()
            .filter(|(_, (_, t))| now.saturating_duration_since(*t) >= TRIM_ACK_WAIT)
            .map(|(id, _)| *id)
            .collect();
        overdue.sort();
        for id in overdue {
            self.trim_answered(id, out);
        }
        self.watch
            .dial_started
            .retain(|_, t| now.saturating_duration_since(*t) < PATIENCE_WINDOW);
        while self
            .watch
            .dial_times
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= PATIENCE_WINDOW)
        {
            self.watch.dial_times.pop_front();
        }
        // A node announces itself at start over its first connections, often all to one
        // shared seed, whose gossipsub mesh reaches only a few of the others; and during
        // a join wave nobody has a mesh yet. Once its own view has formed it announces
        // once more, over random connections, instead of leaving every other member to
        // pull it through digests.
        if !self.watch.view_announced && self.conns.len() >= self.cfg.target_peers {
            self.watch.view_announced = true;
            self.watch.announce = true;
        }
        if !self.healthy(now) {
            return;
        }
        self.dial_lost(now, out);
        if self.expire_ticks.is_multiple_of(UNHEARD_SCAN_TICKS) {
            self.accuse_unheard(now, out);
        }
        let alert = self.watch.alert_until.is_some_and(|t| now < t);
        // Probes only while the view has room: a probe that answers is a connection.
        let high = self.view_high();
        let probes = match alert {
            true => ALERT_PROBES,
            false => usize::from(self.ticks.is_multiple_of(PROBE_EVERY_TICKS)),
        };
        for _ in 0..probes {
            if self.conns.len() < high {
                self.probe_random(now, out);
            }
        }
    }

    /// SWIM's probe: dial the next member, in a random round-robin order, that this node
    /// is not connected to. A member that cannot be reached is accused like a lost
    /// neighbour. Watching neighbours alone would miss a group cut off as a whole (its
    /// members' neighbours are cut off with it); with every node probing one member per
    /// [`PROBE_EVERY_TICKS`] ticks, each member is probed about that often by someone.
    pub(super) fn probe_random(&mut self, now: Instant, out: &mut Vec<Output>) {
        for round in 0..2 {
            while let Some(peer) = self.watch.probe_order.pop() {
                if !self.membership.is_online(&peer)
                    || self.conns.contains_key(&peer)
                    || self.watch.probes.contains_key(&peer)
                    || !self.dialable(&peer)
                {
                    continue;
                }
                self.start_probe(peer, now, out);
                return;
            }
            if round == 1 {
                return;
            }
            // A new round: every member once, in a fresh random order, starting now (a
            // tick spent only on the reshuffle doubled the wait for the next probe).
            let mut order: Vec<DeviceId> = self.membership.members().map(|(d, _)| d).collect();
            order.sort();
            shuffle(&mut self.rng, &mut order);
            self.watch.probe_order = order;
        }
    }

    /// A dial to fill the view, to a live member: if it fails, or has not connected
    /// within the probe timeout and [`VIEW_DIAL_GRACE`] after it, the member is accused
    /// (see `maintain_view`).
    pub(super) fn probe_for_view(&mut self, peer: DeviceId, now: Instant) {
        if self.membership.is_online(&peer) && !self.watch.probes.contains_key(&peer) {
            self.watch.probes.insert(peer, now + self.probe_wait());
            self.watch.graced.insert(peer);
            self.watch.dial_started.entry(peer).or_insert(now);
        }
    }

    /// A member this node counts live that the peer's list lacks may be gone: the peer
    /// may have removed it while this node was away (a restart learns members second-hand
    /// and watches none of them), and nobody else is left to accuse it. Probes one such
    /// member, as [`Engine::probe_random`] would, if this node is not connected to it: if
    /// it answers, nothing changes; if not, it is accused like any lost neighbour. The
    /// peer may also just not have heard of it yet, so one per answer, and only while the
    /// view has room.
    fn probe_one_missing(
        &mut self,
        theirs: &[(DeviceId, Incarnation, u64)],
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if !self.healthy(now) || self.conns.len() >= self.view_high() {
            return;
        }
        let listed: DetSet<DeviceId> = {
            let mut set = DetSet::with_hasher(self.watch.compared.hasher().clone());
            set.extend(theirs.iter().map(|(d, _, _)| *d));
            set
        };
        // Dialable ones are probed. One known only from its slices (no heartbeat, so no
        // address) is accused outright once silent for `BLIND_ACCUSE_AFTER`: a live
        // member's heartbeat reaches a node within a few digest rounds (its entry differs
        // from the peers' that hold one, and is fetched). If it is alive it refutes with a
        // new heartbeat, which also gives this node its addresses; if not, it is removed
        // everywhere at the timeout. Seen in the randomized fault suite: after a restart a
        // node held a dead device it had only fetched a slice of.
        let (mut dialable, mut blind) = (Vec::new(), Vec::new());
        for d in self.membership.members().map(|(d, _)| d) {
            if listed.contains(&d)
                || self.conns.contains_key(&d)
                || self.watch.probes.contains_key(&d)
            {
                continue;
            }
            if self.dialable(&d) {
                dialable.push(d);
            } else if self.silent_past_blind_limit(&d, now) {
                blind.push(d);
            }
        }
        if let Some(peer) = self.pick_one(dialable) {
            self.start_probe(peer, now, out);
        } else if let Some(peer) = self.pick_one(blind) {
            self.accuse(peer, now, out);
        }
    }

    /// Accuses members this node holds slices of but has no heartbeat of (so no address
    /// to probe them at), silent for [`BLIND_ACCUSE_AFTER`], whether or not its peers list
    /// them. `probe_one_missing` catches such a member only when a peer's list lacks it;
    /// when every node left holds it the same way, their member lists agree and nothing
    /// else would ever remove it. Seen in the randomized fault suite: a partition kept a
    /// device's heartbeats from one side, which still got its slice relayed; the device
    /// died, the accusations of it did not cross the partition either, and a node that
    /// restarted on that side fetched the slice again from a peer there. The two held the
    /// dead device for good. A live member's heartbeat reaches a node within a few digest
    /// rounds (its entry differs from the peers' that hold one, and is fetched). If one is
    /// accused anyway, the accusation names no heartbeat of it: nodes that hold one ignore
    /// it, the device does not refute it, and only nodes as blind as this one remove the
    /// device, to get its heartbeat back from the next digest that differs.
    fn accuse_unheard(&mut self, now: Instant, out: &mut Vec<Output>) {
        let mut unheard: Vec<DeviceId> = self
            .membership
            .members()
            .map(|(d, _)| d)
            .filter(|d| {
                !self.known.contains_key(d)
                    && !self.conns.contains_key(d)
                    && !self.membership.is_suspected(d)
                    && self.silent_past_blind_limit(d, now)
            })
            .collect();
        unheard.sort();
        shuffle(&mut self.rng, &mut unheard);
        for d in unheard.into_iter().take(UNHEARD_ACCUSED) {
            self.accuse(d, now, out);
        }
    }

    /// Whether this node has had nothing from `device` for [`BLIND_ACCUSE_AFTER`]: long
    /// enough to accuse a member it has no address to probe.
    fn silent_past_blind_limit(&self, device: &DeviceId, now: Instant) -> bool {
        self.membership
            .silent_for(device, now)
            .is_some_and(|s| s >= BLIND_ACCUSE_AFTER)
    }

    /// One of `devices` at random (seeded: sorted first), if any.
    fn pick_one(&mut self, mut devices: Vec<DeviceId>) -> Option<DeviceId> {
        if devices.is_empty() {
            return None;
        }
        devices.sort();
        Some(devices[self.rng.random_range(0..devices.len())])
    }

    /// Dials `peer` as a probe: accused if it has not connected by the probe timeout (with
    /// [`VIEW_DIAL_GRACE`] more only if the dial reached the host: see there), and trimmed
    /// again if it answers while the view is full (see `on_connected`).
    fn start_probe(&mut self, peer: DeviceId, now: Instant, out: &mut Vec<Output>) {
        self.watch.probes.insert(peer, now + self.probe_wait());
        self.watch.dial_started.entry(peer).or_insert(now);
        self.watch.random_probes.insert(peer);
        self.dialled.insert(peer, now);
        out.push(self.dial(peer));
    }

    pub(super) fn ask_digest(&mut self, peer: DeviceId, now: Instant, out: &mut Vec<Output>) {
        self.watch.compared.insert(peer, now);
        let id = self.request_id();
        out.push(Output::Ask {
            peer,
            id,
            ask: Ask::Digest(self.digest()),
        });
    }

    /// Something changed (a slice, a member, a neighbour, a difference found): compare
    /// views at the short period again.
    pub(super) fn stirred(&mut self) {
        self.watch.quiet = 0;
        self.watch.compare_after = None;
    }

    /// Whether views are likely drifting apart, so anti-entropy does not back off: this
    /// node is alert (an accusation lately) or lately removed members by suspicion (a
    /// partition may be healing).
    fn views_drifting(&self, now: Instant) -> bool {
        self.watch.alert_until.is_some_and(|t| now < t) || !self.watch.lost.is_empty()
    }

    /// The anti-entropy tick: compare with a random peer unless backed off. Each
    /// comparison doubles the wait before the next (up to
    /// [`ProtoConfig::anti_entropy_idle`]) until something changes.
    pub(super) fn compare_if_due(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.views_drifting(now) {
            self.stirred();
        }
        if self.watch.compare_after.is_some_and(|t| now < t) {
            return;
        }
        self.compare_with_random_peer(now, out);
        let every = self.cfg.anti_entropy_every;
        let wait = every
            .saturating_mul(1 << self.watch.quiet.min(16))
            .min(self.cfg.anti_entropy_idle.max(every));
        self.watch.quiet = self.watch.quiet.saturating_add(1);
        // The ticks are jittered: a tick a little early still counts as due.
        self.watch.compare_after = Some(now + wait.saturating_sub(every / 2));
    }

    pub(super) fn compare_with_random_peer(&mut self, now: Instant, out: &mut Vec<Output>) {
        let conns = &self.conns;
        self.watch.compared.retain(|d, _| conns.contains_key(d));
        if self.conns.is_empty() {
            return;
        }
        let mut peers: Vec<DeviceId> = self.conns.keys().copied().collect();
        peers.sort();
        let peer = peers[self.rng.random_range(0..peers.len())];
        self.ask_digest(peer, now, out);
    }

    /// The last connection to `peer` closed, or it stopped answering: unless that was
    /// expected, dial it again, and accuse it if that does not work out.
    pub(super) fn lost_contact(&mut self, peer: DeviceId, now: Instant, out: &mut Vec<Output>) {
        if self.watch.expect_close.remove(&peer) {
            return;
        }
        if self.leaving
            || !self.membership.is_online(&peer)
            || self.watch.probes.contains_key(&peer)
        {
            return;
        }
        let wait = self.patient(self.probe_wait(), now);
        self.watch.probes.insert(peer, now + wait);
        self.watch.dial_started.entry(peer).or_insert(now);
        self.dialled.insert(peer, now);
        out.push(self.dial(peer));
    }

    /// Forgets any probe of `peer`; whether it was a random one.
    fn end_probe(&mut self, peer: &DeviceId) -> bool {
        self.watch.probes.remove(peer);
        self.watch.graced.remove(peer);
        self.watch.random_probes.remove(peer)
    }

    /// A dial of `peer` reached its host: a random probe of it waits [`VIEW_DIAL_GRACE`]
    /// past its timeout for the handshake.
    pub(super) fn dial_reached(&mut self, peer: DeviceId) {
        if self.watch.random_probes.contains(&peer) && self.watch.probes.contains_key(&peer) {
            self.watch.graced.insert(peer);
        }
    }

    pub(super) fn accuse(&mut self, peer: DeviceId, now: Instant, out: &mut Vec<Output>) {
        self.end_probe(&peer);
        // A dial can fail while a connection the other side opened is up (both dialled at
        // once): the device answered, so it is not accused.
        if !self.healthy(now) || self.conns.contains_key(&peer) {
            // Short of CPU: the silence may be ours. Leave it to healthier members.
            return;
        }
        let Some((of, true)) = self.membership.presence_of(&peer) else {
            return;
        };
        self.watch.alert_until = Some(now + ALERT_FOR);
        if self.membership.suspect(peer, of, self.me, now) {
            out.push(Output::Report(Report::Suspected {
                device: peer,
                accuser: self.me,
            }));
            out.push(Output::PublishSuspect(Suspicion {
                device: peer,
                incarnation: of.0,
                seq: of.1,
            }));
        }
    }

    pub(super) fn on_suspect(
        &mut self,
        accuser: DeviceId,
        s: Suspicion,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if !self.watching() || accuser == self.me {
            return;
        }
        if s.device == self.me {
            self.refute(&s, false, now, out);
            return;
        }
        // Only members count as accusers: an unknown identity cannot open suspicions.
        if !self.membership.is_online(&accuser) {
            return;
        }
        let new = !self.membership.is_suspected(&s.device);
        if self
            .membership
            .suspect(s.device, (s.incarnation, s.seq), accuser, now)
        {
            out.push(Output::Report(Report::Suspected {
                device: s.device,
                accuser,
            }));
            self.watch.alert_until = Some(now + ALERT_FOR);
            if new && self.conns.contains_key(&s.device) {
                let id = self.request_id();
                out.push(Output::Ask {
                    peer: s.device,
                    id,
                    ask: Ask::Accused(s),
                });
            }
        }
    }

    /// Tells `device`, connected here, that it is accused, naming its latest heartbeat
    /// this node holds, so that it refutes.
    fn tell_accused(&mut self, device: DeviceId, out: &mut Vec<Output>) {
        if let Some((of, true)) = self.membership.presence_of(&device) {
            let id = self.request_id();
            out.push(Output::Ask {
                peer: device,
                id,
                ask: Ask::Accused(Suspicion {
                    device,
                    incarnation: of.0,
                    seq: of.1,
                }),
            });
        }
    }

    /// Refutes an accusation of this run: a heartbeat newer than the one the accuser knew.
    /// One heard over gossip naming an older heartbeat than this run's latest is refuted
    /// already (by that latest one). One a neighbour tells this node `directly` is refuted
    /// whatever heartbeat it names: the neighbour holds that one, so the newer ones did
    /// not reach it, and the nodes that hold it would remove this device at the timeout.
    fn refute(&mut self, s: &Suspicion, directly: bool, now: Instant, out: &mut Vec<Output>) {
        let current = s.device == self.me && s.incarnation == self.incarnation;
        if current && (directly || s.seq >= self.seq) {
            self.watch.announce = true;
            self.announce_if_due(now, out);
        }
    }

    /// Expire tick: probes past their deadline accuse, suspicions past theirs remove.
    pub(super) fn watch_expire(&mut self, now: Instant, out: &mut Vec<Output>) {
        let mut due: Vec<DeviceId> = self
            .watch
            .probes
            .iter()
            .filter(|(_, t)| now >= **t)
            .map(|(d, _)| *d)
            .collect();
        due.sort();
        for peer in due {
            if self.conns.contains_key(&peer) {
                self.end_probe(&peer);
            } else if self.watch.graced.remove(&peer) {
                // A dial to fill the view, or a random probe's dial that reached the host,
                // still connecting: wait for its outcome a while longer (a failure
                // accuses at once, see `Input::DialFailed`). Each is waited for once.
                self.watch.probes.insert(peer, now + VIEW_DIAL_GRACE);
            } else {
                self.accuse(peer, now, out);
            }
        }
        // A suspect this node is connected to is alive as far as this node can tell (the
        // connection is authenticated as the device, and pings would have closed it had
        // the device hung): it is not removed here. Its suspicion starts over and the
        // device is told it is accused, directly, so it refutes. On a node short of CPU
        // (every node of a large mesh in one process, during a join wave) an accusation
        // often never reached the accused over gossip before the timeout, and devices
        // connected to half the mesh were removed.
        let max = self.patient(self.suspect_wait(), now);
        let conns = &self.conns;
        let mut spared = Vec::new();
        let removed = self.membership.expire_suspects(
            now,
            max / 2,
            max,
            |d| conns.contains_key(d),
            &mut spared,
        );
        for device in spared {
            self.tell_accused(device, out);
        }
        for r in removed {
            self.watch.lost.insert(r.device, now);
            self.watch.lost_at = Some(now);
            self.remove(r, out);
        }
        let m = &self.membership;
        self.watch
            .lost
            .retain(|d, t| !m.is_online(d) && now.saturating_duration_since(*t) < FORGET_AFTER_MIN);
    }

    /// Whether this node removed a member by suspicion in the last [`FORGET_AFTER_MIN`]:
    /// it was likely cut off, and peers that do not count it live likely removed it.
    /// Not only while those members are still missing: a node that has them all back
    /// (their own announcements reached it) before it compares with one of them would
    /// otherwise never announce itself to the ones that removed it.
    fn lost_lately(&self, now: Instant) -> bool {
        !self.watch.lost.is_empty()
            || self
                .watch
                .lost_at
                .is_some_and(|t| now.saturating_duration_since(t) < FORGET_AFTER_MIN)
    }

    /// Dials one member this node lost (not one that left), in case it was only cut off:
    /// after a partition heals, this is how the two sides meet again.
    pub(super) fn dial_lost(&mut self, now: Instant, out: &mut Vec<Output>) {
        let mut lost: Vec<DeviceId> = self
            .watch
            .lost
            .keys()
            .copied()
            .filter(|d| {
                self.dialable(d)
                    && !self.conns.contains_key(d)
                    && self
                        .dialled
                        .get(d)
                        .is_none_or(|t| now.saturating_duration_since(*t) >= DIAL_BACKOFF)
            })
            .collect();
        if lost.is_empty() {
            return;
        }
        lost.sort();
        let peer = lost[self.rng.random_range(0..lost.len())];
        self.dialled.insert(peer, now);
        out.push(self.dial(peer));
    }

    /// Closes the connection to `peer` to trim the view, telling it first.
    pub(super) fn trim(&mut self, peer: DeviceId, now: Instant, out: &mut Vec<Output>) {
        if self.watch.trims.values().any(|(p, _)| *p == peer) {
            return;
        }
        let id = self.request_id();
        self.watch.trims.insert(id, (peer, now));
        out.push(Output::Ask {
            peer,
            id,
            ask: Ask::Trim,
        });
    }

    /// A trim was acknowledged (or failed): close the connection now.
    pub(super) fn trim_answered(&mut self, id: RequestId, out: &mut Vec<Output>) -> bool {
        let Some((peer, _)) = self.watch.trims.remove(&id) else {
            return false;
        };
        self.watch.expect_close.insert(peer);
        out.push(Output::Trim { peer });
        true
    }

    pub(super) fn on_asked(
        &mut self,
        peer: DeviceId,
        token: Token,
        ask: Ask,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let reply = match ask {
            Ask::Accused(s) => {
                self.refute(&s, true, now, out);
                Reply::Done
            }
            Ask::Trim => {
                self.watch.expect_close.insert(peer);
                Reply::Done
            }
            Ask::Members(devices) => {
                let mut beats = Vec::new();
                for d in devices.iter().take(MAX_MEMBERS_ASKED) {
                    if *d == self.me {
                        beats.extend(self.watch.last_beat.clone());
                    } else if let Some(k) = self.known.get(d) {
                        // Only of members this node counts live: a removed device's last
                        // heartbeat must not bring it back on the asker.
                        if self.membership.is_online(d) {
                            beats.push(k.beat.clone());
                        }
                    }
                }
                Reply::Members(beats)
            }
            Ask::Digest(theirs) => {
                let diff = self.diff(&theirs);
                // Push-pull: where views differ, the asker learns what this node has from
                // the answer, and this node learns what the asker has by asking back (at
                // most once per period and peer, so two nodes do not ask each other in
                // turn forever).
                if diff.members.is_some() || !diff.stores.is_empty() {
                    self.stirred();
                    let recent = self.watch.compared.get(&peer).is_some_and(|t| {
                        now.saturating_duration_since(*t) < self.cfg.anti_entropy_every
                    });
                    if !recent && self.conns.contains_key(&peer) {
                        self.ask_digest(peer, now, out);
                    }
                }
                Reply::Digest(diff)
            }
        };
        out.push(Output::Reply { token, reply });
    }

    /// What of this node's view differs from `theirs`.
    fn diff(&self, theirs: &Digest) -> DigestReply {
        let mine = self.digest();
        let members = (mine.members != theirs.members).then(|| {
            let mut list: Vec<(DeviceId, Incarnation, u64)> = self
                .membership
                .members()
                .map(|(d, (i, s))| (d, i, s))
                .chain(std::iter::once((self.me, self.incarnation, self.seq)))
                .collect();
            list.sort();
            list.truncate(MAX_MEMBER_ENTRIES);
            list
        });
        let mut stores = Vec::new();
        for (store, hash) in theirs.stores.iter().take(MAX_STORE_ENTRIES) {
            if !self.joined.contains(store) || self.held.hash(store) == *hash {
                continue;
            }
            let mut entries: Vec<(DeviceId, Version)> = self
                .held
                .store(store)
                .map(|h| h.versions().collect())
                .unwrap_or_default();
            entries.sort();
            entries.truncate(MAX_STORE_ENTRIES);
            stores.push((store.clone(), entries));
        }
        DigestReply { members, stores }
    }

    pub(super) fn on_replied(
        &mut self,
        peer: DeviceId,
        reply: Reply,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        match reply {
            Reply::Done => {}
            Reply::Members(beats) => {
                for b in beats.into_iter().take(MAX_MEMBERS_ASKED) {
                    self.on_heartbeat(peer, b, now, out);
                }
            }
            Reply::Digest(r) => self.on_diff(peer, r, now, out),
        }
    }

    fn on_diff(&mut self, peer: DeviceId, r: DigestReply, now: Instant, out: &mut Vec<Output>) {
        if r.members.is_some() || !r.stores.is_empty() {
            self.stirred();
        }
        if let Some(members) = r.members {
            // A peer that lists this run at an older heartbeat only lags behind (it fetches
            // the newer one itself). One that does not list this run at all either has not
            // heard of it yet, and pulls it (a digest that differs is compared both ways,
            // see `on_asked`), or removed it while this node was cut off. Only a node that
            // lost members lately was likely cut off, so only it announces again: every
            // newcomer re-announcing to every peer that had not heard of it yet flooded
            // about four rounds of heartbeats through a join wave of 128 nodes.
            let counted = members
                .iter()
                .any(|(d, i, _)| *d == self.me && *i == self.incarnation);
            if !counted && self.lost_lately(now) {
                self.watch.announce = true;
            }
            self.probe_one_missing(&members, now, out);
            let newer: Vec<DeviceId> = members
                .into_iter()
                .take(MAX_MEMBER_ENTRIES)
                .filter(|(d, i, s)| *d != self.me && self.membership.is_newer(d, (*i, *s)))
                .map(|(d, _, _)| d)
                .take(MAX_MEMBERS_ASKED)
                .collect();
            if !newer.is_empty() {
                let id = self.request_id();
                out.push(Output::Ask {
                    peer,
                    id,
                    ask: Ask::Members(newer),
                });
            }
        }
        let mut want = Vec::new();
        for (store, entries) in r.stores {
            if !self.joined.contains(&store) {
                continue;
            }
            for (device, version) in entries.into_iter().take(MAX_STORE_ENTRIES) {
                if device == self.me || !self.membership.wants(&device, &store, version) {
                    continue;
                }
                if !self.asking(device, &store, version, now) {
                    continue;
                }
                want.push(Want {
                    store: store.clone(),
                    device: Some(device),
                });
                if want.len() >= MAX_WANTS {
                    break;
                }
            }
        }
        if !want.is_empty() {
            self.fetch(peer, want, Vec::new(), out);
        }
    }
}

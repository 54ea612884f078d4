//! The gossip gate: which slice messages are worth verifying and forwarding, decided from
//! their unverified header (device, store, version) before the signature check.
//!
//! Slices are last-write-wins per device and store, so of a burst of versions only the
//! newest matters: forwarding at most a few versions per device and store per interval
//! loses nothing of the latest state, which still reaches every node through the digests
//! (presence heartbeats, or watch liveness's view comparisons) and a fetch. So:
//!
//! * a version not newer than the highest this node verified for that device and store
//!   (a stale copy or a replay: re-enveloped copies of an old message, or genuine old
//!   messages sent again after gossipsub forgot their ids) is declined unverified;
//! * past the device's rate in that store (a token bucket of `burst` versions, refilled
//!   by one every `interval`), a version is not forwarded: a member flooding its own
//!   slice is relayed at that rate, not at the rate it signs. One that comes straight from
//!   its author is still verified and used here (the author's neighbours get every
//!   version, so a fast honest writer loses no throughput to its direct peers); one
//!   relayed by another peer is not verified then (honest relays keep to the rate, so
//!   this only comes of several relays, or of a relay that does not).
//! * of the versions past the rate, the node holds back the newest per device and store
//!   and forwards it once the rate allows ([`GossipGate::release`]; a relayed one is
//!   verified then), unless a newer one was verified first: the last version of a burst
//!   goes on within one interval instead of waiting for the digests.
//!
//! Only verified messages move the gate ([`GossipGate::passed`]): a forgery naming another
//! device can neither raise its highest version nor spend its rate.

use std::time::{Duration, Instant};

use super::{DetMap, DetState};
use crate::ids::{DeviceId, StoreId, Version};

/// What to do with a gossiped slice, judged from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Verify it, and forward it if valid.
    Pass,
    /// Over the rate, straight from its author: verify and use it, do not forward it.
    UseOnly,
    /// Not newer than a version already verified: neither verify nor forward.
    Stale,
    /// Over the device's rate in that store, relayed: neither verify nor forward.
    OverRate,
}

/// Most (device, store) pairs tracked. Past this, the pairs that no longer hold back their
/// rate are dropped (and all of them if that does not free half the room): a dropped pair
/// only loses the early stale check, the engine still refuses stale versions. About 150
/// bytes each, so at most a few megabytes.
pub(crate) const MAX_GATE_ENTRIES: usize = 16_384;

/// When a held-back version may be forwarded (see [`GossipGate::release`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Now: forward it, and spend a token ([`GossipGate::passed`]).
    Now,
    /// Not before this instant.
    At(Instant),
    /// A newer version was verified meanwhile: drop it.
    Superseded,
}

#[derive(Debug)]
struct Lane {
    /// Highest version verified.
    highest: Version,
    /// The token bucket as a theoretical arrival time (GCRA): a version may pass while
    /// `next <= now + (burst - 1) * interval`; each one that passes moves `next` on by
    /// `interval` (from `now` at the latest).
    next: Instant,
}

/// Per-(device, store) stale check and forwarding rate for gossiped slices. See the
/// [module docs](self).
#[derive(Debug)]
pub(crate) struct GossipGate {
    interval: Duration,
    burst: u32,
    lanes: DetMap<(DeviceId, StoreId), Lane>,
}

impl GossipGate {
    /// A gate letting `burst` versions per device and store through at once, then one per
    /// `interval`. A zero interval turns the rate off (the stale check stays).
    pub fn new(interval: Duration, burst: u32, hasher: DetState) -> Self {
        Self {
            interval,
            burst: burst.max(1),
            lanes: DetMap::with_hasher(hasher),
        }
    }

    /// Whether a slice of `device` in `store` at `version`, signature not yet checked, is
    /// worth checking and forwarding; `from_author` when the neighbour that sent it is
    /// `device` itself.
    pub fn check(
        &self,
        device: &DeviceId,
        store: &StoreId,
        version: Version,
        from_author: bool,
        now: Instant,
    ) -> Gate {
        let Some(lane) = self.lanes.get(&(*device, store.clone())) else {
            return Gate::Pass;
        };
        if version <= lane.highest {
            return Gate::Stale;
        }
        let slack = self.interval * (self.burst - 1);
        if lane.next > now + slack {
            return match from_author {
                true => Gate::UseOnly,
                false => Gate::OverRate,
            };
        }
        Gate::Pass
    }

    /// A slice that [`check`](Self::check) let through was verified: it is the newest of
    /// its device and store now, and, if `forwarded`, it spends one token of their rate.
    pub fn passed(
        &mut self,
        device: DeviceId,
        store: &StoreId,
        version: Version,
        forwarded: bool,
        now: Instant,
    ) {
        if self.lanes.len() >= MAX_GATE_ENTRIES
            && !self.lanes.contains_key(&(device, store.clone()))
        {
            self.lanes.retain(|_, l| l.next > now);
            if self.lanes.len() >= MAX_GATE_ENTRIES / 2 {
                self.lanes.clear();
            }
        }
        let interval = self.interval;
        let lane = self.lanes.entry((device, store.clone())).or_insert(Lane {
            highest: version,
            next: now,
        });
        lane.highest = lane.highest.max(version);
        if forwarded {
            lane.next = lane.next.max(now) + interval;
        }
    }

    /// Whether `version` of `device` in `store`, held back because it came over the rate
    /// ([`Gate::UseOnly`], or [`Gate::OverRate`] to be verified then), may be forwarded
    /// at `now`: holding the
    /// newest version of a burst until the rate allows, rather than dropping it, relays
    /// the burst's last version within one interval instead of leaving it to the digests.
    pub fn release(
        &self,
        device: &DeviceId,
        store: &StoreId,
        version: Version,
        now: Instant,
    ) -> Release {
        let Some(lane) = self.lanes.get(&(*device, store.clone())) else {
            return Release::Now;
        };
        if version < lane.highest {
            return Release::Superseded;
        }
        let slack = self.interval * (self.burst - 1);
        match lane.next > now + slack {
            true => Release::At(lane.next - slack),
            false => Release::Now,
        }
    }

    /// Pairs tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lanes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceId {
        DeviceId::from(libp2p::PeerId::random())
    }

    fn gate() -> GossipGate {
        GossipGate::new(Duration::from_millis(10), 4, DetState::default())
    }

    #[test]
    fn stale_and_duplicate_versions_are_declined_before_any_check() {
        let mut g = gate();
        let (d, s, t0) = (dev(), StoreId::new("a").unwrap(), Instant::now());
        assert_eq!(g.check(&d, &s, Version::new(2, 5), false, t0), Gate::Pass);
        g.passed(d, &s, Version::new(2, 5), true, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            g.check(&d, &s, Version::new(2, 5), false, later),
            Gate::Stale
        );
        assert_eq!(
            g.check(&d, &s, Version::new(2, 4), false, later),
            Gate::Stale
        );
        assert_eq!(
            g.check(&d, &s, Version::new(1, 99), false, later),
            Gate::Stale
        );
        assert_eq!(
            g.check(&d, &s, Version::new(2, 6), false, later),
            Gate::Pass
        );
        assert_eq!(
            g.check(&d, &s, Version::new(3, 0), false, later),
            Gate::Pass
        );
        // Other stores and devices are their own lanes.
        let other = StoreId::new("b").unwrap();
        assert_eq!(
            g.check(&d, &other, Version::new(1, 0), false, later),
            Gate::Pass
        );
        assert_eq!(
            g.check(&dev(), &s, Version::new(1, 0), false, later),
            Gate::Pass
        );
    }

    #[test]
    fn a_burst_passes_then_one_version_per_interval() {
        let mut g = gate();
        let (d, s, t0) = (dev(), StoreId::new("a").unwrap(), Instant::now());
        let mut passed = 0u64;
        // 1,000 versions in 100 ms: the burst of 4, then one per 10 ms.
        for i in 1..=1000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            let v = Version::new(1, i);
            if g.check(&d, &s, v, false, now) == Gate::Pass {
                g.passed(d, &s, v, true, now);
                passed += 1;
            }
        }
        assert!((12..=15).contains(&passed), "{passed}");
        // After a pause a version passes at once, and the newest always can eventually.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            g.check(&d, &s, Version::new(1, 1001), false, later),
            Gate::Pass
        );
    }

    #[test]
    fn past_the_rate_the_authors_own_copies_are_used_but_not_forwarded() {
        let mut g = gate();
        let (d, s, t0) = (dev(), StoreId::new("a").unwrap(), Instant::now());
        let mut forwarded = 0;
        for i in 1..=100u64 {
            let v = Version::new(1, i);
            match g.check(&d, &s, v, true, t0) {
                Gate::Pass => {
                    g.passed(d, &s, v, true, t0);
                    forwarded += 1;
                }
                Gate::UseOnly => g.passed(d, &s, v, false, t0),
                other => panic!("version {i}: {other:?}"),
            }
        }
        // Every version used, a burst forwarded; relayed copies past the rate declined,
        // and anything not newer than what was used is stale.
        assert_eq!(forwarded, 4);
        assert_eq!(
            g.check(&d, &s, Version::new(1, 101), false, t0),
            Gate::OverRate
        );
        assert_eq!(g.check(&d, &s, Version::new(1, 100), true, t0), Gate::Stale);
    }

    #[test]
    fn the_last_version_of_a_burst_is_released_once_the_rate_allows() {
        let mut g = gate();
        let (d, s, t0) = (dev(), StoreId::new("a").unwrap(), Instant::now());
        // 100 versions straight from the author at one instant: the burst of 4 forwarded,
        // the rest used only.
        for i in 1..=100u64 {
            let v = Version::new(1, i);
            let forward = g.check(&d, &s, v, true, t0) == Gate::Pass;
            g.passed(d, &s, v, forward, t0);
        }
        let last = Version::new(1, 100);
        // Held back until one interval after the burst, then it may go.
        let at = match g.release(&d, &s, last, t0) {
            Release::At(at) => at,
            other => panic!("{other:?}"),
        };
        assert_eq!(at, t0 + Duration::from_millis(10));
        assert_eq!(
            g.release(&d, &s, last, at - Duration::from_micros(1)),
            Release::At(at)
        );
        assert_eq!(g.release(&d, &s, last, at), Release::Now);
        // An older version than the newest verified is superseded, whatever the rate.
        assert_eq!(
            g.release(&d, &s, Version::new(1, 99), at),
            Release::Superseded
        );
        // Forwarding it spends a token: the next one waits another interval.
        g.passed(d, &s, last, true, at);
        g.passed(d, &s, Version::new(1, 101), false, at);
        assert_eq!(
            g.release(&d, &s, Version::new(1, 101), at),
            Release::At(at + Duration::from_millis(10))
        );
        // An untracked lane releases at once.
        assert_eq!(g.release(&dev(), &s, last, t0), Release::Now);
    }

    #[test]
    fn an_honest_writer_every_50_ms_is_never_held_back() {
        let mut g = GossipGate::new(Duration::from_millis(20), 8, DetState::default());
        let (d, s, t0) = (dev(), StoreId::new("a").unwrap(), Instant::now());
        for i in 1..=200u64 {
            // Arrival jitter of up to ±40 ms around a 50 ms period.
            let jitter = (i * 7919 % 80) as i64 - 40;
            let at = (i as i64 * 50 + jitter).max(0) as u64;
            let now = t0 + Duration::from_millis(at);
            let v = Version::new(1, i);
            assert_eq!(g.check(&d, &s, v, false, now), Gate::Pass, "write {i}");
            g.passed(d, &s, v, true, now);
        }
    }

    #[test]
    fn forgeries_move_nothing_and_the_map_stays_bounded() {
        let mut g = gate();
        let (d, s, t0) = (dev(), StoreId::new("a").unwrap(), Instant::now());
        // Checking (without `passed`) spends nothing and records nothing.
        for i in 0..100 {
            assert_eq!(
                g.check(&d, &s, Version::new(u64::MAX, i), false, t0),
                Gate::Pass
            );
        }
        assert_eq!(g.check(&d, &s, Version::new(1, 1), false, t0), Gate::Pass);
        for _ in 0..MAX_GATE_ENTRIES * 3 {
            g.passed(dev(), &s, Version::new(1, 1), true, t0);
            assert!(g.len() <= MAX_GATE_ENTRIES);
        }
    }
}

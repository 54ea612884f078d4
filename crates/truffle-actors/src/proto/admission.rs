//! Device admission: which device ids this node starts tracking, decided from a message's
//! unverified header before the new device's signature is checked.
//!
//! In an open mesh anyone can mint identities at the cost of a key pair each, and every
//! identity a node tracks costs it a membership entry, a signature check per message, a
//! slice in each store the identity writes and a place in every snapshot. So a node
//! admits new device ids at a bounded rate per neighbour (the peer that delivered the
//! first message naming the device: `burst` at once, then one per `interval`) and tracks
//! at most `max_devices`. A message of a device refused is neither verified nor
//! forwarded; the device's next message (a heartbeat every presence interval) is judged
//! again, so an honest device refused during a burst is admitted moments later.
//!
//! Only a verified message admits a device ([`Admission::admitted`]): a forgery naming a
//! new id neither takes a place nor spends its neighbour's rate. A device stays tracked
//! while it is heard of; once silent for the forget window (when the protocol core
//! forgets it too) its place is freed as soon as one is needed.

use std::time::{Duration, Instant};

use super::{DetMap, DetSet, DetState};
use crate::ids::DeviceId;

/// What to do with a message naming a device, judged before its signature check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A device tracked already (or this node itself): check the message as usual.
    Known,
    /// A new device, within the delivering neighbour's rate and the cap: check the
    /// message, and call [`Admission::admitted`] if it is valid.
    New,
    /// A new device past the delivering neighbour's rate: ignore the message.
    OverRate,
    /// A new device while `max_devices` are tracked: ignore the message.
    Full,
    /// A device not on the allow-list: ignore the message.
    NotAllowed,
}

impl Verdict {
    /// Whether the message is worth checking.
    pub fn pass(self) -> bool {
        matches!(self, Verdict::Known | Verdict::New)
    }
}

/// Full-map sweeps for silent devices happen at most this often (each walks every tracked
/// device; a flood of refused newcomers must not trigger one per message).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The admission of new device ids. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Admission {
    me: DeviceId,
    max_devices: usize,
    interval: Duration,
    burst: u32,
    /// How long a device may stay silent before its place may be given to another.
    idle: Duration,
    /// Tracked devices, with when a valid message of each was last seen.
    known: DetMap<DeviceId, Instant>,
    /// When set, the only devices (besides this one) ever admitted.
    allowed: Option<DetSet<DeviceId>>,
    /// Per neighbour, the token bucket as a theoretical arrival time (GCRA, as in the
    /// gossip gate): a new device may be admitted through it while
    /// `next <= now + (burst - 1) * interval`.
    peers: DetMap<DeviceId, Instant>,
    last_sweep: Option<Instant>,
}

impl Admission {
    /// Admission for node `me`: new devices at `burst`, then one per `interval`, per
    /// neighbour (a zero interval turns the rate off), at most `max_devices` tracked,
    /// places of devices silent for `idle` reusable.
    pub fn new(
        me: DeviceId,
        max_devices: usize,
        interval: Duration,
        burst: u32,
        idle: Duration,
        hasher: DetState,
    ) -> Self {
        Self {
            me,
            max_devices: max_devices.max(1),
            interval,
            burst: burst.max(1),
            idle,
            known: DetMap::with_hasher(hasher.clone()),
            allowed: None,
            peers: DetMap::with_hasher(hasher),
            last_sweep: None,
        }
    }

    /// Admits only these devices (besides this node itself), if `allowed` is given.
    pub fn allow_only(mut self, allowed: Option<impl IntoIterator<Item = DeviceId>>) -> Self {
        self.allowed = allowed.map(|a| {
            let mut set = DetSet::with_hasher(self.known.hasher().clone());
            set.extend(a);
            set
        });
        self
    }

    /// Whether a message naming `device`, delivered by neighbour `via`, is worth checking.
    /// Spends nothing: [`admitted`](Self::admitted) does, once the message is verified.
    pub fn check(&mut self, device: &DeviceId, via: &DeviceId, now: Instant) -> Verdict {
        if *device == self.me || self.known.contains_key(device) {
            return Verdict::Known;
        }
        if self
            .allowed
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(device))
        {
            return Verdict::NotAllowed;
        }
        if self.known.len() >= self.max_devices {
            self.sweep(now);
            if self.known.len() >= self.max_devices {
                return Verdict::Full;
            }
        }
        if !self.interval.is_zero() {
            let slack = self.interval * (self.burst - 1);
            if self.peers.get(via).is_some_and(|next| *next > now + slack) {
                return Verdict::OverRate;
            }
        }
        Verdict::New
    }

    /// A message of `device` that [`check`](Self::check) let through, delivered by `via`,
    /// passed its signature check: the device is tracked from now on (a new one spends a
    /// token of `via`'s rate), and was heard of at `now`.
    pub fn admitted(&mut self, device: DeviceId, via: &DeviceId, now: Instant) {
        if device == self.me {
            return;
        }
        if let Some(seen) = self.known.get_mut(&device) {
            *seen = now;
            return;
        }
        if !self.interval.is_zero() {
            let next = self.peers.entry(*via).or_insert(now);
            *next = (*next).max(now) + self.interval;
        }
        self.known.insert(device, now);
    }

    /// `peer` disconnected: its rate is forgotten (it starts afresh when it comes back,
    /// which costs it a handshake at least).
    pub fn peer_gone(&mut self, peer: &DeviceId) {
        self.peers.remove(peer);
    }

    /// Devices tracked.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.known.len()
    }

    /// Frees the places of devices silent for the idle window (at most once per
    /// [`SWEEP_EVERY`]).
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        let idle = self.idle;
        self.known
            .retain(|_, seen| now.saturating_duration_since(*seen) < idle);
        self.peers.retain(|_, next| *next > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceId {
        DeviceId::from(libp2p::PeerId::random())
    }

    fn admission(max: usize) -> Admission {
        Admission::new(
            dev(),
            max,
            Duration::from_millis(100),
            4,
            Duration::from_secs(60),
            DetState::default(),
        )
    }

    /// Admits every device `check` lets through; returns how many were admitted.
    fn offer(a: &mut Admission, via: &DeviceId, n: usize, now: Instant) -> usize {
        let mut admitted = 0;
        for _ in 0..n {
            let d = dev();
            if a.check(&d, via, now) == Verdict::New {
                a.admitted(d, via, now);
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn a_neighbour_brings_in_a_burst_of_new_devices_then_one_per_interval() {
        let mut a = admission(10_000);
        let (via, other, t0) = (dev(), dev(), Instant::now());
        assert_eq!(offer(&mut a, &via, 1000, t0), 4);
        // Another neighbour has its own rate.
        assert_eq!(offer(&mut a, &other, 1000, t0), 4);
        // One more per 100 ms.
        assert_eq!(
            offer(&mut a, &via, 1000, t0 + Duration::from_millis(100)),
            1
        );
        assert_eq!(offer(&mut a, &via, 1000, t0 + Duration::from_secs(1)), 4);
        assert_eq!(a.tracked(), 13);
    }

    #[test]
    fn known_devices_always_pass_and_forgeries_spend_nothing() {
        let mut a = admission(10_000);
        let (via, t0) = (dev(), Instant::now());
        let known = dev();
        assert_eq!(a.check(&known, &via, t0), Verdict::New);
        a.admitted(known, &via, t0);
        // Checked but never admitted (their signatures did not verify): nothing spent.
        for _ in 0..100 {
            assert_eq!(a.check(&dev(), &via, t0), Verdict::New);
        }
        assert_eq!(offer(&mut a, &via, 100, t0), 3);
        assert_eq!(a.check(&dev(), &via, t0), Verdict::OverRate);
        assert_eq!(a.check(&known, &via, t0), Verdict::Known);
        let me = a.me;
        assert_eq!(a.check(&me, &via, t0), Verdict::Known);
    }

    #[test]
    fn at_most_max_devices_are_tracked_and_silent_ones_make_room() {
        let mut a = admission(10);
        let t0 = Instant::now();
        for i in 0..100 {
            // A fresh neighbour each time: only the cap holds them back.
            offer(&mut a, &dev(), 1, t0 + Duration::from_millis(i));
            assert!(a.tracked() <= 10);
        }
        assert_eq!(a.tracked(), 10);
        assert_eq!(a.check(&dev(), &dev(), t0), Verdict::Full);
        // Past the idle window the places are free again.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(a.check(&dev(), &dev(), later), Verdict::New);
        assert_eq!(a.tracked(), 0);
    }

    #[test]
    fn with_an_allow_list_only_the_devices_on_it_get_in() {
        let (ok, t0) = (dev(), Instant::now());
        let mut a = admission(10_000).allow_only(Some([ok]));
        let me = a.me;
        assert_eq!(a.check(&dev(), &ok, t0), Verdict::NotAllowed);
        assert_eq!(a.check(&me, &ok, t0), Verdict::Known);
        assert_eq!(a.check(&ok, &ok, t0), Verdict::New);
        a.admitted(ok, &ok, t0);
        assert_eq!(a.check(&ok, &dev(), t0), Verdict::Known);
    }

    #[test]
    fn a_zero_interval_turns_the_rate_off() {
        let mut a = Admission::new(
            dev(),
            usize::MAX,
            Duration::ZERO,
            1,
            Duration::from_secs(60),
            DetState::default(),
        );
        assert_eq!(offer(&mut a, &dev(), 1000, Instant::now()), 1000);
    }
}

//! Who is alive, and which slice versions this node holds: pure bookkeeping, no I/O.
//!
//! Liveness is judged only from this node's own evidence (a fresh presence heartbeat or a
//! strictly newer slice, both signed by the device itself), never from a third party.

use std::time::{Duration, Instant};

use super::{DetMap, DetState};
use crate::ids::{DeviceId, Incarnation, StoreId, Version};
use crate::store::RemovalReason;

#[derive(Debug, Default)]
struct Track {
    /// Highest version ever admitted (kept after removal, so old copies cannot come back).
    seen: Version,
    /// Whether the store currently holds the device's slice.
    held: bool,
}

#[derive(Debug)]
struct DeviceState {
    online: bool,
    last_seen: Instant,
    /// Highest `(incarnation, presence seq)` heard.
    presence: (Incarnation, u64),
    /// Highest incarnation seen in a presence or a slice: the device's current run.
    /// Slices of earlier runs are stale even in stores the new run has not written yet.
    incarnation: Incarnation,
    /// Incarnations up to this one said goodbye.
    left: Option<Incarnation>,
    stores: DetMap<StoreId, Track>,
}

/// An accusation under way against one device.
#[derive(Debug)]
struct Suspicion {
    since: Instant,
    /// Distinct accusers heard (at most [`MAX_ACCUSERS`]).
    accusers: Vec<DeviceId>,
}

/// Accusers counted per suspicion: with this many, its timeout is at its shortest.
pub(crate) const MAX_ACCUSERS: usize = 3;

/// The order-independent hash of one member entry (device, run, heartbeat), the same on
/// every node: membership digests XOR these, so two nodes compare their whole views in
/// one number and update it in O(1) at every change.
pub(crate) fn member_hash(device: &DeviceId, presence: (Incarnation, u64)) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6d65_6d62).hash_one((device, presence))
}

impl DeviceState {
    fn new(now: Instant, h: &DetState) -> Self {
        Self {
            online: false,
            last_seen: now,
            presence: (0, 0),
            incarnation: 0,
            left: None,
            stores: DetMap::with_hasher(h.clone()),
        }
    }

    fn has_left(&self, inc: Incarnation) -> bool {
        self.left.is_some_and(|l| inc <= l)
    }

    fn drop_held(&mut self) -> Vec<StoreId> {
        let mut out: Vec<StoreId> = self
            .stores
            .iter_mut()
            .filter(|(_, t)| t.held)
            .map(|(s, t)| {
                t.held = false;
                s.clone()
            })
            .collect();
        out.sort();
        out
    }
}

/// Whether to apply an incoming slice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Newer than held: forward to the store.
    Apply,
    /// Not newer than held.
    Stale,
    /// From an incarnation that already left.
    AfterLeave,
}

/// What a presence heartbeat changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PresenceOutcome {
    /// Newer than any heartbeat heard before (counts as evidence of life).
    pub fresh: bool,
    /// The device was offline (or unknown) and is live again.
    pub came_online: bool,
    /// The device restarted: these stores hold a slice of an older incarnation that the new
    /// digest does not mention, so they must be dropped.
    pub drop_stale_incarnation: Vec<StoreId>,
}

/// A device removal decided by this node.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Removal {
    pub device: DeviceId,
    pub reason: RemovalReason,
    pub stores: Vec<StoreId>,
}

#[derive(Debug)]
pub(crate) struct Membership {
    timeout: Duration,
    hasher: DetState,
    devices: DetMap<DeviceId, DeviceState>,
    /// How many devices are online, kept in step with every `online` change so that the
    /// gauge costs nothing per message.
    online: usize,
    /// XOR of [`member_hash`] over the online devices, kept in step like `online`.
    hash: u64,
    /// Open accusations (watch liveness): each device here is removed unless it speaks,
    /// with something newer than what its accusers knew, before its suspicion times out.
    suspects: DetMap<DeviceId, Suspicion>,
}

/// The hash contribution of a device state (zero while offline).
fn contribution(id: &DeviceId, d: &DeviceState) -> u64 {
    if d.online {
        member_hash(id, d.presence)
    } else {
        0
    }
}

/// Takes an online device offline by timeout (silence, or an accusation nobody refuted),
/// keeping the member hash and the online count in step.
fn go_offline(id: DeviceId, d: &mut DeviceState, hash: &mut u64, online: &mut usize) -> Removal {
    *hash ^= contribution(&id, d);
    d.online = false;
    *online -= 1;
    Removal {
        device: id,
        reason: RemovalReason::Timeout,
        stores: d.drop_held(),
    }
}

impl Membership {
    pub fn new(timeout: Duration, hasher: DetState) -> Self {
        Self {
            timeout,
            devices: DetMap::with_hasher(hasher.clone()),
            suspects: DetMap::with_hasher(hasher.clone()),
            hasher,
            online: 0,
            hash: 0,
        }
    }

    /// XOR of [`member_hash`] over the online devices.
    pub fn members_hash(&self) -> u64 {
        self.hash
    }

    /// The online devices with their latest heard `(incarnation, presence seq)`.
    pub fn members(&self) -> impl Iterator<Item = (DeviceId, (Incarnation, u64))> + '_ {
        self.devices
            .iter()
            .filter(|(_, d)| d.online)
            .map(|(id, d)| (*id, d.presence))
    }

    /// The latest `(incarnation, presence seq)` heard of `device`, and whether it is online.
    pub fn presence_of(&self, device: &DeviceId) -> Option<((Incarnation, u64), bool)> {
        self.devices.get(device).map(|d| (d.presence, d.online))
    }

    /// Whether a member entry `(incarnation, seq)` heard elsewhere is newer than what this
    /// node knows of `device` (so its heartbeat is worth fetching).
    pub fn is_newer(&self, device: &DeviceId, presence: (Incarnation, u64)) -> bool {
        match self.devices.get(device) {
            None => true,
            Some(d) => !d.has_left(presence.0) && presence > d.presence,
        }
    }

    /// An accusation of `device` at `of` by `accuser`: opens (or joins) a suspicion, unless
    /// the device is not online or already spoke since `of`. Returns whether `accuser` was
    /// newly counted.
    pub fn suspect(
        &mut self,
        device: DeviceId,
        of: (Incarnation, u64),
        accuser: DeviceId,
        now: Instant,
    ) -> bool {
        let Some(d) = self.devices.get(&device) else {
            return false;
        };
        if !d.online || of < d.presence {
            return false;
        }
        let s = self.suspects.entry(device).or_insert_with(|| Suspicion {
            since: now,
            accusers: Vec::new(),
        });
        if s.accusers.len() >= MAX_ACCUSERS || s.accusers.contains(&accuser) {
            return false;
        }
        s.accusers.push(accuser);
        true
    }

    /// Whether `device` is under suspicion (watch liveness).
    pub fn is_suspected(&self, device: &DeviceId) -> bool {
        self.suspects.contains_key(device)
    }

    /// Suspicions that ran out: one accuser waits `max`, and each further independent
    /// accuser shortens the wait, down to `min` at [`MAX_ACCUSERS`] (Lifeguard's rule: the
    /// more members agree, the less likely all of them are wrong).
    pub fn expire_suspects(&mut self, now: Instant, min: Duration, max: Duration) -> Vec<Removal> {
        let mut out = Vec::new();
        let mut due: Vec<DeviceId> = self
            .suspects
            .iter()
            .filter(|(_, s)| {
                let k = s.accusers.len().clamp(1, MAX_ACCUSERS) as f64;
                let frac = k.ln() / (MAX_ACCUSERS as f64).ln();
                let wait = max.saturating_sub((max.saturating_sub(min)).mul_f64(frac));
                now.saturating_duration_since(s.since) >= wait
            })
            .map(|(d, _)| *d)
            .collect();
        due.sort();
        for id in due {
            self.suspects.remove(&id);
            let Some(d) = self.devices.get_mut(&id) else {
                continue;
            };
            if d.online {
                out.push(go_offline(id, d, &mut self.hash, &mut self.online));
            }
        }
        // `due` was sorted: so is `out`.
        out
    }

    pub fn online_count(&self) -> usize {
        self.online
    }

    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.devices.get(device).is_some_and(|d| d.online)
    }

    /// The version of `device`'s slice in `store` held here, if one is.
    pub fn held_version(&self, device: &DeviceId, store: &StoreId) -> Option<Version> {
        let t = self.devices.get(device)?.stores.get(store)?;
        t.held.then_some(t.seen)
    }

    /// A heartbeat from `device`; `digest` lists the stores it has a slice in.
    pub fn on_presence(
        &mut self,
        device: DeviceId,
        incarnation: Incarnation,
        seq: u64,
        digest: &[(StoreId, Version)],
        complete: bool,
        now: Instant,
    ) -> PresenceOutcome {
        let d = self
            .devices
            .entry(device)
            .or_insert_with(|| DeviceState::new(now, &self.hasher));
        if d.has_left(incarnation) || (incarnation, seq) <= d.presence {
            return PresenceOutcome::default();
        }
        let before = contribution(&device, d);
        self.suspects.remove(&device);
        d.presence = (incarnation, seq);
        d.incarnation = d.incarnation.max(incarnation);
        d.last_seen = now;
        let came_online = !d.online;
        d.online = true;
        self.online += usize::from(came_online);
        self.hash ^= before ^ contribution(&device, d);
        let mut drop_stale_incarnation = Vec::new();
        if complete {
            // Slices of an earlier run that the current run does not have: gone for good.
            let current = d.incarnation;
            for (store, t) in d.stores.iter_mut() {
                if t.held && t.seen.incarnation < current && !digest.iter().any(|(s, _)| s == store)
                {
                    t.held = false;
                    drop_stale_incarnation.push(store.clone());
                }
            }
            drop_stale_incarnation.sort();
        }
        PresenceOutcome {
            fresh: true,
            came_online,
            drop_stale_incarnation,
        }
    }

    /// Whether a slice version advertised in a digest is one this node should fetch.
    pub fn wants(&self, device: &DeviceId, store: &StoreId, version: Version) -> bool {
        let Some(d) = self.devices.get(device) else {
            return true;
        };
        if d.has_left(version.incarnation) || version.incarnation < d.incarnation {
            return false;
        }
        match d.stores.get(store) {
            None => true,
            Some(t) => version > t.seen || (version == t.seen && !t.held && d.online),
        }
    }

    /// Decides on an incoming, signature-checked slice.
    pub fn admit(
        &mut self,
        device: DeviceId,
        store: &StoreId,
        version: Version,
        now: Instant,
    ) -> Admit {
        let d = self
            .devices
            .entry(device)
            .or_insert_with(|| DeviceState::new(now, &self.hasher));
        if d.has_left(version.incarnation) {
            return Admit::AfterLeave;
        }
        if version.incarnation < d.incarnation {
            return Admit::Stale;
        }
        d.incarnation = version.incarnation;
        let online = d.online;
        let t = d.stores.entry(store.clone()).or_default();
        if version > t.seen {
            // A version never seen before can only come from the device itself: evidence.
            t.seen = version;
            t.held = true;
            if !d.online {
                d.online = true;
                self.online += 1;
                self.hash ^= contribution(&device, d);
            }
            // Fresh evidence of life answers an accusation.
            self.suspects.remove(&device);
            d.last_seen = now;
            Admit::Apply
        } else if version == t.seen && !t.held && online {
            // Re-fetch after a removal, once the device has spoken again.
            t.held = true;
            Admit::Apply
        } else {
            Admit::Stale
        }
    }

    /// The device said it is leaving.
    pub fn on_leave(
        &mut self,
        device: DeviceId,
        incarnation: Incarnation,
        now: Instant,
    ) -> Option<Removal> {
        let d = self
            .devices
            .entry(device)
            .or_insert_with(|| DeviceState::new(now, &self.hasher));
        // A leave of an earlier run (a replay, or one that arrived late) must not end the
        // current run, whichever of its messages we heard first.
        if d.has_left(incarnation) || incarnation < d.presence.0 || incarnation < d.incarnation {
            return None;
        }
        d.left = Some(incarnation);
        let was_online = d.online;
        self.hash ^= contribution(&device, d);
        self.suspects.remove(&device);
        d.online = false;
        self.online -= usize::from(was_online);
        let stores = d.drop_held();
        (was_online || !stores.is_empty()).then_some(Removal {
            device,
            reason: RemovalReason::Left,
            stores,
        })
    }

    /// Forgets devices that have been offline, holding nothing, for `after`: bookkeeping
    /// must not grow with every identity that ever said hello. (The price: a device
    /// forgotten this way is treated like a new one if an old copy of its slice turns up,
    /// which takes a relay that kept it for that long.)
    pub fn forget_silent(&mut self, now: Instant, after: Duration) {
        self.devices.retain(|_, d| {
            d.online
                || d.stores.values().any(|t| t.held)
                || now.saturating_duration_since(d.last_seen) < after
        });
    }

    /// Whether `device` is tracked (online or remembered).
    pub fn knows(&self, device: &DeviceId) -> bool {
        self.devices.contains_key(device)
    }

    /// Devices tracked (online or remembered).
    pub fn known(&self) -> usize {
        self.devices.len()
    }

    /// Devices with no evidence for longer than the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<Removal> {
        let mut out = Vec::new();
        for (id, d) in self.devices.iter_mut() {
            if d.online && now.saturating_duration_since(d.last_seen) > self.timeout {
                out.push(go_offline(*id, d, &mut self.hash, &mut self.online));
            }
        }
        out.sort_by_key(|r| r.device);
        out
    }

    /// The store could not use a slice it was sent (for example its data did not decode):
    /// mark it not held so a later copy is not mistaken for a duplicate.
    pub fn unhold(&mut self, device: &DeviceId, store: &StoreId) {
        if let Some(t) = self
            .devices
            .get_mut(device)
            .and_then(|d| d.stores.get_mut(store))
        {
            t.held = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceId {
        DeviceId::from(libp2p::PeerId::random())
    }

    fn s(n: &str) -> StoreId {
        StoreId::new(n).unwrap()
    }

    #[test]
    fn newer_applies_older_and_equal_are_stale() {
        let mut m = Membership::new(Duration::from_secs(3), DetState::default());
        let (d, st, t0) = (dev(), s("a"), Instant::now());
        assert_eq!(m.admit(d, &st, Version::new(1, 2), t0), Admit::Apply);
        assert_eq!(m.admit(d, &st, Version::new(1, 2), t0), Admit::Stale);
        assert_eq!(m.admit(d, &st, Version::new(1, 1), t0), Admit::Stale);
        assert_eq!(m.admit(d, &st, Version::new(2, 0), t0), Admit::Apply);
    }

    #[test]
    fn leave_removes_and_blocks_that_incarnation() {
        let mut m = Membership::new(Duration::from_secs(3), DetState::default());
        let (d, st, t0) = (dev(), s("a"), Instant::now());
        m.admit(d, &st, Version::new(5, 1), t0);
        let r = m.on_leave(d, 5, t0).unwrap();
        assert_eq!(r.reason, RemovalReason::Left);
        assert_eq!(r.stores, vec![st.clone()]);
        assert_eq!(m.admit(d, &st, Version::new(5, 9), t0), Admit::AfterLeave);
        assert!(!m.wants(&d, &st, Version::new(5, 9)));
        // the same device restarting is welcome
        assert_eq!(m.admit(d, &st, Version::new(6, 0), t0), Admit::Apply);
    }

    #[test]
    fn a_leave_of_an_earlier_run_does_not_end_the_current_one() {
        let mut m = Membership::new(Duration::from_secs(3), DetState::default());
        let (d, st, t0) = (dev(), s("a"), Instant::now());
        // The new run's slice arrives before any of its presence does.
        assert_eq!(m.admit(d, &st, Version::new(7, 1), t0), Admit::Apply);
        assert_eq!(m.on_leave(d, 6, t0), None);
        assert_eq!(m.admit(d, &st, Version::new(7, 2), t0), Admit::Apply);
    }

    #[test]
    fn timeout_removes_and_fresh_presence_revives() {
        let timeout = Duration::from_secs(3);
        let mut m = Membership::new(timeout, DetState::default());
        let (d, st, t0) = (dev(), s("a"), Instant::now());
        assert!(m.on_presence(d, 1, 1, &[], true, t0).came_online);
        m.admit(d, &st, Version::new(1, 3), t0);
        assert!(m.expire(t0 + timeout / 2).is_empty());
        let gone = m.expire(t0 + timeout * 2);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].stores, vec![st.clone()]);
        assert!(!m.is_online(&d));
        // a replayed old heartbeat is no evidence
        assert!(!m.on_presence(d, 1, 1, &[], true, t0).fresh);
        // a copy of the held version is not accepted while the device is silent
        assert_eq!(m.admit(d, &st, Version::new(1, 3), t0), Admit::Stale);
        // the device speaks again: its current version is wanted and applied
        assert!(m.on_presence(d, 1, 2, &[], true, t0).came_online);
        assert!(m.wants(&d, &st, Version::new(1, 3)));
        assert_eq!(m.admit(d, &st, Version::new(1, 3), t0), Admit::Apply);
        assert!(!m.wants(&d, &st, Version::new(1, 3)));
    }

    #[test]
    fn an_old_run_cannot_come_back_through_a_relay() {
        let mut m = Membership::new(Duration::from_secs(3), DetState::default());
        let (d, t0) = (dev(), Instant::now());
        // This node first hears of the device through a relayed slice of its old run…
        assert_eq!(m.admit(d, &s("a"), Version::new(1, 4), t0), Admit::Apply);
        // …then the device's current run speaks, without store "a".
        let out = m.on_presence(d, 2, 1, &[(s("b"), Version::new(2, 0))], true, t0);
        assert_eq!(out.drop_stale_incarnation, vec![s("a")]);
        // Copies of the old run are stale from now on, in every store.
        assert_eq!(m.admit(d, &s("a"), Version::new(1, 5), t0), Admit::Stale);
        assert!(!m.wants(&d, &s("c"), Version::new(1, 9)));
        assert_eq!(m.admit(d, &s("b"), Version::new(2, 0), t0), Admit::Apply);
    }

    #[test]
    fn the_online_count_follows_every_change() {
        let mut m = Membership::new(Duration::from_secs(1), DetState::default());
        let t0 = Instant::now();
        let recount = |m: &Membership| m.devices.values().filter(|d| d.online).count();
        let (a, b, c) = (dev(), dev(), dev());
        m.on_presence(a, 1, 1, &[], true, t0);
        m.on_presence(a, 1, 2, &[], true, t0);
        m.admit(b, &s("x"), Version::new(1, 1), t0);
        m.admit(b, &s("x"), Version::new(1, 2), t0);
        assert_eq!((m.online_count(), recount(&m)), (2, 2));
        m.on_leave(b, 1, t0);
        m.on_leave(c, 1, t0);
        assert_eq!((m.online_count(), recount(&m)), (1, 1));
        m.expire(t0 + Duration::from_secs(5));
        assert_eq!((m.online_count(), recount(&m)), (0, 0));
        m.on_presence(a, 1, 3, &[], true, t0 + Duration::from_secs(5));
        assert_eq!((m.online_count(), recount(&m)), (1, 1));
    }

    #[test]
    fn silent_devices_are_forgotten_after_a_while() {
        let timeout = Duration::from_secs(1);
        let mut m = Membership::new(timeout, DetState::default());
        let t0 = Instant::now();
        for _ in 0..100 {
            m.on_presence(dev(), 1, 1, &[], true, t0);
        }
        let live = dev();
        m.on_presence(live, 1, 1, &[], true, t0 + timeout * 20);
        m.expire(t0 + timeout * 20);
        m.forget_silent(t0 + timeout * 20, timeout * 10);
        assert_eq!(m.known(), 1);
    }

    #[test]
    fn restart_drops_stores_the_new_incarnation_does_not_have() {
        let mut m = Membership::new(Duration::from_secs(3), DetState::default());
        let (d, t0) = (dev(), Instant::now());
        m.on_presence(d, 1, 1, &[], true, t0);
        m.admit(d, &s("a"), Version::new(1, 1), t0);
        m.admit(d, &s("b"), Version::new(1, 1), t0);
        let out = m.on_presence(d, 2, 1, &[(s("a"), Version::new(2, 0))], true, t0);
        assert_eq!(out.drop_stale_incarnation, vec![s("b")]);
    }
}

//! Who is alive, and which slice versions this node holds: pure bookkeeping, no I/O.
//!
//! Liveness is judged only from this node's own evidence (a fresh presence heartbeat or a
//! strictly newer slice, both signed by the device itself), never from a third party.

use std::collections::VecDeque;
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
    stores: Tracks,
}

/// A device's [`Track`] per store, sorted by store. Most devices write one store or a
/// few, and every node keeps one of these per device, so a sorted vector (a few dozen
/// bytes per store) rather than a hash map (a few hundred bytes even when nearly empty).
#[derive(Debug, Default)]
struct Tracks(Vec<(StoreId, Track)>);

impl Tracks {
    fn get(&self, store: &StoreId) -> Option<&Track> {
        let i = self.0.binary_search_by(|(s, _)| s.cmp(store)).ok()?;
        Some(&self.0[i].1)
    }

    fn get_mut(&mut self, store: &StoreId) -> Option<&mut Track> {
        let i = self.0.binary_search_by(|(s, _)| s.cmp(store)).ok()?;
        Some(&mut self.0[i].1)
    }

    /// The track of `store`, added (never seen, not held) if there is none.
    fn entry(&mut self, store: &StoreId) -> &mut Track {
        let i = match self.0.binary_search_by(|(s, _)| s.cmp(store)) {
            Ok(i) => i,
            Err(i) => {
                // One more, not the four a vector grows to from empty.
                self.0.reserve_exact(1);
                self.0.insert(i, (store.clone(), Track::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    fn iter(&self) -> impl Iterator<Item = (&StoreId, &Track)> {
        self.0.iter().map(|(s, t)| (s, t))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&StoreId, &mut Track)> {
        self.0.iter_mut().map(|(s, t)| (&*s, t))
    }

    fn values(&self) -> impl Iterator<Item = &Track> {
        self.0.iter().map(|(_, t)| t)
    }
}

/// What is kept of a device after it is forgotten: enough to tell its old messages from
/// new ones, so that a replay of anything it sent before it left or went silent cannot
/// bring it back. A few dozen bytes plus one version per store it wrote.
#[derive(Debug)]
struct Tombstone {
    presence: (Incarnation, u64),
    incarnation: Incarnation,
    left: Option<Incarnation>,
    /// Highest version seen per store.
    stores: Box<[(StoreId, Version)]>,
    /// When it was laid (for the lifetime), and its place in [`Tombstones::order`].
    at: Instant,
    stamp: u64,
}

impl Tombstone {
    fn has_left(&self, inc: Incarnation) -> bool {
        self.left.is_some_and(|l| inc <= l)
    }

    fn seen(&self, store: &StoreId) -> Option<Version> {
        self.stores
            .iter()
            .find(|(s, _)| s == store)
            .map(|(_, v)| *v)
    }
}

/// Most devices remembered after they are forgotten ([`Tombstone`]s): past this the oldest
/// goes first. At about 200 bytes each (a device id, a few numbers, one version per store)
/// this is a few megabytes at most.
pub(crate) const MAX_TOMBSTONES: usize = 16_384;
/// How long a tombstone is kept: a replay of a departed device's messages is refused for
/// at least this long (unless [`MAX_TOMBSTONES`] newer departures pushed it out first).
pub(crate) const TOMBSTONE_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Forgotten devices, bounded in count and age, oldest evicted first.
#[derive(Debug)]
struct Tombstones {
    by_device: DetMap<DeviceId, Tombstone>,
    /// `(stamp, device)` in the order laid; an entry whose stamp no longer matches the
    /// device's tombstone (restored, or laid again since) is skipped.
    order: VecDeque<(u64, DeviceId)>,
    next_stamp: u64,
}

impl Tombstones {
    fn new(h: &DetState) -> Self {
        Self {
            by_device: DetMap::with_hasher(h.clone()),
            order: VecDeque::new(),
            next_stamp: 0,
        }
    }

    fn lay(&mut self, device: DeviceId, d: &DeviceState, now: Instant) {
        let stores: Vec<(StoreId, Version)> =
            d.stores.iter().map(|(s, t)| (s.clone(), t.seen)).collect();
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        self.by_device.insert(
            device,
            Tombstone {
                presence: d.presence,
                incarnation: d.incarnation,
                left: d.left,
                stores: stores.into_boxed_slice(),
                at: now,
                stamp,
            },
        );
        self.order.push_back((stamp, device));
        while self.by_device.len() > MAX_TOMBSTONES {
            self.evict_front();
        }
        // Stale order entries (of restored tombstones) must not pile up either.
        if self.order.len() > 2 * MAX_TOMBSTONES.max(self.by_device.len()) {
            let live = &self.by_device;
            self.order
                .retain(|(stamp, d)| live.get(d).is_some_and(|t| t.stamp == *stamp));
        }
    }

    /// Drops the oldest tombstone (and stale order entries before it).
    fn evict_front(&mut self) {
        while let Some((stamp, d)) = self.order.pop_front() {
            if self.by_device.get(&d).is_some_and(|t| t.stamp == stamp) {
                self.by_device.remove(&d);
                return;
            }
        }
    }

    /// Drops tombstones older than `lifetime`.
    fn expire(&mut self, now: Instant, lifetime: Duration) {
        while let Some((stamp, d)) = self.order.front().copied() {
            match self.by_device.get(&d) {
                Some(t) if t.stamp == stamp => {
                    if now.saturating_duration_since(t.at) < lifetime {
                        return;
                    }
                    self.by_device.remove(&d);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }
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
    fn new(now: Instant) -> Self {
        Self {
            online: false,
            last_seen: now,
            presence: (0, 0),
            incarnation: 0,
            left: None,
            stores: Tracks::default(),
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
    devices: DetMap<DeviceId, DeviceState>,
    /// How many devices are online, kept in step with every `online` change so that the
    /// gauge costs nothing per message.
    online: usize,
    /// XOR of [`member_hash`] over the online devices, kept in step like `online`.
    hash: u64,
    /// Open accusations (watch liveness): each device here is removed unless it speaks,
    /// with something newer than what its accusers knew, before its suspicion times out.
    suspects: DetMap<DeviceId, Suspicion>,
    /// What is kept of forgotten devices, so their old messages stay old.
    tombstones: Tombstones,
}

/// The hash contribution of a device state (zero while offline).
fn contribution(id: &DeviceId, d: &DeviceState) -> u64 {
    if d.online {
        member_hash(id, d.presence)
    } else {
        0
    }
}

/// The state of `device`: tracked, brought back from its tombstone (offline, holding
/// nothing, with the versions last seen of it), or new.
fn entry<'a>(
    devices: &'a mut DetMap<DeviceId, DeviceState>,
    tombstones: &mut Tombstones,
    device: DeviceId,
    now: Instant,
) -> &'a mut DeviceState {
    devices.entry(device).or_insert_with(|| {
        let mut d = DeviceState::new(now);
        if let Some(t) = tombstones.by_device.remove(&device) {
            d.presence = t.presence;
            d.incarnation = t.incarnation;
            d.left = t.left;
            // Both sorted by store.
            d.stores.0 = t
                .stores
                .iter()
                .map(|(s, v)| {
                    let track = Track {
                        seen: *v,
                        held: false,
                    };
                    (s.clone(), track)
                })
                .collect();
        }
        d
    })
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
            tombstones: Tombstones::new(&hasher),
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

    /// How long since this node last had evidence of `device` (a heartbeat or a new slice).
    pub fn silent_for(&self, device: &DeviceId, now: Instant) -> Option<Duration> {
        self.devices
            .get(device)
            .map(|d| now.saturating_duration_since(d.last_seen))
    }

    /// Whether a member entry `(incarnation, seq)` heard elsewhere is newer than what this
    /// node knows of `device` (so its heartbeat is worth fetching).
    pub fn is_newer(&self, device: &DeviceId, presence: (Incarnation, u64)) -> bool {
        match (
            self.devices.get(device),
            self.tombstones.by_device.get(device),
        ) {
            (Some(d), _) => !d.has_left(presence.0) && presence > d.presence,
            (None, Some(t)) => !t.has_left(presence.0) && presence > t.presence,
            (None, None) => true,
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

    /// Whether any device is under suspicion (watch liveness).
    pub fn has_suspects(&self) -> bool {
        !self.suspects.is_empty()
    }

    /// Suspicions that ran out: one accuser waits `max`, and each further independent
    /// accuser shortens the wait, down to `min` at [`MAX_ACCUSERS`] (Lifeguard's rule: the
    /// more members agree, the less likely all of them are wrong). A device `spare` holds
    /// for is not removed: its suspicion starts over from `now` and it is listed in
    /// `spared`.
    pub fn expire_suspects(
        &mut self,
        now: Instant,
        min: Duration,
        max: Duration,
        spare: impl Fn(&DeviceId) -> bool,
        spared: &mut Vec<DeviceId>,
    ) -> Vec<Removal> {
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
            if spare(&id) {
                if let Some(s) = self.suspects.get_mut(&id) {
                    s.since = now;
                }
                spared.push(id);
                continue;
            }
            self.suspects.remove(&id);
            let Some(d) = self.devices.get_mut(&id) else {
                continue;
            };
            if d.online {
                // The forget window counts from the removal: with watch liveness an idle
                // member's last heartbeat can be minutes old, and forgetting it (its
                // address with it) at once left nothing to redial after a partition heals.
                d.last_seen = now;
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
        let d = entry(&mut self.devices, &mut self.tombstones, device, now);
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
            // A forgotten device: only something newer than all it was seen with.
            return self.tombstones.by_device.get(device).is_none_or(|t| {
                !t.has_left(version.incarnation)
                    && version.incarnation >= t.incarnation
                    && t.seen(store).is_none_or(|seen| version > seen)
            });
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
        let d = entry(&mut self.devices, &mut self.tombstones, device, now);
        if d.has_left(version.incarnation) {
            return Admit::AfterLeave;
        }
        if version.incarnation < d.incarnation {
            return Admit::Stale;
        }
        d.incarnation = version.incarnation;
        let online = d.online;
        let t = d.stores.entry(store);
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
        let d = entry(&mut self.devices, &mut self.tombstones, device, now);
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
    /// must not grow with every identity that ever said hello. What was last seen of each
    /// stays behind as a tombstone (at most [`MAX_TOMBSTONES`], for up to
    /// [`TOMBSTONE_LIFETIME`]), so that a replay of its old messages, however late, does
    /// not bring it back; only something newer does.
    pub fn forget_silent(&mut self, now: Instant, after: Duration) {
        let mut gone: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                !d.online
                    && !d.stores.values().any(|t| t.held)
                    && now.saturating_duration_since(d.last_seen) >= after
            })
            .map(|(id, _)| *id)
            .collect();
        // Sorted: eviction order must not depend on the map's iteration order.
        gone.sort();
        for id in gone {
            if let Some(d) = self.devices.remove(&id) {
                self.suspects.remove(&id);
                self.tombstones.lay(id, &d, now);
            }
        }
        self.tombstones.expire(now, TOMBSTONE_LIFETIME);
    }

    /// Devices forgotten but remembered by a tombstone.
    pub fn tombstones(&self) -> usize {
        self.tombstones.by_device.len()
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

    /// The resurrection: a device leaves (or goes silent), is forgotten, and then
    /// its captured slice and heartbeats are replayed. Nothing of it may come back; its
    /// next run (or, after a timeout, its next heartbeat) is welcome at once.
    #[test]
    fn a_forgotten_device_stays_gone_until_it_says_something_new() {
        let timeout = Duration::from_secs(1);
        let forget = Duration::from_secs(60);
        for left in [true, false] {
            let mut m = Membership::new(timeout, DetState::default());
            let (d, st, t0) = (dev(), s("a"), Instant::now());
            let digest = [(st.clone(), Version::new(3, 7))];
            assert!(m.on_presence(d, 3, 40, &digest, true, t0).came_online);
            assert_eq!(m.admit(d, &st, Version::new(3, 7), t0), Admit::Apply);
            if left {
                assert!(m.on_leave(d, 3, t0).is_some());
            } else {
                assert_eq!(m.expire(t0 + timeout * 2).len(), 1);
            }
            // Long after it was forgotten (hours later: tombstones outlive the window).
            let later = t0 + forget * 2;
            m.forget_silent(later, forget);
            assert!(!m.knows(&d));
            assert_eq!(m.tombstones(), 1);
            let replay = later + Duration::from_secs(3 * 3600);
            for seq in [1, 39, 40] {
                assert!(!m.is_newer(&d, (3, seq)));
                assert_eq!(
                    m.on_presence(d, 3, seq, &digest, true, replay),
                    PresenceOutcome::default()
                );
            }
            assert!(!m.wants(&d, &st, Version::new(3, 7)));
            assert!(!m.wants(&d, &st, Version::new(2, 9)));
            assert_ne!(m.admit(d, &st, Version::new(3, 7), replay), Admit::Apply);
            assert_ne!(m.admit(d, &st, Version::new(3, 6), replay), Admit::Apply);
            assert!(!m.is_online(&d));
            assert_eq!(m.held_version(&d, &st), None);
            // Forgotten again after the replay: the tombstone still holds.
            m.forget_silent(replay + forget * 2, forget);
            assert!(!m.wants(&d, &st, Version::new(3, 7)));
            // Something genuinely new is admitted at once.
            let back = replay + forget * 3;
            if left {
                // A restart: a higher incarnation.
                assert!(m.is_newer(&d, (4, 1)));
                assert!(m.wants(&d, &st, Version::new(4, 0)));
                assert!(m.on_presence(d, 4, 1, &[], true, back).came_online);
                assert_eq!(m.admit(d, &st, Version::new(4, 0), back), Admit::Apply);
            } else {
                // The same run, back from a partition: its next heartbeat and write.
                assert!(m.is_newer(&d, (3, 41)));
                assert!(m.on_presence(d, 3, 41, &digest, true, back).came_online);
                assert_eq!(m.admit(d, &st, Version::new(3, 8), back), Admit::Apply);
            }
        }
    }

    #[test]
    fn tombstones_are_bounded_in_count_and_age() {
        let timeout = Duration::from_secs(1);
        let mut m = Membership::new(timeout, DetState::default());
        let t0 = Instant::now();
        let first = dev();
        m.on_leave(first, 1, t0);
        m.forget_silent(t0 + timeout * 100, timeout);
        for i in 0..MAX_TOMBSTONES as u32 + 10 {
            let t = t0 + timeout * (200 + i);
            m.on_leave(dev(), 1, t);
            m.forget_silent(t + timeout * 2, timeout);
        }
        assert_eq!(m.tombstones(), MAX_TOMBSTONES);
        // The oldest went first: its old run is unknown again.
        assert!(m.is_newer(&first, (1, 1)));
        assert!(m.tombstones.order.len() <= 2 * MAX_TOMBSTONES + 1);
        let end = t0 + timeout * (300 + MAX_TOMBSTONES as u32);
        m.forget_silent(end + TOMBSTONE_LIFETIME, timeout);
        assert_eq!(m.tombstones(), 0);
    }
}

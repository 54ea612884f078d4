//! Counters that let a user see why a slice did or did not arrive.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::wire::RejectReason;

/// How often, at most, a rejection of one reason is logged at `warn`; the rest go to `debug`.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// A point-in-time copy of a node's counters (see [`crate::MeshNode::metrics`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Own slice versions handed to gossipsub.
    pub published: u64,
    /// Slices received from the network (gossip or direct) before any check.
    pub delivered: u64,
    /// Remote slices applied to a store.
    pub applied: u64,
    /// Presence and leave messages received from the presence topic, one per distinct
    /// message (gossipsub drops further copies first), signature checked.
    pub presence_received: u64,
    /// Messages dropped, by [`RejectReason::as_str`]. Every reason is present, zeros included.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Remote devices currently considered live.
    pub peers_online: u64,
    /// Peers with an open connection to this node (its view; kept near
    /// [`MeshNodeBuilder::target_peers`](crate::MeshNodeBuilder::target_peers) whatever the
    /// size of the mesh).
    pub connected_peers: u64,
    /// Remote devices removed (left, timed out or restarted) since start.
    pub devices_removed: u64,
    /// Connections (dialled or accepted) that failed before they were established,
    /// refused dials excluded. With a pre-shared key, a key mismatch shows up here.
    pub connection_failures: u64,
}

impl Metrics {
    /// Convenience: the count for one rejection reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected.get(reason.as_str()).copied().unwrap_or(0)
    }

    /// Stale messages (older than held): `rejected["stale"]`.
    pub fn stale(&self) -> u64 {
        self.rejected(RejectReason::Stale)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub applied: AtomicU64,
    pub presence_received: AtomicU64,
    pub peers_online: AtomicU64,
    pub connected_peers: AtomicU64,
    pub devices_removed: AtomicU64,
    pub connection_failures: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    last_warn: Mutex<[Option<Instant>; RejectReason::ALL.len()]>,
}

impl Counters {
    /// Counts a rejection and logs it, at `warn` at most once per reason per 5 s.
    pub fn reject(&self, reason: RejectReason, from: &dyn std::fmt::Display, context: &str) {
        let n = self.rejected[reason.index()].fetch_add(1, Relaxed) + 1;
        let now = Instant::now();
        let loud = {
            let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
            let slot = &mut last[reason.index()];
            let due = slot.is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
            if due {
                *slot = Some(now);
            }
            due
        };
        // Stale copies are routine in gossip (several paths deliver one version), and so
        // are a leaving device's last messages arriving after its leave.
        let routine = matches!(reason, RejectReason::Stale | RejectReason::AfterLeave);
        if loud && !routine {
            tracing::warn!(%reason, %from, context, total = n, "dropped a message from the network");
        } else {
            tracing::debug!(%reason, %from, context, total = n, "dropped a message from the network");
        }
    }

    /// Counts a rejection that the caller reports itself (at most once per sender);
    /// logged here at `debug` only.
    pub fn reject_quietly(
        &self,
        reason: RejectReason,
        from: &dyn std::fmt::Display,
        context: &str,
    ) {
        let n = self.rejected[reason.index()].fetch_add(1, Relaxed) + 1;
        tracing::debug!(%reason, %from, context, total = n, "dropped a message from the network");
    }

    pub fn snapshot(&self) -> Metrics {
        Metrics {
            published: self.published.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            applied: self.applied.load(Relaxed),
            presence_received: self.presence_received.load(Relaxed),
            rejected: RejectReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.rejected[r.index()].load(Relaxed)))
                .collect(),
            peers_online: self.peers_online.load(Relaxed),
            connected_peers: self.connected_peers.load(Relaxed),
            devices_removed: self.devices_removed.load(Relaxed),
            connection_failures: self.connection_failures.load(Relaxed),
        }
    }
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

//! Counters that let a user see why a slice did or did not arrive, and their Prometheus
//! form (see [`crate::MeshNode::register_metrics`] and the book's "Operating a mesh").

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::ids::StoreId;
use crate::introspect::Observatory;
use crate::proto::{Input, Output, Report};
use crate::slice::now_millis;
use crate::store::RemovalReason;
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
    /// Inbound sync requests answered with fewer slices than asked for (or none) because
    /// the asking peer was over its budget: too many of its requests being answered at
    /// once, or too many bytes of answers on their way to it (see the book's Security
    /// chapter). Honest peers rarely cause this; a steady rise names a greedy one in the
    /// `debug` log.
    pub sync_over_budget: u64,
    /// Connections established since start (dialled or accepted). In an idle mesh it
    /// grows only with view maintenance: a steady climb means connections churn.
    pub connections_opened: u64,
    /// Gossiped slices not forwarded at once: a version no newer than one already verified
    /// of that device and store (declined before its signature check), or one past the
    /// per-device, per-store gossip rate
    /// ([`MeshNodeBuilder::gossip_rate`](crate::MeshNodeBuilder::gossip_rate); still used
    /// here when it came straight from its author, left unchecked when relayed). Of those
    /// past the rate, the newest of each device and store is held back and forwarded
    /// (checked first if relayed) once the rate allows, unless a newer one comes first;
    /// the newest version always arrives, through the digests if not by gossip.
    pub gossip_over_rate: u64,
    /// Remote slices a store never saw because a newer slice of the same device (or its
    /// removal) arrived while the store was still busy: each store's inbox keeps one slot
    /// per device, so a slow store, or a device writing very fast, cannot build a
    /// backlog.
    pub store_coalesced: u64,
    /// Heartbeats, slices and accusations that the protocol core never saw because a
    /// newer one of the same device (and store, or accused) reached the node while the
    /// gossip actor was still busy: its inbox keeps one slot per device, so on a loaded
    /// machine or under a flood its backlog stays bounded and drains.
    pub inputs_coalesced: u64,
    /// Departed devices remembered only by a compact tombstone (the versions last seen of
    /// them), so that a replay of their old messages cannot bring them back.
    pub tombstones: u64,
    /// Messages (presence, leave, slices, gossiped or in sync answers) of devices this
    /// node does not track yet that it ignored, unverified and not forwarded: the
    /// neighbour that delivered them was past its rate of new devices
    /// ([`MeshNodeBuilder::new_devices_per_peer`](crate::MeshNodeBuilder::new_devices_per_peer)),
    /// or [`MeshNodeBuilder::max_devices`](crate::MeshNodeBuilder::max_devices) are
    /// tracked. An honest device refused is admitted at one of its next messages; a steady
    /// climb means someone is minting identities.
    pub devices_refused: u64,
    /// Subscriptions of remote peers that gossipsub was told not to record: to topics that
    /// are not store topics, or to stores this node has not joined past the few kept per
    /// peer for a later join.
    pub subscriptions_refused: u64,
    /// Gossip messages that cost their sender points in this node's peer-conduct ledger:
    /// messages on topics this node has not joined, and, when the options are set,
    /// versions of the sender's own slice past the gossip rate
    /// ([`MeshNodeBuilder::own_versions_allowance`](crate::MeshNodeBuilder::own_versions_allowance))
    /// and messages past its inbound message rate
    /// ([`MeshNodeBuilder::peer_message_rate`](crate::MeshNodeBuilder::peer_message_rate)). A peer is charged score only for what it holds past a slack (see the book's
    /// Security chapter, "Peer scoring"), so honest peers may show a few.
    pub messages_charged: u64,
    /// Times a connected peer was seen to fall below gossipsub's graylist threshold
    /// (checked every 500 ms): from then on gossipsub ignores everything it sends until
    /// its score recovers. Invalid messages, junk and floods put a peer there; an honest
    /// peer never should.
    pub peers_graylisted: u64,
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
    pub sync_over_budget: AtomicU64,
    pub gossip_over_rate: AtomicU64,
    pub store_coalesced: AtomicU64,
    pub inputs_coalesced: AtomicU64,
    pub tombstones: AtomicU64,
    pub devices_refused: AtomicU64,
    pub subscriptions_refused: AtomicU64,
    pub messages_charged: AtomicU64,
    pub peers_graylisted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    last_warn: Mutex<[Option<Instant>; RejectReason::ALL.len()]>,
    /// Metrics that exist only in Prometheus form (labelled, histograms).
    pub prom: Prom,
    /// Peers, connections and node events, for [`crate::MeshNode::peers`] and the admin
    /// endpoint. Shared with the runtime the same way as the counters.
    pub intro: Observatory,
}

impl Counters {
    /// Counts a rejection and logs it, at `warn` at most once per reason per 5 s.
    pub fn reject(&self, reason: RejectReason, from: &dyn std::fmt::Display, context: &str) {
        let n = self.rejected[reason.index()].fetch_add(1, Relaxed) + 1;
        self.prom.rejected(reason);
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
        self.prom.rejected(reason);
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
            sync_over_budget: self.sync_over_budget.load(Relaxed),
            connections_opened: self.prom.connections_opened.get(),
            gossip_over_rate: self.gossip_over_rate.load(Relaxed),
            store_coalesced: self.store_coalesced.load(Relaxed),
            inputs_coalesced: self.inputs_coalesced.load(Relaxed),
            tombstones: self.tombstones.load(Relaxed),
            devices_refused: self.devices_refused.load(Relaxed),
            subscriptions_refused: self.subscriptions_refused.load(Relaxed),
            messages_charged: self.messages_charged.load(Relaxed),
            peers_graylisted: self.peers_graylisted.load(Relaxed),
        }
    }
}

impl Counters {
    /// Shows the metrics and the observatory an input the gossip actor is about to hand
    /// the protocol core.
    pub fn observe_input(&self, input: &Input, now: Instant) {
        match input {
            Input::Goodbye { .. } => self.prom.leaves.inc(),
            Input::Connected { .. } => self.prom.connections_opened.inc(),
            Input::ConnectionClosed { .. } => self.prom.connections_closed.inc(),
            _ => 0,
        };
        self.intro.on_input(input, now);
    }

    /// Shows the metrics and the observatory an output of the protocol core.
    pub fn observe_output(&self, output: &Output, now: Instant) {
        match output {
            Output::Fetch { .. } => {
                self.prom.fetches.inc();
            }
            Output::Respond { slices, .. } => {
                let bytes = slices.iter().map(|s| s.len()).sum();
                self.prom.answered(slices.len(), bytes);
            }
            Output::Report(Report::DeviceRemoved { reason, .. }) => self.prom.removed(*reason),
            _ => {}
        }
        self.intro.on_output(output, now);
    }
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Most distinct store ids that get a `store` label of their own; the others share
/// [`OTHER_STORES`]. Only stores this node joined are ever labelled (messages for other
/// stores are rejected before any per-store metric), so the cap bounds what the
/// application does, not what peers send.
pub const MAX_STORE_LABELS: usize = 64;
/// The `store` label of every store past the first [`MAX_STORE_LABELS`].
pub const OTHER_STORES: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreLabel {
    store: String,
}

struct StoreCounters {
    published: Counter,
    applied: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    reason: &'static str,
}

/// Truffle's metrics that have no plain-counter form: per-store and per-reason families
/// and histograms. Each is a handle on shared atomics, so registering clones in several
/// registries shows the same values everywhere.
pub(crate) struct Prom {
    published: Family<StoreLabel, Counter>,
    applied: Family<StoreLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    removed: Family<ReasonLabel, Counter>,
    pub fetches: Counter,
    pub requests_served: Counter,
    pub leaves: Counter,
    pub connections_opened: Counter,
    pub connections_closed: Counter,
    apply_latency: Histogram,
    answer_slices: Histogram,
    answer_bytes: Histogram,
    /// The per-store counters of each labelled store, resolved once (no allocation and no
    /// label hashing per event).
    by_store: Mutex<HashMap<StoreId, StoreCounters>>,
    /// Recorders of libp2p's own metrics, one per registry they were registered in.
    pub(crate) libp2p: Mutex<Vec<libp2p::metrics::Metrics>>,
}

impl Default for Prom {
    fn default() -> Self {
        let p = Self {
            published: Family::default(),
            applied: Family::default(),
            rejected: Family::default(),
            removed: Family::default(),
            fetches: Counter::default(),
            requests_served: Counter::default(),
            leaves: Counter::default(),
            connections_opened: Counter::default(),
            connections_closed: Counter::default(),
            // 0.5 ms .. ~16 s, doubling.
            apply_latency: Histogram::new((0..16).map(|i| 0.0005 * f64::powi(2.0, i))),
            answer_slices: Histogram::new([0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 4096.0]),
            // 256 B .. 64 MiB, ×4.
            answer_bytes: Histogram::new((0..10).map(|i| 256.0 * f64::powi(4.0, i))),
            by_store: Mutex::new(HashMap::new()),
            libp2p: Mutex::new(Vec::new()),
        };
        // Every reason present from the start, zeros included, so that a dashboard can
        // tell "none yet" from "not exported".
        for r in RejectReason::ALL {
            let _ = p
                .rejected
                .get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        for r in [
            RemovalReason::Left,
            RemovalReason::Timeout,
            RemovalReason::Restarted,
        ] {
            let _ = p.removed.get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        p
    }
}

impl Prom {
    /// Runs `f` on `store`'s counters: its own for the first [`MAX_STORE_LABELS`] stores,
    /// the shared [`OTHER_STORES`] ones past that.
    fn with_store(&self, store: &StoreId, f: impl FnOnce(&StoreCounters)) {
        let mut map = self.by_store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(store) {
            return f(c);
        }
        let own = map.len() < MAX_STORE_LABELS;
        let label = StoreLabel {
            store: if own {
                store.to_string()
            } else {
                OTHER_STORES.to_string()
            },
        };
        let c = StoreCounters {
            published: self.published.get_or_create(&label).clone(),
            applied: self.applied.get_or_create(&label).clone(),
        };
        f(&c);
        if own {
            map.insert(store.clone(), c);
        }
    }

    fn rejected(&self, reason: RejectReason) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// An own slice version went out on `store`'s topic.
    pub fn published(&self, store: &StoreId) {
        self.with_store(store, |c| {
            c.published.inc();
        });
    }

    /// A remote slice was applied to `store`; `updated_at` is its owner's write time.
    pub fn applied(&self, store: &StoreId, updated_at: u64) {
        self.with_store(store, |c| {
            c.applied.inc();
        });
        let ms = now_millis().saturating_sub(updated_at);
        self.apply_latency.observe(ms as f64 / 1000.0);
    }

    /// A device was removed.
    pub fn removed(&self, reason: RemovalReason) {
        self.removed
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// This node answered a sync request with `slices` slices of `bytes` bytes in all.
    pub fn answered(&self, slices: usize, bytes: usize) {
        self.requests_served.inc();
        self.answer_slices.observe(slices as f64);
        self.answer_bytes.observe(bytes as f64);
    }
}

/// The gauges and the counters kept as plain atomics, read at each scrape.
struct LiveValues(Arc<Counters>);

impl std::fmt::Debug for LiveValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveValues")
    }
}

impl Collector for LiveValues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let counters: [(&str, &str, &AtomicU64); 12] = [
            (
                "slices_delivered",
                "Slices received from the network (gossip or sync answers), before any check.",
                &c.delivered,
            ),
            (
                "presence_received",
                "Distinct presence and leave messages received, signature checked.",
                &c.presence_received,
            ),
            (
                "connection_failures",
                "Connections that failed before they were established (a pre-shared key mismatch shows here).",
                &c.connection_failures,
            ),
            (
                "devices_removed",
                "Remote devices removed, all reasons (see truffle_removals_total for the split).",
                &c.devices_removed,
            ),
            (
                "sync_over_budget",
                "Inbound sync requests answered short or empty: the asking peer was over its per-peer budget.",
                &c.sync_over_budget,
            ),
            (
                "gossip_over_rate",
                "Gossip slices not forwarded at once: stale, or over the per-device, per-store gossip rate (the newest of those held back, forwarded when the rate allows).",
                &c.gossip_over_rate,
            ),
            (
                "store_coalesced",
                "Remote slices a store never saw: a newer one of the same device (or its removal) replaced it in the store's inbox first.",
                &c.store_coalesced,
            ),
            (
                "inputs_coalesced",
                "Heartbeats, slices and accusations the protocol core never saw: a newer one of the same device replaced it in the gossip actor's inbox first.",
                &c.inputs_coalesced,
            ),
            (
                "devices_refused",
                "Messages of devices not tracked yet that were ignored: their neighbour was past its rate of new devices, or the cap on tracked devices was reached.",
                &c.devices_refused,
            ),
            (
                "subscriptions_refused",
                "Remote subscriptions not recorded: not a store topic, or a store not joined here past the few kept per peer.",
                &c.subscriptions_refused,
            ),
            (
                "messages_charged",
                "Gossip messages that cost their sender points: messages on topics not joined here, and where set, own slice versions past the allowance and messages past a peer's inbound rate.",
                &c.messages_charged,
            ),
            (
                "peers_graylisted",
                "Times a connected peer fell below gossipsub's graylist threshold (its messages are ignored until its score recovers).",
                &c.peers_graylisted,
            ),
        ];
        for (name, help, v) in counters {
            let m = ConstCounter::new(v.load(Relaxed));
            m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)?;
        }
        let (known, connected, connections) = c.intro.counts();
        let gauges: [(&str, &str, i64); 6] = [
            (
                "tombstones",
                "Departed devices remembered only by a tombstone, so replays of their old messages are refused.",
                c.tombstones.load(Relaxed) as i64,
            ),
            (
                "peers_online",
                "Remote devices currently considered live.",
                c.peers_online.load(Relaxed) as i64,
            ),
            (
                "peers_known",
                "Remote devices this node keeps a record of (live, suspected or recently gone).",
                known as i64,
            ),
            (
                "peers_connected",
                "Remote devices with at least one open connection.",
                connected as i64,
            ),
            (
                "connections",
                "Open connections to remote devices.",
                connections as i64,
            ),
            (
                "stores_joined",
                "Stores this node has joined.",
                c.intro.store_count() as i64,
            ),
        ];
        for (name, help, v) in gauges {
            let m = ConstGauge::new(v);
            m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)?;
        }
        Ok(())
    }
}

/// Registers every Truffle metric of the node behind `counters` in `registry` (under the
/// `truffle_` prefix), and libp2p's own metrics (swarm, gossipsub, identify, ping) under
/// `libp2p_`.
pub(crate) fn register(counters: &Arc<Counters>, registry: &mut Registry) {
    let p = &counters.prom;
    {
        let r = registry.sub_registry_with_prefix("truffle");
        r.register(
            "slices_published",
            "Own slice versions handed to gossipsub, by store",
            p.published.clone(),
        );
        r.register(
            "slices_applied",
            "Remote slices applied to a store (newer than held, decoded), by store",
            p.applied.clone(),
        );
        r.register(
            "messages_rejected",
            "Messages dropped, by reason (stale = older than or equal to the version held)",
            p.rejected.clone(),
        );
        r.register(
            "removals",
            "Remote devices removed, by reason: left, timeout, restarted",
            p.removed.clone(),
        );
        r.register(
            "fetches",
            "Sync requests sent (joins, anti-entropy, fallbacks)",
            p.fetches.clone(),
        );
        r.register(
            "sync_requests_served",
            "Sync requests from peers answered",
            p.requests_served.clone(),
        );
        r.register(
            "leaves_received",
            "Leave messages received (gossiped or direct), before deduplication",
            p.leaves.clone(),
        );
        r.register(
            "connections_opened",
            "Connections established",
            p.connections_opened.clone(),
        );
        r.register(
            "connections_closed",
            "Connections closed",
            p.connections_closed.clone(),
        );
        r.register_with_unit(
            "apply_latency",
            "From the owner's write (its updated_at, its clock) to the slice applied here; includes clock skew between the hosts",
            Unit::Seconds,
            p.apply_latency.clone(),
        );
        r.register(
            "sync_answer_slices",
            "Slices in each sync answer this node sent",
            p.answer_slices.clone(),
        );
        r.register_with_unit(
            "sync_answer",
            "Bytes of slices in each sync answer this node sent",
            Unit::Bytes,
            p.answer_bytes.clone(),
        );
        r.register_collector(Box::new(LiveValues(counters.clone())));
    }
    let recorder = libp2p::metrics::Metrics::new(registry);
    p.libp2p
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(recorder);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(counters: &Arc<Counters>) -> String {
        let mut registry = Registry::default();
        register(counters, &mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn store_labels_are_capped() {
        let counters = Arc::new(Counters::default());
        for i in 0..MAX_STORE_LABELS + 6 {
            let id = StoreId::new(format!("s{i}")).unwrap();
            counters.prom.published(&id);
            counters.prom.published(&id);
        }
        let text = text(&counters);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("truffle_slices_published_total{"))
            .collect();
        assert_eq!(lines.len(), MAX_STORE_LABELS + 1, "{text}");
        assert!(lines.contains(&"truffle_slices_published_total{store=\"s0\"} 2"));
        assert!(lines.contains(&"truffle_slices_published_total{store=\"_other\"} 12"));
    }

    #[test]
    fn every_reason_is_exported_from_the_start() {
        let counters = Arc::new(Counters::default());
        counters.reject(RejectReason::Stale, &"peer", "test");
        let text = text(&counters);
        for r in RejectReason::ALL {
            assert!(
                text.contains(&format!(
                    "truffle_messages_rejected_total{{reason=\"{}\"}}",
                    r.as_str()
                )),
                "{text}"
            );
        }
        assert!(text.contains("truffle_messages_rejected_total{reason=\"stale\"} 1"));
        assert!(text.contains("truffle_removals_total{reason=\"timeout\"} 0"));
        assert_eq!(counters.snapshot().stale(), 1);
    }
}

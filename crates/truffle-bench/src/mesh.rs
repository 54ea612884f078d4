//! Truffle meshes on loopback, built like the integration tests build them, and the
//! trackers that timestamp arrivals.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use truffle_actors::{DeviceId, MeshNode, MeshNodeBuilder, Store, StoreSnapshot, Syncable};

use crate::rng::topology;

/// The benchmark store: a sequence number (what trials wait for) and an opaque payload
/// whose length sets the slice size.
#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "bench")]
pub struct Payload {
    /// Set by the writer to the trial number.
    pub seq: u64,
    /// Filler of a known length.
    pub data: String,
}

/// `len` bytes of printable ASCII (a String encodes as a msgpack `str`, byte for byte).
pub fn filler(len: usize) -> String {
    (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

/// A node builder as the tests make one: loopback, a free port, no mDNS.
pub fn builder(i: usize) -> MeshNodeBuilder {
    MeshNode::builder()
        .name(format!("n{i}"))
        .listen("/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"))
        .mdns(false)
}

/// `n` nodes that have each joined the [`Payload`] store.
pub struct Mesh {
    /// The nodes, in start order.
    pub nodes: Vec<MeshNode>,
    /// Each node's store handle.
    pub stores: Vec<Store<Payload>>,
    /// Each node's device id.
    pub ids: Vec<DeviceId>,
    /// When the first node started.
    pub started: Instant,
    /// When the last node's `store()` returned.
    pub last_join: Instant,
}

impl Mesh {
    /// Starts `n` nodes one after the other, each dialling the earlier nodes that
    /// [`topology`] picks and joining the store right after its start. `tune` may change
    /// each builder (defaults otherwise).
    pub async fn start(
        n: usize,
        seed: u64,
        tune: impl Fn(MeshNodeBuilder) -> MeshNodeBuilder,
    ) -> Result<Mesh, String> {
        Self::start_with(topology(n, seed), tune).await
    }

    /// Like [`Mesh::start`], with node `i` dialling the earlier nodes `topo[i]` lists.
    pub async fn start_with(
        topo: Vec<Vec<usize>>,
        tune: impl Fn(MeshNodeBuilder) -> MeshNodeBuilder,
    ) -> Result<Mesh, String> {
        let n = topo.len();
        let started = Instant::now();
        let mut nodes: Vec<MeshNode> = Vec::with_capacity(n);
        let mut stores = Vec::with_capacity(n);
        for (i, peers) in topo.iter().enumerate() {
            let mut b = builder(i);
            for &p in peers {
                b = b.bootstrap(nodes[p].listen_addrs()[0].clone());
            }
            let node = tune(b)
                .start()
                .await
                .map_err(|e| format!("node {i} did not start: {e}"))?;
            let store = node
                .store::<Payload>()
                .await
                .map_err(|e| format!("node {i} could not join the store: {e}"))?;
            nodes.push(node);
            stores.push(store);
        }
        let ids = nodes.iter().map(MeshNode::device_id).collect();
        Ok(Mesh {
            nodes,
            stores,
            ids,
            started,
            last_join: Instant::now(),
        })
    }

    /// Waits, on every node at once, until `cond` holds for its snapshot; returns when
    /// each node got there (`None` for the nodes that did not before `deadline`).
    pub async fn wait_all<F>(&self, deadline: Duration, cond: F) -> Vec<Option<Instant>>
    where
        F: Fn(&StoreSnapshot<Payload>) -> bool + Clone,
    {
        wait_all(&self.stores, deadline, cond).await
    }

    /// Waits until every node holds every node's slice; an error says how many did not.
    pub async fn converge(&self, deadline: Duration) -> Result<(), String> {
        let n = self.nodes.len();
        let done = self.wait_all(deadline, move |s| s.len() == n).await;
        let missing = done.iter().filter(|d| d.is_none()).count();
        if missing == 0 {
            Ok(())
        } else {
            Err(format!(
                "{missing} of {n} nodes did not see all {n} devices within {deadline:?}"
            ))
        }
    }
}

/// See [`Mesh::wait_all`].
pub async fn wait_all<F>(
    stores: &[Store<Payload>],
    deadline: Duration,
    cond: F,
) -> Vec<Option<Instant>>
where
    F: Fn(&StoreSnapshot<Payload>) -> bool + Clone,
{
    let waits = stores.iter().map(|s| {
        let cond = cond.clone();
        async move {
            s.wait_until(deadline, cond)
                .await
                .ok()
                .map(|_| Instant::now())
        }
    });
    futures::future::join_all(waits).await
}

/// An arrival report: (receiver index, highest `seq` of the writer it now holds, when).
pub type Arrival = (usize, u64, Instant);

/// Spawns one task per store (except `skip`) that reports each time the `seq` it holds
/// for `writer` grows. The tasks end when the store closes or the receiver is dropped.
pub fn track_seq(
    stores: &[Store<Payload>],
    writer: DeviceId,
    skip: usize,
) -> mpsc::UnboundedReceiver<Arrival> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, store) in stores.iter().enumerate() {
        if i == skip {
            continue;
        }
        let mut view = store.watch();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            loop {
                let seq = view
                    .borrow_and_update()
                    .get(&writer)
                    .map(|s| s.data.seq)
                    .unwrap_or(0);
                if seq > last {
                    last = seq;
                    if tx.send((i, seq, Instant::now())).is_err() {
                        return;
                    }
                }
                if view.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}

/// Waits until every receiver in `expect` reported `seq` or higher, or `deadline`.
/// Returns each receiver's arrival time (index = receiver), `None` for the late ones.
pub async fn collect_arrivals(
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    n: usize,
    expect: &[usize],
    seq: u64,
    deadline: tokio::time::Instant,
) -> Vec<Option<Instant>> {
    let mut got: Vec<Option<Instant>> = vec![None; n];
    let mut left = expect.len();
    while left > 0 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, s, at))) => {
                if s >= seq && got[i].is_none() && expect.contains(&i) {
                    got[i] = Some(at);
                    left -= 1;
                }
            }
            _ => break,
        }
    }
    got
}

/// The latest of `times` minus `t0`, if every one is present.
pub fn all_arrived(t0: Instant, times: &[Option<Instant>], expect: &[usize]) -> Option<Duration> {
    let mut worst = Duration::ZERO;
    for &i in expect {
        worst = worst.max(times[i]?.saturating_duration_since(t0));
    }
    Some(worst)
}

/// Sum of `f` over every node's metrics.
pub fn sum_metrics(nodes: &[MeshNode], f: impl Fn(&truffle_actors::Metrics) -> u64) -> u64 {
    nodes.iter().map(|n| f(&n.metrics())).sum()
}

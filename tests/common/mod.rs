//! Helpers shared by the multi-node tests: real nodes over TCP on loopback.

#![allow(dead_code)]

pub mod rogue;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use truffle_actors::prelude::*;
use truffle_actors::MeshNodeBuilder;

/// Generous: these run on a loaded 2-core machine. Conditions usually hold in milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Syncable, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[syncable(id = "todos")]
pub struct Todos {
    pub items: Vec<String>,
}

#[derive(Syncable, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[syncable(id = "status")]
pub struct Status {
    pub text: String,
    pub n: u64,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A node builder for tests: loopback, no mDNS, short presence timings.
pub fn builder(name: &str) -> MeshNodeBuilder {
    MeshNode::builder()
        .name(name)
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .mdns(false)
}

/// Starts `n` nodes, each bootstrapped to the first.
pub async fn mesh(n: usize) -> Vec<MeshNode> {
    init_tracing();
    let first = builder("n0").start().await.expect("first node starts");
    let addr = first.listen_addrs()[0].clone();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(
            builder(&format!("n{i}"))
                .bootstrap(addr.clone())
                .start()
                .await
                .expect("node starts"),
        );
    }
    nodes
}

/// One shared seed address, as the README tells users to do: every node bootstraps from
/// node 0 (the "hub"); `each` may change every node's builder.
pub async fn star(n: usize, each: impl Fn(MeshNodeBuilder) -> MeshNodeBuilder) -> Vec<MeshNode> {
    init_tracing();
    let hub = each(builder("hub")).start().await.expect("hub starts");
    let addr = hub.listen_addrs()[0].clone();
    let mut nodes = vec![hub];
    for i in 1..n {
        let b = each(builder(&format!("n{i}"))).bootstrap(addr.clone());
        nodes.push(b.start().await.expect("node starts"));
    }
    nodes
}

/// Waits until `cond` holds, polling every 100 ms, or fails after `deadline`.
pub async fn until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What [`star_outlives_its_hub`] measured.
#[derive(Debug)]
pub struct StarFigures {
    /// From the last node's first write until every node held every other's slice.
    pub converged: Duration,
    /// Connections per node once every view was filled: least, mean, most.
    pub connections: (usize, f64, usize),
    /// From the hub's crash until the last survivor removed it.
    pub hub_removed: Duration,
}

/// Starts `n` nodes all bootstrapped from the first (the README's recipe), each writing
/// its own slice, and checks that every node comes to hold every other's slice within
/// `deadline`, that every view fills to its target of 8 and holds at most 12 connections
/// (the trim bound is 10, but a member's probe or view refresh may take a view past it
/// until the new connection is old enough to trim), and that the mesh outlives the hub's
/// crash ([`crash_the_hub`]).
pub async fn star_outlives_its_hub(n: usize, deadline: Duration) -> StarFigures {
    let mut nodes = star(n, |b| b).await;
    let mut stores = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let s = node.store::<Status>().await.unwrap();
        s.update(move |d| d.n = i as u64).await.unwrap();
        stores.push(s);
    }
    let joined = std::time::Instant::now();
    until("every node sees every other", deadline, || {
        stores.iter().all(|s| s.snapshot().remote.len() == n - 1)
    })
    .await;
    let converged = joined.elapsed();
    // The views form: each node holds connections beyond the hub, and the hub sheds the
    // surplus of everyone having dialled it first.
    let target = 8;
    until(
        "every view is filled, none far above target",
        deadline,
        || {
            nodes.iter().all(|n| {
                let c = n.metrics().connected_peers as usize;
                (target..=target + target / 2).contains(&c)
            })
        },
    )
    .await;
    let conns: Vec<usize> = nodes
        .iter()
        .map(|n| n.metrics().connected_peers as usize)
        .collect();
    let connections = (
        *conns.iter().min().unwrap(),
        conns.iter().sum::<usize>() as f64 / n as f64,
        *conns.iter().max().unwrap(),
    );
    // From here on, a survivor must never lose another survivor.
    let hub_removed = crash_the_hub(&mut nodes, &mut stores).await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
    StarFigures {
        converged,
        connections,
        hub_removed,
    }
}

/// Crashes node 0 of a converged mesh (dropped without a leave: a crash, as far as the
/// others can tell) and checks what users rely on: every survivor removes it, a write
/// after the crash reaches every survivor, and no survivor ever loses another. Returns
/// how long the last survivor took to remove it.
pub async fn crash_the_hub(nodes: &mut Vec<MeshNode>, stores: &mut Vec<Store<Status>>) -> Duration {
    let n = nodes.len();
    let mut watchers: Vec<_> = stores[1..].iter().map(|s| s.subscribe()).collect();
    let hub = nodes.remove(0);
    let hub_id = hub.device_id();
    drop(stores.remove(0));
    let crashed = std::time::Instant::now();
    drop(hub);
    until(
        "every survivor drops the hub",
        Duration::from_secs(30),
        || stores.iter().all(|s| s.get(&hub_id).is_none()),
    )
    .await;
    let detected = crashed.elapsed();
    stores[0].update(|d| d.text = "after".into()).await.unwrap();
    let writer = nodes[0].device_id();
    until(
        "the write after the crash reaches every survivor",
        Duration::from_secs(30),
        || {
            stores[1..]
                .iter()
                .all(|s| s.get(&writer).is_some_and(|x| x.data.text == "after"))
        },
    )
    .await;
    for s in stores.iter() {
        assert_eq!(s.snapshot().remote.len(), n - 2, "whole after the crash");
    }
    let mut lost = std::collections::BTreeSet::new();
    for w in &mut watchers {
        while let Some(Some(ev)) = futures::FutureExt::now_or_never(w.recv()) {
            if let StoreEvent::RemoteRemoved { device_id, .. } = ev {
                if device_id != hub_id {
                    lost.insert(device_id);
                }
            }
        }
    }
    assert!(lost.is_empty(), "survivors lost each other: {lost:?}");
    detected
}

/// Waits until `cond` holds on `store`, or fails the test with the last snapshot.
pub async fn eventually<T, F>(
    what: &str,
    store: &Store<T>,
    cond: F,
) -> std::sync::Arc<StoreSnapshot<T>>
where
    T: Clone + Send + Sync + std::fmt::Debug + 'static,
    F: FnMut(&StoreSnapshot<T>) -> bool,
{
    match store.wait_until(DEADLINE, cond).await {
        Ok(s) => s,
        Err(last) => panic!("timed out waiting for: {what}\nlast snapshot: {last:#?}"),
    }
}

/// Waits until `cond` holds for a node's metrics, or fails with the last value.
pub async fn eventually_metrics<F>(
    what: &str,
    node: &MeshNode,
    mut cond: F,
) -> truffle_actors::Metrics
where
    F: FnMut(&truffle_actors::Metrics) -> bool,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let m = node.metrics();
        if cond(&m) {
            return m;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for: {what}\nlast metrics: {m:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the next event matching `pick` on `events`, or fails.
pub async fn next_event<T, R, F>(
    what: &str,
    events: &mut truffle_actors::StoreEvents<T>,
    mut pick: F,
) -> R
where
    T: Clone + Send + Sync + 'static,
    F: FnMut(StoreEvent<T>) -> Option<R>,
{
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = events.recv().await {
            if let Some(r) = pick(ev) {
                return Some(r);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(r)) => r,
        Ok(None) => panic!("event stream closed while waiting for: {what}"),
        Err(_) => panic!("timed out waiting for event: {what}"),
    }
}

/// Calls `send` every 500 ms until `at` has counted `n` rejections for `reason`. A single
/// message may never be looked at: sent before a subscription is known, or while the
/// sender is graylisted for earlier misbehaviour.
pub async fn send_until_rejected(
    at: &MeshNode,
    reason: truffle_actors::RejectReason,
    n: u64,
    send: impl FnMut(),
) {
    send_until(at, &reason.to_string(), |m| m.rejected(reason) >= n, send).await
}

/// Calls `send` every 500 ms until `at`'s metrics satisfy `counted`.
pub async fn send_until(
    at: &MeshNode,
    what: &str,
    mut counted: impl FnMut(&truffle_actors::Metrics) -> bool,
    mut send: impl FnMut(),
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        send();
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while tokio::time::Instant::now() < until {
            if counted(&at.metrics()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never counted at the receiver: {:#?}",
            at.metrics()
        );
    }
}

/// The signed-message envelope's fields (wire chapter), for tests that take a captured
/// message apart.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    pub v: u8,
    pub kind: String,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// The same signed message in an envelope with an extra `attempt` field (readers ignore
/// unknown fields): other bytes, the same signed content. Message ids cover the signed
/// content, so every attempt has the original's id: a receiver that has seen one of them
/// (or the original) in the last 60 s drops the others as duplicates, and one that has
/// not checks it, uses its content if valid and counts it `non_canonical`.
#[allow(dead_code)]
pub fn varied(bytes: &[u8], attempt: u32) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Varied {
        #[serde(flatten)]
        e: Envelope,
        attempt: u32,
    }
    let e: Envelope = rmp_serde::from_slice(bytes).expect("a signed message envelope");
    rmp_serde::to_vec_named(&Varied { e, attempt }).expect("encodes")
}

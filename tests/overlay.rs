//! The overlay holds together: every node keeps a bounded, random view of connections,
//! chosen from the addresses members announce, so the mesh outlives any one node, the one
//! everybody bootstrapped from included. Real nodes over TCP on loopback, in one process.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use futures::FutureExt;
use truffle_actors::prelude::*;
use truffle_actors::MeshNodeBuilder;

/// One shared seed address, as the README tells users to do: every node bootstraps from
/// node 0 (`common::mesh` does the same, with the default view size).
async fn star(n: usize, each: impl Fn(MeshNodeBuilder) -> MeshNodeBuilder) -> Vec<MeshNode> {
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
async fn until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_outlives_the_node_everyone_bootstrapped_from() {
    const N: usize = 24;
    let mut nodes = star(N, |b| b).await;
    let mut stores = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let s = node.store::<Status>().await.unwrap();
        s.update(move |d| d.n = i as u64).await.unwrap();
        stores.push(s);
    }
    until(
        "every node sees every other",
        Duration::from_secs(60),
        || stores.iter().all(|s| s.snapshot().remote.len() == N - 1),
    )
    .await;
    // The views form: each node holds connections beyond the hub, and the hub sheds the
    // surplus of everyone having dialled it first.
    let target = 8;
    until(
        "every view is filled, none far above target",
        Duration::from_secs(60),
        || {
            nodes.iter().all(|n| {
                let c = n.metrics().connected_peers as usize;
                (target..=target + target / 2).contains(&c)
            })
        },
    )
    .await;

    // From here on, a survivor must never lose another survivor.
    let mut watchers = Vec::new();
    for s in &stores[1..] {
        watchers.push(s.subscribe());
    }
    let hub = nodes.remove(0);
    let hub_id = hub.device_id();
    drop(stores.remove(0));
    drop(hub); // no leave: a crash, as far as the others can tell
    until(
        "every survivor drops the hub by timeout",
        Duration::from_secs(30),
        || stores.iter().all(|s| s.get(&hub_id).is_none()),
    )
    .await;
    // A write after the crash reaches every survivor: the overlay is still connected.
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
    for s in &stores {
        assert_eq!(s.snapshot().remote.len(), N - 2, "whole after the crash");
    }
    let mut lost = BTreeSet::new();
    for w in &mut watchers {
        while let Some(Some(ev)) = w.recv().now_or_never() {
            if let StoreEvent::RemoteRemoved { device_id, .. } = ev {
                if device_id != hub_id {
                    lost.insert(device_id);
                }
            }
        }
    }
    assert!(lost.is_empty(), "survivors lost each other: {lost:?}");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_mesh_smaller_than_the_view_everyone_connects_to_everyone() {
    const N: usize = 5;
    let nodes = star(N, |b| b).await;
    let mut stores = Vec::new();
    for node in &nodes {
        stores.push(node.store::<Status>().await.unwrap());
    }
    until(
        "every node connected to every other",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|n| n.metrics().connected_peers as usize == N - 1)
        },
    )
    .await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

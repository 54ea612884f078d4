//! The overlay holds together: every node keeps a bounded, random view of connections,
//! chosen from the addresses members announce, so the mesh outlives any one node, the one
//! everybody bootstrapped from included. Real nodes over TCP on loopback, in one process.

mod common;

use std::time::Duration;

use common::*;

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
    crash_the_hub(&mut nodes, &mut stores).await;
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

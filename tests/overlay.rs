//! The overlay holds together: every node keeps a bounded, random view of connections,
//! chosen from the addresses members announce, so the mesh outlives any one node, the one
//! everybody bootstrapped from included. Real nodes over TCP on loopback, in one process.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_outlives_the_node_everyone_bootstrapped_from() {
    star_outlives_its_hub(24, Duration::from_secs(60)).await;
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

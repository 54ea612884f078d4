//! End-to-end sync between real nodes over TCP on loopback.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_reaches_all_of_three_nodes() {
    let nodes = mesh(3).await;
    let mut stores = Vec::new();
    for n in &nodes {
        stores.push(n.store::<Todos>().await.unwrap());
    }
    stores[0]
        .update(|t| t.items.push("buy groceries".into()))
        .await
        .unwrap();
    let writer = nodes[0].device_id();
    for s in &stores[1..] {
        eventually("the write reaches every node", s, |snap| {
            snap.get(&writer)
                .is_some_and(|sl| sl.data.items == ["buy groceries"])
        })
        .await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

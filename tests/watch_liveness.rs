//! Watch liveness (`Liveness::Watch`) on real nodes over TCP on loopback, in one process:
//! the idle mesh does not flood heartbeats, a crash (the node everyone bootstrapped from,
//! as in the README's recipe) is detected by the crashed node's neighbours and spread as a
//! signed accusation, and nobody else is lost.

mod common;

use std::time::Duration;

use common::*;
use truffle_actors::proto::Liveness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_mesh_idles_quietly_and_outlives_the_node_everyone_bootstrapped_from() {
    const N: usize = 24;
    let mut nodes = star(N, |b| b.liveness(Liveness::Watch)).await;
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
    until(
        "every view is filled, none far above target",
        Duration::from_secs(60),
        || {
            nodes
                .iter()
                .all(|n| (8..=12).contains(&(n.metrics().connected_peers as usize)))
        },
    )
    .await;

    // Idle: heartbeats would bring every node 23 presences a second (2 × 23 × 5 = 230 in
    // five seconds); watch liveness announces only on change.
    let before: u64 = nodes.iter().map(|n| n.metrics().presence_received).sum();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after: u64 = nodes.iter().map(|n| n.metrics().presence_received).sum();
    assert!(
        after - before < N as u64 * 5,
        "{} presence messages in 5 s of idling across {N} nodes",
        after - before
    );

    let detected = crash_the_hub(&mut nodes, &mut stores).await;
    eprintln!("hub removed everywhere {detected:?} after the crash");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_mesh_replaces_a_restarted_device_and_removes_one_that_left() {
    const N: usize = 6;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("restarting.key");
    let seed = builder("seed")
        .liveness(Liveness::Watch)
        .start()
        .await
        .unwrap();
    let addr = seed.listen_addrs()[0].clone();
    let mut nodes = vec![seed];
    for i in 1..N {
        let mut b = builder(&format!("n{i}"))
            .liveness(Liveness::Watch)
            .bootstrap(addr.clone());
        if i == 1 {
            b = b.key_file(&key);
        }
        nodes.push(b.start().await.unwrap());
    }
    let mut stores = Vec::new();
    for node in &nodes {
        stores.push(node.store::<Status>().await.unwrap());
    }
    until("all see all", Duration::from_secs(30), || {
        stores.iter().all(|s| s.snapshot().remote.len() == N - 1)
    })
    .await;
    // Node 1 crashes and comes straight back with the same key: the new run replaces the
    // old one everywhere without waiting for a removal.
    let id = nodes[1].device_id();
    drop(stores.remove(1));
    drop(nodes.remove(1));
    let back = builder("n1-again")
        .liveness(Liveness::Watch)
        .key_file(&key)
        .bootstrap(addr.clone())
        .start()
        .await
        .unwrap();
    let s = back.store::<Status>().await.unwrap();
    s.update(|d| d.text = "second run".into()).await.unwrap();
    until(
        "the new run is seen everywhere",
        Duration::from_secs(30),
        || {
            stores
                .iter()
                .all(|st| st.get(&id).is_some_and(|x| x.data.text == "second run"))
        },
    )
    .await;
    // A graceful leave removes at once (no suspicion needed).
    let leaver = nodes.pop().unwrap();
    let leaver_id = leaver.device_id();
    stores.pop();
    leaver.shutdown().await.unwrap();
    // Everywhere includes the restarted node, which may hear the leave a moment after the
    // others (checking it once, right after they had, failed once).
    until(
        "the leave is seen everywhere",
        Duration::from_secs(10),
        || s.get(&leaver_id).is_none() && stores.iter().all(|st| st.get(&leaver_id).is_none()),
    )
    .await;
    back.shutdown().await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

//! Private meshes (pre-shared key) and hostile input.

mod common;

use std::time::Duration;

use common::*;
use truffle_actors::prelude::*;
use truffle_actors::PreSharedKey;

fn swarm_key(bytes: [u8; 32]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_the_same_pre_shared_key_sync() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("swarm.key");
    std::fs::write(&key_file, swarm_key([7; 32])).unwrap();
    let connect = Duration::from_secs(2);

    // A and B share the key (one from the file, one from code).
    let a = builder("a")
        .psk_file(&key_file)
        .connect_timeout(connect)
        .start()
        .await
        .unwrap();
    let addr = a.listen_addrs()[0].clone();
    let b = builder("b")
        .psk(PreSharedKey::new([7; 32]))
        .bootstrap(addr.clone())
        .start()
        .await
        .unwrap();
    // C has another key, D none at all.
    let c = builder("c")
        .psk(PreSharedKey::new([8; 32]))
        .connect_timeout(connect)
        .bootstrap(addr.clone())
        .start()
        .await
        .unwrap();
    let d = builder("d")
        .connect_timeout(connect)
        .bootstrap(addr)
        .start()
        .await
        .unwrap();
    let sa = a.store::<Todos>().await.unwrap();
    let sb = b.store::<Todos>().await.unwrap();
    let sc = c.store::<Todos>().await.unwrap();
    let sd = d.store::<Todos>().await.unwrap();
    for (s, t) in [(&sa, "a"), (&sb, "b"), (&sc, "c"), (&sd, "d")] {
        s.set(Todos {
            items: vec![format!("secret of {t}")],
        })
        .await
        .unwrap();
    }
    let (ia, ib) = (a.device_id(), b.device_id());
    eventually("a and b see each other", &sa, |s| {
        s.get(&ib).is_some_and(|x| x.version.counter == 1)
    })
    .await;
    eventually("b sees a", &sb, |s| {
        s.get(&ia).is_some_and(|x| x.version.counter == 1)
    })
    .await;

    // The outsiders' connection attempts fail, visibly, and they learn nothing.
    for (n, what) in [(&c, "wrong key"), (&d, "no key")] {
        eventually_metrics(&format!("{what}: failed connection counted"), n, |m| {
            m.connection_failures >= 1
        })
        .await;
    }
    eventually_metrics("a counts the failed handshakes", &a, |m| {
        m.connection_failures >= 2
    })
    .await;
    assert_eq!(sc.snapshot().len(), 1, "wrong-key node received slices");
    assert_eq!(sd.snapshot().len(), 1, "keyless node received slices");
    assert_eq!(
        sa.snapshot().len(),
        2,
        "an outsider's slice reached the private mesh"
    );
    assert_eq!(
        sb.snapshot().len(),
        2,
        "an outsider's slice reached the private mesh"
    );
    assert_eq!(c.metrics().peers_online, 0);
    assert_eq!(d.metrics().peers_online, 0);

    // A malformed key file is a clear error.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key").unwrap();
    let err = builder("x").psk_file(&bad).start().await.unwrap_err();
    assert!(matches!(err, Error::Psk { .. }), "{err:?}");
    assert!(err.to_string().contains("swarm.key"), "{err}");

    for n in [a, b, c, d] {
        n.shutdown().await.unwrap();
    }
}

//! The admin endpoint, the introspection API and the metrics, on real nodes over loopback:
//! every route over real HTTP, the event stream following peers that join, leave and
//! vanish, and the dashboard in a real headless Chromium.

mod common;

use std::time::{Duration, Instant};

use common::{builder, init_tracing, Status, DEADLINE};
use serde_json::Value;
use tokio::sync::mpsc;
use truffle_actors::prelude::*;
use truffle_actors::prometheus_client::encoding::text::encode;
use truffle_actors::prometheus_client::registry::Registry;
use truffle_actors::{NodeEvent, PeerState};
use truffle_cli::http::{follow_events, get_json, AdminUrl};

const T: Duration = Duration::from_secs(10);

fn loopback0() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn url(node: &MeshNode) -> AdminUrl {
    let addr = node.admin_addr().expect("admin endpoint on");
    format!("http://{addr}").parse().unwrap()
}

/// Polls `f` until it returns `Some`, or panics at the deadline with `what`.
async fn until<R, F: std::future::Future<Output = Option<R>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> R {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(r) = f().await {
            return r;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain GET returning (status, content type, body), for the non-JSON routes.
async fn get_raw(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    get_raw_host(addr, path, &addr.to_string()).await
}

/// [`get_raw`] with a given `Host` header.
async fn get_raw_host(addr: std::net::SocketAddr, path: &str, host: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_metrics_and_introspection_over_loopback() {
    init_tracing();
    let a = builder("alice").admin(loopback0()).start().await.unwrap();
    let b = builder("bob")
        .bootstrap(a.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    let on_a = a.store::<Status>().await.unwrap();
    let on_b = b.store::<Status>().await.unwrap();
    on_b.update(|s| {
        s.text = "hello from bob".into();
        s.n = 7;
    })
    .await
    .unwrap();
    let b_id = b.device_id();
    on_a.wait_until(DEADLINE, |s| s.get(&b_id).is_some_and(|x| x.data.n == 7))
        .await
        .unwrap();

    // The library API: bob is online, named, connected, with his slice version.
    let bob = until("bob's name and RTT in peers()", || async {
        a.peers()
            .into_iter()
            .find(|p| p.device_id == b_id && p.name.is_some() && p.rtt_ms.is_some())
    })
    .await;
    assert_eq!(bob.name.as_deref(), Some("bob"));
    assert_eq!(bob.state, PeerState::Online);
    assert!(bob.connected);
    assert!(bob.incarnation > 0);
    assert!(!bob.addresses.is_empty());
    assert_eq!(
        bob.stores.get(&StoreId::new("status").unwrap()).copied(),
        Some(on_b.snapshot().local.version)
    );
    let stores = a.stores();
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0].slices.len(), 2);
    assert!(stores[0].slices[0].local);

    // The JSON routes.
    let u = url(&a);
    let node = get_json(&u, "/api/node", T).await.unwrap();
    assert_eq!(node["name"], "alice");
    assert_eq!(node["device_id"], a.device_id().to_string());
    assert_eq!(node["stores"], serde_json::json!(["status"]));
    assert_eq!(node["peers_online"], 1);
    let peers = get_json(&u, "/api/peers", T).await.unwrap();
    let p = &peers.as_array().unwrap()[0];
    assert_eq!(p["name"], "bob");
    assert_eq!(p["state"], "online");
    assert_eq!(p["connected"], true);
    let store = get_json(&u, "/api/stores/status", T).await.unwrap();
    let bob_slice = store["slices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["device_id"] == b_id.to_string())
        .expect("bob's slice listed")
        .clone();
    assert_eq!(
        bob_slice["data"],
        serde_json::json!({ "text": "hello from bob", "n": 7 })
    );
    assert_eq!(bob_slice["name"], "bob");
    assert_eq!(bob_slice["local"], false);
    let stores = get_json(&u, "/api/stores", T).await.unwrap();
    assert_eq!(stores[0]["id"], "status");

    // Errors say what is wrong, as JSON.
    let e = get_json(&u, "/api/stores/nope", T).await.unwrap_err();
    assert!(
        e.contains("404") && e.contains("has not joined store `nope`"),
        "{e}"
    );
    let e = get_json(&u, "/api/stores/a%20b", T).await.unwrap_err();
    assert!(e.contains("400"), "{e}");
    let e = get_json(&u, "/api/nothing", T).await.unwrap_err();
    assert!(e.contains("404") && e.contains("/api/peers"), "{e}");

    // Metrics: OpenMetrics text, Truffle's names and labels, libp2p's own.
    let addr = a.admin_addr().unwrap();
    let (status, ctype, text) = get_raw(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    for needle in [
        "truffle_slices_applied_total{store=\"status\"} ",
        "truffle_messages_rejected_total{reason=\"stale\"} ",
        "truffle_removals_total{reason=\"timeout\"} 0",
        "truffle_peers_online 1",
        "truffle_stores_joined 1",
        "truffle_apply_latency_seconds_bucket",
        "truffle_sync_answer_bytes_bucket",
        "truffle_fetches_total",
        "libp2p_",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert!(text.trim_end().ends_with("# EOF"));
    let applied: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("truffle_slices_applied_total{store=\"status\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(applied >= 1.0);

    // A loopback endpoint refuses requests for other host names (DNS rebinding).
    let (status, _, body) = get_raw_host(addr, "/api/node", "evil.example:80").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("refused"), "{body}");
    let (status, _, _) = get_raw_host(addr, "/api/node", "localhost").await;
    assert_eq!(status, 200);

    // The dashboard page is self-contained: no external resources.
    let (status, ctype, html) = get_raw(addr, "/").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"));
    assert!(html.contains("/api/events"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );

    // An app's own registry: two nodes side by side under a label each.
    let mut registry = Registry::default();
    a.register_metrics(registry.sub_registry_with_label(("node".into(), "alice".into())));
    b.register_metrics(registry.sub_registry_with_label(("node".into(), "bob".into())));
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("truffle_peers_online{node=\"alice\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("truffle_slices_published_total{node=\"bob\",store=\"status\"}"),
        "{text}"
    );

    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    // The endpoint is gone with the node.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_peers_that_join_leave_and_vanish() {
    init_tracing();
    let a = builder("alice")
        .admin(loopback0())
        .presence_interval(Duration::from_millis(100))
        .presence_timeout(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let _on_a = a.store::<Status>().await.unwrap();
    let mut lib_events = a.events();

    // The same events over server-sent events, as `truffle watch` reads them.
    let (tx, mut sse) = mpsc::unbounded_channel::<Value>();
    let u = url(&a);
    tokio::spawn(async move {
        let _ = follow_events(&u, "/api/events", |ev| tx.send(ev).is_ok()).await;
    });
    let first = tokio::time::timeout(T, sse.recv()).await.unwrap().unwrap();
    assert_eq!(first["event"], "subscribed");

    let quick = |name: &str| {
        builder(name)
            .bootstrap(a.listen_addrs()[0].clone())
            .presence_interval(Duration::from_millis(100))
            .presence_timeout(Duration::from_millis(1500))
    };
    let b = quick("bob").start().await.unwrap();
    let on_b = b.store::<Status>().await.unwrap();
    on_b.update(|s| s.n = 1).await.unwrap();
    let b_id = b.device_id();
    let bs = b_id.to_string();

    async fn expect(
        sse: &mut mpsc::UnboundedReceiver<Value>,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(end, sse.recv()).await {
                Ok(Some(ev)) if f(&ev) => return,
                Ok(Some(_)) => {}
                _ => panic!("no {what} event"),
            }
        }
    }
    expect(&mut sse, "connection_up", |e| {
        e["event"] == "connection_up" && e["device_id"] == bs
    })
    .await;
    expect(&mut sse, "peer_online", |e| {
        e["event"] == "peer_online" && e["device_id"] == bs
    })
    .await;
    expect(&mut sse, "slice_updated", |e| {
        e["event"] == "slice_updated"
            && e["device_id"] == bs
            && e["store"] == "status"
            && e["version"]["counter"] == 1
    })
    .await;
    b.shutdown().await.unwrap();
    expect(&mut sse, "slice_removed", |e| {
        e["event"] == "slice_removed" && e["device_id"] == bs && e["reason"] == "left"
    })
    .await;

    // The library stream saw the same, in order.
    let mut seen = Vec::new();
    let end = tokio::time::Instant::now() + DEADLINE;
    while !seen
        .iter()
        .any(|e| matches!(e, NodeEvent::PeerOffline { reason: "left", .. }))
    {
        match tokio::time::timeout_at(end, lib_events.recv()).await {
            Ok(Some(e)) => seen.push(e),
            _ => panic!("no peer_offline(left) from events(); saw {seen:?}"),
        }
    }
    let pos = |f: &dyn Fn(&NodeEvent) -> bool| {
        seen.iter()
            .position(f)
            .unwrap_or_else(|| panic!("{seen:?}"))
    };
    let online = pos(&|e| matches!(e, NodeEvent::PeerOnline { device_id } if *device_id == b_id));
    let offline =
        pos(&|e| matches!(e, NodeEvent::PeerOffline { device_id, .. } if *device_id == b_id));
    assert!(online < offline);
    let left = a.peers().into_iter().find(|p| p.device_id == b_id).unwrap();
    assert_eq!(left.state, PeerState::Left);
    assert!(left.stores.is_empty());

    // A device that vanishes (no leave) is suspected first, then removed at the timeout.
    let c = quick("carol").start().await.unwrap();
    let on_c = c.store::<Status>().await.unwrap();
    on_c.update(|s| s.n = 2).await.unwrap();
    let cs = c.device_id().to_string();
    expect(&mut sse, "carol's slice", |e| {
        e["event"] == "slice_updated" && e["device_id"] == cs
    })
    .await;
    drop(on_c);
    drop(c);
    expect(&mut sse, "peer_suspected", |e| {
        e["event"] == "peer_suspected" && e["device_id"] == cs
    })
    .await;
    expect(&mut sse, "peer_offline(timeout)", |e| {
        e["event"] == "peer_offline" && e["device_id"] == cs && e["reason"] == "timeout"
    })
    .await;
    a.shutdown().await.unwrap();
    // The stream ends with the node.
    let end = tokio::time::Instant::now() + T;
    while let Ok(Some(_)) = tokio::time::timeout_at(end, sse.recv()).await {}
    assert!(
        tokio::time::Instant::now() < end,
        "the event stream ends at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_address_in_use_is_a_clear_error() {
    init_tracing();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = builder("x").admin(addr).start().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("admin endpoint") && text.contains(&addr.to_string()),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_sees_every_slice_and_is_in_no_store() {
    init_tracing();
    let a = builder("alice").admin(loopback0()).start().await.unwrap();
    let seed = a.listen_addrs()[0].clone();
    let b = builder("bob")
        .bootstrap(seed.clone())
        .start()
        .await
        .unwrap();
    let on_a = a.store::<Status>().await.unwrap();
    let on_b = b.store::<Status>().await.unwrap();
    on_a.update(|s| s.text = "a".into()).await.unwrap();
    on_b.update(|s| s.text = "b".into()).await.unwrap();

    let o = builder("observer").bootstrap(seed).start().await.unwrap();
    let status = StoreId::new("status").unwrap();
    let observer = o.observe(status.clone()).await.unwrap();
    // The slices written before it joined, decoded without the type.
    let (a_id, b_id) = (a.device_id(), b.device_id());
    let seen = observer
        .wait_until(DEADLINE, |s| {
            s.get(&a_id).is_some_and(|x| x.data["text"] == "a")
                && s.get(&b_id).is_some_and(|x| x.data["text"] == "b")
        })
        .await
        .unwrap_or_else(|s| {
            panic!(
                "observer saw {s:?}\nits peers: {:?}\nits metrics: {:?}\nalice's peers: {:?}\nalice's stores: {:?}\nbob's stores: {:?}",
                o.peers(),
                o.metrics(),
                a.peers(),
                a.stores(),
                b.stores()
            )
        });
    assert_eq!(seen.len(), 2, "no slice of its own");
    assert_eq!(seen[&b_id].data, serde_json::json!({ "text": "b", "n": 0 }));
    // And what is written after.
    on_b.update(|s| s.n = 9).await.unwrap();
    observer
        .wait_until(DEADLINE, |s| s.get(&b_id).is_some_and(|x| x.data["n"] == 9))
        .await
        .unwrap();
    // Alice knows the observer as a device of the mesh, but holds no slice of it.
    let o_id = o.device_id();
    until("the observer among alice's peers", || async {
        a.peers()
            .into_iter()
            .find(|p| p.device_id == o_id && p.name.is_some())
    })
    .await;
    assert!(on_a.snapshot().get(&o_id).is_none());
    assert!(on_b.snapshot().get(&o_id).is_none());
    assert_eq!(on_a.snapshot().len(), 2);
    let peer = a.peers().into_iter().find(|p| p.device_id == o_id).unwrap();
    assert!(peer.stores.is_empty(), "{peer:?}");
    // Observing a joined store again fails; the observer's own store view lists no
    // slice of its own.
    assert!(o.observe(status.clone()).await.is_err());
    assert_eq!(o.stores()[0].slices.len(), 2);
    assert!(o.stores()[0].slices.iter().all(|s| !s.local));

    // A device that leaves disappears from the observer too.
    b.shutdown().await.unwrap();
    observer
        .wait_until(DEADLINE, |s| !s.contains_key(&b_id))
        .await
        .unwrap();
    o.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

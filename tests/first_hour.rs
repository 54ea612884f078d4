//! What a newcomer meets in the first hour (issue 15): ports in use, own addresses among
//! the seeds, DNS addresses, the addresses to hand out, two types with one store id, and a
//! snapshot with the events after it.

mod common;

use std::time::Duration;

use common::{builder, eventually, init_tracing, Status};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use truffle_actors::identity::Keypair;
use truffle_actors::multiaddr::Protocol;
use truffle_actors::prelude::*;
use truffle_actors::{Multiaddr, SliceStore};

fn tcp_port(addr: &Multiaddr) -> u16 {
    addr.iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a tcp address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_port_in_use_fails_to_start() {
    init_tracing();
    let first = builder("first").start().await.unwrap();
    let port = tcp_port(&first.listen_addrs()[0]);
    for listen in [
        format!("/ip4/127.0.0.1/tcp/{port}"),
        // 0.0.0.0 covers 127.0.0.1: the port is taken there too.
        format!("/ip4/0.0.0.0/tcp/{port}"),
    ] {
        let second = MeshNode::builder()
            .listen(listen.parse().unwrap())
            .mdns(false)
            .start()
            .await;
        let e = second
            .expect_err("a port in use must not be shared")
            .to_string();
        assert!(e.contains(&format!("port {port} is already in use")), "{e}");
        assert!(e.contains("/tcp/0"), "says what to do: {e}");
    }
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_on_an_address_not_on_this_host_gives_the_os_reason() {
    init_tracing();
    let e = MeshNode::builder()
        .listen("/ip4/203.0.113.9/tcp/0".parse().unwrap())
        .mdns(false)
        .start()
        .await
        .expect_err("not an address of this host")
        .to_string();
    assert!(e.contains("not an address of this host"), "{e}");
    assert!(e.contains("os error"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_bootstrap_address_is_an_error_with_the_right_advice() {
    init_tracing();
    let e = builder("x")
        .bootstrap("/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap())
        .start()
        .await
        .expect_err("quic is not supported")
        .to_string();
    assert!(e.contains("this node dials TCP only"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_seed_list_with_the_node_itself_is_fine() {
    init_tracing();
    let a_key = Keypair::generate_ed25519();
    let a_id = a_key.public().to_peer_id();
    // The seed list every node gets: a's address (port unknown yet; any will do for a
    // itself, which must skip it) ...
    let own: Multiaddr = format!("/ip4/127.0.0.1/tcp/9/p2p/{a_id}").parse().unwrap();
    let a = builder("a")
        .keypair(a_key)
        .bootstrap(own)
        .start()
        .await
        .expect("own address among the seeds is skipped");
    let a_addr = a.listen_addrs()[0].clone();
    // ... and b's own listen address, bare.
    let b_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let b_own: Multiaddr = format!("/ip4/127.0.0.1/tcp/{b_port}").parse().unwrap();
    let b = MeshNode::builder()
        .listen(b_own.clone())
        .mdns(false)
        .bootstrap(a_addr)
        .bootstrap(b_own)
        .start()
        .await
        .expect("own bare address among the seeds is skipped");

    let sa = a.store::<Status>().await.unwrap();
    let sb = b.store::<Status>().await.unwrap();
    sa.update(|s| s.text = "a".into()).await.unwrap();
    let a_dev = a.device_id();
    eventually("b sees a", &sb, |s| {
        s.get(&a_dev).is_some_and(|x| x.data.text == "a")
    })
    .await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_bootstrap_address_connects() {
    init_tracing();
    let a = builder("a").start().await.unwrap();
    let port = tcp_port(&a.listen_addrs()[0]);
    let by_name: Multiaddr = format!("/dns4/localhost/tcp/{port}/p2p/{}", a.device_id())
        .parse()
        .unwrap();
    let b = builder("b").bootstrap(by_name).start().await.unwrap();
    let sa = a.store::<Status>().await.unwrap();
    let sb = b.store::<Status>().await.unwrap();
    sb.update(|s| s.text = "via dns".into()).await.unwrap();
    let b_dev = b.device_id();
    eventually("a sees b, dialled by name", &sa, |s| {
        s.get(&b_dev).is_some_and(|x| x.data.text == "via dns")
    })
    .await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

/// The host's IPv4 addresses according to `ip`, or `None` where `ip` is missing.
fn host_ipv4() -> Option<Vec<std::net::Ipv4Addr>> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.find(|x| *x == "inet")?;
                w.next()?.split('/').next()?.parse().ok()
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_reports_every_interface_of_a_wildcard_listener() {
    init_tracing();
    let Some(expected) = host_ipv4() else {
        eprintln!("`ip` is not available; skipping");
        return;
    };
    for run in 0..3 {
        let node = MeshNode::builder()
            .listen("/ip4/0.0.0.0/tcp/0".parse().unwrap())
            .mdns(false)
            .start()
            .await
            .unwrap();
        // Right after start, with no waiting: what a program prints for the user.
        let listed: Vec<std::net::Ipv4Addr> = node
            .listen_addrs()
            .iter()
            .filter_map(|a| {
                a.iter().find_map(|p| match p {
                    Protocol::Ip4(ip) => Some(ip),
                    _ => None,
                })
            })
            .collect();
        for ip in &expected {
            assert!(
                listed.contains(ip),
                "run {run}: {ip} missing from {:?}",
                node.listen_addrs()
            );
        }
        assert!(listed.iter().all(|ip| !ip.is_unspecified()), "{listed:?}");
        node.shutdown().await.unwrap();
    }
}

#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(bound(deserialize = ""))]
#[syncable(id = "metric")]
struct Metric<T>
where
    T: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static,
{
    value: T,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_generic_instances_with_one_store_id_get_advice_that_applies() {
    init_tracing();
    let node = builder("n").start().await.unwrap();
    let _floats = node.store::<Metric<f64>>().await.unwrap();
    // The same type again is another handle to the same store.
    node.store::<Metric<f64>>().await.unwrap();
    let e = node
        .store::<Metric<String>>()
        .await
        .expect_err("another type under the same id")
        .to_string();
    assert!(e.contains("with a data type other than"), "{e}");
    assert!(e.contains("Metric<alloc::string::String>"), "{e}");
    assert!(e.contains("truffle_actors::SliceStore::"), "{e}");
    assert!(!e.contains("clone the existing"), "{e}");
    // The advice works.
    let texts = node
        .join(SliceStore::<Metric<String>>::with_id(StoreId::new("metric-text").unwrap()).unwrap())
        .await
        .unwrap();
    texts.update(|m| m.value = "ok".into()).await.unwrap();
    node.shutdown().await.unwrap();
}

#[derive(Syncable, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[syncable(id = "counter")]
struct Counter {
    n: u64,
}

/// Subscribing while writes are under way: the snapshot plus the events after it must
/// account for every write once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_snapshot_has_no_gap_and_no_repeat() {
    init_tracing();
    const WRITES: u64 = 2000;
    let a = builder("a").start().await.unwrap();
    let b = builder("b")
        .bootstrap(a.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    let local = a.store::<Counter>().await.unwrap();
    let remote = b.store::<Counter>().await.unwrap();
    let a_dev = a.device_id();
    let b_dev = b.device_id();
    eventually("a and b see each other", &local, |s| {
        s.get(&b_dev).is_some()
    })
    .await;

    let writer = {
        let local = local.clone();
        let remote = remote.clone();
        tokio::spawn(async move {
            for n in 1..=WRITES {
                local.update(move |c| c.n = n).await.unwrap();
                if n % 4 == 0 {
                    remote.update(move |c| c.n = n).await.unwrap();
                }
                if n % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut checked = 0;
    let mut followed = 0;
    while !writer.is_finished() {
        let (snap, mut events) = local.subscribe_with_snapshot();
        let mut n = snap.local.data.n;
        let mut remote_version = snap.get(&b_dev).map(|s| s.version);
        // Follow the stream for a while (50 ms or a sixteenth of the writes, whichever
        // ends first: on a quiet machine all the writes took about 100 ms, too few
        // subscriptions for the check below), from wherever the writer is.
        let until = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut seen = 0;
        while seen < WRITES / 16 {
            let Ok(Some(ev)) = tokio::time::timeout_at(until, events.recv()).await else {
                break;
            };
            seen += 1;
            match ev {
                StoreEvent::LocalChanged { slice } => {
                    assert_eq!(slice.device_id, a_dev);
                    assert_eq!(slice.data.n, n + 1, "a local write was missed or repeated");
                    n += 1;
                    followed += 1;
                }
                StoreEvent::RemoteUpdated { slice } => {
                    // Remote versions may be coalesced away on the wire, never go back.
                    assert!(
                        remote_version.is_none_or(|v| slice.version > v),
                        "a remote version repeated or went back"
                    );
                    remote_version = Some(slice.version);
                }
                StoreEvent::Lagged { .. } => panic!("this subscriber keeps up"),
                other => panic!("unexpected {other:?}"),
            }
        }
        checked += 1;
    }
    writer.await.unwrap();
    eprintln!("{checked} subscriptions during the writes, {followed} local events checked");
    assert!(
        checked >= 3,
        "only {checked} subscriptions during the writes"
    );
    // And the last subscription after the writes: nothing pending, the snapshot is final.
    let (snap, _) = local.subscribe_with_snapshot();
    assert_eq!(snap.local.data.n, WRITES);
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

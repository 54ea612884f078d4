//! Private meshes (pre-shared key) and hostile input.

mod common;

use std::time::Duration;

use common::rogue::{self, envelope_device, rss};
use common::*;
use truffle_actors::prelude::*;
use truffle_actors::Multiaddr;
use truffle_actors::PreSharedKey;

/// The tests that read the process's RSS, or flood a node, run one at a time: RSS is the
/// whole process's, and a flood beside them moves their figures (CI saw a fetch test's
/// RSS grow by 98 MB while the rogue test ran next to it).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// A `v`-99 message shaped like a slice.
fn unknown_version_message() -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Future {
        v: u8,
        kind: &'static str,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        #[serde(with = "serde_bytes")]
        sig: Vec<u8>,
    }
    rmp_serde::to_vec_named(&Future {
        v: 99,
        kind: "slice",
        body: vec![1, 2, 3],
        sig: vec![4; 64],
    })
    .unwrap()
}

/// Publishes from the rogue until `at` counted `reason` `n` times.
async fn rogue_until(
    rogue: &rogue::Rogue,
    topic: &str,
    bytes: &[u8],
    at: &MeshNode,
    reason: truffle_actors::RejectReason,
    n: u64,
) {
    send_until_rejected(at, reason, n, || {
        let _ = rogue
            .cmds
            .send(rogue::Cmd::Publish(topic.to_string(), bytes.to_vec()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_peer_gets_nothing_accepted_and_cannot_starve_honest_updates() {
    let _one = ONE_AT_A_TIME.lock().await;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use truffle_actors::testing::signed_slice;
    use truffle_actors::{RejectReason, Version};

    init_tracing();
    const TOPIC: &str = "truffle/v1/store/todos";
    let writer = builder("writer").start().await.unwrap();
    let observer = builder("observer")
        .bootstrap(writer.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    let w = writer.store::<Todos>().await.unwrap();
    let o = observer.store::<Todos>().await.unwrap();
    let wid = writer.device_id();
    let mut rogue = rogue::start(
        &[
            observer.listen_addrs()[0].clone(),
            writer.listen_addrs()[0].clone(),
        ],
        &[TOPIC, "truffle/v1/presence"],
    )
    .await;

    // Capture one of the writer's real messages to replay later.
    let captured = loop {
        w.update(|t| t.items.push("real".into())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(seen) = rogue.seen.recv().await {
                if let rogue::Seen::Message(topic, data) = seen {
                    if topic == TOPIC && envelope_device(&data) == Some(wid.to_string()) {
                        return Some(data);
                    }
                }
            }
            None
        })
        .await;
        if let Ok(Some(data)) = got {
            break data;
        }
    };
    w.update(|t| t.items.push("newer".into())).await.unwrap();
    let newest = w.local().version;
    eventually("observer holds the writer's newest", &o, |s| {
        s.get(&wid).is_some_and(|x| x.version == newest)
    })
    .await;

    let store = StoreId::new("todos").unwrap();
    let forged = signed_slice(
        &rogue.key,
        &store,
        wid,
        Version::new(u64::MAX / 2, 1),
        &Todos {
            items: vec!["forged".into()],
        },
    );
    // Re-encoded copies of a message the observer already has (the writer's captured
    // slice, each in an envelope with one more field) share its message id, which covers
    // the signed content only: gossipsub drops them as duplicates before any check, and
    // nothing is forwarded or counted. (Before, each copy had an id of its own and was
    // verified, accepted and forwarded, then counted `stale`.)
    const COPIES: u32 = 200;
    let before = observer.metrics();
    for i in 0..COPIES {
        rogue
            .cmds
            .send(rogue::Cmd::Publish(TOPIC.into(), varied(&captured, i + 1)))
            .unwrap();
    }
    // Then a re-encoded copy of something new, the rogue's own presence, on the same
    // stream: once it is counted, the copies sent before it were handled. It is not
    // forwarded, and costs the rogue score.
    let fresh = varied(
        &truffle_actors::testing::signed_presence(&rogue.key, 1, 1, &[]),
        1,
    );
    let n = before.rejected(RejectReason::NonCanonical) + 1;
    rogue_until(
        &rogue,
        "truffle/v1/presence",
        &fresh,
        &observer,
        RejectReason::NonCanonical,
        n,
    )
    .await;
    let after = observer.metrics();
    eprintln!(
        "{COPIES} re-encoded copies of a seen slice: delivered {} -> {}, stale {} -> {}; a re-encoded new presence: non_canonical {}",
        before.delivered,
        after.delivered,
        before.stale(),
        after.stale(),
        after.rejected(RejectReason::NonCanonical)
    );
    // Before, all 200 copies were checked. Now none is, unless the observer had the
    // original by a sync answer rather than by gossip: then the first copy to arrive is
    // new to gossipsub and is checked once (as the Security chapter says), found stale,
    // and the rest are its duplicates. CI saw delivered 2 -> 4, stale 0 -> 1 once.
    assert!(
        after.delivered - before.delivered <= 2,
        "re-encoded copies of a seen message were checked: delivered {} -> {}",
        before.delivered,
        after.delivered
    );
    assert!(after.stale() - before.stale() <= 1);

    // Invalid messages lower the rogue's gossipsub score, and three in a row put it below
    // the graylist threshold for a while (its messages are then ignored until it decays).
    let cases: Vec<(&str, Vec<u8>, RejectReason)> = vec![
        (
            "garbage",
            b"\xc1\xc1 not msgpack".to_vec(),
            RejectReason::Undecodable,
        ),
        (
            "oversized",
            vec![0x90; 1024 * 1024 + 8 * 1024],
            RejectReason::Oversized,
        ),
        (
            "another device's id",
            forged.clone(),
            RejectReason::BadSignature,
        ),
        (
            "unknown version",
            unknown_version_message(),
            RejectReason::UnknownVersion,
        ),
    ];
    for (what, bytes, reason) in &cases {
        let n = observer.metrics().rejected(*reason) + 1;
        rogue_until(&rogue, TOPIC, bytes, &observer, *reason, n).await;
        eprintln!(
            "rogue {what}: counted as {reason} = {}",
            observer.metrics().rejected(*reason)
        );
    }

    // Forged answers to a full-state request: the rogue advertises a newer version of its
    // own slice, the observer fetches from it, and gets a forgery and a stale replay.
    rogue
        .cmds
        .send(rogue::Cmd::AnswerWith(vec![
            forged.clone(),
            captured.clone(),
        ]))
        .unwrap();
    let bad_sig_before = observer.metrics().rejected(RejectReason::BadSignature);
    let stale_before = observer.metrics().stale();
    let mut seq = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        seq += 1;
        let p = truffle_actors::testing::signed_presence(
            &rogue.key,
            1,
            seq,
            &[(&store, Version::new(1, seq))],
        );
        rogue
            .cmds
            .send(rogue::Cmd::Publish("truffle/v1/presence".into(), p))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = observer.metrics();
        if m.rejected(RejectReason::BadSignature) > bad_sig_before && m.stale() > stale_before {
            eprintln!("rogue forged sync answer: bad_signature and stale counted");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "forged answer not counted: {m:#?}"
        );
    }

    // Nothing false was accepted.
    let held = o.get(&wid).unwrap();
    assert_eq!(held.version, newest);
    assert_eq!(held.data.items, w.local().data.items);
    assert_eq!(held.data.items.last().map(String::as_str), Some("newer"));
    assert_eq!(
        o.snapshot().len(),
        2,
        "the rogue has no slice on the observer"
    );

    // Flood: 10 000 junk messages a second (for TRUFFLE_FLOOD_SECS, default 2; the issue's
    // full 10 s on demand) while the writer keeps writing. Honest updates keep arriving.
    let secs: u64 = std::env::var("TRUFFLE_FLOOD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let sent_at: Arc<Mutex<HashMap<u64, std::time::Instant>>> = Arc::default();
    let mut events = o.subscribe();
    let latencies = {
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(ev) = events.recv().await {
                if let StoreEvent::RemoteUpdated { slice } = ev {
                    if slice.device_id == wid {
                        if let Some(t) = sent_at.lock().unwrap().get(&slice.version.counter) {
                            lat.push(t.elapsed());
                        }
                        if slice.data.items.last().is_some_and(|i| i == "last") {
                            break;
                        }
                    }
                }
            }
            lat
        })
    };
    rogue
        .cmds
        .send(rogue::Cmd::Flood(
            TOPIC.into(),
            10_000 * secs as u32,
            Duration::from_secs(secs),
        ))
        .unwrap();
    let flood_end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut writes = 0;
    while tokio::time::Instant::now() < flood_end {
        let next = w.local().version.counter + 1;
        sent_at
            .lock()
            .unwrap()
            .insert(next, std::time::Instant::now());
        w.update(move |t| t.items = vec![format!("flood-time write {next}")])
            .await
            .unwrap();
        writes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = w.local().version.counter + 1;
    sent_at
        .lock()
        .unwrap()
        .insert(next, std::time::Instant::now());
    w.update(|t| t.items = vec!["last".into()]).await.unwrap();
    let mut lat = tokio::time::timeout(DEADLINE, latencies)
        .await
        .expect("the honest writer's last update arrives during/after the flood")
        .unwrap();
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    eprintln!(
        "flood {secs} s x 10 000 msg/s: {} honest writes, {} delivered; latency p50 {:?} p99 {:?} max {:?}",
        writes + 1,
        lat.len(),
        p(0.5),
        p(0.99),
        lat.last().unwrap()
    );
    let published = loop {
        match tokio::time::timeout(DEADLINE, rogue.seen.recv()).await {
            Ok(Some(rogue::Seen::Flooded(n))) => break n,
            Ok(Some(_)) => {}
            _ => panic!("the rogue's flood did not finish"),
        }
    };
    eprintln!("rogue flood: {published} junk messages published");
    assert!(
        published >= 5_000 * secs as u32,
        "the flood was too weak to mean anything: {published}"
    );
    assert!(lat.len() * 2 > writes, "most honest updates were applied");
    eprintln!("observer metrics after the flood: {:?}", observer.metrics());
    assert_eq!(o.get(&wid).unwrap().data.items, ["last"]);
    for n in [writer, observer] {
        n.shutdown().await.unwrap();
    }
}

/// Fetch amplification: a 4.6 KB request naming the rogue's own 1 MB slice 64 times used
/// to get a 64 MB answer, each copy a fresh buffer (and the whole answer encoded once
/// more), so a few such requests left unread put a node at gigabytes. Now the answer holds
/// the slice once, shared with what the node holds, and a peer's requests past its budget
/// are answered empty before any work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_wanting_one_slice_many_times_gets_it_once_and_unread_answers_stay_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    use truffle_actors::testing::signed_slice;
    use truffle_actors::wire::{SyncRequest, Want};
    use truffle_actors::Version;

    init_tracing();
    const TOPIC: &str = "truffle/v1/store/todos";
    const WANTED: usize = 64;
    const IN_FLIGHT: usize = 48;
    // The per-peer limit on sync requests being answered at once (the Security chapter).
    const PER_PEER: u64 = 32;
    let node = builder("honest").start().await.unwrap();
    let store = node.store::<Todos>().await.unwrap();
    let mut rogue = rogue::start(&[node.listen_addrs()[0].clone()], &[TOPIC]).await;
    let me = DeviceId::from(rogue.key.public().to_peer_id());
    let big = signed_slice(
        &rogue.key,
        &StoreId::new("todos").unwrap(),
        me,
        Version::new(1, 1),
        &Todos {
            items: vec!["x".repeat(1_000_000)],
        },
    );
    // Publish the rogue's own 1 MB slice until the node holds it.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while store.get(&me).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rogue's slice never arrived"
        );
        rogue
            .cmds
            .send(rogue::Cmd::Publish(TOPIC.into(), big.clone()))
            .unwrap();
        let _ = store
            .wait_until(Duration::from_millis(500), |s| s.get(&me).is_some())
            .await;
    }

    let request = SyncRequest {
        v: 1,
        kind: "fetch".into(),
        want: vec![
            Want {
                store: "todos".into(),
                device: Some(me.to_string()),
            };
            WANTED
        ],
        incarnation: 0,
        ..SyncRequest::default()
    };
    let request_bytes = rmp_serde::to_vec_named(&request).unwrap().len();
    assert!(request_bytes < 5_000, "{request_bytes}");

    // One such request, answer read: the slice once.
    rogue
        .cmds
        .send(rogue::Cmd::Fetch {
            peer: node.device_id().peer_id(),
            request: request.clone(),
            count: 1,
            read: true,
        })
        .unwrap();
    let answer = tokio::time::timeout(DEADLINE, async {
        loop {
            match rogue.seen.recv().await {
                Some(rogue::Seen::Answer(a)) => break a,
                Some(_) => {}
                None => panic!("the rogue stopped"),
            }
        }
    })
    .await
    .expect("the rogue's fetch is answered");
    assert_eq!(answer.slices.len(), 1, "the slice once, not {WANTED} times");
    assert_eq!(&answer.slices[0][..], &big[..]);
    eprintln!(
        "a {request_bytes}-byte request wanting a {} KB slice {WANTED} times: an answer of {} slice(s)",
        big.len() / 1024,
        answer.slices.len()
    );

    // Many at once, never read: those past the peer's limit are answered empty, and the
    // node's memory does not grow with what it was asked.
    let before = rss().expect("VmRSS readable");
    rogue
        .cmds
        .send(rogue::Cmd::Fetch {
            peer: node.device_id().peer_id(),
            request,
            count: IN_FLIGHT,
            read: false,
        })
        .unwrap();
    let refused = IN_FLIGHT as u64 - PER_PEER;
    let m = eventually_metrics(
        "requests past the peer's limit are answered empty",
        &node,
        |m| m.sync_over_budget >= refused,
    )
    .await;
    // The admitted answers stay unread until the node's 10 s request timeout: watch the
    // memory over a second of it.
    let mut peak = before;
    for _ in 0..20 {
        peak = peak.max(rss().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "{IN_FLIGHT} unread requests in flight: sync_over_budget {}, RSS {} MB -> peak {} MB (+{:.1} MB)",
        m.sync_over_budget,
        before >> 20,
        peak >> 20,
        grown as f64 / (1 << 20) as f64
    );
    assert_eq!(
        m.sync_over_budget, refused,
        "exactly the requests past the limit are refused"
    );
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes");
    node.shutdown().await.unwrap();
}

/// Junk on topics the node never joined: gossipsub 0.50.1 caches every received message
/// before it checks the topic, so 1 MB messages on a foreign topic used to pile up in its
/// message cache (+1.73 GB in the attack). Now they are dropped before that, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_a_topic_the_node_never_joined_is_dropped_before_it_is_cached() {
    let _one = ONE_AT_A_TIME.lock().await;
    use truffle_actors::RejectReason;

    init_tracing();
    const COUNT: u64 = 300;
    let node = builder("honest").start().await.unwrap();
    let _store = node.store::<Todos>().await.unwrap();
    let rogue = rogue::start(&[node.listen_addrs()[0].clone()], &[]).await;
    eventually_metrics("the rogue is connected", &node, |m| m.connected_peers >= 1).await;

    let before = rss().expect("VmRSS readable");
    rogue
        .cmds
        .send(rogue::Cmd::Junk(
            node.device_id().peer_id(),
            rogue::Junk {
                topic: "truffle/v1/store/never-joined".into(),
                count: COUNT as usize,
                size: 1_000_000,
            },
        ))
        .unwrap();
    // Watch the memory while the 300 MB arrive, until every message is counted.
    let mut peak = before;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let m = loop {
        peak = peak.max(rss().unwrap());
        let m = node.metrics();
        if m.rejected(RejectReason::UnjoinedTopic) >= COUNT {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the junk was not all counted: {m:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // gossipsub would have held them for 5 heartbeats (2.5 s): keep watching that long.
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        peak = peak.max(rss().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "{COUNT} x 1 MB on a topic never joined: unjoined_topic {}, delivered {}, RSS {} MB -> peak {} MB (+{:.1} MB)",
        m.rejected(RejectReason::UnjoinedTopic),
        m.delivered,
        before >> 20,
        peak >> 20,
        grown as f64 / (1 << 20) as f64
    );
    assert_eq!(m.rejected(RejectReason::UnjoinedTopic), COUNT);
    assert_eq!(m.delivered, 0, "nothing reached Truffle's checks");
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes");
    node.shutdown().await.unwrap();
}

/// The TCP address of a `/ip4/.../tcp/...` multiaddr.
fn tcp_addr(addr: &Multiaddr) -> std::net::SocketAddr {
    use truffle_actors::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    std::net::SocketAddr::new(ip.expect("an ip4 address"), port.expect("a tcp port"))
}

/// This process's open-file limit, soft and hard (`/proc/self/limits`; Linux only).
fn open_file_limits() -> Option<(String, String)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut v = line["Max open files".len()..].split_whitespace();
    Some((v.next()?.to_string(), v.next()?.to_string()))
}

/// Opens `n` TCP connections to `at` that never say anything; each reports on the
/// returned channel when the other side closes it.
async fn silent_connections(
    at: std::net::SocketAddr,
    n: usize,
) -> tokio::sync::mpsc::UnboundedReceiver<()> {
    use tokio::io::AsyncReadExt;
    let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(at)
            .await
            .expect("TCP connect");
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = closed.send(());
        });
    }
    rx
}

/// Waits until `n` more of the silent connections behind `closed` were closed by the node.
async fn until_closed(what: &str, closed: &mut tokio::sync::mpsc::UnboundedReceiver<()>, n: usize) {
    for i in 0..n {
        tokio::time::timeout(DEADLINE, closed.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: only {i} of {n} closed"));
    }
}

/// Many silent TCP connections (opened, never a byte sent) used to keep a newcomer out:
/// 1,100 of them filled a node's 1,024 file descriptors, and a newcomer joining through
/// it took 7.1 s instead of 0.2 s. Now a node raises its open-file limit at start, takes
/// up to `max_pending_incoming` connections in their handshakes (2048) and closes the
/// rest at once, and closes each silent one after `inbound_handshake_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_neither_keep_a_newcomer_out_nor_stay_open() {
    init_tracing();
    const SILENT: usize = 1_100;
    // "Promptly": a join takes well under a second on loopback; the silent connections
    // are held for a minute.
    const JOIN: Duration = Duration::from_secs(5);
    // Start from the common soft limit of 1024 (this changes it for the whole test
    // process; the node must raise it again).
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    if hard > 1024 {
        rlimit::setrlimit(rlimit::Resource::NOFILE, 1024, hard).unwrap();
    }
    let seed = builder("seed")
        .inbound_handshake_timeout(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    if let Some((soft, hard)) = open_file_limits() {
        assert_eq!(
            soft, hard,
            "the soft open-file limit is raised to the hard one"
        );
        eprintln!("open-file limit after start: {soft} (hard {hard})");
    }
    let s = seed.store::<Todos>().await.unwrap();
    s.set(Todos {
        items: vec!["seed".into()],
    })
    .await
    .unwrap();
    let mut closed = silent_connections(tcp_addr(&seed.listen_addrs()[0]), SILENT).await;

    let newcomer = builder("newcomer")
        .bootstrap(seed.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    let n = newcomer.store::<Todos>().await.unwrap();
    let id = seed.device_id();
    let joined = n.wait_until(JOIN, |snap| snap.get(&id).is_some()).await;
    assert!(
        joined.is_ok(),
        "the newcomer did not get the seed's slice within {JOIN:?} beside {SILENT} silent connections"
    );
    assert!(
        closed.try_recv().is_err(),
        "the silent connections were all still held when the newcomer joined"
    );
    for node in [seed, newcomer] {
        node.shutdown().await.unwrap();
    }

    // Past the pending limit a connection is closed as soon as it is accepted; within it,
    // a silent one is closed at the inbound handshake timeout.
    let small = builder("small")
        .max_pending_incoming(8)
        .inbound_handshake_timeout(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let mut closed = silent_connections(tcp_addr(&small.listen_addrs()[0]), 16).await;
    until_closed("connections past the pending limit", &mut closed, 8).await;
    eventually_metrics("the refused connections are counted", &small, |m| {
        m.connection_failures >= 8
    })
    .await;
    assert!(
        closed.try_recv().is_err(),
        "only the 8 past the limit are closed; the 8 pending ones wait for their timeout"
    );
    small.shutdown().await.unwrap();

    let brief = builder("brief")
        .inbound_handshake_timeout(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    let mut closed = silent_connections(tcp_addr(&brief.listen_addrs()[0]), 4).await;
    // Within DEADLINE at most; a dial's connect timeout (10 s) does not apply.
    until_closed(
        "silent connections at the handshake timeout",
        &mut closed,
        4,
    )
    .await;
    eventually_metrics("the timed-out handshakes are counted", &brief, |m| {
        m.connection_failures >= 4
    })
    .await;
    brief.shutdown().await.unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// No byte string makes any network decoder panic (the fuzz targets in `fuzz/` push
    /// the same entry point much further).
    #[test]
    fn no_input_makes_a_decoder_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        truffle_actors::testing::decode_everything(&bytes);
    }

    /// Nor does a valid message with bytes flipped.
    #[test]
    fn no_mutation_of_a_valid_slice_makes_a_decoder_panic(
        flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..8)
    ) {
        let key = truffle_actors::identity::Keypair::generate_ed25519();
        let dev = DeviceId::from(key.public().to_peer_id());
        let mut bytes = truffle_actors::testing::signed_slice(
            &key,
            &StoreId::new("todos").unwrap(),
            dev,
            truffle_actors::Version::new(1, 1),
            &Todos { items: vec!["x".into()] },
        );
        for (at, b) in flips {
            let n = bytes.len();
            bytes[at % n] ^= b;
        }
        truffle_actors::testing::decode_everything(&bytes);
    }
}

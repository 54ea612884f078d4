//! Hostile and faulty peers (issue 12): replays of a departed device, members flooding
//! their own slice, slow stores, minted identities, subscription churn. Each test points a rogue peer (raw libp2p with its own
//! keys, `common::rogue`) at real nodes on loopback and asserts on the honest nodes.

mod common;

use std::time::{Duration, Instant};

use common::rogue::{self, envelope_device};
use common::*;
use truffle_actors::prelude::*;
use truffle_actors::proto::Liveness;
use truffle_actors::{MeshNodeBuilder, RejectReason, SliceStore, Version};

/// One attack at a time in this process: each test measures the process's memory and
/// honest latencies, which another test's attack running beside it would distort.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOPIC: &str = "truffle/v1/store/todos";
const PRESENCE: &str = "truffle/v1/presence";

/// Heartbeats liveness with short presence timings, and the full record of a silent device
/// dropped after 5 s (10 × the timeout) instead of 60 s, so that a replay "after the forget
/// window" fits a test. The replay below goes through the join exchange (a sync request on
/// a new subscription) and heartbeats flooded every period, which are heartbeats liveness's
/// paths; the tombstones it checks are the same under watch (`proto::membership` tests).
fn quick(b: MeshNodeBuilder) -> MeshNodeBuilder {
    b.liveness(Liveness::Heartbeats)
        .presence_interval(Duration::from_millis(100))
        .presence_timeout(Duration::from_millis(500))
        .test_forget_after(Duration::from_secs(1))
}

/// Reads the spy's messages, calling `write` between reads, until a slice of each device
/// in `of` went by; returns one of each, in the order of `of`. Heartbeats seen meanwhile
/// go to `presences`.
async fn capture(
    spy: &mut rogue::Rogue,
    of: &[DeviceId],
    presences: &mut Vec<Vec<u8>>,
    write: impl Fn(),
) -> Vec<Vec<u8>> {
    let mut got: Vec<Option<Vec<u8>>> = vec![None; of.len()];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while got.iter().any(Option::is_none) {
        assert!(tokio::time::Instant::now() < deadline, "nothing captured");
        write();
        let next = tokio::time::timeout(Duration::from_millis(300), spy.seen.recv()).await;
        if let Ok(Some(rogue::Seen::Message(topic, data))) = next {
            if topic == PRESENCE {
                presences.push(data);
                continue;
            }
            let Some(dev) = envelope_device(&data) else {
                continue;
            };
            if topic != TOPIC {
                continue;
            }
            for (i, d) in of.iter().enumerate() {
                if dev == d.to_string() {
                    got[i] = Some(data.clone());
                }
            }
        }
    }
    got.into_iter().map(Option::unwrap).collect()
}

/// Resurrection (issue 12): a device that left, and one that crashed, are forgotten by an
/// honest node after its forget window; a rogue then replays their captured slices (as
/// the answer to the honest node's sync request, the path no gossip duplicate cache
/// guards) and their heartbeats. Before, each came back on the honest node for about a
/// presence timeout, at every replay. Now a tombstone of what was last seen of each keeps
/// them out, while a genuine restart of the one that left is admitted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_device_stays_gone_when_its_old_messages_are_replayed() {
    let _one = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let honest = quick(builder("honest")).start().await.unwrap();
    let addr = honest.listen_addrs()[0].clone();
    let writer = quick(builder("writer"))
        .bootstrap(addr.clone())
        .start()
        .await
        .unwrap();
    let leaver_key = truffle_actors::identity::Keypair::generate_ed25519();
    let leaver = quick(builder("leaver"))
        .keypair(leaver_key.clone())
        .bootstrap(addr.clone())
        .start()
        .await
        .unwrap();
    let crasher = quick(builder("crasher"))
        .bootstrap(addr.clone())
        .start()
        .await
        .unwrap();
    let h = honest.store::<Todos>().await.unwrap();
    let w = writer.store::<Todos>().await.unwrap();
    let l = leaver.store::<Todos>().await.unwrap();
    let c = crasher.store::<Todos>().await.unwrap();
    let (lid, cid, wid) = (leaver.device_id(), crasher.device_id(), writer.device_id());
    let mut spy = rogue::start(std::slice::from_ref(&addr), &[TOPIC, PRESENCE]).await;

    // The spy captures one slice of each while they are members, and heartbeats.
    let mut presences: Vec<Vec<u8>> = Vec::new();
    let captured = capture(&mut spy, &[lid, cid], &mut presences, || {
        let (l, c) = (l.clone(), c.clone());
        tokio::spawn(async move {
            let _ = l.update(|t| t.items.push("mine".into())).await;
            let _ = c.update(|t| t.items.push("mine".into())).await;
        });
    })
    .await;
    // Against their versions as they are at each check, not as read once here: an update
    // that `capture` spawned may still be under way when they are read, and the honest
    // node then ends at a version the reading never saw (seen once in CI: it held 3 of
    // each and waited out the deadline).
    let (lnow, cnow) = (l.clone(), c.clone());
    eventually(
        "the honest node holds both departing devices' slices",
        &h,
        move |s| {
            s.get(&lid)
                .is_some_and(|x| x.version == lnow.local().version)
                && s.get(&cid)
                    .is_some_and(|x| x.version == cnow.local().version)
        },
    )
    .await;

    // One leaves, one crashes; the honest node removes both, then forgets them.
    leaver.shutdown().await.unwrap();
    drop(crasher);
    drop((l, c));
    eventually("both removed", &h, |s| {
        s.get(&lid).is_none() && s.get(&cid).is_none()
    })
    .await;
    let forgotten = Instant::now();
    eventually_metrics("both forgotten (only tombstones left)", &honest, |m| {
        m.tombstones >= 2
    })
    .await;
    eprintln!("forgotten {:?} after removal", forgotten.elapsed());

    // The replay: a rogue that answers every sync request with the captured slices joins
    // the store, so the honest node fetches the whole store from it; and the captured
    // heartbeats again, on the presence topic.
    while let Ok(seen) = spy.seen.try_recv() {
        if let rogue::Seen::Message(topic, data) = seen {
            if topic == PRESENCE {
                presences.push(data);
            }
        }
    }
    let mut events = h.subscribe();
    let before = honest.metrics();
    let replay = rogue::start(std::slice::from_ref(&addr), &[PRESENCE]).await;
    replay
        .cmds
        .send(rogue::Cmd::AnswerWith(captured.clone()))
        .unwrap();
    replay
        .cmds
        .send(rogue::Cmd::Subscribe(TOPIC.into()))
        .unwrap();
    for p in &presences {
        replay
            .cmds
            .send(rogue::Cmd::Publish(PRESENCE.into(), p.clone()))
            .unwrap();
    }
    let m = eventually_metrics("the replayed slices were handled", &honest, |m| {
        m.rejected(RejectReason::AfterLeave) > before.rejected(RejectReason::AfterLeave)
            && m.stale() > before.stale()
    })
    .await;
    eprintln!(
        "replay of {} slices and {} heartbeats: after_leave {} -> {}, stale {} -> {}",
        captured.len(),
        presences.len(),
        before.rejected(RejectReason::AfterLeave),
        m.rejected(RejectReason::AfterLeave),
        before.stale(),
        m.stale()
    );

    // A barrier: an honest write after the replay. Everything the replay could have
    // caused on the honest node's store comes before it.
    let marker = w
        .update(|t| t.items = vec!["after the replay".into()])
        .await
        .unwrap();
    let mut resurrected = Vec::new();
    next_event(
        "the honest write after the replay",
        &mut events,
        |ev| match ev {
            StoreEvent::RemoteUpdated { slice }
                if slice.device_id == wid && slice.version == marker.version =>
            {
                Some(())
            }
            StoreEvent::RemoteUpdated { slice } if slice.device_id != wid => {
                resurrected.push((slice.device_id, Instant::now()));
                None
            }
            _ => None,
        },
    )
    .await;
    if !resurrected.is_empty() {
        // How long they stayed (the figure before tombstones).
        let at = resurrected[0].1;
        let mut left = resurrected.len();
        next_event(
            "the resurrected devices removed again",
            &mut events,
            |ev| match ev {
                StoreEvent::RemoteRemoved { .. } => {
                    left -= 1;
                    (left == 0).then_some(())
                }
                _ => None,
            },
        )
        .await;
        panic!("came back: {resurrected:?}, for about {:?}", at.elapsed());
    }
    assert!(h.get(&lid).is_none() && h.get(&cid).is_none());
    assert_eq!(
        honest.metrics().peers_online,
        1,
        "only the writer is online"
    );

    // A genuine restart of the device that left (a new run: a higher incarnation) is
    // welcome at once.
    let restarted_at = Instant::now();
    let back = quick(builder("leaver again"))
        .keypair(leaver_key)
        .bootstrap(addr.clone())
        .start()
        .await
        .unwrap();
    let b = back.store::<Todos>().await.unwrap();
    b.update(|t| t.items = vec!["back".into()]).await.unwrap();
    eventually("the restarted device is back", &h, |s| {
        s.get(&lid).is_some_and(|x| x.data.items == ["back"])
    })
    .await;
    eprintln!(
        "a restart of the device that left was admitted {:?} after it started",
        restarted_at.elapsed()
    );
    for n in [back, writer, honest] {
        n.shutdown().await.unwrap();
    }
}

/// Latencies of one device's updates as seen on a store: `sent` maps a version counter to
/// when it was written; the task ends at the update whose items are `["last"]`.
fn latencies<T>(
    store: &Store<T>,
    of: DeviceId,
    sent: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>>,
    is_last: impl Fn(&T) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<Vec<Duration>>
where
    T: Clone + Send + Sync + 'static,
{
    let mut events = store.subscribe();
    tokio::spawn(async move {
        let mut lat = Vec::new();
        while let Some(ev) = events.recv().await {
            if let StoreEvent::RemoteUpdated { slice } = ev {
                if slice.device_id == of {
                    if let Some(t) = sent.lock().unwrap().get(&slice.version.counter) {
                        lat.push(t.elapsed());
                    }
                    if is_last(&slice.data) {
                        break;
                    }
                }
            }
        }
        lat.sort();
        lat
    })
}

/// The `q` quantile of sorted latencies.
fn quantile(lat: &[Duration], q: f64) -> Duration {
    lat[((lat.len() - 1) as f64 * q) as usize]
}

/// Writes to `w` every 50 ms for `dur`, then a last write of `["last"]`, recording when
/// each version was written.
async fn write_every_50ms(
    w: &Store<Todos>,
    dur: Duration,
    sent: &std::sync::Mutex<std::collections::HashMap<u64, Instant>>,
) -> usize {
    write_every(Duration::from_millis(50), w, dur, sent).await
}

/// Writes to `w` every `period` for `dur`, then a last write of `["last"]`, recording when
/// each version was written; returns the number of writes.
async fn write_every(
    period: Duration,
    w: &Store<Todos>,
    dur: Duration,
    sent: &std::sync::Mutex<std::collections::HashMap<u64, Instant>>,
) -> usize {
    let end = tokio::time::Instant::now() + dur;
    let mut writes = 0;
    loop {
        let last = tokio::time::Instant::now() >= end;
        let next = w.local().version.counter + 1;
        sent.lock().unwrap().insert(next, Instant::now());
        w.update(move |t| {
            t.items = vec![if last {
                "last".into()
            } else {
                format!("write {next}")
            }]
        })
        .await
        .unwrap();
        writes += 1;
        if last {
            return writes;
        }
        tokio::time::sleep(period).await;
    }
}

/// The rogue's own slices: versions `1..=n` of its slice in `todos`, each 64 bytes of data.
fn own_slices(key: &truffle_actors::identity::Keypair, n: u64) -> Vec<Vec<u8>> {
    let store = StoreId::new("todos").unwrap();
    let me = DeviceId::from(key.public().to_peer_id());
    (1..=n)
        .map(|c| {
            let t = Todos {
                items: vec![format!("{c:0>56}")],
            };
            truffle_actors::testing::signed_slice(key, &store, me, Version::new(1, c), &t)
        })
        .collect()
}

/// A rogue member connected to `node`: the rogue, its device id, the version its
/// heartbeats announce (settable), and the handle that keeps them going (see
/// [`keep_alive`]).
async fn member_rogue(
    node: &MeshNode,
) -> (
    rogue::Rogue,
    DeviceId,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    tokio::sync::oneshot::Sender<()>,
) {
    let rogue = rogue::start(&[node.listen_addrs()[0].clone()], &[TOPIC, PRESENCE]).await;
    let rid = DeviceId::from(rogue.key.public().to_peer_id());
    let latest = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let alive = keep_alive(rogue.cmds.clone(), rogue.key.clone(), latest.clone());
    (rogue, rid, latest, alive)
}

/// Keeps the rogue a live member: a heartbeat every 300 ms announcing version `latest` of
/// its slice, until the returned sender is dropped.
fn keep_alive(
    cmds: tokio::sync::mpsc::UnboundedSender<rogue::Cmd>,
    key: truffle_actors::identity::Keypair,
    latest: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let store = StoreId::new("todos").unwrap();
        for seq in 1.. {
            let v = latest.load(std::sync::atomic::Ordering::Relaxed);
            let p = truffle_actors::testing::signed_presence(
                &key,
                1,
                seq,
                &[(&store, Version::new(1, v))],
            );
            if cmds.send(rogue::Cmd::Publish(PRESENCE.into(), p)).is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = &mut stopped => return,
            }
        }
    });
    stop
}

/// A member floods its own slice with new versions, 11,000 a second of 64 bytes (the
/// issue's attack), while an honest writer writes every 50 ms. Before, every version was
/// verified, applied and relayed mesh-wide. Now each node relays at most a burst of 8 and
/// then 50 a second of one device's slice in one store (the gossip rate): the flooder's
/// neighbour still uses every version it gets straight from it, but forwards only those,
/// and the nodes behind it decline any more relayed copies unverified. Honest updates
/// keep their latency, and once the flood stops every node, also the one not connected to
/// the flooder, holds its last version (slices are last-write-wins, and the digests fetch
/// the newest).
///
/// `TRUFFLE_GOSSIP_RATE_OFF=1` runs the same attack with the rate off (the stale check
/// only), for the before figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_its_own_slice_is_relayed_at_its_rate_and_its_last_version_arrives() {
    flood_own_slice(Liveness::Heartbeats).await;
}

/// The same with watch liveness, where heartbeats go out only on a change and views are
/// compared with one random peer a second: the flooder's last version still reaches the
/// node it is not connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_liveness_a_flooding_members_last_version_arrives_too() {
    flood_own_slice(Liveness::Watch).await;
}

async fn flood_own_slice(liveness: Liveness) {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, Mutex};

    let _one = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let rate_off = std::env::var("TRUFFLE_GOSSIP_RATE_OFF").is_ok_and(|v| v == "1");
    let each = |b: MeshNodeBuilder| {
        let b = b.liveness(liveness);
        match rate_off {
            true => b.gossip_rate(Duration::ZERO, 1),
            false => b,
        }
    };
    let ([writer, o1, o2], [w, s1, s2], o2_thread) = three_nodes(each).await;
    let wid = writer.device_id();
    let (mut rogue, rid, latest, alive) = member_rogue(&o1).await;
    let w0 = w.update(|t| t.items = vec!["hello".into()]).await.unwrap();
    for s in [&s1, &s2] {
        eventually("the writer's first write arrives", s, |s| {
            s.get(&wid).is_some_and(|x| x.version == w0.version)
        })
        .await;
    }

    // Honest latency before the attack.
    let sent: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    let is_last = |t: &Todos| t.items == ["last"];
    let lat = latencies(&s2, wid, sent.clone(), is_last);
    write_every_50ms(&w, Duration::from_secs(2), &sent).await;
    let base = tokio::time::timeout(DEADLINE, lat).await.unwrap().unwrap();
    let base_p99 = quantile(&base, 0.99);

    // The flood, and the honest writer meanwhile.
    const SECS: u64 = 2;
    const PER_SEC: u64 = 11_000;
    let n = SECS * PER_SEC;
    let flood = own_slices(&rogue.key, n);
    let last = flood.last().unwrap().clone();
    let rss_before = rogue::rss().unwrap();
    let before = (o1.metrics(), o2.metrics());
    let (o2_cpu0, flood_t0) = (o2_thread.cpu(), Instant::now());
    sent.lock().unwrap().clear();
    let lat1 = latencies(&s1, wid, sent.clone(), is_last);
    let lat2 = latencies(&s2, wid, sent.clone(), is_last);
    rogue
        .cmds
        .send(rogue::Cmd::FloodWith(
            TOPIC.into(),
            flood,
            Duration::from_secs(SECS),
        ))
        .unwrap();
    let writes = write_every_50ms(&w, Duration::from_secs(SECS), &sent).await;
    let published = rogue.flooded().await;
    // From now on its heartbeats announce its last version, and it hands that out when
    // asked, as a real member does.
    rogue.cmds.send(rogue::Cmd::AnswerWith(vec![last])).unwrap();
    latest.store(n, Relaxed);
    let lat1 = tokio::time::timeout(DEADLINE, lat1).await.unwrap().unwrap();
    let lat2 = tokio::time::timeout(DEADLINE, lat2).await.unwrap().unwrap();
    let o2_core = core_share(&o2_thread, o2_cpu0, flood_t0.elapsed());

    // Every node ends up with the flooder's last version.
    for (what, s) in [("o1", &s1), ("o2 (not connected to the rogue)", &s2)] {
        eventually(
            &format!("{what} holds the flooder's last version"),
            s,
            |s| s.get(&rid).is_some_and(|x| x.version == Version::new(1, n)),
        )
        .await;
    }
    let rss_after = rogue::rss().unwrap();
    let after = (o1.metrics(), o2.metrics());
    // Slices applied besides the writer's own updates: the flooder's.
    let applied = (
        (after.0.applied - before.0.applied).saturating_sub(writes as u64),
        (after.1.applied - before.1.applied).saturating_sub(writes as u64),
    );
    let verified =
        |b: &truffle_actors::Metrics, a: &truffle_actors::Metrics| a.delivered - b.delivered;
    eprintln!(
        "{liveness:?}: flood of {published} own-slice versions in {SECS} s (rate {}): o1 did not forward {}, \
         o2 received {} slices, applied o1 {} o2 {}; writer's {writes} updates at o2: p50 {:?} \
         p99 {:?} (before the flood p99 {:?}), at o1 p99 {:?}; process RSS {} MB -> {} MB; o2 \
         {:.1} % of a core",
        if rate_off { "off" } else { "default" },
        after.0.gossip_over_rate - before.0.gossip_over_rate,
        verified(&before.1, &after.1),
        applied.0,
        applied.1,
        quantile(&lat2, 0.5),
        quantile(&lat2, 0.99),
        base_p99,
        quantile(&lat1, 0.99),
        rss_before >> 20,
        rss_after >> 20,
        100.0 * o2_core,
    );
    // A quarter of the versions asked for: under two busy loops the in-process rogue
    // published 10,194 of 22,000 in its 2 s. 2,750 a second is still 55 times the gossip
    // rate.
    assert!(
        published as u64 >= n / 4,
        "the flood was too weak to mean anything: {published}"
    );
    assert!(lat2.len() * 2 > writes, "most honest updates were applied");
    if !rate_off {
        // A burst of 8, then 50 a second, over the flood's 2 s (and a little more while
        // gossipsub drains): far from the 22,000 signed.
        let cap = 8 + 50 * (SECS + 2);
        assert!(applied.1 <= cap, "o2 applied {} versions", applied.1);
        let held_back = after.0.gossip_over_rate - before.0.gossip_over_rate;
        assert!(
            held_back + cap >= published as u64,
            "o1 forwarded {} of {published}",
            published as u64 - held_back
        );
        for (lat, at) in [(&lat1, "o1"), (&lat2, "o2")] {
            let p99 = quantile(lat, 0.99);
            assert!(
                p99 <= (base_p99 * 5).max(base_p99 + Duration::from_millis(100)),
                "honest p99 at {at}: {p99:?} (before the flood {base_p99:?})"
            );
        }
        assert!(
            rss_after.saturating_sub(rss_before) < 64 << 20,
            "RSS grew by {} MB",
            (rss_after - rss_before) >> 20
        );
        assert!(
            o2_core < 0.10,
            "o2, not connected to the flooder, used {:.1} % of a core",
            100.0 * o2_core
        );
    }
    drop(alive);
    for n in [writer, o1, o2] {
        n.shutdown().await.unwrap();
    }
}

/// A hand-written store whose change notification takes 2 ms (an application doing real
/// work on every change).
struct SlowStore(SliceStore<Todos>);

impl SyncableStore for SlowStore {
    type Data = Todos;

    fn store_id(&self) -> StoreId {
        self.0.store_id()
    }

    fn init(
        &mut self,
        device: DeviceId,
        version: Version,
        at: u64,
    ) -> std::sync::Arc<DeviceSlice<Todos>> {
        self.0.init(device, version, at)
    }

    fn local_slice(&self) -> Option<std::sync::Arc<DeviceSlice<Todos>>> {
        self.0.local_slice()
    }

    fn set_local_slice(&mut self, slice: std::sync::Arc<DeviceSlice<Todos>>) {
        self.0.set_local_slice(slice)
    }

    fn apply_remote_slice(&mut self, slice: std::sync::Arc<DeviceSlice<Todos>>) -> bool {
        self.0.apply_remote_slice(slice)
    }

    fn remove_remote_slice(
        &mut self,
        device: &DeviceId,
        reason: RemovalReason,
    ) -> Option<std::sync::Arc<DeviceSlice<Todos>>> {
        self.0.remove_remote_slice(device, reason)
    }

    fn clear_remote_slices(&mut self) {
        self.0.clear_remote_slices()
    }

    fn remote_slices(
        &self,
    ) -> std::collections::BTreeMap<DeviceId, std::sync::Arc<DeviceSlice<Todos>>> {
        self.0.remote_slices()
    }

    fn on_event(&mut self, _: &StoreEvent<Todos>) {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The most an honest update may wait (p99) in the flood-backlog tests below. A bounded
/// backlog, not a speed target: before, the updates waited tens of seconds. The p99 was
/// 226-289 ms beside one busy loop, and 1.25 s once in a CI rehearsal with a stray busy
/// loop (2026-12-03), so the bound leaves room for a loaded machine.
const BACKLOG_P99_BOUND: Duration = Duration::from_secs(3);

/// A store whose `on_event` takes 2 ms, on a node a member floods with 11,000 new versions
/// of its slice a second (the node's gossip rate turned off, so that every version
/// reaches the store). Before, every version queued in the store actor's unbounded
/// mailbox: the honest writer's updates waited behind a backlog of tens of seconds, which
/// had not drained 30 s after the flood. Now the store's inbox keeps one slot per device
/// (the newest slice): the backlog is bounded, honest updates keep arriving, the flooder's
/// last version is there right after the flood, and another store on the node is not
/// slowed at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_under_a_flood_keeps_a_bounded_backlog_that_drains() {
    use std::sync::{Arc, Mutex};

    let _one = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let writer = builder("writer").start().await.unwrap();
    let slow_node = builder("slow")
        .bootstrap(writer.listen_addrs()[0].clone())
        .gossip_rate(Duration::ZERO, 1)
        .start()
        .await
        .unwrap();
    let w = writer.store::<Todos>().await.unwrap();
    let ws = writer.store::<Status>().await.unwrap();
    let slow = slow_node
        .join(SlowStore(SliceStore::new().unwrap()))
        .await
        .unwrap();
    let fast = slow_node.store::<Status>().await.unwrap();
    let wid = writer.device_id();
    let (mut rogue, rid, latest, alive) = member_rogue(&slow_node).await;
    let w0 = w.update(|t| t.items = vec!["hello".into()]).await.unwrap();
    eventually("the writer's first write arrives", &slow, |s| {
        s.get(&wid).is_some_and(|x| x.version == w0.version)
    })
    .await;

    const SECS: u64 = 2;
    let n = SECS * 11_000;
    let flood = own_slices(&rogue.key, n);
    let last = flood.last().unwrap().clone();
    let rss_before = rogue::rss().unwrap();
    let before = slow_node.metrics();
    let sent: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    let lat = latencies(&slow, wid, sent.clone(), |t: &Todos| t.items == ["last"]);
    // The other store on the node: the writer's status, written at the same pace.
    let sent_fast: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    let lat_fast = latencies(&fast, wid, sent_fast.clone(), |s: &Status| s.text == "last");
    rogue
        .cmds
        .send(rogue::Cmd::FloodWith(
            TOPIC.into(),
            flood,
            Duration::from_secs(SECS),
        ))
        .unwrap();
    let status_writer = {
        let (ws, sent_fast) = (ws.clone(), sent_fast.clone());
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(SECS);
            loop {
                let last = tokio::time::Instant::now() >= end;
                let next = ws.local().version.counter + 1;
                sent_fast.lock().unwrap().insert(next, Instant::now());
                ws.update(move |s| {
                    s.text = if last {
                        "last".into()
                    } else {
                        format!("{next}")
                    }
                })
                .await
                .unwrap();
                if last {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let writes = write_every_50ms(&w, Duration::from_secs(SECS), &sent).await;
    status_writer.await.unwrap();
    let published = rogue.flooded().await;
    let flood_end = Instant::now();
    // Its heartbeats announce its last version from now on, and it hands that out when
    // asked: a message of the flood may be lost on the way, as any gossip may.
    rogue.cmds.send(rogue::Cmd::AnswerWith(vec![last])).unwrap();
    latest.store(n, std::sync::atomic::Ordering::Relaxed);
    let lat = tokio::time::timeout(DEADLINE, lat).await.unwrap().unwrap();
    let lat_fast = tokio::time::timeout(DEADLINE, lat_fast)
        .await
        .unwrap()
        .unwrap();
    eventually(
        "the slow store holds the flooder's last version",
        &slow,
        |s| s.get(&rid).is_some_and(|x| x.version == Version::new(1, n)),
    )
    .await;
    let drained = flood_end.elapsed();
    let rss_after = rogue::rss().unwrap();
    let m = slow_node.metrics();
    eprintln!(
        "flood of {published} versions in {SECS} s at a store with a 2 ms on_event: applied {}, \
         coalesced {}; writer's {writes} updates at the slow store p50 {:?} p99 {:?}, at the \
         node's other store p99 {:?}; flooder's last version held {drained:?} after the flood \
         ended; process RSS {} MB -> {} MB",
        m.applied - before.applied,
        m.store_coalesced - before.store_coalesced,
        quantile(&lat, 0.5),
        quantile(&lat, 0.99),
        quantile(&lat_fast, 0.99),
        rss_before >> 20,
        rss_after >> 20,
    );
    // The rogue shares this process: on a loaded machine (a fuzzer and two busy loops) it
    // published only 8,926 to 10,694 of its 22,000 versions. A tenth is still over twice
    // what a 2 ms `on_event` can take in the 2 s (the store applied about 700).
    assert!(
        published as u64 >= n / 10,
        "the flood was too weak: {published}"
    );
    assert!(
        m.store_coalesced > before.store_coalesced,
        "nothing was coalesced"
    );
    assert!(lat.len() * 2 > writes, "most honest updates were applied");
    assert!(
        quantile(&lat, 0.99) < BACKLOG_P99_BOUND,
        "{:?}",
        quantile(&lat, 0.99)
    );
    assert!(
        quantile(&lat_fast, 0.99) < BACKLOG_P99_BOUND,
        "{:?}",
        quantile(&lat_fast, 0.99)
    );
    assert!(
        drained < Duration::from_secs(5),
        "backlog drained after {drained:?}"
    );
    // No bound on RSS here: with the gossip rate off, gossipsub's caches of the forwarded
    // flood (on both nodes and the rogue, all in this process) dominate; the flood test
    // above bounds it with the rate on.
    drop(alive);
    for n in [writer, slow_node] {
        n.shutdown().await.unwrap();
    }
}

/// A member floods a node with 11,000 new versions of its slice a second (the node's gossip
/// rate turned off, so that every version reaches its protocol core) while that core is
/// slow: the gossip actor waits 1 ms per network event it takes (a test hook), so it keeps
/// up with about 1,000 a second. Before, every event queued in the actor's unbounded
/// mailbox: a backlog of about 20 s. Now the actor's inbox keeps one slot per device (the
/// newest slice, the newest heartbeat): the backlog stays a few entries long, the honest
/// writer's updates keep arriving, and the flooder's last version arrives right after
/// the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_protocol_core_under_a_flood_keeps_a_bounded_backlog_that_drains() {
    use std::sync::{Arc, Mutex};

    let _one = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let writer = builder("writer").start().await.unwrap();
    let node = builder("slow-core")
        .bootstrap(writer.listen_addrs()[0].clone())
        .gossip_rate(Duration::ZERO, 1)
        .start()
        .await
        .unwrap();
    let w = writer.store::<Todos>().await.unwrap();
    let s = node.store::<Todos>().await.unwrap();
    let wid = writer.device_id();
    let (mut rogue, rid, latest, alive) = member_rogue(&node).await;
    let w0 = w.update(|t| t.items = vec!["hello".into()]).await.unwrap();
    eventually("the writer's first write arrives", &s, |s| {
        s.get(&wid).is_some_and(|x| x.version == w0.version)
    })
    .await;

    const SECS: u64 = 2;
    let n = SECS * 11_000;
    let flood = own_slices(&rogue.key, n);
    let last = flood.last().unwrap().clone();
    let rss_before = rogue::rss().unwrap();
    let before = node.metrics();
    node.test_slow_engine(Duration::from_millis(1));
    let sent: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    let lat = latencies(&s, wid, sent.clone(), |t: &Todos| t.items == ["last"]);
    rogue
        .cmds
        .send(rogue::Cmd::FloodWith(
            TOPIC.into(),
            flood,
            Duration::from_secs(SECS),
        ))
        .unwrap();
    let writes = write_every_50ms(&w, Duration::from_secs(SECS), &sent).await;
    let published = rogue.flooded().await;
    let flood_end = Instant::now();
    rogue.cmds.send(rogue::Cmd::AnswerWith(vec![last])).unwrap();
    latest.store(n, std::sync::atomic::Ordering::Relaxed);
    let lat = tokio::time::timeout(DEADLINE, lat).await.unwrap().unwrap();
    eventually("the node holds the flooder's last version", &s, |s| {
        s.get(&rid).is_some_and(|x| x.version == Version::new(1, n))
    })
    .await;
    let drained = flood_end.elapsed();
    let rss_after = rogue::rss().unwrap();
    let m = node.metrics();
    eprintln!(
        "flood of {published} versions in {SECS} s at a node whose core takes 1 ms per \
         event: {} events coalesced in its inbox, {} slices applied; writer's {writes} \
         updates p50 {:?} p99 {:?}; flooder's last version held {drained:?} after the flood \
         ended; process RSS {} MB -> {} MB",
        m.inputs_coalesced - before.inputs_coalesced,
        m.applied - before.applied,
        quantile(&lat, 0.5),
        quantile(&lat, 0.99),
        rss_before >> 20,
        rss_after >> 20,
    );
    // The rogue shares this process; on a loaded machine it publishes less. A tenth is
    // still more than the slowed core could take one by one in the 2 s.
    assert!(
        published as u64 >= n / 10,
        "the flood was too weak: {published}"
    );
    assert!(
        m.inputs_coalesced - before.inputs_coalesced >= published as u64 / 4,
        "little was coalesced: {}",
        m.inputs_coalesced - before.inputs_coalesced
    );
    assert!(lat.len() * 2 > writes, "most honest updates were applied");
    assert!(
        quantile(&lat, 0.99) < BACKLOG_P99_BOUND,
        "{:?}",
        quantile(&lat, 0.99)
    );
    assert!(
        drained < Duration::from_secs(5),
        "backlog drained after {drained:?}"
    );
    node.test_slow_engine(Duration::ZERO);
    drop(alive);
    for n in [writer, node] {
        n.shutdown().await.unwrap();
    }
}

/// A writer W, O1 and O2 (connected to W and O1), each built by `each` from the test
/// defaults, each joined to the store. O2 runs on a thread of its own, so that its CPU
/// time can be told from the rest of the process (it is never connected to an attacker).
async fn three_nodes(
    each: impl Fn(MeshNodeBuilder) -> MeshNodeBuilder,
) -> ([MeshNode; 3], [Store<Todos>; 3], rogue::OwnThread) {
    let writer = each(builder("writer")).start().await.unwrap();
    let o1 = each(builder("o1"))
        .bootstrap(writer.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    let (o2, s2, o2_thread) = rogue::OwnThread::start::<Todos>(
        each(builder("o2"))
            .bootstrap(writer.listen_addrs()[0].clone())
            .bootstrap(o1.listen_addrs()[0].clone()),
    )
    .await;
    let w = writer.store::<Todos>().await.unwrap();
    let s1 = o1.store::<Todos>().await.unwrap();
    ([writer, o1, o2], [w, s1, s2], o2_thread)
}

/// The share of a core `thread` used since `since` (its CPU time then), over `wall`.
fn core_share(thread: &rogue::OwnThread, since: Duration, wall: Duration) -> f64 {
    (thread.cpu() - since).as_secs_f64() / wall.as_secs_f64()
}

/// Three honest nodes for the identity attacks: a writer W, O1 (which the attacker
/// connects to) and O2 (connected to W and O1 only), all at default settings, with W's
/// first write held everywhere; then W's latency at O1 and O2 over 2 s of writes every
/// 50 ms, before any attack.
async fn honest_three() -> (
    [MeshNode; 3],
    [Store<Todos>; 3],
    (Duration, Duration),
    rogue::OwnThread,
) {
    let ([writer, o1, o2], [w, s1, s2], o2_thread) = three_nodes(|b| b).await;
    let wid = writer.device_id();
    let w0 = w.update(|t| t.items = vec!["hello".into()]).await.unwrap();
    for s in [&s1, &s2] {
        eventually("the writer's first write arrives", s, |s| {
            s.get(&wid).is_some_and(|x| x.version == w0.version)
        })
        .await;
    }
    let sent: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>> =
        Default::default();
    let is_last = |t: &Todos| t.items == ["last"];
    let lat1 = latencies(&s1, wid, sent.clone(), is_last);
    let lat2 = latencies(&s2, wid, sent.clone(), is_last);
    write_every_50ms(&w, Duration::from_secs(2), &sent).await;
    let base1 = tokio::time::timeout(DEADLINE, lat1).await.unwrap().unwrap();
    let base2 = tokio::time::timeout(DEADLINE, lat2).await.unwrap().unwrap();
    (
        [writer, o1, o2],
        [w, s1, s2],
        (quantile(&base1, 0.99), quantile(&base2, 0.99)),
        o2_thread,
    )
}

/// What an attack did to the honest writer's updates at O1 and O2, and to the process.
struct Figures {
    writes: usize,
    lat: [Vec<Duration>; 2],
    base_p99: (Duration, Duration),
    rss: (u64, u64),
    cpu: Duration,
    wall: Duration,
    /// O2's share of a core (its own thread), never connected to the attacker.
    o2_core: f64,
}

impl Figures {
    fn print(&self, what: &str) {
        eprintln!(
            "{what}: W's {} updates: at o1 {} applied, p50 {:?} p99 {:?} max {:?} (before the \
             attack p99 {:?}); at o2 {} applied, p50 {:?} p99 {:?} max {:?} (before {:?}); \
             process RSS {} MB -> {} MB; process CPU {:.0} % of a core over {:?}; o2 {:.1} % \
             of a core",
            self.writes,
            self.lat[0].len(),
            quantile(&self.lat[0], 0.5),
            quantile(&self.lat[0], 0.99),
            self.lat[0].last().unwrap(),
            self.base_p99.0,
            self.lat[1].len(),
            quantile(&self.lat[1], 0.5),
            quantile(&self.lat[1], 0.99),
            self.lat[1].last().unwrap(),
            self.base_p99.1,
            self.rss.0 >> 20,
            self.rss.1 >> 20,
            100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64(),
            self.wall,
            100.0 * self.o2_core,
        );
    }

    /// The bounds every identity attack must keep (generous: the figures printed are
    /// what to compare, these only catch a collapse): more than a tenth of W's updates
    /// applied at both nodes (a store applies the newest version it has when it gets to
    /// it: slower, it skips more), its last one included (the latency tasks end at it), a
    /// p99 within 5 times the one before the attack or `slack` more, and less than
    /// `rss_mb` more memory for the whole process (three honest nodes and the attacker's
    /// own state), and O2 (not connected to the attacker) under `o2_max` of a core.
    fn check(&self, slack: Duration, rss_mb: u64, o2_max: f64) {
        for (lat, at, base) in [
            (&self.lat[0], "o1", self.base_p99.0),
            (&self.lat[1], "o2", self.base_p99.1),
        ] {
            assert!(
                lat.len() * 10 > self.writes,
                "{at} applied {} of {}",
                lat.len(),
                self.writes
            );
            let p99 = quantile(lat, 0.99);
            assert!(
                p99 <= (base * 5).max(base + slack),
                "W's p99 at {at}: {p99:?} (before the attack {base:?})"
            );
        }
        assert!(
            self.rss.1.saturating_sub(self.rss.0) < rss_mb << 20,
            "RSS grew by {} MB",
            (self.rss.1 - self.rss.0) >> 20
        );
        assert!(
            self.o2_core < o2_max,
            "o2, not connected to the attacker, used {:.1} % of a core (bound {:.0} %)",
            100.0 * self.o2_core,
            100.0 * o2_max
        );
    }
}

/// Runs `attack` while W writes every 50 ms for `secs`, and measures W's updates at O1
/// and O2.
async fn during<F: std::future::Future<Output = ()>>(
    stores: &[Store<Todos>; 3],
    o2: &rogue::OwnThread,
    wid: DeviceId,
    base_p99: (Duration, Duration),
    secs: u64,
    attack: F,
) -> Figures {
    let sent: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>> =
        Default::default();
    let is_last = |t: &Todos| t.items == ["last"];
    let lat1 = latencies(&stores[1], wid, sent.clone(), is_last);
    let lat2 = latencies(&stores[2], wid, sent.clone(), is_last);
    let (rss0, cpu0, t0) = (rogue::rss().unwrap(), rogue::cpu().unwrap(), Instant::now());
    let o2_cpu0 = o2.cpu();
    let (writes, ()) = tokio::join!(
        write_every_50ms(&stores[0], Duration::from_secs(secs), &sent),
        attack
    );
    let lat1 = tokio::time::timeout(DEADLINE, lat1).await.unwrap().unwrap();
    let lat2 = tokio::time::timeout(DEADLINE, lat2).await.unwrap().unwrap();
    let wall = t0.elapsed();
    Figures {
        writes,
        lat: [lat1, lat2],
        base_p99,
        rss: (rss0, rogue::rss().unwrap()),
        cpu: rogue::cpu().unwrap() - cpu0,
        wall,
        o2_core: core_share(o2, o2_cpu0, wall),
    }
}

/// 10,000 minted identities, each with a slice and heartbeats (issue 12), sent by one
/// peer to O1 in an open mesh. Before, O1 and O2 (which the attacker is not connected
/// to) tracked all of them and showed them in the store, W's updates at O1 had a p99 of
/// 7.8 s with half of them missed, and every store event copied the whole map of remote
/// slices. Now a node admits new devices at a bounded rate per neighbour (256, then 64 a
/// second), ignores the messages of the others before their signature check (not
/// forwarded: O2 hears only of those O1 admitted), snapshots share structure, and the
/// fetches that the admitted identities' heartbeats raise are batched per relay.
///
/// `TRUFFLE_MINTED` sets the number of identities (default 10,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_identities_are_admitted_at_a_bounded_rate_and_honest_updates_keep_arriving() {
    let _one = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let (nodes, stores, base_p99, o2_thread) = honest_three().await;
    let [writer, o1, o2] = &nodes;
    let wid = writer.device_id();

    // The attacker's identities, each announcing a slice in `todos`, a slice, and three
    // more heartbeats, one round a second.
    let minted: usize = std::env::var("TRUFFLE_MINTED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    const ROUNDS: u64 = 4;
    let store = StoreId::new("todos").unwrap();
    let keys: Vec<truffle_actors::identity::Keypair> = (0..minted)
        .map(|_| truffle_actors::identity::Keypair::generate_ed25519())
        .collect();
    let rounds: Vec<Vec<(String, Vec<u8>)>> = (1..=ROUNDS)
        .map(|seq| {
            let mut msgs = Vec::new();
            for k in &keys {
                let digest = [(&store, Version::new(1, 1))];
                let p = truffle_actors::testing::signed_presence(k, 1, seq, &digest);
                msgs.push((PRESENCE.to_string(), p));
                if seq == 1 {
                    let me = DeviceId::from(k.public().to_peer_id());
                    let t = Todos {
                        items: vec!["minted".into()],
                    };
                    let raw = truffle_actors::testing::signed_slice(
                        k,
                        &store,
                        me,
                        Version::new(1, 1),
                        &t,
                    );
                    msgs.push((TOPIC.to_string(), raw));
                }
            }
            msgs
        })
        .collect();
    let total: usize = rounds.iter().map(Vec::len).sum();
    let mut rogue = rogue::start(&[o1.listen_addrs()[0].clone()], &[TOPIC, PRESENCE]).await;
    until("o1 connected to the attacker", DEADLINE, || {
        o1.metrics().connected_peers == 3
    })
    .await;
    let before = o1.metrics();

    let started = Instant::now();
    let mut published = 0;
    // The largest number of devices each honest node tracks (online) and shows (in the
    // store), sampled every 50 ms while the attack lasts.
    let mut peak_of = [0usize; 4];
    let done = std::sync::atomic::AtomicBool::new(false);
    let flood = async {
        for (i, round) in rounds.into_iter().enumerate() {
            let over = Duration::from_secs(if i == 0 { 2 } else { 1 });
            rogue
                .cmds
                .send(rogue::Cmd::FloodPairs(round, over))
                .unwrap();
            published += rogue.flooded().await as usize;
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let sample = async {
        loop {
            let now = [
                o1.metrics().peers_online as usize,
                o2.metrics().peers_online as usize,
                stores[1].snapshot().len(),
                stores[2].snapshot().len(),
            ];
            for (p, n) in peak_of.iter_mut().zip(now) {
                *p = (*p).max(n);
            }
            if done.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let figures = during(&stores, &o2_thread, wid, base_p99, ROUNDS + 1, async {
        tokio::join!(flood, sample);
    })
    .await;
    let elapsed = started.elapsed();
    let last = [
        o1.metrics().peers_online as usize,
        o2.metrics().peers_online as usize,
        stores[1].snapshot().len(),
        stores[2].snapshot().len(),
    ];
    for (p, n) in peak_of.iter_mut().zip(last) {
        *p = (*p).max(n);
    }
    let after = o1.metrics();
    figures.print(&format!("{minted} minted identities"));
    eprintln!(
        "{minted} minted identities: {published} of {total} messages published in {elapsed:?}; \
         devices online at most: o1 {}, o2 {}; shown in the store at most: o1 {}, o2 {}; o1 \
         refused {} messages of new devices",
        peak_of[0],
        peak_of[1],
        peak_of[2],
        peak_of[3],
        after.devices_refused - before.devices_refused,
    );
    // On a loaded machine the attacker (in this process) publishes less: a tenth will do.
    assert!(
        published * 10 >= total,
        "the attack was too weak: {published} of {total}"
    );
    // The process holds the attacker too: its 50,000 publishes, and the three nodes'
    // gossip caches of them, take about 60 to 80 MB here whatever O1 admits (the same
    // attack before admission: +82 MB with a sixth of the messages getting through).
    // W's p99 may grow 5x or by 250 ms (the issue says 100 ms; idle runs stay within
    // 25 ms, see the Security chapter for runs under load). O2 verifies and relays the
    // heartbeats and slices of the few hundred identities that O1 and W admitted, as it
    // does for any member: 5.8 to 6.1 % of a core in an optimised build (`cargo test
    // --release`, how nodes are deployed), held to the 10 % there; 7.8 to 12.2 %
    // in the debug build that `cargo test` makes (the same machine, idle), held to 20 %
    // there so that a regression still fails.
    let o2_max = if cfg!(debug_assertions) { 0.20 } else { 0.10 };
    figures.check(Duration::from_millis(250), 128, o2_max);
    // Besides W and the other honest node: at most the burst, then 64 a second (with a
    // second of slack), through the one neighbour that brings them in.
    let bound = 2 + 256 + 64 * (elapsed.as_secs() as usize + 1);
    for (i, at) in ["o1 online", "o2 online", "o1's store", "o2's store"]
        .iter()
        .enumerate()
    {
        assert!(
            peak_of[i] <= bound,
            "{at}: {} devices (bound {bound})",
            peak_of[i]
        );
    }
    assert!(
        after.devices_refused > before.devices_refused,
        "o1 refused no new device"
    );
    drop(rogue);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// 50 identities, each subscribing to 10,000 topics and unsubscribing again, round after
/// round (issue 12). Before, gossipsub recorded every subscription and reported each to
/// the protocol core, which kept them all: O1 grew by 270 MB and used 75 % of a core, and
/// half of W's updates were missed. Now gossipsub ignores, whole, a message with more
/// subscriptions than a node may have topics (1,001), and O1's subscription filter keeps
/// only the presence topic, joined stores' topics, and 256 others per peer (for a store
/// joined later), and closes the connection of a peer once 2,002 of its subscriptions
/// were refused. Half the attackers send their 10,000 in one message each time, half in
/// messages of 1,000 (under the cap, so each is judged).
///
/// `TRUFFLE_CHURN_ROUNDS` sets the rounds (default 4, one every second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_churn_of_many_identities_is_kept_bounded_and_honest_updates_keep_arriving() {
    const IDENTITIES: usize = 50;
    const TOPICS: usize = 10_000;
    let _one = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let rounds: usize = std::env::var("TRUFFLE_CHURN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let (nodes, stores, base_p99, o2_thread) = honest_three().await;
    let [writer, o1, _] = &nodes;
    let wid = writer.device_id();
    let mut rogues = Vec::new();
    for _ in 0..IDENTITIES {
        rogues.push(rogue::start(&[o1.listen_addrs()[0].clone()], &[]).await);
    }
    until("o1 connected to every attacker", DEADLINE, || {
        o1.metrics().connected_peers as usize == 2 + IDENTITIES
    })
    .await;
    let o1_id = o1.device_id().peer_id();
    let before = o1.metrics();
    let figures = during(
        &stores,
        &o2_thread,
        wid,
        base_p99,
        rounds as u64 + 1,
        async {
            for (i, r) in rogues.iter().enumerate() {
                let churn = rogue::Churn {
                    prefix: format!("truffle/v1/store/r{i}-"),
                    count: TOPICS,
                    per_frame: if i % 2 == 0 { TOPICS } else { 1_000 },
                    rounds,
                    pause: Duration::from_secs(1),
                };
                r.cmds.send(rogue::Cmd::Churn(o1_id, churn)).unwrap();
            }
        },
    )
    .await;
    // Those sending messages of 1,000: past the 256 kept per peer, each subscription is
    // refused, and a connection is closed once 2,002 of its subscriptions were (in its
    // first round): every such attacker is cut off, and these do not come back. The
    // others' messages are ignored whole; they stay connected, at no cost per topic.
    let cut = IDENTITIES / 2;
    let m = eventually_metrics(
        "every attacker judged per topic was disconnected",
        o1,
        |m| m.connected_peers as usize <= 2 + IDENTITIES - cut,
    )
    .await;
    let refused = m.subscriptions_refused - before.subscriptions_refused;
    let per_connection = 2 * truffle_actors::wire::MAX_TOPICS_PER_PEER;
    assert!(
        refused > (cut * per_connection) as u64,
        "o1 refused only {refused} subscriptions"
    );
    figures.print(&format!(
        "{IDENTITIES} identities x {TOPICS} topics, {rounds} rounds of churn"
    ));
    eprintln!(
        "o1 refused {} subscriptions; {} peers connected",
        refused, m.connected_peers
    );
    // The bound is W's p99 within 5 times the one before the attack, or 100 ms
    // more. It held in 3 of 3 idle runs (23 to 36 ms) and 9 of 10 runs beside two busy
    // loops; the tenth reached 121 ms. So the test allows 250 ms: it catches a collapse,
    // and the printed figure is what to compare with the issue. Judged one by one, the
    // first messages of 50 attackers with 10,000 subscriptions each took O1's swarm task
    // about 4 ms each (330 ms in all), and W's updates to O1 waited behind them (p99 234
    // to 394 ms; before the filter: a p99 of 24 s, most of them never applied, and no end
    // to it while the churn lasted).
    // 50 attackers' swarms live in this process too; run after the file's other tests,
    // the process grew by 64 MB once (+16 to +30 MB alone).
    figures.check(Duration::from_millis(250), 128, 0.10);
    drop(rogues);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// An allow-list (issue 12's optional admission): a node told to admit only W holds W's
/// slice and never that of another member connected to it, whose messages it ignores
/// before their signature check, while a node without the list holds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_allow_list_only_the_devices_on_it_get_in() {
    let _one = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let writer = builder("writer").start().await.unwrap();
    let other = builder("other")
        .bootstrap(writer.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    let guarded = builder("guarded")
        .allow_devices([writer.device_id()])
        .bootstrap(writer.listen_addrs()[0].clone())
        .bootstrap(other.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    let (wid, oid) = (writer.device_id(), other.device_id());
    let w = writer.store::<Todos>().await.unwrap();
    let o = other.store::<Todos>().await.unwrap();
    let g = guarded.store::<Todos>().await.unwrap();
    let ov = o.update(|t| t.items = vec!["other".into()]).await.unwrap();
    // The writer (no list) holds the other member's write: it went out.
    eventually("the writer holds the other member's slice", &w, |s| {
        s.get(&oid).is_some_and(|x| x.version == ov.version)
    })
    .await;
    // A barrier: a write of W's after it. The guarded node takes W's and not the other's.
    let wv = w.update(|t| t.items = vec!["after".into()]).await.unwrap();
    eventually("the guarded node holds W's write", &g, |s| {
        s.get(&wid).is_some_and(|x| x.version == wv.version)
    })
    .await;
    let m = eventually_metrics("the guarded node refused the other member", &guarded, |m| {
        m.devices_refused > 0
    })
    .await;
    assert!(g.get(&oid).is_none(), "the other member got in");
    assert_eq!(m.peers_online, 1, "only W is a member here");
    for n in [guarded, other, writer] {
        n.shutdown().await.unwrap();
    }
}

/// The graylist threshold of gossipsub's peer scoring (its default, which Truffle keeps).
const GRAYLIST: f64 = -80.0;

/// Peer scoring that punishes junk (issue 12): all nodes built with
/// `own_versions_allowance(500)`, and rogues connected to O1, one flooding
/// versions of its own slice far past the gossip rate (11,000 a second), one writing
/// messages on a store topic O1 never joined. Both used to cost nothing but O1's work
/// (the flood was answered `Ignore`, the junk dropped by the transform). Now each message
/// costs its sender points, and past a slack its score: both fall under the graylist
/// threshold within a second or two, after which gossipsub ignores (and prunes) them. A
/// third rogue publishes undecodable messages on the store topic, which were rejected
/// before (gossipsub's invalid-message penalty): the same happens to it.
/// Meanwhile the honest writer W writes every 10 ms, twice the gossip rate, so its own
/// neighbours see it over the rate too, and O1 relays the flooder's versions (at the
/// rate) to W and O2: no honest peer's score ever drops below 0 on any node, no honest
/// node graylists anyone, and W's updates keep arriving at O1 and O2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_sending_junk_are_graylisted_within_seconds_and_honest_peers_keep_their_score() {
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Mutex};

    let _one = ONE_AT_A_TIME.lock().await;
    init_tracing();
    // Own versions past the gossip rate cost a peer score only with an allowance set.
    let ([writer, o1, o2], [w, s1, s2], _o2_thread) =
        three_nodes(|b| b.own_versions_allowance(500)).await;
    let (wid, o1id, o2id) = (writer.device_id(), o1.device_id(), o2.device_id());
    let w0 = w.update(|t| t.items = vec!["hello".into()]).await.unwrap();
    for s in [&s1, &s2] {
        eventually("the writer's first write arrives", s, |s| {
            s.get(&wid).is_some_and(|x| x.version == w0.version)
        })
        .await;
    }
    let at_o1 = o1.listen_addrs()[0].clone();
    let mut flooder = rogue::start(std::slice::from_ref(&at_o1), &[TOPIC, PRESENCE]).await;
    let fid = DeviceId::from(flooder.key.public().to_peer_id());
    let alive = keep_alive(
        flooder.cmds.clone(),
        flooder.key.clone(),
        Arc::new(AtomicU64::new(0)),
    );
    let junker = rogue::start(std::slice::from_ref(&at_o1), &[]).await;
    let jid = DeviceId::from(junker.key.public().to_peer_id());
    let garbler = rogue::start(std::slice::from_ref(&at_o1), &[TOPIC]).await;
    let gid = DeviceId::from(garbler.key.public().to_peer_id());
    until(
        "O1 holds the flooder as a member and the others connected",
        DEADLINE,
        || {
            let peers = o1.peers();
            let online = |d: DeviceId| {
                peers
                    .iter()
                    .any(|p| p.device_id == d && p.state == truffle_actors::PeerState::Online)
            };
            let connected = |d: DeviceId| peers.iter().any(|p| p.device_id == d && p.connected);
            online(fid) && connected(jid) && connected(gid)
        },
    )
    .await;

    // The honest writer, every 10 ms for 3 s, then a last write.
    let sent: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    let is_last = |t: &Todos| t.items == ["last"];
    let lat1 = latencies(&s1, wid, sent.clone(), is_last);
    let lat2 = latencies(&s2, wid, sent.clone(), is_last);
    let writing = {
        let (w, sent) = (w.clone(), sent.clone());
        tokio::spawn(async move {
            write_every(Duration::from_millis(10), &w, Duration::from_secs(3), &sent).await
        })
    };

    // The attacks.
    const JUNK: usize = 20_000;
    let flood = own_slices(&flooder.key, 22_000);
    let before = o1.metrics();
    let start = Instant::now();
    flooder
        .cmds
        .send(rogue::Cmd::FloodWith(
            TOPIC.into(),
            flood,
            Duration::from_secs(2),
        ))
        .unwrap();
    junker
        .cmds
        .send(rogue::Cmd::Junk(
            o1id.peer_id(),
            rogue::Junk {
                topic: "truffle/v1/store/never-joined".into(),
                count: JUNK,
                size: 64,
            },
        ))
        .unwrap();
    garbler
        .cmds
        .send(rogue::Cmd::Flood(
            TOPIC.into(),
            2000,
            Duration::from_secs(2),
        ))
        .unwrap();

    // Watch every score until the rogues are graylisted and the writer is done, and for
    // a second more.
    let mut graylisted: [Option<Duration>; 3] = [None, None, None];
    let mut lowest: std::collections::BTreeMap<&str, f64> = Default::default();
    let mut done_at: Option<Instant> = None;
    let deadline = Instant::now() + DEADLINE;
    while done_at.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
        assert!(
            Instant::now() < deadline,
            "not graylisted in time (flooder, junker, garbler): {graylisted:?}; scores at O1: {:?}",
            o1.peers()
                .iter()
                .map(|p| (p.device_id, p.score))
                .collect::<Vec<_>>()
        );
        let mut low = |what: &'static str, score: Option<f64>| {
            if let Some(s) = score {
                let l = lowest.entry(what).or_insert(f64::INFINITY);
                *l = l.min(s);
            }
        };
        for p in o1.peers() {
            let slot = match p.device_id {
                d if d == fid => Some(0),
                d if d == jid => Some(1),
                d if d == gid => Some(2),
                d if d == wid => {
                    low("W at O1", p.score);
                    None
                }
                d if d == o2id => {
                    low("O2 at O1", p.score);
                    None
                }
                _ => None,
            };
            if let Some(i) = slot {
                if graylisted[i].is_none() && p.score.is_some_and(|s| s < GRAYLIST) {
                    graylisted[i] = Some(start.elapsed());
                }
            }
        }
        for (node, name) in [(&o2, "O2"), (&writer, "W")] {
            for p in node.peers() {
                match p.device_id {
                    d if d == o1id => {
                        low(if name == "O2" { "O1 at O2" } else { "O1 at W" }, p.score)
                    }
                    d if d == wid => low("W at O2", p.score),
                    d if d == o2id => low("O2 at W", p.score),
                    _ => {}
                }
            }
        }
        if done_at.is_none() && graylisted.iter().all(Option::is_some) && writing.is_finished() {
            done_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writes = writing.await.unwrap();
    let lat1 = tokio::time::timeout(DEADLINE, lat1).await.unwrap().unwrap();
    let lat2 = tokio::time::timeout(DEADLINE, lat2).await.unwrap().unwrap();
    let published = flooder.flooded().await;
    let m1 = o1.metrics();
    let (m2, mw) = (o2.metrics(), writer.metrics());
    let traffic = |d: DeviceId| {
        o1.peers()
            .into_iter()
            .find(|p| p.device_id == d)
            .map(|p| (p.inbound_messages, p.inbound_bytes, p.charged, p.score))
    };
    eprintln!(
        "graylisted at O1 after: flooder {:?}, junker {:?}, garbler {:?}; flood {published} published, O1 checked {} \
         of them ({} not forwarded); junk counted at O1 {} of {JUNK}; messages charged {}, peers graylisted \
         O1 {} O2 {} W {}; lowest honest scores {lowest:?}; W's {writes} writes: at O1 {} p99 {:?}, \
         at O2 {} p99 {:?}; O1's ledger now: flooder {:?}, junker {:?}, W {:?}",
        graylisted[0],
        graylisted[1],
        graylisted[2],
        m1.delivered - before.delivered,
        m1.gossip_over_rate - before.gossip_over_rate,
        m1.rejected(RejectReason::UnjoinedTopic) - before.rejected(RejectReason::UnjoinedTopic),
        m1.messages_charged - before.messages_charged,
        m1.peers_graylisted,
        m2.peers_graylisted,
        mw.peers_graylisted,
        lat1.len(),
        quantile(&lat1, 0.99),
        lat2.len(),
        quantile(&lat2, 0.99),
        traffic(fid),
        traffic(jid),
        traffic(wid),
    );
    for (what, at) in [
        ("flooder", graylisted[0]),
        ("junker", graylisted[1]),
        ("garbler", graylisted[2]),
    ] {
        let at = at.unwrap();
        assert!(
            at < Duration::from_secs(5),
            "{what} graylisted after {at:?}"
        );
    }
    assert!(m1.peers_graylisted >= 3, "{m1:#?}");
    assert_eq!(m2.peers_graylisted, 0, "O2 graylisted an honest peer");
    assert_eq!(mw.peers_graylisted, 0, "W graylisted an honest peer");
    for what in [
        "W at O1", "O2 at O1", "O1 at O2", "W at O2", "O1 at W", "O2 at W",
    ] {
        let l = lowest.get(what).copied();
        assert!(l.is_some_and(|l| l >= 0.0), "{what}: lowest score {l:?}");
    }
    // Once graylisted, the flooder's versions no longer reach O1's checks.
    assert!(
        m1.delivered - before.delivered < published as u64,
        "O1 checked every one of the {published} versions"
    );
    // The honest writer's updates keep arriving at both (a store may coalesce a few).
    assert!(lat1.len() * 2 > writes, "at O1: {} of {writes}", lat1.len());
    assert!(lat2.len() * 2 > writes, "at O2: {} of {writes}", lat2.len());
    drop(alive);
    for n in [writer, o1, o2] {
        n.shutdown().await.unwrap();
    }
}

/// The per-peer inbound message rate (`peer_message_rate`, off by default): on a node
/// with a rate of 200 messages a second, a member sending one copy of its slice 6,000
/// times a second (every copy counts; gossipsub drops all but the first as duplicates,
/// so nothing else charges the rogue, and the node's work per copy is small) is
/// graylisted within seconds, while an honest writer connected to the same node, every
/// 50 ms, keeps a score of at least 0 and its updates keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_past_its_inbound_message_rate_is_graylisted() {
    let _one = ONE_AT_A_TIME.lock().await;
    init_tracing();
    let node = builder("rated")
        .peer_message_rate(200, 200)
        .start()
        .await
        .unwrap();
    let writer = builder("writer")
        .bootstrap(node.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    let (wid, nid) = (writer.device_id(), node.device_id());
    let s = node.store::<Todos>().await.unwrap();
    let w = writer.store::<Todos>().await.unwrap();
    let w0 = w.update(|t| t.items = vec!["hello".into()]).await.unwrap();
    eventually("the writer's first write arrives", &s, |s| {
        s.get(&wid).is_some_and(|x| x.version == w0.version)
    })
    .await;
    let rogue = rogue::start(&[node.listen_addrs()[0].clone()], &[TOPIC, PRESENCE]).await;
    let rid = DeviceId::from(rogue.key.public().to_peer_id());
    let alive = keep_alive(
        rogue.cmds.clone(),
        rogue.key.clone(),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    until("the rogue is a member", DEADLINE, || {
        node.peers()
            .iter()
            .any(|p| p.device_id == rid && p.state == truffle_actors::PeerState::Online)
    })
    .await;

    let sent: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>> =
        Default::default();
    let lat = latencies(&s, wid, sent.clone(), |t: &Todos| t.items == ["last"]);
    let start = Instant::now();
    rogue
        .cmds
        .send(rogue::Cmd::FloodWith(
            TOPIC.into(),
            vec![own_slices(&rogue.key, 1).remove(0); 12_000],
            Duration::from_secs(2),
        ))
        .unwrap();
    let writing = {
        let (w, sent) = (w.clone(), sent.clone());
        tokio::spawn(async move { write_every_50ms(&w, Duration::from_secs(3), &sent).await })
    };
    let mut graylisted = None;
    let mut lowest = (f64::INFINITY, f64::INFINITY);
    let mut peak_rate: f64 = 0.0;
    let deadline = Instant::now() + DEADLINE;
    while !writing.is_finished() || graylisted.is_none() {
        assert!(Instant::now() < deadline, "the rogue was not graylisted");
        for p in node.peers() {
            if p.device_id == rid {
                peak_rate = peak_rate.max(p.inbound_messages_per_sec);
                if graylisted.is_none() && p.score.is_some_and(|s| s < GRAYLIST) {
                    graylisted = Some(start.elapsed());
                }
            }
            if p.device_id == wid {
                lowest.0 = lowest.0.min(p.score.unwrap_or(f64::INFINITY));
            }
        }
        for p in writer.peers() {
            if p.device_id == nid {
                lowest.1 = lowest.1.min(p.score.unwrap_or(f64::INFINITY));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writes = writing.await.unwrap();
    let lat = tokio::time::timeout(DEADLINE, lat).await.unwrap().unwrap();
    let m = node.metrics();
    let at = graylisted.unwrap();
    eprintln!(
        "a peer at up to {peak_rate:.0} messages/s against a rate of 200: graylisted after {at:?}; \
         messages charged {}; lowest scores: writer at the node {}, node at the writer {}; \
         writer's {writes} updates: {} arrived, p99 {:?}",
        m.messages_charged,
        lowest.0,
        lowest.1,
        lat.len(),
        quantile(&lat, 0.99)
    );
    assert!(at < Duration::from_secs(5), "graylisted after {at:?}");
    assert!(m.messages_charged > 0);
    assert!(m.peers_graylisted >= 1);
    assert_eq!(writer.metrics().peers_graylisted, 0);
    assert!(lowest.0 >= 0.0 && lowest.1 >= 0.0, "{lowest:?}");
    assert!(lat.len() * 2 > writes, "{} of {writes}", lat.len());
    drop(alive);
    for n in [writer, node] {
        n.shutdown().await.unwrap();
    }
}

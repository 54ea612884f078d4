//! Hostile and faulty peers (issue 12): replays of a departed device. Each test points a rogue peer (raw libp2p with its own
//! keys, `common::rogue`) at real nodes on loopback and asserts on the honest nodes.

mod common;

use std::time::{Duration, Instant};

use common::rogue::{self, envelope_device};
use common::*;
use truffle_actors::prelude::*;
use truffle_actors::{MeshNodeBuilder, RejectReason};

const TOPIC: &str = "truffle/v1/store/todos";
const PRESENCE: &str = "truffle/v1/presence";

/// Short presence timings, and the full record of a silent device dropped after 5 s (10 ×
/// the timeout) instead of 60 s, so that a replay "after the forget window" fits a test.
fn quick(b: MeshNodeBuilder) -> MeshNodeBuilder {
    b.presence_interval(Duration::from_millis(100))
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
    let (lv, cv) = (l.local().version, c.local().version);
    eventually(
        "the honest node holds both departing devices' slices",
        &h,
        |s| {
            s.get(&lid).is_some_and(|x| x.version == lv)
                && s.get(&cid).is_some_and(|x| x.version == cv)
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

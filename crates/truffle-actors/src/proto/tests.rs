//! Single-engine rules, driven by hand. Whole meshes of engines run in `truffle-sim`.

use super::watch::VIEW_DIAL_GRACE;
use super::*;

fn dev(n: u8) -> DeviceId {
    let mut seed = [0u8; 32];
    seed[0] = n;
    let kp = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
    DeviceId::from(kp.public().to_peer_id())
}

fn st(n: &str) -> StoreId {
    StoreId::new(n).unwrap()
}

fn slice(store: &StoreId, d: DeviceId, v: Version) -> Slice {
    Slice {
        store: store.clone(),
        device: d,
        version: v,
        updated_at: 0,
        data: Arc::from(&b"\x90"[..]),
        raw: Arc::from(&[v.counter as u8; 8][..]),
    }
}

/// The heartbeats liveness these tests were written for (watch has its own, below).
fn heartbeats() -> ProtoConfig {
    ProtoConfig::default().with_liveness(Liveness::Heartbeats)
}

/// A started engine of `dev(0)` under `cfg`, and its start time.
fn engine_with(cfg: ProtoConfig) -> (Engine, Instant) {
    seeded_engine(cfg, 1)
}

/// A started engine of `dev(0)` under `cfg` whose random choices (and tick phase) come
/// from `seed`, and its start time.
fn seeded_engine(cfg: ProtoConfig, seed: u64) -> (Engine, Instant) {
    let mut e = Engine::new(dev(0), 1, cfg, seed, Vec::new());
    let now = Instant::now();
    e.start(now, &mut Vec::new());
    (e, now)
}

fn engine() -> (Engine, Instant) {
    engine_with(heartbeats())
}

/// An engine with the default (watch) liveness.
fn watch_engine() -> (Engine, Instant) {
    engine_with(ProtoConfig::default())
}

/// `device`'s first heartbeat, relayed by `via`, announcing version 5.3 of its slice in
/// `store`.
fn announces_slice(via: DeviceId, device: DeviceId, store: &StoreId) -> Input {
    announces_version(via, device, store, 1, 3)
}

/// `device`'s heartbeat `seq` of run 5, relayed by `via`, announcing version
/// `5.counter` of its slice in `store`.
fn announces_version(
    via: DeviceId,
    device: DeviceId,
    store: &StoreId,
    seq: u64,
    counter: u64,
) -> Input {
    Input::Heartbeat {
        via,
        heartbeat: Arc::new(Heartbeat {
            device,
            incarnation: 5,
            seq,
            addrs: vec![],
            partial: false,
            digest: vec![(store.clone(), Version::new(5, counter))],
        }),
    }
}

/// An engine that joined store `a`, with `peers` subscribed to it.
fn joined_with_subscribers(peers: &[u8]) -> (Engine, Instant, StoreId) {
    let (mut e, t0) = engine();
    let s = st("a");
    step(&mut e, Input::Join(s.clone()), t0);
    for &p in peers {
        step(
            &mut e,
            Input::Subscribed {
                peer: dev(p),
                store: s.clone(),
            },
            t0,
        );
    }
    (e, t0, s)
}

fn step(e: &mut Engine, input: Input, now: Instant) -> Vec<Output> {
    let mut out = Vec::new();
    e.handle(input, now, &mut out);
    out
}

#[test]
fn a_digest_with_a_newer_version_fetches_it_from_the_relay_once() {
    let (mut e, t0, s) = joined_with_subscribers(&[]);
    let out = step(&mut e, announces_slice(dev(1), dev(2), &s), t0);
    let fetches: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Fetch { peer, want, .. } => Some((*peer, want.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(fetches.len(), 1);
    assert_eq!(fetches[0].0, dev(1));
    assert_eq!(fetches[0].1[0].device, Some(dev(2)));
    // The next heartbeat within the refetch window does not ask again.
    let out = step(
        &mut e,
        announces_version(dev(1), dev(2), &s, 2, 3),
        t0 + Duration::from_millis(100),
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Fetch { .. })));
}

#[test]
fn a_newer_version_is_fetched_while_an_older_one_is_still_asked_for() {
    let (mut e, t0, s) = joined_with_subscribers(&[1]);
    let hb = |seq, counter| announces_version(dev(1), dev(2), &s, seq, counter);
    let fetches = |out: &[Output]| {
        out.iter()
            .filter(|o| matches!(o, Output::Fetch { want, .. } if want[0].device == Some(dev(2))))
            .count()
    };
    assert_eq!(fetches(&step(&mut e, hb(1, 3), t0)), 1);
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!(fetches(&step(&mut e, hb(2, 3), t1)), 0, "5.3 is asked for");
    // 5.4 is not, but the relay was asked something less than a fetch window ago: 5.4
    // waits for the window to close.
    assert_eq!(fetches(&step(&mut e, hb(3, 4), t1)), 0);
    let out = step(&mut e, Input::Timer(Timer::Fetch), t0 + FETCH_WINDOW);
    assert_eq!(fetches(&out), 1, "5.4 is asked for when the window closes");
}

#[test]
fn a_burst_of_heartbeats_costs_one_request_per_fetch_window_for_what_gossip_did_not_bring() {
    let (mut e, t0, s) = joined_with_subscribers(&[1]);
    let fetches = |out: &[Output]| -> Vec<Vec<Want>> {
        out.iter()
            .filter_map(|o| match o {
                Output::Fetch { peer, want, .. } if *peer == dev(1) => Some(want.clone()),
                _ => None,
            })
            .collect()
    };
    // 40 new devices announce a slice through dev(1) within a few milliseconds: the first
    // is asked for at once, the others wait.
    let mut asked = Vec::new();
    for d in 20..60u8 {
        let at = t0 + Duration::from_micros(100 * u64::from(d - 20));
        asked.extend(fetches(&step(
            &mut e,
            announces_slice(dev(1), dev(d), &s),
            at,
        )));
    }
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].len(), 1);
    assert_eq!(asked[0][0].device, Some(dev(20)));
    // Gossip brings the slices of the even ones meanwhile.
    for d in (22..60u8).step_by(2) {
        let slice = slice(&s, dev(d), Version::new(5, 3));
        step(
            &mut e,
            Input::Slice { via: dev(1), slice },
            t0 + Duration::from_millis(50),
        );
    }
    // When the window closes, one request asks for the 19 odd ones, and nothing else.
    let out = step(&mut e, Input::Timer(Timer::Fetch), t0 + FETCH_WINDOW);
    let asked = fetches(&out);
    assert_eq!(asked.len(), 1);
    let mut devices: Vec<DeviceId> = asked[0].iter().filter_map(|w| w.device).collect();
    devices.sort();
    let mut odd: Vec<DeviceId> = (21..60u8).step_by(2).map(dev).collect();
    odd.sort();
    assert_eq!(devices, odd);
    // That opened the window again; with nothing held, closing it asks for nothing.
    let out = step(&mut e, Input::Timer(Timer::Fetch), t0 + 2 * FETCH_WINDOW);
    assert!(fetches(&out).is_empty());
}

#[test]
fn a_fetch_the_relay_cannot_answer_goes_to_another_subscriber() {
    let (mut e, t0, s) = joined_with_subscribers(&[1, 3]);
    let out = step(&mut e, announces_slice(dev(1), dev(2), &s), t0);
    let id = out
        .iter()
        .find_map(|o| match o {
            Output::Fetch { id, want, .. } if want[0].device.is_some() => Some(*id),
            _ => None,
        })
        .unwrap();
    let out = step(
        &mut e,
        Input::Response {
            peer: dev(1),
            id,
            slices: vec![],
        },
        t0,
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Fetch { peer, .. } if *peer == dev(3))));
}

#[test]
fn newer_slices_are_delivered_and_stale_ones_reported() {
    let (mut e, t0) = engine();
    let s = st("a");
    step(&mut e, Input::Join(s.clone()), t0);
    let deliver = |out: &[Output]| out.iter().any(|o| matches!(o, Output::Deliver(_)));
    let out = step(
        &mut e,
        Input::Slice {
            via: dev(1),
            slice: slice(&s, dev(1), Version::new(1, 2)),
        },
        t0,
    );
    assert!(deliver(&out));
    assert_eq!(e.held_version(&s, &dev(1)), Some(Version::new(1, 2)));
    let out = step(
        &mut e,
        Input::Slice {
            via: dev(1),
            slice: slice(&s, dev(1), Version::new(1, 1)),
        },
        t0,
    );
    assert!(!deliver(&out));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Report(Report::Rejected {
            reason: RejectReason::Stale,
            ..
        })
    )));
}

#[test]
fn a_silent_device_is_removed_after_the_timeout() {
    let (mut e, t0) = engine();
    let s = st("a");
    step(&mut e, Input::Join(s.clone()), t0);
    step(
        &mut e,
        Input::Slice {
            via: dev(1),
            slice: slice(&s, dev(1), Version::new(1, 2)),
        },
        t0,
    );
    let early = step(
        &mut e,
        Input::Timer(Timer::Expire),
        t0 + Duration::from_secs(2),
    );
    assert!(!early.iter().any(|o| matches!(o, Output::Remove { .. })));
    let late = step(
        &mut e,
        Input::Timer(Timer::Expire),
        t0 + Duration::from_secs(3),
    );
    assert!(late.iter().any(|o| matches!(
        o,
        Output::Remove { device, reason: RemovalReason::Timeout, .. } if *device == dev(1)
    )));
}

#[test]
fn a_second_connection_closing_reconnects_afresh() {
    let (mut e, t0) = engine();
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    let out = step(
        &mut e,
        Input::ConnectionClosed {
            peer: dev(1),
            remaining: 1,
        },
        t0,
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Disconnect { peer } if *peer == dev(1))));
    step(
        &mut e,
        Input::ConnectionClosed {
            peer: dev(1),
            remaining: 0,
        },
        t0,
    );
    let out = step(&mut e, Input::Timer(Timer::Redial), t0);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Dial { peer, .. } if *peer == dev(1))));
}

#[test]
fn leave_waits_for_every_connected_peer_or_the_deadline() {
    let (mut e, t0) = engine();
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    step(&mut e, Input::Connected { peer: dev(2) }, t0);
    let out = step(&mut e, Input::Leave, t0);
    let ids: Vec<RequestId> = out
        .iter()
        .filter_map(|o| match o {
            Output::SendGoodbye { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::PublishGoodbye { incarnation: 1 })));
    let out = step(
        &mut e,
        Input::Response {
            peer: dev(1),
            id: ids[0],
            slices: vec![],
        },
        t0,
    );
    assert!(!out.iter().any(|o| matches!(o, Output::LeaveDone { .. })));
    let out = step(&mut e, Input::Timer(Timer::LeaveDeadline), t0);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::LeaveDone { unanswered: 1 })));
    // No more heartbeats once leaving.
    let out = step(&mut e, Input::Timer(Timer::Presence), t0);
    assert!(!out.iter().any(|o| matches!(o, Output::PublishHeartbeat(_))));
}

#[test]
fn the_same_seed_gives_the_same_timers() {
    let run = |seed| {
        let mut e = Engine::new(dev(0), 1, heartbeats(), seed, Vec::new());
        let mut out = Vec::new();
        e.start(Instant::now(), &mut out);
        format!("{out:?}")
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

/// Heartbeat `seq` of `dev(n)`'s first run, announcing a listen address.
fn heartbeat(n: u8, seq: u64) -> Arc<Heartbeat> {
    Arc::new(Heartbeat {
        device: dev(n),
        incarnation: 1,
        seq,
        addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 4000 + u16::from(n))],
        partial: false,
        digest: vec![],
    })
}

/// A heartbeat of `dev(n)`, announcing a listen address.
fn announce(e: &mut Engine, n: u8, seq: u64, now: Instant) -> Vec<Output> {
    step(
        e,
        Input::Heartbeat {
            via: dev(n),
            heartbeat: heartbeat(n, seq),
        },
        now,
    )
}

fn dials(out: &[Output]) -> Vec<DeviceId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Dial { peer, addrs } => {
                assert!(
                    !addrs.is_empty(),
                    "a view dial carries the announced addresses"
                );
                Some(*peer)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_short_view_dials_announced_members_up_to_the_target_and_backs_off() {
    let (mut e, t0) = engine();
    // Connected to one peer (the bootstrap, say); 20 members announced themselves.
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    for n in 1..=20 {
        announce(&mut e, n, 1, t0);
    }
    let first = dials(&step(&mut e, Input::Timer(Timer::Redial), t0));
    let target = ProtoConfig::default().target_peers;
    // Half of the 7 missing (rounded up): members short at the same time dial each other.
    assert_eq!(first.len(), (target - 1).div_ceil(2), "{first:?}");
    assert!(!first.contains(&dev(1)), "not the peer already connected");
    // Dials in flight count toward the view: a slow dial is not doubled by another, and
    // only half of what is still missing is dialled...
    let t1 = t0 + Duration::from_millis(500);
    let again = dials(&step(&mut e, Input::Timer(Timer::Redial), t1));
    assert_eq!(
        again.len(),
        (target - 1 - first.len()).div_ceil(2),
        "{again:?}"
    );
    assert!(again.iter().all(|d| !first.contains(d)), "{again:?}");
    // ...until the backoff has passed without a connection: then it dials again (the
    // second tick's dials are still under way).
    let t2 = t0 + DIAL_BACKOFF;
    let retry = dials(&step(&mut e, Input::Timer(Timer::Redial), t2));
    assert_eq!(
        retry.len(),
        (target - 1 - again.len()).div_ceil(2),
        "{retry:?}"
    );
    // Once the view is full, nothing more is dialled.
    for d in 2..=target {
        step(&mut e, Input::Connected { peer: dev(d as u8) }, t2);
    }
    let t3 = t2 + Duration::from_secs(3);
    assert!(dials(&step(&mut e, Input::Timer(Timer::Redial), t3)).is_empty());
}

#[test]
fn a_view_still_short_after_half_its_dials_dials_the_rest_on_later_ticks() {
    let (mut e, t0) = engine();
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    for n in 1..=20 {
        announce(&mut e, n, 1, t0);
    }
    let target = ProtoConfig::default().target_peers;
    // Nobody else dials this node: every dial it makes connects, and the view fills
    // within a few ticks.
    let mut t = t0;
    for _ in 0..6 {
        for d in dials(&step(&mut e, Input::Timer(Timer::Redial), t)) {
            step(&mut e, Input::Connected { peer: d }, t);
        }
        t += Duration::from_secs(1);
    }
    assert_eq!(e.conns.len(), target);
}

#[test]
fn an_overfull_view_closes_old_connections_down_to_a_quarter_above_the_target() {
    let (mut e, t0) = engine();
    for n in 1..=20 {
        step(&mut e, Input::Connected { peer: dev(n) }, t0);
    }
    // Young connections are kept: their peers may know no one else yet.
    let out = step(
        &mut e,
        Input::Timer(Timer::Redial),
        t0 + Duration::from_secs(1),
    );
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Disconnect { .. } | Output::Trim { .. })));
    let out = step(
        &mut e,
        Input::Timer(Timer::Redial),
        t0 + Duration::from_secs(11),
    );
    // Trimmed, not cut: the runtime lets requests in flight on them finish first.
    let closed = out
        .iter()
        .filter(|o| matches!(o, Output::Trim { .. }))
        .count();
    let target = ProtoConfig::default().target_peers;
    assert_eq!(closed, 20 - (target + target.div_ceil(4)));
    assert!(!out.iter().any(|o| matches!(o, Output::Disconnect { .. })));
}

#[test]
fn bootstrap_peers_are_redialled_only_while_the_view_is_short() {
    let boot = dev(9);
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{}", boot.peer_id())
        .parse()
        .unwrap();
    let mut e = Engine::new(dev(0), 1, heartbeats(), 1, vec![addr]);
    let t0 = Instant::now();
    e.start(t0, &mut Vec::new());
    let redials = |out: &[Output]| {
        out.iter()
            .filter(|o| matches!(o, Output::DialAddr { .. }))
            .count()
    };
    assert_eq!(redials(&step(&mut e, Input::Timer(Timer::Redial), t0)), 1);
    for n in 1..=8 {
        step(&mut e, Input::Connected { peer: dev(n) }, t0);
    }
    // A full view without the bootstrap peer: it is not needed (until a refresh tick).
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(redials(&step(&mut e, Input::Timer(Timer::Redial), t1)), 0);
}

#[test]
fn a_refresh_of_a_full_view_dials_a_silent_member_first() {
    let (mut e, t0) = engine();
    // Member 20 was heard once, long ago, and timed out; 1..=8 are live and connected.
    announce(&mut e, 20, 1, t0);
    let later = t0 + Duration::from_secs(10);
    step(&mut e, Input::Timer(Timer::Expire), later);
    assert!(!e.is_online(&dev(20)));
    for n in 1..=8 {
        announce(&mut e, n, 1, later);
        step(&mut e, Input::Connected { peer: dev(n) }, later);
    }
    announce(&mut e, 30, 1, later);
    let mut dialled = Vec::new();
    for k in 1..=REFRESH_TICKS {
        let out = step(
            &mut e,
            Input::Timer(Timer::Redial),
            later + Duration::from_millis(10 * k),
        );
        dialled.extend(dials(&out));
    }
    assert_eq!(
        dialled,
        vec![dev(20)],
        "one dial per refresh, the silent member"
    );
}

#[test]
fn nodes_started_together_refresh_their_views_on_different_ticks() {
    let refresh_tick = |seed: u64| {
        let (mut e, t0) = seeded_engine(heartbeats(), seed);
        for n in 1..=9 {
            announce(&mut e, n, 1, t0);
        }
        for n in 1..=8 {
            step(&mut e, Input::Connected { peer: dev(n) }, t0);
        }
        (1..=REFRESH_TICKS)
            .find(|_| {
                let out = step(&mut e, Input::Timer(Timer::Redial), t0);
                !dials(&out).is_empty()
            })
            .expect("one refresh in every REFRESH_TICKS ticks")
    };
    let ticks: std::collections::BTreeSet<u64> = (0..REFRESH_TICKS).map(refresh_tick).collect();
    assert_eq!(ticks.len() as u64, REFRESH_TICKS, "{ticks:?}");
}

/// A request naming one slice many times, or a device's slice besides its whole store,
/// gets each held slice once, shared with what the engine holds (the fetch-amplification
/// attack asked for one 1 MB slice 64 times and got 64 copies).
#[test]
fn an_answer_holds_each_slice_once_however_often_it_is_wanted() {
    let (mut e, t0) = engine();
    let (a, b) = (st("a"), st("b"));
    step(&mut e, Input::Join(a.clone()), t0);
    step(&mut e, Input::Join(b.clone()), t0);
    for (s, d, v) in [(&a, 1, 1), (&a, 2, 2), (&b, 1, 3)] {
        step(
            &mut e,
            Input::Slice {
                via: dev(d),
                slice: slice(s, dev(d), Version::new(1, v)),
            },
            t0,
        );
    }
    let one = |s: &StoreId, d: Option<u8>| Want {
        store: s.clone(),
        device: d.map(dev),
    };
    let mut want = vec![one(&a, Some(1)); 64];
    want.extend([one(&a, None), one(&a, None), one(&a, Some(2))]);
    want.extend(vec![one(&b, Some(1)); 3]);
    want.extend([one(&st("c"), None), one(&b, Some(9))]);
    let out = step(
        &mut e,
        Input::Request {
            peer: dev(1),
            token: 7,
            want,
        },
        t0,
    );
    let Some(Output::Respond { token: 7, slices }) = out.first() else {
        panic!("no answer: {out:?}");
    };
    assert_eq!(slices.len(), 3, "each held slice once: {slices:?}");
    for (s, d) in [(&a, 1), (&a, 2), (&b, 1)] {
        let held = e.held.store(s).and_then(|h| h.slice(&dev(d))).unwrap();
        let sent = slices.iter().filter(|x| Arc::ptr_eq(x, held)).count();
        assert_eq!(sent, 1, "{s}/{d} sent once, shared (not copied)");
    }
}

fn asks_digest_of(out: &[Output], peer: DeviceId) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Ask { peer: p, ask: Ask::Digest(_), .. } if *p == peer))
        .count()
}

#[test]
fn a_digest_that_differs_is_compared_back_once_per_period() {
    let (mut e, t0) = watch_engine();
    let peer = dev(1);
    // A new neighbour is compared with at once.
    let out = step(&mut e, Input::Connected { peer }, t0);
    assert_eq!(asks_digest_of(&out, peer), 1);
    let differs = || Input::Asked {
        peer,
        token: 7,
        ask: Ask::Digest(Digest {
            members: 0,
            stores: vec![],
        }),
    };
    // Its digest differs, but this node compared with it just now: no ask back.
    let out = step(&mut e, differs(), t0 + Duration::from_millis(100));
    assert_eq!(asks_digest_of(&out, peer), 0);
    // A period later it asks back, once.
    let later = t0 + ProtoConfig::default().anti_entropy_every * 2;
    let out = step(&mut e, differs(), later);
    assert_eq!(asks_digest_of(&out, peer), 1);
    let out = step(&mut e, differs(), later + Duration::from_millis(100));
    assert_eq!(asks_digest_of(&out, peer), 0);
    // A digest equal to this node's view is not asked back.
    let same = Input::Asked {
        peer,
        token: 8,
        ask: Ask::Digest(Digest {
            members: e.members_digest(),
            stores: vec![],
        }),
    };
    let out = step(
        &mut e,
        same,
        later + ProtoConfig::default().anti_entropy_every * 4,
    );
    assert_eq!(asks_digest_of(&out, peer), 0);
}

fn accused_asks(out: &[Output], peer: DeviceId) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Ask { peer: p, ask: Ask::Accused(_), .. } if *p == peer))
        .count()
}

fn accusation(by: u8, of: u8, seq: u64) -> Input {
    Input::Suspect {
        accuser: dev(by),
        suspicion: Suspicion {
            device: dev(of),
            incarnation: 1,
            seq,
        },
    }
}

#[test]
fn a_suspect_this_node_is_connected_to_is_told_not_removed() {
    let (mut e, t0) = watch_engine();
    announce(&mut e, 1, 1, t0);
    announce(&mut e, 2, 1, t0);
    step(&mut e, Input::Connected { peer: dev(2) }, t0);
    step(&mut e, accusation(1, 2, 1), t0);
    // The timeout passes with no refutation heard: dev(2) is still connected here, so it
    // is asked directly to refute, and kept.
    let late = t0 + ProtoConfig::default().suspect_timeout + Duration::from_millis(10);
    let out = step(&mut e, Input::Timer(Timer::Expire), late);
    assert!(
        e.membership.is_online(&dev(2)),
        "a connected suspect was removed"
    );
    assert_eq!(accused_asks(&out, dev(2)), 1);
    // Once the connection is gone and the suspicion runs out again, it is removed.
    step(
        &mut e,
        Input::ConnectionClosed {
            peer: dev(2),
            remaining: 0,
        },
        late,
    );
    let later = late + ProtoConfig::default().suspect_timeout + Duration::from_millis(10);
    step(&mut e, Input::Timer(Timer::Expire), later);
    assert!(
        !e.membership.is_online(&dev(2)),
        "an unconnected suspect was kept"
    );
}

#[test]
fn a_node_whose_ticks_come_late_gives_the_accused_longer_to_refute() {
    let timeout = ProtoConfig::default().suspect_timeout;
    let ms = Duration::from_millis;
    for late_tick in [false, true] {
        let (mut e, t0) = watch_engine();
        announce(&mut e, 1, 1, t0);
        announce(&mut e, 2, 1, t0);
        step(&mut e, Input::Timer(Timer::Redial), t0);
        // The next redial tick is due a second later; this one fires 0.5 s after that
        // (the node is short of CPU), or on time.
        let tick = t0 + ProtoConfig::default().redial_every + ms(if late_tick { 500 } else { 0 });
        step(&mut e, Input::Timer(Timer::Redial), tick);
        step(&mut e, accusation(1, 2, 1), tick);
        step(&mut e, Input::Timer(Timer::Expire), tick + timeout + ms(10));
        assert_eq!(
            e.membership.is_online(&dev(2)),
            late_tick,
            "late tick: {late_tick}"
        );
        step(
            &mut e,
            Input::Timer(Timer::Expire),
            tick + timeout * 3 + ms(10),
        );
        assert!(!e.membership.is_online(&dev(2)), "late tick: {late_tick}");
    }
}

#[test]
fn a_newer_heartbeat_of_a_suspect_is_reported_as_its_refutation() {
    let (mut e, t0) = watch_engine();
    announce(&mut e, 1, 1, t0);
    announce(&mut e, 2, 1, t0);
    step(&mut e, accusation(1, 2, 1), t0);
    assert!(e.membership.is_suspected(&dev(2)));
    // Relayed by dev(1), as a neighbour's answer or a gossip relay would be.
    let out = step(
        &mut e,
        Input::Heartbeat {
            via: dev(1),
            heartbeat: heartbeat(2, 2),
        },
        t0,
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Report(Report::Refuted { device, via }) if *device == dev(2) && *via == dev(1)
    )));
    assert!(!e.membership.is_suspected(&dev(2)));
    // A heartbeat of a device nobody suspects reports nothing of the kind.
    let out = announce(&mut e, 1, 2, t0);
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Report(Report::Refuted { .. }))));
}

#[test]
fn a_suspect_that_connects_is_told_it_is_accused() {
    let (mut e, t0) = watch_engine();
    announce(&mut e, 1, 1, t0);
    announce(&mut e, 2, 1, t0);
    announce(&mut e, 3, 1, t0);
    step(&mut e, accusation(1, 2, 1), t0);
    // dev(2) connects while suspected (say, this node's dial to it, slower than the
    // probe timeout): it is told, so it refutes before the suspicion runs out.
    let out = step(&mut e, Input::Connected { peer: dev(2) }, t0);
    assert_eq!(accused_asks(&out, dev(2)), 1);
    // A member nobody suspects is not told anything.
    let out = step(&mut e, Input::Connected { peer: dev(3) }, t0);
    assert_eq!(accused_asks(&out, dev(3)), 0);
}

#[test]
fn a_failed_dial_to_a_peer_connected_the_other_way_accuses_no_one() {
    let (mut e, t0) = watch_engine();
    announce(&mut e, 1, 1, t0);
    // dev(1) connected to this node while this node's probe dial to it was under way;
    // then the dial fails.
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    e.watch.probes.insert(dev(1), t0 + Duration::from_secs(2));
    let out = step(&mut e, Input::DialFailed { peer: dev(1) }, t0);
    assert!(
        !out.iter().any(|o| matches!(o, Output::PublishSuspect(_))),
        "accused a connected peer"
    );
}

fn suspects(out: &[Output]) -> Vec<DeviceId> {
    out.iter()
        .filter_map(|o| match o {
            Output::PublishSuspect(s) => Some(s.device),
            _ => None,
        })
        .collect()
}

#[test]
fn a_view_dial_still_connecting_at_the_probe_timeout_is_given_longer_and_a_failed_one_accuses() {
    let (mut e, t0) = watch_engine();
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    for n in 1..=20 {
        announce(&mut e, n, 1, t0);
    }
    let first = dials(&step(&mut e, Input::Timer(Timer::Redial), t0));
    assert!(first.len() >= 2, "{first:?}");
    let (failed, slow) = (first[0], first[1]);
    // A dial that fails (the member's host refuses it): accused at once.
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!(
        suspects(&step(&mut e, Input::DialFailed { peer: failed }, t1)),
        [failed]
    );
    // The others are still connecting at the probe timeout (a slow handshake on a node
    // short of CPU): nobody is accused yet...
    let t2 = t0 + ProtoConfig::default().probe_timeout + Duration::from_millis(10);
    assert_eq!(suspects(&step(&mut e, Input::Timer(Timer::Expire), t2)), []);
    // ...one that connects in the meantime never is...
    step(&mut e, Input::Connected { peer: slow }, t2);
    // ...and the rest are once the grace has passed as well.
    let t3 = t2 + VIEW_DIAL_GRACE;
    let late = suspects(&step(&mut e, Input::Timer(Timer::Expire), t3));
    assert!(!late.contains(&slow) && !late.contains(&failed), "{late:?}");
    assert_eq!(late.len(), first.len() - 2, "{late:?}");
}

/// A watch engine with a view at its target and ten more members it is not connected to,
/// after the redial tick that started a random probe: the probe, and the tick's time.
fn random_probe_started() -> (Engine, DeviceId, Instant) {
    let cfg = ProtoConfig::default();
    let (mut e, t0) = watch_engine();
    let target = u8::try_from(cfg.target_peers).unwrap();
    for n in 1..=target + 10 {
        announce(&mut e, n, 1, t0);
    }
    for n in 1..=target {
        step(&mut e, Input::Connected { peer: dev(n) }, t0);
    }
    // Redial ticks until one dials a member: with the view at its target, a random probe.
    let mut t = t0;
    let probe = loop {
        t += cfg.redial_every;
        assert!(t < t0 + cfg.redial_every * 40, "no random probe");
        if let Some(p) = dials(&step(&mut e, Input::Timer(Timer::Redial), t)).first() {
            break *p;
        }
    };
    assert!((target + 1..=target + 10).any(|n| dev(n) == probe));
    (e, probe, t)
}

#[test]
fn a_random_probe_still_connecting_at_the_probe_timeout_accuses_without_the_view_dial_grace() {
    let (mut e, probe, t) = random_probe_started();
    // Still connecting at the probe timeout, its host never reached: accused then, not
    // after `VIEW_DIAL_GRACE` as a view dial would be. A dial across a partition hangs
    // rather than fails, and random probes are how a group no connection crosses is found.
    let t2 = t + ProtoConfig::default().probe_timeout + Duration::from_millis(10);
    assert_eq!(
        suspects(&step(&mut e, Input::Timer(Timer::Expire), t2)),
        [probe]
    );
}

#[test]
fn a_random_probe_whose_dial_reached_the_host_waits_the_grace_for_the_handshake() {
    let (mut e, probe, t) = random_probe_started();
    // The TCP connection is up; the handshake is slow (a host short of CPU).
    step(
        &mut e,
        Input::DialReached { peer: probe },
        t + Duration::from_millis(50),
    );
    let t2 = t + ProtoConfig::default().probe_timeout + Duration::from_millis(10);
    assert_eq!(suspects(&step(&mut e, Input::Timer(Timer::Expire), t2)), []);
    // The grace is given once: a handshake that never ends (a hung process whose kernel
    // still accepts connections) is accused after it.
    let t3 = t2 + VIEW_DIAL_GRACE;
    assert_eq!(
        suspects(&step(&mut e, Input::Timer(Timer::Expire), t3)),
        [probe]
    );
}

#[test]
fn the_probe_of_a_lost_connection_gets_no_grace_when_its_dial_reaches_the_host() {
    let (mut e, t0) = watch_engine();
    announce(&mut e, 1, 1, t0);
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    // The connection drops; the redial reaches the host but the handshake never ends
    // (a hung process): accused at the plain probe timeout, so a hung device is found in
    // time.
    let t1 = t0 + Duration::from_secs(1);
    let out = step(
        &mut e,
        Input::ConnectionClosed {
            peer: dev(1),
            remaining: 0,
        },
        t1,
    );
    assert_eq!(dials(&out), [dev(1)]);
    step(
        &mut e,
        Input::DialReached { peer: dev(1) },
        t1 + Duration::from_millis(5),
    );
    let t2 = t1 + ProtoConfig::default().probe_timeout + Duration::from_millis(10);
    assert_eq!(
        suspects(&step(&mut e, Input::Timer(Timer::Expire), t2)),
        [dev(1)]
    );
}

/// A watch engine whose first view dials (to members 1 to 20) all took `dial` to connect,
/// and the time they connected.
fn watch_engine_after_dials_taking(dial: Duration) -> (Engine, Instant, Vec<DeviceId>) {
    let (mut e, t0) = watch_engine();
    for n in 1..=20 {
        announce(&mut e, n, 1, t0);
    }
    let dialled = dials(&step(&mut e, Input::Timer(Timer::Redial), t0));
    assert!(dialled.len() >= 2, "{dialled:?}");
    let t1 = t0 + dial;
    for &peer in &dialled {
        step(&mut e, Input::Connected { peer }, t1);
    }
    (e, t1, dialled)
}

/// When a neighbour lost at `t` (its connection closed without notice, and it never
/// connects again) is accused, checked every 100 ms (the expire timer's own arming may
/// add one step) up to 12 s.
fn accused_after(e: &mut Engine, peer: DeviceId, t: Instant) -> Option<Duration> {
    step(e, Input::ConnectionClosed { peer, remaining: 0 }, t);
    (1..=120)
        .map(|i| Duration::from_millis(100 * i))
        .find(|&after| suspects(&step(e, Input::Timer(Timer::Expire), t + after)).contains(&peer))
}

#[test]
fn probes_and_suspicions_wait_longer_on_a_node_whose_dials_are_slow() {
    let timeout = ProtoConfig::default().probe_timeout;
    // Dials connecting in 100 ms: a lost neighbour is accused at the probe timeout.
    let (mut e, t1, dialled) = watch_engine_after_dials_taking(Duration::from_millis(100));
    let after = accused_after(&mut e, dialled[0], t1).expect("never accused");
    assert!(
        after >= timeout && after <= timeout + Duration::from_millis(200),
        "{after:?}"
    );
    // Dials taking 3 s (a starved CPU, a slow link): twice that.
    let (mut e, t1, dialled) = watch_engine_after_dials_taking(Duration::from_secs(3));
    let after = accused_after(&mut e, dialled[0], t1).expect("never accused");
    assert!(
        after >= Duration::from_secs(6) && after <= Duration::from_millis(6_200),
        "{after:?}"
    );
    // An accusation by another member waits as much longer for the accused to refute.
    let t2 = t1 + Duration::from_secs(7);
    step(&mut e, accusation(5, 7, 1), t2);
    let dev7 = dev(7);
    let online_at = |e: &mut Engine, after: Duration| {
        step(e, Input::Timer(Timer::Expire), t2 + after);
        e.membership.is_online(&dev7)
    };
    // Connected suspects are never removed here (this seed dials other members).
    assert!(!dialled.contains(&dev7), "{dialled:?}");
    assert!(
        online_at(&mut e, Duration::from_millis(2_010)),
        "removed at the plain timeout"
    );
    assert!(
        !online_at(&mut e, Duration::from_millis(6_010)),
        "kept past the stretched timeout"
    );
    // Dials taking 20 s: at most four times the setting.
    let (mut e, t1, dialled) = watch_engine_after_dials_taking(Duration::from_secs(20));
    let after = accused_after(&mut e, dialled[0], t1).expect("never accused");
    assert!(
        after >= timeout * 4 && after <= timeout * 4 + Duration::from_millis(200),
        "{after:?}"
    );
}

#[test]
fn a_member_that_connects_long_after_its_dial_failed_does_not_stretch_the_timeouts() {
    let (mut e, t0) = watch_engine();
    for n in 1..=20 {
        announce(&mut e, n, 1, t0);
    }
    let dialled = dials(&step(&mut e, Input::Timer(Timer::Redial), t0));
    assert!(dialled.len() >= 2, "{dialled:?}");
    // The first dial connects in 100 ms; the others are refused, and 20 s later those
    // members connect to this node (they restarted, say).
    let t1 = t0 + Duration::from_millis(100);
    step(&mut e, Input::Connected { peer: dialled[0] }, t1);
    for &peer in &dialled[1..] {
        step(&mut e, Input::DialFailed { peer }, t1);
    }
    let t2 = t0 + Duration::from_secs(20);
    for &peer in &dialled[1..] {
        step(&mut e, Input::Connected { peer }, t2);
    }
    // Losing the first, this node waits the plain probe timeout.
    let timeout = ProtoConfig::default().probe_timeout;
    let after = accused_after(&mut e, dialled[0], t2).expect("never accused");
    assert!(
        after >= timeout && after <= timeout + Duration::from_millis(200),
        "{after:?}"
    );
}

#[test]
fn an_accusation_told_directly_is_refuted_even_if_it_names_an_older_heartbeat() {
    let (mut e, t0) = watch_engine();
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    let beats = |out: &[Output]| {
        out.iter()
            .filter(|o| matches!(o, Output::PublishHeartbeat(_)))
            .count()
    };
    let told = |seq| Input::Asked {
        peer: dev(1),
        token: 1,
        ask: Ask::Accused(Suspicion {
            device: dev(0),
            incarnation: 1,
            seq,
        }),
    };
    // Accused at its latest heartbeat: refuted with a newer one.
    let t1 = t0 + Duration::from_secs(1);
    let latest = e.seq;
    let out = step(&mut e, told(latest), t1);
    assert_eq!(beats(&out), 1);
    // Then a neighbour tells it of an accusation at an older heartbeat (the neighbour
    // missed the newer ones): refuted too, with a newer one still.
    let seq = e.seq;
    let out = step(&mut e, told(0), t1 + Duration::from_secs(1));
    assert_eq!(beats(&out), 1);
    assert!(e.seq > seq);
}

#[test]
fn fetches_retried_elsewhere_spread_over_the_subscribers() {
    let (mut e, t0, s) = joined_with_subscribers(&(1..=8).collect::<Vec<u8>>());
    // Devices 20.. announce a slice through dev(1), which answers none of them: every
    // fetch goes on to another subscriber. Not always to the same one.
    let mut next = std::collections::HashSet::new();
    for d in 20..60 {
        // One fetch window apart, so each is asked for at once.
        let t0 = t0 + FETCH_WINDOW * u32::from(d - 20);
        let out = step(&mut e, announces_slice(dev(1), dev(d), &s), t0);
        let Some(id) = out.iter().find_map(|o| match o {
            Output::Fetch { id, peer, .. } if *peer == dev(1) => Some(*id),
            _ => None,
        }) else {
            continue;
        };
        let out = step(&mut e, Input::RequestFailed { peer: dev(1), id }, t0);
        next.extend(out.iter().filter_map(|o| match o {
            Output::Fetch { peer, .. } => Some(*peer),
            _ => None,
        }));
    }
    assert!(!next.contains(&dev(1)));
    assert!(next.len() >= 4, "retries went to {} peers", next.len());
}

/// The engine's own timers, fired in order: tests of when the engine acts follow its
/// schedule instead of a fixed tick (with watch liveness most timers are one-shots).
#[derive(Default)]
struct Timers(Vec<(Instant, Timer)>);

impl Timers {
    /// Notes the timers that `out`, produced at `now`, schedules.
    fn note(&mut self, now: Instant, out: &[Output]) {
        for o in out {
            if let Output::Schedule { after, timer } = o {
                self.0.push((now + *after, *timer));
            }
        }
    }

    /// Fires every timer due up to `end`, in order, handing `seen` each one's time and
    /// outputs; how many fired.
    fn run_until(
        &mut self,
        e: &mut Engine,
        end: Instant,
        mut seen: impl FnMut(Instant, &[Output]),
    ) -> usize {
        let mut fired = 0;
        loop {
            self.0.sort_by_key(|(t, _)| *t);
            match self.0.first() {
                Some(&(at, timer)) if at <= end => {
                    self.0.remove(0);
                    fired += 1;
                    let out = step(e, Input::Timer(timer), at);
                    seen(at, &out);
                    self.note(at, &out);
                }
                _ => return fired,
            }
        }
    }

    /// Fires every timer due up to `end`, in order; the times at which `e` sent `peer` its
    /// digest.
    fn digests_until(&mut self, e: &mut Engine, peer: DeviceId, end: Instant) -> Vec<Instant> {
        let mut sent = Vec::new();
        self.run_until(e, end, |at, out| {
            if asks_digest_of(out, peer) > 0 {
                sent.push(at);
            }
        });
        sent
    }
}

/// A started watch engine of `dev(0)` with `dev(1)` connected at the start time, its
/// pending timers noted; `before_start` is handled first, its outputs dropped (as a node
/// does with its listen addresses).
fn watch_engine_with_neighbour(before_start: Option<Input>) -> (Engine, Instant, Timers) {
    let mut e = Engine::new(dev(0), 1, ProtoConfig::default(), 1, Vec::new());
    let t0 = Instant::now();
    if let Some(input) = before_start {
        e.handle(input, t0, &mut Vec::new());
    }
    let mut timers = Timers::default();
    let mut out = Vec::new();
    e.start(t0, &mut out);
    timers.note(t0, &out);
    let out = step(&mut e, Input::Connected { peer: dev(1) }, t0);
    assert_eq!(
        asks_digest_of(&out, dev(1)),
        1,
        "a new neighbour is compared with at once"
    );
    timers.note(t0, &out);
    (e, t0, timers)
}

/// Whole seconds between `from` and each of `times`, and between consecutive ones.
fn gaps_s(from: Instant, times: &[Instant]) -> Vec<u64> {
    let mut last = from;
    times
        .iter()
        .map(|t| {
            let gap = t.saturating_duration_since(last).as_secs_f64().round() as u64;
            last = *t;
            gap
        })
        .collect()
}

#[test]
fn an_idle_node_compares_less_and_less_often_until_something_changes() {
    let (mut e, t0, mut timers) = watch_engine_with_neighbour(None);
    let peer = dev(1);
    // Nothing changes: each comparison doubles the wait, up to `anti_entropy_idle` (8 s).
    let sent = timers.digests_until(&mut e, peer, t0 + Duration::from_millis(33_500));
    assert_eq!(gaps_s(t0, &sent), vec![1, 1, 2, 4, 8, 8, 8]);
    // A comparison that finds a difference brings the short period back.
    let t1 = *sent.last().unwrap() + Duration::from_millis(10);
    let reply = Input::Replied {
        peer,
        id: 999,
        reply: Reply::Digest(DigestReply {
            members: Some(vec![]),
            stores: vec![],
        }),
    };
    let out = step(&mut e, reply, t1);
    timers.note(t1, &out);
    let sent = timers.digests_until(&mut e, peer, t1 + Duration::from_millis(4_500));
    assert_eq!(
        gaps_s(t1, &sent),
        vec![1, 1, 2],
        "compared again at once, then backing off"
    );
    // So does a new member.
    let t2 = *sent.last().unwrap() + Duration::from_millis(10);
    let out = step(&mut e, announces_slice(peer, dev(2), &st("s")), t2);
    timers.note(t2, &out);
    let sent = timers.digests_until(&mut e, peer, t2 + Duration::from_millis(2_500));
    assert_eq!(gaps_s(t2, &sent), vec![1, 1]);
}

#[test]
fn an_idle_watch_node_wakes_only_for_its_redial_tick_and_backed_off_comparisons() {
    let (mut e, t0, mut timers) = watch_engine_with_neighbour(None);
    // Settle (the first announcement, the comparisons backing off), then count.
    timers.run_until(&mut e, t0 + Duration::from_secs(30), |_, _| {});
    let fired_before = timers.0.len();
    let fired = timers.run_until(&mut e, t0 + Duration::from_secs(60), |_, _| {});
    // 30 redial ticks and about 4 comparisons; before one-shot timers, 8 wake-ups a second
    // (240).
    assert!(fired_before <= 3, "{fired_before} timers pending");
    assert!((30..=36).contains(&fired), "{fired} timers fired in 30 s");
}

#[test]
fn an_input_handled_before_start_does_not_stop_the_comparisons() {
    // A node hands its engine the listen addresses before `start`, and drops what that
    // outputs: a timer armed then would never fire.
    let (mut e, t0, mut timers) =
        watch_engine_with_neighbour(Some(Input::ListenAddrs(
            vec!["/ip4/127.0.0.1/tcp/1".into()],
        )));
    let sent = timers.digests_until(&mut e, dev(1), t0 + Duration::from_millis(4_500));
    assert_eq!(gaps_s(t0, &sent), vec![1, 1, 2]);
}

#[test]
fn a_member_held_only_through_its_slices_and_silent_is_accused_even_if_peers_list_it() {
    // A node holds the slice of dev(3) but never had its heartbeat (no address to probe
    // it at), and its only peer holds it the same way, so their member lists agree and
    // no digest answer shows it missing. Once silent long enough it is accused, and
    // removed when nobody refutes.
    let (mut e, t0) = watch_engine();
    let s = st("a");
    step(&mut e, Input::Join(s.clone()), t0);
    step(&mut e, Input::Connected { peer: dev(1) }, t0);
    announce(&mut e, 1, 1, t0);
    let v = Version::new(5, 1);
    step(
        &mut e,
        Input::Slice {
            via: dev(1),
            slice: slice(&s, dev(3), v),
        },
        t0,
    );
    assert_eq!(e.held_version(&s, &dev(3)), Some(v));
    let mut accused_at = None;
    for tick in 1..=20u64 {
        let now = t0 + Duration::from_secs(tick);
        let out = step(&mut e, Input::Timer(Timer::Redial), now);
        if suspects(&out).contains(&dev(3)) {
            accused_at = Some(now);
            break;
        }
    }
    let accused_at = accused_at.expect("the unheard member was never accused");
    assert!(
        accused_at.duration_since(t0) >= Duration::from_secs(5),
        "accused after only {:?} of silence",
        accused_at.duration_since(t0)
    );
    let after = accused_at + ProtoConfig::default().suspect_timeout;
    let out = step(&mut e, Input::Timer(Timer::Expire), after);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Remove { device, .. } if *device == dev(3))),
        "{out:?}"
    );
    assert_eq!(e.held_version(&s, &dev(3)), None);
}

//! A node's own slice version never goes back in its protocol core: a re-publish of an
//! older version (one that first reached nobody) can complete after a newer local write
//! was published. Found by the admin tests' observer, which joined after such a race and
//! was offered the old slice for good (the device's presence digest announced it too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use truffle_actors::proto::{Engine, Heartbeat, Input, Output, ProtoConfig, Want};
use truffle_actors::{DeviceId, StoreId, Version};

fn dev(n: u8) -> DeviceId {
    let mut seed = [0u8; 32];
    seed[0] = n;
    let kp = truffle_actors::identity::Keypair::ed25519_from_bytes(seed).unwrap();
    DeviceId::from(kp.public().to_peer_id())
}

fn step(e: &mut Engine, input: Input, now: Instant) -> Vec<Output> {
    let mut out = Vec::new();
    e.handle(input, now, &mut out);
    out
}

#[test]
fn a_late_republish_of_an_older_version_does_not_roll_the_own_slice_back() {
    let me = dev(0);
    let mut e = Engine::new(me, 7, ProtoConfig::default(), 1, Vec::new());
    let t0 = Instant::now();
    e.start(t0, &mut Vec::new());
    let s = StoreId::new("status").unwrap();
    let (v0, v1) = (Version::new(7, 0), Version::new(7, 1));
    let raw = |v: Version| -> Arc<[u8]> { Arc::from(vec![v.counter as u8; 4]) };
    step(&mut e, Input::Join(s.clone()), t0);
    // v0 reached nobody; a peer's subscription asks for it again.
    step(
        &mut e,
        Input::Published {
            store: s.clone(),
            version: v0,
            raw: raw(v0),
            reached_nobody: true,
        },
        t0,
    );
    let peer = dev(1);
    step(&mut e, Input::Connected { peer }, t0);
    let out = step(
        &mut e,
        Input::Subscribed {
            peer,
            store: s.clone(),
        },
        t0,
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Publish { version, .. } if *version == v0)));
    // A newer write goes out first; the re-publish of v0 completes after it.
    for (v, nobody) in [(v1, false), (v0, false)] {
        step(
            &mut e,
            Input::Published {
                store: s.clone(),
                version: v,
                raw: raw(v),
                reached_nobody: nobody,
            },
            t0,
        );
    }
    assert_eq!(e.held_version(&s, &me), Some(v1));
    // A sync request gets v1, and the next presence announces v1.
    let out = step(
        &mut e,
        Input::Request {
            peer,
            token: 1,
            want: vec![Want {
                store: s.clone(),
                device: Some(me),
            }],
        },
        t0,
    );
    let answered = out.iter().find_map(|o| match o {
        Output::Respond { slices, .. } => Some(slices.clone()),
        _ => None,
    });
    assert_eq!(answered, Some(vec![raw(v1)]));
    let later = t0 + Duration::from_secs(1);
    let out = step(
        &mut e,
        Input::Timer(truffle_actors::proto::Timer::Presence),
        later,
    );
    let hb: Vec<&Heartbeat> = out
        .iter()
        .filter_map(|o| match o {
            Output::PublishHeartbeat(h) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(hb.len(), 1);
    assert_eq!(hb[0].digest, vec![(s, v1)]);
}

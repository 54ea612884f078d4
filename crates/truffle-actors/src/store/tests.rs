use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn dev(n: u8) -> DeviceId {
    // Deterministic ids: keys from fixed seeds.
    let mut seed = [0u8; 32];
    seed[0] = n;
    let kp = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
    DeviceId::from(kp.public().to_peer_id())
}

fn slice(d: DeviceId, inc: u64, c: u64) -> Arc<DeviceSlice<u64>> {
    Arc::new(DeviceSlice {
        device_id: d,
        data: inc * 1000 + c,
        version: Version::new(inc, c),
        updated_at: 0,
    })
}

#[test]
fn older_version_never_overwrites_newer() {
    let mut s = SliceStore::<u64>::with_id(StoreId::new("t").unwrap()).unwrap();
    let d = dev(1);
    assert!(s.apply_remote_slice(slice(d, 1, 5)));
    assert!(!s.apply_remote_slice(slice(d, 1, 4)));
    assert!(!s.apply_remote_slice(slice(d, 1, 5)));
    assert_eq!(s.remote_slices()[&d].version, Version::new(1, 5));
    // a restart (higher incarnation) wins even with a lower counter
    assert!(s.apply_remote_slice(slice(d, 2, 0)));
    assert_eq!(s.remote_slices()[&d].data, 2000);
}

#[test]
fn remove_and_clear() {
    let mut s = SliceStore::<u64>::with_id(StoreId::new("t").unwrap()).unwrap();
    s.apply_remote_slice(slice(dev(1), 1, 1));
    s.apply_remote_slice(slice(dev(2), 1, 1));
    assert!(s
        .remove_remote_slice(&dev(1), RemovalReason::Left)
        .is_some());
    assert!(s
        .remove_remote_slice(&dev(1), RemovalReason::Left)
        .is_none());
    s.clear_remote_slices();
    assert!(s.remote_slices().is_empty());
}

proptest! {
    /// Any order and duplication of deliveries ends in the same state: each device's
    /// highest version.
    #[test]
    fn merge_is_order_and_duplicate_insensitive(
        deliveries in proptest::collection::vec((0u8..4, 1u64..3, 0u64..6), 0..40),
        seed in any::<u64>(),
    ) {
        let mut a = SliceStore::<u64>::with_id(StoreId::new("t").unwrap()).unwrap();
        let mut b = SliceStore::<u64>::with_id(StoreId::new("t").unwrap()).unwrap();
        for &(d, i, c) in &deliveries {
            a.apply_remote_slice(slice(dev(d), i, c));
        }
        // b: reversed, rotated and every delivery twice
        let mut shuffled: Vec<_> = deliveries.iter().rev().cloned().collect();
        if !shuffled.is_empty() {
            let k = (seed as usize) % shuffled.len();
            shuffled.rotate_left(k);
        }
        for &(d, i, c) in shuffled.iter().chain(shuffled.iter()) {
            b.apply_remote_slice(slice(dev(d), i, c));
        }
        let va: Vec<_> = a.remote_slices().values().map(|s| (s.device_id, s.version, s.data)).collect();
        let vb: Vec<_> = b.remote_slices().values().map(|s| (s.device_id, s.version, s.data)).collect();
        prop_assert_eq!(&va, &vb);
        for (d, v, _) in va {
            let max = deliveries.iter().filter(|x| dev(x.0) == d).map(|x| Version::new(x.1, x.2)).max().unwrap();
            prop_assert_eq!(v, max);
        }
    }
}

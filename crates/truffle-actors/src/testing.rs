//! Test support (feature `test-hooks`): build signed slices by hand.

use libp2p::identity::Keypair;

use crate::ids::{DeviceId, StoreId, Version};

/// Encodes `data` as a slice of `device` in `store`, signed with `key` (which need not be
/// `device`'s key: that is how tests forge).
pub fn signed_slice<T: serde::Serialize>(
    key: &Keypair,
    store: &StoreId,
    device: DeviceId,
    version: Version,
    data: &T,
) -> Vec<u8> {
    let data = rmp_serde::to_vec_named(data).expect("test data encodes");
    crate::wire::encode_slice(key, store, device, version, 0, data).expect("test slice encodes")
}

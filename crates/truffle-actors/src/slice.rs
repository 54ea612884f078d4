//! A device's slice of a store.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, Version};

/// One device's data in one store, with its version.
///
/// Only the owning device writes it; everyone else holds a read-only copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceSlice<T> {
    /// The device that owns (and alone writes) this slice.
    pub device_id: DeviceId,
    /// The user's data.
    pub data: T,
    /// The slice's version; newer versions replace older ones everywhere.
    pub version: Version,
    /// When the owner wrote this version, in milliseconds since the Unix epoch (the
    /// owner's clock: informative only, never used for ordering).
    pub updated_at: u64,
}

/// Milliseconds since the Unix epoch, 0 if the clock is before it.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

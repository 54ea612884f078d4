//! A store actor's inbox for remote inputs: one slot per device, last write wins.
//!
//! Remote slices are last-write-wins per device, so a store that falls behind (a slow
//! [`on_event`](super::SyncableStore::on_event), a member writing very fast) needs only
//! the newest slice of each device, not every version in between. The gossip actor puts
//! inputs here instead of into the actor's unbounded mailbox; the actor is woken once
//! when the inbox goes from empty to non-empty and takes one device's slot per message,
//! so local writes interleave with the backlog, the backlog never holds more than one
//! entry per device, and a slow store delays only itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::actor::StoreInput;
use super::RemovalReason;
use crate::ids::DeviceId;
use crate::metrics::{inc, Counters};
use crate::wire::VerifiedSlice;

/// What is pending for one device: a removal (applied first) and the newest slice that
/// came after it.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub remove: Option<RemovalReason>,
    pub remote: Option<VerifiedSlice>,
}

#[derive(Default)]
struct Pending {
    slots: HashMap<DeviceId, Slot>,
    /// Devices with a slot, in the order their slot was opened.
    order: VecDeque<DeviceId>,
}

/// See the [module docs](self).
pub(crate) struct Inbox {
    pending: Mutex<Pending>,
    /// Counts the inputs replaced before the store took them.
    counters: Arc<Counters>,
}

impl Inbox {
    pub fn new(counters: Arc<Counters>) -> Self {
        Self {
            pending: Mutex::default(),
            counters,
        }
    }

    /// Puts `input` in its device's slot, replacing an older slice (a removal drops a
    /// pending slice, and a slice after a removal is kept beside it). Returns true if the
    /// inbox was empty: the caller must wake the actor.
    pub fn put(&self, input: StoreInput) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = p.order.is_empty();
        let device = match &input {
            StoreInput::Remote(v) => v.device,
            StoreInput::Remove { device, .. } => *device,
        };
        let mut opened = false;
        let superseded;
        let slot = p.slots.entry(device).or_insert_with(|| {
            opened = true;
            Slot::default()
        });
        match input {
            StoreInput::Remote(v) => {
                // The engine delivers only newer versions; keep the newest regardless.
                superseded = slot.remote.is_some();
                if slot
                    .remote
                    .as_ref()
                    .is_none_or(|held| held.version < v.version)
                {
                    slot.remote = Some(v);
                }
            }
            StoreInput::Remove { reason, .. } => {
                superseded = slot.remote.take().is_some();
                slot.remove = Some(reason);
            }
        }
        if opened {
            p.order.push_back(device);
        }
        if superseded {
            inc(&self.counters.store_coalesced);
        }
        was_empty
    }

    /// Takes the oldest device's slot; the flag says whether more remain (then the actor
    /// must wake itself again: no one else will).
    pub fn take(&self) -> Option<(DeviceId, Slot, bool)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let device = p.order.pop_front()?;
        let slot = p.slots.remove(&device).unwrap_or_default();
        Some((device, slot, !p.order.is_empty()))
    }

    /// Devices with something pending.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .order
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::ids::{StoreId, Version};

    fn dev() -> DeviceId {
        DeviceId::from(libp2p::PeerId::random())
    }

    fn remote(device: DeviceId, c: u64) -> StoreInput {
        StoreInput::Remote(VerifiedSlice {
            store: StoreId::new("s").unwrap(),
            device,
            version: Version::new(1, c),
            updated_at: 0,
            data: Arc::from(&[][..]),
            raw: Arc::from(&[][..]),
        })
    }

    #[test]
    fn a_flood_of_one_device_is_one_slot_holding_its_newest_slice() {
        let inbox = Inbox::new(Arc::default());
        let (a, b) = (dev(), dev());
        assert!(inbox.put(remote(a, 1)));
        for c in 2..=10_000 {
            assert!(!inbox.put(remote(a, c)));
        }
        assert!(!inbox.put(remote(b, 1)));
        assert_eq!(inbox.len(), 2);
        assert_eq!(inbox.counters.store_coalesced.load(Relaxed), 9_999);
        let (d, slot, more) = inbox.take().unwrap();
        assert_eq!((d, more), (a, true));
        assert_eq!(slot.remote.unwrap().version, Version::new(1, 10_000));
        let (d, _, more) = inbox.take().unwrap();
        assert_eq!((d, more), (b, false));
        assert!(inbox.take().is_none());
        // Empty again: the next input wakes the actor.
        assert!(inbox.put(remote(a, 10_001)));
    }

    #[test]
    fn removals_are_never_lost_and_keep_their_order_with_slices() {
        let inbox = Inbox::new(Arc::default());
        let d = dev();
        // A slice then a removal: only the removal.
        inbox.put(remote(d, 1));
        inbox.put(StoreInput::Remove {
            device: d,
            reason: RemovalReason::Timeout,
        });
        let (_, slot, _) = inbox.take().unwrap();
        assert_eq!(slot.remove, Some(RemovalReason::Timeout));
        assert!(slot.remote.is_none());
        // A removal then a slice (the device came back): both, the removal first.
        inbox.put(StoreInput::Remove {
            device: d,
            reason: RemovalReason::Restarted,
        });
        inbox.put(remote(d, 2));
        let (_, slot, _) = inbox.take().unwrap();
        assert_eq!(slot.remove, Some(RemovalReason::Restarted));
        assert_eq!(slot.remote.unwrap().version, Version::new(1, 2));
    }
}

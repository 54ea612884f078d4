//! The gossip actor's inbound queue from the swarm task.
//!
//! The swarm task verifies messages as fast as the network brings them; the gossip actor
//! hands each to the protocol core. When the actor falls behind (a loaded machine, a
//! flood), a plain mailbox would grow without bound. Instead, what a newer message makes
//! useless is replaced where it waits: one slot per device for heartbeats, one per device
//! and store for slices (the latest version), one per accuser and accused for accusations.
//! So the backlog is bounded by what membership admits, whatever the rate, and drains
//! once the actor catches up. Other inputs (connections, answers, requests) keep their
//! order; they are bounded by the connection limits and the requests in flight. The actor
//! is woken once when the inbox goes from empty to not empty, and takes a batch at a time,
//! so its timers and local commands interleave with a long backlog (the store actors'
//! inboxes work the same way, see [`crate::store`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::ids::{DeviceId, StoreId};
use crate::metrics::{inc, Counters};
use crate::proto::{Heartbeat, Input, Slice, Suspicion};

/// Most inputs the actor takes per wake-up.
pub(crate) const BATCH: usize = 256;

/// Where an input waits: in its slot (found by key) or in the queue itself.
enum Entry {
    Heartbeat(DeviceId),
    Slice(DeviceId, StoreId),
    Suspect(DeviceId, DeviceId),
    Other(Input),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Entry>,
    heartbeats: HashMap<DeviceId, (DeviceId, Arc<Heartbeat>)>,
    slices: HashMap<(DeviceId, StoreId), (DeviceId, Slice)>,
    suspects: HashMap<(DeviceId, DeviceId), Suspicion>,
}

/// The swarm task's side puts, the gossip actor's side takes. See the module docs.
pub(crate) struct Inbox {
    state: Mutex<State>,
    /// Counts the inputs replaced before the actor took them (`inputs_coalesced`).
    counters: Arc<Counters>,
}

impl Inbox {
    pub fn new(counters: Arc<Counters>) -> Self {
        Self {
            state: Mutex::default(),
            counters,
        }
    }

    /// Queues `input`, or replaces the older input in its slot. Returns true if the inbox
    /// was empty: the caller must wake the actor.
    pub fn put(&self, input: Input) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = s.queue.is_empty();
        let State {
            queue,
            heartbeats,
            slices,
            suspects,
        } = &mut *s;
        let replaced = match input {
            Input::Heartbeat { via, heartbeat } => slot(
                heartbeats,
                queue,
                heartbeat.device,
                (via, heartbeat),
                |new, held| (new.1.incarnation, new.1.seq) > (held.1.incarnation, held.1.seq),
                Entry::Heartbeat,
            ),
            Input::Slice { via, slice } => slot(
                slices,
                queue,
                (slice.device, slice.store.clone()),
                (via, slice),
                |new, held| new.1.version > held.1.version,
                |(device, store)| Entry::Slice(device, store),
            ),
            Input::Suspect { accuser, suspicion } => slot(
                suspects,
                queue,
                (accuser, suspicion.device),
                suspicion,
                |new, held| (new.incarnation, new.seq) > (held.incarnation, held.seq),
                |(accuser, device)| Entry::Suspect(accuser, device),
            ),
            other => {
                queue.push_back(Entry::Other(other));
                false
            }
        };
        if replaced {
            inc(&self.counters.inputs_coalesced);
        }
        was_empty
    }

    /// Takes up to [`BATCH`] inputs, oldest first (a slot at the place of its first
    /// input); the flag says whether more remain (then the actor must wake itself again:
    /// no one else will).
    pub fn take(&self) -> (Vec<Input>, bool) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = s.queue.len().min(BATCH);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let Some(e) = s.queue.pop_front() else {
                break;
            };
            let input = match e {
                Entry::Heartbeat(d) => s
                    .heartbeats
                    .remove(&d)
                    .map(|(via, heartbeat)| Input::Heartbeat { via, heartbeat }),
                Entry::Slice(d, store) => s
                    .slices
                    .remove(&(d, store))
                    .map(|(via, slice)| Input::Slice { via, slice }),
                Entry::Suspect(accuser, device) => s
                    .suspects
                    .remove(&(accuser, device))
                    .map(|suspicion| Input::Suspect { accuser, suspicion }),
                Entry::Other(input) => Some(input),
            };
            out.extend(input);
        }
        (out, !s.queue.is_empty())
    }
}

/// Puts `value` in `key`'s slot of `slots`, replacing what it holds if `newer` says so,
/// or opens the slot at the end of `queue`. Returns whether the slot was already open.
fn slot<K: std::hash::Hash + Eq + Clone, V>(
    slots: &mut HashMap<K, V>,
    queue: &mut VecDeque<Entry>,
    key: K,
    value: V,
    newer: impl Fn(&V, &V) -> bool,
    entry: impl FnOnce(K) -> Entry,
) -> bool {
    match slots.get_mut(&key) {
        Some(held) => {
            if newer(&value, held) {
                *held = value;
            }
            true
        }
        None => {
            slots.insert(key.clone(), value);
            queue.push_back(entry(key));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::ids::Version;

    fn dev(n: u8) -> DeviceId {
        let mut seed = [0u8; 32];
        seed[0] = n;
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
        DeviceId::from(kp.public().to_peer_id())
    }

    fn heartbeat(device: DeviceId, seq: u64) -> Input {
        Input::Heartbeat {
            via: dev(9),
            heartbeat: Arc::new(Heartbeat {
                device,
                incarnation: 1,
                seq,
                addrs: vec![],
                partial: false,
                digest: vec![],
            }),
        }
    }

    fn slice(device: DeviceId, counter: u64) -> Input {
        Input::Slice {
            via: dev(9),
            slice: Slice {
                store: StoreId::new("s").unwrap(),
                device,
                version: Version::new(1, counter),
                updated_at: 0,
                data: Arc::from(&b"\x90"[..]),
                raw: Arc::from(&b"x"[..]),
            },
        }
    }

    #[test]
    fn a_flood_keeps_one_slot_per_device_with_its_latest_input_and_wakes_once() {
        let inbox = Inbox::new(Arc::default());
        assert!(
            inbox.put(heartbeat(dev(1), 1)),
            "the first input wakes the actor"
        );
        for i in 0..1000u64 {
            // Versions in any order: the newest stays.
            let counter = if i % 2 == 0 { 1000 - i } else { i };
            assert!(
                !inbox.put(slice(dev(2), counter)),
                "not again until it takes"
            );
            assert!(!inbox.put(heartbeat(dev(1), 2 + i)));
        }
        assert!(!inbox.put(Input::Leave));
        // An older heartbeat arriving late does not replace the newer one.
        assert!(!inbox.put(heartbeat(dev(1), 3)));
        let (got, more) = inbox.take();
        assert!(!more);
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0], Input::Heartbeat { heartbeat, .. } if heartbeat.seq == 1001));
        assert!(matches!(&got[1], Input::Slice { slice, .. } if slice.version.counter == 1000));
        assert!(matches!(got[2], Input::Leave));
        assert_eq!(inbox.counters.inputs_coalesced.load(Relaxed), 2000);
        assert!(inbox.take().0.is_empty());
        assert!(
            inbox.put(heartbeat(dev(1), 5000)),
            "taken: the next input wakes again"
        );
    }

    #[test]
    fn a_long_backlog_is_taken_a_batch_at_a_time_in_order() {
        let inbox = Inbox::new(Arc::default());
        let devices: Vec<DeviceId> = (0..300u16)
            .map(|_| DeviceId::from(libp2p::PeerId::random()))
            .collect();
        for seq in 1..=2 {
            for d in &devices {
                inbox.put(heartbeat(*d, seq));
            }
        }
        let (first, more) = inbox.take();
        assert_eq!(first.len(), BATCH);
        assert!(more, "the actor wakes itself for the rest");
        let (rest, more) = inbox.take();
        assert_eq!(rest.len(), 300 - BATCH);
        assert!(!more);
        let order: Vec<DeviceId> = first
            .iter()
            .chain(&rest)
            .map(|i| match i {
                Input::Heartbeat { heartbeat, .. } => {
                    assert_eq!(heartbeat.seq, 2, "the newest of each device");
                    heartbeat.device
                }
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(order, devices, "in the order each device first came");
    }
}

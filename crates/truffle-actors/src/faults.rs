//! Fault injection for tests (inbound loss and emulated partitions). Inert unless a test
//! sets it through the `test-hooks` feature's `MeshNode::test_*` methods.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

#[derive(Default)]
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub(crate) struct Faults {
    /// Fraction of inbound gossip messages to drop, 0.0 to 1.0.
    pub drop_fraction: f64,
    /// Peers whose messages (sent or relayed) are dropped: one side of a partition.
    pub blocked: HashSet<PeerId>,
    /// Messages dropped so far, so a test can check that the fault really happened.
    pub dropped: u64,
    /// How long the gossip actor waits per input it takes from its inbox: a slow
    /// protocol core, as on a loaded machine.
    pub engine_delay: std::time::Duration,
    /// Picks the messages to lose; seeded by the test (the same generator as the
    /// protocol core's, so a seed replays the same losses).
    rng: Option<Xoshiro256PlusPlus>,
}

pub(crate) type FaultHandle = Arc<Mutex<Faults>>;

#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
impl Faults {
    /// Whether to drop a message that involves `peers` (forwarder, origin).
    pub fn drop_inbound(&mut self, peers: &[PeerId]) -> bool {
        let drop = self.decide(peers);
        self.dropped += u64::from(drop);
        drop
    }

    fn decide(&mut self, peers: &[PeerId]) -> bool {
        if peers.iter().any(|p| self.blocked.contains(p)) {
            return true;
        }
        if self.drop_fraction <= 0.0 {
            return false;
        }
        self.rng
            .get_or_insert_with(|| Xoshiro256PlusPlus::seed_from_u64(0))
            .random::<f64>()
            < self.drop_fraction
    }

    pub fn seed(&mut self, seed: u64) {
        self.rng = Some(Xoshiro256PlusPlus::seed_from_u64(seed));
    }
}

/// Whether to drop an inbound gossip message that involves `peers`. Without the
/// `test-hooks` feature nothing can set a fault, so this is a constant `false` and the hot
/// path takes no lock.
#[cfg(feature = "test-hooks")]
pub(crate) fn drop_inbound(faults: &FaultHandle, peers: &[PeerId]) -> bool {
    faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drop_inbound(peers)
}

#[cfg(not(feature = "test-hooks"))]
pub(crate) fn drop_inbound(_: &FaultHandle, _: &[PeerId]) -> bool {
    false
}

/// Whether `peer` is on the other side of an emulated partition (direct requests and
/// answers from it are dropped; random loss applies to gossip only).
#[cfg(feature = "test-hooks")]
pub(crate) fn blocked(faults: &FaultHandle, peer: &PeerId) -> bool {
    faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .blocked
        .contains(peer)
}

#[cfg(not(feature = "test-hooks"))]
pub(crate) fn blocked(_: &FaultHandle, _: &PeerId) -> bool {
    false
}

//! What one peer's sync requests may cost this node at a time: how many are being
//! answered, and how many bytes of answers are on their way to it.
//!
//! A request is charged from its arrival until libp2p reports its answer sent or failed
//! (`ResponseSent` or `InboundFailure`: the peer read it, the connection closed, or the
//! stream timed out). A peer that sends requests and never reads the answers holds its
//! budget for the request timeout, and no more than its budget.

use std::collections::HashMap;
use std::hash::Hash;

/// Most sync requests of one peer answered at a time: 32. Past it, a request is
/// answered at once with no slices, and counted in
/// [`Metrics::sync_over_budget`](crate::Metrics::sync_over_budget).
///
/// An honest node asks one peer for one store's slices when that peer joins the store, and
/// for the slices a presence announced, one request per presence: a node joining many
/// stores at once can exceed it, and gets the rest through anti-entropy.
pub(crate) const MAX_INBOUND_REQUESTS_PER_PEER: usize = 32;

/// Most bytes of answers on their way to one peer at a time: 64 MiB, one maximal answer
/// (`max_response_bytes`). An answer that would exceed it carries only the slices that fit (none when the
/// peer's budget is spent) and is counted in
/// [`Metrics::sync_over_budget`](crate::Metrics::sync_over_budget); the asker gets the
/// rest from another peer or through anti-entropy.
pub(crate) const MAX_ANSWER_BYTES_IN_FLIGHT_PER_PEER: usize = 64 * 1024 * 1024;

/// The per-peer budget of inbound sync requests. `P` names a peer, `R` a request.
#[derive(Debug)]
pub(crate) struct InboundBudget<P, R> {
    max_requests: usize,
    max_bytes: usize,
    /// Requests charged, with their peer and the bytes of their answer (0 until answered).
    requests: HashMap<R, (P, usize)>,
    /// Per peer with something charged: (requests, bytes).
    peers: HashMap<P, (usize, usize)>,
}

impl<P: Copy + Eq + Hash, R: Copy + Eq + Hash> Default for InboundBudget<P, R> {
    /// [`MAX_INBOUND_REQUESTS_PER_PEER`] and [`MAX_ANSWER_BYTES_IN_FLIGHT_PER_PEER`].
    fn default() -> Self {
        Self::new(
            MAX_INBOUND_REQUESTS_PER_PEER,
            MAX_ANSWER_BYTES_IN_FLIGHT_PER_PEER,
        )
    }
}

impl<P: Copy + Eq + Hash, R: Copy + Eq + Hash> InboundBudget<P, R> {
    pub(crate) fn new(max_requests: usize, max_bytes: usize) -> Self {
        Self {
            max_requests,
            max_bytes,
            requests: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    /// Charges a new request of `peer`; false (nothing charged) when the peer already has
    /// its most requests being answered.
    pub(crate) fn admit(&mut self, peer: P, request: R) -> bool {
        let load = self.peers.entry(peer).or_default();
        if load.0 >= self.max_requests {
            if load.0 == 0 {
                self.peers.remove(&peer);
            }
            return false;
        }
        load.0 += 1;
        self.requests.insert(request, (peer, 0));
        true
    }

    /// How many of `sizes` (the answer's slices, in order) fit the budget of the request's
    /// peer, charging their bytes. `None` when the request is no longer charged: it
    /// already failed, and nothing will be sent.
    pub(crate) fn fit(
        &mut self,
        request: R,
        sizes: impl IntoIterator<Item = usize>,
    ) -> Option<usize> {
        let (peer, charged) = self.requests.get_mut(&request)?;
        let load = self.peers.get_mut(peer)?;
        let mut n = 0;
        for size in sizes {
            if load.1.saturating_add(size) > self.max_bytes {
                break;
            }
            load.1 += size;
            *charged += size;
            n += 1;
        }
        Some(n)
    }

    /// The request's answer was sent, or it failed: its peer's budget is freed.
    pub(crate) fn release(&mut self, request: R) {
        let Some((peer, bytes)) = self.requests.remove(&request) else {
            return;
        };
        if let Some(load) = self.peers.get_mut(&peer) {
            load.0 = load.0.saturating_sub(1);
            load.1 = load.1.saturating_sub(bytes);
            if load.0 == 0 {
                self.peers.remove(&peer);
            }
        }
    }

    /// (requests, bytes) charged to `peer` now.
    pub(crate) fn load(&self, peer: P) -> (usize, usize) {
        self.peers.get(&peer).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_past_the_limit_are_refused_until_one_is_released() {
        let mut b = InboundBudget::new(2, 100);
        assert!(b.admit('a', 1));
        assert!(b.admit('a', 2));
        assert!(!b.admit('a', 3), "a third request of one peer");
        assert!(b.admit('b', 4), "another peer has its own budget");
        b.release(1);
        assert!(b.admit('a', 5));
        assert_eq!(b.load('a'), (2, 0));
        b.release(99);
        b.release(1);
        assert_eq!(
            b.load('a'),
            (2, 0),
            "unknown or repeated releases change nothing"
        );
    }

    #[test]
    fn answers_are_cut_to_the_bytes_in_flight_and_freed_when_sent() {
        let mut b = InboundBudget::new(10, 100);
        assert!(b.admit('a', 1));
        assert!(b.admit('a', 2));
        assert_eq!(b.fit(1, [40, 40, 40]), Some(2));
        assert_eq!(b.load('a'), (2, 80));
        assert_eq!(
            b.fit(2, [30, 10]),
            Some(0),
            "the peer's budget has 20 bytes left"
        );
        assert_eq!(b.fit(2, [10, 10, 1]), Some(2));
        b.release(1);
        assert_eq!(b.load('a'), (1, 20));
        b.release(2);
        assert_eq!(b.load('a'), (0, 0));
        assert!(b.peers.is_empty() && b.requests.is_empty(), "nothing kept");
    }

    #[test]
    fn a_request_that_failed_before_its_answer_is_not_charged() {
        let mut b = InboundBudget::new(10, 100);
        assert!(b.admit('a', 1));
        b.release(1);
        assert_eq!(b.fit(1, [10]), None);
        assert_eq!(b.load('a'), (0, 0));
    }
}

//! A broadcast channel whose buffer is allocated when the first subscriber comes.
//!
//! `tokio::sync::broadcast::channel` allocates its whole ring at once: with the default
//! 1024 events, about 115 KB for each store and again for the node's events, whether or
//! not anything ever subscribes (a heap profile of 64 idle nodes in one process put the
//! two rings at 0.23 MB per node). Events sent while nobody is subscribed reach nobody
//! either way, so creating the channel on the first `subscribe` changes nothing a
//! subscriber can see.

use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;

/// A cloneable sender whose channel exists once something has subscribed.
#[derive(Debug)]
pub(crate) struct LazySender<T> {
    capacity: usize,
    tx: Arc<OnceLock<broadcast::Sender<T>>>,
}

impl<T> Clone for LazySender<T> {
    fn clone(&self) -> Self {
        Self {
            capacity: self.capacity,
            tx: self.tx.clone(),
        }
    }
}

impl<T: Clone> LazySender<T> {
    /// A sender for a channel of `capacity` events (at least 1), not yet allocated.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tx: Arc::new(OnceLock::new()),
        }
    }

    /// Sends to the current subscribers, if any (none is not an error).
    pub fn send(&self, event: T) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(event);
        }
    }

    /// Subscribes, allocating the channel the first time.
    pub fn subscribe(&self) -> broadcast::Receiver<T> {
        self.tx
            .get_or_init(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// Open subscriptions.
    pub fn receiver_count(&self) -> usize {
        self.tx.get().map_or(0, |tx| tx.receiver_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_allocated_or_kept_before_the_first_subscriber() {
        let tx = LazySender::new(4);
        tx.send(1);
        assert!(tx.tx.get().is_none());
        assert_eq!(tx.receiver_count(), 0);
        let mut rx = tx.clone().subscribe();
        assert_eq!(tx.receiver_count(), 1);
        tx.send(2);
        assert_eq!(rx.try_recv(), Ok(2));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn clones_share_one_channel() {
        let a = LazySender::new(4);
        let b = a.clone();
        let mut rx = b.subscribe();
        a.send(7);
        assert_eq!(rx.try_recv(), Ok(7));
    }
}

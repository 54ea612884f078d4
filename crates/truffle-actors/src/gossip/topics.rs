//! Which gossipsub topics a node takes part in, and which of its peers' subscriptions it
//! keeps: one shared set of joined topics, consulted by gossipsub's inbound transform
//! (messages, [`JoinedTopicsOnly`]) and by its subscription filter (subscriptions,
//! [`SubscriptionFilter`]), with a thin wrapper around gossipsub ([`PeerAware`]) that tells
//! the filter whose subscriptions it is judging.
//!
//! A peer may subscribe to any topic, and gossipsub keeps every subscription it lets
//! through (for each peer, until it disconnects) and reports each as an event. Unfiltered
//! (issue 12), 50 peers announcing 10,000 topics each and churning them cost a node 270 MB
//! and 75 % of a core. The filter keeps the presence topic and the topics of joined stores, and,
//! per peer, at most `max_unjoined` topics of stores this node has not joined (yet).
//! Those few cannot be dropped too: gossipsub announces a node's subscriptions once, when
//! it connects or subscribes, so a peer's subscription to a store this node joins later
//! would be lost for good, and this node would not know whom to publish that store's
//! slices to. Topics that are not store topics at all are never kept. A connection whose
//! peer had more than [`MAX_REFUSED_PER_CONNECTION`] subscriptions refused (twice what an
//! honest peer can announce) is closed: each one costs the swarm task work.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::gossipsub::{
    self, DataTransform, IdentTopic, RawMessage, TopicHash, TopicSubscriptionFilter,
};
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::conduct::PeerConduct;
use crate::ids::StoreId;
use crate::metrics::{inc, Counters};
use crate::wire::{PRESENCE_TOPIC, STORE_TOPIC_PREFIX};

/// Most topics of stores this node has not joined that it keeps of one peer's
/// subscriptions (for a later join here). An honest peer announces the stores it joined;
/// this is how many of those this node may not have joined yet.
pub(crate) const MAX_UNJOINED_TOPICS_PER_PEER: usize = 256;

/// Most subscriptions (and unsubscriptions) of one peer's connection that the filter may
/// refuse before the connection is closed. An honest peer announces each of its topics
/// once per connection, and a node takes part in at most
/// [`MAX_TOPICS_PER_PEER`](crate::wire::MAX_TOPICS_PER_PEER) (1,001) topics, so an honest
/// peer stays under this even when this node shares none of its stores; a peer past it is
/// churning subscriptions, and each one costs this node's swarm task work. (A message with
/// more subscriptions than that is ignored whole by gossipsub, before this filter.)
pub(crate) const MAX_REFUSED_PER_CONNECTION: usize = 2 * crate::wire::MAX_TOPICS_PER_PEER;

/// What the filter knows of one peer.
#[derive(Debug, Default)]
struct PeerTopics {
    /// The topics of stores not joined here that the filter let through.
    unjoined: HashSet<TopicHash>,
    /// Subscriptions refused since the peer connected.
    refused: usize,
}

#[derive(Debug)]
struct State {
    /// The presence topic and every joined store's topic.
    joined: HashSet<TopicHash>,
    /// The peer whose gossipsub message is being handled, set by [`PeerAware`] around it.
    current: Option<PeerId>,
    peers: HashMap<PeerId, PeerTopics>,
    max_unjoined: usize,
    /// Peers past [`MAX_REFUSED_PER_CONNECTION`], whose connections [`PeerAware`] closes.
    to_close: Vec<PeerId>,
    /// When a closing was last logged at `warn` (at most one every 5 s; the rest at
    /// `debug`).
    last_warn: Option<std::time::Instant>,
}

/// The shared topic state. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub(crate) struct Topics(Arc<Mutex<State>>);

impl Topics {
    /// The presence topic only, until stores are joined; at most `max_unjoined`
    /// subscriptions of each peer to stores not joined here are kept.
    pub fn new(max_unjoined: usize) -> Self {
        let presence = IdentTopic::new(PRESENCE_TOPIC).hash();
        Self(Arc::new(Mutex::new(State {
            joined: HashSet::from([presence]),
            current: None,
            peers: HashMap::new(),
            max_unjoined,
            to_close: Vec::new(),
            last_warn: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes part in `topic` from now on: its messages are accepted and every peer's
    /// subscription to it is kept. Call before subscribing to it, so that nothing sent on
    /// it after the subscription is dropped.
    pub fn join(&self, topic: TopicHash) {
        let mut s = self.lock();
        for p in s.peers.values_mut() {
            p.unjoined.remove(&topic);
        }
        s.joined.insert(topic);
    }

    /// Whether this node takes part in `topic` (the presence topic or a joined store's).
    pub fn is_joined(&self, topic: &TopicHash) -> bool {
        self.lock().joined.contains(topic)
    }

    /// Whether this node takes part in `topic`, and the peer whose gossipsub message is
    /// being handled (set by [`PeerAware`]; `None` outside one).
    fn judge(&self, topic: &TopicHash) -> (bool, Option<PeerId>) {
        let s = self.lock();
        (s.joined.contains(topic), s.current)
    }

    /// Topics of stores not joined here kept for `peer` (tests).
    #[cfg(test)]
    fn unjoined_of(&self, peer: &PeerId) -> usize {
        self.lock().peers.get(peer).map_or(0, |p| p.unjoined.len())
    }
}

/// Drops gossip on topics this node has not joined before gossipsub caches it.
///
/// gossipsub 0.50.1 (`Behaviour::handle_received_message`) puts every received message in
/// its message cache, where it stays for `history_length` heartbeats (2.5 s here), and
/// only then checks whether this node subscribes to the message's topic; a message on
/// any other topic is never validated or delivered, but it is held all the same. So a
/// peer sending large messages on topics nobody here joined grew a node's memory by
/// gigabytes. The inbound data transform is the one hook gossipsub runs before that
/// cache: this one fails every message whose topic is not the presence topic or a joined
/// store's, so gossipsub drops it on the spot (as a transform failure: no cache, no
/// duplicate entry, no IDONTWANT, no forwarding). Each is counted as
/// [`RejectReason::UnjoinedTopic`](crate::wire::RejectReason::UnjoinedTopic). Honest
/// peers send a node only messages on topics it subscribed to, so only junk lands here,
/// and it costs its sender points in the [`PeerConduct`] ledger.
///
/// It is also the one place that sees every gossip message a peer sends (duplicates
/// included), so it counts each peer's inbound messages and bytes there.
#[derive(Clone)]
pub(crate) struct JoinedTopicsOnly {
    pub topics: Topics,
    pub counters: Arc<Counters>,
    pub conduct: PeerConduct,
}

impl DataTransform for JoinedTopicsOnly {
    fn inbound_transform(&self, raw: RawMessage) -> std::io::Result<gossipsub::Message> {
        let (joined, peer) = self.topics.judge(&raw.topic);
        if let Some(peer) = peer {
            let now = std::time::Instant::now();
            self.conduct.inbound(peer, raw.data.len(), joined, now);
        }
        if !joined {
            // The topic is the sender's text: keep the log line short.
            let topic: String = raw.topic.as_str().chars().take(80).collect();
            let reason = crate::wire::RejectReason::UnjoinedTopic;
            match peer {
                Some(peer) => self.counters.reject(reason, &peer, &topic),
                None => self.counters.reject(reason, &"a gossip peer", &topic),
            }
            return Err(std::io::Error::other("a topic this node has not joined"));
        }
        Ok(gossipsub::Message {
            source: raw.source,
            data: raw.data,
            sequence_number: raw.sequence_number,
            topic: raw.topic,
        })
    }

    fn outbound_transform(&self, _: &TopicHash, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
        Ok(data)
    }
}

/// gossipsub's subscription filter: which of a peer's subscriptions gossipsub records.
/// See the [module docs](self). Wrapped in gossipsub's own `MaxCountSubscriptionFilter`
/// for the count caps per peer and per message.
///
/// gossipsub calls it once per subscription (and per unsubscription: it cannot tell
/// which), so a topic already kept for the peer is always let through, which lets the
/// peer unsubscribe from it.
pub(crate) struct SubscriptionFilter {
    pub topics: Topics,
    pub counters: Arc<Counters>,
}

impl TopicSubscriptionFilter for SubscriptionFilter {
    fn can_subscribe(&mut self, topic: &TopicHash) -> bool {
        let mut s = self.topics.lock();
        if s.joined.contains(topic) {
            return true;
        }
        // This node's own subscriptions: only to topics it joined first.
        let Some(peer) = s.current else {
            return false;
        };
        let max = s.max_unjoined;
        let p = s.peers.entry(peer).or_default();
        // Cheapest checks first: a churning peer sends thousands per message.
        if p.refused <= MAX_REFUSED_PER_CONNECTION {
            if p.unjoined.contains(topic) {
                return true;
            }
            let is_store = || {
                topic
                    .as_str()
                    .strip_prefix(STORE_TOPIC_PREFIX)
                    .is_some_and(|id| StoreId::new(id).is_ok())
            };
            if p.unjoined.len() < max && is_store() {
                p.unjoined.insert(topic.clone());
                return true;
            }
            p.refused += 1;
            if p.refused > MAX_REFUSED_PER_CONNECTION {
                s.to_close.push(peer);
                let now = std::time::Instant::now();
                let loud = s
                    .last_warn
                    .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(5));
                if loud {
                    s.last_warn = Some(now);
                    tracing::warn!(%peer, refused = MAX_REFUSED_PER_CONNECTION, "closing the connection of a peer that keeps subscribing to topics this node does not keep (further closings are logged at debug for 5 s)");
                } else {
                    tracing::debug!(%peer, refused = MAX_REFUSED_PER_CONNECTION, "closing the connection of a peer that keeps subscribing to topics this node does not keep");
                }
            }
        }
        drop(s);
        inc(&self.counters.subscriptions_refused);
        false
    }
}

/// gossipsub, with the subscription filter told which peer's message gossipsub is
/// handling (gossipsub's filter interface does not say), and with the filter's record of
/// each peer's subscriptions kept in step with gossipsub's own (unsubscriptions,
/// disconnections). Everything else is gossipsub's, unchanged: it derefs to the
/// behaviour.
pub(crate) struct PeerAware<F: TopicSubscriptionFilter + Send + 'static> {
    pub inner: gossipsub::Behaviour<JoinedTopicsOnly, F>,
    pub topics: Topics,
}

impl<F: TopicSubscriptionFilter + Send + 'static> std::ops::Deref for PeerAware<F> {
    type Target = gossipsub::Behaviour<JoinedTopicsOnly, F>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<F: TopicSubscriptionFilter + Send + 'static> std::ops::DerefMut for PeerAware<F> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl<F: TopicSubscriptionFilter + Send + 'static> NetworkBehaviour for PeerAware<F> {
    type ConnectionHandler =
        <gossipsub::Behaviour<JoinedTopicsOnly, F> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(c) = &event {
            if c.remaining_established == 0 {
                self.topics.lock().peers.remove(&c.peer_id);
            }
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.topics.lock().current = Some(peer);
        self.inner.on_connection_handler_event(peer, id, event);
        self.topics.lock().current = None;
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(peer_id) = self.topics.lock().to_close.pop() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::All,
            });
        }
        let event = std::task::ready!(self.inner.poll(cx));
        if let ToSwarm::GenerateEvent(gossipsub::Event::Unsubscribed { peer_id, topic }) = &event {
            if let Some(p) = self.topics.lock().peers.get_mut(peer_id) {
                p.unjoined.remove(topic);
            }
        }
        Poll::Ready(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::store_topic;

    fn topic(s: &str) -> TopicHash {
        IdentTopic::new(s).hash()
    }

    fn store(id: &str) -> TopicHash {
        topic(&store_topic(&StoreId::new(id).unwrap()))
    }

    #[test]
    fn joined_topics_pass_and_each_peer_keeps_a_few_unjoined_store_topics() {
        let topics = Topics::new(3);
        let counters = Arc::new(Counters::default());
        let mut f = SubscriptionFilter {
            topics: topics.clone(),
            counters: counters.clone(),
        };
        let (a, b) = (PeerId::random(), PeerId::random());
        topics.join(store("todos"));
        // This node's own subscriptions: joined topics only.
        assert!(f.can_subscribe(&store("todos")));
        assert!(f.can_subscribe(&topic(PRESENCE_TOPIC)));
        assert!(!f.can_subscribe(&store("other")));

        topics.lock().current = Some(a);
        assert!(f.can_subscribe(&store("todos")));
        assert!(f.can_subscribe(&topic(PRESENCE_TOPIC)));
        // Not store topics at all: never kept.
        assert!(!f.can_subscribe(&topic("junk")));
        assert!(!f.can_subscribe(&topic("truffle/v1/store/bad id")));
        for i in 0..1000 {
            let kept = f.can_subscribe(&store(&format!("s{i}")));
            assert_eq!(kept, i < 3, "topic {i}");
        }
        assert_eq!(topics.unjoined_of(&a), 3);
        // One kept already passes again (it may be an unsubscription).
        assert!(f.can_subscribe(&store("s1")));
        // Another peer has its own allowance.
        topics.lock().current = Some(b);
        assert!(f.can_subscribe(&store("s500")));
        // Joining a store frees its place in every peer's allowance.
        topics.join(store("s1"));
        assert_eq!(topics.unjoined_of(&a), 2);
        topics.lock().current = Some(a);
        assert!(f.can_subscribe(&store("s1")));
        assert!(f.can_subscribe(&store("s999")));
        assert_eq!(
            counters
                .subscriptions_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            2 + 997
        );
    }

    #[test]
    fn a_peer_that_keeps_sending_refused_subscriptions_is_disconnected() {
        let topics = Topics::new(0);
        let counters = Arc::new(Counters::default());
        let mut f = SubscriptionFilter {
            topics: topics.clone(),
            counters: counters.clone(),
        };
        let a = PeerId::random();
        topics.join(store("todos"));
        topics.lock().current = Some(a);
        for i in 0..MAX_REFUSED_PER_CONNECTION {
            assert!(!f.can_subscribe(&store(&format!("s{i}"))));
        }
        assert!(topics.lock().to_close.is_empty());
        assert!(!f.can_subscribe(&store("one-more")));
        assert_eq!(topics.lock().to_close, vec![a]);
        // Joined topics still pass until the connection is closed; nothing else does.
        assert!(f.can_subscribe(&store("todos")));
        assert!(!f.can_subscribe(&store("s1")));
        assert_eq!(topics.lock().to_close.len(), 1);
    }
}

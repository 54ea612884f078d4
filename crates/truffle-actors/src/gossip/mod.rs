//! The gossip actor: one per node. It owns membership (who is live, which versions are
//! held), routes admitted slices to store actors, answers direct sync requests, and drives
//! presence and anti-entropy. The libp2p swarm itself lives in [`swarm::SwarmTask`].

pub(crate) mod membership;
pub(crate) mod swarm;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::request_response::ResponseChannel;
use libp2p::PeerId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};

use self::membership::{Admit, Membership, Removal};
use self::swarm::SwarmCmd;
use crate::error::Error;
use crate::ids::{DeviceId, Incarnation, StoreId, Version};
use crate::metrics::{inc, Counters};
use crate::store::{Outbox, RemovalReason, StoreInput, StoreSink};
use crate::wire::{
    decode_slice, encode_leave, encode_presence, DigestEntry, KeyCache, Leave, Presence,
    PresenceMsg, RejectReason, SyncRequest, SyncResponse, VerifiedSlice, Want, MAX_DIGEST_ENTRIES,
    PROTOCOL_VERSION,
};

/// Most wants honoured from one sync request, and slices accepted from one response.
const MAX_WANTS: usize = 4096;
/// Devices silent (and holding nothing here) for 10 × the presence timeout, and at least
/// this long, are forgotten.
const FORGET_AFTER_MIN: Duration = Duration::from_secs(60);
/// A fetch for the same device and store is not repeated sooner than this.
const REFETCH_AFTER: Duration = Duration::from_secs(1);

/// Events from the swarm task.
pub(crate) enum NetEvent {
    /// A slice from a store topic, signed by its device (relayed by anyone).
    Slice { slice: VerifiedSlice },
    /// Presence or leave, signed by its device; `via` is the peer that forwarded it.
    Presence { via: PeerId, msg: PresenceMsg },
    /// A peer joined one of the store topics.
    Subscribed { peer: PeerId, store: StoreId },
    /// A peer asks for slices.
    Request {
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    },
    /// A peer answered our fetch.
    Response {
        peer: PeerId,
        response: SyncResponse,
    },
    /// No peer asked could give these single-device wants.
    FetchMissed { want: Vec<Want> },
}

pub(crate) enum GossipMsg {
    Join {
        store: StoreId,
        sink: StoreSink,
        outbox: Outbox,
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// The swarm task signed and published a local slice (it takes the outbox itself,
    /// so publishing never waits for this actor): record it for digests and answers.
    Published {
        store: StoreId,
        version: Version,
        raw: Arc<[u8]>,
    },
    Unhold {
        store: StoreId,
        device: DeviceId,
    },
    Net(NetEvent),
    /// Time to announce presence.
    Tick,
    /// Time to check for silent devices (runs more often than `Tick`, so detection is
    /// at most a tenth of the timeout late).
    Expire,
    Leave {
        done: oneshot::Sender<()>,
    },
    /// Test hook: publish arbitrary bytes on a store topic, bypassing every check.
    #[cfg(feature = "test-hooks")]
    RawPublish {
        store: StoreId,
        bytes: Vec<u8>,
    },
}

pub(crate) struct GossipArgs {
    pub me: DeviceId,
    /// Signs this node's slices as they are published.
    pub key: libp2p::identity::Keypair,
    pub incarnation: Incarnation,
    pub presence_interval: Duration,
    pub presence_timeout: Duration,
    /// Largest slice data accepted.
    pub max_slice: usize,
    pub max_response: usize,
    pub counters: Arc<Counters>,
    pub cmds: mpsc::UnboundedSender<SwarmCmd>,
    pub listen_addrs: Arc<std::sync::Mutex<Vec<libp2p::Multiaddr>>>,
    /// The node's log span.
    pub span: tracing::Span,
}

pub(crate) struct GossipState {
    args: GossipArgs,
    stores: HashMap<StoreId, StoreSink>,
    /// This node's own slice versions, for the presence digest.
    own: BTreeMap<StoreId, Version>,
    /// Signed slices held, own included, exactly as their owners signed them.
    held: HashMap<StoreId, HashMap<DeviceId, Arc<[u8]>>>,
    membership: Membership,
    seq: u64,
    digest_cursor: usize,
    fetched: HashMap<(DeviceId, StoreId), Instant>,
    leaving: bool,
    ticker: Option<tokio::task::JoinHandle<Result<(), ractor::MessagingErr<GossipMsg>>>>,
    expirer: Option<tokio::task::JoinHandle<()>>,
    jitter: Jitter,
    /// Keys for checking slices that arrive in sync responses.
    keys: KeyCache,
}

/// A small generator for timer jitter, seeded from the device id and the clock.
struct Jitter(u64);

impl Jitter {
    fn new(me: &DeviceId) -> Self {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        me.hash(&mut h);
        Instant::now().hash(&mut h);
        Self(h.finish() | 1)
    }

    /// `base` scaled by a random factor in [0.8, 1.2): the mean stays `base`.
    fn around(&mut self, base: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let unit = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.8 + 0.4 * unit)
    }
}

pub(crate) struct GossipActor;

impl GossipState {
    fn cmd(&self, cmd: SwarmCmd) {
        let _ = self.args.cmds.send(cmd);
    }

    fn ingest(&mut self, v: VerifiedSlice, now: Instant) {
        if v.device == self.args.me {
            return;
        }
        let Some(sink) = self.stores.get(&v.store) else {
            self.args.counters.reject(
                RejectReason::WrongStore,
                &v.device,
                "slice for a store not joined here",
            );
            return;
        };
        match self.membership.admit(v.device, &v.store, v.version, now) {
            Admit::Apply => {
                self.held
                    .entry(v.store.clone())
                    .or_default()
                    .insert(v.device, v.raw.clone());
                self.fetched.remove(&(v.device, v.store.clone()));
                if !sink(StoreInput::Remote(v)) {
                    tracing::warn!("store actor gone; slice not applied");
                }
            }
            Admit::Stale => {
                self.args
                    .counters
                    .reject(RejectReason::Stale, &v.device, v.store.as_str())
            }
            Admit::AfterLeave => {
                self.args
                    .counters
                    .reject(RejectReason::AfterLeave, &v.device, v.store.as_str())
            }
        }
    }

    fn remove(&mut self, r: Removal) {
        tracing::info!(device = %r.device, reason = %r.reason, stores = r.stores.len(), "device removed");
        inc(&self.args.counters.devices_removed);
        for store in &r.stores {
            self.drop_slice(store, r.device, r.reason);
        }
        for held in self.held.values_mut() {
            held.remove(&r.device);
        }
    }

    fn drop_slice(&mut self, store: &StoreId, device: DeviceId, reason: RemovalReason) {
        if let Some(h) = self.held.get_mut(store) {
            h.remove(&device);
        }
        if let Some(sink) = self.stores.get(store) {
            sink(StoreInput::Remove { device, reason });
        }
    }

    fn on_presence(&mut self, via: PeerId, p: Presence, now: Instant) {
        let Ok(device) = p.device.parse::<DeviceId>() else {
            return;
        };
        if device == self.args.me {
            return;
        }
        let digest: Vec<(StoreId, Version)> = p
            .digest
            .iter()
            .filter_map(|e| {
                Some((
                    StoreId::new(&e.store).ok()?,
                    Version::new(e.incarnation, e.version),
                ))
            })
            .collect();
        let complete = !p.partial;
        let out = self
            .membership
            .on_presence(device, p.incarnation, p.seq, &digest, complete, now);
        if !out.fresh {
            return;
        }
        if out.came_online {
            tracing::info!(%device, "device online");
        }
        for store in out.drop_stale_incarnation {
            self.drop_slice(&store, device, RemovalReason::Restarted);
        }
        // Anti-entropy: fetch what the digest shows we are missing, from whoever relayed it.
        let mut want = Vec::new();
        for (store, version) in digest {
            if !self.stores.contains_key(&store) || !self.membership.wants(&device, &store, version)
            {
                continue;
            }
            let key = (device, store);
            if self
                .fetched
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < REFETCH_AFTER)
            {
                continue;
            }
            want.push(Want {
                store: key.1.to_string(),
                device: Some(device.to_string()),
            });
            self.fetched.insert(key, now);
        }
        if !want.is_empty() {
            tracing::debug!(%device, %via, stores = want.len(), "fetching newer slices");
            self.cmd(SwarmCmd::Fetch { peer: via, want });
        }
    }

    fn answer(&self, request: SyncRequest) -> SyncResponse {
        let mut slices = Vec::new();
        let mut bytes = 0usize;
        'wants: for w in request.want.iter().take(MAX_WANTS) {
            let Some(held) = StoreId::new(&w.store).ok().and_then(|s| self.held.get(&s)) else {
                continue;
            };
            let pick: Vec<&Arc<[u8]>> = match &w.device {
                None => held.values().collect(),
                Some(d) => d
                    .parse::<DeviceId>()
                    .ok()
                    .and_then(|d| held.get(&d))
                    .into_iter()
                    .collect(),
            };
            for raw in pick {
                // Each entry costs its bytes plus a msgpack bin header (at most 5 bytes).
                if bytes + raw.len() + 5 > self.args.max_response {
                    break 'wants;
                }
                bytes += raw.len() + 5;
                slices.push(serde_bytes::ByteBuf::from(raw.to_vec()));
            }
        }
        SyncResponse {
            v: PROTOCOL_VERSION,
            slices,
        }
    }

    fn presence(&mut self) -> Presence {
        self.seq += 1;
        let n = self.own.len();
        let partial = n > MAX_DIGEST_ENTRIES;
        let entries = self.own.iter().map(|(s, v)| DigestEntry {
            store: s.to_string(),
            incarnation: v.incarnation,
            version: v.counter,
        });
        let digest: Vec<DigestEntry> = if partial {
            // Rotate through the stores so each is announced every few rounds.
            let start = self.digest_cursor % n;
            self.digest_cursor = (start + MAX_DIGEST_ENTRIES) % n;
            entries
                .cycle()
                .skip(start)
                .take(MAX_DIGEST_ENTRIES)
                .collect()
        } else {
            entries.collect()
        };
        let addrs = self
            .args
            .listen_addrs
            .lock()
            .map(|a| {
                a.iter()
                    .take(crate::wire::MAX_PRESENCE_ADDRS)
                    .map(|a| a.to_string())
                    .collect()
            })
            .unwrap_or_default();
        Presence {
            device: self.args.me.to_string(),
            incarnation: self.args.incarnation,
            seq: self.seq,
            addrs,
            partial,
            digest,
        }
    }
}

impl Actor for GossipActor {
    type Msg = GossipMsg;
    type State = GossipState;
    type Arguments = GossipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GossipMsg>,
        args: GossipArgs,
    ) -> Result<GossipState, ActorProcessingErr> {
        // Presence ticks are jittered (see `next_tick`) so that nodes started together do
        // not all announce in the same instant, every interval, forever.
        let mut rng = Jitter::new(&args.me);
        let first = rng.around(args.presence_interval);
        let ticker = myself.send_after(first, || GossipMsg::Tick);
        let check =
            (args.presence_timeout / 10).clamp(Duration::from_millis(20), args.presence_interval);
        let expirer = myself.send_interval(check, || GossipMsg::Expire);
        let timeout = args.presence_timeout;
        Ok(GossipState {
            args,
            stores: HashMap::new(),
            own: BTreeMap::new(),
            held: HashMap::new(),
            membership: Membership::new(timeout),
            seq: 0,
            digest_cursor: 0,
            fetched: HashMap::new(),
            leaving: false,
            ticker: Some(ticker),
            expirer: Some(expirer),
            jitter: rng,
            keys: KeyCache::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<GossipMsg>,
        msg: GossipMsg,
        state: &mut GossipState,
    ) -> Result<(), ActorProcessingErr> {
        // No await below: the guard never crosses a suspension point.
        let _span = state.args.span.clone().entered();
        let now = Instant::now();
        match msg {
            GossipMsg::Join {
                store,
                sink,
                outbox,
                reply,
            } => {
                if state.stores.contains_key(&store) {
                    let _ = reply.send(Err(Error::StoreAlreadyJoined(store)));
                } else {
                    state.stores.insert(store.clone(), sink);
                    state.cmd(SwarmCmd::Subscribe { store, outbox });
                    let _ = reply.send(Ok(()));
                }
            }
            GossipMsg::Published {
                store,
                version,
                raw,
            } => {
                state.own.insert(store.clone(), version);
                state
                    .held
                    .entry(store)
                    .or_default()
                    .insert(state.args.me, raw);
            }
            GossipMsg::Unhold { store, device } => {
                state.membership.unhold(&device, &store);
                if let Some(h) = state.held.get_mut(&store) {
                    h.remove(&device);
                }
            }
            GossipMsg::Net(NetEvent::Slice { slice }) => state.ingest(slice, now),
            GossipMsg::Net(NetEvent::Presence { via, msg }) => match msg {
                PresenceMsg::Presence(p) => state.on_presence(via, p, now),
                PresenceMsg::Leave(l) => {
                    if let Ok(device) = l.device.parse::<DeviceId>() {
                        if let Some(r) = state.membership.on_leave(device, l.incarnation, now) {
                            state.remove(r);
                        }
                    }
                }
            },
            GossipMsg::Net(NetEvent::Subscribed { peer, store }) => {
                if state.stores.contains_key(&store) {
                    tracing::debug!(%peer, %store, "peer joined store; exchanging slices");
                    state.cmd(SwarmCmd::Fetch {
                        peer,
                        want: vec![Want {
                            store: store.to_string(),
                            device: None,
                        }],
                    });
                }
            }
            GossipMsg::Net(NetEvent::Request {
                peer,
                request,
                channel,
            }) => {
                let response = state.answer(request);
                tracing::trace!(%peer, slices = response.slices.len(), "answering sync request");
                state.cmd(SwarmCmd::Respond { channel, response });
            }
            GossipMsg::Net(NetEvent::Response { peer, response }) => {
                for raw in response.slices.into_iter().take(MAX_WANTS) {
                    inc(&state.args.counters.delivered);
                    match decode_slice(&raw, state.args.max_slice, &mut state.keys) {
                        Ok(v) => state.ingest(v, now),
                        Err(reason) => state.args.counters.reject(reason, &peer, "sync response"),
                    }
                }
            }
            GossipMsg::Net(NetEvent::FetchMissed { want }) => {
                // Allow the next presence of these devices to trigger a new fetch at once.
                for w in want {
                    let (Ok(store), Some(Ok(device))) = (
                        StoreId::new(&w.store),
                        w.device.as_deref().map(str::parse::<DeviceId>),
                    ) else {
                        continue;
                    };
                    state.fetched.remove(&(device, store));
                }
            }
            GossipMsg::Tick => {
                let next = state.jitter.around(state.args.presence_interval);
                state.ticker = Some(myself.send_after(next, || GossipMsg::Tick));
                if !state.leaving {
                    let p = state.presence();
                    match encode_presence(&state.args.key, &p) {
                        Ok(bytes) => state.cmd(SwarmCmd::PublishPresence(bytes)),
                        Err(e) => tracing::error!(error = %e, "cannot sign presence; not sent"),
                    }
                }
            }
            GossipMsg::Expire => {
                let forget_after = (state.args.presence_timeout * 10).max(FORGET_AFTER_MIN);
                state.membership.forget_silent(now, forget_after);
                for r in state.membership.expire(now) {
                    state.remove(r);
                }
                state
                    .fetched
                    .retain(|_, t| now.duration_since(*t) < REFETCH_AFTER);
            }
            #[cfg(feature = "test-hooks")]
            GossipMsg::RawPublish { store, bytes } => {
                state.cmd(SwarmCmd::RawPublish {
                    store,
                    raw: Arc::from(bytes),
                });
            }
            GossipMsg::Leave { done } => {
                state.leaving = true;
                let payload = encode_leave(
                    &state.args.key,
                    &Leave {
                        device: state.args.me.to_string(),
                        incarnation: state.args.incarnation,
                    },
                )
                .unwrap_or_else(|e| {
                    // Peers still get the direct (authenticated) leave request.
                    tracing::error!(error = %e, "cannot sign the leave message; not gossiped");
                    Vec::new()
                });
                state.cmd(SwarmCmd::Leave {
                    payload,
                    incarnation: state.args.incarnation,
                    done,
                });
            }
        }
        // A counter kept by membership, not a recount: cheap on every message.
        state
            .args
            .counters
            .peers_online
            .store(state.membership.online_count() as u64, Relaxed);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<GossipMsg>,
        state: &mut GossipState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        if let Some(t) = state.expirer.take() {
            t.abort();
        }
        Ok(())
    }
}

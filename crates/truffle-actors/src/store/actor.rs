//! The store actor: sole owner of one store's slices on this node.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use super::durable::Durable;
use super::inbox::Inbox;
use super::{RemoteSlices, RemovalReason, StoreEvent, StoreSnapshot, SyncableStore};
use crate::error::Error;
use crate::ids::{DeviceId, Incarnation, StoreId, Version};
use crate::lazy_broadcast::LazySender;
use crate::metrics::{inc, Counters};
use crate::slice::{now_millis, DeviceSlice};
use crate::storage::StorePersist;
use crate::wire::{RejectReason, VerifiedSlice};

/// What the network side tells a store.
#[derive(Debug)]
pub(crate) enum StoreInput {
    /// A remote slice the protocol core admitted (signature and version checked).
    Remote(VerifiedSlice),
    /// A device is gone.
    Remove {
        device: DeviceId,
        reason: RemovalReason,
    },
}

/// A type-erased way for the gossip actor to reach a store actor of any data type.
pub(crate) type StoreSink = Arc<dyn Fn(StoreInput) -> bool + Send + Sync>;

/// The newest local slice not yet taken by the publisher (the runtime's swarm task).
/// Writes overwrite it (last write wins); see [`StorePort::publish`].
#[derive(Clone)]
pub(crate) struct Outbox {
    slot: Arc<std::sync::Mutex<Option<Pending>>>,
    /// The newest version handed to gossipsub ([`super::Store::flushed`]).
    flushed: Arc<watch::Sender<Version>>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            slot: Arc::default(),
            flushed: Arc::new(watch::Sender::new(Version::default())),
        }
    }
}

/// A local slice waiting to be published, encoded but not yet signed: signing is the
/// expensive part, so it happens only for the versions that actually go out.
pub(crate) struct Pending {
    pub version: Version,
    pub updated_at: u64,
    /// The data as MessagePack (already checked against the size limit).
    pub data: Vec<u8>,
}

impl Outbox {
    /// Stores the newest slice; true if the slot was empty (the caller must flush).
    pub fn put(&self, pending: Pending) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.replace(pending).is_none()
    }

    /// Takes the newest slice, if any.
    pub fn take(&self) -> Option<Pending> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Records that `version` was handed to gossipsub (or kept to publish as soon as a
    /// peer joins the store).
    pub fn mark_flushed(&self, version: Version) {
        self.flushed.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }

    /// Follows [`Self::mark_flushed`].
    pub fn flushed(&self) -> watch::Receiver<Version> {
        self.flushed.subscribe()
    }
}

/// How a store actor reaches the network side: the outbox where it leaves its newest local
/// slice, a wake-up for whoever publishes from it, and a way to say that a remote slice
/// was unusable here. The store knows nothing else of the runtime.
#[derive(Clone)]
pub(crate) struct StorePort {
    pub outbox: Outbox,
    wake: Arc<dyn Fn() + Send + Sync>,
    undecodable: Arc<dyn Fn(DeviceId) + Send + Sync>,
}

impl StorePort {
    pub fn new(
        outbox: Outbox,
        wake: impl Fn() + Send + Sync + 'static,
        undecodable: impl Fn(DeviceId) + Send + Sync + 'static,
    ) -> Self {
        Self {
            outbox,
            wake: Arc::new(wake),
            undecodable: Arc::new(undecodable),
        }
    }

    /// Leaves `pending` in the outbox (replacing an older one); wakes the publisher only
    /// when the slot was empty, so however fast the application writes, at most one
    /// wake-up per store is in flight.
    pub fn publish(&self, pending: Pending) {
        if self.outbox.put(pending) {
            (self.wake)();
        }
    }

    fn undecodable(&self, device: DeviceId) {
        (self.undecodable)(device)
    }
}

type Updater<T> = Box<dyn FnOnce(&mut T) + Send>;

pub(crate) enum StoreMsg<T> {
    Update {
        f: Updater<T>,
        reply: RpcReplyPort<Result<Arc<DeviceSlice<T>>, Error>>,
    },
    /// The inbox has something: take one device's slot.
    Drain,
}

/// Everything a store actor needs besides the store itself.
pub(crate) struct StoreParams {
    pub device: DeviceId,
    pub incarnation: Incarnation,
    pub max_slice_size: usize,
    pub event_buffer: usize,
    pub counters: Arc<Counters>,
    pub port: StorePort,
    /// The store's way to the node's storage, if it has a data directory.
    pub persist: Option<StorePersist>,
    /// Keep departed devices' last slices ([`crate::MeshNodeBuilder::offline_view`]).
    pub offline_view: bool,
}

pub(crate) struct StoreArgs<S: SyncableStore> {
    store: S,
    id: StoreId,
    device: DeviceId,
    incarnation: Incarnation,
    max_slice_size: usize,
    counters: Arc<Counters>,
    port: StorePort,
    events: LazySender<StoreEvent<S::Data>>,
    view: watch::Sender<Arc<StoreSnapshot<S::Data>>>,
    durable: Durable<S::Data>,
    inbox: Arc<Inbox>,
}

pub(crate) struct StoreState<S: SyncableStore> {
    args: StoreArgs<S>,
    counter: u64,
    /// The remote slices the store took (applied, and not removed since), kept alongside
    /// it in a map whose clones share structure: every event publishes a snapshot, and
    /// building one from [`SyncableStore::remote_slices`] copied the whole map each time
    /// (with thousands of devices, most of the store actor's work).
    remote: RemoteSlices<S::Data>,
}

pub(crate) struct StoreActor<S>(std::marker::PhantomData<fn() -> S>);

/// A freshly spawned store actor, with what the node needs to finish joining.
pub(crate) struct SpawnedStore<T> {
    pub handle: super::Store<T>,
    /// The initial slice, to announce once the gossip actor knows the store.
    pub initial: Pending,
    /// Where the gossip actor leaves remote inputs for it (see [`sink_for`]).
    pub inbox: Arc<Inbox>,
}

/// Initialises `store` and spawns its actor.
pub(crate) async fn spawn_store<S: SyncableStore>(
    mut store: S,
    p: StoreParams,
) -> Result<SpawnedStore<S::Data>, Error> {
    let id = store.store_id();
    let version = Version::new(p.incarnation, 0);
    let mut local = store.init(p.device, version, now_millis());
    let mut durable = Durable::new(id.clone(), p.persist, p.offline_view);
    // A saved slice becomes the local slice, published under this run's incarnation so
    // that peers take it over whatever they remember of earlier runs.
    if let Some(restored) = durable.restore(p.device, version)? {
        local = Arc::new(restored);
        store.set_local_slice(local.clone());
    }
    let persisted = durable.persisted();
    let offline = durable.offline_rx();
    let events = LazySender::new(p.event_buffer);
    let (view, view_rx) = watch::channel(Arc::new(StoreSnapshot {
        local: local.clone(),
        remote: Default::default(),
    }));
    let inbox = Arc::new(Inbox::new(p.counters.clone()));
    let args = StoreArgs {
        inbox: inbox.clone(),
        store,
        id: id.clone(),
        device: p.device,
        incarnation: p.incarnation,
        max_slice_size: p.max_slice_size,
        counters: p.counters,
        port: p.port,
        events: events.clone(),
        view,
        durable,
    };
    let flushed_rx = args.port.outbox.flushed();
    let initial = Pending {
        version: local.version,
        updated_at: local.updated_at,
        data: encode_data(&args, &local)?,
    };
    let (actor, _) = Actor::spawn(None, StoreActor::<S>(Default::default()), args)
        .await
        .map_err(|e| Error::NodeStopped(format!("store actor for `{id}` failed to start: {e}")))?;
    Ok(SpawnedStore {
        handle: super::Store {
            id,
            actor,
            events,
            view: view_rx,
            flushed: flushed_rx,
            persisted,
            offline,
        },
        initial,
        inbox,
    })
}

/// The sink through which the gossip actor feeds a store actor: into its coalescing
/// [`Inbox`], waking the actor when the inbox was empty.
pub(crate) fn sink_for<T: Send + Sync + 'static>(
    actor: ActorRef<StoreMsg<T>>,
    inbox: Arc<Inbox>,
) -> StoreSink {
    Arc::new(move |input| !inbox.put(input) || actor.cast(StoreMsg::Drain).is_ok())
}

/// The slice data as MessagePack, refused if over the size limit.
fn encode_data<S: SyncableStore>(
    args: &StoreArgs<S>,
    slice: &DeviceSlice<S::Data>,
) -> Result<Vec<u8>, Error> {
    let data = rmp_serde::to_vec_named(&slice.data).map_err(|e| Error::Encode {
        store: args.id.clone(),
        reason: e.to_string(),
    })?;
    if data.len() > args.max_slice_size {
        return Err(Error::SliceTooLarge {
            store: args.id.clone(),
            size: data.len(),
            max: args.max_slice_size,
        });
    }
    Ok(data)
}

impl<S: SyncableStore> StoreState<S> {
    fn emit(&mut self, event: StoreEvent<S::Data>) {
        self.args.store.on_event(&event);
        // The snapshot first, so a subscriber that reads it on an event sees the change.
        if let Some(local) = self.args.store.local_slice() {
            self.args.view.send_replace(Arc::new(StoreSnapshot {
                local,
                remote: self.remote.clone(),
            }));
        }
        self.args.events.send(event);
    }

    fn update(&mut self, f: Updater<S::Data>) -> Result<Arc<DeviceSlice<S::Data>>, Error> {
        let current = self
            .args
            .store
            .local_slice()
            .ok_or_else(|| Error::StoreClosed(self.args.id.clone()))?;
        let mut data = current.data.clone();
        if std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut data))).is_err() {
            return Err(Error::UpdatePanicked(self.args.id.clone()));
        }
        let slice = DeviceSlice {
            device_id: self.args.device,
            data,
            version: Version::new(self.args.incarnation, self.counter + 1),
            updated_at: now_millis(),
        };
        let data = encode_data(&self.args, &slice)?;
        self.counter += 1;
        let slice = Arc::new(slice);
        self.args.store.set_local_slice(slice.clone());
        self.args.durable.local_written(&slice, &data);
        let pending = Pending {
            version: slice.version,
            updated_at: slice.updated_at,
            data,
        };
        self.args.port.publish(pending);
        self.args
            .counters
            .intro
            .slice_updated(&self.args.id, self.args.device, slice.version);
        tracing::trace!(store = %self.args.id, version = %slice.version, "local write");
        self.emit(StoreEvent::LocalChanged {
            slice: slice.clone(),
        });
        Ok(slice)
    }

    fn remote(&mut self, v: VerifiedSlice) {
        let data: S::Data = match rmp_serde::from_slice(&v.data) {
            Ok(d) => d,
            Err(e) => {
                // Counted every time, logged at `warn` once per device (below).
                self.args.counters.reject_quietly(
                    RejectReason::DataDecode,
                    &v.device,
                    &format!("store `{}`: {e}", self.args.id),
                );
                if self.args.durable.first_decode_failure(v.device) {
                    tracing::warn!(store = %self.args.id, device = %v.device, version = %v.version, error = %e, "a device's slice does not decode as this node's type of the store; its slices are dropped (and counted as data_decode) until one decodes");
                    self.emit(StoreEvent::RemoteUndecodable {
                        device_id: v.device,
                        version: v.version,
                        reason: e.to_string(),
                    });
                }
                self.args.port.undecodable(v.device);
                return;
            }
        };
        let slice = Arc::new(DeviceSlice {
            device_id: v.device,
            data,
            version: v.version,
            updated_at: v.updated_at,
        });
        if self.args.store.apply_remote_slice(slice.clone()) {
            self.remote.insert(slice.device_id, slice.clone());
            inc(&self.args.counters.applied);
            let c = &self.args.counters;
            c.prom.applied(&self.args.id, v.updated_at);
            c.intro.slice_updated(&self.args.id, v.device, v.version);
            self.args.durable.remote_applied(&slice, &v.data);
            tracing::debug!(store = %self.args.id, device = %v.device, version = %v.version, "applied remote slice");
            self.emit(StoreEvent::RemoteUpdated { slice });
        } else {
            self.args
                .counters
                .reject(RejectReason::Stale, &v.device, self.args.id.as_str());
        }
    }

    fn remove(&mut self, device: DeviceId, reason: RemovalReason) {
        if let Some(slice) = self.args.store.remove_remote_slice(&device, reason) {
            self.remote.remove(&device);
            self.args.durable.remote_removed(slice);
            self.args
                .counters
                .intro
                .slice_removed(&self.args.id, device, reason);
            tracing::info!(store = %self.args.id, %device, %reason, "removed remote slice");
            self.emit(StoreEvent::RemoteRemoved {
                device_id: device,
                reason,
            });
        }
    }
}

impl<S: SyncableStore> Actor for StoreActor<S> {
    type Msg = StoreMsg<S::Data>;
    type State = StoreState<S>;
    type Arguments = StoreArgs<S>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: StoreArgs<S>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(StoreState {
            args,
            counter: 0,
            remote: RemoteSlices::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StoreMsg::Update { f, reply } => {
                let _ = reply.send(state.update(f));
            }
            StoreMsg::Drain => {
                let Some((device, slot, more)) = state.args.inbox.take() else {
                    return Ok(());
                };
                // One device per message, so that local writes queued meanwhile are not
                // held up by the whole backlog.
                if more {
                    let _ = myself.cast(StoreMsg::Drain);
                }
                if let Some(reason) = slot.remove {
                    state.remove(device, reason);
                }
                if let Some(v) = slot.remote {
                    state.remote(v);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let live = state.args.store.remote_slices();
        state.args.durable.stopping(live.into_values());
        state.args.store.clear_remote_slices();
        state.remote = RemoteSlices::new();
        Ok(())
    }
}

//! The typed handle an application holds for one store.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use tokio::sync::{broadcast, watch};

use super::actor::StoreMsg;
use super::durable::OfflineView;
use super::{OfflineSlice, StoreEvent, StoreSnapshot};
use crate::error::Error;
use crate::ids::{DeviceId, StoreId, Version};
use crate::lazy_broadcast::LazySender;
use crate::slice::DeviceSlice;

/// A handle to one joined store: typed, cheap to clone, usable from any task.
///
/// Reads ([`local`](Self::local), [`snapshot`](Self::snapshot)) are lock-free copies of the
/// latest state the store actor published; writes go through the actor.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # use truffle_actors::prelude::*;
/// #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
/// #[syncable(id = "status")]
/// struct Status { text: String }
///
/// # async fn run(node: MeshNode) -> Result<(), truffle_actors::Error> {
/// let status = node.store::<Status>().await?;
/// status.update(|s| s.text = "busy".into()).await?;
/// for slice in status.snapshot().iter() {
///     println!("{}: {}", slice.device_id, slice.data.text);
/// }
/// # Ok(()) }
/// ```
pub struct Store<T> {
    pub(crate) id: StoreId,
    pub(crate) actor: ActorRef<StoreMsg<T>>,
    pub(crate) events: LazySender<StoreEvent<T>>,
    pub(crate) view: watch::Receiver<Arc<StoreSnapshot<T>>>,
    pub(crate) flushed: watch::Receiver<Version>,
    pub(crate) persisted: watch::Receiver<Version>,
    pub(crate) offline: watch::Receiver<OfflineView<T>>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            actor: self.actor.clone(),
            events: self.events.clone(),
            view: self.view.clone(),
            flushed: self.flushed.clone(),
            persisted: self.persisted.clone(),
            offline: self.offline.clone(),
        }
    }
}

impl<T> fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("id", &self.id).finish()
    }
}

impl<T: Clone + Send + Sync + 'static> Store<T> {
    /// The store id.
    pub fn id(&self) -> &StoreId {
        &self.id
    }

    /// Changes this device's slice with `f` and publishes the new version to the mesh.
    ///
    /// `f` runs inside the store actor on a copy of the data; if the encoded result is over
    /// the node's slice limit, or `f` panics, nothing changes and an error says why.
    pub async fn update<F>(&self, f: F) -> Result<Arc<DeviceSlice<T>>, Error>
    where
        F: FnOnce(&mut T) + Send + 'static,
    {
        let f = Box::new(f);
        match self
            .actor
            .call(|reply| StoreMsg::Update { f, reply }, None)
            .await
        {
            Ok(CallResult::Success(r)) => r,
            _ => Err(Error::StoreClosed(self.id.clone())),
        }
    }

    /// Replaces this device's slice data.
    pub async fn set(&self, data: T) -> Result<Arc<DeviceSlice<T>>, Error> {
        self.update(move |d| *d = data).await
    }

    /// This device's slice.
    pub fn local(&self) -> Arc<DeviceSlice<T>> {
        self.view.borrow().local.clone()
    }

    /// Every live device's slice as this node holds it now.
    pub fn snapshot(&self) -> Arc<StoreSnapshot<T>> {
        self.view.borrow().clone()
    }

    /// One device's slice, if held.
    pub fn get(&self, device: &DeviceId) -> Option<Arc<DeviceSlice<T>>> {
        self.view.borrow().get(device).cloned()
    }

    /// Every change from now on, in order. Never drops silently: a subscriber that falls
    /// more than the node's event buffer behind gets [`StoreEvent::Lagged`].
    pub fn subscribe(&self) -> StoreEvents<T> {
        StoreEvents::new(self.events.subscribe())
    }

    /// The current snapshot and every change after it, with no gap between the two: the
    /// way to build a view that starts from the present and then follows changes.
    ///
    /// [`snapshot`](Self::snapshot) then [`subscribe`](Self::subscribe) loses the events in
    /// between; the other order may show the first events twice. Here the stream starts
    /// right after the snapshot: applying its events in order to the snapshot gives the
    /// store's state. (In the rare case of changes landing while it subscribes, an event
    /// already in the snapshot may still be delivered; applying it again is harmless,
    /// since a later event in the stream supersedes it.)
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # use truffle_actors::prelude::*;
    /// # #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    /// # #[syncable(id = "status")]
    /// # struct Status { text: String }
    /// # async fn run(status: Store<Status>) {
    /// let (snapshot, mut events) = status.subscribe_with_snapshot();
    /// let mut view = snapshot.remote.clone();
    /// while let Some(event) = events.recv().await {
    ///     match event {
    ///         StoreEvent::RemoteUpdated { slice } => {
    ///             view.insert(slice.device_id, slice);
    ///         }
    ///         StoreEvent::RemoteRemoved { device_id, .. } => {
    ///             view.remove(&device_id);
    ///         }
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub fn subscribe_with_snapshot(&self) -> (Arc<StoreSnapshot<T>>, StoreEvents<T>) {
        // The store actor replaces the snapshot before it sends the event for a change, so
        // subscribing first and reading the snapshot second misses nothing. Events sent
        // between the two are in the snapshot already: skip them while they are.
        let rx = self.events.subscribe();
        let snap = self.snapshot();
        (snap.clone(), StoreEvents::after_snapshot(rx, snap))
    }

    /// The version of this device's slice most recently published: signed and handed to
    /// gossipsub (or, while no peer has joined the store, kept to publish as soon as one
    /// does).
    ///
    /// Writes are coalesced: a write made while an earlier one still waits to go out
    /// replaces it, so not every version shows up here, and a burst of writes costs one
    /// publish. A producer that wants every version on the wire (no coalescing) waits for
    /// this to reach its last write before writing the next one. It stops advancing once
    /// the node is shutting down, so wait with a timeout.
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # use truffle_actors::prelude::*;
    /// # #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    /// # #[syncable(id = "ticks")]
    /// # struct Ticks { n: u64 }
    /// # async fn run(ticks: Store<Ticks>) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut flushed = ticks.flushed();
    /// for n in 1..=100 {
    ///     let written = ticks.update(move |t| t.n = n).await?.version;
    ///     // Every one of the 100 versions is published: none is coalesced away.
    ///     flushed.wait_for(|v| *v >= written).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn flushed(&self) -> watch::Receiver<Version> {
        self.flushed.clone()
    }

    /// The newest version of this device's slice that is durable in the node's storage
    /// ([`crate::MeshNodeBuilder::data_dir`]): after a crash, the node restarts with this
    /// version's data or a newer one.
    ///
    /// [`update`](Self::update) never waits for the disk: writes are coalesced (a write
    /// made while an earlier one waits to be saved replaces it), so not every version
    /// shows up here. A caller that needs a write to be durable waits for it. Without
    /// storage nothing is saved: the channel is closed and waiting fails at once.
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # use truffle_actors::prelude::*;
    /// # #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    /// # #[syncable(id = "notes")]
    /// # struct Notes { text: String }
    /// # async fn run(notes: Store<Notes>) -> Result<(), Box<dyn std::error::Error>> {
    /// let written = notes.update(|n| n.text = "keep me".into()).await?.version;
    /// notes.persisted().wait_for(|v| *v >= written).await?;
    /// // A crash from here on restarts with "keep me" (or something newer).
    /// # Ok(()) }
    /// ```
    pub fn persisted(&self) -> watch::Receiver<Version> {
        self.persisted.clone()
    }

    /// The offline view: the last slice of every device that is no longer live, with when
    /// it was last seen. Empty unless the node was built with
    /// [`offline_view(true)`](crate::MeshNodeBuilder::offline_view). Separate from
    /// [`snapshot`](Self::snapshot), which holds live devices only; a device moves back to
    /// the snapshot as soon as it sends a slice again. With a data directory the view is
    /// saved, so a node started without network shows what it last knew.
    pub fn offline(&self) -> Arc<BTreeMap<DeviceId, OfflineSlice<T>>> {
        self.offline.borrow().clone()
    }

    /// Follows [`offline`](Self::offline).
    pub fn watch_offline(&self) -> watch::Receiver<Arc<BTreeMap<DeviceId, OfflineSlice<T>>>> {
        self.offline.clone()
    }

    /// The latest snapshot, updated after every change: for UIs that redraw on change.
    pub fn watch(&self) -> watch::Receiver<Arc<StoreSnapshot<T>>> {
        self.view.clone()
    }

    /// Waits until `cond` holds for the snapshot, or `timeout` passes; returns the snapshot
    /// that satisfied it, or the last one seen as the error.
    pub async fn wait_until<F>(
        &self,
        timeout: Duration,
        mut cond: F,
    ) -> Result<Arc<StoreSnapshot<T>>, Arc<StoreSnapshot<T>>>
    where
        F: FnMut(&StoreSnapshot<T>) -> bool,
    {
        let mut view = self.view.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snap = view.borrow_and_update().clone();
            if cond(&snap) {
                return Ok(snap);
            }
            match tokio::time::timeout_at(deadline, view.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    let last = view.borrow().clone();
                    return if cond(&last) { Ok(last) } else { Err(last) };
                }
            }
        }
    }
}

type BoxedEvents<T> = Pin<Box<dyn Stream<Item = StoreEvent<T>> + Send>>;

/// A subscriber's stream of [`StoreEvent`]s (see [`Store::subscribe`]).
pub struct StoreEvents<T> {
    inner: BoxedEvents<T>,
}

impl<T: Clone + Send + Sync + 'static> StoreEvents<T> {
    fn new(rx: broadcast::Receiver<StoreEvent<T>>) -> Self {
        let inner = futures::stream::unfold(rx, |mut rx| async move {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(missed)) => StoreEvent::Lagged { missed },
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((ev, rx))
        });
        Self {
            inner: Box::pin(inner),
        }
    }

    /// Like [`new`](Self::new), but first skips the events already reflected in `snap`.
    ///
    /// Only a prefix of the stream can be in the snapshot (events sent after subscribing
    /// and before the snapshot was read), so skipping stops at the first event that is not:
    /// a newer slice than the snapshot holds, or the removal of a device it holds. A new
    /// event is never skipped: its slice is newer than any the snapshot holds, and a device
    /// it removes is in the snapshot unless an earlier, unskipped event added it.
    fn after_snapshot(rx: broadcast::Receiver<StoreEvent<T>>, snap: Arc<StoreSnapshot<T>>) -> Self {
        let mut inner = Self::new(rx);
        let mut snap = Some(snap);
        let filtered = futures::stream::poll_fn(move |cx| loop {
            let ev = match inner.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(ev)) => ev,
                other => return other,
            };
            if let Some(s) = &snap {
                if in_snapshot(s, &ev) {
                    continue;
                }
                snap = None;
            }
            return Poll::Ready(Some(ev));
        });
        Self {
            inner: Box::pin(filtered),
        }
    }

    /// The next event. `None` only once the store actor and every [`Store`] handle are
    /// gone; a subscriber that should stop earlier (at shutdown, say) drops the stream.
    pub async fn recv(&mut self) -> Option<StoreEvent<T>> {
        self.inner.next().await
    }
}

impl<T> Stream for StoreEvents<T> {
    type Item = StoreEvent<T>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T> fmt::Debug for StoreEvents<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreEvents")
    }
}

/// Whether `ev` is already reflected in `snap` (see [`StoreEvents::after_snapshot`]).
fn in_snapshot<T>(snap: &StoreSnapshot<T>, ev: &StoreEvent<T>) -> bool {
    match ev {
        StoreEvent::LocalChanged { slice } | StoreEvent::RemoteUpdated { slice } => snap
            .get(&slice.device_id)
            .is_some_and(|held| held.version >= slice.version),
        StoreEvent::RemoteRemoved { device_id, .. } => snap.get(device_id).is_none(),
        // Changes nothing in the snapshot, so it cannot tell: deliver it (ending the
        // skipping) rather than risk losing a new one.
        StoreEvent::RemoteUndecodable { .. } | StoreEvent::Lagged { .. } => false,
    }
}

//! Mixed app versions: two real nodes join the same store id with different versions of
//! its Rust type. Where serde can read the other side's data they keep syncing; where it
//! cannot, the slice is dropped, counted as `data_decode`, reported once per device as
//! `StoreEvent::RemoteUndecodable`, and the store goes on. The book's "Changing a store
//! type" chapter lists this matrix.

mod common;

use common::*;
use serde::{Deserialize, Serialize};
use truffle_actors::prelude::*;
use truffle_actors::{RejectReason, StoreEvents};

/// Two nodes on loopback: `old` joins the store as `A`, `new` as `B`. Each side subscribes
/// before the other side's first slice can reach it: even the initial (default) slice may
/// be undecodable, and it is reported only once. `old` joins while alone; `new` holds
/// back what `old` sends until it has subscribed (the test hook drops it; the next
/// write, or anti-entropy, brings it).
struct Pair<A, B> {
    old: MeshNode,
    new: MeshNode,
    on_old: Store<A>,
    on_new: Store<B>,
    old_events: StoreEvents<A>,
    new_events: StoreEvents<B>,
}

async fn pair<A: Syncable, B: Syncable>() -> Pair<A, B> {
    init_tracing();
    let old = builder("old app").start().await.unwrap();
    let on_old = old.store::<A>().await.unwrap();
    let old_events = on_old.subscribe();
    let new = builder("new app")
        .bootstrap(old.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    // Without this, `old`'s answer to the join exchange may arrive between `store()` and
    // `subscribe()`, and its one report is lost to the test.
    new.test_block(&[old.device_id()]);
    let on_new = new.store::<B>().await.unwrap();
    let new_events = on_new.subscribe();
    new.test_block(&[]);
    Pair {
        old,
        new,
        on_old,
        on_new,
        old_events,
        new_events,
    }
}

impl<A, B> Pair<A, B> {
    async fn shutdown(self) {
        drop((self.on_old, self.on_new, self.old_events, self.new_events));
        self.old.shutdown().await.unwrap();
        self.new.shutdown().await.unwrap();
    }
}

/// Waits until `store` holds a slice of `device` for which `cond` holds.
async fn sees<T, F>(what: &str, store: &Store<T>, device: DeviceId, mut cond: F)
where
    T: Clone + Send + Sync + std::fmt::Debug + 'static,
    F: FnMut(&T) -> bool,
{
    eventually(what, store, |s| {
        s.get(&device).is_some_and(|x| cond(&x.data))
    })
    .await;
}

/// Waits for the `RemoteUndecodable` event about `device`; returns its reason.
async fn undecodable<T: Clone + Send + Sync + 'static>(
    events: &mut StoreEvents<T>,
    device: DeviceId,
) -> String {
    next_event("RemoteUndecodable", events, |e| match e {
        StoreEvent::RemoteUndecodable {
            device_id, reason, ..
        } if device_id == device => Some(reason),
        _ => None,
    })
    .await
}

mod added {
    use super::*;
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-added")]
    pub struct V1 {
        pub name: String,
    }
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-added")]
    pub struct V2 {
        pub name: String,
        #[serde(default)]
        pub color: String,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_added_with_serde_default_syncs_both_ways() {
    let p = pair::<added::V1, added::V2>().await;
    let (old_id, new_id) = (p.old.device_id(), p.new.device_id());
    p.on_old
        .update(|d| d.name = "from old".into())
        .await
        .unwrap();
    sees(
        "new reads old (default fills the new field)",
        &p.on_new,
        old_id,
        |d| d.name == "from old" && d.color.is_empty(),
    )
    .await;
    p.on_new
        .update(|d| {
            d.name = "from new".into();
            d.color = "red".into();
        })
        .await
        .unwrap();
    sees(
        "old reads new (the unknown field is ignored)",
        &p.on_old,
        new_id,
        |d| d.name == "from new",
    )
    .await;
    assert_eq!(p.old.metrics().rejected(RejectReason::DataDecode), 0);
    assert_eq!(p.new.metrics().rejected(RejectReason::DataDecode), 0);
    p.shutdown().await;
}

mod removed {
    use super::*;
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-removed")]
    pub struct V1 {
        pub name: String,
        #[serde(default)]
        pub note: String,
    }
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-removed")]
    pub struct V2 {
        pub name: String,
    }
    /// The old type without `#[serde(default)]` on the field the new one removed.
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-removed-strict")]
    pub struct V1Strict {
        pub name: String,
        pub note: String,
    }
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-removed-strict")]
    pub struct V2Strict {
        pub name: String,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_field_syncs_both_ways_when_the_old_type_defaults_it() {
    let p = pair::<removed::V1, removed::V2>().await;
    let (old_id, new_id) = (p.old.device_id(), p.new.device_id());
    p.on_old
        .update(|d| {
            d.name = "from old".into();
            d.note = "dropped by new".into();
        })
        .await
        .unwrap();
    sees("new reads old", &p.on_new, old_id, |d| d.name == "from old").await;
    p.on_new
        .update(|d| d.name = "from new".into())
        .await
        .unwrap();
    sees("old reads new, note defaulted", &p.on_old, new_id, |d| {
        d.name == "from new" && d.note.is_empty()
    })
    .await;
    assert_eq!(p.old.metrics().rejected(RejectReason::DataDecode), 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_field_without_a_default_on_the_old_side_is_reported_there_only() {
    let mut p = pair::<removed::V1Strict, removed::V2Strict>().await;
    let (old_id, new_id) = (p.old.device_id(), p.new.device_id());
    p.on_old
        .update(|d| d.name = "from old".into())
        .await
        .unwrap();
    sees("new still reads old", &p.on_new, old_id, |d| {
        d.name == "from old"
    })
    .await;
    p.on_new
        .update(|d| d.name = "from new".into())
        .await
        .unwrap();
    let reason = undecodable(&mut p.old_events, new_id).await;
    assert!(reason.contains("note"), "{reason}");
    assert!(p.old.metrics().rejected(RejectReason::DataDecode) >= 1);
    p.shutdown().await;
}

mod renamed {
    use super::*;
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-renamed")]
    pub struct V1 {
        pub title: String,
    }
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-renamed")]
    pub struct V2 {
        #[serde(alias = "title")]
        pub heading: String,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_renamed_with_an_alias_reads_old_data_but_old_nodes_cannot_read_new() {
    let mut p = pair::<renamed::V1, renamed::V2>().await;
    let (old_id, new_id) = (p.old.device_id(), p.new.device_id());
    p.on_old
        .update(|d| d.title = "from old".into())
        .await
        .unwrap();
    sees(
        "new reads the old name through the alias",
        &p.on_new,
        old_id,
        |d| d.heading == "from old",
    )
    .await;
    // The new type writes the new name, which the old type does not know.
    p.on_new
        .update(|d| d.heading = "from new".into())
        .await
        .unwrap();
    let reason = undecodable(&mut p.old_events, new_id).await;
    assert!(reason.contains("title"), "{reason}");
    p.shutdown().await;
}

mod variant {
    use super::*;
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub enum State1 {
        #[default]
        Open,
        Done,
    }
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub enum State2 {
        #[default]
        Open,
        Done,
        Archived,
    }
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-variant")]
    pub struct V1 {
        pub state: State1,
    }
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-variant")]
    pub struct V2 {
        pub state: State2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_enum_variant_syncs_until_it_is_used_and_again_after() {
    use variant::{State1, State2};
    let mut p = pair::<variant::V1, variant::V2>().await;
    let (old_id, new_id) = (p.old.device_id(), p.new.device_id());
    p.on_old.update(|d| d.state = State1::Done).await.unwrap();
    sees("new reads an old variant", &p.on_new, old_id, |d| {
        d.state == State2::Done
    })
    .await;
    p.on_new.update(|d| d.state = State2::Done).await.unwrap();
    sees("old reads a variant it knows", &p.on_old, new_id, |d| {
        d.state == State1::Done
    })
    .await;
    // The new variant: the old node cannot read it and keeps the last slice it could.
    p.on_new
        .update(|d| d.state = State2::Archived)
        .await
        .unwrap();
    let reason = undecodable(&mut p.old_events, new_id).await;
    assert!(reason.contains("Archived"), "{reason}");
    assert_eq!(
        p.on_old.get(&new_id).map(|s| s.data.state.clone()),
        Some(State1::Done)
    );
    // Back to a known variant: syncing resumes.
    p.on_new.update(|d| d.state = State2::Open).await.unwrap();
    sees("old reads new again", &p.on_old, new_id, |d| {
        d.state == State1::Open
    })
    .await;
    p.shutdown().await;
}

mod changed {
    use super::*;
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-changed")]
    pub struct V1 {
        pub count: u32,
    }
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "mixed-changed")]
    pub struct V2 {
        pub count: String,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_type_change_is_counted_reported_once_and_never_stops_the_store() {
    let mut p = pair::<changed::V1, changed::V2>().await;
    let (old_id, new_id) = (p.old.device_id(), p.new.device_id());
    // A third node on the old type, to show the old node keeps syncing with it.
    let peer = builder("old peer")
        .bootstrap(p.old.listen_addrs()[0].clone())
        .start()
        .await
        .unwrap();
    let on_peer = peer.store::<changed::V1>().await.unwrap();
    let peer_id = peer.device_id();

    p.on_new.update(|d| d.count = "seven".into()).await.unwrap();
    p.on_old.update(|d| d.count = 7).await.unwrap();
    // Both directions fail, each reported with the store's type's complaint.
    let at_old = undecodable(&mut p.old_events, new_id).await;
    let at_new = undecodable(&mut p.new_events, old_id).await;
    // The decoder's own words (rmp-serde does not name the field for a wrong type).
    assert!(at_new.contains("expected a string"), "{at_new}");
    assert!(!at_old.is_empty());
    assert!(p.old.metrics().rejected(RejectReason::DataDecode) >= 1);
    assert!(p.new.metrics().rejected(RejectReason::DataDecode) >= 1);
    assert!(
        p.on_old.get(&new_id).is_none(),
        "nothing undecodable is held"
    );

    // More undecodable writes are counted, but not reported again.
    let before = p.old.metrics().rejected(RejectReason::DataDecode);
    for i in 0..3 {
        p.on_new
            .update(move |d| d.count = format!("more {i}"))
            .await
            .unwrap();
    }
    eventually_metrics("each undecodable slice is counted", &p.old, |m| {
        m.rejected(RejectReason::DataDecode) > before
    })
    .await;

    // The store goes on: the old node still syncs with the compatible peer both ways.
    on_peer.update(|d| d.count = 42).await.unwrap();
    sees(
        "old node reads the compatible peer",
        &p.on_old,
        peer_id,
        |d| d.count == 42,
    )
    .await;
    p.on_old.update(|d| d.count = 8).await.unwrap();
    sees("the peer reads the old node", &on_peer, old_id, |d| {
        d.count == 8
    })
    .await;
    // No second report about the same device came before the peer's slice (applied after
    // the extra undecodable slices were counted, so the stream is past them).
    let next = next_event(
        "the next event after the report",
        &mut p.old_events,
        |e| match e {
            StoreEvent::RemoteUndecodable { device_id, .. } => Some(Some(device_id)),
            // Applied after the extra slices were counted: a fence.
            StoreEvent::RemoteUpdated { slice }
                if slice.device_id == peer_id && slice.data.count == 42 =>
            {
                Some(None)
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(next, None, "the device was reported twice");

    drop(on_peer);
    peer.shutdown().await.unwrap();
    p.shutdown().await;
}

//! # Truffle
//!
//! Typed, device-owned state, kept in sync across a mesh of nodes.
//!
//! Each node (device) owns one *slice* of every store it joins and sees every other live
//! device's latest slice. Writes only touch the local slice; a device's slices disappear
//! everywhere when it leaves or goes silent. Stores are [`ractor`] actors; a gossip actor
//! fans versioned, signed slices out over libp2p gossipsub, one topic per store.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use truffle_actors::prelude::*;
//!
//! #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
//! #[syncable(id = "status")]
//! struct Status { text: String }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = MeshNode::builder().listen("/ip4/127.0.0.1/tcp/0".parse()?).mdns(false).start().await?;
//! let b = MeshNode::builder()
//!     .listen("/ip4/127.0.0.1/tcp/0".parse()?)
//!     .bootstrap(a.listen_addrs()[0].clone())
//!     .mdns(false)
//!     .start()
//!     .await?;
//!
//! let on_a = a.store::<Status>().await?;
//! let on_b = b.store::<Status>().await?;
//! on_a.update(|s| s.text = "hello".into()).await?;
//!
//! // B sees A's slice, without anyone polling.
//! let a_id = a.device_id();
//! let seen = on_b
//!     .wait_until(Duration::from_secs(10), |snap| {
//!         snap.get(&a_id).is_some_and(|s| s.data.text == "hello")
//!     })
//!     .await
//!     .expect("B receives A's update");
//! assert_eq!(seen.len(), 2);
//!
//! a.shutdown().await?; // B drops A's slice at once
//! on_b.wait_until(Duration::from_secs(10), |snap| snap.get(&a_id).is_none()).await.unwrap();
//! b.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! To see inside a running node: [`MeshNode::peers`], [`MeshNode::stores`] and
//! [`MeshNode::events`] in the application, [`MeshNode::register_metrics`] for Prometheus,
//! and the opt-in admin endpoint (`MeshNodeBuilder::admin`, feature `admin`, on by
//! default) with a live dashboard, which the `truffle` command reads.
//!
//! The book (`book/` in the repository) covers the wire protocol, the architecture,
//! running and operating a mesh.

mod addrs;
#[cfg(feature = "admin")]
mod admin;
mod config;
mod connect_errors;
mod error;
mod faults;
mod gossip;
mod ids;
mod introspect;
mod key_file;
mod lazy_broadcast;
mod metrics;
mod node;
mod observer;
pub mod proto;
mod slice;
pub mod storage;
mod store;
pub mod wire;

#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod testing;

pub use error::{Error, Result};
pub use ids::{DeviceId, Incarnation, StoreId, Version, MAX_STORE_ID_LEN};
/// Re-exported: [`StoreSnapshot::remote`] is an [`imbl::OrdMap`].
pub use imbl;
pub use introspect::{NodeEvent, NodeEvents, PeerInfo, PeerState, SliceInfo, StoreInfo};
pub use metrics::{Metrics, MAX_STORE_LABELS, OTHER_STORES};
pub use node::{MeshNode, MeshNodeBuilder};
pub use observer::{ObservedSlices, Observer};
pub use slice::DeviceSlice;
pub use store::{
    OfflineSlice, RemoteSlices, RemovalReason, SliceStore, Store, StoreEvent, StoreEvents,
    StoreSnapshot, Syncable, SyncableStore,
};
pub use wire::RejectReason;

#[cfg(feature = "derive")]
pub use truffle_derive::Syncable;

/// Re-exported so applications can register metrics ([`MeshNode::register_metrics`])
/// without naming the version themselves.
pub use prometheus_client;

/// Re-exported so users can name addresses and keys without a direct libp2p dependency.
pub use libp2p::{identity, multiaddr, pnet::PreSharedKey, Multiaddr};

/// Everything an application usually needs: `use truffle_actors::prelude::*;`.
pub mod prelude {
    pub use crate::{
        DeviceId, DeviceSlice, Error, MeshNode, RemovalReason, Store, StoreEvent, StoreId,
        StoreSnapshot, Syncable, SyncableStore,
    };
}

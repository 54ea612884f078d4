//! A store written by hand: `SyncableStore` implemented directly instead of through
//! `#[derive(Syncable)]`. Two nodes in one process join it, write, and see each other.
//!
//! ```text
//! cargo run --example hand_written_store
//! ```
//!
//! This one keeps what the generic store keeps (a local slice and the remote slices) and
//! also counts, per device, how many versions it has applied: the kind of bookkeeping a
//! hand-written store exists for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use truffle_actors::prelude::*;
use truffle_actors::Version;

// ANCHOR: store
/// The slice data: no `Default` needed, `init` builds the first value.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Status {
    text: String,
}

/// A store that also counts the versions it applied per device.
struct CountingStore {
    local: Option<Arc<DeviceSlice<Status>>>,
    remote: BTreeMap<DeviceId, Arc<DeviceSlice<Status>>>,
    applied: HashMap<DeviceId, u64>,
}

impl SyncableStore for CountingStore {
    type Data = Status;

    fn store_id(&self) -> StoreId {
        StoreId::new("status-counted").expect("a valid store id")
    }

    fn init(
        &mut self,
        device_id: DeviceId,
        version: Version,
        updated_at: u64,
    ) -> Arc<DeviceSlice<Status>> {
        let slice = Arc::new(DeviceSlice {
            device_id,
            data: Status {
                text: "starting".into(),
            },
            version,
            updated_at,
        });
        self.local = Some(slice.clone());
        slice
    }

    fn local_slice(&self) -> Option<Arc<DeviceSlice<Status>>> {
        self.local.clone()
    }

    fn set_local_slice(&mut self, slice: Arc<DeviceSlice<Status>>) {
        self.local = Some(slice);
    }

    fn apply_remote_slice(&mut self, slice: Arc<DeviceSlice<Status>>) -> bool {
        // Keep only a newer version than the one held.
        if let Some(held) = self.remote.get(&slice.device_id) {
            if held.version >= slice.version {
                return false;
            }
        }
        *self.applied.entry(slice.device_id).or_default() += 1;
        self.remote.insert(slice.device_id, slice);
        true
    }

    fn remove_remote_slice(
        &mut self,
        device_id: &DeviceId,
        _reason: RemovalReason,
    ) -> Option<Arc<DeviceSlice<Status>>> {
        self.applied.remove(device_id);
        self.remote.remove(device_id)
    }

    fn clear_remote_slices(&mut self) {
        self.remote.clear();
        self.applied.clear();
    }

    fn remote_slices(&self) -> BTreeMap<DeviceId, Arc<DeviceSlice<Status>>> {
        self.remote.clone()
    }

    fn on_event(&mut self, event: &StoreEvent<Status>) {
        if let StoreEvent::RemoteUpdated { slice } = event {
            let n = self.applied.get(&slice.device_id).copied().unwrap_or(0);
            println!(
                "  {} is at version {} ({n} applied here)",
                slice.device_id, slice.version
            );
        }
    }
}
// ANCHOR_END: store

fn new_store() -> CountingStore {
    CountingStore {
        local: None,
        remote: BTreeMap::new(),
        applied: HashMap::new(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let loopback: truffle_actors::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let a = MeshNode::builder()
        .name("a")
        .listen(loopback.clone())
        .mdns(false)
        .start()
        .await?;
    let b = MeshNode::builder()
        .name("b")
        .listen(loopback)
        .bootstrap(a.listen_addrs()[0].clone())
        .mdns(false)
        .start()
        .await?;

    // ANCHOR: join
    let on_a: Store<Status> = a.join(new_store()).await?;
    let on_b: Store<Status> = b.join(new_store()).await?;
    // ANCHOR_END: join

    on_a.set(Status {
        text: "ready".into(),
    })
    .await?;
    let a_id = a.device_id();
    let seen = on_b
        .wait_until(Duration::from_secs(20), |s| {
            s.get(&a_id).is_some_and(|x| x.data.text == "ready")
        })
        .await
        .map_err(|_| "b did not see a's status in time")?;
    println!("b sees a as {:?}", seen.get(&a_id).map(|s| &s.data.text));

    b.shutdown().await?;
    a.shutdown().await?;
    Ok(())
}

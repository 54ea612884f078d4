//! Two versions of one store type in one mesh: an app upgrade that reached one device but
//! not the other. Runs two nodes in this process; the `v1` node has the old type, the `v2`
//! node the new one. Exits 0 once it has shown what syncs and what is reported.
//!
//! ```text
//! cargo run --example store_versions
//! ```

use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use truffle_actors::prelude::*;

mod v1 {
    use super::*;
    // ANCHOR: v1
    /// Version 1 of the app's `tasks` store.
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "tasks")]
    pub struct Tasks {
        pub owner: String,
        pub state: State,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub enum State {
        #[default]
        Idle,
        Busy,
    }
    // ANCHOR_END: v1
}

mod v2 {
    use super::*;
    // ANCHOR: v2
    /// Version 2: a new field, with a default so that version 1's slices still decode,
    /// and a new enum variant, which version 1 cannot read.
    #[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
    #[syncable(id = "tasks")]
    pub struct Tasks {
        pub owner: String,
        pub state: State,
        #[serde(default)]
        pub priority: u8,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub enum State {
        #[default]
        Idle,
        Busy,
        Paused,
    }
    // ANCHOR_END: v2
}

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => {
            println!("done: both versions synced where serde could read the other side");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let old = MeshNode::builder()
        .name("v1")
        .listen("/ip4/127.0.0.1/tcp/0".parse()?)
        .mdns(false)
        .start()
        .await?;
    let on_old = old.store::<v1::Tasks>().await?;
    let mut old_events = on_old.subscribe();
    let new = MeshNode::builder()
        .name("v2")
        .listen("/ip4/127.0.0.1/tcp/0".parse()?)
        .bootstrap(old.listen_addrs()[0].clone())
        .mdns(false)
        .start()
        .await?;
    let on_new = new.store::<v2::Tasks>().await?;
    let (old_id, new_id) = (old.device_id(), new.device_id());

    on_old
        .update(|t| {
            t.owner = "ann".into();
            t.state = v1::State::Busy;
        })
        .await?;
    let seen = on_new
        .wait_until(DEADLINE, |s| {
            s.get(&old_id).is_some_and(|x| x.data.owner == "ann")
        })
        .await
        .map_err(|_| "v2 never read v1's slice")?;
    println!("v2 reads v1: {:?}", seen.get(&old_id).map(|s| &s.data));

    on_new
        .update(|t| {
            t.owner = "bob".into();
            t.priority = 3;
        })
        .await?;
    let seen = on_old
        .wait_until(DEADLINE, |s| {
            s.get(&new_id).is_some_and(|x| x.data.owner == "bob")
        })
        .await
        .map_err(|_| "v1 never read v2's slice")?;
    println!(
        "v1 reads v2 (priority ignored): {:?}",
        seen.get(&new_id).map(|s| &s.data)
    );

    // ANCHOR: undecodable
    // v2 uses the variant v1 does not know: v1 drops that slice, counts it as
    // `data_decode`, and tells the application once per device.
    on_new.update(|t| t.state = v2::State::Paused).await?;
    let reported = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = old_events.recv().await {
            if let StoreEvent::RemoteUndecodable {
                device_id, reason, ..
            } = event
            {
                return Some((device_id, reason));
            }
        }
        None
    })
    .await?
    .ok_or("no RemoteUndecodable event")?;
    println!("v1 cannot read {}'s slice: {}", reported.0, reported.1);
    // ANCHOR_END: undecodable
    println!(
        "v1 still holds v2's last readable slice: {:?}",
        on_old.get(&new_id).map(|s| s.data.clone())
    );
    println!(
        "data_decode on v1: {}",
        old.metrics()
            .rejected(truffle_actors::RejectReason::DataDecode)
    );

    drop((on_old, on_new, old_events));
    old.shutdown().await?;
    new.shutdown().await?;
    Ok(())
}

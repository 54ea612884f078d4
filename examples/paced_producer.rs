//! A producer that publishes every version it writes, none coalesced away: it waits for
//! `Store::flushed()` to reach each write before making the next one. Two nodes on
//! loopback; the consumer counts the versions it receives.
//!
//! `cargo run --example paced_producer -- [COUNT]` (default 200)

use std::time::Duration;

use serde::{Deserialize, Serialize};
use truffle_actors::prelude::*;

#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "ticks")]
struct Ticks {
    n: u64,
}

/// Two nodes on loopback: the producer publishes every version it writes.
#[derive(clap::Parser)]
#[command(name = "paced_producer")]
struct Args {
    /// How many versions the producer writes.
    #[arg(default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    count: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count = <Args as clap::Parser>::parse().count;
    let loopback: truffle_actors::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let producer = MeshNode::builder()
        .name("producer")
        .listen(loopback.clone())
        .mdns(false)
        .start()
        .await?;
    let consumer = MeshNode::builder()
        .name("consumer")
        .listen(loopback)
        .mdns(false)
        .bootstrap(producer.listen_addrs()[0].clone())
        .start()
        .await?;
    let ticks = producer.store::<Ticks>().await?;
    let seen = consumer.store::<Ticks>().await?;
    // ANCHOR: wait
    let me = producer.device_id();
    seen.wait_until(Duration::from_secs(20), |snap| snap.get(&me).is_some())
        .await
        .map_err(|_| "the consumer never received the producer's slice")?;
    // ANCHOR_END: wait
    let mut events = seen.subscribe();

    // ANCHOR: paced
    let mut flushed = ticks.flushed();
    for n in 1..=count {
        let written = ticks.update(move |t| t.n = n).await?.version;
        // Wait until this version is published before writing the next one.
        tokio::time::timeout(Duration::from_secs(10), flushed.wait_for(|v| *v >= written))
            .await??;
    }
    // ANCHOR_END: paced

    let mut received = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received < count {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(StoreEvent::RemoteUpdated { slice })) if slice.device_id == me => received += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    println!(
        "wrote {count} versions; the producer published {} slices (its initial one included); \
         the consumer received {received} versions",
        producer.metrics().published
    );
    consumer.shutdown().await?;
    producer.shutdown().await?;
    Ok(())
}

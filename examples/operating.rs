//! Looking inside a running node: the admin endpoint, the introspection API, node events
//! and Prometheus metrics in an application's own registry (the book's "Operating a
//! mesh" chapter includes its parts).
//!
//! ```text
//! cargo run --example operating -- [--admin HOST:PORT] [--linger SECS]
//! ```
//!
//! Starts two nodes on loopback, the first with its admin endpoint (default
//! `127.0.0.1:0`, a free port), lets the second write a slice and leave, and prints what
//! the first saw. `--linger` keeps both nodes up that long before the second leaves, to
//! look at the first one's dashboard or run `truffle status`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use truffle_actors::prelude::*;
use truffle_actors::prometheus_client::encoding::text::encode;
use truffle_actors::prometheus_client::registry::Registry;
use truffle_actors::NodeEvent;

/// What each worker reports.
#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "jobs")]
struct Jobs {
    running: Vec<String>,
}

/// Command line of the example.
#[derive(clap::Parser)]
#[command(name = "operating")]
struct Args {
    /// Where the first node serves its admin endpoint.
    #[arg(long, default_value = "127.0.0.1:0")]
    admin: std::net::SocketAddr,
    /// Seconds to keep the first node running at the end.
    #[arg(long, default_value_t = 0)]
    linger: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = <Args as clap::Parser>::parse();
    // ANCHOR: admin
    let node = MeshNode::builder()
        .name("worker-1")
        .listen("/ip4/127.0.0.1/tcp/0".parse()?)
        .mdns(false)
        .admin(args.admin) // e.g. 127.0.0.1:9090; port 0 picks a free one
        .start()
        .await?;
    if let Some(addr) = node.admin_addr() {
        println!("dashboard: http://{addr}/   metrics: http://{addr}/metrics");
    }
    // ANCHOR_END: admin
    let jobs = node.store::<Jobs>().await?;

    // ANCHOR: events
    // Subscribe first, then read the current state: nothing falls in between.
    let mut events = node.events();
    // ANCHOR_END: events

    let peer = MeshNode::builder()
        .name("worker-2")
        .listen("/ip4/127.0.0.1/tcp/0".parse()?)
        .bootstrap(node.listen_addrs()[0].clone())
        .mdns(false)
        .start()
        .await?;
    let peer_jobs = peer.store::<Jobs>().await?;
    peer_jobs
        .update(|j| j.running.push("nightly-backup".into()))
        .await?;
    let peer_id = peer.device_id();
    jobs.wait_until(Duration::from_secs(20), |s| s.get(&peer_id).is_some())
        .await
        .map_err(|_| "worker-2's slice did not arrive in 20 s")?;

    // ANCHOR: peers
    for p in node.peers() {
        println!(
            "peer {} name={:?} state={:?} connected={} rtt={:?} ms holds={:?}",
            p.device_id, p.name, p.state, p.connected, p.rtt_ms, p.stores
        );
    }
    for s in node.stores() {
        for slice in &s.slices {
            println!(
                "store {} device {} version {}{}",
                s.id,
                slice.device_id,
                slice.version,
                if slice.local { " (this node)" } else { "" }
            );
        }
    }
    // ANCHOR_END: peers

    // ANCHOR: observe
    // A read-only view of the store from a third node: every device's slice as JSON,
    // without the type and without a slice of its own.
    let watcher = MeshNode::builder()
        .name("dashboard")
        .listen("/ip4/127.0.0.1/tcp/0".parse()?)
        .bootstrap(node.listen_addrs()[0].clone())
        .mdns(false)
        .start()
        .await?;
    let observer = watcher.observe(StoreId::new("jobs")?).await?;
    let slices = observer
        .wait_until(Duration::from_secs(20), |s| s.len() == 2)
        .await
        .map_err(|_| "the observer did not receive both slices in 20 s")?;
    for (device, slice) in &slices {
        println!("observed {device} v{}: {}", slice.version, slice.data);
    }
    watcher.shutdown().await?;
    // ANCHOR_END: observe

    // ANCHOR: registry
    // An application that already serves Prometheus metrics adds the node's to its own
    // registry (several nodes: one `sub_registry_with_label` each).
    let mut registry = Registry::default();
    node.register_metrics(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    for line in text
        .lines()
        .filter(|l| l.starts_with("truffle_slices_applied"))
    {
        println!("{line}");
    }
    // ANCHOR_END: registry

    if args.linger > 0 {
        println!("keeping both workers up for {} s", args.linger);
        tokio::time::sleep(Duration::from_secs(args.linger)).await;
    }
    peer.shutdown().await?;
    // ANCHOR: follow
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        println!("event: {}", serde_json::to_string(&ev)?);
        if matches!(ev, NodeEvent::PeerOffline { .. }) {
            break;
        }
    }
    // ANCHOR_END: follow

    node.shutdown().await?;
    Ok(())
}

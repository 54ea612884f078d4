//! Several nodes in one process on loopback, syncing a store, step by step.
//!
//! ```text
//! cargo run --example demo -- [--nodes N] [--admin HOST:PORT] [--liveness heartbeats|watch]
//!                               [--step-timeout SECS]
//! ```
//!
//! With `--admin`, node-0 serves its admin endpoint (dashboard, metrics, JSON API) there;
//! the demo prints the address and, at the end, waits for Enter before the nodes stop.
//!
//! Every node writes its slice, then updates it; then one node leaves gracefully and one is
//! dropped without a word. After each step the demo prints what every node sees and waits
//! until all agree. It exits non-zero if a step does not converge within its deadline
//! (`--step-timeout`, 20 s by default).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use truffle_actors::prelude::*;
use truffle_actors::proto::Liveness;

/// What each device shares in the demo store.
#[derive(Syncable, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[syncable(id = "demo-status")]
struct Status {
    text: String,
    count: u64,
}

struct Demo {
    /// How long each step may take to converge.
    deadline: Duration,
    liveness: Liveness,
    nodes: Vec<Option<MeshNode>>,
    stores: Vec<Option<Store<Status>>>,
    names: BTreeMap<DeviceId, String>,
    order: Vec<DeviceId>,
}

impl Demo {
    fn live(&self) -> impl Iterator<Item = (usize, &Store<Status>)> {
        self.stores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// Prints one row per live node: what it holds for every device.
    fn table(&self, title: &str) {
        println!("\n== {title}");
        let width = 16;
        print!("{:<10}|", "seen by");
        for d in &self.order {
            print!(" {:<width$}|", self.names[d]);
        }
        println!();
        println!("{}", "-".repeat(11 + self.order.len() * (width + 2)));
        for (i, store) in self.live() {
            let snap = store.snapshot();
            print!("{:<10}|", format!("node-{i}"));
            for d in &self.order {
                let cell = match snap.get(d) {
                    Some(s) if s.data.text.is_empty() => format!("(empty) v{}", s.version.counter),
                    Some(s) => format!("{} #{} v{}", s.data.text, s.data.count, s.version.counter),
                    None => "-".to_string(),
                };
                print!(" {cell:<width$}|");
            }
            println!();
        }
    }

    /// Waits until every live node's view satisfies `want`, then prints the table.
    async fn converge<F>(&self, step: &str, want: F) -> Result<(), String>
    where
        F: Fn(&StoreSnapshot<Status>) -> bool + Clone,
    {
        let started = Instant::now();
        for (i, store) in self.live() {
            if store.wait_until(self.deadline, want.clone()).await.is_err() {
                self.table(&format!("{step}: NOT converged"));
                return Err(format!(
                    "step \"{step}\" did not converge within {:?}: node-{i} disagrees (see table){}",
                    self.deadline,
                    self.busy_hint()
                ));
            }
        }
        self.table(&format!(
            "{step}: all nodes agree after {} ms",
            started.elapsed().as_millis()
        ));
        Ok(())
    }
}

impl Demo {
    /// When the machine is busier than its cores, says so: every node of the demo shares
    /// this one process, and on a busy machine many nodes need longer than the default
    /// deadline (see the Getting started chapter for measured times).
    fn busy_hint(&self) -> String {
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok());
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        match load {
            Some(load) if load > cores as f64 => {
                let watch = match self.liveness {
                    Liveness::Heartbeats if self.nodes.len() > 16 => {
                        ", or --liveness watch (its cost per node does not grow with the mesh)"
                    }
                    _ => "",
                };
                format!(
                    "\nthis machine is busy (load average {load:.1} on {cores} cores) and all {} nodes \
                     share this process: give them longer with --step-timeout 120{watch}, or \
                     fewer nodes",
                    self.nodes.len()
                )
            }
            _ => String::new(),
        }
    }
}

/// The condition "every device in `order` shows `count`", for [`Demo::converge`].
fn all_at(
    order: &Arc<Vec<DeviceId>>,
    count: u64,
) -> impl Fn(&StoreSnapshot<Status>) -> bool + Clone {
    let order = order.clone();
    move |s| {
        order
            .iter()
            .all(|d| s.get(d).is_some_and(|x| x.data.count == count))
    }
}

/// Several nodes in one process on loopback, syncing a store, step by step.
#[derive(clap::Parser)]
#[command(name = "demo")]
struct Args {
    /// How many nodes (one leaves, one is dropped, so at least 3).
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(3..=64))]
    nodes: u16,
    /// Serve node-0's admin endpoint (dashboard, metrics, API) here, e.g. 127.0.0.1:9090.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// How nodes tell a gone device from a live one: watch (the default; its cost per node
    /// does not grow with the mesh), or heartbeats (flooded by every device).
    #[arg(long, value_name = "KIND", default_value = "watch")]
    liveness: Liveness,
    /// How long each step may take to converge on every node before the demo fails.
    #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    step_timeout: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // Truffle's own warnings; libp2p's internal ones (gossipsub's graft backoff,
            // yamux closing a connection its peer already closed) are routine when many
            // nodes in one process trim and re-form their connections. RUST_LOG overrides.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,libp2p_gossipsub=error,yamux=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = <Args as clap::Parser>::parse();
    let deadline = Duration::from_secs(args.step_timeout);
    match run(usize::from(args.nodes), args.admin, args.liveness, deadline).await {
        Ok(()) => {
            println!("\nevery step converged");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    n: usize,
    admin: Option<std::net::SocketAddr>,
    liveness: Liveness,
    deadline: Duration,
) -> Result<(), String> {
    println!("starting {n} nodes on 127.0.0.1 (mDNS off, each bootstrapped to node-0 and its predecessor; {liveness} liveness)");
    let mut demo = Demo {
        deadline,
        liveness,
        nodes: Vec::new(),
        stores: Vec::new(),
        names: BTreeMap::new(),
        order: Vec::new(),
    };
    let mut addrs: Vec<truffle_actors::Multiaddr> = Vec::new();
    for i in 0..n {
        let mut b = MeshNode::builder()
            .name(format!("node-{i}"))
            .listen("/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"))
            .mdns(false)
            .liveness(liveness);
        for a in addrs.iter().take(1).chain(addrs.last()) {
            b = b.bootstrap(a.clone());
        }
        if let (0, Some(addr)) = (i, admin) {
            b = b.admin(addr);
        }
        let node = b
            .start()
            .await
            .map_err(|e| format!("node-{i} did not start: {e}"))?;
        addrs.push(node.listen_addrs()[0].clone());
        let store = node
            .store::<Status>()
            .await
            .map_err(|e| format!("node-{i} could not join the store: {e}"))?;
        demo.names.insert(node.device_id(), format!("node-{i}"));
        demo.order.push(node.device_id());
        println!("  node-{i} = {} at {}", node.device_id(), addrs[i]);
        if let Some(addr) = node.admin_addr() {
            println!("  node-{i}'s dashboard: open http://{addr}/ (or: truffle watch --admin http://{addr})");
        }
        demo.nodes.push(Some(node));
        demo.stores.push(Some(store));
    }

    // Step 1: every node writes its own slice.
    for (i, store) in demo.live() {
        store
            .set(Status {
                text: format!("hello-{i}"),
                count: 1,
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    let order = Arc::new(demo.order.clone());
    demo.converge("1. every node wrote its slice", all_at(&order, 1))
        .await?;

    // Step 2: every node updates.
    for (_, store) in demo.live() {
        store
            .update(|s| {
                s.count += 1;
                s.text = s.text.replace("hello", "updated");
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    demo.converge("2. every node updated", all_at(&order, 2))
        .await?;

    // Step 3: one node leaves gracefully; peers drop it at once.
    let leaver = n - 2;
    let leaver_id = demo.order[leaver];
    demo.stores[leaver] = None;
    if let Some(node) = demo.nodes[leaver].take() {
        node.shutdown().await.map_err(|e| e.to_string())?;
    }
    println!("\nnode-{leaver} left gracefully");
    demo.converge(&format!("3. node-{leaver} left"), move |s| {
        s.get(&leaver_id).is_none()
    })
    .await?;

    // Step 4: one node is dropped without leaving; peers remove it after their timeout
    // (heartbeats) or once they cannot reach it again (watch).
    let dropped = n - 1;
    let dropped_id = demo.order[dropped];
    demo.stores[dropped] = None;
    drop(demo.nodes[dropped].take());
    let wait = match liveness {
        Liveness::Watch => "waiting for its neighbours to find it unreachable",
        _ => "waiting for the presence timeout",
    };
    println!("\nnode-{dropped} was dropped without leaving ({wait})");
    demo.converge(&format!("4. node-{dropped} timed out"), move |s| {
        s.get(&dropped_id).is_none() && s.get(&leaver_id).is_none()
    })
    .await?;

    if let Some(addr) = demo.nodes[0].as_ref().and_then(|n| n.admin_addr()) {
        println!("\nthe dashboard is still at http://{addr}/; press Enter to stop the nodes");
        let mut line = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    }
    // Newest first: every node still running then keeps both of its bootstrap peers
    // (node-0 and its predecessor) until it leaves itself, instead of redialling them and
    // saying they are gone.
    for node in demo.nodes.into_iter().flatten().rev() {
        node.shutdown().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

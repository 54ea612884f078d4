//! `truffle peek`: join a mesh as a read-only observer of one store and print every
//! device's slice, live.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use truffle_actors::{MeshNode, Multiaddr, ObservedSlices, StoreEvent, StoreId};

/// What `peek` was asked to do.
#[derive(Debug)]
pub struct PeekArgs {
    /// Peers to bootstrap from.
    pub peers: Vec<Multiaddr>,
    /// The store to observe.
    pub store: String,
    /// JSON lines instead of text.
    pub json: bool,
    /// The mesh's pre-shared key, for a private mesh.
    pub psk_file: Option<PathBuf>,
    /// Stop (leaving gracefully) after this long.
    pub duration: Option<Duration>,
}

/// The `state` JSON line: every device's slice.
pub fn state_json(store: &StoreId, slices: &ObservedSlices) -> Value {
    let devices: BTreeMap<String, Value> = slices
        .iter()
        .map(|(d, s)| {
            (
                d.to_string(),
                json!({ "version": s.version, "updated_at": s.updated_at, "data": s.data }),
            )
        })
        .collect();
    json!({ "event": "state", "store": store, "slices": devices })
}

fn print_human(store: &StoreId, slices: &ObservedSlices) {
    println!("== {store}: {} device(s)", slices.len());
    for (d, s) in slices {
        println!("  {d} v{}: {}", s.version, s.data);
    }
}

/// Runs `peek` until a stop signal, or the duration.
pub async fn run(args: PeekArgs) -> Result<(), String> {
    let store = StoreId::new(&args.store).map_err(|e| e.to_string())?;
    if args.peers.is_empty() {
        return Err("peek needs at least one --peer MULTIADDR".into());
    }
    let mut b = MeshNode::builder()
        .name("truffle-peek")
        .listen("/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"))
        .mdns(false);
    for p in &args.peers {
        b = b.bootstrap(p.clone());
    }
    if let Some(path) = &args.psk_file {
        b = b.psk_file(path);
    }
    let node = b.start().await.map_err(|e| e.to_string())?;
    let observer = match node.observe(store.clone()).await {
        Ok(o) => o,
        Err(e) => {
            let _ = node.shutdown().await;
            return Err(e.to_string());
        }
    };
    if !args.json {
        eprintln!(
            "observing store `{store}` as {} (read-only; Ctrl-C to stop)",
            node.device_id()
        );
    }
    let mut events = observer.subscribe();
    let stop = stop_signal();
    let until = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop, until);
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = &mut stop => break,
            _ = &mut until => break,
        };
        let Some(ev) = ev else { break };
        if let StoreEvent::RemoteUndecodable {
            device_id, reason, ..
        } = &ev
        {
            eprintln!("{device_id}'s slice is not representable as JSON: {reason}");
            continue;
        }
        // Print the newest state once per burst of events.
        let slices = observer.slices();
        if args.json {
            println!("{}", state_json(&store, &slices));
        } else {
            print_human(&store, &slices);
        }
    }
    node.shutdown().await.map_err(|e| e.to_string())
}

/// Resolves at Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

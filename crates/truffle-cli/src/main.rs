//! `truffle`: look inside a running Truffle mesh through a node's admin endpoint (started
//! with `MeshNodeBuilder::admin`, or `todo --admin ADDR`).
//!
//! ```text
//! truffle status --admin http://127.0.0.1:9090 [--json]          node, peers, stores, counters
//! truffle watch  --admin http://127.0.0.1:9090 [--store ID] [--json]   one line per event
//! truffle peek   --peer MULTIADDR --store ID [--json]    join read-only, print every slice
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;
use truffle_cli::http::{follow_events, get_json, AdminUrl};
use truffle_cli::render;

/// How long `status` waits for each answer.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "truffle",
    version,
    about = "Look inside a running Truffle mesh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The node, its peers (state, connection, last heard, round-trip time) and its stores.
    Status {
        /// The node's admin endpoint, e.g. http://127.0.0.1:9090.
        #[arg(long)]
        admin: AdminUrl,
        /// One JSON object ({"node", "peers", "stores"}) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follows the node's events (peers online, suspected, offline; connections; slices
    /// updated and removed), one line each, until interrupted.
    Watch {
        /// The node's admin endpoint, e.g. http://127.0.0.1:9090.
        #[arg(long)]
        admin: AdminUrl,
        /// Only slice events of this store.
        #[arg(long)]
        store: Option<String>,
        /// Each event as one JSON line (the first is {"event":"subscribed"}).
        #[arg(long)]
        json: bool,
    },
    /// Joins the mesh as a read-only observer of one store (no slice of its own, so no
    /// device sees it in the store) and prints every device's slice, live.
    Peek {
        /// A peer to join through (repeatable), e.g. /ip4/127.0.0.1/tcp/4001.
        #[arg(long, required = true)]
        peer: Vec<truffle_actors::Multiaddr>,
        /// The store to observe.
        #[arg(long)]
        store: String,
        /// One JSON line per change: {"event":"state","store","slices":{DEVICE:{version,updated_at,data}}}.
        #[arg(long)]
        json: bool,
        /// The mesh's pre-shared key (swarm.key format), for a private mesh.
        #[arg(long)]
        psk_file: Option<std::path::PathBuf>,
        /// Leave (gracefully) after this many seconds instead of at Ctrl-C.
        #[arg(long, value_name = "SECS")]
        r#for: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Peek {
            peer,
            store,
            json,
            psk_file,
            r#for,
        } => {
            truffle_cli::peek::run(truffle_cli::peek::PeekArgs {
                peers: peer,
                store,
                json,
                psk_file,
                duration: r#for.map(Duration::from_secs),
            })
            .await
        }
        Cmd::Status { admin, json } => {
            let node = get_json(&admin, "/api/node", TIMEOUT).await?;
            let peers = get_json(&admin, "/api/peers", TIMEOUT).await?;
            let stores = get_json(&admin, "/api/stores", TIMEOUT).await?;
            if json {
                println!(
                    "{}",
                    json!({ "node": node, "peers": peers, "stores": stores })
                );
            } else {
                print!("{}", render::status(&node, &peers, &stores));
            }
            Ok(())
        }
        Cmd::Watch { admin, store, json } => {
            let path = match &store {
                Some(s) => format!("/api/events?store={s}"),
                None => "/api/events".to_string(),
            };
            if let Some(s) = &store {
                // The endpoint answers 404 for a store it has not joined; say so up front.
                get_json(&admin, &format!("/api/stores/{s}"), TIMEOUT).await?;
            }
            let stdout = std::io::stdout();
            follow_events(&admin, &path, |ev| {
                let line = if json {
                    ev.to_string()
                } else if ev.get("event").and_then(|e| e.as_str()) == Some("subscribed") {
                    eprintln!("watching {admin} (Ctrl-C to stop)");
                    return true;
                } else {
                    render::event_line(&ev)
                };
                let mut out = stdout.lock();
                // A closed pipe (`truffle watch | head`) ends the watch.
                writeln!(out, "{line}").is_ok() && out.flush().is_ok()
            })
            .await?;
            Ok(())
        }
    }
}

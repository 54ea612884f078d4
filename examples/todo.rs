//! The seed's todo app, one process per device.
//!
//! ```text
//! cargo run --example todo -- [--name NAME] [--listen MULTIADDR]... [--peer MULTIADDR]...
//!                             [--no-mdns] [--key-file PATH] [--psk-file PATH] [--json]
//!                             [--data-dir PATH] [--admin HOST:PORT]
//! ```
//!
//! Commands on stdin: `add <text>`, `done <n>`, `list`, `quit` (end of input, Ctrl-C and
//! SIGTERM do the same: leave the mesh gracefully and exit 0). With `--json`, stdout
//! carries only JSON lines: one `ready` event, then a `state` event after every change,
//! local or remote; a state line after a removal also has a `removed` field
//! (`device_id`, `name`, `reason`).
//! With `--data-dir`, this device's list is saved there and comes back on the next start
//! (after `quit`, Ctrl-C or a crash); in `--json` mode a `persisted` event gives the write
//! counter of the newest version on disk.
//! With `--admin HOST:PORT` (port 0 picks one) the node serves its admin endpoint there:
//! metrics, JSON API and a live dashboard; the `ready` line then has an `admin` field
//! (`"http://HOST:PORT"`, the bound address).

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use truffle_actors::prelude::*;
use truffle_actors::Multiaddr;

// ANCHOR: types
/// One device's todo list: its slice of the `todos` store.
#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "todos")]
struct TodoState {
    /// The device's display name, so peers can label its list.
    name: String,
    items: Vec<Todo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Todo {
    text: String,
    done: bool,
}
// ANCHOR_END: types

/// A shared todo list: every device edits its own list and sees everyone's.
#[derive(clap::Parser)]
#[command(name = "todo")]
struct Args {
    /// This device's name, shown to the others.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "",
        hide_default_value = true
    )]
    name: String,
    /// Address to listen on (repeatable; default: every interface, a free port).
    #[arg(long, value_name = "MULTIADDR", value_parser = multiaddr)]
    listen: Vec<Multiaddr>,
    /// A peer to join the mesh through (repeatable).
    #[arg(long = "peer", value_name = "MULTIADDR", value_parser = multiaddr)]
    peers: Vec<Multiaddr>,
    /// Do not discover peers on the local network.
    #[arg(long = "no-mdns", action = clap::ArgAction::SetFalse)]
    mdns: bool,
    /// Keep this device's identity in this file (created if missing).
    #[arg(long, value_name = "PATH")]
    key_file: Option<String>,
    /// Join the private mesh whose pre-shared key is in this file (swarm.key format).
    #[arg(long, value_name = "PATH")]
    psk_file: Option<String>,
    /// Print one JSON object per line instead of the human-readable list.
    #[arg(long)]
    json: bool,
    /// Save this device's list here and restore it on the next start.
    #[arg(long, value_name = "PATH")]
    data_dir: Option<String>,
    /// Serve the admin endpoint (dashboard, metrics, JSON API) on HOST:PORT (port 0 picks
    /// one).
    #[arg(long, value_name = "HOST:PORT", value_parser = socket_addr)]
    admin: Option<std::net::SocketAddr>,
}

fn multiaddr(s: &str) -> Result<Multiaddr, String> {
    s.parse::<Multiaddr>()
        .map_err(|e| format!("{s:?} is not a multiaddr ({e}); for example /ip4/127.0.0.1/tcp/4001"))
}

fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .map_err(|e| format!("{s:?} is not HOST:PORT ({e}); for example 127.0.0.1:9090"))
}

/// The `state` JSON line: every device this node holds, itself included.
fn state_json(snap: &StoreSnapshot<TodoState>) -> serde_json::Value {
    let devices: BTreeMap<String, serde_json::Value> = snap
        .iter()
        .map(|s| {
            (
                s.device_id.to_string(),
                json!({ "name": s.data.name, "items": s.data.items }),
            )
        })
        .collect();
    json!({ "event": "state", "devices": devices })
}

fn print_human(snap: &StoreSnapshot<TodoState>) {
    for s in snap.iter() {
        let me = if s.device_id == snap.local.device_id {
            " (me)"
        } else {
            ""
        };
        println!(
            "{}{me}:",
            if s.data.name.is_empty() {
                "?"
            } else {
                &s.data.name
            }
        );
        if s.data.items.is_empty() {
            println!("    (nothing to do)");
        }
        for (i, t) in s.data.items.iter().enumerate() {
            println!(
                "  {}. [{}] {}",
                i + 1,
                if t.done { "x" } else { " " },
                t.text
            );
        }
    }
}

pub(crate) fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(app());
    // tokio reads stdin on a blocking thread that stays in `read` until the next line or
    // end of input; after a signal neither may come, and waiting for that thread would
    // keep the process alive after the node has left.
    runtime.shutdown_background();
    code
}

async fn app() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Exits 2 with a usage message on bad arguments (0 with help for --help).
    let args = <Args as clap::Parser>::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves at Ctrl-C (SIGINT) or SIGTERM with the signal's name. Registered before the
/// node starts, so a signal never kills the app without a leave.
fn stop_signals() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let stop = stop_signals().map_err(|e| Error::Config(format!("cannot handle signals: {e}")))?;
    // ANCHOR: node
    let mut builder = MeshNode::builder().mdns(args.mdns);
    if !args.name.is_empty() {
        // Names this node in its log lines.
        builder = builder.name(&args.name);
    }
    for addr in args.listen {
        builder = builder.listen(addr);
    }
    for peer in args.peers {
        builder = builder.bootstrap(peer);
    }
    if let Some(path) = &args.key_file {
        builder = builder.key_file(path);
    }
    if let Some(path) = &args.psk_file {
        // A private mesh: only nodes with the same swarm.key can connect.
        builder = builder.psk_file(path);
    }
    // ANCHOR: data_dir
    if let Some(dir) = &args.data_dir {
        // This device's list is saved here and restored on the next start.
        builder = builder.data_dir(dir);
    }
    // ANCHOR_END: data_dir
    // ANCHOR: admin
    if let Some(addr) = args.admin {
        // Metrics, a JSON API and a live dashboard at http://ADDR/ (keep it on loopback).
        builder = builder.admin(addr);
    }
    // ANCHOR_END: admin
    let node = builder.start().await?;
    // ANCHOR_END: node
    let name = if args.name.is_empty() {
        node.device_id().to_string()
    } else {
        args.name
    };

    if args.json {
        let listen: Vec<String> = node.listen_addrs().iter().map(|a| a.to_string()).collect();
        let mut ready = json!({ "event": "ready", "device_id": node.device_id().to_string(), "listen": listen });
        if let Some(addr) = node.admin_addr() {
            ready["admin"] = json!(format!("http://{addr}"));
        }
        println!("{ready}");
    } else {
        println!("{name} is {}", node.device_id());
        for a in node.listen_addrs() {
            println!("  listening on {a}");
        }
        if let Some(addr) = node.admin_addr() {
            println!("  dashboard at http://{addr}/ (truffle status --admin http://{addr})");
        }
        println!("commands: add <text> | done <n> | list | quit");
    }

    // ANCHOR: join
    let todos = node.store::<TodoState>().await?;
    // ANCHOR_END: join

    // ANCHOR: events
    let mut events = todos.subscribe();
    let view = todos.clone();
    let json_out = args.json;
    let printer = tokio::spawn(async move {
        // Names of the devices seen, to name them when they are gone.
        let mut names: HashMap<DeviceId, String> = HashMap::new();
        while let Some(event) = events.recv().await {
            let snap = view.snapshot();
            let removed = match &event {
                StoreEvent::RemoteRemoved { device_id, reason } => {
                    Some((*device_id, names.remove(device_id), *reason))
                }
                _ => None,
            };
            for s in snap.iter().filter(|s| !s.data.name.is_empty()) {
                names.insert(s.device_id, s.data.name.clone());
            }
            if json_out {
                let mut line = state_json(&snap);
                if let Some((device_id, name, reason)) = removed {
                    line["removed"] = json!({
                        "device_id": device_id.to_string(),
                        "name": name,
                        "reason": reason.to_string(),
                    });
                }
                println!("{line}");
                continue;
            }
            match (event, removed) {
                (StoreEvent::RemoteUpdated { slice }, _) => {
                    println!("~ {} updated their list", slice.data.name)
                }
                (_, Some((device_id, Some(name), reason))) => {
                    println!("~ {name} ({device_id}) is gone ({reason})")
                }
                (_, Some((device_id, None, reason))) => {
                    println!("~ {device_id} is gone ({reason})")
                }
                _ => {}
            }
        }
    });
    // ANCHOR_END: events

    if json_out && args.data_dir.is_some() {
        let mut persisted = todos.persisted();
        tokio::spawn(async move {
            while persisted.changed().await.is_ok() {
                let v = *persisted.borrow_and_update();
                println!(
                    "{}",
                    json!({ "event": "persisted", "incarnation": v.incarnation, "counter": v.counter })
                );
            }
        });
    }

    todos.update(move |s| s.name = name).await?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    tokio::pin!(stop);
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            signal = &mut stop => {
                eprintln!("{signal}: leaving the mesh");
                break;
            }
        };
        let line = match line {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                eprintln!("cannot read stdin ({e}); leaving");
                break;
            }
        };
        let line = line.trim();
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim().to_string();
        match cmd {
            "" => {}
            // ANCHOR: update
            "add" if !rest.is_empty() => {
                let added = todos
                    .update(move |s| {
                        s.items.push(Todo {
                            text: rest,
                            done: false,
                        })
                    })
                    .await;
                keep_going(added, "not added")?;
            }
            "done" => match rest.parse::<usize>() {
                Ok(n) if n >= 1 && n <= todos.local().data.items.len() => {
                    let marked = todos.update(move |s| s.items[n - 1].done = true).await;
                    keep_going(marked, "not marked")?;
                }
                _ => eprintln!("done needs the number of one of your items (see `list`)"),
            },
            // ANCHOR_END: update
            "list" => {
                if args.json {
                    println!("{}", state_json(&todos.snapshot()));
                } else {
                    print_human(&todos.snapshot());
                }
            }
            "quit" | "exit" => break,
            "add" => eprintln!("add needs some text: add <text>"),
            other => eprintln!(
                "unknown command {other:?}; commands: add <text> | done <n> | list | quit"
            ),
        }
    }

    // ANCHOR: shutdown
    node.shutdown().await?;
    // ANCHOR_END: shutdown
    printer.abort();
    Ok(())
}

/// A failed write leaves the list as it was: say so and carry on (an item too large for a
/// slice, say). Only a closed store ends the app.
fn keep_going<T>(result: Result<T, Error>, what: &str) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(e @ Error::StoreClosed(_)) => Err(e),
        Err(e) => {
            eprintln!("{what}: {e}");
            Ok(())
        }
    }
}

//! `truffle-sim`: runs Truffle's protocol core for N nodes on a virtual clock and prints
//! what it costs and how fast it converges and detects. See the book's Simulation chapter.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::json;
use truffle_actors::proto::{Liveness, ProtoConfig};
use truffle_sim::scenario::{run, Outcome, Scenario};
use truffle_sim::sim::{SimConfig, Topology};

/// Deterministic simulation of Truffle's protocol: the same seed prints the same output.
#[derive(Parser, Debug)]
#[command(name = "truffle-sim", version)]
struct Args {
    /// Nodes; a comma-separated list runs each size in turn (e.g. 16,64,256).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<usize>,
    /// Simulated seconds per run.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenario to run (repeatable); default: all of them.
    #[arg(long = "scenario", value_parser = parse_scenario)]
    scenarios: Vec<Scenario>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Mean one-way link latency, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    latency_ms: f64,
    /// Probability that a gossip message is lost on a link (the `loss` scenario sets 0.3).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Bootstrap graph.
    #[arg(long, value_enum, default_value_t = Topo::Random3)]
    topology: Topo,
    /// Bytes of slice data per node.
    #[arg(long, default_value_t = 64)]
    slice_bytes: usize,
    /// Stores every node joins.
    #[arg(long, default_value_t = 1)]
    stores: usize,
    /// How the engines judge liveness: heartbeats (every device floods one every presence
    /// interval; what nodes run) or watch (neighbours watch, accuse, the accused refutes).
    #[arg(long, value_enum, default_value_t = Live::Heartbeats)]
    liveness: Live,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Live {
    /// Flooded periodic heartbeats, removal after the presence timeout.
    Heartbeats,
    /// Neighbour watch, signed accusations, refutation, anti-entropy by hash.
    Watch,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Topo {
    /// Each node bootstraps to 3 random earlier nodes (as truffle-bench does).
    Random3,
    /// Every node bootstraps to node 0.
    Star,
    /// Two random3 halves joined by three bridges (a split keeps each side connected).
    Halves,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    Scenario::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        format!("unknown scenario `{s}`; one of: {}", names.join(", "))
    })
}

fn main() {
    let args = Args::parse();
    if args.nodes.contains(&0)
        || !args.seconds.is_finite()
        || args.seconds <= 0.0
        || !(0.0..=1.0).contains(&args.loss)
    {
        eprintln!("error: --nodes must be at least 1, --seconds positive, --loss within 0..=1");
        std::process::exit(2);
    }
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    println!(
        "truffle-sim: seed {}, {} s per run, latency {} ms, topology {:?}, slice {} B, {} store(s), liveness {:?}",
        args.seed, args.seconds, args.latency_ms, args.topology, args.slice_bytes, args.stores, args.liveness
    );
    println!(
        "{:<15} {:>6} | {:>9} {:>10} {:>9} {:>10} {:>8} | {:>7} {:>6} {:>5} | {:>9} | {:>8} {:>8} {:>8} {:>5} {:>5} | {:>9} {:>5}",
        "scenario", "nodes", "msg/s out", "B/s out", "msg/s in", "B/s in", "deliv/s",
        "devices", "slices", "conns", "join ms", "det p50", "det p99", "det max", "undet", "false",
        "heal ms", "lag"
    );
    let mut results = Vec::new();
    let mut walls = Vec::new();
    for &n in &args.nodes {
        for &sc in &scenarios {
            let cfg = SimConfig {
                nodes: n,
                seed: args.seed,
                latency: Duration::from_secs_f64(args.latency_ms / 1e3),
                loss: args.loss,
                slice_bytes: args.slice_bytes,
                topology: match args.topology {
                    Topo::Random3 => Topology::Random3,
                    Topo::Star => Topology::Star,
                    Topo::Halves => Topology::Halves,
                },
                proto: {
                    let mut p = ProtoConfig::default();
                    p.liveness = match args.liveness {
                        Live::Heartbeats => Liveness::Heartbeats,
                        Live::Watch => Liveness::Watch,
                    };
                    p
                },
                stores: args.stores.max(1),
                ..SimConfig::default()
            };
            let o = run(sc, cfg, args.seconds);
            print_row(&o);
            walls.push(format!("{} n={}: {:.1} s", o.scenario, n, o.wall_ms / 1e3));
            results.push(o);
        }
    }
    // Wall time varies between machines and runs, so it goes to stderr: stdout and the
    // JSON stay byte-for-byte identical for a seed.
    for w in &walls {
        eprintln!("wall time {w}");
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "seed": args.seed,
            "seconds": args.seconds,
            "latency_ms": args.latency_ms,
            "topology": format!("{:?}", args.topology),
            "liveness": format!("{:?}", args.liveness),
            "runs": results.iter().map(Outcome::json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).expect("JSON values serialise");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("error: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

fn print_row(o: &Outcome) {
    let opt = |v: Option<f64>| v.map_or("never".to_string(), |x| format!("{x:.0}"));
    let det = |x: f64| {
        if o.detection.count == 0 {
            "-".to_string()
        } else {
            format!("{x:.0}")
        }
    };
    println!(
        "{:<15} {:>6} | {:>9.1} {:>10.0} {:>9.1} {:>10.0} {:>8.1} | {:>7.1} {:>6.1} {:>5.1} | {:>9} | {:>8} {:>8} {:>8} {:>5} {:>5} | {:>9} {:>5}",
        o.scenario,
        o.nodes,
        o.msgs_sent,
        o.bytes_sent,
        o.msgs_recv,
        o.bytes_recv,
        o.delivered,
        o.devices_tracked,
        o.slices_held,
        o.connections,
        opt(o.converge_after_join_ms),
        det(o.detection.p50),
        det(o.detection.p99),
        det(o.detection.max),
        o.undetected,
        o.false_removals,
        if matches!(o.scenario, "partition-heal" | "restart") {
            opt(o.converge_after_heal_ms)
        } else {
            "-".into()
        },
        o.lagging_at_end,
    );
}

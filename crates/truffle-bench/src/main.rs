//! `truffle-bench`: Truffle's macro benchmark.
//!
//! Runs scenarios B1–B6 on real nodes over loopback TCP in this process, the footprint
//! figures in child processes, and two baselines in the same process layout (raw libp2p
//! gossipsub, chitchat); prints a table per scenario, the ratios, and every target with
//! PASS/MISS; writes everything as JSON. See `README.md` beside `Cargo.toml`.

mod baseline_chitchat;
mod baseline_gossipsub;
mod calibrate;
mod footprint;
mod idle;
mod mesh;
mod overlay;
mod report;
mod rng;
mod scenarios;
mod sys;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::report::{fmt_fig, Bound, Report, Table, TargetRow};

const SCENARIOS_HELP: &str = "\
SCENARIOS:
    footprint        idle node RSS and memory per held slice (child processes)
    b1               propagation: 1 writer, N = 2, 8, 32 (quick: 2, 8)
    gossipsub        baseline (a): raw libp2p gossipsub, same N
    chitchat         baseline (b): chitchat 0.13 over UDP, same N, 100 ms and 1 s
    b2               concurrent writers
    b3               late joiner, 32 x 64 KiB (quick: 8)
    b4               failure detection at defaults
    b5               throughput: remote versions/s and local writes/s
    b6               convergence of 64 nodes (skipped with --quick)
    calibrate        real nodes beside truffle-sim's model, N = 8, 32, 64
    idle-cost        idle mesh from one seed address, CPU/RSS/connections, N = 16..128
                     (quick: 8), chitchat at 1 s beside it
    hub-crash        32 nodes (quick: 8) from one seed address; the seed crashes";

/// Run-wide settings every scenario reads.
#[derive(Clone, Debug)]
pub struct Cfg {
    /// Small N, few trials.
    pub quick: bool,
    /// Seed for dial graphs and trial spacing.
    pub seed: u64,
    /// The liveness the nodes of the multi-node scenarios (B1, B2, B4, B6, `idle-cost`,
    /// `hub-crash`) run.
    pub liveness: truffle_actors::proto::Liveness,
    /// Mesh sizes for the overlay scenarios instead of their defaults (empty: defaults).
    pub nodes: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Footprint,
    B1,
    Gossipsub,
    Chitchat,
    B2,
    B3,
    B4,
    B5,
    B6,
    Calibrate,
    IdleCost,
    HubCrash,
}

const ALL: [Scenario; 12] = [
    Scenario::Footprint,
    Scenario::B1,
    Scenario::Gossipsub,
    Scenario::Chitchat,
    Scenario::B2,
    Scenario::B3,
    Scenario::B4,
    Scenario::B5,
    Scenario::B6,
    Scenario::Calibrate,
    Scenario::IdleCost,
    Scenario::HubCrash,
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Footprint => "footprint",
            Scenario::B1 => "b1-propagation",
            Scenario::Gossipsub => "baseline-gossipsub",
            Scenario::Chitchat => "baseline-chitchat",
            Scenario::B2 => "b2-concurrent-writers",
            Scenario::B3 => "b3-late-joiner",
            Scenario::B4 => "b4-failure-detection",
            Scenario::B5 => "b5-throughput",
            Scenario::B6 => "b6-convergence-64",
            Scenario::Calibrate => "calibrate-sim",
            Scenario::IdleCost => "idle-cost",
            Scenario::HubCrash => "hub-crash",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        let s = s.to_ascii_lowercase();
        ALL.into_iter().find(|sc| {
            let name = sc.name();
            s == name || name.split('-').next() == Some(s.as_str()) || name.ends_with(&s)
        })
    }
}

/// truffle-bench: Truffle macro benchmark (loopback, in-process nodes)
#[derive(clap::Parser)]
#[command(name = "truffle-bench", after_help = SCENARIOS_HELP)]
struct Opts {
    /// Small N and few trials (under a minute on 2 cores); a smoke test.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report (default: truffle-bench.json in the target dir).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Run only this scenario (repeatable; a name, its first part or its end); default: all.
    #[arg(long = "scenario", value_name = "NAME", value_parser = parse_scenario)]
    scenarios: Vec<Scenario>,
    /// Seed for dial graphs and trial spacing.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// List the scenarios.
    #[arg(long)]
    list: bool,
    /// Liveness of the nodes in B1, B2, B4, B6, `idle-cost` and `hub-crash`: `watch` (the
    /// library's default) or `heartbeats` (see `MeshNodeBuilder::liveness`).
    #[arg(long, value_name = "KIND", default_value = "watch")]
    liveness: truffle_actors::proto::Liveness,
    /// Mesh size for `idle-cost` and `hub-crash` instead of their defaults (repeatable,
    /// 2 to 256).
    #[arg(long = "nodes", value_name = "N", value_parser = clap::value_parser!(u16).range(2..=256))]
    nodes: Vec<u16>,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    Scenario::parse(s).ok_or_else(|| format!("unknown scenario `{s}` (see --list)"))
}

/// `<target dir>/truffle-bench.json` when running from `target/<profile>/`, else
/// `target/truffle-bench.json` under the current directory.
fn default_json_path() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let profile_dir = exe.parent()?;
        let target = profile_dir.parent()?;
        (target.file_name()? == "target").then(|| target.join("truffle-bench.json"))
    });
    from_exe.unwrap_or_else(|| PathBuf::from("target/truffle-bench.json"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs one async scenario as a task of a fresh 2-worker runtime (so the whole scenario,
/// its driver included, runs on the two workers, and nothing outlives it), bounded by
/// `limit`. Its figures and notes are merged into `report`.
fn run_async<F, Fut>(limit: Duration, cfg: &Cfg, report: &mut Report, scenario: F) -> Value
where
    F: FnOnce(Cfg, Report) -> Fut,
    Fut: Future<Output = (Value, Report)> + Send + 'static,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return json!({ "error": format!("runtime: {e}") }),
    };
    let fut = scenario(cfg.clone(), Report::default());
    let task = rt.spawn(async move { tokio::time::timeout(limit, fut).await });
    let v = match rt.block_on(task) {
        Ok(Ok((v, part))) => {
            report.merge(part);
            v
        }
        Ok(Err(_)) => {
            println!("!! scenario exceeded its {limit:?} limit and was abandoned");
            json!({ "error": format!("exceeded {limit:?}") })
        }
        Err(e) => {
            println!("!! scenario failed: {e}");
            json!({ "error": format!("scenario task failed: {e}") })
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    v
}

/// Adapts `async fn(&Cfg, &mut Report) -> Value` scenarios to [`run_async`].
macro_rules! scenario {
    ($f:path) => {
        |cfg: Cfg, mut r: Report| async move {
            let v = $f(&cfg, &mut r).await;
            (v, r)
        }
    };
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("idle-node") => std::process::exit(footprint::idle_node_main()),
        Some("held-slices") => std::process::exit(footprint::held_slices_main(&args[1..])),
        _ => {}
    }
    // Library logs on stderr when asked for (RUST_LOG=truffle_actors=debug), for diagnosis.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut opts = <Opts as clap::Parser>::parse();
    let mut seen = Vec::new();
    opts.scenarios.retain(|sc| {
        let first = !seen.contains(sc);
        seen.push(*sc);
        first
    });
    if opts.list {
        for sc in ALL {
            println!("{}", sc.name());
        }
        return;
    }
    let cfg = Cfg {
        quick: opts.quick,
        seed: opts.seed,
        liveness: opts.liveness,
        nodes: opts.nodes.iter().map(|&n| usize::from(n)).collect(),
    };
    let mut chosen = if opts.scenarios.is_empty() {
        ALL.to_vec()
    } else {
        opts.scenarios.clone()
    };
    let skipped_b6 = cfg.quick && chosen.contains(&Scenario::B6);
    if skipped_b6 {
        chosen.retain(|s| *s != Scenario::B6);
    }
    let json_path = opts.json.clone().unwrap_or_else(default_json_path);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_start = loadavg();
    let mode = if cfg.quick { "quick" } else { "full" };
    println!(
        "truffle-bench {} ({mode}), seed {}, liveness {}, {cores} cores, load average {load_start}",
        env!("CARGO_PKG_VERSION"),
        cfg.seed,
        cfg.liveness
    );
    println!(
        "scenarios: {}",
        chosen
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let limit = Duration::from_secs(if cfg.quick { 90 } else { 900 });
    let mut report = Report::default();
    let mut timings = serde_json::Map::new();
    for sc in &chosen {
        let t = Instant::now();
        println!("\n>>> {}", sc.name());
        let v = match sc {
            Scenario::Footprint => footprint::footprint(&cfg, &mut report),
            Scenario::B1 => run_async(limit, &cfg, &mut report, scenario!(scenarios::propagation)),
            Scenario::Gossipsub => run_async(
                limit,
                &cfg,
                &mut report,
                scenario!(baseline_gossipsub::raw_gossipsub),
            ),
            Scenario::Chitchat => run_async(
                limit,
                &cfg,
                &mut report,
                scenario!(baseline_chitchat::chitchat),
            ),
            Scenario::B2 => run_async(
                limit,
                &cfg,
                &mut report,
                scenario!(scenarios::concurrent_writers),
            ),
            Scenario::B3 => run_async(limit, &cfg, &mut report, scenario!(scenarios::late_joiner)),
            Scenario::B4 => run_async(
                limit,
                &cfg,
                &mut report,
                scenario!(scenarios::failure_detection),
            ),
            Scenario::B5 => run_async(limit, &cfg, &mut report, scenario!(scenarios::throughput)),
            Scenario::B6 => run_async(
                limit,
                &cfg,
                &mut report,
                scenario!(scenarios::convergence_64),
            ),
            Scenario::Calibrate => {
                run_async(limit, &cfg, &mut report, scenario!(calibrate::calibrate))
            }
            Scenario::IdleCost => {
                run_async(limit, &cfg, &mut report, scenario!(overlay::idle_cost))
            }
            Scenario::HubCrash => {
                run_async(limit, &cfg, &mut report, scenario!(overlay::hub_crash))
            }
        };
        let secs = t.elapsed().as_secs_f64();
        println!("({} took {secs:.1} s)", sc.name());
        timings.insert(sc.name().into(), json!(secs));
        report.scenarios.insert(sc.name().into(), v);
    }
    if skipped_b6 {
        report
            .notes
            .push("B6 convergence-64 is skipped in --quick mode".into());
    }
    report.notes.push(
        "Digest building (presence encode + sign, decode + verify) is measured by the Criterion \
         micro-benchmarks: cargo bench -p truffle-bench --bench micro -- presence"
            .into(),
    );
    report.notes.push(
        "B5: the library always coalesces (one-slot outbox per store, newest-only publish in \
         the swarm task); in the windowed row A writes the next version only once the last \
         one is published (Store::flushed), with at most 64 not yet on B, so nothing is \
         coalesced (its detail shows written = published), the lock-step row \
         (write, wait for arrival, repeat) never coalesces, and the firehose rows report \
         written/s and applied/s separately"
            .into(),
    );
    let ratios = print_ratios(&report);
    let rows = target_rows(&report);
    let targets = report.print_targets(&rows);
    for n in &report.notes {
        println!("note: {n}");
    }
    for u in &report.unmeasured {
        println!("not measured: {u}");
    }
    let total = started.elapsed().as_secs_f64();
    let load_end = loadavg();
    println!(
        "\ntotal {total:.1} s; load average at start {load_start}, at end {load_end}; JSON: {}",
        json_path.display()
    );
    let doc = json!({
        "tool": "truffle-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": mode,
        "seed": cfg.seed,
        "liveness": cfg.liveness.to_string(),
        "started_unix_ms": started_unix,
        "duration_s": total,
        "scenario_seconds": timings,
        "machine": {"cores": cores, "loadavg_start": load_start, "loadavg_end": load_end,
                    "os": std::env::consts::OS, "arch": std::env::consts::ARCH},
        "scenarios": report.scenarios,
        "figures": report.figures,
        "ratios": ratios,
        "targets": targets,
        "unmeasured": report.unmeasured,
        "notes": report.notes,
    });
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match serde_json::to_string_pretty(&doc) {
        Ok(text) => {
            if let Err(e) = std::fs::write(&json_path, text) {
                eprintln!("cannot write {}: {e}", json_path.display());
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("cannot encode the report: {e}");
            std::process::exit(1);
        }
    }
}

const SIZES: [usize; 3] = [2, 8, 32];

/// Prints Truffle B1 p50 over each baseline's p50, per N; returns them as JSON.
fn print_ratios(r: &Report) -> Value {
    let mut t = Table::new(
        "Ratios: Truffle B1 p50 / baseline p50 (same N, same payload, same process layout)",
        &[
            "N",
            "B1 p50 ms",
            "raw gossipsub",
            "ratio",
            "chitchat@100ms",
            "ratio",
            "chitchat@1s",
            "ratio",
        ],
    );
    let mut out = serde_json::Map::new();
    for n in SIZES {
        let Some(b1) = r.get(&format!("b1.n{n}.p50_ms")) else {
            continue;
        };
        let mut cells = vec![n.to_string(), fmt_fig(b1)];
        let mut row = serde_json::Map::new();
        for base in ["gossipsub", "chitchat100", "chitchat1000"] {
            let b = r.get(&format!("{base}.n{n}.p50_ms"));
            let ratio = b.map(|b| b1 / b);
            cells.push(b.map(fmt_fig).unwrap_or_else(|| "-".into()));
            cells.push(ratio.map(fmt_fig).unwrap_or_else(|| "-".into()));
            row.insert(base.into(), json!({"baseline_p50_ms": b, "ratio": ratio}));
        }
        t.row(cells);
        out.insert(format!("n{n}"), Value::Object(row));
    }
    t.print();
    Value::Object(out)
}

fn ratio(r: &Report, n: usize, base: &str) -> Option<f64> {
    Some(r.get(&format!("b1.n{n}.p50_ms"))? / r.get(&format!("{base}.n{n}.p50_ms"))?)
}

/// Every target of the issue, beside the figure measured for it.
fn target_rows(r: &Report) -> Vec<TargetRow> {
    let row = |name: &str, measured: Option<f64>, unit: &str, bound, limit, how: &str| TargetRow {
        name: name.into(),
        measured,
        unit: unit.into(),
        bound,
        limit,
        how: how.into(),
    };
    let mut rows = vec![
        row(
            "B1 N=8 p50",
            r.get("b1.n8.p50_ms"),
            "ms",
            Bound::AtMost,
            2.0,
            "until all 7 receivers applied",
        ),
        row(
            "B1 N=8 p99",
            r.get("b1.n8.p99_ms"),
            "ms",
            Bound::AtMost,
            10.0,
            "until all 7 receivers applied",
        ),
        row(
            "B1 N=32 p50",
            r.get("b1.n32.p50_ms"),
            "ms",
            Bound::AtMost,
            5.0,
            "until all 31 receivers applied",
        ),
        row(
            "B1 N=32 p99",
            r.get("b1.n32.p99_ms"),
            "ms",
            Bound::AtMost,
            20.0,
            "until all 31 receivers applied",
        ),
    ];
    for n in SIZES {
        rows.push(row(
            &format!("B1 / raw gossipsub p50, N={n}"),
            ratio(r, n, "gossipsub"),
            "x",
            Bound::AtMost,
            1.3,
            "ratio of medians",
        ));
    }
    for n in SIZES {
        rows.push(row(
            &format!("B1 / chitchat@100ms p50, N={n}"),
            ratio(r, n, "chitchat100"),
            "x",
            Bound::AtMost,
            1.0 / 30.0,
            "ratio of medians (1/30)",
        ));
    }
    rows.extend([
        row(
            "B3 late joiner 32 x 64 KiB",
            r.get("b3.m32.max_ms"),
            "ms",
            Bound::AtMost,
            300.0,
            "worst trial, from start() of the joiner",
        ),
        row(
            "B4 detection at defaults",
            r.get("b4.detect_max_ms"),
            "ms",
            Bound::AtMost,
            3000.0,
            "worst trial, until every other node removed it",
        ),
        row(
            "B4 false removals",
            r.get("b4.false_removals"),
            "",
            Bound::AtMost,
            0.0,
            "RemoteRemoved of a live device during B4",
        ),
        row(
            "B5 distinct versions delivered",
            r.get("b5.applied_per_s"),
            "/s",
            Bound::AtLeast,
            20_000.0,
            "applied on B; A publishes every version, <= 64 in flight",
        ),
        row(
            "B5 same, A writing flat out",
            r.get("b5.firehose_applied_per_s"),
            "/s",
            Bound::AtLeast,
            20_000.0,
            "applied on B while A writes back to back",
        ),
        row(
            "B5 coalesced local writes",
            r.get("b5.local_writes_per_s"),
            "/s",
            Bound::AtLeast,
            1_000_000.0,
            "Store::update loop, lone node, 1 task",
        ),
        row(
            "B5 coalesced local writes, persistence on",
            r.get("b5.persisted_local_writes_per_s"),
            "/s",
            Bound::AtLeast,
            500_000.0,
            "Store::update loop, lone node with a data dir (redb), 1 task",
        ),
        row(
            "idle node RSS",
            r.get("idle.rss_kb").map(|kb| kb * 1024.0 / 1e6),
            "MB",
            Bound::AtMost,
            8.0,
            "VmRSS of a child process, MB = 10^6 bytes",
        ),
        row(
            "B6 convergence-64 after last join",
            r.get("b6.converge_ms"),
            "ms",
            Bound::AtMost,
            2000.0,
            "until all 64 nodes hold 64 slices",
        ),
    ]);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_parse() {
        assert_eq!(Scenario::parse("b1"), Some(Scenario::B1));
        assert_eq!(Scenario::parse("B4"), Some(Scenario::B4));
        assert_eq!(Scenario::parse("convergence-64"), Some(Scenario::B6));
        assert_eq!(Scenario::parse("chitchat"), Some(Scenario::Chitchat));
        assert_eq!(Scenario::parse("footprint"), Some(Scenario::Footprint));
        assert_eq!(Scenario::parse("nope"), None);
    }

    #[test]
    fn args_parse() {
        use clap::Parser;
        let o = Opts::try_parse_from([
            "truffle-bench",
            "--quick",
            "--scenario",
            "b1",
            "--json",
            "x.json",
        ])
        .unwrap();
        assert!(o.quick);
        assert_eq!(o.scenarios, vec![Scenario::B1]);
        assert_eq!(o.json, Some(PathBuf::from("x.json")));
        assert_eq!(o.seed, 1);
        assert!(Opts::try_parse_from(["truffle-bench", "--bogus"]).is_err());
        assert!(Opts::try_parse_from(["truffle-bench", "--scenario", "nope"]).is_err());
    }
}

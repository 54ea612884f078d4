//! Memory footprint: an idle node in a process of its own, and the memory a receiver
//! spends per remote slice it holds. Both run in a child process, so nothing the other
//! scenarios allocated is counted: the idle node in `truffle-idle-node` when it was built
//! (else as a hidden subcommand of this binary), the held slices as a hidden subcommand.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use truffle_actors::identity::Keypair;
use truffle_actors::testing::signed_slice;
use truffle_actors::{DeviceId, StoreId, Syncable, Version};

use crate::mesh::{builder, filler, Payload};
use crate::report::{num, Report, Table};
use crate::sys::rss_kb;
use crate::Cfg;

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Hidden subcommand `idle-node`: the idle node of `idle.rs` inside this binary, for when
/// `truffle-idle-node` was not built.
pub fn idle_node_main() -> i32 {
    crate::idle::run()
}

/// Hidden subcommand `held-slices N SIZE`: one node (presence timeout 1 h, so the forged
/// devices are not expired), then N remote slices of SIZE payload bytes from N fresh
/// identities, fed in as sync responses (`MeshNode::test_inject_response`), 100 at a time.
/// Prints the RSS before and after.
pub fn held_slices_main(args: &[String]) -> i32 {
    let parse = |i: usize| args.get(i).and_then(|s| s.parse::<usize>().ok());
    let (Some(n), Some(size)) = (parse(0), parse(1)) else {
        eprintln!("usage: held-slices N SIZE");
        return 2;
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return 1;
        }
    };
    let r = rt.block_on(async {
        let node = builder(0)
            .presence_timeout(Duration::from_secs(3600))
            .start()
            .await
            .map_err(|e| e.to_string())?;
        let store = node.store::<Payload>().await.map_err(|e| e.to_string())?;
        let id = StoreId::new(Payload::STORE_ID).map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kb().unwrap_or(0);
        let data = Payload {
            seq: 1,
            data: filler(size),
        };
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(100);
            let mut slices = Vec::with_capacity(batch);
            let mut from = None;
            for _ in 0..batch {
                let key = Keypair::generate_ed25519();
                let device = DeviceId::from(key.public().to_peer_id());
                from.get_or_insert(device);
                slices.push(signed_slice(&key, &id, device, Version::new(1, 1), &data));
            }
            if let Some(from) = from {
                node.test_inject_response(from, slices);
            }
            done += batch;
            store
                .wait_until(Duration::from_secs(20), |s| s.remote.len() >= done)
                .await
                .map_err(|s| format!("only {} of {done} slices applied", s.remote.len()))?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("rss_before_kb={before}");
        println!("rss_after_kb={}", rss_kb().unwrap_or(0));
        println!("held={}", store.snapshot().remote.len());
        Ok::<_, String>(node)
    });
    match r {
        Ok(node) => {
            drop(node);
            0
        }
        Err(e) => {
            eprintln!("held-slices failed: {e}");
            1
        }
    }
}

/// Runs this binary with `args` and returns its `key=value` output lines, or why not.
fn child(args: &[&str], limit: Duration) -> Result<Vec<(String, u64)>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    child_of(&exe, args, limit)
}

/// The lean idle-node binary (`src/idle_node.rs`) next to this one, if it was built.
fn lean_idle_node() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let lean = exe.with_file_name("truffle-idle-node");
    lean.is_file().then_some(lean)
}

/// Runs `exe` with `args` and returns its `key=value` output lines, or why not.
fn child_of(
    exe: &std::path::Path,
    args: &[&str],
    limit: Duration,
) -> Result<Vec<(String, u64)>, String> {
    let mut c = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            return Err(format!("`{}` took longer than {limit:?}", args.join(" ")));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut errs = String::new();
    if let Some(mut o) = c.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = c.stderr.take() {
        let _ = e.read_to_string(&mut errs);
    }
    if !status.success() {
        return Err(format!("`{}` failed: {}", args.join(" "), errs.trim()));
    }
    Ok(out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

fn get(kv: &[(String, u64)], k: &str) -> Option<u64> {
    kv.iter().find(|(key, _)| key == k).map(|(_, v)| *v)
}

/// Footprint scenario: idle RSS and memory per held slice. Blocking (child processes).
pub fn footprint(cfg: &Cfg, report: &mut Report) -> Value {
    let mut table = Table::new(
        "Footprint (each measured in a child process of this binary, /proc/self/status)",
        &["measure", "value", "detail"],
    );
    let mut out = serde_json::Map::new();
    // The lean binary when it was built (`cargo build --release -p truffle-bench --bins`):
    // its RSS is a node's in a small application. Otherwise this binary, whose own code
    // pages (chitchat, baselines, reports) count too.
    let lean = lean_idle_node();
    let (result, method) = match &lean {
        Some(path) => (
            child_of(path, &[], Duration::from_secs(30)),
            "child process `truffle-idle-node` (links truffle-actors and tokio only): tokio \
             runtime with 2 workers, one node (loopback, no mDNS), one store joined, 2 s \
             idle, then VmRSS",
        ),
        None => (
            child(&["idle-node"], Duration::from_secs(30)),
            "child process `truffle-bench idle-node` (truffle-idle-node not built; this \
             binary's own code pages count too): tokio runtime with 2 workers, one node \
             (loopback, no mDNS), one store joined, 2 s idle, then VmRSS",
        ),
    };
    match result {
        Ok(kv) => {
            let rss = get(&kv, "vmrss_kb");
            let base = get(&kv, "rss_before_node_kb");
            let split = match (get(&kv, "rss_anon_kb"), get(&kv, "rss_file_kb")) {
                (Some(a), Some(f)) => {
                    format!("anonymous (heap, stacks) {a} kB + file-backed (code) {f} kB; ")
                }
                _ => String::new(),
            };
            table.row(vec![
                format!(
                    "idle node RSS (1 node, 1 store, 2 s idle; {})",
                    if lean.is_some() {
                        "truffle-idle-node"
                    } else {
                        "inside truffle-bench"
                    }
                ),
                rss.map(|v| format!("{v} kB ({:.2} MB)", v as f64 * 1024.0 / 1e6))
                    .unwrap_or_else(|| "-".into()),
                format!(
                    "{split}process before the node started: {} kB; peak {} kB; {} threads; \
                     idle CPU {:.1}% of a core",
                    base.unwrap_or(0),
                    get(&kv, "vmhwm_kb").unwrap_or(0),
                    get(&kv, "threads").unwrap_or(0),
                    get(&kv, "idle_cpu_permille").unwrap_or(0) as f64 / 10.0
                ),
            ]);
            report.figure("idle.rss_kb", rss.map(|v| v as f64));
            out.insert(
                "idle_node".into(),
                json!({"vmrss_kb": rss, "rss_before_node_kb": base,
                       "rss_anon_kb": get(&kv, "rss_anon_kb"),
                       "rss_file_kb": get(&kv, "rss_file_kb"),
                       "vmhwm_kb": get(&kv, "vmhwm_kb"), "threads": get(&kv, "threads"),
                       "idle_cpu_permille_of_a_core": get(&kv, "idle_cpu_permille"),
                       "lean_binary": lean.is_some(),
                       "method": method}),
            );
        }
        Err(e) => {
            table.row(vec!["idle node RSS".into(), format!("error: {e}")]);
            out.insert("idle_node".into(), json!({ "error": e }));
        }
    }
    let runs: &[(usize, usize)] = if cfg.quick {
        &[(200, 1024), (50, 64 * 1024)]
    } else {
        &[(2000, 1024), (200, 64 * 1024)]
    };
    let mut held = Vec::new();
    for &(n, size) in runs {
        let label = format!("memory per held slice ({n} x {} B)", num(size as f64));
        match child(
            &["held-slices", &n.to_string(), &size.to_string()],
            Duration::from_secs(120),
        ) {
            Ok(kv) => {
                let (b, a) = (get(&kv, "rss_before_kb"), get(&kv, "rss_after_kb"));
                let per = match (b, a) {
                    (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 * 1024.0 / n as f64),
                    _ => None,
                };
                table.row(vec![
                    label,
                    per.map(|p| format!("{} B", num(p)))
                        .unwrap_or_else(|| "-".into()),
                    per.map(|p| {
                        format!(
                            "{:.2} x the payload; RSS {} -> {} kB",
                            p / size as f64,
                            b.unwrap_or(0),
                            a.unwrap_or(0)
                        )
                    })
                    .unwrap_or_default(),
                ]);
                report.figure(format!("held.{size}.bytes_per_slice"), per);
                held.push(
                    json!({"slices": n, "payload_bytes": size, "rss_before_kb": b,
                                 "rss_after_kb": a, "bytes_per_slice": per}),
                );
            }
            Err(e) => {
                table.row(vec![label, format!("error: {e}")]);
                held.push(json!({"slices": n, "payload_bytes": size, "error": e}));
            }
        }
    }
    out.insert(
        "held_slices".into(),
        json!({"runs": held, "method": "child process `truffle-bench held-slices N SIZE`: one \
               node; N slices signed by N fresh ed25519 identities injected as sync \
               responses (test hook) 100 at a time, each waited for; (RSS after - RSS before) / N. \
               Includes everything a held slice costs: signed bytes kept by the gossip actor for \
               relaying, decoded data in the store, membership entries, snapshot maps"}),
    );
    table.print();
    Value::Object(out)
}

//! The overlay as users bootstrap it: every node given one shared seed address (node 0).
//!
//! * `idle-cost`: N nodes in this process, converged and idle; the whole process's CPU
//!   over 10 s, RSS per node and connections per node, then chitchat 0.13 at a 1 s gossip
//!   interval with the same N in the same run.
//! * `hub-crash`: N nodes; once their views have formed, the seed node is dropped without
//!   a leave. Every 250 ms for 10 s: how many survivors still hold every other survivor
//!   ("whole"), and when the seed node was gone from all of them.

use std::time::{Duration, Instant};

use chitchat::spawn_chitchat;
use chitchat::transport::UdpTransport;
use serde_json::{json, Map, Value};
use truffle_actors::prelude::*;
use truffle_actors::proto::Liveness;
use truffle_actors::Metrics;

use crate::baseline_chitchat::{config, free_udp_addrs};
use crate::mesh::{Mesh, Payload};
use crate::report::{Report, Table};
use crate::scenarios::SETUP_DEADLINE;
use crate::{sys, Cfg};

/// How long CPU is measured over.
const WINDOW: Duration = Duration::from_secs(10);
/// Idle time before measuring, after convergence (views settle, joins finish, and an idle
/// node's anti-entropy backs off to its longest period: 1 + 2 + 4 + 8 s).
const SETTLE: Duration = Duration::from_secs(20);

/// `n` nodes, each bootstrapped from node 0, each joined to the store with one write;
/// and when the last one joined.
async fn star(
    n: usize,
    liveness: Liveness,
) -> Result<(Vec<MeshNode>, Vec<Store<Payload>>, Instant), String> {
    let topo = (0..n)
        .map(|i| if i == 0 { vec![] } else { vec![0] })
        .collect();
    let mesh = Mesh::start_with(topo, |b| b.liveness(liveness)).await?;
    for (i, store) in mesh.stores.iter().enumerate() {
        store
            .update(move |d| d.seq = i as u64)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((mesh.nodes, mesh.stores, mesh.last_join))
}

/// Polls every 50 ms until `cond` holds; the time it took, or `None` at the deadline.
async fn poll_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if cond() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn shutdown(nodes: Vec<MeshNode>) {
    for n in nodes {
        let _ = tokio::time::timeout(Duration::from_secs(5), n.shutdown()).await;
    }
}

fn metrics_of(nodes: &[MeshNode]) -> Vec<Metrics> {
    nodes.iter().map(MeshNode::metrics).collect()
}

/// One counter summed over the nodes.
fn total(metrics: &[Metrics], f: fn(&Metrics) -> u64) -> u64 {
    metrics.iter().map(f).sum()
}

/// One truffle measurement at `n` nodes.
async fn truffle_idle(n: usize, liveness: Liveness) -> Result<Value, String> {
    let rss0 = sys::rss_kb().unwrap_or(0);
    let t0 = Instant::now();
    let (nodes, stores, last_join) = star(n, liveness).await?;
    // Once a second after the last join: slices still missing across the mesh, and what
    // the nodes did meanwhile (where a slow convergence spends its time: a long tail of a
    // few slices, or the whole wave).
    let mut curve: Vec<Value> = Vec::new();
    let mut last_second = None;
    let converged = poll_until(SETUP_DEADLINE, || {
        let held: Vec<usize> = stores.iter().map(|s| s.snapshot().len()).collect();
        let second = last_join.elapsed().as_secs();
        if last_second.is_none_or(|s| s < second) {
            last_second = Some(second);
            let missing: usize = held.iter().map(|&h| n.saturating_sub(h)).sum();
            let short = held.iter().filter(|&&h| h < n).count();
            let m = metrics_of(&nodes);
            curve.push(json!({
                "s": second,
                "missing": missing,
                "nodes_short": short,
                "connections_opened": total(&m, |m| m.connections_opened),
                "connected_mean": total(&m, |m| m.connected_peers) as f64 / n as f64,
                "slices_delivered": total(&m, |m| m.delivered),
                "presence_received": total(&m, |m| m.presence_received),
                "cpu_ms": sys::cpu_time().map(|d| d.as_millis() as u64),
            }));
        }
        held.iter().all(|&h| h == n)
    })
    .await;
    let Some(_) = converged else {
        let short = stores.iter().filter(|s| s.snapshot().len() < n).count();
        shutdown(nodes).await;
        return Err(format!(
            "{short} of {n} nodes did not see all {n} within {SETUP_DEADLINE:?}"
        ));
    };
    let converge_ms = last_join.elapsed().as_secs_f64() * 1000.0;
    // What the join wave cost, summed over the nodes: how much of it was repeated work.
    let w = metrics_of(&nodes);
    let wave_totals = json!({
        "slices_delivered": total(&w, |m| m.delivered),
        "slices_applied": total(&w, |m| m.applied),
        "presence_received": total(&w, |m| m.presence_received),
        "connections_opened": total(&w, |m| m.connections_opened),
        "devices_removed": total(&w, |m| m.devices_removed),
        "gossip_over_rate": total(&w, |m| m.gossip_over_rate),
        "inputs_coalesced": total(&w, |m| m.inputs_coalesced),
    });
    tokio::time::sleep(SETTLE).await;
    let before = metrics_of(&nodes);
    // On stderr, so a profiler can be attached for exactly this window.
    eprintln!("idle-cost: measuring {n} idle Truffle nodes for {WINDOW:?}");
    let cpu = sys::cpu_share_over(WINDOW).await;
    eprintln!("idle-cost: window over");
    let rss = sys::rss_kb().unwrap_or(0);
    let after = metrics_of(&nodes);
    let conns: Vec<u64> = after.iter().map(|m| m.connected_peers).collect();
    let presence: u64 = after.iter().map(|m| m.presence_received).sum();
    // Per node and second over the window: what an idle node still does.
    let rate = |f: fn(&Metrics) -> u64| {
        let d: u64 = before.iter().zip(&after).map(|(b, a)| f(a) - f(b)).sum();
        d as f64 / n as f64 / WINDOW.as_secs_f64()
    };
    let opened = rate(|m| m.connections_opened);
    let heard = rate(|m| m.presence_received);
    shutdown(nodes).await;
    Ok(json!({
        "converged_after_last_join_ms": converge_ms,
        "wave_totals": wave_totals,
        "join_wave_ms": last_join.duration_since(t0).as_secs_f64() * 1000.0,
        "wave_each_second": curve,
        "cpu_share": cpu,
        "rss_per_node_kb": rss.saturating_sub(rss0) as f64 / n as f64,
        "connections_mean": conns.iter().sum::<u64>() as f64 / n as f64,
        "connections_max": conns.iter().max().copied().unwrap_or(0),
        "presence_received_total": presence,
        "idle_connections_opened_per_node_s": opened,
        "idle_presence_received_per_node_s": heard,
    }))
}

/// chitchat at a 1 s interval, `n` nodes on UDP loopback, all seeded with node 0.
async fn chitchat_idle(n: usize) -> Result<Value, String> {
    let interval = Duration::from_secs(1);
    let addrs = free_udp_addrs(n)?;
    let mut handles = Vec::with_capacity(n);
    for (i, &addr) in addrs.iter().enumerate() {
        let h = spawn_chitchat(
            config(i, addr, addrs[0], interval),
            Vec::new(),
            &UdpTransport,
        )
        .await
        .map_err(|e| format!("chitchat did not start: {e}"))?;
        handles.push(h);
    }
    let t0 = Instant::now();
    loop {
        let mut all = true;
        for h in &handles {
            if h.chitchat().lock().await.live_nodes().count() < n {
                all = false;
                break;
            }
        }
        if all {
            break;
        }
        if t0.elapsed() > SETUP_DEADLINE {
            return Err("chitchat nodes did not all see each other".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let cpu = sys::cpu_share_over(WINDOW).await;
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(2), h.shutdown()).await;
    }
    Ok(json!({ "cpu_share": cpu }))
}

fn pct(v: &Value) -> String {
    v.get("cpu_share")
        .and_then(Value::as_f64)
        .map_or("-".into(), |c| format!("{:.1} %", c * 100.0))
}

/// The idle-cost scenario.
pub async fn idle_cost(cfg: &Cfg, report: &mut Report) -> Value {
    let sizes: &[usize] = match () {
        _ if !cfg.nodes.is_empty() => &cfg.nodes,
        _ if cfg.quick => &[8],
        _ => &[16, 32, 64, 128],
    };
    let mut table = Table::new(
        format!(
            "Idle cost: N nodes in one process, one seed address, converged and idle; \
             whole-process CPU over {} s (100 % = one core), chitchat 0.13 at 1 s beside it; \
             liveness {:?}",
            WINDOW.as_secs(),
            cfg.liveness
        ),
        &[
            "N",
            "truffle CPU",
            "chitchat 1 s CPU",
            "RSS/node",
            "conns mean",
            "conns max",
            "conns opened/node/s",
            "presence/node/s",
            "converged after last join",
        ],
    );
    let mut out = Map::new();
    for &n in sizes {
        let t = truffle_idle(n, cfg.liveness)
            .await
            .unwrap_or_else(|e| json!({ "error": e }));
        let c = chitchat_idle(n)
            .await
            .unwrap_or_else(|e| json!({ "error": e }));
        let f = |k: &str| t.get(k).and_then(Value::as_f64);
        table.row(vec![
            n.to_string(),
            t.get("error")
                .and_then(Value::as_str)
                .map_or_else(|| pct(&t), |e| format!("error: {e}")),
            pct(&c),
            f("rss_per_node_kb").map_or("-".into(), |kb| format!("{:.2} MB", kb / 1024.0)),
            f("connections_mean").map_or("-".into(), |x| format!("{x:.1}")),
            f("connections_max").map_or("-".into(), |x| format!("{x:.0}")),
            f("idle_connections_opened_per_node_s").map_or("-".into(), |x| format!("{x:.2}")),
            f("idle_presence_received_per_node_s").map_or("-".into(), |x| format!("{x:.2}")),
            f("converged_after_last_join_ms").map_or("-".into(), |x| format!("{x:.0} ms")),
        ]);
        report.figure(
            format!("idle.n{n}.cpu_pct"),
            f("cpu_share").map(|c| c * 100.0),
        );
        report.figure(
            format!("idle.chitchat1s.n{n}.cpu_pct"),
            c.get("cpu_share")
                .and_then(Value::as_f64)
                .map(|c| c * 100.0),
        );
        out.insert(format!("n{n}"), json!({ "truffle": t, "chitchat_1s": c }));
    }
    table.print();
    Value::Object(out)
}

/// The hub-crash scenario.
pub async fn hub_crash(cfg: &Cfg, report: &mut Report) -> Value {
    let sizes: &[usize] = match () {
        _ if !cfg.nodes.is_empty() => &cfg.nodes,
        _ if cfg.quick => &[8],
        _ => &[32],
    };
    let mut table = Table::new(
        "Hub crash: N nodes bootstrapped from node 0, which is dropped without a leave once \
         views have formed; survivors that hold every other survivor, sampled every 250 ms \
         for 10 s",
        &[
            "N",
            "whole (min)",
            "whole (end)",
            "hub gone everywhere after",
        ],
    );
    let mut out = Map::new();
    for &n in sizes {
        let v = match hub_crash_once(n, cfg.liveness).await {
            Ok(v) => v,
            Err(e) => {
                println!("hub-crash, {n} nodes: error: {e}");
                out.insert(format!("n{n}"), json!({ "error": e }));
                continue;
            }
        };
        let g = |k: &str| v.get(k).and_then(Value::as_f64);
        table.row(vec![
            n.to_string(),
            g("whole_min").map_or("-".into(), |x| format!("{x:.0} / {}", n - 1)),
            g("whole_end").map_or("-".into(), |x| format!("{x:.0} / {}", n - 1)),
            g("hub_gone_ms").map_or("never".into(), |x| format!("{x:.0} ms")),
        ]);
        report.figure(format!("hub_crash.n{n}.whole_min"), g("whole_min"));
        report.figure(format!("hub_crash.n{n}.hub_gone_ms"), g("hub_gone_ms"));
        out.insert(format!("n{n}"), v);
    }
    table.print();
    Value::Object(out)
}

async fn hub_crash_once(n: usize, liveness: Liveness) -> Result<Value, String> {
    let (mut nodes, mut stores, _) = star(n, liveness).await?;
    if poll_until(SETUP_DEADLINE, || {
        stores.iter().all(|s| s.snapshot().len() == n)
    })
    .await
    .is_none()
    {
        shutdown(nodes).await;
        return Err("the mesh did not converge".into());
    }
    // Views formed: every node connected beyond the seed node (or to all, in a small mesh).
    let enough = 8.min(n - 1) as u64;
    let formed = poll_until(SETUP_DEADLINE, || {
        nodes.iter().all(|x| x.metrics().connected_peers >= enough)
    })
    .await;
    let hub = nodes.remove(0);
    let hub_id = hub.device_id();
    drop(stores.remove(0));
    drop(hub);
    let crashed = Instant::now();
    let survivors = n - 1;
    let mut whole_min = survivors;
    let mut whole_end = 0;
    let mut hub_gone = None;
    while crashed.elapsed() < Duration::from_secs(10) {
        // Whole: holds every survivor (itself included); the hub may or may not be gone yet.
        let whole = stores
            .iter()
            .filter(|s| {
                let snap = s.snapshot();
                let others = snap.remote.keys().filter(|d| **d != hub_id).count();
                others == survivors - 1
            })
            .count();
        whole_min = whole_min.min(whole);
        whole_end = whole;
        if hub_gone.is_none() && stores.iter().all(|s| s.get(&hub_id).is_none()) {
            hub_gone = Some(crashed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shutdown(nodes).await;
    Ok(json!({
        "views_formed_ms": formed.map(|d| d.as_secs_f64() * 1000.0),
        "whole_min": whole_min,
        "whole_end": whole_end,
        "survivors": survivors,
        "hub_gone_ms": hub_gone.map(|d| d.as_secs_f64() * 1000.0),
    }))
}

//! The simulator beside real nodes: per-node message rate and crash detection time for
//! the same N, so the simulator's figures at sizes real nodes cannot reach here can be
//! trusted as far as this comparison goes.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use truffle_actors::{DeviceId, StoreEvent};
use truffle_sim::scenario::{run, Scenario};
use truffle_sim::sim::SimConfig;

use crate::mesh::Mesh;
use crate::report::{Report, Table};
use crate::scenarios::{MESH_SETTLE, SETUP_DEADLINE};
use crate::Cfg;

/// Largest difference, as a fraction of the real figure, that counts as agreement.
const TOLERANCE: f64 = 0.25;

struct Real {
    /// Distinct gossip messages (presence and slices) received per node and second.
    rate: f64,
    /// Each observer's time from the crash to its removal of the crashed node, ms.
    detection_p50: f64,
    detection_max: f64,
}

async fn real(n: usize, seed: u64, window: Duration) -> Result<Real, String> {
    let mut mesh = Mesh::start(n, seed, |b| b).await?;
    mesh.converge(SETUP_DEADLINE).await?;
    tokio::time::sleep(MESH_SETTLE).await;
    let count = |m: &Mesh| -> Vec<u64> {
        m.nodes
            .iter()
            .map(|node| {
                let x = node.metrics();
                x.presence_received + x.delivered
            })
            .collect()
    };
    let (before, t0) = (count(&mesh), Instant::now());
    tokio::time::sleep(window).await;
    let (after, secs) = (count(&mesh), t0.elapsed().as_secs_f64());
    let rate = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) as f64)
        .sum::<f64>()
        / n as f64
        / secs;

    // Crash the last node (dropped without a leave, as a kill would) and time each
    // observer's removal.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, DeviceId, Instant)>();
    for (i, s) in mesh.stores.iter().enumerate().take(n - 1) {
        let mut events = s.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let StoreEvent::RemoteRemoved { device_id, .. } = ev {
                    if tx.send((i, device_id, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let victim = mesh.ids[n - 1];
    let node = mesh.nodes.pop().ok_or("no node")?;
    mesh.stores.pop();
    let t0 = Instant::now();
    drop(node);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut got = vec![None; n - 1];
    let mut left = n - 1;
    while left > 0 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, dev, at))) if dev == victim && got[i].is_none() => {
                got[i] = Some((at - t0).as_secs_f64() * 1e3);
                left -= 1;
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let mut ms: Vec<f64> = got.into_iter().flatten().collect();
    if ms.is_empty() {
        return Err("no node removed the crashed one within 15 s".into());
    }
    ms.sort_by(f64::total_cmp);
    let detection_p50 = ms[(ms.len() - 1) / 2];
    let detection_max = ms[ms.len() - 1];
    for node in mesh.nodes {
        drop(node);
    }
    Ok(Real {
        rate,
        detection_p50,
        detection_max,
    })
}

fn agree(real: f64, sim: f64) -> &'static str {
    if real > 0.0 && ((sim - real) / real).abs() <= TOLERANCE {
        "yes"
    } else {
        "NO"
    }
}

/// Real nodes and the simulator side by side at N = 8, 32, 64 (8 only with `--quick`).
pub async fn calibrate(cfg: &Cfg, report: &mut Report) -> Value {
    let (sizes, window): (&[usize], _) = if cfg.quick {
        (&[8], Duration::from_secs(2))
    } else {
        (&[8, 32, 64], Duration::from_secs(5))
    };
    let mut table = Table::new(
        "Calibration: real nodes (library counters) beside truffle-sim (same N, seed, defaults); \
         rate = distinct gossip messages received per node per second; detection = crash to \
         removal, each observer",
        &[
            "N",
            "rate real",
            "rate sim",
            "agree",
            "detect p50 real",
            "detect p50 sim",
            "agree",
            "detect max real / sim",
        ],
    );
    let mut rows = Vec::new();
    for &n in sizes {
        let sim_cfg = SimConfig {
            nodes: n,
            seed: cfg.seed,
            ..SimConfig::default()
        };
        let steady = run(Scenario::Steady, sim_cfg.clone(), 20.0);
        let crash = run(Scenario::Crash, sim_cfg, 20.0);
        match real(n, cfg.seed, window).await {
            Ok(r) => {
                table.row(vec![
                    n.to_string(),
                    format!("{:.1}", r.rate),
                    format!("{:.1}", steady.gossip),
                    agree(r.rate, steady.gossip).into(),
                    format!("{:.0} ms", r.detection_p50),
                    format!("{:.0} ms", crash.detection.p50),
                    agree(r.detection_p50, crash.detection.p50).into(),
                    format!("{:.0} / {:.0} ms", r.detection_max, crash.detection.max),
                ]);
                report.figure(
                    format!("calibrate.n{n}.rate_ratio"),
                    Some(steady.gossip / r.rate),
                );
                report.figure(
                    format!("calibrate.n{n}.detection_ratio"),
                    Some(crash.detection.p50 / r.detection_p50),
                );
                rows.push(json!({
                    "nodes": n,
                    "real": {"rate": r.rate, "detection_p50_ms": r.detection_p50, "detection_max_ms": r.detection_max},
                    "sim": {"rate": steady.gossip, "detection_p50_ms": crash.detection.p50, "detection_max_ms": crash.detection.max},
                }));
            }
            Err(e) => {
                table.row(vec![n.to_string(), format!("error: {e}")]);
                rows.push(json!({"nodes": n, "error": e}));
            }
        }
    }
    table.print();
    json!({ "tolerance": TOLERANCE, "rows": rows })
}

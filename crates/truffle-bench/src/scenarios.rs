//! The Truffle scenarios B1–B6.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Barrier};
use truffle_actors::proto::Liveness;
use truffle_actors::{DeviceId, RemovalReason, StoreEvent, StoreSnapshot};

use crate::mesh::{
    all_arrived, builder, collect_arrivals, filler, sum_metrics, track_seq, Mesh, Payload,
};
use crate::report::{ms, num, Report, Samples, Table};
use crate::rng::Rng;
use crate::sys::{cpu_share_over, tcp_bytes_sent};
use crate::Cfg;

/// Payload of a B1 write (and of the baselines' messages), in bytes.
pub const B1_PAYLOAD: usize = 256;
/// How long a mesh may take to form before the scenario gives up.
pub const SETUP_DEADLINE: Duration = Duration::from_secs(60);
/// Pause after a mesh converged, so gossipsub builds its mesh (3 heartbeats at 500 ms).
pub const MESH_SETTLE: Duration = Duration::from_millis(1500);
/// Deadline of one propagation trial.
pub const TRIAL_DEADLINE: Duration = Duration::from_secs(5);

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// B1: one writer, N nodes; time until every other node's store applied the new version.
pub async fn propagation(cfg: &Cfg, report: &mut Report) -> Value {
    let sizes: &[usize] = if cfg.quick { &[2, 8] } else { &[2, 8, 32] };
    let (trials, warmup) = if cfg.quick { (40, 5) } else { (300, 20) };
    let mut table = Table::new(
        format!(
            "B1 propagation: 1 writer, {B1_PAYLOAD} B payload, {trials} trials 5-50 ms apart; \
             ms from update() to applied on every other node"
        ),
        &[
            "N",
            "p50",
            "p90",
            "p99",
            "max",
            "trials",
            "timeouts",
            "1-recv p50",
            "1-recv p99",
            "idle CPU",
        ],
    );
    let mut out = Map::new();
    for &n in sizes {
        let idle = (!cfg.quick).then_some(Duration::from_secs(2));
        match b1_one(n, trials, warmup, cfg.seed, idle, cfg.liveness).await {
            Ok((all, each, starts, cpu)) => {
                let mut cells = vec![n.to_string()];
                cells.extend(all.cells());
                cells.push(ms(each.p50()));
                cells.push(ms(each.p99()));
                cells.push(
                    cpu.map(|c| format!("{:.0}%", c * 100.0))
                        .unwrap_or_else(|| "-".into()),
                );
                table.row(cells);
                report.figure(format!("b1.n{n}.p50_ms"), all.p50());
                report.figure(format!("b1.n{n}.p99_ms"), all.p99());
                out.insert(
                    format!("n{n}"),
                    json!({"all_receivers": all.to_json(true), "each_receiver": each.to_json(false),
                           "idle_cpu_cores": cpu,
                           "trial_start_ms": starts.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>()}),
                );
            }
            Err(e) => {
                table.row(vec![n.to_string(), format!("error: {e}")]);
                out.insert(format!("n{n}"), json!({ "error": e }));
            }
        }
    }
    table.print();
    json!({
        "payload_bytes": B1_PAYLOAD, "trials": trials, "warmup": warmup,
        "spacing_ms": [5, 50], "results": out,
        "idle_cpu_method": "full mode only: CPU time of the whole process (all N nodes) over 2 s \
                            without writes, after the mesh settled, summed from \
                            /proc/self/task/*/schedstat, as a share of one core",
        "method": "writer = node 0; t0 just before Store::update; each receiver's task watches \
                   Store::watch() and timestamps the first snapshot holding the new seq; \
                   all_receivers = latest receiver - t0, each_receiver = every receiver's own delay"
    })
}

async fn b1_one(
    n: usize,
    trials: usize,
    warmup: usize,
    seed: u64,
    idle: Option<Duration>,
    liveness: Liveness,
) -> Result<(Samples, Samples, Vec<f64>, Option<f64>), String> {
    let mesh = Mesh::start(n, seed, |b| b.liveness(liveness)).await?;
    mesh.converge(SETUP_DEADLINE).await?;
    tokio::time::sleep(MESH_SETTLE).await;
    let cpu = match idle {
        Some(w) => cpu_share_over(w).await,
        None => None,
    };
    let mut rx = track_seq(&mesh.stores, mesh.ids[0], 0);
    let expect: Vec<usize> = (1..n).collect();
    let mut rng = Rng::new(seed ^ (n as u64) << 8);
    let (mut all, mut each) = (Samples::default(), Samples::default());
    let mut starts = Vec::with_capacity(trials);
    let first = Instant::now();
    for t in 0..warmup + trials {
        tokio::time::sleep(rng.millis(5, 50)).await;
        let seq = t as u64 + 1;
        let t0 = Instant::now();
        if t >= warmup {
            starts.push((t0 - first).as_secs_f64() * 1000.0);
        }
        mesh.stores[0]
            .update(move |p| {
                p.seq = seq;
                if p.data.len() != B1_PAYLOAD {
                    p.data = filler(B1_PAYLOAD);
                }
            })
            .await
            .map_err(err)?;
        let deadline = tokio::time::Instant::now() + TRIAL_DEADLINE;
        let got = collect_arrivals(&mut rx, n, &expect, seq, deadline).await;
        if t < warmup {
            continue;
        }
        match all_arrived(t0, &got, &expect) {
            Some(d) => all.push(d),
            None => all.timeout(),
        }
        for at in expect.iter().filter_map(|&i| got[i]) {
            each.push(at.saturating_duration_since(t0));
        }
    }
    Ok((all, each, starts, cpu))
}

/// B2: every node writes K versions as fast as it can; time until all nodes hold every
/// node's final version. Bytes sent come from the kernel's per-socket counters.
pub async fn concurrent_writers(cfg: &Cfg, report: &mut Report) -> Value {
    let runs: &[(usize, u64, usize)] = if cfg.quick {
        &[(8, 50, 2)]
    } else {
        &[(8, 200, 3), (32, 100, 2)]
    };
    let mut table = Table::new(
        "B2 concurrent writers: every node writes K versions (64 B payload) back to back; \
         ms from start to every node holding every final version",
        &[
            "N",
            "K",
            "rounds",
            "converge p50",
            "converge max",
            "writes done p50",
            "writes/s (all)",
            "bytes sent/node/round",
            "bytes/version written",
            "timeouts",
        ],
    );
    let mut out = Map::new();
    let mut bytes_measured = false;
    for &(n, k, rounds) in runs {
        match b2_one(n, k, rounds, cfg.seed, cfg.liveness).await {
            Ok(r) => {
                let bytes = r.bytes_per_node.mean();
                bytes_measured |= bytes.is_some();
                table.row(vec![
                    n.to_string(),
                    k.to_string(),
                    rounds.to_string(),
                    ms(r.converge.p50()),
                    ms(r.converge.max()),
                    ms(r.writes.p50()),
                    r.writes
                        .mean()
                        .map(|m| num((n as u64 * k) as f64 / (m / 1000.0)))
                        .unwrap_or_else(|| "-".into()),
                    bytes.map(num).unwrap_or_else(|| "n/a".into()),
                    bytes
                        .map(|b| num(b / k as f64))
                        .unwrap_or_else(|| "n/a".into()),
                    r.converge.timeouts().to_string(),
                ]);
                report.figure(format!("b2.n{n}.converge_p50_ms"), r.converge.p50());
                out.insert(
                    format!("n{n}_k{k}"),
                    json!({
                        "converge": r.converge.to_json(true),
                        "writes_done": r.writes.to_json(true),
                        "bytes_sent_per_node_per_round": bytes,
                        "bytes_samples_per_node": r.bytes_per_node.values,
                        "published_per_node_per_round": r.published_per_node,
                        "applied_per_node_per_round": r.applied_per_node,
                    }),
                );
            }
            Err(e) => {
                table.row(vec![n.to_string(), k.to_string(), format!("error: {e}")]);
                out.insert(format!("n{n}_k{k}"), json!({ "error": e }));
            }
        }
    }
    table.print();
    if !bytes_measured {
        report.unmeasured.push(
            "B2 bytes sent per node: `ss -tinp` (iproute2) unavailable, so the kernel's \
             per-socket counters could not be read; the library exposes no byte counters"
                .into(),
        );
    }
    json!({
        "payload_bytes": 64, "results": out,
        "bytes_method": "sum of tcpi_bytes_sent over this process's TCP sockets (ss -tinp), \
                         delta over the round (+100 ms), divided by N: all traffic on the \
                         connections (noise+yamux framing, gossipsub data and control, presence, \
                         sync), averaged over nodes; the library has no byte counters",
    })
}

/// Plain mean over f64 values, for JSON and tables.
#[derive(Debug, Default)]
struct Values {
    values: Vec<f64>,
}

impl Values {
    fn mean(&self) -> Option<f64> {
        (!self.values.is_empty())
            .then(|| self.values.iter().sum::<f64>() / self.values.len() as f64)
    }
}

struct B2 {
    converge: Samples,
    writes: Samples,
    bytes_per_node: Values,
    published_per_node: Vec<f64>,
    applied_per_node: Vec<f64>,
}

async fn b2_one(
    n: usize,
    k: u64,
    rounds: usize,
    seed: u64,
    liveness: Liveness,
) -> Result<B2, String> {
    let mesh = Mesh::start(n, seed, |b| b.liveness(liveness)).await?;
    mesh.converge(SETUP_DEADLINE).await?;
    tokio::time::sleep(MESH_SETTLE).await;
    let mut r = B2 {
        converge: Samples::default(),
        writes: Samples::default(),
        bytes_per_node: Values::default(),
        published_per_node: Vec::new(),
        applied_per_node: Vec::new(),
    };
    for round in 0..rounds as u64 {
        let (first, last) = (round * k + 1, (round + 1) * k);
        let bytes0 = tcp_bytes_sent();
        let pub0 = sum_metrics(&mesh.nodes, |m| m.published);
        let app0 = sum_metrics(&mesh.nodes, |m| m.applied);
        let gate = Arc::new(Barrier::new(n + 1));
        let writers: Vec<_> = mesh
            .stores
            .iter()
            .map(|s| {
                let (s, gate) = (s.clone(), gate.clone());
                tokio::spawn(async move {
                    gate.wait().await;
                    for seq in first..=last {
                        s.update(move |p| {
                            p.seq = seq;
                            if p.data.is_empty() {
                                p.data = filler(64);
                            }
                        })
                        .await
                        .map_err(err)?;
                    }
                    Ok::<Instant, String>(Instant::now())
                })
            })
            .collect();
        let waiters: Vec<_> = mesh
            .stores
            .iter()
            .map(|s| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.wait_until(Duration::from_secs(60), move |snap| {
                        snap.remote.len() == n - 1 && snap.iter().all(|x| x.data.seq >= last)
                    })
                    .await
                    .ok()
                    .map(|_| Instant::now())
                })
            })
            .collect();
        gate.wait().await;
        let t0 = Instant::now();
        let mut done_writing = t0;
        for w in writers {
            let at = w.await.map_err(err)??;
            done_writing = done_writing.max(at);
        }
        r.writes.push(done_writing - t0);
        let mut converged = Some(t0);
        for w in waiters {
            converged = match (converged, w.await.map_err(err)?) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        match converged {
            Some(at) => r.converge.push(at - t0),
            None => r.converge.timeout(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let (Some(b0), Some(b1)) = (bytes0, tcp_bytes_sent()) {
            r.bytes_per_node
                .values
                .push(b1.saturating_sub(b0) as f64 / n as f64);
        }
        r.published_per_node
            .push((sum_metrics(&mesh.nodes, |m| m.published) - pub0) as f64 / n as f64);
        r.applied_per_node
            .push((sum_metrics(&mesh.nodes, |m| m.applied) - app0) as f64 / n as f64);
    }
    Ok(r)
}

/// B3: a mesh of M devices with a 64 KiB slice each; a new node joins; time until it
/// holds all of them.
pub async fn late_joiner(cfg: &Cfg, report: &mut Report) -> Value {
    const SLICE: usize = 64 * 1024;
    let (m, trials) = if cfg.quick { (8, 2) } else { (32, 5) };
    let mut table = Table::new(
        format!(
            "B3 late joiner: {m} devices x 64 KiB; a new node dials 3 of them; \
             ms until it holds all {m} slices"
        ),
        &[
            "M",
            "from start() p50",
            "max",
            "from store() p50",
            "max",
            "trials",
            "timeouts",
        ],
    );
    let result = async {
        let mesh = Mesh::start(m, cfg.seed, |b| b).await?;
        mesh.converge(SETUP_DEADLINE).await?;
        let fills = mesh.stores.iter().map(|s| {
            s.update(|p| {
                p.seq = 1;
                p.data = filler(SLICE);
            })
        });
        for r in futures::future::join_all(fills).await {
            r.map_err(err)?;
        }
        let full = move |s: &truffle_actors::StoreSnapshot<Payload>| {
            s.len() == m && s.iter().all(|x| x.data.data.len() == SLICE)
        };
        let missing = mesh
            .wait_all(SETUP_DEADLINE, full)
            .await
            .iter()
            .filter(|d| d.is_none())
            .count();
        if missing > 0 {
            return Err(format!("{missing} mesh nodes never held all 64 KiB slices"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut rng = Rng::new(cfg.seed ^ 0xB3);
        let (mut from_start, mut from_join) = (Samples::default(), Samples::default());
        for t in 0..trials {
            let mut b = builder(1000 + t);
            for p in rng.distinct(m, 3) {
                b = b.bootstrap(mesh.nodes[p].listen_addrs()[0].clone());
            }
            let t0 = Instant::now();
            let node = b.start().await.map_err(err)?;
            let store = node.store::<Payload>().await.map_err(err)?;
            let joined = Instant::now();
            let ok = store
                .wait_until(Duration::from_secs(30), |s| {
                    s.remote.len() >= m && s.remote.values().all(|x| x.data.data.len() == SLICE)
                })
                .await
                .is_ok();
            let done = Instant::now();
            if ok {
                from_start.push(done - t0);
                from_join.push(done - joined);
            } else {
                from_start.timeout();
                from_join.timeout();
            }
            drop(store);
            let _ = tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok::<_, String>((from_start, from_join))
    }
    .await;
    let out = match result {
        Ok((from_start, from_join)) => {
            table.row(vec![
                m.to_string(),
                ms(from_start.p50()),
                ms(from_start.max()),
                ms(from_join.p50()),
                ms(from_join.max()),
                from_start.count().to_string(),
                from_start.timeouts().to_string(),
            ]);
            report.figure(format!("b3.m{m}.max_ms"), from_start.max());
            report.figure(format!("b3.m{m}.p50_ms"), from_start.p50());
            json!({"devices": m, "slice_bytes": SLICE,
                   "from_start": from_start.to_json(true), "from_store_join": from_join.to_json(true)})
        }
        Err(e) => {
            table.row(vec![m.to_string(), format!("error: {e}")]);
            json!({ "error": e })
        }
    };
    table.print();
    out
}

/// B4: drop a node without a leave; time until every other node removed it.
pub async fn failure_detection(cfg: &Cfg, report: &mut Report) -> Value {
    let (n, trials, idle) = if cfg.quick {
        (8, 1, Duration::from_secs(1))
    } else {
        (8, 3, Duration::from_secs(5))
    };
    let mut table = Table::new(
        format!(
            "B4 failure detection at defaults (presence 500 ms, timeout 2.5 s): {n} nodes, \
             drop(MeshNode) of one; ms until every other node got RemoteRemoved"
        ),
        &[
            "trial",
            "all removed",
            "first removed",
            "observers",
            "reasons",
            "false removals",
        ],
    );
    let result = b4_run(n, trials, idle, cfg.seed, cfg.liveness, &mut table).await;
    let out = match result {
        Ok((all, each, false_removals)) => {
            table.row(vec![
                "summary".into(),
                format!("p50 {} max {}", ms(all.p50()), ms(all.max())),
                format!("1-node p50 {}", ms(each.p50())),
                String::new(),
                String::new(),
                false_removals.to_string(),
            ]);
            report.figure("b4.detect_max_ms", all.max());
            report.figure("b4.false_removals", Some(false_removals as f64));
            json!({"nodes": n, "idle_before_ms": idle.as_millis() as u64,
                   "all_observers": all.to_json(true), "each_observer": each.to_json(false),
                   "false_removals": false_removals})
        }
        Err(e) => {
            table.row(vec!["-".into(), format!("error: {e}")]);
            json!({ "error": e })
        }
    };
    table.print();
    out
}

type Removed = (usize, DeviceId, RemovalReason, Instant);

/// Every removal reported during the next `d`.
async fn drain_for(rx: &mut mpsc::UnboundedReceiver<Removed>, d: Duration) -> Vec<Removed> {
    let until = tokio::time::Instant::now() + d;
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout_at(until, rx.recv()).await {
        seen.push(ev);
    }
    seen
}

async fn b4_run(
    n: usize,
    trials: usize,
    idle: Duration,
    seed: u64,
    liveness: Liveness,
    table: &mut Table,
) -> Result<(Samples, Samples, usize), String> {
    let Mesh {
        mut nodes,
        mut stores,
        ids,
        ..
    } = {
        let mesh = Mesh::start(n, seed, |b| b.liveness(liveness)).await?;
        mesh.converge(SETUP_DEADLINE).await?;
        mesh
    };
    tokio::time::sleep(MESH_SETTLE).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Removed>();
    for (i, s) in stores.iter().enumerate() {
        let mut events = s.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let StoreEvent::RemoteRemoved { device_id, reason } = ev {
                    if tx.send((i, device_id, reason, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut false_removals = 0usize;
    let mut gone: Vec<DeviceId> = Vec::new();
    let mut count_false = |ev: &Removed, gone: &[DeviceId]| {
        if !gone.contains(&ev.1) {
            false_removals += 1;
        }
    };
    for ev in drain_for(&mut rx, idle).await {
        count_false(&ev, &gone);
    }
    let (mut all, mut each) = (Samples::default(), Samples::default());
    for t in 0..trials {
        let victim_idx = nodes.len() - 1;
        let victim = ids[victim_idx];
        let node = nodes.pop().ok_or("no node left")?;
        let store = stores.pop();
        let observers = nodes.len();
        let t0 = Instant::now();
        drop(node);
        drop(store);
        gone.push(victim);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut got: Vec<Option<Instant>> = vec![None; observers];
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut left = observers;
        while left > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => {
                    let (i, dev, reason, at) = ev;
                    if dev == victim && i < observers && got[i].is_none() {
                        got[i] = Some(at);
                        *reasons.entry(reason.to_string()).or_default() += 1;
                        left -= 1;
                    } else {
                        count_false(&ev, &gone);
                    }
                }
                _ => break,
            }
        }
        let times: Vec<Duration> = got.iter().flatten().map(|at| *at - t0).collect();
        if left == 0 {
            all.push(times.iter().copied().max().unwrap_or_default());
        } else {
            all.timeout();
        }
        for d in &times {
            each.push(*d);
        }
        table.row(vec![
            (t + 1).to_string(),
            if left == 0 {
                ms(times.iter().max().map(|d| d.as_secs_f64() * 1000.0))
            } else {
                format!("timeout ({left} missing)")
            },
            ms(times.iter().min().map(|d| d.as_secs_f64() * 1000.0)),
            observers.to_string(),
            reasons
                .iter()
                .map(|(r, c)| format!("{r}:{c}"))
                .collect::<Vec<_>>()
                .join(" "),
            String::new(),
        ]);
        for ev in drain_for(&mut rx, Duration::from_millis(700)).await {
            count_false(&ev, &gone);
        }
    }
    Ok((all, each, false_removals))
}

/// B5: versions per second from one node to another, and local writes per second.
pub async fn throughput(cfg: &Cfg, report: &mut Report) -> Value {
    let (fire, lock, local) = if cfg.quick { (2, 1, 1) } else { (5, 3, 3) };
    let (fire, lock, local) = (
        Duration::from_secs(fire),
        Duration::from_secs(lock),
        Duration::from_secs(local),
    );
    let mut table = Table::new(
        "B5 throughput (64 B payload)",
        &["measure", "rate /s", "detail"],
    );
    let mut out = Map::new();
    match b5_remote(fire, lock, cfg.seed).await {
        Ok(r) => {
            table.row(vec![
                format!(
                    "firehose {}s: written by A (Store::update, back to back)",
                    fire.as_secs()
                ),
                num(r.written_per_s),
                format!("{} writes", r.written),
            ]);
            table.row(vec![
                "firehose: published by A (after coalescing)".into(),
                num(r.published_per_s),
                format!("{} publishes", r.published),
            ]);
            table.row(vec![
                "firehose: distinct versions applied on B".into(),
                num(r.applied_per_s),
                format!(
                    "{} applied, {} delivered, {} stale; last version arrived: {}",
                    r.applied, r.delivered, r.stale, r.caught_up
                ),
            ]);
            table.row(vec![
                "firehose: write on A -> visible on B".into(),
                String::new(),
                format!(
                    "p50 {} ms, p99 {} ms, max {} ms over {} snapshots; B caught up {} ms after A stopped",
                    ms(r.lag.p50()),
                    ms(r.lag.p99()),
                    ms(r.lag.max()),
                    r.lag.count(),
                    ms(Some(r.drain_ms))
                ),
            ]);
            table.row(vec![
                format!(
                    "lock-step {}s: A writes, waits until B holds it",
                    lock.as_secs()
                ),
                num(r.lockstep_per_s),
                format!(
                    "round trip p50 {} ms, p99 {} ms",
                    ms(r.lockstep.p50()),
                    ms(r.lockstep.p99())
                ),
            ]);
            let w = &r.windowed;
            let w_applied = w.applied as f64 / w.secs;
            table.row(vec![
                format!(
                    "windowed {}s, no coalescing: versions applied on B (each published, <= {B5_WINDOW} in flight)",
                    fire.as_secs()
                ),
                num(w_applied),
                format!(
                    "{} written, {} published, {} applied, {} stale",
                    w.written, w.published, w.applied, w.stale
                ),
            ]);
            report.figure("b5.applied_per_s", Some(w_applied));
            report.figure("b5.firehose_applied_per_s", Some(r.applied_per_s));
            report.figure("b5.written_per_s", Some(r.written_per_s));
            out.insert(
                "remote".into(),
                json!({
                    "firehose_secs": fire.as_secs_f64(),
                    "written": r.written, "written_per_s": r.written_per_s,
                    "published": r.published, "published_per_s": r.published_per_s,
                    "applied": r.applied, "applied_per_s": r.applied_per_s,
                    "delivered": r.delivered, "stale": r.stale,
                    "receiver_caught_up": r.caught_up,
                    "drain_after_writes_ms": r.drain_ms,
                    "write_to_visible_on_b": r.lag.to_json(false),
                    "lockstep_per_s": r.lockstep_per_s,
                    "windowed": {"secs": w.secs, "window": B5_WINDOW, "written": w.written,
                                 "published": w.published, "applied": w.applied,
                                 "stale": w.stale, "applied_per_s": w_applied},
                    "lockstep_round_trip": r.lockstep.to_json(false),
                }),
            );
        }
        Err(e) => {
            table.row(vec!["remote".into(), format!("error: {e}")]);
            out.insert("remote".into(), json!({ "error": e }));
        }
    }
    match b5_local(local).await {
        Ok((one, eight)) => {
            table.row(vec![
                "local writes, lone node, 1 task (Store::update loop)".into(),
                num(one),
                String::new(),
            ]);
            table.row(vec![
                "local writes, lone node, 8 tasks at once".into(),
                num(eight),
                String::new(),
            ]);
            report.figure("b5.local_writes_per_s", Some(one));
            out.insert(
                "local".into(),
                json!({"secs": local.as_secs_f64(), "one_task_per_s": one, "eight_tasks_per_s": eight}),
            );
        }
        Err(e) => {
            table.row(vec!["local".into(), format!("error: {e}")]);
            out.insert("local".into(), json!({ "error": e }));
        }
    }
    match b5_persisted(local).await {
        Ok(r) => {
            table.row(vec![
                "local writes, lone node with a data dir (redb), 1 task".into(),
                num(r.writes_per_s),
                format!(
                    "{} writes, {} durable versions seen; write -> durable p50 {} ms, p99 {} ms, max {} ms ({} sampled writes)",
                    r.writes,
                    r.commits,
                    ms(r.loaded.p50()),
                    ms(r.loaded.p99()),
                    ms(r.loaded.max()),
                    r.loaded.count()
                ),
            ]);
            table.row(vec![
                "one write at a time, wait until durable (Store::persisted)".into(),
                num(r.lockstep_per_s),
                format!(
                    "write -> durable p50 {} ms, p99 {} ms, max {} ms over {} writes",
                    ms(r.lockstep.p50()),
                    ms(r.lockstep.p99()),
                    ms(r.lockstep.max()),
                    r.lockstep.count()
                ),
            ]);
            report.figure("b5.persisted_local_writes_per_s", Some(r.writes_per_s));
            report.figure("b5.write_to_durable_p50_ms", r.loaded.p50());
            report.figure("b5.write_to_durable_p99_ms", r.loaded.p99());
            out.insert(
                "persisted".into(),
                json!({
                    "secs": local.as_secs_f64(),
                    "writes": r.writes, "writes_per_s": r.writes_per_s,
                    "commits": r.commits,
                    "write_to_durable_while_writing": r.loaded.to_json(false),
                    "lockstep_per_s": r.lockstep_per_s,
                    "write_to_durable_one_at_a_time": r.lockstep.to_json(false),
                }),
            );
        }
        Err(e) => {
            table.row(vec!["persisted".into(), format!("error: {e}")]);
            out.insert("persisted".into(), json!({ "error": e }));
        }
    }
    table.print();
    Value::Object(out)
}

struct B5 {
    written: u64,
    written_per_s: f64,
    published: u64,
    published_per_s: f64,
    applied: u64,
    applied_per_s: f64,
    delivered: u64,
    stale: u64,
    caught_up: bool,
    drain_ms: f64,
    lag: Samples,
    lockstep: Samples,
    lockstep_per_s: f64,
    windowed: Windowed,
}

/// The windowed run: A writes the next version once the last one is published, and only
/// while fewer than [`B5_WINDOW`] of its versions are not yet on B. Nothing is coalesced.
struct Windowed {
    secs: f64,
    written: u64,
    published: u64,
    applied: u64,
    stale: u64,
}

/// Versions A may have in flight (written, not yet held by B) in the windowed run.
const B5_WINDOW: u64 = 64;

async fn b5_remote(fire: Duration, lock: Duration, seed: u64) -> Result<B5, String> {
    let mesh = Mesh::start(2, seed, |b| b).await?;
    mesh.converge(SETUP_DEADLINE).await?;
    tokio::time::sleep(MESH_SETTLE).await;
    let (a, b) = (&mesh.stores[0], &mesh.stores[1]);
    let writer = mesh.ids[0];
    let (ma0, mb0) = (mesh.nodes[0].metrics(), mesh.nodes[1].metrics());
    let mut seen = track_seq(&mesh.stores, writer, 0);
    let mut wrote_at: Vec<Instant> = Vec::with_capacity(1 << 20);
    let t0 = Instant::now();
    let mut written = 0u64;
    while t0.elapsed() < fire {
        written += 1;
        let seq = written;
        a.update(move |p| {
            p.seq = seq;
            if p.data.is_empty() {
                p.data = filler(64);
            }
        })
        .await
        .map_err(err)?;
        wrote_at.push(Instant::now());
    }
    let write_secs = t0.elapsed().as_secs_f64();
    let caught_up = b
        .wait_until(Duration::from_secs(5), |s| {
            s.get(&writer).is_some_and(|x| x.data.seq >= written)
        })
        .await
        .is_ok();
    let total_secs = t0.elapsed().as_secs_f64();
    // Delay from a version's write on A to B's snapshot first holding it (or a newer one),
    // for every version B's snapshot showed: how far B lags while A writes flat out.
    let mut lag = Samples::default();
    while let Ok((_, s, at)) = seen.try_recv() {
        if let Some(w) = (s as usize).checked_sub(1).and_then(|i| wrote_at.get(i)) {
            lag.push(at.saturating_duration_since(*w));
        }
    }
    drop(seen);
    let (ma1, mb1) = (mesh.nodes[0].metrics(), mesh.nodes[1].metrics());
    let published = ma1.published - ma0.published;
    let applied = mb1.applied - mb0.applied;
    let mut lockstep = Samples::default();
    let mut seq = written;
    let t1 = Instant::now();
    let mut rounds = 0u64;
    while t1.elapsed() < lock {
        seq += 1;
        let s = seq;
        let t = Instant::now();
        a.update(move |p| p.seq = s).await.map_err(err)?;
        match b
            .wait_until(TRIAL_DEADLINE, |x| {
                x.get(&writer).is_some_and(|x| x.data.seq >= s)
            })
            .await
        {
            Ok(_) => lockstep.push(t.elapsed()),
            Err(_) => {
                lockstep.timeout();
                break;
            }
        }
        rounds += 1;
    }
    let lockstep_per_s = rounds as f64 / t1.elapsed().as_secs_f64();

    // Windowed, without coalescing: write the next version once the last one is published
    // (`Store::flushed`), and only while fewer than B5_WINDOW are not yet on B. Every
    // version written goes out on its own, and what B applies is the pipeline's own rate.
    let (ma2, mb2) = (mesh.nodes[0].metrics(), mesh.nodes[1].metrics());
    let mut view = b.watch();
    type View = tokio::sync::watch::Receiver<std::sync::Arc<StoreSnapshot<Payload>>>;
    let held_seq = |v: &mut View| -> u64 {
        let snap = v.borrow_and_update().clone();
        snap.get(&writer).map_or(0, |x| x.data.seq)
    };
    let start_seq = seq;
    let mut flushed = a.flushed();
    let t2 = Instant::now();
    while t2.elapsed() < fire {
        while seq - held_seq(&mut view) >= B5_WINDOW {
            if tokio::time::timeout(TRIAL_DEADLINE, view.changed())
                .await
                .is_err()
            {
                return Err("windowed run: B stopped receiving".into());
            }
        }
        seq += 1;
        let s = seq;
        let written = a.update(move |p| p.seq = s).await.map_err(err)?.version;
        // Wait until this version is published before writing the next: none is
        // coalesced away, and no CPU goes to writes that would be.
        match tokio::time::timeout(TRIAL_DEADLINE, flushed.wait_for(|v| *v >= written)).await {
            Ok(Ok(_)) => {}
            _ => return Err("windowed run: a write was never published".into()),
        }
    }
    let window_secs = t2.elapsed().as_secs_f64();
    let (ma3, mb3) = (mesh.nodes[0].metrics(), mesh.nodes[1].metrics());
    let windowed = Windowed {
        secs: window_secs,
        written: seq - start_seq,
        published: ma3.published - ma2.published,
        applied: mb3.applied - mb2.applied,
        stale: mb3.stale() - mb2.stale(),
    };
    Ok(B5 {
        written,
        written_per_s: written as f64 / write_secs,
        published,
        published_per_s: published as f64 / write_secs,
        applied,
        applied_per_s: applied as f64 / total_secs,
        delivered: mb1.delivered - mb0.delivered,
        stale: mb1.stale() - mb0.stale(),
        caught_up,
        drain_ms: (total_secs - write_secs) * 1000.0,
        lag,
        lockstep,
        lockstep_per_s,
        windowed,
    })
}

async fn b5_local(secs: Duration) -> Result<(f64, f64), String> {
    let node = builder(0).start().await.map_err(err)?;
    let store = node.store::<Payload>().await.map_err(err)?;
    store.update(|p| p.data = filler(64)).await.map_err(err)?;
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < secs {
        for _ in 0..64 {
            n += 1;
            let s = n;
            store.update(move |p| p.seq = s).await.map_err(err)?;
        }
    }
    let one = n as f64 / t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut c = 0u64;
                while t1.elapsed() < secs {
                    for _ in 0..64 {
                        c += 1;
                        store.update(move |p| p.seq = c).await.map_err(err)?;
                    }
                }
                Ok::<u64, String>(c)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(err)??;
    }
    let eight = total as f64 / t1.elapsed().as_secs_f64();
    drop(store);
    let _ = tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await;
    Ok((one, eight))
}

struct Persisted {
    writes: u64,
    writes_per_s: f64,
    commits: u64,
    /// Write -> durable while writing flat out (every 256th write sampled).
    loaded: Samples,
    lockstep_per_s: f64,
    /// Write -> durable, one write at a time.
    lockstep: Samples,
}

/// B5 with persistence: a lone node with a data directory (redb in a temporary folder)
/// writes back to back; how fast `Store::update` goes, and how long a write takes to
/// become durable (`Store::persisted`), under that load and one write at a time.
async fn b5_persisted(secs: Duration) -> Result<Persisted, String> {
    let dir = std::env::temp_dir().join(format!("truffle-bench-b5-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = b5_persisted_in(&dir, secs).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn b5_persisted_in(dir: &std::path::Path, secs: Duration) -> Result<Persisted, String> {
    let node = builder(0).data_dir(dir).start().await.map_err(err)?;
    let store = node.store::<Payload>().await.map_err(err)?;
    store.update(|p| p.data = filler(64)).await.map_err(err)?;
    // Watches durability: (counter, when) for every version the writer reports.
    let mut persisted = store.persisted();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut commits = 0u64;
        while persisted.changed().await.is_ok() {
            commits += 1;
            seen.push((persisted.borrow_and_update().counter, Instant::now()));
        }
        (seen, commits)
    });
    let mut sampled = Vec::new();
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut last = 0;
    while t0.elapsed() < secs {
        for _ in 0..64 {
            n += 1;
            let s = n;
            let v = store.update(move |p| p.seq = s).await.map_err(err)?.version;
            last = v.counter;
            if n.is_multiple_of(256) {
                sampled.push((v.counter, Instant::now()));
            }
        }
    }
    let writes_per_s = n as f64 / t0.elapsed().as_secs_f64();
    let mut rx = store.persisted();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|v| v.counter >= last))
        .await
        .map_err(|_| "the last write never became durable".to_string())?
        .map_err(err)?;

    // One write at a time.
    let mut lockstep = Samples::default();
    let t1 = Instant::now();
    let mut k = 0u64;
    while t1.elapsed() < secs / 2 {
        k += 1;
        let s = k;
        let start = Instant::now();
        let v = store.update(move |p| p.seq = s).await.map_err(err)?.version;
        match tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|d| *d >= v)).await {
            Ok(Ok(_)) => lockstep.push(start.elapsed()),
            _ => lockstep.timeout(),
        }
    }
    let lockstep_per_s = k as f64 / t1.elapsed().as_secs_f64();
    drop(rx);
    drop(store);
    let _ = tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await;
    let (seen, commits) = watcher.await.map_err(err)?;
    let mut loaded = Samples::default();
    for (counter, at) in sampled {
        match seen.iter().find(|(c, _)| *c >= counter) {
            Some((_, done)) => loaded.push(done.saturating_duration_since(at)),
            None => loaded.timeout(),
        }
    }
    Ok(Persisted {
        writes: n,
        writes_per_s,
        commits,
        loaded,
        lockstep_per_s,
        lockstep,
    })
}

/// B6: 64 nodes started one after another (each dialling 3 earlier ones and joining the
/// store at once); time from the last join until every node holds all 64 slices. Also,
/// for diagnosis: how many slices the nodes hold as time goes on, and, on a second fresh
/// mesh, how long the same convergence takes when every node writes a new version 1 s
/// after the last join (so the versions travel over an established gossip mesh).
pub async fn convergence_64(cfg: &Cfg, report: &mut Report) -> Value {
    let n = 64;
    let mut table = Table::new(
        "B6 convergence-64: 64 in-process nodes, each dials 3 earlier ones and joins at once",
        &["measure", "value", "detail"],
    );
    let mut out = Map::new();
    match b6_initial(n, cfg.seed, cfg.liveness).await {
        Ok((startup, per_node, missing, progress, cpu)) => {
            let all = (missing == 0).then(|| per_node.max()).flatten();
            table.row(vec![
                "start + join of all 64 nodes".into(),
                format!("{} ms", ms(Some(startup.as_secs_f64() * 1000.0))),
                String::new(),
            ]);
            table.row(vec![
                "all nodes hold 64 slices, after the last join".into(),
                all.map(|v| format!("{} ms", ms(Some(v))))
                    .unwrap_or_else(|| format!("timeout (30 s), {missing} nodes short")),
                format!(
                    "per node: p50 {} ms, first {} ms",
                    ms(per_node.p50()),
                    ms(per_node.percentile(0.0))
                ),
            ]);
            let at = |t: f64| {
                progress
                    .iter()
                    .find(|(ms, _, _)| *ms >= t)
                    .map(|(_, mean, min)| format!("{mean:.1}/{min}"))
                    .unwrap_or_else(|| "-".into())
            };
            table.row(vec![
                "slices held, mean/min of 64 nodes".into(),
                String::new(),
                format!(
                    "+0.25 s {}, +0.5 s {}, +1 s {}, +2 s {}, +4 s {}, +8 s {}",
                    at(250.0),
                    at(500.0),
                    at(1000.0),
                    at(2000.0),
                    at(4000.0),
                    at(8000.0)
                ),
            ]);
            table.row(vec![
                "idle CPU of the 64 converged nodes (3 s, no writes)".into(),
                cpu.map(|c| format!("{:.0}% of one core", c * 100.0))
                    .unwrap_or_else(|| "-".into()),
                "whole process, /proc/self/task/*/schedstat".into(),
            ]);
            report.figure("b6.converge_ms", Some(all.unwrap_or(f64::INFINITY)));
            out.insert(
                "initial".into(),
                json!({"startup_ms": startup.as_secs_f64() * 1000.0,
                       "converged_all_ms": all, "per_node_after_last_join": per_node.to_json(true),
                       "not_converged": missing, "idle_cpu_cores": cpu,
                       "held_progress": progress.iter().map(|(t, mean, min)| json!({"ms": t, "mean": mean, "min": min})).collect::<Vec<_>>()}),
            );
        }
        Err(e) => {
            table.row(vec!["initial convergence".into(), format!("error: {e}")]);
            out.insert("initial".into(), json!({ "error": e }));
        }
    }
    match b6_rewrite(n, cfg.seed, cfg.liveness).await {
        Ok((per_node, missing, held_before)) => {
            let all = (missing == 0).then(|| per_node.max()).flatten();
            table.row(vec![
                "(info) fresh mesh, all write once 1 s after the last join: all hold all 64 new versions".into(),
                all.map(|v| format!("{} ms", ms(Some(v))))
                    .unwrap_or_else(|| format!("timeout (30 s), {missing} nodes short")),
                format!(
                    "after the writes; per node p50 {} ms; mean slices held just before: {held_before:.1}",
                    ms(per_node.p50())
                ),
            ]);
            out.insert(
                "rewrite_after_1s".into(),
                json!({"converged_all_ms": all, "per_node": per_node.to_json(true),
                       "not_converged": missing, "mean_held_before_writes": held_before}),
            );
        }
        Err(e) => {
            table.row(vec![
                "(info) rewrite after 1 s".into(),
                format!("error: {e}"),
            ]);
            out.insert("rewrite_after_1s".into(), json!({ "error": e }));
        }
    }
    table.print();
    out.insert("nodes".into(), json!(n));
    Value::Object(out)
}

/// (ms after the last join, mean slices held, fewest held) samples.
type Progress = Vec<(f64, f64, usize)>;

type B6Initial = (Duration, Samples, usize, Progress, Option<f64>);

async fn b6_initial(n: usize, seed: u64, liveness: Liveness) -> Result<B6Initial, String> {
    let mesh = Mesh::start(n, seed, |b| b.liveness(liveness)).await?;
    let sample = async {
        let mut progress = Vec::new();
        let end = mesh.last_join + Duration::from_secs(30);
        loop {
            let lens: Vec<usize> = mesh.stores.iter().map(|s| s.snapshot().len()).collect();
            let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
            let min = lens.iter().copied().min().unwrap_or(0);
            progress.push((mesh.last_join.elapsed().as_secs_f64() * 1000.0, mean, min));
            if std::env::var_os("RUST_LOG").is_some() {
                for (i, s) in mesh.stores.iter().enumerate() {
                    let snap = s.snapshot();
                    if snap.len() < n {
                        let missing: Vec<String> = mesh
                            .nodes
                            .iter()
                            .map(|m| m.device_id())
                            .filter(|d| snap.get(d).is_none())
                            .map(|d| d.to_string())
                            .collect();
                        eprintln!(
                            "b6 +{:.0} ms: node {i} ({}) lacks {missing:?}",
                            mesh.last_join.elapsed().as_secs_f64() * 1000.0,
                            mesh.nodes[i].device_id()
                        );
                    }
                }
            }
            if min == n || Instant::now() >= end {
                return progress;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let (done, progress) = tokio::join!(
        mesh.wait_all(Duration::from_secs(30), move |s| s.len() == n),
        sample
    );
    let mut per_node = Samples::default();
    let mut missing = 0;
    for d in &done {
        match d {
            Some(at) => per_node.push(at.saturating_duration_since(mesh.last_join)),
            None => missing += 1,
        }
    }
    let cpu = cpu_share_over(Duration::from_secs(3)).await;
    Ok((
        mesh.last_join - mesh.started,
        per_node,
        missing,
        progress,
        cpu,
    ))
}

async fn b6_rewrite(
    n: usize,
    seed: u64,
    liveness: Liveness,
) -> Result<(Samples, usize, f64), String> {
    let mesh = Mesh::start(n, seed ^ 0xB6, |b| b.liveness(liveness)).await?;
    tokio::time::sleep_until((mesh.last_join + Duration::from_secs(1)).into()).await;
    let held_before = mesh
        .stores
        .iter()
        .map(|s| s.snapshot().len())
        .sum::<usize>() as f64
        / n as f64;
    let t0 = Instant::now();
    let writes = mesh.stores.iter().map(|s| s.update(|p| p.seq = 1));
    for r in futures::future::join_all(writes).await {
        r.map_err(err)?;
    }
    let done = mesh
        .wait_all(Duration::from_secs(30), move |s| {
            s.len() == n && s.iter().all(|x| x.data.seq >= 1)
        })
        .await;
    let mut per_node = Samples::default();
    let mut missing = 0;
    for d in &done {
        match d {
            Some(at) => per_node.push(at.saturating_duration_since(t0)),
            None => missing += 1,
        }
    }
    Ok((per_node, missing, held_before))
}

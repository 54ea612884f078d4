//! Baseline (b): chitchat 0.13 (quickwit-oss; scuttlebutt anti-entropy over UDP), same N,
//! gossip interval 100 ms and 1 s. Each node runs chitchat's own UDP transport on
//! 127.0.0.1; node starts are staggered by a random fraction of the interval so gossip
//! ticks are not aligned; the writer sets a new key at random times, and every other node
//! timestamps its arrival in a `subscribe_event` listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    KeyChangeEvent, ListenerHandle, ProtocolVersion,
};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::mesh::Arrival;
use crate::report::{Report, Samples, Table};
use crate::rng::Rng;
use crate::scenarios::{B1_PAYLOAD, SETUP_DEADLINE};
use crate::Cfg;

/// Free UDP ports on loopback (bound, read, released: chitchat binds them again).
pub(crate) fn free_udp_addrs(n: usize) -> Result<Vec<SocketAddr>, String> {
    let socks = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    socks
        .iter()
        .map(|s| s.local_addr().map_err(|e| e.to_string()))
        .collect()
}

pub(crate) fn config(
    i: usize,
    addr: SocketAddr,
    seed: SocketAddr,
    interval: Duration,
) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(format!("n{i}"), 0, addr),
        cluster_id: "truffle-bench".into(),
        gossip_interval: interval,
        listen_addr: addr,
        seed_nodes: vec![seed.to_string()],
        failure_detector_config: FailureDetectorConfig {
            initial_interval: interval,
            ..Default::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(10_000),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
    }
}

async fn one(
    n: usize,
    interval: Duration,
    trials: usize,
    warmup: usize,
    seed: u64,
) -> Result<Samples, String> {
    let addrs = free_udp_addrs(n)?;
    let mut rng = Rng::new(seed ^ (n as u64) << 8 ^ interval.as_millis() as u64);
    let spawns = addrs.iter().enumerate().map(|(i, &addr)| {
        let cfg = config(i, addr, addrs[0], interval);
        let delay = rng.fraction_of(interval, 0.0, 1.0);
        async move {
            tokio::time::sleep(delay).await;
            spawn_chitchat(cfg, Vec::new(), &UdpTransport).await
        }
    });
    let handles: Vec<ChitchatHandle> = futures::future::join_all(spawns.collect::<Vec<_>>())
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("chitchat did not start: {e}"))?;
    let result = measure(&handles, n, interval, trials, warmup, &mut rng).await;
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(2), h.shutdown()).await;
    }
    result
}

async fn measure(
    handles: &[ChitchatHandle],
    n: usize,
    interval: Duration,
    trials: usize,
    warmup: usize,
    rng: &mut Rng,
) -> Result<Samples, String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Arrival>();
    let mut listeners: Vec<ListenerHandle> = Vec::new();
    for (i, h) in handles.iter().enumerate().skip(1) {
        let tx = tx.clone();
        let chitchat = h.chitchat();
        let guard = chitchat.lock().await;
        listeners.push(guard.subscribe_event("t", move |ev: KeyChangeEvent| {
            if &*ev.node.node_id == "n0" {
                if let Ok(k) = ev.key.parse::<u64>() {
                    let _ = tx.send((i, k, Instant::now()));
                }
            }
        }));
    }
    drop(tx);
    // Everyone sees everyone live before the first write.
    let deadline = tokio::time::Instant::now() + SETUP_DEADLINE;
    loop {
        let mut all_live = true;
        for h in handles {
            if h.chitchat().lock().await.live_nodes().count() < n {
                all_live = false;
                break;
            }
        }
        if all_live {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("chitchat nodes did not all see each other live".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = warmup + trials;
    let mut got: Vec<Vec<Option<Instant>>> = vec![vec![None; n]; total];
    let record = |(i, k, at): Arrival, got: &mut Vec<Vec<Option<Instant>>>| {
        if let Some(slot) = got.get_mut(k as usize).and_then(|row| row.get_mut(i)) {
            slot.get_or_insert(at);
        }
    };
    let writer: Arc<_> = handles[0].chitchat();
    let value = "x".repeat(B1_PAYLOAD);
    let mut t0s = Vec::with_capacity(total);
    for k in 0..total {
        // Writes at random points of the gossip cycle, overlapping earlier trials (each
        // trial is its own key, so they do not interfere).
        let next = tokio::time::Instant::now() + rng.fraction_of(interval, 0.3, 0.8);
        while let Ok(Some(a)) = tokio::time::timeout_at(next, rx.recv()).await {
            record(a, &mut got);
        }
        let t0 = Instant::now();
        writer
            .lock()
            .await
            .self_node_state()
            .set(format!("t{k}"), &value);
        t0s.push(t0);
    }
    let complete = |got: &Vec<Vec<Option<Instant>>>| {
        got.iter().all(|row| row[1..].iter().all(Option::is_some))
    };
    let deadline = tokio::time::Instant::now() + (interval * 20).max(Duration::from_secs(10));
    while !complete(&got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(a)) => record(a, &mut got),
            _ => break,
        }
    }
    drop(listeners);
    let mut all = Samples::default();
    for (k, row) in got.iter().enumerate().skip(warmup) {
        let worst = row[1..]
            .iter()
            .map(|at| at.map(|at| at.saturating_duration_since(t0s[k])))
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max());
        match worst {
            Some(d) => all.push(d),
            None => all.timeout(),
        }
    }
    Ok(all)
}

/// Baseline (b) for N = 2, 8 (and 32 unless quick), intervals 100 ms and 1 s. In quick
/// mode the configurations run at the same time (chitchat's latency is bound by its
/// gossip interval, not by CPU); otherwise one after another.
pub async fn chitchat(cfg: &Cfg, report: &mut Report) -> Value {
    let sizes: &[usize] = if cfg.quick { &[2, 8] } else { &[2, 8, 32] };
    let runs: Vec<(usize, Duration, usize)> = sizes
        .iter()
        .flat_map(|&n| {
            [
                (
                    n,
                    Duration::from_millis(100),
                    if cfg.quick { 20 } else { 60 },
                ),
                (n, Duration::from_secs(1), if cfg.quick { 6 } else { 20 }),
            ]
        })
        .collect();
    let warmup = 2;
    let results: Vec<Result<Samples, String>> = if cfg.quick {
        futures::future::join_all(
            runs.iter()
                .map(|&(n, iv, trials)| one(n, iv, trials, warmup, cfg.seed)),
        )
        .await
    } else {
        let mut v = Vec::new();
        for &(n, iv, trials) in &runs {
            v.push(one(n, iv, trials, warmup, cfg.seed).await);
        }
        v
    };
    let mut table = Table::new(
        format!(
            "Baseline (b) chitchat 0.13, UDP on 127.0.0.1, {B1_PAYLOAD} B value; ms from set() \
             to the key seen on every other node{}",
            if cfg.quick {
                " (quick: configurations run concurrently)"
            } else {
                ""
            }
        ),
        &[
            "N", "interval", "p50", "p90", "p99", "max", "trials", "timeouts",
        ],
    );
    let mut out = Map::new();
    for (&(n, iv, _), r) in runs.iter().zip(results) {
        let key = format!("n{n}_{}ms", iv.as_millis());
        match r {
            Ok(s) => {
                let mut cells = vec![n.to_string(), format!("{} ms", iv.as_millis())];
                cells.extend(s.cells());
                table.row(cells);
                report.figure(format!("chitchat{}.n{n}.p50_ms", iv.as_millis()), s.p50());
                out.insert(key, s.to_json(true));
            }
            Err(e) => {
                table.row(vec![
                    n.to_string(),
                    format!("{} ms", iv.as_millis()),
                    format!("error: {e}"),
                ]);
                out.insert(key, json!({ "error": e }));
            }
        }
    }
    table.print();
    json!({"transport": "chitchat UdpTransport on 127.0.0.1", "value_bytes": B1_PAYLOAD,
           "warmup": warmup, "concurrent_configs": cfg.quick, "results": out,
           "method": "seed = node 0; starts staggered by U(0, interval); failure detector \
                      initial_interval = gossip interval; writes every U(0.3, 0.8) x interval, \
                      one new key per trial; a receiver's subscribe_event callback timestamps \
                      the key; trial = latest receiver - t0 (t0 before locking the writer)"})
}

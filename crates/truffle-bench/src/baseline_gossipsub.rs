//! Baseline (a): raw libp2p gossipsub, the transport Truffle sits on (TCP + noise + yamux,
//! signed messages, 500 ms heartbeat, same dial graph, same payload size), timed from
//! publish to delivery on every other node. The floor under B1.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::swarm::SwarmEvent;
use libp2p::{multiaddr::Protocol, noise, tcp, yamux, Multiaddr, Swarm};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::mesh::{all_arrived, collect_arrivals, Arrival};
use crate::report::{Report, Samples, Table};
use crate::rng::{topology, Rng};
use crate::scenarios::{B1_PAYLOAD, MESH_SETTLE, SETUP_DEADLINE, TRIAL_DEADLINE};
use crate::Cfg;

const TOPIC: &str = "bench";

type Gossip = gossipsub::Behaviour;

fn build() -> Result<Swarm<Gossip>, String> {
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .validation_mode(ValidationMode::Strict)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_behaviour(|key| {
            Gossip::new(MessageAuthenticity::Signed(key.clone()), config)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// Binds a loopback port and returns the swarm with its dialable address.
async fn listen(mut swarm: Swarm<Gossip>) -> Result<(Swarm<Gossip>, Multiaddr), String> {
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"))
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                let peer = *swarm.local_peer_id();
                return Ok((swarm, address.with(Protocol::P2p(peer))));
            }
            Ok(_) => {}
            Err(_) => return Err("gossipsub node did not bind in 5 s".into()),
        }
    }
}

/// Runs one node: publishes what `cmds` sends, reports every message it receives.
async fn run(
    mut swarm: Swarm<Gossip>,
    index: usize,
    mut cmds: mpsc::UnboundedReceiver<Vec<u8>>,
    arrivals: mpsc::UnboundedSender<Arrival>,
) {
    let topic = IdentTopic::new(TOPIC);
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = ev {
                    let at = Instant::now();
                    if let Some(seq) = message.data.get(..8).and_then(|b| b.try_into().ok()) {
                        if arrivals.send((index, u64::from_le_bytes(seq), at)).is_err() {
                            return;
                        }
                    }
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(data) => {
                    // Before the mesh forms nobody may be subscribed yet: the warm-up retries.
                    let _ = swarm.behaviour_mut().publish(topic.clone(), data);
                }
                None => return,
            }
        }
    }
}

fn message(seq: u64) -> Vec<u8> {
    let mut m = seq.to_le_bytes().to_vec();
    m.resize(B1_PAYLOAD, b'x');
    m
}

async fn one(n: usize, trials: usize, warmup: usize, seed: u64) -> Result<Samples, String> {
    let mut swarms = Vec::with_capacity(n);
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut swarm, addr) = listen(build()?).await?;
        swarm
            .behaviour_mut()
            .subscribe(&IdentTopic::new(TOPIC))
            .map_err(|e| e.to_string())?;
        swarms.push(swarm);
        addrs.push(addr);
    }
    for (i, peers) in topology(n, seed).into_iter().enumerate() {
        for p in peers {
            swarms[i]
                .dial(addrs[p].clone())
                .map_err(|e| e.to_string())?;
        }
    }
    let (arrive_tx, mut rx) = mpsc::unbounded_channel();
    let mut cmd_txs = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for (i, swarm) in swarms.into_iter().enumerate() {
        let (tx, cmds) = mpsc::unbounded_channel();
        cmd_txs.push(tx);
        tasks.push(tokio::spawn(run(swarm, i, cmds, arrive_tx.clone())));
    }
    drop(arrive_tx);
    let expect: Vec<usize> = (1..n).collect();
    // Warm-up: publish until one message reaches everyone (connections and subscriptions
    // are in place), then let the heartbeat build the mesh, as B1 does after converging.
    let setup_end = tokio::time::Instant::now() + SETUP_DEADLINE;
    let mut seq = 0u64;
    loop {
        seq += 1;
        let _ = cmd_txs[0].send(message(seq));
        let wait = (tokio::time::Instant::now() + Duration::from_millis(250)).min(setup_end);
        let got = collect_arrivals(&mut rx, n, &expect, seq, wait).await;
        if all_arrived(Instant::now(), &got, &expect).is_some() {
            break;
        }
        if tokio::time::Instant::now() >= setup_end {
            return Err("raw gossipsub mesh did not form".into());
        }
    }
    tokio::time::sleep(MESH_SETTLE).await;
    let mut rng = Rng::new(seed ^ (n as u64) << 8);
    let mut all = Samples::default();
    for t in 0..warmup + trials {
        tokio::time::sleep(rng.millis(5, 50)).await;
        seq += 1;
        let msg = message(seq);
        let t0 = Instant::now();
        cmd_txs[0]
            .send(msg)
            .map_err(|_| "gossipsub writer task ended")?;
        let deadline = tokio::time::Instant::now() + TRIAL_DEADLINE;
        let got = collect_arrivals(&mut rx, n, &expect, seq, deadline).await;
        if t < warmup {
            continue;
        }
        match all_arrived(t0, &got, &expect) {
            Some(d) => all.push(d),
            None => all.timeout(),
        }
    }
    drop(cmd_txs);
    for t in tasks {
        t.abort();
    }
    Ok(all)
}

/// Baseline (a) for N = 2, 8 (and 32 unless quick).
pub async fn raw_gossipsub(cfg: &Cfg, report: &mut Report) -> Value {
    let sizes: &[usize] = if cfg.quick { &[2, 8] } else { &[2, 8, 32] };
    let (trials, warmup) = if cfg.quick { (40, 5) } else { (300, 20) };
    let mut table = Table::new(
        format!(
            "Baseline (a) raw libp2p gossipsub 0.50 (TCP+noise+yamux, signed, 500 ms heartbeat), \
             {B1_PAYLOAD} B; ms from publish to delivered on every other node"
        ),
        &["N", "p50", "p90", "p99", "max", "trials", "timeouts"],
    );
    let mut out = Map::new();
    for &n in sizes {
        match one(n, trials, warmup, cfg.seed).await {
            Ok(s) => {
                let mut cells = vec![n.to_string()];
                cells.extend(s.cells());
                table.row(cells);
                report.figure(format!("gossipsub.n{n}.p50_ms"), s.p50());
                out.insert(format!("n{n}"), s.to_json(true));
            }
            Err(e) => {
                table.row(vec![n.to_string(), format!("error: {e}")]);
                out.insert(format!("n{n}"), json!({ "error": e }));
            }
        }
    }
    table.print();
    json!({"payload_bytes": B1_PAYLOAD, "trials": trials, "warmup": warmup, "results": out,
           "method": "same dial graph and trial spacing as B1; t0 just before the publish \
                      command is sent to the writer's swarm task; a receiver timestamps the \
                      gossipsub Message event; no validation hook, no peer scoring, \
                      no identify/ping/request-response"})
}

//! The scenarios and what they measure.

use std::time::Instant;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};

use crate::sim::{Micros, Observation, Sim, SimConfig};

/// A scripted run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Every node starts in the first seconds; then nothing happens.
    Steady,
    /// Half the nodes start, then the other half joins in one wave at a third of the run.
    JoinWave,
    /// 1 % of the nodes (at least one) are killed at half the run.
    Crash,
    /// 1 % of the nodes (at least one) are killed at a third of the run and restarted
    /// with the same identity 2 s later.
    Restart,
    /// The mesh is split in two random halves from a third to two thirds of the run.
    PartitionHeal,
    /// Every node drops 30 % of the gossip messages it receives, from the start.
    Loss,
    /// Node 0, the one every other node bootstraps from with the `star` topology (and the
    /// first bootstrap peer with the others), is killed at half the run.
    HubCrash,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 7] = [
        Scenario::Steady,
        Scenario::JoinWave,
        Scenario::Crash,
        Scenario::Restart,
        Scenario::PartitionHeal,
        Scenario::Loss,
        Scenario::HubCrash,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::JoinWave => "join-wave",
            Scenario::Crash => "crash",
            Scenario::Restart => "restart",
            Scenario::PartitionHeal => "partition-heal",
            Scenario::Loss => "loss",
            Scenario::HubCrash => "hub-crash",
        }
    }

    /// The scenario of a command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Percentiles of a list of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spread {
    /// How many.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Self {
            count: ms.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: ms[ms.len() - 1],
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: &'static str,
    /// Nodes.
    pub nodes: usize,
    /// Simulated seconds.
    pub seconds: f64,
    /// Per live node and second, in the second half of the run: messages sent.
    pub msgs_sent: f64,
    /// Bytes sent.
    pub bytes_sent: f64,
    /// Messages received (duplicates included).
    pub msgs_recv: f64,
    /// Bytes received.
    pub bytes_recv: f64,
    /// Distinct messages handed to the engine.
    pub delivered: f64,
    /// Distinct gossip messages handed to the engine.
    pub gossip: f64,
    /// Mean devices tracked per node at the end.
    pub devices_tracked: f64,
    /// Mean slices held per node at the end.
    pub slices_held: f64,
    /// Mean open connections per node at the end.
    pub connections: f64,
    /// Most open connections of one node at the end.
    pub max_connections: usize,
    /// From the last join to every live node holding every live device's slice.
    pub converge_after_join_ms: Option<f64>,
    /// From the crashes to each live node's removal of each crashed device.
    pub detection: Spread,
    /// Crashed-device removals that never happened by the end of the run.
    pub undetected: usize,
    /// Removals (timeout) of a device that was up and reachable from the remover.
    pub false_removals: usize,
    /// From the heal (or the restart) to convergence.
    pub converge_after_heal_ms: Option<f64>,
    /// Nodes still not converged at the end.
    pub lagging_at_end: usize,
    /// Engine inputs handled.
    pub steps: u64,
    /// Wall-clock time of the run.
    pub wall_ms: f64,
}

impl Outcome {
    /// The outcome as JSON (fixed key order: serde_json sorts map keys).
    pub fn json(&self) -> Value {
        let opt = |v: Option<f64>| v.map(|x| json!(round(x))).unwrap_or(Value::Null);
        json!({
            "scenario": self.scenario,
            "nodes": self.nodes,
            "seconds": self.seconds,
            "per_node_per_second": {
                "msgs_sent": round(self.msgs_sent),
                "bytes_sent": round(self.bytes_sent),
                "msgs_recv": round(self.msgs_recv),
                "bytes_recv": round(self.bytes_recv),
                "delivered": round(self.delivered),
                "gossip_delivered": round(self.gossip),
            },
            "state_per_node": {
                "devices_tracked": round(self.devices_tracked),
                "slices_held": round(self.slices_held),
                "connections": round(self.connections),
                "max_connections": self.max_connections,
            },
            "converge_after_join_ms": opt(self.converge_after_join_ms),
            "detection_ms": {
                "count": self.detection.count,
                "p50": round(self.detection.p50),
                "p99": round(self.detection.p99),
                "max": round(self.detection.max),
                "undetected": self.undetected,
            },
            "false_removals": self.false_removals,
            "converge_after_heal_ms": opt(self.converge_after_heal_ms),
            "lagging_at_end": self.lagging_at_end,
            "engine_steps": self.steps,
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// How often convergence is checked (the resolution of the convergence figures).
const POLL: Micros = 10_000;

/// Runs `scenario` for `seconds` of virtual time.
pub fn run(scenario: Scenario, cfg: SimConfig, seconds: f64) -> Outcome {
    let wall = Instant::now();
    let n = cfg.nodes;
    let seed = cfg.seed;
    let mut sim = Sim::new(cfg);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed);
    let end: Micros = (seconds * 1e6) as Micros;
    let third = end / 3;
    // Nodes start spread over a start window, in index order (so bootstrap peers are up).
    let window: Micros = (end / 10).min(2_000_000);
    let (first_wave, second_at) = match scenario {
        Scenario::JoinWave => (n.div_ceil(2), third),
        _ => (n, 0),
    };
    let mut actions: Vec<(Micros, Action)> = Vec::new();
    for i in 0..n {
        let (from, count, k) = if i < first_wave {
            (0, first_wave, i)
        } else {
            (second_at, n - first_wave, i - first_wave)
        };
        let at = from + window.min(1_000_000) * k as Micros / count.max(1) as Micros;
        actions.push((at, Action::Start(i)));
    }
    let victims: Vec<usize> = {
        let k = (n / 100).max(1).min(n.saturating_sub(1));
        let mut all: Vec<usize> = (1..n).collect();
        for i in (1..all.len()).rev() {
            let j = rng.random_range(0..=i);
            all.swap(i, j);
        }
        all.truncate(k);
        all
    };
    match scenario {
        Scenario::Crash => actions.push((end / 2, Action::Crash(victims.clone()))),
        Scenario::HubCrash => actions.push((end / 2, Action::Crash(vec![0]))),
        Scenario::Restart => {
            actions.push((third, Action::Crash(victims.clone())));
            actions.push((third + 2_000_000, Action::Restart(victims.clone())));
        }
        Scenario::PartitionHeal => {
            // With the `halves` topology the split follows the halves (each side stays
            // connected); otherwise it is a random split, which may leave nodes of one
            // side with no path to each other.
            let groups: Vec<u32> = if sim.cfg.topology == crate::sim::Topology::Halves {
                sim.halves()
            } else {
                (0..n).map(|_| rng.random_range(0..2u32)).collect()
            };
            actions.push((third, Action::Split(groups)));
            actions.push((2 * third, Action::Heal));
        }
        Scenario::Loss => sim.set_loss(0.3),
        _ => {}
    }
    actions.push((end / 2, Action::ResetTraffic));
    actions.sort_by_key(|(at, _)| *at);
    for (k, (at, _)) in actions.iter().enumerate() {
        sim.schedule_action(*at, k);
    }
    let last_join = actions
        .iter()
        .filter(|(_, a)| matches!(a, Action::Start(_)))
        .map(|(at, _)| *at)
        .max()
        .unwrap_or(0);

    let mut out = Outcome {
        scenario: scenario.name(),
        nodes: n,
        seconds,
        ..Outcome::default()
    };
    let mut crash_at: Option<(Micros, Vec<(usize, usize)>)> = None;
    let mut heal_at: Option<Micros> = None;
    let mut watching_join = true;
    let mut next_poll = last_join;
    loop {
        let until = if watching_join || heal_at.is_some() {
            next_poll.min(end)
        } else {
            end
        };
        match sim.run_until(until) {
            Some(k) => match &actions[k].1 {
                Action::Start(i) => sim.start_node(*i),
                Action::Crash(v) => {
                    // Who should notice: every live node that sees the victim online.
                    let mut pairs = Vec::new();
                    for &d in v {
                        let id = sim.id(d);
                        for o in 0..n {
                            if o != d
                                && !v.contains(&o)
                                && sim.engine(o).is_some_and(|e| e.is_online(&id))
                            {
                                pairs.push((o, d));
                            }
                        }
                    }
                    for &d in v {
                        sim.crash(d);
                    }
                    if matches!(scenario, Scenario::Crash | Scenario::HubCrash) {
                        crash_at = Some((sim.now(), pairs));
                    }
                }
                Action::Restart(v) => {
                    for &d in v {
                        sim.start_node(d);
                    }
                    heal_at = Some(sim.now());
                    next_poll = sim.now();
                }
                Action::Split(groups) => sim.partition(groups),
                Action::Heal => {
                    sim.heal();
                    heal_at = Some(sim.now());
                    next_poll = sim.now();
                }
                Action::ResetTraffic => sim.reset_traffic(),
            },
            None => {
                if sim.now() >= end {
                    break;
                }
                let now = sim.now();
                if watching_join && now >= last_join && sim.converged() {
                    out.converge_after_join_ms = Some((now - last_join) as f64 / 1e3);
                    watching_join = false;
                }
                if let Some(h) = heal_at {
                    if sim.converged() {
                        out.converge_after_heal_ms = Some((now - h) as f64 / 1e3);
                        heal_at = None;
                    }
                }
                next_poll = now + POLL;
            }
        }
    }

    // Detection and false removals.
    if let Some((t, pairs)) = &crash_at {
        let mut times = Vec::new();
        for &(o, d) in pairs {
            let first = sim.observations.iter().find_map(|ob| match ob {
                Observation::Removed {
                    at, node, device, ..
                } if *node == o && *device == d && *at >= *t => Some(*at),
                _ => None,
            });
            match first {
                Some(at) => times.push((at - t) as f64 / 1e3),
                None => out.undetected += 1,
            }
        }
        out.detection = Spread::of(times);
    }
    out.false_removals = sim.false_removals().len();

    let live: Vec<usize> = (0..n).filter(|&i| sim.is_up(i)).collect();
    let span = (sim.now() - sim.traffic_since).max(1) as f64 / 1e6;
    let per = |f: &dyn Fn(usize) -> u64| {
        live.iter().map(|&i| f(i) as f64).sum::<f64>() / live.len().max(1) as f64 / span
    };
    out.msgs_sent = per(&|i| sim.traffic(i).sent_msgs);
    out.bytes_sent = per(&|i| sim.traffic(i).sent_bytes);
    out.msgs_recv = per(&|i| sim.traffic(i).recv_msgs);
    out.bytes_recv = per(&|i| sim.traffic(i).recv_bytes);
    out.delivered = per(&|i| sim.traffic(i).delivered);
    out.gossip = per(&|i| sim.traffic(i).gossip);
    let mean = |f: &dyn Fn(usize) -> usize| {
        live.iter().map(|&i| f(i) as f64).sum::<f64>() / live.len().max(1) as f64
    };
    out.devices_tracked = mean(&|i| sim.engine(i).map_or(0, |e| e.state_size().0));
    out.slices_held = mean(&|i| sim.engine(i).map_or(0, |e| e.state_size().1));
    out.connections = mean(&|i| sim.connections(i));
    out.max_connections = live.iter().map(|&i| sim.connections(i)).max().unwrap_or(0);
    out.lagging_at_end = sim.lagging();
    out.steps = sim.steps;
    out.wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    out
}

enum Action {
    Start(usize),
    Crash(Vec<usize>),
    Restart(Vec<usize>),
    Split(Vec<u32>),
    Heal,
    ResetTraffic,
}

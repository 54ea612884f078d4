//! Watch liveness (neighbours watch, accuse, the accused refutes; anti-entropy by hash)
//! over 100+ simulated nodes: the same scripted faults as `scenarios.rs`, each asserting
//! detection, convergence and zero false removals, plus what only this scheme promises:
//! a cost per node that does not grow with the mesh, and accusations that cannot remove a
//! live device.

use truffle_actors::proto::{Liveness, ProtoConfig};
use truffle_sim::scenario::{run, Outcome, Scenario};
use truffle_sim::sim::{Micros, Sim, SimConfig, Topology};

const S: Micros = 1_000_000;

fn cfg(nodes: usize, seed: u64) -> SimConfig {
    let mut proto = ProtoConfig::default();
    proto.liveness = Liveness::Watch;
    SimConfig {
        nodes,
        seed,
        proto,
        ..SimConfig::default()
    }
}

fn assert_clean(out: &Outcome) {
    assert_eq!(out.false_removals, 0, "{out:?}");
    assert_eq!(out.lagging_at_end, 0, "{out:?}");
}

#[test]
fn a_join_wave_converges_and_an_idle_mesh_costs_the_same_per_node_at_64_and_512() {
    let out = run(Scenario::JoinWave, cfg(128, 21), 20.0);
    let ms = out
        .converge_after_join_ms
        .expect("converges after the wave");
    assert!(ms < 3_000.0, "took {ms} ms");
    assert_clean(&out);
    let small = run(Scenario::Steady, cfg(64, 22), 20.0);
    let large = run(Scenario::Steady, cfg(512, 22), 20.0);
    assert_clean(&small);
    assert_clean(&large);
    // Steady state: one digest exchange per node and period, whatever N.
    assert!(
        large.msgs_sent <= small.msgs_sent * 1.5 && large.bytes_sent <= small.bytes_sent * 1.5,
        "64 nodes: {} msg/s, {} B/s; 512 nodes: {} msg/s, {} B/s",
        small.msgs_sent,
        small.bytes_sent,
        large.msgs_sent,
        large.bytes_sent
    );
    assert!(large.msgs_sent < 10.0, "{} msg/s per node", large.msgs_sent);
}

#[test]
fn crashed_nodes_are_removed_everywhere_within_3_s_p50_and_5_s_max() {
    let out = run(Scenario::Crash, cfg(200, 23), 20.0);
    assert_eq!(out.undetected, 0, "{out:?}");
    assert!(out.detection.count >= 2 * 198, "{:?}", out.detection);
    assert!(out.detection.p50 <= 3_000.0, "{:?}", out.detection);
    assert!(out.detection.max <= 5_000.0, "{:?}", out.detection);
    assert_clean(&out);
}

#[test]
fn the_crash_of_the_node_everyone_bootstrapped_from_loses_nothing_else() {
    let cfg = SimConfig {
        topology: Topology::Star,
        ..cfg(128, 24)
    };
    let out = run(Scenario::HubCrash, cfg, 20.0);
    assert_eq!(out.undetected, 0);
    assert!(out.detection.count >= 127, "{:?}", out.detection);
    assert!(out.detection.max <= 5_000.0, "{:?}", out.detection);
    assert_clean(&out);
    // Views are trimmed above the bound (12 when these figures were taken, 10 since
    // 737dacb) at the next view check, and connections under 10 s old
    // are kept, so a connection a peer opened lately (an alert probe, after the crash)
    // can stand one above the bound for a while: with this seed, 13 at 20 s and 20.5 s
    // of the run, 12 at 19, 21, 22 and 25 s (2026-12-01).
    assert!(out.max_connections <= 13, "{}", out.max_connections);
}

#[test]
fn on_a_network_slower_than_the_timeouts_nothing_is_falsely_removed() {
    // One-way delays of 0.4 to 1.2 s: a dial takes 0.8 to 2.4 s, often past the probe
    // timeout (2 s), as handshakes do on a starved CPU. With fixed timeouts a 128-node
    // mesh from one seed (seed 1) removed 456 live devices during a join wave, and
    // 790 in a steady run; timeouts that stretch with the node's own dial times remove
    // none, and crashes are still detected.
    let slow = SimConfig {
        topology: Topology::Star,
        latency: std::time::Duration::from_millis(800),
        ..cfg(128, 25)
    };
    let out = run(Scenario::JoinWave, slow.clone(), 30.0);
    assert!(out.converge_after_join_ms.is_some(), "{out:?}");
    assert_clean(&out);
    let out = run(Scenario::Crash, slow, 30.0);
    assert_eq!(out.undetected, 0, "{out:?}");
    assert!(out.detection.count >= 127, "{:?}", out.detection);
    assert_clean(&out);
}

#[test]
fn a_restart_with_the_same_key_replaces_the_old_run_within_a_second() {
    let mut sim = Sim::new(cfg(120, 25));
    sim.start_all(10_000);
    let t = sim.now();
    assert!(sim.converge_by(t + 5 * S).is_some());
    let (victim, id) = (17, sim.id(17));
    sim.crash(victim);
    let t = sim.now() + 300_000;
    sim.run_until(t);
    sim.start_node(victim);
    let restarted = sim.now();
    let done = sim
        .converge_by(restarted + 5 * S)
        .expect("converges after the restart");
    assert!(done - restarted < S, "{} µs", done - restarted);
    for i in (0..sim.len()).filter(|&i| i != victim) {
        assert!(sim.engine(i).unwrap().is_online(&id), "node {i}");
    }
    assert!(
        sim.false_removals().is_empty(),
        "{:?}",
        sim.false_removals()
    );
}

/// `nodes` in two halves, converged, idle for `idle`, then split for 20 s: the simulator
/// and which half each node is in.
fn split_for_20_s(nodes: usize, seed: u64, idle: Micros) -> (Sim, Vec<u32>) {
    let mut sim = Sim::new(SimConfig {
        topology: Topology::Halves,
        ..cfg(nodes, seed)
    });
    sim.start_all(10_000);
    let t = sim.now();
    assert!(sim.converge_by(t + 5 * S).is_some());
    let t = sim.now() + idle;
    sim.run_until(t);
    let groups = sim.halves();
    sim.partition(&groups);
    let t = sim.now() + 20 * S;
    sim.run_until(t);
    (sim, groups)
}

/// Heals `sim` and asserts it converges within `within` with no live device removed.
fn heals_within(sim: &mut Sim, within: Micros) {
    sim.heal();
    let healed = sim.now();
    let done = sim
        .converge_by(healed + 30 * S)
        .expect("converges after the heal");
    assert!(done - healed < within, "{} µs", done - healed);
    for i in 0..sim.len() {
        let e = sim.engine(i).unwrap();
        assert_eq!(e.online_count(), sim.len() - 1, "node {i}");
    }
    assert!(
        sim.false_removals().is_empty(),
        "{:?}",
        sim.false_removals()
    );
}

#[test]
fn each_side_of_a_partition_removes_the_other_and_all_converge_within_3_s_of_the_heal() {
    let (mut sim, groups) = split_for_20_s(128, 26, 0);
    let across = sim.views_across(&groups);
    assert!(across.is_empty(), "(node, about node): {across:?}");
    heals_within(&mut sim, 3 * S);
}

#[test]
fn a_partition_of_a_mesh_idle_for_longer_than_the_forget_window_heals() {
    // Watch liveness announces only on change, so after a minute of quiet every member's
    // last heartbeat is over a minute old. A member removed by the partition must still be
    // remembered (its address with it) long enough for the two sides to dial each other
    // after the heal.
    let (mut sim, _) = split_for_20_s(64, 27, 90 * S);
    heals_within(&mut sim, 5 * S);
}

#[test]
fn with_30_percent_loss_at_default_settings_nothing_is_falsely_removed() {
    let mut sim = Sim::new(SimConfig {
        loss: 0.3,
        ..cfg(128, 27)
    });
    sim.start_all(10_000);
    let t = sim.now();
    assert!(
        sim.converge_by(t + 15 * S).is_some(),
        "lagging: {}",
        sim.lagging()
    );
    let t = sim.now() + 15 * S;
    sim.run_until(t);
    assert!(sim.converged(), "lagging: {}", sim.lagging());
    assert!(
        sim.false_removals().is_empty(),
        "{:?}",
        sim.false_removals()
    );
}

#[test]
fn a_lying_accuser_cannot_remove_a_live_device() {
    let mut sim = Sim::new(cfg(100, 28));
    sim.start_all(10_000);
    let t = sim.now();
    assert!(sim.converge_by(t + 5 * S).is_some());
    // Node 3 accuses node 40 ten times a second for five seconds.
    for _ in 0..50 {
        sim.accuse(3, 40);
        let t = sim.now() + 100_000;
        sim.run_until(t);
    }
    let t = sim.now() + 5 * S;
    sim.run_until(t);
    let id = sim.id(40);
    for i in (0..sim.len()).filter(|&i| i != 40) {
        assert!(sim.engine(i).unwrap().is_online(&id), "node {i}");
    }
    assert!(sim.observations.is_empty(), "{:?}", sim.observations);
}

#[test]
fn a_live_device_some_nodes_cannot_reach_directly_stays_visible_through_the_others() {
    let mut sim = Sim::new(cfg(100, 29));
    sim.start_all(10_000);
    let t = sim.now();
    assert!(sim.converge_by(t + 5 * S).is_some());
    // Node 50 loses its direct link to every node below 30 (and they to it).
    for i in 0..30 {
        sim.set_link(i, 50, false);
    }
    let t = sim.now() + 15 * S;
    sim.run_until(t);
    let id = sim.id(50);
    for i in (0..sim.len()).filter(|&i| i != 50) {
        assert!(sim.engine(i).unwrap().is_online(&id), "node {i}");
    }
    assert!(sim.converged(), "lagging: {}", sim.lagging());
    assert!(sim.observations.is_empty(), "{:?}", sim.observations);
}

#[test]
fn the_same_seed_gives_the_same_output_byte_for_byte() {
    let a = run(Scenario::PartitionHeal, cfg(40, 99), 12.0)
        .json()
        .to_string();
    let b = run(Scenario::PartitionHeal, cfg(40, 99), 12.0)
        .json()
        .to_string();
    let c = run(Scenario::PartitionHeal, cfg(40, 100), 12.0)
        .json()
        .to_string();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn a_small_mesh_split_at_random_heals_while_anti_entropy_is_backed_off() {
    // 16 nodes idle long enough for anti-entropy to back off, split at random (some nodes
    // keep no connection to their own side), healed 10 s later. With the back-off also
    // during the partition, 7 nodes still lacked slices 10 s after the heal (seed 1).
    // Seeds 3, 7 and 11 did not converge until 2026-12-01: a node that had every member it
    // lost back before it compared with one that had removed it never announced itself
    // again (the rule asked for members still missing, not members lost lately).
    for seed in 1..=40 {
        let o: Outcome = run(
            Scenario::PartitionHeal,
            SimConfig {
                topology: Topology::Random3,
                ..cfg(16, seed)
            },
            30.0,
        );
        assert!(
            o.converge_after_heal_ms.is_some_and(|ms| ms <= 5_000.0),
            "seed {seed}: converged {:?} ms after the heal, {} lagging",
            o.converge_after_heal_ms,
            o.lagging_at_end
        );
    }
}

//! A real network partition between todo processes in Linux network namespaces that this
//! test creates: five hosts on two bridges joined by one link; taking that link down
//! splits them 2 | 3, bringing it up heals. Once with every host given every earlier
//! host's address, once the way most users start a mesh: every host given host 1's
//! address only, so the hosts cut off from it must have found each other on their own.
//!
//! Needs root and `ip` (iproute2). Without them it prints why it is skipped.
//! Repeat for timing figures: `TRUFFLE_NETNS_RUNS=5 cargo test -p truffle-examples --test netns_partition -- --nocapture`

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ip, netns_skip_reason as skip_reason, Device};
use serde_json::Value;

const NODES: usize = 5;
/// Nodes 0 and 1 sit on bridge A, nodes 2, 3 and 4 on bridge B.
const SIDE_A: usize = 2;
const HEAL_DEADLINE: Duration = Duration::from_secs(5);

/// The namespaces of one run; deleted (with their links) on drop.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn create(run: usize, tag: &str) -> Net {
        let net = Net {
            prefix: format!("trf{}{tag}r{run}", std::process::id()),
        };
        let br = net.ns("br");
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        for b in ["bra", "brb"] {
            ip(&["-n", &br, "link", "add", b, "type", "bridge"]);
            ip(&["-n", &br, "link", "set", b, "up"]);
        }
        // The link between the two bridges: the partition switch.
        ip(&[
            "-n", &br, "link", "add", "la", "type", "veth", "peer", "name", "lb",
        ]);
        ip(&["-n", &br, "link", "set", "la", "master", "bra"]);
        ip(&["-n", &br, "link", "set", "lb", "master", "brb"]);
        for i in 0..NODES {
            let ns = net.ns(&format!("n{i}"));
            let port = format!("p{i}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.99.0.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let bridge = if i < SIDE_A { "bra" } else { "brb" };
            ip(&["-n", &br, "link", "set", &port, "master", bridge]);
            ip(&["-n", &br, "link", "set", &port, "up"]);
        }
        net.set_link(true);
        net
    }

    /// Whether host `i` has an established TCP connection with host `j` (either way).
    fn connected(&self, i: usize, j: usize) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(&format!("n{i}"))])
            .args(["ss", "-Htn", "state", "established"])
            .output()
            .expect("run ss");
        let peer = format!("10.99.0.{}:", j + 1);
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            // Columns: Recv-Q Send-Q Local:Port Peer:Port
            l.split_whitespace()
                .nth(3)
                .is_some_and(|p| p.starts_with(&peer))
        })
    }

    fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        for end in ["la", "lb"] {
            ip(&["-n", &self.ns("br"), "link", "set", end, state]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in (0..NODES)
            .map(|i| format!("n{i}"))
            .chain(["br".to_string()])
        {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(&name)])
                .status();
        }
    }
}

fn items_of(state: &Value, device: &str) -> Option<Vec<String>> {
    state["devices"].get(device).map(|d| {
        d["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["text"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// One partition-and-heal run; returns each node's heal-to-convergence time. With
/// `one_seed`, every node bootstraps from node 0 only.
fn run_once(run: usize, dir: &std::path::Path, one_seed: bool) -> Vec<Duration> {
    let net = Net::create(run, if one_seed { "s" } else { "a" });
    let mut nodes: Vec<Device> = Vec::new();
    for i in 0..NODES {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.ns(&format!("n{i}"))])
            .arg(env!("CARGO_BIN_EXE_truffle-todo"));
        let key: PathBuf = dir.join(format!("r{run}n{i}.key"));
        let peers: Vec<String> = match one_seed {
            true => nodes.iter().take(1).map(|d| d.listen[0].clone()).collect(),
            false => nodes.iter().map(|d| d.listen[0].clone()).collect(),
        };
        let listen = format!("/ip4/10.99.0.{}/tcp/4001", i + 1);
        nodes.push(Device::start_with(
            cmd,
            &format!("n{i}"),
            &key,
            &listen,
            &peers,
        ));
    }
    let ids: Vec<String> = nodes.iter().map(|d| d.id.clone()).collect();

    // Everyone writes and sees everyone.
    for (i, d) in nodes.iter_mut().enumerate() {
        d.send(&format!("add before n{i}"));
    }
    for d in &nodes {
        d.wait_for("all five before the partition", |v| {
            v["event"] == "state"
                && ids
                    .iter()
                    .enumerate()
                    .all(|(i, id)| items_of(v, id).is_some_and(|it| it == [format!("before n{i}")]))
        });
    }

    // A mesh that has been up a moment: every host holds a connection to every other one
    // on its side of the coming cut (with one seed, made by the hosts themselves).
    let start = Instant::now();
    while !(0..NODES).all(|i| {
        (0..NODES)
            .filter(|&j| j != i && (j < SIDE_A) == (i < SIDE_A))
            .all(|j| net.connected(i, j))
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "run {run}: hosts did not connect to their neighbours within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Split 2 | 3 and wait until each side has removed the other (the cut is real).
    net.set_link(false);
    for (i, d) in nodes.iter().enumerate() {
        let other: Vec<&String> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| (*j < SIDE_A) != (i < SIDE_A))
            .map(|(_, id)| id)
            .collect();
        d.wait_for("the other side removed", |v| {
            v["event"] == "state"
                && other
                    .iter()
                    .all(|id| v["devices"].get(id.as_str()).is_none())
        });
    }
    // Both sides write while cut off.
    for (i, d) in nodes.iter_mut().enumerate() {
        d.send(&format!("add during n{i}"));
    }
    // Each side stays whole: every node sees the writes of its whole side.
    for (i, d) in nodes.iter().enumerate() {
        let side: Vec<(usize, &String)> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| (*j < SIDE_A) == (i < SIDE_A))
            .collect();
        d.wait_for("every write of its own side during the partition", |v| {
            side.iter().all(|(j, id)| {
                items_of(v, id)
                    .is_some_and(|it| it == [format!("before n{j}"), format!("during n{j}")])
            })
        });
    }

    // Heal, write nothing, and time convergence.
    net.set_link(true);
    let healed = Instant::now();
    let want = |i: usize| vec![format!("before n{i}"), format!("during n{i}")];
    let mut times = Vec::new();
    for (k, d) in nodes.iter().enumerate() {
        let done = d.wait_until(healed + HEAL_DEADLINE, |v| {
            v["event"] == "state"
                && ids
                    .iter()
                    .enumerate()
                    .all(|(i, id)| items_of(v, id).is_some_and(|it| it == want(i)))
        });
        let Some((at, _)) = done else {
            panic!("run {run}: n{k} did not converge within {HEAL_DEADLINE:?} of the heal");
        };
        times.push(at.duration_since(healed));
    }
    for d in nodes {
        d.quit();
    }
    times
}

#[test]
fn partition_2_3_heals_and_converges_within_5s() {
    partition_runs("partition_2_3_heals_and_converges_within_5s", false);
}

#[test]
fn a_mesh_bootstrapped_from_one_host_stays_whole_on_each_side_and_heals_within_5s() {
    partition_runs(
        "a_mesh_bootstrapped_from_one_host_stays_whole_on_each_side_and_heals_within_5s",
        true,
    );
}

fn partition_runs(name: &str, one_seed: bool) {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED {name}: {why}");
        return;
    }
    let runs: usize = std::env::var("TRUFFLE_NETNS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for run in 0..runs {
        let times = run_once(run, dir.path(), one_seed);
        let worst = times.iter().max().unwrap();
        eprintln!(
            "run {run}: heal to convergence per node (ms): {:?}, worst {} ms",
            times.iter().map(|t| t.as_millis()).collect::<Vec<_>>(),
            worst.as_millis()
        );
        all.push(*worst);
    }
    all.sort();
    eprintln!(
        "{name}: heal-to-convergence over {runs} run(s) (slowest node per run): median {} ms, worst {} ms",
        all[all.len() / 2].as_millis(),
        all.last().unwrap().as_millis()
    );
}

//! `truffle-idle-node`: the footprint scenario's lean child process. One node (loopback, no
//! mDNS) joins one store and idles ~2 s, then prints `key=value` lines with its memory
//! figures. It links only what a small application would (truffle-actors and tokio), so
//! its RSS is the node's, not the benchmark harness's (the `truffle-bench` binary also
//! carries chitchat, the baselines and the report code, and its code pages count too).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use truffle_actors::prelude::*;

/// The benchmark's store shape.
#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "bench")]
struct Payload {
    seq: u64,
    data: String,
}

/// A field of /proc/self/status, in kB.
fn status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time used by this process so far (user + system), in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let before = status_kb("VmRSS").unwrap_or(0);
    let r = rt.block_on(async {
        let node = MeshNode::builder()
            .name("idle")
            .listen("/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"))
            .mdns(false)
            .start()
            .await
            .map_err(|e| e.to_string())?;
        let _store = node.store::<Payload>().await.map_err(|e| e.to_string())?;
        let t0 = cpu_ticks();
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("rss_before_node_kb={before}");
        if let (Some(a), Some(b)) = (t0, cpu_ticks()) {
            // Clock ticks are 1/100 s on Linux: ticks over 2 s, in thousandths of a core.
            println!("idle_cpu_permille={}", (b - a) * 10 / 2);
        }
        for (key, name) in [
            ("VmRSS", "vmrss_kb"),
            ("VmHWM", "vmhwm_kb"),
            ("RssAnon", "rss_anon_kb"),
            ("RssFile", "rss_file_kb"),
            ("Threads", "threads"),
        ] {
            println!("{name}={}", status_kb(key).unwrap_or(0));
        }
        Ok::<_, String>(node)
    });
    match r {
        Ok(node) => drop(node),
        Err(e) => {
            eprintln!("idle node failed: {e}");
            std::process::exit(1);
        }
    }
}

//! The idle node the footprint scenario measures, shared by the lean `truffle-idle-node`
//! binary and the `truffle-bench idle-node` fallback: one node (loopback, no mDNS) joins
//! one store and idles ~2 s, then prints `key=value` lines with its memory figures.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use truffle_actors::prelude::*;

use crate::sys;

/// The benchmark's store shape.
#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "bench")]
struct Payload {
    seq: u64,
    data: String,
}

/// Runs the idle node and prints its figures; the process exit status.
pub fn run() -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return 1;
        }
    };
    let before = sys::rss_kb().unwrap_or(0);
    let r = rt.block_on(async {
        let node = MeshNode::builder()
            .name("idle")
            .listen("/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"))
            .mdns(false)
            .start()
            .await
            .map_err(|e| e.to_string())?;
        let _store = node.store::<Payload>().await.map_err(|e| e.to_string())?;
        let cpu = sys::cpu_share_over(Duration::from_secs(2)).await;
        println!("rss_before_node_kb={before}");
        println!(
            "idle_cpu_permille={}",
            cpu.map_or(0, |c| (c * 1000.0).round() as u64)
        );
        for (key, name) in [
            ("VmRSS", "vmrss_kb"),
            ("VmHWM", "vmhwm_kb"),
            ("RssAnon", "rss_anon_kb"),
            ("RssFile", "rss_file_kb"),
            ("Threads", "threads"),
        ] {
            println!("{name}={}", sys::proc_status_kb(key).unwrap_or(0));
        }
        Ok::<_, String>(node)
    });
    match r {
        Ok(node) => {
            drop(node);
            0
        }
        Err(e) => {
            eprintln!("idle node failed: {e}");
            1
        }
    }
}

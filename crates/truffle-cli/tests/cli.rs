//! The `truffle` binary against real nodes on loopback: `status` (text and JSON) and
//! `watch` (one line per event, filtered by store), and its errors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use truffle_actors::prelude::*;

const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "jobs")]
struct Jobs {
    running: Vec<String>,
}

#[derive(Syncable, Clone, Debug, Default, Serialize, Deserialize)]
#[syncable(id = "other")]
struct Other {
    n: u64,
}

fn truffle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_truffle"))
}

async fn node(name: &str, seed: Option<truffle_actors::Multiaddr>, admin: bool) -> MeshNode {
    let mut b = MeshNode::builder()
        .name(name)
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .mdns(false);
    if let Some(s) = seed {
        b = b.bootstrap(s);
    }
    if admin {
        b = b.admin("127.0.0.1:0".parse().unwrap());
    }
    b.start().await.unwrap()
}

/// Runs the CLI to completion off the async runtime.
async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || truffle().args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_watch_against_a_live_node() {
    let a = node("alice", None, true).await;
    let url = format!("http://{}", a.admin_addr().unwrap());
    let jobs_a = a.store::<Jobs>().await.unwrap();
    let _other_a = a.store::<Other>().await.unwrap();

    // `watch --json --store jobs` from before bob exists.
    let mut watch = truffle()
        .args(["watch", "--admin", &url, "--store", "jobs", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel::<Value>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let wait_line = |what: &str, f: &dyn Fn(&Value) -> bool| {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(v) if f(&v) => return v,
                Ok(v) => assert!(
                    v["event"] == "subscribed" || v.get("store").is_some_and(|s| s == "jobs"),
                    "--store jobs lets only jobs' slice events through: {v}"
                ),
                Err(_) => panic!("no {what} line from truffle watch"),
            }
        }
    };
    wait_line("subscribed", &|v| v["event"] == "subscribed");

    let b = node("bob", Some(a.listen_addrs()[0].clone()), false).await;
    let jobs_b = b.store::<Jobs>().await.unwrap();
    let other_b = b.store::<Other>().await.unwrap();
    other_b.update(|o| o.n = 1).await.unwrap();
    jobs_b
        .update(|j| j.running.push("backup".into()))
        .await
        .unwrap();
    let bob = b.device_id().to_string();
    let line = wait_line("bob's jobs slice", &|v| {
        v["event"] == "slice_updated"
            && v["device_id"] == bob.as_str()
            && v["version"]["counter"] == 1
    });
    assert_eq!(line["store"], "jobs");
    let b_id = b.device_id();
    jobs_a
        .wait_until(DEADLINE, |s| {
            s.get(&b_id).is_some_and(|x| !x.data.running.is_empty())
        })
        .await
        .unwrap();

    // Bob's name comes with his first presence message.
    let end = Instant::now() + DEADLINE;
    while !a.peers().iter().any(|p| p.name.as_deref() == Some("bob")) {
        assert!(Instant::now() < end, "bob's name never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `status --json`: node, peers and stores in one object.
    let out = run(vec![
        "status".into(),
        "--admin".into(),
        url.clone(),
        "--json".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node"]["name"], "alice");
    assert_eq!(v["peers"][0]["device_id"], bob.as_str());
    assert_eq!(v["peers"][0]["name"], "bob");
    let ids: Vec<&str> = v["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["jobs", "other"]);

    // The text form names the peer, its state and the slices it holds.
    let out = run(vec!["status".into(), "--admin".into(), url.clone()]).await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("node alice"), "{text}");
    assert!(text.contains("bob") && text.contains("online"), "{text}");
    assert!(text.contains("jobs@"), "{text}");

    // Bob leaves: the watch reports his slice removed.
    b.shutdown().await.unwrap();
    wait_line("bob's slice removed", &|v| {
        v["event"] == "slice_removed" && v["device_id"] == bob.as_str() && v["reason"] == "left"
    });

    // The node stops: the watch ends by itself, successfully.
    a.shutdown().await.unwrap();
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "watch did not end with the node");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_is_wrong() {
    let out = run(vec![
        "status".into(),
        "--admin".into(),
        "http://127.0.0.1".into(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no port"));

    // Nothing listens there (a port just released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(vec![
        "status".into(),
        "--admin".into(),
        format!("http://127.0.0.1:{port}"),
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect") && err.contains("admin endpoint"),
        "{err}"
    );

    // A store the node has not joined.
    let a = node("alice", None, true).await;
    let url = format!("http://{}", a.admin_addr().unwrap());
    let out = run(vec![
        "watch".into(),
        "--admin".into(),
        url,
        "--store".into(),
        "nope".into(),
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has not joined store `nope`"), "{err}");
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_prints_every_slice_without_joining_the_store() {
    let a = node("alice", None, false).await;
    let jobs_a = a.store::<Jobs>().await.unwrap();
    jobs_a
        .update(|j| j.running.push("render".into()))
        .await
        .unwrap();
    let addr = a.listen_addrs()[0].to_string();
    let mut peek = truffle()
        .args([
            "peek", "--peer", &addr, "--store", "jobs", "--json", "--for", "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel::<Value>();
    let stdout = peek.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let alice = a.device_id().to_string();
    let wait_state = |what: &str, f: &dyn Fn(&Value) -> bool| {
        let end = Instant::now() + DEADLINE;
        loop {
            match lines.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(v) if v["event"] == "state" && f(&v) => return v,
                Ok(_) => {}
                Err(_) => panic!("no {what} line from truffle peek"),
            }
        }
    };
    let v = wait_state("alice's slice", &|v| {
        v["slices"][alice.as_str()]["data"]["running"][0] == "render"
    });
    assert_eq!(v["store"], "jobs");
    assert_eq!(
        v["slices"].as_object().unwrap().len(),
        1,
        "no slice of its own: {v}"
    );

    // A later write shows up live; alice never holds a slice of the observer.
    jobs_a
        .update(|j| j.running.push("encode".into()))
        .await
        .unwrap();
    wait_state("alice's second job", &|v| {
        v["slices"][alice.as_str()]["data"]["running"][1] == "encode"
    });
    assert_eq!(jobs_a.snapshot().len(), 1);
    let end = Instant::now() + DEADLINE;
    let observer = loop {
        if let Some(p) = a
            .peers()
            .into_iter()
            .find(|p| p.name.as_deref() == Some("truffle-peek"))
        {
            break p;
        }
        assert!(Instant::now() < end, "alice never heard of the observer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(observer.stores.is_empty(), "{observer:?}");

    // SIGTERM: it leaves gracefully and exits 0.
    let pid = peek.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = peek.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "peek did not stop at SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    a.shutdown().await.unwrap();
}

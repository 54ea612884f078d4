//! The todo example as separate processes talking over loopback, driven through its
//! `--json` interface: the contract scripts rely on.

mod common;

use std::time::{Duration, Instant};

use common::Device;

#[test]
fn two_processes_sync_leave_and_restart_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let alice_key = dir.path().join("alice.key");
    let mut alice = Device::start("alice", &alice_key, &[]);
    let mut bob = Device::start("bob", &dir.path().join("bob.key"), &alice.listen);

    alice.send("add buy milk");
    let state = bob.wait_items(&alice.id, &["buy milk"]);
    assert_eq!(state["devices"][&alice.id]["name"], "alice");
    assert_eq!(state["devices"][&alice.id]["items"][0]["done"], false);

    bob.send("add walk the dog");
    bob.send("done 1");
    let state = alice.wait_for("bob's item done", |v| {
        v["event"] == "state" && v["devices"][&bob.id]["items"][0]["done"] == true
    });
    assert_eq!(state["devices"][&bob.id]["name"], "bob");
    // Every state line lists the node itself too.
    assert_eq!(state["devices"][&alice.id]["items"][0]["text"], "buy milk");

    // `list` prints the current state as a JSON line.
    alice.send("list");
    alice.wait_for("list output", |v| v["event"] == "state");

    // Graceful leave (EOF), seen by bob as a removal.
    let alice_id = alice.id.clone();
    alice.quit();
    bob.wait_gone(&alice_id);

    // A new process with the same key file is the same device, accepted again at once
    // even though its write counter starts over.
    let mut alice2 = Device::start("alice", &alice_key, &bob.listen);
    assert_eq!(alice2.id, alice_id);
    alice2.send("add after restart");
    bob.wait_items(&alice_id, &["after restart"]);
    alice2.wait_items(&bob.id, &["walk the dog"]);

    alice2.quit();
    bob.quit();
}

#[test]
fn a_killed_process_is_removed_after_the_timeout_and_accepted_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let alice_key = dir.path().join("alice.key");
    let mut alice = Device::start("alice", &alice_key, &[]);
    let bob = Device::start("bob", &dir.path().join("bob.key"), &alice.listen);
    alice.send("add before the crash");
    bob.wait_items(&alice.id, &["before the crash"]);

    let alice_id = alice.id.clone();
    let killed = Instant::now();
    alice.kill();
    bob.wait_gone(&alice_id);
    let detection = killed.elapsed();
    eprintln!(
        "kill -9 detected by the peer after {} ms",
        detection.as_millis()
    );
    // At defaults (500 ms presence, 2.5 s timeout) removal is never before ~2 s.
    assert!(
        detection >= Duration::from_millis(1900),
        "removed too early: {detection:?}"
    );

    let mut alice2 = Device::start("alice", &alice_key, &bob.listen);
    assert_eq!(alice2.id, alice_id);
    alice2.send("add after the crash");
    bob.wait_items(&alice_id, &["after the crash"]);
    alice2.quit();
    bob.quit();
}

/// The port of a loopback listen address such as `/ip4/127.0.0.1/tcp/PORT/p2p/ID`.
fn port_of(listen: &str) -> String {
    let parts: Vec<&str> = listen.split('/').collect();
    let at = parts
        .iter()
        .position(|p| *p == "tcp")
        .expect("a tcp address");
    parts[at + 1].to_string()
}

/// Whether processes `a` and `b` hold an established TCP connection between them (one
/// dialled the other's listen port), from `ss`; `None` when `ss` cannot tell.
fn linked(a: &Device, b: &Device) -> Option<bool> {
    let out = std::process::Command::new("ss")
        .args(["-Htnp", "state", "established"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let dialled = |from: &Device, to: &Device| {
        let pid = format!("pid={},", from.pid());
        let peer = format!("127.0.0.1:{}", port_of(&to.listen[0]));
        text.lines()
            .any(|l| l.contains(&pid) && l.split_whitespace().nth(3).is_some_and(|p| p == peer))
    };
    Some(dialled(a, b) || dialled(b, a))
}

#[test]
fn processes_started_from_one_seed_outlive_its_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Device::start("hub", &dir.path().join("hub.key"), &[]);
    let mut nodes: Vec<Device> = (1..=4)
        .map(|i| {
            let key = dir.path().join(format!("n{i}.key"));
            Device::start(&format!("n{i}"), &key, &hub.listen)
        })
        .collect();
    for (i, d) in nodes.iter_mut().enumerate() {
        d.send(&format!("add from n{}", i + 1));
    }
    let ids: Vec<String> = nodes.iter().map(|d| d.id.clone()).collect();
    for d in &nodes {
        d.wait_for("every node's item", |v| {
            v["event"] == "state"
                && ids.iter().all(|id| {
                    v["devices"][id]["items"]
                        .as_array()
                        .is_some_and(|a| a.len() == 1)
                })
        });
    }
    // The survivors-to-be have connected to each other on their own (from the addresses
    // in each other's presence), not only to the seed.
    let start = Instant::now();
    loop {
        let pairs: Option<Vec<bool>> = (0..nodes.len())
            .flat_map(|i| (i + 1..nodes.len()).map(move |j| (i, j)))
            .map(|(i, j)| linked(&nodes[i], &nodes[j]))
            .collect();
        match pairs {
            None => {
                eprintln!("SKIPPED the view check: `ss -tnp` is not available");
                break;
            }
            Some(p) if p.iter().all(|x| *x) => break,
            Some(_) => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the nodes did not connect to each other within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let hub_id = hub.id.clone();
    hub.kill();
    for d in &nodes {
        // Every state line from here on holds every survivor: none is lost, ever.
        d.wait_for("the seed removed", |v| {
            if v["event"] == "state" {
                for id in &ids {
                    assert!(v["devices"].get(id).is_some(), "a survivor lost {id}: {v}");
                }
            }
            v["event"] == "state" && v["devices"].get(&hub_id).is_none()
        });
    }
    nodes[0].send("add after the seed died");
    for d in &nodes[1..] {
        d.wait_for("the write after the kill", |v| {
            if v["event"] == "state" {
                for id in &ids {
                    assert!(v["devices"].get(id).is_some(), "a survivor lost {id}: {v}");
                }
            }
            v["event"] == "state"
                && v["devices"][&ids[0]]["items"]
                    .as_array()
                    .is_some_and(|a| a.len() == 2)
        });
    }
    for d in nodes {
        d.quit();
    }
}

/// `--admin HOST:0` serves the admin endpoint on a free port, and the `ready` line says
/// where (the other fields unchanged).
#[test]
fn the_admin_flag_serves_the_endpoint_and_the_ready_line_says_where() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_truffle-todo"));
    cmd.args(["--admin", "127.0.0.1:0"]);
    let mut alice = Device::start_with(
        cmd,
        "alice",
        &dir.path().join("alice.key"),
        "/ip4/127.0.0.1/tcp/0",
        &[],
    );
    let admin = alice.admin.clone().expect("ready has an admin field");
    let hostport = admin.strip_prefix("http://").expect("an http URL");
    assert!(hostport.starts_with("127.0.0.1:"), "{admin}");
    assert_ne!(
        hostport, "127.0.0.1:0",
        "the bound port, not the one asked for"
    );
    alice.send("add look inside");
    alice.wait_items(&alice.id.clone(), &["look inside"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let mut s = std::net::TcpStream::connect(hostport).unwrap();
        write!(
            s,
            "GET /api/stores/todos HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        if text.contains("look inside") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains("\"name\":\"alice\""), "{body}");
    assert!(body.contains("look inside"), "{body}");
    alice.quit();
}

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

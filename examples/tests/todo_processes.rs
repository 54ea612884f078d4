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

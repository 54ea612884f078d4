//! The todo example with `--data-dir`, as real processes: the list survives `quit`,
//! Ctrl-C and `kill -9` mid-burst; a second process on the same directory and a damaged
//! data file are refused with a message naming the file.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::Device;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_truffle-todo");

fn start(name: &str, key: &Path, data: &Path, peers: &[String]) -> Device {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir").arg(data);
    Device::start_with(cmd, name, key, "/ip4/127.0.0.1/tcp/0", peers)
}

/// `(text, done)` of one device's items in a state line.
fn items_of(state: &Value, device: &str) -> Vec<(String, bool)> {
    state["devices"][device]["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["text"].as_str().unwrap_or("").to_string(),
                        i["done"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// This process's own list, as `list` prints it.
fn own_items(d: &mut Device) -> Vec<(String, bool)> {
    d.send("list");
    let state = d.wait_for("a state line", |v| v["event"] == "state");
    items_of(&state, &d.id)
}

/// Waits until the process reports that write number `counter` of this run is on disk.
fn wait_persisted(d: &Device, counter: u64) {
    d.wait_for(&format!("persisted counter {counter}"), |v| {
        v["event"] == "persisted" && v["counter"].as_u64().is_some_and(|c| c >= counter)
    });
}

fn item(text: &str, done: bool) -> (String, bool) {
    (text.to_string(), done)
}

#[test]
fn items_and_done_flags_survive_quit_and_ctrl_c_and_peers_never_see_an_empty_list() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("alice.key");
    let data = dir.path().join("alice-data");
    let bob = Device::start("bob", &dir.path().join("bob.key"), &[]);
    let mut alice = start("alice", &key, &data, &bob.listen);
    let alice_id = alice.id.clone();
    alice.send("add buy milk");
    alice.send("add walk the dog");
    alice.send("done 2");
    bob.wait_for("alice's second item done", |v| {
        v["event"] == "state" && v["devices"][&alice_id]["items"][1]["done"] == true
    });

    // quit: a graceful leave, then a restart.
    alice.quit();
    bob.wait_gone(&alice_id);
    let mut alice = start("alice", &key, &data, &bob.listen);
    assert_eq!(alice.id, alice_id);
    let want = vec![item("buy milk", false), item("walk the dog", true)];
    assert_eq!(own_items(&mut alice), want);
    // The first time bob sees the restarted alice, her list is already the saved one.
    let first = bob.wait_for("alice back", |v| {
        v["event"] == "state" && v["devices"].get(&alice_id).is_some()
    });
    assert_eq!(items_of(&first, &alice_id), want, "{first}");

    // Ctrl-C once the write is on disk (write 1 of this run is the name, 2 the add).
    alice.send("add call mum");
    wait_persisted(&alice, 2);
    let status = alice.interrupt();
    eprintln!("todo exited on Ctrl-C with {status}");
    let mut alice = start("alice", &key, &data, &bob.listen);
    assert_eq!(
        own_items(&mut alice),
        vec![
            item("buy milk", false),
            item("walk the dog", true),
            item("call mum", false)
        ]
    );
    bob.wait_for("bob sees all three", |v| {
        v["event"] == "state" && items_of(v, &alice_id).len() == 3
    });
    alice.quit();
    bob.quit();
}

/// The commands of the burst: `add item-i`, and every third item marked done right away.
fn burst(n: usize) -> Vec<String> {
    let mut cmds = Vec::new();
    for i in 0..n {
        cmds.push(format!("add item-{i}"));
        if i % 3 == 0 {
            cmds.push(format!("done {}", i + 1));
        }
    }
    cmds
}

/// The list after the first `k` commands of `cmds`.
fn after(cmds: &[String], k: usize) -> Vec<(String, bool)> {
    let mut items: Vec<(String, bool)> = Vec::new();
    for c in &cmds[..k] {
        if let Some(text) = c.strip_prefix("add ") {
            items.push(item(text, false));
        } else if let Some(n) = c.strip_prefix("done ") {
            items[n.parse::<usize>().unwrap() - 1].1 = true;
        }
    }
    items
}

#[test]
fn a_kill_9_mid_burst_restores_a_state_that_was_written() {
    let cmds = burst(400);
    for (round, kill_after_items) in [10usize, 120, 250].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        let data = dir.path().join("data");
        let mut d = start("crashy", &key, &data, &[]);
        for c in &cmds {
            d.send(c);
        }
        let id = d.id.clone();
        // Kill while the burst is being applied.
        let mut durable = 0;
        d.wait_for(&format!("{kill_after_items} items"), |v| {
            if v["event"] == "persisted" {
                durable = durable.max(v["counter"].as_u64().unwrap());
            }
            v["event"] == "state" && items_of(v, &id).len() >= kill_after_items
        });
        let rest = d.kill_and_drain();
        for v in &rest {
            if v["event"] == "persisted" {
                durable = durable.max(v["counter"].as_u64().unwrap());
            }
        }

        let mut d = start("crashy", &key, &data, &[]);
        let restored = own_items(&mut d);
        // Write 1 of the run was the name; write c + 1 is command c.
        let k = (0..=cmds.len())
            .find(|&k| after(&cmds, k) == restored)
            .unwrap_or_else(|| {
                panic!("round {round}: restored a list no prefix of the burst gives: {restored:?}")
            });
        let reported = (durable as usize).saturating_sub(1);
        assert!(
            k >= reported,
            "round {round}: restored {k} commands but {reported} were reported durable"
        );
        eprintln!(
            "round {round}: killed after >= {kill_after_items} items shown; {reported} commands reported durable, {k} restored ({} items)",
            restored.len()
        );
        assert!(
            k < cmds.len(),
            "round {round}: the kill came after the burst"
        );
        d.quit();
    }
}

/// Runs the todo binary to its end with stdin closed; returns (success, stderr).
fn run_once(data: &Path, key: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["--json", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .arg("--key-file")
        .arg(key)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = start("first", &dir.path().join("a.key"), &data, &[]);
    let (ok, stderr) = run_once(&data, &dir.path().join("b.key"));
    assert!(!ok, "the second process started");
    let file = data.join("truffle.redb").display().to_string();
    assert!(stderr.contains(&file), "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    first.quit();
}

#[test]
fn a_damaged_data_file_is_refused_naming_it_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("truffle.redb"), vec![0xA5u8; 8192]).unwrap();
    let (ok, stderr) = run_once(&data, &dir.path().join("k.key"));
    assert!(!ok);
    let file = data.join("truffle.redb").display().to_string();
    assert!(stderr.contains(&file), "{stderr}");
    assert!(stderr.contains("move it away"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

//! The todo example as separate processes talking over loopback, driven through its
//! `--json` interface: the contract scripts rely on.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

struct Device {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    id: String,
    listen: Vec<String>,
}

impl Device {
    fn start(name: &str, key_file: &Path, peers: &[String]) -> Device {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_truffle-todo"));
        cmd.args(["--name", name, "--json", "--no-mdns"])
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .arg("--key-file")
            .arg(key_file);
        for p in peers {
            cmd.args(["--peer", p]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn todo");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut d = Device {
            child,
            stdin,
            lines,
            id: String::new(),
            listen: Vec::new(),
        };
        let ready = d.wait_for("ready", |v| v["event"] == "ready");
        d.id = ready["device_id"].as_str().expect("device_id").to_string();
        d.listen = ready["listen"]
            .as_array()
            .expect("listen")
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert!(
            d.listen
                .iter()
                .all(|a| a.ends_with(&format!("/p2p/{}", d.id))),
            "listen addresses carry /p2p/<device id>: {:?}",
            d.listen
        );
        d
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn wait_for(&self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let mut last = Value::Null;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(v) => last = v,
                Err(_) => panic!("timed out waiting for {what}; last line: {last}"),
            }
        }
    }

    /// Waits for a state line in which `device` shows exactly `items` (texts).
    fn wait_items(&self, device: &str, items: &[&str]) -> Value {
        self.wait_for(&format!("{device} with items {items:?}"), |v| {
            v["event"] == "state"
                && v["devices"][device]["items"].as_array().is_some_and(|a| {
                    a.iter()
                        .map(|i| i["text"].as_str().unwrap_or(""))
                        .eq(items.iter().copied())
                })
        })
    }

    fn wait_gone(&self, device: &str) -> Value {
        self.wait_for(&format!("{device} removed"), |v| {
            v["event"] == "state" && v["devices"].get(device).is_none()
        })
    }

    /// Closes stdin (EOF = quit) and waits for a clean exit.
    fn quit(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "todo exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "todo did not exit after EOF");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

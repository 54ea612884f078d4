//! Drives the todo example's `--json` interface from tests: one `Device` per process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Device {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Instant, Value)>,
    /// Lines the process wrote to stderr (also echoed to the test's stderr).
    errors: Receiver<String>,
    pub id: String,
    pub listen: Vec<String>,
    /// The `admin` field of the `ready` line (with `--admin`).
    pub admin: Option<String>,
}

impl Device {
    pub fn start(name: &str, key_file: &Path, peers: &[String]) -> Device {
        Self::start_with(
            Command::new(env!("CARGO_BIN_EXE_truffle-todo")),
            name,
            key_file,
            "/ip4/127.0.0.1/tcp/0",
            peers,
        )
    }

    /// Starts the todo binary through `cmd` (the binary itself, or a wrapper such as
    /// `ip netns exec NS <binary>`).
    pub fn start_with(
        mut cmd: Command,
        name: &str,
        key_file: &Path,
        listen: &str,
        peers: &[String],
    ) -> Device {
        cmd.args(["--name", name, "--json", "--no-mdns"])
            .args(["--listen", listen])
            .arg("--key-file")
            .arg(key_file);
        for p in peers {
            cmd.args(["--peer", p]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn todo");
        let errors = echo_stderr(&mut child);
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match out.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // A line without its newline is the last one of a killed process, cut
                // off mid-write: not a line the program finished.
                let Some(line) = line.strip_suffix('\n') else {
                    break;
                };
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut d = Device {
            child,
            stdin,
            lines,
            errors,
            id: String::new(),
            listen: Vec::new(),
            admin: None,
        };
        let ready = d.wait_for("ready", |v| v["event"] == "ready");
        d.id = ready["device_id"].as_str().expect("device_id").to_string();
        d.admin = ready["admin"].as_str().map(str::to_string);
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

    /// The process id, to send it signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `text`; panics at the deadline.
    pub fn wait_stderr(&self, text: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.errors.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("timed out waiting for {text:?} on stderr"),
            }
        }
    }

    /// Sends `signal` (`"INT"`, `"TERM"`) and waits for a successful exit.
    pub fn signal_and_wait(mut self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        self.wait_exit(true);
    }

    fn wait_exit(&mut self, success: bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert_eq!(status.success(), success, "todo exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "todo did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Like [`wait_for`](Self::wait_for) with an explicit deadline; `None` when it passes.
    /// Returns the matching line and when it was read.
    pub fn wait_until(
        &self,
        deadline: Instant,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<(Instant, Value)> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, v)) if pred(&v) => return Some((at, v)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn wait_for(&self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let mut last = Value::Null;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, v)) if pred(&v) => return v,
                Ok((_, v)) => last = v,
                Err(_) => panic!("timed out waiting for {what}; last line: {last}"),
            }
        }
    }

    /// Waits for a state line in which `device` shows exactly `items` (texts).
    pub fn wait_items(&self, device: &str, items: &[&str]) -> Value {
        self.wait_for(&format!("{device} with items {items:?}"), |v| {
            v["event"] == "state"
                && v["devices"][device]["items"].as_array().is_some_and(|a| {
                    a.iter()
                        .map(|i| i["text"].as_str().unwrap_or(""))
                        .eq(items.iter().copied())
                })
        })
    }

    /// SIGKILL: no leave, no cleanup.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGKILL, then every line the process wrote that was not read yet.
    pub fn kill_and_drain(mut self) -> Vec<Value> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        // The reader thread ends at end of output, which the kill brings.
        let mut rest = Vec::new();
        while let Ok((_, v)) = self.lines.recv_timeout(DEADLINE) {
            rest.push(v);
        }
        rest
    }

    /// SIGINT (Ctrl-C), then waits for the process to end however it handles it.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(sent.success(), "kill -INT {pid} failed");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "todo did not exit after Ctrl-C");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_gone(&self, device: &str) -> Value {
        self.wait_for(&format!("{device} removed"), |v| {
            v["event"] == "state" && v["devices"].get(device).is_none()
        })
    }

    /// Closes stdin (EOF = quit) and waits for a clean exit.
    pub fn quit(mut self) {
        drop(self.stdin.take());
        self.wait_exit(true);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Echoes the child's stderr to ours (so a failing test shows it) and hands each line to
/// the returned channel.
pub fn echo_stderr(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// Why a network-namespace test cannot run here (not root, no `ip`), if it cannot.
pub fn netns_skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .is_some_and(|euid| euid == "0");
    if !root {
        return Some("not running as root (network namespaces need CAP_NET_ADMIN)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (iproute2) is not available".into()),
    }
}

/// Runs `ip` with `args`; panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

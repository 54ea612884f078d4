//! The book's "Running on several hosts" walkthrough, run in network namespaces: three
//! hosts on one bridge, each with its own address. Host A listens on every interface;
//! the address B is given is the one A printed for its LAN interface; both share a
//! pre-shared key distributed as a file; a host with another key gets no data and says
//! why; the seed list includes each host's own address.
//!
//! Needs root and `ip` (iproute2). Without them it prints why it is skipped.

mod common;

use std::path::Path;
use std::process::Command;

use common::{ip, netns_skip_reason as skip_reason, Device};

const HOSTS: [&str; 3] = ["a", "b", "c"];

/// Namespaces `<prefix>-a`, `-b`, `-c` with addresses 10.98.0.1-3/24 on one bridge, and
/// the bridge's own namespace; deleted on drop.
struct Lan {
    prefix: String,
}

impl Lan {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn create() -> Lan {
        let lan = Lan {
            prefix: format!("trh{}", std::process::id()),
        };
        let sw = lan.ns("sw");
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (i, host) in HOSTS.iter().enumerate() {
            let ns = lan.ns(host);
            let port = format!("p{host}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ]);
            let addr = format!("10.98.0.{}/24", i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", &port, "up"]);
        }
        lan
    }

    /// The todo binary in `host`'s namespace, with the walkthrough's key and PSK files.
    fn todo(&self, host: &str, psk: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)])
            .arg(env!("CARGO_BIN_EXE_truffle-todo"))
            .arg("--psk-file")
            .arg(psk);
        cmd
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in HOSTS.iter().chain(&["sw"]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .status();
        }
    }
}

/// A swarm.key file as the walkthrough makes it (64 hex digits from the bytes given).
fn swarm_key(path: &Path, byte: u8) {
    let hex: String = std::iter::repeat_n(format!("{byte:02x}"), 32).collect();
    std::fs::write(path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")).unwrap();
}

#[test]
fn the_several_hosts_walkthrough_works_in_namespaces() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED the_several_hosts_walkthrough_works_in_namespaces: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("swarm.key");
    swarm_key(&psk, 0x5a);
    let other_psk = dir.path().join("other.key");
    swarm_key(&other_psk, 0x17);
    let lan = Lan::create();

    // Host a: every interface, a fixed port, its own key file.
    let mut a = Device::start_with(
        lan.todo("a", &psk),
        "a",
        &dir.path().join("a.key"),
        "/ip4/0.0.0.0/tcp/4001",
        &[],
    );
    // The address to hand out is the LAN one, printed right at start.
    let a_lan = a
        .listen
        .iter()
        .find(|l| l.starts_with("/ip4/10.98.0.1/tcp/4001/p2p/"))
        .unwrap_or_else(|| panic!("a's LAN address is not among {:?}", a.listen))
        .clone();
    assert!(a.listen.iter().all(|l| !l.contains("/0.0.0.0/")));

    // The seed list every host gets, a's own address included.
    let seeds = vec![a_lan.clone(), "/ip4/10.98.0.2/tcp/4001".to_string()];
    let mut b = Device::start_with(
        lan.todo("b", &psk),
        "b",
        &dir.path().join("b.key"),
        "/ip4/0.0.0.0/tcp/4001",
        &seeds,
    );
    a.send("add from a");
    b.send("add from b");
    b.wait_items(&a.id, &["from a"]);
    a.wait_items(&b.id, &["from b"]);

    // A host with another key: no data either way, and it says why.
    let c = Device::start_with(
        lan.todo("c", &other_psk),
        "c",
        &dir.path().join("c.key"),
        "/ip4/0.0.0.0/tcp/4001",
        &seeds,
    );
    let said = c.wait_stderr("this mesh is private");
    assert!(said.contains("pre-shared key"), "{said}");
    a.send("list");
    let state = a.wait_for("a's list", |v| v["event"] == "state");
    assert!(state["devices"].get(&c.id).is_none());

    let a_id = a.id.clone();
    a.quit();
    b.wait_gone(&a_id);
    b.quit();
    drop(c);
}

//! The admin dashboard in a real headless Chromium (Debian's `chromium` package), driven
//! through the DevTools protocol: the page shows a device that joins after it loaded, and
//! drops one that leaves. Skipped, with the reason printed, when Chromium is missing,
//! except in CI (`CI=true`), where a missing browser fails the test.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{builder, init_tracing, Status, DEADLINE};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("TRUFFLE_CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_string)
}

/// The browser process; killed when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts headless Chromium on `url`; returns it with its DevTools port.
fn launch(bin: &str, url: &str) -> (Browser, u16) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=1280,900",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID" on stderr.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                let port: u16 = rest.split('/').next().unwrap_or("").parse().unwrap_or(0);
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium prints its DevTools address");
    (
        Browser {
            child,
            _profile: profile,
        },
        port,
    )
}

/// A DevTools-protocol session over a minimal WebSocket client (text frames only, which
/// is all the protocol uses).
struct Cdp {
    stream: TcpStream,
    next_id: u64,
}

impl Cdp {
    async fn connect(ws_url: &str) -> Cdp {
        let rest = ws_url.strip_prefix("ws://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = TcpStream::connect(authority).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dHJ1ZmZsZS1kYXNoYm9hcmQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Cdp { stream, next_id: 0 }
    }

    async fn send_text(&mut self, text: &str) {
        let data = text.as_bytes();
        let mut frame = vec![0x81u8];
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        match data.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next complete text message.
    async fn recv_text(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.stream.read_exact(&mut h).await.unwrap();
            let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).await.unwrap();
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).await.unwrap();
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).await.unwrap();
            match opcode {
                0x1 | 0x0 => message.extend_from_slice(&payload),
                0x8 => panic!("DevTools closed the connection"),
                _ => continue, // ping/pong
            }
            if fin {
                return String::from_utf8(message).unwrap();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send_text(&json!({ "id": id, "method": method, "params": params }).to_string())
            .await;
        loop {
            let msg: Value = serde_json::from_str(&self.recv_text().await).unwrap();
            if msg["id"] == id {
                return msg["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value, JSON-decoded.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }
}

/// Device ids and states of the peer rows the dashboard shows.
const PEER_ROWS: &str = "JSON.stringify([...document.querySelectorAll('tr.peer')].map(r => [r.dataset.device, r.dataset.state, r.querySelector('.name').textContent]))";
/// Device ids of the slices shown for the `status` store.
const SLICE_ROWS: &str = "JSON.stringify([...document.querySelectorAll('section.store[data-store=status] tr.slice')].map(r => r.dataset.device))";

async fn rows(cdp: &mut Cdp, expr: &str) -> Value {
    let v = cdp.eval(expr).await;
    serde_json::from_str(v.as_str().unwrap_or("[]")).unwrap_or(Value::Null)
}

async fn until_page(cdp: &mut Cdp, what: &str, expr: &str, f: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let v = rows(cdp, expr).await;
        if f(&v) {
            return v;
        }
        assert!(
            Instant::now() < end,
            "the page never showed {what}; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_devices_joining_and_leaving() {
    let Some(bin) = chromium() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but no chromium: .ci/run installs Debian's `chromium` package");
        }
        eprintln!(
            "skipped: no chromium on PATH (apt-get install chromium, or set TRUFFLE_CHROMIUM)"
        );
        return;
    };
    init_tracing();
    let a = builder("alice")
        .admin("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let seed = a.listen_addrs()[0].clone();
    let on_a = a.store::<Status>().await.unwrap();
    on_a.update(|s| s.text = "alice here".into()).await.unwrap();
    let b = builder("bob")
        .bootstrap(seed.clone())
        .start()
        .await
        .unwrap();
    let on_b = b.store::<Status>().await.unwrap();
    on_b.update(|s| s.text = "bob here".into()).await.unwrap();
    let b_id = b.device_id().to_string();
    on_a.wait_until(DEADLINE, |s| s.len() == 2).await.unwrap();

    let page = format!("http://{}/", a.admin_addr().unwrap());
    let (browser, port) = launch(&bin, &page);
    let devtools = format!("127.0.0.1:{port}").parse().unwrap();
    // The page's DevTools socket, from the browser's target list.
    let targets = {
        let end = Instant::now() + DEADLINE;
        loop {
            let list = truffle_cli::http::get_json(&devtools, "/json/list", Duration::from_secs(5))
                .await
                .unwrap_or(Value::Null);
            let page_ws = list.as_array().into_iter().flatten().find_map(|t| {
                (t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(&page)))
                    .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
                    .flatten()
            });
            if let Some(ws) = page_ws {
                break ws;
            }
            assert!(Instant::now() < end, "no page target in {list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut cdp = Cdp::connect(&targets).await;

    // Loaded: bob is there, online, and so is his slice.
    until_page(&mut cdp, "bob online", PEER_ROWS, |v| {
        v.as_array()
            .into_iter()
            .flatten()
            .any(|r| r[0] == b_id.as_str() && r[1] == "online")
    })
    .await;
    // The page follows the event stream from here on.
    let u: truffle_cli::http::AdminUrl = page.trim_end_matches('/').parse().unwrap();
    let end = Instant::now() + DEADLINE;
    while truffle_cli::http::get_json(&u, "/api/node", Duration::from_secs(5))
        .await
        .unwrap()["event_subscribers"]
        == 0
    {
        assert!(
            Instant::now() < end,
            "the page never subscribed to /api/events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Carol joins after the page loaded; bob leaves.
    let c = builder("carol").bootstrap(seed).start().await.unwrap();
    let on_c = c.store::<Status>().await.unwrap();
    on_c.update(|s| s.text = "carol here".into()).await.unwrap();
    let c_id = c.device_id().to_string();
    until_page(&mut cdp, "carol's slice", SLICE_ROWS, |v| {
        v.as_array()
            .into_iter()
            .flatten()
            .any(|d| d == c_id.as_str())
    })
    .await;
    b.shutdown().await.unwrap();
    let slices = until_page(&mut cdp, "bob's slice gone", SLICE_ROWS, |v| {
        let ids: Vec<&str> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        !ids.contains(&b_id.as_str()) && ids.contains(&c_id.as_str())
    })
    .await;
    assert_eq!(
        slices.as_array().unwrap().len(),
        2,
        "alice and carol: {slices}"
    );
    let peers = until_page(&mut cdp, "bob as left", PEER_ROWS, |v| {
        v.as_array()
            .into_iter()
            .flatten()
            .any(|r| r[0] == b_id.as_str() && r[1] == "left")
    })
    .await;
    assert!(peers
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r[0] == c_id.as_str() && r[1] == "online"));
    // Names travel in presence messages: carol's shows up with her next one.
    until_page(&mut cdp, "carol's name", PEER_ROWS, |v| {
        v.as_array()
            .into_iter()
            .flatten()
            .any(|r| r[0] == c_id.as_str() && r[2] == "carol")
    })
    .await;
    let text = cdp.eval("document.body.innerText").await;
    assert!(text.as_str().unwrap().contains("carol here"), "{text}");
    // The node's counters, as /api/node lists them.
    let applied = cdp
        .eval("document.querySelector('[data-counter=applied] b').textContent")
        .await;
    assert!(
        applied
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v > 0),
        "applied counter: {applied}"
    );
    assert!(
        text.as_str().unwrap().contains("peers graylisted"),
        "{text}"
    );

    // The book's screenshot, when asked for.
    if let Ok(path) = std::env::var("TRUFFLE_DASHBOARD_SCREENSHOT") {
        let shot = cdp
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        std::fs::write(&path, png).unwrap();
        eprintln!("wrote {path}");
    }
    drop(browser);
    c.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| {
            acc | (u32::from(val(*c)) << (18 - 6 * i))
        });
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

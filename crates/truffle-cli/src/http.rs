//! A minimal HTTP/1.1 client for the admin endpoint: `GET` with a JSON answer, and `GET`
//! of a server-sent-event stream. Plain HTTP on a trusted (usually loopback) address is
//! all the endpoint speaks, so a full client library would only add build time.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest answer accepted for a JSON route (a store with many large slices fits).
const MAX_BODY: usize = 256 * 1024 * 1024;
/// Longest header section accepted.
const MAX_HEADERS: usize = 64 * 1024;
/// Longest server-sent event accepted.
const MAX_EVENT: usize = 16 * 1024 * 1024;

/// An admin endpoint's address: `http://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminUrl {
    host: String,
    port: u16,
}

impl std::str::FromStr for AdminUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("http://").unwrap_or(s);
        if rest.starts_with("https://") || s.starts_with("https://") {
            return Err(format!("{s:?}: the admin endpoint speaks plain http only"));
        }
        let authority = rest.split('/').next().unwrap_or("");
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port; for example http://127.0.0.1:9090"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!(
                "{s:?} has no host; for example http://127.0.0.1:9090"
            ));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

struct Response {
    status: u16,
    chunked: bool,
    length: Option<usize>,
    reader: BufReader<TcpStream>,
}

async fn request(url: &AdminUrl, path: &str, accept: &str) -> Result<Response, String> {
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| {
            format!(
                "cannot connect to {url}: {e} (is the node running with an admin endpoint there?)"
            )
        })?;
    let mut reader = BufReader::new(stream);
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\nUser-Agent: truffle-cli\r\n\r\n"
    );
    reader
        .get_mut()
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{url}{path}: cannot send the request: {e}"))?;
    let mut line = String::new();
    let mut read = 0usize;
    let mut status = None;
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("{url}{path}: {e}"))?;
        read += n;
        if n == 0 || read > MAX_HEADERS {
            return Err(format!(
                "{url}{path}: the answer ended or grew too long in its headers"
            ));
        }
        let l = line.trim_end();
        if status.is_none() {
            let code = l
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| format!("{url}{path}: not an HTTP answer: {l:?}"))?;
            status = Some(code);
            continue;
        }
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
    Ok(Response {
        status: status.unwrap_or(0),
        chunked,
        length,
        reader,
    })
}

impl Response {
    /// The next piece of the body, `None` at its end.
    async fn next_piece(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.chunked {
            let mut size = String::new();
            if self
                .reader
                .read_line(&mut size)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Ok(None);
            }
            let hex = size.trim().split(';').next().unwrap_or("");
            let n =
                usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex:?}"))?;
            if n == 0 {
                return Ok(None);
            }
            if n > MAX_EVENT {
                return Err(format!("a chunk of {n} bytes is over the limit"));
            }
            let mut buf = vec![0; n + 2];
            self.reader
                .read_exact(&mut buf)
                .await
                .map_err(|e| e.to_string())?;
            buf.truncate(n);
            Ok(Some(buf))
        } else {
            let mut buf = vec![0; 64 * 1024];
            let n = self
                .reader
                .read(&mut buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some(buf))
        }
    }

    async fn body(mut self) -> Result<Vec<u8>, String> {
        if let (false, Some(n)) = (self.chunked, self.length) {
            if n > MAX_BODY {
                return Err(format!("an answer of {n} bytes is over the limit"));
            }
            let mut buf = vec![0; n];
            self.reader
                .read_exact(&mut buf)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(buf);
        }
        let mut body = Vec::new();
        while let Some(piece) = self.next_piece().await? {
            body.extend_from_slice(&piece);
            if body.len() > MAX_BODY {
                return Err("the answer is over the size limit".into());
            }
        }
        Ok(body)
    }
}

/// `GET path` and parse the answer as JSON; a non-2xx answer is an error with the
/// endpoint's message.
pub async fn get_json(url: &AdminUrl, path: &str, timeout: Duration) -> Result<Value, String> {
    let fetch = async {
        let resp = request(url, path, "application/json").await?;
        let status = resp.status;
        let body = resp.body().await.map_err(|e| format!("{url}{path}: {e}"))?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{url}{path}: the answer is not JSON ({e})"))?;
        if !(200..300).contains(&status) {
            let msg = value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            return Err(format!("{url}{path}: HTTP {status}: {msg}"));
        }
        Ok(value)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("{url}{path}: no answer within {timeout:?}"))?
}

/// Follows the server-sent events at `path`, calling `on_event` with each event's data
/// parsed as JSON, until `on_event` returns false or the stream ends (returns `Ok`).
pub async fn follow_events(
    url: &AdminUrl,
    path: &str,
    mut on_event: impl FnMut(Value) -> bool,
) -> Result<(), String> {
    let mut resp = request(url, path, "text/event-stream").await?;
    if !(200..300).contains(&resp.status) {
        return Err(format!("{url}{path}: HTTP {}", resp.status));
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut data = String::new();
    while let Some(piece) = resp
        .next_piece()
        .await
        .map_err(|e| format!("{url}{path}: {e}"))?
    {
        pending.extend_from_slice(&piece);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    let ev = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                    data.clear();
                    if !on_event(ev) {
                        return Ok(());
                    }
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
            // `:` comments (keep-alives), `event:` and `id:` lines carry nothing we use.
        }
        if pending.len() + data.len() > MAX_EVENT {
            return Err(format!("{url}{path}: an event is over the size limit"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls() {
        let u: AdminUrl = "http://127.0.0.1:9090".parse().unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9090");
        let u: AdminUrl = "localhost:80/".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("localhost", 80));
        let u: AdminUrl = "http://[::1]:9090".parse().unwrap();
        assert_eq!(u.to_string(), "http://[::1]:9090");
        assert!("http://127.0.0.1".parse::<AdminUrl>().is_err());
        assert!("https://127.0.0.1:1".parse::<AdminUrl>().is_err());
        assert!("http://:9090".parse::<AdminUrl>().is_err());
        assert!("http://h:99999".parse::<AdminUrl>().is_err());
    }
}

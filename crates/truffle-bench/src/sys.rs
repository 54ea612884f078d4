//! What the kernel says about this process: resident memory and TCP bytes sent.

use std::process::Command;

/// A field of `/proc/self/status` in kB (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resident set size of this process, in kB.
pub fn rss_kb() -> Option<u64> {
    proc_status_kb("VmRSS")
}

/// Bytes sent so far on this process's open TCP sockets, summed, as the kernel counts
/// them (`tcpi_bytes_sent`, read with `ss -tinp`). It covers everything a node writes on
/// its connections (noise and yamux framing, gossipsub control, presence, sync), and
/// nothing sent on sockets closed since. `None` if `ss` is missing or shows nothing.
pub fn tcp_bytes_sent() -> Option<u64> {
    let out = Command::new("ss").args(["-tinpH"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = format!("pid={},", std::process::id());
    let mut ours = false;
    let mut total = 0u64;
    let mut sockets = 0usize;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            ours = line.contains(&pid);
            if ours {
                sockets += 1;
            }
            // Some ss versions print the details on the same line.
        }
        if ours {
            if let Some(v) = line
                .split_whitespace()
                .find_map(|t| t.strip_prefix("bytes_sent:"))
                .and_then(|v| v.parse::<u64>().ok())
            {
                total += v;
            }
        }
    }
    (sockets > 0).then_some(total)
}

/// CPU time used so far by this process's live threads, from
/// `/proc/self/task/*/schedstat` (nanoseconds on CPU, per thread).
pub fn cpu_time() -> Option<std::time::Duration> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let stat = std::fs::read_to_string(entry.path().join("schedstat")).ok();
        if let Some(ns) = stat
            .as_deref()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Some(std::time::Duration::from_nanos(total))
}

/// CPU used by this process over the next `window`, as a share of one core (1.0 = one
/// core busy the whole time).
pub async fn cpu_share_over(window: std::time::Duration) -> Option<f64> {
    let (c0, t0) = (cpu_time()?, std::time::Instant::now());
    tokio::time::sleep(window).await;
    let (c1, t1) = (cpu_time()?, std::time::Instant::now());
    Some(c1.saturating_sub(c0).as_secs_f64() / (t1 - t0).as_secs_f64())
}

//! Human-readable lines for `truffle status` and `truffle watch`.

use serde_json::Value;

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `12D3KooWAbc…xyz123`: enough of a device id to tell devices apart.
pub fn short(id: &str) -> String {
    if id.len() > 20 {
        format!("{}…{}", &id[..10], &id[id.len() - 6..])
    } else {
        id.to_string()
    }
}

fn version(v: &Value) -> String {
    match (v.get("incarnation"), v.get("counter")) {
        (Some(i), Some(c)) => format!("{i}.{c}"),
        _ => "?".into(),
    }
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms ago"),
        Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
    }
}

/// The `status` report: the node, its peers, its stores.
pub fn status(node: &Value, peers: &Value, stores: &Value) -> String {
    let mut out = String::new();
    let uptime = node.get("uptime_ms").and_then(Value::as_u64).unwrap_or(0);
    out.push_str(&format!(
        "node {} ({})\n  incarnation {}, up {:.1} s, {} peer(s) online\n",
        s(node, "name"),
        s(node, "device_id"),
        node.get("incarnation").unwrap_or(&Value::Null),
        uptime as f64 / 1000.0,
        node.get("peers_online")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    ));
    for a in node
        .get("listen_addrs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("  listening on {}\n", a.as_str().unwrap_or("")));
    }
    let peers = peers.as_array().cloned().unwrap_or_default();
    out.push_str(&format!("\npeers ({}):\n", peers.len()));
    if !peers.is_empty() {
        out.push_str(&format!(
            "  {:<20} {:<14} {:<10} {:<9} {:<12} {:>9} {:>7} {:>10}  slices\n",
            "device", "name", "state", "connected", "last heard", "rtt", "score", "gossip in"
        ));
    }
    for p in &peers {
        let slices: Vec<String> = p
            .get("stores")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(store, v)| format!("{store}@{}", version(v)))
            .collect();
        let state = match (s(p, "state"), p.get("removal").and_then(Value::as_str)) {
            ("offline", Some(r)) => format!("offline({r})"),
            (state, _) => state.to_string(),
        };
        let score = p
            .get("score")
            .and_then(Value::as_f64)
            .map(|v| format!("{v:.1}"))
            .unwrap_or_else(|| "-".into());
        let gossip_in = match p.get("connected").and_then(Value::as_bool) {
            Some(true) => format!(
                "{:.1}/s",
                p.get("inbound_messages_per_sec")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
            ),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "  {:<20} {:<14} {:<10} {:<9} {:<12} {:>9} {:>7} {:>10}  {}\n",
            short(s(p, "device_id")),
            p.get("name").and_then(Value::as_str).unwrap_or("-"),
            state,
            if p.get("connected").and_then(Value::as_bool) == Some(true) {
                "yes"
            } else {
                "no"
            },
            ago(p.get("silent_for_ms").and_then(Value::as_u64)),
            p.get("rtt_ms")
                .and_then(Value::as_f64)
                .map(|r| format!("{r:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            score,
            gossip_in,
            slices.join(" "),
        ));
    }
    let stores = stores.as_array().cloned().unwrap_or_default();
    out.push_str(&format!("\nstores ({}):\n", stores.len()));
    for st in &stores {
        let slices = st
            .get("slices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        out.push_str(&format!("  {} ({} slice(s))\n", s(st, "id"), slices.len()));
        for sl in &slices {
            let local = sl.get("local").and_then(Value::as_bool) == Some(true);
            out.push_str(&format!(
                "    {:<20} v{}{}\n",
                short(s(sl, "device_id")),
                sl.get("version").map(version).unwrap_or_default(),
                if local { "  (this node)" } else { "" }
            ));
        }
    }
    // The node's counters since start, as `/api/node` lists them (the Operating chapter
    // says what each one means): what faulty or hostile peers cost this node shows here.
    if let Some(metrics) = node.get("metrics").and_then(Value::as_object) {
        out.push_str("\ncounters:\n");
        for (name, value) in metrics {
            out.push_str(&format!("  {:<24} {}\n", name, counter(value)));
        }
    }
    out
}

/// A counter: a number, or for counts by reason (`rejected`) their sum and each reason
/// that is not zero.
fn counter(v: &Value) -> String {
    let Some(by) = v.as_object() else {
        return v.to_string();
    };
    let sum: u64 = by.values().filter_map(Value::as_u64).sum();
    let parts: Vec<String> = by
        .iter()
        .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    match parts.is_empty() {
        true => sum.to_string(),
        false => format!("{sum} ({})", parts.join(", ")),
    }
}

/// One line for one event of `truffle watch`.
pub fn event_line(ev: &Value) -> String {
    let kind = s(ev, "event");
    let device = short(s(ev, "device_id"));
    match kind {
        "slice_updated" => format!(
            "{kind} store={} device={device} version={}",
            s(ev, "store"),
            ev.get("version").map(version).unwrap_or_default()
        ),
        "slice_removed" => format!(
            "{kind} store={} device={device} reason={}",
            s(ev, "store"),
            s(ev, "reason")
        ),
        "peer_offline" => format!("{kind} device={device} reason={}", s(ev, "reason")),
        "peer_suspected" => format!(
            "{kind} device={device} silent_for_ms={}",
            ev.get("silent_for_ms").unwrap_or(&Value::Null)
        ),
        "peer_restarted" => format!(
            "{kind} device={device} incarnation={}",
            ev.get("incarnation").unwrap_or(&Value::Null)
        ),
        "lagged" => format!(
            "lagged: {} event(s) missed; run `truffle status` for the current state",
            ev.get("missed").unwrap_or(&Value::Null)
        ),
        _ if !device.is_empty() => format!("{kind} device={device}"),
        _ => ev.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_lines() {
        let ev = json!({"event":"slice_updated","store":"todos","device_id":"12D3KooWAbcdefghijklmnopqrstuvwxyz","version":{"incarnation":5,"counter":2}});
        assert_eq!(
            event_line(&ev),
            "slice_updated store=todos device=12D3KooWAb…uvwxyz version=5.2"
        );
        let ev = json!({"event":"peer_offline","device_id":"x","reason":"left"});
        assert_eq!(event_line(&ev), "peer_offline device=x reason=left");
    }

    #[test]
    fn status_lists_peers_and_stores() {
        let node = json!({"name":"alice","device_id":"A","incarnation":1,"uptime_ms":1500,"peers_online":1,"listen_addrs":["/ip4/127.0.0.1/tcp/1/p2p/A"],"metrics":{"applied":3,"peers_graylisted":1,"rejected":{"bad_signature":2,"stale":0,"too_large":1}}});
        let peers = json!([{"device_id":"B","name":"bob","state":"online","connected":true,"silent_for_ms":20,"rtt_ms":0.4,"score":2.5,"inbound_messages_per_sec":4.0,"stores":{"todos":{"incarnation":2,"counter":1}}}]);
        let stores = json!([{"id":"todos","slices":[{"device_id":"A","local":true,"version":{"incarnation":1,"counter":0}}]}]);
        let text = status(&node, &peers, &stores);
        assert!(text.contains("node alice (A)"), "{text}");
        assert!(text.contains("bob"), "{text}");
        assert!(text.contains("todos@2.1"), "{text}");
        assert!(text.contains("2.5") && text.contains("4.0/s"), "{text}");
        assert!(text.contains("(this node)"), "{text}");
        assert!(text.contains("counters:"), "{text}");
        assert!(text.contains("3 (bad_signature 2, too_large 1)"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["peers_graylisted", "1"]),
            "{text}"
        );
    }
}

//! Why a connection failed, in words that say what to do, and how often to say it.
//!
//! libp2p reports a failed dial as one error whose text nests the transport's chain
//! (`Failed to negotiate transport protocol(s): [(/ip4/…/tcp/…: Connection refused …)]`).
//! This module reads that text: the runtime hands over what libp2p printed, and the log
//! line leads with the cause instead of burying it in a field.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What went wrong with a connection, as far as the error text tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ConnectFailure {
    /// TCP connection refused: nothing listens at that address and port.
    Refused,
    /// No route to the host, or the network is down.
    Unreachable,
    /// A different device answered than the `/p2p/` id asked for.
    WrongPeer,
    /// The address is this node itself.
    OwnAddress,
    /// No address is known for the device.
    NoAddress,
    /// The transport cannot dial this kind of address.
    Unsupported,
    /// A `/dns*` name did not resolve.
    Dns,
    /// TCP connected but the handshake (pre-shared key, noise, multiplexer) failed.
    Handshake,
    /// An incoming connection that the dialing node closed during the handshake (the
    /// connection reset, or a broken pipe): most often a dial it gave up, because the two
    /// nodes dialled each other at once or it already had a connection; in a private
    /// mesh, also a dialer with another pre-shared key, which cannot read this node.
    Abandoned,
    /// An outgoing dial this node itself called off (libp2p's "aborted": it disconnected
    /// from the peer, or no longer needed the connection).
    Aborted,
    /// No connection or handshake within the connect timeout.
    Timeout,
    /// A connection limit of this node (or the other) was reached: the connection was
    /// closed on purpose.
    LimitReached,
    /// An incoming connection did not complete its handshakes within the inbound
    /// handshake timeout.
    InboundTimeout,
    /// Anything else.
    Other,
}

impl ConnectFailure {
    /// Reads the error text of a failed connection. `inbound` failures always come after
    /// TCP accepted the connection, so they are handshake failures unless the text says
    /// otherwise.
    pub(crate) fn classify(error: &str, inbound: bool) -> Self {
        let has = |needles: &[&str]| needles.iter().any(|n| error.contains(n));
        if has(&["Connection refused", "os error 111"]) {
            ConnectFailure::Refused
        } else if has(&[
            "No route to host",
            "Network is unreachable",
            "os error 113",
            "os error 101",
        ]) {
            ConnectFailure::Unreachable
        } else if has(&["Unexpected peer ID"]) {
            ConnectFailure::WrongPeer
        } else if has(&["local peer id", "Local peer ID"]) {
            ConnectFailure::OwnAddress
        } else if has(&["no addresses for peer"]) {
            ConnectFailure::NoAddress
        } else if has(&["Multiaddr is not supported"]) {
            ConnectFailure::Unsupported
        } else if has(&[
            "DNS error",
            "no record found",
            "no records found",
            "no connections available",
            "NXDomain",
            "failed to resolve",
            "ResolveError",
            "proto error",
        ]) {
            ConnectFailure::Dns
        } else if has(&["connection limit exceeded"]) {
            ConnectFailure::LimitReached
        } else if has(&["connection attempt has been aborted"]) {
            ConnectFailure::Aborted
        } else if has(&["Timeout has been reached", "timed out", "os error 110"]) {
            match inbound {
                true => ConnectFailure::InboundTimeout,
                false => ConnectFailure::Timeout,
            }
        } else if inbound
            && has(&[
                "Connection reset",
                "os error 104",
                "Broken pipe",
                "os error 32",
            ])
        {
            ConnectFailure::Abandoned
        } else if inbound
            || has(&[
                "Handshake",
                "handshake",
                "noise",
                "Noise",
                "Multistream",
                "multistream",
                "Select",
                "unexpected end of file",
                "early eof",
                "Connection reset",
                "Broken pipe",
                "Invalid",
                "Decrypt",
                "decrypt",
            ])
        {
            ConnectFailure::Handshake
        } else {
            ConnectFailure::Other
        }
    }

    /// The log message: the cause first, then what to check. The pre-shared key is
    /// mentioned only where a key mismatch could be the cause (a failed or stalled
    /// handshake).
    pub(crate) fn explain(self, private_mesh: bool) -> &'static str {
        match (self, private_mesh) {
            (ConnectFailure::Refused, _) => {
                "connection refused: nothing listens at that address; is the other node running, and is this its current address and port?"
            }
            (ConnectFailure::Unreachable, _) => {
                "host unreachable: no route to that address from here (another network, a VPN that is down, a wrong address?)"
            }
            (ConnectFailure::WrongPeer, _) => {
                "a different device answered at that address: the /p2p/ id in the address is out of date (the node there has a new identity); copy its current address"
            }
            (ConnectFailure::OwnAddress, _) => "that address is this node itself; not dialling it",
            (ConnectFailure::NoAddress, _) => {
                "no address is known for that device; give its address (with /ip4/.../tcp/PORT) to bootstrap"
            }
            (ConnectFailure::Unsupported, _) => {
                "unsupported address: this node dials /ip4, /ip6 and /dns* addresses over /tcp only"
            }
            (ConnectFailure::Dns, _) => {
                "the host name did not resolve: check the name, and this host's DNS settings"
            }
            (ConnectFailure::Handshake, true) => {
                "connection failed during the handshake: this mesh is private; the other node must use the same pre-shared key (compare the psk_fingerprint of both nodes' start lines)"
            }
            (ConnectFailure::Handshake, false) => {
                "connection failed during the handshake: if the other node uses a pre-shared key (private mesh), this node needs the same key (--psk-file); otherwise it may not be a Truffle node"
            }
            (ConnectFailure::Abandoned, true) => {
                "the dialing node closed the connection during the handshake: it may use another pre-shared key (this mesh is private; compare the psk_fingerprint of both nodes' start lines), or it gave up the dial (the two nodes dialled each other at once)"
            }
            (ConnectFailure::Abandoned, false) => {
                "the dialing node closed the connection during the handshake: it gave up the dial (the two nodes dialled each other at once, or it already had a connection)"
            }
            (ConnectFailure::Aborted, _) => {
                "this node called the dial off (it disconnected from that peer, or no longer needed the connection)"
            }
            (ConnectFailure::Timeout, true) => {
                "no connection within the connect timeout: the host may be down or a firewall drops the packets; or, this mesh being private, the other node uses a different pre-shared key (a key mismatch stalls the handshake)"
            }
            (ConnectFailure::Timeout, false) => {
                "no connection within the connect timeout: the host may be down, or a firewall drops the packets (open the node's TCP port)"
            }
            (ConnectFailure::LimitReached, _) => {
                "connection closed at a connection limit: many connections at once (a burst of joining nodes, or a flood of connections); see max_pending_incoming, max_established_incoming and max_connections_per_peer"
            }
            (ConnectFailure::InboundTimeout, true) => {
                "an incoming connection did not complete its handshake within inbound_handshake_timeout: a slow or overloaded peer, one that opens connections and stays silent, or a node with another pre-shared key (this mesh is private; compare fingerprints)"
            }
            (ConnectFailure::InboundTimeout, false) => {
                "an incoming connection did not complete its handshake within inbound_handshake_timeout: a slow or overloaded peer, one that opens connections and stays silent, or a node with a pre-shared key (private mesh)"
            }
            (ConnectFailure::Other, _) => "connection failed",
        }
    }

    /// Failures that mean the peer could not be reached at all.
    pub(crate) fn is_unreachable(self) -> bool {
        matches!(
            self,
            ConnectFailure::Refused
                | ConnectFailure::Unreachable
                | ConnectFailure::Dns
                | ConnectFailure::Timeout
        )
    }

    /// Failures that are expected in normal operation and logged at debug level only. A
    /// dialer that abandons an incoming connection is one of them unless the mesh is
    /// private, where it may also be a node with another key (in a mesh of 64 nodes that
    /// fill their views at once, every node saw a few simultaneous dials, and each said so
    /// in a warning that blamed a pre-shared key).
    pub(crate) fn is_quiet(self, private_mesh: bool) -> bool {
        match self {
            ConnectFailure::OwnAddress | ConnectFailure::Aborted => true,
            ConnectFailure::Abandoned => !private_mesh,
            _ => false,
        }
    }
}

/// Says each kind of failure at once, then at most once per `every`, with the number of
/// repeats left unsaid in between (a bootstrap peer that is down is re-dialled every
/// second).
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    every: Duration,
    last: HashMap<ConnectFailure, (Instant, u64)>,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(30),
            last: HashMap::new(),
        }
    }
}

impl WarnLimiter {
    /// `Some(repeats since the last warning)` when `kind` should be logged now.
    pub(crate) fn allow(&mut self, kind: ConnectFailure, now: Instant) -> Option<u64> {
        match self.last.get_mut(&kind) {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_read_from_libp2p_error_text() {
        use ConnectFailure::*;
        let cases = [
            ("Failed to negotiate transport protocol(s): [(/ip4/127.0.0.1/tcp/9/p2p/12D3KooWA: : Connection refused (os error 111))]", Refused),
            ("Dial error: Unexpected peer ID 12D3KooWB at Dialer { address: /ip4/127.0.0.1/tcp/9 }.", WrongPeer),
            ("Failed to negotiate transport protocol(s): [(/ip4/127.0.0.1/udp/9/quic-v1: : Multiaddr is not supported: /ip4/127.0.0.1/udp/9/quic-v1)]", Unsupported),
            ("Dial error: no addresses for peer.", NoAddress),
            ("Failed to negotiate transport protocol(s): [(/ip4/10.9.9.9/tcp/9: : Timeout has been reached)]", Timeout),
            ("Failed to negotiate transport protocol(s): [(/ip4/10.9.9.9/tcp/9: : No route to host (os error 113))]", Unreachable),
            ("Listen error: Failed to negotiate transport protocol(s)", Handshake),
            ("Listen error: Failed to negotiate transport protocol(s): Multistream select failed: Protocol error: I/O error: Broken pipe (os error 32)", Abandoned),
            ("Listen error: Failed to negotiate transport protocol(s): Handshake failed: Connection reset by peer (os error 104)", Abandoned),
            ("Dial error: Pending connection attempt has been aborted.", Aborted),
            ("Listen error: Failed to negotiate transport protocol(s): Timeout has been reached", InboundTimeout),
            ("Listen error: Denied: connection denied: connection limit exceeded: at most 8 pending incoming connections are allowed", LimitReached),
            ("Failed to negotiate transport protocol(s): [(/dns4/no-such-host.invalid/tcp/4001: : Multiple dial errors occurred:\n - DNS error: no records found for Query)]", Dns),
        ];
        for (text, want) in cases {
            assert_eq!(
                ConnectFailure::classify(text, text.starts_with("Listen")),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn the_pre_shared_key_is_mentioned_only_for_handshake_trouble() {
        use ConnectFailure::*;
        for kind in [
            Refused,
            Unreachable,
            WrongPeer,
            NoAddress,
            Unsupported,
            Dns,
            LimitReached,
            Other,
        ] {
            for psk in [false, true] {
                assert!(!kind.explain(psk).contains("pre-shared"), "{kind:?}");
            }
        }
        assert!(Handshake.explain(false).contains("pre-shared key"));
        assert!(Handshake.explain(true).contains("fingerprint"));
        assert!(Timeout.explain(true).contains("pre-shared key"));
        assert!(InboundTimeout.explain(true).contains("fingerprints"));
        assert!(Abandoned.explain(true).contains("pre-shared key"));
        assert!(!Abandoned.explain(false).contains("pre-shared"));
        assert!(!Aborted.explain(true).contains("pre-shared"));
    }

    #[test]
    fn a_dial_given_up_is_quiet_except_where_a_key_mismatch_looks_the_same() {
        use ConnectFailure::*;
        assert!(Aborted.is_quiet(false) && Aborted.is_quiet(true));
        assert!(Abandoned.is_quiet(false));
        assert!(!Abandoned.is_quiet(true));
        assert!(!Handshake.is_quiet(false) && !Refused.is_quiet(false));
    }

    #[test]
    fn warnings_are_rate_limited_per_cause() {
        let mut w = WarnLimiter::default();
        let t0 = Instant::now();
        assert_eq!(w.allow(ConnectFailure::Refused, t0), Some(0));
        assert_eq!(
            w.allow(ConnectFailure::Refused, t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            w.allow(ConnectFailure::Refused, t0 + Duration::from_secs(2)),
            None
        );
        // Another cause is not held back by the first.
        assert_eq!(
            w.allow(ConnectFailure::WrongPeer, t0 + Duration::from_secs(2)),
            Some(0)
        );
        assert_eq!(
            w.allow(ConnectFailure::Refused, t0 + Duration::from_secs(31)),
            Some(2)
        );
    }
}

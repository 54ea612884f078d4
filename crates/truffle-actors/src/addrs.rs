//! Listen and bootstrap addresses: the checks `start()` makes before handing them to
//! libp2p, and error text that carries the operating system's reason.

use std::net::{IpAddr, SocketAddr, TcpListener};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// An error and its sources, `: `-separated. libp2p's errors often print nothing of their
/// own (`TransportError::Other` displays as an empty string) and keep the cause in
/// `source()`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        format!("{e:?}")
    } else {
        parts.join(": ")
    }
}

/// The IP and TCP port of a plain `/ip4|ip6/.../tcp/PORT` address.
fn ip_tcp(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

/// Checks that `addr` can be bound, before libp2p binds it.
///
/// libp2p's TCP listener sets `SO_REUSEPORT`, so a second node binding a port that another
/// node already listens on succeeds and the two share it: dialers land on either. A plain
/// socket (no `SO_REUSEPORT`) cannot share the port, so binding one briefly tells whether
/// the port is taken, and gives the operating system's reason when the address is not on
/// this host. (Two nodes starting at the same instant could still both pass; the window is
/// the few microseconds between this check and libp2p's bind.)
pub(crate) fn check_listen_addr(addr: &Multiaddr) -> Result<(), String> {
    let Some(sock) = ip_tcp(addr) else {
        return Ok(());
    };
    match TcpListener::bind(sock) {
        Ok(_) => Ok(()),
        Err(e) => Err(explain_bind_error(sock, &e)),
    }
}

/// Turns a bind error into a sentence that says what to do.
pub(crate) fn explain_bind_error(sock: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "port {} is already in use ({e}), perhaps by another node; pick another port, or /tcp/0 for any free one",
            sock.port()
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "{} is not an address of this host ({e}); use one of its addresses (`ip addr`), or 0.0.0.0 for all of them",
            sock.ip()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "not allowed to bind port {} ({e}); ports below 1024 need privileges, use a higher one",
            sock.port()
        ),
        _ => e.to_string(),
    }
}

/// Whether libp2p (TCP, optionally behind DNS) can dial `addr`; otherwise what to write.
pub(crate) fn check_dialable(addr: &Multiaddr) -> Result<(), String> {
    let mut it = addr.iter();
    let host_ok = matches!(
        it.next(),
        Some(
            Protocol::Ip4(_)
                | Protocol::Ip6(_)
                | Protocol::Dns(_)
                | Protocol::Dns4(_)
                | Protocol::Dns6(_)
        )
    );
    let tcp_ok = matches!(it.next(), Some(Protocol::Tcp(_)));
    let rest_ok = it.all(|p| matches!(p, Protocol::P2p(_)));
    if host_ok && tcp_ok && rest_ok {
        Ok(())
    } else {
        Err("unsupported address; this node dials TCP only: /ip4/ADDR/tcp/PORT, /ip6/ADDR/tcp/PORT or /dns4/HOST/tcp/PORT, optionally followed by /p2p/DEVICE_ID".into())
    }
}

/// The `/p2p/<id>` of an address, if it has one.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// Whether a bootstrap address points at this node itself: its own device id, or (with no
/// device id) one of the addresses it listens on. A seed list shared by every node
/// contains each node's own address; dialling it would only fail.
pub(crate) fn is_own_address(addr: &Multiaddr, me: &PeerId, listening: &[Multiaddr]) -> bool {
    match peer_of(addr) {
        Some(peer) => peer == *me,
        None => listening.contains(addr),
    }
}

/// Whether `addr` listens on every interface (`0.0.0.0` or `::`): libp2p then reports one
/// address per interface, as it finds them.
pub(crate) fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(a) => a.is_unspecified(),
        Protocol::Ip6(a) => a.is_unspecified(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_is_found() {
        // (The same check against a real node, whose listener shares ports, is in
        // the integration tests.)
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let e = check_listen_addr(&addr).unwrap_err();
        assert!(e.contains(&format!("port {port} is already in use")), "{e}");
        drop(holder);
        check_listen_addr(&addr).unwrap();
        check_listen_addr(&"/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    }

    #[test]
    fn an_address_not_on_this_host_gives_the_os_reason() {
        // TEST-NET-3: never assigned to a host.
        let e = check_listen_addr(&"/ip4/203.0.113.9/tcp/0".parse().unwrap()).unwrap_err();
        assert!(e.contains("not an address of this host"), "{e}");
        assert!(e.contains("os error"), "{e}");
    }

    #[test]
    fn dialable_addresses() {
        for ok in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/dns4/localhost/tcp/1",
            "/dns/example.com/tcp/1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp",
        ] {
            check_dialable(&ok.parse().unwrap()).unwrap();
        }
        for bad in [
            "/ip4/127.0.0.1/udp/1/quic-v1",
            "/ip4/127.0.0.1",
            "/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp",
        ] {
            assert!(check_dialable(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_addresses_are_recognised() {
        let me = PeerId::random();
        let other = PeerId::random();
        let listening: Vec<Multiaddr> = vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()];
        let with = |p: &PeerId| -> Multiaddr {
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{p}").parse().unwrap()
        };
        assert!(is_own_address(&with(&me), &me, &listening));
        assert!(!is_own_address(&with(&other), &me, &listening));
        assert!(is_own_address(&listening[0], &me, &listening));
        assert!(!is_own_address(
            &"/ip4/127.0.0.1/tcp/4002".parse().unwrap(),
            &me,
            &listening
        ));
    }

    #[test]
    fn error_chains_show_the_hidden_cause() {
        let inner = std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no such address");
        let outer: libp2p::TransportError<std::io::Error> = libp2p::TransportError::Other(inner);
        assert_eq!(error_chain(&outer), "no such address");
    }
}

//! The opt-in admin endpoint ([`crate::MeshNodeBuilder::admin`]): Prometheus metrics, a
//! read-only JSON API, server-sent events and a live dashboard page, served by `axum` on
//! the node's tokio runtime.
//!
//! Routes (the book's "Operating a mesh" chapter shows sample answers):
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /` | the dashboard (one self-contained HTML page) |
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /api/node` | this node: id, name, incarnation, addresses, counters |
//! | `GET /api/peers` | [`crate::PeerInfo`] of every known device |
//! | `GET /api/stores` | [`crate::StoreInfo`] of every joined store |
//! | `GET /api/stores/{id}` | every slice of one store, its data as JSON |
//! | `GET /api/events[?store=ID]` | [`crate::NodeEvent`]s as server-sent events |

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use libp2p::Multiaddr;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::ids::{DeviceId, Incarnation, StoreId};
use crate::metrics::Counters;

/// The dashboard page, embedded: no build step, no CDN, nothing else to serve.
const DASHBOARD: &str = include_str!("dashboard.html");
/// Longest the server waits for open connections (event streams) to end at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Server-sent-event comment lines that keep idle streams (and proxies) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// What the endpoint reads from the node.
pub(crate) struct Source {
    pub device: DeviceId,
    pub name: String,
    pub incarnation: Incarnation,
    pub listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    pub counters: Arc<Counters>,
    pub started: SystemTime,
}

struct AppState {
    src: Source,
    /// Bound to a loopback address: requests must name the host by IP or `localhost`.
    loopback: bool,
    registry: Registry,
    /// Turns true at shutdown: event streams end, so the server can stop gracefully.
    closing: watch::Receiver<bool>,
}

/// A running admin endpoint; stopped with [`stop`](Self::stop) or when dropped.
pub(crate) struct AdminServer {
    addr: SocketAddr,
    closing: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AdminServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ends the event streams and stops accepting, waiting up to two seconds.
    pub async fn stop(mut self) {
        let _ = self.closing.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = self.closing.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `addr` and serves the endpoint for `src` until stopped.
pub(crate) async fn serve(addr: SocketAddr, src: Source) -> Result<AdminServer> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Admin {
            addr,
            reason: e.to_string(),
        })?;
    let bound = listener.local_addr().map_err(|e| Error::Admin {
        addr,
        reason: e.to_string(),
    })?;
    let mut registry = Registry::default();
    crate::metrics::register(&src.counters, &mut registry);
    let (closing_tx, closing) = watch::channel(false);
    let state = Arc::new(AppState {
        src,
        loopback: bound.ip().is_loopback(),
        registry,
        closing: closing.clone(),
    });
    let app = router(state);
    let mut shutdown = closing;
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = shutdown.wait_for(|c| *c).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::warn!(error = %e, "admin endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "admin endpoint listening");
    Ok(AdminServer {
        addr: bound,
        closing: closing_tx,
        task: Some(task),
    })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/api/node", get(node))
        .route("/api/peers", get(peers))
        .route("/api/stores", get(stores))
        .route("/api/stores/{id}", get(store))
        .route("/api/events", get(events))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// On a loopback endpoint, refuses requests whose `Host` is a domain name other than
/// `localhost`: a web page on another site could otherwise point its own domain at
/// 127.0.0.1 (DNS rebinding) and read the API from the user's browser.
async fn check_host(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if st.loopback {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !host_is_local(host) {
            return error(
                StatusCode::FORBIDDEN,
                format!("Host {host:?} refused: a loopback admin endpoint answers requests for an IP address or localhost only"),
            );
        }
    }
    next.run(req).await
}

/// Whether a `Host` header names an IP address or `localhost` (with or without a port).
fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no route {}; try /, /metrics, /api/node, /api/peers, /api/stores, /api/stores/ID, /api/events",
            uri.path()
        ),
    )
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &st.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        ),
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn node(State(st): State<Arc<AppState>>) -> Json<Value> {
    let s = &st.src;
    let m = s.counters.snapshot();
    let addrs: Vec<String> = s
        .listen_addrs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|a| format!("{a}/p2p/{}", s.device))
        .collect();
    let stores: Vec<String> = s
        .counters
        .intro
        .stores()
        .into_iter()
        .map(|st| st.id.to_string())
        .collect();
    Json(json!({
        "device_id": s.device,
        "name": s.name,
        "incarnation": s.incarnation,
        "version": env!("CARGO_PKG_VERSION"),
        "listen_addrs": addrs,
        "started_at_ms": ms(s.started),
        "uptime_ms": SystemTime::now().duration_since(s.started).map(|d| d.as_millis() as u64).unwrap_or(0),
        "stores": stores,
        "peers_online": m.peers_online,
        "event_subscribers": s.counters.intro.subscribers(),
        "metrics": {
            "published": m.published,
            "delivered": m.delivered,
            "applied": m.applied,
            "presence_received": m.presence_received,
            "rejected": m.rejected,
            "devices_removed": m.devices_removed,
            "connection_failures": m.connection_failures,
            "sync_over_budget": m.sync_over_budget,
            "gossip_over_rate": m.gossip_over_rate,
            "store_coalesced": m.store_coalesced,
            "inputs_coalesced": m.inputs_coalesced,
            "tombstones": m.tombstones,
            "devices_refused": m.devices_refused,
            "subscriptions_refused": m.subscriptions_refused,
            "messages_charged": m.messages_charged,
            "peers_graylisted": m.peers_graylisted,
        },
    }))
}

async fn peers(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!(st.src.counters.intro.peers()))
}

async fn stores(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!(st.src.counters.intro.stores()))
}

async fn store(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let id = match StoreId::new(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let intro = &st.src.counters.intro;
    let Some(view) = intro.store_view(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("this node has not joined store `{id}`; GET /api/stores lists the ones it has"),
        );
    };
    let mut names: HashMap<DeviceId, String> = intro
        .peers()
        .into_iter()
        .filter_map(|p| Some((p.device_id, p.name?)))
        .collect();
    names.insert(st.src.device, st.src.name.clone());
    let slices: Vec<Value> = view
        .slices_json()
        .into_iter()
        .map(|(info, data)| {
            json!({
                "device_id": info.device_id,
                "name": names.get(&info.device_id),
                "local": info.local,
                "version": info.version,
                "updated_at": info.updated_at,
                "data": data,
            })
        })
        .collect();
    Json(json!({ "id": id, "slices": slices })).into_response()
}

/// The `store` query parameter, if any (`?store=ID`).
fn store_filter(uri: &Uri) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let v = kv.strip_prefix("store=")?;
        Some(v.to_string())
    })
}

async fn events(
    State(st): State<Arc<AppState>>,
    uri: Uri,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let filter = store_filter(&uri);
    let rx = st.src.counters.intro.subscribe();
    let closing = st.closing.clone();
    // First event: the subscription is live, so a client knows that nothing it does from
    // here on is missed.
    let hello = Event::default()
        .json_data(json!({ "event": "subscribed", "device_id": st.src.device }))
        .unwrap_or_default();
    let first = futures::stream::once(async move { Ok(hello) });
    let rest = futures::stream::unfold(
        (rx, closing, filter),
        |(mut rx, mut closing, filter)| async move {
            loop {
                let ev = tokio::select! {
                    ev = rx.recv() => ev?,
                    _ = closing.wait_for(|c| *c) => return None,
                };
                if let (Some(f), Some(s)) = (&filter, ev.store()) {
                    if s.as_str() != f {
                        continue;
                    }
                }
                if filter.is_some()
                    && ev.store().is_none()
                    && !matches!(ev, crate::NodeEvent::Lagged { .. })
                {
                    continue;
                }
                let out = Event::default().json_data(&ev).unwrap_or_default();
                return Some((Ok(out), (rx, closing, filter)));
            }
        },
    );
    Sse::new(futures::StreamExt::chain(first, rest))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::host_is_local;

    #[test]
    fn only_ip_and_localhost_hosts_are_local() {
        for ok in [
            "127.0.0.1:9090",
            "localhost:80",
            "LOCALHOST",
            "[::1]:9090",
            "10.0.0.5",
        ] {
            assert!(host_is_local(ok), "{ok}");
        }
        for bad in [
            "evil.example:9090",
            "evil.example",
            "",
            "127.0.0.1.nip.io:1",
        ] {
            assert!(!host_is_local(bad), "{bad}");
        }
    }
}

//! A minimal Prometheus endpoint (`--metrics ADDR`): `GET /metrics` answers the node's
//! gauges and its counters of rejected input, in the text exposition format. Served by the
//! same HTTP stack as the local API (`crate::http::serve_router`: hyper, with its connection
//! cap and timeouts), on its own address.

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::net::{Client, Status};

/// Most scrapers connected at once.
const MAX_SCRAPERS: usize = 8;

/// Binds `addr` and serves until the returned task is aborted. Returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    client: Client,
) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics\n") })
        .with_state(client);
    let task = tokio::spawn(crate::http::serve_router(listener, app, MAX_SCRAPERS));
    Ok((task, bound))
}

async fn scrape(State(client): State<Client>) -> Response {
    match client.status().await {
        Ok(status) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(&status),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "node stopping\n").into_response(),
    }
}

/// Renders the status as Prometheus text.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "ptpchat_connected_peers",
        "Peers with at least one open connection.",
        s.connected_peers as u64,
    );
    gauge(
        "ptpchat_dht_records",
        "Records held in the local DHT store.",
        s.dht_records as u64,
    );
    if let Some(m) = &s.mail {
        gauge(
            "ptpchat_mail_items",
            "Messages held in mailboxes for offline users.",
            m.items,
        );
        gauge(
            "ptpchat_mail_bytes",
            "Bytes of sealed messages held in mailboxes.",
            m.bytes,
        );
        gauge(
            "ptpchat_mailboxes",
            "Mailboxes holding at least one message.",
            m.mailboxes,
        );
    }
    gauge(
        "ptpchat_listen_addrs",
        "Addresses this node listens on.",
        s.listen_addrs.len() as u64,
    );
    let _ = writeln!(
        out,
        "# HELP ptpchat_rejected_total Bad input refused, by kind.\n# TYPE ptpchat_rejected_total counter"
    );
    for (kind, n) in &s.rejected {
        let _ = writeln!(out, "ptpchat_rejected_total{{kind=\"{kind}\"}} {n}");
    }
    for (name, help, value) in [
        (
            "ptpchat_lookups_total",
            "Directory lookups run through the DHT.",
            s.lookups.done,
        ),
        (
            "ptpchat_lookups_found_total",
            "Of those, the ones the DHT answered with a valid document.",
            s.lookups.found,
        ),
        (
            "ptpchat_lookup_requests_total",
            "DHT requests sent by those lookups.",
            s.lookups.requests,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    out
}

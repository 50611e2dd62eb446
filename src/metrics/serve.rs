//! `GET /metrics` on the `--metrics` address, through the node's HTTP stack
//! (`crate::http::serve_router`: hyper, with its connection cap and timeouts). Scrapes run
//! one at a time: each reads the node's status, then encodes the registry.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{Exporter, CONTENT_TYPE};
use crate::net::Client;

/// Most scrapers connected at once.
const MAX_SCRAPERS: usize = 8;
/// How long a scrape waits for the node's status (a busy event loop) before it answers 503.
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

struct Scrapes {
    exporter: Exporter,
    client: Client,
    /// One scrape at a time: each fills the registry's read-at-scrape part, then encodes.
    turn: tokio::sync::Mutex<()>,
}

/// Binds `addr` and serves until the returned task is aborted. Returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    exporter: Exporter,
    client: Client,
) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let state = Arc::new(Scrapes {
        exporter,
        client,
        turn: tokio::sync::Mutex::new(()),
    });
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics\n") })
        .with_state(state);
    let task = tokio::spawn(crate::http::serve_router(listener, app, MAX_SCRAPERS));
    Ok((task, bound))
}

async fn scrape(State(s): State<Arc<Scrapes>>) -> Response {
    let _turn = s.turn.lock().await;
    let status = match tokio::time::timeout(STATUS_WAIT, s.client.status()).await {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => return (StatusCode::SERVICE_UNAVAILABLE, "node stopping\n").into_response(),
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "node busy\n").into_response(),
    };
    let outbox = match s.exporter.store.clone() {
        Some(store) => match tokio::task::spawn_blocking(move || store.outbox_depth()).await {
            Ok(Ok(depth)) => Some(depth),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read the outbox for the metrics");
                None
            }
            Err(_) => None,
        },
        None => None,
    };
    // Encoding reads /proc and walks every family: off the async workers.
    let scrapes = s.clone();
    let Ok(text) =
        tokio::task::spawn_blocking(move || scrapes.exporter.encode(status, outbox)).await
    else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "could not encode\n").into_response();
    };
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

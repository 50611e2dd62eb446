//! The local HTTP API (`--http ADDR`, loopback by default): the node's operations
//! ([`crate::control::Operations`], the same ones the control socket serves) as JSON over
//! HTTP, and one event stream (Server-Sent Events) of what arrives. Specified in
//! `docs/http-api.md`.
//!
//! A web page on any site can make the browser send requests to loopback, so every request
//! must prove it comes from the owner, the way Jupyter and Syncthing do it: the token (a
//! bearer header, or the cookie `POST /api/v1/session` sets), a `Host` that names this
//! server by a loopback name and its port (DNS rebinding), an `Origin`, when there is
//! one, that is this server (CSRF), and no CORS at all. Every answer carries a strict
//! Content-Security-Policy.

mod guard;
mod routes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::control::Operations;

pub use guard::Token;

/// Largest request body taken (JSON requests are small; attachments go by path).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most event streams open at once; one more is answered 503.
pub const MAX_EVENT_STREAMS: usize = 128;

/// The serving HTTP API; stops with [`HttpServer::shutdown`].
pub struct HttpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` and serves `ops`, to those who hold `token`.
    pub async fn bind(addr: SocketAddr, ops: Operations, token: Token) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(routes::State {
            upload_limit: ops.messenger().map_or(0, |m| {
                usize::try_from(m.max_attachment()).unwrap_or(usize::MAX)
            }),
            ops,
            guard: guard::Guard::new(token, addr),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_EVENT_STREAMS)),
        });
        let app = routes::router(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the HTTP API stopped");
            }
        });
        Ok(HttpServer { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving; open event streams end with it.
    pub async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The token in `home`, made (random, 0600) the first time: it stays the same across
/// restarts, so a bot configured once keeps working.
pub fn token_in(home: &Path) -> std::io::Result<Token> {
    Token::load_or_create(&home.join(guard::TOKEN_FILE))
}

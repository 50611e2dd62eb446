//! The local HTTP API (`--http ADDR`, loopback by default): the node's operations
//! ([`crate::control::Operations`], the same ones the control socket serves) as JSON over
//! HTTP, and one event stream (Server-Sent Events) of what arrives. Specified in
//! `docs/http-api.md`.
//!
//! A web page on any site can make the browser send requests to loopback, so every request
//! must prove it comes from the owner, the way Jupyter and Syncthing do it: the token (a
//! bearer header, never a cookie), a `Host` that names this
//! server by a loopback name and its port (DNS rebinding), an `Origin`, when there is
//! one, that is this server (CSRF), and no CORS at all. Every answer carries a strict
//! Content-Security-Policy.

mod events;
mod files;
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
/// Most connections open at once (event streams among them); one more is closed at once, so
/// nobody on the machine can use up the node's file descriptors through this port.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection that has not sent a request's headers in this long is closed (slowloris).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A connection whose answers make no way out for this long is closed: its reader stopped
/// reading (requests sent and never read would hold a connection for good otherwise).
pub const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(15);

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
        let task = tokio::spawn(serve_router(listener, app, MAX_CONNECTIONS));
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

/// Accepts connections and serves each with `app` until aborted (at most `max` at once);
/// aborting ends every connection with it. The metrics endpoint is served by it too.
pub(crate) async fn serve_router(listener: TcpListener, app: axum::Router, max: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was taken: wait a
                // little rather than spin.
                tracing::debug!(error = %e, "HTTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(Watched::new(stream)), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

/// The token in `home`, made (random, 0600) the first time: it stays the same across
/// restarts, so a bot configured once keeps working.
pub fn token_in(home: &Path) -> std::io::Result<Token> {
    Token::load_or_create(&home.join(guard::TOKEN_FILE))
}

/// A connection whose writes give up after [`WRITE_STALL`] without progress.
struct Watched {
    io: tokio::net::TcpStream,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Watched {
    fn new(io: tokio::net::TcpStream) -> Self {
        Watched { io, stalled: None }
    }

    /// After a write that could not go on: whether it has been stuck too long (and if not,
    /// the timer wakes the task when it has).
    fn given_up(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        std::future::Future::poll(timer.as_mut(), cx).is_ready()
    }

    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match r {
            Poll::Pending if self.given_up(cx) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

//! A minimal Prometheus endpoint (`--metrics ADDR`): `GET /metrics` answers the node's
//! gauges and its counters of rejected input, in the text exposition format.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::net::{Client, Status};

/// Longest request head read from a scraper.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most scrapes served at once.
const MAX_SCRAPERS: usize = 8;
/// How long a scraper may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves until the returned task is aborted. Returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    client: Client,
) -> std::io::Result<(JoinHandle<()>, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let client = client.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, client).await {
                    debug!(error = %e, "metrics request failed");
                }
                drop(permit);
            });
        }
    });
    Ok((task, bound))
}

async fn answer(mut stream: TcpStream, client: Client) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow scraper"))??;
    let (code, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET / ") {
        match client.status().await {
            Ok(status) => ("200 OK", render(&status)),
            Err(_) => ("503 Service Unavailable", "node stopping\n".to_string()),
        }
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    let response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
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

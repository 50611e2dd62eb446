//! Section 8, the browser app and the HTTP API (`web`): two nodes in this process on loopback TCP,
//! each serving its HTTP API: one 100-byte message from A's API (`POST /api/v1/send` on a
//! kept-alive connection) to B's event stream (`GET /api/v1/events`, the `data:` line read),
//! interleaved sample by sample with the same message from A's control socket to B's
//! `recv --follow`, so the two paths share the machine's noise; the app's first load (its
//! three assets on a new connection, then the API calls the page makes before it shows
//! anything); the assets' size, raw and gzip-compressed; and the resident memory this
//! process gains with 100 event streams open on B.

use std::path::Path;
use std::time::{Duration, Instant};

use ptpchat::control::{ControlRequest, ControlResponse};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

pub struct Web {
    pub socket: Vec<Duration>,
    pub http: Vec<Duration>,
    pub assets: Vec<Duration>,
    pub ready: Vec<Duration>,
    pub asset_bytes: usize,
    pub asset_gzip_bytes: Option<usize>,
    pub streams: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

/// This process's resident memory.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One kept-alive HTTP/1.1 connection to a node's API.
struct Http {
    r: BufReader<TcpStream>,
    host: String,
    token: String,
}

impl Http {
    async fn connect(addr: &str, token: &str) -> Http {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Http {
            r: BufReader::new(s),
            host: addr.to_string(),
            token: token.to_string(),
        }
    }

    async fn write(&mut self, method: &str, path: &str, json: Option<&str>) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n",
            self.host, self.token
        );
        if let Some(b) = json {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        self.r.get_mut().write_all(req.as_bytes()).await.unwrap();
    }

    /// Reads one answer (the node's answers here all carry a Content-Length).
    async fn read(&mut self) -> (u16, Vec<u8>) {
        let (status, headers) = head(&mut self.r).await;
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .expect("a Content-Length");
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).await.unwrap();
        (status, body)
    }

    async fn call(&mut self, method: &str, path: &str, json: Option<&str>) -> Vec<u8> {
        self.write(method, path, json).await;
        let (status, body) = self.read().await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        body
    }
}

async fn head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            return (status, headers);
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

/// An open event stream, its head read.
async fn events(addr: &str, token: &str) -> BufReader<TcpStream> {
    let mut h = Http::connect(addr, token).await;
    h.write("GET", "/api/v1/events", None).await;
    let (status, _) = head(&mut h.r).await;
    assert_eq!(status, 200);
    h.r
}

/// The data of the next `message` event.
async fn next_message(r: &mut BufReader<TcpStream>) -> String {
    let mut event = String::from("message");
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).await.unwrap() > 0,
            "the stream ended"
        );
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            if event == "message" {
                return v.trim().to_string();
            }
            event = "message".into();
        }
    }
}

async fn line(r: &mut BufReader<UnixStream>) -> ControlResponse {
    let mut l = String::new();
    r.read_line(&mut l).await.unwrap();
    serde_json::from_str(&l).unwrap()
}

fn request(r: &ControlRequest) -> Vec<u8> {
    let mut v = serde_json::to_vec(r).unwrap();
    v.push(b'\n');
    v
}

fn token(home: &Path) -> String {
    std::fs::read_to_string(home.join("http.token"))
        .unwrap()
        .trim()
        .to_string()
}

pub async fn run(samples: usize, streams: usize) -> Web {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = super::pair_with(dir.path(), "/ip4/127.0.0.1/tcp/0", true).await;
    let (a_http, b_http) = (
        a.http_addr.unwrap().to_string(),
        b.http_addr.unwrap().to_string(),
    );
    let (a_token, b_token) = (token(&dir.path().join("a")), token(&dir.path().join("b")));
    let b_uuid = b.id.as_ref().unwrap().uuid.to_string();

    // Both readers at B see every message, whichever way it was sent.
    let mut follow = BufReader::new(
        UnixStream::connect(dir.path().join("b/ptpchat.sock"))
            .await
            .unwrap(),
    );
    follow
        .get_mut()
        .write_all(&request(&ControlRequest::Recv {
            since: None,
            follow: true,
            channel: None,
        }))
        .await
        .unwrap();
    let mut sse = events(&b_http, &b_token).await;
    let mut ctl = BufReader::new(
        UnixStream::connect(dir.path().join("a/ptpchat.sock"))
            .await
            .unwrap(),
    );
    let mut api = Http::connect(&a_http, &a_token).await;
    let text = "y".repeat(100);
    let body = serde_json::json!({ "to": b_uuid, "text": text }).to_string();
    let (mut socket, mut http) = (Vec::new(), Vec::new());
    for i in 0..samples + 20 {
        let send = request(&ControlRequest::Send {
            to: b_uuid.clone(),
            text: text.clone(),
            attach: vec![],
            timeout_ms: None,
            idempotency_key: None,
        });
        let t0 = Instant::now();
        ctl.get_mut().write_all(&send).await.unwrap();
        let got = line(&mut follow).await;
        let dt_socket = t0.elapsed();
        assert!(got.ok && got.data.is_some());
        next_message(&mut sse).await;
        assert!(line(&mut ctl).await.ok);

        let t0 = Instant::now();
        api.write("POST", "/api/v1/send", Some(&body)).await;
        let got = next_message(&mut sse).await;
        let dt_http = t0.elapsed();
        assert!(got.contains(&text));
        line(&mut follow).await;
        let (status, _) = api.read().await;
        assert_eq!(status, 200);
        // The first messages warm up connections and caches.
        if i >= 20 {
            socket.push(dt_socket);
            http.push(dt_http);
        }
    }

    // The app's first load, as a browser would fetch it on a new connection.
    let (mut assets, mut ready) = (Vec::new(), Vec::new());
    let mut asset_bytes = 0;
    let mut bodies = Vec::new();
    for i in 0..samples.clamp(5, 200) {
        let t0 = Instant::now();
        let mut h = Http::connect(&a_http, &a_token).await;
        let mut bytes = 0;
        for path in ["/", "/app.js", "/app.css"] {
            let b = h.call("GET", path, None).await;
            bytes += b.len();
            if i == 0 {
                bodies.push(b);
            }
        }
        let t_assets = t0.elapsed();
        for path in [
            "/api/v1/id",
            "/api/v1/contacts",
            "/api/v1/channels",
            "/api/v1/history",
        ] {
            h.call("GET", path, None).await;
        }
        assets.push(t_assets);
        ready.push(t0.elapsed());
        asset_bytes = bytes;
    }
    let asset_gzip_bytes = gzip_sizes(&bodies);

    // Memory for event streams held open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = rss_kib();
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        open.push(events(&b_http, &b_token).await);
    }
    // Their once-a-second looks at the CONNECT requests run a few times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after_kib = rss_kib();
    drop(open);

    drop(follow);
    drop(sse);
    a.shutdown().await;
    b.shutdown().await;
    Web {
        socket,
        http,
        assets,
        ready,
        asset_bytes,
        asset_gzip_bytes,
        streams,
        rss_before_kib,
        rss_after_kib,
    }
}

/// The assets' total size once each is compressed with `gzip -9` (None without gzip).
fn gzip_sizes(bodies: &[Vec<u8>]) -> Option<usize> {
    let mut total = 0;
    for b in bodies {
        let mut child = std::process::Command::new("gzip")
            .arg("-9c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        std::io::Write::write_all(child.stdin.as_mut()?, b).ok()?;
        drop(child.stdin.take());
        total += child.wait_with_output().ok()?.stdout.len();
    }
    Some(total)
}

//! The local HTTP API through the real binary: who may use it (token, Host, Origin, no
//! CORS, the headers every answer carries), and two nodes chatting through it, the
//! receiver reading an event stream that resumes where it broke off.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{cli, Daemon};

const WAIT: Duration = Duration::from_secs(30);

/// An HTTP answer, as read off the socket.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    bytes: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// The node's HTTP address and token, from `ptpchat ui --json`.
fn ui(home: &Path) -> (String, String) {
    let r = cli(home, &["ui", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    let url = v["url"].as_str().unwrap();
    let token = url.split("#token=").nth(1).unwrap().to_string();
    (v["address"].as_str().unwrap().to_string(), token)
}

/// Sends one request with exactly these header lines (no others are added but the body's
/// length) and reads the whole answer.
fn raw(addr: &str, method: &str, path: &str, headers: &[String], body: impl AsRef<[u8]>) -> Answer {
    let body = body.as_ref();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    // A server that refuses a body too large may stop reading it: the answer still comes.
    let _ = s.write_all(&req);
    let mut reader = BufReader::new(s);
    let (status, headers) = head(&mut reader);
    let mut body = Vec::new();
    let _ = reader.read_to_end(&mut body);
    let bytes = if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        dechunk(&body)
    } else {
        body
    };
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
    }
}

fn head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            return (status, headers);
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[end + 2 + size + 2..];
    }
    out
}

/// The headers an honest caller sends: this server as Host, and the token.
fn honest(addr: &str, token: &str) -> Vec<String> {
    vec![
        format!("Host: {addr}"),
        format!("Authorization: Bearer {token}"),
    ]
}

fn get(addr: &str, token: &str, path: &str) -> Answer {
    raw(addr, "GET", path, &honest(addr, token), "")
}

fn post(addr: &str, token: &str, path: &str, body: serde_json::Value) -> Answer {
    let mut h = honest(addr, token);
    h.push("Content-Type: application/json".into());
    raw(addr, "POST", path, &h, body.to_string())
}

/// An event stream being read: `(id, event, data)` per event, in order.
struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    fn open(addr: &str, token: &str, last_event_id: Option<&str>) -> Events {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut req = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
        );
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let (status, headers) = head(&mut reader);
        assert_eq!(status, 200);
        assert!(headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type")
                && v.starts_with("text/event-stream")));
        Events { reader }
    }

    /// The next event that carries data (keep-alive comments are skipped). The stream
    /// comes chunked: chunk-size lines are told apart from event lines by their form.
    fn next(&mut self) -> (Option<String>, String, serde_json::Value) {
        let (mut id, mut event, mut data) = (None, String::from("message"), None);
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .expect("the stream goes on");
            assert!(n > 0, "the stream ended");
            let l = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = l.strip_prefix("id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = l.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                data = Some(serde_json::from_str(v.trim()).unwrap());
            } else if l.is_empty() {
                if let Some(d) = data.take() {
                    return (id, event, d);
                }
            }
        }
    }
}

/// `run`'s arguments for a test node bootstrapped to `relay`.
fn run_args(relay: &str, public: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    a.extend(["--bootstrap".to_string(), relay.to_string()]);
    if public {
        a.push("--public".into());
    }
    a
}

fn spawn_node(home: &Path, relay: &str, public: bool) -> Daemon {
    let args = run_args(relay, public);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::spawn(home, &args);
    d.wait_ready();
    d
}

/// Adds `target` as the contact `name`, as soon as the directory has it.
fn add_contact(addr: &str, token: &str, name: &str, target: &str) {
    let body = serde_json::json!({"name": name, "target": target});
    let deadline = Instant::now() + WAIT;
    loop {
        let added = post(addr, token, "/api/v1/contacts", body.clone());
        if added.status == 200 {
            assert_eq!(added.json()["name"], name);
            return;
        }
        assert!(Instant::now() < deadline, "{}", added.body);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_pair() -> (Vec<tempfile::TempDir>, Vec<Daemon>, String) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut relay = Daemon::spawn(
        dirs[0].path(),
        &["relay", "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let mut line = String::new();
    BufReader::new(relay.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let relay_addr = line.trim().to_string();
    let a = spawn_node(dirs[1].path(), &relay_addr, false);
    let b = spawn_node(dirs[2].path(), &relay_addr, true);
    (dirs, vec![relay, a, b], relay_addr)
}

/// Each check a web page of another site (or a stranger on the machine) would have to
/// get past, tried: no token, a wrong one, a DNS-rebinding Host, a foreign Origin, a
/// CORS preflight, a form post; and the headers every answer carries.
#[test]
fn only_the_owner_on_loopback_gets_in() {
    let home = tempfile::tempdir().unwrap();
    let node = Daemon::spawn(
        home.path(),
        &[
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--quiet",
        ],
    );
    node.wait_ready();
    let (addr, token) = ui(home.path());
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let port = addr.rsplit(':').next().unwrap();

    let id = get(&addr, &token, "/api/v1/id");
    assert_eq!(id.status, 200, "{}", id.body);
    let uuid = cli(home.path(), &["id", "--json"]).json()["uuid"].clone();
    assert_eq!(id.json()["uuid"], uuid, "the same answer as the CLI's");
    let csp = id.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(id.header("x-content-type-options"), Some("nosniff"));
    assert!(id.header("access-control-allow-origin").is_none());
    for name in ["localhost", "[::1]"] {
        let h = vec![
            format!("Host: {name}:{port}"),
            format!("Authorization: Bearer {token}"),
        ];
        assert_eq!(
            raw(&addr, "GET", "/api/v1/id", &h, "").status,
            200,
            "{name}"
        );
    }

    let host = format!("Host: {addr}");
    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        ("no token", vec![host.clone()], 401),
        (
            "a wrong token",
            vec![
                host.clone(),
                format!("Authorization: Bearer {}", "0".repeat(64)),
            ],
            401,
        ),
        (
            "the token without Bearer",
            vec![host.clone(), format!("Authorization: {token}")],
            401,
        ),
        (
            "a rebinding Host",
            vec![
                format!("Host: attacker.example:{port}"),
                format!("Authorization: Bearer {token}"),
            ],
            403,
        ),
        (
            "another port's Host",
            vec![
                "Host: 127.0.0.1:1".into(),
                format!("Authorization: Bearer {token}"),
            ],
            403,
        ),
        (
            "a foreign Origin",
            vec![
                host.clone(),
                format!("Authorization: Bearer {token}"),
                "Origin: http://attacker.example".into(),
            ],
            403,
        ),
        (
            "a cross-site fetch",
            vec![
                host.clone(),
                format!("Authorization: Bearer {token}"),
                "Sec-Fetch-Site: cross-site".into(),
            ],
            403,
        ),
    ];
    for (what, headers, want) in cases {
        let r = raw(&addr, "GET", "/api/v1/id", &headers, "");
        assert_eq!(r.status, want, "{what}: {}", r.body);
        assert!(
            !r.body.contains(uuid.as_str().unwrap()),
            "{what} learns nothing"
        );
        assert!(
            r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: words"
        );
        assert!(r.header("content-security-policy").is_some(), "{what}");
    }

    let no_host = raw(
        &addr,
        "GET",
        "/api/v1/id",
        &[format!("Authorization: Bearer {token}")],
        "",
    );
    assert!(
        matches!(no_host.status, 400 | 403),
        "no Host: {}",
        no_host.status
    );
    assert!(!no_host.body.contains(uuid.as_str().unwrap()));

    // A CORS preflight gets no permission; a form of another site cannot post.
    let preflight = raw(
        &addr,
        "OPTIONS",
        "/api/v1/send",
        &[
            host.clone(),
            "Origin: http://attacker.example".into(),
            "Access-Control-Request-Method: POST".into(),
        ],
        "",
    );
    assert!(preflight.status >= 400, "{}", preflight.status);
    assert!(preflight.header("access-control-allow-origin").is_none());
    let form = raw(
        &addr,
        "POST",
        "/api/v1/contacts",
        &[
            host.clone(),
            "Content-Type: application/x-www-form-urlencoded".into(),
        ],
        "name=evil&target=x",
    );
    assert_eq!(form.status, 401);
    let as_form = raw(
        &addr,
        "POST",
        "/api/v1/contacts",
        &[
            host.clone(),
            format!("Authorization: Bearer {token}"),
            "Content-Type: text/plain".into(),
        ],
        "{}",
    );
    assert_eq!(as_form.status, 415, "{}", as_form.body);
    let contacts = get(&addr, &token, "/api/v1/contacts");
    assert_eq!(contacts.json(), serde_json::json!([]), "nothing was added");

    // No cookie opens it: a browser would send one to any server on this host.
    let by_cookie = raw(
        &addr,
        "GET",
        "/api/v1/id",
        &[host.clone(), format!("Cookie: ptpchat_token={token}")],
        "",
    );
    assert_eq!(by_cookie.status, 401, "{}", by_cookie.body);
    for page in ["/api/v1/session", "/api/v1/id"] {
        let answer = post(&addr, &token, page, serde_json::json!({}));
        assert!(
            answer.header("set-cookie").is_none(),
            "{page} sets no cookie"
        );
    }

    // Bad input is answered in words, with the CLI's kinds.
    let bad = post(
        &addr,
        &token,
        "/api/v1/send",
        serde_json::json!({"to": "nobody", "text": "x"}),
    );
    // The kind is the CLI's (`send` to an unknown name exits 1: failed), and so are the words.
    assert_eq!(bad.status, 500, "{}", bad.body);
    assert_eq!(bad.json()["kind"], "failed");
    let by_cli = cli(home.path(), &["send", "nobody", "x"]);
    assert_eq!(by_cli.code, 1);
    assert!(
        by_cli
            .stderr
            .contains(bad.json()["error"].as_str().unwrap()),
        "{}",
        by_cli.stderr
    );
    let garbled = post(
        &addr,
        &token,
        "/api/v1/send",
        serde_json::json!({"text": 1}),
    );
    assert_eq!(garbled.status, 400, "{}", garbled.body);
    assert_eq!(garbled.json()["kind"], "bad_input");
    let big = post(
        &addr,
        &token,
        "/api/v1/send",
        serde_json::json!({"to": "x", "text": "y".repeat(ptpchat::http::MAX_BODY_BYTES + 1024)}),
    );
    assert_eq!(big.status, 413);
}

/// Alice sends Bob a message through her HTTP API; Bob's event stream shows it live, as
/// text (markup in it is data, not HTML); his stream, broken and reopened with the last
/// id it saw, goes on with the next message and nothing twice.
#[test]
fn two_nodes_chat_through_the_http_api() {
    let (dirs, _daemons, _relay) = start_pair();
    let (a_home, b_home) = (dirs[1].path(), dirs[2].path());
    let (a_addr, a_token) = ui(a_home);
    let (b_addr, b_token) = ui(b_home);
    let b_uuid = get(&b_addr, &b_token, "/api/v1/id").json()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    add_contact(&a_addr, &a_token, "bob", &b_uuid);

    let mut events = Events::open(&b_addr, &b_token, None);
    let hostile = "<img src=x onerror=alert(1)>";
    let sent = post(
        &a_addr,
        &a_token,
        "/api/v1/send",
        serde_json::json!({"to": "bob", "text": hostile}),
    );
    assert_eq!(sent.status, 200, "{}", sent.body);
    let sent = sent.json();
    assert_eq!(sent["status"], "delivered");
    let (id, event, data) = events.next();
    assert_eq!(event, "message");
    assert_eq!(data["text"], hostile, "the text as it was sent");
    assert_eq!(data["msg_id"], sent["msg_id"]);
    assert_eq!(
        id.as_deref(),
        sent["msg_id"].as_str(),
        "the event id is the message's"
    );
    drop(events);

    let second = post(
        &a_addr,
        &a_token,
        "/api/v1/send",
        serde_json::json!({"to": "bob", "text": "second"}),
    );
    assert_eq!(second.status, 200, "{}", second.body);
    let mut resumed = Events::open(&b_addr, &b_token, id.as_deref());
    let (_, _, data) = resumed.next();
    assert_eq!(
        data["text"], "second",
        "resumed after the last one seen, not before"
    );

    let history = get(&b_addr, &b_token, "/api/v1/history");
    let texts: Vec<_> = history
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![serde_json::json!(hostile), serde_json::json!("second")]
    );
    let unknown = Events::open(&b_addr, &b_token, Some("not-a-message-id")).next();
    assert_eq!(unknown.1, "error");
    assert_eq!(unknown.2["kind"], "not_found");
}

/// A bot that retries a send (its answer lost, the node restarted meanwhile) sends once:
/// the same key and message answer with the first send's id; the same key with another
/// message is refused; the recipient holds the message once. Through the CLI too.
#[test]
fn a_retry_with_the_same_key_sends_once_even_across_a_restart() {
    let (dirs, mut daemons, relay_addr) = start_pair();
    let (a_home, b_home) = (dirs[1].path(), dirs[2].path());
    let (a_addr, a_token) = ui(a_home);
    let (b_addr, b_token) = ui(b_home);
    let b_uuid = get(&b_addr, &b_token, "/api/v1/id").json()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    add_contact(&a_addr, &a_token, "bob", &b_uuid);
    let send = |addr: &str, token: &str, key: &str, text: &str| {
        let mut h = honest(addr, token);
        h.push("Content-Type: application/json".into());
        h.push(format!("Idempotency-Key: {key}"));
        let body = serde_json::json!({"to": "bob", "text": text}).to_string();
        raw(addr, "POST", "/api/v1/send", &h, &body)
    };
    let first = send(&a_addr, &a_token, "order-1", "once");
    assert_eq!(first.status, 200, "{}", first.body);
    let id = first.json()["msg_id"].clone();
    let again = send(&a_addr, &a_token, "order-1", "once");
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["msg_id"], id, "the first send's id");
    assert_eq!(again.json()["status"], "delivered");
    let other = send(&a_addr, &a_token, "order-1", "something else");
    assert!(other.status >= 400, "{}", other.body);
    assert!(other.json()["error"]
        .as_str()
        .unwrap()
        .contains("different message"));

    // A is killed and started again: the key still holds.
    drop(daemons.remove(1));
    daemons.push(spawn_node(a_home, &relay_addr, false));
    let (a_addr, a_token) = ui(a_home);
    let after = send(&a_addr, &a_token, "order-1", "once");
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(after.json()["msg_id"], id, "the same id after a restart");

    // The control socket takes the key as well.
    let by_cli = |text: &str| {
        cli(
            a_home,
            &[
                "send",
                "bob",
                text,
                "--idempotency-key",
                "order-2",
                "--json",
            ],
        )
    };
    let one = by_cli("via the CLI");
    assert_eq!(one.code, 0, "{}", one.stderr);
    let two = by_cli("via the CLI");
    assert_eq!(two.code, 0, "{}", two.stderr);
    assert_eq!(one.json()["msg_id"], two.json()["msg_id"]);

    let texts: Vec<String> = get(&b_addr, &b_token, "/api/v1/history")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, vec!["once", "via the CLI"], "each once");
}

/// The example bot (`examples/echo_bot.py`, Python's standard library alone) answers a
/// message through the API, and, started again, resumes after the last one it answered:
/// nothing is answered twice, nothing is missed.
#[test]
fn the_example_bot_answers_and_resumes() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED the_example_bot_answers_and_resumes: no python3 on this machine");
        return;
    }
    let (dirs, _daemons, _relay) = start_pair();
    let (a_home, b_home) = (dirs[1].path(), dirs[2].path());
    let (a_addr, a_token) = ui(a_home);
    let (b_addr, b_token) = ui(b_home);
    let b_uuid = get(&b_addr, &b_token, "/api/v1/id").json()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    add_contact(&a_addr, &a_token, "bob", &b_uuid);
    let state = b_home.join("bot.state");
    let bot = || {
        std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/echo_bot.py"))
            .arg("--ptpchat")
            .arg(common::bin())
            .arg("--home")
            .arg(b_home)
            .arg("--state")
            .arg(&state)
            .args(["--count", "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs")
    };
    let finish = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "the bot failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let echoes = || -> Vec<String> {
        get(&a_addr, &a_token, "/api/v1/history")
            .json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["direction"] == "in")
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect()
    };
    for text in ["hi", "again"] {
        let child = bot();
        // The bot's stream is open once it has read the node's address; a message sent
        // before that is in the history it catches up on.
        let sent = post(
            &a_addr,
            &a_token,
            "/api/v1/send",
            serde_json::json!({"to": "bob", "text": text}),
        );
        assert_eq!(sent.status, 200, "{}", sent.body);
        let said = finish(child);
        assert!(said.contains("answered"), "{said}");
    }
    let deadline = Instant::now() + WAIT;
    while echoes().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(echoes(), vec!["echo: hi", "echo: again"]);
}

/// Uploads `bytes` as the file `name`.
fn upload(addr: &str, token: &str, name: &str, bytes: &[u8]) -> Answer {
    let mut h = honest(addr, token);
    h.push("Content-Type: application/octet-stream".into());
    raw(
        addr,
        "POST",
        &format!("/api/v1/uploads?name={name}"),
        &h,
        bytes,
    )
}

/// Files go by upload (bounded by the attachment limit) and come back from the receiver's
/// node; a file from a peer is never a page of the app's origin: a picture comes inline, an
/// HTML file as an `application/octet-stream` download in a sandbox. The sender's stream
/// tells it the message was delivered.
#[test]
fn files_go_by_upload_and_come_back_as_files_not_pages() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut relay = Daemon::spawn(
        dirs[0].path(),
        &["relay", "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let mut line = String::new();
    BufReader::new(relay.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let relay_addr = line.trim().to_string();
    let mut args = run_args(&relay_addr, false);
    args.extend(["--max-attachment".to_string(), "4096".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = Daemon::spawn(dirs[1].path(), &args);
    a.wait_ready();
    let _b = spawn_node(dirs[2].path(), &relay_addr, true);
    let (a_home, b_home) = (dirs[1].path(), dirs[2].path());
    let (a_addr, a_token) = ui(a_home);
    let (b_addr, b_token) = ui(b_home);
    let b_uuid = get(&b_addr, &b_token, "/api/v1/id").json()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    add_contact(&a_addr, &a_token, "bob", &b_uuid);

    let mut form = honest(&a_addr, &a_token);
    form.push("Content-Type: application/x-www-form-urlencoded".into());
    let refused = raw(&a_addr, "POST", "/api/v1/uploads?name=x", &form, "a=b");
    assert_eq!(refused.status, 415, "{}", refused.body);
    let too_big = upload(&a_addr, &a_token, "big.bin", &[7u8; 5000]);
    assert_eq!(
        too_big.status, 413,
        "over the attachment limit: {}",
        too_big.body
    );

    // A name longer than a file system takes is shortened, not a failure.
    let long = upload(&a_addr, &a_token, &"%F0%9F%98%80".repeat(100), b"smile");
    assert_eq!(long.status, 200, "{}", long.body);
    // Only what was uploaded goes: not any file the node's user can read.
    let token_file = a_home.join("http.token");
    let sneaky = post(
        &a_addr,
        &a_token,
        "/api/v1/send",
        serde_json::json!({"to": "bob", "text": "x", "attach": [token_file.to_string_lossy()]}),
    );
    assert_eq!(sneaky.status, 400, "{}", sneaky.body);
    let page = b"<html><script>fetch('/api/v1/contacts')</script></html>";
    let png: &[u8] = b"\x89PNG\r\n\x1a\n not really, but named so";
    let html_up = upload(&a_addr, &a_token, "page.html", page);
    assert_eq!(html_up.status, 200, "{}", html_up.body);
    let png_up = upload(&a_addr, &a_token, "dot.png", png);
    assert_eq!(png_up.status, 200, "{}", png_up.body);
    let paths = [
        html_up.json()["path"].as_str().unwrap().to_string(),
        png_up.json()["path"].as_str().unwrap().to_string(),
    ];
    let mut a_events = Events::open(&a_addr, &a_token, None);
    let sent = post(
        &a_addr,
        &a_token,
        "/api/v1/send",
        serde_json::json!({"to": "bob", "text": "two files", "attach": paths}),
    );
    assert_eq!(sent.status, 200, "{}", sent.body);
    let id = sent.json()["msg_id"].as_str().unwrap().to_string();
    for p in &paths {
        assert!(!Path::new(p).exists(), "the upload {p} went once sent");
    }
    loop {
        let (_, event, data) = a_events.next();
        if event == "delivery" && data["msg_id"] == id.as_str() {
            assert_eq!(data["status"], "delivered");
            break;
        }
    }

    let a_uuid = get(&a_addr, &a_token, "/api/v1/id").json()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let fetch = |i: usize| {
        get(
            &b_addr,
            &b_token,
            &format!("/api/v1/files/{a_uuid}/{id}/{i}"),
        )
    };
    let deadline = Instant::now() + WAIT;
    let html = loop {
        let r = fetch(0);
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(html.status, 200, "{}", html.body);
    assert_eq!(html.bytes, page);
    assert_eq!(
        html.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(html
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    assert!(html
        .header("content-security-policy")
        .unwrap()
        .contains("sandbox"));
    assert_eq!(html.header("x-content-type-options"), Some("nosniff"));
    let deadline = Instant::now() + WAIT;
    let pic = loop {
        let r = fetch(1);
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(pic.status, 200, "{}", pic.body);
    assert_eq!(pic.bytes, png);
    assert_eq!(pic.header("content-type"), Some("image/png"));
    assert!(pic
        .header("content-disposition")
        .unwrap()
        .starts_with("inline"));
    assert_eq!(fetch(2).status, 404);
    // Known by its sender and its id: the same id from another sender names nothing.
    assert_eq!(
        get(&b_addr, &b_token, &format!("/api/v1/files/{b_uuid}/{id}/0")).status,
        404
    );
    let bad = get(
        &b_addr,
        &b_token,
        &format!("/api/v1/files/{a_uuid}/not-a-uuid/0"),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let stranger = raw(
        &b_addr,
        "GET",
        &format!("/api/v1/files/{a_uuid}/{id}/0"),
        &[format!("Host: {b_addr}")],
        "",
    );
    assert_eq!(stranger.status, 401, "no token, no file");
}

/// The app's page and the OpenAPI document: the page runs no inline script or style (the
/// policy forbids them, so one would be a broken page) and the document names every route.
#[test]
fn the_app_and_its_api_document_are_served() {
    let home = tempfile::tempdir().unwrap();
    let node = Daemon::spawn(
        home.path(),
        &[
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--quiet",
        ],
    );
    node.wait_ready();
    let (addr, token) = ui(home.path());
    let page = raw(&addr, "GET", "/", &[format!("Host: {addr}")], "");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    for tag in page.body.split("<script").skip(1) {
        assert!(
            tag.trim_start().starts_with("src="),
            "an inline script: <script{tag}"
        );
    }
    assert!(!page.body.contains("style="), "an inline style");
    assert!(!page.body.contains(" onclick="), "an inline handler");
    for asset in ["/app.js", "/app.css"] {
        let r = raw(&addr, "GET", asset, &[format!("Host: {addr}")], "");
        assert_eq!(r.status, 200, "{asset}");
    }
    let js = raw(&addr, "GET", "/app.js", &[format!("Host: {addr}")], "").body;
    assert!(
        !js.contains("innerHTML") && !js.contains("insertAdjacentHTML"),
        "the app puts no HTML on the page"
    );

    let doc = get(&addr, &token, "/api/v1/openapi.json");
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/routes.rs"))
            .unwrap();
    let mut named = 0;
    for piece in routes.split("\"/api/v1").skip(1) {
        let path = format!("/api/v1{}", piece.split('"').next().unwrap());
        named += 1;
        assert!(
            doc["paths"].get(&path).is_some(),
            "{path} is not in docs/openapi.json"
        );
    }
    assert!(named > 25, "{named} routes found");
    let qr = get(&addr, &token, "/api/v1/id/qr.svg");
    assert_eq!(qr.header("content-type"), Some("image/svg+xml"));
    assert!(qr.body.starts_with("<svg"));
}

/// Anyone on the machine can open connections to the port without a token: they are capped
/// (one past the cap is closed at once, so the node keeps its file descriptors) and one that
/// sends no request headers is closed after the header timeout (slowloris), after which the
/// owner gets in again. The node's control socket answers all along.
#[test]
fn idle_connections_are_capped_and_closed() {
    let home = tempfile::tempdir().unwrap();
    let node = Daemon::spawn(
        home.path(),
        &[
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--quiet",
        ],
    );
    node.wait_ready();
    let (addr, token) = ui(home.path());
    let cap = ptpchat::http::MAX_CONNECTIONS;
    let idle: Vec<TcpStream> = (0..cap + 40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let closed = |s: &TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut b = [0u8; 1];
        match (&*s).read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    let shut = idle.iter().filter(|s| closed(s)).count();
    assert!(
        (40..=60).contains(&shut),
        "{shut} of {} idle connections closed at once; the cap is {cap}",
        idle.len()
    );
    assert_eq!(cli(home.path(), &["status", "--json"]).code, 0);
    let deadline = Instant::now() + ptpchat::http::HEADER_TIMEOUT + Duration::from_secs(10);
    while idle.iter().any(|s| !closed(s)) {
        assert!(
            Instant::now() < deadline,
            "idle connections outlived the header timeout"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = get(&addr, &token, "/api/v1/id");
    assert_eq!(id.status, 200, "{}", id.body);
}

/// A client that sends requests and never reads the answers (no token needed for the app's
/// assets) would hold its connection for good: once the answers stop moving for the write
/// stall time the node closes it.
#[test]
fn a_client_that_stops_reading_is_let_go() {
    let home = tempfile::tempdir().unwrap();
    let node = Daemon::spawn(
        home.path(),
        &[
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--quiet",
        ],
    );
    node.wait_ready();
    let (addr, _) = ui(home.path());
    let asset = raw(&addr, "GET", "/app.js", &[format!("Host: {addr}")], "")
        .bytes
        .len();
    let requests = 2000;
    let mut s = TcpStream::connect(&addr).unwrap();
    let one = format!("GET /app.js HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(one.repeat(requests).as_bytes()).unwrap();
    std::thread::sleep(ptpchat::http::WRITE_STALL + Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(ended, "the connection is still open after {got} bytes");
    assert!(
        got < requests * asset,
        "every answer came ({got} bytes): the test did not fill the socket"
    );
}

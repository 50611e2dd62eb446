//! The API's routes: each one a [`ControlRequest`], carried out by the same
//! [`Operations`] as the control socket's, its answers turned into an HTTP answer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as With};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, Semaphore};

use super::guard::{Guard, Refused};
use super::MAX_BODY_BYTES;
use crate::control::{Answers, Collected, ControlRequest, ControlResponse, ErrorKind, Operations};
use crate::messaging::{Messenger, StatusChange};

/// What every handler shares.
pub(super) struct State {
    pub ops: Operations,
    /// The largest upload taken: the node's attachment limit.
    pub upload_limit: usize,
    pub guard: Guard,
    pub streams: Arc<Semaphore>,
}

type Shared = Arc<State>;

/// The Content-Security-Policy of every answer: nothing from anywhere but this server, no
/// inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The app, compiled in: it needs nothing but this server.
const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");
/// The API described for tools (OpenAPI 3.1).
pub(super) const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn asset(mime: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, mime)], body).into_response()
}

/// `GET /api/v1/id/qr.svg`: this node's contact URI as a QR code.
async fn qr(With(s): With<Shared>) -> Response {
    let mut out = Collected::default();
    let _ = s.ops.run(ControlRequest::Id, &mut out).await;
    let uri = out
        .0
        .pop()
        .filter(|r| r.ok)
        .and_then(|r| r.data)
        .and_then(|d| d.get("contact_uri")?.as_str().map(str::to_string));
    let Some(uri) = uri else {
        return refusal(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            "this node has no contact URI (a relay)",
        );
    };
    match crate::identity::qr_svg(&uri) {
        Ok(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Err(e) => refusal(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Failed, &e),
    }
}

/// The policy of a file served from the history: it is never a document that runs.
const FILE_CSP: &str = "default-src 'none'; img-src 'self'; sandbox";

pub(super) fn router(state: Shared) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/id",
            get(|s: With<Shared>| one(s, ControlRequest::Id)),
        )
        .route(
            "/api/v1/status",
            get(|s: With<Shared>| one(s, ControlRequest::Status)),
        )
        .route(
            "/api/v1/peers",
            get(|s: With<Shared>| one(s, ControlRequest::Peers)),
        )
        .route("/api/v1/whois/{uuid}", get(whois))
        .route("/api/v1/dial", post(dial))
        .route("/api/v1/send", post(send))
        .route("/api/v1/messages", get(messages))
        .route("/api/v1/history", get(history))
        .route("/api/v1/contacts", get(contacts).post(contacts_add))
        .route(
            "/api/v1/contacts/{name}",
            axum::routing::delete(contacts_rm),
        )
        .route("/api/v1/contacts/{name}/verify", post(contacts_verify))
        .route("/api/v1/channels", get(channels).post(channel_create))
        .route("/api/v1/channels/{channel}/join", post(channel_join))
        .route("/api/v1/channels/{channel}/leave", post(channel_leave))
        .route("/api/v1/channels/{channel}/members", get(channel_members))
        .route("/api/v1/channels/{channel}/invite", post(channel_invite))
        .route("/api/v1/channels/{channel}/remove", post(channel_remove))
        .route("/api/v1/channels/{channel}/send", post(channel_send))
        .route("/api/v1/connect", post(connect))
        .route("/api/v1/disconnect", post(disconnect))
        .route(
            "/api/v1/requests",
            get(|s: With<Shared>| one(s, ControlRequest::Requests)),
        )
        .route("/api/v1/requests/{id}/accept", post(accept))
        .route("/api/v1/requests/{id}/deny", post(deny))
        .route("/api/v1/events", get(events))
        .route(
            "/api/v1/uploads",
            post(upload).layer(DefaultBodyLimit::max(state.upload_limit)),
        )
        .route("/api/v1/files/{from}/{msg_id}/{index}", get(file))
        .route("/api/v1/id/qr.svg", get(qr))
        .route(
            "/api/v1/openapi.json",
            get(|| asset("application/json", OPENAPI)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
        .merge(api)
        .fallback(|| async { refusal(StatusCode::NOT_FOUND, ErrorKind::NotFound, "no such page") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            site_and_headers,
        ))
        .with_state(state)
}

/// Every request: the Host and Origin checks first (a page of another site learns
/// nothing, not even whether its token would do), then the answer gets its headers.
async fn site_and_headers(With(s): With<Shared>, req: Request, next: Next) -> Response {
    let mut res = match s.guard.check_site(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => refused(why),
    };
    let h = res.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

async fn require_token(With(s): With<Shared>, req: Request, next: Next) -> Response {
    match s.guard.check_token(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => refused(why),
    }
}

/// A request from someone who may not use the API: answered, and the connection closed
/// (it holds none of the connections the owner needs).
fn refused(why: Refused) -> Response {
    let status = match why {
        Refused::Token => StatusCode::UNAUTHORIZED,
        Refused::Host | Refused::Origin => StatusCode::FORBIDDEN,
    };
    let mut res = refusal(status, ErrorKind::Denied, why.message());
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// An error answer: `{"error": words, "kind": kind}`.
fn refusal(status: StatusCode, kind: ErrorKind, error: &str) -> Response {
    let body = serde_json::json!({ "error": error, "kind": kind });
    (status, axum::Json(body)).into_response()
}

/// The HTTP status for a refusal of this kind.
fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Denied => StatusCode::FORBIDDEN,
        ErrorKind::Unreachable => StatusCode::BAD_GATEWAY,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Pending => StatusCode::ACCEPTED,
        ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One answer: its data (`{}` if none) with 200, or 202 if the request did not finish
/// (a message queued); a refusal with its status. A kind on a success comes as the
/// `Ptpchat-Kind` header, a warning as `Ptpchat-Warning`.
fn one_answer(r: ControlResponse) -> Response {
    if !r.ok {
        let kind = r.kind.unwrap_or(ErrorKind::Failed);
        return refusal(
            status_of(kind),
            kind,
            r.error.as_deref().unwrap_or("failed"),
        );
    }
    let status = match r.kind {
        Some(ErrorKind::Pending) => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    let data = r.data.unwrap_or_else(|| serde_json::json!({}));
    let mut res = (status, axum::Json(data)).into_response();
    if let Some(kind) = r.kind {
        if let Ok(v) = serde_json::to_value(kind) {
            if let Some(v) = v.as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
                res.headers_mut().insert("ptpchat-kind", v);
            }
        }
    }
    if let Some(w) = r.warning {
        let ascii: String = w
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&ascii) {
            res.headers_mut().insert("ptpchat-warning", v);
        }
    }
    res
}

async fn one(With(s): With<Shared>, req: ControlRequest) -> Response {
    let mut out = Collected::default();
    let _ = s.ops.run(req, &mut out).await;
    match out.0.into_iter().next() {
        Some(r) => one_answer(r),
        None => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Failed,
            "no answer",
        ),
    }
}

/// A list: the data of each item, as a JSON array; a refusal anywhere refuses it all.
async fn list(s: &State, req: ControlRequest) -> Response {
    let mut out = Collected::default();
    let _ = s.ops.run(req, &mut out).await;
    let mut items = Vec::with_capacity(out.0.len());
    for r in out.0 {
        if !r.ok {
            return one_answer(r);
        }
        if let Some(d) = r.data.filter(|_| !r.done) {
            items.push(d);
        }
    }
    axum::Json(items).into_response()
}

/// A JSON body: `Content-Type: application/json` (a form of another site cannot send
/// one without asking first), and a `bad_input` answer in words when it does not parse.
fn body<T: DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<T, (StatusCode, String)> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the request as JSON (Content-Type: application/json)".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

/// Turns a JSON body into a request, or answers why not.
macro_rules! with_body {
    ($s:expr, $headers:expr, $bytes:expr, $t:ty, |$b:ident| $req:expr) => {
        match body::<$t>(&$headers, &$bytes) {
            Ok($b) => one($s, $req).await,
            Err((status, why)) => refusal(status, ErrorKind::BadInput, &why),
        }
    };
}

async fn whois(s: With<Shared>, Path(uuid): Path<String>) -> Response {
    one(s, ControlRequest::Whois { uuid }).await
}

#[derive(Deserialize)]
struct DialBody {
    addr: String,
}

async fn dial(s: With<Shared>, h: HeaderMap, b: Bytes) -> Response {
    with_body!(s, h, b, DialBody, |d| ControlRequest::Dial { addr: d.addr })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    to: String,
    text: String,
    #[serde(default)]
    attach: Vec<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// `POST /send`: the idempotency key comes as the `Idempotency-Key` header or in the body.
async fn send(s: With<Shared>, h: HeaderMap, b: Bytes) -> Response {
    let header_key = h
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let m = match body::<SendBody>(&h, &b) {
        Ok(m) => m,
        Err((status, why)) => return refusal(status, ErrorKind::BadInput, &why),
    };
    // Through this API a file is attached only once uploaded: a caller cannot make the
    // node send (and serve back) any file its user can read.
    if let Some(msgr) = s.ops.messenger() {
        let base = uploads_dir(msgr);
        if let Some(p) = m.attach.iter().find(|p| upload_of(&base, p).is_none()) {
            return refusal(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadInput,
                &format!("attach only what POST /api/v1/uploads answered, not {p:?}"),
            );
        }
    }
    let attached = m.attach.clone();
    let req = ControlRequest::Send {
        to: m.to,
        text: m.text,
        attach: m.attach,
        timeout_ms: m.timeout_ms,
        idempotency_key: header_key.or(m.idempotency_key),
    };
    let res = one(s.clone(), req).await;
    // Queued (or refused for good): the node holds its own copies now. A refusal for
    // bad input keeps them, so the page can try again.
    if res.status().is_success() {
        if let Some(m) = s.ops.messenger() {
            forget_uploads(m, &attached).await;
        }
    }
    res
}

#[derive(Deserialize)]
struct MessagesQuery {
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    channel: Option<String>,
}

async fn messages(With(s): With<Shared>, Query(q): Query<MessagesQuery>) -> Response {
    let req = ControlRequest::Recv {
        since: q.since,
        follow: false,
        channel: q.channel,
    };
    list(&s, req).await
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    with: Option<String>,
}

async fn history(With(s): With<Shared>, Query(q): Query<HistoryQuery>) -> Response {
    list(&s, ControlRequest::History { with: q.with }).await
}

async fn contacts(With(s): With<Shared>) -> Response {
    list(&s, ControlRequest::ContactsList).await
}

#[derive(Deserialize)]
struct ContactBody {
    name: String,
    target: String,
}

async fn contacts_add(s: With<Shared>, h: HeaderMap, b: Bytes) -> Response {
    with_body!(s, h, b, ContactBody, |c| ControlRequest::ContactsAdd {
        name: c.name,
        target: c.target,
    })
}

async fn contacts_rm(s: With<Shared>, Path(name): Path<String>) -> Response {
    one(s, ControlRequest::ContactsRm { name }).await
}

#[derive(Deserialize)]
struct VerifyBody {
    fingerprint: String,
}

async fn contacts_verify(
    s: With<Shared>,
    Path(name): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    with_body!(s, h, b, VerifyBody, |v| ControlRequest::ContactsVerify {
        name,
        fingerprint: v.fingerprint,
    })
}

#[derive(Deserialize)]
struct ChannelsQuery {
    #[serde(default)]
    all: bool,
}

async fn channels(With(s): With<Shared>, Query(q): Query<ChannelsQuery>) -> Response {
    list(&s, ControlRequest::ChannelList { all: q.all }).await
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    #[serde(default)]
    private: bool,
}

async fn channel_create(s: With<Shared>, h: HeaderMap, b: Bytes) -> Response {
    with_body!(s, h, b, CreateBody, |c| ControlRequest::ChannelCreate {
        name: c.name,
        private: c.private,
    })
}

async fn channel_join(s: With<Shared>, Path(channel): Path<String>) -> Response {
    one(s, ControlRequest::ChannelJoin { channel }).await
}

async fn channel_leave(s: With<Shared>, Path(channel): Path<String>) -> Response {
    one(s, ControlRequest::ChannelLeave { channel }).await
}

async fn channel_members(With(s): With<Shared>, Path(channel): Path<String>) -> Response {
    list(&s, ControlRequest::ChannelMembers { channel }).await
}

#[derive(Deserialize)]
struct WhoBody {
    who: String,
}

async fn channel_invite(
    s: With<Shared>,
    Path(channel): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    with_body!(s, h, b, WhoBody, |w| ControlRequest::ChannelInvite {
        channel,
        who: w.who
    })
}

async fn channel_remove(
    s: With<Shared>,
    Path(channel): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    with_body!(s, h, b, WhoBody, |w| ControlRequest::ChannelRemove {
        channel,
        who: w.who
    })
}

#[derive(Deserialize)]
struct TextBody {
    text: String,
}

async fn channel_send(
    s: With<Shared>,
    Path(channel): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    with_body!(s, h, b, TextBody, |t| ControlRequest::ChannelSend {
        channel,
        text: t.text
    })
}

#[derive(Deserialize)]
struct ConnectBody {
    to: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn connect(s: With<Shared>, h: HeaderMap, b: Bytes) -> Response {
    with_body!(s, h, b, ConnectBody, |c| ControlRequest::Connect {
        to: c.to,
        timeout_ms: c.timeout_ms,
    })
}

#[derive(Deserialize)]
struct ToBody {
    to: String,
}

async fn disconnect(s: With<Shared>, h: HeaderMap, b: Bytes) -> Response {
    with_body!(s, h, b, ToBody, |t| ControlRequest::Disconnect { to: t.to })
}

async fn accept(s: With<Shared>, Path(request_id): Path<u64>) -> Response {
    one(s, ControlRequest::Accept { request_id }).await
}

async fn deny(s: With<Shared>, Path(request_id): Path<u64>) -> Response {
    one(s, ControlRequest::Deny { request_id }).await
}

/// Where uploads wait to be attached: a file sent is copied at once, so its upload is
/// taken away then.
fn uploads_dir(m: &Messenger) -> std::path::PathBuf {
    m.files_dir().join("uploads")
}

#[derive(Deserialize)]
struct UploadQuery {
    name: String,
}

/// `POST /api/v1/uploads?name=NAME`: the body (`application/octet-stream`, at most the
/// attachment limit) kept as a file to attach; answers `{"path"}` for `attach`.
async fn upload(
    With(s): With<Shared>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let Some(m) = s.ops.messenger().cloned() else {
        return refusal(
            StatusCode::FORBIDDEN,
            ErrorKind::Denied,
            "this node is a relay and has no user identity",
        );
    };
    let octets = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"));
    if !octets {
        return refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::BadInput,
            "send the file as Content-Type: application/octet-stream",
        );
    }
    let mut name = crate::messaging::files::safe_name(&q.name, "attachment");
    // A file name is at most 255 bytes on the usual file systems.
    while name.len() > MAX_NAME_BYTES {
        name.pop();
    }
    let base = uploads_dir(&m);
    let dir = base.join(uuid::Uuid::new_v4().to_string());
    let written = tokio::task::spawn_blocking(move || {
        forget_stale_uploads(&base);
        crate::messaging::files::private_dir(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, &bytes)?;
        Ok::<_, std::io::Error>(path)
    })
    .await;
    match written {
        Ok(Ok(path)) => {
            axum::Json(serde_json::json!({ "path": path.to_string_lossy() })).into_response()
        }
        Ok(Err(e)) => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Failed,
            &format!("could not keep the upload: {e}"),
        ),
        Err(_) => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Failed,
            "the upload stopped",
        ),
    }
}

/// The upload directory `path` names, if it is exactly `<base>/<uuid>/<name>` with no
/// `..` or other tricks: the only files a send through this API may attach.
fn upload_of(base: &std::path::Path, path: &str) -> Option<std::path::PathBuf> {
    use std::path::Component;
    let rest = std::path::Path::new(path).strip_prefix(base).ok()?;
    let parts: Vec<_> = rest.components().collect();
    match parts.as_slice() {
        [Component::Normal(dir), Component::Normal(_)] => {
            uuid::Uuid::parse_str(dir.to_str()?).ok()?;
            Some(base.join(dir))
        }
        _ => None,
    }
}

/// The longest upload name kept, in bytes.
const MAX_NAME_BYTES: usize = 200;
/// An upload no send took within this long is removed.
const UPLOAD_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the uploads older than [`UPLOAD_LIFETIME`] (a page that uploaded and then never
/// sent, or a send that was refused).
fn forget_stale_uploads(base: &std::path::Path) {
    let Ok(dirs) = std::fs::read_dir(base) else {
        return;
    };
    for d in dirs.flatten() {
        let old = d
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > UPLOAD_LIFETIME);
        let ours = d
            .file_name()
            .to_str()
            .is_some_and(|n| uuid::Uuid::parse_str(n).is_ok());
        if old && ours {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

/// Takes away the uploads a send attached (it copied them).
async fn forget_uploads(m: &Messenger, attached: &[String]) {
    let base = uploads_dir(m);
    let dirs: Vec<_> = attached
        .iter()
        .filter_map(|p| upload_of(&base, p))
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    })
    .await;
}

/// Types a browser may show inline: pictures that cannot carry script (no SVG).
const INLINE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// `GET /api/v1/files/{from}/{msg_id}/{index}`: an attachment of the message `msg_id` that
/// `from` sent (ids are the sender's choice: both name a message). A
/// picture comes as itself; anything else as a download of `application/octet-stream`,
/// so a file from a peer never runs as a page or script of this origin.
async fn file(
    With(s): With<Shared>,
    Path((from, msg_id, index)): Path<(String, String, usize)>,
) -> Response {
    let (Some(m), Some(me)) = (s.ops.messenger().cloned(), s.ops.me()) else {
        return refusal(StatusCode::NOT_FOUND, ErrorKind::NotFound, "no such file");
    };
    let (Ok(from), Ok(id)) = (uuid::Uuid::parse_str(&from), uuid::Uuid::parse_str(&msg_id)) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            ErrorKind::BadInput,
            "a sender and a message id are UUIDs",
        );
    };
    let found = match m.store().history_entry(&me, &from, &id) {
        Ok(e) => e.and_then(|e| e.attachments.into_iter().nth(index)),
        Err(e) => {
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Failed,
                &e.to_string(),
            )
        }
    };
    let Some(a) = found else {
        return refusal(StatusCode::NOT_FOUND, ErrorKind::NotFound, "no such file");
    };
    let path = a.path.clone();
    let bytes = match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(b)) => b,
        _ => {
            return refusal(
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                "the file is not here (not fully received, or removed)",
            )
        }
    };
    let inline = INLINE_TYPES.contains(&a.mime.as_str());
    let mime = if inline {
        a.mime.as_str()
    } else {
        "application/octet-stream"
    };
    let ascii: String = a
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = if inline { "inline" } else { "attachment" };
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{ascii}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // Even opened on its own, a file is no page: no script, no requests, a sandbox.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FILE_CSP),
    );
    res
}

/// Answers into an event stream, until the page or bot that reads it goes away.
struct ToStream(mpsc::Sender<Event>);

impl Answers for ToStream {
    async fn answer(&mut self, r: ControlResponse) -> std::io::Result<()> {
        self.0
            .send(event_of(r))
            .await
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }

    async fn gone(&mut self) {
        self.0.closed().await
    }
}

/// How often an event stream looks for CONNECT requests that came or went.
const PROMPT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /api/v1/events`: every message received from now on (after `since`, or the
/// `Last-Event-ID` a reconnecting `EventSource` sends), as `message` events whose id is
/// the message's: a stream that breaks resumes where it stopped, missing nothing. Beside
/// them, `delivery` events as sent messages move on, and `requests` events with the
/// CONNECT requests waiting for an answer whenever that list changes.
async fn events(
    With(s): With<Shared>,
    headers: HeaderMap,
    Query(q): Query<MessagesQuery>,
) -> Response {
    let Ok(permit) = s.streams.clone().try_acquire_owned() else {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Failed,
            "too many event streams are open",
        );
    };
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|v| !v.is_empty())
        .or(q.since);
    let (tx, rx) = mpsc::channel(64);
    let ops = s.ops.clone();
    let req = ControlRequest::Recv {
        since,
        follow: true,
        channel: q.channel,
    };
    tokio::spawn(async move {
        // Subscribed before the first message is read, so no status change falls between.
        let status = ops.messenger().map(|m| m.subscribe_status());
        let mut messages = ToStream(tx.clone());
        tokio::select! {
            // A refused follow (an unknown id) has said why: the stream ends.
            _ = ops.run(req, &mut messages) => {}
            () = side_events(&ops, status, &tx) => {}
        }
        drop(permit);
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The `delivery` and `requests` events of one stream, until its reader goes away.
async fn side_events(
    ops: &Operations,
    mut status: Option<broadcast::Receiver<StatusChange>>,
    tx: &mpsc::Sender<Event>,
) {
    let mut waiting = serde_json::Value::Array(Vec::new());
    let mut tick = tokio::time::interval(PROMPT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_status = async {
            match status.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            () = tx.closed() => return,
            got = next_status => match got {
                Ok(c) => delivery_event(&c),
                // Fell behind: the reader reads the history again for the statuses now.
                Err(broadcast::error::RecvError::Lagged(_)) => Event::default().event("lagged").data("{}"),
                Err(broadcast::error::RecvError::Closed) => {
                    status = None;
                    continue;
                }
            },
            _ = tick.tick() => {
                let mut out = Collected::default();
                let _ = ops.run(ControlRequest::Requests, &mut out).await;
                let Some(now) = out.0.pop().filter(|r| r.ok).and_then(|r| r.data) else {
                    continue;
                };
                if now == waiting {
                    continue;
                }
                waiting = now;
                Event::default().event("requests").data(waiting.to_string())
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// A `delivery` event: `{"msg_id", "status", "detail"?}`.
fn delivery_event(c: &StatusChange) -> Event {
    let mut body = serde_json::json!({ "msg_id": c.msg_id.to_string(), "status": c.status });
    if let Some(d) = &c.detail {
        body["detail"] = serde_json::Value::String(d.clone());
    }
    Event::default().event("delivery").data(body.to_string())
}

/// One answer of a follow as an event: a message (its id the message's), or a refusal
/// (`error`, after which the node ends the stream).
fn event_of(r: ControlResponse) -> Event {
    if !r.ok {
        let body =
            serde_json::json!({ "error": r.error, "kind": r.kind.unwrap_or(ErrorKind::Failed) });
        return Event::default().event("error").data(body.to_string());
    }
    let data = r.data.unwrap_or(serde_json::Value::Null);
    let mut e = Event::default().event("message");
    // An id is a UUID; one with a line break or NUL (never made here) would panic axum.
    let id = data.get("msg_id").and_then(|v| v.as_str());
    if let Some(id) = id.filter(|i| !i.contains(['\r', '\n', '\0'])) {
        e = e.id(id);
    }
    e.data(data.to_string())
}

#[cfg(test)]
mod tests {
    use super::upload_of;
    use std::path::Path;

    #[test]
    fn only_an_upload_of_ours_is_one() {
        let base = Path::new("/h/files/uploads");
        let id = "0b0c0d0e-0000-4000-8000-000000000000";
        assert_eq!(
            upload_of(base, &format!("/h/files/uploads/{id}/a.png")),
            Some(base.join(id))
        );
        for bad in [
            "/h/files/uploads/../x".to_string(),
            format!("/h/files/uploads/{id}/../../x"),
            format!("/h/files/uploads/{id}/.."),
            format!("/h/files/uploads/{id}"),
            format!("/h/files/uploads/{id}/a/b"),
            "/h/files/uploads/not-a-uuid/a.png".to_string(),
            "/etc/passwd".to_string(),
            format!("h/files/uploads/{id}/a.png"),
        ] {
            assert_eq!(upload_of(base, &bad), None, "{bad}");
        }
    }
}

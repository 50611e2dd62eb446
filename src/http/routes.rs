//! The API's routes: each one a [`ControlRequest`], carried out by the same
//! [`Operations`] as the control socket's, its answers turned into an HTTP answer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as With};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::guard::{Guard, Refused};
use super::{files, MAX_BODY_BYTES};
use crate::control::{Collected, ControlRequest, ControlResponse, ErrorKind, Operations};

/// What every handler shares.
pub(super) struct State {
    pub ops: Operations,
    /// The largest upload taken: the node's attachment limit.
    pub upload_limit: usize,
    pub guard: Guard,
    pub streams: Arc<Semaphore>,
}

pub(super) type Shared = Arc<State>;

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
        .route("/api/v1/events", get(super::events::events))
        .route(
            "/api/v1/uploads",
            post(files::upload).layer(DefaultBodyLimit::max(state.upload_limit)),
        )
        .route("/api/v1/files/{from}/{msg_id}/{index}", get(files::file))
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
pub(super) fn refusal(status: StatusCode, kind: ErrorKind, error: &str) -> Response {
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
        let base = files::uploads_dir(msgr);
        if let Some(p) = m
            .attach
            .iter()
            .find(|p| files::upload_of(&base, p).is_none())
        {
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
            files::forget_uploads(m, &attached).await;
        }
    }
    res
}

#[derive(Deserialize)]
pub(super) struct MessagesQuery {
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
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

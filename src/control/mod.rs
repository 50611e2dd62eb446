//! The local control socket, `<home>/ptpchat.sock`: how `ptpchat status`, `whois` and the
//! other client commands talk to a running node. One JSON object per line each way
//! (specified in `protocols/control.md`). The socket is mode 0600 inside a 0700 home, and
//! connections from other users are refused even if permissions are loosened.

pub mod answers;
mod channels;
mod connect;
mod messages;
pub mod ops;
mod server;
mod views;

pub use messages::{rfc3339, AttachmentView, ContactView, Direction, MessageView};

pub use crate::error::ErrorKind;
pub use ops::{Answers, Collected, Operations};
pub use server::ControlServer;
pub use views::{IdInfo, WhoisView};

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest request or response line accepted.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// A request from a client command.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Peers,
    Id,
    Whois {
        uuid: String,
    },
    Dial {
        addr: String,
    },
    /// Send a direct message; answered once ACKed, refused, or `timeout_ms` passed.
    Send {
        to: String,
        text: String,
        #[serde(default)]
        attach: Vec<String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// A retry with the same key sends nothing twice (see `Messenger::send_once`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// Received messages after `since` (a msg_id); with `follow`, then new ones as they come.
    Recv {
        #[serde(default)]
        since: Option<String>,
        #[serde(default)]
        follow: bool,
        /// Only posts of this channel (name or id).
        #[serde(default)]
        channel: Option<String>,
    },
    /// The stored conversation, both directions, optionally with one contact or UUID.
    History {
        #[serde(default)]
        with: Option<String>,
    },
    ContactsAdd {
        name: String,
        target: String,
    },
    ContactsList,
    ContactsVerify {
        name: String,
        fingerprint: String,
    },
    ContactsRm {
        name: String,
    },
    ChannelCreate {
        name: String,
        #[serde(default)]
        private: bool,
    },
    ChannelJoin {
        channel: String,
    },
    ChannelLeave {
        channel: String,
    },
    /// Joined channels (and with `all`, discovered ones), one line each.
    ChannelList {
        #[serde(default)]
        all: bool,
    },
    /// A channel's members, one line each.
    ChannelMembers {
        channel: String,
    },
    ChannelInvite {
        channel: String,
        who: String,
    },
    ChannelSend {
        channel: String,
        text: String,
    },
    /// Remove a member from a private channel (rotates its key).
    ChannelRemove {
        channel: String,
        who: String,
    },
    Connect {
        to: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    Disconnect {
        to: String,
    },
    Requests,
    Accept {
        request_id: u64,
    },
    Deny {
        request_id: u64,
    },
    /// Where the app and HTTP API are, with the token.
    Ui,
}

/// The answer: `ok` with `data`, or an `error` of some `kind`. An `ok` answer may carry a
/// `kind` too: its data is the result, but the request did not finish as asked (a message
/// queued, not delivered; a connection that is not direct). On the wire the kind also comes
/// as the numeric `code` scripts already read ([`wire_code`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "WireResponse", from = "WireResponse")]
pub struct ControlResponse {
    pub ok: bool,
    /// The answer's data: one of the answer types in [`answers`] (or a view it names).
    pub data: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Why the request was refused (`ok` false) or did not finish (`ok` true).
    pub kind: Option<ErrorKind>,
    /// Ends a stream of results (`recv`, `history`, `contacts list`).
    pub done: bool,
    /// Something the user must see (on stderr), e.g. a contact's key changed.
    pub warning: Option<String>,
}

/// [`ControlResponse`] as it is written: `code` comes from `kind`, here and nowhere else.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WireResponse {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

impl From<ControlResponse> for WireResponse {
    fn from(r: ControlResponse) -> Self {
        WireResponse {
            ok: r.ok,
            data: r.data,
            error: r.error,
            code: r.kind.map(wire_code),
            kind: r.kind,
            done: r.done,
            warning: r.warning,
        }
    }
}

impl From<WireResponse> for ControlResponse {
    fn from(w: WireResponse) -> Self {
        // A node from before `kind` sent only `code`.
        let kind = w.kind.or_else(|| w.code.map(kind_of_wire_code));
        ControlResponse {
            ok: w.ok,
            data: w.data,
            error: w.error,
            kind,
            done: w.done,
            warning: w.warning,
        }
    }
}

/// The wire's numeric `code` for a kind (protocols/control.md): the CLI's exit code for it,
/// kept for scripts that speak the socket directly. Not an exit code here: the CLI edge
/// maps kinds itself, and a test checks the two agree.
pub fn wire_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Failed => 1,
        ErrorKind::BadInput => 2,
        ErrorKind::Pending => 3,
        ErrorKind::NotFound | ErrorKind::Denied | ErrorKind::Unreachable | ErrorKind::Timeout => 4,
    }
}

/// The kind a `code` without a `kind` meant (an older node); 4 reads as `not_found`.
fn kind_of_wire_code(code: i32) -> ErrorKind {
    match code {
        2 => ErrorKind::BadInput,
        3 => ErrorKind::Pending,
        4 => ErrorKind::NotFound,
        _ => ErrorKind::Failed,
    }
}

impl ControlResponse {
    /// A result.
    pub fn ok(data: impl Serialize) -> Self {
        ControlResponse {
            ok: true,
            data: Some(serde_json::to_value(data).unwrap_or(serde_json::Value::Null)),
            error: None,
            kind: None,
            done: false,
            warning: None,
        }
    }

    /// The end of a stream.
    pub fn done() -> Self {
        ControlResponse {
            ok: true,
            data: None,
            error: None,
            kind: None,
            done: true,
            warning: None,
        }
    }

    /// A refusal.
    pub fn err(kind: ErrorKind, error: impl Into<String>) -> Self {
        ControlResponse {
            ok: false,
            data: None,
            error: Some(error.into()),
            kind: Some(kind),
            done: false,
            warning: None,
        }
    }

    /// This result, marked as not finished the way the request asked.
    pub fn unfinished(mut self, kind: ErrorKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// This answer with `data` (a refusal that still has a result to show).
    pub fn with_data(mut self, data: impl Serialize) -> Self {
        self.data = Some(serde_json::to_value(data).unwrap_or(serde_json::Value::Null));
        self
    }

    /// The refusal this answer carries, if it is one.
    pub fn refusal(&self) -> Option<Refusal> {
        (!self.ok).then(|| Refusal {
            kind: self.kind.unwrap_or(ErrorKind::Failed),
            message: self
                .error
                .clone()
                .unwrap_or_else(|| "the node refused".into()),
        })
    }

    /// The data decoded as the answer type `T` the request has (`None` if there is none).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<Option<T>, ClientError> {
        self.data
            .clone()
            .filter(|d| !d.is_null())
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}

/// A request the node turned down: the kind, and the line the user reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: ErrorKind, message: impl std::fmt::Display) -> Self {
        Refusal {
            kind,
            message: message.to_string(),
        }
    }

    /// Anything else that went wrong.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        Refusal::new(ErrorKind::Failed, message)
    }
}

impl From<Refusal> for ControlResponse {
    fn from(r: Refusal) -> Self {
        ControlResponse::err(r.kind, r.message)
    }
}

impl From<crate::channels::ChannelError> for Refusal {
    fn from(e: crate::channels::ChannelError) -> Self {
        Refusal::new(e.kind, e.message)
    }
}

/// Why a client could not get an answer from the node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node running for {0}")]
    NoNode(PathBuf),
    #[error("control socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node sent an unreadable answer: {0}")]
    BadAnswer(String),
}

/// Whether a node answers on `socket` (a leftover file from a crashed node does not).
pub async fn socket_is_live(socket: &Path) -> bool {
    UnixStream::connect(socket).await.is_ok()
}

/// How long a client waits for the node's answer (a `whois` takes at most about 20 s).
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Sends a request whose answer is a stream (`recv`, `history`, `contacts list`) and calls
/// `item` with each result until the node ends the stream (never, for `recv --follow`) or
/// `item` fails. Returns the final response (the end marker, or an error).
pub async fn request_stream(
    home: &Path,
    req: &ControlRequest,
    mut item: impl FnMut(&ControlResponse) -> Result<(), ClientError>,
) -> Result<ControlResponse, ClientError> {
    let mut reader = send_request(home, req).await?;
    loop {
        let r = read_answer(&mut reader).await?;
        if r.done || !r.ok {
            return Ok(r);
        }
        item(&r)?;
    }
}

async fn send_request(
    home: &Path,
    req: &ControlRequest,
) -> Result<BufReader<UnixStream>, ClientError> {
    let socket = crate::config::socket_path(home);
    let mut stream = match UnixStream::connect(&socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NoNode(home.to_path_buf()))
        }
        Err(e) => return Err(e.into()),
    };
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(BufReader::new(stream))
}

/// Sends one request to the node for `home` and reads its answer.
pub async fn request(home: &Path, req: &ControlRequest) -> Result<ControlResponse, ClientError> {
    let limit = match req {
        ControlRequest::Send {
            timeout_ms: Some(ms),
            ..
        } => ANSWER_TIMEOUT + std::time::Duration::from_millis(*ms),
        _ => ANSWER_TIMEOUT,
    };
    match tokio::time::timeout(limit, request_now(home, req)).await {
        Ok(answer) => answer,
        Err(_) => Err(ClientError::BadAnswer(format!(
            "no answer within {} s; the node may be stuck",
            limit.as_secs()
        ))),
    }
}

async fn request_now(home: &Path, req: &ControlRequest) -> Result<ControlResponse, ClientError> {
    read_answer(&mut send_request(home, req).await?).await
}

/// Reads one answer line (at most [`MAX_LINE_BYTES`]).
async fn read_answer(reader: &mut BufReader<UnixStream>) -> Result<ControlResponse, ClientError> {
    let mut answer = String::new();
    let n = reader
        .take(MAX_LINE_BYTES as u64)
        .read_line(&mut answer)
        .await?;
    if n == 0 {
        return Err(ClientError::BadAnswer("connection closed".into()));
    }
    serde_json::from_str(&answer).map_err(|e| ClientError::BadAnswer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &ControlResponse) -> String {
        serde_json::to_string(r).unwrap()
    }

    fn read(line: &str) -> ControlResponse {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn a_refusal_carries_its_kind_and_the_code_scripts_read() {
        let r = ControlResponse::err(ErrorKind::NotFound, "no contact named \"bob\"");
        assert_eq!(
            wire(&r),
            r#"{"ok":false,"error":"no contact named \"bob\"","code":4,"kind":"not_found"}"#
        );
        let back = read(&wire(&r));
        assert_eq!(back, r);
        assert_eq!(
            back.refusal(),
            Some(Refusal::new(
                ErrorKind::NotFound,
                "no contact named \"bob\""
            ))
        );
    }

    #[test]
    fn every_kind_survives_the_wire_with_its_code() {
        for kind in ErrorKind::ALL {
            let line = wire(&ControlResponse::err(kind, "x"));
            let raw: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(raw["kind"], kind.as_str());
            assert_eq!(raw["code"], wire_code(kind));
            assert_eq!(read(&line).refusal().map(|r| r.kind), Some(kind));
        }
    }

    #[test]
    fn an_answer_from_a_node_without_kinds_reads_its_code() {
        for (code, kind) in [
            (1, ErrorKind::Failed),
            (2, ErrorKind::BadInput),
            (4, ErrorKind::NotFound),
            (99, ErrorKind::Failed),
        ] {
            let r = read(&format!(r#"{{"ok":false,"error":"e","code":{code}}}"#));
            assert_eq!(r.refusal().map(|r| r.kind), Some(kind), "code {code}");
        }
        let queued = read(r#"{"ok":true,"data":{"msg_id":"m","status":"queued"},"code":3}"#);
        assert!(queued.refusal().is_none());
        assert_eq!(queued.kind, Some(ErrorKind::Pending));
    }

    #[test]
    fn a_kind_unknown_here_reads_as_failed() {
        let r = read(r#"{"ok":false,"error":"slow down","code":1,"kind":"rate_limited"}"#);
        assert_eq!(r.refusal().map(|r| r.kind), Some(ErrorKind::Failed));
    }

    #[test]
    fn an_unfinished_result_is_ok_with_a_kind() {
        let r = ControlResponse::ok(answers::ConnectAnswer {
            addr: None,
            status: answers::ConnectStatus::Timeout,
        })
        .unfinished(ErrorKind::Timeout);
        assert_eq!(
            wire(&r),
            r#"{"ok":true,"data":{"addr":null,"status":"timeout"},"code":4,"kind":"timeout"}"#
        );
        let back = read(&wire(&r));
        assert!(back.refusal().is_none());
        assert_eq!(back.kind, Some(ErrorKind::Timeout));
        assert_eq!(
            back.data_as::<answers::ConnectAnswer>()
                .unwrap()
                .unwrap()
                .status,
            answers::ConnectStatus::Timeout
        );
    }

    #[test]
    fn plain_results_and_stream_ends_have_no_kind_on_the_wire() {
        assert_eq!(wire(&ControlResponse::done()), r#"{"ok":true,"done":true}"#);
        assert_eq!(
            wire(&ControlResponse::ok(answers::Dialing {})),
            r#"{"ok":true,"data":{}}"#
        );
    }

    #[test]
    fn every_request_line_in_the_spec_is_a_request() {
        let spec = include_str!("../../protocols/control.md");
        let lines: Vec<&str> = spec
            .split('`')
            .filter(|s| s.starts_with("{\"cmd\""))
            .collect();
        assert!(lines.len() >= 25, "{} request lines", lines.len());
        for line in lines {
            let req: ControlRequest = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("protocols/control.md: {line}: {e}");
            });
            let again: ControlRequest =
                serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
            assert_eq!(again, req);
        }
    }

    #[test]
    fn data_of_the_wrong_shape_is_a_bad_answer() {
        let r = read(r#"{"ok":true,"data":{"msg_id":3}}"#);
        assert!(matches!(
            r.data_as::<answers::SendAnswer>(),
            Err(ClientError::BadAnswer(_))
        ));
    }
}

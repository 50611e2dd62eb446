//! The local control socket, `<home>/ptpchat.sock`: how `ptpchat status`, `whois` and the
//! other client commands talk to a running node. One JSON object per line each way
//! (specified in `protocols/control.md`). The socket is mode 0600 inside a 0700 home, and
//! connections from other users are refused even if permissions are loosened.

mod channels;
mod connect;
mod messages;
mod server;
mod views;

pub use messages::{rfc3339, ContactView, MessageView};

pub use server::ControlServer;
pub use views::{IdInfo, WhoisView};

use std::path::{Path, PathBuf};

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
}

/// The answer: `ok` with `data`, or an `error` with the exit `code` the CLI should use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Ends a stream of results (`recv`, `history`, `contacts list`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
    /// Something the user must see (on stderr), e.g. a contact's key changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl ControlResponse {
    pub fn ok(data: impl Serialize) -> Self {
        ControlResponse {
            ok: true,
            data: Some(serde_json::to_value(data).unwrap_or(serde_json::Value::Null)),
            error: None,
            code: None,
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
            code: None,
            done: true,
            warning: None,
        }
    }

    pub fn err(code: i32, error: impl Into<String>) -> Self {
        ControlResponse {
            ok: false,
            data: None,
            error: Some(error.into()),
            code: Some(code),
            done: false,
            warning: None,
        }
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
/// `item` with each result until the node ends the stream (never, for `recv --follow`).
/// Returns the final response (the end marker, or an error).
pub async fn request_stream(
    home: &Path,
    req: &ControlRequest,
    mut item: impl FnMut(&ControlResponse),
) -> Result<ControlResponse, ClientError> {
    let mut reader = send_request(home, req).await?;
    loop {
        let r = read_answer(&mut reader).await?;
        if r.done || !r.ok {
            return Ok(r);
        }
        item(&r);
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

//! The local control socket, `<home>/ptpchat.sock`: how `ptpchat status`, `whois` and the
//! other client commands talk to a running node. One JSON object per line each way
//! (specified in `protocols/control.md`). The socket is mode 0600 inside a 0700 home, and
//! connections from other users are refused even if permissions are loosened.

mod server;

pub use server::ControlServer;

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
    Whois { uuid: String },
    Dial { addr: String },
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
}

impl ControlResponse {
    pub fn ok(data: impl Serialize) -> Self {
        ControlResponse {
            ok: true,
            data: Some(serde_json::to_value(data).unwrap_or(serde_json::Value::Null)),
            error: None,
            code: None,
        }
    }

    pub fn err(code: i32, error: impl Into<String>) -> Self {
        ControlResponse {
            ok: false,
            data: None,
            error: Some(error.into()),
            code: Some(code),
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

/// Sends one request to the node for `home` and reads its answer.
pub async fn request(home: &Path, req: &ControlRequest) -> Result<ControlResponse, ClientError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, request_now(home, req)).await {
        Ok(answer) => answer,
        Err(_) => Err(ClientError::BadAnswer(format!(
            "no answer within {} s; the node may be stuck",
            ANSWER_TIMEOUT.as_secs()
        ))),
    }
}

async fn request_now(home: &Path, req: &ControlRequest) -> Result<ControlResponse, ClientError> {
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
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    let n = (&mut reader)
        .take(MAX_LINE_BYTES as u64)
        .read_line(&mut answer)
        .await?;
    if n == 0 {
        return Err(ClientError::BadAnswer("connection closed".into()));
    }
    serde_json::from_str(&answer).map_err(|e| ClientError::BadAnswer(e.to_string()))
}

//! `connect`, `requests`, `accept`, `deny` (CONNECT, protocols/connect.md).

use std::time::Duration;

use serde_json::json;

use super::messages::resolve;
use super::ControlResponse;
use crate::messaging::Messenger;
use crate::net::{Client, ConnectOutcome, LookupError};

/// `connect` waits this long by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// And never longer than this (the control client's own patience).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(55);

/// Exit code for every outcome but a direct connection.
const NOT_DIRECT: i32 = 4;

pub(super) async fn connect(
    m: &Messenger,
    client: &Client,
    to: String,
    timeout_ms: Option<u64>,
) -> ControlResponse {
    let timeout = timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(MAX_TIMEOUT);
    let (uuid, fp) = match resolve(m, &to) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let answer = |status: &str, addr: Option<String>, why: Option<String>| {
        let mut r = ControlResponse::ok(json!({ "status": status, "addr": addr }));
        if status != "direct" {
            r.code = Some(NOT_DIRECT);
            r.warning = why;
        }
        r
    };
    let started = tokio::time::Instant::now();
    let doc = match client.whois(uuid).await {
        Ok(doc) => doc,
        Err(LookupError::NotFound(_)) => match m.latest_document(&uuid) {
            Some(doc) => doc,
            None => {
                return answer(
                    "offline",
                    None,
                    Some(format!("no identity document found for {uuid}")),
                )
            }
        },
        Err(LookupError::NodeGone) => return ControlResponse::err(1, "the node is shutting down"),
    };
    if fp.is_some_and(|fp| fp != doc.doc().fingerprint()) {
        return ControlResponse::err(1, "the fingerprint in the URI does not match that UUID");
    }
    let Some(peer) = doc.doc().peer_id() else {
        return ControlResponse::err(1, "the identity document names no usable peer id");
    };
    let left = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, client.connect(peer, doc.doc().reach_addrs())).await {
        Err(_) => answer("timeout", None, Some("no answer in time".into())),
        Ok(Err(_)) => ControlResponse::err(1, "the node is shutting down"),
        Ok(Ok(outcome)) => match outcome {
            ConnectOutcome::Direct(addr) => answer("direct", Some(addr.to_string()), None),
            ConnectOutcome::Denied => answer("denied", None, Some("the target said no".into())),
            ConnectOutcome::Offline(why) => answer("offline", None, Some(why)),
            ConnectOutcome::Relayed => answer(
                "relayed",
                None,
                Some("accepted, but hole punching failed; messages still go over the relay".into()),
            ),
            ConnectOutcome::Failed(why) => ControlResponse::err(1, why),
        },
    }
}

/// Closes every connection with a contact (direct and relayed); exit 4 if there was none.
pub(super) async fn disconnect(m: &Messenger, client: &Client, to: String) -> ControlResponse {
    let (uuid, _) = match resolve(m, &to) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(peer) = m.latest_document(&uuid).and_then(|d| d.doc().peer_id()) else {
        return ControlResponse::err(4, format!("no identity document known for {uuid}"));
    };
    match client.disconnect(peer).await {
        Ok(true) => ControlResponse::ok(json!({ "disconnected": true })),
        Ok(false) => ControlResponse::err(4, "not connected"),
        Err(_) => ControlResponse::err(1, "the node is shutting down"),
    }
}

pub(super) async fn requests(client: &Client) -> ControlResponse {
    match client.connect_requests().await {
        Ok(list) => ControlResponse::ok(list),
        Err(_) => ControlResponse::err(1, "the node is shutting down"),
    }
}

pub(super) async fn answer(client: &Client, request_id: u64, accept: bool) -> ControlResponse {
    match client.answer_connect(request_id, accept).await {
        Ok(()) => ControlResponse::ok(json!({ "request_id": request_id, "accepted": accept })),
        Err(e) => ControlResponse::err(4, e),
    }
}

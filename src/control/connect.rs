//! `connect`, `requests`, `accept`, `deny` (CONNECT, protocols/connect.md).

use std::time::Duration;

use super::answers::{ConnectAnswer, ConnectStatus, Disconnected, RequestAnswered};
use super::messages::resolve;
use super::ops::GONE;
use super::{ControlResponse, ErrorKind, Refusal};
use crate::messaging::Messenger;
use crate::net::{Client, ConnectOutcome, LookupError};

/// `connect` waits this long by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// And never longer than this (the control client's own patience).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(55);

/// A `connect` that ended with `status`; every status but `direct` is unfinished, with
/// `why` for the user.
fn ended(status: ConnectStatus, addr: Option<String>, why: Option<String>) -> ControlResponse {
    let r = ControlResponse::ok(ConnectAnswer { addr, status });
    let kind = match status {
        ConnectStatus::Direct => return r,
        ConnectStatus::Denied => ErrorKind::Denied,
        ConnectStatus::Offline | ConnectStatus::Relayed => ErrorKind::Unreachable,
        ConnectStatus::Timeout => ErrorKind::Timeout,
    };
    let mut r = r.unfinished(kind);
    r.warning = why;
    r
}

pub(super) async fn connect(
    m: &Messenger,
    client: &Client,
    to: String,
    timeout_ms: Option<u64>,
) -> Result<ControlResponse, Refusal> {
    let timeout = timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(MAX_TIMEOUT);
    let (uuid, fp) = resolve(m, &to)?;
    let started = tokio::time::Instant::now();
    let doc = match client.whois(uuid).await {
        Ok(doc) => doc,
        Err(LookupError::NotFound(_)) => match m.latest_document(&uuid) {
            Some(doc) => doc,
            None => {
                return Ok(ended(
                    ConnectStatus::Offline,
                    None,
                    Some(format!("no identity document found for {uuid}")),
                ))
            }
        },
        Err(LookupError::NodeGone) => return Err(Refusal::failed(GONE)),
    };
    if fp.is_some_and(|fp| fp != doc.doc().fingerprint()) {
        return Err(Refusal::failed(
            "the fingerprint in the URI does not match that UUID",
        ));
    }
    let Some(peer) = doc.doc().peer_id() else {
        return Err(Refusal::failed(
            "the identity document names no usable peer id",
        ));
    };
    let left = timeout.saturating_sub(started.elapsed());
    Ok(
        match tokio::time::timeout(left, client.connect(peer, doc.doc().reach_addrs())).await {
            Err(_) => ended(
                ConnectStatus::Timeout,
                None,
                Some("no answer in time".into()),
            ),
            Ok(Err(_)) => return Err(Refusal::failed(GONE)),
            Ok(Ok(outcome)) => match outcome {
                ConnectOutcome::Direct(addr) => {
                    ended(ConnectStatus::Direct, Some(addr.to_string()), None)
                }
                ConnectOutcome::Denied => ended(
                    ConnectStatus::Denied,
                    None,
                    Some("the target said no".into()),
                ),
                ConnectOutcome::Offline(why) => ended(ConnectStatus::Offline, None, Some(why)),
                ConnectOutcome::Relayed => ended(
                    ConnectStatus::Relayed,
                    None,
                    Some(
                        "accepted, but hole punching failed; messages still go over the relay"
                            .into(),
                    ),
                ),
                ConnectOutcome::Failed(why) => return Err(Refusal::failed(why)),
            },
        },
    )
}

/// Closes every connection with a contact (direct and relayed); `not_found` if there was none.
pub(super) async fn disconnect(
    m: &Messenger,
    client: &Client,
    to: String,
) -> Result<ControlResponse, Refusal> {
    let (uuid, _) = resolve(m, &to)?;
    let Some(peer) = m.latest_document(&uuid).and_then(|d| d.doc().peer_id()) else {
        return Err(Refusal::new(
            ErrorKind::NotFound,
            format!("no identity document known for {uuid}"),
        ));
    };
    match client.disconnect(peer).await {
        Ok(true) => Ok(ControlResponse::ok(Disconnected { disconnected: true })),
        Ok(false) => Err(Refusal::new(ErrorKind::NotFound, "not connected")),
        Err(_) => Err(Refusal::failed(GONE)),
    }
}

pub(super) async fn requests(client: &Client) -> Result<ControlResponse, Refusal> {
    let list = client
        .connect_requests()
        .await
        .map_err(|_| Refusal::failed(GONE))?;
    Ok(ControlResponse::ok(list))
}

pub(super) async fn answer(
    client: &Client,
    request_id: u64,
    accept: bool,
) -> Result<ControlResponse, Refusal> {
    client
        .answer_connect(request_id, accept)
        .await
        .map_err(|e| match e {
            crate::net::NetError::NoSuchRequest(_) => {
                Refusal::new(ErrorKind::NotFound, e.to_string())
            }
            e => Refusal::failed(e),
        })?;
    Ok(ControlResponse::ok(RequestAnswered {
        accepted: accept,
        request_id,
    }))
}

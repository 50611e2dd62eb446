//! The event stream (`GET /api/v1/events`): received messages as a resumable stream, with
//! delivery updates and the CONNECT requests waiting, as Server-Sent Events.

use axum::extract::{Query, State as With};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, mpsc};

use super::routes::{refusal, MessagesQuery, Shared};
use crate::control::{Answers, Collected, ControlRequest, ControlResponse, ErrorKind, Operations};
use crate::messaging::StatusChange;

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
pub(super) async fn events(
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

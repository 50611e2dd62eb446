//! Control requests for channels: `channel create|join|leave|list|members|invite|send`.

use tokio::io::AsyncWrite;
use uuid::Uuid;

use super::messages::{resolve, write_line};
use super::{ControlRequest, ControlResponse};
use crate::channels::{ChannelError, Channels, MemberView};
use crate::messaging::Messenger;

fn refused(e: ChannelError) -> ControlResponse {
    ControlResponse::err(e.code, e.message)
}

/// The one-answer channel requests.
pub(super) async fn handle(c: &Channels, m: &Messenger, req: ControlRequest) -> ControlResponse {
    match req {
        ControlRequest::ChannelCreate { name, private } => match c.create(&name, private).await {
            Ok(id) => ControlResponse::ok(serde_json::json!({
                "channel_id": id.to_string(),
                "name": name,
                "private": private,
            })),
            Err(e) => refused(e),
        },
        ControlRequest::ChannelJoin { channel } => match c.join(&channel).await {
            Ok((id, row)) => ControlResponse::ok(serde_json::json!({
                "channel_id": id.to_string(),
                "name": row.name,
                "private": row.private,
            })),
            Err(e) => refused(e),
        },
        ControlRequest::ChannelLeave { channel } => match c.leave(&channel).await {
            Ok(id) => ControlResponse::ok(serde_json::json!({"channel_id": id.to_string()})),
            Err(e) => refused(e),
        },
        ControlRequest::ChannelInvite { channel, who } => {
            let uuid = match resolve(m, &who) {
                Ok((u, _)) => u,
                Err(r) => return r,
            };
            match c.invite(&channel, uuid).await {
                Ok(id) => ControlResponse::ok(serde_json::json!({
                    "channel_id": id.to_string(),
                    "invited": uuid.to_string(),
                })),
                Err(e) => refused(e),
            }
        }
        ControlRequest::ChannelRemove { channel, who } => {
            let uuid = match resolve(m, &who) {
                Ok((u, _)) => u,
                Err(r) => return r,
            };
            match c.remove(&channel, uuid).await {
                Ok((id, epoch)) => ControlResponse::ok(serde_json::json!({
                    "channel_id": id.to_string(),
                    "removed": uuid.to_string(),
                    "epoch": epoch,
                })),
                Err(e) => refused(e),
            }
        }
        ControlRequest::ChannelSend { channel, text } => match c.send(&channel, text).await {
            Ok((msg_id, peers)) => ControlResponse::ok(serde_json::json!({
                "msg_id": msg_id.to_string(),
                "status": "sent",
                "peers": peers,
            })),
            Err(e) => refused(e),
        },
        _ => ControlResponse::err(2, "not a channel request"),
    }
}

/// `channel list`: one line per channel, then the end.
pub(super) async fn list<W: AsyncWrite + Unpin>(
    c: &Channels,
    all: bool,
    w: &mut W,
) -> std::io::Result<()> {
    for v in c.list(all) {
        write_line(w, &ControlResponse::ok(v)).await?;
    }
    write_line(w, &ControlResponse::done()).await
}

/// `channel members`: one line per member, named if a contact.
pub(super) async fn members<W: AsyncWrite + Unpin>(
    c: &Channels,
    m: &Messenger,
    channel: &str,
    w: &mut W,
) -> std::io::Result<()> {
    let members = match c.members(channel) {
        Ok(v) => v,
        Err(e) => return write_line(w, &refused(e)).await,
    };
    let names: std::collections::HashMap<Uuid, String> = m
        .store()
        .contacts()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, c)| (Uuid::from_bytes(c.uuid), n))
        .collect();
    let me = m.current_keys().map(|k| k.uuid);
    for u in members {
        let name = if Some(u) == me {
            Some("(you)".to_string())
        } else {
            names.get(&u).cloned()
        };
        let v = MemberView {
            uuid: u.to_string(),
            name,
        };
        write_line(w, &ControlResponse::ok(v)).await?;
    }
    write_line(w, &ControlResponse::done()).await
}

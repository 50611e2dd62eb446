//! Control requests for channels: `channel create|join|leave|list|members|invite|send`.

use uuid::Uuid;

use super::answers::{
    ChannelInvited, ChannelJoined, ChannelLeft, ChannelMemberRemoved, ChannelPosted, MemberLine,
};
use super::messages::resolve;
use super::ops::Answers;
use super::{ControlRequest, ControlResponse, ErrorKind, Refusal};
use crate::channels::Channels;
use crate::messaging::Messenger;

/// The one-answer channel requests.
pub(super) async fn handle(
    c: &Channels,
    m: &Messenger,
    req: ControlRequest,
) -> Result<ControlResponse, Refusal> {
    Ok(match req {
        ControlRequest::ChannelCreate { name, private } => {
            let id = c.create(&name, private).await?;
            ControlResponse::ok(ChannelJoined {
                channel_id: id.to_string(),
                name,
                private,
            })
        }
        ControlRequest::ChannelJoin { channel } => {
            let (id, row) = c.join(&channel).await?;
            ControlResponse::ok(ChannelJoined {
                channel_id: id.to_string(),
                name: row.name,
                private: row.private,
            })
        }
        ControlRequest::ChannelLeave { channel } => {
            let id = c.leave(&channel).await?;
            ControlResponse::ok(ChannelLeft {
                channel_id: id.to_string(),
            })
        }
        ControlRequest::ChannelInvite { channel, who } => {
            let (uuid, _) = resolve(m, &who)?;
            let id = c.invite(&channel, uuid).await?;
            ControlResponse::ok(ChannelInvited {
                channel_id: id.to_string(),
                invited: uuid.to_string(),
            })
        }
        ControlRequest::ChannelRemove { channel, who } => {
            let (uuid, _) = resolve(m, &who)?;
            let (id, epoch) = c.remove(&channel, uuid).await?;
            ControlResponse::ok(ChannelMemberRemoved {
                channel_id: id.to_string(),
                epoch,
                removed: uuid.to_string(),
            })
        }
        ControlRequest::ChannelSend { channel, text } => {
            let (msg_id, peers) = c.send(&channel, text).await?;
            ControlResponse::ok(ChannelPosted {
                msg_id: msg_id.to_string(),
                peers,
                status: "sent".into(),
            })
        }
        _ => return Err(Refusal::new(ErrorKind::BadInput, "not a channel request")),
    })
}

/// `channel list`: one line per channel, then the end.
pub(super) async fn list<A: Answers>(c: &Channels, all: bool, w: &mut A) -> std::io::Result<()> {
    for v in c.list(all) {
        w.answer(ControlResponse::ok(v)).await?;
    }
    w.answer(ControlResponse::done()).await
}

/// `channel members`: one line per member, named if a contact.
pub(super) async fn members<A: Answers>(
    c: &Channels,
    m: &Messenger,
    channel: &str,
    w: &mut A,
) -> std::io::Result<()> {
    let members = match c.members(channel) {
        Ok(v) => v,
        Err(e) => return w.answer(Refusal::from(e).into()).await,
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
        let v = MemberLine {
            uuid: u.to_string(),
            name,
        };
        w.answer(ControlResponse::ok(v)).await?;
    }
    w.answer(ControlResponse::done()).await
}

//! The `data` of each control answer, as one type the node serializes and the CLI decodes
//! (protocols/control.md). `--json` prints these as scripts have always read them
//! (docs/cli.md); the CLI's plain output reads their fields.
//!
//! | request | data |
//! |---|---|
//! | `status` | [`StatusView`] |
//! | `peers` | `Vec<`[`PeerView`]`>` |
//! | `id` | [`super::IdInfo`] |
//! | `whois` | [`super::WhoisView`] |
//! | `dial` | [`Dialing`] |
//! | `send` | [`SendAnswer`] |
//! | `recv`, `history` | one [`super::MessageView`] a line |
//! | `contacts_add`, `contacts_verify` | [`super::ContactView`] (`contacts_list`: one a line) |
//! | `contacts_rm` | [`ContactRemoved`] |
//! | `channel_create`, `channel_join` | [`ChannelJoined`] |
//! | `channel_leave` | [`ChannelLeft`] |
//! | `channel_list` | one [`ChannelLine`] a line |
//! | `channel_members` | one [`MemberLine`] a line |
//! | `channel_invite` | [`ChannelInvited`] |
//! | `channel_remove` | [`ChannelMemberRemoved`] |
//! | `channel_send` | [`ChannelPosted`] |
//! | `connect` | [`ConnectAnswer`] |
//! | `disconnect` | [`Disconnected`] |
//! | `requests` | `Vec<`[`RequestLine`]`>` |
//! | `accept`, `deny` | [`RequestAnswered`] |
//!
//! The types that replaced `json!` objects list their fields in alphabetical order: that is
//! the order those objects had on the wire, so the bytes stay the same.

use serde::{Deserialize, Serialize};

/// What the node reports about itself (`status`): the event loop's own type, which the
/// CLI decodes too.
pub type StatusView = crate::net::Status;
/// `status` → `lookups`.
pub type LookupView = crate::net::LookupStats;
/// `status` → `mail` on a relay with mailboxes.
pub type MailView = crate::store::mailbox::MailTotals;
/// One connected peer (`peers`).
pub type PeerView = crate::net::PeerInfo;

/// `dial`: the dial started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialing {}

/// How a `send` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendStatus {
    /// The recipient ACKed.
    Delivered,
    /// Left at the recipient's mailboxes; still retried directly.
    Stored,
    /// In the outbox, not ACKed yet.
    Queued,
    /// The recipient refused it (`reason`).
    Failed,
    /// Not delivered within 7 days.
    Expired,
}

/// `send`: `{"msg_id","status"}`, with `mailboxes` when stored and `reason` when refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAnswer {
    /// Relays that stored it and sent a valid receipt (`stored` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailboxes: Option<usize>,
    pub msg_id: String,
    /// The recipient's NACK reason (`failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub status: SendStatus,
}

/// `contacts rm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRemoved {
    pub name: String,
    pub removed: bool,
}

/// `channel create` and `channel join`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelJoined {
    pub channel_id: String,
    pub name: String,
    pub private: bool,
}

/// `channel leave`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelLeft {
    pub channel_id: String,
}

/// `channel invite`: the invitee's UUID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInvited {
    pub channel_id: String,
    pub invited: String,
}

/// `channel remove`: the removed member and the new key epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMemberRemoved {
    pub channel_id: String,
    pub epoch: u32,
    pub removed: String,
}

/// `channel send`: `status` is always `sent`; `peers` counts subscribed connected peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPosted {
    pub msg_id: String,
    pub peers: usize,
    pub status: String,
}

/// One channel as `channel list` prints it: the channel service's own view.
pub use crate::channels::ChannelView as ChannelLine;

/// One member as `channel members` prints it: a contact name, `(you)`, or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLine {
    pub uuid: String,
    pub name: Option<String>,
}

/// How a `connect` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectStatus {
    Direct,
    Denied,
    Offline,
    Timeout,
    Relayed,
}

impl ConnectStatus {
    /// The status word, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectStatus::Direct => "direct",
            ConnectStatus::Denied => "denied",
            ConnectStatus::Offline => "offline",
            ConnectStatus::Timeout => "timeout",
            ConnectStatus::Relayed => "relayed",
        }
    }
}

/// `connect`: `addr` only when direct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectAnswer {
    pub addr: Option<String>,
    pub status: ConnectStatus,
}

/// `disconnect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    pub disconnected: bool,
}

/// One waiting CONNECT request: the event loop's own view.
pub use crate::net::ConnectRequestView as RequestLine;

/// `accept` and `deny`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAnswered {
    pub accepted: bool,
    pub request_id: u64,
}

/// `ui`: where the app and HTTP API listen, and the URL that opens the app (it carries
/// the token, in the fragment, which browsers never send).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UiAnswer {
    pub address: String,
    pub url: String,
}

//! `channel …`: thin clients of the control socket.

use std::path::Path;

use clap::Subcommand;

use super::messages::{finish, message_text, stream};
use super::{ask_full, print_json, CliError};
use crate::control::answers::{
    ChannelInvited, ChannelJoined, ChannelLeft, ChannelLine, ChannelMemberRemoved, ChannelPosted,
    MemberLine,
};
use crate::control::{ControlRequest, ControlResponse, ErrorKind};
use crate::wire::frame::MAX_CHANNEL_TEXT;

/// `channel` subcommands.
#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Create a channel and join it; prints its id
    #[command(
        after_help = "Examples:\n  ptpchat channel create rust-talk\n  ptpchat channel create ops --private --json"
    )]
    Create {
        /// 1-64 characters of a-z, 0-9, '-', '_', '.'
        name: String,
        /// Only invited members can read it (posts are encrypted with a channel key)
        #[arg(long)]
        private: bool,
    },
    /// Join a public channel by name or id, or a private one you were invited to
    #[command(after_help = "Example:\n  ptpchat channel join rust-talk")]
    Join {
        /// Channel name or id
        channel: String,
    },
    /// Leave a channel (a private channel's key is rotated for those who stay)
    #[command(after_help = "Example:\n  ptpchat channel leave rust-talk")]
    Leave {
        /// Channel name or id
        channel: String,
    },
    /// List the channels you are in; --all adds public channels discovered on the network
    #[command(after_help = "Example:\n  ptpchat channel list --all --json")]
    List {
        #[arg(long)]
        all: bool,
    },
    /// List a channel's members
    #[command(after_help = "Example:\n  ptpchat channel members rust-talk --json")]
    Members {
        /// Channel name or id
        channel: String,
    },
    /// Invite someone into a private channel (sends them its key, sealed to them)
    #[command(after_help = "Example:\n  ptpchat channel invite ops carol")]
    Invite {
        /// Channel name or id
        channel: String,
        /// A UUID, ptpchat: URI or contact name
        who: String,
    },
    /// Remove a member from a private channel: its key rotates to a new epoch the removed
    /// member never gets
    #[command(after_help = "Example:\n  ptpchat channel remove ops mallory")]
    Remove {
        /// Channel name or id
        channel: String,
        /// A UUID, ptpchat: URI or contact name
        who: String,
    },
    /// Post to a channel; exit 0 once it went to at least one member
    #[command(
        after_help = "Examples:\n  ptpchat channel send rust-talk \"hi all\"\n  echo hi | ptpchat channel send rust-talk -"
    )]
    Send {
        /// Channel name or id
        channel: String,
        /// The text; `-` or nothing reads it from stdin
        text: Option<String>,
    },
}

fn print_channel(c: &ChannelLine) {
    let mut flags = String::new();
    if c.private {
        flags.push_str(" private");
    }
    if c.joined {
        flags.push_str(" joined");
    } else if c.invited {
        flags.push_str(" invited");
    }
    println!(
        "{:24} {}  {} members{}",
        c.name, c.channel_id, c.members, flags
    );
}

fn print_member(m: &MemberLine) {
    match &m.name {
        Some(n) => println!("{}  {n}", m.uuid),
        None => println!("{}", m.uuid),
    }
}

/// Prints a one-answer channel command's result: its JSON, or the channel id it names.
fn print_answer<T: serde::de::DeserializeOwned + serde::Serialize>(
    resp: &ControlResponse,
    json: bool,
    channel_id: fn(&T) -> &str,
) -> Result<(), CliError> {
    if let Some(a) = resp.data_as::<T>()? {
        if json {
            print_json(&a);
        } else {
            println!("{}", channel_id(&a));
        }
    }
    Ok(())
}

/// Which answer type a one-answer channel command gets.
#[derive(Clone, Copy)]
enum Answer {
    Joined,
    Left,
    Invited,
    Removed,
    Posted,
}

pub async fn channel(home: &Path, json: bool, cmd: ChannelCommand) -> Result<(), CliError> {
    let (req, kind) = match cmd {
        ChannelCommand::List { all } => {
            return stream(
                home,
                json,
                ControlRequest::ChannelList { all },
                print_channel,
            )
            .await
        }
        ChannelCommand::Members { channel } => {
            return stream(
                home,
                json,
                ControlRequest::ChannelMembers { channel },
                print_member,
            )
            .await
        }
        ChannelCommand::Create { name, private } => (
            ControlRequest::ChannelCreate { name, private },
            Answer::Joined,
        ),
        ChannelCommand::Join { channel } => {
            (ControlRequest::ChannelJoin { channel }, Answer::Joined)
        }
        ChannelCommand::Leave { channel } => {
            (ControlRequest::ChannelLeave { channel }, Answer::Left)
        }
        ChannelCommand::Invite { channel, who } => (
            ControlRequest::ChannelInvite { channel, who },
            Answer::Invited,
        ),
        ChannelCommand::Remove { channel, who } => (
            ControlRequest::ChannelRemove { channel, who },
            Answer::Removed,
        ),
        ChannelCommand::Send { channel, text } => {
            let text = message_text(text)?;
            if text.len() > MAX_CHANNEL_TEXT {
                return Err(CliError::new(
                    ErrorKind::Failed,
                    format!("a channel post is at most {MAX_CHANNEL_TEXT} bytes"),
                ));
            }
            (
                ControlRequest::ChannelSend { channel, text },
                Answer::Posted,
            )
        }
    };
    let resp = ask_full(home, req).await?;
    if resp.ok {
        match kind {
            Answer::Joined => print_answer(&resp, json, |a: &ChannelJoined| &a.channel_id)?,
            Answer::Left => print_answer(&resp, json, |a: &ChannelLeft| &a.channel_id)?,
            Answer::Invited => print_answer(&resp, json, |a: &ChannelInvited| &a.channel_id)?,
            Answer::Removed => print_answer(&resp, json, |a: &ChannelMemberRemoved| &a.channel_id)?,
            Answer::Posted => {
                if let Some(a) = resp.data_as::<ChannelPosted>()? {
                    if json {
                        print_json(&a);
                    } else {
                        println!("sent {} to {} peers", a.msg_id, a.peers);
                    }
                }
            }
        }
    }
    finish(resp)
}

//! `send`, `recv`, `history` and `contacts`: thin clients of the control socket.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ask_full, print_json, CliError};
use crate::control::answers::{ContactRemoved, SendAnswer, SendStatus};
use crate::control::MessageView;
use crate::control::{self, ContactView, ControlRequest, ControlResponse, Direction, ErrorKind};
use crate::wire::envelope::MAX_TEXT_BYTES;

/// `contacts` subcommands.
#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Add a contact: looks the identity up and pins its key
    #[command(
        after_help = "Examples:\n  ptpchat contacts add bob 0b7e3f0c-1d2a-8c4e-9f00-1234567890ab\n  ptpchat contacts add bob 'ptpchat:0b7e3f0c-…?fp=1a2b…'   # verified at once"
    )]
    Add {
        /// The name you will use for them
        name: String,
        /// Their UUID or ptpchat: contact URI
        target: String,
    },
    /// List contacts
    #[command(after_help = "Example:\n  ptpchat contacts list --json")]
    List,
    /// Mark a contact verified if the fingerprint (read out of band) matches
    #[command(after_help = "Example:\n  ptpchat contacts verify bob 1a2b3c4d5e6f…")]
    Verify { name: String, fingerprint: String },
    /// Remove a contact
    #[command(after_help = "Example:\n  ptpchat contacts rm bob")]
    Rm { name: String },
}

/// The message text: the argument, or stdin for `-` or no argument (one trailing newline
/// dropped, so `echo hi | ptpchat send bob -` sends "hi").
pub fn message_text(arg: Option<String>) -> Result<String, CliError> {
    let text = match arg.as_deref() {
        Some("-") | None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .take(MAX_TEXT_BYTES as u64 + 2)
                .read_to_end(&mut buf)
                .map_err(|e| CliError::new(ErrorKind::Failed, format!("cannot read stdin: {e}")))?;
            let mut s = String::from_utf8(buf)
                .map_err(|_| CliError::new(ErrorKind::Failed, "the text on stdin is not UTF-8"))?;
            if s.ends_with('\n') {
                s.pop();
                if s.ends_with('\r') {
                    s.pop();
                }
            }
            s
        }
        Some(t) => t.to_string(),
    };
    if text.len() > MAX_TEXT_BYTES {
        return Err(CliError::new(
            ErrorKind::Failed,
            format!("the text is over the {MAX_TEXT_BYTES}-byte limit; send it as an attachment"),
        ));
    }
    Ok(text)
}

pub async fn send(
    home: &Path,
    json: bool,
    to: String,
    text: Option<String>,
    attach: Vec<PathBuf>,
    timeout: u64,
    idempotency_key: Option<String>,
) -> Result<(), CliError> {
    let text = message_text(text)?;
    let mut files = Vec::new();
    for a in attach {
        let abs = std::fs::canonicalize(&a).map_err(|e| {
            CliError::new(
                ErrorKind::Failed,
                format!("cannot attach {}: {e}", a.display()),
            )
        })?;
        files.push(abs.to_string_lossy().into_owned());
    }
    let resp = ask_full(
        home,
        ControlRequest::Send {
            to,
            text,
            attach: files,
            timeout_ms: Some(timeout.saturating_mul(1000)),
            idempotency_key,
        },
    )
    .await?;
    if let Some(w) = &resp.warning {
        eprintln!("ptpchat: {w}");
    }
    let answer: Option<SendAnswer> = resp.data_as()?;
    match &answer {
        Some(a) if json => print_json(a),
        Some(a) if resp.ok => {
            let id = &a.msg_id;
            match a.status {
                SendStatus::Delivered => println!("delivered {id}"),
                SendStatus::Stored => println!(
                    "stored {id}: the recipient is away; {} of its mailbox relays hold it, and it is also retried directly",
                    a.mailboxes.unwrap_or_default()
                ),
                _ => println!("queued {id}: not delivered yet; it stays in the outbox and is retried for up to 7 days"),
            }
        }
        _ => {}
    }
    finish(resp)
}

/// Turns a final response into the outcome it names: a refusal's error, or for a result
/// that did not finish as asked, its kind with nothing more to say.
pub(super) fn finish(resp: ControlResponse) -> Result<(), CliError> {
    if let Some(refusal) = resp.refusal() {
        return Err(refusal.into());
    }
    match resp.kind {
        Some(kind) => Err(CliError::silent(kind)),
        None => Ok(()),
    }
}

fn print_message(m: &MessageView) {
    let who = |name: &Option<String>, id: &str| name.clone().unwrap_or_else(|| id.to_string());
    let out = m.direction == Direction::Out;
    let arrow = if let Some(ch) = &m.channel {
        if out {
            format!("#{ch} (you)")
        } else {
            format!("#{ch} {}", who(&m.from_name, &m.from))
        }
    } else if out {
        format!("to {}", who(&m.to_name, &m.to))
    } else {
        who(&m.from_name, &m.from)
    };
    let mut flags = String::new();
    if m.verified {
        flags.push_str(" [verified]");
    }
    if m.key_changed {
        flags.push_str(" [KEY CHANGED]");
    }
    if out && m.status != "delivered" && m.status != "sent" {
        flags.push_str(&format!(" [{}]", m.status));
    }
    println!("{}  {arrow}{flags}: {}", m.timestamp, m.text);
    for a in &m.attachments {
        println!(
            "    attachment {} ({}, {} bytes): {}",
            a.name, a.mime, a.size, a.path
        );
    }
}

/// Sends a request answered by a stream of `T`s and prints each, with `line` or as JSON.
pub(super) async fn stream<T: DeserializeOwned + Serialize>(
    home: &Path,
    json: bool,
    req: ControlRequest,
    line: fn(&T),
) -> Result<(), CliError> {
    let end = control::request_stream(home, &req, |r| {
        if let Some(w) = &r.warning {
            eprintln!("ptpchat: {w}");
        }
        if let Some(item) = r.data_as::<T>()? {
            if json {
                print_json(&item);
            } else {
                line(&item);
            }
        }
        Ok(())
    })
    .await?;
    finish(end)
}

pub async fn recv(
    home: &Path,
    json: bool,
    follow: bool,
    since: Option<String>,
    channel: Option<String>,
) -> Result<(), CliError> {
    stream(
        home,
        json,
        ControlRequest::Recv {
            since,
            follow,
            channel,
        },
        print_message,
    )
    .await
}

pub async fn history(home: &Path, json: bool, with: Option<String>) -> Result<(), CliError> {
    stream(home, json, ControlRequest::History { with }, print_message).await
}

fn print_contact(c: &ContactView) {
    println!(
        "{:20} {}  {}{}{}",
        c.name,
        c.uuid,
        c.fingerprint,
        if c.verified { "  verified" } else { "" },
        if c.key_changed { "  KEY CHANGED" } else { "" },
    );
}

pub async fn contacts(home: &Path, json: bool, cmd: ContactsCommand) -> Result<(), CliError> {
    let (req, removing) = match cmd {
        ContactsCommand::List => {
            return stream(home, json, ControlRequest::ContactsList, print_contact).await
        }
        ContactsCommand::Add { name, target } => {
            (ControlRequest::ContactsAdd { name, target }, false)
        }
        ContactsCommand::Verify { name, fingerprint } => {
            (ControlRequest::ContactsVerify { name, fingerprint }, false)
        }
        ContactsCommand::Rm { name } => (ControlRequest::ContactsRm { name }, true),
    };
    let resp = ask_full(home, req).await?;
    if let Some(w) = &resp.warning {
        eprintln!("ptpchat: {w}");
    }
    if resp.ok {
        if removing {
            if let Some(removed) = resp.data_as::<ContactRemoved>()? {
                if json {
                    print_json(&removed);
                }
            }
        } else if let Some(contact) = resp.data_as::<ContactView>()? {
            if json {
                print_json(&contact);
            } else {
                print_contact(&contact);
            }
        }
    }
    finish(resp)
}

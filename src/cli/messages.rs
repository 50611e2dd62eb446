//! `send`, `recv`, `history` and `contacts`: thin clients of the control socket.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{ask_full, exit, plain, print_json, CliError};
use crate::control::{self, ControlRequest, ControlResponse};
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
                .map_err(|e| CliError::new(exit::ERROR, format!("cannot read stdin: {e}")))?;
            let mut s = String::from_utf8(buf)
                .map_err(|_| CliError::new(exit::ERROR, "the text on stdin is not UTF-8"))?;
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
            exit::ERROR,
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
) -> Result<(), CliError> {
    let text = message_text(text)?;
    let mut files = Vec::new();
    for a in attach {
        let abs = std::fs::canonicalize(&a).map_err(|e| {
            CliError::new(exit::ERROR, format!("cannot attach {}: {e}", a.display()))
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
        },
    )
    .await?;
    if let Some(w) = &resp.warning {
        eprintln!("ptpchat: {w}");
    }
    let data = resp.data.clone().unwrap_or_default();
    if json && !data.is_null() {
        print_json(&data);
    } else if resp.ok {
        let status = plain(&data["status"]);
        let id = plain(&data["msg_id"]);
        match status.as_str() {
            "delivered" => println!("delivered {id}"),
            "stored" => println!(
                "stored {id}: the recipient is away; {} of its mailbox relays hold it, and it is also retried directly",
                plain(&data["mailboxes"])
            ),
            _ => println!("queued {id}: not delivered yet; it stays in the outbox and is retried for up to 7 days"),
        }
    }
    finish(resp)
}

/// Turns a final response into the exit code it names.
pub(super) fn finish(resp: ControlResponse) -> Result<(), CliError> {
    if !resp.ok {
        return Err(CliError::new(
            resp.code.unwrap_or(exit::ERROR),
            resp.error.unwrap_or_else(|| "the node refused".into()),
        ));
    }
    match resp.code {
        Some(code) if code != exit::OK => Err(CliError::silent(code)),
        _ => Ok(()),
    }
}

fn print_message(m: &serde_json::Value) {
    let who = |name: &serde_json::Value, id: &serde_json::Value| match name.as_str() {
        Some(n) => n.to_string(),
        None => plain(id),
    };
    let arrow = if let Some(ch) = m["channel"].as_str() {
        if m["direction"] == "out" {
            format!("#{ch} (you)")
        } else {
            format!("#{ch} {}", who(&m["from_name"], &m["from"]))
        }
    } else if m["direction"] == "out" {
        format!("to {}", who(&m["to_name"], &m["to"]))
    } else {
        who(&m["from_name"], &m["from"])
    };
    let mut flags = String::new();
    if m["verified"] == true {
        flags.push_str(" [verified]");
    }
    if m["key_changed"] == true {
        flags.push_str(" [KEY CHANGED]");
    }
    if m["direction"] == "out" && m["status"] != "delivered" && m["status"] != "sent" {
        flags.push_str(&format!(" [{}]", plain(&m["status"])));
    }
    println!(
        "{}  {arrow}{flags}: {}",
        plain(&m["timestamp"]),
        plain(&m["text"])
    );
    for a in m["attachments"].as_array().into_iter().flatten() {
        println!(
            "    attachment {} ({}, {} bytes): {}",
            plain(&a["name"]),
            plain(&a["mime"]),
            plain(&a["size"]),
            plain(&a["path"])
        );
    }
}

pub(super) async fn stream(
    home: &Path,
    json: bool,
    req: ControlRequest,
    line: fn(&serde_json::Value),
) -> Result<(), CliError> {
    let end = control::request_stream(home, &req, |r| {
        if let Some(w) = &r.warning {
            eprintln!("ptpchat: {w}");
        }
        if let Some(d) = &r.data {
            if json {
                print_json(d);
            } else {
                line(d);
            }
        }
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

fn print_contact(c: &serde_json::Value) {
    println!(
        "{:20} {}  {}{}{}",
        plain(&c["name"]),
        plain(&c["uuid"]),
        plain(&c["fingerprint"]),
        if c["verified"] == true {
            "  verified"
        } else {
            ""
        },
        if c["key_changed"] == true {
            "  KEY CHANGED"
        } else {
            ""
        },
    );
}

pub async fn contacts(home: &Path, json: bool, cmd: ContactsCommand) -> Result<(), CliError> {
    let req = match cmd {
        ContactsCommand::List => {
            return stream(home, json, ControlRequest::ContactsList, print_contact).await
        }
        ContactsCommand::Add { name, target } => ControlRequest::ContactsAdd { name, target },
        ContactsCommand::Verify { name, fingerprint } => {
            ControlRequest::ContactsVerify { name, fingerprint }
        }
        ContactsCommand::Rm { name } => ControlRequest::ContactsRm { name },
    };
    let resp = ask_full(home, req).await?;
    if let Some(w) = &resp.warning {
        eprintln!("ptpchat: {w}");
    }
    if resp.ok {
        if let Some(d) = &resp.data {
            if json {
                print_json(d);
            } else if d.get("fingerprint").is_some() {
                print_contact(d);
            }
        }
    }
    finish(resp)
}

//! Control requests for messages and contacts: `send`, `recv`, `history`, `contacts …`,
//! and the JSON views they print (the shapes CLI.md promises).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::answers::{ContactRemoved, SendAnswer, SendStatus};
use super::ops::{Answers, GONE};
use super::{ControlResponse, ErrorKind, Refusal};
use crate::identity::{parse_contact, Fingerprint};
use crate::messaging::{Delivery, Messenger};
use crate::net::{Client, LookupError};
use crate::store::{Contact, HistoryEntry};

/// How long `send` waits for the ACK by default.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// History rows read per step.
const PAGE: usize = 1000;

/// One attachment in a message line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentView {
    pub name: String,
    pub mime: String,
    pub size: u64,
    pub path: String,
}

/// Which way a message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received.
    In,
    /// Sent.
    Out,
}

/// One message as `recv` and `history` print it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub msg_id: String,
    pub direction: Direction,
    pub from: String,
    pub from_name: Option<String>,
    pub to: String,
    pub to_name: Option<String>,
    /// The channel's name for a channel post; null for direct messages.
    pub channel: Option<String>,
    /// The channel's id for a channel post; null for direct messages.
    pub channel_id: Option<String>,
    pub timestamp: String,
    pub text: String,
    pub attachments: Vec<AttachmentView>,
    /// The sender is a contact whose fingerprint you verified.
    pub verified: bool,
    /// The contact's identity key is not the one pinned for it.
    pub key_changed: bool,
    /// `received`, or for sent messages `queued`, `delivered`, `failed`, `expired`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One contact as `contacts list` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    pub name: String,
    pub uuid: String,
    pub fingerprint: String,
    pub verified: bool,
    pub key_changed: bool,
}

/// RFC 3339 (UTC, milliseconds) for ms since the Unix epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Contacts by UUID, for naming senders.
struct Names {
    by_uuid: HashMap<[u8; 16], (String, Contact)>,
    channels: HashMap<[u8; 16], String>,
    /// The store's names generation these were read at.
    generation: u64,
}

impl Names {
    fn load(m: &Messenger) -> Names {
        let generation = m.store().names_generation();
        let by_uuid = m
            .store()
            .contacts()
            .unwrap_or_default()
            .into_iter()
            .map(|(n, c)| (c.uuid, (n, c)))
            .collect();
        let channels = m
            .store()
            .channels()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, c)| (*id.as_bytes(), c.name))
            .collect();
        Names {
            by_uuid,
            channels,
            generation,
        }
    }

    fn name(&self, uuid: &[u8; 16]) -> Option<String> {
        self.by_uuid.get(uuid).map(|(n, _)| n.clone())
    }

    fn key_changed(&self, m: &Messenger, uuid: &[u8; 16]) -> bool {
        self.by_uuid
            .get(uuid)
            .is_some_and(|(_, c)| key_changed(m, c))
    }
}

fn key_changed(m: &Messenger, c: &Contact) -> bool {
    m.latest_document(&Uuid::from_bytes(c.uuid))
        .is_some_and(|d| d.doc().current_key != c.pinned_key)
}

fn view(m: &Messenger, me: &Uuid, names: &Names, e: &HistoryEntry) -> MessageView {
    let me = *me.as_bytes();
    let (from, to) = if e.incoming {
        (e.peer, me)
    } else {
        (me, e.peer)
    };
    let channel = e.channel.map(|c| *c);
    MessageView {
        msg_id: Uuid::from_bytes(e.msg_id).to_string(),
        direction: if e.incoming {
            Direction::In
        } else {
            Direction::Out
        },
        from: Uuid::from_bytes(from).to_string(),
        from_name: names.name(&from),
        to: Uuid::from_bytes(to).to_string(),
        to_name: match channel {
            Some(c) => names.channels.get(&c).cloned(),
            None => names.name(&to),
        },
        channel: channel.map(|c| {
            names
                .channels
                .get(&c)
                .cloned()
                .unwrap_or_else(|| Uuid::from_bytes(c).to_string())
        }),
        channel_id: channel.map(|c| Uuid::from_bytes(c).to_string()),
        timestamp: rfc3339(e.ts),
        text: e.text.clone(),
        attachments: e
            .attachments
            .iter()
            .map(|a| AttachmentView {
                name: a.name.clone(),
                mime: a.mime.clone(),
                size: a.size,
                path: a.path.clone(),
            })
            .collect(),
        verified: names
            .by_uuid
            .get(&e.peer)
            .is_some_and(|(_, c)| c.verified && e.incoming),
        key_changed: names.key_changed(m, &e.peer),
        status: e.status.clone(),
        detail: e.detail.clone(),
    }
}

/// A UUID, a `ptpchat:` URI or a contact name, as the UUID it names.
pub(super) fn resolve(m: &Messenger, target: &str) -> Result<(Uuid, Option<Fingerprint>), Refusal> {
    if let Ok(found) = parse_contact(target) {
        return Ok(found);
    }
    match m.store().contact(target) {
        Ok(Some(c)) => Ok((Uuid::from_bytes(c.uuid), None)),
        Ok(None) => Err(Refusal::failed(format!(
            "{target:?} is neither a UUID nor a contact name"
        ))),
        Err(e) => Err(Refusal::failed(e)),
    }
}

pub(super) async fn send(
    m: &Messenger,
    to: String,
    text: String,
    attach: Vec<String>,
    timeout_ms: Option<u64>,
    idempotency_key: Option<String>,
) -> Result<ControlResponse, Refusal> {
    let (uuid, fp) = resolve(m, &to)?;
    if let (Some(fp), Some(doc)) = (fp, m.known_document(&uuid)) {
        if doc.doc().fingerprint() != fp {
            return Err(Refusal::failed(
                "the fingerprint in the URI does not match that UUID",
            ));
        }
    }
    let names = Names::load(m);
    let warning = names.key_changed(m, uuid.as_bytes()).then(|| {
        format!(
            "WARNING: the identity key of contact {} changed since you added it; check its fingerprint (contacts verify)",
            names.name(uuid.as_bytes()).unwrap_or_default()
        )
    });
    let files = attach.into_iter().map(PathBuf::from).collect();
    let sending = match idempotency_key {
        Some(key) => m.send_once(uuid, text, files, &key).await,
        None => m.send(uuid, text, files).await,
    }
    .map_err(Refusal::failed)?;
    let wait = timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_SEND_TIMEOUT);
    let msg_id = sending.msg_id.to_string();
    let answer = |status, mailboxes, reason| SendAnswer {
        mailboxes,
        msg_id: msg_id.clone(),
        reason,
        status,
    };
    let mut r = match tokio::time::timeout(wait, sending.outcome).await {
        Ok(Ok(Delivery::Delivered)) => {
            ControlResponse::ok(answer(SendStatus::Delivered, None, None))
        }
        Ok(Ok(Delivery::Failed(reason))) => ControlResponse::err(
            ErrorKind::Failed,
            format!("the recipient refused the message: {reason}"),
        )
        .with_data(answer(SendStatus::Failed, None, Some(reason))),
        Ok(Ok(Delivery::Expired)) => {
            ControlResponse::err(ErrorKind::Failed, "the message expired undelivered")
                .with_data(answer(SendStatus::Expired, None, None))
        }
        Ok(Ok(Delivery::Stored(mailboxes))) => {
            ControlResponse::ok(answer(SendStatus::Stored, Some(mailboxes), None))
                .unfinished(ErrorKind::Pending)
        }
        // Not ACKed yet (or the node is stopping): it stays in the outbox.
        Ok(Err(_)) | Err(_) => ControlResponse::ok(answer(SendStatus::Queued, None, None))
            .unfinished(ErrorKind::Pending),
    };
    r.warning = warning;
    Ok(r)
}

/// Streams received messages after `since`; with `follow`, keeps streaming new ones until
/// the client goes away.
pub(super) async fn recv<A: Answers>(
    m: &Messenger,
    me: Uuid,
    since: Option<String>,
    follow: bool,
    channel: Option<Uuid>,
    w: &mut A,
) -> std::io::Result<()> {
    let mut last = match since {
        None => 0,
        Some(s) => {
            let found = Uuid::parse_str(&s)
                .ok()
                .and_then(|id| m.store().history_seq_of(&id).ok().flatten());
            match found {
                Some(seq) => seq,
                None => {
                    let r = ControlResponse::err(
                        ErrorKind::NotFound,
                        format!("no stored message with id {s:?}"),
                    );
                    return w.answer(r).await;
                }
            }
        }
    };
    // Subscribe before reading the history so nothing falls between the two.
    let mut live = follow.then(|| m.subscribe());
    let mut names = Names::load(m);
    let wanted =
        |e: &HistoryEntry| channel.is_none_or(|c| e.channel.is_some_and(|x| *x == *c.as_bytes()));
    last = catch_up(m, &me, &names, last, &wanted, w).await?;
    let Some(live) = live.as_mut() else {
        return w.answer(ControlResponse::done()).await;
    };
    loop {
        tokio::select! {
            got = live.recv() => match got {
                Ok((seq, entry)) if seq > last => {
                    last = seq;
                    if !entry.incoming || !wanted(&entry) {
                        continue;
                    }
                    let unnamed_channel = entry
                        .channel
                        .is_some_and(|c| !names.channels.contains_key(&*c));
                    // Re-read names only if one is missing and contacts or channels changed
                    // since: a stranger's messages must not cost a table scan each.
                    if (names.name(&entry.peer).is_none() || unnamed_channel)
                        && m.store().names_generation() != names.generation
                    {
                        names = Names::load(m);
                    }
                    w.answer(ControlResponse::ok(view(m, &me, &names, &entry))).await?;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    last = catch_up(m, &me, &names, last, &wanted, w).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            () = w.gone() => return Ok(()),
        }
    }
}

/// Writes every received message after `last`; returns the new position.
async fn catch_up<A: Answers>(
    m: &Messenger,
    me: &Uuid,
    names: &Names,
    mut last: u64,
    wanted: &(dyn Fn(&HistoryEntry) -> bool + Sync),
    w: &mut A,
) -> std::io::Result<u64> {
    loop {
        let page = match m.store().history_after(last, PAGE) {
            Ok(p) => p,
            Err(e) => {
                w.answer(Refusal::failed(e).into()).await?;
                return Ok(last);
            }
        };
        if page.is_empty() {
            return Ok(last);
        }
        for (seq, e) in page {
            last = seq;
            if e.incoming && wanted(&e) {
                w.answer(ControlResponse::ok(view(m, me, names, &e)))
                    .await?;
            }
        }
    }
}

pub(super) async fn history<A: Answers>(
    m: &Messenger,
    me: Uuid,
    with: Option<String>,
    w: &mut A,
) -> std::io::Result<()> {
    let peer = match with {
        None => None,
        Some(t) => match resolve(m, &t) {
            Ok((u, _)) => Some(*u.as_bytes()),
            Err(r) => return w.answer(r.into()).await,
        },
    };
    let names = Names::load(m);
    let mut last = 0;
    loop {
        let page = match m.store().history_after(last, PAGE) {
            Ok(p) => p,
            Err(e) => return w.answer(Refusal::failed(e).into()).await,
        };
        if page.is_empty() {
            break;
        }
        for (seq, e) in page {
            last = seq;
            if peer.is_none_or(|p| p == e.peer) {
                w.answer(ControlResponse::ok(view(m, &me, &names, &e)))
                    .await?;
            }
        }
    }
    w.answer(ControlResponse::done()).await
}

fn valid_name(name: &str) -> Result<(), Refusal> {
    if name.is_empty()
        || name.chars().count() > 64
        || name
            .chars()
            .any(|c| c.is_control() || crate::messaging::files::is_bidi_control(c))
        || name.trim() != name
    {
        return Err(Refusal::new(
            ErrorKind::BadInput,
            "a contact name is 1-64 characters, without control characters or outer spaces",
        ));
    }
    if parse_contact(name).is_ok() {
        return Err(Refusal::new(
            ErrorKind::BadInput,
            "a contact name cannot be a UUID",
        ));
    }
    Ok(())
}

fn contact_view(m: &Messenger, name: &str, c: &Contact) -> ContactView {
    ContactView {
        name: name.to_string(),
        uuid: Uuid::from_bytes(c.uuid).to_string(),
        fingerprint: Fingerprint(c.fingerprint).to_string(),
        verified: c.verified,
        key_changed: key_changed(m, c),
    }
}

pub(super) async fn contacts_add(
    m: &Messenger,
    net: &Client,
    name: String,
    target: String,
) -> Result<ControlResponse, Refusal> {
    valid_name(&name)?;
    let (uuid, fp) = parse_contact(&target).map_err(|e| Refusal::new(ErrorKind::BadInput, e))?;
    let contacts = m.store().contacts().unwrap_or_default();
    if contacts.iter().any(|(n, _)| *n == name) {
        return Err(Refusal::failed(format!(
            "there is already a contact named {name:?}"
        )));
    }
    if let Some((n, _)) = contacts.iter().find(|(_, c)| c.uuid == *uuid.as_bytes()) {
        return Err(Refusal::failed(format!(
            "{uuid} is already your contact {n:?}"
        )));
    }
    let doc = match net.whois(uuid).await {
        Ok(d) => d,
        Err(LookupError::NotFound(_)) => m.known_document(&uuid).ok_or_else(|| {
            Refusal::new(
                ErrorKind::NotFound,
                format!("no valid identity document found for {uuid}"),
            )
        })?,
        Err(LookupError::NodeGone) => return Err(Refusal::failed(GONE)),
    };
    let fingerprint = doc.doc().fingerprint();
    if fp.is_some_and(|fp| fp != fingerprint) {
        return Err(Refusal::failed(
            "the fingerprint in the URI does not match the identity found; contact not added",
        ));
    }
    m.remember_document(&doc);
    let c = Contact {
        uuid: *uuid.as_bytes(),
        fingerprint: fingerprint.0,
        pinned_key: doc.doc().current_key,
        // A URI carrying the fingerprint came out of band (a QR code, say): that is the check.
        verified: fp.is_some(),
        added: crate::unix_now(),
    };
    m.store().put_contact(&name, &c).map_err(Refusal::failed)?;
    Ok(ControlResponse::ok(contact_view(m, &name, &c)))
}

pub(super) async fn contacts_list<A: Answers>(m: &Messenger, w: &mut A) -> std::io::Result<()> {
    let contacts = match m.store().contacts() {
        Ok(c) => c,
        Err(e) => return w.answer(Refusal::failed(e).into()).await,
    };
    for (name, c) in contacts {
        let v = contact_view(m, &name, &c);
        let mut r = ControlResponse::ok(&v);
        if v.key_changed {
            r.warning = Some(format!(
                "WARNING: the identity key of {name:?} changed since it was pinned; verify its fingerprint again"
            ));
        }
        w.answer(r).await?;
    }
    w.answer(ControlResponse::done()).await
}

pub(super) fn contacts_verify(
    m: &Messenger,
    name: String,
    fingerprint: String,
) -> Result<ControlResponse, Refusal> {
    let fp = Fingerprint::parse(&fingerprint).ok_or_else(|| {
        Refusal::new(
            ErrorKind::BadInput,
            format!("not a fingerprint: {fingerprint:?}"),
        )
    })?;
    let mut c = m
        .store()
        .contact(&name)
        .map_err(Refusal::failed)?
        .ok_or_else(|| Refusal::new(ErrorKind::NotFound, format!("no contact named {name:?}")))?;
    if fp.0 != c.fingerprint {
        return Err(Refusal::failed(format!(
            "fingerprint mismatch for {name:?}: NOT verified, nothing changed"
        )));
    }
    c.verified = true;
    // The user checked the identity now: pin the key it has now.
    if let Some(doc) = m.latest_document(&Uuid::from_bytes(c.uuid)) {
        c.pinned_key = doc.doc().current_key;
    }
    m.store().put_contact(&name, &c).map_err(Refusal::failed)?;
    Ok(ControlResponse::ok(contact_view(m, &name, &c)))
}

pub(super) fn contacts_rm(m: &Messenger, name: String) -> Result<ControlResponse, Refusal> {
    match m.store().remove_contact(&name) {
        Ok(true) => Ok(ControlResponse::ok(ContactRemoved {
            name,
            removed: true,
        })),
        Ok(false) => Err(Refusal::new(
            ErrorKind::NotFound,
            format!("no contact named {name:?}"),
        )),
        Err(e) => Err(Refusal::failed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_305_600_000), "2026-11-22T00:00:00.000Z");
    }
}

//! The sending side: accepting a message into the durable outbox, and delivering it.
//!
//! Each recipient has a queue. A scheduler starts one worker per recipient whose queue is
//! due; the worker finds the recipient through the directory, seals up to
//! [`MAX_BATCH`](crate::wire::verbs::MAX_BATCH) messages per MESSAGE request with up to
//! [`IN_FLIGHT`] requests outstanding, streams attachments when asked for them, and
//! commits each outcome. A failure puts the batch back and backs off (2 s doubling to
//! 10 min); a connection from the recipient makes its queue due at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::queue::Queued;
use super::transfer_state::{for_now, Need, Next, Upload};
use super::{files, Inner, SendError, Sending};
use crate::counters::Counter;
use crate::counters::Sent;
use crate::identity::SignedDocument;
use crate::net::dial::DialReason;
use crate::store::messages;
use crate::store::{HistoryEntry, OutboxEntry, StoredAttachment};
use crate::wire::envelope::{self, AttachmentMeta, Envelope};
use crate::wire::verbs::{Outcome, Request, Response};

pub(super) use crate::store::messages::RECEIPT_SEQ_BASE;

/// MESSAGE requests outstanding to one recipient at once.
const IN_FLIGHT: usize = 16;

/// How a sent message ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The recipient ACKed: it has the message stored.
    Delivered,
    /// The recipient refused it (NACK with this reason).
    Failed(String),
    /// Not delivered within 7 days.
    Expired,
    /// Not delivered yet, but stored at the recipient's mailbox (this many relays
    /// receipted it). Told to whoever waits; delivery goes on.
    Stored(usize),
}

impl Delivery {
    fn status(&self) -> &'static str {
        match self {
            Delivery::Delivered => "delivered",
            Delivery::Failed(_) => "failed",
            Delivery::Expired => "expired",
            Delivery::Stored(_) => "stored",
        }
    }
}

/// Loads what was undelivered when the node last stopped.
pub(super) fn load(inner: &Inner) -> Result<(), crate::store::StoreError> {
    let entries = inner.store.outbox()?;
    let mut outbox = inner.outbox.lock();
    let now = Instant::now();
    for (seq, e) in entries {
        let m = Queued {
            seq,
            msg_id: Uuid::from_bytes(e.msg_id),
            signed: Arc::new(e.signed),
            files: e.files,
            created_ms: e.created_ms,
            stored_at: e.stored_at,
        };
        outbox.enqueue(Uuid::from_bytes(e.to), m, now);
    }
    if !outbox.queues.is_empty() {
        info!(
            recipients = outbox.queues.len(),
            "resuming delivery of queued messages"
        );
    }
    Ok(())
}

/// A direct message of `kind` ("text", [`crate::wire::frame::GRANT_KIND`] or
/// [`crate::wire::receipt::RECEIPT_KIND`]) with its `body`; `shown` is what our own history
/// shows for it, `None` for a delivery receipt, which has no history row (its outbox key
/// is taken from [`RECEIPT_SEQ_BASE`] up).
pub(super) struct Outgoing {
    pub kind: &'static str,
    pub body: String,
    pub shown: Option<String>,
}

/// A send with an idempotency key: the key's digest, and a digest of what is asked.
pub(super) struct Once {
    pub key: [u8; 32],
    pub request: [u8; 32],
}

/// The message sent before under `once`'s key, as a [`Sending`] whose outcome comes now if
/// it is over, or when it is; an error if the key was used for another message.
pub(super) fn again(
    inner: &Inner,
    once: &Once,
    held: &messages::Idempotent,
    status: &str,
) -> Result<Sending, SendError> {
    if held.request != once.request {
        return Err(SendError::BadInput(
            "this idempotency key was used for a different message".into(),
        ));
    }
    let msg_id = Uuid::from_bytes(held.msg_id);
    let (tx, outcome) = oneshot::channel();
    let done = match status.split_once(':') {
        Some(("failed", why)) => Some(Delivery::Failed(why.to_string())),
        _ => match status {
            "delivered" => Some(Delivery::Delivered),
            "expired" => Some(Delivery::Expired),
            "failed" => Some(Delivery::Failed(String::new())),
            _ => None,
        },
    };
    match done {
        Some(d) => {
            let _ = tx.send(d);
        }
        // Still in the outbox: the retry waits for the same outcome as the first send.
        None => inner
            .outbox
            .lock()
            .waiters
            .entry(msg_id)
            .or_default()
            .push(tx),
    }
    Ok(Sending { msg_id, outcome })
}

pub(super) async fn send(
    inner: &Arc<Inner>,
    to: Uuid,
    out: Outgoing,
    attachments: Vec<PathBuf>,
    once: Option<Once>,
) -> Result<Sending, SendError> {
    let Outgoing { kind, body, shown } = out;
    let text = body;
    if text.len() > envelope::MAX_TEXT_BYTES {
        return Err(SendError::BadInput(format!(
            "the text is {} bytes; the limit is {}",
            text.len(),
            envelope::MAX_TEXT_BYTES
        )));
    }
    if attachments.len() > envelope::MAX_ATTACHMENTS {
        return Err(SendError::BadInput(format!(
            "at most {} attachments per message",
            envelope::MAX_ATTACHMENTS
        )));
    }
    let mut keys_rx = inner.keys.clone();
    let keys = keys_rx
        .wait_for(|k| k.is_some())
        .await
        .map_err(|_| SendError::Stopped)?
        .clone()
        .ok_or(SendError::Stopped)?;
    if to == keys.uuid {
        return Err(SendError::BadInput("that is your own UUID".into()));
    }
    let msg_id = Uuid::new_v4();
    if let Some(once) = &once {
        if let Some((held, status)) = inner.store.idempotent(&once.key)? {
            return again(inner, once, &held, &status);
        }
    }
    let (metas, stored, paths) = copy_attachments(inner, &msg_id, attachments).await?;
    let ts = crate::unix_now_ms();
    let env = Envelope {
        v: envelope::ENVELOPE_VERSION,
        msg_id: *msg_id.as_bytes(),
        from: *keys.uuid.as_bytes(),
        to: *to.as_bytes(),
        ts,
        kind: kind.into(),
        body: text,
        attachments: metas,
    };
    let signed = envelope::sign(&env, &keys);
    let entry = OutboxEntry {
        msg_id: *msg_id.as_bytes(),
        to: *to.as_bytes(),
        signed: signed.clone(),
        files: paths.clone(),
        created_ms: ts,
        stored_at: Vec::new(),
    };
    let history = shown.map(|text| HistoryEntry {
        msg_id: *msg_id.as_bytes(),
        incoming: false,
        peer: *to.as_bytes(),
        ts,
        text,
        attachments: stored,
        status: "queued".into(),
        detail: None,
        channel: None,
    });
    // Nobody waits for a delivery receipt.
    let waited = history.is_some();
    let key = once.as_ref().map(|o| (o.key, o.request));
    let enqueued = inner
        .writer
        .write(move |txn| {
            let key = key.as_ref().map(|(k, r)| (k, r));
            messages::enqueue(txn, history.as_ref(), &entry, key)
        })
        .await?;
    let seq = match (enqueued, &once) {
        (messages::Enqueued::New(seq), _) => seq,
        // Another send with the key got there first (the caller keeps such sends apart,
        // so this is a race it lost): what it copied is not needed.
        (messages::Enqueued::Already(held), Some(once)) => {
            return again(inner, once, &held, "queued");
        }
        (messages::Enqueued::Already(_), None) => {
            return Err(SendError::BadInput("queued twice".into()));
        }
    };
    let (tx, outcome) = oneshot::channel();
    {
        let mut outbox = inner.outbox.lock();
        if waited {
            outbox.waiters.entry(msg_id).or_default().push(tx);
        }
        let m = Queued {
            seq,
            msg_id,
            signed: Arc::new(signed),
            files: paths,
            created_ms: ts,
            stored_at: Vec::new(),
        };
        outbox.enqueue(to, m, Instant::now());
    }
    inner.wake.notify_one();
    Ok(Sending { msg_id, outcome })
}

type Copied = (Vec<AttachmentMeta>, Vec<StoredAttachment>, Vec<String>);

/// Copies each attachment into `<home>/files/sent/<msg_id>/`, hashing it on the way, so
/// retries never depend on the user's file staying put.
async fn copy_attachments(
    inner: &Inner,
    msg_id: &Uuid,
    paths: Vec<PathBuf>,
) -> Result<Copied, SendError> {
    let mut metas = Vec::new();
    let mut stored = Vec::new();
    let mut copies = Vec::new();
    if paths.is_empty() {
        return Ok((metas, stored, copies));
    }
    let dir = inner.files.join("sent").join(msg_id.to_string());
    let max = inner.max_attachment;
    let dir2 = dir.clone();
    let copied = tokio::task::spawn_blocking(move || {
        files::private_dir(&dir2)?;
        let mut out = Vec::new();
        for (i, src) in paths.iter().enumerate() {
            let raw = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = files::safe_name(&raw, &format!("attachment-{i}"));
            let dst = dir2.join(format!("{i}-{name}"));
            let (size, sha) = files::copy_hashing(src, &dst, max)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
            out.push((name, size, sha, dst));
        }
        Ok::<_, std::io::Error>(out)
    })
    .await
    .map_err(|_| SendError::Stopped)?;
    let copied = match copied {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(SendError::BadInput(format!("cannot attach {e}")));
        }
    };
    for (name, size, sha256, dst) in copied {
        let mime = files::mime_for(&name).to_string();
        metas.push(AttachmentMeta {
            name: name.clone(),
            mime: mime.clone(),
            size,
            sha256,
            key: crate::identity::random_secret(),
        });
        let path = dst.to_string_lossy().into_owned();
        stored.push(StoredAttachment {
            name,
            mime,
            size,
            path: path.clone(),
        });
        copies.push(path);
    }
    Ok((metas, stored, copies))
}

/// Starts a worker for every queue that is due, and sleeps until the next one is.
pub(super) async fn scheduler(inner: Arc<Inner>) {
    loop {
        let (start, next) = inner.outbox.lock().start_due(Instant::now());
        for uuid in start {
            let worker_inner = inner.clone();
            inner.tasks.spawn_loop(worker(worker_inner, uuid));
        }
        let sleep = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep_until(sleep) => {}
        }
    }
}

/// Makes a recipient's queue due when that recipient connects to us.
pub(super) async fn on_connections(inner: Arc<Inner>, mut rx: broadcast::Receiver<PeerId>) {
    loop {
        let peer = match rx.recv().await {
            Ok(p) => p,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let woke = inner.outbox.lock().connected(peer, Instant::now());
        if woke {
            inner.wake.notify_one();
        }
    }
}

async fn worker(inner: Arc<Inner>, to: Uuid) {
    let ok = work(&inner, to).await;
    if let Some(wait) = inner.outbox.lock().attempt_ended(&to, ok, Instant::now()) {
        debug!(recipient = %to, retry_in = ?wait, "delivery failed; will retry");
    }
    inner.wake.notify_one();
}

/// Delivers everything queued for `to`; false if it had to stop on a failure.
async fn work(inner: &Arc<Inner>, to: Uuid) -> bool {
    expire_old(inner, &to).await;
    let refresh = inner
        .outbox
        .lock()
        .queues
        .get(&to)
        .is_some_and(|q| q.refresh);
    let doc = match recipient_document(inner, &to, refresh).await {
        Some(d) => d,
        None => return false,
    };
    let peer = doc.doc().peer_id();
    if let Some(q) = inner.outbox.lock().queues.get_mut(&to) {
        q.peer = peer;
    }
    let mut in_flight = FuturesUnordered::new();
    let mut failed = false;
    let mut unreachable = false;
    loop {
        while !failed && in_flight.len() < IN_FLIGHT {
            match take_batch(inner, &to) {
                Some(batch) => in_flight.push(deliver(inner, &doc, batch)),
                None => break,
            }
        }
        let Some(result) = in_flight.next().await else {
            break;
        };
        if let Err((back, no_route)) = result {
            failed = true;
            unreachable |= no_route;
            let confirmed = inner.outbox.lock().give_back(&to, back);
            finish(inner, delivered(confirmed)).await;
        }
    }
    if unreachable {
        // The recipient is offline (or cannot be reached): leave what waits at its mailboxes.
        super::deposit::deposit_queued(inner, &to, &doc).await;
    }
    if failed {
        // The next attempt looks the recipient up again: it may have moved.
        inner.forget_document(&to);
    }
    !failed
}

/// The recipient's document: the one we hold, unless `refresh` asks the directory first
/// (the last attempt failed, so the recipient may have new addresses or keys).
async fn recipient_document(inner: &Inner, to: &Uuid, refresh: bool) -> Option<SignedDocument> {
    if !refresh {
        if let Some(d) = inner.known_document(to) {
            return Some(d);
        }
    }
    match inner.net.whois(*to).await {
        Ok(d) => {
            inner.remember(&d);
            Some(d)
        }
        Err(e) => {
            debug!(recipient = %to, error = %e, "recipient not found in the directory");
            inner.known_document(to)
        }
    }
}

fn take_batch(inner: &Inner, to: &Uuid) -> Option<Vec<Queued>> {
    inner.outbox.lock().take_batch(to)
}

/// Finished as delivered.
fn delivered(ms: Vec<Queued>) -> Vec<(u64, Uuid, Delivery)> {
    ms.into_iter()
        .map(|m| (m.seq, m.msg_id, Delivery::Delivered))
        .collect()
}

async fn expire_old(inner: &Inner, to: &Uuid) {
    let now = crate::unix_now_ms();
    let expired: Vec<Queued> = inner.outbox.lock().expire(to, now);
    if !expired.is_empty() {
        warn!(recipient = %to, count = expired.len(), "messages expired undelivered after 7 days");
        finish(
            inner,
            expired
                .into_iter()
                .map(|m| (m.seq, m.msg_id, Delivery::Expired))
                .collect(),
        )
        .await;
    }
}

/// Chosen if the user sent any message of the batch (receipts ride along with them).
pub(super) fn batch_reason(batch: &[Queued]) -> DialReason {
    if batch.iter().any(|m| m.why() == DialReason::Chosen) {
        DialReason::Chosen
    } else {
        DialReason::Automatic
    }
}

/// Sends one batch; `Err` gives back what must be retried later, and whether the
/// recipient could not be reached at all.
async fn deliver(
    inner: &Inner,
    doc: &SignedDocument,
    batch: Vec<Queued>,
) -> Result<(), (Vec<Queued>, bool)> {
    let Some(peer) = doc.doc().peer_id() else {
        return Err((batch, true));
    };
    let addrs = doc.doc().reach_addrs();
    let why = batch_reason(&batch);
    let sealed: Vec<serde_bytes::ByteBuf> = {
        let mut seal = inner.seal.lock();
        batch
            .iter()
            .map(|m| serde_bytes::ByteBuf::from(seal.seal(&doc.doc().enc_key, &m.signed)))
            .collect()
    };
    let response = inner
        .net
        .request(peer, addrs.clone(), why, Request::Message { sealed })
        .await;
    let outcomes = match response {
        Ok(Response::Outcomes { outcomes }) if outcomes.len() == batch.len() => outcomes,
        Ok(Response::Nack { reason }) => {
            debug!(%peer, %reason, "recipient refused the whole request");
            return Err((batch, false));
        }
        Ok(other) => {
            inner.counters.count(Counter::BadResponse);
            debug!(%peer, ?other, "unexpected answer to MESSAGE");
            return Err((batch, false));
        }
        Err(e) => {
            debug!(%peer, error = %e, "MESSAGE request failed");
            return Err((batch, true));
        }
    };
    let mut done = Vec::new();
    let mut retry = Vec::new();
    for (m, outcome) in batch.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Ack => done.push((m.seq, m.msg_id, Delivery::Delivered)),
            Outcome::Nack { reason } if for_now(&reason) => retry.push(m),
            Outcome::Nack { reason } => {
                warn!(msg_id = %m.msg_id, %reason, "recipient refused the message");
                done.push((m.seq, m.msg_id, Delivery::Failed(reason)));
            }
            Outcome::Need { attachment, offset } => {
                match transfer(inner, peer, &addrs, &m, Need { attachment, offset }).await {
                    Ok(d) => done.push((m.seq, m.msg_id, d)),
                    Err(()) => retry.push(m),
                }
            }
        }
    }
    finish(inner, done).await;
    if retry.is_empty() {
        Ok(())
    } else {
        Err((retry, false))
    }
}

/// Streams attachment chunks for as long as the recipient asks for them. One chunk is in
/// flight at a time, so memory stays at one chunk whatever the file size, and the
/// recipient's pace (its answer) is the back-pressure. Which chunk each `Need` asks for,
/// and what each answer means, is decided by [`Upload`]; this only reads, seals, sends.
async fn transfer(
    inner: &Inner,
    peer: PeerId,
    addrs: &[libp2p::Multiaddr],
    m: &Queued,
    need: Need,
) -> Result<Delivery, ()> {
    let Some(env) = envelope::read_own(&m.signed) else {
        return Ok(Delivery::Failed("unreadable_outbox_entry".into()));
    };
    let upload = Upload::new(&env.attachments, m.files.len());
    let mut next = upload.plan(need);
    loop {
        let plan = match next {
            Next::Send(plan) => plan,
            Next::Done(d) => return Ok(d),
            Next::Retry => return Err(()),
        };
        let i = plan.attachment as usize;
        // An `Upload` plans only attachments we have both of: never `None` here.
        let (Some(meta), Some(path)) = (env.attachments.get(i), m.files.get(i)) else {
            return Ok(Delivery::Failed("protocol".into()));
        };
        let path = PathBuf::from(path);
        let (offset, len) = (plan.offset, plan.len);
        let data = tokio::task::spawn_blocking(move || files::read_at(&path, offset, len))
            .await
            .map_err(|_| ())?
            .map_err(|e| warn!(error = %e, "cannot read our copy of an attachment"))?;
        if let Err(d) = upload.check_read(&plan, data.len()) {
            return Ok(d);
        }
        let sealed =
            envelope::seal_chunk(&meta.key, &env.msg_id, plan.attachment, plan.index, &data);
        drop(data);
        let response = inner
            .net
            .request(
                peer,
                addrs.to_vec(),
                m.why(),
                Request::Chunk {
                    msg_id: env.msg_id,
                    attachment: plan.attachment,
                    offset: plan.offset,
                    data: sealed,
                },
            )
            .await;
        // Anything but one outcome (the recipient restarted, or the connection was lost):
        // the next attempt starts with MESSAGE again and resumes where the recipient is.
        let answer = match response {
            Ok(Response::Outcomes { mut outcomes }) if outcomes.len() == 1 => outcomes.pop(),
            _ => None,
        };
        next = upload.on_answer(answer);
    }
}

/// Records how messages ended and tells whoever waits.
async fn finish(inner: &Inner, done: Vec<(u64, Uuid, Delivery)>) {
    if done.is_empty() {
        return;
    }
    let records: Vec<(u64, String)> = done
        .iter()
        .map(|(seq, _, d)| {
            let shown = match d {
                Delivery::Failed(r) => format!("failed:{r}"),
                d => d.status().to_string(),
            };
            (*seq, shown)
        })
        .collect();
    let written = inner
        .writer
        .write(move |txn| messages::finish_outbox(txn, &records))
        .await;
    if let Err(e) = written {
        // The outbox keeps them: delivery is repeated after a restart and deduplicated.
        warn!(error = %e, "could not record delivery outcomes");
        return;
    }
    let mut outbox = inner.outbox.lock();
    for (seq, id, d) in done {
        if seq < RECEIPT_SEQ_BASE {
            inner.counters.meters().message_sent(match &d {
                Delivery::Delivered => Sent::Delivered,
                Delivery::Failed(_) => Sent::Failed,
                Delivery::Expired => Sent::Expired,
                Delivery::Stored(_) => Sent::Stored,
            });
            let _ = inner.status_changes.send(super::StatusChange {
                msg_id: id,
                status: d.status(),
                detail: match &d {
                    Delivery::Failed(r) => Some(r.clone()),
                    _ => None,
                },
            });
        }
        for w in outbox.waiters.remove(&id).unwrap_or_default() {
            let _ = w.send(d.clone());
        }
    }
}

/// A delivery receipt from `from` for our messages `ids`: those still queued for `from`
/// are delivered (a receipt from anyone else confirms nothing).
pub(super) async fn confirm(inner: &Inner, from: Uuid, ids: &[Uuid]) {
    let confirmed = inner
        .outbox
        .lock()
        .confirm(&from, ids, crate::wire::receipt::MAX_RECEIPT_IDS);
    let done = delivered(confirmed);
    if !done.is_empty() {
        debug!(recipient = %from, messages = done.len(), "delivery receipt: the recipient has them");
        finish(inner, done).await;
    }
}

/// Queues a delivery receipt to `to` for the messages `ids` we took from a mailbox. It
/// goes through the outbox like a message (direct, or to the sender's own mailbox), but
/// has no history row and nobody waits for it.
pub(super) async fn send_receipt(
    inner: &Arc<Inner>,
    to: Uuid,
    ids: &[Uuid],
) -> Result<(), SendError> {
    let out = Outgoing {
        kind: crate::wire::receipt::RECEIPT_KIND,
        body: crate::wire::receipt::encode_receipt(ids),
        shown: None,
    };
    send(inner, to, out, Vec::new(), None).await.map(|_| ())
}

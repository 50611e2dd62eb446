//! The receiving side: MESSAGE and CHUNK requests handed over by the event loop.
//!
//! A message is opened and verified off the async threads, then deduplicated and committed
//! in one group transaction before the ACK is sent. A message with attachments is kept as
//! a pending transfer (durably, so it resumes after a restart); its chunks are appended to
//! files under `<home>/files/.partial/` and each finished attachment is checked against
//! the SHA-256 its sender signed. Only when all are here is the message added to the
//! history, its files moved to `<home>/files/<sender>/<msg_id>/`, and ACKed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};
use uuid::Uuid;

use super::transfers::{self, Admit, Transfer};
use super::{files, InboundVerb, Inner, INBOUND_CONCURRENCY};
use crate::counters::Counter;
use crate::store::channels::apply_grant;
use crate::store::messages::{self, seen_key};
use crate::store::{GrantOutcome, HistoryEntry, PendingIn, StoredAttachment};
use crate::wire::envelope::{self, Envelope, Reject, VerifyContext, CHUNK_BYTES};
use crate::wire::frame::{decode_grant, KeyGrant, GRANT_KIND};
use crate::wire::receipt::{decode_receipt, RECEIPT_KIND};
use crate::wire::verbs::{Nack, Outcome, Request, Response, MAX_BATCH};

/// A transfer not finished in this long is dropped (its sender gives up after 7 days).
const PENDING_RETENTION_MS: u64 = 8 * 24 * 3600 * 1000;

fn nack(reason: Nack) -> Response {
    reason.into()
}

fn one(outcome: Outcome) -> Response {
    Response::Outcomes {
        outcomes: vec![outcome],
    }
}

fn outcome_nack(reason: Nack) -> Outcome {
    reason.into()
}

/// Receives handed-over requests and answers each through the event loop.
pub(super) async fn dispatcher(inner: Arc<Inner>, mut rx: mpsc::Receiver<InboundVerb>) {
    cleanup(&inner);
    let slots = Arc::new(Semaphore::new(INBOUND_CONCURRENCY));
    let mut sweeps = tokio::time::interval(Duration::from_millis(inner.transfer_idle_ms.max(1000)));
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sweeping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let verb = tokio::select! {
            verb = rx.recv() => match verb {
                Some(v) => v,
                None => break,
            },
            _ = sweeps.tick() => {
                // Off the dispatcher, one at a time.
                if !sweeping.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    let (inner, sweeping) = (inner.clone(), sweeping.clone());
                    inner.clone().tasks.spawn(async move {
                        sweep(&inner).await;
                        sweeping.store(false, std::sync::atomic::Ordering::Release);
                    });
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            inner.counters.count(Counter::InboundBusy);
            let _ = inner.net.respond(verb.token, nack(Nack::Busy)).await;
            continue;
        };
        let task_inner = inner.clone();
        let work = async move {
            let response = handle(&task_inner, verb.peer, verb.request).await;
            let _ = task_inner.net.respond(verb.token, response).await;
            drop(permit);
        };
        inner.tasks.spawn(work);
    }
}

async fn handle(inner: &Arc<Inner>, peer: PeerId, request: Request) -> Response {
    match request {
        Request::Message { sealed } => match receive(inner, Some(peer), sealed).await {
            Ok(results) => Response::Outcomes {
                outcomes: results.into_iter().map(|r| r.outcome).collect(),
            },
            Err(reason) => nack(reason),
        },
        Request::Chunk {
            msg_id,
            attachment,
            offset,
            data,
        } => chunk(inner, peer, msg_id, attachment, offset, data).await,
        _ => nack(Nack::Unexpected),
    }
}

/// What a message of a special kind carries.
#[derive(Clone)]
enum Special {
    /// A channel key ([`GRANT_KIND`]).
    Grant(KeyGrant),
    /// The sender has these messages of ours ([`RECEIPT_KIND`]).
    Receipt(Vec<Uuid>),
}

/// A verified message, the signed form kept for a transfer, and what its kind carries.
type Checked = (Envelope, Vec<u8>, Option<Special>);

/// A received message's outcome, and for an accepted one its sender, id and whether it
/// was a delivery receipt (the drainer sends receipts for the others).
pub(super) struct Received {
    pub outcome: Outcome,
    pub accepted: Option<(Uuid, Uuid, bool)>,
}

/// What the group transaction decided for one verified message.
enum Fate {
    Duplicate,
    Stored(u64, HistoryEntry),
    Grant(GrantOutcome),
    Receipt,
    Pending,
    Busy,
}

/// Opens, checks and stores sealed messages that came from `peer` directly, or from one of
/// our mailboxes (`None`); `Err` is a NACK word for the whole request.
pub(super) async fn receive(
    inner: &Arc<Inner>,
    peer: Option<PeerId>,
    sealed: Vec<serde_bytes::ByteBuf>,
) -> Result<Vec<Received>, Nack> {
    if sealed.is_empty() || sealed.len() > MAX_BATCH {
        inner.counters.count(Counter::MessageBatchInvalid);
        return Err(Nack::Malformed);
    }
    let Some(keys) = inner.current_keys() else {
        return Err(Nack::NotReady);
    };
    let checker = inner.clone();
    let small = sealed.len() <= 2;
    let work = move || {
        let now_ms = crate::unix_now_ms();
        let sender_document = |from: &Uuid, bytes: &[u8]| checker.sender_document(from, bytes);
        let cx = VerifyContext {
            me: keys.uuid,
            peer,
            now_ms,
            max_attachment: checker.max_attachment,
            sender_document: &sender_document,
            key_cache: Some(&checker.verifying_keys),
        };
        sealed
            .iter()
            .map(|s| {
                let opened = envelope::open(s, &keys, &checker.open)?;
                let v = envelope::verify(&opened, &cx)?;
                // Only now, with the signature checked, may a new document be written.
                checker.keep_sender_document(&v.sender, true);
                if peer.is_none() && !v.envelope.attachments.is_empty() {
                    // Attachments are sent directly, never left at a mailbox.
                    return Err(Reject::Malformed("attachments in a mailbox message".into()));
                }
                // A channel key and a delivery receipt travel as direct messages of their
                // own kinds.
                let special = if v.envelope.kind == GRANT_KIND || v.envelope.kind == RECEIPT_KIND {
                    if !v.envelope.attachments.is_empty() {
                        return Err(Reject::Malformed(format!(
                            "a {} message has no attachments",
                            v.envelope.kind
                        )));
                    }
                    Some(if v.envelope.kind == GRANT_KIND {
                        Special::Grant(decode_grant(&v.envelope.body)?)
                    } else {
                        Special::Receipt(decode_receipt(&v.envelope.body)?)
                    })
                } else {
                    None
                };
                // Kept only while attachments arrive; a plain message needs no copy.
                let keep = if v.envelope.attachments.is_empty() {
                    Vec::new()
                } else {
                    opened.to_vec()
                };
                Ok((v.envelope, keep, special))
            })
            .collect::<Vec<Result<Checked, Reject>>>()
    };
    // One or two messages cost less than the hand-off to a blocking thread; a batch runs
    // there so it does not hold up the async workers.
    let checked = if small {
        work()
    } else {
        match tokio::task::spawn_blocking(work).await {
            Ok(c) => c,
            Err(_) => return Err(Nack::Busy),
        }
    };

    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(checked.len());
    let mut infos: Vec<Option<(Uuid, Uuid, bool)>> = vec![None; checked.len()];
    let mut accepted = Vec::new();
    for (i, c) in checked.into_iter().enumerate() {
        match c {
            Ok(ok) => {
                outcomes.push(None);
                accepted.push((i, ok));
            }
            Err(reject) => {
                inner.counters.count(reject.counter());
                crate::warn_remote!("message_refused", ?peer, reason = reject.reason(), error = %reject, "refused a message");
                outcomes.push(Some(outcome_nack(reject.nack())));
            }
        }
    }
    if !accepted.is_empty() {
        let jobs: Vec<Checked> = accepted.iter().map(|(_, v)| v.clone()).collect();
        let slots_inner = inner.clone();
        let fates = inner
            .writer
            .write(move |txn| {
                let now = crate::unix_now_ms();
                let mut fates = Vec::with_capacity(jobs.len());
                let mut evicted = Vec::new();
                // Transfers this transaction answers `Need` for: never evicted by it.
                let mut kept = HashSet::new();
                // Read once, and only for a message that needs a transfer slot.
                let mut contacts: Option<HashSet<[u8; 16]>> = None;
                let no_contacts = HashSet::new();
                for (env, signed, special) in jobs {
                    let key = seen_key(&env.from(), env.ts, &env.msg_id());
                    if messages::seen(txn, &key)? {
                        fates.push(Fate::Duplicate);
                        continue;
                    }
                    match special {
                        Some(Special::Grant(grant)) => {
                            let outcome = apply_grant(txn, &env.from, &grant, now)?;
                            // Seq 0 is no history row: a grant is channel state, not a message.
                            messages::mark_seen(txn, &key, 0)?;
                            fates.push(Fate::Grant(outcome));
                            continue;
                        }
                        Some(Special::Receipt(_)) => {
                            messages::mark_seen(txn, &key, 0)?;
                            fates.push(Fate::Receipt);
                            continue;
                        }
                        None => {}
                    }
                    if env.attachments.is_empty() {
                        let entry = received_entry(&env, Vec::new());
                        let seq = messages::accept_inbound(txn, &key, &entry)?;
                        fates.push(Fate::Stored(seq, entry));
                        continue;
                    }
                    if messages::is_pending(txn, &key)? {
                        kept.insert(key);
                        fates.push(Fate::Pending);
                        continue;
                    }
                    if contacts.is_none() {
                        contacts = Some(messages::contact_uuids(txn)?);
                    }
                    let contacts = contacts.as_ref().unwrap_or(&no_contacts);
                    let held = messages::pending_keys_in(txn)?;
                    match take_slot(&slots_inner, &env, &key, held, contacts, &kept, now) {
                        Admit::Busy => {
                            fates.push(Fate::Busy);
                            continue;
                        }
                        Admit::Evict(victim) => {
                            messages::remove_pending(txn, &victim)?;
                            evicted.push(victim);
                        }
                        Admit::Take => {}
                    }
                    let pending = PendingIn {
                        signed,
                        received_ms: now,
                    };
                    messages::put_pending(txn, &key, &pending)?;
                    kept.insert(key);
                    fates.push(Fate::Pending);
                }
                Ok((fates, evicted))
            })
            .await;
        let fates = match fates {
            Ok((f, evicted)) => {
                for victim in evicted {
                    inner.counters.count(Counter::TransferEvicted);
                    forget_transfer(inner, &victim);
                }
                f
            }
            Err(e) => {
                warn!(error = %e, "could not store received messages");
                return Err(Nack::Busy);
            }
        };
        for ((i, (env, _, special)), fate) in accepted.into_iter().zip(fates) {
            infos[i] = Some((
                env.from(),
                env.msg_id(),
                matches!(special, Some(Special::Receipt(_))),
            ));
            let grant = match special {
                Some(Special::Grant(g)) => Some(g),
                Some(Special::Receipt(ids)) => {
                    if matches!(fate, Fate::Receipt) {
                        super::outbox::confirm(inner, env.from(), &ids).await;
                    }
                    None
                }
                None => None,
            };
            outcomes[i] = Some(match fate {
                Fate::Duplicate => {
                    inner.counters.count(Counter::MessageDuplicate);
                    debug!(msg_id = %env.msg_id(), "duplicate message ACKed again");
                    Outcome::Ack
                }
                Fate::Stored(seq, entry) => {
                    let _ = inner.received.send((seq, entry));
                    Outcome::Ack
                }
                Fate::Grant(outcome) => {
                    if let (Some(tx), Some(g)) = (&inner.grants, grant) {
                        let _ = tx.try_send(super::GrantNote {
                            from: env.from(),
                            channel: Uuid::from_bytes(g.channel),
                            name: g.name,
                            epoch: g.epoch,
                            outcome,
                        });
                    }
                    Outcome::Ack
                }
                Fate::Busy => {
                    inner.counters.count(Counter::TransferLimit);
                    outcome_nack(Nack::Busy)
                }
                Fate::Receipt => Outcome::Ack,
                Fate::Pending => match peer {
                    Some(peer) => resume(inner, peer, env).await,
                    None => outcome_nack(Nack::Busy),
                },
            });
        }
    }
    Ok(outcomes
        .into_iter()
        .zip(infos)
        .map(|(o, accepted)| Received {
            outcome: o.unwrap_or_else(|| outcome_nack(Nack::Busy)),
            accepted,
        })
        .collect())
}

/// Decides, in the transaction that would store it, whether the transfer of `env` gets a
/// slot among those `held`; an evicted transfer is forgotten here (its row goes in the
/// same transaction, its files after the commit).
fn take_slot(
    inner: &Inner,
    env: &Envelope,
    key: &[u8; 40],
    held: Vec<[u8; 40]>,
    contacts: &HashSet<[u8; 16]>,
    kept: &HashSet<[u8; 40]>,
    now: u64,
) -> Admit {
    // The same msg_id from the same sender twice at once (another timestamp) waits for
    // the first: a CHUNK names the message by msg_id alone.
    if held
        .iter()
        .any(|k| k[..16] == key[..16] && k[24..] == key[24..])
    {
        return Admit::Busy;
    }
    let Ok(mut t) = inner.transfers.lock() else {
        return Admit::Busy;
    };
    // A transfer answered in this transaction, or with a chunk being written, is in use.
    let slots = transfers::slots(held, contacts, |k| {
        if kept.contains(k) || t.live.values().any(|l| &l.key == k && l.busy) {
            now
        } else {
            t.last_active(k, inner.started_ms)
        }
    });
    let own = slots.iter().filter(|s| s.key[..16] == env.from).count();
    let admit = transfers::admit(
        &slots,
        contacts.contains(&env.from),
        own,
        now,
        inner.transfer_idle_ms,
    );
    if let Admit::Evict(victim) = admit {
        // Its sender's next CHUNK finds nothing and starts again (`unknown_message`).
        t.forget(&victim);
    }
    if admit != Admit::Busy {
        t.active.insert(*key, now);
    }
    admit
}

/// Forgets a transfer whose row is gone (evicted), and deletes what had arrived of it.
fn forget_transfer(inner: &Inner, key: &[u8; 40]) {
    if let Ok(mut t) = inner.transfers.lock() {
        t.forget(key);
    }
    let _ = std::fs::remove_dir_all(partial_dir(inner, key));
}

fn received_entry(env: &Envelope, attachments: Vec<StoredAttachment>) -> HistoryEntry {
    HistoryEntry {
        msg_id: env.msg_id,
        incoming: true,
        peer: env.from,
        ts: env.ts,
        text: env.body.clone(),
        attachments,
        status: "received".into(),
        detail: None,
        channel: None,
    }
}

fn partial_dir(inner: &Inner, key: &[u8; 40]) -> PathBuf {
    inner.files.join(".partial").join(hex::encode(key))
}

/// Why a transfer cannot go on.
#[derive(Debug)]
enum Stall {
    /// The disk failed, or the transfer was dropped under us: the sender tries again.
    Io(std::io::Error),
    /// A complete attachment does not match its signed hash: refused for good.
    Mismatch(usize),
}

impl From<std::io::Error> for Stall {
    fn from(e: std::io::Error) -> Self {
        Stall::Io(e)
    }
}

/// Where a pending transfer stands: the next chunk wanted, or `None` when every
/// attachment is complete and checked. Partial chunks (a crash mid-write) are cut off.
fn next_need(dir: &Path, env: &Envelope, verified: &mut u32) -> Result<Option<(u32, u64)>, Stall> {
    for (i, a) in env.attachments.iter().enumerate() {
        let path = dir.join(i.to_string());
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < a.size {
            let aligned = len - len % CHUNK_BYTES as u64;
            if aligned != len {
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(aligned)?;
            }
            return Ok(Some((i as u32, aligned)));
        }
        if (i as u32) < *verified {
            continue;
        }
        if a.size == 0 && !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
        }
        if len > a.size || files::hash_file(&path)? != a.sha256 {
            return Err(Stall::Mismatch(i));
        }
        *verified = i as u32 + 1;
    }
    Ok(None)
}

/// Registers (or re-finds) the transfer for a pending message and says what to send next.
async fn resume(inner: &Arc<Inner>, peer: PeerId, env: Envelope) -> Outcome {
    let key = seen_key(&env.from(), env.ts, &env.msg_id());
    let dir = partial_dir(inner, &key);
    if let Err(e) = files::private_dir(&dir) {
        warn!(error = %e, "cannot create a directory for an incoming attachment");
        return outcome_nack(Nack::Busy);
    }
    let mut verified = inner
        .transfers
        .lock()
        .ok()
        .and_then(|t| {
            t.live
                .get(&(peer, env.msg_id))
                .filter(|t| t.key == key)
                .map(|t| t.verified)
        })
        .unwrap_or(0);
    let env2 = env.clone();
    let need = tokio::task::spawn_blocking(move || {
        let r = next_need(&dir, &env2, &mut verified);
        (r, verified)
    })
    .await;
    let Ok((need, verified)) = need else {
        return outcome_nack(Nack::Busy);
    };
    match need {
        Ok(Some((attachment, offset))) => {
            let Ok(mut t) = inner.transfers.lock() else {
                return outcome_nack(Nack::Busy);
            };
            // Registered only while its row stands, checked under the lock an eviction
            // forgets it under: a transfer evicted or dropped meanwhile is not brought
            // back without a slot.
            if !inner.store.pending_exists(&key).unwrap_or(false) {
                drop(t);
                let _ = std::fs::remove_dir_all(partial_dir(inner, &key));
                return outcome_nack(Nack::Busy);
            }
            t.live.insert(
                (peer, env.msg_id),
                Transfer {
                    key,
                    env,
                    attachment,
                    offset,
                    verified,
                    busy: false,
                },
            );
            Outcome::Need { attachment, offset }
        }
        Ok(None) => complete(inner, key, env).await,
        Err(stall) => stalled(inner, key, stall).await,
    }
}

async fn chunk(
    inner: &Arc<Inner>,
    peer: PeerId,
    msg_id: [u8; 16],
    attachment: u32,
    offset: u64,
    data: Vec<u8>,
) -> Response {
    let claimed = match inner.transfers.lock() {
        Ok(mut all) => match all.live.get_mut(&(peer, msg_id)) {
            Some(t) => {
                if t.busy {
                    return one(outcome_nack(Nack::Busy));
                }
                if (t.attachment, t.offset) != (attachment, offset) {
                    return one(Outcome::Need {
                        attachment: t.attachment,
                        offset: t.offset,
                    });
                }
                t.busy = true;
                let claimed = (t.key, t.env.clone(), t.verified);
                // A transfer with a chunk arriving is not idle.
                all.active.insert(claimed.0, crate::unix_now_ms());
                Some(claimed)
            }
            None => None,
        },
        Err(_) => None,
    };
    let Some((key, env, mut verified)) = claimed else {
        inner.counters.count(Counter::ChunkUnknown);
        return one(outcome_nack(Nack::UnknownMessage));
    };
    let Some(meta) = env.attachments.get(attachment as usize).cloned() else {
        return one(outcome_nack(Nack::BadChunk));
    };
    let want = (meta.size - offset).min(CHUNK_BYTES as u64) as usize;
    let plain = envelope::open_chunk(
        &meta.key,
        &msg_id,
        attachment,
        offset / CHUNK_BYTES as u64,
        &data,
    );
    let plain = match plain {
        Ok(p) if p.len() == want => p,
        _ => {
            inner.counters.count(Counter::ChunkInvalid);
            crate::warn_remote!("chunk_refused", %peer, "refused an attachment chunk that does not open or has the wrong size");
            drop_transfer(inner, key).await;
            return one(outcome_nack(Nack::BadChunk));
        }
    };
    let dir = partial_dir(inner, &key);
    let env2 = env.clone();
    let written = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(attachment.to_string());
        // The directory is not created here: if it is gone, the transfer was dropped.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&plain)?;
        // What we ask for next must be on disk: a chunk lost to a power cut would leave a
        // file that never matches its hash, and the message refused for good.
        f.sync_data()?;
        drop(f);
        next_need(&dir, &env2, &mut verified).map(|n| (n, verified))
    })
    .await
    .unwrap_or_else(|e| Err(Stall::Io(std::io::Error::other(e))));
    match written {
        Ok((Some((a, o)), verified)) => {
            if let Ok(mut t) = inner.transfers.lock() {
                if let Some(t) = t.live.get_mut(&(peer, msg_id)) {
                    t.attachment = a;
                    t.offset = o;
                    t.verified = verified;
                    t.busy = false;
                }
            }
            one(Outcome::Need {
                attachment: a,
                offset: o,
            })
        }
        Ok((None, _)) => one(complete(inner, key, env).await),
        Err(stall) => one(stalled(inner, key, stall).await),
    }
}

/// Answers a transfer that cannot go on: a hash mismatch drops it for good; a disk error
/// (or a transfer dropped under us) forgets it in memory, so the sender's next CHUNK is
/// `unknown_message` and it starts again with MESSAGE, from what is on disk.
async fn stalled(inner: &Arc<Inner>, key: [u8; 40], stall: Stall) -> Outcome {
    match stall {
        Stall::Mismatch(i) => {
            inner.counters.count(Counter::AttachmentBadHash);
            crate::warn_remote!(
                "attachment_refused",
                attachment = i,
                "refused an attachment that does not match its signed hash"
            );
            drop_transfer(inner, key).await;
            outcome_nack(Nack::BadAttachment)
        }
        Stall::Io(e) => {
            debug!(error = %e, "an attachment transfer stalled on the disk");
            if let Ok(mut t) = inner.transfers.lock() {
                t.live.retain(|_, l| l.key != key);
            }
            outcome_nack(Nack::Busy)
        }
    }
}

/// Every attachment is here and checked: move the files into place, then commit the
/// message to the history. Only then is it ACKed.
async fn complete(inner: &Arc<Inner>, key: [u8; 40], env: Envelope) -> Outcome {
    let partial = partial_dir(inner, &key);
    let sender_dir = inner.files.join(env.from().to_string());
    let env2 = env.clone();
    let moved = tokio::task::spawn_blocking(move || {
        let dest = fresh_dir(&sender_dir, &env2.msg_id().to_string())?;
        let moved = move_into(&partial, &dest, &env2);
        if moved.is_err() {
            // What was moved is received again (the sender was not ACKed).
            let _ = std::fs::remove_dir_all(&dest);
        }
        moved.map(|stored| (stored, dest))
    })
    .await;
    let (stored, dest) = match moved {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(error = %e, "cannot move received attachments into place");
            return outcome_nack(Nack::Busy);
        }
        Err(_) => return outcome_nack(Nack::Busy),
    };
    let entry = received_entry(&env, stored);
    let committed = inner
        .writer
        .write(move |txn| {
            messages::remove_pending(txn, &key)?;
            if messages::seen(txn, &key)? {
                return Ok(None);
            }
            let seq = messages::accept_inbound(txn, &key, &entry)?;
            Ok(Some((seq, entry)))
        })
        .await;
    match committed {
        Ok(stored) => {
            forget_transfer(inner, &key);
            match stored {
                Some(s) => {
                    let _ = inner.received.send(s);
                }
                // Stored already (a second completion): these copies are nobody's.
                None => {
                    let _ = std::fs::remove_dir_all(&dest);
                }
            }
            Outcome::Ack
        }
        Err(e) => {
            warn!(error = %e, "could not store a received message");
            let _ = std::fs::remove_dir_all(&dest);
            outcome_nack(Nack::Busy)
        }
    }
}

/// Moves a complete transfer's files from `partial` into the new, empty `dest`, each under
/// a safe name no other attachment of the message has, and makes the moves durable. The
/// files' contents are on disk already: every chunk was synced as it arrived.
fn move_into(
    partial: &Path,
    dest: &Path,
    env: &Envelope,
) -> std::io::Result<Vec<StoredAttachment>> {
    let mut taken = HashSet::new();
    let mut stored = Vec::new();
    for (i, a) in env.attachments.iter().enumerate() {
        let safe = files::safe_name(&a.name, &format!("attachment-{i}"));
        let mut name = safe.clone();
        let mut n = 0;
        while !taken.insert(name.clone()) {
            n += 1;
            name = format!("{n}-{safe}");
        }
        let to = dest.join(&name);
        std::fs::rename(partial.join(i.to_string()), &to)?;
        stored.push(StoredAttachment {
            name,
            mime: a.mime.clone(),
            size: a.size,
            path: to.to_string_lossy().into_owned(),
        });
    }
    // The new entries, the new directory in the sender's, and the sender's in `files/`.
    for dir in [
        Some(dest),
        dest.parent(),
        dest.parent().and_then(Path::parent),
    ]
    .into_iter()
    .flatten()
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(stored)
}

/// A new, empty directory for a message's files: `<msg_id>`, or `<msg_id>-<n>` when a
/// message with the same id (its sender reused it) already has that one. Files already
/// received are never replaced.
fn fresh_dir(parent: &Path, msg_id: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    files::private_dir(parent)?;
    for n in 0..64u32 {
        let name = match n {
            0 => msg_id.to_string(),
            n => format!("{msg_id}-{n}"),
        };
        let dir = parent.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("too many messages reuse this msg_id"))
}

async fn drop_transfer(inner: &Inner, key: [u8; 40]) {
    forget_transfer(inner, &key);
    let _ = inner
        .writer
        .write(move |txn| messages::remove_pending(txn, &key))
        .await;
    let _ = std::fs::remove_dir_all(partial_dir(inner, &key));
}

/// Drops strangers' transfers idle for [`transfers::STRANGER_IDLE_LIMIT`] periods, and
/// whatever a transfer left behind without its row: progress times, a transfer in memory,
/// partial files.
async fn sweep(inner: &Arc<Inner>) {
    // Directories first: one made after the keys were read would look like an orphan.
    let dirs: Vec<PathBuf> = std::fs::read_dir(inner.files.join(".partial"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    let Ok(keys) = inner.store.pending_keys() else {
        return;
    };
    let contacts: HashSet<[u8; 16]> = match inner.store.contacts() {
        Ok(all) => all.into_iter().map(|(_, c)| c.uuid).collect(),
        Err(_) => return,
    };
    let held: HashSet<[u8; 40]> = keys.iter().copied().collect();
    let now = crate::unix_now_ms();
    let idle = inner.transfer_idle_ms;
    let abandoned = {
        let Ok(mut t) = inner.transfers.lock() else {
            return;
        };
        // A transfer admitted a moment ago may not be committed yet: keep recent ones.
        t.active
            .retain(|k, at| held.contains(k) || now.saturating_sub(*at) < idle);
        let all = &mut *t;
        all.live
            .retain(|_, l| held.contains(&l.key) || all.active.contains_key(&l.key));
        let slots = transfers::slots(keys, &contacts, |k| t.last_active(k, inner.started_ms));
        transfers::abandoned(&slots, now, idle)
    };
    for dir in dirs {
        let orphan = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| <[u8; 40]>::try_from(hex::decode(n).ok()?).ok())
            .is_none_or(|k| !held.contains(&k));
        if orphan {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
    }
    for key in abandoned {
        inner.counters.count(Counter::TransferAbandoned);
        drop_transfer(inner, key).await;
    }
}

/// Drops transfers abandoned for longer than their senders retry.
fn cleanup(inner: &Inner) {
    let Ok(pending) = inner.store.pending_ins() else {
        return;
    };
    let now = crate::unix_now_ms();
    for (key, p) in pending {
        if p.received_ms.saturating_add(PENDING_RETENTION_MS) < now {
            let _ = std::fs::remove_dir_all(partial_dir(inner, &key));
            let writer = inner.writer.clone();
            tokio::spawn(async move {
                let _ = writer
                    .write(move |txn| messages::remove_pending(txn, &key))
                    .await;
            });
        }
    }
}

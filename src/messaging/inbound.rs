//! The receiving side: MESSAGE and CHUNK requests handed over by the event loop.
//!
//! A message is opened and verified off the async threads, then deduplicated and committed
//! in one group transaction before the ACK is sent. A message with attachments is kept as
//! a pending transfer (durably, so it resumes after a restart); its chunks are appended to
//! files under `<home>/files/.partial/` and each finished attachment is checked against
//! the SHA-256 its sender signed. Only when all are here is the message added to the
//! history, its files moved to `<home>/files/<sender>/<msg_id>/`, and ACKed. The transfer
//! itself (slots, chunks, completion, sweeps) is in `attachments.rs`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};
use uuid::Uuid;

use super::attachments::{
    chunk, cleanup, forget_transfer, outcome_nack, received_entry, resume, sweep, take_slot,
};
use super::transfers::Admit;
use super::{InboundVerb, Inner, INBOUND_CONCURRENCY};
use crate::counters::Counter;
use crate::store::channels::apply_grant;
use crate::store::messages::{self, seen_key};
use crate::store::{GrantOutcome, HistoryEntry, PendingIn};
use crate::wire::envelope::{self, Envelope, Reject, VerifyContext};
use crate::wire::frame::{decode_grant, KeyGrant, GRANT_KIND};
use crate::wire::receipt::{decode_receipt, RECEIPT_KIND};
use crate::wire::verbs::{Nack, Outcome, Request, Response, MAX_BATCH};

fn nack(reason: Nack) -> Response {
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
                    inner.clone().tasks.spawn_work(async move {
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
        inner.tasks.spawn_work(work);
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
                    match take_slot(&slots_inner, &key, held, contacts, &kept, now) {
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
                    inner.counters.meters().message_received();
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

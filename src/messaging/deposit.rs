//! Leaving messages at a recipient's mailbox relays when it cannot be reached
//! (architecture.md, Mailboxes: sender side): batches per relay, DEPOSIT, and each relay's
//! signed receipt checked before a message counts as stored there.

use std::collections::HashMap;

use libp2p::PeerId;
use tracing::{debug, warn};
use uuid::Uuid;

use super::outbox::batch_reason;
use super::queue::Queued;
use super::{Delivery, Inner};
use crate::counters::Counter;
use crate::identity::SignedDocument;
use crate::store::messages;
use crate::store::OutboxEntry;
use crate::wire::verbs::{DepositResult, Request, Response, MAX_REQUEST_BYTES};

/// Deposits every queued message for `to` (that has no attachments: those wait for a direct
/// delivery) at each of the recipient's mailbox relays that has not receipted it yet; a
/// message receipted by a relay is marked stored there, durably, and whoever waits for it
/// is told.
pub(super) async fn deposit_queued(inner: &Inner, to: &Uuid, doc: &SignedDocument) {
    let boxes = crate::wire::mailbox::mailboxes(doc.doc());
    if boxes.is_empty() {
        return;
    }
    let todo: Vec<Queued> = match inner.outbox.lock().queues.get(to) {
        Some(q) => q
            .pending
            .iter()
            .filter(|m| m.files.is_empty())
            .cloned()
            .collect(),
        None => return,
    };
    let mut receipts: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (relay, addr) in &boxes {
        let name = relay.to_string();
        let here: Vec<Queued> = todo
            .iter()
            .filter(|m| !m.stored_at.contains(&name))
            .cloned()
            .collect();
        let attempts = deposit_batches(&here)
            .into_iter()
            .map(|batch| deposit_at(inner, to, doc, *relay, addr.clone(), batch));
        for stored in futures::future::join_all(attempts).await {
            for id in stored {
                receipts.entry(id).or_default().push(name.clone());
            }
        }
    }
    if receipts.is_empty() {
        return;
    }
    let mut stored: Vec<Queued> = todo
        .into_iter()
        .filter(|m| receipts.contains_key(&m.msg_id))
        .collect();
    for m in stored.iter_mut() {
        m.stored_at
            .extend(receipts.get(&m.msg_id).cloned().unwrap_or_default());
    }
    let rows: Vec<(u64, OutboxEntry)> = stored.iter().map(|m| (m.seq, m.entry(to))).collect();
    let written = inner
        .writer
        .write(move |txn| messages::mark_stored(txn, &rows))
        .await;
    if let Err(e) = written {
        warn!(error = %e, "could not record mailbox receipts");
        return;
    }
    debug!(recipient = %to, messages = stored.len(), "stored at the recipient's mailbox");
    let mut outbox = inner.outbox.lock();
    if let Some(q) = outbox.queues.get_mut(to) {
        for m in q.pending.iter_mut() {
            if let Some(at) = receipts.get(&m.msg_id) {
                m.stored_at.extend(at.iter().cloned());
            }
        }
    }
    for m in &stored {
        if m.seq < messages::RECEIPT_SEQ_BASE {
            inner
                .counters
                .meters()
                .message_sent(crate::counters::Sent::Stored);
            let _ = inner.status_changes.send(super::StatusChange {
                msg_id: m.msg_id,
                status: "stored",
                detail: None,
            });
        }
        for w in outbox.waiters.remove(&m.msg_id).unwrap_or_default() {
            let _ = w.send(Delivery::Stored(m.stored_at.len()));
        }
    }
}

/// Splits messages into DEPOSIT batches under the batch and request size limits.
fn deposit_batches(todo: &[Queued]) -> Vec<&[Queued]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, m) in todo.iter().enumerate() {
        let len = m.signed.len() + 512;
        if i > start
            && (i - start >= crate::wire::mailbox::MAX_DEPOSIT_BATCH
                || bytes + len >= MAX_REQUEST_BYTES / 2)
        {
            out.push(&todo[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < todo.len() {
        out.push(&todo[start..]);
    }
    out
}

/// Deposits one batch at one relay; returns the ids of the messages it receipted (each
/// receipt checked against the relay's key).
async fn deposit_at(
    inner: &Inner,
    to: &Uuid,
    doc: &SignedDocument,
    relay: PeerId,
    addr: libp2p::Multiaddr,
    batch: &[Queued],
) -> Vec<Uuid> {
    let mailbox = crate::wire::mailbox::mailbox_id(&relay, to);
    let sealed: Vec<Vec<u8>> = {
        let mut seal = inner.seal.lock();
        batch
            .iter()
            .map(|m| seal.seal(&doc.doc().enc_key, &m.signed))
            .collect()
    };
    let request = Request::Deposit {
        mailbox,
        sealed: sealed
            .iter()
            .cloned()
            .map(serde_bytes::ByteBuf::from)
            .collect(),
    };
    let results = match inner
        .net
        .request(relay, vec![addr], batch_reason(batch), request)
        .await
    {
        Ok(Response::Deposited { results }) if results.len() == batch.len() => results,
        Ok(Response::Nack { reason }) => {
            debug!(%relay, %reason, "mailbox refused the deposit");
            return Vec::new();
        }
        Ok(other) => {
            inner.counters.count(Counter::BadResponse);
            debug!(%relay, ?other, "unexpected answer to DEPOSIT");
            return Vec::new();
        }
        Err(e) => {
            debug!(%relay, error = %e, "DEPOSIT failed");
            return Vec::new();
        }
    };
    let mut ok = Vec::new();
    for ((m, s), r) in batch.iter().zip(&sealed).zip(results) {
        match r {
            DepositResult::Stored { expires, sig } => {
                if crate::wire::mailbox::verify_receipt(&relay, &mailbox, s, expires, &sig) {
                    ok.push(m.msg_id);
                } else {
                    inner.counters.count(Counter::MailBadReceipt);
                    warn!(%relay, "a mailbox relay's receipt does not verify");
                }
            }
            DepositResult::Nack { reason } => {
                debug!(%relay, msg_id = %m.msg_id, %reason, "mailbox refused a message");
            }
        }
    }
    ok
}

//! The outbox's queues as a state machine: no IO, the time handed in. Each recipient has a
//! queue of messages in the order they were sent; the scheduler asks which queues are due,
//! a worker takes batches from one, gives back what failed and reports how its attempt
//! ended (back-off: 2 s doubling to 10 min, reset by a success); a delivery receipt
//! confirms messages wherever they are, even in a worker's hands. What is durable (the
//! outbox table, the history status) is written by `outbox.rs` around these calls.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use super::outbox::{Delivery, RECEIPT_SEQ_BASE};
use super::OUTBOX_RETENTION_MS;
use crate::net::dial::DialReason;
use crate::store::OutboxEntry;
use crate::wire::verbs::{MAX_BATCH, MAX_REQUEST_BYTES};

/// First retry delay after a failed attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Framing allowed per message when a batch is sized.
const PER_MESSAGE_FRAMING: usize = 512;

/// A message waiting for delivery.
#[derive(Clone, Debug)]
pub(crate) struct Queued {
    /// Its history seq (also its outbox key).
    pub seq: u64,
    pub msg_id: Uuid,
    pub signed: Arc<Vec<u8>>,
    pub files: Vec<String>,
    pub created_ms: u64,
    /// The mailbox relays that receipted it.
    pub stored_at: Vec<String>,
}

impl Queued {
    /// Why we reach its recipient: a message the user sent is to a peer the user chose;
    /// a delivery receipt goes to whoever wrote to us, so it is automatic traffic.
    pub fn why(&self) -> DialReason {
        if self.seq >= RECEIPT_SEQ_BASE {
            DialReason::Automatic
        } else {
            DialReason::Chosen
        }
    }

    pub fn entry(&self, to: &Uuid) -> OutboxEntry {
        OutboxEntry {
            msg_id: *self.msg_id.as_bytes(),
            to: *to.as_bytes(),
            signed: self.signed.to_vec(),
            files: self.files.clone(),
            created_ms: self.created_ms,
            stored_at: self.stored_at.clone(),
        }
    }
}

/// One recipient's queue.
pub(crate) struct Queue {
    pub pending: VecDeque<Queued>,
    due: Instant,
    backoff: Duration,
    working: bool,
    /// The recipient's PeerId, once known (a connection from it makes the queue due).
    pub peer: Option<PeerId>,
    /// The last attempt failed: look the recipient up in the directory again rather than
    /// trusting the cached document (it may have moved).
    pub refresh: bool,
    /// Messages a delivery receipt confirmed while a worker had them in flight: if the
    /// attempt fails they are finished as delivered rather than queued again.
    confirmed: HashSet<Uuid>,
}

impl Queue {
    fn new(now: Instant) -> Self {
        Queue {
            pending: VecDeque::new(),
            due: now,
            backoff: FIRST_BACKOFF,
            working: false,
            peer: None,
            refresh: false,
            confirmed: HashSet::new(),
        }
    }
}

/// Every recipient's queue and who waits for which message.
#[derive(Default)]
pub(crate) struct Outbox {
    pub queues: HashMap<Uuid, Queue>,
    pub waiters: HashMap<Uuid, Vec<oneshot::Sender<Delivery>>>,
}

impl Outbox {
    /// Queues `m` for `to` (loaded from disk, or just sent); a queue no worker holds is
    /// due at once.
    pub fn enqueue(&mut self, to: Uuid, m: Queued, now: Instant) {
        let q = self.queues.entry(to).or_insert_with(|| Queue::new(now));
        q.pending.push_back(m);
        if !q.working {
            q.due = now;
        }
    }

    /// The queues due now, each handed to a new worker (marked working), and when the next
    /// one is due. Empty queues nobody works on are forgotten.
    pub fn start_due(&mut self, now: Instant) -> (Vec<Uuid>, Option<Instant>) {
        self.queues
            .retain(|_, q| !q.pending.is_empty() || q.working);
        let mut start = Vec::new();
        let mut next: Option<Instant> = None;
        for (uuid, q) in self.queues.iter_mut() {
            if q.working || q.pending.is_empty() {
                continue;
            }
            if q.due <= now {
                q.working = true;
                start.push(*uuid);
            } else {
                next = Some(next.map_or(q.due, |n| n.min(q.due)));
            }
        }
        (start, next)
    }

    /// `peer` connected to us: the queues for it that wait are due now. Whether any was.
    pub fn connected(&mut self, peer: PeerId, now: Instant) -> bool {
        let mut woke = false;
        for q in self.queues.values_mut() {
            if q.peer == Some(peer) && !q.working && !q.pending.is_empty() {
                q.due = now;
                woke = true;
            }
        }
        woke
    }

    /// A worker's attempt at `to` ended: after a success the queue is due again at once
    /// (what arrived meanwhile), after a failure in the back-off, which doubles.
    pub fn attempt_ended(&mut self, to: &Uuid, ok: bool, now: Instant) -> Option<Duration> {
        let q = self.queues.get_mut(to)?;
        q.working = false;
        q.confirmed.clear();
        q.refresh = !ok;
        if ok {
            q.backoff = FIRST_BACKOFF;
            q.due = now;
            None
        } else {
            let wait = q.backoff;
            q.due = now + wait;
            q.backoff = (q.backoff * 2).min(MAX_BACKOFF);
            Some(wait)
        }
    }

    /// The next batch for `to`: plain messages up to the batch and size limits, or one
    /// message with attachments on its own.
    pub fn take_batch(&mut self, to: &Uuid) -> Option<Vec<Queued>> {
        let q = self.queues.get_mut(to)?;
        let first = q.pending.pop_front()?;
        if !first.files.is_empty() {
            return Some(vec![first]);
        }
        let mut bytes = first.signed.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match q.pending.front() {
                Some(m)
                    if m.files.is_empty()
                        && bytes + m.signed.len() + PER_MESSAGE_FRAMING < MAX_REQUEST_BYTES / 2 =>
                {
                    bytes += m.signed.len() + PER_MESSAGE_FRAMING;
                    batch.extend(q.pending.pop_front());
                }
                _ => break,
            }
        }
        Some(batch)
    }

    /// A batch that failed comes back to the front of the queue, in its order; the
    /// messages a receipt confirmed while it was out are returned instead, delivered.
    pub fn give_back(&mut self, to: &Uuid, back: Vec<Queued>) -> Vec<Queued> {
        let Some(q) = self.queues.get_mut(to) else {
            return Vec::new();
        };
        let mut confirmed = Vec::new();
        for m in back.into_iter().rev() {
            if q.confirmed.remove(&m.msg_id) {
                confirmed.push(m);
            } else {
                q.pending.push_front(m);
            }
        }
        confirmed
    }

    /// Takes out the messages for `to` older than the outbox keeps them (7 days).
    pub fn expire(&mut self, to: &Uuid, now_ms: u64) -> Vec<Queued> {
        let Some(q) = self.queues.get_mut(to) else {
            return Vec::new();
        };
        let (old, keep): (Vec<_>, Vec<_>) = q
            .pending
            .drain(..)
            .partition(|m| m.created_ms.saturating_add(OUTBOX_RETENTION_MS) < now_ms);
        q.pending = keep.into();
        old
    }

    /// A delivery receipt from `from` for `ids`: takes out those still queued for `from`;
    /// the rest may be in a worker's hands, and are remembered (up to `max`) so a failed
    /// attempt does not queue them again. A receipt from anyone else confirms nothing.
    pub fn confirm(&mut self, from: &Uuid, ids: &[Uuid], max: usize) -> Vec<Queued> {
        let Some(q) = self.queues.get_mut(from) else {
            return Vec::new();
        };
        let (hit, keep): (Vec<_>, Vec<_>) =
            q.pending.drain(..).partition(|m| ids.contains(&m.msg_id));
        q.pending = keep.into();
        if q.working {
            q.confirmed.extend(
                ids.iter()
                    .filter(|id| !hit.iter().any(|m| m.msg_id == **id))
                    .take(max),
            );
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u64, created_ms: u64, bytes: usize, files: bool) -> Queued {
        Queued {
            seq: n,
            msg_id: Uuid::from_u64_pair(0, n),
            signed: Arc::new(vec![0; bytes]),
            files: if files { vec!["f".into()] } else { Vec::new() },
            created_ms,
            stored_at: Vec::new(),
        }
    }

    fn ids<'a>(ms: impl IntoIterator<Item = &'a Queued>) -> Vec<u64> {
        ms.into_iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_failing_recipient_backs_off_doubling_to_ten_minutes_and_a_success_resets_it() {
        let t0 = Instant::now();
        let to = Uuid::from_u64_pair(1, 1);
        let mut o = Outbox::default();
        o.enqueue(to, msg(1, 0, 10, false), t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            assert_eq!(o.start_due(now).0, vec![to], "due at {:?}", now - t0);
            // Working: not started twice.
            assert!(o.start_due(now).0.is_empty());
            let wait = o.attempt_ended(&to, false, now).unwrap();
            // Not due a moment before the back-off ends.
            let (start, next) = o.start_due(now + wait - Duration::from_millis(1));
            assert!(start.is_empty());
            assert_eq!(next, Some(now + wait));
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600]);
        o.start_due(now);
        assert_eq!(o.attempt_ended(&to, true, now), None);
        o.start_due(now);
        assert_eq!(o.attempt_ended(&to, false, now), Some(FIRST_BACKOFF));
    }

    #[test]
    fn a_connection_from_the_recipient_makes_its_queue_due_at_once() {
        let t0 = Instant::now();
        let (to, peer) = (Uuid::from_u64_pair(1, 2), PeerId::random());
        let mut o = Outbox::default();
        o.enqueue(to, msg(1, 0, 10, false), t0);
        o.start_due(t0);
        o.queues.get_mut(&to).unwrap().peer = Some(peer);
        o.attempt_ended(&to, false, t0);
        assert!(!o.connected(PeerId::random(), t0));
        assert!(o.connected(peer, t0));
        assert_eq!(o.start_due(t0).0, vec![to]);
    }

    #[test]
    fn batches_keep_order_and_limits_and_a_file_goes_alone() {
        let t0 = Instant::now();
        let to = Uuid::from_u64_pair(1, 3);
        let mut o = Outbox::default();
        for n in 0..(MAX_BATCH as u64 + 2) {
            o.enqueue(to, msg(n, 0, 100, false), t0);
        }
        o.enqueue(to, msg(100, 0, 100, true), t0);
        o.enqueue(to, msg(101, 0, MAX_REQUEST_BYTES / 4, false), t0);
        o.enqueue(to, msg(102, 0, MAX_REQUEST_BYTES / 4, false), t0);
        let first = o.take_batch(&to).unwrap();
        assert_eq!(ids(&first), (0..MAX_BATCH as u64).collect::<Vec<_>>());
        assert_eq!(ids(&o.take_batch(&to).unwrap()), [64, 65]);
        assert_eq!(ids(&o.take_batch(&to).unwrap()), [100]);
        // Two quarter-request messages do not fit under half a request together.
        assert_eq!(ids(&o.take_batch(&to).unwrap()), [101]);
        assert_eq!(ids(&o.take_batch(&to).unwrap()), [102]);
        assert!(o.take_batch(&to).is_none());
        // A failed batch goes back to the front, in order.
        o.enqueue(to, msg(200, 0, 10, false), t0);
        o.give_back(&to, first);
        assert_eq!(
            ids(&o.take_batch(&to).unwrap())[..3],
            [0, 1, 2],
            "given back first"
        );
    }

    #[test]
    fn a_receipt_while_the_batch_is_in_flight_finishes_it_as_delivered_if_the_attempt_fails() {
        let t0 = Instant::now();
        let (to, stranger) = (Uuid::from_u64_pair(1, 4), Uuid::from_u64_pair(1, 5));
        let mut o = Outbox::default();
        for n in 0..3 {
            o.enqueue(to, msg(n, 0, 10, false), t0);
        }
        assert_eq!(o.start_due(t0).0, vec![to]);
        let out = o.take_batch(&to).unwrap();
        o.enqueue(to, msg(3, 0, 10, false), t0);
        let id = |n| Uuid::from_u64_pair(0, n);
        // A receipt from someone else confirms nothing.
        assert!(o.confirm(&stranger, &[id(1)], 256).is_empty());
        // From the recipient: 3 is still queued and is taken out; 1 is in flight.
        assert_eq!(ids(&o.confirm(&to, &[id(1), id(3)], 256)), [3]);
        let delivered = o.give_back(&to, out);
        assert_eq!(ids(&delivered), [1]);
        assert_eq!(ids(&o.queues[&to].pending), [0, 2]);
        // The attempt's end forgets what it confirmed.
        o.attempt_ended(&to, false, t0);
        assert!(o.queues[&to].confirmed.is_empty());
    }

    #[test]
    fn messages_expire_after_seven_days_undelivered() {
        let t0 = Instant::now();
        let to = Uuid::from_u64_pair(1, 6);
        let mut o = Outbox::default();
        let day = 24 * 3600 * 1000;
        o.enqueue(to, msg(1, day, 10, false), t0);
        o.enqueue(to, msg(2, 2 * day, 10, false), t0);
        assert!(o.expire(&to, 8 * day).is_empty());
        assert_eq!(ids(&o.expire(&to, 8 * day + 1)), [1]);
        assert_eq!(ids(&o.queues[&to].pending), [2]);
    }
}

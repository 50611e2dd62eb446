//! Draining our mailboxes: the relays our identity document reaches us through keep what
//! senders could not deliver while we were away. We log in by signing the relay's fresh
//! nonce, take each page through the same checks and store as a direct delivery (then
//! acknowledge it, which is when the relay deletes it), and tell each sender with a signed
//! delivery receipt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::Signer;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::counters::Counter;
use crate::net::dial::DialReason;
use uuid::Uuid;

use super::inbound::receive;
use super::Inner;
use crate::identity::MessageKeys;
use crate::wire::mailbox::login_bytes;
use crate::wire::receipt::MAX_RECEIPT_IDS;
use crate::wire::verbs::{Nack, Outcome, Request, Response};

/// Every mailbox is drained this often, besides when we connect to its relay.
const DRAIN_EVERY: Duration = Duration::from_secs(300);
/// A connection to a relay drains it again at most this often.
const MIN_GAP: Duration = Duration::from_secs(2);
/// Most pages one drain takes (64 items each); the rest waits for the next drain.
const MAX_PAGES: usize = 1000;
/// Whether our own refusal of a stored item leaves it at the relay for a later drain: only
/// while we cannot take it ourselves. Any other refusal is final for a stored item (it is
/// not resealed, so unlike for a sender even `undecryptable` stays so), and it is
/// acknowledged away.
fn keep_at_relay(reason: &str) -> bool {
    matches!(Nack::parse(reason), Some(Nack::Busy | Nack::NotReady))
}

/// Drains each of our mailboxes when our document first names it, when we connect to its
/// relay, and every [`DRAIN_EVERY`].
pub(super) async fn drainer(inner: Arc<Inner>, mut connected: broadcast::Receiver<PeerId>) {
    let mut keys = inner.keys.clone();
    let mut last: HashMap<PeerId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut connected_to = None;
        tokio::select! {
            _ = tick.tick() => last.clear(),
            r = keys.changed() => if r.is_err() { return },
            r = connected.recv() => match r {
                Ok(p) => connected_to = Some(p),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
        let Some(k) = inner.current_keys() else {
            continue;
        };
        for (relay, addr) in crate::wire::mailbox::mailboxes(k.doc.doc()) {
            let due = match last.get(&relay) {
                None => true,
                Some(at) => connected_to == Some(relay) && at.elapsed() >= MIN_GAP,
            };
            if due {
                last.insert(relay, Instant::now());
                drain(&inner, &k, relay, addr).await;
            }
        }
    }
}

async fn ask(inner: &Inner, relay: PeerId, addr: &Multiaddr, r: Request) -> Option<Response> {
    match inner
        .net
        .request(relay, vec![addr.clone()], DialReason::Own, r)
        .await
    {
        Ok(Response::Nack { reason }) => {
            debug!(%relay, %reason, "mailbox relay refused");
            None
        }
        Ok(resp) => Some(resp),
        Err(e) => {
            debug!(%relay, error = %e, "mailbox relay not reached");
            None
        }
    }
}

/// Takes everything waiting at one relay; returns how many items it stored or dropped.
pub(super) async fn drain(
    inner: &Arc<Inner>,
    keys: &MessageKeys,
    relay: PeerId,
    addr: Multiaddr,
) -> usize {
    let Some(Response::Challenge { nonce }) =
        ask(inner, relay, &addr, Request::MailChallenge).await
    else {
        return 0;
    };
    let sig = keys.signing.sign(&login_bytes(&relay, &nonce)).to_bytes();
    let login = Request::MailLogin {
        doc: keys.doc.bytes().to_vec(),
        sig,
    };
    let mut answer = ask(inner, relay, &addr, login).await;
    let mut taken = 0;
    let mut receipts: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for _ in 0..MAX_PAGES {
        let items = match answer {
            Some(Response::Mail { items, .. }) if !items.is_empty() => items,
            Some(Response::Mail { .. }) | None => break,
            Some(other) => {
                inner.counters.count(Counter::BadResponse);
                debug!(%relay, ?other, "unexpected answer from a mailbox");
                break;
            }
        };
        let ns: Vec<u64> = items.iter().map(|i| i.n).collect();
        let sealed = items
            .into_iter()
            .map(|i| serde_bytes::ByteBuf::from(i.sealed))
            .collect();
        let results = match receive(inner, None, sealed).await {
            Ok(r) => r,
            Err(reason) => {
                debug!(%relay, %reason, "mail left at the relay for later");
                break;
            }
        };
        let mut ack = Vec::new();
        for (n, r) in ns.into_iter().zip(results) {
            match r.outcome {
                Outcome::Nack { reason } if keep_at_relay(&reason) => continue,
                Outcome::Ack => {
                    if let Some((from, id, false)) = r.accepted {
                        receipts.entry(from).or_default().push(id);
                    }
                }
                // Refused for good (counted and logged): nothing to keep it for.
                _ => {}
            }
            ack.push(n);
        }
        if ack.is_empty() {
            break;
        }
        taken += ack.len();
        answer = ask(inner, relay, &addr, Request::MailAck { ack }).await;
    }
    if taken > 0 {
        info!(%relay, messages = taken, "drained a mailbox");
    }
    for (from, mut ids) in receipts {
        ids.sort();
        ids.dedup();
        for chunk in ids.chunks(MAX_RECEIPT_IDS) {
            if let Err(e) = super::outbox::send_receipt(inner, from, chunk).await {
                warn!(error = %e, "could not queue a delivery receipt");
            }
        }
    }
    taken
}

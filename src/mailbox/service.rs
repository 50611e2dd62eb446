//! The relay's side of mailboxes: DEPOSIT, MAIL-CHALLENGE, MAIL-LOGIN and MAIL-ACK,
//! handed over by the event loop and answered through [`Client::respond`]; and the sweep
//! that deletes what is older than the retention.
//!
//! What is kept in memory is bounded: a nonce per peer that asked for one (a minute), a
//! login per peer (ten minutes), and a token bucket per depositing peer (the per-sender
//! quota). None of it is written to disk or logged with a mailbox id, so the relay's
//! database and logs never link a sender to a recipient.

use std::collections::HashMap;
use std::sync::Arc;

use crate::shared::Shared;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, VerifyingKey};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use crate::counters::{Counter, Counters};
use crate::identity::SignedDocument;
use crate::net::Client;
use crate::net::InboundVerb;
use crate::store::mailbox;
use crate::store::{Store, Writer};
use crate::wire::envelope::MAX_SEALED_BYTES;
use crate::wire::mailbox::{
    login_bytes, mailbox_id, receipt_bytes, MAX_DEPOSIT_BATCH, MAX_PAGE_BYTES, MAX_PAGE_ITEMS,
};
use crate::wire::verbs::{DepositResult, MailItem, Nack, Request, Response};

/// How long a nonce may be used.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// How long a login lasts without use.
const SESSION_TTL: Duration = Duration::from_secs(600);
/// Peers with a nonce or a login at once.
const MAX_PEERS: usize = 4096;
/// Requests handled at once; more get NACK `busy`.
const CONCURRENCY: usize = 32;
/// How often expired mail is deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Most items one sweep transaction deletes.
const SWEEP_BATCH: usize = 10_000;
/// Most items one MAIL-ACK names.
const MAX_ACK: usize = 256;

pub use crate::config::MailboxConfig;

struct Limiters {
    challenges: HashMap<PeerId, ([u8; 32], Instant)>,
    sessions: HashMap<PeerId, ([u8; 32], Instant)>,
    senders: SenderQuota,
}

/// The per-sender quota: two token buckets per depositing peer (items and bytes), each
/// refilled over a day, kept in memory only. When [`MAX_SENDERS`] peers are tracked, a new
/// one replaces the peer whose buckets are fullest (the one that has used least), so a
/// crowd of fresh PeerIds cannot lock everyone else out.
struct SenderQuota {
    items_per_day: f64,
    bytes_per_day: f64,
    buckets: HashMap<PeerId, (f64, f64, Instant)>,
}

/// Depositing peers whose quota is tracked at once.
const MAX_SENDERS: usize = 16_384;

impl SenderQuota {
    fn refill(&self, b: &mut (f64, f64, Instant), now: Instant) {
        let days = now.duration_since(b.2).as_secs_f64() / 86_400.0;
        b.0 = (b.0 + days * self.items_per_day).min(self.items_per_day);
        b.1 = (b.1 + days * self.bytes_per_day).min(self.bytes_per_day);
        b.2 = now;
    }

    /// Takes one item and `bytes` from `peer`'s buckets if both have enough; else nothing.
    fn take(&mut self, peer: &PeerId, bytes: u64, now: Instant) -> bool {
        if !self.buckets.contains_key(peer) && self.buckets.len() >= MAX_SENDERS {
            let (ipd, bpd) = (self.items_per_day, self.bytes_per_day);
            let fullest = self
                .buckets
                .iter()
                .max_by(|a, b| {
                    let score = |v: &(f64, f64, Instant)| v.0 / ipd + v.1 / bpd;
                    score(a.1).total_cmp(&score(b.1))
                })
                .map(|(p, _)| *p);
            if let Some(p) = fullest {
                self.buckets.remove(&p);
            }
        }
        let mut b = self.buckets.get(peer).copied().unwrap_or((
            self.items_per_day,
            self.bytes_per_day,
            now,
        ));
        self.refill(&mut b, now);
        let ok = b.0 >= 1.0 && b.1 >= bytes as f64;
        if ok {
            b.0 -= 1.0;
            b.1 -= bytes as f64;
        }
        self.buckets.insert(*peer, b);
        ok
    }

    /// Gives back what [`SenderQuota::take`] took for an item the store then refused.
    fn give_back(&mut self, peer: &PeerId, bytes: u64) {
        if let Some(b) = self.buckets.get_mut(peer) {
            b.0 = (b.0 + 1.0).min(self.items_per_day);
            b.1 = (b.1 + bytes as f64).min(self.bytes_per_day);
        }
    }
}

struct Inner {
    store: Store,
    writer: Writer,
    keypair: Keypair,
    relay: PeerId,
    net: Client,
    config: MailboxConfig,
    counters: Counters,
    state: Shared<Limiters>,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        crate::unix_now_ms().saturating_add_signed(self.config.clock_offset_ms)
    }
}

/// The running mailbox service; stop it with [`Mailboxes::shutdown`].
pub struct Mailboxes {
    tasks: Arc<crate::tasks::Tasks>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Mailboxes {
    /// Starts the service; the event loop hands it mailbox verbs on the returned channel.
    pub fn start(
        store: Store,
        keypair: Keypair,
        net: Client,
        config: MailboxConfig,
        counters: Counters,
    ) -> (Mailboxes, mpsc::Sender<InboundVerb>) {
        let (writer, writer_thread) = store.writer();
        let (tx, rx) = mpsc::channel(CONCURRENCY * 4);
        let inner = Arc::new(Inner {
            store,
            writer,
            relay: keypair.public().to_peer_id(),
            keypair,
            net,
            counters,
            state: Shared::new(Limiters {
                challenges: HashMap::new(),
                sessions: HashMap::new(),
                senders: SenderQuota {
                    items_per_day: config.sender_items_per_day as f64,
                    bytes_per_day: config.sender_bytes_per_day as f64,
                    buckets: HashMap::new(),
                },
            }),
            config,
        });
        let tasks = Arc::new(crate::tasks::Tasks::default());
        tasks.spawn_loop(sweeper(inner.clone()));
        tasks.spawn_loop(dispatcher(inner, rx, tasks.clone()));
        (
            Mailboxes {
                tasks,
                writer_thread,
            },
            tx,
        )
    }

    /// Stops the tasks and waits (up to 5 s) for the writer to finish its last commit.
    pub async fn shutdown(self) {
        self.shutdown_by(tokio::time::Instant::now() + crate::tasks::DRAIN)
            .await;
    }

    /// [`Mailboxes::shutdown`], done by `deadline`.
    pub async fn shutdown_by(mut self, deadline: tokio::time::Instant) {
        self.tasks.shutdown_by(deadline).await;
        if let Some(t) = self.writer_thread.take() {
            let _ =
                tokio::time::timeout_at(deadline, tokio::task::spawn_blocking(move || t.join()))
                    .await;
        }
    }
}

fn nack(reason: Nack) -> Response {
    reason.into()
}

/// Hands each verb to a handler of its own (work the shutdown drains), at most
/// [`CONCURRENCY`] at once.
async fn dispatcher(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<InboundVerb>,
    tasks: Arc<crate::tasks::Tasks>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(verb) = rx.recv().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            inner.counters.count(Counter::MailBusy);
            let _ = inner.net.respond(verb.token, nack(Nack::Busy)).await;
            continue;
        };
        let inner = inner.clone();
        tasks.spawn_work(async move {
            let response = handle(&inner, verb.peer, verb.request).await;
            let _ = inner.net.respond(verb.token, response).await;
            drop(permit);
        });
    }
}

async fn handle(inner: &Inner, peer: PeerId, request: Request) -> Response {
    match request {
        Request::Deposit { mailbox, sealed } => deposit(inner, peer, mailbox, sealed).await,
        Request::MailChallenge => challenge(inner, peer),
        Request::MailLogin { doc, sig } => login(inner, peer, &doc, &sig).await,
        Request::MailAck { ack } => acknowledge(inner, peer, ack).await,
        _ => nack(Nack::Unexpected),
    }
}

async fn deposit(
    inner: &Inner,
    peer: PeerId,
    mailbox: [u8; 32],
    sealed: Vec<serde_bytes::ByteBuf>,
) -> Response {
    if sealed.is_empty() || sealed.len() > MAX_DEPOSIT_BATCH {
        inner.counters.count(Counter::MailMalformed);
        return nack(Nack::Malformed);
    }
    let now = Instant::now();
    // Per item: Ok(index into `accepted`) or the refusal.
    let mut plan: Vec<Result<usize, Nack>> = Vec::with_capacity(sealed.len());
    let mut accepted: Vec<Vec<u8>> = Vec::new();
    {
        let mut st = inner.state.lock();
        for s in sealed {
            if s.is_empty() || s.len() > MAX_SEALED_BYTES {
                inner.counters.count(Counter::MailTooLarge);
                plan.push(Err(Nack::TooLarge));
                continue;
            }
            if !st.senders.take(&peer, s.len() as u64, now) {
                inner.counters.count(Counter::MailSenderQuota);
                plan.push(Err(Nack::SenderQuota));
                continue;
            }
            plan.push(Ok(accepted.len()));
            accepted.push(s.into_vec());
        }
    }
    let stored = if accepted.is_empty() {
        Vec::new()
    } else {
        let limits = inner.config.limits;
        let now_ms = inner.now_ms();
        let blobs = accepted.clone();
        match inner
            .writer
            .write(move |txn| mailbox::deposit(txn, &mailbox, &blobs, now_ms, &limits))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "could not store deposited mail");
                return nack(Nack::Busy);
            }
        }
    };
    let results = plan
        .into_iter()
        .map(|p| match p {
            Err(reason) => reason.into(),
            Ok(i) => match stored.get(i) {
                Some(Ok(expires)) => {
                    let bytes = receipt_bytes(&mailbox, &accepted[i], *expires);
                    match inner
                        .keypair
                        .sign(&bytes)
                        .ok()
                        .and_then(|s| s.try_into().ok())
                    {
                        Some(sig) => DepositResult::Stored {
                            expires: *expires,
                            sig,
                        },
                        None => Nack::Busy.into(),
                    }
                }
                Some(Err(reason)) => {
                    // Refused by the store: it costs the sender none of its quota.
                    inner
                        .state
                        .lock()
                        .senders
                        .give_back(&peer, accepted[i].len() as u64);
                    inner.counters.count(match *reason {
                        Nack::MailboxFull => Counter::MailMailboxFull,
                        _ => Counter::MailRelayFull,
                    });
                    (*reason).into()
                }
                None => Nack::Busy.into(),
            },
        })
        .collect();
    Response::Deposited { results }
}

/// Puts `peer`'s entry in a table of at most [`MAX_PEERS`]: when full, entries older than
/// `ttl` go first; false (nothing stored) if it is still full.
fn insert_bounded(
    table: &mut HashMap<PeerId, ([u8; 32], Instant)>,
    peer: PeerId,
    value: [u8; 32],
    ttl: Duration,
) -> bool {
    let now = Instant::now();
    if table.len() >= MAX_PEERS && !table.contains_key(&peer) {
        table.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        if table.len() >= MAX_PEERS {
            return false;
        }
    }
    table.insert(peer, (value, now));
    true
}

fn challenge(inner: &Inner, peer: PeerId) -> Response {
    let mut st = inner.state.lock();
    let nonce = crate::identity::random_secret();
    if !insert_bounded(&mut st.challenges, peer, nonce, CHALLENGE_TTL) {
        inner.counters.count(Counter::MailBusy);
        return nack(Nack::Busy);
    }
    Response::Challenge { nonce }
}

async fn login(inner: &Inner, peer: PeerId, doc: &[u8], sig: &[u8; 64]) -> Response {
    let refused = |what: Nack| {
        inner.counters.count(Counter::MailLoginRefused);
        debug!(%peer, reason = %what, "mailbox login refused");
        nack(what)
    };
    // The nonce is used up by this attempt, whatever its outcome: no replay, no guessing.
    let nonce = inner.state.lock().challenges.remove(&peer);
    let Some((nonce, _)) = nonce.filter(|(_, at)| at.elapsed() < CHALLENGE_TTL) else {
        return refused(Nack::NoChallenge);
    };
    let doc = match SignedDocument::decode(doc, inner.now_ms() / 1000) {
        Ok(d) => d,
        Err(_) => return refused(Nack::BadDocument),
    };
    if doc.doc().peer_id() != Some(peer) {
        return refused(Nack::PeerMismatch);
    }
    // A key rotated away (the relay holds a document whose key chain extends this one's)
    // no longer opens the mailbox.
    if let Ok(Some(held)) = inner
        .store
        .cached_document(&doc.doc().uuid(), inner.now_ms() / 1000)
    {
        let (login, newest) = (&doc.doc().key_chain, &held.doc().key_chain);
        if newest.len() > login.len() && newest.starts_with(login) {
            return refused(Nack::StaleKey);
        }
    }
    let key = match VerifyingKey::from_bytes(&doc.doc().current_key) {
        Ok(k) => k,
        Err(_) => return refused(Nack::BadSignature),
    };
    if key
        .verify_strict(
            &login_bytes(&inner.relay, &nonce),
            &Signature::from_bytes(sig),
        )
        .is_err()
    {
        return refused(Nack::BadSignature);
    }
    let mailbox = mailbox_id(&inner.relay, &doc.doc().uuid());
    if !insert_bounded(&mut inner.state.lock().sessions, peer, mailbox, SESSION_TTL) {
        inner.counters.count(Counter::MailBusy);
        return nack(Nack::Busy);
    }
    page(inner, &mailbox)
}

async fn acknowledge(inner: &Inner, peer: PeerId, ack: Vec<u64>) -> Response {
    if ack.len() > MAX_ACK {
        inner.counters.count(Counter::MailMalformed);
        return nack(Nack::Malformed);
    }
    let session = match inner.state.lock().sessions.get_mut(&peer) {
        Some((m, at)) if at.elapsed() < SESSION_TTL => {
            *at = Instant::now();
            Some(*m)
        }
        _ => None,
    };
    let Some(mailbox) = session else {
        inner.counters.count(Counter::MailLoginRefused);
        return nack(Nack::NotLoggedIn);
    };
    if !ack.is_empty() {
        let written = inner
            .writer
            .write(move |txn| mailbox::ack(txn, &mailbox, &ack))
            .await;
        if let Err(e) = written {
            warn!(error = %e, "could not delete acknowledged mail");
            return nack(Nack::Busy);
        }
    }
    page(inner, &mailbox)
}

fn page(inner: &Inner, mailbox: &[u8; 32]) -> Response {
    match inner.store.mail_page(
        mailbox,
        inner.now_ms(),
        &inner.config.limits,
        MAX_PAGE_ITEMS,
        MAX_PAGE_BYTES,
    ) {
        Ok((items, more)) => Response::Mail {
            items: items
                .into_iter()
                .map(|(n, sealed)| MailItem { n, sealed })
                .collect(),
            more,
        },
        Err(e) => {
            warn!(error = %e, "could not read a mailbox");
            nack(Nack::Busy)
        }
    }
}

/// Deletes expired mail at start and then every [`SWEEP_EVERY`].
async fn sweeper(inner: Arc<Inner>) {
    loop {
        let mut total = 0;
        loop {
            let limits = inner.config.limits;
            let now_ms = inner.now_ms();
            match inner
                .writer
                .write(move |txn| mailbox::expire(txn, now_ms, &limits, SWEEP_BATCH))
                .await
            {
                Ok(n) => {
                    total += n;
                    if n < SWEEP_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "could not delete expired mail");
                    break;
                }
            }
        }
        if total > 0 {
            info!(items = total, "deleted mail past its retention");
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_quota_charges_both_buckets_gives_back_and_evicts_the_least_used() {
        let mut q = SenderQuota {
            items_per_day: 3.0,
            bytes_per_day: 100.0,
            buckets: HashMap::new(),
        };
        let (heavy, now) = (PeerId::random(), Instant::now());
        assert!(q.take(&heavy, 60, now));
        assert!(!q.take(&heavy, 60, now), "bytes run out first");
        assert!(q.take(&heavy, 40, now), "and the refusal took no item");
        assert!(q.take(&heavy, 0, now));
        assert!(!q.take(&heavy, 0, now), "then the items run out");
        q.give_back(&heavy, 40);
        assert!(q.take(&heavy, 40, now), "a refused item's share came back");
        // A day later it is full again.
        assert!(q.take(&heavy, 100, now + Duration::from_secs(86_400)));

        // A full table drops the peers that used least, never the heavy one.
        let later = now + Duration::from_secs(86_400);
        while q.buckets.len() < MAX_SENDERS {
            q.take(&PeerId::random(), 0, later);
        }
        for _ in 0..100 {
            assert!(q.take(&PeerId::random(), 1, later));
        }
        assert_eq!(q.buckets.len(), MAX_SENDERS);
        assert!(
            !q.take(&heavy, 1, later),
            "the heavy sender's use is remembered"
        );
    }
}

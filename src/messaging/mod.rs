//! Direct messages: the [`Messenger`] signs, seals and sends through a durable outbox,
//! retries until the recipient ACKs (or 7 days pass), and on the receiving side opens,
//! verifies, deduplicates and commits before it ACKs. It runs beside the network event
//! loop and talks to it only through [`crate::net::Client`] and the channels in
//! [`MessagingChannels`].

mod attachments;
mod deposit;
pub mod files;
mod inbound;
mod mail;
mod outbox;
mod queue;
mod transfer_state;
#[cfg(test)]
mod transfer_tests;
pub mod transfers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::shared::Shared;

use libp2p::PeerId;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use uuid::Uuid;

use crate::counters::Counters;
use crate::identity::{DocumentError, MessageKeys, SignedDocument};
use crate::net::{Client, EventLoopHooks, InboundVerb};
use crate::store::{HistoryEntry, Store, Writer};
use crate::wire::envelope::{KeyCache, OpenCache, Reject, SealCache};

pub use outbox::Delivery;

/// How long an undelivered message is retried.
pub const OUTBOX_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// Sender and recipient documents kept in memory.
const DOC_CACHE: usize = 4096;
/// Inbound requests handled at once; more get NACK `busy`.
const INBOUND_CONCURRENCY: usize = 64;
/// Capacity of the stream of newly received messages (a slow `recv --follow` that falls
/// further behind re-reads the history).
const RECEIVED_CAPACITY: usize = 1024;

/// The messenger's side.
pub struct MessagingChannels {
    inbound: mpsc::Receiver<InboundVerb>,
    keys: watch::Receiver<Option<Arc<MessageKeys>>>,
    connected: broadcast::Receiver<PeerId>,
}

/// Makes the channels between the event loop and the messenger.
pub fn channels() -> (EventLoopHooks, MessagingChannels) {
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_CONCURRENCY * 2);
    let (keys_tx, keys) = watch::channel(None);
    let (connected_tx, connected) = broadcast::channel(256);
    (
        EventLoopHooks {
            inbound: inbound_tx,
            keys: keys_tx,
            connected: connected_tx,
        },
        MessagingChannels {
            inbound,
            keys,
            connected,
        },
    )
}

/// Settings for the messenger.
#[derive(Clone, Debug)]
pub struct MessagingConfig {
    pub home: PathBuf,
    /// Largest attachment sent or accepted.
    pub max_attachment: u64,
    /// How long an attachment transfer may go without a chunk before it counts as idle
    /// (see `transfers`).
    pub transfer_idle: std::time::Duration,
    /// Where applied channel key grants are announced (the channel service).
    pub grants: Option<mpsc::Sender<GrantNote>>,
}

/// A key grant received in a direct message and applied to the store.
#[derive(Clone, Debug)]
pub struct GrantNote {
    pub from: Uuid,
    pub channel: Uuid,
    pub name: String,
    pub epoch: u32,
    pub outcome: crate::store::GrantOutcome,
}

/// Why a send was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    BadInput(String),
    #[error("storage error: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the node is stopping")]
    Stopped,
}

/// Longest idempotency key taken, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A message accepted into the outbox.
pub struct Sending {
    pub msg_id: Uuid,
    /// Resolves when the message is delivered, refused or expired.
    pub outcome: oneshot::Receiver<Delivery>,
}

/// A received or sent message as stored, with its history position.
pub type Stored = (u64, HistoryEntry);

/// A sent message's delivery status moved on, once that is on disk: `status` is what its
/// history row now shows (`stored`, `delivered`, `failed`, `expired`), `detail` why it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub msg_id: Uuid,
    pub status: &'static str,
    pub detail: Option<String>,
}

/// How many status changes a slow reader may fall behind before it misses some.
const STATUS_CAPACITY: usize = 1024;

pub(crate) struct Inner {
    files: PathBuf,
    store: Store,
    writer: Writer,
    net: Client,
    keys: watch::Receiver<Option<Arc<MessageKeys>>>,
    max_attachment: u64,
    seal: Shared<SealCache>,
    open: Shared<OpenCache>,
    verifying_keys: KeyCache,
    docs: Shared<HashMap<Uuid, SignedDocument>>,
    outbox: Shared<queue::Outbox>,
    /// Idempotency keys of sends under way ([`Messenger::send_once`]).
    sending_once: Shared<std::collections::HashSet<[u8; 32]>>,
    wake: Notify,
    transfers: Shared<transfers::Transfers>,
    /// A transfer with no chunk for this long may give up its slot (ms).
    transfer_idle_ms: u64,
    received: broadcast::Sender<Stored>,
    status_changes: broadcast::Sender<StatusChange>,
    counters: Counters,
    grants: Option<mpsc::Sender<GrantNote>>,
    tasks: crate::tasks::Tasks,
    writer_thread: Shared<Option<std::thread::JoinHandle<()>>>,
}

/// Handle to the messaging service; cheap to clone.
#[derive(Clone)]
pub struct Messenger {
    inner: Arc<Inner>,
}

impl Messenger {
    /// Starts the messenger: loads the outbox and begins delivering and receiving.
    pub fn start(
        config: MessagingConfig,
        store: Store,
        net: Client,
        channels: MessagingChannels,
        counters: Counters,
    ) -> Result<Messenger, crate::store::StoreError> {
        // Absolute, so the paths printed for received files work from any directory.
        let home = std::fs::canonicalize(&config.home).unwrap_or(config.home);
        let files = home.join("files");
        let (writer, writer_thread) = store.writer();
        let (received, _) = broadcast::channel(RECEIVED_CAPACITY);
        let idle_ms = u64::try_from(config.transfer_idle.as_millis()).unwrap_or(u64::MAX);
        // Stored transfers have been idle since this messenger started.
        let started_ms = crate::unix_now_ms();
        let inner = Arc::new(Inner {
            files,
            store,
            writer,
            net,
            keys: channels.keys,
            max_attachment: config.max_attachment,
            seal: Shared::default(),
            open: Shared::default(),
            verifying_keys: KeyCache::default(),
            docs: Shared::default(),
            outbox: Shared::default(),
            sending_once: Shared::default(),
            wake: Notify::new(),
            transfers: Shared::new(transfers::Transfers::new(idle_ms, started_ms)),
            transfer_idle_ms: idle_ms,
            received,
            status_changes: broadcast::channel(STATUS_CAPACITY).0,
            counters,
            grants: config.grants,
            tasks: Default::default(),
            writer_thread: Shared::new(writer_thread),
        });
        outbox::load(&inner)?;
        let m = Messenger { inner };
        m.spawn(outbox::scheduler(m.inner.clone()));
        m.spawn(inbound::dispatcher(m.inner.clone(), channels.inbound));
        m.spawn(mail::drainer(
            m.inner.clone(),
            channels.connected.resubscribe(),
        ));
        m.spawn(outbox::on_connections(m.inner.clone(), channels.connected));
        Ok(m)
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.tasks.spawn_loop(f);
    }

    /// Stops every messaging task (the outbox stays on disk for the next start).
    pub async fn shutdown(self) {
        self.shutdown_by(tokio::time::Instant::now() + crate::tasks::DRAIN)
            .await;
    }

    /// [`Messenger::shutdown`], done by `deadline`: loops stopped, work under way finished,
    /// the writer's last commit awaited.
    pub async fn shutdown_by(self, deadline: tokio::time::Instant) {
        self.inner.tasks.shutdown_by(deadline).await;
        let thread = self.inner.writer_thread.lock().take();
        // Dropping the last handle ends the writer thread, which closes the database.
        drop(self);
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            let _ = tokio::time::timeout_at(deadline, joined).await;
        }
    }

    /// Accepts a message for `to`: signs it, copies its attachments, writes it to the
    /// outbox and history durably, then starts delivering it.
    pub async fn send(
        &self,
        to: Uuid,
        text: String,
        attachments: Vec<PathBuf>,
    ) -> Result<Sending, SendError> {
        let out = outbox::Outgoing {
            kind: "text",
            body: text.clone(),
            shown: Some(text),
        };
        outbox::send(&self.inner, to, out, attachments, None).await
    }

    /// [`Messenger::send`] under a caller's idempotency key: a retry with the same key and
    /// the same message (before or after a restart) sends nothing, and gets the first
    /// send's id and outcome; the same key with another message is refused. Keys belong to
    /// this node's user; sends with one key at once are refused but the first.
    pub async fn send_once(
        &self,
        to: Uuid,
        text: String,
        attachments: Vec<PathBuf>,
        key: &str,
    ) -> Result<Sending, SendError> {
        use sha2::{Digest, Sha256};
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(SendError::BadInput(format!(
                "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} bytes"
            )));
        }
        let digest = |parts: &[&[u8]]| -> [u8; 32] {
            let mut h = Sha256::new();
            for p in parts {
                h.update((p.len() as u64).to_be_bytes());
                h.update(p);
            }
            h.finalize().into()
        };
        let mut asked: Vec<Vec<u8>> = vec![to.as_bytes().to_vec(), text.as_bytes().to_vec()];
        asked.extend(
            attachments
                .iter()
                .map(|p| p.as_os_str().as_encoded_bytes().to_vec()),
        );
        let asked: Vec<&[u8]> = asked.iter().map(Vec::as_slice).collect();
        let once = outbox::Once {
            key: digest(&[b"ptpchat/idempotency-key/v1", key.as_bytes()]),
            request: digest(&asked),
        };
        if !self.inner.sending_once.lock().insert(once.key) {
            return Err(SendError::BadInput(
                "a send with this idempotency key is under way; try again when it is answered"
                    .into(),
            ));
        }
        // Let go of the key however this ends (an HTTP client that hangs up drops it).
        struct Release<'a>(&'a Inner, [u8; 32]);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.sending_once.lock().remove(&self.1);
            }
        }
        let _release = Release(&self.inner, once.key);
        let out = outbox::Outgoing {
            kind: "text",
            body: text.clone(),
            shown: Some(text),
        };
        outbox::send(&self.inner, to, out, attachments, Some(once)).await
    }

    /// Sends a private channel's key to `to` as a durable direct message (KEY): signed by
    /// us, sealed to `to`'s current encryption key, retried until ACKed or 7 days pass.
    pub async fn send_grant(
        &self,
        to: Uuid,
        grant: &crate::wire::frame::KeyGrant,
    ) -> Result<Sending, SendError> {
        let out = outbox::Outgoing {
            kind: crate::wire::frame::GRANT_KIND,
            body: crate::wire::frame::encode_grant(grant),
            shown: Some(format!(
                "[key of channel {}, epoch {}]",
                grant.name, grant.epoch
            )),
        };
        outbox::send(&self.inner, to, out, Vec::new(), None).await
    }

    /// Our current signing and encryption keys with our document (`None` until the
    /// event loop has issued the first document).
    pub fn current_keys(&self) -> Option<Arc<MessageKeys>> {
        self.inner.current_keys()
    }

    /// Our keys, waiting for the event loop to issue the first document if need be
    /// (`None` if the node stops first).
    pub async fn wait_keys(&self) -> Option<Arc<MessageKeys>> {
        let mut rx = self.inner.keys.clone();
        let keys = rx.wait_for(|k| k.is_some()).await.ok()?.clone();
        keys
    }

    /// Checks a sender's document as for a direct message (see `Inner::sender_document`).
    pub(crate) fn check_sender_document(
        &self,
        from: &Uuid,
        bytes: &[u8],
    ) -> Result<SignedDocument, Reject> {
        self.inner.sender_document(from, bytes)
    }

    /// Keeps a sender's document after the frame it came with verified (see
    /// `Inner::keep_sender_document`).
    pub(crate) fn keep_sender_document(&self, doc: &SignedDocument, durable: bool) {
        self.inner.keep_sender_document(doc, durable)
    }

    /// Parsed verifying keys shared with direct messages.
    pub(crate) fn key_cache(&self) -> &KeyCache {
        &self.inner.verifying_keys
    }

    /// The group-commit writer.
    pub(crate) fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    /// Tells `recv --follow` readers about a newly stored message.
    pub(crate) fn announce_stored(&self, stored: Stored) {
        let _ = self.inner.received.send(stored);
    }

    /// Newly stored received messages, as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Stored> {
        self.inner.received.subscribe()
    }

    /// Delivery status changes of sent messages, as they are committed.
    pub fn subscribe_status(&self) -> broadcast::Receiver<StatusChange> {
        self.inner.status_changes.subscribe()
    }

    /// The store (history and contacts are read from it directly).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Counters of refused input.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The verified identity document we hold for `uuid`, if any (memory, then disk).
    pub fn known_document(&self, uuid: &Uuid) -> Option<SignedDocument> {
        self.inner.known_document(uuid)
    }

    /// The newest verified document we hold for `uuid`, from memory or disk (lookups made
    /// by the directory update the disk copy).
    pub fn latest_document(&self, uuid: &Uuid) -> Option<SignedDocument> {
        let memory = self.inner.known_document(uuid);
        let disk = self
            .inner
            .store
            .cached_document(uuid, crate::unix_now())
            .ok()
            .flatten();
        match (memory, disk) {
            (Some(m), Some(d)) if d.may_replace(&m) == Ok(true) => {
                self.inner.remember_in_memory(&d);
                Some(d)
            }
            (Some(m), _) => Some(m),
            (None, d) => d,
        }
    }

    /// Remembers a document found by a lookup (e.g. `contacts add`).
    pub fn remember_document(&self, doc: &SignedDocument) {
        self.inner.remember(doc);
    }

    /// Where received attachments are saved.
    pub fn files_dir(&self) -> &Path {
        &self.inner.files
    }

    /// The largest attachment this node sends or takes, in bytes.
    pub fn max_attachment(&self) -> u64 {
        self.inner.max_attachment
    }
}

impl Inner {
    fn current_keys(&self) -> Option<Arc<MessageKeys>> {
        self.keys.borrow().clone()
    }

    fn known_document(&self, uuid: &Uuid) -> Option<SignedDocument> {
        let now = crate::unix_now();
        let held = self.docs.lock().get(uuid).cloned();
        if let Some(d) = held {
            if d.doc().expires > now {
                return Some(d);
            }
        }
        let d = self.store.cached_document(uuid, now).ok().flatten()?;
        self.remember_in_memory(&d);
        Some(d)
    }

    fn remember_in_memory(&self, doc: &SignedDocument) {
        let mut docs = self.docs.lock();
        if docs.len() >= DOC_CACHE && !docs.contains_key(&doc.doc().uuid()) {
            docs.clear();
        }
        docs.insert(doc.doc().uuid(), doc.clone());
    }

    fn remember(&self, doc: &SignedDocument) {
        self.remember_in_memory(doc);
        let _ = self.store.cache_document(doc, crate::unix_now());
    }

    fn forget_document(&self, uuid: &Uuid) {
        self.docs.lock().remove(uuid);
    }

    /// Checks the document a message came with: the one we hold (fast path), or a newer
    /// one for the same identity. A document older than ours is accepted only if it names
    /// the same identity key, so a retired (maybe stolen) key cannot speak for the sender.
    fn sender_document(&self, from: &Uuid, bytes: &[u8]) -> Result<SignedDocument, Reject> {
        let now = crate::unix_now();
        let held = self.known_document(from);
        if let Some(h) = &held {
            if h.bytes() == bytes {
                return Ok(h.clone());
            }
        }
        let doc = SignedDocument::decode_for(bytes, from, now).map_err(|e| match e {
            DocumentError::WrongUuid { .. } => Reject::SenderMismatch,
            e => Reject::BadSenderDocument(e.to_string()),
        })?;
        // Nothing is kept here: the message or frame it came with is not verified yet (see
        // `keep_sender_document`).
        if let Some(h) = &held {
            if doc.may_replace(h).is_err() && doc.doc().current_key != h.doc().current_key {
                return Err(Reject::StaleSenderKey);
            }
        }
        Ok(doc)
    }

    /// Keeps a sender's document once what it came with has verified: in memory, and on
    /// disk through the group writer (never a transaction of its own), when it is new and
    /// may replace the one held. `durable: false` keeps it in memory only.
    fn keep_sender_document(&self, doc: &SignedDocument, durable: bool) {
        let held = self.known_document(&doc.doc().uuid());
        let replaces = match &held {
            Some(h) if h.bytes() == doc.bytes() => return,
            Some(h) => doc.may_replace(h).is_ok(),
            None => true,
        };
        if !replaces {
            return;
        }
        self.remember_in_memory(doc);
        if durable {
            self.store
                .cache_document_behind(&self.writer, doc, crate::unix_now());
        }
    }
}

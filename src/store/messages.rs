//! Message tables: history (both directions), the outbox, inbound dedup, transfers of
//! attachments in progress, and contacts. Writes go through [`Writer`], which commits
//! everything queued at the same moment in one durable transaction (group commit): one
//! fsync for a burst of messages instead of one each, and still nothing is ACKed or
//! reported before it is on disk.

use std::sync::mpsc as std_mpsc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::cbor;

/// Conversation history: seq → [`HistoryEntry`]; seq grows with every stored message.
pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
/// Received messages by [`seen_key`] → history seq: the dedup index. The sender's
/// timestamp in the key keeps inserts near the end of each sender's range, so a burst
/// dirties a few pages rather than one per message.
pub(crate) const INBOX_SEEN: TableDefinition<&[u8; 40], u64> = TableDefinition::new("inbox_seen");
/// How sent messages ended, by history seq: `delivered`, `expired` or `failed:<reason>`.
/// Kept apart from the history row so recording an ACK writes a few bytes, not the message.
pub(crate) const SENT_STATUS: TableDefinition<u64, &str> = TableDefinition::new("sent_status");
/// Messages not yet delivered, by their history seq → [`OutboxEntry`].
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Received messages whose attachments are still arriving: [`seen_key`] → [`PendingIn`].
pub(crate) const PENDING_IN: TableDefinition<&[u8; 40], &[u8]> = TableDefinition::new("pending_in");
/// Contacts by name → [`Contact`].
pub(crate) const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");
/// Messages sent with an idempotency key: the key's digest → [`Idempotent`].
pub(crate) const IDEMPOTENT: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("idempotent");

/// A message sent with an idempotency key: which one it was, and a digest of what was
/// asked (a retry must ask the same).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotent {
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub msg_id: [u8; 16],
    #[serde(with = "serde_bytes")]
    pub request: [u8; 32],
}

/// What [`enqueue`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued, at this seq.
    New(u64),
    /// A message was sent with this idempotency key already; nothing was queued.
    Already(Idempotent),
}

/// Most jobs committed together.
const MAX_GROUP: usize = 512;
/// Capacity of the queue into the writer thread.
const WRITER_QUEUE: usize = 4096;
/// Largest stored row we decode.
const MAX_ROW_BYTES: usize = 1024 * 1024;

/// One stored attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttachment {
    pub name: String,
    pub mime: String,
    pub size: u64,
    /// Where the file is, under the node's home.
    pub path: String,
}

/// One message in the history, sent or received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(with = "serde_bytes")]
    pub msg_id: [u8; 16],
    pub incoming: bool,
    /// The other party.
    #[serde(with = "serde_bytes")]
    pub peer: [u8; 16],
    /// The sender's timestamp, ms since the epoch.
    pub ts: u64,
    pub text: String,
    pub attachments: Vec<StoredAttachment>,
    /// `received`, or for sent messages `queued`, `delivered`, `failed` or `expired`.
    pub status: String,
    /// Why a sent message failed (the NACK reason).
    pub detail: Option<String>,
    /// The channel a channel post belongs to (`peer` is then the channel id too, for a
    /// post we sent); absent for direct messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<serde_bytes::ByteArray<16>>,
}

/// A message waiting for its recipient's ACK.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxEntry {
    #[serde(with = "serde_bytes")]
    pub msg_id: [u8; 16],
    #[serde(with = "serde_bytes")]
    pub to: [u8; 16],
    /// The signed form (sealed afresh at every attempt, to the recipient's current key).
    #[serde(with = "serde_bytes")]
    pub signed: Vec<u8>,
    /// Our copies of the attachments, in envelope order.
    pub files: Vec<String>,
    /// When it was accepted, ms since the epoch.
    pub created_ms: u64,
    /// The mailbox relays (PeerIds) that receipted it. It is not deposited at those again,
    /// only at mailboxes the recipient names later, and retried directly until the
    /// recipient's ACK or delivery receipt.
    #[serde(default)]
    pub stored_at: Vec<String>,
}

/// A verified message whose attachments are still arriving.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingIn {
    /// The verified signed form.
    #[serde(with = "serde_bytes")]
    pub signed: Vec<u8>,
    pub received_ms: u64,
}

/// A contact: a name for a UUID and the key first seen for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(with = "serde_bytes")]
    pub uuid: [u8; 16],
    /// SHA-256 of the contact's genesis key (what `contacts verify` compares).
    #[serde(with = "serde_bytes")]
    pub fingerprint: [u8; 32],
    /// The identity key pinned when the contact was added (or last verified).
    #[serde(with = "serde_bytes")]
    pub pinned_key: [u8; 32],
    pub verified: bool,
    pub added: u64,
}

/// Encodes a row.
pub(crate) fn row<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    cbor::to_vec(v).map_err(|e| StoreError::Db(e.to_string()))
}

/// Decodes a row; an unreadable one is reported as corruption, never a panic.
pub(crate) fn unrow<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    cbor::from_slice(bytes, MAX_ROW_BYTES).map_err(|e| StoreError::Db(format!("bad row: {e}")))
}

/// The dedup key of a received message: sender ‖ sender's timestamp (big-endian ms) ‖
/// msg_id. All three are signed, so a retry or replay has the same key.
pub fn seen_key(from: &Uuid, ts: u64, msg_id: &Uuid) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(from.as_bytes());
    k[16..24].copy_from_slice(&ts.to_be_bytes());
    k[24..].copy_from_slice(msg_id.as_bytes());
    k
}

/// Whether the received message `key` ([`seen_key`]) is stored already.
pub fn seen(txn: &WriteTransaction, key: &[u8; 40]) -> Result<bool, StoreError> {
    Ok(txn.open_table(INBOX_SEEN)?.get(key)?.is_some())
}

/// Records the received message `key` as stored, at history `seq` (0: no history row, for
/// a key grant or a delivery receipt).
pub fn mark_seen(txn: &WriteTransaction, key: &[u8; 40], seq: u64) -> Result<(), StoreError> {
    txn.open_table(INBOX_SEEN)?.insert(key, seq)?;
    Ok(())
}

/// Stores a received message and marks it seen; its history seq.
pub fn accept_inbound(
    txn: &WriteTransaction,
    key: &[u8; 40],
    entry: &HistoryEntry,
) -> Result<u64, StoreError> {
    let seq = append_history(txn, entry)?;
    mark_seen(txn, key, seq)?;
    Ok(seq)
}

/// Whether the transfer `key` is in progress, within a write.
pub fn is_pending(txn: &WriteTransaction, key: &[u8; 40]) -> Result<bool, StoreError> {
    Ok(txn.open_table(PENDING_IN)?.get(key)?.is_some())
}

/// The keys of the transfers in progress, within a write.
pub fn pending_keys_in(txn: &WriteTransaction) -> Result<Vec<[u8; 40]>, StoreError> {
    let t = txn.open_table(PENDING_IN)?;
    let mut out = Vec::new();
    for r in t.iter()? {
        out.push(*r?.0.value());
    }
    Ok(out)
}

/// Starts a transfer: the verified signed form of its message, kept until it completes.
pub fn put_pending(
    txn: &WriteTransaction,
    key: &[u8; 40],
    p: &PendingIn,
) -> Result<(), StoreError> {
    txn.open_table(PENDING_IN)?
        .insert(key, row(p)?.as_slice())?;
    Ok(())
}

/// Ends a transfer (complete, dropped or evicted).
pub fn remove_pending(txn: &WriteTransaction, key: &[u8; 40]) -> Result<(), StoreError> {
    txn.open_table(PENDING_IN)?.remove(key)?;
    Ok(())
}

/// The UUIDs of our contacts, within a write.
pub fn contact_uuids(
    txn: &WriteTransaction,
) -> Result<std::collections::HashSet<[u8; 16]>, StoreError> {
    let mut out = std::collections::HashSet::new();
    for r in txn.open_table(CONTACTS)?.iter()? {
        let (_, v) = r?;
        out.insert(unrow::<Contact>(v.value())?.uuid);
    }
    Ok(out)
}

/// Outbox keys from here up are delivery receipts, which have no history row (history
/// positions stay far below).
pub const RECEIPT_SEQ_BASE: u64 = 1 << 63;

/// Puts a message in the outbox: with its history row (`history`, whose seq becomes its
/// outbox key), or a delivery receipt under the next key from [`RECEIPT_SEQ_BASE`] up.
/// Returns the key.
pub fn enqueue(
    txn: &WriteTransaction,
    history: Option<&HistoryEntry>,
    entry: &OutboxEntry,
    key: Option<(&[u8; 32], &[u8; 32])>,
) -> Result<Enqueued, StoreError> {
    if let Some((key, _)) = key {
        if let Some(held) = txn.open_table(IDEMPOTENT)?.get(key)? {
            return Ok(Enqueued::Already(unrow(held.value())?));
        }
    }
    let seq = match history {
        Some(h) => append_history(txn, h)?,
        None => match txn.open_table(OUTBOX)?.last()? {
            Some((k, _)) if k.value() >= RECEIPT_SEQ_BASE => k.value() + 1,
            _ => RECEIPT_SEQ_BASE,
        },
    };
    txn.open_table(OUTBOX)?
        .insert(seq, row(entry)?.as_slice())?;
    if let Some((key, request)) = key {
        let held = Idempotent {
            seq,
            msg_id: entry.msg_id,
            request: *request,
        };
        txn.open_table(IDEMPOTENT)?
            .insert(key, row(&held)?.as_slice())?;
    }
    Ok(Enqueued::New(seq))
}

/// Takes finished messages out of the outbox, each with the status its history row shows
/// (`delivered`, `expired`, `failed:<reason>`; a delivery receipt has no row to show it).
pub fn finish_outbox(txn: &WriteTransaction, done: &[(u64, String)]) -> Result<(), StoreError> {
    let mut outbox = txn.open_table(OUTBOX)?;
    let mut status = txn.open_table(SENT_STATUS)?;
    for (seq, s) in done {
        outbox.remove(*seq)?;
        if *seq < RECEIPT_SEQ_BASE {
            status.insert(*seq, s.as_str())?;
        }
    }
    Ok(())
}

/// Records that mailbox relays receipted these outbox entries (their `stored_at` updated),
/// for those still queued: an ACK may have finished one meanwhile.
pub fn mark_stored(txn: &WriteTransaction, rows: &[(u64, OutboxEntry)]) -> Result<(), StoreError> {
    let mut outbox = txn.open_table(OUTBOX)?;
    let mut status = txn.open_table(SENT_STATUS)?;
    for (seq, e) in rows {
        if outbox.get(*seq)?.is_some() {
            outbox.insert(*seq, row(e)?.as_slice())?;
            if *seq < RECEIPT_SEQ_BASE {
                status.insert(*seq, "stored")?;
            }
        }
    }
    Ok(())
}

/// Appends to the history inside a write transaction; returns the new seq.
pub fn append_history(txn: &WriteTransaction, entry: &HistoryEntry) -> Result<u64, StoreError> {
    let mut t = txn.open_table(HISTORY)?;
    let seq = match t.last()? {
        Some((k, _)) => k.value() + 1,
        None => 1,
    };
    t.insert(seq, row(entry)?.as_slice())?;
    Ok(seq)
}

/// Applies a recorded final status (`SENT_STATUS`) to a sent message's history entry.
fn apply_status(entry: &mut HistoryEntry, status: &str) {
    match status.split_once(':') {
        Some((s, detail)) => {
            entry.status = s.to_string();
            entry.detail = Some(detail.to_string());
        }
        None => entry.status = status.to_string(),
    }
}

impl Store {
    pub(crate) fn create_message_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
        txn.open_table(HISTORY)?;
        txn.open_table(INBOX_SEEN)?;
        txn.open_table(SENT_STATUS)?;
        txn.open_table(OUTBOX)?;
        txn.open_table(PENDING_IN)?;
        txn.open_table(CONTACTS)?;
        txn.open_table(IDEMPOTENT)?;
        Ok(())
    }

    /// The message sent with this idempotency key digest, if any, and its status now
    /// (`queued`, `stored`, `delivered`, `expired`, `failed:<reason>`).
    pub fn idempotent(&self, key: &[u8; 32]) -> Result<Option<(Idempotent, String)>, StoreError> {
        let tx = self.db.begin_read()?;
        let Some(held) = tx.open_table(IDEMPOTENT)?.get(key)? else {
            return Ok(None);
        };
        let held: Idempotent = unrow(held.value())?;
        let status = match tx.open_table(SENT_STATUS)?.get(held.seq)? {
            Some(s) => s.value().to_string(),
            None => "queued".to_string(),
        };
        Ok(Some((held, status)))
    }

    /// History entries with seq greater than `after`, oldest first, at most `limit`.
    pub fn history_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, HistoryEntry)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(HISTORY)?;
        let status = tx.open_table(SENT_STATUS)?;
        let mut out = Vec::new();
        for r in t.range(after.saturating_add(1)..)? {
            let (k, v) = r?;
            let mut entry: HistoryEntry = unrow(v.value())?;
            if !entry.incoming {
                if let Some(s) = status.get(k.value())? {
                    apply_status(&mut entry, s.value());
                }
            }
            out.push((k.value(), entry));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The history seq of a message, sent or received, by its id (a scan: it serves
    /// `recv --since`, not the message path).
    pub fn history_seq_of(&self, msg_id: &Uuid) -> Result<Option<u64>, StoreError> {
        let tx = self.db.begin_read()?;
        for r in tx.open_table(INBOX_SEEN)?.iter()? {
            let (k, v) = r?;
            // Seq 0 marks what was taken but has no history row (a receipt, a grant).
            if k.value()[24..] == msg_id.as_bytes()[..] && v.value() > 0 {
                return Ok(Some(v.value()));
            }
        }
        for r in tx.open_table(HISTORY)?.iter()? {
            let (k, v) = r?;
            let e: HistoryEntry = unrow(v.value())?;
            if e.msg_id == *msg_id.as_bytes() {
                return Ok(Some(k.value()));
            }
        }
        Ok(None)
    }

    /// The message `msg_id` whose sender is `from` (`me` for the ones we sent), with its
    /// status now. Ids are the sender's choice: another sender may use the same one, so a
    /// message is known by both (a scan: it serves the HTTP API's files).
    pub fn history_entry(
        &self,
        me: &Uuid,
        from: &Uuid,
        msg_id: &Uuid,
    ) -> Result<Option<HistoryEntry>, StoreError> {
        let tx = self.db.begin_read()?;
        let status = tx.open_table(SENT_STATUS)?;
        for r in tx.open_table(HISTORY)?.iter()? {
            let (k, v) = r?;
            let mut e: HistoryEntry = unrow(v.value())?;
            let sender = if e.incoming {
                Uuid::from_bytes(e.peer)
            } else {
                *me
            };
            if e.msg_id == *msg_id.as_bytes() && sender == *from {
                if !e.incoming {
                    if let Some(s) = status.get(k.value())? {
                        apply_status(&mut e, s.value());
                    }
                }
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Whether a message with this [`seen_key`] was already stored.
    pub fn inbox_seen(&self, key: &[u8; 40]) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(INBOX_SEEN)?.get(key)?.is_some())
    }

    /// Every undelivered message, oldest first.
    pub fn outbox(&self) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for r in t.iter()? {
            let (k, v) = r?;
            out.push((k.value(), unrow::<OutboxEntry>(v.value())?));
        }
        Ok(out)
    }

    /// How many of our messages wait in the outbox (delivery receipts not counted), and
    /// when the oldest was accepted (ms since the epoch). For the metrics.
    pub fn outbox_depth(&self) -> Result<(u64, Option<u64>), StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OUTBOX)?;
        let mut depth = 0u64;
        for r in t.range(..RECEIPT_SEQ_BASE)? {
            r?;
            depth += 1;
        }
        let oldest = match t.range(..RECEIPT_SEQ_BASE)?.next() {
            Some(r) => Some(unrow::<OutboxEntry>(r?.1.value())?.created_ms),
            None => None,
        };
        Ok((depth, oldest))
    }

    /// A transfer in progress.
    pub fn pending_in(&self, key: &[u8; 40]) -> Result<Option<PendingIn>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING_IN)?;
        t.get(key)?.map(|v| unrow(v.value())).transpose()
    }

    /// Whether the transfer `key` is in progress (its row stands).
    pub fn pending_exists(&self, key: &[u8; 40]) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING_IN)?;
        Ok(t.get(key)?.is_some())
    }

    /// The keys of the transfers in progress.
    pub fn pending_keys(&self) -> Result<Vec<[u8; 40]>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING_IN)?;
        let mut out = Vec::new();
        for r in t.iter()? {
            out.push(*r?.0.value());
        }
        Ok(out)
    }

    /// Every transfer in progress.
    pub fn pending_ins(&self) -> Result<Vec<([u8; 40], PendingIn)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING_IN)?;
        let mut out = Vec::new();
        for r in t.iter()? {
            let (k, v) = r?;
            out.push((*k.value(), unrow(v.value())?));
        }
        Ok(out)
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<(String, Contact)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CONTACTS)?;
        let mut out = Vec::new();
        for r in t.iter()? {
            let (k, v) = r?;
            out.push((k.value().to_string(), unrow(v.value())?));
        }
        Ok(out)
    }

    /// One contact.
    pub fn contact(&self, name: &str) -> Result<Option<Contact>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CONTACTS)?;
        t.get(name)?.map(|v| unrow(v.value())).transpose()
    }

    /// Adds or replaces a contact.
    pub fn put_contact(&self, name: &str, c: &Contact) -> Result<(), StoreError> {
        self.change_contact(name, |tx| {
            tx.open_table(CONTACTS)?.insert(name, row(c)?.as_slice())?;
            Ok((Some(c.clone()), ()))
        })
    }

    /// Removes a contact; returns whether it existed.
    pub fn remove_contact(&self, name: &str) -> Result<bool, StoreError> {
        self.change_contact(name, |tx| {
            let existed = tx.open_table(CONTACTS)?.remove(name)?.is_some();
            Ok((None, existed))
        })
    }

    /// Starts the group-commit writer thread for this database. The thread ends (and
    /// lets go of the database) when the last [`Writer`] is dropped.
    pub fn writer(&self) -> (Writer, Option<std::thread::JoinHandle<()>>) {
        let (tx, rx) = std_mpsc::sync_channel::<Box<dyn Job>>(WRITER_QUEUE);
        let db = self.db.clone();
        let commits = self.commits.clone();
        let spawned = std::thread::Builder::new()
            .name("ptpchat-store-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let outcome = (|| {
                        let txn = db.begin_write()?;
                        let mut failed = None;
                        for j in jobs.iter_mut() {
                            if let Err(e) = j.run(&txn) {
                                failed = Some(e);
                                break;
                            }
                        }
                        match failed {
                            // Never commit half of a job: the whole group is retried by its owners.
                            Some(e) => {
                                let _ = txn.abort();
                                Err(e)
                            }
                            None => {
                                commits.commit(txn)?;
                                Ok(())
                            }
                        }
                    })();
                    for j in jobs {
                        j.finish(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    }
                }
            });
        let handle = match spawned {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the store writer thread");
                None
            }
        };
        (Writer { tx }, handle)
    }
}

trait Job: Send {
    fn run(&mut self, txn: &WriteTransaction) -> Result<(), StoreError>;
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

/// A write nobody waits for; `done` runs when its group is over.
struct UnwatchedJob<F, D> {
    f: Option<F>,
    done: Option<D>,
}

impl<F, D> Job for UnwatchedJob<F, D>
where
    F: FnOnce(&WriteTransaction) -> Result<(), StoreError> + Send,
    D: FnOnce() + Send,
{
    fn run(&mut self, txn: &WriteTransaction) -> Result<(), StoreError> {
        match self.f.take() {
            Some(f) => f(txn),
            None => Ok(()),
        }
    }

    fn finish(self: Box<Self>, _committed: Result<(), String>) {
        if let Some(done) = self.done {
            done();
        }
    }
}

struct TypedJob<T, F> {
    f: Option<F>,
    result: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, txn: &WriteTransaction) -> Result<(), StoreError> {
        if let Some(f) = self.f.take() {
            self.result = Some(f(txn)?);
        }
        Ok(())
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let out = match (committed, self.result) {
            (Ok(()), Some(v)) => Ok(v),
            (Err(e), _) => Err(StoreError::Db(e)),
            (Ok(()), None) => Err(StoreError::Db("write was not run".into())),
        };
        let _ = self.reply.send(out);
    }
}

/// Handle to the writer thread; cheap to clone. The thread ends when the last handle drops.
#[derive(Clone)]
pub struct Writer {
    tx: std_mpsc::SyncSender<Box<dyn Job>>,
}

impl Writer {
    /// Queues `f` for the next group transaction and does not wait for it: for writes
    /// nobody is told about (a cache). Calls `done` on the writer thread once the group is
    /// over, committed or not. False when the queue is full: the write is dropped, and
    /// `done` is not called.
    pub fn submit_then<F, D>(&self, f: F, done: D) -> bool
    where
        F: FnOnce(&WriteTransaction) -> Result<(), StoreError> + Send + 'static,
        D: FnOnce() + Send + 'static,
    {
        let job: Box<dyn Job> = Box::new(UnwatchedJob {
            f: Some(f),
            done: Some(done),
        });
        self.tx.try_send(job).is_ok()
    }

    /// Runs `f` in the next group transaction and returns its result once that is durably
    /// committed. If any job in the group fails, nothing of the group is committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue(f).await?.committed().await
    }

    /// Queues `f` for the next group transaction, waiting only for room in the queue, and
    /// hands back what tells when it is durably committed. Jobs run in the order they are
    /// queued, so a caller that queues in order and waits elsewhere keeps its order without
    /// holding its own work up for the disk.
    pub async fn queue<T, F>(&self, f: F) -> Result<Queued<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(TypedJob {
            f: Some(f),
            result: None,
            reply,
        });
        // A full queue blocks briefly; the writer drains it in groups.
        let tx = self.tx.clone();
        let sent = match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(std_mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || tx.send(job))
                    .await
                    .map_err(|_| ())
                    .and_then(|r| r.map_err(|_| ()))
            }
            Err(std_mpsc::TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            return Err(StoreError::Db("the store writer has stopped".into()));
        }
        Ok(Queued { rx })
    }
}

/// A write queued with [`Writer::queue`], not yet known to be committed.
pub struct Queued<T> {
    rx: oneshot::Receiver<Result<T, StoreError>>,
}

impl<T> Queued<T> {
    /// The write's result once its group is durably committed.
    pub async fn committed(self) -> Result<T, StoreError> {
        self.rx
            .await
            .map_err(|_| StoreError::Db("the store writer has stopped".into()))?
    }
}

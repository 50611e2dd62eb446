//! The node's one database file, `<home>/ptpchat.redb` (redb: ACID, crash-safe; see
//! docs/decisions/0001-storage-redb.md). Every write commits durably before it returns,
//! so anything acknowledged to a peer or user survives `kill -9`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::shared::Shared;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use uuid::Uuid;

use crate::identity::{Identity, SignedDocument};

pub mod channels;
pub mod mailbox;
pub mod messages;

pub use channels::{ChannelRow, GrantOutcome};
pub use messages::{
    Contact, HistoryEntry, OutboxEntry, PendingIn, Queued, StoredAttachment, Writer,
};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
/// Verified identity documents seen on the network (whois cache, DHT record cache).
const DIRECTORY: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("directory");

const SCHEMA_VERSION: &[u8] = b"1";
/// redb's page cache. Its default (1 GiB) would let a relay's memory grow with the mail it
/// holds; this bounds it, and is far more than a user node's working set.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// File name of the database inside `<home>`.
pub const DB_FILE: &str = "ptpchat.redb";
/// Most documents kept in the directory cache; when full, documents for new UUIDs are not
/// cached (held ones are still updated), so a flood of identities cannot evict known ones.
pub const MAX_CACHED_DOCUMENTS: usize = 10_000;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("another ptpchat node is already using {0}")]
    InUse(PathBuf),
    #[error("database {path} is corrupt or not a ptpchat database: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Db(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    /// Bumped whenever contacts or channels change, so views that name senders and
    /// channels reload only then.
    names_generation: Arc<std::sync::atomic::AtomicU64>,
    /// Directory documents handed to a writer and not yet committed: readers see them at
    /// once (see [`Store::cache_document_behind`]). At most one per write in the queue.
    pending_docs: Arc<Shared<HashMap<[u8; 16], SignedDocument>>>,
    /// Every contact, in memory (see [`ContactBook`]).
    contacts: ContactBook,
    /// How long each commit took (`ptpchat_store_commit_seconds`).
    commits: CommitTimes,
}

/// Commit durations, in seconds: from 100 µs, doubling, to about 1.6 s.
#[derive(Clone)]
pub struct CommitTimes(prometheus_client::metrics::histogram::Histogram);

impl Default for CommitTimes {
    fn default() -> Self {
        CommitTimes(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 15),
        ))
    }
}

impl CommitTimes {
    /// Commits `tx` and records how long that took (only a commit that succeeded).
    pub(crate) fn commit(&self, tx: redb::WriteTransaction) -> Result<(), redb::CommitError> {
        let started = std::time::Instant::now();
        tx.commit()?;
        self.0.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The histogram, to register.
    pub fn histogram(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.0.clone()
    }
}

/// The contacts as of the last change, held in memory so that a decision taken on the
/// event loop (whether a CONNECT comes from a contact) reads no disk. Read at open; after
/// that each change applies itself here once it commits, so the book never disagrees
/// with the disk (a removed contact is gone from both, or from neither) and no disk read
/// is ever made under the lock the event loop takes.
#[derive(Clone, Default)]
pub struct ContactBook {
    /// The list, replaced whole: readers hold the lock for one `Arc` clone.
    now: Arc<Shared<Arc<Contacts>>>,
    /// Held by a change from before its commit until the book shows it, so changes land
    /// here in the order they commit. The event loop never takes it.
    changes: Arc<Shared<()>>,
}

/// Contacts by name, in name order.
type Contacts = Vec<(String, messages::Contact)>;

impl ContactBook {
    /// The first contact (by name) with this UUID, with its name.
    pub fn by_uuid(&self, uuid: &[u8; 16]) -> Option<(String, messages::Contact)> {
        let all = self.now.lock().clone();
        all.iter().find(|(_, c)| &c.uuid == uuid).cloned()
    }

    /// Sets (or with `None` removes) the contact `name`, keeping name order (the order
    /// of the table: bytes of the name).
    fn set(&self, name: &str, contact: Option<&messages::Contact>) {
        let mut all = Vec::clone(&self.now.lock());
        match (all.binary_search_by(|(n, _)| n.as_str().cmp(name)), contact) {
            (Ok(i), Some(c)) => all[i].1 = c.clone(),
            (Ok(i), None) => {
                all.remove(i);
            }
            (Err(i), Some(c)) => all.insert(i, (name.to_string(), c.clone())),
            (Err(_), None) => {}
        }
        *self.now.lock() = Arc::new(all);
    }
}

/// Caches `doc` in the directory table inside `tx` (see [`Store::cache_document`]).
pub(crate) fn cache_document_in(
    tx: &redb::WriteTransaction,
    doc: &SignedDocument,
    now: u64,
) -> Result<bool, StoreError> {
    let key = *doc.doc().uuid().as_bytes();
    let mut table = tx.open_table(DIRECTORY)?;
    let held = table.get(&key)?.map(|v| v.value().to_vec());
    let replace = match held.and_then(|b| SignedDocument::decode(&b, now).ok()) {
        Some(held) => doc.may_replace(&held).unwrap_or(false),
        None => true,
    };
    if replace {
        if table.len()? as usize >= MAX_CACHED_DOCUMENTS && table.get(&key)?.is_none() {
            return Ok(false);
        }
        table.insert(&key, doc.bytes())?;
    }
    Ok(replace)
}

impl Store {
    /// Its commit durations (for the metrics registry).
    pub fn commit_times(&self) -> &CommitTimes {
        &self.commits
    }

    /// Opens (creating if needed) the database in `home`. The file is made readable by the
    /// owner only, since it holds secret keys.
    pub fn open(home: &Path) -> Result<Store, StoreError> {
        let path = home.join(DB_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            // Create it 0600 before redb writes any key material into it.
            std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(io)?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let db = match redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse(home.to_path_buf()))
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(io(e))
            }
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path,
                    detail: e.to_string(),
                })
            }
        };
        let store = Store {
            db: Arc::new(db),
            path,
            names_generation: Arc::default(),
            commits: CommitTimes::default(),
            pending_docs: Arc::default(),
            contacts: ContactBook::default(),
        };
        store.check_schema()?;
        match store.contacts() {
            Ok(all) => *store.contacts.now.lock() = Arc::new(all),
            // Listing them will say what is wrong; CONNECTs meanwhile count as strangers'.
            Err(e) => tracing::warn!(error = %e, "could not read the contacts"),
        }
        Ok(store)
    }

    /// Changes whenever a contact or a channel is added, changed or removed.
    pub fn names_generation(&self) -> u64 {
        self.names_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The contacts in memory, kept current by [`Store::put_contact`] and
    /// [`Store::remove_contact`].
    pub fn contact_book(&self) -> ContactBook {
        self.contacts.clone()
    }

    /// Commits `change` to the contacts table, then applies the same change (`name` set
    /// to what `change` returns) to the [`ContactBook`], in commit order.
    pub(crate) fn change_contact<T>(
        &self,
        name: &str,
        change: impl FnOnce(
            &redb::WriteTransaction,
        ) -> Result<(Option<messages::Contact>, T), StoreError>,
    ) -> Result<T, StoreError> {
        let _in_order = self.contacts.changes.lock();
        let tx = self.db.begin_write()?;
        let (now, out) = change(&tx)?;
        self.commits.commit(tx)?;
        self.names_changed();
        self.contacts.set(name, now.as_ref());
        Ok(out)
    }

    pub(crate) fn names_changed(&self) {
        self.names_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let existing = meta.get("schema")?.map(|v| v.value().to_vec());
            match existing {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(v) => {
                    return Err(self.corrupt(format!(
                        "schema version {:?}, this ptpchat understands {:?}",
                        String::from_utf8_lossy(&v),
                        String::from_utf8_lossy(SCHEMA_VERSION)
                    )))
                }
            }
            tx.open_table(IDENTITY)?;
            tx.open_table(DIRECTORY)?;
            Store::create_message_tables(&tx)?;
            Store::create_channel_tables(&tx)?;
            Store::create_mail_tables(&tx)?;
        }
        self.commits.commit(tx)?;
        Ok(())
    }

    /// The stored identity, if one was created.
    pub fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(IDENTITY)?;
        let Some(v) = table.get("self")? else {
            return Ok(None);
        };
        Identity::from_bytes(v.value())
            .map(Some)
            .map_err(|e| self.corrupt(e.to_string()))
    }

    /// Writes the identity (after creation, rotation or a new document seq).
    pub fn save_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let bytes = id.to_bytes();
        let tx = self.db.begin_write()?;
        tx.open_table(IDENTITY)?.insert("self", bytes.as_slice())?;
        self.commits.commit(tx)?;
        Ok(())
    }

    /// The stored identity, creating and saving a new one if there is none.
    /// Returns whether it was created now.
    pub fn load_or_create_identity(&self, now: u64) -> Result<(Identity, bool), StoreError> {
        if let Some(id) = self.load_identity()? {
            return Ok((id, false));
        }
        let id = Identity::generate(now);
        self.save_identity(&id)?;
        Ok((id, true))
    }

    /// Keeps a verified document if it may replace the one held for its UUID.
    /// Returns whether it was new.
    pub fn cache_document(&self, doc: &SignedDocument, now: u64) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        let is_new = cache_document_in(&tx, doc, now)?;
        self.commits.commit(tx)?;
        Ok(is_new)
    }

    /// Caches `doc` through `writer` without waiting for the disk. Until the write is
    /// over, [`cached_document`](Self::cached_document) answers with `doc` where the write
    /// would replace what is held, so a reader never sees an older key than a lookup just
    /// returned. False (and nothing is cached) when the writer's queue is full.
    pub fn cache_document_behind(&self, writer: &Writer, doc: &SignedDocument, now: u64) -> bool {
        let key = *doc.doc().uuid().as_bytes();
        {
            let mut p = self.pending_docs.lock();
            // One queued before and newer stays: this write will not replace it either.
            if p.get(&key).is_none_or(|q| doc.may_replace(q) == Ok(true)) {
                p.insert(key, doc.clone());
            }
        }
        let settle = {
            let (pending, bytes) = (self.pending_docs.clone(), doc.bytes().to_vec());
            move || {
                let mut p = pending.lock();
                // A newer document for the same identity may have been queued since.
                if p.get(&key).is_some_and(|d| d.bytes() == bytes) {
                    p.remove(&key);
                }
            }
        };
        let d = doc.clone();
        let write = move |tx: &redb::WriteTransaction| cache_document_in(tx, &d, now).map(|_| ());
        let queued = writer.submit_then(write, settle.clone());
        if !queued {
            settle();
        }
        queued
    }

    /// The held document for `uuid`, re-verified (expired ones are not returned).
    pub fn cached_document(
        &self,
        uuid: &Uuid,
        now: u64,
    ) -> Result<Option<SignedDocument>, StoreError> {
        let pending = self
            .pending_docs
            .lock()
            .get(uuid.as_bytes())
            .cloned()
            .filter(|d| d.doc().expires > now);
        let held = {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(DIRECTORY)?;
            let v = table.get(uuid.as_bytes())?;
            v.and_then(|v| SignedDocument::decode_for(v.value(), uuid, now).ok())
        };
        Ok(match (pending, held) {
            (Some(p), Some(h)) if p.may_replace(&h) == Ok(true) => Some(p),
            (Some(p), None) => Some(p),
            (_, h) => h,
        })
    }

    /// Every held document that still verifies at `now` (to re-seed the DHT store after a
    /// restart). Expired or unreadable entries are removed.
    pub fn cached_documents(&self, now: u64) -> Result<Vec<SignedDocument>, StoreError> {
        let mut good = Vec::new();
        let mut stale = Vec::new();
        {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(DIRECTORY)?;
            for row in table.iter()? {
                let (k, v) = row?;
                match SignedDocument::decode_for(v.value(), &Uuid::from_bytes(*k.value()), now) {
                    Ok(d) => good.push(d),
                    Err(_) => stale.push(*k.value()),
                }
            }
        }
        if !stale.is_empty() {
            let tx = self.db.begin_write()?;
            {
                let mut table = tx.open_table(DIRECTORY)?;
                for k in &stale {
                    table.remove(k)?;
                }
            }
            self.commits.commit(tx)?;
        }
        Ok(good)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000;

    #[test]
    fn identity_survives_reopen_and_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let uuid = {
            let store = Store::open(dir.path()).unwrap();
            let (id, created) = store.load_or_create_identity(NOW).unwrap();
            assert!(created);
            id.uuid()
        };
        let store = Store::open(dir.path()).unwrap();
        let (id, created) = store.load_or_create_identity(NOW).unwrap();
        assert!(!created);
        assert_eq!(id.uuid(), uuid);
        let mode = std::fs::metadata(dir.path().join(DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn second_open_is_refused_while_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::InUse(_))));
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("garbage must not open");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn directory_cache_keeps_the_newest_valid_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut id = Identity::generate(NOW);
        let old = id.issue_document(&[], NOW);
        let new = id.issue_document(&[], NOW + 1);
        assert!(store.cache_document(&new, NOW + 1).unwrap());
        assert!(!store.cache_document(&old, NOW + 1).unwrap());
        let held = store.cached_document(&id.uuid(), NOW + 2).unwrap().unwrap();
        assert_eq!(held, new);
        assert_eq!(store.cached_documents(NOW + 2).unwrap().len(), 1);
        // Past expiry it is neither returned nor kept.
        let later = NOW + crate::identity::DOCUMENT_VALIDITY_SECS + 10;
        assert!(store.cached_document(&id.uuid(), later).unwrap().is_none());
        assert!(store.cached_documents(later).unwrap().is_empty());
    }

    /// The contacts the event loop sees (CONNECT consent) follow every change, from
    /// every handle of the store, and survive a reopen.
    #[test]
    fn the_contact_book_follows_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = |uuid: u8, verified| messages::Contact {
            uuid: [uuid; 16],
            fingerprint: [uuid; 32],
            pinned_key: [0; 32],
            verified,
            added: NOW,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            let book = store.contact_book();
            assert!(book.by_uuid(&[1; 16]).is_none());
            store.clone().put_contact("alice", &c(1, false)).unwrap();
            assert_eq!(book.by_uuid(&[1; 16]).unwrap().0, "alice");
            store.put_contact("alice", &c(1, true)).unwrap();
            assert!(book.by_uuid(&[1; 16]).unwrap().1.verified);
            store.put_contact("bob", &c(2, false)).unwrap();
            assert!(store.remove_contact("alice").unwrap());
            assert!(book.by_uuid(&[1; 16]).is_none(), "removed");
        }
        let store = Store::open(dir.path()).unwrap();
        let (name, bob) = store.contact_book().by_uuid(&[2; 16]).unwrap();
        assert_eq!((name.as_str(), bob.fingerprint), ("bob", [2; 32]));
    }

    /// A contact removed is no longer one on the event loop, even when another contact's
    /// row cannot be read (the book used to be re-read whole after each change, and one
    /// bad row kept every removed contact trusted); a reopen with the bad row trusts
    /// nobody rather than somebody removed.
    #[test]
    fn a_removed_contact_is_gone_even_beside_an_unreadable_row() {
        let dir = tempfile::tempdir().unwrap();
        let c = |uuid: u8| messages::Contact {
            uuid: [uuid; 16],
            fingerprint: [uuid; 32],
            pinned_key: [0; 32],
            verified: true,
            added: NOW,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_contact("alice", &c(1)).unwrap();
            store.put_contact("bob", &c(2)).unwrap();
            let tx = store.db.begin_write().unwrap();
            tx.open_table(messages::CONTACTS)
                .unwrap()
                .insert("bob", [0xff, 0x00].as_slice())
                .unwrap();
            tx.commit().unwrap();
            assert!(store.contacts().is_err(), "bob's row is unreadable");
            assert!(store.remove_contact("alice").unwrap());
            assert!(
                store.contact_book().by_uuid(&[1; 16]).is_none(),
                "alice is no contact of ours any more"
            );
            store.put_contact("carol", &c(3)).unwrap();
            assert_eq!(store.contact_book().by_uuid(&[3; 16]).unwrap().0, "carol");
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.contact_book().by_uuid(&[1; 16]).is_none());
        assert!(
            store.contact_book().by_uuid(&[3; 16]).is_none(),
            "fails closed"
        );
    }

    /// A document queued behind a slow write is what readers get at once; an older one
    /// queued later does not hide it; once the writes are over it is on disk.
    #[test]
    fn a_document_queued_for_the_disk_is_read_before_it_lands() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut id = Identity::generate(NOW);
        let old = id.issue_document(&[], NOW);
        let new = id.issue_document(&[], NOW + 1);
        assert!(store.cache_document(&old, NOW).unwrap());
        let (writer, thread) = store.writer();
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let blocked = move |_: &redb::WriteTransaction| {
            let _ = held.recv();
            Ok(())
        };
        assert!(writer.submit_then(blocked, || ()));
        assert!(store.cache_document_behind(&writer, &new, NOW + 1));
        assert!(store.cache_document_behind(&writer, &old, NOW + 1));
        let read = || store.cached_document(&id.uuid(), NOW + 2).unwrap().unwrap();
        assert_eq!(read(), new, "the queued newer document, before its commit");
        hold.send(()).unwrap();
        drop(writer);
        thread.unwrap().join().unwrap();
        assert!(store.pending_docs.lock().is_empty());
        assert_eq!(read(), new, "and from disk after it");
    }
}

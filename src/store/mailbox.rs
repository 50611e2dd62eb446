//! A relay's mailbox tables: sealed messages by mailbox id, their expiry index, and the
//! usage counts the quotas are checked against. Nothing else is stored: no sender, no
//! UUID, no address. Every function takes the time as an argument, so expiry is tested
//! with an injected clock.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{Store, StoreError};
use crate::wire::verbs::Nack;

/// Items: mailbox id ‖ item number (u64 big-endian) → stored time (u64 big-endian ms) ‖
/// the sealed message.
pub(crate) const MAIL: TableDefinition<&[u8; 40], &[u8]> = TableDefinition::new("mail");
/// Expiry index: stored time (ms, big-endian) ‖ mailbox id ‖ item number → length.
pub(crate) const MAIL_EXPIRY: TableDefinition<&[u8; 48], u64> = TableDefinition::new("mail_expiry");
/// Per mailbox: (items, bytes) held.
pub(crate) const MAIL_USAGE: TableDefinition<&[u8; 32], (u64, u64)> =
    TableDefinition::new("mail_usage");
/// `next` (the next item number), `items` and `bytes` (totals over every mailbox).
pub(crate) const MAIL_META: TableDefinition<&str, u64> = TableDefinition::new("mail_meta");

/// What a relay keeps and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailLimits {
    /// How long an item is kept, in ms.
    pub retention_ms: u64,
    /// Most items one mailbox holds…
    pub per_mailbox_items: u64,
    /// …and most bytes.
    pub per_mailbox_bytes: u64,
    /// Most bytes of sealed messages over all mailboxes (the disk cap).
    pub total_bytes: u64,
}

impl Default for MailLimits {
    fn default() -> Self {
        MailLimits {
            retention_ms: 7 * 24 * 3600 * 1000,
            per_mailbox_items: 4096,
            per_mailbox_bytes: 32 * 1024 * 1024,
            total_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Why one message was not stored: the NACK the sender gets.
pub type MailRefusal = Nack;

fn item_key(mailbox: &[u8; 32], n: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(mailbox);
    k[32..].copy_from_slice(&n.to_be_bytes());
    k
}

fn expiry_key(stored_ms: u64, mailbox: &[u8; 32], n: u64) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..8].copy_from_slice(&stored_ms.to_be_bytes());
    k[8..40].copy_from_slice(mailbox);
    k[40..].copy_from_slice(&n.to_be_bytes());
    k
}

fn meta(txn: &WriteTransaction, key: &str) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(MAIL_META)?
        .get(key)?
        .map(|v| v.value())
        .unwrap_or(0))
}

fn add_usage(
    txn: &WriteTransaction,
    mailbox: &[u8; 32],
    items: i64,
    bytes: i64,
) -> Result<(), StoreError> {
    let mut usage = txn.open_table(MAIL_USAGE)?;
    let (i, b) = usage.get(mailbox)?.map(|v| v.value()).unwrap_or((0, 0));
    let (i, b) = (
        i.saturating_add_signed(items),
        b.saturating_add_signed(bytes),
    );
    if i == 0 {
        usage.remove(mailbox)?;
    } else {
        usage.insert(mailbox, (i, b))?;
    }
    drop(usage);
    let mut m = txn.open_table(MAIL_META)?;
    let ti = m.get("items")?.map(|v| v.value()).unwrap_or(0);
    let tb = m.get("bytes")?.map(|v| v.value()).unwrap_or(0);
    m.insert("items", ti.saturating_add_signed(items))?;
    m.insert("bytes", tb.saturating_add_signed(bytes))?;
    Ok(())
}

/// Stores each sealed message in `mailbox` unless a quota refuses it; answers, per
/// message, when it expires (Unix seconds) or the refusal. Never removes anything.
pub fn deposit(
    txn: &WriteTransaction,
    mailbox: &[u8; 32],
    sealed: &[Vec<u8>],
    now_ms: u64,
    limits: &MailLimits,
) -> Result<Vec<Result<u64, MailRefusal>>, StoreError> {
    let mut out = Vec::with_capacity(sealed.len());
    for s in sealed {
        let len = s.len() as u64;
        let (items, bytes) = txn
            .open_table(MAIL_USAGE)?
            .get(mailbox)?
            .map(|v| v.value())
            .unwrap_or((0, 0));
        if items + 1 > limits.per_mailbox_items || bytes + len > limits.per_mailbox_bytes {
            out.push(Err(Nack::MailboxFull));
            continue;
        }
        if meta(txn, "bytes")? + len > limits.total_bytes {
            out.push(Err(Nack::RelayFull));
            continue;
        }
        let n = meta(txn, "next")?.max(1);
        txn.open_table(MAIL_META)?.insert("next", n + 1)?;
        let mut value = Vec::with_capacity(8 + s.len());
        value.extend_from_slice(&now_ms.to_be_bytes());
        value.extend_from_slice(s);
        txn.open_table(MAIL)?
            .insert(&item_key(mailbox, n), value.as_slice())?;
        txn.open_table(MAIL_EXPIRY)?
            .insert(&expiry_key(now_ms, mailbox, n), len)?;
        add_usage(txn, mailbox, 1, len as i64)?;
        out.push(Ok((now_ms + limits.retention_ms) / 1000));
    }
    Ok(out)
}

/// Splits a mail row into its storage time (ms, the first 8 bytes) and the sealed message.
/// A row too short to hold the time is corruption: an error, never a panic in the writer.
fn split_item(row: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    match row.split_first_chunk::<8>() {
        Some((ms, sealed)) => Ok((u64::from_be_bytes(*ms), sealed)),
        None => Err(StoreError::Db(format!(
            "mail row of {} bytes, shorter than its 8-byte time",
            row.len()
        ))),
    }
}

/// Deletes the items `ns` of `mailbox` (those that exist); returns how many it deleted.
pub fn ack(txn: &WriteTransaction, mailbox: &[u8; 32], ns: &[u64]) -> Result<u64, StoreError> {
    let mut deleted = 0;
    for n in ns {
        let removed = txn
            .open_table(MAIL)?
            .remove(&item_key(mailbox, *n))?
            .map(|v| v.value().to_vec());
        if let Some(v) = removed {
            let (stored_ms, sealed) = split_item(&v)?;
            txn.open_table(MAIL_EXPIRY)?
                .remove(&expiry_key(stored_ms, mailbox, *n))?;
            add_usage(txn, mailbox, -1, -(sealed.len() as i64))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Deletes up to `max` items stored before `now_ms - retention`; returns how many.
pub fn expire(
    txn: &WriteTransaction,
    now_ms: u64,
    limits: &MailLimits,
    max: usize,
) -> Result<u64, StoreError> {
    let cutoff = now_ms.saturating_sub(limits.retention_ms);
    let old: Vec<([u8; 48], u64)> = {
        let t = txn.open_table(MAIL_EXPIRY)?;
        let hi = expiry_key(cutoff, &[0u8; 32], 0);
        let mut v = Vec::new();
        for r in t.range::<&[u8; 48]>(..&hi)?.take(max) {
            let (k, len) = r?;
            v.push((*k.value(), len.value()));
        }
        v
    };
    for (k, len) in &old {
        let mut mailbox = [0u8; 32];
        mailbox.copy_from_slice(&k[8..40]);
        let n = u64::from_be_bytes(k[40..].try_into().unwrap_or_default());
        txn.open_table(MAIL_EXPIRY)?.remove(k)?;
        txn.open_table(MAIL)?.remove(&item_key(&mailbox, n))?;
        add_usage(txn, &mailbox, -1, -(*len as i64))?;
    }
    Ok(old.len() as u64)
}

/// A page of mail: (item number, sealed message) oldest first, and whether more follow.
pub type MailPage = (Vec<(u64, Vec<u8>)>, bool);

/// Totals over every mailbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailTotals {
    pub items: u64,
    pub bytes: u64,
    pub mailboxes: u64,
}

impl Store {
    pub(crate) fn create_mail_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
        txn.open_table(MAIL)?;
        txn.open_table(MAIL_EXPIRY)?;
        txn.open_table(MAIL_USAGE)?;
        txn.open_table(MAIL_META)?;
        Ok(())
    }

    /// The oldest items of `mailbox` not yet expired, up to the page limits; and whether
    /// more follow.
    pub fn mail_page(
        &self,
        mailbox: &[u8; 32],
        now_ms: u64,
        limits: &MailLimits,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<MailPage, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MAIL)?;
        let lo = item_key(mailbox, 0);
        let hi = item_key(mailbox, u64::MAX);
        let cutoff = now_ms.saturating_sub(limits.retention_ms);
        let mut items = Vec::new();
        let mut bytes = 0;
        for r in t.range::<&[u8; 40]>(&lo..=&hi)? {
            let (k, v) = r?;
            let v = v.value();
            // A damaged row is never handed out (nor can it be acknowledged); expiry
            // removes it.
            let Ok((stored_ms, sealed)) = split_item(v) else {
                continue;
            };
            if stored_ms < cutoff {
                continue;
            }
            if items.len() >= max_items || (!items.is_empty() && bytes + v.len() > max_bytes) {
                return Ok((items, true));
            }
            bytes += v.len();
            let n = u64::from_be_bytes(k.value()[32..].try_into().unwrap_or_default());
            items.push((n, sealed.to_vec()));
        }
        Ok((items, false))
    }

    /// What the relay holds in all.
    pub fn mail_totals(&self) -> Result<MailTotals, StoreError> {
        let tx = self.db.begin_read()?;
        let m = tx.open_table(MAIL_META)?;
        let get =
            |k: &str| -> Result<u64, StoreError> { Ok(m.get(k)?.map(|v| v.value()).unwrap_or(0)) };
        use redb::ReadableTableMetadata;
        Ok(MailTotals {
            items: get("items")?,
            bytes: get("bytes")?,
            mailboxes: tx.open_table(MAIL_USAGE)?.len()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    fn write<T>(store: &Store, f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>) -> T {
        let txn = store.db.begin_write().unwrap();
        let out = f(&txn).unwrap();
        txn.commit().unwrap();
        out
    }

    /// A damaged row (shorter than its 8-byte time) fails the acknowledgement with an
    /// error instead of panicking the store writer, and is skipped when paging.
    #[test]
    fn a_short_row_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let limits = MailLimits::default();
        let m = [5u8; 32];
        let t0 = 1_000 * DAY;
        write(&store, |t| {
            deposit(t, &m, &[vec![1; 10], vec![2; 10]], t0, &limits)
        });
        let (page, _) = store.mail_page(&m, t0, &limits, 10, 1 << 20).unwrap();
        let (bad, good) = (page[0].0, page[1].0);
        write(&store, |t| {
            t.open_table(MAIL)?
                .insert(&item_key(&m, bad), &[0u8; 3][..])?;
            Ok(())
        });

        let txn = store.db.begin_write().unwrap();
        let r = ack(&txn, &m, &[bad]);
        assert!(matches!(r, Err(StoreError::Db(_))), "{r:?}");
        drop(txn);
        let (page, _) = store.mail_page(&m, t0, &limits, 10, 1 << 20).unwrap();
        assert_eq!(page, [(good, vec![2; 10])]);
        assert_eq!(write(&store, |t| ack(t, &m, &[good])), 1);
    }

    #[test]
    fn quotas_refuse_without_evicting_and_expiry_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let limits = MailLimits {
            per_mailbox_items: 3,
            per_mailbox_bytes: 1000,
            total_bytes: 1500,
            ..MailLimits::default()
        };
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let t0 = 1_000 * DAY;
        {
            let store = Store::open(dir.path()).unwrap();
            let r = write(&store, |t| {
                deposit(
                    t,
                    &a,
                    &[vec![0; 10], vec![1; 10], vec![2; 10], vec![3; 10]],
                    t0,
                    &limits,
                )
            });
            assert_eq!(r[..3], [Ok((t0 + 7 * DAY) / 1000); 3]);
            assert_eq!(r[3], Err(Nack::MailboxFull));
            let r = write(&store, |t| {
                deposit(t, &b, &[vec![9; 990]], t0 + DAY, &limits)
            });
            assert!(r[0].is_ok());
            let r = write(&store, |t| {
                deposit(t, &[3; 32], &[vec![9; 500]], t0 + DAY, &limits)
            });
            assert_eq!(
                r[0],
                Err(Nack::RelayFull),
                "the disk cap refuses; nothing is evicted"
            );
            let (page, more) = store.mail_page(&a, t0, &limits, 2, 1 << 20).unwrap();
            assert_eq!(page.len(), 2);
            assert!(more);
            assert_eq!(page[0].1, vec![0; 10]);
            assert_eq!(write(&store, |t| ack(t, &a, &[page[0].0, 12345])), 1);
            assert_eq!(store.mail_totals().unwrap().items, 3);
        }
        // Reopened 7 days and a bit later: a's items (stored at t0) are gone, b's stay.
        let store = Store::open(dir.path()).unwrap();
        let now = t0 + 7 * DAY + 1;
        assert!(store
            .mail_page(&a, now, &limits, 64, 1 << 20)
            .unwrap()
            .0
            .is_empty());
        assert_eq!(write(&store, |t| expire(t, now, &limits, 100)), 2);
        let totals = store.mail_totals().unwrap();
        assert_eq!((totals.items, totals.bytes, totals.mailboxes), (1, 990, 1));
        assert_eq!(
            store
                .mail_page(&b, now, &limits, 64, 1 << 20)
                .unwrap()
                .0
                .len(),
            1
        );
    }
}

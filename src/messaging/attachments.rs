//! The receiving side of attachment transfers, carried out: the decisions (who gets a
//! slot, which chunk comes next, who is busy or idle, what a sweep drops) are made by
//! `Transfers` and `transfer_state` under the transfers lock; here the files are looked
//! at and cut back, each CHUNK opened, written and synced, a complete transfer moved into
//! a new directory, committed and ACKed, and the abandoned ones deleted.
//! MESSAGE itself is `inbound.rs`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libp2p::PeerId;
use tracing::{debug, warn};

use super::transfer_state::{expired, next_step, Need, Step};
use super::transfers::{Admit, OnChunk};
use super::{files, Inner};
use crate::counters::Counter;
use crate::store::messages::{self, seen_key};
use crate::store::{HistoryEntry, StoredAttachment};
use crate::wire::envelope::{self, Envelope};
use crate::wire::verbs::{Nack, Outcome, Response};

pub(super) fn one(outcome: Outcome) -> Response {
    Response::Outcomes {
        outcomes: vec![outcome],
    }
}

pub(super) fn outcome_nack(reason: Nack) -> Outcome {
    reason.into()
}

/// Decides, in the transaction that would store it, whether the transfer `key` gets a
/// slot among those `held` (`Transfers::take_slot`); an evicted transfer is forgotten
/// under the lock (its row goes in the same transaction, its files after the commit).
pub(super) fn take_slot(
    inner: &Inner,
    key: &[u8; 40],
    held: Vec<[u8; 40]>,
    contacts: &HashSet<[u8; 16]>,
    kept: &HashSet<[u8; 40]>,
    now: u64,
) -> Admit {
    inner
        .transfers
        .lock()
        .take_slot(key, held, contacts, kept, now)
}

/// Forgets a transfer whose row is gone (evicted), and deletes what had arrived of it.
pub(super) fn forget_transfer(inner: &Inner, key: &[u8; 40]) {
    inner.transfers.lock().forget(key);
    let _ = std::fs::remove_dir_all(partial_dir(inner, key));
}

pub(super) fn received_entry(env: &Envelope, attachments: Vec<StoredAttachment>) -> HistoryEntry {
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

/// Where a pending transfer stands on disk ([`next_step`]), doing what it says: a partial
/// chunk (a crash mid-write) is cut off, the empty file of an empty attachment created,
/// and each complete attachment from `verified` on checked against its hash. The next
/// chunk wanted (`None`: all complete and checked), and how many are checked.
fn progress(dir: &Path, env: &Envelope, mut verified: u32) -> Result<(Option<Need>, u32), Stall> {
    let path = |i: u32| dir.join(i.to_string());
    let sizes: Vec<u64> = env.attachments.iter().map(|a| a.size).collect();
    let mut lens: Vec<Option<u64>> = (0u32..)
        .take(sizes.len())
        .map(|i| std::fs::metadata(path(i)).ok().map(|m| m.len()))
        .collect();
    loop {
        match next_step(&sizes, &lens, verified) {
            Step::Ask { need, cut } => {
                if cut {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(path(need.attachment))?;
                    f.set_len(need.offset)?;
                }
                return Ok((Some(need), verified));
            }
            Step::Verify { attachment, create } => {
                let i = attachment as usize;
                if create {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(path(attachment))?;
                    if let Some(len) = lens.get_mut(i) {
                        *len = Some(0);
                    }
                }
                let signed = env.attachments.get(i).map(|a| a.sha256);
                if Some(files::hash_file(&path(attachment))?) != signed {
                    return Err(Stall::Mismatch(i));
                }
                verified = attachment + 1;
            }
            Step::Mismatch(i) => return Err(Stall::Mismatch(i as usize)),
            Step::Complete => return Ok((None, verified)),
        }
    }
}

fn busy() -> Outcome {
    outcome_nack(Nack::Busy)
}

/// Registers (or re-finds) the transfer for a pending message and says what to send next.
pub(super) async fn resume(inner: &Arc<Inner>, peer: PeerId, env: Envelope) -> Outcome {
    let key = seen_key(&env.from(), env.ts, &env.msg_id());
    let dir = partial_dir(inner, &key);
    if let Err(e) = files::private_dir(&dir) {
        warn!(error = %e, "cannot create a directory for an incoming attachment");
        return busy();
    }
    // Claimed while its files are looked at: no chunk is written meanwhile.
    let claimed = inner.transfers.lock().begin_resume(peer, &key, &env);
    let Some(verified) = claimed else {
        return busy();
    };
    let env2 = env.clone();
    let probed = tokio::task::spawn_blocking(move || progress(&dir, &env2, verified))
        .await
        .unwrap_or_else(|e| Err(Stall::Io(std::io::Error::other(e))));
    match probed {
        Ok((Some(need), verified)) => {
            let mut t = inner.transfers.lock();
            // Read under the lock an eviction forgets it under.
            let stored = inner.store.pending_exists(&key).unwrap_or(false);
            if !t.end_resume(peer, &key, &env, need, verified, stored) {
                drop(t);
                let _ = std::fs::remove_dir_all(partial_dir(inner, &key));
                return busy();
            }
            need.into()
        }
        Ok((None, _)) => complete(inner, key, env).await,
        Err(stall) => stalled(inner, key, stall).await,
    }
}

pub(super) async fn chunk(
    inner: &Arc<Inner>,
    peer: PeerId,
    msg_id: [u8; 16],
    attachment: u32,
    offset: u64,
    data: Vec<u8>,
) -> Response {
    let now = crate::unix_now_ms();
    let verdict = inner
        .transfers
        .lock()
        .on_chunk(peer, msg_id, attachment, offset, now);
    let claim = match verdict {
        OnChunk::Claimed(c) => c,
        OnChunk::Ask(need) => return one(need.into()),
        OnChunk::Busy => return one(busy()),
        OnChunk::Unknown => {
            inner.counters.count(Counter::ChunkUnknown);
            return one(outcome_nack(Nack::UnknownMessage));
        }
    };
    // From here on every way out clears the claim: by writing the chunk, by a stall, or,
    // should this task die or be dropped on the way, by the guard.
    let _claimed = ClaimGuard {
        inner,
        peer,
        msg_id,
        key: claim.key,
    };
    let plain = envelope::open_chunk(&claim.chunk_key, &msg_id, attachment, claim.index, &data);
    let plain = match plain {
        Ok(p) if claim.fits(p.len()) => p,
        _ => {
            inner.counters.count(Counter::ChunkInvalid);
            crate::warn_remote!("chunk_refused", %peer, "refused an attachment chunk that does not open or has the wrong size");
            drop_transfer(inner, claim.key).await;
            return one(outcome_nack(Nack::BadChunk));
        }
    };
    let key = claim.key;
    let dir = partial_dir(inner, &key);
    let env2 = claim.env.clone();
    let verified = claim.verified;
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
        progress(&dir, &env2, verified)
    })
    .await
    .unwrap_or_else(|e| Err(Stall::Io(std::io::Error::other(e))));
    match written {
        Ok((Some(need), verified)) => {
            inner
                .transfers
                .lock()
                .on_written(peer, msg_id, &key, need, verified);
            one(need.into())
        }
        Ok((None, _)) => one(complete(inner, key, claim.env).await),
        Err(stall) => one(stalled(inner, key, stall).await),
    }
}

/// Lets go of a chunk's claim however its task ends (see [`Transfers::release`]).
///
/// [`Transfers::release`]: super::transfers::Transfers::release
struct ClaimGuard<'a> {
    inner: &'a Inner,
    peer: PeerId,
    msg_id: [u8; 16],
    key: [u8; 40],
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        self.inner
            .transfers
            .lock()
            .release(self.peer, self.msg_id, &self.key);
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
            stall_in_memory(inner, &key);
            busy()
        }
    }
}

/// Forgets a transfer in memory only (`Transfers::on_stall`).
fn stall_in_memory(inner: &Inner, key: &[u8; 40]) {
    inner.transfers.lock().on_stall(key);
}

/// Every attachment is here and checked: move the files into place, then commit the
/// message to the history. Only then is it ACKed. If it cannot finish, the transfer is
/// forgotten in memory (no claim outlives it) and the sender tries again with MESSAGE.
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
            stall_in_memory(inner, &key);
            return busy();
        }
        Err(_) => {
            stall_in_memory(inner, &key);
            return busy();
        }
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
            stall_in_memory(inner, &key);
            busy()
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

/// Drops strangers' transfers idle for [`super::transfers::STRANGER_IDLE_LIMIT`] periods, and
/// whatever a transfer left behind without its row: progress times, a transfer in memory,
/// partial files.
pub(super) async fn sweep(inner: &Arc<Inner>) {
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
    let abandoned = inner.transfers.lock().sweep(keys, &contacts, now);
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
pub(super) fn cleanup(inner: &Inner) {
    let Ok(pending) = inner.store.pending_ins() else {
        return;
    };
    let now = crate::unix_now_ms();
    let received = pending.into_iter().map(|(key, p)| (key, p.received_ms));
    for key in expired(received, now) {
        let _ = std::fs::remove_dir_all(partial_dir(inner, &key));
        let writer = inner.writer.clone();
        tokio::spawn(async move {
            let _ = writer
                .write(move |txn| messages::remove_pending(txn, &key))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::AttachmentMeta;

    #[test]
    fn colliding_names_never_replace_one_another_nor_a_received_directory() {
        let home = tempfile::tempdir().unwrap();
        let partial = home.path().join("partial");
        std::fs::create_dir(&partial).unwrap();
        // Names that collide only once one of them is prefixed.
        let names = ["1-a", "a", "a", "a"];
        let attachments = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                std::fs::write(partial.join(i.to_string()), i.to_string()).unwrap();
                AttachmentMeta {
                    name: n.to_string(),
                    mime: "text/plain".into(),
                    size: 1,
                    sha256: [0; 32],
                    key: [0; 32],
                }
            })
            .collect();
        let env = Envelope {
            v: 1,
            msg_id: [7; 16],
            from: [1; 16],
            to: [2; 16],
            ts: 1,
            kind: "text".into(),
            body: String::new(),
            attachments,
        };
        let sender = home.path().join("sender");
        let dest = fresh_dir(&sender, "m").unwrap();
        let stored = move_into(&partial, &dest, &env).unwrap();
        let got: Vec<(String, String)> = stored
            .iter()
            .map(|a| (a.name.clone(), std::fs::read_to_string(&a.path).unwrap()))
            .collect();
        let want = [("1-a", "0"), ("a", "1"), ("2-a", "2"), ("3-a", "3")];
        assert_eq!(
            got,
            want.map(|(n, c)| (n.to_string(), c.to_string())).to_vec()
        );
        // The same msg_id again gets a directory of its own.
        assert_eq!(fresh_dir(&sender, "m").unwrap(), sender.join("m-1"));
    }
}

//! The receiving side of attachment transfers: who gets a transfer slot (the rules are in
//! [`super::transfers`]), where a transfer stands on disk, each CHUNK written and synced,
//! completion (files moved into a new directory, then the commit, then the ACK), and the
//! sweeps that drop abandoned and idle transfers. MESSAGE itself is `inbound.rs`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libp2p::PeerId;
use tracing::{debug, warn};

use super::transfers::{self, Admit, Transfer};
use super::{files, Inner};
use crate::counters::Counter;
use crate::store::messages::{self, seen_key};
use crate::store::{HistoryEntry, StoredAttachment};
use crate::wire::envelope::{self, Envelope, CHUNK_BYTES};
use crate::wire::verbs::{Nack, Outcome, Response};

/// A transfer not finished in this long is dropped (its sender gives up after 7 days).
const PENDING_RETENTION_MS: u64 = 8 * 24 * 3600 * 1000;

pub(super) fn one(outcome: Outcome) -> Response {
    Response::Outcomes {
        outcomes: vec![outcome],
    }
}

pub(super) fn outcome_nack(reason: Nack) -> Outcome {
    reason.into()
}

/// Decides, in the transaction that would store it, whether the transfer of `env` gets a
/// slot among those `held`; an evicted transfer is forgotten here (its row goes in the
/// same transaction, its files after the commit).
pub(super) fn take_slot(
    inner: &Inner,
    env: &Envelope,
    key: &[u8; 40],
    held: Vec<[u8; 40]>,
    contacts: &HashSet<[u8; 16]>,
    kept: &HashSet<[u8; 40]>,
    now: u64,
) -> Admit {
    // The same msg_id from the same sender twice at once (another timestamp) waits for
    // the first: a CHUNK names the message by msg_id alone.
    if held
        .iter()
        .any(|k| k[..16] == key[..16] && k[24..] == key[24..])
    {
        return Admit::Busy;
    }
    let Ok(mut t) = inner.transfers.lock() else {
        return Admit::Busy;
    };
    // A transfer answered in this transaction, or with a chunk being written, is in use.
    let slots = transfers::slots(held, contacts, |k| {
        if kept.contains(k) || t.live.values().any(|l| &l.key == k && l.busy) {
            now
        } else {
            t.last_active(k, inner.started_ms)
        }
    });
    let own = slots.iter().filter(|s| s.key[..16] == env.from).count();
    let admit = transfers::admit(
        &slots,
        contacts.contains(&env.from),
        own,
        now,
        inner.transfer_idle_ms,
    );
    if let Admit::Evict(victim) = admit {
        // Its sender's next CHUNK finds nothing and starts again (`unknown_message`).
        t.forget(&victim);
    }
    if admit != Admit::Busy {
        t.active.insert(*key, now);
    }
    admit
}

/// Forgets a transfer whose row is gone (evicted), and deletes what had arrived of it.
pub(super) fn forget_transfer(inner: &Inner, key: &[u8; 40]) {
    if let Ok(mut t) = inner.transfers.lock() {
        t.forget(key);
    }
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

/// Where a pending transfer stands: the next chunk wanted, or `None` when every
/// attachment is complete and checked. Partial chunks (a crash mid-write) are cut off.
fn next_need(dir: &Path, env: &Envelope, verified: &mut u32) -> Result<Option<(u32, u64)>, Stall> {
    for (i, a) in env.attachments.iter().enumerate() {
        let path = dir.join(i.to_string());
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < a.size {
            let aligned = len - len % CHUNK_BYTES as u64;
            if aligned != len {
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(aligned)?;
            }
            return Ok(Some((i as u32, aligned)));
        }
        if (i as u32) < *verified {
            continue;
        }
        if a.size == 0 && !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
        }
        if len > a.size || files::hash_file(&path)? != a.sha256 {
            return Err(Stall::Mismatch(i));
        }
        *verified = i as u32 + 1;
    }
    Ok(None)
}

/// Registers (or re-finds) the transfer for a pending message and says what to send next.
pub(super) async fn resume(inner: &Arc<Inner>, peer: PeerId, env: Envelope) -> Outcome {
    let key = seen_key(&env.from(), env.ts, &env.msg_id());
    let dir = partial_dir(inner, &key);
    if let Err(e) = files::private_dir(&dir) {
        warn!(error = %e, "cannot create a directory for an incoming attachment");
        return outcome_nack(Nack::Busy);
    }
    let mut verified = inner
        .transfers
        .lock()
        .ok()
        .and_then(|t| {
            t.live
                .get(&(peer, env.msg_id))
                .filter(|t| t.key == key)
                .map(|t| t.verified)
        })
        .unwrap_or(0);
    let env2 = env.clone();
    let need = tokio::task::spawn_blocking(move || {
        let r = next_need(&dir, &env2, &mut verified);
        (r, verified)
    })
    .await;
    let Ok((need, verified)) = need else {
        return outcome_nack(Nack::Busy);
    };
    match need {
        Ok(Some((attachment, offset))) => {
            let Ok(mut t) = inner.transfers.lock() else {
                return outcome_nack(Nack::Busy);
            };
            // Registered only while its row stands, checked under the lock an eviction
            // forgets it under: a transfer evicted or dropped meanwhile is not brought
            // back without a slot.
            if !inner.store.pending_exists(&key).unwrap_or(false) {
                drop(t);
                let _ = std::fs::remove_dir_all(partial_dir(inner, &key));
                return outcome_nack(Nack::Busy);
            }
            t.live.insert(
                (peer, env.msg_id),
                Transfer {
                    key,
                    env,
                    attachment,
                    offset,
                    verified,
                    busy: false,
                },
            );
            Outcome::Need { attachment, offset }
        }
        Ok(None) => complete(inner, key, env).await,
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
    let claimed = match inner.transfers.lock() {
        Ok(mut all) => match all.live.get_mut(&(peer, msg_id)) {
            Some(t) => {
                if t.busy {
                    return one(outcome_nack(Nack::Busy));
                }
                if (t.attachment, t.offset) != (attachment, offset) {
                    return one(Outcome::Need {
                        attachment: t.attachment,
                        offset: t.offset,
                    });
                }
                t.busy = true;
                let claimed = (t.key, t.env.clone(), t.verified);
                // A transfer with a chunk arriving is not idle.
                all.active.insert(claimed.0, crate::unix_now_ms());
                Some(claimed)
            }
            None => None,
        },
        Err(_) => None,
    };
    let Some((key, env, mut verified)) = claimed else {
        inner.counters.count(Counter::ChunkUnknown);
        return one(outcome_nack(Nack::UnknownMessage));
    };
    let Some(meta) = env.attachments.get(attachment as usize).cloned() else {
        return one(outcome_nack(Nack::BadChunk));
    };
    let want = (meta.size - offset).min(CHUNK_BYTES as u64) as usize;
    let plain = envelope::open_chunk(
        &meta.key,
        &msg_id,
        attachment,
        offset / CHUNK_BYTES as u64,
        &data,
    );
    let plain = match plain {
        Ok(p) if p.len() == want => p,
        _ => {
            inner.counters.count(Counter::ChunkInvalid);
            crate::warn_remote!("chunk_refused", %peer, "refused an attachment chunk that does not open or has the wrong size");
            drop_transfer(inner, key).await;
            return one(outcome_nack(Nack::BadChunk));
        }
    };
    let dir = partial_dir(inner, &key);
    let env2 = env.clone();
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
        next_need(&dir, &env2, &mut verified).map(|n| (n, verified))
    })
    .await
    .unwrap_or_else(|e| Err(Stall::Io(std::io::Error::other(e))));
    match written {
        Ok((Some((a, o)), verified)) => {
            if let Ok(mut t) = inner.transfers.lock() {
                if let Some(t) = t.live.get_mut(&(peer, msg_id)) {
                    t.attachment = a;
                    t.offset = o;
                    t.verified = verified;
                    t.busy = false;
                }
            }
            one(Outcome::Need {
                attachment: a,
                offset: o,
            })
        }
        Ok((None, _)) => one(complete(inner, key, env).await),
        Err(stall) => one(stalled(inner, key, stall).await),
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
            if let Ok(mut t) = inner.transfers.lock() {
                t.live.retain(|_, l| l.key != key);
            }
            outcome_nack(Nack::Busy)
        }
    }
}

/// Every attachment is here and checked: move the files into place, then commit the
/// message to the history. Only then is it ACKed.
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
            return outcome_nack(Nack::Busy);
        }
        Err(_) => return outcome_nack(Nack::Busy),
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
            outcome_nack(Nack::Busy)
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

/// Drops strangers' transfers idle for [`transfers::STRANGER_IDLE_LIMIT`] periods, and
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
    let idle = inner.transfer_idle_ms;
    let abandoned = {
        let Ok(mut t) = inner.transfers.lock() else {
            return;
        };
        // A transfer admitted a moment ago may not be committed yet: keep recent ones.
        t.active
            .retain(|k, at| held.contains(k) || now.saturating_sub(*at) < idle);
        let all = &mut *t;
        all.live
            .retain(|_, l| held.contains(&l.key) || all.active.contains_key(&l.key));
        let slots = transfers::slots(keys, &contacts, |k| t.last_active(k, inner.started_ms));
        transfers::abandoned(&slots, now, idle)
    };
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
    for (key, p) in pending {
        if p.received_ms.saturating_add(PENDING_RETENTION_MS) < now {
            let _ = std::fs::remove_dir_all(partial_dir(inner, &key));
            let writer = inner.writer.clone();
            tokio::spawn(async move {
                let _ = writer
                    .write(move |txn| messages::remove_pending(txn, &key))
                    .await;
            });
        }
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

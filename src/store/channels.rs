//! Channel tables: the channels we know (joined, invited to, or left), with a private
//! channel's current key epoch; and the ids of recent channel frames, so a frame replayed
//! after gossip forgot it is still recognised.

use std::collections::BTreeSet;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteArray;
use uuid::Uuid;

use super::messages::{row, unrow};
use super::{Store, StoreError};
use crate::wire::frame::KeyGrant;

/// Channels by id → [`ChannelRow`].
pub(crate) const CHANNELS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("channels");
/// Recent channel frames: msg_id → the frame's timestamp (ms), pruned after a while.
pub(crate) const CHANNEL_SEEN: TableDefinition<&[u8; 16], u64> =
    TableDefinition::new("channel_seen");

/// Recent channel posts as they were on the topic (signed, or sealed for a private
/// channel): channel id ‖ timestamp (ms, big-endian) ‖ msg_id → the bytes. What a member
/// who was away asks for (CHANNEL-HISTORY); pruned with [`CHANNEL_SEEN`].
pub(crate) const CHANNEL_FRAMES: TableDefinition<&[u8; 40], &[u8]> =
    TableDefinition::new("channel_frames");

/// A kept post: its cursor (its time, u64 big-endian ms, ‖ its msg_id) and its bytes as
/// they were on the topic.
pub type TimedFrame = ([u8; 24], Vec<u8>);

/// Most private channels one can be invited to without joining (invites from strangers
/// must not fill the disk).
pub const MAX_PENDING_INVITES: usize = 64;

/// A channel as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRow {
    pub name: String,
    pub private: bool,
    pub joined: bool,
    /// Who sent the key we hold (an invitation, or the last rotation).
    pub key_from: Option<ByteArray<16>>,
    /// The current key epoch (private channels; 0 for public ones).
    pub epoch: u32,
    pub key: Option<ByteArray<32>>,
    /// Who holds the current epoch's key, as far as we know (private channels).
    pub members: Vec<ByteArray<16>>,
    pub created_ms: u64,
    /// Who held the key of the epoch before this one: a holder who rotated to this same
    /// epoch at the same moment may have been removed by the key we took, and its grant
    /// still counts (see [`judge`]).
    #[serde(default)]
    pub prev_members: Vec<ByteArray<16>>,
}

/// What a received key grant did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantOutcome {
    /// We were invited (or re-invited) to a channel we have not joined.
    Invited,
    /// A channel we are in moved to a new key epoch.
    Rotated,
    /// Not applied, and why.
    Ignored(&'static str),
}

impl Store {
    pub(crate) fn create_channel_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
        txn.open_table(CHANNELS)?;
        txn.open_table(CHANNEL_SEEN)?;
        txn.open_table(CHANNEL_FRAMES)?;
        Ok(())
    }

    /// Posts of `channel` from `since_ms` on and, when `after` is given, after that cursor,
    /// oldest first, as they were on the topic: at most `max_frames` and `max_bytes` in
    /// all, with each one's cursor. True if more follow.
    pub fn channel_frames(
        &self,
        channel: &[u8; 16],
        since_ms: u64,
        after: Option<&[u8; 24]>,
        max_frames: usize,
        max_bytes: usize,
    ) -> Result<(Vec<TimedFrame>, bool), StoreError> {
        use std::ops::Bound;
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CHANNEL_FRAMES)?;
        let to = frame_key(channel, u64::MAX, &[0xff; 16]);
        let since = frame_key(channel, since_ms, &[0; 16]);
        let after = after.map(|c| {
            let mut k = since;
            k[16..].copy_from_slice(c);
            k
        });
        let from = match &after {
            Some(k) if *k >= since => Bound::Excluded(k),
            _ => Bound::Included(&since),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in t.range::<&[u8; 40]>((from, Bound::Included(&to)))? {
            let (k, v) = r?;
            let v = v.value();
            if out.len() >= max_frames || bytes + v.len() > max_bytes {
                return Ok((out, true));
            }
            bytes += v.len();
            let mut cursor = [0u8; 24];
            cursor.copy_from_slice(&k.value()[16..]);
            out.push((cursor, v.to_vec()));
        }
        Ok((out, false))
    }

    /// The timestamp of the newest post of `channel` we hold.
    pub fn newest_channel_frame(&self, channel: &[u8; 16]) -> Result<Option<u64>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CHANNEL_FRAMES)?;
        let (from, to) = (
            frame_key(channel, 0, &[0; 16]),
            frame_key(channel, u64::MAX, &[0xff; 16]),
        );
        let newest = t.range::<&[u8; 40]>(&from..=&to)?.next_back().transpose()?;
        Ok(newest.map(|(k, _)| frame_ts(k.value())))
    }

    /// Every channel we know.
    pub fn channels(&self) -> Result<Vec<(Uuid, ChannelRow)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CHANNELS)?;
        let mut out = Vec::new();
        for r in t.iter()? {
            let (k, v) = r?;
            out.push((Uuid::from_bytes(*k.value()), unrow(v.value())?));
        }
        Ok(out)
    }

    /// Adds or replaces a channel.
    pub fn put_channel(&self, id: &Uuid, c: &ChannelRow) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(CHANNELS)?
            .insert(id.as_bytes(), row(c)?.as_slice())?;
        self.commits.commit(tx)?;
        self.names_changed();
        Ok(())
    }

    /// Whether a channel frame with this id was seen recently.
    pub fn channel_seen(&self, msg_id: &[u8; 16]) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(CHANNEL_SEEN)?.get(msg_id)?.is_some())
    }

    /// Forgets frame ids with timestamps before `before_ms`; returns how many.
    pub fn prune_channel_seen(&self, before_ms: u64) -> Result<usize, StoreError> {
        let tx = self.db.begin_write()?;
        let removed = {
            let mut t = tx.open_table(CHANNEL_SEEN)?;
            let old: Vec<[u8; 16]> = t
                .iter()?
                .filter_map(|r| r.ok())
                .filter(|(_, ts)| ts.value() < before_ms)
                .map(|(k, _)| *k.value())
                .collect();
            for k in &old {
                t.remove(k)?;
            }
            let mut frames = tx.open_table(CHANNEL_FRAMES)?;
            frames.retain(|k, _| frame_ts(k) >= before_ms)?;
            old.len()
        };
        self.commits.commit(tx)?;
        Ok(removed)
    }
}

fn frame_key(channel: &[u8; 16], ts: u64, msg_id: &[u8; 16]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(channel);
    k[16..24].copy_from_slice(&ts.to_be_bytes());
    k[24..].copy_from_slice(msg_id);
    k
}

fn frame_ts(key: &[u8; 40]) -> u64 {
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&key[16..24]);
    u64::from_be_bytes(ts)
}

/// Keeps a post as it was on the topic, inside the transaction that stores it, so a member
/// who was away can ask for it.
pub fn keep_channel_frame(
    txn: &WriteTransaction,
    channel: &[u8; 16],
    ts: u64,
    msg_id: &[u8; 16],
    frame: &[u8],
) -> Result<(), StoreError> {
    txn.open_table(CHANNEL_FRAMES)?
        .insert(&frame_key(channel, ts, msg_id), frame)?;
    Ok(())
}

/// Records a frame id inside a write transaction; false if it was already there.
pub fn mark_channel_seen(
    txn: &WriteTransaction,
    msg_id: &[u8; 16],
    ts: u64,
) -> Result<bool, StoreError> {
    let mut t = txn.open_table(CHANNEL_SEEN)?;
    if t.get(msg_id)?.is_some() {
        return Ok(false);
    }
    t.insert(msg_id, ts)?;
    Ok(true)
}

/// How far past the epoch we hold a member may move a channel: room for rotations missed
/// while away, too little for a hostile member to use up the epoch space (it would take
/// 2^28 grants, each a signed direct message) or to wrap it.
pub const EPOCH_WINDOW: u32 = 16;

/// What to do with a grant from a current key holder of a channel we are in.
enum Verdict {
    /// Take its key and members.
    Take,
    /// Two holders rotated to the same epoch with different members: both removals stand.
    Merge,
    Keep(&'static str),
}

/// Judges a grant from a current holder against the key we hold.
///
/// Newer epochs win only inside [`EPOCH_WINDOW`]. At the same epoch with another key (two
/// holders rotated at once) nothing the sender controls decides: a grant that removes
/// someone we still list wins over one that does not, two different removals are merged
/// (see [`merged`]), and only between equal member lists, where winning gains nothing, does
/// the lower key win.
fn judge(held: &ChannelRow, grant: &KeyGrant) -> Verdict {
    if grant.epoch > held.epoch {
        return if grant.epoch - held.epoch <= EPOCH_WINDOW {
            Verdict::Take
        } else {
            Verdict::Keep("too far ahead of the key held")
        };
    }
    if grant.epoch < held.epoch || held.key.as_deref() == Some(&grant.key) {
        return Verdict::Keep("not newer than the key held");
    }
    let ours: BTreeSet<[u8; 16]> = held.members.iter().map(|m| **m).collect();
    let theirs: BTreeSet<[u8; 16]> = grant.members.iter().map(|m| **m).collect();
    if ours == theirs {
        return match held.key.as_deref() {
            Some(k) if grant.key >= *k => Verdict::Keep("lost the tie to the key held"),
            _ => Verdict::Take,
        };
    }
    if theirs.is_subset(&ours) {
        Verdict::Take
    } else if ours.is_subset(&theirs) {
        Verdict::Keep("the key held removes more members")
    } else {
        Verdict::Merge
    }
}

/// Two holders moved the channel to the same epoch, each without someone the other kept:
/// every node that holds both keys moves to the next epoch, with the members both kept
/// and a key derived from both. Whoever was left out by either grant lacks that grant's key
/// and cannot derive the new one; no message is needed, so no node rotates again for it.
fn merged(held: &ChannelRow, grant: &KeyGrant) -> Option<ChannelRow> {
    use hkdf::Hkdf;
    use sha2::Sha256;
    let a = held.key.as_deref()?;
    let epoch = held.epoch.checked_add(1)?;
    let (lo, hi) = if *a < grant.key {
        (a, &grant.key)
    } else {
        (&grant.key, a)
    };
    let ikm = [lo.as_slice(), hi.as_slice()].concat();
    let info = [grant.channel.as_slice(), &epoch.to_be_bytes()].concat();
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"ptpchat channel key merge v1"), &ikm)
        .expand(&info, &mut key)
        .ok()?;
    let theirs: BTreeSet<[u8; 16]> = grant.members.iter().map(|m| **m).collect();
    let mut row = held.clone();
    row.members.retain(|m| theirs.contains(&**m));
    row.prev_members.clone_from(&held.members);
    row.epoch = epoch;
    row.key = Some(ByteArray::new(key));
    row.key_from = None;
    Some(row)
}

/// Applies a key grant from `from` inside the transaction that records the direct message
/// carrying it, so the grant is durable before it is ACKed. What it does is
/// [`decide_grant`]'s.
pub fn apply_grant(
    txn: &WriteTransaction,
    from: &[u8; 16],
    grant: &KeyGrant,
    now_ms: u64,
) -> Result<GrantOutcome, StoreError> {
    let mut t = txn.open_table(CHANNELS)?;
    let held: Option<ChannelRow> = t
        .get(&grant.channel)?
        .map(|v| unrow(v.value()))
        .transpose()?;
    // Only an invitation to a channel we know nothing of takes a new row.
    let pending = match held {
        Some(_) => 0,
        None => t
            .iter()?
            .filter_map(|r| r.ok())
            .filter_map(|(_, v)| unrow::<ChannelRow>(v.value()).ok())
            .filter(|c| !c.joined && c.key.is_some())
            .count(),
    };
    match decide_grant(held, from, grant, now_ms, pending) {
        Ok((new_row, outcome)) => {
            t.insert(&grant.channel, row(&new_row)?.as_slice())?;
            Ok(outcome)
        }
        Err(why) => Ok(GrantOutcome::Ignored(why)),
    }
}

/// What a key grant from `from` does to `held`, our row of its channel (if any), given the
/// `pending` invitations we hold: the row to write and what it did, or why it is ignored.
///
/// - For a private channel we are in, only a current key holder may move it, to an epoch
///   inside [`EPOCH_WINDOW`]; ties are judged by [`judge`].
/// - Otherwise the grant is an invitation, kept (boundedly) until the user joins.
pub fn decide_grant(
    held: Option<ChannelRow>,
    from: &[u8; 16],
    grant: &KeyGrant,
    now_ms: u64,
    pending: usize,
) -> Result<(ChannelRow, GrantOutcome), &'static str> {
    let members = grant.members.clone();
    let fresh = |name: &str| ChannelRow {
        name: name.to_string(),
        private: true,
        joined: false,
        key_from: Some(ByteArray::new(*from)),
        epoch: grant.epoch,
        key: Some(ByteArray::new(grant.key)),
        members: members.clone(),
        created_ms: now_ms,
        prev_members: Vec::new(),
    };
    match held {
        Some(c) if !c.private => Err("public channel"),
        Some(c) if c.joined => {
            let holds = |list: &[ByteArray<16>]| list.iter().any(|m| **m == *from);
            let tie = grant.epoch == c.epoch;
            let current = holds(&c.members);
            let previous = tie && holds(&c.prev_members);
            if !current && !previous {
                return Err("sender holds no key of this channel");
            }
            // A holder of the epoch before, no longer listed (perhaps removed by the key we
            // took), never hands us a key it alone knows: at most its removals merge in.
            let verdict = match judge(&c, grant) {
                Verdict::Take if !current => Verdict::Merge,
                v => v,
            };
            match verdict {
                Verdict::Keep(why) => Err(why),
                Verdict::Merge => merged(&c, grant)
                    .map(|m| (m, GrantOutcome::Rotated))
                    .ok_or("no epoch left to merge into"),
                Verdict::Take => {
                    let mut c = c;
                    if !tie {
                        c.prev_members = std::mem::take(&mut c.members);
                    }
                    c.epoch = grant.epoch;
                    c.key = Some(ByteArray::new(grant.key));
                    c.key_from = Some(ByteArray::new(*from));
                    c.members = members;
                    Ok((c, GrantOutcome::Rotated))
                }
            }
        }
        // A pending invitation is replaced only by one of the holders it names (a newer
        // key from the same group), so a stranger who learns the id cannot swap it.
        Some(c) if c.key.is_some() && !c.members.iter().any(|m| **m == *from) => {
            Err("already invited by other members")
        }
        Some(c) if c.key.is_some() && grant.epoch < c.epoch => {
            Err("older than the pending invitation")
        }
        Some(c) => Ok((fresh(&c.name), GrantOutcome::Invited)),
        None if pending >= MAX_PENDING_INVITES => Err("too many pending invitations"),
        None => Ok((fresh(&grant.name), GrantOutcome::Invited)),
    }
}

#[cfg(test)]
mod tests;

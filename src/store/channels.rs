//! Channel tables: the channels we know (joined, invited to, or left), with a private
//! channel's current key epoch; and the ids of recent channel frames, so a frame replayed
//! after gossip forgot it is still recognised.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteArray;
use uuid::Uuid;

use super::messages::{row, unrow};
use super::{Store, StoreError};
use crate::channels::frame::KeyGrant;

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
        tx.commit()?;
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
        tx.commit()?;
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

/// Applies a key grant from `from` inside the transaction that records the direct message
/// carrying it, so the grant is durable before it is ACKed.
///
/// - For a private channel we are in, only a current key holder may move it to a newer
///   epoch; two holders rotating to the same epoch at once resolve to the lower UUID's key.
/// - Otherwise the grant is an invitation, kept (boundedly) until the user joins.
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
    };
    let (new_row, outcome) = match held {
        Some(c) if !c.private => return Ok(GrantOutcome::Ignored("public channel")),
        Some(c) if c.joined => {
            if !c.members.iter().any(|m| **m == *from) {
                return Ok(GrantOutcome::Ignored("sender holds no key of this channel"));
            }
            let newer = grant.epoch > c.epoch;
            let tie_won = grant.epoch == c.epoch
                && c.key.as_deref() != Some(&grant.key)
                && c.key_from.as_deref().is_none_or(|k| from < k);
            if !newer && !tie_won {
                return Ok(GrantOutcome::Ignored("not newer than the key held"));
            }
            let mut c = c;
            c.epoch = grant.epoch;
            c.key = Some(ByteArray::new(grant.key));
            c.key_from = Some(ByteArray::new(*from));
            c.members = members;
            (c, GrantOutcome::Rotated)
        }
        // A pending invitation is replaced only by one of the holders it names (a newer
        // key from the same group), so a stranger who learns the id cannot swap it.
        Some(c) if c.key.is_some() && !c.members.iter().any(|m| **m == *from) => {
            return Ok(GrantOutcome::Ignored("already invited by other members"))
        }
        Some(c) if c.key.is_some() && grant.epoch < c.epoch => {
            return Ok(GrantOutcome::Ignored("older than the pending invitation"))
        }
        Some(c) => (fresh(&c.name), GrantOutcome::Invited),
        None => {
            let pending = t
                .iter()?
                .filter_map(|r| r.ok())
                .filter_map(|(_, v)| unrow::<ChannelRow>(v.value()).ok())
                .filter(|c| !c.joined && c.key.is_some())
                .count();
            if pending >= MAX_PENDING_INVITES {
                return Ok(GrantOutcome::Ignored("too many pending invitations"));
            }
            (fresh(&grant.name), GrantOutcome::Invited)
        }
    };
    t.insert(&grant.channel, row(&new_row)?.as_slice())?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: [u8; 16] = [0; 16];
    const ALICE: [u8; 16] = [1; 16];
    const ME: [u8; 16] = [5; 16];
    const MALLORY: [u8; 16] = [9; 16];
    const CH: [u8; 16] = [7; 16];

    fn grant(epoch: u32, key: u8, members: &[[u8; 16]]) -> KeyGrant {
        KeyGrant {
            v: 1,
            channel: CH,
            name: "ops".into(),
            epoch,
            key: [key; 32],
            members: members.iter().map(|m| ByteArray::new(*m)).collect(),
        }
    }

    fn apply(store: &Store, from: [u8; 16], g: &KeyGrant) -> GrantOutcome {
        let tx = store.db.begin_write().unwrap();
        let outcome = apply_grant(&tx, &from, g, 0).unwrap();
        tx.commit().unwrap();
        outcome
    }

    fn held(store: &Store) -> (bool, u32, u8) {
        let (_, c) = store.channels().unwrap().into_iter().next().unwrap();
        (c.joined, c.epoch, c.key.map_or(0, |k| k[0]))
    }

    /// Pages of kept posts follow the cursor, so posts sharing one timestamp (a sender
    /// chooses its own) cannot stall paging; other channels' posts never appear; pruning
    /// goes by the post's time.
    #[test]
    fn kept_posts_page_by_cursor_and_are_pruned_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tx = store.db.begin_write().unwrap();
        for i in 0..5u8 {
            keep_channel_frame(&tx, &CH, 1_000, &[i; 16], &[i]).unwrap();
        }
        keep_channel_frame(&tx, &CH, 2_000, &[9; 16], &[9]).unwrap();
        keep_channel_frame(&tx, &ALICE, 1_500, &[7; 16], &[7]).unwrap();
        tx.commit().unwrap();

        let mut got = Vec::new();
        let mut after: Option<[u8; 24]> = None;
        loop {
            let (page, more) = store
                .channel_frames(&CH, 1_000, after.as_ref(), 2, 1 << 20)
                .unwrap();
            assert!(page.len() <= 2);
            got.extend(page.iter().map(|(_, f)| f[0]));
            after = page.last().map(|(c, _)| *c);
            if !more {
                break;
            }
        }
        assert_eq!(got, [0, 1, 2, 3, 4, 9], "each post once, oldest first");
        assert_eq!(store.newest_channel_frame(&CH).unwrap(), Some(2_000));
        let (late, _) = store.channel_frames(&CH, 1_001, None, 10, 1 << 20).unwrap();
        assert_eq!(late.len(), 1);
        // A cursor older than `since` does not reach back past it.
        let old_cursor = [[0u8; 8], [0; 8], [0; 8]].concat().try_into().unwrap();
        let (late, _) = store
            .channel_frames(&CH, 1_001, Some(&old_cursor), 10, 1 << 20)
            .unwrap();
        assert_eq!(late.len(), 1);
        // A byte budget smaller than one frame gives an empty page that says more follow.
        assert_eq!(
            store.channel_frames(&CH, 0, None, 10, 0).unwrap(),
            (vec![], true)
        );

        store.prune_channel_seen(1_600).unwrap();
        let (left, _) = store.channel_frames(&CH, 0, None, 10, 1 << 20).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(store.newest_channel_frame(&ALICE).unwrap(), None);
    }

    #[test]
    fn invitations_and_rotations_are_taken_only_from_key_holders() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();

        // An invitation is kept; a stranger cannot swap its key, one of its holders can.
        assert_eq!(
            apply(&store, ALICE, &grant(1, 1, &[ALICE, ME])),
            GrantOutcome::Invited
        );
        assert!(matches!(
            apply(&store, MALLORY, &grant(5, 9, &[MALLORY, ME])),
            GrantOutcome::Ignored(_)
        ));
        assert_eq!(held(&store), (false, 1, 1));
        assert_eq!(
            apply(&store, ALICE, &grant(2, 2, &[ZERO, ALICE, ME])),
            GrantOutcome::Invited
        );
        assert_eq!(held(&store), (false, 2, 2));

        // Joined: only a holder moves the key, and only forward.
        let id = Uuid::from_bytes(CH);
        let (_, mut row) = store.channels().unwrap().into_iter().next().unwrap();
        row.joined = true;
        store.put_channel(&id, &row).unwrap();
        assert!(matches!(
            apply(&store, MALLORY, &grant(3, 9, &[MALLORY, ME])),
            GrantOutcome::Ignored(_)
        ));
        assert!(matches!(
            apply(&store, ALICE, &grant(1, 4, &[ALICE, ME])),
            GrantOutcome::Ignored(_)
        ));
        assert_eq!(
            apply(&store, ALICE, &grant(3, 3, &[ZERO, ALICE, ME])),
            GrantOutcome::Rotated
        );
        assert_eq!(held(&store), (true, 3, 3));

        // Two holders rotating to the same epoch at once: the lower UUID's key wins, in
        // whichever order the two grants arrive.
        assert_eq!(
            apply(&store, ZERO, &grant(3, 6, &[ZERO, ALICE, ME])),
            GrantOutcome::Rotated
        );
        assert!(matches!(
            apply(&store, ALICE, &grant(3, 7, &[ZERO, ALICE, ME])),
            GrantOutcome::Ignored(_)
        ));
        assert_eq!(held(&store), (true, 3, 6));

        // The public channel case: a grant never turns a public channel private.
        row.private = false;
        row.key = None;
        store.put_channel(&id, &row).unwrap();
        assert!(matches!(
            apply(&store, ZERO, &grant(9, 9, &[ZERO, ME])),
            GrantOutcome::Ignored(_)
        ));
    }
}

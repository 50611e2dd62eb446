//! Who is in a channel and who holds its key, as pure rules over a [`ChannelRow`]: creating,
//! joining and leaving, who may invite or remove whom, the next key epoch, who rotates the
//! key after a leave ([`keeper`]), and the members counted. No IO, no store, no clock of its
//! own: the service hands in the row, the time and fresh keys, and carries out the result.
//!
//! Which received KEY grants are taken is decided in the store
//! ([`crate::store::channels::decide_grant`]), inside the messenger's write transaction; the
//! tests below drive it too, since it is the other half of the epoch rules.

use std::collections::{HashMap, HashSet};

use serde_bytes::ByteArray;
use uuid::Uuid;

use super::{fail, ChannelError};
use crate::error::ErrorKind;
use crate::store::ChannelRow;
use crate::wire::frame::{self, KeyGrant};

/// Members listed per channel.
pub const MAX_MEMBERS_HEARD: usize = 1024;

/// Members heard from lately (JOIN, CHANNEL, posts), by channel, with when (ms).
#[derive(Default)]
pub struct Heard(HashMap<Uuid, HashMap<Uuid, u64>>);

impl Heard {
    /// `member` was heard on `channel` at `now_ms` (a full list takes no one new).
    pub fn hear(&mut self, channel: Uuid, member: Uuid, now_ms: u64) {
        let heard = self.0.entry(channel).or_default();
        if heard.len() < MAX_MEMBERS_HEARD || heard.contains_key(&member) {
            heard.insert(member, now_ms);
        }
    }

    /// `member` left `channel`, or was removed from it.
    pub fn forget(&mut self, channel: &Uuid, member: &Uuid) {
        if let Some(h) = self.0.get_mut(channel) {
            h.remove(member);
        }
    }

    /// We left `channel`.
    pub fn forget_channel(&mut self, channel: &Uuid) {
        self.0.remove(channel);
    }

    /// Forgets members not heard from in the last `quiet_ms`.
    pub fn forget_quiet(&mut self, now_ms: u64, quiet_ms: u64) {
        for h in self.0.values_mut() {
            h.retain(|_, t| now_ms.saturating_sub(*t) < quiet_ms);
        }
    }

    /// The members of `channel` heard from lately.
    pub fn of(&self, channel: &Uuid) -> impl Iterator<Item = Uuid> + '_ {
        self.0
            .get(channel)
            .into_iter()
            .flat_map(|h| h.keys().copied())
    }
}

/// How many members `channel list` shows: those heard from lately and, for a channel we are
/// in, everyone the row lists as holding the key.
pub fn member_count(heard: &Heard, id: &Uuid, row: &ChannelRow) -> usize {
    let mut set: HashSet<[u8; 16]> = heard.of(id).map(|u| *u.as_bytes()).collect();
    if row.joined {
        set.extend(row.members.iter().map(|m| **m));
    }
    set.len()
}

fn is_member(row: &ChannelRow, who: &Uuid) -> bool {
    row.members.iter().any(|m| **m == *who.as_bytes())
}

/// A channel we create: joined, and for a private one `key` at epoch 1 with us the only
/// member (and the one it came from).
pub fn created(name: &str, me: Uuid, key: Option<[u8; 32]>, now_ms: u64) -> ChannelRow {
    let private = key.is_some();
    ChannelRow {
        name: name.to_string(),
        private,
        joined: true,
        key_from: private.then(|| ByteArray::new(*me.as_bytes())),
        epoch: u32::from(private),
        key: key.map(ByteArray::new),
        members: vec![ByteArray::new(*me.as_bytes())],
        created_ms: now_ms,
        prev_members: Vec::new(),
    }
}

/// The row of a public channel we join having only heard it announced.
pub fn discovered(name: String, now_ms: u64) -> ChannelRow {
    ChannelRow {
        name,
        private: false,
        joined: true,
        key_from: None,
        epoch: 0,
        key: None,
        members: Vec::new(),
        created_ms: now_ms,
        prev_members: Vec::new(),
    }
}

/// May we join this channel we hold a row of? A private one needs the key of an invitation.
pub fn may_join(row: &ChannelRow) -> Result<(), ChannelError> {
    if row.private && row.key.is_none() {
        return Err(fail(
            ErrorKind::Failed,
            format!("{} is private: you need a new invitation", row.name),
        ));
    }
    Ok(())
}

/// The row as we save it on joining: a private channel lists us, since we hold its key.
pub fn with_me(row: &ChannelRow, me: Uuid) -> ChannelRow {
    let mut row = row.clone();
    let mine = ByteArray::new(*me.as_bytes());
    if row.private && !row.members.contains(&mine) {
        row.members.push(mine);
    }
    row
}

/// The row as we save it on leaving: a private channel's key and lists are dropped, so only
/// a new invitation brings us back.
pub fn left(mut row: ChannelRow) -> ChannelRow {
    row.joined = false;
    if row.private {
        row.key = None;
        row.members.clear();
        row.prev_members.clear();
    }
    row
}

/// The grant that hands a private channel's current key (and who holds it) to someone.
pub fn grant_of(id: &Uuid, row: &ChannelRow) -> KeyGrant {
    KeyGrant {
        v: frame::FRAME_VERSION,
        channel: *id.as_bytes(),
        name: row.name.clone(),
        epoch: row.epoch,
        key: row.key.map(|k| *k).unwrap_or_default(),
        members: row.members.clone(),
    }
}

/// Whether this channel takes invitations at all: only a private one whose key we hold.
pub fn may_invite(row: &ChannelRow) -> Result<(), ChannelError> {
    if row.private && row.key.is_some() {
        Ok(())
    } else {
        Err(fail(
            ErrorKind::Failed,
            format!("{} is public: anyone can join it by name", row.name),
        ))
    }
}

/// `me` invites `who`: the row lists them as holding the key, and the grant to send them.
pub fn invite(
    id: &Uuid,
    row: &ChannelRow,
    me: Uuid,
    who: Uuid,
) -> Result<(ChannelRow, KeyGrant), ChannelError> {
    may_invite(row)?;
    if who == me {
        return Err(fail(ErrorKind::BadInput, "that is your own UUID"));
    }
    let mut row = row.clone();
    let who_b = ByteArray::new(*who.as_bytes());
    if !row.members.contains(&who_b) {
        row.members.push(who_b);
    }
    let grant = grant_of(id, &row);
    Ok((row, grant))
}

/// Whether anyone can be removed from this channel: not from a public one, which anyone reads.
pub fn may_remove(row: &ChannelRow) -> Result<(), ChannelError> {
    if row.private {
        Ok(())
    } else {
        Err(fail(
            ErrorKind::Failed,
            format!(
                "{} is public: anyone can read it, so nobody can be removed",
                row.name
            ),
        ))
    }
}

/// `me` removes `who`, a current key holder: the row without them, to be rotated at once
/// (by `me`, whoever [`keeper`] would pick, so that the key `who` holds stops at once).
pub fn remove(row: &ChannelRow, me: Uuid, who: Uuid) -> Result<ChannelRow, ChannelError> {
    may_remove(row)?;
    if who == me {
        return Err(fail(
            ErrorKind::BadInput,
            "to remove yourself, leave the channel",
        ));
    }
    if !is_member(row, &who) {
        return Err(fail(
            ErrorKind::Failed,
            format!("{who} does not hold the key of {}", row.name),
        ));
    }
    Ok(without(row, &who))
}

fn without(row: &ChannelRow, who: &Uuid) -> ChannelRow {
    let mut row = row.clone();
    row.prev_members.clone_from(&row.members);
    row.members.retain(|m| **m != *who.as_bytes());
    row
}

/// A private channel moved by `me` to the next epoch under `key`.
pub struct Rotation {
    /// The row to save.
    pub row: ChannelRow,
    /// The grant of the new key.
    pub grant: KeyGrant,
    /// Everyone it goes to: every member but `me`.
    pub to: Vec<Uuid>,
}

/// Moves a private channel to the next key epoch, `key`, drawn by `me`.
pub fn rotate(
    id: &Uuid,
    mut row: ChannelRow,
    me: Uuid,
    key: [u8; 32],
) -> Result<Rotation, ChannelError> {
    row.epoch = row.epoch.checked_add(1).ok_or_else(|| {
        fail(
            ErrorKind::Failed,
            format!(
                "{} has used every key epoch; create a new channel",
                row.name
            ),
        )
    })?;
    row.key = Some(ByteArray::new(key));
    row.key_from = Some(ByteArray::new(*me.as_bytes()));
    let grant = grant_of(id, &row);
    let to = row
        .members
        .iter()
        .map(|m| Uuid::from_bytes(**m))
        .filter(|m| *m != me)
        .collect();
    Ok(Rotation { row, grant, to })
}

/// Someone sealed a valid frame under the current key, so holds it: the row listing them,
/// if it did not and still has room in a grant (a rotation then reaches them too).
pub fn note_key_holder(row: &ChannelRow, member: Uuid) -> Option<ChannelRow> {
    let m = ByteArray::new(*member.as_bytes());
    if !row.private || row.members.contains(&m) {
        return None;
    }
    let mut row = row.clone();
    row.members.push(m);
    (row.members.len() <= frame::MAX_GRANT_MEMBERS).then_some(row)
}

/// A LEAVE from `who` was applied: the row without them, or `None` if that changes nothing
/// (a public channel, one we are not in, or a leaver no longer listed: removed already, or
/// a LEAVE seen before).
pub fn after_leave(row: &ChannelRow, who: &Uuid) -> Option<ChannelRow> {
    (row.private && row.joined && is_member(row, who)).then(|| without(row, who))
}

/// Whether `me` is the one to rotate the key of `row` (already without `left`, who left at
/// `row.epoch`).
pub fn keeps_key(id: &Uuid, row: &ChannelRow, left: &Uuid, me: Uuid) -> bool {
    keeper(id, row.epoch, left, &row.members) == Some(*me.as_bytes())
}

/// Which remaining member rotates the key after `left` left at `epoch`: the one whose
/// hash with this very event is lowest. A UUID can be ground to be the lowest of all, but
/// not to win every event, so no member decides alone whether a leaver keeps reading.
pub fn keeper(
    channel: &Uuid,
    epoch: u32,
    left: &Uuid,
    members: &[ByteArray<16>],
) -> Option<[u8; 16]> {
    use sha2::{Digest, Sha256};
    members.iter().map(|m| **m).min_by_key(|m| {
        let mut h = Sha256::new();
        h.update(b"ptpchat keeper v1");
        h.update(channel.as_bytes());
        h.update(epoch.to_be_bytes());
        h.update(left.as_bytes());
        h.update(m);
        <[u8; 32]>::from(h.finalize())
    })
}

#[cfg(test)]
mod tests;

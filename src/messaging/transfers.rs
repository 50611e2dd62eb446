//! Attachment transfers being received: the slots and who may take one, and the state of
//! each transfer in progress.
//!
//! A message with attachments holds a slot from its MESSAGE until its last chunk (or until
//! it is dropped). Announcing costs a sender nothing, so slots are rationed: half of them
//! are kept for contacts, one sender holds at most a few, and a transfer that has sent no
//! chunk for a while is *idle*: a newcomer who finds no free slot evicts the oldest idle
//! one (a stranger only a stranger's), and a stranger's transfer idle for
//! [`STRANGER_IDLE_LIMIT`] periods is dropped outright. The sender of an evicted or dropped
//! transfer was never ACKed, so it retries, and the transfer starts again from the start.
//!
//! [`Transfers`] is the receiving side's state: which chunk each transfer expects, who is
//! writing, who is idle. Pure, the time handed in; `attachments.rs` carries it out.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;

use super::transfer_state::{chunk_at, Need};
use crate::wire::envelope::Envelope;

/// Most messages with attachments in progress at once, from everyone…
pub const MAX_PENDING_TRANSFERS: usize = 64;
/// …from senders who are not contacts (the other slots are kept for contacts)…
pub const MAX_STRANGER_TRANSFERS: usize = 32;
/// …and from one sender.
pub const MAX_PENDING_PER_SENDER: usize = 4;
/// A stranger's transfer idle for this many idle periods is dropped.
pub const STRANGER_IDLE_LIMIT: u64 = 10;

/// An attachment transfer the sender is sending now: the chunk it must send next, and
/// whether a chunk (or a look at the disk) is under way.
pub(crate) struct Transfer {
    /// The message's dedup key (and its row in `PENDING_IN`).
    pub key: [u8; 40],
    pub env: Envelope,
    /// The next chunk expected; `None` until a first look at the disk says where it stands.
    need: Option<Need>,
    /// Attachments already checked against their hash.
    verified: u32,
    /// A chunk is being written, or the files are being looked at and cut back: a
    /// concurrent chunk or MESSAGE is told to wait, so one writer at a time touches them.
    busy: bool,
}

/// What becomes of an arriving CHUNK.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OnChunk {
    /// The chunk asked for: open it, check its length ([`Claim::fits`]), write it.
    Claimed(Box<Claim>),
    /// Not the chunk asked for (a duplicate, or out of order): ask again.
    Ask(Need),
    /// Another chunk of this transfer is being written (`busy`).
    Busy,
    /// No such transfer from this peer (`unknown_message`): its sender starts again.
    Unknown,
}

/// A chunk taken for writing: the transfer stays busy until [`Transfers::on_written`] or
/// until it is forgotten.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    pub key: [u8; 40],
    pub env: Envelope,
    pub verified: u32,
    pub attachment: u32,
    /// The key the attachment's chunks are sealed with.
    pub chunk_key: [u8; 32],
    /// The chunk's nonce index.
    pub index: u64,
    /// The length its plaintext must have.
    pub want: usize,
}

impl Claim {
    /// Whether an opened plaintext of `len` bytes is the chunk asked for: anything else
    /// would leave a file that never matches its hash.
    pub fn fits(&self, len: usize) -> bool {
        len == self.want
    }
}

/// The transfers of one node: those being sent, by sending peer and msg_id (what a CHUNK
/// names), and when each stored transfer last made progress, by its key. Changed only
/// under the messenger's lock, so a decision and the state it reads are one step.
pub(crate) struct Transfers {
    live: HashMap<(PeerId, [u8; 16]), Transfer>,
    /// Unix ms of a transfer's admission or last chunk. A stored transfer not here has not
    /// moved since this process started.
    active: HashMap<[u8; 40], u64>,
    /// A transfer is idle after this long without progress (ms).
    idle_ms: u64,
    /// When this process started (unix ms).
    started_ms: u64,
}

impl Transfers {
    /// No transfers yet, in a process started at `started_ms`, where a transfer is idle
    /// after `idle_ms` without progress.
    pub fn new(idle_ms: u64, started_ms: u64) -> Self {
        Transfers {
            live: HashMap::new(),
            active: HashMap::new(),
            idle_ms,
            started_ms,
        }
    }

    /// Forgets a transfer (dropped, evicted or complete).
    pub fn forget(&mut self, key: &[u8; 40]) {
        self.active.remove(key);
        self.live.retain(|_, t| &t.key != key);
    }

    /// Forgets a transfer in memory only (it stalled on the disk): its row and progress
    /// time stay, and the sender's next CHUNK is `unknown_message`, so it starts again
    /// with MESSAGE from what is on disk.
    pub fn on_stall(&mut self, key: &[u8; 40]) {
        self.live.retain(|_, t| &t.key != key);
    }

    /// When the stored transfer `key` last made progress (the start of this process, for
    /// one not touched since).
    pub fn last_active(&self, key: &[u8; 40]) -> u64 {
        let since = self.started_ms;
        self.active.get(key).copied().unwrap_or(since).max(since)
    }

    fn in_use(&self, key: &[u8; 40]) -> bool {
        self.live.values().any(|l| &l.key == key && l.busy)
    }

    /// Decides whether the new transfer `key` (its sender's UUID first) gets a slot among
    /// the stored ones, `held`, at `now_ms`. Those in `kept` (answered in the same
    /// transaction) and those in use are never evicted. An evicted transfer is forgotten
    /// here; its row is the caller's to remove.
    pub fn take_slot(
        &mut self,
        key: &[u8; 40],
        held: Vec<[u8; 40]>,
        contacts: &HashSet<[u8; 16]>,
        kept: &HashSet<[u8; 40]>,
        now_ms: u64,
    ) -> Admit {
        // The same msg_id from the same sender twice at once (another timestamp) waits for
        // the first: a CHUNK names the message by msg_id alone.
        if held
            .iter()
            .any(|k| k[..16] == key[..16] && k[24..] == key[24..])
        {
            return Admit::Busy;
        }
        let slots = slots(held, contacts, |k| {
            if kept.contains(k) || self.in_use(k) {
                now_ms
            } else {
                self.last_active(k)
            }
        });
        let own = slots.iter().filter(|s| s.key[..16] == key[..16]).count();
        let mut from = [0u8; 16];
        from.copy_from_slice(&key[..16]);
        let admit = admit(&slots, contacts.contains(&from), own, now_ms, self.idle_ms);
        if let Admit::Evict(victim) = admit {
            // Its sender's next CHUNK finds nothing and starts again (`unknown_message`).
            self.forget(&victim);
        }
        if admit != Admit::Busy {
            self.active.insert(*key, now_ms);
        }
        admit
    }

    /// A MESSAGE for the stored transfer `key` from `peer`: claims it while its files are
    /// looked at (and a partial chunk cut off), and says how many attachments are checked
    /// already. `None`: a chunk of it is being written or it is being looked at, so the
    /// sender waits (`busy`) rather than have two writers on one file.
    pub fn begin_resume(&mut self, peer: PeerId, key: &[u8; 40], env: &Envelope) -> Option<u32> {
        if self.in_use(key) {
            return None;
        }
        let at = (peer, env.msg_id);
        let (need, verified) = self
            .live
            .get(&at)
            .filter(|t| &t.key == key)
            .map_or((None, 0), |t| (t.need, t.verified));
        // One sender, one transfer of a message: the same sender from another peer gives
        // up its place (its next CHUNK is `unknown_message`).
        self.live.retain(|_, t| &t.key != key);
        self.live.insert(
            at,
            Transfer {
                key: *key,
                env: env.clone(),
                need,
                verified,
                busy: true,
            },
        );
        Some(verified)
    }

    /// The look at the disk a resume began found `need`. `stored`: its row still stands,
    /// read under the same lock an eviction forgets it under, so a transfer evicted or
    /// dropped meanwhile is not brought back without a slot. Whether it is registered.
    pub fn end_resume(
        &mut self,
        peer: PeerId,
        key: &[u8; 40],
        env: &Envelope,
        need: Need,
        verified: u32,
        stored: bool,
    ) -> bool {
        let at = (peer, env.msg_id);
        if !stored {
            if self.live.get(&at).is_some_and(|t| &t.key == key) {
                self.live.remove(&at);
            }
            return false;
        }
        self.live.insert(
            at,
            Transfer {
                key: *key,
                env: env.clone(),
                need: Some(need),
                verified,
                busy: false,
            },
        );
        true
    }

    /// A CHUNK from `peer` for `(attachment, offset)` of `msg_id`, at `now_ms`.
    pub fn on_chunk(
        &mut self,
        peer: PeerId,
        msg_id: [u8; 16],
        attachment: u32,
        offset: u64,
        now_ms: u64,
    ) -> OnChunk {
        let at = (peer, msg_id);
        let Some(t) = self.live.get_mut(&at) else {
            return OnChunk::Unknown;
        };
        let Some(need) = t.need.filter(|_| !t.busy) else {
            return OnChunk::Busy;
        };
        if (need.attachment, need.offset) != (attachment, offset) {
            return OnChunk::Ask(need);
        }
        let chunk = t
            .env
            .attachments
            .get(attachment as usize)
            .and_then(|a| Some((a.key, chunk_at(a.size, offset)?)));
        let Some((chunk_key, (want, index))) = chunk else {
            // Never asked for (a need names a chunk of the message); should the state be
            // wrong anyway, the sender starts again from what is on disk.
            self.live.remove(&at);
            return OnChunk::Unknown;
        };
        t.busy = true;
        let claim = Claim {
            key: t.key,
            env: t.env.clone(),
            verified: t.verified,
            attachment,
            chunk_key,
            index,
            want,
        };
        // A transfer with a chunk arriving is not idle.
        self.active.insert(claim.key, now_ms);
        OnChunk::Claimed(Box::new(claim))
    }

    /// The claimed chunk is written and synced, and the files say `need` comes next.
    pub fn on_written(
        &mut self,
        peer: PeerId,
        msg_id: [u8; 16],
        key: &[u8; 40],
        need: Need,
        verified: u32,
    ) {
        if let Some(t) = self.live.get_mut(&(peer, msg_id)).filter(|t| &t.key == key) {
            t.need = Some(need);
            t.verified = verified;
            t.busy = false;
        }
    }

    /// The claim on `key`'s chunk ended without [`Transfers::on_written`] (its task died
    /// on the way): should the transfer still be busy, it is forgotten in memory as after
    /// a stall, so the sender starts again from what is on disk instead of finding it busy
    /// for as long as this process runs. Does nothing once the chunk was written.
    pub fn release(&mut self, peer: PeerId, msg_id: [u8; 16], key: &[u8; 40]) {
        let at = (peer, msg_id);
        if self.live.get(&at).is_some_and(|t| &t.key == key && t.busy) {
            self.live.remove(&at);
        }
    }

    /// The periodic sweep, given the stored transfers (`held`) and the contacts, at
    /// `now_ms`: forgets what a transfer left behind without its row (progress times, a
    /// transfer in memory), keeping those admitted a moment ago (their row may not be
    /// committed yet), and says which stored transfers are abandoned ([`abandoned`]).
    pub fn sweep(
        &mut self,
        held: Vec<[u8; 40]>,
        contacts: &HashSet<[u8; 16]>,
        now_ms: u64,
    ) -> Vec<[u8; 40]> {
        let stored: HashSet<[u8; 40]> = held.iter().copied().collect();
        let idle = self.idle_ms;
        self.active
            .retain(|k, at| stored.contains(k) || now_ms.saturating_sub(*at) < idle);
        let active = &self.active;
        self.live
            .retain(|_, l| stored.contains(&l.key) || active.contains_key(&l.key));
        let slots = slots(held, contacts, |k| self.last_active(k));
        abandoned(&slots, now_ms, idle)
    }
}

/// A stored transfer as the slot rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub key: [u8; 40],
    /// Its sender is one of our contacts.
    pub contact: bool,
    /// Unix ms of its last progress.
    pub active_ms: u64,
}

/// Whether a new transfer gets a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// A slot is free.
    Take,
    /// No slot is free; this idle transfer gives up its own.
    Evict([u8; 40]),
    /// No slot for now (`busy`).
    Busy,
}

/// Decides whether a transfer from a sender (a contact or not, already holding `own`
/// transfers) gets one of the `slots` taken now, at `now_ms`, where a transfer is idle
/// after `idle_ms` without progress.
pub fn admit(slots: &[Slot], contact: bool, own: usize, now_ms: u64, idle_ms: u64) -> Admit {
    if own >= MAX_PENDING_PER_SENDER {
        return Admit::Busy;
    }
    let strangers = slots.iter().filter(|s| !s.contact).count();
    let full = slots.len() >= MAX_PENDING_TRANSFERS;
    if !full && (contact || strangers < MAX_STRANGER_TRANSFERS) {
        return Admit::Take;
    }
    let idle = |s: &&Slot| now_ms.saturating_sub(s.active_ms) >= idle_ms;
    let oldest = |contacts: bool| {
        slots
            .iter()
            .filter(|s| s.contact == contacts)
            .filter(idle)
            .min_by_key(|s| s.active_ms)
            .map(|s| s.key)
    };
    // A stranger makes room only among strangers; a contact first there, then among
    // contacts.
    let victim = match contact {
        false => oldest(false),
        true => oldest(false).or_else(|| oldest(true)),
    };
    victim.map_or(Admit::Busy, Admit::Evict)
}

/// The stored transfers that the periodic sweep drops: strangers' idle for
/// [`STRANGER_IDLE_LIMIT`] periods.
pub fn abandoned(slots: &[Slot], now_ms: u64, idle_ms: u64) -> Vec<[u8; 40]> {
    let limit = idle_ms.saturating_mul(STRANGER_IDLE_LIMIT);
    slots
        .iter()
        .filter(|s| !s.contact && now_ms.saturating_sub(s.active_ms) >= limit)
        .map(|s| s.key)
        .collect()
}

/// The senders among `keys` (a dedup key starts with the sender's UUID) who are contacts.
pub fn slots(
    keys: impl IntoIterator<Item = [u8; 40]>,
    contacts: &HashSet<[u8; 16]>,
    last_active: impl Fn(&[u8; 40]) -> u64,
) -> Vec<Slot> {
    keys.into_iter()
        .map(|key| {
            let mut sender = [0u8; 16];
            sender.copy_from_slice(&key[..16]);
            Slot {
                key,
                contact: contacts.contains(&sender),
                active_ms: last_active(&key),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(n: u8, contact: bool, active_ms: u64) -> Slot {
        let mut key = [0u8; 40];
        key[0] = n;
        key[39] = n;
        Slot {
            key,
            contact,
            active_ms,
        }
    }

    const IDLE: u64 = 60_000;
    const NOW: u64 = 1_000_000;

    #[test]
    fn strangers_get_half_the_slots_and_contacts_the_rest() {
        let strangers: Vec<_> = (0..MAX_STRANGER_TRANSFERS as u8)
            .map(|n| slot(n, false, NOW))
            .collect();
        assert_eq!(admit(&strangers, false, 0, NOW, IDLE), Admit::Busy);
        assert_eq!(admit(&strangers, true, 0, NOW, IDLE), Admit::Take);
        let mut all = strangers.clone();
        all.extend(
            (100..100 + (MAX_PENDING_TRANSFERS - MAX_STRANGER_TRANSFERS) as u8)
                .map(|n| slot(n, true, NOW)),
        );
        assert_eq!(admit(&all, true, 0, NOW, IDLE), Admit::Busy);
        assert_eq!(
            admit(&[], false, MAX_PENDING_PER_SENDER, NOW, IDLE),
            Admit::Busy
        );
    }

    #[test]
    fn the_oldest_idle_transfer_makes_room_and_a_stranger_never_evicts_a_contact() {
        let mut all: Vec<_> = (0..MAX_STRANGER_TRANSFERS as u8)
            .map(|n| slot(n, false, NOW))
            .collect();
        // Contacts fill the rest, all idle.
        all.extend((100..132).map(|n| slot(n, true, NOW - 2 * IDLE - n as u64)));
        assert_eq!(admit(&all, false, 0, NOW, IDLE), Admit::Busy);
        // A contact evicts the oldest idle contact while no stranger is idle…
        assert_eq!(
            admit(&all, true, 0, NOW, IDLE),
            Admit::Evict(slot(131, true, 0).key)
        );
        // …and an idle stranger first once there is one; so does a stranger.
        all[5].active_ms = NOW - IDLE;
        all[7].active_ms = NOW - 3 * IDLE;
        assert_eq!(admit(&all, true, 0, NOW, IDLE), Admit::Evict(all[7].key));
        assert_eq!(admit(&all, false, 0, NOW, IDLE), Admit::Evict(all[7].key));
    }

    #[test]
    fn only_strangers_long_idle_are_dropped() {
        let slots = [
            slot(1, false, NOW - STRANGER_IDLE_LIMIT * IDLE),
            slot(2, false, NOW - STRANGER_IDLE_LIMIT * IDLE + 1),
            slot(3, true, 0),
        ];
        assert_eq!(abandoned(&slots, NOW, IDLE), vec![slots[0].key]);
    }
}

//! Slots for attachment transfers in progress, and who may take one.
//!
//! A message with attachments holds a slot from its MESSAGE until its last chunk (or until
//! it is dropped). Announcing costs a sender nothing, so slots are rationed: half of them
//! are kept for contacts, one sender holds at most a few, and a transfer that has sent no
//! chunk for a while is *idle*: a newcomer who finds no free slot evicts the oldest idle
//! one (a stranger only a stranger's), and a stranger's transfer idle for
//! [`STRANGER_IDLE_LIMIT`] periods is dropped outright. The sender of an evicted or dropped
//! transfer was never ACKed, so it retries, and the transfer starts again from the start.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;

use crate::wire::envelope::Envelope;

/// Most messages with attachments in progress at once, from everyone…
pub const MAX_PENDING_TRANSFERS: usize = 64;
/// …from senders who are not contacts (the other slots are kept for contacts)…
pub const MAX_STRANGER_TRANSFERS: usize = 32;
/// …and from one sender.
pub const MAX_PENDING_PER_SENDER: usize = 4;
/// A stranger's transfer idle for this many idle periods is dropped.
pub const STRANGER_IDLE_LIMIT: u64 = 10;

/// An attachment transfer the sender is sending now.
pub(crate) struct Transfer {
    /// The message's dedup key (and its row in `PENDING_IN`).
    pub key: [u8; 40],
    pub env: Envelope,
    /// The next chunk expected.
    pub attachment: u32,
    pub offset: u64,
    /// Attachments already checked against their hash.
    pub verified: u32,
    /// A chunk is being written; a concurrent duplicate is told to wait.
    pub busy: bool,
}

/// The transfers of one node: those being sent, by sending peer and msg_id (what a CHUNK
/// names), and when each stored transfer last made progress, by its key.
#[derive(Default)]
pub(crate) struct Transfers {
    pub live: HashMap<(PeerId, [u8; 16]), Transfer>,
    /// Unix ms of a transfer's admission or last chunk. A stored transfer not here has not
    /// moved since this process started.
    pub active: HashMap<[u8; 40], u64>,
}

impl Transfers {
    /// Forgets a transfer (dropped, evicted or complete).
    pub fn forget(&mut self, key: &[u8; 40]) {
        self.active.remove(key);
        self.live.retain(|_, t| &t.key != key);
    }

    /// When the stored transfer `key` last made progress (`since`: when this process
    /// started, for one not touched since).
    pub fn last_active(&self, key: &[u8; 40], since: u64) -> u64 {
        self.active.get(key).copied().unwrap_or(since).max(since)
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

//! Public channels discovered from announcements on [`crate::wire::frame::ANNOUNCE_TOPIC`]:
//! what `channel list --all` shows and `channel join` finds by name. Bounded in all and per
//! origin, so announcers cannot fill it; held in memory only. Pure: the time is handed in.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::membership::MAX_MEMBERS_HEARD;

/// Public channels remembered from announcements.
pub const MAX_DISCOVERED: usize = 1024;
/// Channels one origin (the first identity heard announcing them) may hold in the
/// discovered list; a further new channel of it is dropped and counted.
pub const MAX_DISCOVERED_PER_ORIGIN: usize = 4;

/// One public channel heard announced.
pub struct Discovered {
    pub name: String,
    /// Who announced it first.
    pub origin: Uuid,
    /// Who announced it.
    pub members: HashSet<Uuid>,
    /// When it was last announced (ms).
    pub last_ms: u64,
}

/// Why an announcement was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct OriginFull;

/// The public channels discovered, by id.
#[derive(Default)]
pub struct Discovery(HashMap<Uuid, Discovered>);

impl Discovery {
    /// `from` announced channel `id` called `name` at `now_ms`. A new channel from an origin
    /// that already holds [`MAX_DISCOVERED_PER_ORIGIN`] is refused; a new one into a full
    /// list replaces the one announced longest ago.
    pub fn announced(
        &mut self,
        id: Uuid,
        name: &str,
        from: Uuid,
        now_ms: u64,
    ) -> Result<(), OriginFull> {
        let known = self.0.contains_key(&id);
        if !known
            && self.0.values().filter(|d| d.origin == from).count() >= MAX_DISCOVERED_PER_ORIGIN
        {
            return Err(OriginFull);
        }
        if self.0.len() >= MAX_DISCOVERED && !known {
            let oldest = self
                .0
                .iter()
                .min_by_key(|(_, d)| d.last_ms)
                .map(|(i, _)| *i);
            if let Some(o) = oldest {
                self.0.remove(&o);
            }
        }
        let d = self.0.entry(id).or_insert_with(|| Discovered {
            name: name.to_string(),
            origin: from,
            members: HashSet::new(),
            last_ms: now_ms,
        });
        d.last_ms = now_ms;
        if d.members.len() < MAX_MEMBERS_HEARD {
            d.members.insert(from);
        }
        Ok(())
    }

    /// Forgets channels not announced in the last `quiet_ms`.
    pub fn forget_quiet(&mut self, now_ms: u64, quiet_ms: u64) {
        self.0
            .retain(|_, d| now_ms.saturating_sub(d.last_ms) < quiet_ms);
    }

    /// A discovered channel, by id.
    pub fn get(&self, id: &Uuid) -> Option<&Discovered> {
        self.0.get(id)
    }

    /// Every discovered channel.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Discovered)> {
        self.0.iter()
    }

    /// The ids of the discovered channels called `name`.
    pub fn named(&self, name: &str) -> Vec<Uuid> {
        self.0
            .iter()
            .filter(|(_, d)| d.name == name)
            .map(|(i, _)| *i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn an_origin_holds_a_bounded_number_of_new_channels() {
        let mut d = Discovery::default();
        for i in 0..MAX_DISCOVERED_PER_ORIGIN as u128 {
            assert_eq!(d.announced(u(100 + i), "spam", u(1), 10), Ok(()));
        }
        assert_eq!(d.announced(u(999), "spam", u(1), 10), Err(OriginFull));
        // The channels it holds are still refreshed, by it or by anyone.
        assert_eq!(d.announced(u(100), "spam", u(1), 20), Ok(()));
        assert_eq!(d.announced(u(101), "spam", u(2), 20), Ok(()));
        assert_eq!(d.get(&u(101)).map(|c| c.members.len()), Some(2));
        assert_eq!(d.get(&u(101)).map(|c| c.origin), Some(u(1)));
        // Another origin is not held back by the first.
        assert_eq!(d.announced(u(999), "other", u(2), 20), Ok(()));
    }

    #[test]
    fn a_full_list_drops_the_channel_announced_longest_ago() {
        let mut d = Discovery::default();
        for i in 0..MAX_DISCOVERED as u128 {
            // One origin per channel, so the origin bound stays out of the way.
            let ok = d.announced(u(10_000 + i), "c", u(i), 1_000 + i as u64);
            assert_eq!(ok, Ok(()));
        }
        d.announced(u(10_000), "c", u(0), 5_000).unwrap();
        d.announced(u(1), "new", u(1_000_000), 6_000).unwrap();
        assert!(d.get(&u(10_001)).is_none(), "the oldest went");
        assert!(d.get(&u(10_000)).is_some(), "a refreshed one stays");
        assert_eq!(d.named("new"), vec![u(1)]);
        assert_eq!(d.iter().count(), MAX_DISCOVERED);
    }

    #[test]
    fn quiet_channels_are_forgotten() {
        let mut d = Discovery::default();
        d.announced(u(1), "a", u(7), 1_000).unwrap();
        d.announced(u(2), "b", u(7), 5_000).unwrap();
        d.forget_quiet(9_000, 5_000);
        assert!(d.get(&u(1)).is_none());
        assert!(d.get(&u(2)).is_some());
    }
}

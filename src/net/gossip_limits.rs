//! Token buckets on gossip, checked before a frame is queued for validation: one per
//! forwarding peer and one per author (a separate, smaller one on the announce topic).
//! A frame beyond them is `Ignore`d and counted, so a flood from fresh identities never
//! fills the validation queue that honest posts wait in, and costs no signature check.

use std::time::Instant;

use libp2p::PeerId;

use super::ratelimit::RateLimiter;
use crate::counters::Counter;

/// Frames one peer may forward to us: burst, then per second (all topics together).
pub const PEER_BURST: u32 = 512;
pub const PEER_PER_SEC: f64 = 128.0;
/// Frames of one author on channel topics: burst, then per second.
pub const AUTHOR_BURST: u32 = 128;
pub const AUTHOR_PER_SEC: f64 = 2.0;
/// CHANNEL announcements of one author on the announce topic: burst, then per second.
pub const ANNOUNCE_BURST: u32 = 16;
pub const ANNOUNCE_PER_SEC: f64 = 0.5;
/// Peers (and authors) tracked per bucket set.
pub const TRACKED: usize = 4096;

/// Why a frame was not admitted; the counter key in `status`'s `rejected` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The forwarding peer sent more than its share.
    Peer,
    /// The frame's author published more than its share on channel topics.
    Author,
    /// The frame's author announced more than its share on the announce topic.
    Announce,
}

impl Refused {
    /// The counter key.
    pub fn counter(self) -> Counter {
        match self {
            Refused::Peer => Counter::GossipRatePeer,
            Refused::Author => Counter::GossipRateAuthor,
            Refused::Announce => Counter::GossipRateAnnounce,
        }
    }
}

/// The buckets of one node.
pub struct GossipLimits {
    peers: RateLimiter<PeerId>,
    authors: RateLimiter<PeerId>,
    announcers: RateLimiter<PeerId>,
}

impl Default for GossipLimits {
    fn default() -> Self {
        GossipLimits {
            peers: RateLimiter::new(PEER_BURST, PEER_PER_SEC, TRACKED),
            authors: RateLimiter::new(AUTHOR_BURST, AUTHOR_PER_SEC, TRACKED),
            announcers: RateLimiter::new(ANNOUNCE_BURST, ANNOUNCE_PER_SEC, TRACKED),
        }
    }
}

impl GossipLimits {
    /// Takes a token for a frame from `source` written by `author` (the gossip author;
    /// the forwarder stands in for it when there is none), on the announce topic or not.
    pub fn admit(
        &mut self,
        source: PeerId,
        author: Option<PeerId>,
        announce: bool,
        now: Instant,
    ) -> Result<(), Refused> {
        if !self.peers.allow(&source, now) {
            return Err(Refused::Peer);
        }
        let author = author.unwrap_or(source);
        if announce {
            if !self.announcers.allow(&author, now) {
                return Err(Refused::Announce);
            }
        } else if !self.authors.allow(&author, now) {
            return Err(Refused::Author);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_author_beyond_its_bucket_is_refused_and_others_are_not() {
        let mut l = GossipLimits::default();
        let (fwd, spammer, honest) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t = Instant::now();
        for _ in 0..AUTHOR_BURST {
            assert_eq!(l.admit(fwd, Some(spammer), false, t), Ok(()));
        }
        assert_eq!(l.admit(fwd, Some(spammer), false, t), Err(Refused::Author));
        assert_eq!(l.admit(fwd, Some(honest), false, t), Ok(()));
        // Announcements have their own bucket.
        assert_eq!(l.admit(fwd, Some(spammer), true, t), Ok(()));
        let later = t + Duration::from_secs_f64(1.0 / AUTHOR_PER_SEC + 0.01);
        assert_eq!(l.admit(fwd, Some(spammer), false, later), Ok(()));
    }

    #[test]
    fn a_peer_beyond_its_bucket_is_refused() {
        let mut l = GossipLimits::default();
        let fwd = PeerId::random();
        let t = Instant::now();
        for _ in 0..PEER_BURST {
            assert_eq!(l.admit(fwd, Some(PeerId::random()), false, t), Ok(()));
        }
        assert_eq!(
            l.admit(fwd, Some(PeerId::random()), false, t),
            Err(Refused::Peer)
        );
        assert_eq!(l.admit(PeerId::random(), None, false, t), Ok(()));
    }
}

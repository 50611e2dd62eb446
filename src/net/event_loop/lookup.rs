//! Directory lookups (`whois`) as a state machine with no IO: the event loop feeds it what
//! Kademlia and peers answered, and carries out what it returns (start or stop a DHT
//! query, ask connected peers, hand the result to whoever waits). Time is passed in, so
//! every rule here is tested without a network.
//!
//! A lookup asks the DHT first. It stops once [`QUORUM`] answers carried a valid document,
//! or [`GRACE`] after the first valid one (one peer that has gone away would otherwise
//! hold the answer back for a whole dial timeout). When the DHT found nothing, up to
//! [`FALLBACK_PEERS`] connected peers are asked directly. Of all valid documents the
//! newest wins ([`SignedDocument::may_replace`]); invalid ones are counted and dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use uuid::Uuid;

use crate::counters::Counter;
use crate::identity::{DocumentError, SignedDocument};
use crate::net::LookupStats;

/// A lookup stops asking the DHT once this many answers carried a valid document...
pub const QUORUM: u32 = 3;
/// ...or this long after the first valid one came.
pub const GRACE: Duration = Duration::from_millis(500);
/// Most connected peers asked directly when the DHT has no answer.
pub const FALLBACK_PEERS: usize = 8;

/// One lookup, as the event loop names it in its maps of query and request ids.
pub type LookupId = u64;

/// What the event loop is to do. `R` is whoever waits for the answer (a reply channel),
/// `Q` the DHT query's handle.
#[derive(Debug)]
pub enum Out<R, Q> {
    /// Stop this DHT query; Kademlia then reports it finished as usual.
    FinishQuery(Q),
    /// Ask each of these peers for `uuid`'s document, and report each answer (or failure)
    /// to [`Lookups::on_fetch_answer`].
    Fetch {
        lookup: LookupId,
        uuid: Uuid,
        peers: Vec<PeerId>,
    },
    /// A candidate was refused (count it; the peer is named if one sent it).
    Invalid {
        uuid: Uuid,
        from: Option<PeerId>,
        error: DocumentError,
    },
    /// The lookup is over. `found` is the best valid document, if any; every reply gets it
    /// (or the caller's fallback when it is `None`).
    Done {
        uuid: Uuid,
        replies: Vec<R>,
        /// Boxed: a document is the largest thing here by far.
        found: Option<Box<SignedDocument>>,
    },
}

impl<R, Q> Out<R, Q> {
    /// The counter an output stands for, if it is a refusal.
    pub fn counter(&self) -> Option<Counter> {
        matches!(self, Out::Invalid { .. }).then_some(Counter::LookupInvalidDocument)
    }
}

struct Lookup<R, Q> {
    uuid: Uuid,
    best: Option<SignedDocument>,
    replies: Vec<R>,
    /// Direct requests still outstanding (fallback phase).
    fetches: usize,
    dht_done: bool,
    /// Peers that had answered the DHT query before its first valid document arrived, plus
    /// the one that sent it: an upper bound on the lookup's hop count.
    answered_at_first: Option<u32>,
    /// The DHT query, while it runs.
    query: Option<Q>,
    /// Valid documents received from the DHT so far.
    records: u32,
    /// When the query is stopped if it has not ended by itself (set by the first valid
    /// document).
    grace_until: Option<Instant>,
}

/// Every lookup in flight.
pub struct Lookups<R, Q> {
    by_id: HashMap<LookupId, Lookup<R, Q>>,
    next: LookupId,
    stats: LookupStats,
}

impl<R, Q> Default for Lookups<R, Q> {
    fn default() -> Self {
        Lookups {
            by_id: HashMap::new(),
            next: 0,
            stats: LookupStats::default(),
        }
    }
}

impl<R, Q: Copy> Lookups<R, Q> {
    /// Counters over every finished DHT query.
    pub fn stats(&self) -> LookupStats {
        self.stats
    }

    /// A lookup of `uuid` for `reply`. Joins one already in flight for the same UUID
    /// (returns `None`); otherwise returns the new lookup's id, and the caller starts its
    /// DHT query and reports it with [`Lookups::query_started`].
    pub fn start(&mut self, uuid: Uuid, reply: R) -> Option<LookupId> {
        if let Some(l) = self.by_id.values_mut().find(|l| l.uuid == uuid) {
            l.replies.push(reply);
            return None;
        }
        let id = self.next;
        self.next += 1;
        self.by_id.insert(
            id,
            Lookup {
                uuid,
                best: None,
                replies: vec![reply],
                fetches: 0,
                dht_done: false,
                answered_at_first: None,
                query: None,
                records: 0,
                grace_until: None,
            },
        );
        Some(id)
    }

    pub fn query_started(&mut self, id: LookupId, query: Q) {
        if let Some(l) = self.by_id.get_mut(&id) {
            l.query = Some(query);
        }
    }

    /// A record the DHT query returned. `answered` is how many peers had answered the
    /// query so far; `from` is `None` for a record out of our own store (no hop).
    pub fn on_record(
        &mut self,
        id: LookupId,
        bytes: &[u8],
        from: Option<PeerId>,
        answered: u32,
        unix_now: u64,
        now: Instant,
    ) -> Vec<Out<R, Q>> {
        let mut out = Vec::new();
        if !self.offer(id, bytes, from, unix_now, &mut out) {
            return out;
        }
        let Some(l) = self.by_id.get_mut(&id) else {
            return out;
        };
        l.records += 1;
        if l.answered_at_first.is_none() {
            l.answered_at_first = Some(if from.is_some() { answered + 1 } else { 0 });
            l.grace_until = Some(now + GRACE);
        }
        if l.records >= QUORUM {
            out.extend(l.query.take().map(Out::FinishQuery));
        }
        out
    }

    /// The DHT query ended (by itself or because we stopped it), after `requests`
    /// requests. `connected` are the peers to ask directly if it found nothing.
    pub fn on_query_done(
        &mut self,
        id: LookupId,
        requests: u32,
        connected: impl IntoIterator<Item = PeerId>,
    ) -> Vec<Out<R, Q>> {
        let Some(l) = self.by_id.get_mut(&id) else {
            return Vec::new();
        };
        l.query = None;
        l.dht_done = true;
        self.stats.done += 1;
        self.stats.requests += u64::from(requests);
        if let Some(n) = l.answered_at_first {
            self.stats.found += 1;
            self.stats.hops_bound += u64::from(n);
        }
        let mut out = Vec::new();
        if l.best.is_none() {
            let peers: Vec<PeerId> = connected.into_iter().take(FALLBACK_PEERS).collect();
            l.fetches = peers.len();
            if !peers.is_empty() {
                out.push(Out::Fetch {
                    lookup: id,
                    uuid: l.uuid,
                    peers,
                });
            }
        }
        out.extend(self.finish_if_done(id));
        out
    }

    /// A peer's answer to a direct request: the document it sent, or `None` (it had none,
    /// or the request failed).
    pub fn on_fetch_answer(
        &mut self,
        id: LookupId,
        doc: Option<&[u8]>,
        from: PeerId,
        unix_now: u64,
    ) -> Vec<Out<R, Q>> {
        let mut out = Vec::new();
        if let Some(bytes) = doc {
            self.offer(id, bytes, Some(from), unix_now, &mut out);
        }
        if let Some(l) = self.by_id.get_mut(&id) {
            l.fetches = l.fetches.saturating_sub(1);
        }
        out.extend(self.finish_if_done(id));
        out
    }

    /// When [`Lookups::on_timer`] next has something to do.
    pub fn next_timer(&self) -> Option<Instant> {
        self.by_id
            .values()
            .filter(|l| l.query.is_some())
            .filter_map(|l| l.grace_until)
            .min()
    }

    /// Stops the DHT queries whose grace after their first valid document has run out.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Out<R, Q>> {
        self.by_id
            .values_mut()
            .filter(|l| l.grace_until.is_some_and(|t| t <= now))
            .filter_map(|l| l.query.take())
            .map(Out::FinishQuery)
            .collect()
    }

    /// Considers a candidate document; returns whether it was valid.
    fn offer(
        &mut self,
        id: LookupId,
        bytes: &[u8],
        from: Option<PeerId>,
        unix_now: u64,
        out: &mut Vec<Out<R, Q>>,
    ) -> bool {
        let Some(l) = self.by_id.get_mut(&id) else {
            return false;
        };
        match SignedDocument::decode_for(bytes, &l.uuid, unix_now) {
            Ok(doc) => {
                let better = match &l.best {
                    Some(best) => doc.may_replace(best) == Ok(true),
                    None => true,
                };
                if better {
                    l.best = Some(doc);
                }
                true
            }
            Err(error) => {
                out.push(Out::Invalid {
                    uuid: l.uuid,
                    from,
                    error,
                });
                false
            }
        }
    }

    fn finish_if_done(&mut self, id: LookupId) -> Option<Out<R, Q>> {
        let l = self.by_id.get(&id)?;
        if !(l.dht_done && l.fetches == 0) {
            return None;
        }
        let l = self.by_id.remove(&id)?;
        Some(Out::Done {
            uuid: l.uuid,
            replies: l.replies,
            found: l.best.map(Box::new),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    const NOW: u64 = 1_800_000_000;

    fn doc(id: &mut Identity, now: u64) -> Vec<u8> {
        id.issue_document(&[], now).bytes().to_vec()
    }

    fn done<R, Q>(out: &[Out<R, Q>]) -> Option<(&Vec<R>, Option<u64>)> {
        out.iter().find_map(|o| match o {
            Out::Done { replies, found, .. } => {
                Some((replies, found.as_ref().map(|d| d.doc().seq)))
            }
            _ => None,
        })
    }

    #[test]
    fn lookups_of_one_uuid_share_a_query_and_all_get_the_answer() {
        let mut me = Identity::generate(NOW);
        let mut l: Lookups<&str, u32> = Lookups::default();
        let id = l.start(me.uuid(), "first").expect("a new lookup");
        l.query_started(id, 7);
        assert_eq!(
            l.start(me.uuid(), "second"),
            None,
            "joins the one in flight"
        );
        assert_eq!(l.start(Uuid::new_v4(), "other"), Some(id + 1));
        let t = Instant::now();
        assert!(l
            .on_record(id, &doc(&mut me, NOW), None, 0, NOW, t)
            .is_empty());
        let out = l.on_query_done(id, 3, []);
        let (replies, seq) = done(&out).expect("finished");
        assert_eq!(replies, &vec!["first", "second"]);
        assert!(seq.is_some());
        assert!(
            l.start(me.uuid(), "later").is_some(),
            "a later whois asks again"
        );
    }

    #[test]
    fn a_quorum_of_valid_answers_stops_the_query() {
        let mut me = Identity::generate(NOW);
        let bytes = doc(&mut me, NOW);
        let mut l: Lookups<(), u32> = Lookups::default();
        let id = l.start(me.uuid(), ()).unwrap();
        l.query_started(id, 42);
        let t = Instant::now();
        let peer = Some(PeerId::random());
        for _ in 1..QUORUM {
            assert!(l.on_record(id, &bytes, peer, 1, NOW, t).is_empty());
        }
        let out = l.on_record(id, &bytes, peer, 2, NOW, t);
        assert!(matches!(out[..], [Out::FinishQuery(42)]), "{out:?}");
        // The query is stopped once only, and the grace timer no longer applies.
        assert!(l.on_record(id, &bytes, peer, 3, NOW, t).is_empty());
        assert_eq!(l.next_timer(), None);
    }

    #[test]
    fn the_grace_after_the_first_valid_answer_stops_a_slow_query() {
        let mut me = Identity::generate(NOW);
        let mut l: Lookups<(), u32> = Lookups::default();
        let id = l.start(me.uuid(), ()).unwrap();
        l.query_started(id, 1);
        let t0 = Instant::now();
        assert_eq!(l.next_timer(), None, "no timer before a valid document");
        l.on_record(id, &doc(&mut me, NOW), Some(PeerId::random()), 4, NOW, t0);
        assert_eq!(l.next_timer(), Some(t0 + GRACE));
        assert!(l.on_timer(t0 + GRACE / 2).is_empty(), "not yet");
        let out = l.on_timer(t0 + GRACE);
        assert!(matches!(out[..], [Out::FinishQuery(1)]), "{out:?}");
        assert!(l.on_timer(t0 + GRACE * 4).is_empty(), "stopped once");
        // Kademlia then reports the query finished; the lookup answers.
        let out = l.on_query_done(id, 9, []);
        assert!(done(&out).is_some_and(|(_, seq)| seq.is_some()));
        let s = l.stats();
        assert_eq!((s.done, s.found, s.requests, s.hops_bound), (1, 1, 9, 5));
    }

    #[test]
    fn an_invalid_document_is_refused_and_counted_and_the_newest_valid_one_wins() {
        let mut me = Identity::generate(NOW);
        let old = doc(&mut me, NOW);
        let new = doc(&mut me, NOW + 10);
        let stranger = doc(&mut Identity::generate(NOW), NOW);
        let mut l: Lookups<(), u32> = Lookups::default();
        let id = l.start(me.uuid(), ()).unwrap();
        l.query_started(id, 1);
        let t = Instant::now();
        let liar = PeerId::random();
        // Someone else's (valid) document under our key, and garbage.
        for bad in [&stranger[..], b"\x00garbage"] {
            let out = l.on_record(id, bad, Some(liar), 0, NOW + 20, t);
            assert!(matches!(&out[..], [o] if o.counter() == Some(Counter::LookupInvalidDocument)));
        }
        assert_eq!(l.next_timer(), None, "refusals start no grace");
        l.on_record(id, &new, Some(PeerId::random()), 1, NOW + 20, t);
        l.on_record(id, &old, Some(PeerId::random()), 2, NOW + 20, t);
        let out = l.on_query_done(id, 3, []);
        let newest = SignedDocument::decode(&new, NOW + 20).unwrap().doc().seq;
        assert_eq!(done(&out).map(|(_, seq)| seq), Some(Some(newest)));
    }

    #[test]
    fn with_nothing_in_the_dht_connected_peers_are_asked_and_all_answers_awaited() {
        let mut me = Identity::generate(NOW);
        let mut l: Lookups<(), u32> = Lookups::default();
        let id = l.start(me.uuid(), ()).unwrap();
        l.query_started(id, 1);
        let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        let out = l.on_query_done(id, 5, peers.iter().copied());
        let asked = match &out[..] {
            [Out::Fetch { peers, uuid, .. }] if *uuid == me.uuid() => peers.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(asked.len(), FALLBACK_PEERS);
        let bytes = doc(&mut me, NOW);
        for (i, p) in asked.iter().enumerate() {
            let answer = (i == 3).then_some(&bytes[..]);
            let out = l.on_fetch_answer(id, answer, *p, NOW);
            let last = i + 1 == asked.len();
            assert_eq!(done(&out).is_some(), last, "answer {i}");
            if last {
                assert!(done(&out).unwrap().1.is_some(), "the one peer's document");
            }
        }
        let s = l.stats();
        assert_eq!((s.done, s.found), (1, 0), "the DHT itself found nothing");
    }

    #[test]
    fn with_nothing_anywhere_the_lookup_ends_at_once_without_a_document() {
        let mut l: Lookups<u8, u32> = Lookups::default();
        let id = l.start(Uuid::new_v4(), 1).unwrap();
        l.query_started(id, 1);
        let out = l.on_query_done(id, 0, []);
        assert_eq!(done(&out), Some((&vec![1], None)));
        // Late answers for a finished lookup change nothing.
        assert!(l
            .on_fetch_answer(id, None, PeerId::random(), NOW)
            .is_empty());
        assert!(l.on_query_done(id, 0, []).is_empty());
        assert_eq!(l.stats().done, 1);
    }
}

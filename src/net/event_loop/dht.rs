//! The event loop's DHT side: records and provider records peers ask us to store are
//! checked before Kademlia keeps them; query results go to the lookup and publishing state
//! machines; provider lookups are dialed within the dial policy.

use std::num::NonZeroU8;
use std::time::{Duration, Instant};

use libp2p::{
    kad,
    swarm::dial_opts::{DialOpts, PeerCondition},
    PeerId,
};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{EventLoop, MAX_ADDRS_PER_PEER};
use crate::counters::Counter;
use crate::identity::{dht_key, SignedDocument};
use crate::net::dial;
use crate::store::Store;
use crate::unix_now;

/// Most providers a private node dials over its relays' circuits after one lookup.
const MAX_PROVIDER_CIRCUIT_DIALS: usize = 4;
/// Most providers of one key dialed after a provider lookup.
const MAX_PROVIDER_DIALS: usize = 20;

impl EventLoop {
    /// Checks a record a peer asked us to store and stores it if it is a valid document
    /// that may replace what we hold.
    fn on_inbound_put(&mut self, source: PeerId, record: kad::Record) {
        use libp2p::kad::store::RecordStore;
        // Kademlia re-replicates what it holds every hour: a copy of what we already have
        // costs nothing and must not eat the sender's allowance.
        if let Some(held) = self.swarm.behaviour_mut().kad.store_mut().get(&record.key) {
            if held.value == record.value {
                return;
            }
        }
        if !self.put_limiter.allow(&source, Instant::now()) {
            self.count(Counter::DhtPutRateLimited);
            return;
        }
        let now = unix_now();
        let Some(uuid) = uuid_from_dht_key(record.key.as_ref()) else {
            self.count(Counter::DhtPutBadKey);
            debug!(peer = %source, "rejected DHT record with a key that is not ours");
            return;
        };
        let doc = match SignedDocument::decode_for(&record.value, &uuid, now) {
            Ok(d) => d,
            Err(e) => {
                self.count(Counter::DhtPutInvalidDocument);
                crate::warn_remote!("dht_bad_record", peer = %source, %uuid, reason = e.reason(), error = %e, "rejected DHT record");
                return;
            }
        };
        match self.accept_into_dht(&doc, now) {
            Ok(true) => self.cache.put(&doc, now),
            Ok(false) => {}
            Err(e) => {
                self.count(Counter::DhtPutSuperseded);
                debug!(peer = %source, %uuid, error = %e, "rejected DHT record");
            }
        }
    }

    /// Puts a verified document into the DHT store if it may replace the held one.
    pub(super) fn accept_into_dht(
        &mut self,
        doc: &SignedDocument,
        now: u64,
    ) -> Result<bool, crate::identity::DocumentError> {
        use libp2p::kad::store::RecordStore;
        let key = kad::RecordKey::new(&dht_key(&doc.doc().uuid()));
        let store = self.swarm.behaviour_mut().kad.store_mut();
        if let Some(held) = store.get(&key) {
            if let Ok(held) = SignedDocument::decode(&held.value, now) {
                if !doc.may_replace(&held)? {
                    return Ok(false);
                }
            }
        }
        if let Err(e) = store.put(record_for(doc, now)) {
            self.count(Counter::DhtStoreFull);
            warn!(error = ?e, "DHT store full; record not kept");
            return Ok(false);
        }
        Ok(true)
    }

    /// Provider records say who is in a channel. Only our own key shape is stored (a
    /// 32-byte hash, see `wire::frame::provider_key`), from the provider itself (Kademlia
    /// checks that), at a bounded rate per peer, and within the store's limits.
    fn on_inbound_provider(&mut self, record: kad::ProviderRecord) {
        use libp2p::kad::store::RecordStore;
        let source = record.provider;
        if record.key.as_ref().len() != 32 {
            self.count(Counter::DhtProviderRejected);
            debug!(peer = %source, "refused a provider record with a foreign key");
            return;
        }
        if !self.provider_limiter.allow(&source, Instant::now()) {
            self.count(Counter::DhtProviderRateLimited);
            return;
        }
        let mut record = record;
        record.addresses.truncate(MAX_ADDRS_PER_PEER);
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .add_provider(record)
        {
            self.count(Counter::DhtStoreFull);
            debug!(error = ?e, "provider record not kept");
        }
    }

    pub(super) fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest { request } => match request {
                kad::InboundRequest::PutRecord {
                    source,
                    record: Some(record),
                    ..
                } => self.on_inbound_put(source, record),
                kad::InboundRequest::AddProvider {
                    record: Some(record),
                    ..
                } => self.on_inbound_provider(record),
                _ => {}
            },
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => match result {
                kad::QueryResult::GetRecord(result) => {
                    let Some(&lookup) = self.lookup_queries.get(&id) else {
                        return;
                    };
                    if let Ok(kad::GetRecordOk::FoundRecord(peer_record)) = &result {
                        let out = self.lookups.on_record(
                            lookup,
                            &peer_record.record.value,
                            peer_record.peer,
                            stats.num_successes(),
                            unix_now(),
                            Instant::now(),
                        );
                        self.carry_out_lookup(out);
                    }
                    if step.last {
                        self.lookup_queries.remove(&id);
                        let connected: Vec<PeerId> =
                            self.swarm.connected_peers().copied().collect();
                        let out =
                            self.lookups
                                .on_query_done(lookup, stats.num_requests(), connected);
                        self.carry_out_lookup(out);
                    }
                }
                kad::QueryResult::GetProviders(result) => {
                    if !self.provider_queries.contains(&id) {
                        return;
                    }
                    if step.last {
                        self.provider_queries.remove(&id);
                    }
                    if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                        let me = *self.swarm.local_peer_id();
                        // Providers are whoever answered: a private node does not dial them
                        // directly (their addresses are the answerer's word), only over
                        // circuits through its own relays, which show them no address.
                        let direct = self
                            .dial_policy
                            .may_dial_direct(dial::DialReason::Automatic);
                        let mut circuits_left = MAX_PROVIDER_CIRCUIT_DIALS;
                        let now = Instant::now();
                        for p in providers.into_iter().take(MAX_PROVIDER_DIALS) {
                            if p == me || self.swarm.is_connected(&p) {
                                continue;
                            }
                            let opts = if direct {
                                DialOpts::peer_id(p).build()
                            } else {
                                if circuits_left == 0 {
                                    break;
                                }
                                let circuits = self.relays.circuits_to(p, now);
                                if circuits.is_empty() {
                                    continue;
                                }
                                circuits_left -= 1;
                                // One relay at a time: each try costs a circuit token there.
                                DialOpts::peer_id(p)
                                    .addresses(circuits)
                                    .condition(PeerCondition::DisconnectedAndNotDialing)
                                    .override_dial_concurrency_factor(NonZeroU8::MIN)
                                    .build()
                            };
                            let _ = self.swarm.dial(opts);
                        }
                    }
                }
                kad::QueryResult::PutRecord(result) => {
                    let Some(doc) = self.publisher.current() else {
                        return;
                    };
                    let key = kad::RecordKey::new(&dht_key(&doc.doc().uuid()));
                    let ok = match result {
                        Ok(_) => {
                            info!(seq = doc.doc().seq, "identity document published");
                            true
                        }
                        Err(e) if e.key() == &key => {
                            debug!(error = ?e, "publish failed; will retry");
                            false
                        }
                        Err(_) => return,
                    };
                    self.publisher.on_put_result(ok, Instant::now());
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// The DHT record for a document, expiring with it.
pub(super) fn record_for(doc: &SignedDocument, now: u64) -> kad::Record {
    let mut record = kad::Record::new(dht_key(&doc.doc().uuid()), doc.bytes().to_vec());
    record.expires =
        Some(Instant::now() + Duration::from_secs(doc.doc().expires.saturating_sub(now)));
    record
}

/// The UUID named by a DHT key `/ptpchat/id/<uuid>` (lowercase, hyphenated only).
fn uuid_from_dht_key(key: &[u8]) -> Option<Uuid> {
    let s = std::str::from_utf8(key)
        .ok()?
        .strip_prefix("/ptpchat/id/")?;
    let uuid = Uuid::parse_str(s).ok()?;
    (uuid.hyphenated().to_string() == s).then_some(uuid)
}

/// The directory cache's writes, on a thread of their own: each is a durable redb commit,
/// which would otherwise hold up the event loop (and the runtime thread under it) for an
/// fsync per accepted DHT record or lookup result. A cache write nobody waits for, though
/// readers of the cache see it at once; when the queue is full it is dropped. Dropping
/// this waits for the queued writes, so the database is closed when the event loop is gone.
pub(super) struct CacheWriter {
    store: Store,
    writer: Option<crate::store::Writer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CacheWriter {
    pub fn new(store: &Store) -> Self {
        let (writer, thread) = store.writer();
        CacheWriter {
            store: store.clone(),
            writer: Some(writer),
            thread,
        }
    }

    pub fn put(&self, doc: &SignedDocument, now: u64) {
        let queued = self
            .writer
            .as_ref()
            .is_some_and(|w| self.store.cache_document_behind(w, doc, now));
        if !queued {
            debug!("directory cache write dropped: its queue is full");
        }
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dht_keys_must_be_canonical() {
        let u = Uuid::new_v4();
        assert_eq!(uuid_from_dht_key(&dht_key(&u)), Some(u));
        assert_eq!(
            uuid_from_dht_key(format!("/ptpchat/id/{}", u.simple()).as_bytes()),
            None
        );
        assert_eq!(
            uuid_from_dht_key(
                format!("/ptpchat/id/{}", u.hyphenated().to_string().to_uppercase()).as_bytes()
            ),
            None
        );
        assert_eq!(uuid_from_dht_key(b"/ipfs/whatever"), None);
        assert_eq!(uuid_from_dht_key(&[0xff, 0xfe]), None);
    }
}

//! The one task that owns the [`Swarm`]: it serves [`Command`]s from clients, answers
//! peers, validates everything the DHT asks it to store, and keeps our identity document
//! published.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU8;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::{
    autonat, dcutr, gossipsub, identify, kad, mdns,
    multiaddr::Protocol,
    relay, request_response,
    swarm::{
        dial_opts::{DialOpts, PeerCondition},
        ConnectionId, SwarmEvent,
    },
    Multiaddr, PeerId, Swarm,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use uuid::Uuid;

mod connect;
mod relays;

pub use connect::{ConnectOutcome, ConnectRequestView};

use super::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use super::dial;
use super::gossip_limits::GossipLimits;
use super::ratelimit::RateLimiter;
use super::{Command, GossipEvent, GossipIn, LookupError, PeerInfo, Status};
use super::{EventLoopHooks, InboundVerb};
use crate::config::{Mode, NodeConfig};
use crate::counters::{Counter, Counters};
use crate::identity::{dht_key, Identity, SignedDocument};
use crate::store::Store;
use crate::unix_now;
use crate::wire::frame as channel_frame;
use crate::wire::verbs::{Request, Response};

/// How often our identity document is re-issued (it is valid for 14 days).
const REPUBLISH_EVERY: Duration = Duration::from_secs(12 * 3600);
/// Wait after a change of reachability before publishing, to batch address events.
const PUBLISH_DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest wait between retries of a failed publish.
const MAX_PUBLISH_BACKOFF: Duration = Duration::from_secs(60);
/// Most connected peers asked directly when the DHT has no answer.
const FALLBACK_FETCH_PEERS: usize = 8;
/// A lookup stops asking the DHT once this many answers carried a valid document...
const LOOKUP_QUORUM: u32 = 3;
/// ...or this long after the first valid one came: otherwise one peer that has gone away
/// holds the answer back for a whole dial timeout (5 s over QUIC).
const LOOKUP_GRACE: Duration = Duration::from_millis(500);
/// Most addresses taken from one peer's identify message.
const MAX_ADDRS_PER_PEER: usize = 8;
/// Most providers a private node dials over its relays' circuits after one lookup.
const MAX_PROVIDER_CIRCUIT_DIALS: usize = 4;
/// Most providers of one key dialed after a provider lookup.
const MAX_PROVIDER_DIALS: usize = 20;
/// How often slow housekeeping runs (relay reservations retried, hole punching timed out).
const TICK: Duration = Duration::from_secs(2);
/// Gossip messages waiting for the channel service; more are ignored (not forwarded).
pub(crate) const GOSSIP_QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<SignedDocument, LookupError>>;

/// A `whois` in progress: the best valid document so far and who waits for it.
struct Lookup {
    uuid: Uuid,
    best: Option<SignedDocument>,
    replies: Vec<Reply>,
    /// Direct GETCERTIFICATE requests still outstanding (fallback phase).
    fetches: usize,
    dht_done: bool,
    /// Peers that had answered the DHT query before its first valid document arrived, plus
    /// the one that sent it: an upper bound on the lookup's hop count.
    answered_at_first: Option<u32>,
    /// The DHT query, while it runs.
    query: Option<kad::QueryId>,
    /// Valid documents received from the DHT so far.
    records: u32,
    /// When the query is finished if it has not ended by itself (set by the first valid
    /// document).
    grace_until: Option<Instant>,
}

struct PublishState {
    /// When to publish next.
    due: Instant,
    /// Current retry delay after a failure.
    backoff: Duration,
    /// The last PUT did not reach any peer; retry when a peer connects.
    failed: bool,
    current: Option<SignedDocument>,
    /// The reach addresses `current` was issued with.
    reach: Vec<Multiaddr>,
    /// When `current` was issued.
    issued_at: Instant,
}

/// Where a user node's event loop hands work to the messenger and the channel service.
pub struct UserHooks {
    pub messaging: EventLoopHooks,
    pub gossip: mpsc::Sender<GossipEvent>,
    /// CHANNEL-HISTORY requests, for the channel service to answer.
    pub history: mpsc::Sender<InboundVerb>,
}

/// The event loop. Create with [`EventLoop::new`], run with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    store: Store,
    identity: Option<Identity>,
    mode: Mode,
    public: bool,
    /// Who we may dial directly, and at which addresses.
    dial_policy: dial::DialPolicy,
    lookups: HashMap<u64, Lookup>,
    next_lookup: u64,
    lookup_stats: crate::net::LookupStats,
    lookup_queries: HashMap<kad::QueryId, u64>,
    lookup_fetches: HashMap<request_response::OutboundRequestId, u64>,
    direct_fetches: HashMap<request_response::OutboundRequestId, (Uuid, Reply)>,
    publish: PublishState,
    peers: HashMap<PeerId, PeerState>,
    nat: autonat::NatStatus,
    put_limiter: RateLimiter<PeerId>,
    request_limiter: RateLimiter<PeerId>,
    /// MESSAGE and CHUNK have their own, larger allowance: a batch or a file transfer is
    /// many requests, and their real bound is the messenger's 64 handlers.
    message_limiter: RateLimiter<PeerId>,
    rejected: Counters,
    /// Channels to the messenger (user nodes only).
    hooks: Option<EventLoopHooks>,
    /// Writes to the directory cache, off the event loop (see [`CacheWriter`]).
    cache: CacheWriter,
    /// Mailbox verbs go to the mailbox service (relays with mailboxes only).
    mailbox: Option<mpsc::Sender<InboundVerb>>,
    channel_history: Option<mpsc::Sender<InboundVerb>>,
    /// Inbound MESSAGE/CHUNK requests handed to the messenger (or mailbox verbs handed to
    /// the mailbox service), awaiting its answer.
    handed_over: HashMap<u64, request_response::ResponseChannel<Response>>,
    next_token: u64,
    /// Our own verb requests awaiting answers.
    outbound:
        HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Response, String>>>,
    /// Our listen addresses (with `/p2p/`), for whoever waits for them (relay output, tests).
    listen_watch: watch::Sender<Vec<Multiaddr>>,
    /// Gossip for the channel service (user nodes only; a relay validates announcements itself).
    gossip: Option<mpsc::Sender<GossipEvent>>,
    provider_limiter: RateLimiter<PeerId>,
    /// Buckets per forwarding peer and per author, checked before a frame is queued.
    gossip_limits: GossipLimits,
    /// Provider lookups whose results we dial.
    provider_queries: HashSet<kad::QueryId>,
    relays: relays::Relays,
    /// Every configured listen address is a loopback one (tests, a local relay).
    loopback_only: bool,
    /// `--private-ips`: LAN addresses count as reachable.
    private_ips: bool,
    connects: connect::Connects,
    connect_limiter: RateLimiter<PeerId>,
}

struct PeerState {
    /// Each open connection's remote address, and whether it runs over a relay.
    conns: HashMap<ConnectionId, (Multiaddr, bool)>,
    agent: Option<String>,
}

impl PeerState {
    /// A direct connection's address if there is one, else a relayed one's (and which).
    fn addr(&self) -> Option<(&Multiaddr, bool)> {
        self.conns
            .values()
            .find(|(_, relayed)| !relayed)
            .or_else(|| self.conns.values().next())
            .map(|(a, r)| (a, *r))
    }

    /// A direct connection's address.
    fn direct_addr(&self) -> Option<&Multiaddr> {
        self.addr().filter(|(_, relayed)| !relayed).map(|(a, _)| a)
    }
}

impl EventLoop {
    /// Prepares the loop; `identity` is `None` for a relay (it publishes no document).
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        store: Store,
        identity: Option<Identity>,
        config: &NodeConfig,
        counters: Counters,
        hooks: Option<UserHooks>,
    ) -> Self {
        let mut swarm = swarm;
        for addr in &config.external {
            swarm.add_external_address(addr.clone());
        }
        let (hooks, gossip, channel_history) = match hooks {
            Some(h) => (Some(h.messaging), Some(h.gossip), Some(h.history)),
            None => (None, None, None),
        };
        EventLoop {
            cache: CacheWriter::new(&store),
            swarm,
            commands,
            store,
            identity,
            mode: config.mode,
            public: config.public,
            dial_policy: dial::DialPolicy {
                private_node: config.mode == Mode::User && !config.public,
                private_ips: config.private_ips,
            },
            lookups: HashMap::new(),
            next_lookup: 0,
            lookup_queries: HashMap::new(),
            lookup_stats: Default::default(),
            lookup_fetches: HashMap::new(),
            direct_fetches: HashMap::new(),
            publish: PublishState {
                due: Instant::now() + PUBLISH_DEBOUNCE,
                backoff: Duration::from_secs(1),
                failed: false,
                current: None,
                reach: Vec::new(),
                issued_at: Instant::now(),
            },
            peers: HashMap::new(),
            nat: autonat::NatStatus::Unknown,
            put_limiter: RateLimiter::new(20, 0.5, 4096),
            request_limiter: RateLimiter::new(50, 10.0, 4096),
            message_limiter: RateLimiter::new(1024, 1000.0, 4096),
            rejected: counters,
            hooks,
            mailbox: None,
            channel_history,
            handed_over: HashMap::new(),
            next_token: 0,
            outbound: HashMap::new(),
            listen_watch: watch::Sender::new(Vec::new()),
            gossip,
            provider_limiter: RateLimiter::new(64, 1.0, 4096),
            gossip_limits: GossipLimits::default(),
            provider_queries: HashSet::new(),
            relays: {
                let mut r = relays::Relays::default();
                for addr in &config.relays {
                    if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                        r.add_explicit(peer, addr.clone());
                    }
                }
                r
            },
            loopback_only: !config.listen.is_empty() && config.listen.iter().all(is_loopback),
            private_ips: config.private_ips,
            connects: connect::Connects::new(config.accept_connect),
            // A burst of 10 requests, then one every 2 s, per peer.
            connect_limiter: RateLimiter::new(10, 0.5, 4096),
        }
    }

    /// Follows our listen addresses as they are bound and expire.
    pub(crate) fn watch_listen_addrs(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.listen_watch.subscribe()
    }

    fn update_listen_watch(&mut self) {
        let me = *self.swarm.local_peer_id();
        let addrs: Vec<Multiaddr> = self
            .swarm
            .listeners()
            .map(|a| a.clone().with(Protocol::P2p(me)))
            .collect();
        self.listen_watch.send_replace(addrs);
    }

    /// Re-inserts documents remembered from before a restart into the DHT store.
    pub(crate) fn seed_dht_from_store(&mut self) {
        let now = unix_now();
        match self.store.cached_documents(now) {
            Ok(docs) => {
                use libp2p::kad::store::RecordStore;
                for doc in docs {
                    let record = record_for(&doc, now);
                    let _ = self.swarm.behaviour_mut().kad.store_mut().put(record);
                }
            }
            Err(e) => warn!(error = %e, "could not read the directory cache"),
        }
    }

    /// Starts a DHT bootstrap (fills the routing table); a no-op without known peers.
    pub(crate) fn bootstrap_dht(&mut self) {
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }

    /// Runs until every [`super::Client`] is dropped.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let publish_at = tokio::time::Instant::from_std(self.publish.due);
            let grace = self.next_lookup_grace();
            let grace_at = tokio::time::Instant::from_std(grace.unwrap_or(self.publish.due));
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => {
                    self.maybe_reserve();
                    self.expire_punches();
                }
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = tokio::time::sleep_until(publish_at), if self.identity.is_some() => self.publish_document(),
                _ = tokio::time::sleep_until(grace_at), if grace.is_some() => self.end_lookup_graces(),
            }
        }
        debug!("event loop stopped");
    }

    fn count(&mut self, what: Counter) {
        self.rejected.count(what);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let mut peers: Vec<PeerInfo> = self
                    .peers
                    .iter()
                    .filter_map(|(p, s)| {
                        let (addr, relayed) = s.addr()?;
                        Some(PeerInfo {
                            peer_id: p.to_string(),
                            addr: addr.to_string(),
                            relayed,
                            agent: s.agent.clone(),
                        })
                    })
                    .collect();
                peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(peers);
            }
            Command::Whois { uuid, reply } => self.start_lookup(uuid, reply),
            Command::FetchCertificate { peer, uuid, reply } => {
                let id = self.swarm.behaviour_mut().verbs.send_request(
                    &peer,
                    Request::GetCertificate {
                        uuid: *uuid.as_bytes(),
                    },
                );
                self.direct_fetches.insert(id, (uuid, reply));
            }
            Command::Dial { addr, reply } => {
                let _ = reply.send(self.dial(addr).map_err(|e| e.to_string()));
            }
            Command::Request {
                peer,
                addrs,
                why,
                request,
                reply,
            } => match self.send_verb(peer, request, addrs, why) {
                Ok(id) => {
                    self.outbound.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Subscribe { topic, on } => self.subscribe(&topic, on),
            Command::Publish { topic, data, reply } => {
                let topic = gossipsub::IdentTopic::new(topic);
                let g = &mut self.swarm.behaviour_mut().gossipsub;
                let result = g
                    .publish(topic.clone(), data)
                    .map(|_| {
                        g.all_peers()
                            .filter(|(_, t)| t.contains(&&topic.hash()))
                            .count()
                    })
                    .map_err(|e| match e {
                        gossipsub::PublishError::NoPeersSubscribedToTopic => {
                            "no peer of this channel is connected".to_string()
                        }
                        e => e.to_string(),
                    });
                let _ = reply.send(result);
            }
            Command::Validate {
                id,
                source,
                acceptance,
            } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Provide { key, on } => {
                let key = kad::RecordKey::new(&key);
                let kad = &mut self.swarm.behaviour_mut().kad;
                if on {
                    if let Err(e) = kad.start_providing(key.clone()) {
                        warn!(error = ?e, "cannot provide a channel key");
                    }
                    let q = kad.get_providers(key);
                    self.provider_queries.insert(q);
                } else {
                    kad.stop_providing(&key);
                }
            }
            Command::FindProviders { key } => {
                let q = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                self.provider_queries.insert(q);
            }
            Command::GossipPeers { topic, reply } => {
                let hash = gossipsub::IdentTopic::new(topic).hash();
                let g = &self.swarm.behaviour().gossipsub;
                let peers = g
                    .all_peers()
                    .filter(|(_, t)| t.contains(&&hash))
                    .map(|(p, _)| (*p, g.peer_score(p).unwrap_or(0.0)))
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Connect { peer, addrs, reply } => self.start_connect(peer, addrs, reply),
            Command::Disconnect { peer, reply } => {
                self.withdraw_consent(&peer);
                let _ = reply.send(self.swarm.disconnect_peer_id(peer).is_ok());
            }
            Command::ConnectRequests(reply) => {
                let _ = reply.send(self.connect_requests());
            }
            Command::AnswerConnect {
                request_id,
                accept,
                reply,
            } => {
                let _ = reply.send(self.answer_connect(request_id, accept));
            }
            Command::Respond { token, response } => {
                if let Some(channel) = self.handed_over.remove(&token) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .verbs
                        .send_response(channel, response);
                }
            }
        }
    }

    /// Subscribes to (or leaves) a gossipsub topic, with our score parameters for it.
    pub(crate) fn subscribe(&mut self, topic: &str, on: bool) {
        let topic = gossipsub::IdentTopic::new(topic);
        let g = &mut self.swarm.behaviour_mut().gossipsub;
        if on {
            let _ = g.set_topic_params(topic.clone(), super::behaviour::topic_score_params());
            if let Err(e) = g.subscribe(&topic) {
                warn!(error = %e, "cannot subscribe to a gossip topic");
            }
        } else {
            g.unsubscribe(&topic);
        }
    }

    /// Sends a verb to `peer`, dialing it only where the dial policy allows for `why`: a
    /// private node reaches a peer its user did not choose over a relay circuit or over a
    /// connection it already holds, never by a direct dial of its own.
    pub(crate) fn send_verb(
        &mut self,
        peer: PeerId,
        request: Request,
        addrs: Vec<Multiaddr>,
        why: dial::DialReason,
    ) -> Result<request_response::OutboundRequestId, String> {
        let addrs: Vec<Multiaddr> = self
            .dial_policy
            .addresses(addrs, why)
            .into_iter()
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        match why {
            dial::DialReason::Own => self.swarm.behaviour_mut().dial_gate.pin(peer),
            dial::DialReason::Chosen => self.swarm.behaviour_mut().dial_gate.choose(peer),
            dial::DialReason::Automatic => {}
        }
        if self.dial_policy.may_dial_direct(why) || self.swarm.is_connected(&peer) {
            return Ok(self
                .swarm
                .behaviour_mut()
                .verbs
                .send_request_with_addresses(&peer, request, addrs));
        }
        if addrs.is_empty() {
            return Err("no relayed route to this peer".into());
        }
        // Our own dial, at the circuits only: request-response would dial the peer with
        // whatever other behaviours (Kademlia) know of it, direct addresses included; its
        // own dial then finds ours under way and is dropped.
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        Ok(self
            .swarm
            .behaviour_mut()
            .verbs
            .send_request(&peer, request))
    }

    /// Dials `addr`, telling Kademlia about the peer if the address names it.
    pub(crate) fn dial(&mut self, addr: Multiaddr) -> Result<(), libp2p::swarm::DialError> {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            // Only our own configured peers (bootstrap, relays) are dialed by address.
            self.swarm.behaviour_mut().dial_gate.pin(peer);
            let mut bare = addr.clone();
            bare.pop();
            self.swarm.behaviour_mut().kad.add_address(&peer, bare);
        }
        self.swarm.dial(DialOpts::from(addr))
    }

    fn status(&mut self) -> Status {
        let mut listen: Vec<String> = self.swarm.listeners().map(|a| a.to_string()).collect();
        listen.sort();
        Status {
            uuid: self.identity.as_ref().map(|i| i.uuid()),
            peer_id: self.swarm.local_peer_id().to_string(),
            mode: match self.mode {
                Mode::User => "user",
                Mode::Relay => "relay",
            },
            listen_addrs: listen,
            external_addrs: self
                .swarm
                .external_addresses()
                .map(|a| a.to_string())
                .collect(),
            nat: match self.nat {
                autonat::NatStatus::Public(_) => "public",
                autonat::NatStatus::Private => "private",
                autonat::NatStatus::Unknown => "unknown",
            },
            connected_peers: self.swarm.connected_peers().count(),
            relays: self.relays.accepted(),
            channels: Vec::new(),
            dht_records: {
                use libp2p::kad::store::RecordStore;
                self.swarm.behaviour_mut().kad.store_mut().records().count()
            },
            published_seq: self.publish.current.as_ref().map(|d| d.doc().seq),
            rejected: {
                let mut r = self.rejected.snapshot();
                let ip = self.swarm.behaviour().ip_limits.refused();
                if ip > 0 {
                    r.insert(Counter::ConnectionIpLimit.as_str(), ip);
                }
                r
            },
            lookups: self.lookup_stats,
            mail: if self.mailbox.is_some() {
                self.store.mail_totals().ok()
            } else {
                None
            },
        }
    }

    // ---- publishing our identity document ----

    /// The addresses our document advertises: our relay circuit addresses, and direct
    /// ones only if the user opted to be public and we are not found behind a NAT.
    fn reach(&self) -> Vec<Multiaddr> {
        let circuits: Vec<Multiaddr> = self
            .swarm
            .listeners()
            .filter(|a| is_relayed(a))
            .cloned()
            .collect();
        if !self.public || matches!(self.nat, autonat::NatStatus::Private) {
            return circuits;
        }
        let external: Vec<Multiaddr> = self
            .swarm
            .external_addresses()
            .filter(|a| !is_relayed(a))
            .cloned()
            .collect();
        let mut direct = if !external.is_empty() {
            external
        } else {
            let listen: Vec<Multiaddr> = self
                .swarm
                .listeners()
                .filter(|a| !is_relayed(a))
                .cloned()
                .collect();
            let non_loopback: Vec<Multiaddr> =
                listen.iter().filter(|a| !is_loopback(a)).cloned().collect();
            if non_loopback.is_empty() {
                listen
            } else {
                non_loopback
            }
        };
        // Room for the circuits (our mailboxes) within the document's address limit.
        direct.truncate(crate::identity::MAX_REACH.saturating_sub(circuits.len()));
        direct.extend(circuits);
        direct
    }

    fn publish_document(&mut self) {
        let now = unix_now();
        let reach = self.reach();
        // A retry after a failed PUT re-sends the same document while it is still current.
        if let Some(doc) = &self.publish.current {
            if self.publish.failed
                && reach == self.publish.reach
                && self.publish.issued_at.elapsed() < REPUBLISH_EVERY
            {
                let record = record_for(doc, now);
                self.put_own_record(record);
                return;
            }
        }
        let Some(identity) = self.identity.as_mut() else {
            return;
        };
        if identity.rotate_encryption_key_if_due(now) {
            info!("encryption key rotated");
        }
        let doc = identity.issue_document(&reach, now);
        let keys = Arc::new(identity.message_keys(doc.clone()));
        if let Err(e) = self.store.save_identity(identity) {
            warn!(error = %e, "could not save identity; not publishing");
            self.publish.due = Instant::now() + self.publish.backoff;
            return;
        }
        // Check our own document as every other node will: a clock far off, a corrupt
        // chain or an over-long one would otherwise fail silently everywhere else.
        if let Err(e) = SignedDocument::decode_for(doc.bytes(), &doc.doc().uuid(), now) {
            self.count(Counter::OwnDocumentInvalid);
            tracing::error!(error = %e, "our own identity document does not verify; peers will refuse it (is the clock right?)");
        }
        self.cache.put(&doc, now);
        if let Some(hooks) = &self.hooks {
            hooks.keys.send_replace(Some(keys));
        }
        let record = record_for(&doc, now);
        self.publish.current = Some(doc);
        self.publish.reach = reach;
        self.publish.issued_at = Instant::now();
        self.put_own_record(record);
    }

    /// Sends our document to the DHT and schedules the next regular re-issue (a failed PUT
    /// brings it forward, see the PutRecord result handling).
    fn put_own_record(&mut self, record: kad::Record) {
        // Only store limits can fail locally, and they do not apply to our own record.
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, kad::Quorum::One)
        {
            warn!(error = ?e, "could not store our own document locally");
        }
        self.publish.due = Instant::now() + REPUBLISH_EVERY;
    }

    fn schedule_publish_soon(&mut self) {
        let soon = Instant::now() + PUBLISH_DEBOUNCE;
        if self.identity.is_some() && self.publish.due > soon {
            self.publish.due = soon;
        }
    }

    // ---- lookups ----

    fn start_lookup(&mut self, uuid: Uuid, reply: Reply) {
        // Coalesce with a lookup already in flight for the same UUID.
        if let Some(l) = self.lookups.values_mut().find(|l| l.uuid == uuid) {
            l.replies.push(reply);
            return;
        }
        let id = self.next_lookup;
        self.next_lookup += 1;
        let query = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(kad::RecordKey::new(&dht_key(&uuid)));
        self.lookup_queries.insert(query, id);
        self.lookups.insert(
            id,
            Lookup {
                uuid,
                best: None,
                replies: vec![reply],
                fetches: 0,
                dht_done: false,
                answered_at_first: None,
                query: Some(query),
                records: 0,
                grace_until: None,
            },
        );
    }

    /// Considers a candidate document for lookup `id`; bad ones are counted and dropped.
    /// Returns whether it was valid.
    fn offer(&mut self, id: u64, bytes: &[u8], from: Option<PeerId>) -> bool {
        let Some(uuid) = self.lookups.get(&id).map(|l| l.uuid) else {
            return false;
        };
        match SignedDocument::decode_for(bytes, &uuid, unix_now()) {
            Ok(doc) => {
                let lookup = self.lookups.get_mut(&id).expect("checked above");
                let better = match &lookup.best {
                    Some(best) => doc.may_replace(best) == Ok(true),
                    None => true,
                };
                if better {
                    lookup.best = Some(doc);
                }
                true
            }
            Err(e) => {
                self.count(Counter::LookupInvalidDocument);
                crate::warn_remote!("lookup_bad_document", peer = ?from, %uuid, error = %e, "ignored invalid identity document in lookup");
                false
            }
        }
    }

    /// Stops lookup `id`'s DHT query; Kademlia then reports it finished as usual.
    fn finish_dht_query(&mut self, id: u64) {
        let Some(query) = self.lookups.get_mut(&id).and_then(|l| l.query.take()) else {
            return;
        };
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
            q.finish();
        }
    }

    /// When the next lookup's grace after its first valid document runs out.
    fn next_lookup_grace(&self) -> Option<Instant> {
        self.lookups
            .values()
            .filter(|l| l.query.is_some())
            .filter_map(|l| l.grace_until)
            .min()
    }

    fn end_lookup_graces(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.query.is_some() && l.grace_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.finish_dht_query(id);
        }
    }

    fn dht_lookup_finished(&mut self, id: u64) {
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        lookup.dht_done = true;
        if lookup.best.is_none() {
            // Fall back to asking connected peers directly.
            let uuid = lookup.uuid;
            let peers: Vec<PeerId> = self
                .swarm
                .connected_peers()
                .take(FALLBACK_FETCH_PEERS)
                .cloned()
                .collect();
            for peer in peers {
                let rid = self.swarm.behaviour_mut().verbs.send_request(
                    &peer,
                    Request::GetCertificate {
                        uuid: *uuid.as_bytes(),
                    },
                );
                self.lookup_fetches.insert(rid, id);
                if let Some(l) = self.lookups.get_mut(&id) {
                    l.fetches += 1;
                }
            }
        }
        self.maybe_finish_lookup(id);
    }

    fn maybe_finish_lookup(&mut self, id: u64) {
        let done = self
            .lookups
            .get(&id)
            .is_some_and(|l| l.dht_done && l.fetches == 0);
        if !done {
            return;
        }
        let Some(lookup) = self.lookups.remove(&id) else {
            return;
        };
        let now = unix_now();
        // The document we hold ourselves is among the candidates already: Kademlia offers
        // the local record first (the DHT store is seeded from the cache and updated after
        // every lookup), so peers answering with an older one cannot take us back.
        let result = match lookup.best {
            Some(doc) => {
                self.cache.put(&doc, now);
                // Keep a copy in the DHT store too, so we can answer others.
                let _ = self.accept_into_dht(&doc, now);
                Ok(doc)
            }
            None => match self.store.cached_document(&lookup.uuid, now) {
                Ok(Some(doc)) => Ok(doc),
                _ => Err(LookupError::NotFound(lookup.uuid)),
            },
        };
        for reply in lookup.replies {
            let _ = reply.send(result.clone());
        }
    }

    // ---- DHT record validation ----

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
    fn accept_into_dht(
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

    // ---- gossip ----

    fn on_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let msg = GossipIn {
                    id: message_id,
                    source: propagation_source,
                    author: message.source,
                    topic: message.topic.into_string(),
                    data: message.data,
                };
                // Before the queue and before any signature check: a flood beyond the
                // buckets costs us a hash lookup, and honest frames keep their place.
                let announce = msg.topic == channel_frame::ANNOUNCE_TOPIC;
                if let Err(why) =
                    self.gossip_limits
                        .admit(msg.source, msg.author, announce, Instant::now())
                {
                    self.count(why.counter());
                    debug!(peer = %msg.source, reason = why.counter().as_str(), "gossip over its rate");
                    self.report(msg.id, msg.source, gossipsub::MessageAcceptance::Ignore);
                    return;
                }
                match &self.gossip {
                    Some(tx) => {
                        if let Err(e) = tx.try_send(GossipEvent::Message(msg)) {
                            let GossipEvent::Message(msg) = e.into_inner() else {
                                return;
                            };
                            self.count(Counter::GossipQueueFull);
                            self.report(msg.id, msg.source, gossipsub::MessageAcceptance::Ignore);
                        }
                    }
                    None => self.validate_announcement(msg),
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some(tx) = &self.gossip {
                    let _ = tx.try_send(GossipEvent::Subscribed {
                        peer: peer_id,
                        topic: topic.into_string(),
                    });
                }
            }
            _ => {}
        }
    }

    fn report(
        &mut self,
        id: gossipsub::MessageId,
        source: PeerId,
        a: gossipsub::MessageAcceptance,
    ) {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &source, a);
    }

    /// A relay has no channel service: it forwards only valid public-channel announcements
    /// and nothing on any other topic.
    fn validate_announcement(&mut self, msg: GossipIn) {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        if msg.topic != channel_frame::ANNOUNCE_TOPIC {
            self.report(msg.id, msg.source, Ignore);
            return;
        }
        let now = unix_now();
        let check = |from: &Uuid, bytes: &[u8]| {
            SignedDocument::decode_for(bytes, from, now)
                .map_err(|e| crate::wire::envelope::Reject::BadSenderDocument(e.to_string()))
        };
        let verdict = channel_frame::verify(
            &msg.data,
            channel_frame::Via::Gossip(msg.author),
            crate::unix_now_ms(),
            &check,
            None,
        )
        .and_then(|c| {
            if c.body.kind == channel_frame::CHANNEL && !c.body.private {
                Ok(())
            } else {
                Err(channel_frame::Drop::BadKind)
            }
        });
        let acceptance = match verdict {
            Ok(()) => Accept,
            Err(channel_frame::Drop::Stale) => Ignore,
            Err(d) => {
                self.count(d.counter());
                Reject
            }
        };
        self.report(msg.id, msg.source, acceptance);
    }

    // ---- verbs ----

    fn on_request(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: request_response::ResponseChannel<Response>,
    ) {
        let is_message = matches!(
            request,
            Request::Message { .. }
                | Request::Chunk { .. }
                | Request::Deposit { .. }
                | Request::MailAck { .. }
        );
        let limiter = if is_message {
            &mut self.message_limiter
        } else {
            &mut self.request_limiter
        };
        let response = if !limiter.allow(&peer, Instant::now()) {
            self.count(Counter::RequestRateLimited);
            Response::Nack {
                reason: "rate_limited".into(),
            }
        } else {
            match request {
                Request::Message { .. }
                | Request::Chunk { .. }
                | Request::Deposit { .. }
                | Request::MailChallenge
                | Request::MailLogin { .. }
                | Request::MailAck { .. }
                | Request::ChannelHistory { .. } => return self.hand_over(peer, request, channel),
                Request::GetCertificate { uuid } => self.certificate_for(&Uuid::from_bytes(uuid)),
                Request::Connect { doc } => self.on_connect_request(peer, &doc),
                Request::ConnectAnswer { accept } => self.on_connect_answer(peer, accept),
                Request::TooLarge => {
                    self.count(Counter::RequestTooLarge);
                    crate::warn_remote!("request_too_large", %peer, "request over the size limit");
                    Response::Nack {
                        reason: "too_large".into(),
                    }
                }
                Request::Malformed(e) => {
                    self.count(Counter::RequestMalformed);
                    crate::warn_remote!("request_malformed", %peer, error = %e, "malformed request");
                    Response::Nack {
                        reason: "malformed".into(),
                    }
                }
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .verbs
            .send_response(channel, response);
    }

    /// Gives a MESSAGE or CHUNK to the messenger, a CHANNEL-HISTORY to the channel service,
    /// or a mailbox verb to the mailbox service; the service answers later through
    /// [`Command::Respond`]. A node without that service (`no_user` or `unknown_channel` on
    /// a relay, `no_mailbox` on a user node or a relay without mailboxes) or a full queue
    /// (`busy`) is answered at once.
    fn hand_over(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: request_response::ResponseChannel<Response>,
    ) {
        let (target, absent, busy) = match request {
            Request::Message { .. } | Request::Chunk { .. } => (
                self.hooks.as_ref().map(|h| &h.inbound),
                "no_user",
                Counter::InboundBusy,
            ),
            Request::ChannelHistory { .. } => (
                self.channel_history.as_ref(),
                "unknown_channel",
                Counter::HistoryBusy,
            ),
            _ => (self.mailbox.as_ref(), "no_mailbox", Counter::MailBusy),
        };
        let token = self.next_token;
        self.next_token += 1;
        let reason = match target {
            None => absent,
            Some(tx) => match tx.try_send(InboundVerb {
                token,
                peer,
                request,
            }) {
                Ok(()) => {
                    self.handed_over.insert(token, channel);
                    return;
                }
                Err(_) => {
                    self.count(busy);
                    "busy"
                }
            },
        };
        let _ = self.swarm.behaviour_mut().verbs.send_response(
            channel,
            Response::Nack {
                reason: reason.into(),
            },
        );
    }

    /// Hands mailbox verbs to the mailbox service from now on (relays).
    pub(crate) fn set_mailbox(&mut self, tx: mpsc::Sender<InboundVerb>) {
        self.mailbox = Some(tx);
    }

    fn certificate_for(&mut self, uuid: &Uuid) -> Response {
        use libp2p::kad::store::RecordStore;
        let now = unix_now();
        if let Some(doc) = &self.publish.current {
            if doc.doc().uuid() == *uuid {
                return Response::Certificate {
                    doc: doc.bytes().to_vec(),
                };
            }
        }
        // A user node's store and cache hold everyone its user wrote to, heard from or
        // looked up: answering from them would tell a stranger who its contacts are.
        // Serving other documents is a relay's role (it serves the DHT).
        if self.mode == Mode::User {
            return Response::NotFound;
        }
        let key = kad::RecordKey::new(&dht_key(uuid));
        if let Some(rec) = self.swarm.behaviour_mut().kad.store_mut().get(&key) {
            if SignedDocument::decode_for(&rec.value, uuid, now).is_ok() {
                return Response::Certificate {
                    doc: rec.value.clone(),
                };
            }
        }
        match self.store.cached_document(uuid, now) {
            Ok(Some(doc)) => Response::Certificate {
                doc: doc.bytes().to_vec(),
            },
            _ => Response::NotFound,
        }
    }

    fn on_response(
        &mut self,
        peer: PeerId,
        id: request_response::OutboundRequestId,
        response: Result<Response, String>,
    ) {
        if self.on_connect_response(id, &response) {
            return;
        }
        if let Some(reply) = self.outbound.remove(&id) {
            let _ = reply.send(response);
            return;
        }
        let response = response.ok();
        if let Some((uuid, reply)) = self.direct_fetches.remove(&id) {
            let result = match response {
                Some(Response::Certificate { doc }) => {
                    match SignedDocument::decode_for(&doc, &uuid, unix_now()) {
                        Ok(d) => Ok(d),
                        Err(e) => {
                            self.count(Counter::CertificateInvalid);
                            crate::warn_remote!("bad_certificate", %peer, %uuid, error = %e, "peer sent an invalid certificate");
                            Err(LookupError::NotFound(uuid))
                        }
                    }
                }
                _ => Err(LookupError::NotFound(uuid)),
            };
            let _ = reply.send(result);
            return;
        }
        if let Some(lookup) = self.lookup_fetches.remove(&id) {
            if let Some(Response::Certificate { doc }) = response {
                self.offer(lookup, &doc, Some(peer));
            }
            if let Some(l) = self.lookups.get_mut(&lookup) {
                l.fetches = l.fetches.saturating_sub(1);
            }
            self.maybe_finish_lookup(lookup);
        }
    }

    // ---- swarm events ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let me = *self.swarm.local_peer_id();
                // A relay runs on a host its operator made reachable: its routable listen
                // addresses are what reservations hand out (LAN ones too with --private-ips,
                // loopback only if that is all it listens on).
                let usable = if is_loopback(&address) {
                    self.loopback_only
                } else {
                    self.private_ips || !is_lan(&address)
                };
                if self.mode == Mode::Relay && !is_relayed(&address) && usable {
                    self.swarm.add_external_address(address.clone());
                }
                info!(address = %address.clone().with(Protocol::P2p(me)), "listening");
                self.update_listen_watch();
                self.schedule_publish_soon();
            }
            SwarmEvent::ExpiredListenAddr { .. } => {
                self.update_listen_watch();
                self.schedule_publish_soon();
            }
            SwarmEvent::ExternalAddrConfirmed { .. } | SwarmEvent::ExternalAddrExpired { .. } => {
                self.schedule_publish_soon();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                let relayed = endpoint.is_relayed();
                if !relayed {
                    self.on_direct_connection(peer_id, &addr);
                }
                self.peers
                    .entry(peer_id)
                    .or_insert(PeerState {
                        conns: HashMap::new(),
                        agent: None,
                    })
                    .conns
                    .insert(connection_id, (addr, relayed));
                if let Some(hooks) = &self.hooks {
                    let _ = hooks.connected.send(peer_id);
                }
                if !relayed && self.relays.is_candidate(&peer_id) {
                    self.maybe_reserve();
                }
                if self.publish.failed {
                    self.publish.failed = false;
                    self.publish.due = Instant::now() + PUBLISH_DEBOUNCE;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                // Rate-limit buckets are kept (bounded): reconnecting must not refill them.
                if num_established == 0 {
                    self.peers.remove(&peer_id);
                } else if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.conns.remove(&connection_id);
                }
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.on_listener_closed(listener_id);
                self.update_listen_watch();
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, error = %error, "dial failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                // mDNS and inbound dials can bring any libp2p program; keep only ptpchat peers.
                if !info.protocols.contains(&crate::wire::verbs::PROTOCOL)
                    && !info.protocols.contains(&KAD_PROTOCOL)
                {
                    self.count(Counter::ForeignPeer);
                    debug!(peer = %peer_id, agent = %info.agent_version, "disconnecting a peer that speaks no ptpchat protocol");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.agent = Some(info.agent_version.chars().take(128).collect());
                }
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    let direct = self
                        .peers
                        .get(&peer_id)
                        .and_then(|p| p.direct_addr())
                        .cloned();
                    if let Some(addr) = direct {
                        self.relays.add_candidate(peer_id, addr);
                        self.maybe_reserve();
                    }
                }
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for addr in info.listen_addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut seen = HashSet::new();
                for (peer, addr) in found {
                    if seen.insert(peer) && !self.swarm.is_connected(&peer) {
                        // mDNS is the user's choice of its LAN (`--no-mdns` turns it off).
                        self.swarm.behaviour_mut().dial_gate.choose(peer);
                        let _ = self.swarm.dial(addr.with(Protocol::P2p(peer)));
                    }
                }
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                info!(?old, ?new, "NAT status changed");
                self.nat = new;
                self.maybe_reserve();
                self.release_relays_if_unwanted();
                self.schedule_publish_soon();
            }
            BehaviourEvent::RelayServer(relay::Event::ReservationReqDenied {
                src_peer_id, ..
            }) => {
                self.count(Counter::RelayReservationDenied);
                debug!(peer = %src_peer_id, "relay reservation refused (a limit)");
            }
            BehaviourEvent::RelayServer(relay::Event::CircuitReqDenied { src_peer_id, .. }) => {
                self.count(Counter::RelayCircuitDenied);
                debug!(peer = %src_peer_id, "relay circuit refused (a limit, or no reservation)");
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => self.on_reservation_accepted(relay_peer_id, renewal),
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => debug!(peer = %remote_peer_id, "hole punch succeeded"),
                Err(e) => {
                    debug!(peer = %remote_peer_id, error = %e, "hole punch failed");
                    self.on_hole_punch_failed(remote_peer_id);
                }
            },
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::Gossipsub(event) => self.on_gossip_event(event),
            BehaviourEvent::Verbs(event) => match event {
                request_response::Event::Message { peer, message, .. } => match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => self.on_request(peer, request, channel),
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => self.on_response(peer, request_id, Ok(response)),
                },
                request_response::Event::OutboundFailure {
                    peer,
                    request_id,
                    error,
                    ..
                } => {
                    debug!(%peer, %error, "request failed");
                    self.on_response(peer, request_id, Err(error.to_string()));
                }
                request_response::Event::InboundFailure { peer, error, .. } => {
                    debug!(%peer, %error, "inbound request failed");
                }
                request_response::Event::ResponseSent { .. } => {}
            },
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
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
                        if self.offer(lookup, &peer_record.record.value, peer_record.peer) {
                            let l = self.lookups.get_mut(&lookup).expect("offer checked");
                            l.records += 1;
                            if l.answered_at_first.is_none() {
                                // A record from our own store (no peer) took no hop.
                                l.answered_at_first = Some(match peer_record.peer {
                                    Some(_) => stats.num_successes() + 1,
                                    None => 0,
                                });
                                l.grace_until = Some(Instant::now() + LOOKUP_GRACE);
                            }
                            if l.records >= LOOKUP_QUORUM {
                                self.finish_dht_query(lookup);
                            }
                        }
                    }
                    if step.last {
                        self.lookup_queries.remove(&id);
                        if let Some(l) = self.lookups.get_mut(&lookup) {
                            l.query = None;
                        }
                        self.lookup_stats.done += 1;
                        self.lookup_stats.requests += u64::from(stats.num_requests());
                        if let Some(n) = self.lookups.get(&lookup).and_then(|l| l.answered_at_first)
                        {
                            self.lookup_stats.found += 1;
                            self.lookup_stats.hops_bound += u64::from(n);
                        }
                        self.dht_lookup_finished(lookup);
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
                    if let Some(doc) = &self.publish.current {
                        let key = kad::RecordKey::new(&dht_key(&doc.doc().uuid()));
                        match result {
                            Ok(_) => {
                                info!(seq = doc.doc().seq, "identity document published");
                                self.publish.backoff = Duration::from_secs(1);
                                self.publish.failed = false;
                            }
                            Err(e) if e.key() == &key => {
                                debug!(error = ?e, backoff = ?self.publish.backoff, "publish failed; will retry");
                                self.publish.failed = true;
                                self.publish.due = Instant::now() + self.publish.backoff;
                                self.publish.backoff =
                                    (self.publish.backoff * 2).min(MAX_PUBLISH_BACKOFF);
                            }
                            Err(_) => {}
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// The DHT record for a document, expiring with it.
fn record_for(doc: &SignedDocument, now: u64) -> kad::Record {
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

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The directory cache's writes, on a thread of their own: each is a durable redb commit,
/// which would otherwise hold up the event loop (and the runtime thread under it) for an
/// fsync per accepted DHT record or lookup result. A cache write nobody waits for, though
/// readers of the cache see it at once; when the queue is full it is dropped. Dropping
/// this waits for the queued writes, so the database is closed when the event loop is gone.
struct CacheWriter {
    store: Store,
    writer: Option<crate::store::Writer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CacheWriter {
    fn new(store: &Store) -> Self {
        let (writer, thread) = store.writer();
        CacheWriter {
            store: store.clone(),
            writer: Some(writer),
            thread,
        }
    }

    fn put(&self, doc: &SignedDocument, now: u64) {
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

/// A LAN or link-local address (RFC 1918, carrier-grade NAT, IPv6 unique-local and
/// link-local): not reachable from the internet.
fn is_lan(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => {
            let o = ip.octets();
            ip.is_private() || ip.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        Protocol::Ip6(ip) => {
            let first = ip.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
        _ => false,
    })
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_addresses_are_not_handed_out_by_a_relay() {
        let lan = |a: &str| is_lan(&a.parse().unwrap());
        assert!(lan("/ip4/10.1.2.3/tcp/4001"));
        assert!(lan("/ip4/192.168.0.9/udp/4001/quic-v1"));
        assert!(lan("/ip4/100.64.0.1/tcp/4001"));
        assert!(lan("/ip6/fd00::1/tcp/4001"));
        assert!(lan("/ip6/fe80::1/tcp/4001"));
        assert!(!lan("/ip4/198.51.100.7/tcp/4001"));
        assert!(!lan("/ip4/203.0.113.10/tcp/4001"));
        assert!(!lan("/ip6/2001:db8::1/tcp/4001"));
    }

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

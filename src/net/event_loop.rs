//! The one task that owns the [`Swarm`]. It routes: commands from clients, events from the
//! swarm and answers from the identity keeper go to the state machine they concern
//! ([`lookup`], [`publish`], [`relays`], [`connect`]) or to a service's queue, and the loop
//! carries out what comes back. It holds no secret key (the keeper signs) and writes
//! nothing to disk itself (the directory cache has its own writer thread).
//!
//! The loop's parts, each in its own file: [`dht`] (records peers ask us to store, query
//! results), [`gossip`] (rate buckets, relay announcements), [`verbs`] (inbound requests
//! and answers to ours).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures::StreamExt;
use libp2p::{
    autonat, kad, multiaddr::Protocol, request_response, swarm::ConnectionId, Multiaddr, PeerId,
    Swarm,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};
use uuid::Uuid;

mod commands;
mod connect;
mod dht;
mod gossip;
mod lookup;
mod publish;
mod reads;
mod relay_held;
mod relays;
mod swarm;
mod verbs;

pub use connect::{ConnectOutcome, ConnectRequestView};

use super::behaviour::Behaviour;
use super::dial;
use super::gossip_limits::GossipLimits;
use super::keeper::{Issued, Keeper};
use super::ratelimit::RateLimiter;
use super::{Command, GossipEvent, LookupError, NetError};
use super::{EventLoopHooks, InboundVerb};
use crate::config::{Mode, NodeConfig};
use crate::counters::{Counter, Counters};
use crate::identity::{dht_key, Identity, SignedDocument};
use crate::store::{ContactBook, Store};
use crate::unix_now;
use crate::wire::verbs::{Request, Response};
use dht::{record_for, CacheWriter};

/// Most addresses taken from one peer's identify message.
const MAX_ADDRS_PER_PEER: usize = 8;
/// How often slow housekeeping runs (relay reservations retried, hole punching timed out).
const TICK: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest the loop keeps writing out answers after it was told to stop.
const FLUSH: std::time::Duration = std::time::Duration::from_millis(500);
/// Gossip messages waiting for the channel service; more are ignored (not forwarded).
pub(crate) const GOSSIP_QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<SignedDocument, LookupError>>;

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
    /// Who our contacts are (CONNECT consent), in memory.
    contacts: ContactBook,
    /// Cached documents and mailbox totals, read off the loop.
    reads: reads::Reads,
    /// Signs our identity documents (user nodes only; a relay publishes none).
    keeper: Option<Keeper>,
    issued: Option<mpsc::UnboundedReceiver<Issued>>,
    mode: Mode,
    public: bool,
    /// Who we may dial directly, and at which addresses.
    dial_policy: dial::DialPolicy,
    lookups: lookup::Lookups<Reply, kad::QueryId>,
    /// Which lookup each DHT query and each direct GETCERTIFICATE belongs to.
    lookup_queries: HashMap<kad::QueryId, lookup::LookupId>,
    lookup_fetches: HashMap<request_response::OutboundRequestId, lookup::LookupId>,
    direct_fetches: HashMap<request_response::OutboundRequestId, (Uuid, Reply)>,
    publisher: publish::Publisher,
    peers: HashMap<PeerId, PeerState>,
    nat: autonat::NatStatus,
    put_limiter: RateLimiter<PeerId>,
    request_limiter: RateLimiter<PeerId>,
    /// MESSAGE and CHUNK have their own, larger allowance: a batch or a file transfer is
    /// many requests, and their real bound is the messenger's 64 handlers.
    message_limiter: RateLimiter<PeerId>,
    rejected: Counters,
    /// libp2p's own metrics, fed the swarm's and the protocols' events.
    libp2p_metrics: libp2p::metrics::Metrics,
    /// A relay's reservations and circuits, for its gauges.
    relay_held: relay_held::RelayHeld,
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
        HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Response, NetError>>>,
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
    /// Our CONNECT requests on the wire, and whom they went to.
    connect_asks: HashMap<request_response::OutboundRequestId, PeerId>,
    connect_limiter: RateLimiter<PeerId>,
    /// Answers handed to request-response and not yet written out.
    unflushed: usize,
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
    /// Everything it is given it keeps: each argument is one of its parts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        store: Store,
        identity: Option<Identity>,
        config: &NodeConfig,
        counters: Counters,
        libp2p_metrics: libp2p::metrics::Metrics,
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
        let (keeper, issued) = match identity {
            Some(id) => {
                let (k, rx) = Keeper::start(id, store.clone(), counters.clone());
                (Some(k), Some(rx))
            }
            None => (None, None),
        };
        let meters = counters.meters().clone();
        EventLoop {
            cache: CacheWriter::new(&store),
            swarm,
            commands,
            contacts: store.contact_book(),
            reads: reads::Reads::new(store),
            keeper,
            issued,
            mode: config.mode,
            public: config.public,
            dial_policy: dial::DialPolicy {
                private_node: config.mode == Mode::User && !config.public,
                private_ips: config.private_ips,
            },
            lookups: lookup::Lookups::default(),
            lookup_queries: HashMap::new(),
            lookup_fetches: HashMap::new(),
            direct_fetches: HashMap::new(),
            publisher: publish::Publisher::new(Instant::now()),
            peers: HashMap::new(),
            nat: autonat::NatStatus::Unknown,
            put_limiter: RateLimiter::new(20, 0.5, 4096),
            request_limiter: RateLimiter::new(50, 10.0, 4096),
            message_limiter: RateLimiter::new(1024, 1000.0, 4096),
            rejected: counters,
            libp2p_metrics,
            relay_held: relay_held::RelayHeld::default(),
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
                let mut r = relays::Relays::new(config.mode == Mode::User, config.public);
                for addr in &config.relays {
                    if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                        r.add_explicit(peer, addr.clone());
                    }
                }
                r
            },
            loopback_only: !config.listen.is_empty() && config.listen.iter().all(is_loopback),
            private_ips: config.private_ips,
            connects: connect::Connects::new(config.accept_connect, meters),
            connect_asks: HashMap::new(),
            // A burst of 10 requests, then one every 2 s, per peer.
            connect_limiter: RateLimiter::new(10, 0.5, 4096),
            unflushed: 0,
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

    /// Puts documents remembered from before a restart into the DHT store (read by the
    /// caller: the loop reads no disk).
    pub(crate) fn seed_dht(&mut self, docs: Vec<SignedDocument>) {
        use libp2p::kad::store::RecordStore;
        let now = unix_now();
        for doc in docs {
            let record = record_for(&doc, now);
            let _ = self.swarm.behaviour_mut().kad.store_mut().put(record);
        }
    }

    /// Starts a DHT bootstrap (fills the routing table); a no-op without known peers.
    pub(crate) fn bootstrap_dht(&mut self) {
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }

    /// Runs until `stop` fires or every [`super::Client`] is dropped (a dropped `stop`
    /// does not stop it).
    /// Stopping drains: an identity save and the directory cache writes under way finish
    /// (the keeper and the cache writer are joined as the loop is dropped).
    pub async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stoppable = true;
        loop {
            let publish_at = self.keeper.as_ref().and(self.publisher.due());
            let grace = self.lookups.next_timer();
            tokio::select! {
                told = &mut stop, if stoppable => match told {
                    Ok(()) => break,
                    Err(_) => stoppable = false,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => {
                    self.maybe_reserve();
                    self.expire_punches();
                    // A request whose answer never came (a service that stopped, a read
                    // that panicked) is let go once its stream is gone.
                    self.handed_over.retain(|_, channel| channel.is_open());
                }
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                issued = recv_issued(&mut self.issued) => match issued {
                    Some(issued) => self.on_issued(issued),
                    None => {
                        // Only a bug ends it; without it our document would expire unseen.
                        tracing::error!("the identity keeper stopped; stopping the node");
                        break;
                    }
                },
                answer = self.reads.next(), if !self.reads.idle() => self.answer_read(answer),
                _ = sleep_until(publish_at), if publish_at.is_some() => self.publish_due(),
                _ = sleep_until(grace), if grace.is_some() => {
                    let out = self.lookups.on_timer(Instant::now());
                    self.carry_out_lookup(out);
                }
            }
        }
        self.flush_answers().await;
        debug!("event loop stopped");
        // Dropping joins the keeper and the cache writer (their writes under way finish):
        // on a blocking thread, not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }

    fn count(&mut self, what: Counter) {
        self.rejected.count(what);
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

    /// At stop: the answers the services gave while they drained (still queued as
    /// commands) go out, and the loop keeps driving the swarm until every answer is
    /// written, for at most [`FLUSH`].
    async fn flush_answers(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Respond { .. } = command {
                self.on_command(command);
            }
        }
        let deadline = tokio::time::Instant::now() + FLUSH;
        while self.unflushed > 0 || !self.reads.idle() {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                answer = self.reads.next(), if !self.reads.idle() => self.answer_read(answer),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }

    /// Sends the answer a read of the store left (see [`reads::Reads`]).
    fn answer_read(&mut self, answer: Option<reads::Answer>) {
        if let Some((token, response)) = answer {
            if let Some(channel) = self.handed_over.remove(&token) {
                self.respond(channel, response);
            }
        }
    }

    fn publish_due(&mut self) {
        let Some(keeper) = &self.keeper else {
            return;
        };
        match self.publisher.on_due(self.reach(), Instant::now()) {
            publish::Step::Reput => {
                if let Some(doc) = self.publisher.current().cloned() {
                    self.put_own_record(&doc);
                }
            }
            publish::Step::Issue(reach) => keeper.issue(reach, unix_now()),
        }
    }

    /// The keeper signed (and saved) a new document: cache it and put it into the DHT.
    fn on_issued(&mut self, issued: Issued) {
        let now = Instant::now();
        let Some((doc, keys)) = issued.doc else {
            self.publisher.on_issue_failed(now);
            return;
        };
        self.cache.put(&doc, unix_now());
        self.put_own_record(&doc);
        self.publisher.on_issued(doc, issued.reach, now);
        if let Some(hooks) = &self.hooks {
            hooks.keys.send_replace(Some(keys));
        }
    }

    fn put_own_record(&mut self, doc: &SignedDocument) {
        // Only store limits can fail locally, and they do not apply to our own record.
        let record = record_for(doc, unix_now());
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, kad::Quorum::One)
        {
            warn!(error = ?e, "could not store our own document locally");
        }
    }

    fn schedule_publish_soon(&mut self) {
        self.publisher.on_reach_changed(Instant::now());
    }

    // ---- lookups ----

    fn start_lookup(&mut self, uuid: Uuid, reply: Reply) {
        if let Some(id) = self.lookups.start(uuid, reply) {
            let query = self
                .swarm
                .behaviour_mut()
                .kad
                .get_record(kad::RecordKey::new(&dht_key(&uuid)));
            self.lookup_queries.insert(query, id);
            self.lookups.query_started(id, query);
        }
    }

    /// Carries out what the lookup state machine decided.
    fn carry_out_lookup(&mut self, out: Vec<lookup::Out<Reply, kad::QueryId>>) {
        for o in out {
            if let Some(c) = o.counter() {
                self.count(c);
            }
            match o {
                lookup::Out::FinishQuery(query) => {
                    if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
                        q.finish();
                    }
                }
                lookup::Out::Fetch {
                    lookup,
                    uuid,
                    peers,
                } => {
                    for peer in peers {
                        let rid = self.swarm.behaviour_mut().verbs.send_request(
                            &peer,
                            Request::GetCertificate {
                                uuid: *uuid.as_bytes(),
                            },
                        );
                        self.lookup_fetches.insert(rid, lookup);
                    }
                }
                lookup::Out::Invalid { uuid, from, error } => {
                    crate::warn_remote!("lookup_bad_document", peer = ?from, %uuid, error = %error, "ignored invalid identity document in lookup");
                }
                lookup::Out::Done {
                    uuid,
                    replies,
                    found,
                } => {
                    let now = unix_now();
                    // The document we hold ourselves is among the candidates already:
                    // Kademlia offers the local record first (the DHT store is seeded from
                    // the cache and updated after every lookup), so peers answering with an
                    // older one cannot take us back.
                    let result = match found.map(|d| *d) {
                        Some(doc) => {
                            self.cache.put(&doc, now);
                            // Keep a copy in the DHT store too, so we can answer others.
                            let _ = self.accept_into_dht(&doc, now);
                            Ok(doc)
                        }
                        None => {
                            // Nobody has it: what we cached before is the answer, read
                            // off the loop (or, with too many reads under way, nothing).
                            let answer = move |doc: Option<SignedDocument>| {
                                let result = doc.ok_or(LookupError::NotFound(uuid));
                                for reply in replies {
                                    let _ = reply.send(result.clone());
                                }
                                None
                            };
                            let read = self.reads.cached_document(
                                uuid,
                                now,
                                reads::ReadFor::Lookup,
                                answer,
                            );
                            if let Err(answer) = read {
                                self.rejected.count(Counter::CacheReadsBusy);
                                answer(None);
                            }
                            continue;
                        }
                    };
                    for reply in replies {
                        let _ = reply.send(result.clone());
                    }
                }
            }
        }
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The keeper's next answer; never, for a relay (it has no keeper).
async fn recv_issued(rx: &mut Option<mpsc::UnboundedReceiver<Issued>>) -> Option<Issued> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
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
}

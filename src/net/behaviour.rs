//! The libp2p behaviour of a ptpchat node and the one place the swarm is built.

use std::time::Duration;

use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify, identity::Keypair, kad, mdns, noise,
    ping, relay, request_response, swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, tcp,
    yamux, StreamProtocol, Swarm,
};
use prometheus_client::registry::Registry;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::{upgrade, Transport};

use super::consent::Consent;
use super::transport::OrdinaryOnly;
use crate::config::{Mode, NodeConfig, RelayLimits};
use crate::identity::MAX_DOCUMENT_BYTES;
use crate::wire::verbs;

/// Our own Kademlia DHT, not IPFS's.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ptpchat/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/ptpchat/1.0.0";
/// Most DHT records one node holds.
pub const MAX_DHT_RECORDS: usize = 20_000;
/// Most connections in total and per peer. A CONNECT can hold three circuits to its
/// target (the one it asked over, and one per hole-punch attempt) for up to the 2 minute
/// idle timeout, and a second CONNECT soon after three more, with room left for the direct
/// connections (TCP and QUIC may both win).
pub const MAX_CONNECTIONS: u32 = 1_024;
pub const MAX_CONNECTIONS_PER_PEER: u32 = 8;
pub const MAX_PENDING_INCOMING: u32 = 128;
pub const MAX_PENDING_OUTGOING: u32 = 64;

/// Most gossipsub topics one peer may subscribe to, and per subscription message.
pub const MAX_PEER_TOPICS: usize = 1024;
pub const MAX_SUBSCRIPTIONS_PER_REQUEST: usize = 128;

/// Our gossipsub: signed messages, application validation, topic count limits.
pub type Gossipsub = gossipsub::Behaviour<
    gossipsub::IdentityTransform,
    gossipsub::MaxCountSubscriptionFilter<PtpchatTopics>,
>;

/// Admits only our topics: the announce topic and canonical channel topics, so a peer
/// cannot make us hold state for topics no ptpchat node uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct PtpchatTopics;

impl gossipsub::TopicSubscriptionFilter for PtpchatTopics {
    fn can_subscribe(&mut self, topic_hash: &gossipsub::TopicHash) -> bool {
        let t = topic_hash.as_str();
        t == crate::wire::frame::ANNOUNCE_TOPIC || crate::wire::frame::channel_of_topic(t).is_some()
    }
}

/// The identify agent version: `ptpchat/<crate version>`.
pub fn agent_version() -> String {
    format!("ptpchat/{}", env!("CARGO_PKG_VERSION"))
}

/// Every protocol a ptpchat node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so that a dial it refuses reaches no other behaviour's bookkeeping.
    pub dial_gate: super::dial::DialGate,
    pub limits: connection_limits::Behaviour,
    /// Inbound connections per IP address and per /24 (/48).
    pub ip_limits: super::iplimit::IpLimits,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    /// Gated: no listen or observed addresses go over a relayed connection without consent.
    pub identify: Consent<identify::Behaviour>,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub verbs: request_response::Behaviour<verbs::Codec>,
    pub gossipsub: Gossipsub,
    /// Gated likewise: no hole punching (an address exchange) without consent.
    pub dcutr: Consent<dcutr::Behaviour>,
    pub autonat: autonat::Behaviour,
}

/// Why the swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up networking: {0}")]
pub struct BuildError(String);

/// The gossipsub metrics' settings: per-topic families for the first topic joined only,
/// which is the announcement topic (the node joins it before any channel), and none for
/// topics others name. A channel's topic names the channel: which channels a node is in
/// is nobody's business.
fn gossip_metrics() -> gossipsub::MetricsConfig {
    gossipsub::MetricsConfig {
        max_topics: 1,
        max_never_subscribed_topics: 0,
        ..Default::default()
    }
}

/// How long a connection may take to be set up (libp2p's SwarmBuilder default).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the swarm for `config` with identity `keypair`.
/// Its transports and gossipsub record their metrics in `registry`.
pub fn build_swarm(
    keypair: Keypair,
    config: &NodeConfig,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, BuildError> {
    let err = |e: &dyn std::fmt::Display| BuildError(e.to_string());
    let gossipsub = gossip(&keypair, config).map_err(|e| err(&e))?.with_metrics(
        registry
            .sub_registry_with_prefix("libp2p")
            .sub_registry_with_prefix("gossipsub"),
        gossip_metrics(),
    );
    let mdns_enabled = config.mdns;
    let mode = config.mode;
    let relay_limits = config.relay_limits;
    let ip_limit_config = config.ip_limits;
    let private_ips = config.private_ips;
    let public = config.public;
    // The transports as libp2p's SwarmBuilder composes them (TCP with Noise and Yamux, QUIC,
    // DNS, the relay client), measured by libp2p's bandwidth metrics, and outside those
    // a filter: only ordinary addresses are dialed (see `net::transport`), so no address a
    // peer invents becomes a label of the metrics.
    let peer_id = keypair.public().to_peer_id();
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(&keypair).map_err(|e| err(&e))?)
        .multiplex(yamux::Config::default())
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)));
    let quic = libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(&keypair))
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)));
    let direct = libp2p::dns::tokio::Transport::system(
        tcp.or_transport(quic).map(|either, _| either.into_inner()),
    )
    .map_err(|e| err(&e))?;
    let (relay_transport, relay_client) = relay::client::new(peer_id);
    let relayed = relay_transport
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(&keypair).map_err(|e| err(&e))?)
        .multiplex(yamux::Config::default())
        .map(|(p, c), _| (p, StreamMuxerBox::new(c)));
    let measured = libp2p::metrics::BandwidthTransport::new(
        relayed
            .or_transport(direct)
            .map(|either, _| either.into_inner()),
        registry,
    )
    .map(|(p, c), _| (p, StreamMuxerBox::new(c)));
    let transport =
        OrdinaryOnly(TransportTimeout::new(measured, CONNECTION_TIMEOUT).boxed()).boxed();

    let behaviour = (|key: &Keypair, relay_client| {
        let peer_id = key.public().to_peer_id();

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(MAX_CONNECTIONS))
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING)),
        );

        let ip_limits = super::iplimit::IpLimits::new(ip_limit_config);

        let relay_server = (mode == Mode::Relay)
            .then(|| relay::Behaviour::new(peer_id, relay_config(&relay_limits)));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_agent_version(agent_version())
                .with_push_listen_addr_updates(true)
                // Addresses a peer says it listens on are not dialed on its word: they
                // include its loopback and LAN ones (which may be someone else here).
                .with_cache_size(0),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_query_timeout(Duration::from_secs(10))
            .set_max_packet_size(16 * 1024)
            // We re-issue our own document on our own schedule (node.rs).
            .set_publication_interval(None)
            .set_record_ttl(Some(Duration::from_secs(
                crate::identity::DOCUMENT_VALIDITY_SECS,
            )));
        let store = kad::store::MemoryStore::with_config(
            peer_id,
            kad::store::MemoryStoreConfig {
                max_records: MAX_DHT_RECORDS,
                // The store refuses values of this size or more.
                max_value_bytes: MAX_DOCUMENT_BYTES + 1,
                max_providers_per_key: kad::K_VALUE.get(),
                max_provided_keys: 1024,
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // A user who keeps its address to itself never serves the DHT: a server's
        // addresses go into everyone's routing tables, and a private user's IP must
        // be seen by its relays only.
        kad.set_mode(Some(if mode == Mode::Relay || public {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        }));

        let mdns = if mdns_enabled {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                peer_id,
            )?)
        } else {
            None
        };

        let verbs = request_response::Behaviour::with_codec(
            verbs::Codec,
            [(verbs::PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(10))
                .with_max_concurrent_streams(64),
        );

        let autonat = autonat::Behaviour::new(
            peer_id,
            autonat::Config {
                boot_delay: Duration::from_secs(5),
                // Until the status is known, probe again soon (default 90 s).
                retry_interval: Duration::from_secs(20),
                only_global_ips: !private_ips,
                ..Default::default()
            },
        );

        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
            dial_gate: super::dial::DialGate::new(super::dial::DialPolicy {
                private_node: mode == Mode::User && !public,
                private_ips,
            }),
            limits,
            ip_limits,
            relay_client,
            relay_server: relay_server.into(),
            identify: Consent::new(identify),
            ping: ping::Behaviour::default(),
            kad,
            mdns: mdns.into(),
            verbs,
            gossipsub,
            dcutr: Consent::new(dcutr::Behaviour::new(peer_id)),
            autonat,
        })
    })(&keypair, relay_client)
    .map_err(|e| err(&e))?;
    Ok(Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(120)),
    ))
}

/// Circuit relay v2 limits: `limits` for what is held at once, circuit rates and the
/// per-IP reservation burst; per peer a burst of 30 reservations, then one per 2 minutes.
fn relay_config(limits: &RelayLimits) -> relay::Config {
    use std::num::NonZeroU32;
    let burst = NonZeroU32::new(limits.circuit_burst.max(1)).expect("at least 1");
    let ip_burst = burst.saturating_mul(NonZeroU32::new(2).expect("2 > 0"));
    let mut config = relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: limits.max_reservations_per_peer,
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        max_circuit_duration: limits.max_circuit_duration,
        max_circuit_bytes: limits.max_circuit_bytes,
        ..relay::Config::default()
    };
    config.circuit_src_rate_limiters.clear();
    // libp2p's per-peer reservation rate (a burst of 30, then one per 2 minutes) stays;
    // the per-IP one is ours to size.
    config.reservation_rate_limiters.clear();
    let ip_reservations = NonZeroU32::new(limits.reservation_ip_burst.max(1)).expect("at least 1");
    config
        .reservation_rate_per_peer(
            NonZeroU32::new(30).expect("30 > 0"),
            Duration::from_secs(120),
        )
        .reservation_rate_per_ip(ip_reservations, Duration::from_secs(60))
        .circuit_src_per_peer(burst, Duration::from_secs(10))
        .circuit_src_per_ip(ip_burst, Duration::from_secs(5))
}

/// Gossipsub hardened as DESIGN.md section 7 asks: every message signed by its author and
/// checked strictly, none forwarded before the application has validated it, ids over the
/// content (so a re-sent copy is a duplicate), a size cap, a cap on the topics a peer may
/// subscribe to, and peer scoring (a peer whose messages we reject loses score per topic,
/// see [`topic_score_params`]).
fn gossip(key: &Keypair, config: &NodeConfig) -> Result<Gossipsub, String> {
    use sha2::{Digest, Sha256};
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(crate::wire::frame::MAX_TRANSMIT_BYTES)
        // Never shorter than peers may still offer a message by IHAVE: we would ask for
        // what we already have, each copy that comes back is a new message to check, and
        // the load of it (the flood test, at 1 s, fetched each frame up to three more
        // times) made honest peers answer IWANTs late enough to be graylisted.
        .duplicate_cache_time(config.gossip_duplicate_cache.max(MIN_DUPLICATE_CACHE))
        // Our own messages do come back to us from honest peers (the busy-node benchmark saw
        // its announcements return two minutes later, from a peer that had fallen behind,
        // after our duplicate cache had forgotten them): they are duplicates, which the
        // channel service ignores, not misbehaviour. gossipsub's default counts every such copy as an
        // invalid message from the honest peer that relayed it, and two of those graylist it.
        .allow_self_origin(true)
        // A forward that waits longer than this in the queue to a peer is dropped. The
        // default (1 s) loses posts whenever a node's cores are saturated for a moment; a
        // post a few seconds late beats a lost one. The queue stays bounded by its length.
        .forward_queue_duration(FORWARD_PATIENCE)
        // Our own posts wait in the same queue as the forwards ahead of them, which a flood
        // keeps full for up to FORWARD_PATIENCE: with the same patience a post reaches the
        // head just as it expires, and a member's posts to a peer it is flooded through were
        // lost (the flood test lost up to 3 of 10). Expired forwards ahead are skipped at
        // once, so a post waits about a forward's patience, not its own.
        .publish_queue_duration(PUBLISH_PATIENCE)
        // An honest peer's answer to our IWANT waits in its queue to us as a forward does,
        // for up to FORWARD_PATIENCE: expecting it sooner (the default 3 s) counts every
        // answer a busy peer still had queued as a broken promise, hundreds at a time under
        // a flood, and the quadratic behaviour penalty then graylists that honest peer (we
        // drop everything it sends, its own posts too).
        .iwant_followup_time(IWANT_PATIENCE)
        // An IHAVE or IWANT is one protobuf frame, and gossipsub names up to 5,000 ids in one
        // by default (about 110 KB with our 20-byte ids). Under a flood that is more than
        // our max transmit size (encoding fails, the stream is dropped) and than the 16 KiB a
        // receiver takes in one control message (decoding fails, the stream is closed). Five
        // such streams on one connection and gossipsub disables itself on it for good: the
        // peers stay connected and on the topic and never hear each other again (the flood
        // test's "B stops hearing A"). Keep every control message well under both limits.
        .max_control_messages_sent(MAX_IDS_PER_CONTROL)
        .message_id_fn(|m: &gossipsub::Message| {
            let mut h = Sha256::new();
            h.update(m.topic.as_str().as_bytes());
            h.update([0]);
            h.update(&m.data);
            gossipsub::MessageId::from(&h.finalize()[..20])
        })
        .build()
        .map_err(|e| e.to_string())?;
    let filter = gossipsub::MaxCountSubscriptionFilter {
        filter: PtpchatTopics,
        max_subscribed_topics: MAX_PEER_TOPICS,
        max_subscriptions_per_request: MAX_SUBSCRIPTIONS_PER_REQUEST,
    };
    let mut behaviour = Gossipsub::new_with_subscription_filter(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
        filter,
    )?;
    let params = gossipsub::PeerScoreParams {
        // Peers on this machine are not a Sybil swarm behind one address.
        ip_colocation_factor_whitelist: [
            std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ]
        .into_iter()
        .collect(),
        // A message that waited too long in our queue to a peer says as much about us as
        // about the peer: an overloaded node (all its cores busy) lets its own forwards
        // expire, and would then graylist honest peers and drop every post they send (the
        // busy-node benchmark lost 8–24% of a burst that way). What a peer that does not
        // read costs us stays bounded by the queue; it is not a reason to stop hearing it.
        slow_peer_weight: 0.0,
        // Broken IWANT promises and early GRAFTs are what honest peers also do for a moment
        // when they are overloaded; a burst of them is tolerated, a steady stream is not
        // (the penalty is quadratic above the threshold, and decays each second).
        behaviour_penalty_threshold: BEHAVIOUR_PENALTY_TOLERANCE,
        ..Default::default()
    };
    behaviour.with_peer_score(params, gossipsub::PeerScoreThresholds::default())?;
    Ok(behaviour)
}

/// Most message ids in one IHAVE or IWANT (and asked for from one peer per heartbeat):
/// 22 bytes each on the wire, so one control message stays under 16 KiB, the most a
/// gossipsub receiver accepts, and under our max transmit size.
const MAX_IDS_PER_CONTROL: usize = 512;

/// How long a forward may wait in the queue to a peer (gossipsub's publish default).
const FORWARD_PATIENCE: Duration = Duration::from_secs(5);

/// How long one of our own messages may wait in the queue to a peer.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);

/// How long an IWANT may take to be answered before it counts as a broken promise: a
/// forward's patience, plus a heartbeat for the answer to be sent and read.
const IWANT_PATIENCE: Duration = Duration::from_secs(FORWARD_PATIENCE.as_secs() + 2);

/// How long after gossipsub received a message it still offers it to peers by IHAVE (its
/// defaults, which we keep: the last 3 heartbeats of 1 s).
const GOSSIP_WINDOW: Duration = Duration::from_secs(3);

/// The shortest time gossip remembers a message id, whatever `gossip_duplicate_cache` says:
/// a peer may get a message a forward's patience after us, offer it for the gossip window,
/// and answer our IWANT within the IWANT patience. Forgetting sooner means asking peers for
/// messages we already have.
pub const MIN_DUPLICATE_CACHE: Duration = Duration::from_secs(
    FORWARD_PATIENCE.as_secs() + GOSSIP_WINDOW.as_secs() + IWANT_PATIENCE.as_secs(),
);

/// Misbehaviour events (broken IWANT promises, GRAFTs within the back-off) tolerated
/// before they count against a peer's score.
const BEHAVIOUR_PENALTY_TOLERANCE: f64 = 10.0;

/// Score parameters for one of our topics: a rejected message costs its forwarder a lot
/// and is forgotten slowly (P4: -20 × n², decaying 1% a second), while the rewards for
/// time in the mesh (P1) and first deliveries (P2) are small and capped, so good behaviour
/// cannot bank credit against later abuse. A quiet channel costs nobody anything: P3 and
/// P3b are off, since chat topics are bursty and a silent mesh peer is not misbehaving.
pub fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: 0.99,
        ..Default::default()
    }
}

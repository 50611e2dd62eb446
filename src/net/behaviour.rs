//! The libp2p behaviour of a ptpchat node and the one place the swarm is built.

use std::time::Duration;

use libp2p::{
    autonat, connection_limits, dcutr, identify, identity::Keypair, kad, mdns, noise, ping, relay,
    request_response, swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, tcp, yamux,
    StreamProtocol, Swarm,
};

use crate::config::{Mode, NodeConfig};
use crate::identity::MAX_DOCUMENT_BYTES;
use crate::verbs;

/// Our own Kademlia DHT, not IPFS's.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ptpchat/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/ptpchat/1.0.0";
/// Most DHT records one node holds.
pub const MAX_DHT_RECORDS: usize = 20_000;
/// Most connections in total and per peer.
pub const MAX_CONNECTIONS: u32 = 1_024;
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
pub const MAX_PENDING_INCOMING: u32 = 128;
pub const MAX_PENDING_OUTGOING: u32 = 64;

/// The identify agent version: `ptpchat/<crate version>`.
pub fn agent_version() -> String {
    format!("ptpchat/{}", env!("CARGO_PKG_VERSION"))
}

/// Every protocol a ptpchat node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub verbs: request_response::Behaviour<verbs::Codec>,
    pub dcutr: dcutr::Behaviour,
    pub autonat: autonat::Behaviour,
}

/// Why the swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up networking: {0}")]
pub struct BuildError(String);

/// Builds the swarm for `config` with identity `keypair`.
pub fn build_swarm(keypair: Keypair, config: &NodeConfig) -> Result<Swarm<Behaviour>, BuildError> {
    let err = |e: &dyn std::fmt::Display| BuildError(e.to_string());
    let mdns_enabled = config.mdns;
    let mode = config.mode;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| err(&e))?
        .with_quic()
        .with_dns()
        .map_err(|e| err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();

            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(MAX_CONNECTIONS))
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                    .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                    .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING)),
            );

            let relay_server = (mode == Mode::Relay)
                .then(|| relay::Behaviour::new(peer_id, relay::Config::default()));

            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(agent_version())
                    .with_push_listen_addr_updates(true),
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
            if mode == Mode::Relay || config.public {
                kad.set_mode(Some(kad::Mode::Server));
            }

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
                    ..Default::default()
                },
            );

            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                limits,
                relay_client,
                relay_server: relay_server.into(),
                identify,
                ping: ping::Behaviour::default(),
                kad,
                mdns: mdns.into(),
                verbs,
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat,
            })
        })
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}

//! The event loop's swarm events: connections and listen addresses, identify, mDNS,
//! AutoNAT, relay and DCUtR events, each routed to the part that tracks it.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use libp2p::metrics::Recorder;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{
    autonat, dcutr, identify, mdns, multiaddr::Protocol, relay, request_response, swarm::SwarmEvent,
};
use libp2p::{Multiaddr, PeerId};
use tracing::{debug, info};

use super::{is_lan, is_loopback, is_relayed, EventLoop, PeerState, MAX_ADDRS_PER_PEER};
use crate::config::Mode;
use crate::counters::Counter;
use crate::net::behaviour::{BehaviourEvent, KAD_PROTOCOL};
use crate::net::transport::ordinary;
use crate::net::NetError;

impl EventLoop {
    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if labels_bounded(&event) {
            self.libp2p_metrics.record(&event);
        }
        if let SwarmEvent::Behaviour(e) = &event {
            self.record(e);
        }
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
                self.publisher.on_connected(Instant::now());
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
                if let Some(peer) = peer_id {
                    self.on_dial_failed(peer, &error);
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// Over TCP alone a relay never sees our QUIC mapping, and hole punching (DCUtR sends
    /// the addresses peers observed us at) then has only TCP, which a NAT that answers
    /// unsolicited packets with a RST defeats: each simultaneous open is reset at once.
    /// A user connected to a relay by TCP alone also dials it over QUIC, at the same IP
    /// (so no one new learns our address), when both sides speak QUIC: the relay's identify
    /// then reports our QUIC address too.
    fn learn_quic_mapping(&mut self, relay: PeerId, via: &Multiaddr, listed: &[Multiaddr]) {
        let is_quic = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::QuicV1));
        let ip = |a: &Multiaddr| match a.iter().next() {
            Some(Protocol::Ip4(ip)) => Some(std::net::IpAddr::from(ip)),
            Some(Protocol::Ip6(ip)) => Some(std::net::IpAddr::from(ip)),
            _ => None,
        };
        if self.mode != Mode::User || is_quic(via) || !self.swarm.listeners().any(is_quic) {
            return;
        }
        let on_quic = self
            .peers
            .get(&relay)
            .is_some_and(|p| p.conns.values().any(|(a, relayed)| !relayed && is_quic(a)));
        let Some(relay_ip) = ip(via) else { return };
        let Some(quic) = listed
            .iter()
            .find(|a| is_quic(a) && ip(a) == Some(relay_ip) && ordinary(a))
        else {
            return;
        };
        if on_quic {
            return;
        }
        self.swarm.behaviour_mut().dial_gate.pin(relay);
        let opts = DialOpts::peer_id(relay)
            .addresses(vec![quic.clone()])
            .condition(PeerCondition::NotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => debug!(%relay, address = %quic, "dialing the relay over QUIC too"),
            Err(e) => debug!(%relay, error = %e, "cannot dial the relay over QUIC"),
        }
    }

    /// Feeds libp2p's metrics the protocols' events they know, and keeps our relay
    /// families.
    fn record(&mut self, event: &BehaviourEvent) {
        if let BehaviourEvent::RelayServer(e) = event {
            self.libp2p_metrics.record(e);
            self.record_relay(e);
            return;
        }
        let m = &self.libp2p_metrics;
        match event {
            BehaviourEvent::Identify(identify::Event::Received {
                connection_id,
                peer_id,
                info,
            }) => m.record(&identify::Event::Received {
                connection_id: *connection_id,
                peer_id: *peer_id,
                info: bounded_info(info),
            }),
            BehaviourEvent::Identify(e) => m.record(e),
            BehaviourEvent::Ping(e) => m.record(e),
            BehaviourEvent::Kad(e) => m.record(e),
            BehaviourEvent::Gossipsub(e) => m.record(e),
            BehaviourEvent::Dcutr(e) => m.record(e),
            _ => {}
        }
    }

    fn record_relay(&mut self, event: &relay::Event) {
        use crate::counters::{RefusalReason, Refused};
        let m = self.rejected.meters();
        match event {
            relay::Event::ReservationReqDenied { status, .. } => {
                m.relay_refused(Refused::Reservation, RefusalReason::of(status))
            }
            relay::Event::CircuitReqDenied { status, .. } => {
                m.relay_refused(Refused::Circuit, RefusalReason::of(status))
            }
            e => {
                self.relay_held.on_event(e);
                m.relay_held(self.relay_held.reservations(), self.relay_held.circuits());
            }
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
                        self.learn_quic_mapping(peer_id, &addr, &info.listen_addrs);
                        self.relays.add_candidate(peer_id, addr);
                        self.maybe_reserve();
                    }
                }
                if info.protocols.contains(&KAD_PROTOCOL) {
                    // Only addresses we would dial (see `net::transport`).
                    let addrs = info.listen_addrs.into_iter().filter(ordinary);
                    for addr in addrs.take(MAX_ADDRS_PER_PEER) {
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
                self.relays
                    .set_private_nat(matches!(new, autonat::NatStatus::Private));
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
                    self.on_response(peer, request_id, Err(NetError::from(&error)));
                }
                request_response::Event::InboundFailure { peer, error, .. } => {
                    self.unflushed = self.unflushed.saturating_sub(1);
                    debug!(%peer, %error, "inbound request failed");
                }
                request_response::Event::ResponseSent { .. } => {
                    self.unflushed = self.unflushed.saturating_sub(1);
                }
            },
            _ => {}
        }
    }
}

/// Whether libp2p's swarm metrics may record `event`: not an external-address event
/// whose address a peer chose (see [`ordinary`]): the address it says it sees us at.
fn labels_bounded(event: &SwarmEvent<BehaviourEvent>) -> bool {
    match event {
        SwarmEvent::NewExternalAddrCandidate { address }
        | SwarmEvent::ExternalAddrConfirmed { address }
        | SwarmEvent::ExternalAddrExpired { address } => ordinary(address),
        _ => true,
    }
}

/// A peer's identify info as libp2p's identify metrics may keep it: only ordinary listen
/// addresses (at most [`MAX_ADDRS_PER_PEER`]), and the address it sees us at only if that
/// is ordinary. The protocols are kept: libp2p labels those it does not know
/// `unrecognized`.
fn bounded_info(info: &identify::Info) -> identify::Info {
    identify::Info {
        listen_addrs: info
            .listen_addrs
            .iter()
            .filter(|a| ordinary(a))
            .take(MAX_ADDRS_PER_PEER)
            .cloned()
            .collect(),
        observed_addr: if ordinary(&info.observed_addr) {
            info.observed_addr.clone()
        } else {
            libp2p::Multiaddr::empty()
        },
        ..info.clone()
    }
}

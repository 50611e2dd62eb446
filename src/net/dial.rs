//! Who a node may dial, and at which addresses (DESIGN.md section 5): a private node opens
//! a direct connection only to peers its user chose; automatic traffic to anyone else goes
//! over a relay circuit or not at all. Addresses naming loopback, private ranges or DNS
//! names are never dialed on a stranger's word unless `--private-ips`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::{transport::PortUse, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Why the node wants to reach a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialReason {
    /// Our own relays and bootstrap peers, at the addresses the user configured.
    Own,
    /// The user chose this peer: a message the user sent, a CONNECT the user made or
    /// accepted. Its addresses are its document's word, so they are filtered.
    Chosen,
    /// Traffic the node sends on its own to whoever asked (delivery receipts, a CONNECT
    /// refusal, provider-record dials, history requests).
    Automatic,
}

/// The one place that decides dial addresses.
#[derive(Clone, Copy, Debug)]
pub struct DialPolicy {
    /// A user node without `--public`: its IP address is for its relays and chosen peers.
    pub private_node: bool,
    /// `--private-ips`: LAN, loopback and DNS addresses are fine (closed networks, tests).
    pub private_ips: bool,
}

impl DialPolicy {
    /// Whether a direct (non-relayed) connection may be opened for `why`.
    pub fn may_dial_direct(&self, why: DialReason) -> bool {
        !self.private_node || why != DialReason::Automatic
    }

    /// The addresses among `addrs` that may be dialed for `why`.
    pub fn addresses(&self, addrs: Vec<Multiaddr>, why: DialReason) -> Vec<Multiaddr> {
        if why == DialReason::Own {
            return addrs;
        }
        let direct = self.may_dial_direct(why);
        addrs
            .into_iter()
            .filter(|a| self.private_ips || routable(a))
            .filter(|a| direct || is_relayed(a))
            .collect()
    }
}

/// Enforces the policy on every dial the swarm makes, whichever behaviour asked for it
/// (Kademlia's iterative lookups dial whoever other peers name; request-response dials
/// with every address it was given): a private node's dial to a peer not chosen is
/// refused before any packet leaves, unless it names only relay circuits.
pub struct DialGate {
    policy: DialPolicy,
    /// Each chosen peer, with when it was last chosen (a counter).
    chosen: HashMap<PeerId, u64>,
    tick: u64,
    /// Our own bootstrap peers and relays: never forgotten for newer choices.
    pinned: HashSet<PeerId>,
}

/// Most peers pinned; beyond it a peer is only chosen (the configured ones come first).
const MAX_PINNED: usize = 256;

/// Most peers remembered as chosen; beyond it, the one chosen longest ago is forgotten (it
/// is chosen again, and so dialable again, the next time the user writes to it).
const MAX_CHOSEN: usize = 4096;

impl DialGate {
    pub fn new(policy: DialPolicy) -> Self {
        DialGate {
            policy,
            chosen: HashMap::new(),
            tick: 0,
            pinned: HashSet::new(),
        }
    }

    /// One of our own peers (a bootstrap peer, a relay we reserve on): dialable directly for
    /// good, however many peers are chosen after it.
    pub fn pin(&mut self, peer: PeerId) {
        if self.pinned.len() < MAX_PINNED || self.pinned.contains(&peer) {
            self.pinned.insert(peer);
        } else {
            self.choose(peer);
        }
    }

    /// The user chose `peer` (a contact written to, a CONNECT, a relay or bootstrap peer).
    pub fn choose(&mut self, peer: PeerId) {
        self.tick += 1;
        if self.chosen.len() >= MAX_CHOSEN && !self.chosen.contains_key(&peer) {
            let oldest = self.chosen.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p);
            if let Some(oldest) = oldest {
                self.chosen.remove(&oldest);
            }
        }
        self.chosen.insert(peer, self.tick);
    }

    /// Whether a dial to `peer` at `addresses` (those given explicitly) may go ahead.
    fn allows(&self, peer: Option<PeerId>, addresses: &[Multiaddr]) -> bool {
        let Some(peer) = peer else {
            // A dial by address alone: only ever our own configured peers.
            return true;
        };
        self.policy.may_dial_direct(DialReason::Automatic)
            || self.pinned.contains(&peer)
            || self.chosen.contains_key(&peer)
            || (!addresses.is_empty() && addresses.iter().all(is_relayed))
    }
}

impl NetworkBehaviour for DialGate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_outbound_connection(
        &mut self,
        _id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        _role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if self.allows(peer, addresses) {
            Ok(Vec::new())
        } else {
            Err(ConnectionDenied::new(NotChosen))
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _event: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// A private node does not dial a peer its user did not choose, except over a relay.
#[derive(Debug, thiserror::Error)]
#[error("a private node dials only peers its user chose, others over a relay circuit")]
pub struct NotChosen;

/// A relay circuit address.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// An address on the public internet: no loopback, RFC 1918, carrier-grade NAT,
/// link-local, unique-local, unspecified, or DNS name (which could name any LAN host).
pub fn routable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => {
            let o = ip.octets();
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        Protocol::Ip6(ip) => {
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
        Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_) => false,
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    const RELAY: &str = "12D3KooWGzBeqX7uMu8iiWfUeL2Nu3jZ4cyKHqsY1Dw3TxwTDzeA";

    #[test]
    fn reach_naming_private_ranges_or_dns_is_dropped_unless_private_ips() {
        let circuit_public = format!("/ip4/198.51.100.7/tcp/4001/p2p/{RELAY}/p2p-circuit");
        let circuit_lan = format!("/ip4/10.0.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit");
        let list = [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/10.1.2.3/tcp/4001",
            "/ip4/192.168.0.9/udp/4001/quic-v1",
            "/ip4/172.16.5.5/tcp/4001",
            "/ip4/100.64.0.1/tcp/4001",
            "/ip4/169.254.1.1/tcp/4001",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip6/::1/tcp/4001",
            "/ip6/fd00::1/tcp/4001",
            "/ip6/fe80::1/tcp/4001",
            "/dns4/printer.lan/tcp/80",
            "/dns/router/tcp/80",
            "/ip4/203.0.113.10/tcp/4001",
            "/ip6/2001:db8::1/tcp/4001",
            circuit_public.as_str(),
            circuit_lan.as_str(),
        ];
        let strict = DialPolicy {
            private_node: false,
            private_ips: false,
        };
        assert_eq!(
            strict.addresses(addrs(&list), DialReason::Chosen),
            addrs(&[
                "/ip4/203.0.113.10/tcp/4001",
                "/ip6/2001:db8::1/tcp/4001",
                &circuit_public
            ])
        );
        let lab = DialPolicy {
            private_node: false,
            private_ips: true,
        };
        assert_eq!(
            lab.addresses(addrs(&list), DialReason::Chosen),
            addrs(&list)
        );
        assert_eq!(
            strict.addresses(addrs(&list), DialReason::Own),
            addrs(&list)
        );
    }

    #[test]
    fn the_gate_refuses_direct_dials_to_peers_not_chosen() {
        let private = DialPolicy {
            private_node: true,
            private_ips: true,
        };
        let mut gate = DialGate::new(private);
        let stranger = PeerId::random();
        let direct = addrs(&["/ip4/127.0.0.1/tcp/4001"]);
        let circuit = addrs(&[&format!(
            "/ip4/127.0.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{stranger}"
        )]);
        assert!(!gate.allows(Some(stranger), &direct));
        assert!(!gate.allows(Some(stranger), &[]), "addresses from Kademlia");
        assert!(gate.allows(Some(stranger), &circuit));
        gate.choose(stranger);
        assert!(gate.allows(Some(stranger), &direct));
        let public = DialGate::new(DialPolicy {
            private_node: false,
            private_ips: true,
        });
        assert!(public.allows(Some(PeerId::random()), &direct));
    }

    #[test]
    fn the_peer_chosen_longest_ago_makes_room_for_a_new_choice() {
        let mut gate = DialGate::new(DialPolicy {
            private_node: true,
            private_ips: true,
        });
        let direct = addrs(&["/ip4/127.0.0.1/tcp/4001"]);
        let peers: Vec<PeerId> = (0..MAX_CHOSEN + 1).map(|_| PeerId::random()).collect();
        for p in &peers[..MAX_CHOSEN] {
            gate.choose(*p);
        }
        // Our own peers are never pushed out.
        let relay = PeerId::random();
        gate.pin(relay);
        // The first is chosen again, so the second is now the oldest.
        gate.choose(peers[0]);
        gate.choose(peers[MAX_CHOSEN]);
        assert!(
            gate.allows(Some(peers[MAX_CHOSEN]), &direct),
            "a new choice counts"
        );
        assert!(gate.allows(Some(peers[0]), &direct));
        assert!(!gate.allows(Some(peers[1]), &direct));
        assert!(gate.allows(Some(relay), &direct));
        assert_eq!(gate.chosen.len(), MAX_CHOSEN);
    }

    #[test]
    fn a_private_node_reaches_strangers_only_over_circuits() {
        let circuit = format!("/ip4/198.51.100.7/tcp/4001/p2p/{RELAY}/p2p-circuit");
        let list = addrs(&["/ip4/203.0.113.10/tcp/4001", &circuit]);
        let private = DialPolicy {
            private_node: true,
            private_ips: true,
        };
        assert!(!private.may_dial_direct(DialReason::Automatic));
        assert!(private.may_dial_direct(DialReason::Chosen));
        assert_eq!(
            private.addresses(list.clone(), DialReason::Automatic),
            addrs(&[&circuit])
        );
        assert_eq!(private.addresses(list.clone(), DialReason::Chosen), list);
        let public = DialPolicy {
            private_node: false,
            private_ips: true,
        };
        assert_eq!(public.addresses(list.clone(), DialReason::Automatic), list);
    }
}

//! Consent before addresses (DESIGN.md section 5): a wrapper that keeps a protocol which
//! reveals our addresses (identify: listen and observed addresses; DCUtR: the addresses we
//! hole-punch from) off every relayed connection whose peer has no consent, in either
//! direction. Such a connection gets a dummy handler in place of the real one, so not one
//! byte of that protocol crosses it. Consent is given per peer for a while (an accepted
//! CONNECT); the requester's next circuit then gets the real handlers. Direct connections
//! are never gated: whoever reached us directly already knows our address.

use std::collections::{HashMap, HashSet};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use either::Either;
use libp2p::core::{transport::PortUse, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// How long one consent lasts: enough to set up the direct connection.
pub const CONSENT_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Most peers with consent at once (each is one accepted CONNECT).
pub const MAX_CONSENTS: usize = 1024;

/// `inner`, but only on direct connections and on relayed ones with consent.
pub struct Consent<B> {
    inner: B,
    allowed: HashMap<PeerId, Instant>,
    /// Connections handed a dummy handler; the inner behaviour never hears of them.
    gated: HashSet<ConnectionId>,
}

impl<B> Consent<B> {
    pub fn new(inner: B) -> Self {
        Consent {
            inner,
            allowed: HashMap::new(),
            gated: HashSet::new(),
        }
    }

    /// Lets `peer`'s next relayed connections carry the inner protocol for a while.
    pub fn allow(&mut self, peer: PeerId) {
        let now = Instant::now();
        self.allowed.retain(|_, until| *until > now);
        if self.allowed.len() < MAX_CONSENTS || self.allowed.contains_key(&peer) {
            self.allowed.insert(peer, now + CONSENT_LIFETIME);
        }
    }

    /// Withdraws consent for `peer` (connections already set up keep their handlers).
    pub fn revoke(&mut self, peer: &PeerId) {
        self.allowed.remove(peer);
    }

    /// Whether `peer` has consent now.
    pub fn allows(&self, peer: &PeerId) -> bool {
        self.allowed
            .get(peer)
            .is_some_and(|until| *until > Instant::now())
    }

    /// How many relayed connections are held without the inner protocol.
    pub fn gated_connections(&self) -> usize {
        self.gated.len()
    }

    fn gate(&mut self, id: ConnectionId, peer: &PeerId, relayed: bool) -> bool {
        let gate = relayed && !self.allows(peer);
        if gate {
            self.gated.insert(id);
        }
        gate
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

impl<B: NetworkBehaviour> NetworkBehaviour for Consent<B> {
    type ConnectionHandler = Either<THandler<B>, dummy::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.gate(id, &peer, is_relayed(local_addr) || is_relayed(remote_addr)) {
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_inbound_connection(id, peer, local_addr, remote_addr)
            .map(Either::Left)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.gate(id, &peer, is_relayed(addr)) {
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
            .map(Either::Left)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let gated = match &event {
            FromSwarm::ConnectionEstablished(e) => self.gated.contains(&e.connection_id),
            FromSwarm::AddressChange(e) => self.gated.contains(&e.connection_id),
            FromSwarm::ConnectionClosed(e) => self.gated.remove(&e.connection_id),
            _ => false,
        };
        if !gated {
            self.inner.on_swarm_event(event);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            Either::Left(e) => self.inner.on_connection_handler_event(peer, id, e),
            Either::Right(never) => match never {},
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx).map(|e| e.map_in(Either::Left))
    }
}

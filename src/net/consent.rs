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
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
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
    /// Each peer's connections that carry the inner protocol.
    open: HashMap<PeerId, Vec<ConnectionId>>,
    /// Events of the inner behaviour meant for no connection that carries it.
    dropped: u64,
    /// Events of the inner behaviour passed on to one of its connections.
    notified: u64,
}

impl<B> Consent<B> {
    pub fn new(inner: B) -> Self {
        Consent {
            inner,
            allowed: HashMap::new(),
            gated: HashSet::new(),
            open: HashMap::new(),
            dropped: 0,
            notified: 0,
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

    /// Events of the inner behaviour dropped because no connection of its peer carries the
    /// inner protocol (it addressed a gated one, or any while only gated ones were left).
    pub fn dropped_events(&self) -> u64 {
        self.dropped
    }

    /// Events of the inner behaviour passed on to one of its connections. For DCUtR that is
    /// each round after the first (the only command it sends a handler is "try again").
    pub fn notified_events(&self) -> u64 {
        self.notified
    }

    /// Where an event of the inner behaviour for `peer` may go: never to a gated connection,
    /// whose dummy handler cannot take it (libp2p's `Either` handler would panic).
    fn route(&self, peer: &PeerId, handler: NotifyHandler) -> Option<NotifyHandler> {
        match handler {
            NotifyHandler::One(id) if self.gated.contains(&id) => None,
            NotifyHandler::One(id) => Some(NotifyHandler::One(id)),
            NotifyHandler::Any => self
                .open
                .get(peer)
                .and_then(|ids| ids.first())
                .map(|id| NotifyHandler::One(*id)),
        }
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
            FromSwarm::ConnectionEstablished(e) => {
                let gated = self.gated.contains(&e.connection_id);
                if !gated {
                    self.open
                        .entry(e.peer_id)
                        .or_default()
                        .push(e.connection_id);
                }
                gated
            }
            FromSwarm::AddressChange(e) => self.gated.contains(&e.connection_id),
            FromSwarm::ConnectionClosed(e) => {
                if let Some(ids) = self.open.get_mut(&e.peer_id) {
                    ids.retain(|id| *id != e.connection_id);
                    if ids.is_empty() {
                        self.open.remove(&e.peer_id);
                    }
                }
                self.gated.remove(&e.connection_id)
            }
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
        loop {
            match self.inner.poll(cx) {
                Poll::Ready(ToSwarm::NotifyHandler {
                    peer_id,
                    handler,
                    event,
                }) => match self.route(&peer_id, handler) {
                    Some(handler) => {
                        self.notified += 1;
                        return Poll::Ready(ToSwarm::NotifyHandler {
                            peer_id,
                            handler,
                            event: Either::Left(event),
                        });
                    }
                    None => self.dropped += 1,
                },
                Poll::Ready(e) => return Poll::Ready(e.map_in(Either::Left)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::ConnectedPoint;
    use libp2p::swarm::behaviour::ConnectionEstablished;

    fn established(c: &mut Consent<dummy::Behaviour>, peer: PeerId, id: usize, relayed: bool) {
        let id = ConnectionId::new_unchecked(id);
        let local: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().unwrap();
        let remote: Multiaddr = if relayed {
            "/ip4/10.0.0.2/tcp/1/p2p-circuit".parse().unwrap()
        } else {
            "/ip4/10.0.0.2/tcp/1".parse().unwrap()
        };
        let _ = c.handle_established_inbound_connection(id, peer, &local, &remote);
        let endpoint = ConnectedPoint::Listener {
            local_addr: local,
            send_back_addr: remote,
        };
        c.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: id,
            endpoint: &endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    /// A peer whose first circuit was gated (a denied CONNECT) and whose next one is not (an
    /// accepted one): the inner behaviour's events reach only the second, whichever way
    /// they are addressed, and none is routed to the gated one's dummy handler.
    #[test]
    fn inner_events_never_reach_a_gated_connection() {
        let mut c = Consent::new(dummy::Behaviour);
        let peer = PeerId::random();
        established(&mut c, peer, 1, true);
        assert_eq!(c.gated_connections(), 1);
        assert!(c.route(&peer, NotifyHandler::Any).is_none());
        assert!(c
            .route(&peer, NotifyHandler::One(ConnectionId::new_unchecked(1)))
            .is_none());

        c.allow(peer);
        established(&mut c, peer, 2, true);
        let two = ConnectionId::new_unchecked(2);
        assert!(
            matches!(c.route(&peer, NotifyHandler::Any), Some(NotifyHandler::One(id)) if id == two)
        );
        assert!(c
            .route(&peer, NotifyHandler::One(ConnectionId::new_unchecked(1)))
            .is_none());
        assert!(
            matches!(c.route(&peer, NotifyHandler::One(two)), Some(NotifyHandler::One(id)) if id == two)
        );
    }
}

//! Inbound connections per IP address and per network (/24 for IPv4, /48 for IPv6), so that
//! one host with many PeerIds cannot fill a node's connection slots (1,024) and push its
//! users out: a relay's users would lose their reservations. Relayed connections are not
//! counted (their address is the relay's), and by default neither is loopback (everything
//! runs there in tests and on one machine); the limits themselves are [`IpLimitConfig`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::{transport::PortUse, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

pub use crate::config::IpLimitConfig;

/// The limit was reached.
#[derive(Debug, thiserror::Error)]
#[error("too many connections from {0}")]
struct Exceeded(&'static str);

/// Counts inbound connections by address and refuses those beyond the limits.
pub struct IpLimits {
    config: IpLimitConfig,
    per_ip: HashMap<IpAddr, usize>,
    per_net: HashMap<IpAddr, usize>,
    counted: HashMap<ConnectionId, IpAddr>,
    refused: u64,
}

/// The network an address belongs to: its /24 (IPv4) or /48 (IPv6).
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::from([o[0], o[1], o[2], 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

/// The IP address a direct connection comes from; `None` for a relayed one.
fn remote_ip(addr: &Multiaddr) -> Option<IpAddr> {
    let mut ip = None;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => return None,
            Protocol::Ip4(a) if ip.is_none() => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) if ip.is_none() => ip = Some(IpAddr::V6(a)),
            _ => {}
        }
    }
    ip.map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

impl IpLimits {
    pub fn new(config: IpLimitConfig) -> Self {
        IpLimits {
            config,
            per_ip: HashMap::new(),
            per_net: HashMap::new(),
            counted: HashMap::new(),
            refused: 0,
        }
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn admit(&mut self, id: ConnectionId, remote: &Multiaddr) -> Result<(), ConnectionDenied> {
        let Some(ip) = remote_ip(remote) else {
            return Ok(());
        };
        if ip.is_loopback() && !self.config.loopback {
            return Ok(());
        }
        let net = network(ip);
        let why = if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.config.per_ip {
            Some("one address")
        } else if self.per_net.get(&net).copied().unwrap_or(0) >= self.config.per_net {
            Some("one network")
        } else {
            None
        };
        if let Some(why) = why {
            self.refused += 1;
            return Err(ConnectionDenied::new(Exceeded(why)));
        }
        *self.per_ip.entry(ip).or_default() += 1;
        *self.per_net.entry(net).or_default() += 1;
        self.counted.insert(id, ip);
        Ok(())
    }

    fn release(&mut self, id: ConnectionId) {
        let Some(ip) = self.counted.remove(&id) else {
            return;
        };
        for (map, key) in [(&mut self.per_ip, ip), (&mut self.per_net, network(ip))] {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

impl NetworkBehaviour for IpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(id, remote_addr)?;
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

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(e) => self.release(e.connection_id),
            // Denied by a behaviour after us: it never became a connection.
            FromSwarm::ListenFailure(e) => self.release(e.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_per_address_and_per_network_and_frees_on_close() {
        let mut l = IpLimits::new(IpLimitConfig {
            per_ip: 2,
            per_net: 3,
            loopback: false,
        });
        let id = ConnectionId::new_unchecked;
        assert!(l.admit(id(1), &addr("/ip4/198.51.100.7/tcp/1")).is_ok());
        assert!(l.admit(id(2), &addr("/ip4/198.51.100.7/tcp/2")).is_ok());
        assert!(
            l.admit(id(3), &addr("/ip4/198.51.100.7/tcp/3")).is_err(),
            "per address"
        );
        assert!(l
            .admit(id(4), &addr("/ip4/198.51.100.8/udp/1/quic-v1"))
            .is_ok());
        assert!(
            l.admit(id(5), &addr("/ip4/198.51.100.9/tcp/1")).is_err(),
            "per /24"
        );
        assert!(
            l.admit(id(6), &addr("/ip4/198.51.101.9/tcp/1")).is_ok(),
            "another /24"
        );
        // IPv4-mapped IPv6 is the same host; a /48 is one network.
        assert!(l
            .admit(id(7), &addr("/ip6/::ffff:198.51.100.10/tcp/1"))
            .is_err());
        for i in 0..3 {
            let a = addr(&format!("/ip6/2001:db8:1:{i}::1/tcp/1"));
            assert!(l.admit(id(10 + i), &a).is_ok());
        }
        assert!(l
            .admit(id(20), &addr("/ip6/2001:db8:1:ff::1/tcp/1"))
            .is_err());
        // Relayed and loopback connections are not counted.
        let circuit = addr("/ip4/198.51.100.7/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit");
        assert!(l.admit(id(30), &circuit).is_ok());
        assert!((0..10).all(|i| l.admit(id(40 + i), &addr("/ip4/127.0.0.1/tcp/1")).is_ok()));
        assert_eq!(l.refused(), 4);
        // A closed connection frees its slot.
        l.release(id(1));
        assert!(l.admit(id(50), &addr("/ip4/198.51.100.7/tcp/4")).is_ok());
    }
}

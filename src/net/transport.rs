//! What the swarm dials: only ordinary addresses (IP or DNS, then TCP or QUIC, then
//! optionally a peer id and a relay circuit). Addresses reach the swarm from peers (the
//! DHT's answers, identify, documents), and libp2p's metrics label each dial and each
//! connection by its address's protocol stack (`/ip4/tcp`) before it is even tried, so an
//! address of a peer's invention would be a new series kept for ever. Nothing ptpchat
//! speaks needs any other stack.

use std::pin::Pin;
use std::task::{Context, Poll};

use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::Transport;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// Whether `addr` is an ordinary address (see the module's note). `/dnsaddr/…` (which
/// the DNS transport resolves to ordinary ones) may be followed by a peer id only.
pub fn ordinary(addr: &Multiaddr) -> bool {
    let mut p = addr.iter().peekable();
    let transport = match p.next() {
        Some(Protocol::Dnsaddr(_)) => {
            if matches!(p.peek(), Some(Protocol::P2p(_))) {
                p.next();
            }
            return p.next().is_none();
        }
        Some(
            Protocol::Ip4(_)
            | Protocol::Ip6(_)
            | Protocol::Dns(_)
            | Protocol::Dns4(_)
            | Protocol::Dns6(_),
        ) => match p.next() {
            Some(Protocol::Tcp(_)) => true,
            Some(Protocol::Udp(_)) => matches!(p.next(), Some(Protocol::QuicV1)),
            _ => false,
        },
        _ => false,
    };
    if !transport {
        return false;
    }
    if matches!(p.peek(), Some(Protocol::P2p(_))) {
        p.next();
    }
    if matches!(p.peek(), Some(Protocol::P2pCircuit)) {
        p.next();
        if matches!(p.peek(), Some(Protocol::P2p(_))) {
            p.next();
        }
    }
    p.next().is_none()
}

/// A transport that refuses to dial anything but [`ordinary`] addresses.
pub struct OrdinaryOnly<T>(pub T);

impl<T: Transport + Unpin> Transport for OrdinaryOnly<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        if !ordinary(&addr) {
            tracing::debug!(address = %addr, "not dialing an address of an unusual form");
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        self.0.dial(addr, opts)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::ordinary;

    #[test]
    fn only_ordinary_stacks_are_dialed_or_labelled() {
        for ok in [
            "/ip4/198.51.100.7/tcp/4001",
            "/ip6/::1/udp/4001/quic-v1",
            "/dns4/relay.example/tcp/4001/p2p/12D3KooWGMYMmN1RGUYjWaSV6P3XtnBjwnosnJGNMnttfVCRnd6g",
            "/ip4/198.51.100.7/tcp/4001/p2p/12D3KooWGMYMmN1RGUYjWaSV6P3XtnBjwnosnJGNMnttfVCRnd6g/p2p-circuit",
            "/ip4/198.51.100.7/udp/4001/quic-v1/p2p/12D3KooWGMYMmN1RGUYjWaSV6P3XtnBjwnosnJGNMnttfVCRnd6g/p2p-circuit/p2p/12D3KooWGMYMmN1RGUYjWaSV6P3XtnBjwnosnJGNMnttfVCRnd6g",
            "/dnsaddr/bootstrap.example/p2p/12D3KooWGMYMmN1RGUYjWaSV6P3XtnBjwnosnJGNMnttfVCRnd6g",
        ] {
            assert!(ordinary(&ok.parse().unwrap()), "{ok}");
        }
        for odd in [
            "",
            "/ip4/198.51.100.7",
            "/ip4/198.51.100.7/tcp/1/tcp/2",
            "/ip4/198.51.100.7/ip4/198.51.100.7/tcp/1",
            "/ip4/198.51.100.7/udp/1",
            "/ip4/198.51.100.7/tcp/1/ws",
            "/memory/1/p2p/12D3KooWGMYMmN1RGUYjWaSV6P3XtnBjwnosnJGNMnttfVCRnd6g/p2p-circuit",
            "/tcp/1",
            "/dnsaddr/x/tcp/1",
            "/ip4/198.51.100.7/tcp/1/p2p-circuit/p2p-circuit",
        ] {
            assert!(!ordinary(&odd.parse().unwrap()), "{odd}");
        }
    }
}

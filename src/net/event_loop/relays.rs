//! Reservations on relays (DESIGN.md section 5): a user node that is private (AutoNAT), or
//! that did not opt to publish its own address, listens through up to [`MAX_RELAYS`]
//! relays, and its identity document names only those circuit addresses.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{core::transport::ListenerId, multiaddr::Protocol, Multiaddr, PeerId};
use tracing::{debug, info, warn};

use super::EventLoop;
use crate::config::Mode;

/// Relays we hold reservations on at once.
pub const MAX_RELAYS: usize = 2;
/// Relays we remember as candidates.
const MAX_CANDIDATES: usize = 16;
/// Wait before asking a relay again after its reservation failed or ended.
const RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(crate) struct Relays {
    /// Relays we know, by peer, with the address we reach each at (no `/p2p/`).
    candidates: HashMap<PeerId, Candidate>,
    reservations: HashMap<PeerId, Reservation>,
}

struct Candidate {
    addr: Multiaddr,
    /// Not before this (after a failure).
    not_before: Instant,
}

struct Reservation {
    listener: ListenerId,
    accepted: bool,
}

impl Relays {
    /// Adds a relay we may reserve on; `addr` may end in `/p2p/<peer>` (it is taken off).
    pub fn add_candidate(&mut self, peer: PeerId, mut addr: Multiaddr) {
        if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
            addr.pop();
        }
        if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            return;
        }
        if self.candidates.len() >= MAX_CANDIDATES && !self.candidates.contains_key(&peer) {
            return;
        }
        self.candidates
            .entry(peer)
            .and_modify(|c| c.addr = addr.clone())
            .or_insert(Candidate {
                addr,
                not_before: Instant::now(),
            });
    }

    /// Relays whose reservation was accepted, as `/…/p2p/<relay>`.
    pub fn accepted(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.accepted)
            .filter_map(|(p, _)| {
                let c = self.candidates.get(p)?;
                Some(c.addr.clone().with(Protocol::P2p(*p)).to_string())
            })
            .collect();
        out.sort();
        out
    }
}

impl EventLoop {
    /// Whether we want reservations: a user node that is private or keeps its address
    /// to itself.
    fn wants_relays(&self) -> bool {
        self.mode == Mode::User
            && (!self.public || matches!(self.nat, libp2p::autonat::NatStatus::Private))
    }

    /// Reserves on candidate relays until we hold [`MAX_RELAYS`].
    pub(super) fn maybe_reserve(&mut self) {
        if !self.wants_relays() {
            return;
        }
        let now = Instant::now();
        let mut free = MAX_RELAYS.saturating_sub(self.relays.reservations.len());
        let mut picks: Vec<(PeerId, Multiaddr)> = self
            .relays
            .candidates
            .iter()
            .filter(|(p, c)| !self.relays.reservations.contains_key(p) && c.not_before <= now)
            .map(|(p, c)| (*p, c.addr.clone()))
            .collect();
        picks.sort_by_key(|(p, _)| *p);
        for (relay, addr) in picks {
            if free == 0 {
                break;
            }
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    debug!(%circuit, "asking for a relay reservation");
                    self.relays.reservations.insert(
                        relay,
                        Reservation {
                            listener,
                            accepted: false,
                        },
                    );
                    free -= 1;
                }
                Err(e) => {
                    warn!(%circuit, error = %e, "cannot listen through relay");
                    self.backoff(&relay);
                }
            }
        }
    }

    fn backoff(&mut self, relay: &PeerId) {
        if let Some(c) = self.relays.candidates.get_mut(relay) {
            c.not_before = Instant::now() + RETRY_AFTER;
        }
    }

    pub(super) fn on_reservation_accepted(&mut self, relay: PeerId, renewal: bool) {
        if let Some(r) = self.relays.reservations.get_mut(&relay) {
            if !r.accepted {
                info!(%relay, "relay reservation accepted");
            }
            r.accepted = true;
        } else if !renewal {
            debug!(%relay, "reservation accepted by a relay we did not ask");
        }
        self.schedule_publish_soon();
    }

    /// A listener closed: if it was a reservation, forget it and try again later.
    pub(super) fn on_listener_closed(&mut self, listener: ListenerId) {
        let Some(relay) = self
            .relays
            .reservations
            .iter()
            .find(|(_, r)| r.listener == listener)
            .map(|(p, _)| *p)
        else {
            return;
        };
        self.relays.reservations.remove(&relay);
        info!(%relay, "relay reservation ended");
        self.backoff(&relay);
        self.schedule_publish_soon();
    }

    /// Drops our reservations when we no longer want them (we found we are public and
    /// publish our own address).
    pub(super) fn release_relays_if_unwanted(&mut self) {
        if self.wants_relays() {
            return;
        }
        let listeners: Vec<ListenerId> = self
            .relays
            .reservations
            .drain()
            .map(|(_, r)| r.listener)
            .collect();
        for l in listeners {
            self.swarm.remove_listener(l);
        }
    }
}

//! Reservations on relays (DESIGN.md section 5): a user node that is private (AutoNAT), or
//! that did not opt to publish its own address, listens through up to [`MAX_RELAYS`]
//! relays, and its identity document names only those circuit addresses. A `--public`
//! user node reserves only on the relays named with `--relay`, and publishes their circuits
//! beside its direct addresses: those relays are its mailboxes (DESIGN.md section 6).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
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
    /// Peers we last dialed over our relays' circuits, and when (see [`Relays::circuits_to`]).
    circuit_dials: HashMap<PeerId, Instant>,
}

/// A peer dialed over our relays' circuits is not dialed that way again for this long:
/// each try costs a circuit token at each relay (a relay allows a burst, then one per
/// 10 s), which the user's own circuits need.
pub const CIRCUIT_REDIAL: Duration = Duration::from_secs(10 * 60);
/// Peers remembered as dialed over circuits.
const MAX_CIRCUIT_DIALS: usize = 1024;

struct Candidate {
    addr: Multiaddr,
    /// Named with `--relay`: a `--public` node still reserves on it, for its mailbox.
    explicit: bool,
    /// Not before this (after a failure).
    not_before: Instant,
}

struct Reservation {
    listener: ListenerId,
    accepted: bool,
}

impl Relays {
    /// Adds a relay we may reserve on; `addr` may end in `/p2p/<peer>` (it is taken off).
    pub fn add_candidate(&mut self, peer: PeerId, addr: Multiaddr) {
        self.add(peer, addr, false);
    }

    /// Adds a relay the user named (`--relay`).
    pub fn add_explicit(&mut self, peer: PeerId, addr: Multiaddr) {
        self.add(peer, addr, true);
    }

    fn add(&mut self, peer: PeerId, mut addr: Multiaddr, explicit: bool) {
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
            .and_modify(|c| {
                c.addr = addr.clone();
                c.explicit |= explicit;
            })
            .or_insert(Candidate {
                addr,
                explicit,
                not_before: Instant::now(),
            });
    }

    /// Whether we know `peer` as a relay.
    pub fn is_candidate(&self, peer: &PeerId) -> bool {
        self.candidates.contains_key(peer)
    }

    /// Addresses that reach `peer` through each relay we hold a reservation on: how a
    /// private node meets a peer it did not choose without showing it its IP address (the
    /// relay already knows it; `peer` needs a reservation there too).
    /// Empty if `peer` was dialed that way within [`CIRCUIT_REDIAL`]; otherwise the dial is
    /// recorded.
    pub fn circuits_to(&mut self, peer: PeerId, now: Instant) -> Vec<Multiaddr> {
        if self
            .circuit_dials
            .get(&peer)
            .is_some_and(|at| now.duration_since(*at) < CIRCUIT_REDIAL)
        {
            return Vec::new();
        }
        if self.circuit_dials.len() >= MAX_CIRCUIT_DIALS {
            self.circuit_dials
                .retain(|_, at| now.duration_since(*at) < CIRCUIT_REDIAL);
            if self.circuit_dials.len() >= MAX_CIRCUIT_DIALS {
                return Vec::new();
            }
        }
        let mut out: Vec<Multiaddr> = self
            .reservations
            .iter()
            .filter(|(relay, r)| r.accepted && **relay != peer)
            .filter_map(|(relay, _)| {
                let c = self.candidates.get(relay)?;
                Some(
                    c.addr
                        .clone()
                        .with(Protocol::P2p(*relay))
                        .with(Protocol::P2pCircuit)
                        .with(Protocol::P2p(peer)),
                )
            })
            .collect();
        out.sort();
        if !out.is_empty() {
            self.circuit_dials.insert(peer, now);
        }
        out
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

    /// Whether we may reserve on `relay`: any relay when we want reservations; else (a
    /// `--public` user node) only the relays the user named, which are then its mailboxes.
    fn may_reserve_on(&self, relay: &PeerId) -> bool {
        self.mode == Mode::User
            && (self.wants_relays()
                || self
                    .relays
                    .candidates
                    .get(relay)
                    .is_some_and(|c| c.explicit))
    }

    /// Reserves on candidate relays until we hold [`MAX_RELAYS`].
    pub(super) fn maybe_reserve(&mut self) {
        if self.mode != Mode::User {
            return;
        }
        let now = Instant::now();
        let mut free = MAX_RELAYS.saturating_sub(self.relays.reservations.len());
        let mut picks: Vec<(PeerId, Multiaddr)> = self
            .relays
            .candidates
            .iter()
            .filter(|(p, c)| {
                !self.relays.reservations.contains_key(p)
                    && c.not_before <= now
                    && self.may_reserve_on(p)
            })
            .map(|(p, c)| (*p, c.addr.clone()))
            .collect();
        picks.sort_by_key(|(p, _)| *p);
        for (relay, addr) in picks {
            if free == 0 {
                break;
            }
            // Reserve over a connection we hold: asking while our own dial to the relay is
            // still under way can fail, and a failure waits RETRY_AFTER. A relay we are not
            // connected to is dialed; the next tick reserves.
            if !self.swarm.is_connected(&relay) {
                self.swarm.behaviour_mut().dial_gate.pin(relay);
                let opts = DialOpts::peer_id(relay)
                    .addresses(vec![addr])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let _ = self.swarm.dial(opts);
                continue;
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
        let unwanted: Vec<PeerId> = self
            .relays
            .reservations
            .keys()
            .filter(|p| !self.may_reserve_on(p))
            .copied()
            .collect();
        for p in unwanted {
            if let Some(r) = self.relays.reservations.remove(&p) {
                self.swarm.remove_listener(r.listener);
            }
        }
    }
}

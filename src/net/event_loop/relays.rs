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

/// Relays we hold reservations on at once.
pub const MAX_RELAYS: usize = 2;
/// Relays we remember as candidates.
const MAX_CANDIDATES: usize = 16;
/// Wait before asking a relay again after its reservation failed or ended.
const RETRY_AFTER: Duration = Duration::from_secs(30);

pub(crate) struct Relays {
    /// A user node (a relay reserves nowhere).
    user: bool,
    /// `--public`: reserve only on the relays the user named, unless AutoNAT finds us private.
    public: bool,
    /// AutoNAT found us behind a NAT.
    private_nat: bool,
    /// Relays we know, by peer, with the address we reach each at (no `/p2p/`).
    candidates: HashMap<PeerId, Candidate>,
    reservations: HashMap<PeerId, Reservation>,
    /// Peers we last dialed over our relays' circuits, and when (see [`Relays::circuits_to`]).
    circuit_dials: HashMap<PeerId, Instant>,
}

/// What [`Relays::plan`] asks the event loop to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Dial this relay (we are not connected); a later plan reserves on it.
    Dial { relay: PeerId, addr: Multiaddr },
    /// Listen on this circuit address: a reservation request. Report the listener with
    /// [`Relays::on_listening`] or the failure with [`Relays::on_listen_failed`].
    Listen { relay: PeerId, circuit: Multiaddr },
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
    not_before: Option<Instant>,
}

struct Reservation {
    listener: ListenerId,
    accepted: bool,
}

impl Relays {
    pub fn new(user: bool, public: bool) -> Self {
        Relays {
            user,
            public,
            private_nat: false,
            candidates: HashMap::new(),
            reservations: HashMap::new(),
            circuit_dials: HashMap::new(),
        }
    }

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
                not_before: None,
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

    /// AutoNAT's verdict changed.
    pub fn set_private_nat(&mut self, private: bool) {
        self.private_nat = private;
    }

    /// Whether we want reservations: a user node that is private or keeps its address
    /// to itself.
    pub fn wants_relays(&self) -> bool {
        self.user && (!self.public || self.private_nat)
    }

    /// Whether we may reserve on `relay`: any relay when we want reservations; else (a
    /// `--public` user node) only the relays the user named, which are then its mailboxes.
    fn may_reserve_on(&self, relay: &PeerId) -> bool {
        self.user && (self.wants_relays() || self.candidates.get(relay).is_some_and(|c| c.explicit))
    }

    /// What to do to hold [`MAX_RELAYS`] reservations: reserve over connections we hold
    /// (asking while our own dial to the relay is still under way can fail, and a failure
    /// waits [`RETRY_AFTER`]), dial the relays we are not connected to.
    pub fn plan(&self, now: Instant, connected: impl Fn(&PeerId) -> bool) -> Vec<Step> {
        if !self.user {
            return Vec::new();
        }
        let mut free = MAX_RELAYS.saturating_sub(self.reservations.len());
        let mut picks: Vec<(&PeerId, &Candidate)> = self
            .candidates
            .iter()
            .filter(|(p, c)| {
                !self.reservations.contains_key(p)
                    && c.not_before.is_none_or(|t| t <= now)
                    && self.may_reserve_on(p)
            })
            .collect();
        picks.sort_by_key(|(p, _)| **p);
        let mut out = Vec::new();
        for (relay, c) in picks {
            if free == 0 {
                break;
            }
            if !connected(relay) {
                out.push(Step::Dial {
                    relay: *relay,
                    addr: c.addr.clone(),
                });
                continue;
            }
            let circuit = c
                .addr
                .clone()
                .with(Protocol::P2p(*relay))
                .with(Protocol::P2pCircuit);
            out.push(Step::Listen {
                relay: *relay,
                circuit,
            });
            free -= 1;
        }
        out
    }

    /// Our reservation request on `relay` runs as `listener`.
    pub fn on_listening(&mut self, relay: PeerId, listener: ListenerId) {
        self.reservations.insert(
            relay,
            Reservation {
                listener,
                accepted: false,
            },
        );
    }

    /// We could not even ask `relay`: not again for [`RETRY_AFTER`].
    pub fn on_listen_failed(&mut self, relay: &PeerId, now: Instant) {
        self.backoff(relay, now);
    }

    fn backoff(&mut self, relay: &PeerId, now: Instant) {
        if let Some(c) = self.candidates.get_mut(relay) {
            c.not_before = Some(now + RETRY_AFTER);
        }
    }

    /// `relay` accepted a reservation; returns whether it was one we asked for.
    pub fn on_accepted(&mut self, relay: &PeerId) -> Option<bool> {
        let r = self.reservations.get_mut(relay)?;
        let first = !r.accepted;
        r.accepted = true;
        Some(first)
    }

    /// A listener closed: if it was a reservation, it is forgotten and its relay asked
    /// again after [`RETRY_AFTER`]. Returns the relay.
    pub fn on_listener_closed(&mut self, listener: ListenerId, now: Instant) -> Option<PeerId> {
        let relay = self
            .reservations
            .iter()
            .find(|(_, r)| r.listener == listener)
            .map(|(p, _)| *p)?;
        self.reservations.remove(&relay);
        self.backoff(&relay, now);
        Some(relay)
    }

    /// The reservations we no longer want (we found we are public and publish our own
    /// address), forgotten; the caller closes their listeners.
    pub fn release_unwanted(&mut self) -> Vec<ListenerId> {
        if self.wants_relays() {
            return Vec::new();
        }
        let unwanted: Vec<PeerId> = self
            .reservations
            .keys()
            .filter(|p| !self.may_reserve_on(p))
            .copied()
            .collect();
        unwanted
            .iter()
            .filter_map(|p| self.reservations.remove(p))
            .map(|r| r.listener)
            .collect()
    }
}

impl EventLoop {
    /// Carries out the relay plan; a listen that cannot start puts its relay aside and
    /// the plan is made again, so the next candidate takes its slot at once.
    pub(super) fn maybe_reserve(&mut self) {
        for _ in 0..=MAX_CANDIDATES {
            if !self.reserve_once() {
                break;
            }
        }
    }

    /// One plan, carried out; true if a listen failed.
    fn reserve_once(&mut self) -> bool {
        let swarm = &self.swarm;
        let steps = self.relays.plan(Instant::now(), |p| swarm.is_connected(p));
        let mut failed = false;
        for step in steps {
            match step {
                Step::Dial { relay, addr } => {
                    self.swarm.behaviour_mut().dial_gate.pin(relay);
                    let opts = DialOpts::peer_id(relay)
                        .addresses(vec![addr])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    let _ = self.swarm.dial(opts);
                }
                Step::Listen { relay, circuit } => match self.swarm.listen_on(circuit.clone()) {
                    Ok(listener) => {
                        debug!(%circuit, "asking for a relay reservation");
                        self.relays.on_listening(relay, listener);
                    }
                    Err(e) => {
                        warn!(%circuit, error = %e, "cannot listen through relay");
                        self.relays.on_listen_failed(&relay, Instant::now());
                        failed = true;
                    }
                },
            }
        }
        failed
    }

    pub(super) fn on_reservation_accepted(&mut self, relay: PeerId, renewal: bool) {
        match self.relays.on_accepted(&relay) {
            Some(true) => info!(%relay, "relay reservation accepted"),
            Some(false) => {}
            None if !renewal => debug!(%relay, "reservation accepted by a relay we did not ask"),
            None => {}
        }
        self.schedule_publish_soon();
    }

    /// A listener closed: if it was a reservation, forget it and try again later.
    pub(super) fn on_listener_closed(&mut self, listener: ListenerId) {
        if let Some(relay) = self.relays.on_listener_closed(listener, Instant::now()) {
            info!(%relay, "relay reservation ended");
            self.schedule_publish_soon();
        }
    }

    /// Drops our reservations when we no longer want them.
    pub(super) fn release_relays_if_unwanted(&mut self) {
        for listener in self.relays.release_unwanted() {
            self.swarm.remove_listener(listener);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(n: u8) -> (PeerId, Multiaddr) {
        let addr = format!("/ip4/203.0.113.{n}/tcp/4001").parse().unwrap();
        (PeerId::random(), addr)
    }

    fn listens(steps: &[Step]) -> Vec<PeerId> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Listen { relay, .. } => Some(*relay),
                Step::Dial { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_private_node_reserves_on_two_relays_over_connections_it_holds() {
        let now = Instant::now();
        let mut r = Relays::new(true, false);
        let known: Vec<_> = (1..=4).map(relay).collect();
        for (p, a) in &known {
            r.add_candidate(*p, a.clone());
        }
        // Not connected to any: each is dialed, none asked yet.
        let steps = r.plan(now, |_| false);
        assert_eq!(steps.len(), 4);
        assert!(listens(&steps).is_empty());
        // Connected to all: the two lowest peer ids are asked, at their circuit addresses.
        let steps = r.plan(now, |_| true);
        let mut sorted: Vec<PeerId> = known.iter().map(|(p, _)| *p).collect();
        sorted.sort();
        assert_eq!(listens(&steps), sorted[..MAX_RELAYS]);
        let Step::Listen { circuit, .. } = &steps[0] else {
            panic!("{steps:?}")
        };
        assert!(circuit
            .to_string()
            .ends_with(&format!("/p2p/{}/p2p-circuit", sorted[0])));
        for p in &sorted[..MAX_RELAYS] {
            r.on_listening(*p, ListenerId::next());
        }
        assert!(r.plan(now, |_| true).is_empty(), "two is enough");
    }

    #[test]
    fn a_relay_reserves_nowhere() {
        let mut r = Relays::new(false, false);
        let (p, a) = relay(1);
        r.add_explicit(p, a);
        assert!(r.plan(Instant::now(), |_| true).is_empty());
        assert!(!r.wants_relays());
    }

    #[test]
    fn a_public_node_reserves_only_on_its_named_relays_unless_behind_a_nat() {
        let now = Instant::now();
        let mut r = Relays::new(true, true);
        let (named, a) = relay(1);
        let (found, b) = relay(2);
        r.add_explicit(named, a);
        r.add_candidate(found, b);
        assert_eq!(listens(&r.plan(now, |_| true)), [named]);
        r.on_listening(named, ListenerId::next());
        // AutoNAT finds us private: any relay will do.
        r.set_private_nat(true);
        assert_eq!(listens(&r.plan(now, |_| true)), [found]);
        let found_listener = ListenerId::next();
        r.on_listening(found, found_listener);
        assert!(
            r.release_unwanted().is_empty(),
            "still wanted while private"
        );
        // Public again: the found relay is released, the named one (a mailbox) kept.
        r.set_private_nat(false);
        assert_eq!(r.release_unwanted(), [found_listener]);
        assert!(r.plan(now, |_| true).is_empty());
    }

    #[test]
    fn an_ended_or_failed_reservation_is_asked_again_after_a_pause() {
        let t0 = Instant::now();
        let mut r = Relays::new(true, false);
        let (p, a) = relay(1);
        r.add_candidate(p, a);
        let l = ListenerId::next();
        r.on_listening(p, l);
        assert_eq!(r.on_accepted(&p), Some(true), "first acceptance");
        assert_eq!(r.on_accepted(&p), Some(false), "a renewal");
        assert_eq!(r.on_accepted(&PeerId::random()), None, "not ours");
        assert_eq!(r.on_listener_closed(ListenerId::next(), t0), None);
        assert_eq!(r.on_listener_closed(l, t0), Some(p));
        assert!(r.accepted().is_empty());
        assert!(r.plan(t0 + RETRY_AFTER / 2, |_| true).is_empty());
        assert_eq!(listens(&r.plan(t0 + RETRY_AFTER, |_| true)), [p]);
        r.on_listen_failed(&p, t0 + RETRY_AFTER);
        assert!(r
            .plan(t0 + RETRY_AFTER + RETRY_AFTER / 2, |_| true)
            .is_empty());
    }

    #[test]
    fn circuits_go_through_accepted_reservations_and_are_not_redialed_for_ten_minutes() {
        let t0 = Instant::now();
        let mut r = Relays::new(true, false);
        let (a, a_addr) = relay(1);
        let (b, b_addr) = relay(2);
        r.add_candidate(a, a_addr);
        r.add_candidate(b, b_addr);
        r.on_listening(a, ListenerId::next());
        r.on_listening(b, ListenerId::next());
        r.on_accepted(&a);
        let target = PeerId::random();
        let circuits = r.circuits_to(target, t0);
        assert_eq!(
            circuits.len(),
            1,
            "only the accepted reservation: {circuits:?}"
        );
        assert!(circuits[0]
            .to_string()
            .contains(&format!("/p2p/{a}/p2p-circuit/p2p/{target}")));
        assert!(r.circuits_to(target, t0 + CIRCUIT_REDIAL / 2).is_empty());
        assert_eq!(r.circuits_to(target, t0 + CIRCUIT_REDIAL).len(), 1);
        // Never a circuit through a relay to itself.
        assert!(r.circuits_to(a, t0).is_empty());
    }

    #[test]
    fn candidates_are_bounded_and_circuit_addresses_are_no_relays() {
        let mut r = Relays::new(true, false);
        for n in 0..(MAX_CANDIDATES as u8 + 10) {
            let (p, a) = relay(n);
            r.add_candidate(p, a);
        }
        assert_eq!(r.candidates.len(), MAX_CANDIDATES);
        let mut r = Relays::new(true, false);
        let (p, a) = relay(1);
        r.add_candidate(
            p,
            a.with(Protocol::P2p(PeerId::random()))
                .with(Protocol::P2pCircuit),
        );
        assert!(!r.is_candidate(&p));
    }
}

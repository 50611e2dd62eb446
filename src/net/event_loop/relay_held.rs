//! A relay's reservations and circuits held, for its gauges (`ptpchat_relay_reservations`,
//! `ptpchat_relay_circuits`), kept from the relay's events.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;

/// What a relay holds, from its relay events, for the metrics. libp2p-relay reports a
/// `ReservationClosed` for every connection that closes, whether it held a reservation or
/// not, and a circuit's end can be reported twice (once for each side), so the gauges are
/// sets rather than running sums: never negative, never above what was accepted, and each
/// entry gone when its reservation or circuit is.
#[derive(Debug, Default)]
pub(crate) struct RelayHeld {
    reservations: HashSet<PeerId>,
    /// Circuits open, by (source, destination).
    circuits: HashMap<(PeerId, PeerId), usize>,
}

impl RelayHeld {
    pub fn on_event(&mut self, event: &libp2p::relay::Event) {
        use libp2p::relay::Event as E;
        match event {
            E::ReservationReqAccepted { src_peer_id, .. } => {
                self.reservations.insert(*src_peer_id);
            }
            E::ReservationClosed { src_peer_id } | E::ReservationTimedOut { src_peer_id } => {
                self.reservations.remove(src_peer_id);
            }
            E::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                *self
                    .circuits
                    .entry((*src_peer_id, *dst_peer_id))
                    .or_default() += 1
            }
            E::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                ..
            } => {
                let key = (*src_peer_id, *dst_peer_id);
                if let Some(n) = self.circuits.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.circuits.remove(&key);
                    }
                }
            }
            _ => {}
        }
    }

    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    pub fn circuits(&self) -> usize {
        self.circuits.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::RelayHeld;
    use libp2p::relay::Event as E;
    use libp2p::PeerId;

    #[test]
    fn closes_of_connections_without_a_reservation_and_double_circuit_ends_do_not_drift() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut h = RelayHeld::default();
        // A stranger's connections open and close: a ReservationClosed for each.
        for _ in 0..5 {
            h.on_event(&E::ReservationClosed { src_peer_id: c });
        }
        assert_eq!(h.reservations(), 0);
        for renewed in [false, true, true] {
            h.on_event(&E::ReservationReqAccepted {
                src_peer_id: a,
                renewed,
            });
        }
        h.on_event(&E::ReservationReqAccepted {
            src_peer_id: b,
            renewed: false,
        });
        assert_eq!(h.reservations(), 2);
        h.on_event(&E::ReservationTimedOut { src_peer_id: a });
        h.on_event(&E::ReservationTimedOut { src_peer_id: a });
        assert_eq!(h.reservations(), 1);

        h.on_event(&E::CircuitReqAccepted {
            src_peer_id: c,
            dst_peer_id: b,
        });
        h.on_event(&E::CircuitReqAccepted {
            src_peer_id: c,
            dst_peer_id: b,
        });
        assert_eq!(h.circuits(), 2);
        // Each side's end reported: never below zero.
        for _ in 0..5 {
            h.on_event(&E::CircuitClosed {
                src_peer_id: c,
                dst_peer_id: b,
                error: None,
            });
        }
        assert_eq!(h.circuits(), 0);
    }
}

//! CONNECT (protocols/connect.md): consent before addresses. The requester asks over a
//! relayed connection on which neither side's identify or DCUtR runs (see
//! [`crate::net::consent`]). The target's node decides by its policy, or queues the
//! request for its user. Only on accept does either side give the other consent; the
//! requester then opens a new circuit, on which DCUtR exchanges addresses and both sides
//! dial at once (hole punching).
//!
//! [`Connects`] decides, with no IO and the time passed in: the event loop feeds it the
//! requests, answers and connections it sees and carries out the [`Out`]puts.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::debug;
use uuid::Uuid;

use super::dial::DialReason;
use crate::config::ConnectPolicy;
use crate::counters::Counter;
use crate::counters::{Meters, PunchFailure};
use crate::identity::SignedDocument;
use crate::net::NetError;
use crate::wire::verbs::{ConnectAnswer, Nack, Response};

/// Requests waiting for the user (policy `ask`), at most.
pub const MAX_PENDING_REQUESTS: usize = 64;
/// After accept, how long we wait for hole punching (DCUtR makes three attempts) before
/// we report that only the relay works.
pub const PUNCH_WAIT: Duration = Duration::from_secs(30);
/// How long a queued request can be answered.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// DCUtR makes at most three rounds on one circuit, and in each our side dials once: this
/// many failed dials of ours mean the attempt is over (its driver, the target, gave up).
pub const ROUNDS_PER_ATTEMPT: u8 = 3;
/// After a first attempt's rounds all failed, how long we wait before a second attempt on a
/// fresh circuit (at the next tick after it: up to 2 s more). A second attempt that fails
/// as plainly ends the CONNECT `relayed` [`GIVE_UP_GRACE`] later, not after [`PUNCH_WAIT`].
pub const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// After our last dial failed, how long a direct connection from the other side's dial
/// (still in its handshakes) may take before we say `relayed`.
pub const GIVE_UP_GRACE: Duration = Duration::from_secs(1);
/// No second attempt starts this close to [`PUNCH_WAIT`]: it could not finish.
const RETRY_MARGIN: Duration = Duration::from_secs(5);

/// How a CONNECT ended, for the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// A direct (not relayed) connection exists, to this address.
    Direct(Multiaddr),
    /// The target (or its policy) said no.
    Denied,
    /// The target could not be reached (no reservation on its relays, no address).
    Offline(String),
    /// Accepted, but hole punching failed: we stay on the relay.
    Relayed,
    /// We could not ask.
    Failed(String),
}

/// A queued incoming request, as `ptpchat requests` shows it (and the CLI reads back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConnectRequestView {
    pub request_id: u64,
    pub from: Uuid,
    pub from_name: Option<String>,
    pub verified: bool,
}

type Reply = oneshot::Sender<ConnectOutcome>;

pub(crate) struct Connects {
    policy: ConnectPolicy,
    /// Our CONNECTs in progress, by target.
    outgoing: HashMap<PeerId, Outgoing>,
    /// Requests waiting for our user, by request id.
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    /// Hole punches started, succeeded and failed.
    meters: Meters,
}

struct Outgoing {
    addrs: Vec<Multiaddr>,
    reply: Reply,
    /// Accepted: waiting for the direct connection since then.
    punching: Option<Instant>,
    /// Our hole-punch dials that failed in this attempt.
    failed_dials: u8,
    /// Which attempt (1, or 2 on a fresh circuit) is under way.
    attempt: u8,
    /// When the next step is due after an attempt's rounds all failed: the second attempt
    /// (after the first), or `relayed` (after the second).
    retry_at: Option<Instant>,
    /// The request was sent a second time (request-response fails every pending request to
    /// a peer when any dial to it fails, such as the losing side of an earlier hole punch).
    retried: bool,
}

struct Pending {
    peer: PeerId,
    view: ConnectRequestView,
    /// Where the requester said it can be reached (its document), to send the answer.
    reach: Vec<Multiaddr>,
    at: Instant,
}

/// What the event loop is to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Out {
    /// Send our CONNECT (with our document) to `peer` at `addrs`, and report the answer to
    /// [`Connects::on_response`].
    Ask { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Let (or stop letting) identify and DCUtR run on `peer`'s relayed connections.
    Consent { peer: PeerId, give: bool },
    /// Dial `peer` over a new circuit at `addrs` (the one we asked over carries no
    /// identify or DCUtR); a dial that cannot start goes to [`Connects::dial_failed`].
    Dial { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Send our user's answer to `peer`, reachable at `reach`.
    Answer {
        peer: PeerId,
        accept: bool,
        reach: Vec<Multiaddr>,
        why: DialReason,
    },
}

/// A CONNECT or CONNECT-ANSWER refused, and the counter it goes under.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused(pub Nack, pub Counter);

impl Connects {
    pub fn new(policy: ConnectPolicy, meters: Meters) -> Self {
        Connects {
            policy,
            outgoing: HashMap::new(),
            pending: BTreeMap::new(),
            next_id: 1,
            meters,
        }
    }

    fn prune(&mut self, now: Instant) {
        let meters = &self.meters;
        self.outgoing.retain(|_, o| {
            let gone = o.reply.is_closed();
            if gone && o.punching.is_some() {
                meters.punch_failed(PunchFailure::Abandoned);
            }
            !gone
        });
        self.pending
            .retain(|_, p| now.duration_since(p.at) < PENDING_LIFETIME);
    }

    /// Queued requests, oldest first.
    pub fn pending(&mut self, now: Instant) -> Vec<ConnectRequestView> {
        self.prune(now);
        self.pending.values().map(|p| p.view.clone()).collect()
    }

    fn finish(&mut self, peer: &PeerId, outcome: ConnectOutcome) {
        self.finish_as(peer, outcome, PunchFailure::Abandoned);
    }

    /// Ends our CONNECT to `peer`; if a hole punch was under way and no direct connection
    /// came of it, it failed of `why`.
    fn finish_as(&mut self, peer: &PeerId, outcome: ConnectOutcome, why: PunchFailure) {
        if let Some(o) = self.outgoing.remove(peer) {
            if let Some(since) = o.punching {
                match outcome {
                    ConnectOutcome::Direct(_) => self.meters.punch_succeeded(since.elapsed()),
                    _ => self.meters.punch_failed(why),
                }
            }
            debug!(%peer, ?outcome, "connect finished");
            let _ = o.reply.send(outcome);
        }
    }

    /// Our user asks for a direct connection to `peer`, reachable at `addrs` (already
    /// within the dial policy). `direct` is a direct connection we hold to it, `published`
    /// whether our own document is issued (the request carries it).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Reply,
        direct: Option<Multiaddr>,
        published: bool,
        connected: bool,
        now: Instant,
    ) -> Vec<Out> {
        self.prune(now);
        if let Some(addr) = direct {
            let _ = reply.send(ConnectOutcome::Direct(addr));
            return Vec::new();
        }
        if !published {
            let _ = reply.send(ConnectOutcome::Failed(
                "our identity document is not issued yet".into(),
            ));
            return Vec::new();
        }
        if addrs.is_empty() && !connected {
            let _ = reply.send(ConnectOutcome::Offline(
                "its identity document names no address".into(),
            ));
            return Vec::new();
        }
        self.finish(
            &peer,
            ConnectOutcome::Failed("superseded by a newer connect".into()),
        );
        self.outgoing.insert(
            peer,
            Outgoing {
                addrs: addrs.clone(),
                reply,
                punching: None,
                failed_dials: 0,
                attempt: 1,
                retry_at: None,
                retried: false,
            },
        );
        vec![Out::Ask { peer, addrs }]
    }

    /// The answer to our CONNECT to `peer`, or why none came.
    pub fn on_response(
        &mut self,
        peer: PeerId,
        response: &Result<Response, NetError>,
        now: Instant,
    ) -> Vec<Out> {
        match response {
            Ok(Response::Connect { answer }) => return self.on_answer(peer, *answer, now),
            Ok(Response::Nack { reason }) => {
                debug!(%peer, %reason, "CONNECT refused");
                self.finish(&peer, ConnectOutcome::Denied);
            }
            Ok(_) => self.finish(&peer, ConnectOutcome::Denied),
            Err(e) => {
                let retry = self
                    .outgoing
                    .get_mut(&peer)
                    .filter(|o| !o.retried && o.punching.is_none())
                    .map(|o| {
                        o.retried = true;
                        o.addrs.clone()
                    });
                match retry {
                    Some(addrs) => {
                        debug!(%peer, error = %e, "CONNECT failed; sending it once more");
                        return vec![Out::Ask { peer, addrs }];
                    }
                    None => self.finish(&peer, ConnectOutcome::Offline(e.to_string())),
                }
            }
        }
        Vec::new()
    }

    fn on_answer(&mut self, peer: PeerId, answer: ConnectAnswer, now: Instant) -> Vec<Out> {
        match answer {
            ConnectAnswer::Pending => Vec::new(),
            ConnectAnswer::Deny => {
                self.finish(&peer, ConnectOutcome::Denied);
                Vec::new()
            }
            ConnectAnswer::Accept => {
                let Some(o) = self.outgoing.get_mut(&peer) else {
                    return Vec::new();
                };
                if o.punching.is_some() {
                    return Vec::new();
                }
                o.punching = Some(now);
                self.meters.punch_started();
                vec![
                    Out::Consent { peer, give: true },
                    Out::Dial {
                        peer,
                        addrs: o.addrs.clone(),
                    },
                ]
            }
        }
    }

    /// The dial after an accept could not even start. For a second attempt the relay
    /// worked a moment ago: the CONNECT ends `relayed`, not `offline`.
    pub fn dial_failed(&mut self, peer: &PeerId, error: String) {
        let second = self.outgoing.get(peer).is_some_and(|o| o.attempt == 2);
        let outcome = if second {
            ConnectOutcome::Relayed
        } else {
            ConnectOutcome::Offline(error)
        };
        self.finish_as(peer, outcome, PunchFailure::DialFailed);
    }

    /// A direct connection came up: it may be the one a CONNECT waits for.
    pub fn on_direct_connection(&mut self, peer: &PeerId, addr: &Multiaddr) {
        if self.is_punching(peer) {
            self.finish(peer, ConnectOutcome::Direct(addr.clone()));
        }
    }

    fn is_punching(&self, peer: &PeerId) -> bool {
        self.outgoing
            .get(peer)
            .is_some_and(|o| o.punching.is_some())
    }

    /// One of our hole-punch dials to `peer` failed (every address it tried was direct).
    /// libp2p's DCUtR reports failure only on the side that drives it (the target); ours
    /// learns it from its own dials, one per round.
    pub fn on_punch_dial_failed(&mut self, peer: &PeerId, now: Instant) {
        let Some(o) = self
            .outgoing
            .get_mut(peer)
            .filter(|o| o.punching.is_some() && o.retry_at.is_none())
        else {
            return;
        };
        o.failed_dials = o.failed_dials.saturating_add(1);
        if o.failed_dials < ROUNDS_PER_ATTEMPT {
            return;
        }
        let late = o
            .punching
            .is_some_and(|t| now + RETRY_BACKOFF + RETRY_MARGIN >= t + PUNCH_WAIT);
        if o.attempt == 1 && !late {
            debug!(%peer, "hole punch: every round failed; a second attempt after a back-off");
            o.retry_at = Some(now + RETRY_BACKOFF);
        } else {
            debug!(%peer, "hole punch: every round failed");
            o.attempt = 0;
            o.retry_at = Some(now + GIVE_UP_GRACE);
        }
    }

    /// Our user hung up on `peer`: a CONNECT to it under way ends (and starts no second
    /// attempt).
    pub fn on_hang_up(&mut self, peer: &PeerId) {
        self.finish(peer, ConnectOutcome::Failed("hung up".into()));
    }

    /// Starts the second attempts that are due, and reports the CONNECTs whose hole
    /// punching has run out of time (the requester's DCUtR side does not report failure
    /// itself).
    pub fn on_tick(&mut self, now: Instant) -> Vec<Out> {
        self.prune(now);
        let due = |o: &Outgoing| o.retry_at.is_some_and(|at| at <= now);
        // Punches whose second attempt failed (after its grace), or that ran out of time.
        let ended: Vec<(PeerId, PunchFailure)> = self
            .outgoing
            .iter()
            .filter_map(|(p, o)| {
                if o.attempt == 0 && due(o) {
                    Some((*p, PunchFailure::Failed))
                } else if o
                    .punching
                    .is_some_and(|t| now.duration_since(t) >= PUNCH_WAIT)
                {
                    Some((*p, PunchFailure::Timeout))
                } else {
                    None
                }
            })
            .collect();
        for (peer, why) in ended {
            self.finish_as(&peer, ConnectOutcome::Relayed, why);
        }
        let mut out = Vec::new();
        for (peer, o) in &mut self.outgoing {
            if o.attempt == 1 && due(o) {
                o.retry_at = None;
                o.attempt = 2;
                o.failed_dials = 0;
                out.push(Out::Dial {
                    peer: *peer,
                    addrs: o.addrs.clone(),
                });
            }
        }
        out
    }

    /// Hole punching with `peer` failed for good; `direct` whether a direct connection
    /// exists anyway.
    pub fn on_hole_punch_failed(&mut self, peer: &PeerId, direct: bool) {
        if self.is_punching(peer) && !direct {
            self.finish_as(peer, ConnectOutcome::Relayed, PunchFailure::Failed);
        }
    }

    /// A CONNECT from `peer`, whose document `doc` checked out ([`check_request`]);
    /// `contact` is our contact of that UUID and key (its name, and whether verified).
    /// Answers by policy, or queues it for our user (policy `ask`).
    pub fn on_request(
        &mut self,
        peer: PeerId,
        doc: &SignedDocument,
        contact: Option<(String, bool)>,
        now: Instant,
    ) -> Result<(ConnectAnswer, Vec<Out>), Refused> {
        let uuid = doc.doc().uuid();
        let verified = contact.as_ref().is_some_and(|(_, v)| *v);
        let accept = match self.policy {
            ConnectPolicy::All => true,
            ConnectPolicy::None => false,
            ConnectPolicy::Contacts => contact.is_some(),
            ConnectPolicy::Verified => verified,
            ConnectPolicy::Ask => {
                self.prune(now);
                self.pending.retain(|_, p| p.peer != peer);
                if self.pending.len() >= MAX_PENDING_REQUESTS {
                    return Err(Refused(Nack::Busy, Counter::ConnectQueueFull));
                }
                let request_id = self.next_id;
                self.next_id += 1;
                debug!(%uuid, request_id, "CONNECT request queued for the user");
                self.pending.insert(
                    request_id,
                    Pending {
                        peer,
                        view: ConnectRequestView {
                            request_id,
                            from: uuid,
                            from_name: contact.map(|(n, _)| n),
                            verified,
                        },
                        reach: doc.doc().reach_addrs(),
                        at: now,
                    },
                );
                return Ok((ConnectAnswer::Pending, Vec::new()));
            }
        };
        debug!(%uuid, accept, "CONNECT answered by policy");
        let answer = if accept {
            ConnectAnswer::Accept
        } else {
            ConnectAnswer::Deny
        };
        Ok((answer, vec![Out::Consent { peer, give: accept }]))
    }

    /// Our user's answer to queued request `request_id`.
    pub fn answer(
        &mut self,
        request_id: u64,
        accept: bool,
        now: Instant,
    ) -> Result<Vec<Out>, NetError> {
        self.prune(now);
        let p = self
            .pending
            .remove(&request_id)
            .ok_or(NetError::NoSuchRequest(request_id))?;
        // A refusal is automatic traffic: a private node sends it over a circuit (or the
        // connection the request came on), never by dialing the requester directly.
        let why = if accept {
            DialReason::Chosen
        } else {
            DialReason::Automatic
        };
        Ok(vec![
            Out::Consent {
                peer: p.peer,
                give: accept,
            },
            Out::Answer {
                peer: p.peer,
                accept,
                reach: p.reach,
                why,
            },
        ])
    }

    /// A CONNECT-ANSWER from `peer`: only meaningful while our CONNECT to it waits.
    pub fn on_connect_answer(
        &mut self,
        peer: PeerId,
        accept: bool,
        now: Instant,
    ) -> Result<(ConnectAnswer, Vec<Out>), Refused> {
        let waiting = self
            .outgoing
            .get(&peer)
            .is_some_and(|o| o.punching.is_none() && !o.reply.is_closed());
        if !waiting {
            return Err(Refused(Nack::Unexpected, Counter::ConnectUnexpectedAnswer));
        }
        let answer = if accept {
            ConnectAnswer::Accept
        } else {
            ConnectAnswer::Deny
        };
        Ok((answer, self.on_answer(peer, answer, now)))
    }
}

/// The document a CONNECT from `peer` carries, if it is valid and is `peer`'s own.
pub(crate) fn check_request(
    peer: PeerId,
    doc: &[u8],
    unix_now: u64,
) -> Result<SignedDocument, Refused> {
    let doc = SignedDocument::decode(doc, unix_now).map_err(|e| {
        debug!(%peer, error = %e, "CONNECT with an invalid document");
        Refused(Nack::BadDocument, Counter::ConnectBadDocument)
    })?;
    if doc.doc().peer_id() != Some(peer) {
        return Err(Refused(Nack::PeerMismatch, Counter::ConnectPeerMismatch));
    }
    Ok(doc)
}

#[path = "connect_loop.rs"]
mod event_loop_side;

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;

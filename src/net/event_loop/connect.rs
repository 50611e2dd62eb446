//! CONNECT (protocols/connect.md): consent before addresses. The requester asks over a
//! relayed connection on which neither side's identify or DCUtR runs (see
//! [`crate::net::consent`]). The target's node decides by its policy, or queues the
//! request for its user. Only on accept does either side give the other consent; the
//! requester then opens a new circuit, on which DCUtR exchanges addresses and both sides
//! dial at once (hole punching).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use libp2p::{
    request_response::OutboundRequestId,
    swarm::dial_opts::{DialOpts, PeerCondition},
    Multiaddr, PeerId,
};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::debug;
use uuid::Uuid;

use super::dial::DialReason;
use super::EventLoop;
use crate::config::ConnectPolicy;
use crate::counters::Counter;
use crate::identity::SignedDocument;
use crate::unix_now;
use crate::wire::verbs::{ConnectAnswer, Request, Response};

/// Requests waiting for the user (policy `ask`), at most.
pub const MAX_PENDING_REQUESTS: usize = 64;
/// After accept, how long we wait for hole punching (DCUtR makes three attempts) before
/// we report that only the relay works.
pub const PUNCH_WAIT: Duration = Duration::from_secs(30);
/// How long a queued request can be answered.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(5 * 60);

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

/// A queued incoming request, as `ptpchat requests` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectRequestView {
    pub request_id: u64,
    pub from: Uuid,
    pub from_name: Option<String>,
    pub verified: bool,
}

pub(crate) struct Connects {
    policy: ConnectPolicy,
    /// Our CONNECTs in progress, by target.
    outgoing: HashMap<PeerId, Outgoing>,
    /// Our CONNECT requests on the wire, and whom they went to.
    requests: HashMap<OutboundRequestId, PeerId>,
    /// Requests waiting for our user, by request id.
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
}

struct Outgoing {
    addrs: Vec<Multiaddr>,
    reply: oneshot::Sender<ConnectOutcome>,
    /// Accepted: waiting for the direct connection since then.
    punching: Option<Instant>,
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

impl Connects {
    pub fn new(policy: ConnectPolicy) -> Self {
        Connects {
            policy,
            outgoing: HashMap::new(),
            requests: HashMap::new(),
            pending: BTreeMap::new(),
            next_id: 1,
        }
    }

    fn prune(&mut self) {
        self.outgoing.retain(|_, o| !o.reply.is_closed());
        self.pending
            .retain(|_, p| p.at.elapsed() < PENDING_LIFETIME);
    }

    /// Queued requests, oldest first.
    pub fn pending(&mut self) -> Vec<ConnectRequestView> {
        self.prune();
        self.pending.values().map(|p| p.view.clone()).collect()
    }
}

impl EventLoop {
    fn direct_addr(&self, peer: &PeerId) -> Option<Multiaddr> {
        self.peers.get(peer)?.direct_addr().cloned()
    }

    /// Both protocols that reveal addresses may now run on `peer`'s relayed connections.
    fn give_consent(&mut self, peer: PeerId) {
        let b = self.swarm.behaviour_mut();
        b.dial_gate.choose(peer);
        b.identify.allow(peer);
        b.dcutr.allow(peer);
    }

    /// Ends any consent `peer` holds (a deny, a hang-up): its next circuits are gated again.
    pub(super) fn withdraw_consent(&mut self, peer: &PeerId) {
        let b = self.swarm.behaviour_mut();
        b.identify.revoke(peer);
        b.dcutr.revoke(peer);
    }

    /// Starts a CONNECT to `peer`, reachable at `addrs` (its document's).
    pub(super) fn start_connect(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<ConnectOutcome>,
    ) {
        let addrs = self.dial_policy.addresses(addrs, DialReason::Chosen);
        self.swarm.behaviour_mut().dial_gate.choose(peer);
        self.connects.prune();
        if let Some(addr) = self.direct_addr(&peer) {
            let _ = reply.send(ConnectOutcome::Direct(addr));
            return;
        }
        let Some(doc) = self.publisher.current().map(|d| d.bytes().to_vec()) else {
            let _ = reply.send(ConnectOutcome::Failed(
                "our identity document is not issued yet".into(),
            ));
            return;
        };
        if addrs.is_empty() && !self.swarm.is_connected(&peer) {
            let _ = reply.send(ConnectOutcome::Offline(
                "its identity document names no address".into(),
            ));
            return;
        }
        if let Some(old) = self.connects.outgoing.remove(&peer) {
            let _ = old.reply.send(ConnectOutcome::Failed(
                "superseded by a newer connect".into(),
            ));
        }
        let id = self
            .swarm
            .behaviour_mut()
            .verbs
            .send_request_with_addresses(&peer, Request::Connect { doc }, addrs.clone());
        self.connects.requests.insert(id, peer);
        self.connects.outgoing.insert(
            peer,
            Outgoing {
                addrs,
                reply,
                punching: None,
                retried: false,
            },
        );
    }

    /// The answer to one of our CONNECT requests; false if `id` was not one.
    pub(super) fn on_connect_response(
        &mut self,
        id: OutboundRequestId,
        response: &Result<Response, String>,
    ) -> bool {
        let Some(peer) = self.connects.requests.remove(&id) else {
            return false;
        };
        match response {
            Ok(Response::Connect { answer }) => self.on_answer(peer, *answer),
            Ok(Response::Nack { reason }) => {
                debug!(%peer, %reason, "CONNECT refused");
                self.finish_connect(&peer, ConnectOutcome::Denied);
            }
            Ok(_) => self.finish_connect(&peer, ConnectOutcome::Denied),
            Err(e) => {
                let retry = self
                    .connects
                    .outgoing
                    .get_mut(&peer)
                    .filter(|o| !o.retried && o.punching.is_none())
                    .map(|o| {
                        o.retried = true;
                        o.addrs.clone()
                    });
                match (retry, self.publisher.current()) {
                    (Some(addrs), Some(doc)) => {
                        debug!(%peer, error = %e, "CONNECT failed; sending it once more");
                        let doc = doc.bytes().to_vec();
                        let id = self
                            .swarm
                            .behaviour_mut()
                            .verbs
                            .send_request_with_addresses(&peer, Request::Connect { doc }, addrs);
                        self.connects.requests.insert(id, peer);
                    }
                    _ => self.finish_connect(&peer, ConnectOutcome::Offline(e.clone())),
                }
            }
        }
        true
    }

    fn finish_connect(&mut self, peer: &PeerId, outcome: ConnectOutcome) {
        if let Some(o) = self.connects.outgoing.remove(peer) {
            debug!(%peer, ?outcome, "connect finished");
            let _ = o.reply.send(outcome);
        }
    }

    fn on_answer(&mut self, peer: PeerId, answer: ConnectAnswer) {
        match answer {
            ConnectAnswer::Pending => {}
            ConnectAnswer::Deny => self.finish_connect(&peer, ConnectOutcome::Denied),
            ConnectAnswer::Accept => {
                let Some(o) = self.connects.outgoing.get_mut(&peer) else {
                    return;
                };
                if o.punching.is_some() {
                    return;
                }
                o.punching = Some(Instant::now());
                let addrs = o.addrs.clone();
                self.give_consent(peer);
                // A new circuit: the one we asked over carries no identify or DCUtR.
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::Always)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    self.finish_connect(&peer, ConnectOutcome::Offline(e.to_string()));
                }
            }
        }
    }

    /// A direct connection came up: it may be the one a CONNECT waits for.
    pub(super) fn on_direct_connection(&mut self, peer: PeerId, addr: &Multiaddr) {
        if self
            .connects
            .outgoing
            .get(&peer)
            .is_some_and(|o| o.punching.is_some())
        {
            self.finish_connect(&peer, ConnectOutcome::Direct(addr.clone()));
        }
    }

    /// Reports the CONNECTs whose hole punching has run out of time (the requester's
    /// DCUtR side does not report failure itself).
    pub(super) fn expire_punches(&mut self) {
        let late: Vec<PeerId> = self
            .connects
            .outgoing
            .iter()
            .filter(|(_, o)| o.punching.is_some_and(|t| t.elapsed() >= PUNCH_WAIT))
            .map(|(p, _)| *p)
            .collect();
        for peer in late {
            self.finish_connect(&peer, ConnectOutcome::Relayed);
        }
    }

    /// Hole punching with `peer` failed for good.
    pub(super) fn on_hole_punch_failed(&mut self, peer: PeerId) {
        if self
            .connects
            .outgoing
            .get(&peer)
            .is_some_and(|o| o.punching.is_some())
            && self.direct_addr(&peer).is_none()
        {
            self.finish_connect(&peer, ConnectOutcome::Relayed);
        }
    }

    /// A CONNECT from `peer`: check it, then answer by policy (or queue it).
    pub(super) fn on_connect_request(&mut self, peer: PeerId, doc: &[u8]) -> Response {
        let nack = |reason: &str| Response::Nack {
            reason: reason.into(),
        };
        if !self.connect_limiter.allow(&peer, Instant::now()) {
            self.count(Counter::ConnectRateLimited);
            return nack("rate_limited");
        }
        if self.keeper.is_none() {
            return nack("no_user");
        }
        let doc = match SignedDocument::decode(doc, unix_now()) {
            Ok(d) => d,
            Err(e) => {
                self.count(Counter::ConnectBadDocument);
                debug!(%peer, error = %e, "CONNECT with an invalid document");
                return nack("bad_document");
            }
        };
        if doc.doc().peer_id() != Some(peer) {
            self.count(Counter::ConnectPeerMismatch);
            return nack("peer_mismatch");
        }
        let uuid = doc.doc().uuid();
        let contact = self.store.contacts().ok().and_then(|all| {
            all.into_iter()
                .find(|(_, c)| c.uuid == *uuid.as_bytes())
                .filter(|(_, c)| c.fingerprint == doc.doc().fingerprint().0)
        });
        let verified = contact.as_ref().is_some_and(|(_, c)| c.verified);
        let accept = match self.connects.policy {
            ConnectPolicy::All => true,
            ConnectPolicy::None => false,
            ConnectPolicy::Contacts => contact.is_some(),
            ConnectPolicy::Verified => verified,
            ConnectPolicy::Ask => {
                self.connects.prune();
                self.connects.pending.retain(|_, p| p.peer != peer);
                if self.connects.pending.len() >= MAX_PENDING_REQUESTS {
                    self.count(Counter::ConnectQueueFull);
                    return nack("busy");
                }
                let request_id = self.connects.next_id;
                self.connects.next_id += 1;
                debug!(%uuid, request_id, "CONNECT request queued for the user");
                self.connects.pending.insert(
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
                        at: Instant::now(),
                    },
                );
                return Response::Connect {
                    answer: ConnectAnswer::Pending,
                };
            }
        };
        debug!(%uuid, accept, "CONNECT answered by policy");
        if accept {
            self.give_consent(peer);
        } else {
            self.withdraw_consent(&peer);
        }
        Response::Connect {
            answer: if accept {
                ConnectAnswer::Accept
            } else {
                ConnectAnswer::Deny
            },
        }
    }

    /// Our user's answer to a queued request.
    pub(super) fn answer_connect(&mut self, request_id: u64, accept: bool) -> Result<(), String> {
        self.connects.prune();
        let p = self
            .connects
            .pending
            .remove(&request_id)
            .ok_or_else(|| format!("no pending CONNECT request {request_id}"))?;
        if accept {
            self.give_consent(p.peer);
        } else {
            self.withdraw_consent(&p.peer);
        }
        // A refusal is automatic traffic: a private node sends it over a circuit (or the
        // connection the request came on), never by dialing the requester directly.
        let why = if accept {
            DialReason::Chosen
        } else {
            DialReason::Automatic
        };
        if let Err(e) = self.send_verb(p.peer, Request::ConnectAnswer { accept }, p.reach, why) {
            debug!(error = %e, "CONNECT answer not sent");
        }
        Ok(())
    }

    /// A CONNECT-ANSWER from `peer`: only meaningful while our CONNECT to it waits.
    pub(super) fn on_connect_answer(&mut self, peer: PeerId, accept: bool) -> Response {
        let waiting = self
            .connects
            .outgoing
            .get(&peer)
            .is_some_and(|o| o.punching.is_none() && !o.reply.is_closed());
        if !waiting {
            self.count(Counter::ConnectUnexpectedAnswer);
            return Response::Nack {
                reason: "unexpected".into(),
            };
        }
        let answer = if accept {
            ConnectAnswer::Accept
        } else {
            ConnectAnswer::Deny
        };
        self.on_answer(peer, answer);
        Response::Connect { answer }
    }

    pub(super) fn connect_requests(&mut self) -> Vec<ConnectRequestView> {
        self.connects.pending()
    }
}

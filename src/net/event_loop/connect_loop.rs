//! The event loop's side of CONNECT: it feeds [`Connects`] what the swarm reports and
//! carries out its [`Out`]puts (consent, dials, requests and answers).

use std::time::Instant;

use libp2p::{
    swarm::dial_opts::{DialOpts, PeerCondition},
    Multiaddr, PeerId,
};
use tracing::debug;

use super::{check_request, ConnectAnswer, ConnectRequestView, Out, Refused, Reply};
use crate::counters::Counter;
use crate::net::dial::DialReason;
use crate::net::event_loop::EventLoop;
use crate::net::NetError;
use crate::unix_now;
use crate::wire::verbs::{Nack, Request, Response};

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
    pub(in crate::net::event_loop) fn withdraw_consent(&mut self, peer: &PeerId) {
        let b = self.swarm.behaviour_mut();
        b.identify.revoke(peer);
        b.dcutr.revoke(peer);
    }

    /// Carries out what [`Connects`] decided.
    fn carry_out_connect(&mut self, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Ask { peer, addrs } => {
                    let Some(doc) = self.publisher.current().map(|d| d.bytes().to_vec()) else {
                        self.connects
                            .dial_failed(&peer, "our identity document is not issued yet".into());
                        continue;
                    };
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .verbs
                        .send_request_with_addresses(&peer, Request::Connect { doc }, addrs);
                    self.connect_asks.insert(id, peer);
                }
                Out::Consent { peer, give: true } => self.give_consent(peer),
                Out::Consent { peer, give: false } => self.withdraw_consent(&peer),
                Out::Dial { peer, addrs } => {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::Always)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        self.connects.dial_failed(&peer, e.to_string());
                    }
                }
                Out::Answer {
                    peer,
                    accept,
                    reach,
                    why,
                } => {
                    if let Err(e) =
                        self.send_verb(peer, Request::ConnectAnswer { accept }, reach, why)
                    {
                        debug!(error = %e, "CONNECT answer not sent");
                    }
                }
            }
        }
    }

    /// Starts a CONNECT to `peer`, reachable at `addrs` (its document's).
    pub(in crate::net::event_loop) fn start_connect(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Reply,
    ) {
        let addrs = self.dial_policy.addresses(addrs, DialReason::Chosen);
        self.swarm.behaviour_mut().dial_gate.choose(peer);
        let direct = self.direct_addr(&peer);
        let published = self.publisher.current().is_some();
        let connected = self.swarm.is_connected(&peer);
        let out = self.connects.start(
            peer,
            addrs,
            reply,
            direct,
            published,
            connected,
            Instant::now(),
        );
        self.carry_out_connect(out);
    }

    /// The answer to one of our CONNECT requests; false if `id` was not one.
    pub(in crate::net::event_loop) fn on_connect_response(
        &mut self,
        id: libp2p::request_response::OutboundRequestId,
        response: &Result<Response, NetError>,
    ) -> bool {
        let Some(peer) = self.connect_asks.remove(&id) else {
            return false;
        };
        let out = self.connects.on_response(peer, response, Instant::now());
        self.carry_out_connect(out);
        true
    }

    /// A direct connection came up: it may be the one a CONNECT waits for.
    pub(in crate::net::event_loop) fn on_direct_connection(
        &mut self,
        peer: PeerId,
        addr: &Multiaddr,
    ) {
        self.connects.on_direct_connection(&peer, addr);
    }

    pub(in crate::net::event_loop) fn expire_punches(&mut self) {
        let out = self.connects.on_tick(Instant::now());
        self.carry_out_connect(out);
    }

    /// A dial of ours failed: if it was a hole-punch dial (every address direct), it counts
    /// against the CONNECT to `peer` under way.
    pub(in crate::net::event_loop) fn on_dial_failed(
        &mut self,
        peer: PeerId,
        error: &libp2p::swarm::DialError,
    ) {
        let libp2p::swarm::DialError::Transport(tried) = error else {
            return;
        };
        let relayed = |a: &Multiaddr| {
            a.iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
        };
        if !tried.is_empty() && !tried.iter().any(|(a, _)| relayed(a)) {
            self.connects.on_punch_dial_failed(&peer, Instant::now());
        }
    }

    /// Hole punching with `peer` failed for good.
    pub(in crate::net::event_loop) fn on_hole_punch_failed(&mut self, peer: PeerId) {
        let direct = self.direct_addr(&peer).is_some();
        self.connects.on_hole_punch_failed(&peer, direct);
    }

    /// A CONNECT from `peer`: check it, then answer by policy (or queue it).
    pub(in crate::net::event_loop) fn on_connect_request(
        &mut self,
        peer: PeerId,
        doc: &[u8],
    ) -> Response {
        if !self.connect_limiter.allow(&peer, Instant::now()) {
            self.count(Counter::ConnectRateLimited);
            return Nack::RateLimited.into();
        }
        if self.keeper.is_none() {
            return Nack::NoUser.into();
        }
        let checked = check_request(peer, doc, unix_now()).and_then(|doc| {
            let uuid = doc.doc().uuid();
            let contact = self
                .contacts
                .by_uuid(uuid.as_bytes())
                .filter(|(_, c)| c.fingerprint == doc.doc().fingerprint().0)
                .map(|(name, c)| (name, c.verified));
            self.connects
                .on_request(peer, &doc, contact, Instant::now())
        });
        self.answer_or_refuse(checked)
    }

    fn answer_or_refuse(&mut self, r: Result<(ConnectAnswer, Vec<Out>), Refused>) -> Response {
        match r {
            Ok((answer, out)) => {
                self.carry_out_connect(out);
                Response::Connect { answer }
            }
            Err(Refused(nack, counter)) => {
                self.count(counter);
                nack.into()
            }
        }
    }

    /// Our user's answer to a queued request.
    pub(in crate::net::event_loop) fn answer_connect(
        &mut self,
        request_id: u64,
        accept: bool,
    ) -> Result<(), NetError> {
        let out = self.connects.answer(request_id, accept, Instant::now())?;
        self.carry_out_connect(out);
        Ok(())
    }

    /// A CONNECT-ANSWER from `peer`: only meaningful while our CONNECT to it waits.
    pub(in crate::net::event_loop) fn on_connect_answer(
        &mut self,
        peer: PeerId,
        accept: bool,
    ) -> Response {
        let r = self
            .connects
            .on_connect_answer(peer, accept, Instant::now());
        self.answer_or_refuse(r)
    }

    pub(in crate::net::event_loop) fn connect_requests(&mut self) -> Vec<ConnectRequestView> {
        self.connects.pending(Instant::now())
    }
}

//! The event loop's commands from clients ([`crate::net::Client`]): each is answered at
//! once from the swarm, or starts what its state machine tracks.

use libp2p::{
    autonat, gossipsub, kad,
    multiaddr::Protocol,
    request_response,
    swarm::dial_opts::{DialOpts, PeerCondition},
    Multiaddr, PeerId,
};
use tracing::warn;

use super::{EventLoop, MAX_ADDRS_PER_PEER};
use crate::config::Mode;
use crate::counters::Counter;
use crate::counters::{PunchStats, Topic};
use crate::net::{dial, Command, NetError, PeerInfo, Status};
use crate::wire::verbs::Request;

impl EventLoop {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let mut status = self.status();
                if self.mailbox.is_some() {
                    self.reads.mail_totals(move |mail| {
                        status.mail = mail;
                        let _ = reply.send(status);
                    });
                } else {
                    let _ = reply.send(status);
                }
            }
            Command::Peers(reply) => {
                let mut peers: Vec<PeerInfo> = self
                    .peers
                    .iter()
                    .filter_map(|(p, s)| {
                        let (addr, relayed) = s.addr()?;
                        Some(PeerInfo {
                            peer_id: p.to_string(),
                            addr: addr.to_string(),
                            relayed,
                            agent: s.agent.clone(),
                        })
                    })
                    .collect();
                peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(peers);
            }
            Command::Whois { uuid, reply } => self.start_lookup(uuid, reply),
            Command::FetchCertificate { peer, uuid, reply } => {
                let id = self.swarm.behaviour_mut().verbs.send_request(
                    &peer,
                    Request::GetCertificate {
                        uuid: *uuid.as_bytes(),
                    },
                );
                self.direct_fetches.insert(id, (uuid, reply));
            }
            Command::Dial { addr, reply } => {
                let _ = reply.send(self.dial(addr).map_err(|e| NetError::Dial(e.to_string())));
            }
            Command::Request {
                peer,
                addrs,
                why,
                request,
                reply,
            } => match self.send_verb(peer, request, addrs, why) {
                Ok(id) => {
                    self.outbound.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Subscribe { topic, on } => self.subscribe(&topic, on),
            Command::Publish { topic, data, reply } => {
                let topic = gossipsub::IdentTopic::new(topic);
                let g = &mut self.swarm.behaviour_mut().gossipsub;
                let kind = if topic.hash().as_str() == crate::wire::frame::ANNOUNCE_TOPIC {
                    Topic::Announce
                } else {
                    Topic::Channel
                };
                let result = g
                    .publish(topic.clone(), data)
                    .map(|_| {
                        self.rejected.meters().frame_published(kind);
                        g.all_peers()
                            .filter(|(_, t)| t.contains(&&topic.hash()))
                            .count()
                    })
                    .map_err(|e| match e {
                        gossipsub::PublishError::NoPeersSubscribedToTopic => NetError::NoPeers,
                        e => NetError::Publish(e.to_string()),
                    });
                let _ = reply.send(result);
            }
            Command::Validate {
                id,
                source,
                acceptance,
            } => self.report(id, source, acceptance),
            Command::Provide { key, on } => {
                let key = kad::RecordKey::new(&key);
                let kad = &mut self.swarm.behaviour_mut().kad;
                if on {
                    if let Err(e) = kad.start_providing(key.clone()) {
                        warn!(error = ?e, "cannot provide a channel key");
                    }
                    let q = kad.get_providers(key);
                    self.provider_queries.insert(q);
                } else {
                    kad.stop_providing(&key);
                }
            }
            Command::FindProviders { key } => {
                let q = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                self.provider_queries.insert(q);
            }
            Command::GossipPeers { topic, reply } => {
                let hash = gossipsub::IdentTopic::new(topic).hash();
                let g = &self.swarm.behaviour().gossipsub;
                let peers = g
                    .all_peers()
                    .filter(|(_, t)| t.contains(&&hash))
                    .map(|(p, _)| (*p, g.peer_score(p).unwrap_or(0.0)))
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Connect { peer, addrs, reply } => self.start_connect(peer, addrs, reply),
            Command::Disconnect { peer, reply } => {
                self.withdraw_consent(&peer);
                self.connects.on_hang_up(&peer);
                // The connections close a moment later; until then they are not ours to
                // offer (a CONNECT right after a hang-up must ask again, not say Direct).
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.conns.clear();
                }
                let _ = reply.send(self.swarm.disconnect_peer_id(peer).is_ok());
            }
            Command::ConnectRequests(reply) => {
                let _ = reply.send(self.connect_requests());
            }
            Command::AnswerConnect {
                request_id,
                accept,
                reply,
            } => {
                let _ = reply.send(self.answer_connect(request_id, accept));
            }
            Command::Respond { token, response } => {
                if let Some(channel) = self.handed_over.remove(&token) {
                    self.respond(channel, response);
                }
            }
        }
    }

    /// Subscribes to (or leaves) a gossipsub topic, with our score parameters for it.
    pub(crate) fn subscribe(&mut self, topic: &str, on: bool) {
        let topic = gossipsub::IdentTopic::new(topic);
        let g = &mut self.swarm.behaviour_mut().gossipsub;
        if on {
            let _ = g.set_topic_params(topic.clone(), crate::net::behaviour::topic_score_params());
            if let Err(e) = g.subscribe(&topic) {
                warn!(error = %e, "cannot subscribe to a gossip topic");
            }
        } else {
            g.unsubscribe(&topic);
        }
    }

    /// Sends a verb to `peer`, dialing it only where the dial policy allows for `why`: a
    /// private node reaches a peer its user did not choose over a relay circuit or over a
    /// connection it already holds, never by a direct dial of its own.
    pub(crate) fn send_verb(
        &mut self,
        peer: PeerId,
        request: Request,
        addrs: Vec<Multiaddr>,
        why: dial::DialReason,
    ) -> Result<request_response::OutboundRequestId, NetError> {
        let addrs: Vec<Multiaddr> = self
            .dial_policy
            .addresses(addrs, why)
            .into_iter()
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        match why {
            dial::DialReason::Own => self.swarm.behaviour_mut().dial_gate.pin(peer),
            dial::DialReason::Chosen => self.swarm.behaviour_mut().dial_gate.choose(peer),
            dial::DialReason::Automatic => {}
        }
        if self.dial_policy.may_dial_direct(why) || self.swarm.is_connected(&peer) {
            return Ok(self
                .swarm
                .behaviour_mut()
                .verbs
                .send_request_with_addresses(&peer, request, addrs));
        }
        if addrs.is_empty() {
            return Err(NetError::NoRoute);
        }
        // Our own dial, at the circuits only: request-response would dial the peer with
        // whatever other behaviours (Kademlia) know of it, direct addresses included; its
        // own dial then finds ours under way and is dropped.
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => return Err(NetError::Dial(e.to_string())),
        }
        Ok(self
            .swarm
            .behaviour_mut()
            .verbs
            .send_request(&peer, request))
    }

    /// Dials `addr`, telling Kademlia about the peer if the address names it.
    pub(crate) fn dial(&mut self, addr: Multiaddr) -> Result<(), libp2p::swarm::DialError> {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            // Only our own configured peers (bootstrap, relays) are dialed by address.
            self.swarm.behaviour_mut().dial_gate.pin(peer);
            let mut bare = addr.clone();
            bare.pop();
            self.swarm.behaviour_mut().kad.add_address(&peer, bare);
        }
        self.swarm.dial(DialOpts::from(addr))
    }

    pub(super) fn status(&mut self) -> Status {
        let mut listen: Vec<String> = self.swarm.listeners().map(|a| a.to_string()).collect();
        listen.sort();
        Status {
            uuid: self.keeper.as_ref().map(|k| k.uuid()),
            peer_id: self.swarm.local_peer_id().to_string(),
            mode: match self.mode {
                Mode::User => "user",
                Mode::Relay => "relay",
            }
            .into(),
            listen_addrs: listen,
            external_addrs: self
                .swarm
                .external_addresses()
                .map(|a| a.to_string())
                .collect(),
            nat: match self.nat {
                autonat::NatStatus::Public(_) => "public",
                autonat::NatStatus::Private => "private",
                autonat::NatStatus::Unknown => "unknown",
            }
            .into(),
            connected_peers: self.swarm.connected_peers().count(),
            relays: self.relays.accepted(),
            channels: Vec::new(),
            dht_records: {
                use libp2p::kad::store::RecordStore;
                self.swarm.behaviour_mut().kad.store_mut().records().count()
            },
            published_seq: self.publisher.current().map(|d| d.doc().seq),
            rejected: {
                let mut r: std::collections::BTreeMap<String, u64> = self
                    .rejected
                    .snapshot()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                let ip = self.swarm.behaviour().ip_limits.refused();
                if ip > 0 {
                    r.insert(Counter::ConnectionIpLimit.as_str().into(), ip);
                }
                r
            },
            lookups: self.lookups.stats(),
            punches: PunchStats {
                retries: self.swarm.behaviour().dcutr.notified_events(),
                ..self.rejected.meters().punch_stats()
            },
            mail: None,
        }
    }
}

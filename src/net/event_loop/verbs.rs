//! The event loop's request-response side: inbound verbs are rate-limited, then answered
//! at once (GETCERTIFICATE, CONNECT) or handed, with a token standing for their response
//! channel, to the service that answers them; answers to our own requests go back to
//! whoever asked.

use std::time::Instant;

use libp2p::{kad, request_response, PeerId};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::EventLoop;
use crate::config::Mode;
use crate::counters::Counter;
use crate::identity::{dht_key, SignedDocument};
use crate::net::{InboundVerb, LookupError};
use crate::unix_now;
use crate::wire::verbs::{Request, Response};

impl EventLoop {
    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: request_response::ResponseChannel<Response>,
    ) {
        let is_message = matches!(
            request,
            Request::Message { .. }
                | Request::Chunk { .. }
                | Request::Deposit { .. }
                | Request::MailAck { .. }
        );
        let limiter = if is_message {
            &mut self.message_limiter
        } else {
            &mut self.request_limiter
        };
        let response = if !limiter.allow(&peer, Instant::now()) {
            self.count(Counter::RequestRateLimited);
            Response::Nack {
                reason: "rate_limited".into(),
            }
        } else {
            match request {
                Request::Message { .. }
                | Request::Chunk { .. }
                | Request::Deposit { .. }
                | Request::MailChallenge
                | Request::MailLogin { .. }
                | Request::MailAck { .. }
                | Request::ChannelHistory { .. } => return self.hand_over(peer, request, channel),
                Request::GetCertificate { uuid } => self.certificate_for(&Uuid::from_bytes(uuid)),
                Request::Connect { doc } => self.on_connect_request(peer, &doc),
                Request::ConnectAnswer { accept } => self.on_connect_answer(peer, accept),
                Request::TooLarge => {
                    self.count(Counter::RequestTooLarge);
                    crate::warn_remote!("request_too_large", %peer, "request over the size limit");
                    Response::Nack {
                        reason: "too_large".into(),
                    }
                }
                Request::Malformed(e) => {
                    self.count(Counter::RequestMalformed);
                    crate::warn_remote!("request_malformed", %peer, error = %e, "malformed request");
                    Response::Nack {
                        reason: "malformed".into(),
                    }
                }
            }
        };
        self.respond(channel, response);
    }

    /// Answers an inbound request, and counts it until the answer is written out (see
    /// [`EventLoop::flush_answers`]).
    pub(super) fn respond(
        &mut self,
        channel: request_response::ResponseChannel<Response>,
        response: Response,
    ) {
        if self
            .swarm
            .behaviour_mut()
            .verbs
            .send_response(channel, response)
            .is_ok()
        {
            self.unflushed += 1;
        }
    }

    /// Gives a MESSAGE or CHUNK to the messenger, a CHANNEL-HISTORY to the channel service,
    /// or a mailbox verb to the mailbox service; the service answers later through
    /// [`Command::Respond`]. A node without that service (`no_user` or `unknown_channel` on
    /// a relay, `no_mailbox` on a user node or a relay without mailboxes) or a full queue
    /// (`busy`) is answered at once.
    fn hand_over(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: request_response::ResponseChannel<Response>,
    ) {
        let (target, absent, busy) = match request {
            Request::Message { .. } | Request::Chunk { .. } => (
                self.hooks.as_ref().map(|h| &h.inbound),
                "no_user",
                Counter::InboundBusy,
            ),
            Request::ChannelHistory { .. } => (
                self.channel_history.as_ref(),
                "unknown_channel",
                Counter::HistoryBusy,
            ),
            _ => (self.mailbox.as_ref(), "no_mailbox", Counter::MailBusy),
        };
        let token = self.next_token;
        self.next_token += 1;
        let reason = match target {
            None => absent,
            Some(tx) => match tx.try_send(InboundVerb {
                token,
                peer,
                request,
            }) {
                Ok(()) => {
                    self.handed_over.insert(token, channel);
                    return;
                }
                Err(_) => {
                    self.count(busy);
                    "busy"
                }
            },
        };
        self.respond(
            channel,
            Response::Nack {
                reason: reason.into(),
            },
        );
    }

    /// Hands mailbox verbs to the mailbox service from now on (relays).
    pub(crate) fn set_mailbox(&mut self, tx: mpsc::Sender<InboundVerb>) {
        self.mailbox = Some(tx);
    }

    fn certificate_for(&mut self, uuid: &Uuid) -> Response {
        use libp2p::kad::store::RecordStore;
        let now = unix_now();
        if let Some(doc) = self.publisher.current() {
            if doc.doc().uuid() == *uuid {
                return Response::Certificate {
                    doc: doc.bytes().to_vec(),
                };
            }
        }
        // A user node's store and cache hold everyone its user wrote to, heard from or
        // looked up: answering from them would tell a stranger who its contacts are.
        // Serving other documents is a relay's role (it serves the DHT).
        if self.mode == Mode::User {
            return Response::NotFound;
        }
        let key = kad::RecordKey::new(&dht_key(uuid));
        if let Some(rec) = self.swarm.behaviour_mut().kad.store_mut().get(&key) {
            if SignedDocument::decode_for(&rec.value, uuid, now).is_ok() {
                return Response::Certificate {
                    doc: rec.value.clone(),
                };
            }
        }
        match self.store.cached_document(uuid, now) {
            Ok(Some(doc)) => Response::Certificate {
                doc: doc.bytes().to_vec(),
            },
            _ => Response::NotFound,
        }
    }

    pub(super) fn on_response(
        &mut self,
        peer: PeerId,
        id: request_response::OutboundRequestId,
        response: Result<Response, String>,
    ) {
        if self.on_connect_response(id, &response) {
            return;
        }
        if let Some(reply) = self.outbound.remove(&id) {
            let _ = reply.send(response);
            return;
        }
        let response = response.ok();
        if let Some((uuid, reply)) = self.direct_fetches.remove(&id) {
            let result = match response {
                Some(Response::Certificate { doc }) => {
                    match SignedDocument::decode_for(&doc, &uuid, unix_now()) {
                        Ok(d) => Ok(d),
                        Err(e) => {
                            self.count(Counter::CertificateInvalid);
                            crate::warn_remote!("bad_certificate", %peer, %uuid, error = %e, "peer sent an invalid certificate");
                            Err(LookupError::NotFound(uuid))
                        }
                    }
                }
                _ => Err(LookupError::NotFound(uuid)),
            };
            let _ = reply.send(result);
            return;
        }
        if let Some(lookup) = self.lookup_fetches.remove(&id) {
            let doc = match &response {
                Some(Response::Certificate { doc }) => Some(&doc[..]),
                _ => None,
            };
            let out = self.lookups.on_fetch_answer(lookup, doc, peer, unix_now());
            self.carry_out_lookup(out);
        }
    }
}

//! The event loop's request-response side: inbound verbs are rate-limited, then answered
//! at once (GETCERTIFICATE, CONNECT) or handed, with a token standing for their response
//! channel, to the service that answers them; answers to our own requests go back to
//! whoever asked.

use std::time::Instant;

use libp2p::{kad, request_response, PeerId};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{reads, EventLoop};
use crate::config::Mode;
use crate::counters::Counter;
use crate::identity::{dht_key, SignedDocument};
use crate::net::{InboundVerb, LookupError, NetError};
use crate::unix_now;
use crate::wire::verbs::{Nack, Request, Response};

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
            Nack::RateLimited.into()
        } else {
            match request {
                Request::Message { .. }
                | Request::Chunk { .. }
                | Request::Deposit { .. }
                | Request::MailChallenge
                | Request::MailLogin { .. }
                | Request::MailAck { .. }
                | Request::ChannelHistory { .. } => return self.hand_over(peer, request, channel),
                Request::GetCertificate { uuid } => {
                    match self.certificate_for(&Uuid::from_bytes(uuid)) {
                        Some(response) => response,
                        None => {
                            return self.certificate_from_cache(Uuid::from_bytes(uuid), channel)
                        }
                    }
                }
                Request::Connect { doc } => self.on_connect_request(peer, &doc),
                Request::ConnectAnswer { accept } => self.on_connect_answer(peer, accept),
                Request::TooLarge => {
                    self.count(Counter::RequestTooLarge);
                    crate::warn_remote!("request_too_large", %peer, "request over the size limit");
                    Nack::TooLarge.into()
                }
                Request::Malformed(e) => {
                    self.count(Counter::RequestMalformed);
                    crate::warn_remote!("request_malformed", %peer, error = %e, "malformed request");
                    Nack::Malformed.into()
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
                Nack::NoUser,
                Counter::InboundBusy,
            ),
            Request::ChannelHistory { .. } => (
                self.channel_history.as_ref(),
                Nack::UnknownChannel,
                Counter::HistoryBusy,
            ),
            _ => (self.mailbox.as_ref(), Nack::NoMailbox, Counter::MailBusy),
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
                    Nack::Busy
                }
            },
        };
        self.respond(channel, reason.into());
    }

    /// Hands mailbox verbs to the mailbox service from now on (relays).
    pub(crate) fn set_mailbox(&mut self, tx: mpsc::Sender<InboundVerb>) {
        self.mailbox = Some(tx);
    }

    /// A GETCERTIFICATE answered from memory: our own document, or (a relay's role) one
    /// in the DHT store. `None`: only the directory cache could have it.
    fn certificate_for(&mut self, uuid: &Uuid) -> Option<Response> {
        use libp2p::kad::store::RecordStore;
        let now = unix_now();
        if let Some(doc) = self.publisher.current() {
            if doc.doc().uuid() == *uuid {
                return Some(Response::Certificate {
                    doc: doc.bytes().to_vec(),
                });
            }
        }
        // A user node's store and cache hold everyone its user wrote to, heard from or
        // looked up: answering from them would tell a stranger who its contacts are.
        // Serving other documents is a relay's role (it serves the DHT).
        if self.mode == Mode::User {
            return Some(Response::NotFound);
        }
        let key = kad::RecordKey::new(&dht_key(uuid));
        if let Some(rec) = self.swarm.behaviour_mut().kad.store_mut().get(&key) {
            if SignedDocument::decode_for(&rec.value, uuid, now).is_ok() {
                return Some(Response::Certificate {
                    doc: rec.value.clone(),
                });
            }
        }
        None
    }

    /// A relay answers a GETCERTIFICATE from its directory cache, read off the loop; with
    /// too many reads under way, as if it had nothing.
    fn certificate_from_cache(
        &mut self,
        uuid: Uuid,
        channel: request_response::ResponseChannel<Response>,
    ) {
        let token = self.next_token;
        self.next_token += 1;
        let answer = move |doc: Option<SignedDocument>| {
            let response = match doc {
                Some(doc) => Response::Certificate {
                    doc: doc.bytes().to_vec(),
                },
                None => Response::NotFound,
            };
            Some((token, response))
        };
        match self
            .reads
            .cached_document(uuid, unix_now(), reads::ReadFor::Peer, answer)
        {
            Ok(()) => {
                self.handed_over.insert(token, channel);
            }
            Err(_) => {
                self.count(Counter::CacheReadsBusy);
                self.respond(channel, Response::NotFound);
            }
        }
    }

    pub(super) fn on_response(
        &mut self,
        peer: PeerId,
        id: request_response::OutboundRequestId,
        response: Result<Response, NetError>,
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

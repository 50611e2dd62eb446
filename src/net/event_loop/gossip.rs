//! The event loop's gossip side: every message is held to the per-peer and per-author
//! buckets before it is queued; a user node's channel service judges the rest, a relay
//! forwards only valid public-channel announcements.

use std::time::Instant;

use libp2p::{gossipsub, PeerId};
use tracing::debug;
use uuid::Uuid;

use super::EventLoop;
use crate::counters::Counter;
use crate::counters::Verdict;
use crate::identity::SignedDocument;
use crate::net::{GossipEvent, GossipIn};
use crate::unix_now;
use crate::wire::frame as channel_frame;

impl EventLoop {
    pub(super) fn on_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let msg = GossipIn {
                    id: message_id,
                    source: propagation_source,
                    author: message.source,
                    topic: message.topic.into_string(),
                    data: message.data,
                };
                // Before the queue and before any signature check: a flood beyond the
                // buckets costs us a hash lookup, and honest frames keep their place.
                let announce = msg.topic == channel_frame::ANNOUNCE_TOPIC;
                if let Err(why) =
                    self.gossip_limits
                        .admit(msg.source, msg.author, announce, Instant::now())
                {
                    self.count(why.counter());
                    debug!(peer = %msg.source, reason = why.counter().as_str(), "gossip over its rate");
                    self.report(msg.id, msg.source, gossipsub::MessageAcceptance::Ignore);
                    return;
                }
                match &self.gossip {
                    Some(tx) => {
                        if let Err(e) = tx.try_send(GossipEvent::Message(msg)) {
                            let GossipEvent::Message(msg) = e.into_inner() else {
                                return;
                            };
                            self.count(Counter::GossipQueueFull);
                            self.report(msg.id, msg.source, gossipsub::MessageAcceptance::Ignore);
                        }
                    }
                    None => self.validate_announcement(msg),
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some(tx) = &self.gossip {
                    let _ = tx.try_send(GossipEvent::Subscribed {
                        peer: peer_id,
                        topic: topic.into_string(),
                    });
                }
            }
            _ => {}
        }
    }

    pub(super) fn report(
        &mut self,
        id: gossipsub::MessageId,
        source: PeerId,
        a: gossipsub::MessageAcceptance,
    ) {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        self.rejected.meters().frame_received(match a {
            Accept => Verdict::Accepted,
            Reject => Verdict::Rejected,
            Ignore => Verdict::Ignored,
        });
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &source, a);
    }

    /// A relay has no channel service: it forwards only valid public-channel announcements
    /// and nothing on any other topic.
    fn validate_announcement(&mut self, msg: GossipIn) {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        if msg.topic != channel_frame::ANNOUNCE_TOPIC {
            self.report(msg.id, msg.source, Ignore);
            return;
        }
        let now = unix_now();
        let check = |from: &Uuid, bytes: &[u8]| {
            SignedDocument::decode_for(bytes, from, now)
                .map_err(|e| crate::wire::envelope::Reject::BadSenderDocument(e.to_string()))
        };
        let verdict = channel_frame::verify(
            &msg.data,
            channel_frame::Via::Gossip(msg.author),
            crate::unix_now_ms(),
            &check,
            None,
        )
        .and_then(|c| {
            if c.body.kind == channel_frame::CHANNEL && !c.body.private {
                Ok(())
            } else {
                Err(channel_frame::Drop::BadKind)
            }
        });
        let acceptance = match verdict {
            Ok(()) => Accept,
            Err(channel_frame::Drop::Stale) => Ignore,
            Err(d) => {
                self.count(d.counter());
                Reject
            }
        };
        self.report(msg.id, msg.source, acceptance);
    }
}

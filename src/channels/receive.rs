//! Frames gossip hands us: checked against what we know ([`Channels::check`], nothing in a
//! frame trusted before), the verdict reported so gossip forwards only valid frames, then
//! applied (discovered channels, members heard, posts stored, LEAVEs).

use tracing::debug;
use uuid::Uuid;

use super::posting::heard_entry;
use super::Channels;
use crate::counters::Counter;
use crate::net::{GossipIn, MessageAcceptance};
use crate::store::channels::mark_channel_seen;
use crate::wire::frame::{self, Drop, Via};

impl Channels {
    /// Checks one gossip message against what we know; nothing in it is trusted before.
    pub(super) fn check(&self, topic: &str, data: &[u8], via: Via) -> Result<frame::Checked, Drop> {
        let now = crate::unix_now_ms();
        let m = &self.inner.messenger;
        let sender_document = |from: &Uuid, bytes: &[u8]| m.check_sender_document(from, bytes);
        if topic == frame::ANNOUNCE_TOPIC {
            let c = frame::verify(data, via, now, &sender_document, Some(m.key_cache()))?;
            if c.body.kind != frame::CHANNEL || c.body.private {
                return Err(Drop::BadKind);
            }
            if self.state().recent.contains(&c.body.msg_id) {
                return Err(Drop::Duplicate);
            }
            // An announcer's document is not kept: discovery never fills the directory.
            return Ok(c);
        }
        let id = frame::channel_of_topic(topic).ok_or(Drop::UnknownChannel)?;
        let row = self
            .state()
            .rows
            .get(&id)
            .filter(|r| r.joined)
            .cloned()
            .ok_or(Drop::UnknownChannel)?;
        let opened;
        let signed: &[u8] = if row.private {
            let sealed = frame::sealed_header(data)?;
            if sealed.channel != *id.as_bytes() {
                return Err(Drop::WrongChannel);
            }
            if sealed.epoch > row.epoch {
                return Err(Drop::UnknownEpoch);
            }
            if sealed.epoch < row.epoch {
                return Err(Drop::WrongEpoch);
            }
            let key = row.key.ok_or(Drop::UnknownEpoch)?;
            opened = frame::open(&sealed, &key)?;
            &opened
        } else {
            data
        };
        let c = frame::verify(signed, via, now, &sender_document, Some(m.key_cache()))?;
        if c.body.channel != *id.as_bytes() {
            return Err(Drop::WrongChannel);
        }
        if c.body.private != row.private {
            return Err(Drop::WrongForm);
        }
        if row.private && c.body.epoch != row.epoch {
            return Err(Drop::WrongEpoch);
        }
        // Only posts and LEAVEs are stored (see `apply`), so only they need the disk.
        let stored = matches!(c.body.kind.as_str(), frame::TEXT | frame::LEAVE);
        if self.state().recent.contains(&c.body.msg_id)
            || (stored
                && self
                    .inner
                    .store
                    .channel_seen(&c.body.msg_id)
                    .unwrap_or(false))
        {
            return Err(Drop::Duplicate);
        }
        // Every check passed: only now may a new sender's document be written.
        m.keep_sender_document(&c.sender, true);
        Ok(c)
    }

    pub(super) async fn on_message(&self, msg: GossipIn) {
        #[cfg(feature = "test-hooks")]
        self.to_tap(&msg.topic, &msg.data);
        let verdict = self.check(&msg.topic, &msg.data, Via::Gossip(msg.author));
        let acceptance = match &verdict {
            Ok(_) => MessageAcceptance::Accept,
            Err(d) => {
                self.inner.counters.count(d.counter());
                debug!(peer = %msg.source, topic = %msg.topic, reason = %d, "dropped a channel frame");
                // An old epoch, for one, is what honest peers still forward for a moment
                // after a rotation: not forwarded, but not held against them either.
                if d.blames_sender() {
                    MessageAcceptance::Reject
                } else {
                    MessageAcceptance::Ignore
                }
            }
        };
        let _ = self
            .inner
            .net
            .validate(msg.id, msg.source, acceptance)
            .await;
        if let Ok(c) = verdict {
            self.apply(&msg.topic, c, msg.data).await;
        }
    }

    /// Acts on a valid frame; `data` is the frame as it was on the topic.
    async fn apply(&self, topic: &str, c: frame::Checked, data: Vec<u8>) {
        let now = crate::unix_now_ms();
        let b = c.body;
        let from = Uuid::from_bytes(b.from);
        let id = Uuid::from_bytes(b.channel);
        self.state().remember_id(b.msg_id);
        if topic == frame::ANNOUNCE_TOPIC {
            let taken = self.state().discovered.announced(id, &b.name, from, now);
            if taken.is_err() {
                self.inner.counters.count(Counter::AnnounceOriginBound);
            }
            return;
        }
        // LEAVE ids are stored (a replayed LEAVE must not rotate a key again); JOIN and
        // CHANNEL frames, which every member re-sends periodically, are remembered in memory
        // only: a replay of one just refreshes a member's last-heard time.
        if b.kind == frame::LEAVE {
            let (msg_id, ts) = (b.msg_id, b.ts);
            let _ = self
                .inner
                .messenger
                .writer()
                .write(move |txn| mark_channel_seen(txn, &msg_id, ts))
                .await;
        }
        match b.kind.as_str() {
            frame::LEAVE => self.member_left(id, from).await,
            kind => {
                self.state().heard.hear(id, from, now);
                self.note_key_holder(id, from);
                if kind == frame::TEXT {
                    self.store_heard_post(heard_entry(b), data).await;
                }
            }
        }
    }
}

//! Sending on a channel: `channel send`, the frames we publish (JOIN, LEAVE, CHANNEL,
//! TEXT), announcements (debounced when peers subscribe), and storing posts, ours and those
//! heard, through the writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_bytes::ByteArray;
use tracing::warn;
use uuid::Uuid;

use super::{fail, ChannelError, Channels};
use crate::counters::Counter;
use crate::error::ErrorKind;
use crate::identity::MessageKeys;
use crate::messaging::Stored;
use crate::store::channels::{keep_channel_frame, mark_channel_seen};
use crate::store::messages::append_history;
use crate::store::{ChannelRow, HistoryEntry, Queued};
use crate::wire::frame::{self, ChannelBody};

/// Least time between two CHANNEL frames sent because a peer subscribed.
pub const CHANNEL_DEBOUNCE: Duration = Duration::from_secs(2);

/// Why one of our frames did not go out (its words are what `channel send` prints after
/// "not sent: ").
#[derive(Debug, thiserror::Error)]
pub(super) enum NotPublished {
    /// Our identity's keys are not there (yet): the message says why.
    #[error("{0}")]
    NoIdentity(String),
    #[error("unknown channel")]
    UnknownChannel,
    /// A private channel whose key we do not hold.
    #[error("no key for this channel")]
    NoKey,
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

impl Channels {
    /// Posts to a channel; `Ok` once gossip sent it to at least one peer.
    pub async fn send(&self, target: &str, text: String) -> Result<(Uuid, usize), ChannelError> {
        if text.len() > frame::MAX_CHANNEL_TEXT {
            return Err(fail(
                ErrorKind::BadInput,
                format!(
                    "the post is {} bytes; the limit is {}",
                    text.len(),
                    frame::MAX_CHANNEL_TEXT
                ),
            ));
        }
        let (id, row) = self.resolve(target)?;
        if !row.as_ref().is_some_and(|r| r.joined) {
            return Err(fail(
                ErrorKind::Failed,
                format!("you are not in {target}; join it first"),
            ));
        }
        let (body, data, peers) = self
            .publish_frame(id, frame::TEXT, text)
            .await
            .map_err(|e| fail(ErrorKind::Failed, format!("not sent: {e}")))?;
        let entry = HistoryEntry {
            msg_id: body.msg_id,
            incoming: false,
            peer: *id.as_bytes(),
            ts: body.ts,
            text: body.text,
            attachments: Vec::new(),
            status: "sent".into(),
            detail: None,
            channel: Some(ByteArray::new(*id.as_bytes())),
        };
        self.store_post(entry, data).await;
        Ok((Uuid::from_bytes(body.msg_id), peers))
    }

    /// A new frame of `kind` from us on channel `id` as we hold it.
    async fn body(
        &self,
        id: Uuid,
        kind: &str,
        text: String,
    ) -> Result<(ChannelBody, ChannelRow, Arc<MessageKeys>), NotPublished> {
        let me = self
            .me()
            .await
            .map_err(|e| NotPublished::NoIdentity(e.message))?;
        let row = self
            .state()
            .rows
            .get(&id)
            .cloned()
            .ok_or(NotPublished::UnknownChannel)?;
        let body = ChannelBody {
            v: frame::FRAME_VERSION,
            msg_id: *Uuid::new_v4().as_bytes(),
            from: *me.uuid.as_bytes(),
            channel: *id.as_bytes(),
            ts: crate::unix_now_ms(),
            kind: kind.to_string(),
            name: row.name.clone(),
            private: row.private,
            epoch: row.epoch,
            text,
        };
        // A copy of our own frame that comes back through the mesh is a duplicate.
        self.state().remember_id(body.msg_id);
        Ok((body, row, me))
    }

    /// Signs (and for a private channel seals) a frame and publishes it on the channel.
    pub(super) async fn publish_frame(
        &self,
        id: Uuid,
        kind: &str,
        text: String,
    ) -> Result<(ChannelBody, Vec<u8>, usize), NotPublished> {
        let (body, row, me) = self.body(id, kind, text).await?;
        let signed = frame::sign(&body, &me);
        let data = match (row.private, row.key) {
            (false, _) => signed,
            (true, Some(key)) => {
                let nonce: [u8; 12] = crate::identity::random_secret()[..12]
                    .try_into()
                    .unwrap_or([0; 12]);
                frame::seal(&key, id.as_bytes(), row.epoch, nonce, &signed)
            }
            (true, None) => return Err(NotPublished::NoKey),
        };
        let peers = self
            .inner
            .net
            .publish(frame::topic(&id), data.clone())
            .await?;
        Ok((body, data, peers))
    }

    /// Announces `id` now, or, if it was announced less than [`CHANNEL_DEBOUNCE`] ago, once
    /// that time is up: a burst of newcomers gets one announcement, and the last of them
    /// still hears it (not only the next periodic one, minutes later).
    pub(super) async fn announce_debounced(&self, id: Uuid) {
        let wait = {
            let mut st = self.state();
            let since = st.last_channel_frame.get(&id).map(|t| t.elapsed());
            match since {
                Some(since) if since < CHANNEL_DEBOUNCE => {
                    if !st.announce_pending.insert(id) {
                        return;
                    }
                    Some(CHANNEL_DEBOUNCE - since)
                }
                _ => None,
            }
        };
        match wait {
            None => {
                let _ = self.announce(id).await;
            }
            Some(wait) => {
                let c = self.clone();
                self.spawn(async move {
                    tokio::time::sleep(wait).await;
                    c.state().announce_pending.remove(&id);
                    let _ = c.announce(id).await;
                });
            }
        }
    }

    /// Sends CHANNEL on the channel's topic and, for a public channel, on the announce
    /// topic (a frame of its own there: ids are remembered across topics).
    pub(super) async fn announce(&self, id: Uuid) -> Result<(), NotPublished> {
        self.state().last_channel_frame.insert(id, Instant::now());
        let on_channel = self.publish_frame(id, frame::CHANNEL, String::new()).await;
        if self.state().rows.get(&id).is_some_and(|r| !r.private) {
            let (body, _, me) = self.body(id, frame::CHANNEL, String::new()).await?;
            self.inner
                .net
                .publish(frame::ANNOUNCE_TOPIC.into(), frame::sign(&body, &me))
                .await?;
        }
        on_channel.map(|_| ())
    }

    /// Stores our own post and waits for the commit (`channel send` answers after it).
    async fn store_post(&self, entry: HistoryEntry, frame: Vec<u8>) {
        if let Some(q) = self.queue_post(entry, frame).await {
            self.posted(q.committed().await);
        }
    }

    /// Stores a post from the mesh without waiting for the disk: the commit is awaited, in
    /// order, by [`super::commit_loop`], so the next frame is validated (and forwarded) while
    /// this one's group is being made durable. What `recv` shows still waits for the commit.
    pub(super) async fn store_heard_post(&self, entry: HistoryEntry, frame: Vec<u8>) {
        if let Some(q) = self.queue_post(entry, frame).await {
            // Bounded: when the disk is this far behind, validation waits for it.
            let _ = self.inner.committing.send(q).await;
        }
    }

    /// Queues a post for the disk: its id (a second copy is a duplicate), its history
    /// entry, and its frame as it was on the topic (what CHANNEL-HISTORY hands out).
    async fn queue_post(
        &self,
        entry: HistoryEntry,
        frame: Vec<u8>,
    ) -> Option<Queued<Option<Stored>>> {
        let queued = self
            .inner
            .messenger
            .writer()
            .queue(move |txn| {
                let (msg_id, ts) = (entry.msg_id, entry.ts);
                if !mark_channel_seen(txn, &msg_id, ts)? {
                    return Ok(None);
                }
                if let Some(channel) = &entry.channel {
                    keep_channel_frame(txn, channel, ts, &msg_id, &frame)?;
                }
                let seq = append_history(txn, &entry)?;
                Ok(Some((seq, entry)))
            })
            .await;
        match queued {
            Ok(q) => Some(q),
            Err(e) => {
                warn!(error = %e, "could not store a channel post");
                None
            }
        }
    }

    pub(super) fn posted(&self, stored: Result<Option<Stored>, crate::store::StoreError>) {
        match stored {
            Ok(Some(s)) => self.inner.messenger.announce_stored(s),
            Ok(None) => self.inner.counters.count(Counter::ChannelDuplicate),
            Err(e) => warn!(error = %e, "could not store a channel post"),
        }
    }
}

/// The history entry of a post heard from another member.
pub(super) fn heard_entry(b: ChannelBody) -> HistoryEntry {
    HistoryEntry {
        msg_id: b.msg_id,
        incoming: true,
        peer: b.from,
        ts: b.ts,
        text: b.text,
        attachments: Vec::new(),
        status: "received".into(),
        detail: None,
        channel: Some(ByteArray::new(b.channel)),
    }
}

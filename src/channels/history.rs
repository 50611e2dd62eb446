//! Channel history over CHANNEL-HISTORY: answering peers' requests from the posts we keep
//! (`history_loop`), and carrying out what [`catchup::CatchUps`] decides when we were away
//! (`catch_up_loop`): each request, and the checks and storing of the frames it brings.

use std::time::Instant;

use libp2p::PeerId;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use uuid::Uuid;

use super::catchup::{self, Answer, AskId, CatchUps, Out};
use super::posting::heard_entry;
use super::Channels;
use crate::counters::Counter;
use crate::net::dial::DialReason;
use crate::net::ratelimit::RateLimiter;
use crate::net::InboundVerb;
use crate::wire::frame::{self, Via};
use crate::wire::verbs::{
    Nack, Request, Response, HISTORY_CURSOR_BYTES, MAX_HISTORY_BYTES, MAX_HISTORY_FRAMES,
};

/// Bytes of channel history all peers together may have from us, per second (and twice
/// that at once): what a stranger can make us send, whatever its number of PeerIds.
pub const HISTORY_BYTES_PER_SEC: u32 = 1024 * 1024;
/// What the checks before a history page cost from [`HISTORY_BYTES_PER_SEC`], charged
/// before they run (up to 256 documents read and verified for a private channel).
const HISTORY_CHECK_COST: f64 = 16.0 * 1024.0;

/// The budget of history bytes we send, shared by all peers.
pub(super) fn history_budget() -> RateLimiter<()> {
    RateLimiter::new(2 * HISTORY_BYTES_PER_SEC, HISTORY_BYTES_PER_SEC as f64, 1)
}

/// What the catch-up loop hears.
pub(super) enum CatchUpEvent {
    /// `peer` subscribed to the topic of `channel`, which we are in.
    Subscribed { channel: Uuid, peer: PeerId },
    /// The answer to the request `id` of `channel`'s catch-up.
    Answered {
        channel: Uuid,
        id: AskId,
        answer: Answer,
    },
}

impl Channels {
    /// One page of CHANNEL-HISTORY for `peer`: only of a channel we are in; of a public
    /// one only for a peer on its topic, of a private one only for a member we know holds
    /// its key (others would get ciphertext they cannot read, and learn how much was
    /// said). All answers together stay within [`HISTORY_BYTES_PER_SEC`].
    async fn history_page(&self, peer: PeerId, id: Uuid, since: u64, after: &[u8]) -> Response {
        let nack = Response::from;
        let Some(row) = self.state().rows.get(&id).filter(|r| r.joined).cloned() else {
            self.inner.counters.count(Counter::HistoryUnknownChannel);
            return nack(Nack::UnknownChannel);
        };
        // The membership check of a private channel reads and verifies documents: it is
        // paid for from the budget before it runs, so a stranger cannot make us do it for free.
        if !self.spend_history(HISTORY_CHECK_COST) {
            self.inner.counters.count(Counter::HistoryBusy);
            return nack(Nack::Busy);
        }
        let allowed = if row.private {
            let m = &self.inner.messenger;
            row.members.iter().any(|u| {
                m.latest_document(&Uuid::from_bytes(**u))
                    .is_some_and(|d| d.doc().peer_id() == Some(peer))
            })
        } else {
            let on_topic = self.inner.net.gossip_peers(frame::topic(&id)).await;
            on_topic.is_ok_and(|peers| peers.iter().any(|(p, _)| *p == peer))
        };
        if !allowed {
            self.inner.counters.count(Counter::HistoryNotMember);
            return nack(Nack::UnknownChannel);
        }
        let after: Option<[u8; HISTORY_CURSOR_BYTES]> = match after.len() {
            0 => None,
            HISTORY_CURSOR_BYTES => after.try_into().ok(),
            _ => {
                self.inner.counters.count(Counter::RequestMalformed);
                return nack(Nack::Malformed);
            }
        };
        // Never older than a receiver would take.
        let horizon = crate::unix_now_ms().saturating_sub(frame::MAX_AGE_MS);
        let store = self.inner.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            store.channel_frames(
                id.as_bytes(),
                since.max(horizon),
                after.as_ref(),
                MAX_HISTORY_FRAMES,
                MAX_HISTORY_BYTES,
            )
        })
        .await;
        let (frames, more) = match read {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                warn!(error = %e, "could not read channel history");
                return nack(Nack::Busy);
            }
            Err(_) => return nack(Nack::Busy),
        };
        let bytes: usize = frames.iter().map(|(_, f)| f.len()).sum();
        if !self.spend_history(bytes as f64) {
            self.inner.counters.count(Counter::HistoryBusy);
            return nack(Nack::Busy);
        }
        Response::ChannelHistory {
            next: frames.last().map(|(c, _)| c.to_vec()).unwrap_or_default(),
            frames: frames
                .into_iter()
                .map(|(_, f)| serde_bytes::ByteBuf::from(f))
                .collect(),
            more,
        }
    }

    /// Takes `cost` from the history budget; false if it is short.
    fn spend_history(&self, cost: f64) -> bool {
        self.inner
            .history_budget
            .lock()
            .allow_n(&(), cost, Instant::now())
    }

    /// Asks `peer` for one page of `channel`'s posts and stores those that check out exactly
    /// as gossip would, but from any member; then hands the answer to the catch-up loop.
    async fn ask(&self, id: AskId, peer: PeerId, channel: Uuid, since: u64, after: Vec<u8>) {
        let request = Request::ChannelHistory {
            channel: *channel.as_bytes(),
            since,
            after,
        };
        let answer = match self
            .inner
            .net
            .request(peer, Vec::new(), DialReason::Automatic, request)
            .await
        {
            Ok(Response::ChannelHistory { frames, more, next }) => {
                if frames.len() > MAX_HISTORY_FRAMES {
                    self.inner.counters.count(Counter::ChannelHistoryOversized);
                    Answer::Nothing
                } else if frames.is_empty() {
                    Answer::Nothing
                } else {
                    let posts = self.store_history(peer, channel, frames).await;
                    Answer::Page { posts, more, next }
                }
            }
            Ok(Response::Nack { reason }) if reason == "unknown_channel" => Answer::NotYet,
            Ok(other) => {
                debug!(%peer, channel = %channel, answer = ?other, "no channel history");
                Answer::Nothing
            }
            Err(e) => {
                debug!(%peer, channel = %channel, error = %e, "no channel history");
                Answer::Nothing
            }
        };
        let event = CatchUpEvent::Answered {
            channel,
            id,
            answer,
        };
        let _ = self.inner.catch_ups.send(event).await;
    }

    /// Checks the frames of one page of history and stores the posts; how many were stored.
    async fn store_history(
        &self,
        peer: PeerId,
        id: Uuid,
        frames: Vec<serde_bytes::ByteBuf>,
    ) -> usize {
        let topic = frame::topic(&id);
        let mut stored = 0;
        for f in frames {
            match self.check(&topic, &f, Via::History) {
                Ok(c) if c.body.kind == frame::TEXT => {
                    self.state().remember_id(c.body.msg_id);
                    self.store_heard_post(heard_entry(c.body), f.into_vec())
                        .await;
                    stored += 1;
                }
                Ok(_) => self.inner.counters.count(Counter::ChannelHistoryBadKind),
                // What we have, or can no longer check: skipped, not counted.
                Err(d) if !d.blames_sender() => {}
                Err(d) => {
                    self.inner.counters.count(d.counter());
                    debug!(%peer, channel = %id, reason = %d, "dropped a frame of channel history");
                }
            }
        }
        stored
    }

    /// Carries out what the catch-up machine decided.
    fn run_catch_up(&self, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Ask {
                    id,
                    peer,
                    channel,
                    since,
                    after,
                } => {
                    let c = self.clone();
                    self.spawn(async move { c.ask(id, peer, channel, since, after).await });
                }
                Out::Done {
                    channel,
                    peer: Some(peer),
                    posts,
                } if posts > 0 => {
                    debug!(channel = %channel, %peer, posts, "caught up on missed posts");
                }
                Out::Done { .. } => {}
            }
        }
    }
}

/// Answers CHANNEL-HISTORY requests, one at a time.
pub(super) async fn history_loop(c: Channels, mut rx: mpsc::Receiver<InboundVerb>) {
    while let Some(v) = rx.recv().await {
        let response = match v.request {
            Request::ChannelHistory {
                channel,
                since,
                after,
            } => {
                c.history_page(v.peer, Uuid::from_bytes(channel), since, &after)
                    .await
            }
            _ => Response::Nack {
                reason: "malformed".into(),
            },
        };
        let _ = c.inner.net.respond(v.token, response).await;
    }
}

/// Drives [`CatchUps`]: newcomers on our channels' topics, the answers to its requests, and
/// its timers.
pub(super) async fn catch_up_loop(c: Channels, mut rx: mpsc::Receiver<CatchUpEvent>) {
    let mut machine = CatchUps::default();
    loop {
        let timer = machine.next_timer();
        let sleep = async {
            match timer {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let out = tokio::select! {
            event = rx.recv() => match event {
                None => return,
                Some(CatchUpEvent::Subscribed { channel, peer }) => {
                    if !machine.subscribed(channel, Instant::now()) {
                        continue;
                    }
                    let now_ms = crate::unix_now_ms();
                    let newest = c
                        .inner
                        .store
                        .newest_channel_frame(channel.as_bytes())
                        .ok()
                        .flatten();
                    let since = catchup::since(newest, now_ms);
                    // The member that just arrived first, then a few others on the topic.
                    let others = c
                        .inner
                        .net
                        .gossip_peers(frame::topic(&channel))
                        .await
                        .unwrap_or_default();
                    machine.begin(channel, peer, others, since, Instant::now())
                }
                Some(CatchUpEvent::Answered { channel, id, answer }) => {
                    machine.answered(channel, id, answer, Instant::now())
                }
            },
            () = sleep => machine.on_timer(Instant::now()),
        };
        c.run_catch_up(out);
    }
}

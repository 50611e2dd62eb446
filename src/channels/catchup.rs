//! Catching up on a channel's posts missed while away, as a state machine with the time
//! handed in (iroh-gossip's `proto` is the model): when a peer subscribes to a channel we are
//! in, [`CatchUps`] decides whether a catch-up begins, which peers it asks in turn, page after
//! page, when it asks again, and when it gives up. It does no IO: the service's catch-up
//! loop carries out each [`Out::Ask`] (a CHANNEL-HISTORY request, whose frames it checks and
//! stores), hands the [`Answer`] back, and calls [`CatchUps::on_timer`] at
//! [`CatchUps::next_timer`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use uuid::Uuid;

use crate::wire::frame;
use crate::wire::verbs::HISTORY_CURSOR_BYTES;

/// Least time between two catch-ups of one channel.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(30);
/// How far before the newest post we hold a catch-up starts: posts of other members may
/// have reached us out of order, and clocks differ by up to the skew a frame may have.
pub const CATCH_UP_OVERLAP_MS: u64 = crate::wire::envelope::MAX_FUTURE_SKEW_MS;
/// Most members one catch-up asks before it gives up until the next.
pub const CATCH_UP_PEERS: usize = 3;
/// How long a catch-up waits before asking a member once more that did not know we are
/// in the channel.
pub const CATCH_UP_RETRY: Duration = Duration::from_secs(1);
/// Most pages one catch-up reads.
pub const CATCH_UP_PAGES: usize = 16;
/// How long one request may go unanswered before its peer counts as having nothing: well
/// past the request timeout of the verbs protocol (10 s), so it fires only if an answer is
/// lost between the request and the machine.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one catch-up runs: a member that answers slowly, page after page, must not hold
/// the channel's catch-ups back for long (one runs at a time per channel).
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Where a catch-up starts, given the newest post we hold of the channel: a little before it
/// ([`CATCH_UP_OVERLAP_MS`]), and at most [`frame::MAX_AGE_MS`] back (older frames are
/// refused as stale anyway).
pub fn since(newest_ms: Option<u64>, now_ms: u64) -> u64 {
    // A post stamped ahead of our clock (up to the allowed skew) must not move the start
    // past what we missed.
    let newest = newest_ms.unwrap_or(0).min(now_ms);
    newest
        .saturating_sub(CATCH_UP_OVERLAP_MS)
        .max(now_ms.saturating_sub(frame::MAX_AGE_MS))
}

/// Tells an answer to the request it answers from a late one to an earlier request.
pub type AskId = u64;

/// What the catch-up loop is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Ask `peer` for the posts of `channel` since `since`, after the cursor `after` (empty
    /// for the first page), and hand its [`Answer`] back under `id`.
    Ask {
        id: AskId,
        peer: PeerId,
        channel: Uuid,
        since: u64,
        after: Vec<u8>,
    },
    /// The catch-up of `channel` ended: `peer` gave us pages, with `posts` new posts in
    /// them, or (`None`) nobody asked had any.
    Done {
        channel: Uuid,
        peer: Option<PeerId>,
        posts: usize,
    },
}

/// How a peer answered one request, as the catch-up loop saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A page with frames in it (checked and stored), of which `posts` were new; `more`
    /// and `next` as the peer sent them.
    Page {
        posts: usize,
        more: bool,
        next: Vec<u8>,
    },
    /// The peer does not know we are in the channel (yet): our subscription travels on
    /// gossip's stream, the request on one of its own.
    NotYet,
    /// Anything else: an empty or oversized page, another NACK, a failed request.
    Nothing,
}

/// What a catch-up waits for.
#[derive(Clone, Copy, Debug)]
enum Wait {
    Answer { id: AskId, deadline: Instant },
    Retry { at: Instant },
}

/// One catch-up: the peer asked now, the ones still to ask, and where its pages are.
struct Run {
    since: u64,
    peer: PeerId,
    rest: VecDeque<PeerId>,
    after: Vec<u8>,
    page: usize,
    retried: bool,
    posts: usize,
    answered: bool,
    wait: Wait,
    /// Ends at this time whatever it waits for ([`RUN_LIMIT`] after it began).
    until: Instant,
}

/// The catch-ups of every channel: at most one running per channel, one request of it in
/// flight at a time.
#[derive(Default)]
pub struct CatchUps {
    /// When each channel's last catch-up began.
    began: HashMap<Uuid, Instant>,
    runs: HashMap<Uuid, Run>,
    next_id: AskId,
}

impl CatchUps {
    /// A peer subscribed to `channel`'s topic. True if a catch-up of it begins (then call
    /// [`CatchUps::begin`]): unless one began in the last [`CATCH_UP_EVERY`] or still runs.
    pub fn subscribed(&mut self, channel: Uuid, now: Instant) -> bool {
        let recent = self
            .began
            .get(&channel)
            .is_some_and(|t| now.saturating_duration_since(*t) < CATCH_UP_EVERY);
        if recent || self.runs.contains_key(&channel) {
            return false;
        }
        self.began.insert(channel, now);
        true
    }

    /// Begins catching up on `channel` from `since`: the member that just arrived first; if
    /// it has nothing for us (it was away too, or does not know us yet), a few `others` on
    /// the topic, best gossip score first, up to [`CATCH_UP_PEERS`] in all.
    pub fn begin(
        &mut self,
        channel: Uuid,
        first: PeerId,
        mut others: Vec<(PeerId, f64)>,
        since: u64,
        now: Instant,
    ) -> Vec<Out> {
        others.retain(|(p, _)| *p != first);
        others.sort_by(|x, y| y.1.total_cmp(&x.1));
        let rest = others
            .into_iter()
            .map(|(p, _)| p)
            .take(CATCH_UP_PEERS - 1)
            .collect();
        let run = Run {
            since,
            peer: first,
            rest,
            after: Vec::new(),
            page: 0,
            retried: false,
            posts: 0,
            answered: false,
            wait: Wait::Retry { at: now },
            until: now + RUN_LIMIT,
        };
        self.runs.insert(channel, run);
        self.ask(channel, now).into_iter().collect()
    }

    /// The peer asked under `id` answered. An answer to anything but the request in flight
    /// (one given up on) changes nothing.
    pub fn answered(&mut self, channel: Uuid, id: AskId, answer: Answer, now: Instant) -> Vec<Out> {
        let Some(run) = self.runs.get_mut(&channel) else {
            return Vec::new();
        };
        if !matches!(run.wait, Wait::Answer { id: current, .. } if current == id) {
            return Vec::new();
        }
        match answer {
            Answer::Page { posts, more, next } => {
                run.answered = true;
                run.posts += posts;
                // The cursor must move forward, or the peer could keep us paging in place.
                if !more || next.len() != HISTORY_CURSOR_BYTES || next <= run.after {
                    return self.peer_done(channel, now);
                }
                run.after = next;
                run.page += 1;
                if run.page >= CATCH_UP_PAGES {
                    return self.peer_done(channel, now);
                }
                self.ask(channel, now).into_iter().collect()
            }
            Answer::NotYet if !run.retried => {
                run.retried = true;
                run.wait = Wait::Retry {
                    at: now + CATCH_UP_RETRY,
                };
                Vec::new()
            }
            Answer::NotYet | Answer::Nothing => self.peer_done(channel, now),
        }
    }

    /// When [`CatchUps::on_timer`] is next due.
    pub fn next_timer(&self) -> Option<Instant> {
        self.runs
            .values()
            .map(|r| match r.wait {
                Wait::Answer { deadline, .. } => deadline.min(r.until),
                Wait::Retry { at } => at.min(r.until),
            })
            .min()
    }

    /// Asks again where a retry is due, gives up on requests unanswered for
    /// [`ASK_TIMEOUT`], and ends runs past [`RUN_LIMIT`].
    pub fn on_timer(&mut self, now: Instant) -> Vec<Out> {
        let over: Vec<Uuid> = self
            .runs
            .iter()
            .filter(|(_, r)| r.until <= now)
            .map(|(ch, _)| *ch)
            .collect();
        let mut out: Vec<Out> = over.into_iter().filter_map(|ch| self.end(ch)).collect();
        let due: Vec<(Uuid, bool)> = self
            .runs
            .iter()
            .filter_map(|(ch, r)| match r.wait {
                Wait::Retry { at } if at <= now => Some((*ch, true)),
                Wait::Answer { deadline, .. } if deadline <= now => Some((*ch, false)),
                _ => None,
            })
            .collect();
        for (channel, retry) in due {
            if retry {
                out.extend(self.ask(channel, now));
            } else {
                out.extend(self.peer_done(channel, now));
            }
        }
        out
    }

    /// Whether a catch-up of `channel` is running.
    pub fn running(&self, channel: &Uuid) -> bool {
        self.runs.contains_key(channel)
    }

    /// The next request of `channel`'s run.
    fn ask(&mut self, channel: Uuid, now: Instant) -> Option<Out> {
        let run = self.runs.get_mut(&channel)?;
        let id = self.next_id;
        self.next_id += 1;
        run.wait = Wait::Answer {
            id,
            deadline: now + ASK_TIMEOUT,
        };
        Some(Out::Ask {
            id,
            peer: run.peer,
            channel,
            since: run.since,
            after: run.after.clone(),
        })
    }

    /// The peer asked is done: the run ends if it gave us pages, else the next peer is asked
    /// from the same time.
    fn peer_done(&mut self, channel: Uuid, now: Instant) -> Vec<Out> {
        let Some(run) = self.runs.get_mut(&channel) else {
            return Vec::new();
        };
        if !run.answered {
            if let Some(next) = run.rest.pop_front() {
                run.peer = next;
                run.after.clear();
                run.page = 0;
                run.retried = false;
                return self.ask(channel, now).into_iter().collect();
            }
        }
        self.end(channel).into_iter().collect()
    }

    /// Ends `channel`'s run.
    fn end(&mut self, channel: Uuid) -> Option<Out> {
        let run = self.runs.remove(&channel)?;
        Some(Out::Done {
            channel,
            peer: run.answered.then_some(run.peer),
            posts: run.posts,
        })
    }
}

#[cfg(test)]
mod tests;

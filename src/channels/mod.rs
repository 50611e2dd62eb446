//! Channels over gossipsub (DESIGN.md section 7): the [`Channels`] service creates, joins
//! and leaves channels, validates every frame gossip hands it (reporting the verdict back
//! so gossip forwards only valid frames and scores down peers that send invalid ones),
//! stores posts in the history `recv` reads, keeps private channels' keys and rotates them
//! when a member leaves, and re-announces what it is in.
//!
//! Members find each other through Kademlia provider records of the channel (so nodes that
//! never met, on different networks, still form one mesh); public channels are also
//! announced on [`frame::ANNOUNCE_TOPIC`], which is how `channel list --all` discovers them.
//!
//! The decisions are pure and tested without a network: who is in a channel and who holds
//! its key in [`membership`], when to ask whom for missed posts in [`catchup`], which
//! announced channels are remembered in [`discovery`]. The rest carries them out: commands
//! in `commands.rs`, the views `channel list` and `channel members` print in `views.rs`,
//! posting and announcing in `posting.rs`, checking and applying frames in `receive.rs`,
//! serving and fetching history in `history.rs`.

pub mod catchup;
mod commands;
pub mod discovery;
mod history;
#[cfg(feature = "test-hooks")]
mod hooks;
pub mod membership;
mod posting;
mod receive;
mod views;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::shared::Shared;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::counters::{Counter, Counters};
use crate::error::ErrorKind;
use crate::identity::MessageKeys;
use crate::messaging::{GrantNote, Messenger, Stored};
use crate::net::ratelimit::RateLimiter;
use crate::net::InboundVerb;
use crate::net::{Client, GossipEvent};
use crate::store::{ChannelRow, Queued, Store};
use crate::wire::frame;

pub use discovery::MAX_DISCOVERED_PER_ORIGIN;
pub use views::{ChannelView, MemberView};

/// Posts heard from the mesh that may wait for their commit at once; past this, validation
/// waits for the disk. (The writer commits up to 512 jobs in one group.)
const POSTS_COMMITTING: usize = 1024;
/// Recent frame ids kept in memory (the store keeps them for [`SEEN_RETENTION_MS`]).
const RECENT_IDS: usize = 8192;
/// How long the ids of frames are kept: longer than a frame stays fresh.
const SEEN_RETENTION_MS: u64 = 2 * frame::MAX_AGE_MS;
/// A channel with fewer connected members than this looks for more at each interval
/// (gossipsub's own lower mesh bound).
const ENOUGH_PEERS: usize = 4;
/// Requests for channel history waiting to be answered; more are answered `busy`.
pub const HISTORY_QUEUE: usize = 64;
/// Peers newly subscribed to our channels waiting for the catch-up loop; more are not
/// caught up from (the next newcomer, or the next interval, will be).
const CATCH_UP_QUEUE: usize = 256;

/// Why a channel command failed; the CLI turns `kind` into its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ChannelError {
    pub kind: ErrorKind,
    pub message: String,
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> ChannelError {
    ChannelError {
        kind,
        message: message.into(),
    }
}

impl From<crate::store::StoreError> for ChannelError {
    fn from(e: crate::store::StoreError) -> Self {
        fail(ErrorKind::Failed, format!("storage error: {e}"))
    }
}

/// What the service knows in memory, behind one mutex never held across an `await`.
#[derive(Default)]
struct State {
    rows: HashMap<Uuid, ChannelRow>,
    heard: membership::Heard,
    discovered: discovery::Discovery,
    recent: HashSet<[u8; 16]>,
    recent_order: VecDeque<[u8; 16]>,
    last_channel_frame: HashMap<Uuid, Instant>,
    /// Channels with an announcement held back by [`posting::CHANNEL_DEBOUNCE`], still to
    /// be sent.
    announce_pending: HashSet<Uuid>,
    /// Topics tapped by tests: raw frames go to the tap, unvalidated and not forwarded.
    #[cfg(feature = "test-hooks")]
    taps: HashMap<String, tokio::sync::broadcast::Sender<Vec<u8>>>,
}

impl State {
    fn remember_id(&mut self, id: [u8; 16]) {
        if self.recent.insert(id) {
            self.recent_order.push_back(id);
            while self.recent_order.len() > RECENT_IDS {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    /// The channels we are in.
    fn joined(&self) -> Vec<Uuid> {
        self.rows
            .iter()
            .filter(|(_, r)| r.joined)
            .map(|(i, _)| *i)
            .collect()
    }
}

/// Settings for the channel service.
#[derive(Clone, Debug)]
pub struct ChannelsConfig {
    /// How often CHANNEL frames are re-sent and members looked up again.
    pub announce_every: Duration,
}

struct Inner {
    store: Store,
    net: Client,
    messenger: Messenger,
    counters: Counters,
    announce_every: Duration,
    state: Shared<State>,
    /// Posts heard from the mesh, queued for the disk, for [`commit_loop`].
    committing: mpsc::Sender<Queued<Option<Stored>>>,
    /// Peers that subscribed to a channel we are in, for the catch-up loop.
    catch_ups: mpsc::Sender<history::CatchUpEvent>,
    /// Bytes of history pages we may still send (see [`history::HISTORY_BYTES_PER_SEC`]).
    history_budget: Shared<RateLimiter<()>>,
    tasks: crate::tasks::Tasks,
}

/// Handle to the channel service; cheap to clone.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

impl Channels {
    /// Starts the service: loads known channels, rejoins those we are in, and begins
    /// validating gossip.
    pub fn start(
        config: ChannelsConfig,
        messenger: Messenger,
        net: Client,
        gossip: mpsc::Receiver<GossipEvent>,
        grants: mpsc::Receiver<GrantNote>,
        history: mpsc::Receiver<InboundVerb>,
        counters: Counters,
    ) -> Result<Channels, crate::store::StoreError> {
        let store = messenger.store().clone();
        let rows = store.channels()?.into_iter().collect();
        let (committing, commits) = mpsc::channel(POSTS_COMMITTING);
        let (catch_ups, catch_up_rx) = mpsc::channel(CATCH_UP_QUEUE);
        let inner = Arc::new(Inner {
            store,
            net,
            messenger,
            counters,
            announce_every: config.announce_every,
            state: Shared::new(State {
                rows,
                ..State::default()
            }),
            committing,
            catch_ups,
            history_budget: Shared::new(history::history_budget()),
            tasks: Default::default(),
        });
        let c = Channels { inner };
        c.spawn(gossip_loop(c.clone(), gossip));
        c.spawn(commit_loop(c.clone(), commits));
        c.spawn(grant_loop(c.clone(), grants));
        c.spawn(history::history_loop(c.clone(), history));
        c.spawn(history::catch_up_loop(c.clone(), catch_up_rx));
        c.spawn(maintenance(c.clone()));
        Ok(c)
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.tasks.spawn_loop(f);
    }

    /// Stops the service's tasks.
    pub async fn shutdown(self) {
        self.inner.tasks.shutdown().await;
    }

    /// [`Channels::shutdown`], done by `deadline`.
    pub async fn shutdown_by(self, deadline: tokio::time::Instant) {
        self.inner.tasks.shutdown_by(deadline).await;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock()
    }

    async fn me(&self) -> Result<Arc<MessageKeys>, ChannelError> {
        let wait = self.inner.messenger.wait_keys();
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                fail(
                    ErrorKind::Failed,
                    "the node has no identity document yet; try again",
                )
            })
    }

    fn save(&self, id: &Uuid, row: &ChannelRow) -> Result<(), ChannelError> {
        self.inner.store.put_channel(id, row)?;
        self.state().rows.insert(*id, row.clone());
        Ok(())
    }
}

async fn gossip_loop(c: Channels, mut rx: mpsc::Receiver<GossipEvent>) {
    let _ = c
        .inner
        .net
        .subscribe(frame::ANNOUNCE_TOPIC.to_string(), true)
        .await;
    let joined = c.state().joined();
    for id in joined {
        c.activate(id).await;
    }
    while let Some(event) = rx.recv().await {
        match event {
            GossipEvent::Message(msg) => c.on_message(msg).await,
            GossipEvent::Subscribed { peer, topic } => {
                // A newcomer on the announce topic learns our public channels, and a new
                // peer on a channel learns that we are in it.
                let targets: Vec<Uuid> = {
                    let st = c.state();
                    if topic == frame::ANNOUNCE_TOPIC {
                        st.rows
                            .iter()
                            .filter(|(_, r)| r.joined && !r.private)
                            .map(|(i, _)| *i)
                            .collect()
                    } else {
                        frame::channel_of_topic(&topic)
                            .filter(|i| st.rows.get(i).is_some_and(|r| r.joined))
                            .into_iter()
                            .collect()
                    }
                };
                for id in targets {
                    c.announce_debounced(id).await;
                    // A member we were not connected to may hold posts we missed.
                    if topic != frame::ANNOUNCE_TOPIC {
                        let event = history::CatchUpEvent::Subscribed { channel: id, peer };
                        if c.inner.catch_ups.try_send(event).is_err() {
                            c.inner.counters.count(Counter::CatchUpQueueFull);
                        }
                    }
                }
            }
        }
    }
}

/// Waits for the commits of posts heard from the mesh, in the order they were queued, and
/// shows each to `recv --follow` readers once it is durable.
async fn commit_loop(c: Channels, mut rx: mpsc::Receiver<Queued<Option<Stored>>>) {
    while let Some(q) = rx.recv().await {
        c.posted(q.committed().await);
    }
}

async fn grant_loop(c: Channels, mut rx: mpsc::Receiver<GrantNote>) {
    while let Some(note) = rx.recv().await {
        c.on_grant(note);
    }
}

/// Re-announces our channels, looks for members again, and forgets what went quiet.
async fn maintenance(c: Channels) {
    let every = c.inner.announce_every;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = crate::unix_now_ms();
        let quiet = (every.as_millis() as u64).saturating_mul(4);
        let joined: Vec<Uuid> = {
            let mut st = c.state();
            st.heard.forget_quiet(now, quiet);
            st.discovered.forget_quiet(now, quiet);
            st.joined()
        };
        for id in joined {
            let _ = c.announce(id).await;
            // Look members up again only when the mesh is thin: every member doing it every
            // interval, dialing whoever it is not connected to, loads the network for nothing.
            let peers = c.inner.net.gossip_peers(frame::topic(&id)).await;
            if peers.is_ok_and(|p| p.len() < ENOUGH_PEERS) {
                let _ = c.inner.net.find_providers(frame::provider_key(&id)).await;
            }
        }
        let store = c.inner.store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            store.prune_channel_seen(now.saturating_sub(SEEN_RETENTION_MS))
        })
        .await;
    }
}

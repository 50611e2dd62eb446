//! Channels over gossipsub (DESIGN.md section 7): the [`Channels`] service creates, joins
//! and leaves channels, validates every frame gossip hands it (reporting the verdict back
//! so gossip forwards only valid frames and scores down peers that send invalid ones),
//! stores posts in the history `recv` reads, keeps private channels' keys and rotates them
//! when a member leaves, and re-announces what it is in.
//!
//! Members find each other through Kademlia provider records of the channel (so nodes that
//! never met, on different networks, still form one mesh); public channels are also
//! announced on [`frame::ANNOUNCE_TOPIC`], which is how `channel list --all` discovers them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_bytes::ByteArray;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::counters::{Counter, Counters};
use crate::error::ErrorKind::{self, BadInput, Failed, NotFound};
use crate::identity::MessageKeys;
use crate::messaging::{GrantNote, Messenger, Stored};
use crate::net::dial::DialReason;
use crate::net::ratelimit::RateLimiter;
use crate::net::InboundVerb;
use crate::net::{Client, GossipEvent, GossipIn, MessageAcceptance};
use crate::store::channels::{keep_channel_frame, mark_channel_seen};
use crate::store::messages::append_history;
use crate::store::{ChannelRow, GrantOutcome, HistoryEntry, Queued, Store};
use crate::wire::frame::{self, ChannelBody, Drop, Via};
use crate::wire::verbs::{
    Nack, Request, Response, HISTORY_CURSOR_BYTES, MAX_HISTORY_BYTES, MAX_HISTORY_FRAMES,
};
use libp2p::PeerId;

/// Public channels remembered from announcements.
const MAX_DISCOVERED: usize = 1024;
/// Channels one origin (the first identity heard announcing them) may hold in the
/// discovered list; a further new channel of it is dropped and counted.
pub const MAX_DISCOVERED_PER_ORIGIN: usize = 4;
/// Members listed per channel.
const MAX_MEMBERS_HEARD: usize = 1024;
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
/// Least time between two catch-ups of one channel.
const CATCH_UP_EVERY: Duration = Duration::from_secs(30);
/// How far before the newest post we hold a catch-up starts: posts of other members may
/// have reached us out of order, and clocks differ by up to the skew a frame may have.
const CATCH_UP_OVERLAP_MS: u64 = crate::wire::envelope::MAX_FUTURE_SKEW_MS;
/// Bytes of channel history all peers together may have from us, per second (and twice
/// that at once): what a stranger can make us send, whatever its number of PeerIds.
const HISTORY_BYTES_PER_SEC: u32 = 1024 * 1024;
/// What the checks before a history page cost from [`HISTORY_BYTES_PER_SEC`], charged
/// before they run (up to 256 documents read and verified for a private channel).
const HISTORY_CHECK_COST: f64 = 16.0 * 1024.0;
/// Most members one catch-up asks before it gives up until the next.
const CATCH_UP_PEERS: usize = 3;
/// How long a catch-up waits before asking a member once more that did not know we are
/// in the channel.
const CATCH_UP_RETRY: Duration = Duration::from_secs(1);
/// Most pages one catch-up reads.
const CATCH_UP_PAGES: usize = 16;
/// Least time between two CHANNEL frames sent because a peer subscribed.
const CHANNEL_DEBOUNCE: Duration = Duration::from_secs(2);

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
        fail(Failed, format!("storage error: {e}"))
    }
}

/// One channel as `channel list` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelView {
    pub channel_id: String,
    pub name: String,
    pub private: bool,
    pub joined: bool,
    /// A private channel we were given the key to but have not joined.
    pub invited: bool,
    pub members: usize,
    /// A private channel's key epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
}

/// One member as `channel members` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub uuid: String,
    pub name: Option<String>,
}

struct Discovered {
    name: String,
    /// Who announced it first.
    origin: Uuid,
    members: HashSet<Uuid>,
    last_ms: u64,
}

#[derive(Default)]
struct State {
    rows: HashMap<Uuid, ChannelRow>,
    /// Members heard from (JOIN, CHANNEL, posts), by channel, with when.
    heard: HashMap<Uuid, HashMap<Uuid, u64>>,
    discovered: HashMap<Uuid, Discovered>,
    recent: HashSet<[u8; 16]>,
    recent_order: VecDeque<[u8; 16]>,
    last_channel_frame: HashMap<Uuid, Instant>,
    /// Channels with an announcement held back by [`CHANNEL_DEBOUNCE`], still to be sent.
    announce_pending: HashSet<Uuid>,
    /// Topics tapped by tests: raw frames go to the tap, unvalidated and not forwarded.
    taps: HashMap<String, broadcast::Sender<Vec<u8>>>,
    /// When each channel's last catch-up began.
    last_catch_up: HashMap<Uuid, Instant>,
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

    fn hear(&mut self, channel: Uuid, member: Uuid, now: u64) {
        let heard = self.heard.entry(channel).or_default();
        if heard.len() < MAX_MEMBERS_HEARD || heard.contains_key(&member) {
            heard.insert(member, now);
        }
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
    state: Mutex<State>,
    /// Posts heard from the mesh, queued for the disk, for [`commit_loop`].
    committing: mpsc::Sender<Queued<Option<Stored>>>,
    /// Bytes of history pages we may still send (see [`HISTORY_BYTES_PER_SEC`]).
    history_budget: Mutex<RateLimiter<()>>,
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
        let inner = Arc::new(Inner {
            store,
            net,
            messenger,
            counters,
            announce_every: config.announce_every,
            state: Mutex::new(State {
                rows,
                ..State::default()
            }),
            committing,
            history_budget: Mutex::new(RateLimiter::new(
                2 * HISTORY_BYTES_PER_SEC,
                HISTORY_BYTES_PER_SEC as f64,
                1,
            )),
            tasks: Default::default(),
        });
        let c = Channels { inner };
        c.spawn(gossip_loop(c.clone(), gossip));
        c.spawn(commit_loop(c.clone(), commits));
        c.spawn(grant_loop(c.clone(), grants));
        c.spawn(history_loop(c.clone(), history));
        c.spawn(maintenance(c.clone()));
        Ok(c)
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.tasks.spawn(f);
    }

    /// Stops the service's tasks.
    pub async fn shutdown(self) {
        self.inner.tasks.shutdown().await;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn me(&self) -> Result<Arc<MessageKeys>, ChannelError> {
        let wait = self.inner.messenger.wait_keys();
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| fail(Failed, "the node has no identity document yet; try again"))
    }

    fn save(&self, id: &Uuid, row: &ChannelRow) -> Result<(), ChannelError> {
        self.inner.store.put_channel(id, row)?;
        self.state().rows.insert(*id, row.clone());
        Ok(())
    }

    // ---- commands ----

    /// Creates a channel and joins it.
    pub async fn create(&self, name: &str, private: bool) -> Result<Uuid, ChannelError> {
        frame::check_name(name).map_err(|e| fail(BadInput, e))?;
        let me = self.me().await?;
        if self
            .state()
            .rows
            .values()
            .any(|r| r.joined && r.name == name)
        {
            return Err(fail(
                Failed,
                format!("you are already in a channel called {name}"),
            ));
        }
        let id = Uuid::new_v4();
        let row = ChannelRow {
            name: name.to_string(),
            private,
            joined: true,
            key_from: private.then(|| ByteArray::new(*me.uuid.as_bytes())),
            epoch: u32::from(private),
            key: private.then(|| ByteArray::new(crate::identity::random_secret())),
            members: vec![ByteArray::new(*me.uuid.as_bytes())],
            created_ms: crate::unix_now_ms(),
            prev_members: Vec::new(),
        };
        self.save(&id, &row)?;
        info!(channel = %id, name, private, "created a channel");
        self.activate(id).await;
        Ok(id)
    }

    /// Finds a channel by id or name: ours first, then discovered public ones.
    fn resolve(&self, target: &str) -> Result<(Uuid, Option<ChannelRow>), ChannelError> {
        let st = self.state();
        if let Ok(id) = Uuid::try_parse(target) {
            return Ok((id, st.rows.get(&id).cloned()));
        }
        let mine: Vec<(Uuid, ChannelRow)> = st
            .rows
            .iter()
            .filter(|(_, r)| r.name == target)
            .map(|(i, r)| (*i, r.clone()))
            .collect();
        let joined: Vec<&(Uuid, ChannelRow)> = mine.iter().filter(|(_, r)| r.joined).collect();
        if let [(id, row)] = joined.as_slice() {
            return Ok((*id, Some(row.clone())));
        }
        if let [(id, row)] = mine.as_slice() {
            return Ok((*id, Some(row.clone())));
        }
        let found: Vec<Uuid> = st
            .discovered
            .iter()
            .filter(|(_, d)| d.name == target)
            .map(|(i, _)| *i)
            .collect();
        match (mine.len(), found.as_slice()) {
            (0, []) => Err(fail(
                NotFound,
                format!(
                    "no channel called {target} is known (private channels need an invitation)"
                ),
            )),
            (0, [id]) => Ok((*id, None)),
            _ => {
                let ids: Vec<String> = mine
                    .iter()
                    .map(|(i, _)| i.to_string())
                    .chain(found.iter().map(|i| i.to_string()))
                    .collect();
                Err(fail(
                    Failed,
                    format!(
                        "several channels are called {target}: {}; use the id",
                        ids.join(", ")
                    ),
                ))
            }
        }
    }

    /// Joins a public channel, or a private one we were invited to.
    pub async fn join(&self, target: &str) -> Result<(Uuid, ChannelRow), ChannelError> {
        let (id, row) = self.resolve(target)?;
        let row = match row {
            Some(r) if r.joined => return Ok((id, r)),
            Some(r) if r.private && r.key.is_none() => {
                return Err(fail(
                    Failed,
                    format!("{} is private: you need a new invitation", r.name),
                ))
            }
            Some(mut r) => {
                r.joined = true;
                r
            }
            None => {
                let name = self.state().discovered.get(&id).map(|d| d.name.clone());
                let Some(name) = name else {
                    return Err(fail(
                        NotFound,
                        format!("channel {id} is not known (private channels need an invitation)"),
                    ));
                };
                ChannelRow {
                    name,
                    private: false,
                    joined: true,
                    key_from: None,
                    epoch: 0,
                    key: None,
                    members: Vec::new(),
                    created_ms: crate::unix_now_ms(),
                    prev_members: Vec::new(),
                }
            }
        };
        if let Ok(me) = self.me().await {
            let mine = ByteArray::new(*me.uuid.as_bytes());
            let mut row = row.clone();
            if row.private && !row.members.contains(&mine) {
                row.members.push(mine);
            }
            self.save(&id, &row)?;
        } else {
            self.save(&id, &row)?;
        }
        info!(channel = %id, name = %row.name, "joined a channel");
        self.activate(id).await;
        let _ = self.publish_frame(id, frame::JOIN, String::new()).await;
        Ok((id, row))
    }

    /// Subscribes, provides the channel's key in the DHT, and looks for members.
    async fn activate(&self, id: Uuid) {
        let net = &self.inner.net;
        let _ = net.subscribe(frame::topic(&id), true).await;
        let _ = net.provide(frame::provider_key(&id), true).await;
        if let Some(me) = self.inner.messenger.current_keys() {
            self.state().hear(id, me.uuid, crate::unix_now_ms());
        }
        let _ = self.announce(id).await;
    }

    /// Leaves a channel: tells the members, stops listening and providing, and forgets
    /// a private channel's key (a new invitation is needed to come back).
    pub async fn leave(&self, target: &str) -> Result<Uuid, ChannelError> {
        let (id, row) = self.resolve(target)?;
        let Some(mut row) = row.filter(|r| r.joined) else {
            return Err(fail(Failed, format!("you are not in {target}")));
        };
        let _ = self.publish_frame(id, frame::LEAVE, String::new()).await;
        let net = &self.inner.net;
        let _ = net.subscribe(frame::topic(&id), false).await;
        let _ = net.provide(frame::provider_key(&id), false).await;
        row.joined = false;
        if row.private {
            row.key = None;
            row.members.clear();
            row.prev_members.clear();
        }
        self.save(&id, &row)?;
        self.state().heard.remove(&id);
        info!(channel = %id, name = %row.name, "left a channel");
        Ok(id)
    }

    /// Channels we know; with `all`, also public channels discovered on the network.
    pub fn list(&self, all: bool) -> Vec<ChannelView> {
        let st = self.state();
        let mut out: Vec<ChannelView> = st
            .rows
            .iter()
            .filter(|(_, r)| r.joined || (all && (!r.private || r.key.is_some())))
            .map(|(id, r)| ChannelView {
                channel_id: id.to_string(),
                name: r.name.clone(),
                private: r.private,
                joined: r.joined,
                invited: r.private && !r.joined && r.key.is_some(),
                members: member_count(&st, id, r),
                epoch: r.private.then_some(r.epoch),
            })
            .collect();
        if all {
            for (id, d) in &st.discovered {
                if !st.rows.contains_key(id) {
                    out.push(ChannelView {
                        channel_id: id.to_string(),
                        name: d.name.clone(),
                        private: false,
                        joined: false,
                        invited: false,
                        members: d.members.len(),
                        epoch: None,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.name, &a.channel_id).cmp(&(&b.name, &b.channel_id)));
        out
    }

    /// Names of joined channels (for `status`).
    pub fn joined_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .state()
            .rows
            .values()
            .filter(|r| r.joined)
            .map(|r| r.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The name of a channel we know, by id.
    pub fn name_of(&self, id: &Uuid) -> Option<String> {
        self.state().rows.get(id).map(|r| r.name.clone())
    }

    /// Resolves a channel we are in (or were in) to its id, for `recv --channel`.
    pub fn id_of(&self, target: &str) -> Result<Uuid, ChannelError> {
        self.resolve(target).map(|(id, _)| id)
    }

    /// The members of a channel we are in: for a public channel those heard from lately;
    /// for a private one also everyone known to hold the current key.
    pub fn members(&self, target: &str) -> Result<Vec<Uuid>, ChannelError> {
        let (id, row) = self.resolve(target)?;
        let st = self.state();
        let mut set: HashSet<Uuid> = st
            .heard
            .get(&id)
            .map(|h| h.keys().copied().collect())
            .unwrap_or_default();
        match row {
            Some(r) if r.joined => {
                set.extend(r.members.iter().map(|m| Uuid::from_bytes(**m)));
            }
            _ => {
                if let Some(d) = st.discovered.get(&id) {
                    set.extend(d.members.iter().copied());
                } else {
                    return Err(fail(Failed, format!("you are not in {target}")));
                }
            }
        }
        let mut v: Vec<Uuid> = set.into_iter().collect();
        v.sort();
        Ok(v)
    }

    /// Invites `who` into a private channel we are in: sends them the current key.
    pub async fn invite(&self, target: &str, who: Uuid) -> Result<Uuid, ChannelError> {
        let (id, row) = self.resolve(target)?;
        let Some(mut row) = row.filter(|r| r.joined) else {
            return Err(fail(Failed, format!("you are not in {target}")));
        };
        let Some(key) = row.key.filter(|_| row.private) else {
            return Err(fail(
                Failed,
                format!("{} is public: anyone can join it by name", row.name),
            ));
        };
        let me = self.me().await?;
        if who == me.uuid {
            return Err(fail(BadInput, "that is your own UUID"));
        }
        let who_b = ByteArray::new(*who.as_bytes());
        if !row.members.contains(&who_b) {
            row.members.push(who_b);
        }
        self.save(&id, &row)?;
        let grant = frame::KeyGrant {
            v: frame::FRAME_VERSION,
            channel: *id.as_bytes(),
            name: row.name.clone(),
            epoch: row.epoch,
            key: *key,
            members: row.members.clone(),
        };
        self.inner
            .messenger
            .send_grant(who, &grant)
            .await
            .map_err(|e| fail(Failed, e.to_string()))?;
        info!(channel = %id, name = %row.name, invited = %who, "sent a channel invitation");
        Ok(id)
    }

    /// Removes `who` from a private channel we are in: the key moves to a new epoch that
    /// goes to everyone else, so `who` cannot read what is posted from now on.
    pub async fn remove(&self, target: &str, who: Uuid) -> Result<(Uuid, u32), ChannelError> {
        let (id, row) = self.resolve(target)?;
        let Some(mut row) = row.filter(|r| r.joined) else {
            return Err(fail(Failed, format!("you are not in {target}")));
        };
        if !row.private {
            return Err(fail(
                Failed,
                format!(
                    "{} is public: anyone can read it, so nobody can be removed",
                    row.name
                ),
            ));
        }
        let me = self.me().await?;
        if who == me.uuid {
            return Err(fail(BadInput, "to remove yourself, leave the channel"));
        }
        if !row.members.iter().any(|m| **m == *who.as_bytes()) {
            return Err(fail(
                Failed,
                format!("{who} does not hold the key of {}", row.name),
            ));
        }
        self.state().heard.entry(id).or_default().remove(&who);
        row.prev_members.clone_from(&row.members);
        row.members.retain(|m| **m != *who.as_bytes());
        self.rotate(id, row).await?;
        let epoch = self.key_of(&id).map(|(e, _)| e).unwrap_or_default();
        info!(channel = %id, removed = %who, epoch, "removed a member");
        Ok((id, epoch))
    }

    /// Posts to a channel; `Ok` once gossip sent it to at least one peer.
    pub async fn send(&self, target: &str, text: String) -> Result<(Uuid, usize), ChannelError> {
        if text.len() > frame::MAX_CHANNEL_TEXT {
            return Err(fail(
                BadInput,
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
                Failed,
                format!("you are not in {target}; join it first"),
            ));
        }
        let (body, data, peers) = self
            .publish_frame(id, frame::TEXT, text)
            .await
            .map_err(|e| fail(Failed, format!("not sent: {e}")))?;
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

    // ---- frames ----

    /// A new frame of `kind` from us on channel `id` as we hold it.
    async fn body(
        &self,
        id: Uuid,
        kind: &str,
        text: String,
    ) -> Result<(ChannelBody, ChannelRow, Arc<MessageKeys>), String> {
        let me = self.me().await.map_err(|e| e.message)?;
        let row = self
            .state()
            .rows
            .get(&id)
            .cloned()
            .ok_or("unknown channel")?;
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
    async fn publish_frame(
        &self,
        id: Uuid,
        kind: &str,
        text: String,
    ) -> Result<(ChannelBody, Vec<u8>, usize), String> {
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
            (true, None) => return Err("no key for this channel".into()),
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
    async fn announce_debounced(&self, id: Uuid) {
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
    async fn announce(&self, id: Uuid) -> Result<(), String> {
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
    /// order, by [`commit_loop`], so the next frame is validated (and forwarded) while this
    /// one's group is being made durable. What `recv` shows still waits for the commit.
    async fn store_heard_post(&self, entry: HistoryEntry, frame: Vec<u8>) {
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

    fn posted(&self, stored: Result<Option<Stored>, crate::store::StoreError>) {
        match stored {
            Ok(Some(s)) => self.inner.messenger.announce_stored(s),
            Ok(None) => self.inner.counters.count(Counter::ChannelDuplicate),
            Err(e) => warn!(error = %e, "could not store a channel post"),
        }
    }

    // ---- validation ----

    /// Checks one gossip message against what we know; nothing in it is trusted before.
    fn check(&self, topic: &str, data: &[u8], via: Via) -> Result<frame::Checked, Drop> {
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

    async fn on_message(&self, msg: GossipIn) {
        if let Some(tap) = self.state().taps.get(&msg.topic) {
            let _ = tap.send(msg.data.clone());
        }
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

    // ---- history ----

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
        let budget_ok = self
            .inner
            .history_budget
            .lock()
            .is_ok_and(|mut b| b.allow_n(&(), HISTORY_CHECK_COST, Instant::now()));
        if !budget_ok {
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
        let budget_ok = self
            .inner
            .history_budget
            .lock()
            .is_ok_and(|mut b| b.allow_n(&(), bytes as f64, Instant::now()));
        if !budget_ok {
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

    /// Catches up on `id` from `peer`, unless a catch-up of it began in the last
    /// [`CATCH_UP_EVERY`]: from a little before the newest post we hold (at most
    /// [`frame::MAX_AGE_MS`] back: older frames are refused as stale anyway).
    fn catch_up_soon(&self, id: Uuid, peer: PeerId) {
        {
            let mut st = self.state();
            if st
                .last_catch_up
                .get(&id)
                .is_some_and(|t| t.elapsed() < CATCH_UP_EVERY)
            {
                return;
            }
            st.last_catch_up.insert(id, Instant::now());
        }
        let now = crate::unix_now_ms();
        // A post stamped ahead of our clock (up to the allowed skew) must not move the
        // start past what we missed.
        let newest = self
            .inner
            .store
            .newest_channel_frame(id.as_bytes())
            .ok()
            .flatten()
            .unwrap_or(0)
            .min(now);
        let since = newest
            .saturating_sub(CATCH_UP_OVERLAP_MS)
            .max(now.saturating_sub(frame::MAX_AGE_MS));
        let c = self.clone();
        self.spawn(async move {
            // The member that just arrived first; if it has nothing for us (it was away
            // too, or does not know us yet), a few others we are connected to on the topic.
            let mut others = c
                .inner
                .net
                .gossip_peers(frame::topic(&id))
                .await
                .unwrap_or_default();
            others.retain(|(p, _)| *p != peer);
            others.sort_by(|x, y| y.1.total_cmp(&x.1));
            let asked = std::iter::once(peer).chain(others.into_iter().map(|(p, _)| p));
            for p in asked.take(CATCH_UP_PEERS) {
                if c.catch_up(id, p, since).await {
                    return;
                }
            }
        });
    }

    /// Asks `peer` for the posts of `id` since `since` and stores those that check out
    /// exactly as gossip would, but from any member. False if `peer` gave no valid page
    /// with a post in it.
    async fn catch_up(&self, id: Uuid, peer: PeerId, since: u64) -> bool {
        let topic = frame::topic(&id);
        let mut stored = 0usize;
        let mut answered = false;
        let mut after: Vec<u8> = Vec::new();
        let mut retried = false;
        let mut page = 0;
        while page < CATCH_UP_PAGES {
            let request = Request::ChannelHistory {
                channel: *id.as_bytes(),
                since,
                after: after.clone(),
            };
            let (frames, more, next) = match self
                .inner
                .net
                .request(peer, Vec::new(), DialReason::Automatic, request)
                .await
            {
                Ok(Response::ChannelHistory { frames, more, next }) => (frames, more, next),
                // Our subscription travels on gossip's stream, this request on one of its
                // own: the peer may not have seen us join the topic yet. Once more, later.
                Ok(Response::Nack { reason }) if reason == "unknown_channel" && !retried => {
                    retried = true;
                    tokio::time::sleep(CATCH_UP_RETRY).await;
                    continue;
                }
                Ok(other) => {
                    debug!(%peer, channel = %id, answer = ?other, "no channel history");
                    break;
                }
                Err(e) => {
                    debug!(%peer, channel = %id, error = %e, "no channel history");
                    break;
                }
            };
            if frames.len() > MAX_HISTORY_FRAMES {
                self.inner.counters.count(Counter::ChannelHistoryOversized);
                break;
            }
            if frames.is_empty() {
                break;
            }
            answered = true;
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
            // The cursor must move forward, or the peer could keep us paging in place.
            if !more || next.len() != HISTORY_CURSOR_BYTES || next <= after {
                break;
            }
            after = next;
            page += 1;
        }
        if stored > 0 {
            debug!(channel = %id, %peer, posts = stored, "caught up on missed posts");
        }
        answered
    }

    /// Acts on a valid frame; `data` is the frame as it was on the topic.
    async fn apply(&self, topic: &str, c: frame::Checked, data: Vec<u8>) {
        let now = crate::unix_now_ms();
        let b = c.body;
        let from = Uuid::from_bytes(b.from);
        let id = Uuid::from_bytes(b.channel);
        self.state().remember_id(b.msg_id);
        if topic == frame::ANNOUNCE_TOPIC {
            let mut st = self.state();
            if !st.discovered.contains_key(&id)
                && st.discovered.values().filter(|d| d.origin == from).count()
                    >= MAX_DISCOVERED_PER_ORIGIN
            {
                self.inner.counters.count(Counter::AnnounceOriginBound);
                return;
            }
            if st.discovered.len() >= MAX_DISCOVERED && !st.discovered.contains_key(&id) {
                let oldest = st
                    .discovered
                    .iter()
                    .min_by_key(|(_, d)| d.last_ms)
                    .map(|(i, _)| *i);
                if let Some(o) = oldest {
                    st.discovered.remove(&o);
                }
            }
            let d = st.discovered.entry(id).or_insert_with(|| Discovered {
                name: b.name.clone(),
                origin: from,
                members: HashSet::new(),
                last_ms: now,
            });
            d.last_ms = now;
            if d.members.len() < MAX_MEMBERS_HEARD {
                d.members.insert(from);
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
                self.state().hear(id, from, now);
                self.note_key_holder(id, from);
                if kind == frame::TEXT {
                    self.store_heard_post(heard_entry(b), data).await;
                }
            }
        }
    }

    /// Someone who sealed a valid frame under the current key holds it: remember them, so a
    /// rotation reaches them too.
    fn note_key_holder(&self, id: Uuid, member: Uuid) {
        let m = ByteArray::new(*member.as_bytes());
        let row = {
            let st = self.state();
            match st.rows.get(&id) {
                Some(r) if r.private && !r.members.contains(&m) => {
                    let mut r = r.clone();
                    r.members.push(m);
                    Some(r)
                }
                _ => None,
            }
        };
        if let Some(r) = row {
            if r.members.len() <= frame::MAX_GRANT_MEMBERS {
                let _ = self.save(&id, &r);
            }
        }
    }

    /// A member left. For a private channel the key moves to a new epoch, sent to everyone
    /// else; one remaining member does it, chosen by [`keeper`] so that no member can make
    /// itself the one who always does (and then does not).
    async fn member_left(&self, id: Uuid, who: Uuid) {
        let row = {
            let mut st = self.state();
            if let Some(h) = st.heard.get_mut(&id) {
                h.remove(&who);
            }
            st.rows.get(&id).cloned()
        };
        let Some(mut row) = row.filter(|r| r.private && r.joined) else {
            return;
        };
        if !row.members.iter().any(|m| **m == *who.as_bytes()) {
            // Already gone (removed, or a LEAVE seen before): nothing to rotate.
            return;
        }
        row.prev_members.clone_from(&row.members);
        row.members.retain(|m| **m != *who.as_bytes());
        let Ok(me) = self.me().await else { return };
        if keeper(&id, row.epoch, &who, &row.members) != Some(*me.uuid.as_bytes()) {
            let _ = self.save(&id, &row);
            return;
        }
        if let Err(e) = self.rotate(id, row).await {
            warn!(channel = %id, error = %e, "could not rotate the channel key");
        }
    }

    /// Moves a private channel to a new key epoch and sends the key to every other member.
    async fn rotate(&self, id: Uuid, mut row: ChannelRow) -> Result<(), ChannelError> {
        let me = self.me().await?;
        row.epoch = row.epoch.checked_add(1).ok_or_else(|| {
            fail(
                Failed,
                format!(
                    "{} has used every key epoch; create a new channel",
                    row.name
                ),
            )
        })?;
        row.key = Some(ByteArray::new(crate::identity::random_secret()));
        row.key_from = Some(ByteArray::new(*me.uuid.as_bytes()));
        self.save(&id, &row)?;
        info!(channel = %id, name = %row.name, epoch = row.epoch, "channel key rotated");
        let grant = frame::KeyGrant {
            v: frame::FRAME_VERSION,
            channel: *id.as_bytes(),
            name: row.name.clone(),
            epoch: row.epoch,
            key: row.key.map(|k| *k).unwrap_or_default(),
            members: row.members.clone(),
        };
        for m in &row.members {
            let to = Uuid::from_bytes(**m);
            if to != me.uuid {
                if let Err(e) = self.inner.messenger.send_grant(to, &grant).await {
                    warn!(channel = %id, member = %to, error = %e, "could not queue the new key");
                }
            }
        }
        Ok(())
    }

    /// A key grant arrived (and is already stored).
    fn on_grant(&self, note: GrantNote) {
        match note.outcome {
            GrantOutcome::Invited => {
                debug!(channel = %note.channel, from = %note.from, "invited by");
                info!(name = %note.name, "invited to a private channel; `ptpchat channel join` to accept");
            }
            GrantOutcome::Rotated => {
                info!(channel = %note.channel, name = %note.name, epoch = note.epoch, "channel key rotated by a member");
            }
            GrantOutcome::Ignored(why) => {
                self.inner.counters.count(Counter::ChannelGrantIgnored);
                debug!(channel = %note.channel, from = %note.from, why, "ignored a channel key");
                return;
            }
        }
        if let Ok(Some(row)) = self
            .inner
            .store
            .channels()
            .map(|all| all.into_iter().find(|(i, _)| *i == note.channel))
        {
            self.state().rows.insert(row.0, row.1);
        }
    }

    // ---- hooks for tests ----

    /// Hands every raw frame arriving on `topic` to the returned receiver (and subscribes).
    #[doc(hidden)]
    pub async fn tap(&self, topic: &str) -> broadcast::Receiver<Vec<u8>> {
        let rx = {
            let mut st = self.state();
            st.taps
                .entry(topic.to_string())
                .or_insert_with(|| broadcast::channel(256).0)
                .subscribe()
        };
        let _ = self.inner.net.subscribe(topic.to_string(), true).await;
        rx
    }

    /// Publishes raw bytes on a topic, as a misbehaving member would.
    #[doc(hidden)]
    pub async fn publish_raw(&self, topic: &str, data: Vec<u8>) -> Result<usize, String> {
        self.inner.net.publish(topic.to_string(), data).await
    }

    /// A channel's current key epoch and key.
    #[doc(hidden)]
    pub fn key_of(&self, id: &Uuid) -> Option<(u32, [u8; 32])> {
        let st = self.state();
        let r = st.rows.get(id)?;
        r.key.map(|k| (r.epoch, *k))
    }
}

/// Which remaining member rotates the key after `left` left at `epoch`: the one whose
/// hash with this very event is lowest. A UUID can be ground to be the lowest of all, but
/// not to win every event, so no member decides alone whether a leaver keeps reading.
fn keeper(channel: &Uuid, epoch: u32, left: &Uuid, members: &[ByteArray<16>]) -> Option<[u8; 16]> {
    use sha2::{Digest, Sha256};
    members.iter().map(|m| **m).min_by_key(|m| {
        let mut h = Sha256::new();
        h.update(b"ptpchat keeper v1");
        h.update(channel.as_bytes());
        h.update(epoch.to_be_bytes());
        h.update(left.as_bytes());
        h.update(m);
        <[u8; 32]>::from(h.finalize())
    })
}

fn member_count(st: &State, id: &Uuid, r: &ChannelRow) -> usize {
    let mut set: HashSet<[u8; 16]> = st
        .heard
        .get(id)
        .map(|h| h.keys().map(|u| *u.as_bytes()).collect())
        .unwrap_or_default();
    if r.joined {
        set.extend(r.members.iter().map(|m| **m));
    }
    set.len()
}

async fn gossip_loop(c: Channels, mut rx: mpsc::Receiver<GossipEvent>) {
    let _ = c
        .inner
        .net
        .subscribe(frame::ANNOUNCE_TOPIC.to_string(), true)
        .await;
    let joined: Vec<Uuid> = c
        .state()
        .rows
        .iter()
        .filter(|(_, r)| r.joined)
        .map(|(i, _)| *i)
        .collect();
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
                        c.catch_up_soon(id, peer);
                    }
                }
            }
        }
    }
}

/// The history entry of a post heard from another member.
fn heard_entry(b: ChannelBody) -> HistoryEntry {
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

/// Answers CHANNEL-HISTORY requests, one at a time.
async fn history_loop(c: Channels, mut rx: mpsc::Receiver<InboundVerb>) {
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
            for h in st.heard.values_mut() {
                h.retain(|_, t| now.saturating_sub(*t) < quiet);
            }
            st.discovered
                .retain(|_, d| now.saturating_sub(d.last_ms) < quiet);
            st.rows
                .iter()
                .filter(|(_, r)| r.joined)
                .map(|(i, _)| *i)
                .collect()
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

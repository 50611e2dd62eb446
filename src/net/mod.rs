//! Networking: the behaviour, the event loop that alone owns the swarm, and the cloneable
//! [`Client`] every other part of the program uses to ask it for things.

mod behaviour;
mod consent;
pub mod dial;
mod event_loop;
pub(crate) mod gossip_limits;
mod hooks;
pub mod iplimit;
mod keeper;
pub(crate) mod ratelimit;
pub mod transport;

pub use behaviour::{
    agent_version, build_swarm, Behaviour, BuildError, KAD_PROTOCOL, MIN_DUPLICATE_CACHE,
};
pub(crate) use event_loop::GOSSIP_QUEUE;
pub use event_loop::{ConnectOutcome, ConnectRequestView, EventLoop, UserHooks};
pub use hooks::{EventLoopHooks, InboundVerb};
pub use libp2p::gossipsub::{MessageAcceptance, MessageId};

use std::collections::BTreeMap;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::identity::SignedDocument;
use crate::wire::verbs::{Request, Response};

/// Capacity of the command channel into the event loop.
pub const COMMAND_CAPACITY: usize = 256;

/// What the node reports about itself (`ptpchat status`): the event loop fills it, the
/// control server adds the channels, and the CLI reads the same type back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub uuid: Option<Uuid>,
    pub peer_id: String,
    /// `user` or `relay`.
    pub mode: String,
    pub listen_addrs: Vec<String>,
    pub external_addrs: Vec<String>,
    /// `public`, `private` or `unknown`.
    pub nat: String,
    pub connected_peers: usize,
    pub relays: Vec<String>,
    pub channels: Vec<String>,
    pub dht_records: usize,
    /// Our identity document's seq, once published.
    pub published_seq: Option<u64>,
    /// Bad input seen, by kind (see docs/security.md).
    pub rejected: BTreeMap<String, u64>,
    /// What this node's directory lookups cost, since it started.
    pub lookups: LookupStats,
    /// The hole punches this node started after an accepted CONNECT, since it started.
    #[serde(default)]
    pub punches: crate::counters::PunchStats,
    /// What a relay's mailboxes hold (relays with mailboxes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<crate::store::mailbox::MailTotals>,
}

/// Counters of the directory lookups this node ran through the DHT (`status --json` →
/// `lookups`). The path length of a Kademlia lookup is not visible from outside the query,
/// so `hops_bound` sums, over the lookups that found a document, the number of peers that
/// had answered before the first valid document arrived plus the peer that sent it: an
/// upper bound on each lookup's hop count (every peer on the path to the holder answered
/// before it did).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupStats {
    /// DHT queries finished.
    pub done: u64,
    /// Of those, the ones that found a valid document in the DHT.
    pub found: u64,
    /// Requests sent by all finished queries.
    pub requests: u64,
    /// Sum of the per-lookup hop bounds (see above), over the `found` lookups.
    pub hops_bound: u64,
}

/// One connected peer (`ptpchat peers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: String,
    pub addr: String,
    pub relayed: bool,
    pub agent: Option<String>,
}

/// Why a directory lookup found nothing usable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("no valid identity document found for {0}")]
    NotFound(Uuid),
    #[error("the node stopped")]
    NodeGone,
}

/// Why a request to the node failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("the node has stopped")]
pub struct NodeGone;

/// Why the network could not do what a service asked (a request, a dial, a publish, an
/// answer to a CONNECT). The words are what users and logs saw before this was typed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    #[error("the node has stopped")]
    NodeGone,
    /// A private node may reach this peer only through a relay circuit, and knows none.
    #[error("no relayed route to this peer")]
    NoRoute,
    /// The dial could not even start (the address, the peer, our own limits).
    #[error("{0}")]
    Dial(String),
    #[error("Failed to dial the requested peer")]
    Unreachable,
    #[error("Timeout while waiting for a response")]
    Timeout,
    #[error("Connection was closed before a response was received")]
    Closed,
    #[error("The remote supports none of the requested protocols")]
    Unsupported,
    #[error("IO error on outbound stream: {0}")]
    Io(String),
    /// Nobody subscribed to the topic is connected.
    #[error("no peer of this channel is connected")]
    NoPeers,
    #[error("{0}")]
    Publish(String),
    /// No CONNECT request waits under this id (answered already, or never asked).
    #[error("no pending CONNECT request {0}")]
    NoSuchRequest(u64),
}

impl From<NodeGone> for NetError {
    fn from(_: NodeGone) -> Self {
        NetError::NodeGone
    }
}

impl From<&libp2p::request_response::OutboundFailure> for NetError {
    fn from(f: &libp2p::request_response::OutboundFailure) -> Self {
        use libp2p::request_response::OutboundFailure as F;
        match f {
            F::DialFailure => NetError::Unreachable,
            F::Timeout => NetError::Timeout,
            F::ConnectionClosed => NetError::Closed,
            F::UnsupportedProtocols => NetError::Unsupported,
            F::Io(e) => NetError::Io(e.to_string()),
        }
    }
}

/// Requests to the event loop; each carries its reply channel.
pub(crate) enum Command {
    Status(oneshot::Sender<Status>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Whois {
        uuid: Uuid,
        reply: oneshot::Sender<Result<SignedDocument, LookupError>>,
    },
    FetchCertificate {
        peer: PeerId,
        uuid: Uuid,
        reply: oneshot::Sender<Result<SignedDocument, LookupError>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Request {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        why: dial::DialReason,
        request: Request,
        reply: oneshot::Sender<Result<Response, NetError>>,
    },
    Respond {
        token: u64,
        response: Response,
    },
    /// Subscribe to (or leave) a gossipsub topic.
    Subscribe {
        topic: String,
        on: bool,
    },
    /// Publish on a topic; answers with the number of peers it went to.
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<usize, NetError>>,
    },
    /// The application's verdict on a gossip message it was handed.
    Validate {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    /// Advertise (or stop advertising) ourselves as a provider of a DHT key, and look for
    /// its other providers, dialing those we are not connected to.
    Provide {
        key: Vec<u8>,
        on: bool,
    },
    /// Look for the providers of a key and dial them.
    FindProviders {
        key: Vec<u8>,
    },
    /// CONNECT to `peer` at `addrs` (its document's); answers how it ended.
    Connect {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<ConnectOutcome>,
    },
    /// Close every connection with `peer` (answers whether there was one).
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    /// Incoming CONNECT requests waiting for the user.
    ConnectRequests(oneshot::Sender<Vec<ConnectRequestView>>),
    /// The user's answer to one.
    AnswerConnect {
        request_id: u64,
        accept: bool,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Gossip peers and their scores, by topic (tests, diagnostics).
    GossipPeers {
        topic: String,
        reply: oneshot::Sender<Vec<(PeerId, f64)>>,
    },
}

/// A gossip message handed to the application for validation.
#[derive(Debug)]
pub struct GossipIn {
    pub id: MessageId,
    /// The peer that forwarded it to us.
    pub source: PeerId,
    /// Its signed author.
    pub author: Option<PeerId>,
    pub topic: String,
    pub data: Vec<u8>,
}

/// What the event loop tells the channel service.
#[derive(Debug)]
pub enum GossipEvent {
    Message(GossipIn),
    /// A peer subscribed to a topic we are in.
    Subscribed {
        peer: PeerId,
        topic: String,
    },
}

/// A cloneable handle to a running node's event loop.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
}

impl Client {
    pub(crate) fn new(tx: mpsc::Sender<Command>) -> Self {
        Client { tx }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeGone> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| NodeGone)?;
        rx.await.map_err(|_| NodeGone)
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, NodeGone> {
        self.ask(Command::Status).await
    }

    /// Currently connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NodeGone> {
        self.ask(Command::Peers).await
    }

    /// Looks a UUID up in the directory (DHT, then connected peers, then the local cache).
    pub async fn whois(&self, uuid: Uuid) -> Result<SignedDocument, LookupError> {
        self.ask(|reply| Command::Whois { uuid, reply })
            .await
            .map_err(|_| LookupError::NodeGone)?
    }

    /// Asks one connected peer directly for the document it holds (GETCERTIFICATE).
    pub async fn fetch_certificate(
        &self,
        peer: PeerId,
        uuid: Uuid,
    ) -> Result<SignedDocument, LookupError> {
        self.ask(|reply| Command::FetchCertificate { peer, uuid, reply })
            .await
            .map_err(|_| LookupError::NodeGone)?
    }

    /// Sends a verb to `peer` (dialing it at `addrs` if not connected) and waits for the
    /// answer; `Err` says why none came (dial failure, timeout, closed connection).
    pub async fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        why: dial::DialReason,
        request: Request,
    ) -> Result<Response, NetError> {
        self.ask(|reply| Command::Request {
            peer,
            addrs,
            why,
            request,
            reply,
        })
        .await?
    }

    /// Answers an inbound request handed over with `token`.
    pub async fn respond(&self, token: u64, response: Response) -> Result<(), NodeGone> {
        self.tx
            .send(Command::Respond { token, response })
            .await
            .map_err(|_| NodeGone)
    }

    /// Subscribes to a gossipsub topic (`on`) or unsubscribes.
    pub async fn subscribe(&self, topic: String, on: bool) -> Result<(), NodeGone> {
        self.tx
            .send(Command::Subscribe { topic, on })
            .await
            .map_err(|_| NodeGone)
    }

    /// Publishes `data` on `topic`; `Ok(n)` once it went to `n` peers (at least one).
    pub async fn publish(&self, topic: String, data: Vec<u8>) -> Result<usize, NetError> {
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Reports the verdict on a gossip message (see [`GossipIn`]).
    pub async fn validate(
        &self,
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    ) -> Result<(), NodeGone> {
        self.tx
            .send(Command::Validate {
                id,
                source,
                acceptance,
            })
            .await
            .map_err(|_| NodeGone)
    }

    /// Starts (`on`) or stops providing a DHT key; starting also looks for other providers.
    pub async fn provide(&self, key: Vec<u8>, on: bool) -> Result<(), NodeGone> {
        self.tx
            .send(Command::Provide { key, on })
            .await
            .map_err(|_| NodeGone)
    }

    /// Looks for the providers of a DHT key and dials them.
    pub async fn find_providers(&self, key: Vec<u8>) -> Result<(), NodeGone> {
        self.tx
            .send(Command::FindProviders { key })
            .await
            .map_err(|_| NodeGone)
    }

    /// The peers subscribed to `topic` and their gossip scores.
    pub async fn gossip_peers(&self, topic: String) -> Result<Vec<(PeerId, f64)>, NodeGone> {
        self.ask(|reply| Command::GossipPeers { topic, reply })
            .await
    }

    /// Asks `peer` (reachable at `addrs`) for a direct connection; see [`ConnectOutcome`].
    pub async fn connect(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<ConnectOutcome, NodeGone> {
        self.ask(|reply| Command::Connect { peer, addrs, reply })
            .await
    }

    /// Closes every connection with `peer`; false if there was none.
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool, NodeGone> {
        self.ask(|reply| Command::Disconnect { peer, reply }).await
    }

    /// Incoming CONNECT requests waiting for an answer (policy `ask`).
    pub async fn connect_requests(&self) -> Result<Vec<ConnectRequestView>, NodeGone> {
        self.ask(Command::ConnectRequests).await
    }

    /// Accepts or denies a waiting CONNECT request.
    pub async fn answer_connect(&self, request_id: u64, accept: bool) -> Result<(), NetError> {
        self.ask(|reply| Command::AnswerConnect {
            request_id,
            accept,
            reply,
        })
        .await?
    }

    /// Dials an address (bootstrap peers are dialed at start; this adds one later).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }
}

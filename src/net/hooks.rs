//! What the event loop hands to the services beside it, and the channels it feeds them by.

use std::sync::Arc;

use libp2p::PeerId;
use tokio::sync::{broadcast, mpsc, watch};

use crate::identity::MessageKeys;
use crate::wire::verbs::Request;

/// A request from a peer that the event loop hands over, to be answered with
/// [`super::Client::respond`] and `token`.
pub struct InboundVerb {
    pub token: u64,
    pub peer: PeerId,
    pub request: Request,
}

/// The event loop's side of the channels between it and the messenger.
pub struct EventLoopHooks {
    pub inbound: mpsc::Sender<InboundVerb>,
    pub keys: watch::Sender<Option<Arc<MessageKeys>>>,
    pub connected: broadcast::Sender<PeerId>,
}

//! The node's operations, once, for every front end: the control socket (one JSON line per
//! answer) and the local HTTP API (JSON bodies and an event stream) both parse a
//! [`ControlRequest`] and hand it to [`Operations::run`] with somewhere for the answers to
//! go ([`Answers`]). What an operation does, what it answers and the words of its errors
//! are decided here, never in a front end.

use std::future::Future;

use uuid::Uuid;

use super::answers::Dialing;
use super::ErrorKind;
use super::{channels, connect, messages, ControlRequest, ControlResponse, IdInfo, Refusal};
use crate::channels::Channels;
use crate::messaging::Messenger;
use crate::net::{Client, LookupError};

/// The answer to every request once the node is stopping.
pub(super) const GONE: &str = "the node is shutting down";
/// The answer to a user request on a relay.
const NO_USER: &str = "this node is a relay and has no user identity";

/// Where one request's answers go. Most requests give one; lists give one per item, then a
/// `done`; a follow (`recv` with `follow`) gives answers until [`Answers::gone`].
pub trait Answers: Send {
    /// Passes one answer on. An error means the asker cannot take more.
    fn answer(&mut self, r: ControlResponse) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Resolves once the asker has gone away; a follow stops then. Never, for an asker
    /// that takes a finite list.
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
}

/// Collects the answers of a request that ends (every one but a follow).
#[derive(Default)]
pub struct Collected(pub Vec<ControlResponse>);

impl Answers for Collected {
    async fn answer(&mut self, r: ControlResponse) -> std::io::Result<()> {
        self.0.push(r);
        Ok(())
    }

    async fn gone(&mut self) {
        std::future::pending().await
    }
}

/// What the operations act on: the node's network client, and for a user node its
/// identity, messenger and channels (a relay has none of these).
#[derive(Clone)]
pub struct Operations {
    client: Client,
    id: Option<IdInfo>,
    user: Option<(Messenger, Channels)>,
    /// Where the HTTP API listens, with the URL carrying its token, for `ptpchat ui`.
    ui: Option<super::answers::UiAnswer>,
}

impl Operations {
    pub fn new(
        client: Client,
        id: Option<IdInfo>,
        messenger: Option<Messenger>,
        channels: Option<Channels>,
    ) -> Self {
        Operations {
            client,
            id,
            user: messenger.zip(channels),
            ui: None,
        }
    }

    /// Tells `ui` where the HTTP API is.
    pub fn with_ui(mut self, ui: Option<super::answers::UiAnswer>) -> Self {
        self.ui = ui;
        self
    }

    /// This node's user, on a user node.
    pub fn me(&self) -> Option<Uuid> {
        self.id.as_ref().map(|i| i.uuid)
    }

    /// The node's messenger, on a user node.
    pub fn messenger(&self) -> Option<&Messenger> {
        self.user.as_ref().map(|(m, _)| m)
    }

    /// Carries out `req`, giving its answers to `out`. An error is `out`'s (the asker
    /// went away); what the node refused is an answer.
    pub async fn run<A: Answers>(&self, req: ControlRequest, out: &mut A) -> std::io::Result<()> {
        let Some(((m, ch), me)) = self.user.as_ref().zip(self.id.as_ref().map(|i| i.uuid)) else {
            return out.answer(self.common(req, None).await).await;
        };
        let one = match req {
            ControlRequest::Recv {
                since,
                follow,
                channel,
            } => {
                return match channel.map(|c| ch.id_of(&c)).transpose() {
                    Ok(channel) => messages::recv(m, me, since, follow, channel, out).await,
                    Err(e) => out.answer(Refusal::from(e).into()).await,
                };
            }
            ControlRequest::Status => match self.client.status().await {
                Ok(mut s) => {
                    s.channels = ch.joined_names();
                    ControlResponse::ok(s)
                }
                Err(_) => ControlResponse::err(ErrorKind::Failed, GONE),
            },
            ControlRequest::ChannelList { all } => return channels::list(ch, all, out).await,
            ControlRequest::ChannelMembers { channel } => {
                return channels::members(ch, m, &channel, out).await
            }
            req @ (ControlRequest::ChannelCreate { .. }
            | ControlRequest::ChannelJoin { .. }
            | ControlRequest::ChannelLeave { .. }
            | ControlRequest::ChannelInvite { .. }
            | ControlRequest::ChannelRemove { .. }
            | ControlRequest::ChannelSend { .. }) => answer(channels::handle(ch, m, req).await),
            ControlRequest::History { with } => return messages::history(m, me, with, out).await,
            ControlRequest::ContactsList => return messages::contacts_list(m, out).await,
            req => self.common(req, Some(m)).await,
        };
        out.answer(one).await
    }

    /// The requests with one answer that need no channel service.
    async fn common(&self, req: ControlRequest, messenger: Option<&Messenger>) -> ControlResponse {
        let client = &self.client;
        match req {
            ControlRequest::Status => match client.status().await {
                Ok(s) => ControlResponse::ok(s),
                Err(_) => ControlResponse::err(ErrorKind::Failed, GONE),
            },
            ControlRequest::Peers => match client.peers().await {
                Ok(p) => ControlResponse::ok(p),
                Err(_) => ControlResponse::err(ErrorKind::Failed, GONE),
            },
            ControlRequest::Ui => match &self.ui {
                Some(ui) => ControlResponse::ok(ui),
                None => ControlResponse::err(
                    ErrorKind::NotFound,
                    "this node serves no HTTP API (started with --no-http, or a relay)",
                ),
            },
            ControlRequest::Id => match &self.id {
                Some(id) => ControlResponse::ok(id),
                None => ControlResponse::err(ErrorKind::Failed, NO_USER),
            },
            ControlRequest::Whois { uuid } => {
                let Ok(uuid) = Uuid::parse_str(&uuid) else {
                    return ControlResponse::err(
                        ErrorKind::BadInput,
                        format!("not a UUID: {uuid:?}"),
                    );
                };
                match client.whois(uuid).await {
                    Ok(doc) => ControlResponse::ok(super::WhoisView::of(&doc)),
                    Err(LookupError::NotFound(_)) => ControlResponse::err(
                        ErrorKind::NotFound,
                        format!("no valid identity document found for {uuid}"),
                    ),
                    Err(LookupError::NodeGone) => ControlResponse::err(ErrorKind::Failed, GONE),
                }
            }
            ControlRequest::Dial { addr } => match addr.parse() {
                Ok(addr) => match client.dial(addr).await {
                    Ok(()) => ControlResponse::ok(Dialing {}),
                    Err(e) => ControlResponse::err(ErrorKind::Failed, e.to_string()),
                },
                Err(e) => ControlResponse::err(
                    ErrorKind::BadInput,
                    format!("invalid multiaddr {addr:?}: {e}"),
                ),
            },
            req => {
                let Some(m) = messenger else {
                    return ControlResponse::err(ErrorKind::Failed, NO_USER);
                };
                match req {
                    ControlRequest::Send {
                        to,
                        text,
                        attach,
                        timeout_ms,
                        idempotency_key,
                    } => answer(
                        messages::send(m, to, text, attach, timeout_ms, idempotency_key).await,
                    ),
                    ControlRequest::ContactsAdd { name, target } => {
                        answer(messages::contacts_add(m, client, name, target).await)
                    }
                    ControlRequest::ContactsVerify { name, fingerprint } => {
                        answer(messages::contacts_verify(m, name, fingerprint))
                    }
                    ControlRequest::ContactsRm { name } => answer(messages::contacts_rm(m, name)),
                    ControlRequest::Connect { to, timeout_ms } => {
                        answer(connect::connect(m, client, to, timeout_ms).await)
                    }
                    ControlRequest::Disconnect { to } => {
                        answer(connect::disconnect(m, client, to).await)
                    }
                    ControlRequest::Requests => answer(connect::requests(client).await),
                    ControlRequest::Accept { request_id } => {
                        answer(connect::answer(client, request_id, true).await)
                    }
                    ControlRequest::Deny { request_id } => {
                        answer(connect::answer(client, request_id, false).await)
                    }
                    _ => ControlResponse::err(ErrorKind::Failed, NO_USER),
                }
            }
        }
    }
}

/// A handler's result or refusal, as the one answer.
fn answer(r: Result<ControlResponse, Refusal>) -> ControlResponse {
    r.unwrap_or_else(ControlResponse::from)
}

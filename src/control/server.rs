//! Serving the control socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use uuid::Uuid;

use super::answers::Dialing;
use super::IdInfo;
use super::{channels, connect, messages, ControlRequest, ControlResponse, Refusal};
use super::{ErrorKind, MAX_LINE_BYTES};
use crate::channels::Channels;
use crate::messaging::Messenger;
use crate::net::{Client, LookupError};

/// The answer to every request once the node is stopping.
pub(super) const GONE: &str = "the node is shutting down";
/// The answer to a user request on a relay.
const NO_USER: &str = "this node is a relay and has no user identity";

/// Most client connections served at once.
const MAX_CLIENTS: usize = 64;

/// The listening control socket; removed from disk on [`ControlServer::shutdown`].
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `path` with mode 0600, replacing only a stale socket left by a crashed node:
    /// any other file at the path is left alone and the bind fails.
    pub async fn bind(
        path: &Path,
        client: Client,
        id: Option<IdInfo>,
        messenger: Option<Messenger>,
        channels: Option<Channels>,
    ) -> std::io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "something that is not a socket is in the way; not removing it",
                ));
            }
            if super::socket_is_live(path).await {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another node answers on this socket",
                ));
            }
            warn!(path = %path.display(), "removing stale control socket from an earlier run");
            std::fs::remove_file(path)?;
        }
        let listener = bind_private(path)?;
        let task = tokio::spawn(accept_loop(listener, client, id, messenger, channels));
        Ok(ControlServer {
            path: path.to_path_buf(),
            task,
        })
    }

    /// Stops serving and removes the socket file.
    pub async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a Unix socket that is 0600 from the moment it appears at `path`: it is bound inside
/// a fresh 0700 directory next to `path`, narrowed there, and renamed into place. (A umask
/// would do the same but is process-wide, and other threads create files meanwhile.)
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = path.parent().unwrap_or(Path::new("."));
    let nest = parent.join(format!(".control-{}", Uuid::new_v4().simple()));
    std::fs::DirBuilder::new().mode(0o700).create(&nest)?;
    let inner = nest.join("s");
    let bound = UnixListener::bind(&inner).and_then(|l| {
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&nest);
    bound
}

async fn accept_loop(
    listener: UnixListener,
    client: Client,
    id: Option<IdInfo>,
    messenger: Option<Messenger>,
    channels: Option<Channels>,
) {
    // Connections end with the server: aborting this task drops the set, which aborts them.
    let mut connections = tokio::task::JoinSet::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    // Only the user the node runs as may drive it.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let my_uid = unsafe { libc::geteuid() };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == my_uid => {}
            Ok(cred) => {
                warn!(
                    uid = cred.uid(),
                    owner = my_uid,
                    "refused a control connection from another user"
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "refused a control connection: cannot read its credentials");
                continue;
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!("too many control connections; refusing one");
            continue;
        };
        let client = client.clone();
        let id = id.clone();
        let messenger = messenger.clone();
        let channels = channels.clone();
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            if let Err(e) = serve(stream, client, id, messenger, channels).await {
                debug!(error = %e, "control connection ended");
            }
            drop(permit);
        });
    }
}

async fn serve(
    stream: UnixStream,
    client: Client,
    id: Option<IdInfo>,
    messenger: Option<Messenger>,
    channels: Option<Channels>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = match serde_json::from_str::<ControlRequest>(&line) {
            Ok(req) => {
                if let (Some(m), Some(ch), Some(me)) =
                    (&messenger, &channels, id.as_ref().map(|i| i.uuid))
                {
                    match req {
                        ControlRequest::Recv {
                            since,
                            follow,
                            channel,
                        } => {
                            let channel = match channel.map(|c| ch.id_of(&c)).transpose() {
                                Ok(c) => c,
                                Err(e) => {
                                    let r = ControlResponse::from(Refusal::from(e));
                                    messages::write_line(&mut write, &r).await?;
                                    continue;
                                }
                            };
                            messages::recv(m, me, since, follow, channel, &mut reader, &mut write)
                                .await?;
                            continue;
                        }
                        ControlRequest::Status => match client.status().await {
                            Ok(mut s) => {
                                s.channels = ch.joined_names();
                                ControlResponse::ok(s)
                            }
                            Err(_) => ControlResponse::err(ErrorKind::Failed, GONE),
                        },
                        ControlRequest::ChannelList { all } => {
                            channels::list(ch, all, &mut write).await?;
                            continue;
                        }
                        ControlRequest::ChannelMembers { channel } => {
                            channels::members(ch, m, &channel, &mut write).await?;
                            continue;
                        }
                        req @ (ControlRequest::ChannelCreate { .. }
                        | ControlRequest::ChannelJoin { .. }
                        | ControlRequest::ChannelLeave { .. }
                        | ControlRequest::ChannelInvite { .. }
                        | ControlRequest::ChannelSend { .. }) => {
                            answer(channels::handle(ch, m, req).await)
                        }
                        ControlRequest::History { with } => {
                            messages::history(m, me, with, &mut write).await?;
                            continue;
                        }
                        ControlRequest::ContactsList => {
                            messages::contacts_list(m, &mut write).await?;
                            continue;
                        }
                        req => handle(req, &client, id.as_ref(), Some(m)).await,
                    }
                } else {
                    handle(req, &client, id.as_ref(), None).await
                }
            }
            Err(e) => {
                ControlResponse::err(ErrorKind::BadInput, format!("bad control request: {e}"))
            }
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

async fn handle(
    req: ControlRequest,
    client: &Client,
    id: Option<&IdInfo>,
    messenger: Option<&Messenger>,
) -> ControlResponse {
    match req {
        ControlRequest::Status => match client.status().await {
            Ok(s) => ControlResponse::ok(s),
            Err(_) => ControlResponse::err(ErrorKind::Failed, GONE),
        },
        ControlRequest::Peers => match client.peers().await {
            Ok(p) => ControlResponse::ok(p),
            Err(_) => ControlResponse::err(ErrorKind::Failed, GONE),
        },
        ControlRequest::Id => match id {
            Some(id) => ControlResponse::ok(id),
            None => ControlResponse::err(ErrorKind::Failed, NO_USER),
        },
        ControlRequest::Whois { uuid } => {
            let Ok(uuid) = Uuid::parse_str(&uuid) else {
                return ControlResponse::err(ErrorKind::BadInput, format!("not a UUID: {uuid:?}"));
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
                } => answer(messages::send(m, to, text, attach, timeout_ms).await),
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

/// A handler's result or refusal, as the one answer line.
fn answer(r: Result<ControlResponse, Refusal>) -> ControlResponse {
    r.unwrap_or_else(ControlResponse::from)
}

//! Starting and stopping a node: home directory, store, identity, swarm, listeners,
//! bootstrap, event loop and control socket, in that order.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::{Mode, NodeConfig, DEFAULT_PORT};
use crate::control::ControlServer;
use crate::identity::{contact_uri, Identity};
use crate::net::{build_swarm, BuildError, Client, EventLoop, COMMAND_CAPACITY};
use crate::store::{Store, StoreError};

/// Who this node is, as `ptpchat id` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdInfo {
    pub uuid: Uuid,
    pub peer_id: String,
    pub fingerprint: String,
    pub public_key: String,
    pub contact_uri: String,
}

impl IdInfo {
    /// The summary of an identity.
    pub fn of(id: &Identity) -> Self {
        IdInfo {
            uuid: id.uuid(),
            peer_id: id.peer_id().to_string(),
            fingerprint: id.fingerprint().to_string(),
            public_key: hex::encode(id.public_key()),
            contact_uri: contact_uri(&id.uuid(), &id.fingerprint()),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a ptpchat node is already running for {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot use home {path}: {source}")]
    Home {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot listen on {addr}: {detail}")]
    Listen { addr: Multiaddr, detail: String },
    #[error("cannot serve the control socket {path}: {source}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InUse(home) => StartError::AlreadyRunning(home),
            e => StartError::Store(e),
        }
    }
}

/// A started node. Dropping it does not stop it; call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub client: Client,
    pub peer_id: PeerId,
    /// The identity, for a user node.
    pub id: Option<IdInfo>,
    event_loop: JoinHandle<()>,
    control: Option<ControlServer>,
}

impl RunningNode {
    /// Stops the node: the control socket is removed, then the swarm and store are dropped.
    pub async fn shutdown(self) {
        if let Some(control) = self.control {
            control.shutdown().await;
        }
        self.event_loop.abort();
        let _ = self.event_loop.await;
    }

    /// Waits until the node listens on at least one address and returns them with `/p2p/`.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        loop {
            if let Ok(status) = self.client.status().await {
                if !status.listen_addrs.is_empty() {
                    return status
                        .listen_addrs
                        .iter()
                        .filter_map(|a| a.parse::<Multiaddr>().ok())
                        .map(|a| a.with(Protocol::P2p(self.peer_id)))
                        .collect();
                }
            } else {
                return Vec::new();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Creates `home` if needed and makes it private to the owner (it holds secret keys).
pub fn prepare_home(home: &Path) -> Result<(), StartError> {
    let err = |source| StartError::Home {
        path: home.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(home).map_err(err)?;
    let meta = std::fs::metadata(home).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Starts a node as configured.
pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
    prepare_home(&config.home)?;
    let socket = config.socket_path();
    if config.control_socket && crate::control::socket_is_live(&socket).await {
        return Err(StartError::AlreadyRunning(config.home.clone()));
    }
    let store = Store::open(&config.home)?;
    let (identity, created) = store.load_or_create_identity(crate::unix_now())?;
    if created {
        info!(home = %config.home.display(), "created a new identity");
    }
    let keypair = identity.libp2p_keypair();
    let peer_id = keypair.public().to_peer_id();
    let id = (config.mode == Mode::User).then(|| IdInfo::of(&identity));
    if let Some(id) = &id {
        info!(uuid = %id.uuid, fingerprint = %id.fingerprint, peer_id = %id.peer_id, "identity");
    }

    let mut swarm = build_swarm(keypair, &config)?;
    if config.listen.is_empty() {
        listen_on_defaults(&mut swarm)?;
    } else {
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| StartError::Listen {
                    addr: addr.clone(),
                    detail: e.to_string(),
                })?;
        }
    }

    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    let client = Client::new(tx);
    let identity = (config.mode == Mode::User).then_some(identity);
    let mut event_loop = EventLoop::new(swarm, rx, store, identity, &config);
    event_loop.seed_dht_from_store();
    for addr in config.bootstrap.iter().chain(config.relays.iter()) {
        if let Err(e) = event_loop.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    event_loop.bootstrap_dht();
    let event_loop = tokio::spawn(event_loop.run());

    let control = if config.control_socket {
        Some(
            ControlServer::bind(&socket, client.clone(), id.clone())
                .await
                .map_err(|source| StartError::Control {
                    path: socket,
                    source,
                })?,
        )
    } else {
        None
    };
    Ok(RunningNode {
        client,
        peer_id,
        id,
        event_loop,
        control,
    })
}

/// Listens on TCP and QUIC on all interfaces, port 4001 or the next free one.
fn listen_on_defaults(swarm: &mut libp2p::Swarm<crate::net::Behaviour>) -> Result<(), StartError> {
    let mut last_err = String::new();
    for port in DEFAULT_PORT..DEFAULT_PORT + 20 {
        let tcp: Multiaddr = format!("/ip4/0.0.0.0/tcp/{port}")
            .parse()
            .expect("valid literal");
        match swarm.listen_on(tcp) {
            Ok(_) => {
                let quic: Multiaddr = format!("/ip4/0.0.0.0/udp/{port}/quic-v1")
                    .parse()
                    .expect("valid literal");
                if let Err(e) = swarm.listen_on(quic) {
                    warn!(port, error = %e, "QUIC not available on this port; TCP only");
                }
                return Ok(());
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    Err(StartError::Listen {
        addr: format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}")
            .parse()
            .expect("valid literal"),
        detail: format!(
            "ports {DEFAULT_PORT}-{} all taken ({last_err})",
            DEFAULT_PORT + 19
        ),
    })
}

//! Starting and stopping a node: home directory, store, identity, swarm, listeners,
//! bootstrap, event loop and control socket, in that order.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::channels::{Channels, ChannelsConfig};
use crate::config::{Mode, NodeConfig, DEFAULT_PORT};
use crate::control::{ControlServer, IdInfo};
use crate::counters::Counters;
use crate::messaging::{MessagingConfig, Messenger};
use crate::net::{build_swarm, BuildError, Client, EventLoop, COMMAND_CAPACITY};
use crate::store::{Store, StoreError};

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
    #[error("cannot serve the HTTP API on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
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
    /// The metrics endpoint, when one was asked for.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The HTTP API and app, when served.
    pub http_addr: Option<std::net::SocketAddr>,
    /// Direct messages (user nodes).
    pub messenger: Option<Messenger>,
    /// Channels (user nodes).
    pub channels: Option<Channels>,
    /// Mailboxes for offline users (relays).
    mailboxes: Option<crate::mailbox::service::Mailboxes>,
    listen: watch::Receiver<Vec<Multiaddr>>,
    /// `None` once it has been awaited (see [`RunningNode::stopped`]).
    event_loop: Option<JoinHandle<()>>,
    /// Tells the event loop to stop.
    stop: Option<oneshot::Sender<()>>,
    control: Option<ControlServer>,
    http: Option<crate::http::HttpServer>,
    metrics: Option<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops the node, draining rather than cutting off: the control socket goes first (no
    /// new requests), then each service stops its loops and finishes the work under way
    /// (an inbound message being committed still gets its ACK, through the event loop,
    /// which runs until last), then the event loop stops and its keeper and cache writer
    /// finish their writes. Whatever is not done within [`crate::tasks::DRAIN`] is cut off.
    pub async fn shutdown(mut self) {
        if let Some(control) = self.control {
            control.shutdown().await;
        }
        if let Some(http) = self.http {
            http.shutdown().await;
        }
        if let Some(metrics) = self.metrics {
            metrics.abort();
            let _ = metrics.await;
        }
        // One deadline for the whole drain, however many services there are.
        let deadline = tokio::time::Instant::now() + crate::tasks::DRAIN;
        if let Some(channels) = self.channels {
            channels.shutdown_by(deadline).await;
        }
        if let Some(messenger) = self.messenger {
            messenger.shutdown_by(deadline).await;
        }
        if let Some(mailboxes) = self.mailboxes {
            mailboxes.shutdown_by(deadline).await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut event_loop) = self.event_loop {
            // The loop's own flush and the joins of its threads get a moment past the
            // services' deadline, so an early drain of theirs is not cut short.
            let end = deadline.max(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
            if tokio::time::timeout_at(end, &mut event_loop).await.is_err() {
                warn!("the event loop did not stop in time; cut off");
                event_loop.abort();
                let _ = event_loop.await;
            }
        }
    }

    /// Resolves if the event loop ends on its own, which only a bug can cause; the
    /// returned text says how it ended. Pending forever while the node runs.
    pub async fn stopped(&mut self) -> String {
        let Some(event_loop) = self.event_loop.as_mut() else {
            return std::future::pending().await;
        };
        let result = event_loop.await;
        self.event_loop = None;
        match result {
            Ok(()) => "the event loop stopped".into(),
            Err(e) => format!("the event loop failed: {e}"),
        }
    }

    /// Waits until the node listens on at least one address and returns them with `/p2p/`.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let mut rx = self.listen.clone();
        let addrs = match rx.wait_for(|a| !a.is_empty()).await {
            Ok(addrs) => addrs.clone(),
            Err(_) => Vec::new(),
        };
        addrs
    }

    /// Follows the listen addresses (with `/p2p/`) as they are bound and expire.
    pub fn watch_listen_addrs(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.listen.clone()
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
    let relay_key = keypair.clone();
    let peer_id = keypair.public().to_peer_id();
    let id = (config.mode == Mode::User).then(|| IdInfo::of(&identity));
    if let Some(id) = &id {
        info!(uuid = %id.uuid, fingerprint = %id.fingerprint, peer_id = %id.peer_id, "identity");
    }

    let mut registry = prometheus_client::registry::Registry::default();
    let mut swarm = build_swarm(keypair, &config, &mut registry)?;
    let libp2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
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
    let counters = Counters::default();
    let exporter =
        crate::metrics::Exporter::new(registry, &counters, &store, config.mode == Mode::User);
    let (hooks, messaging_channels) = crate::messaging::channels();
    let (gossip_tx, gossip_rx) = mpsc::channel(crate::net::GOSSIP_QUEUE);
    let (grants_tx, grants_rx) = mpsc::channel(256);
    let (history_tx, history_rx) = mpsc::channel(crate::channels::HISTORY_QUEUE);
    let user = config.mode == Mode::User;
    let mut event_loop = EventLoop::new(
        swarm,
        rx,
        store.clone(),
        identity,
        &config,
        counters.clone(),
        libp2p_metrics,
        user.then_some(crate::net::UserHooks {
            messaging: hooks,
            gossip: gossip_tx,
            history: history_tx,
        }),
    );
    match store.cached_documents(crate::unix_now()) {
        Ok(docs) => event_loop.seed_dht(docs),
        Err(e) => tracing::warn!(error = %e, "could not read the directory cache"),
    }
    // A relay forwards public-channel announcements so users who share only a relay
    // still discover each other's channels; a user's channel service joins the topic too.
    // Joined here, before any channel's topic, it is the one topic gossipsub's metrics
    // name (see `net::behaviour::gossip_metrics`).
    event_loop.subscribe(crate::wire::frame::ANNOUNCE_TOPIC, true);
    for addr in config.bootstrap.iter().chain(config.relays.iter()) {
        if let Err(e) = event_loop.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    event_loop.bootstrap_dht();
    let mailboxes = match (&config.mailbox, config.mode) {
        (Some(m), Mode::Relay) => {
            let (service, tx) = crate::mailbox::service::Mailboxes::start(
                store.clone(),
                relay_key,
                client.clone(),
                *m,
                counters.clone(),
            );
            event_loop.set_mailbox(tx);
            Some(service)
        }
        _ => None,
    };
    let listen = event_loop.watch_listen_addrs();
    let (stop, stop_rx) = oneshot::channel();
    let event_loop = tokio::spawn(event_loop.run(stop_rx));
    // If a later step fails, the loop is stopped rather than left running without a node.
    let mut stop = StopOnError(Some(stop));
    let messenger = match config.mode {
        Mode::User => Some(Messenger::start(
            MessagingConfig {
                home: config.home.clone(),
                max_attachment: config.max_attachment,
                transfer_idle: config.transfer_idle,
                grants: Some(grants_tx),
            },
            store,
            client.clone(),
            messaging_channels,
            counters.clone(),
        )?),
        Mode::Relay => None,
    };
    let channels = match &messenger {
        Some(m) => Some(Channels::start(
            ChannelsConfig {
                announce_every: config.channel_announce_every,
            },
            m.clone(),
            client.clone(),
            gossip_rx,
            grants_rx,
            history_rx,
            counters,
        )?),
        None => None,
    };

    let (metrics, metrics_addr) = match config.metrics {
        Some(addr) => {
            let (task, bound) = crate::metrics::serve(addr, exporter, client.clone())
                .await
                .map_err(|source| StartError::Metrics { addr, source })?;
            info!(address = %bound, "serving Prometheus metrics on /metrics");
            (Some(task), Some(bound))
        }
        None => (None, None),
    };

    let http = match (config.http, &id) {
        (Some(addr), Some(_)) => {
            let token = crate::http::token_in(&config.home)
                .map_err(|source| StartError::Http { addr, source })?;
            let ops = crate::control::Operations::new(
                client.clone(),
                id.clone(),
                messenger.clone(),
                channels.clone(),
            );
            let bound = match crate::http::HttpServer::bind(addr, ops.clone(), token.clone()).await
            {
                // Another node has the default port: any free one (`ptpchat ui` says which).
                Err(e)
                    if addr == crate::config::DEFAULT_HTTP
                        && e.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    let any = std::net::SocketAddr::new(addr.ip(), 0);
                    crate::http::HttpServer::bind(any, ops, token.clone()).await
                }
                other => other,
            }
            .map_err(|source| StartError::Http { addr, source })?;
            info!(address = %bound.addr(), "serving the app and HTTP API (`ptpchat ui` gives its address with the token)");
            Some((bound, token))
        }
        _ => None,
    };

    let control = if config.control_socket {
        Some(
            ControlServer::bind(
                &socket,
                crate::control::Operations::new(
                    client.clone(),
                    id.clone(),
                    messenger.clone(),
                    channels.clone(),
                )
                .with_ui(http.as_ref().map(|(h, t)| {
                    crate::control::answers::UiAnswer {
                        address: h.addr().to_string(),
                        url: format!("http://{}/#token={}", h.addr(), t.reveal()),
                    }
                })),
            )
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
        metrics_addr,
        http_addr: http.as_ref().map(|(h, _)| h.addr()),
        listen,
        event_loop: Some(event_loop),
        stop: stop.0.take(),
        messenger,
        channels,
        mailboxes,
        control,
        http: http.map(|(h, _)| h),
        metrics,
    })
}

/// Sends the event loop's stop signal when dropped while still holding it.
struct StopOnError(Option<oneshot::Sender<()>>);

impl Drop for StopOnError {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

/// Listens on TCP and QUIC, IPv4 and IPv6, on all interfaces: port 4001 or the next free one.
fn listen_on_defaults(swarm: &mut libp2p::Swarm<crate::net::Behaviour>) -> Result<(), StartError> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let tcp4 = |port| {
        Multiaddr::empty()
            .with(Protocol::Ip4(Ipv4Addr::UNSPECIFIED))
            .with(Protocol::Tcp(port))
    };
    let mut last_err = String::new();
    for port in DEFAULT_PORT..DEFAULT_PORT + 20 {
        match swarm.listen_on(tcp4(port)) {
            Ok(_) => {
                let ip4 = Multiaddr::empty().with(Protocol::Ip4(Ipv4Addr::UNSPECIFIED));
                let ip6 = Multiaddr::empty().with(Protocol::Ip6(Ipv6Addr::UNSPECIFIED));
                for addr in [
                    ip4.with(Protocol::Udp(port)).with(Protocol::QuicV1),
                    ip6.clone().with(Protocol::Tcp(port)),
                    ip6.with(Protocol::Udp(port)).with(Protocol::QuicV1),
                ] {
                    if let Err(e) = swarm.listen_on(addr.clone()) {
                        warn!(%addr, error = %e, "not listening on this address");
                    }
                }
                return Ok(());
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    Err(StartError::Listen {
        addr: tcp4(DEFAULT_PORT),
        detail: format!(
            "ports {DEFAULT_PORT}-{} all taken ({last_err})",
            DEFAULT_PORT + 19
        ),
    })
}

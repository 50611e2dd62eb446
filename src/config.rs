//! The validated node configuration. Flags are parsed once at the edge (cli.rs) and merged
//! here with `$PTPCHAT_HOME`, `<home>/config.toml` and the defaults; library code only
//! ever sees a [`NodeConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use serde::Deserialize;

/// The default bootstrap list shipped in `bootstrap/peers.txt`.
const DEFAULT_BOOTSTRAP: &str = include_str!("../bootstrap/peers.txt");
/// The default port; the next free one is used if it is taken.
pub const DEFAULT_PORT: u16 = 4001;
/// Where `ptpchat run` serves the app and HTTP API unless told otherwise (a free port
/// instead, if another node has it).
pub const DEFAULT_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7480);

/// What kind of node to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A person's node (`ptpchat run`).
    User,
    /// An always-on relay, bootstrap and (later) mailbox node (`ptpchat relay`).
    Relay,
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub mode: Mode,
    pub home: PathBuf,
    /// Empty means the defaults: TCP and QUIC on all interfaces, port 4001 or the next free.
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub relays: Vec<Multiaddr>,
    pub mdns: bool,
    /// Publish direct addresses and serve the DHT (the user opted to be publicly reachable).
    pub public: bool,
    pub metrics: Option<SocketAddr>,
    /// Serve the local HTTP API and app here (user nodes; `ptpchat run` sets a loopback
    /// address unless told not to).
    pub http: Option<SocketAddr>,
    /// Serve the control socket (tests of in-process nodes may turn it off).
    pub control_socket: bool,
    /// Largest attachment sent or accepted, in bytes.
    pub max_attachment: u64,
    /// How long an incoming attachment transfer may go without a chunk before it counts
    /// as idle and may lose its slot (tests shorten it).
    pub transfer_idle: std::time::Duration,
    /// How long gossip remembers the ids of channel messages it has seen (tests shorten
    /// it to show that replays are still caught once gossip has forgotten). Never less than
    /// [`crate::net::MIN_DUPLICATE_CACHE`] (15 s), whatever is set: forgetting sooner makes
    /// a node ask its peers again for messages it already has.
    pub gossip_duplicate_cache: std::time::Duration,
    /// How often a member re-announces a channel it is in (CHANNEL frames).
    pub channel_announce_every: std::time::Duration,
    /// Who may set up a direct connection with us (`run --accept-connect`).
    pub accept_connect: ConnectPolicy,
    /// Treat private and reserved address ranges as routable for NAT detection (closed
    /// networks and the NAT lab; off on the internet, where a relay must not be talked
    /// into dialing private addresses).
    pub private_ips: bool,
    /// Addresses this host is reachable at that it does not listen on (behind 1:1 NAT or a
    /// port forward): a relay hands them out in reservations (`relay --external`).
    pub external: Vec<Multiaddr>,
    /// What a relay lets strangers use (`relay --max-reservations`, `--max-circuits`).
    pub relay_limits: RelayLimits,
    /// Inbound connections per IP address and per /24 (/48).
    pub ip_limits: IpLimitConfig,
    /// Mailboxes for offline users (relays; `None` turns them off, and user nodes have none).
    pub mailbox: Option<MailboxConfig>,
}

/// How many inbound connections one address, and one network, may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpLimitConfig {
    pub per_ip: usize,
    pub per_net: usize,
    /// Count loopback addresses too (tests that attack from 127.0.0.1).
    pub loopback: bool,
}

impl Default for IpLimitConfig {
    fn default() -> Self {
        IpLimitConfig {
            per_ip: 16,
            per_net: 64,
            loopback: false,
        }
    }
}

/// A relay operator's mailbox settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MailboxConfig {
    pub limits: crate::store::mailbox::MailLimits,
    /// The per-sender quota: items one peer may deposit per day (a token bucket with this
    /// burst, refilled over 24 hours)…
    pub sender_items_per_day: u32,
    /// …and bytes.
    pub sender_bytes_per_day: u64,
    /// Added to the clock the mailbox uses (tests of expiry; 0 otherwise).
    pub clock_offset_ms: i64,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        MailboxConfig {
            limits: crate::store::mailbox::MailLimits::default(),
            sender_items_per_day: 2000,
            sender_bytes_per_day: 64 * 1024 * 1024,
            clock_offset_ms: 0,
        }
    }
}

/// The standing answer to CONNECT requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConnectPolicy {
    /// Contacts whose fingerprint the user verified.
    #[default]
    Verified,
    /// Any contact (its key matches the one pinned when it was added).
    Contacts,
    /// Anybody.
    All,
    /// Nobody.
    None,
    /// Queue each request for `ptpchat requests` / `accept` / `deny`.
    Ask,
}

impl std::str::FromStr for ConnectPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "verified" => ConnectPolicy::Verified,
            "contacts" => ConnectPolicy::Contacts,
            "all" => ConnectPolicy::All,
            "none" => ConnectPolicy::None,
            "ask" => ConnectPolicy::Ask,
            other => {
                return Err(format!(
                    "unknown connect policy {other:?} (verified, contacts, all, none, ask)"
                ))
            }
        })
    }
}

/// Circuit relay v2 limits of a relay node (see docs/operations.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once, in all and per peer.
    pub max_reservations: usize,
    pub max_reservations_per_peer: usize,
    /// Circuits open at once, in all and per peer.
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    /// One circuit's life and its byte allowance (both directions together).
    pub max_circuit_duration: std::time::Duration,
    pub max_circuit_bytes: u64,
    /// Circuits one source peer may open in a burst (then one per 10 s); twice as many
    /// per source IP address (then one per 5 s).
    pub circuit_burst: u32,
    /// Reservations one IP address may ask for in a burst (then one a minute); raise it for
    /// users behind carrier-grade NAT, who share addresses.
    pub reservation_ip_burst: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_reservations: 4096,
            max_reservations_per_peer: 4,
            max_circuits: 1024,
            max_circuits_per_peer: 16,
            max_circuit_duration: std::time::Duration::from_secs(30 * 60),
            max_circuit_bytes: 16 * 1024 * 1024,
            circuit_burst: 60,
            reservation_ip_burst: 60,
        }
    }
}

impl NodeConfig {
    /// A configuration with defaults for `home` (no file or environment consulted).
    pub fn new(mode: Mode, home: PathBuf) -> Self {
        NodeConfig {
            mode,
            home,
            listen: Vec::new(),
            bootstrap: default_bootstrap(),
            relays: Vec::new(),
            mdns: true,
            public: false,
            metrics: None,
            http: None,
            control_socket: true,
            max_attachment: crate::wire::envelope::DEFAULT_MAX_ATTACHMENT_BYTES,
            transfer_idle: std::time::Duration::from_secs(60),
            gossip_duplicate_cache: std::time::Duration::from_secs(120),
            channel_announce_every: std::time::Duration::from_secs(120),
            accept_connect: ConnectPolicy::default(),
            private_ips: false,
            external: Vec::new(),
            relay_limits: RelayLimits::default(),
            ip_limits: Default::default(),
            mailbox: (mode == Mode::Relay).then(Default::default),
        }
    }

    /// Path of the control socket.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.home)
    }
}

/// Path of the control socket for a home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("ptpchat.sock")
}

/// The node home: `--home`, else `$PTPCHAT_HOME`, else `$XDG_DATA_HOME/ptpchat`
/// (`~/.local/share/ptpchat`). A relay without an explicit home uses `ptpchat-relay`
/// beside it, so a relay and a user node on one machine do not collide.
pub fn resolve_home(flag: Option<&Path>, mode: Mode) -> Result<PathBuf, ConfigError> {
    if let Some(h) = flag {
        return Ok(h.to_path_buf());
    }
    if let Some(h) = std::env::var_os("PTPCHAT_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let data = match std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").ok_or(ConfigError::NoHome)?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(data.join(match mode {
        Mode::User => "ptpchat",
        Mode::Relay => "ptpchat-relay",
    }))
}

/// `<home>/config.toml`: every key optional, unknown keys refused (a typo should not be
/// silently ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Vec<String>>,
    pub bootstrap: Option<Vec<String>>,
    pub relay: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub public: Option<bool>,
    pub metrics: Option<String>,
    pub http: Option<String>,
    pub max_attachment_bytes: Option<u64>,
    pub accept_connect: Option<String>,
    pub private_ips: Option<bool>,
    pub max_reservations: Option<usize>,
    pub max_circuits: Option<usize>,
    pub circuit_burst: Option<u32>,
    pub reservation_ip_burst: Option<u32>,
    pub external: Option<Vec<String>>,
    pub mailbox: Option<bool>,
    pub mail_retention_days: Option<u32>,
    pub mail_quota_recipient_mib: Option<u64>,
    pub mail_quota_sender_mib: Option<u64>,
    pub mail_disk_cap_mib: Option<u64>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("neither --home, PTPCHAT_HOME, XDG_DATA_HOME nor HOME is set")]
    NoHome,
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("invalid multiaddr {addr:?} in {origin}: {detail}")]
    BadAddr {
        addr: String,
        origin: String,
        detail: String,
    },
}

impl FileConfig {
    /// Reads `<home>/config.toml` if it exists.
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        let path = home.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(ConfigError::File {
                    path,
                    detail: e.to_string(),
                })
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path,
            detail: e.to_string(),
        })
    }
}

/// Parses multiaddrs, naming where a bad one came from.
pub fn parse_addrs(addrs: &[String], origin: &str) -> Result<Vec<Multiaddr>, ConfigError> {
    addrs
        .iter()
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|e: libp2p::multiaddr::Error| ConfigError::BadAddr {
                    addr: a.clone(),
                    origin: origin.to_string(),
                    detail: e.to_string(),
                })
        })
        .collect()
}

/// The shipped bootstrap list (comments and blank lines skipped).
pub fn default_bootstrap() -> Vec<Multiaddr> {
    DEFAULT_BOOTSTRAP
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_bootstrap_list_parses() {
        for line in DEFAULT_BOOTSTRAP.lines().map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                assert!(
                    line.parse::<Multiaddr>().is_ok(),
                    "bad line in bootstrap/peers.txt: {line}"
                );
            }
        }
    }

    #[test]
    fn file_config_rejects_unknown_keys_and_bad_addrs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "listne = []\n").unwrap();
        assert!(FileConfig::load(dir.path()).is_err());
        std::fs::write(
            dir.path().join("config.toml"),
            "listen = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\n",
        )
        .unwrap();
        let f = FileConfig::load(dir.path()).unwrap();
        assert_eq!(f.mdns, Some(false));
        assert!(parse_addrs(&["/ip4/nope".into()], "--listen").is_err());
    }
}

//! The command line: flags parsed once into [`Cli`], and each subcommand carried out,
//! either by starting a node (`run`, `relay`) or as a thin client of the control socket.
//! The contract is ../shared/CLI.md; docs/cli.md documents it for users.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::{self, Mode, NodeConfig};
use crate::control::answers::{PeerView, StatusView};
use crate::control::{self, ClientError, ControlRequest, ErrorKind, IdInfo, Refusal, WhoisView};
use crate::identity::{parse_contact, qr_code};
use crate::node;
use crate::store::Store;

mod channels;
mod config_merge;
mod connect;
mod messages;
pub use channels::ChannelCommand;
pub use config_merge::{node_config_for_relay, node_config_for_run};
pub use messages::ContactsCommand;

/// Exit codes (CLI.md).
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const QUEUED: i32 = 3;
    pub const NOT_FOUND: i32 = 4;
}

/// The exit code for a kind of failure (CLI.md, docs/cli.md "Exit codes"): the one place a
/// kind becomes the number `main` exits with.
pub fn exit_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Failed => exit::ERROR,
        ErrorKind::BadInput => exit::USAGE,
        ErrorKind::Pending => exit::QUEUED,
        ErrorKind::NotFound | ErrorKind::Denied | ErrorKind::Unreachable | ErrorKind::Timeout => {
            exit::NOT_FOUND
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "ptpchat",
    version,
    about = "A decentralized chat node: persistent identity, direct messages, channels, NAT traversal",
    after_help = "Example:\n  ptpchat run                     # start your node\n  ptpchat status --json           # ask it how it is doing\n  ptpchat whois <uuid> --json     # look someone up in the directory"
)]
pub struct Cli {
    /// Node home (identity, database, control socket). Default: $PTPCHAT_HOME, else $XDG_DATA_HOME/ptpchat
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Machine output: one JSON object per result; nothing else on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (repeat for more); RUST_LOG is honoured too
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less logging on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the identity if there is none (idempotent)
    #[command(after_help = "Example:\n  ptpchat init --json")]
    Init,
    /// Show this node's identity: uuid, peer id, fingerprint, public key, contact URI
    #[command(
        after_help = "Examples:\n  ptpchat id\n  ptpchat id --qr\n  ptpchat id --rotate   # with the node stopped"
    )]
    Id {
        /// Draw the contact URI as a QR code
        #[arg(long)]
        qr: bool,
        /// Replace the identity key with a new one signed by the old one (the UUID stays;
        /// the peer id changes). Stop the node first.
        #[arg(long)]
        rotate: bool,
    },
    /// Run your node in the foreground (creates the identity on first run)
    #[command(
        after_help = "Example:\n  ptpchat run --listen /ip4/0.0.0.0/tcp/4001 --bootstrap /ip4/198.51.100.7/tcp/4001/p2p/12D3Koo..."
    )]
    Run(RunArgs),
    /// Run an always-on relay / bootstrap node; prints its dialable multiaddrs on stdout
    #[command(
        after_help = "Example:\n  ptpchat relay --listen /ip4/0.0.0.0/tcp/4001 --listen /ip4/0.0.0.0/udp/4001/quic-v1"
    )]
    Relay(RelayArgs),
    /// Show the running node's status
    #[command(after_help = "Example:\n  ptpchat status --json")]
    Status,
    /// List connected peers
    #[command(after_help = "Example:\n  ptpchat peers --json")]
    Peers,
    /// Print the URL that opens the running node's app in a browser (it carries the HTTP API's token)
    #[command(after_help = "Example:\n  ptpchat ui --open")]
    Ui {
        /// Open it in the default browser, where there is one
        #[arg(long)]
        open: bool,
    },
    /// Look an identity up in the directory (DHT); exit 4 if none valid is found
    #[command(
        after_help = "Example:\n  ptpchat whois 0b7e3f0c-1d2a-8c4e-9f00-1234567890ab --json"
    )]
    Whois {
        /// The UUID (or a ptpchat: contact URI)
        uuid: String,
    },
    /// Send a direct message; exit 0 once the recipient ACKed, 3 if queued for later, 1 if refused
    #[command(
        after_help = "Examples:\n  ptpchat send bob \"hello\"\n  echo hi | ptpchat send 0b7e3f0c-1d2a-8c4e-9f00-1234567890ab -\n  ptpchat send bob \"the report\" --attach report.pdf --json"
    )]
    Send {
        /// A UUID, ptpchat: URI or contact name
        to: String,
        /// The text; `-` or nothing reads it from stdin
        text: Option<String>,
        /// A file to send along (repeatable)
        #[arg(long, value_name = "FILE")]
        attach: Vec<PathBuf>,
        /// Seconds to wait for the ACK before answering "queued" (exit 3)
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        timeout: u64,
        /// Send at most once under this key: a retry with the same key and message sends nothing and answers for the first
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Print received messages, oldest first; --follow keeps streaming new ones
    #[command(
        after_help = "Examples:\n  ptpchat recv\n  ptpchat recv --follow --json\n  ptpchat recv --since 5f0c…   # only what came after that message"
    )]
    Recv {
        /// Keep running and print messages as they arrive
        #[arg(long)]
        follow: bool,
        /// Only messages received after this msg_id
        #[arg(long, value_name = "MSG_ID")]
        since: Option<String>,
        /// Only messages of this channel
        #[arg(long, value_name = "CH")]
        channel: Option<String>,
    },
    /// Show the stored conversation, both directions (with one contact or UUID, or all)
    #[command(after_help = "Examples:\n  ptpchat history bob\n  ptpchat history --json")]
    History {
        /// A contact name or UUID
        with: Option<String>,
    },
    /// Manage contacts: names for UUIDs, with pinned keys
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Public and private channels
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Ask a contact for a direct connection (hole punching through both NATs); exit 0
    /// once it is direct, 4 if denied, offline, unanswered or only relayed
    #[command(
        after_help = "Examples:\n  ptpchat connect bob\n  ptpchat connect 0b7e3f0c-1d2a-8c4e-9f00-1234567890ab --timeout 60 --json"
    )]
    Connect {
        /// A UUID, ptpchat: URI or contact name
        to: String,
        /// Seconds to wait for the answer and the direct connection (at most 55)
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// Close every connection with a contact (direct and relayed); exit 4 if there was none
    #[command(after_help = "Example:\n  ptpchat disconnect bob")]
    Disconnect {
        /// A UUID, ptpchat: URI or contact name
        to: String,
    },
    /// List incoming CONNECT requests waiting for your answer (policy `ask`)
    #[command(after_help = "Example:\n  ptpchat requests --json")]
    Requests,
    /// Accept a waiting CONNECT request
    #[command(after_help = "Example:\n  ptpchat accept 3")]
    Accept {
        /// The request_id shown by `requests`
        request_id: u64,
    },
    /// Deny a waiting CONNECT request
    #[command(after_help = "Example:\n  ptpchat deny 3")]
    Deny {
        /// The request_id shown by `requests`
        request_id: u64,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on (repeatable). Default: TCP and QUIC on all interfaces, port 4001 or the next free
    #[arg(long, value_name = "MA")]
    pub listen: Vec<String>,
    /// Bootstrap peer multiaddr ending in /p2p/<peer id> (repeatable). Default: bootstrap/peers.txt
    #[arg(long, value_name = "MA")]
    pub bootstrap: Vec<String>,
    /// Relay to use for reachability (repeatable)
    #[arg(long, value_name = "MA")]
    pub relay: Vec<String>,
    /// Do not discover peers on the LAN with mDNS
    #[arg(long)]
    pub no_mdns: bool,
    /// Publish direct addresses and serve the DHT (only if this host is publicly reachable)
    #[arg(long)]
    pub public: bool,
    /// Largest attachment sent or accepted, in bytes (default 16 MiB)
    #[arg(long, value_name = "BYTES")]
    pub max_attachment: Option<u64>,
    /// Who may set up a direct connection with `ptpchat connect`: verified, contacts, all, none or ask (default verified)
    #[arg(long, value_name = "POLICY")]
    pub accept_connect: Option<String>,
    /// Treat private and reserved IP ranges as routable for NAT detection (closed networks, labs)
    #[arg(long)]
    pub private_ips: bool,
    /// Serve the browser app and HTTP API on this address (default 127.0.0.1:7480, or a free port if that is taken; loopback only unless --http-any-address)
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Allow an --http address that is not loopback (other machines can then try the token)
    #[arg(long)]
    pub http_any_address: bool,
    /// Serve no HTTP API or app
    #[arg(long, conflicts_with = "http")]
    pub no_http: bool,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to listen on (repeatable). Default: TCP and QUIC on all interfaces, port 4001 or the next free
    #[arg(long, value_name = "MA")]
    pub listen: Vec<String>,
    /// Other bootstrap peers to join (repeatable)
    #[arg(long, value_name = "MA")]
    pub bootstrap: Vec<String>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9090
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// An address this host is reachable at but does not listen on, e.g. its public IP behind 1:1 NAT (repeatable)
    #[arg(long, value_name = "MA")]
    pub external: Vec<String>,
    /// Most relay reservations held at once (default 4096)
    #[arg(long, value_name = "N")]
    pub max_reservations: Option<usize>,
    /// Most relayed circuits open at once (default 1024)
    #[arg(long, value_name = "N")]
    pub max_circuits: Option<usize>,
    /// Circuits one peer may open in a burst, then one per 10 s (default 60; twice that per IP address)
    #[arg(long, value_name = "N")]
    pub circuit_burst: Option<u32>,
    /// Reservations one IP address may ask for in a burst, then one a minute (default 60; raise it for carrier-grade NAT)
    #[arg(long, value_name = "N")]
    pub reservation_ip_burst: Option<u32>,
    /// Treat private and reserved IP ranges as routable: answer NAT probes from them (closed networks, labs)
    #[arg(long)]
    pub private_ips: bool,
    /// Keep no mail for offline users (mailboxes are on by default)
    #[arg(long)]
    pub no_mailbox: bool,
    /// Days a mailbox keeps an undrained message (default 7)
    #[arg(long, value_name = "DAYS")]
    pub mail_retention_days: Option<u32>,
    /// Most MiB of mail one recipient's mailbox holds (default 32)
    #[arg(long, value_name = "MIB")]
    pub mail_quota_recipient: Option<u64>,
    /// Most MiB of mail one sender may deposit per day (default 64)
    #[arg(long, value_name = "MIB")]
    pub mail_quota_sender: Option<u64>,
    /// Most MiB of mail held over all mailboxes (default 1024)
    #[arg(long, value_name = "MIB")]
    pub mail_disk_cap: Option<u64>,
    /// Shift the mailbox clock by this many seconds (tests of expiry only)
    #[arg(long, value_name = "SECS", hide = true, allow_hyphen_values = true)]
    pub mail_clock_offset: Option<i64>,
}

/// Why a command did not succeed: its kind (which `main` turns into the exit code, with
/// [`exit_code`]) and the line for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CliError {
    pub fn new(kind: ErrorKind, message: impl std::fmt::Display) -> Self {
        CliError {
            kind,
            message: message.to_string(),
        }
    }

    /// A failure with nothing more to say (the output already said it).
    pub fn silent(kind: ErrorKind) -> Self {
        CliError {
            kind,
            message: String::new(),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::new(ErrorKind::Failed, e)
    }
}

impl From<Refusal> for CliError {
    fn from(r: Refusal) -> Self {
        CliError::new(r.kind, r.message)
    }
}

/// Carries out the parsed command. `main` turns the error into an exit code.
pub async fn execute(cli: Cli) -> Result<(), CliError> {
    let mode = match cli.command {
        Command::Relay(_) => Mode::Relay,
        _ => Mode::User,
    };
    let home = config::resolve_home(cli.home.as_deref(), mode)
        .map_err(|e| CliError::new(ErrorKind::Failed, e))?;
    let json = cli.json;
    match cli.command {
        Command::Init => init(&home, json).await,
        Command::Id { qr, rotate } => id(&home, json, qr, rotate).await,
        Command::Run(args) => run(node_config_for_run(home, args)?).await,
        Command::Relay(args) => run(node_config_for_relay(home, args)?).await,
        Command::Status => {
            let status: StatusView = ask(&home, ControlRequest::Status).await?;
            if json {
                print_json(&status);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Ui { open } => {
            let ui: control::answers::UiAnswer = ask(&home, ControlRequest::Ui).await?;
            if json {
                print_json(&ui);
            } else {
                println!("{}", ui.url);
            }
            if open {
                open_in_browser(&home, &ui.url);
            }
            Ok(())
        }
        Command::Peers => {
            let peers: Vec<PeerView> = ask(&home, ControlRequest::Peers).await?;
            for p in peers {
                if json {
                    print_json(&p);
                } else {
                    println!(
                        "{}  {}{}  {}",
                        p.peer_id,
                        p.addr,
                        if p.relayed { " (relayed)" } else { "" },
                        p.agent.as_deref().unwrap_or("?")
                    );
                }
            }
            Ok(())
        }
        Command::Whois { uuid } => {
            let (uuid, fp) =
                parse_contact(&uuid).map_err(|e| CliError::new(ErrorKind::BadInput, e))?;
            let doc: WhoisView = ask(
                &home,
                ControlRequest::Whois {
                    uuid: uuid.to_string(),
                },
            )
            .await?;
            if let Some(fp) = fp {
                if doc.fingerprint != fp.to_string() {
                    return Err(CliError::new(
                        ErrorKind::Failed,
                        format!(
                            "fingerprint mismatch for {uuid}: the URI says {fp}, the directory's document has {}",
                            doc.fingerprint
                        ),
                    ));
                }
            }
            if json {
                print_json(&doc);
            } else {
                for (key, value) in [
                    ("uuid", doc.uuid.clone()),
                    ("peer_id", doc.peer_id.clone()),
                    ("fingerprint", doc.fingerprint.clone()),
                    ("public_key", doc.public_key.clone()),
                    ("seq", doc.seq.to_string()),
                    ("reach", doc.reach.join(" ")),
                ] {
                    println!("{key:12} {value}");
                }
            }
            Ok(())
        }
        Command::Send {
            to,
            text,
            attach,
            timeout,
            idempotency_key,
        } => messages::send(&home, json, to, text, attach, timeout, idempotency_key).await,
        Command::Recv {
            follow,
            since,
            channel,
        } => messages::recv(&home, json, follow, since, channel).await,
        Command::History { with } => messages::history(&home, json, with).await,
        Command::Contacts(cmd) => messages::contacts(&home, json, cmd).await,
        Command::Channel(cmd) => channels::channel(&home, json, cmd).await,
        Command::Connect { to, timeout } => connect::connect(&home, json, to, timeout).await,
        Command::Disconnect { to } => {
            let done: control::answers::Disconnected =
                ask(&home, ControlRequest::Disconnect { to }).await?;
            if json {
                print_json(&done);
            }
            Ok(())
        }
        Command::Requests => connect::requests(&home, json).await,
        Command::Accept { request_id } => connect::answer(&home, json, request_id, true).await,
        Command::Deny { request_id } => connect::answer(&home, json, request_id, false).await,
    }
}

/// Sends a request to the running node and returns its whole answer.
async fn ask_full(
    home: &std::path::Path,
    req: ControlRequest,
) -> Result<control::ControlResponse, CliError> {
    Ok(control::request(home, &req).await?)
}

/// Sends a request to the running node and decodes its answer as `T`; a refusal becomes
/// the CLI error of its kind.
async fn ask<T: serde::de::DeserializeOwned>(
    home: &std::path::Path,
    req: ControlRequest,
) -> Result<T, CliError> {
    let resp = control::request(home, &req).await?;
    if let Some(refusal) = resp.refusal() {
        return Err(refusal.into());
    }
    resp.data_as()?
        .ok_or_else(|| CliError::from(ClientError::BadAnswer("the answer has no data".into())))
}

/// A page in `home` (0600) that sends the browser on to `url`: opened by its path, so the
/// token in `url` never appears in a command line other users can read (`/proc/*/cmdline`),
/// as Jupyter opens its server.
fn redirect_page(home: &std::path::Path, url: &str) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = home.join("ui-open.html");
    // Made afresh, so no looser mode of an older file is kept.
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let url: String = url
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || ":/.#=[]-_".contains(*c))
        .collect();
    writeln!(
        f,
        "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={url}\"><title>ptpchat</title><a href=\"{url}\">Open ptpchat</a>"
    )?;
    Ok(path)
}

/// Hands the app to the desktop's opener (`xdg-open`), through [`redirect_page`]; says so
/// where there is none.
fn open_in_browser(home: &std::path::Path, url: &str) {
    let page = match redirect_page(home, url) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ptpchat: cannot write the page that opens the app: {e}; open the URL above by hand");
            return;
        }
    };
    let opened = std::process::Command::new("xdg-open")
        .arg(&page)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !opened {
        eprintln!("ptpchat: no browser to open here (xdg-open failed); open the URL above by hand");
    }
}

/// Prints an answer from the node as one JSON line, keys in alphabetical order at every
/// level: the order `--json` has always printed them in (it printed the node's answer read
/// into a `serde_json::Value`, whose maps are sorted).
fn print_json(v: &impl Serialize) {
    println!("{}", json_line(v));
}

/// [`print_json`]'s line.
fn json_line(v: &impl Serialize) -> String {
    serde_json::to_value(v)
        .and_then(|v| serde_json::to_string(&v))
        .unwrap_or_default()
}

fn print_status(s: &StatusView) {
    if let Some(uuid) = s.uuid {
        println!("uuid            {uuid}");
    }
    println!("peer_id         {}", s.peer_id);
    println!("mode            {}", s.mode);
    println!("nat             {}", s.nat);
    println!("connected_peers {}", s.connected_peers);
    for a in &s.listen_addrs {
        println!("listening       {a}");
    }
}

fn print_id(info: &IdInfo, json: bool, qr: bool) -> Result<(), CliError> {
    if json {
        // In the struct's order, as `id --json` has always printed it.
        println!("{}", serde_json::to_string(info).unwrap_or_default());
    } else {
        println!("uuid         {}", info.uuid);
        println!("peer_id      {}", info.peer_id);
        println!("fingerprint  {}", info.fingerprint);
        println!("public_key   {}", info.public_key);
        println!("contact      {}", info.contact_uri);
    }
    if qr {
        let code = qr_code(&info.contact_uri).map_err(|e| CliError::new(ErrorKind::Failed, e))?;
        // With --json, stdout holds only JSON; the picture goes to stderr.
        if json {
            eprint!("{code}");
        } else {
            print!("{code}");
        }
    }
    Ok(())
}

/// Opens the store directly when no node holds it, else `None`.
fn open_store_if_free(home: &std::path::Path) -> Result<Option<Store>, CliError> {
    node::prepare_home(home).map_err(|e| CliError::new(ErrorKind::Failed, e))?;
    match Store::open(home) {
        Ok(s) => Ok(Some(s)),
        Err(crate::store::StoreError::InUse(_)) => Ok(None),
        Err(e) => Err(CliError::new(ErrorKind::Failed, e)),
    }
}

/// What `init --json` prints.
#[derive(Serialize)]
struct InitView {
    fingerprint: String,
    peer_id: String,
    uuid: uuid::Uuid,
}

async fn init(home: &std::path::Path, json: bool) -> Result<(), CliError> {
    let info = match open_store_if_free(home)? {
        Some(store) => {
            let (id, created) = store
                .load_or_create_identity(crate::unix_now())
                .map_err(|e| CliError::new(ErrorKind::Failed, e))?;
            if created && !json {
                eprintln!("created a new identity in {}", home.display());
            }
            IdInfo::of(&id)
        }
        None => ask(home, ControlRequest::Id).await?,
    };
    if json {
        print_json(&InitView {
            fingerprint: info.fingerprint,
            peer_id: info.peer_id,
            uuid: info.uuid,
        });
    } else {
        println!("{}", info.uuid);
    }
    Ok(())
}

async fn id(home: &std::path::Path, json: bool, qr: bool, rotate: bool) -> Result<(), CliError> {
    let Some(store) = open_store_if_free(home)? else {
        if rotate {
            return Err(CliError::new(
                ErrorKind::Failed,
                format!(
                    "the node for {} is running; stop it before rotating the identity key (the peer id changes)",
                    home.display()
                ),
            ));
        }
        let info: IdInfo = ask(home, ControlRequest::Id).await?;
        return print_id(&info, json, qr);
    };
    let mut identity = store
        .load_identity()
        .map_err(|e| CliError::new(ErrorKind::Failed, e))?
        .ok_or_else(|| {
            CliError::new(
                ErrorKind::Failed,
                format!("no identity in {}; run `ptpchat init`", home.display()),
            )
        })?;
    if rotate {
        identity
            .rotate_identity_key()
            .map_err(|e| CliError::new(ErrorKind::Failed, e))?;
        store
            .save_identity(&identity)
            .map_err(|e| CliError::new(ErrorKind::Failed, e))?;
        if !json {
            eprintln!("identity key rotated; the new key is signed by the old one and is published at the next start");
        }
    }
    print_id(&IdInfo::of(&identity), json, qr)
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::new(ErrorKind::BadInput, e)
}

/// Runs a node in the foreground until SIGINT or SIGTERM.
async fn run(config: NodeConfig) -> Result<(), CliError> {
    let mode = config.mode;
    let mut node = node::start(config)
        .await
        .map_err(|e| CliError::new(ErrorKind::Failed, e))?;
    let printer =
        (mode == Mode::Relay).then(|| tokio::spawn(print_listen_addrs(node.watch_listen_addrs())));
    let failure = tokio::select! {
        _ = wait_for_signal() => None,
        why = node.stopped() => Some(why),
    };
    if let Some(p) = printer {
        p.abort();
    }
    tracing::info!("stopping");
    node.shutdown().await;
    match failure {
        None => Ok(()),
        Some(why) => Err(CliError::new(ErrorKind::Failed, why)),
    }
}

/// Prints each listen address (with `/p2p/`) once, as soon as it is bound: operators paste
/// these into bootstrap lists, scripts read the first line.
async fn print_listen_addrs(mut rx: tokio::sync::watch::Receiver<Vec<libp2p::Multiaddr>>) {
    use std::io::Write;
    let mut printed = std::collections::HashSet::new();
    loop {
        let fresh: Vec<_> = rx
            .borrow_and_update()
            .iter()
            .filter(|a| printed.insert((*a).clone()))
            .cloned()
            .collect();
        {
            let mut out = std::io::stdout().lock();
            for addr in fresh {
                let _ = writeln!(out, "{addr}");
            }
            let _ = out.flush();
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests;

//! Node settings from the command line: flags win over `<home>/config.toml`, which wins
//! over the defaults. A bad flag is a usage error (exit 2), a bad file value a plain one.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{usage, CliError, RelayArgs, RunArgs};
use crate::config::{self, FileConfig, Mode, NodeConfig};
use crate::control::ErrorKind;

/// Merges `run` flags with the environment, `<home>/config.toml` and the defaults.
pub fn node_config_for_run(home: PathBuf, args: RunArgs) -> Result<NodeConfig, CliError> {
    let file = FileConfig::load(&home).map_err(|e| CliError::new(ErrorKind::Failed, e))?;
    let mut cfg = NodeConfig::new(Mode::User, home);
    cfg.listen = pick(args.listen, file.listen, "--listen")?.unwrap_or_default();
    if let Some(b) = pick(args.bootstrap, file.bootstrap, "--bootstrap")? {
        cfg.bootstrap = b;
    }
    cfg.relays = pick(args.relay, file.relay, "--relay")?.unwrap_or_default();
    cfg.mdns = !args.no_mdns && file.mdns.unwrap_or(true);
    cfg.public = args.public || file.public.unwrap_or(false);
    if let Some(max) = args.max_attachment.or(file.max_attachment_bytes) {
        cfg.max_attachment = max;
    }
    if let Some(p) = args.accept_connect.or(file.accept_connect) {
        cfg.accept_connect = p.parse().map_err(usage)?;
    }
    cfg.private_ips = args.private_ips || file.private_ips.unwrap_or(false);
    cfg.http = if args.no_http || file.http.as_deref() == Some("off") {
        None
    } else {
        let addr = match args.http.or(file.http) {
            Some(a) => a
                .parse::<SocketAddr>()
                .map_err(|e| usage(format!("invalid --http address {a:?}: {e}")))?,
            None => config::DEFAULT_HTTP,
        };
        if !addr.ip().is_loopback() && !args.http_any_address {
            return Err(usage(format!(
                "--http {addr} is not a loopback address; add --http-any-address to serve other machines"
            )));
        }
        Some(addr)
    };
    Ok(cfg)
}

/// Merges `relay` flags likewise.
pub fn node_config_for_relay(home: PathBuf, args: RelayArgs) -> Result<NodeConfig, CliError> {
    let file = FileConfig::load(&home).map_err(|e| CliError::new(ErrorKind::Failed, e))?;
    let mut cfg = NodeConfig::new(Mode::Relay, home);
    cfg.listen = pick(args.listen, file.listen, "--listen")?.unwrap_or_default();
    if let Some(b) = pick(args.bootstrap, file.bootstrap, "--bootstrap")? {
        cfg.bootstrap = b;
    }
    cfg.mdns = false;
    cfg.public = true;
    cfg.private_ips = args.private_ips || file.private_ips.unwrap_or(false);
    cfg.external = pick(args.external, file.external, "--external")?.unwrap_or_default();
    if let Some(n) = args.max_reservations.or(file.max_reservations) {
        cfg.relay_limits.max_reservations = n;
    }
    if let Some(n) = args.max_circuits.or(file.max_circuits) {
        cfg.relay_limits.max_circuits = n;
    }
    if let Some(n) = args.circuit_burst.or(file.circuit_burst) {
        cfg.relay_limits.circuit_burst = n.max(1);
    }
    if let Some(n) = args.reservation_ip_burst.or(file.reservation_ip_burst) {
        cfg.relay_limits.reservation_ip_burst = n.max(1);
    }
    let metrics = args.metrics.or(file.metrics);
    cfg.metrics = metrics
        .map(|m| {
            m.parse::<SocketAddr>()
                .map_err(|e| usage(format!("invalid --metrics address {m:?}: {e}")))
        })
        .transpose()?;
    cfg.mailbox = if args.no_mailbox || file.mailbox == Some(false) {
        None
    } else {
        let mut m = crate::mailbox::service::MailboxConfig::default();
        const MIB: u64 = 1024 * 1024;
        if let Some(d) = args.mail_retention_days.or(file.mail_retention_days) {
            if !(1..=365).contains(&d) {
                return Err(usage("the mail retention must be 1 to 365 days"));
            }
            m.limits.retention_ms = d as u64 * 24 * 3600 * 1000;
        }
        if let Some(q) = args.mail_quota_recipient.or(file.mail_quota_recipient_mib) {
            m.limits.per_mailbox_bytes = q.max(1).saturating_mul(MIB);
        }
        if let Some(q) = args.mail_quota_sender.or(file.mail_quota_sender_mib) {
            m.sender_bytes_per_day = q.max(1).saturating_mul(MIB);
        }
        if let Some(q) = args.mail_disk_cap.or(file.mail_disk_cap_mib) {
            m.limits.total_bytes = q.max(1).saturating_mul(MIB);
        }
        m.clock_offset_ms = args.mail_clock_offset.unwrap_or(0).saturating_mul(1000);
        Some(m)
    };
    Ok(cfg)
}

/// Flag values win over the file's; returns `None` when neither gave any.
fn pick(
    flag: Vec<String>,
    file: Option<Vec<String>>,
    origin: &str,
) -> Result<Option<Vec<libp2p::Multiaddr>>, CliError> {
    let (values, origin) = if !flag.is_empty() {
        (flag, origin.to_string())
    } else if let Some(f) = file {
        (
            f,
            format!("config.toml ({})", origin.trim_start_matches('-')),
        )
    } else {
        return Ok(None);
    };
    // A bad flag is a usage error; a bad value in the file is a plain error.
    let kind = if origin.starts_with("--") {
        ErrorKind::BadInput
    } else {
        ErrorKind::Failed
    };
    config::parse_addrs(&values, &origin)
        .map(Some)
        .map_err(|e| CliError::new(kind, e))
}

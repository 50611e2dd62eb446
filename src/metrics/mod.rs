//! Prometheus metrics (`--metrics ADDR`): one prometheus-client registry holding libp2p's
//! own families (swarm, bandwidth, kad, gossipsub, identify, ping, relay, DCUtR: fed the
//! event loop's events by [`libp2p::metrics::Metrics`]), ptpchat's event-driven ones
//! ([`Meters`], the store's commit times), what is read at each scrape (peers, DHT
//! records, mailboxes, lookups, the outbox, refused input by kind) and the standard
//! `process_*` families. Encoded by prometheus-client in the OpenMetrics text format and
//! served by the node's HTTP stack on its own address, never the app's (decision 0018).
//!
//! No label carries personal data: no UUID, peer id, address or channel topic. libp2p's
//! families label addresses by protocol stack only (`/ip4/tcp`), and gossipsub's per-topic
//! families are kept to the one public topic (announcements).

mod process;
mod serve;

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

pub use serve::serve;

use crate::counters::{Counter, Counters};
use crate::net::Status;
use crate::shared::Shared;
use crate::store::Store;

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the scrape reads rather than counts, as of the scrape under way.
#[derive(Debug, Default)]
struct Scraped {
    status: Option<Status>,
    /// Messages waiting in the outbox, and when the oldest was accepted (ms); users only.
    outbox: Option<(u64, Option<u64>)>,
}

/// Encodes [`Scraped`] and the refused-input counters.
#[derive(Debug)]
struct Latest {
    scraped: Arc<Shared<Scraped>>,
    counters: Counters,
}

/// A registry ready to serve, and the part of it each scrape fills in.
pub struct Exporter {
    registry: Registry,
    scraped: Arc<Shared<Scraped>>,
    /// The store, for the outbox (users).
    store: Option<Store>,
}

impl Exporter {
    /// Completes `registry` (which holds libp2p's families already) with ours. `user`:
    /// a user node (its outbox and messaging families), else a relay's families.
    pub fn new(mut registry: Registry, counters: &Counters, store: &Store, user: bool) -> Self {
        let scraped = Arc::new(Shared::new(Scraped::default()));
        let ours = registry.sub_registry_with_prefix("ptpchat");
        counters.meters().register(ours, !user);
        ours.register_with_unit(
            "store_commit",
            "How long each commit to the node's database took",
            Unit::Seconds,
            store.commit_times().histogram(),
        );
        ours.register_collector(Box::new(Latest {
            scraped: scraped.clone(),
            counters: counters.clone(),
        }));
        registry.register_collector(Box::new(process::Process));
        Exporter {
            registry,
            scraped,
            store: user.then(|| store.clone()),
        }
    }

    /// Takes in what this scrape read, and encodes everything.
    fn encode(&self, status: Status, outbox: Option<(u64, Option<u64>)>) -> String {
        *self.scraped.lock() = Scraped {
            status: Some(status),
            outbox,
        };
        let mut out = String::new();
        // Writing to a String cannot fail; a collector's error would be a bug of ours.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> std::fmt::Result {
    let m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(m)
}

fn signed(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

impl Collector for Latest {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let scraped = self.scraped.lock();
        if let Some(s) = &scraped.status {
            let peers = "Peers with at least one open connection.";
            gauge(
                &mut e,
                "connected_peers",
                peers,
                None,
                signed(s.connected_peers),
            )?;
            let records = "Records held in the local DHT store.";
            gauge(&mut e, "dht_records", records, None, signed(s.dht_records))?;
            let listen = "Addresses this node listens on.";
            gauge(
                &mut e,
                "listen_addrs",
                listen,
                None,
                signed(s.listen_addrs.len()),
            )?;
            if let Some(m) = &s.mail {
                let items = "Messages held in mailboxes for offline users.";
                gauge(&mut e, "mail_items", items, None, signed(m.items))?;
                let bytes = "Sealed messages held in mailboxes.";
                gauge(&mut e, "mail", bytes, Some(&Unit::Bytes), signed(m.bytes))?;
                let boxes = "Mailboxes holding at least one message.";
                gauge(&mut e, "mailboxes", boxes, None, signed(m.mailboxes))?;
            }
            let l = &s.lookups;
            counter(
                &mut e,
                "lookups",
                "Directory lookups run through the DHT.",
                l.done,
            )?;
            let found = "Of those, the ones the DHT answered with a valid document.";
            counter(&mut e, "lookups_found", found, l.found)?;
            let requests = "DHT requests sent by those lookups.";
            counter(&mut e, "lookup_requests", requests, l.requests)?;
            let retries = "DCUtR rounds after the first, as the side that drives DCUtR.";
            counter(&mut e, "hole_punch_retries", retries, s.punches.retries)?;
        }
        if let Some((depth, oldest)) = scraped.outbox {
            let help = "Our messages not yet delivered (a mailbox copy does not count).";
            gauge(&mut e, "outbox_messages", help, None, signed(depth))?;
            let age = oldest
                .map(|ms| crate::unix_now().saturating_sub(ms / 1000))
                .unwrap_or(0);
            let help = "How long the oldest of them has waited (0 when none waits).";
            gauge(
                &mut e,
                "outbox_oldest_age",
                help,
                Some(&Unit::Seconds),
                signed(age),
            )?;
        }
        drop(scraped);
        let counts = self.counters.snapshot();
        let mut family = e.encode_descriptor(
            "rejected",
            "Bad input refused, by kind (each kind is explained in docs/security.md).",
            None,
            MetricType::Counter,
        )?;
        for kind in Counter::ALL {
            let n = counts.get(kind.as_str()).copied().unwrap_or(0);
            let labels = [("kind", kind.as_str())];
            let m = family.encode_family(&labels)?;
            ConstCounter::new(n).encode(m)?;
        }
        Ok(())
    }
}

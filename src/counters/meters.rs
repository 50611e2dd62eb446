//! ptpchat's own event-driven metrics: handles the services and the event loop bump as
//! things happen. They are prometheus-client metrics (shared counters behind an `Arc`), made
//! with [`super::Counters`] and registered in the node's registry by `crate::metrics`.
//! No label names a person, a peer or an address: each label value is one of a small
//! fixed set.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How one of our direct messages ended (or got as far as a mailbox).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Sent {
    /// The recipient acknowledged it.
    Delivered,
    /// The recipient refused it.
    Failed,
    /// Not delivered within its lifetime.
    Expired,
    /// A mailbox relay receipted it (delivery goes on).
    Stored,
}

/// Which kind of gossip topic a frame is on (never the topic itself: a channel's topic
/// names the channel).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Topic {
    /// Public-channel discovery.
    Announce,
    /// A channel's posts and control frames.
    Channel,
}

/// What became of a gossip frame we received.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Verdict {
    /// Valid: passed on to the mesh.
    Accepted,
    /// Invalid (its sender is penalised).
    Rejected,
    /// Dropped without judgement (over a rate, a full queue, a duplicate).
    Ignored,
}

/// Why a hole punch we started did not end in a direct connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum PunchFailure {
    /// DCUtR reported that every attempt failed.
    Failed,
    /// No direct connection came within the wait.
    Timeout,
    /// The dial over a new circuit could not start.
    DialFailed,
    /// A newer CONNECT to the same peer replaced it, or its asker went away.
    Abandoned,
}

/// What a relay refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Refused {
    Reservation,
    Circuit,
}

/// Why a relay refused, from the relay protocol's status code.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RefusalReason {
    ResourceLimitExceeded,
    PermissionDenied,
    NoReservation,
    ConnectionFailed,
    Malformed,
    Other,
}

impl RefusalReason {
    const ALL: [RefusalReason; 6] = [
        Self::ResourceLimitExceeded,
        Self::PermissionDenied,
        Self::NoReservation,
        Self::ConnectionFailed,
        Self::Malformed,
        Self::Other,
    ];

    pub fn of(status: &libp2p::relay::StatusCode) -> Self {
        use libp2p::relay::StatusCode as S;
        match status {
            S::ResourceLimitExceeded | S::ReservationRefused => Self::ResourceLimitExceeded,
            S::PermissionDenied => Self::PermissionDenied,
            S::NoReservation => Self::NoReservation,
            S::ConnectionFailed => Self::ConnectionFailed,
            S::MalformedMessage | S::UnexpectedMessage => Self::Malformed,
            S::OK => Self::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SentLabels {
    outcome: Sent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    verdict: Verdict,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: Topic,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PunchLabels {
    reason: PunchFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    what: Refused,
    reason: RefusalReason,
}

/// The hole punches started after an accepted CONNECT, and how they ended (`status
/// --json` → `punches`): `failed` by reason, every reason listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PunchStats {
    pub started: u64,
    pub succeeded: u64,
    pub failed: std::collections::BTreeMap<String, u64>,
    /// DCUtR rounds after the first, on the side that drives DCUtR (the target of a
    /// CONNECT): each a fresh synchronisation after a round whose dials all failed.
    #[serde(default)]
    pub retries: u64,
    /// From the accept to the direct connection, for the last punch that succeeded (ms).
    #[serde(default)]
    pub last_direct_ms: Option<u64>,
}

/// How long the punches that succeeded took, from the accept to the direct connection.
#[derive(Clone, Debug)]
struct PunchTimes {
    histogram: Histogram,
    /// The last one, in ms; `u64::MAX` before the first.
    last_ms: Arc<AtomicU64>,
}

impl Default for PunchTimes {
    fn default() -> Self {
        PunchTimes {
            // 10 ms to 41 s.
            histogram: Histogram::new(exponential_buckets(0.01, 2.0, 13)),
            last_ms: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }
}

const PUNCH_FAILURES: [PunchFailure; 4] = [
    PunchFailure::Failed,
    PunchFailure::Timeout,
    PunchFailure::DialFailed,
    PunchFailure::Abandoned,
];

impl PunchFailure {
    /// Its key in `status --json` → `punches.failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::DialFailed => "dial_failed",
            Self::Abandoned => "abandoned",
        }
    }
}

/// The handles (cheap to clone: each shares its value).
#[derive(Clone, Debug, Default)]
pub struct Meters {
    messages_received: Counter,
    messages_sent: Family<SentLabels, Counter>,
    frames_received: Family<FrameLabels, Counter>,
    frames_published: Family<TopicLabels, Counter>,
    punches_started: Counter,
    punches_succeeded: Counter,
    punches_failed: Family<PunchLabels, Counter>,
    punch_times: PunchTimes,
    relay_reservations: Gauge,
    relay_circuits: Gauge,
    relay_refused: Family<RefusalLabels, Counter>,
}

impl Meters {
    /// A direct message from someone else was stored (and so acknowledged).
    pub fn message_received(&self) {
        self.messages_received.inc();
    }

    /// One of ours ended so (or reached a mailbox).
    pub fn message_sent(&self, outcome: Sent) {
        self.messages_sent
            .get_or_create(&SentLabels { outcome })
            .inc();
    }

    /// A gossip frame we received was judged so.
    pub fn frame_received(&self, verdict: Verdict) {
        self.frames_received
            .get_or_create(&FrameLabels { verdict })
            .inc();
    }

    pub fn frame_published(&self, topic: Topic) {
        self.frames_published
            .get_or_create(&TopicLabels { topic })
            .inc();
    }

    pub fn punch_started(&self) {
        self.punches_started.inc();
    }

    /// A punch ended in a direct connection, `took` after the accept.
    pub fn punch_succeeded(&self, took: Duration) {
        self.punches_succeeded.inc();
        self.punch_times.histogram.observe(took.as_secs_f64());
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX - 1);
        self.punch_times.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The hole punches so far.
    pub fn punch_stats(&self) -> PunchStats {
        PunchStats {
            started: self.punches_started.get(),
            succeeded: self.punches_succeeded.get(),
            failed: PUNCH_FAILURES
                .iter()
                .map(|r| {
                    let n = self
                        .punches_failed
                        .get_or_create(&PunchLabels { reason: *r })
                        .get();
                    (r.as_str().to_string(), n)
                })
                .collect(),
            retries: 0,
            last_direct_ms: Some(self.punch_times.last_ms.load(Ordering::Relaxed))
                .filter(|ms| *ms != u64::MAX),
        }
    }

    pub fn punch_failed(&self, reason: PunchFailure) {
        self.punches_failed
            .get_or_create(&PunchLabels { reason })
            .inc();
    }

    /// What a relay holds now: reservations, and circuits open.
    pub fn relay_held(&self, reservations: usize, circuits: usize) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.relay_reservations.set(gauge(reservations));
        self.relay_circuits.set(gauge(circuits));
    }

    pub fn relay_refused(&self, what: Refused, reason: RefusalReason) {
        self.relay_refused
            .get_or_create(&RefusalLabels { what, reason })
            .inc();
    }

    /// Registers every handle under `ptpchat_`; `relay` adds the relay's families. Every
    /// label value starts at 0, so a rate is defined before the first event.
    pub fn register(&self, r: &mut Registry, relay: bool) {
        for what in [Refused::Reservation, Refused::Circuit] {
            for reason in RefusalReason::ALL {
                let _ = self
                    .relay_refused
                    .get_or_create(&RefusalLabels { what, reason });
            }
        }
        for outcome in [Sent::Delivered, Sent::Failed, Sent::Expired, Sent::Stored] {
            let _ = self.messages_sent.get_or_create(&SentLabels { outcome });
        }
        for verdict in [Verdict::Accepted, Verdict::Rejected, Verdict::Ignored] {
            let _ = self.frames_received.get_or_create(&FrameLabels { verdict });
        }
        for topic in [Topic::Announce, Topic::Channel] {
            let _ = self.frames_published.get_or_create(&TopicLabels { topic });
        }
        for reason in PUNCH_FAILURES {
            let _ = self.punches_failed.get_or_create(&PunchLabels { reason });
        }
        if relay {
            r.register(
                "relay_reservations",
                "Reservations this relay holds for peers behind NAT",
                self.relay_reservations.clone(),
            );
            r.register(
                "relay_circuits",
                "Circuits this relay carries now",
                self.relay_circuits.clone(),
            );
            r.register(
                "relay_refused",
                "Reservations and circuits this relay refused, by reason",
                self.relay_refused.clone(),
            );
            return;
        }
        r.register(
            "messages_received",
            "Direct messages from others stored and acknowledged (duplicates not counted)",
            self.messages_received.clone(),
        );
        r.register(
            "messages_sent",
            "Our direct messages as they end (delivered, failed, expired), and as a mailbox receipts one (stored; it counts again when it ends)",
            self.messages_sent.clone(),
        );
        r.register(
            "channel_frames_received",
            "Gossip frames received (channels and announcements), by verdict",
            self.frames_received.clone(),
        );
        r.register(
            "channel_frames_published",
            "Gossip frames we published, by kind of topic",
            self.frames_published.clone(),
        );
        r.register(
            "hole_punches_started",
            "Hole punches started after an accepted CONNECT",
            self.punches_started.clone(),
        );
        r.register(
            "hole_punches_succeeded",
            "Of those, the ones that ended in a direct connection",
            self.punches_succeeded.clone(),
        );
        r.register(
            "hole_punches_failed",
            "Of those, the ones that did not, by reason",
            self.punches_failed.clone(),
        );
        r.register_with_unit(
            "hole_punch_duration",
            "From the accept to the direct connection, for the punches that succeeded",
            Unit::Seconds,
            self.punch_times.histogram.clone(),
        );
    }
}

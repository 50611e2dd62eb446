//! ptpchat: a decentralized chat node on rust-libp2p. The binary (`src/main.rs`) is a thin
//! edge over this library: `node` starts a node, `control` serves and speaks the local
//! control socket, `identity` and `store` hold who we are, `net` owns the swarm.

pub mod cbor;
pub mod channels;
pub mod cli;
pub mod config;
pub mod control;
pub mod counters;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod identity;
pub mod logthrottle;
pub mod mailbox;
pub mod messaging;
pub mod metrics;
pub mod net;
pub mod node;
pub mod ratchet;
pub mod shared;
pub mod store;
pub mod tasks;
pub mod wire;

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

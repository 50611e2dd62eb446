//! Warnings that a remote peer can cause (a bad record, a malformed request, a refused
//! message) are rate-limited per kind, so a stranger cannot make a node write a line per
//! request: [`warn_remote!`](crate::warn_remote) writes at most [`BURST`] lines of a kind,
//! then one per [`EVERY`], each saying how many were held back (those go to `debug`).

use crate::shared::Shared;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines of one kind written at once before the limit applies.
pub const BURST: u32 = 10;
/// One more line of a kind after this long.
pub const EVERY: Duration = Duration::from_secs(6);

struct Kind {
    tokens: f64,
    at: Instant,
    held_back: u64,
}

static KINDS: Shared<Option<HashMap<&'static str, Kind>>> = Shared::new(None);

/// Whether a warning of kind `what` may be written now; `Some(n)` with the number held
/// back since the last one written.
pub fn allow(what: &'static str) -> Option<u64> {
    allow_at(what, Instant::now())
}

fn allow_at(what: &'static str, now: Instant) -> Option<u64> {
    let mut guard = KINDS.lock();
    let kinds = guard.get_or_insert_with(HashMap::new);
    let k = kinds.entry(what).or_insert(Kind {
        tokens: f64::from(BURST),
        at: now,
        held_back: 0,
    });
    let refill = now.saturating_duration_since(k.at).as_secs_f64() / EVERY.as_secs_f64();
    k.tokens = (k.tokens + refill).min(f64::from(BURST));
    k.at = now;
    if k.tokens >= 1.0 {
        k.tokens -= 1.0;
        Some(std::mem::take(&mut k.held_back))
    } else {
        k.held_back += 1;
        None
    }
}

/// `warn!` for a line a remote peer can cause: rate-limited per kind (the first argument, a
/// string literal), the rest at `debug`.
#[macro_export]
macro_rules! warn_remote {
    ($what:literal, $($arg:tt)+) => {
        match $crate::logthrottle::allow($what) {
            Some(held_back) => tracing::warn!(held_back, $($arg)+),
            None => tracing::debug!($($arg)+),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_period_counting_what_was_held_back() {
        let t = Instant::now();
        let what = "test_kind_only_here";
        assert!((0..BURST).all(|_| allow_at(what, t) == Some(0)));
        assert_eq!(allow_at(what, t), None);
        assert_eq!(allow_at(what, t), None);
        assert_eq!(allow_at(what, t + EVERY), Some(2));
        assert_eq!(allow_at(what, t + EVERY), None);
        assert_eq!(allow_at("another_kind_only_here", t), Some(0));
    }
}

//! Per-peer token buckets, so one stranger cannot make us do unbounded work.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// A token bucket per key, with a bound on how many keys are tracked.
pub struct RateLimiter<K> {
    buckets: HashMap<K, (f64, Instant)>,
    burst: f64,
    per_sec: f64,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// Allows bursts of `burst` and `per_sec` on average for each key.
    pub fn new(burst: u32, per_sec: f64, max_keys: usize) -> Self {
        RateLimiter {
            buckets: HashMap::new(),
            burst: burst as f64,
            per_sec,
            max_keys,
        }
    }

    /// Takes a token for `key` if one is left.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        self.allow_n(key, 1.0, now)
    }

    /// Takes `n` tokens for `key` if that many are left (a budget of bytes, say).
    pub fn allow_n(&mut self, key: &K, n: f64, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            // Forget buckets that have refilled completely; they carry no information.
            let (burst, per_sec) = (self.burst, self.per_sec);
            self.buckets
                .retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * per_sec < burst);
            // Still full: forget the key heard from longest ago rather than refuse every
            // newcomer, which would let one who fills the table lock out everyone else.
            if self.buckets.len() >= self.max_keys {
                let oldest = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.buckets.remove(&k);
                }
            }
        }
        let (tokens, at) = self.buckets.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= n {
            *tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let mut rl = RateLimiter::new(3, 1.0, 10);
        let t = Instant::now();
        assert!((0..3).all(|_| rl.allow(&1, t)));
        assert!(!rl.allow(&1, t));
        assert!(rl.allow(&2, t), "other keys are not affected");
        assert!(rl.allow(&1, t + Duration::from_millis(1100)));
    }

    #[test]
    fn tracks_a_bounded_number_of_keys() {
        let mut rl = RateLimiter::new(2, 0.001, 4);
        let t = Instant::now();
        for (i, k) in (0..4).enumerate() {
            assert!(rl.allow(&k, t + Duration::from_millis(i as u64)));
        }
        // Full: a newcomer is let in, and the least recent key (0) is forgotten.
        let later = t + Duration::from_millis(10);
        assert!(rl.allow(&99, later));
        assert!(rl.buckets.len() <= 4);
        assert!(!rl.buckets.contains_key(&0));
        assert!(rl.buckets.contains_key(&3));
    }
}

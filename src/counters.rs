//! Counters of refused and notable input, by kind: the `rejected` map of `status --json`
//! (each key is listed in docs/security.md). Shared by every service and the event loop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared counters of refused input, by kind (see docs/security.md).
#[derive(Clone, Default)]
pub struct Counters(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Counters {
    /// Adds one to `what`.
    pub fn count(&self, what: &'static str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(what).or_default() += 1;
        }
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

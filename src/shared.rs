//! State that a service's tasks share: a state machine (the outbox queues, a relay's
//! challenges and sessions, a channel service's state) behind a mutex, locked only for
//! its synchronous calls. A guard cannot be held across an `.await` in a spawned task (it is
//! not `Send`), so every critical section is a plain function call.
//!
//! One policy for a poisoned lock, everywhere: the state is used on. A poisoned lock means
//! a bug panicked mid-call; what must survive is on disk already (nothing is acknowledged
//! before its commit, and the outbox is reloaded from its table at start), while refusing
//! the state from then on would stop the service silently until a restart. It is logged.

use std::sync::{Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct Shared<T>(Mutex<T>);

impl<T> Shared<T> {
    pub const fn new(value: T) -> Self {
        Shared(Mutex::new(value))
    }

    /// Locks the state (see the module's note on a poisoned lock).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|poisoned| {
            tracing::error!("a task panicked while holding shared state; using it on");
            self.0.clear_poison();
            poisoned.into_inner()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_used_on_and_cleared() {
        let s = std::sync::Arc::new(Shared::new(1));
        let t = s.clone();
        let _ = std::thread::spawn(move || {
            let mut g = t.lock();
            *g = 2;
            panic!("a bug");
        })
        .join();
        assert_eq!(*s.lock(), 2);
        assert!(!s.0.is_poisoned(), "cleared, so it is logged once");
    }
}

//! Background tasks owned by a service and stopped together.

use std::future::Future;
use std::sync::Mutex;

use tokio::task::JoinSet;

/// A set of tasks: finished ones are reaped as new ones start, so the set holds only what
/// still runs; [`Tasks::shutdown`] aborts and awaits them all.
#[derive(Default)]
pub struct Tasks(Mutex<JoinSet<()>>);

impl Tasks {
    /// Starts `f` in the set (a no-op once the lock is poisoned, which only a bug can do).
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        if let Ok(mut set) = self.0.lock() {
            while set.try_join_next().is_some() {}
            set.spawn(f);
        }
    }

    /// Aborts every task and waits until they have all stopped.
    pub async fn shutdown(&self) {
        let set = self.0.lock().map(|mut s| std::mem::take(&mut *s)).ok();
        if let Some(mut set) = set {
            set.shutdown().await;
        }
    }
}

//! Background tasks owned by a service and stopped together, drained rather than cut off.
//!
//! Two kinds: *loops* wait for input (a dispatcher, a scheduler, an outbox worker between
//! tries) and hold nothing that is lost when they stop, so shutdown aborts them first and
//! no new work is dispatched; *work* is a unit someone waits for (an inbound message being
//! committed and acknowledged), so shutdown lets it finish, up to [`DRAIN`], and aborts
//! only what is still running then. Once shutdown begins, new work is refused: the peer
//! gets no answer and tries again later, as after any restart.

use crate::shared::Shared;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;

/// Longest wait for work under way at shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Tasks {
    loops: Shared<JoinSet<()>>,
    work: Shared<JoinSet<()>>,
    closed: AtomicBool,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Work that finished during the drain.
    pub finished: usize,
    /// Work still running after the drain, aborted.
    pub aborted: usize,
}

impl Tasks {
    /// Starts a loop (aborted at shutdown). A no-op once shutdown began.
    pub fn spawn_loop(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.spawn_in(&self.loops, f);
    }

    /// Starts a unit of work (finished at shutdown, within [`DRAIN`]); refused once
    /// shutdown began.
    pub fn spawn_work(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.spawn_in(&self.work, f);
    }

    fn spawn_in(&self, set: &Shared<JoinSet<()>>, f: impl Future<Output = ()> + Send + 'static) {
        let mut set = set.lock();
        // Checked under the set's lock, which shutdown holds while it closes: a task
        // spawned by another thread during the shutdown is refused, never left behind in a
        // set nobody stops.
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        // Reap what has finished, so the set holds only what still runs.
        while set.try_join_next().is_some() {}
        set.spawn(f);
    }

    /// Stops every loop, then waits up to [`DRAIN`] for work under way.
    pub async fn shutdown(&self) -> Drained {
        self.shutdown_within(DRAIN).await
    }

    /// [`Tasks::shutdown`] with a given drain time.
    pub async fn shutdown_within(&self, drain: Duration) -> Drained {
        self.shutdown_by(tokio::time::Instant::now() + drain).await
    }

    /// [`Tasks::shutdown`], the drain ending at `deadline` (one deadline for a whole node).
    pub async fn shutdown_by(&self, deadline: tokio::time::Instant) -> Drained {
        let (mut loops, mut work) = {
            let mut loops = self.loops.lock();
            let mut work = self.work.lock();
            self.closed.store(true, Ordering::Release);
            (std::mem::take(&mut *loops), std::mem::take(&mut *work))
        };
        loops.shutdown().await;
        let mut finished = 0;
        while !work.is_empty() {
            match tokio::time::timeout_at(deadline, work.join_next()).await {
                Ok(Some(_)) => finished += 1,
                Ok(None) | Err(_) => break,
            }
        }
        let aborted = work.len();
        work.shutdown().await;
        if aborted > 0 {
            tracing::warn!(aborted, "work still running at shutdown was cut off");
        }
        Drained { finished, aborted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn shutdown_finishes_work_under_way_and_stops_loops_at_once() {
        let tasks = Tasks::default();
        let done = Arc::new(AtomicUsize::new(0));
        let looped = Arc::new(AtomicBool::new(false));
        for ms in [10, 2_000, 4_000] {
            let done = done.clone();
            tasks.spawn_work(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let l = looped.clone();
        tasks.spawn_loop(async move {
            std::future::pending::<()>().await;
            l.store(true, Ordering::SeqCst);
        });
        let started = tokio::time::Instant::now();
        let drained = tasks.shutdown_within(Duration::from_secs(5)).await;
        assert_eq!(
            drained,
            Drained {
                finished: 3,
                aborted: 0
            }
        );
        assert_eq!(
            done.load(Ordering::SeqCst),
            3,
            "every piece of work completed"
        );
        assert!(!looped.load(Ordering::SeqCst));
        // The drain waits for the work, not for the whole drain time.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_past_the_drain_is_cut_off_and_nothing_new_starts() {
        let tasks = Tasks::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        tasks.spawn_work(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            d.fetch_add(1, Ordering::SeqCst);
        });
        let drained = tasks.shutdown_within(Duration::from_secs(1)).await;
        assert_eq!(
            drained,
            Drained {
                finished: 0,
                aborted: 1
            }
        );
        let d = done.clone();
        tasks.spawn_work(async move {
            d.fetch_add(1, Ordering::SeqCst);
        });
        tasks.spawn_loop(async {});
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(
            done.load(Ordering::SeqCst),
            0,
            "cut off, and the late spawn refused"
        );
    }
}

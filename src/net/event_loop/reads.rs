//! The event loop's reads of the store, each on a blocking thread: a redb read can wait
//! on the disk, and the loop must not (every connection of the node waits behind it). A
//! read's result comes back to the loop as an answer to send ([`Reads::next`]), or goes
//! straight to whoever asked. Reads a peer can cause are bounded; beyond that the peer is
//! told at once, as if nothing were cached.

use tokio::task::JoinSet;
use uuid::Uuid;

use crate::identity::SignedDocument;
use crate::store::mailbox::MailTotals;
use crate::store::Store;
use crate::wire::verbs::Response;

/// Most reads a peer's requests may have running at once.
pub(super) const MAX_PEER_READS: usize = 32;

/// An answer for the request handed over under `token` (see `EventLoop::hand_over`).
pub(super) type Answer = (u64, Response);

pub(super) struct Reads {
    store: Store,
    running: JoinSet<Done>,
    /// How many of `running` a peer caused.
    by_peers: usize,
}

struct Done {
    by_peer: bool,
    answer: Option<Answer>,
}

impl Reads {
    pub fn new(store: Store) -> Self {
        Reads {
            store,
            running: JoinSet::new(),
            by_peers: 0,
        }
    }

    /// Reads the cached document of `uuid`, for a peer's request (or a lookup one caused),
    /// and hands it to `then`, whose answer (if any) goes out through [`Reads::next`].
    /// Returns `then` back, unrun, when too many such reads are under way.
    pub fn cached_document<F>(&mut self, uuid: Uuid, now: u64, then: F) -> Result<(), F>
    where
        F: FnOnce(Option<SignedDocument>) -> Option<Answer> + Send + 'static,
    {
        if self.by_peers >= MAX_PEER_READS {
            return Err(then);
        }
        self.by_peers += 1;
        let store = self.store.clone();
        self.running.spawn_blocking(move || Done {
            by_peer: true,
            answer: then(store.cached_document(&uuid, now).ok().flatten()),
        });
        Ok(())
    }

    /// Reads what the mailboxes hold, for the node's own status (not bounded: only the
    /// node's user asks).
    pub fn mail_totals<F>(&mut self, then: F)
    where
        F: FnOnce(Option<MailTotals>) + Send + 'static,
    {
        let store = self.store.clone();
        self.running.spawn_blocking(move || {
            then(store.mail_totals().ok());
            Done {
                by_peer: false,
                answer: None,
            }
        });
    }

    /// Waits for the next read to finish, and returns the answer it left to send, if any.
    /// Returns at once when no read is running.
    pub async fn next(&mut self) -> Option<Answer> {
        match self.running.join_next().await? {
            Ok(done) => {
                if done.by_peer {
                    self.by_peers = self.by_peers.saturating_sub(1);
                }
                done.answer
            }
            // A read that panicked: its asker hears nothing (a oneshot dropped, a request
            // that times out). Which kind it was is unknown, so recount from what runs.
            Err(_) => {
                self.by_peers = self.by_peers.min(self.running.len());
                None
            }
        }
    }

    /// Whether no read is running.
    pub fn idle(&self) -> bool {
        self.running.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// A peer's reads are bounded: the one past the bound is handed back unrun (its
    /// asker is answered at once), and a finished read makes room again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_cannot_queue_more_than_the_bound_of_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut reads = Reads::new(Store::open(dir.path()).unwrap());
        let hold = Arc::new(Barrier::new(MAX_PEER_READS + 1));
        for token in 0..MAX_PEER_READS as u64 {
            let hold = hold.clone();
            let held = move |doc: Option<SignedDocument>| {
                hold.wait();
                Some((token, Response::NotFound)).filter(|_| doc.is_none())
            };
            assert!(reads.cached_document(Uuid::new_v4(), 0, held).is_ok());
        }
        let refused = reads.cached_document(Uuid::new_v4(), 0, |_| Some((99, Response::NotFound)));
        let then = refused.expect_err("the read past the bound is refused");
        assert_eq!(
            then(None).unwrap().0,
            99,
            "and handed back to answer at once"
        );
        // The node's own status is not a peer's read: it is never refused.
        let (tx, rx) = tokio::sync::oneshot::channel();
        reads.mail_totals(move |t| {
            let _ = tx.send(t);
        });
        assert!(rx.await.unwrap().is_some(), "a fresh store holds no mail");
        let _ = reads.next().await;
        hold.wait();
        let mut tokens = Vec::new();
        while !reads.idle() {
            if let Some((token, _)) = reads.next().await {
                tokens.push(token);
            }
        }
        tokens.sort();
        assert_eq!(tokens, (0..MAX_PEER_READS as u64).collect::<Vec<_>>());
        assert!(reads.cached_document(Uuid::new_v4(), 0, |_| None).is_ok());
    }
}

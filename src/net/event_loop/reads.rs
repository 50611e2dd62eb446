//! The event loop's reads of the store, each on a blocking thread: a redb read can wait
//! on the disk, and the loop must not (every connection of the node waits behind it). A
//! read's result comes back to the loop as an answer to send ([`Reads::next`]), or goes
//! straight to whoever asked. Reads a peer can cause are bounded; beyond that the peer is
//! told at once, as if nothing were cached.

use std::collections::HashMap;

use tokio::task::{Id, JoinSet};
use uuid::Uuid;

use crate::identity::SignedDocument;
use crate::store::mailbox::MailTotals;
use crate::store::Store;
use crate::wire::verbs::Response;

/// Most cached-document reads of one kind ([`ReadFor`]) running at once.
pub(super) const MAX_PEER_READS: usize = 32;

/// Who a cached-document read is for. Each has its own bound, so peers asking a relay for
/// documents cannot starve the node's own lookups of their cache fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadFor {
    /// A peer's GETCERTIFICATE, answered from the cache.
    Peer,
    /// A lookup the network could not answer, falling back on the cache.
    Lookup,
}

/// An answer for the request handed over under `token` (see `EventLoop::hand_over`).
pub(super) type Answer = (u64, Response);

pub(super) struct Reads {
    store: Store,
    running: JoinSet<Option<Answer>>,
    /// The bounded reads among `running`, by task: a read that panics is still counted
    /// out (its id comes back with the error).
    bounded: HashMap<Id, ReadFor>,
}

impl Reads {
    pub fn new(store: Store) -> Self {
        Reads {
            store,
            running: JoinSet::new(),
            bounded: HashMap::new(),
        }
    }

    /// Reads the cached document of `uuid`, `for` a peer or a lookup, and hands it to
    /// `then`, whose answer (if any) goes out through [`Reads::next`]. Returns `then`
    /// back, unrun, when [`MAX_PEER_READS`] reads of that kind are under way.
    pub fn cached_document<F>(
        &mut self,
        uuid: Uuid,
        now: u64,
        r#for: ReadFor,
        then: F,
    ) -> Result<(), F>
    where
        F: FnOnce(Option<SignedDocument>) -> Option<Answer> + Send + 'static,
    {
        if self.running_for(r#for) >= MAX_PEER_READS {
            return Err(then);
        }
        let store = self.store.clone();
        let read = self
            .running
            .spawn_blocking(move || then(store.cached_document(&uuid, now).ok().flatten()));
        self.bounded.insert(read.id(), r#for);
        Ok(())
    }

    /// How many reads for `r#for` are under way.
    fn running_for(&self, r#for: ReadFor) -> usize {
        self.bounded.values().filter(|f| **f == r#for).count()
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
            None
        });
    }

    /// Waits for the next read to finish, and returns the answer it left to send, if any.
    /// Returns at once when no read is running.
    pub async fn next(&mut self) -> Option<Answer> {
        match self.running.join_next_with_id().await? {
            Ok((id, answer)) => {
                self.bounded.remove(&id);
                answer
            }
            // A read that panicked: its asker hears nothing (a oneshot dropped; a peer's
            // request channel the loop prunes once its stream is gone).
            Err(e) => {
                self.bounded.remove(&e.id());
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
    /// asker is answered at once), and a finished read makes room again. Lookups have a
    /// bound of their own, and the node's own status is never refused.
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
            assert!(reads
                .cached_document(Uuid::new_v4(), 0, ReadFor::Peer, held)
                .is_ok());
        }
        let refused = reads.cached_document(Uuid::new_v4(), 0, ReadFor::Peer, |_| {
            Some((99, Response::NotFound))
        });
        let then = refused.expect_err("the read past the bound is refused");
        assert_eq!(
            then(None).unwrap().0,
            99,
            "and handed back to answer at once"
        );
        assert!(
            reads
                .cached_document(Uuid::new_v4(), 0, ReadFor::Lookup, |_| None)
                .is_ok(),
            "peers filling their bound leave the node's lookups theirs"
        );
        assert_eq!(reads.next().await, None, "the lookup's read ends");
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
        assert!(reads
            .cached_document(Uuid::new_v4(), 0, ReadFor::Peer, |_| None)
            .is_ok());
    }

    /// A read that panics gives its place back, even while other reads (a status that
    /// does not count against the bound among them) are under way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_panics_gives_its_place_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut reads = Reads::new(Store::open(dir.path()).unwrap());
        let hold = Arc::new(Barrier::new(MAX_PEER_READS + 1));
        for _ in 1..MAX_PEER_READS {
            let hold = hold.clone();
            let held = move |_: Option<SignedDocument>| {
                hold.wait();
                None
            };
            assert!(reads
                .cached_document(Uuid::new_v4(), 0, ReadFor::Peer, held)
                .is_ok());
        }
        let status_hold = hold.clone();
        reads.mail_totals(move |_| {
            status_hold.wait();
        });
        let panics = |_: Option<SignedDocument>| -> Option<Answer> { panic!("a read that fails") };
        assert!(reads
            .cached_document(Uuid::new_v4(), 0, ReadFor::Peer, panics)
            .is_ok());
        assert_eq!(reads.next().await, None, "the panicked read ends first");
        assert!(
            reads
                .cached_document(Uuid::new_v4(), 0, ReadFor::Peer, |_| None)
                .is_ok(),
            "its place is free again"
        );
        hold.wait();
        while !reads.idle() {
            let _ = reads.next().await;
        }
    }
}

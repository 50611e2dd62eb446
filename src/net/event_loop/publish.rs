//! When our identity document is issued and put into the DHT, as a state machine with no
//! IO: the event loop tells it what happened (reachability changed, a peer connected, the
//! PUT succeeded or failed, the identity keeper issued a document) and asks it what is due.
//! Issuing itself (signing, rotating the encryption key, the durable save) is the identity
//! keeper's ([`crate::net::keeper`]), off the event loop: the loop holds no secret key.

use std::time::{Duration, Instant};

use libp2p::Multiaddr;

use crate::identity::SignedDocument;

/// How often our identity document is re-issued (it is valid for 14 days).
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(12 * 3600);
/// Wait after a change of reachability before publishing, to batch address events.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// First wait before retrying a failed PUT or issue.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between retries of a failed publish.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What to do when the publisher is due.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Put the current document into the DHT again: the last PUT reached no peer.
    Reput,
    /// Ask the identity keeper for a new document naming these addresses.
    Issue(Vec<Multiaddr>),
}

pub struct Publisher {
    /// When to publish next; `None` while the keeper works on an issue.
    due: Option<Instant>,
    /// The keeper works on an issue and reachability changed meanwhile.
    changed_while_issuing: bool,
    /// Current retry delay after a failure.
    backoff: Duration,
    /// The last PUT did not reach any peer; retry when a peer connects.
    failed: bool,
    current: Option<SignedDocument>,
    /// The reach addresses `current` was issued with.
    reach: Vec<Multiaddr>,
    /// When `current` was issued.
    issued_at: Option<Instant>,
}

impl Publisher {
    /// A publisher that first publishes shortly after `now` (listen addresses come first).
    pub fn new(now: Instant) -> Self {
        Publisher {
            due: Some(now + DEBOUNCE),
            changed_while_issuing: false,
            backoff: FIRST_BACKOFF,
            failed: false,
            current: None,
            reach: Vec::new(),
            issued_at: None,
        }
    }

    /// The document we publish, once issued.
    pub fn current(&self) -> Option<&SignedDocument> {
        self.current.as_ref()
    }

    /// When [`Publisher::on_due`] is to be called.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// It is time: re-put the current document after a failed PUT if nothing changed,
    /// else issue a new one for `reach`.
    pub fn on_due(&mut self, reach: Vec<Multiaddr>, now: Instant) -> Step {
        if let (Some(_), Some(at)) = (&self.current, self.issued_at) {
            if self.failed && reach == self.reach && now.duration_since(at) < REPUBLISH_EVERY {
                self.due = Some(now + REPUBLISH_EVERY);
                return Step::Reput;
            }
        }
        self.due = None;
        self.changed_while_issuing = false;
        Step::Issue(reach)
    }

    /// The keeper issued `doc` for `reach`: put it (the caller does), and re-issue it in
    /// [`REPUBLISH_EVERY`] unless something comes first.
    pub fn on_issued(&mut self, doc: SignedDocument, reach: Vec<Multiaddr>, now: Instant) {
        self.current = Some(doc);
        self.reach = reach;
        self.issued_at = Some(now);
        self.due = Some(if self.changed_while_issuing {
            now + DEBOUNCE
        } else {
            now + REPUBLISH_EVERY
        });
        self.changed_while_issuing = false;
    }

    /// The keeper could not issue (the identity could not be saved): try again later.
    pub fn on_issue_failed(&mut self, now: Instant) {
        self.due = Some(now + self.backoff);
        self.changed_while_issuing = false;
    }

    /// Kademlia's answer to our PUT. While the keeper issues a new document (which will be
    /// put anyway) the retry time is left alone, so two issues are never in flight.
    pub fn on_put_result(&mut self, ok: bool, now: Instant) {
        if ok {
            self.backoff = FIRST_BACKOFF;
            self.failed = false;
        } else {
            self.failed = true;
            if self.due.is_some() {
                self.due = Some(now + self.backoff);
            }
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A peer connected: a PUT that reached nobody is worth retrying now.
    pub fn on_connected(&mut self, now: Instant) {
        if self.failed && self.due.is_some() {
            self.failed = false;
            self.due = Some(now + DEBOUNCE);
        }
    }

    /// Our reachability changed: publish soon (batching the events of the next moment).
    pub fn on_reach_changed(&mut self, now: Instant) {
        let soon = now + DEBOUNCE;
        match self.due {
            None => self.changed_while_issuing = true,
            Some(due) if due > soon => self.due = Some(soon),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    const UNIX: u64 = 1_800_000_000;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/198.51.100.7/tcp/{port}").parse().unwrap()
    }

    /// Drives `p` through one due → issue → put.
    fn issue(p: &mut Publisher, id: &mut Identity, reach: Vec<Multiaddr>, now: Instant) {
        assert_eq!(p.on_due(reach.clone(), now), Step::Issue(reach.clone()));
        assert_eq!(p.due(), None, "nothing due while the keeper issues");
        p.on_issued(id.issue_document(&reach, UNIX), reach, now);
    }

    #[test]
    fn the_first_publish_waits_for_addresses_then_the_document_is_reissued_twice_a_day() {
        let t0 = Instant::now();
        let mut id = Identity::generate(UNIX);
        let mut p = Publisher::new(t0);
        assert_eq!(p.due(), Some(t0 + DEBOUNCE));
        issue(&mut p, &mut id, vec![addr(1)], t0 + DEBOUNCE);
        p.on_put_result(true, t0 + DEBOUNCE);
        assert_eq!(p.due(), Some(t0 + DEBOUNCE + REPUBLISH_EVERY));
        assert!(p.current().is_some());
    }

    #[test]
    fn failed_puts_back_off_to_a_minute_and_resend_the_same_document() {
        let t0 = Instant::now();
        let mut id = Identity::generate(UNIX);
        let mut p = Publisher::new(t0);
        issue(&mut p, &mut id, vec![addr(1)], t0);
        let first = p.current().cloned();
        let mut t = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            p.on_put_result(false, t);
            let due = p.due().unwrap();
            waits.push(due.duration_since(t).as_secs());
            t = due;
            // Nothing changed: the same document again, not a new signature each time.
            assert_eq!(p.on_due(vec![addr(1)], t), Step::Reput);
            assert_eq!(p.current(), first.as_ref());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        p.on_put_result(true, t);
        p.on_put_result(false, t);
        assert_eq!(
            p.due(),
            Some(t + FIRST_BACKOFF),
            "a success resets the back-off"
        );
    }

    #[test]
    fn a_failed_put_with_new_addresses_issues_a_new_document() {
        let t0 = Instant::now();
        let mut id = Identity::generate(UNIX);
        let mut p = Publisher::new(t0);
        issue(&mut p, &mut id, vec![addr(1)], t0);
        p.on_put_result(false, t0);
        let t = p.due().unwrap();
        assert_eq!(p.on_due(vec![addr(2)], t), Step::Issue(vec![addr(2)]));
    }

    #[test]
    fn a_peer_connecting_retries_a_failed_put_at_once() {
        let t0 = Instant::now();
        let mut id = Identity::generate(UNIX);
        let mut p = Publisher::new(t0);
        issue(&mut p, &mut id, vec![], t0);
        p.on_put_result(false, t0);
        for _ in 0..5 {
            p.on_put_result(false, t0);
        }
        let t = t0 + Duration::from_secs(3);
        p.on_connected(t);
        assert_eq!(p.due(), Some(t + DEBOUNCE));
        // Once only: a second peer does not keep pushing it back.
        p.on_connected(t + Duration::from_millis(200));
        assert_eq!(p.due(), Some(t + DEBOUNCE));
    }

    #[test]
    fn address_changes_are_batched_and_one_during_an_issue_is_not_lost() {
        let t0 = Instant::now();
        let mut id = Identity::generate(UNIX);
        let mut p = Publisher::new(t0);
        issue(&mut p, &mut id, vec![addr(1)], t0);
        let t1 = t0 + Duration::from_secs(60);
        p.on_reach_changed(t1);
        p.on_reach_changed(t1 + Duration::from_millis(100));
        assert_eq!(
            p.due(),
            Some(t1 + DEBOUNCE),
            "the first change sets the time"
        );
        // A change while the keeper is signing: published again right after.
        let t2 = t1 + DEBOUNCE;
        assert!(matches!(p.on_due(vec![addr(2)], t2), Step::Issue(_)));
        p.on_reach_changed(t2);
        p.on_issued(id.issue_document(&[addr(2)], UNIX), vec![addr(2)], t2);
        assert_eq!(p.due(), Some(t2 + DEBOUNCE));
    }

    #[test]
    fn a_late_put_failure_or_a_connection_during_an_issue_starts_no_second_one() {
        let t0 = Instant::now();
        let mut id = Identity::generate(UNIX);
        let mut p = Publisher::new(t0);
        issue(&mut p, &mut id, vec![addr(1)], t0);
        p.on_reach_changed(t0 + Duration::from_secs(1));
        let t1 = p.due().unwrap();
        assert!(matches!(p.on_due(vec![addr(2)], t1), Step::Issue(_)));
        // The previous PUT's answer comes while the keeper signs, then a peer connects.
        p.on_put_result(false, t1);
        p.on_connected(t1);
        assert_eq!(p.due(), None, "still one issue in flight");
        p.on_issued(id.issue_document(&[addr(2)], UNIX), vec![addr(2)], t1);
        assert_eq!(p.due(), Some(t1 + REPUBLISH_EVERY));
    }

    #[test]
    fn an_identity_that_cannot_be_saved_is_retried() {
        let t0 = Instant::now();
        let mut p = Publisher::new(t0);
        assert!(matches!(p.on_due(vec![], t0), Step::Issue(_)));
        p.on_issue_failed(t0);
        assert_eq!(p.due(), Some(t0 + FIRST_BACKOFF));
        assert!(p.current().is_none());
    }
}

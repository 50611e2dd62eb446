//! The ratchet's promises, tried: forward secrecy, healing after a copy of the state was
//! taken, out-of-order and duplicate delivery, one-time keys used once, and state that
//! survives being stored after every step.

use super::*;

const SECRET_A: [u8; 32] = [7; 32];
const SECRET_B: [u8; 32] = [9; 32];

/// One side of a conversation: its account and its sessions with the other.
struct Side {
    account: Account,
    peer: Peer,
}

impl Side {
    fn new() -> Side {
        Side {
            account: Account::new(),
            peer: Peer::default(),
        }
    }

    /// Sends to `to`, starting a session from its published keys if there is none.
    fn send(&mut self, to: &PublicKeys, text: &str) -> RatchetMessage {
        if self.peer.is_empty() {
            let s = self.account.start(to.identity, to.fallback).unwrap();
            self.peer.add(s);
        }
        self.peer
            .encrypt(self.account.identity_key(), text.as_bytes())
            .unwrap()
            .unwrap()
    }

    /// Starts a new session with `key` (a one-time key handed out) and sends in it.
    fn send_with(&mut self, identity: [u8; 32], key: [u8; 32], text: &str) -> RatchetMessage {
        self.peer.add(self.account.start(identity, key).unwrap());
        self.peer
            .encrypt(self.account.identity_key(), text.as_bytes())
            .unwrap()
            .unwrap()
    }

    /// What this side publishes.
    fn keys(&self) -> PublicKeys {
        self.account.public_keys().unwrap()
    }

    /// Opens and keeps the new state, as the node does once the message is committed.
    fn receive(&mut self, m: &RatchetMessage) -> Result<String, RatchetError> {
        let opened = self.peer.decrypt(&self.account, m)?;
        self.peer = opened.peer;
        if let Some(a) = opened.account {
            self.account = a;
        }
        Ok(String::from_utf8(opened.plaintext.to_vec()).unwrap())
    }

    /// A copy of the whole state, as a thief copying the home would get it.
    fn copy(&self, secret: &[u8; 32]) -> Side {
        Side {
            account: Account::from_stored(&self.account.to_stored(secret), secret).unwrap(),
            peer: Peer::from_stored(&self.peer.to_stored(secret), secret).unwrap(),
        }
    }
}

/// Alice and Bob after one message each way: Alice's messages are normal ones from here.
fn established() -> (Side, Side) {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    bob.receive(&alice.send(&bob.keys(), "start")).unwrap();
    alice.receive(&bob.send(&alice.keys(), "ok")).unwrap();
    (alice, bob)
}

#[test]
fn a_first_message_needs_no_answer_and_later_ones_ratchet() {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    let bob_keys = bob.keys();
    // Bob is offline: Alice's first messages wait at a mailbox, each able to start the
    // session on its own.
    let m1 = alice.send(&bob_keys, "one");
    let m2 = alice.send(&bob_keys, "two");
    assert!(m1.is_first() && m2.is_first());
    assert_eq!(bob.receive(&m2).unwrap(), "two");
    assert_eq!(bob.receive(&m1).unwrap(), "one");
    assert_eq!(
        bob.peer.len(),
        1,
        "both first messages belong to one session"
    );
    let reply = bob.send(&alice.keys(), "hi");
    assert!(!reply.is_first(), "Bob answers inside Alice's session");
    assert_eq!(alice.receive(&reply).unwrap(), "hi");
    let m3 = alice.send(&bob_keys, "three");
    assert!(
        !m3.is_first(),
        "after an answer, Alice's messages are normal ones"
    );
    assert_eq!(bob.receive(&m3).unwrap(), "three");
}

#[test]
fn a_message_key_once_used_opens_nothing_for_a_later_thief() {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    let bob_keys = bob.keys();
    let sent: Vec<RatchetMessage> = (0..3)
        .map(|i| alice.send(&bob_keys, &format!("m{i}")))
        .collect();
    for m in &sent {
        bob.receive(m).unwrap();
    }
    // Bob answers, so Alice's messages become normal ones (not first messages, which the
    // fallback key alone opens: see the next test).
    alice.receive(&bob.send(&alice.keys(), "ok")).unwrap();
    let read: Vec<RatchetMessage> = (0..3)
        .map(|i| alice.send(&bob_keys, &format!("r{i}")))
        .collect();
    for m in &read {
        bob.receive(m).unwrap();
    }
    // The thief copies Bob's whole state after he read them, and has every ciphertext.
    let mut thief = bob.copy(&SECRET_B);
    for m in &read {
        assert!(
            thief.receive(m).is_err(),
            "a used message key must be gone from the state"
        );
        assert!(
            Peer::default().decrypt(&thief.account, m).is_err(),
            "nor may the account alone open it"
        );
    }
    // The copy works: what Alice sends next, it opens.
    let next = alice.send(&bob_keys, "next");
    assert_eq!(thief.receive(&next).unwrap(), "next");
}

#[test]
fn first_messages_open_with_the_fallback_key_until_it_is_deleted() {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    let bob_keys = bob.keys();
    let first = alice.send(&bob_keys, "first");
    bob.receive(&first).unwrap();
    // Read, but a first message: whoever holds Bob's account opens it with a fresh session
    // while the fallback key it used is held (the documented limit).
    let stolen = bob.copy(&SECRET_B).account;
    assert!(Peer::default().decrypt(&stolen, &first).is_ok());
    // One rotation keeps the previous fallback key (first messages still in flight open)...
    bob.account.rotate_fallback_key();
    assert!(Peer::default().decrypt(&bob.account, &first).is_ok());
    // ...and forgetting it deletes it: a thief from then on opens nothing made with it.
    assert!(bob.account.forget_previous_fallback_key());
    let stolen = bob.copy(&SECRET_B).account;
    assert!(Peer::default().decrypt(&stolen, &first).is_err());
    assert_ne!(stolen.public_keys().unwrap().fallback, bob_keys.fallback);
}

#[test]
fn a_message_more_than_40_behind_in_its_chain_is_lost_to_the_ratchet() {
    let (mut alice, mut bob) = established();
    let bob_keys = bob.keys();
    let sent: Vec<RatchetMessage> = (0..50)
        .map(|i| alice.send(&bob_keys, &format!("{i}")))
        .collect();
    assert_eq!(bob.receive(&sent[49]).unwrap(), "49");
    assert_eq!(
        bob.receive(&sent[0]),
        Err(RatchetError::NoSession),
        "its key was dropped"
    );
    assert_eq!(
        bob.receive(&sent[45]).unwrap(),
        "45",
        "recent skipped keys are kept"
    );
}

#[test]
fn after_bob_answers_a_copy_of_his_old_state_reads_nothing_new() {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    let bob_keys = bob.keys();
    let alice_keys = alice.keys();
    bob.receive(&alice.send(&bob_keys, "hello")).unwrap();
    alice.receive(&bob.send(&alice_keys, "answer")).unwrap();
    bob.receive(&alice.send(&bob_keys, "in the chain")).unwrap();
    // Time T: the thief copies Bob's home.
    let mut thief = bob.copy(&SECRET_B);
    let before = alice.send(&bob_keys, "sent after T, before Bob answers");
    // The copy works: a message of the chain it holds opens.
    assert!(thief.receive(&before).is_ok());
    // Bob answers once, Alice reads it; her next messages use a ratchet key the copy
    // never had.
    bob.receive(&before).unwrap();
    alice.receive(&bob.send(&alice_keys, "answer")).unwrap();
    let after = alice.send(&bob_keys, "after the answer");
    assert_eq!(bob.receive(&after).unwrap(), "after the answer");
    assert!(
        thief.receive(&after).is_err(),
        "the copy must not open what Alice sent after Bob's answer"
    );
}

#[test]
fn out_of_order_within_the_skipped_key_bound_and_duplicates_refused() {
    let (mut alice, mut bob) = established();
    let bob_keys = bob.keys();
    let sent: Vec<RatchetMessage> = (0..30)
        .map(|i| alice.send(&bob_keys, &format!("{i}")))
        .collect();
    for (i, m) in sent.iter().enumerate().rev() {
        assert_eq!(bob.receive(m).unwrap(), format!("{i}"));
    }
    // A second copy of any of them no longer opens: the caller recognises it by digest.
    assert_eq!(bob.receive(&sent[5]), Err(RatchetError::NoSession));
    let digests: std::collections::HashSet<[u8; 32]> = sent.iter().map(|m| m.digest()).collect();
    assert_eq!(digests.len(), sent.len(), "digests tell messages apart");
}

#[test]
fn a_one_time_key_starts_one_session_only() {
    let (mut alice, mut carol, mut bob) = (Side::new(), Side::new(), Side::new());
    let otk = bob.account.new_one_time_keys(1)[0];
    let identity = bob.account.identity_key();
    let from_alice = alice.send_with(identity, otk, "hello");
    let from_carol = carol.send_with(identity, otk, "hello");
    // Bob keeps one Peer per contact: each arrives on a fresh one.
    let mut alice_at_bob = Peer::default();
    let opened = alice_at_bob.decrypt(&bob.account, &from_alice).unwrap();
    alice_at_bob = opened.peer;
    bob.account = opened.account.expect("a first message starts a session");
    assert_eq!(alice_at_bob.len(), 1);
    assert_eq!(
        Peer::default().decrypt(&bob.account, &from_carol).err(),
        Some(RatchetError::UnknownOneTimeKey),
        "the one-time key was used by Alice's first message"
    );
}

#[test]
fn state_stored_after_every_step_keeps_working() {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    let (ak, bk) = (alice.keys(), bob.keys());
    for round in 0..5 {
        let m = alice.send(&bk, &format!("a{round}"));
        bob = bob.copy(&SECRET_B);
        assert_eq!(bob.receive(&m).unwrap(), format!("a{round}"));
        let r = bob.send(&ak, &format!("b{round}"));
        alice = alice.copy(&SECRET_A);
        assert_eq!(alice.receive(&r).unwrap(), format!("b{round}"));
    }
    // A pickle under another home's secret does not load.
    let stored = bob.peer.to_stored(&SECRET_B);
    assert!(matches!(
        Peer::from_stored(&stored, &SECRET_A),
        Err(RatchetError::Corrupt(_))
    ));
}

#[test]
fn a_failed_commit_leaves_the_message_openable() {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    let otk = bob.account.new_one_time_keys(1)[0];
    let m = alice.send_with(bob.account.identity_key(), otk, "kept");
    // Opened, but the commit failed: the node drops `opened` and keeps its old state,
    // one-time key included.
    let opened = bob.peer.decrypt(&bob.account, &m).unwrap();
    drop(opened);
    assert_eq!(bob.receive(&m).unwrap(), "kept");
}

#[test]
fn a_message_after_bob_lost_his_sessions_is_no_session_not_garbage() {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    let bk = bob.keys();
    bob.receive(&alice.send(&bk, "one")).unwrap();
    alice.receive(&bob.send(&alice.keys(), "two")).unwrap();
    bob.peer.clear();
    assert_eq!(
        bob.receive(&alice.send(&bk, "three")),
        Err(RatchetError::NoSession)
    );
    // Alice starts over; the new first message opens.
    alice.peer.clear();
    assert_eq!(bob.receive(&alice.send(&bk, "four")).unwrap(), "four");
}

#[test]
fn bad_bytes_are_malformed_not_a_panic() {
    for bytes in [
        &b""[..],
        &[
            0xa3, 0x62, 0x69, 0x6b, 0x40, 0x61, 0x74, 0x01, 0x61, 0x6d, 0x40,
        ][..],
        &[0xff; 64][..],
    ] {
        assert!(matches!(
            RatchetMessage::decode(bytes),
            Err(RatchetError::Malformed(_))
        ));
    }
    let m = RatchetMessage {
        ik: [0; 32],
        t: 7,
        m: vec![1, 2, 3],
    };
    assert!(RatchetMessage::decode(&m.encode()).is_err());
}

#[test]
fn more_than_four_sessions_from_one_contact_keep_the_newest_four() {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    let bk = bob.keys();
    for i in 0..6 {
        // Alice starts over each time (a restored backup, say).
        alice.peer.clear();
        assert_eq!(
            bob.receive(&alice.send(&bk, &format!("s{i}"))).unwrap(),
            format!("s{i}")
        );
    }
    assert_eq!(bob.peer.len(), MAX_SESSIONS_PER_PEER);
    // Bob answers with the session that last opened a message: Alice's newest.
    let reply = bob.send(&alice.keys(), "back");
    assert!(!reply.is_first());
    assert_eq!(alice.receive(&reply).unwrap(), "back");
}

#[test]
fn two_sides_starting_at_once_both_get_through_and_keep_talking() {
    let (mut alice, mut bob) = (Side::new(), Side::new());
    let (ak, bk) = (alice.keys(), bob.keys());
    let from_alice = alice.send(&bk, "hi bob");
    let from_bob = bob.send(&ak, "hi alice");
    assert!(from_alice.is_first() && from_bob.is_first());
    assert_eq!(bob.receive(&from_alice).unwrap(), "hi bob");
    assert_eq!(alice.receive(&from_bob).unwrap(), "hi alice");
    assert_eq!((alice.peer.len(), bob.peer.len()), (2, 2));
    for i in 0..3 {
        assert_eq!(
            bob.receive(&alice.send(&bk, &format!("a{i}"))).unwrap(),
            format!("a{i}")
        );
        assert_eq!(
            alice.receive(&bob.send(&ak, &format!("b{i}"))).unwrap(),
            format!("b{i}")
        );
    }
}

#[test]
fn a_first_message_under_another_identity_key_starts_nothing() {
    let (mut alice, bob, mallory) = (Side::new(), Side::new(), Side::new());
    let mut m = alice.send(&bob.keys(), "hello");
    // Relabelled as if Mallory's: the pre-key message inside names Alice's key.
    m.ik = mallory.account.identity_key();
    assert!(matches!(
        Peer::default().decrypt(&bob.account, &m),
        Err(RatchetError::Malformed(_))
    ));
}

#[test]
fn a_chain_more_than_five_direction_changes_old_is_dropped() {
    let (mut alice, mut bob) = established();
    let (ak, bk) = (alice.keys(), bob.keys());
    let read = alice.send(&bk, "read");
    let withheld = alice.send(&bk, "withheld by a relay");
    bob.receive(&read).unwrap();
    for i in 0..6 {
        alice.receive(&bob.send(&ak, &format!("b{i}"))).unwrap();
        bob.receive(&alice.send(&bk, &format!("a{i}"))).unwrap();
    }
    assert_eq!(bob.receive(&withheld), Err(RatchetError::NoSession));
}

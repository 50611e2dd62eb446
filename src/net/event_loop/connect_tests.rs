//! The CONNECT state machine, driven by events and time.

use super::*;
use crate::identity::Identity;

const UNIX: u64 = 1_800_000_000;

fn addr() -> Multiaddr {
    "/ip4/203.0.113.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
        .parse()
        .unwrap()
}

/// A requester: its peer id and a document naming a circuit address.
fn requester() -> (PeerId, SignedDocument) {
    let mut id = Identity::generate(UNIX);
    (id.peer_id(), id.issue_document(&[addr()], UNIX))
}

fn started(c: &mut Connects, now: Instant) -> (PeerId, oneshot::Receiver<ConnectOutcome>) {
    let peer = PeerId::random();
    let (tx, rx) = oneshot::channel();
    let out = c.start(peer, vec![addr()], tx, None, true, false, now);
    assert_eq!(
        out,
        [Out::Ask {
            peer,
            addrs: vec![addr()]
        }]
    );
    (peer, rx)
}

/// A CONNECT started at `now` and accepted by its target: hole punching under way.
fn accepted(c: &mut Connects, now: Instant) -> (PeerId, oneshot::Receiver<ConnectOutcome>) {
    let (peer, rx) = started(c, now);
    let accept = Ok(Response::Connect {
        answer: ConnectAnswer::Accept,
    });
    assert_eq!(
        c.on_response(peer, &accept, now).len(),
        2,
        "consent and a dial"
    );
    (peer, rx)
}

#[test]
fn a_connect_is_refused_at_once_when_it_cannot_be_asked() {
    let now = Instant::now();
    let mut c = Connects::new(ConnectPolicy::Verified, Meters::default());
    let cases = [
        (Some(addr()), true, vec![addr()], "Direct"),
        (None, false, vec![addr()], "Failed"),
        (None, true, vec![], "Offline"),
    ];
    for (direct, published, addrs, want) in cases {
        let (tx, mut rx) = oneshot::channel();
        let out = c.start(PeerId::random(), addrs, tx, direct, published, false, now);
        assert!(out.is_empty());
        let got = format!("{:?}", rx.try_recv().unwrap());
        assert!(got.starts_with(want), "{got}");
    }
}

#[test]
fn accept_gives_consent_dials_a_new_circuit_and_waits_for_the_direct_connection() {
    let t0 = Instant::now();
    let mut c = Connects::new(ConnectPolicy::Verified, Meters::default());
    let (peer, mut rx) = started(&mut c, t0);
    let accept = Ok(Response::Connect {
        answer: ConnectAnswer::Accept,
    });
    let out = c.on_response(peer, &accept, t0);
    assert_eq!(
        out,
        [
            Out::Consent { peer, give: true },
            Out::Dial {
                peer,
                addrs: vec![addr()]
            }
        ]
    );
    assert!(c.on_response(peer, &accept, t0).is_empty(), "accepted once");
    // A late CONNECT-ANSWER once punching is under way is unexpected.
    assert_eq!(
        c.on_connect_answer(peer, true, t0).unwrap_err(),
        Refused(Nack::Unexpected, Counter::ConnectUnexpectedAnswer)
    );
    let direct: Multiaddr = "/ip4/198.51.100.9/tcp/5000".parse().unwrap();
    c.on_direct_connection(&peer, &direct);
    assert_eq!(rx.try_recv().unwrap(), ConnectOutcome::Direct(direct));
}

#[test]
fn hole_punching_that_runs_out_of_time_or_fails_stays_on_the_relay() {
    let t0 = Instant::now();
    let mut c = Connects::new(ConnectPolicy::Verified, Meters::default());
    let (_, mut slow_rx) = accepted(&mut c, t0);
    let (failed, mut failed_rx) = accepted(&mut c, t0);
    c.on_hole_punch_failed(&failed, false);
    assert_eq!(failed_rx.try_recv().unwrap(), ConnectOutcome::Relayed);
    c.on_tick(t0 + PUNCH_WAIT / 2);
    assert!(slow_rx.try_recv().is_err(), "still waiting");
    c.on_tick(t0 + PUNCH_WAIT);
    assert_eq!(slow_rx.try_recv().unwrap(), ConnectOutcome::Relayed);
}

/// Our dials fail in every round of DCUtR's first attempt: after a back-off a second
/// attempt runs on a fresh circuit; if its rounds fail too, `connect` says `relayed` then,
/// not 30 s later. A direct connection during the second attempt ends it direct.
#[test]
fn a_first_attempt_whose_rounds_all_fail_gets_a_second_then_ends_relayed() {
    let t0 = Instant::now();
    let meters = Meters::default();
    let mut c = Connects::new(ConnectPolicy::Verified, meters.clone());
    let (peer, mut rx) = accepted(&mut c, t0);
    let (lucky, mut lucky_rx) = accepted(&mut c, t0);
    let second = |p: PeerId| Out::Dial {
        peer: p,
        addrs: vec![addr()],
    };
    for p in [peer, lucky] {
        for _ in 0..ROUNDS_PER_ATTEMPT {
            c.on_punch_dial_failed(&p, t0);
        }
    }
    assert!(c.on_tick(t0 + RETRY_BACKOFF / 2).is_empty(), "backing off");
    let mut dials = c.on_tick(t0 + RETRY_BACKOFF);
    dials.sort_by_key(|o| matches!(o, Out::Dial { peer: p, .. } if *p == lucky));
    assert_eq!(dials, [second(peer), second(lucky)]);
    assert!(rx.try_recv().is_err(), "the second attempt is under way");

    c.on_direct_connection(&lucky, &"/ip4/203.0.113.9/tcp/1".parse().unwrap());
    assert!(matches!(lucky_rx.try_recv(), Ok(ConnectOutcome::Direct(_))));
    for _ in 0..ROUNDS_PER_ATTEMPT - 1 {
        c.on_punch_dial_failed(&peer, t0 + RETRY_BACKOFF);
    }
    assert!(
        rx.try_recv().is_err(),
        "a round of the second attempt is left"
    );
    let t1 = t0 + RETRY_BACKOFF;
    c.on_punch_dial_failed(&peer, t1);
    // The far side's dial may still be in its handshakes: a moment's grace.
    assert!(c.on_tick(t1).is_empty());
    assert!(rx.try_recv().is_err(), "grace for the far side's dial");
    assert!(c.on_tick(t1 + GIVE_UP_GRACE).is_empty(), "no third attempt");
    assert_eq!(rx.try_recv().unwrap(), ConnectOutcome::Relayed);
    assert!(c.on_tick(t0 + PUNCH_WAIT).is_empty(), "nothing more to do");
    let stats = meters.punch_stats();
    assert_eq!((stats.started, stats.succeeded), (2, 1), "{stats:?}");
    assert_eq!(stats.failed["failed"], 1, "{stats:?}");
}

/// No second attempt for a CONNECT whose user hung up during the back-off, or whose first
/// attempt failed too close to the 30 s limit for a second to finish.
#[test]
fn no_second_attempt_after_a_hang_up_or_near_the_limit() {
    let t0 = Instant::now();
    let mut c = Connects::new(ConnectPolicy::Verified, Meters::default());
    let (hung, mut hung_rx) = accepted(&mut c, t0);
    let (slow, mut slow_rx) = accepted(&mut c, t0);
    for _ in 0..ROUNDS_PER_ATTEMPT {
        c.on_punch_dial_failed(&hung, t0);
        c.on_punch_dial_failed(&slow, t0 + PUNCH_WAIT - RETRY_BACKOFF);
    }
    c.on_hang_up(&hung);
    assert!(matches!(hung_rx.try_recv(), Ok(ConnectOutcome::Failed(_))));
    assert!(
        c.on_tick(t0 + RETRY_BACKOFF).is_empty(),
        "no dial for a hang-up"
    );
    let out = c.on_tick(t0 + PUNCH_WAIT - RETRY_BACKOFF + GIVE_UP_GRACE);
    assert!(out.is_empty(), "no second attempt that late: {out:?}");
    assert_eq!(slow_rx.try_recv().unwrap(), ConnectOutcome::Relayed);
}

/// The first attempt's circuit cannot be dialled: the target is offline. The second's
/// cannot: the relay carried the first a moment ago, so the CONNECT ends `relayed`.
#[test]
fn a_second_attempt_whose_circuit_fails_ends_relayed_not_offline() {
    let t0 = Instant::now();
    let mut c = Connects::new(ConnectPolicy::Verified, Meters::default());
    let (first, mut first_rx) = accepted(&mut c, t0);
    let (second, mut second_rx) = accepted(&mut c, t0);
    c.dial_failed(&first, "no route".into());
    assert!(matches!(
        first_rx.try_recv(),
        Ok(ConnectOutcome::Offline(_))
    ));
    for _ in 0..ROUNDS_PER_ATTEMPT {
        c.on_punch_dial_failed(&second, t0);
    }
    assert_eq!(c.on_tick(t0 + RETRY_BACKOFF).len(), 1, "the second attempt");
    c.dial_failed(&second, "no route".into());
    assert_eq!(second_rx.try_recv().unwrap(), ConnectOutcome::Relayed);
}

/// Dials that fail before the accept, or for a CONNECT we did not start, change nothing.
#[test]
fn failed_dials_count_only_while_punching() {
    let t0 = Instant::now();
    let mut c = Connects::new(ConnectPolicy::Verified, Meters::default());
    let (peer, mut rx) = started(&mut c, t0);
    for _ in 0..2 * ROUNDS_PER_ATTEMPT {
        c.on_punch_dial_failed(&peer, t0);
        c.on_punch_dial_failed(&PeerId::random(), t0);
    }
    assert!(c.on_tick(t0 + RETRY_BACKOFF).is_empty());
    assert!(rx.try_recv().is_err(), "still asking");
}

#[test]
fn a_failed_request_is_sent_once_more_then_reported_offline() {
    let t0 = Instant::now();
    let mut c = Connects::new(ConnectPolicy::Verified, Meters::default());
    let (peer, mut rx) = started(&mut c, t0);
    let err = Err(crate::net::NetError::Closed);
    assert_eq!(
        c.on_response(peer, &err, t0),
        [Out::Ask {
            peer,
            addrs: vec![addr()]
        }]
    );
    assert!(c.on_response(peer, &err, t0).is_empty());
    assert_eq!(
        rx.try_recv().unwrap(),
        ConnectOutcome::Offline("Connection was closed before a response was received".into())
    );
    // A NACK or a deny is a refusal.
    let (peer, mut rx) = started(&mut c, t0);
    c.on_response(peer, &Ok(Nack::Busy.into()), t0);
    assert_eq!(rx.try_recv().unwrap(), ConnectOutcome::Denied);
    // A newer connect to the same peer supersedes the old one.
    let (tx, _rx2) = oneshot::channel();
    let (peer, mut old) = started(&mut c, t0);
    c.start(peer, vec![addr()], tx, None, true, false, t0);
    assert!(matches!(old.try_recv().unwrap(), ConnectOutcome::Failed(_)));
}

#[test]
fn policy_decides_and_only_verified_contacts_pass_the_default() {
    let now = Instant::now();
    let (peer, doc) = requester();
    let answer = |policy, contact: Option<(String, bool)>| {
        let mut c = Connects::new(policy, Meters::default());
        c.on_request(peer, &doc, contact, now).unwrap()
    };
    let verified = Some(("bob".to_string(), true));
    let unverified = Some(("bob".to_string(), false));
    let deny = (
        ConnectAnswer::Deny,
        vec![Out::Consent { peer, give: false }],
    );
    let accept = (
        ConnectAnswer::Accept,
        vec![Out::Consent { peer, give: true }],
    );
    assert_eq!(answer(ConnectPolicy::Verified, verified.clone()), accept);
    assert_eq!(answer(ConnectPolicy::Verified, unverified.clone()), deny);
    assert_eq!(answer(ConnectPolicy::Verified, None), deny);
    assert_eq!(answer(ConnectPolicy::Contacts, unverified), accept);
    assert_eq!(answer(ConnectPolicy::Contacts, None), deny);
    assert_eq!(answer(ConnectPolicy::All, None), accept);
    assert_eq!(answer(ConnectPolicy::None, verified), deny);
}

#[test]
fn a_request_that_is_not_the_senders_own_is_refused() {
    let (peer, doc) = requester();
    assert!(check_request(peer, doc.bytes(), UNIX).is_ok());
    assert_eq!(
        check_request(PeerId::random(), doc.bytes(), UNIX).unwrap_err(),
        Refused(Nack::PeerMismatch, Counter::ConnectPeerMismatch)
    );
    assert_eq!(
        check_request(peer, b"junk", UNIX).unwrap_err(),
        Refused(Nack::BadDocument, Counter::ConnectBadDocument)
    );
}

#[test]
fn asked_requests_wait_for_the_user_bounded_one_per_peer_and_expire() {
    let t0 = Instant::now();
    let mut c = Connects::new(ConnectPolicy::Ask, Meters::default());
    let (peer, doc) = requester();
    let (answer, out) = c.on_request(peer, &doc, None, t0).unwrap();
    assert_eq!((answer, out), (ConnectAnswer::Pending, vec![]));
    // Asking again replaces the queued request, it does not add one.
    c.on_request(peer, &doc, None, t0).unwrap();
    let queued = c.pending(t0);
    assert_eq!(queued.len(), 1);
    let id = queued[0].request_id;
    // Deny, then a later request accepted: answers go over automatic / chosen routes.
    let out = c.answer(id, false, t0).unwrap();
    assert!(matches!(
        &out[1],
        Out::Answer {
            accept: false,
            why: DialReason::Automatic,
            ..
        }
    ));
    assert!(c.answer(id, true, t0).is_err(), "answered once");
    c.on_request(peer, &doc, None, t0).unwrap();
    let id = c.pending(t0)[0].request_id;
    let out = c.answer(id, true, t0).unwrap();
    assert_eq!(out[0], Out::Consent { peer, give: true });
    assert!(
        matches!(&out[1], Out::Answer { accept: true, why: DialReason::Chosen, reach, .. } if reach == &vec![addr()])
    );
    // The queue is bounded, and requests expire.
    for _ in 0..MAX_PENDING_REQUESTS {
        let (p, d) = requester();
        c.on_request(p, &d, None, t0).unwrap();
    }
    let (p, d) = requester();
    assert_eq!(
        c.on_request(p, &d, None, t0).unwrap_err(),
        Refused(Nack::Busy, Counter::ConnectQueueFull)
    );
    assert!(c.pending(t0 + PENDING_LIFETIME).is_empty());
    assert!(c.on_request(p, &d, None, t0 + PENDING_LIFETIME).is_ok());
}

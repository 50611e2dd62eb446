//! The catch-up machine, driven by events and a clock moved by hand: no network, no sleeps.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use uuid::Uuid;

use super::*;

const CH: Uuid = Uuid::from_u128(0x77);
const SINCE: u64 = 1_000;

fn cursor(n: u8) -> Vec<u8> {
    vec![n; HISTORY_CURSOR_BYTES]
}

fn page(more: bool, next: Vec<u8>) -> Answer {
    Answer::Page {
        posts: 2,
        more,
        next,
    }
}

/// The one request in `out`: its id, peer and cursor.
fn ask(out: &[Out]) -> (AskId, PeerId, Vec<u8>) {
    match out {
        [Out::Ask {
            id,
            peer,
            channel,
            since,
            after,
        }] => {
            assert_eq!((*channel, *since), (CH, SINCE));
            (*id, *peer, after.clone())
        }
        other => panic!("expected one request, got {other:?}"),
    }
}

fn done(out: &[Out]) -> (Option<PeerId>, usize) {
    match out {
        [Out::Done {
            channel,
            peer,
            posts,
        }] => {
            assert_eq!(*channel, CH);
            (*peer, *posts)
        }
        other => panic!("expected the end, got {other:?}"),
    }
}

/// A catch-up begun from `first`, with `others` on the topic; its first request.
fn begun(m: &mut CatchUps, first: PeerId, others: &[(PeerId, f64)], t: Instant) -> AskId {
    assert!(m.subscribed(CH, t));
    let out = m.begin(CH, first, others.to_vec(), SINCE, t);
    let (id, peer, after) = ask(&out);
    assert_eq!((peer, after), (first, Vec::new()));
    id
}

#[test]
fn a_catch_up_starts_a_little_before_the_newest_post_and_never_too_far_back() {
    let now = 10 * frame::MAX_AGE_MS;
    let newest = now - 60_000;
    assert_eq!(since(Some(newest), now), newest - CATCH_UP_OVERLAP_MS);
    // Nothing held, or something very old: as far back as a frame is still fresh.
    assert_eq!(since(None, now), now - frame::MAX_AGE_MS);
    assert_eq!(since(Some(1), now), now - frame::MAX_AGE_MS);
    // A post stamped ahead of our clock counts as now.
    assert_eq!(since(Some(now + 50_000), now), now - CATCH_UP_OVERLAP_MS);
}

#[test]
fn one_catch_up_per_channel_every_thirty_seconds() {
    let mut m = CatchUps::default();
    let t = Instant::now();
    let id = begun(&mut m, PeerId::random(), &[], t);
    assert!(!m.subscribed(CH, t + Duration::from_secs(1)), "one running");
    assert!(
        m.subscribed(Uuid::from_u128(1), t),
        "another channel is its own"
    );
    let out = m.answered(CH, id, page(false, cursor(1)), t + Duration::from_secs(2));
    assert_eq!(done(&out).1, 2);
    assert!(!m.running(&CH));
    assert!(!m.subscribed(CH, t + CATCH_UP_EVERY - Duration::from_millis(1)));
    assert!(m.subscribed(CH, t + CATCH_UP_EVERY));
}

#[test]
fn pages_are_read_by_cursor_until_the_peer_has_no_more() {
    let mut m = CatchUps::default();
    let t = Instant::now();
    let first = PeerId::random();
    let id = begun(&mut m, first, &[], t);
    let out = m.answered(CH, id, page(true, cursor(1)), t);
    let (id, peer, after) = ask(&out);
    assert_eq!((peer, after), (first, cursor(1)));
    let out = m.answered(CH, id, page(true, cursor(2)), t);
    let (id, _, after) = ask(&out);
    assert_eq!(after, cursor(2));
    let out = m.answered(CH, id, page(false, cursor(3)), t);
    assert_eq!(done(&out), (Some(first), 6));
}

#[test]
fn a_cursor_that_does_not_move_forward_ends_the_paging() {
    let t = Instant::now();
    for bad in [cursor(1), vec![9; 3], Vec::new()] {
        let mut m = CatchUps::default();
        let id = begun(&mut m, PeerId::random(), &[], t);
        let out = m.answered(CH, id, page(true, cursor(1)), t);
        let (id, _, _) = ask(&out);
        // Again the same cursor, a malformed one, or none, with `more` set.
        let out = m.answered(CH, id, page(true, bad), t);
        assert_eq!(done(&out).1, 4);
    }
}

#[test]
fn at_most_sixteen_pages_are_read() {
    let mut m = CatchUps::default();
    let t = Instant::now();
    let mut id = begun(&mut m, PeerId::random(), &[], t);
    for n in 1..CATCH_UP_PAGES as u8 {
        let out = m.answered(CH, id, page(true, cursor(n)), t);
        id = ask(&out).0;
    }
    let out = m.answered(CH, id, page(true, cursor(200)), t);
    assert_eq!(done(&out).1, 2 * CATCH_UP_PAGES);
}

#[test]
fn a_peer_with_nothing_hands_over_to_the_best_scored_others_up_to_three() {
    let mut m = CatchUps::default();
    let t = Instant::now();
    let [first, low, high, mid, fourth] = [(); 5].map(|_| PeerId::random());
    let others = [
        (low, -1.0),
        (high, 5.0),
        (first, 9.0),
        (mid, 2.0),
        (fourth, 0.0),
    ];
    let id = begun(&mut m, first, &others, t);
    let out = m.answered(CH, id, Answer::Nothing, t);
    let (id, peer, after) = ask(&out);
    assert_eq!(
        (peer, after),
        (high, Vec::new()),
        "the newcomer is not asked twice"
    );
    let out = m.answered(CH, id, Answer::Nothing, t);
    let (id, peer, _) = ask(&out);
    assert_eq!(peer, mid);
    let out = m.answered(CH, id, Answer::Nothing, t);
    assert_eq!(done(&out), (None, 0), "three asked in all");
}

#[test]
fn a_peer_that_gave_pages_ends_the_catch_up_whatever_came_after() {
    let mut m = CatchUps::default();
    let t = Instant::now();
    let (first, other) = (PeerId::random(), PeerId::random());
    let id = begun(&mut m, first, &[(other, 1.0)], t);
    let out = m.answered(CH, id, page(true, cursor(1)), t);
    let (id, _, _) = ask(&out);
    let out = m.answered(CH, id, Answer::Nothing, t);
    assert_eq!(done(&out), (Some(first), 2));
}

#[test]
fn a_peer_that_does_not_know_us_yet_is_asked_once_more_a_second_later() {
    let mut m = CatchUps::default();
    let t = Instant::now();
    let (first, other) = (PeerId::random(), PeerId::random());
    let id = begun(&mut m, first, &[(other, 1.0)], t);
    assert!(m.answered(CH, id, Answer::NotYet, t).is_empty());
    assert_eq!(m.next_timer(), Some(t + CATCH_UP_RETRY));
    assert!(m
        .on_timer(t + CATCH_UP_RETRY - Duration::from_millis(1))
        .is_empty());
    let out = m.on_timer(t + CATCH_UP_RETRY);
    let (id, peer, after) = ask(&out);
    assert_eq!((peer, after), (first, Vec::new()));
    // Not a third time: on to the next peer, which gets its own retry.
    let out = m.answered(CH, id, Answer::NotYet, t + CATCH_UP_RETRY);
    let (id, peer, _) = ask(&out);
    assert_eq!(peer, other);
    assert!(m
        .answered(CH, id, Answer::NotYet, t + CATCH_UP_RETRY)
        .is_empty());
}

#[test]
fn a_request_never_answered_times_out_and_its_late_answer_is_ignored() {
    let mut m = CatchUps::default();
    let t = Instant::now();
    let (first, other) = (PeerId::random(), PeerId::random());
    let late = begun(&mut m, first, &[(other, 1.0)], t);
    assert_eq!(m.next_timer(), Some(t + ASK_TIMEOUT));
    let out = m.on_timer(t + ASK_TIMEOUT);
    let (id, peer, _) = ask(&out);
    assert_eq!(peer, other);
    assert!(m.answered(CH, late, page(false, cursor(1)), t).is_empty());
    let out = m.answered(CH, id, page(false, cursor(1)), t + ASK_TIMEOUT);
    assert_eq!(done(&out), (Some(other), 2));
    assert_eq!(m.next_timer(), None);
}

#[test]
fn answers_for_no_running_catch_up_change_nothing() {
    let mut m = CatchUps::default();
    let t = Instant::now();
    assert!(m.answered(CH, 7, page(false, cursor(1)), t).is_empty());
    assert!(m.on_timer(t + Duration::from_secs(3600)).is_empty());
    assert_eq!(m.next_timer(), None);
}

#[test]
fn catch_ups_of_two_channels_run_side_by_side() {
    let mut m = CatchUps::default();
    let t = Instant::now();
    let other_ch = Uuid::from_u128(0x88);
    let a = begun(&mut m, PeerId::random(), &[], t);
    assert!(m.subscribed(other_ch, t));
    let out = m.begin(other_ch, PeerId::random(), Vec::new(), SINCE, t);
    let Some(Out::Ask { id: b, .. }) = out.first().cloned() else {
        panic!("expected a request");
    };
    assert_ne!(a, b);
    // An answer is taken only under its own channel and request.
    assert!(m.answered(other_ch, a, Answer::Nothing, t).is_empty());
    assert!(m.running(&other_ch));
    assert_eq!(done(&m.answered(CH, a, Answer::Nothing, t)), (None, 0));
    assert!(m.running(&other_ch));
}

#[test]
fn a_member_that_answers_slowly_page_after_page_holds_the_channel_back_a_minute_at_most() {
    let mut m = CatchUps::default();
    let t0 = Instant::now();
    let mut id = begun(&mut m, PeerId::random(), &[], t0);
    // Just inside the request time-out every time, with a cursor that moves forward.
    let mut t = t0;
    let mut n = 1;
    while m.running(&CH) {
        t += ASK_TIMEOUT - Duration::from_secs(1);
        let due = m.next_timer().expect("a running catch-up has a timer");
        assert!(due <= t0 + RUN_LIMIT, "never past the run's limit");
        let mut out = m.on_timer(t);
        if out.is_empty() {
            out = m.answered(CH, id, page(true, cursor(n)), t);
        }
        match out.first() {
            Some(Out::Ask { id: next, .. }) => id = *next,
            Some(Out::Done { .. }) => break,
            None => panic!("no progress at {:?}", t - t0),
        }
        n += 1;
    }
    assert!(!m.running(&CH));
    assert!(
        t - t0 <= RUN_LIMIT + ASK_TIMEOUT,
        "ended after {:?}",
        t - t0
    );
    // The next subscription begins a new catch-up.
    assert!(m.subscribed(CH, t + CATCH_UP_EVERY));
}

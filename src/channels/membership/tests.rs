//! The membership and epoch rules, driven by rows and events alone: no network, no store.

use serde_bytes::ByteArray;
use uuid::Uuid;

use super::*;
use crate::error::ErrorKind;
use crate::store::channels::{decide_grant, EPOCH_WINDOW};
use crate::store::GrantOutcome;

const ALICE: Uuid = Uuid::from_u128(1);
const BOB: Uuid = Uuid::from_u128(2);
const CAROL: Uuid = Uuid::from_u128(3);
const MALLORY: Uuid = Uuid::from_u128(9);
const CH: Uuid = Uuid::from_u128(0x77);
const NOW: u64 = 1_700_000_000_000;

fn b(u: Uuid) -> ByteArray<16> {
    ByteArray::new(*u.as_bytes())
}

/// A private channel Alice created and invited Bob, Carol and Mallory to.
fn channel() -> ChannelRow {
    let row = created("ops", ALICE, Some([1; 32]), NOW);
    let (row, _) = invite(&CH, &row, ALICE, BOB).unwrap();
    let (row, _) = invite(&CH, &row, ALICE, CAROL).unwrap();
    let (row, _) = invite(&CH, &row, ALICE, MALLORY).unwrap();
    row
}

fn listed(row: &ChannelRow) -> Vec<Uuid> {
    row.members.iter().map(|m| Uuid::from_bytes(**m)).collect()
}

/// The grant a holder would send after removing `removed` from `row`.
fn rotation_without(row: &ChannelRow, by: Uuid, removed: Uuid, key: u8) -> Rotation {
    let without = remove(row, by, removed).unwrap();
    rotate(&CH, without, by, [key; 32]).unwrap()
}

#[test]
fn a_created_private_channel_starts_at_epoch_one_with_its_creator_only() {
    let row = created("ops", ALICE, Some([1; 32]), NOW);
    assert!(row.private && row.joined);
    assert_eq!((row.epoch, listed(&row)), (1, vec![ALICE]));
    assert_eq!(row.key_from, Some(b(ALICE)));
    let public = created("lobby", ALICE, None, NOW);
    assert!(!public.private);
    assert_eq!((public.epoch, public.key, public.key_from), (0, None, None));
}

#[test]
fn an_invitation_lists_the_invitee_once_and_hands_it_the_current_key() {
    let row = created("ops", ALICE, Some([1; 32]), NOW);
    let (row, grant) = invite(&CH, &row, ALICE, BOB).unwrap();
    let (again, _) = invite(&CH, &row, ALICE, BOB).unwrap();
    assert_eq!(listed(&again), vec![ALICE, BOB]);
    assert_eq!((grant.epoch, grant.key), (1, [1; 32]));
    assert_eq!(grant.channel, *CH.as_bytes());
    assert_eq!(grant.members, row.members);
}

#[test]
fn nobody_invites_into_a_public_channel_or_invites_themselves() {
    let public = created("lobby", ALICE, None, NOW);
    let e = invite(&CH, &public, ALICE, BOB).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed);
    assert_eq!(e.message, "lobby is public: anyone can join it by name");
    let e = invite(&CH, &channel(), ALICE, ALICE).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::BadInput, "that is your own UUID")
    );
}

#[test]
fn a_removal_drops_the_member_and_the_next_epoch_goes_to_everyone_else() {
    let r = rotation_without(&channel(), BOB, MALLORY, 2);
    assert_eq!(r.row.epoch, 2);
    assert_eq!(listed(&r.row), vec![ALICE, BOB, CAROL]);
    assert_eq!(r.row.prev_members, channel().members);
    assert_eq!(r.row.key, Some(ByteArray::new([2; 32])));
    assert_eq!(r.row.key_from, Some(b(BOB)));
    assert_eq!(r.to, vec![ALICE, CAROL], "not the remover, not the removed");
    assert_eq!((r.grant.epoch, r.grant.key), (2, [2; 32]));
    assert_eq!(r.grant.members, r.row.members);
}

#[test]
fn nobody_removes_themselves_a_stranger_or_anyone_from_a_public_channel() {
    let e = remove(&channel(), BOB, BOB).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::BadInput, "to remove yourself, leave the channel")
    );
    let stranger = Uuid::from_u128(42);
    let e = remove(&channel(), BOB, stranger).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed);
    assert_eq!(
        e.message,
        format!("{stranger} does not hold the key of ops")
    );
    let e = remove(&created("lobby", ALICE, None, NOW), ALICE, BOB).unwrap_err();
    assert_eq!(
        e.message,
        "lobby is public: anyone can read it, so nobody can be removed"
    );
}

#[test]
fn every_member_can_remove_every_other_one() {
    // No member can make itself unremovable: not the creator, not the last one invited.
    for by in [ALICE, BOB, CAROL, MALLORY] {
        for who in [ALICE, BOB, CAROL, MALLORY] {
            if by != who {
                let row = remove(&channel(), by, who).unwrap();
                assert!(!listed(&row).contains(&who));
                assert_eq!(listed(&row).len(), 3);
            }
        }
    }
}

#[test]
fn the_last_epoch_cannot_be_rotated_past() {
    let mut row = channel();
    row.epoch = u32::MAX;
    let e = rotate(&CH, row, ALICE, [2; 32]).err().unwrap();
    assert_eq!(
        e.message,
        "ops has used every key epoch; create a new channel"
    );
}

#[test]
fn a_leave_drops_the_leaver_and_exactly_one_remaining_member_rotates() {
    let row = after_leave(&channel(), &CAROL).unwrap();
    assert_eq!(listed(&row), vec![ALICE, BOB, MALLORY]);
    assert_eq!(row.epoch, 1, "the keeper moves the epoch, not the leave");
    let keepers: Vec<Uuid> = [ALICE, BOB, CAROL, MALLORY]
        .into_iter()
        .filter(|me| keeps_key(&CH, &row, &CAROL, *me))
        .collect();
    assert_eq!(keepers.len(), 1);
    assert_ne!(keepers[0], CAROL, "the leaver never keeps the key");
}

#[test]
fn a_leaver_cannot_keep_the_key_whoever_it_is() {
    // Whoever leaves, and at whatever epoch, the keeper is one of those who stay.
    for epoch in 1..50 {
        for left in [ALICE, BOB, CAROL, MALLORY] {
            let mut row = channel();
            row.epoch = epoch;
            let row = after_leave(&row, &left).unwrap();
            let k = keeper(&CH, epoch, &left, &row.members).map(Uuid::from_bytes);
            assert!(k.is_some_and(|k| k != left && listed(&row).contains(&k)));
        }
    }
}

#[test]
fn no_member_keeps_the_key_at_every_event() {
    // A UUID can be ground to hash lowest for one event, not for all of them: over many
    // epochs every member gets to rotate, so none alone decides whether a leaver reads on.
    let members = channel().members;
    let mut won = std::collections::HashSet::new();
    for epoch in 1..200 {
        won.insert(keeper(&CH, epoch, &Uuid::from_u128(50), &members));
    }
    assert_eq!(won.len(), members.len());
}

#[test]
fn a_leave_changes_nothing_twice_or_outside_a_private_channel_we_are_in() {
    let once = after_leave(&channel(), &CAROL).unwrap();
    assert_eq!(
        after_leave(&once, &CAROL),
        None,
        "a replayed or second LEAVE"
    );
    let mut not_joined = channel();
    not_joined.joined = false;
    assert_eq!(after_leave(&not_joined, &CAROL), None);
    let public = created("lobby", ALICE, None, NOW);
    assert_eq!(after_leave(&public, &ALICE), None);
    let removed = remove(&channel(), ALICE, CAROL).unwrap();
    assert_eq!(after_leave(&removed, &CAROL), None, "removed, then left");
}

#[test]
fn leaving_forgets_a_private_channels_key_and_lists() {
    let row = left(rotation_without(&channel(), ALICE, MALLORY, 2).row);
    assert!(!row.joined);
    assert_eq!(
        (row.key, row.members.len(), row.prev_members.len()),
        (None, 0, 0)
    );
    assert!(
        may_join(&row).is_err(),
        "only a new invitation brings us back"
    );
    assert_eq!(
        may_join(&row).unwrap_err().message,
        "ops is private: you need a new invitation"
    );
    let public = left(created("lobby", ALICE, None, NOW));
    assert!(!public.joined && may_join(&public).is_ok());
}

#[test]
fn joining_a_private_channel_lists_us_once() {
    let mut row = channel();
    row.joined = false;
    let me = Uuid::from_u128(60);
    let joined = with_me(&with_me(&row, me), me);
    assert_eq!(listed(&joined).iter().filter(|u| **u == me).count(), 1);
    let public = created("lobby", ALICE, None, NOW);
    assert_eq!(with_me(&public, me).members, public.members);
}

#[test]
fn a_frame_under_the_current_key_lists_its_sender_within_the_grant_bound() {
    let row = created("ops", ALICE, Some([1; 32]), NOW);
    let row = note_key_holder(&row, BOB).unwrap();
    assert_eq!(listed(&row), vec![ALICE, BOB]);
    assert_eq!(note_key_holder(&row, BOB), None, "already listed");
    assert_eq!(
        note_key_holder(&created("lobby", ALICE, None, NOW), BOB),
        None
    );
    let mut full = row.clone();
    full.members = (0..frame::MAX_GRANT_MEMBERS as u128)
        .map(|i| b(Uuid::from_u128(1000 + i)))
        .collect();
    assert_eq!(
        note_key_holder(&full, BOB),
        None,
        "a grant could not carry it"
    );
}

#[test]
fn members_counted_are_those_heard_and_those_listed() {
    let mut heard = Heard::default();
    heard.hear(CH, ALICE, NOW);
    heard.hear(CH, Uuid::from_u128(70), NOW);
    heard.hear(Uuid::from_u128(1), BOB, NOW);
    let row = channel();
    assert_eq!(member_count(&heard, &CH, &row), 5);
    let mut gone = row.clone();
    gone.joined = false;
    assert_eq!(
        member_count(&heard, &CH, &gone),
        2,
        "a row we left lists nobody"
    );
    heard.forget(&CH, &ALICE);
    assert_eq!(member_count(&heard, &CH, &gone), 1);
    heard.forget_channel(&CH);
    assert_eq!(member_count(&heard, &CH, &gone), 0);
}

#[test]
fn members_heard_are_bounded_and_forgotten_when_quiet() {
    let mut heard = Heard::default();
    for i in 0..MAX_MEMBERS_HEARD as u128 + 10 {
        heard.hear(CH, Uuid::from_u128(i), NOW);
    }
    assert_eq!(heard.of(&CH).count(), MAX_MEMBERS_HEARD);
    // One already listed is still refreshed when the list is full.
    heard.hear(CH, Uuid::from_u128(0), NOW + 5_000);
    heard.forget_quiet(NOW + 6_000, 2_000);
    assert_eq!(heard.of(&CH).collect::<Vec<_>>(), vec![Uuid::from_u128(0)]);
}

// ---- grants (the store's rule, decided without a store) ----

fn grant_from(rotation: &Rotation) -> KeyGrant {
    rotation.grant.clone()
}

/// Bob's row of the channel, joined at epoch 1.
fn bobs() -> ChannelRow {
    let mut row = channel();
    row.key_from = Some(b(ALICE));
    row
}

#[test]
fn a_newer_epoch_from_a_key_holder_is_taken() {
    let g = grant_from(&rotation_without(&channel(), ALICE, MALLORY, 2));
    let (row, outcome) = decide_grant(Some(bobs()), ALICE.as_bytes(), &g, NOW, 0).unwrap();
    assert_eq!(outcome, GrantOutcome::Rotated);
    assert_eq!((row.epoch, row.key), (2, Some(ByteArray::new([2; 32]))));
    assert_eq!(row.key_from, Some(b(ALICE)));
    assert_eq!(listed(&row), vec![ALICE, BOB, CAROL]);
    assert_eq!(row.prev_members, bobs().members);
}

#[test]
fn a_stale_epoch_grant_is_ignored() {
    let mut held = bobs();
    held.epoch = 5;
    let mut g = grant_of(&CH, &channel());
    g.epoch = 4;
    g.key = [4; 32];
    let why = decide_grant(Some(held.clone()), ALICE.as_bytes(), &g, NOW, 0).unwrap_err();
    assert_eq!(why, "not newer than the key held");
    // The key we hold, sent again, changes nothing either.
    let g = grant_of(&CH, &held);
    let why = decide_grant(Some(held), ALICE.as_bytes(), &g, NOW, 0).unwrap_err();
    assert_eq!(why, "not newer than the key held");
}

#[test]
fn a_grant_too_far_ahead_is_ignored() {
    let mut g = grant_of(&CH, &channel());
    g.epoch = 1 + EPOCH_WINDOW + 1;
    g.key = [8; 32];
    let why = decide_grant(Some(bobs()), ALICE.as_bytes(), &g, NOW, 0).unwrap_err();
    assert_eq!(why, "too far ahead of the key held");
    g.epoch = 1 + EPOCH_WINDOW;
    assert!(decide_grant(Some(bobs()), ALICE.as_bytes(), &g, NOW, 0).is_ok());
}

#[test]
fn a_grant_from_a_non_member_is_ignored() {
    let stranger = Uuid::from_u128(42);
    let mut g = grant_of(&CH, &channel());
    g.epoch = 2;
    g.key = [6; 32];
    g.members.push(b(stranger));
    let why = decide_grant(Some(bobs()), stranger.as_bytes(), &g, NOW, 0).unwrap_err();
    assert_eq!(why, "sender holds no key of this channel");
}

#[test]
fn a_removed_member_cannot_re_add_itself() {
    // Alice removed Mallory (epoch 2); Bob took that key. Mallory, who still holds epoch 1,
    // sends a grant of its own listing itself.
    let alices = rotation_without(&channel(), ALICE, MALLORY, 2);
    let (held, _) = decide_grant(Some(bobs()), ALICE.as_bytes(), &alices.grant, NOW, 0).unwrap();
    let mut forged = grant_of(&CH, &channel());
    forged.key = [9; 32];
    // A newer epoch: Mallory is not a holder of the current one.
    forged.epoch = 3;
    let why = decide_grant(Some(held.clone()), MALLORY.as_bytes(), &forged, NOW, 0).unwrap_err();
    assert_eq!(why, "sender holds no key of this channel");
    // The same epoch, listing everyone: Mallory held the epoch before, but the key held
    // removes more members, so it stands.
    forged.epoch = 2;
    let why = decide_grant(Some(held.clone()), MALLORY.as_bytes(), &forged, NOW, 0).unwrap_err();
    assert_eq!(why, "the key held removes more members");
    // The same epoch, removing Carol in turn: its removal may merge in, but it is not
    // listed again, and the merged key needs Alice's, which Mallory lacks.
    forged.members.retain(|m| **m != *CAROL.as_bytes());
    let (merged, outcome) =
        decide_grant(Some(held.clone()), MALLORY.as_bytes(), &forged, NOW, 0).unwrap();
    assert_eq!(outcome, GrantOutcome::Rotated);
    assert_eq!(listed(&merged), vec![ALICE, BOB]);
    assert_eq!(merged.epoch, 3);
    assert_ne!(merged.key, Some(ByteArray::new([9; 32])));
    assert_ne!(merged.key, held.key);
    // Nor does frame traffic put it back: it cannot seal under the new key, and a LEAVE of
    // its own is one of someone no longer listed.
    assert_eq!(after_leave(&held, &MALLORY), None);
}

#[test]
fn at_one_epoch_a_removal_wins_and_two_removals_merge() {
    // Alice removed Mallory and Carol removed Bob, both moving to epoch 2; Alice hears Carol's.
    let alices = rotation_without(&channel(), ALICE, MALLORY, 2);
    let carols = rotation_without(&channel(), CAROL, BOB, 3);
    let (merged, outcome) = decide_grant(
        Some(alices.row.clone()),
        CAROL.as_bytes(),
        &carols.grant,
        NOW,
        0,
    )
    .unwrap();
    assert_eq!(outcome, GrantOutcome::Rotated);
    assert_eq!(listed(&merged), vec![ALICE, CAROL]);
    assert_eq!(merged.epoch, 3);
    assert_eq!(
        merged.key_from, None,
        "derived from both keys, sent by nobody"
    );
    // A grant at that epoch that removes nobody Alice lists loses to hers.
    let mut keeps_all = grant_of(&CH, &channel());
    keeps_all.epoch = 2;
    keeps_all.key = [0; 32];
    let why = decide_grant(Some(alices.row), CAROL.as_bytes(), &keeps_all, NOW, 0).unwrap_err();
    assert_eq!(why, "the key held removes more members");
}

#[test]
fn invitations_are_bounded_and_only_their_holders_replace_them() {
    let g = grant_of(&CH, &channel());
    let (row, outcome) = decide_grant(None, ALICE.as_bytes(), &g, NOW, 0).unwrap();
    assert_eq!(outcome, GrantOutcome::Invited);
    assert!(!row.joined && row.private);
    let full = crate::store::channels::MAX_PENDING_INVITES;
    assert_eq!(
        decide_grant(None, ALICE.as_bytes(), &g, NOW, full).unwrap_err(),
        "too many pending invitations"
    );
    let stranger = Uuid::from_u128(42);
    assert_eq!(
        decide_grant(Some(row.clone()), stranger.as_bytes(), &g, NOW, 0).unwrap_err(),
        "already invited by other members"
    );
    let mut older = g.clone();
    older.epoch = 0;
    assert_eq!(
        decide_grant(Some(row), BOB.as_bytes(), &older, NOW, 0).unwrap_err(),
        "older than the pending invitation"
    );
    let public = created("lobby", ALICE, None, NOW);
    assert_eq!(
        decide_grant(Some(public), ALICE.as_bytes(), &g, NOW, 0).unwrap_err(),
        "public channel"
    );
}

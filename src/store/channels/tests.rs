//! The channel tables and the grant rule, on a real store.

use super::*;

const ZERO: [u8; 16] = [0; 16];
const ALICE: [u8; 16] = [1; 16];
const ME: [u8; 16] = [5; 16];
const MALLORY: [u8; 16] = [9; 16];
const CH: [u8; 16] = [7; 16];

fn grant(epoch: u32, key: u8, members: &[[u8; 16]]) -> KeyGrant {
    KeyGrant {
        v: 1,
        channel: CH,
        name: "ops".into(),
        epoch,
        key: [key; 32],
        members: members.iter().map(|m| ByteArray::new(*m)).collect(),
    }
}

fn apply(store: &Store, from: [u8; 16], g: &KeyGrant) -> GrantOutcome {
    let tx = store.db.begin_write().unwrap();
    let outcome = apply_grant(&tx, &from, g, 0).unwrap();
    tx.commit().unwrap();
    outcome
}

fn held(store: &Store) -> (bool, u32, u8) {
    let (_, c) = store.channels().unwrap().into_iter().next().unwrap();
    (c.joined, c.epoch, c.key.map_or(0, |k| k[0]))
}

/// Pages of kept posts follow the cursor, so posts sharing one timestamp (a sender
/// chooses its own) cannot stall paging; other channels' posts never appear; pruning
/// goes by the post's time.
#[test]
fn kept_posts_page_by_cursor_and_are_pruned_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tx = store.db.begin_write().unwrap();
    for i in 0..5u8 {
        keep_channel_frame(&tx, &CH, 1_000, &[i; 16], &[i]).unwrap();
    }
    keep_channel_frame(&tx, &CH, 2_000, &[9; 16], &[9]).unwrap();
    keep_channel_frame(&tx, &ALICE, 1_500, &[7; 16], &[7]).unwrap();
    tx.commit().unwrap();

    let mut got = Vec::new();
    let mut after: Option<[u8; 24]> = None;
    loop {
        let (page, more) = store
            .channel_frames(&CH, 1_000, after.as_ref(), 2, 1 << 20)
            .unwrap();
        assert!(page.len() <= 2);
        got.extend(page.iter().map(|(_, f)| f[0]));
        after = page.last().map(|(c, _)| *c);
        if !more {
            break;
        }
    }
    assert_eq!(got, [0, 1, 2, 3, 4, 9], "each post once, oldest first");
    assert_eq!(store.newest_channel_frame(&CH).unwrap(), Some(2_000));
    let (late, _) = store.channel_frames(&CH, 1_001, None, 10, 1 << 20).unwrap();
    assert_eq!(late.len(), 1);
    // A cursor older than `since` does not reach back past it.
    let old_cursor = [[0u8; 8], [0; 8], [0; 8]].concat().try_into().unwrap();
    let (late, _) = store
        .channel_frames(&CH, 1_001, Some(&old_cursor), 10, 1 << 20)
        .unwrap();
    assert_eq!(late.len(), 1);
    // A byte budget smaller than one frame gives an empty page that says more follow.
    assert_eq!(
        store.channel_frames(&CH, 0, None, 10, 0).unwrap(),
        (vec![], true)
    );

    store.prune_channel_seen(1_600).unwrap();
    let (left, _) = store.channel_frames(&CH, 0, None, 10, 1 << 20).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(store.newest_channel_frame(&ALICE).unwrap(), None);
}

#[test]
fn invitations_and_rotations_are_taken_only_from_key_holders() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    // An invitation is kept; a stranger cannot swap its key, one of its holders can.
    assert_eq!(
        apply(&store, ALICE, &grant(1, 1, &[ALICE, ME])),
        GrantOutcome::Invited
    );
    assert!(matches!(
        apply(&store, MALLORY, &grant(5, 9, &[MALLORY, ME])),
        GrantOutcome::Ignored(_)
    ));
    assert_eq!(held(&store), (false, 1, 1));
    assert_eq!(
        apply(&store, ALICE, &grant(2, 2, &[ZERO, ALICE, ME])),
        GrantOutcome::Invited
    );
    assert_eq!(held(&store), (false, 2, 2));

    // Joined: only a holder moves the key, and only forward.
    let id = Uuid::from_bytes(CH);
    let (_, mut row) = store.channels().unwrap().into_iter().next().unwrap();
    row.joined = true;
    store.put_channel(&id, &row).unwrap();
    assert!(matches!(
        apply(&store, MALLORY, &grant(3, 9, &[MALLORY, ME])),
        GrantOutcome::Ignored(_)
    ));
    assert!(matches!(
        apply(&store, ALICE, &grant(1, 4, &[ALICE, ME])),
        GrantOutcome::Ignored(_)
    ));
    assert_eq!(
        apply(&store, ALICE, &grant(3, 3, &[ZERO, ALICE, ME])),
        GrantOutcome::Rotated
    );
    assert_eq!(held(&store), (true, 3, 3));

    // Two holders rotating to the same epoch at once, with the same members: the lower
    // key wins, in whichever order the two grants arrive.
    assert_eq!(
        apply(&store, ZERO, &grant(3, 2, &[ZERO, ALICE, ME])),
        GrantOutcome::Rotated
    );
    assert!(matches!(
        apply(&store, ALICE, &grant(3, 7, &[ZERO, ALICE, ME])),
        GrantOutcome::Ignored(_)
    ));
    assert_eq!(held(&store), (true, 3, 2));

    // Beyond the window, a holder cannot move the channel (nor wrap its epoch).
    assert!(matches!(
        apply(
            &store,
            ALICE,
            &grant(3 + EPOCH_WINDOW + 1, 8, &[ZERO, ALICE, ME])
        ),
        GrantOutcome::Ignored(_)
    ));
    assert!(matches!(
        apply(&store, ALICE, &grant(u32::MAX, 8, &[ZERO, ALICE, ME])),
        GrantOutcome::Ignored(_)
    ));
    assert_eq!(held(&store), (true, 3, 2));
    assert_eq!(
        apply(
            &store,
            ALICE,
            &grant(3 + EPOCH_WINDOW, 8, &[ZERO, ALICE, ME])
        ),
        GrantOutcome::Rotated
    );
    assert_eq!(held(&store), (true, 3 + EPOCH_WINDOW, 8));

    // The public channel case: a grant never turns a public channel private.
    row.private = false;
    row.key = None;
    store.put_channel(&id, &row).unwrap();
    assert!(matches!(
        apply(&store, ZERO, &grant(9, 9, &[ZERO, ME])),
        GrantOutcome::Ignored(_)
    ));
}

/// A removal made at the same moment as another rotation stands, whatever the UUIDs and
/// keys: the member who is removed cannot win a tie it can grind.
#[test]
fn a_removal_wins_a_tie_and_two_removals_merge() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = Uuid::from_bytes(CH);
    let join = |g: KeyGrant| {
        let tx = store.db.begin_write().unwrap();
        tx.open_table(CHANNELS).unwrap().remove(&CH).unwrap();
        tx.commit().unwrap();
        apply(&store, ALICE, &g);
        let (_, mut row) = store.channels().unwrap().into_iter().next().unwrap();
        row.joined = true;
        store.put_channel(&id, &row).unwrap();
    };
    let members = |s: &Store| {
        let (_, c) = s.channels().unwrap().into_iter().next().unwrap();
        let mut m: Vec<[u8; 16]> = c.members.iter().map(|m| **m).collect();
        m.sort();
        m
    };
    // MALLORY has the lowest UUID and the lowest key; ALICE removes it at epoch 2 while
    // MALLORY rotates to epoch 2 keeping itself. Either order: ALICE's key.
    for order in [true, false] {
        join(grant(1, 1, &[ZERO, ALICE, ME, MALLORY]));
        let removal = grant(2, 0xee, &[ZERO, ALICE, ME]);
        let stay = grant(2, 0x00, &[ZERO, ALICE, ME, MALLORY]);
        if order {
            apply(&store, ALICE, &removal);
            apply(&store, MALLORY, &stay);
        } else {
            apply(&store, MALLORY, &stay);
            apply(&store, ALICE, &removal);
        }
        assert_eq!(held(&store), (true, 2, 0xee), "order {order}");
        assert!(!members(&store).contains(&MALLORY));
    }
    // Two holders each removing someone else at once: both removals stand, and the
    // merged key is the same in either order and is neither grant's key.
    let mut keys = Vec::new();
    for order in [true, false] {
        join(grant(1, 1, &[ZERO, ALICE, ME, MALLORY]));
        let a = grant(2, 0x11, &[ALICE, ME, MALLORY]);
        let z = grant(2, 0x22, &[ZERO, ALICE, ME]);
        if order {
            apply(&store, ALICE, &a);
            assert_eq!(apply(&store, ZERO, &z), GrantOutcome::Rotated);
        } else {
            apply(&store, ZERO, &z);
            assert_eq!(apply(&store, ALICE, &a), GrantOutcome::Rotated);
        }
        let (_, c) = store.channels().unwrap().into_iter().next().unwrap();
        assert_eq!(c.epoch, 3);
        assert_eq!(members(&store), [ALICE, ME]);
        keys.push(*c.key.unwrap());
    }
    assert_eq!(keys[0], keys[1]);
    assert!(keys[0] != [0x11; 32] && keys[0] != [0x22; 32]);

    // Removed at epoch 2, MALLORY answers with its own grant of epoch 2 that leaves itself
    // (and ZERO) out, so it looks like a further removal: it must not hand us a key it
    // knows. Its removals merge in; the key stays out of its reach.
    join(grant(1, 1, &[ZERO, ALICE, ME, MALLORY]));
    apply(&store, ALICE, &grant(2, 0xee, &[ZERO, ALICE, ME]));
    assert_eq!(
        apply(&store, MALLORY, &grant(2, 0x01, &[ALICE, ME])),
        GrantOutcome::Rotated
    );
    let (_, c) = store.channels().unwrap().into_iter().next().unwrap();
    assert_ne!(
        *c.key.unwrap(),
        [0x01; 32],
        "the removed member's key was taken"
    );
    assert_ne!(*c.key.unwrap(), [0xee; 32]);
    assert!(!members(&store).contains(&MALLORY));
}

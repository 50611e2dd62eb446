//! The receiving transfer state ([`Transfers`]) driven by events and time, against a
//! simulated disk and the sending side ([`Upload`]): no sockets, no sleeps, no files.

use std::collections::HashSet;

use libp2p::PeerId;

use super::transfer_state::{next_step, ChunkPlan, Need, Next, Step, Upload};
use super::transfers::{
    Admit, Claim, OnChunk, Transfers, MAX_STRANGER_TRANSFERS, STRANGER_IDLE_LIMIT,
};
use crate::wire::envelope::{AttachmentMeta, Envelope, CHUNK_BYTES};

const C: u64 = CHUNK_BYTES as u64;
const IDLE: u64 = 60_000;

fn envelope(from: u8, msg: u8, sizes: &[u64]) -> Envelope {
    Envelope {
        v: 1,
        msg_id: [msg; 16],
        from: [from; 16],
        to: [2; 16],
        ts: 1,
        kind: "text".into(),
        body: String::new(),
        attachments: sizes
            .iter()
            .map(|&size| AttachmentMeta {
                name: "a".into(),
                mime: "text/plain".into(),
                size,
                sha256: [0; 32],
                key: [9; 32],
            })
            .collect(),
    }
}

fn key_of(env: &Envelope) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(&env.from);
    k[16..24].copy_from_slice(&env.ts.to_be_bytes());
    k[24..].copy_from_slice(&env.msg_id);
    k
}

/// What `attachments.rs` does on disk, with every hash matching: the next chunk wanted.
fn probe(disk: &mut Vec<Option<u64>>, env: &Envelope, mut verified: u32) -> (Option<Need>, u32) {
    let sizes: Vec<u64> = env.attachments.iter().map(|a| a.size).collect();
    disk.resize(sizes.len(), None);
    loop {
        match next_step(&sizes, disk, verified) {
            Step::Ask { need, .. } => {
                disk[need.attachment as usize] = Some(need.offset);
                return (Some(need), verified);
            }
            Step::Verify { attachment, create } => {
                if create {
                    disk[attachment as usize] = Some(0);
                }
                verified = attachment + 1;
            }
            Step::Mismatch(i) => panic!("attachment {i} mismatched"),
            Step::Complete => return (None, verified),
        }
    }
}

/// A transfer admitted and resumed by a MESSAGE from `peer`: its first need.
fn start(t: &mut Transfers, peer: PeerId, env: &Envelope, disk: &mut Vec<Option<u64>>) -> Need {
    let key = key_of(env);
    let verified = t.begin_resume(peer, &key, env).expect("not in use");
    let (need, verified) = probe(disk, env, verified);
    let need = need.expect("something to send");
    assert!(t.end_resume(peer, &key, env, need, verified, true));
    need
}

fn claim(t: &mut Transfers, peer: PeerId, env: &Envelope, need: Need, now: u64) -> Box<Claim> {
    match t.on_chunk(peer, env.msg_id, need.attachment, need.offset, now) {
        OnChunk::Claimed(c) => c,
        other => panic!("{need:?} not claimed: {other:?}"),
    }
}

#[test]
fn both_sides_carry_several_attachments_through_in_order() {
    // An empty one, one of a few bytes, one an exact multiple of a chunk, one just over.
    let env = envelope(1, 1, &[0, 5, 2 * C, C + 7]);
    let key = key_of(&env);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let no_one = HashSet::new();
    assert_eq!(
        t.take_slot(&key, Vec::new(), &no_one, &no_one_keys(), 0),
        Admit::Take
    );
    let mut disk = Vec::new();
    let first = start(&mut t, peer, &env, &mut disk);
    let upload = Upload::new(&env.attachments, env.attachments.len());
    let mut next = upload.plan(first);
    let mut sent = Vec::new();
    let done = loop {
        let plan = match next {
            Next::Send(p) => p,
            other => break other,
        };
        sent.push((plan.attachment, plan.offset, plan.len));
        let need = Need {
            attachment: plan.attachment,
            offset: plan.offset,
        };
        let c = claim(&mut t, peer, &env, need, 10);
        assert_eq!((c.want, c.index), (plan.len, plan.index));
        assert!(c.fits(plan.len));
        let len = &mut disk[plan.attachment as usize];
        *len = Some(len.unwrap_or(0) + plan.len as u64);
        next = match probe(&mut disk, &env, c.verified) {
            (Some(need), verified) => {
                t.on_written(peer, env.msg_id, &key, need, verified);
                upload.on_answer(Some(need.into()))
            }
            (None, _) => {
                t.forget(&key);
                upload.on_answer(Some(crate::wire::verbs::Outcome::Ack))
            }
        };
    };
    assert_eq!(done, Next::Done(super::outbox::Delivery::Delivered));
    let want = vec![
        (1, 0, 5),
        (2, 0, CHUNK_BYTES),
        (2, C, CHUNK_BYTES),
        (3, 0, CHUNK_BYTES),
        (3, C, 7),
    ];
    assert_eq!(sent, want);
    assert_eq!(disk, vec![Some(0), Some(5), Some(2 * C), Some(C + 7)]);
}

fn no_one_keys() -> HashSet<[u8; 40]> {
    HashSet::new()
}

#[test]
fn a_duplicate_or_out_of_order_chunk_is_told_the_current_need() {
    let env = envelope(1, 1, &[3 * C, 5]);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let mut disk = vec![Some(C)];
    let need = start(&mut t, peer, &env, &mut disk);
    assert_eq!(
        need,
        Need {
            attachment: 0,
            offset: C
        }
    );
    for (a, o) in [(0, 0), (0, 2 * C), (1, 0), (0, C + 1), (u32::MAX, C)] {
        assert_eq!(
            t.on_chunk(peer, env.msg_id, a, o, 0),
            OnChunk::Ask(need),
            "({a}, {o})"
        );
    }
    claim(&mut t, peer, &env, need, 0);
}

#[test]
fn a_concurrent_chunk_or_message_waits_while_a_chunk_is_written() {
    let env = envelope(1, 1, &[3 * C]);
    let key = key_of(&env);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let mut disk = Vec::new();
    let need = start(&mut t, peer, &env, &mut disk);
    claim(&mut t, peer, &env, need, 0);
    assert_eq!(t.on_chunk(peer, env.msg_id, 0, 0, 0), OnChunk::Busy);
    // A MESSAGE again would look at (and cut) the file being appended to.
    assert_eq!(t.begin_resume(peer, &key, &env), None);
    assert_eq!(t.begin_resume(PeerId::random(), &key, &env), None);
    let next = Need {
        attachment: 0,
        offset: C,
    };
    t.on_written(peer, env.msg_id, &key, next, 0);
    assert_eq!(t.on_chunk(peer, env.msg_id, 0, 0, 0), OnChunk::Ask(next));
    claim(&mut t, peer, &env, next, 0);
}

/// A chunk's task that dies between claim and write leaves the transfer to be started
/// again, not busy for good; a release after the write changes nothing.
#[test]
fn a_claim_whose_task_died_is_let_go() {
    let env = envelope(1, 1, &[3 * C]);
    let key = key_of(&env);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let mut disk = Vec::new();
    let need = start(&mut t, peer, &env, &mut disk);
    claim(&mut t, peer, &env, need, 0);
    t.release(PeerId::random(), env.msg_id, &key);
    assert_eq!(
        t.on_chunk(peer, env.msg_id, 0, 0, 0),
        OnChunk::Busy,
        "not another's to release"
    );
    t.release(peer, env.msg_id, &key);
    assert_eq!(
        t.on_chunk(peer, env.msg_id, 0, 0, 0),
        OnChunk::Unknown,
        "the sender starts again with MESSAGE"
    );
    let need = start(&mut t, peer, &env, &mut disk);
    claim(&mut t, peer, &env, need, 0);
    let next = Need {
        attachment: 0,
        offset: C,
    };
    t.on_written(peer, env.msg_id, &key, next, 0);
    t.release(peer, env.msg_id, &key);
    assert_eq!(t.on_chunk(peer, env.msg_id, 0, 0, 0), OnChunk::Ask(next));
}

#[test]
fn no_chunk_is_written_while_a_message_looks_at_the_files() {
    let env = envelope(1, 1, &[3 * C]);
    let key = key_of(&env);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let mut disk = Vec::new();
    let need = start(&mut t, peer, &env, &mut disk);
    assert_eq!(t.begin_resume(peer, &key, &env), Some(0));
    assert_eq!(t.on_chunk(peer, env.msg_id, 0, 0, 0), OnChunk::Busy);
    assert_eq!(t.begin_resume(peer, &key, &env), None);
    assert!(t.end_resume(peer, &key, &env, need, 0, true));
    claim(&mut t, peer, &env, need, 0);
}

#[test]
fn a_chunk_of_the_wrong_length_does_not_fit() {
    let env = envelope(1, 1, &[C + 7]);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let mut disk = vec![Some(C)];
    let need = start(&mut t, peer, &env, &mut disk);
    let c = claim(&mut t, peer, &env, need, 0);
    assert_eq!((c.want, c.index, c.chunk_key), (7, 1, [9; 32]));
    assert!(c.fits(7));
    assert!(!c.fits(6) && !c.fits(8) && !c.fits(0) && !c.fits(CHUNK_BYTES));
}

#[test]
fn a_restart_after_a_crash_mid_write_resumes_at_the_last_whole_chunk() {
    let env = envelope(1, 1, &[4 * C]);
    let peer = PeerId::random();
    // A new process: nothing in memory, a file ending in half a chunk.
    let mut t = Transfers::new(IDLE, 0);
    let mut disk = vec![Some(2 * C + C / 2)];
    let need = start(&mut t, peer, &env, &mut disk);
    assert_eq!(
        need,
        Need {
            attachment: 0,
            offset: 2 * C
        }
    );
    assert_eq!(disk, vec![Some(2 * C)]);
}

#[test]
fn only_the_peer_that_sent_the_message_may_send_its_chunks() {
    let env = envelope(1, 1, &[C]);
    let key = key_of(&env);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let mut disk = Vec::new();
    let need = start(&mut t, peer, &env, &mut disk);
    let other = PeerId::random();
    assert_eq!(t.on_chunk(other, env.msg_id, 0, 0, 0), OnChunk::Unknown);
    assert_eq!(t.on_chunk(peer, [7; 16], 0, 0, 0), OnChunk::Unknown);
    // The same sender from another peer takes the transfer over.
    let again = start(&mut t, other, &env, &mut disk);
    assert_eq!(again, need);
    assert_eq!(t.on_chunk(peer, env.msg_id, 0, 0, 0), OnChunk::Unknown);
    claim(&mut t, other, &env, need, 0);
    t.forget(&key);
    assert_eq!(t.on_chunk(other, env.msg_id, 0, 0, 0), OnChunk::Unknown);
}

#[test]
fn a_transfer_evicted_while_its_files_are_looked_at_is_not_brought_back() {
    let env = envelope(1, 1, &[C]);
    let key = key_of(&env);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    assert_eq!(t.begin_resume(peer, &key, &env), Some(0));
    let need = Need {
        attachment: 0,
        offset: 0,
    };
    assert!(!t.end_resume(peer, &key, &env, need, 0, false));
    assert_eq!(t.on_chunk(peer, env.msg_id, 0, 0, 0), OnChunk::Unknown);
    // Nor is it left claimed: a later MESSAGE may look again.
    assert_eq!(t.begin_resume(peer, &key, &env), Some(0));
}

#[test]
fn a_transfer_stalled_on_the_disk_is_started_again_by_its_sender() {
    let env = envelope(1, 1, &[2 * C]);
    let key = key_of(&env);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let mut disk = Vec::new();
    let need = start(&mut t, peer, &env, &mut disk);
    claim(&mut t, peer, &env, need, 0);
    t.on_stall(&key);
    assert_eq!(t.on_chunk(peer, env.msg_id, 0, 0, 0), OnChunk::Unknown);
    assert_eq!(start(&mut t, peer, &env, &mut disk), need);
}

#[test]
fn no_remote_numbers_reach_a_panic_or_a_chunk_not_asked_for() {
    let sizes = [0, 1, C, C + 1, u64::MAX];
    let env = envelope(1, 1, &sizes);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let mut disk = vec![Some(0), Some(1), Some(C), Some(C)];
    let need = start(&mut t, peer, &env, &mut disk);
    assert_eq!(
        need,
        Need {
            attachment: 3,
            offset: C
        }
    );
    let last = u64::MAX - u64::MAX % C;
    let offsets = [0, 1, C - 1, C, C + 1, 2 * C, last, u64::MAX];
    let attachments = [0, 1, 2, 3, 4, 5, u32::MAX];
    let upload = Upload::new(&env.attachments, sizes.len());
    for &a in &attachments {
        for &o in &offsets {
            let got = t.on_chunk(peer, env.msg_id, a, o, u64::MAX);
            if (a, o) == (need.attachment, need.offset) {
                assert!(matches!(got, OnChunk::Claimed(ref c) if c.want == 1));
                let verified = 3;
                t.on_written(peer, env.msg_id, &key_of(&env), need, verified);
            } else {
                assert_eq!(got, OnChunk::Ask(need), "({a}, {o})");
            }
            // The sender plans a chunk inside the attachment, or fails the message.
            if let Next::Send(ChunkPlan {
                attachment,
                offset,
                len,
                ..
            }) = upload.plan(Need {
                attachment: a,
                offset: o,
            }) {
                let size = sizes[attachment as usize];
                assert!(len as u64 <= C && offset.checked_add(len as u64) <= Some(size));
            }
        }
    }
}

#[test]
fn an_idle_strangers_transfer_is_dropped_after_the_limit_and_a_contacts_is_not() {
    let stranger = key_of(&envelope(1, 1, &[C]));
    let friend = key_of(&envelope(2, 2, &[C]));
    let contacts: HashSet<[u8; 16]> = [[2u8; 16]].into();
    let mut t = Transfers::new(IDLE, 0);
    for k in [stranger, friend] {
        assert_eq!(
            t.take_slot(&k, Vec::new(), &contacts, &no_one_keys(), 0),
            Admit::Take
        );
    }
    let limit = STRANGER_IDLE_LIMIT * IDLE;
    let held = vec![stranger, friend];
    assert!(t.sweep(held.clone(), &contacts, limit - 1).is_empty());
    assert_eq!(t.sweep(held.clone(), &contacts, limit), vec![stranger]);
    assert!(t.sweep(vec![friend], &contacts, 1000 * limit).is_empty());
}

#[test]
fn a_chunk_keeps_a_transfer_from_being_idle() {
    let env = envelope(1, 1, &[3 * C]);
    let key = key_of(&env);
    let peer = PeerId::random();
    let mut t = Transfers::new(IDLE, 0);
    let no_one = HashSet::new();
    assert_eq!(
        t.take_slot(&key, Vec::new(), &no_one, &no_one_keys(), 0),
        Admit::Take
    );
    let mut disk = Vec::new();
    let need = start(&mut t, peer, &env, &mut disk);
    let limit = STRANGER_IDLE_LIMIT * IDLE;
    claim(&mut t, peer, &env, need, limit - 5);
    assert!(t.sweep(vec![key], &no_one, 2 * limit - 6).is_empty());
    assert_eq!(t.sweep(vec![key], &no_one, 2 * limit - 5), vec![key]);
}

#[test]
fn a_transfer_being_written_is_never_evicted() {
    let no_one = HashSet::new();
    let envs: Vec<Envelope> = (0..MAX_STRANGER_TRANSFERS as u8)
        .map(|n| envelope(10 + n, n, &[3 * C]))
        .collect();
    let held: Vec<[u8; 40]> = envs.iter().map(key_of).collect();
    let mut t = Transfers::new(IDLE, 0);
    // The first one's sender is writing a chunk; every transfer is long idle otherwise.
    let peer = PeerId::random();
    let mut disk = Vec::new();
    let need = start(&mut t, peer, &envs[0], &mut disk);
    claim(&mut t, peer, &envs[0], need, 0);
    let newcomer = key_of(&envelope(99, 99, &[C]));
    let now = 5 * IDLE;
    match t.take_slot(&newcomer, held.clone(), &no_one, &no_one_keys(), now) {
        Admit::Evict(victim) => assert_ne!(victim, held[0]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn what_outlived_its_row_is_forgotten_but_a_transfer_just_admitted_is_kept() {
    let env = envelope(1, 1, &[3 * C]);
    let key = key_of(&env);
    let peer = PeerId::random();
    let no_one = HashSet::new();
    let mut t = Transfers::new(IDLE, 0);
    assert_eq!(
        t.take_slot(&key, Vec::new(), &no_one, &no_one_keys(), 0),
        Admit::Take
    );
    let mut disk = Vec::new();
    let need = start(&mut t, peer, &env, &mut disk);
    // Its row is not committed yet: not among the stored ones.
    assert!(t.sweep(Vec::new(), &no_one, IDLE - 1).is_empty());
    assert_eq!(
        t.on_chunk(peer, env.msg_id, 0, C, IDLE - 1),
        OnChunk::Ask(need)
    );
    // Its row is gone (dropped elsewhere) and it has been quiet for an idle period.
    t.sweep(Vec::new(), &no_one, IDLE);
    assert_eq!(t.on_chunk(peer, env.msg_id, 0, 0, IDLE), OnChunk::Unknown);
}

//! Attachment transfers as pure decisions, on both sides: where a receiving transfer
//! stands given what its files hold, which chunk an arriving CHUNK must be and how long
//! its plaintext is, which chunk a sender sends for a `Need` and what each answer means,
//! and which stored transfers are too old to keep. No IO and no clock: `attachments.rs`
//! and `outbox.rs` probe the disk, hash, read, seal and send around these calls, and hand
//! the time in. Every number here may come from a hostile peer, so the arithmetic is
//! checked and nothing is indexed without `get`.

use super::outbox::Delivery;
use crate::wire::envelope::{AttachmentMeta, CHUNK_BYTES};
use crate::wire::verbs::{Nack, Outcome};

const CHUNK: u64 = CHUNK_BYTES as u64;

/// A transfer not finished in this long is dropped (its sender gives up after 7 days).
pub const PENDING_RETENTION_MS: u64 = 8 * 24 * 3600 * 1000;

/// The chunk a recipient asks for next: always on a chunk boundary, inside a non-empty
/// attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Need {
    pub attachment: u32,
    pub offset: u64,
}

impl From<Need> for Outcome {
    fn from(n: Need) -> Self {
        Outcome::Need {
            attachment: n.attachment,
            offset: n.offset,
        }
    }
}

/// What a receiving transfer does next (see [`next_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask for this chunk. `cut`: the file ends in a partial chunk (a crash mid-write) and
    /// is cut back to `need.offset` first, so what is asked for follows what is kept.
    Ask { need: Need, cut: bool },
    /// This attachment is complete and not checked yet: check it against its hash (after
    /// creating its file, `create`, for an empty attachment never written), then go on
    /// with `verified` one past it.
    Verify { attachment: u32, create: bool },
    /// This attachment's file is longer than its signed size: it can never match.
    Mismatch(u32),
    /// Every attachment is complete and checked.
    Complete,
}

/// Where a receiving transfer stands: `sizes` are its attachments' signed sizes, `lens`
/// its files' lengths (`None`: no file yet), `verified` how many attachments from the
/// first are already checked. The first attachment short of its size is asked for from
/// its last whole chunk; an attachment at its size is checked before the next is looked
/// at. Called again after each check, with `verified` one more.
pub fn next_step(sizes: &[u64], lens: &[Option<u64>], verified: u32) -> Step {
    for (i, &size) in (0u32..).zip(sizes) {
        let file = lens.get(i as usize).copied().flatten();
        let len = file.unwrap_or(0);
        if len < size {
            let aligned = len - len % CHUNK;
            let need = Need {
                attachment: i,
                offset: aligned,
            };
            return Step::Ask {
                need,
                cut: aligned != len,
            };
        }
        if i < verified {
            continue;
        }
        if len > size {
            return Step::Mismatch(i);
        }
        return Step::Verify {
            attachment: i,
            create: size == 0 && file.is_none(),
        };
    }
    Step::Complete
}

/// How long the plaintext of the chunk at `offset` of an attachment of `size` bytes is
/// (a whole chunk, or what is left for the last one), and its nonce index; `None` when
/// no chunk starts there.
pub fn chunk_at(size: u64, offset: u64) -> Option<(usize, u64)> {
    if !offset.is_multiple_of(CHUNK) {
        return None;
    }
    let left = size.checked_sub(offset).filter(|&l| l > 0)?;
    let len = usize::try_from(left.min(CHUNK)).ok()?;
    Some((len, offset / CHUNK))
}

/// A chunk planned by a sender: which bytes of which attachment, sealed under which index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    pub attachment: u32,
    pub offset: u64,
    pub len: usize,
    pub index: u64,
}

/// What a sender does after an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read, seal and send this chunk.
    Send(ChunkPlan),
    /// The message is done with (delivered, or refused for good).
    Done(Delivery),
    /// Given back to the queue: the next attempt starts with MESSAGE again and resumes
    /// where the recipient stands.
    Retry,
}

/// The sending side of one message's attachment transfer: what it may be asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The signed sizes of the attachments we hold a copy of.
    sizes: Vec<u64>,
}

impl Upload {
    /// A transfer of `attachments`, of which we hold the first `files` copies (the same
    /// number, unless the outbox entry is damaged).
    pub fn new(attachments: &[AttachmentMeta], files: usize) -> Self {
        Upload {
            sizes: attachments.iter().take(files).map(|a| a.size).collect(),
        }
    }

    /// The chunk a `Need` asks for. A recipient may ask only for one of our attachments,
    /// on a chunk boundary, not past its end: anything else is a broken or hostile peer,
    /// and the message fails (`protocol`) rather than being sent bytes it never signed.
    /// Asking exactly at the end is answered with an empty chunk, as it always was.
    pub fn plan(&self, need: Need) -> Next {
        let planned = self.sizes.get(need.attachment as usize).and_then(|&size| {
            if !need.offset.is_multiple_of(CHUNK) {
                return None;
            }
            let left = size.checked_sub(need.offset)?;
            Some(ChunkPlan {
                attachment: need.attachment,
                offset: need.offset,
                len: usize::try_from(left.min(CHUNK)).ok()?,
                index: need.offset / CHUNK,
            })
        });
        match planned {
            Some(p) => Next::Send(p),
            None => Next::Done(Delivery::Failed("protocol".into())),
        }
    }

    /// Whether `read` bytes of our copy are what `plan` needs: a copy that shrank since it
    /// was signed can never match its hash, so the message fails for good.
    pub fn check_read(&self, plan: &ChunkPlan, read: usize) -> Result<(), Delivery> {
        if read == plan.len {
            Ok(())
        } else {
            Err(Delivery::Failed("attachment_changed".into()))
        }
    }

    /// What the recipient's answer to a CHUNK means (`None`: no single outcome, or no
    /// answer at all: the recipient restarted or the connection was lost).
    pub fn on_answer(&self, answer: Option<Outcome>) -> Next {
        match answer {
            Some(Outcome::Ack) => Next::Done(Delivery::Delivered),
            Some(Outcome::Nack { reason }) if for_now(&reason) => Next::Retry,
            Some(Outcome::Nack { reason }) => Next::Done(Delivery::Failed(reason)),
            Some(Outcome::Need { attachment, offset }) => self.plan(Need { attachment, offset }),
            None => Next::Retry,
        }
    }
}

/// Whether a refusal is for now: the message is kept and sent again ([`Nack::is_for_now`]).
pub fn for_now(reason: &str) -> bool {
    Nack::parse(reason).is_some_and(Nack::is_for_now)
}

/// The stored transfers, received at the given unix ms, that have outlived their senders'
/// retries at `now_ms` and are dropped.
pub fn expired<K>(received: impl IntoIterator<Item = (K, u64)>, now_ms: u64) -> Vec<K> {
    received
        .into_iter()
        .filter(|(_, at)| at.saturating_add(PENDING_RETENTION_MS) < now_ms)
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = CHUNK;

    fn metas(sizes: &[u64]) -> Vec<AttachmentMeta> {
        sizes
            .iter()
            .map(|&size| AttachmentMeta {
                name: "a".into(),
                mime: "text/plain".into(),
                size,
                sha256: [0; 32],
                key: [0; 32],
            })
            .collect()
    }

    fn ask(attachment: u32, offset: u64, cut: bool) -> Step {
        Step::Ask {
            need: Need { attachment, offset },
            cut,
        }
    }

    fn failed(reason: &str) -> Next {
        Next::Done(Delivery::Failed(reason.into()))
    }

    #[test]
    fn an_empty_attachment_is_created_and_checked_never_asked_for() {
        let sizes = [0, 5, 2 * C];
        assert_eq!(
            next_step(&sizes, &[None, None, None], 0),
            Step::Verify {
                attachment: 0,
                create: true
            }
        );
        assert_eq!(
            next_step(&sizes, &[Some(0), None, None], 1),
            ask(1, 0, false)
        );
    }

    #[test]
    fn a_crash_mid_write_resumes_at_the_last_whole_chunk() {
        let sizes = [3 * C];
        assert_eq!(next_step(&sizes, &[Some(C + 100)], 0), ask(0, C, true));
        assert_eq!(next_step(&sizes, &[Some(C - 1)], 0), ask(0, 0, true));
        assert_eq!(next_step(&sizes, &[Some(2 * C)], 0), ask(0, 2 * C, false));
    }

    #[test]
    fn a_file_longer_than_its_size_can_never_match() {
        assert_eq!(
            next_step(&[5, 5], &[Some(5), Some(6)], 1),
            Step::Mismatch(1)
        );
        assert_eq!(next_step(&[0], &[Some(1)], 0), Step::Mismatch(0));
        assert_eq!(next_step(&[C], &[Some(u64::MAX)], 0), Step::Mismatch(0));
    }

    #[test]
    fn each_complete_attachment_is_checked_once_in_order() {
        let sizes = [5, C];
        let lens = [Some(5), Some(C)];
        let first = Step::Verify {
            attachment: 0,
            create: false,
        };
        assert_eq!(next_step(&sizes, &lens, 0), first);
        let second = Step::Verify {
            attachment: 1,
            create: false,
        };
        assert_eq!(next_step(&sizes, &lens, 1), second);
        assert_eq!(next_step(&sizes, &lens, 2), Step::Complete);
        // A file lost after its check is asked for again.
        assert_eq!(next_step(&sizes, &[None, Some(C)], 2), ask(0, 0, false));
        assert_eq!(next_step(&[], &[], 0), Step::Complete);
        // Fewer lengths than attachments: the rest have no file.
        assert_eq!(next_step(&sizes, &[Some(5)], 1), ask(1, 0, false));
    }

    #[test]
    fn a_chunk_is_whole_or_the_rest_and_never_past_the_end() {
        assert_eq!(chunk_at(5, 0), Some((5, 0)));
        assert_eq!(chunk_at(2 * C, C), Some((CHUNK_BYTES, 1)));
        assert_eq!(chunk_at(2 * C + 7, 2 * C), Some((7, 2)));
        // Offsets a hostile sender or a stale state could name: no underflow, no chunk.
        assert_eq!(chunk_at(2 * C, 2 * C), None);
        assert_eq!(chunk_at(5, C), None);
        assert_eq!(chunk_at(0, 0), None);
        assert_eq!(chunk_at(C + 1, 1), None);
        let last = u64::MAX - u64::MAX % C;
        assert_eq!(
            chunk_at(u64::MAX, last),
            Some(((u64::MAX % C) as usize, last / C))
        );
        assert_eq!(chunk_at(5, last), None);
    }

    #[test]
    fn a_sender_sends_only_chunks_of_what_it_signed() {
        let up = Upload::new(&metas(&[5, 2 * C, 0]), 3);
        let send = |attachment, offset, len, index| {
            Next::Send(ChunkPlan {
                attachment,
                offset,
                len,
                index,
            })
        };
        let need = |attachment, offset| Need { attachment, offset };
        assert_eq!(up.plan(need(0, 0)), send(0, 0, 5, 0));
        assert_eq!(up.plan(need(1, C)), send(1, C, CHUNK_BYTES, 1));
        // At the very end: an empty chunk, as before (a recipient never asks for it).
        assert_eq!(up.plan(need(1, 2 * C)), send(1, 2 * C, 0, 2));
        assert_eq!(up.plan(need(2, 0)), send(2, 0, 0, 0));
        // A hostile recipient: misaligned, out of range, past the list.
        assert_eq!(up.plan(need(0, 1)), failed("protocol"));
        assert_eq!(up.plan(need(1, 3 * C)), failed("protocol"));
        assert_eq!(up.plan(need(0, C)), failed("protocol"));
        assert_eq!(up.plan(need(0, u64::MAX)), failed("protocol"));
        assert_eq!(up.plan(need(3, 0)), failed("protocol"));
        assert_eq!(up.plan(need(u32::MAX, 0)), failed("protocol"));
        // An attachment we hold no copy of (a damaged outbox entry).
        let short = Upload::new(&metas(&[5, 5]), 1);
        assert_eq!(short.plan(need(1, 0)), failed("protocol"));
    }

    #[test]
    fn each_answer_to_a_chunk_means_one_thing() {
        let up = Upload::new(&metas(&[2 * C]), 1);
        let nack = |r: &str| Some(Outcome::Nack { reason: r.into() });
        assert_eq!(
            up.on_answer(Some(Outcome::Ack)),
            Next::Done(Delivery::Delivered)
        );
        for transient in ["busy", "unknown_message", "rate_limited", "not_ready"] {
            assert_eq!(up.on_answer(nack(transient)), Next::Retry, "{transient}");
        }
        assert_eq!(up.on_answer(nack("bad_chunk")), failed("bad_chunk"));
        assert_eq!(
            up.on_answer(nack("bad_attachment")),
            failed("bad_attachment")
        );
        assert_eq!(
            up.on_answer(nack("no such reason")),
            failed("no such reason")
        );
        assert_eq!(
            up.on_answer(Some(Outcome::Need {
                attachment: 0,
                offset: C
            })),
            Next::Send(ChunkPlan {
                attachment: 0,
                offset: C,
                len: CHUNK_BYTES,
                index: 1
            })
        );
        let hostile = Some(Outcome::Need {
            attachment: 0,
            offset: 3 * C,
        });
        assert_eq!(up.on_answer(hostile), failed("protocol"));
        assert_eq!(up.on_answer(None), Next::Retry);
    }

    #[test]
    fn a_copy_that_shrank_since_it_was_signed_fails() {
        let up = Upload::new(&metas(&[5]), 1);
        let Next::Send(plan) = up.plan(Need {
            attachment: 0,
            offset: 0,
        }) else {
            panic!("a chunk of the attachment");
        };
        assert_eq!(up.check_read(&plan, 5), Ok(()));
        assert_eq!(
            up.check_read(&plan, 4),
            Err(Delivery::Failed("attachment_changed".into()))
        );
    }

    #[test]
    fn transfers_outlive_their_senders_retries_by_a_day_then_go() {
        let now = 100 * PENDING_RETENTION_MS;
        let received = [
            (1, now - PENDING_RETENTION_MS),
            (2, now - PENDING_RETENTION_MS - 1),
            (3, u64::MAX),
            (4, 0),
        ];
        assert_eq!(expired(received, now), vec![2, 4]);
        assert!(expired([(1, u64::MAX)], 0).is_empty());
    }
}

//! Attachment transfers as pure decisions: where a receiving transfer stands given what
//! its files hold, which chunk an arriving CHUNK must be and how long its plaintext is,
//! and which stored transfers are too old to keep. No IO and no clock: `attachments.rs`
//! probes the disk, hashes and writes around these calls, and hands the time in. Every number here may come from a hostile peer, so the arithmetic is
//! checked and nothing is indexed without `get`.

use crate::wire::envelope::CHUNK_BYTES;
use crate::wire::verbs::Outcome;

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

    fn ask(attachment: u32, offset: u64, cut: bool) -> Step {
        Step::Ask {
            need: Need { attachment, offset },
            cut,
        }
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

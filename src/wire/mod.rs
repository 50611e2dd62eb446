//! The wire: every byte format ptpchat sends or signs, as pure code (no IO, no async, no
//! service state). Each is specified in `protocols/` with test vectors. Everything else may
//! use this layer; it uses only [`crate::cbor`], [`crate::identity`] and [`crate::counters`]
//! (the counter each refusal is counted under) below it.
//!
//! - [`verbs`]: the request/response verbs between peers;
//! - [`envelope`]: direct messages (envelope, signed and sealed forms, attachment chunks,
//!   the recipient's checks);
//! - [`receipt`]: the body of a delivery receipt;
//! - [`frame`]: channel frames and key grants;
//! - [`mailbox`]: mailbox ids, receipts and logins.

pub mod envelope;
pub mod frame;
pub mod mailbox;
pub mod receipt;
pub mod verbs;

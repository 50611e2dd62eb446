//! Relay mailboxes: offline delivery (specified in `protocols/mailbox.md`).
//!
//! A user's mailboxes are the relays its identity document reaches it through. A sender that
//! cannot reach the recipient deposits the sealed message at those relays under the
//! recipient's mailbox id there; each relay answers with a signed receipt. The recipient
//! drains a mailbox by signing a fresh nonce the relay chose, and the relay deletes an item
//! only when the recipient acknowledges it. The pure parts (ids, signed bytes, receipts,
//! limits) are in [`crate::wire::mailbox`]; [`service`] is the relay's side, and the user's
//! side lives in the messenger.

pub mod service;

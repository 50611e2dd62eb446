//! The identity keeper: the one place a running node holds its identity's secret keys for
//! publishing. On a thread of its own, it issues our identity document when the event loop
//! asks (rotating the encryption key when due), saves the identity durably before the
//! document goes anywhere, and hands the new message keys to the messenger. The event loop
//! only sends it the addresses to name and gets a signed document back, so a slow fsync
//! never holds up the swarm and the loop holds no secret key.

use std::sync::Arc;

use libp2p::Multiaddr;
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::counters::{Counter, Counters};
use crate::identity::{Identity, MessageKeys, SignedDocument};
use crate::store::Store;

/// A document the keeper issued, with the addresses it names and the message keys that go
/// with it (the event loop hands them to the messenger once the document is put, so a
/// message never goes out under keys whose document nobody can fetch yet).
pub(crate) struct Issued {
    /// `None` if the identity could not be saved: nothing was published.
    pub doc: Option<(SignedDocument, Arc<MessageKeys>)>,
    pub reach: Vec<Multiaddr>,
}

/// The event loop's handle: ask with [`Keeper::issue`], read answers from `issued`.
pub(crate) struct Keeper {
    uuid: Uuid,
    requests: Option<std::sync::mpsc::Sender<(Vec<Multiaddr>, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Keeper {
    /// Starts the keeper thread. Issued documents come back on the returned receiver.
    pub fn start(
        mut identity: Identity,
        store: Store,
        counters: Counters,
    ) -> (Self, mpsc::UnboundedReceiver<Issued>) {
        let uuid = identity.uuid();
        let (requests, rx) = std::sync::mpsc::channel::<(Vec<Multiaddr>, u64)>();
        let (issued, answers) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("identity-keeper".into())
            .spawn(move || {
                for (reach, now) in rx {
                    let doc = issue(&mut identity, &store, &counters, &reach, now);
                    if issued.send(Issued { doc, reach }).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| error!(error = %e, "cannot start the identity keeper"))
            .ok();
        let keeper = Keeper {
            uuid,
            requests: Some(requests),
            thread,
        };
        (keeper, answers)
    }

    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// Asks for a new document naming `reach`, issued at `now` (Unix seconds).
    pub fn issue(&self, reach: Vec<Multiaddr>, now: u64) {
        if let Some(tx) = &self.requests {
            let _ = tx.send((reach, now));
        }
    }
}

impl Drop for Keeper {
    /// Waits for an issue under way, so its save is complete when the node is gone.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn issue(
    identity: &mut Identity,
    store: &Store,
    counters: &Counters,
    reach: &[Multiaddr],
    now: u64,
) -> Option<(SignedDocument, Arc<MessageKeys>)> {
    if identity.rotate_encryption_key_if_due(now) {
        info!("encryption key rotated");
    }
    let doc = identity.issue_document(reach, now);
    // Saved before anyone sees the document: a restart must not issue an older sequence
    // number or lose the key the document names.
    if let Err(e) = store.save_identity(identity) {
        warn!(error = %e, "could not save identity; not publishing");
        return None;
    }
    // Check our own document as every other node will: a clock far off, a corrupt chain
    // or an over-long one would otherwise fail silently everywhere else.
    if let Err(e) = SignedDocument::decode_for(doc.bytes(), &doc.doc().uuid(), now) {
        counters.count(Counter::OwnDocumentInvalid);
        error!(error = %e, "our own identity document does not verify; peers will refuse it (is the clock right?)");
    }
    let keys = Arc::new(identity.message_keys(doc.clone()));
    Some((doc, keys))
}

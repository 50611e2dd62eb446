//! What the control socket answers with for `id` and `whois`: the JSON shapes scripts read
//! (docs/cli.md), shared by the node that builds them and the CLI that prints them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::{contact_uri, Identity, SignedDocument};

/// Who this node is, as `ptpchat id` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdInfo {
    pub uuid: Uuid,
    pub peer_id: String,
    pub fingerprint: String,
    pub public_key: String,
    pub contact_uri: String,
}

impl IdInfo {
    /// The summary of an identity.
    pub fn of(id: &Identity) -> Self {
        IdInfo {
            uuid: id.uuid(),
            peer_id: id.peer_id().to_string(),
            fingerprint: id.fingerprint().to_string(),
            public_key: hex::encode(id.public_key()),
            contact_uri: contact_uri(&id.uuid(), &id.fingerprint()),
        }
    }
}

/// What `whois --json` prints for a document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoisView {
    pub uuid: String,
    pub peer_id: String,
    pub public_key: String,
    pub fingerprint: String,
    pub seq: u64,
    pub reach: Vec<String>,
    pub enc_key: String,
    pub key_rotations: usize,
    pub issued: u64,
    pub expires: u64,
}

impl WhoisView {
    /// The view of a signed document.
    pub fn of(doc: &SignedDocument) -> Self {
        let d = doc.doc();
        WhoisView {
            uuid: d.uuid().to_string(),
            peer_id: d.peer_id().map(|p| p.to_string()).unwrap_or_default(),
            public_key: hex::encode(d.current_key),
            fingerprint: d.fingerprint().to_string(),
            seq: d.seq,
            reach: d.reach.clone(),
            enc_key: hex::encode(d.enc_key),
            key_rotations: d.key_chain.len(),
            issued: d.issued,
            expires: d.expires,
        }
    }
}

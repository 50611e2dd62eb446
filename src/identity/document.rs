//! The identity document: the signed, self-certifying record that binds a UUID to its
//! current identity key, encryption key, PeerId and reachability. It is what the DHT
//! stores under `/ptpchat/id/<uuid>` and what GETCERTIFICATE returns. The wire format is
//! specified in `protocols/identity.md`.

use ed25519_dalek::{Signature, VerifyingKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{uuid_from_genesis, Fingerprint};
use crate::cbor;

/// Largest encoded document any node stores or accepts.
pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024;
/// Longest key chain (rotations since genesis) a document may carry.
pub const MAX_CHAIN_LINKS: usize = 32;
/// Most reachability addresses a document may list.
pub const MAX_REACH: usize = 8;
/// Longest textual multiaddr accepted in `reach`.
pub const MAX_ADDR_LEN: usize = 256;
/// Longest validity (expires - issued) a document may claim.
pub const MAX_VALIDITY_SECS: u64 = 30 * 24 * 3600;
/// How far in the future `issued` may be, for clock skew between nodes.
pub const MAX_CLOCK_SKEW_SECS: u64 = 10 * 60;
/// Version of the document body this code writes and accepts.
pub const DOCUMENT_VERSION: u32 = 1;

pub(crate) const DOC_DOMAIN: &[u8] = b"ptpchat/iddoc/v1\0";
pub(crate) const LINK_DOMAIN: &[u8] = b"ptpchat/keylink/v1\0";
pub(crate) const ENC_DOMAIN: &[u8] = b"ptpchat/enckey/v1\0";
pub(crate) const RATCHET_DOMAIN: &[u8] = b"ptpchat/ratchet-keys/1";

/// The ratchet key bundle (`protocols/ratchet.md` section 1): what a stranger needs to
/// start a double-ratchet session while we are offline, signed by the current key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatchetKeys {
    /// Curve25519 ratchet identity key.
    #[serde(with = "serde_bytes")]
    pub ik: [u8; 32],
    /// Curve25519 fallback key.
    #[serde(with = "serde_bytes")]
    pub fk: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub sig: [u8; 64],
}

impl RatchetKeys {
    /// The bytes the current key signs: domain, UUID, then both keys.
    pub fn signed_bytes(uuid: &Uuid, ik: &[u8; 32], fk: &[u8; 32]) -> Vec<u8> {
        domain_bytes(RATCHET_DOMAIN, uuid, &[ik, fk])
    }
}

/// What a key signs to vouch for something of a UUID's: the domain, the UUID, then the
/// parts, concatenated.
fn domain_bytes(domain: &[u8], uuid: &Uuid, parts: &[&[u8]]) -> Vec<u8> {
    let len = domain.len() + 16 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(domain);
    m.extend_from_slice(uuid.as_bytes());
    for p in parts {
        m.extend_from_slice(p);
    }
    m
}

/// The DHT key of a UUID's identity document: the bytes of `/ptpchat/id/<uuid>`.
pub fn dht_key(uuid: &Uuid) -> Vec<u8> {
    format!("/ptpchat/id/{}", uuid.hyphenated()).into_bytes()
}

/// One step of key rotation: `key` signed by the key before it (the genesis key for the
/// first link).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLink {
    #[serde(with = "serde_bytes")]
    pub key: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub sig: [u8; 64],
}

impl KeyLink {
    /// The bytes the previous key signs to vouch for link `index`.
    pub(crate) fn signed_bytes(uuid: &Uuid, index: u32, key: &[u8; 32]) -> Vec<u8> {
        domain_bytes(LINK_DOMAIN, uuid, &[&index.to_be_bytes(), key])
    }
}

/// The signed content of an identity document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityDocument {
    pub v: u32,
    #[serde(with = "serde_bytes")]
    pub uuid: [u8; 16],
    #[serde(with = "serde_bytes")]
    pub genesis_key: [u8; 32],
    pub key_chain: Vec<KeyLink>,
    #[serde(with = "serde_bytes")]
    pub current_key: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub enc_key: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub enc_sig: [u8; 64],
    #[serde(with = "serde_bytes")]
    pub peer_id: Vec<u8>,
    pub reach: Vec<String>,
    pub seq: u64,
    pub issued: u64,
    pub expires: u64,
    /// The ratchet key bundle, where the owner publishes one (absent from documents of
    /// earlier versions, whose encoding it leaves unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratchet: Option<Box<RatchetKeys>>,
}

impl IdentityDocument {
    /// The UUID this document is for.
    pub fn uuid(&self) -> Uuid {
        Uuid::from_bytes(self.uuid)
    }

    /// Fingerprint of the genesis identity key: stable across key rotations.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_key(&self.genesis_key)
    }

    /// The PeerId of the current identity key (checked equal to `peer_id` on decode).
    pub fn peer_id(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.peer_id).ok()
    }

    /// The reachability addresses (checked parseable on decode).
    pub fn reach_addrs(&self) -> Vec<Multiaddr> {
        self.reach.iter().filter_map(|a| a.parse().ok()).collect()
    }

    /// The bytes the current key signs to vouch for the encryption key.
    pub(crate) fn enc_signed_bytes(uuid: &Uuid, enc_key: &[u8; 32]) -> Vec<u8> {
        domain_bytes(ENC_DOMAIN, uuid, &[enc_key])
    }
}

/// The outer, signed form: `{body: bstr, sig: bstr}`. The signature covers the exact body
/// bytes, so verification never depends on re-encoding (and fields added by later versions
/// stay covered).
#[derive(Serialize, Deserialize)]
struct Envelope {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: [u8; 64],
}

/// A document whose signatures, UUID derivation, key chain, limits and validity period
/// have all been checked, together with its exact encoded bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDocument {
    bytes: Vec<u8>,
    doc: IdentityDocument,
}

/// Why a document was refused. `reason()` names it for counters and NACKs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    #[error("document is {0} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed document: {0}")]
    Malformed(String),
    #[error("unsupported document version {0}")]
    UnsupportedVersion(u32),
    #[error("uuid is not derived from the genesis key")]
    UuidMismatch,
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    #[error("key chain invalid at link {0}")]
    BadChain(usize),
    #[error("key chain longer than {MAX_CHAIN_LINKS} links")]
    ChainTooLong,
    #[error("bad document signature")]
    BadSignature,
    #[error("bad encryption key signature")]
    BadEncryptionKeySignature,
    #[error("bad ratchet key bundle signature")]
    BadRatchetKeySignature,
    #[error("peer_id does not match the current key")]
    PeerIdMismatch,
    #[error("bad reach address: {0}")]
    BadReach(String),
    #[error("document expired")]
    Expired,
    #[error("document issued in the future or valid for too long")]
    BadValidity,
    #[error("document is for uuid {found}, expected {expected}")]
    WrongUuid { expected: Uuid, found: Uuid },
    #[error("seq {new} is lower than the {held} already held")]
    StaleSeq { held: u64, new: u64 },
    #[error("a different document with the same seq {0} is already held")]
    ConflictingSeq(u64),
    #[error("key chain does not extend the one already held (signed by a retired key, or forked)")]
    ForkedChain,
}

impl DocumentError {
    /// A short stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::UuidMismatch => "uuid_mismatch",
            Self::InvalidKey(_) => "invalid_key",
            Self::BadChain(_) | Self::ChainTooLong => "bad_chain",
            Self::BadSignature | Self::BadEncryptionKeySignature | Self::BadRatchetKeySignature => {
                "bad_signature"
            }
            Self::PeerIdMismatch => "peer_id_mismatch",
            Self::BadReach(_) => "bad_reach",
            Self::Expired => "expired",
            Self::BadValidity => "bad_validity",
            Self::WrongUuid { .. } => "wrong_uuid",
            Self::StaleSeq { .. } | Self::ConflictingSeq(_) => "stale_seq",
            Self::ForkedChain => "forked_chain",
        }
    }
}

fn verifying_key(bytes: &[u8; 32], what: &'static str) -> Result<VerifyingKey, DocumentError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| DocumentError::InvalidKey(what))?;
    if key.is_weak() {
        return Err(DocumentError::InvalidKey(what));
    }
    Ok(key)
}

fn verify(key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> bool {
    key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
}

/// Verifies a key chain from the genesis key and returns its last key.
pub(crate) fn verify_chain(
    uuid: &Uuid,
    genesis: &[u8; 32],
    chain: &[KeyLink],
) -> Result<VerifyingKey, DocumentError> {
    if chain.len() > MAX_CHAIN_LINKS {
        return Err(DocumentError::ChainTooLong);
    }
    let mut signer = verifying_key(genesis, "genesis_key")?;
    for (i, link) in chain.iter().enumerate() {
        let next = verifying_key(&link.key, "key_chain").map_err(|_| DocumentError::BadChain(i))?;
        let msg = KeyLink::signed_bytes(uuid, i as u32, &link.key);
        if !verify(&signer, &msg, &link.sig) {
            return Err(DocumentError::BadChain(i));
        }
        signer = next;
    }
    Ok(signer)
}

impl SignedDocument {
    /// Signs `doc` with `signing` (which must be the document's current key).
    pub(crate) fn sign(doc: IdentityDocument, signing: &ed25519_dalek::SigningKey) -> Self {
        use ed25519_dalek::Signer;
        // Encoding our own struct cannot fail; an empty body would fail verification loudly.
        let body = cbor::to_vec(&doc).unwrap_or_default();
        let mut msg = DOC_DOMAIN.to_vec();
        msg.extend_from_slice(&body);
        let sig = signing.sign(&msg).to_bytes();
        let bytes = cbor::to_vec(&Envelope { body, sig }).unwrap_or_default();
        SignedDocument { bytes, doc }
    }

    /// Decodes and fully verifies a document received from anywhere (network, DHT, disk).
    /// `now` is Unix seconds.
    pub fn decode(bytes: &[u8], now: u64) -> Result<Self, DocumentError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge(bytes.len()));
        }
        let env: Envelope = cbor::from_slice(bytes, MAX_DOCUMENT_BYTES)
            .map_err(|e| DocumentError::Malformed(e.to_string()))?;
        let doc: IdentityDocument = cbor::from_slice(&env.body, MAX_DOCUMENT_BYTES)
            .map_err(|e| DocumentError::Malformed(e.to_string()))?;
        if doc.v != DOCUMENT_VERSION {
            return Err(DocumentError::UnsupportedVersion(doc.v));
        }
        let uuid = doc.uuid();
        if uuid_from_genesis(&doc.genesis_key) != uuid {
            return Err(DocumentError::UuidMismatch);
        }
        if doc.key_chain.len() > MAX_CHAIN_LINKS {
            return Err(DocumentError::ChainTooLong);
        }
        let signer = verify_chain(&uuid, &doc.genesis_key, &doc.key_chain)?;
        if signer.to_bytes() != doc.current_key {
            return Err(DocumentError::BadChain(doc.key_chain.len()));
        }
        let mut msg = DOC_DOMAIN.to_vec();
        msg.extend_from_slice(&env.body);
        if !verify(&signer, &msg, &env.sig) {
            return Err(DocumentError::BadSignature);
        }
        let enc_msg = IdentityDocument::enc_signed_bytes(&uuid, &doc.enc_key);
        if !verify(&signer, &enc_msg, &doc.enc_sig) {
            return Err(DocumentError::BadEncryptionKeySignature);
        }
        if let Some(r) = &doc.ratchet {
            if !verify(
                &signer,
                &RatchetKeys::signed_bytes(&uuid, &r.ik, &r.fk),
                &r.sig,
            ) {
                return Err(DocumentError::BadRatchetKeySignature);
            }
        }
        let expected_peer = libp2p::identity::ed25519::PublicKey::try_from_bytes(&doc.current_key)
            .map(|k| PeerId::from_public_key(&libp2p::identity::PublicKey::from(k)))
            .map_err(|_| DocumentError::InvalidKey("current_key"))?;
        if PeerId::from_bytes(&doc.peer_id).ok() != Some(expected_peer) {
            return Err(DocumentError::PeerIdMismatch);
        }
        if doc.reach.len() > MAX_REACH {
            return Err(DocumentError::BadReach(format!(
                "more than {MAX_REACH} addresses"
            )));
        }
        for a in &doc.reach {
            if a.len() > MAX_ADDR_LEN || a.parse::<Multiaddr>().is_err() {
                return Err(DocumentError::BadReach(a.chars().take(64).collect()));
            }
        }
        if doc.issued > now + MAX_CLOCK_SKEW_SECS
            || doc.expires <= doc.issued
            || doc.expires - doc.issued > MAX_VALIDITY_SECS
        {
            return Err(DocumentError::BadValidity);
        }
        // seq counts milliseconds at most up to the issue time (plus skew), so nobody can
        // claim a seq that freezes out every later document.
        if doc.seq > (doc.issued + MAX_CLOCK_SKEW_SECS).saturating_mul(1000) {
            return Err(DocumentError::BadValidity);
        }
        if doc.expires <= now {
            return Err(DocumentError::Expired);
        }
        Ok(SignedDocument {
            bytes: bytes.to_vec(),
            doc,
        })
    }

    /// Decodes a document and checks it is for `uuid`.
    pub fn decode_for(bytes: &[u8], uuid: &Uuid, now: u64) -> Result<Self, DocumentError> {
        let d = Self::decode(bytes, now)?;
        if d.doc.uuid() != *uuid {
            return Err(DocumentError::WrongUuid {
                expected: *uuid,
                found: d.doc.uuid(),
            });
        }
        Ok(d)
    }

    /// Whether this document may replace `held` (a verified document for the same UUID).
    /// The key chain decides first, so a rotation always wins over documents signed by a
    /// retired key, whatever seq those claim:
    /// - a chain that strictly extends the held one replaces it;
    /// - an older chain (the held one extends it) or a diverging one (a fork made with a
    ///   stolen retired key) never does;
    /// - with equal chains, a higher seq replaces; the same seq only for the same content.
    ///
    /// Returns `Ok(true)` if it is new, `Ok(false)` if it is the one already held.
    pub fn may_replace(&self, held: &SignedDocument) -> Result<bool, DocumentError> {
        if held.doc.uuid != self.doc.uuid {
            return Err(DocumentError::WrongUuid {
                expected: held.doc.uuid(),
                found: self.doc.uuid(),
            });
        }
        let (new, old) = (&self.doc.key_chain, &held.doc.key_chain);
        if new != old {
            return if new.len() > old.len() && new.starts_with(old) {
                Ok(true)
            } else {
                Err(DocumentError::ForkedChain)
            };
        }
        if self.doc.seq < held.doc.seq {
            return Err(DocumentError::StaleSeq {
                held: held.doc.seq,
                new: self.doc.seq,
            });
        }
        if self.doc.seq == held.doc.seq {
            return if self.doc == held.doc {
                Ok(false)
            } else {
                Err(DocumentError::ConflictingSeq(self.doc.seq))
            };
        }
        Ok(true)
    }

    /// The verified content.
    pub fn doc(&self) -> &IdentityDocument {
        &self.doc
    }

    /// The exact encoded bytes (what goes into the DHT and on the wire).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

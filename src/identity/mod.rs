//! A person's identity: the ed25519 identity key (also the libp2p key), its rotation
//! chain back to the genesis key the UUID is derived from, and the X25519 encryption
//! keys it signs and rotates. Pure code: no network, no disk.

mod document;

pub use document::{
    dht_key, DocumentError, IdentityDocument, KeyLink, RatchetKeys, SignedDocument,
    MAX_CHAIN_LINKS, MAX_DOCUMENT_BYTES, MAX_REACH,
};

use ed25519_dalek::{Signer, SigningKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::cbor;

/// How long a published document is valid; the owner re-issues it well before.
pub const DOCUMENT_VALIDITY_SECS: u64 = 14 * 24 * 3600;
/// How often the encryption key is replaced.
pub const ENC_ROTATION_SECS: u64 = 7 * 24 * 3600;
/// How long a retired encryption key is kept to open late mail: the longest a document
/// naming it stays valid plus mailbox retention.
pub const ENC_GRACE_SECS: u64 = DOCUMENT_VALIDITY_SECS + 7 * 24 * 3600;

/// The UUID owned by a genesis key: the first 16 bytes of SHA-256 over the key, as an
/// RFC 9562 version 8 UUID.
pub fn uuid_from_genesis(genesis_key: &[u8; 32]) -> Uuid {
    let digest = Sha256::digest(genesis_key);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// SHA-256 of the genesis identity key, shown as hex in groups of four.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of an identity key.
    pub fn of_key(key: &[u8; 32]) -> Self {
        Fingerprint(Sha256::digest(key).into())
    }

    /// Parses hex with or without spaces (as a user may type or paste it).
    pub fn parse(s: &str) -> Option<Self> {
        let compact: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect();
        let bytes = hex::decode(compact.to_ascii_lowercase()).ok()?;
        Some(Fingerprint(bytes.try_into().ok()?))
    }

    /// Plain lowercase hex, no spaces (as used in contact URIs).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.to_hex();
        for (i, chunk) in h.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| std::fmt::Error)?)?;
        }
        Ok(())
    }
}

/// The contact URI `ptpchat:<uuid>?fp=<fingerprint hex>`.
pub fn contact_uri(uuid: &Uuid, fp: &Fingerprint) -> String {
    format!("ptpchat:{}?fp={}", uuid.hyphenated(), fp.to_hex())
}

/// Parses a bare UUID or a contact URI into the UUID and, if given, the fingerprint.
pub fn parse_contact(s: &str) -> Result<(Uuid, Option<Fingerprint>), String> {
    let s = s.trim();
    let (id, query) = match s.strip_prefix("ptpchat:") {
        Some(rest) => match rest.split_once('?') {
            Some((id, q)) => (id, Some(q)),
            None => (rest, None),
        },
        None => (s, None),
    };
    let uuid = Uuid::parse_str(id).map_err(|_| format!("not a UUID or ptpchat: URI: {s:?}"))?;
    let mut fp = None;
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("fp=") {
                fp = Some(
                    Fingerprint::parse(v)
                        .ok_or_else(|| format!("bad fingerprint in URI: {v:?}"))?,
                );
            }
        }
    }
    Ok((uuid, fp))
}

/// Renders text (a contact URI) as a QR code in SVG for a page: one path of dark modules
/// on white, with a 4-module quiet zone. Nothing in it is taken from anyone but us.
pub fn qr_svg(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| e.to_string())?;
    let width = code.width();
    let side = width + 8;
    let mut path = String::new();
    for y in 0..width {
        for x in 0..width {
            if code[(x, y)] == qrcode::Color::Dark {
                path.push_str(&format!("M{} {}h1v1h-1z", x + 4, y + 4));
            }
        }
    }
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {side} {side}\" shape-rendering=\"crispEdges\"><rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

/// Renders text (a contact URI) as a QR code made of Unicode half blocks for a terminal.
pub fn qr_code(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| e.to_string())?;
    let width = code.width();
    let dark = |x: i64, y: i64| -> bool {
        x >= 0
            && y >= 0
            && (x as usize) < width
            && (y as usize) < width
            && code[(x as usize, y as usize)] == qrcode::Color::Dark
    };
    // Two module rows per text line, with a 2-module quiet zone; light on dark terminals
    // is handled by drawing the light modules.
    let mut out = String::new();
    let q = 2i64;
    let mut y = -q;
    while y < width as i64 + q {
        for x in -q..width as i64 + q {
            let top = !dark(x, y);
            let bottom = !dark(x, y + 1);
            out.push(match (top, bottom) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
        y += 2;
    }
    Ok(out)
}

/// One X25519 encryption key the owner holds, current or retired.
#[derive(Clone, Serialize, Deserialize)]
struct EncKey {
    #[serde(with = "serde_bytes")]
    secret: [u8; 32],
    created: u64,
    retired: Option<u64>,
}

impl Drop for EncKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

/// What is written to the store (CBOR).
#[derive(Serialize, Deserialize)]
struct StoredIdentity {
    v: u32,
    #[serde(with = "serde_bytes")]
    genesis_key: [u8; 32],
    key_chain: Vec<KeyLink>,
    #[serde(with = "serde_bytes")]
    signing_key: [u8; 32],
    enc_keys: Vec<EncKey>,
    seq: u64,
}

impl Drop for StoredIdentity {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.signing_key);
    }
}

/// Why stored identity bytes could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("stored identity is unreadable: {0}")]
    Corrupt(String),
    #[error("the key chain already has {MAX_CHAIN_LINKS} links; no further rotation is possible")]
    ChainFull,
}

/// The keys messages are signed and opened with, and the document sent along with them.
pub struct MessageKeys {
    pub uuid: Uuid,
    pub signing: SigningKey,
    /// Every encryption key still held, current first: (public, secret).
    pub enc: Vec<([u8; 32], x25519_dalek::StaticSecret)>,
    /// Our current identity document.
    pub doc: SignedDocument,
}

/// The owner's secret identity material.
pub struct Identity {
    genesis_key: [u8; 32],
    key_chain: Vec<KeyLink>,
    signing: SigningKey,
    /// Newest first; `enc_keys[0]` is current.
    enc_keys: Vec<EncKey>,
    seq: u64,
    /// The ratchet key bundle to publish: (identity key, fallback key).
    ratchet: Option<([u8; 32], [u8; 32])>,
}

impl Identity {
    /// Creates a new identity with a fresh genesis key and encryption key.
    pub fn generate(now: u64) -> Self {
        let signing = SigningKey::from_bytes(&random_secret());
        Identity {
            genesis_key: signing.verifying_key().to_bytes(),
            key_chain: Vec::new(),
            signing,
            enc_keys: vec![new_enc_key(now)],
            seq: 0,
            ratchet: None,
        }
    }

    /// Builds an identity from given secret keys (test vectors and tests only need this;
    /// real identities come from [`Identity::generate`]).
    pub fn from_secret_keys(signing: [u8; 32], enc: [u8; 32], now: u64) -> Self {
        let signing = SigningKey::from_bytes(&signing);
        Identity {
            genesis_key: signing.verifying_key().to_bytes(),
            key_chain: Vec::new(),
            signing,
            enc_keys: vec![EncKey {
                secret: enc,
                created: now,
                retired: None,
            }],
            seq: 0,
            ratchet: None,
        }
    }

    /// The UUID, derived from the genesis key.
    pub fn uuid(&self) -> Uuid {
        uuid_from_genesis(&self.genesis_key)
    }

    /// The fingerprint of the genesis key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_key(&self.genesis_key)
    }

    /// The current identity public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The libp2p keypair: the current identity key, so PeerId and identity agree.
    pub fn libp2p_keypair(&self) -> libp2p::identity::Keypair {
        let secret = Zeroizing::new(self.signing.to_bytes());
        let mut bytes = *secret;
        // `ed25519_from_bytes` zeroizes the buffer it is given. It only fails for a wrong length,
        // which a `[u8; 32]` cannot have, so a failure here is a bug, not bad input.
        libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes)
            .expect("any 32 bytes are a valid ed25519 secret key")
    }

    /// The PeerId of the current identity key.
    pub fn peer_id(&self) -> PeerId {
        self.libp2p_keypair().public().to_peer_id()
    }

    /// Signs `msg` with the current identity key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The current X25519 public encryption key.
    pub fn encryption_public(&self) -> [u8; 32] {
        let secret = x25519_dalek::StaticSecret::from(self.enc_keys[0].secret);
        x25519_dalek::PublicKey::from(&secret).to_bytes()
    }

    /// Every encryption secret still held (current first), for opening sealed mail.
    pub fn encryption_secrets(&self) -> Vec<x25519_dalek::StaticSecret> {
        self.enc_keys
            .iter()
            .map(|k| x25519_dalek::StaticSecret::from(k.secret))
            .collect()
    }

    /// A snapshot of what the messaging layer needs (re-taken whenever keys change).
    pub fn message_keys(&self, doc: SignedDocument) -> MessageKeys {
        MessageKeys {
            uuid: self.uuid(),
            signing: self.signing.clone(),
            enc: self
                .encryption_secrets()
                .into_iter()
                .map(|s| (x25519_dalek::PublicKey::from(&s).to_bytes(), s))
                .collect(),
            doc,
        }
    }

    /// Replaces the identity key with a new one signed by the current key. The UUID stays;
    /// the PeerId changes. The caller persists the result and restarts the swarm.
    pub fn rotate_identity_key(&mut self) -> Result<(), IdentityError> {
        self.rotate_identity_key_to(SigningKey::from_bytes(&random_secret()).to_bytes())
    }

    /// Rotation to a given next secret key (for test vectors; use
    /// [`Identity::rotate_identity_key`] otherwise).
    pub fn rotate_identity_key_to(&mut self, next_secret: [u8; 32]) -> Result<(), IdentityError> {
        if self.key_chain.len() >= MAX_CHAIN_LINKS {
            return Err(IdentityError::ChainFull);
        }
        let next = SigningKey::from_bytes(&next_secret);
        let key = next.verifying_key().to_bytes();
        let msg = KeyLink::signed_bytes(&self.uuid(), self.key_chain.len() as u32, &key);
        let sig = self.signing.sign(&msg).to_bytes();
        self.key_chain.push(KeyLink { key, sig });
        self.signing = next;
        Ok(())
    }

    /// Replaces the encryption key if it is older than [`ENC_ROTATION_SECS`] and forgets
    /// retired keys past their grace period (forward secrecy). Returns whether anything changed.
    pub fn rotate_encryption_key_if_due(&mut self, now: u64) -> bool {
        let mut changed = false;
        if now.saturating_sub(self.enc_keys[0].created) >= ENC_ROTATION_SECS {
            self.enc_keys[0].retired = Some(now);
            self.enc_keys.insert(0, new_enc_key(now));
            changed = true;
        }
        let before = self.enc_keys.len();
        self.enc_keys.retain(|k| {
            k.retired
                .is_none_or(|r| now.saturating_sub(r) < ENC_GRACE_SECS)
        });
        changed || self.enc_keys.len() != before
    }

    /// Sets the ratchet key bundle (identity key, fallback key) that documents issued from
    /// now on publish, signed. The ratchet account that holds their secrets is kept apart
    /// (`crate::ratchet::Account`); nothing here stores them.
    pub fn set_ratchet_keys(&mut self, ik: [u8; 32], fk: [u8; 32]) {
        self.ratchet = Some((ik, fk));
    }

    /// Issues a new signed document with a higher seq. The seq is at least the current time
    /// in milliseconds, so a document issued after restoring an old backup still supersedes.
    pub fn issue_document(&mut self, reach: &[Multiaddr], now: u64) -> SignedDocument {
        // At least the issue time in ms, and never beyond what verifiers accept for it.
        self.seq = self.seq.saturating_add(1).max(now.saturating_mul(1000));
        let uuid = self.uuid();
        let enc_key = self.encryption_public();
        let enc_sig = self.sign(&IdentityDocument::enc_signed_bytes(&uuid, &enc_key));
        let doc = IdentityDocument {
            v: document::DOCUMENT_VERSION,
            uuid: *uuid.as_bytes(),
            genesis_key: self.genesis_key,
            key_chain: self.key_chain.clone(),
            current_key: self.public_key(),
            enc_key,
            enc_sig,
            ratchet: self.ratchet.map(|(ik, fk)| {
                Box::new(RatchetKeys {
                    ik,
                    fk,
                    sig: self.sign(&RatchetKeys::signed_bytes(&uuid, &ik, &fk)),
                })
            }),
            peer_id: self.peer_id().to_bytes(),
            reach: reach
                .iter()
                .map(|a| a.to_string())
                .filter(|a| a.len() <= document::MAX_ADDR_LEN)
                .take(document::MAX_REACH)
                .collect(),
            seq: self.seq,
            issued: now,
            expires: now + DOCUMENT_VALIDITY_SECS,
        };
        SignedDocument::sign(doc, &self.signing)
    }

    /// Encodes the secret material for the store.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let stored = StoredIdentity {
            v: 1,
            genesis_key: self.genesis_key,
            key_chain: self.key_chain.clone(),
            signing_key: self.signing.to_bytes(),
            enc_keys: self.enc_keys.clone(),
            seq: self.seq,
        };
        Zeroizing::new(cbor::to_vec(&stored).unwrap_or_default())
    }

    /// Decodes and checks stored secret material.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let s: StoredIdentity = cbor::from_slice(bytes, 64 * 1024)
            .map_err(|e| IdentityError::Corrupt(e.to_string()))?;
        if s.v != 1 {
            return Err(IdentityError::Corrupt(format!("unknown version {}", s.v)));
        }
        if s.enc_keys.first().is_none_or(|k| k.retired.is_some()) {
            return Err(IdentityError::Corrupt("no current encryption key".into()));
        }
        let signing = SigningKey::from_bytes(&s.signing_key);
        let tip = document::verify_chain(
            &uuid_from_genesis(&s.genesis_key),
            &s.genesis_key,
            &s.key_chain,
        )
        .map_err(|e| IdentityError::Corrupt(e.to_string()))?;
        if signing.verifying_key() != tip {
            return Err(IdentityError::Corrupt(
                "signing key does not match the key chain".into(),
            ));
        }
        Ok(Identity {
            genesis_key: s.genesis_key,
            key_chain: s.key_chain.clone(),
            signing,
            enc_keys: s.enc_keys.clone(),
            seq: s.seq,
            ratchet: None,
        })
    }
}

/// 32 bytes from the operating system's CSPRNG. Without one the node cannot create keys
/// safely at all, so failing to read it is fatal.
/// 32 bytes from the operating system's random number generator.
pub(crate) fn random_secret() -> [u8; 32] {
    let mut b = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut b) {
        panic!("the operating system's random number generator failed: {e}");
    }
    b
}

fn new_enc_key(now: u64) -> EncKey {
    EncKey {
        secret: random_secret(),
        created: now,
        retired: None,
    }
}

#[cfg(test)]
mod tests;

//! The message envelope and its two layers, specified in `protocols/messages.md`:
//! the envelope is signed by the sender's identity key (with the sender's identity
//! document alongside, so the recipient needs no lookup), then the signed form is sealed
//! to the recipient's current X25519 key. Relays and mailboxes see only the sealed form,
//! so they never learn the sender. Attachment bytes travel separately, in chunks sealed
//! with a per-attachment key carried inside the signed envelope.
//!
//! Pure code: no network, no disk.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use ed25519_dalek::{Signer, VerifyingKey};
use hkdf::Hkdf;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::cbor;
use crate::counters::Counter;
use crate::identity::{MessageKeys, SignedDocument, MAX_DOCUMENT_BYTES};
use crate::wire::verbs::Nack;

/// Envelope format version.
pub const ENVELOPE_VERSION: u32 = 1;
/// Sealed format version.
pub const SEALED_VERSION: u32 = 1;
/// Longest text body.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 32;
/// Longest attachment file name.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest MIME type.
pub const MAX_MIME_BYTES: usize = 127;
/// Longest `kind`.
pub const MAX_KIND_BYTES: usize = 32;
/// Largest encoded envelope (body plus attachment descriptions).
pub const MAX_ENVELOPE_BYTES: usize = MAX_TEXT_BYTES + MAX_ATTACHMENTS * 512 + 1024;
/// Largest signed form: envelope, signature, sender document, CBOR framing.
pub const MAX_SIGNED_BYTES: usize = MAX_ENVELOPE_BYTES + MAX_DOCUMENT_BYTES + 256;
/// Largest sealed form.
pub const MAX_SEALED_BYTES: usize = MAX_SIGNED_BYTES + 256;
/// Attachment bytes per chunk (the last chunk of an attachment may be shorter).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// How far in the future a message timestamp may be (clock skew).
pub const MAX_FUTURE_SKEW_MS: u64 = 10 * 60 * 1000;
/// Default largest attachment (configurable per node).
pub const DEFAULT_MAX_ATTACHMENT_BYTES: u64 = 16 * 1024 * 1024;

const SIGN_DOMAIN: &[u8] = b"ptpchat/envelope/1";
const SEAL_INFO: &[u8] = b"ptpchat/seal/1";
const CHUNK_AAD: &[u8] = b"ptpchat/chunk/1";

/// An ephemeral sealing key is used for at most this many messages…
const EPHEMERAL_MAX_USES: u32 = 1024;
/// …and for at most this long, then forgotten.
const EPHEMERAL_LIFETIME: Duration = Duration::from_secs(60);
/// Recipients an ephemeral key is kept for at once (sender side).
const SEAL_CACHE_RECIPIENTS: usize = 256;
/// Derived keys remembered on the receiving side, so a burst sealed with one ephemeral
/// key costs one Diffie-Hellman.
const OPEN_CACHE_ENTRIES: usize = 1024;

/// What a message says, signed by its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(with = "serde_bytes")]
    pub msg_id: [u8; 16],
    #[serde(with = "serde_bytes")]
    pub from: [u8; 16],
    #[serde(with = "serde_bytes")]
    pub to: [u8; 16],
    /// Milliseconds since the Unix epoch, by the sender's clock.
    pub ts: u64,
    /// `"text"` for a direct text message.
    pub kind: String,
    pub body: String,
    pub attachments: Vec<AttachmentMeta>,
}

/// An attachment's description; its bytes follow in sealed chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    pub name: String,
    pub mime: String,
    pub size: u64,
    #[serde(with = "serde_bytes")]
    pub sha256: [u8; 32],
    /// The ChaCha20-Poly1305 key its chunks are sealed with.
    #[serde(with = "serde_bytes")]
    pub key: [u8; 32],
}

impl Envelope {
    /// The message id as a UUID.
    pub fn msg_id(&self) -> Uuid {
        Uuid::from_bytes(self.msg_id)
    }

    /// The sender's UUID.
    pub fn from(&self) -> Uuid {
        Uuid::from_bytes(self.from)
    }

    /// The recipient's UUID.
    pub fn to(&self) -> Uuid {
        Uuid::from_bytes(self.to)
    }
}

/// A signed body with its signature and the signer's identity document: the signed layer
/// of direct messages and of channel frames (each with its own signing domain).
#[derive(Serialize, Deserialize)]
pub(crate) struct SignedForm {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub sig: [u8; 64],
    #[serde(with = "serde_bytes")]
    pub sender: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct SealedForm {
    v: u32,
    /// First 8 bytes of SHA-256 of the recipient encryption key it is sealed to.
    #[serde(with = "serde_bytes")]
    rk: [u8; 8],
    #[serde(with = "serde_bytes")]
    eph: [u8; 32],
    #[serde(with = "serde_bytes")]
    nonce: [u8; 12],
    #[serde(with = "serde_bytes")]
    ct: Vec<u8>,
}

/// Why a message was refused. [`Reject::reason`] is the word sent in the NACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message over a size limit: {0}")]
    TooLarge(String),
    #[error("cannot open the sealed message")]
    Undecryptable,
    #[error("the sender's identity document is invalid: {0}")]
    BadSenderDocument(String),
    #[error("the sender document is for another UUID than the envelope's sender")]
    SenderMismatch,
    #[error("the signature does not verify with the sender's current key")]
    BadSignature,
    #[error("the sending peer is not the sender's PeerId")]
    PeerMismatch,
    #[error("the message is addressed to someone else")]
    WrongRecipient,
    #[error("signed with a retired key of the sender")]
    StaleSenderKey,
    #[error("timestamp too far in the future")]
    BadTimestamp,
}

impl Reject {
    /// The NACK for this refusal (see protocols/messages.md section 2).
    pub fn nack(&self) -> Nack {
        match self {
            Reject::Malformed(_) => Nack::Malformed,
            Reject::TooLarge(_) => Nack::TooLarge,
            Reject::Undecryptable => Nack::Undecryptable,
            Reject::BadSenderDocument(_) => Nack::BadSenderDocument,
            Reject::SenderMismatch => Nack::SenderMismatch,
            Reject::BadSignature => Nack::BadSignature,
            Reject::PeerMismatch => Nack::PeerMismatch,
            Reject::WrongRecipient => Nack::WrongRecipient,
            Reject::StaleSenderKey => Nack::StaleSenderKey,
            Reject::BadTimestamp => Nack::BadTimestamp,
        }
    }

    /// The stable NACK word for this refusal.
    pub fn reason(&self) -> &'static str {
        self.nack().as_str()
    }

    /// The counter this refusal is counted under.
    pub fn counter(&self) -> Counter {
        match self {
            Reject::Malformed(_) => Counter::MessageMalformed,
            Reject::TooLarge(_) => Counter::MessageTooLarge,
            Reject::Undecryptable => Counter::MessageUndecryptable,
            Reject::BadSenderDocument(_) => Counter::MessageBadSenderDocument,
            Reject::SenderMismatch => Counter::MessageSenderMismatch,
            Reject::BadSignature => Counter::MessageBadSignature,
            Reject::PeerMismatch => Counter::MessagePeerMismatch,
            Reject::WrongRecipient => Counter::MessageWrongRecipient,
            Reject::StaleSenderKey => Counter::MessageStaleSenderKey,
            Reject::BadTimestamp => Counter::MessageBadTimestamp,
        }
    }
}

/// Encodes and signs `env` with our current identity key; our document goes alongside.
pub fn sign(env: &Envelope, keys: &MessageKeys) -> Vec<u8> {
    sign_body(SIGN_DOMAIN, cbor::to_vec(env).unwrap_or_default(), keys)
}

/// Signs an encoded `body` under `domain` and wraps it in the signed form.
pub(crate) fn sign_body(domain: &[u8], body: Vec<u8>, keys: &MessageKeys) -> Vec<u8> {
    let sig = keys.signing.sign(&signed_bytes(domain, &body)).to_bytes();
    cbor::to_vec(&SignedForm {
        body,
        sig,
        sender: keys.doc.bytes().to_vec(),
    })
    .unwrap_or_default()
}

/// Checks `form`'s signature under `domain` with `sender`'s current identity key.
pub(crate) fn check_signature(
    domain: &[u8],
    form: &SignedForm,
    sender: &SignedDocument,
    key_cache: Option<&KeyCache>,
) -> Result<(), Reject> {
    let key = match key_cache {
        Some(cache) => cache.get(&sender.doc().current_key)?,
        None => {
            VerifyingKey::from_bytes(&sender.doc().current_key).map_err(|_| Reject::BadSignature)?
        }
    };
    let sig = ed25519_dalek::Signature::from_bytes(&form.sig);
    key.verify_strict(&signed_bytes(domain, &form.body), &sig)
        .map_err(|_| Reject::BadSignature)
}

fn signed_bytes(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + body.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(body);
    m
}

/// The recipient-key tag carried in the sealed form.
pub fn key_tag(enc_public: &[u8; 32]) -> [u8; 8] {
    let h = Sha256::digest(enc_public);
    let mut t = [0u8; 8];
    t.copy_from_slice(&h[..8]);
    t
}

fn derive_key(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(recipient);
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = Hkdf::<Sha256>::new(Some(&salt), shared).expand(SEAL_INFO, okm.as_mut());
    okm
}

fn seal_aad(rk: &[u8; 8], eph: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEAL_INFO.len() + 40);
    aad.extend_from_slice(SEAL_INFO);
    aad.extend_from_slice(rk);
    aad.extend_from_slice(eph);
    aad
}

/// Seals `plaintext` to `recipient` with a given ephemeral secret and nonce (the
/// deterministic core, used by [`SealCache`] and by the test vectors).
pub fn seal_with(
    eph_secret: [u8; 32],
    nonce: [u8; 12],
    recipient: &[u8; 32],
    plaintext: &[u8],
) -> Vec<u8> {
    let eph = x25519_dalek::StaticSecret::from(eph_secret);
    let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(*recipient));
    let key = derive_key(shared.as_bytes(), &eph_pub, recipient);
    seal_under(&key, eph_pub, nonce, recipient, plaintext)
}

fn seal_under(
    key: &[u8; 32],
    eph: [u8; 32],
    nonce: [u8; 12],
    recipient: &[u8; 32],
    plaintext: &[u8],
) -> Vec<u8> {
    let rk = key_tag(recipient);
    let cipher = ChaCha20Poly1305::new(key.into());
    let aad = seal_aad(&rk, &eph);
    let ct = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    cbor::to_vec(&SealedForm {
        v: SEALED_VERSION,
        rk,
        eph,
        nonce,
        ct,
    })
    .unwrap_or_default()
}

struct Ephemeral {
    public: [u8; 32],
    key: Zeroizing<[u8; 32]>,
    born: Instant,
    uses: u32,
}

/// The sender's sealing state: one ephemeral X25519 key per recipient key, replaced after
/// [`EPHEMERAL_MAX_USES`] messages or [`EPHEMERAL_LIFETIME`], whichever comes first. A
/// burst of messages to one recipient then costs one Diffie-Hellman, not one each; every
/// message still gets its own random nonce.
#[derive(Default)]
pub struct SealCache {
    by_recipient: HashMap<[u8; 32], Ephemeral>,
}

impl SealCache {
    /// Seals `plaintext` to the recipient encryption key `recipient`.
    pub fn seal(&mut self, recipient: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
        let now = Instant::now();
        let fresh =
            |e: &Ephemeral| e.uses < EPHEMERAL_MAX_USES && now - e.born < EPHEMERAL_LIFETIME;
        if !self.by_recipient.get(recipient).is_some_and(fresh) {
            if self.by_recipient.len() >= SEAL_CACHE_RECIPIENTS {
                self.by_recipient.retain(|_, e| fresh(e));
                if self.by_recipient.len() >= SEAL_CACHE_RECIPIENTS {
                    self.by_recipient.clear();
                }
            }
            let secret = x25519_dalek::StaticSecret::from(crate::identity::random_secret());
            let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
            let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*recipient));
            let key = derive_key(shared.as_bytes(), &public, recipient);
            self.by_recipient.insert(
                *recipient,
                Ephemeral {
                    public,
                    key,
                    born: now,
                    uses: 0,
                },
            );
        }
        let e = self
            .by_recipient
            .get_mut(recipient)
            .expect("inserted above when missing");
        e.uses += 1;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&crate::identity::random_secret()[..12]);
        seal_under(&e.key, e.public, nonce, recipient, plaintext)
    }
}

/// (recipient key tag, ephemeral public key).
type OpenSlot = ([u8; 8], [u8; 32]);

/// The recipient's cache of derived keys, by (recipient key tag, ephemeral key).
#[derive(Default)]
pub struct OpenCache {
    keys: HashMap<OpenSlot, Zeroizing<[u8; 32]>>,
    order: VecDeque<OpenSlot>,
}

impl OpenCache {
    fn get(&self, k: &OpenSlot) -> Option<[u8; 32]> {
        self.keys.get(k).map(|z| **z)
    }

    fn insert(&mut self, k: OpenSlot, key: Zeroizing<[u8; 32]>) {
        if self.keys.insert(k, key).is_none() {
            self.order.push_back(k);
            while self.order.len() > OPEN_CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.keys.remove(&old);
                }
            }
        }
    }
}

/// Opens a sealed message with whichever of our encryption keys it names. `cache` may be
/// shared between threads; the Diffie-Hellman runs outside its lock.
pub fn open(
    sealed: &[u8],
    keys: &MessageKeys,
    cache: &crate::shared::Shared<OpenCache>,
) -> Result<Zeroizing<Vec<u8>>, Reject> {
    if sealed.len() > MAX_SEALED_BYTES {
        return Err(Reject::TooLarge(format!(
            "sealed message of {} bytes (limit {MAX_SEALED_BYTES})",
            sealed.len()
        )));
    }
    let form: SealedForm =
        cbor::from_slice(sealed, MAX_SEALED_BYTES).map_err(|e| Reject::Malformed(e.to_string()))?;
    if form.v != SEALED_VERSION {
        return Err(Reject::Malformed(format!("sealed version {}", form.v)));
    }
    let Some((public, secret)) = keys.enc.iter().find(|(p, _)| key_tag(p) == form.rk) else {
        return Err(Reject::Undecryptable);
    };
    let slot = (form.rk, form.eph);
    let cached = cache.lock().get(&slot);
    let key = match cached {
        Some(k) => Zeroizing::new(k),
        None => {
            let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(form.eph));
            if !shared.was_contributory() {
                return Err(Reject::Undecryptable);
            }
            let key = derive_key(shared.as_bytes(), &form.eph, public);
            cache.lock().insert(slot, key.clone());
            key
        }
    };
    let cipher = ChaCha20Poly1305::new((&*key).into());
    let aad = seal_aad(&form.rk, &form.eph);
    cipher
        .decrypt(
            &form.nonce.into(),
            Payload {
                msg: &form.ct,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| Reject::Undecryptable)
}

/// Checks a sender document given the envelope's `from` and the document bytes.
pub type SenderDocumentCheck<'a> = dyn Fn(&Uuid, &[u8]) -> Result<SignedDocument, Reject> + 'a;

/// What the recipient checks a message against.
pub struct VerifyContext<'a> {
    /// Our UUID: the only acceptable `to`.
    pub me: Uuid,
    /// The peer the message came from, for a direct delivery (must be the sender's PeerId).
    pub peer: Option<PeerId>,
    pub now_ms: u64,
    /// Largest attachment we accept.
    pub max_attachment: u64,
    /// Checks the sender's document (decoding it unless it is the one already held, and
    /// refusing one older than what we hold). Given the envelope's `from` and the bytes.
    pub sender_document: &'a SenderDocumentCheck<'a>,
    /// Parsed sender keys, so a burst from one sender decompresses its key once.
    pub key_cache: Option<&'a KeyCache>,
}

/// Verifying keys already parsed (bounded; cleared when full).
#[derive(Default)]
pub struct KeyCache(crate::shared::Shared<HashMap<[u8; 32], VerifyingKey>>);

impl KeyCache {
    const MAX: usize = 4096;

    fn get(&self, bytes: &[u8; 32]) -> Result<VerifyingKey, Reject> {
        let held = self.0.lock().get(bytes).copied();
        if let Some(k) = held {
            return Ok(k);
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| Reject::BadSignature)?;
        let mut m = self.0.lock();
        if m.len() >= Self::MAX {
            m.clear();
        }
        m.insert(*bytes, key);
        Ok(key)
    }
}

/// A message whose signature, sender, recipient and limits were all checked.
#[derive(Clone, Debug)]
pub struct Verified {
    pub envelope: Envelope,
    pub sender: SignedDocument,
}

/// Checks an opened (signed-form) message. Nothing in it is trusted before this returns.
pub fn verify(signed: &[u8], cx: &VerifyContext<'_>) -> Result<Verified, Reject> {
    let form: SignedForm =
        cbor::from_slice(signed, MAX_SIGNED_BYTES).map_err(|e| Reject::Malformed(e.to_string()))?;
    let env: Envelope = cbor::from_slice(&form.body, MAX_ENVELOPE_BYTES).map_err(|e| match e {
        cbor::CborError::TooLarge { .. } => Reject::TooLarge(e.to_string()),
        _ => Reject::Malformed(e.to_string()),
    })?;
    check_limits(&env, cx.max_attachment)?;
    if form.sender.len() > MAX_DOCUMENT_BYTES {
        return Err(Reject::BadSenderDocument("over the size limit".into()));
    }
    let sender = (cx.sender_document)(&env.from(), &form.sender)?;
    if sender.doc().uuid != env.from {
        return Err(Reject::SenderMismatch);
    }
    check_signature(SIGN_DOMAIN, &form, &sender, cx.key_cache)?;
    if env.to != *cx.me.as_bytes() {
        return Err(Reject::WrongRecipient);
    }
    if let Some(peer) = cx.peer {
        if sender.doc().peer_id() != Some(peer) {
            return Err(Reject::PeerMismatch);
        }
    }
    if env.ts > cx.now_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
        return Err(Reject::BadTimestamp);
    }
    Ok(Verified {
        envelope: env,
        sender,
    })
}

fn check_limits(env: &Envelope, max_attachment: u64) -> Result<(), Reject> {
    if env.v != ENVELOPE_VERSION {
        return Err(Reject::Malformed(format!("envelope version {}", env.v)));
    }
    if env.kind.is_empty() || env.kind.len() > MAX_KIND_BYTES {
        return Err(Reject::Malformed("bad kind".into()));
    }
    if env.body.len() > MAX_TEXT_BYTES {
        return Err(Reject::TooLarge(format!(
            "text of {} bytes (limit {MAX_TEXT_BYTES})",
            env.body.len()
        )));
    }
    if env.attachments.len() > MAX_ATTACHMENTS {
        return Err(Reject::TooLarge(format!(
            "{} attachments (limit {MAX_ATTACHMENTS})",
            env.attachments.len()
        )));
    }
    for a in &env.attachments {
        if a.name.len() > MAX_NAME_BYTES || a.mime.len() > MAX_MIME_BYTES {
            return Err(Reject::Malformed("attachment name or type too long".into()));
        }
        if a.size > max_attachment {
            return Err(Reject::TooLarge(format!(
                "attachment of {} bytes (limit {max_attachment})",
                a.size
            )));
        }
    }
    Ok(())
}

fn chunk_nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

/// ChaCha20-Poly1305 under a shared key, with `domain ‖ id ‖ n` (n big-endian) as the
/// associated data: attachment chunks (message id, attachment number) and private channel
/// frames (channel id, key epoch) are both sealed this way.
pub(crate) fn seal_bound(
    key: &[u8; 32],
    nonce: [u8; 12],
    domain: &[u8],
    id: &[u8; 16],
    n: u32,
    plaintext: &[u8],
) -> Vec<u8> {
    ChaCha20Poly1305::new(key.into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad: &bound_aad(domain, id, n),
            },
        )
        .unwrap_or_default()
}

/// Opens what [`seal_bound`] sealed; fails if it was altered or bound to another id or n.
pub(crate) fn open_bound(
    key: &[u8; 32],
    nonce: [u8; 12],
    domain: &[u8],
    id: &[u8; 16],
    n: u32,
    sealed: &[u8],
) -> Result<Vec<u8>, Reject> {
    ChaCha20Poly1305::new(key.into())
        .decrypt(
            &nonce.into(),
            Payload {
                msg: sealed,
                aad: &bound_aad(domain, id, n),
            },
        )
        .map_err(|_| Reject::Undecryptable)
}

fn bound_aad(domain: &[u8], id: &[u8; 16], n: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(domain.len() + 20);
    aad.extend_from_slice(domain);
    aad.extend_from_slice(id);
    aad.extend_from_slice(&n.to_be_bytes());
    aad
}

/// Seals chunk number `index` of an attachment.
pub fn seal_chunk(
    key: &[u8; 32],
    msg_id: &[u8; 16],
    attachment: u32,
    index: u64,
    data: &[u8],
) -> Vec<u8> {
    seal_bound(key, chunk_nonce(index), CHUNK_AAD, msg_id, attachment, data)
}

/// Opens chunk number `index` of an attachment; fails if it was altered or misplaced.
pub fn open_chunk(
    key: &[u8; 32],
    msg_id: &[u8; 16],
    attachment: u32,
    index: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, Reject> {
    open_bound(
        key,
        chunk_nonce(index),
        CHUNK_AAD,
        msg_id,
        attachment,
        sealed,
    )
}

/// Reads back the envelope of a message we signed ourselves (from our own outbox), without
/// verifying it again.
pub fn read_own(signed: &[u8]) -> Option<Envelope> {
    let form: SignedForm = cbor::from_slice(signed, MAX_SIGNED_BYTES).ok()?;
    cbor::from_slice(&form.body, MAX_ENVELOPE_BYTES).ok()
}

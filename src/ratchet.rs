//! Per-message forward secrecy for direct messages: Olm's double ratchet, from vodozemac
//! (Matrix's audited Rust implementation), wrapped in our own types so the rest of
//! ptpchat never touches vodozemac directly. Decision 0022 says why and how it sits inside
//! the sealed form; `protocols/ratchet.md` specifies the bytes.
//!
//! Pure code: no network, no disk. Every state change is explicit, so the caller can
//! commit it durably before it acts on the result:
//! - [`Account`] holds our ratchet identity key, our fallback keys and our one-time keys.
//! - [`Peer`] holds our sessions with one contact. [`Peer::decrypt`] works on a copy and
//!   hands back the new state with the plaintext (and, for a first message that started a
//!   session, the account without the one-time key it used), so a message whose commit
//!   fails leaves the stored state as it was and the same ciphertext still opens on the
//!   next attempt.
//!   [`Peer::encrypt`] changes the state in place: the caller must store the new state
//!   before the ciphertext leaves the node, or a restart would use the same message key
//!   twice.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vodozemac::olm::{self, MessageType, OlmMessage, SessionConfig};
use vodozemac::Curve25519PublicKey;
use zeroize::Zeroizing;

use crate::cbor;

/// Sessions kept per contact, newest first. Two nodes that write to each other for the
/// first time at the same moment each start one; both stay usable until the older one
/// falls off.
pub const MAX_SESSIONS_PER_PEER: usize = 4;
/// Largest ratchet message we decode (the signed form plus Olm's framing and padding).
pub const MAX_RATCHET_BYTES: usize = crate::wire::envelope::MAX_SIGNED_BYTES + 512;
/// One-time keys an account holds at most (vodozemac's bound, published or not: 100
/// times the 50 it lets one publish at once).
pub const MAX_ONE_TIME_KEYS: usize = 5000;
/// One-time keys made in one call.
pub const MAX_ONE_TIME_KEYS_AT_ONCE: usize = 100;
/// Largest stored state of one contact we load (4 session pickles, each with at most 5
/// receiving chains of 40 skipped keys, are far below it).
const MAX_STORED_PEER_BYTES: usize = 1 << 20;

const PICKLE_INFO: &[u8] = b"ptpchat/ratchet-pickle/1";

/// Olm v1 (the configuration every Olm implementation speaks, and the one vodozemac
/// enables without experimental features).
fn config() -> SessionConfig {
    SessionConfig::version_1()
}

/// Why a ratchet message could not be opened, or a session not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RatchetError {
    #[error("malformed ratchet message: {0}")]
    Malformed(String),
    /// No session we hold opens it and it is not a first message: the sender's session is
    /// one we lost (an old backup restored) or never had.
    #[error("no session opens this message")]
    NoSession,
    /// A first message names a one-time key we do not hold (used already, or never ours).
    #[error("unknown or used one-time key")]
    UnknownOneTimeKey,
    /// A key was all zeros or of small order.
    #[error("non-contributory key")]
    BadKey,
    #[error("stored ratchet state is corrupt: {0}")]
    Corrupt(String),
}

/// The wire form inside the sealed form (`protocols/ratchet.md`): the sender's ratchet
/// identity key (so the recipient finds its sessions), Olm's message type and bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatchetMessage {
    /// The sender's Curve25519 ratchet identity key.
    #[serde(with = "serde_bytes")]
    pub ik: [u8; 32],
    /// 0: a first ("pre-key") message, which can start a session; 1: a normal one.
    pub t: u8,
    /// Olm's own encoding of the message.
    #[serde(with = "serde_bytes")]
    pub m: Vec<u8>,
}

impl RatchetMessage {
    pub fn encode(&self) -> Vec<u8> {
        cbor::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<RatchetMessage, RatchetError> {
        let m: RatchetMessage = cbor::from_slice(bytes, MAX_RATCHET_BYTES)
            .map_err(|e| RatchetError::Malformed(e.to_string()))?;
        m.olm()?;
        Ok(m)
    }

    /// Whether this message can start a session.
    pub fn is_first(&self) -> bool {
        self.t == MessageType::PreKey as u8
    }

    /// What identifies this exact ciphertext: a second copy of it (from a mailbox and
    /// directly, or a retry) is a duplicate, which the ratchet itself could no longer open.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"ptpchat/ratchet-digest/1");
        h.update(self.ik);
        h.update([self.t]);
        h.update(&self.m);
        h.finalize().into()
    }

    fn olm(&self) -> Result<OlmMessage, RatchetError> {
        OlmMessage::from_parts(self.t as usize, &self.m)
            .map_err(|e| RatchetError::Malformed(e.to_string()))
    }
}

/// What a stranger needs to start a session with us while we are offline, published in
/// our identity document and signed by our identity key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKeys {
    /// Our Curve25519 ratchet identity key.
    pub identity: [u8; 32],
    /// Our current fallback key (a one-time key that may be used more than once, until we
    /// replace it).
    pub fallback: [u8; 32],
}

impl PublicKeys {
    /// The bytes the identity key signs: domain, UUID, then both keys.
    pub fn signed_bytes(&self, uuid: &uuid::Uuid) -> Vec<u8> {
        crate::identity::RatchetKeys::signed_bytes(uuid, &self.identity, &self.fallback)
    }
}

/// Our ratchet identity: one per home.
pub struct Account {
    inner: olm::Account,
}

impl Clone for Account {
    fn clone(&self) -> Self {
        Account {
            inner: olm::Account::from_pickle(self.inner.pickle()),
        }
    }
}

impl Default for Account {
    fn default() -> Self {
        Self::new()
    }
}

impl Account {
    /// A new account with a fallback key.
    pub fn new() -> Account {
        let mut inner = olm::Account::new();
        inner.generate_fallback_key();
        Account { inner }
    }

    pub fn identity_key(&self) -> [u8; 32] {
        self.inner.curve25519_key().to_bytes()
    }

    /// Our identity key and current fallback key. (Keys are never marked "published" in
    /// vodozemac's sense: ours are published in the identity document, and vodozemac lists
    /// the fallback key only while it is unpublished.)
    /// `None` only for an account without a fallback key, which [`Account::new`] never
    /// makes: publish nothing rather than a key nobody can use.
    pub fn public_keys(&self) -> Option<PublicKeys> {
        let fallback = self.inner.fallback_key().values().next()?.to_bytes();
        Some(PublicKeys {
            identity: self.identity_key(),
            fallback,
        })
    }

    /// Replaces the fallback key. vodozemac keeps the previous one until the next
    /// rotation (or [`Account::forget_previous_fallback_key`]), so first messages already
    /// made with it still open; the one before is deleted, and with it the ability to
    /// open anything sent to it.
    ///
    /// Every message sent before the recipient answers is a first message, and while the
    /// fallback key it was made with is held, a copy of the account opens it: first
    /// messages made with the fallback key have forward secrecy only from the fallback
    /// key's deletion on. Those made with a one-time key have it from their opening on.
    pub fn rotate_fallback_key(&mut self) {
        self.inner.generate_fallback_key();
    }

    /// Deletes the previous fallback key (after the grace period in which first messages
    /// made with it may still arrive). True if there was one.
    pub fn forget_previous_fallback_key(&mut self) -> bool {
        self.inner.forget_fallback_key()
    }

    /// Makes up to `count` (at most [`MAX_ONE_TIME_KEYS_AT_ONCE`]) new one-time keys and
    /// returns their public halves, to be handed out (each once). The account holds at
    /// most [`MAX_ONE_TIME_KEYS`]; beyond that the oldest are dropped, so whoever hands
    /// keys out must bound how fast a requester can drain them.
    pub fn new_one_time_keys(&mut self, count: usize) -> Vec<[u8; 32]> {
        let made = self
            .inner
            .generate_one_time_keys(count.min(MAX_ONE_TIME_KEYS_AT_ONCE));
        made.created.iter().map(|k| k.to_bytes()).collect()
    }

    /// Starts a session with a contact from its published keys (or a one-time key it
    /// handed out). Its first messages are pre-key messages, until it answers.
    pub fn start(
        &self,
        their_identity: [u8; 32],
        their_key: [u8; 32],
    ) -> Result<Session, RatchetError> {
        self.inner
            .create_outbound_session(
                config(),
                Curve25519PublicKey::from_bytes(their_identity),
                Curve25519PublicKey::from_bytes(their_key),
            )
            .map(Session)
            .map_err(|_| RatchetError::BadKey)
    }

    /// Starts the session a first message asks for, opening that message. A one-time key
    /// it names is removed from the account (see [`Peer::decrypt`], which does this on a
    /// copy).
    fn accept(
        &mut self,
        ik: [u8; 32],
        pre: &olm::PreKeyMessage,
    ) -> Result<(Session, Zeroizing<Vec<u8>>), RatchetError> {
        let made = self
            .inner
            .create_inbound_session(config(), Curve25519PublicKey::from_bytes(ik), pre)
            .map_err(|e| match e {
                olm::SessionCreationError::MissingOneTimeKey(_) => RatchetError::UnknownOneTimeKey,
                olm::SessionCreationError::NonContributoryKey => RatchetError::BadKey,
                olm::SessionCreationError::MismatchedIdentityKey(..) => RatchetError::Malformed(
                    "identity key differs from the pre-key message's".into(),
                ),
                other => RatchetError::Malformed(other.to_string()),
            })?;
        Ok((Session(made.session), Zeroizing::new(made.plaintext)))
    }

    /// The account as stored, encrypted under a key derived from `secret`.
    pub fn to_stored(&self, secret: &[u8; 32]) -> String {
        self.inner.pickle().encrypt(&pickle_key(secret))
    }

    pub fn from_stored(stored: &str, secret: &[u8; 32]) -> Result<Account, RatchetError> {
        olm::AccountPickle::from_encrypted(stored, &pickle_key(secret))
            .map(|p| Account {
                inner: olm::Account::from_pickle(p),
            })
            .map_err(|e| RatchetError::Corrupt(e.to_string()))
    }
}

/// The key pickles are encrypted with: from the home's own secret, so a pickle copied to
/// another home does not load there by mistake. (Anyone with the home has the secret; this
/// is framing, not protection.)
fn pickle_key(secret: &[u8; 32]) -> [u8; 32] {
    let hk = hkdf::Hkdf::<Sha256>::new(None, secret);
    let mut out = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand(PICKLE_INFO, &mut out);
    out
}

/// One double ratchet with one contact.
pub struct Session(olm::Session);

impl Clone for Session {
    fn clone(&self) -> Self {
        Session(olm::Session::from_pickle(self.0.pickle()))
    }
}

impl Session {
    /// vodozemac refuses only when the contact's ratchet key is non-contributory (a
    /// hostile contact's low-order point).
    fn encrypt(&mut self, ik: [u8; 32], plaintext: &[u8]) -> Result<RatchetMessage, RatchetError> {
        let (t, m) = self
            .0
            .encrypt(plaintext)
            .map_err(|_| RatchetError::BadKey)?
            .to_parts();
        let t = u8::try_from(t).map_err(|_| RatchetError::Malformed(format!("type {t}")))?;
        Ok(RatchetMessage { ik, t, m })
    }

    /// Whether a first message belongs to this session.
    fn made_for(&self, pre: &olm::PreKeyMessage) -> bool {
        pre.session_keys() == self.0.session_keys()
    }
}

/// Our sessions with one contact, newest first, as stored.
#[derive(Clone, Default)]
pub struct Peer {
    sessions: Vec<Session>,
}

/// A decrypted message and the state to store with it.
pub struct Opened {
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The contact's sessions after this message; store before acknowledging it.
    pub peer: Peer,
    /// For a message that started a session: the account after it (a one-time key it
    /// used is gone), to store with the message.
    pub account: Option<Account>,
}

impl Peer {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Adds a session as the newest (and the one we send with), dropping the oldest
    /// beyond [`MAX_SESSIONS_PER_PEER`].
    pub fn add(&mut self, session: Session) {
        self.sessions.insert(0, session);
        self.sessions.truncate(MAX_SESSIONS_PER_PEER);
    }

    /// Forgets every session (the contact lost its state: the next message starts anew).
    pub fn clear(&mut self) {
        self.sessions.clear();
    }

    /// Encrypts with the newest session: `Ok(None)` if there is none (start one first).
    /// A session the contact made unusable (a bad ratchet key) is dropped and the error
    /// returned, so the caller starts a new one. The caller stores the new state before
    /// the ciphertext leaves the node.
    pub fn encrypt(
        &mut self,
        our_ik: [u8; 32],
        plaintext: &[u8],
    ) -> Result<Option<RatchetMessage>, RatchetError> {
        let Some(session) = self.sessions.first_mut() else {
            return Ok(None);
        };
        match session.encrypt(our_ik, plaintext) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                self.sessions.remove(0);
                Err(e)
            }
        }
    }

    /// Opens a message from this contact with the sessions we hold, or, for a first
    /// message none of them matches, with a new session from `account`. Nothing here
    /// changes: the new state comes back in [`Opened`].
    pub fn decrypt(
        &self,
        account: &Account,
        message: &RatchetMessage,
    ) -> Result<Opened, RatchetError> {
        let olm = message.olm()?;
        let pre = match &olm {
            OlmMessage::PreKey(pre) => Some(pre),
            OlmMessage::Normal(_) => None,
        };
        for (i, s) in self.sessions.iter().enumerate() {
            if pre.is_some_and(|pre| !s.made_for(pre)) {
                continue;
            }
            let mut s = s.clone();
            if let Ok(plaintext) = s.0.decrypt(&olm) {
                // A session that just opened a message becomes the one we answer with.
                let mut sessions = Vec::with_capacity(self.sessions.len());
                sessions.push(s);
                sessions.extend(
                    self.sessions
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, other)| other.clone()),
                );
                return Ok(Opened {
                    plaintext: Zeroizing::new(plaintext),
                    peer: Peer { sessions },
                    account: None,
                });
            }
            if pre.is_some() {
                // The session it was made for can no longer open it: a replay of a
                // first message whose key was used.
                return Err(RatchetError::NoSession);
            }
        }
        let Some(pre) = pre else {
            return Err(RatchetError::NoSession);
        };
        let mut account = account.clone();
        let (session, plaintext) = account.accept(message.ik, pre)?;
        let mut peer = self.clone();
        peer.add(session);
        Ok(Opened {
            plaintext,
            peer,
            account: Some(account),
        })
    }

    /// The sessions as stored (CBOR list of encrypted pickles).
    pub fn to_stored(&self, secret: &[u8; 32]) -> Vec<u8> {
        let key = pickle_key(secret);
        let list: Vec<String> = self
            .sessions
            .iter()
            .map(|s| s.0.pickle().encrypt(&key))
            .collect();
        cbor::to_vec(&list).unwrap_or_default()
    }

    pub fn from_stored(bytes: &[u8], secret: &[u8; 32]) -> Result<Peer, RatchetError> {
        let key = pickle_key(secret);
        let list: Vec<String> = cbor::from_slice(bytes, MAX_STORED_PEER_BYTES)
            .map_err(|e| RatchetError::Corrupt(e.to_string()))?;
        let sessions = list
            .iter()
            .take(MAX_SESSIONS_PER_PEER)
            .map(|p| {
                olm::SessionPickle::from_encrypted(p, &key)
                    .map(|p| Session(olm::Session::from_pickle(p)))
                    .map_err(|e| RatchetError::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Peer { sessions })
    }
}

#[cfg(test)]
mod tests;

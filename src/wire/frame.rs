//! Channel wire formats, specified in `protocols/channels.md`: the signed channel frame
//! (JOIN, LEAVE, CHANNEL, TEXT) that travels on a channel's gossipsub topic, the sealed
//! form a private channel wraps it in, and the key grant (KEY) that a member sends to
//! another inside a direct message.
//!
//! Pure code: no network, no disk.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteArray;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cbor;
use crate::counters::Counter;
use crate::identity::{MessageKeys, SignedDocument, MAX_DOCUMENT_BYTES};
use crate::wire::envelope::{
    check_signature, open_bound, seal_bound, sign_body, KeyCache, Reject, SenderDocumentCheck,
    SignedForm, MAX_FUTURE_SKEW_MS,
};

/// Frame format version.
pub const FRAME_VERSION: u32 = 1;
/// The topic every user node (and relay) subscribes to, where public channels are announced.
pub const ANNOUNCE_TOPIC: &str = "/ptpchat/announce/1";
/// Longest text of one channel post.
pub const MAX_CHANNEL_TEXT: usize = 16 * 1024;
/// Longest channel name.
pub const MAX_NAME_BYTES: usize = 64;
/// Most members named in a key grant.
pub const MAX_GRANT_MEMBERS: usize = 256;
/// Largest encoded frame body.
pub const MAX_BODY_BYTES: usize = MAX_CHANNEL_TEXT + MAX_NAME_BYTES + 256;
/// Largest signed frame (body, signature, sender document, framing).
pub const MAX_SIGNED_BYTES: usize = MAX_BODY_BYTES + MAX_DOCUMENT_BYTES + 256;
/// Largest sealed frame of a private channel.
pub const MAX_SEALED_BYTES: usize = MAX_SIGNED_BYTES + 128;
/// Largest gossipsub message (the sealed frame plus gossipsub's own fields).
pub const MAX_TRANSMIT_BYTES: usize = MAX_SEALED_BYTES + 1024;
/// Largest encoded key grant.
pub const MAX_GRANT_BYTES: usize = MAX_NAME_BYTES + MAX_GRANT_MEMBERS * 20 + 256;
/// Frames older than this (by their signed timestamp) are refused as stale: together with
/// the stored ids of recent frames this stops replays after gossip has forgotten them.
pub const MAX_AGE_MS: u64 = 3600 * 1000;

const SIGN_DOMAIN: &[u8] = b"ptpchat/channel/1";
const SEAL_DOMAIN: &[u8] = b"ptpchat/channel-seal/1";
const PROVIDER_DOMAIN: &[u8] = b"ptpchat/channel-providers/1";

/// The kinds of frame.
pub const JOIN: &str = "join";
pub const LEAVE: &str = "leave";
pub const CHANNEL: &str = "channel";
pub const TEXT: &str = "text";

/// What a channel frame says, signed by its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelBody {
    pub v: u32,
    #[serde(with = "serde_bytes")]
    pub msg_id: [u8; 16],
    #[serde(with = "serde_bytes")]
    pub from: [u8; 16],
    #[serde(with = "serde_bytes")]
    pub channel: [u8; 16],
    /// Milliseconds since the Unix epoch, by the sender's clock.
    pub ts: u64,
    /// [`JOIN`], [`LEAVE`], [`CHANNEL`] or [`TEXT`].
    pub kind: String,
    pub name: String,
    pub private: bool,
    /// The key epoch of a private channel (0 for a public one).
    pub epoch: u32,
    /// The post, for [`TEXT`]; empty otherwise.
    pub text: String,
}

/// A private channel's frame: the signed frame encrypted under the channel key of `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedFrame {
    pub v: u32,
    #[serde(with = "serde_bytes")]
    pub channel: [u8; 16],
    pub epoch: u32,
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 12],
    #[serde(with = "serde_bytes")]
    pub ct: Vec<u8>,
}

/// KEY: a private channel's key for one epoch, sent by a member inside a direct message
/// (kind [`GRANT_KIND`]), so it is signed by the member and sealed to the recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGrant {
    pub v: u32,
    #[serde(with = "serde_bytes")]
    pub channel: [u8; 16],
    pub name: String,
    pub epoch: u32,
    #[serde(with = "serde_bytes")]
    pub key: [u8; 32],
    /// Who holds this epoch's key (the recipient included).
    pub members: Vec<ByteArray<16>>,
}

/// The direct-message `kind` that carries a [`KeyGrant`] (hex of its CBOR in `body`).
pub const GRANT_KIND: &str = "channel-key";

/// Why a frame was dropped. [`Drop::counter`] names the counter it is counted under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    #[error("{0}")]
    Signed(#[from] Reject),
    #[error("frame is stale (older than an hour)")]
    Stale,
    #[error("frame for another channel than its topic")]
    WrongChannel,
    #[error("sealed under an epoch that is not the channel's current one")]
    WrongEpoch,
    #[error("sealed under an epoch whose key we do not hold")]
    UnknownEpoch,
    #[error("a private channel's frame was not sealed, or a public one's was")]
    WrongForm,
    #[error("frame already seen")]
    Duplicate,
    #[error("not a channel we know")]
    UnknownChannel,
    #[error("frame kind not allowed here")]
    BadKind,
}

impl Drop {
    /// Whether whoever handed us the frame is to blame. Not for a copy we already have, a
    /// channel we are not (or no longer) in, an epoch we are behind or ahead of, or a
    /// frame that grew old on the way: honest peers hand those on too.
    pub fn blames_sender(&self) -> bool {
        !matches!(
            self,
            Drop::Duplicate
                | Drop::UnknownChannel
                | Drop::UnknownEpoch
                | Drop::WrongEpoch
                | Drop::Stale
        )
    }

    /// The counter this drop is counted under (see docs/security.md).
    pub fn counter(&self) -> Counter {
        match self {
            Drop::Signed(Reject::Malformed(_)) => Counter::ChannelMalformed,
            Drop::Signed(Reject::TooLarge(_)) => Counter::ChannelTooLarge,
            Drop::Signed(Reject::Undecryptable) => Counter::ChannelUndecryptable,
            Drop::Signed(Reject::BadSenderDocument(_)) => Counter::ChannelBadSenderDocument,
            Drop::Signed(Reject::SenderMismatch) => Counter::ChannelSenderMismatch,
            Drop::Signed(Reject::BadSignature) | Drop::Signed(Reject::StaleSenderKey) => {
                Counter::ChannelBadSignature
            }
            Drop::Signed(Reject::PeerMismatch) => Counter::ChannelPeerMismatch,
            Drop::Signed(Reject::WrongRecipient) => Counter::ChannelWrongChannel,
            Drop::Signed(Reject::BadTimestamp) => Counter::ChannelBadTimestamp,
            Drop::Stale => Counter::ChannelStale,
            Drop::WrongChannel => Counter::ChannelWrongChannel,
            Drop::WrongEpoch => Counter::ChannelWrongEpoch,
            Drop::UnknownEpoch => Counter::ChannelUnknownEpoch,
            Drop::WrongForm => Counter::ChannelWrongForm,
            Drop::Duplicate => Counter::ChannelDuplicate,
            Drop::UnknownChannel => Counter::ChannelUnknown,
            Drop::BadKind => Counter::ChannelBadKind,
        }
    }
}

/// The gossipsub topic of a channel.
pub fn topic(channel: &Uuid) -> String {
    format!("/ptpchat/ch/1/{}", channel.simple())
}

/// The channel a topic names, if it is a channel topic.
pub fn channel_of_topic(topic: &str) -> Option<Uuid> {
    let hex = topic.strip_prefix("/ptpchat/ch/1/")?;
    let id = Uuid::try_parse(hex).ok()?;
    (id.simple().to_string() == hex).then_some(id)
}

/// The Kademlia key members of a channel provide (a hash, so DHT nodes do not learn the
/// channel id from the key).
pub fn provider_key(channel: &Uuid) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(PROVIDER_DOMAIN);
    h.update(channel.as_bytes());
    h.finalize().to_vec()
}

/// Checks a channel name: 1 to 64 bytes of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid channel name {name:?}: use 1-{MAX_NAME_BYTES} characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        ))
    }
}

/// Encodes and signs a frame body.
pub fn sign(body: &ChannelBody, keys: &MessageKeys) -> Vec<u8> {
    sign_body(SIGN_DOMAIN, cbor::to_vec(body).unwrap_or_default(), keys)
}

/// A frame whose signature, sender, size and timestamp were checked.
#[derive(Clone, Debug)]
pub struct Checked {
    pub body: ChannelBody,
    pub sender: SignedDocument,
}

/// How a frame reached us, which decides who must have sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A gossipsub message with this signed source: it must be the sender's PeerId, so
    /// nobody can re-publish someone else's frame as theirs.
    Gossip(Option<PeerId>),
    /// A page of CHANNEL-HISTORY: any member may hand on anyone's post; the sender's
    /// signature (and the msg_id, for replays) is what counts.
    History,
}

/// Checks a signed frame that reached us `via` gossip or a history page.
pub fn verify(
    signed: &[u8],
    via: Via,
    now_ms: u64,
    sender_document: &SenderDocumentCheck<'_>,
    key_cache: Option<&KeyCache>,
) -> Result<Checked, Drop> {
    if signed.len() > MAX_SIGNED_BYTES {
        return Err(Reject::TooLarge(format!("frame of {} bytes", signed.len())).into());
    }
    let form: SignedForm =
        cbor::from_slice(signed, MAX_SIGNED_BYTES).map_err(|e| Reject::Malformed(e.to_string()))?;
    let body: ChannelBody = cbor::from_slice(&form.body, MAX_BODY_BYTES).map_err(|e| match e {
        cbor::CborError::TooLarge { .. } => Reject::TooLarge(e.to_string()),
        _ => Reject::Malformed(e.to_string()),
    })?;
    check_limits(&body)?;
    if form.sender.len() > MAX_DOCUMENT_BYTES {
        return Err(Reject::BadSenderDocument("over the size limit".into()).into());
    }
    let from = Uuid::from_bytes(body.from);
    let sender = sender_document(&from, &form.sender)?;
    if sender.doc().uuid != body.from {
        return Err(Reject::SenderMismatch.into());
    }
    check_signature(SIGN_DOMAIN, &form, &sender, key_cache)?;
    if let Via::Gossip(author) = via {
        if sender.doc().peer_id() != author {
            return Err(Reject::PeerMismatch.into());
        }
    }
    if body.ts > now_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
        return Err(Reject::BadTimestamp.into());
    }
    if body.ts.saturating_add(MAX_AGE_MS) < now_ms {
        return Err(Drop::Stale);
    }
    Ok(Checked { body, sender })
}

fn check_limits(body: &ChannelBody) -> Result<(), Drop> {
    if body.v != FRAME_VERSION {
        return Err(Reject::Malformed(format!("frame version {}", body.v)).into());
    }
    if ![JOIN, LEAVE, CHANNEL, TEXT].contains(&body.kind.as_str()) {
        return Err(Drop::BadKind);
    }
    if body.text.len() > MAX_CHANNEL_TEXT {
        return Err(Reject::TooLarge(format!(
            "post of {} bytes (limit {MAX_CHANNEL_TEXT})",
            body.text.len()
        ))
        .into());
    }
    check_name(&body.name).map_err(|e| Drop::Signed(Reject::Malformed(e)))?;
    Ok(())
}

/// Seals a signed frame under a private channel's key for `epoch` (ChaCha20-Poly1305; the
/// channel id and epoch are bound as associated data).
pub fn seal(
    key: &[u8; 32],
    channel: &[u8; 16],
    epoch: u32,
    nonce: [u8; 12],
    signed: &[u8],
) -> Vec<u8> {
    let ct = seal_bound(key, nonce, SEAL_DOMAIN, channel, epoch, signed);
    cbor::to_vec(&SealedFrame {
        v: FRAME_VERSION,
        channel: *channel,
        epoch,
        nonce,
        ct,
    })
    .unwrap_or_default()
}

/// Decodes a sealed frame's header (channel and epoch), without opening it.
pub fn sealed_header(bytes: &[u8]) -> Result<SealedFrame, Drop> {
    if bytes.len() > MAX_SEALED_BYTES {
        return Err(Reject::TooLarge(format!("sealed frame of {} bytes", bytes.len())).into());
    }
    let f: SealedFrame =
        cbor::from_slice(bytes, MAX_SEALED_BYTES).map_err(|e| Reject::Malformed(e.to_string()))?;
    if f.v != FRAME_VERSION {
        return Err(Reject::Malformed(format!("sealed frame version {}", f.v)).into());
    }
    Ok(f)
}

/// Opens a sealed frame with the key of its epoch.
pub fn open(frame: &SealedFrame, key: &[u8; 32]) -> Result<Vec<u8>, Drop> {
    open_bound(
        key,
        frame.nonce,
        SEAL_DOMAIN,
        &frame.channel,
        frame.epoch,
        &frame.ct,
    )
    .map_err(Drop::Signed)
}

/// Encodes a key grant for the body of a direct message.
pub fn encode_grant(grant: &KeyGrant) -> String {
    hex::encode(cbor::to_vec(grant).unwrap_or_default())
}

/// Decodes and checks a key grant from a direct message's body.
pub fn decode_grant(body: &str) -> Result<KeyGrant, Reject> {
    if body.len() > MAX_GRANT_BYTES * 2 {
        return Err(Reject::TooLarge("key grant".into()));
    }
    let bytes = hex::decode(body).map_err(|_| Reject::Malformed("key grant is not hex".into()))?;
    let g: KeyGrant = cbor::from_slice(&bytes, MAX_GRANT_BYTES)
        .map_err(|e| Reject::Malformed(format!("key grant: {e}")))?;
    if g.v != FRAME_VERSION || g.epoch == 0 || g.members.len() > MAX_GRANT_MEMBERS {
        return Err(Reject::Malformed("key grant fields out of range".into()));
    }
    check_name(&g.name).map_err(Reject::Malformed)?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_only_canonical_channel_ids() {
        let id = Uuid::new_v4();
        assert_eq!(channel_of_topic(&topic(&id)), Some(id));
        assert_eq!(channel_of_topic(&format!("/ptpchat/ch/1/{id}")), None);
        assert_eq!(channel_of_topic(ANNOUNCE_TOPIC), None);
        assert_eq!(
            channel_of_topic(
                &topic(&id)
                    .to_uppercase()
                    .replace("/PTPCHAT/CH/", "/ptpchat/ch/")
            ),
            None
        );
    }

    #[test]
    fn names_are_checked() {
        for ok in ["rust-talk", "a", "ops.2026", "x_y"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Rust", "-x", "a b", "é", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sealed_frames_open_only_with_their_epoch_key_and_channel() {
        let ch = *Uuid::new_v4().as_bytes();
        let sealed = seal(&[7; 32], &ch, 3, [1; 12], b"signed");
        let f = sealed_header(&sealed).unwrap();
        assert_eq!((f.channel, f.epoch), (ch, 3));
        assert_eq!(open(&f, &[7; 32]).unwrap(), b"signed");
        assert!(open(&f, &[8; 32]).is_err());
        let mut moved = f.clone();
        moved.epoch = 4;
        assert!(open(&moved, &[7; 32]).is_err(), "epoch is bound");
    }
}

//! The `/ptpchat/verbs/1` request-response protocol: one CBOR request per stream, one CBOR
//! response. Specified in `protocols/verbs.md`. Undecodable input is not a stream error:
//! it becomes [`Request::Malformed`] so the node can answer a NACK and count it.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::cbor;

/// The protocol name on the wire.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ptpchat/verbs/1");
/// Largest request accepted (a batch of messages or one attachment chunk).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024 + 4096;
/// Most messages in one MESSAGE request.
pub const MAX_BATCH: usize = 64;
/// Largest response accepted (a page of mail is the largest).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024 + 4096;
/// Most frames in one page of channel history.
pub const MAX_HISTORY_FRAMES: usize = 256;
/// A channel-history cursor: a post's time (u64 big-endian ms) ‖ its msg_id.
pub const HISTORY_CURSOR_BYTES: usize = 24;
/// Most frame bytes in one page of channel history (under [`MAX_RESPONSE_BYTES`] with
/// room for the CBOR around them).
pub const MAX_HISTORY_BYTES: usize = 960 * 1024;

/// A request verb.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// GETCERTIFICATE: ask a peer for the identity document it holds for a UUID.
    GetCertificate {
        #[serde(with = "serde_bytes")]
        uuid: [u8; 16],
    },
    /// MESSAGE: one or more sealed messages for the receiving node's user (at most
    /// [`MAX_BATCH`]). Answered with [`Response::Outcomes`], one per message, in order.
    Message { sealed: Vec<serde_bytes::ByteBuf> },
    /// CHUNK: part of an attachment of a message the receiver asked for with
    /// [`Outcome::Need`]. Answered with [`Response::Outcomes`] holding one outcome.
    Chunk {
        #[serde(with = "serde_bytes")]
        msg_id: [u8; 16],
        attachment: u32,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// CONNECT: may we set up a direct connection? `doc` is the requester's signed identity
    /// document (its PeerId must be the connection's). Answered with [`Response::Connect`].
    Connect {
        #[serde(with = "serde_bytes")]
        doc: Vec<u8>,
    },
    /// CONNECT-ANSWER: the target's later answer to a CONNECT it answered `Pending`.
    /// Answered with [`Response::Connect`] echoing it (or a NACK if nothing was asked).
    ConnectAnswer { accept: bool },
    /// DEPOSIT: store sealed messages in a mailbox of the receiving relay until its owner
    /// drains them (see protocols/mailbox.md). `mailbox` is the recipient's mailbox id at
    /// this relay. Answered with [`Response::Deposited`], one result per message, in order.
    Deposit {
        #[serde(with = "serde_bytes")]
        mailbox: [u8; 32],
        sealed: Vec<serde_bytes::ByteBuf>,
    },
    /// MAIL-CHALLENGE: ask the relay for a fresh nonce to sign. Answered with
    /// [`Response::Challenge`].
    MailChallenge,
    /// MAIL-LOGIN: prove ownership of a mailbox: `doc` is our signed identity document
    /// (its PeerId must be the connection's), `sig` its current key's signature over the
    /// login bytes (domain, relay PeerId, the last nonce). Answered with the first page,
    /// [`Response::Mail`].
    MailLogin {
        #[serde(with = "serde_bytes")]
        doc: Vec<u8>,
        #[serde(with = "serde_bytes")]
        sig: [u8; 64],
    },
    /// MAIL-ACK: after a login on this connection, delete these items (the recipient has
    /// them stored) and send the next page. Answered with [`Response::Mail`].
    MailAck { ack: Vec<u64> },
    /// CHANNEL-HISTORY: the posts of a channel the receiver is in, from `since` (Unix ms)
    /// on, or after the cursor `after` (the `next` of the previous page; empty for the
    /// first), as they were on the channel's topic (see protocols/channels.md). Answered
    /// with [`Response::ChannelHistory`], or NACK `unknown_channel` or `busy`.
    ChannelHistory {
        #[serde(with = "serde_bytes")]
        channel: [u8; 16],
        since: u64,
        #[serde(default, with = "serde_bytes")]
        after: Vec<u8>,
    },
    /// Not sent: what an undecodable request becomes on the receiving side.
    #[serde(skip)]
    Malformed(String),
    /// Not sent: what a request over [`MAX_REQUEST_BYTES`] becomes on the receiving side.
    #[serde(skip)]
    TooLarge,
}

/// A response verb.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// CERTIFICATE: the encoded signed identity document.
    Certificate {
        #[serde(with = "serde_bytes")]
        doc: Vec<u8>,
    },
    /// The peer holds nothing for that request.
    NotFound,
    /// The request was refused; `reason` is a short stable word (see protocols/verbs.md).
    Nack { reason: String },
    /// The fate of each message of a MESSAGE (or of the message a CHUNK belongs to).
    Outcomes { outcomes: Vec<Outcome> },
    /// The answer to a CONNECT (or the echo of a CONNECT-ANSWER).
    Connect { answer: ConnectAnswer },
    /// The fate of each message of a DEPOSIT.
    Deposited { results: Vec<DepositResult> },
    /// The nonce a MAIL-LOGIN must sign; valid for one login within a minute.
    Challenge {
        #[serde(with = "serde_bytes")]
        nonce: [u8; 32],
    },
    /// A page of mail, oldest first; `more` says whether more is waiting after it.
    Mail { items: Vec<MailItem>, more: bool },
    /// A page of channel posts, oldest first (at most [`MAX_HISTORY_FRAMES`] frames and
    /// [`MAX_HISTORY_BYTES`] bytes); `more` says whether more follow, to be asked for with
    /// `after` = `next`: the last frame's cursor, its time (u64 big-endian ms) ‖ its msg_id
    /// ([`HISTORY_CURSOR_BYTES`] bytes; empty when there is no frame).
    ChannelHistory {
        frames: Vec<serde_bytes::ByteBuf>,
        more: bool,
        #[serde(with = "serde_bytes")]
        next: Vec<u8>,
    },
}

/// What a relay did with one deposited message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DepositResult {
    /// Stored until `expires` (Unix seconds); `sig` is the relay's signature over the
    /// receipt bytes (see [`crate::wire::mailbox::receipt_bytes`]).
    Stored {
        expires: u64,
        #[serde(with = "serde_bytes")]
        sig: [u8; 64],
    },
    /// Not stored; `reason` is a stable word (`mailbox_full`, `sender_quota`, `relay_full`,
    /// `too_large`, `busy`).
    Nack { reason: String },
}

/// One stored message in a page of mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailItem {
    /// The relay's number for it, to acknowledge it with.
    pub n: u64,
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

/// What a target says to a CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectAnswer {
    /// Go ahead: open a new circuit; hole punching runs on it.
    Accept,
    /// No (also the answer of a policy that refuses).
    Deny,
    /// The user will decide; a CONNECT-ANSWER follows (or nothing, which means no).
    Pending,
}

/// What the receiver did with one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// ACK: the message is durably stored (or was already).
    Ack,
    /// NACK: refused for good; `reason` is a stable word.
    Nack { reason: String },
    /// The message is accepted but its attachments are not all here: send attachment
    /// number `attachment` from byte `offset`.
    Need { attachment: u32, offset: u64 },
}

/// Why a request, a message or a deposit is refused: the stable NACK words of
/// protocols/verbs.md, messages.md and mailbox.md. On the wire a NACK carries the word as
/// text (so a word this version does not know still decodes); this is the one list of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nack {
    // Any request.
    Malformed,
    TooLarge,
    Busy,
    RateLimited,
    Unexpected,
    NoUser,
    NoMailbox,
    // A message (messages.md section 2) and its attachments (section 5).
    NotReady,
    Undecryptable,
    BadSenderDocument,
    SenderMismatch,
    BadSignature,
    PeerMismatch,
    WrongRecipient,
    StaleSenderKey,
    BadTimestamp,
    UnknownMessage,
    BadChunk,
    BadAttachment,
    // Mailboxes (mailbox.md sections 3 and 4) and CONNECT.
    SenderQuota,
    MailboxFull,
    RelayFull,
    NoChallenge,
    BadDocument,
    StaleKey,
    NotLoggedIn,
    // Channel history.
    UnknownChannel,
}

impl Nack {
    /// Every word, for the tests that keep this list and the specs in step.
    pub const ALL: [Nack; 27] = [
        Nack::Malformed,
        Nack::TooLarge,
        Nack::Busy,
        Nack::RateLimited,
        Nack::Unexpected,
        Nack::NoUser,
        Nack::NoMailbox,
        Nack::NotReady,
        Nack::Undecryptable,
        Nack::BadSenderDocument,
        Nack::SenderMismatch,
        Nack::BadSignature,
        Nack::PeerMismatch,
        Nack::WrongRecipient,
        Nack::StaleSenderKey,
        Nack::BadTimestamp,
        Nack::UnknownMessage,
        Nack::BadChunk,
        Nack::BadAttachment,
        Nack::SenderQuota,
        Nack::MailboxFull,
        Nack::RelayFull,
        Nack::NoChallenge,
        Nack::BadDocument,
        Nack::StaleKey,
        Nack::NotLoggedIn,
        Nack::UnknownChannel,
    ];

    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Nack::Malformed => "malformed",
            Nack::TooLarge => "too_large",
            Nack::Busy => "busy",
            Nack::RateLimited => "rate_limited",
            Nack::Unexpected => "unexpected",
            Nack::NoUser => "no_user",
            Nack::NoMailbox => "no_mailbox",
            Nack::NotReady => "not_ready",
            Nack::Undecryptable => "undecryptable",
            Nack::BadSenderDocument => "bad_sender_document",
            Nack::SenderMismatch => "sender_mismatch",
            Nack::BadSignature => "bad_signature",
            Nack::PeerMismatch => "peer_mismatch",
            Nack::WrongRecipient => "wrong_recipient",
            Nack::StaleSenderKey => "stale_sender_key",
            Nack::BadTimestamp => "bad_timestamp",
            Nack::UnknownMessage => "unknown_message",
            Nack::BadChunk => "bad_chunk",
            Nack::BadAttachment => "bad_attachment",
            Nack::SenderQuota => "sender_quota",
            Nack::MailboxFull => "mailbox_full",
            Nack::RelayFull => "relay_full",
            Nack::NoChallenge => "no_challenge",
            Nack::BadDocument => "bad_document",
            Nack::StaleKey => "stale_key",
            Nack::NotLoggedIn => "not_logged_in",
            Nack::UnknownChannel => "unknown_channel",
        }
    }

    /// The word read off the wire; `None` for one this version does not know.
    pub fn parse(word: &str) -> Option<Nack> {
        Nack::ALL.into_iter().find(|n| n.as_str() == word)
    }

    /// Whether a sender keeps a message it was refused and tries again (messages.md
    /// section 4: refused for now, not for good). `undecryptable` is for now because the
    /// sender reseals to the recipient's current key at every attempt.
    pub fn is_for_now(self) -> bool {
        matches!(
            self,
            Nack::Busy
                | Nack::RateLimited
                | Nack::NotReady
                | Nack::Undecryptable
                | Nack::UnknownMessage
        )
    }
}

impl std::fmt::Display for Nack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Nack> for Response {
    fn from(n: Nack) -> Response {
        Response::Nack {
            reason: n.as_str().into(),
        }
    }
}

impl From<Nack> for Outcome {
    fn from(n: Nack) -> Outcome {
        Outcome::Nack {
            reason: n.as_str().into(),
        }
    }
}

impl From<Nack> for DepositResult {
    fn from(n: Nack) -> DepositResult {
        DepositResult::Nack {
            reason: n.as_str().into(),
        }
    }
}

/// The request-response codec with our size and depth limits.
#[derive(Clone, Default)]
pub struct Codec;

async fn read_limited<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message over the {max}-byte limit"),
        ));
    }
    Ok(buf)
}

fn encode<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    cbor::to_vec(v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Request> {
        let buf = match read_limited(io, MAX_REQUEST_BYTES).await {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Ok(Request::TooLarge),
            Err(e) => return Err(e),
        };
        Ok(cbor::from_slice(&buf, MAX_REQUEST_BYTES)
            .unwrap_or_else(|e| Request::Malformed(e.to_string())))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Response> {
        let buf = read_limited(io, MAX_RESPONSE_BYTES).await?;
        cbor::from_slice(&buf, MAX_RESPONSE_BYTES)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> std::io::Result<()> {
        io.write_all(&encode(&req)?).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> std::io::Result<()> {
        io.write_all(&encode(&res)?).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_request_cannot_be_sent() {
        assert!(encode(&Request::Malformed("x".into())).is_err());
    }

    #[test]
    fn unknown_verbs_do_not_decode() {
        #[derive(Serialize)]
        enum Future {
            Teleport { to: u32 },
        }
        let bytes = cbor::to_vec(&Future::Teleport { to: 1 }).unwrap();
        assert!(cbor::from_slice::<Request>(&bytes, MAX_REQUEST_BYTES).is_err());
    }

    #[test]
    fn every_nack_word_is_specified_distinct_and_reads_back() {
        let specs = [
            include_str!("../../protocols/verbs.md"),
            include_str!("../../protocols/messages.md"),
            include_str!("../../protocols/mailbox.md"),
            include_str!("../../protocols/connect.md"),
            include_str!("../../protocols/channels.md"),
        ]
        .concat();
        let mut words = std::collections::HashSet::new();
        for n in Nack::ALL {
            assert_eq!(Nack::parse(n.as_str()), Some(n));
            assert!(words.insert(n.as_str()), "{n} twice");
            assert!(
                specs.contains(&format!("`{n}`")),
                "{n} is in no protocol document"
            );
        }
        assert_eq!(Nack::parse("teleported"), None);
        // What a NACK looks like on the wire is unchanged: the word as text.
        assert_eq!(
            cbor::to_vec(&Response::from(Nack::Malformed)).unwrap(),
            hex::decode("a1644e61636ba166726561736f6e696d616c666f726d6564").unwrap()
        );
    }
}

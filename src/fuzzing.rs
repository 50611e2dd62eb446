//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_regressions.rs`: one
//! function per decoder a stranger reaches, taking raw bytes and running the same decode
//! and checks the node runs, with fixed test keys (those of the `protocols/` vectors).
//! Every function must return for any input: an error is fine, a panic is a bug.
//! Not an API: hidden from the docs and free to change.

use std::sync::OnceLock;

use ed25519_dalek::{Signature, VerifyingKey};
use libp2p::PeerId;
use uuid::Uuid;

use crate::control::ControlRequest;
use crate::identity::{Identity, MessageKeys, SignedDocument};
use crate::wire::envelope::{self, KeyCache, OpenCache, Reject, VerifyContext};
use crate::wire::frame;
use crate::wire::mailbox;
use crate::wire::verbs::{DepositResult, Request, Response, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};

/// The vectors' clock: 2026-01-01T00:00:00Z, so their documents are valid.
pub const NOW: u64 = 1_767_225_600;
const SENDER_SIGNING: [u8; 32] =
    hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
const SENDER_ENC: [u8; 32] =
    hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
const RECIPIENT_SIGNING: [u8; 32] =
    hex32("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7");
const RECIPIENT_ENC: [u8; 32] =
    hex32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
/// The relay of protocols/mailbox.md.
const RELAY_SECRET: [u8; 32] = [7; 32];
/// A channel key for opening sealed frames (the key of protocols/channels.md's vectors is
/// not needed: a fuzzer cannot forge a tag either way).
const CHANNEL_KEY: [u8; 32] = [0x42; 32];

const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not hex"),
    }
}

struct Fixture {
    recipient: MessageKeys,
    sender_doc: SignedDocument,
    relay: PeerId,
    open_cache: crate::shared::Shared<OpenCache>,
    key_cache: KeyCache,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut recipient = Identity::from_secret_keys(RECIPIENT_SIGNING, RECIPIENT_ENC, NOW);
        let doc = recipient.issue_document(&[], NOW);
        let mut sender = Identity::from_secret_keys(SENDER_SIGNING, SENDER_ENC, NOW);
        let sender_doc = sender.issue_document(&[], NOW);
        let relay = libp2p::identity::Keypair::ed25519_from_bytes(RELAY_SECRET)
            .map(|k| k.public().to_peer_id())
            .unwrap_or_else(|_| PeerId::random());
        Fixture {
            recipient: recipient.message_keys(doc),
            sender_doc,
            relay,
            open_cache: crate::shared::Shared::default(),
            key_cache: KeyCache::default(),
        }
    })
}

/// The node's check of a sender document carried in a message or frame: decode and verify
/// for the claimed UUID (the directory cache's shortcut for a held document aside).
fn sender_document(from: &Uuid, bytes: &[u8]) -> Result<SignedDocument, Reject> {
    SignedDocument::decode_for(bytes, from, NOW)
        .map_err(|e| Reject::BadSenderDocument(e.to_string()))
}

fn verify_context() -> VerifyContext<'static> {
    let f = fixture();
    VerifyContext {
        me: f.recipient.uuid,
        peer: f.sender_doc.doc().peer_id(),
        now_ms: NOW * 1000,
        max_attachment: 16 * 1024 * 1024,
        sender_document: &sender_document,
        key_cache: Some(&f.key_cache),
    }
}

/// A `/ptpchat/verbs/1` request, as the codec decodes it.
pub fn verbs_request(data: &[u8]) {
    let _ = crate::cbor::from_slice::<Request>(data, MAX_REQUEST_BYTES);
}

/// A `/ptpchat/verbs/1` response, as the codec decodes it.
pub fn verbs_response(data: &[u8]) {
    let _ = crate::cbor::from_slice::<Response>(data, MAX_RESPONSE_BYTES);
}

/// An identity document from the DHT, a GETCERTIFICATE answer or a message.
pub fn identity_document(data: &[u8]) {
    if let Ok(d) = SignedDocument::decode(data, NOW) {
        let _ = d.doc().reach_addrs();
        let _ = mailbox::mailboxes(d.doc());
        let _ = d.may_replace(&fixture().sender_doc);
    }
}

/// A sealed direct message: opened with the recipient key of the vectors, then verified.
/// The input is also verified as a signed form directly, so the fuzzer reaches the
/// envelope checks without having to forge a ChaCha20-Poly1305 tag.
pub fn envelope(data: &[u8]) {
    let f = fixture();
    if let Ok(signed) = envelope::open(data, &f.recipient, &f.open_cache) {
        let _ = envelope::verify(&signed, &verify_context());
    }
    if let Ok(v) = envelope::verify(data, &verify_context()) {
        let _ = crate::wire::receipt::decode_receipt(&v.envelope.body);
        let _ = frame::decode_grant(&v.envelope.body);
    }
    let _ = envelope::read_own(data);
}

/// A channel frame from gossip or a history page: a signed frame verified, and a sealed
/// frame's header decoded and opened with a fixed key.
pub fn channel_frame(data: &[u8]) {
    let author = fixture().sender_doc.doc().peer_id();
    let key_cache = &fixture().key_cache;
    for via in [frame::Via::Gossip(author), frame::Via::History] {
        let _ = frame::verify(data, via, NOW * 1000, &sender_document, Some(key_cache));
    }
    if let Ok(h) = frame::sealed_header(data) {
        if let Ok(signed) = frame::open(&h, &CHANNEL_KEY) {
            let _ = frame::verify(
                &signed,
                frame::Via::History,
                NOW * 1000,
                &sender_document,
                None,
            );
        }
    }
}

/// A channel key grant, the body of a direct message of kind `grant`: the input as the
/// body text, and as the CBOR the hex body carries.
pub fn key_grant(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = frame::decode_grant(s);
    }
    let _ = frame::decode_grant(&hex::encode(data));
}

/// A CHANNEL-HISTORY answer: the response decoded, then every frame in it checked as a
/// history frame would be.
pub fn history_page(data: &[u8]) {
    if let Ok(Response::ChannelHistory { frames, next, .. }) =
        crate::cbor::from_slice::<Response>(data, MAX_RESPONSE_BYTES)
    {
        let _ = next.len() == crate::wire::verbs::HISTORY_CURSOR_BYTES;
        for f in frames.iter().take(crate::wire::verbs::MAX_HISTORY_FRAMES) {
            channel_frame(f);
        }
    }
}

/// Mailbox verbs as a relay and a recipient see them: DEPOSIT, MAIL-LOGIN and MAIL-ACK
/// requests; DEPOSITED (with the relay's receipts checked) and MAIL answers (each item
/// opened as a message).
pub fn mailbox(data: &[u8]) {
    let f = fixture();
    match crate::cbor::from_slice::<Request>(data, MAX_REQUEST_BYTES) {
        Ok(Request::Deposit { mailbox: m, sealed }) => {
            for s in &sealed {
                let _ = mailbox::receipt_bytes(&m, s, NOW);
            }
        }
        Ok(Request::MailLogin { doc, sig }) => {
            if let Ok(d) = SignedDocument::decode(&doc, NOW) {
                if let Ok(k) = VerifyingKey::from_bytes(&d.doc().current_key) {
                    let _ = k.verify_strict(
                        &mailbox::login_bytes(&f.relay, &[0; 32]),
                        &Signature::from_bytes(&sig),
                    );
                }
            }
        }
        _ => {}
    }
    match crate::cbor::from_slice::<Response>(data, MAX_RESPONSE_BYTES) {
        Ok(Response::Deposited { results }) => {
            let m = mailbox::mailbox_id(&f.relay, &f.recipient.uuid);
            for r in &results {
                if let DepositResult::Stored { expires, sig } = r {
                    let _ = mailbox::verify_receipt(&f.relay, &m, b"", *expires, sig);
                }
            }
        }
        Ok(Response::Mail { items, .. }) => {
            for i in &items {
                envelope(&i.sealed);
            }
        }
        _ => {}
    }
}

/// The body of a delivery receipt (a direct message of kind `receipt`).
pub fn delivery_receipt(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::wire::receipt::decode_receipt(s);
    }
}

/// One line on the control socket, as the server parses it.
pub fn control_request(data: &[u8]) {
    if data.len() > crate::control::MAX_LINE_BYTES {
        return;
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = serde_json::from_str::<ControlRequest>(s);
    }
}

/// The secret identity record of a corrupted or hand-edited home.
pub fn identity_from_bytes(data: &[u8]) {
    if let Ok(mut id) = Identity::from_bytes(data) {
        let _ = id.issue_document(&[], NOW);
    }
}

/// A fuzz entry point: takes any bytes, must not panic.
pub type EntryPoint = fn(&[u8]);

/// Every entry point by the name of its fuzz target (and of its corpus directory).
pub const TARGETS: &[(&str, EntryPoint)] = &[
    ("verbs_request", verbs_request),
    ("verbs_response", verbs_response),
    ("identity_document", identity_document),
    ("envelope", envelope),
    ("channel_frame", channel_frame),
    ("key_grant", key_grant),
    ("history_page", history_page),
    ("mailbox", mailbox),
    ("delivery_receipt", delivery_receipt),
    ("control_request", control_request),
    ("identity_from_bytes", identity_from_bytes),
];

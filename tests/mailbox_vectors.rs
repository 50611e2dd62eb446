//! Decodes the hex test vectors of `protocols/mailbox.md` and checks them against this
//! implementation: the mailbox id, mailbox list, receipt and login bytes are what the code
//! computes (and what the spec's formulas give when built by hand here); the relay's
//! receipt verifies and a changed one does not; the login signature verifies under the
//! document's key; every verb vector decodes to the expected value and re-encodes to the
//! exact bytes; the receipt message's body and envelope are as specified.

mod common;

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use ptpchat::cbor;
use ptpchat::identity::{Identity, SignedDocument};
use ptpchat::mailbox::service::MailboxConfig;
use ptpchat::store::mailbox::MailLimits;
use ptpchat::wire::envelope::{Envelope, MAX_ENVELOPE_BYTES, MAX_SEALED_BYTES};
use ptpchat::wire::mailbox::{
    login_bytes, mailbox_id, mailboxes, peer_public_key, receipt_bytes, verify_receipt,
    MAX_DEPOSIT_BATCH, MAX_MAILBOXES, MAX_PAGE_BYTES, MAX_PAGE_ITEMS,
};
use ptpchat::wire::verbs::{
    DepositResult, MailItem, Request, Response, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

type Vectors = BTreeMap<String, BTreeMap<String, String>>;

fn vectors() -> Vectors {
    common::spec_vectors("mailbox.md")
}

fn field<'a>(v: &'a Vectors, vector: &str, key: &str) -> &'a str {
    v.get(vector)
        .and_then(|m| m.get(key))
        .unwrap_or_else(|| panic!("{vector}.{key} missing from protocols/mailbox.md"))
}

fn bytes(v: &Vectors, vector: &str, key: &str) -> Vec<u8> {
    hex::decode(field(v, vector, key)).unwrap()
}

fn arr<const N: usize>(v: &Vectors, vector: &str, key: &str) -> [u8; N] {
    bytes(v, vector, key).try_into().unwrap()
}

fn num(v: &Vectors, vector: &str, key: &str) -> u64 {
    field(v, vector, key).parse().unwrap()
}

fn peer(v: &Vectors, vector: &str, key: &str) -> PeerId {
    field(v, vector, key).parse().unwrap()
}

fn uuid(v: &Vectors, vector: &str, key: &str) -> Uuid {
    Uuid::parse_str(field(v, vector, key)).unwrap()
}

/// The relay's libp2p key, from the spec's secret.
fn relay_keypair(v: &Vectors) -> Keypair {
    Keypair::ed25519_from_bytes(arr::<32>(v, "mailbox-relay", "relay_secret")).unwrap()
}

/// The recipient's identity, from the spec's secrets.
fn recipient(v: &Vectors) -> Identity {
    Identity::from_secret_keys(
        arr(v, "mailbox-login", "signing_secret"),
        arr(v, "mailbox-login", "enc_secret"),
        num(v, "mailbox-login", "now"),
    )
}

/// Vector `name`'s `cbor` field decodes to `expected`, and `expected` encodes to it.
fn check_cbor<T>(v: &Vectors, name: &str, max: usize, expected: &T)
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let wire = bytes(v, name, "cbor");
    let decoded: T = cbor::from_slice(&wire, max).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(&decoded, expected, "{name} decodes to the expected value");
    assert_eq!(
        cbor::to_vec(expected).unwrap(),
        wire,
        "{name} re-encodes to the exact bytes"
    );
}

#[test]
fn relay_key_and_mailbox_id() {
    let v = vectors();
    let kp = relay_keypair(&v);
    let relay = kp.public().to_peer_id();
    assert_eq!(relay, peer(&v, "mailbox-relay", "relay_peer_id"));
    assert_eq!(
        relay.to_bytes(),
        bytes(&v, "mailbox-relay", "relay_peer_id_bytes")
    );
    let public = bytes(&v, "mailbox-relay", "relay_public_key");
    assert_eq!(
        kp.public().try_into_ed25519().unwrap().to_bytes().to_vec(),
        public
    );
    // The PeerId bytes are the identity multihash of the protobuf-encoded key.
    let mut expected_id = hex::decode("002408011220").unwrap();
    expected_id.extend_from_slice(&public);
    assert_eq!(relay.to_bytes(), expected_id);
    // The key a sender checks receipts with is the one inside the PeerId.
    assert_eq!(peer_public_key(&relay), Some(kp.public()));

    assert_eq!(peer(&v, "mailbox-id", "relay_peer_id"), relay);
    let u = uuid(&v, "mailbox-id", "uuid");
    assert_eq!(u, recipient(&v).uuid(), "the mailbox is the recipient's");
    let id = arr::<32>(&v, "mailbox-id", "mailbox");
    assert_eq!(mailbox_id(&relay, &u), id);
    // The spec's formula, built by hand.
    let mut h = Sha256::new();
    h.update(b"ptpchat/mailbox/1");
    h.update(relay.to_bytes());
    h.update(u.as_bytes());
    assert_eq!(<[u8; 32]>::from(h.finalize()), id);
    // Another relay gives the same user another id.
    let other = Keypair::ed25519_from_bytes([8u8; 32])
        .unwrap()
        .public()
        .to_peer_id();
    assert_ne!(mailbox_id(&other, &u), id);
}

#[test]
fn mailboxes_come_from_the_circuit_addresses_of_reach() {
    let v = vectors();
    let reach: Vec<Multiaddr> = (1..=6)
        .map(|i| {
            field(&v, "mailbox-list", &format!("reach_{i}"))
                .parse()
                .unwrap()
        })
        .collect();
    let mut id = recipient(&v);
    assert_eq!(id.peer_id(), peer(&v, "mailbox-list", "peer_id"));
    let now = num(&v, "mailbox-login", "now");
    let doc = id.issue_document(&reach, now);
    assert_eq!(doc.doc().reach_addrs(), reach, "the document keeps all six");
    let expected: Vec<(PeerId, Multiaddr)> = (1..=3)
        .map(|i| {
            (
                peer(&v, "mailbox-list", &format!("mailbox_{i}_relay")),
                field(&v, "mailbox-list", &format!("mailbox_{i}_addr"))
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(mailboxes(doc.doc()), expected);
    assert_eq!(expected.len(), MAX_MAILBOXES);
    assert!(
        !v["mailbox-list"].contains_key("mailbox_4_relay"),
        "a fourth relay is never a mailbox"
    );
    // The relay is the first one of the login vector.
    assert_eq!(expected[0].0, peer(&v, "mailbox-relay", "relay_peer_id"));
}

#[test]
fn receipt_verifies_and_changed_receipts_do_not() {
    let v = vectors();
    let kp = relay_keypair(&v);
    let relay = peer(&v, "mailbox-receipt", "relay_peer_id");
    assert_eq!(relay, kp.public().to_peer_id());
    let mailbox = arr::<32>(&v, "mailbox-receipt", "mailbox");
    assert_eq!(mailbox, arr::<32>(&v, "mailbox-id", "mailbox"));
    let sealed = bytes(&v, "mailbox-receipt", "sealed");
    assert_eq!(sealed, b"opaque sealed form #1");
    assert_eq!(
        Sha256::digest(&sealed).to_vec(),
        bytes(&v, "mailbox-receipt", "sealed_sha256")
    );
    let stored_ms = num(&v, "mailbox-receipt", "stored_ms");
    let expires = num(&v, "mailbox-receipt", "expires");
    assert_eq!(
        expires,
        (stored_ms + MailLimits::default().retention_ms) / 1000,
        "expires is the stored time plus the default retention, in seconds"
    );

    let rb = bytes(&v, "mailbox-receipt", "receipt_bytes");
    assert_eq!(receipt_bytes(&mailbox, &sealed, expires), rb);
    let mut by_hand = b"ptpchat/mailbox/receipt/1".to_vec();
    by_hand.extend_from_slice(&mailbox);
    by_hand.extend_from_slice(&Sha256::digest(&sealed));
    by_hand.extend_from_slice(&expires.to_be_bytes());
    assert_eq!(by_hand, rb);
    assert_eq!(rb.len(), 97);

    // ed25519 is deterministic: the relay's key gives exactly the spec's signature.
    let sig = arr::<64>(&v, "mailbox-receipt", "sig");
    assert_eq!(kp.sign(&rb).unwrap(), sig.to_vec());
    assert!(verify_receipt(&relay, &mailbox, &sealed, expires, &sig));

    // The refused vector: the same signature does not cover a later expiry.
    let r = "mailbox-receipt-refused";
    assert_eq!(peer(&v, r, "relay_peer_id"), relay);
    assert_eq!(arr::<32>(&v, r, "mailbox"), mailbox);
    assert_eq!(bytes(&v, r, "sealed"), sealed);
    assert_eq!(arr::<64>(&v, r, "sig"), sig);
    let later = num(&v, r, "expires");
    assert_eq!(later, expires + 1);
    assert!(!verify_receipt(&relay, &mailbox, &sealed, later, &sig));

    // Nor does it cover other bytes, another mailbox, or another relay; nor does a flipped bit.
    assert!(!verify_receipt(
        &relay,
        &mailbox,
        b"opaque sealed form #2",
        expires,
        &sig
    ));
    let mut other_mailbox = mailbox;
    other_mailbox[0] ^= 1;
    assert!(!verify_receipt(
        &relay,
        &other_mailbox,
        &sealed,
        expires,
        &sig
    ));
    let other_relay = Keypair::ed25519_from_bytes([8u8; 32])
        .unwrap()
        .public()
        .to_peer_id();
    assert!(!verify_receipt(
        &other_relay,
        &mailbox,
        &sealed,
        expires,
        &sig
    ));
    let mut flipped = sig;
    flipped[10] ^= 1;
    assert!(!verify_receipt(
        &relay, &mailbox, &sealed, expires, &flipped
    ));
}

#[test]
fn login_bytes_and_signature() {
    let v = vectors();
    let l = "mailbox-login";
    let relay = peer(&v, l, "relay_peer_id");
    assert_eq!(relay, relay_keypair(&v).public().to_peer_id());
    let nonce = arr::<32>(&v, l, "nonce");
    let lb = bytes(&v, l, "login_bytes");
    assert_eq!(login_bytes(&relay, &nonce), lb);
    let mut by_hand = b"ptpchat/mailbox/login/1".to_vec();
    by_hand.extend_from_slice(&relay.to_bytes());
    by_hand.extend_from_slice(&nonce);
    assert_eq!(by_hand, lb);

    // The document: what the recipient issues at `now` with reach_1, and valid then.
    let now = num(&v, l, "now");
    let doc_bytes = bytes(&v, l, "document");
    let reach_1: Multiaddr = field(&v, "mailbox-list", "reach_1").parse().unwrap();
    let mut id = recipient(&v);
    assert_eq!(id.issue_document(&[reach_1], now).bytes(), doc_bytes);
    let doc = SignedDocument::decode(&doc_bytes, now).expect("the document verifies");
    assert_eq!(doc.doc().uuid(), uuid(&v, l, "uuid"));
    assert_eq!(doc.doc().peer_id(), Some(peer(&v, l, "peer_id")));
    assert_eq!(
        mailbox_id(&relay, &doc.doc().uuid()),
        arr::<32>(&v, "mailbox-id", "mailbox"),
        "the relay derives the logged-in mailbox from the document's UUID"
    );
    assert_eq!(mailboxes(doc.doc())[0].0, relay);

    // The signature: by the current key (deterministic), verified strictly as the relay does.
    let sig = arr::<64>(&v, l, "sig");
    assert_eq!(id.sign(&lb), sig);
    let key = VerifyingKey::from_bytes(&doc.doc().current_key).unwrap();
    assert!(key.verify_strict(&lb, &Signature::from_bytes(&sig)).is_ok());
    // Another nonce, or another relay, is not what was signed.
    let mut other_nonce = nonce;
    other_nonce[31] ^= 1;
    assert!(key
        .verify_strict(
            &login_bytes(&relay, &other_nonce),
            &Signature::from_bytes(&sig)
        )
        .is_err());
    let other_relay = Keypair::ed25519_from_bytes([8u8; 32])
        .unwrap()
        .public()
        .to_peer_id();
    assert!(key
        .verify_strict(
            &login_bytes(&other_relay, &nonce),
            &Signature::from_bytes(&sig)
        )
        .is_err());
}

#[test]
fn verb_vectors() {
    let v = vectors();
    let mailbox = arr::<32>(&v, "mailbox-id", "mailbox");
    let sealed_1 = bytes(&v, "mailbox-receipt", "sealed");
    let sealed_2 = b"opaque sealed form #2".to_vec();
    let expires = num(&v, "mailbox-receipt", "expires");
    let sig = arr::<64>(&v, "mailbox-receipt", "sig");
    let nonce = arr::<32>(&v, "mailbox-login", "nonce");

    check_cbor(
        &v,
        "deposit-request",
        MAX_REQUEST_BYTES,
        &Request::Deposit {
            mailbox,
            sealed: vec![sealed_1.clone().into(), sealed_2.into()],
        },
    );
    check_cbor(
        &v,
        "deposited-response",
        MAX_RESPONSE_BYTES,
        &Response::Deposited {
            results: vec![
                DepositResult::Stored { expires, sig },
                DepositResult::Nack {
                    reason: "mailbox_full".into(),
                },
            ],
        },
    );
    check_cbor(
        &v,
        "mailchallenge-request",
        MAX_REQUEST_BYTES,
        &Request::MailChallenge,
    );
    // A verb without fields is the bare text string of its name.
    assert_eq!(
        bytes(&v, "mailchallenge-request", "cbor"),
        [&[0x6d][..], b"MailChallenge"].concat()
    );
    check_cbor(
        &v,
        "challenge-response",
        MAX_RESPONSE_BYTES,
        &Response::Challenge { nonce },
    );
    check_cbor(
        &v,
        "maillogin-request",
        MAX_REQUEST_BYTES,
        &Request::MailLogin {
            doc: bytes(&v, "mailbox-login", "document"),
            sig: arr(&v, "mailbox-login", "sig"),
        },
    );
    check_cbor(
        &v,
        "mailack-request",
        MAX_REQUEST_BYTES,
        &Request::MailAck { ack: vec![1, 2] },
    );
    check_cbor(
        &v,
        "mail-response",
        MAX_RESPONSE_BYTES,
        &Response::Mail {
            items: vec![MailItem {
                n: 1,
                sealed: sealed_1,
            }],
            more: false,
        },
    );

    // A mailbox id that is not 32 bytes is not a DEPOSIT.
    #[derive(Serialize)]
    enum Wire {
        Deposit {
            #[serde(with = "serde_bytes")]
            mailbox: Vec<u8>,
            sealed: Vec<serde_bytes::ByteBuf>,
        },
    }
    let short = cbor::to_vec(&Wire::Deposit {
        mailbox: vec![0; 31],
        sealed: vec![serde_bytes::ByteBuf::from(vec![1])],
    })
    .unwrap();
    assert!(cbor::from_slice::<Request>(&short, MAX_REQUEST_BYTES).is_err());
}

#[test]
fn receipt_message_body_and_envelope() {
    let v = vectors();
    let r = "receipt-message";
    let body = field(&v, r, "body");
    let ids: Vec<Uuid> = body
        .split(',')
        .map(|s| Uuid::parse_str(s).unwrap())
        .collect();
    assert!(!ids.is_empty() && ids.len() <= 256);
    // Hyphenated, lowercase, sorted, no duplicates, joined by commas without spaces.
    let rebuilt = ids
        .iter()
        .map(|u| u.hyphenated().to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(rebuilt, body);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let wire = bytes(&v, r, "envelope");
    let env: Envelope = cbor::from_slice(&wire, MAX_ENVELOPE_BYTES).unwrap();
    let expected = Envelope {
        v: 1,
        msg_id: *uuid(&v, r, "msg_id").as_bytes(),
        from: *uuid(&v, r, "from").as_bytes(),
        to: *uuid(&v, r, "to").as_bytes(),
        ts: num(&v, r, "ts"),
        kind: field(&v, r, "kind").into(),
        body: body.into(),
        attachments: Vec::new(),
    };
    assert_eq!(env, expected);
    assert_eq!(env.kind, "receipt");
    // Sent by the mailbox's owner to the sender whose messages it took.
    assert_eq!(env.from(), recipient(&v).uuid());
    assert_eq!(
        env.to(),
        Uuid::parse_str("21fe31df-a154-8261-a26b-f854046fd227").unwrap()
    );
    assert_eq!(cbor::to_vec(&expected).unwrap(), wire);
}

#[test]
fn limits_are_the_ones_the_spec_states() {
    assert_eq!(MAX_DEPOSIT_BATCH, 64);
    assert_eq!(MAX_PAGE_ITEMS, 64);
    assert_eq!(MAX_PAGE_BYTES, 512 * 1024);
    assert_eq!(MAX_MAILBOXES, 3);
    assert_eq!(MAX_SEALED_BYTES, 91_648);
    assert_eq!(MAX_REQUEST_BYTES, 1024 * 1024 + 4096);
    assert_eq!(MAX_RESPONSE_BYTES, 1024 * 1024 + 4096);
    const MIB: u64 = 1024 * 1024;
    assert_eq!(
        MailLimits::default(),
        MailLimits {
            retention_ms: 7 * 24 * 3600 * 1000,
            per_mailbox_items: 4096,
            per_mailbox_bytes: 32 * MIB,
            total_bytes: 1024 * MIB,
        }
    );
    let c = MailboxConfig::default();
    assert_eq!(c.sender_items_per_day, 2000);
    assert_eq!(c.sender_bytes_per_day, 64 * MIB);
    assert_eq!(c.limits, MailLimits::default());
}

//! Decodes the hex test vectors in `protocols/*.md` and checks them against this
//! implementation, both ways: the vectors decode to what the spec says, and encoding
//! the same inputs reproduces the exact bytes. `PRINT_VECTORS=1 cargo test --test vectors`
//! prints freshly computed vectors (to write a new spec section).

mod common;

use common::spec_vectors as vectors;
use ptpchat::cbor;
use ptpchat::identity::{dht_key, DocumentError, Identity, SignedDocument};
use ptpchat::wire::verbs::{Request, Response, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn print(name: &str, fields: &[(&str, String)]) {
    if std::env::var_os("PRINT_VECTORS").is_some() {
        println!("vector: {name}");
        for (k, v) in fields {
            for chunk in v.as_bytes().chunks(96) {
                println!("{k}: {}", std::str::from_utf8(chunk).unwrap());
            }
        }
        println!();
    }
}

const SIGNING: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const ENC: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const NEXT: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn identity() -> Identity {
    Identity::from_secret_keys(hex32(SIGNING), hex32(ENC), NOW)
}

#[test]
fn identity_document_vectors() {
    let mut id = identity();
    let basic = id.issue_document(&["/ip4/198.51.100.7/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit".parse().unwrap()], NOW);
    id.rotate_identity_key_to(hex32(NEXT)).unwrap();
    let rotated = id.issue_document(&[], NOW + 60);
    print(
        "identity-basic",
        &[
            ("signing_secret", SIGNING.into()),
            ("enc_secret", ENC.into()),
            ("now", NOW.to_string()),
            ("uuid", basic.doc().uuid().to_string()),
            ("fingerprint", basic.doc().fingerprint().to_hex()),
            ("peer_id", basic.doc().peer_id().unwrap().to_string()),
            ("seq", basic.doc().seq.to_string()),
            ("dht_key", hex::encode(dht_key(&basic.doc().uuid()))),
            ("document", hex::encode(basic.bytes())),
        ],
    );
    print(
        "identity-rotated",
        &[
            ("next_secret", NEXT.into()),
            ("now", (NOW + 60).to_string()),
            ("peer_id", rotated.doc().peer_id().unwrap().to_string()),
            ("seq", rotated.doc().seq.to_string()),
            ("document", hex::encode(rotated.bytes())),
        ],
    );

    let v = vectors("identity.md");
    let b = &v["identity-basic"];
    let now: u64 = b["now"].parse().unwrap();
    let bytes = hex::decode(&b["document"]).unwrap();
    let doc = SignedDocument::decode(&bytes, now).expect("vector verifies");
    assert_eq!(doc.doc().uuid().to_string(), b["uuid"]);
    assert_eq!(doc.doc().fingerprint().to_hex(), b["fingerprint"]);
    assert_eq!(doc.doc().peer_id().unwrap().to_string(), b["peer_id"]);
    assert_eq!(doc.doc().seq.to_string(), b["seq"]);
    assert_eq!(hex::encode(dht_key(&doc.doc().uuid())), b["dht_key"]);
    assert_eq!(
        hex::decode(&b["document"]).unwrap(),
        basic.bytes(),
        "encoding is reproducible"
    );

    let r = &v["identity-rotated"];
    let rnow: u64 = r["now"].parse().unwrap();
    let rbytes = hex::decode(&r["document"]).unwrap();
    let rdoc = SignedDocument::decode(&rbytes, rnow).expect("rotated vector verifies");
    assert_eq!(rdoc.doc().uuid(), doc.doc().uuid());
    assert_eq!(rdoc.doc().key_chain.len(), 1);
    assert_eq!(rdoc.doc().peer_id().unwrap().to_string(), r["peer_id"]);
    assert_eq!(rdoc.may_replace(&doc), Ok(true));
    assert_eq!(rbytes, rotated.bytes());

    // With the ratchet key bundle (`ratchet.md`), the same identity, no reach.
    let (ik, fk) = (
        hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"),
        hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
    );
    let mut with = identity();
    with.set_ratchet_keys(ik, fk);
    let bundled = with.issue_document(&[], NOW);
    print(
        "identity-ratchet",
        &[
            ("ratchet_ik", hex::encode(ik)),
            ("ratchet_fk", hex::encode(fk)),
            ("document", hex::encode(bundled.bytes())),
        ],
    );
    let w = &v["identity-ratchet"];
    let wbytes = hex::decode(&w["document"]).unwrap();
    let wdoc = SignedDocument::decode(&wbytes, NOW).expect("bundled vector verifies");
    let bundle = wdoc.doc().ratchet.clone().expect("carries the bundle");
    assert_eq!(
        (hex::encode(bundle.ik), hex::encode(bundle.fk)),
        (w["ratchet_ik"].clone(), w["ratchet_fk"].clone())
    );
    assert_eq!(wbytes, bundled.bytes(), "encoding is reproducible");
    assert_eq!(doc.doc().ratchet, None, "the basic vector has no bundle");

    // The same vector, one bit flipped in the body's last byte, no longer verifies; and past
    // its expiry it is refused.
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 70] ^= 1;
    assert!(SignedDocument::decode(&flipped, now).is_err());
    assert_eq!(
        SignedDocument::decode(&bytes, now + 15 * 24 * 3600),
        Err(DocumentError::Expired)
    );
}

/// Vector `name`'s `cbor` field, decoded.
fn decode<T: serde::de::DeserializeOwned>(
    v: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    name: &str,
    max: usize,
) -> T {
    cbor::from_slice(&hex::decode(&v[name]["cbor"]).unwrap(), max).unwrap()
}

#[test]
fn verbs_vectors() {
    let uuid = identity().uuid();
    let doc = identity().issue_document(&[], NOW);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "getcertificate-request",
            cbor::to_vec(&Request::GetCertificate {
                uuid: *uuid.as_bytes(),
            })
            .unwrap(),
        ),
        (
            "certificate-response",
            cbor::to_vec(&Response::Certificate {
                doc: doc.bytes().to_vec(),
            })
            .unwrap(),
        ),
        (
            "notfound-response",
            cbor::to_vec(&Response::NotFound).unwrap(),
        ),
        (
            "nack-response",
            cbor::to_vec(&Response::Nack {
                reason: "malformed".into(),
            })
            .unwrap(),
        ),
    ];
    for (name, bytes) in &cases {
        print(name, &[("cbor", hex::encode(bytes))]);
    }
    let v = vectors("verbs.md");
    for (name, bytes) in &cases {
        assert_eq!(&hex::decode(&v[*name]["cbor"]).unwrap(), bytes, "{name}");
    }
    let decode_req = |name: &str| -> Request { decode(&v, name, MAX_REQUEST_BYTES) };
    let decode_resp = |name: &str| -> Response { decode(&v, name, MAX_RESPONSE_BYTES) };
    assert_eq!(
        decode_req("getcertificate-request"),
        Request::GetCertificate {
            uuid: *uuid.as_bytes()
        }
    );
    assert_eq!(
        decode_resp("nack-response"),
        Response::Nack {
            reason: "malformed".into()
        }
    );
    assert_eq!(decode_resp("notfound-response"), Response::NotFound);
    let Response::Certificate { doc: d } = decode_resp("certificate-response") else {
        panic!("not a certificate");
    };
    assert!(SignedDocument::decode_for(&d, &uuid, NOW).is_ok());
}

const RECIPIENT_SIGNING: &str = "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7";
const RECIPIENT_ENC: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
const EPHEMERAL: &str = "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4";
const NONCE: &str = "000102030405060708090a0b";
const MSG_ID: &str = "6f1c2b3a4d5e4f60a1b2c3d4e5f60718";
const ATTACHMENT_KEY: &str = "4242424242424242424242424242424242424242424242424242424242424242";

#[test]
fn message_vectors() {
    use ptpchat::wire::envelope::{self, AttachmentMeta, Envelope, OpenCache, VerifyContext};
    use ptpchat::wire::verbs::Outcome;
    use sha2::Digest;

    let mut sender = identity();
    let sender_keys = {
        let doc = sender.issue_document(&[], NOW);
        sender.message_keys(doc)
    };
    let mut recipient =
        Identity::from_secret_keys(hex32(RECIPIENT_SIGNING), hex32(RECIPIENT_ENC), NOW);
    let recipient_keys = {
        let doc = recipient.issue_document(&[], NOW);
        recipient.message_keys(doc)
    };
    let msg_id: [u8; 16] = hex::decode(MSG_ID).unwrap().try_into().unwrap();
    let env = Envelope {
        v: 1,
        msg_id,
        from: *sender_keys.uuid.as_bytes(),
        to: *recipient_keys.uuid.as_bytes(),
        ts: NOW * 1000,
        kind: "text".into(),
        body: "hello".into(),
        attachments: vec![AttachmentMeta {
            name: "a.txt".into(),
            mime: "text/plain".into(),
            size: 5,
            sha256: sha2::Sha256::digest(b"hello").into(),
            key: hex32(ATTACHMENT_KEY),
        }],
    };
    let body = cbor::to_vec(&env).unwrap();
    let signed = envelope::sign(&env, &sender_keys);
    let nonce: [u8; 12] = hex::decode(NONCE).unwrap().try_into().unwrap();
    let sealed = envelope::seal_with(
        hex32(EPHEMERAL),
        nonce,
        &recipient_keys.doc.doc().enc_key,
        &signed,
    );
    let chunk = envelope::seal_chunk(&hex32(ATTACHMENT_KEY), &msg_id, 0, 0, b"hello");
    let message_request = cbor::to_vec(&Request::Message {
        sealed: vec![serde_bytes::ByteBuf::from(vec![0xde, 0xad])],
    })
    .unwrap();
    let chunk_request = cbor::to_vec(&Request::Chunk {
        msg_id,
        attachment: 0,
        offset: 0,
        data: chunk.clone(),
    })
    .unwrap();
    let outcomes = Response::Outcomes {
        outcomes: vec![
            Outcome::Ack,
            Outcome::Nack {
                reason: "bad_signature".into(),
            },
            Outcome::Need {
                attachment: 0,
                offset: 262_144,
            },
        ],
    };
    let outcomes_response = cbor::to_vec(&outcomes).unwrap();
    print(
        "message-envelope",
        &[
            ("sender_signing_secret", SIGNING.into()),
            ("sender_enc_secret", ENC.into()),
            ("recipient_signing_secret", RECIPIENT_SIGNING.into()),
            ("recipient_enc_secret", RECIPIENT_ENC.into()),
            ("now", NOW.to_string()),
            ("envelope", hex::encode(&body)),
        ],
    );
    print(
        "message-signed",
        &[
            ("sender_document", hex::encode(sender_keys.doc.bytes())),
            ("signed", hex::encode(&signed)),
        ],
    );
    print(
        "message-sealed",
        &[
            (
                "recipient_enc_public",
                hex::encode(recipient_keys.doc.doc().enc_key),
            ),
            ("ephemeral_secret", EPHEMERAL.into()),
            ("nonce", NONCE.into()),
            ("sealed", hex::encode(&sealed)),
        ],
    );
    print(
        "attachment-chunk",
        &[
            ("key", ATTACHMENT_KEY.into()),
            ("plaintext", hex::encode(b"hello")),
            ("sealed", hex::encode(&chunk)),
        ],
    );
    print(
        "message-request",
        &[("cbor", hex::encode(&message_request))],
    );
    print("chunk-request", &[("cbor", hex::encode(&chunk_request))]);
    print(
        "outcomes-response",
        &[("cbor", hex::encode(&outcomes_response))],
    );

    let v = vectors("messages.md");
    let field = |vector: &str, key: &str| hex::decode(&v[vector][key]).unwrap();
    // Encoding reproduces the spec's bytes exactly.
    assert_eq!(field("message-envelope", "envelope"), body);
    assert_eq!(field("message-signed", "signed"), signed);
    assert_eq!(field("message-sealed", "sealed"), sealed);
    assert_eq!(field("attachment-chunk", "sealed"), chunk);
    assert_eq!(field("message-request", "cbor"), message_request);
    assert_eq!(field("chunk-request", "cbor"), chunk_request);
    assert_eq!(field("outcomes-response", "cbor"), outcomes_response);

    // And the spec's bytes decode: the recipient opens and verifies the sealed vector.
    let cache = ptpchat::shared::Shared::new(OpenCache::default());
    let opened = envelope::open(&field("message-sealed", "sealed"), &recipient_keys, &cache)
        .expect("the recipient opens the vector");
    assert_eq!(opened.as_slice(), signed.as_slice());
    let docs = |from: &uuid::Uuid, bytes: &[u8]| {
        SignedDocument::decode_for(bytes, from, NOW)
            .map_err(|e| envelope::Reject::BadSenderDocument(e.to_string()))
    };
    let cx = VerifyContext {
        me: recipient_keys.uuid,
        peer: Some(sender_keys.doc.doc().peer_id().unwrap()),
        now_ms: NOW * 1000,
        max_attachment: envelope::DEFAULT_MAX_ATTACHMENT_BYTES,
        sender_document: &docs,
        key_cache: None,
    };
    let verified = envelope::verify(&opened, &cx).expect("the vector verifies");
    assert_eq!(verified.envelope, env);
    // The sender cannot open what it sealed to someone else.
    assert!(envelope::open(&sealed, &sender_keys, &cache).is_err());
    assert_eq!(
        envelope::open_chunk(
            &hex32(ATTACHMENT_KEY),
            &msg_id,
            0,
            0,
            &field("attachment-chunk", "sealed")
        )
        .unwrap(),
        b"hello"
    );
    assert!(envelope::open_chunk(&hex32(ATTACHMENT_KEY), &msg_id, 0, 1, &chunk).is_err());
    let req: Request =
        cbor::from_slice(&field("chunk-request", "cbor"), MAX_REQUEST_BYTES).unwrap();
    assert!(matches!(
        req,
        Request::Chunk {
            offset: 0,
            attachment: 0,
            ..
        }
    ));
    let resp: Response =
        cbor::from_slice(&field("outcomes-response", "cbor"), MAX_RESPONSE_BYTES).unwrap();
    assert_eq!(resp, outcomes);
}

#[test]
fn connect_vectors() {
    use ptpchat::wire::verbs::ConnectAnswer;
    let doc = identity().issue_document(&[], NOW);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "connect-request",
            cbor::to_vec(&Request::Connect {
                doc: doc.bytes().to_vec(),
            })
            .unwrap(),
        ),
        (
            "connect-answer-request",
            cbor::to_vec(&Request::ConnectAnswer { accept: true }).unwrap(),
        ),
        (
            "connect-accept-response",
            cbor::to_vec(&Response::Connect {
                answer: ConnectAnswer::Accept,
            })
            .unwrap(),
        ),
        (
            "connect-pending-response",
            cbor::to_vec(&Response::Connect {
                answer: ConnectAnswer::Pending,
            })
            .unwrap(),
        ),
    ];
    for (name, bytes) in &cases {
        print(name, &[("cbor", hex::encode(bytes))]);
    }
    let v = vectors("connect.md");
    for (name, bytes) in &cases {
        assert_eq!(&hex::decode(&v[*name]["cbor"]).unwrap(), bytes, "{name}");
    }
    let decode_req = |name: &str| -> Request { decode(&v, name, MAX_REQUEST_BYTES) };
    let decode_resp = |name: &str| -> Response { decode(&v, name, MAX_RESPONSE_BYTES) };
    let Request::Connect { doc: d } = decode_req("connect-request") else {
        panic!("not a CONNECT");
    };
    let d = SignedDocument::decode(&d, NOW).unwrap();
    assert_eq!(d.doc().uuid(), identity().uuid());
    assert_eq!(
        decode_req("connect-answer-request"),
        Request::ConnectAnswer { accept: true }
    );
    assert_eq!(
        decode_resp("connect-accept-response"),
        Response::Connect {
            answer: ConnectAnswer::Accept
        }
    );
    assert_eq!(
        decode_resp("connect-pending-response"),
        Response::Connect {
            answer: ConnectAnswer::Pending
        }
    );
}

/// `protocols/ratchet.md`: Bob's stored account (under the given home secret) opens the
/// first message in the vector, which re-encodes to the same bytes; the signed key bundle
/// bytes are as specified. `PRINT_VECTORS=1` makes a new pair (vodozemac's keys are
/// random, so a new run prints different, equally valid bytes).
#[test]
fn ratchet_vectors() {
    use ptpchat::ratchet::{Account, Peer, PublicKeys, RatchetMessage};
    let secret = [0x42u8; 32];
    if std::env::var_os("PRINT_VECTORS").is_some() {
        let (alice, bob) = (Account::new(), Account::new());
        let keys = bob.public_keys().unwrap();
        let mut peer = Peer::default();
        peer.add(alice.start(keys.identity, keys.fallback).unwrap());
        let m = peer
            .encrypt(alice.identity_key(), b"hello Bob")
            .unwrap()
            .unwrap();
        print(
            "ratchet-first-message",
            &[
                ("home_secret", hex::encode(secret)),
                ("recipient_account", bob.to_stored(&secret)),
                ("message", hex::encode(m.encode())),
                ("plaintext", hex::encode(b"hello Bob")),
            ],
        );
    }
    let v = vectors("ratchet.md");
    let first = &v["ratchet-first-message"];
    assert_eq!(first["home_secret"], hex::encode(secret));
    let bob = Account::from_stored(&first["recipient_account"], &secret).expect("account loads");
    let bytes = hex::decode(&first["message"]).unwrap();
    let m = RatchetMessage::decode(&bytes).expect("message decodes");
    assert!(m.is_first());
    assert_eq!(m.encode(), bytes, "re-encodes to the same bytes");
    let opened = Peer::default().decrypt(&bob, &m).expect("opens");
    assert_eq!(hex::encode(&*opened.plaintext), first["plaintext"]);
    // The first message used Bob's fallback key, which stays (a one-time key would not).
    let again = opened.account.expect("a session was started");
    assert_eq!(again.public_keys(), bob.public_keys());

    let b = &v["ratchet-key-bundle"];
    let keys = PublicKeys {
        identity: hex32(&b["identity"]),
        fallback: hex32(&b["fallback"]),
    };
    let uuid: uuid::Uuid = b["uuid"].parse().unwrap();
    assert_eq!(hex::encode(keys.signed_bytes(&uuid)), b["signed_bytes"]);
}

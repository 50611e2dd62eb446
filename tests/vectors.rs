//! Decodes the hex test vectors in `protocols/*.md` and checks them against this
//! implementation, both ways: the vectors decode to what the spec says, and encoding
//! the same inputs reproduces the exact bytes. `PRINT_VECTORS=1 cargo test --test vectors`
//! prints freshly computed vectors (to write a new spec section).

use std::collections::BTreeMap;

use ptpchat::cbor;
use ptpchat::identity::{dht_key, DocumentError, Identity, SignedDocument};
use ptpchat::verbs::{Request, Response, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};

/// Every ```vectors block of a spec: `vector: NAME` starts an entry, `key: value` lines fill it.
fn vectors(spec: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(format!("{}/protocols/{spec}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let mut out = BTreeMap::new();
    let mut in_block = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        match line.trim() {
            "```vectors" => in_block = true,
            "```" => in_block = false,
            l if in_block => {
                let Some((k, v)) = l.split_once(':') else {
                    continue;
                };
                let (k, v) = (k.trim().to_string(), v.trim().to_string());
                if k == "vector" {
                    out.insert(v.clone(), BTreeMap::new());
                    current = Some(v);
                } else if let Some(c) = &current {
                    // Long hex may wrap over several `key:` lines; they concatenate.
                    out.get_mut(c)
                        .unwrap()
                        .entry(k)
                        .or_insert_with(String::new)
                        .push_str(&v);
                }
            }
            _ => {}
        }
    }
    assert!(!out.is_empty(), "no vectors in protocols/{spec}");
    out
}

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
    let decode_req = |name: &str| -> Request {
        cbor::from_slice(&hex::decode(&v[name]["cbor"]).unwrap(), MAX_REQUEST_BYTES).unwrap()
    };
    let decode_resp = |name: &str| -> Response {
        cbor::from_slice(&hex::decode(&v[name]["cbor"]).unwrap(), MAX_RESPONSE_BYTES).unwrap()
    };
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

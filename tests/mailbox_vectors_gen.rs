//! TEMPORARY generator for protocols/mailbox.md vectors (deleted after use).
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use ptpchat::cbor;
use ptpchat::identity::Identity;
use ptpchat::mailbox::{login_bytes, mailbox_id, mailboxes, receipt_bytes, verify_receipt};
use ptpchat::messaging::envelope::Envelope;
use ptpchat::store::mailbox::MailLimits;
use ptpchat::verbs::{DepositResult, MailItem, Request, Response};
use sha2::{Digest, Sha256};
use uuid::Uuid;

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}
fn kp(b: u8) -> Keypair {
    Keypair::ed25519_from_bytes([b; 32]).unwrap()
}
fn p(k: &str, v: &str) {
    for c in v.as_bytes().chunks(96) {
        println!("{k}: {}", std::str::from_utf8(c).unwrap());
    }
}

const RSIGN: &str = "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7";
const RENC: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
const NOW: u64 = 1_767_225_600;

#[test]
fn generate() {
    let relay = kp(7);
    let r7 = relay.public().to_peer_id();
    let (r8, r9, r10) = (
        kp(8).public().to_peer_id(),
        kp(9).public().to_peer_id(),
        kp(10).public().to_peer_id(),
    );
    let mut rec = Identity::from_secret_keys(hex32(RSIGN), hex32(RENC), NOW);
    let u = rec.uuid();
    let up = rec.peer_id();
    println!("vector: mailbox-relay");
    p("relay_secret", &hex::encode([7u8; 32]));
    p("relay_peer_id", &r7.to_string());
    p("relay_peer_id_bytes", &hex::encode(r7.to_bytes()));
    p(
        "relay_public_key",
        &hex::encode(relay.public().try_into_ed25519().unwrap().to_bytes()),
    );
    println!();
    let mb = mailbox_id(&r7, &u);
    println!("vector: mailbox-id");
    p("relay_peer_id", &r7.to_string());
    p("uuid", &u.to_string());
    p("mailbox", &hex::encode(mb));
    println!();
    let reach: Vec<String> = vec![
        format!("/ip4/198.51.100.7/udp/4001/quic-v1/p2p/{r7}/p2p-circuit/p2p/{up}"),
        format!("/ip4/198.51.100.7/tcp/4001/p2p/{r7}/p2p-circuit/p2p/{up}"),
        "/ip4/203.0.113.5/tcp/4001".to_string(),
        format!("/dns4/relay.example.org/tcp/443/p2p/{r8}/p2p-circuit/p2p/{up}"),
        format!("/ip6/2001:db8::1/udp/4001/quic-v1/p2p/{r9}/p2p-circuit/p2p/{up}"),
        format!("/ip4/192.0.2.1/tcp/4001/p2p/{r10}/p2p-circuit/p2p/{up}"),
    ];
    let addrs: Vec<Multiaddr> = reach.iter().map(|a| a.parse().unwrap()).collect();
    let d = rec.issue_document(&addrs, NOW);
    println!("vector: mailbox-list");
    p("peer_id", &up.to_string());
    for (i, r) in reach.iter().enumerate() {
        p(&format!("reach_{}", i + 1), r);
    }
    for (i, (peer, a)) in mailboxes(d.doc()).iter().enumerate() {
        p(&format!("mailbox_{}_relay", i + 1), &peer.to_string());
        p(&format!("mailbox_{}_addr", i + 1), &a.to_string());
    }
    println!();

    let s1 = b"opaque sealed form #1".to_vec();
    let s2 = b"opaque sealed form #2".to_vec();
    let expires = (NOW * 1000 + MailLimits::default().retention_ms) / 1000;
    let rb = receipt_bytes(&mb, &s1, expires);
    let sig: [u8; 64] = relay.sign(&rb).unwrap().try_into().unwrap();
    assert!(verify_receipt(&r7, &mb, &s1, expires, &sig));
    assert!(!verify_receipt(&r7, &mb, &s1, expires + 1, &sig));
    println!("vector: mailbox-receipt");
    p("relay_peer_id", &r7.to_string());
    p("mailbox", &hex::encode(mb));
    p("sealed", &hex::encode(&s1));
    p("sealed_sha256", &hex::encode(Sha256::digest(&s1)));
    p("stored_ms", &(NOW * 1000).to_string());
    p("expires", &expires.to_string());
    p("receipt_bytes", &hex::encode(&rb));
    p("sig", &hex::encode(sig));
    println!();

    let nonce: [u8; 32] = core::array::from_fn(|i| i as u8);
    let lb = login_bytes(&r7, &nonce);
    let lsig = rec.sign(&lb);
    let ld =
        Identity::from_secret_keys(hex32(RSIGN), hex32(RENC), NOW).issue_document(&addrs[..1], NOW);
    println!("vector: mailbox-login");
    p("relay_peer_id", &r7.to_string());
    p("nonce", &hex::encode(nonce));
    p("login_bytes", &hex::encode(&lb));
    p("signing_secret", RSIGN);
    p("enc_secret", RENC);
    p("now", &NOW.to_string());
    p("uuid", &u.to_string());
    p("peer_id", &up.to_string());
    p("document", &hex::encode(ld.bytes()));
    p("sig", &hex::encode(lsig));
    println!();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "deposit-request",
            cbor::to_vec(&Request::Deposit {
                mailbox: mb,
                sealed: vec![s1.clone().into(), s2.clone().into()],
            })
            .unwrap(),
        ),
        (
            "deposited-response",
            cbor::to_vec(&Response::Deposited {
                results: vec![
                    DepositResult::Stored { expires, sig },
                    DepositResult::Nack {
                        reason: "mailbox_full".into(),
                    },
                ],
            })
            .unwrap(),
        ),
        (
            "mailchallenge-request",
            cbor::to_vec(&Request::MailChallenge).unwrap(),
        ),
        (
            "challenge-response",
            cbor::to_vec(&Response::Challenge { nonce }).unwrap(),
        ),
        (
            "maillogin-request",
            cbor::to_vec(&Request::MailLogin {
                doc: ld.bytes().to_vec(),
                sig: lsig,
            })
            .unwrap(),
        ),
        (
            "mailack-request",
            cbor::to_vec(&Request::MailAck { ack: vec![1, 2] }).unwrap(),
        ),
        (
            "mail-response",
            cbor::to_vec(&Response::Mail {
                items: vec![MailItem {
                    n: 1,
                    sealed: s1.clone(),
                }],
                more: false,
            })
            .unwrap(),
        ),
    ];
    for (n, c) in cases {
        println!("vector: {n}");
        p("cbor", &hex::encode(c));
        println!();
    }
    let ids = [
        Uuid::parse_str("3e5a7c9b-1d2f-4a6b-8c0d-2e4f6a8b0c1d").unwrap(),
        Uuid::parse_str("6f1c2b3a-4d5e-4f60-a1b2-c3d4e5f60718").unwrap(),
    ];
    let body = ids
        .iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let env = Envelope {
        v: 1,
        msg_id: *Uuid::parse_str("b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e")
            .unwrap()
            .as_bytes(),
        from: *u.as_bytes(),
        to: *Uuid::parse_str("21fe31df-a154-8261-a26b-f854046fd227")
            .unwrap()
            .as_bytes(),
        ts: NOW * 1000 + 60_000,
        kind: "receipt".into(),
        body: body.clone(),
        attachments: vec![],
    };
    println!("vector: receipt-message");
    p("body", &body);
    p("envelope", &hex::encode(cbor::to_vec(&env).unwrap()));
    let _: PeerId = r7;
}

//! Decodes the hex test vectors of `protocols/channels.md` (copied here as constants, and
//! checked equal to the spec's ```vectors block) and checks them against this
//! implementation: every field decodes to what the spec says, the signed frame verifies,
//! the sealed frame opens, one flipped byte makes each fail, and encoding the same inputs
//! reproduces the exact bytes.

mod common;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use ptpchat::cbor;
use ptpchat::identity::{Identity, MessageKeys, SignedDocument, MAX_DOCUMENT_BYTES};
use ptpchat::wire::envelope::{Reject, MAX_FUTURE_SKEW_MS};
use ptpchat::wire::frame::{self, ChannelBody, KeyGrant};
use serde::Deserialize;
use serde_bytes::ByteArray;
use sha2::{Digest, Sha256};
use uuid::Uuid;

// ---- inputs (section "Test vectors" of protocols/channels.md) ----

const SIGNING: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const ENC: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const TS: u64 = 1_767_225_600_000;
const SENDER_UUID: &str = "21fe31df-a154-8261-a26b-f854046fd227";
const SENDER_PEER_ID: &str = "12D3KooWQK1wnefoLrcVHbbnf5tLzbopUd3K3bFAoJpA7YJgL5pV";
const RECIPIENT_UUID: &str = "dac073e0-123b-8ea5-9dd9-b3bda9cf6037";

const PUBLIC_CHANNEL: &str = "7c0e4f1a-9b2d-4c3e-8f5a-6d1e2b3c4d5e";
const PUBLIC_MSG_ID: &str = "3e5a7c9b-1d2f-4a6b-8c0d-2e4f6a8b0c1d";
const PRIVATE_CHANNEL: &str = "c4a1e2f3-b5d6-4e7f-8a9b-0c1d2e3f4a5b";
const PRIVATE_MSG_ID: &str = "9a8b7c6d-5e4f-4031-8293-a4b5c6d7e8f9";
const CHANNEL_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const SEAL_NONCE: &str = "a0a1a2a3a4a5a6a7a8a9aaab";
const EPOCH: u32 = 2;

// ---- outputs, copied from the spec ----

const PUBLIC_BODY: &str = concat!(
    "aa617601666d73675f6964503e5a7c9b1d2f4a6b8c0d2e4f6a8b0c1d6466726f6d5021fe31dfa1548261a26bf854046f",
    "d227676368616e6e656c507c0e4f1a9b2d4c3e8f5a6d1e2b3c4d5e6274731b0000019b76daa800646b696e6464746578",
    "74646e616d6569727573742d74616c6b6770726976617465f46565706f63680064746578746e68656c6c6f2c20636861",
    "6e6e656c",
);

const SENDER_DOCUMENT: &str = concat!(
    "a264626f6479590152ac61760164757569645021fe31dfa1548261a26bf854046fd2276b67656e657369735f6b657958",
    "20d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a696b65795f636861696e806b637572",
    "72656e745f6b65795820d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a67656e635f6b",
    "657958208520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a67656e635f7369675840bcfd",
    "b4fff6a8f6608b27a2471abd0b5283a1607630f05bd7ad7d31f4a6aa925f9f9cfa5996fa607c07536f28c5a5d93eb72f",
    "630d19f87140b011acfe6dcb650d67706565725f69645826002408011220d75a980182b10ab7d54bfed3c964073a0ee1",
    "72f3daa62325af021a68f707511a65726561636880637365711b0000019b76daa800666973737565641a6955b9006765",
    "7870697265731a69682e0063736967584006b7b89ca9d4964022a6fc33b76d77db20e7d7bd2e9e5379d2a2a179ea0402",
    "2c636660e7c54a49cdf9cc4747020fe318d9718cf2258afbc2866dce4904d99e0a",
);

const PUBLIC_SIGNED: &str = concat!(
    "a364626f64795894aa617601666d73675f6964503e5a7c9b1d2f4a6b8c0d2e4f6a8b0c1d6466726f6d5021fe31dfa154",
    "8261a26bf854046fd227676368616e6e656c507c0e4f1a9b2d4c3e8f5a6d1e2b3c4d5e6274731b0000019b76daa80064",
    "6b696e646474657874646e616d6569727573742d74616c6b6770726976617465f46565706f63680064746578746e6865",
    "6c6c6f2c206368616e6e656c63736967584000c1e5aadebc94255da0c58fb2661ffe126e60d1398373c538fdaf452510",
    "3711bdc7292e12e7839458dcec7815e151ccc777182476e6a66a61955e8b106149006673656e6465725901a1a264626f",
    "6479590152ac61760164757569645021fe31dfa1548261a26bf854046fd2276b67656e657369735f6b65795820d75a98",
    "0182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a696b65795f636861696e806b63757272656e74",
    "5f6b65795820d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a67656e635f6b65795820",
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a67656e635f7369675840bcfdb4fff6a8",
    "f6608b27a2471abd0b5283a1607630f05bd7ad7d31f4a6aa925f9f9cfa5996fa607c07536f28c5a5d93eb72f630d19f8",
    "7140b011acfe6dcb650d67706565725f69645826002408011220d75a980182b10ab7d54bfed3c964073a0ee172f3daa6",
    "2325af021a68f707511a65726561636880637365711b0000019b76daa800666973737565641a6955b900676578706972",
    "65731a69682e0063736967584006b7b89ca9d4964022a6fc33b76d77db20e7d7bd2e9e5379d2a2a179ea04022c636660",
    "e7c54a49cdf9cc4747020fe318d9718cf2258afbc2866dce4904d99e0a",
);

const PUBLIC_TOPIC: &str = "/ptpchat/ch/1/7c0e4f1a9b2d4c3e8f5a6d1e2b3c4d5e";
const GOSSIP_MESSAGE_ID: &str = "0d47553d8d4b5495223a5d5336b74873c80f9acb";

const PRIVATE_BODY: &str = concat!(
    "aa617601666d73675f6964509a8b7c6d5e4f40318293a4b5c6d7e8f96466726f6d5021fe31dfa1548261a26bf854046f",
    "d227676368616e6e656c50c4a1e2f3b5d64e7f8a9b0c1d2e3f4a5b6274731b0000019b76daa800646b696e6464746578",
    "74646e616d65636f70736770726976617465f56565706f63680264746578746c7365616c65642068656c6c6f",
);

const PRIVATE_SIGNED: &str = concat!(
    "a364626f6479588caa617601666d73675f6964509a8b7c6d5e4f40318293a4b5c6d7e8f96466726f6d5021fe31dfa154",
    "8261a26bf854046fd227676368616e6e656c50c4a1e2f3b5d64e7f8a9b0c1d2e3f4a5b6274731b0000019b76daa80064",
    "6b696e646474657874646e616d65636f70736770726976617465f56565706f63680264746578746c7365616c65642068",
    "656c6c6f6373696758408884b5848dc2627cc4529c097fc3a08bdcb0c14d89a74cf764ced275baf7a783dcc31c2e8033",
    "5551d88f04c75b727aadefe98b368d7c8fae1a2d61c7e830ba0c6673656e6465725901a1a264626f6479590152ac6176",
    "0164757569645021fe31dfa1548261a26bf854046fd2276b67656e657369735f6b65795820d75a980182b10ab7d54bfe",
    "d3c964073a0ee172f3daa62325af021a68f707511a696b65795f636861696e806b63757272656e745f6b65795820d75a",
    "980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a67656e635f6b657958208520f0098930a754",
    "748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a67656e635f7369675840bcfdb4fff6a8f6608b27a2471abd",
    "0b5283a1607630f05bd7ad7d31f4a6aa925f9f9cfa5996fa607c07536f28c5a5d93eb72f630d19f87140b011acfe6dcb",
    "650d67706565725f69645826002408011220d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707",
    "511a65726561636880637365711b0000019b76daa800666973737565641a6955b90067657870697265731a69682e0063",
    "736967584006b7b89ca9d4964022a6fc33b76d77db20e7d7bd2e9e5379d2a2a179ea04022c636660e7c54a49cdf9cc47",
    "47020fe318d9718cf2258afbc2866dce4904d99e0a",
);

const SEAL_AAD: &str =
    "707470636861742f6368616e6e656c2d7365616c2f31c4a1e2f3b5d64e7f8a9b0c1d2e3f4a5b00000002";

const SEALED: &str = concat!(
    "a5617601676368616e6e656c50c4a1e2f3b5d64e7f8a9b0c1d2e3f4a5b6565706f636802656e6f6e63654ca0a1a2a3a4",
    "a5a6a7a8a9aaab626374590295afcf1a30299f9a210a6e85159a978e9cc237b7efd9e11cceea979b80f3f167b9aa57fe",
    "73caaf8de5ab9cd4432c8ed912c8a5e853f1586feef5736c23244bcba6d497378a990b6145f4bead0396bcb4503fd354",
    "8168cf8da07b29d1f65464a0dff72e09c4eb2f088ddb240e03f9a5789a38b1d42527399cc4dc895536d7e0df5d172f98",
    "8aecdf8faf76d0be511fd13771fcbe6d86155b6336a6370f6d0c016bc6fac6da00c49442a80d3050f059fce4eabb4986",
    "93d6ea0b24931e04a00564852a77d3208b141c512406bd21d9ea197c4e0f865dc3c35481ddc73cf99aef6facffd8a2c5",
    "ee24dd173cddea25716ffebce5dd0f75f0aee114b73b9c5c7cc7014e67000c60af4dd9f17d7d0245be2cdca80f81e4fd",
    "4104abd852f99c5f0d6cd87dc2624e361c12f416111c5124707ec5e39074100cb9f08d49a9a1c562c92d9663d0aedab6",
    "dfc805a215127cb48b2e8604b8c6bfbbbfc5e82c418a4b23fb002dd372877999ae845313978dd58b416e513f5b0b9d5c",
    "01fcac10a8309064019d084a45d48207fdf65b7fa160b54197f8301fcdc96fbeef6d918b0eb2e7bdb7e9584aee35c10f",
    "36563c30dd6608b8eef8e7fb16ef58f21690554ab159eaac245a627d035bda06fa7af1be86c60ae26c1873856d5dfadd",
    "c32337c4d24eaaf490eb1349d84a784946a708f1a3ec6af90d4d8dd6e8c01127a8bd03cb45f8107dc751fcf73938c567",
    "b3748a1a5b9bff6a584c0da96964bec6d53bd818dced2b76470d8ee07f72c2a15764a1bdcca78455bd319390ec62aee1",
    "12b3021db53f112e27f80c3e24474288f49ac18a4d362b277e84a715d7b44a649e2024bda65e46deca7216739fb47252",
    "b873fc9868f307476ee6502528ca07b4263c68a381226714af193e1625abccbbd5598fed5799256e3245b3f487ae66da",
    "c766",
);

const GRANT: &str = concat!(
    "a6617601676368616e6e656c50c4a1e2f3b5d64e7f8a9b0c1d2e3f4a5b646e616d65636f70736565706f636802636b65",
    "795820000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f676d656d62657273825021fe31",
    "dfa1548261a26bf854046fd22750dac073e0123b8ea59dd9b3bda9cf6037",
);

const PUBLIC_PROVIDER_KEY: &str =
    "52a6b3d6e47dcdc784f0bcc4d287933289e2641b8c05a6ebf571666c79329ffa";
const PRIVATE_TOPIC: &str = "/ptpchat/ch/1/c4a1e2f3b5d64e7f8a9b0c1d2e3f4a5b";
const PRIVATE_PROVIDER_KEY: &str =
    "a5c377c07752a5b80bb3fcd9b195bdb0541877ccb20f63dfe953974cd3574c18";

// ---- helpers ----

fn bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    bytes(s).try_into().unwrap()
}

fn id(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

fn position(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

fn sender_keys() -> MessageKeys {
    let mut sender = Identity::from_secret_keys(arr(SIGNING), arr(ENC), NOW);
    let doc = sender.issue_document(&[], NOW);
    sender.message_keys(doc)
}

fn sender_peer() -> libp2p::PeerId {
    SENDER_PEER_ID.parse().unwrap()
}

/// The sender-document check: decode for the frame's `from`, at the vector's time.
fn docs(from: &Uuid, doc: &[u8]) -> Result<SignedDocument, Reject> {
    SignedDocument::decode_for(doc, from, NOW).map_err(|e| Reject::BadSenderDocument(e.to_string()))
}

fn verify_at(
    signed: &[u8],
    author: Option<libp2p::PeerId>,
    now_ms: u64,
) -> Result<frame::Checked, frame::Drop> {
    frame::verify(signed, frame::Via::Gossip(author), now_ms, &docs, None)
}

/// The signed form, decoded with the field names and types the spec gives.
#[derive(Deserialize)]
struct WireSigned {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sender: Vec<u8>,
}

fn public_body() -> ChannelBody {
    ChannelBody {
        v: 1,
        msg_id: *id(PUBLIC_MSG_ID).as_bytes(),
        from: *id(SENDER_UUID).as_bytes(),
        channel: *id(PUBLIC_CHANNEL).as_bytes(),
        ts: TS,
        kind: "text".into(),
        name: "rust-talk".into(),
        private: false,
        epoch: 0,
        text: "hello, channel".into(),
    }
}

fn private_body() -> ChannelBody {
    ChannelBody {
        v: 1,
        msg_id: *id(PRIVATE_MSG_ID).as_bytes(),
        from: *id(SENDER_UUID).as_bytes(),
        channel: *id(PRIVATE_CHANNEL).as_bytes(),
        ts: TS,
        kind: "text".into(),
        name: "ops".into(),
        private: true,
        epoch: EPOCH,
        text: "sealed hello".into(),
    }
}

// ---- tests ----

#[test]
fn spec_holds_these_vectors() {
    let v = common::spec_vectors("channels.md");
    let get = |vector: &str, key: &str| -> String {
        v.get(vector)
            .and_then(|m| m.get(key))
            .unwrap_or_else(|| panic!("{vector}.{key} missing from protocols/channels.md"))
            .clone()
    };
    let expect = [
        ("channel-public-text", "signing_secret", SIGNING.to_string()),
        ("channel-public-text", "enc_secret", ENC.to_string()),
        ("channel-public-text", "now", NOW.to_string()),
        ("channel-public-text", "from", SENDER_UUID.into()),
        ("channel-public-text", "peer_id", SENDER_PEER_ID.into()),
        ("channel-public-text", "msg_id", PUBLIC_MSG_ID.into()),
        ("channel-public-text", "channel", PUBLIC_CHANNEL.into()),
        ("channel-public-text", "ts", TS.to_string()),
        ("channel-public-text", "body", PUBLIC_BODY.into()),
        (
            "channel-public-text",
            "sender_document",
            SENDER_DOCUMENT.into(),
        ),
        ("channel-public-text", "signed", PUBLIC_SIGNED.into()),
        ("channel-public-text", "topic", PUBLIC_TOPIC.into()),
        (
            "channel-public-text",
            "gossip_message_id",
            GOSSIP_MESSAGE_ID.into(),
        ),
        ("channel-private-text", "msg_id", PRIVATE_MSG_ID.into()),
        ("channel-private-text", "channel", PRIVATE_CHANNEL.into()),
        ("channel-private-text", "epoch", EPOCH.to_string()),
        ("channel-private-text", "body", PRIVATE_BODY.into()),
        ("channel-private-text", "signed", PRIVATE_SIGNED.into()),
        ("channel-sealed", "key", CHANNEL_KEY.into()),
        ("channel-sealed", "channel", PRIVATE_CHANNEL.into()),
        ("channel-sealed", "epoch", EPOCH.to_string()),
        ("channel-sealed", "nonce", SEAL_NONCE.into()),
        ("channel-sealed", "aad", SEAL_AAD.into()),
        ("channel-sealed", "sealed", SEALED.into()),
        ("channel-key-grant", "channel", PRIVATE_CHANNEL.into()),
        ("channel-key-grant", "key", CHANNEL_KEY.into()),
        ("channel-key-grant", "grant_sender", SENDER_UUID.into()),
        (
            "channel-key-grant",
            "grant_recipient",
            RECIPIENT_UUID.into(),
        ),
        ("channel-key-grant", "dm_kind", frame::GRANT_KIND.into()),
        ("channel-key-grant", "grant", GRANT.into()),
        ("channel-topic", "channel", PUBLIC_CHANNEL.into()),
        ("channel-topic", "topic", PUBLIC_TOPIC.into()),
        ("channel-topic", "provider_key", PUBLIC_PROVIDER_KEY.into()),
        ("channel-topic", "private_channel", PRIVATE_CHANNEL.into()),
        ("channel-topic", "private_topic", PRIVATE_TOPIC.into()),
        (
            "channel-topic",
            "private_provider_key",
            PRIVATE_PROVIDER_KEY.into(),
        ),
    ];
    for (vector, key, value) in expect {
        assert_eq!(get(vector, key), value, "{vector}.{key}");
    }
    // The decoded fields the spec lists.
    let b = public_body();
    let p = &v["channel-public-text"];
    assert_eq!(p["v"], b.v.to_string());
    assert_eq!(p["kind"], b.kind);
    assert_eq!(p["name"], b.name);
    assert_eq!(p["private"], b.private.to_string());
    assert_eq!(p["epoch"], b.epoch.to_string());
    assert_eq!(p["text"], b.text);
    let b = private_body();
    let p = &v["channel-private-text"];
    assert_eq!(p["ts"], b.ts.to_string());
    assert_eq!(p["kind"], b.kind);
    assert_eq!(p["name"], b.name);
    assert_eq!(p["private"], b.private.to_string());
    assert_eq!(p["text"], b.text);
    let g = &v["channel-key-grant"];
    assert_eq!(g["name"], "ops");
    assert_eq!(g["epoch"], EPOCH.to_string());
    assert_eq!(g["members"], format!("{SENDER_UUID} {RECIPIENT_UUID}"));
}

#[test]
fn public_text_frame_decodes_and_verifies() {
    let signed = bytes(PUBLIC_SIGNED);

    // The body, decoded on its own.
    let body: ChannelBody = cbor::from_slice(&bytes(PUBLIC_BODY), frame::MAX_BODY_BYTES).unwrap();
    assert_eq!(body.v, 1);
    assert_eq!(Uuid::from_bytes(body.msg_id), id(PUBLIC_MSG_ID));
    assert_eq!(Uuid::from_bytes(body.from), id(SENDER_UUID));
    assert_eq!(Uuid::from_bytes(body.channel), id(PUBLIC_CHANNEL));
    assert_eq!(body.ts, TS);
    assert_eq!(body.kind, frame::TEXT);
    assert_eq!(body.name, "rust-talk");
    assert!(!body.private);
    assert_eq!(body.epoch, 0);
    assert_eq!(body.text, "hello, channel");
    assert_eq!(body, public_body());

    // The signed form: the body bytes, a 64-byte signature, the sender's document.
    let form: WireSigned = cbor::from_slice(&signed, frame::MAX_SIGNED_BYTES).unwrap();
    assert_eq!(form.body, bytes(PUBLIC_BODY));
    assert_eq!(form.sig.len(), 64);
    assert_eq!(form.sender, bytes(SENDER_DOCUMENT));
    let doc = SignedDocument::decode_for(&form.sender, &id(SENDER_UUID), NOW).unwrap();
    assert_eq!(doc.doc().peer_id(), Some(sender_peer()));

    // The receiver's checks, at now = ts, with the sender as gossip author.
    let checked = verify_at(&signed, Some(sender_peer()), TS).expect("the vector verifies");
    assert_eq!(checked.body, public_body());
    assert_eq!(checked.sender.doc().uuid(), id(SENDER_UUID));

    // Its topic and gossipsub message id.
    assert_eq!(frame::topic(&id(PUBLIC_CHANNEL)), PUBLIC_TOPIC);
    let mut h = Sha256::new();
    h.update(PUBLIC_TOPIC.as_bytes());
    h.update([0u8]);
    h.update(&signed);
    assert_eq!(hex::encode(&h.finalize()[..20]), GOSSIP_MESSAGE_ID);

    // Encoding the same inputs reproduces the bytes.
    let keys = sender_keys();
    assert_eq!(keys.uuid, id(SENDER_UUID));
    assert_eq!(keys.doc.bytes(), bytes(SENDER_DOCUMENT).as_slice());
    assert_eq!(cbor::to_vec(&public_body()).unwrap(), bytes(PUBLIC_BODY));
    assert_eq!(frame::sign(&public_body(), &keys), signed);

    // One flipped byte in the body (the last byte of the text): the signature fails.
    let at = position(&signed, &form.body) + form.body.len() - 1;
    let mut flipped = signed.clone();
    flipped[at] ^= 1;
    assert_eq!(
        verify_at(&flipped, Some(sender_peer()), TS).unwrap_err(),
        frame::Drop::Signed(Reject::BadSignature)
    );
    // One flipped byte in the signature.
    let mut flipped = signed.clone();
    flipped[position(&signed, &form.sig)] ^= 1;
    assert_eq!(
        verify_at(&flipped, Some(sender_peer()), TS).unwrap_err(),
        frame::Drop::Signed(Reject::BadSignature)
    );
    // One flipped byte in the sender document (the last byte of its signature).
    let mut flipped = signed.clone();
    let at = position(&signed, &form.sender) + form.sender.len() - 1;
    flipped[at] ^= 1;
    assert!(matches!(
        verify_at(&flipped, Some(sender_peer()), TS).unwrap_err(),
        frame::Drop::Signed(Reject::BadSenderDocument(_))
    ));

    // Another author, or none, is a peer mismatch.
    let other = Identity::from_secret_keys([9; 32], [10; 32], NOW).peer_id();
    assert_eq!(
        verify_at(&signed, Some(other), TS).unwrap_err(),
        frame::Drop::Signed(Reject::PeerMismatch)
    );
    assert_eq!(
        verify_at(&signed, None, TS).unwrap_err(),
        frame::Drop::Signed(Reject::PeerMismatch)
    );

    // Timestamps: up to 10 min ahead and 1 h old are fine, one millisecond more is not.
    assert!(verify_at(&signed, Some(sender_peer()), TS - MAX_FUTURE_SKEW_MS).is_ok());
    assert_eq!(
        verify_at(&signed, Some(sender_peer()), TS - MAX_FUTURE_SKEW_MS - 1).unwrap_err(),
        frame::Drop::Signed(Reject::BadTimestamp)
    );
    assert!(verify_at(&signed, Some(sender_peer()), TS + frame::MAX_AGE_MS).is_ok());
    let stale = verify_at(&signed, Some(sender_peer()), TS + frame::MAX_AGE_MS + 1).unwrap_err();
    assert_eq!(stale, frame::Drop::Stale);
    assert_eq!(stale.counter().as_str(), "channel_stale");
}

#[test]
fn sealed_frame_opens_to_the_private_signed_frame() {
    let sealed = bytes(SEALED);
    let key: [u8; 32] = arr(CHANNEL_KEY);

    // The header, read without the key.
    let f = frame::sealed_header(&sealed).unwrap();
    assert_eq!(f.v, 1);
    assert_eq!(Uuid::from_bytes(f.channel), id(PRIVATE_CHANNEL));
    assert_eq!(f.epoch, EPOCH);
    assert_eq!(f.nonce, arr::<12>(SEAL_NONCE));
    assert_eq!(
        f.ct.len(),
        bytes(PRIVATE_SIGNED).len() + 16,
        "plaintext + 16-byte tag"
    );

    // It opens to the private frame's signed form, which verifies.
    let opened = frame::open(&f, &key).expect("the vector opens");
    assert_eq!(opened, bytes(PRIVATE_SIGNED));
    let checked = verify_at(&opened, Some(sender_peer()), TS).expect("the opened frame verifies");
    assert_eq!(checked.body, private_body());
    assert_eq!(
        cbor::from_slice::<ChannelBody>(&bytes(PRIVATE_BODY), frame::MAX_BODY_BYTES).unwrap(),
        private_body()
    );
    assert!(checked.body.private);
    assert_eq!(checked.body.epoch, f.epoch);
    assert_eq!(checked.body.channel, f.channel);

    // The AEAD as the spec states it, independently of frame::open.
    let mut aad = b"ptpchat/channel-seal/1".to_vec();
    aad.extend_from_slice(id(PRIVATE_CHANNEL).as_bytes());
    aad.extend_from_slice(&EPOCH.to_be_bytes());
    assert_eq!(hex::encode(&aad), SEAL_AAD);
    let nonce: [u8; 12] = arr(SEAL_NONCE);
    let plain = ChaCha20Poly1305::new((&key).into())
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &f.ct,
                aad: &aad,
            },
        )
        .expect("ChaCha20-Poly1305 with the spec's AAD opens it");
    assert_eq!(plain, bytes(PRIVATE_SIGNED));

    // Encoding the same inputs reproduces the bytes.
    let keys = sender_keys();
    assert_eq!(cbor::to_vec(&private_body()).unwrap(), bytes(PRIVATE_BODY));
    let signed = frame::sign(&private_body(), &keys);
    assert_eq!(signed, bytes(PRIVATE_SIGNED));
    assert_eq!(
        frame::seal(&key, id(PRIVATE_CHANNEL).as_bytes(), EPOCH, nonce, &signed),
        sealed
    );

    // One flipped byte in the ciphertext (its tag): it no longer opens.
    let mut flipped = sealed.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 1;
    let g = frame::sealed_header(&flipped).unwrap();
    assert_eq!(
        frame::open(&g, &key).unwrap_err(),
        frame::Drop::Signed(Reject::Undecryptable)
    );
    // One flipped byte of the epoch in the header: bound by the AAD.
    let mut flipped = sealed.clone();
    let at = position(&sealed, b"epoch") + 5;
    assert_eq!(flipped[at], 0x02);
    flipped[at] ^= 1;
    let g = frame::sealed_header(&flipped).unwrap();
    assert_eq!(g.epoch, 3);
    assert_eq!(
        frame::open(&g, &key).unwrap_err(),
        frame::Drop::Signed(Reject::Undecryptable)
    );
    // One flipped byte of the channel id in the header: bound by the AAD.
    let mut flipped = sealed.clone();
    flipped[position(&sealed, id(PRIVATE_CHANNEL).as_bytes())] ^= 1;
    let g = frame::sealed_header(&flipped).unwrap();
    assert!(frame::open(&g, &key).is_err());
    // Another key.
    let mut other = key;
    other[0] ^= 1;
    assert!(frame::open(&f, &other).is_err());
}

#[test]
fn key_grant_decodes() {
    let g = frame::decode_grant(GRANT).expect("the vector decodes");
    assert_eq!(g.v, 1);
    assert_eq!(Uuid::from_bytes(g.channel), id(PRIVATE_CHANNEL));
    assert_eq!(g.name, "ops");
    assert_eq!(g.epoch, EPOCH);
    assert_eq!(g.key, arr::<32>(CHANNEL_KEY));
    let members: Vec<Uuid> = g.members.iter().map(|m| Uuid::from_bytes(**m)).collect();
    assert_eq!(members, vec![id(SENDER_UUID), id(RECIPIENT_UUID)]);

    // The recipient UUID is that of the recipient keys in messages.md.
    let recipient = Identity::from_secret_keys(
        arr("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7"),
        arr("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
        NOW,
    );
    assert_eq!(recipient.uuid(), id(RECIPIENT_UUID));

    // Encoding reproduces the body of the `channel-key` direct message.
    let grant = KeyGrant {
        v: 1,
        channel: *id(PRIVATE_CHANNEL).as_bytes(),
        name: "ops".into(),
        epoch: EPOCH,
        key: arr(CHANNEL_KEY),
        members: vec![
            ByteArray::new(*id(SENDER_UUID).as_bytes()),
            ByteArray::new(*id(RECIPIENT_UUID).as_bytes()),
        ],
    };
    assert_eq!(g, grant);
    assert_eq!(frame::encode_grant(&grant), GRANT);
    assert_eq!(frame::GRANT_KIND, "channel-key");

    // A grant has no integrity of its own (the direct message carrying it is signed and
    // sealed), but one flipped byte of its version or epoch, or a cut, makes it refused.
    let raw = bytes(GRANT);
    let mut flipped = raw.clone();
    let at = position(&raw, b"v") + 1;
    assert_eq!(flipped[at], 0x01);
    flipped[at] ^= 0x03; // v = 2
    assert!(matches!(
        frame::decode_grant(&hex::encode(&flipped)),
        Err(Reject::Malformed(_))
    ));
    let mut flipped = raw.clone();
    let at = position(&raw, b"epoch") + 5;
    assert_eq!(flipped[at], 0x02);
    flipped[at] ^= 0x02; // epoch = 0
    assert!(matches!(
        frame::decode_grant(&hex::encode(&flipped)),
        Err(Reject::Malformed(_))
    ));
    assert!(frame::decode_grant(&GRANT[..GRANT.len() - 2]).is_err());
    assert!(
        frame::decode_grant(&format!("{GRANT}0")).is_err(),
        "not hex"
    );
}

#[test]
fn topics_and_provider_keys() {
    for (channel, topic, provider) in [
        (PUBLIC_CHANNEL, PUBLIC_TOPIC, PUBLIC_PROVIDER_KEY),
        (PRIVATE_CHANNEL, PRIVATE_TOPIC, PRIVATE_PROVIDER_KEY),
    ] {
        let c = id(channel);
        assert_eq!(frame::topic(&c), topic);
        assert_eq!(frame::channel_of_topic(topic), Some(c));
        assert_eq!(hex::encode(frame::provider_key(&c)), provider);
        // As the spec states it: SHA-256("ptpchat/channel-providers/1" ‖ id).
        let mut h = Sha256::new();
        h.update(b"ptpchat/channel-providers/1");
        h.update(c.as_bytes());
        assert_eq!(hex::encode(h.finalize()), provider);

        // One flipped byte of the id: another topic and another key.
        let mut b = *c.as_bytes();
        b[15] ^= 1;
        let d = Uuid::from_bytes(b);
        assert_ne!(frame::topic(&d), topic);
        assert_ne!(hex::encode(frame::provider_key(&d)), provider);
        // Only the canonical form of the topic names the channel.
        assert_eq!(frame::channel_of_topic(&format!("/ptpchat/ch/1/{c}")), None);
        assert_eq!(
            frame::channel_of_topic(&topic.replace(
                &c.simple().to_string(),
                &c.simple().to_string().to_uppercase()
            )),
            None
        );
    }
    assert_eq!(frame::ANNOUNCE_TOPIC, "/ptpchat/announce/1");
    assert_eq!(frame::channel_of_topic(frame::ANNOUNCE_TOPIC), None);
}

#[test]
fn limits_are_as_specified() {
    assert_eq!(frame::FRAME_VERSION, 1);
    assert_eq!(frame::MAX_CHANNEL_TEXT, 16_384);
    assert_eq!(frame::MAX_NAME_BYTES, 64);
    assert_eq!(frame::MAX_GRANT_MEMBERS, 256);
    assert_eq!(frame::MAX_BODY_BYTES, 16_704);
    assert_eq!(MAX_DOCUMENT_BYTES, 8_192);
    assert_eq!(frame::MAX_SIGNED_BYTES, 25_152);
    assert_eq!(frame::MAX_SEALED_BYTES, 25_280);
    assert_eq!(frame::MAX_TRANSMIT_BYTES, 26_304);
    assert_eq!(frame::MAX_GRANT_BYTES, 5_440);
    assert_eq!(MAX_FUTURE_SKEW_MS, 600_000);
    assert_eq!(frame::MAX_AGE_MS, 3_600_000);
    assert_eq!(
        [frame::JOIN, frame::LEAVE, frame::CHANNEL, frame::TEXT],
        ["join", "leave", "channel", "text"]
    );
    for ok in ["rust-talk", "ops", "a", "0.x_y"] {
        assert!(frame::check_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "Ops", "-x", "_x", ".x", "a b", "é", &"a".repeat(65)] {
        assert!(frame::check_name(bad).is_err(), "{bad}");
    }
    assert!(frame::check_name(&"a".repeat(64)).is_ok());
}

/// CHANNEL-HISTORY (section 10): the first request for the public channel's posts since ten
/// minutes before `ts`, and a page holding the public TEXT frame, with its cursor. The frame in a page is
/// checked as on the topic except for who passed it on: any member may, so a frame that
/// names no gossip author still verifies `Via::History`, and one flipped byte still fails.
#[test]
fn channel_history_request_and_page() {
    use ptpchat::wire::verbs::{Request, Response, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
    let request = Request::ChannelHistory {
        channel: *id(PUBLIC_CHANNEL).as_bytes(),
        since: TS - 600_000,
        after: Vec::new(),
    };
    // The cursor of the frame: its time, big-endian, then its msg_id.
    let cursor = [
        TS.to_be_bytes().to_vec(),
        bytes(&PUBLIC_MSG_ID.replace('-', "")),
    ]
    .concat();
    let page = Response::ChannelHistory {
        frames: vec![serde_bytes::ByteBuf::from(bytes(PUBLIC_SIGNED))],
        more: false,
        next: cursor.clone(),
    };
    let (req_hex, page_hex) = (
        hex::encode(cbor::to_vec(&request).unwrap()),
        hex::encode(cbor::to_vec(&page).unwrap()),
    );
    let v = common::spec_vectors("channels.md");
    let h = &v["channel-history"];
    assert_eq!(h["request"], req_hex);
    assert_eq!(h["page"], page_hex);
    assert_eq!(h["since"], (TS - 600_000).to_string());
    assert_eq!(h["next"], hex::encode(&cursor));

    let decoded: Request = cbor::from_slice(&bytes(&h["request"]), MAX_REQUEST_BYTES).unwrap();
    assert_eq!(decoded, request);
    let Response::ChannelHistory { frames, more, next } =
        cbor::from_slice(&bytes(&h["page"]), MAX_RESPONSE_BYTES).unwrap()
    else {
        panic!("not a page of history");
    };
    assert!(!more);
    assert_eq!(next, cursor);
    assert_eq!(frames.len(), 1);
    let c = frame::verify(&frames[0], frame::Via::History, TS, &docs, None).unwrap();
    assert_eq!(c.body, public_body());
    // Gossip would refuse it without its author; a page does not ask for one.
    assert!(verify_at(&frames[0], None, TS).is_err());
    let mut flipped = frames[0].to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(frame::verify(&flipped, frame::Via::History, TS, &docs, None).is_err());
}

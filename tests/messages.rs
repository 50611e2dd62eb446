//! Direct messages between in-process nodes on loopback: delivery found by UUID alone,
//! attachments, retries, and every kind of bad message a stranger can send, each of which
//! must be NACKed with its reason, counted, and never stored.

mod common;

use std::time::Duration;

use common::{eventually, start, test_config};
use libp2p::Multiaddr;
use ptpchat::config::Mode;
use ptpchat::identity::{Identity, MessageKeys, SignedDocument};
use ptpchat::messaging::Delivery;
use ptpchat::net::dial::DialReason;
use ptpchat::node::{self, RunningNode};
use ptpchat::store::Store;
use ptpchat::wire::envelope::{self, AttachmentMeta, Envelope};
use ptpchat::wire::verbs::{Outcome, Request, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn now() -> u64 {
    ptpchat::unix_now()
}

fn now_ms() -> u64 {
    now() * 1000
}

/// A user node that publishes its direct addresses (so others can reach it by UUID).
async fn public_node(home: &std::path::Path, bootstrap: &[Multiaddr]) -> RunningNode {
    let mut cfg = test_config(Mode::User, home, bootstrap);
    cfg.public = true;
    node::start(cfg).await.expect("node starts")
}

/// Starts a user node whose identity the test also holds, so it can sign as that node.
async fn node_as(home: &std::path::Path, bootstrap: &[Multiaddr]) -> (RunningNode, Identity) {
    std::fs::create_dir_all(home).unwrap();
    let id = Identity::generate(now());
    let copy = Identity::from_bytes(&id.to_bytes()).unwrap();
    Store::open(home).unwrap().save_identity(&id).unwrap();
    (start(Mode::User, home, bootstrap).await, copy)
}

fn keys_of(id: &mut Identity) -> MessageKeys {
    let doc = id.issue_document(&[], now());
    id.message_keys(doc)
}

fn text_envelope(from: Uuid, to: Uuid, text: &str) -> Envelope {
    Envelope {
        v: 1,
        msg_id: *Uuid::new_v4().as_bytes(),
        from: *from.as_bytes(),
        to: *to.as_bytes(),
        ts: now_ms(),
        kind: "text".into(),
        body: text.into(),
        attachments: vec![],
    }
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    b
}

fn seal(to: &SignedDocument, signed: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&random32()[..12]);
    envelope::seal_with(random32(), nonce, &to.doc().enc_key, signed)
}

/// The signed form as protocols/messages.md specifies it, for tampering.
#[derive(Serialize, Deserialize)]
struct SignedForm {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: [u8; 64],
    #[serde(with = "serde_bytes")]
    sender: Vec<u8>,
}

/// A receiving node B and a sending node X (whose keys the test holds), connected.
struct Fixture {
    _dir: tempfile::TempDir,
    b: RunningNode,
    b_doc: SignedDocument,
    b_addrs: Vec<Multiaddr>,
    x: RunningNode,
    x_id: Identity,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let b = public_node(&dir.path().join("b"), &[]).await;
        let b_addrs = b.listen_addrs().await;
        let (x, x_id) = node_as(&dir.path().join("x"), &b_addrs).await;
        let b_uuid = b.id.as_ref().unwrap().uuid;
        // X learns B's document straight from B.
        let b_doc = eventually(WAIT, "B's document", || async {
            x.client.fetch_certificate(b.peer_id, b_uuid).await.ok()
        })
        .await;
        Fixture {
            _dir: dir,
            b,
            b_doc,
            b_addrs,
            x,
            x_id,
        }
    }

    fn b_uuid(&self) -> Uuid {
        self.b.id.as_ref().unwrap().uuid
    }

    async fn send_raw(&self, sealed: Vec<Vec<u8>>) -> Response {
        self.x
            .client
            .request(
                self.b.peer_id,
                self.b_addrs.clone(),
                DialReason::Chosen,
                Request::Message {
                    sealed: sealed.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                },
            )
            .await
            .expect("B answers")
    }

    async fn send_one(&self, sealed: Vec<u8>) -> Outcome {
        match self.send_raw(vec![sealed]).await {
            Response::Outcomes { mut outcomes } => outcomes.remove(0),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    async fn counter(&self, what: &str) -> u64 {
        common::rejected(&self.b, what).await
    }

    fn b_history_len(&self) -> usize {
        common::history(&self.b).len()
    }

    /// Asserts B refused `sealed` with `reason`, counted it as `counter`, stored nothing.
    async fn assert_refused(&self, sealed: Vec<u8>, reason: &str, counter: &str) {
        let before = self.counter(counter).await;
        let outcome = self.send_one(sealed).await;
        assert_eq!(
            outcome,
            Outcome::Nack {
                reason: reason.into()
            }
        );
        assert_eq!(self.counter(counter).await, before + 1, "{counter} counted");
        assert_eq!(self.b_history_len(), 0, "nothing stored");
    }

    /// Seals a signed form to B, sends it, and expects it refused (see `assert_refused`).
    async fn assert_signed_refused(&self, signed: &[u8], reason: &str, counter: &str) {
        self.assert_refused(seal(&self.b_doc, signed), reason, counter)
            .await
    }

    fn x_keys(&mut self) -> MessageKeys {
        keys_of(&mut self.x_id)
    }
}

#[tokio::test]
async fn message_found_by_uuid_alone_is_acked_after_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(Mode::Relay, &dir.path().join("relay"), &[]).await;
    let relay_addrs = relay.listen_addrs().await;
    let a = start(Mode::User, &dir.path().join("a"), &relay_addrs).await;
    let b = public_node(&dir.path().join("b"), &relay_addrs).await;
    let b_uuid = b.id.as_ref().unwrap().uuid;
    // A knows B's UUID only; it waits until the directory can answer for it.
    eventually(WAIT, "B's document in the DHT", || async {
        a.client.whois(b_uuid).await.ok()
    })
    .await;
    let mut received = b.messenger.as_ref().unwrap().subscribe();
    let sending = a
        .messenger
        .as_ref()
        .unwrap()
        .send(b_uuid, "hello bob".into(), vec![])
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, sending.outcome)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Delivery::Delivered);
    // The ACK came after B committed: its history already has the message.
    let b_hist = common::history(&b);
    assert_eq!(b_hist.len(), 1);
    let entry = &b_hist[0].1;
    assert!(entry.incoming);
    assert_eq!(entry.text, "hello bob");
    assert_eq!(entry.msg_id, *sending.msg_id.as_bytes());
    assert_eq!(entry.peer, *a.id.as_ref().unwrap().uuid.as_bytes());
    let (_, live) = received.recv().await.unwrap();
    assert_eq!(live.text, "hello bob");
    // A's own history shows it delivered.
    let a_hist = common::history(&a);
    assert_eq!(a_hist.len(), 1);
    assert_eq!(a_hist[0].1.status, "delivered");
    assert!(!a_hist[0].1.incoming);
}

#[tokio::test]
async fn a_valid_message_is_acked_and_its_replay_is_acked_but_stored_once() {
    let mut f = Fixture::new().await;
    let keys = f.x_keys();
    let env = text_envelope(keys.uuid, f.b_uuid(), "once");
    let sealed = seal(&f.b_doc, &envelope::sign(&env, &keys));
    assert_eq!(f.send_one(sealed.clone()).await, Outcome::Ack);
    assert_eq!(f.b_history_len(), 1);
    // The same message again (a retry, or a replay by someone who recorded it).
    assert_eq!(f.send_one(sealed.clone()).await, Outcome::Ack);
    // And twice within one batch.
    match f.send_raw(vec![sealed.clone(), sealed]).await {
        Response::Outcomes { outcomes } => assert_eq!(outcomes, vec![Outcome::Ack, Outcome::Ack]),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.b_history_len(), 1, "stored exactly once");
    assert_eq!(f.counter("message_duplicate").await, 3);
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let mut f = Fixture::new().await;
    let keys = f.x_keys();
    let env = text_envelope(keys.uuid, f.b_uuid(), "forged");
    let mut form: SignedForm =
        ptpchat::cbor::from_slice(&envelope::sign(&env, &keys), 1 << 20).unwrap();
    form.sig[10] ^= 1;
    let signed = ptpchat::cbor::to_vec(&form).unwrap();
    f.assert_signed_refused(&signed, "bad_signature", "message_bad_signature")
        .await;
}

#[tokio::test]
async fn a_message_signed_by_a_key_other_than_the_senders_is_refused() {
    let mut f = Fixture::new().await;
    let keys = f.x_keys();
    // Signed by a stranger's key, presented with X's document.
    let mut stranger = Identity::generate(now());
    let mut stranger_keys = keys_of(&mut stranger);
    stranger_keys.uuid = keys.uuid;
    stranger_keys.doc = keys.doc.clone();
    let env = text_envelope(keys.uuid, f.b_uuid(), "not really X");
    let signed = envelope::sign(&env, &stranger_keys);
    f.assert_signed_refused(&signed, "bad_signature", "message_bad_signature")
        .await;
}

#[tokio::test]
async fn a_sender_uuid_that_is_not_the_documents_is_refused() {
    let mut f = Fixture::new().await;
    let keys = f.x_keys();
    // X signs a message claiming to be from someone else's UUID.
    let someone = Identity::generate(now()).uuid();
    let env = text_envelope(someone, f.b_uuid(), "I am someone");
    let signed = envelope::sign(&env, &keys);
    f.assert_signed_refused(&signed, "sender_mismatch", "message_sender_mismatch")
        .await;
}

#[tokio::test]
async fn a_message_relayed_by_a_peer_that_is_not_its_sender_is_refused() {
    let f = Fixture::new().await;
    // Y's genuine, correctly signed message, but it arrives over X's connection.
    let mut y = Identity::generate(now());
    let y_keys = keys_of(&mut y);
    let env = text_envelope(y_keys.uuid, f.b_uuid(), "from Y");
    let signed = envelope::sign(&env, &y_keys);
    f.assert_signed_refused(&signed, "peer_mismatch", "message_peer_mismatch")
        .await;
}

#[tokio::test]
async fn a_message_addressed_to_someone_else_is_refused() {
    let mut f = Fixture::new().await;
    let keys = f.x_keys();
    let other = Identity::generate(now()).uuid();
    let env = text_envelope(keys.uuid, other, "not for B");
    let signed = envelope::sign(&env, &keys);
    f.assert_signed_refused(&signed, "wrong_recipient", "message_wrong_recipient")
        .await;
}

#[tokio::test]
async fn an_undecryptable_message_is_refused() {
    let mut f = Fixture::new().await;
    let keys = f.x_keys();
    let env = text_envelope(keys.uuid, f.b_uuid(), "sealed to the wrong key");
    let signed = envelope::sign(&env, &keys);
    // Sealed to a key B does not have.
    let wrong = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(random32()));
    let sealed = envelope::seal_with(random32(), [7; 12], &wrong.to_bytes(), &signed);
    f.assert_refused(sealed, "undecryptable", "message_undecryptable")
        .await;
    // Sealed to B's key but altered in transit.
    let mut sealed = seal(&f.b_doc, &signed);
    let n = sealed.len();
    sealed[n - 5] ^= 0x40;
    f.assert_refused(sealed, "undecryptable", "message_undecryptable")
        .await;
}

#[tokio::test]
async fn oversized_messages_and_attachments_are_refused() {
    let mut f = Fixture::new().await;
    let keys = f.x_keys();
    // An attachment over B's limit (16 MiB by default).
    let mut env = text_envelope(keys.uuid, f.b_uuid(), "huge file");
    env.attachments.push(AttachmentMeta {
        name: "big.iso".into(),
        mime: "application/octet-stream".into(),
        size: envelope::DEFAULT_MAX_ATTACHMENT_BYTES + 1,
        sha256: [0; 32],
        key: random32(),
    });
    let signed = envelope::sign(&env, &keys);
    f.assert_signed_refused(&signed, "too_large", "message_too_large")
        .await;
    // A text over 64 KiB.
    let env = text_envelope(
        keys.uuid,
        f.b_uuid(),
        &"x".repeat(envelope::MAX_TEXT_BYTES + 1),
    );
    let signed = envelope::sign(&env, &keys);
    f.assert_signed_refused(&signed, "too_large", "message_too_large")
        .await;
    // A request over the 1 MiB verb limit is refused whole.
    let before = f.counter("request_too_large").await;
    let response = f.send_raw(vec![vec![0u8; 1100 * 1024]]).await;
    assert_eq!(
        response,
        Response::Nack {
            reason: "too_large".into()
        }
    );
    assert_eq!(f.counter("request_too_large").await, before + 1);
    assert_eq!(f.b_history_len(), 0);
}

#[tokio::test]
async fn malformed_cbor_is_refused() {
    let mut f = Fixture::new().await;
    // Garbage where the sealed form should be.
    f.assert_refused(
        vec![0xff, 0x00, 0x13, 0x37],
        "malformed",
        "message_malformed",
    )
    .await;
    // A correctly sealed payload that is not a signed form.
    let garbage = seal(&f.b_doc, b"\xa1\x61x\x9f\x9f\x9f");
    f.assert_refused(garbage, "malformed", "message_malformed")
        .await;
    // A signed form whose envelope misses a field.
    let keys = f.x_keys();
    #[derive(Serialize)]
    struct Partial {
        v: u32,
        #[serde(with = "serde_bytes")]
        msg_id: [u8; 16],
    }
    let body = ptpchat::cbor::to_vec(&Partial {
        v: 1,
        msg_id: [1; 16],
    })
    .unwrap();
    let form = SignedForm {
        sig: [0; 64],
        sender: keys.doc.bytes().to_vec(),
        body,
    };
    let signed = ptpchat::cbor::to_vec(&form).unwrap();
    f.assert_signed_refused(&signed, "malformed", "message_malformed")
        .await;
}

#[tokio::test]
async fn a_message_signed_by_a_retired_identity_key_is_refused() {
    let mut f = Fixture::new().await;
    let old_keys = f.x_keys();
    // X rotates its identity key; B learns the new document (as it would from the DHT).
    let mut rotated = Identity::from_bytes(&f.x_id.to_bytes()).unwrap();
    rotated.rotate_identity_key().unwrap();
    let new_doc = rotated.issue_document(&[], now());
    f.b.messenger.as_ref().unwrap().remember_document(&new_doc);
    // Whoever holds the old key can no longer speak for X.
    let env = text_envelope(old_keys.uuid, f.b_uuid(), "old key");
    let signed = envelope::sign(&env, &old_keys);
    f.assert_signed_refused(&signed, "stale_sender_key", "message_stale_sender_key")
        .await;
}

#[tokio::test]
async fn a_batch_is_judged_message_by_message() {
    let mut f = Fixture::new().await;
    let keys = f.x_keys();
    let good = seal(
        &f.b_doc,
        &envelope::sign(&text_envelope(keys.uuid, f.b_uuid(), "good"), &keys),
    );
    let other = Identity::generate(now()).uuid();
    let misaddressed = seal(
        &f.b_doc,
        &envelope::sign(&text_envelope(keys.uuid, other, "bad"), &keys),
    );
    match f.send_raw(vec![misaddressed, good]).await {
        Response::Outcomes { outcomes } => assert_eq!(
            outcomes,
            vec![
                Outcome::Nack {
                    reason: "wrong_recipient".into()
                },
                Outcome::Ack
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.b_history_len(), 1);
}

/// B (public, with `max_attachment`) and A bootstrapped to it, A already holding B's document.
async fn sender_and_recipient(
    dir: &std::path::Path,
    max_attachment: u64,
) -> (RunningNode, RunningNode) {
    let mut cfg = test_config(Mode::User, &dir.join("b"), &[]);
    cfg.public = true;
    cfg.max_attachment = max_attachment;
    let b = node::start(cfg).await.expect("B starts");
    let b_addrs = b.listen_addrs().await;
    let a = start(Mode::User, &dir.join("a"), &b_addrs).await;
    let b_uuid = b.id.as_ref().unwrap().uuid;
    let doc = eventually(WAIT, "B's document", || async {
        a.client.fetch_certificate(b.peer_id, b_uuid).await.ok()
    })
    .await;
    a.messenger.as_ref().unwrap().remember_document(&doc);
    (a, b)
}

#[tokio::test]
async fn attachments_arrive_intact_with_names_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = sender_and_recipient(dir.path(), envelope::DEFAULT_MAX_ATTACHMENT_BYTES).await;
    let b_uuid = b.id.as_ref().unwrap().uuid;
    // Three files: several chunks, empty, and a name that tries to escape.
    let big: Vec<u8> = (0..(600 * 1024 + 123))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("photo.png"), &big).unwrap();
    std::fs::write(src.join("empty.txt"), b"").unwrap();
    std::fs::write(src.join("..notes.md"), b"# hi").unwrap();
    let sending = a
        .messenger
        .as_ref()
        .unwrap()
        .send(
            b_uuid,
            "files".into(),
            vec![
                src.join("photo.png"),
                src.join("empty.txt"),
                src.join("..notes.md"),
            ],
        )
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, sending.outcome)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Delivery::Delivered);
    let hist = common::history(&b);
    assert_eq!(hist.len(), 1);
    let atts = &hist[0].1.attachments;
    assert_eq!(atts.len(), 3);
    assert_eq!(atts[0].name, "photo.png");
    assert_eq!(atts[0].mime, "image/png");
    assert_eq!(std::fs::read(&atts[0].path).unwrap(), big);
    use std::os::unix::fs::PermissionsExt;
    for att in atts.iter() {
        let mode = std::fs::metadata(&att.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} is readable by others", att.name);
    }
    assert_eq!(atts[1].size, 0);
    assert_eq!(std::fs::read(&atts[1].path).unwrap(), b"");
    assert_eq!(atts[2].name, "notes.md");
    assert_eq!(std::fs::read(&atts[2].path).unwrap(), b"# hi");
    // Saved under B's home, and nothing is left half-received.
    let files = std::fs::canonicalize(dir.path().join("b/files")).unwrap();
    assert!(std::path::Path::new(&atts[2].path).starts_with(&files));
    let partial = files.join(".partial");
    assert!(!partial.exists() || std::fs::read_dir(&partial).unwrap().next().is_none());
}

#[tokio::test]
async fn an_attachment_over_the_recipients_limit_is_nacked() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = sender_and_recipient(dir.path(), 1024 * 1024).await;
    let b_uuid = b.id.as_ref().unwrap().uuid;
    let file = dir.path().join("two-mib.bin");
    std::fs::write(&file, vec![3u8; 2 * 1024 * 1024]).unwrap();
    let sending = a
        .messenger
        .as_ref()
        .unwrap()
        .send(b_uuid, "too big for B".into(), vec![file])
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, sending.outcome)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Delivery::Failed("too_large".into()));
    let status = b.client.status().await.unwrap();
    assert_eq!(status.rejected.get("message_too_large"), Some(&1));
    assert!(common::history(&b).is_empty());
}

#[tokio::test]
async fn a_message_to_an_offline_recipient_is_delivered_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(Mode::Relay, &dir.path().join("relay"), &[]).await;
    let relay_addrs = relay.listen_addrs().await;
    let a = start(Mode::User, &dir.path().join("a"), &relay_addrs).await;
    let b = public_node(&dir.path().join("b"), &relay_addrs).await;
    let b_uuid = b.id.as_ref().unwrap().uuid;
    eventually(WAIT, "B in the directory", || async {
        a.client.whois(b_uuid).await.ok()
    })
    .await;
    b.shutdown().await;
    let sending = a
        .messenger
        .as_ref()
        .unwrap()
        .send(b_uuid, "are you there?".into(), vec![])
        .await
        .unwrap();
    let mut outcome = sending.outcome;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut outcome)
            .await
            .is_err(),
        "cannot be delivered while B is down"
    );
    let a_hist = common::history(&a);
    assert_eq!(a_hist[0].1.status, "queued");
    // B comes back (new port, new document); A's retries find it through the directory.
    let b = public_node(&dir.path().join("b"), &relay_addrs).await;
    let delivered = tokio::time::timeout(Duration::from_secs(60), outcome)
        .await
        .expect("delivered after B returned")
        .unwrap();
    assert_eq!(delivered, Delivery::Delivered);
    let b_hist = common::history(&b);
    assert_eq!(b_hist.len(), 1);
    assert_eq!(b_hist[0].1.text, "are you there?");
}

/// B is stopped (not killed) while A streams messages to it. The stop is prompt, it lets
/// go of its database (B starts again at once on the same home, in the same process), and
/// every message reaches B exactly once: what B had stored before the stop is not stored
/// again, what it had not is delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_stream_is_prompt_reopens_at_once_and_loses_nothing() {
    const N: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(Mode::Relay, &dir.path().join("relay"), &[]).await;
    let relay_addrs = relay.listen_addrs().await;
    let a = start(Mode::User, &dir.path().join("a"), &relay_addrs).await;
    let b = public_node(&dir.path().join("b"), &relay_addrs).await;
    let b_uuid = b.id.as_ref().unwrap().uuid;
    eventually(WAIT, "B in the directory", || async {
        a.client.whois(b_uuid).await.ok()
    })
    .await;
    let messenger = a.messenger.clone().unwrap();
    let (first_tx, first) = tokio::sync::oneshot::channel();
    let stream = tokio::spawn(async move {
        let mut first_tx = Some(first_tx);
        let mut outcomes = Vec::new();
        for i in 0..N {
            let s = messenger
                .send(b_uuid, format!("m{i}"), vec![])
                .await
                .unwrap();
            if i == 0 {
                // Let the first one arrive, so the stop lands with the stream flowing.
                let mut o = s.outcome;
                assert_eq!((&mut o).await.unwrap(), Delivery::Delivered);
                if let Some(tx) = first_tx.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            outcomes.push(s.outcome);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outcomes
    });
    first.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = common::history(&b).len();
    assert!(
        (1..N).contains(&before),
        "the stop lands mid-stream ({before} of {N} in)"
    );
    let stopping = std::time::Instant::now();
    b.shutdown().await;
    let took = stopping.elapsed();
    // Under the 5 s drain: a stop that waited out its deadline would not be prompt.
    assert!(took < Duration::from_secs(4), "the stop took {took:?}");
    let b = public_node(&dir.path().join("b"), &relay_addrs).await;
    let outcomes = stream.await.unwrap();
    for (i, o) in outcomes.into_iter().enumerate() {
        let d = tokio::time::timeout(Duration::from_secs(90), o)
            .await
            .unwrap_or_else(|_| panic!("message {} never delivered", i + 1));
        assert_eq!(d.unwrap(), Delivery::Delivered, "message {}", i + 1);
    }
    let mut texts: Vec<String> = common::history(&b)
        .into_iter()
        .map(|(_, e)| e.text)
        .collect();
    texts.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(texts, want, "every message once");
}

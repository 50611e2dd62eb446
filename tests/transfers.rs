//! Attachment transfers under attack: strangers who announce files and never send a chunk
//! cannot take the slots kept for contacts, an idle transfer gives its slot up, and a
//! sender reusing a msg_id never replaces a file already received.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, start, test_config};
use libp2p::Multiaddr;
use ptpchat::config::Mode;
use ptpchat::identity::SignedDocument;
use ptpchat::messaging::transfers::{MAX_PENDING_PER_SENDER, MAX_STRANGER_TRANSFERS};
use ptpchat::messaging::Delivery;
use ptpchat::net::dial::DialReason;
use ptpchat::node::{self, RunningNode};
use ptpchat::store::Contact;
use ptpchat::wire::envelope::{self, AttachmentMeta, Envelope, CHUNK_BYTES};
use ptpchat::wire::verbs::{Outcome, Request, Response};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
/// Strangers enough to fill every slot there is (64) at 4 each.
const STRANGERS: usize = 16;

fn uuid(n: &RunningNode) -> Uuid {
    n.id.as_ref().unwrap().uuid
}

/// A node's message keys, once it has issued its document.
async fn keys(n: &RunningNode) -> std::sync::Arc<ptpchat::identity::MessageKeys> {
    let m = n.messenger.as_ref().unwrap();
    eventually(WAIT, "the node's keys", || async { m.current_keys() }).await
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    b
}

/// The recipient B: public, with the given idle period.
struct Recipient {
    node: RunningNode,
    doc: SignedDocument,
    addrs: Vec<Multiaddr>,
}

async fn recipient(home: &Path, idle: Duration) -> Recipient {
    let mut cfg = test_config(Mode::User, home, &[]);
    cfg.public = true;
    cfg.transfer_idle = idle;
    let node = node::start(cfg).await.expect("B starts");
    let addrs = node.listen_addrs().await;
    let doc = keys(&node).await.doc.clone();
    Recipient { node, doc, addrs }
}

impl Recipient {
    /// Sends `sealed` from `from` straight to B.
    async fn request(&self, from: &RunningNode, request: Request) -> Response {
        from.client
            .request(
                self.node.peer_id,
                self.addrs.clone(),
                DialReason::Chosen,
                request,
            )
            .await
            .expect("B answers")
    }

    /// `from` announces a message with one attachment of `data` (id `msg_id`, its own
    /// timestamp `ts`); B's answer to it.
    async fn announce(
        &self,
        from: &RunningNode,
        msg_id: [u8; 16],
        ts: u64,
        data: &[u8],
        key: [u8; 32],
    ) -> Outcome {
        let keys = keys(from).await;
        let env = Envelope {
            v: 1,
            msg_id,
            from: *uuid(from).as_bytes(),
            to: *uuid(&self.node).as_bytes(),
            ts,
            kind: "text".into(),
            body: "a file".into(),
            attachments: vec![AttachmentMeta {
                name: "file.bin".into(),
                mime: "application/octet-stream".into(),
                size: data.len() as u64,
                sha256: sha256(data),
                key,
            }],
        };
        let signed = envelope::sign(&env, &keys);
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&random32()[..12]);
        let sealed = envelope::seal_with(random32(), nonce, &self.doc.doc().enc_key, &signed);
        only(
            self.request(
                from,
                Request::Message {
                    sealed: vec![serde_bytes::ByteBuf::from(sealed)],
                },
            )
            .await,
        )
    }

    /// `from` sends chunk `index` of a one-attachment message; B's answer.
    async fn chunk(
        &self,
        from: &RunningNode,
        msg_id: [u8; 16],
        data: &[u8],
        key: [u8; 32],
        index: u64,
    ) -> Outcome {
        let start = index as usize * CHUNK_BYTES;
        let part = &data[start..(start + CHUNK_BYTES).min(data.len())];
        let sealed = envelope::seal_chunk(&key, &msg_id, 0, index, part);
        only(
            self.request(
                from,
                Request::Chunk {
                    msg_id,
                    attachment: 0,
                    offset: start as u64,
                    data: sealed,
                },
            )
            .await,
        )
    }

    async fn counter(&self, what: &str) -> u64 {
        common::rejected(&self.node, what).await
    }

    fn partial_transfers(&self, home: &Path) -> usize {
        std::fs::read_dir(home.join("files/.partial"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn only(response: Response) -> Outcome {
    match response {
        Response::Outcomes { mut outcomes } if outcomes.len() == 1 => outcomes.remove(0),
        other => panic!("unexpected answer {other:?}"),
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

fn is_need(o: &Outcome) -> bool {
    matches!(o, Outcome::Need { .. })
}

fn busy() -> Outcome {
    Outcome::Nack {
        reason: "busy".into(),
    }
}

/// Strangers, each its own node (a message's sender must be the peer that sends it).
async fn strangers(dir: &Path, n: usize, boot: &[Multiaddr]) -> Vec<RunningNode> {
    let homes: Vec<_> = (0..n).map(|i| dir.join(format!("x{i}"))).collect();
    futures::future::join_all(homes.iter().map(|h| start(Mode::User, h, boot))).await
}

/// Every stranger announces as many one-file messages as it may; B's answers, in order.
async fn announce_all(b: &Recipient, xs: &[RunningNode]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for x in xs {
        for _ in 0..MAX_PENDING_PER_SENDER {
            let id = *Uuid::new_v4().as_bytes();
            let o = b
                .announce(x, id, ptpchat::unix_now_ms(), &[1u8; 1 << 20], random32())
                .await;
            outcomes.push(o);
        }
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_who_never_send_a_chunk_cannot_stop_a_contacts_file() {
    let dir = tempfile::tempdir().unwrap();
    let b = recipient(&dir.path().join("b"), Duration::from_secs(600)).await;
    let a = start(Mode::User, &dir.path().join("a"), &b.addrs).await;
    // B has A as a contact; A holds B's document.
    let a_doc = keys(&a).await.doc.clone();
    let contact = Contact {
        uuid: *uuid(&a).as_bytes(),
        fingerprint: a_doc.doc().fingerprint().0,
        pinned_key: a_doc.doc().current_key,
        verified: true,
        added: ptpchat::unix_now(),
    };
    let b_messenger = b.node.messenger.as_ref().unwrap();
    b_messenger.store().put_contact("alice", &contact).unwrap();
    b_messenger.remember_document(&a_doc);
    a.messenger.as_ref().unwrap().remember_document(&b.doc);

    // Sixteen free identities announce four 1 MiB files each (enough for every slot) and
    // never send a chunk. Only the strangers' half is theirs.
    let xs = strangers(dir.path(), STRANGERS, &b.addrs).await;
    let outcomes = announce_all(&b, &xs).await;
    let taken = outcomes.iter().filter(|o| is_need(o)).count();
    assert_eq!(
        taken, MAX_STRANGER_TRANSFERS,
        "strangers' slots: {outcomes:?}"
    );
    assert!(outcomes[taken..].iter().all(|o| *o == busy()));
    assert_eq!(
        b.counter("transfer_limit").await,
        (STRANGERS * MAX_PENDING_PER_SENDER - MAX_STRANGER_TRANSFERS) as u64
    );

    // The contact's file still arrives, whole.
    let file = dir.path().join("photo.jpg");
    let content: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let sending = a
        .messenger
        .as_ref()
        .unwrap()
        .send(uuid(&b.node), "for you".into(), vec![file])
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, sending.outcome)
        .await
        .expect("the contact's file is delivered while strangers hold their slots")
        .unwrap();
    assert_eq!(outcome, Delivery::Delivered);
    let hist = common::history(&b.node);
    let got = hist
        .iter()
        .find(|(_, e)| e.text == "for you")
        .expect("in B's history");
    assert_eq!(std::fs::read(&got.1.attachments[0].path).unwrap(), content);
    for x in xs {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_transfer_gives_up_its_slot_and_a_long_idle_one_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_secs(3);
    let home = dir.path().join("b");
    let b = recipient(&home, idle).await;
    let xs = strangers(
        dir.path(),
        MAX_STRANGER_TRANSFERS / MAX_PENDING_PER_SENDER + 1,
        &b.addrs,
    )
    .await;
    let (late, xs) = xs.split_last().unwrap();
    // The first transfer is the oldest; the others follow.
    let started = std::time::Instant::now();
    let first_id = *Uuid::new_v4().as_bytes();
    let key = random32();
    let data = vec![9u8; 3 * CHUNK_BYTES];
    assert!(is_need(
        &b.announce(&xs[0], first_id, ptpchat::unix_now_ms(), &data, key)
            .await
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut outcomes = announce_all(&b, xs).await;
    // xs[0] already had one: its fourth was one too many.
    assert_eq!(outcomes.remove(MAX_PENDING_PER_SENDER - 1), busy());
    assert!(outcomes.iter().all(is_need), "{outcomes:?}");

    // Every stranger slot is taken and in use: a newcomer waits (checked if the machine
    // was quick enough that none is idle yet).
    let late_id = *Uuid::new_v4().as_bytes();
    let late_data = vec![5u8; CHUNK_BYTES + 10];
    let late_key = random32();
    let now = ptpchat::unix_now_ms();
    let answer = b.announce(late, late_id, now, &late_data, late_key).await;
    if started.elapsed() < idle {
        assert_eq!(answer, busy());
    } else {
        eprintln!(
            "NOT CHECKED: the newcomer waits; announcing took {:?}, past the idle period",
            started.elapsed()
        );
    }
    // Once they are idle, the newcomer takes the oldest one's slot and its file arrives.
    tokio::time::sleep(idle + Duration::from_millis(200)).await;
    let need = b.announce(late, late_id, now, &late_data, late_key).await;
    assert_eq!(
        need,
        Outcome::Need {
            attachment: 0,
            offset: 0
        }
    );
    assert_eq!(b.counter("transfer_evicted").await, 1);
    assert!(is_need(
        &b.chunk(late, late_id, &late_data, late_key, 0).await
    ));
    assert_eq!(
        b.chunk(late, late_id, &late_data, late_key, 1).await,
        Outcome::Ack
    );
    // The evicted sender is told to start again.
    assert_eq!(
        b.chunk(&xs[0], first_id, &data, key, 0).await,
        Outcome::Nack {
            reason: "unknown_message".into()
        }
    );
    // Left idle for ten periods, the strangers' transfers are dropped with their files.
    eventually(WAIT, "idle strangers' transfers dropped", || async {
        (b.partial_transfers(&home) == 0).then_some(())
    })
    .await;
    assert_eq!(
        b.counter("transfer_abandoned").await,
        (MAX_STRANGER_TRANSFERS - 1) as u64
    );
}

#[tokio::test]
async fn a_reused_msg_id_never_replaces_a_file_already_received() {
    let dir = tempfile::tempdir().unwrap();
    let b = recipient(&dir.path().join("b"), Duration::from_secs(600)).await;
    let x = start(Mode::User, &dir.path().join("x"), &b.addrs).await;
    let msg_id = *Uuid::new_v4().as_bytes();
    let ts = ptpchat::unix_now_ms();
    for (n, content) in [&b"the contract you read"[..], b"a contract you did not"]
        .into_iter()
        .enumerate()
    {
        let key = random32();
        assert!(is_need(
            &b.announce(&x, msg_id, ts + n as u64, content, key).await
        ));
        assert_eq!(b.chunk(&x, msg_id, content, key, 0).await, Outcome::Ack);
    }
    let hist = common::history(&b.node);
    let files: Vec<String> = hist
        .iter()
        .map(|(_, e)| std::fs::read_to_string(&e.attachments[0].path).unwrap())
        .collect();
    assert_eq!(files, ["the contract you read", "a contract you did not"]);
}

//! Mailbox bytes (specified in `protocols/mailbox.md`): mailbox ids, the bytes a relay's
//! receipt and a recipient's login sign, receipt checks, a document's mailboxes, and the
//! limits. The relay's side is [`crate::mailbox::service`].

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::identity::IdentityDocument;

/// Domain of a mailbox id.
const MAILBOX_DOMAIN: &[u8] = b"ptpchat/mailbox/1";
/// Domain of a relay's stored receipt.
const RECEIPT_DOMAIN: &[u8] = b"ptpchat/mailbox/receipt/1";
/// Domain of a recipient's login signature.
const LOGIN_DOMAIN: &[u8] = b"ptpchat/mailbox/login/1";

/// Most messages in one DEPOSIT.
pub const MAX_DEPOSIT_BATCH: usize = 64;
/// Most items in one page of mail…
pub const MAX_PAGE_ITEMS: usize = 64;
/// …and most bytes of sealed messages in it.
pub const MAX_PAGE_BYTES: usize = 512 * 1024;
/// Most relays a sender deposits one message at.
pub const MAX_MAILBOXES: usize = 3;

/// The recipient's mailbox id at one relay: SHA-256 over a domain, the relay's PeerId and
/// the recipient's UUID. Binding the relay makes one user's ids differ between relays, so
/// two relays' databases do not share a key (what else links them is in docs/security.md:
/// a relay that knows a UUID can compute its id, and the sealed form shows a recipient-key
/// tag).
pub fn mailbox_id(relay: &PeerId, uuid: &Uuid) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(MAILBOX_DOMAIN);
    h.update(relay.to_bytes());
    h.update(uuid.as_bytes());
    h.finalize().into()
}

/// The bytes a relay signs when it stores `sealed` in `mailbox` until `expires`.
pub fn receipt_bytes(mailbox: &[u8; 32], sealed: &[u8], expires: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(RECEIPT_DOMAIN.len() + 72);
    m.extend_from_slice(RECEIPT_DOMAIN);
    m.extend_from_slice(mailbox);
    m.extend_from_slice(&Sha256::digest(sealed));
    m.extend_from_slice(&expires.to_be_bytes());
    m
}

/// The bytes a recipient signs to log in to its mailbox at `relay` with `nonce`.
pub fn login_bytes(relay: &PeerId, nonce: &[u8; 32]) -> Vec<u8> {
    let relay = relay.to_bytes();
    let mut m = Vec::with_capacity(LOGIN_DOMAIN.len() + relay.len() + 32);
    m.extend_from_slice(LOGIN_DOMAIN);
    m.extend_from_slice(&relay);
    m.extend_from_slice(nonce);
    m
}

/// The public key inside an ed25519 PeerId (they are identity multihashes).
pub fn peer_public_key(peer: &PeerId) -> Option<libp2p::identity::PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()
}

/// Checks a relay's receipt for `sealed` stored in `mailbox` until `expires`: strictly, as
/// every other signature here (libp2p's own `verify` accepts a small-order key, for which a
/// fixed signature verifies any message).
pub fn verify_receipt(
    relay: &PeerId,
    mailbox: &[u8; 32],
    sealed: &[u8],
    expires: u64,
    sig: &[u8; 64],
) -> bool {
    let Some(key) = peer_public_key(relay)
        .and_then(|k| k.try_into_ed25519().ok())
        .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k.to_bytes()).ok())
        .filter(|k| !k.is_weak())
    else {
        return false;
    };
    key.verify_strict(
        &receipt_bytes(mailbox, sealed, expires),
        &ed25519_dalek::Signature::from_bytes(sig),
    )
    .is_ok()
}

/// The relays a document reaches its owner through (its mailboxes): for each `/p2p-circuit`
/// address, the relay's PeerId and the address before `/p2p-circuit`. At most
/// [`MAX_MAILBOXES`], one address each, in the document's order.
pub fn mailboxes(doc: &IdentityDocument) -> Vec<(PeerId, Multiaddr)> {
    let mut out: Vec<(PeerId, Multiaddr)> = Vec::new();
    for addr in doc.reach_addrs() {
        let mut relay_addr = Multiaddr::empty();
        let mut relay = None;
        let mut circuit = false;
        for p in addr.iter() {
            match p {
                Protocol::P2pCircuit => {
                    circuit = true;
                    break;
                }
                Protocol::P2p(peer) => {
                    relay = Some(peer);
                    relay_addr.push(p);
                }
                p => {
                    relay = None;
                    relay_addr.push(p);
                }
            }
        }
        let Some(relay) = relay.filter(|_| circuit) else {
            continue;
        };
        if out.len() < MAX_MAILBOXES && !out.iter().any(|(p, _)| *p == relay) {
            out.push((relay, relay_addr));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_verify_only_for_what_was_signed() {
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let relay = kp.public().to_peer_id();
        let mailbox = mailbox_id(&relay, &Uuid::new_v4());
        let sig: [u8; 64] = kp
            .sign(&receipt_bytes(&mailbox, b"blob", 99))
            .unwrap()
            .try_into()
            .unwrap();
        assert!(verify_receipt(&relay, &mailbox, b"blob", 99, &sig));
        assert!(!verify_receipt(&relay, &mailbox, b"blob", 100, &sig));
        assert!(!verify_receipt(&relay, &mailbox, b"blob2", 99, &sig));
        let other = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        assert!(!verify_receipt(&other, &mailbox, b"blob", 99, &sig));
    }

    /// A relay whose PeerId is the identity point could pass any receipt with one fixed
    /// signature under a non-strict check.
    #[test]
    fn a_small_order_relay_key_signs_nothing() {
        let mut point = [0u8; 32];
        point[0] = 1;
        let weak = libp2p::identity::ed25519::PublicKey::try_from_bytes(&point).unwrap();
        let relay = libp2p::identity::PublicKey::from(weak).to_peer_id();
        let mut sig = [0u8; 64];
        sig[0] = 1;
        let mailbox = mailbox_id(&relay, &Uuid::new_v4());
        let signed = receipt_bytes(&mailbox, b"anything", 99);
        assert!(
            peer_public_key(&relay).unwrap().verify(&signed, &sig),
            "the non-strict check passes it"
        );
        assert!(!verify_receipt(&relay, &mailbox, b"anything", 99, &sig));
    }

    #[test]
    fn mailbox_ids_differ_per_relay() {
        let u = Uuid::new_v4();
        let a = PeerId::random();
        let b = PeerId::random();
        assert_ne!(mailbox_id(&a, &u), mailbox_id(&b, &u));
        assert_eq!(mailbox_id(&a, &u), mailbox_id(&a, &u));
    }
}

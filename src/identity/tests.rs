use super::*;

const NOW: u64 = 1_790_000_000;

fn tamper_body(doc: &SignedDocument, f: impl FnOnce(&mut IdentityDocument)) -> Vec<u8> {
    // Re-encode a modified body under the original signature.
    #[derive(serde::Serialize)]
    struct Env<'a> {
        #[serde(with = "serde_bytes")]
        body: &'a [u8],
        #[serde(with = "serde_bytes")]
        sig: [u8; 64],
    }
    #[derive(serde::Deserialize)]
    struct EnvIn {
        #[serde(with = "serde_bytes")]
        sig: [u8; 64],
    }
    let sig = cbor::from_slice::<EnvIn>(doc.bytes(), 1 << 16).unwrap().sig;
    let mut d = doc.doc().clone();
    f(&mut d);
    let body = cbor::to_vec(&d).unwrap();
    cbor::to_vec(&Env { body: &body, sig }).unwrap()
}

#[test]
fn uuid_is_v8_and_derived_from_genesis() {
    let id = Identity::generate(NOW);
    let u = id.uuid();
    assert_eq!(u.get_version_num(), 8);
    assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
    let digest = Sha256::digest(id.public_key());
    assert_eq!(u.as_bytes()[..6], digest[..6]);
}

#[test]
fn issued_document_verifies_and_round_trips() {
    let mut id = Identity::generate(NOW);
    let addr: Multiaddr = "/ip4/192.0.2.1/tcp/4001".parse().unwrap();
    let doc = id.issue_document(std::slice::from_ref(&addr), NOW);
    let back = SignedDocument::decode_for(doc.bytes(), &id.uuid(), NOW).unwrap();
    assert_eq!(back, doc);
    assert_eq!(back.doc().peer_id(), Some(id.peer_id()));
    assert_eq!(back.doc().reach_addrs(), vec![addr]);
    assert_eq!(back.doc().fingerprint(), id.fingerprint());
}

#[test]
fn forged_document_for_someone_elses_uuid_is_rejected() {
    let mut victim = Identity::generate(NOW);
    let mut attacker = Identity::generate(NOW);
    let real = victim.issue_document(&[], NOW);
    // The attacker signs a document naming the victim's UUID with its own key.
    let forged = tamper_body(&attacker.issue_document(&[], NOW), |d| {
        d.uuid = *victim.uuid().as_bytes()
    });
    assert_eq!(
        SignedDocument::decode(&forged, NOW),
        Err(DocumentError::UuidMismatch)
    );
    // Or claims the victim's genesis key but cannot sign with it.
    let forged = tamper_body(&attacker.issue_document(&[], NOW), |d| {
        d.uuid = *victim.uuid().as_bytes();
        d.genesis_key = real.doc().genesis_key;
    });
    assert!(SignedDocument::decode(&forged, NOW).is_err());
    // Changing any signed field of a genuine document breaks the signature.
    let bumped = tamper_body(&real, |d| d.seq += 1);
    assert_eq!(
        SignedDocument::decode(&bumped, NOW),
        Err(DocumentError::BadSignature)
    );
    let moved = tamper_body(&real, |d| d.reach = vec!["/ip4/203.0.113.9/tcp/1".into()]);
    assert_eq!(
        SignedDocument::decode(&moved, NOW),
        Err(DocumentError::BadSignature)
    );
}

#[test]
fn expired_and_future_documents_are_rejected() {
    let mut id = Identity::generate(NOW);
    let doc = id.issue_document(&[], NOW);
    let later = NOW + DOCUMENT_VALIDITY_SECS;
    assert_eq!(
        SignedDocument::decode(doc.bytes(), later),
        Err(DocumentError::Expired)
    );
    let early = NOW - MAX_CLOCK_SKEW - 1;
    assert_eq!(
        SignedDocument::decode(doc.bytes(), early),
        Err(DocumentError::BadValidity)
    );
}
const MAX_CLOCK_SKEW: u64 = 600;

#[test]
fn oversized_and_garbage_documents_are_rejected() {
    let big = vec![0u8; MAX_DOCUMENT_BYTES + 1];
    assert!(matches!(
        SignedDocument::decode(&big, NOW),
        Err(DocumentError::TooLarge(_))
    ));
    for garbage in [
        &b""[..],
        b"\xa0",
        b"\xa2\x64body\x40\x63sig\x40",
        &[0xffu8; 64][..],
    ] {
        assert!(SignedDocument::decode(garbage, NOW).is_err());
    }
    let mut id = Identity::generate(NOW);
    let addrs: Vec<Multiaddr> = (0..20)
        .map(|i| format!("/ip4/192.0.2.{i}/tcp/1").parse().unwrap())
        .collect();
    // issue_document itself caps reach; a hand-made document with too many is refused.
    let doc = id.issue_document(&addrs, NOW);
    assert_eq!(doc.doc().reach.len(), 8);
}

#[test]
fn lower_seq_and_conflicts_do_not_replace() {
    let mut id = Identity::generate(NOW);
    let old = id.issue_document(&[], NOW);
    let new = id.issue_document(&[], NOW + 1);
    assert!(new.doc().seq > old.doc().seq);
    assert_eq!(new.may_replace(&old), Ok(true));
    assert_eq!(new.may_replace(&new), Ok(false));
    assert!(matches!(
        old.may_replace(&new),
        Err(DocumentError::StaleSeq { .. })
    ));
}

#[test]
fn rotation_keeps_uuid_and_supersedes_but_a_fork_does_not() {
    let mut id = Identity::generate(NOW);
    let uuid = id.uuid();
    let before = id.issue_document(&[], NOW);
    let old_secret = id.signing.to_bytes();
    id.rotate_identity_key().unwrap();
    let after = id.issue_document(&[], NOW + 5);
    assert_eq!(after.doc().uuid(), uuid);
    assert_ne!(after.doc().peer_id, before.doc().peer_id);
    assert_eq!(after.doc().key_chain.len(), 1);
    let after = SignedDocument::decode_for(after.bytes(), &uuid, NOW + 5).unwrap();
    assert_eq!(after.may_replace(&before), Ok(true));

    // Someone holding the retired genesis key forks the chain with a higher seq.
    let mut thief = Identity::from_secret_keys(old_secret, [7; 32], NOW);
    thief.seq = after.doc().seq;
    thief.rotate_identity_key().unwrap();
    let fork = thief.issue_document(&[], NOW + 6);
    let fork = SignedDocument::decode_for(fork.bytes(), &uuid, NOW + 6).unwrap();
    assert_eq!(fork.may_replace(&after), Err(DocumentError::ForkedChain));
}

#[test]
fn broken_chain_is_rejected() {
    let mut id = Identity::generate(NOW);
    id.rotate_identity_key().unwrap();
    let doc = id.issue_document(&[], NOW);
    // Replace the link's signature: the chain no longer verifies.
    let broken = tamper_body(&doc, |d| d.key_chain[0].sig[0] ^= 1);
    assert!(SignedDocument::decode(&broken, NOW).is_err());
}

#[test]
fn stored_identity_round_trips_and_corruption_is_reported() {
    let mut id = Identity::generate(NOW);
    id.rotate_identity_key().unwrap();
    let bytes = id.to_bytes();
    let back = Identity::from_bytes(&bytes).unwrap();
    assert_eq!(back.uuid(), id.uuid());
    assert_eq!(back.public_key(), id.public_key());
    assert_eq!(back.encryption_public(), id.encryption_public());
    let mut bad = bytes.to_vec();
    let n = bad.len();
    bad[n - 40] ^= 0xff;
    assert!(Identity::from_bytes(&bad[..n / 2]).is_err());
}

#[test]
fn encryption_keys_rotate_and_old_ones_are_forgotten() {
    let mut id = Identity::generate(NOW);
    let first = id.encryption_public();
    assert!(!id.rotate_encryption_key_if_due(NOW + 10));
    assert!(id.rotate_encryption_key_if_due(NOW + ENC_ROTATION_SECS));
    assert_ne!(id.encryption_public(), first);
    assert_eq!(id.encryption_secrets().len(), 2);
    // Long after the grace period, only keys still within it remain.
    id.rotate_encryption_key_if_due(NOW + ENC_ROTATION_SECS + ENC_GRACE_SECS);
    assert!(id.encryption_secrets().len() <= 2);
    assert!(id
        .encryption_secrets()
        .iter()
        .all(|s| x25519_dalek::PublicKey::from(s).to_bytes() != first));
}

#[test]
fn fingerprints_and_contact_uris_parse() {
    let id = Identity::generate(NOW);
    let fp = id.fingerprint();
    let shown = fp.to_string();
    assert_eq!(shown.len(), 64 + 15);
    assert_eq!(Fingerprint::parse(&shown), Some(fp));
    assert_eq!(Fingerprint::parse(&shown.to_uppercase()), Some(fp));
    let uri = contact_uri(&id.uuid(), &fp);
    assert_eq!(parse_contact(&uri), Ok((id.uuid(), Some(fp))));
    assert_eq!(parse_contact(&id.uuid().to_string()), Ok((id.uuid(), None)));
    assert!(parse_contact("not-a-uuid").is_err());
    assert!(parse_contact("ptpchat:1234").is_err());
    assert!(qr_code(&uri).unwrap().lines().count() > 10);
    let svg = qr_svg(&uri).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches('M').count() > 100,
        "{svg}"
    );
}

#[test]
fn a_rotation_beats_a_thief_with_the_retired_key_in_either_order() {
    let mut id = Identity::generate(NOW);
    let uuid = id.uuid();
    let genesis_secret = id.signing.to_bytes();
    // The thief holds the genesis key and issues a document claiming a far higher seq.
    let mut thief = Identity::from_secret_keys(genesis_secret, [9; 32], NOW);
    thief.seq = (NOW + 500) * 1000;
    let stolen = thief.issue_document(&[], NOW + 1);
    let stolen = SignedDocument::decode_for(stolen.bytes(), &uuid, NOW + 1).unwrap();
    id.rotate_identity_key().unwrap();
    let rotated = id.issue_document(&[], NOW + 2);
    assert!(rotated.doc().seq < stolen.doc().seq);
    // Held: the thief's. New: the rotation. The chain decides, not the seq.
    assert_eq!(rotated.may_replace(&stolen), Ok(true));
    // And the other way round the stolen key cannot roll the identity back.
    assert_eq!(
        stolen.may_replace(&rotated),
        Err(DocumentError::ForkedChain)
    );
}

#[test]
fn a_seq_beyond_the_issue_time_is_refused() {
    let mut id = Identity::generate(NOW);
    id.seq = u64::MAX - 10;
    let doc = id.issue_document(&[], NOW);
    assert_eq!(
        SignedDocument::decode(doc.bytes(), NOW),
        Err(DocumentError::BadValidity)
    );
}

#[test]
fn stored_identity_with_a_broken_chain_or_no_current_key_is_corrupt() {
    let mut id = Identity::generate(NOW);
    id.rotate_identity_key().unwrap();
    id.key_chain[0].sig[3] ^= 1;
    assert!(Identity::from_bytes(&id.to_bytes()).is_err());
    let mut id = Identity::generate(NOW);
    id.enc_keys[0].retired = Some(NOW);
    assert!(Identity::from_bytes(&id.to_bytes()).is_err());
}

#[test]
fn a_ratchet_key_bundle_is_published_signed_and_checked() {
    let mut alice = Identity::generate(NOW);
    let plain = alice.issue_document(&[], NOW);
    assert_eq!(plain.doc().ratchet, None, "nothing set, nothing published");
    // (The keys come from `ratchet::Account` in a node; identity sits below it, so plain
    // bytes here.)
    let (ik, fk) = ([1u8; 32], [2u8; 32]);
    alice.set_ratchet_keys(ik, fk);
    let doc = alice.issue_document(&[], NOW);
    let decoded = SignedDocument::decode(doc.bytes(), NOW).unwrap();
    let r = decoded.doc().ratchet.clone().expect("published");
    assert_eq!((r.ik, r.fk), (ik, fk));

    // Mallory puts Alice's signed bundle in her own, validly signed document: the bundle's
    // signature names Alice's UUID and is by Alice's key, so it is refused.
    let mut mallory = Identity::generate(NOW);
    let mut body = mallory.issue_document(&[], NOW).doc().clone();
    body.ratchet = Some(r.clone());
    let forged = SignedDocument::sign(body.clone(), &mallory.signing);
    assert!(matches!(
        SignedDocument::decode(forged.bytes(), NOW),
        Err(DocumentError::BadRatchetKeySignature)
    ));
    // A fallback key swapped under the old bundle signature is refused too.
    let mut own = alice.issue_document(&[], NOW).doc().clone();
    if let Some(b) = own.ratchet.as_mut() {
        b.fk = [9; 32];
    }
    let swapped = SignedDocument::sign(own, &alice.signing);
    assert!(matches!(
        SignedDocument::decode(swapped.bytes(), NOW),
        Err(DocumentError::BadRatchetKeySignature)
    ));
}

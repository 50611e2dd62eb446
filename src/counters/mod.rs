//! Counters of refused and notable input, by kind: the `rejected` map of `status --json`
//! (each key is listed in docs/security.md). Shared by every service and the event loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::shared::Shared;

mod meters;
pub use meters::{Meters, PunchFailure, PunchStats, RefusalReason, Refused, Sent, Topic, Verdict};

/// Shared counters of refused input, by kind (see docs/security.md), and the handles of
/// the node's other event-driven metrics ([`Meters`]), which go everywhere these do.
#[derive(Clone, Default)]
pub struct Counters(Arc<Shared<BTreeMap<&'static str, u64>>>, Meters);

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl Counters {
    /// The node's event-driven metrics.
    pub fn meters(&self) -> &Meters {
        &self.1
    }

    /// Adds one to `what`.
    pub fn count(&self, what: Counter) {
        *self.0.lock().entry(what.as_str()).or_default() += 1;
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().clone()
    }
}

/// What is counted: each a key of `status --json`'s `rejected` map, explained in
/// docs/security.md (a test checks each is there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    AnnounceOriginBound,
    AttachmentBadHash,
    BadResponse,
    CertificateInvalid,
    ChannelBadKind,
    ChannelBadSenderDocument,
    ChannelBadSignature,
    ChannelBadTimestamp,
    ChannelDuplicate,
    ChannelGrantIgnored,
    ChannelHistoryBadKind,
    ChannelHistoryOversized,
    ChannelMalformed,
    ChannelPeerMismatch,
    ChannelSenderMismatch,
    ChannelStale,
    ChannelTooLarge,
    ChannelUndecryptable,
    ChannelUnknown,
    ChannelUnknownEpoch,
    ChannelWrongChannel,
    ChannelWrongEpoch,
    ChannelWrongForm,
    ChunkInvalid,
    ChunkUnknown,
    ConnectBadDocument,
    ConnectPeerMismatch,
    ConnectQueueFull,
    ConnectRateLimited,
    ConnectUnexpectedAnswer,
    ConnectionIpLimit,
    DhtProviderRateLimited,
    DhtProviderRejected,
    DhtPutBadKey,
    DhtPutInvalidDocument,
    DhtPutRateLimited,
    DhtPutSuperseded,
    DhtStoreFull,
    ForeignPeer,
    GossipQueueFull,
    GossipRateAnnounce,
    GossipRateAuthor,
    GossipRatePeer,
    HistoryBusy,
    /// A relay's GETCERTIFICATE, or a lookup's fallback on the cache, found 32 cache
    /// reads of its kind under way.
    CacheReadsBusy,
    /// A peer subscribed to a channel while 256 catch-up events waited already.
    CatchUpQueueFull,
    HistoryNotMember,
    HistoryUnknownChannel,
    InboundBusy,
    LookupInvalidDocument,
    MailBadReceipt,
    MailBusy,
    MailLoginRefused,
    MailMailboxFull,
    MailMalformed,
    MailRelayFull,
    MailSenderQuota,
    MailTooLarge,
    MessageBadSenderDocument,
    MessageBadSignature,
    MessageBadTimestamp,
    MessageBatchInvalid,
    MessageDuplicate,
    MessageMalformed,
    MessagePeerMismatch,
    MessageSenderMismatch,
    MessageStaleSenderKey,
    MessageTooLarge,
    MessageUndecryptable,
    MessageWrongRecipient,
    OwnDocumentInvalid,
    RelayCircuitDenied,
    RelayReservationDenied,
    RequestMalformed,
    RequestRateLimited,
    RequestTooLarge,
    TransferAbandoned,
    TransferEvicted,
    TransferLimit,
}

impl Counter {
    /// Every counter.
    pub const ALL: [Counter; 79] = [
        Counter::AnnounceOriginBound,
        Counter::AttachmentBadHash,
        Counter::BadResponse,
        Counter::CertificateInvalid,
        Counter::ChannelBadKind,
        Counter::ChannelBadSenderDocument,
        Counter::ChannelBadSignature,
        Counter::ChannelBadTimestamp,
        Counter::ChannelDuplicate,
        Counter::ChannelGrantIgnored,
        Counter::ChannelHistoryBadKind,
        Counter::ChannelHistoryOversized,
        Counter::ChannelMalformed,
        Counter::ChannelPeerMismatch,
        Counter::ChannelSenderMismatch,
        Counter::ChannelStale,
        Counter::ChannelTooLarge,
        Counter::ChannelUndecryptable,
        Counter::ChannelUnknown,
        Counter::ChannelUnknownEpoch,
        Counter::ChannelWrongChannel,
        Counter::ChannelWrongEpoch,
        Counter::ChannelWrongForm,
        Counter::ChunkInvalid,
        Counter::ChunkUnknown,
        Counter::ConnectBadDocument,
        Counter::ConnectPeerMismatch,
        Counter::ConnectQueueFull,
        Counter::ConnectRateLimited,
        Counter::ConnectUnexpectedAnswer,
        Counter::ConnectionIpLimit,
        Counter::DhtProviderRateLimited,
        Counter::DhtProviderRejected,
        Counter::DhtPutBadKey,
        Counter::DhtPutInvalidDocument,
        Counter::DhtPutRateLimited,
        Counter::DhtPutSuperseded,
        Counter::DhtStoreFull,
        Counter::ForeignPeer,
        Counter::GossipQueueFull,
        Counter::GossipRateAnnounce,
        Counter::GossipRateAuthor,
        Counter::GossipRatePeer,
        Counter::HistoryBusy,
        Counter::CacheReadsBusy,
        Counter::CatchUpQueueFull,
        Counter::HistoryNotMember,
        Counter::HistoryUnknownChannel,
        Counter::InboundBusy,
        Counter::LookupInvalidDocument,
        Counter::MailBadReceipt,
        Counter::MailBusy,
        Counter::MailLoginRefused,
        Counter::MailMailboxFull,
        Counter::MailMalformed,
        Counter::MailRelayFull,
        Counter::MailSenderQuota,
        Counter::MailTooLarge,
        Counter::MessageBadSenderDocument,
        Counter::MessageBadSignature,
        Counter::MessageBadTimestamp,
        Counter::MessageBatchInvalid,
        Counter::MessageDuplicate,
        Counter::MessageMalformed,
        Counter::MessagePeerMismatch,
        Counter::MessageSenderMismatch,
        Counter::MessageStaleSenderKey,
        Counter::MessageTooLarge,
        Counter::MessageUndecryptable,
        Counter::MessageWrongRecipient,
        Counter::OwnDocumentInvalid,
        Counter::RelayCircuitDenied,
        Counter::RelayReservationDenied,
        Counter::RequestMalformed,
        Counter::RequestRateLimited,
        Counter::RequestTooLarge,
        Counter::TransferAbandoned,
        Counter::TransferEvicted,
        Counter::TransferLimit,
    ];

    /// Its key in `status --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Counter::AnnounceOriginBound => "announce_origin_bound",
            Counter::AttachmentBadHash => "attachment_bad_hash",
            Counter::BadResponse => "bad_response",
            Counter::CertificateInvalid => "certificate_invalid",
            Counter::ChannelBadKind => "channel_bad_kind",
            Counter::ChannelBadSenderDocument => "channel_bad_sender_document",
            Counter::ChannelBadSignature => "channel_bad_signature",
            Counter::ChannelBadTimestamp => "channel_bad_timestamp",
            Counter::ChannelDuplicate => "channel_duplicate",
            Counter::ChannelGrantIgnored => "channel_grant_ignored",
            Counter::ChannelHistoryBadKind => "channel_history_bad_kind",
            Counter::ChannelHistoryOversized => "channel_history_oversized",
            Counter::ChannelMalformed => "channel_malformed",
            Counter::ChannelPeerMismatch => "channel_peer_mismatch",
            Counter::ChannelSenderMismatch => "channel_sender_mismatch",
            Counter::ChannelStale => "channel_stale",
            Counter::ChannelTooLarge => "channel_too_large",
            Counter::ChannelUndecryptable => "channel_undecryptable",
            Counter::ChannelUnknown => "channel_unknown",
            Counter::ChannelUnknownEpoch => "channel_unknown_epoch",
            Counter::ChannelWrongChannel => "channel_wrong_channel",
            Counter::ChannelWrongEpoch => "channel_wrong_epoch",
            Counter::ChannelWrongForm => "channel_wrong_form",
            Counter::ChunkInvalid => "chunk_invalid",
            Counter::ChunkUnknown => "chunk_unknown",
            Counter::ConnectBadDocument => "connect_bad_document",
            Counter::ConnectPeerMismatch => "connect_peer_mismatch",
            Counter::ConnectQueueFull => "connect_queue_full",
            Counter::ConnectRateLimited => "connect_rate_limited",
            Counter::ConnectUnexpectedAnswer => "connect_unexpected_answer",
            Counter::ConnectionIpLimit => "connection_ip_limit",
            Counter::DhtProviderRateLimited => "dht_provider_rate_limited",
            Counter::DhtProviderRejected => "dht_provider_rejected",
            Counter::DhtPutBadKey => "dht_put_bad_key",
            Counter::DhtPutInvalidDocument => "dht_put_invalid_document",
            Counter::DhtPutRateLimited => "dht_put_rate_limited",
            Counter::DhtPutSuperseded => "dht_put_superseded",
            Counter::DhtStoreFull => "dht_store_full",
            Counter::ForeignPeer => "foreign_peer",
            Counter::GossipQueueFull => "gossip_queue_full",
            Counter::GossipRateAnnounce => "gossip_rate_announce",
            Counter::GossipRateAuthor => "gossip_rate_author",
            Counter::GossipRatePeer => "gossip_rate_peer",
            Counter::HistoryBusy => "history_busy",
            Counter::CacheReadsBusy => "cache_reads_busy",
            Counter::CatchUpQueueFull => "catch_up_queue_full",
            Counter::HistoryNotMember => "history_not_member",
            Counter::HistoryUnknownChannel => "history_unknown_channel",
            Counter::InboundBusy => "inbound_busy",
            Counter::LookupInvalidDocument => "lookup_invalid_document",
            Counter::MailBadReceipt => "mail_bad_receipt",
            Counter::MailBusy => "mail_busy",
            Counter::MailLoginRefused => "mail_login_refused",
            Counter::MailMailboxFull => "mail_mailbox_full",
            Counter::MailMalformed => "mail_malformed",
            Counter::MailRelayFull => "mail_relay_full",
            Counter::MailSenderQuota => "mail_sender_quota",
            Counter::MailTooLarge => "mail_too_large",
            Counter::MessageBadSenderDocument => "message_bad_sender_document",
            Counter::MessageBadSignature => "message_bad_signature",
            Counter::MessageBadTimestamp => "message_bad_timestamp",
            Counter::MessageBatchInvalid => "message_batch_invalid",
            Counter::MessageDuplicate => "message_duplicate",
            Counter::MessageMalformed => "message_malformed",
            Counter::MessagePeerMismatch => "message_peer_mismatch",
            Counter::MessageSenderMismatch => "message_sender_mismatch",
            Counter::MessageStaleSenderKey => "message_stale_sender_key",
            Counter::MessageTooLarge => "message_too_large",
            Counter::MessageUndecryptable => "message_undecryptable",
            Counter::MessageWrongRecipient => "message_wrong_recipient",
            Counter::OwnDocumentInvalid => "own_document_invalid",
            Counter::RelayCircuitDenied => "relay_circuit_denied",
            Counter::RelayReservationDenied => "relay_reservation_denied",
            Counter::RequestMalformed => "request_malformed",
            Counter::RequestRateLimited => "request_rate_limited",
            Counter::RequestTooLarge => "request_too_large",
            Counter::TransferAbandoned => "transfer_abandoned",
            Counter::TransferEvicted => "transfer_evicted",
            Counter::TransferLimit => "transfer_limit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_explained_in_security_md_once() {
        let doc = include_str!("../../docs/security.md");
        let mut keys = std::collections::HashSet::new();
        for c in Counter::ALL {
            assert!(keys.insert(c.as_str()), "{c:?} twice");
            assert!(
                doc.contains(&format!("`{}`", c.as_str())),
                "{} is not in docs/security.md",
                c.as_str()
            );
        }
    }
}

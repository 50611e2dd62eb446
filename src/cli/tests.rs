//! The CLI edge: exit codes, answers and their JSON lines.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde_json::json;

use super::*;
use crate::control::answers::*;
use crate::control::{AttachmentView, ContactView, ControlResponse, Direction, MessageView};

/// The words of docs/cli.md's exit-code table that name each kind.
fn documented_as(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Failed => "error",
        ErrorKind::BadInput => "usage error",
        ErrorKind::Pending => "accepted but not yet delivered",
        ErrorKind::NotFound => "not found",
        ErrorKind::Denied => "denied",
        ErrorKind::Unreachable => "offline",
        ErrorKind::Timeout => "timed out",
    }
}

/// docs/cli.md's exit-code table: each row's code, and the names before its `:` or `;`.
fn documented_codes() -> Vec<(i32, Vec<String>)> {
    let doc = include_str!("../../docs/cli.md");
    let table = doc
        .split("## Exit codes")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .expect("docs/cli.md has an Exit codes section");
    table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let code = cells.get(1)?.parse().ok()?;
            let head = cells.get(2)?.split([':', ';']).next()?;
            Some((code, head.split(" / ").map(str::to_string).collect()))
        })
        .collect()
}

#[test]
fn every_error_kind_exits_with_the_documented_code() {
    let table = documented_codes();
    assert_eq!(table.len(), 5, "rows 0 to 4: {table:?}");
    for kind in ErrorKind::ALL {
        let words = documented_as(kind);
        let rows: Vec<i32> = table
            .iter()
            .filter(|(_, names)| names.iter().any(|n| n == words))
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(
            rows,
            [exit_code(kind)],
            "{kind}: docs/cli.md says {words:?}"
        );
        // The socket's `code` is the same number, for scripts that read it.
        assert_eq!(control::wire_code(kind), exit_code(kind), "{kind}");
    }
}

/// Checks one answer: it round-trips through JSON; `--json` prints what it printed
/// before this type existed (the node's line read into a `Value`); and when the node
/// used to build it with `json!`, the node's line is the same bytes as then.
fn check<T>(answer: T, legacy: Option<serde_json::Value>)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let text = serde_json::to_string(&answer).unwrap();
    assert_eq!(serde_json::from_str::<T>(&text).unwrap(), answer);
    let line = serde_json::to_string(&ControlResponse::ok(&answer)).unwrap();
    if let Some(legacy) = legacy {
        let before = serde_json::to_string(&ControlResponse::ok(legacy)).unwrap();
        assert_eq!(line, before, "the node's line changed");
    }
    let raw: serde_json::Value = serde_json::from_str(&line).unwrap();
    let printed_before = serde_json::to_string(&raw["data"]).unwrap();
    let resp: ControlResponse = serde_json::from_str(&line).unwrap();
    let typed: T = resp.data_as().unwrap().unwrap();
    assert_eq!(typed, answer);
    assert_eq!(json_line(&typed), printed_before, "--json output changed");
}

fn status(mail: bool) -> StatusView {
    StatusView {
        uuid: Some(uuid::Uuid::from_u128(7)),
        peer_id: "12D3KooWpeer".into(),
        mode: "user".into(),
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        external_addrs: vec![],
        nat: "private".into(),
        connected_peers: 3,
        relays: vec!["/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWrelay".into()],
        channels: vec!["rust-talk".into()],
        dht_records: 12,
        published_seq: None,
        rejected: BTreeMap::from([("bad_frame".to_string(), 2), ("oversize".into(), 1)]),
        lookups: LookupView {
            done: 4,
            found: 3,
            requests: 40,
            hops_bound: 9,
        },
        punches: Default::default(),
        mail: mail.then_some(MailView {
            items: 1,
            bytes: 2,
            mailboxes: 3,
        }),
    }
}

fn message(detail: Option<&str>) -> MessageView {
    MessageView {
        msg_id: "5f0c".into(),
        direction: Direction::Out,
        from: "a".into(),
        from_name: None,
        to: "b".into(),
        to_name: Some("bob".into()),
        channel: None,
        channel_id: None,
        timestamp: "2026-11-22T09:14:03.512Z".into(),
        text: "hi \"there\"\n".into(),
        attachments: vec![AttachmentView {
            name: "r.pdf".into(),
            mime: "application/pdf".into(),
            size: 10,
            path: "/home/u/files/sent/5f0c/0-r.pdf".into(),
        }],
        verified: false,
        key_changed: true,
        status: if detail.is_some() { "failed" } else { "queued" }.into(),
        detail: detail.map(str::to_string),
    }
}

#[test]
fn control_answers_print_as_before_and_the_json_ones_keep_their_bytes() {
    check(status(false), None);
    check(status(true), None);
    check(
        vec![PeerView {
            peer_id: "p".into(),
            addr: "/ip4/1.2.3.4/tcp/1".into(),
            relayed: true,
            agent: None,
        }],
        None,
    );
    check(
        WhoisView {
            uuid: "u".into(),
            peer_id: "p".into(),
            public_key: "ab".into(),
            fingerprint: "1a2b 3c4d".into(),
            seq: 5,
            reach: vec!["/ip4/1.2.3.4/tcp/1".into()],
            enc_key: "cd".into(),
            key_rotations: 1,
            issued: 1,
            expires: 2,
        },
        None,
    );
    check(message(None), None);
    check(message(Some("too_large")), None);
    check(
        ContactView {
            name: "bob".into(),
            uuid: "u".into(),
            fingerprint: "1a2b".into(),
            verified: true,
            key_changed: false,
        },
        None,
    );
    check(Dialing {}, Some(json!({})));
    for (status, mailboxes, reason, legacy) in [
        (
            SendStatus::Delivered,
            None,
            None,
            json!({"msg_id": "m", "status": "delivered"}),
        ),
        (
            SendStatus::Queued,
            None,
            None,
            json!({"msg_id": "m", "status": "queued"}),
        ),
        (
            SendStatus::Stored,
            Some(2),
            None,
            json!({"msg_id": "m", "status": "stored", "mailboxes": 2}),
        ),
        (
            SendStatus::Failed,
            None,
            Some("busy".to_string()),
            json!({"msg_id": "m", "status": "failed", "reason": "busy"}),
        ),
        (
            SendStatus::Expired,
            None,
            None,
            json!({"msg_id": "m", "status": "expired"}),
        ),
    ] {
        let answer = SendAnswer {
            mailboxes,
            msg_id: "m".into(),
            reason,
            status,
        };
        check(answer, Some(legacy));
    }
    check(
        ContactRemoved {
            name: "bob".into(),
            removed: true,
        },
        Some(json!({"name": "bob", "removed": true})),
    );
    check(
        ChannelJoined {
            channel_id: "c".into(),
            name: "ops".into(),
            private: true,
        },
        Some(json!({"channel_id": "c", "name": "ops", "private": true})),
    );
    check(
        ChannelLeft {
            channel_id: "c".into(),
        },
        Some(json!({"channel_id": "c"})),
    );
    check(
        ChannelInvited {
            channel_id: "c".into(),
            invited: "u".into(),
        },
        Some(json!({"channel_id": "c", "invited": "u"})),
    );
    check(
        ChannelMemberRemoved {
            channel_id: "c".into(),
            epoch: 3,
            removed: "u".into(),
        },
        Some(json!({"channel_id": "c", "removed": "u", "epoch": 3})),
    );
    check(
        ChannelPosted {
            msg_id: "m".into(),
            peers: 2,
            status: "sent".into(),
        },
        Some(json!({"msg_id": "m", "status": "sent", "peers": 2})),
    );
    for epoch in [None, Some(2)] {
        check(
            ChannelLine {
                channel_id: "c".into(),
                name: "ops".into(),
                private: epoch.is_some(),
                joined: true,
                invited: false,
                members: 4,
                epoch,
            },
            None,
        );
    }
    check(
        MemberLine {
            uuid: "u".into(),
            name: Some("(you)".into()),
        },
        None,
    );
    for (status, addr, word) in [
        (
            ConnectStatus::Direct,
            Some("/ip4/1.2.3.4/tcp/1".to_string()),
            "direct",
        ),
        (ConnectStatus::Denied, None, "denied"),
        (ConnectStatus::Offline, None, "offline"),
        (ConnectStatus::Timeout, None, "timeout"),
        (ConnectStatus::Relayed, None, "relayed"),
    ] {
        assert_eq!(status.as_str(), word);
        check(
            ConnectAnswer {
                addr: addr.clone(),
                status,
            },
            Some(json!({ "status": word, "addr": addr })),
        );
    }
    check(
        Disconnected { disconnected: true },
        Some(json!({ "disconnected": true })),
    );
    check(
        vec![RequestLine {
            request_id: 3,
            from: uuid::Uuid::from_u128(9),
            from_name: Some("bob".into()),
            verified: true,
        }],
        None,
    );
    check(
        RequestAnswered {
            accepted: false,
            request_id: 3,
        },
        Some(json!({ "request_id": 3, "accepted": false })),
    );
}

#[test]
fn init_json_is_the_object_it_always_was() {
    let uuid = uuid::Uuid::from_u128(7);
    let view = InitView {
        fingerprint: "1a2b".into(),
        peer_id: "p".into(),
        uuid,
    };
    let before = json!({"uuid": uuid, "peer_id": "p", "fingerprint": "1a2b"});
    assert_eq!(json_line(&view), serde_json::to_string(&before).unwrap());
}

#[test]
fn the_page_that_opens_the_app_is_private_and_keeps_the_token_off_command_lines() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:7480/#token=abcdef0123";
    std::fs::write(home.path().join("ui-open.html"), "old").unwrap();
    std::fs::set_permissions(
        home.path().join("ui-open.html"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let page = super::redirect_page(home.path(), url).unwrap();
    assert!(!page.to_string_lossy().contains("abcdef"), "{page:?}");
    let mode = std::fs::metadata(&page).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let body = std::fs::read_to_string(&page).unwrap();
    assert!(body.contains(&format!("content=\"0;url={url}\"")), "{body}");
}

//! Why a request did not fully succeed, as a kind the user would name. The services that
//! refuse (channels, the control socket's handlers) pick a kind; only the command line's edge
//! turns a kind into an exit code (`cli::exit_code`), and the control socket carries the
//! kind on the wire (protocols/control.md). Names nothing else in the crate.

use serde::{Deserialize, Serialize};

/// What kind of outcome a refused or unfinished request had (docs/cli.md, "Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is malformed: a bad UUID, multiaddr, name or fingerprint.
    BadInput,
    /// Accepted but not yet delivered: queued in the outbox or stored at a mailbox.
    Pending,
    /// What the request names does not exist: no identity document, contact, message,
    /// channel, connection or CONNECT request.
    NotFound,
    /// The other side said no (a CONNECT refused by the target or its policy).
    Denied,
    /// The other side cannot be reached directly: offline, no address, or only through a
    /// relay because hole punching failed.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// Anything else that went wrong: a storage error, a refusal by the recipient, a name
    /// several channels share. Also what a kind unknown here (from a newer node) reads as,
    /// which is why it comes last.
    #[serde(other)]
    Failed,
}

impl ErrorKind {
    /// Every kind, for tables and tests.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Failed,
        ErrorKind::BadInput,
        ErrorKind::Pending,
        ErrorKind::NotFound,
        ErrorKind::Denied,
        ErrorKind::Unreachable,
        ErrorKind::Timeout,
    ];

    /// The kind's name on the wire, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::BadInput => "bad_input",
            ErrorKind::Pending => "pending",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Denied => "denied",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_snake_case_on_the_wire_and_unknown_ones_read_as_failed() {
        for k in ErrorKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), k);
        }
        let newer: ErrorKind = serde_json::from_str("\"rate_limited\"").unwrap();
        assert_eq!(newer, ErrorKind::Failed);
    }
}

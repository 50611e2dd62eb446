//! Who may use the HTTP API: the token, the `Host`, the `Origin` (see the module above).

use std::net::SocketAddr;
use std::path::Path;

use axum::http::{header, HeaderMap};

/// The token's file in the node's home.
pub(super) const TOKEN_FILE: &str = "http.token";
/// A cookie named so (an earlier version set one) opens nothing: browsers send a cookie to
/// every port of a host, so any local server a page of ours linked to would get it.
#[cfg(test)]
const COOKIE: &str = "ptpchat_token";

/// The secret that opens the HTTP API: 32 random bytes, as hex. Never printed by `Debug`.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A new random token.
    pub fn random() -> std::io::Result<Token> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Token(hex::encode(b)))
    }

    /// The token as the user copies it.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Reads the token at `path`, or makes one there (mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> std::io::Result<Token> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::read_to_string(path) {
            Ok(s) => {
                let s = s.trim();
                if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(Token(s.to_ascii_lowercase()));
                }
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a token (64 hex digits); remove it to make a new one",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = Token::random()?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(token.0.as_bytes())?;
                f.sync_all()?;
                Ok(token)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `given` is the token, in time that does not depend on where they differ.
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }
}

/// Why a request was turned away, in words for the asker.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// No token, or not the right one: 401.
    Token,
    /// A `Host` that is not this server by a loopback name: 403 (DNS rebinding).
    Host,
    /// An `Origin` (or `Sec-Fetch-Site`) of another site: 403 (CSRF).
    Origin,
}

impl Refused {
    pub fn message(&self) -> &'static str {
        match self {
            Refused::Token => "this needs the node's HTTP token (Authorization: Bearer TOKEN)",
            Refused::Host => "the Host header does not name this server on loopback",
            Refused::Origin => "requests from other sites are refused",
        }
    }
}

/// The checks every request passes.
pub(super) struct Guard {
    token: Token,
    /// What `Host` may say: `name:port` for each loopback name, and the bound address.
    hosts: Vec<String>,
}

impl Guard {
    pub fn new(token: Token, bound: SocketAddr) -> Self {
        let port = bound.port();
        let mut hosts = vec![
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        let own = bound.to_string();
        if !hosts.contains(&own) {
            hosts.push(own);
        }
        Guard { token, hosts }
    }

    /// Host and Origin, for every request (the app's pages too).
    pub fn check_site(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.to_ascii_lowercase());
        if !host.is_some_and(|h| self.hosts.contains(&h)) {
            return Err(Refused::Host);
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let ours = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(|o| self.hosts.iter().any(|h| h.eq_ignore_ascii_case(o)));
            if !ours {
                return Err(Refused::Origin);
            }
        }
        // A browser that says the request comes from another site is believed even when
        // it sends no Origin.
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if matches!(fetch_site, Some("cross-site" | "same-site")) {
            return Err(Refused::Origin);
        }
        Ok(())
    }

    /// The token, from `Authorization: Bearer` and nowhere else (no cookie, no query).
    pub fn check_token(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|t| self.token.matches(t.trim())) {
            return Ok(());
        }
        Err(Refused::Token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(Token("ab".repeat(32)), "127.0.0.1:4000".parse().unwrap())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_this_server_on_loopback_is_a_host() {
        let g = guard();
        for ok in [
            "127.0.0.1:4000",
            "localhost:4000",
            "LOCALHOST:4000",
            "[::1]:4000",
        ] {
            assert_eq!(g.check_site(&headers(&[("host", ok)])), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example:4000",
            "127.0.0.1:4001",
            "127.0.0.1",
            "localhost.evil:4000",
        ] {
            assert_eq!(
                g.check_site(&headers(&[("host", bad)])),
                Err(Refused::Host),
                "{bad}"
            );
        }
        assert_eq!(g.check_site(&HeaderMap::new()), Err(Refused::Host));
    }

    #[test]
    fn another_sites_origin_is_refused() {
        let g = guard();
        let host = ("host", "127.0.0.1:4000");
        assert_eq!(
            g.check_site(&headers(&[host, ("origin", "http://127.0.0.1:4000")])),
            Ok(())
        );
        assert_eq!(
            g.check_site(&headers(&[host, ("origin", "http://localhost:4000")])),
            Ok(())
        );
        for bad in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:4000",
            "http://127.0.0.1:4001",
        ] {
            assert_eq!(
                g.check_site(&headers(&[host, ("origin", bad)])),
                Err(Refused::Origin),
                "{bad}"
            );
        }
        assert_eq!(
            g.check_site(&headers(&[host, ("sec-fetch-site", "cross-site")])),
            Err(Refused::Origin)
        );
    }

    #[test]
    fn the_token_comes_as_a_bearer_and_nothing_else_opens() {
        let g = guard();
        let right = "ab".repeat(32);
        let bearer = format!("Bearer {right}");
        assert_eq!(
            g.check_token(&headers(&[("authorization", &bearer)])),
            Ok(())
        );
        let cookie = format!("theme=dark; {COOKIE}={right}");
        let wrong = format!("Bearer {}", "ab".repeat(31) + "ac");
        for h in [
            headers(&[]),
            headers(&[("authorization", &wrong)]),
            headers(&[("authorization", "Bearer ")]),
            headers(&[("authorization", &right)]),
            headers(&[("cookie", &cookie)]),
        ] {
            assert_eq!(g.check_token(&h), Err(Refused::Token), "{h:?}");
        }
    }

    #[test]
    fn a_token_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let first = Token::load_or_create(&path).unwrap();
        assert_eq!(first.reveal().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            Token::load_or_create(&path).unwrap().reveal(),
            first.reveal()
        );
        assert_eq!(format!("{first:?}"), "Token(..)");
        std::fs::write(&path, "not a token").unwrap();
        assert!(Token::load_or_create(&path).is_err());
    }
}

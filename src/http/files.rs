//! Files through the API: uploads to attach, and the attachments of the history served
//! back so that none of them ever runs as a page or script of the app's origin.

use axum::body::Bytes;
use axum::extract::{Path, Query, State as With};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::routes::{refusal, Shared};
use crate::control::ErrorKind;
use crate::messaging::Messenger;

/// The policy of a file served from the history: it is never a document that runs.
const FILE_CSP: &str = "default-src 'none'; img-src 'self'; sandbox";

/// Where uploads wait to be attached: a file sent is copied at once, so its upload is
/// taken away then.
pub(super) fn uploads_dir(m: &Messenger) -> std::path::PathBuf {
    m.files_dir().join("uploads")
}

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    name: String,
}

/// `POST /api/v1/uploads?name=NAME`: the body (`application/octet-stream`, at most the
/// attachment limit) kept as a file to attach; answers `{"path"}` for `attach`.
pub(super) async fn upload(
    With(s): With<Shared>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let Some(m) = s.ops.messenger().cloned() else {
        return refusal(
            StatusCode::FORBIDDEN,
            ErrorKind::Denied,
            "this node is a relay and has no user identity",
        );
    };
    let octets = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"));
    if !octets {
        return refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::BadInput,
            "send the file as Content-Type: application/octet-stream",
        );
    }
    let mut name = crate::messaging::files::safe_name(&q.name, "attachment");
    // A file name is at most 255 bytes on the usual file systems.
    while name.len() > MAX_NAME_BYTES {
        name.pop();
    }
    let base = uploads_dir(&m);
    let dir = base.join(uuid::Uuid::new_v4().to_string());
    let written = tokio::task::spawn_blocking(move || {
        forget_stale_uploads(&base);
        crate::messaging::files::private_dir(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, &bytes)?;
        Ok::<_, std::io::Error>(path)
    })
    .await;
    match written {
        Ok(Ok(path)) => {
            axum::Json(serde_json::json!({ "path": path.to_string_lossy() })).into_response()
        }
        Ok(Err(e)) => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Failed,
            &format!("could not keep the upload: {e}"),
        ),
        Err(_) => refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Failed,
            "the upload stopped",
        ),
    }
}

/// The upload directory `path` names, if it is exactly `<base>/<uuid>/<name>` with no
/// `..` or other tricks: the only files a send through this API may attach.
pub(super) fn upload_of(base: &std::path::Path, path: &str) -> Option<std::path::PathBuf> {
    use std::path::Component;
    let rest = std::path::Path::new(path).strip_prefix(base).ok()?;
    let parts: Vec<_> = rest.components().collect();
    match parts.as_slice() {
        [Component::Normal(dir), Component::Normal(_)] => {
            uuid::Uuid::parse_str(dir.to_str()?).ok()?;
            Some(base.join(dir))
        }
        _ => None,
    }
}

/// The longest upload name kept, in bytes.
const MAX_NAME_BYTES: usize = 200;
/// An upload no send took within this long is removed.
const UPLOAD_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the uploads older than [`UPLOAD_LIFETIME`] (a page that uploaded and then never
/// sent, or a send that was refused).
fn forget_stale_uploads(base: &std::path::Path) {
    let Ok(dirs) = std::fs::read_dir(base) else {
        return;
    };
    for d in dirs.flatten() {
        let old = d
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > UPLOAD_LIFETIME);
        let ours = d
            .file_name()
            .to_str()
            .is_some_and(|n| uuid::Uuid::parse_str(n).is_ok());
        if old && ours {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

/// Takes away the uploads a send attached (it copied them).
pub(super) async fn forget_uploads(m: &Messenger, attached: &[String]) {
    let base = uploads_dir(m);
    let dirs: Vec<_> = attached
        .iter()
        .filter_map(|p| upload_of(&base, p))
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    })
    .await;
}

/// Types a browser may show inline: pictures that cannot carry script (no SVG).
const INLINE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// `GET /api/v1/files/{from}/{msg_id}/{index}`: an attachment of the message `msg_id` that
/// `from` sent (ids are the sender's choice: both name a message). A
/// picture comes as itself; anything else as a download of `application/octet-stream`,
/// so a file from a peer never runs as a page or script of this origin.
pub(super) async fn file(
    With(s): With<Shared>,
    Path((from, msg_id, index)): Path<(String, String, usize)>,
) -> Response {
    let (Some(m), Some(me)) = (s.ops.messenger().cloned(), s.ops.me()) else {
        return refusal(StatusCode::NOT_FOUND, ErrorKind::NotFound, "no such file");
    };
    let (Ok(from), Ok(id)) = (uuid::Uuid::parse_str(&from), uuid::Uuid::parse_str(&msg_id)) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            ErrorKind::BadInput,
            "a sender and a message id are UUIDs",
        );
    };
    let found = match m.store().history_entry(&me, &from, &id) {
        Ok(e) => e.and_then(|e| e.attachments.into_iter().nth(index)),
        Err(e) => {
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Failed,
                &e.to_string(),
            )
        }
    };
    let Some(a) = found else {
        return refusal(StatusCode::NOT_FOUND, ErrorKind::NotFound, "no such file");
    };
    let path = a.path.clone();
    let bytes = match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(b)) => b,
        _ => {
            return refusal(
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                "the file is not here (not fully received, or removed)",
            )
        }
    };
    let inline = INLINE_TYPES.contains(&a.mime.as_str());
    let mime = if inline {
        a.mime.as_str()
    } else {
        "application/octet-stream"
    };
    let ascii: String = a
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = if inline { "inline" } else { "attachment" };
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{ascii}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    // Even opened on its own, a file is no page: no script, no requests, a sandbox.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FILE_CSP),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::upload_of;
    use std::path::Path;

    #[test]
    fn only_an_upload_of_ours_is_one() {
        let base = Path::new("/h/files/uploads");
        let id = "0b0c0d0e-0000-4000-8000-000000000000";
        assert_eq!(
            upload_of(base, &format!("/h/files/uploads/{id}/a.png")),
            Some(base.join(id))
        );
        for bad in [
            "/h/files/uploads/../x".to_string(),
            format!("/h/files/uploads/{id}/../../x"),
            format!("/h/files/uploads/{id}/.."),
            format!("/h/files/uploads/{id}"),
            format!("/h/files/uploads/{id}/a/b"),
            "/h/files/uploads/not-a-uuid/a.png".to_string(),
            "/etc/passwd".to_string(),
            format!("h/files/uploads/{id}/a.png"),
        ] {
            assert_eq!(upload_of(base, &bad), None, "{bad}");
        }
    }
}

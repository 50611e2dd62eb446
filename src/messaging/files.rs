//! Attachment files on disk: copying a file into the outbox while hashing it, safe names
//! for received files, MIME types, and hashing a received file. Everything streams in
//! fixed-size buffers, so a 200 MiB attachment costs the same memory as a small one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const BUF: usize = 64 * 1024;

/// Copies `src` to `dst` (created, mode 0600), returning its size and SHA-256. Refuses a
/// file larger than `max` without copying more than `max + 1` bytes of it.
pub fn copy_hashing(src: &Path, dst: &Path, max: u64) -> std::io::Result<(u64, [u8; 32])> {
    use std::os::unix::fs::OpenOptionsExt;
    let input = std::fs::File::open(src)?;
    if !input.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut input = input.take(max + 1);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dst)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > max {
            drop(out);
            let _ = std::fs::remove_file(dst);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("larger than the {max}-byte attachment limit"),
            ));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    Ok((size, hasher.finalize().into()))
}

/// SHA-256 of a whole file.
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Reads up to `len` bytes of `path` from `offset`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = f.read_at(&mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Whether `c` reorders the text around it (bidirectional embeddings, overrides, isolates
/// and marks): a name with U+202E shows `cod.exe` as `exe.doc`.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A file name from a stranger made safe to create: no directories, no leading dot, no
/// control or bidirectional formatting characters, at most 100 characters; `fallback` if
/// nothing is left.
pub fn safe_name(name: &str, fallback: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .take(100)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        fallback.to_string()
    } else {
        cleaned
    }
}

/// The MIME type for a file name, by extension.
pub fn mime_for(name: &str) -> &'static str {
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "text" | "log" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// Creates a private directory (0700) and its parents.
pub fn private_dir(path: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_strangers_cannot_escape() {
        assert_eq!(safe_name("../../etc/passwd", "a"), "passwd");
        assert_eq!(safe_name("..", "a"), "a");
        assert_eq!(safe_name(".bashrc", "a"), "bashrc");
        assert_eq!(safe_name("C:\\x\\evil.exe", "a"), "evil.exe");
        assert_eq!(safe_name("a\u{0}b\nc.txt", "a"), "abc.txt");
        assert_eq!(safe_name("invoice\u{202E}fdp.exe", "a"), "invoicefdp.exe");
        assert_eq!(safe_name("\u{2066}x\u{2069}\u{200F}", "a"), "x");
        assert_eq!(safe_name("", "attachment-0"), "attachment-0");
        assert_eq!(safe_name(&"x".repeat(300), "a").len(), 100);
    }

    #[test]
    fn copy_refuses_what_is_over_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("big.bin");
        std::fs::write(&src, vec![1u8; 1000]).unwrap();
        let dst = dir.path().join("copy");
        assert!(copy_hashing(&src, &dst, 999).is_err());
        assert!(!dst.exists());
        let (size, hash) = copy_hashing(&src, &dst, 1000).unwrap();
        assert_eq!(size, 1000);
        assert_eq!(hash, hash_file(&dst).unwrap());
        assert_eq!(mime_for("photo.JPG"), "image/jpeg");
        assert_eq!(mime_for("noext"), "application/octet-stream");
    }
}

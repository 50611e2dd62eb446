//! Serving the control socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use uuid::Uuid;

use super::ops::{Answers, Operations};
use super::{ControlRequest, ControlResponse};
use super::{ErrorKind, MAX_LINE_BYTES};

/// Most client connections served at once.
const MAX_CLIENTS: usize = 64;

/// The listening control socket; removed from disk on [`ControlServer::shutdown`].
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `path` with mode 0600, replacing only a stale socket left by a crashed node:
    /// any other file at the path is left alone and the bind fails.
    pub async fn bind(path: &Path, ops: Operations) -> std::io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "something that is not a socket is in the way; not removing it",
                ));
            }
            if super::socket_is_live(path).await {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another node answers on this socket",
                ));
            }
            warn!(path = %path.display(), "removing stale control socket from an earlier run");
            std::fs::remove_file(path)?;
        }
        let listener = bind_private(path)?;
        let task = tokio::spawn(accept_loop(listener, ops));
        Ok(ControlServer {
            path: path.to_path_buf(),
            task,
        })
    }

    /// Stops serving and removes the socket file.
    pub async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a Unix socket that is 0600 from the moment it appears at `path`: it is bound inside
/// a fresh 0700 directory next to `path`, narrowed there, and renamed into place. (A umask
/// would do the same but is process-wide, and other threads create files meanwhile.)
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = path.parent().unwrap_or(Path::new("."));
    let nest = parent.join(format!(".control-{}", Uuid::new_v4().simple()));
    std::fs::DirBuilder::new().mode(0o700).create(&nest)?;
    let inner = nest.join("s");
    let bound = UnixListener::bind(&inner).and_then(|l| {
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&nest);
    bound
}

async fn accept_loop(listener: UnixListener, ops: Operations) {
    // Connections end with the server: aborting this task drops the set, which aborts them.
    let mut connections = tokio::task::JoinSet::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    // Only the user the node runs as may drive it.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let my_uid = unsafe { libc::geteuid() };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == my_uid => {}
            Ok(cred) => {
                warn!(
                    uid = cred.uid(),
                    owner = my_uid,
                    "refused a control connection from another user"
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "refused a control connection: cannot read its credentials");
                continue;
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!("too many control connections; refusing one");
            continue;
        };
        let ops = ops.clone();
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            if let Err(e) = serve(stream, ops).await {
                debug!(error = %e, "control connection ended");
            }
            drop(permit);
        });
    }
}

async fn serve(stream: UnixStream, ops: Operations) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    let mut lines = Lines {
        reader: BufReader::new(read),
        write,
    };
    loop {
        let mut line = String::new();
        let n = (&mut lines.reader)
            .take(MAX_LINE_BYTES as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        match serde_json::from_str::<ControlRequest>(&line) {
            Ok(req) => ops.run(req, &mut lines).await?,
            Err(e) => {
                let r =
                    ControlResponse::err(ErrorKind::BadInput, format!("bad control request: {e}"));
                lines.answer(r).await?
            }
        }
    }
}

/// A control connection: answers go out one JSON line each.
struct Lines {
    reader: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Answers for Lines {
    async fn answer(&mut self, r: ControlResponse) -> std::io::Result<()> {
        let mut out = serde_json::to_vec(&r).unwrap_or_default();
        out.push(b'\n');
        self.write.write_all(&out).await
    }

    async fn gone(&mut self) {
        // The client closes its end to stop a follow; anything it sends meanwhile is
        // ignored.
        let mut probe = [0u8; 64];
        while matches!(self.reader.read(&mut probe).await, Ok(n) if n > 0) {}
    }
}

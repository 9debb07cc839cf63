//! The Unix socket server: framing, size and time limits, and the caller's
//! identity from SO_PEERCRED. What a request does is the handler's business.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, Semaphore},
};
use tracing::{debug, warn};

use super::proto::{ApiRequest, ApiResponse, ErrorKind, MAX_REQUEST_BYTES};

/// How long a client may take to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// Who is calling, as the kernel vouches for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// What the server needs from the agent.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        caller: Caller,
        request: ApiRequest,
    ) -> impl std::future::Future<Output = ApiResponse> + Send;
    /// A stream of event lines for `watch`.
    fn subscribe(&self) -> broadcast::Receiver<serde_json::Value>;
}

/// Socket ownership and permissions.
#[derive(Clone, Debug)]
pub struct SocketOptions {
    pub mode: u32,
    pub group: Option<u32>,
}

/// Binds the socket, replacing a stale one, with the configured mode and
/// group set before anyone can connect (umask + chmod on a fresh inode).
pub fn bind(path: &Path, opts: &SocketOptions) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    if let Some(gid) = opts.group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode))?;
    Ok(listener)
}

/// Serves until the listener fails.
pub async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!("accepting an API connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, handler).await {
                debug!("API connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn reply(stream: &mut UnixStream, response: &ApiResponse) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).expect("responses serialize");
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn connection<H: Handler>(mut stream: UnixStream, handler: Arc<H>) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let caller = Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0),
    };
    let (read_half, _) = stream.split();
    let mut reader = BufReader::new(read_half).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let response = match read {
        Err(_) => ApiResponse::err(
            ErrorKind::BadRequest,
            format!("no complete request within {}s", READ_TIMEOUT.as_secs()),
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => ApiResponse::err(
            ErrorKind::BadRequest,
            format!("request larger than {MAX_REQUEST_BYTES} bytes"),
        ),
        Ok(Ok(_)) => match serde_json::from_slice::<ApiRequest>(&line) {
            Err(e) => ApiResponse::err(ErrorKind::BadRequest, format!("malformed request: {e}")),
            Ok(ApiRequest::Watch) => {
                // Authorise like any request: the handler refuses unknown uids.
                let check = handler.clone().handle(caller, ApiRequest::Status).await;
                if !check.ok {
                    return reply(&mut stream, &check).await;
                }
                return watch(stream, handler).await;
            }
            Ok(request) => handler.clone().handle(caller, request).await,
        },
    };
    reply(&mut stream, &response).await?;
    stream.shutdown().await
}

async fn watch<H: Handler>(mut stream: UnixStream, handler: Arc<H>) -> std::io::Result<()> {
    let mut events = handler.subscribe();
    reply(
        &mut stream,
        &ApiResponse::ok("watching", serde_json::Value::Null),
    )
    .await?;
    loop {
        match events.recv().await {
            Ok(event) => {
                let mut line = serde_json::to_vec(&event).expect("events serialize");
                line.push(b'\n');
                stream.write_all(&line).await?;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let note = serde_json::json!({"event": "lagged", "missed": n});
                let mut line = serde_json::to_vec(&note).expect("events serialize");
                line.push(b'\n');
                stream.write_all(&line).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

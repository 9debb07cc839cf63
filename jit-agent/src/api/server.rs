//! The Unix socket server: framing, size and time limits, and the caller's
//! identity from SO_PEERCRED. What a request does is the handler's business.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, OwnedSemaphorePermit, Semaphore},
};
use tracing::{debug, warn};

use super::proto::{ApiRequest, ApiResponse, ErrorKind, MAX_REQUEST_BYTES};

/// How long a client may take to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// `watch` streams at once. They give back their connection slot, since
/// they last as long as the watcher likes and must not starve requests.
pub const MAX_WATCHERS: usize = 64;
/// How long one line may take to be written before the reader counts as
/// gone; only a client that stopped reading fills the socket buffer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let watchers = Arc::new(Semaphore::new(MAX_WATCHERS));
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
        let watchers = watchers.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, handler, permit, watchers).await {
                debug!("API connection ended: {e}");
            }
        });
    }
}

async fn write_line(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &impl serde::Serialize,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).expect("responses and events serialize");
    line.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&line)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client stopped reading",
        )),
    }
}

async fn reply(stream: &mut UnixStream, response: &ApiResponse) -> std::io::Result<()> {
    write_line(stream, response).await
}

/// Parses one request line. serde lets unknown fields through beside the
/// tag of an operation without fields (`{"op":"status","force":true}`)
/// despite `deny_unknown_fields`, so the keys sent are also checked against
/// those of the request they parsed into.
fn parse_request(line: &[u8]) -> Result<ApiRequest, String> {
    let request: ApiRequest = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let sent: serde_json::Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let known = serde_json::to_value(&request).expect("requests serialize");
    if let (Some(sent), Some(known)) = (sent.as_object(), known.as_object()) {
        if let Some(extra) = sent.keys().find(|k| !known.contains_key(*k)) {
            return Err(format!("unknown field `{extra}`"));
        }
    }
    Ok(request)
}

async fn connection<H: Handler>(
    mut stream: UnixStream,
    handler: Arc<H>,
    slot: OwnedSemaphorePermit,
    watchers: Arc<Semaphore>,
) -> std::io::Result<()> {
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
        Ok(Ok(_)) => match parse_request(&line) {
            Err(e) => ApiResponse::err(ErrorKind::BadRequest, format!("malformed request: {e}")),
            Ok(ApiRequest::Watch) => {
                // Authorise like any request: the handler refuses unknown uids.
                let check = handler.clone().handle(caller, ApiRequest::Status).await;
                if !check.ok {
                    return reply(&mut stream, &check).await;
                }
                let Ok(watching) = watchers.try_acquire_owned() else {
                    let busy = ApiResponse::err(
                        ErrorKind::Internal,
                        format!("too many watchers ({MAX_WATCHERS}) already; try again later"),
                    );
                    return reply(&mut stream, &busy).await;
                };
                drop(slot);
                let ended = watch(stream, handler).await;
                drop(watching);
                return ended;
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
    let (mut from_client, mut to_client) = stream.split();
    let mut ignored = [0u8; 256];
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            // A watcher sends nothing more; end of input (or an error) means
            // it has gone, and waiting for the next event to find out would
            // hold its descriptor for as long as the gate is quiet.
            read = from_client.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
        };
        match event {
            Ok(event) => write_line(&mut to_client, &event).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let note = serde_json::json!({"event": "lagged", "missed": n});
                write_line(&mut to_client, &note).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_beside_operations_without_fields() {
        for line in [
            r#"{"op":"status","extra":1}"#,
            r#"{"op":"watch","all":true}"#,
            r#"{"op":"policy_reload","force":true}"#,
            r#"{"op":"release","id":1,"force":true}"#,
        ] {
            let err = parse_request(line.as_bytes()).expect_err(line);
            assert!(err.contains("unknown field"), "{line}: {err}");
        }
        assert_eq!(parse_request(br#"{"op":"status"}"#), Ok(ApiRequest::Status));
        let list = parse_request(br#"{"op":"list","all":true}"#).unwrap();
        assert_eq!(
            list,
            ApiRequest::List {
                all: true,
                history: false
            }
        );
        let request = parse_request(br#"{"op":"request","target":"t","reason":null}"#).unwrap();
        assert!(matches!(request, ApiRequest::Request { .. }));
    }
}

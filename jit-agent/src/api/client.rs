//! The client side of the API, used by jitctl and tests.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::proto::{ApiRequest, ApiResponse, MAX_RESPONSE_BYTES};

/// Failing to talk to the agent at all.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent at {path}: {source} (is jit-agent running? set --socket or JITGATE_SOCKET)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent sent a malformed answer: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the agent closed the connection without answering")]
    NoAnswer,
}

pub const TIMEOUT: Duration = Duration::from_secs(30);

fn connect(path: &Path) -> Result<UnixStream, ClientError> {
    let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// Sends one request and reads its answer.
pub fn call(path: &Path, request: &ApiRequest) -> Result<ApiResponse, ClientError> {
    let mut stream = connect(path)?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream).take(MAX_RESPONSE_BYTES as u64);
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer)?;
    if answer.is_empty() {
        return Err(ClientError::NoAnswer);
    }
    Ok(serde_json::from_slice(&answer)?)
}

/// Streams events to `each` until the agent closes or `each` returns false.
pub fn watch(
    path: &Path,
    mut each: impl FnMut(serde_json::Value) -> bool,
) -> Result<ApiResponse, ClientError> {
    let mut stream = connect(path)?;
    stream.set_read_timeout(None)?;
    let mut line = serde_json::to_vec(&ApiRequest::Watch)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut first = Vec::new();
    reader.read_until(b'\n', &mut first)?;
    if first.is_empty() {
        return Err(ClientError::NoAnswer);
    }
    let first: ApiResponse = serde_json::from_slice(&first)?;
    if !first.ok {
        return Ok(first);
    }
    for line in reader.lines() {
        let line = line?;
        if !each(serde_json::from_str(&line)?) {
            break;
        }
    }
    Ok(first)
}

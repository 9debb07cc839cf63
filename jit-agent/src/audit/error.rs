//! Errors of the audit log.

use std::io;
use std::path::PathBuf;

/// An error while writing or reading the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The state directory could not be created or read.
    #[error("cannot use audit directory {dir}")]
    Dir {
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Another process holds the log's lock; two writers would fork the chain.
    #[error("audit log {path} is already open by another process (is another jit-agent running?)")]
    Locked {
        /// The log file.
        path: PathBuf,
    },

    /// The disk holding the state directory is full. The record was not
    /// written: any partial line was cut off again.
    #[error("state directory {dir} is full: could not {action}, no record was written")]
    Full {
        /// The state directory.
        dir: PathBuf,
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Any other I/O error on the log.
    #[error("i/o error on audit log {path}: could not {action}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The event could not be serialized.
    #[error("cannot encode the audit event as JSON")]
    Encode {
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// The event is larger than one record may be.
    #[error("audit event is {size} bytes, more than the {max}-byte limit for one record")]
    TooLarge {
        /// The event's size as JSON.
        size: usize,
        /// [`super::MAX_EVENT_BYTES`].
        max: usize,
    },

    /// A record could not be read back (see `jitctl audit verify` for why).
    #[error("audit log {path}, {location}: not an audit record")]
    Malformed {
        /// The log file.
        path: PathBuf,
        /// `line 17`, or `near the end` when read backwards by `tail`.
        location: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

impl AuditError {
    /// Whether the disk holding the state directory is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, AuditError::Full { .. })
    }
}

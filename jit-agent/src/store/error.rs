//! Errors of the durable state store.

use std::io;
use std::path::PathBuf;

/// An error of the state store. Every variant names the file or directory and
/// what was being done, so a log line alone tells the operator where to look.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created or read.
    #[error("cannot use state directory {dir}")]
    Dir {
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Another process (or another `Store` in this one) holds the store's lock.
    #[error(
        "state store {path} is already open by another process (is another jit-agent running?)"
    )]
    Locked {
        /// The store file.
        path: PathBuf,
    },

    /// The disk holding the state directory is full (ENOSPC or EDQUOT). The
    /// operation was not applied: redb aborts the whole transaction.
    #[error("state directory {dir} is full: could not {action}, nothing was changed")]
    Full {
        /// The state directory.
        dir: PathBuf,
        /// What was being done, e.g. `store grant 7`.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Any other I/O error on the store file.
    #[error("i/o error on state store {path}: could not {action}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// redb reported an error other than I/O.
    #[error("state store {path} failed: could not {action}")]
    Storage {
        /// The store file.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// The underlying error (boxed: redb's error type is large).
        #[source]
        source: Box<redb::Error>,
    },

    /// The store was written by a newer jit-agent whose layout this one does
    /// not know; guessing could drop grants, so it refuses.
    #[error(
        "state store {path} has schema version {found}, but this jit-agent only understands \
         versions up to {supported}; run the newer jit-agent, or move the file aside to start over"
    )]
    NewerSchema {
        /// The store file.
        path: PathBuf,
        /// The version found in the file.
        found: u64,
        /// The newest version this build understands.
        supported: u64,
    },

    /// A record could not be serialized.
    #[error("cannot encode {kind} {id} as JSON")]
    Encode {
        /// `request`, `grant` or `meta`.
        kind: &'static str,
        /// The record id (0 for meta).
        id: u64,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// A stored record does not deserialize into the type the caller asked for.
    #[error("{kind} {id} in state store {path} does not match this jit-agent's record type")]
    Decode {
        /// The store file.
        path: PathBuf,
        /// `request`, `grant` or `meta`.
        kind: &'static str,
        /// The record id (0 for meta).
        id: u64,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// A caller tried to write a meta key the store manages itself.
    #[error("meta key {key:?} is reserved for the state store itself")]
    ReservedMetaKey {
        /// The key.
        key: String,
    },

    /// The store file is damaged and could not be renamed out of the way, so
    /// the agent cannot start over without destroying the evidence.
    #[error("state store {path} is damaged ({reason}) and could not be moved aside to {to}")]
    MoveAside {
        /// The damaged store file.
        path: PathBuf,
        /// Where it was to be moved.
        to: PathBuf,
        /// Why the file was judged damaged.
        reason: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The durable id counter reached `u64::MAX`.
    #[error("state store {path} has handed out every id")]
    IdsExhausted {
        /// The store file.
        path: PathBuf,
    },
}

impl StoreError {
    /// Whether the disk holding the state directory is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Full { .. })
    }
}

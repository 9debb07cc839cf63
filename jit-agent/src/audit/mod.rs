//! The audit log: append-only, hash-chained JSON lines in
//! `<state dir>/audit.jsonl`, one record per event.
//!
//! Each record carries `seq` (1, 2, 3, ...), `time` (RFC 3339, UTC), `prev`
//! (hash of the previous line), `event` (any JSON the caller gives) and
//! `hash`; [`chain`] defines the exact bytes. [`verify`] finds the first edited,
//! inserted, deleted or reordered line.
//!
//! # What the chain cannot see, and the anchor
//!
//! Deleting the *last* lines leaves a shorter chain that is still valid, and
//! anyone who can write the file can rewrite every line after an edit. So on
//! every append the log also stores its newest `seq` and `hash` (an
//! [`Anchor`]) in the state store's meta table, a separate file redb
//! checksums. [`verify_with_anchor`] fails if the anchored record is missing
//! or different. That raises the bar for truncation and rewriting; it does not
//! stop an attacker who controls both files, for which the log must be
//! shipped off the host.
//!
//! # Durability and damage
//!
//! [`AuditLog::append`] returns only after the line is written and
//! `fdatasync`'d. A write that fails half-way (a full disk) is cut off again,
//! so the log never holds a partial line while the agent runs. A crash
//! mid-write can leave one; [`AuditLog::open`] moves it to
//! `audit.jsonl.torn-<timestamp>`, truncates the log to its last complete
//! line and appends an `audit_recovered` event, so the chain continues and
//! the evidence is kept.

mod chain;
pub mod denied;
mod error;
mod verify;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub use self::chain::{genesis_prev, GENESIS_SEED};
pub use self::error::AuditError;
pub use self::verify::{verify, verify_with_anchor, Problem, VerifyError, VerifyReport};
use crate::store::{fsutil, Store, StoreError};

/// The log's file name inside the state directory.
pub const FILE_NAME: &str = "audit.jsonl";

/// The largest event one record may carry, as compact JSON. Events are small
/// (a transition, a minute's summary); the limit bounds what `tail` reads.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The state store meta key under which the anchor is kept.
pub const ANCHOR_META_KEY: &str = "audit_anchor";

/// The `type` of the event recorded after a torn last record was moved aside.
pub const RECOVERED_EVENT: &str = "audit_recovered";

/// The `type` of the event recorded when the stored anchor is ahead of the
/// log, i.e. records at its end were deleted while the agent was down.
pub const ANCHOR_MISMATCH_EVENT: &str = "audit_anchor_mismatch";

/// One record, as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the record was written.
    pub time: DateTime<Utc>,
    /// Hex SHA-256 of the previous line.
    pub prev: String,
    /// The event, as the caller gave it.
    pub event: serde_json::Value,
    /// Hex SHA-256 of this record without its hash field.
    pub hash: String,
}

/// The newest record's `seq` and `hash`, kept outside the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The newest record's seq.
    pub seq: u64,
    /// The newest record's hash field.
    pub hash: String,
}

/// Where the anchor is kept. The state store is the real one; tests and
/// tools may supply their own.
pub trait AnchorSink: Send + Sync {
    /// The stored anchor, if any.
    fn load_anchor(&self) -> Result<Option<Anchor>, StoreError>;
    /// Replaces the stored anchor.
    fn store_anchor(&self, anchor: &Anchor) -> Result<(), StoreError>;
}

impl AnchorSink for Store {
    fn load_anchor(&self) -> Result<Option<Anchor>, StoreError> {
        self.get_meta(ANCHOR_META_KEY)
    }

    fn store_anchor(&self, anchor: &Anchor) -> Result<(), StoreError> {
        self.put_meta(ANCHOR_META_KEY, anchor)
    }
}

impl<T: AnchorSink + ?Sized> AnchorSink for Arc<T> {
    fn load_anchor(&self) -> Result<Option<Anchor>, StoreError> {
        (**self).load_anchor()
    }

    fn store_anchor(&self, anchor: &Anchor) -> Result<(), StoreError> {
        (**self).store_anchor(anchor)
    }
}

/// A torn last record found when the log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornRecovery {
    /// How many bytes the partial line had.
    pub bytes: u64,
    /// Where they were moved.
    pub moved_to: PathBuf,
    /// The seq of the `audit_recovered` record that says so; `None` if it
    /// could not be written yet (it is written before the next event).
    pub recorded_as: Option<u64>,
}

/// What [`AuditLog::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOpenReport {
    /// A torn last record was moved aside.
    pub torn: Option<TornRecovery>,
    /// The stored anchor was ahead of (or different from) the log's end:
    /// records were deleted or rewritten while the agent was down. An
    /// `audit_anchor_mismatch` event records it.
    pub anchor_mismatch: Option<Anchor>,
}

type Subscriber = Box<dyn Fn(&AuditRecord) + Send + Sync>;

/// The open audit log. Appends are serialized inside; share it by `Arc`.
pub struct AuditLog {
    dir: PathBuf,
    path: PathBuf,
    inner: Mutex<Writer>,
    anchor: Option<Box<dyn AnchorSink>>,
    subscribers: Mutex<Vec<Subscriber>>,
    report: LogOpenReport,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

struct Writer {
    file: Flock<File>,
    /// Length of the log up to its last complete line.
    len: u64,
    next_seq: u64,
    /// Hash of the last line: the next record's `prev`.
    prev: String,
    head: Option<Anchor>,
    /// A failed write could not be cut off again: recover before the next.
    needs_recovery: bool,
    /// Events about the log itself (recovery, anchor mismatch) that could
    /// not be written yet, say on a full disk; written before the next one.
    pending: VecDeque<serde_json::Value>,
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`, without an anchor.
    pub fn open(dir: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        Self::open_inner(dir.as_ref(), None)
    }

    /// Opens (or creates) the log in `dir` and keeps its anchor in `sink`
    /// (normally the [`Store`]). A missing anchor is re-created from the
    /// log's end; one ahead of the log is recorded as an
    /// `audit_anchor_mismatch` event.
    pub fn open_with_anchor(
        dir: impl AsRef<Path>,
        sink: impl AnchorSink + 'static,
    ) -> Result<AuditLog, AuditError> {
        Self::open_inner(dir.as_ref(), Some(Box::new(sink)))
    }

    fn open_inner(dir: &Path, anchor: Option<Box<dyn AnchorSink>>) -> Result<AuditLog, AuditError> {
        fsutil::create_state_dir(dir).map_err(|source| AuditError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)
            .map_err(|e| io_error(dir, &path, "open the audit log", e))?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                AuditError::Locked { path: path.clone() }
            } else {
                io_error(dir, &path, "lock the audit log", errno.into())
            }
        })?;
        // The log's directory entry must be durable before its first record
        // is acknowledged.
        fsutil::sync_dir(dir).map_err(|e| io_error(dir, &path, "sync the state directory", e))?;
        let mut writer = Writer {
            file,
            len: 0,
            next_seq: 1,
            prev: genesis_prev(),
            head: None,
            needs_recovery: false,
            pending: VecDeque::new(),
        };
        let torn = recover(dir, &path, &mut writer)?;
        let mut log = AuditLog {
            dir: dir.to_path_buf(),
            path,
            inner: Mutex::new(writer),
            anchor,
            subscribers: Mutex::new(Vec::new()),
            report: LogOpenReport::default(),
        };
        log.report.anchor_mismatch = log.check_anchor();
        let mut writer = log.lock();
        if let Some(stale) = &log.report.anchor_mismatch {
            let head = writer.head.clone();
            writer.pending.push_back(serde_json::json!({
                "type": ANCHOR_MISMATCH_EVENT,
                "anchor_seq": stale.seq,
                "anchor_hash": stale.hash,
                "log_last_seq": head.as_ref().map_or(0, |h| h.seq),
                "log_last_hash": head.map(|h| h.hash),
            }));
        }
        if let Some((bytes, moved_to)) = &torn {
            writer.pending.push_back(recovered_event(*bytes, moved_to));
        }
        // Failing to record these must not stop the agent from starting:
        // they stay pending and go first into the next append.
        let written = log.write_pending(&mut writer).unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not record the audit log's own recovery yet");
            Vec::new()
        });
        drop(writer);
        if let Some((bytes, moved_to)) = torn {
            let recorded_as = written
                .iter()
                .find(|r| r.event["type"] == RECOVERED_EVENT)
                .map(|r| r.seq);
            log.report.torn = Some(TornRecovery {
                bytes,
                moved_to,
                recorded_as,
            });
        }
        Ok(log)
    }

    /// Compares the stored anchor with the log's end; returns the stored
    /// anchor if the log is behind it or differs at it.
    fn check_anchor(&self) -> Option<Anchor> {
        let sink = self.anchor.as_ref()?;
        let head = self.head();
        match sink.load_anchor() {
            Ok(None) => {
                if let Some(head) = head {
                    tracing::info!(
                        seq = head.seq,
                        "no audit anchor stored; anchoring at the log's end"
                    );
                    if let Err(e) = sink.store_anchor(&head) {
                        tracing::error!(error = %e, "could not store the audit anchor");
                    }
                }
                None
            }
            Ok(Some(stored)) => {
                let last = head.as_ref().map_or(0, |h| h.seq);
                let differs = head
                    .as_ref()
                    .is_some_and(|h| h.seq == stored.seq && h.hash != stored.hash);
                if stored.seq > last || differs {
                    tracing::error!(
                        path = %self.path.display(),
                        anchor_seq = stored.seq,
                        log_last_seq = last,
                        "AUDIT LOG DOES NOT MATCH ITS ANCHOR: records at its end were deleted or rewritten"
                    );
                    Some(stored)
                } else {
                    None
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not read the audit anchor");
                None
            }
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening found.
    pub fn open_report(&self) -> &LogOpenReport {
        &self.report
    }

    /// The newest record's seq and hash (`None` for an empty log).
    pub fn head(&self) -> Option<Anchor> {
        self.lock().head.clone()
    }

    /// Appends one event and returns its record once it is on disk
    /// (written and `fdatasync`'d), then updates the anchor.
    pub fn append<T: Serialize + ?Sized>(&self, event: &T) -> Result<AuditRecord, AuditError> {
        let value = serde_json::to_value(event).map_err(|source| AuditError::Encode { source })?;
        let mut records = self.append_all(&[value])?;
        Ok(records.remove(0))
    }

    /// Appends several events as one durable write: after an error none of
    /// them is in the log.
    pub fn append_all<T: Serialize>(&self, events: &[T]) -> Result<Vec<AuditRecord>, AuditError> {
        let values = events
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| AuditError::Encode { source })?;
        let mut writer = self.lock();
        if writer.needs_recovery {
            // The partial line is our own failed write; it is kept like any
            // torn record, and recorded before the new events.
            if let Some((bytes, moved_to)) = recover(&self.dir, &self.path, &mut writer)? {
                writer.pending.push_back(recovered_event(bytes, &moved_to));
            }
        }
        self.write_pending(&mut writer)?;
        self.write_records(&mut writer, values)
    }

    fn write_pending(&self, writer: &mut Writer) -> Result<Vec<AuditRecord>, AuditError> {
        let mut written = Vec::new();
        while let Some(event) = writer.pending.front().cloned() {
            written.push(self.write_record(writer, event)?);
            writer.pending.pop_front();
        }
        Ok(written)
    }

    fn write_record(
        &self,
        writer: &mut Writer,
        value: serde_json::Value,
    ) -> Result<AuditRecord, AuditError> {
        let mut records = self.write_records(writer, vec![value])?;
        Ok(records.remove(0))
    }

    /// Writes records with one write and one `fdatasync`: all of them
    /// reach the log or none does.
    fn write_records(
        &self,
        writer: &mut Writer,
        values: Vec<serde_json::Value>,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let now = Utc::now();
        let time = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut bytes = Vec::new();
        let mut pending = Vec::with_capacity(values.len());
        let mut prev = writer.prev.clone();
        let first_seq = writer.next_seq;
        for (n, value) in values.into_iter().enumerate() {
            let event_json =
                serde_json::to_string(&value).map_err(|source| AuditError::Encode { source })?;
            // Checked before anything is written: a batch goes whole or not at all.
            if event_json.len() > MAX_EVENT_BYTES {
                return Err(AuditError::TooLarge {
                    size: event_json.len(),
                    max: MAX_EVENT_BYTES,
                });
            }
            let seq = first_seq + n as u64;
            let (line, hash) = chain::encode_line(seq, &time, &prev, &event_json);
            let digest = chain::line_digest(line.as_bytes());
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            pending.push((seq, std::mem::replace(&mut prev, digest), hash, value));
        }
        let Some(last_seq) = pending.last().map(|p| p.0) else {
            return Ok(Vec::new());
        };
        let action = if pending.len() == 1 {
            format!("append audit record {first_seq}")
        } else {
            format!("append audit records {first_seq}..={last_seq}")
        };
        if let Err(e) = writer
            .file
            .write_all(&bytes)
            .and_then(|()| writer.file.sync_data())
        {
            // Cut off whatever part of the lines reached the file, so that a
            // failed append leaves no partial record for the next to follow.
            let cut = writer
                .file
                .set_len(writer.len)
                .and_then(|()| writer.file.sync_data());
            if let Err(cut_error) = cut {
                tracing::error!(
                    path = %self.path.display(),
                    error = %cut_error,
                    "could not cut a failed audit write off; it will be moved aside before the next record"
                );
                writer.needs_recovery = true;
            }
            return Err(io_error(&self.dir, &self.path, &action, e));
        }
        let time = DateTime::parse_from_rfc3339(&time)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now);
        let records: Vec<AuditRecord> = pending
            .into_iter()
            .map(|(seq, prev, hash, event)| AuditRecord {
                seq,
                time,
                prev,
                event,
                hash,
            })
            .collect();
        writer.len += bytes.len() as u64;
        writer.next_seq = last_seq + 1;
        writer.prev = prev;
        let head = Anchor {
            seq: last_seq,
            hash: records.last().map(|r| r.hash.clone()).unwrap_or_default(),
        };
        if let Some(sink) = &self.anchor {
            // The records are already durable, so a failure here must not be
            // reported as a failed append (the caller would write them again).
            // An anchor that lags behind still verifies; it only protects less.
            if let Err(e) = sink.store_anchor(&head) {
                tracing::error!(error = %e, seq = last_seq, "could not store the audit anchor");
            }
        }
        writer.head = Some(head);
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for record in &records {
            for subscriber in subscribers.iter() {
                subscriber(record);
            }
        }
        Ok(records)
    }

    /// Calls `f` with every record appended from now on, in order, right
    /// after it is durable (for `jitctl watch`). `f` runs under the log's
    /// lock: hand the record to a channel, do not block.
    pub fn subscribe(&self, f: impl Fn(&AuditRecord) + Send + Sync + 'static) {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(f));
    }

    /// The last `n` records, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<AuditRecord>, AuditError> {
        tail(&self.path, n)
    }

    /// Every record, oldest first.
    pub fn records(&self) -> Result<Records, AuditError> {
        records(&self.path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn recovered_event(bytes: u64, moved_to: &Path) -> serde_json::Value {
    serde_json::json!({
        "type": RECOVERED_EVENT,
        "torn_bytes": bytes,
        "moved_to": moved_to.display().to_string(),
    })
}

fn io_error(dir: &Path, path: &Path, action: &str, source: io::Error) -> AuditError {
    if fsutil::is_disk_full(&source) {
        AuditError::Full {
            dir: dir.to_path_buf(),
            action: action.into(),
            source,
        }
    } else {
        AuditError::Io {
            path: path.to_path_buf(),
            action: action.into(),
            source,
        }
    }
}

const CHUNK: u64 = 64 * 1024;

/// Reads backwards from `end` until `n` complete lines (each ending in a
/// newline) are found or the file starts; bytes after the last newline are
/// ignored. Returns the lines without newlines, oldest first.
fn last_lines(file: &File, end: u64, n: usize) -> io::Result<Vec<Vec<u8>>> {
    if n == 0 || end == 0 {
        return Ok(Vec::new());
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut start = end;
    loop {
        let size = CHUNK.min(start);
        start -= size;
        let mut chunk = vec![0; size as usize];
        file.read_exact_at(&mut chunk, start)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        // n lines need n newlines of their own plus the one before the first.
        if start == 0 || buf.iter().filter(|&&b| b == b'\n').count() > n {
            break;
        }
    }
    let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    buf.truncate(complete);
    let mut lines: Vec<Vec<u8>> = buf
        .split_inclusive(|&b| b == b'\n')
        .map(|l| l[..l.len() - 1].to_vec())
        .collect();
    if start > 0 && !lines.is_empty() {
        // The first piece began before what was read.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// Moves a torn last record aside and sets the writer to continue after the
/// last complete line. Returns the torn bytes' count and new home, if any.
fn recover(
    dir: &Path,
    path: &Path,
    writer: &mut Writer,
) -> Result<Option<(u64, PathBuf)>, AuditError> {
    let io = |action: &'static str| move |e: io::Error| io_error(dir, path, action, e);
    let len = writer
        .file
        .metadata()
        .map_err(io("inspect the audit log"))?
        .len();
    let mut torn = None;
    let mut complete = len;
    if len > 0 {
        let mut last = [0u8];
        writer
            .file
            .read_exact_at(&mut last, len - 1)
            .map_err(io("read the audit log"))?;
        if last[0] != b'\n' {
            complete = end_of_last_line(&writer.file, len).map_err(io("read the audit log"))?;
            let mut fragment = vec![0; (len - complete) as usize];
            writer
                .file
                .read_exact_at(&mut fragment, complete)
                .map_err(io("read the torn audit record"))?;
            let aside = fsutil::aside_path(path, "torn", Utc::now());
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(&aside)
                .map_err(io("keep the torn audit record"))?;
            let kept = out
                .write_all(&fragment)
                .and_then(|()| out.sync_all())
                .and_then(|()| fsutil::sync_dir(dir));
            if let Err(e) = kept {
                // An empty or partial copy is no evidence; the fragment
                // stays in the log until it can be kept whole.
                let _ = std::fs::remove_file(&aside);
                return Err(io("keep the torn audit record")(e));
            }
            writer
                .file
                .set_len(complete)
                .and_then(|()| writer.file.sync_all())
                .map_err(io("cut the torn audit record off"))?;
            tracing::error!(
                path = %path.display(),
                bytes = fragment.len(),
                moved_to = %aside.display(),
                "AUDIT LOG HAD A TORN LAST RECORD (crash mid-write): moved it aside and continued the chain"
            );
            torn = Some((fragment.len() as u64, aside));
        }
    }
    writer.len = complete;
    writer.needs_recovery = false;
    let last = last_lines(&writer.file, complete, 1).map_err(io("read the audit log"))?;
    match last.first() {
        None => {
            writer.next_seq = 1;
            writer.prev = genesis_prev();
            writer.head = None;
        }
        Some(line) => {
            writer.prev = chain::line_digest(line);
            match chain::check(line) {
                Ok(header) => {
                    writer.next_seq = header.seq + 1;
                    writer.head = Some(Anchor {
                        seq: header.seq,
                        hash: header.hash,
                    });
                }
                Err(problem) => {
                    // Continue the chain after the bad line rather than stop
                    // auditing; `verify` reports the line.
                    let lines = count_lines(&writer.file).map_err(io("read the audit log"))?;
                    let seq = chain::seq_of(line).unwrap_or(lines);
                    tracing::error!(
                        path = %path.display(),
                        ?problem,
                        "the last audit record is damaged; appending after it (`jitctl audit verify` will show it)"
                    );
                    writer.next_seq = seq.max(lines) + 1;
                    writer.head = None;
                }
            }
        }
    }
    Ok(torn)
}

/// The offset just after the last newline before `len`, or 0.
fn end_of_last_line(file: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    while end > 0 {
        let size = CHUNK.min(end);
        let start = end - size;
        let mut chunk = vec![0; size as usize];
        file.read_exact_at(&mut chunk, start)?;
        if let Some(p) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + p as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn count_lines(file: &File) -> io::Result<u64> {
    let mut reader = BufReader::new(file.try_clone()?);
    let mut count = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(count);
        }
        if line.ends_with(b"\n") {
            count += 1;
        }
    }
}

/// The last `n` records of the log at `path`, oldest first. A partial line
/// at the end (a write in flight, or a torn record) is not returned.
pub fn tail(path: impl AsRef<Path>, n: usize) -> Result<Vec<AuditRecord>, AuditError> {
    let path = path.as_ref();
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = File::open(path).map_err(|e| io_error(dir, path, "open the audit log", e))?;
    let len = file
        .metadata()
        .map_err(|e| io_error(dir, path, "inspect the audit log", e))?
        .len();
    let lines =
        last_lines(&file, len, n).map_err(|e| io_error(dir, path, "read the audit log", e))?;
    lines
        .iter()
        .map(|line| {
            serde_json::from_slice(line).map_err(|source| AuditError::Malformed {
                path: path.to_path_buf(),
                location: "near the end".into(),
                source,
            })
        })
        .collect()
}

/// Every record of the log at `path`, oldest first, read lazily.
pub fn records(path: impl AsRef<Path>) -> Result<Records, AuditError> {
    let path = path.as_ref().to_path_buf();
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let file = File::open(&path).map_err(|e| io_error(&dir, &path, "open the audit log", e))?;
    Ok(Records {
        reader: BufReader::new(file),
        path,
        line: 0,
        buf: Vec::new(),
        done: false,
    })
}

/// Iterator over a log's records; see [`records`]. A partial last line is
/// not returned.
pub struct Records {
    reader: BufReader<File>,
    path: PathBuf,
    line: u64,
    buf: Vec<u8>,
    /// Set after an I/O error, so that a caller who skips errors still ends.
    done: bool,
}

impl Iterator for Records {
    type Item = Result<AuditRecord, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.buf.clear();
        match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => None,
            Ok(_) if !self.buf.ends_with(b"\n") => None,
            Ok(n) => {
                self.line += 1;
                Some(
                    serde_json::from_slice(&self.buf[..n - 1]).map_err(|source| {
                        AuditError::Malformed {
                            path: self.path.clone(),
                            location: format!("line {}", self.line),
                            source,
                        }
                    }),
                )
            }
            Err(e) => {
                self.done = true;
                let dir = self.path.parent().unwrap_or(Path::new("."));
                Some(Err(io_error(dir, &self.path, "read the audit log", e)))
            }
        }
    }
}

#[cfg(test)]
mod tests;

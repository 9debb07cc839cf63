//! Durable state: pending requests, active grants and a little metadata,
//! kept in one [redb](https://docs.rs/redb) file, `state.redb`, in the state
//! directory.
//!
//! # Why redb
//!
//! A gate must never forget a grant it has acknowledged, and must never come
//! back from a crash with half of a state change applied. redb gives that
//! without a server or a C dependency:
//!
//! - **ACID transactions.** A state change that touches several records (a
//!   request becomes a grant) commits as a whole or not at all.
//! - **Copy-on-write B-tree, two commit slots.** A commit writes new pages
//!   and then flips which of two checksummed roots is current, so a crash or
//!   SIGKILL mid-commit leaves the previous commit intact: no torn writes, and
//!   no journal for us to replay. We also enable two-phase commit, so the
//!   current root is never chosen by checksum alone.
//! - **fsync per commit** (`Durability::Immediate`): a call here returns only
//!   once its change is on disk, so the agent may acknowledge it.
//! - **One file, pure Rust, well kept:** easy to back up, to move aside when
//!   damaged, and to build for any target the agent runs on.
//!
//! A full disk aborts the transaction and leaves the file as it was
//! ([`StoreError::Full`]). A file that is damaged beyond what redb repairs on
//! its own is moved aside and replaced by an empty store, and
//! [`OpenReport::damage`] tells the agent to rebuild from the kernel maps and
//! the audit log, instead of failing at every start.
//!
//! Records are stored as JSON keyed by a `u64` id, so the store does not
//! depend on the lifecycle's types; the `meta` table holds the schema
//! version, the id counter and small values such as the audit anchor.

mod error;
pub(crate) mod fsutil;

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata as _, TableDefinition,
    WriteTransaction,
};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

pub use self::error::StoreError;

/// The store's file name inside the state directory.
pub const FILE_NAME: &str = "state.redb";

/// The layout version this build writes. Bump it, and add a migration in
/// `check_contents`, whenever a table or the meta keys change meaning.
pub const SCHEMA_VERSION: u64 = 1;

/// A new store is built under this name and renamed into place, so a
/// `state.redb` that exists was complete once and an empty or partial one is
/// damage, never an interrupted first start.
const NEW_FILE_NAME: &str = "state.redb.new";

/// A copy of the store as found, taken before redb may repair it in place.
const PRISTINE_FILE_NAME: &str = "state.redb.opening";

const REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("requests");
const GRANTS: TableDefinition<u64, &[u8]> = TableDefinition::new("grants");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_SCHEMA_VERSION: &str = "schema_version";
const META_NEXT_ID: &str = "next_id";

/// Which table a record lives in.
#[derive(Clone, Copy)]
enum Kind {
    Request,
    Grant,
}

impl Kind {
    fn table(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Kind::Request => REQUESTS,
            Kind::Grant => GRANTS,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Grant => "grant",
        }
    }
}

/// What [`Store::open`] found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// There was no store yet; an empty one was created.
    pub created: bool,
    /// The last agent did not close the store cleanly (crash, SIGKILL, power
    /// loss) and redb repaired it. Every committed change is still there.
    pub repaired: bool,
    /// The store was damaged beyond repair and replaced by an empty one.
    pub damage: Option<DamageReport>,
}

/// A damaged store file that was moved aside.
///
/// The new store is empty: the agent must rebuild pending requests and grants
/// from the kernel maps and the audit log, call [`Store::raise_next_id`] with
/// one more than the highest id it finds there so that no id is handed out
/// twice, and store a new audit anchor.
#[derive(Debug, Clone)]
pub struct DamageReport {
    /// Where the store was (and where the new, empty store now is).
    pub path: PathBuf,
    /// Where the damaged file now is, kept for a post-mortem.
    pub moved_to: PathBuf,
    /// Why the file was judged damaged.
    pub reason: String,
    /// When the damage was found.
    pub detected_at: DateTime<Utc>,
}

impl std::fmt::Display for DamageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "state store {} was damaged ({}); it was moved to {} and an empty store was started",
            self.path.display(),
            self.reason,
            self.moved_to.display()
        )
    }
}

/// Every stored request and grant, in id order.
#[derive(Debug)]
pub struct Loaded<R, G> {
    /// Pending requests.
    pub requests: Vec<(u64, R)>,
    /// Active grants.
    pub grants: Vec<(u64, G)>,
}

/// The durable state store. Share it between tasks by reference or `Arc`:
/// every method takes `&self`, and redb serializes writers.
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
    /// `None` after an I/O error: redb refuses all further work on a handle
    /// that saw one, so the handle is dropped and reopened on the next call.
    db: RwLock<Option<Database>>,
    io_failed: AtomicBool,
    report: OpenReport,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

/// Why opening an existing file failed.
enum Failure {
    /// The file cannot be used as it is: move it aside and start over.
    Damaged(String),
    /// The file may be fine but cannot be used now (locked, newer schema,
    /// permissions, full disk): refuse, and touch nothing.
    Fatal(StoreError),
}

impl Store {
    /// Opens the store in `dir`, creating the directory (mode 0700) and an
    /// empty store if needed. A damaged file is moved aside to
    /// `state.redb.damaged-<timestamp>` and reported in
    /// [`Store::open_report`]; a crash mid-commit is repaired by redb.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fsutil::create_state_dir(&dir).map_err(|source| StoreError::Dir {
            dir: dir.clone(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let mut report = OpenReport::default();
        let db = match path.symlink_metadata() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                report.created = true;
                create_fresh(&dir, &path)?
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path,
                    action: "inspect the store file".into(),
                    source,
                })
            }
            Ok(_) => open_existing(&dir, &path, &mut report)?,
        };
        Ok(Store {
            dir,
            path,
            db: RwLock::new(Some(db)),
            io_failed: AtomicBool::new(false),
            report,
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening found: a new store, a crash repair, or damage.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Runs `f` in one write transaction and commits it durably (fsync) if
    /// `f` returns `Ok`. If `f` returns `Err`, or the commit fails (a full
    /// disk, say), nothing `f` did is applied.
    ///
    /// ```no_run
    /// # use jit_agent::store::{Store, StoreError};
    /// # fn demo(store: &Store) -> Result<(), StoreError> {
    /// store.transaction(|tx| {
    ///     let id = tx.next_id()?;
    ///     tx.put_grant(id, &serde_json::json!({"user": "alice"}))?;
    ///     tx.remove_request(17)?;
    ///     Ok::<_, StoreError>(())
    /// })
    /// # }
    /// ```
    pub fn transaction<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<R, E>,
        E: From<StoreError>,
    {
        self.write("commit a batch of changes", f)?
    }

    /// Stores (or replaces) pending request `id`.
    pub fn put_request<T: Serialize + ?Sized>(
        &self,
        id: u64,
        record: &T,
    ) -> Result<(), StoreError> {
        self.write(&format!("store request {id}"), |tx| {
            tx.put_request(id, record)
        })?
    }

    /// Removes pending request `id`; returns whether it existed.
    pub fn remove_request(&self, id: u64) -> Result<bool, StoreError> {
        self.write(&format!("remove request {id}"), |tx| tx.remove_request(id))?
    }

    /// Stores (or replaces) active grant `id`.
    pub fn put_grant<T: Serialize + ?Sized>(&self, id: u64, record: &T) -> Result<(), StoreError> {
        self.write(&format!("store grant {id}"), |tx| tx.put_grant(id, record))?
    }

    /// Removes active grant `id`; returns whether it existed.
    pub fn remove_grant(&self, id: u64) -> Result<bool, StoreError> {
        self.write(&format!("remove grant {id}"), |tx| tx.remove_grant(id))?
    }

    /// Hands out a new id, durably: it is never handed out again, even after
    /// a crash, and is above every id ever stored.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.write("allocate an id", |tx| tx.next_id())?
    }

    /// Makes sure the next id handed out is at least `at_least`; returns the
    /// next id. Used after damage, with ids found in the audit log.
    pub fn raise_next_id(&self, at_least: u64) -> Result<u64, StoreError> {
        self.write("raise the id counter", |tx| tx.raise_next_id(at_least))?
    }

    /// Stores a small caller-defined value in the meta table.
    pub fn put_meta<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.write(&format!("store meta key {key:?}"), |tx| {
            tx.put_meta(key, value)
        })?
    }

    /// Reads pending request `id`.
    pub fn get_request<T: DeserializeOwned>(&self, id: u64) -> Result<Option<T>, StoreError> {
        self.read_record(Kind::Request, id)
    }

    /// Reads active grant `id`.
    pub fn get_grant<T: DeserializeOwned>(&self, id: u64) -> Result<Option<T>, StoreError> {
        self.read_record(Kind::Grant, id)
    }

    /// Reads a caller-defined meta value.
    pub fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let action = format!("read meta key {key:?}");
        self.with_db(|db| {
            let rtx = db.begin_read().map_err(|e| self.err(&action, e))?;
            let table = rtx.open_table(META).map_err(|e| self.err(&action, e))?;
            let Some(bytes) = table.get(key).map_err(|e| self.err(&action, e))? else {
                return Ok(None);
            };
            serde_json::from_slice(bytes.value())
                .map(Some)
                .map_err(|source| StoreError::Decode {
                    path: self.path.clone(),
                    kind: "meta",
                    id: 0,
                    source,
                })
        })
    }

    /// Reads every pending request and active grant, in id order, from one
    /// consistent snapshot.
    pub fn load_all<R, G>(&self) -> Result<Loaded<R, G>, StoreError>
    where
        R: DeserializeOwned,
        G: DeserializeOwned,
    {
        self.with_db(|db| {
            let action = "load all records";
            let rtx = db.begin_read().map_err(|e| self.err(action, e))?;
            let requests = self.read_table(&rtx, Kind::Request)?;
            let grants = self.read_table(&rtx, Kind::Grant)?;
            Ok(Loaded { requests, grants })
        })
    }

    /// How many requests and grants are stored.
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.with_db(|db| {
            let action = "count records";
            let rtx = db.begin_read().map_err(|e| self.err(action, e))?;
            let requests = rtx.open_table(REQUESTS).map_err(|e| self.err(action, e))?;
            let grants = rtx.open_table(GRANTS).map_err(|e| self.err(action, e))?;
            Ok((
                requests.len().map_err(|e| self.err(action, e))?,
                grants.len().map_err(|e| self.err(action, e))?,
            ))
        })
    }

    fn read_table<T: DeserializeOwned>(
        &self,
        rtx: &redb::ReadTransaction,
        kind: Kind,
    ) -> Result<Vec<(u64, T)>, StoreError> {
        let action = format!("read the {} table", kind.label());
        let table = rtx
            .open_table(kind.table())
            .map_err(|e| self.err(&action, e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.err(&action, e))? {
            let (id, bytes) = entry.map_err(|e| self.err(&action, e))?;
            let id = id.value();
            out.push((id, self.decode(kind, id, bytes.value())?));
        }
        Ok(out)
    }

    fn read_record<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: u64,
    ) -> Result<Option<T>, StoreError> {
        let action = format!("read {} {id}", kind.label());
        self.with_db(|db| {
            let rtx = db.begin_read().map_err(|e| self.err(&action, e))?;
            let table = rtx
                .open_table(kind.table())
                .map_err(|e| self.err(&action, e))?;
            match table.get(id).map_err(|e| self.err(&action, e))? {
                Some(bytes) => self.decode(kind, id, bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        kind: Kind,
        id: u64,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            kind: kind.label(),
            id,
            source,
        })
    }

    /// One write transaction around `f`. The outer `Result` is the store's
    /// (begin, commit), the inner one is `f`'s.
    fn write<R, E, F>(&self, action: &str, f: F) -> Result<Result<R, E>, StoreError>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<R, E>,
    {
        self.with_db(|db| {
            let mut txn = db
                .begin_write()
                .map_err(|e| self.err(&format!("begin a transaction to {action}"), e))?;
            txn.set_durability(Durability::Immediate);
            txn.set_two_phase_commit(true);
            let result = f(&mut Tx {
                txn: &txn,
                store: self,
            });
            match result {
                Ok(value) => {
                    txn.commit().map_err(|e| self.err(action, e))?;
                    Ok(Ok(value))
                }
                Err(e) => {
                    if let Err(abort) = txn.abort() {
                        let abort = self.err(&format!("abort the transaction to {action}"), abort);
                        tracing::warn!(error = %abort, "aborting a state store transaction failed");
                    }
                    Ok(Err(e))
                }
            }
        })
    }

    /// Runs `f` on the open database, reopening it first if an earlier I/O
    /// error closed it, and closing it if `f` hits one.
    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.ensure_open()?;
        let result = {
            let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
            match guard.as_ref() {
                Some(db) => f(db),
                None => Err(self.err("use the store", redb::Error::PreviousIo)),
            }
        };
        if self.io_failed.swap(false, Ordering::AcqRel) {
            let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
            // Dropping the handle lets the next call reopen the file, which
            // makes redb recover to the last good commit.
            *guard = None;
            tracing::warn!(path = %self.path.display(), "state store closed after an i/o error; it will be reopened");
        }
        result
    }

    fn ensure_open(&self) -> Result<(), StoreError> {
        if self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return Ok(());
        }
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            // A plain open, never a create: if the file vanished under us,
            // starting an empty store here would silently drop every grant.
            let db = match open_checked(&self.dir, &self.path) {
                Ok((db, _)) => db,
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Damaged(reason)) => {
                    return Err(StoreError::Storage {
                        path: self.path.clone(),
                        action: "reopen the store after an i/o error".into(),
                        source: Box::new(redb::Error::Corrupted(reason)),
                    })
                }
            };
            tracing::info!(path = %self.path.display(), "state store reopened");
            *guard = Some(db);
        }
        Ok(())
    }

    fn err(&self, action: &str, error: impl Into<redb::Error>) -> StoreError {
        let error = classify(&self.dir, &self.path, action, error.into());
        let closes_handle = match &error {
            StoreError::Full { .. } | StoreError::Io { .. } => true,
            StoreError::Storage { source, .. } => matches!(**source, redb::Error::PreviousIo),
            _ => false,
        };
        if closes_handle {
            self.io_failed.store(true, Ordering::Release);
        }
        error
    }
}

/// A write transaction in progress; see [`Store::transaction`].
pub struct Tx<'a> {
    txn: &'a WriteTransaction,
    store: &'a Store,
}

impl Tx<'_> {
    /// Stores (or replaces) pending request `id`.
    pub fn put_request<T: Serialize + ?Sized>(
        &mut self,
        id: u64,
        record: &T,
    ) -> Result<(), StoreError> {
        self.put(Kind::Request, id, record)
    }

    /// Removes pending request `id`; returns whether it existed.
    pub fn remove_request(&mut self, id: u64) -> Result<bool, StoreError> {
        self.remove(Kind::Request, id)
    }

    /// Stores (or replaces) active grant `id`.
    pub fn put_grant<T: Serialize + ?Sized>(
        &mut self,
        id: u64,
        record: &T,
    ) -> Result<(), StoreError> {
        self.put(Kind::Grant, id, record)
    }

    /// Removes active grant `id`; returns whether it existed.
    pub fn remove_grant(&mut self, id: u64) -> Result<bool, StoreError> {
        self.remove(Kind::Grant, id)
    }

    /// Reads pending request `id`, including changes made in this transaction.
    pub fn get_request<T: DeserializeOwned>(&self, id: u64) -> Result<Option<T>, StoreError> {
        self.get(Kind::Request, id)
    }

    /// Reads active grant `id`, including changes made in this transaction.
    pub fn get_grant<T: DeserializeOwned>(&self, id: u64) -> Result<Option<T>, StoreError> {
        self.get(Kind::Grant, id)
    }

    /// Hands out a new id; it is consumed only if the transaction commits.
    pub fn next_id(&mut self) -> Result<u64, StoreError> {
        let id = self.read_next_id()?;
        let next = id.checked_add(1).ok_or_else(|| StoreError::IdsExhausted {
            path: self.store.path.clone(),
        })?;
        self.write_next_id(next)?;
        Ok(id)
    }

    /// Makes sure the next id is at least `at_least`; returns the next id.
    pub fn raise_next_id(&mut self, at_least: u64) -> Result<u64, StoreError> {
        let current = self.read_next_id()?;
        if at_least > current {
            self.write_next_id(at_least)?;
            return Ok(at_least);
        }
        Ok(current)
    }

    /// Stores a small caller-defined value in the meta table.
    pub fn put_meta<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        if key == META_SCHEMA_VERSION || key == META_NEXT_ID {
            return Err(StoreError::ReservedMetaKey { key: key.into() });
        }
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Encode {
            kind: "meta",
            id: 0,
            source,
        })?;
        let action = format!("store meta key {key:?}");
        let mut meta = self
            .txn
            .open_table(META)
            .map_err(|e| self.store.err(&action, e))?;
        meta.insert(key, bytes.as_slice())
            .map_err(|e| self.store.err(&action, e))?;
        Ok(())
    }

    fn put<T: Serialize + ?Sized>(
        &mut self,
        kind: Kind,
        id: u64,
        record: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            kind: kind.label(),
            id,
            source,
        })?;
        let action = format!("store {} {id}", kind.label());
        {
            let mut table = self
                .txn
                .open_table(kind.table())
                .map_err(|e| self.store.err(&action, e))?;
            table
                .insert(id, bytes.as_slice())
                .map_err(|e| self.store.err(&action, e))?;
        }
        // Ids chosen by the caller also count as handed out, so the counter
        // can never return one of them later.
        let at_least = id.checked_add(1).ok_or_else(|| StoreError::IdsExhausted {
            path: self.store.path.clone(),
        })?;
        self.raise_next_id(at_least)?;
        Ok(())
    }

    fn remove(&mut self, kind: Kind, id: u64) -> Result<bool, StoreError> {
        let action = format!("remove {} {id}", kind.label());
        let mut table = self
            .txn
            .open_table(kind.table())
            .map_err(|e| self.store.err(&action, e))?;
        let removed = table.remove(id).map_err(|e| self.store.err(&action, e))?;
        Ok(removed.is_some())
    }

    fn get<T: DeserializeOwned>(&self, kind: Kind, id: u64) -> Result<Option<T>, StoreError> {
        let action = format!("read {} {id}", kind.label());
        let table = self
            .txn
            .open_table(kind.table())
            .map_err(|e| self.store.err(&action, e))?;
        let found = table.get(id).map_err(|e| self.store.err(&action, e))?;
        match found {
            Some(bytes) => self.store.decode(kind, id, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    fn read_next_id(&self) -> Result<u64, StoreError> {
        let action = "read the id counter";
        let meta = self
            .txn
            .open_table(META)
            .map_err(|e| self.store.err(action, e))?;
        let value = meta
            .get(META_NEXT_ID)
            .map_err(|e| self.store.err(action, e))?;
        value
            .and_then(|v| decode_u64(v.value()))
            .ok_or_else(|| StoreError::Storage {
                path: self.store.path.clone(),
                action: action.into(),
                source: Box::new(redb::Error::Corrupted(
                    "the id counter is missing or malformed".into(),
                )),
            })
    }

    fn write_next_id(&mut self, next: u64) -> Result<(), StoreError> {
        let action = "advance the id counter";
        let mut meta = self
            .txn
            .open_table(META)
            .map_err(|e| self.store.err(action, e))?;
        meta.insert(META_NEXT_ID, next.to_le_bytes().as_slice())
            .map_err(|e| self.store.err(action, e))?;
        Ok(())
    }
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn classify(dir: &Path, path: &Path, action: &str, error: redb::Error) -> StoreError {
    match error {
        redb::Error::Io(source) if fsutil::is_disk_full(&source) => StoreError::Full {
            dir: dir.to_path_buf(),
            action: action.into(),
            source,
        },
        redb::Error::Io(source) => StoreError::Io {
            path: path.to_path_buf(),
            action: action.into(),
            source,
        },
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        source => StoreError::Storage {
            path: path.to_path_buf(),
            action: action.into(),
            source: Box::new(source),
        },
    }
}

/// Opens an existing store file, repairing it (redb) or replacing it when
/// it is damaged; records which in `report`.
fn open_existing(dir: &Path, path: &Path, report: &mut OpenReport) -> Result<Database, StoreError> {
    // redb's repair writes to the file, so keep its bytes as found in case
    // it turns out to be damaged after all.
    let pristine = dir.join(PRISTINE_FILE_NAME);
    let copied = match std::fs::copy(path, &pristine) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "could not copy the state store before opening it; if it is damaged, \
                 the file kept will be the one redb tried to repair"
            );
            let _ = std::fs::remove_file(&pristine);
            false
        }
    };
    let outcome = open_checked(dir, path);
    if !matches!(outcome, Err(Failure::Damaged(_))) {
        let _ = std::fs::remove_file(&pristine);
    }
    match outcome {
        Ok((db, repaired)) => {
            if repaired {
                tracing::warn!(
                    path = %path.display(),
                    "state store was not closed cleanly; redb repaired it and kept every committed change"
                );
            }
            report.repaired = repaired;
            Ok(db)
        }
        Err(Failure::Fatal(e)) => Err(e),
        Err(Failure::Damaged(reason)) => {
            let (from, reason) = if copied {
                (pristine, reason)
            } else {
                let note =
                    format!("{reason}; redb may have changed the file while trying to repair it");
                (path.to_path_buf(), note)
            };
            let damage = move_aside(dir, &from, path, reason)?;
            tracing::error!(
                path = %damage.path.display(),
                moved_to = %damage.moved_to.display(),
                reason = %damage.reason,
                "STATE STORE DAMAGED: moved it aside and started an empty store; \
                 state will be rebuilt from the kernel maps and the audit log"
            );
            report.damage = Some(damage);
            // Replaces the damaged file, which is kept elsewhere.
            create_fresh(dir, path)
        }
    }
}

/// Decides whether a redb error while opening means "this file is damaged"
/// or "this file cannot be used right now". Only the first moves the file
/// aside: a permission problem or a full disk must not cost the operator
/// their state.
fn judge(dir: &Path, path: &Path, action: &str, error: redb::Error) -> Failure {
    match error {
        redb::Error::Corrupted(reason) => Failure::Damaged(format!("redb: {reason}")),
        // Short reads (a truncated file) carry no OS error code; real
        // environment problems (EACCES, EIO, ENOSPC) do.
        redb::Error::Io(e) if e.raw_os_error().is_none() => {
            Failure::Damaged(format!("{action}: {e}"))
        }
        redb::Error::UpgradeRequired(version) => Failure::Damaged(format!(
            "the file claims redb format {version}, which jitgate never wrote"
        )),
        redb::Error::TableTypeMismatch { table, .. }
        | redb::Error::TableIsMultimap(table)
        | redb::Error::TableDoesNotExist(table) => Failure::Damaged(format!(
            "not a jitgate state store: table {table:?} is missing or of the wrong type"
        )),
        other => Failure::Fatal(classify(dir, path, action, other)),
    }
}

fn damaged(reason: impl Into<String>) -> Failure {
    Failure::Damaged(reason.into())
}

/// Opens an existing store and reads all of it, so that damage is found
/// here, at start, rather than by whichever request first touches a bad page.
/// Returns whether redb had to repair the file.
fn open_checked(dir: &Path, path: &Path) -> Result<(Database, bool), Failure> {
    let len = path
        .metadata()
        .map_err(|source| {
            Failure::Fatal(StoreError::Io {
                path: path.to_path_buf(),
                action: "inspect the store file".into(),
                source,
            })
        })?
        .len();
    if len == 0 {
        return Err(damaged("the file is empty"));
    }
    let repaired = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&repaired);
    // redb may panic on some malformed pages rather than return an error; a
    // panic here must become "damaged", not a crash loop at every start.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut builder = builder();
        builder.set_repair_callback(move |_| flag.store(true, Ordering::Relaxed));
        let mut db = builder
            .open(path)
            .map_err(|e| judge(dir, path, "open the store", e.into()))?;
        let clean = db
            .check_integrity()
            .map_err(|e| judge(dir, path, "check the store's integrity", e.into()))?;
        if !clean {
            repaired.store(true, Ordering::Relaxed);
        }
        check_contents(dir, path, &db)?;
        Ok(db)
    }));
    match outcome {
        Ok(Ok(db)) => Ok((db, repaired.load(Ordering::Relaxed))),
        Ok(Err(failure)) => Err(failure),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(damaged(format!(
                "redb panicked while reading it: {message}"
            )))
        }
    }
}

/// Checks the schema version and that every record is readable JSON, and
/// restores the id counter's invariant if a record sits above it.
fn check_contents(dir: &Path, path: &Path, db: &Database) -> Result<(), Failure> {
    let read = |action: &'static str| move |e: redb::Error| judge(dir, path, action, e);
    let rtx = db
        .begin_read()
        .map_err(|e| read("begin reading the store")(e.into()))?;
    let meta = rtx
        .open_table(META)
        .map_err(|e| read("open the meta table")(e.into()))?;
    let version = meta
        .get(META_SCHEMA_VERSION)
        .map_err(|e| read("read the schema version")(e.into()))?
        .ok_or_else(|| damaged("no schema version in the meta table"))?;
    let version = decode_u64(version.value()).ok_or_else(|| damaged("malformed schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(Failure::Fatal(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        }));
    }
    // Version 1 is the first layout; migrations from older versions go here.
    if version == 0 {
        return Err(damaged("schema version 0 was never written"));
    }
    let next_id = meta
        .get(META_NEXT_ID)
        .map_err(|e| read("read the id counter")(e.into()))?
        .and_then(|v| decode_u64(v.value()))
        .ok_or_else(|| damaged("the id counter is missing or malformed"))?;
    for entry in meta
        .iter()
        .map_err(|e| read("read the meta table")(e.into()))?
    {
        let (key, value) = entry.map_err(|e| read("read the meta table")(e.into()))?;
        let key = key.value();
        if key != META_SCHEMA_VERSION
            && key != META_NEXT_ID
            && serde_json::from_slice::<IgnoredAny>(value.value()).is_err()
        {
            return Err(damaged(format!("meta key {key:?} is not valid JSON")));
        }
    }
    let mut max_id = None;
    for kind in [Kind::Request, Kind::Grant] {
        let table = rtx
            .open_table(kind.table())
            .map_err(|e| read("open a record table")(e.into()))?;
        for entry in table
            .iter()
            .map_err(|e| read("read a record table")(e.into()))?
        {
            let (id, value) = entry.map_err(|e| read("read a record table")(e.into()))?;
            let id = id.value();
            if serde_json::from_slice::<IgnoredAny>(value.value()).is_err() {
                return Err(damaged(format!("{} {id} is not valid JSON", kind.label())));
            }
            max_id = max_id.max(Some(id));
        }
    }
    drop((meta, rtx));
    if let Some(max_id) = max_id.filter(|&m| m >= next_id) {
        // Only possible if the file was edited; never hand out a stored id.
        tracing::warn!(
            path = %path.display(),
            next_id,
            max_id,
            "state store id counter was below a stored id; raising it"
        );
        raise_counter(dir, path, db, max_id.saturating_add(1)).map_err(Failure::Fatal)?;
    }
    Ok(())
}

fn raise_counter(dir: &Path, path: &Path, db: &Database, next: u64) -> Result<(), StoreError> {
    let err = |e: redb::Error| classify(dir, path, "raise the id counter", e);
    let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
    txn.set_two_phase_commit(true);
    {
        let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        meta.insert(META_NEXT_ID, next.to_le_bytes().as_slice())
            .map_err(|e| err(e.into()))?;
    }
    txn.commit().map_err(|e| err(e.into()))
}

/// Builds an empty store under a temporary name and renames it into place.
fn create_fresh(dir: &Path, path: &Path) -> Result<Database, StoreError> {
    let tmp = dir.join(NEW_FILE_NAME);
    let io_err = |action: &str, source: io::Error| {
        if fsutil::is_disk_full(&source) {
            StoreError::Full {
                dir: dir.to_path_buf(),
                action: action.into(),
                source,
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                action: action.into(),
                source,
            }
        }
    };
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove a half-created store", e)),
    }
    let err = |e: redb::Error| classify(dir, path, "create the state store", e);
    let built = (|| -> Result<(), StoreError> {
        let db = Database::builder()
            .create(&tmp)
            .map_err(|e| err(e.into()))?;
        let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
        txn.set_durability(Durability::Immediate);
        txn.set_two_phase_commit(true);
        {
            txn.open_table(REQUESTS).map_err(|e| err(e.into()))?;
            txn.open_table(GRANTS).map_err(|e| err(e.into()))?;
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())
                .map_err(|e| err(e.into()))?;
            meta.insert(META_NEXT_ID, 1u64.to_le_bytes().as_slice())
                .map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| io_err("move the new state store into place", e))?;
    fsutil::sync_dir(dir).map_err(|e| io_err("sync the state directory", e))?;
    builder()
        .open(path)
        .map_err(|e| classify(dir, path, "open the new state store", e.into()))
}

/// redb's page cache defaults to 1 GiB, which a store of a million grants
/// would fill; the hot pages of appends and lookups by id fit in far less,
/// and the OS page cache holds the rest of the file.
const CACHE_BYTES: usize = 32 << 20;

fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder
}

/// Renames `from` (the damaged store, or its pristine copy) to
/// `state.redb.damaged-<timestamp>` next to `path`.
fn move_aside(
    dir: &Path,
    from: &Path,
    path: &Path,
    reason: String,
) -> Result<DamageReport, StoreError> {
    let detected_at = Utc::now();
    let to = fsutil::aside_path(path, "damaged", detected_at);
    let moved = std::fs::rename(from, &to).and_then(|()| fsutil::sync_dir(dir));
    if let Err(source) = moved {
        return Err(StoreError::MoveAside {
            path: path.to_path_buf(),
            to,
            reason,
            source,
        });
    }
    Ok(DamageReport {
        path: path.to_path_buf(),
        moved_to: to,
        reason,
        detected_at,
    })
}

#[cfg(test)]
mod tests;

//! A full state directory (a small tmpfs) makes writes fail with a clear
//! error and changes nothing; once space is back, writes work again without a
//! restart. Needs root for the mount; skipped with a message otherwise.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use jit_agent::audit::{self, Anchor, AnchorSink as _, AuditError, AuditLog};
use jit_agent::store::{Loaded, Store, StoreError};
use serde_json::{json, Value};

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop even
/// when the test panics.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs to fill needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Some(Tmpfs { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = self.dir.take().unwrap();
        // Lazy, so that a file still open in a panicking test cannot leave
        // the mount behind.
        let status = Command::new("umount").arg("-l").arg(dir.path()).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not unmount {}: {status:?}", dir.path().display());
        }
    }
}

/// Fills the file system holding `dir` to the last byte; returns the filler.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Then the last partial chunk's worth, byte by byte.
    while file.write_all(&[0]).is_ok() {}
    path
}

fn padded(id: u64) -> Value {
    json!({"id": id, "pad": "p".repeat(16 * 1024)})
}

#[test]
fn a_full_state_directory_fails_writes_cleanly_and_recovers() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let dir = fs.path().join("state");
    let store = Store::open(&dir).unwrap();
    for id in 1..=5 {
        store.put_grant(id, &padded(id)).unwrap();
    }
    let filler = fill(fs.path());

    let mut acked = (1..=5).collect::<Vec<u64>>();
    let mut failure = None;
    for id in 6..=2000 {
        match store.put_grant(id, &padded(id)) {
            Ok(()) => acked.push(id),
            Err(e) => {
                failure = Some((id, e));
                break;
            }
        }
    }
    let (failed_id, err) = failure.expect("the store never noticed the full disk");
    eprintln!("full after {} grants: {err}", acked.len());
    assert!(err.is_disk_full(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "state directory {} is full: could not store grant {failed_id}, nothing was changed",
            dir.display()
        )
    );
    // A batch fails as a whole too.
    let batch: Result<(), StoreError> = store.transaction(|tx| {
        tx.remove_grant(1)?;
        tx.put_grant(failed_id, &padded(failed_id))?;
        Ok(())
    });
    if let Err(e) = &batch {
        assert!(e.is_disk_full(), "{e:?}");
    }

    // Reads still work while the disk is full: the store reopens itself
    // after the i/o error, without a restart.
    let while_full: Loaded<Value, Value> = store.load_all().unwrap();

    std::fs::remove_file(&filler).unwrap();
    let loaded: Loaded<Value, Value> = store.load_all().unwrap();
    assert_eq!(loaded.grants.len(), while_full.grants.len());
    let mut ids: Vec<u64> = loaded.grants.iter().map(|(id, _)| *id).collect();
    if batch.is_ok() {
        // The batch found room after all (redb reused a freed page): then
        // all of it applied.
        assert_eq!(ids.first(), Some(&2));
        assert_eq!(ids.pop(), Some(failed_id));
        acked.remove(0);
    }
    assert_eq!(
        ids, acked,
        "acknowledged grants lost or a failed one applied"
    );
    store
        .put_grant(failed_id + 1, &padded(failed_id + 1))
        .unwrap();
    drop(store);

    let store = Store::open(&dir).unwrap();
    assert!(store.open_report().damage.is_none());
    let loaded: Loaded<Value, Value> = store.load_all().unwrap();
    assert_eq!(loaded.grants.last().unwrap().0, failed_id + 1);
}

#[test]
fn a_store_cannot_be_created_on_a_full_disk_and_says_so() {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let filler = fill(fs.path());
    let dir = fs.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let err = Store::open(&dir).unwrap_err();
    assert!(err.is_disk_full(), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("state directory {} is full", dir.display())),
        "{err}"
    );
    // No half-created store is left to be mistaken for damage later.
    assert!(!dir.join("state.redb").exists());
    std::fs::remove_file(filler).unwrap();
    Store::open(&dir).unwrap();
}

#[test]
fn a_full_disk_never_leaves_a_partial_audit_record() {
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    let dir = fs.path().join("state");
    let log = AuditLog::open(&dir).unwrap();
    log.append(&json!({"type": "started"})).unwrap();
    let filler = fill(fs.path());
    let mut appended = 1;
    let err = loop {
        match log.append(&json!({"type": "pad", "pad": "q".repeat(3000)})) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(
            appended < 10_000,
            "the audit log never noticed the full disk"
        );
    };
    assert!(matches!(err, AuditError::Full { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "state directory {} is full: could not append audit record {}",
            dir.display(),
            appended + 1
        )),
        "{err}"
    );
    let report = audit::verify(log.path()).unwrap();
    assert_eq!(report.records, appended);

    std::fs::remove_file(filler).unwrap();
    let record = log.append(&json!({"type": "space_back"})).unwrap();
    assert_eq!(record.seq, appended + 1);
    assert_eq!(audit::verify(log.path()).unwrap().records, appended + 1);
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn a_torn_record_found_on_a_full_disk_is_left_in_place_until_there_is_room() {
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    let dir = fs.path().join("state");
    {
        let log = AuditLog::open(&dir).unwrap();
        log.append(&json!({"type": "started"})).unwrap();
    }
    let path = dir.join(audit::FILE_NAME);
    let fragment = "{\"seq\":2,\"ti";
    let intact = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{intact}{fragment}")).unwrap();
    let filler = fill(fs.path());

    // Keeping the fragment needs room; without it nothing is cut off.
    let err = AuditLog::open(&dir).unwrap_err();
    assert!(err.is_disk_full(), "{err:?}");
    assert!(
        err.to_string()
            .contains("could not keep the torn audit record"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{intact}{fragment}")
    );

    std::fs::remove_file(filler).unwrap();
    let log = AuditLog::open(&dir).unwrap();
    assert_eq!(
        log.open_report().torn.as_ref().unwrap().recorded_as,
        Some(2)
    );
    assert_eq!(audit::verify(log.path()).unwrap().records, 2);
}

#[test]
fn an_event_about_the_log_that_finds_no_room_is_written_first_later() {
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    let dir = fs.path().join("state");
    let path = dir.join(audit::FILE_NAME);
    {
        let log = AuditLog::open(&dir).unwrap();
        for n in 0..10 {
            log.append(&json!({"n": n})).unwrap();
        }
        // End the log exactly on a page, so that the next append needs a
        // page the full disk does not have.
        let before = file_len(&path);
        log.append(&json!({"pad": ""})).unwrap();
        let line = file_len(&path) - before;
        let pad = (4096 - (file_len(&path) + line) % 4096) % 4096;
        log.append(&json!({"pad": "x".repeat(pad as usize)}))
            .unwrap();
        assert_eq!(file_len(&path) % 4096, 0);
    }
    let store = Arc::new(Store::open(&dir).unwrap());
    let stale = Anchor {
        seq: 500,
        hash: "0".repeat(64),
    };
    store.put_meta(audit::ANCHOR_META_KEY, &stale).unwrap();
    let filler = fill(fs.path());

    // The agent starts anyway; the mismatch is reported and kept pending.
    let log = AuditLog::open_with_anchor(&dir, Arc::clone(&store)).unwrap();
    assert_eq!(log.open_report().anchor_mismatch, Some(stale));
    assert_eq!(audit::verify(&path).unwrap().records, 12);
    assert!(log
        .append(&json!({"type": "still_full"}))
        .unwrap_err()
        .is_disk_full());
    assert_eq!(audit::verify(&path).unwrap().records, 12);

    std::fs::remove_file(filler).unwrap();
    let record = log.append(&json!({"type": "space_back"})).unwrap();
    assert_eq!(record.seq, 14);
    let tail = log.tail(2).unwrap();
    assert_eq!(tail[0].event["type"], audit::ANCHOR_MISMATCH_EVENT);
    assert_eq!(tail[0].event["anchor_seq"], 500);
    assert_eq!(tail[1].event["type"], "space_back");
    audit::verify_with_anchor(&path, store.load_anchor().unwrap().as_ref()).unwrap();
}

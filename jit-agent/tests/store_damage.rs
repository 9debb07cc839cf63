//! A truncated or garbled store file must never crash-loop the agent: it is
//! either still readable, or moved aside and replaced by an empty store.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use jit_agent::store::{Loaded, Store, FILE_NAME};
use serde_json::{json, Value};

/// A store with enough records to span many pages.
fn populated() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .transaction(|tx| {
                for id in 1..=300 {
                    tx.put_grant(
                        id,
                        &json!({"id": id, "user": format!("user{id}"), "pad": "x".repeat(200)}),
                    )?;
                    tx.put_request(1000 + id, &json!({"id": 1000 + id}))?;
                }
                Ok::<_, jit_agent::store::StoreError>(())
            })
            .unwrap();
    }
    let bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
    (dir, bytes)
}

/// Opens a damaged copy and checks the outcome is one of the two allowed.
/// Returns whether the file was judged damaged.
fn open_damaged(dir: &Path, damaged: &[u8], what: &str) -> bool {
    std::fs::write(dir.join(FILE_NAME), damaged).unwrap();
    let store = Store::open(dir).unwrap_or_else(|e| panic!("{what}: open failed: {e:?}"));
    let report = store.open_report().clone();
    let loaded: Loaded<Value, Value> = store
        .load_all()
        .unwrap_or_else(|e| panic!("{what}: opened but unreadable: {e:?}"));
    match &report.damage {
        Some(damage) => {
            assert_eq!(damage.path, dir.join(FILE_NAME));
            eprintln!("{what}: damaged ({})", damage.reason);
            assert!(
                std::fs::read(&damage.moved_to).unwrap() == damaged,
                "{what}: the damaged file was not kept as it was"
            );
            assert!(loaded.grants.is_empty() && loaded.requests.is_empty());
            // The replacement works.
            store.put_grant(1, &json!({"id": 1})).unwrap();
        }
        None => {
            for (id, grant) in &loaded.grants {
                assert_eq!(grant["id"], *id, "{what}: a record changed silently");
            }
            eprintln!(
                "{what}: still readable, {} grants (repaired: {})",
                loaded.grants.len(),
                report.repaired
            );
        }
    }
    report.damage.is_some()
}

#[test]
fn a_truncated_store_is_survived() {
    let (_src, bytes) = populated();
    let len = bytes.len();
    let mut damaged = 0;
    for cut in [
        1,
        9,
        512,
        4096,
        4096 * 3,
        len / 4,
        len / 2,
        len - 4096,
        len - 1,
    ] {
        let dir = tempfile::tempdir().unwrap();
        damaged += usize::from(open_damaged(
            dir.path(),
            &bytes[..cut],
            &format!("cut to {cut} of {len} bytes"),
        ));
    }
    assert!(damaged > 0, "no truncation was noticed");
}

#[test]
fn a_garbled_store_is_survived() {
    let (_src, bytes) = populated();
    let len = bytes.len();
    let mut damaged = 0;
    let mut offsets: Vec<usize> = vec![0, 8, 64, 300, 4096, 4096 + 100, 8192, 3 * 4096 + 17];
    offsets.extend((1..16).map(|i| i * len / 16));
    for offset in offsets {
        for pattern in [0x00u8, 0x5a] {
            let mut garbled = bytes.clone();
            let end = (offset + 64).min(len);
            garbled[offset..end].fill(pattern);
            if garbled == bytes {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            damaged += usize::from(open_damaged(
                dir.path(),
                &garbled,
                &format!("64 bytes of {pattern:#04x} at {offset}"),
            ));
        }
    }
    assert!(damaged > 0, "no garbling was noticed");
}

#[test]
fn damage_found_in_place_is_moved_aside_once() {
    let (dir, bytes) = populated();
    let path = dir.path().join(FILE_NAME);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xff; 512], 0).unwrap();
    drop(file);
    let first = Store::open(dir.path()).unwrap();
    assert!(first.open_report().damage.is_some());
    drop(first);
    // The next start finds the fresh store, not the damage again.
    let second = Store::open(dir.path()).unwrap();
    assert!(second.open_report().damage.is_none());
    assert_ne!(std::fs::read(&path).unwrap(), bytes);
}

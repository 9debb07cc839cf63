use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Req {
    user: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Grant {
    user: String,
    port: u16,
}

fn req(user: &str) -> Req {
    Req { user: user.into() }
}

fn grant(user: &str, port: u16) -> Grant {
    Grant {
        user: user.into(),
        port,
    }
}

#[test]
fn store_is_send_and_sync_and_errors_fit_anyhow() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<StoreError>();
}

#[test]
fn records_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.open_report().created);
        store.put_request(3, &req("carol")).unwrap();
        store.put_request(1, &req("alice")).unwrap();
        store.put_grant(2, &grant("bob", 22)).unwrap();
        assert_eq!(store.get_request::<Req>(1).unwrap(), Some(req("alice")));
        assert_eq!(store.get_grant::<Grant>(9).unwrap(), None);
        assert!(store.remove_request(3).unwrap());
        assert!(!store.remove_request(3).unwrap());
    }
    let store = Store::open(dir.path()).unwrap();
    let report = store.open_report();
    assert!(!report.created && !report.repaired && report.damage.is_none());
    let loaded: Loaded<Req, Grant> = store.load_all().unwrap();
    assert_eq!(loaded.requests, vec![(1, req("alice"))]);
    assert_eq!(loaded.grants, vec![(2, grant("bob", 22))]);
    assert_eq!(store.counts().unwrap(), (1, 1));
}

#[test]
fn ids_are_never_reused_across_reopens_or_caller_chosen_ids() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_id().unwrap(), 1);
        assert_eq!(store.next_id().unwrap(), 2);
        store.put_grant(10, &grant("a", 1)).unwrap();
        assert_eq!(store.next_id().unwrap(), 11);
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.next_id().unwrap(), 12);
    assert_eq!(store.raise_next_id(5).unwrap(), 13);
    assert_eq!(store.raise_next_id(100).unwrap(), 100);
    assert_eq!(store.next_id().unwrap(), 100);
}

#[test]
fn a_failed_transaction_changes_nothing_not_even_the_id_counter() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put_request(1, &req("alice")).unwrap();
    let outcome: Result<(), StoreError> = store.transaction(|tx| {
        let id = tx.next_id()?;
        tx.put_grant(id, &grant("alice", 443))?;
        assert!(tx.remove_request(1)?);
        // Visible inside the transaction...
        assert!(tx.get_request::<Req>(1)?.is_none());
        Err(StoreError::IdsExhausted {
            path: "simulated".into(),
        })
    });
    assert!(outcome.is_err());
    // ...but not after it was abandoned.
    let loaded: Loaded<Req, Grant> = store.load_all().unwrap();
    assert_eq!(loaded.requests, vec![(1, req("alice"))]);
    assert!(loaded.grants.is_empty());
    assert_eq!(store.next_id().unwrap(), 2);
}

#[test]
fn a_transaction_applies_every_change_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put_request(1, &req("alice")).unwrap();
    let id = store
        .transaction(|tx| {
            let id = tx.next_id()?;
            tx.put_grant(id, &grant("alice", 443))?;
            tx.remove_request(1)?;
            Ok::<_, StoreError>(id)
        })
        .unwrap();
    assert_eq!(id, 2);
    let loaded: Loaded<Req, Grant> = store.load_all().unwrap();
    assert!(loaded.requests.is_empty());
    assert_eq!(loaded.grants, vec![(2, grant("alice", 443))]);
}

#[test]
fn caller_errors_pass_through_transactions() {
    #[derive(Debug)]
    enum LifecycleError {
        NotPending,
        Store(#[expect(dead_code, reason = "the caller only needs the conversion")] StoreError),
    }
    impl From<StoreError> for LifecycleError {
        fn from(e: StoreError) -> Self {
            LifecycleError::Store(e)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let outcome = store.transaction(|tx| {
        if tx.get_request::<Req>(7)?.is_none() {
            return Err(LifecycleError::NotPending);
        }
        Ok(())
    });
    assert!(matches!(outcome, Err(LifecycleError::NotPending)));
}

#[test]
fn a_second_open_is_refused_while_the_first_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already open by another process"));
    // The refused open must not have touched the held file.
    assert!(!dir.path().join("state.redb.new").exists());
}

#[test]
fn meta_values_round_trip_and_reserved_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_meta("audit_anchor", &serde_json::json!({"seq": 4}))
        .unwrap();
    let anchor: serde_json::Value = store.get_meta("audit_anchor").unwrap().unwrap();
    assert_eq!(anchor["seq"], 4);
    assert_eq!(store.get_meta::<u64>("absent").unwrap(), None);
    let err = store.put_meta("next_id", &1u64).unwrap_err();
    assert_eq!(
        err.to_string(),
        "meta key \"next_id\" is reserved for the state store itself"
    );
}

#[test]
fn a_record_of_another_type_is_a_clear_decode_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put_grant(5, &req("alice")).unwrap();
    let err = store.load_all::<Req, Grant>().unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("grant 5 in state store ")
            && text.ends_with("does not match this jit-agent's record type"),
        "{text}"
    );
}

/// Writes a store whose schema version is `version`, as a future agent would.
fn write_schema_version(dir: &Path, version: u64) {
    let db = Database::create(dir.join(FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        txn.open_table(REQUESTS).unwrap();
        txn.open_table(GRANTS).unwrap();
        let mut meta = txn.open_table(META).unwrap();
        meta.insert(META_SCHEMA_VERSION, version.to_le_bytes().as_slice())
            .unwrap();
        meta.insert(META_NEXT_ID, 1u64.to_le_bytes().as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    write_schema_version(dir.path(), SCHEMA_VERSION + 1);
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("has schema version 2, but this jit-agent only understands versions up to 1"));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![FILE_NAME.to_string()]);
}

fn damaged_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".damaged-"))
        .collect()
}

#[test]
fn an_empty_store_file_is_damage_not_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), b"").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let damage = store.open_report().damage.clone().unwrap();
    assert_eq!(damage.reason, "the file is empty");
    assert_eq!(damaged_files(dir.path()), vec![damage.moved_to.clone()]);
    assert!(damage.to_string().contains("was moved to"));
    // The replacement is a working store.
    store.put_grant(1, &grant("a", 1)).unwrap();
}

#[test]
fn a_file_that_is_not_a_store_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 10_000]).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let damage = store.open_report().damage.clone().unwrap();
    assert_eq!(std::fs::read(&damage.moved_to).unwrap(), vec![0x5a; 10_000]);
    assert_eq!(store.next_id().unwrap(), 1);
}

#[test]
fn a_redb_file_without_our_tables_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("other"))
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let damage = store.open_report().damage.clone().unwrap();
    assert!(
        damage.reason.contains("not a jitgate state store"),
        "{}",
        damage.reason
    );
}

#[test]
fn a_leftover_half_created_store_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(NEW_FILE_NAME), b"partial").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.open_report().created);
    assert!(!dir.path().join(NEW_FILE_NAME).exists());
}

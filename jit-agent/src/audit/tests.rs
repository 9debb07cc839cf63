use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

fn event(n: u64) -> serde_json::Value {
    serde_json::json!({"type": "grant_activated", "grant": n, "user": "alice"})
}

#[test]
fn appends_chain_from_genesis_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    assert_eq!(log.head(), None);
    let first = log.append(&event(1)).unwrap();
    let second = log.append(&event(2)).unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(first.prev, genesis_prev());
    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(second.prev, chain::line_digest(lines[0].as_bytes()));
    assert_eq!(
        log.head(),
        Some(Anchor {
            seq: 2,
            hash: second.hash.clone()
        })
    );
    let report = verify(log.path()).unwrap();
    assert_eq!(report.records, 2);
    assert_eq!(report.last.unwrap().hash, second.hash);
    assert!(!report.anchor_checked);
}

#[test]
fn records_read_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let written: Vec<AuditRecord> = (1..=5).map(|n| log.append(&event(n)).unwrap()).collect();
    let read: Vec<AuditRecord> = log.records().unwrap().map(Result::unwrap).collect();
    assert_eq!(read, written);
    assert_eq!(log.tail(2).unwrap(), written[3..].to_vec());
    assert_eq!(log.tail(99).unwrap(), written);
    assert!(log.tail(0).unwrap().is_empty());
}

#[test]
fn the_chain_continues_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path()).unwrap();
        log.append(&event(1)).unwrap();
    }
    let log = AuditLog::open(dir.path()).unwrap();
    assert_eq!(log.head().unwrap().seq, 1);
    assert_eq!(log.append(&event(2)).unwrap().seq, 2);
    assert_eq!(verify(log.path()).unwrap().records, 2);
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = AuditLog::open(dir.path()).unwrap();
    let err = AuditLog::open(dir.path()).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err:?}");
}

#[test]
fn oversized_events_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let big = "x".repeat(MAX_EVENT_BYTES);
    let err = log.append(&big).unwrap_err();
    assert!(matches!(err, AuditError::TooLarge { .. }), "{err:?}");
    assert_eq!(std::fs::metadata(log.path()).unwrap().len(), 0);
}

#[test]
fn tail_reads_across_chunk_boundaries_and_skips_a_partial_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let filler = "y".repeat(10_000);
    let written: Vec<AuditRecord> = (1..=20)
        .map(|n| {
            log.append(&serde_json::json!({"n": n, "pad": filler}))
                .unwrap()
        })
        .collect();
    drop(log);
    let path = dir.path().join(FILE_NAME);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"seq\":21,\"ti").unwrap();
    assert_eq!(tail(&path, 9).unwrap(), written[11..].to_vec());
    assert_eq!(records(&path).unwrap().count(), 20);
}

#[test]
fn subscribers_see_each_record_once_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&seen);
    log.subscribe(move |record| {
        counter.store(record.seq, Ordering::SeqCst);
    });
    log.append(&event(1)).unwrap();
    log.append(&event(2)).unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[derive(Default)]
struct MemoryAnchor(Mutex<Option<Anchor>>);

impl AnchorSink for MemoryAnchor {
    fn load_anchor(&self) -> Result<Option<Anchor>, StoreError> {
        Ok(self.0.lock().unwrap().clone())
    }

    fn store_anchor(&self, anchor: &Anchor) -> Result<(), StoreError> {
        *self.0.lock().unwrap() = Some(anchor.clone());
        Ok(())
    }
}

#[test]
fn every_append_moves_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(MemoryAnchor::default());
    let log = AuditLog::open_with_anchor(dir.path(), Arc::clone(&sink)).unwrap();
    let record = log.append(&event(1)).unwrap();
    assert_eq!(
        sink.load_anchor().unwrap(),
        Some(Anchor {
            seq: 1,
            hash: record.hash
        })
    );
}

#[test]
fn a_missing_anchor_is_recreated_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let head = {
        let log = AuditLog::open(dir.path()).unwrap();
        log.append(&event(1)).unwrap();
        log.head().unwrap()
    };
    let sink = Arc::new(MemoryAnchor::default());
    let log = AuditLog::open_with_anchor(dir.path(), Arc::clone(&sink)).unwrap();
    assert_eq!(log.open_report(), &LogOpenReport::default());
    assert_eq!(sink.load_anchor().unwrap(), Some(head));
}

#[test]
fn a_torn_last_record_is_moved_aside_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path()).unwrap();
        log.append(&event(1)).unwrap();
        log.append(&event(2)).unwrap();
    }
    let path = dir.path().join(FILE_NAME);
    let fragment = b"{\"seq\":3,\"time\":\"2026-12-03T15:";
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(fragment)
        .unwrap();
    assert!(matches!(
        verify(&path).unwrap_err().problem(),
        Some(Problem::Incomplete { line: 3, .. })
    ));

    let log = AuditLog::open(dir.path()).unwrap();
    let torn = log.open_report().torn.clone().unwrap();
    assert_eq!(torn.bytes, fragment.len() as u64);
    assert_eq!(std::fs::read(&torn.moved_to).unwrap(), fragment);
    assert_eq!(torn.recorded_as, Some(3));
    let recovered = log.tail(1).unwrap().remove(0);
    assert_eq!(recovered.event["type"], RECOVERED_EVENT);
    assert_eq!(recovered.event["torn_bytes"], fragment.len());
    log.append(&event(4)).unwrap();
    let report = verify(&path).unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(report.torn_fragments, vec![torn.moved_to]);
}

#[test]
fn a_log_that_is_only_a_fragment_restarts_at_genesis() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), b"{\"seq\":1,").unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    assert_eq!(
        log.open_report().torn.as_ref().unwrap().recorded_as,
        Some(1)
    );
    assert_eq!(verify(log.path()).unwrap().records, 1);
}

#[test]
fn a_damaged_last_line_does_not_stop_auditing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path()).unwrap();
        log.append(&event(1)).unwrap();
        log.append(&event(2)).unwrap();
    }
    let path = dir.path().join(FILE_NAME);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"grant\":2", "\"grant\":9", 1)).unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    assert_eq!(log.append(&event(3)).unwrap().seq, 3);
    // The edit stays visible; the new record still links to the bad line.
    let err = verify(&path).unwrap_err();
    assert_eq!(err.problem(), Some(&Problem::HashMismatch { line: 2 }));
}

#[test]
fn a_batch_appends_as_one_chained_durable_write() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(MemoryAnchor::default());
    let log = AuditLog::open_with_anchor(dir.path(), Arc::clone(&sink)).unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&seen);
    log.subscribe(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    log.append(&event(1)).unwrap();
    let batch = log.append_all(&[event(2), event(3), event(4)]).unwrap();
    assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3, 4]);
    log.append(&event(5)).unwrap();
    assert!(log.append_all::<serde_json::Value>(&[]).unwrap().is_empty());
    assert_eq!(
        seen.load(Ordering::SeqCst),
        5,
        "subscribers see each record"
    );
    assert_eq!(sink.load_anchor().unwrap().unwrap().seq, 5);
    let read: Vec<AuditRecord> = log.records().unwrap().map(Result::unwrap).collect();
    assert_eq!(read[1..4].to_vec(), batch);
    let report = verify(log.path()).unwrap();
    assert_eq!(report.records, 5);
}

#[test]
fn an_oversized_event_refuses_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let big = serde_json::json!({"blob": "x".repeat(MAX_EVENT_BYTES)});
    assert!(log.append_all(&[event(1), big]).is_err());
    assert_eq!(log.head(), None, "nothing of the batch was written");
    assert_eq!(std::fs::metadata(log.path()).unwrap().len(), 0);
}

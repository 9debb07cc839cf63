//! Every kind of tampering with the audit log is found, and named, by
//! `verify`; deleted last lines by the anchor kept in the state store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use jit_agent::audit::{self, Anchor, AnchorSink as _, AuditLog, Problem, VerifyError};
use jit_agent::store::Store;
use serde_json::json;
use sha2::{Digest as _, Sha256};

const RECORDS: u64 = 20;

/// A log of 20 records, anchored in a real state store.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Arc<Store>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        {
            let log = AuditLog::open_with_anchor(dir.path(), Arc::clone(&store)).unwrap();
            for n in 1..=RECORDS {
                log.append(&json!({"type": "grant_activated", "grant": n, "user": "alice"}))
                    .unwrap();
            }
        }
        let path = dir.path().join(audit::FILE_NAME);
        Fixture {
            _dir: dir,
            path,
            store,
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write(&self, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&self.path, text).unwrap();
    }

    fn anchor(&self) -> Anchor {
        self.store.load_anchor().unwrap().unwrap()
    }

    /// The problem `verify` reports; panics if the log verifies.
    fn problem(&self) -> Problem {
        problem_of(audit::verify(&self.path))
    }
}

fn problem_of(result: Result<audit::VerifyReport, VerifyError>) -> Problem {
    match result {
        Ok(report) => panic!("tampering went unnoticed: {report:?}"),
        Err(e) => e.problem().cloned().unwrap_or_else(|| panic!("{e}")),
    }
}

/// What someone who knows the format would do: fix the record's own hash.
fn rehash(line: &str) -> String {
    let at = line.rfind(",\"hash\":\"").unwrap();
    let body = format!("{}}}", &line[..at]);
    format!(
        "{},\"hash\":\"{}\"}}",
        &line[..at],
        hex::encode(Sha256::digest(body.as_bytes()))
    )
}

fn digest(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

#[test]
fn an_untouched_log_verifies_with_its_anchor() {
    let fx = Fixture::new();
    let report = audit::verify_with_anchor(&fx.path, Some(&fx.anchor())).unwrap();
    assert_eq!(report.records, RECORDS);
    assert!(report.anchor_checked);
    assert_eq!(report.last, Some(fx.anchor()));
}

#[test]
fn an_edited_line_is_a_hash_mismatch() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    lines[16] = lines[16].replace("alice", "mallory");
    fx.write(&lines);
    let problem = fx.problem();
    assert_eq!(problem, Problem::HashMismatch { line: 17 });
    assert_eq!(
        problem.to_string(),
        "line 17: hash mismatch — the record was edited"
    );
}

#[test]
fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    lines[6] = rehash(&lines[6].replace("alice", "mallory"));
    fx.write(&lines);
    let problem = fx.problem();
    assert_eq!(problem, Problem::PrevMismatch { line: 8 });
    assert_eq!(
        problem.to_string(),
        "line 8: prev does not match line 7 — a record before it was replaced, inserted or reordered"
    );
}

#[test]
fn a_broken_line_is_named() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    lines[3] = lines[3].replacen("{\"seq\"", "{\"seq\":0,\"seq\"", 1);
    fx.write(&lines);
    let problem = fx.problem();
    assert!(
        matches!(problem, Problem::Malformed { line: 4, .. }),
        "{problem:?}"
    );
    assert!(
        problem
            .to_string()
            .starts_with("line 4: not an audit record ("),
        "{problem}"
    );
}

#[test]
fn a_deleted_middle_line_is_a_seq_gap() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    lines.remove(7);
    fx.write(&lines);
    let problem = fx.problem();
    assert_eq!(
        problem,
        Problem::Deleted {
            line: 8,
            found: 9,
            prev: 7
        }
    );
    assert_eq!(
        problem.to_string(),
        "line 8: seq 9 follows 7 — a record was deleted"
    );
}

#[test]
fn several_deleted_lines_are_counted() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    lines.drain(4..7);
    fx.write(&lines);
    assert_eq!(
        fx.problem().to_string(),
        "line 5: seq 8 follows 4 — 3 records were deleted"
    );
}

#[test]
fn a_deleted_first_line_is_found() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    lines.remove(0);
    fx.write(&lines);
    assert_eq!(fx.problem(), Problem::StartsLate { found: 2 });
}

#[test]
fn a_forged_first_record_does_not_link_to_genesis() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    let genesis = audit::genesis_prev();
    lines[0] = rehash(&lines[0].replace(&genesis, &"0".repeat(64)));
    fx.write(&lines);
    assert_eq!(fx.problem(), Problem::BadGenesis);
}

#[test]
fn a_copied_line_is_an_insertion() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    let copy = lines[4].clone();
    lines.insert(9, copy);
    fx.write(&lines);
    let problem = fx.problem();
    assert_eq!(
        problem,
        Problem::Inserted {
            line: 10,
            found: 5,
            prev: 9
        }
    );
    assert_eq!(
        problem.to_string(),
        "line 10: seq 5 follows 9 — a record was inserted or copied here"
    );
}

#[test]
fn a_forged_record_that_links_correctly_is_still_an_insertion() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    // A well-formed record 10, chained to line 9, slipped in before the real
    // record 10.
    let forged = lines[9].replace("\"grant\":10", "\"grant\":99");
    let forged = rehash(&forged);
    assert!(forged.contains(&format!("\"prev\":\"{}\"", digest(&lines[8]))));
    lines.insert(9, forged);
    fx.write(&lines);
    assert_eq!(
        fx.problem(),
        Problem::Inserted {
            line: 11,
            found: 10,
            prev: 10
        }
    );
}

#[test]
fn swapped_lines_are_a_reordering() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    lines.swap(11, 12);
    fx.write(&lines);
    let problem = fx.problem();
    assert_eq!(
        problem,
        Problem::Reordered {
            line: 12,
            found: 13,
            prev: 11,
            missing: 12,
            found_on: 13
        }
    );
    assert_eq!(
        problem.to_string(),
        "line 12: seq 13 follows 11 — records were reordered (seq 12 is on line 13)"
    );
}

#[test]
fn a_line_moved_far_away_is_found_where_it_went() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    let moved = lines.remove(2);
    lines.push(moved);
    fx.write(&lines);
    assert!(matches!(
        fx.problem(),
        Problem::Reordered {
            line: 3,
            missing: 3,
            found_on: 20,
            ..
        }
    ));
}

#[test]
fn a_truncated_last_line_is_incomplete() {
    let fx = Fixture::new();
    let text = std::fs::read_to_string(&fx.path).unwrap();
    std::fs::write(&fx.path, &text[..text.len() - 30]).unwrap();
    let problem = fx.problem();
    assert!(
        matches!(problem, Problem::Incomplete { line: 20, .. }),
        "{problem:?}"
    );
    // With the anchor given, the partial line is still what is named first.
    let err = audit::verify_with_anchor(&fx.path, Some(&fx.anchor()));
    assert!(matches!(
        problem_of(err),
        Problem::Incomplete { line: 20, .. }
    ));
}

#[test]
fn deleted_last_lines_pass_the_chain_but_not_the_anchor() {
    let fx = Fixture::new();
    let anchor = fx.anchor();
    let mut lines = fx.lines();
    lines.truncate(17);
    fx.write(&lines);
    // The limit of a bare chain: a shorter log is a valid log.
    assert_eq!(audit::verify(&fx.path).unwrap().records, 17);
    let problem = problem_of(audit::verify_with_anchor(&fx.path, Some(&anchor)));
    assert_eq!(
        problem,
        Problem::TailDeleted {
            last: 17,
            anchor: 20
        }
    );
    assert_eq!(
        problem.to_string(),
        "the log ends at seq 17 but the state store's anchor is seq 20 — the last 3 record(s) were deleted"
    );
}

#[test]
fn a_rewritten_last_record_passes_the_chain_but_not_the_anchor() {
    let fx = Fixture::new();
    let anchor = fx.anchor();
    let mut lines = fx.lines();
    let last = lines.pop().unwrap();
    lines.push(rehash(&last.replace("alice", "mallory")));
    fx.write(&lines);
    assert!(audit::verify(&fx.path).is_ok());
    assert_eq!(
        problem_of(audit::verify_with_anchor(&fx.path, Some(&anchor))),
        Problem::AnchorMismatch { line: 20, seq: 20 }
    );
}

#[test]
fn the_agent_records_a_deleted_tail_when_it_starts() {
    let fx = Fixture::new();
    let mut lines = fx.lines();
    lines.truncate(15);
    fx.write(&lines);
    let dir = fx.path.parent().unwrap();
    let log = AuditLog::open_with_anchor(dir, Arc::clone(&fx.store)).unwrap();
    assert_eq!(log.open_report().anchor_mismatch.as_ref().unwrap().seq, 20);
    let record = log.tail(1).unwrap().remove(0);
    assert_eq!(record.seq, 16);
    assert_eq!(record.event["type"], audit::ANCHOR_MISMATCH_EVENT);
    assert_eq!(record.event["anchor_seq"], 20);
    assert_eq!(record.event["log_last_seq"], 15);
    // From here on the log and the anchor agree again, with the gap on record.
    drop(log);
    audit::verify_with_anchor(&fx.path, Some(&fx.anchor())).unwrap();
}

#[test]
fn a_torn_record_is_recovered_with_the_anchor_intact() {
    let fx = Fixture::new();
    let text = std::fs::read_to_string(&fx.path).unwrap();
    let torn = "{\"seq\":21,\"time\":\"2026-12-03T15:11:40.1";
    std::fs::write(&fx.path, format!("{text}{torn}")).unwrap();
    let dir = fx.path.parent().unwrap();
    let log = AuditLog::open_with_anchor(dir, Arc::clone(&fx.store)).unwrap();
    let recovery = log.open_report().torn.clone().unwrap();
    assert_eq!(recovery.bytes, torn.len() as u64);
    assert_eq!(std::fs::read_to_string(&recovery.moved_to).unwrap(), torn);
    assert!(log.open_report().anchor_mismatch.is_none());
    let record = log.tail(1).unwrap().remove(0);
    assert_eq!(record.seq, 21);
    assert_eq!(record.event["type"], audit::RECOVERED_EVENT);
    assert_eq!(record.event["torn_bytes"], torn.len());
    drop(log);
    let report = audit::verify_with_anchor(&fx.path, Some(&fx.anchor())).unwrap();
    assert_eq!(report.records, 21);
    assert_eq!(report.torn_fragments, vec![recovery.moved_to]);
}

fn measure(dir: &Path, appends: u64, anchored: Option<Arc<Store>>) -> (f64, f64) {
    let log = match anchored {
        Some(store) => AuditLog::open_with_anchor(dir, store).unwrap(),
        None => AuditLog::open(dir).unwrap(),
    };
    let started = Instant::now();
    for n in 1..=appends {
        log.append(
            &json!({"type": "grant_activated", "grant": n, "user": "alice", "target": "db-prod"}),
        )
        .unwrap();
    }
    let appended = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let report = audit::verify(log.path()).unwrap();
    let verified = started.elapsed().as_secs_f64();
    assert_eq!(report.records, appends);
    (appended, verified)
}

#[test]
fn ten_thousand_appends_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (appended, verified) = measure(dir.path(), 10_000, None);
    let size = std::fs::metadata(dir.path().join(audit::FILE_NAME))
        .unwrap()
        .len();
    eprintln!(
        "10000 appends (each fdatasync'd): {appended:.2} s ({:.0} µs each); verify: {:.0} ms; log {size} bytes",
        appended * 1e6 / 10_000.0,
        verified * 1e3
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let (appended, _) = measure(dir.path(), 500, Some(store));
    eprintln!(
        "500 anchored appends (fdatasync + redb commit each): {appended:.2} s ({:.0} µs each)",
        appended * 1e6 / 500.0
    );
}

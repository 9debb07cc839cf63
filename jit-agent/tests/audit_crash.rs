//! SIGKILL a process that appends to the anchored audit log, over and over:
//! after every restart each acknowledged record is there, unchanged, and the
//! log verifies against the anchor in the state store.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jit_agent::audit::{self, AnchorSink as _, AuditLog, AuditRecord};
use jit_agent::store::Store;
use serde_json::json;

const CHILD_DIR_ENV: &str = "JITGATE_AUDIT_CRASH_CHILD_DIR";
const KILLS: usize = 20;

/// Appends forever, printing `ack <seq> <hash>` after each durable append.
#[test]
#[ignore = "run as a child process by sigkill_mid_append_loses_no_acknowledged_record"]
fn child_append_loop() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let store = Arc::new(Store::open(&dir).unwrap());
    let log = AuditLog::open_with_anchor(&dir, store).unwrap();
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let record = log
            .append(&json!({"type": "grant_extended", "n": n, "pad": "e".repeat(500)}))
            .unwrap();
        writeln!(out, "ack {} {}", record.seq, record.hash).unwrap();
        out.flush().unwrap();
    }
}

fn parse_ack(line: &str) -> Option<(u64, String)> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    Some((parts.next()?.parse().ok()?, parts.next()?.to_string()))
}

#[test]
fn sigkill_mid_append_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut state = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut next_random = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for round in 1..=KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_append_loop",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wait_for = 1 + next_random(30);
        let mut seen = 0;
        while seen < wait_for {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!("round {round}: the writer exited before acknowledging anything")
                })
                .unwrap();
            if let Some((seq, hash)) = parse_ack(&line) {
                acked.insert(seq, hash);
                seen += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(next_random(3000)));
        child.kill().unwrap();
        child.wait().unwrap();
        for line in lines {
            if let Some((seq, hash)) = parse_ack(&line.unwrap()) {
                acked.insert(seq, hash);
            }
        }

        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = AuditLog::open_with_anchor(dir.path(), Arc::clone(&store)).unwrap();
        assert!(
            log.open_report().anchor_mismatch.is_none(),
            "round {round}: {:?}",
            log.open_report()
        );
        drop(log);
        let anchor = store.load_anchor().unwrap().unwrap();
        let report = audit::verify_with_anchor(dir.path().join(audit::FILE_NAME), Some(&anchor))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let records: BTreeMap<u64, AuditRecord> = audit::records(dir.path().join(audit::FILE_NAME))
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.seq, r)
            })
            .collect();
        assert_eq!(records.len() as u64, report.records);
        for (seq, hash) in &acked {
            let record = records
                .get(seq)
                .unwrap_or_else(|| panic!("round {round}: acknowledged record {seq} lost"));
            assert_eq!(&record.hash, hash, "round {round}: record {seq} changed");
        }
    }
    eprintln!(
        "{KILLS} kills survived, {} records acknowledged, log verified after each",
        acked.len()
    );
}

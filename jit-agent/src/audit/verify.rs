//! `jitctl audit verify`: walks the chain and names the first bad line.

use std::fs::File;
use std::io::{self, BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{self, LineProblem};
use super::Anchor;

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many records the log holds.
    pub records: u64,
    /// The newest record (`None` for an empty log).
    pub last: Option<Anchor>,
    /// Whether an anchor was given and matched.
    pub anchor_checked: bool,
    /// Torn records that recovery moved aside, found next to the log. They
    /// are not part of the chain; they are listed so nobody overlooks them.
    pub torn_fragments: Vec<PathBuf>,
}

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The line is not in the record format.
    #[error("line {line}: not an audit record ({detail}) — the line was edited or damaged")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// The record's content does not match its hash.
    #[error("line {line}: hash mismatch — the record was edited")]
    HashMismatch {
        /// 1-based line number.
        line: u64,
    },
    /// The first record is not seq 1.
    #[error(
        "line 1: seq {found}, but a log starts at seq 1 — records were deleted from its start"
    )]
    StartsLate {
        /// The first record's seq.
        found: u64,
    },
    /// The first record does not link to the genesis hash.
    #[error("line 1: prev is not the genesis hash — the log does not start at its first record")]
    BadGenesis,
    /// Records are missing before this line.
    #[error("line {line}: seq {found} follows {prev} — {}", deleted_text(*found, *prev))]
    Deleted {
        /// 1-based line number.
        line: u64,
        /// This record's seq.
        found: u64,
        /// The previous record's seq.
        prev: u64,
    },
    /// The record that should be here is further down.
    #[error("line {line}: seq {found} follows {prev} — records were reordered (seq {missing} is on line {found_on})")]
    Reordered {
        /// 1-based line number.
        line: u64,
        /// This record's seq.
        found: u64,
        /// The previous record's seq.
        prev: u64,
        /// The seq that should be here.
        missing: u64,
        /// Where that seq is.
        found_on: u64,
    },
    /// A record with an old seq appears again.
    #[error("line {line}: seq {found} follows {prev} — a record was inserted or copied here")]
    Inserted {
        /// 1-based line number.
        line: u64,
        /// This record's seq.
        found: u64,
        /// The previous record's seq.
        prev: u64,
    },
    /// The seq is right but the link to the previous line is not.
    #[error("line {line}: prev does not match line {} — a record before it was replaced, inserted or reordered", line - 1)]
    PrevMismatch {
        /// 1-based line number.
        line: u64,
    },
    /// The log ends in a partial line.
    #[error(
        "line {line}: incomplete record at the end ({bytes} bytes, no newline) — a write was torn; \
         the agent moves it aside when it next starts"
    )]
    Incomplete {
        /// 1-based line number.
        line: u64,
        /// The partial line's length.
        bytes: u64,
    },
    /// The log is shorter than the anchor says.
    #[error(
        "the log ends at seq {last} but the state store's anchor is seq {anchor} — \
         the last {} record(s) were deleted", anchor - last
    )]
    TailDeleted {
        /// The log's last seq (0 if empty).
        last: u64,
        /// The anchored seq.
        anchor: u64,
    },
    /// The anchored record is there, but it is not the one anchored.
    #[error(
        "line {line}: seq {seq} is not the record the state store anchored — the log was rewritten"
    )]
    AnchorMismatch {
        /// 1-based line number.
        line: u64,
        /// The anchored seq.
        seq: u64,
    },
}

fn deleted_text(found: u64, prev: u64) -> String {
    match found - prev - 1 {
        1 => "a record was deleted".to_string(),
        n => format!("{n} records were deleted"),
    }
}

impl Problem {
    /// The 1-based line the problem was found on, if it is about one line.
    pub fn line(&self) -> Option<u64> {
        match self {
            Problem::Malformed { line, .. }
            | Problem::HashMismatch { line }
            | Problem::Deleted { line, .. }
            | Problem::Reordered { line, .. }
            | Problem::Inserted { line, .. }
            | Problem::PrevMismatch { line }
            | Problem::Incomplete { line, .. }
            | Problem::AnchorMismatch { line, .. } => Some(*line),
            Problem::StartsLate { .. } | Problem::BadGenesis => Some(1),
            Problem::TailDeleted { .. } => None,
        }
    }
}

/// Why a log did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The log could not be read.
    #[error("cannot read audit log {path}")]
    Read {
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The log was tampered with or damaged.
    #[error("audit log {path} failed verification: {problem}")]
    Broken {
        /// The log file.
        path: PathBuf,
        /// The first problem found.
        problem: Problem,
    },
}

impl VerifyError {
    /// The problem, if the log was readable.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            VerifyError::Broken { problem, .. } => Some(problem),
            VerifyError::Read { .. } => None,
        }
    }
}

/// Verifies the chain of the log at `path`. Cannot see deleted last lines:
/// use [`verify_with_anchor`] when the state store's anchor is at hand.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, VerifyError> {
    verify_with_anchor(path, None)
}

/// Verifies the chain, and that the record `anchor` names is present and
/// unchanged (which catches deleted last lines).
pub fn verify_with_anchor(
    path: impl AsRef<Path>,
    anchor: Option<&Anchor>,
) -> Result<VerifyReport, VerifyError> {
    let path = path.as_ref();
    let read_error = |source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let broken = |problem| VerifyError::Broken {
        path: path.to_path_buf(),
        problem,
    };
    let mut reader = BufReader::new(File::open(path).map_err(read_error)?);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut prev_seq = 0u64;
    let mut prev_digest = chain::genesis_prev();
    let mut last = None;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(read_error)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if !buf.ends_with(b"\n") {
            return Err(broken(Problem::Incomplete {
                line: line_no,
                bytes: n as u64,
            }));
        }
        let line = &buf[..n - 1];
        let header = match chain::check(line) {
            Ok(header) => header,
            Err(LineProblem::Malformed(detail)) => {
                return Err(broken(Problem::Malformed {
                    line: line_no,
                    detail,
                }))
            }
            Err(LineProblem::HashMismatch(_)) => {
                return Err(broken(Problem::HashMismatch { line: line_no }))
            }
        };
        let expected = prev_seq + 1;
        if header.seq != expected {
            let found = header.seq;
            let problem = if line_no == 1 {
                Problem::StartsLate { found }
            } else if found > expected {
                match find_seq(&mut reader, expected, line_no).map_err(read_error)? {
                    Some(found_on) => Problem::Reordered {
                        line: line_no,
                        found,
                        prev: prev_seq,
                        missing: expected,
                        found_on,
                    },
                    None => Problem::Deleted {
                        line: line_no,
                        found,
                        prev: prev_seq,
                    },
                }
            } else {
                Problem::Inserted {
                    line: line_no,
                    found,
                    prev: prev_seq,
                }
            };
            return Err(broken(problem));
        }
        if header.prev != prev_digest {
            return Err(broken(if line_no == 1 {
                Problem::BadGenesis
            } else {
                Problem::PrevMismatch { line: line_no }
            }));
        }
        if let Some(anchor) = anchor.filter(|a| a.seq == header.seq) {
            if anchor.hash != header.hash {
                return Err(broken(Problem::AnchorMismatch {
                    line: line_no,
                    seq: anchor.seq,
                }));
            }
        }
        prev_digest = chain::line_digest(line);
        prev_seq = header.seq;
        last = Some(Anchor {
            seq: header.seq,
            hash: header.hash,
        });
    }
    if let Some(anchor) = anchor {
        if anchor.seq > prev_seq {
            return Err(broken(Problem::TailDeleted {
                last: prev_seq,
                anchor: anchor.seq,
            }));
        }
    }
    Ok(VerifyReport {
        records: line_no,
        last,
        anchor_checked: anchor.is_some(),
        torn_fragments: torn_fragments(path),
    })
}

/// Looks for `seq` in the rest of the log; returns its line number.
fn find_seq(reader: &mut BufReader<File>, seq: u64, mut line_no: u64) -> io::Result<Option<u64>> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(None);
        }
        line_no += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if chain::seq_of(line) == Some(seq) {
            return Ok(Some(line_no));
        }
    }
}

fn torn_fragments(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.torn-", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

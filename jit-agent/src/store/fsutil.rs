//! File-system helpers shared by the state store and the audit log: both keep
//! evidence of damage next to the original file instead of deleting it.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

/// Creates the state directory if needed. 0700 because it holds who may reach
/// what, and the audit trail; the agent is the only reader.
pub(crate) fn create_state_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// A rename or file creation is only durable once its directory is synced
/// (see `fsync(2)`: "calling fsync() on the file does not ensure that the
/// entry in the directory containing the file has also reached disk").
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// ENOSPC and EDQUOT both mean "nothing more fits"; the operator fixes both
/// the same way, so they are reported the same way.
pub(crate) fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    ) || matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// `<file>.<tag>-<UTC timestamp>`, with a counter if that name is taken, so
/// two recoveries in the same second never overwrite each other's evidence.
pub(crate) fn aside_path(path: &Path, tag: &str, now: DateTime<Utc>) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = now.format("%Y%m%dT%H%M%SZ");
    let base = path.with_file_name(format!("{name}.{tag}-{stamp}"));
    let mut candidate = base.clone();
    let mut n = 1u32;
    while candidate.symlink_metadata().is_ok() {
        candidate = PathBuf::from(format!("{}.{n}", base.display()));
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aside_path_never_reuses_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.redb");
        let now = DateTime::parse_from_rfc3339("2026-12-03T15:11:40Z")
            .unwrap()
            .with_timezone(&Utc);
        let first = aside_path(&file, "damaged", now);
        assert_eq!(
            first.file_name().unwrap(),
            "state.redb.damaged-20261203T151140Z"
        );
        std::fs::write(&first, b"x").unwrap();
        let second = aside_path(&file, "damaged", now);
        assert_eq!(
            second.file_name().unwrap(),
            "state.redb.damaged-20261203T151140Z.1"
        );
    }

    #[test]
    fn enospc_and_edquot_are_disk_full() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EACCES)));
    }
}

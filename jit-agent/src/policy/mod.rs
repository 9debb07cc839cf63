//! The policy: who may reach what, when, with whose approval.
//!
//! A policy is TOML, one file or a directory of `*.toml` files merged into
//! one (names are global; a name defined twice is an error showing both
//! places). Loading has two stages, like ripgrep's arguments:
//! [`raw`] turns text into structs that mirror the file and remember where
//! every value was written, then [`validate`] checks values and references
//! and builds a [`Policy`], which cannot be invalid. Every problem is
//! reported at once, each with its file, line, column and what to do.
//!
//! `policies/REFERENCE.md` documents every key and default.

mod duration;
mod error;
mod model;
mod raw;
mod source;
mod validate;
mod window;

use std::path::{Path, PathBuf};

pub use duration::{
    format_duration, parse_duration, serde_text as duration_serde, MAX_POLICY_DURATION,
};
pub use error::{ErrorKind, LineCol, Location, PolicyError, PolicyErrors, PortProblem};
pub use model::{
    defaults, ApiSettings, Approval, AttachMode, GateSettings, GroupRef, HostIdle, Policy,
    PortRange, Protocol, Role, Rule, Target, UnixAccount, User, Zone, ZoneId,
};
pub use source::{MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES};
pub use validate::{MAX_APPROVALS, MAX_RULES_PER_TARGET, MAX_WINDOWS, MAX_ZONES};
pub use window::{format_local, Days, Schedule, TimeOfDay, Window};

use error::Diagnostics;

/// The closest of `candidates` to `word`, if one is a plausible typo; for
/// "did you mean" hints elsewhere in the agent.
pub fn suggest_name<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    error::suggest(word, candidates)
}
use source::SourceFile;

impl Policy {
    /// Loads and validates a policy file, or every `*.toml` file of a
    /// directory. This is all `jitctl policy check PATH` does: print the
    /// errors' `Display`, or nothing.
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyErrors> {
        let path = path.as_ref();
        let mut diags = Diagnostics::default();
        let files = source::read_sources(path, &mut diags);
        Self::check(files, diags, path)
    }

    /// Validates policy text that did not come from disk, e.g. from a test
    /// or an API call; `name` is used in error locations.
    pub fn parse(name: impl Into<PathBuf>, text: &str) -> Result<Policy, PolicyErrors> {
        Self::parse_files(vec![(name.into(), text.to_owned())])
    }

    /// Validates several named texts as one policy, as if they were the
    /// files of a directory, in the given order.
    pub fn parse_files(files: Vec<(PathBuf, String)>) -> Result<Policy, PolicyErrors> {
        let mut diags = Diagnostics::default();
        let root = files.first().map(|(p, _)| p.clone()).unwrap_or_default();
        let files = files
            .into_iter()
            .filter_map(|(path, text)| {
                if text.len() as u64 > MAX_FILE_BYTES {
                    diags.on_path(
                        &path,
                        ErrorKind::FileTooLarge {
                            size: text.len() as u64,
                            limit: MAX_FILE_BYTES,
                        },
                    );
                    return None;
                }
                Some(SourceFile::new(path, text))
            })
            .collect();
        Self::check(files, diags, &root)
    }

    fn check(
        files: Vec<SourceFile>,
        mut diags: Diagnostics,
        root: &Path,
    ) -> Result<Policy, PolicyErrors> {
        if !diags.is_empty() {
            return Err(diags
                .finish(&files, root)
                .expect("diagnostics are not empty"));
        }
        let raws: Vec<Option<raw::RawFile>> = files
            .iter()
            .enumerate()
            .map(|(i, f)| raw::parse_file(i as u32, f, &mut diags))
            .collect();
        // With a file unreadable, every reference into it would be reported
        // as undefined: show only the syntax errors.
        let raws: Option<Vec<raw::RawFile>> = raws.into_iter().collect();
        let policy = raws.and_then(|raws| validate::validate(&files, raws, &mut diags));
        match (diags.finish(&files, root), policy) {
            (None, Some(p)) => Ok(p),
            (Some(errors), _) => Err(errors),
            // Validation only fails after reporting why, except for a missing
            // gate, which it reports too; never panic on input.
            (None, None) => Err(PolicyErrors::from_vec(
                vec![PolicyError::without_position(root, ErrorKind::NoGate)],
                0,
            )),
        }
    }
}

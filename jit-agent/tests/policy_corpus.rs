//! The policy corpus: every example policy in `policies/` must load, and every
//! case in `policies/invalid/` must fail with exactly the text in its
//! `.expected` file.
//!
//! A case is a `NAME.toml` file or a `NAME/` directory, paired with
//! `NAME.expected`. After changing messages on purpose, regenerate with
//! `UPDATE_EXPECTED=1 cargo test -p jit-agent --test policy_corpus` and
//! review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use jit_agent::policy::Policy;

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn cases() -> Vec<PathBuf> {
    let dir = policies_dir().join("invalid");
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("policies/invalid exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    cases
}

fn expected_path(case: &Path) -> PathBuf {
    let stem = case.file_stem().expect("case has a name").to_owned();
    case.with_file_name(stem).with_extension("expected")
}

/// The error text with the corpus directory removed from paths, so the
/// expected files do not depend on where the repository is checked out.
fn render(case: &Path) -> String {
    let dir = format!("{}/", case.parent().expect("case has a parent").display());
    match Policy::load(case) {
        Ok(_) => panic!("{} loaded, but it is in the invalid corpus", case.display()),
        Err(e) => format!("{e}\n").replace(&dir, ""),
    }
}

#[test]
fn example_policies_load() {
    let mut loaded = 0;
    for entry in fs::read_dir(policies_dir()).expect("policies/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = Policy::load(&path) {
                panic!("{} does not load:\n{e}", path.display());
            }
            loaded += 1;
        }
    }
    assert!(loaded >= 1, "no example policies found");
}

#[test]
fn invalid_corpus_fails_with_expected_errors() {
    let update = std::env::var_os("UPDATE_EXPECTED").is_some();
    let cases = cases();
    assert!(
        cases.len() >= 50,
        "the corpus shrank to {} cases",
        cases.len()
    );
    let mut mismatches = Vec::new();
    for case in &cases {
        let got = render(case);
        let expected_file = expected_path(case);
        if update {
            fs::write(&expected_file, &got).expect("writing expected output");
            continue;
        }
        let expected = fs::read_to_string(&expected_file)
            .unwrap_or_else(|_| panic!("{} has no .expected file", case.display()));
        if got != expected {
            mismatches.push(format!(
                "== {}\n-- expected:\n{expected}-- got:\n{got}",
                case.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn every_expected_file_has_a_case() {
    let dir = policies_dir().join("invalid");
    for entry in fs::read_dir(&dir).expect("policies/invalid exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "expected") {
            let stem = path.with_extension("");
            assert!(
                stem.with_extension("toml").exists() || stem.is_dir(),
                "{} has no case",
                path.display()
            );
        }
    }
}

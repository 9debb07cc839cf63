//! jitctl commands that run without an agent.

use std::path::Path;

use super::exit;

/// `jitctl policy check PATH`: every error with file:line:column.
pub fn policy_check(path: &Path) -> u8 {
    match crate::policy::Policy::load(path) {
        Ok(policy) => {
            println!(
                "{}: policy is valid ({} zones, {} targets, {} roles, {} users)",
                path.display(),
                policy.zones().len(),
                policy.targets().count(),
                policy.roles().count(),
                policy.users().count()
            );
            exit::OK
        }
        Err(errors) => {
            eprint!("{errors}");
            exit::INVALID
        }
    }
}

/// `jitctl audit verify --file PATH`.
pub fn audit_verify(path: &Path) -> u8 {
    match crate::audit::verify(path) {
        Ok(report) => {
            println!(
                "{}: {} records, hash chain intact",
                path.display(),
                report.records
            );
            for torn in &report.torn_fragments {
                println!("note: torn record kept aside in {}", torn.display());
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("jitctl: {}: {e}", path.display());
            exit::INVALID
        }
    }
}

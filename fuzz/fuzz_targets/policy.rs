//! Policy files are operator input, but a policy directory may be writable by
//! more people than the agent trusts, so the parser and validator must never
//! panic, hang or accept something they cannot describe.

#![no_main]

use jit_agent::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Policy files are read as UTF-8 text; anything else is refused before
    // parsing, so only text reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse("fuzz.toml", text) {
        Ok(policy) => {
            assert!(
                !policy.digest().is_empty(),
                "an accepted policy has a digest"
            );
            // Accepting is deterministic: the same text gives the same policy.
            let again = Policy::parse("fuzz.toml", text).expect("accepted once, accepted twice");
            assert_eq!(policy.digest(), again.digest());
        }
        Err(errors) => {
            assert!(
                !errors.errors().is_empty(),
                "a refusal names at least one error"
            );
            assert!(errors.total() >= errors.errors().len());
            // Rendering the report walks snippets and column arrows, which is
            // where odd characters and positions would panic.
            let report = errors.to_string();
            assert!(report.contains("policy is invalid"), "report: {report}");
        }
    }
});

//! Property tests: the policy loader never panics on any input, a policy it
//! accepts keeps its promises, and windows behave as documented.
//!
//! More cases: `PROPTEST_CASES=20000 cargo test -p jit-agent --test policy_fuzz`.

use std::net::IpAddr;

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use jit_agent::policy::{Days, Policy, Schedule, TimeOfDay, Window};

const EXAMPLE: &str = include_str!("../../policies/example.toml");

/// Checks what a validated policy promises the rest of the agent.
fn check_invariants(p: &Policy) {
    for t in p.targets() {
        assert!(!t.rules.is_empty(), "target {} has no rules", t.name);
        for r in &t.rules {
            let zone = p.zone_by_id(r.zone).expect("rule zone exists");
            assert!(
                zone.prefixes.iter().any(|z| z.contains(&r.dst)),
                "rule {} of {} outside its zone",
                r.dst,
                t.name
            );
            assert_eq!(r.ports.is_some(), r.protocol.has_ports());
            if let Some(ports) = r.ports {
                assert!(1 <= ports.start && ports.start <= ports.end);
            }
        }
    }
    for role in p.roles() {
        assert!(role.default_duration <= role.max_duration);
        for t in &role.targets {
            assert!(p.target(t).is_some());
        }
        if let Some(a) = &role.approval {
            assert!(p.approvers_of(role).count() >= a.approvals_needed as usize);
        }
    }
    for u in p.users() {
        assert!(!u.roles.is_empty() || u.admin);
        for r in &u.roles {
            assert!(p.role(r).is_some());
        }
    }
    let mut ids: Vec<u8> = p.zones().iter().map(|z| z.id.get()).collect();
    ids.dedup();
    assert_eq!(ids.len(), p.zones().len(), "zone ids are unique");
}

/// Small edits that keep the text TOML-ish, so that mutants get past the
/// parser and exercise validation.
fn mutate(text: &str, edits: &[(usize, u8, String)]) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for (pos, op, piece) in edits {
        if s.is_empty() {
            break;
        }
        let at = pos % s.len();
        match op % 3 {
            0 => {
                s.remove(at);
            }
            1 => {
                for (i, c) in piece.chars().enumerate() {
                    s.insert(at + i, c);
                }
            }
            _ => {
                let end = (at + piece.len()).min(s.len());
                s.splice(at..end, piece.chars());
            }
        }
    }
    s.into_iter().collect()
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        Just("\"".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("=".to_owned()),
        Just("\n".to_owned()),
        Just("/33".to_owned()),
        Just("-".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("\"dba\"".to_owned()),
        Just("true".to_owned()),
        Just("{}".to_owned()),
        Just("[[roles.x.windows]]\n".to_owned()),
        "[a-z_.]{1,8}",
        "\\PC{1,4}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,2000}") {
        let _ = Policy::parse("fuzz.toml", &text).map(|p| check_invariants(&p));
    }

    #[test]
    fn mutated_example_never_panics(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), piece()), 1..6)) {
        let text = mutate(EXAMPLE, &edits);
        match Policy::parse("mutant.toml", &text) {
            Ok(p) => check_invariants(&p),
            Err(e) => {
                // Every error renders and points into the file.
                let shown = e.to_string();
                prop_assert!(shown.ends_with("nothing was loaded"));
                for err in e.errors() {
                    if let Some(pos) = err.location.pos {
                        prop_assert!(pos.line >= 1 && pos.line <= text.lines().count().max(1) + 1);
                    }
                    prop_assert!(!err.hint().is_empty());
                }
            }
        }
    }
}

fn tz() -> impl Strategy<Value = Tz> {
    prop_oneof![
        Just(chrono_tz::UTC),
        Just(chrono_tz::Europe::Berlin),
        Just(chrono_tz::America::New_York),
        Just(chrono_tz::Australia::Lord_Howe),
        Just(chrono_tz::Pacific::Apia),
        Just(chrono_tz::Asia::Kolkata),
    ]
}

fn window() -> impl Strategy<Value = Window> {
    (1u8..128, 0u16..1440, 1u16..=1440, tz())
        .prop_filter("start differs from end", |(_, s, e, _)| s != e)
        .prop_map(|(days, start, end, tz)| {
            let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
            let mut set = Days::default();
            for (i, n) in names.iter().enumerate() {
                if days & (1 << i) != 0 {
                    set = set.union(Days::parse(n).expect("day name"));
                }
            }
            let t =
                |m: u16| TimeOfDay::parse(&format!("{:02}:{:02}", m / 60, m % 60)).expect("time");
            Window {
                days: set,
                start: t(start),
                end: t(end),
                tz,
            }
        })
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 2024 to 2027, covering several DST changes in every zone above.
    (1_704_067_200i64..1_830_297_600).prop_map(|s| Utc.timestamp_opt(s, 0).single().expect("valid"))
}

proptest! {
    #[test]
    fn windows_keep_their_promises(
        windows in proptest::collection::vec(window(), 1..4),
        at in instant(),
        hours in 1i64..200,
    ) {
        let s = Schedule::new(windows);
        let limit = at + ChronoDuration::hours(hours);
        match s.open_until(at, limit) {
            Some(end) => {
                prop_assert!(s.contains(at));
                prop_assert!(at < end && end <= limit);
                // Open throughout, sampled.
                let span = (end - at).num_seconds();
                for k in 0..20 {
                    let t = at + ChronoDuration::seconds(span * k / 20);
                    prop_assert!(s.contains(t), "closed at {t} inside [{at}, {end})");
                }
                if end < limit {
                    prop_assert!(!s.contains(end), "still open at the end {end}");
                }
            }
            None => {
                prop_assert!(!s.contains(at));
                let (next, _) = s.next_opening(at).expect("some window opens within a week");
                prop_assert!(next > at && next <= at + ChronoDuration::days(9));
                prop_assert!(s.contains(next));
                // Closed until then, sampled.
                let span = (next - at).num_seconds();
                for k in 0..20 {
                    let t = at + ChronoDuration::seconds(span * k / 20);
                    prop_assert!(!s.contains(t), "open at {t} before the next opening {next}");
                }
            }
        }
    }
}

#[test]
fn source_addresses_outside_prefixes_are_not_allowed() {
    let p = Policy::parse("example.toml", EXAMPLE).expect("example is valid");
    let alice = p.user("alice").expect("user");
    let inside: IpAddr = "10.1.0.200".parse().expect("addr");
    let outside: IpAddr = "10.1.1.0".parse().expect("addr");
    assert!(alice.may_connect_from(inside));
    assert!(!alice.may_connect_from(outside));
}

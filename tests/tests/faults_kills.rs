//! SIGKILL the agent at random points during thousands of grant, revoke,
//! extend and expire operations; after every restart, every acknowledged
//! grant is in the store and the kernel, nothing revoked or expired passes a
//! probe packet, and the audit log verifies.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use jit_agent::api::{
    client,
    proto::{ApiRequest, ApiResponse},
};
use jit_tests::{
    agent::{lab_policy, Agent, Scratch, UDP_PORT},
    lab::Lab,
};
use rand::{rngs::Xoshiro256PlusPlus, RngExt as _, SeedableRng as _};

const SOURCES: u8 = 16;
const FIRST_SOURCE: u8 = 96;

fn source(i: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, FIRST_SOURCE + i])
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Known {
    /// Acknowledged active until this instant (give or take the clock).
    Active(Instant),
    /// Acknowledged revoked, or expired.
    Ended,
}

fn call(agent: &Agent, request: &ApiRequest) -> Option<ApiResponse> {
    client::call(agent.socket(), request).ok()
}

fn state_of(agent: &Agent, id: u64) -> String {
    let r = call(agent, &ApiRequest::Show { id }).expect("agent answers show");
    r.data["state"].as_str().unwrap_or("missing").to_owned()
}

#[test]
fn random_kills_never_lose_an_acknowledged_grant_or_open_a_closed_one() {
    let ops: usize = std::env::var("JITGATE_KILL_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let kills: usize = std::env::var("JITGATE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("JITGATE_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {seed} (JITGATE_KILL_SEED to replay), {ops} operations, {kills} kills");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);

    let lab = Lab::new().unwrap();
    lab.serve_udp_echo(UDP_PORT).unwrap();
    for i in 0..SOURCES {
        let addr = format!("{}/24", source(i));
        lab.exec_ok(
            lab.client_ns(),
            &["ip", "addr", "add", &addr, "dev", "cli0"],
        );
    }
    let scratch = Scratch::new(&lab);
    let extra = format!(
        "\n[users.fleet]\naccounts = [4299]\nroles = [\"ops\"]\nsource_prefixes = [\"192.0.2.{FIRST_SOURCE}/28\"]\n"
    );
    let policy = lab_policy(&lab, scratch.path(), &extra);
    let mut agent = Agent::start(&lab, scratch.path(), &policy);

    let mut known: HashMap<u64, (u8, Known)> = HashMap::new();
    let kill_every = ops / (kills + 1);
    let mut kills_done = 0;
    let mut acked = 0usize;
    for op in 0..ops {
        let now = Instant::now();
        // Grants whose expiry has passed are ended as far as we are concerned.
        for (_, k) in known.values_mut() {
            if let Known::Active(until) = *k {
                if until + Duration::from_millis(50) < now {
                    *k = Known::Ended;
                }
            }
        }
        let active: Vec<u64> = known
            .iter()
            .filter(|(_, (_, k))| matches!(k, Known::Active(_)))
            .map(|(id, _)| *id)
            .collect();
        let busy: Vec<u8> = known
            .values()
            .filter(|(_, k)| matches!(k, Known::Active(_)))
            .map(|(s, _)| *s)
            .collect();
        let choice = rng.random_range(0..10);
        let kill_now = kills_done < kills && op >= (kills_done + 1) * kill_every;
        let free: Vec<u8> = (0..SOURCES).filter(|s| !busy.contains(s)).collect();
        // Every source busy means some grant is active, so there is always
        // something to do.
        let request = if (choice < 5 || active.is_empty()) && !free.is_empty() {
            let s = free[rng.random_range(0..free.len())];
            let secs = rng.random_range(1..6);
            (
                Some(s),
                ApiRequest::Grant {
                    user: "fleet".into(),
                    target: "srv-udp".into(),
                    source: Some(source(s).to_string()),
                    duration: Some(format!("{secs}s")),
                    reason: Some(format!("op {op}")),
                },
                secs,
            )
        } else if choice < 8 {
            let id = active[rng.random_range(0..active.len())];
            (
                None,
                ApiRequest::Revoke {
                    id,
                    reason: Some("test".into()),
                },
                0,
            )
        } else {
            let id = active[rng.random_range(0..active.len())];
            (
                None,
                ApiRequest::Extend {
                    id,
                    by: "2s".into(),
                    reason: None,
                },
                2,
            )
        };
        let (src, request, secs) = request;
        if kill_now {
            // Kill while the operation may be in flight: its outcome is
            // unknown to us, and learned from the agent after the restart.
            let socket = agent.socket().to_owned();
            let req = request.clone();
            // The answer's arrival time, not the restart's, starts an
            // acknowledged grant's window: a restart takes longer than the
            // check's margin.
            let pending = std::thread::spawn(move || {
                client::call(&socket, &req)
                    .ok()
                    .map(|answer| (answer, Instant::now()))
            });
            std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
            agent.kill9();
            let answer = pending.join().unwrap();
            agent.start_again();
            kills_done += 1;
            match (answer.filter(|(a, _)| a.ok), &request) {
                (Some((a, at)), _) => apply(&mut known, &request, &a, src, secs, at),
                // No answer: a grant in flight is learned from the listing
                // after the restart; a revoke or extend in flight leaves its
                // grant uncertain until we ask.
                (None, ApiRequest::Revoke { id, .. } | ApiRequest::Extend { id, .. }) => {
                    let (s, _) = known[id];
                    let until = learn(&agent, *id);
                    known.insert(*id, (s, until));
                }
                (None, _) => {}
            }
            check_after_restart(&agent, &lab, &mut known, kills_done);
            continue;
        }
        let Some(answer) = call(&agent, &request) else {
            panic!("agent did not answer op {op}:\n{}", agent.log_text())
        };
        if !answer.ok {
            continue;
        }
        acked += 1;
        apply(&mut known, &request, &answer, src, secs, Instant::now());
    }
    assert_eq!(kills_done, kills, "every planned kill happened");
    println!("{acked} operations acknowledged, {kills_done} kills survived");
}

/// Records what an operation acknowledged at `at` did.
fn apply(
    known: &mut HashMap<u64, (u8, Known)>,
    request: &ApiRequest,
    answer: &ApiResponse,
    src: Option<u8>,
    secs: u64,
    at: Instant,
) {
    match request {
        ApiRequest::Grant { .. } => {
            let id = answer.data["id"].as_u64().unwrap();
            known.insert(
                id,
                (src.unwrap(), Known::Active(at + Duration::from_secs(secs))),
            );
        }
        ApiRequest::Revoke { id, .. } => {
            known.get_mut(id).unwrap().1 = Known::Ended;
        }
        ApiRequest::Extend { id, .. } => {
            if let Some((_, Known::Active(until))) = known.get_mut(id) {
                *until += Duration::from_secs(2);
            }
        }
        _ => {}
    }
}

/// Asks the agent what became of a grant whose last operation was in flight.
fn learn(agent: &Agent, id: u64) -> Known {
    let shown = call(agent, &ApiRequest::Show { id }).expect("agent answers show");
    if shown.data["state"] != "active" {
        return Known::Ended;
    }
    let until: chrono::DateTime<chrono::Utc> =
        shown.data["expires_at"].as_str().unwrap().parse().unwrap();
    let left = (until - chrono::Utc::now()).to_std().unwrap_or_default();
    Known::Active(Instant::now() + left)
}

fn check_after_restart(
    agent: &Agent,
    lab: &Lab,
    known: &mut HashMap<u64, (u8, Known)>,
    round: usize,
) {
    let mut live_sources = vec![false; SOURCES as usize];
    let ids: Vec<u64> = known.keys().copied().collect();
    for id in ids {
        let (s, k) = known[&id];
        // Asked before the clock is read: a grant seen active must still be
        // inside its window when judged.
        let now = Instant::now();
        let state = state_of(agent, id);
        match k {
            Known::Active(until) if until > now + Duration::from_millis(300) => {
                assert_eq!(
                    state,
                    "active",
                    "round {round}: acknowledged grant #{id} lost:\n{}",
                    agent.log_text()
                );
                live_sources[s as usize] = true;
            }
            Known::Active(_) => {
                // Too close to its expiry to say; learn it.
                if state == "active" {
                    live_sources[s as usize] = true;
                } else {
                    known.get_mut(&id).unwrap().1 = Known::Ended;
                }
            }
            Known::Ended => {
                assert_ne!(
                    state, "active",
                    "round {round}: revoked or expired grant #{id} is active again"
                );
            }
        }
    }
    // Grants the store says are active that we did not know of (their
    // request was in flight at the kill) count from now on.
    let listing = call(
        agent,
        &ApiRequest::List {
            all: true,
            history: false,
        },
    )
    .unwrap();
    for item in listing.data.as_array().unwrap() {
        let id = item["id"].as_u64().unwrap();
        if item["state"] == "active" && !known.contains_key(&id) {
            let src: IpAddr = item["source"].as_str().unwrap().parse().unwrap();
            if let IpAddr::V4(v4) = src {
                let s = v4.octets()[3] - FIRST_SOURCE;
                let until: chrono::DateTime<chrono::Utc> =
                    item["expires_at"].as_str().unwrap().parse().unwrap();
                let left = (until - chrono::Utc::now()).to_std().unwrap_or_default();
                known.insert(id, (s, Known::Active(Instant::now() + left)));
                live_sources[s as usize] = true;
            }
        }
    }
    // Probe: no source without a live grant gets through.
    let server = jit_tests::lab::V4.server_protected;
    for s in 0..SOURCES {
        if !live_sources[s as usize] {
            assert!(
                !lab.udp_request(source(s), server, UDP_PORT, Duration::from_millis(150)),
                "round {round}: source {} passed without a live grant",
                source(s)
            );
        }
    }
    let verify = call(agent, &ApiRequest::AuditVerify).unwrap();
    assert_eq!(
        verify.data["valid"], true,
        "round {round}: audit log broken: {verify:?}"
    );
}

//! Bad input on the API socket, against a real agent in a lab: malformed and
//! oversized messages, slow and hanging clients, clients that vanish, callers
//! the policy does not know, and 200 clients at once. Every client gets a
//! clear answer or a timeout answer, and after each abuse the agent is alive
//! and answers `status` promptly.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use jit_agent::api::{
    client,
    proto::{ApiRequest, ApiResponse, ErrorKind, MAX_REQUEST_BYTES},
};
use jit_tests::{
    agent::{lab_policy, Agent, Scratch, ALICE, API_GID, BOB, CAROL, ROOT, TCP_PORT},
    bin_path,
    lab::Lab,
};

/// The server's read timeout (`api::server::READ_TIMEOUT`).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// What "promptly" means for a healthy agent on a busy test machine.
const PROMPT: Duration = Duration::from_secs(2);
/// A uid the lab policy does not name.
const STRANGER: u32 = 4299;

fn lab_with_agent() -> (Lab, Scratch, Agent) {
    let lab = Lab::new().expect("building the lab");
    lab.serve_tcp_echo(TCP_PORT).unwrap();
    let scratch = Scratch::new(&lab);
    let policy = lab_policy(&lab, scratch.path(), "");
    let agent = Agent::start(&lab, scratch.path(), &policy);
    (lab, scratch, agent)
}

/// Runs `f` on a fresh thread whose credentials are `uid`/`gid`, so that
/// SO_PEERCRED reports them for the connections it makes.
fn as_uid<R: Send + 'static>(uid: u32, gid: u32, f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(move || {
        become_uid(uid, gid);
        f()
    })
    .join()
    .expect("the client thread panicked")
}

/// Changes the calling thread's credentials only: raw syscalls, because
/// glibc's setuid() would switch every thread of the test process. The
/// thread must not be reused for anything else afterwards.
fn become_uid(uid: u32, gid: u32) {
    use nix::libc;
    // SAFETY: integer arguments; only this thread's credentials change.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
        assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
    }
}

fn connect(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads one answer line and parses it; panics on silence or non-JSON.
fn read_answer(stream: UnixStream, what: &str) -> ApiResponse {
    let mut line = Vec::new();
    BufReader::new(stream)
        .take(1 << 20)
        .read_until(b'\n', &mut line)
        .unwrap_or_else(|e| panic!("{what}: reading the answer: {e}"));
    assert!(
        !line.is_empty(),
        "{what}: the agent closed without answering"
    );
    serde_json::from_slice(&line).unwrap_or_else(|e| {
        panic!(
            "{what}: the answer is not a response ({e}): {}",
            String::from_utf8_lossy(&line)
        )
    })
}

/// Sends raw bytes as one client and returns the answer. A write the agent
/// cut short (it stops reading at the size limit) is not an error: the
/// answer is already queued on our side.
fn send_raw(socket: &Path, bytes: &[u8], what: &str) -> ApiResponse {
    let mut stream = connect(socket);
    let _ = stream.write_all(bytes);
    read_answer(stream, what)
}

fn expect_refusal(socket: &Path, bytes: &[u8], kind: ErrorKind, needle: &str) {
    let what = format!(
        "request {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
    );
    let answer = send_raw(socket, bytes, &what);
    let error = answer
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: accepted: {answer:?}"));
    assert!(!answer.ok, "{what}: ok with an error: {answer:?}");
    assert_eq!(error.kind, kind, "{what}: {answer:?}");
    assert!(
        error.message.contains(needle),
        "{what}: the message does not say {needle:?}: {}",
        error.message
    );
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// The agent process is alive and answers `status` within [`PROMPT`].
fn assert_healthy(agent: &Agent, after: &str) {
    let pid = agent.pid().expect("the agent runs");
    let state = process_state(pid);
    assert!(
        matches!(state, Some(s) if s != 'Z' && s != 'X'),
        "after {after}: the agent process is gone (state {state:?}):\n{}",
        agent.log_text()
    );
    let started = Instant::now();
    let answer = client::call(agent.socket(), &ApiRequest::Status)
        .unwrap_or_else(|e| panic!("after {after}: status failed: {e}\n{}", agent.log_text()));
    let took = started.elapsed();
    assert!(answer.ok, "after {after}: status refused: {answer:?}");
    assert!(took < PROMPT, "after {after}: status took {took:?}");
}

/// Messages that are not requests, each with what the answer must say.
fn malformed_messages() -> Vec<(Vec<u8>, &'static str)> {
    let mut cases: Vec<(Vec<u8>, &'static str)> = [
        ("\n", "EOF while parsing"),
        ("   \n", "EOF while parsing"),
        ("{\n", "EOF while parsing"),
        ("}\n", "expected value"),
        ("not json\n", "expected"),
        ("[]\n", "malformed request"),
        ("null\n", "malformed request"),
        ("42\n", "malformed request"),
        ("\"status\"\n", "malformed request"),
        ("{}\n", "missing field `op`"),
        ("{\"op\":null}\n", "malformed request"),
        ("{\"op\":\"frobnicate\"}\n", "unknown variant `frobnicate`"),
        ("{\"op\":\"Status\"}\n", "unknown variant `Status`"),
        ("{\"op\":\"status \"}\n", "unknown variant"),
        ("{\"OP\":\"status\"}\n", "missing field `op`"),
        ("{\"op\":\"status\",\"extra\":1}\n", "unknown field `extra`"),
        (
            "{\"op\":\"release\",\"id\":1,\"force\":true}\n",
            "unknown field `force`",
        ),
        (
            "{\"op\":\"list\",\"all\":true,\"as_root\":true}\n",
            "unknown field `as_root`",
        ),
        ("{\"op\":\"approve\"}\n", "missing field `id`"),
        ("{\"op\":\"approve\",\"id\":\"7\"}\n", "invalid type"),
        ("{\"op\":\"approve\",\"id\":-1}\n", "invalid value"),
        ("{\"op\":\"approve\",\"id\":1.5}\n", "invalid type"),
        (
            "{\"op\":\"approve\",\"id\":18446744073709551616}\n",
            "malformed request",
        ),
        ("{\"op\":\"approve\",\"id\":1e400}\n", "malformed request"),
        ("{\"op\":\"extend\",\"id\":1}\n", "missing field `by`"),
        ("{\"op\":\"extend\",\"id\":1,\"by\":15}\n", "invalid type"),
        ("{\"op\":\"request\"}\n", "missing field `target`"),
        ("{\"op\":\"request\",\"target\":null}\n", "invalid type"),
        (
            "{\"op\":\"request\",\"target\":[\"srv-tcp\"]}\n",
            "invalid type",
        ),
        (
            "{\"op\":\"grant\",\"user\":\"alice\"}\n",
            "missing field `target`",
        ),
        ("{\"op\":\"audit_tail\"}\n", "missing field `lines`"),
        ("{\"op\":\"audit_tail\",\"lines\":-5}\n", "invalid value"),
        ("{\"op\":\"list\",\"all\":\"yes\"}\n", "invalid type"),
        (
            "{\"op\":\"status\",\"op\":\"list\"}\n",
            "duplicate field `op`",
        ),
        (
            "{\"op\":\"status\"}{\"op\":\"status\"}\n",
            "trailing characters",
        ),
        ("{\"op\":\"status\"} x\n", "trailing characters"),
        ("{'op':'status'}\n", "key must be a string"),
        ("{\"op\":\"status\",}\n", "trailing comma"),
        ("{\"op\":\"stat\\u0000us\"}\n", "unknown variant"),
        ("{\"op\":\"\\ud800\"}\n", "hex escape"),
        ("\u{feff}{\"op\":\"status\"}\n", "expected value"),
    ]
    .into_iter()
    .map(|(text, needle)| (text.as_bytes().to_vec(), needle))
    .collect();
    // Bytes that are not UTF-8, and a NUL in the middle.
    cases.push((b"{\"op\":\"\xff\xfe\"}\n".to_vec(), "malformed request"));
    cases.push((b"{\"op\":\0\"status\"}\n".to_vec(), "malformed request"));
    cases.push((b"\xc3\x28\n".to_vec(), "malformed request"));
    // Nesting deep enough to overflow a naive recursive parser's stack.
    let deep = format!("{}{}\n", "[".repeat(20_000), "]".repeat(20_000));
    cases.push((deep.into_bytes(), "malformed request"));
    let deep_field = format!(
        "{{\"op\":\"status\",\"x\":{}{}}}\n",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    cases.push((deep_field.into_bytes(), "recursion limit exceeded"));
    let deep_obj = format!("{}\n", "{\"op\":".repeat(10_000));
    cases.push((deep_obj.into_bytes(), "malformed request"));
    cases
}

/// A small seeded generator, so a failure replays.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random bytes and byte-level mutations of read-only requests (so a
/// mutation that happens to parse cannot change the agent's state in a way
/// that matters to later tests).
fn fuzzed_messages(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let valid: [&[u8]; 5] = [
        br#"{"op":"status"}"#,
        br#"{"op":"list","all":true,"history":true}"#,
        br#"{"op":"show","id":1}"#,
        br#"{"op":"audit_tail","lines":5}"#,
        br#"{"op":"policy_show"}"#,
    ];
    let mut rng = XorShift(seed);
    (0..count)
        .map(|i| {
            let mut msg = if i % 4 == 0 {
                (0..rng.below(300)).map(|_| rng.next() as u8).collect()
            } else {
                let mut m = valid[rng.below(valid.len())].to_vec();
                for _ in 0..=rng.below(4) {
                    match rng.below(4) {
                        0 if !m.is_empty() => {
                            let at = rng.below(m.len());
                            m[at] = rng.next() as u8;
                        }
                        1 if !m.is_empty() => {
                            m.remove(rng.below(m.len()));
                        }
                        2 => {
                            let at = rng.below(m.len() + 1);
                            m.insert(at, b"{}[]\":,\\0-e9 \x00\xff"[rng.below(15)]);
                        }
                        _ => {
                            let at = rng.below(m.len() + 1);
                            m.truncate(at);
                        }
                    }
                }
                m
            };
            // The request is the first line; keep the mutation in it.
            msg.retain(|&b| b != b'\n');
            msg.push(b'\n');
            msg
        })
        .collect()
}

#[test]
fn malformed_requests_get_a_bad_request_answer_and_the_agent_stays_healthy() {
    let (_lab, _scratch, agent) = lab_with_agent();
    let socket = agent.socket().to_owned();
    let cases = malformed_messages();
    for (bytes, needle) in &cases {
        expect_refusal(&socket, bytes, ErrorKind::BadRequest, needle);
        expect_refusal(&socket, bytes, ErrorKind::BadRequest, "malformed request");
    }
    assert_healthy(&agent, "malformed requests");

    // Random and mutated messages: each gets exactly one well-formed answer.
    let fuzzed = fuzzed_messages(2_000, 0x5eed_ab05e);
    let mut refused = 0;
    for (i, bytes) in fuzzed.iter().enumerate() {
        let answer = send_raw(&socket, bytes, &format!("fuzzed message #{i}"));
        if let Some(error) = &answer.error {
            refused += 1;
            assert!(!answer.ok);
            assert!(!error.message.is_empty());
        }
        if i % 500 == 0 {
            assert_healthy(&agent, &format!("{i} fuzzed messages"));
        }
    }
    assert_healthy(&agent, "fuzzed messages");
    println!(
        "malformed inputs tried: {} hand-written (each twice), {} random or mutated ({refused} refused)",
        cases.len(),
        fuzzed.len()
    );
}

#[test]
fn oversized_requests_are_refused_at_once_without_growing_the_agent() {
    let (_lab, _scratch, agent) = lab_with_agent();
    let socket = agent.socket().to_owned();
    let limit = MAX_REQUEST_BYTES;
    let too_large = format!("request larger than {limit} bytes");

    // The limit counts the newline: a padded status of exactly the limit
    // passes, one byte more is refused.
    let padded = |total: usize| {
        let mut m = br#"{"op":"status"}"#.to_vec();
        m.resize(total - 1, b' ');
        m.push(b'\n');
        m
    };
    let at_limit = send_raw(&socket, &padded(limit), "a request of exactly the limit");
    assert!(at_limit.ok, "{at_limit:?}");
    expect_refusal(
        &socket,
        &padded(limit + 1),
        ErrorKind::BadRequest,
        &too_large,
    );

    // No newline at all: refused as soon as the limit is reached, not after
    // the read timeout.
    let started = Instant::now();
    expect_refusal(
        &socket,
        &vec![b'a'; limit + 1],
        ErrorKind::BadRequest,
        &too_large,
    );
    assert!(
        started.elapsed() < READ_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );

    // A long JSON string inside one request.
    let long_target = format!(
        "{{\"op\":\"request\",\"target\":\"{}\"}}\n",
        "x".repeat(200 * 1024)
    );
    expect_refusal(
        &socket,
        long_target.as_bytes(),
        ErrorKind::BadRequest,
        &too_large,
    );

    // Big streams, several at once: the agent reads no further than the
    // limit, so its memory stays flat.
    let pid = agent.pid().unwrap();
    let before = rss_kib(pid);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let socket = socket.clone();
            let too_large = too_large.clone();
            std::thread::spawn(move || {
                let mut body = vec![b'{'; 16 << 20];
                body.push(b'\n');
                let started = Instant::now();
                expect_refusal(&socket, &body, ErrorKind::BadRequest, &too_large);
                assert!(
                    started.elapsed() < READ_TIMEOUT,
                    "stream {i} took {:?}",
                    started.elapsed()
                );
            })
        })
        .collect();
    for t in threads {
        t.join().expect("an oversized client failed");
    }
    let after = rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "the agent grew from {before} KiB to {after} KiB on refused requests"
    );
    assert_healthy(&agent, "oversized requests");
}

/// Sends `bytes` one at a time, `gap` apart; returns the answer and when
/// it came, counted from the connection.
fn trickle(socket: &Path, bytes: &[u8], gap: Duration) -> (ApiResponse, Duration) {
    let started = Instant::now();
    let mut stream = connect(socket);
    for b in bytes {
        if stream.write_all(&[*b]).is_err() {
            break; // the agent gave up on us and closed; its answer is queued
        }
        std::thread::sleep(gap);
    }
    let answer = read_answer(stream, "a slow client");
    (answer, started.elapsed())
}

#[test]
fn slow_and_hanging_clients_get_an_answer_or_a_timeout_and_block_nobody() {
    let (_lab, _scratch, agent) = lab_with_agent();
    let socket: PathBuf = agent.socket().to_owned();
    let byte_gap = Duration::from_millis(100);

    let slow_ok = {
        let socket = socket.clone();
        std::thread::spawn(move || trickle(&socket, b"{\"op\":\"status\"}\n", byte_gap))
    };
    // 80 bytes at 10 per second cannot arrive within the read timeout.
    let slow_long = {
        let socket = socket.clone();
        let mut msg = br#"{"op":"list","all":true,"history":true}"#.to_vec();
        msg.resize(79, b' ');
        msg.push(b'\n');
        std::thread::spawn(move || trickle(&socket, &msg, byte_gap))
    };
    // Clients that send part of a request and then nothing, or nothing at
    // all, keeping the connection open.
    let hanging: Vec<_> = (0..100)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut stream = connect(&socket);
                if i % 2 == 0 {
                    stream.write_all(br#"{"op":"status"}"#).unwrap();
                }
                let answer = read_answer(stream, "a hanging client");
                (answer, started.elapsed())
            })
        })
        .collect();

    // Meanwhile everyone else is served at once.
    let deadline = Instant::now() + READ_TIMEOUT + Duration::from_secs(1);
    let mut served = 0;
    while Instant::now() < deadline {
        assert_healthy(&agent, "slow and hanging clients connected");
        served += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        served >= 10,
        "only {served} status calls while clients hung"
    );

    let (answer, took) = slow_ok.join().unwrap();
    assert!(
        answer.ok,
        "a slow but complete request was refused: {answer:?}"
    );
    assert!(took < READ_TIMEOUT, "{took:?}");

    let (answer, took) = slow_long.join().unwrap();
    let error = answer
        .error
        .expect("a request slower than the timeout is refused");
    assert_eq!(error.kind, ErrorKind::BadRequest);
    assert!(
        error.message.contains("no complete request within 5s"),
        "{}",
        error.message
    );
    assert!(
        took >= READ_TIMEOUT - Duration::from_millis(200)
            && took < READ_TIMEOUT + Duration::from_secs(2),
        "the slow client was answered after {took:?}"
    );

    for h in hanging {
        let (answer, took) = h.join().unwrap();
        let error = answer
            .error
            .expect("a hanging client gets a timeout answer");
        assert_eq!(error.kind, ErrorKind::BadRequest);
        assert!(
            error.message.contains("no complete request within 5s"),
            "{}",
            error.message
        );
        assert!(
            took >= READ_TIMEOUT - Duration::from_millis(200)
                && took < READ_TIMEOUT + Duration::from_secs(2),
            "a hanging client was answered after {took:?}"
        );
    }
    assert_healthy(&agent, "slow and hanging clients");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn clients_that_connect_and_vanish_do_not_disturb_the_agent() {
    let (_lab, _scratch, agent) = lab_with_agent();
    let socket = agent.socket().to_owned();
    let pid = agent.pid().unwrap();
    let baseline = open_fds(pid);
    for i in 0..300 {
        let mut stream = connect(&socket);
        match i % 5 {
            // Connect and close.
            0 => {}
            // Part of a request, then gone.
            1 => {
                let _ = stream.write_all(br#"{"op":"li"#);
            }
            // A whole request, gone before the answer.
            2 => {
                let _ = stream.write_all(b"{\"op\":\"list\",\"all\":true}\n");
            }
            // End of input at once: an empty request.
            3 => {
                stream.shutdown(std::net::Shutdown::Write).unwrap();
                let answer = read_answer(stream, "a client that sent nothing");
                assert_eq!(answer.error.map(|e| e.kind), Some(ErrorKind::BadRequest));
                continue;
            }
            // Gone in the middle of a `watch`.
            _ => {
                let _ = stream.write_all(b"{\"op\":\"watch\"}\n");
                let mut first = [0u8; 16];
                let _ = stream.read(&mut first);
            }
        }
        drop(stream);
    }
    assert_healthy(&agent, "300 vanishing clients");
    // Every connection was let go, watchers included, without waiting for
    // an event to find out that nobody reads any more.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut fds = open_fds(pid);
    while fds > baseline + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds = open_fds(pid);
    }
    assert!(
        fds <= baseline + 2,
        "the agent holds {fds} descriptors after the clients left ({baseline} before)"
    );
}

#[test]
fn watchers_never_take_the_slots_requests_need() {
    let (_lab, _scratch, agent) = lab_with_agent();
    let socket = agent.socket().to_owned();
    // More open `watch` streams than the server serves connections at once.
    let watchers: Vec<UnixStream> = (0..300)
        .map(|i| {
            let socket = socket.clone();
            as_uid(ALICE, API_GID, move || {
                let mut stream = connect(&socket);
                stream.write_all(b"{\"op\":\"watch\"}\n").unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                reader
                    .read_line(&mut first)
                    .unwrap_or_else(|e| panic!("watcher {i}: {e}"));
                let answer: ApiResponse = serde_json::from_str(&first)
                    .unwrap_or_else(|e| panic!("watcher {i}: {e}: {first:?}"));
                if let Some(error) = answer.error {
                    assert!(
                        error.message.contains("watchers"),
                        "watcher {i}: {}",
                        error.message
                    );
                }
                stream
            })
        })
        .collect();
    assert_healthy(&agent, "300 open watch streams");
    let id = agent.grant("alice", "srv-tcp", jit_tests::lab::V4.client_a, "10m");
    assert!(id > 0);
    drop(watchers);
    assert_healthy(&agent, "300 watchers leaving");
}

#[test]
fn callers_with_unknown_uids_are_refused_clearly() {
    let (_lab, _scratch, agent) = lab_with_agent();
    let socket = agent.socket().to_owned();

    // Every command as a uid the policy does not know: refused, exit 3,
    // and the message says which uid and what to do.
    let commands: [&[&str]; 13] = [
        &["status"],
        &["list"],
        &["list", "--all"],
        &["request", "srv-tcp"],
        &["approve", "1"],
        &["grant", "alice", "srv-tcp"],
        &["revoke", "1"],
        &["extend", "1", "--by", "5m"],
        &["policy", "reload"],
        &["policy", "show"],
        &["audit", "tail"],
        &["audit", "verify"],
        &["watch"],
    ];
    for uid in [STRANGER, 65534] {
        for args in commands {
            let out = Command::new("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={API_GID}"))
                .arg("--clear-groups")
                .arg(bin_path("jitctl"))
                .arg("--socket")
                .arg(&socket)
                .args(args)
                .output()
                .expect("running jitctl");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(3),
                "uid {uid} jitctl {args:?}: {stderr}"
            );
            assert!(
                stderr.contains(&format!("uid {uid}"))
                    && stderr.contains("not a user in the jitgate policy"),
                "uid {uid} jitctl {args:?}: {stderr}"
            );
        }
    }

    // Raw requests from an unknown uid, well-formed and not.
    let answers = as_uid(STRANGER, API_GID, move || {
        [
            b"{\"op\":\"grant\",\"user\":\"alice\",\"target\":\"srv-tcp\"}\n".as_slice(),
            b"{\"op\":\"policy_reload\"}\n",
            b"{\"op\":\"frobnicate\"}\n",
        ]
        .iter()
        .map(|m| send_raw(&socket, m, "a stranger's request"))
        .collect::<Vec<_>>()
    });
    assert_eq!(
        answers[0].error.as_ref().map(|e| e.kind),
        Some(ErrorKind::Forbidden),
        "{answers:?}"
    );
    assert_eq!(
        answers[1].error.as_ref().map(|e| e.kind),
        Some(ErrorKind::Forbidden),
        "{answers:?}"
    );
    assert_eq!(
        answers[2].error.as_ref().map(|e| e.kind),
        Some(ErrorKind::BadRequest),
        "{answers:?}"
    );

    // Outside the socket's group the kernel refuses the connection itself.
    let socket = agent.socket().to_owned();
    let refused = as_uid(STRANGER, STRANGER, move || {
        UnixStream::connect(&socket).map(drop)
    });
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::PermissionDenied),
        "a uid outside the socket's group connected"
    );

    // Nothing was granted or reloaded on their behalf.
    let list = agent.jitctl_json(ROOT, &["list", "--all"]);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");
    assert_healthy(&agent, "unknown callers");
}

#[test]
fn two_hundred_concurrent_clients_all_get_answers() {
    let (_lab, _scratch, agent) = lab_with_agent();
    let socket = Arc::new(agent.socket().to_owned());
    const CLIENTS: usize = 200;
    let users = [ROOT, ALICE, BOB, CAROL, STRANGER];
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let socket = socket.clone();
            let barrier = barrier.clone();
            let uid = users[i % users.len()];
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    if uid != ROOT {
                        become_uid(uid, API_GID);
                    }
                    barrier.wait();
                    let requests = [
                        ApiRequest::Status,
                        // Everyone's list is for approvers and admins.
                        ApiRequest::List {
                            all: uid == ROOT || uid == BOB,
                            history: true,
                        },
                        ApiRequest::Request {
                            target: "srv-tcp".into(),
                            source: None,
                            duration: Some("5m".into()),
                            reason: Some(format!("client {i}")),
                        },
                    ];
                    let mut slowest = Duration::ZERO;
                    let mut kinds = Vec::new();
                    for request in &requests {
                        let t = Instant::now();
                        let answer = client::call(&socket, request)
                            .unwrap_or_else(|e| panic!("client {i} (uid {uid}) {request:?}: {e}"));
                        slowest = slowest.max(t.elapsed());
                        if let Some(error) = &answer.error {
                            assert!(
                                !error.message.is_empty() && error.kind != ErrorKind::BadRequest,
                                "client {i} (uid {uid}) {request:?}: {answer:?}"
                            );
                        }
                        kinds.push(answer.error.map(|e| e.kind));
                    }
                    (uid, kinds, slowest)
                })
                .expect("spawning a client thread")
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut answers = 0;
    for t in threads {
        let (uid, kinds, took) = t.join().expect("a client failed");
        answers += kinds.len();
        slowest = slowest.max(took);
        if uid == STRANGER {
            assert!(
                kinds.iter().all(|k| *k == Some(ErrorKind::Forbidden)),
                "{kinds:?}"
            );
        } else {
            assert_eq!(kinds[0], None, "status for uid {uid}: {kinds:?}");
            assert_eq!(kinds[1], None, "list for uid {uid}: {kinds:?}");
        }
    }
    let total = started.elapsed();
    println!("{CLIENTS} clients: {answers} answers in {total:?}, slowest call {slowest:?}");
    assert_eq!(answers, CLIENTS * 3);
    assert!(slowest < Duration::from_secs(20), "a call took {slowest:?}");
    assert_healthy(&agent, "200 concurrent clients");
}

//! End to end, host mode: the gate namespace is the protected machine. Its
//! own address on `gate-in` is in a zone marked `host = true`, and the
//! client namespace is the outside world. Connections the machine starts
//! (the "SSH out", "package update", "DNS" and "ping" cases) work with their
//! replies passing; its own services reach each other; nothing from outside
//! gets in without a grant; spoofs on a tracked flow's tuple do not ride on
//! the exception; a granted client's flow ends at its grant's expiry even
//! though the machine answered it.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuArray};
use jit_common::{counters::counter_index, Counter, Reason};
use jit_tests::{
    agent::{lab_policy, Agent, Scratch, ROOT},
    bench::flood::send_raw_frames,
    lab::{in_netns, Lab, CLIENT_IF, FAMILIES},
    packet::{Frame, L4, TCP_ACK, TCP_SYN},
};

const SHORT: Duration = Duration::from_millis(400);
/// Id of the host zone in the policy below.
const HOST_ZONE: u32 = 9;
/// Idle timeout of tracked flows in the policy below (all protocols).
const IDLE: Duration = Duration::from_secs(2);

/// Servers on the outside (client namespace, on client A's addresses).
const OUT_TCP: u16 = 7301;
const OUT_UDP: u16 = 7302;
/// A service of the machine itself (loopback and its own address).
const LOCAL_TCP: u16 = 7303;
/// The machine's services that grants open to clients.
const GRANTED_UDP: u16 = 7201;
const GRANTED_TCP: u16 = 7202;

fn host_policy(lab: &Lab, scratch: &Path) -> String {
    let (g4, g6) = (FAMILIES[0].gate_in, FAMILIES[1].gate_in);
    let (a4, a6) = (FAMILIES[0].client_a, FAMILIES[1].client_a);
    let extra = format!(
        r#"
[zones.self]
id = {HOST_ZONE}
prefixes = ["{g4}/32", "{g6}/128"]
host = true

[targets.host-udp]
zone = "self"
protocol = "udp"
ports = [{GRANTED_UDP}]

[targets.host-tcp]
zone = "self"
protocol = "tcp"
ports = [{GRANTED_TCP}]

[roles.hostops]
targets = ["host-udp", "host-tcp"]
max_duration = "1h"
default_duration = "10m"

[users.dave]
accounts = [4204]
roles = ["hostops"]
source_prefixes = ["{a4}/32", "{a6}/128"]
"#
    );
    let secs = IDLE.as_secs();
    lab_policy(lab, scratch, &extra).replace(
        "pending_ttl = \"10m\"\n",
        &format!(
            "pending_ttl = \"10m\"\nhost_tcp_idle = \"{secs}s\"\nhost_udp_idle = \"{secs}s\"\nhost_icmp_idle = \"{secs}s\"\n"
        ),
    )
}

fn host_lab() -> (Lab, Scratch, Agent) {
    let lab = Lab::new().expect("building the lab");
    let outside: Vec<IpAddr> = FAMILIES.iter().map(|f| f.client_a).collect();
    lab.serve_tcp_echo_on(lab.client_ns(), &outside, OUT_TCP)
        .unwrap();
    lab.serve_udp_echo_on(lab.client_ns(), &outside, OUT_UDP)
        .unwrap();
    let own: Vec<IpAddr> = FAMILIES
        .iter()
        .map(|f| f.gate_in)
        .chain([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ])
        .collect();
    lab.serve_tcp_echo_on(lab.gate_ns(), &own, LOCAL_TCP)
        .unwrap();
    let scratch = Scratch::new(&lab);
    let policy = host_policy(&lab, scratch.path());
    let agent = Agent::start(&lab, scratch.path(), &policy);
    (lab, scratch, agent)
}

/// Packets the gate counted for the host zone with `reason`, from its
/// pinned per-CPU counters.
fn counted(agent: &Agent, reason: Reason) -> u64 {
    let data = MapData::from_pin(agent.pin_dir().join(jit_common::maps::COUNTERS))
        .expect("opening the pinned counters");
    let counters: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a per-CPU array");
    counters
        .get(&counter_index(HOST_ZONE, reason), 0)
        .expect("reading counters")
        .iter()
        .map(|c| c.packets)
        .sum()
}

/// Sends one crafted frame from the client side to the gate and returns
/// what the gate did with it: `Some(true)` counted as a tracked reply,
/// `Some(false)` dropped for want of a grant.
fn verdict(lab: &Lab, agent: &Agent, frame: Frame) -> Option<bool> {
    let (tracked, dropped) = (
        counted(agent, Reason::PassTracked),
        counted(agent, Reason::DropNoGrant),
    );
    send_raw_frames(lab.client_ns(), CLIENT_IF, &[frame.bytes()]).expect("injecting a frame");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if counted(agent, Reason::PassTracked) > tracked {
            return Some(true);
        }
        if counted(agent, Reason::DropNoGrant) > dropped {
            return Some(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A TCP echo round trip from `addr` to itself in the gate namespace.
fn local_echo(lab: &Lab, addr: IpAddr) -> bool {
    in_netns(lab.gate_ns(), || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(addr, LOCAL_TCP), SHORT * 5)?;
        s.set_read_timeout(Some(SHORT * 5))?;
        s.write_all(b"local")?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"local")
    })
    .expect("entering the gate namespace")
    .unwrap_or(false)
}

#[test]
fn connections_the_host_starts_work_and_inbound_stays_closed() {
    let (lab, _scratch, agent) = host_lab();
    let tracked_before = counted(&agent, Reason::PassTracked);
    for fam in FAMILIES {
        let (me, peer) = (fam.gate_in, fam.client_a);
        // Outbound SSH or a package download: TCP out, data both ways.
        let mut session = lab
            .tcp_session(me, peer, OUT_TCP, SHORT * 5)
            .unwrap_or_else(|e| panic!("{}: TCP out from the host failed: {e}", fam.family));
        assert!(
            session.send_and_expect_echo(SHORT * 5),
            "{}: TCP out carried no reply",
            fam.family
        );
        // DNS: a UDP request and its response.
        assert!(
            lab.udp_request(me, peer, OUT_UDP, SHORT * 5),
            "{}: UDP out got no response",
            fam.family
        );
        assert!(
            lab.ping(lab.gate_ns(), me, peer, SHORT * 5),
            "{}: ping out got no reply",
            fam.family
        );
        // The machine's own services reach each other, over loopback and
        // over its own gated address (which the kernel routes via lo).
        let lo = if me.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        };
        assert!(local_echo(&lab, lo), "{}: loopback service", fam.family);
        assert!(local_echo(&lab, me), "{}: own-address service", fam.family);
        // Nothing from outside gets in without a grant.
        assert!(
            !lab.tcp_connect(peer, me, LOCAL_TCP, SHORT),
            "{}: an inbound TCP connection passed without a grant",
            fam.family
        );
        assert!(
            !lab.ping(lab.client_ns(), peer, me, SHORT),
            "{}: an inbound ping passed without a grant",
            fam.family
        );
    }
    let tracked = counted(&agent, Reason::PassTracked) - tracked_before;
    assert!(tracked > 0, "no reply was counted as tracked");
    println!("host mode: {tracked} replies passed as tracked");
}

#[test]
fn spoofs_do_not_ride_on_a_tracked_flow() {
    let (lab, _scratch, agent) = host_lab();
    for fam in FAMILIES {
        let (me, peer, other) = (fam.gate_in, fam.client_a, fam.client_b);
        let mut session = lab
            .tcp_session(me, peer, OUT_TCP, SHORT * 5)
            .expect("TCP out from the host");
        assert!(session.send_and_expect_echo(SHORT * 5));
        let lport = session.stream().local_addr().unwrap().port();
        // Let the exchange's last segments go by, so that only the crafted
        // frames move the counters.
        std::thread::sleep(Duration::from_millis(300));
        let tcp = |src: IpAddr, flags: u8| {
            Frame::ip(src, me, L4::Tcp { dport: lport })
                .sport(OUT_TCP)
                .tcp_flags(flags)
        };
        let f = fam.family;
        assert_eq!(
            verdict(&lab, &agent, tcp(peer, TCP_ACK)),
            Some(true),
            "{f}: a crafted segment on the tracked tuple (the control)"
        );
        assert_eq!(
            verdict(&lab, &agent, tcp(other, TCP_ACK)),
            Some(false),
            "{f}: the tracked tuple from an unrelated source"
        );
        assert_eq!(
            verdict(&lab, &agent, tcp(peer, TCP_SYN)),
            Some(false),
            "{f}: a SYN opening a new connection on the tracked tuple"
        );

        // A UDP flow the host started, from a socket that takes datagrams
        // from anyone: the gate is all that stands in the way.
        let host = in_netns(lab.gate_ns(), || UdpSocket::bind(SocketAddr::new(me, 0)))
            .unwrap()
            .unwrap();
        let uport = host.local_addr().unwrap().port();
        host.send_to(b"query", SocketAddr::new(peer, OUT_UDP))
            .unwrap();
        host.set_read_timeout(Some(SHORT * 5)).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = host.recv_from(&mut buf).expect("the UDP answer");
        assert_eq!(
            (&buf[..n], from),
            (&b"query"[..], SocketAddr::new(peer, OUT_UDP))
        );
        let udp = |src: IpAddr| Frame::ip(src, me, L4::Udp { dport: uport }).sport(OUT_UDP);
        assert_eq!(
            verdict(&lab, &agent, udp(peer)),
            Some(true),
            "{f}: a crafted datagram on the tracked UDP tuple (the control)"
        );
        assert_eq!(
            verdict(&lab, &agent, udp(other)),
            Some(false),
            "{f}: the tracked UDP tuple from an unrelated source"
        );

        // Silence from the host for longer than the idle timeout closes
        // both flows to the outside...
        std::thread::sleep(IDLE + Duration::from_millis(500));
        assert_eq!(
            verdict(&lab, &agent, tcp(peer, TCP_ACK)),
            Some(false),
            "{f}: TCP on the tuple after the flow went idle"
        );
        assert_eq!(
            verdict(&lab, &agent, udp(peer)),
            Some(false),
            "{f}: UDP on the tuple after the flow went idle"
        );
        // ...and only the host speaking again reopens them.
        assert!(
            session.send_and_expect_echo(SHORT * 5),
            "{f}: the host's own next segment did not revive its connection"
        );
    }
}

#[test]
fn a_granted_clients_flow_ends_at_expiry_though_the_host_answered() {
    let (lab, _scratch, agent) = host_lab();
    for fam in FAMILIES {
        let (me, peer) = (fam.gate_in, fam.client_a);
        let f = fam.family;
        // UDP: the host's service answers every request while the grant
        // lasts, then sends one more datagram after it ended (a late
        // answer). None of that may let the client in afterwards.
        let host = in_netns(lab.gate_ns(), || {
            UdpSocket::bind(SocketAddr::new(me, GRANTED_UDP))
        })
        .unwrap()
        .unwrap();
        let client = in_netns(lab.client_ns(), || {
            UdpSocket::bind(SocketAddr::new(peer, 0))
        })
        .unwrap()
        .unwrap();
        host.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let service = SocketAddr::new(me, GRANTED_UDP);
        agent.grant("dave", "host-udp", peer, "3s");
        let expiry = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 64];
        let mut answered = 0;
        let mut last_answer = Instant::now();
        while Instant::now() < expiry + Duration::from_millis(600) {
            client.send_to(b"req", service).unwrap();
            if let Ok((_, from)) = host.recv_from(&mut buf) {
                host.send_to(b"ans", from).unwrap();
            }
            if client.recv(&mut buf).is_ok() {
                answered += 1;
                last_answer = Instant::now();
            }
        }
        assert!(answered > 5, "{f}: the granted UDP flow did not work");
        assert!(
            last_answer <= expiry + Duration::from_millis(150),
            "{f}: UDP answered {:?} after expiry",
            last_answer - expiry
        );
        let client_addr = client.local_addr().unwrap();
        host.send_to(b"late", client_addr).unwrap();
        let mut got_in = 0;
        for _ in 0..10 {
            client.send_to(b"req", service).unwrap();
            if host.recv_from(&mut buf).is_ok() {
                got_in += 1;
            }
        }
        assert_eq!(
            got_in, 0,
            "{f}: the client's datagrams passed after expiry, riding on the host's answer"
        );

        // TCP: an established connection to the host's service stops at
        // expiry although the host kept acknowledging it.
        lab.serve_tcp_echo_on(lab.gate_ns(), &[me], GRANTED_TCP)
            .unwrap();
        agent.grant("dave", "host-tcp", peer, "2s");
        let mut session = lab
            .tcp_session(peer, me, GRANTED_TCP, SHORT * 5)
            .expect("TCP to the host's service with a grant");
        assert!(session.send_and_expect_echo(SHORT * 5), "{f}: granted TCP");
        std::thread::sleep(Duration::from_millis(2300));
        assert!(
            !session.send_and_expect_echo(SHORT * 2),
            "{f}: an established connection to the host carried data after expiry"
        );
    }
    let hist = agent.jitctl_json(ROOT, &["list", "--history"]);
    assert!(
        hist["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["state"] == "expired"),
        "{hist}"
    );
}

/// Programs on `iface`'s TCX egress hook inside `ns`.
fn egress_programs(ns: &str, iface: &str) -> usize {
    in_netns(ns, || {
        aya::programs::SchedClassifier::query_tcx(iface, aya::programs::TcAttachType::Egress)
            .map_or(0, |(_, progs)| progs.len())
    })
    .expect("entering the namespace")
}

fn ip_cmd(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn the_tracker_outlives_the_agent_is_adopted_reattached_and_detached() {
    let lab = Lab::new().expect("building the lab");
    let outside: Vec<IpAddr> = FAMILIES.iter().map(|f| f.client_a).collect();
    lab.serve_tcp_echo_on(lab.client_ns(), &outside, OUT_TCP)
        .unwrap();
    lab.serve_tcp_echo_on(lab.gate_ns(), &[FAMILIES[0].gate_in], LOCAL_TCP)
        .unwrap();
    let scratch = Scratch::new(&lab);
    let gw = lab.gate_ns().to_owned();
    // A second gated interface, to remove and re-create under the agent.
    ip_cmd(&[
        "-n", &gw, "link", "add", "jgx0", "type", "veth", "peer", "name", "jgx1",
    ]);
    ip_cmd(&["-n", &gw, "link", "set", "jgx0", "up"]);
    let policy = host_policy(&lab, scratch.path()).replace(
        r#"interfaces = ["gate-in"]"#,
        r#"interfaces = ["gate-in", "jgx0"]"#,
    );
    let mut agent = Agent::start(&lab, scratch.path(), &policy);
    assert_eq!(egress_programs(&gw, "gate-in"), 1, "tracker on gate-in");
    assert_eq!(egress_programs(&gw, "jgx0"), 1, "tracker on jgx0");

    ip_cmd(&["-n", &gw, "link", "del", "jgx0"]);
    wait_for("the agent to notice", || {
        agent.log_text().contains("disappeared")
    });
    ip_cmd(&[
        "-n", &gw, "link", "add", "jgx0", "type", "veth", "peer", "name", "jgx1",
    ]);
    ip_cmd(&["-n", &gw, "link", "set", "jgx0", "up"]);
    wait_for("the tracker on the re-created interface", || {
        egress_programs(&gw, "jgx0") == 1
    });

    let (me, peer) = (FAMILIES[0].gate_in, FAMILIES[0].client_a);
    let out = |lab: &Lab| {
        lab.tcp_session(me, peer, OUT_TCP, SHORT * 5)
            .is_ok_and(|mut s| s.send_and_expect_echo(SHORT * 5))
    };
    agent.kill9();
    assert!(
        out(&lab),
        "host TCP out with no agent running (pinned tracker)"
    );
    assert!(
        !lab.tcp_connect(peer, me, LOCAL_TCP, SHORT),
        "the gate opened when the agent died"
    );
    agent.start_again();
    assert!(
        agent.log_text().contains("adopted the pinned tracker link"),
        "no tracker adoption in the log:\n{}",
        agent.log_text()
    );
    assert_eq!(
        egress_programs(&gw, "gate-in"),
        1,
        "adoption must swap the program, not add a second"
    );
    assert!(out(&lab), "host TCP out after the restart");

    agent.kill9();
    let detach = std::process::Command::new(jit_tests::bin_path("jit-agent"))
        .args(["detach", "--pin-dir"])
        .arg(agent.pin_dir())
        .output()
        .expect("running jit-agent detach");
    assert!(detach.status.success(), "{detach:?}");
    // The kernel releases a link whose last pin went a moment later.
    wait_for("the trackers to go after detach", || {
        egress_programs(&gw, "gate-in") == 0 && egress_programs(&gw, "jgx0") == 0
    });
}

//! A network-namespace lab: client, gate and server namespaces joined by two veth
//! pairs, with IPv4 and IPv6 on every link. Every test and the demo builds one.
//!
//! ```text
//!  client ns                 gate ns (routes)                 server ns
//!  cli0 ──────────────── gate-in      gate-out ───────────── srv0
//!  client A, client B    (XDP goes    protected and           protected server,
//!                         here)       unprotected subnets     unprotected server
//! ```
//!
//! The addresses are the same in every lab ([`V4`], [`V6`]): each lab lives in its
//! own namespaces, so only the namespace names (and the bpffs directory) need to be
//! unique. Interfaces are created directly inside the lab's namespaces, never in
//! the root namespace, so the machine's own interfaces and routes are never touched.
//!
//! Socket work happens on a thread that has joined the namespace with `setns`; a
//! socket stays in the namespace it was created in, so the socket can then be used
//! from any thread ([`in_netns`]).

use std::{
    collections::VecDeque,
    ffi::OsStr,
    fmt, fs,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::{self, Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use nix::{
    poll::{poll, PollFd, PollFlags},
    sched::CloneFlags,
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Interface of the client namespace, peer of [`GATE_IN_IF`].
pub const CLIENT_IF: &str = "cli0";
/// Gate interface facing the clients: the XDP program is attached here.
pub const GATE_IN_IF: &str = "gate-in";
/// Gate interface facing the servers.
pub const GATE_OUT_IF: &str = "gate-out";
/// Interface of the server namespace, peer of [`GATE_OUT_IF`].
pub const SERVER_IF: &str = "srv0";

/// Where `ip netns add` puts its namespace handles.
const NETNS_DIR: &str = "/run/netns";
/// bpffs mount point; each lab owns one directory under it.
const BPFFS: &str = "/sys/fs/bpf";
/// Every lab name starts with this, followed by `<pid>-<counter>`.
const NAME_PREFIX: &str = "jg";
/// How often server threads look at their stop flag.
const SERVER_POLL: Duration = Duration::from_millis(50);

/// An IP prefix such as `198.51.100.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The addresses of one IP family in a lab. All come from documentation ranges
/// (RFC 5737, RFC 3849), so they cannot collide with a real network.
#[derive(Clone, Copy, Debug)]
pub struct LabAddrs {
    /// "IPv4" or "IPv6", for messages.
    pub family: &'static str,
    /// The client subnet, on `cli0` and `gate-in`.
    pub client_net: Prefix,
    /// First client source address (on `cli0`).
    pub client_a: IpAddr,
    /// Second client source address (also on `cli0`): another user's machine.
    pub client_b: IpAddr,
    /// The gate's address on `gate-in`, the clients' router.
    pub gate_in: IpAddr,
    /// The subnet the gate protects, on `gate-out` and `srv0`.
    pub protected_net: Prefix,
    /// The gate's address on `gate-out` in the protected subnet, the server's router.
    pub gate_out_protected: IpAddr,
    /// The protected server (on `srv0`).
    pub server_protected: IpAddr,
    /// A subnet the gate does not protect, also on `gate-out` and `srv0`.
    pub unprotected_net: Prefix,
    /// The gate's address on `gate-out` in the unprotected subnet.
    pub gate_out_unprotected: IpAddr,
    /// An unprotected server address (also on `srv0`).
    pub server_unprotected: IpAddr,
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(net: u16, host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host))
}

/// IPv4 addresses of every lab.
pub const V4: LabAddrs = LabAddrs {
    family: "IPv4",
    client_net: Prefix {
        addr: v4(192, 0, 2, 0),
        len: 24,
    },
    client_a: v4(192, 0, 2, 10),
    client_b: v4(192, 0, 2, 11),
    gate_in: v4(192, 0, 2, 1),
    protected_net: Prefix {
        addr: v4(198, 51, 100, 0),
        len: 24,
    },
    gate_out_protected: v4(198, 51, 100, 1),
    server_protected: v4(198, 51, 100, 10),
    unprotected_net: Prefix {
        addr: v4(203, 0, 113, 0),
        len: 24,
    },
    gate_out_unprotected: v4(203, 0, 113, 1),
    server_unprotected: v4(203, 0, 113, 20),
};

/// IPv6 addresses of every lab.
pub const V6: LabAddrs = LabAddrs {
    family: "IPv6",
    client_net: Prefix {
        addr: v6(1, 0),
        len: 64,
    },
    client_a: v6(1, 0xa),
    client_b: v6(1, 0xb),
    gate_in: v6(1, 1),
    protected_net: Prefix {
        addr: v6(2, 0),
        len: 64,
    },
    gate_out_protected: v6(2, 1),
    server_protected: v6(2, 0x10),
    unprotected_net: Prefix {
        addr: v6(3, 0),
        len: 64,
    },
    gate_out_unprotected: v6(3, 1),
    server_unprotected: v6(3, 0x20),
};

/// Both families, for tests that check each.
pub const FAMILIES: [&LabAddrs; 2] = [&V4, &V6];

/// A running lab. Dropping it stops its servers, kills every process left in its
/// namespaces, removes its bpffs directory and deletes the namespaces (which
/// removes the veths), also when a test panics.
pub struct Lab {
    name: String,
    client_ns: String,
    gate_ns: String,
    server_ns: String,
    servers: Mutex<Vec<Server>>,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);
/// Labs of one process are built one at a time: the first `ip netns add` sets up
/// the /run/netns mount, and two doing that at once can stack mounts.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

impl Lab {
    /// Builds a lab with fresh, unique namespace names. Needs root.
    pub fn new() -> Result<Lab> {
        require_root()?;
        let _building = BUILD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        remove_stale_labs();
        let name = format!(
            "{NAME_PREFIX}{}-{}",
            process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            client_ns: format!("{name}-cli"),
            gate_ns: format!("{name}-gw"),
            server_ns: format!("{name}-srv"),
            name,
            servers: Mutex::new(Vec::new()),
        };
        // From here on, `lab` going out of scope on an error cleans up what exists.
        lab.build()
            .with_context(|| format!("building lab {}", lab.name))?;
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        let (cli, gw, srv) = (&*self.client_ns, &*self.gate_ns, &*self.server_ns);
        for ns in [cli, gw, srv] {
            ip(&["netns", "add", ns])?;
            // DAD off before any interface exists, so even link-local addresses
            // are usable at once (addresses are also added with `nodad`).
            write_sysctls(
                ns,
                &[
                    ("net/ipv6/conf/all/accept_dad", "0"),
                    ("net/ipv6/conf/default/accept_dad", "0"),
                ],
            )?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        write_sysctls(
            gw,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        )?;

        // Each pair is created inside the client (or gate) namespace with its peer
        // placed straight into the next one.
        ip(&[
            "-n", cli, "link", "add", CLIENT_IF, "type", "veth", "peer", "name", GATE_IN_IF,
            "netns", gw,
        ])?;
        ip(&[
            "-n",
            gw,
            "link",
            "add",
            GATE_OUT_IF,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            srv,
        ])?;
        for (ns, dev) in [
            (cli, CLIENT_IF),
            (gw, GATE_IN_IF),
            (gw, GATE_OUT_IF),
            (srv, SERVER_IF),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }

        for a in FAMILIES {
            let addrs = [
                (cli, CLIENT_IF, a.client_a, a.client_net),
                (cli, CLIENT_IF, a.client_b, a.client_net),
                (gw, GATE_IN_IF, a.gate_in, a.client_net),
                (gw, GATE_OUT_IF, a.gate_out_protected, a.protected_net),
                (gw, GATE_OUT_IF, a.gate_out_unprotected, a.unprotected_net),
                (srv, SERVER_IF, a.server_protected, a.protected_net),
                (srv, SERVER_IF, a.server_unprotected, a.unprotected_net),
            ];
            for (ns, dev, addr, net) in addrs {
                let cidr = format!("{addr}/{}", net.len);
                let mut args = vec!["-n", ns, "addr", "add", &cidr, "dev", dev];
                if addr.is_ipv6() {
                    args.push("nodad");
                }
                ip(&args)?;
            }
            let fam = if a.client_a.is_ipv6() { "-6" } else { "-4" };
            let via_gate_in = a.gate_in.to_string();
            let via_gate_out = a.gate_out_protected.to_string();
            ip(&[
                "-n",
                cli,
                fam,
                "route",
                "add",
                "default",
                "via",
                &via_gate_in,
            ])?;
            ip(&[
                "-n",
                srv,
                fam,
                "route",
                "add",
                "default",
                "via",
                &via_gate_out,
            ])?;
        }
        Ok(())
    }

    /// The lab's unique name (`jg<pid>-<n>`), the prefix of its namespace names.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client namespace, holding client A and client B on [`CLIENT_IF`].
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    /// The gate namespace, routing between [`GATE_IN_IF`] and [`GATE_OUT_IF`].
    pub fn gate_ns(&self) -> &str {
        &self.gate_ns
    }

    /// The server namespace, holding both server addresses on [`SERVER_IF`].
    pub fn server_ns(&self) -> &str {
        &self.server_ns
    }

    /// The lab's namespace names: client, gate, server.
    pub fn namespaces(&self) -> [&str; 3] {
        [&self.client_ns, &self.gate_ns, &self.server_ns]
    }

    /// The namespace that holds `addr`. Panics for an address that is not the lab's.
    pub fn ns_of(&self, addr: IpAddr) -> &str {
        for a in FAMILIES {
            if [a.gate_in, a.gate_out_protected, a.gate_out_unprotected].contains(&addr) {
                return &self.gate_ns;
            }
            // Tests may add more client addresses to cli0 in the client subnet.
            if addr == a.client_a || addr == a.client_b || a.client_net.contains(addr) {
                return &self.client_ns;
            }
            if addr == a.server_protected || addr == a.server_unprotected {
                return &self.server_ns;
            }
        }
        panic!("{addr} is not an address of lab {}", self.name);
    }

    /// This lab's own directory on bpffs (`/sys/fs/bpf/<lab name>`), for pinning.
    /// Created (and bpffs mounted) on first use; removed when the lab is dropped.
    pub fn bpffs_dir(&self) -> PathBuf {
        let dir = Path::new(BPFFS).join(&self.name);
        if let Err(err) = ensure_bpffs().and_then(|()| {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))
        }) {
            panic!("lab {}: no bpffs directory: {err:#}", self.name);
        }
        dir
    }

    /// `ip netns exec <ns> <program>`, ready for more arguments and stdio settings.
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `args` inside `ns` and returns its output, whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> Output {
        let (program, rest) = args.split_first().expect("exec needs a program");
        let mut cmd = self.command(ns, program);
        cmd.args(rest);
        cmd.output()
            .unwrap_or_else(|err| panic!("running `ip netns exec {ns}` failed: {err}"))
    }

    /// Runs `args` inside `ns`, panics unless it succeeds, and returns its stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> String {
        let out = self.exec(ns, args);
        let line: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        assert!(
            out.status.success(),
            "`{}` in {ns} failed ({}): {}",
            line.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `args` in the background inside `ns`, with stdout and stderr inherited.
    /// `ip netns exec` execs the program, so the child's pid is the program's.
    pub fn spawn<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> io::Result<LabProcess> {
        let (program, rest) = args.split_first().expect("spawn needs a program");
        let mut cmd = self.command(ns, program);
        cmd.args(rest);
        LabProcess::spawn(cmd)
    }

    /// `ping` from `src` (an address in `from_ns`) to `dst`: true if one echo
    /// request gets its reply within `timeout`.
    pub fn ping(&self, from_ns: &str, src: IpAddr, dst: IpAddr, timeout: Duration) -> bool {
        let wait = format!("{:.3}", timeout.as_secs_f64().max(0.001));
        let (src, dst) = (src.to_string(), dst.to_string());
        let args = ["ping", "-n", "-q", "-c", "1", "-W", &wait, "-I", &src, &dst];
        self.exec(from_ns, &args).status.success()
    }

    /// A TCP handshake from `src` to `dst:port` in the namespace holding `src`:
    /// true if it completes within `timeout`.
    pub fn tcp_connect(&self, src: IpAddr, dst: IpAddr, port: u16, timeout: Duration) -> bool {
        self.tcp_session(src, dst, port, timeout).is_ok()
    }

    /// Opens a TCP connection from `src` to `dst:port` (to a [`Lab::serve_tcp_echo`]
    /// server) that the caller keeps, to check that it goes on carrying data.
    pub fn tcp_session(
        &self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> io::Result<TcpSession> {
        let dst = SocketAddr::new(dst, port);
        let stream = in_netns(self.ns_of(src), || -> io::Result<TcpStream> {
            let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            socket.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
            socket.connect_timeout(&SockAddr::from(dst), timeout)?;
            socket.set_tcp_nodelay(true)?;
            Ok(socket.into())
        })??;
        Ok(TcpSession {
            stream,
            pending: VecDeque::new(),
            sent: 0,
        })
    }

    /// A UDP request from `src` to `dst:port` (a [`Lab::serve_udp_echo`] server):
    /// true if the echo comes back within `timeout`. The request is re-sent every
    /// 100 ms until then.
    pub fn udp_request(&self, src: IpAddr, dst: IpAddr, port: u16, timeout: Duration) -> bool {
        let dst = SocketAddr::new(dst, port);
        let result = in_netns(self.ns_of(src), || -> io::Result<bool> {
            let socket = UdpSocket::bind(SocketAddr::new(src, 0))?;
            socket.connect(dst)?;
            let request = format!("jitgate-udp {} {:?}", socket.local_addr()?, Instant::now());
            let deadline = Instant::now() + timeout;
            let mut reply = [0u8; 256];
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if left.is_zero() {
                    break;
                }
                socket.send(request.as_bytes())?;
                socket.set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
                match socket.recv(&mut reply) {
                    Ok(n) if &reply[..n] == request.as_bytes() => return Ok(true),
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => {}
                    // ICMP port unreachable: nothing listens there.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        });
        match result {
            Ok(Ok(answered)) => answered,
            Ok(Err(err)) => panic!("UDP request {src} -> {dst} failed locally: {err}"),
            Err(err) => panic!("entering {}: {err}", self.ns_of(src)),
        }
    }

    /// Starts a TCP echo server on `port` of both server addresses, IPv4 and IPv6.
    /// It runs until the lab is dropped and keeps each connection open until the
    /// client closes it.
    pub fn serve_tcp_echo(&self, port: u16) -> Result<()> {
        self.serve_tcp_echo_on(&self.server_ns, &server_addrs(), port)
    }

    /// Starts a TCP echo server on `port` of `addrs` in namespace `ns` (for
    /// services of the gate's own machine, or servers on the client side).
    pub fn serve_tcp_echo_on(&self, ns: &str, addrs: &[IpAddr], port: u16) -> Result<()> {
        let server = Server::start(ns, addrs, port, "TCP", |addr| {
            Ok(Listener::Tcp(TcpListener::bind(addr)?))
        })?;
        self.servers
            .lock()
            .expect("server list poisoned")
            .push(server);
        Ok(())
    }

    /// Starts a UDP echo server on `port` of both server addresses, IPv4 and IPv6.
    /// It runs until the lab is dropped.
    pub fn serve_udp_echo(&self, port: u16) -> Result<()> {
        self.serve_udp_echo_on(&self.server_ns, &server_addrs(), port)
    }

    /// Starts a UDP echo server on `port` of `addrs` in namespace `ns`.
    pub fn serve_udp_echo_on(&self, ns: &str, addrs: &[IpAddr], port: u16) -> Result<()> {
        let server = Server::start(ns, addrs, port, "UDP", |addr| {
            Ok(Listener::Udp(UdpSocket::bind(addr)?))
        })?;
        self.servers
            .lock()
            .expect("server list poisoned")
            .push(server);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let servers = std::mem::take(&mut *self.servers.lock().unwrap_or_else(|p| p.into_inner()));
        for server in servers {
            server.stop();
        }
        for ns in self.namespaces() {
            kill_all_in(ns);
        }
        remove_bpffs_dir(&Path::new(BPFFS).join(&self.name));
        for ns in self.namespaces() {
            if Path::new(NETNS_DIR).join(ns).exists() {
                if let Err(err) = ip(&["netns", "delete", ns]) {
                    eprintln!("lab {}: {err:#}", self.name);
                }
            }
        }
    }
}

/// A TCP connection from a client address to a lab echo server.
pub struct TcpSession {
    stream: TcpStream,
    /// Bytes sent whose echo has not come back yet, in order.
    pending: VecDeque<u8>,
    sent: u64,
}

impl TcpSession {
    /// Sends a fresh message and waits for its echo: true if every byte sent so
    /// far has come back, in order, within `timeout`. Late echoes of messages from
    /// earlier calls that timed out are accepted and skipped.
    pub fn send_and_expect_echo(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.sent += 1;
        let message = format!("jitgate-echo {}\n", self.sent);
        if self
            .stream
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .is_err()
            || self.stream.write_all(message.as_bytes()).is_err()
        {
            return false;
        }
        self.pending.extend(message.bytes());
        let mut buf = [0u8; 4096];
        while !self.pending.is_empty() {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                return false;
            };
            if self.stream.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    for &byte in &buf[..n] {
                        if self.pending.pop_front() != Some(byte) {
                            return false;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// The underlying stream, e.g. for its local and peer addresses.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// A background process in a lab namespace, killed (SIGKILL) and reaped on drop.
pub struct LabProcess {
    child: Child,
}

impl LabProcess {
    /// Starts `cmd` (typically from [`Lab::command`]).
    pub fn spawn(mut cmd: Command) -> io::Result<LabProcess> {
        Ok(LabProcess {
            child: cmd.spawn()?,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps the process: a crash the process cannot react to.
    pub fn kill9(&mut self) -> io::Result<ExitStatus> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
        }
        self.child.wait()
    }

    /// The child, for its pipes, `wait` or `try_wait`.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// Runs `f` on a thread that has joined the network namespace `ns` and returns its
/// result. Sockets made by `f` stay in `ns` and can be used from any thread.
pub fn in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    let handle = fs::File::open(Path::new(NETNS_DIR).join(ns))?;
    thread::scope(|scope| {
        let worker = scope.spawn(move || -> io::Result<R> {
            // setns moves only this thread: the namespace is per task on Linux.
            nix::sched::setns(handle.as_fd(), CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Fails with a clear message unless the process runs as root.
pub fn require_root() -> Result<()> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        bail!(
            "the jitgate lab needs root (it creates network namespaces and loads XDP \
             programs), but this runs as uid {euid}: run the tests as root, e.g. with \
             `cargo xtask test`"
        );
    }
    Ok(())
}

/// Both server addresses of both families, where the lab's echo servers
/// listen by default.
fn server_addrs() -> Vec<IpAddr> {
    FAMILIES
        .iter()
        .flat_map(|a| [a.server_protected, a.server_unprotected])
        .collect()
}

/// An echo server thread in a lab namespace, serving one port on a set of
/// addresses.
struct Server {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Server {
    fn start(
        ns: &str,
        addrs: &[IpAddr],
        port: u16,
        proto: &'static str,
        bind: fn(SocketAddr) -> io::Result<Listener>,
    ) -> Result<Server> {
        let handle = fs::File::open(Path::new(NETNS_DIR).join(ns))
            .with_context(|| format!("opening namespace {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_stop = Arc::clone(&stop);
        let addrs = addrs.to_vec();
        let thread = thread::Builder::new()
            .name(format!("lab-{proto}-echo-{port}"))
            .spawn(move || {
                let bound = (|| -> Result<Vec<Listener>> {
                    nix::sched::setns(handle.as_fd(), CloneFlags::CLONE_NEWNET)
                        .context("entering the server namespace")?;
                    let mut listeners = Vec::new();
                    for ip in addrs {
                        let addr = SocketAddr::new(ip, port);
                        listeners
                            .push(bind(addr).with_context(|| format!("binding {proto} {addr}"))?);
                    }
                    Ok(listeners)
                })();
                match bound {
                    Ok(listeners) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(listeners, &thread_stop);
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })
            .context("starting a server thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Server { stop, thread }),
            Ok(Err(err)) => {
                Err(err.context(format!("starting the {proto} echo server on port {port}")))
            }
            Err(_) => bail!("the {proto} echo server thread for port {port} died while starting"),
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Serves every listener until `stop` is set: echoes UDP datagrams, accepts TCP
/// connections and echoes each on its own thread.
fn serve(listeners: Vec<Listener>, stop: &Arc<AtomicBool>) {
    let mut connections = Vec::new();
    let timeout = nix::poll::PollTimeout::try_from(SERVER_POLL.as_millis() as i32)
        .expect("poll timeout fits");
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<PollFd> = listeners
            .iter()
            .map(|l| {
                let fd = match l {
                    Listener::Tcp(t) => t.as_fd(),
                    Listener::Udp(u) => u.as_fd(),
                };
                PollFd::new(fd, PollFlags::POLLIN)
            })
            .collect();
        if poll(&mut fds, timeout).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
            .collect();
        for (listener, _) in listeners.iter().zip(ready).filter(|(_, ready)| *ready) {
            match listener {
                Listener::Tcp(tcp) => {
                    if let Ok((stream, _)) = tcp.accept() {
                        let stop = Arc::clone(stop);
                        connections.push(thread::spawn(move || echo_tcp(stream, &stop)));
                    }
                }
                Listener::Udp(udp) => {
                    if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&buf[..n], peer);
                    }
                }
            }
        }
        connections.retain(|c: &JoinHandle<()>| !c.is_finished());
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn echo_tcp(mut stream: TcpStream, stop: &AtomicBool) {
    if stream.set_read_timeout(Some(SERVER_POLL)).is_err() {
        return;
    }
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Runs `ip <args>` and fails with its stderr unless it succeeds.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (is iproute2 installed? `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes /proc/sys entries as seen from inside `ns` (the net sysctls are per
/// namespace, resolved for the writing thread).
fn write_sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    in_netns(ns, || -> Result<()> {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key);
            fs::write(&path, value)
                .with_context(|| format!("writing {} in {ns}", path.display()))?;
        }
        Ok(())
    })
    .with_context(|| format!("entering namespace {ns}"))?
}

/// SIGKILLs every process whose network namespace is `ns` (agents a test left
/// running, servers started with `spawn`), except this one.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    let me = process::id();
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|&p| p != me)
        .filter_map(|p| i32::try_from(p).ok())
        .collect();
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // Give the kernel a moment to tear them down before the namespace goes away.
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| running(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` exists and is not a zombie (killed, waiting for its parent to reap it).
fn running(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state != Some("Z") && state != Some("X")
}

fn remove_bpffs_dir(dir: &Path) {
    if dir.exists() {
        if let Err(err) = fs::remove_dir_all(dir) {
            eprintln!("lab: removing {}: {err}", dir.display());
        }
    }
}

/// Mounts bpffs on /sys/fs/bpf unless it is there (`cargo xtask setup` does too).
fn ensure_bpffs() -> Result<()> {
    let is_bpffs = |p: &str| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    };
    if is_bpffs(BPFFS) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context("mounting bpffs on /sys/fs/bpf")
}

/// The pid in a lab name `jg<pid>-<n>[-suffix]`, if `name` is one.
fn lab_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let counter = rest.split('-').next()?;
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes namespaces and bpffs directories of labs whose process is gone (killed
/// before its `Drop` could run). Labs of live processes are left alone.
fn remove_stale_labs() {
    let stale = |name: &str| {
        lab_owner(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                kill_all_in(&name);
                let _ = ip(&["netns", "delete", &name]);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(BPFFS) {
        for entry in entries.flatten() {
            if stale(&entry.file_name().to_string_lossy()) {
                remove_bpffs_dir(&entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_their_hosts() {
        for a in FAMILIES {
            assert!(a.client_net.contains(a.client_a) && a.client_net.contains(a.client_b));
            assert!(a.protected_net.contains(a.server_protected));
            assert!(!a.protected_net.contains(a.server_unprotected));
            assert!(a.unprotected_net.contains(a.server_unprotected));
            assert!(!a.protected_net.contains(a.client_a));
        }
        assert!(!V4.protected_net.contains(V6.server_protected));
        assert_eq!(V6.protected_net.to_string(), "2001:db8:2::/64");
    }

    #[test]
    fn lab_names_parse_back_to_their_owner() {
        assert_eq!(lab_owner("jg1234-0-cli"), Some(1234));
        assert_eq!(lab_owner("jg1234-17"), Some(1234));
        assert_eq!(lab_owner("jgprobe1234"), None);
        assert_eq!(lab_owner("jitgate"), None);
        assert_eq!(lab_owner("jg1234-x"), None);
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        for name in [CLIENT_IF, GATE_IN_IF, GATE_OUT_IF, SERVER_IF] {
            assert!(name.len() <= 15, "{name} is longer than IFNAMSIZ - 1");
        }
    }
}

//! The flood sender: prebuilt Ethernet frames pushed through an AF_PACKET
//! socket with `sendmmsg` (this kernel has no pktgen), and the CPU
//! accounting read around it.
//!
//! Every run is bounded by a packet count and a duration, and stops by itself.

use std::{
    io, mem,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::lab::{in_netns, Lab};

/// An interface's MAC address inside a namespace, from `ip -j link`.
pub fn mac_of(lab: &Lab, ns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = lab.exec(ns, &["ip", "-j", "link", "show", "dev", iface]);
    if !out.status.success() {
        bail!("`ip link show {iface}` in {ns} failed");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `ip -j link`")?;
    let text = v[0]["address"]
        .as_str()
        .with_context(|| format!("{iface} has no MAC address"))?;
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).context("parsing a MAC address")?;
    }
    Ok(mac)
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A minimum-size (60-byte, 64 on the wire) IPv4/UDP frame with valid IP
/// checksum; the UDP checksum is 0 (none), which IPv4 allows.
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let payload = 18;
    let total = (20 + 8 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0u8, payload));
    f
}

/// What a flood is: where it goes, how fast, how long.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    /// Namespace and interface the frames leave from.
    pub ns: String,
    pub iface: String,
    /// Frames sent in rotation.
    pub frames: Vec<Vec<u8>>,
    /// Sender threads (each with its own socket).
    pub threads: usize,
    /// Offered load in packets per second over all threads; `None`: as fast as possible.
    pub rate_pps: Option<f64>,
    pub duration: Duration,
    /// Upper bound on packets over all threads.
    pub max_packets: u64,
}

/// What the senders did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodResult {
    /// Frames the kernel accepted.
    pub sent: u64,
    /// Frames refused by the kernel (ENOBUFS: the device queue was full).
    pub refused: u64,
    pub elapsed: Duration,
}

const BATCH: usize = 64;

fn packet_socket(iface: &str) -> io::Result<(i32, libc::sockaddr_ll)> {
    // SAFETY: plain socket(2); the fd is checked below and owned by the caller.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed. Skipping the
    // qdisc measures the receive path, not the sender's queueing; a kernel
    // without it still works, so the result is ignored.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            mem::size_of::<libc::c_int>() as u32,
        );
    }
    let name =
        std::ffi::CString::new(iface).map_err(|_| io::Error::other("interface name has a NUL"))?;
    // SAFETY: `name` is a valid C string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        let err = io::Error::last_os_error();
        // SAFETY: closing the fd made above.
        unsafe { libc::close(fd) };
        return Err(err);
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    Ok((fd, addr))
}

/// Sends each frame once through an AF_PACKET socket on `iface` inside
/// `ns` (crafted packets for spoofing tests).
pub fn send_raw_frames(ns: &str, iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    in_netns(ns, || -> io::Result<()> {
        let (fd, addr) = packet_socket(iface)?;
        let mut result = Ok(());
        for frame in frames {
            // SAFETY: `frame` and `addr` outlive the call; their sizes are passed.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if sent < 0 {
                result = Err(io::Error::last_os_error());
                break;
            }
        }
        // SAFETY: closing the fd `packet_socket` made.
        unsafe { libc::close(fd) };
        result
    })
    .context("entering the namespace")?
    .with_context(|| format!("sending raw frames on {iface} in {ns}"))
}

/// When one sender thread stops, and how fast it goes.
struct Pace<'a> {
    rate_pps: Option<f64>,
    deadline: Instant,
    max: u64,
    stop: &'a AtomicBool,
}

/// Sends frames from one thread, starting at frame `offset`, until the
/// deadline, `max` packets, or `stop`.
fn send_loop(
    fd: i32,
    addr: &libc::sockaddr_ll,
    frames: &[Vec<u8>],
    pace: Pace<'_>,
    offset: usize,
) -> (u64, u64) {
    let Pace {
        rate_pps,
        deadline,
        max,
        stop,
    } = pace;
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
    let (mut sent, mut refused) = (0u64, 0u64);
    let mut next = offset % frames.len();
    let start = Instant::now();
    while sent + refused < max && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(rate) = rate_pps {
            // Paced: wait until this batch is due.
            let due = start + Duration::from_secs_f64((sent + refused) as f64 / rate);
            if due > now {
                let wait = due - now;
                if wait > Duration::from_micros(200) {
                    thread::sleep(wait - Duration::from_micros(100));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
        }
        let n = BATCH.min((max - sent - refused) as usize);
        iovs.clear();
        hdrs.clear();
        for _ in 0..n {
            let f = &frames[next];
            next = (next + 1) % frames.len();
            iovs.push(libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            });
        }
        for iov in iovs.iter_mut() {
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            let mut msg: libc::msghdr = unsafe { mem::zeroed() };
            msg.msg_name = (addr as *const libc::sockaddr_ll) as *mut libc::c_void;
            msg.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = iov;
            msg.msg_iovlen = 1;
            hdrs.push(libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            });
        }
        // SAFETY: `hdrs` points at `iovs` and `frames`, which outlive the call;
        // the kernel only reads them.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            // The device refused the first frame (queue full): count it and go on.
            refused += 1;
        } else {
            sent += r as u64;
            if (r as usize) < n {
                // The frame after the last accepted one was refused.
                refused += 1;
            }
        }
    }
    (sent, refused)
}

/// Runs a flood to its end and returns what was sent.
pub fn flood(spec: &FloodSpec) -> Result<FloodResult> {
    if spec.frames.is_empty() {
        bail!("a flood needs frames");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut sockets = Vec::new();
    for _ in 0..spec.threads.max(1) {
        let iface = spec.iface.clone();
        let s = in_netns(&spec.ns, move || packet_socket(&iface))
            .with_context(|| format!("entering {}", spec.ns))?
            .context("opening the AF_PACKET socket")?;
        sockets.push(s);
    }
    let per_thread_rate = spec.rate_pps.map(|r| r / sockets.len() as f64);
    let per_thread_max = spec.max_packets / sockets.len() as u64;
    let start = Instant::now();
    let deadline = start + spec.duration;
    let totals: Vec<(u64, u64)> = thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .iter()
            .enumerate()
            .map(|(i, (fd, addr))| {
                let stop = &stop;
                let frames = &spec.frames;
                scope.spawn(move || {
                    let pace = Pace {
                        rate_pps: per_thread_rate,
                        deadline,
                        max: per_thread_max,
                        stop,
                    };
                    send_loop(*fd, addr, frames, pace, i * frames.len() / 2)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0)))
            .collect()
    });
    let elapsed = start.elapsed();
    for (fd, _) in sockets {
        // SAFETY: closing the sockets opened above, once.
        unsafe { libc::close(fd) };
    }
    Ok(FloodResult {
        sent: totals.iter().map(|t| t.0).sum(),
        refused: totals.iter().map(|t| t.1).sum(),
        elapsed,
    })
}

/// CPU time counters from /proc/stat, in nanoseconds (all CPUs).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub softirq_ns: f64,
    /// Everything but idle and iowait.
    pub busy_ns: f64,
}

/// Reads /proc/stat. Its unit is USER_HZ (sysconf(_SC_CLK_TCK)); without
/// CONFIG_IRQ_TIME_ACCOUNTING the kernel samples softirq time at each tick.
pub fn cpu_times() -> Result<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 7 {
        bail!("/proc/stat cpu line too short: {line}");
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ns = |ticks: f64| ticks * 1e9 / hz;
    // user nice system idle iowait irq softirq steal ...
    let total: f64 = v.iter().take(8).sum();
    Ok(CpuTimes {
        softirq_ns: ns(v[6]),
        busy_ns: ns(total - v[3] - v[4]),
    })
}

/// The kernel's softirq accounting, for the report.
pub fn irq_time_accounting() -> &'static str {
    let config = std::process::Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r) 2>/dev/null",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if config.contains("CONFIG_IRQ_TIME_ACCOUNTING=y") {
        "precise (CONFIG_IRQ_TIME_ACCOUNTING=y)"
    } else if config.is_empty() {
        "unknown accounting (no kernel config readable)"
    } else {
        "tick-sampled (CONFIG_IRQ_TIME_ACCOUNTING is off)"
    }
}

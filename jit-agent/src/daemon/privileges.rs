//! Dropping privileges once start-up is done.
//!
//! Start-up needs more: CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to load the
//! XDP program (without CAP_PERFMON the verifier refuses its pointer
//! arithmetic: "pointer arithmetic with it prohibited for !root"), CAP_CHOWN
//! to give the API socket its group, and CAP_SETPCAP to shrink the bounding
//! set here. Afterwards the agent works on the file descriptors it holds,
//! and keeps:
//!
//! - `CAP_NET_ADMIN`: attaching XDP through netlink (`RTM_SETLINK`), which
//!   aya falls back to where a bpf link cannot be made, when the gate
//!   re-attaches to a re-created interface.
//! - `CAP_BPF`: creating a map again (`BPF_MAP_CREATE`), e.g. should a pin
//!   have to be rebuilt rather than re-pinned.
//!
//! Measured on this kernel (6.18), the rest of the agent's work after
//! start-up needs no capability at all: map lookups, updates and deletes,
//! ring buffer reads, `BPF_OBJ_GET`/`BPF_OBJ_PIN` on bpffs (plain file
//! permissions, and the pins are root's), XDP `BPF_LINK_CREATE` with a held
//! program fd, `BPF_OBJ_GET_INFO_BY_FD`, and SO_PEERCRED. `CAP_SYS_ADMIN` is
//! not kept: the one bpf command the agent could want it for,
//! `BPF_*_GET_FD_BY_ID`, is never used (objects are reopened by pin path).
//! Nor is `CAP_PERFMON`: the program is never loaded again by a running
//! agent; a new program means a restart, which begins with the start-up set.
//!
//! Capabilities, the bounding set and no_new_privs belong to each thread,
//! not the process, and the async runtime's threads already exist when
//! start-up ends. So every thread is made to drop its own: the caller's here,
//! every other one from a signal handler that makes only raw syscalls, and
//! the drop is checked for every thread in `/proc/self/task` until none is
//! left with more. Threads started later inherit the reduced set.

use std::{
    sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Capability numbers from `linux/capability.h`.
const CAP_NET_ADMIN: u32 = 12;
const CAP_BPF: u32 = 39;

/// What the agent keeps after start-up, and why is in the module docs.
pub const KEPT: [(u32, &str); 2] = [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_BPF, "CAP_BPF")];

/// The mask of [`KEPT`], as `/proc/<pid>/status` shows it.
pub const KEPT_MASK: u64 = (1 << CAP_NET_ADMIN) | (1 << CAP_BPF);

/// How long the other threads get to drop theirs; they only have to wake.
const DEADLINE: Duration = Duration::from_secs(5);

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The mask each thread reduces itself to (KEPT_MASK within what it has).
static TARGET: AtomicU64 = AtomicU64::new(0);
/// The first failure in any thread: step number and errno.
static FAILED_STEP: AtomicU32 = AtomicU32::new(0);
static FAILED_ERRNO: AtomicI32 = AtomicI32::new(0);

const STEP_BOUNDING: u32 = 1;
const STEP_AMBIENT: u32 = 2;
const STEP_CAPGET: u32 = 3;
const STEP_CAPSET: u32 = 4;
const STEP_NO_NEW_PRIVS: u32 = 5;

fn step_name(step: u32) -> &'static str {
    match step {
        STEP_BOUNDING => "dropping from the bounding set",
        STEP_AMBIENT => "clearing the ambient set",
        STEP_CAPGET => "reading the capability sets",
        STEP_CAPSET => "reducing the effective, permitted and inheritable sets",
        STEP_NO_NEW_PRIVS => "setting no_new_privs",
        _ => "an unknown step",
    }
}

fn errno() -> libc::c_int {
    // SAFETY: errno is a thread-local the C library always provides.
    unsafe { *libc::__errno_location() }
}

fn fail(step: u32) {
    let err = errno();
    if FAILED_STEP
        .compare_exchange(0, step, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        FAILED_ERRNO.store(err, Ordering::SeqCst);
    }
}

/// Reduces the calling thread. Only syscalls and atomics, so it is safe in a
/// signal handler, and idempotent, since a slow thread may be asked twice.
fn drop_in_this_thread() {
    let target = TARGET.load(Ordering::SeqCst);
    // Numbers past the kernel's last capability read as EINVAL, not 1, so
    // walking all 64 needs no /proc/sys (which a unit may hide).
    for cap in 0..64u32 {
        if target & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only reads them.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if present != 1 {
            continue;
        }
        // SAFETY: as above. Dropping needs CAP_SETPCAP, still held here
        // because the capset below comes after.
        let dropped = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if dropped != 0 {
            return fail(STEP_BOUNDING);
        }
    }
    // SAFETY: integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return fail(STEP_AMBIENT);
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 takes one header and two data structs, both valid
    // for the duration of the call.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return fail(STEP_CAPGET);
    }
    let permitted = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
    let keep = permitted & target;
    let low = keep as u32;
    let high = (keep >> 32) as u32;
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: as for capget; lowering sets never needs a privilege.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return fail(STEP_CAPSET);
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        fail(STEP_NO_NEW_PRIVS);
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    let saved = errno();
    drop_in_this_thread();
    // SAFETY: restoring the interrupted code's errno, as handlers must.
    unsafe { *libc::__errno_location() = saved };
}

/// The signal that asks a thread to drop; glibc keeps the first two
/// real-time signals for itself and `SIGRTMIN()` already skips them.
fn drop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

fn set_handler(handler: libc::sighandler_t) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    // Interrupted blocking calls resume instead of failing with EINTR.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: action is fully initialised; the old action is not wanted.
    if unsafe { libc::sigaction(drop_signal(), &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The sets of one thread, as the kernel reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadCaps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl ThreadCaps {
    /// Parses the `Cap*:` and `NoNewPrivs:` lines of a `/proc` status file.
    pub fn parse(status: &str) -> Option<ThreadCaps> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
        Some(ThreadCaps {
            inheritable: hex("CapInh:")?,
            permitted: hex("CapPrm:")?,
            effective: hex("CapEff:")?,
            bounding: hex("CapBnd:")?,
            ambient: hex("CapAmb:")?,
            no_new_privs: field("NoNewPrivs:")? == "1",
        })
    }

    fn is_reduced_to(&self, target: u64) -> bool {
        self.effective & !target == 0
            && self.permitted & !target == 0
            && self.bounding & !target == 0
            && self.inheritable == 0
            && self.ambient == 0
            && self.no_new_privs
    }
}

fn thread_ids() -> anyhow::Result<Vec<libc::pid_t>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        let entry = entry.context("listing /proc/self/task")?;
        if let Some(id) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// A thread's sets, or `None` if it has exited meanwhile.
fn thread_caps(tid: libc::pid_t) -> Option<ThreadCaps> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    ThreadCaps::parse(&status)
}

fn names(mask: u64) -> String {
    let kept: Vec<&str> = KEPT
        .iter()
        .filter(|(cap, _)| mask & (1 << cap) != 0)
        .map(|(_, name)| *name)
        .collect();
    if kept.is_empty() {
        "none".into()
    } else {
        kept.join(", ")
    }
}

/// What [`drop_after_startup`] left.
#[derive(Debug)]
pub struct Dropped {
    /// The capabilities every thread still has.
    pub kept: String,
    /// Threads reduced (including the caller).
    pub threads: usize,
}

/// Reduces every thread of the process to [`KEPT`] in its effective,
/// permitted and bounding sets, clears the inheritable and ambient sets and
/// sets no_new_privs; fails unless all threads were reduced.
pub fn drop_after_startup() -> anyhow::Result<Dropped> {
    TARGET.store(KEPT_MASK, Ordering::SeqCst);
    set_handler(on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t)
        .context("installing the privilege-drop signal handler")?;

    drop_in_this_thread();
    // SAFETY: no arguments.
    let pid = unsafe { libc::getpid() };
    let deadline = Instant::now() + DEADLINE;
    let threads = loop {
        if FAILED_STEP.load(Ordering::SeqCst) != 0 {
            break 0;
        }
        let ids = thread_ids()?;
        let pending: Vec<libc::pid_t> = ids
            .iter()
            .copied()
            .filter(|&tid| thread_caps(tid).is_some_and(|c| !c.is_reduced_to(KEPT_MASK)))
            .collect();
        if pending.is_empty() {
            break ids.len();
        }
        if Instant::now() > deadline {
            bail!(
                "threads {pending:?} did not drop their capabilities within {}s",
                DEADLINE.as_secs()
            );
        }
        for tid in pending {
            // SAFETY: a signal to a thread of this process; a thread that has
            // just exited makes this fail harmlessly with ESRCH.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, drop_signal()) };
        }
        // Long enough for a woken thread to run its handler, so a slow one is
        // not sent a queue of signals.
        std::thread::sleep(Duration::from_millis(20));
    };
    let step = FAILED_STEP.load(Ordering::SeqCst);
    if step != 0 {
        let err = std::io::Error::from_raw_os_error(FAILED_ERRNO.load(Ordering::SeqCst));
        bail!(
            "dropping privileges failed while {}: {err}",
            step_name(step)
        );
    }
    // Every thread is done; a stray signal of this number must not kill the
    // process (the default for real-time signals).
    set_handler(libc::SIG_IGN).context("retiring the privilege-drop signal handler")?;
    let own = thread_caps(
        // SAFETY: no arguments.
        unsafe { libc::gettid() },
    )
    .context("reading this thread's capabilities")?;
    Ok(Dropped {
        kept: names(own.effective),
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_lines_parse() {
        let status = "Name:\tjit-agent\nCapInh:\t0000000000000000\nCapPrm:\t0000008000001000\n\
                      CapEff:\t0000008000001000\nCapBnd:\t0000008000001000\nCapAmb:\t0000000000000000\n\
                      NoNewPrivs:\t1\nSeccomp:\t0\n";
        let caps = ThreadCaps::parse(status).expect("parses");
        assert_eq!(caps.effective, KEPT_MASK);
        assert!(caps.no_new_privs);
        assert!(caps.is_reduced_to(KEPT_MASK));
        let root = status.replace("CapBnd:\t0000008000001000", "CapBnd:\t000001ffffffffff");
        assert!(!ThreadCaps::parse(&root).unwrap().is_reduced_to(KEPT_MASK));
        assert_eq!(names(KEPT_MASK), "CAP_NET_ADMIN, CAP_BPF");
    }
}

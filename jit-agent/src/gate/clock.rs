//! The kernel's boot clock, the one `bpf_ktime_get_boot_ns` reads.

use nix::time::{clock_gettime, ClockId};

/// Nanoseconds on CLOCK_BOOTTIME: monotonic, counts suspend, immune to
/// wall-clock changes.
pub fn boot_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

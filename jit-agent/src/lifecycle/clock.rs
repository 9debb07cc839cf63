//! The two clocks a grant lives by.
//!
//! Grants are timed on the boot clock (the kernel's `CLOCK_BOOTTIME`, which
//! is what `bpf_ktime_get_boot_ns()` reads in the XDP program), so that a
//! jump of the wall clock neither extends nor shortens one. Role windows
//! follow the wall clock, because "08:00 in Berlin" is a wall-clock idea.
//! Both are injectable so tests can move them independently.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A source of both clocks.
pub trait Clock: Send + Sync {
    /// Nanoseconds since boot, counting suspend: `CLOCK_BOOTTIME`.
    fn boot_ns(&self) -> u64;
    /// The wall clock.
    fn wall(&self) -> DateTime<Utc>;
    /// Identifies the current boot; boot-clock readings from another boot
    /// mean nothing now. On Linux, `/proc/sys/kernel/random/boot_id`.
    fn boot_id(&self) -> String;
}

/// One reading of both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Boot clock, ns.
    pub boot_ns: u64,
    /// Wall clock.
    pub wall: DateTime<Utc>,
}

impl Now {
    /// Reads a clock.
    pub fn of(clock: &dyn Clock) -> Now {
        Now {
            boot_ns: clock.boot_ns(),
            wall: clock.wall(),
        }
    }

    /// The boot-clock instant `d` from now, saturating.
    pub fn boot_after(&self, d: Duration) -> u64 {
        self.boot_ns.saturating_add(duration_ns(d))
    }

    /// The wall-clock instant `d` from now, saturating at the far future.
    pub fn wall_after(&self, d: Duration) -> DateTime<Utc> {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| self.wall.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A duration in ns, saturating.
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The real clocks.
#[derive(Debug, Clone)]
pub struct SystemClock {
    boot_id: String,
}

impl SystemClock {
    /// Reads the boot id once; it cannot change while the process runs.
    pub fn new() -> std::io::Result<SystemClock> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
            .trim()
            .to_owned();
        Ok(SystemClock { boot_id })
    }
}

impl Clock for SystemClock {
    fn boot_ns(&self) -> u64 {
        match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
            Ok(ts) => u64::try_from(ts.tv_sec())
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::try_from(ts.tv_nsec()).unwrap_or(0)),
            // CLOCK_BOOTTIME exists on every kernel that runs XDP; should it
            // fail, the largest reading makes every grant look expired,
            // which fails closed.
            Err(_) => u64::MAX,
        }
    }

    fn wall(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn boot_id(&self) -> String {
        self.boot_id.clone()
    }
}

/// A clock for tests: both clocks stand still until moved. Clones share the
/// same time, so a test can keep one and give one to an engine.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualState>>,
}

#[derive(Debug)]
struct ManualState {
    boot_ns: u64,
    wall: DateTime<Utc>,
    boot_id: String,
}

impl ManualClock {
    /// Starts at `wall`, an hour after boot, in boot "boot-1".
    pub fn new(wall: DateTime<Utc>) -> ManualClock {
        ManualClock {
            inner: Arc::new(Mutex::new(ManualState {
                boot_ns: 3_600_000_000_000,
                wall,
                boot_id: "boot-1".to_owned(),
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ManualState) -> T) -> T {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// Lets time pass on both clocks.
    pub fn advance(&self, d: Duration) {
        self.with(|s| {
            s.boot_ns = s.boot_ns.saturating_add(duration_ns(d));
            s.wall += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        });
    }

    /// Moves only the wall clock, as NTP or an operator might.
    pub fn jump_wall(&self, by: chrono::Duration) {
        self.with(|s| s.wall += by);
    }

    /// Sets the wall clock.
    pub fn set_wall(&self, wall: DateTime<Utc>) {
        self.with(|s| s.wall = wall);
    }

    /// A reboot `down` long: the boot clock restarts near zero under a new
    /// boot id; the wall clock moves on.
    pub fn reboot(&self, down: Duration, boot_id: &str) {
        self.with(|s| {
            s.boot_ns = 5_000_000_000;
            s.wall += chrono::Duration::from_std(down).unwrap_or(chrono::Duration::zero());
            s.boot_id = boot_id.to_owned();
        });
    }
}

impl Clock for ManualClock {
    fn boot_ns(&self) -> u64 {
        self.with(|s| s.boot_ns)
    }

    fn wall(&self) -> DateTime<Utc> {
        self.with(|s| s.wall)
    }

    fn boot_id(&self) -> String {
        self.with(|s| s.boot_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads() {
        let Ok(c) = SystemClock::new() else {
            // No /proc (unusual container): nothing to test.
            return;
        };
        let a = c.boot_ns();
        let b = c.boot_ns();
        assert!(a > 0 && b >= a);
        assert!(!c.boot_id().is_empty());
    }

    #[test]
    fn manual_clock_moves_clocks_separately() {
        let c = ManualClock::new(DateTime::UNIX_EPOCH);
        let shared = c.clone();
        let boot = c.boot_ns();
        c.jump_wall(chrono::Duration::hours(5));
        assert_eq!(shared.boot_ns(), boot);
        assert_eq!(
            shared.wall(),
            DateTime::UNIX_EPOCH + chrono::Duration::hours(5)
        );
        c.advance(Duration::from_secs(10));
        assert_eq!(shared.boot_ns(), boot + 10_000_000_000);
    }
}

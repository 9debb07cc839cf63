//! Deadlines on the boot clock, woken by a timer rather than a polling loop.

use std::{collections::BTreeSet, time::Duration};

use tokio::{sync::Notify, time::Instant};

use crate::gate::clock;

/// A set of (deadline, id) pairs; `wait` sleeps until the earliest is due.
#[derive(Debug, Default)]
pub struct Deadlines {
    due: std::sync::Mutex<BTreeSet<(u64, u64)>>,
    changed: Notify,
}

impl Deadlines {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or moves a deadline for an id.
    pub fn set(&self, id: u64, boot_ns: u64) {
        let mut due = self.due.lock().expect("deadline lock");
        due.retain(|(_, i)| *i != id);
        due.insert((boot_ns, id));
        drop(due);
        self.changed.notify_one();
    }

    pub fn clear(&self, id: u64) {
        self.due.lock().expect("deadline lock").retain(|(_, i)| *i != id);
    }

    pub fn len(&self) -> usize {
        self.due.lock().expect("deadline lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns every id whose deadline is at or before `now`.
    pub fn take_due(&self, now_boot_ns: u64) -> Vec<(u64, u64)> {
        let mut due = self.due.lock().expect("deadline lock");
        let later = due.split_off(&(now_boot_ns.saturating_add(1), 0));
        let ready = std::mem::replace(&mut *due, later);
        ready.into_iter().collect()
    }

    /// Sleeps until the earliest deadline is due or the set changes.
    pub async fn wait(&self) {
        let next = self.due.lock().expect("deadline lock").first().map(|(t, _)| *t);
        let notified = self.changed.notified();
        match next {
            None => notified.await,
            Some(at) => {
                let now = clock::boot_ns();
                if at <= now {
                    return;
                }
                let sleep = tokio::time::sleep_until(Instant::now() + Duration::from_nanos(at - now));
                tokio::select! {
                    _ = sleep => {}
                    _ = notified => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_due_returns_only_past_deadlines_in_order() {
        let d = Deadlines::new();
        d.set(1, 300);
        d.set(2, 100);
        d.set(3, 200);
        d.set(1, 150);
        assert_eq!(d.take_due(200), vec![(100, 2), (150, 1), (200, 3)]);
        assert!(d.is_empty());
    }

    #[tokio::test]
    async fn wait_wakes_at_the_deadline() {
        let d = Deadlines::new();
        let start = clock::boot_ns();
        d.set(9, start + 20_000_000);
        d.wait().await;
        assert!(clock::boot_ns() >= start + 20_000_000);
        assert_eq!(d.take_due(clock::boot_ns()), vec![(start + 20_000_000, 9)]);
    }
}

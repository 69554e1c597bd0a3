//! `/health`: the poll loops' heartbeats, healthy only while every one of them is alive.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// What the poll loop is doing, so `/health` can tell waiting from wedged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Starting = 0,
    /// Every permit is taken by running jobs: healthy however long it lasts.
    WaitingPermits = 1,
    WaitingProtection = 2,
    Receiving = 3,
    Idle = 4,
    Stopping = 5,
    /// Giving way to ECS: healthy however long it lasts, or ECS would replace the task.
    Yielding = 6,
}

/// One poller's heartbeat: what it is doing and since when.
struct Beat {
    phase: AtomicU8,
    since_ms: AtomicU64,
}

/// The poll loops' heartbeats (one per queue): healthy only while every one of them is alive.
pub(crate) struct Health {
    base: Instant,
    beats: Vec<Beat>,
    last_receive_unix_ms: AtomicU64,
    /// How long a receive (or start-up) may take beyond the long-poll wait.
    receive_limit: Duration,
    idle_limit: Duration,
    protection_limit: Duration,
}

impl Health {
    pub(crate) fn for_pollers(
        pollers: usize,
        wait: Duration,
        idle_window: Duration,
        grace: Duration,
    ) -> Self {
        Self {
            base: Instant::now(),
            beats: (0..pollers.max(1))
                .map(|_| Beat {
                    phase: AtomicU8::new(Phase::Starting as u8),
                    since_ms: AtomicU64::new(0),
                })
                .collect(),
            last_receive_unix_ms: AtomicU64::new(0),
            receive_limit: wait + grace,
            // An idle poller may wait for the others' long polls before its idle window starts.
            idle_limit: wait + idle_window + grace,
            // The agent may be down for a while; a task that cannot get protection for this long
            // is better replaced.
            protection_limit: grace.max(Duration::from_secs(300)),
        }
    }

    /// Every poller is now in `phase` (start-up, stopping).
    pub(crate) fn set(&self, phase: Phase) {
        for slot in 0..self.beats.len() {
            self.set_for(slot, phase);
        }
    }

    /// Poller `slot` is now in `phase`.
    pub(crate) fn set_for(&self, slot: usize, phase: Phase) {
        if let Some(b) = self.beats.get(slot) {
            b.since_ms
                .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
            b.phase.store(phase as u8, Ordering::Relaxed);
        }
    }

    pub(crate) fn received(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_receive_unix_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn last_receive_unix_seconds(&self) -> f64 {
        self.last_receive_unix_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// `Ok` while every poll loop is alive; otherwise why not, naming every stuck one.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut stuck = Vec::new();
        for (slot, b) in self.beats.iter().enumerate() {
            let since = Duration::from_millis(b.since_ms.load(Ordering::Relaxed));
            let stuck_for = self.base.elapsed().saturating_sub(since);
            let (name, limit) = match b.phase.load(Ordering::Relaxed) {
                0 => ("starting", Some(self.receive_limit)),
                1 => ("waiting for a free job slot", None),
                2 => ("waiting for task protection", Some(self.protection_limit)),
                3 => ("receiving", Some(self.receive_limit)),
                4 => ("idle", Some(self.idle_limit)),
                6 => ("yielding", None),
                _ => ("stopping", None),
            };
            match limit {
                Some(limit) if stuck_for > limit => {
                    let which = if self.beats.len() > 1 {
                        format!(" (queue {})", slot + 1)
                    } else {
                        String::new()
                    };
                    stuck.push(format!(
                        "poll loop{which} {name} for {}s (limit {}s)",
                        stuck_for.as_secs(),
                        limit.as_secs()
                    ));
                }
                _ => {}
            }
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(stuck.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` pollers: a 20 s long poll, a 5 s idle window and 30 s of grace.
    fn pollers(n: usize) -> Health {
        Health::for_pollers(
            n,
            Duration::from_secs(20),
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn one_wedged_poller_makes_the_worker_unhealthy() {
        let h = pollers(2);
        h.set_for(0, Phase::Receiving);
        h.set_for(1, Phase::Receiving);
        tokio::time::sleep(Duration::from_secs(40)).await;
        // Poller 0 keeps completing receives; poller 1's receive never returns.
        h.set_for(0, Phase::Receiving);
        assert!(h.check().is_ok(), "within the limit");
        tokio::time::sleep(Duration::from_secs(15)).await;
        h.set_for(0, Phase::Receiving);
        let e = h.check().expect_err("queue 2 is stuck");
        assert!(e.contains("queue 2") && e.contains("receiving"), "{e}");
        assert!(!e.contains("queue 1"), "queue 1 is alive: {e}");
        h.set_for(1, Phase::WaitingPermits);
        assert!(
            h.check().is_ok(),
            "waiting for job slots is healthy however long"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_wedged_poller_is_named() {
        let h = pollers(3);
        h.set_for(0, Phase::Receiving);
        h.set_for(1, Phase::WaitingProtection);
        h.set_for(2, Phase::Receiving);
        // Past the protection limit (5 min), which is the longest.
        tokio::time::sleep(Duration::from_secs(301)).await;
        h.set_for(2, Phase::Receiving);
        let e = h.check().expect_err("queues 1 and 2 are stuck");
        assert!(e.contains("(queue 1) receiving for 301s"), "{e}");
        assert!(e.contains("(queue 2) waiting for task protection"), "{e}");
        assert!(!e.contains("queue 3"), "queue 3 is alive: {e}");
    }
}

//! One task, one protection, several pollers (one per queue).
//!
//! Each poller says whether it needs protection; the task stays protected while any of them does.
//! Going idle is done together: a poller that finds no work opens an *idle period* and waits;
//! the others join it when their own long polls come back empty. Only when every poller has let
//! go is protection released, and the task then stays unprotected for the idle window so ECS can
//! stop it. Without this, pollers going idle at different times would take turns holding
//! protection and the task could never be scaled in. Any poller that receives messages ends the
//! idle period at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Protector, Status};
use crate::sync::lock;

#[derive(Debug, Default)]
struct State {
    /// Which pollers need protection now.
    wanting: Vec<bool>,
    /// The idle period under way, if any (its number, so a late finisher cannot end a newer one).
    idle: Option<u64>,
    periods: u64,
}

/// Shared by the pollers of one worker; see the module docs.
pub(crate) struct Demand {
    protector: Arc<Protector>,
    /// Jobs running in the whole worker: protection is never released while any runs.
    running: Arc<AtomicUsize>,
    state: Mutex<State>,
    /// Bumped on every change of `state`, to wake waiters.
    changed: watch::Sender<u64>,
}

impl Demand {
    pub(crate) fn new(
        protector: Arc<Protector>,
        pollers: usize,
        running: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            protector,
            running,
            state: Mutex::new(State {
                wanting: vec![false; pollers],
                ..State::default()
            }),
            changed: watch::Sender::new(0),
        }
    }

    pub(crate) fn protector(&self) -> &Protector {
        &self.protector
    }

    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = lock(&self.state);
        let out = f(&mut s);
        drop(s);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        out
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&lock(&self.state))
    }

    /// Poller `slot` needs protection until at least `until`.
    pub(crate) fn hold(&self, slot: usize, until: Instant) {
        self.update(|s| s.wanting[slot] = true);
        self.protector.hold_until(until);
    }

    fn jobs_running(&self) -> bool {
        self.running.load(Ordering::Acquire) > 0
    }

    /// Poller `slot` no longer needs protection; released once no poller does and no job runs.
    pub(crate) fn release(&self, slot: usize) {
        let none_left = self.update(|s| {
            s.wanting[slot] = false;
            !s.wanting.iter().any(|w| *w)
        });
        if none_left && !self.jobs_running() {
            self.protector.release();
        }
    }

    /// A poller received messages (call after counting them as running): any idle period is over.
    pub(crate) fn busy(&self) {
        if self.read(|s| s.idle.is_some()) {
            self.update(|s| s.idle = None);
        }
    }

    /// Before a protected receive: while an idle period is under way, wait it out without
    /// wanting protection (so the release can happen). False if `cancel` fired.
    pub(crate) async fn wait_not_idle(&self, slot: usize, cancel: &CancellationToken) -> bool {
        if self.read(|s| s.idle.is_none()) {
            return true;
        }
        self.release(slot);
        let mut rx = self.changed.subscribe();
        tokio::select! {
            r = rx.wait_for(|_| self.read(|s| s.idle.is_none())) => r.is_ok(),
            _ = cancel.cancelled() => false,
        }
    }

    /// Poller `slot` found no work and no job is running: release, wait until every poller has
    /// let go and protection is off, then stay off for `window`. Returns early when another
    /// poller gets messages. False if `cancel` fired.
    pub(crate) async fn idle(
        &self,
        slot: usize,
        window: Duration,
        cancel: &CancellationToken,
    ) -> bool {
        let period = self.update(|s| match s.idle {
            Some(p) => p,
            None => {
                s.periods += 1;
                s.idle = Some(s.periods);
                s.periods
            }
        });
        self.release(slot);
        let over = |s: &State| s.idle != Some(period);
        let mut changes = self.changed.subscribe();
        let mut status = self.protector.subscribe();
        // Phase 1: until nobody wants protection and it is actually off.
        loop {
            if self.read(over) {
                return true;
            }
            if self.jobs_running() {
                // Another poller got work just as this one went idle.
                self.end(period);
                return true;
            }
            let nobody = self.read(|s| !s.wanting.iter().any(|w| *w));
            if nobody && !matches!(*status.borrow_and_update(), Status::Held { .. }) {
                break;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return false },
                r = status.changed() => if r.is_err() { return false },
                _ = cancel.cancelled() => return false,
            }
        }
        // Phase 2: the idle window, during which ECS may stop the task.
        let ended_early = tokio::select! {
            _ = tokio::time::sleep(window) => false,
            r = changes.wait_for(|_| self.read(over)) => r.is_ok(),
            _ = cancel.cancelled() => return false,
        };
        if !ended_early {
            self.end(period);
        }
        true
    }

    fn end(&self, period: u64) {
        self.update(|s| {
            if s.idle == Some(period) {
                s.idle = None;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protection::{BoxFuture, Granted, ProtectionBackend, ProtectionError, Timing};

    /// Records (time, enabled) of every call; always grants.
    #[derive(Default)]
    struct Log(Mutex<Vec<(Instant, bool)>>);

    impl ProtectionBackend for Log {
        fn set(&self, enabled: bool, _: u32) -> BoxFuture<'_, Result<Granted, ProtectionError>> {
            self.0.lock().expect("lock").push((Instant::now(), enabled));
            Box::pin(async move {
                Ok(Granted {
                    enabled,
                    expiration: None,
                })
            })
        }
        fn name(&self) -> &'static str {
            "log"
        }
    }

    const WINDOW: Duration = Duration::from_secs(5);

    fn setup(pollers: usize) -> (Arc<Log>, Arc<Demand>) {
        let (log, d, _) = setup_running(pollers);
        (log, d)
    }

    fn setup_running(pollers: usize) -> (Arc<Log>, Arc<Demand>, Arc<AtomicUsize>) {
        let log = Arc::new(Log::default());
        let timing = Timing::new(Duration::from_secs(300), Duration::from_secs(1));
        let p = Arc::new(Protector::start(log.clone(), timing));
        let running = Arc::new(AtomicUsize::new(0));
        (
            log,
            Arc::new(Demand::new(p, pollers, running.clone())),
            running,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn never_released_while_a_job_runs_even_if_every_poller_lets_go() {
        let (_log, d, running) = setup_running(2);
        d.hold(0, Instant::now() + Duration::from_secs(25));
        settle().await;
        running.store(1, Ordering::Release);
        // Poller 1 waits out an idle period that poller 0 opened just as it received work.
        d.release(0);
        d.release(1);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(held(&d), "released with a job running");
        // Idle with a job running ends at once instead of waiting for a release.
        assert!(d.idle(0, WINDOW, &CancellationToken::new()).await);
        assert!(held(&d));
    }

    fn held(d: &Demand) -> bool {
        matches!(d.protector().status(), Status::Held { .. })
    }

    /// Both pollers hold protection; then poller 0 finds no work and goes idle (in a task).
    async fn both_holding_then_poller_0_idles(
        d: &Arc<Demand>,
        never: &CancellationToken,
    ) -> tokio::task::JoinHandle<bool> {
        d.hold(0, Instant::now() + Duration::from_secs(25));
        d.hold(1, Instant::now() + Duration::from_secs(25));
        settle().await;
        let (d, never) = (d.clone(), never.clone());
        tokio::spawn(async move { d.idle(0, WINDOW, &never).await })
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn protection_is_released_only_when_every_poller_is_idle() {
        let (log, d) = setup(2);
        let never = CancellationToken::new();
        d.hold(0, Instant::now() + Duration::from_secs(25));
        d.hold(1, Instant::now() + Duration::from_secs(25));
        settle().await;
        assert!(held(&d));
        // Poller 0 goes idle while poller 1 is still in its long poll.
        let idle0 = tokio::spawn({
            let (d, never) = (d.clone(), never.clone());
            async move { d.idle(0, WINDOW, &never).await }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(held(&d), "released while poller 1 still needed protection");
        assert!(
            !idle0.is_finished(),
            "poller 0 resumed before the task was released"
        );
        // Poller 1's poll comes back empty too: now the release happens, then the window.
        let t1 = Instant::now();
        assert!(d.idle(1, WINDOW, &never).await);
        assert!(Instant::now() - t1 >= WINDOW);
        assert!(idle0.await.expect("join"));
        let calls = log.0.lock().expect("lock").clone();
        assert_eq!(
            calls.iter().map(|c| c.1).collect::<Vec<_>>(),
            vec![true, false],
            "one take, one release"
        );
        assert!(!held(&d));
    }

    #[tokio::test(start_paused = true)]
    async fn messages_on_another_queue_end_the_idle_period() {
        let (_log, d) = setup(2);
        let never = CancellationToken::new();
        let idle0 = both_holding_then_poller_0_idles(&d, &never).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.busy();
        settle().await;
        assert!(
            idle0.is_finished(),
            "idle poller not woken by work elsewhere"
        );
        assert!(held(&d), "protection dropped although poller 1 has work");
    }

    #[tokio::test(start_paused = true)]
    async fn a_poller_about_to_receive_waits_out_the_idle_period_without_holding() {
        let (log, d) = setup(2);
        let never = CancellationToken::new();
        let idle0 = both_holding_then_poller_0_idles(&d, &never).await;
        settle().await;
        // Poller 1's receive failed; before retrying it must not keep protection wanted.
        assert!(d.wait_not_idle(1, &never).await);
        assert!(idle0.await.expect("join"));
        let calls = log.0.lock().expect("lock").clone();
        assert_eq!(
            calls.iter().map(|c| c.1).collect::<Vec<_>>(),
            vec![true, false]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_every_wait() {
        let (_log, d) = setup(2);
        let cancel = CancellationToken::new();
        d.hold(1, Instant::now() + Duration::from_secs(25));
        settle().await;
        let idle0 = tokio::spawn({
            let (d, cancel) = (d.clone(), cancel.clone());
            async move { d.idle(0, WINDOW, &cancel).await }
        });
        settle().await;
        cancel.cancel();
        assert!(!idle0.await.expect("join"));
    }
}

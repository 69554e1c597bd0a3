//! One task, one protection, several pollers (one per queue).
//!
//! Each poller says whether it needs protection; the task stays protected while any of them does
//! or any job runs. Going idle is done together: a poller whose receive comes back empty with no
//! job running opens an *idle period* and stops asking for protection; while the grant still
//! holds (the minimum hold), every poller goes on receiving under it, without asking again. Once
//! no poller needs protection it is released, and each poller that sees it released waits the
//! idle window unprotected, so ECS can stop the task. Pollers going idle at different times would
//! otherwise take turns holding protection and the task could never be scaled in. Any poller
//! that receives messages ends the idle period at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protection::{Protector, Status};
use crate::sync::lock;

/// Jobs running in the whole worker, with a wake-up when the last one ends.
#[derive(Debug, Default)]
pub(crate) struct RunningJobs {
    n: AtomicUsize,
    idle: Notify,
}

impl RunningJobs {
    pub(crate) fn add(&self, k: usize) {
        self.n.fetch_add(k, Ordering::AcqRel);
    }

    pub(crate) fn done(&self, k: usize) {
        if self.n.fetch_sub(k, Ordering::AcqRel) == k {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }

    pub(crate) fn any(&self) -> bool {
        self.count() > 0
    }

    /// Returns once no job runs.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if !self.any() {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Which pollers need protection now.
    wanting: Vec<bool>,
    /// An idle period is under way.
    idle: bool,
}

/// Shared by the pollers of one worker; see the module docs.
pub(crate) struct Demand {
    protector: Arc<Protector>,
    /// Protection is never released while a job runs.
    running: Arc<RunningJobs>,
    state: Mutex<State>,
    /// Bumped when an idle period ends, to wake pollers waiting out the idle window.
    ended: watch::Sender<u64>,
}

impl Demand {
    pub(crate) fn new(
        protector: Arc<Protector>,
        pollers: usize,
        running: Arc<RunningJobs>,
    ) -> Self {
        Self {
            protector,
            running,
            state: Mutex::new(State {
                wanting: vec![false; pollers],
                idle: false,
            }),
            ended: watch::Sender::new(0),
        }
    }

    pub(crate) fn protector(&self) -> &Protector {
        &self.protector
    }

    /// Poller `slot` needs protection until at least `until`.
    pub(crate) fn hold(&self, slot: usize, until: Instant) {
        lock(&self.state).wanting[slot] = true;
        self.protector.hold_until(until);
    }

    /// Poller `slot` no longer needs protection. True when no poller does and no job runs
    /// (then the task's protection is released, after its minimum hold).
    pub(crate) fn release(&self, slot: usize) -> bool {
        let none_left = {
            let mut s = lock(&self.state);
            s.wanting[slot] = false;
            !s.wanting.iter().any(|w| *w)
        };
        let release = none_left && !self.running.any();
        if release {
            self.protector.release();
        }
        release
    }

    /// Like [`Demand::release`], but without waiting out the minimum hold (yielding to ECS).
    pub(crate) fn release_now(&self, slot: usize) {
        if self.release(slot) {
            self.protector.release_now();
        }
    }

    /// A poller received messages (call after counting them as running): any idle period is
    /// over.
    pub(crate) fn busy(&self) {
        let was_idle = std::mem::replace(&mut lock(&self.state).idle, false);
        if was_idle {
            self.ended.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Poller `slot` found no work and no job is running: the idle period starts (if it has not
    /// already) and this poller stops asking for protection.
    pub(crate) fn open_idle(&self, slot: usize) {
        lock(&self.state).idle = true;
        self.release(slot);
    }

    /// An idle period is under way: receives ride the grant that is still held, if any, instead
    /// of asking for protection again.
    pub(crate) fn in_idle_period(&self) -> bool {
        lock(&self.state).idle
    }

    /// Protection is held now.
    pub(crate) fn protection_held(&self) -> bool {
        matches!(self.protector.status(), Status::Held { .. })
    }

    /// The idle window after the release: ECS may stop the task now. Returns early when the
    /// idle period ends (messages on another queue). False if `cancel` fired.
    pub(crate) async fn window(&self, window: Duration, cancel: &CancellationToken) -> bool {
        let mut ended = self.ended.subscribe();
        if !self.in_idle_period() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(window) => true,
            _ = ended.changed() => true,
            _ = cancel.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protection::{BoxFuture, Granted, ProtectionBackend, ProtectionError, Timing};

    /// Records (time, enabled) of every call; always grants.
    #[derive(Default)]
    struct Log(Mutex<Vec<(Instant, bool)>>);

    impl Log {
        fn enabled(&self) -> Vec<bool> {
            lock(&self.0).iter().map(|c| c.1).collect()
        }
    }

    impl ProtectionBackend for Log {
        fn set(&self, enabled: bool, _: u32) -> BoxFuture<'_, Result<Granted, ProtectionError>> {
            lock(&self.0).push((Instant::now(), enabled));
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
    const MIN_HOLD: Duration = Duration::from_secs(30);

    fn setup(pollers: usize) -> (Arc<Log>, Arc<Demand>, Arc<RunningJobs>) {
        let log = Arc::new(Log::default());
        let timing = Timing::new(Duration::from_secs(300), MIN_HOLD);
        let p = Arc::new(Protector::start(log.clone(), timing));
        let running = Arc::new(RunningJobs::default());
        (
            log,
            Arc::new(Demand::new(p, pollers, running.clone())),
            running,
        )
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn both_holding(d: &Demand) {
        d.hold(0, Instant::now() + Duration::from_secs(25));
        d.hold(1, Instant::now() + Duration::from_secs(25));
    }

    #[tokio::test(start_paused = true)]
    async fn never_released_while_a_job_runs_even_if_every_poller_lets_go() {
        let (log, d, running) = setup(2);
        both_holding(&d);
        settle().await;
        running.add(1);
        d.open_idle(0);
        d.open_idle(1);
        tokio::time::sleep(MIN_HOLD * 2).await;
        assert!(d.protection_held(), "released with a job running");
        assert_eq!(log.enabled(), vec![true]);
    }

    #[tokio::test(start_paused = true)]
    async fn released_only_when_every_poller_is_idle_and_held_meanwhile_for_receives() {
        let (log, d, _) = setup(2);
        both_holding(&d);
        settle().await;
        // Poller 0 goes idle while poller 1 is still in its long poll.
        d.open_idle(0);
        assert!(d.in_idle_period(), "poller 0 now receives without asking");
        tokio::time::sleep(MIN_HOLD * 2).await;
        assert!(
            d.protection_held(),
            "released while poller 1 still needed it"
        );
        // Poller 1's poll comes back empty too: released once the minimum hold has passed.
        d.open_idle(1);
        settle().await;
        assert!(!d.protection_held());
        assert_eq!(log.enabled(), vec![true, false], "one take, one release");
    }

    #[tokio::test(start_paused = true)]
    async fn the_minimum_hold_keeps_the_grant_and_receiving_goes_on_under_it() {
        let (log, d, _) = setup(1);
        d.hold(0, Instant::now() + Duration::from_secs(25));
        settle().await;
        let t0 = Instant::now();
        d.open_idle(0);
        // Until the minimum hold ends the grant still holds: the poller keeps receiving under it
        // (it does not wait, and it asks for nothing).
        tokio::time::sleep(MIN_HOLD / 2).await;
        assert!(d.protection_held() && d.in_idle_period());
        tokio::time::sleep(MIN_HOLD).await;
        assert!(!d.protection_held(), "released after the minimum hold");
        let calls = lock(&log.0).clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[1].0 - t0,
            MIN_HOLD,
            "released exactly at the minimum hold"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn release_now_skips_the_minimum_hold() {
        let (log, d, _) = setup(1);
        d.hold(0, Instant::now() + Duration::from_secs(25));
        settle().await;
        d.release_now(0);
        settle().await;
        assert!(!d.protection_held());
        assert_eq!(log.enabled(), vec![true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_on_another_queue_end_the_idle_window() {
        let (_log, d, _) = setup(2);
        d.open_idle(0);
        let never = CancellationToken::new();
        let w = tokio::spawn({
            let (d, never) = (d.clone(), never.clone());
            async move { d.window(WINDOW, &never).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.busy();
        settle().await;
        assert!(w.is_finished(), "the window ended with the idle period");
        assert!(w.await.expect("join"));
        assert!(!d.in_idle_period());
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_lasts_its_length_and_cancel_ends_it() {
        let (_log, d, _) = setup(1);
        d.open_idle(0);
        let t0 = Instant::now();
        assert!(d.window(WINDOW, &CancellationToken::new()).await);
        assert_eq!(Instant::now() - t0, WINDOW);
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!d.window(WINDOW, &cancel).await);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_idle_ends_with_the_last_job() {
        let running = Arc::new(RunningJobs::default());
        running.add(2);
        let w = tokio::spawn({
            let r = running.clone();
            async move { r.wait_idle().await }
        });
        running.done(1);
        settle().await;
        assert!(!w.is_finished());
        running.done(1);
        settle().await;
        assert!(w.is_finished());
    }
}

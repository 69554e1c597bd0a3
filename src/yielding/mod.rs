//! Giving way to ECS. A protected task never learns from ECS that it is wanted gone, so the
//! worker finds out for itself and yields: it takes no new messages, lets running jobs finish,
//! releases protection and waits unprotected, so ECS can stop it. Reasons come from:
//!
//! - [`view`]: the task's own service, read from the ECS API (deployment, scale-in; rules in
//!   [`decide`]);
//! - the protection actor: the agent refused protection as `DEPLOYMENT_BLOCKED`;
//! - `--max-protected`: protection held that long without a break;
//! - an operator: [`Lever`] (SIGUSR1 / `queue-worker drain`).
//!
//! The first two kinds follow what they see (a scale-in that is called off ends the yield); the
//! blocked and max-protected yields last until protection is released and one idle window has
//! passed; an operator's lasts until resumed. [`Yielding`] combines them and logs one line when
//! yielding starts (why) and one when it ends.

pub(crate) mod decide;
pub(crate) mod view;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protection::Status;
use crate::sync::{lock, sleep_until_opt};
use crate::worker::RunningJobs;
pub(crate) use decide::Reason;

/// Every reason, in the order they are reported when several hold at once.
pub(crate) const REASONS: [Reason; 5] = [
    Reason::Operator,
    Reason::Deployment,
    Reason::ScaleIn,
    Reason::AgentBlocked,
    Reason::MaxProtected,
];

fn index(r: Reason) -> usize {
    REASONS.iter().position(|x| *x == r).unwrap_or(0)
}

#[derive(Debug, Default)]
struct Active {
    on: [bool; REASONS.len()],
    since: Option<Instant>,
}

/// Why the worker is yielding now, if it is; shared by the pollers and the sources.
#[derive(Debug)]
pub(crate) struct Yielding {
    active: Mutex<Active>,
    tx: watch::Sender<Option<Reason>>,
    /// Yields started, by reason (for `/metrics`).
    started: [AtomicU64; REASONS.len()],
}

impl Default for Yielding {
    fn default() -> Self {
        Self {
            active: Mutex::default(),
            tx: watch::Sender::new(None),
            started: Default::default(),
        }
    }
}

impl Yielding {
    /// Turns one reason on or off.
    pub(crate) fn set(&self, reason: Reason, on: bool) {
        let mut a = lock(&self.active);
        if a.on[index(reason)] == on {
            return;
        }
        a.on[index(reason)] = on;
        let now = REASONS
            .iter()
            .zip(a.on)
            .find(|(_, on)| *on)
            .map(|(r, _)| *r);
        let before = *self.tx.borrow();
        match (before, now) {
            (None, Some(r)) => {
                a.since = Some(Instant::now());
                self.started[index(r)].fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "yield" = "start",
                    reason = r.as_str(),
                    "yielding to ECS ({}): no new messages; running jobs finish, then protection is released so ECS can stop this task",
                    r.as_str()
                );
            }
            (Some(_), None) => {
                let after_s = a.since.take().map_or(0.0, |s| s.elapsed().as_secs_f64());
                tracing::info!(
                    "yield" = "end",
                    after_s = (after_s * 10.0).round() / 10.0,
                    "yield over: taking messages again"
                );
            }
            _ => {}
        }
        drop(a);
        self.tx.send_if_modified(|v| {
            let changed = *v != now;
            *v = now;
            changed
        });
    }

    /// The reason the worker yields now (`None`: it does not).
    pub(crate) fn current(&self) -> Option<Reason> {
        *self.tx.borrow()
    }

    pub(crate) fn is_on(&self, reason: Reason) -> bool {
        lock(&self.active).on[index(reason)]
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Reason>> {
        self.tx.subscribe()
    }

    /// Returns once the worker yields (at once if it already does).
    pub(crate) async fn begun(&self) {
        // The sender lives in `self`, so the wait cannot fail for want of one.
        let _ = self.tx.subscribe().wait_for(Option::is_some).await;
    }

    /// Yields started so far, by reason.
    pub(crate) fn started(&self) -> Vec<(Reason, u64)> {
        REASONS
            .iter()
            .map(|r| (*r, self.started[index(*r)].load(Ordering::Relaxed)))
            .collect()
    }
}

/// An operator's lever on a running worker: [`Lever::drain`] makes it yield (finish what it has,
/// take nothing new, let protection go) until [`Lever::resume`]. Cheap to clone; every clone
/// moves the same lever.
#[derive(Debug, Clone)]
pub struct Lever {
    draining: Arc<watch::Sender<bool>>,
}

impl Default for Lever {
    fn default() -> Self {
        Self::new()
    }
}

impl Lever {
    /// A lever in the "working" position.
    pub fn new() -> Self {
        Self {
            draining: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Drain: take no new messages until [`Lever::resume`].
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Take messages again.
    pub fn resume(&self) {
        self.draining.send_replace(false);
    }

    /// Whether the lever says drain.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }
}

/// What the local sources watch.
pub(crate) struct Local {
    pub yielding: Arc<Yielding>,
    pub protection: watch::Receiver<Status>,
    pub running: Arc<RunningJobs>,
    pub lever: Lever,
    pub max_protected: Option<Duration>,
    pub idle_window: Duration,
}

/// The sources that need no API: the lever, the agent's refusal, `--max-protected`. Runs until
/// `stop` fires.
pub(crate) async fn watch_local(src: Local, stop: CancellationToken) {
    let Local {
        yielding,
        mut protection,
        running,
        lever,
        max_protected,
        idle_window,
    } = src;
    let mut draining = lever.subscribe();
    let mut held_since: Option<Instant> = None;
    // Without protection (or once its actor is gone) there are no status changes to follow.
    let mut protection_open = true;
    loop {
        yielding.set(Reason::Operator, *draining.borrow_and_update());
        let status = *protection.borrow_and_update();
        let held = matches!(status, Status::Held { .. });
        if status == Status::Blocked {
            yielding.set(Reason::AgentBlocked, true);
        }
        held_since = if held {
            held_since.or(Some(Instant::now()))
        } else {
            None
        };
        let limit_at = max_protected.zip(held_since).map(|(m, s)| s + m);
        if limit_at.is_some_and(|t| Instant::now() >= t) {
            yielding.set(Reason::MaxProtected, true);
        }
        // A one-shot yield is over once protection is off, no job runs, and an idle window has
        // passed: ECS had its chance to stop the task.
        let one_shot = yielding.is_on(Reason::AgentBlocked) || yielding.is_on(Reason::MaxProtected);
        let settled = one_shot && !held && !running.any();
        tokio::select! {
            _ = stop.cancelled() => return,
            r = draining.changed() => if r.is_err() { return },
            r = protection.changed(), if protection_open => protection_open = r.is_ok(),
            _ = sleep_until_opt(limit_at.filter(|_| !yielding.is_on(Reason::MaxProtected))) => {}
            _ = running.wait_idle(), if one_shot && running.any() => {}
            _ = tokio::time::sleep(idle_window), if settled => {
                yielding.set(Reason::AgentBlocked, false);
                yielding.set(Reason::MaxProtected, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    struct Rig {
        yielding: Arc<Yielding>,
        status: watch::Sender<Status>,
        running: Arc<RunningJobs>,
        lever: Lever,
        stop: CancellationToken,
    }

    #[tokio::test(start_paused = true)]
    async fn the_lever_works_without_protection_too() {
        // A disabled protector's status channel is closed from the start.
        let r = rig(None);
        drop(r.status);
        settle().await;
        r.lever.drain();
        settle().await;
        assert_eq!(r.yielding.current(), Some(Reason::Operator));
        r.stop.cancel();
    }

    fn rig(max_protected: Option<Duration>) -> Rig {
        let yielding = Arc::new(Yielding::default());
        let (status, rx) = watch::channel(Status::Released);
        let running = Arc::new(RunningJobs::default());
        let lever = Lever::new();
        let stop = CancellationToken::new();
        tokio::spawn(watch_local(
            Local {
                yielding: yielding.clone(),
                protection: rx,
                running: running.clone(),
                lever: lever.clone(),
                max_protected,
                idle_window: Duration::from_secs(5),
            },
            stop.clone(),
        ));
        Rig {
            yielding,
            status,
            running,
            lever,
            stop,
        }
    }

    fn held() -> Status {
        Status::Held {
            expires: Instant::now() + Duration::from_secs(300),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_lever_drains_and_resumes() {
        let r = rig(None);
        settle().await;
        assert_eq!(r.yielding.current(), None);
        r.lever.drain();
        settle().await;
        assert_eq!(r.yielding.current(), Some(Reason::Operator));
        r.lever.resume();
        settle().await;
        assert_eq!(r.yielding.current(), None);
        r.stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_block_yields_until_released_idle_and_a_window_has_passed() {
        let r = rig(None);
        r.running.add(1);
        r.status.send_replace(Status::Blocked);
        settle().await;
        assert_eq!(r.yielding.current(), Some(Reason::AgentBlocked));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            r.yielding.current(),
            Some(Reason::AgentBlocked),
            "still yielding while a job runs"
        );
        r.running.done(1);
        r.status.send_replace(Status::Released);
        settle().await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            r.yielding.current(),
            Some(Reason::AgentBlocked),
            "within the window"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            r.yielding.current(),
            None,
            "after one idle window it tries again"
        );
        assert_eq!(r.yielding.started()[3], (Reason::AgentBlocked, 1));
        r.stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn max_protected_yields_after_holding_that_long_without_a_break() {
        let r = rig(Some(Duration::from_secs(600)));
        r.status.send_replace(held());
        settle().await;
        tokio::time::sleep(Duration::from_secs(300)).await;
        // A break (release) restarts the count.
        r.status.send_replace(Status::Released);
        settle().await;
        r.status.send_replace(held());
        settle().await;
        tokio::time::sleep(Duration::from_secs(599)).await;
        assert_eq!(r.yielding.current(), None);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(r.yielding.current(), Some(Reason::MaxProtected));
        // Released with no job running: one idle window later it carries on.
        r.status.send_replace(Status::Released);
        settle().await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(r.yielding.current(), None);
        r.stop.cancel();
    }

    #[test]
    fn several_reasons_report_the_first_and_end_together() {
        let y = Yielding::default();
        y.set(Reason::ScaleIn, true);
        y.set(Reason::Operator, true);
        assert_eq!(y.current(), Some(Reason::Operator));
        y.set(Reason::Operator, false);
        assert_eq!(y.current(), Some(Reason::ScaleIn));
        y.set(Reason::ScaleIn, false);
        assert_eq!(y.current(), None);
        let started: u64 = y.started().iter().map(|s| s.1).sum();
        assert_eq!(started, 1, "one yield, though its reason changed");
    }
}

//! ECS task scale-in protection: the backends that set it ([`agent`], [`ecs_api`]) and the
//! [`Protector`], a small actor that takes, refreshes and releases protection as the poll loop asks.
//!
//! The poll loop only says what it wants ([`Want`]); the actor owns the timing: refresh at 80 % of
//! the grant, never release sooner than the minimum hold, back off on transient errors, and give
//! up (with one warning) on permanent ones. Every call is bounded, so nothing here can hang the
//! worker.

pub(crate) mod agent;
pub(crate) mod ecs_api;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::sync::sleep_until_opt;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a successful call reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Granted {
    pub enabled: bool,
    /// `ExpirationDate` as the backend wrote it (for logs).
    pub expiration: Option<String>,
}

/// Why protection could not be set (or its backend built).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtectionError {
    /// Worth retrying: throttling, 429, 5xx, timeouts, a refusal that may pass.
    #[error("{0}")]
    Transient(String),
    /// ECS refuses because protected tasks are blocking a deployment or a scale-in
    /// (`DEPLOYMENT_BLOCKED`): this task is wanted gone, so it yields instead of retrying.
    #[error("ECS refused protection: {0}")]
    Blocked(String),
    /// Will not change by retrying: the task is standalone, or the role lacks permission.
    #[error("{problem}; fix: {fix}")]
    Permanent {
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
}

/// Something that can turn protection on (for `minutes`) or off.
pub(crate) trait ProtectionBackend: Send + Sync + 'static {
    fn set(&self, enabled: bool, minutes: u32) -> BoxFuture<'_, Result<Granted, ProtectionError>>;
    /// Short name for logs.
    fn name(&self) -> &'static str;
}

/// What the poll loop asks of the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Be protected, and stay protected at least until this instant.
    Hold { until: Instant },
    /// No work: release (once the minimum hold has passed).
    Release,
    /// Release now, minimum hold or not (the task is yielding to ECS).
    ReleaseNow,
}

/// Where protection stands, as the actor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Protection is off by configuration: never wait for it.
    Disabled,
    /// Permanently refused (warned once): the worker runs unprotected.
    Unavailable,
    /// Not protected.
    Released,
    /// Wanted but not held: the last attempt failed and a retry is scheduled.
    Failing,
    /// Wanted but refused: protected tasks block a deployment or scale-in, so ECS wants this
    /// task gone. The worker yields; the next hold tries again.
    Blocked,
    /// Protected until this instant (by our own conservative clock).
    Held {
        /// When the grant ends unless refreshed.
        expires: Instant,
    },
}

impl Status {
    /// May the loop receive messages that must be protected until `until`?
    pub fn covers(&self, until: Instant) -> bool {
        match *self {
            Status::Disabled | Status::Unavailable => true,
            Status::Held { expires } => expires >= until,
            Status::Released | Status::Failing | Status::Blocked => false,
        }
    }
}

/// Timing of the protection actor.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Length of each grant (refreshed at 80 %).
    pub duration: Duration,
    /// Protection is never released sooner than this after it was taken.
    pub min_hold: Duration,
    /// Backoff between failed calls.
    pub retry: Backoff,
}

impl Timing {
    /// `duration` grants held at least `min_hold`, retried after 250 ms to 20 s.
    pub fn new(duration: Duration, min_hold: Duration) -> Self {
        Self {
            duration,
            min_hold,
            retry: Backoff::new(Duration::from_millis(250), Duration::from_secs(20)),
        }
    }
    fn minutes(&self) -> u32 {
        (self.duration.as_secs() / 60).max(1) as u32
    }
    fn refresh_after(&self) -> Duration {
        self.duration.mul_f64(0.8)
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    since: Instant,
    refreshed: Instant,
    expires: Instant,
}

/// Handle to the protection actor (or to nothing, when protection is off).
pub struct Protector {
    want: watch::Sender<Want>,
    status: watch::Receiver<Status>,
    actor: Option<Actor>,
    calls: Arc<CallCounts>,
}

/// Protection calls by outcome (for `/metrics`).
#[derive(Debug, Default)]
pub struct CallCounts {
    /// Calls that succeeded.
    pub ok: std::sync::atomic::AtomicU64,
    /// Calls that failed in a way that may pass (retried).
    pub transient: std::sync::atomic::AtomicU64,
    /// Calls refused for good.
    pub permanent: std::sync::atomic::AtomicU64,
}

struct Actor {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Option<Held>>,
    backend: Arc<dyn ProtectionBackend>,
    minutes: u32,
}

impl Protector {
    /// No protection: [`Status::Disabled`] for ever, no calls.
    pub fn disabled() -> Self {
        let (want, _) = watch::channel(Want::Release);
        let (_tx, status) = watch::channel(Status::Disabled);
        Self {
            want,
            status,
            actor: None,
            calls: Arc::default(),
        }
    }

    /// Protection through the ECS agent endpoint (`$ECS_AGENT_URI`), as ECS recommends for
    /// tasks that protect themselves.
    pub fn agent(agent_uri: &str, timing: Timing) -> Result<Self, ProtectionError> {
        let backend =
            agent::AgentBackend::new(agent_uri).map_err(|e| ProtectionError::Permanent {
                problem: format!("cannot build the agent client: {e}"),
                fix: "check the TLS set-up of this machine".into(),
            })?;
        Ok(Self::start(Arc::new(backend), timing))
    }

    /// Protection through the ECS API (`UpdateTaskProtection`), with cluster and task ARN read
    /// from task metadata v4 at `metadata_uri`.
    pub fn ecs_api(
        ecs: aws_sdk_ecs::Client,
        metadata_uri: &str,
        timing: Timing,
    ) -> Result<Self, ProtectionError> {
        let backend = ecs_api::EcsApiBackend::new(ecs, metadata_uri).map_err(|e| {
            ProtectionError::Permanent {
                problem: format!("cannot build the metadata client: {e}"),
                fix: "check the TLS set-up of this machine".into(),
            }
        })?;
        Ok(Self::start(Arc::new(backend), timing))
    }

    /// The protector `config` asks for (off, agent endpoint or ECS API).
    pub fn from_config(
        config: &crate::config::ProtectionConfig,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, ProtectionError> {
        use crate::config::ProtectionBackendKind;
        let timing = Timing::new(config.duration, config.min_hold);
        match &config.backend {
            ProtectionBackendKind::Off { reason } => {
                tracing::info!("task protection off: {reason}");
                Ok(Self::disabled())
            }
            ProtectionBackendKind::Agent { agent_uri } => Self::agent(agent_uri, timing),
            ProtectionBackendKind::EcsApi { metadata_uri } => {
                Self::ecs_api(aws_sdk_ecs::Client::new(sdk), metadata_uri, timing)
            }
        }
    }

    /// Starts the actor. Its task is owned by the returned handle and ended by [`Protector::shutdown`].
    pub(crate) fn start(backend: Arc<dyn ProtectionBackend>, timing: Timing) -> Self {
        let (want, want_rx) = watch::channel(Want::Release);
        let (status_tx, status) = watch::channel(Status::Released);
        let stop = CancellationToken::new();
        let calls: Arc<CallCounts> = Arc::default();
        let task = tokio::spawn(run_actor(
            backend.clone(),
            timing,
            calls.clone(),
            want_rx,
            status_tx,
            stop.clone(),
        ));
        Self {
            want,
            status,
            actor: Some(Actor {
                stop,
                task,
                backend,
                minutes: timing.minutes(),
            }),
            calls,
        }
    }

    /// Where protection stands now.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Protection calls made so far, by outcome.
    pub fn calls(&self) -> Arc<CallCounts> {
        self.calls.clone()
    }

    /// A receiver for status changes (metrics, tests).
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// False when protection is off (no actor, no calls).
    pub fn is_enabled(&self) -> bool {
        self.actor.is_some()
    }

    /// Asks for protection that lasts at least until `until`. Cheap when already satisfied.
    pub(crate) fn hold_until(&self, until: Instant) {
        self.want.send_if_modified(|w| match *w {
            // Nudging the actor for every receive would be wasted wake-ups: only when the need grows.
            Want::Hold { until: old } if old + Duration::from_secs(1) >= until => false,
            _ => {
                *w = Want::Hold { until };
                true
            }
        });
    }

    /// Asks for release (after the minimum hold).
    pub(crate) fn release(&self) {
        self.want.send_if_modified(|w| {
            let changed = *w != Want::Release;
            *w = Want::Release;
            changed
        });
    }

    /// Asks for release at once, without waiting out the minimum hold.
    pub(crate) fn release_now(&self) {
        self.want.send_if_modified(|w| {
            let changed = *w != Want::ReleaseNow;
            *w = Want::ReleaseNow;
            changed
        });
    }

    /// Waits until the status satisfies `pred`, or `cancel` fires (returns false then).
    pub(crate) async fn wait_for(
        &self,
        cancel: &CancellationToken,
        pred: impl Fn(&Status) -> bool,
    ) -> bool {
        let mut rx = self.status.clone();
        tokio::select! {
            r = rx.wait_for(|s| pred(s)) => r.is_ok(),
            _ = cancel.cancelled() => false,
        }
    }

    /// Waits until protection covers `until` (or is off/unavailable); false if `cancel` fired.
    pub(crate) async fn wait_covered(&self, cancel: &CancellationToken, until: Instant) -> bool {
        if self.status().covers(until) {
            return true;
        }
        tracing::debug!("waiting for protection before receiving");
        self.wait_for(cancel, |s| s.covers(until)).await
    }

    /// Stops the actor and releases protection if held, giving up at `deadline`.
    pub(crate) async fn shutdown(self, deadline: Instant) {
        let Some(actor) = self.actor else { return };
        actor.stop.cancel();
        let held = match actor.task.await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "protection actor failed");
                None
            }
        };
        if held.is_none() {
            return;
        }
        match tokio::time::timeout_at(deadline, actor.backend.set(false, actor.minutes)).await {
            Ok(Ok(_)) => tracing::info!("protection released (shutdown)"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release protection at shutdown; it expires by itself")
            }
            Err(_) => {
                tracing::warn!("protection release timed out at shutdown; it expires by itself")
            }
        }
    }
}

async fn run_actor(
    backend: Arc<dyn ProtectionBackend>,
    timing: Timing,
    calls: Arc<CallCounts>,
    mut want_rx: watch::Receiver<Want>,
    status_tx: watch::Sender<Status>,
    stop: CancellationToken,
) -> Option<Held> {
    let mut held: Option<Held> = None;
    // A release that failed may still have been applied (its answer lost): from then on `held`
    // is only a guess, so the next hold calls the backend instead of trusting it.
    let mut doubtful = false;
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    // The want that ECS refused as blocked (DEPLOYMENT_BLOCKED): not asked again until the
    // worker asks for something else (it yields meanwhile).
    let mut blocked: Option<Want> = None;
    let minutes = timing.minutes();
    let publish = |s: Status| {
        status_tx.send_if_modified(|old| {
            let changed = *old != s;
            *old = s;
            changed
        });
    };

    loop {
        if stop.is_cancelled() {
            return held;
        }
        let now = Instant::now();
        if let Some(h) = held {
            if now >= h.expires {
                tracing::warn!("protection expired before it could be refreshed");
                held = None;
            }
        }
        let want = *want_rx.borrow_and_update();
        if blocked.is_some_and(|b| b != want) {
            blocked = None;
        }
        let retry_ok = retry_at.is_none_or(|t| now >= t) && blocked.is_none();
        let mut wake: Option<Instant> = retry_at.filter(|_| !retry_ok);

        // Decide whether to call the backend now, and with what.
        let call = match (want, held) {
            (Want::Hold { until }, h) => {
                let due = match h {
                    None => true,
                    Some(_) if doubtful => true,
                    Some(h) => now >= h.refreshed + timing.refresh_after() || h.expires < until,
                };
                if let Some(h) = h {
                    // Wake for the next refresh, or (while a retry is pending) to notice expiry.
                    // Never a time already past: that would spin.
                    if !due {
                        wake = min_opt(wake, Some(h.refreshed + timing.refresh_after()));
                    }
                    wake = min_opt(wake, Some(h.expires));
                }
                (due && retry_ok).then_some(true)
            }
            (Want::Release | Want::ReleaseNow, Some(h)) => {
                let hold = if want == Want::ReleaseNow {
                    Duration::ZERO
                } else {
                    timing.min_hold
                };
                let earliest = h.since + hold;
                wake = min_opt(wake, Some(earliest.max(retry_at.unwrap_or(earliest))));
                wake = min_opt(wake, Some(h.expires));
                (now >= earliest && retry_ok).then_some(false)
            }
            (Want::Release | Want::ReleaseNow, None) => None,
        };

        if let Some(enable) = call {
            let started = Instant::now();
            let result = tokio::select! {
                r = backend.set(enable, minutes) => r,
                _ = stop.cancelled() => return held,
            };
            let counter = match &result {
                Ok(_) => &calls.ok,
                Err(ProtectionError::Transient(_) | ProtectionError::Blocked(_)) => {
                    &calls.transient
                }
                Err(ProtectionError::Permanent { .. }) => &calls.permanent,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match (enable, result) {
                (true, Ok(g)) if g.enabled => {
                    let was_held = held.is_some();
                    held = Some(Held {
                        since: held.map_or(started, |h| h.since),
                        refreshed: started,
                        // Counted from before the call: the agent's clock started later, so we err early.
                        expires: started + timing.duration,
                    });
                    failures = 0;
                    retry_at = None;
                    doubtful = false;
                    let exp = g.expiration.as_deref().unwrap_or("unknown");
                    if was_held {
                        tracing::info!(
                            expires = exp,
                            backend = backend.name(),
                            "protection refreshed"
                        );
                    } else {
                        tracing::info!(
                            expires = exp,
                            backend = backend.name(),
                            "protection acquired"
                        );
                    }
                }
                (false, Ok(_)) => {
                    held = None;
                    doubtful = false;
                    failures = 0;
                    retry_at = None;
                    tracing::info!(backend = backend.name(), "protection released");
                }
                (true, Ok(_)) => {
                    failures += 1;
                    let d = timing.retry.delay(failures - 1);
                    retry_at = Some(Instant::now() + d);
                    tracing::warn!(
                        retry_in_ms = d.as_millis() as u64,
                        "agent answered but did not enable protection; retrying"
                    );
                }
                (true, Err(ProtectionError::Blocked(e))) => {
                    blocked = Some(want);
                    tracing::warn!(error = %e, "ECS refused protection: protected tasks block a deployment or scale-in, so this task yields");
                }
                (_, Err(ProtectionError::Transient(e) | ProtectionError::Blocked(e))) => {
                    doubtful |= !enable;
                    failures += 1;
                    let d = timing.retry.delay(failures - 1);
                    retry_at = Some(Instant::now() + d);
                    let what = if enable { "take" } else { "release" };
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "could not {what} protection; retrying (no new messages are received until it is held)");
                }
                (_, Err(e @ ProtectionError::Permanent { .. })) => {
                    tracing::warn!(error = %e, "task protection is unavailable; the worker goes on WITHOUT protection, so ECS may stop it mid-job");
                    publish(Status::Unavailable);
                    // Permanent: no more calls. Wait for the end, holding nothing.
                    stop.cancelled().await;
                    return None;
                }
            }
            publish(status_of(
                want,
                held.filter(|_| !doubtful),
                blocked.is_some(),
                Instant::now(),
            ));
            continue;
        }

        publish(status_of(
            want,
            held.filter(|_| !doubtful),
            blocked.is_some(),
            now,
        ));
        tokio::select! {
            _ = want_rx.changed() => {}
            _ = sleep_until_opt(wake) => {}
            _ = stop.cancelled() => return held,
        }
    }
}

fn status_of(want: Want, held: Option<Held>, blocked: bool, now: Instant) -> Status {
    match (held, want) {
        (Some(h), _) if h.expires > now => Status::Held { expires: h.expires },
        (_, Want::Hold { .. }) if blocked => Status::Blocked,
        (_, Want::Hold { .. }) => Status::Failing,
        (_, Want::Release | Want::ReleaseNow) => Status::Released,
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;

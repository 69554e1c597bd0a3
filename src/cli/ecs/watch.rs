//! Following a service until it is steady: new events, counts, and which tasks are protected.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use aws_sdk_ecs::primitives::DateTime;
use aws_sdk_ecs::types::Service;
use tokio_util::sync::CancellationToken;

use super::locate::Located;
use super::{aws, fmt_time, now, short, EcsError};
use crate::aws::error_reason as aws_reason;
use crate::limits::{ECS_GET_TASK_PROTECTION_MAX, ECS_SERVICE_EVENTS_KEPT};

/// Existing events shown for context when watching starts (the rest count as already seen).
const CONTEXT_EVENTS: usize = 3;

/// The counts that decide whether the service is steady.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) status: String,
    pub(super) desired: i32,
    pub(super) running: i32,
    pub(super) pending: i32,
    pub(super) deployments: usize,
}

impl Counts {
    pub(super) fn of(s: &Service) -> Self {
        Self {
            status: s.status().unwrap_or("UNKNOWN").to_string(),
            desired: s.desired_count(),
            running: s.running_count(),
            pending: s.pending_count(),
            deployments: s.deployments().len(),
        }
    }

    /// Running what it should, nothing starting, no deployment in progress.
    pub(super) fn settled(&self) -> bool {
        self.running == self.desired && self.pending == 0 && self.deployments == 1
    }

    pub(super) fn line(&self) -> String {
        format!(
            "running {} / desired {} / pending {} · {} deployment{}{}",
            self.running,
            self.desired,
            self.pending,
            self.deployments,
            if self.deployments == 1 { "" } else { "s" },
            if self.status == "ACTIVE" {
                String::new()
            } else {
                format!(" · {}", self.status)
            }
        )
    }
}

/// What we know about the service's tasks' protection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Protection {
    /// Task id → protection expiry (None: protected, expiry not reported), for the protected
    /// ones; and how many tasks there are.
    Known {
        tasks: usize,
        protected: BTreeMap<String, Option<i64>>,
    },
    /// GetTaskProtection failed once; only the task count is shown from then on.
    Unknown { tasks: usize },
}

impl Protection {
    pub(super) fn line(&self) -> String {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        match self {
            Protection::Unknown { tasks } => {
                format!("{tasks} task{} (protection unknown)", plural(*tasks))
            }
            Protection::Known { tasks, protected } if protected.is_empty() => {
                format!("{tasks} task{}, none protected", plural(*tasks))
            }
            Protection::Known { tasks, protected } => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let list: Vec<String> = protected
                    .iter()
                    .map(|(id, until)| match until {
                        Some(t) => {
                            let left = Duration::from_secs((*t - now).max(0) as u64);
                            format!(
                                "{id} until {} (in {})",
                                fmt_time(&DateTime::from_secs(*t)),
                                humantime::format_duration(left)
                            )
                        }
                        None => format!("{id} (no expiry reported)"),
                    })
                    .collect();
                format!(
                    "{tasks} task{}, {} protected: {}",
                    plural(*tasks),
                    protected.len(),
                    list.join(", ")
                )
            }
        }
    }
}

/// Whether the latest poll found the service steady.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Polled {
    Steady,
    Moving,
}

/// Follows one service, printing only what changed.
pub(super) struct Watcher {
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    service: String,
    seen_events: HashSet<String>,
    last_counts: Option<Counts>,
    last_protection: Option<Protection>,
    protection_known: bool,
}

fn event_key(e: &aws_sdk_ecs::types::ServiceEvent) -> String {
    match e.id() {
        Some(id) => id.to_string(),
        None => format!(
            "{}|{}",
            e.created_at().map(|t| t.secs()).unwrap_or(0),
            e.message().unwrap_or_default()
        ),
    }
}

fn event_line(e: &aws_sdk_ecs::types::ServiceEvent) -> String {
    format!(
        "{}  event: {}",
        e.created_at()
            .map(fmt_time)
            .unwrap_or_else(|| "(no time)".into()),
        e.message().unwrap_or_default()
    )
}

impl Watcher {
    /// Starts from the service as [`locate`] saw it: its existing events count as seen, except
    /// the few newest, which the first poll shows for context.
    pub(super) fn new(ecs: aws_sdk_ecs::Client, located: &Located) -> Self {
        let seen_events = located
            .found
            .events()
            .iter()
            .skip(CONTEXT_EVENTS)
            .map(event_key)
            .collect();
        Self {
            ecs,
            cluster: located.cluster.clone(),
            service: located.service.clone(),
            seen_events,
            last_counts: None,
            last_protection: None,
            protection_known: true,
        }
    }

    /// One look at the service: prints new events (oldest first), then the counts and the
    /// tasks' protection when they changed. Steady means settled and unchanged since last time.
    pub(super) async fn poll(&mut self) -> Result<(Polled, Counts), EcsError> {
        let out = self
            .ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .map_err(aws("DescribeServices"))?;
        let Some(s) = out.services().first() else {
            return Err(EcsError::Gone {
                cluster: short(&self.cluster).to_string(),
                service: self.service.clone(),
                status: "missing".into(),
            });
        };
        if s.status() == Some("INACTIVE") {
            return Err(EcsError::Gone {
                cluster: short(&self.cluster).to_string(),
                service: self.service.clone(),
                status: "INACTIVE".into(),
            });
        }
        // ECS lists events newest first.
        let mut fresh: Vec<_> = s
            .events()
            .iter()
            .filter(|e| !self.seen_events.contains(&event_key(e)))
            .collect();
        fresh.reverse();
        for e in &fresh {
            println!("{}", event_line(e));
            self.seen_events.insert(event_key(e));
        }
        if self.seen_events.len() > 4 * ECS_SERVICE_EVENTS_KEPT {
            // Forget events ECS no longer returns (they cannot come back).
            let current: HashSet<String> = s.events().iter().map(event_key).collect();
            self.seen_events.retain(|k| current.contains(k));
        }

        let counts = Counts::of(s);
        let changed = self.last_counts.as_ref() != Some(&counts);
        if changed {
            println!("{}  {}", fmt_time(&now()), counts.line());
        }
        let protection = self.protection().await?;
        if self.last_protection.as_ref() != Some(&protection) {
            println!("{}  tasks: {}", fmt_time(&now()), protection.line());
            self.last_protection = Some(protection);
        }
        let steady = counts.settled() && !changed && fresh.is_empty();
        self.last_counts = Some(counts.clone());
        Ok((
            if steady {
                Polled::Steady
            } else {
                Polled::Moving
            },
            counts,
        ))
    }

    async fn protection(&mut self) -> Result<Protection, EcsError> {
        let tasks: Vec<String> = self
            .ecs
            .list_tasks()
            .cluster(&self.cluster)
            .service_name(&self.service)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(aws("ListTasks"))?;
        if !self.protection_known {
            return Ok(Protection::Unknown { tasks: tasks.len() });
        }
        let mut protected = BTreeMap::new();
        for chunk in tasks.chunks(ECS_GET_TASK_PROTECTION_MAX) {
            let out = match self
                .ecs
                .get_task_protection()
                .cluster(&self.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    println!(
                        "{}  task protection: unknown (GetTaskProtection failed: {}); going on without it",
                        fmt_time(&now()),
                        aws_reason(&e)
                    );
                    self.protection_known = false;
                    return Ok(Protection::Unknown { tasks: tasks.len() });
                }
            };
            for p in out.protected_tasks() {
                if p.protection_enabled() {
                    let id = short(p.task_arn().unwrap_or("?")).to_string();
                    protected.insert(id, p.expiration_date().map(|d| d.secs()));
                }
            }
        }
        Ok(Protection::Known {
            tasks: tasks.len(),
            protected,
        })
    }
}

/// How a watch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WatchEnd {
    Steady(Counts),
    TimedOut(Counts),
    Stopped,
}

/// Polls until steady, `timeout`, or `stop` fires.
pub(super) async fn watch(
    watcher: &mut Watcher,
    timeout: Duration,
    interval: Duration,
    stop: &CancellationToken,
) -> Result<WatchEnd, EcsError> {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        let polled = tokio::select! {
            r = watcher.poll() => r?,
            _ = stop.cancelled() => return Ok(WatchEnd::Stopped),
        };
        let (state, counts) = polled;
        if state == Polled::Steady {
            return Ok(WatchEnd::Steady(counts));
        }
        let now = tokio::time::Instant::now();
        if now >= end {
            return Ok(WatchEnd::TimedOut(counts));
        }
        tokio::select! {
            _ = tokio::time::sleep(interval.min(end - now)) => {}
            _ = stop.cancelled() => return Ok(WatchEnd::Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_needs_equal_counts_nothing_pending_and_one_deployment() {
        let c = |running, desired, pending, deployments| Counts {
            status: "ACTIVE".into(),
            desired,
            running,
            pending,
            deployments,
        };
        assert!(c(0, 0, 0, 1).settled());
        assert!(!c(1, 0, 0, 1).settled());
        assert!(!c(0, 0, 1, 1).settled());
        assert!(!c(2, 2, 0, 2).settled());
    }

    #[test]
    fn protection_line_names_tasks_and_expiry() {
        let mut protected = BTreeMap::new();
        protected.insert("abc".to_string(), Some(4_102_444_800)); // 2100-01-01
        let l = Protection::Known {
            tasks: 2,
            protected,
        }
        .line();
        assert!(
            l.starts_with("2 tasks, 1 protected: abc until 2100-01-01T00:00:00Z"),
            "{l}"
        );
    }
}

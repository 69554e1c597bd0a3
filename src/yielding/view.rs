//! The task's view of its own service: who it is (task metadata v4, `DescribeTasks` for the
//! service name where the agent does not give it), then `DescribeServices` once a poll period,
//! and `ListTasks` + `DescribeTasks` only when some of the fleet must be chosen to yield.
//!
//! The ECS API's rate is shared by the whole fleet, so the period grows with the fleet: a task
//! looks every `poll × max(1, running tasks / 20)` (±20 % jitter, so a fleet started together
//! spreads out), and backs off further while ECS throttles. A fleet of 200 tasks with the default
//! 15 s poll makes about 1.3 `DescribeServices` calls per second in all.

use std::time::Duration;

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::DesiredStatus;
use tokio_util::sync::CancellationToken;

use super::decide::{self, Deployment, First, Me, Reason, ServiceFacts, TaskFacts};
use super::Yielding;
use crate::aws::error_reason;
use crate::backoff::Backoff;
use crate::config::EcsViewConfig as ViewConfig;
use crate::limits::ECS_DESCRIBE_TASKS_MAX;
use crate::protection::BoxFuture;
use crate::task_metadata::{MetadataClient, MetadataError};

/// Tasks per look that keep one look per `poll` for the fleet; above it the period grows.
const FLEET_PER_PERIOD: u32 = 20;
/// The longest a throttled view waits, in poll periods.
const MAX_THROTTLE_FACTOR: u32 = 8;
/// Backoff while the metadata endpoint or ECS does not answer.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// After a refusal, when to ask again: a role can be fixed (or an IAM change reach the task)
/// without restarting it.
const DENIED_RETRY: Duration = Duration::from_secs(600);

/// Why the view stopped, or paused for a refusal (each logged once; the other yield signals go
/// on).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    #[error("the task role may not call {action} ({reason}); yielding to deployments and scale-ins is off until it may (asked again every 10 minutes): grant {action} (the deploy templates do)")]
    Denied {
        action: &'static str,
        reason: String,
    },
    #[error("this task was not started by an ECS service (group {0:?}): no deployment or scale-in to yield to")]
    NotAService(String),
    #[error("task metadata cannot be read ({0}); yielding to deployments and scale-ins is off")]
    Metadata(String),
    #[error("stopped")]
    Cancelled,
}

/// An ECS call that failed and may pass.
#[derive(Debug)]
pub(crate) struct Transient {
    pub throttled: bool,
    pub reason: String,
}

/// One ECS call's result: a value, or a failure that may pass (`Ok`) or not (`Err`).
pub(crate) type Call<T> = Result<T, Result<Transient, Stop>>;

/// Maps an SDK error: a denial is a [`Stop::Denied`], anything else may pass.
fn classify<E>(
    action: &'static str,
    e: aws_sdk_ecs::error::SdkError<E, aws_sdk_ecs::config::http::HttpResponse>,
) -> Result<Transient, Stop>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let reason = error_reason(&e);
    match e.code() {
        Some("AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation") => {
            Err(Stop::Denied { action, reason })
        }
        code => Ok(Transient {
            throttled: matches!(code, Some("ThrottlingException" | "Throttling")),
            reason,
        }),
    }
}

/// Who this task is and which service it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub cluster: String,
    pub service: String,
    pub me: Me,
}

/// The ECS API, as the view uses it: the SDK, or a scripted one in tests.
pub(crate) trait ServiceApi: Send + Sync {
    /// The task's `group` (`service:<name>` for a service's task).
    fn group_of<'a>(&'a self, cluster: &'a str, arn: &'a str) -> BoxFuture<'a, Call<String>>;
    /// The service, and how many tasks it runs; `None` when it is gone.
    fn service<'a>(&'a self, id: &'a Identity) -> BoxFuture<'a, Call<Option<(ServiceFacts, u32)>>>;
    /// The service's tasks that ECS wants running.
    fn tasks<'a>(&'a self, id: &'a Identity) -> BoxFuture<'a, Call<Vec<TaskFacts>>>;
}

impl ServiceApi for aws_sdk_ecs::Client {
    fn group_of<'a>(&'a self, cluster: &'a str, arn: &'a str) -> BoxFuture<'a, Call<String>> {
        Box::pin(group_of(self, cluster, arn))
    }
    fn service<'a>(&'a self, id: &'a Identity) -> BoxFuture<'a, Call<Option<(ServiceFacts, u32)>>> {
        Box::pin(service(self, id))
    }
    fn tasks<'a>(&'a self, id: &'a Identity) -> BoxFuture<'a, Call<Vec<TaskFacts>>> {
        Box::pin(tasks_of(self, id))
    }
}

/// Looks at the service until `stop` fires, turning the deployment and scale-in reasons of
/// `yielding` on and off.
pub(crate) async fn run(
    ecs: aws_sdk_ecs::Client,
    config: ViewConfig,
    yielding: &Yielding,
    stop: CancellationToken,
) {
    let id = match identify(&ecs, &config, &stop).await {
        Ok(id) => id,
        Err(Stop::Cancelled) => return,
        Err(e) => return tracing::warn!("{e}"),
    };
    tracing::info!(
        cluster = %id.cluster,
        service = %id.service,
        task_definition = %id.me.task_definition,
        poll_s = config.poll.as_secs_f64(),
        "watching the service for deployments and scale-ins"
    );
    watch(&ecs, &id, config.poll, yielding, &stop).await;
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

/// Looks at the service once a period until `stop` fires.
pub(crate) async fn watch(
    api: &dyn ServiceApi,
    id: &Identity,
    poll: Duration,
    yielding: &Yielding,
    stop: &CancellationToken,
) {
    let set = |verdict: Option<Reason>| {
        yielding.set(Reason::Deployment, verdict == Some(Reason::Deployment));
        yielding.set(Reason::ScaleIn, verdict == Some(Reason::ScaleIn));
    };
    let mut failures = 0u32;
    let mut throttle = 1u32;
    let mut denied_warned = false;
    loop {
        let fleet = match once(api, id).await {
            Ok((verdict, fleet)) => {
                failures = 0;
                throttle = 1.max(throttle / 2);
                set(verdict);
                fleet
            }
            Err(Err(e @ Stop::Denied { .. })) => {
                if !denied_warned {
                    tracing::warn!("{e}");
                    denied_warned = true;
                }
                set(None);
                if !sleep_or_stop(DENIED_RETRY, stop).await {
                    break;
                }
                continue;
            }
            Err(Err(Stop::Cancelled)) => break,
            Err(Err(e)) => {
                tracing::warn!("{e}");
                break;
            }
            Err(Ok(t)) => {
                if failures == 0 {
                    tracing::warn!(reason = %t.reason, "cannot read the service from ECS; trying again");
                }
                failures = failures.saturating_add(1);
                if t.throttled {
                    throttle = (throttle * 2).min(MAX_THROTTLE_FACTOR);
                }
                FLEET_PER_PERIOD
            }
        };
        let spread = fleet.div_ceil(FLEET_PER_PERIOD).max(1) * throttle;
        let jitter = 0.8 + 0.4 * fastrand::f64();
        let period = poll.saturating_mul(spread).mul_f64(jitter);
        let wait = if failures > 0 {
            period.max(RETRY.delay(failures - 1))
        } else {
            period
        };
        if !sleep_or_stop(wait, stop).await {
            break;
        }
    }
    set(None);
}

/// Reads the metadata (retrying while the endpoint is not up) and finds the service.
async fn identify(
    api: &dyn ServiceApi,
    config: &ViewConfig,
    stop: &CancellationToken,
) -> Result<Identity, Stop> {
    let client =
        MetadataClient::new(&config.metadata_uri).map_err(|e| Stop::Metadata(e.to_string()))?;
    let mut failures = 0u32;
    let task = loop {
        match client.task().await {
            Ok(t) => break t,
            Err(e @ MetadataError::Unreadable(_)) => return Err(Stop::Metadata(e.to_string())),
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "task metadata not readable yet; trying again");
                }
                if !sleep_or_stop(RETRY.delay(failures), stop).await {
                    return Err(Stop::Cancelled);
                }
                failures = failures.saturating_add(1);
            }
        }
    };
    let me = Me {
        arn: task.task_arn.clone(),
        task_definition: task.task_definition(),
    };
    let service = match task.service_name.clone().filter(|s| !s.is_empty()) {
        Some(s) => s,
        None => loop {
            match api.group_of(&task.cluster, &task.task_arn).await {
                Ok(group) => match group.strip_prefix("service:") {
                    Some(s) => break s.to_string(),
                    None => return Err(Stop::NotAService(group)),
                },
                Err(Err(stop)) => return Err(stop),
                Err(Ok(t)) => {
                    if failures == 0 {
                        tracing::warn!(reason = %t.reason, "cannot describe this task yet; trying again");
                    }
                    if !sleep_or_stop(RETRY.delay(failures), stop).await {
                        return Err(Stop::Cancelled);
                    }
                    failures = failures.saturating_add(1);
                }
            }
        },
    };
    Ok(Identity {
        cluster: task.cluster,
        service,
        me,
    })
}

/// The task's `group` (`service:<name>` for a service's task).
async fn group_of(ecs: &aws_sdk_ecs::Client, cluster: &str, arn: &str) -> Call<String> {
    let out = ecs
        .describe_tasks()
        .cluster(cluster)
        .tasks(arn)
        .send()
        .await
        .map_err(|e| classify("ecs:DescribeTasks", e))?;
    Ok(out
        .tasks()
        .first()
        .and_then(|t| t.group())
        .unwrap_or_default()
        .to_string())
}

/// One look: what ECS wants of this task, and how many tasks the service runs.
async fn once(api: &dyn ServiceApi, id: &Identity) -> Call<(Option<Reason>, u32)> {
    let Some((facts, fleet)) = api.service(id).await? else {
        return Ok((None, 0));
    };
    let verdict = match decide::first(&facts, &id.me) {
        First::Stay => None,
        First::YieldAll(reason) => Some(reason),
        First::Choose { reason, count, of } => {
            let tasks = api.tasks(id).await?;
            let group = decide::group(&tasks, &facts, reason);
            // Not in the list: the views disagree for now; the next look decides.
            decide::chosen(&group, &id.me, count, of)
                .unwrap_or(false)
                .then_some(reason)
        }
    };
    Ok((verdict, fleet))
}

/// `DescribeServices` of the task's own service.
async fn service(ecs: &aws_sdk_ecs::Client, id: &Identity) -> Call<Option<(ServiceFacts, u32)>> {
    let out = ecs
        .describe_services()
        .cluster(&id.cluster)
        .services(&id.service)
        .send()
        .await
        .map_err(|e| classify("ecs:DescribeServices", e))?;
    let Some(s) = out.services().first() else {
        return Ok(None);
    };
    let config = s.deployment_configuration();
    let facts = ServiceFacts {
        desired: count(s.desired_count()),
        maximum_percent: config.and_then(|c| c.maximum_percent()).map_or(200, count),
        minimum_healthy_percent: config
            .and_then(|c| c.minimum_healthy_percent())
            .map_or(100, count),
        deployments: s
            .deployments()
            .iter()
            .map(|d| Deployment {
                primary: d.status() == Some("PRIMARY"),
                task_definition: d.task_definition().unwrap_or_default().to_string(),
                desired: count(d.desired_count()),
                running: count(d.running_count()),
                pending: count(d.pending_count()),
            })
            .collect(),
    };
    Ok(Some((facts, count(s.running_count()))))
}

fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// The service's tasks that ECS wants running.
async fn tasks_of(ecs: &aws_sdk_ecs::Client, id: &Identity) -> Call<Vec<TaskFacts>> {
    let arns: Vec<String> = ecs
        .list_tasks()
        .cluster(&id.cluster)
        .service_name(&id.service)
        .desired_status(DesiredStatus::Running)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| classify("ecs:ListTasks", e))?;
    let mut tasks = Vec::with_capacity(arns.len());
    for chunk in arns.chunks(ECS_DESCRIBE_TASKS_MAX) {
        let out = ecs
            .describe_tasks()
            .cluster(&id.cluster)
            .set_tasks(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ecs:DescribeTasks", e))?;
        tasks.extend(
            out.tasks()
                .iter()
                .filter(|t| t.desired_status() == Some("RUNNING"))
                .map(|t| TaskFacts {
                    arn: t.task_arn().unwrap_or_default().to_string(),
                    task_definition: t.task_definition_arn().unwrap_or_default().to_string(),
                    started_at: t
                        .started_at()
                        .and_then(|d| d.to_millis().ok())
                        .or_else(|| t.created_at().and_then(|d| d.to_millis().ok())),
                }),
        );
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests;

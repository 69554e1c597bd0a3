//! `queue-worker ecs scale` / `queue-worker ecs watch`: set a service's desired count and watch ECS
//! settle it — new service events, running/desired/pending counts, and which tasks hold scale-in
//! protection and until when — for a person watching a scale to zero.
//!
//! The service is named directly (`--cluster/--service`) or found the way Copilot tags it
//! (`copilot-application`, `copilot-environment`, `copilot-service`), using ECS calls only.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ecs::types::{Service, ServiceField};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{parse_duration, ConfigError};

/// `DescribeServices` takes at most 10 services per call (ECS API reference).
pub const ECS_DESCRIBE_SERVICES_MAX: usize = 10;
/// `GetTaskProtection` takes at most 10 tasks per call (ECS API reference).
pub const ECS_GET_TASK_PROTECTION_MAX: usize = 10;
/// A service keeps at most its 100 newest events; we only ever see those.
pub const ECS_SERVICE_EVENTS_KEPT: usize = 100;
/// Existing events shown for context when watching starts (the rest count as already seen).
const CONTEXT_EVENTS: usize = 3;

const TAG_APP: &str = "copilot-application";
const TAG_ENV: &str = "copilot-environment";
const TAG_SVC: &str = "copilot-service";

const COPILOT_FLAGS: &str = "--app/--env/--name";
const COPILOT_ENVS: &str = "COPILOT_APPLICATION_NAME/COPILOT_ENVIRONMENT_NAME/COPILOT_SERVICE_NAME";
const DIRECT_FLAGS: &str = "--cluster/--service";
const DIRECT_ENVS: &str = "ECS_CLUSTER/ECS_SERVICE";

/// Exit code when the user stops the watch (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Args)]
pub struct EcsArgs {
    #[command(subcommand)]
    pub command: EcsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EcsCommand {
    /// Set the service's desired count; with --watch, follow it until it is steady.
    Scale(ScaleArgs),
    /// Follow the service's events, counts and task protection until it is steady.
    Watch(WatchArgs),
}

/// Which ECS service: `--cluster` + `--service`, or Copilot's `--app` + `--env` + `--name`.
#[derive(Debug, Args, Default)]
pub struct ServiceArgs {
    /// Copilot application (finds the service by its copilot-application tag).
    #[arg(long, env = "COPILOT_APPLICATION_NAME")]
    pub app: Option<String>,
    /// Copilot environment (copilot-environment tag).
    #[arg(long, env = "COPILOT_ENVIRONMENT_NAME")]
    pub env: Option<String>,
    /// Copilot service name (copilot-service tag).
    #[arg(long, env = "COPILOT_SERVICE_NAME")]
    pub name: Option<String>,
    /// ECS cluster name or ARN (with --service; or narrows the --app/--env/--name search).
    #[arg(long, env = "ECS_CLUSTER")]
    pub cluster: Option<String>,
    /// ECS service name or ARN (needs --cluster).
    #[arg(long, env = "ECS_SERVICE")]
    pub service: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchOpts {
    /// Stop watching after this long if the service is not steady (exit 1).
    #[arg(long, default_value = "10m")]
    pub timeout: String,
    /// How often to ask ECS.
    #[arg(long, default_value = "5s")]
    pub interval: String,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The new desired count (0 scales the service in completely).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub desired: i32,
    /// Then follow the service until it is steady, the timeout, or Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub opts: WatchOpts,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub opts: WatchOpts,
}

/// How the service is identified, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Direct {
        cluster: String,
        service: String,
    },
    Copilot {
        app: String,
        env: String,
        name: String,
        /// Search only this cluster.
        cluster: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EcsError {
    /// Bad or insufficient settings, or no such service: exit 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("ECS {op} failed: {reason}")]
    Aws { op: &'static str, reason: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("service {service} in cluster {cluster} is {status} (deleted?): nothing to watch")]
    Gone {
        cluster: String,
        service: String,
        status: String,
    },
}

impl EcsError {
    pub fn exit_code(&self) -> u8 {
        match self {
            EcsError::Config(_) => crate::cli::EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// One short line saying why an SDK call failed: the service's error code and message when it
/// sent them; the HTTP status when its answer could not be read (moto answers unknown actions with
/// an HTML 500 page); otherwise the error chain (no credentials, connection refused, ...).
fn aws_reason<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => return format!("{code}: {msg}"),
        (Some(code), None) => return code.to_string(),
        _ => {}
    }
    match e {
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            format!("HTTP {status} with no readable error")
        }
        _ => DisplayErrorContext(e).to_string().replace('\n', " "),
    }
}

fn aws<E>(op: &'static str) -> impl Fn(SdkError<E, HttpResponse>) -> EcsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| EcsError::Aws {
        op,
        reason: aws_reason(&e),
    }
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl ServiceArgs {
    /// Validates the identification: `--service` (with `--cluster`) wins; otherwise all three of
    /// `--app/--env/--name` are needed.
    pub fn target(&self) -> Result<Target, ConfigError> {
        let (app, env, name) = (
            nonempty(&self.app),
            nonempty(&self.env),
            nonempty(&self.name),
        );
        let (cluster, service) = (nonempty(&self.cluster), nonempty(&self.service));
        if let Some(service) = service {
            let Some(cluster) = cluster else {
                return Err(ConfigError {
                    flag: "--cluster",
                    env: "ECS_CLUSTER",
                    problem: format!("missing: --service {service} needs the cluster it runs in"),
                });
            };
            return Ok(Target::Direct { cluster, service });
        }
        match (app, env, name) {
            (Some(app), Some(env), Some(name)) => Ok(Target::Copilot {
                app,
                env,
                name,
                cluster,
            }),
            (None, None, None) => Err(ConfigError {
                flag: "--cluster/--service or --app/--env/--name",
                env: "ECS_CLUSTER/ECS_SERVICE or COPILOT_APPLICATION_NAME/COPILOT_ENVIRONMENT_NAME/COPILOT_SERVICE_NAME",
                problem: "missing: say which ECS service (by cluster and service, or by Copilot app, env and service name)".into(),
            }),
            (app, env, name) => {
                let missing: Vec<&str> = [
                    ("--app", app.is_none()),
                    ("--env", env.is_none()),
                    ("--name", name.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(f, _)| *f)
                .collect();
                Err(ConfigError {
                    flag: COPILOT_FLAGS,
                    env: COPILOT_ENVS,
                    problem: format!(
                        "incomplete: {} missing (a Copilot service needs all three)",
                        missing.join(", ")
                    ),
                })
            }
        }
    }
}

/// The last segment of an ARN (`.../cluster/name`, `.../service/cluster/name`, `.../task/c/id`).
pub fn short(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

fn fmt_time(t: &DateTime) -> String {
    DateTime::from_secs(t.secs())
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| format!("{}s since the epoch", t.secs()))
}

fn now() -> DateTime {
    DateTime::from(SystemTime::now())
}

/// The service we found: where it is, and how it looked.
#[derive(Debug, Clone)]
pub struct Located {
    pub cluster: String,
    pub service: String,
    pub found: Service,
}

fn tag<'a>(s: &'a Service, key: &str) -> Option<&'a str> {
    s.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Finds the service the target names.
pub async fn locate(ecs: &aws_sdk_ecs::Client, target: &Target) -> Result<Located, EcsError> {
    match target {
        Target::Direct { cluster, service } => {
            let out = ecs
                .describe_services()
                .cluster(cluster)
                .services(service)
                .send()
                .await
                .map_err(|e| match e.code() {
                    Some("ClusterNotFoundException") => EcsError::Config(ConfigError {
                        flag: DIRECT_FLAGS,
                        env: DIRECT_ENVS,
                        problem: format!("no ECS cluster {cluster} in this account and region"),
                    }),
                    _ => aws("DescribeServices")(e),
                })?;
            let found = out
                .services()
                .iter()
                .find(|s| s.status() == Some("ACTIVE") || s.status() == Some("DRAINING"))
                .cloned();
            let Some(found) = found else {
                return Err(EcsError::Config(ConfigError {
                    flag: DIRECT_FLAGS,
                    env: DIRECT_ENVS,
                    problem: format!("no active service {service} in cluster {cluster}"),
                }));
            };
            Ok(Located {
                cluster: found
                    .cluster_arn()
                    .map(str::to_string)
                    .unwrap_or_else(|| cluster.clone()),
                service: found
                    .service_name()
                    .map(str::to_string)
                    .unwrap_or_else(|| service.clone()),
                found,
            })
        }
        Target::Copilot {
            app,
            env,
            name,
            cluster,
        } => {
            let clusters = match cluster {
                Some(c) => vec![c.clone()],
                None => ecs
                    .list_clusters()
                    .into_paginator()
                    .items()
                    .send()
                    .try_collect()
                    .await
                    .map_err(aws("ListClusters"))?,
            };
            let mut matches = Vec::new();
            for c in &clusters {
                let arns = ecs
                    .list_services()
                    .cluster(c)
                    .into_paginator()
                    .items()
                    .send()
                    .try_collect()
                    .await
                    .map_err(aws("ListServices"))?;
                for chunk in arns.chunks(ECS_DESCRIBE_SERVICES_MAX) {
                    let out = ecs
                        .describe_services()
                        .cluster(c)
                        .set_services(Some(chunk.to_vec()))
                        .include(ServiceField::Tags)
                        .send()
                        .await
                        .map_err(aws("DescribeServices"))?;
                    for s in out.services() {
                        if s.status() == Some("ACTIVE")
                            && tag(s, TAG_APP) == Some(app.as_str())
                            && tag(s, TAG_ENV) == Some(env.as_str())
                            && tag(s, TAG_SVC) == Some(name.as_str())
                        {
                            matches.push(Located {
                                cluster: s
                                    .cluster_arn()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| c.clone()),
                                service: s.service_name().unwrap_or_default().to_string(),
                                found: s.clone(),
                            });
                        }
                    }
                }
            }
            let tags = format!("{TAG_APP}={app}, {TAG_ENV}={env}, {TAG_SVC}={name}");
            match matches.len() {
                1 => Ok(matches.remove(0)),
                0 => Err(EcsError::Config(ConfigError {
                    flag: COPILOT_FLAGS,
                    env: COPILOT_ENVS,
                    problem: format!(
                        "no active ECS service is tagged {tags} (searched {} cluster{}); check the names with `copilot svc ls` and the region",
                        clusters.len(),
                        if clusters.len() == 1 { "" } else { "s" }
                    ),
                })),
                _ => Err(EcsError::Config(ConfigError {
                    flag: COPILOT_FLAGS,
                    env: COPILOT_ENVS,
                    problem: format!(
                        "{} services are tagged {tags}: {}; pick one with --cluster/--service",
                        matches.len(),
                        matches
                            .iter()
                            .map(|m| format!("{} in {}", m.service, short(&m.cluster)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })),
            }
        }
    }
}

/// The counts that decide whether the service is steady.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub status: String,
    pub desired: i32,
    pub running: i32,
    pub pending: i32,
    pub deployments: usize,
}

impl Counts {
    pub fn of(s: &Service) -> Self {
        Self {
            status: s.status().unwrap_or("UNKNOWN").to_string(),
            desired: s.desired_count(),
            running: s.running_count(),
            pending: s.pending_count(),
            deployments: s.deployments().len(),
        }
    }

    /// Running what it should, nothing starting, no deployment in progress.
    pub fn settled(&self) -> bool {
        self.running == self.desired && self.pending == 0 && self.deployments == 1
    }

    pub fn line(&self) -> String {
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
pub enum Protection {
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
    pub fn line(&self) -> String {
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
pub enum Polled {
    Steady,
    Moving,
}

/// Follows one service, printing only what changed.
pub struct Watcher {
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
    pub fn new(ecs: aws_sdk_ecs::Client, located: &Located) -> Self {
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
    pub async fn poll(&mut self) -> Result<(Polled, Counts), EcsError> {
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
pub enum WatchEnd {
    Steady(Counts),
    TimedOut(Counts),
    Stopped,
}

/// Polls until steady, `timeout`, or `stop` fires.
pub async fn watch(
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

struct Settings {
    target: Target,
    timeout: Duration,
    interval: Duration,
}

fn settings(service: &ServiceArgs, opts: &WatchOpts) -> Result<Settings, ConfigError> {
    let target = service.target()?;
    let timeout = parse_duration(&opts.timeout, "--timeout", "(no env var)")?;
    let interval = parse_duration(&opts.interval, "--interval", "(no env var)")?;
    if interval.is_zero() {
        return Err(ConfigError {
            flag: "--interval",
            env: "(no env var)",
            problem: "must be more than 0".into(),
        });
    }
    Ok(Settings {
        target,
        timeout,
        interval,
    })
}

/// Runs `queue-worker ecs ...` and returns the exit code: 0 done (steady), 1 AWS error or not
/// steady before the timeout, 2 bad settings or no such service, 130 stopped by the user.
pub async fn main(args: EcsArgs) -> ExitCode {
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("queue-worker: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(args: EcsArgs) -> Result<ExitCode, EcsError> {
    let (service_args, opts, desired, then_watch) = match &args.command {
        EcsCommand::Scale(a) => (&a.service, &a.opts, Some(a.desired), a.watch),
        EcsCommand::Watch(a) => (&a.service, &a.opts, None, true),
    };
    let s = settings(service_args, opts)?;
    let sdk = crate::cli::aws_config().await;
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    let located = locate(&ecs, &s.target).await?;
    let name = format!(
        "service {} in cluster {}",
        located.service,
        short(&located.cluster)
    );
    if let Some(n) = desired {
        ecs.update_service()
            .cluster(&located.cluster)
            .service(&located.service)
            .desired_count(n)
            .send()
            .await
            .map_err(aws("UpdateService"))?;
        println!(
            "{}  {name}: desired count {} -> {n}",
            fmt_time(&now()),
            located.found.desired_count()
        );
        if !then_watch {
            return Ok(ExitCode::SUCCESS);
        }
    } else {
        println!("{}  watching {name}", fmt_time(&now()));
    }
    let stop = CancellationToken::new();
    let signals = crate::cli::shutdown_on_signals(stop.clone()).map_err(EcsError::Signals)?;
    println!(
        "watching until steady (running = desired, nothing pending, one deployment), {} at most; Ctrl-C stops watching",
        humantime::format_duration(s.timeout)
    );

    let mut watcher = Watcher::new(ecs, &located);
    let ended = watch(&mut watcher, s.timeout, s.interval, &stop).await;
    stop.cancel();
    signals.abort();
    match ended? {
        WatchEnd::Steady(c) => {
            println!(
                "{}  {name} is steady: running {} of {}",
                fmt_time(&now()),
                c.running,
                c.desired
            );
            Ok(ExitCode::SUCCESS)
        }
        WatchEnd::TimedOut(c) => {
            println!(
                "{}  gave up after {}: {name} is not steady ({})",
                fmt_time(&now()),
                humantime::format_duration(s.timeout),
                c.line()
            );
            eprintln!(
                "queue-worker: {name} not steady after {}; protected tasks keep running until their jobs end or protection expires",
                humantime::format_duration(s.timeout)
            );
            Ok(ExitCode::FAILURE)
        }
        WatchEnd::Stopped => {
            println!("{}  stopped watching {name}", fmt_time(&now()));
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> ServiceArgs {
        let mut a = ServiceArgs::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "app" => a.app = v,
                "env" => a.env = v,
                "name" => a.name = v,
                "cluster" => a.cluster = v,
                "service" => a.service = v,
                _ => panic!("unknown key {k}"),
            }
        }
        a
    }

    #[test]
    fn service_flags_win_and_need_a_cluster() {
        let t = args(&[("cluster", "c"), ("service", "s"), ("app", "a")]).target();
        assert_eq!(
            t,
            Ok(Target::Direct {
                cluster: "c".into(),
                service: "s".into()
            })
        );
        let e = args(&[("service", "s")]).target().expect_err("invalid");
        assert_eq!(e.flag, "--cluster");
    }

    #[test]
    fn copilot_needs_all_three_and_names_the_missing() {
        let t = args(&[("app", "a"), ("env", "e"), ("name", "n"), ("cluster", "c")]).target();
        assert_eq!(
            t,
            Ok(Target::Copilot {
                app: "a".into(),
                env: "e".into(),
                name: "n".into(),
                cluster: Some("c".into())
            })
        );
        let e = args(&[("app", "a"), ("env", " ")])
            .target()
            .expect_err("invalid");
        assert!(e.problem.contains("--env, --name"), "{e}");
        let e = args(&[]).target().expect_err("invalid");
        assert!(e.to_string().contains("ECS_SERVICE"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

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

    #[test]
    fn short_takes_the_last_arn_segment() {
        assert_eq!(short("arn:aws:ecs:us-east-1:1:task/c/0123"), "0123");
        assert_eq!(short("plain"), "plain");
    }
}

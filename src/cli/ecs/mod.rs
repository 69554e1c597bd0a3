//! `queue-worker ecs scale` / `queue-worker ecs watch`: set a service's desired count and watch ECS
//! settle it — new service events, running/desired/pending counts, and which tasks hold scale-in
//! protection and until when — for a person watching a scale to zero.
//!
//! The service is named directly (`--cluster/--service`) or found the way Copilot tags it
//! (`copilot-application`, `copilot-environment`, `copilot-service`), using ECS calls only.

mod locate;
mod watch;

use std::time::{Duration, SystemTime};

use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::primitives::{DateTime, DateTimeFormat};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::Done;
use crate::config::parse;
use crate::config::ConfigError;
use locate::locate;
use watch::{watch, WatchEnd, Watcher};

pub(super) const COPILOT_FLAGS: &str = "--app/--env/--name";
pub(super) const COPILOT_ENVS: &str =
    "COPILOT_APPLICATION_NAME/COPILOT_ENVIRONMENT_NAME/COPILOT_SERVICE_NAME";
pub(super) const DIRECT_FLAGS: &str = "--cluster/--service";
pub(super) const DIRECT_ENVS: &str = "ECS_CLUSTER/ECS_SERVICE";

#[derive(Debug, Args)]
pub(super) struct EcsArgs {
    #[command(subcommand)]
    pub command: EcsCommand,
}

#[derive(Debug, Subcommand)]
pub(super) enum EcsCommand {
    /// Set the service's desired count; with --watch, follow it until it is steady.
    Scale(ScaleArgs),
    /// Follow the service's events, counts and task protection until it is steady.
    Watch(WatchArgs),
}

/// Which ECS service: `--cluster` + `--service`, or Copilot's `--app` + `--env` + `--name`.
#[derive(Debug, Args, Default)]
pub(super) struct ServiceArgs {
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
pub(super) struct WatchOpts {
    /// Stop watching after this long if the service is not steady (exit 1).
    #[arg(long, default_value = "10m", value_parser = parse::duration(Duration::ZERO, Duration::MAX, None))]
    pub timeout: Duration,
    /// How often to ask ECS.
    #[arg(long, default_value = "5s", value_parser = parse::duration(Duration::from_millis(1), Duration::MAX, None))]
    pub interval: Duration,
}

#[derive(Debug, Args)]
pub(super) struct ScaleArgs {
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
pub(super) struct WatchArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub opts: WatchOpts,
}

/// How the service is identified, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
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
pub(super) enum EcsError {
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
    /// Bad settings, or no such service (rather than an AWS failure).
    pub(super) fn is_config(&self) -> bool {
        matches!(self, EcsError::Config(_))
    }
}

pub(super) fn aws<E>(op: &'static str) -> impl Fn(SdkError<E, HttpResponse>) -> EcsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    move |e| EcsError::Aws {
        op,
        reason: crate::aws::error_reason(&e),
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
    pub(super) fn target(&self) -> Result<Target, ConfigError> {
        let (app, env, name) = (
            nonempty(&self.app),
            nonempty(&self.env),
            nonempty(&self.name),
        );
        let (cluster, service) = (nonempty(&self.cluster), nonempty(&self.service));
        if let Some(service) = service {
            let Some(cluster) = cluster else {
                return Err(parse::invalid_setting::<ServiceArgs>(
                    "cluster",
                    format!("missing: --service {service} needs the cluster it runs in"),
                ));
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
                flag: format!("{DIRECT_FLAGS} or {COPILOT_FLAGS}"),
                env: format!("{DIRECT_ENVS} or {COPILOT_ENVS}"),
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
                    flag: COPILOT_FLAGS.into(),
                    env: COPILOT_ENVS.into(),
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
pub(super) fn short(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

pub(super) fn fmt_time(t: &DateTime) -> String {
    DateTime::from_secs(t.secs())
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| format!("{}s since the epoch", t.secs()))
}

pub(super) fn now() -> DateTime {
    DateTime::from(SystemTime::now())
}

struct Settings {
    target: Target,
    timeout: Duration,
    interval: Duration,
}

fn settings(service: &ServiceArgs, opts: &WatchOpts) -> Result<Settings, ConfigError> {
    Ok(Settings {
        target: service.target()?,
        timeout: opts.timeout,
        interval: opts.interval,
    })
}

/// Runs `queue-worker ecs ...`: done when steady; not steady before the timeout; interrupted
/// by the user; or an error (bad settings or no such service, an AWS failure).
pub(super) async fn main(args: EcsArgs) -> Result<Done, EcsError> {
    let (service_args, opts, desired, then_watch) = match &args.command {
        EcsCommand::Scale(a) => (&a.service, &a.opts, Some(a.desired), a.watch),
        EcsCommand::Watch(a) => (&a.service, &a.opts, None, true),
    };
    let s = settings(service_args, opts)?;
    let sdk = crate::aws::aws_config().await;
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
            return Ok(Done::Success);
        }
    } else {
        println!("{}  watching {name}", fmt_time(&now()));
    }
    let stop = CancellationToken::new();
    let signals = super::shutdown_on_signals(stop.clone()).map_err(EcsError::Signals)?;
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
            Ok(Done::Success)
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
            Ok(Done::NotSteady)
        }
        WatchEnd::Stopped => {
            println!("{}  stopped watching {name}", fmt_time(&now()));
            Ok(Done::Interrupted)
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
    fn short_takes_the_last_arn_segment() {
        assert_eq!(short("arn:aws:ecs:us-east-1:1:task/c/0123"), "0123");
        assert_eq!(short("plain"), "plain");
    }
}

//! Command-line and environment settings for `queue-worker run`, parsed once into a validated
//! [`Config`]. Runtime code only ever sees `Config`; nothing else reads the environment.

use std::time::Duration;

use clap::Args;

use crate::backoff::Backoff;
use crate::limits::{ECS_MAX_PROTECTION_MINUTES, SQS_MAX_VISIBILITY, SQS_MAX_WAIT};

/// A setting that is missing or malformed: one line naming the flag and its env var.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid setting {flag} / {env}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub env: &'static str,
    pub problem: String,
}

/// How the worker keeps ECS from stopping it mid-job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtectionBackendKind {
    /// The ECS agent's task-protection endpoint (`$ECS_AGENT_URI/task-protection/v1/state`).
    Agent { agent_uri: String },
    /// The ECS API `UpdateTaskProtection`, with cluster and task ARN read from task metadata v4.
    EcsApi { metadata_uri: String },
    /// No protection (outside ECS, or `--protection off`).
    Off { reason: &'static str },
}

/// When protection is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectMode {
    /// Hold protection before every receive (the AWS sample's behaviour); release when idle.
    BeforeReceive,
    /// Long-poll unprotected while idle; take protection as soon as messages arrive.
    OnReceipt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionConfig {
    pub backend: ProtectionBackendKind,
    pub mode: ProtectMode,
    /// How long each enabling call protects the task for (whole minutes, 1..=2880).
    pub duration: Duration,
    /// Protection is never released sooner than this after it was taken.
    pub min_hold: Duration,
    /// Unprotected pause between an idle release and the next protected receive.
    pub idle_window: Duration,
}

impl ProtectionConfig {
    /// Protection switched off.
    pub fn off() -> Self {
        let duration = Duration::from_secs(300);
        Self {
            backend: ProtectionBackendKind::Off { reason: "disabled" },
            mode: ProtectMode::BeforeReceive,
            duration,
            min_hold: duration / 10,
            idle_window: Duration::from_secs(5),
        }
    }
}

/// Where a message goes when it has failed `max_receives` times and the queue has no redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterConfig {
    pub queue_url: String,
    pub max_receives: u32,
}

/// The validated settings of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub queue_url: String,
    /// More queues consumed beside `queue_url`, sharing its concurrency budget and protection.
    pub extra_queue_urls: Vec<String>,
    pub concurrency: usize,
    pub wait_time: Duration,
    pub visibility_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub protection: ProtectionConfig,
    /// Delay before a failed message is received again, by receive count.
    pub retry: Backoff,
    /// How long the deleter waits for more deletes before sending a partial batch.
    pub delete_linger: Duration,
    pub dead_letter: Option<DeadLetterConfig>,
    /// Where `/health` and `/metrics` are served (off when `None`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// A job running longer is cancelled and counted as failed (`None`: no limit).
    pub job_timeout: Option<Duration>,
    /// How long a receive may run past the long-poll wait before `/health` says unhealthy.
    pub health_grace: Duration,
}

impl Config {
    /// Defaults for `queue_url`, with protection off: what library users start from.
    pub fn new(queue_url: impl Into<String>) -> Self {
        Self {
            queue_url: queue_url.into(),
            extra_queue_urls: Vec::new(),
            concurrency: 10,
            wait_time: Duration::from_secs(20),
            visibility_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(25),
            protection: ProtectionConfig::off(),
            retry: Backoff::new(Duration::from_secs(2), Duration::from_secs(300)),
            delete_linger: Duration::from_millis(20),
            dead_letter: None,
            metrics_addr: None,
            job_timeout: None,
            health_grace: Duration::from_secs(30),
        }
    }

    /// Every queue consumed: `queue_url` first, then `extra_queue_urls`, without repeats.
    pub fn queue_urls(&self) -> Vec<String> {
        let mut urls = vec![self.queue_url.clone()];
        for u in &self.extra_queue_urls {
            if !urls.contains(u) {
                urls.push(u.clone());
            }
        }
        urls
    }
}

/// How the hot SQS calls are sent (`--sqs-client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqsClientKind {
    Direct,
    Sdk,
}

/// Flags of `queue-worker run`. Every flag can also come from the env var named beside it.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// URL of an SQS queue to consume; repeat the flag (or separate with commas) for several
    /// queues sharing one concurrency budget. Falls back to COPILOT_QUEUE_URI.
    #[arg(long, env = "QUEUE_URL", value_delimiter = ',')]
    pub queue_url: Vec<String>,

    /// Set by Copilot for Worker Services; used when --queue-url is absent.
    #[arg(long, env = "COPILOT_QUEUE_URI", hide = true)]
    pub copilot_queue_uri: Option<String>,

    /// Set by Copilot when topics have their own queues: a JSON object of name to queue URL.
    /// Every queue in it is consumed too.
    #[arg(long, env = "COPILOT_TOPIC_QUEUE_URIS", hide = true)]
    pub copilot_topic_queue_uris: Option<String>,

    /// Most jobs running at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value = "10")]
    pub concurrency: String,

    /// Long-poll wait of each receive (0s..=20s).
    #[arg(long, env = "WORKER_WAIT_TIME", default_value = "20s")]
    pub wait_time: String,

    /// Visibility timeout asked for on receive; extended while a job runs (1s..=12h).
    #[arg(long, env = "WORKER_VISIBILITY_TIMEOUT", default_value = "60s")]
    pub visibility_timeout: String,

    /// After SIGTERM/SIGINT, how long running jobs may go on before they are cancelled and their
    /// messages returned. Keep it below the ECS stop timeout (30s by default).
    #[arg(long, env = "WORKER_SHUTDOWN_TIMEOUT", default_value = "25s")]
    pub shutdown_timeout: String,

    /// Protection backend: auto (agent endpoint when ECS_AGENT_URI is set, else off), agent,
    /// ecs-api (UpdateTaskProtection through the ECS API), off.
    #[arg(long, env = "WORKER_PROTECTION", default_value = "auto")]
    pub protection: String,

    /// When to take protection: before-receive (hold it for every receive while work flows; once
    /// idle, release and poll unprotected until messages arrive) or on-receipt (poll unprotected
    /// whenever no job runs, protect as soon as messages arrive).
    #[arg(long, env = "WORKER_PROTECT", default_value = "before-receive")]
    pub protect: String,

    /// Length of each protection grant, whole minutes (1m..=48h); refreshed at 80 %.
    #[arg(long, env = "WORKER_PROTECTION_DURATION", default_value = "5m")]
    pub protection_duration: String,

    /// Shortest time protection is held once taken [default: 10 % of --protection-duration].
    #[arg(long, env = "WORKER_PROTECTION_MIN_HOLD")]
    pub protection_min_hold: Option<String>,

    /// Unprotected pause after an idle release, so ECS can stop an idle task (0s allowed).
    #[arg(long, env = "WORKER_IDLE_WINDOW", default_value = "5s")]
    pub idle_window: String,

    /// First retry delay of a failed message; doubles with each receive.
    #[arg(long, env = "WORKER_RETRY_BASE", default_value = "2s")]
    pub retry_base: String,

    /// Longest retry delay of a failed message.
    #[arg(long, env = "WORKER_RETRY_MAX", default_value = "5m")]
    pub retry_max: String,

    /// How long a partial delete batch waits for more entries before it is sent.
    #[arg(long, env = "WORKER_DELETE_LINGER", default_value = "20ms")]
    pub delete_linger: String,

    /// Dead-letter queue the worker itself moves messages to after --max-receives failures
    /// (only when the source queue has no redrive policy).
    #[arg(long, env = "DEAD_LETTER_QUEUE_URL")]
    pub dead_letter_queue_url: Option<String>,

    /// Receives after which a failing message goes to --dead-letter-queue-url.
    #[arg(long, env = "WORKER_MAX_RECEIVES", default_value = "5")]
    pub max_receives: String,

    /// Serve /health and /metrics (Prometheus) on this address, e.g. 127.0.0.1:9090 [default: off].
    #[arg(long, env = "WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Cancel a job that runs longer than this and count it as failed [default: no limit].
    #[arg(long, env = "WORKER_JOB_TIMEOUT")]
    pub job_timeout: Option<String>,

    /// Run this program per message (body on stdin, MESSAGE_ID / RECEIVE_COUNT /
    /// MESSAGE_ATTR_<NAME> in env; exit 0 = done, 65 = dead-letter now, other = retry).
    /// Must come last: everything after it is the command and its arguments.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    pub exec: Vec<String>,

    /// POST each body to this local app (Elastic Beanstalk worker style): 2xx = done,
    /// 429/503 + Retry-After = retry after that, other = retry with backoff.
    #[arg(long, env = "WORKER_FORWARD_TO", conflicts_with = "exec")]
    pub forward_to: Option<String>,

    /// Don't poll until this URL answers 2xx [default: --forward-to's origin + /health].
    #[arg(long, env = "WORKER_FORWARD_HEALTH_URL")]
    pub forward_health_url: Option<String>,

    /// Per-request timeout for --forward-to.
    #[arg(long, env = "WORKER_FORWARD_TIMEOUT", default_value = "60s")]
    pub forward_timeout: String,

    /// The same as --exec, from the environment: split on whitespace (no shell quoting).
    #[arg(long = "exec-env", env = "WORKER_EXEC", hide = true)]
    pub exec_env: Option<String>,

    /// How long a receive may run past --wait-time before /health reports the loop wedged.
    #[arg(long, env = "WORKER_HEALTH_GRACE", default_value = "30s")]
    pub health_grace: String,

    /// How receives and batch deletes are sent: `direct` (signed and sent by the worker, the
    /// SDK's HTTP client, endpoint rules and credentials; about a third less CPU per message) or
    /// `sdk` (the AWS SDK's full request pipeline, with its retries).
    #[arg(long, env = "WORKER_SQS_CLIENT", value_enum, default_value = "direct")]
    pub sqs_client: SqsClientKind,

    /// Set by ECS: the agent endpoint used for task protection.
    #[arg(long, env = "ECS_AGENT_URI", hide = true)]
    pub ecs_agent_uri: Option<String>,

    /// Set by ECS: the task metadata v4 endpoint (for --protection ecs-api).
    #[arg(long, env = "ECS_CONTAINER_METADATA_URI_V4", hide = true)]
    pub ecs_metadata_uri: Option<String>,
}

fn err(flag: &'static str, env: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        env,
        problem: problem.into(),
    }
}

/// Parses `10s`, `5m`, `250ms`, `1h 30m`; a bare number is rejected so units are never guessed.
pub fn parse_duration(
    raw: &str,
    flag: &'static str,
    env: &'static str,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(raw.trim()).map_err(|e| {
        err(
            flag,
            env,
            format!("\"{raw}\" is not a duration like 10s or 5m ({e})"),
        )
    })
}

fn parse_bounded(
    raw: &str,
    flag: &'static str,
    env: &'static str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = parse_duration(raw, flag, env)?;
    if d < min || d > max {
        return Err(err(
            flag,
            env,
            format!(
                "{raw} is out of range {}..={}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn whole_seconds(
    d: Duration,
    raw: &str,
    flag: &'static str,
    env: &'static str,
) -> Result<Duration, ConfigError> {
    if d.subsec_nanos() != 0 {
        return Err(err(
            flag,
            env,
            format!("{raw} must be whole seconds (SQS counts in seconds)"),
        ));
    }
    Ok(d)
}

fn parse_count(
    raw: &str,
    flag: &'static str,
    env: &'static str,
    max: u64,
) -> Result<u64, ConfigError> {
    match raw.trim().parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(err(
            flag,
            env,
            format!("\"{raw}\" must be a whole number from 1 to {max}"),
        )),
    }
}

fn check_url(raw: &str, flag: &'static str, env: &'static str) -> Result<String, ConfigError> {
    let url = raw.trim();
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.trim_end_matches('/').to_string())
    } else {
        Err(err(flag, env, format!("\"{raw}\" is not an http(s) URL")))
    }
}

/// Parses `--metrics-addr` (host:port, e.g. 127.0.0.1:9090).
pub fn parse_addr(raw: &str) -> Result<std::net::SocketAddr, ConfigError> {
    raw.trim().parse().map_err(|_| {
        err(
            "--metrics-addr",
            "WORKER_METRICS_ADDR",
            format!("\"{raw}\" is not an address like 127.0.0.1:9090"),
        )
    })
}

/// Where `--forward-to` sends bodies, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    pub url: String,
    pub health_url: String,
    pub timeout: Duration,
}

impl RunArgs {
    /// `--forward-to` settings, validated; `None` when not set.
    pub fn forward(&self) -> Result<Option<ForwardConfig>, ConfigError> {
        let Some(raw) = self.forward_to.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let url = check_url(raw, "--forward-to", "WORKER_FORWARD_TO")?;
        let health_url = match self
            .forward_health_url
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(h) => check_url(h, "--forward-health-url", "WORKER_FORWARD_HEALTH_URL")?,
            None => {
                // scheme://host:port + /health
                let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
                let origin_end = url[after_scheme..]
                    .find('/')
                    .map(|i| i + after_scheme)
                    .unwrap_or(url.len());
                format!("{}/health", &url[..origin_end])
            }
        };
        let timeout = parse_bounded(
            &self.forward_timeout,
            "--forward-timeout",
            "WORKER_FORWARD_TIMEOUT",
            Duration::from_millis(1),
            SQS_MAX_VISIBILITY,
        )?;
        Ok(Some(ForwardConfig {
            url,
            health_url,
            timeout,
        }))
    }

    /// The `--exec` command line (or `WORKER_EXEC` split on whitespace); empty when not set.
    pub fn exec_command(&self) -> Vec<String> {
        if !self.exec.is_empty() {
            return self.exec.clone();
        }
        self.exec_env
            .as_deref()
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Validates every setting; the first problem found is returned.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut queue_urls = Vec::new();
        for raw in self.queue_url.iter().filter(|s| !s.trim().is_empty()) {
            queue_urls.push(check_url(raw, "--queue-url", "QUEUE_URL")?);
        }
        if queue_urls.is_empty() {
            if let Some(raw) = self.copilot_queue_uri.filter(|s| !s.trim().is_empty()) {
                queue_urls.push(check_url(&raw, "--queue-url", "COPILOT_QUEUE_URI")?);
            }
        }
        if let Some(raw) = self
            .copilot_topic_queue_uris
            .filter(|s| !s.trim().is_empty())
        {
            queue_urls.extend(topic_queues(&raw)?);
        }
        if queue_urls.is_empty() {
            return Err(err(
                "--queue-url",
                "QUEUE_URL",
                "missing: give the queue URL (or run under Copilot, which sets COPILOT_QUEUE_URI)",
            ));
        }
        let queue_url = queue_urls.remove(0);
        let extra_queue_urls = queue_urls;

        let concurrency = parse_count(
            &self.concurrency,
            "--concurrency",
            "WORKER_CONCURRENCY",
            10_000,
        )? as usize;

        let (f, e) = ("--wait-time", "WORKER_WAIT_TIME");
        let wait_time = parse_bounded(&self.wait_time, f, e, Duration::ZERO, SQS_MAX_WAIT)?;
        let wait_time = whole_seconds(wait_time, &self.wait_time, f, e)?;

        let (f, e) = ("--visibility-timeout", "WORKER_VISIBILITY_TIMEOUT");
        let visibility_timeout = parse_bounded(
            &self.visibility_timeout,
            f,
            e,
            Duration::from_secs(1),
            SQS_MAX_VISIBILITY,
        )?;
        let visibility_timeout = whole_seconds(visibility_timeout, &self.visibility_timeout, f, e)?;

        let shutdown_timeout = parse_bounded(
            &self.shutdown_timeout,
            "--shutdown-timeout",
            "WORKER_SHUTDOWN_TIMEOUT",
            Duration::ZERO,
            Duration::from_secs(2 * 60 * 60),
        )?;

        let (f, e) = ("--protection-duration", "WORKER_PROTECTION_DURATION");
        let duration = parse_bounded(
            &self.protection_duration,
            f,
            e,
            Duration::from_secs(60),
            Duration::from_secs(ECS_MAX_PROTECTION_MINUTES * 60),
        )?;
        if duration.as_nanos() % Duration::from_secs(60).as_nanos() != 0 {
            return Err(err(
                f,
                e,
                format!(
                    "{} must be whole minutes (the agent counts in minutes)",
                    self.protection_duration
                ),
            ));
        }
        let min_hold = match &self.protection_min_hold {
            Some(raw) => parse_bounded(
                raw,
                "--protection-min-hold",
                "WORKER_PROTECTION_MIN_HOLD",
                Duration::ZERO,
                duration,
            )?,
            None => duration / 10,
        };
        let idle_window = parse_bounded(
            &self.idle_window,
            "--idle-window",
            "WORKER_IDLE_WINDOW",
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        let mode = match self.protect.trim() {
            "before-receive" => ProtectMode::BeforeReceive,
            "on-receipt" => ProtectMode::OnReceipt,
            other => {
                return Err(err(
                    "--protect",
                    "WORKER_PROTECT",
                    format!("\"{other}\" is not one of before-receive, on-receipt"),
                ))
            }
        };
        let agent_uri = self.ecs_agent_uri.filter(|s| !s.trim().is_empty());
        let backend = match self.protection.trim() {
            "auto" => match agent_uri {
                Some(uri) => ProtectionBackendKind::Agent {
                    agent_uri: check_url(&uri, "--ecs-agent-uri", "ECS_AGENT_URI")?,
                },
                None => ProtectionBackendKind::Off {
                    reason: "ECS_AGENT_URI is not set (not running on ECS)",
                },
            },
            "agent" => {
                let uri = agent_uri.ok_or_else(|| {
                    err("--ecs-agent-uri", "ECS_AGENT_URI", "missing: --protection agent needs the ECS agent endpoint (set by ECS in every task)")
                })?;
                ProtectionBackendKind::Agent {
                    agent_uri: check_url(&uri, "--ecs-agent-uri", "ECS_AGENT_URI")?,
                }
            }
            "ecs-api" => {
                let uri = self.ecs_metadata_uri.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                    err("--ecs-metadata-uri", "ECS_CONTAINER_METADATA_URI_V4", "missing: --protection ecs-api reads the cluster and task ARN from task metadata v4")
                })?;
                ProtectionBackendKind::EcsApi {
                    metadata_uri: check_url(
                        &uri,
                        "--ecs-metadata-uri",
                        "ECS_CONTAINER_METADATA_URI_V4",
                    )?,
                }
            }
            "off" => ProtectionBackendKind::Off {
                reason: "--protection off",
            },
            other => {
                return Err(err(
                    "--protection",
                    "WORKER_PROTECTION",
                    format!("\"{other}\" is not one of auto, agent, ecs-api, off"),
                ))
            }
        };

        let retry_base = parse_bounded(
            &self.retry_base,
            "--retry-base",
            "WORKER_RETRY_BASE",
            Duration::ZERO,
            SQS_MAX_VISIBILITY,
        )?;
        let retry_max = parse_bounded(
            &self.retry_max,
            "--retry-max",
            "WORKER_RETRY_MAX",
            retry_base,
            SQS_MAX_VISIBILITY,
        )?;
        let delete_linger = parse_bounded(
            &self.delete_linger,
            "--delete-linger",
            "WORKER_DELETE_LINGER",
            Duration::ZERO,
            Duration::from_secs(1),
        )?;
        let max_receives = parse_count(
            &self.max_receives,
            "--max-receives",
            "WORKER_MAX_RECEIVES",
            1000,
        )? as u32;
        let dead_letter = match self.dead_letter_queue_url.filter(|s| !s.trim().is_empty()) {
            Some(raw) => Some(DeadLetterConfig {
                queue_url: check_url(&raw, "--dead-letter-queue-url", "DEAD_LETTER_QUEUE_URL")?,
                max_receives,
            }),
            None => None,
        };

        let metrics_addr = match self.metrics_addr.filter(|s| !s.trim().is_empty()) {
            Some(raw) => Some(parse_addr(&raw)?),
            None => None,
        };
        let health_grace = parse_bounded(
            &self.health_grace,
            "--health-grace",
            "WORKER_HEALTH_GRACE",
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;

        let job_timeout = match self.job_timeout.filter(|s| !s.trim().is_empty()) {
            Some(raw) => Some(parse_bounded(
                &raw,
                "--job-timeout",
                "WORKER_JOB_TIMEOUT",
                Duration::from_millis(1),
                SQS_MAX_VISIBILITY,
            )?),
            None => None,
        };

        Ok(Config {
            queue_url,
            extra_queue_urls,
            metrics_addr,
            job_timeout,
            health_grace,
            concurrency,
            wait_time,
            visibility_timeout,
            shutdown_timeout,
            protection: ProtectionConfig {
                backend,
                mode,
                duration,
                min_hold,
                idle_window,
            },
            retry: Backoff::new(retry_base, retry_max),
            delete_linger,
            dead_letter,
        })
    }
}

/// The queue URLs of `COPILOT_TOPIC_QUEUE_URIS` (a JSON object of name to URL), by name.
fn topic_queues(raw: &str) -> Result<Vec<String>, ConfigError> {
    let flag = "--copilot-topic-queue-uris";
    let env = "COPILOT_TOPIC_QUEUE_URIS";
    let map: std::collections::BTreeMap<String, String> =
        serde_json::from_str(raw).map_err(|e| {
            err(
                flag,
                env,
                format!("not a JSON object of name to queue URL: {e}"),
            )
        })?;
    map.values().map(|u| check_url(u, flag, env)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    /// Parses flags only: env vars of the test process could leak in, so each test passes every
    /// value it depends on explicitly.
    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["t", "--ecs-agent-uri", "", "--copilot-queue-uri", ""];
        if !args.contains(&"--copilot-topic-queue-uris") {
            v.extend(["--copilot-topic-queue-uris", ""]);
        }
        v.extend_from_slice(args);
        T::try_parse_from(v)
            .expect("clap structure")
            .run
            .into_config()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[
            "--queue-url",
            "http://127.0.0.1:1/q",
            "--protection",
            "auto",
        ])
        .expect("valid");
        assert_eq!(c.concurrency, 10);
        assert_eq!(c.wait_time, Duration::from_secs(20));
        assert_eq!(c.visibility_timeout, Duration::from_secs(60));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(c.protection.duration, Duration::from_secs(300));
        assert_eq!(c.protection.min_hold, Duration::from_secs(30));
        assert_eq!(c.protection.idle_window, Duration::from_secs(5));
        assert_eq!(c.protection.mode, ProtectMode::BeforeReceive);
        assert!(matches!(
            c.protection.backend,
            ProtectionBackendKind::Off { .. }
        ));
    }

    #[test]
    fn many_queues_from_repeated_flags_commas_and_copilot_topics() {
        let c = parse(&[
            "--queue-url",
            "http://h/a",
            "--queue-url",
            "http://h/b,http://h/a",
            "--copilot-topic-queue-uris",
            r#"{"orders":"http://h/orders","events":"http://h/events"}"#,
        ])
        .expect("valid");
        assert_eq!(c.queue_url, "http://h/a");
        assert_eq!(
            c.queue_urls(),
            [
                "http://h/a",
                "http://h/b",
                "http://h/events",
                "http://h/orders"
            ]
        );
        let e = parse(&[
            "--queue-url",
            "http://h/a",
            "--copilot-topic-queue-uris",
            "[1]",
        ])
        .expect_err("not an object");
        assert!(e.to_string().contains("COPILOT_TOPIC_QUEUE_URIS"), "{e}");
    }

    #[test]
    fn copilot_queue_is_the_fallback() {
        let c = T::try_parse_from([
            "t",
            "--copilot-queue-uri",
            "https://sqs.eu-west-1.amazonaws.com/1/q",
            "--ecs-agent-uri",
            "http://169.254.170.2/api/x",
        ])
        .expect("clap")
        .run
        .into_config()
        .expect("valid");
        assert_eq!(c.queue_url, "https://sqs.eu-west-1.amazonaws.com/1/q");
        assert_eq!(
            c.protection.backend,
            ProtectionBackendKind::Agent {
                agent_uri: "http://169.254.170.2/api/x".into()
            }
        );
    }

    #[test]
    fn bad_values_name_flag_and_env() {
        let q = ["--queue-url", "http://h/q"];
        let cases: &[(&[&str], &str)] = &[
            (&[], "--queue-url / QUEUE_URL"),
            (&["--queue-url", "sqs/q"], "--queue-url / QUEUE_URL"),
            (
                &[q[0], q[1], "--wait-time", "21s"],
                "--wait-time / WORKER_WAIT_TIME",
            ),
            (
                &[q[0], q[1], "--wait-time", "10"],
                "--wait-time / WORKER_WAIT_TIME",
            ),
            (
                &[q[0], q[1], "--visibility-timeout", "1500ms"],
                "--visibility-timeout / WORKER_VISIBILITY_TIMEOUT",
            ),
            (
                &[q[0], q[1], "--concurrency", "0"],
                "--concurrency / WORKER_CONCURRENCY",
            ),
            (
                &[q[0], q[1], "--protection-duration", "90s"],
                "--protection-duration / WORKER_PROTECTION_DURATION",
            ),
            (
                &[q[0], q[1], "--protection-duration", "49h"],
                "--protection-duration / WORKER_PROTECTION_DURATION",
            ),
            (
                &[q[0], q[1], "--protect", "always"],
                "--protect / WORKER_PROTECT",
            ),
            (
                &[q[0], q[1], "--protection", "agent"],
                "--ecs-agent-uri / ECS_AGENT_URI",
            ),
            (
                &[q[0], q[1], "--protection", "maybe"],
                "--protection / WORKER_PROTECTION",
            ),
            (
                &[q[0], q[1], "--protection-min-hold", "6m"],
                "--protection-min-hold / WORKER_PROTECTION_MIN_HOLD",
            ),
        ];
        for (args, needle) in cases {
            let e = parse(args).expect_err("must be rejected");
            let line = e.to_string();
            assert!(line.contains(needle), "{args:?}: {line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn on_receipt_and_zero_idle_window_are_accepted() {
        let c = parse(&[
            "--queue-url",
            "http://h/q",
            "--protect",
            "on-receipt",
            "--idle-window",
            "0s",
            "--protection-duration",
            "1m",
        ])
        .expect("valid");
        assert_eq!(c.protection.mode, ProtectMode::OnReceipt);
        assert_eq!(c.protection.idle_window, Duration::ZERO);
        assert_eq!(c.protection.min_hold, Duration::from_secs(6));
    }
}

//! The flags of `queue-worker run`, each with its env var and default written once (in its
//! `#[arg]`), typed by the parsers of [`super::parse`], and turned into a [`Config`].

use std::time::Duration;

use clap::{Args, Command, FromArgMatches};

use super::parse::{
    self, addr, count, count_or_zero, duration, one_of, optional, topic_queues, url, Maybe,
    WHOLE_MINUTES, WHOLE_SECONDS,
};
use super::{
    Config, ConfigError, DeadLetterConfig, EcsViewConfig, ProtectMode, ProtectionBackendKind,
    ProtectionConfig, YieldConfig,
};
use crate::backoff::Backoff;
use crate::limits::{ECS_MAX_PROTECTION_MINUTES, SQS_MAX_VISIBILITY, SQS_MAX_WAIT};

use crate::sqs::SqsClientKind;

const ZERO: Duration = Duration::ZERO;
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const MAX_PROTECTION: Duration = Duration::from_secs(ECS_MAX_PROTECTION_MINUTES * 60);

/// Which protection backend (`--protection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProtectionChoice {
    /// The agent endpoint when `ECS_AGENT_URI` is set, else off.
    Auto,
    Agent,
    EcsApi,
    Off,
}

/// Flags of `queue-worker run`. Every flag can also come from the env var named beside it.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// URL of an SQS queue to consume; repeat the flag (or separate with commas) for several
    /// queues sharing one concurrency budget. Falls back to COPILOT_QUEUE_URI.
    #[arg(long, env = "QUEUE_URL", value_delimiter = ',', value_parser = optional(url()))]
    queue_url: Vec<Maybe<String>>,

    /// Set by Copilot for Worker Services; used when --queue-url is absent.
    #[arg(long, env = "COPILOT_QUEUE_URI", hide = true, default_value = "", value_parser = optional(url()))]
    copilot_queue_uri: Maybe<String>,

    /// Set by Copilot when topics have their own queues: a JSON object of name to queue URL.
    /// Every queue in it is consumed too.
    #[arg(long, env = "COPILOT_TOPIC_QUEUE_URIS", hide = true, default_value = "", value_parser = optional(topic_queues()))]
    copilot_topic_queue_uris: Maybe<Vec<String>>,

    /// Most jobs running at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value = "10", value_parser = count(10_000))]
    concurrency: u64,

    /// Messages received ahead of free job slots, over every queue: they wait (visibility
    /// extended, protected) for a slot. Hides the receive round trip when SQS is far away. 0: a
    /// message is only ever received into a free slot.
    #[arg(long, env = "WORKER_PREFETCH", default_value = "0", value_parser = count_or_zero(10_000))]
    prefetch: u64,

    /// Long-poll wait of each receive (0s..=20s).
    #[arg(long, env = "WORKER_WAIT_TIME", default_value = "20s", value_parser = duration(ZERO, SQS_MAX_WAIT, WHOLE_SECONDS))]
    wait_time: Duration,

    /// Visibility timeout asked for on receive; extended while a job runs (1s..=12h).
    #[arg(long, env = "WORKER_VISIBILITY_TIMEOUT", default_value = "60s", value_parser = duration(SEC, SQS_MAX_VISIBILITY, WHOLE_SECONDS))]
    visibility_timeout: Duration,

    /// After SIGTERM/SIGINT, how long running jobs may go on before they are cancelled and their
    /// messages returned. Keep it below the ECS stop timeout (30s by default).
    #[arg(long, env = "WORKER_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = duration(ZERO, 2 * HOUR, None))]
    shutdown_timeout: Duration,

    /// Protection backend: auto (agent endpoint when ECS_AGENT_URI is set, else off), agent,
    /// ecs-api (UpdateTaskProtection through the ECS API), off.
    #[arg(long, env = "WORKER_PROTECTION", default_value = "auto", value_parser = one_of::<ProtectionChoice>())]
    protection: ProtectionChoice,

    /// When to take protection: before-receive (hold it for every receive while work flows; once
    /// idle, release and poll unprotected until messages arrive) or on-receipt (poll unprotected
    /// whenever no job runs, protect as soon as messages arrive).
    #[arg(long, env = "WORKER_PROTECT", default_value = "before-receive", value_parser = one_of::<ProtectMode>())]
    protect: ProtectMode,

    /// Length of each protection grant, whole minutes (1m..=48h); refreshed at 80 %.
    #[arg(long, env = "WORKER_PROTECTION_DURATION", default_value = "5m", value_parser = duration(60 * SEC, MAX_PROTECTION, WHOLE_MINUTES))]
    protection_duration: Duration,

    /// Shortest time protection is held once taken [default: 10 % of --protection-duration].
    #[arg(long, env = "WORKER_PROTECTION_MIN_HOLD", default_value = "", hide_default_value = true, value_parser = optional(duration(ZERO, MAX_PROTECTION, None)))]
    protection_min_hold: Maybe<Duration>,

    /// How often the worker asks ECS (DescribeServices) whether its service is deploying or
    /// scaling in, so that a busy task gives way; longer for fleets above 20 tasks. 0s: off.
    /// On only under ECS with protection on.
    #[arg(long, env = "WORKER_YIELD_POLL", default_value = "15s", value_parser = duration(ZERO, HOUR, None))]
    yield_poll: Duration,

    /// After holding protection this long without a break, yield for one idle window, then carry
    /// on: a way in for ECS even where the task role may not call DescribeServices [default: off].
    #[arg(long, env = "WORKER_MAX_PROTECTED", default_value = "", hide_default_value = true, value_parser = optional(duration(60 * SEC, MAX_PROTECTION, None)))]
    max_protected: Maybe<Duration>,

    /// Unprotected pause after an idle release, so ECS can stop an idle task (0s allowed).
    #[arg(long, env = "WORKER_IDLE_WINDOW", default_value = "5s", value_parser = duration(ZERO, HOUR, None))]
    idle_window: Duration,

    /// First retry delay of a failed message; doubles with each receive.
    #[arg(long, env = "WORKER_RETRY_BASE", default_value = "2s", value_parser = duration(ZERO, SQS_MAX_VISIBILITY, None))]
    retry_base: Duration,

    /// Longest retry delay of a failed message.
    #[arg(long, env = "WORKER_RETRY_MAX", default_value = "5m", value_parser = duration(ZERO, SQS_MAX_VISIBILITY, None))]
    retry_max: Duration,

    /// How long a partial delete batch waits for more entries before it is sent.
    #[arg(long, env = "WORKER_DELETE_LINGER", default_value = "20ms", value_parser = duration(ZERO, SEC, None))]
    delete_linger: Duration,

    /// Dead-letter queue the worker itself moves messages to after --max-receives failures
    /// (only when the source queue has no redrive policy).
    #[arg(long, env = "DEAD_LETTER_QUEUE_URL", default_value = "", hide_default_value = true, value_parser = optional(url()))]
    dead_letter_queue_url: Maybe<String>,

    /// Receives after which a failing message goes to --dead-letter-queue-url.
    #[arg(long, env = "WORKER_MAX_RECEIVES", default_value = "5", value_parser = count(1000))]
    max_receives: u64,

    /// Serve /health and /metrics (Prometheus) on this address, e.g. 127.0.0.1:9090 [default: off].
    #[arg(long, env = "WORKER_METRICS_ADDR", default_value = "", hide_default_value = true, value_parser = optional(addr()))]
    metrics_addr: Maybe<std::net::SocketAddr>,

    /// Cancel a job that runs longer than this and count it as failed [default: no limit].
    #[arg(long, env = "WORKER_JOB_TIMEOUT", default_value = "", hide_default_value = true, value_parser = optional(duration(MS, SQS_MAX_VISIBILITY, None)))]
    job_timeout: Maybe<Duration>,

    /// Run this program per message (body on stdin, MESSAGE_ID / RECEIVE_COUNT / QUEUE_NAME /
    /// MESSAGE_GROUP_ID / MESSAGE_ATTR_<NAME> in env; exit 0 = done, 65 = dead-letter now,
    /// other = retry). Must come last: everything after it is the command and its arguments.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    exec: Vec<String>,

    /// POST each body to this local app (Elastic Beanstalk worker style): 2xx = done,
    /// 429/503 + Retry-After = retry after that, other = retry with backoff.
    #[arg(long, env = "WORKER_FORWARD_TO", conflicts_with = "exec", default_value = "", hide_default_value = true, value_parser = optional(url()))]
    forward_to: Maybe<String>,

    /// Don't poll until this URL answers 2xx [default: --forward-to's origin + /health].
    #[arg(long, env = "WORKER_FORWARD_HEALTH_URL", default_value = "", hide_default_value = true, value_parser = optional(url()))]
    forward_health_url: Maybe<String>,

    /// Per-request timeout for --forward-to.
    #[arg(long, env = "WORKER_FORWARD_TIMEOUT", default_value = "60s", value_parser = duration(MS, SQS_MAX_VISIBILITY, None))]
    forward_timeout: Duration,

    /// The same as --exec, from the environment: split on whitespace (no shell quoting).
    #[arg(long = "exec-env", env = "WORKER_EXEC", hide = true)]
    exec_env: Option<String>,

    /// How long a receive may run past --wait-time before /health reports the loop wedged.
    #[arg(long, env = "WORKER_HEALTH_GRACE", default_value = "30s", value_parser = duration(ZERO, HOUR, None))]
    health_grace: Duration,

    /// How receives and batch deletes are sent: `direct` (signed and sent by the worker, the
    /// SDK's HTTP client, endpoint rules and credentials; about a third less CPU per message) or
    /// `sdk` (the AWS SDK's full request pipeline, with its retries).
    #[arg(long, env = "WORKER_SQS_CLIENT", default_value = "direct", value_parser = one_of::<SqsClientKind>())]
    pub(crate) sqs_client: SqsClientKind,

    /// Set by ECS: the agent endpoint used for task protection.
    #[arg(long, env = "ECS_AGENT_URI", hide = true, default_value = "", value_parser = optional(url()))]
    ecs_agent_uri: Maybe<String>,

    /// Set by ECS: the task metadata v4 endpoint (for --protection ecs-api).
    #[arg(long, env = "ECS_CONTAINER_METADATA_URI_V4", hide = true, default_value = "", value_parser = optional(url()))]
    ecs_metadata_uri: Maybe<String>,
}

/// Where `--forward-to` sends bodies, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardConfig {
    pub url: String,
    pub health_url: String,
    pub timeout: Duration,
}

/// The handler the settings ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HandlerChoice {
    Simulated,
    Exec { program: String, args: Vec<String> },
    Forward(ForwardConfig),
}

fn invalid(id: &str, problem: impl Into<String>) -> ConfigError {
    parse::invalid_setting::<RunArgs>(id, problem)
}

impl RunArgs {
    /// The settings of `queue-worker run` with no flags and no environment: the defaults.
    pub(crate) fn defaults() -> Self {
        let cmd = Self::augment_args(Command::new("defaults")).mut_args(|a| a.env(None));
        let matches = cmd
            .try_get_matches_from(["defaults"])
            .expect("the defaults in the #[arg] attributes parse (checked by a test)");
        Self::from_arg_matches(&matches).expect("the defaults have every field's type")
    }

    /// `queue-worker run` configured from the environment alone (what the container does).
    pub(crate) fn from_env() -> Result<Self, clap::Error> {
        let cmd = Self::augment_args(Command::new("queue-worker"));
        Self::from_arg_matches(&cmd.try_get_matches_from(["queue-worker"])?)
    }

    /// These settings for `queue_url`, whatever queues they name.
    pub(crate) fn config_for(self, queue_url: String) -> Config {
        let mut args = self;
        args.queue_url = vec![Maybe(Some(queue_url))];
        args.copilot_topic_queue_uris = Maybe(None);
        args.into_config()
            .expect("the defaults form a valid Config (checked by a test)")
    }

    /// The handler the settings ask for: `--forward-to`, `--exec` (or `WORKER_EXEC`), or the
    /// simulated job.
    pub(crate) fn handler(&self) -> HandlerChoice {
        if let Some(url) = self.forward_to.0.clone() {
            let health_url = self.forward_health_url.0.clone().unwrap_or_else(|| {
                // scheme://host:port + /health
                let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
                let origin_end = url[after_scheme..]
                    .find('/')
                    .map(|i| i + after_scheme)
                    .unwrap_or(url.len());
                format!("{}/health", &url[..origin_end])
            });
            return HandlerChoice::Forward(ForwardConfig {
                url,
                health_url,
                timeout: self.forward_timeout,
            });
        }
        let command: Vec<String> = if self.exec.is_empty() {
            self.exec_env
                .as_deref()
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        } else {
            self.exec.clone()
        };
        match command.split_first() {
            Some((program, args)) => HandlerChoice::Exec {
                program: program.clone(),
                args: args.to_vec(),
            },
            None => HandlerChoice::Simulated,
        }
    }

    /// Checks what one flag cannot check alone; the first problem found is returned.
    pub(crate) fn into_config(self) -> Result<Config, ConfigError> {
        let mut queue_urls: Vec<String> = self.queue_url.into_iter().filter_map(|m| m.0).collect();
        if queue_urls.is_empty() {
            queue_urls.extend(self.copilot_queue_uri.into_option());
        }
        queue_urls.extend(
            self.copilot_topic_queue_uris
                .into_option()
                .unwrap_or_default(),
        );
        if queue_urls.is_empty() {
            return Err(invalid(
                "queue_url",
                "missing: give the queue URL (or run under Copilot, which sets COPILOT_QUEUE_URI)",
            ));
        }
        let queue_url = queue_urls.remove(0);

        let duration = self.protection_duration;
        let min_hold = match self.protection_min_hold.into_option() {
            Some(d) if d > duration => {
                return Err(invalid(
                    "protection_min_hold",
                    format!(
                        "{} is out of range 0s..={}",
                        humantime::format_duration(d),
                        humantime::format_duration(duration)
                    ),
                ))
            }
            Some(d) => d,
            None => duration / 10,
        };
        if self.retry_max < self.retry_base {
            return Err(invalid(
                "retry_max",
                format!(
                    "{} is out of range {}..={}",
                    humantime::format_duration(self.retry_max),
                    humantime::format_duration(self.retry_base),
                    humantime::format_duration(SQS_MAX_VISIBILITY)
                ),
            ));
        }
        let backend = match (self.protection, self.ecs_agent_uri.into_option()) {
            (ProtectionChoice::Auto | ProtectionChoice::Agent, Some(agent_uri)) => {
                ProtectionBackendKind::Agent { agent_uri }
            }
            (ProtectionChoice::Auto, None) => ProtectionBackendKind::Off {
                reason: "ECS_AGENT_URI is not set (not running on ECS)",
            },
            (ProtectionChoice::Agent, None) => {
                return Err(invalid(
                    "ecs_agent_uri",
                    "missing: --protection agent needs the ECS agent endpoint (set by ECS in every task)",
                ))
            }
            (ProtectionChoice::EcsApi, _) => match self.ecs_metadata_uri.clone().into_option() {
                Some(metadata_uri) => ProtectionBackendKind::EcsApi { metadata_uri },
                None => {
                    return Err(invalid(
                        "ecs_metadata_uri",
                        "missing: --protection ecs-api reads the cluster and task ARN from task metadata v4",
                    ))
                }
            },
            (ProtectionChoice::Off, _) => ProtectionBackendKind::Off {
                reason: "--protection off",
            },
        };
        let protected = !matches!(backend, ProtectionBackendKind::Off { .. });
        let ecs_view = self
            .ecs_metadata_uri
            .into_option()
            .filter(|_| protected && !self.yield_poll.is_zero())
            .map(|metadata_uri| EcsViewConfig {
                metadata_uri,
                poll: self.yield_poll,
            });
        let dead_letter =
            self.dead_letter_queue_url
                .into_option()
                .map(|queue_url| DeadLetterConfig {
                    queue_url,
                    max_receives: self.max_receives as u32,
                });
        Ok(Config {
            queue_url,
            extra_queue_urls: queue_urls,
            concurrency: self.concurrency as usize,
            prefetch: self.prefetch as usize,
            wait_time: self.wait_time,
            visibility_timeout: self.visibility_timeout,
            shutdown_timeout: self.shutdown_timeout,
            protection: ProtectionConfig {
                backend,
                mode: self.protect,
                duration,
                min_hold,
                idle_window: self.idle_window,
            },
            yielding: YieldConfig {
                ecs_view,
                max_protected: self.max_protected.into_option(),
            },
            retry: Backoff::new(self.retry_base, self.retry_max),
            delete_linger: self.delete_linger,
            dead_letter,
            metrics_addr: self.metrics_addr.into_option(),
            job_timeout: self.job_timeout.into_option(),
            health_grace: self.health_grace,
        })
    }
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
        match T::try_parse_from(v) {
            Ok(t) => t.run.into_config(),
            Err(e) => {
                let line = parse::value_error_line(&e).unwrap_or_else(|| panic!("{e}"));
                Err(ConfigError {
                    flag: String::new(),
                    env: String::new(),
                    problem: line,
                })
            }
        }
    }

    fn line(e: &ConfigError) -> String {
        if e.flag.is_empty() {
            e.problem.clone()
        } else {
            e.to_string()
        }
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
        assert_eq!(c.prefetch, 0);
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
        assert_eq!(
            c.retry,
            Backoff::new(Duration::from_secs(2), Duration::from_secs(300))
        );
        assert_eq!(c.delete_linger, Duration::from_millis(20));
        assert_eq!(c.health_grace, Duration::from_secs(30));
        assert_eq!(
            (c.dead_letter, c.metrics_addr, c.job_timeout),
            (None, None, None)
        );
        // The library's defaults are the same ones, read from the same attributes.
        assert_eq!(Config::new("http://127.0.0.1:1/q"), {
            let mut c = parse(&["--queue-url", "http://127.0.0.1:1/q"]).expect("valid");
            c.protection.backend = ProtectionBackendKind::Off {
                reason: "ECS_AGENT_URI is not set (not running on ECS)",
            };
            c
        });
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
        assert!(line(&e).contains("COPILOT_TOPIC_QUEUE_URIS"), "{e}");
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
                &[q[0], q[1], "--prefetch", "many"],
                "--prefetch / WORKER_PREFETCH",
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
            (
                &[q[0], q[1], "--retry-base", "10s", "--retry-max", "5s"],
                "--retry-max / WORKER_RETRY_MAX",
            ),
            (
                &[q[0], q[1], "--metrics-addr", "nine"],
                "--metrics-addr / WORKER_METRICS_ADDR",
            ),
        ];
        for (args, needle) in cases {
            let e = parse(args).expect_err("must be rejected");
            let l = line(&e);
            assert!(l.contains(needle), "{args:?}: {l}");
            assert!(l.starts_with("invalid setting "), "{args:?}: {l}");
            assert!(!l.contains('\n'), "one line: {l}");
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

    #[test]
    fn the_handler_is_forward_exec_or_simulated() {
        let handler = |args: &[&str]| {
            let mut v = vec!["t"];
            v.extend_from_slice(args);
            T::try_parse_from(v).expect("clap").run.handler()
        };
        assert_eq!(
            handler(&[
                "--forward-to",
                "http://127.0.0.1:8080/work",
                "--exec-env",
                ""
            ]),
            HandlerChoice::Forward(ForwardConfig {
                url: "http://127.0.0.1:8080/work".into(),
                health_url: "http://127.0.0.1:8080/health".into(),
                timeout: Duration::from_secs(60),
            })
        );
        assert_eq!(
            handler(&["--exec", "python3", "-u", "h.py"]),
            HandlerChoice::Exec {
                program: "python3".into(),
                args: vec!["-u".into(), "h.py".into()]
            }
        );
        assert_eq!(
            handler(&["--forward-to", "", "--exec-env", ""]),
            HandlerChoice::Simulated
        );
    }
}

//! The command line: `run` (the default), `send`, `health`, `ecs`. [`main`] is the one place
//! where an outcome becomes a message and an exit code, so `src/main.rs` stays a few lines.

mod ecs;
mod send;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::args::RunArgs;
use crate::config::parse::{self, Maybe};
use crate::config::ConfigError;
use crate::telemetry::{self, LogFormat};
use crate::yielding::Lever;

/// Exit code for bad settings (like clap's own usage errors).
const EXIT_CONFIG: u8 = 2;
/// Exit code when the user stops a watch (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "queue-worker",
    version,
    about = "SQS worker for Amazon ECS that holds task scale-in protection while jobs run"
)]
struct Cli {
    /// Log format: text for terminals, json for CloudWatch.
    #[arg(
        long,
        env = "WORKER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume the queue (the default command).
    Run(Box<RunArgs>),
    /// Send test messages for the simulated job.
    Send(send::SendArgs),
    /// Ask the running worker's /health (the container health check): exit 0 if healthy.
    Health(HealthArgs),
    /// Make the running worker (on WORKER_METRICS_ADDR) yield: finish its jobs, take no new
    /// ones, let protection go so ECS can stop the task. Also: SIGUSR1 to the worker.
    Drain(HealthArgs),
    /// Make a draining worker take messages again. Also: SIGUSR2 to the worker.
    Resume(HealthArgs),
    /// Scale the ECS service and watch it settle (events, counts, protected tasks).
    Ecs(ecs::EcsArgs),
}

#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// Where the worker serves /health, /drain and /resume (its --metrics-addr).
    #[arg(long, env = "WORKER_METRICS_ADDR", default_value = "", hide_default_value = true, value_parser = parse::optional(parse::addr()))]
    metrics_addr: Maybe<std::net::SocketAddr>,
}

/// How a command failed: [`CliError::exit_code`] and its message are all `main` needs.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// A value a parser refused (already one line naming the flag and env var).
    #[error("{0}")]
    Value(String),
    #[error("unhealthy: {0}")]
    Unhealthy(String),
    #[error("the worker did not take it: {0}")]
    Lever(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Send(#[from] send::SendError),
    #[error(transparent)]
    Ecs(#[from] ecs::EcsError),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Value(_) => EXIT_CONFIG,
            CliError::App(_) => EXIT_CONFIG,
            CliError::Send(send::SendError::Config(_)) => EXIT_CONFIG,
            CliError::Ecs(e) if e.is_config() => EXIT_CONFIG,
            CliError::Send(_) | CliError::Ecs(_) | CliError::Unhealthy(_) | CliError::Lever(_) => 1,
            CliError::Signals(_) => 1,
        }
    }
}

/// What a command that did not fail asks the process to exit with.
enum Done {
    Success,
    /// Finished, but not as hoped (a watch that timed out).
    NotSteady,
    /// Stopped by the user.
    Interrupted,
}

/// Clap's own errors (help, version, usage) print as clap prints them; a value one of our
/// parsers refused becomes a [`CliError::Value`].
fn parsed<T>(r: Result<T, clap::Error>) -> Result<T, CliError> {
    r.map_err(|e| match parse::value_error_line(&e) {
        Some(line) => CliError::Value(line),
        None => e.exit(),
    })
}

/// Parses the command line, runs the command, and returns the process exit code.
pub async fn main() -> ExitCode {
    let outcome = async {
        let cli = parsed(Cli::try_parse())?;
        telemetry::init(cli.log_format);
        let command = match cli.command {
            Some(c) => c,
            // No subcommand: `run`, configured from the environment (what the container does).
            None => Command::Run(Box::new(parsed(RunArgs::from_env())?)),
        };
        match command {
            Command::Run(args) => run(*args).await,
            Command::Send(args) => send::main(args).await.map_err(CliError::from),
            Command::Health(args) => health(args).await,
            Command::Drain(args) => lever(args, true).await,
            Command::Resume(args) => lever(args, false).await,
            Command::Ecs(args) => ecs::main(args).await.map_err(CliError::from),
        }
    };
    match outcome.await {
        Ok(Done::Success) => ExitCode::SUCCESS,
        Ok(Done::NotSteady) => ExitCode::FAILURE,
        Ok(Done::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
        Err(e) => {
            eprintln!("queue-worker: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Calls `each` with the name of every `first` or `second` signal received, until the runtime
/// stops (or the caller aborts the returned task).
fn on_signals(
    first: (SignalKind, &'static str),
    second: (SignalKind, &'static str),
    mut each: impl FnMut(&'static str) + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut a = signal(first.0)?;
    let mut b = signal(second.0)?;
    Ok(tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                s = a.recv() => s.map(|_| first.1),
                s = b.recv() => s.map(|_| second.1),
            };
            // None: the signal driver is gone (runtime shutting down).
            let Some(name) = name else { return };
            each(name);
        }
    }))
}

/// Fires the token on SIGTERM or SIGINT (a second signal does not kill: the drain has a deadline,
/// so later signals are only logged).
fn shutdown_on_signals(token: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let term = (SignalKind::terminate(), "SIGTERM");
    let int = (SignalKind::interrupt(), "SIGINT");
    on_signals(term, int, move |name| {
        if token.is_cancelled() {
            tracing::info!("{name} received again; already shutting down");
        } else {
            tracing::info!("{name} received");
            token.cancel();
        }
    })
}

/// SIGUSR1 drains the worker, SIGUSR2 resumes it (the operator's lever, like `queue-worker
/// drain` / `resume`).
fn lever_on_signals(lever: Lever) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let usr1 = (SignalKind::user_defined1(), "SIGUSR1");
    let usr2 = (SignalKind::user_defined2(), "SIGUSR2");
    on_signals(usr1, usr2, move |name| {
        if name == "SIGUSR1" {
            tracing::info!("{name} received: drain");
            lever.drain();
        } else {
            tracing::info!("{name} received: resume");
            lever.resume();
        }
    })
}

async fn run(args: RunArgs) -> Result<Done, CliError> {
    let shutdown = CancellationToken::new();
    let signals = shutdown_on_signals(shutdown.clone()).map_err(CliError::Signals)?;
    let lever = Lever::new();
    let lever_signals = lever_on_signals(lever.clone()).map_err(CliError::Signals)?;
    let result = app::run(args, lever, shutdown.clone()).await;
    shutdown.cancel();
    signals.abort();
    lever_signals.abort();
    result?;
    Ok(Done::Success)
}

/// The worker's address from `args`, or the one-line error for its absence.
fn worker_addr(args: HealthArgs) -> Result<std::net::SocketAddr, CliError> {
    args.metrics_addr.into_option().ok_or_else(|| {
        CliError::Config(parse::invalid_setting::<HealthArgs>(
            "metrics_addr",
            "missing: the worker serves /health, /drain and /resume only when --metrics-addr is set",
        ))
    })
}

async fn health(args: HealthArgs) -> Result<Done, CliError> {
    let body = crate::observe::health_probe(worker_addr(args)?)
        .await
        .map_err(CliError::Unhealthy)?;
    println!("{body}");
    Ok(Done::Success)
}

async fn lever(args: HealthArgs, drain: bool) -> Result<Done, CliError> {
    let body = crate::observe::move_lever(worker_addr(args)?, drain)
        .await
        .map_err(CliError::Lever)?;
    println!("{body}");
    Ok(Done::Success)
}

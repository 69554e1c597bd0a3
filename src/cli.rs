//! The command line: `run` (default), `send`; each subcommand's settings come from flags or env.
//! [`main`] maps every outcome to an exit code, so `src/main.rs` stays a few lines.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ProtectionBackendKind, RunArgs, SqsClientKind};
use crate::exec::ExecHandler;
use crate::forward::ForwardHandler;
use crate::handler::SimulatedJob;
use crate::protection::{agent::AgentBackend, ecs_api::EcsApiBackend, Protector, Timing};
use crate::send::SendArgs;
use crate::sqs::Sqs;
use crate::sqs_wire::{SqsWire, WireSettings};
use crate::stats::Stats;
use crate::telemetry::{self, LogFormat};

/// After SIGTERM to an `--exec` child, how long before SIGKILL.
const EXEC_KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Exit code for bad settings (like clap's own usage errors).
pub const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "queue-worker",
    version,
    about = "SQS worker for Amazon ECS that holds task scale-in protection while jobs run"
)]
pub struct Cli {
    /// Log format: text for terminals, json for CloudWatch.
    #[arg(
        long,
        env = "WORKER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the queue (the default command).
    Run(Box<RunArgs>),
    /// Send test messages for the simulated job.
    Send(SendArgs),
    /// Ask the running worker's /health (the container health check): exit 0 if healthy.
    Health(HealthArgs),
    /// Scale the ECS service and watch it settle (events, counts, protected tasks).
    Ecs(crate::ecs_cmd::EcsArgs),
}

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Where the worker serves /health (its --metrics-addr).
    #[arg(long, env = "WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
}

/// Loads AWS settings the standard way (env, profile, container credentials, `AWS_ENDPOINT_URL`).
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client())
        .load()
        .await
}

/// The HTTP(S) client of every AWS SDK call: hyper with rustls on ring (see Cargo.toml for why
/// not the SDK's default). Clients built by hand (`Config::builder()`) need it too.
pub fn http_client() -> aws_sdk_sqs::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The direct client for receives and batch deletes, set up as the SDK's SQS client would be.
pub async fn direct_sqs(sdk: &aws_config::SdkConfig) -> Result<SqsWire, String> {
    let settings = WireSettings::from_sdk(sdk)
        .ok_or("no AWS region: set AWS_REGION (ECS sets it for tasks)")?;
    let creds = sdk
        .credentials_provider()
        .ok_or("no AWS credentials provider configured")?;
    SqsWire::new(&settings, creds)
        .await
        .map_err(|e| format!("cannot set up the SQS client: {e}"))
}

/// Builds the protection actor the settings ask for.
pub fn build_protector(
    cfg: &crate::config::ProtectionConfig,
    sdk: &aws_config::SdkConfig,
) -> Result<Protector, String> {
    let timing = Timing::new(cfg.duration, cfg.min_hold);
    match &cfg.backend {
        ProtectionBackendKind::Off { reason } => {
            tracing::info!("task protection off: {reason}");
            Ok(Protector::disabled())
        }
        ProtectionBackendKind::Agent { agent_uri } => {
            let b = AgentBackend::new(agent_uri)
                .map_err(|e| format!("cannot build the agent client: {e}"))?;
            Ok(Protector::start(Arc::new(b), timing))
        }
        ProtectionBackendKind::EcsApi { metadata_uri } => {
            let b = EcsApiBackend::new(aws_sdk_ecs::Client::new(sdk), metadata_uri)
                .map_err(|e| format!("cannot build the metadata client: {e}"))?;
            Ok(Protector::start(Arc::new(b), timing))
        }
    }
}

/// Fires the token on SIGTERM or SIGINT (a second signal does not kill: the drain has a deadline,
/// so later signals are only logged). Runs until the caller aborts the returned task.
pub fn shutdown_on_signals(
    token: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, std::io::Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                s = term.recv() => s.map(|_| "SIGTERM"),
                s = int.recv() => s.map(|_| "SIGINT"),
            };
            // None: the signal driver is gone (runtime shutting down).
            let Some(name) = name else { return };
            if token.is_cancelled() {
                tracing::info!("{name} received again; already shutting down");
            } else {
                tracing::info!("{name} received");
                token.cancel();
            }
        }
    }))
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("queue-worker: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Parses the command line, runs the command, and returns the process exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let command = match cli.command {
        Some(c) => c,
        // No subcommand: `run`, configured from the environment (what the container does).
        None => match RunArgs::try_parse_from_env() {
            Ok(a) => Command::Run(Box::new(a)),
            Err(e) => e.exit(),
        },
    };
    match command {
        Command::Run(args) => run(*args).await,
        Command::Send(args) => send(args).await,
        Command::Health(args) => health(args).await,
        Command::Ecs(args) => crate::ecs_cmd::main(args).await,
    }
}

impl RunArgs {
    fn try_parse_from_env() -> Result<Self, clap::Error> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            run: RunArgs,
        }
        Only::try_parse_from(["queue-worker"]).map(|o| o.run)
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let exec = args.exec_command();
    let sqs_client = args.sqs_client;
    let forward = match args.forward() {
        Ok(f) => f,
        Err(e) => return config_error(&e),
    };
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let sdk = aws_config().await;
    let protector = match build_protector(&config.protection, &sdk) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("queue-worker: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let shutdown = CancellationToken::new();
    let signals = match shutdown_on_signals(shutdown.clone()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("queue-worker: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sqs = Sqs::new(aws_sdk_sqs::Client::new(&sdk), Arc::new(Stats::default()));
    if sqs_client == SqsClientKind::Direct {
        match direct_sqs(&sdk).await {
            Ok(wire) => sqs = sqs.with_wire(wire),
            Err(e) => {
                eprintln!("queue-worker: {e} (or run with --sqs-client sdk)");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let result = if let Some(fwd) = forward {
        let handler = match ForwardHandler::new(&fwd.url, &config.queue_url, fwd.timeout) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("queue-worker: cannot build the HTTP client for --forward-to: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if !handler.wait_ready(&fwd.health_url, &shutdown).await {
            signals.abort();
            return ExitCode::SUCCESS;
        }
        crate::worker::run(config, sqs, protector, Arc::new(handler), shutdown.clone()).await
    } else if let Some((program, rest)) = exec.split_first() {
        let handler = ExecHandler {
            program: program.clone(),
            args: rest.to_vec(),
            kill_grace: EXEC_KILL_GRACE,
        };
        crate::worker::run(config, sqs, protector, Arc::new(handler), shutdown.clone()).await
    } else {
        crate::worker::run(
            config,
            sqs,
            protector,
            Arc::new(SimulatedJob),
            shutdown.clone(),
        )
        .await
    };
    shutdown.cancel();
    signals.abort();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-worker: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn send(args: SendArgs) -> ExitCode {
    let (queue, bodies) = match args.queue().and_then(|q| Ok((q, args.bodies()?))) {
        Ok(v) => v,
        Err(e) => return config_error(&e),
    };
    let sdk = aws_config().await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    match crate::send::send(&client, &queue, bodies, args.parallel).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn health(args: HealthArgs) -> ExitCode {
    let Some(raw) = args.metrics_addr.filter(|s| !s.trim().is_empty()) else {
        return config_error(&ConfigError {
            flag: "--metrics-addr",
            env: "WORKER_METRICS_ADDR",
            problem: "missing: the worker serves /health only when --metrics-addr is set".into(),
        });
    };
    let addr = match crate::config::parse_addr(&raw) {
        Ok(a) => a,
        Err(e) => return config_error(&e),
    };
    match crate::observe::probe(addr).await {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("queue-worker: unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

//! `local-ecs`: a stand-in for one ECS service on this machine (dev tool, not deployed).
//! See `testkit::local_ecs` for what it does; this file is the command line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use testkit::local_ecs::{
    self, DeployReply, Echo, EcsOperation, LocalEcs, ScaleRequest, ServiceSpec, Status,
    DEFAULT_CONTROL_PORT,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "local-ecs",
    version,
    about = "A local stand-in for one ECS service: tasks as child processes, scale-in protection respected"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service in the foreground until SIGINT/SIGTERM (which stops the tasks).
    Up(Box<UpArgs>),
    /// Change the desired count of the running service.
    Scale {
        #[arg(long)]
        desired: usize,
        #[command(flatten)]
        at: ControlAt,
    },
    /// Start a rolling deployment of a new revision (see up --maximum-percent/--minimum-healthy-percent).
    Deploy {
        #[command(flatten)]
        at: ControlAt,
    },
    /// Show the desired count, the tasks and their protection.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: ControlAt,
    },
}

#[derive(Args)]
struct ControlAt {
    /// Control port of the running `local-ecs up` (on 127.0.0.1).
    #[arg(long, env = "LOCAL_ECS_CONTROL_PORT", default_value_t = DEFAULT_CONTROL_PORT)]
    control_port: u16,
    /// Read the control port from this file (written by `up --port-file`).
    #[arg(long, env = "LOCAL_ECS_PORT_FILE")]
    port_file: Option<PathBuf>,
}

#[derive(Args)]
struct UpArgs {
    /// Tasks to start (the initial desired count).
    #[arg(long, default_value_t = 2)]
    tasks: usize,
    /// Service name (the ECS API's service, and the service events').
    #[arg(long, default_value = "queue-worker")]
    service: String,
    /// Cluster name (the ECS API's cluster).
    #[arg(long, default_value = "local")]
    cluster: String,
    /// Deployments: at most this percent of the desired count runs (ECS maximumPercent).
    #[arg(long, default_value_t = 200)]
    maximum_percent: u32,
    /// Deployments: at least this percent keeps running (ECS minimumHealthyPercent).
    #[arg(long, default_value_t = 100)]
    minimum_healthy_percent: u32,
    /// Report ServiceName in the task metadata (EC2 agents do; Fargate, the default, does not).
    #[arg(long)]
    metadata_service_name: bool,
    /// A service tag (DescribeServices include TAGS), e.g. copilot-service=worker; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = key_value)]
    tags: Vec<(String, String)>,
    /// ECS API port on 127.0.0.1 (0: any free port); the control port serves it too.
    #[arg(long, default_value_t = 0)]
    ecs_port: u16,
    /// Answer this ECS API operation AccessDeniedException (a task role without it); repeatable.
    #[arg(long = "ecs-deny", value_name = "OPERATION")]
    ecs_deny: Vec<EcsOperation>,
    /// Answer this share of an operation's calls ThrottlingException, e.g. DescribeServices=0.5.
    #[arg(long = "ecs-throttle", value_name = "OPERATION=SHARE", value_parser = throttle)]
    ecs_throttle: Vec<(EcsOperation, f64)>,
    /// Append the timeline to FILE as JSON lines (for scripts/timeline.py).
    #[arg(long, value_name = "FILE")]
    timeline: Option<PathBuf>,
    /// SIGKILL this long after SIGTERM (ECS stopTimeout).
    #[arg(long, default_value = "30s")]
    stop_timeout: String,
    /// How often the scheduler reconciles the tasks with the desired count.
    #[arg(long, default_value = "2s")]
    reconcile: String,
    /// Control port on 127.0.0.1 (0: any free port; see --port-file).
    #[arg(long, env = "LOCAL_ECS_CONTROL_PORT", default_value_t = DEFAULT_CONTROL_PORT)]
    control_port: u16,
    /// Write the control port to this file once listening.
    #[arg(long, env = "LOCAL_ECS_PORT_FILE")]
    port_file: Option<PathBuf>,
    /// Write each task's output to DIR/task-N.log instead of prefixing it on stderr.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// The task's command [default: the queue-worker next to this binary, with `run`].
    #[arg(last = true)]
    command: Vec<OsString>,
}

fn key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("\"{raw}\" is not KEY=VALUE"))
}

fn throttle(raw: &str) -> Result<(EcsOperation, f64), String> {
    let (op, share) = key_value(raw)?;
    let op = op.parse::<EcsOperation>().map_err(|e| e.to_string())?;
    let share = share
        .parse::<f64>()
        .ok()
        .filter(|s| (0.0..=1.0).contains(s))
        .ok_or_else(|| format!("\"{share}\" is not a share between 0 and 1"))?;
    Ok((op, share))
}

fn duration(raw: &str, flag: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw)
        .map_err(|e| format!("{flag}: \"{raw}\" is not a duration like 30s ({e})"))
}

impl ControlAt {
    fn base(&self) -> Result<String, String> {
        let port = match &self.port_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| {
                    format!(
                        "cannot read {}: {e} (is `local-ecs up` running?)",
                        f.display()
                    )
                })?
                .trim()
                .parse::<u16>()
                .map_err(|e| format!("{}: not a port ({e})", f.display()))?,
            None => self.control_port,
        };
        Ok(format!("http://127.0.0.1:{port}"))
    }
}

async fn call<T: serde::de::DeserializeOwned>(
    at: &ControlAt,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<T, String> {
    let base = at.base()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let req = match body {
        Some(b) => client.post(format!("{base}{path}")).json(&b),
        None if path == "/deploy" => client.post(format!("{base}{path}")),
        None => client.get(format!("{base}{path}")),
    };
    let resp = req.send().await.map_err(|e| {
        format!("cannot reach local-ecs at {base}: {e} (is `local-ecs up` running, on this port?)")
    })?;
    if !resp.status().is_success() {
        return Err(format!("local-ecs answered {}", resp.status()));
    }
    resp.json::<T>().await.map_err(|e| e.to_string())
}

async fn up(args: UpArgs) -> Result<(), String> {
    let stop_timeout = duration(&args.stop_timeout, "--stop-timeout")?;
    let reconcile = duration(&args.reconcile, "--reconcile")?;
    let (program, rest) = match args.command.split_first() {
        Some((p, rest)) => (PathBuf::from(p), rest.to_vec()),
        None => {
            let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
            let worker = exe.with_file_name("queue-worker");
            if !worker.exists() {
                return Err(format!(
                    "{} not found: build it (cargo build) or give the command after --",
                    worker.display()
                ));
            }
            (worker, vec![OsString::from("run")])
        }
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.control_port))
        .await
        .map_err(|e| {
            format!(
                "cannot listen on 127.0.0.1:{}: {e} (another local-ecs? use --control-port)",
                args.control_port
            )
        })?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    if let Some(f) = &args.port_file {
        std::fs::write(f, format!("{port}\n"))
            .map_err(|e| format!("cannot write {}: {e}", f.display()))?;
    }
    let mut spec = ServiceSpec::new(program, rest);
    spec.service = args.service;
    spec.cluster = args.cluster;
    spec.desired = args.tasks;
    spec.stop_timeout = stop_timeout;
    spec.reconcile_every = reconcile;
    spec.log_dir = args.log_dir;
    spec.echo = Echo::Stdout;
    spec.maximum_percent = args.maximum_percent;
    spec.minimum_healthy_percent = args.minimum_healthy_percent;
    spec.metadata_service_name = args.metadata_service_name;
    spec.tags = args.tags;
    spec.ecs_port = args.ecs_port;
    spec.ecs_faults.deny = args.ecs_deny.into_iter().collect();
    spec.ecs_faults.throttle = args.ecs_throttle.into_iter().collect();
    spec.timeline = args.timeline;
    local_ecs::check_deployment_percents(spec.maximum_percent, spec.minimum_healthy_percent)
        .map_err(|e| format!("--maximum-percent/--minimum-healthy-percent: {e}"))?;
    println!(
        "local-ecs: service {} with {} tasks (deployments: maximum {}%, minimum healthy {}%); control on 127.0.0.1:{port} (local-ecs scale --desired 0 --control-port {port}); Ctrl-C stops the tasks",
        spec.service, spec.desired, spec.maximum_percent, spec.minimum_healthy_percent
    );
    let cluster = spec.cluster.clone();
    let ecs = LocalEcs::start(spec).await.map_err(|e| e.to_string())?;
    println!(
        "local-ecs: ECS API for cluster {cluster}: AWS_ENDPOINT_URL_ECS={} (or http://127.0.0.1:{port})",
        ecs.ecs_endpoint()
    );
    let stop_server = CancellationToken::new();
    let server = tokio::spawn(local_ecs::serve_control(
        ecs.control(),
        listener,
        stop_server.clone(),
    ));

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    println!("local-ecs: {name} received: stopping the tasks (again to SIGKILL them)");
    stop_server.cancel();
    let control = ecs.control();
    let shutdown = ecs.shutdown();
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    // A second signal: whatever still runs is killed (dropping the service SIGKILLs the rest).
    for (_, pid) in control.pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    let s = control.status();
    println!(
        "local-ecs: stopped; scale-in was blocked by protected tasks for {:.1}s in total",
        s.blocked_s
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up(args) => up(*args).await,
        Cmd::Scale { desired, at } => call::<Status>(
            &at,
            "/scale",
            Some(serde_json::json!(ScaleRequest { desired })),
        )
        .await
        .map(|s| print!("{}", local_ecs::format_status(&s))),
        Cmd::Deploy { at } => call::<DeployReply>(&at, "/deploy", None)
            .await
            .map(|r| println!("deployment of revision {} started", r.revision)),
        Cmd::Status { json, at } => call::<serde_json::Value>(&at, "/status", None)
            .await
            .and_then(|v| {
                if json {
                    println!("{v}");
                    Ok(())
                } else {
                    let s: Status = serde_json::from_value(v).map_err(|e| e.to_string())?;
                    print!("{}", local_ecs::format_status(&s));
                    Ok(())
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-ecs: {e}");
            ExitCode::FAILURE
        }
    }
}

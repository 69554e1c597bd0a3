//! A stand-alone ECS agent double for the benchmark (`scripts/bench.sh`) and manual runs.
//!
//! ```text
//! cargo run --release -p testkit --bin agent-double [-- --port N]
//! ```
//!
//! Starts [`AgentDouble`] on 127.0.0.1 (port 0 unless `--port`), adds one task, and prints
//! `ECS_AGENT_URI=...` and `ECS_CONTAINER_METADATA_URI_V4=...` on stdout. On SIGTERM, SIGINT or
//! when stdin reaches EOF it prints one JSON line with the protection calls it received, then
//! exits:
//!
//! ```text
//! {"calls":3,"puts_enable":1,"puts_disable":1,"gets":1,"log":[{"at_ms":...,"method":"PUT","enabled":true,"status":200},...]}
//! ```
//!
//! `at_ms` is milliseconds since the Unix epoch, so a driver can split calls by phase.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use serde_json::json;
use testkit::agent_double::AgentDouble;

const CLUSTER: &str = "bench";
const TASK_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/bench/0123456789abcdef";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().map(|v| v.parse::<u16>())) {
            ("--port", Some(Ok(p))) => port = p,
            _ => {
                eprintln!("agent-double: usage: agent-double [--port N]");
                return ExitCode::from(2);
            }
        }
    }
    let double = match AgentDouble::start(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("agent-double: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let task = double.add_task(CLUSTER, TASK_ARN);
    println!("ECS_AGENT_URI={}", task.agent_uri());
    println!("ECS_CONTAINER_METADATA_URI_V4={}", task.metadata_uri());

    if let Err(e) = testkit::cli::stop_requested().await {
        eprintln!("agent-double: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }

    let calls = task.calls();
    let count = |m: &str, e: Option<bool>| {
        calls
            .iter()
            .filter(|c| c.method == m && (e.is_none() || c.request_enabled == e))
            .count()
    };
    let log: Vec<_> = calls
        .iter()
        .map(|c| {
            let at_ms = c
                .at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            json!({"at_ms": at_ms, "method": c.method, "enabled": c.request_enabled, "status": c.status})
        })
        .collect();
    println!(
        "{}",
        json!({
            "calls": calls.len(),
            "puts_enable": count("PUT", Some(true)),
            "puts_disable": count("PUT", Some(false)),
            "gets": count("GET", None),
            "log": log,
        })
    );
    double.shutdown().await;
    ExitCode::SUCCESS
}

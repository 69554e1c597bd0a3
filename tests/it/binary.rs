//! The `queue-worker` binary as ECS runs it: signals, exit codes, one-line config errors.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn worker(args: &[&str]) -> Command {
    let mut cmd = Command::new(worker_bin());
    cmd.args(args)
        .env_clear()
        .envs(aws_env())
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

/// Waits (bounded) for a child to exit; kills it and fails if it does not.
fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let end = std::time::Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("worker did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_returns_the_message_at_once_and_exits_0() {
    let c = client();
    let q = create_queue(&c, "sigterm", &[]).await;
    send_bodies(&c, &q, &["60s"]).await;
    let mut child = worker(&[
        "run",
        "--queue-url",
        &q,
        "--wait-time",
        "1s",
        "--shutdown-timeout",
        "2s",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn worker");
    assert!(
        wait_until(Duration::from_secs(15), || async {
            counts(&c, &q).await == (0, 1)
        })
        .await,
        "job started"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().to_string();
    let sent = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "clean exit");
    assert!(
        took < Duration::from_secs(4),
        "shutdown timeout (2 s) + about a second, took {took:?}"
    );
    let got = receive_now(&c, &q).await;
    assert_eq!(got.len(), 1, "receivable within 1 s of the exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_exits_promptly_on_sigint_even_mid_poll() {
    let c = client();
    let q = create_queue(&c, "sigint", &[]).await;
    let mut child = worker(&["run", "--queue-url", &q, "--wait-time", "20s"])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill")
        .success());
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "did not sit out the 20 s poll: {:?}",
        sent.elapsed()
    );
}

#[test]
fn bad_settings_exit_2_with_one_line_naming_flag_and_env() {
    let cases: &[(&[&str], &str)] = &[
        (&["run"], "--queue-url / QUEUE_URL"),
        (
            &[
                "run",
                "--queue-url",
                "http://127.0.0.1:9/q",
                "--wait-time",
                "forever",
            ],
            "--wait-time / WORKER_WAIT_TIME",
        ),
        (
            &[
                "run",
                "--queue-url",
                "http://127.0.0.1:9/q",
                "--protection",
                "agent",
            ],
            "ECS_AGENT_URI",
        ),
        (
            &[
                "run",
                "--queue-url",
                "http://127.0.0.1:9/q",
                "--concurrency",
                "lots",
            ],
            "WORKER_CONCURRENCY",
        ),
    ];
    for (args, needle) in cases {
        let out = worker(args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr}");
        assert!(lines[0].contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn env_vars_configure_the_worker_like_flags() {
    let out = worker(&["run"])
        .env("QUEUE_URL", "http://127.0.0.1:9/q")
        .env("WORKER_VISIBILITY_TIMEOUT", "0s")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--visibility-timeout / WORKER_VISIBILITY_TIMEOUT"));
}

#[test]
fn an_unreachable_queue_is_a_clear_error_not_a_hang() {
    // Port 9 (discard) is closed on loopback: connection refused.
    let started = std::time::Instant::now();
    let out = worker(&["run", "--queue-url", "http://127.0.0.1:9/000000000000/nope"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not usable"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_subcommand_asks_the_running_worker() {
    let c = client();
    let q = create_queue(&c, "health", &[]).await;
    let addr = free_addr().to_string();
    let probe = || {
        worker(&["health"])
            .env("WORKER_METRICS_ADDR", &addr)
            .output()
            .expect("health")
    };
    assert_eq!(probe().status.code(), Some(1), "no worker yet: unhealthy");
    let mut child = worker(&[
        "run",
        "--queue-url",
        &q,
        "--wait-time",
        "1s",
        "--metrics-addr",
        &addr,
    ])
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    let healthy = wait_until(Duration::from_secs(10), || async {
        probe().status.success()
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(healthy, "healthy while polling");
    assert_eq!(status.code(), Some(0));
}

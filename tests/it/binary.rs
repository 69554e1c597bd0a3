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

/// A worker on `q` with 1 s polls, serving /health (and /drain, /resume) on `addr`.
fn serving(q: &str, addr: &str) -> Reaped {
    worker(&[
        "run",
        "--queue-url",
        q,
        "--wait-time",
        "1s",
        "--metrics-addr",
        addr,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .map(Reaped)
    .expect("spawn worker")
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
    .map(Reaped)
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
        .map(Reaped)
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
    let mut child = serving(&q, &addr);
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

/// TCP sockets the process `pid` listens on, as "addr:port" (from its fds and /proc/net/tcp*).
fn listening(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // f[1] local address (hex ip:port), f[3] state (0A = LISTEN), f[9] inode
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let (ip, port) = f[1].split_once(':').expect("addr");
                let port = u16::from_str_radix(port, 16).expect("port");
                let ip = if ip.len() == 8 {
                    let n = u32::from_str_radix(ip, 16).expect("ip");
                    std::net::Ipv4Addr::from(n.swap_bytes()).to_string()
                } else {
                    format!("[{ip}]")
                };
                out.push(format!("{ip}:{port}"));
            }
        }
    }
    out
}

/// Security basics: with default settings the worker listens on nothing; with metrics on, only
/// on the loopback address it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_listens_on_nothing_by_default_and_only_on_the_metrics_address_when_asked() {
    let c = client();
    let q = create_queue(&c, "listen", &[]).await;
    let addr = free_addr().to_string();
    for metrics in [None, Some(addr.as_str())] {
        let mut args = vec!["run", "--queue-url", &q, "--wait-time", "1s"];
        if let Some(a) = metrics {
            args.extend(["--metrics-addr", a]);
        }
        let mut child = worker(&args)
            .stderr(Stdio::null())
            .spawn()
            .map(Reaped)
            .expect("spawn");
        // Time to start and poll at least once (1 s long polls).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sockets = listening(child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert_eq!(
            wait_exit(&mut child, Duration::from_secs(10)).code(),
            Some(0)
        );
        match metrics {
            None => assert!(sockets.is_empty(), "listening by default: {sockets:?}"),
            Some(a) => assert_eq!(sockets, vec![a.to_string()], "only the metrics address"),
        }
    }
}

/// The operator's lever: `queue-worker drain` makes a running worker take no new messages
/// (while staying healthy), `queue-worker resume` makes it take them again; SIGUSR1 and SIGUSR2
/// do the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_resume_by_command_and_by_signal() {
    let c = client();
    let q = create_queue(&c, "lever", &[]).await;
    let addr = free_addr().to_string();
    let mut child = serving(&q, &addr);
    let health = || worker(&["health", "--metrics-addr", &addr]).output();
    assert!(
        wait_until(Duration::from_secs(15), || async {
            health().is_ok_and(|o| o.status.success())
        })
        .await,
        "worker up"
    );
    let pid = child.id().to_string();
    let signal = |name: &str| {
        let ok = Command::new("kill")
            .args([name, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {name}");
    };
    let drained = |how: &dyn Fn()| {
        how();
        std::thread::sleep(Duration::from_millis(1500));
    };
    let command = |verb: &'static str| {
        let addr = addr.clone();
        Box::new(move || {
            let out = worker(&[verb, "--metrics-addr", &addr])
                .output()
                .expect(verb);
            assert!(out.status.success(), "{verb}: {out:?}");
        }) as Box<dyn Fn()>
    };
    for (drain, resume) in [
        (command("drain"), command("resume")),
        (
            Box::new(|| signal("-USR1")) as Box<dyn Fn()>,
            Box::new(|| signal("-USR2")) as Box<dyn Fn()>,
        ),
    ] {
        drained(&*drain);
        send_bodies(&c, &q, &["10ms"]).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            counts(&c, &q).await,
            (1, 0),
            "a draining worker takes nothing"
        );
        assert!(
            health().is_ok_and(|o| o.status.success()),
            "a draining worker is healthy"
        );
        resume();
        assert!(
            wait_until(Duration::from_secs(10), || async {
                counts(&c, &q).await == (0, 0)
            })
            .await,
            "resumed: the message is processed"
        );
    }
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success()));
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}

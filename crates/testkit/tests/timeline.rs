//! `scripts/timeline.py`, the run renderer: its Python unit tests (generated runs), and a real
//! local-ecs timeline (a deployment and a scale-in of small shell tasks, which log no jobs)
//! drawn with one lane per task.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use testkit::fauxqs::repo_root;
use testkit::local_ecs::{Echo, LocalEcs, ServiceSpec};

/// `python3`, leaving no `__pycache__` in the work tree.
fn python() -> Command {
    let mut c = Command::new("python3");
    c.env("PYTHONDONTWRITEBYTECODE", "1");
    c
}

/// Runs `cmd` to the end; fails the test with its output unless it exits 0. Returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .expect("python3 runs (the renderer needs Python 3)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn python_unit_tests_of_the_renderer_pass() {
    run_ok(
        python()
            .args(["-m", "unittest", "discover", "-s", "tests/timeline"])
            .current_dir(repo_root()),
    );
}

async fn wait_for(what: &str, check: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_ecs_run_is_drawn_with_one_lane_per_task() {
    let dir = std::env::temp_dir().join(format!("timeline-{:016x}", fastrand::u64(..)));
    let logs = dir.join("logs");
    let events = dir.join("timeline.jsonl");
    let mut spec = ServiceSpec::new(
        "/bin/sh",
        vec![
            OsString::from("-c"),
            OsString::from("trap 'exit 0' TERM; while :; do sleep 0.05; done"),
        ],
    );
    spec.desired = 2;
    spec.reconcile_every = Duration::from_millis(100);
    spec.stop_timeout = Duration::from_secs(2);
    spec.log_dir = Some(logs.clone());
    spec.timeline = Some(events.clone());
    spec.echo = Echo::Off;
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ecs = LocalEcs::start(spec).await.expect("local-ecs starts");
    let c = ecs.control();
    wait_for("steady", || c.status().steady).await;
    c.deploy();
    wait_for("deployed", || {
        let s = c.status();
        s.steady && s.tasks.iter().all(|t| t.revision == 2)
    })
    .await;
    c.set_desired(0);
    wait_for("all gone", || c.status().tasks.is_empty()).await;
    tokio::time::timeout(Duration::from_secs(30), ecs.shutdown())
        .await
        .expect("local-ecs shuts down");

    let svg = dir.join("timeline.svg");
    run_ok(
        python()
            .arg(repo_root().join("scripts/timeline.py"))
            .arg("--events")
            .arg(&events)
            .arg("--logs")
            .arg(&logs)
            .arg("--out")
            .arg(&svg),
    );
    // Count lanes and markers with Python's XML parser (the SVG must parse).
    let count = run_ok(
        python()
            .arg("-c")
            .arg(
                "import sys, xml.etree.ElementTree as E\n\
                 r = E.parse(sys.argv[1]).getroot()\n\
                 c = lambda k: sum(1 for e in r.iter() if k in (e.get('class') or '').split())\n\
                 print(c('lane'), c('marker'), c('exit'))",
            )
            .arg(&svg),
    );
    // 4 tasks (2 of each revision), markers: deploy, rev 2 deployed, desired 2→0; 4 exits.
    assert_eq!(count.trim(), "4 3 4");
    let _ = std::fs::remove_dir_all(&dir);
}

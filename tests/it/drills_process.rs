//! Drills: process faults (SIGKILL, SIGTERM storms, crashing, hanging and flooding `--exec`
//! children) and bad input (odd bodies and attributes, bad settings, unreachable endpoints), each
//! with the real `queue-worker` binary against fauxqs and a queue whose redrive policy moves a
//! message to a DLQ. Whatever fails, every message must end processed-and-deleted or in the DLQ;
//! each drill proves it by counting (from the workers' JSON logs and the queues) and reports its
//! counts with `report_drill`.
//!
//! The helpers here (spawning a worker with JSON logs, reading per-message outcomes from logs,
//! draining a DLQ) are shared with the soak.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

// ---- shared helpers (the soak uses them too)

/// A `queue-worker run` child whose JSON log (stderr) goes to a file.
pub struct Worker {
    pub child: Reaped,
    pub log: PathBuf,
}

/// A fresh temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The worker binary with the test's AWS settings, JSON logs at info and nothing else inherited.
fn worker_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(worker_bin());
    cmd.args(args)
        .env_clear()
        .envs(aws_env())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("WORKER_LOG_FORMAT", "json");
    cmd
}

/// Starts `queue-worker run --queue-url QUEUE ARGS...`, logging to `<dir>/<name>.log`; the
/// worker's (and its children's) working directory is `dir`.
pub fn spawn_worker(queue: &str, args: &[&str], dir: &Path, name: &str) -> Worker {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let mut all = vec!["run", "--queue-url", queue];
    all.extend_from_slice(args);
    let child = worker_command(&all)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn worker");
    Worker {
        child: Reaped(child),
        log,
    }
}

impl Worker {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }
    pub fn signal(&self, s: Signal) {
        kill(self.pid(), s).expect("signal the worker");
    }
    pub fn lines(&self) -> Vec<Value> {
        json_lines(&self.log)
    }
    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_mem(self.child.id()).map_or(0, |m| m.hwm_kib)
    }
}

/// A process's resident memory, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    /// `VmHWM`: the peak resident set size so far.
    pub hwm_kib: u64,
    /// `VmRSS`: the resident set size now.
    pub rss_kib: u64,
    /// `RssAnon`: the part of `VmRSS` that is heap and stacks (the rest is mapped files, such
    /// as the binary's own pages, and shared memory).
    pub anon_kib: u64,
}

/// The memory of process `pid` now; None once it is gone (or on a system without `/proc`).
pub fn proc_mem(pid: u32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Mem {
        hwm_kib: kib("VmHWM:")?,
        rss_kib: kib("VmRSS:")?,
        anon_kib: kib("RssAnon:")?,
    })
}

/// SIGTERM, then the exit status (bounded wait).
fn stop(w: &mut Worker, within: Duration) -> ExitStatus {
    w.signal(Signal::SIGTERM);
    wait_exit(&mut w.child, within)
}

/// Every JSON line of a log file (other lines are skipped).
pub fn json_lines(path: &Path) -> Vec<Value> {
    let mut all = Vec::new();
    for_each_json_line(path, |v| all.push(v));
    all
}

/// [`json_lines`] one at a time, without holding the file or its lines (the soak's logs run to
/// millions of lines); a missing file has none.
pub fn for_each_json_line(path: &Path, mut f: impl FnMut(Value)) {
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    for line in std::io::BufRead::lines(std::io::BufReader::new(file)).map_while(Result::ok) {
        if let Ok(v) = serde_json::from_str(&line) {
            f(v);
        }
    }
}

/// The message id a job's log line is about (its span's field).
pub fn message_id(v: &Value) -> Option<&str> {
    v["span"]["message_id"].as_str()
}

/// Per-message outcomes read from workers' JSON logs.
#[derive(Debug, Default, Clone)]
pub struct Outcomes {
    /// id → jobs that succeeded ("done": the delete was queued).
    pub done: HashMap<String, usize>,
    /// id → jobs that failed ("job failed; ...", "failed for good; ...").
    pub failed: HashMap<String, usize>,
    /// id → jobs cancelled at a shutdown deadline (message returned at once).
    pub cancelled: HashMap<String, usize>,
    /// id → jobs started (any line in a job span, counted once per receive count).
    pub started: HashMap<String, HashSet<u64>>,
    /// ids seen with a receive count of 2 or more.
    pub redelivered: HashSet<String>,
}

impl Outcomes {
    pub fn add(&mut self, lines: &[Value]) {
        for v in lines {
            let Some(id) = message_id(v) else { continue };
            let msg = v["message"].as_str().unwrap_or_default();
            let rc = v["span"]["receive_count"].as_u64().unwrap_or(0);
            self.started.entry(id.to_owned()).or_default().insert(rc);
            if rc >= 2 {
                self.redelivered.insert(id.to_owned());
            }
            let bucket = if msg == "done" {
                &mut self.done
            } else if msg.starts_with("job failed") || msg.starts_with("failed for good") {
                &mut self.failed
            } else if msg.starts_with("cancelled at the shutdown deadline") {
                &mut self.cancelled
            } else {
                continue;
            };
            *bucket.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    pub fn from_logs<'a>(logs: impl IntoIterator<Item = &'a Vec<Value>>) -> Self {
        let mut o = Outcomes::default();
        for l in logs {
            o.add(l);
        }
        o
    }
    pub fn done_ids(&self) -> HashSet<String> {
        self.done.keys().cloned().collect()
    }
    /// ids whose job succeeded more than once.
    pub fn duplicates(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .done
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id.clone())
            .collect();
        d.sort();
        d
    }
    fn total(m: &HashMap<String, usize>) -> usize {
        m.values().sum()
    }
}

/// Receives everything a queue holds (keeping it invisible for a minute): for a DLQ at the end.
pub async fn drain_all(c: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let got = c
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive")
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            empty += 1;
        } else {
            empty = 0;
        }
        all.extend(got);
    }
    all
}

pub fn ids_of(msgs: &[aws_sdk_sqs::types::Message]) -> HashSet<String> {
    msgs.iter()
        .filter_map(|m| m.message_id.clone())
        .collect::<HashSet<_>>()
}

fn set(ids: &[String]) -> HashSet<String> {
    ids.iter().cloned().collect()
}

fn is_clean_exit(s: &ExitStatus) -> bool {
    s.code() == Some(0)
}

/// Waits until the queue holds nothing (visible or in flight).
async fn drained(c: &aws_sdk_sqs::Client, q: &str, within: Duration) -> bool {
    wait_until(within, || async { counts(c, q).await == (0, 0) }).await
}

// ---- 1. process faults

/// A worker with 10 jobs in flight is SIGKILLed (no drain, no returns, no deletes); a second
/// worker gets the other 10 at once and the 10 orphans when their visibility timeout ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_sigkill_mid_batch() {
    let c = client();
    let (q, dlq) = queue_with_redrive(&c, 5).await;
    let dir = temp_dir("drill-sigkill");
    let bodies: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"duration_ms": {}}}"#, 3000 + 50 * i))
        .collect();
    let sent = send_bodies(
        &c,
        &q,
        &bodies.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let args = [
        "--concurrency",
        "10",
        "--visibility-timeout",
        "4s",
        "--wait-time",
        "1s",
        "--shutdown-timeout",
        "5s",
    ];
    let mut a = spawn_worker(&q, &args, &dir, "a");
    let in_flight = |w: &Worker| {
        let mut ids: HashSet<String> = HashSet::new();
        for v in w.lines() {
            if v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("working for"))
            {
                ids.extend(message_id(&v).map(str::to_owned));
            }
        }
        ids
    };
    assert!(
        wait_until(SECS(20), || async { in_flight(&a).len() == 10 }).await,
        "10 jobs running in the first worker"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.signal(Signal::SIGKILL);
    let status = wait_exit(&mut a.child, SECS(5));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    let a_lines = a.lines();
    let a_started = in_flight(&a);
    let a_out = Outcomes::from_logs([&a_lines]);
    // Killed mid-job: whatever it had not finished must come back (a job that did finish had
    // its delete queued, but a SIGKILL may beat the delete: then it comes back too).
    let a_unfinished: HashSet<String> = a_started.difference(&a_out.done_ids()).cloned().collect();

    let mut b = spawn_worker(&q, &args, &dir, "b");
    let all_done = wait_until(SECS(30), || async {
        Outcomes::from_logs([&b.lines()]).done.len() == 20 && counts(&c, &q).await == (0, 0)
    })
    .await;
    let exit_b = stop(&mut b, SECS(10));
    let b_out = Outcomes::from_logs([&b.lines()]);
    assert!(
        all_done,
        "second worker finished all 20: done {} of 20, queue {:?}",
        b_out.done.len(),
        counts(&c, &q).await
    );
    assert!(is_clean_exit(&exit_b));
    let all = Outcomes::from_logs([&a_lines, &b.lines()]);
    assert_eq!(all.done_ids(), set(&sent), "every message processed");
    assert!(
        all.duplicates()
            .iter()
            .all(|id| a_out.done.contains_key(id)),
        "a message runs twice only if the killed worker finished it: {:?}",
        all.duplicates()
    );
    assert!(
        a_unfinished.is_subset(&b_out.redelivered) && b_out.redelivered.is_subset(&a_started),
        "exactly the killed worker's in-flight messages came back (receive count 2)"
    );
    let in_dlq = drain_all(&c, &dlq).await;
    assert!(in_dlq.is_empty(), "nothing dead-lettered");
    report_drill(
        "sigkill_mid_batch",
        &json!({
            "sent": sent.len(),
            "in_flight_at_sigkill": a_started.len(),
            "processed_before_kill": a_out.done.len(),
            "unfinished_at_sigkill": a_unfinished.len(),
            "processed": all.done.len(),
            "deleted": sent.len() - counts(&c, &q).await.0 as usize,
            "redelivered": b_out.redelivered.len(),
            "duplicates": all.duplicates().len(),
            "in_dlq": in_dlq.len(),
            "first_worker_signal": 9,
            "second_worker_exit": exit_b.code(),
        }),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Five SIGTERMs in half a second to a worker with jobs running: one drain, exit 0, nothing lost.
async fn sigterm_burst(c: &aws_sdk_sqs::Client, dir: &Path) -> Value {
    let (q, dlq) = queue_with_redrive(c, 5).await;
    let sent = send_bodies(c, &q, &["2s"; 6]).await;
    let mut w = spawn_worker(
        &q,
        &["--wait-time", "1s", "--shutdown-timeout", "10s"],
        dir,
        "burst",
    );
    assert!(
        wait_until(SECS(20), || async {
            w.lines()
                .iter()
                .filter(|v| v["message"] == "working for 2000 ms")
                .count()
                == 6
        })
        .await,
        "6 jobs running"
    );
    let t = Instant::now();
    for _ in 0..5 {
        w.signal(Signal::SIGTERM);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = wait_exit(&mut w.child, SECS(20));
    let took = t.elapsed();
    let lines = w.lines();
    let out = Outcomes::from_logs([&lines]);
    assert!(is_clean_exit(&status), "{status}");
    assert!(
        took < SECS(10 + 5),
        "within the shutdown timeout (10 s) and its cleanup: {took:?}"
    );
    // Repeats must neither kill the worker nor restart or shorten its drain; they are logged.
    let received = lines
        .iter()
        .filter(|v| v["message"] == "SIGTERM received")
        .count();
    assert_eq!(received, 1, "one shutdown");
    let repeats = lines
        .iter()
        .filter(|v| v["message"] == "SIGTERM received again; already shutting down")
        .count();
    assert_eq!(repeats, 4, "each repeat logged and ignored");
    assert_eq!(out.done_ids(), set(&sent), "the running jobs were finished");
    assert!(out.cancelled.is_empty() && out.duplicates().is_empty());
    assert!(drained(c, &q, SECS(5)).await, "deleted before the exit");
    assert_eq!(counts(c, &dlq).await, (0, 0));
    json!({
        "sent": sent.len(),
        "sigterms": 5,
        "ignored_repeats": 4,
        "processed": out.done.len(),
        "cancelled": 0,
        "duplicates": 0,
        "in_dlq": 0,
        "exit": status.code(),
        "exit_after_first_sigterm_ms": took.as_millis() as u64,
    })
}

/// Start → SIGTERM → restart, several rounds while messages flow, with a 1 s shutdown deadline
/// so that some jobs are cancelled and returned; a last worker drains the queue.
async fn sigterm_restarts(c: &aws_sdk_sqs::Client, dir: &Path) -> Value {
    const ROUNDS: usize = 3;
    let (q, dlq) = queue_with_redrive(c, 10).await;
    let bodies: Vec<String> = (0..60)
        .map(|i| format!("{}ms", 100 + (i * 337) % 1500))
        .collect();
    let sent = send_bodies(
        c,
        &q,
        &bodies.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let args = [
        "--concurrency",
        "5",
        "--wait-time",
        "1s",
        "--visibility-timeout",
        "5s",
        "--shutdown-timeout",
        "1s",
    ];
    let mut logs = Vec::new();
    let mut exits = Vec::new();
    for round in 0..ROUNDS {
        let mut w = spawn_worker(&q, &args, dir, &format!("round-{round}"));
        // Let it get going: a few jobs done, others running.
        wait_until(SECS(15), || async {
            Outcomes::from_logs([&w.lines()]).done.len() >= 4
        })
        .await;
        let t = Instant::now();
        let status = stop(&mut w, SECS(10));
        let took = t.elapsed();
        assert!(is_clean_exit(&status), "round {round}: {status}");
        assert!(
            took < SECS(1 + 4),
            "round {round}: exit within the 1 s deadline and cleanup, took {took:?}"
        );
        exits.push(status.code());
        logs.push(w.lines());
    }
    let mut last = spawn_worker(&q, &args, dir, "last");
    let all_done = wait_until(SECS(30), || async {
        let mut o = Outcomes::from_logs(&logs);
        o.add(&last.lines());
        o.done.len() == sent.len() && counts(c, &q).await == (0, 0)
    })
    .await;
    let status = stop(&mut last, SECS(10));
    exits.push(status.code());
    logs.push(last.lines());
    let out = Outcomes::from_logs(&logs);
    assert!(
        all_done,
        "all processed and the queue drained: done {} of {}, queue {:?}",
        out.done.len(),
        sent.len(),
        counts(c, &q).await
    );
    assert!(exits.iter().all(|e| *e == Some(0)), "{exits:?}");
    assert_eq!(out.done_ids(), set(&sent));
    assert!(
        out.duplicates().is_empty(),
        "a finished job's delete is flushed before the exit: {:?}",
        out.duplicates()
    );
    assert_eq!(counts(c, &dlq).await, (0, 0), "nothing dead-lettered");
    json!({
        "sent": sent.len(),
        "worker_runs": ROUNDS + 1,
        "exits": exits,
        "processed": out.done.len(),
        "deleted": sent.len(),
        "cancelled_at_deadline": Outcomes::total(&out.cancelled),
        "redelivered": out.redelivered.len(),
        "duplicates": out.duplicates().len(),
        "in_dlq": 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_sigterm_storm() {
    let c = client();
    let dir = temp_dir("drill-sigterm");
    let (burst, restarts) = tokio::join!(sigterm_burst(&c, &dir), sigterm_restarts(&c, &dir));
    report_drill(
        "sigterm_storm",
        &json!({ "burst": burst, "restarts": restarts }),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `--exec` child misbehaves in every way at once: dies by a signal (always, or only on its
/// first try), hangs past `--job-timeout`, floods stdout with millions of lines, with one 64 MiB
/// line, or with binary bytes, or exits 65. Twenty plain jobs run beside them. The worker stays
/// up and bounded (memory, log size), and each message ends where it should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_exec_child_faults() {
    let c = client();
    let (q, dlq) = queue_with_redrive(&c, 2).await;
    let dir = temp_dir("drill-exec");
    // The test's handler program is a shell script (the worker itself never uses a shell).
    let script = r#"body=$(cat)
case "$body" in
  ok) exit 0 ;;
  abort) kill -ABRT $$ ;;
  abort-once) [ "$RECEIVE_COUNT" -ge 2 ] && exit 0; kill -SEGV $$ ;;
  hang) exec sleep 60 ;;
  flood-lines) yes 'flood flood flood flood flood flood' | head -c 40000000; exit ;;
  flood-one-line) head -c 67108864 /dev/zero | tr '\0' x; exit ;;
  binary) exec head -c 8000000 /dev/urandom ;;
  exit-65) exit 65 ;;
esac
exit 3"#;
    // (body, ends deleted?, failed attempts)
    let cases: &[(&str, bool, usize)] = &[
        ("abort", false, 2),
        ("abort-once", true, 1),
        ("hang", false, 2),
        ("flood-lines", true, 0),
        ("flood-one-line", true, 0),
        ("binary", true, 0),
        ("exit-65", false, 2),
    ];
    let mut bodies: Vec<&str> = cases.iter().map(|c| c.0).collect();
    bodies.extend(["ok"; 20]);
    let sent = send_bodies(&c, &q, &bodies).await;
    let by_id: HashMap<String, &str> = sent.iter().cloned().zip(bodies.iter().copied()).collect();
    let mut w = spawn_worker(
        &q,
        &[
            "--concurrency",
            "8",
            "--wait-time",
            "1s",
            "--visibility-timeout",
            "10s",
            // Generous: the floods take about a second each on a loaded debug build.
            "--job-timeout",
            "6s",
            "--retry-base",
            "500ms",
            "--retry-max",
            "1s",
            "--exec",
            "sh",
            "-c",
            script,
            "handler",
        ],
        &dir,
        "exec",
    );
    let finished = drained(&c, &q, SECS(40)).await;
    let alive = w.child.try_wait().expect("try_wait").is_none();
    let peak_kib = w.peak_rss_kib();
    let status = stop(&mut w, SECS(15));
    let lines = w.lines();
    let out = Outcomes::from_logs([&lines]);
    assert!(finished, "queue drained: {:?}", counts(&c, &q).await);
    assert!(alive, "the worker survived its children");
    assert!(is_clean_exit(&status), "{status}");
    let in_dlq = drain_all(&c, &dlq).await;
    let dlq_bodies: BTreeMap<String, String> = in_dlq
        .iter()
        .map(|m| {
            (
                m.message_id.clone().unwrap_or_default(),
                m.body.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut per_case = serde_json::Map::new();
    let reasons = |id: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|v| message_id(v) == Some(id))
            .filter_map(|v| v["reason"].as_str().map(str::to_owned))
            .collect()
    };
    for (body, deleted, failures) in cases {
        let id = sent[bodies.iter().position(|b| b == body).expect("sent")].clone();
        let done = out.done.get(&id).copied().unwrap_or(0);
        let failed = out.failed.get(&id).copied().unwrap_or(0);
        assert_eq!(
            failed,
            *failures,
            "{body}: failed attempts, each named in the log: {:?}",
            reasons(&id)
        );
        if *deleted {
            assert_eq!(done, 1, "{body}: processed once");
            assert!(!dlq_bodies.contains_key(&id), "{body}: not in the DLQ");
        } else {
            assert_eq!(done, 0, "{body}: never succeeds");
            assert_eq!(dlq_bodies.get(&id).map(String::as_str), Some(*body));
        }
        per_case.insert(
            (*body).into(),
            json!({"done": done, "failed": failed, "in_dlq": dlq_bodies.contains_key(&id)}),
        );
    }
    let id_of = |b: &str| sent[bodies.iter().position(|x| *x == b).expect("body")].clone();
    assert!(
        reasons(&id_of("abort"))
            .iter()
            .all(|r| r.contains("signal: 6")),
        "{:?}",
        reasons(&id_of("abort"))
    );
    assert!(reasons(&id_of("hang"))
        .iter()
        .all(|r| r.contains("timed out")));
    let ok_done = sent
        .iter()
        .filter(|id| by_id[*id] == "ok" && out.done.get(*id) == Some(&1))
        .count();
    assert_eq!(ok_done, 20, "the plain jobs ran beside the floods");
    let log_bytes = std::fs::metadata(&w.log).map(|m| m.len()).unwrap_or(0);
    let not_logged: u64 = lines
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("more output lines not logged"))
        })
        .filter_map(|v| v["lines"].as_u64())
        .sum();
    let longest_line = std::fs::read_to_string(&w.log)
        .unwrap_or_default()
        .lines()
        .map(str::len)
        .max()
        .unwrap_or(0);
    // Bounds, not timings: the 64 MiB line and the 40 MB of lines must not be held or logged.
    assert!(
        peak_kib < 64 * 1024,
        "peak RSS {peak_kib} KiB: child output is streamed, not buffered"
    );
    assert!(log_bytes < 4 * 1024 * 1024, "log is {log_bytes} bytes");
    assert!(longest_line < 16 * 1024, "longest log line {longest_line}");
    assert!(not_logged > 1_000_000, "flood lines counted, not logged");
    report_drill(
        "exec_child_faults",
        &json!({
            "sent": sent.len(),
            "processed": out.done.len(),
            "deleted": sent.len() - in_dlq.len(),
            "in_dlq": in_dlq.len(),
            "failed_attempts": Outcomes::total(&out.failed),
            "redelivered": out.redelivered.len(),
            "duplicates": out.duplicates().len(),
            "cases": per_case,
            "worker_peak_rss_kib": peak_kib,
            "worker_log_bytes": log_bytes,
            "output_lines_not_logged": not_logged,
            "worker_exit": status.code(),
        }),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- 2. bad input

/// One odd message and where it must end with the simulated handler and with `--exec cat`.
struct Case {
    name: &'static str,
    body: String,
    /// (name, data type, string value or None for binary)
    attrs: Vec<(&'static str, &'static str, Option<&'static str>)>,
    sim_deleted: bool,
    exec_deleted: bool,
}

fn bad_input_cases() -> Vec<Case> {
    let case = |name, body: &str, sim_deleted, exec_deleted| Case {
        name,
        body: body.to_owned(),
        attrs: Vec::new(),
        sim_deleted,
        exec_deleted,
    };
    let envelope = |message: Value| {
        json!({
            "Type": "Notification",
            "MessageId": "00000000-0000-0000-0000-000000000000",
            "TopicArn": "arn:aws:sns:us-east-1:000000000000:t",
            "Message": message,
            "Timestamp": "2026-01-01T00:00:00.000Z",
        })
        .to_string()
    };
    let mut pad = " ".repeat(limits_max_body() - 4);
    pad.push_str("50ms");
    vec![
        // An empty body cannot be sent at all (checked below): whitespace is the closest.
        case("whitespace-only", " \n\t ", false, true),
        case(
            "1mib-not-a-job",
            &"x".repeat(limits_max_body()),
            false,
            true,
        ),
        case("1mib-valid-job", &pad, true, true),
        case(
            "xml-edge-characters",
            "\t\r\n\u{7f}\u{80}\u{ff}\u{d7ff}\u{e000}\u{fffd}",
            false,
            true,
        ),
        case("malformed-json", r#"{"duration": "1s","#, false, true),
        case("json-unknown-field", r#"{"durration": "1s"}"#, false, true),
        case("json-wrong-type", r#"{"duration": [1]}"#, false, true),
        case(
            "sns-message-not-a-string",
            &envelope(json!({"a": 1})),
            false,
            false,
        ),
        case(
            "sns-without-message",
            &envelope(Value::Null).replace(r#""Message":null,"#, ""),
            false,
            false,
        ),
        case(
            "sns-broken-inner-job",
            &envelope(json!("{\"dur")),
            false,
            true,
        ),
        case("sns-valid", &envelope(json!("50ms")), true, true),
        Case {
            attrs: vec![
                ("n", "Number.custom", Some("12")),
                ("s", "String.x-unknown", Some("v")),
                ("b", "Binary", None),
                ("g", "Binary.gif", None),
            ],
            ..case("unknown-attribute-types", "50ms", true, true)
        },
        case("plain-valid", "50ms", true, true),
    ]
}

/// SQS's largest body: 1 MiB.
fn limits_max_body() -> usize {
    1024 * 1024
}

async fn send_case(c: &aws_sdk_sqs::Client, q: &str, case: &Case) -> String {
    let mut req = c.send_message().queue_url(q).message_body(&case.body);
    for (name, ty, value) in &case.attrs {
        let mut a = MessageAttributeValue::builder().data_type(*ty);
        a = match value {
            Some(v) => a.string_value(*v),
            None => a.binary_value(Blob::new(vec![0u8, 1, 0xff])),
        };
        req = req.message_attributes(*name, a.build().expect("attribute"));
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{}: send: {e:?}", case.name))
        .message_id
        .expect("id")
}

/// Runs one worker over every case; returns case name → (done, failed, in DLQ) and the worker's
/// counts.
async fn bad_input_run(
    c: &aws_sdk_sqs::Client,
    dir: &Path,
    handler: &str,
    extra: &[&str],
) -> (BTreeMap<&'static str, (usize, usize, bool)>, Value) {
    let (q, dlq) = queue_with_redrive(c, 2).await;
    let cases = bad_input_cases();
    let mut ids = Vec::new();
    for case in &cases {
        ids.push(send_case(c, &q, case).await);
    }
    let mut args = vec![
        "--wait-time",
        "1s",
        "--retry-base",
        "200ms",
        "--retry-max",
        "500ms",
        "--visibility-timeout",
        "10s",
    ];
    args.extend_from_slice(extra);
    let mut w = spawn_worker(&q, &args, dir, handler);
    let finished = drained(c, &q, SECS(25)).await;
    let alive = w.child.try_wait().expect("try_wait").is_none();
    let status = stop(&mut w, SECS(10));
    assert!(
        finished,
        "{handler}: queue drained: {:?}",
        counts(c, &q).await
    );
    assert!(alive, "{handler}: the worker never crashed");
    assert!(is_clean_exit(&status), "{handler}: {status}");
    let lines = w.lines();
    assert!(
        !lines.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.contains("panicked"))),
        "{handler}: no panic"
    );
    let out = Outcomes::from_logs([&lines]);
    let in_dlq = ids_of(&drain_all(c, &dlq).await);
    let mut table = BTreeMap::new();
    for (case, id) in cases.iter().zip(&ids) {
        let done = out.done.get(id).copied().unwrap_or(0);
        let failed = out.failed.get(id).copied().unwrap_or(0);
        let dead = in_dlq.contains(id);
        let want_deleted = if handler == "sim" {
            case.sim_deleted
        } else {
            case.exec_deleted
        };
        if want_deleted {
            assert!(
                done == 1 && failed == 0 && !dead,
                "{handler}/{}: processed and deleted once (done {done}, failed {failed}, dlq {dead})",
                case.name
            );
        } else {
            assert!(
                done == 0 && failed == 2 && dead,
                "{handler}/{}: failed on both receives, each logged with its id, then dead-lettered (done {done}, failed {failed}, dlq {dead})",
                case.name
            );
        }
        table.insert(case.name, (done, failed, dead));
    }
    let summary = json!({
        "sent": cases.len(),
        "processed": out.done.len(),
        "deleted": cases.len() - in_dlq.len(),
        "in_dlq": in_dlq.len(),
        "failed_attempts": Outcomes::total(&out.failed),
        "redelivered": out.redelivered.len(),
        "duplicates": out.duplicates().len(),
        "worker_exit": status.code(),
    });
    (table, summary)
}

/// (case, extra args, extra env, what the error line must name)
type StartCase<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

/// A setting the worker must refuse at start: exit 2, one error line naming it, nothing received.
async fn refused_at_start(
    q: &str,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    needle: &str,
) -> Value {
    let mut all = vec!["run", "--queue-url", q];
    all.extend_from_slice(args);
    let mut cmd = worker_command(&all);
    cmd.env("WORKER_LOG_FORMAT", "text")
        .envs(env.iter().copied());
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .expect("join");
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("queue-worker:"))
        .collect();
    assert_eq!(errors.len(), 1, "{name}: one error line: {stderr}");
    assert!(errors[0].contains(needle), "{name}: {stderr}");
    assert!(
        !stderr.contains("worker started"),
        "{name}: refused before receiving: {stderr}"
    );
    assert!(took < SECS(30), "{name}: took {took:?}");
    json!({"case": name, "exit": 2, "error": errors[0].chars().take(160).collect::<String>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_bad_input() {
    let c = client();
    let dir = temp_dir("drill-bad-input");

    // What SQS (and fauxqs) refuse at send time, so no worker can ever see it.
    let probe = create_queue(&c, "bad-input-probe", &[]).await;
    let refused = |body: String| {
        let c = c.clone();
        let probe = probe.clone();
        async move {
            c.send_message()
                .queue_url(&probe)
                .message_body(body)
                .send()
                .await
                .is_err()
        }
    };
    assert!(refused(String::new()).await, "empty body refused at send");
    assert!(
        refused("x".repeat(limits_max_body() + 1)).await,
        "1 MiB + 1 refused at send"
    );
    assert!(
        refused("a\u{1}b".into()).await,
        "control characters refused at send"
    );

    let ((sim, sim_counts), (exec, exec_counts)) = tokio::join!(
        bad_input_run(&c, &dir, "sim", &[]),
        bad_input_run(&c, &dir, "exec", &["--exec", "cat"]),
    );

    // Refused settings and endpoints: the queue's message stays untouched.
    let q = create_queue(&c, "bad-config", &[]).await;
    send_bodies(&c, &q, &["1s"]).await;
    let missing = format!("{}/000000000000/no-such-queue", fauxqs().endpoint);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let cases: Vec<StartCase> = vec![
        (
            "concurrency 0",
            vec!["--concurrency", "0"],
            vec![],
            "WORKER_CONCURRENCY",
        ),
        (
            "wait time over 20 s",
            vec!["--wait-time", "21s"],
            vec![],
            "WORKER_WAIT_TIME",
        ),
        (
            "visibility 0",
            vec!["--visibility-timeout", "0s"],
            vec![],
            "WORKER_VISIBILITY_TIMEOUT",
        ),
        (
            "unknown protection",
            vec!["--protection", "maybe"],
            vec![],
            "WORKER_PROTECTION",
        ),
        (
            "job timeout not a duration",
            vec!["--job-timeout", "soon"],
            vec![],
            "WORKER_JOB_TIMEOUT",
        ),
        (
            "dead-letter queue not a URL",
            vec!["--dead-letter-queue-url", "not a url"],
            vec![],
            "DEAD_LETTER_QUEUE_URL",
        ),
        (
            "metrics address taken",
            vec!["--metrics-addr", &busy_addr],
            vec![],
            "cannot serve metrics",
        ),
        (
            "unreachable endpoint",
            vec![],
            vec![("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
            "is not usable",
        ),
    ];
    let mut config_rows = Vec::new();
    for (name, args, env, needle) in &cases {
        config_rows.push(refused_at_start(&q, name, args, env, needle).await);
    }
    config_rows
        .push(refused_at_start(&missing, "queue does not exist", &[], &[], "is not usable").await);
    drop(busy);
    let msgs = c
        .receive_message()
        .queue_url(&q)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    let rc = msgs
        .first()
        .and_then(|m| m.attributes.as_ref())
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .cloned();
    assert_eq!(
        rc.as_deref(),
        Some("1"),
        "no refused worker received the message"
    );

    let table: serde_json::Map<String, Value> = sim
        .iter()
        .map(|(name, s)| {
            let e = exec[name];
            (
                (*name).to_owned(),
                json!({
                    "sim": if s.2 { "dlq" } else { "deleted" },
                    "exec_cat": if e.2 { "dlq" } else { "deleted" },
                }),
            )
        })
        .collect();
    report_drill(
        "bad_input",
        &json!({
            "refused_at_send": ["empty body", "1 MiB + 1 byte", "control character"],
            "sim": sim_counts,
            "exec_cat": exec_counts,
            "cases": table,
            "config_refused": config_rows.len(),
            "config_cases": config_rows,
            "message_receive_count_after_refusals": 1,
        }),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

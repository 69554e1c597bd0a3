//! The soak: many messages through a `local-ecs` fleet of real `queue-worker` processes while
//! tasks are stopped with SIGTERM at random, checked by exact accounting at the end.
//!
//! Skipped by `cargo test`; `scripts/soak.sh [--messages N] [--restarts R]` runs it. Settings
//! come from env vars: `SOAK_MESSAGES` (100000, at most 1000000), `SOAK_RESTARTS` (10),
//! `SOAK_TASKS` (3), `SOAK_WORKER_BIN` (the worker binary the fleet runs; by default the debug
//! build `cargo test` made, so the figures are a debug build's unless it is set).
//!
//! Every body carries its unique sequence number inside the simulated job's duration, as
//! nanoseconds (`{"duration":"2ms 4711ns","fail":true}`, or plain `2ms 4711ns`), and the
//! message attribute `soak_seq` carries it too, so a body found in the DLQ names its message
//! without trusting any id mapping. Kinds, by sequence number: 5 % always fail (`"fail": true`),
//! 2 % fail once (`"fail_times": 1`), 1 % run 1.5 s (longer than the 1 s shutdown deadline, so
//! a SIGTERM cancels them and returns their message), the rest run 0–4 ms; a third of the
//! successful ones use the plain body form. The queue's redrive policy moves a message to the
//! DLQ on its 6th receive (maxReceiveCount 5: retries of the always-failing ones, with room for
//! the receives a restart costs a message that was not at fault).
//!
//! Restarts are SIGTERMs sent straight to a random task, as ECS does for `StopTask` or a Spot
//! interruption (task protection does not hold those back; a deployment, which protection does
//! hold back, is `local_ecs::deploy_replaces_tasks_without_interrupting_jobs`). `local-ecs`
//! starts a replacement (a new task number, a new process), as the ECS scheduler would. With 2
//! or more tasks the restarts spare task 1, so that one process lives through the whole soak.
//!
//! Memory: every loop turn (250 ms) the soak reads `VmHWM`, `VmRSS` and `RssAnon` (heap and
//! stacks, without the binary's mapped pages) from `/proc/<pid>/status` of every live task
//! process (`Control::pids()`), and records a checkpoint of all of them each time the settled
//! count (sent minus what is still on the queue) first reaches a multiple of 100,000, and at the
//! end (before local-ecs stops the fleet). The report's `memory` holds the checkpoints, each
//! process's last reading and peaks, and the long-lived process's series, so the same process
//! can be compared at 100,000 and at 1,000,000 messages, and processes started late with those
//! started early. A process's last ≤ 250 ms (its shutdown) is not sampled. A process's peak is
//! the highest VmHWM or VmRSS read (the kernel's VmHWM can dip: see [`ProcMem::peak_kib`]); the
//! soak fails if any worker process's peak exceeds 64 MiB ([`MAX_WORKER_HWM_KIB`]). Every 10 s
//! a progress line (sent, settled, the queue's visible and in-flight counts) goes to stderr.
//!
//! Per-message outcomes come from the tasks' JSON logs: a `done` line (the job succeeded and its
//! delete was queued), `job failed`, `cancelled at the shutdown deadline`, each in a span naming
//! the message id. At the end: the queue is empty; the distinct ids that succeeded and the ids in
//! the DLQ are disjoint and together exactly the ids sent; the DLQ holds exactly the always-fail
//! ones; every task exited 0; every duplicate (an id that succeeded twice) is explained by a
//! logged delete or visibility failure or a SIGKILLed task; and no worker's peak RSS went above
//! the bound, or the soak fails. The logs are read a line at a time: at a million messages they
//! hold millions of lines.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use testkit::local_ecs::{Echo, EventKind};

use crate::drills_process::{drain_all, for_each_json_line, message_id, proc_mem, Mem, Outcomes};
use crate::local_ecs::fleet_tuned;
use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MAX_RECEIVES: u32 = 5;
/// The most messages: sequence numbers (0..n) ride in a job's duration as nanoseconds and must
/// stay below 1 ms, so they do not change the job's kind.
const MAX_MESSAGES: usize = 1_000_000;
/// A worker process whose peak RSS (the highest VmHWM or VmRSS read) goes above this fails the
/// soak: 64 MiB, twice what a debug worker peaks at here (33 MiB; a release one, 20 MiB), so
/// only memory that grows with the message count (or a gross regression) trips it.
const MAX_WORKER_HWM_KIB: u64 = 64 * 1024;
/// A memory checkpoint each time this many more messages have settled (and one at the end).
const CHECKPOINT_EVERY: usize = 100_000;
/// The task the restarts spare (when there are others): one process lives through the soak.
const SPARED_TASK: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Ok,
    AlwaysFail,
    FailOnce,
    Long,
}

fn kind_of(seq: usize) -> Kind {
    match seq % 100 {
        0..=4 => Kind::AlwaysFail,
        5..=6 => Kind::FailOnce,
        7 => Kind::Long,
        _ => Kind::Ok,
    }
}

/// The body for message `seq`: its number is the nanoseconds of the duration.
fn body_of(seq: usize) -> String {
    let ms = seq % 5;
    match kind_of(seq) {
        Kind::AlwaysFail => format!(r#"{{"duration":"{ms}ms {seq}ns","fail":true}}"#),
        Kind::FailOnce => format!(r#"{{"duration":"{ms}ms {seq}ns","fail_times":1}}"#),
        Kind::Long => format!(r#"{{"duration":"1500ms {seq}ns"}}"#),
        Kind::Ok if seq % 3 == 0 => format!("{ms}ms {seq}ns"),
        Kind::Ok => format!(r#"{{"duration":"{ms}ms {seq}ns"}}"#),
    }
}

/// The sequence number back from a body (the digits before `ns`).
fn seq_of(body: &str) -> Option<usize> {
    let end = body.find("ns")?;
    let start = body[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    body[start..end].parse().ok()
}

/// `x` to one decimal.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Where the soak stands at one turn of its loop.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Seconds since the start.
    at_s: f64,
    sent: usize,
    /// Sent and no longer on the queue: deleted after success, or moved to the DLQ.
    settled: usize,
    /// The queue's visible and in-flight messages.
    queue: (u64, u64),
}

/// One worker process as sampled (a task number is one process: a replacement is a new task).
#[derive(Debug, Clone)]
struct ProcMem {
    pid: u32,
    /// (seconds since the start, messages settled) when first and last read.
    first: (f64, usize),
    last: (f64, usize),
    /// The last reading.
    mem: Mem,
    /// The highest VmHWM or VmRSS read: the kernel's VmHWM is max(its high-water mark, VmRSS)
    /// and the mark is updated lazily (on unmaps), so a reading can dip below an earlier VmRSS
    /// after the allocator hands pages back.
    peak_kib: u64,
    rss_max_kib: u64,
    anon_max_kib: u64,
}

/// The task processes' memory through the soak: per process, and at checkpoints.
#[derive(Debug, Default)]
struct MemWatch {
    procs: BTreeMap<u32, ProcMem>,
    checkpoints: Vec<Value>,
}

impl MemWatch {
    /// Reads the memory of every process in `pids` (task, pid) still alive; returns the readings.
    fn sample(&mut self, pids: &[(u32, u32)], now: Progress) -> Vec<(u32, u32, Mem)> {
        let (at_s, settled) = (now.at_s, now.settled);
        let mut live = Vec::new();
        for &(task, pid) in pids {
            let Some(mem) = proc_mem(pid) else { continue };
            let p = self.procs.entry(task).or_insert(ProcMem {
                pid,
                first: (at_s, settled),
                last: (at_s, settled),
                mem,
                peak_kib: 0,
                rss_max_kib: 0,
                anon_max_kib: 0,
            });
            p.last = (at_s, settled);
            p.mem = mem;
            p.peak_kib = p.peak_kib.max(mem.hwm_kib).max(mem.rss_kib);
            p.rss_max_kib = p.rss_max_kib.max(mem.rss_kib);
            p.anon_max_kib = p.anon_max_kib.max(mem.anon_kib);
            live.push((task, pid, mem));
        }
        live
    }

    /// Samples, and records the readings as checkpoint `at`, with the emulator's memory beside.
    fn checkpoint(&mut self, at: &str, pids: &[(u32, u32)], now: Progress) {
        let live = self.sample(pids, now);
        let fauxqs = proc_mem(fauxqs().pid());
        let row = json!({
            "at": at,
            "settled": now.settled,
            "sent": now.sent,
            "queue_visible_in_flight": [now.queue.0, now.queue.1],
            "at_s": round1(now.at_s),
            "processes": live
                .iter()
                .map(|(task, pid, m)| {
                    json!({"task": task, "pid": pid, "vmhwm_kib": m.hwm_kib, "vmrss_kib": m.rss_kib, "rss_anon_kib": m.anon_kib})
                })
                .collect::<Vec<_>>(),
            "max_vmhwm_kib_live": live.iter().map(|l| l.2.hwm_kib).max(),
            "max_peak_kib_so_far": self.max_peak_kib(|_, _| true),
            "fauxqs": fauxqs.map(|m| json!({"vmhwm_kib": m.hwm_kib, "vmrss_kib": m.rss_kib, "rss_anon_kib": m.anon_kib})),
        });
        eprintln!("soak: memory at {at}: {row}");
        self.checkpoints.push(row);
    }

    /// The highest peak of the processes `which` (task, process) selects.
    fn max_peak_kib(&self, which: impl Fn(u32, &ProcMem) -> bool) -> Option<u64> {
        self.procs
            .iter()
            .filter(|(t, p)| which(**t, p))
            .map(|(_, p)| p.peak_kib)
            .max()
    }

    /// The report's `memory`: checkpoints, every process, the longest-lived one's series (the
    /// lowest task number of those alive longest), and the peaks of the first tasks against
    /// those of replacements started in the second half.
    fn report(&self, n: usize, tasks: usize, jobs_done: &BTreeMap<u32, usize>) -> Value {
        let processes: Vec<Value> = self
            .procs
            .iter()
            .map(|(task, p)| {
                json!({
                    "task": task,
                    "pid": p.pid,
                    "first_seen_s": round1(p.first.0),
                    "first_seen_settled": p.first.1,
                    "last_seen_s": round1(p.last.0),
                    "last_seen_settled": p.last.1,
                    "jobs_done": jobs_done.get(task).copied().unwrap_or(0),
                    "peak_kib": p.peak_kib,
                    "vmhwm_last_kib": p.mem.hwm_kib,
                    "vmrss_last_kib": p.mem.rss_kib,
                    "vmrss_max_kib": p.rss_max_kib,
                    "rss_anon_last_kib": p.mem.anon_kib,
                    "rss_anon_max_kib": p.anon_max_kib,
                })
            })
            .collect();
        let long_lived = self
            .procs
            .iter()
            .rev()
            .max_by_key(|(_, p)| p.last.1 - p.first.1)
            .map(|(task, p)| {
                let series: Vec<Value> = self
                    .checkpoints
                    .iter()
                    .filter_map(|c| {
                        let row = c["processes"]
                            .as_array()?
                            .iter()
                            .find(|r| r["pid"] == p.pid)?;
                        Some(json!({
                            "at": c["at"],
                            "vmhwm_kib": row["vmhwm_kib"],
                            "vmrss_kib": row["vmrss_kib"],
                            "rss_anon_kib": row["rss_anon_kib"],
                        }))
                    })
                    .collect();
                json!({
                    "task": task,
                    "pid": p.pid,
                    "jobs_done": jobs_done.get(task).copied().unwrap_or(0),
                    "settled_while_alive": p.last.1 - p.first.1,
                    "series": series,
                })
            });
        let first_tasks = |t: u32, _: &ProcMem| t as usize <= tasks;
        json!({
            "bound_peak_kib": MAX_WORKER_HWM_KIB,
            "sampled_every_ms": 250,
            "max_peak_kib": self.max_peak_kib(|_, _| true),
            "max_peak_kib_first_tasks": self.max_peak_kib(first_tasks),
            "max_peak_kib_started_in_second_half": self.max_peak_kib(|t, p| !first_tasks(t, p) && p.first.1 >= n / 2),
            "long_lived": long_lived,
            "checkpoints": self.checkpoints,
            "processes": processes,
        })
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Sends `seqs` with SendMessageBatch (retrying failed entries); returns (seq, message id).
async fn send_batch(c: &aws_sdk_sqs::Client, q: &str, seqs: &[usize]) -> Vec<(usize, String)> {
    let mut left: Vec<usize> = seqs.to_vec();
    let mut out = Vec::new();
    for attempt in 0..10 {
        if left.is_empty() {
            break;
        }
        let entries: Vec<SendMessageBatchRequestEntry> = left
            .iter()
            .map(|s| {
                SendMessageBatchRequestEntry::builder()
                    .id(s.to_string())
                    .message_body(body_of(*s))
                    .message_attributes(
                        "soak_seq",
                        MessageAttributeValue::builder()
                            .data_type("Number")
                            .string_value(s.to_string())
                            .build()
                            .expect("attribute"),
                    )
                    .build()
                    .expect("entry")
            })
            .collect();
        match c
            .send_message_batch()
            .queue_url(q)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(r) => {
                for ok in r.successful {
                    let seq: usize = ok.id.parse().expect("entry id");
                    out.push((seq, ok.message_id));
                    left.retain(|s| *s != seq);
                }
            }
            Err(e) => eprintln!("soak: send batch failed (attempt {attempt}): {e}"),
        }
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(left.is_empty(), "could not send {left:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run it with scripts/soak.sh"]
async fn soak() {
    let n = env_usize("SOAK_MESSAGES", 100_000);
    let restarts = env_usize("SOAK_RESTARTS", 10);
    let tasks = env_usize("SOAK_TASKS", 3);
    assert!(
        (1..=MAX_MESSAGES).contains(&n),
        "SOAK_MESSAGES must be 1..={MAX_MESSAGES}: the sequence number must stay below 1 ms"
    );
    let worker = std::env::var_os("SOAK_WORKER_BIN").map(std::path::PathBuf::from);
    let worker_report = match &worker {
        Some(bin) => json!({"bin": bin.display().to_string(), "from": "SOAK_WORKER_BIN"}),
        None => {
            json!({"bin": worker_bin().display().to_string(), "from": "cargo test's debug build"})
        }
    };
    let started = Instant::now();
    let c = client();
    let (q, dlq) = queue_with_redrive(&c, MAX_RECEIVES).await;

    // The fleet: local-ecs's test fleet with the soak's own timings (and worker, if given).
    let fleet = fleet_tuned(
        tasks,
        &q,
        &[
            ("WORKER_CONCURRENCY", "20"),
            // The worker's default (10 % of the 1m duration): the soak keeps normal hold times.
            ("WORKER_PROTECTION_MIN_HOLD", "6s"),
            ("WORKER_WAIT_TIME", "1s"),
            ("WORKER_RETRY_BASE", "200ms"),
            ("WORKER_RETRY_MAX", "1s"),
            ("WORKER_VISIBILITY_TIMEOUT", "10s"),
        ],
        Echo::Off,
        |spec| {
            if let Some(bin) = worker {
                spec.program = bin;
            }
        },
    )
    .await;
    let (ecs, control, logs) = (fleet.ecs, fleet.control, fleet.logs);

    // The sender: 4 batches of 10 in flight at a time.
    let sent_count = Arc::new(AtomicUsize::new(0));
    let sender = {
        let c = c.clone();
        let q = q.clone();
        let sent_count = sent_count.clone();
        tokio::spawn(async move {
            let chunks: Vec<Vec<usize>> = (0..n)
                .collect::<Vec<_>>()
                .chunks(10)
                .map(<[usize]>::to_vec)
                .collect();
            let mut sent = Vec::with_capacity(n);
            for group in chunks.chunks(4) {
                let results = futures_util::future::join_all(
                    group.iter().map(|seqs| send_batch(&c, &q, seqs)),
                )
                .await;
                for r in results {
                    sent_count.fetch_add(r.len(), Ordering::Relaxed);
                    sent.extend(r);
                }
            }
            sent
        })
    };

    // Restarts at evenly spread points of progress, until everything has settled.
    let timeout = SECS(120) + Duration::from_millis(n as u64 * 10);
    let mut restarted: Vec<(u32, f64)> = Vec::new();
    let mut settled_checks = 0;
    let mut rng = fastrand::Rng::with_seed(n as u64 ^ restarts as u64);
    let mut mem = MemWatch::default();
    let mut next_checkpoint = CHECKPOINT_EVERY;
    let mut now;
    let mut next_progress_line = 10.0;
    loop {
        assert!(
            started.elapsed() < timeout,
            "soak did not settle within {timeout:?}: sent {}, queue {:?}, restarts {}",
            sent_count.load(Ordering::Relaxed),
            counts(&c, &q).await,
            restarted.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let sent_now = sent_count.load(Ordering::Relaxed);
        let (visible, in_flight) = counts(&c, &q).await;
        let settled_now = sent_now.saturating_sub((visible + in_flight) as usize);
        now = Progress {
            at_s: started.elapsed().as_secs_f64(),
            sent: sent_now,
            settled: settled_now,
            queue: (visible, in_flight),
        };
        if now.at_s >= next_progress_line {
            eprintln!(
                "soak: {:.0}s: sent {sent_now}, settled {settled_now}, queue {visible} visible + {in_flight} in flight",
                now.at_s
            );
            next_progress_line += 10.0;
        }
        let pids = control.pids();
        mem.sample(&pids, now);
        while next_checkpoint < n && settled_now >= next_checkpoint {
            mem.checkpoint(&next_checkpoint.to_string(), &pids, now);
            next_checkpoint += CHECKPOINT_EVERY;
        }
        let progress = settled_now as f64 / n as f64;
        if restarted.len() < restarts
            && progress >= (restarted.len() + 1) as f64 / (restarts + 1) as f64
        {
            let running: Vec<_> = control
                .status()
                .tasks
                .into_iter()
                .filter(|t| t.stopping.is_none() && (tasks < 2 || t.task != SPARED_TASK))
                .collect();
            if !running.is_empty() {
                let t = &running[rng.usize(..running.len())];
                let pid = Pid::from_raw(i32::try_from(t.pid).expect("pid"));
                if kill(pid, Signal::SIGTERM).is_ok() {
                    eprintln!(
                        "soak: SIGTERM to task {} at {:.0}% ({:.1}s)",
                        t.task,
                        progress * 100.0,
                        started.elapsed().as_secs_f64()
                    );
                    restarted.push((t.task, progress));
                }
            }
        }
        let done_sending = sender.is_finished();
        if done_sending && restarted.len() >= restarts && (visible, in_flight) == (0, 0) {
            settled_checks += 1;
            if settled_checks >= 3 {
                break;
            }
        } else {
            settled_checks = 0;
        }
    }
    let processing_s = started.elapsed().as_secs_f64();
    mem.checkpoint("end", &control.pids(), now);
    let sent = sender.await.expect("sender");
    let events = control.events();
    let tasks_started = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TaskStarted { .. }))
        .count();
    tokio::time::timeout(SECS(40), ecs.shutdown())
        .await
        .expect("local-ecs shuts down");
    let events = control.events();

    // Accounting, a log line at a time: the outcomes, which tasks ran each id to success, and
    // the lines that can explain a duplicate.
    let trouble = |v: &Value| {
        let m = v["message"].as_str().unwrap_or_default();
        [
            "delete refused",
            "delete batch failed",
            "could not delete",
            "pending deletes could not be sent",
            "deleter already stopped",
            "could not extend visibility",
            "visibility extension failed",
            "jobs did not stop after cancellation",
        ]
        .iter()
        .any(|t| m.contains(t))
    };
    let mut out = Outcomes::default();
    let mut done_in: HashMap<String, Vec<u32>> = HashMap::new();
    let mut jobs_done: BTreeMap<u32, usize> = BTreeMap::new();
    let mut trouble_lines: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    for entry in std::fs::read_dir(&logs).expect("log dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(task) = name
            .strip_prefix("task-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        for_each_json_line(&entry.path(), |v| {
            out.add(std::slice::from_ref(&v));
            if v["message"] == "done" {
                if let Some(id) = message_id(&v) {
                    done_in.entry(id.to_owned()).or_default().push(task);
                    *jobs_done.entry(task).or_default() += 1;
                }
            }
            if trouble(&v) {
                trouble_lines.entry(task).or_default().push(v);
            }
        });
    }
    let seq_by_id: HashMap<String, usize> = sent.iter().map(|(s, id)| (id.clone(), *s)).collect();
    let sent_ids: HashSet<String> = seq_by_id.keys().cloned().collect();
    assert_eq!(
        sent_ids.len(),
        n,
        "every message sent once, with its own id"
    );
    let in_dlq = drain_all(&c, &dlq).await;
    let dlq_ids: HashSet<String> = in_dlq.iter().filter_map(|m| m.message_id.clone()).collect();
    let dlq_seqs: HashSet<usize> = in_dlq
        .iter()
        .map(|m| {
            let body = m.body.as_deref().unwrap_or_default();
            let seq = seq_of(body).unwrap_or_else(|| panic!("DLQ body without a number: {body}"));
            let attr = m
                .message_attributes
                .as_ref()
                .and_then(|a| a.get("soak_seq"))
                .and_then(|a| a.string_value.clone());
            assert_eq!(attr, Some(seq.to_string()), "body and attribute agree");
            seq
        })
        .collect();
    let done_ids = out.done_ids();
    let always_fail: HashSet<usize> = (0..n).filter(|s| kind_of(*s) == Kind::AlwaysFail).collect();
    let lost: Vec<usize> = sent_ids
        .iter()
        .filter(|id| !done_ids.contains(*id) && !dlq_ids.contains(*id))
        .map(|id| seq_by_id[id])
        .collect();
    let both: Vec<usize> = done_ids
        .intersection(&dlq_ids)
        .map(|id| seq_by_id[id])
        .collect();
    let unknown = done_ids
        .union(&dlq_ids)
        .filter(|id| !sent_ids.contains(*id))
        .count();
    let wrongly_dead: Vec<usize> = dlq_seqs.difference(&always_fail).copied().collect();
    let succeeded_fail: Vec<usize> = done_ids
        .iter()
        .map(|id| seq_by_id[id])
        .filter(|s| always_fail.contains(s))
        .collect();

    // Duplicates, each with what explains it.
    let sigkilled: HashSet<u32> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Sigkill { task } => Some(task),
            _ => None,
        })
        .collect();
    let mut duplicates = Vec::new();
    let mut unexplained = Vec::new();
    for id in out.duplicates() {
        let mut done_in = done_in.get(&id).cloned().unwrap_or_default();
        done_in.sort_unstable();
        done_in.dedup();
        let mut why: Vec<String> = done_in
            .iter()
            .filter(|t| sigkilled.contains(t))
            .map(|t| format!("task {t} was SIGKILLed"))
            .collect();
        for t in &done_in {
            for v in trouble_lines.get(t).into_iter().flatten() {
                let about = v["message_id"].as_str() == Some(&id) || message_id(v) == Some(&id);
                let general = v["message_id"].is_null() && message_id(v).is_none();
                if about || general {
                    why.push(format!(
                        "task {t}: {}",
                        v["message"].as_str().unwrap_or_default()
                    ));
                }
            }
        }
        why.dedup();
        let row = json!({"seq": seq_by_id.get(&id), "done_in_tasks": done_in, "explained_by": why});
        if why.is_empty() {
            unexplained.push(row.clone());
        }
        duplicates.push(row);
    }
    let exits: Vec<(u32, Option<i32>, Option<i32>)> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::TaskExited {
                task, code, signal, ..
            } => Some((task, code, signal)),
            _ => None,
        })
        .collect();
    let unclean: Vec<_> = exits
        .iter()
        .filter(|(_, code, _)| *code != Some(0))
        .collect();
    let final_counts = counts(&c, &q).await;
    let by_kind = |k: Kind| (0..n).filter(|s| kind_of(*s) == k).count();
    let mut memory = mem.report(n, tasks, &jobs_done);
    memory["worker"] = worker_report;
    // The test process holds every id for the accounting: it grows with the count by design.
    memory["test_process_vmhwm_kib"] = json!(proc_mem(std::process::id()).map(|m| m.hwm_kib));
    let report = json!({
        "sent": n,
        "tasks": tasks,
        "restarts": restarted.len(),
        "restarts_spare_task": (tasks >= 2).then_some(SPARED_TASK),
        "restart_points_pct": restarted.iter().map(|(_, p)| (p * 100.0).round()).collect::<Vec<_>>(),
        "tasks_started": tasks_started,
        "task_exits": exits.len(),
        "unclean_exits": unclean.len(),
        "sigkills": sigkilled.len(),
        "kinds": {
            "ok": by_kind(Kind::Ok),
            "always_fail": by_kind(Kind::AlwaysFail),
            "fail_once": by_kind(Kind::FailOnce),
            "long_1500ms": by_kind(Kind::Long),
        },
        "processed_distinct": done_ids.len(),
        "deleted_after_success": done_ids.len(),
        "in_dlq": in_dlq.len(),
        "sent_eq_deleted_plus_dlq": n == done_ids.len() + dlq_ids.len() && lost.is_empty() && both.is_empty(),
        "lost": lost.len(),
        "in_both": both.len(),
        "dlq_not_always_fail": wrongly_dead.len(),
        "always_fail_succeeded": succeeded_fail.len(),
        "jobs_done": out.done.values().sum::<usize>(),
        "failed_attempts": out.failed.values().sum::<usize>(),
        "cancelled_at_deadline": out.cancelled.values().sum::<usize>(),
        "redelivered": out.redelivered.len(),
        "duplicates": duplicates.len(),
        "duplicates_unexplained": unexplained.len(),
        "duplicate_details": duplicates,
        "queue_at_end": [final_counts.0, final_counts.1],
        "processing_s": round1(processing_s),
        "total_s": round1(started.elapsed().as_secs_f64()),
        "memory": memory,
    });
    report_drill("soak", &report);
    assert_eq!(final_counts, (0, 0), "queue empty");
    assert!(
        lost.is_empty(),
        "lost (neither succeeded nor in the DLQ): {lost:?}"
    );
    assert!(both.is_empty(), "succeeded and dead-lettered: {both:?}");
    assert_eq!(unknown, 0, "ids nobody sent");
    assert_eq!(
        n,
        done_ids.len() + dlq_ids.len(),
        "sent = deleted after success + DLQ"
    );
    assert_eq!(
        dlq_seqs, always_fail,
        "the DLQ holds exactly the always-fail messages"
    );
    assert_eq!(in_dlq.len(), always_fail.len(), "each of them once");
    assert!(unclean.is_empty(), "every task exited 0: {unclean:?}");
    assert!(
        unexplained.is_empty(),
        "unexplained duplicates: {unexplained:?}"
    );
    assert_eq!(restarted.len(), restarts);
    assert!(!mem.procs.is_empty(), "the workers' memory was read");
    let over: Vec<(u32, u32, u64)> = mem
        .procs
        .iter()
        .filter(|(_, p)| p.peak_kib > MAX_WORKER_HWM_KIB)
        .map(|(t, p)| (*t, p.pid, p.peak_kib))
        .collect();
    assert!(
        over.is_empty(),
        "worker VmHWM above {MAX_WORKER_HWM_KIB} KiB (task, pid, KiB): {over:?}"
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// Each body carries its number and runs as a simulated job of the soak's kind: always-fail ones
/// fail on every receive, the others succeed by their second receive, all in under 2 s.
#[tokio::test(start_paused = true)]
async fn soak_bodies_carry_their_number_and_run_as_jobs() {
    use queue_worker::{Handler, Job, Outcome, SimulatedJob};
    for seq in [0, 1, 4, 7, 33, 99_999, 999_999] {
        let body = body_of(seq);
        assert_eq!(seq_of(&body), Some(seq), "{body}");
        let job = |receive_count| Job {
            message_id: format!("m{seq}"),
            body: body.clone(),
            receive_count,
            group_id: None,
            attributes: Default::default(),
            message_attributes: Default::default(),
            queue_url: "http://127.0.0.1:1/000000000000/soak".into(),
            queue_name: "soak".into(),
            cancel: Default::default(),
        };
        let started = tokio::time::Instant::now();
        let first = SimulatedJob.handle(job(1)).await;
        assert!(started.elapsed() < SECS(2), "{body}");
        assert!(
            !matches!(first, Outcome::Permanent { .. }),
            "{body} is a job: {first:?}"
        );
        let second = SimulatedJob.handle(job(2)).await;
        let always_fails = matches!(second, Outcome::Retry { .. });
        assert_eq!(always_fails, kind_of(seq) == Kind::AlwaysFail, "{body}");
    }
}

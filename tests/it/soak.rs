//! The soak: many messages through a `local-ecs` fleet of real `queue-worker` processes while
//! tasks are stopped with SIGTERM at random, checked by exact accounting at the end.
//!
//! Skipped by `cargo test`; `scripts/soak.sh [--messages N] [--restarts R]` runs it. Settings
//! come from env vars: `SOAK_MESSAGES` (100000), `SOAK_RESTARTS` (10), `SOAK_TASKS` (3).
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
//! starts a replacement, as the ECS scheduler would.
//!
//! Per-message outcomes come from the tasks' JSON logs: a `done` line (the job succeeded and its
//! delete was queued), `job failed`, `cancelled at the shutdown deadline`, each in a span naming
//! the message id. At the end: the queue is empty; the distinct ids that succeeded and the ids in
//! the DLQ are disjoint and together exactly the ids sent; the DLQ holds exactly the always-fail
//! ones; every task exited 0; and every duplicate (an id that succeeded twice) is explained by a
//! logged delete or visibility failure or a SIGKILLed task, or the soak fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use testkit::local_ecs::{Echo, EventKind};

use crate::drills_process::{drain_all, json_lines, message_id, Outcomes};
use crate::local_ecs::fleet_with;
use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MAX_RECEIVES: u32 = 5;

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
    assert!(n < 1_000_000, "the sequence number must stay below 1 ms");
    let started = Instant::now();
    let c = client();
    let (q, dlq) = queue_with_redrive(&c, MAX_RECEIVES).await;

    // The fleet: local-ecs's test fleet with the soak's own timings.
    let fleet = fleet_with(
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
        let progress = settled_now as f64 / n as f64;
        if restarted.len() < restarts
            && progress >= (restarted.len() + 1) as f64 / (restarts + 1) as f64
        {
            let running: Vec<_> = control
                .status()
                .tasks
                .into_iter()
                .filter(|t| t.stopping.is_none())
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

    // Accounting.
    let mut task_logs: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    for entry in std::fs::read_dir(&logs).expect("log dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(task) = name
            .strip_prefix("task-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse().ok())
        {
            task_logs.insert(task, json_lines(&entry.path()));
        }
    }
    let out = Outcomes::from_logs(task_logs.values());
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
    let mut duplicates = Vec::new();
    let mut unexplained = Vec::new();
    for id in out.duplicates() {
        let done_in: Vec<u32> = task_logs
            .iter()
            .filter(|(_, l)| {
                l.iter()
                    .any(|v| v["message"] == "done" && message_id(v) == Some(&id))
            })
            .map(|(t, _)| *t)
            .collect();
        let mut why: Vec<String> = done_in
            .iter()
            .filter(|t| sigkilled.contains(t))
            .map(|t| format!("task {t} was SIGKILLed"))
            .collect();
        for t in &done_in {
            for v in &task_logs[t] {
                let about = v["message_id"].as_str() == Some(&id) || message_id(v) == Some(&id);
                let general = v["message_id"].is_null() && message_id(v).is_none();
                if trouble(v) && (about || general) {
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
    let report = json!({
        "sent": n,
        "tasks": tasks,
        "restarts": restarted.len(),
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
        "processing_s": (processing_s * 10.0).round() / 10.0,
        "total_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
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

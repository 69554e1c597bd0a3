//! The worker core against fauxqs (and the project's agent double): messages processed once and
//! deleted, visibility extended, failures redelivered with backoff and dead-lettered, protection
//! held exactly while work runs, agent faults survived, shutdown that loses nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use queue_worker::{Handler, Outcome, ProtectMode, Protector};
use testkit::agent_double::{AgentDouble, Reply, ReplyKind, TaskEndpoint};

use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

async fn agent() -> (AgentDouble, TaskEndpoint) {
    agent_task().await
}

fn protector_for(task: &TaskEndpoint, min_hold: Duration) -> Protector {
    agent_protector(task, SECS(60), min_hold)
}

/// Protected intervals reconstructed from the double's call log: an enable protects from its
/// arrival for its minutes (or until the next disable); a refusal changes nothing.
fn protected_from_log(task: &TaskEndpoint, at: SystemTime) -> bool {
    task.is_protected_at(at) || {
        let mut until: Option<SystemTime> = None;
        for c in task
            .calls()
            .iter()
            .filter(|c| c.at <= at && c.reply == ReplyKind::Normal && c.method == "PUT")
        {
            until = match c.request_enabled {
                Some(true) => {
                    Some(c.at + SECS(60 * u64::from(c.expires_in_minutes.unwrap_or(120))))
                }
                _ => None,
            };
        }
        until.is_some_and(|u| u > at)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_processed_once_and_deleted() {
    processed_once_and_deleted(SqsClientKind::Direct).await;
}

/// The same with `--sqs-client sdk`: receives and deletes through the SDK's pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_processed_once_and_deleted_with_the_sdk_client() {
    processed_once_and_deleted(SqsClientKind::Sdk).await;
}

async fn processed_once_and_deleted(client_kind: SqsClientKind) {
    let c = client();
    let q = create_queue(&c, &format!("once-{client_kind:?}"), &[]).await;
    let bodies: Vec<String> = (0..60).map(|i| format!("{}ms", i % 7 * 10)).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let ids = send_bodies(&c, &q, &refs).await;
    let rec = Recorder::new();
    let w = start_with(
        &fauxqs().endpoint,
        fast_config(&q),
        Protector::disabled(),
        rec.clone(),
        client_kind,
    )
    .await;
    assert!(
        wait_until(SECS(30), || async { counts(&c, &q).await == (0, 0) }).await,
        "queue drained"
    );
    let snap = w.stop().await;
    let starts = rec.starts();
    assert_eq!(starts.len(), ids.len());
    assert!(
        ids.iter().all(|id| starts.get(id) == Some(&1)),
        "each message started exactly once: {starts:?}"
    );
    assert_eq!(snap.messages_deleted, 60);
    assert_eq!(snap.jobs_succeeded, 60);
    eprintln!(
        "60 messages: {} receives ({} empty), {} delete requests, {:.2} SQS requests per message",
        snap.receive_requests,
        snap.empty_receives,
        snap.delete_requests,
        snap.sqs_requests() as f64 / 60.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_the_visibility_timeout_runs_once() {
    let c = client();
    let q = create_queue(&c, "long", &[]).await;
    let ids = send_bodies(&c, &q, &["5s"]).await;
    let mut cfg = fast_config(&q);
    cfg.visibility_timeout = SECS(2);
    // Two workers on one queue: if the visibility lapsed, the other would receive the message.
    let rec = Recorder::new();
    let a = start(cfg.clone(), Protector::disabled(), rec.clone()).await;
    let b = start(cfg, Protector::disabled(), rec.clone()).await;
    assert!(wait_until(SECS(20), || async { rec.successes() == 1 }).await);
    assert!(
        wait_until(SECS(5), || async { counts(&c, &q).await == (0, 0) }).await,
        "deleted"
    );
    tokio::time::sleep(SECS(3)).await;
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(rec.starts().get(&ids[0]), Some(&1), "{:?}", rec.seen());
    assert_eq!(rec.seen().len(), 1);
    assert!(
        sa.visibility_extensions + sb.visibility_extensions >= 2,
        "extended while running: {sa:?} {sb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_redelivered_with_backoff_then_dead_lettered_by_redrive() {
    let c = client();
    let (q, dlq) = queue_with_redrive(&c, 3).await;
    let ids = send_bodies(&c, &q, &[r#"{"duration_ms": 10, "fail": true}"#]).await;
    let rec = Recorder::new();
    let w = start(fast_config(&q), Protector::disabled(), rec.clone()).await;
    assert!(
        wait_until(SECS(30), || async { counts(&c, &dlq).await.0 == 1 }).await,
        "moved to the DLQ"
    );
    let snap = w.stop().await;
    let seen = rec.seen();
    assert_eq!(seen.len(), 3, "three attempts: {seen:?}");
    assert_eq!(
        seen.iter().map(|s| s.receive_count).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(seen.iter().all(|s| s.message_id == ids[0]));
    // Backoff ceilings 1 s then 2 s, jittered to at least half.
    for (i, pair) in seen.windows(2).enumerate() {
        let gap = pair[1]
            .started
            .duration_since(pair[0].ended.expect("ended"))
            .expect("ordered");
        let floor = Duration::from_millis(500 << i);
        assert!(
            gap >= floor,
            "retry {i} came back after {gap:?}, before its backoff {floor:?}"
        );
    }
    assert_eq!(snap.messages_deleted, 0, "a failed job is never deleted");
    assert_eq!(counts(&c, &q).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_body_is_not_deleted() {
    let c = client();
    let q = create_queue(&c, "invalid", &[]).await;
    send_bodies(&c, &q, &["hello, not a job"]).await;
    let rec = Recorder::new();
    let w = start(fast_config(&q), Protector::disabled(), rec.clone()).await;
    assert!(
        wait_until(SECS(10), || async {
            !rec.seen().is_empty() && rec.seen()[0].outcome.is_some()
        })
        .await
    );
    let seen = rec.seen();
    assert!(
        matches!(&seen[0].outcome, Some(Outcome::Permanent { reason }) if reason.contains("is not a job")),
        "{seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap = w.stop().await;
    assert_eq!(snap.messages_deleted, 0);
    let (visible, in_flight) = counts(&c, &q).await;
    assert_eq!(
        visible + in_flight,
        1,
        "still on the queue, waiting for its retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_is_held_during_every_job_and_released_when_idle() {
    let c = client();
    let q = create_queue(&c, "protect", &[]).await;
    let (_double, task) = agent().await;
    let probe_task = task.clone();
    let rec = Recorder::with_probe(move || probe_task.is_protected_at(SystemTime::now()));
    let mut cfg = fast_config(&q);
    cfg.protection.idle_window = SECS(1);
    let w = start(cfg, protector_for(&task, Duration::ZERO), rec.clone()).await;
    assert!(
        wait_until(SECS(10), || async {
            !task.protection().enabled && !task.calls().is_empty()
        })
        .await,
        "idle: released"
    );
    // After the release and its 1 s window, polls (1 s each) go on unprotected: no agent calls.
    let n = task.calls().len();
    tokio::time::sleep(SECS(4)).await;
    assert_eq!(
        task.calls().len(),
        n,
        "no protection calls while idle: {:?}",
        task.calls()
    );
    let bodies = ["300ms", "1s", "50ms", "2s", "10ms"];
    send_bodies(&c, &q, &bodies).await;
    assert!(wait_until(SECS(20), || async { rec.successes() == bodies.len() }).await);
    assert!(
        rec.seen().iter().all(|s| s.probe == vec![true, true]),
        "protected at start and end of every job: {:?}",
        rec.seen()
    );
    assert!(
        wait_until(SECS(10), || async { !task.protection().enabled }).await,
        "released once idle"
    );
    let released_at = SystemTime::now();
    let n = task.calls().len();
    tokio::time::sleep(SECS(4)).await;
    assert_eq!(task.calls().len(), n, "no protection calls once idle again");
    let snap = w.stop().await;
    assert_eq!(snap.jobs_succeeded, bodies.len() as u64);
    let calls = task.calls();
    assert!(
        calls.iter().all(|c| c.reply == ReplyKind::Normal),
        "the worker only sends valid requests: {calls:?}"
    );
    let enables = calls
        .iter()
        .filter(|c| c.request_enabled == Some(true))
        .count();
    eprintln!(
        "protection calls: {} ({enables} enables) for {} jobs",
        calls.len(),
        bodies.len()
    );
    assert!(!protected_from_log(&task, released_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_receipt_mode_polls_unprotected_and_protects_before_jobs_start() {
    let c = client();
    let q = create_queue(&c, "onreceipt", &[]).await;
    let (_double, task) = agent().await;
    let probe_task = task.clone();
    let rec = Recorder::with_probe(move || probe_task.is_protected_at(SystemTime::now()));
    let mut cfg = fast_config(&q);
    cfg.protection.mode = ProtectMode::OnReceipt;
    let w = start(cfg, protector_for(&task, Duration::ZERO), rec.clone()).await;
    tokio::time::sleep(SECS(3)).await;
    assert!(
        task.calls().is_empty(),
        "idle polling takes no protection: {:?}",
        task.calls()
    );
    send_bodies(&c, &q, &["500ms", "500ms", "1s"]).await;
    assert!(wait_until(SECS(20), || async { rec.successes() == 3 }).await);
    assert!(
        rec.seen().iter().all(|s| s.probe[0]),
        "protected before each job started"
    );
    assert!(
        wait_until(SECS(10), || async { !task.protection().enabled }).await,
        "released once idle"
    );
    let n = task.calls().len();
    tokio::time::sleep(SECS(3)).await;
    assert_eq!(task.calls().len(), n, "no protection calls while idle");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_faults_neither_hang_nor_crash_and_no_job_starts_unprotected() {
    let c = client();
    let q = create_queue(&c, "faults", &[]).await;
    let (_double, task) = agent().await;
    task.push_replies([
        Reply::FailureInOk {
            reason: "DEPLOYMENT_BLOCKED".into(),
        },
        Reply::PlainText429,
        Reply::gateway_timeout(),
        Reply::Slow {
            delay: SECS(2),
            then: Box::new(Reply::throttled()),
        },
        Reply::server_error(),
    ]);
    let probe_task = task.clone();
    let rec = Recorder::with_probe(move || probe_task.is_protected_at(SystemTime::now()));
    send_bodies(&c, &q, &["100ms", "200ms", "300ms"]).await;
    let w = start(
        fast_config(&q),
        protector_for(&task, Duration::ZERO),
        rec.clone(),
    )
    .await;
    assert!(
        wait_until(SECS(40), || async { rec.successes() == 3 }).await,
        "jobs ran once the agent recovered"
    );
    assert!(
        rec.seen().iter().all(|s| s.probe[0]),
        "no job started unprotected"
    );
    let kinds: Vec<ReplyKind> = task.calls().iter().take(6).map(|c| c.reply).collect();
    assert_eq!(
        kinds[..5],
        [
            ReplyKind::FailureInOk,
            ReplyKind::PlainText429,
            ReplyKind::Error,
            ReplyKind::Error,
            ReplyKind::Error
        ]
    );
    let stopped = tokio::time::Instant::now();
    w.stop().await;
    assert!(stopped.elapsed() < SECS(10), "shutdown bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_agent_never_blocks_shutdown() {
    let c = client();
    let q = create_queue(&c, "hang", &[]).await;
    let (_double, task) = agent().await;
    task.set_default_reply(Reply::Hang);
    let rec = Recorder::new();
    send_bodies(&c, &q, &["10ms"]).await;
    let w = start(
        fast_config(&q),
        protector_for(&task, Duration::ZERO),
        rec.clone(),
    )
    .await;
    tokio::time::sleep(SECS(2)).await;
    assert!(rec.seen().is_empty(), "nothing received without protection");
    let stopped = tokio::time::Instant::now();
    w.stop().await;
    assert!(stopped.elapsed() < SECS(8), "took {:?}", stopped.elapsed());
    assert_eq!(counts(&c, &q).await, (1, 0), "the message is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_runs_jobs_unprotected_after_one_call() {
    let c = client();
    let q = create_queue(&c, "standalone", &[]).await;
    let (_double, task) = agent().await;
    task.set_default_reply(Reply::task_not_valid());
    let rec = Recorder::new();
    send_bodies(&c, &q, &["10ms", "10ms"]).await;
    let w = start(
        fast_config(&q),
        protector_for(&task, Duration::ZERO),
        rec.clone(),
    )
    .await;
    assert!(wait_until(SECS(15), || async { rec.successes() == 2 }).await);
    w.stop().await;
    assert_eq!(task.calls().len(), 1, "TASK_NOT_VALID is asked once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_the_job_and_the_loop_goes_on() {
    let c = client();
    let q = create_queue(&c, "panic", &[]).await;
    send_bodies(&c, &q, &["boom", "10ms"]).await;
    let handler = queue_worker::handler_fn(|job: queue_worker::Job| async move {
        if job.body == "boom" {
            panic!("handler bug");
        }
        Outcome::Success
    });
    let w = start(fast_config(&q), Protector::disabled(), handler).await;
    assert!(
        wait_until(SECS(10), || async {
            w.snapshot().jobs_panicked >= 1 && w.snapshot().messages_deleted == 1
        })
        .await
    );
    let snap = w.stop().await;
    assert_eq!(snap.messages_deleted, 1, "only the good one");
    assert_eq!(
        still_queued(&c, &q).await,
        1,
        "the panicked one stays for a retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_cancels_jobs_and_returns_their_messages_at_once() {
    let c = client();
    let q = create_queue(&c, "deadline", &[]).await;
    send_bodies(&c, &q, &["60s", "100ms"]).await;
    let rec = Recorder::new();
    let mut cfg = fast_config(&q);
    cfg.shutdown_timeout = SECS(1);
    let w = start(cfg, Protector::disabled(), rec.clone()).await;
    assert!(
        wait_until(SECS(10), || async {
            rec.seen().len() == 2 && rec.successes() == 1
        })
        .await
    );
    let stopped = tokio::time::Instant::now();
    let snap = w.stop().await;
    assert!(
        stopped.elapsed() < SECS(3),
        "shutdown timeout + about a second: {:?}",
        stopped.elapsed()
    );
    assert_eq!(snap.jobs_cancelled, 1);
    let got = receive_now(&c, &q).await;
    assert_eq!(got.len(), 1, "the unfinished message is receivable at once");
    assert_eq!(got[0].body.as_deref(), Some("60s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redrive_the_worker_dead_letters_after_max_receives_keeping_body_and_attributes() {
    use aws_sdk_sqs::types::MessageAttributeValue;
    let c = client();
    let q = create_queue(&c, "noredrive", &[]).await;
    let dlq = create_queue(&c, "own-dlq", &[]).await;
    let attr = MessageAttributeValue::builder()
        .data_type("String")
        .string_value("blue")
        .build()
        .expect("attr");
    c.send_message()
        .queue_url(&q)
        .message_body(r#"{"duration_ms":1,"fail":true}"#)
        .message_attributes("colour", attr)
        .send()
        .await
        .expect("send");
    send_bodies(&c, &q, &["not a job at all"]).await;
    let mut cfg = fast_config(&q);
    cfg.dead_letter = Some(queue_worker::DeadLetterConfig {
        queue_url: dlq.clone(),
        max_receives: 2,
    });
    let rec = Recorder::new();
    let w = start(cfg, Protector::disabled(), rec.clone()).await;
    assert!(
        wait_until(SECS(30), || async { counts(&c, &dlq).await.0 == 2 }).await,
        "both dead-lettered"
    );
    assert!(
        wait_until(SECS(5), || async { counts(&c, &q).await == (0, 0) }).await,
        "and deleted from the source"
    );
    let snap = w.stop().await;
    assert_eq!(snap.jobs_dead_lettered, 2);
    let starts = rec.seen();
    assert_eq!(
        starts.iter().filter(|s| s.body.contains("fail")).count(),
        2,
        "retried up to --max-receives"
    );
    assert_eq!(
        starts
            .iter()
            .filter(|s| s.body.contains("not a job"))
            .count(),
        1,
        "a permanent failure goes at once"
    );
    let got = c
        .receive_message()
        .queue_url(&dlq)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .send()
        .await
        .expect("receive dlq")
        .messages
        .unwrap_or_default();
    let failing = got
        .iter()
        .find(|m| m.body().is_some_and(|b| b.contains("fail")))
        .expect("failing one in DLQ");
    let attrs = failing.message_attributes().expect("attributes");
    assert_eq!(
        attrs.get("colour").and_then(|a| a.string_value()),
        Some("blue")
    );
    assert!(attrs
        .get("DeadLetterReason")
        .and_then(|a| a.string_value())
        .is_some_and(|r| r.contains("simulated failure")));
    assert_eq!(
        attrs
            .get("DeadLetterReceiveCount")
            .and_then(|a| a.string_value()),
        Some("2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_health_is_ok_while_polling() {
    let c = client();
    let q = create_queue(&c, "metrics", &[]).await;
    send_bodies(&c, &q, &["10ms", "20ms", r#"{"fail":true}"#]).await;
    let addr = free_addr();
    let mut cfg = fast_config(&q);
    cfg.metrics_addr = Some(addr);
    let w = start(cfg, Protector::disabled(), Recorder::new()).await;
    assert!(
        wait_until(SECS(10), || async {
            w.snapshot().jobs_succeeded == 2 && w.snapshot().jobs_failed == 1
        })
        .await
    );
    assert!(wait_until(SECS(5), || async { w.snapshot().messages_deleted == 2 }).await);
    let http = reqwest::Client::new();
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "queue_worker_jobs_total{outcome=\"succeeded\"} 2",
        "queue_worker_jobs_total{outcome=\"failed\"} 1",
        "queue_worker_messages_total{event=\"deleted\"} 2",
        "queue_worker_protection_held 0",
        "queue_worker_job_duration_seconds_count 3",
        "queue_worker_job_duration_seconds_bucket{le=\"+Inf\"} 3",
        "queue_worker_protection_calls_total{outcome=\"ok\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let health = http
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(crate::support::health(addr).await, Ok("ok".into()));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_unhealthy_when_the_queue_never_answers() {
    // A server that accepts connections and never replies: the loop cannot make progress.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", black_hole.local_addr().expect("addr"));
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = black_hole.accept().await {
            held.push(sock);
        }
    });
    let addr = free_addr();
    let mut cfg = fast_config(&format!("{endpoint}/000000000000/q"));
    cfg.metrics_addr = Some(addr);
    cfg.health_grace = SECS(1);
    let sqs = queue_worker::Sqs::new(aws_sdk_sqs::Client::from_conf(sqs_config(&endpoint)));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(queue_worker::run(
        cfg,
        sqs,
        Protector::disabled(),
        Arc::new(Recorder::new()),
        shutdown.clone(),
    ));
    assert!(
        wait_until(SECS(3), || async { health(addr).await.is_ok() }).await,
        "healthy at first"
    );
    assert!(
        wait_until(SECS(10), || async {
            health(addr).await.is_err_and(|e| e.contains("unhealthy"))
        })
        .await,
        "unhealthy once the loop is stuck past wait + grace"
    );
    shutdown.cancel();
    tokio::time::timeout(SECS(10), task)
        .await
        .expect("stops despite the stuck queue")
        .expect("join")
        .expect("run");
    holder.abort();
}

/// (body, receive count, start, end, succeeded) of one FIFO job.
type FifoRun = (String, u32, std::time::Instant, std::time::Instant, bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_run_in_order_and_in_parallel_even_across_a_retry() {
    use std::sync::Mutex;
    let c = client();
    let q = create_fifo_queue(&c, "fifo").await;
    for seq in 0..4 {
        for g in ["a", "b", "c"] {
            c.send_message()
                .queue_url(&q)
                .message_group_id(g)
                .message_body(format!("{g}-{seq}"))
                .send()
                .await
                .expect("send");
        }
    }
    let log: Arc<Mutex<Vec<FifoRun>>> = Arc::default();
    let rec = log.clone();
    let handler = queue_worker::handler_fn(move |job: queue_worker::Job| {
        let rec = rec.clone();
        async move {
            let start = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(150)).await;
            // b-1 fails on its first delivery: b-2 must still run after it.
            let ok = !(job.body == "b-1" && job.receive_count == 1);
            rec.lock().expect("lock").push((
                job.body.clone(),
                job.receive_count,
                start,
                std::time::Instant::now(),
                ok,
            ));
            if ok {
                Outcome::Success
            } else {
                Outcome::Retry {
                    reason: "first try".into(),
                    delay: Some(SECS(1)),
                }
            }
        }
    });
    let w = start(fast_config(&q), Protector::disabled(), handler).await;
    assert!(
        wait_until(SECS(40), || async { w.snapshot().messages_deleted == 12 }).await,
        "all 12 done: {:?}",
        w.snapshot()
    );
    w.stop().await;
    let log = log.lock().expect("lock").clone();
    for g in ["a", "b", "c"] {
        let done: Vec<&str> = log
            .iter()
            .filter(|e| e.0.starts_with(g) && e.4)
            .map(|e| e.0.as_str())
            .collect();
        let want: Vec<String> = (0..4).map(|i| format!("{g}-{i}")).collect();
        assert_eq!(done, want, "group {g} in order, each once");
    }
    let b1_ok = log
        .iter()
        .find(|e| e.0 == "b-1" && e.4)
        .expect("b-1 succeeded")
        .3;
    let b2_start = log.iter().find(|e| e.0 == "b-2").expect("b-2 ran").2;
    assert!(b2_start >= b1_ok, "b-2 started only after b-1 succeeded");
    let overlapped = log.iter().any(|x| {
        log.iter()
            .any(|y| x.0[..1] != y.0[..1] && x.2 < y.3 && y.2 < x.3)
    });
    assert!(overlapped, "different groups ran in parallel");
}

/// Calls fauxqs's SNS (Query protocol) and returns the XML answer.
async fn sns(params: &[(&str, &str)]) -> String {
    let mut form: Vec<(&str, &str)> = vec![("Version", "2010-03-31")];
    form.extend_from_slice(params);
    let resp = reqwest::Client::new()
        .post(format!("{}/", fauxqs().endpoint))
        .form(&form)
        .send()
        .await
        .expect("sns call");
    assert!(
        resp.status().is_success(),
        "SNS {params:?}: {}",
        resp.status()
    );
    resp.text().await.expect("sns body")
}

fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .map(|i| i + open.len())
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"));
    let end = xml[start..]
        .find(&format!("</{tag}>"))
        .expect("closing tag")
        + start;
    xml[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_notifications_from_a_real_topic_subscription_are_unwrapped() {
    let c = client();
    let q = create_queue(&c, "sns", &[]).await;
    let topic = xml_field(
        &sns(&[("Action", "CreateTopic"), ("Name", &unique("topic"))]).await,
        "TopicArn",
    );
    let arn = queue_arn(&c, &q).await;
    sns(&[
        ("Action", "Subscribe"),
        ("TopicArn", &topic),
        ("Protocol", "sqs"),
        ("Endpoint", &arn),
    ])
    .await;
    sns(&[
        ("Action", "Publish"),
        ("TopicArn", &topic),
        ("Message", r#"{"duration":"50ms"}"#),
        ("MessageAttributes.entry.1.Name", "colour"),
        ("MessageAttributes.entry.1.Value.DataType", "String"),
        ("MessageAttributes.entry.1.Value.StringValue", "blue"),
    ])
    .await;
    let seen: Arc<std::sync::Mutex<Vec<queue_worker::Job>>> = Arc::default();
    let rec = seen.clone();
    let handler = queue_worker::handler_fn(move |job: queue_worker::Job| {
        rec.lock().expect("lock").push(job.clone());
        queue_worker::SimulatedJob.handle(job)
    });
    let w = start(fast_config(&q), Protector::disabled(), handler).await;
    assert!(
        wait_until(SECS(10), || async { w.snapshot().messages_deleted == 1 }).await,
        "{:?}",
        w.snapshot()
    );
    w.stop().await;
    let jobs = seen.lock().expect("lock").clone();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].body, r#"{"duration":"50ms"}"#,
        "the published message, not the envelope"
    );
    assert_eq!(
        jobs[0].message_attributes.get("colour").map(String::as_str),
        Some("blue"),
        "SNS attributes reach the handler"
    );
}

/// While protection is still held after an empty receive (the minimum hold), the worker keeps
/// receiving under it: a message that arrives then is picked up at once, protected, with no
/// release and no second grant in between (it used to wait out the hold and the idle window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arriving_during_the_minimum_hold_is_picked_up_under_the_same_grant() {
    let c = client();
    let q = create_queue(&c, "min-hold", &[]).await;
    let (_double, task) = agent().await;
    let probe_task = task.clone();
    let rec = Recorder::with_probe(move || probe_task.is_protected_at(SystemTime::now()));
    let mut cfg = fast_config(&q);
    cfg.protection.idle_window = SECS(1);
    let w = start(cfg, protector_for(&task, SECS(20)), rec.clone()).await;
    assert!(
        wait_until(SECS(10), || async { task.protection().enabled }).await,
        "protected for its first receive"
    );
    // Its first receives come back empty; the 20 s minimum hold keeps the grant.
    tokio::time::sleep(SECS(3)).await;
    let sent = SystemTime::now();
    send_bodies(&c, &q, &["10ms"]).await;
    assert!(
        wait_until(SECS(15), || async { rec.successes() == 1 }).await,
        "the job ran"
    );
    let seen = rec.seen();
    let waited = seen[0].started.duration_since(sent).unwrap_or_default();
    let puts: Vec<Option<bool>> = task
        .calls()
        .iter()
        .filter(|c| c.method == "PUT" && c.at <= seen[0].started)
        .map(|c| c.request_enabled)
        .collect();
    w.stop().await;
    assert!(seen[0].probe[0], "protected when it started");
    assert_eq!(
        puts,
        vec![Some(true)],
        "one grant, no release before the job: it was received during the hold"
    );
    assert!(
        waited < SECS(10),
        "picked up in {waited:?}, not after the 20 s hold"
    );
}

//! `--prefetch`: messages received ahead of free job slots. Jobs never exceed the concurrency,
//! every message runs once, and a prefetched message that has not started goes back to the queue
//! at once on shutdown, and is never started.

use std::collections::HashMap;
use std::time::Duration;

use queue_worker::Protector;

use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_messages_run_once_and_never_beyond_the_concurrency() {
    let c = client();
    let q = create_queue(&c, "prefetch-once", &[]).await;
    let bodies: Vec<String> = (0..40).map(|i| format!("{}ms", 50 + i % 5 * 20)).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let ids = send_bodies(&c, &q, &refs).await;
    let rec = Recorder::new();
    let mut cfg = fast_config(&q);
    cfg.concurrency = 4;
    cfg.prefetch = 6;
    let w = start(cfg, Protector::disabled(), rec.clone()).await;
    // While jobs run, more messages than job slots are held (received, job not ended): the
    // prefetched ones. (SQS's in-flight count would also hold messages whose delete is on its
    // way.)
    let most_held = std::sync::atomic::AtomicU64::new(0);
    let drained = wait_until(SECS(30), || async {
        let s = w.snapshot();
        let held = s.messages_received - s.jobs_succeeded - s.messages_returned;
        most_held.fetch_max(held, std::sync::atomic::Ordering::Relaxed);
        counts(&c, &q).await == (0, 0)
    })
    .await;
    assert!(drained, "queue drained");
    let most_held = most_held.into_inner();
    let snap = w.stop().await;
    let starts: HashMap<String, usize> = rec.starts();
    assert!(
        ids.iter().all(|id| starts.get(id) == Some(&1)),
        "each message started exactly once: {starts:?}"
    );
    assert_eq!(snap.messages_deleted, 40);
    let peak = peak_overlap(&rec.seen());
    assert!(peak <= 4, "at most 4 jobs at once, saw {peak}");
    assert!(
        most_held > 4 && most_held <= 10,
        "held beyond the 4 slots, within 4 + 6: {most_held}"
    );
}

/// A queue of four `job` messages and a config of one job slot and three prefetched messages.
async fn one_slot_three_prefetched(
    name: &str,
    job: &str,
) -> (aws_sdk_sqs::Client, String, queue_worker::Config) {
    let c = client();
    let q = create_queue(&c, name, &[]).await;
    send_bodies(&c, &q, &[job; 4]).await;
    let mut cfg = fast_config(&q);
    cfg.concurrency = 1;
    cfg.prefetch = 3;
    // Long enough that a message left in flight would still be invisible when checked.
    cfg.visibility_timeout = SECS(60);
    (c, q, cfg)
}

/// Waits until one job runs and the other three messages are held, prefetched.
async fn one_running_three_waiting(c: &aws_sdk_sqs::Client, q: &str, rec: &Recorder) {
    assert!(
        wait_until(SECS(10), || async {
            rec.seen().len() == 1 && counts(c, q).await == (0, 4)
        })
        .await,
        "one job running, three prefetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_prefetched_messages_go_back_at_once_unstarted() {
    let (c, q, cfg) = one_slot_three_prefetched("prefetch-shutdown", "2s").await;
    let rec = Recorder::new();
    let w = start(cfg, Protector::disabled(), rec.clone()).await;
    one_running_three_waiting(&c, &q, &rec).await;
    let snap = w.stop().await;
    assert_eq!(snap.jobs_started, 1, "the prefetched ones never started");
    assert_eq!(snap.messages_deleted, 1, "the running job finished");
    assert_eq!(
        counts(&c, &q).await,
        (3, 0),
        "the three prefetched messages are visible again at once"
    );
    assert_eq!(rec.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yield_hands_prefetched_messages_back_and_lets_the_running_job_finish() {
    let (c, q, cfg) = one_slot_three_prefetched("prefetch-yield", "3s").await;
    let rec = Recorder::new();
    let sqs = queue_worker::Sqs::connect(
        &sdk_config(&fauxqs().endpoint),
        queue_worker::SqsClientKind::Direct,
    )
    .await
    .expect("SQS client");
    let stats = sqs.stats();
    let lever = queue_worker::Lever::new();
    let options = queue_worker::RunOptions {
        lever: lever.clone(),
        ecs: None,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (handler, stop) = (std::sync::Arc::new(rec.clone()), shutdown.clone());
    let task = tokio::spawn(async move {
        queue_worker::run_with(cfg, sqs, Protector::disabled(), handler, stop, options).await
    });
    one_running_three_waiting(&c, &q, &rec).await;
    lever.drain();
    assert!(
        wait_until(SECS(5), || async { counts(&c, &q).await == (3, 1) }).await,
        "the three prefetched messages are visible again while the job runs"
    );
    assert!(
        wait_until(SECS(5), || async { counts(&c, &q).await == (3, 0) }).await,
        "the running job finished and was deleted"
    );
    assert_eq!(
        stats.snapshot().jobs_started,
        1,
        "nothing started while yielding"
    );
    lever.resume();
    assert!(
        wait_until(SECS(20), || async { counts(&c, &q).await == (0, 0) }).await,
        "after resuming, the rest is processed"
    );
    shutdown.cancel();
    let snap = tokio::time::timeout(SECS(30), task)
        .await
        .expect("worker stops")
        .expect("worker task")
        .expect("worker result");
    assert_eq!(snap.jobs_started, 4);
    assert_eq!(snap.messages_deleted, 4);
}

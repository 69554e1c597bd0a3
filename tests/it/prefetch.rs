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
    // While jobs run, more messages than job slots are held: the prefetched ones.
    let most_held = std::sync::atomic::AtomicU64::new(0);
    let drained = wait_until(SECS(30), || async {
        let (visible, in_flight) = counts(&c, &q).await;
        most_held.fetch_max(in_flight, std::sync::atomic::Ordering::Relaxed);
        (visible, in_flight) == (0, 0)
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
    let seen = rec.seen();
    assert!(
        peak_overlap(&seen) <= 4,
        "at most 4 jobs at once, saw {}",
        peak_overlap(&seen)
    );
    assert!(
        most_held > 4 && most_held <= 10,
        "held beyond the 4 slots, within 4 + 6: {most_held}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_prefetched_messages_go_back_at_once_unstarted() {
    let c = client();
    let q = create_queue(&c, "prefetch-shutdown", &[]).await;
    send_bodies(&c, &q, &["2s", "2s", "2s", "2s"]).await;
    let rec = Recorder::new();
    let mut cfg = fast_config(&q);
    cfg.concurrency = 1;
    cfg.prefetch = 3;
    // Long enough that a message left in flight would still be invisible when checked.
    cfg.visibility_timeout = SECS(60);
    let w = start(cfg, Protector::disabled(), rec.clone()).await;
    assert!(
        wait_until(SECS(10), || async {
            rec.seen().len() == 1 && counts(&c, &q).await == (0, 4)
        })
        .await,
        "one job running, three prefetched"
    );
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

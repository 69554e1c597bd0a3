//! Several queues in one worker: one concurrency budget shared fairly, one protection for the
//! task, released only when every queue is idle.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use queue_worker::Protector;

use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_queues_share_one_budget_fairly_and_each_message_runs_once() {
    let c = client();
    let qa = create_queue(&c, "share-a", &[]).await;
    let qb = create_queue(&c, "share-b", &[]).await;
    let bodies = vec!["300ms"; 12];
    let ids_a: HashSet<String> = send_bodies(&c, &qa, &bodies).await.into_iter().collect();
    let ids_b: HashSet<String> = send_bodies(&c, &qb, &bodies).await.into_iter().collect();
    let rec = Recorder::new();
    let mut cfg = fast_config(&qa);
    cfg.extra_queue_urls = vec![qb.clone()];
    cfg.concurrency = 4;
    let w = start(cfg, Protector::disabled(), rec.clone()).await;
    assert!(wait_until(SECS(30), || async { rec.successes() == 24 }).await);
    assert!(
        wait_until(SECS(10), || async {
            counts(&c, &qa).await == (0, 0) && counts(&c, &qb).await == (0, 0)
        })
        .await,
        "both queues drained (deleted)"
    );
    let snap = w.stop().await;
    let seen = rec.seen();
    assert!(
        rec.starts().values().all(|n| *n == 1),
        "each message once: {:?}",
        rec.starts()
    );
    let peak = peak_overlap(&seen);
    assert!(
        peak <= 4,
        "one budget of 4 for both queues, saw {peak} at once"
    );
    // Fair: while both queues had a backlog, both ran. Among the first 8 jobs (two rounds of
    // the budget) each queue has at least 2.
    let mut by_start = seen.clone();
    by_start.sort_by_key(|s| s.started);
    let first: Vec<&Seen> = by_start.iter().take(8).collect();
    let from_a = first
        .iter()
        .filter(|s| ids_a.contains(&s.message_id))
        .count();
    let from_b = first
        .iter()
        .filter(|s| ids_b.contains(&s.message_id))
        .count();
    eprintln!("first 8 jobs: {from_a} from A, {from_b} from B; peak {peak}; {snap:?}");
    assert!(
        from_a >= 2 && from_b >= 2,
        "unfair split: {from_a} A / {from_b} B"
    );
    assert_eq!(snap.messages_deleted, 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_idle_queues_protection_is_released_and_work_on_either_is_protected() {
    let c = client();
    let qa = create_queue(&c, "prot-a", &[]).await;
    let qb = create_queue(&c, "prot-b", &[]).await;
    let (_double, task) = agent_task().await;
    let protector = agent_protector(&task, SECS(60), Duration::ZERO);
    let probe_task = task.clone();
    let rec = Recorder::with_probe(move || probe_task.is_protected_at(SystemTime::now()));
    let mut cfg = fast_config(&qa);
    cfg.extra_queue_urls = vec![qb.clone()];
    cfg.protection.idle_window = SECS(2);
    let w = start(cfg, protector, rec.clone()).await;
    // Pollers that went idle at different moments would take turns holding protection for ever;
    // released means they went idle together.
    assert!(
        wait_until(SECS(15), || async {
            !task.protection().enabled && !task.calls().is_empty()
        })
        .await,
        "both queues idle: protection released"
    );
    send_bodies(&c, &qb, &["500ms"]).await;
    send_bodies(&c, &qa, &["200ms"]).await;
    assert!(wait_until(SECS(20), || async { rec.successes() == 2 }).await);
    assert!(
        rec.seen().iter().all(|s| s.probe == vec![true, true]),
        "protected at start and end of every job: {:?}",
        rec.seen()
    );
    assert!(
        wait_until(SECS(15), || async { !task.protection().enabled }).await,
        "released again once both queues are idle"
    );
    w.stop().await;
}

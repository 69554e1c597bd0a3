//! Message group ids: on a *standard* queue (SQS fair queues) a `MessageGroupId` marks a tenant
//! and brings no ordering, so its messages run in parallel; only a FIFO queue runs a group in
//! order. The group id reaches the handler either way.
//!
//! fauxqs 2.4.1 (the newest release) accepts a `MessageGroupId` on a standard queue but does not
//! return it on receive, so these tests run on moto, which does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_worker::{handler_fn, Job, Outcome, Protector};

use crate::ecs::Moto;
use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const JOB: Duration = Duration::from_millis(400);

/// (group id, body, start, end) of each job.
type Runs = Arc<Mutex<Vec<(Option<String>, String, Instant, Instant)>>>;

/// Sends 4 messages of one group (m0..m3) and runs them (each a 400 ms job) at concurrency 4;
/// returns the jobs, in the order they started.
async fn run_four(
    moto: &Moto,
    c: &aws_sdk_sqs::Client,
    q: &str,
) -> Vec<(Option<String>, String, Instant, Instant)> {
    for i in 0..4 {
        c.send_message()
            .queue_url(q)
            .message_body(format!("m{i}"))
            .message_group_id("tenant-7")
            .send()
            .await
            .expect("send with a group id");
    }
    let runs: Runs = Arc::default();
    let seen = runs.clone();
    let handler = handler_fn(move |job: Job| {
        let seen = seen.clone();
        async move {
            let start = Instant::now();
            tokio::time::sleep(JOB).await;
            let run = (
                job.group_id.clone(),
                job.body.clone(),
                start,
                Instant::now(),
            );
            seen.lock().expect("lock").push(run);
            Outcome::Success
        }
    });
    let mut cfg = fast_config(q);
    cfg.concurrency = 4;
    let w = start_through(&moto.endpoint, cfg, Protector::disabled(), handler).await;
    assert!(
        wait_until(SECS(20), || async { w.snapshot().messages_deleted >= 4 }).await,
        "4 jobs done and deleted"
    );
    w.stop().await;
    let mut runs = runs.lock().expect("lock").clone();
    runs.sort_by_key(|r| r.2);
    runs
}

fn moto_sqs(moto: &Moto) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(sqs_config(&moto.endpoint))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_queues_group_runs_in_parallel() {
    let moto = Moto::start();
    let c = moto_sqs(&moto);
    let q = create_queue(&c, "fair", &[]).await;
    let runs = run_four(&moto, &c, &q).await;
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(
        runs.iter().all(|r| r.0.as_deref() == Some("tenant-7")),
        "the handler sees the group id: {runs:?}"
    );
    let last_start = runs.iter().map(|r| r.2).max().expect("runs");
    let first_end = runs.iter().map(|r| r.3).min().expect("runs");
    assert!(
        last_start < first_end,
        "one tenant's jobs overlap in time on a standard queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_queues_group_runs_in_order_one_at_a_time() {
    let moto = Moto::start();
    let c = moto_sqs(&moto);
    let q = create_fifo_queue(&c, "fifo-group").await;
    let runs = run_four(&moto, &c, &q).await;
    assert_eq!(runs.len(), 4, "{runs:?}");
    let bodies: Vec<&str> = runs.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3"], "in order");
    for pair in runs.windows(2) {
        assert!(pair[1].2 >= pair[0].3, "no overlap within a FIFO group");
    }
    assert!(runs.iter().all(|r| r.0.as_deref() == Some("tenant-7")));
}

//! Far from SQS (25 ms each way through the delay proxy): receives in flight grow with the free
//! slots, at most one per 10, never asking for more messages than there are slots; the queue's
//! long poll alone polls once it runs dry; deletes stay batched. How fast it goes is the
//! benchmark's business (`scripts/bench.sh`), not this test's.

use std::time::Duration;

use queue_worker::Protector;
use testkit::delay_proxy::DelayProxy;
use testkit::fault_proxy::{FaultConfig, FaultProxy, Shares};

use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_in_flight_follow_the_free_slots_far_from_sqs() {
    let c = client();
    let q = create_queue(&c, "latency", &[]).await;
    let n = 600;
    send_bodies(&c, &q, &vec!["0"; n]).await;
    let upstream = fauxqs()
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("fauxqs address");
    let delay = DelayProxy::start(
        "127.0.0.1:0".parse().expect("addr"),
        upstream,
        Duration::from_millis(25),
    )
    .await
    .expect("delay proxy");
    let counting = FaultProxy::start(
        &format!("http://{}", delay.local_addr()),
        FaultConfig::new(1, Shares::NONE),
    )
    .await
    .expect("counting proxy");
    let concurrency = 40;
    let mut cfg = fast_config(&q);
    cfg.concurrency = concurrency;
    let rec = Recorder::new();
    let w = start_through(
        &counting.endpoint(),
        cfg,
        Protector::disabled(),
        rec.clone(),
    )
    .await;
    assert!(
        wait_until(SECS(60), || async {
            w.snapshot().messages_deleted == n as u64
        })
        .await,
        "every message processed and deleted: {:?}",
        w.snapshot()
    );
    let busy = counting.counts();
    let receives_at_once = busy
        .max_in_flight
        .get("ReceiveMessage")
        .copied()
        .unwrap_or(0);
    // Once the queue is dry, only the queue's long poll (1 s here) goes on.
    let before = busy.requests.get("ReceiveMessage").copied().unwrap_or(0);
    tokio::time::sleep(SECS(4)).await;
    let idle = counting.counts();
    let idle_receives = idle.requests.get("ReceiveMessage").copied().unwrap_or(0) - before;
    let snap = w.stop().await;
    counting.shutdown().await;
    let per_delete = snap.messages_deleted as f64 / snap.delete_requests.max(1) as f64;
    report_drill(
        "latency-receives",
        &serde_json::json!({
            "rtt_ms": 50,
            "concurrency": concurrency,
            "messages": n,
            "most_receives_in_flight": receives_at_once,
            "receive_lanes": concurrency.div_ceil(10),
            "most_messages_asked_in_flight": busy.max_messages_asked_in_flight,
            "messages_per_delete_request": (per_delete * 10.0).round() / 10.0,
            "receives_in_4s_idle": idle_receives,
            "sqs_requests_per_message": (snap.sqs_requests() as f64 / n as f64 * 1000.0).round() / 1000.0,
        }),
    );
    assert!(
        receives_at_once >= 2,
        "more than one receive in flight while messages flow: {receives_at_once}"
    );
    assert!(
        receives_at_once <= concurrency.div_ceil(10) as u64,
        "at most one receive per 10 slots: {receives_at_once}"
    );
    assert!(
        busy.max_messages_asked_in_flight <= concurrency as u64,
        "never more messages asked for than slots: {}",
        busy.max_messages_asked_in_flight
    );
    assert!(
        per_delete >= 5.0,
        "deletes batched: {per_delete:.1} per request"
    );
    assert!(
        idle_receives <= 5,
        "once dry, one long poll at a time: {idle_receives} receives in 4 s"
    );
    assert!(
        rec.starts().values().all(|k| *k == 1),
        "each message ran once"
    );
}

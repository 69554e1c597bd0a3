//! Drills: SQS faults (through the fault-injecting proxy) and agent faults.
//!
//! - `drill_sqs_faults`: a few hundred messages through a worker whose SQS endpoint is
//!   [`FaultProxy`], with about a quarter of its requests faulted (500, 503, throttling, slow,
//!   dropped, lost replies, partial batch failures). The proxy's ledger of accepted deletes proves
//!   that only messages whose job succeeded were ever deleted; the queues prove nothing was lost.
//! - `drill_agent_faults`: random agent faults, then the agent unreachable for a few seconds, then
//!   a permanent refusal: no job starts unprotected while protection is available, every message
//!   is processed and deleted, and the worker stops asking after the refusal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use queue_worker::{Outcome, ProtectionStatus as Status, Protector};
use serde_json::json;
use testkit::agent_double::{Reply, ReplyKind};
use testkit::fault_proxy::{FaultConfig, FaultKind, FaultProxy, Shares};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Receives before the redrive policy moves a message to the DLQ. Flaky messages need at most 3;
/// the rest is margin for receives whose answer the proxy loses (they count as receives too).
const MAX_RECEIVES: u32 = 6;

/// Receives (straight from fauxqs, hidden for a minute) until `n` messages are in hand:
/// (message id, receipt handle) pairs.
async fn receive_all(c: &aws_sdk_sqs::Client, url: &str, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + SECS(20);
    while got.len() < n && tokio::time::Instant::now() < end {
        let out = c
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for m in out.messages.unwrap_or_default() {
            got.push((
                m.message_id.unwrap_or_default(),
                m.receipt_handle.unwrap_or_default(),
            ));
        }
    }
    assert_eq!(got.len(), n, "received {} of {n} messages", got.len());
    got
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Succeed,
    /// Succeeds after 3 s: its visibility (4 s) is extended while it runs, through the faults.
    Long,
    /// Fails while the receive count is at most this, then succeeds.
    Flaky(u32),
    AlwaysFail,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_sqs_faults() {
    let c = client();
    let (q, dlq) = queue_with_redrive(&c, MAX_RECEIVES).await;

    // 300 messages: 20 always fail, 40 fail once or twice then succeed, 10 run for 3 s, the rest
    // succeed at once.
    let plans: Vec<Plan> = (0..300)
        .map(|i| match i {
            i if i % 15 == 0 => Plan::AlwaysFail,
            i if i % 6 == 0 => Plan::Flaky(1 + (i / 6) % 2),
            i if i % 25 == 1 => Plan::Long,
            _ => Plan::Succeed,
        })
        .collect();
    let bodies: Vec<String> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| match p {
            Plan::Succeed => format!(r#"{{"duration_ms":{}}}"#, i % 20),
            Plan::Long => r#"{"duration_ms":3000}"#.to_string(),
            Plan::Flaky(n) => format!(r#"{{"duration_ms":5,"fail_times":{n}}}"#),
            Plan::AlwaysFail => r#"{"duration_ms":5,"fail":true}"#.to_string(),
        })
        .collect();
    let ids = send_bodies(&c, &q, &bodies).await;
    let plan_of: HashMap<String, Plan> = ids.iter().cloned().zip(plans.iter().copied()).collect();
    let ids_where = |f: fn(&Plan) -> bool| -> HashSet<String> {
        plan_of
            .iter()
            .filter(|(_, p)| f(p))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let always_fail = ids_where(|p| *p == Plan::AlwaysFail);
    let must_succeed = ids_where(|p| *p != Plan::AlwaysFail);

    // About a quarter of the worker's requests faulted (a third of its batch requests).
    let shares = Shares {
        server_error: 0.04,
        unavailable: 0.04,
        throttled: 0.05,
        slow: 0.04,
        dropped_request: 0.03,
        lost_reply: 0.02,
        partial_batch: 0.10,
    };
    let mut fault_config = FaultConfig::new(0x5eed_f00d, shares);
    fault_config.slow_delay = Duration::from_millis(400);
    let proxy = FaultProxy::start(&fauxqs().endpoint, fault_config)
        .await
        .expect("fault proxy");

    let mut cfg = fast_config(&q);
    // Short enough that a message whose receive answer was lost comes back soon.
    cfg.visibility_timeout = SECS(4);
    // Every retry delay rounds up to 1 s (SQS counts whole seconds).
    cfg.retry = queue_worker::Backoff::new(Duration::from_millis(500), SECS(1));
    let rec = Recorder::new();
    let w = start_through(&proxy.endpoint(), cfg, Protector::disabled(), rec.clone()).await;

    let settled = wait_until(SECS(120), || async {
        let succeeded: HashSet<String> = rec
            .seen()
            .into_iter()
            .filter(|s| s.outcome == Some(Outcome::Success))
            .map(|s| s.message_id)
            .collect();
        must_succeed.is_subset(&succeeded)
            && counts(&c, &dlq).await.0 == always_fail.len() as u64
            && counts(&c, &q).await == (0, 0)
    })
    .await;
    if w.task.is_finished() {
        panic!("the worker stopped by itself: {:?}", w.task.await);
    }
    let snap_before_stop = w.snapshot();
    assert!(
        settled,
        "not settled: queue {:?}, dlq {:?}, {} of {} succeeded; worker {snap_before_stop:?}; proxy {:?}",
        counts(&c, &q).await,
        counts(&c, &dlq).await,
        rec.successes(),
        must_succeed.len(),
        proxy.counts()
    );
    // The worker never crashed: it stops cleanly and returns its counters.
    let snap = w.stop().await;
    let faults = proxy.counts();
    let deletes = proxy.accepted_deletes();
    proxy.shutdown().await;

    assert_eq!(snap.jobs_panicked, 0);
    assert_eq!(counts(&c, &q).await, (0, 0), "queue drained");

    // Every always-failing message is in the DLQ, and nothing else is.
    let in_dlq: HashSet<String> = receive_all(&c, &dlq, always_fail.len())
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(in_dlq, always_fail, "exactly the always-failing messages");

    // The ledger: every delete the server accepted belongs to a delivery whose job succeeded.
    let seen = rec.seen();
    let outcome_of: HashMap<(String, u32), Vec<Option<Outcome>>> =
        seen.iter().fold(HashMap::new(), |mut m, s| {
            m.entry((s.message_id.clone(), s.receive_count))
                .or_default()
                .push(s.outcome.clone());
            m
        });
    let mut deletes_per_message: HashMap<String, usize> = HashMap::new();
    for d in &deletes {
        let (Some(id), Some(count)) = (&d.message_id, d.receive_count) else {
            panic!("a delete of a receipt handle no receive handed out (through the proxy): {d:?}");
        };
        assert!(
            !always_fail.contains(id),
            "an always-failing message was deleted: {d:?}"
        );
        let outcomes = outcome_of.get(&(id.clone(), count));
        assert!(
            outcomes.is_some_and(|o| o.iter().all(|x| *x == Some(Outcome::Success))),
            "delete of {id} (receive {count}) whose job did not succeed: {outcomes:?}"
        );
        *deletes_per_message.entry(id.clone()).or_insert(0) += 1;
    }
    // Every message that had to succeed did, and its successful delivery was deleted.
    for id in &must_succeed {
        assert!(
            deletes_per_message.contains_key(id),
            "{id} ({:?}) was never deleted",
            plan_of[id]
        );
    }
    // A failed job never succeeded by accident, and flaky ones failed exactly while told to.
    for s in &seen {
        let expect_success = match plan_of[&s.message_id] {
            Plan::Succeed | Plan::Long => true,
            Plan::Flaky(n) => s.receive_count > n,
            Plan::AlwaysFail => false,
        };
        assert_eq!(
            s.outcome == Some(Outcome::Success),
            expect_success,
            "{s:?} ({:?})",
            plan_of[&s.message_id]
        );
    }

    // Duplicates: a success processed again. It happens when a delete (or its answer) is lost
    // long enough for the 4 s visibility to lapse; counted, not forbidden (standard queues
    // deliver at least once, handlers must tolerate it).
    let mut successes: HashMap<&str, usize> = HashMap::new();
    for s in seen.iter().filter(|s| s.outcome == Some(Outcome::Success)) {
        *successes.entry(s.message_id.as_str()).or_insert(0) += 1;
    }
    let duplicate_successes: usize = successes.values().map(|n| n - 1).sum();
    let deleted_twice = deletes_per_message.values().filter(|n| **n > 1).count();
    let dlq_runs: usize = seen
        .iter()
        .filter(|s| always_fail.contains(&s.message_id))
        .count();

    // The drill exercised what it claims to: every kind of fault fired, about a quarter overall.
    for kind in FaultKind::ALL {
        assert!(
            faults.faults_of(kind) > 0,
            "{} never injected: {faults:?}",
            kind.as_str()
        );
    }
    let share = faults.total_faults() as f64 / faults.total_requests() as f64;
    assert!(
        share > 0.1,
        "only {share:.2} of requests faulted: {faults:?}"
    );

    report_drill(
        "sqs-faults",
        &json!({
            "sent": ids.len(),
            "succeeded": successes.len(),
            "dead_lettered": in_dlq.len(),
            "always_fail_job_runs": dlq_runs,
            "flaky": plans.iter().filter(|p| matches!(p, Plan::Flaky(_))).count(),
            "long_jobs": plans.iter().filter(|p| **p == Plan::Long).count(),
            "duplicate_successes": duplicate_successes,
            "messages_deleted_twice": deleted_twice,
            "deletes_accepted": deletes.len(),
            "jobs_started": seen.len(),
            "requests_through_proxy": faults.total_requests(),
            "faulted_share": (share * 100.0).round() / 100.0,
            "faults": faults.faults,
            "faults_by_operation": faults.faults_by_operation,
            "failed_batch_entries": faults.failed_entries,
            "proxy_requests": faults.requests,
            "proxy_connections": faults.connections,
            "worker": snap,
        }),
    );
}

/// The proxy's partial failures are faithful against the real emulator: entries reported failed
/// by `DeleteMessageBatch` stay on the queue, and a failed `ChangeMessageVisibilityBatch` entry
/// keeps its old visibility.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_failures_through_the_proxy_are_not_applied() {
    let c = client();
    let q = create_queue(&c, "partial", &[]).await;
    let bodies: Vec<String> = (0..10).map(|i| format!("{i}ms")).collect();
    send_bodies(&c, &q, &bodies).await;
    let got = receive_all(&c, &q, 10).await;
    let proxy = FaultProxy::start(
        &fauxqs().endpoint,
        FaultConfig::new(99, Shares::only(FaultKind::PartialBatch)),
    )
    .await
    .expect("proxy");
    let via = aws_sdk_sqs::Client::from_conf(sqs_config(&proxy.endpoint()));

    let mut req = via.delete_message_batch().queue_url(&q);
    for (i, (_, receipt)) in got.iter().enumerate() {
        req = req.entries(
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .build()
                .expect("entry"),
        );
    }
    let out = req.send().await.expect("delete batch answers 200");
    assert!(!out.failed.is_empty(), "some entries fail");
    assert_eq!(out.successful.len() + out.failed.len(), 10);
    assert!(out
        .failed
        .iter()
        .all(|f| !f.sender_fault && f.code == "InternalError"));
    let failed: Vec<usize> = out
        .failed
        .iter()
        .map(|f| f.id.parse().expect("id"))
        .collect();
    assert_eq!(
        counts(&c, &q).await,
        (0, failed.len() as u64),
        "the failed entries are still there, in flight"
    );
    let deleted: HashSet<String> = proxy
        .accepted_deletes()
        .into_iter()
        .map(|d| d.receipt_handle)
        .collect();
    let expected: HashSet<String> = out
        .successful
        .iter()
        .map(|s| got[s.id.parse::<usize>().expect("id")].1.clone())
        .collect();
    assert_eq!(
        deleted, expected,
        "the ledger holds exactly the applied deletes"
    );

    // Make the survivors visible again through the proxy: only the entries reported successful
    // change.
    let mut req = via.change_message_visibility_batch().queue_url(&q);
    for i in &failed {
        req = req.entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&got[*i].1)
                .visibility_timeout(0)
                .build()
                .expect("entry"),
        );
    }
    let out = req.send().await.expect("visibility batch answers 200");
    assert!(!out.failed.is_empty());
    assert_eq!(
        counts(&c, &q).await,
        (out.successful.len() as u64, out.failed.len() as u64),
        "only the successful entries became visible"
    );
    let counts = proxy.counts();
    assert_eq!(counts.faults_of(FaultKind::PartialBatch), 2);
    assert_eq!(
        counts.failed_entries.values().sum::<u64>(),
        (failed.len() + out.failed.len()) as u64
    );
    proxy.shutdown().await;
}

// ---- agent faults

/// A TCP relay to the agent double that can be taken down (connections refused, open ones cut)
/// and brought back on the same port: the agent unreachable for a while.
struct Relay {
    addr: SocketAddr,
    down: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (down, down_rx) = tokio::sync::watch::channel(false);
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(relay_loop(
            listener,
            target,
            down_rx,
            stop.clone(),
            tracker.clone(),
        ));
        Relay {
            addr,
            down,
            stop,
            tracker,
        }
    }

    fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(SECS(5), self.tracker.wait())
            .await
            .expect("relay stops");
    }
}

async fn relay_loop(
    first: TcpListener,
    target: SocketAddr,
    mut down: tokio::sync::watch::Receiver<bool>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let addr = first.local_addr().expect("addr");
    let mut listener = Some(first);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => {
                // The port was ours a moment ago; rebinding can take a few tries.
                let mut bound = None;
                for _ in 0..100 {
                    if let Ok(l) = TcpListener::bind(addr).await {
                        bound = Some(l);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                bound.expect("rebind the relay's port")
            }
        };
        let epoch = stop.child_token();
        loop {
            tokio::select! {
                r = l.accept() => {
                    if let Ok((client, _)) = r {
                        let cut = epoch.clone();
                        tracker.spawn(async move {
                            let Ok(mut upstream) = TcpStream::connect(target).await else { return };
                            let mut client = client;
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                                _ = cut.cancelled() => {}
                            }
                        });
                    }
                }
                r = down.wait_for(|d| *d) => {
                    if r.is_err() { return }
                    break;
                }
                _ = stop.cancelled() => return,
            }
        }
        // Down: nothing listens (connection refused) and open connections are cut.
        drop(l);
        epoch.cancel();
        tokio::select! {
            r = down.wait_for(|d| !*d) => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_agent_faults() {
    let c = client();
    let q = create_queue(&c, "agentdrill", &[]).await;
    let (double, task) = agent_task().await;
    let mut mix = Reply::transient_faults();
    mix.push(Reply::FailureInOk {
        reason: "DEPLOYMENT_BLOCKED".into(),
    });
    mix.push(Reply::Slow {
        delay: Duration::from_millis(1500),
        then: Box::new(Reply::throttled()),
    });
    task.set_random_fault_mix(0.4, 0xa9e7_0002, mix);

    let relay = Relay::start(double.local_addr()).await;
    let agent_uri = format!("http://{}/api/{}", relay.addr, task.endpoint_id());
    // A 10 s grant (ExpiresInMinutes is still 1): refreshed every few seconds while busy, so the
    // random faults meet refreshes too. It must exceed the long poll plus the 5 s cover margin.
    let protector = Protector::agent(
        &agent_uri,
        queue_worker::Timing::new(SECS(10), Duration::ZERO),
    )
    .expect("agent client");
    let calls = protector.calls();
    let status = protector.subscribe();

    let probe_task = task.clone();
    let rec = Recorder::with_probe(move || probe_task.is_protected_at(SystemTime::now()));
    let mut cfg = fast_config(&q);
    cfg.protection.idle_window = SECS(1);
    let shutdown_timeout = cfg.shutdown_timeout;
    let w = start(cfg, protector, rec.clone()).await;

    // Phase 1: random agent faults while 60 messages are processed in 4 waves, the worker
    // taking and releasing protection around each (and refreshing it during the longer jobs).
    let mut ids = Vec::new();
    for wave in 0..4u64 {
        assert!(
            wait_until(SECS(20), || async { !task.protection().enabled }).await,
            "wave {wave}: idle worker released protection"
        );
        let bodies: Vec<String> = (0..15u64)
            .map(|i| format!("{}ms", 10 + (i * 37 + wave * 11) % 400))
            .collect();
        ids.extend(send_bodies(&c, &q, &bodies).await);
        let want = ids.len();
        assert!(
            wait_until(SECS(60), || async { rec.successes() >= want }).await,
            "wave {wave}: {} of {want} done",
            rec.successes()
        );
    }
    let faulted_replies = task
        .calls()
        .iter()
        .filter(|c| c.reply != ReplyKind::Normal)
        .count();
    assert!(
        faulted_replies >= 2,
        "the agent answered with faults: {:?}",
        task.calls()
    );

    // Phase 2: the agent unreachable for 4 s, taken down while protection is released (the idle
    // worker releases between polls), so nothing can be protected until it is back.
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries <= 20, "never caught the agent released");
        assert!(
            wait_until(SECS(20), || async { !task.protection().enabled }).await,
            "idle worker releases protection"
        );
        relay.set_down(true);
        // Calls in flight when the relay went down may still have landed: check after a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !task.protection().enabled {
            break;
        }
        relay.set_down(false);
    }
    let started_before = rec.seen().len();
    let calls_before = task.calls().len();
    let outage_bodies: Vec<String> = (0..30).map(|i| format!("{}ms", 10 + i)).collect();
    ids.extend(send_bodies(&c, &q, &outage_bodies).await);
    tokio::time::sleep(SECS(4)).await;
    assert_eq!(
        rec.seen().len(),
        started_before,
        "no job starts while the agent is unreachable and protection is not held"
    );
    assert_eq!(
        task.calls().len(),
        calls_before,
        "the agent really was unreachable"
    );
    assert!(
        !matches!(*status.borrow(), Status::Held { .. }),
        "the worker does not believe it is protected: {:?}",
        *status.borrow()
    );
    let transient_during_outage = calls.transient.load(std::sync::atomic::Ordering::Relaxed);
    relay.set_down(false);
    assert!(
        wait_until(SECS(60), || async { rec.successes() >= 90 }).await,
        "phase 2: {} of 90 done after the agent came back",
        rec.successes()
    );
    let protected_phase = rec.seen();
    let unprotected_starts = protected_phase.iter().filter(|s| !s.probe[0]).count();
    assert_eq!(
        unprotected_starts, 0,
        "no job started unprotected: {protected_phase:?}"
    );

    // Phase 3: a permanent refusal (standalone task). Jobs still run, unprotected, and the
    // worker asks once, then never again.
    assert!(
        wait_until(SECS(20), || async { !task.protection().enabled }).await,
        "released before the refusal phase"
    );
    task.set_random_fault_mix(0.0, 0, Vec::new());
    task.set_default_reply(Reply::task_not_valid());
    let refusal_bodies: Vec<String> = (0..20).map(|i| format!("{}ms", 5 + i)).collect();
    ids.extend(send_bodies(&c, &q, &refusal_bodies).await);
    assert!(
        wait_until(SECS(60), || async { rec.successes() >= 110 }).await,
        "phase 3: {} of 110 done",
        rec.successes()
    );
    assert!(
        wait_until(SECS(10), || async { counts(&c, &q).await == (0, 0) }).await,
        "every message deleted"
    );
    let refused = || {
        task.calls()
            .iter()
            .any(|c| c.code.as_deref() == Some("TASK_NOT_VALID"))
    };
    assert!(
        wait_until(SECS(20), || async { refused() }).await,
        "the worker met the refusal"
    );
    // Let a worker that kept asking show it.
    tokio::time::sleep(SECS(2)).await;
    let log = task.calls();
    let refusals: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, c)| c.code.as_deref() == Some("TASK_NOT_VALID"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(refusals.len(), 1, "TASK_NOT_VALID is asked once: {log:?}");
    assert_eq!(refusals[0], log.len() - 1, "and nothing after it: {log:?}");
    assert_eq!(
        calls.permanent.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(*status.borrow(), Status::Unavailable);

    let stopping = tokio::time::Instant::now();
    let snap = w.stop().await;
    let stop_took = stopping.elapsed();
    assert!(
        stop_took < shutdown_timeout + SECS(3),
        "stopped within its shutdown timeout (plus cleanup): {stop_took:?}"
    );

    let starts = rec.starts();
    assert!(
        ids.iter().all(|id| starts.contains_key(id)),
        "every message processed"
    );
    assert!(
        ids.iter().all(|id| starts.get(id) == Some(&1)),
        "each message ran once (no SQS faults here, visibility 60 s): {starts:?}"
    );
    assert_eq!(snap.jobs_succeeded, 110);
    assert!(snap.messages_deleted >= 110);
    let mut replies: BTreeMap<String, usize> = BTreeMap::new();
    for c in &log {
        *replies.entry(format!("{:?}", c.reply)).or_insert(0) += 1;
    }
    assert!(
        replies.len() >= 3 && replies.contains_key("Normal"),
        "faults were really answered: {replies:?}"
    );
    assert!(transient_during_outage > 0);
    relay.shutdown().await;
    double.shutdown().await;

    report_drill(
        "agent-faults",
        &json!({
            "sent": ids.len(),
            "succeeded": snap.jobs_succeeded,
            "deleted": snap.messages_deleted,
            "duplicates": rec.seen().len() - ids.len(),
            "jobs_started_unprotected_while_protection_available": unprotected_starts,
            "jobs_run_unprotected_after_refusal": rec.seen().iter().filter(|s| !s.probe[0]).count(),
            "agent_calls": log.len(),
            "agent_replies": replies,
            "agent_calls_after_refusal": log.len() - 1 - refusals[0],
            "faulted_agent_replies_before_outage": faulted_replies,
            "outage_s": 4,
            "outage_tries": tries,
            "protector_calls": {
                "ok": calls.ok.load(std::sync::atomic::Ordering::Relaxed),
                "transient": calls.transient.load(std::sync::atomic::Ordering::Relaxed),
                "permanent": calls.permanent.load(std::sync::atomic::Ordering::Relaxed),
            },
            "stop_ms": stop_took.as_millis() as u64,
            "worker": snap,
        }),
    );
}

/// Regression (found by the agent drill work): in on-receipt mode, a release that the agent
/// applied but whose answer was lost left the actor believing it still held protection, so the
/// next job started (and ran) unprotected without a single agent call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_release_answer_never_lets_a_job_start_unprotected() {
    use queue_worker::ProtectMode;
    let c = client();
    let q = create_queue(&c, "lostrelease", &[]).await;
    let (double, task) = agent_task().await;
    // The hold is answered; the release reaches ECS but its answer misses the agent's 5 s write
    // deadline, so the worker sees a closed connection.
    task.push_replies([
        Reply::Normal,
        Reply::Slow {
            delay: SECS(5),
            then: Box::new(Reply::Normal),
        },
    ]);
    let protector = agent_protector(&task, SECS(60), Duration::ZERO);
    let probe_task = task.clone();
    let rec = Recorder::with_probe(move || probe_task.is_protected_at(SystemTime::now()));
    let mut cfg = fast_config(&q);
    cfg.protection.mode = ProtectMode::OnReceipt;
    let w = start(cfg, protector, rec.clone()).await;
    send_bodies(&c, &q, &["10ms"]).await;
    assert!(wait_until(SECS(10), || async { rec.successes() == 1 }).await);
    assert!(
        wait_until(SECS(15), || async {
            task.calls().len() >= 2 && !task.protection().enabled
        })
        .await,
        "the release was applied"
    );
    send_bodies(&c, &q, &["2s"]).await;
    assert!(wait_until(SECS(15), || async { rec.successes() == 2 }).await);
    w.stop().await;
    let seen = rec.seen();
    assert!(
        seen[1].probe[0],
        "the second job started unprotected; agent calls: {:?}",
        task.calls()
    );
    double.shutdown().await;
}

//! The protection actor under a paused clock, against a scripted fake backend.

use super::*;
use std::collections::VecDeque;
use std::sync::Mutex;

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(Instant, bool)>>,
    script: Mutex<VecDeque<Result<Granted, ProtectionError>>>,
}

impl Fake {
    fn calls(&self) -> Vec<(Duration, bool)> {
        let calls = self.calls.lock().expect("lock");
        let t0 = calls.first().map(|c| c.0).unwrap_or_else(Instant::now);
        calls.iter().map(|(t, e)| (*t - t0, *e)).collect()
    }
    fn script(&self, replies: impl IntoIterator<Item = Result<Granted, ProtectionError>>) {
        self.script.lock().expect("lock").extend(replies);
    }
}

impl ProtectionBackend for Fake {
    fn set(&self, enabled: bool, _minutes: u32) -> BoxFuture<'_, Result<Granted, ProtectionError>> {
        self.calls
            .lock()
            .expect("lock")
            .push((Instant::now(), enabled));
        let next = self.script.lock().expect("lock").pop_front();
        Box::pin(async move {
            next.unwrap_or(Ok(Granted {
                enabled,
                expiration: None,
            }))
        })
    }
    fn name(&self) -> &'static str {
        "fake"
    }
}

fn transient() -> Result<Granted, ProtectionError> {
    Err(ProtectionError::Transient("429".into()))
}

const MIN: Duration = Duration::from_secs(60);

fn start(fake: &Arc<Fake>) -> Protector {
    Protector::start(
        fake.clone(),
        Timing::new(5 * MIN, 30 * Duration::from_secs(1)),
    )
}

/// Asks for protection now and waits until it is held.
async fn acquire(p: &Protector) {
    p.hold_until(Instant::now());
    p.wait_for(&CancellationToken::new(), |s| {
        matches!(s, Status::Held { .. })
    })
    .await;
}

async fn settle() {
    // Lets the actor run to its next sleep; with a paused clock nothing else moves.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn acquires_then_refreshes_at_80_percent_while_wanted() {
    let fake = Arc::new(Fake::default());
    let p = start(&fake);
    p.hold_until(Instant::now() + Duration::from_secs(25));
    assert!(
        p.wait_for(&CancellationToken::new(), |s| matches!(
            s,
            Status::Held { .. }
        ))
        .await
    );
    tokio::time::sleep(10 * MIN).await;
    let calls = fake.calls();
    let at: Vec<u64> = calls.iter().map(|c| c.0.as_secs()).collect();
    assert_eq!(at, vec![0, 240, 480], "refresh every 4 of 5 minutes");
    assert!(calls.iter().all(|c| c.1));
    assert!(matches!(p.status(), Status::Held { .. }));
    p.shutdown(Instant::now() + Duration::from_secs(1)).await;
    assert_eq!(
        fake.calls().last().map(|c| c.1),
        Some(false),
        "released at shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn release_waits_for_the_minimum_hold() {
    let fake = Arc::new(Fake::default());
    let p = start(&fake);
    acquire(&p).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    p.release();
    p.wait_for(&CancellationToken::new(), |s| *s == Status::Released)
        .await;
    assert_eq!(
        fake.calls(),
        vec![(Duration::ZERO, true), (Duration::from_secs(30), false)]
    );
}

#[tokio::test(start_paused = true)]
async fn work_returning_within_the_minimum_hold_costs_no_calls() {
    let fake = Arc::new(Fake::default());
    let p = start(&fake);
    for _ in 0..10 {
        p.hold_until(Instant::now() + Duration::from_secs(1));
        settle().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        p.release();
        settle().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        fake.calls().len(),
        1,
        "one acquisition for a burst of short jobs"
    );
    tokio::time::sleep(MIN).await;
    assert_eq!(fake.calls().len(), 2, "then one release after the hold");
    assert_eq!(p.status(), Status::Released);
}

#[tokio::test(start_paused = true)]
async fn refreshes_early_when_the_loop_needs_longer_cover() {
    let fake = Arc::new(Fake::default());
    let p = Protector::start(fake.clone(), Timing::new(MIN, Duration::ZERO));
    acquire(&p).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    // 20 s left on the grant, but the loop is about to long-poll for 25 s.
    let until = Instant::now() + Duration::from_secs(25);
    p.hold_until(until);
    assert!(
        p.wait_for(&CancellationToken::new(), |s| s.covers(until))
            .await
    );
    assert_eq!(
        fake.calls()
            .iter()
            .map(|c| c.0.as_secs())
            .collect::<Vec<_>>(),
        vec![0, 40]
    );
}

#[tokio::test(start_paused = true)]
async fn transient_errors_back_off_and_never_report_held() {
    let fake = Arc::new(Fake::default());
    fake.script([transient(), transient(), transient(), transient()]);
    let p = start(&fake);
    let mut rx = p.subscribe();
    p.hold_until(Instant::now());
    settle().await;
    assert_eq!(p.status(), Status::Failing);
    rx.wait_for(|s| matches!(s, Status::Held { .. }))
        .await
        .expect("eventually held");
    let calls = fake.calls();
    assert_eq!(calls.len(), 5);
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // Jittered in [c/2, c] for c = 250 ms, 500 ms, 1 s, 2 s.
    for (i, g) in gaps.iter().enumerate() {
        let c = Duration::from_millis(250 << i);
        assert!(
            *g >= c / 2 && *g <= c + Duration::from_millis(1),
            "gap {i}: {g:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn held_protection_stays_usable_while_refresh_fails_until_it_expires() {
    let fake = Arc::new(Fake::default());
    let p = start(&fake);
    acquire(&p).await;
    fake.script(std::iter::repeat_with(transient).take(1000));
    tokio::time::sleep(4 * MIN + Duration::from_secs(30)).await;
    assert!(
        matches!(p.status(), Status::Held { .. }),
        "still within the 5-minute grant"
    );
    tokio::time::sleep(MIN).await;
    assert_eq!(
        p.status(),
        Status::Failing,
        "expired: the loop must not receive"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_refusal_warns_once_and_stops_calling() {
    let fake = Arc::new(Fake::default());
    fake.script([Err(ProtectionError::Permanent {
        problem: "TASK_NOT_VALID".into(),
        fix: "run it in a service".into(),
    })]);
    let p = start(&fake);
    p.hold_until(Instant::now());
    assert!(
        p.wait_for(&CancellationToken::new(), |s| *s == Status::Unavailable)
            .await
    );
    for _ in 0..5 {
        p.release();
        settle().await;
        p.hold_until(Instant::now() + MIN);
        tokio::time::sleep(MIN).await;
    }
    assert_eq!(fake.calls().len(), 1);
    assert!(
        p.status().covers(Instant::now() + MIN),
        "unprotected work goes on"
    );
    p.shutdown(Instant::now() + Duration::from_secs(1)).await;
    assert_eq!(fake.calls().len(), 1, "nothing to release");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_inside_a_success_is_not_protection() {
    let fake = Arc::new(Fake::default());
    fake.script([Ok(Granted {
        enabled: false,
        expiration: None,
    })]);
    let p = start(&fake);
    p.hold_until(Instant::now());
    settle().await;
    assert_eq!(p.status(), Status::Failing);
    assert!(
        p.wait_for(&CancellationToken::new(), |s| matches!(
            s,
            Status::Held { .. }
        ))
        .await
    );
    assert_eq!(fake.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn disabled_protection_always_covers_and_never_calls() {
    let p = Protector::disabled();
    p.hold_until(Instant::now() + MIN);
    assert!(p.status().covers(Instant::now() + 100 * MIN));
    assert!(!p.is_enabled());
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_release_the_next_hold_asks_again_instead_of_trusting_its_memory() {
    let fake = Arc::new(Fake::default());
    let p = Protector::start(fake.clone(), Timing::new(5 * MIN, Duration::ZERO));
    acquire(&p).await;
    // The release may have been applied even though its answer was lost.
    fake.script([transient()]);
    p.release();
    settle().await;
    assert!(
        !matches!(p.status(), Status::Held { .. }),
        "a doubtful release must not leave the status Held"
    );
    p.hold_until(Instant::now() + Duration::from_secs(25));
    assert!(
        p.wait_for(&CancellationToken::new(), |s| matches!(
            s,
            Status::Held { .. }
        ))
        .await
    );
    let enables: Vec<bool> = fake.calls().iter().map(|c| c.1).collect();
    assert_eq!(
        enables,
        vec![true, false, true],
        "protection taken again, not assumed"
    );
}

//! The view over time, against a scripted ECS API, with the clock paused.

use std::sync::Mutex;

use tokio::time::Instant;

use super::*;
use crate::sync::lock;

const V1: &str = "arn:aws:ecs:us-east-1:1:task-definition/worker:1";
const V2: &str = "arn:aws:ecs:us-east-1:1:task-definition/worker:2";
const POLL: Duration = Duration::from_secs(15);

/// What the scripted API answers, changed by the test as it goes.
#[derive(Default)]
struct Scripted {
    service: Mutex<Option<ServiceFacts>>,
    fleet: Mutex<u32>,
    tasks: Mutex<Vec<TaskFacts>>,
    deny: Mutex<bool>,
    calls: Mutex<Vec<(Instant, &'static str)>>,
}

impl Scripted {
    fn set(&self, facts: ServiceFacts, fleet: u32) {
        *lock(&self.service) = Some(facts);
        *lock(&self.fleet) = fleet;
    }
    fn calls_of(&self, op: &str) -> usize {
        lock(&self.calls).iter().filter(|c| c.1 == op).count()
    }
}

impl ServiceApi for Scripted {
    fn group_of<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Call<String>> {
        Box::pin(async { Ok("service:worker".to_string()) })
    }
    fn service<'a>(&'a self, _: &'a Identity) -> BoxFuture<'a, Call<Option<(ServiceFacts, u32)>>> {
        lock(&self.calls).push((Instant::now(), "DescribeServices"));
        let denied = *lock(&self.deny);
        let answer = lock(&self.service).clone().map(|f| (f, *lock(&self.fleet)));
        Box::pin(async move {
            if denied {
                return Err(Err(Stop::Denied {
                    action: "ecs:DescribeServices",
                    reason: "AccessDeniedException".into(),
                }));
            }
            Ok(answer)
        })
    }
    fn tasks<'a>(&'a self, _: &'a Identity) -> BoxFuture<'a, Call<Vec<TaskFacts>>> {
        lock(&self.calls).push((Instant::now(), "ListTasks"));
        let tasks = lock(&self.tasks).clone();
        Box::pin(async move { Ok(tasks) })
    }
}

fn dep(primary: bool, td: &str, desired: u32, running: u32) -> Deployment {
    Deployment {
        primary,
        task_definition: td.into(),
        desired,
        running,
        pending: 0,
    }
}

fn service(desired: u32, deployments: Vec<Deployment>) -> ServiceFacts {
    ServiceFacts {
        desired,
        maximum_percent: 200,
        minimum_healthy_percent: 100,
        deployments,
    }
}

fn me(n: u32, td: &str) -> Identity {
    Identity {
        cluster: "c".into(),
        service: "worker".into(),
        me: Me {
            arn: format!("arn:aws:ecs:us-east-1:1:task/c/{n:02}"),
            task_definition: td.into(),
        },
    }
}

fn task(n: u32, started: i64) -> TaskFacts {
    TaskFacts {
        arn: format!("arn:aws:ecs:us-east-1:1:task/c/{n:02}"),
        task_definition: V1.into(),
        started_at: Some(started),
    }
}

struct Rig {
    api: std::sync::Arc<Scripted>,
    yielding: std::sync::Arc<Yielding>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(id: Identity) -> Rig {
    let api = std::sync::Arc::new(Scripted::default());
    let yielding = std::sync::Arc::new(Yielding::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (api, yielding, stop) = (api.clone(), yielding.clone(), stop.clone());
        async move { watch(&*api, &id, POLL, &yielding, &stop).await }
    });
    Rig {
        api,
        yielding,
        stop,
        task,
    }
}

impl Rig {
    async fn end(self) {
        self.stop.cancel();
        let _ = self.task.await;
        assert_eq!(
            self.yielding.current(),
            None,
            "a stopped view holds no reason"
        );
    }
}

/// One poll period and then some: the view has looked again.
async fn next_look() {
    tokio::time::sleep(POLL.mul_f64(1.25)).await;
}

#[tokio::test(start_paused = true)]
async fn an_old_task_yields_to_a_deployment_and_resumes_when_it_rolls_back() {
    let r = start(me(1, V1));
    r.api.set(service(2, vec![dep(true, V1, 2, 2)]), 2);
    next_look().await;
    assert_eq!(r.yielding.current(), None);
    // Deployed, and the new tasks run.
    r.api.set(
        service(2, vec![dep(true, V2, 2, 2), dep(false, V1, 2, 2)]),
        4,
    );
    next_look().await;
    assert_eq!(r.yielding.current(), Some(Reason::Deployment));
    // Rolled back: the old revision is primary again.
    r.api.set(
        service(2, vec![dep(true, V1, 2, 2), dep(false, V2, 2, 2)]),
        4,
    );
    next_look().await;
    assert_eq!(r.yielding.current(), None, "resumed");
    r.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_scale_in_yields_the_newest_tasks_and_resumes_when_called_off() {
    let newest = start(me(3, V1));
    let oldest = start(me(1, V1));
    for r in [&newest, &oldest] {
        *lock(&r.api.tasks) = vec![task(1, 100), task(2, 200), task(3, 300)];
        r.api.set(service(2, vec![dep(true, V1, 2, 3)]), 3);
    }
    next_look().await;
    assert_eq!(
        newest.yielding.current(),
        Some(Reason::ScaleIn),
        "the excess of 1"
    );
    assert_eq!(oldest.yielding.current(), None, "not chosen: keeps working");
    assert!(newest.api.calls_of("ListTasks") >= 1, "listed to choose");
    // The desired count goes back up.
    newest.api.set(service(3, vec![dep(true, V1, 3, 3)]), 3);
    next_look().await;
    assert_eq!(newest.yielding.current(), None, "resumed");
    newest.end().await;
    oldest.end().await;
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_service_costs_one_describe_services_per_period_and_no_listing() {
    let r = start(me(1, V1));
    r.api.set(service(3, vec![dep(true, V1, 3, 3)]), 3);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let n = r.api.calls_of("DescribeServices");
    let most = (600.0 / (POLL.as_secs_f64() * 0.8)).ceil() as usize + 1;
    let least = (600.0 / (POLL.as_secs_f64() * 1.2)).floor() as usize;
    assert!(
        (least..=most).contains(&n),
        "{n} calls in {:?}",
        t0.elapsed()
    );
    assert_eq!(
        r.api.calls_of("ListTasks"),
        0,
        "nothing to choose: no listing"
    );
    r.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_large_fleet_looks_less_often() {
    let r = start(me(1, V1));
    r.api.set(service(200, vec![dep(true, V1, 200, 200)]), 200);
    tokio::time::sleep(Duration::from_secs(1500)).await;
    // 200 tasks: every task looks every 10 periods, so the fleet makes 200 / 150 s ≈ 1.3/s.
    let n = r.api.calls_of("DescribeServices");
    assert!((8..=14).contains(&n), "{n} calls in 1500 s");
    r.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_refusal_turns_the_view_off_and_it_asks_again_ten_minutes_later() {
    let r = start(me(1, V1));
    *lock(&r.api.deny) = true;
    r.api.set(
        service(2, vec![dep(true, V2, 2, 2), dep(false, V1, 2, 2)]),
        4,
    );
    tokio::time::sleep(Duration::from_secs(599)).await;
    assert_eq!(
        r.api.calls_of("DescribeServices"),
        1,
        "not asked again in a loop"
    );
    assert_eq!(r.yielding.current(), None, "no view, no yield from it");
    *lock(&r.api.deny) = false;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.api.calls_of("DescribeServices"), 2);
    assert_eq!(
        r.yielding.current(),
        Some(Reason::Deployment),
        "works once the role may"
    );
    r.end().await;
}

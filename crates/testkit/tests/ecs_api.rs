//! local-ecs's ECS API through `aws_sdk_ecs::Client`: every operation decoded by the SDK's own
//! deserializers, and the deployment rules for both kinds of settings. The tasks are small shell
//! loops (no worker), so protection is set by the test, through the API or the agent endpoint.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_sdk_ecs::config::retry::RetryConfig;
use aws_sdk_ecs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{DesiredStatus, LaunchType, SchedulingStrategy, ServiceField};
use serde_json::Value;
use testkit::local_ecs::{
    CallOutcome, Control, Echo, EcsFaults, EcsOperation, EventKind, LocalEcs, ServiceSpec,
    StopReason,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// Every request fails instead of hanging.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A task: prints the endpoints it was given, then idles until SIGTERM. With `IGNORE_TERM=1`
/// it ignores SIGTERM (so it stays "stopping" until the SIGKILL at the stop timeout).
const TASK_SCRIPT: &str = r#"
echo "ECS=$AWS_ENDPOINT_URL_ECS"
echo "AGENT=$ECS_AGENT_URI"
echo "META=$ECS_CONTAINER_METADATA_URI_V4"
if [ "$IGNORE_TERM" = 1 ]; then trap '' TERM; else trap 'exit 0' TERM; fi
while :; do sleep 0.05; done
"#;

struct Svc {
    ecs: LocalEcs,
    control: Control,
    client: aws_sdk_ecs::Client,
    logs: PathBuf,
}

fn spec(desired: usize) -> (ServiceSpec, PathBuf) {
    let logs = std::env::temp_dir().join(format!("ecs-api-{:016x}", fastrand::u64(..)));
    let mut spec = ServiceSpec::new(
        "/bin/sh",
        vec![OsString::from("-c"), OsString::from(TASK_SCRIPT)],
    );
    spec.desired = desired;
    spec.reconcile_every = Duration::from_millis(100);
    spec.stop_timeout = SECS(2);
    spec.log_dir = Some(logs.clone());
    spec.echo = Echo::Stderr;
    (spec, logs)
}

fn client(endpoint: &str) -> aws_sdk_ecs::Client {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let timeouts = aws_sdk_ecs::config::timeout::TimeoutConfig::builder()
        .operation_timeout(CLIENT_TIMEOUT)
        .build();
    aws_sdk_ecs::Client::from_conf(
        aws_sdk_ecs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .endpoint_url(endpoint)
            .http_client(http)
            // Each throttled attempt must show as one call.
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .build(),
    )
}

async fn start(spec: ServiceSpec, logs: PathBuf) -> Svc {
    let ecs = LocalEcs::start(spec).await.expect("local-ecs starts");
    let control = ecs.control();
    let client = client(&ecs.ecs_endpoint());
    Svc {
        ecs,
        control,
        client,
        logs,
    }
}

async fn started(desired: usize) -> Svc {
    let (spec, logs) = spec(desired);
    let svc = start(spec, logs).await;
    svc.wait("the first tasks start", |c| {
        let s = c.status();
        s.steady && s.tasks.len() == desired
    })
    .await;
    svc
}

/// Polls every 20 ms until `check` holds; panics after 20 s.
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + SECS(20);
    while !check() {
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Svc {
    async fn wait(&self, what: &str, check: impl Fn(&Control) -> bool) {
        wait_for(what, || check(&self.control)).await;
    }

    /// `KEY=value` printed by task `n` (waits for the line).
    async fn task_env(&self, n: u32, key: &str) -> String {
        let path = self.logs.join(format!("task-{n}.log"));
        let prefix = format!("{key}=");
        let mut found = None;
        wait_for(&format!("task {n} prints {key}"), || {
            found = std::fs::read_to_string(&path).ok().and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            });
            found.is_some()
        })
        .await;
        found.unwrap_or_default()
    }

    fn arn(&self, n: u32) -> String {
        self.control
            .status()
            .tasks
            .iter()
            .find(|t| t.task == n)
            .map(|t| t.task_arn.clone())
            .expect("task is running")
    }

    async fn protect(&self, n: u32, enabled: bool) {
        let out = self
            .client
            .update_task_protection()
            .cluster("local")
            .tasks(self.arn(n))
            .protection_enabled(enabled)
            .expires_in_minutes(5)
            .send()
            .await
            .expect("UpdateTaskProtection");
        assert!(out.failures().is_empty(), "{:?}", out.failures());
    }

    /// Waits until the timeline has an event that `p` matches.
    async fn wait_event(&self, what: &str, p: impl Fn(&EventKind) -> bool) {
        self.wait(what, |c| c.events().iter().any(|e| p(&e.kind)))
            .await;
    }

    /// DescribeServices of the service, as the SDK decodes it.
    async fn service(&self) -> aws_sdk_ecs::types::Service {
        let out = self
            .client
            .describe_services()
            .cluster("local")
            .services("queue-worker")
            .send()
            .await
            .expect("DescribeServices");
        out.services()[0].clone()
    }

    fn kinds(&self) -> Vec<EventKind> {
        self.control.events().into_iter().map(|e| e.kind).collect()
    }

    async fn finish(self) {
        tokio::time::timeout(SECS(30), self.ecs.shutdown())
            .await
            .expect("local-ecs shuts down");
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

fn secs_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_services_reports_the_service_its_deployment_and_events() {
    let (mut spec, logs) = spec(2);
    spec.tags = vec![("copilot-service".into(), "worker".into())];
    let svc = start(spec, logs).await;
    svc.wait("steady", |c| c.status().steady).await;
    let before = secs_since_epoch(SystemTime::now());

    let cluster_arn = "arn:aws:ecs:us-east-1:123456789012:cluster/local";
    let service_arn = "arn:aws:ecs:us-east-1:123456789012:service/local/queue-worker";
    for (cluster, service) in [("local", "queue-worker"), (cluster_arn, service_arn)] {
        let out = svc
            .client
            .describe_services()
            .cluster(cluster)
            .services(service)
            .services("nope")
            .send()
            .await
            .expect("DescribeServices");
        let s = &out.services()[0];
        assert_eq!(s.service_arn(), Some(service_arn));
        assert_eq!(s.service_name(), Some("queue-worker"));
        assert_eq!(s.cluster_arn(), Some(cluster_arn));
        assert_eq!(s.status(), Some("ACTIVE"));
        assert_eq!(
            (s.desired_count(), s.running_count(), s.pending_count()),
            (2, 2, 0)
        );
        assert_eq!(s.launch_type(), Some(&LaunchType::Fargate));
        assert_eq!(s.scheduling_strategy(), Some(&SchedulingStrategy::Replica));
        assert_eq!(
            s.task_definition(),
            Some("arn:aws:ecs:us-east-1:123456789012:task-definition/queue-worker:1")
        );
        let dc = s
            .deployment_configuration()
            .expect("deploymentConfiguration");
        assert_eq!(
            (dc.maximum_percent(), dc.minimum_healthy_percent()),
            (Some(200), Some(100))
        );
        let cb = dc.deployment_circuit_breaker().expect("circuit breaker");
        assert!(!cb.enable() && !cb.rollback());
        let created = s.created_at().expect("createdAt").secs();
        assert!((before - 60..=before + 1).contains(&created), "{created}");
        assert!(s.tags().is_empty(), "tags only when asked for");

        let d = s.deployments();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].status(), Some("PRIMARY"));
        let id = d[0].id().expect("id");
        let digits = id.strip_prefix("ecs-svc/").expect("ecs-svc/ id");
        assert!(
            digits.len() == 19 && digits.bytes().all(|b| b.is_ascii_digit()),
            "{id}"
        );
        assert_eq!(d[0].task_definition(), s.task_definition());
        assert_eq!((d[0].desired_count(), d[0].running_count()), (2, 2));
        assert_eq!(d[0].failed_tasks(), 0);
        assert_eq!(d[0].launch_type(), Some(&LaunchType::Fargate));
        assert_eq!(d[0].rollout_state().map(|r| r.as_str()), Some("COMPLETED"));
        assert!(d[0]
            .rollout_state_reason()
            .is_some_and(|r| r.contains("completed")));
        assert!(d[0].created_at().is_some() && d[0].updated_at().is_some());

        // Events: newest first, each with an id.
        let events = s.events();
        let messages: Vec<&str> = events.iter().filter_map(|e| e.message()).collect();
        assert_eq!(
            messages.first().copied(),
            Some("(service queue-worker) has reached a steady state."),
            "{messages:?}"
        );
        assert_eq!(
            messages
                .iter()
                .filter(|m| m.starts_with("(service queue-worker) has started 1 tasks: (task "))
                .count(),
            2,
            "{messages:?}"
        );
        assert!(messages.iter().any(|m| m.contains("deployment completed")));
        let times: Vec<f64> = events
            .iter()
            .map(|e| e.created_at().expect("createdAt").as_secs_f64())
            .collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
        assert!(events.iter().all(|e| e.id().is_some_and(|i| !i.is_empty())));

        let f = out.failures();
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].arn(),
            Some("arn:aws:ecs:us-east-1:123456789012:service/local/nope")
        );
        assert_eq!(f[0].reason(), Some("MISSING"));
    }

    let out = svc
        .client
        .describe_services()
        .cluster("local")
        .services("queue-worker")
        .include(ServiceField::Tags)
        .send()
        .await
        .expect("DescribeServices with tags");
    let tags = out.services()[0].tags();
    assert_eq!(tags.len(), 1);
    assert_eq!(
        (tags[0].key(), tags[0].value()),
        (Some("copilot-service"), Some("worker"))
    );

    let clusters = svc
        .client
        .list_clusters()
        .send()
        .await
        .expect("ListClusters");
    assert_eq!(clusters.cluster_arns(), [cluster_arn]);
    let services = svc
        .client
        .list_services()
        .cluster("local")
        .send()
        .await
        .expect("ListServices");
    assert_eq!(services.service_arns(), [service_arn]);
    svc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_describe_tasks_follow_them_from_running_to_stopped() {
    let (mut spec, logs) = spec(3);
    spec.env = vec![(OsString::from("IGNORE_TERM"), OsString::from("1"))];
    let svc = start(spec, logs).await;
    svc.wait("3 tasks", |c| c.status().tasks.len() == 3).await;
    let deployment = svc.control.status().deployments[0].id.clone();

    // Pagination: one per page, in start order.
    let mut arns = Vec::new();
    let mut token = None;
    for _ in 0..10 {
        let out = svc
            .client
            .list_tasks()
            .cluster("local")
            .service_name("queue-worker")
            .max_results(1)
            .set_next_token(token.take())
            .send()
            .await
            .expect("ListTasks");
        arns.extend(out.task_arns().iter().cloned());
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    let expected: Vec<String> = (1..=3).map(|n| svc.arn(n)).collect();
    assert_eq!(arns, expected);
    for arn in &arns {
        let id = arn
            .strip_prefix("arn:aws:ecs:us-east-1:123456789012:task/local/")
            .expect("task ARN");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    let all = svc
        .client
        .list_tasks()
        .cluster("local")
        .send()
        .await
        .expect("ListTasks");
    assert_eq!(all.task_arns(), arns.as_slice());
    assert!(all.next_token().is_none());
    let by_deployment = svc
        .client
        .list_tasks()
        .cluster("local")
        .started_by(&deployment)
        .send()
        .await
        .expect("ListTasks startedBy");
    assert_eq!(by_deployment.task_arns().len(), 3);

    // Describe: by ARN and by id; unknown ones are MISSING.
    let id1 = arns[0].rsplit('/').next().expect("id").to_owned();
    let out = svc
        .client
        .describe_tasks()
        .cluster("local")
        .tasks(&id1)
        .tasks(&arns[1])
        .tasks("0123456789abcdef0123456789abcdef")
        .send()
        .await
        .expect("DescribeTasks");
    assert_eq!(out.tasks().len(), 2);
    for t in out.tasks() {
        assert_eq!(t.group(), Some("service:queue-worker"));
        assert_eq!(t.started_by(), Some(deployment.as_str()));
        assert_eq!(
            t.task_definition_arn(),
            Some("arn:aws:ecs:us-east-1:123456789012:task-definition/queue-worker:1")
        );
        assert_eq!(
            t.cluster_arn(),
            Some("arn:aws:ecs:us-east-1:123456789012:cluster/local")
        );
        assert_eq!(t.last_status(), Some("RUNNING"));
        assert_eq!(t.desired_status(), Some("RUNNING"));
        assert_eq!(t.launch_type(), Some(&LaunchType::Fargate));
        assert_eq!(t.availability_zone(), Some("us-east-1a"));
        assert!(t.created_at().is_some() && t.started_at().is_some());
        assert_eq!(t.containers().len(), 1);
        assert_eq!(t.containers()[0].name(), Some("worker"));
        assert!(t.stopped_at().is_none());
    }
    assert_eq!(out.failures().len(), 1);
    assert_eq!(out.failures()[0].reason(), Some("MISSING"));

    // Scale in by one: the newest task is told to stop; it ignores SIGTERM, so for up to the 2 s
    // stop timeout it is still RUNNING with desired status STOPPED.
    svc.control.set_desired(2);
    svc.wait("a task is told to stop", |c| {
        c.status().tasks.iter().any(|t| t.stopping.is_some())
    })
    .await;
    let describe = |arn: String| {
        let client = svc.client.clone();
        async move {
            let out = client
                .describe_tasks()
                .cluster("local")
                .tasks(arn)
                .send()
                .await
                .expect("DescribeTasks");
            out.tasks()[0].clone()
        }
    };
    let t = describe(arns[2].clone()).await;
    assert_eq!(
        (t.last_status(), t.desired_status()),
        (Some("RUNNING"), Some("STOPPED"))
    );
    assert_eq!(
        t.stop_code().map(|c| c.as_str()),
        Some("ServiceSchedulerInitiated")
    );
    assert!(t.stopping_at().is_some());
    let running = svc
        .client
        .list_tasks()
        .cluster("local")
        .desired_status(DesiredStatus::Running)
        .send()
        .await
        .expect("ListTasks RUNNING");
    assert_eq!(running.task_arns(), &arns[..2]);
    let stopping = svc
        .client
        .list_tasks()
        .cluster("local")
        .desired_status(DesiredStatus::Stopped)
        .send()
        .await
        .expect("ListTasks STOPPED");
    assert_eq!(stopping.task_arns(), &arns[2..]);

    // After the SIGKILL it is described as STOPPED.
    svc.wait("the task exits", |c| c.status().tasks.len() == 2)
        .await;
    let t = describe(arns[2].clone()).await;
    assert_eq!(
        (t.last_status(), t.desired_status()),
        (Some("STOPPED"), Some("STOPPED"))
    );
    assert!(t.stopped_at().is_some());
    assert!(t
        .stopped_reason()
        .is_some_and(|r| r.contains("Scaling activity")));
    let stopped = svc
        .client
        .list_tasks()
        .cluster("local")
        .service_name("queue-worker")
        .desired_status(DesiredStatus::Stopped)
        .send()
        .await
        .expect("ListTasks STOPPED");
    assert_eq!(stopped.task_arns(), &arns[2..]);
    svc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_protection_through_the_api_is_the_agents_and_holds_scale_in() {
    let svc = started(2).await;
    let (arn1, arn2) = (svc.arn(1), svc.arn(2));
    let before = SystemTime::now();
    let out = svc
        .client
        .update_task_protection()
        .cluster("arn:aws:ecs:us-east-1:123456789012:cluster/local")
        .tasks(&arn1)
        .tasks(&arn2)
        .tasks("arn:aws:ecs:us-east-1:123456789012:task/local/ffffffffffffffffffffffffffffffff")
        .protection_enabled(true)
        .expires_in_minutes(5)
        .send()
        .await
        .expect("UpdateTaskProtection");
    assert_eq!(out.protected_tasks().len(), 2);
    for p in out.protected_tasks() {
        assert!(p.protection_enabled());
        let expires = p.expiration_date().expect("expirationDate").secs();
        let five = secs_since_epoch(before) + 300;
        assert!((five - 1..=five + 2).contains(&expires), "{expires}");
    }
    assert_eq!(out.failures().len(), 1);
    assert_eq!(out.failures()[0].reason(), Some("MISSING"));

    // The agent endpoint reads the same state...
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("client");
    let agent = svc.task_env(1, "AGENT").await;
    let state: Value = http
        .get(format!("{agent}/task-protection/v1/state"))
        .send()
        .await
        .expect("GET agent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(state["protection"]["ProtectionEnabled"], true);
    assert_eq!(state["protection"]["TaskArn"], arn1.as_str());
    // ... and what the agent sets, the API reports.
    http.put(format!("{agent}/task-protection/v1/state"))
        .body(r#"{"ProtectionEnabled": false}"#)
        .send()
        .await
        .expect("PUT agent");
    let got = svc
        .client
        .get_task_protection()
        .cluster("local")
        .tasks(&arn1)
        .tasks(&arn2)
        .send()
        .await
        .expect("GetTaskProtection");
    let enabled: Vec<(Option<&str>, bool)> = got
        .protected_tasks()
        .iter()
        .map(|p| (p.task_arn(), p.protection_enabled()))
        .collect();
    assert_eq!(
        enabled,
        vec![(Some(arn1.as_str()), false), (Some(arn2.as_str()), true)]
    );
    assert!(got.protected_tasks()[0].expiration_date().is_none());
    let all = svc
        .client
        .get_task_protection()
        .cluster("local")
        .send()
        .await
        .expect("GetTaskProtection without tasks");
    assert_eq!(all.protected_tasks().len(), 2);

    // Scale-in honours protection set through the API: task 2 stays until it is released.
    svc.control.set_desired(0);
    svc.wait("task 1 goes", |c| c.status().tasks.len() == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(svc.control.status().tasks[0].task, 2, "protected: kept");
    assert!(svc
        .kinds()
        .iter()
        .any(|k| matches!(k, EventKind::ScaleInBlocked { protected: 1 })));
    svc.protect(2, false).await;
    svc.wait("task 2 goes once released", |c| c.status().tasks.is_empty())
        .await;
    let texts: Vec<String> = svc.control.events().into_iter().map(|e| e.text).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("task 2 protection off (ECS API)")),
        "{texts:?}"
    );

    // Limits: at most 10 tasks, 1..=2880 minutes.
    let err = svc
        .client
        .update_task_protection()
        .cluster("local")
        .set_tasks(Some(vec![arn1.clone(); 11]))
        .protection_enabled(true)
        .send()
        .await
        .expect_err("11 tasks");
    assert_eq!(err.code(), Some("InvalidParameterException"));
    let err = svc
        .client
        .update_task_protection()
        .cluster("local")
        .tasks(&arn1)
        .protection_enabled(true)
        .expires_in_minutes(2881)
        .send()
        .await
        .expect_err("2881 minutes");
    assert_eq!(err.code(), Some("InvalidParameterException"));
    svc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_denials_throttling_and_call_counts_per_task() {
    let svc = started(1).await;
    let err = svc
        .client
        .describe_services()
        .cluster("other")
        .services("queue-worker")
        .send()
        .await
        .expect_err("unknown cluster");
    assert_eq!(err.code(), Some("ClusterNotFoundException"));
    assert_eq!(err.message(), Some("Cluster not found."));
    let err = svc
        .client
        .update_service()
        .cluster("local")
        .service("other")
        .desired_count(1)
        .send()
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), Some("ServiceNotFoundException"));
    let err = svc
        .client
        .describe_services()
        .cluster("local")
        .set_services(Some(vec!["queue-worker".into(); 11]))
        .send()
        .await
        .expect_err("11 services");
    assert_eq!(err.code(), Some("InvalidParameterException"));

    // A task's own endpoint: its calls are counted as its own.
    let endpoint = svc.task_env(1, "ECS").await;
    assert_eq!(endpoint, format!("{}/task/1", svc.ecs.ecs_endpoint()));
    let as_task = client(&endpoint);
    for _ in 0..2 {
        as_task
            .describe_services()
            .cluster("local")
            .services("queue-worker")
            .send()
            .await
            .expect("DescribeServices from the task");
    }
    svc.control.set_ecs_faults(EcsFaults {
        deny: [EcsOperation::DescribeTasks].into(),
        throttle: [(EcsOperation::DescribeServices, 1.0)].into(),
        seed: 7,
    });
    let err = as_task
        .describe_tasks()
        .cluster("local")
        .tasks(svc.arn(1))
        .send()
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some("AccessDeniedException"));
    assert!(err
        .message()
        .is_some_and(|m| m.contains("not authorized to perform: ecs:DescribeTasks")));
    let err = as_task
        .describe_services()
        .cluster("local")
        .services("queue-worker")
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("ThrottlingException"));
    assert_eq!(err.message(), Some("Rate exceeded"));
    // Other operations still work.
    as_task
        .list_tasks()
        .cluster("local")
        .send()
        .await
        .expect("ListTasks is neither denied nor throttled");

    // Half of the calls throttled, reproducibly.
    svc.control.set_ecs_faults(EcsFaults {
        throttle: [(EcsOperation::DescribeServices, 0.5)].into(),
        seed: 1,
        ..EcsFaults::default()
    });
    let mut throttled = 0;
    for _ in 0..40 {
        let r = svc
            .client
            .describe_services()
            .cluster("local")
            .services("queue-worker")
            .send()
            .await;
        if let Err(e) = r {
            assert_eq!(e.code(), Some("ThrottlingException"));
            throttled += 1;
        }
    }
    assert!((8..=32).contains(&throttled), "{throttled} of 40");
    svc.control.set_ecs_faults(EcsFaults::default());

    let c = &svc.control;
    assert_eq!(c.ecs_call_count(EcsOperation::DescribeServices, Some(1)), 3);
    assert_eq!(c.ecs_call_count(EcsOperation::DescribeTasks, Some(1)), 1);
    assert_eq!(c.ecs_call_count(EcsOperation::ListTasks, Some(1)), 1);
    assert_eq!(c.ecs_call_count(EcsOperation::DescribeServices, None), 45);
    let calls = c.ecs_calls();
    let of_task: Vec<(&str, &CallOutcome)> = calls
        .iter()
        .filter(|c| c.task == Some(1))
        .map(|c| (c.operation.as_str(), &c.outcome))
        .collect();
    assert_eq!(
        of_task,
        vec![
            ("DescribeServices", &CallOutcome::Ok),
            ("DescribeServices", &CallOutcome::Ok),
            ("DescribeTasks", &CallOutcome::Denied),
            ("DescribeServices", &CallOutcome::Throttled),
            ("ListTasks", &CallOutcome::Ok),
        ]
    );
    assert!(calls.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.outcome == CallOutcome::Error("ClusterNotFoundException".into()))
            .count(),
        1
    );
    svc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_service_scales_and_starts_a_deployment_that_protection_holds_up() {
    let svc = started(2).await;
    svc.protect(1, true).await;
    let out = svc
        .client
        .update_service()
        .cluster("local")
        .service("queue-worker")
        .force_new_deployment(true)
        .send()
        .await
        .expect("UpdateService forceNewDeployment");
    let s = out.service().expect("service");
    assert_eq!(s.deployments().len(), 2);
    assert_eq!(s.deployments()[0].status(), Some("PRIMARY"));
    assert!(s
        .task_definition()
        .is_some_and(|t| t.ends_with("queue-worker:2")));

    // Protected task 1 holds the old deployment up; the rest goes on.
    svc.wait("new tasks run, task 2 gone", |c| {
        let s = c.status();
        s.tasks.iter().filter(|t| t.revision == 2).count() == 2 && s.tasks.len() == 3
    })
    .await;
    svc.wait_event("blocked event", |k| {
        matches!(k, EventKind::DeploymentBlocked { protected: 1 })
    })
    .await;
    let s = svc.service().await;
    let d = s.deployments();
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(
        (d[0].status(), d[1].status()),
        (Some("PRIMARY"), Some("ACTIVE"))
    );
    assert!(d[0].task_definition().is_some_and(|t| t.ends_with(":2")));
    assert!(d[1].task_definition().is_some_and(|t| t.ends_with(":1")));
    assert_eq!((d[0].running_count(), d[1].running_count()), (2, 1));
    assert_eq!(
        d[0].rollout_state().map(|r| r.as_str()),
        Some("IN_PROGRESS")
    );
    assert_eq!(s.running_count(), 3);
    assert!(s
        .events()
        .iter()
        .any(|e| e.message().is_some_and(|m| m.contains(
            "was unable to stop old tasks of deployment 2 due to (reason 1 tasks under protection)"
        ))));

    // A new task reports its own revision: task definition, startedBy, metadata.
    let new_deployment = d[0].id().expect("id").to_owned();
    let tasks = svc
        .client
        .describe_tasks()
        .cluster("local")
        .tasks(svc.arn(3))
        .tasks(svc.arn(1))
        .send()
        .await
        .expect("DescribeTasks");
    let t = tasks.tasks();
    assert!(t[0]
        .task_definition_arn()
        .is_some_and(|a| a.ends_with(":2")));
    assert_eq!(t[0].started_by(), Some(new_deployment.as_str()));
    assert!(t[1]
        .task_definition_arn()
        .is_some_and(|a| a.ends_with(":1")));
    assert_eq!(t[1].started_by(), d[1].id());
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("client");
    for (n, revision) in [(3, "2"), (1, "1")] {
        let meta: Value = http
            .get(format!("{}/task", svc.task_env(n, "META").await))
            .send()
            .await
            .expect("GET metadata")
            .json()
            .await
            .expect("JSON");
        assert_eq!(meta["Revision"], revision, "task {n}: {meta}");
        assert_eq!(meta["Family"], "queue-worker");
        assert_eq!(
            meta["Cluster"],
            "arn:aws:ecs:us-east-1:123456789012:cluster/local"
        );
        assert_eq!(meta["TaskARN"], svc.arn(n).as_str());
        assert_eq!(meta["LaunchType"], "FARGATE");
        assert!(meta.get("ServiceName").is_none(), "like Fargate: {meta}");
    }

    // Released: the old task goes, the deployment completes and the old one disappears.
    svc.protect(1, false).await;
    svc.wait("steady on revision 2", |c| {
        let s = c.status();
        s.steady && s.tasks.iter().all(|t| t.revision == 2)
    })
    .await;
    svc.wait_event("deployment completed", |k| {
        matches!(k, EventKind::DeploymentCompleted { revision: 2 })
    })
    .await;
    let s = svc.service().await;
    assert_eq!(s.deployments().len(), 1);
    assert_eq!(s.deployments()[0].id(), Some(new_deployment.as_str()));
    assert_eq!(
        s.deployments()[0].rollout_state().map(|r| r.as_str()),
        Some("COMPLETED")
    );
    let completed =
        format!("(service queue-worker) (deployment {new_deployment}) deployment completed.");
    assert!(s
        .events()
        .iter()
        .any(|e| e.message() == Some(completed.as_str())));

    // Scale to zero through the API, with new deployment settings.
    let out = svc
        .client
        .update_service()
        .cluster("local")
        .service("arn:aws:ecs:us-east-1:123456789012:service/local/queue-worker")
        .desired_count(0)
        .deployment_configuration(
            aws_sdk_ecs::types::DeploymentConfiguration::builder()
                .maximum_percent(100)
                .minimum_healthy_percent(0)
                .build(),
        )
        .send()
        .await
        .expect("UpdateService desiredCount");
    let s = out.service().expect("service");
    assert_eq!(s.desired_count(), 0);
    let dc = s.deployment_configuration().expect("config");
    assert_eq!(
        (dc.maximum_percent(), dc.minimum_healthy_percent()),
        (Some(100), Some(0))
    );
    svc.wait("all gone", |c| c.status().tasks.is_empty()).await;
    let err = svc
        .client
        .update_service()
        .cluster("local")
        .service("queue-worker")
        .task_definition("queue-worker:7")
        .send()
        .await
        .expect_err("no such task definition");
    assert_eq!(err.code(), Some("InvalidParameterException"));
    svc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_reports_service_name_only_when_the_spec_says_so() {
    let (mut spec, logs) = spec(1);
    spec.metadata_service_name = true;
    let svc = start(spec, logs).await;
    let meta_uri = svc.task_env(1, "META").await;
    let meta: Value = reqwest::get(format!("{meta_uri}/task"))
        .await
        .expect("GET metadata")
        .json()
        .await
        .expect("JSON");
    assert_eq!(meta["ServiceName"], "queue-worker");
    assert_eq!(meta["DesiredStatus"], "RUNNING");
    assert_eq!(meta["AvailabilityZone"], "us-east-1a");
    svc.finish().await;
}

/// The order in which tasks started, were told to stop and exited (task numbers).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Step {
    Start(u32),
    Stop(u32),
    Exit(u32),
}

fn steps(c: &Control) -> Vec<Step> {
    c.events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::TaskStarted { task, .. } => Some(Step::Start(task)),
            EventKind::Sigterm {
                task,
                reason: StopReason::Deployment,
            } => Some(Step::Stop(task)),
            EventKind::TaskExited { task, .. } => Some(Step::Exit(task)),
            _ => None,
        })
        .collect()
}

/// Most tasks alive, and fewest running (not told to stop), at any point of `steps`, from the
/// deployment on (2 tasks running when it starts).
fn extremes(steps: &[Step]) -> (usize, usize) {
    let (mut alive, mut running) = (2usize, 2usize);
    let (mut most, mut fewest) = (2, 2);
    for s in steps.iter().skip(2) {
        match s {
            Step::Start(_) => {
                alive += 1;
                running += 1;
            }
            Step::Stop(_) => running -= 1,
            Step::Exit(_) => alive -= 1,
        }
        most = most.max(alive);
        fewest = fewest.min(running);
    }
    (most, fewest)
}

async fn deployment_with(max: u32, min: u32, protect_first: bool) -> (Svc, Vec<Step>) {
    let (mut spec, logs) = spec(2);
    spec.maximum_percent = max;
    spec.minimum_healthy_percent = min;
    let svc = start(spec, logs).await;
    svc.wait("steady", |c| c.status().steady).await;
    if protect_first {
        svc.protect(1, true).await;
    }
    assert_eq!(svc.control.deploy(), 2);
    if protect_first {
        svc.wait_event("held up by task 1", |k| {
            matches!(k, EventKind::DeploymentBlocked { protected: 1 })
        })
        .await;
        // Held: the old task is still there a while later.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let s = svc.control.status();
        assert!(
            s.tasks.iter().any(|t| t.task == 1 && t.stopping.is_none()),
            "{s:?}"
        );
        assert!(!s.steady);
        svc.protect(1, false).await;
    }
    svc.wait_event("deployment completed", |k| {
        matches!(k, EventKind::DeploymentCompleted { revision: 2 })
    })
    .await;
    let status = svc.control.status();
    assert_eq!(status.deployments.len(), 1);
    assert_eq!(status.deployments[0].rollout_state, "COMPLETED");
    assert!(status.tasks.iter().all(|t| t.revision == 2));
    let steps = steps(&svc.control);
    (svc, steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_200_100_starts_the_new_tasks_first() {
    let (svc, steps) = deployment_with(200, 100, false).await;
    // Both new tasks start before any old one is stopped.
    assert_eq!(
        &steps[..4],
        &[
            Step::Start(1),
            Step::Start(2),
            Step::Start(3),
            Step::Start(4)
        ],
        "{steps:?}"
    );
    assert_eq!(extremes(&steps), (4, 2), "{steps:?}");
    svc.finish().await;

    // A protected old task is kept until released; the other goes as soon as the new ones run.
    let (svc, steps) = deployment_with(200, 100, true).await;
    let stop = |n| {
        steps
            .iter()
            .position(|s| *s == Step::Stop(n))
            .expect("stop")
    };
    assert!(stop(2) < stop(1), "{steps:?}");
    assert_eq!(extremes(&steps), (4, 2), "{steps:?}");
    svc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_100_0_stops_old_tasks_first_to_make_room() {
    let (svc, steps) = deployment_with(100, 0, false).await;
    // Never more than 2 tasks alive: both old ones stop, then the new ones start.
    assert_eq!(&steps[2..4], &[Step::Stop(1), Step::Stop(2)], "{steps:?}");
    assert_eq!(extremes(&steps).0, 2, "{steps:?}");
    svc.finish().await;

    // With task 1 protected, task 2 makes room for one new task; the second waits for task 1.
    let (svc, steps) = deployment_with(100, 0, true).await;
    let at = |s| steps.iter().position(|x| *x == s).expect("step");
    assert!(at(Step::Exit(2)) < at(Step::Start(3)), "{steps:?}");
    assert!(at(Step::Start(3)) < at(Step::Stop(1)), "{steps:?}");
    assert!(at(Step::Exit(1)) < at(Step::Start(4)), "{steps:?}");
    assert_eq!(extremes(&steps).0, 2, "{steps:?}");
    svc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_100_50_replaces_one_task_at_a_time() {
    let (svc, steps) = deployment_with(100, 50, false).await;
    assert_eq!(extremes(&steps), (2, 1), "{steps:?}");
    let at = |s| steps.iter().position(|x| *x == s).expect("step");
    // One old task stops, its replacement starts, then the other old task stops.
    assert!(at(Step::Stop(1)) < at(Step::Start(3)), "{steps:?}");
    assert!(at(Step::Start(3)) < at(Step::Stop(2)), "{steps:?}");
    svc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_is_written_as_json_lines_and_served_as_json() {
    let (mut spec, logs) = spec(1);
    let file = logs.with_extension("timeline.jsonl");
    spec.timeline = Some(file.clone());
    let svc = start(spec, logs).await;
    svc.wait("steady", |c| c.status().steady).await;
    svc.control.set_desired(0);
    svc.wait("gone, and steady again", |c| {
        let s = c.status();
        s.tasks.is_empty() && s.steady
    })
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(testkit::local_ecs::serve_control(
        svc.control.clone(),
        listener,
        stop.clone(),
    ));
    let served: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{port}/events?format=json"))
        .await
        .expect("GET /events")
        .json()
        .await
        .expect("JSON");
    let text: Vec<String> = reqwest::get(format!("http://127.0.0.1:{port}/events"))
        .await
        .expect("GET /events")
        .json()
        .await
        .expect("text lines");
    // The control port speaks the ECS API too.
    let via_control = client(&format!("http://127.0.0.1:{port}"))
        .describe_services()
        .cluster("local")
        .services("queue-worker")
        .send()
        .await
        .expect("DescribeServices on the control port");
    assert_eq!(via_control.services()[0].desired_count(), 0);
    stop.cancel();
    let _ = tokio::time::timeout(SECS(5), server).await;

    let written: Vec<Value> = std::fs::read_to_string(&file)
        .expect("timeline file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(written, served);
    assert_eq!(text.len(), served.len());
    let kinds: Vec<&str> = written.iter().filter_map(|v| v["kind"].as_str()).collect();
    for k in [
        "task-started",
        "deployment-completed",
        "steady-state",
        "desired-count",
        "sigterm",
        "task-exited",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    for v in &written {
        assert!(v["at_s"].is_f64() && v["text"].is_string(), "{v}");
        humantime::parse_rfc3339(v["time"].as_str().expect("time")).expect("RFC 3339");
    }
    let desired = written
        .iter()
        .find(|v| v["kind"] == "desired-count")
        .expect("desired-count");
    assert_eq!(
        (desired["from"].as_u64(), desired["to"].as_u64()),
        (Some(1), Some(0))
    );
    svc.finish().await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_port_sets_ecs_faults_and_lists_the_calls() {
    let svc = started(1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(testkit::local_ecs::serve_control(
        svc.control.clone(),
        listener,
        stop.clone(),
    ));
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("client");
    let faults: Value = http
        .put(format!("{base}/ecs/faults"))
        .json(&serde_json::json!({"deny": ["ListTasks"], "throttle": {"DescribeTasks": 1.0}}))
        .send()
        .await
        .expect("PUT /ecs/faults")
        .json()
        .await
        .expect("JSON");
    assert_eq!(faults["deny"], serde_json::json!(["ListTasks"]));
    let err = svc
        .client
        .list_tasks()
        .cluster("local")
        .send()
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some("AccessDeniedException"));
    let calls: Value = http
        .get(format!("{base}/ecs/calls"))
        .send()
        .await
        .expect("GET /ecs/calls")
        .json()
        .await
        .expect("JSON");
    let last = calls
        .as_array()
        .and_then(|c| c.last())
        .expect("a call")
        .clone();
    assert_eq!(last["operation"], "ListTasks");
    assert_eq!(last["outcome"], "denied");
    assert_eq!(last["task"], Value::Null);
    assert!(last["at_s"].is_f64());
    stop.cancel();
    let _ = tokio::time::timeout(SECS(5), server).await;
    svc.finish().await;
}

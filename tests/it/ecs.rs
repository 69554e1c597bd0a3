//! `queue-worker ecs scale|watch` against moto's ECS API (`scripts/setup.sh` installs moto into
//! `.tools/moto`). Each test starts its own moto server on a free loopback port and kills it on
//! drop, so tests share no state.
//!
//! What moto 5.2.5 does and lacks, as these tests rely on it:
//! - it runs no tasks for a service: a new service reports running 0, pending = desired, and
//!   `UpdateService` sets running = desired, pending 0 at once (so a scale to 0 is steady at once);
//! - its services have no events;
//! - it has no `GetTaskProtection` (it answers with an HTML 500 page, which the SDK retries; the
//!   command then says in one line that protection is unknown and goes on);
//! - `ListTasks --service-name` is not filtered: every task of the cluster is listed.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ecs::config::{BehaviorVersion, Region};
use aws_sdk_ecs::types::{ContainerDefinition, LaunchType, Tag};

use crate::support::{repo_root, test_credentials, unique, worker_bin};

/// A moto server of our own; killed (and reaped) on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Self {
        let bin = repo_root().join(".tools/moto/bin/moto_server");
        assert!(
            bin.exists(),
            "moto is not installed: run scripts/setup.sh (scripts/test.sh does)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited at start: {status}");
            }
            assert!(
                Instant::now() < end,
                "moto_server did not answer on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn client(&self) -> aws_sdk_ecs::Client {
        aws_sdk_ecs::Client::from_conf(
            aws_sdk_ecs::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(test_credentials())
                .endpoint_url(&self.endpoint)
                .http_client(queue_worker::http_client())
                .build(),
        )
    }

    /// Env for the binary: everything pointed at moto, nothing from the outer environment.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        env_for(&self.endpoint)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn env_for(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
    ]
}

fn queue_worker(env: &[(&'static str, String)], args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(worker_bin());
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary to the end (bounded: it is killed after 60 s).
pub(crate) async fn run(
    env: &[(&'static str, String)],
    args: &[&str],
) -> (Option<i32>, String, String) {
    let out: Output =
        tokio::time::timeout(Duration::from_secs(60), queue_worker(env, args).output())
            .await
            .expect("queue-worker finishes within 60 s")
            .expect("run queue-worker");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stdout, stderr)
}

/// `queue-worker ecs watch` of one service, polling every 200 ms until `timeout`.
async fn watch(
    moto: &Moto,
    cluster: &str,
    service: &str,
    timeout: &str,
) -> (Option<i32>, String, String) {
    let args = [
        "ecs",
        "watch",
        "--cluster",
        cluster,
        "--service",
        service,
        "--interval",
        "200ms",
        "--timeout",
        timeout,
    ];
    run(&moto.env(), &args).await
}

/// A cluster with one task definition; returns (cluster name, task definition ARN).
async fn cluster(ecs: &aws_sdk_ecs::Client) -> (String, String) {
    let name = unique("cluster");
    ecs.create_cluster()
        .cluster_name(&name)
        .send()
        .await
        .expect("create cluster");
    let td = ecs
        .register_task_definition()
        .family(unique("worker"))
        .container_definitions(
            ContainerDefinition::builder()
                .name("worker")
                .image("queue-worker:test")
                .memory(128)
                .build(),
        )
        .send()
        .await
        .expect("register task definition")
        .task_definition
        .and_then(|t| t.task_definition_arn)
        .expect("task definition arn");
    (name, td)
}

async fn service(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    td: &str,
    desired: i32,
    copilot: Option<(&str, &str, &str)>,
) -> String {
    let name = unique("svc");
    let mut req = ecs
        .create_service()
        .cluster(cluster)
        .service_name(&name)
        .task_definition(td)
        .desired_count(desired);
    if let Some((app, env, svc)) = copilot {
        for (k, v) in [
            ("copilot-application", app),
            ("copilot-environment", env),
            ("copilot-service", svc),
        ] {
            req = req.tags(Tag::builder().key(k).value(v).build());
        }
    }
    req.send().await.expect("create service");
    name
}

async fn desired_count(ecs: &aws_sdk_ecs::Client, cluster: &str, service: &str) -> i32 {
    ecs.describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
        .expect("describe services")
        .services()
        .first()
        .expect("the service")
        .desired_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_finds_the_copilot_service_by_its_tags() {
    let moto = Moto::start();
    let ecs = moto.client();
    let (c, td) = cluster(&ecs).await;
    let app = unique("app");
    // A decoy in the same cluster: same app and env, another service.
    service(&ecs, &c, &td, 1, Some((&app, "test", "other"))).await;
    let svc = service(&ecs, &c, &td, 2, Some((&app, "test", "queue-worker"))).await;

    let (code, out, err) = run(
        &moto.env(),
        &[
            "ecs",
            "scale",
            "--app",
            &app,
            "--env",
            "test",
            "--name",
            "queue-worker",
            "--desired",
            "0",
            "--watch",
            "--timeout",
            "20s",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(desired_count(&ecs, &c, &svc).await, 0);
    assert!(
        out.contains(&format!(
            "service {svc} in cluster {c}: desired count 2 -> 0"
        )),
        "{out}"
    );
    assert!(out.contains("running 0 / desired 0 / pending 0"), "{out}");
    assert!(out.contains("is steady: running 0 of 0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_without_watch_just_sets_the_count() {
    let moto = Moto::start();
    let ecs = moto.client();
    let (c, td) = cluster(&ecs).await;
    let svc = service(&ecs, &c, &td, 0, None).await;
    let (code, out, err) = run(
        &moto.env(),
        &[
            "ecs",
            "scale",
            "--cluster",
            &c,
            "--service",
            &svc,
            "--desired",
            "3",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(desired_count(&ecs, &c, &svc).await, 3);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("desired count 0 -> 3"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_by_cluster_and_service_shows_counts_and_tasks() {
    let moto = Moto::start();
    let ecs = moto.client();
    let (c, td) = cluster(&ecs).await;
    let svc = service(&ecs, &c, &td, 0, None).await;
    // moto lists every task of the cluster for the service, so this one is "the service's".
    ecs.run_task()
        .cluster(&c)
        .task_definition(&td)
        .launch_type(LaunchType::Fargate)
        .started_by("test")
        .send()
        .await
        .expect("run task");

    let (code, out, err) = watch(&moto, &c, &svc, "20s").await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!("watching service {svc} in cluster {c}")),
        "{out}"
    );
    assert!(out.contains("running 0 / desired 0 / pending 0"), "{out}");
    // moto has no GetTaskProtection: one line says so, and the watch goes on.
    assert_eq!(
        out.matches("task protection: unknown (GetTaskProtection failed")
            .count(),
        1,
        "{out}"
    );
    let unknown = out
        .lines()
        .find(|l| l.contains("task protection: unknown"))
        .unwrap_or_default();
    assert!(unknown.len() < 200, "a short line: {unknown}");
    assert!(out.contains("tasks: 1 task (protection unknown)"), "{out}");
    assert!(out.contains("is steady"), "{out}");
    // Counts are printed when they change, not at every poll.
    assert_eq!(out.matches("running 0 / desired 0").count(), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_gives_up_at_the_timeout_when_the_service_is_not_steady() {
    let moto = Moto::start();
    let ecs = moto.client();
    let (c, td) = cluster(&ecs).await;
    // moto never starts tasks: running 0, pending 2 for ever.
    let svc = service(&ecs, &c, &td, 2, None).await;
    let started = Instant::now();
    let (code, out, err) = watch(&moto, &c, &svc, "1s").await;
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(out.contains("running 0 / desired 2 / pending 2"), "{out}");
    assert!(out.contains("gave up after 1s"), "{out}");
    assert!(err.contains("not steady after 1s"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_watch() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let moto = Moto::start();
    let ecs = moto.client();
    let (c, td) = cluster(&ecs).await;
    let svc = service(&ecs, &c, &td, 2, None).await;
    let mut child = queue_worker(
        &moto.env(),
        &[
            "ecs",
            "watch",
            "--cluster",
            &c,
            "--service",
            &svc,
            "--interval",
            "200ms",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.expect("read") {
            if l.contains("Ctrl-C stops watching") {
                return true;
            }
        }
        false
    })
    .await
    .expect("watch starts within 30 s");
    assert!(ready, "watch started");
    let pid = child.id().expect("pid").to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s of SIGINT")
        .expect("wait");
    assert_eq!(status.code(), Some(130));
    // The desired count is left as it was.
    assert_eq!(desired_count(&ecs, &c, &svc).await, 2);
}

#[tokio::test]
async fn no_service_named_exits_2_with_one_line() {
    // Nothing is called: the endpoint is never contacted.
    let env = env_for("http://127.0.0.1:9");
    let (code, out, err) = run(&env, &["ecs", "watch"]).await;
    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for needle in [
        "--cluster/--service or --app/--env/--name",
        "ECS_SERVICE",
        "COPILOT_SERVICE_NAME",
    ] {
        assert!(err.contains(needle), "{needle} in {err}");
    }

    // Part of the Copilot names: the missing ones are named.
    let mut env = env_for("http://127.0.0.1:9");
    env.push(("COPILOT_APPLICATION_NAME", "a".into()));
    let (code, _, err) = run(&env, &["ecs", "scale", "--env", "e", "--desired", "0"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--name missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_matching_no_service_or_several_exit_2() {
    let moto = Moto::start();
    let ecs = moto.client();
    let (c1, td1) = cluster(&ecs).await;
    let (c2, td2) = cluster(&ecs).await;
    let app = unique("app");
    let s1 = service(&ecs, &c1, &td1, 1, Some((&app, "test", "queue-worker"))).await;
    let s2 = service(&ecs, &c2, &td2, 1, Some((&app, "test", "queue-worker"))).await;

    let args = |name: &'static str| {
        vec![
            "ecs".to_string(),
            "scale".into(),
            "--app".into(),
            app.clone(),
            "--env".into(),
            "test".into(),
            "--name".into(),
            name.into(),
            "--desired".into(),
            "0".into(),
        ]
    };
    let none = args("nothing-by-this-name");
    let (code, out, err) = run(
        &moto.env(),
        &none.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--app/--env/--name"), "{err}");
    assert!(err.contains("COPILOT_APPLICATION_NAME"), "{err}");
    assert!(err.contains("no active ECS service is tagged"), "{err}");

    let both = args("queue-worker");
    let (code, out, err) = run(
        &moto.env(),
        &both.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("2 services are tagged"), "{err}");
    assert!(err.contains(&s1) && err.contains(&s2), "{err}");
    // Nothing was scaled.
    assert_eq!(desired_count(&ecs, &c1, &s1).await, 1);
    assert_eq!(desired_count(&ecs, &c2, &s2).await, 1);

    // --cluster narrows the search to one.
    let mut one = args("queue-worker");
    one.extend(["--cluster".into(), c1.clone()]);
    let (code, out, err) = run(
        &moto.env(),
        &one.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(desired_count(&ecs, &c1, &s1).await, 0);
    assert_eq!(desired_count(&ecs, &c2, &s2).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_or_cluster_exits_2() {
    let moto = Moto::start();
    let ecs = moto.client();
    let (c, _) = cluster(&ecs).await;
    let (code, _, err) = run(
        &moto.env(),
        &["ecs", "watch", "--cluster", &c, "--service", "nope"],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no active service nope"), "{err}");
    let (code, _, err) = run(
        &moto.env(),
        &[
            "ecs",
            "watch",
            "--cluster",
            "no-such-cluster",
            "--service",
            "nope",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--cluster/--service"), "{err}");
}

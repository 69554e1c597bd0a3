//! The `--exec` handler and `--job-timeout`, with real child processes against fauxqs.

use std::path::Path;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use queue_worker::{ExecHandler, Protector};

use crate::support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// `sh -c SCRIPT _ DIR`: the test's own program (the worker itself never uses a shell).
fn sh(script: &str, dir: &Path) -> ExecHandler {
    ExecHandler {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            script.into(),
            "_".into(),
            dir.display().to_string(),
        ],
        kill_grace: SECS(2),
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Sends `body` with the string attribute `colour` = `blue`; returns the message id.
async fn send_blue(c: &aws_sdk_sqs::Client, q: &str, body: &str) -> String {
    let attr = MessageAttributeValue::builder()
        .data_type("String")
        .string_value("blue")
        .build()
        .expect("attr");
    c.send_message()
        .queue_url(q)
        .message_body(body)
        .message_attributes("colour", attr)
        .send()
        .await
        .expect("send")
        .message_id
        .expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_gets_body_on_stdin_and_metadata_in_env_and_exit_0_deletes() {
    let c = client();
    let q = create_queue(&c, "exec-ok", &[]).await;
    let dir = temp_dir("exec-ok");
    let evil = "$(touch INJECTED); `touch INJECTED2`; ../../etc/passwd";
    let id = send_blue(&c, &q, evil).await;
    let script = r#"cat > "$1/$MESSAGE_ID.body"; printf '%s %s' "$RECEIVE_COUNT" "$MESSAGE_ATTR_COLOUR" > "$1/$MESSAGE_ID.env"; echo "hello from the job""#;
    let w = start(fast_config(&q), Protector::disabled(), sh(script, &dir)).await;
    assert!(
        wait_until(SECS(10), || async { counts(&c, &q).await == (0, 0) }).await,
        "deleted after exit 0"
    );
    let snap = w.stop().await;
    assert_eq!(snap.jobs_succeeded, 1);
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("{id}.body"))).expect("body"),
        evil,
        "body passed verbatim"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("{id}.env"))).expect("env"),
        "1 blue"
    );
    assert!(
        !Path::new("INJECTED").exists() && !dir.join("INJECTED").exists(),
        "the body never ran as a command"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_nonzero_retries_and_65_dead_letters_at_once() {
    let c = client();
    let q = create_queue(&c, "exec-fail", &[]).await;
    let dlq = create_queue(&c, "exec-dlq", &[]).await;
    send_bodies(&c, &q, &["retry-me", "poison"]).await;
    let dir = temp_dir("exec-fail");
    let script = r#"body=$(cat); echo "$RECEIVE_COUNT" >> "$1/$body"; [ "$body" = poison ] && exit 65; [ "$RECEIVE_COUNT" -ge 2 ] && exit 0; exit 3"#;
    let mut cfg = fast_config(&q);
    cfg.dead_letter = Some(queue_worker::DeadLetterConfig {
        queue_url: dlq.clone(),
        max_receives: 5,
    });
    let w = start(cfg, Protector::disabled(), sh(script, &dir)).await;
    assert!(wait_until(SECS(15), || async { counts(&c, &q).await == (0, 0) }).await);
    let snap = w.stop().await;
    assert_eq!(
        std::fs::read_to_string(dir.join("retry-me")).expect("attempts"),
        "1\n2\n",
        "failed once, retried, succeeded"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("poison")).expect("attempts"),
        "1\n",
        "exit 65: no retry"
    );
    assert_eq!(snap.jobs_dead_lettered, 1);
    assert_eq!(counts(&c, &dlq).await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_timeout_sends_sigterm_to_the_child_and_counts_a_failure() {
    let c = client();
    let q = create_queue(&c, "exec-timeout", &[]).await;
    send_bodies(&c, &q, &["x"]).await;
    let dir = temp_dir("exec-timeout");
    let script = r#"trap 'echo term > "$1/term"; exit 143' TERM; sleep 30 & wait"#;
    let mut cfg = fast_config(&q);
    cfg.job_timeout = Some(SECS(1));
    let w = start(cfg, Protector::disabled(), sh(script, &dir)).await;
    assert!(
        wait_until(SECS(10), || async { w.snapshot().jobs_timed_out == 1 }).await,
        "timed out"
    );
    assert!(
        wait_until(SECS(3), || async { dir.join("term").exists() }).await,
        "the child really got SIGTERM"
    );
    let snap = w.stop().await;
    assert_eq!(snap.jobs_failed, 1);
    assert_eq!(snap.messages_deleted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_sends_sigterm_to_the_child_and_returns_the_message() {
    let c = client();
    let q = create_queue(&c, "exec-shutdown", &[]).await;
    send_bodies(&c, &q, &["x"]).await;
    let dir = temp_dir("exec-shutdown");
    let script =
        r#"touch "$1/started"; trap 'echo term > "$1/term"; exit 143' TERM; sleep 30 & wait"#;
    let mut cfg = fast_config(&q);
    cfg.shutdown_timeout = SECS(1);
    let w = start(cfg, Protector::disabled(), sh(script, &dir)).await;
    assert!(wait_until(SECS(10), || async { dir.join("started").exists() }).await);
    let snap = w.stop().await;
    assert_eq!(snap.jobs_cancelled, 1);
    assert!(
        wait_until(SECS(3), || async { dir.join("term").exists() }).await,
        "SIGTERM reached the child"
    );
    assert_eq!(
        counts(&c, &q).await,
        (1, 0),
        "message back on the queue at once"
    );
}

/// (peer, body, headers, arrival) of one forwarded request.
type Request = (
    std::net::SocketAddr,
    String,
    HashMap<String, String>,
    std::time::Instant,
);

/// A local app for `--forward-to`: records every request, answers by body.
#[derive(Clone, Default)]
struct App {
    seen: Arc<Mutex<Vec<Request>>>,
    health_calls: Arc<Mutex<u32>>,
}

async fn serve_app(app: App) -> String {
    use axum::extract::{ConnectInfo, State};
    use axum::http::{HeaderMap, StatusCode};
    let router = axum::Router::new()
        .route(
            "/work",
            axum::routing::post(
                |State(app): State<App>,
                 ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
                 headers: HeaderMap,
                 body: String| async move {
                    let h = headers
                        .iter()
                        .map(|(k, v)| {
                            (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                        })
                        .collect();
                    let n = {
                        let mut seen = app.seen.lock().expect("lock");
                        seen.push((peer, body.clone(), h, std::time::Instant::now()));
                        seen.iter().filter(|s| s.1 == body).count()
                    };
                    match body.as_str() {
                        "busy" if n == 1 => {
                            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "2")])
                                .into_response()
                        }
                        "bad" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                        _ => StatusCode::OK.into_response(),
                    }
                },
            ),
        )
        .route(
            "/health",
            axum::routing::get(|State(app): State<App>| async move {
                let mut n = app.health_calls.lock().expect("lock");
                *n += 1;
                if *n < 3 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }),
        )
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    format!("http://{addr}")
}

use axum::response::IntoResponse;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_posts_with_sqsd_headers_honours_retry_after_and_reuses_connections() {
    let c = client();
    let q = create_queue(&c, "forward", &[]).await;
    let app = App::default();
    let base = serve_app(app.clone()).await;
    let handler =
        queue_worker::ForwardHandler::new(&format!("{base}/work"), SECS(5)).expect("client");
    let cancel = tokio_util::sync::CancellationToken::new();
    assert!(handler.wait_ready(&format!("{base}/health"), &cancel).await);
    assert_eq!(
        *app.health_calls.lock().expect("lock"),
        3,
        "polled health until it answered 200"
    );

    let id = send_blue(&c, &q, "ok").await;
    let mut bodies = vec!["busy"];
    bodies.extend(std::iter::repeat_n("ok", 20));
    send_bodies(&c, &q, &bodies).await;
    send_bodies(&c, &q, &["bad"]).await;
    let mut cfg = fast_config(&q);
    cfg.concurrency = 2;
    let w = start(cfg, Protector::disabled(), handler).await;
    assert!(
        wait_until(SECS(15), || async { w.snapshot().messages_deleted == 22 }).await,
        "ok and busy (after its retry) deleted"
    );
    let snap = w.stop().await;
    assert!(
        snap.jobs_failed >= 2,
        "busy once, bad at least once: {snap:?}"
    );
    let seen = app.seen.lock().expect("lock").clone();
    let first = seen
        .iter()
        .find(|s| s.2.get("x-aws-sqsd-msgid") == Some(&id))
        .expect("ok message forwarded");
    assert_eq!(
        first.2.get("x-aws-sqsd-receive-count").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        first.2.get("x-aws-sqsd-attr-colour").map(String::as_str),
        Some("blue")
    );
    assert!(first.2.contains_key("x-aws-sqsd-first-received-at"));
    let busy: Vec<_> = seen.iter().filter(|s| s.1 == "busy").collect();
    assert_eq!(busy.len(), 2);
    assert!(
        busy[1].3 - busy[0].3 >= Duration::from_millis(1900),
        "came back after Retry-After: {:?}",
        busy[1].3 - busy[0].3
    );
    let peers: std::collections::HashSet<_> = seen.iter().map(|s| s.0).collect();
    assert!(
        peers.len() <= 4,
        "{} requests over {} connections",
        seen.len(),
        peers.len()
    );
    assert_eq!(
        still_queued(&c, &q).await,
        1,
        "the failing one is still queued"
    );
}

/// With two queues, each forwarded message names the queue it came from (`X-Aws-Sqsd-Queue`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_names_the_queue_each_message_came_from() {
    let c = client();
    let a = create_queue(&c, "forward-a", &[]).await;
    let b = create_queue(&c, "forward-b", &[]).await;
    let app = App::default();
    let base = serve_app(app.clone()).await;
    let handler =
        queue_worker::ForwardHandler::new(&format!("{base}/work"), SECS(5)).expect("client");
    send_bodies(&c, &a, &["from-a", "from-a", "from-a"]).await;
    send_bodies(&c, &b, &["from-b", "from-b", "from-b", "from-b"]).await;
    let mut cfg = fast_config(&a);
    cfg.extra_queue_urls = vec![b.clone()];
    let w = start(cfg, Protector::disabled(), handler).await;
    assert!(
        wait_until(SECS(15), || async { w.snapshot().messages_deleted == 7 }).await,
        "every message forwarded and deleted"
    );
    w.stop().await;
    let name = |url: &str| url.rsplit('/').next().expect("name").to_string();
    let seen = app.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 7);
    for (_, body, headers, _) in &seen {
        let want = if body == "from-a" { name(&a) } else { name(&b) };
        assert_eq!(
            headers.get("x-aws-sqsd-queue"),
            Some(&want),
            "{body} names its own queue"
        );
    }
}

//! Credentials from an ECS-style container credentials endpoint (on loopback), valid for 4 more
//! minutes: the worker fetches them once per run, with either SQS path, instead of once per
//! request (on ECS that endpoint throttles, and every fetch is a round trip).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::support::*;

/// Serves `GET /creds` as the ECS agent does, counting the fetches.
async fn credentials_endpoint() -> (String, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let app = axum::Router::new().route(
        "/creds",
        axum::routing::get(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                let expires = SystemTime::now() + Duration::from_secs(240);
                axum::Json(serde_json::json!({
                    "AccessKeyId": "ASIATESTKEY",
                    "SecretAccessKey": "secret",
                    "Token": "session-token",
                    "Expiration": humantime::format_rfc3339_seconds(expires).to_string(),
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/creds"), fetches)
}

/// Drains `n` zero-length jobs with `--sqs-client kind`; returns the credential fetches.
async fn drain_with(kind: &str, n: usize) -> usize {
    let c = client();
    let q = create_queue(&c, &format!("creds-{kind}"), &[]).await;
    send_bodies(&c, &q, &vec!["0"; n]).await;
    let (uri, fetches) = credentials_endpoint().await;
    let mut child = Command::new(worker_bin())
        .args([
            "run",
            "--queue-url",
            &q,
            "--wait-time",
            "1s",
            "--sqs-client",
            kind,
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", &fauxqs().endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .expect("spawn worker");
    let drained = wait_until(Duration::from_secs(30), || async {
        counts(&c, &q).await == (0, 0)
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        drained,
        "{kind}: the queue drained with endpoint credentials"
    );
    fetches.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_with_minutes_left_are_fetched_once_per_run_on_either_path() {
    let n = 300;
    let direct = drain_with("direct", n).await;
    let sdk = drain_with("sdk", n).await;
    report_drill(
        "credentials",
        &serde_json::json!({ "messages": n, "credential_fetches": { "direct": direct, "sdk": sdk } }),
    );
    assert_eq!(
        direct, 1,
        "the direct path fetched {direct} times for {n} messages"
    );
    assert_eq!(sdk, 1, "the SDK path fetched {sdk} times");
}

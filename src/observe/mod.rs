//! Health and metrics beside the poll loop: `/health` (is the loop alive?) and `/metrics`
//! (Prometheus text) on `--metrics-addr`, and the probe behind `queue-worker health`.

pub(crate) mod health;
pub(crate) mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::yielding::Lever;
use health::Health;

pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Moves the lever, for a caller on this host only: the metrics address may be reachable from
/// elsewhere, a drain must not be.
async fn lever_route(peer: SocketAddr, lever: &Lever, drain: bool) -> (StatusCode, &'static str) {
    if !peer.ip().is_loopback() {
        return (StatusCode::FORBIDDEN, "only from this host\n");
    }
    if drain {
        lever.drain();
        (
            StatusCode::OK,
            "draining: no new messages; protection goes once running jobs end\n",
        )
    } else {
        lever.resume();
        (StatusCode::OK, "resumed: taking messages again\n")
    }
}

/// Serves `/health`, `/metrics`, and `POST /drain` and `POST /resume` (from this host) until
/// `stop` fires.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    render: Render,
    lever: Lever,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (drain_lever, resume_lever) = (lever.clone(), lever);
    let app = axum::Router::new()
        .route(
            "/drain",
            post(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                let lever = drain_lever.clone();
                async move { lever_route(peer, &lever, true).await }
            }),
        )
        .route(
            "/resume",
            post(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                let lever = resume_lever.clone();
                async move { lever_route(peer, &lever, false).await }
            }),
        )
        .route(
            "/health",
            get(move || {
                let h = health.clone();
                async move {
                    match h.check() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("unhealthy: {why}\n"),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let r = render.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        r(),
                    )
                }
            }),
        );
    Ok(tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    }))
}

/// Asks the worker serving `addr` (its `--metrics-addr`) for `/health`: its answer when healthy,
/// why not otherwise (the `queue-worker health` command, a container health check).
pub async fn health_probe(addr: SocketAddr) -> Result<String, String> {
    ask(addr, "/health", false).await
}

/// `POST /drain` (or `/resume`) to the worker serving `addr`: its answer, or why it failed.
pub(crate) async fn move_lever(addr: SocketAddr, drain: bool) -> Result<String, String> {
    ask(addr, if drain { "/drain" } else { "/resume" }, true).await
}

async fn ask(addr: SocketAddr, path: &str, post: bool) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("http://{addr}{path}");
    let req = if post {
        client.post(url)
    } else {
        client.get(url)
    };
    let resp = req
        .send()
        .await
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    let ok = resp.status().is_success();
    let body = resp.text().await.unwrap_or_default();
    if ok {
        Ok(body.trim().to_string())
    } else {
        Err(body.trim().to_string())
    }
}

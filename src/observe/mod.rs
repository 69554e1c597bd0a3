//! Health and metrics beside the poll loop: `/health` (is the loop alive?) and `/metrics`
//! (Prometheus text) on `--metrics-addr`, and the probe behind `queue-worker health`.

pub(crate) mod health;
pub(crate) mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use health::Health;

pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `/health` and `/metrics` until `stop` fires.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    render: Render,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new()
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
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(format!("http://{addr}/health"))
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

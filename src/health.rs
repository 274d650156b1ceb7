//! The HTTP endpoint operators and orchestrators poll, and the readiness
//! state behind it.
//!
//! - `/metrics`: the Prometheus text exposition of [`crate::metrics`];
//! - `/health/live`: 200 while the process serves HTTP at all;
//! - `/health/ready`: 200 when the relay is a member of its consumer group
//!   *and* PostgreSQL answers a ping now, 503 otherwise, with a one-line
//!   reason in the body.
//!
//! The subscription state is process-wide, set by [`crate::relay`] through
//! [`set_state`], because one process runs one relay. PostgreSQL is pinged
//! on every readiness request (through a one-connection pool of its own)
//! rather than trusted from the last write, so an idle relay does not
//! report ready while its database is gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::metrics::{self, SubscriptionState};
use crate::store::Store;

/// The content type of Prometheus's text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a readiness probe waits for PostgreSQL.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How often histogram buffers are folded into the exposition.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static STATE: AtomicU8 = AtomicU8::new(0);

/// Records where the relay stands with its group, for readiness and for
/// the subscription-state gauge.
pub fn set_state(state: SubscriptionState) {
    STATE.store(state as u8, Ordering::SeqCst);
    metrics::set_state(state);
}

/// Whether the relay is currently a member of its group.
pub fn is_subscribed() -> bool {
    STATE.load(Ordering::SeqCst) == SubscriptionState::Subscribed as u8
}

/// What the handlers share.
struct Shared {
    metrics: PrometheusHandle,
    store: Store,
}

/// Binds `listen` and serves the endpoint in the background. Returns the
/// bound address (useful when the port was 0).
pub async fn serve(
    listen: &str,
    metrics: PrometheusHandle,
    store: Store,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = router(Arc::new(Shared { metrics, store }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http endpoint stopped");
        }
    });
    Ok(addr)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .with_state(shared)
}

async fn render_metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let body = shared.metrics.render();
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], body)
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    if !is_subscribed() {
        let reason = "not ready: not subscribed to the consumer group\n";
        return (StatusCode::SERVICE_UNAVAILABLE, reason.into());
    }
    match tokio::time::timeout(PING_TIMEOUT, shared.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => {
            let reason = format!("not ready: postgres: {e}\n");
            (StatusCode::SERVICE_UNAVAILABLE, reason)
        }
        Err(_) => {
            let reason = "not ready: postgres did not answer in time\n";
            (StatusCode::SERVICE_UNAVAILABLE, reason.into())
        }
    }
}

//! The HTTP listener for Prometheus and Kubernetes: `/metrics`, `/healthz` and `/readyz`.
//!
//! `/healthz` returns 200 while the process runs. `/readyz` returns 200 only when the bundle is
//! loaded, a test inference has run, and the worker is connected to the broker and consuming.
//! Otherwise it returns 503, with the failing checks in the body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Readiness checks, updated by the worker as it starts and as the broker comes and goes.
#[derive(Debug, Default)]
pub struct Readiness {
    model: AtomicBool,
    consuming: AtomicBool,
    execution_provider: std::sync::OnceLock<String>,
}

impl Readiness {
    /// Marks the model ready after its test inference, naming the execution provider in use.
    pub fn set_model_ready(&self, execution_provider: &str) {
        let _ = self.execution_provider.set(execution_provider.to_owned());
        self.model.store(true, Ordering::SeqCst);
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::SeqCst);
    }

    /// Returns true if and only if every check passes.
    pub fn is_ready(&self) -> bool {
        self.model.load(Ordering::SeqCst) && self.consuming.load(Ordering::SeqCst)
    }

    fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "ready": self.is_ready(),
            "model_loaded": self.model.load(Ordering::SeqCst),
            "broker_consuming": self.consuming.load(Ordering::SeqCst),
            "execution_provider": self.execution_provider.get(),
        })
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// Binds the listener, so that a taken address fails the start before the model loads.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    Ok(listener)
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, readiness)).await
}

fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(report_readiness))
        .with_state(AppState { metrics, readiness })
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn report_readiness(State(state): State<AppState>) -> impl IntoResponse {
    let status = if state.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(state.readiness.report()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_model_and_broker() {
        let readiness = Readiness::default();
        assert!(!readiness.is_ready());

        readiness.set_model_ready("cpu");
        assert!(!readiness.is_ready(), "not consuming yet");

        readiness.set_consuming(true);
        assert!(readiness.is_ready());

        readiness.set_consuming(false);
        assert!(!readiness.is_ready(), "broker lost");
    }
}

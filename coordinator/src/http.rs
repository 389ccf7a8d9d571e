//! The coordinator's HTTP side: `/healthz`, `/metrics` and a JSON API for status and audit.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::CoordinatorError;
use crate::release::Releases;

#[derive(Clone)]
struct AppState {
    releases: Releases,
    metrics: PrometheusHandle,
}

pub fn router(releases: Releases, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics))
        .route("/v1/ns/{ns}/status", get(status))
        .route("/v1/ns/{ns}/audit", get(audit))
        .with_state(AppState { releases, metrics })
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

async fn status(State(state): State<AppState>, Path(ns): Path<String>) -> Response {
    match state.releases.status(&ns).await {
        Ok(status) => Json(status).into_response(),
        Err(error) => error_response(error),
    }
}

async fn audit(State(state): State<AppState>, Path(ns): Path<String>) -> Response {
    match state.releases.audit_trail(&ns, true).await {
        Ok(trail) => Json(trail).into_response(),
        Err(error) => error_response(error),
    }
}

fn error_response(error: CoordinatorError) -> Response {
    let status: StatusCode = error.http_status();
    tracing::info!(%error, "http request failed");
    (
        status,
        Json(serde_json::json!({"error": error.to_string()})),
    )
        .into_response()
}

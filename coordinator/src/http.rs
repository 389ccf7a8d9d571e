//! The coordinator's HTTP side: `/healthz`, `/metrics` and a JSON API for status and audit.
//!
//! `/healthz` and `/metrics` are always open. With `--auth`, the JSON API needs a bearer token
//! of a user with viewer rights, like the gRPC reads: 401 without a known token, 403 without the
//! role, both with a JSON error body and audited like every denial.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{Credentials, Gate, Rpc};
use crate::error::CoordinatorError;
use crate::release::Releases;

#[derive(Clone)]
struct AppState {
    releases: Releases,
    gate: Gate,
    metrics: PrometheusHandle,
}

pub fn router(releases: Releases, gate: Gate, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics))
        .route("/v1/ns/{ns}/status", get(status))
        .route("/v1/ns/{ns}/audit", get(audit))
        .with_state(AppState {
            releases,
            gate,
            metrics,
        })
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// The bearer token and claimed name of an HTTP request.
fn credentials(headers: &HeaderMap) -> Credentials {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Credentials {
        authorization: text(header::AUTHORIZATION.as_str()),
        claimed_actor: text("x-switchboard-actor"),
    }
}

async fn status(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = state
        .gate
        .admit(&credentials(&headers), Rpc::Status, &ns)
        .await
    {
        return error_response(error);
    }
    match state.releases.status(&ns).await {
        Ok(status) => Json(status).into_response(),
        Err(error) => error_response(error),
    }
}

async fn audit(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = state
        .gate
        .admit(&credentials(&headers), Rpc::Audit, &ns)
        .await
    {
        return error_response(error);
    }
    match state.releases.audit_trail(&ns, true).await {
        Ok(trail) => Json(trail).into_response(),
        Err(error) => error_response(error),
    }
}

fn error_response(error: CoordinatorError) -> Response {
    let status: StatusCode = error.http_status();
    tracing::info!(%error, "http request failed");
    let body = Json(serde_json::json!({"error": error.to_string()}));
    if status == StatusCode::UNAUTHORIZED {
        return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
    }
    (status, body).into_response()
}

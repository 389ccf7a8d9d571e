//! The sidecar's HTTP API on localhost: item reads, prefix reads, reports, health and status.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use switchboard_runtime::host::HostAllowlist;

use crate::serve::{ReadError, Served};
use crate::snapshot::Choice;
use crate::telemetry;

pub const CONSUMER_HEADER: &str = "x-switchboard-consumer";
/// Largest report body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(served: Arc<Served>, allowlist: HostAllowlist) -> Router {
    // Reads, reports and the status need the bearer token when one is set; the probes and
    // the metrics do not.
    let api = Router::new()
        .route("/v1/ns/{ns}/items/{*key}", get(get_item))
        .route("/v1/ns/{ns}/items", get(list_items))
        .route("/v1/ns/{ns}/report", post(report))
        .route("/v1/status", get(status))
        .route_layer(axum::middleware::from_fn_with_state(
            served.clone(),
            require_token,
        ));
    Router::new()
        .merge(api)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(
            switchboard_runtime::json_errors::json_errors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(allowlist),
            switchboard_runtime::host::refuse_other_hosts,
        ))
        .with_state(served)
}

/// Refuses a request without the bearer token, when the sidecar has one.
async fn require_token(
    State(served): State<Arc<Served>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if served.authorized(authorization) {
        return next.run(request).await;
    }
    json_error(
        StatusCode::UNAUTHORIZED,
        "this sidecar needs its bearer token: Authorization: Bearer <token>".into(),
    )
}

/// Every error answer is a JSON body `{"error": ...}`, including axum's own rejections.
fn json_error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn rejected(rejection: impl IntoResponse + std::fmt::Display) -> Response {
    let message = rejection.to_string();
    json_error(rejection.into_response().status(), message)
}

#[derive(Deserialize)]
struct ReadParams {
    consumer: Option<String>,
    prefix: Option<String>,
}

fn consumer_of<'a>(headers: &'a HeaderMap, params: &'a ReadParams) -> Option<&'a str> {
    headers
        .get(CONSUMER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|c| !c.is_empty())
        .or(params.consumer.as_deref())
}

impl IntoResponse for ReadError {
    fn into_response(self) -> Response {
        let status = match self {
            ReadError::UnknownNamespace(_) | ReadError::UnknownKey { .. } => StatusCode::NOT_FOUND,
            ReadError::NotLoaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ReadError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ReadError::UnknownVersion { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ReadError::CountsFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut body = json!({"error": self.to_string()});
        if let ReadError::UnknownVersion {
            version, accepted, ..
        } = self
        {
            body["version"] = json!(version);
            body["accepted_versions"] = json!(accepted);
        }
        (status, Json(body)).into_response()
    }
}

impl From<ReadError> for Response {
    fn from(error: ReadError) -> Self {
        error.into_response()
    }
}

fn served_headers(response: &mut Response, choice: &Choice<'_>) {
    let headers = response.headers_mut();
    headers.insert(
        "x-switchboard-slot",
        HeaderValue::from_static(choice.slot.as_str()),
    );
    if let Ok(version) = HeaderValue::from_str(&choice.set.version) {
        headers.insert("x-switchboard-version", version);
    }
    headers.insert("x-switchboard-epoch", HeaderValue::from(choice.epoch));
}

fn record_read(ns: &str, choice: &Choice<'_>, started: Instant) {
    metrics::counter!(telemetry::READS, "namespace" => ns.to_string(), "slot" => choice.slot.as_str(), "version" => choice.set.version.clone()).increment(1);
    metrics::histogram!(telemetry::READ_SECONDS).record(started.elapsed().as_secs_f64());
}

async fn get_item(
    State(served): State<Arc<Served>>,
    Path((ns, key)): Path<(String, String)>,
    query: Result<Query<ReadParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    // A query that does not parse is a JSON 400 like every other error.
    let Query(params) = query.map_err(rejected)?;
    let started = Instant::now();
    let snapshot = served.snapshot(&ns)?;
    let choice = snapshot.choose(served.consumer(consumer_of(&headers, &params)));
    let mut response = match choice.set.items.get(&key) {
        Some(value) => {
            let mut response = Response::new(Body::from(bytes::Bytes::copy_from_slice(value)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        None => ReadError::UnknownKey {
            namespace: ns.clone(),
            key,
        }
        .into_response(),
    };
    served_headers(&mut response, &choice);
    record_read(&ns, &choice, started);
    Ok(response)
}

async fn list_items(
    State(served): State<Arc<Served>>,
    Path(ns): Path<String>,
    query: Result<Query<ReadParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    // A query that does not parse is a JSON 400 like every other error.
    let Query(params) = query.map_err(rejected)?;
    let started = Instant::now();
    let snapshot = served.snapshot(&ns)?;
    let choice = snapshot.choose(served.consumer(consumer_of(&headers, &params)));
    let prefix = params.prefix.as_deref().unwrap_or("");
    // Values are already canonical JSON: the answer is assembled from them without parsing.
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"slot\":\"");
    body.extend_from_slice(choice.slot.as_str().as_bytes());
    body.extend_from_slice(b"\",\"version\":");
    body.extend_from_slice(json!(choice.set.version).to_string().as_bytes());
    body.extend_from_slice(format!(",\"epoch\":{},\"items\":{{", choice.epoch).as_bytes());
    for (i, (key, value)) in choice.set.items.with_prefix(prefix).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(json!(key).to_string().as_bytes());
        body.push(b':');
        body.extend_from_slice(value);
    }
    body.extend_from_slice(b"}}");
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    served_headers(&mut response, &choice);
    record_read(&ns, &choice, started);
    Ok(response)
}

/// Unknown fields are refused: `{"error": 5}` for `errors` would otherwise count nothing, and
/// say nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    version: String,
    #[serde(default)]
    ok: u64,
    #[serde(default)]
    errors: u64,
}

async fn report(
    State(served): State<Arc<Served>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, Response> {
    // Only JSON: a browser may send `text/plain` across origins without asking first, so a
    // report in any other type is refused before it is read.
    if !switchboard_runtime::json_errors::says_json(&headers) {
        return Err(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a report must be sent as Content-Type: application/json".into(),
        ));
    }
    let body = body.map_err(rejected)?;
    let report: ReportBody = serde_json::from_slice(&body).map_err(|e| {
        ReadError::BadRequest(format!(
            "report body must be {{\"version\": V, \"ok\": N, \"errors\": M}}: {e}"
        ))
    })?;
    served.report(&ns, &report.version, report.ok, report.errors)?;
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true}))).into_response())
}

async fn readyz(State(served): State<Arc<Served>>) -> Response {
    let mut waiting: Vec<&str> = served
        .namespaces
        .values()
        .filter(|ns| ns.current().is_none())
        .map(|ns| ns.name.as_str())
        .collect();
    waiting.sort_unstable();
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({"ready": true}))).into_response()
    } else {
        let body = json!({"ready": false, "not_loaded": waiting});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn status(State(served): State<Arc<Served>>) -> Json<serde_json::Value> {
    let mut namespaces = serde_json::Map::new();
    for (name, ns) in &served.namespaces {
        let snapshot = ns.current();
        let sync = ns.sync_state();
        let loaded: Vec<_> = snapshot
            .as_ref()
            .map(|s| {
                s.served_sets()
                    .into_iter()
                    .map(|(slot, set)| {
                        json!({
                            "slot": slot,
                            "version": set.version,
                            "checksum": set.checksum,
                            "items": set.items.len(),
                            "bytes": set.items.bytes(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        namespaces.insert(
            name.clone(),
            json!({
                "epoch": snapshot.as_ref().map_or(0, |s| s.routing.epoch),
                "active": snapshot.as_ref().map(|s| json!({"slot": s.routing.active.slot, "version": s.routing.active.version})),
                "canary": snapshot.as_ref().and_then(|s| s.routing.live_canary()).map(|c| json!({"slot": c.slot, "version": c.version, "percent": switchboard_proto::bucket::percent(c.weight_bp)})),
                "loaded": loaded,
                "etcd_reachable": sync.etcd_reachable,
                "source": sync.source,
                "disk_copy_epoch": sync.disk_copy_epoch,
                "disk_copy_error": sync.disk_copy_error,
                "last_sync_ms": sync.last_sync_ms,
                "last_error": sync.last_error,
                "baking": snapshot.as_ref().and_then(|s| s.baking()).map(|(previous, until_ms, held)| json!({
                    "slot": previous.slot,
                    "version": previous.version,
                    "until_ms": until_ms,
                    "loaded": held.is_some(),
                })),
                "reports": ns.reports(),
                // A synchronized flip: the set held for it, the routing waiting for its
                // activation point, and when this sidecar last switched (Unix microseconds).
                "prepared": sync.prepared,
                "pending": sync.pending_epoch.map(|epoch| json!({"epoch": epoch, "activate_at_ms": sync.pending_activate_at_ms})),
                "activated_epoch": sync.activated_epoch,
                "activated_at_us": sync.activated_at_us,
            }),
        );
    }
    Json(json!({"id": served.id, "started_at_ms": served.started_at_ms, "namespaces": namespaces}))
}

async fn render_metrics(State(served): State<Arc<Served>>) -> String {
    let Some(handle) = served.metrics.as_ref() else {
        return String::new();
    };
    telemetry::update_gauges(&served, switchboard_proto::time::now_ms());
    handle.render()
}

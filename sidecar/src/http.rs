//! The sidecar's HTTP API on localhost: item reads and prefix reads (conditional, long-polled
//! or pinned to a version), the change feed, reports, health and status.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

use crate::changes::{Feed, LastEventId};
use crate::serve::{ReadError, Reading, Served, item_etag, items_etag, none_match};
use crate::telemetry;

pub const CONSUMER_HEADER: &str = "x-switchboard-consumer";
/// A read pinned to a version names it in this header.
pub const VERSION_HEADER: &str = "x-switchboard-version";
/// The longest a long poll (`?wait=`) waits: below the listener's idle timeout (60 s), which
/// would otherwise close the connection of a poll that waits silently.
pub const MAX_WAIT: Duration = Duration::from_secs(50);
/// Largest report body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(served: Arc<Served>, allowlist: HostAllowlist) -> Router {
    // Reads, reports and the status need the bearer token when one is set; the probes and
    // the metrics do not.
    let api = Router::new()
        .route("/v1/ns/{ns}/items/{*key}", get(get_item))
        .route("/v1/ns/{ns}/items", get(list_items))
        .route("/v1/ns/{ns}/events", get(events))
        .route(
            "/ofrep/v1/evaluate/flags/{*key}",
            post(crate::ofrep::evaluate),
        )
        .route("/ofrep/v1/evaluate/flags", post(crate::ofrep::evaluate_all))
        .route("/ofrep/v1/events", get(crate::ofrep::events))
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
    /// Seconds to wait, with `If-None-Match`, for an answer that differs.
    wait: Option<String>,
    /// As the `Last-Event-ID` header, for clients that cannot set it.
    last_event_id: Option<String>,
}

/// What a read's headers and query ask beyond the item: a pinned version, `If-None-Match`,
/// and how long to wait for a change.
struct Conditions {
    pinned: Option<String>,
    /// `X-Switchboard-Preview: staged`: read the sealed staged set.
    preview: bool,
    if_none_match: Option<String>,
    deadline: Option<tokio::time::Instant>,
}

impl Conditions {
    fn of(headers: &HeaderMap, params: &ReadParams) -> Result<Self, ReadError> {
        let text = |name: &str| -> Result<Option<String>, ReadError> {
            match headers.get(name) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .map(|v| Some(v.trim().to_string()))
                    .map_err(|_| ReadError::BadRequest(format!("header {name} is not text"))),
            }
        };
        let pinned = text(VERSION_HEADER)?.filter(|v| !v.is_empty());
        if let Some(version) = &pinned {
            let valid = version.len() <= crate::serve::MAX_VERSION_LEN
                && version.bytes().all(|b| b.is_ascii_alphanumeric());
            if !valid {
                return Err(ReadError::BadRequest(format!(
                    "{VERSION_HEADER} must be a version (1 to {} letters and digits), as the X-Switchboard-Version of an answer",
                    crate::serve::MAX_VERSION_LEN
                )));
            }
        }
        let preview = match text(crate::preview::PREVIEW_HEADER)?.as_deref() {
            None => false,
            Some(crate::preview::PREVIEW_STAGED) => true,
            Some(other) => {
                return Err(ReadError::BadRequest(format!(
                    "{} must be {:?}, not {other:?}",
                    crate::preview::PREVIEW_HEADER,
                    crate::preview::PREVIEW_STAGED
                )));
            }
        };
        if preview && pinned.is_some() {
            return Err(ReadError::BadRequest(format!(
                "a read is either pinned ({VERSION_HEADER}) or a preview ({}), not both",
                crate::preview::PREVIEW_HEADER
            )));
        }
        let if_none_match = text(header::IF_NONE_MATCH.as_str())?;
        let wait = match params.wait.as_deref() {
            None => None,
            Some(seconds) => {
                let seconds: f64 = seconds
                    .trim()
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        ReadError::BadRequest(format!(
                            "wait must be a number of seconds (at most {}), not {seconds:?}",
                            MAX_WAIT.as_secs()
                        ))
                    })?;
                Some(Duration::from_secs_f64(seconds).min(MAX_WAIT))
            }
        };
        Ok(Self {
            pinned,
            preview,
            // Waiting needs something to compare with: without If-None-Match, answer at once.
            deadline: wait
                .filter(|_| if_none_match.is_some())
                .map(|wait| tokio::time::Instant::now() + wait),
            if_none_match,
        })
    }

    /// Whether the client already has the answer tagged `etag`.
    fn unchanged(&self, etag: &str) -> bool {
        self.if_none_match
            .as_deref()
            .is_some_and(|inm| none_match(inm, etag))
    }

    /// Waits for the namespace to change, until the deadline: true if it did.
    async fn changed<T>(
        &self,
        changes: Option<&mut tokio::sync::watch::Receiver<T>>,
        served: &Served,
    ) -> bool {
        let (Some(deadline), Some(changes)) = (self.deadline, changes) else {
            return false;
        };
        tokio::select! {
            changed = tokio::time::timeout_at(deadline, changes.changed()) => matches!(changed, Ok(Ok(()))),
            () = served.shutdown.cancelled() => false,
        }
    }
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
            ReadError::VersionNotHeld { .. } => StatusCode::CONFLICT,
            ReadError::PreviewOff(_) => StatusCode::FORBIDDEN,
            ReadError::NothingStaged(_) => StatusCode::NOT_FOUND,
            ReadError::PreviewUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ReadError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ReadError::UnknownVersion { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ReadError::CountsFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut body = json!({"error": self.to_string()});
        match self {
            ReadError::UnknownVersion {
                version, accepted, ..
            } => {
                body["version"] = json!(version);
                body["accepted_versions"] = json!(accepted);
            }
            ReadError::VersionNotHeld {
                version,
                current,
                slot,
                epoch,
                ..
            } => {
                body["version"] = json!(version);
                body["current_version"] = json!(current);
                // The headers name what a read without the pin would be served now.
                let mut response = (status, Json(body)).into_response();
                let headers = response.headers_mut();
                headers.insert(
                    "x-switchboard-slot",
                    HeaderValue::from_static(slot.as_str()),
                );
                if let Ok(current) = HeaderValue::from_str(&current) {
                    headers.insert(VERSION_HEADER, current);
                }
                headers.insert("x-switchboard-epoch", HeaderValue::from(epoch));
                return response;
            }
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}

impl From<ReadError> for Response {
    fn from(error: ReadError) -> Self {
        error.into_response()
    }
}

/// The headers that name where an answer came from, and its ETag.
fn served_headers(response: &mut Response, reading: &Reading, etag: Option<&str>) {
    let headers = response.headers_mut();
    headers.insert(
        "x-switchboard-slot",
        HeaderValue::from_static(reading.slot.as_str()),
    );
    if let Ok(version) = HeaderValue::from_str(&reading.set.version) {
        headers.insert(VERSION_HEADER, version);
    }
    headers.insert("x-switchboard-epoch", HeaderValue::from(reading.epoch));
    if reading.preview {
        headers.insert(
            crate::preview::PREVIEW_HEADER,
            HeaderValue::from_static(crate::preview::PREVIEW_STAGED),
        );
    }
    if let Some(etag) = etag.and_then(|etag| HeaderValue::from_str(etag).ok()) {
        headers.insert(header::ETAG, etag);
    }
}

fn record_read(ns: &str, reading: &Reading, started: Instant) {
    metrics::counter!(telemetry::READS, "namespace" => ns.to_string(), "slot" => reading.slot.as_str(), "version" => reading.set.version.clone()).increment(1);
    metrics::histogram!(telemetry::READ_SECONDS).record(started.elapsed().as_secs_f64());
}

/// A 304 for a client that has the answer tagged `etag` already.
fn not_modified(reading: &Reading, etag: &str) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    served_headers(&mut response, reading, Some(etag));
    response
}

fn json_response(body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Answers a read under its conditions: `etag_of` tags the answer from the set the read is
/// served from (`None`: no tag, as for a missing item), `answer` makes it. A client that has
/// the answer already gets 304, at once or, with `?wait=`, once the wait ends without a
/// change; a change within the wait is answered as it comes.
async fn answer_read(
    served: &Served,
    ns: &str,
    consumer: &str,
    conditions: &Conditions,
    etag_of: impl Fn(&Reading) -> Option<String>,
    answer: impl Fn(&Reading) -> Response,
) -> Result<Response, Response> {
    let started = Instant::now();
    // Only a long poll watches for the next snapshot. It subscribes before its first look, so
    // that a change between the look and the wait is not missed.
    let mut changes = match conditions.deadline {
        Some(_) => Some(served.namespace(ns)?.subscribe()),
        None => None,
    };
    loop {
        let reading = if conditions.preview {
            served.preview_reading(ns).await?
        } else {
            served.reading(ns, consumer, conditions.pinned.as_deref())?
        };
        let etag = etag_of(&reading);
        if let Some(etag) = &etag
            && conditions.unchanged(etag)
        {
            if conditions.changed(changes.as_mut(), served).await {
                continue;
            }
            record_read(ns, &reading, started);
            return Ok(not_modified(&reading, etag));
        }
        let mut response = answer(&reading);
        served_headers(&mut response, &reading, etag.as_deref());
        record_read(ns, &reading, started);
        return Ok(response);
    }
}

async fn get_item(
    State(served): State<Arc<Served>>,
    Path((ns, key)): Path<(String, String)>,
    query: Result<Query<ReadParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    // A query that does not parse is a JSON 400 like every other error.
    let Query(params) = query.map_err(rejected)?;
    let conditions = Conditions::of(&headers, &params)?;
    let consumer = served.consumer(consumer_of(&headers, &params)).to_string();
    let etag_of = |reading: &Reading| reading.set.items.get(&key).map(|v| item_etag(v));
    let answer = |reading: &Reading| match reading.set.items.get(&key) {
        Some(value) => json_response(bytes::Bytes::copy_from_slice(value)),
        None => ReadError::UnknownKey {
            namespace: ns.clone(),
            key: key.clone(),
        }
        .into_response(),
    };
    answer_read(&served, &ns, &consumer, &conditions, etag_of, answer).await
}

async fn list_items(
    State(served): State<Arc<Served>>,
    Path(ns): Path<String>,
    query: Result<Query<ReadParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    // A query that does not parse is a JSON 400 like every other error.
    let Query(params) = query.map_err(rejected)?;
    let conditions = Conditions::of(&headers, &params)?;
    let consumer = served.consumer(consumer_of(&headers, &params)).to_string();
    let prefix = params.prefix.as_deref().unwrap_or("");
    let etag_of = |reading: &Reading| Some(items_etag(reading.set.items.with_prefix(prefix)));
    let answer = |reading: &Reading| {
        // Values are already canonical JSON: the answer is assembled from them without
        // parsing.
        let mut body = Vec::with_capacity(256);
        body.extend_from_slice(b"{\"slot\":\"");
        body.extend_from_slice(reading.slot.as_str().as_bytes());
        body.extend_from_slice(b"\",\"version\":");
        body.extend_from_slice(json!(reading.set.version).to_string().as_bytes());
        body.extend_from_slice(format!(",\"epoch\":{},\"items\":{{", reading.epoch).as_bytes());
        for (i, (key, value)) in reading.set.items.with_prefix(prefix).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(json!(key).to_string().as_bytes());
            body.push(b':');
            body.extend_from_slice(value);
        }
        body.extend_from_slice(b"}}");
        json_response(body)
    };
    answer_read(&served, &ns, &consumer, &conditions, etag_of, answer).await
}

/// The change feed of one consumer, as Server-Sent Events (see [`crate::changes`]).
async fn events(
    State(served): State<Arc<Served>>,
    Path(ns): Path<String>,
    query: Result<Query<ReadParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let Query(params) = query.map_err(rejected)?;
    let namespace = served.namespace(&ns)?.clone();
    let consumer = served.consumer(consumer_of(&headers, &params)).to_string();
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(value.to_str().map_err(|_| {
            ReadError::BadRequest("header Last-Event-ID is not text".into()).into_response()
        })?),
        None => params.last_event_id.as_deref(),
    };
    let resume = last_event_id
        .filter(|id| !id.trim().is_empty())
        .map(|id| LastEventId::parse(id.trim()))
        .transpose()?;
    let feed = Feed::new(namespace, consumer, resume, served.shutdown.clone());
    // The stream is the response itself: it ends when the client goes away or at shutdown.
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let change = feed.next().await?;
        Some((change.to_sse(), feed))
    });
    Ok(crate::sse::response(stream))
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

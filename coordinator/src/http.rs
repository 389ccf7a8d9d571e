//! The coordinator's HTTP side: `/healthz`, `/metrics`, the release dashboard at `/`, and a JSON
//! API for reading a namespace and changing its routing.
//!
//! `/healthz`, `/metrics` and the dashboard's static files are always open. With `--auth`, the
//! JSON API needs a bearer token, like the gRPC API: 401 without a known token, 403 without the
//! role, both with a JSON error body and recorded like every denial. The JSON API shares the
//! gRPC API's per-caller rate limit: over it, 429 with `Retry-After` (whole seconds).
//!
//! The routing changes (`POST /v1/ns/{ns}/canary`, `/flip`, `/rollback`) are the gRPC service's
//! operations over JSON: the same [`Admission`] with the same [`Rpc`] kinds, then the same
//! `Releases` functions, so the policy, approvals, gates, compare-and-swap and audit record are
//! exactly sbctl's. Each body must name the epoch it was decided on (`expected_epoch`), so a
//! change is never applied to a state its caller did not see; `canary` and `flip` may also
//! name the staged version (`expected_version`). Errors become HTTP statuses in one place,
//! [`CoordinatorError::http_status`].

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use switchboard_proto::BUCKETS;
use switchboard_proto::keys::validate_namespace;

use crate::auth::{Admission, Credentials, Rpc};
use crate::dashboard::{self, ErrorSamples};
use crate::error::{CoordinatorError, Result};
use crate::release::{Actor, Releases};
use crate::routing::ChangeRequest;

/// The largest request body read: a routing change is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most audit records one `GET /v1/ns/{ns}/audit?limit=N` returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

#[derive(Clone)]
struct AppState {
    releases: Releases,
    admission: Admission,
    metrics: PrometheusHandle,
    samples: ErrorSamples,
}

pub fn router(
    releases: Releases,
    admission: Admission,
    metrics: PrometheusHandle,
    samples: ErrorSamples,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics))
        .route("/v1/ns", get(namespaces))
        .route("/v1/ns/{ns}/status", get(status))
        .route("/v1/ns/{ns}/audit", get(audit))
        .route("/v1/ns/{ns}/errors", get(errors))
        .route("/v1/ns/{ns}/canary", post(canary))
        .route("/v1/ns/{ns}/flip", post(flip))
        .route("/v1/ns/{ns}/rollback", post(rollback))
        .merge(dashboard::router())
        .with_state(AppState {
            releases,
            admission,
            metrics,
            samples,
        })
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// The address a connection came from, which the server records for each of its requests
/// (`into_make_service_with_connect_info::<PeerAddr>`), over plain TCP and TLS alike.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl<L>
    Connected<axum::serve::IncomingStream<'_, switchboard_runtime::connections::GuardedListener<L>>>
    for PeerAddr
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Unpin,
{
    fn connect_info(
        stream: axum::serve::IncomingStream<
            '_,
            switchboard_runtime::connections::GuardedListener<L>,
        >,
    ) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// What an HTTP request presents to admission: its bearer token, the name it claims, and the
/// address it came from (unknown when the router is served without connect info).
struct Caller(Credentials);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Caller(Credentials {
            authorization: text(header::AUTHORIZATION.as_str()),
            claimed_actor: text("x-switchboard-actor"),
            peer: parts
                .extensions
                .get::<ConnectInfo<PeerAddr>>()
                .map(|ConnectInfo(PeerAddr(address))| address.ip()),
        }))
    }
}

/// Turns a handler's result into the answer: JSON on success, a JSON error with the status of
/// [`CoordinatorError::http_status`] otherwise.
fn answer<T: serde::Serialize>(result: Result<T>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(error) => error_response(error),
    }
}

async fn admit(state: &AppState, caller: &Caller, rpc: Rpc, ns: &str) -> Result<Actor> {
    state.admission.admit(&caller.0, rpc, ns).await
}

/// A namespace that was never staged into is unknown: 404, rather than the "nothing is
/// staged" refusal that a routing change would give, so that a mistyped name reads as one.
async fn known_namespace(state: &AppState, ns: &str) -> Result<()> {
    validate_namespace(ns).map_err(CoordinatorError::InvalidInput)?;
    let store = state.releases.store();
    if store
        .get_raw(&store.keys().namespace_marker(ns))
        .await?
        .is_none()
    {
        return Err(CoordinatorError::NotFound(format!(
            "namespace {ns} is unknown: nothing was ever staged into it"
        )));
    }
    Ok(())
}

async fn namespaces(State(state): State<AppState>, caller: Caller) -> Response {
    answer(
        async {
            admit(&state, &caller, Rpc::Status, "").await?;
            let mut namespaces = state.releases.store().namespaces().await?;
            namespaces.sort();
            Ok(serde_json::json!({ "namespaces": namespaces }))
        }
        .await,
    )
}

async fn status(State(state): State<AppState>, Path(ns): Path<String>, caller: Caller) -> Response {
    answer(
        async {
            admit(&state, &caller, Rpc::Status, &ns).await?;
            state.releases.status(&ns).await
        }
        .await,
    )
}

/// `?limit=N`: only the newest N records (the chain is still verified whole).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    query: std::result::Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
    caller: Caller,
) -> Response {
    answer(
        async {
            admit(&state, &caller, Rpc::Audit, &ns).await?;
            let Query(query) = query.map_err(|rejection| {
                CoordinatorError::InvalidInput(format!(
                    "bad query: {}; the audit trail takes only limit=N",
                    rejection.body_text()
                ))
            })?;
            let limit = match query.limit {
                Some(limit) if !(1..=MAX_AUDIT_LIMIT).contains(&limit) => {
                    return Err(CoordinatorError::InvalidInput(format!(
                        "limit {limit} must be 1 to {MAX_AUDIT_LIMIT}"
                    )));
                }
                limit => limit,
            };
            let mut trail = state.releases.audit_trail(&ns, true).await?;
            if let Some(limit) = limit {
                let skip = trail.records.len().saturating_sub(limit);
                trail.records.drain(..skip);
            }
            Ok(trail)
        }
        .await,
    )
}

async fn errors(State(state): State<AppState>, Path(ns): Path<String>, caller: Caller) -> Response {
    answer(
        async {
            admit(&state, &caller, Rpc::Status, &ns).await?;
            known_namespace(&state, &ns).await?;
            Ok(state.samples.series(&ns))
        }
        .await,
    )
}

/// Reads a routing change's JSON body. It must be declared JSON: a browser sends a
/// cross-site form or `text/plain` POST without asking, but never `application/json`, so this
/// also keeps other sites from making changes through a coordinator that runs without
/// `--auth`.
async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body, what: &str) -> Result<T> {
    if !switchboard_runtime::json_errors::says_json(headers) {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Err(CoordinatorError::InvalidInput(format!(
            "send the {what} as JSON with Content-Type: application/json (got {:?})",
            content_type.chars().take(100).collect::<String>()
        )));
    }
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            CoordinatorError::InvalidInput(format!(
                "the {what} is over {MAX_BODY_BYTES} bytes, or was not received whole"
            ))
        })?;
    serde_json::from_slice(&bytes).map_err(|error| {
        CoordinatorError::InvalidInput(format!("the body is not a valid {what}: {error}"))
    })
}

/// The epoch a change was decided on is required: without it, a change could be applied to
/// a routing its caller never saw.
fn required_epoch(epoch: Option<u64>) -> Result<u64> {
    epoch.ok_or_else(|| {
        CoordinatorError::InvalidInput(
            "expected_epoch is required: the epoch of the status this change was decided on".into(),
        )
    })
}

/// `POST /v1/ns/{ns}/canary`: `{"percent": 10}` or `{"weight_bp": 1000}`, with
/// `expected_epoch`, and optionally `expected_version` and `reason`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    percent: Option<f64>,
    weight_bp: Option<u64>,
    expected_epoch: Option<u64>,
    #[serde(default)]
    expected_version: String,
    #[serde(default)]
    reason: String,
}

/// The canary weight in basis points, from exactly one of `percent` (0 to 100, at most two
/// decimals, as sbctl takes it) and `weight_bp` (0 to 10000).
fn canary_weight(body: &CanaryBody) -> Result<u32> {
    let invalid = |message: String| Err(CoordinatorError::InvalidInput(message));
    match (body.percent, body.weight_bp) {
        (Some(_), Some(_)) => invalid("give percent or weight_bp, not both".into()),
        (None, None) => {
            invalid("percent (0 to 100, two decimals) or weight_bp (0 to 10000) is required".into())
        }
        (None, Some(weight_bp)) => match u32::try_from(weight_bp) {
            Ok(weight_bp) if weight_bp <= BUCKETS => Ok(weight_bp),
            _ => invalid(format!(
                "canary weight {weight_bp} basis points is over {BUCKETS} (100%)"
            )),
        },
        (Some(percent), None) => {
            if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
                return invalid(format!("canary percent {percent} must be 0 to 100"));
            }
            let hundredths = percent * 100.0;
            let rounded = hundredths.round();
            if (hundredths - rounded).abs() > 1e-6 {
                return invalid(format!(
                    "canary percent {percent} has more than two decimals; the finest step is 0.01"
                ));
            }
            // In range and whole, so the conversion is exact.
            Ok(rounded as u32)
        }
    }
}

async fn canary(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let actor = admit(&state, &caller, Rpc::SetCanary, &ns).await?;
            let body: CanaryBody = json_body(&headers, body, "canary request").await?;
            let weight_bp = canary_weight(&body)?;
            let expected_epoch = required_epoch(body.expected_epoch)?;
            known_namespace(&state, &ns).await?;
            let request =
                ChangeRequest::by_person(&ns, expected_epoch, "canary", &body.reason, &actor);
            state
                .releases
                .set_canary(request, weight_bp, &body.expected_version)
                .await
        }
        .await,
    )
}

/// `POST /v1/ns/{ns}/flip`: `expected_epoch`, and optionally `expected_version` and `reason`.
/// The synchronized flip is sbctl's (`flip --sync`): it waits for every sidecar, longer than
/// a page should hold a request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlipBody {
    expected_epoch: Option<u64>,
    #[serde(default)]
    expected_version: String,
    #[serde(default)]
    reason: String,
}

async fn flip(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let actor = admit(&state, &caller, Rpc::Flip, &ns).await?;
            let body: FlipBody = json_body(&headers, body, "flip request").await?;
            let expected_epoch = required_epoch(body.expected_epoch)?;
            known_namespace(&state, &ns).await?;
            let request =
                ChangeRequest::by_person(&ns, expected_epoch, "flip", &body.reason, &actor);
            state.releases.flip(request, &body.expected_version).await
        }
        .await,
    )
}

/// `POST /v1/ns/{ns}/rollback`: `expected_epoch`, optionally `reason`, and `to_version` to
/// bring back a retained version (as `sbctl rollback --to`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    expected_epoch: Option<u64>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    to_version: String,
}

async fn rollback(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let actor = admit(&state, &caller, Rpc::Rollback, &ns).await?;
            let body: RollbackBody = json_body(&headers, body, "rollback request").await?;
            let expected_epoch = required_epoch(body.expected_epoch)?;
            known_namespace(&state, &ns).await?;
            let request =
                ChangeRequest::by_person(&ns, expected_epoch, "rollback", &body.reason, &actor);
            if body.to_version.is_empty() {
                state.releases.rollback(request).await
            } else {
                state.releases.rollback_to(request, &body.to_version).await
            }
        }
        .await,
    )
}

fn error_response(error: CoordinatorError) -> Response {
    let status: StatusCode = error.http_status();
    if !error.logged_by_the_gate() {
        tracing::info!(%error, "http request failed");
    }
    let body = Json(serde_json::json!({"error": error.to_string()}));
    if status == StatusCode::UNAUTHORIZED {
        return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
    }
    if let Some(seconds) = error.retry_after_seconds() {
        return (
            status,
            [(header::RETRY_AFTER, HeaderValue::from(seconds))],
            body,
        )
            .into_response();
    }
    (status, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> CanaryBody {
        serde_json::from_str(json).expect("a canary body")
    }

    fn weight(json: &str) -> std::result::Result<u32, String> {
        canary_weight(&body(json)).map_err(|e| e.to_string())
    }

    #[test]
    fn canary_weights_come_from_percent_or_basis_points() {
        assert_eq!(weight(r#"{"percent": 10}"#), Ok(1000));
        assert_eq!(weight(r#"{"percent": 12.34}"#), Ok(1234));
        assert_eq!(weight(r#"{"percent": 0.01}"#), Ok(1));
        assert_eq!(weight(r#"{"percent": 100}"#), Ok(10_000));
        assert_eq!(weight(r#"{"percent": 0}"#), Ok(0));
        assert_eq!(weight(r#"{"weight_bp": 2500}"#), Ok(2500));
        assert_eq!(weight(r#"{"weight_bp": 10000}"#), Ok(10_000));
    }

    #[test]
    fn bad_canary_weights_are_refused_naming_the_problem() {
        let refused = |json: &str, says: &str| {
            let problem = weight(json).expect_err(json);
            assert!(problem.contains(says), "{json}: {problem}");
        };
        refused(r#"{"percent": 100.01}"#, "must be 0 to 100");
        refused(r#"{"percent": -1}"#, "must be 0 to 100");
        refused(r#"{"percent": 1.005}"#, "more than two decimals");
        refused(r#"{"weight_bp": 10001}"#, "over 10000");
        refused(r#"{"weight_bp": 99999999999}"#, "over 10000");
        refused(r#"{"percent": 1, "weight_bp": 100}"#, "not both");
        refused(r#"{}"#, "is required");
        // What serde refuses never reaches the weight.
        assert!(serde_json::from_str::<CanaryBody>(r#"{"weight_bp": -5}"#).is_err());
        assert!(serde_json::from_str::<CanaryBody>(r#"{"percent": 5, "sync": true}"#).is_err());
    }

    #[test]
    fn changes_need_the_epoch_they_were_decided_on() {
        assert_eq!(required_epoch(Some(3)).ok(), Some(3));
        let error = required_epoch(None).expect_err("required");
        assert_eq!(error.http_status(), StatusCode::BAD_REQUEST);
        assert!(error.to_string().contains("expected_epoch"), "{error}");
    }

    #[tokio::test]
    async fn bodies_must_be_declared_json_and_parse() {
        let mut headers = HeaderMap::new();
        let parse = |headers: HeaderMap, text: &'static str| async move {
            json_body::<FlipBody>(&headers, Body::from(text), "flip request")
                .await
                .map(|b| b.expected_epoch)
                .map_err(|e| (e.http_status(), e.to_string()))
        };
        let (status, message) = parse(headers.clone(), r#"{"expected_epoch": 1}"#)
            .await
            .expect_err("no content type");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message.contains("Content-Type: application/json"),
            "{message}"
        );
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().expect("header"));
        assert!(parse(headers.clone(), "{}").await.is_err());
        headers.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().expect("header"),
        );
        assert_eq!(
            parse(headers.clone(), r#"{"expected_epoch": 4}"#).await,
            Ok(Some(4))
        );
        let (status, message) = parse(headers.clone(), "{not json")
            .await
            .expect_err("bad json");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("not a valid flip request"), "{message}");
        let (_, message) = parse(headers.clone(), r#"{"expected_epoch": 1, "sync": true}"#)
            .await
            .expect_err("unknown field");
        assert!(message.contains("unknown field `sync`"), "{message}");
        let large: &'static str = Box::leak(
            format!(r#"{{"reason": "{}"}}"#, "x".repeat(MAX_BODY_BYTES)).into_boxed_str(),
        );
        let (_, message) = parse(headers, large).await.expect_err("too large");
        assert!(message.contains("over 65536 bytes"), "{message}");
    }
}

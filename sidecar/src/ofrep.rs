//! The OpenFeature Remote Evaluation Protocol (OFREP) on the sidecar's HTTP API, so that an
//! application reads its metadata through any OpenFeature SDK with the OFREP provider, and no
//! code of ours.
//!
//! A flag is an item: its key is `<namespace>/<item key>`, or the bare item key when the
//! sidecar serves one namespace; its value is the item's JSON; `context.targetingKey` is the
//! consumer (the sidecar's id when absent, as in reads); the variant is the version served; the
//! reason is `SPLIT` for a consumer on the canary and `STATIC` for one on the active set. A
//! missing item is `FLAG_NOT_FOUND`. The bulk evaluation answers every item of every namespace
//! with an ETag (304 to an unchanged `If-None-Match`) and names the change feed of the consumer
//! as a refresh connection (OFREP's proposed push extension, ADR 0008): an SSE stream whose
//! `refetchEvaluation` events carry the new ETag, so that providers are told instead of polling.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::changes::Feed;
use crate::serve::{ReadError, Reading, Served, none_match};

/// The consumer a request names: `context.targetingKey`. The context's other attributes are
/// skipped unread: nothing here targets by them.
#[derive(Deserialize, Default)]
struct EvaluationRequest {
    #[serde(default)]
    context: Option<EvaluationContext>,
}

#[derive(Deserialize, Default)]
struct EvaluationContext {
    #[serde(rename = "targetingKey", default)]
    targeting_key: Option<Value>,
}

/// An OFREP error answer: `{"key", "errorCode", "errorDetails"}` with its status.
pub struct Failure {
    status: StatusCode,
    key: Option<String>,
    code: &'static str,
    details: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut body = json!({"errorCode": self.code, "errorDetails": self.details});
        if let Some(key) = self.key {
            body["key"] = json!(key);
        }
        (self.status, Json(body)).into_response()
    }
}

fn failure(status: StatusCode, key: Option<&str>, code: &'static str, details: String) -> Failure {
    Failure {
        status,
        key: key.map(str::to_string),
        code,
        details,
    }
}

/// A read error as OFREP's answer: a missing item or namespace is `FLAG_NOT_FOUND`, a bad
/// request `INVALID_CONTEXT`, and the rest `GENERAL`.
fn read_failure(key: Option<&str>, error: ReadError) -> Failure {
    let (status, code) = match error {
        ReadError::UnknownKey { .. } | ReadError::UnknownNamespace(_) => {
            (StatusCode::NOT_FOUND, "FLAG_NOT_FOUND")
        }
        ReadError::BadRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_CONTEXT"),
        ReadError::VersionNotHeld { .. } => (StatusCode::CONFLICT, "GENERAL"),
        ReadError::PreviewOff(_) => (StatusCode::FORBIDDEN, "GENERAL"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "GENERAL"),
    };
    failure(status, key, code, error.to_string())
}

/// The consumer of an evaluation request's body (JSON, possibly empty); a body that could not
/// be read is a `PARSE_ERROR` too.
fn consumer_of(
    served: &Served,
    key: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, Failure> {
    let body = body.map_err(|rejection| {
        failure(
            rejection.status(),
            key,
            "PARSE_ERROR",
            rejection.to_string(),
        )
    })?;
    let request: EvaluationRequest = if body.iter().all(u8::is_ascii_whitespace) {
        EvaluationRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            failure(
                StatusCode::BAD_REQUEST,
                key,
                "PARSE_ERROR",
                format!("the body must be {{\"context\": {{\"targetingKey\": ...}}}}: {e}"),
            )
        })?
    };
    let targeting_key = request
        .context
        .as_ref()
        .and_then(|context| context.targeting_key.as_ref());
    match targeting_key {
        None | Some(Value::Null) => Ok(served.consumer(None).to_string()),
        Some(Value::String(consumer)) => Ok(served.consumer(Some(consumer)).to_string()),
        Some(_) => Err(failure(
            StatusCode::BAD_REQUEST,
            key,
            "INVALID_CONTEXT",
            "context.targetingKey must be a string (the consumer)".into(),
        )),
    }
}

/// The namespace and item a flag key names: `<namespace>/<item>`, or the bare item when the
/// sidecar serves one namespace.
fn resolve<'k>(served: &Served, key: &'k str) -> Result<(String, &'k str), Failure> {
    if let Some((namespace, item)) = key.split_once('/')
        && !item.is_empty()
        && served.namespaces.contains_key(namespace)
    {
        return Ok((namespace.to_string(), item));
    }
    if served.namespaces.len() == 1
        && let Some(namespace) = served.namespaces.keys().next()
    {
        return Ok((namespace.clone(), key));
    }
    let mut names: Vec<&str> = served.namespaces.keys().map(String::as_str).collect();
    names.sort_unstable();
    Err(failure(
        StatusCode::NOT_FOUND,
        Some(key),
        "FLAG_NOT_FOUND",
        format!(
            "flag keys are <namespace>/<item key>; this sidecar serves the namespaces {}",
            names.join(", ")
        ),
    ))
}

/// The flag key of `item` in `namespace`, as the bulk evaluation names it.
fn flag_key(served: &Served, namespace: &str, item: &str) -> String {
    if served.namespaces.len() == 1 {
        item.to_string()
    } else {
        format!("{namespace}/{item}")
    }
}

/// Appends `text` to `out` as a JSON string. Item keys, namespaces and versions need no
/// escaping but for odd characters, so the common case copies them as they are.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(Value::from(text).to_string().as_bytes());
    }
}

/// One evaluation's JSON, the value spliced in as stored (canonical JSON, never parsed), written
/// straight into `out`: this is the hot path of every OFREP read.
fn evaluation_json(key: &str, namespace: &str, reading: &Reading, value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"key\":");
    push_json_string(out, key);
    out.extend_from_slice(if reading.canary {
        b",\"reason\":\"SPLIT\",\"variant\":"
    } else {
        b",\"reason\":\"STATIC\",\"variant\":"
    });
    push_json_string(out, &reading.set.version);
    out.extend_from_slice(b",\"metadata\":{\"namespace\":");
    push_json_string(out, namespace);
    out.extend_from_slice(b",\"slot\":\"");
    out.extend_from_slice(reading.slot.as_str().as_bytes());
    out.extend_from_slice(b"\",\"epoch\":");
    out.extend_from_slice(reading.epoch.to_string().as_bytes());
    out.extend_from_slice(b"},\"value\":");
    out.extend_from_slice(value);
    out.push(b'}');
}

fn json_answer(body: Vec<u8>) -> Response {
    let mut response = Response::new(axum::body::Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn evaluate(
    State(served): State<Arc<Served>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let consumer = consumer_of(&served, Some(&key), body)?;
    let (namespace, item) = resolve(&served, &key)?;
    let pinned = headers
        .get(crate::http::VERSION_HEADER)
        .and_then(|v| v.to_str().ok());
    let preview = headers
        .get(crate::preview::PREVIEW_HEADER)
        .is_some_and(|v| v.as_bytes() == crate::preview::PREVIEW_STAGED.as_bytes());
    let reading = if preview {
        served.preview_reading(&namespace).await
    } else {
        served.reading(&namespace, &consumer, pinned)
    }
    .map_err(|error| read_failure(Some(&key), error))?;
    let Some(value) = reading.set.items.get(item) else {
        let error = ReadError::UnknownKey {
            namespace,
            key: item.to_string(),
        };
        return Err(read_failure(Some(&key), error));
    };
    let mut out = Vec::with_capacity(value.len() + 200);
    evaluation_json(&key, &namespace, &reading, value, &mut out);
    Ok(json_answer(out))
}

/// What the consumer is served in every namespace, sorted by namespace; the namespaces not
/// loaded yet are left out.
fn readings(served: &Served, consumer: &str) -> Vec<(String, Reading)> {
    let mut names: Vec<&String> = served.namespaces.keys().collect();
    names.sort_unstable();
    names
        .into_iter()
        .filter_map(|name| {
            let reading = served.reading(name, consumer, None).ok()?;
            Some((name.clone(), reading))
        })
        .collect()
}

/// The ETag of a consumer's bulk evaluation: the items it is served, namespace by namespace.
pub fn bulk_etag(served: &Served, consumer: &str) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (name, reading) in readings(served, consumer) {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        // The reason and the variant are part of the answer too.
        hasher.update(reading.set.version.as_bytes());
        hasher.update(&[u8::from(reading.canary)]);
        crate::serve::hash_items(&mut hasher, reading.set.items.iter());
    }
    format!("W/\"{:032x}\"", hasher.digest128())
}

#[derive(Deserialize)]
pub struct EventsParams {
    consumer: Option<String>,
}

/// `POST /ofrep/v1/evaluate/flags`: every item of every namespace, for one consumer.
pub async fn evaluate_all(
    State(served): State<Arc<Served>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let consumer = consumer_of(&served, None, body)?;
    let etag = bulk_etag(&served, &consumer);
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|inm| none_match(inm, &etag));
    let etag_header = HeaderValue::from_str(&etag).ok();
    if unchanged {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Some(etag) = etag_header {
            response.headers_mut().insert(header::ETAG, etag);
        }
        return Ok(response);
    }
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"flags\":[");
    let mut first = true;
    for (name, reading) in readings(&served, &consumer) {
        for (item, value) in reading.set.items.iter() {
            if !first {
                out.push(b',');
            }
            first = false;
            evaluation_json(
                &flag_key(&served, &name, item),
                &name,
                &reading,
                value,
                &mut out,
            );
        }
    }
    out.extend_from_slice(b"]");
    // The push extension: the consumer's change feed, on this sidecar as the client reached it.
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        let url = format!(
            "http://{host}/ofrep/v1/events?consumer={}",
            url_escape(&consumer)
        );
        let connections = json!([{"type": "sse", "url": url}]);
        out.extend_from_slice(b",\"refreshConnections\":");
        out.extend_from_slice(connections.to_string().as_bytes());
    }
    out.extend_from_slice(b"}");
    let mut response = json_answer(out);
    if let Some(etag) = etag_header {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// Percent-escapes everything but unreserved characters (RFC 3986), for a query value.
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `GET /ofrep/v1/events?consumer=C`: a `refetchEvaluation` event, with the new bulk ETag,
/// each time what the consumer is served changes in any namespace.
pub async fn events(
    State(served): State<Arc<Served>>,
    query: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Response, Failure> {
    let Query(params) = query.map_err(|rejection| {
        failure(
            StatusCode::BAD_REQUEST,
            None,
            "INVALID_CONTEXT",
            rejection.to_string(),
        )
    })?;
    let consumer = served.consumer(params.consumer.as_deref()).to_string();
    let feeds = served.namespaces.values().map(|namespace| {
        let feed = Feed::new(
            namespace.clone(),
            consumer.clone(),
            None,
            served.shutdown.clone(),
        );
        futures::stream::unfold(feed, |mut feed| async move {
            let change = feed.next().await?;
            Some((change, feed))
        })
        .boxed()
    });
    let stream = futures::stream::select_all(feeds)
        // The provider fetched the view itself: only changes make it fetch again.
        .filter(|change| futures::future::ready(!change.initial))
        .map(move |_| {
            let data = json!({
                "type": "refetchEvaluation",
                "etag": bulk_etag(&served, &consumer),
                "lastModified": switchboard_proto::time::now_ms() / 1000,
            });
            crate::sse::event(None, &data.to_string())
        });
    Ok(crate::sse::response(stream))
}

//! One error shape for the HTTP APIs: every error answer is a JSON object `{"error": TEXT}`,
//! including those the router and the extractors write themselves (an unknown path, a method
//! not allowed, a path segment that is not UTF-8, a body over the limit), which are plain
//! text. Clients and scripts then parse every error the same way.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// The most bytes of a plain-text error read to put into the JSON one; the routers' own are
/// a line or two.
const MAX_ERROR_TEXT: usize = 16 * 1024;

/// Middleware: passes every answer through, but turns an error answer (4xx or 5xx) that is not
/// JSON into `{"error": TEXT}` with the same status and headers.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_ERROR_TEXT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let text = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let json = serde_json::json!({ "error": text }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json))
}

fn is_json(response: &Response) -> bool {
    says_json(response.headers())
}

/// Whether headers say their body is JSON (`application/json`, in any case, with or without
/// parameters such as a charset): the one reading of the media type for requests and answers
/// of both HTTP APIs.
pub fn says_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn answer(app: &Router, method: &str, uri: &str) -> (StatusCode, String, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("a request");
        let response = app.clone().oneshot(request).await.expect("an answer");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body");
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn the_routers_own_errors_become_json_and_the_rest_is_untouched() {
        let app = Router::new()
            .route(
                "/items/{name}",
                get(|axum::extract::Path(name): axum::extract::Path<String>| async move { name }),
            )
            .layer(axum::middleware::from_fn(json_errors));
        let (status, content_type, body) = answer(&app, "GET", "/items/plain").await;
        assert_eq!(
            (status, content_type.as_str(), body.as_str()),
            (StatusCode::OK, "text/plain; charset=utf-8", "plain")
        );
        for (method, uri, expected) in [
            ("GET", "/nowhere", StatusCode::NOT_FOUND),
            ("DELETE", "/items/x", StatusCode::METHOD_NOT_ALLOWED),
            ("GET", "/items/%FF%FE", StatusCode::BAD_REQUEST),
        ] {
            let (status, content_type, body) = answer(&app, method, uri).await;
            assert_eq!(status, expected, "{method} {uri}");
            assert_eq!(content_type, "application/json", "{method} {uri}");
            let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert!(
                json["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{body}"
            );
        }
    }
}

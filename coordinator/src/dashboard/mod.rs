//! The release dashboard: one HTML page, its script and its style sheet, served at `/` of the
//! coordinator's HTTP listener, and the error-rate samples behind its chart.
//!
//! The page has no build step and loads nothing from elsewhere: the three files are compiled
//! into the binary with `include_str!`, and a Content-Security-Policy that allows only this
//! origin's script, style and JSON API goes with every one of them. The page reads and acts
//! through the same JSON API as any other client (`/v1/ns`, `/v1/ns/{ns}/status`, `.../audit`,
//! `.../errors`, and the POSTs of canary, flip and rollback), so it has no powers of its own:
//! the gate, the policy and the audit trail treat its requests like sbctl's.

pub mod samples;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use samples::{ErrorSamples, ErrorSeries};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Only this origin's files and API; no inline script or style, no frames, no forms posted
/// elsewhere. Values from etcd and users are rendered as text, and this is the second line of
/// defence should one ever be rendered as markup.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page and its two files. Their paths are fixed, so the page names them absolutely.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A new binary may bring a new page; the files are small, so they are never cached stale.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

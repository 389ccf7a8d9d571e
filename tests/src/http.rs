//! The HTTP client the harness uses to talk to the processes it starts.

use std::time::Duration;

use anyhow::{Context, Result};

/// A plain-HTTP client that ignores proxy settings from the environment (everything the harness
/// talks to is on loopback) and gives up on a request after `timeout`.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("building an HTTP client")
}

/// Parses a body as JSON; a body that is not JSON becomes a JSON string holding the raw text, so
/// that assertions show what came back.
pub(crate) fn json_or_text(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

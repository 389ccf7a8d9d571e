//! What a stranger on the network, or a web page in an operator's browser, can do to the
//! servers (issue 14): requests are raw HTTP over TCP, so that the test says exactly which
//! bytes reach the server.

mod common;

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use switchboard_tests::{Coordinator, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "catalog";

/// Sends `request` (a whole HTTP/1.1 request; it should ask to close the connection) and
/// returns the status and the body as JSON (a string when the body is not JSON).
async fn raw_http(address: SocketAddr, request: &str) -> Result<(u16, Value)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .context("the server did not close the connection")??;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    Ok((status, body))
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

fn post(path: &str, host: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Issue 14, acceptance 4: a request naming a host outside the allowlist (a page whose name
/// was rebound to 127.0.0.1) is refused with a JSON error on the coordinator's HTTP API and on
/// the sidecar's, and changes nothing; IP addresses and localhost keep working, and a name
/// given with --allowed-host is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_another_host_are_refused_on_both_http_apis() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let (v1, _) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let epoch_before = epoch(&sbctl, NS).await?;
    let coordinator = env.coordinator.http_addr();
    let sidecar = env.start_sidecar("exposure").await?;
    sidecar.wait_ready(DEADLINE).await?;
    let sidecar_address = sidecar.http_addr();

    let rebound = "attacker.example:7101";
    let (code, body) = raw_http(
        coordinator,
        &post(
            &format!("/v1/ns/{NS}/canary"),
            rebound,
            r#"{"percent": 50}"#,
        ),
    )
    .await?;
    ensure!(code == 403, "{code} {body}");
    let error = body["error"].as_str().context("no JSON error")?;
    ensure!(
        error.contains("attacker.example") && error.contains("--allowed-host"),
        "{error}"
    );
    ensure!(
        epoch(&sbctl, NS).await? == epoch_before,
        "the refused canary changed routing"
    );
    for path in ["/healthz", "/", "/v1/ns", "/no/such/path"] {
        let (code, body) = raw_http(coordinator, &get(path, rebound)).await?;
        ensure!(
            code == 403 && body["error"].is_string(),
            "{path}: {code} {body}"
        );
    }
    let read = format!("/v1/ns/{NS}/items/schema_version");
    let (code, body) = raw_http(sidecar_address, &get(&read, "attacker.example")).await?;
    ensure!(code == 403 && body["error"].is_string(), "{code} {body}");
    let report = format!(r#"{{"version": "{v1}", "errors": 1000}}"#);
    let (code, body) = raw_http(
        sidecar_address,
        &post(&format!("/v1/ns/{NS}/report"), "attacker.example", &report),
    )
    .await?;
    ensure!(code == 403 && body["error"].is_string(), "{code} {body}");

    // IP addresses and localhost, as the README's tour uses them, still work.
    for host in [
        coordinator.to_string(),
        format!("localhost:{}", coordinator.port()),
    ] {
        let (code, body) =
            raw_http(coordinator, &get(&format!("/v1/ns/{NS}/status"), &host)).await?;
        ensure!(code == 200, "{host}: {code} {body}");
    }
    let (code, body) = raw_http(sidecar_address, &get(&read, "localhost")).await?;
    ensure!(code == 200, "{code} {body}");

    // A name the operator allows is answered.
    let named = Coordinator::start_with(
        &env.etcd_endpoints(),
        env.prefix(),
        &["--allowed-host", "switchboard.internal"],
    )
    .await?;
    let (code, body) = raw_http(
        named.http_addr(),
        &get("/healthz", "Switchboard.Internal:7101"),
    )
    .await?;
    ensure!(code == 200, "{code} {body}");
    let (code, _) = raw_http(named.http_addr(), &get("/healthz", rebound)).await?;
    ensure!(code == 403, "{code}");
    Ok(())
}

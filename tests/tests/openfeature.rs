//! Issue 15, acceptance 5: the official OpenFeature Python SDK, with its OFREP provider,
//! resolves Switchboard items through a real sidecar, and the bulk evaluation answers 304 to an
//! unchanged `If-None-Match` and pushes a `refetchEvaluation` when the consumer's answer changes.
//! The SDK is installed by `make deps` (scripts/install-python-clients.sh) into .deps/python.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::{Value, json};
use switchboard_tests::TestEnv;

const NS: &str = "catalog";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Resolves each (consumer, flag key) as an object flag with the Python SDK; one JSON object
/// per request (see tests/clients/openfeature_client.py).
async fn resolve_with_the_python_sdk(
    base_url: &str,
    requests: &[(&str, &str)],
) -> Result<Vec<Value>> {
    let packages = repository().join(".deps/python");
    ensure!(
        packages.join("openfeature/contrib/provider/ofrep").is_dir(),
        "the OpenFeature Python SDK is not installed in {}: run `make deps` \
         (scripts/install-python-clients.sh)",
        packages.display()
    );
    let script = repository().join("tests/clients/openfeature_client.py");
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(base_url)
        .args(
            requests
                .iter()
                .map(|(consumer, key)| format!("{consumer}={key}")),
        )
        .env("PYTHONPATH", &packages)
        .output()
        .await
        .context("running python3")?;
    ensure!(
        output.status.success(),
        "the Python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&output.stdout)))?;
    ensure!(results.len() == requests.len(), "{results:?}");
    Ok(results)
}

/// `POST /ofrep/v1/evaluate/flags` for `consumer`, with `If-None-Match: etag` if given: the
/// status, the ETag and the body.
async fn bulk(base_url: &str, consumer: &str, etag: Option<&str>) -> Result<(u16, String, Value)> {
    let mut request = reqwest::Client::new()
        .post(format!("{base_url}/ofrep/v1/evaluate/flags"))
        .json(&json!({"context": {"targetingKey": consumer}}));
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, etag, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openfeature_python_sdk_resolves_items_through_ofrep() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let (v1, _) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let v2 = stage_with(&sbctl, NS, &example("catalog-v2"), &["--allow-destructive"]).await?;
    let sidecar = env.start_sidecar("openfeature").await?;
    sidecar.wait_ready(DEADLINE).await?;
    sbctl
        .run(&["canary", NS, "50", "--wait"])
        .await?
        .ensure_success()?;

    // One consumer on the canary and one off it, as the sidecar's own reads say.
    let (mut on, mut off) = (None, None);
    for n in 0..200 {
        let consumer = format!("app-{n}");
        let answer = sidecar
            .get_item(NS, "schema_version", Some(&consumer))
            .await?;
        if answer.version.as_deref() == Some(v2.as_str()) {
            on.get_or_insert(consumer);
        } else {
            off.get_or_insert(consumer);
        }
    }
    let (on, off) = (
        on.context("nobody on a 50% canary")?,
        off.context("everybody on a 50% canary")?,
    );

    let base_url = sidecar.http_url();
    let results = resolve_with_the_python_sdk(
        &base_url,
        &[
            (&on, "catalog/schema_version"),
            // With one namespace, the bare item key names the flag too.
            (&off, "schema_version"),
            (&on, "catalog/no/such/item"),
        ],
    )
    .await?;
    let (canary, stable, missing) = (&results[0], &results[1], &results[2]);
    ensure!(
        canary["variant"] == v2.as_str()
            && canary["reason"] == "SPLIT"
            && canary["value"]["version"] == 192
            && canary["error_code"].is_null()
            && canary["metadata"]["namespace"] == NS,
        "on the canary: {canary}"
    );
    ensure!(
        stable["variant"] == v1.as_str()
            && stable["reason"] == "STATIC"
            && stable["value"]["version"] == 191
            && stable["error_code"].is_null(),
        "off the canary: {stable}"
    );
    ensure!(
        missing["value"] == json!({"default": true})
            && missing["error_code"] == "FLAG_NOT_FOUND"
            && missing["reason"] == "ERROR",
        "a missing item gives the default: {missing}"
    );

    // The bulk evaluation: every item, an ETag, 304 when unchanged, and the push connection.
    let (status, etag, body) = bulk(&base_url, &off, None).await?;
    ensure!(status == 200 && !etag.is_empty(), "{status} {etag} {body}");
    let flags = body["flags"].as_array().context("no flags")?;
    let schema = flags
        .iter()
        .find(|f| f["key"] == "schema_version")
        .context("no schema_version flag")?;
    ensure!(
        schema["variant"] == v1.as_str() && schema["value"]["version"] == 191,
        "{schema}"
    );
    let (status, _, _) = bulk(&base_url, &off, Some(&etag)).await?;
    ensure!(status == 304, "unchanged: {status}");
    let refresh = &body["refreshConnections"][0];
    ensure!(refresh["type"] == "sse", "{body}");
    let feed_url = refresh["url"].as_str().context("no url")?.to_string();
    ensure!(
        feed_url.contains(&format!("/ofrep/v1/events?consumer={off}")),
        "{feed_url}"
    );

    // The flip moves `off` to v2: the push connection says so with the new ETag, and the bulk
    // evaluation answers again.
    let mut push = reqwest::Client::new().get(&feed_url).send().await?;
    ensure!(push.status() == 200, "{}", push.status());
    sbctl.run(&["flip", NS, "--wait"]).await?.ensure_success()?;
    let mut received = String::new();
    let refetch = tokio::time::timeout(DEADLINE, async {
        loop {
            let chunk = push.chunk().await?.context("the push connection ended")?;
            received.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(data) = received
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .find(|data| data.contains("refetchEvaluation"))
            {
                return Ok::<Value, anyhow::Error>(serde_json::from_str(data)?);
            }
        }
    })
    .await
    .context("no refetchEvaluation after the flip")??;
    let (status, new_etag, body) = bulk(&base_url, &off, Some(&etag)).await?;
    ensure!(
        status == 200 && new_etag != etag,
        "after the flip: {status} {body}"
    );
    ensure!(
        refetch["etag"] == new_etag.as_str(),
        "{refetch} against {new_etag}"
    );
    Ok(())
}

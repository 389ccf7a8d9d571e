//! End-to-end tests of what a refused caller costs: with `--auth`, requests without a known
//! token write nothing to etcd, a known user's denials are audited only in namespaces that
//! exist and only a few a minute, every caller has a rate limit, and the auth file reloads on
//! SIGHUP. Every process is real: etcd, the coordinator, sbctl; the floods speak the admin
//! gRPC API and the JSON API directly.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use switchboard_proto::pb::admin_client::AdminClient;
use switchboard_proto::pb::{AuditRequest, ChunkData, FlipRequest, StatusRequest};
use switchboard_tests::{Coordinator, EtcdServer, give_up, unique_prefix, wait_until};
use tonic::Code;
use tonic::transport::Channel;

const NS: &str = "catalog";
/// The coordinator's allowance of audited denials per user and minute
/// (`AUDITED_DENIALS_PER_USER_PER_MINUTE`).
const AUDITED_PER_MINUTE: u64 = 5;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The keys under the test's prefix with their mod revisions, except the leader election's
/// (`<prefix>/coordinator/`), which the leader renews on its own.
async fn keys_under(etcd: &EtcdServer, prefix: &str) -> Result<BTreeMap<String, i64>> {
    let mut client = etcd.client().await?;
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    let response = client.get(format!("{prefix}/"), Some(options)).await?;
    let election = format!("{prefix}/coordinator/");
    Ok(response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            )
        })
        .filter(|(key, _)| !key.starts_with(&election))
        .collect())
}

/// The sum of the samples of `name` whose labels include every one of `labels`, from
/// Prometheus text.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(key, want)| series_labels.contains(&format!("{key}=\"{want}\"")));
        if matches {
            sum += value.trim().parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    sum
}

async fn metrics_text(coordinator: &Coordinator) -> Result<String> {
    let url = format!("{}/metrics", coordinator.http_url());
    Ok(reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?
        .text()
        .await?)
}

async fn metric(coordinator: &Coordinator, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    Ok(metric_sum(&metrics_text(coordinator).await?, name, labels))
}

/// A gRPC request carrying `token` (none if empty) as a bearer token.
fn with_token<T>(message: T, token: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if !token.is_empty() {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    Ok(request)
}

async fn admin_client(coordinator: &Coordinator) -> Result<AdminClient<Channel>> {
    Ok(AdminClient::connect(coordinator.grpc_url()).await?)
}

/// A token nobody has: 64 random hex digits.
fn made_up_token() -> String {
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>(),
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The answer of the JSON API to a GET of `path` with `token` (none if empty).
async fn http_get(
    http: &reqwest::Client,
    coordinator: &Coordinator,
    path: &str,
    token: &str,
) -> Result<reqwest::Response> {
    let mut request = http.get(format!("{}{path}", coordinator.http_url()));
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?)
}

/// The `denied` records of the namespace's audit trail, as (actor, rpc).
async fn denied_records(admin: &switchboard_tests::SbctlRunner) -> Result<Vec<(String, String)>> {
    let trail = admin.run_json(&["audit", NS]).await?;
    Ok(trail["records"]
        .as_array()
        .context("the audit trail has no records")?
        .iter()
        .filter(|r| r["action"] == "denied")
        .map(|r| {
            (
                r["actor"].as_str().unwrap_or_default().to_string(),
                r["detail"]["rpc"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

// ---------------------------------------------------------------------------------------------
// Acceptance: strangers cost nothing that lasts.

/// How many requests the stranger flood sends, and over how many concurrent tasks.
const STRANGER_REQUESTS: usize = 10_000;
const STRANGER_TASKS: usize = 32;

/// One request of the stranger flood, by its number: over gRPC (Flip, Status, Audit,
/// UploadChunks) or HTTP (status, flip), with a made-up token or none, naming the namespace
/// that exists, a made-up one, or a name that is not valid. Returns whether it was refused as
/// unauthenticated (gRPC `Unauthenticated`, HTTP 401).
async fn stranger_request(
    index: usize,
    mut grpc: AdminClient<Channel>,
    http: &reqwest::Client,
    coordinator: &Coordinator,
) -> Result<bool> {
    let ns = match index % 3 {
        0 => NS.to_string(),
        1 => format!("made-up-{index}"),
        _ => format!("Not_A_Namespace_{index}"),
    };
    let token = if index % 10 == 9 {
        String::new()
    } else {
        made_up_token()
    };
    let grpc_code = |result: Result<tonic::Code>| -> Result<bool> {
        let code = result?;
        Ok(code == Code::Unauthenticated)
    };
    match index % 6 {
        0 => grpc_code(
            grpc.flip(with_token(
                FlipRequest {
                    namespace: ns,
                    expected_epoch: 1,
                    reason: "a stranger".into(),
                    ..Default::default()
                },
                &token,
            )?)
            .await
            .map(|_| Code::Ok)
            .or_else(|status| Ok(status.code())),
        ),
        1 => grpc_code(
            grpc.status(with_token(StatusRequest { namespace: ns }, &token)?)
                .await
                .map(|_| Code::Ok)
                .or_else(|status| Ok(status.code())),
        ),
        2 => grpc_code(
            grpc.audit(with_token(
                AuditRequest {
                    namespace: ns,
                    verify: false,
                },
                &token,
            )?)
            .await
            .map(|_| Code::Ok)
            .or_else(|status| Ok(status.code())),
        ),
        3 => {
            let chunk = ChunkData {
                namespace: ns,
                hash: "ab".repeat(32),
                data: b"SBC1".to_vec(),
            };
            let stream = tokio_stream::iter(vec![chunk]);
            grpc_code(
                grpc.upload_chunks(with_token(stream, &token)?)
                    .await
                    .map(|_| Code::Ok)
                    .or_else(|status| Ok(status.code())),
            )
        }
        4 => {
            let answer =
                http_get(http, coordinator, &format!("/v1/ns/{ns}/status"), &token).await?;
            Ok(answer.status().as_u16() == 401)
        }
        _ => {
            let mut request = http
                .post(format!("{}/v1/ns/{ns}/flip", coordinator.http_url()))
                .header("content-type", "application/json")
                .body(r#"{"expected_epoch": 1}"#);
            if !token.is_empty() {
                request = request.bearer_auth(&token);
            }
            Ok(request.send().await?.status().as_u16() == 401)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_without_a_known_token_write_nothing_and_are_counted() -> Result<()> {
    let otto = new_user("otto", &["operator"]).await?;
    let dir = tempfile::tempdir()?;
    let auth = write_auth_file(dir.path(), &[&otto])?;
    let etcd = EtcdServer::start().await?;
    let prefix = unique_prefix();
    // The rate limit is off, so that every one of the requests goes through the gate's
    // denial path (the rate limit has a test of its own below).
    let coordinator = Arc::new(
        Coordinator::start_with(
            &etcd.endpoint(),
            &prefix,
            &["--auth", &auth, "--rate-limit-per-second", "0"],
        )
        .await?,
    );
    let operator = coordinator.sbctl().env("SWITCHBOARD_TOKEN", &otto.token);
    let set = write_set(dir.path(), "g1", 10, 20)?.display().to_string();
    stage(&operator, NS, &set).await?;
    operator.run(&["flip", NS]).await?.ensure_success()?;

    let keys_before = keys_under(&etcd, &prefix).await?;
    ensure!(
        keys_before.keys().any(|k| k.ends_with("/audit-head")),
        "the namespace has an audit trail to be written to: {keys_before:?}"
    );
    let denied = |text: &str| {
        metric_sum(
            text,
            "switchboard_requests_denied_total",
            &[("code", "unauthenticated")],
        )
    };
    let denied_before = denied(&metrics_text(&coordinator).await?);

    let grpc = admin_client(&coordinator).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..STRANGER_TASKS {
        let (grpc, http, coordinator) = (grpc.clone(), http.clone(), coordinator.clone());
        tasks.spawn(async move {
            let mut refused = 0usize;
            let mut other = Vec::new();
            for index in (task..STRANGER_REQUESTS).step_by(STRANGER_TASKS) {
                match stranger_request(index, grpc.clone(), &http, &coordinator).await {
                    Ok(true) => refused += 1,
                    Ok(false) => other.push(format!(
                        "request {index} was not refused as unauthenticated"
                    )),
                    Err(error) => other.push(format!("request {index}: {error:#}")),
                }
            }
            (refused, other)
        });
    }
    let mut refused = 0;
    let mut problems = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (count, other) = joined?;
        refused += count;
        problems.extend(other);
    }
    let elapsed = started.elapsed();
    println!(
        "{STRANGER_REQUESTS} requests with unknown or no tokens ({STRANGER_TASKS} concurrent, gRPC and HTTP) took {elapsed:.2?} ({:.0} requests/s)",
        STRANGER_REQUESTS as f64 / elapsed.as_secs_f64()
    );
    ensure!(
        problems.is_empty(),
        "{} requests were not refused as unauthenticated; the first: {:?}",
        problems.len(),
        problems.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(refused, STRANGER_REQUESTS);

    // Not a key was added, removed or rewritten.
    let keys_after = keys_under(&etcd, &prefix).await?;
    println!(
        "keys under {prefix}/ (without the election's): {} before the flood, {} after",
        keys_before.len(),
        keys_after.len()
    );
    let changed: Vec<String> = keys_after
        .iter()
        .filter(|(key, revision)| keys_before.get(*key) != Some(revision))
        .map(|(key, revision)| format!("{key} (at revision {revision})"))
        .chain(
            keys_before
                .keys()
                .filter(|key| !keys_after.contains_key(*key))
                .map(|key| format!("{key} (deleted)")),
        )
        .collect();
    ensure!(
        changed.is_empty(),
        "the flood wrote {} keys under the prefix; the first: {:?}",
        changed.len(),
        changed.iter().take(5).collect::<Vec<_>>()
    );

    // Every one of them is counted, and none became an unaudited denial of a known user.
    let text = metrics_text(&coordinator).await?;
    let counted = denied(&text) - denied_before;
    println!("switchboard_requests_denied_total{{code=\"unauthenticated\"}} rose by {counted}");
    assert_eq!(counted, STRANGER_REQUESTS as f64, "denials counted");
    let by_reason = |reason: &str| {
        metric_sum(
            &text,
            "switchboard_requests_denied_total",
            &[("code", "unauthenticated"), ("reason", reason)],
        )
    };
    assert_eq!(by_reason("missing_token"), (STRANGER_REQUESTS / 10) as f64);
    assert_eq!(
        by_reason("unknown_token"),
        (STRANGER_REQUESTS - STRANGER_REQUESTS / 10) as f64
    );
    assert_eq!(
        metric_sum(&text, "switchboard_denials_unaudited_total", &[]),
        0.0
    );

    // The log has a line a second at most, saying how many it left out.
    let log = coordinator.log_tail(1_000_000);
    let lines = log
        .lines()
        .filter(|l| l.contains("missing or unknown token"))
        .count();
    let allowed = elapsed.as_secs() as usize + 2;
    println!("log lines about the denials: {lines} (at most {allowed})");
    ensure!(
        (1..=allowed).contains(&lines),
        "{lines} log lines about {STRANGER_REQUESTS} denials in {elapsed:.1?}"
    );
    ensure!(
        log.contains("suppressed="),
        "no count of left-out lines:\n{log}"
    );

    // The trail has no denial, and is intact.
    assert_eq!(denied_records(&operator).await?, Vec::new());
    operator
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Acceptance: a viewer's flood of denied flips.

const VIEWER_FLIPS: usize = 1_000;
const VIEWER_TASKS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_thousand_denied_flips_are_audited_up_to_the_limit_and_status_answers_throughout()
-> Result<()> {
    let otto = new_user("otto", &["operator"]).await?;
    let vera = new_user("vera", &["viewer"]).await?;
    let vic = new_user("vic", &["viewer"]).await?;
    let dir = tempfile::tempdir()?;
    let auth = write_auth_file(dir.path(), &[&otto, &vera, &vic])?;
    let etcd = EtcdServer::start().await?;
    let prefix = unique_prefix();
    // The per-caller rate limit is set far above the flood, so that every flip reaches the
    // gate's permission check.
    let coordinator = Coordinator::start_with(
        &etcd.endpoint(),
        &prefix,
        &[
            "--auth",
            &auth,
            "--rate-limit-per-second",
            "100000",
            "--rate-limit-burst",
            "100000",
        ],
    )
    .await?;
    let operator = coordinator.sbctl().env("SWITCHBOARD_TOKEN", &otto.token);
    let set = write_set(dir.path(), "g1", 10, 20)?.display().to_string();
    stage(&operator, NS, &set).await?;
    operator.run(&["flip", NS]).await?.ensure_success()?;
    let epoch = epoch(&operator, NS).await?;

    // A status prober as the operator, running until the flood is over.
    let grpc = admin_client(&coordinator).await?;
    let flood_over = Arc::new(AtomicBool::new(false));
    let prober = {
        let (mut grpc, over, token) = (grpc.clone(), flood_over.clone(), otto.token.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            while !over.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let request = match with_token(
                    StatusRequest {
                        namespace: NS.into(),
                    },
                    &token,
                ) {
                    Ok(request) => request,
                    Err(error) => {
                        failures.push(format!("{error:#}"));
                        break;
                    }
                };
                match grpc.status(request).await {
                    Ok(reply) if reply.get_ref().json.contains("\"epoch\"") => {
                        latencies.push(asked.elapsed())
                    }
                    Ok(reply) => {
                        failures.push(format!("status without an epoch: {}", reply.get_ref().json))
                    }
                    Err(status) => failures.push(format!("{status:?}")),
                }
            }
            (latencies, failures)
        })
    };

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..VIEWER_TASKS {
        let (mut grpc, token) = (grpc.clone(), vera.token.clone());
        tasks.spawn(async move {
            let mut wrong = Vec::new();
            for index in (task..VIEWER_FLIPS).step_by(VIEWER_TASKS) {
                let request = with_token(
                    FlipRequest {
                        namespace: NS.into(),
                        expected_epoch: epoch,
                        reason: format!("flip {index}"),
                        ..Default::default()
                    },
                    &token,
                );
                match request {
                    Ok(request) => match grpc.flip(request).await {
                        Err(status) if status.code() == Code::PermissionDenied => {}
                        other => wrong.push(format!("flip {index}: {other:?}")),
                    },
                    Err(error) => wrong.push(format!("{error:#}")),
                }
            }
            wrong
        });
    }
    let mut wrong = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        wrong.extend(joined?);
    }
    let flood = started.elapsed();
    flood_over.store(true, Ordering::Relaxed);
    let (mut latencies, failures) = prober.await?;
    ensure!(
        wrong.is_empty(),
        "flips not denied: {:?}",
        wrong.iter().take(5).collect::<Vec<_>>()
    );

    latencies.sort();
    println!(
        "{VIEWER_FLIPS} denied flips by a viewer ({VIEWER_TASKS} concurrent) took {flood:.2?}; \
         status during the flood: {} answers, p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    ensure!(
        failures.is_empty(),
        "status failed during the flood: {failures:?}"
    );
    ensure!(
        !latencies.is_empty(),
        "status was never answered during the flood"
    );

    // Audited up to the allowance: a bucket of 5 that refills one a 12 s, so exactly 5 while
    // the whole test stays under 12 s since the first denial, and one more per 12 s after.
    let denials = denied_records(&operator).await?;
    let since_first = started.elapsed();
    let audited = denials.iter().filter(|(actor, _)| actor == "vera").count() as u64;
    let refills = since_first.as_secs() / (60 / AUDITED_PER_MINUTE);
    println!(
        "audited denials of vera: {audited} (the allowance is {AUDITED_PER_MINUTE} a minute; {since_first:.1?} since the first)"
    );
    ensure!(
        (AUDITED_PER_MINUTE..=AUDITED_PER_MINUTE + refills).contains(&audited),
        "vera's audited denials: {audited}, not {AUDITED_PER_MINUTE} (up to {} after {since_first:.1?})",
        AUDITED_PER_MINUTE + refills
    );
    assert!(denials.iter().all(|(_, rpc)| rpc == "Flip"), "{denials:?}");
    let text = metrics_text(&coordinator).await?;
    let unaudited = metric_sum(
        &text,
        "switchboard_denials_unaudited_total",
        &[("rpc", "Flip"), ("reason", "rate_limited")],
    );
    println!(
        "switchboard_denials_unaudited_total{{rpc=\"Flip\",reason=\"rate_limited\"}} {unaudited}"
    );
    assert_eq!(unaudited, (VIEWER_FLIPS as u64 - audited) as f64);
    assert_eq!(
        metric_sum(
            &text,
            "switchboard_requests_denied_total",
            &[("rpc", "Flip"), ("code", "permission_denied")]
        ),
        VIEWER_FLIPS as f64
    );

    // Another viewer's denial in a namespace that does not exist writes nothing there, and is
    // counted; the same viewer's next denial in the namespace that exists is audited.
    let mut vic_client = grpc.clone();
    for ns in ["ghost", NS] {
        let refused = vic_client
            .flip(with_token(
                FlipRequest {
                    namespace: ns.into(),
                    expected_epoch: 1,
                    ..Default::default()
                },
                &vic.token,
            )?)
            .await
            .err()
            .context("a viewer's flip went through")?;
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    let keys = keys_under(&etcd, &prefix).await?;
    let ghost: Vec<&String> = keys.keys().filter(|k| k.contains("/ghost")).collect();
    assert!(
        ghost.is_empty(),
        "keys of a namespace that does not exist: {ghost:?}"
    );
    assert_eq!(
        metric(
            &coordinator,
            "switchboard_denials_unaudited_total",
            &[("rpc", "Flip"), ("reason", "unknown_namespace")]
        )
        .await?,
        1.0
    );
    let denials = denied_records(&operator).await?;
    assert_eq!(
        denials.iter().filter(|(actor, _)| actor == "vic").count(),
        1,
        "{denials:?}"
    );
    operator
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rate limits.

/// Sends `count` Status requests with `token` as fast as one caller can, one after another;
/// returns the codes, and the first rate-limited status.
async fn burst_of_status(
    grpc: &mut AdminClient<Channel>,
    token: &str,
    count: usize,
) -> Result<(Vec<Code>, Option<tonic::Status>)> {
    let mut codes = Vec::new();
    let mut limited = None;
    for _ in 0..count {
        let request = with_token(
            StatusRequest {
                namespace: NS.into(),
            },
            token,
        )?;
        match grpc.status(request).await {
            Ok(_) => codes.push(Code::Ok),
            Err(status) => {
                codes.push(status.code());
                if status.code() == Code::ResourceExhausted && limited.is_none() {
                    limited = Some(status);
                }
            }
        }
    }
    Ok((codes, limited))
}

/// The coordinator's rate limit in these tests: 1 request a second, bursts of 10.
const BURST: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_limit_is_told_to_retry_and_others_are_unaffected() -> Result<()> {
    let alice = new_user("alice", &["viewer"]).await?;
    let bob = new_user("bob", &["viewer"]).await?;
    let carol = new_user("carol", &["viewer"]).await?;
    let dir = tempfile::tempdir()?;
    let auth = write_auth_file(dir.path(), &[&alice, &bob, &carol])?;
    let etcd = EtcdServer::start().await?;
    let coordinator = Coordinator::start_with(
        &etcd.endpoint(),
        &unique_prefix(),
        &[
            "--auth",
            &auth,
            "--rate-limit-per-second",
            "1",
            "--rate-limit-burst",
            &BURST.to_string(),
        ],
    )
    .await?;
    let mut grpc = admin_client(&coordinator).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;

    // gRPC: alice's burst passes, then RESOURCE_EXHAUSTED with the seconds to wait.
    let started = Instant::now();
    let (codes, limited) = burst_of_status(&mut grpc, &alice.token, 3 * BURST).await?;
    let passed = codes.iter().filter(|c| **c == Code::Ok).count();
    let refills = started.elapsed().as_secs() as usize + 1;
    println!("alice over gRPC: {passed} of {} passed", codes.len());
    ensure!(
        (BURST..=BURST + refills).contains(&passed),
        "{passed} of alice's requests passed: {codes:?}"
    );
    ensure!(
        codes
            .iter()
            .all(|c| *c == Code::Ok || *c == Code::ResourceExhausted),
        "{codes:?}"
    );
    let limited = limited.context("alice was never rate limited")?;
    let retry_after: u64 = limited
        .metadata()
        .get("retry-after")
        .context("no retry-after metadata")?
        .to_str()?
        .parse()?;
    ensure!(retry_after >= 1, "retry-after {retry_after}");
    ensure!(
        limited.message().contains("rate limited: user alice")
            && limited
                .message()
                .contains(&format!("retry after {retry_after} s")),
        "{limited:?}"
    );

    // bob is unaffected, over gRPC and HTTP.
    let (codes, _) = burst_of_status(&mut grpc, &bob.token, 3).await?;
    assert_eq!(codes, vec![Code::Ok; 3], "bob's requests");
    let answer = http_get(
        &http,
        &coordinator,
        &format!("/v1/ns/{NS}/status"),
        &bob.token,
    )
    .await?;
    assert_eq!(answer.status().as_u16(), 200, "bob over HTTP");

    // HTTP: carol's burst passes, then 429 with Retry-After and a JSON error.
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..3 * BURST {
        let answer = http_get(
            &http,
            &coordinator,
            &format!("/v1/ns/{NS}/status"),
            &carol.token,
        )
        .await?;
        statuses.push(answer.status().as_u16());
        if answer.status().as_u16() == 429 && refused.is_none() {
            let retry_after = answer
                .headers()
                .get("retry-after")
                .context("a 429 without Retry-After")?
                .to_str()?
                .to_string();
            let body: Value = answer.json().await?;
            refused = Some((retry_after, body));
        }
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let refills = started.elapsed().as_secs() as usize + 1;
    println!("carol over HTTP: {passed} of {} passed", statuses.len());
    ensure!(
        (BURST..=BURST + refills).contains(&passed),
        "{passed} of carol's requests passed: {statuses:?}"
    );
    ensure!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let (retry_after, body) = refused.context("carol was never rate limited")?;
    let retry_after: u64 = retry_after.parse().context("Retry-After in seconds")?;
    ensure!(retry_after >= 1, "Retry-After {retry_after}");
    let error = body["error"].as_str().context("no JSON error")?;
    ensure!(error.contains("rate limited: user carol"), "{body}");
    // The limit is per caller across both APIs: carol is limited over gRPC too.
    let (codes, _) = burst_of_status(&mut grpc, &carol.token, 1).await?;
    assert_eq!(codes, vec![Code::ResourceExhausted], "carol over gRPC");

    // Callers without a known token are limited by their address: made-up tokens, one per
    // request, do not make a new caller each.
    let started = Instant::now();
    let mut codes = Vec::new();
    for _ in 0..3 * BURST {
        let (answer, _) = burst_of_status(&mut grpc, &made_up_token(), 1).await?;
        codes.extend(answer);
    }
    let unauthenticated = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    let refills = started.elapsed().as_secs() as usize + 1;
    println!(
        "strangers from one address: {unauthenticated} of {} reached the gate",
        codes.len()
    );
    ensure!(
        (BURST..=BURST + refills).contains(&unauthenticated),
        "{unauthenticated} strangers' requests reached the gate: {codes:?}"
    );
    ensure!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    let (codes, _) = burst_of_status(&mut grpc, &bob.token, 1).await?;
    assert_eq!(codes, vec![Code::Ok], "bob after the strangers");

    let text = metrics_text(&coordinator).await?;
    let limited = |caller: &str| {
        metric_sum(
            &text,
            "switchboard_requests_rate_limited_total",
            &[("caller", caller)],
        )
    };
    ensure!(limited("user") >= 2.0, "{}", limited("user"));
    ensure!(limited("peer") >= 1.0, "{}", limited("peer"));

    // sbctl says what happened and when to retry, and fails (1). alice drains her allowance
    // before each try; a try that a refilled token let through is tried again.
    let sbctl = coordinator.sbctl().env("SWITCHBOARD_TOKEN", &alice.token);
    wait_until(DEADLINE, "sbctl to be rate limited", async || {
        burst_of_status(&mut grpc, &alice.token, BURST).await?;
        let output = sbctl.run(&["status", NS]).await?;
        if output.code == 1 && output.stderr.contains("rate limited; retry after ") {
            return Ok(true);
        }
        bail!("{output}")
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SIGHUP.

/// Whether `token` is a user's now: the JSON API answers 200, or 401 for nobody's.
async fn token_works(
    http: &reqwest::Client,
    coordinator: &Coordinator,
    token: &str,
) -> Result<bool> {
    let answer = http_get(http, coordinator, "/v1/ns", token).await?;
    match answer.status().as_u16() {
        200 => Ok(true),
        401 => Ok(false),
        other => bail!("GET /v1/ns answered {other}"),
    }
}

fn hang_up(coordinator: &Coordinator) -> Result<()> {
    let pid = i32::try_from(coordinator.pid()).context("pid")?;
    kill(Pid::from_raw(pid), Signal::SIGHUP).context("sending SIGHUP")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_auth_file_and_a_broken_file_keeps_the_users_in_force() -> Result<()> {
    let ada = new_user("ada", &["admin"]).await?;
    let nina = new_user("nina", &["viewer"]).await?;
    let dir = tempfile::tempdir()?;
    let auth = write_auth_file(dir.path(), &[&ada])?;
    let etcd = EtcdServer::start().await?;
    let coordinator =
        Coordinator::start_with(&etcd.endpoint(), &unique_prefix(), &["--auth", &auth]).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let gauge =
        async |coordinator: &Coordinator| metric(coordinator, "switchboard_auth_users", &[]).await;
    let reloads = async |coordinator: &Coordinator, result: &str| {
        metric(
            coordinator,
            "switchboard_auth_reloads_total",
            &[("result", result)],
        )
        .await
    };
    assert_eq!(gauge(&coordinator).await?, 1.0);
    assert_eq!(reloads(&coordinator, "ok").await?, 0.0);
    assert_eq!(reloads(&coordinator, "error").await?, 0.0);
    assert!(token_works(&http, &coordinator, &ada.token).await?);
    assert!(!token_works(&http, &coordinator, &nina.token).await?);

    // nina is added to the file: after SIGHUP her token works, without a restart.
    let pid = coordinator.pid();
    write_auth_file(dir.path(), &[&ada, &nina])?;
    hang_up(&coordinator)?;
    wait_until(DEADLINE, "nina's token to work", async || {
        token_works(&http, &coordinator, &nina.token).await
    })
    .await?;
    assert_eq!(coordinator.pid(), pid, "the coordinator was restarted");
    assert_eq!(reloads(&coordinator, "ok").await?, 1.0);
    assert_eq!(gauge(&coordinator).await?, 2.0);
    let log = coordinator.log_tail(200);
    ensure!(
        log.contains("auth file reloaded on SIGHUP") && log.contains("added nina"),
        "{log}"
    );

    // A broken file is refused: the error is counted and logged naming the file and the
    // problem, and both users keep working.
    std::fs::write(
        &auth,
        format!(
            "users:\n  - {{name: ada, roles: [superuser], token_sha256: \"{}\"}}\n",
            "ab".repeat(32)
        ),
    )?;
    hang_up(&coordinator)?;
    wait_until(DEADLINE, "the broken file to be counted", async || {
        Ok(reloads(&coordinator, "error").await? == 1.0)
    })
    .await?;
    assert!(token_works(&http, &coordinator, &ada.token).await?);
    assert!(token_works(&http, &coordinator, &nina.token).await?);
    assert_eq!(gauge(&coordinator).await?, 2.0);
    let log = coordinator.log_tail(200);
    let line = log
        .lines()
        .find(|l| l.contains("auth file not reloaded"))
        .with_context(|| format!("no log line about the broken file:\n{log}"))?;
    for says in ["ERROR", auth.as_str(), "user ada", "\"superuser\""] {
        ensure!(line.contains(says), "{says:?} not in {line:?}");
    }

    // A file that checks again, without nina: her token stops working.
    write_auth_file(dir.path(), &[&ada])?;
    hang_up(&coordinator)?;
    wait_until(DEADLINE, "nina's token to stop working", async || {
        Ok(!token_works(&http, &coordinator, &nina.token).await?)
    })
    .await?;
    assert!(token_works(&http, &coordinator, &ada.token).await?);
    assert_eq!(reloads(&coordinator, "ok").await?, 2.0);
    assert_eq!(gauge(&coordinator).await?, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_sighup_is_ignored_and_logged() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let coordinator = Coordinator::start(&etcd.endpoint(), &unique_prefix()).await?;
    hang_up(&coordinator)?;
    wait_until(DEADLINE, "the coordinator to log the SIGHUP", async || {
        let process = coordinator.process();
        if let Some(status) = process.exit_status()? {
            return Err(give_up(anyhow::anyhow!(
                "the coordinator exited on SIGHUP: {status}"
            )));
        }
        Ok(coordinator.log_tail(100).contains("SIGHUP ignored"))
    })
    .await?;
    let (code, _) = coordinator.get_json("/healthz").await?;
    assert_eq!(code, 200);
    assert_eq!(
        metric(&coordinator, "switchboard_auth_reloads_total", &[]).await?,
        0.0
    );
    Ok(())
}

//! End-to-end tests of identities and roles: a coordinator started with `--auth`, tokens made
//! by `sbctl token new`, and the real sbctl presenting them.

mod common;

use std::collections::HashSet;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use switchboard_tests::{Coordinator, EtcdServer, SbctlRunner, unique_prefix};

const NS: &str = "catalog";
/// sbctl's exit code for "not permitted".
const NOT_PERMITTED: i32 = 5;
/// The coordinator's allowance of audited denials per user and minute.
const AUDITED_PER_MINUTE: usize = 5;

/// The audit records of `trail` with action `denied`, as (actor, rpc).
fn denials(trail: &Value) -> Vec<(String, String)> {
    trail["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["action"] == "denied")
        .map(|r| {
            (
                r["actor"].as_str().unwrap_or_default().to_string(),
                r["detail"]["rpc"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn expect_not_permitted(runner: &SbctlRunner, args: &[&str], says: &str) -> Result<()> {
    let output = runner.run(args).await?.ensure_code(NOT_PERMITTED)?;
    ensure!(
        output.stderr.contains(says),
        "expected {says:?} on stderr:\n{output}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_change_anything_and_known_users_denials_are_audited() -> Result<()> {
    let vera = new_user("vera", &["viewer"]).await?;
    let otto = new_user("otto", &[]).await?;
    let ada = new_user("ada@example.com", &["admin"]).await?;
    let dir = tempfile::tempdir()?;
    let auth = write_auth_file(dir.path(), &[&vera, &otto, &ada])?;
    let etcd = EtcdServer::start().await?;
    let coordinator =
        Coordinator::start_with(&etcd.endpoint(), &unique_prefix(), &["--auth", &auth]).await?;
    // Two sets of the same keys: the second changes values only, nothing destructive.
    let set1 = write_set(dir.path(), "g1", 20, 50)?.display().to_string();
    let set2 = write_set(dir.path(), "g2", 20, 50)?.display().to_string();
    let as_user = |user: &User| coordinator.sbctl().env("SWITCHBOARD_TOKEN", &user.token);
    let (viewer, operator, admin) = (as_user(&vera), as_user(&otto), as_user(&ada));

    // The operator stages and flips; the name it claims (--as) is ignored.
    let v1 = stage(&operator, NS, &set1).await?;
    operator
        .run(&["--as", "mallory", "flip", NS, "-m", "go live"])
        .await?
        .ensure_success()?;
    let live = status(&viewer, NS).await?;
    assert_eq!(live["active"]["version"], v1.as_str(), "{live}");
    assert_eq!(live["last_change"]["by"], "otto", "{live}");
    assert_eq!(live["slots"]["blue"]["staged_by"], "otto", "{live}");
    let v2 = stage(&operator, NS, &set2).await?;

    // The viewer reads: status, plan (manifests and chunks), policy, the audit trail.
    viewer.run(&["status", NS]).await?.ensure_success()?;
    viewer.run(&["plan", NS, &set2]).await?.ensure_success()?;
    viewer
        .run(&["policy", "show", NS])
        .await?
        .ensure_success()?;
    viewer.run(&["audit", NS]).await?.ensure_success()?;

    // ... and may change nothing.
    let denied = "vera (viewer) may not";
    expect_not_permitted(&viewer, &["stage", NS, &set1], denied).await?;
    expect_not_permitted(
        &viewer,
        &["canary", NS, "10"],
        "vera (viewer) may not set the canary of catalog: it needs operator or admin",
    )
    .await?;
    expect_not_permitted(
        &viewer,
        &["flip", NS],
        "vera (viewer) may not flip catalog: it needs operator or admin",
    )
    .await?;
    expect_not_permitted(&viewer, &["rollback", NS], denied).await?;
    expect_not_permitted(
        &viewer,
        &["rollout", NS, "--steps", "10,100", "--interval", "60"],
        denied,
    )
    .await?;
    expect_not_permitted(&viewer, &["policy", "set", NS, "--bake", "10"], denied).await?;
    expect_not_permitted(
        &viewer,
        &["approve", NS, &v2],
        "vera (viewer) may not approve releases of catalog: it needs approver or admin",
    )
    .await?;
    // The judge's policy is for admins only.
    expect_not_permitted(
        &operator,
        &["policy", "set", NS, "--bake", "10"],
        "otto (operator) may not set the policy of catalog: it needs admin",
    )
    .await?;
    admin
        .run(&["policy", "set", NS, "--bake", "10", "-m", "shorter bake"])
        .await?
        .ensure_success()?;

    // Without a token, or with a wrong one, nothing at all.
    let nobody = coordinator.sbctl();
    expect_not_permitted(&nobody, &["status", NS], "missing or unknown token").await?;
    let guesser = coordinator
        .sbctl()
        .env("SWITCHBOARD_TOKEN", &"0".repeat(64));
    // (Pinning the epoch and version sends the flip without reading status first.)
    let flip_pinned = [
        "--as",
        "ada@example.com",
        "flip",
        NS,
        "--expect-epoch",
        "1",
        "--expect-version",
        &v2,
    ];
    expect_not_permitted(&guesser, &flip_pinned, "missing or unknown token").await?;
    // The hash in the file is not a token either.
    let hash_holder = coordinator.sbctl().env(
        "SWITCHBOARD_TOKEN",
        otto.line
            .split('"')
            .nth(3)
            .context("the line's token_sha256")?,
    );
    expect_not_permitted(&hash_holder, &["status", NS], "missing or unknown token").await?;

    // Nothing moved: v1 active, v2 staged, no canary.
    let after = status(&admin, NS).await?;
    assert_eq!(after["active"]["version"], v1.as_str(), "{after}");
    assert!(after["canary"].is_null(), "{after}");
    assert_eq!(after["slots"]["green"]["version"], v2.as_str(), "{after}");

    // Known users' denials are in the trail with their names and RPCs, within each user's
    // allowance of a few a minute: vera's first five, and otto's one. Requests without a
    // known token wrote nothing at all; they are counted in /metrics.
    let trail = admin.run_json(&["audit", NS]).await?;
    let denials = denials(&trail);
    let vera_denials: Vec<&str> = denials
        .iter()
        .filter(|(actor, _)| actor == "vera")
        .map(|(_, rpc)| rpc.as_str())
        .collect();
    let vera_tried = [
        "BeginStage",
        "SetCanary",
        "Flip",
        "Rollback",
        "Rollout",
        "SetPolicy",
        "Approve",
    ];
    // The allowance refills one denial every 12 s: a slow run may audit one more.
    ensure!(
        vera_denials.len() >= AUDITED_PER_MINUTE && vera_tried.starts_with(&vera_denials),
        "vera's audited denials: {vera_denials:?}\n{trail:#}"
    );
    let others: HashSet<(String, String)> = denials
        .iter()
        .filter(|(actor, _)| actor != "vera")
        .cloned()
        .collect();
    let expected: HashSet<(String, String)> = [("otto".to_string(), "SetPolicy".to_string())]
        .into_iter()
        .collect();
    assert_eq!(others, expected, "{trail:#}");
    let metrics = coordinator.get_json("/metrics").await?.1;
    let metrics = metrics.as_str().context("metrics text")?;
    let counted = |name: &str, label: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        counted(
            "switchboard_denials_unaudited_total",
            "reason=\"rate_limited\""
        ),
        (vera_tried.len() - vera_denials.len()) as f64,
        "vera's denials beyond the allowance are counted"
    );
    assert_eq!(
        counted(
            "switchboard_requests_denied_total",
            "code=\"unauthenticated\""
        ),
        3.0,
        "no token, a guessed token, the hash as a token"
    );
    let records = trail["records"].as_array().context("records")?;
    let flip_denial = records
        .iter()
        .find(|r| r["action"] == "denied" && r["actor"] == "vera" && r["detail"]["rpc"] == "Flip")
        .context("the viewer's flip denial")?;
    assert_eq!(flip_denial["namespace"], NS);
    assert_eq!(
        flip_denial["reason"],
        "vera (viewer) may not flip catalog: it needs operator or admin"
    );
    assert_eq!(flip_denial["detail"]["code"], "permission_denied");
    assert!(
        records.iter().all(|r| r["actor"] != "unauthenticated"),
        "a request without a known token was written to the trail: {trail:#}"
    );

    // The changes name the users who made them.
    let actors = |action: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["action"] == action)
            .filter_map(|r| r["actor"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(actors("stage"), ["otto", "otto"], "{trail:#}");
    assert_eq!(actors("flip"), ["otto"], "{trail:#}");
    assert_eq!(actors("policy"), ["ada@example.com"], "{trail:#}");

    // Denials go through the same hash chain, which stays intact.
    let verified = admin
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;
    assert!(verified.stdout.contains("intact"), "{verified}");

    // The HTTP API wants a viewer's token too; /healthz and /metrics stay open.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/ns/{NS}/status", coordinator.http_url());
    let (code, body) = coordinator.get_json(&format!("/v1/ns/{NS}/status")).await?;
    assert_eq!(code, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let answer = http.get(&url).bearer_auth(&vera.token).send().await?;
    assert_eq!(answer.status().as_u16(), 200);
    let answer = http
        .get(format!("{}/v1/ns/{NS}/audit", coordinator.http_url()))
        .bearer_auth(&otto.token)
        .send()
        .await?;
    assert_eq!(answer.status().as_u16(), 200);
    let (code, _) = coordinator.get_json("/healthz").await?;
    assert_eq!(code, 200);
    let (code, _) = coordinator.get_json("/metrics").await?;
    assert_eq!(code, 200);

    // No token reaches the log.
    let log = coordinator.log_tail(100_000);
    for user in [&vera, &otto, &ada] {
        assert!(!log.contains(&user.token), "a token in the log:\n{log}");
    }
    assert!(!log.contains("no --auth"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_auth_file_stops_the_coordinator_naming_the_problem() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("auth.yaml");
    std::fs::write(
        &path,
        format!(
            "users:\n  - {{name: alice, roles: [superuser], token_sha256: \"{}\"}}\n",
            "ab".repeat(32)
        ),
    )?;
    let etcd = EtcdServer::start().await?;
    let path = path.display().to_string();
    let error = Coordinator::start_with(&etcd.endpoint(), &unique_prefix(), &["--auth", &path])
        .await
        .err()
        .context("a coordinator started with a broken auth file")?;
    let error = format!("{error:#}");
    assert!(error.contains("exited"), "{error}");
    for says in [&path, "user alice", "\"superuser\""] {
        assert!(error.contains(says), "{says:?} not in:\n{error}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_the_coordinator_is_open_and_says_so() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let coordinator = Coordinator::start(&etcd.endpoint(), &unique_prefix()).await?;
    let dir = tempfile::tempdir()?;
    let set1 = write_set(dir.path(), "g1", 5, 10)?.display().to_string();
    let log = coordinator.log_tail(200);
    assert!(
        log.contains("no --auth: the coordinator is open; every caller acts as an anonymous admin"),
        "{log}"
    );
    // Any caller may do anything, and is recorded by the name it claims.
    let runner = coordinator.sbctl();
    stage(&runner, NS, &set1).await?;
    runner
        .run(&["--as", "carol", "flip", NS])
        .await?
        .ensure_success()?;
    let trail = runner.run_json(&["audit", NS]).await?;
    let flip = trail["records"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["action"] == "flip"))
        .context("the flip's record")?;
    assert_eq!(flip["actor"], "carol", "{trail:#}");
    Ok(())
}

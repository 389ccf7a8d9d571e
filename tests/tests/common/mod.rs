//! Helpers shared by the end-to-end tests: metadata sets written to temp dirs, and sbctl calls
//! that return what the tests assert on.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use switchboard_tests::{SbctlRunner, TestEnv, sbctl};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// The sample catalog shipped in `deploy/examples/`.
pub fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(name)
        .display()
        .to_string()
}

/// Writes `count` items under `dir`, each `{"generation": generation, "i": i, ...}` with about
/// `pad` bytes of padding, so that every item says which set it came from.
pub fn write_set(dir: &Path, generation: &str, count: usize, pad: usize) -> Result<PathBuf> {
    let root = dir.join(generation);
    std::fs::create_dir_all(root.join("items"))?;
    for i in 0..count {
        let value = json!({"generation": generation, "i": i, "pad": "x".repeat(pad)});
        std::fs::write(root.join(format!("items/k{i:05}.json")), value.to_string())?;
    }
    Ok(root)
}

/// `sbctl stage`, returning the version id printed last.
pub async fn stage(sbctl: &SbctlRunner, ns: &str, path: &str) -> Result<String> {
    stage_with(sbctl, ns, path, &[]).await
}

/// `sbctl stage` with more flags (`--allow-destructive`), returning the version id.
pub async fn stage_with(
    sbctl: &SbctlRunner,
    ns: &str,
    path: &str,
    flags: &[&str],
) -> Result<String> {
    let mut args = vec!["stage", ns, path, "-m", "test stage"];
    args.extend_from_slice(flags);
    let output = sbctl.run(&args).await?.ensure_success()?;
    let version = output
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    ensure!(
        version.len() == 16,
        "stage did not print a version id last:\n{output}"
    );
    Ok(version)
}

pub async fn status(sbctl: &SbctlRunner, ns: &str) -> Result<Value> {
    sbctl.run_json(&["status", ns]).await
}

/// Neither slot holds a version: nothing was ever staged in the namespace.
pub fn nothing_staged(status: &Value) -> Result<()> {
    for slot in ["blue", "green"] {
        let version = &status["slots"][slot]["version"];
        ensure!(
            version.is_null() || version == "",
            "the {slot} slot holds a version: {status}"
        );
    }
    Ok(())
}

pub async fn epoch(sbctl: &SbctlRunner, ns: &str) -> Result<u64> {
    status(sbctl, ns).await?["epoch"]
        .as_u64()
        .context("status has no epoch")
}

/// The actions of the namespace's audit records, oldest first.
pub async fn audit_actions(sbctl: &SbctlRunner, ns: &str) -> Result<Vec<String>> {
    let trail = sbctl.run_json(&["audit", ns]).await?;
    Ok(trail["records"]
        .as_array()
        .context("the audit trail has no records")?
        .iter()
        .filter_map(|r| r["action"].as_str().map(str::to_string))
        .collect())
}

/// `sbctl gate set NS NAME --etcd-key KEY --op == --value VALUE`: a gate that holds while the
/// etcd key reads VALUE.
pub async fn set_etcd_key_gate(
    sbctl: &SbctlRunner,
    ns: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    sbctl
        .run(&[
            "gate",
            "set",
            ns,
            name,
            "--etcd-key",
            key,
            "--op",
            "==",
            "--value",
            value,
            "-m",
            "a gate of the test",
        ])
        .await?
        .ensure_success()?;
    Ok(())
}

/// Stages `path` and flips to it; returns (version, epoch after the flip).
pub async fn stage_and_flip(env: &TestEnv, ns: &str, path: &str) -> Result<(String, u64)> {
    let sbctl = env.sbctl();
    let version = stage(&sbctl, ns, path).await?;
    sbctl.run(&["flip", ns]).await?.ensure_success()?;
    Ok((version, epoch(&sbctl, ns).await?))
}

/// Writes one generation of a set (see [`write_set`]), stages it and flips to it; returns the
/// version.
pub async fn release(
    sbctl: &SbctlRunner,
    ns: &str,
    dir: &Path,
    generation: &str,
    (count, pad): (usize, usize),
) -> Result<String> {
    let set = write_set(dir, generation, count, pad)?
        .display()
        .to_string();
    let version = stage(sbctl, ns, &set).await?;
    sbctl.run(&["flip", ns]).await?.ensure_success()?;
    Ok(version)
}

/// With no bake time (so that each stage may follow a flip at once), stages and flips one set
/// per generation of `count` items with `pad` bytes of padding; returns the versions in order.
pub async fn release_generations(
    sbctl: &SbctlRunner,
    ns: &str,
    dir: &Path,
    generations: &[&str],
    (count, pad): (usize, usize),
) -> Result<Vec<String>> {
    sbctl
        .run(&["policy", "set", ns, "--bake", "0"])
        .await?
        .ensure_success()?;
    let mut versions = Vec::new();
    for generation in generations {
        let set = write_set(dir, generation, count, pad)?
            .display()
            .to_string();
        versions.push(stage(sbctl, ns, &set).await?);
        sbctl.run(&["flip", ns]).await?.ensure_success()?;
    }
    Ok(versions)
}

/// Number of chunk keys of a namespace in etcd, and the highest mod revision among them.
pub async fn chunk_stats(env: &TestEnv, ns: &str) -> Result<(usize, i64)> {
    let mut client = env.etcd_client().await?;
    let prefix = format!("{}/ns/{ns}/chunks/", env.prefix());
    let response = client
        .get(
            prefix,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await?;
    let max = response
        .kvs()
        .iter()
        .map(|kv| kv.mod_revision())
        .max()
        .unwrap_or(0);
    Ok((response.kvs().len(), max))
}

/// A user made by `sbctl token new`: its token and the line for the auth file.
pub struct User {
    pub name: String,
    pub token: String,
    pub line: String,
}

/// `sbctl --json token new NAME --role ROLE...` (which talks to no coordinator).
pub async fn new_user(name: &str, roles: &[&str]) -> Result<User> {
    let mut args = vec!["token", "new", name];
    for role in roles {
        args.extend(["--role", role]);
    }
    let made = sbctl("http://127.0.0.1:1").run_json(&args).await?;
    let text = |field: &str| {
        made[field]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("token new printed no {field}: {made}"))
    };
    let user = User {
        name: text("name")?,
        token: text("token")?,
        line: text("line")?,
    };
    ensure!(user.name == name, "{made}");
    ensure!(user.token.len() == 64, "a token of 32 bytes in hex: {made}");
    ensure!(
        !user.line.contains(&user.token),
        "the line must not hold the token: {made}"
    );
    Ok(user)
}

pub fn write_auth_file(dir: &Path, users: &[&User]) -> Result<String> {
    let mut text = String::from("users:\n");
    for user in users {
        text.push_str(&format!("  {}\n", user.line));
    }
    let path = dir.join("auth.yaml");
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

/// `sbctl policy set` of the judge's settings: an error rate over 5% on at least
/// `min_requests` outcomes in a window of `window_seconds`, and the bake time if given.
pub async fn set_judge_policy(
    sbctl: &SbctlRunner,
    ns: &str,
    min_requests: u64,
    window_seconds: u64,
    bake_seconds: Option<u64>,
) -> Result<()> {
    let (min_requests, window) = (min_requests.to_string(), window_seconds.to_string());
    let mut args = vec![
        "policy",
        "set",
        ns,
        "--max-error-rate",
        "0.05",
        "--min-requests",
        &min_requests,
        "--window",
        &window,
    ];
    let bake = bake_seconds.map(|b| b.to_string());
    if let Some(bake) = &bake {
        args.extend(["--bake", bake.as_str()]);
    }
    sbctl.run(&args).await?.ensure_success()?;
    Ok(())
}

/// Whether `coordinator` counts itself the leader, as its metrics say.
pub async fn is_leader(coordinator: &switchboard_tests::Coordinator) -> Result<bool> {
    let url = format!("{}/metrics", coordinator.http_url());
    let text = reqwest::get(&url).await?.text().await?;
    Ok(text
        .lines()
        .any(|l| l.trim() == "switchboard_coordinator_is_leader 1"))
}

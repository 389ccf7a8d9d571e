//! End-to-end tests of what goes wrong: stages killed halfway and bad input, against a real
//! etcd, coordinator and sidecar.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use serde_json::Value;
use switchboard_tests::{TcpProxy, TestEnv, sbctl, wait_until};

const NS: &str = "catalog";

/// Routing and both slots, without the live sidecar list (whose timestamps move).
async fn routing_and_slots(runner: &switchboard_tests::SbctlRunner) -> Result<Value> {
    let mut status = status(runner, NS).await?;
    if let Some(object) = status.as_object_mut() {
        object.remove("sidecars");
    }
    Ok(status)
}

/// Starts staging a set large enough to take a while through a slowed proxy, and returns once
/// the coordinator has marked the idle slot `staging`.
async fn begin_slow_stage(
    env: &TestEnv,
    proxy: &TcpProxy,
    path: &str,
) -> Result<switchboard_tests::ChildProcess> {
    proxy.set_delay(Duration::from_millis(200));
    let slow = sbctl(&proxy.url());
    let child = slow.spawn(&["stage", NS, path, "-m", "will be killed"])?;
    let runner = env.sbctl();
    wait_until(DEADLINE, "the idle slot is staging", async || {
        let status = status(&runner, NS).await?;
        Ok(status["slots"]["green"]["state"] == "staging")
    })
    .await?;
    Ok(child)
}

/// After an interrupted stage: the slot is unsealed, the sidecar still serves the old
/// version, a flip is refused with a clear message, and the next stage succeeds.
async fn assert_interrupted_stage_is_harmless(
    env: &TestEnv,
    sidecar: &switchboard_tests::Sidecar,
    old_version: &str,
    path: &str,
) -> Result<()> {
    let runner = env.sbctl();
    let status = status(&runner, NS).await?;
    assert_eq!(status["slots"]["green"]["state"], "staging", "{status}");
    let answer = sidecar.get_item(NS, "items/k00000", None).await?;
    assert_eq!(answer.version.as_deref(), Some(old_version));

    let flip = runner.run(&["flip", NS]).await?;
    assert_eq!(flip.code, 4, "flip to an unsealed slot: {flip}");
    assert!(
        flip.stderr.contains("not sealed") && flip.stderr.contains("stage"),
        "{flip}"
    );
    let canary = runner.run(&["canary", NS, "50"]).await?;
    assert_eq!(canary.code, 4, "canary of an unsealed slot: {canary}");

    let new_version = stage(&runner, NS, path).await?;
    runner.run(&["flip", NS]).await?.ensure_success()?;
    sidecar
        .wait_for_epoch(NS, epoch(&runner, NS).await?, DEADLINE)
        .await?;
    let answer = sidecar.get_item(NS, "items/k00000", None).await?;
    assert_eq!(answer.version.as_deref(), Some(new_version.as_str()));
    assert_eq!(answer.body["generation"], "big");
    Ok(())
}

/// Acceptance 6: kill -9 of sbctl in the middle of a stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_whose_sbctl_is_killed_leaves_the_slot_unsealed() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let dir = tempfile::tempdir()?;
    let (old, _) = stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "small", 5, 10)?.display().to_string(),
    )
    .await?;
    let big = write_set(dir.path(), "big", 3_000, 2_000)?
        .display()
        .to_string();
    let proxy = TcpProxy::start(env.coordinator.grpc_addr()).await?;

    let child = begin_slow_stage(&env, &proxy, &big).await?;
    child.kill()?;
    proxy.set_delay(Duration::ZERO);
    assert_interrupted_stage_is_harmless(&env, &sidecar, &old, &big).await
}

/// Acceptance 6: kill -9 of the coordinator in the middle of a stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_whose_coordinator_is_killed_leaves_the_slot_unsealed() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let dir = tempfile::tempdir()?;
    let (old, _) = stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "small", 5, 10)?.display().to_string(),
    )
    .await?;
    let big = write_set(dir.path(), "big", 3_000, 2_000)?
        .display()
        .to_string();
    let proxy = TcpProxy::start(env.coordinator.grpc_addr()).await?;

    let child = begin_slow_stage(&env, &proxy, &big).await?;
    env.coordinator.kill()?;
    let status = child.wait(DEADLINE).await?;
    assert_ne!(
        status.code(),
        Some(0),
        "sbctl must fail when its coordinator dies:\n{}",
        child.log_tail(10)
    );
    proxy.set_delay(Duration::ZERO);
    env.coordinator.restart().await?;
    assert_interrupted_stage_is_harmless(&env, &sidecar, &old, &big).await
}

/// Acceptance 7: bad input is refused with the file and the problem, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_file_and_changes_nothing() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let runner = env.sbctl();
    stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let before = routing_and_slots(&runner).await?;
    let dir = tempfile::tempdir()?;

    let case = |name: &str, files: &[(&str, Vec<u8>)]| -> Result<String> {
        let root = dir.path().join(name);
        std::fs::create_dir_all(&root)?;
        for (file, content) in files {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().context("parent")?)?;
            std::fs::write(path, content)?;
        }
        Ok(root.display().to_string())
    };
    let ok = br#"{"fine": true}"#.to_vec();
    let cases: Vec<(String, i32, Vec<&str>)> = vec![
        (
            case(
                "malformed-json",
                &[
                    ("a.json", ok.clone()),
                    ("tables/broken.json", b"{\"a\": [1, 2".to_vec()),
                ],
            )?,
            4,
            vec!["tables/broken.json"],
        ),
        (
            case(
                "malformed-yaml",
                &[
                    ("a.json", ok.clone()),
                    ("policy.yaml", b"key: [unclosed\n  - x: : y\n".to_vec()),
                ],
            )?,
            4,
            vec!["policy.yaml"],
        ),
        (
            case(
                "duplicate",
                &[
                    ("same.json", ok.clone()),
                    ("same.yaml", b"fine: true\n".to_vec()),
                ],
            )?,
            4,
            vec!["same.json", "same.yaml"],
        ),
        (
            case(
                "bad-key",
                &[("a.json", ok.clone()), ("bad key!.json", ok.clone())],
            )?,
            4,
            vec!["bad key!.json"],
        ),
        (
            case(
                "too-big",
                &[
                    ("a.json", ok.clone()),
                    (
                        "big.json",
                        format!("\"{}\"", "x".repeat(1024 * 1024 + 10)).into_bytes(),
                    ),
                ],
            )?,
            4,
            vec!["big.json"],
        ),
        (case("empty", &[])?, 4, vec!["no item"]),
        (
            dir.path().join("does-not-exist").display().to_string(),
            2,
            vec!["does-not-exist"],
        ),
    ];
    for (path, code, mentions) in &cases {
        for command in ["stage", "plan"] {
            let output = runner.run(&[command, NS, path]).await?;
            assert_eq!(output.code, *code, "{command} {path}: {output}");
            for mention in mentions {
                assert!(
                    output.stderr.contains(mention),
                    "{command} {path} should name {mention:?}: {output}"
                );
            }
        }
    }
    assert_eq!(
        routing_and_slots(&runner).await?,
        before,
        "bad input changed the namespace"
    );

    // Bad arguments are usage errors.
    for args in [
        vec!["canary", NS, "101"],
        vec!["canary", NS, "ten"],
        vec!["canary", NS, "1.234"],
        vec!["stage", NS],
    ] {
        let output = runner.run(&args).await?;
        assert_eq!(output.code, 2, "{args:?}: {output}");
    }
    assert_eq!(routing_and_slots(&runner).await?, before);
    Ok(())
}

/// A namespace name outside the contract and a coordinator that is not there are clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_coordinator_and_bad_namespace_are_clear_errors() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let output = env.sbctl().run(&["status", "Bad/NS"]).await?;
    assert_eq!(output.code, 4, "{output}");
    assert!(output.stderr.contains("namespace"), "{output}");

    let port = switchboard_tests::free_port()?;
    let nowhere = sbctl(&format!("http://127.0.0.1:{port}"));
    let output = nowhere.run(&["status", NS]).await?;
    assert_eq!(output.code, 1, "{output}");
    assert!(
        output.stderr.contains("cannot reach the coordinator"),
        "{output}"
    );
    Ok(())
}

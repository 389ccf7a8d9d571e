//! The example application in deploy/examples/client, against a real etcd, coordinator and
//! sidecar: told to fail on a canary version, its reports make the judge flip that version back,
//! which is what the README's tour shows.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::*;
use switchboard_tests::{ChildProcess, TestEnv, bin_path, wait_until};

const NS: &str = "catalog";
const WINDOW_SECONDS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_client_failing_on_a_canary_gets_it_flipped_back() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_judge_policy(&sbctl, NS, 20, WINDOW_SECONDS, None).await?;
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let dir = tempfile::tempdir()?;
    let (good, _) = stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 20, 10)?.display().to_string(),
    )
    .await?;
    let bad = stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 20, 10)?.display().to_string(),
    )
    .await?;
    sbctl.run(&["canary", NS, "30"]).await?.ensure_success()?;
    let canary_epoch = epoch(&sbctl, NS).await?;
    sidecar.wait_for_epoch(NS, canary_epoch, DEADLINE).await?;

    let mut command = Command::new(bin_path("switchboard-example-client")?);
    command.args([
        "--sidecar",
        &sidecar.http_url(),
        "--namespace",
        NS,
        "--key",
        "items/k00001",
        "--rate",
        "100",
        "--fail-on-version",
        &bad,
    ]);
    let client = ChildProcess::spawn("example-client", command)?;

    wait_until(
        Duration::from_secs(WINDOW_SECONDS + 20),
        "the judge to flip the failing canary back",
        async || {
            let status = status(&sbctl, NS).await?;
            Ok(status["canary"].is_null() && status["epoch"].as_u64() > Some(canary_epoch))
        },
    )
    .await?;
    let actions = audit_actions(&sbctl, NS).await?;
    ensure!(
        actions.last().map(String::as_str) == Some("auto-rollback"),
        "{actions:?}"
    );
    // After the flip back, the application is served the good version only: a whole second
    // of its output names no other.
    let good_only = format!("version {good}: ");
    wait_until(
        DEADLINE,
        "a second of reads served by the good version only",
        async || {
            Ok(client.own_log().lines().any(|line| {
                line.contains(&good_only) && !line.contains(&bad) && !line.contains("no reads")
            }))
        },
    )
    .await?;
    let log = client.own_log();
    let bad_errors = format!("version {bad}: 0 ok, ");
    ensure!(
        log.lines().any(|line| line.contains(&bad_errors)),
        "the client never counted errors for {bad}:\n{log}"
    );
    ensure!(client.exit_status()?.is_none(), "the client exited:\n{log}");
    drop(client);
    let sidecar_status = sidecar.status().await?;
    ensure!(
        sidecar_status["namespaces"][NS]["canary"].is_null(),
        "{sidecar_status}"
    );
    Ok(())
}

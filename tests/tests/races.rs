//! Races against the compares in the coordinator's transactions (issue 16), made deterministic
//! with the coordinator's pause points (`crash::pause_point`): a change is held between its
//! reads and its transaction, the competing change is made from outside, and the first change
//! is let go. Each test names the compare it pins; removing that compare makes it fail.

mod common;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use common::*;
use switchboard_tests::{TestEnv, wait_until};

const NS: &str = "catalog";
const REFUSED: i32 = 4;

/// The pause point of a routing change, right before its transaction.
const ROUTING_PAUSE: &str = "routing-pause-before-txn";
/// The pause point of a stage's beginning, after it chose the idle slot.
const STAGE_PAUSE: &str = "stage-pause-before-txn";

/// A stack whose coordinator has `point` as a pause point, handshaking in `dir`.
async fn pausable(dir: &Path, point: &str) -> Result<TestEnv> {
    let failpoints = format!("{point}=return({})", dir.display());
    TestEnv::start_with_coordinator_env(&[NS], &[("FAILPOINTS", failpoints.as_str())]).await
}

/// Arms `point`: the next request that reaches it waits there.
fn arm(dir: &Path, point: &str) -> Result<()> {
    std::fs::write(dir.join(format!("{point}.armed")), b"").context("arming the pause point")
}

/// Waits until a request is held at `point`.
async fn paused(dir: &Path, point: &str) -> Result<()> {
    let marker = dir.join(format!("{point}.paused"));
    wait_until(
        DEADLINE,
        "the change to reach its pause point",
        async || Ok(marker.exists()),
    )
    .await
}

/// Lets the request held at `point` go on.
fn resume(dir: &Path, point: &str) -> Result<()> {
    std::fs::write(dir.join(format!("{point}.resume")), b"").context("resuming")
}

/// Issue 16, acceptance 2 (the compare of an etcd-key gate's key): a flip whose gate held when
/// it was checked is paused before its transaction; the key changes to a failing value; on
/// resume the transaction's compare of the key fails, the flip is decided again, and the gate
/// refuses it (exit 4, naming the gate and the value it saw). Routing is unchanged. Without the
/// compare, the flip commits on the stale check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_key_that_changes_after_the_check_refuses_the_flip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let env = pausable(dir.path(), ROUTING_PAUSE).await?;
    let sbctl = env.sbctl();
    let sets = tempfile::tempdir()?;
    let set1 = write_set(sets.path(), "r1", 10, 20)?.display().to_string();
    let set2 = write_set(sets.path(), "r2", 10, 20)?.display().to_string();
    let (v1, _) = stage_and_flip(&env, NS, &set1).await?;
    let mut client = env.etcd_client().await?;
    let gate_key = format!("/apps{}/migration", env.prefix());
    client.put(gate_key.as_str(), "done", None).await?;
    set_etcd_key_gate(&sbctl, NS, "migration", &gate_key, "done").await?;
    stage(&sbctl, NS, &set2).await?;
    let epoch_before = epoch(&sbctl, NS).await?;

    arm(dir.path(), ROUTING_PAUSE)?;
    let flip = sbctl.spawn(&["flip", NS, "-m", "races the migration"])?;
    paused(dir.path(), ROUTING_PAUSE).await?;
    // The gate held when the flip checked it; now the migration starts.
    client
        .put(gate_key.as_str(), "migration in progress", None)
        .await?;
    resume(dir.path(), ROUTING_PAUSE)?;
    let exit = flip.wait(DEADLINE).await?;
    let log = flip.log();
    ensure!(
        exit.code() == Some(REFUSED),
        "the flip was not refused ({exit:?}):\n{log}"
    );
    ensure!(
        log.contains("gate migration saw \"migration in progress\""),
        "the refusal does not name the gate and its value:\n{log}"
    );
    let after = status(&sbctl, NS).await?;
    ensure!(
        epoch(&sbctl, NS).await? == epoch_before && after["active"]["version"] == v1.as_str(),
        "routing changed: {after}"
    );
    Ok(())
}

/// Issue 16, acceptance 3 (the routing compare of a stage's beginning): a stage chooses the idle
/// slot, green, which holds a sealed v2, and is paused before the transaction that claims it; a
/// canary then sends consumers to green's v2; on resume the stage's compare of the routing key
/// fails, and decided again, it finds no idle slot and is refused. Green still holds v2, sealed
/// and serving the canary. Without the compare, the stage would overwrite the set the canary
/// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_starts_serving_after_a_stage_chose_it_is_not_staged_into() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let env = pausable(dir.path(), STAGE_PAUSE).await?;
    let sbctl = env.sbctl();
    let sets = tempfile::tempdir()?;
    let path = |generation: &str| -> Result<String> {
        Ok(write_set(sets.path(), generation, 10, 20)?
            .display()
            .to_string())
    };
    stage_and_flip(&env, NS, &path("s1")?).await?;
    let v2 = stage(&sbctl, NS, &path("s2")?).await?;

    arm(dir.path(), STAGE_PAUSE)?;
    let v3_set = path("s3")?;
    let staging = sbctl.spawn(&["stage", NS, &v3_set, "-m", "races the canary"])?;
    paused(dir.path(), STAGE_PAUSE).await?;
    sbctl
        .run(&["canary", NS, "10", "-m", "v2 to a few"])
        .await?
        .ensure_success()?;
    resume(dir.path(), STAGE_PAUSE)?;
    let exit = staging.wait(DEADLINE).await?;
    let log = staging.log();
    ensure!(!exit.success(), "the stage went through:\n{log}");
    let after = status(&sbctl, NS).await?;
    let green = &after["slots"]["green"];
    ensure!(
        green["version"] == v2.as_str() && green["state"] == "sealed",
        "green no longer holds v2 sealed: {after}"
    );
    ensure!(
        after["canary"]["version"] == v2.as_str() && after["canary"]["percent"] == 10.0,
        "the canary moved: {after}"
    );
    Ok(())
}

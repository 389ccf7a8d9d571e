//! Crash safety (issue 5, acceptance 3): a coordinator started with `FAILPOINTS` aborts at one
//! moment that matters, as `kill -9` would stop it there. Afterwards, seen through a healthy
//! coordinator, the state is either before or after, never between; the audit trail holds a
//! routing record exactly when routing changed, and its chain is intact; and the next
//! operation works.

mod common;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use switchboard_tests::{Coordinator, EtcdServer, SbctlRunner, unique_prefix};

const NS: &str = "catalog";

/// One etcd and a healthy coordinator on a fresh prefix, and sets of three generations.
struct Stage {
    etcd: EtcdServer,
    prefix: String,
    healthy: Coordinator,
    dir: tempfile::TempDir,
}

impl Stage {
    async fn start() -> Result<Self> {
        let etcd = EtcdServer::start().await?;
        let prefix = unique_prefix();
        let healthy = Coordinator::start(&etcd.endpoint(), &prefix).await?;
        Ok(Self {
            etcd,
            prefix,
            healthy,
            dir: tempfile::tempdir()?,
        })
    }

    fn sbctl(&self) -> SbctlRunner {
        self.healthy.sbctl()
    }

    /// A set of 3,000 items of about 1 KB: about three upload batches.
    fn set(&self, generation: &str) -> Result<String> {
        Ok(write_set(self.dir.path(), generation, 3000, 1000)?
            .display()
            .to_string())
    }

    /// Runs `args` through a coordinator that crashes at `failpoint`; returns once it is gone.
    async fn crash(&self, failpoint: &str, args: &[&str]) -> Result<()> {
        let doomed = Coordinator::start_with_env(
            &self.etcd.endpoint(),
            &self.prefix,
            &[],
            &[("FAILPOINTS", failpoint)],
        )
        .await?;
        let output = doomed.sbctl().run(args).await?;
        ensure!(
            !output.success(),
            "{args:?} succeeded through a coordinator set to crash at {failpoint}:\n{output}"
        );
        doomed.process().wait(DEADLINE).await.with_context(|| {
            format!(
                "the coordinator did not crash at {failpoint}:\n{}",
                doomed.log_tail(40)
            )
        })?;
        ensure!(
            doomed.log_tail(200).contains("crash point"),
            "{}",
            doomed.log_tail(40)
        );
        Ok(())
    }

    /// The routing epoch, and the audit records that changed routing (those with an epoch in
    /// their detail), after checking the chain.
    async fn routing_and_records(&self) -> Result<(u64, Vec<Value>)> {
        let sbctl = self.sbctl();
        sbctl
            .run(&["audit", NS, "--verify"])
            .await?
            .ensure_success()?;
        let epoch = epoch(&sbctl, NS).await?;
        let trail = sbctl.run_json(&["audit", NS]).await?;
        let routing_records: Vec<Value> = trail["records"]
            .as_array()
            .context("records")?
            .iter()
            .filter(|r| r["detail"]["epoch"].is_u64())
            .cloned()
            .collect();
        Ok((epoch, routing_records))
    }

    /// The audit trail holds one routing record per epoch, the last one for the current epoch.
    async fn audit_matches_routing(&self) -> Result<u64> {
        let (epoch, records) = self.routing_and_records().await?;
        ensure!(
            records.len() as u64 == epoch,
            "epoch {epoch} but {} routing records: {records:#?}",
            records.len()
        );
        if let Some(last) = records.last() {
            ensure!(last["detail"]["epoch"] == epoch, "{last}");
        }
        Ok(epoch)
    }

    async fn stage_records(&self) -> Result<usize> {
        let trail = self.sbctl().run_json(&["audit", NS]).await?;
        Ok(trail["records"]
            .as_array()
            .context("records")?
            .iter()
            .filter(|r| r["action"] == "stage")
            .count())
    }
}

/// A crash while staging (between chunk batches, or just before the seal's transaction) leaves
/// the slot unsealed, unserved and unaudited; a crash just after the seal's transaction leaves
/// it sealed and audited. Either way the next stage works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_staging_leaves_the_slot_before_or_after_the_seal() -> Result<()> {
    let stage_ = Stage::start().await?;
    let sbctl = stage_.sbctl();
    let set1 = stage_.set("g1")?;
    let v1 = stage(&sbctl, NS, &set1).await?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let set2 = stage_.set("g2")?;
    for (point, sealed) in [
        ("stage-between-chunk-batches=return", false),
        ("seal-before-txn=return", false),
        ("seal-after-txn=return", true),
    ] {
        let stages_before = stage_.stage_records().await?;
        stage_.crash(point, &["stage", NS, &set2]).await?;
        let shown = status(&sbctl, NS).await?;
        assert_eq!(shown["active"]["version"], v1.as_str(), "{point}: {shown}");
        let green = &shown["slots"]["green"];
        let expected_state = if sealed { "sealed" } else { "staging" };
        assert_eq!(green["state"], expected_state, "{point}: {shown}");
        assert_eq!(
            stage_.stage_records().await?,
            stages_before + usize::from(sealed),
            "{point}: a stage record exactly when the slot was sealed"
        );
        stage_.audit_matches_routing().await?;
        // An unsealed slot is refused clearly; the next stage works either way.
        if !sealed {
            let refused = sbctl.run(&["flip", NS]).await?.ensure_code(4)?;
            ensure!(refused.stderr.contains("not sealed"), "{refused}");
        }
        let v2 = stage(&sbctl, NS, &set2).await?;
        assert_eq!(
            status(&sbctl, NS).await?["slots"]["green"]["version"],
            v2.as_str()
        );
        if sealed {
            continue;
        }
        // Unseal again for the next point: stage something else, then the point's set.
        let other = stage_.set(&format!("other-{}", point.len()))?;
        stage(&sbctl, NS, &other).await?;
    }
    Ok(())
}

/// A crash just before or just after the transaction of a flip or a rollback: routing is
/// either unchanged or changed, and its audit record exists exactly when it changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_around_a_routing_change_leaves_routing_and_audit_in_step() -> Result<()> {
    let stage_ = Stage::start().await?;
    let sbctl = stage_.sbctl();
    let set1 = stage_.set("g1")?;
    let set2 = stage_.set("g2")?;
    let v1 = stage(&sbctl, NS, &set1).await?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let v2 = stage(&sbctl, NS, &set2).await?;

    for (point, args, changes) in [
        ("routing-before-txn=return(flip)", vec!["flip", NS], false),
        ("routing-after-txn=return(flip)", vec!["flip", NS], true),
        (
            "routing-before-txn=return(rollback)",
            vec!["rollback", NS],
            false,
        ),
        (
            "routing-after-txn=return(rollback)",
            vec!["rollback", NS],
            true,
        ),
    ] {
        let before = stage_.audit_matches_routing().await?;
        let active_before = status(&sbctl, NS).await?["active"]["version"].clone();
        stage_.crash(point, &args).await?;
        let after = stage_.audit_matches_routing().await?;
        let active_after = status(&sbctl, NS).await?["active"]["version"].clone();
        if changes {
            assert_eq!(after, before + 1, "{point}");
            assert_ne!(active_after, active_before, "{point}");
        } else {
            assert_eq!(after, before, "{point}");
            assert_eq!(active_after, active_before, "{point}");
        }
        // Put the namespace where the next point expects it.
        if !changes {
            sbctl.run(&args).await?.ensure_success()?;
        }
    }
    // Flip, flip back: v1 is active again, with v2 staged.
    let shown = status(&sbctl, NS).await?;
    assert_eq!(shown["active"]["version"], v1.as_str(), "{shown}");
    assert_eq!(shown["slots"]["green"]["version"], v2.as_str(), "{shown}");
    stage_.audit_matches_routing().await?;
    Ok(())
}

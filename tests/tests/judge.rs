//! End-to-end tests of automatic flip-back, rollouts, leader failover and convergence, against
//! a real etcd with real coordinators and sidecars. Applications are simulated by a task that
//! reports outcomes to the sidecars, as an application would after its reads.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use switchboard_tests::{Coordinator, Sidecar, TestEnv, wait_for, wait_until};

const NS: &str = "catalog";
/// The policy of these tests: a short window and few requests, so that they run quickly.
const WINDOW_SECONDS: u64 = 4;

/// Reports outcomes to every sidecar until dropped: per round, `ok`/`errors` for each version.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Traffic {
    fn start(sidecars: Vec<Arc<Sidecar>>, outcomes: Vec<(String, u64, u64)>) -> Self {
        Self::start_every(sidecars, outcomes, Duration::from_millis(100))
    }

    /// [`Self::start`] with a round every `every`.
    fn start_every(
        sidecars: Vec<Arc<Sidecar>>,
        outcomes: Vec<(String, u64, u64)>,
        every: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            // A round starts every `every`, however long the one before took.
            let mut rounds = tokio::time::interval(every);
            while !flag.load(Ordering::Relaxed) {
                rounds.tick().await;
                for sidecar in &sidecars {
                    for (version, ok, errors) in &outcomes {
                        let (code, body) = sidecar.report(NS, version, *ok, *errors).await?;
                        ensure!(code == 202, "report of {version} answered {code}: {body}");
                    }
                }
            }
            Ok(())
        });
        Self { stop, task }
    }

    async fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// Waits until every sidecar serves a routing newer than `canary_epoch` without a canary: the
/// canary was rolled back.
async fn only_the_baseline_within(
    sidecars: &[Arc<Sidecar>],
    canary_epoch: u64,
    deadline: Duration,
) -> Result<()> {
    wait_until(
        deadline,
        "every sidecar serves only the baseline",
        async || {
            let mut all = true;
            for sidecar in sidecars {
                let status = sidecar.status().await?;
                let ns = &status["namespaces"][NS];
                all &= ns["epoch"].as_u64().unwrap_or(0) > canary_epoch && ns["canary"].is_null();
            }
            Ok(all)
        },
    )
    .await
}

async fn set_test_policy(env: &TestEnv, bake_seconds: u64) -> Result<()> {
    set_judge_policy(&env.sbctl(), NS, 50, WINDOW_SECONDS, Some(bake_seconds)).await
}

/// Two versions staged, `a` active and `b` in the idle slot, two sidecars serving.
async fn two_versions(
    env: &TestEnv,
) -> Result<(String, String, Vec<Arc<Sidecar>>, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let sidecars = vec![
        Arc::new(env.start_sidecar("sidecar-1").await?),
        Arc::new(env.start_sidecar("sidecar-2").await?),
    ];
    let (a, _) = stage_and_flip(
        env,
        NS,
        &write_set(dir.path(), "a", 20, 10)?.display().to_string(),
    )
    .await?;
    let b = stage(
        &env.sbctl(),
        NS,
        &write_set(dir.path(), "b", 20, 10)?.display().to_string(),
    )
    .await?;
    Ok((a, b, sidecars, dir))
}

async fn wait_all_on(
    sidecars: &[Arc<Sidecar>],
    sbctl: &switchboard_tests::SbctlRunner,
) -> Result<u64> {
    let epoch = epoch(sbctl, NS).await?;
    for sidecar in sidecars {
        sidecar.wait_for_epoch(NS, epoch, DEADLINE).await?;
    }
    Ok(epoch)
}

fn last_record(trail: &Value) -> Result<&Value> {
    trail["records"]
        .as_array()
        .and_then(|r| r.last())
        .context("no audit record")
}

/// Acceptance 1: a canary at 20% erring 30% of the time is rolled back within the window plus
/// 2 s, on every sidecar, and the audit trail shows the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_automatically() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 60).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    sbctl.run(&["canary", NS, "20"]).await?.ensure_success()?;
    let canary_epoch = wait_all_on(&sidecars, &sbctl).await?;

    let started = Instant::now();
    let traffic = Traffic::start(
        sidecars.clone(),
        vec![(b.clone(), 7, 3), (a.clone(), 40, 0)],
    );
    only_the_baseline_within(
        &sidecars,
        canary_epoch,
        Duration::from_secs(WINDOW_SECONDS + 2),
    )
    .await?;
    eprintln!(
        "canary rolled back {:?} after the first bad report",
        started.elapsed()
    );
    traffic.stop().await?;
    for sidecar in &sidecars {
        for n in 0..50 {
            let answer = sidecar
                .get_item(NS, "items/k00001", Some(&format!("c{n}")))
                .await?;
            assert_eq!(answer.version.as_deref(), Some(a.as_str()));
        }
    }
    let trail = sbctl.run_json(&["audit", NS]).await?;
    let record = last_record(&trail)?;
    assert_eq!(record["action"], "auto-rollback", "{record}");
    let verdict = &record["detail"]["evidence"]["verdict"];
    assert_eq!(verdict["outcome"], "breach", "{record}");
    assert!(
        verdict["candidate"]["errors"].as_u64().unwrap_or(0) > 0,
        "{record}"
    );
    assert!(
        verdict["candidate_error_rate"].as_f64().unwrap_or(0.0) > 0.2,
        "{record}"
    );
    assert_eq!(
        record["detail"]["evidence"]["policy"]["window_seconds"],
        WINDOW_SECONDS
    );
    sbctl
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;

    // Both sides export what happened.
    let coordinator_metrics = reqwest::get(format!("{}/metrics", env.coordinator.http_url()))
        .await?
        .text()
        .await?;
    let sidecar_metrics = reqwest::get(format!("{}/metrics", sidecars[0].http_url()))
        .await?
        .text()
        .await?;
    for name in [
        "switchboard_sidecar_read_seconds_bucket",
        "switchboard_sidecar_reports_total",
        "switchboard_sidecar_epoch",
    ] {
        assert!(
            sidecar_metrics.contains(name),
            "sidecar /metrics lacks {name}"
        );
    }
    for name in [
        "switchboard_automatic_rollbacks_total",
        "switchboard_judge_verdicts_total",
        "switchboard_sidecars_on_current_epoch",
    ] {
        assert!(
            coordinator_metrics.contains(name),
            "coordinator /metrics lacks {name}"
        );
    }
    Ok(())
}

/// A rollout whose canary breaches is rolled back and recorded as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_rolled_back_on_a_breach() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 0).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    sbctl
        .run(&["rollout", NS, "--steps", "10,50,100", "--interval", "1"])
        .await?
        .ensure_success()?;
    wait_all_on(&sidecars, &sbctl).await?;
    let traffic = Traffic::start(
        sidecars.clone(),
        vec![(b.clone(), 7, 3), (a.clone(), 40, 0)],
    );
    wait_until(
        Duration::from_secs(WINDOW_SECONDS + 2),
        "the rollout is rolled back",
        async || Ok(status(&sbctl, NS).await?["rollout"]["state"] == "rolled_back"),
    )
    .await?;
    traffic.stop().await?;
    let status = status(&sbctl, NS).await?;
    assert!(status["canary"].is_null(), "{status}");
    assert_eq!(status["active"]["version"], a.as_str());
    assert_eq!(
        status["rollout"]["step"], 0,
        "a breaching canary must not have advanced: {status}"
    );
    Ok(())
}

/// Acceptance 2: during the bake time after a full flip, a breach returns everyone to the
/// previous slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_is_flipped_back_during_the_bake_time() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 120).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let flipped = wait_all_on(&sidecars, &sbctl).await?;
    let baking = status(&sbctl, NS).await?;
    assert!(
        baking["bake_until_ms"].is_u64(),
        "a flip starts the bake time: {baking}"
    );

    let traffic = Traffic::start(sidecars.clone(), vec![(b.clone(), 7, 3)]);
    wait_until(
        Duration::from_secs(WINDOW_SECONDS + 2),
        "everyone is back on the previous version",
        async || {
            let mut all = true;
            for sidecar in &sidecars {
                let answer = sidecar.get_item(NS, "items/k00001", None).await?;
                all &= answer.epoch.unwrap_or(0) > flipped
                    && answer.version.as_deref() == Some(a.as_str());
            }
            Ok(all)
        },
    )
    .await?;
    traffic.stop().await?;
    let status = status(&sbctl, NS).await?;
    assert_eq!(status["active"]["version"], a.as_str(), "{status}");
    assert!(status["bake_until_ms"].is_null(), "{status}");
    let trail = sbctl.run_json(&["audit", NS]).await?;
    let record = last_record(&trail)?;
    assert_eq!(
        (record["action"].as_str(), record["detail"]["kind"].as_str()),
        (Some("auto-rollback"), Some("flip"))
    );
    Ok(())
}

/// Acceptance 3, in the small: both versions at 1% errors for several windows; no rollback.
/// (The long-run false-rollback rate is measured by `switchboard-loadtest judge`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_noise_does_not_roll_back() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 60).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    sbctl.run(&["canary", NS, "20"]).await?.ensure_success()?;
    let canary_epoch = wait_all_on(&sidecars, &sbctl).await?;
    let traffic = Traffic::start(
        sidecars.clone(),
        vec![(b.clone(), 99, 1), (a.clone(), 99, 1)],
    );
    // Watch for three windows: the canary must stay, at the same epoch, throughout.
    let until = Instant::now() + Duration::from_secs(3 * WINDOW_SECONDS);
    while Instant::now() < until {
        let status = status(&sbctl, NS).await?;
        assert_eq!(
            status["epoch"], canary_epoch,
            "routing changed under healthy traffic: {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    traffic.stop().await?;
    Ok(())
}

/// Acceptance 4: a rollout with no reports never advances past its first step; with healthy
/// reports it steps on to the end, and the audit trail has each step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_advances_only_on_healthy_data() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 0).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    sbctl
        .run(&["rollout", NS, "--steps", "10,50,100", "--interval", "1"])
        .await?
        .ensure_success()?;
    let first_epoch = wait_all_on(&sidecars, &sbctl).await?;

    // Three intervals and a window without reports: still at the first step.
    let until = Instant::now() + Duration::from_secs(WINDOW_SECONDS + 1);
    while Instant::now() < until {
        let status = status(&sbctl, NS).await?;
        assert_eq!(
            status["rollout"]["step"], 0,
            "advanced without data: {status}"
        );
        assert_eq!(status["epoch"], first_epoch);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let traffic = Traffic::start(
        sidecars.clone(),
        vec![(b.clone(), 20, 0), (a.clone(), 20, 0)],
    );
    wait_until(
        Duration::from_secs(30),
        "the rollout completes",
        async || Ok(status(&sbctl, NS).await?["rollout"]["state"] == "done"),
    )
    .await?;
    traffic.stop().await?;
    let status = status(&sbctl, NS).await?;
    assert_eq!(status["active"]["version"], b.as_str(), "{status}");
    let trail = sbctl.run_json(&["audit", NS]).await?;
    let steps: Vec<f64> = trail["records"]
        .as_array()
        .context("records")?
        .iter()
        .filter(|r| r["action"] == "rollout-step")
        .filter_map(|r| r["detail"]["to_percent"].as_f64())
        .collect();
    assert_eq!(steps, [50.0, 100.0], "each step exactly once: {trail}");
    Ok(())
}

/// A rollout step waits while a gate blocks it, and is taken once the gate passes; the step's
/// audit record holds what the gate saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_step_waits_for_its_gates() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 0).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    sbctl
        .run(&["rollout", NS, "--steps", "10,100", "--interval", "1"])
        .await?
        .ensure_success()?;
    wait_all_on(&sidecars, &sbctl).await?;
    let gate_key = format!("/apps{}/freeze", env.prefix());
    let mut client = env.etcd_client().await?;
    client.put(gate_key.as_str(), "frozen", None).await?;
    sbctl
        .run(&[
            "gate",
            "set",
            NS,
            "freeze",
            "--etcd-key",
            &gate_key,
            "--op",
            "!=",
            "--value",
            "frozen",
        ])
        .await?
        .ensure_success()?;
    let traffic = Traffic::start(
        sidecars.clone(),
        vec![(b.clone(), 20, 0), (a.clone(), 20, 0)],
    );
    // The judge passes and the interval is over, yet the gate holds the step.
    let metrics_url = format!("{}/metrics", env.coordinator.http_url());
    let gated_steps = async || -> Result<u64> {
        let text = reqwest::get(&metrics_url).await?.text().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("switchboard_rollout_steps_gated_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum())
    };
    wait_until(DEADLINE, "the leader to find the step gated", async || {
        Ok(gated_steps().await? >= 3)
    })
    .await?;
    let held = status(&sbctl, NS).await?;
    assert_eq!(
        held["rollout"]["step"], 0,
        "stepped past a blocking gate: {held}"
    );
    assert_eq!(held["rollout"]["state"], "running", "{held}");

    client.put(gate_key.as_str(), "open", None).await?;
    wait_until(DEADLINE, "the rollout completes", async || {
        Ok(status(&sbctl, NS).await?["rollout"]["state"] == "done")
    })
    .await?;
    traffic.stop().await?;
    let trail = sbctl.run_json(&["audit", NS]).await?;
    let step = trail["records"]
        .as_array()
        .context("records")?
        .iter()
        .find(|r| r["action"] == "rollout-step")
        .context("the step's record")?
        .clone();
    assert_eq!(step["detail"]["gates"][0]["saw"], "\"open\"", "{step}");
    Ok(())
}

/// Acceptance 5: three coordinators; the leader is killed during a rollout; another takes over,
/// no step is taken twice, and the rollout completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_continues_a_rollout_without_repeating_a_step() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let others = [
        env.start_coordinator().await?,
        env.start_coordinator().await?,
    ];
    set_test_policy(&env, 0).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    sbctl
        .run(&[
            "rollout",
            NS,
            "--steps",
            "5,10,20,40,60,100",
            "--interval",
            "2",
        ])
        .await?
        .ensure_success()?;
    // Sidecars take reports only for versions they serve, so traffic starts with the canary.
    wait_all_on(&sidecars, &sbctl).await?;
    let traffic = Traffic::start(
        sidecars.clone(),
        vec![(b.clone(), 20, 0), (a.clone(), 20, 0)],
    );
    wait_until(DEADLINE, "the rollout takes a step", async || {
        Ok(status(&sbctl, NS).await?["rollout"]["step"]
            .as_u64()
            .unwrap_or(0)
            >= 1)
    })
    .await?;

    let coordinators: Vec<&Coordinator> = std::iter::once(&env.coordinator)
        .chain(others.iter())
        .collect();
    let leader_name = status(&sbctl, NS).await?["leader"]
        .as_str()
        .context("no leader")?
        .to_string();
    let leader = coordinators
        .iter()
        .find(|c| leader_name.ends_with(&format!(":{}", c.grpc_addr().port())))
        .with_context(|| format!("no coordinator is {leader_name}"))?;
    let survivor = coordinators
        .iter()
        .find(|c| c.grpc_addr() != leader.grpc_addr())
        .context("no survivor")?;
    let survivor_sbctl = survivor.sbctl();
    leader.kill()?;
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "another coordinator leads",
        async || {
            let status = status(&survivor_sbctl, NS).await?;
            Ok(status["leader"].as_str().is_some_and(|l| l != leader_name))
        },
    )
    .await?;
    eprintln!(
        "failover: a new leader was elected {:?} after kill -9",
        killed.elapsed()
    );
    wait_until(
        Duration::from_secs(40),
        "the rollout completes under the new leader",
        async || Ok(status(&survivor_sbctl, NS).await?["rollout"]["state"] == "done"),
    )
    .await?;
    traffic.stop().await?;

    let trail = survivor_sbctl.run_json(&["audit", NS, "--verify"]).await?;
    let steps: Vec<f64> = trail["records"]
        .as_array()
        .context("records")?
        .iter()
        .filter(|r| r["action"] == "rollout-step")
        .filter_map(|r| r["detail"]["to_percent"].as_f64())
        .collect();
    assert_eq!(
        steps,
        [10.0, 20.0, 40.0, 60.0, 100.0],
        "no step twice, none skipped: {steps:?}"
    );
    let actors: std::collections::HashSet<&str> = trail["records"]
        .as_array()
        .context("records")?
        .iter()
        .filter(|r| r["action"] == "rollout-step")
        .filter_map(|r| r["actor"].as_str())
        .collect();
    assert!(
        actors.len() >= 2,
        "steps should come from two leaders: {actors:?}"
    );
    Ok(())
}

/// Acceptance 6: `flip --wait` returns once every live sidecar serves the new epoch; with one
/// sidecar stopped by SIGSTOP it exits 1 after its timeout and names that sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_wait_converges_and_names_a_stopped_sidecar() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    // No bake time, so that the slot flipped away from can be staged into at once.
    set_test_policy(&env, 0).await?;
    let (_a, _b, sidecars, dir) = two_versions(&env).await?;
    wait_all_on(&sidecars, &sbctl).await?;

    let waited = sbctl
        .run(&["flip", NS, "--wait", "--timeout", "20"])
        .await?
        .ensure_success()?;
    let epoch = epoch(&sbctl, NS).await?;
    for sidecar in &sidecars {
        assert_eq!(
            sidecar.epoch(NS).await?,
            epoch,
            "flip --wait returned early: {waited}"
        );
    }

    stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "c", 20, 10)?.display().to_string(),
    )
    .await?;
    sidecars[1].pause()?;
    let output = sbctl.run(&["flip", NS, "--wait", "--timeout", "3"]).await?;
    sidecars[1].resume()?;
    assert_eq!(output.code, 1, "{output}");
    assert!(
        output.stderr.contains("sidecar-2") && !output.stderr.contains("sidecar-1,"),
        "{output}"
    );
    Ok(())
}

/// A fleet larger than the coordinator's `--acknowledgements-per-second` is asked to spread the
/// health records that acknowledge a routing change, and does: five sidecars against a rate of
/// one a second are asked for 5 s. `flip --wait` does not wait for the records (the streams tell
/// the leader), and each record comes within the spread. Without the spread every record comes
/// within about 100 ms of the flip; with it, the chance that all five random delays fall within
/// the first 500 ms is 1 in 100,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_larger_than_the_acknowledgement_rate_spreads_its_records() -> Result<()> {
    const SIDECARS: usize = 5;
    let env = TestEnv::start_with_coordinator(&[NS], &["--acknowledgements-per-second", "1"], &[])
        .await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 0).await?;
    let dir = tempfile::tempdir()?;
    let mut sidecars = Vec::new();
    for index in 0..SIDECARS {
        sidecars.push(Arc::new(
            env.start_sidecar(&format!("sidecar-{index}")).await?,
        ));
    }
    stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 20, 10)?.display().to_string(),
    )
    .await?;
    stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 20, 10)?.display().to_string(),
    )
    .await?;
    let before = wait_all_on(&sidecars, &sbctl).await?;
    // Every sidecar streams to the leader and has told it its epoch: its record says the same
    // epoch, and a record is written after the stream is told.
    wait_until(DEADLINE, "every stream and record", async || {
        let metrics = reqwest::get(format!("{}/metrics", env.coordinator.http_url()))
            .await?
            .text()
            .await?;
        let records = status(&sbctl, NS).await?;
        let on_epoch = records["sidecars"]
            .as_array()
            .map_or(0, |all| all.iter().filter(|s| s["epoch"] == before).count());
        Ok(
            metrics.contains(&format!("switchboard_outcome_streams {SIDECARS}"))
                && on_epoch == SIDECARS,
        )
    })
    .await?;

    sbctl
        .run(&["flip", NS, "--wait", "--timeout", "20"])
        .await?
        .ensure_success()?;
    let mut client = env.etcd_client().await?;
    let routing = client.get(env.keys().routing(NS), None).await?;
    let routing: Value =
        serde_json::from_slice(routing.kvs().first().context("no routing")?.value())?;
    assert_eq!(routing["acknowledge_within_ms"], 5_000, "{routing}");
    let flipped = routing["epoch"].as_u64().context("no epoch")?;
    let committed_ms = routing["at_ms"].as_u64().context("no at_ms")?;
    for sidecar in &sidecars {
        assert_eq!(sidecar.epoch(NS).await?, flipped);
    }

    // Every record comes, each within the spread (and the settling after a switch).
    let written_after_ms = wait_for(DEADLINE, "every record on the flip", async || {
        let records = status(&sbctl, NS).await?;
        let after: Vec<u64> = records["sidecars"]
            .as_array()
            .context("no sidecars")?
            .iter()
            .filter(|s| s["epoch"] == flipped)
            .filter_map(|s| s["at_ms"].as_u64())
            .map(|at_ms| at_ms.saturating_sub(committed_ms))
            .collect();
        ensure!(after.len() == SIDECARS, "{after:?}");
        Ok(after)
    })
    .await?;
    let latest = written_after_ms.iter().copied().max().unwrap_or(0);
    assert!(
        written_after_ms.iter().all(|&ms| ms <= 5_000 + 1_000),
        "a record came later than the spread: {written_after_ms:?} ms after the flip"
    );
    assert!(
        latest > 500,
        "the records were not spread: {written_after_ms:?} ms after the flip"
    );
    Ok(())
}

/// `WaitForEpoch` as any client of the admin API sees it: a sidecar behind keeps the wait open
/// and is named in the last message at the timeout, progress messages come before it, and once
/// the sidecar catches up a wait ends converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_epoch_follows_the_sidecars_and_names_those_behind() -> Result<()> {
    use switchboard_proto::pb;
    use switchboard_proto::pb::EpochWaitProgress;
    use switchboard_proto::pb::admin_client::AdminClient;

    async fn wait(
        admin: &mut AdminClient<tonic::transport::Channel>,
        epoch: u64,
        timeout_ms: u64,
    ) -> Result<Vec<EpochWaitProgress>> {
        let mut stream = admin
            .wait_for_epoch(pb::WaitForEpochRequest {
                namespace: NS.into(),
                epoch,
                timeout_ms,
            })
            .await?
            .into_inner();
        let mut messages = Vec::new();
        while let Some(progress) = stream.message().await? {
            messages.push(progress);
        }
        Ok(messages)
    }

    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 0).await?;
    let (_a, _b, sidecars, _dir) = two_versions(&env).await?;
    let epoch = wait_all_on(&sidecars, &sbctl).await?;
    let mut admin = AdminClient::connect(env.coordinator.grpc_url()).await?;

    // The sidecars serve the epoch; their records may say so a moment later.
    let served = wait(&mut admin, epoch, 10_000).await?;
    let (last, before) = served.split_last().context("no message")?;
    ensure!(
        last.done
            && last.converged
            && (last.sidecars, last.on_epoch) == (2, 2)
            && before.iter().all(|m| !m.done),
        "a wait for the epoch served: {served:?}"
    );

    sidecars[1].pause()?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let behind = wait(&mut admin, epoch + 1, 1_500).await;
    sidecars[1].resume()?;
    let behind = behind?;
    let (last, before) = behind.split_last().context("no message")?;
    ensure!(
        last.done
            && !last.converged
            && last.sidecars == 2
            && last.on_epoch == 1
            && last.behind
                == [pb::SidecarEpoch {
                    id: "sidecar-2".into(),
                    epoch,
                }],
        "the last message of a wait with sidecar-2 stopped: {behind:?}"
    );
    ensure!(
        !before.is_empty() && before.iter().all(|m| !m.done && m.behind.is_empty()),
        "the messages before the last: {behind:?}"
    );

    let caught_up = wait(&mut admin, epoch + 1, 20_000).await?;
    let last = caught_up.last().context("no message")?;
    ensure!(
        last.done && last.converged && last.on_epoch == 2,
        "a wait after sidecar-2 resumed: {caught_up:?}"
    );
    Ok(())
}

/// Issue 17: on the leader, `WaitForEpoch` counts a sidecar as on the epoch as soon as its
/// outcome stream says so, before its health record does (ten thousand records take seconds
/// to reach a small etcd; a stream's word a fraction of one). The sidecar here runs in the
/// test's process, its sync loop and outcome stream as a sidecar runs them, but without its
/// health publisher: its record in etcd, written by the test, stays on the epoch before the
/// flip, and only its stream can tell the leader that it applied the flip. Once the stream
/// ends, the leader forgets what it said, and the record decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_whose_stream_names_the_epoch_counts_before_its_record_does() -> Result<()> {
    use switchboard_proto::pb;
    use switchboard_proto::pb::admin_client::AdminClient;
    use switchboard_sidecar::namespace::Namespace;
    use switchboard_sidecar::outcomes::{CoordinatorAccess, OutcomeStreamer};
    use switchboard_sidecar::sync::NamespaceSync;

    let env = TestEnv::start(&[NS]).await?;
    let dir = tempfile::tempdir()?;
    for generation in ["a", "b"] {
        let set = write_set(dir.path(), generation, 5, 10)?;
        stage(&env.sbctl(), NS, &set.display().to_string()).await?;
        if generation == "a" {
            env.sbctl().run(&["flip", NS]).await?.ensure_success()?;
        }
    }
    let before_flip = epoch(&env.sbctl(), NS).await?;

    // The record of the sidecar, on the epoch before the flip, alive while the test's lease
    // lives: nothing else writes it.
    let mut client = env.etcd_client().await?;
    let lease = client.lease_grant(120, None).await?.id();
    let record = serde_json::json!({
        "id": "streamer",
        "namespace": NS,
        "epoch": before_flip,
        "serving": [],
        "etcd_reachable": true,
        "at_ms": 0,
    });
    client
        .put(
            env.keys().health(NS, "streamer"),
            record.to_string(),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await?;

    // The sidecar: its sync loop and its outcome stream to the leader.
    wait_until(DEADLINE, "the coordinator to lead", async || {
        is_leader(&env.coordinator).await
    })
    .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let namespace = Namespace::new(NS);
    let sync = NamespaceSync::new(
        client.clone(),
        env.keys(),
        namespace.clone(),
        Arc::new(tokio::sync::Notify::new()),
    );
    let syncing = tokio::spawn(sync.run(stop.clone()));
    let streamer = OutcomeStreamer {
        client: client.clone(),
        keys: env.keys(),
        id: "streamer".into(),
        namespaces: vec![namespace.clone()],
        started_at_ms: 1,
        access: CoordinatorAccess::default(),
        reports_changed: Arc::new(tokio::sync::Notify::new()),
        channel: None,
    };
    let streaming = tokio::spawn(streamer.run(stop.clone()));

    let mut admin = AdminClient::connect(env.coordinator.grpc_url()).await?;
    let flipped = before_flip + 1;
    let last_of_wait = async |admin: &mut AdminClient<tonic::transport::Channel>| {
        let mut stream = admin
            .wait_for_epoch(pb::WaitForEpochRequest {
                namespace: NS.into(),
                epoch: flipped,
                timeout_ms: 300,
            })
            .await?
            .into_inner();
        let mut last = None;
        while let Some(progress) = stream.message().await? {
            last = Some(progress);
        }
        last.context("a wait without a last message")
    };
    let before = last_of_wait(&mut admin).await?;
    ensure!(
        !before.converged
            && before.behind
                == [pb::SidecarEpoch {
                    id: "streamer".into(),
                    epoch: before_flip,
                }],
        "before the flip: {before:?}"
    );

    env.sbctl().run(&["flip", NS]).await?.ensure_success()?;
    wait_until(
        DEADLINE,
        "the wait to count the streamed epoch",
        async || {
            let last = last_of_wait(&mut admin).await?;
            Ok(last.converged && (last.sidecars, last.on_epoch) == (1, 1))
        },
    )
    .await?;
    let record = client.get(env.keys().health(NS, "streamer"), None).await?;
    let record: Value = serde_json::from_slice(record.kvs().first().context("no record")?.value())?;
    ensure!(
        record["epoch"] == before_flip,
        "the record moved on: {record}"
    );

    // The stream ends: what it said is forgotten, and the record decides.
    stop.cancel();
    streaming.await?;
    syncing.await?;
    wait_until(
        DEADLINE,
        "the wait to forget the ended stream",
        async || {
            let last = last_of_wait(&mut admin).await?;
            Ok(!last.converged && last.behind.len() == 1)
        },
    )
    .await?;
    Ok(())
}

/// A paused rollout holds however healthy the data; resumed, it steps on; aborted, the canary
/// goes to 0 and the rollout is recorded as aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_can_be_paused_resumed_and_aborted() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 0).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    sbctl
        .run(&[
            "rollout",
            NS,
            "--steps",
            "10,20,30,40,100",
            "--interval",
            "1",
        ])
        .await?
        .ensure_success()?;
    sbctl
        .run(&["rollout", NS, "--pause", "-m", "hold on"])
        .await?
        .ensure_success()?;
    wait_all_on(&sidecars, &sbctl).await?;
    let traffic = Traffic::start(
        sidecars.clone(),
        vec![(b.clone(), 20, 0), (a.clone(), 20, 0)],
    );
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let status = status(&sbctl, NS).await?;
        assert_eq!(
            (
                status["rollout"]["state"].as_str(),
                status["rollout"]["step"].as_u64()
            ),
            (Some("paused"), Some(0)),
            "{status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sbctl
        .run(&["rollout", NS, "--resume"])
        .await?
        .ensure_success()?;
    wait_until(DEADLINE, "the resumed rollout steps on", async || {
        Ok(status(&sbctl, NS).await?["rollout"]["step"]
            .as_u64()
            .unwrap_or(0)
            >= 1)
    })
    .await?;
    let aborted = sbctl
        .run_json(&["rollout", NS, "--abort", "-m", "enough"])
        .await?;
    assert_eq!(aborted["state"], "aborted", "{aborted}");
    traffic.stop().await?;
    let status = status(&sbctl, NS).await?;
    assert!(
        status["canary"].is_null(),
        "abort sets the canary to 0: {status}"
    );
    assert_eq!(status["active"]["version"], a.as_str());
    let actions = audit_actions(&sbctl, NS).await?;
    for action in [
        "rollout",
        "rollout-pause",
        "rollout-resume",
        "rollout-step",
        "rollout-abort",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "no {action} record: {actions:?}"
        );
    }
    Ok(())
}

/// The coordinator's election lease, in seconds (`switchboard_coordinator::leader::LEASE_TTL_SECONDS`):
/// a leader that stops acting must hand over within it.
const LEASE_SECONDS: u64 = 3;

/// The coordinator of `coordinators` whose id (`host:<gRPC port>`) is `leader`.
fn coordinator_named<'a>(
    coordinators: &[&'a Coordinator],
    leader: &str,
) -> Option<&'a Coordinator> {
    coordinators
        .iter()
        .find(|c| leader.ends_with(&format!(":{}", c.grpc_addr().port())))
        .copied()
}

/// Issue 13, acceptance 6: three coordinators, and a failpoint that panics the leader's judge
/// loop when it first judges a canary. The panic ends the leader's term and releases its lease,
/// so another coordinator holds the lease within the lease time and flips the failing canary
/// back; the panicking coordinator names the loop in its log and its metrics, and keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_judge_loop_hands_the_lease_to_another_coordinator() -> Result<()> {
    let env =
        TestEnv::start_with_coordinator_env(&[NS], &[("FAILPOINTS", "judge-loop-panic=panic")])
            .await?;
    let sbctl = env.sbctl();
    set_test_policy(&env, 60).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    let doomed = &env.coordinator;
    // The coordinator with the failpoint campaigned alone, so it leads; the others queue behind.
    let doomed_id = status(&sbctl, NS).await?["leader"]
        .as_str()
        .context("no leader")?
        .to_string();
    ensure!(
        coordinator_named(&[doomed], &doomed_id).is_some(),
        "the coordinator with the failpoint does not lead: {doomed_id}"
    );
    let others = [
        env.start_coordinator().await?,
        env.start_coordinator().await?,
    ];
    let coordinators: Vec<&Coordinator> = std::iter::once(doomed).chain(others.iter()).collect();
    let survivor_sbctl = others[0].sbctl();

    // A failing canary: the leader's judge panics at its first look at it.
    sbctl.run(&["canary", NS, "20"]).await?.ensure_success()?;
    let canary_set = Instant::now();
    let canary_epoch = wait_all_on(&sidecars, &sbctl).await?;
    let traffic = Traffic::start(
        sidecars.clone(),
        vec![(b.clone(), 7, 3), (a.clone(), 40, 0)],
    );

    // The leader's judge panics at its next tick, and the leader says so.
    wait_until(
        Duration::from_secs(LEASE_SECONDS),
        "the leader to report its judge loop's panic",
        async || {
            Ok(doomed
                .process()
                .log()
                .contains("the leader's judge loop panicked"))
        },
    )
    .await
    .with_context(|| format!("the panicking leader's log:\n{}", doomed.log_tail(30)))?;
    let panic_seen = Instant::now();

    // Within the lease time another coordinator leads. The panicking leader revokes its lease,
    // which hands over at once (about half a second after the canary: the judge's tick, then
    // the revoke); a lease left to expire would take the whole lease time after the last
    // keep-alive, and a lease kept alive by a keeper that outlived the judge, forever.
    let mut new_leader = String::new();
    wait_until(
        Duration::from_secs(LEASE_SECONDS),
        "another coordinator to hold the lease",
        async || {
            let leader = status(&survivor_sbctl, NS).await?["leader"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let other = !leader.is_empty() && leader != doomed_id;
            if other {
                new_leader = leader;
            }
            Ok(other)
        },
    )
    .await
    .with_context(|| format!("the panicking leader's log:\n{}", doomed.log_tail(30)))?;
    let handed_over = (canary_set.elapsed(), panic_seen.elapsed());
    let successor = coordinator_named(&coordinators, &new_leader)
        .with_context(|| format!("no coordinator is {new_leader}"))?;
    ensure!(successor.grpc_addr() != doomed.grpc_addr());

    // The new leader judges the canary from its own samples and flips it back.
    wait_until(
        Duration::from_secs(WINDOW_SECONDS + 2),
        "the new leader to roll the failing canary back",
        async || {
            let status = status(&survivor_sbctl, NS).await?;
            Ok(status["epoch"].as_u64().unwrap_or(0) > canary_epoch && status["canary"].is_null())
        },
    )
    .await?;
    let rolled_back = (canary_set.elapsed(), panic_seen.elapsed());
    traffic.stop().await?;
    eprintln!(
        "judge panic: seen in the leader's log {:?} after the canary was set; another coordinator led {:?} after the canary ({:?} after the panic was seen) and rolled it back {:?} after the canary ({:?} after the panic was seen)",
        panic_seen.duration_since(canary_set),
        handed_over.0,
        handed_over.1,
        rolled_back.0,
        rolled_back.1,
    );

    let trail = survivor_sbctl.run_json(&["audit", NS, "--verify"]).await?;
    let record = last_record(&trail)?;
    assert_eq!(record["action"], "auto-rollback", "{record}");
    assert_eq!(
        record["actor"],
        format!("switchboard-judge@{new_leader}"),
        "the rollback is the new leader's: {record}"
    );

    // The panicking coordinator says which loop ended and why, counts it, and keeps serving.
    let log = doomed.process().log();
    assert!(
        log.contains("the leader's judge loop panicked") && log.contains("judge-loop-panic"),
        "the log does not name the judge loop's panic:\n{}",
        doomed.log_tail(40)
    );
    let (code, _) = doomed.get_json("/healthz").await?;
    assert_eq!(code, 200, "the panic took the coordinator down");
    let metrics = reqwest::get(format!("{}/metrics", doomed.http_url()))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(r#"switchboard_leader_loop_failures_total{loop="judge"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_coordinator_is_leader 0"),
        "{metrics}"
    );
    Ok(())
}

/// etcd's revision now: every write to etcd raises it by one.
async fn etcd_revision(env: &TestEnv) -> Result<i64> {
    let mut client = env.etcd_client().await?;
    let response = client.get("/", None).await?;
    Ok(response.header().context("no header")?.revision())
}

/// Issue 17, acceptance 1: five sidecars whose applications report 20 times a second each make
/// etcd take at most 0.05 writes per sidecar per second (etcd's revision over 10 s): the
/// outcomes go to the leader, not into etcd. The leader has them: status shows each sidecar's
/// counts growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_do_not_grow_etcds_writes() -> Result<()> {
    const SIDECARS: usize = 5;
    const SECONDS: u64 = 10;
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    let mut sidecars = Vec::new();
    for n in 0..SIDECARS {
        sidecars.push(Arc::new(env.start_sidecar(&format!("sidecar-{n}")).await?));
    }
    let (a, _) = stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 20, 10)?.display().to_string(),
    )
    .await?;
    wait_all_on(&sidecars, &sbctl).await?;
    let traffic = Traffic::start_every(
        sidecars.clone(),
        vec![(a.clone(), 9, 1)],
        Duration::from_millis(50),
    );
    // Every sidecar streams to the leader: its counts show in status.
    let reported = async || -> Result<Vec<u64>> {
        let status = status(&sbctl, NS).await?;
        let sidecars = status["sidecars"].as_array().cloned().unwrap_or_default();
        Ok(sidecars
            .iter()
            .map(|s| s["reports"][0]["ok"].as_u64().unwrap_or(0))
            .collect())
    };
    wait_until(
        DEADLINE,
        "every sidecar's counts at the leader",
        async || {
            let counts = reported().await?;
            Ok(counts.len() == SIDECARS && counts.iter().all(|ok| *ok > 0))
        },
    )
    .await?;
    let before = reported().await?;
    let first = etcd_revision(&env).await?;
    let measured = Instant::now();
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    let writes = etcd_revision(&env).await? - first;
    let elapsed = measured.elapsed().as_secs_f64();
    let after = reported().await?;
    traffic.stop().await?;
    let per_sidecar = writes as f64 / SIDECARS as f64 / elapsed;
    let reports: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum::<u64>() / 9;
    eprintln!(
        "{writes} etcd writes in {elapsed:.1} s with {SIDECARS} sidecars taking {:.1} reports a second each: {per_sidecar:.3} writes per sidecar per second",
        reports as f64 / SIDECARS as f64 / elapsed
    );
    ensure!(
        per_sidecar <= 0.05,
        "{per_sidecar:.3} etcd writes per sidecar per second"
    );
    ensure!(
        reports as f64 / SIDECARS as f64 / elapsed >= 19.0,
        "the leader received {reports} reports in {elapsed:.1} s"
    );
    Ok(())
}

/// Issue 17, acceptance 2: the leader is killed as a failing canary starts erring, before it
/// could judge; the other coordinator takes the lease, the sidecars stream to it with their
/// recent history, and it flips the canary back within the window plus 1 s of the first bad
/// report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_flipped_back_when_the_leader_dies_in_the_window() -> Result<()> {
    const WINDOW: u64 = 10;
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    set_judge_policy(&sbctl, NS, 50, WINDOW, Some(60)).await?;
    let (a, b, sidecars, _dir) = two_versions(&env).await?;
    let leader_id = status(&sbctl, NS).await?["leader"]
        .as_str()
        .context("no leader")?
        .to_string();
    ensure!(
        coordinator_named(&[&env.coordinator], &leader_id).is_some(),
        "the first coordinator does not lead: {leader_id}"
    );
    let survivor = env.start_coordinator().await?;
    sbctl.run(&["canary", NS, "20"]).await?.ensure_success()?;
    let canary_epoch = wait_all_on(&sidecars, &sbctl).await?;
    // Streams to the leader are open: its gauge counts them.
    wait_until(
        DEADLINE,
        "the sidecars' streams at the leader",
        async || {
            let metrics = reqwest::get(format!("{}/metrics", env.coordinator.http_url()))
                .await?
                .text()
                .await?;
            Ok(metrics.contains(&format!("switchboard_outcome_streams {}", sidecars.len())))
        },
    )
    .await?;

    let started = Instant::now();
    let traffic = Traffic::start(
        sidecars.clone(),
        vec![(b.clone(), 7, 3), (a.clone(), 40, 0)],
    );
    env.coordinator.kill()?;
    only_the_baseline_within(&sidecars, canary_epoch, Duration::from_secs(WINDOW + 1))
        .await
        .with_context(|| {
            format!(
                "the surviving coordinator's log:\n{}",
                survivor.log_tail(40)
            )
        })?;
    eprintln!(
        "with the leader killed at the first bad report, the canary was flipped back after {:?}",
        started.elapsed()
    );
    traffic.stop().await?;
    let trail = survivor.sbctl().run_json(&["audit", NS]).await?;
    let record = last_record(&trail)?;
    ensure!(record["action"] == "auto-rollback", "{record}");
    ensure!(
        record["actor"]
            .as_str()
            .is_some_and(|actor| !actor.ends_with(&leader_id)),
        "the dead leader acted: {record}"
    );
    Ok(())
}

/// The outcome stream's guards: a coordinator that does not lead refuses it
/// (FAILED_PRECONDITION), so that outcomes never go where no judge reads them; with `--auth`,
/// a caller without a token is refused, and a sidecar's `reporter` token streams to the leader
/// but may do nothing else, not even read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_go_only_to_the_leader_and_a_reporter_may_do_nothing_else() -> Result<()> {
    use switchboard_proto::pb;
    use switchboard_proto::pb::admin_client::AdminClient;
    use switchboard_tests::{EtcdServer, unique_prefix};

    let etcd = EtcdServer::start().await?;
    let dir = tempfile::tempdir()?;
    let reporter = new_user("sc-1", &["reporter"]).await?;
    let auth = write_auth_file(dir.path(), &[&reporter])?;
    let prefix = unique_prefix();
    let leader = Coordinator::start_with(&etcd.endpoint(), &prefix, &["--auth", &auth]).await?;
    // The first coordinator leads before the second starts.
    wait_until(DEADLINE, "the first coordinator to lead", async || {
        let metrics = reqwest::get(format!("{}/metrics", leader.http_url()))
            .await?
            .text()
            .await?;
        Ok(metrics.contains("switchboard_coordinator_is_leader 1"))
    })
    .await?;
    let follower = Coordinator::start_with(&etcd.endpoint(), &prefix, &["--auth", &auth]).await?;
    let report = pb::OutcomeReport {
        sidecar: "sc-1".into(),
        started_at_ms: 1,
        uptime_ms: 1_000,
        series: vec![pb::OutcomeSeries {
            namespace: NS.into(),
            version: "0123456789abcdef".into(),
            samples: vec![pb::OutcomeSample {
                age_ms: 0,
                ok: 10,
                errors: 1,
            }],
        }],
        epochs: Vec::new(),
    };
    let stream = async |coordinator: &Coordinator, token: Option<&str>| {
        let mut admin = AdminClient::connect(coordinator.grpc_url()).await?;
        let mut request = tonic::Request::new(tokio_stream::iter(vec![report.clone()]));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        anyhow::Ok(admin.report_outcomes(request).await)
    };
    let token = Some(reporter.token.as_str());
    match stream(&follower, token).await? {
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {}
        other => anyhow::bail!("the follower took outcomes: {other:?}"),
    }
    match stream(&leader, None).await? {
        Err(status) if status.code() == tonic::Code::Unauthenticated => {}
        other => anyhow::bail!("the leader took outcomes without a token: {other:?}"),
    }
    stream(&leader, token).await??;
    let mut admin = AdminClient::connect(leader.grpc_url()).await?;
    // A request of any RPC carrying the reporter's token.
    fn as_reporter<T>(token: &str, message: T) -> Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        Ok(request)
    }
    let status = pb::StatusRequest {
        namespace: NS.into(),
    };
    match admin.status(as_reporter(&reporter.token, status)?).await {
        Err(status) if status.code() == tonic::Code::PermissionDenied => {}
        other => anyhow::bail!("a reporter read the status: {other:?}"),
    }
    let wait = pb::WaitForEpochRequest {
        namespace: NS.into(),
        epoch: 1,
        timeout_ms: 0,
    };
    match admin
        .wait_for_epoch(as_reporter(&reporter.token, wait)?)
        .await
    {
        Err(status) if status.code() == tonic::Code::PermissionDenied => {}
        other => anyhow::bail!("a reporter followed the sidecars: {other:?}"),
    }
    Ok(())
}

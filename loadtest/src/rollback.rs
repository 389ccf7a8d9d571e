//! The `rollback` scenario: sidecar processes serve a freshly flipped version, applications
//! start reporting 30% errors for it through every sidecar, and the coordinator's judge flips
//! back. Measured: from the first bad report to every sidecar serving the baseline again,
//! against the goal of the judge window plus one second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde::{Deserialize, Serialize};
use switchboard_tests::{Sidecar, TestEnv, wait_until};

use crate::catalog;
use crate::stats::Latency;

pub const NAMESPACE: &str = "bench";
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct RollbackConfig {
    pub sidecars: usize,
    pub rounds: usize,
    pub window_seconds: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RollbackReport {
    pub sidecars: usize,
    pub window_seconds: u64,
    pub max_error_rate: f64,
    pub min_requests: u64,
    /// Per round: first bad report to the last sidecar on the baseline.
    pub rollback: Latency,
    pub rounds: Vec<f64>,
}

pub async fn run(config: &RollbackConfig, work: &std::path::Path) -> Result<RollbackReport> {
    let env = TestEnv::start(&[NAMESPACE]).await?;
    let sbctl = env.sbctl();
    let (max_error_rate, min_requests) = (0.05, 50u64);
    sbctl
        .run(&[
            "policy",
            "set",
            NAMESPACE,
            "--max-error-rate",
            &max_error_rate.to_string(),
            "--min-requests",
            &min_requests.to_string(),
            "--window",
            &config.window_seconds.to_string(),
            "--bake",
            "600",
        ])
        .await?
        .ensure_success()?;
    // Each round flips to a bad version of its own, so that the judge's window holds only that
    // round's reports: a version it already breached would be flipped back on its first tick.
    let stage = async |generation: usize, message: &str| -> Result<String> {
        let path = work.join(format!("rollback-{generation}.json"));
        catalog::write_generation(&path, 200, generation)?;
        let report = catalog::stage(&sbctl, NAMESPACE, &path, message).await?;
        Ok(report["version"]
            .as_str()
            .context("stage --json gave no version")?
            .to_string())
    };
    let good = stage(0, "good").await?;
    sbctl.run(&["flip", NAMESPACE]).await?.ensure_success()?;
    let mut sidecars = Vec::new();
    for index in 0..config.sidecars {
        let sidecar = env
            .start_sidecar(&format!("bench-rollback-{index}"))
            .await?;
        sidecar.wait_ready(DEADLINE).await?;
        sidecars.push(Arc::new(sidecar));
    }

    let mut rounds = Vec::new();
    for round in 0..config.rounds {
        let bad = stage(round + 1, "bad").await?;
        let change = sbctl.run_json(&["flip", NAMESPACE]).await?;
        let flipped = change["routing"]["epoch"]
            .as_u64()
            .context("flip gave no routing.epoch")?;
        for sidecar in &sidecars {
            sidecar.wait_for_epoch(NAMESPACE, flipped, DEADLINE).await?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let traffic = tokio::spawn(report_errors(sidecars.clone(), bad.clone(), stop.clone()));
        let result = wait_until(DEADLINE, "every sidecar back on the baseline", async || {
            let mut all = true;
            for sidecar in &sidecars {
                let answer = sidecar.get_item(NAMESPACE, &catalog::key(0), None).await?;
                all &= answer.epoch.unwrap_or(0) > flipped
                    && answer.version.as_deref() == Some(good.as_str());
            }
            Ok(all)
        })
        .await;
        let seconds = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        traffic.await.context("the report task panicked")??;
        result?;
        eprintln!("rollback: round {}: {seconds:.2} s", round + 1);
        rounds.push(seconds);
    }
    let mut samples: Vec<u64> = rounds.iter().map(|s| (s * 1e6) as u64).collect();
    Ok(RollbackReport {
        sidecars: config.sidecars,
        window_seconds: config.window_seconds,
        max_error_rate,
        min_requests,
        rollback: Latency::from_samples(&mut samples),
        rounds,
    })
}

/// Every 100 ms, through every sidecar: 7 good and 3 failed requests of `version`.
async fn report_errors(
    sidecars: Vec<Arc<Sidecar>>,
    version: String,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        for sidecar in &sidecars {
            let (code, body) = sidecar.report(NAMESPACE, &version, 7, 3).await?;
            // Once the sidecar stops serving the version, its reports are still accepted for a
            // while; anything but 202 is a failure of the benchmark.
            ensure!(code == 202, "report answered {code}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub fn render(report: &RollbackReport) -> String {
    let goal = report.window_seconds as f64 + 1.0;
    format!(
        "rollback: {} sidecar processes, policy: error rate over {} on at least {} requests in a {} s window; \
         30% errors reported for the new version through every sidecar\n\n\
         | rounds | first bad report to every sidecar on the baseline: p50 / max s | goal (window + 1 s) |\n\
         |---:|---|---:|\n| {} | {:.2} / {:.2} | {:.0} s |\n",
        report.sidecars,
        report.max_error_rate,
        report.min_requests,
        report.window_seconds,
        report.rounds.len(),
        report.rollback.p50_us as f64 / 1e6,
        report.rollback.max_us as f64 / 1e6,
        goal,
    )
}

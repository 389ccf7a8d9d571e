//! The `sync` scenario: N sidecar processes and repeated synchronized flips
//! (`sbctl flip --sync`); per flip, the spread between the first and the last sidecar's switch,
//! how late the last one was after the activation point, and how long the acknowledgements took.
//!
//! Every sidecar is a process of its own, as in production, but here they share this machine's
//! cores: at the activation point all of them wake at once and queue for the CPU, which a fleet
//! of sidecars on their own hosts does not.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde::{Deserialize, Serialize};
use switchboard_tests::{TestEnv, wait_until};

use crate::catalog;
use crate::stats::Latency;

pub const NAMESPACE: &str = "bench";
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub sidecars: usize,
    pub flips: usize,
    pub lead_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncReport {
    pub sidecars: usize,
    pub flips: usize,
    pub lead_ms: u64,
    /// Per flip: the last sidecar's switch minus the first's.
    pub spread: Latency,
    /// Per flip: how long after the activation point the last sidecar switched.
    pub last_late: Latency,
    /// Per flip: from the preparation's commit until every sidecar acknowledged it.
    pub ack_wait: Latency,
}

pub async fn run(config: &SyncConfig, work: &std::path::Path) -> Result<SyncReport> {
    let env = TestEnv::start(&[NAMESPACE]).await?;
    let sbctl = env.sbctl().timeout(Duration::from_secs(120));
    // No bake time: a bake holds the previous set, and staging into its slot is refused.
    sbctl
        .run(&["policy", "set", NAMESPACE, "--bake", "0"])
        .await?
        .ensure_success()?;
    let stage = async |generation: usize| -> Result<()> {
        let path = work.join(format!("sync-{generation}.json"));
        catalog::write_generation(&path, 50, generation)?;
        catalog::stage(&sbctl, NAMESPACE, &path, "sync benchmark").await?;
        Ok(())
    };
    stage(0).await?;
    sbctl.run(&["flip", NAMESPACE]).await?.ensure_success()?;
    let epoch = catalog::epoch(&sbctl, NAMESPACE).await?;
    let mut sidecars = Vec::new();
    for index in 0..config.sidecars {
        if index % 20 == 0 {
            eprintln!("sync: starting sidecar {}/{}", index + 1, config.sidecars);
        }
        sidecars.push(env.start_sidecar(&format!("bench-sync-{index:04}")).await?);
    }
    for sidecar in &sidecars {
        sidecar.wait_for_epoch(NAMESPACE, epoch, DEADLINE).await?;
    }
    // A synchronized flip waits for every live sidecar; each must have published its health.
    wait_until(DEADLINE, "every sidecar's health record", async || {
        let status = sbctl.run_json(&["status", NAMESPACE]).await?;
        Ok(status["sidecars"].as_array().map_or(0, Vec::len) >= config.sidecars)
    })
    .await?;

    let (mut spreads, mut late, mut acks) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=config.flips {
        stage(round).await?;
        let flip = sbctl
            .run_json(&[
                "flip",
                NAMESPACE,
                "--sync",
                "--sync-lead",
                &config.lead_ms.to_string(),
                "--sync-timeout",
                "30",
                "--timeout",
                "60",
            ])
            .await?;
        let sync = &flip["sync"];
        let switched = sync["sidecars"].as_array().map_or(0, Vec::len);
        ensure!(
            switched == config.sidecars,
            "flip {round}: {switched} of {} sidecars took part: {flip}",
            config.sidecars
        );
        let number = |name: &str| {
            sync[name]
                .as_u64()
                .with_context(|| format!("flip --sync gave no sync.{name}: {sync}"))
        };
        spreads.push(number("spread_us")?);
        // A sidecar never switches before the point; a negative lateness would be clock noise.
        late.push(
            sync["max_late_us"]
                .as_i64()
                .map_or(0, |us| us.max(0) as u64),
        );
        acks.push(number("ack_wait_ms")? * 1000);
        eprintln!(
            "sync: flip {round}/{}: spread {} µs",
            config.flips,
            spreads.last().copied().unwrap_or(0)
        );
    }
    Ok(SyncReport {
        sidecars: config.sidecars,
        flips: config.flips,
        lead_ms: config.lead_ms,
        spread: Latency::from_samples(&mut spreads),
        last_late: Latency::from_samples(&mut late),
        ack_wait: Latency::from_samples(&mut acks),
    })
}

pub fn render(report: &SyncReport) -> String {
    format!(
        "sync: {} sidecar processes, {} synchronized flips with a lead of {} ms\n\n\
         | measure | p50 | p99 | max |\n|---|---:|---:|---:|\n\
         | activation spread (last switch minus first) | {:.2} ms | {:.2} ms | {:.2} ms |\n\
         | last sidecar after the activation point | {:.2} ms | {:.2} ms | {:.2} ms |\n\
         | preparation committed to every sidecar acknowledged | {:.0} ms | {:.0} ms | {:.0} ms |\n",
        report.sidecars,
        report.flips,
        report.lead_ms,
        report.spread.p50_ms(),
        report.spread.p99_ms(),
        report.spread.max_ms(),
        report.last_late.p50_ms(),
        report.last_late.p99_ms(),
        report.last_late.max_ms(),
        report.ack_wait.p50_ms(),
        report.ack_wait.p99_ms(),
        report.ack_wait.max_ms(),
    )
}

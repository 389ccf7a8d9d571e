//! Every benchmark scenario, at a small size, against real etcd, coordinator and sidecars: the
//! numbers are not judged here (benchmarks are, in BENCHMARKS.md), only that each scenario
//! measures what it says, with every sample accounted for.

use anyhow::Result;
use switchboard_loadtest::catalog::ChangePattern;
use switchboard_loadtest::{feed, fleet, propagation, read, report, rollback, stage, sync_flip};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_counts_every_sidecar_on_every_flip() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = propagation::PropagationConfig {
        sidecar_counts: vec![3, 5],
        flips: 3,
        items: 20,
    };
    let report = propagation::run(&config, work.path()).await?;
    assert_eq!(report.rows.len(), 2);
    for row in &report.rows {
        assert_eq!(
            row.flip.count,
            (row.sidecars * config.flips) as u64,
            "{row:?}"
        );
        let first_flip = row.first_flip.as_ref().map(|first| first.count);
        let expected = (row.sidecars == 3).then_some(row.sidecars as u64);
        assert_eq!(
            first_flip, expected,
            "only the first row loads the set: {row:?}"
        );
        assert_eq!(
            row.raw_watch.count,
            (row.sidecars * config.flips) as u64,
            "{row:?}"
        );
        assert_eq!(row.flip_spread.count, config.flips as u64, "{row:?}");
        assert!(row.flip.p50_us <= row.flip.max_us);
    }
    let table = propagation::render(&report);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| 3 |") || l.starts_with("| 5 |"))
            .count(),
        2,
        "{table}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_hears_every_flip_from_every_listener() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = feed::FeedConfig {
        subscribers: 20,
        long_polls: 5,
        sidecars: 3,
        flips: 3,
        items: 20,
        seconds: 0.5,
        connections: 2,
        pause: std::time::Duration::from_millis(10),
    };
    let report = feed::run(&config, work.path()).await?;
    // One sample per listener and flip, in every row.
    assert_eq!(report.one_subscriber.count, 3, "{report:?}");
    assert_eq!(report.fan_out.count, 20 * 3, "{report:?}");
    assert_eq!(report.long_poll.count, 5 * 3, "{report:?}");
    assert_eq!(report.commit_to_applied.count, 3 * 3, "{report:?}");
    assert_eq!(report.end_to_end.count, 3 * 3, "{report:?}");
    // Notified comes after applied, for the same flips and sidecars.
    assert!(report.end_to_end.max_us >= report.commit_to_applied.p50_us);
    assert!(report.item_get.completed > 0 && report.item_get.errors == 0);
    assert!(report.ofrep.completed > 0 && report.ofrep.errors == 0);
    let table = feed::render(&report);
    assert!(table.contains("20 subscribers, one sidecar"), "{table}");
    assert!(table.contains("% of GET)"), "{table}");
    assert_eq!(report.last_notified_per_flip_ms.len(), 3, "{report:?}");
    assert_eq!(report.warmup_last_notified_ms.len(), 2, "{report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_reuses_chunks_of_a_clustered_change() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = stage::StageConfig {
        items: 3000,
        change_percent: 1.0,
    };
    let report = stage::run(&config, work.path()).await?;
    assert_eq!(report.items, 3000);
    assert!(report.chunk_bytes > 2_000_000, "{report:?}");
    assert!(report.sidecar_rss_bytes > 0);
    assert!(report.raw_packed_put_seconds > 0.0, "{report:?}");
    assert_eq!(report.restage.len(), 2);
    for restage in &report.restage {
        assert_eq!(restage.bytes_total, report.chunk_bytes, "{restage:?}");
        assert!(
            restage.chunks_uploaded > 0,
            "a change uploads something: {restage:?}"
        );
        assert!(restage.bytes_uploaded < restage.bytes_total, "{restage:?}");
    }
    let clustered = report
        .restage
        .iter()
        .find(|r| r.pattern == ChangePattern::Clustered)
        .expect("a clustered restage");
    // 30 items in a row touch at most 30 chunks of about 2 KB out of about 1500, listed on a
    // few manifest pages out of about 90.
    assert!(clustered.chunks_uploaded <= 30, "{clustered:?}");
    assert!((1..=3).contains(&clustered.pages_uploaded), "{clustered:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_brings_every_sidecar_back() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = rollback::RollbackConfig {
        sidecars: 2,
        rounds: 1,
        window_seconds: 3,
    };
    let report = rollback::run(&config, work.path()).await?;
    assert_eq!(report.rounds.len(), 1);
    assert_eq!(report.rollback.count, 1);
    Ok(())
}

/// Needs nginx (`make deps` installs nginx-light); fails when it is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_measures_every_target_and_writes_a_chart() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = read::ReadConfig {
        items: 50,
        seconds: 0.5,
        connections: 2,
        light_rate: 200.0,
    };
    let report = read::run(&config, work.path()).await?;
    let names: Vec<&str> = report.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            read::NGINX,
            read::SIDECAR_HTTP,
            read::SIDECAR_GRPC,
            read::ETCD
        ]
    );
    for target in &report.targets {
        assert!(target.saturation.completed > 0, "{target:?}");
        assert_eq!(target.saturation.errors, 0, "{target:?}");
        assert!(target.light.completed > 0, "{target:?}");
    }
    assert!(report.answer_bytes > 500, "{report:?}");

    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("read.json"),
        serde_json::to_string(&report)?,
    )?;
    std::fs::write(dir.path().join("read.md"), read::render(&report))?;
    let markdown = report::write(dir.path())?;
    assert!(markdown.contains("![read latency"), "{markdown}");
    assert!(markdown.contains("## propagation\n\nnot run"), "{markdown}");
    let svg = std::fs::read_to_string(dir.path().join("read-latency.svg"))?;
    assert_eq!(
        svg.matches("<polyline").count(),
        report
            .targets
            .iter()
            .filter(|t| t.common_rate.is_some())
            .count()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_measures_every_flip_across_every_sidecar() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = sync_flip::SyncConfig {
        sidecars: 3,
        flips: 2,
        lead_ms: 250,
    };
    let report = sync_flip::run(&config, work.path()).await?;
    assert_eq!(report.spread.count, 2, "{report:?}");
    assert_eq!(report.last_late.count, 2, "{report:?}");
    assert_eq!(report.ack_wait.count, 2, "{report:?}");
    assert!(
        report.spread.max_us <= report.last_late.max_us,
        "the first switch is at or after the point: {report:?}"
    );
    Ok(())
}

/// The fleet scenario at a small size: every row is measured, the applications' reports reach
/// nothing in etcd, the canary that fails is rolled back, and `flip --wait` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_measures_a_small_fleet() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = fleet::FleetConfig {
        sidecar_counts: vec![20],
        reports_per_second: 20.0,
        steady_seconds: 2,
        window_seconds: 3,
        // 20 sidecars send a 10% canary about 40 outcomes a second.
        min_requests: 20,
        health_lease_seconds: 10,
        election_lease_seconds: 3,
    };
    let report = fleet::run(&config, work.path()).await?;
    let row = report.rows.first().expect("a row");
    assert_eq!(row.sidecars, 20);
    assert!(row.reports_per_second > 100.0, "{row:?}");
    assert!(row.etcd_writes_per_sidecar_per_second <= 0.05, "{row:?}");
    assert!(
        row.verdict_seconds > 0.0 && row.flip_wait_seconds > 0.0,
        "{row:?}"
    );
    // `flip --wait` cannot return before every sidecar has applied the flip.
    assert!(
        row.flip_applied_seconds > 0.0
            && row.flip_wait_seconds >= row.flip_applied_seconds
            && row.cold_flip_wait_seconds >= row.cold_flip_applied_seconds
            && row.cold_flip_applied_seconds > 0.0,
        "{row:?}"
    );
    assert!(fleet::render(&report).contains("| 20 |"));
    Ok(())
}

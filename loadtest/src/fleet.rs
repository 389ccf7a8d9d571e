//! The `fleet` scenario (issue 17): N sidecars in this process whose applications report at a
//! fixed rate, against one etcd member and one coordinator. It measures what the fleet costs in
//! steady state (etcd writes a second, etcd's growth, the coordinator's CPU and memory), how
//! soon the judge rolls a failing canary back, and how long `flip --wait` takes.
//!
//! Each simulated sidecar runs the sidecar's own pieces: the sync loop (an etcd watch), the
//! lease-bound health record, and the outcome stream to the leader. They share connections in
//! groups of [`PER_CONNECTION`]: one etcd client per group (as an etcd gRPC proxy tier would
//! coalesce their watches) and one HTTP/2 connection to the coordinator per group, over which
//! each sidecar's outcome stream is a stream of its own. Everything shares this machine's two
//! cores, the coordinator and etcd included, so the figures are an upper bound of the cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use switchboard_proto::Keys;
use switchboard_proto::time::now_ms;
use switchboard_sidecar::health::HealthPublisher;
use switchboard_sidecar::namespace::Namespace;
use switchboard_sidecar::outcomes::{CoordinatorAccess, OutcomeStreamer};
use switchboard_sidecar::sync::NamespaceSync;
use switchboard_tests::{TestEnv, wait_for, wait_until};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog;

pub const NAMESPACE: &str = "bench";
/// Sidecars per etcd client and per connection to the coordinator (whose HTTP/2 connections
/// take 64 streams each).
pub const PER_CONNECTION: usize = 50;
const DEADLINE: Duration = Duration::from_secs(300);
/// Sidecars started a second, as a fleet rolls out: 10,000 started at one instant make one
/// etcd member on this machine fall behind on lease renewals until leases expire (see
/// BENCHMARKS.md, "fleet").
pub const STARTS_PER_SECOND: usize = 500;

#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub sidecar_counts: Vec<usize>,
    /// Reports each sidecar's application makes a second.
    pub reports_per_second: f64,
    /// Seconds of steady state measured.
    pub steady_seconds: u64,
    /// The judge's window.
    pub window_seconds: u64,
    /// The judge's least number of the canary's outcomes in its window.
    pub min_requests: u64,
    /// Each sidecar's `--health-lease-seconds`.
    pub health_lease_seconds: i64,
    /// The coordinator's `--election-lease-seconds`.
    pub election_lease_seconds: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetReport {
    pub reports_per_second: f64,
    #[serde(default)]
    pub health_lease_seconds: i64,
    #[serde(default)]
    pub election_lease_seconds: i64,
    pub steady_seconds: u64,
    pub window_seconds: u64,
    pub rows: Vec<FleetRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetRow {
    pub sidecars: usize,
    /// Reports the applications made a second, all sidecars together, in steady state.
    pub reports_per_second: f64,
    pub etcd_writes_per_second: f64,
    pub etcd_writes_per_sidecar_per_second: f64,
    /// etcd's database growth in steady state, extrapolated to an hour.
    pub etcd_growth_mb_per_hour: f64,
    /// The coordinator's CPU in steady state, in percent of one core.
    pub coordinator_cpu_percent: f64,
    pub coordinator_rss_mb: f64,
    /// From the first bad report of a failing canary to the judge's rollback committed.
    pub verdict_seconds: f64,
    /// `sbctl flip --wait` after a canary, to the set every sidecar holds: from the command to
    /// every sidecar on the new epoch.
    pub flip_wait_seconds: f64,
    /// From the same command to every sidecar serving the new epoch, as seen in this process:
    /// the part of `flip --wait` that is the data plane's.
    #[serde(default)]
    pub flip_applied_seconds: f64,
    /// From the same command to every health record in etcd on the new epoch, as a watcher of
    /// etcd sees them.
    #[serde(default)]
    pub flip_acknowledged_seconds: f64,
    /// `sbctl flip --wait` to a set no sidecar holds (the canary rolled back), which each loads
    /// from etcd.
    #[serde(default)]
    pub cold_flip_wait_seconds: f64,
    #[serde(default)]
    pub cold_flip_applied_seconds: f64,
    /// Health records in etcd at the end of the steady state: every sidecar's, unless etcd
    /// let leases expire.
    #[serde(default)]
    pub live_records: usize,
    /// One `sbctl status --json`, which names every live sidecar.
    #[serde(default)]
    pub status_seconds: f64,
    /// Seconds until every sidecar served and streamed.
    pub start_seconds: f64,
}

pub async fn run(config: &FleetConfig, work: &std::path::Path) -> Result<FleetReport> {
    let mut rows = Vec::new();
    for &count in &config.sidecar_counts {
        eprintln!("fleet: {count} sidecars");
        rows.push(measure(config, count, work).await?);
    }
    Ok(FleetReport {
        reports_per_second: config.reports_per_second,
        health_lease_seconds: config.health_lease_seconds,
        election_lease_seconds: config.election_lease_seconds,
        steady_seconds: config.steady_seconds,
        window_seconds: config.window_seconds,
        rows,
    })
}

/// One simulated sidecar: its namespace and the notification of its reports.
struct Simulated {
    namespace: Arc<Namespace>,
    reports_changed: Arc<Notify>,
}

async fn measure(config: &FleetConfig, count: usize, work: &std::path::Path) -> Result<FleetRow> {
    // Every simulated sidecar and sbctl come from one address here, which the per-address
    // rate limit would count as one caller: off, as thousands of hosts would not share it.
    let election_lease = config.election_lease_seconds.to_string();
    let env = TestEnv::start_with_coordinator(
        &[NAMESPACE],
        &[
            "--rate-limit-per-second",
            "0",
            "--election-lease-seconds",
            &election_lease,
        ],
        &[],
    )
    .await?;
    let sbctl = env.sbctl().timeout(Duration::from_secs(120));
    let window = config.window_seconds.to_string();
    sbctl
        .run(&[
            "policy",
            "set",
            NAMESPACE,
            "--bake",
            "0",
            "--window",
            &window,
            "--min-requests",
            &config.min_requests.to_string(),
            "--max-error-rate",
            "0.05",
        ])
        .await?
        .ensure_success()?;
    let stage = async |generation: usize| -> Result<()> {
        let path = work.join(format!("fleet-{count}-{generation}.json"));
        catalog::write_generation(&path, 20, generation)?;
        catalog::stage(&sbctl, NAMESPACE, &path, "fleet benchmark").await?;
        Ok(())
    };
    stage(0).await?;
    sbctl.run(&["flip", NAMESPACE]).await?.ensure_success()?;
    stage(1).await?;

    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let keys = Keys::new(env.prefix());
    let started = Instant::now();
    let mut fleet = Vec::with_capacity(count);
    for group in 0..count.div_ceil(PER_CONNECTION) {
        // As a sidecar connects: HTTP/2 keep-alive pings and `require_leader`.
        let client = switchboard_sidecar::connect_etcd(&[env.etcd_endpoints()])
            .await
            .context("connecting a group of sidecars to etcd")?;
        let channel = tonic::transport::Endpoint::from_shared(env.coordinator.grpc_url())?
            .connect()
            .await
            .context("connecting a group of sidecars to the coordinator")?;
        for index in group * PER_CONNECTION..count.min((group + 1) * PER_CONNECTION) {
            fleet.push(start_sidecar(
                index,
                &client,
                &channel,
                &keys,
                config.health_lease_seconds,
                &stop,
            ));
        }
        tokio::time::sleep(Duration::from_secs_f64(
            PER_CONNECTION as f64 / STARTS_PER_SECOND as f64,
        ))
        .await;
    }
    let namespaces: Vec<Arc<Namespace>> = fleet.iter().map(|s| s.namespace.clone()).collect();
    let epoch = catalog::epoch(&sbctl, NAMESPACE).await?;
    wait_until(DEADLINE, "every sidecar serving", async || {
        Ok(all_on_epoch(&namespaces, epoch))
    })
    .await?;
    let metrics_url = format!("{}/metrics", env.coordinator.http_url());
    let streams = format!("switchboard_outcome_streams {count}");
    wait_until(
        DEADLINE,
        "every sidecar streaming to the leader",
        async || {
            Ok(reqwest::get(&metrics_url)
                .await?
                .text()
                .await?
                .contains(&streams))
        },
    )
    .await?;
    // Every sidecar's health record in etcd: `flip --wait` waits for the live ones only.
    let mut etcd = env.etcd_client().await?;
    let health_prefix = keys.health_prefix(NAMESPACE);
    wait_until(DEADLINE, "every sidecar's health record", async || {
        Ok(count_keys(&mut etcd, &health_prefix).await? >= count)
    })
    .await?;
    let start_seconds = started.elapsed().as_secs_f64();

    // Steady state: every application reports its version's outcomes, all fine.
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reports = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reporters = report_forever(
        &fleet,
        config.reports_per_second,
        healthy.clone(),
        reports.clone(),
        &stop,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let coordinator = env.coordinator.pid();
    let before = (
        revision(&mut etcd).await?,
        db_size(&mut etcd).await?,
        cpu_ticks(coordinator)?,
        reports.load(std::sync::atomic::Ordering::Relaxed),
    );
    let steady = Instant::now();
    tokio::time::sleep(Duration::from_secs(config.steady_seconds)).await;
    let seconds = steady.elapsed().as_secs_f64();
    let writes = (revision(&mut etcd).await? - before.0) as f64;
    let growth = (db_size(&mut etcd).await? - before.1) as f64;
    let cpu = (cpu_ticks(coordinator)? - before.2) as f64 / ticks_per_second() as f64;
    let reported = (reports.load(std::sync::atomic::Ordering::Relaxed) - before.3) as f64;
    let rss_mb = crate::stage::rss_bytes(coordinator)? as f64 / (1024.0 * 1024.0);
    // Sidecars whose lease etcd let expire under the load drop out of `status` until they
    // write their record again.
    let live_records = count_keys(&mut etcd, &health_prefix).await?;

    // A release as it is usually made: a healthy canary, then the flip to the set every
    // sidecar holds already as the canary's.
    canary(&sbctl, &namespaces).await?;
    let warm = flip_and_wait(&sbctl, &namespaces, &mut etcd, &health_prefix).await?;

    // A failing canary of the next version: the applications that get it see half their
    // requests fail.
    stage(2).await?;
    canary(&sbctl, &namespaces).await?;
    let canary_epoch = catalog::epoch(&sbctl, NAMESPACE).await?;
    let regression = Instant::now();
    healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    // Routing read from etcd, not through `status`, which would read every health record.
    let routing_key = keys.routing(NAMESPACE);
    let rolled_back_epoch = wait_for(DEADLINE, "the judge to roll the canary back", async || {
        let response = etcd.get(routing_key.as_str(), None).await?;
        let routing: serde_json::Value = response
            .kvs()
            .first()
            .map(|kv| serde_json::from_slice(kv.value()))
            .transpose()?
            .unwrap_or_default();
        let canary_gone = routing["canary"].is_null() || routing["canary"]["weight_bp"] == 0;
        let epoch = routing["epoch"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            epoch > canary_epoch && canary_gone,
            "routing at epoch {epoch}"
        );
        Ok(epoch)
    })
    .await?;
    let verdict_seconds = regression.elapsed().as_secs_f64();
    healthy.store(true, std::sync::atomic::Ordering::Relaxed);

    // What one `status` costs at this size: it names every live sidecar.
    wait_until(DEADLINE, "every sidecar on the rollback", async || {
        Ok(all_on_epoch(&namespaces, rolled_back_epoch))
    })
    .await?;
    let reading = Instant::now();
    sbctl.run_json(&["status", NAMESPACE]).await?;
    let status_seconds = reading.elapsed().as_secs_f64();

    // A flip to the set the rollback took away: every sidecar loads it from etcd again.
    let cold = flip_and_wait(&sbctl, &namespaces, &mut etcd, &health_prefix).await?;
    stop.cancel();
    reporters.abort();
    Ok(FleetRow {
        sidecars: count,
        reports_per_second: reported / seconds,
        etcd_writes_per_second: writes / seconds,
        etcd_writes_per_sidecar_per_second: writes / seconds / count as f64,
        etcd_growth_mb_per_hour: growth / seconds * 3600.0 / 1e6,
        coordinator_cpu_percent: cpu / seconds * 100.0,
        coordinator_rss_mb: rss_mb,
        verdict_seconds,
        flip_wait_seconds: warm.waited,
        flip_applied_seconds: warm.applied,
        flip_acknowledged_seconds: warm.acknowledged,
        cold_flip_wait_seconds: cold.waited,
        cold_flip_applied_seconds: cold.applied,
        status_seconds,
        live_records,
        start_seconds,
    })
}

/// Sets a 10% canary and waits until every sidecar serves it.
async fn canary(
    sbctl: &switchboard_tests::SbctlRunner,
    namespaces: &[Arc<Namespace>],
) -> Result<()> {
    sbctl
        .run(&["canary", NAMESPACE, "10"])
        .await?
        .ensure_success()?;
    let epoch = catalog::epoch(sbctl, NAMESPACE).await?;
    wait_until(DEADLINE, "every sidecar on the canary", async || {
        Ok(all_on_epoch(namespaces, epoch))
    })
    .await
}

/// `sbctl flip --wait`, and beside it a watcher of this process's sidecars that tells when all
/// of them have applied the flip, which is the least `flip --wait` can take: the seconds of
/// both.
async fn flip_and_wait(
    sbctl: &switchboard_tests::SbctlRunner,
    namespaces: &[Arc<Namespace>],
    etcd: &mut etcd_client::Client,
    health_prefix: &str,
) -> Result<FlipTimes> {
    let flip_epoch = catalog::epoch(sbctl, NAMESPACE).await? + 1;
    // Every health record that acknowledges the flip, as etcd delivers them to a watcher: the
    // part of the wait that is etcd's.
    let mut records = etcd
        .watch(
            health_prefix,
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await?;
    let flipping = Instant::now();
    let acknowledged = async {
        let mut on_epoch = std::collections::HashSet::new();
        while on_epoch.len() < namespaces.len() {
            let message = records
                .message()
                .await?
                .context("etcd ended the watch of the health records")?;
            // A record deleted meanwhile (its lease expired) is not an acknowledgement.
            let puts = message
                .events()
                .iter()
                .filter(|event| event.event_type() == etcd_client::EventType::Put);
            for event in puts {
                let Some(kv) = event.kv() else { continue };
                let record: serde_json::Value = serde_json::from_slice(kv.value())?;
                if record["epoch"].as_u64().unwrap_or(0) >= flip_epoch {
                    on_epoch.insert(kv.key().to_vec());
                }
            }
        }
        anyhow::Ok(flipping.elapsed().as_secs_f64())
    };
    // Woken by each sidecar's snapshot as it is swapped, not polled: a poll every 25 ms read
    // up to 25 ms late, and `flip --wait`, which hears the sidecars' streams, can return sooner.
    let applied = async {
        let each = namespaces.iter().map(|namespace| {
            let mut snapshots = namespace.subscribe();
            async move {
                snapshots
                    .wait_for(|snapshot| {
                        snapshot
                            .as_ref()
                            .is_some_and(|snapshot| snapshot.routing.epoch >= flip_epoch)
                    })
                    .await
                    .map(|_| ())
            }
        });
        tokio::time::timeout(DEADLINE, futures::future::try_join_all(each))
            .await
            .context("every sidecar on the flip: timed out")??;
        anyhow::Ok(flipping.elapsed().as_secs_f64())
    };
    let flip = async {
        sbctl
            .run(&["flip", NAMESPACE, "--wait", "--timeout", "120"])
            .await?
            .ensure_success()?;
        anyhow::Ok(flipping.elapsed().as_secs_f64())
    };
    let (waited, applied, acknowledged) = tokio::join!(flip, applied, acknowledged);
    Ok(FlipTimes {
        waited: waited?,
        applied: applied?,
        acknowledged: acknowledged?,
    })
}

/// Seconds from `flip --wait`'s start to every sidecar serving the flip, to every health record
/// in etcd saying so, and to the command's return.
struct FlipTimes {
    applied: f64,
    acknowledged: f64,
    waited: f64,
}

/// Whether every sidecar serves `epoch` or a later one.
fn all_on_epoch(namespaces: &[Arc<Namespace>], epoch: u64) -> bool {
    namespaces.iter().all(|namespace| {
        namespace
            .current()
            .is_some_and(|snapshot| snapshot.routing.epoch >= epoch)
    })
}

/// A sidecar's sync loop, health record and outcome stream, on its group's connections.
fn start_sidecar(
    index: usize,
    client: &etcd_client::Client,
    channel: &tonic::transport::Channel,
    keys: &Keys,
    lease_ttl_seconds: i64,
    stop: &CancellationToken,
) -> Simulated {
    let id = format!("fleet-{index:05}");
    let namespace = Namespace::new(NAMESPACE);
    let dirty = Arc::new(Notify::new());
    let reports_changed = Arc::new(Notify::new());
    let sync = NamespaceSync::new(
        client.clone(),
        keys.clone(),
        namespace.clone(),
        dirty.clone(),
    );
    tokio::spawn(sync.run(stop.clone()));
    let health = HealthPublisher {
        client: client.clone(),
        keys: keys.clone(),
        id: id.clone(),
        namespaces: vec![namespace.clone()],
        started_at_ms: now_ms(),
        dirty,
        lease_ttl_seconds,
    };
    tokio::spawn(health.run(stop.clone()));
    let streamer = OutcomeStreamer {
        client: client.clone(),
        keys: keys.clone(),
        id,
        namespaces: vec![namespace.clone()],
        started_at_ms: now_ms(),
        access: CoordinatorAccess::default(),
        reports_changed: reports_changed.clone(),
        channel: Some(channel.clone()),
    };
    tokio::spawn(streamer.run(stop.clone()));
    Simulated {
        namespace,
        reports_changed,
    }
}

/// Every sidecar's application reports `rate` times a second: a success of the version it was
/// served, or, while `healthy` is false, a failure every other time it was served the canary.
fn report_forever(
    fleet: &[Simulated],
    rate: f64,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    reports: Arc<std::sync::atomic::AtomicU64>,
    stop: &CancellationToken,
) -> tokio::task::AbortHandle {
    let targets: Vec<(Arc<Namespace>, Arc<Notify>)> = fleet
        .iter()
        .map(|s| (s.namespace.clone(), s.reports_changed.clone()))
        .collect();
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut round: u64 = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            round += 1;
            let failing = !healthy.load(std::sync::atomic::Ordering::Relaxed);
            for (index, (namespace, changed)) in targets.iter().enumerate() {
                let Some(snapshot) = namespace.current() else {
                    continue;
                };
                // A tenth of the applications' requests go to the canary while there is one,
                // as a 10% canary would send them.
                let canary = snapshot
                    .routing
                    .live_canary()
                    .filter(|_| (index as u64 + round).is_multiple_of(10));
                let (version, errors) = match canary {
                    Some(canary) => (
                        &canary.version,
                        u64::from(failing && round.is_multiple_of(2)),
                    ),
                    None => (&snapshot.routing.active.version, 0),
                };
                if namespace.report(version, 1 - errors, errors).is_ok() {
                    reports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    changed.notify_one();
                }
            }
        }
    })
    .abort_handle()
}

async fn revision(client: &mut etcd_client::Client) -> Result<i64> {
    let response = client.get("/", None).await?;
    Ok(response.header().context("no header")?.revision())
}

/// How many keys etcd holds under `prefix`.
async fn count_keys(client: &mut etcd_client::Client, prefix: &str) -> Result<usize> {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let response = client.get(prefix, Some(options)).await?;
    Ok(usize::try_from(response.count()).unwrap_or(0))
}

async fn db_size(client: &mut etcd_client::Client) -> Result<i64> {
    Ok(client.status().await?.db_size())
}

/// The process's user and system CPU time, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("an unexpected /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n)
            .context("a short /proc/PID/stat")?
            .parse()
            .context("a field of /proc/PID/stat")
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the command.
    Ok(field(11)? + field(12)?)
}

fn ticks_per_second() -> u64 {
    // Linux has reported 100 on every architecture Switchboard runs on.
    100
}

pub fn render(report: &FleetReport) -> String {
    let mut out = format!(
        "fleet: sidecars in one process (sharing etcd and coordinator connections by {PER_CONNECTION}), \
         each application reporting {} times a second; health leases of {} s; election lease of {} s; judge window {} s; steady state measured over {} s\n\n\
         | sidecars | reports/s | etcd writes/s | per sidecar/s | etcd growth MB/h | coordinator CPU | coordinator RSS | live records | verdict | flip --wait | flip applied | flip in etcd | cold flip --wait | cold applied | status | start |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        report.reports_per_second,
        report.health_lease_seconds,
        report.election_lease_seconds,
        report.window_seconds,
        report.steady_seconds
    );
    for row in &report.rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.4} | {:.2} | {:.0}% | {:.0} MB | {} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.2} s | {:.0} s |\n",
            row.sidecars,
            row.reports_per_second,
            row.etcd_writes_per_second,
            row.etcd_writes_per_sidecar_per_second,
            row.etcd_growth_mb_per_hour,
            row.coordinator_cpu_percent,
            row.coordinator_rss_mb,
            row.live_records,
            row.verdict_seconds,
            row.flip_wait_seconds,
            row.flip_applied_seconds,
            row.flip_acknowledged_seconds,
            row.cold_flip_wait_seconds,
            row.cold_flip_applied_seconds,
            row.status_seconds,
            row.start_seconds,
        ));
    }
    out
}

//! The sidecar's Prometheus metrics: their names, the recorder's configuration, and the gauges
//! computed when `/metrics` is rendered.
//!
//! Every label value is bounded: namespaces come from the command line, slots are blue or green,
//! and versions are only those served (reads) or accepted for reports (see `reports.rs`).

use std::time::Duration;
use switchboard_runtime::Every;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::namespace::Source;
use crate::serve::Served;

/// Reads answered: `namespace`, `slot`, `version`.
pub const READS: &str = "switchboard_sidecar_reads_total";
/// Time to answer one read from memory, a histogram.
pub const READ_SECONDS: &str = "switchboard_sidecar_read_seconds";
/// Time to load and verify one set from etcd, a histogram.
pub const SET_LOAD_SECONDS: &str = "switchboard_sidecar_set_load_seconds";
/// Outcomes reported for accepted versions: `namespace`, `version`, `outcome` (`ok`|`error`).
pub const REPORTS: &str = "switchboard_sidecar_reports_total";
/// The same outcomes as `REPORTS`, as the sidecar first named them; kept for dashboards.
pub const REPORTS_OK: &str = "switchboard_sidecar_reports_ok_total";
pub const REPORTS_ERRORS: &str = "switchboard_sidecar_reports_errors_total";
/// The routing epoch served: `namespace`.
pub const EPOCH: &str = "switchboard_sidecar_epoch";
/// Seconds since the sync loop last heard from etcd about the namespace (a read of routing or
/// any watch message, progress notifications included); since the sidecar started if never.
/// The sync loop asks for progress when its watch has been quiet for 15 to 20 s
/// (`sync::PROGRESS_EVERY`, `--etcd-progress-seconds`), and reads the routing key when that
/// brings no answer (after one and a half periods, behind etcd's gRPC proxy), so on a healthy
/// connection this stays below about 20 s (40 s behind the proxy); it grows without bound while
/// etcd does not answer, which is what the staleness alert (60 s) watches.
pub const LAST_ETCD_EVENT_AGE: &str = "switchboard_sidecar_last_etcd_event_age_seconds";
/// 1 while the namespace is served from the last-known-good copy on disk, else 0.
pub const SERVING_FROM_DISK: &str = "switchboard_sidecar_serving_from_disk";
/// 1 while the sync loop's last exchange with etcd succeeded, 0 while it fails and retries.
pub const ETCD_REACHABLE: &str = "switchboard_sidecar_etcd_reachable";
/// 1 once the namespace has a verified set to serve, 0 while reads of it answer 503.
pub const NAMESPACE_LOADED: &str = "switchboard_sidecar_namespace_loaded";
/// Snapshots published: `namespace`.
pub const SNAPSHOT_SWAPS: &str = "switchboard_sidecar_snapshot_swaps_total";
/// Change feeds open (SSE, gRPC `WatchChanges`, OFREP refresh connections): `namespace`.
pub const CHANGE_FEEDS: &str = "switchboard_sidecar_change_feeds";

/// Read latency buckets, in seconds: reads are answered from memory, mostly well under a
/// millisecond, so the buckets start at 50 µs and end at 100 ms.
pub const READ_SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];
/// Set load buckets, in seconds: from a small set on a fast etcd to a large one on a slow one.
pub const SET_LOAD_SECONDS_BUCKETS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// How often the recorder drains histogram samples, whether or not anyone scrapes `/metrics`.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder's configuration: real Prometheus histograms for the latencies.
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(READ_SECONDS.into()), READ_SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(SET_LOAD_SECONDS.into()),
            SET_LOAD_SECONDS_BUCKETS,
        )
}

/// The `# HELP` lines.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(READS, "Reads answered, by namespace, slot and version.");
    describe_histogram!(
        READ_SECONDS,
        Unit::Seconds,
        "Time to answer one read from memory."
    );
    describe_histogram!(
        SET_LOAD_SECONDS,
        Unit::Seconds,
        "Time to load and verify one set from etcd."
    );
    describe_counter!(
        REPORTS,
        "Outcomes applications reported, by namespace, version and outcome (ok, error)."
    );
    describe_counter!(
        REPORTS_OK,
        "Successful outcomes applications reported (see switchboard_sidecar_reports_total)."
    );
    describe_counter!(
        REPORTS_ERRORS,
        "Failed outcomes applications reported (see switchboard_sidecar_reports_total)."
    );
    describe_gauge!(EPOCH, "The routing epoch served.");
    describe_gauge!(
        LAST_ETCD_EVENT_AGE,
        Unit::Seconds,
        "Seconds since etcd last answered the namespace's sync loop (a read or a watch message)."
    );
    describe_gauge!(
        SERVING_FROM_DISK,
        "1 while the namespace is served from the last-known-good copy on disk."
    );
    describe_gauge!(
        ETCD_REACHABLE,
        "1 while the namespace's sync loop last reached etcd, 0 while it fails and retries."
    );
    describe_gauge!(
        NAMESPACE_LOADED,
        "1 once the namespace has a verified set to serve, 0 while its reads answer 503."
    );
    describe_counter!(SNAPSHOT_SWAPS, "Snapshots published.");
    describe_gauge!(
        CHANGE_FEEDS,
        "Change feeds open on the namespace (SSE, gRPC WatchChanges, OFREP refresh connections)."
    );
}

/// Counts outcomes of an accepted report.
pub fn record_report(namespace: &str, version: &str, ok: u64, errors: u64) {
    for (outcome, count) in [("ok", ok), ("error", errors)] {
        metrics::counter!(REPORTS, "namespace" => namespace.to_string(), "version" => version.to_string(), "outcome" => outcome).increment(count);
    }
    metrics::counter!(REPORTS_OK, "namespace" => namespace.to_string(), "version" => version.to_string()).increment(ok);
    metrics::counter!(REPORTS_ERRORS, "namespace" => namespace.to_string(), "version" => version.to_string()).increment(errors);
}

/// Sets the gauges that are derived from state rather than events, just before a render.
pub fn update_gauges(served: &Served, now_ms: u64) {
    for (name, namespace) in &served.namespaces {
        let sync = namespace.sync_state();
        let since = if sync.last_sync_ms > 0 {
            sync.last_sync_ms
        } else {
            served.started_at_ms
        };
        let age = now_ms.saturating_sub(since) as f64 / 1000.0;
        metrics::gauge!(LAST_ETCD_EVENT_AGE, "namespace" => name.clone()).set(age);
        let from_disk = if sync.source == Source::Disk {
            1.0
        } else {
            0.0
        };
        metrics::gauge!(SERVING_FROM_DISK, "namespace" => name.clone()).set(from_disk);
        let reachable = if sync.etcd_reachable { 1.0 } else { 0.0 };
        metrics::gauge!(ETCD_REACHABLE, "namespace" => name.clone()).set(reachable);
        let loaded = if namespace.current().is_some() {
            1.0
        } else {
            0.0
        };
        metrics::gauge!(NAMESPACE_LOADED, "namespace" => name.clone()).set(loaded);
        metrics::gauge!(CHANGE_FEEDS, "namespace" => name.clone()).set(namespace.feeds() as f64);
    }
}

/// Drains histogram samples every few seconds until `shutdown`: without it, samples pile up in
/// memory for as long as nobody scrapes `/metrics`.
pub async fn keep_up(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut every = Every::new(UPKEEP_EVERY);
    while every.tick(&shutdown).await {
        handle.run_upkeep();
    }
}

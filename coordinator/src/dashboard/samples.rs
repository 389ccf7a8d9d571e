//! Error rates per namespace and version over time, for the dashboard's chart.
//!
//! Every coordinator replica samples, every [`SAMPLE_INTERVAL`], the live sidecars' health
//! records and the outcome counters they stream to it ([`crate::outcomes`]; only the leader
//! receives them, so another replica's chart stays empty), and keeps what each interval added
//! per version in a bounded ring. The samples live in memory only: they are a view for
//! people, never an input to a decision (the judge keeps its own), so a restarted coordinator
//! simply starts a new chart.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use switchboard_runtime::Every;

use serde::Serialize;
use switchboard_proto::HealthRecord;
use switchboard_proto::time::now_ms;
use tokio_util::sync::CancellationToken;

use crate::release::Releases;

/// How often the health records are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Points kept per version: 20 minutes at one point every 2 seconds.
pub const MAX_POINTS: usize = 600;
/// Versions kept per namespace; the one reported least recently goes first.
pub const MAX_VERSIONS: usize = 8;
/// Namespaces sampled, in name order, so that memory stays bounded whatever etcd holds.
pub const MAX_NAMESPACES: usize = 256;

/// What the applications reported for one version during one interval, summed over sidecars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Point {
    /// When the interval ended (Unix ms).
    pub at_ms: u64,
    pub ok: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionSeries {
    pub version: String,
    /// Oldest first; an interval without outcomes of the version has no point.
    pub points: VecDeque<Point>,
}

/// The chart's data for one namespace: `GET /v1/ns/{ns}/errors`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorSeries {
    pub namespace: String,
    pub interval_ms: u64,
    pub max_points: usize,
    pub versions: Vec<VersionSeries>,
}

/// What a sidecar's record said at the last sample.
struct SidecarSeen {
    started_at_ms: u64,
    counts: HashMap<String, (u64, u64)>,
}

/// The samples of one namespace.
#[derive(Default)]
pub struct NamespaceSamples {
    sidecars: HashMap<String, SidecarSeen>,
    versions: Vec<VersionSeries>,
}

impl NamespaceSamples {
    /// Adds what the records say happened since the last sample. A sidecar seen for the first
    /// time only sets its baseline: its counters hold outcomes from before this coordinator
    /// looked, which belong to no interval it can name. A sidecar that restarted (a new start
    /// time, or counters that went down) counted from zero since then.
    pub fn observe(&mut self, records: &[HealthRecord], at_ms: u64) {
        let mut added: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for record in records {
            let counts: HashMap<String, (u64, u64)> = record
                .reports
                .iter()
                .map(|r| (r.version.clone(), (r.ok, r.errors)))
                .collect();
            match self.sidecars.get(&record.id) {
                None => {}
                Some(seen) => {
                    let restarted = seen.started_at_ms != record.started_at_ms
                        || record.reports.iter().any(|r| {
                            seen.counts
                                .get(&r.version)
                                .is_some_and(|&(ok, errors)| r.ok < ok || r.errors < errors)
                        });
                    for report in &record.reports {
                        let (base_ok, base_errors) = if restarted {
                            (0, 0)
                        } else {
                            // A version new in the record of the same process had no
                            // outcomes at the last sample.
                            seen.counts.get(&report.version).copied().unwrap_or((0, 0))
                        };
                        let sum = added.entry(report.version.as_str()).or_default();
                        sum.0 = sum.0.saturating_add(report.ok.saturating_sub(base_ok));
                        sum.1 = sum
                            .1
                            .saturating_add(report.errors.saturating_sub(base_errors));
                    }
                }
            }
            self.sidecars.insert(
                record.id.clone(),
                SidecarSeen {
                    started_at_ms: record.started_at_ms,
                    counts,
                },
            );
        }
        // A sidecar whose record is gone has left (its lease expired); forgetting it keeps the
        // map as small as etcd's list of live sidecars.
        let live: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        self.sidecars.retain(|id, _| live.contains(id.as_str()));
        for (version, (ok, errors)) in added {
            if ok == 0 && errors == 0 {
                continue;
            }
            self.push(version, Point { at_ms, ok, errors });
        }
    }

    fn push(&mut self, version: &str, point: Point) {
        let index = match self.versions.iter().position(|s| s.version == version) {
            Some(index) => index,
            None => {
                if self.versions.len() >= MAX_VERSIONS {
                    let stalest = self
                        .versions
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.points.back().map_or(0, |p| p.at_ms))
                        .map(|(index, _)| index);
                    if let Some(stalest) = stalest {
                        self.versions.remove(stalest);
                    }
                }
                self.versions.push(VersionSeries {
                    version: version.to_string(),
                    points: VecDeque::new(),
                });
                self.versions.len() - 1
            }
        };
        if let Some(series) = self.versions.get_mut(index) {
            if series.points.len() >= MAX_POINTS {
                series.points.pop_front();
            }
            series.points.push_back(point);
        }
    }
}

/// The samples of every namespace, shared by the sampling task and the HTTP handlers.
#[derive(Clone, Default)]
pub struct ErrorSamples {
    namespaces: Arc<Mutex<HashMap<String, NamespaceSamples>>>,
}

impl ErrorSamples {
    /// The chart's data for `ns`: empty until the namespace has been sampled with outcomes.
    pub fn series(&self, ns: &str) -> ErrorSeries {
        let namespaces = self.lock();
        ErrorSeries {
            namespace: ns.to_string(),
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            max_points: MAX_POINTS,
            versions: namespaces
                .get(ns)
                .map(|samples| samples.versions.clone())
                .unwrap_or_default(),
        }
    }

    pub fn observe(&self, ns: &str, records: &[HealthRecord], at_ms: u64) {
        self.lock()
            .entry(ns.to_string())
            .or_default()
            .observe(records, at_ms);
    }

    /// Forgets the namespaces that are no longer sampled.
    fn retain(&self, sampled: &HashSet<String>) {
        self.lock().retain(|ns, _| sampled.contains(ns));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NamespaceSamples>> {
        // The map holds plain data that every writer leaves consistent, so a panic elsewhere
        // while it was held does not make it unusable.
        self.namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Samples every namespace's health records each [`SAMPLE_INTERVAL`] until `stop`.
pub async fn sample(releases: Releases, samples: ErrorSamples, stop: CancellationToken) {
    let mut every = Every::new(SAMPLE_INTERVAL);
    while every.tick(&stop).await {
        // A round waits on etcd; while etcd does not answer, shutdown must not wait for the
        // round's timeouts.
        tokio::select! {
            () = stop.cancelled() => return,
            () = sample_round(&releases, &samples) => {}
        }
    }
}

/// Reads the health records of every namespace (at most [`MAX_NAMESPACES`]) once.
async fn sample_round(releases: &Releases, samples: &ErrorSamples) {
    let mut namespaces = match releases.store().namespaces().await {
        Ok(namespaces) => namespaces,
        Err(error) => {
            tracing::debug!(%error, "dashboard sampler cannot list namespaces");
            return;
        }
    };
    namespaces.sort();
    namespaces.truncate(MAX_NAMESPACES);
    for ns in &namespaces {
        match releases.store().health_records(ns).await {
            Ok(mut records) => {
                // The counts stream to the leader, not through etcd: the records carry none.
                let mut reports = releases.outcomes().reports_by_sidecar(ns);
                for record in &mut records {
                    record.reports = reports.remove(&record.id).unwrap_or_default();
                }
                samples.observe(ns, &records, now_ms())
            }
            Err(error) => tracing::debug!(ns, %error, "dashboard sampler cannot read health"),
        }
    }
    samples.retain(&namespaces.into_iter().collect());
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::VersionReports;

    fn record(id: &str, started_at_ms: u64, reports: &[(&str, u64, u64)]) -> HealthRecord {
        HealthRecord {
            id: id.to_string(),
            namespace: "catalog".into(),
            epoch: 1,
            serving: Vec::new(),
            etcd_reachable: true,
            at_ms: 0,
            started_at_ms,
            reports: reports
                .iter()
                .map(|&(version, ok, errors)| VersionReports {
                    version: version.to_string(),
                    ok,
                    errors,
                })
                .collect(),
            prepared: None,
            activated_epoch: None,
            activated_at_us: None,
        }
    }

    fn points(samples: &NamespaceSamples, version: &str) -> Vec<(u64, u64, u64)> {
        samples
            .versions
            .iter()
            .find(|s| s.version == version)
            .map(|s| s.points.iter().map(|p| (p.at_ms, p.ok, p.errors)).collect())
            .unwrap_or_default()
    }

    #[test]
    fn intervals_add_what_the_counters_grew_by_summed_over_sidecars() {
        let mut samples = NamespaceSamples::default();
        // The first look is a baseline only: those outcomes belong to no known interval.
        samples.observe(
            &[record("a", 1, &[("v1", 100, 5)]), record("b", 1, &[])],
            10,
        );
        assert!(samples.versions.is_empty());
        samples.observe(
            &[
                record("a", 1, &[("v1", 110, 7)]),
                record("b", 1, &[("v1", 5, 0), ("v2", 3, 3)]),
            ],
            20,
        );
        assert_eq!(points(&samples, "v1"), vec![(20, 15, 2)]);
        assert_eq!(points(&samples, "v2"), vec![(20, 3, 3)]);
        // No change: no point.
        samples.observe(
            &[
                record("a", 1, &[("v1", 110, 7)]),
                record("b", 1, &[("v1", 5, 0), ("v2", 3, 3)]),
            ],
            30,
        );
        assert_eq!(points(&samples, "v1").len(), 1);
    }

    #[test]
    fn a_restarted_sidecar_counts_from_zero() {
        let mut samples = NamespaceSamples::default();
        samples.observe(&[record("a", 1, &[("v1", 100, 5)])], 10);
        samples.observe(&[record("a", 2, &[("v1", 4, 1)])], 20);
        assert_eq!(points(&samples, "v1"), vec![(20, 4, 1)]);
        // Counters that went down are a restart too, even with the same start time.
        samples.observe(&[record("a", 2, &[("v1", 2, 0)])], 30);
        assert_eq!(points(&samples, "v1"), vec![(20, 4, 1), (30, 2, 0)]);
        // A sidecar that left and comes back is a baseline again.
        samples.observe(&[], 40);
        samples.observe(&[record("a", 2, &[("v1", 50, 0)])], 50);
        assert_eq!(points(&samples, "v1").len(), 2);
    }

    #[test]
    fn rings_and_versions_are_bounded() {
        let mut samples = NamespaceSamples::default();
        samples.observe(&[record("a", 1, &[])], 0);
        for i in 1..=(MAX_POINTS as u64 + 10) {
            samples.observe(&[record("a", 1, &[("v1", i, 0)])], i);
        }
        let v1 = points(&samples, "v1");
        assert_eq!(v1.len(), MAX_POINTS);
        assert_eq!(v1.last().map(|p| p.0), Some(MAX_POINTS as u64 + 10));
        let mut samples = NamespaceSamples::default();
        samples.observe(&[record("a", 1, &[])], 0);
        let names: Vec<String> = (0..MAX_VERSIONS + 2).map(|i| format!("v{i}")).collect();
        for i in 0..names.len() {
            let reports: Vec<(&str, u64, u64)> =
                names[..=i].iter().map(|n| (n.as_str(), 1, 0)).collect();
            samples.observe(&[record("a", 1, &reports)], i as u64 + 1);
        }
        assert_eq!(samples.versions.len(), MAX_VERSIONS);
        assert!(
            points(&samples, "v0").is_empty(),
            "the stalest version went"
        );
        assert_eq!(points(&samples, &names[MAX_VERSIONS + 1]).len(), 1);
    }
}

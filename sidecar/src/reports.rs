//! Outcomes that applications report, per namespace, and which versions a report may name.
//!
//! A report is accepted only for a version this sidecar serves now, or served within the last
//! [`ACCEPT_FOR`] in that namespace: an application may still be finishing work it started with
//! the version it read before a flip. Anything else is refused, so that a misbehaving client can
//! neither grow memory nor the metrics' label sets without bound. The versions are noted each
//! time a snapshot is published, and only the last [`RECENT_VERSIONS`] distinct ones are kept.
//!
//! Counts are cumulative per version since the sidecar started, and exact: one report carries at
//! most [`MAX_REPORT_COUNT`] outcomes of each kind, and a report that would carry a count past
//! `u64::MAX` is refused whole rather than saturating, so no accepted report is ever counted
//! short (a saturated success count would make every later report look like an error to the
//! judge). They are published in the health record, where the coordinator's judge takes
//! differences between samples. A version's counts go only when it leaves the recent list, long
//! after reports for it stopped being accepted.

use std::time::{Duration, Instant};

use switchboard_proto::VersionReports;

/// How long after a version stops being served reports for it are still accepted.
pub const ACCEPT_FOR: Duration = Duration::from_secs(10 * 60);
/// Most distinct versions remembered per namespace, with their counts.
pub const RECENT_VERSIONS: usize = 8;
/// Most outcomes of one kind a single report may carry. A report counts what happened since the
/// application's previous one; a larger number is a bug or an attack. At this cap a sidecar
/// would need 1.8 * 10^13 reports to fill a count.
pub const MAX_REPORT_COUNT: u64 = 1_000_000;

#[derive(Clone, Debug)]
struct RecentVersion {
    version: String,
    /// Served by the current snapshot.
    serving: bool,
    /// When it was last seen served: the moment it stopped, once `serving` is false.
    last_served: Instant,
    ok: u64,
    errors: u64,
}

impl RecentVersion {
    fn accepted_at(&self, now: Instant) -> bool {
        self.serving || now.saturating_duration_since(self.last_served) <= ACCEPT_FOR
    }
}

/// A report that is not counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It names a version this sidecar does not take reports for. `accepted`: the versions
    /// reports are accepted for now, those served first, then the most recent.
    UnknownVersion { accepted: Vec<String> },
    /// Counting it would carry a count of the version past `u64::MAX`.
    CountsFull,
}

/// The recent versions of one namespace and the outcomes reported for them.
#[derive(Debug, Default)]
pub struct Reports {
    /// At most `RECENT_VERSIONS` entries, in no particular order.
    recent: Vec<RecentVersion>,
    /// Incremented by every accepted report that changed a count, so that the health publisher
    /// can tell which records have news.
    generation: u64,
}

impl Reports {
    /// Notes that from `now` the snapshot serves exactly `versions`: those no longer served
    /// stopped being served at `now`.
    pub fn note_served(&mut self, versions: &[&str], now: Instant) {
        for entry in &mut self.recent {
            if entry.serving && !versions.contains(&entry.version.as_str()) {
                entry.serving = false;
                entry.last_served = now;
            }
        }
        for version in versions {
            match self.recent.iter_mut().find(|e| e.version == *version) {
                Some(entry) => {
                    entry.serving = true;
                    entry.last_served = now;
                }
                None => self.recent.push(RecentVersion {
                    version: (*version).to_string(),
                    serving: true,
                    last_served: now,
                    ok: 0,
                    errors: 0,
                }),
            }
        }
        while self.recent.len() > RECENT_VERSIONS {
            // A snapshot serves at most two versions, so there is always one not served.
            let oldest = self
                .recent
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.serving)
                .min_by_key(|(_, e)| e.last_served)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    self.recent.swap_remove(i);
                }
                None => break,
            }
        }
    }

    /// Whether a report for `version` is accepted at `now`.
    pub fn accepts(&self, version: &str, now: Instant) -> bool {
        self.recent
            .iter()
            .any(|e| e.version == version && e.accepted_at(now))
    }

    /// The versions reports are accepted for at `now`: those served first, then the most
    /// recently served.
    pub fn accepted_versions(&self, now: Instant) -> Vec<String> {
        let mut accepted: Vec<&RecentVersion> =
            self.recent.iter().filter(|e| e.accepted_at(now)).collect();
        accepted.sort_by(|a, b| {
            b.serving
                .cmp(&a.serving)
                .then(b.last_served.cmp(&a.last_served))
                .then(a.version.cmp(&b.version))
        });
        accepted.into_iter().map(|e| e.version.clone()).collect()
    }

    /// Adds outcomes for `version` if it is accepted at `now`. Returns whether a count changed.
    pub fn add(
        &mut self,
        version: &str,
        ok: u64,
        errors: u64,
        now: Instant,
    ) -> Result<bool, Refused> {
        let Some(entry) = self
            .recent
            .iter_mut()
            .find(|e| e.version == version && e.accepted_at(now))
        else {
            return Err(Refused::UnknownVersion {
                accepted: self.accepted_versions(now),
            });
        };
        let (Some(new_ok), Some(new_errors)) =
            (entry.ok.checked_add(ok), entry.errors.checked_add(errors))
        else {
            return Err(Refused::CountsFull);
        };
        let changed = (new_ok, new_errors) != (entry.ok, entry.errors);
        entry.ok = new_ok;
        entry.errors = new_errors;
        if changed {
            self.generation = self.generation.wrapping_add(1);
        }
        Ok(changed)
    }

    /// The cumulative counts of every version with at least one outcome, by version.
    pub fn published(&self) -> Vec<VersionReports> {
        let mut reports: Vec<VersionReports> = self
            .recent
            .iter()
            .filter(|e| e.ok > 0 || e.errors > 0)
            .map(|e| VersionReports {
                version: e.version.clone(),
                ok: e.ok,
                errors: e.errors,
            })
            .collect();
        reports.sort_by(|a, b| a.version.cmp(&b.version));
        reports
    }

    /// Changes with every accepted report that changed a count.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

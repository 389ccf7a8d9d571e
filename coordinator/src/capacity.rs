//! etcd's space. A stage that would fill etcd past its quota is refused before anything is
//! written: etcd answers a full quota with NOSPACE and an alarm that refuses every write until
//! an operator clears it, which would also block flips and rollbacks. A share of the quota is
//! kept free for those.

use std::time::Duration;
use switchboard_runtime::Every;

use tokio_util::sync::CancellationToken;

use crate::error::{CoordinatorError, Result};
use crate::release::Releases;
use crate::store::{Store, with_timeout};
use crate::telemetry;

/// etcd's own default for `--quota-backend-bytes`.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The share of the quota no stage may use: routing changes, audit records, approvals and
/// rollbacks must still fit when staging has filled the rest.
pub const RESERVE_FRACTION: f64 = 0.10;
/// How much etcd's database grows per byte of chunk put, with its keys, revisions and b-tree
/// pages. Measured on etcd 3.4 with this project's 64 KiB chunks (`tests/tests/capacity.rs`
/// prints the figure): 1.04 for a 2 MB set; 1.5 leaves room for fragmentation.
pub const GROWTH_FACTOR: f64 = 1.5;

/// What the coordinator knows of etcd's quota.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// `--etcd-quota-bytes`: what etcd was started with. etcd 3.6 reports its quota itself,
    /// and then that wins.
    pub quota_bytes: u64,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            quota_bytes: DEFAULT_QUOTA_BYTES,
        }
    }
}

/// etcd's database as one member reports it.
#[derive(Clone, Copy, Debug)]
pub struct DbUsage {
    /// The file's size: what etcd compares with its quota.
    pub size: u64,
    /// The part in use; the rest are free pages that new writes reuse first.
    pub in_use: u64,
    pub quota: u64,
}

impl Capacity {
    /// Reads the size of etcd's database, and the quota that applies to it.
    pub async fn usage(&self, store: &Store) -> Result<DbUsage> {
        let mut client = store.client().clone();
        let status = with_timeout(client.status()).await?;
        let size = u64::try_from(status.db_size()).unwrap_or(0);
        let in_use = match u64::try_from(status.raft_used_db_size()).unwrap_or(0) {
            0 => size,
            in_use => in_use,
        };
        let quota = match u64::try_from(status.db_size_quota()).unwrap_or(0) {
            0 => self.quota_bytes,
            reported => reported,
        };
        metrics::gauge!(telemetry::ETCD_DB_BYTES).set(size as f64);
        metrics::gauge!(telemetry::ETCD_DB_IN_USE_BYTES).set(in_use as f64);
        metrics::gauge!(telemetry::ETCD_QUOTA_BYTES).set(quota as f64);
        Ok(DbUsage {
            size,
            in_use,
            quota,
        })
    }

    /// Refuses a stage of `new_bytes` of chunks and records into `ns` when etcd would not hold
    /// it with the reserve kept free. The message says what is needed and what is left.
    pub async fn check_stage(
        &self,
        store: &Store,
        ns: &str,
        version: &str,
        new_bytes: u64,
    ) -> Result<()> {
        let usage = self.usage(store).await?;
        check(usage, ns, version, new_bytes)
    }
}

/// How often the leader samples etcd's space for `/metrics`.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// Samples etcd's space every [`SAMPLE_EVERY`] until `term` ends, so that the gauges of
/// [`Capacity::usage`] stay current between stages and an alert on the quota's headroom sees
/// the space fill as it fills. The leader runs it; a failure is logged and tried next time.
pub async fn sample(releases: Releases, term: CancellationToken) {
    let mut every = Every::new(SAMPLE_EVERY);
    while every.tick(&term).await {
        if let Err(error) = releases.capacity().usage(releases.store()).await {
            tracing::warn!(%error, "cannot read the size of etcd's database");
        }
    }
}

/// The decision of [`Capacity::check_stage`], apart from reading etcd.
pub fn check(usage: DbUsage, ns: &str, version: &str, new_bytes: u64) -> Result<()> {
    let needed = (new_bytes as f64 * GROWTH_FACTOR) as u64;
    let limit = (usage.quota as f64 * (1.0 - RESERVE_FRACTION)) as u64;
    // Free pages are reused before the file grows.
    let size_after = usage.size.max(usage.in_use.saturating_add(needed));
    if size_after <= limit {
        return Ok(());
    }
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    Err(CoordinatorError::Refused(format!(
        "staging version {version} into {ns} needs about {:.1} MiB of etcd's space, but etcd holds {:.1} MiB ({:.1} MiB in use) of its {:.1} MiB quota and {:.0}% of the quota is kept free for flips and rollbacks; nothing was written. Free space (a smaller set, `etcdctl compact` and `etcdctl defrag`) or raise etcd's --quota-backend-bytes and the coordinator's --etcd-quota-bytes",
        mib(needed),
        mib(usage.size),
        mib(usage.in_use),
        mib(usage.quota),
        RESERVE_FRACTION * 100.0
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn usage(size: u64, in_use: u64) -> DbUsage {
        DbUsage {
            size: size * MIB,
            in_use: in_use * MIB,
            quota: 100 * MIB,
        }
    }

    #[test]
    fn a_stage_that_fits_below_the_reserve_passes() {
        assert!(check(usage(10, 10), "ns", "v", 50 * MIB).is_ok());
        // Free pages absorb a stage without growing the file.
        assert!(check(usage(85, 20), "ns", "v", 40 * MIB).is_ok());
    }

    #[test]
    fn a_stage_that_would_eat_the_reserve_is_refused_with_figures() {
        let refused = check(usage(10, 10), "catalog", "abc", 60 * MIB).expect_err("too big");
        let message = refused.to_string();
        assert!(
            message.contains("catalog") && message.contains("abc"),
            "{message}"
        );
        assert!(
            message.contains("90.0 MiB") && message.contains("100.0 MiB"),
            "{message}"
        );
        assert!(matches!(refused, CoordinatorError::Refused(_)));
        assert!(
            check(usage(95, 95), "ns", "v", 0).is_err(),
            "already in the reserve"
        );
    }
}

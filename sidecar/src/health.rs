//! The sidecar's own health record in etcd: the epoch and sets it serves, and the outcomes
//! applications reported through it, bound to a lease so that it disappears when the sidecar
//! dies. This is the only thing a sidecar ever writes.
//!
//! A record is written at once when what the sidecar serves or its reachability changes, and
//! at most every [`REPORTS_MIN_INTERVAL`] when only report counts change: the judge samples the
//! records about every 500 ms, so new counts must arrive promptly, but not once per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use switchboard_proto::time::now_ms;
use switchboard_proto::{HealthRecord, Keys, ServedSet};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::loader::with_timeout;
use crate::namespace::Namespace;

/// The lease's time to live: a dead sidecar leaves `status` after this long.
pub const LEASE_TTL_SECONDS: i64 = 10;
/// Least time between two writes caused by report counts alone.
pub const REPORTS_MIN_INTERVAL: Duration = Duration::from_millis(250);
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);
const REFRESH_EVERY: Duration = Duration::from_secs(30);
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct HealthPublisher {
    pub client: Client,
    pub keys: Keys,
    pub id: String,
    pub namespaces: Vec<Arc<Namespace>>,
    /// When this sidecar started, Unix ms: the origin of its report counts.
    pub started_at_ms: u64,
    /// Told when what a namespace serves or its reachability changes: written at once.
    pub dirty: Arc<Notify>,
    /// Told when report counts change: written within `REPORTS_MIN_INTERVAL`.
    pub reports_changed: Arc<Notify>,
}

/// The health record of `namespace` as it stands: what it serves and the report counts.
pub fn health_record(
    id: &str,
    namespace: &Namespace,
    started_at_ms: u64,
    at_ms: u64,
) -> HealthRecord {
    let snapshot = namespace.current();
    let sync = namespace.sync_state();
    HealthRecord {
        id: id.to_string(),
        namespace: namespace.name.clone(),
        epoch: snapshot.as_ref().map_or(0, |s| s.routing.epoch),
        // What consumers are served, which the coordinator compares with routing: never the
        // previous set a snapshot holds during the bake time.
        serving: snapshot
            .as_ref()
            .map(|s| {
                s.served_sets()
                    .into_iter()
                    .map(|(slot, set)| ServedSet {
                        slot,
                        version: set.version.clone(),
                        checksum: set.checksum.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        etcd_reachable: sync.etcd_reachable,
        at_ms,
        started_at_ms,
        reports: namespace.reports(),
        prepared: sync.prepared,
        activated_epoch: sync.activated_epoch,
        activated_at_us: sync.activated_at_us,
    }
}

/// When to write records because report counts changed: at once after a quiet time, otherwise
/// `interval` after the last write, so that any number of changes in between make one write.
#[derive(Debug)]
pub struct ReportsDebounce {
    interval: Duration,
    last_write: Option<Instant>,
    /// When the first change not yet written was noticed.
    pending_since: Option<Instant>,
}

impl ReportsDebounce {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_write: None,
            pending_since: None,
        }
    }

    /// Report counts changed at `now`.
    pub fn changed(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// When the pending changes must be written; `None` when nothing is pending. A time in the
    /// past means now.
    pub fn due(&self) -> Option<Instant> {
        let since = self.pending_since?;
        Some(match self.last_write {
            Some(last) => since.max(last + self.interval),
            None => since,
        })
    }

    /// Every record was written, with the counts as they stood at `started`.
    pub fn wrote(&mut self, started: Instant) {
        self.last_write = Some(started);
        self.pending_since = None;
    }
}

/// Which records a write covers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    All,
    /// Only the namespaces whose report counts changed since their last write.
    ReportsChanged,
}

impl HealthPublisher {
    /// Runs until `shutdown`, then revokes the lease so that the records go at once.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let mut lease_id = None;
            let result = tokio::select! {
                () = shutdown.cancelled() => Ok(()),
                result = self.publish(&mut lease_id) => result,
            };
            if shutdown.is_cancelled() {
                if let Some(id) = lease_id {
                    let mut client = self.client.clone();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(id)).await;
                }
                return;
            }
            if let Err(error) = result {
                tracing::debug!(%error, "health record not published; retrying");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
    }

    async fn publish(&self, lease_id: &mut Option<i64>) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        let lease = with_timeout(client.lease_grant(LEASE_TTL_SECONDS, None)).await?;
        *lease_id = Some(lease.id());
        let (mut keeper, mut responses) = with_timeout(client.lease_keep_alive(lease.id())).await?;
        // The report generation of each namespace as last written.
        let mut written = HashMap::new();
        let mut debounce = ReportsDebounce::new(REPORTS_MIN_INTERVAL);
        let started = Instant::now();
        self.write_records(lease.id(), Which::All, &mut written)
            .await?;
        debounce.wrote(started);
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
        // The records were just written: the first refresh is due a period from now.
        let mut refresh = tokio::time::interval_at(started + REFRESH_EVERY, REFRESH_EVERY);
        loop {
            let due = debounce.due();
            let reports_due = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            let which = tokio::select! {
                () = self.dirty.notified() => Which::All,
                _ = refresh.tick() => Which::All,
                () = reports_due => Which::ReportsChanged,
                () = self.reports_changed.notified() => {
                    debounce.changed(Instant::now());
                    continue;
                }
                _ = keep_alive.tick() => {
                    keeper.keep_alive().await?;
                    let answer = tokio::time::timeout(KEEP_ALIVE_EVERY, responses.message()).await;
                    match answer {
                        Ok(Ok(Some(response))) if response.ttl() > 0 => continue,
                        Ok(Ok(_)) => anyhow::bail!("lease {} expired", lease.id()),
                        Ok(Err(error)) => return Err(error.into()),
                        Err(_) => anyhow::bail!("lease keep-alive got no answer"),
                    }
                }
            };
            let started = Instant::now();
            self.write_records(lease.id(), which, &mut written).await?;
            // Either kind of write leaves every record with the counts as they stood when it
            // started (the records it skipped had not changed), so nothing is pending any more.
            debounce.wrote(started);
        }
    }

    async fn write_records(
        &self,
        lease_id: i64,
        which: Which,
        written: &mut HashMap<String, u64>,
    ) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        for namespace in &self.namespaces {
            // Read before the record is built: a report counted in between is written again
            // next time.
            let generation = namespace.reports_generation();
            if which == Which::ReportsChanged && written.get(&namespace.name) == Some(&generation) {
                continue;
            }
            let record = health_record(&self.id, namespace, self.started_at_ms, now_ms());
            let key = self.keys.health(&namespace.name, &self.id);
            let value = serde_json::to_vec(&record)?;
            let options = PutOptions::new().with_lease(lease_id);
            with_timeout(client.put(key, value, Some(options))).await?;
            written.insert(namespace.name.clone(), generation);
        }
        Ok(())
    }
}

//! The sidecar's own health record in etcd: the epoch and sets it serves, bound to a lease so
//! that it disappears when the sidecar dies. This is the only thing a sidecar ever writes.
//!
//! A record is written when what the sidecar serves, its reachability or its acknowledgement
//! of a synchronized flip changes, and at no other time: the lease's keep-alives, which etcd
//! does not count as writes, say that the sidecar lives. The outcomes applications report go
//! to the leader over gRPC instead ([`crate::outcomes`]), so that etcd's write rate does not
//! grow with traffic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use switchboard_proto::time::now_ms;
use switchboard_proto::{HealthRecord, Keys, ServedSet};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::loader::{LoadError, with_timeout};
use crate::namespace::Namespace;

/// The lease's time to live by default (`--health-lease-seconds`): a dead sidecar leaves
/// `status` after this long. Keep-alives go every third of it.
pub const LEASE_TTL_SECONDS: i64 = 10;
/// The pause after a first failure, 1 to 2 s, doubling with each failure in a row up to 4 to
/// 8 s ([`Backoff`]).
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MOST: Duration = Duration::from_secs(8);

pub struct HealthPublisher {
    pub client: Client,
    pub keys: Keys,
    pub id: String,
    pub namespaces: Vec<Arc<Namespace>>,
    /// When this sidecar started, Unix ms: the origin of its report counts.
    pub started_at_ms: u64,
    /// Told when what a namespace serves or its reachability changes: written at once.
    pub dirty: Arc<Notify>,
    /// The lease's time to live, in seconds (at least 3).
    pub lease_ttl_seconds: i64,
}

/// The health record of `namespace` as it stands: what it serves, and the report counts (which
/// the sidecar's own status shows; the record written to etcd carries none).
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

impl HealthPublisher {
    /// Runs until `shutdown`, then revokes the lease so that the records go at once.
    pub async fn run(self, shutdown: CancellationToken) {
        self.run_from_lease(None, shutdown).await
    }

    /// As [`run`](Self::run), starting with the lease `lease_id` if it still lives: a
    /// publisher restarted within its lease's time to live keeps its records, and tests give it
    /// a lease etcd has forgotten.
    pub async fn run_from_lease(self, lease_id: Option<i64>, shutdown: CancellationToken) {
        // The lease outlives a failed attempt: the next one keeps it while it lives.
        let mut lease_id = lease_id;
        let mut backoff = Backoff::new(&self.id, RETRY_FIRST, RETRY_MOST);
        loop {
            let attempted = tokio::time::Instant::now();
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
            let pause = backoff.after(attempted.elapsed());
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One attempt: takes the lease (the one of the attempt before while it lives, else a new
    /// one), writes every record, then keeps the lease alive and writes what changes. Ends
    /// with an error when etcd fails it; a keep-alive without an answer is tried again until
    /// the lease's time to live is over, for etcd under load answers late rather than never.
    async fn publish(&self, lease_id: &mut Option<i64>) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        let lease = match *lease_id {
            Some(id) => id,
            None => {
                let granted =
                    with_timeout(client.lease_grant(self.lease_ttl_seconds, None)).await?;
                *lease_id = Some(granted.id());
                granted.id()
            }
        };
        // A lease kept from a failed attempt may have expired meanwhile (etcd under load
        // answered the attempt too late): etcd then refuses to keep it alive, and every later
        // attempt would be refused the same way.
        let (mut keeper, mut responses) = with_timeout(client.lease_keep_alive(lease))
            .await
            .map_err(|error| forget_gone_lease(lease_id, error.into()))?;
        let ttl = Duration::from_secs(self.lease_ttl_seconds.max(3).unsigned_abs());
        let mut last_answer = tokio::time::Instant::now();
        // The lease of an earlier attempt may have expired meanwhile.
        keeper.keep_alive().await?;
        match tokio::time::timeout(ttl, responses.message()).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {}
            Ok(Ok(_)) => {
                *lease_id = None;
                anyhow::bail!("lease {lease} expired");
            }
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => anyhow::bail!("lease {lease}: no answer to a keep-alive"),
        }
        // What each record said when last written, so that a notification that changed nothing
        // writes nothing.
        let mut written = HashMap::new();
        self.write_records(lease, &mut written)
            .await
            .map_err(|error| forget_gone_lease(lease_id, error))?;
        let mut keep_alive = tokio::time::interval(ttl / 3);
        // Answers to keep-alives are awaited in the same loop as the writes, not after each
        // keep-alive: under a flip to 10,000 sidecars etcd answers late, and a record that
        // acknowledges the new epoch must not wait behind an answer about the lease.
        loop {
            tokio::select! {
                () = self.dirty.notified() => {
                    self.write_records(lease, &mut written)
                        .await
                        .map_err(|error| forget_gone_lease(lease_id, error))?;
                }
                _ = keep_alive.tick() => {
                    if last_answer.elapsed() >= ttl {
                        *lease_id = None;
                        anyhow::bail!("lease {lease}: no keep-alive answered for its time to live");
                    }
                    keeper.keep_alive().await?;
                }
                answer = responses.message() => match answer? {
                    Some(response) if response.ttl() > 0 => {
                        last_answer = tokio::time::Instant::now();
                    }
                    Some(_) => {
                        *lease_id = None;
                        anyhow::bail!("lease {lease} expired");
                    }
                    None => anyhow::bail!("lease {lease}: etcd ended the keep-alive stream"),
                },
            }
        }
    }

    /// Writes the record of each namespace whose content changed since it was last written
    /// (every one, the first time under a lease).
    async fn write_records(
        &self,
        lease_id: i64,
        written: &mut HashMap<String, HealthRecord>,
    ) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        for namespace in &self.namespaces {
            let mut record = health_record(&self.id, namespace, self.started_at_ms, now_ms());
            record.reports.clear();
            let unchanged = written.get(&namespace.name).is_some_and(|last| {
                HealthRecord {
                    at_ms: record.at_ms,
                    ..last.clone()
                } == record
            });
            if unchanged {
                continue;
            }
            let key = self.keys.health(&namespace.name, &self.id);
            let value = serde_json::to_vec(&record)?;
            let options = PutOptions::new().with_lease(lease_id);
            with_timeout(client.put(key, value, Some(options))).await?;
            written.insert(namespace.name.clone(), record);
        }
        Ok(())
    }
}

/// Whether etcd refused a request because it no longer knows the lease: it expired, or was
/// revoked.
fn lease_is_gone(error: &LoadError) -> bool {
    match error {
        LoadError::Etcd(etcd_client::Error::LeaseKeepAliveError(_)) => true,
        LoadError::Etcd(etcd_client::Error::GRpcStatus(status)) => {
            status.code() == tonic::Code::NotFound
        }
        _ => false,
    }
}

/// Forgets the lease when `error` says etcd has, so that the next attempt takes a new one.
fn forget_gone_lease(lease_id: &mut Option<i64>, error: anyhow::Error) -> anyhow::Error {
    if error.downcast_ref::<LoadError>().is_some_and(lease_is_gone) {
        *lease_id = None;
    }
    error
}

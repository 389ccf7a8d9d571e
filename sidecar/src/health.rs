//! The sidecar's own health record in etcd: the epoch and sets it serves, bound to a lease so
//! that it disappears when the sidecar dies. This is the only thing a sidecar ever writes.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use switchboard_proto::time::now_ms;
use switchboard_proto::{HealthRecord, Keys, ServedSet};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::loader::with_timeout;
use crate::namespace::Namespace;

/// The lease's time to live: a dead sidecar leaves `status` after this long.
pub const LEASE_TTL_SECONDS: i64 = 10;
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);
const REFRESH_EVERY: Duration = Duration::from_secs(30);
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct HealthPublisher {
    pub client: Client,
    pub keys: Keys,
    pub id: String,
    pub namespaces: Vec<Arc<Namespace>>,
    pub dirty: Arc<Notify>,
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
        self.write_records(lease.id()).await?;
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        loop {
            tokio::select! {
                () = self.dirty.notified() => self.write_records(lease.id()).await?,
                _ = refresh.tick() => self.write_records(lease.id()).await?,
                _ = keep_alive.tick() => {
                    keeper.keep_alive().await?;
                    let answer = tokio::time::timeout(KEEP_ALIVE_EVERY, responses.message()).await;
                    match answer {
                        Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                        Ok(Ok(_)) => anyhow::bail!("lease {} expired", lease.id()),
                        Ok(Err(error)) => return Err(error.into()),
                        Err(_) => anyhow::bail!("lease keep-alive got no answer"),
                    }
                }
            }
        }
    }

    async fn write_records(&self, lease_id: i64) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        for namespace in &self.namespaces {
            let snapshot = namespace.current();
            let record = HealthRecord {
                id: self.id.clone(),
                namespace: namespace.name.clone(),
                epoch: snapshot.as_ref().map_or(0, |s| s.routing.epoch),
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
                etcd_reachable: namespace.sync_state().etcd_reachable,
                at_ms: now_ms(),
            };
            let key = self.keys.health(&namespace.name, &self.id);
            let value = serde_json::to_vec(&record)?;
            let options = PutOptions::new().with_lease(lease_id);
            with_timeout(client.put(key, value, Some(options))).await?;
        }
        Ok(())
    }
}

//! Leader election among coordinator replicas, through etcd's election API. Only the leader
//! runs the loops (the health judge, rollouts, the end of bake times, the janitor's
//! collection and compaction, and the sampling of etcd's space for `/metrics`). Its term is bound to a
//! lease: when the lease cannot be kept alive the term ends at once, and every write the loops
//! make is fenced with the leader's election key, so a deposed leader's queued writes fail.

use std::time::Duration;

use etcd_client::Client;
use switchboard_proto::Keys;
use tokio_util::sync::CancellationToken;

use crate::janitor::{Janitor, JanitorSettings};
use crate::judge::Judge;
use crate::release::Releases;
use crate::routing::Fence;

/// The election lease: a dead leader is replaced after at most about this long.
pub const LEASE_TTL_SECONDS: i64 = 3;
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(1000);
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Campaigns, leads and campaigns again until `shutdown`.
pub async fn run(
    client: Client,
    keys: Keys,
    id: String,
    releases: Releases,
    janitor: JanitorSettings,
    shutdown: CancellationToken,
) {
    // Every replica exports the gauge, so that "no leader" is a sum of zeros, not an absence.
    metrics::gauge!(crate::telemetry::IS_LEADER).set(0.0);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if let Err(error) = term(&client, &keys, &id, &releases, janitor, &shutdown).await {
            tracing::warn!(%error, "leader election failed; campaigning again");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_AFTER) => {}
        }
    }
}

/// One campaign, and the term that follows it if it is won.
async fn term(
    client: &Client,
    keys: &Keys,
    id: &str,
    releases: &Releases,
    janitor: JanitorSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut client = client.clone();
    let lease = tokio::time::timeout(
        Duration::from_secs(5),
        client.lease_grant(LEASE_TTL_SECONDS, None),
    )
    .await??;
    let lease_id = lease.id();
    let term = shutdown.child_token();
    let keeper_task = tokio::spawn(keep_lease_alive(client.clone(), lease_id, term.clone()));

    let campaign = tokio::select! {
        () = term.cancelled() => None,
        response = client.campaign(keys.leader(), id, lease_id) => Some(response?),
    };
    let fence = campaign
        .as_ref()
        .and_then(|c| c.leader())
        .map(|leader| Fence {
            key: leader.key().to_vec(),
            revision: leader.rev(),
        });
    if let Some(fence) = fence {
        tracing::info!(%id, "elected leader: running the judge, rollouts and housekeeping");
        metrics::gauge!(crate::telemetry::IS_LEADER).set(1.0);
        // The loops end with the term; the judge also ends it when it returns.
        tokio::join!(
            Judge::new(releases.clone(), id, fence.clone()).run(term.clone()),
            Janitor::new(releases.clone(), fence, janitor).run(term.clone()),
            crate::capacity::sample(releases.clone(), term.clone()),
        );
        metrics::gauge!(crate::telemetry::IS_LEADER).set(0.0);
        tracing::info!(%id, "leadership ended");
    }
    term.cancel();
    let _ = keeper_task.await;
    // Revoking the lease deletes the election key, so that another replica takes over at once
    // instead of after the lease expires.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease_id)).await;
    Ok(())
}

/// Keeps the lease alive; cancels `term` as soon as that fails, so the leader stops acting
/// before another can be elected.
async fn keep_lease_alive(mut client: Client, lease_id: i64, term: CancellationToken) {
    let result = async {
        let (mut keeper, mut responses) = client.lease_keep_alive(lease_id).await?;
        let mut tick = tokio::time::interval(KEEP_ALIVE_EVERY);
        loop {
            tokio::select! {
                () = term.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            keeper.keep_alive().await?;
            match tokio::time::timeout(KEEP_ALIVE_EVERY, responses.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                Ok(Ok(_)) => anyhow::bail!("the election lease expired"),
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => anyhow::bail!("the election lease keep-alive got no answer"),
            }
        }
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "leadership lease lost");
    }
    term.cancel();
}

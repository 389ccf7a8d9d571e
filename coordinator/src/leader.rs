//! Leader election among coordinator replicas, through etcd's election API. Only the leader
//! runs the loops (the health judge, rollouts, the end of bake times, the janitor's
//! collection and compaction, and the sampling of etcd's space for `/metrics`). Its term is bound to a
//! lease: when the lease cannot be kept alive the term ends at once, and every write the loops
//! make is fenced with the leader's election key, so a deposed leader's queued writes fail.
//!
//! The lease stands for the loops, so it must not outlive them: each loop runs on a task of its
//! own, and the first one to end, by returning or by panicking, ends the term. The others are
//! stopped, the lease is revoked so that another replica takes over automatic flip-back at
//! once, and this replica campaigns again after a pause.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use etcd_client::Client;
use switchboard_proto::Keys;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::janitor::{Janitor, JanitorSettings};
use crate::judge::Judge;
use crate::release::Releases;
use crate::routing::Fence;

/// The election lease by default (`--election-lease-seconds`): a dead leader is replaced after
/// at most about this long.
pub const LEASE_TTL_SECONDS: i64 = 3;
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(1000);
/// How long before the election lease might expire the leader stops acting, when no
/// keep-alive was answered since: room for this process's timers and a busy machine.
const EXPIRY_MARGIN: Duration = Duration::from_millis(500);
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long the leader's loops may take to stop once the term ends. Each of their etcd requests
/// has a timeout of its own, so a loop that is still running after this is stuck, and it is
/// aborted: the lease is released only after the loops stop, and it must be released.
const LOOPS_STOP_GRACE: Duration = Duration::from_secs(5);

/// The names of the leader's loops, as the log and `switchboard_leader_loop_failures_total`
/// give them. Rollouts and the end of bake times are taken by the judge.
pub const JUDGE_LOOP: &str = "judge";
pub const JANITOR_LOOP: &str = "janitor";
pub const CAPACITY_LOOP: &str = "capacity-sampler";
pub const LEADER_LOOPS: [&str; 3] = [JUDGE_LOOP, JANITOR_LOOP, CAPACITY_LOOP];

/// Who campaigns: the replica's id, and where sidecars reach it when it leads.
pub struct Replica {
    pub id: String,
    pub advertise: String,
    /// The time to live of its election lease, in seconds.
    pub lease_ttl_seconds: i64,
}

/// Campaigns, leads and campaigns again until `shutdown`.
pub async fn run(
    client: Client,
    keys: Keys,
    replica: Replica,
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
        if let Err(error) = term(&client, &keys, &replica, &releases, janitor, &shutdown).await {
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
    replica: &Replica,
    releases: &Releases,
    janitor: JanitorSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut client = client.clone();
    let lease = tokio::time::timeout(
        Duration::from_secs(5),
        client.lease_grant(replica.lease_ttl_seconds, None),
    )
    .await??;
    let lease_id = lease.id();
    let term = shutdown.child_token();
    // The keeper belongs to this term: dropping the term (its owner's task ending in any way)
    // aborts it, so that nothing keeps the lease alive for a term that is over.
    let keeper_task = AbortOnDropHandle::new(tokio::spawn(keep_lease_alive(
        client.clone(),
        lease_id,
        Duration::from_secs(replica.lease_ttl_seconds.unsigned_abs()),
        term.clone(),
    )));

    let id = replica.id.as_str();
    // Where sidecars find this replica when it leads, for as long as its lease lives: one
    // write per term.
    let options = etcd_client::PutOptions::new().with_lease(lease_id);
    tokio::time::timeout(
        Duration::from_secs(5),
        client.put(keys.replica(id), replica.advertise.as_str(), Some(options)),
    )
    .await??;
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
        releases.outcomes().set_leading(true);
        let loops: Vec<LeaderLoop> = vec![
            (
                JUDGE_LOOP,
                Box::pin(Judge::new(releases.clone(), id, fence.clone()).run(term.clone())),
            ),
            (
                JANITOR_LOOP,
                Box::pin(Janitor::new(releases.clone(), fence, janitor).run(term.clone())),
            ),
            (
                CAPACITY_LOOP,
                Box::pin(crate::capacity::sample(releases.clone(), term.clone())),
            ),
        ];
        let stepped_down = || {
            releases.outcomes().set_leading(false);
            metrics::gauge!(crate::telemetry::IS_LEADER).set(0.0);
        };
        let loops_done = run_loops(loops, &term, LOOPS_STOP_GRACE);
        tokio::pin!(loops_done);
        let failed = tokio::select! {
            failed = &mut loops_done => failed,
            () = term.cancelled() => {
                // The term is over when it is cancelled, not when the last loop has stopped: a
                // loop inside an etcd call to an unreachable etcd may take the whole grace,
                // and meanwhile another replica may be elected.
                stepped_down();
                loops_done.await
            }
        };
        stepped_down();
        if failed.is_empty() {
            tracing::info!(%id, "leadership ended");
        } else {
            tracing::warn!(%id, "leadership ended because a loop of the leader ended; releasing the lease and campaigning again");
        }
    }
    term.cancel();
    let _ = keeper_task.await;
    // Revoking the lease deletes the election key, so that another replica takes over at once
    // instead of after the lease expires.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease_id)).await;
    Ok(())
}

/// A loop the leader runs for its term, with its name.
type LeaderLoop = (&'static str, Pin<Box<dyn Future<Output = ()> + Send>>);

/// A loop that ended before its term, and how: it returned, or it panicked with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopFailure {
    pub name: &'static str,
    pub how: String,
}

/// Runs the loops, each on a task of its own, until the term ends. The first loop to end, by
/// returning or by panicking, ends the term: `tokio::join!` would let a panic unwind the
/// leader's task while the lease's keeper, a task of its own, kept the lease alive for a term
/// that no longer had a judge. Once the term ends, the loops have `grace` to stop before they
/// are aborted. Every loop that ended before its term (or panicked at any time) is logged as
/// an error naming it, counted in `switchboard_leader_loop_failures_total`, and returned.
async fn run_loops(
    loops: Vec<LeaderLoop>,
    term: &CancellationToken,
    grace: Duration,
) -> Vec<LoopFailure> {
    let mut tasks = JoinSet::new();
    // The loops still running, by task: the name of one that ends is taken out of it.
    let mut running = HashMap::new();
    for (name, future) in loops {
        running.insert(tasks.spawn(future).id(), name);
    }
    let mut failed = Vec::new();
    if let Some(ended) = tasks.join_next_with_id().await {
        failed.extend(loop_ended(&mut running, ended, term));
    }
    term.cancel();
    let stopped = tokio::time::timeout(grace, async {
        while let Some(ended) = tasks.join_next_with_id().await {
            failed.extend(loop_ended(&mut running, ended, term));
        }
    })
    .await;
    if stopped.is_err() {
        let stuck: Vec<&str> = running.values().copied().collect();
        tracing::error!(
            loops = ?stuck,
            "the leader's loops did not stop within {grace:?} of the end of the term; aborting them"
        );
        tasks.shutdown().await;
    }
    failed
}

/// What one loop's end means: nothing when the term had ended (the loop stopped because it
/// should), a failure when the loop returned before its term or panicked.
fn loop_ended(
    running: &mut HashMap<tokio::task::Id, &'static str>,
    ended: Result<(tokio::task::Id, ()), JoinError>,
    term: &CancellationToken,
) -> Option<LoopFailure> {
    let id = match &ended {
        Ok((id, ())) => *id,
        Err(error) => error.id(),
    };
    let name = running.remove(&id).unwrap_or("unknown");
    let how = match ended {
        Ok(_) if term.is_cancelled() => return None,
        Ok(_) => "returned before its term ended".to_string(),
        Err(error) if error.is_panic() => {
            format!("panicked: {}", panic_message(error.into_panic()))
        }
        // Aborted by `run_loops` after the grace, which has said so already.
        Err(_) => return None,
    };
    tracing::error!(
        leader_loop = name,
        how = %how,
        "the leader's {name} loop {how}; ending the term and releasing the lease, so that another replica takes over automatic flip-back"
    );
    metrics::counter!(crate::telemetry::LEADER_LOOP_FAILURES, "loop" => name).increment(1);
    Some(LoopFailure { name, how })
}

/// The message a panic carries, when it is text (it is for `panic!` with a message).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_string(),
            Err(_) => "a panic without a message".to_string(),
        },
    }
}

/// Keeps the lease alive; cancels `term` as soon as that fails, so the leader stops acting
/// before another can be elected.
///
/// A keep-alive answered late is not a lost lease: etcd under load answers in seconds, and a
/// leader that gave up at the first late answer lost its term again and again (the fleet
/// benchmark at 10,000 sidecars), ending every outcome stream each time. The term ends instead
/// when the lease might expire: each answer proves the lease renewed no earlier than its
/// keep-alive was sent, so it lives at least until that moment plus its time to live, and the
/// term ends [`EXPIRY_MARGIN`] before that unless a later answer comes.
async fn keep_lease_alive(
    mut client: Client,
    lease_id: i64,
    ttl: Duration,
    term: CancellationToken,
) {
    // However this ends (an error, a panic, an abort), the term ends with it: a term whose lease
    // is no longer kept alive must not go on.
    let _end_term = term.clone().drop_guard();
    let result = async {
        // etcd-client sends a first keep-alive and waits for its answer before returning.
        let asked = tokio::time::Instant::now();
        let (mut keeper, mut responses) = client.lease_keep_alive(lease_id).await?;
        let mut lives_until = asked + ttl;
        // When each keep-alive not answered yet was sent, oldest first: answers come in order.
        let mut unanswered: VecDeque<tokio::time::Instant> = VecDeque::new();
        let mut tick = tokio::time::interval(KEEP_ALIVE_EVERY);
        loop {
            tokio::select! {
                () = term.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(lives_until - EXPIRY_MARGIN) => {
                    anyhow::bail!("no keep-alive of the election lease was answered in time");
                }
                _ = tick.tick() => {
                    keeper.keep_alive().await?;
                    unanswered.push_back(tokio::time::Instant::now());
                }
                answer = responses.message() => match answer? {
                    Some(response) if response.ttl() > 0 => {
                        let sent = unanswered.pop_front().unwrap_or(asked);
                        lives_until = lives_until.max(sent + ttl);
                    }
                    Some(_) => anyhow::bail!("the election lease expired"),
                    None => anyhow::bail!("etcd ended the election lease's keep-alive stream"),
                },
            }
        }
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "leadership lease lost");
        metrics::counter!(crate::telemetry::LEADERSHIP_LOST).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A loop that runs until the term ends, and notes that it stopped.
    fn until_term(term: &CancellationToken, stopped: &Arc<AtomicBool>) -> LeaderLoop {
        let (term, stopped) = (term.clone(), stopped.clone());
        (
            JANITOR_LOOP,
            Box::pin(async move {
                term.cancelled().await;
                stopped.store(true, Ordering::SeqCst);
            }),
        )
    }

    #[tokio::test]
    async fn a_panicking_loop_ends_the_term_and_the_others_stop() {
        let term = CancellationToken::new();
        let stopped = Arc::new(AtomicBool::new(false));
        let loops: Vec<LeaderLoop> = vec![
            (
                JUDGE_LOOP,
                Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    panic!("the judge broke");
                }),
            ),
            until_term(&term, &stopped),
        ];
        let failed = tokio::time::timeout(
            Duration::from_secs(5),
            run_loops(loops, &term, Duration::from_secs(5)),
        )
        .await
        .expect("the loops stop soon after the panic");
        assert!(term.is_cancelled(), "the panic ends the term");
        assert!(stopped.load(Ordering::SeqCst), "the other loop stopped");
        assert_eq!(
            failed,
            vec![LoopFailure {
                name: JUDGE_LOOP,
                how: "panicked: the judge broke".to_string()
            }]
        );
    }

    #[tokio::test]
    async fn a_loop_that_returns_early_ends_the_term() {
        let term = CancellationToken::new();
        let stopped = Arc::new(AtomicBool::new(false));
        let loops: Vec<LeaderLoop> = vec![
            until_term(&term, &stopped),
            (CAPACITY_LOOP, Box::pin(async {})),
        ];
        let failed = run_loops(loops, &term, Duration::from_secs(5)).await;
        assert!(term.is_cancelled());
        assert!(stopped.load(Ordering::SeqCst));
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].name, CAPACITY_LOOP);
        assert!(failed[0].how.contains("returned"), "{failed:?}");
    }

    #[tokio::test]
    async fn the_end_of_the_term_stops_every_loop_without_a_failure() {
        let term = CancellationToken::new();
        let stopped = Arc::new(AtomicBool::new(false));
        let loops: Vec<LeaderLoop> = vec![until_term(&term, &stopped)];
        let ending = term.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ending.cancel();
        });
        let failed = run_loops(loops, &term, Duration::from_secs(5)).await;
        assert!(stopped.load(Ordering::SeqCst));
        assert!(failed.is_empty(), "{failed:?}");
    }

    #[tokio::test]
    async fn a_loop_that_does_not_stop_is_aborted_after_the_grace() {
        let term = CancellationToken::new();
        let loops: Vec<LeaderLoop> = vec![
            (JUDGE_LOOP, Box::pin(async {})),
            (JANITOR_LOOP, Box::pin(std::future::pending())),
        ];
        let failed = tokio::time::timeout(
            Duration::from_secs(5),
            run_loops(loops, &term, Duration::from_millis(50)),
        )
        .await
        .expect("a stuck loop is aborted, not waited for");
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].name, JUDGE_LOOP);
    }

    #[tokio::test]
    async fn the_keeper_ends_the_term_however_it_ends() {
        // A keeper whose client points nowhere fails at once; the term must end with it.
        let client = crate::connect_etcd(&["http://127.0.0.1:9".to_string()])
            .await
            .expect("the client connects lazily");
        let term = CancellationToken::new();
        let keeper = tokio::spawn(keep_lease_alive(
            client,
            1,
            Duration::from_secs(3),
            term.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(10), term.cancelled())
            .await
            .expect("the failed keeper ends the term");
        let _ = keeper.await;
    }
}

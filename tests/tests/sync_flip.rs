//! End-to-end tests of the synchronized flip (`sbctl flip NS --sync`) against a real etcd with
//! a real coordinator and sidecar processes: every sidecar acknowledges the prepared set before
//! the commit, none serves the new version before the activation point, the reported spread is
//! what the sidecars recorded, and a sidecar that cannot acknowledge makes the flip refuse.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;
use etcd_client::{EventType, WatchOptions};
use serde_json::Value;
use switchboard_proto::time::{now_ms, now_us};
use switchboard_proto::{HealthRecord, Routing};
use switchboard_tests::{Sidecar, TestEnv, wait_until};

const NS: &str = "catalog";
const KEY: &str = "items/k00000";

/// No bake time, so that a flip may follow a flip at once (staging into a baking slot is
/// refused).
async fn no_bake(env: &TestEnv) -> Result<()> {
    env.sbctl()
        .run(&["policy", "set", NS, "--bake", "0"])
        .await?
        .ensure_success()?;
    Ok(())
}

/// Starts `n` sidecars, makes generation "v1" live and waits until every sidecar serves it;
/// then stages generation "v2". Returns the sidecars, v1, v2 and the temp dir of the sets.
async fn two_versions(
    env: &TestEnv,
    n: usize,
) -> Result<(Vec<Arc<Sidecar>>, String, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut sidecars = Vec::new();
    for i in 0..n {
        sidecars.push(Arc::new(
            env.start_sidecar(&format!("sidecar-{i:03}")).await?,
        ));
    }
    no_bake(env).await?;
    let sbctl = env.sbctl();
    let v1 = release(&sbctl, NS, dir.path(), "v1", (50, 100)).await?;
    let epoch1 = epoch(&sbctl, NS).await?;
    for sidecar in &sidecars {
        sidecar.wait_for_epoch(NS, epoch1, DEADLINE).await?;
    }
    // Every sidecar's health record shows the epoch, so the flip counts them all as live.
    wait_until(
        DEADLINE,
        "every sidecar's health record on epoch 1",
        async || {
            let status = status(&sbctl, NS).await?;
            let sidecars_on = status["sidecars"]
                .as_array()
                .map(|s| s.iter().filter(|s| s["epoch"] == epoch1).count())
                .unwrap_or(0);
            Ok(sidecars_on == n)
        },
    )
    .await?;
    let set = write_set(dir.path(), "v2", 50, 100)?;
    let v2 = stage(&sbctl, NS, &set.display().to_string()).await?;
    Ok((sidecars, v1, v2, dir))
}

/// One read during the flip: which sidecar, when the answer was complete (Unix µs) and the
/// version it named.
struct Read {
    sidecar: String,
    done_us: u64,
    version: String,
}

/// Reads `KEY` from every sidecar in a loop until stopped, recording each answer.
fn read_continuously(
    sidecars: Vec<Arc<Sidecar>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Vec<Read>>> {
    tokio::spawn(async move {
        let mut reads = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for sidecar in &sidecars {
                let answer = sidecar.get_item(NS, KEY, Some("app-1")).await?;
                let done_us = now_us();
                ensure!(
                    answer.status == 200,
                    "read from {}: {answer:?}",
                    sidecar.id()
                );
                reads.push(Read {
                    sidecar: sidecar.id().to_string(),
                    done_us,
                    version: answer.version.context("answer without a version")?,
                });
            }
        }
        Ok(reads)
    })
}

/// Every put under the namespace's routing key and health records, in revision order, from
/// `start_revision` until the routing put for which `last` holds (or the deadline).
async fn watch_until_routing(
    env: &TestEnv,
    start_revision: i64,
    last: impl Fn(&Routing) -> bool,
) -> Result<Vec<(i64, String, Vec<u8>)>> {
    let keys = env.keys();
    let mut client = env.etcd_client().await?;
    let prefix = format!("{}/ns/{NS}/", keys.prefix());
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_revision);
    let mut stream = client.watch(prefix.as_str(), Some(options)).await?;
    let routing_key = keys.routing(NS);
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .context("the commit's routing put did not come within the deadline")??
            .context("the watch ended")?;
        for event in message.events() {
            let Some(kv) = event.kv() else { continue };
            if event.event_type() != EventType::Put {
                continue;
            }
            let key = kv.key_str()?.to_string();
            let done = key == routing_key
                && serde_json::from_slice::<Routing>(kv.value()).is_ok_and(|r| last(&r));
            events.push((kv.mod_revision(), key, kv.value().to_vec()));
            if done {
                return Ok(events);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_flip_acknowledges_then_switches_everyone_at_the_activation_point() -> Result<()> {
    const SIDECARS: usize = 3;
    let env = TestEnv::start(&[NS]).await?;
    let (sidecars, v1, v2, _dir) = two_versions(&env, SIDECARS).await?;
    let sbctl = env.sbctl();

    // Everything written under the namespace from here on, to check the order of
    // acknowledgements and commit.
    let mut client = env.etcd_client().await?;
    let start_revision = client
        .get(env.keys().routing(NS), None)
        .await?
        .header()
        .map(|h| h.revision())
        .context("no header")?
        + 1;

    let stop = Arc::new(AtomicBool::new(false));
    let reader = read_continuously(sidecars.clone(), stop.clone());
    let flip = sbctl
        .run_json(&[
            "flip",
            NS,
            "--sync",
            "--sync-lead",
            "600",
            "--sync-timeout",
            "10",
            "--timeout",
            "20",
        ])
        .await?;
    // Reads go on past the activation point, so that the switch is seen too.
    let after = sidecars.first().context("no sidecar")?;
    wait_until(DEADLINE, "a read of v2 after the flip", async || {
        Ok(after
            .get_item(NS, KEY, Some("app-1"))
            .await?
            .version
            .as_deref()
            == Some(&*v2))
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await??;

    let sync = &flip["sync"];
    let epoch = flip["routing"]["epoch"].as_u64().context("no epoch")?;
    let prepare_epoch = sync["prepare_epoch"].as_u64().context("no prepare_epoch")?;
    let activate_at_ms = sync["activate_at_ms"]
        .as_u64()
        .context("no activate_at_ms")?;
    assert_eq!(prepare_epoch + 1, epoch, "{flip}");
    assert_eq!(flip["routing"]["activate_at_ms"], activate_at_ms, "{flip}");
    assert_eq!(flip["routing"]["active"]["version"], v2.as_str(), "{flip}");
    assert!(flip["routing"].get("prepare").is_none(), "{flip}");
    assert_eq!(sync["lead_ms"], 600, "{flip}");
    assert_eq!(
        sync["acknowledged"].as_array().map(Vec::len),
        Some(SIDECARS),
        "{flip}"
    );
    assert_eq!(sync["converged"], true, "{flip}");
    assert_eq!(sync["sidecars"].as_array().map(Vec::len), Some(SIDECARS));

    // (1) Every sidecar acknowledged the prepared set in a revision before the commit.
    let events = watch_until_routing(&env, start_revision, |r| r.epoch == epoch).await?;
    let routing_key = env.keys().routing(NS);
    let (commit_revision, _, _) = events.last().context("no events")?.clone();
    let prepared: Routing = events
        .iter()
        .filter(|(_, key, _)| *key == routing_key)
        .filter_map(|(_, _, value)| serde_json::from_slice::<Routing>(value).ok())
        .find(|r| r.epoch == prepare_epoch)
        .context("no preparation was written")?;
    let target = prepared.prepare.context("the preparation names no set")?;
    assert_eq!(target.version, v2);
    for sidecar in &sidecars {
        let health_key = env.keys().health(NS, sidecar.id());
        let acknowledged = events.iter().find(|(_, key, value)| {
            *key == health_key
                && serde_json::from_slice::<HealthRecord>(value).is_ok_and(|h| {
                    h.epoch >= prepare_epoch && h.prepared.as_deref() == Some(&*target.manifest)
                })
        });
        let (revision, _, _) = acknowledged
            .with_context(|| format!("{} never acknowledged the preparation", sidecar.id()))?;
        assert!(
            *revision < commit_revision,
            "{} acknowledged at revision {revision}, after the commit at {commit_revision}",
            sidecar.id()
        );
    }

    // (2) Nobody was served v2 before the activation point: every answer naming v2 was complete
    // only after it, and the switch times the sidecars recorded are at or after it.
    let point_us = activate_at_ms * 1000;
    let early: Vec<String> = reads
        .iter()
        .filter(|r| r.version == v2 && r.done_us < point_us)
        .map(|r| {
            format!(
                "{} at {} µs before the point",
                r.sidecar,
                point_us - r.done_us
            )
        })
        .collect();
    assert!(early.is_empty(), "v2 served early: {early:?}");
    for sidecar in &sidecars {
        let before: Vec<&Read> = reads
            .iter()
            .filter(|r| r.sidecar == sidecar.id() && r.done_us < point_us)
            .collect();
        ensure!(
            !before.is_empty(),
            "no read of {} during the lead: the test proves nothing",
            sidecar.id()
        );
        assert!(before.iter().all(|r| r.version == v1));
    }
    let status = status(&sbctl, NS).await?;
    let switched: Vec<u64> = status["sidecars"]
        .as_array()
        .context("no sidecars")?
        .iter()
        .map(|s| {
            ensure!(
                s["activated_epoch"] == epoch,
                "not switched to {epoch}: {s}"
            );
            s["activated_at_us"].as_u64().context("no activated_at_us")
        })
        .collect::<Result<_>>()?;
    assert_eq!(switched.len(), SIDECARS);
    for at_us in &switched {
        assert!(*at_us >= point_us, "switched {} µs early", point_us - at_us);
    }

    // (3) The spread sbctl reported is the one the status records.
    let (min, max) = (
        switched.iter().min().copied().unwrap_or(0),
        switched.iter().max().copied().unwrap_or(0),
    );
    assert_eq!(sync["spread_us"], max - min, "{flip}\n{status}");
    assert_eq!(sync["max_late_us"], max - point_us, "{flip}\n{status}");
    eprintln!(
        "synchronized flip of {SIDECARS} sidecars: spread {} µs, latest {} µs after the point, acknowledged in {} ms",
        max - min,
        max - point_us,
        sync["ack_wait_ms"]
    );

    // The audit trail has the preparation and the flip, and stays intact.
    let actions = audit_actions(&sbctl, NS).await?;
    assert_eq!(
        actions[actions.len().saturating_sub(2)..],
        ["prepare", "flip"],
        "{actions:?}"
    );
    let verified = sbctl
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;
    assert!(verified.stdout.contains("intact"), "{verified}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_flip_refuses_when_a_sidecar_cannot_acknowledge() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let (sidecars, v1, _v2, _dir) = two_versions(&env, 3).await?;
    let sbctl = env.sbctl();
    let epoch_before = epoch(&sbctl, NS).await?;

    // A stopped process keeps its health record until its lease runs out (10 s), so it still
    // counts as live and cannot acknowledge.
    let paused = sidecars.get(1).context("no second sidecar")?;
    paused.pause()?;
    let started = Instant::now();
    let refused = sbctl
        .run(&["flip", NS, "--sync", "--sync-timeout", "2"])
        .await;
    paused.resume()?;
    let refused = refused?;
    let took = started.elapsed();
    assert_eq!(refused.code, 4, "{refused}");
    assert!(
        refused.stderr.contains(paused.id()),
        "the refusal does not name {}: {refused}",
        paused.id()
    );
    for other in [&sidecars[0], &sidecars[2]] {
        assert!(
            !refused.stderr.contains(&format!("{} (epoch", other.id())),
            "{} acknowledged but is named: {refused}",
            other.id()
        );
    }
    assert!(
        took < Duration::from_secs(8),
        "the refusal took {took:?} for a 2 s acknowledgement timeout"
    );

    // Routing is not flipped and no preparation is left: the preparation and its withdrawal
    // are two audited routing changes.
    let mut client = env.etcd_client().await?;
    let raw = client.get(env.keys().routing(NS), None).await?;
    let routing: Routing =
        serde_json::from_slice(raw.kvs().first().context("no routing")?.value())?;
    assert_eq!(routing.active.version, v1);
    assert_eq!(routing.prepare, None, "{routing:?}");
    assert_eq!(routing.activate_at_ms, None, "{routing:?}");
    assert_eq!(routing.epoch, epoch_before + 2, "{routing:?}");
    assert_eq!(routing.action, "prepare-cancel");
    let actions = audit_actions(&sbctl, NS).await?;
    assert_eq!(
        actions[actions.len().saturating_sub(2)..],
        ["prepare", "prepare-cancel"],
        "{actions:?}"
    );

    // Every sidecar still serves v1, and drops the preparation.
    for sidecar in &sidecars {
        sidecar.wait_for_epoch(NS, routing.epoch, DEADLINE).await?;
        let answer = sidecar.get_item(NS, KEY, None).await?;
        assert_eq!(answer.version.as_deref(), Some(v1.as_str()), "{answer:?}");
        let status = sidecar.status().await?;
        assert_eq!(
            status["namespaces"][NS]["prepared"],
            Value::Null,
            "{status}"
        );
    }
    Ok(())
}

/// Pauses `paused`, so that it cannot acknowledge, starts `sbctl flip --sync` with
/// `--sync-timeout sync_timeout`, and waits until the preparation is in routing. The wait's
/// outcome is returned rather than raised, so that the caller resumes the sidecar either way.
async fn sync_flip_held_by(
    env: &TestEnv,
    paused: &Sidecar,
    sync_timeout: &str,
) -> Result<(switchboard_tests::ChildProcess, Result<()>)> {
    paused.pause()?;
    let sbctl = env
        .sbctl()
        .spawn(&["flip", NS, "--sync", "--sync-timeout", sync_timeout])?;
    let prepared = wait_until(DEADLINE, "the preparation in routing", async || {
        Ok(routing_in_etcd(env).await?.prepare.is_some())
    })
    .await;
    Ok((sbctl, prepared))
}

/// The routing record as etcd holds it.
async fn routing_in_etcd(env: &TestEnv) -> Result<Routing> {
    let mut client = env.etcd_client().await?;
    let raw = client.get(env.keys().routing(NS), None).await?;
    Ok(serde_json::from_slice(
        raw.kvs().first().context("no routing")?.value(),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preparation_is_withdrawn_even_when_sbctl_goes_away() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let (sidecars, v1, _v2, _dir) = two_versions(&env, 2).await?;
    let epoch_before = epoch(&env.sbctl(), NS).await?;
    // One sidecar cannot acknowledge, so the coordinator waits out the timeout.
    let paused = sidecars.first().context("no sidecar")?;
    let (sbctl, waited) = sync_flip_held_by(&env, paused, "3").await?;
    // The release manager gives up (Ctrl-C) while the coordinator waits.
    sbctl.kill()?;
    let withdrawn = match waited {
        Ok(()) => {
            wait_until(DEADLINE, "the preparation withdrawn", async || {
                let routing = routing_in_etcd(&env).await?;
                ensure!(routing.prepare.is_none(), "still prepared: {routing:?}");
                Ok(routing.action == "prepare-cancel")
            })
            .await
        }
        Err(error) => Err(error),
    };
    paused.resume()?;
    withdrawn?;
    let routing = routing_in_etcd(&env).await?;
    assert_eq!(routing.active.version, v1);
    assert_eq!(routing.epoch, epoch_before + 2);
    Ok(())
}

/// A coordinator that dies between a synchronized flip's preparation and its commit leaves
/// `prepare` in routing; the leader withdraws it once no coordinator could still be waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_withdraws_a_preparation_that_no_coordinator_finished() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let (_sidecars, v1, v2, _dir) = two_versions(&env, 1).await?;
    let mut routing = routing_in_etcd(&env).await?;
    let status = status(&env.sbctl(), NS).await?;
    let staged = ["blue", "green"]
        .into_iter()
        .find(|slot| status["slots"][*slot]["version"] == v2.as_str())
        .context("no slot holds v2")?;
    routing.prepare = Some(switchboard_proto::SlotVersion {
        slot: staged.parse().map_err(anyhow::Error::msg)?,
        version: v2.clone(),
        manifest: status["slots"][staged]["manifest"]
            .as_str()
            .context("no manifest")?
            .to_string(),
    });
    // Prepared 11 minutes ago by a coordinator that is gone.
    routing.at_ms = now_ms() - 11 * 60 * 1000;
    routing.epoch += 1;
    let mut client = env.etcd_client().await?;
    client
        .put(env.keys().routing(NS), serde_json::to_vec(&routing)?, None)
        .await?;
    wait_until(
        DEADLINE,
        "the leader withdraws the preparation",
        async || Ok(routing_in_etcd(&env).await?.prepare.is_none()),
    )
    .await?;
    let after = routing_in_etcd(&env).await?;
    assert_eq!(after.active.version, v1, "nobody was moved");
    assert_eq!(after.action, "prepare-withdraw");
    assert!(after.epoch > routing.epoch);
    Ok(())
}

/// Issue 13: a synchronized flip's task belongs to the coordinator's server. A coordinator told
/// to stop while the flip waits for acknowledgements stops the wait, withdraws the preparation
/// and exits promptly, instead of waiting out the acknowledgement timeout past its grace and
/// leaving the preparation in routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_stopped_during_a_synchronized_flip_withdraws_the_preparation() -> Result<()>
{
    let env = TestEnv::start(&[NS]).await?;
    let (sidecars, v1, _v2, _dir) = two_versions(&env, 2).await?;
    let epoch_before = epoch(&env.sbctl(), NS).await?;
    // One sidecar cannot acknowledge, and the acknowledgement timeout is far beyond the
    // coordinator's shutdown grace (10 s).
    let paused = sidecars.first().context("no sidecar")?;
    let (sbctl, prepared) = sync_flip_held_by(&env, paused, "300").await?;
    let stopping = Instant::now();
    let stopped = match prepared {
        Ok(()) => env.coordinator.terminate(Duration::from_secs(30)).await,
        Err(error) => Err(error),
    };
    let took = stopping.elapsed();
    paused.resume()?;
    let stopped = stopped?;
    eprintln!("the coordinator stopped {took:?} after SIGTERM, during a synchronized flip");
    assert!(
        stopped.success(),
        "{stopped:?}:\n{}",
        env.coordinator.log_tail(30)
    );
    assert!(
        took < Duration::from_secs(5),
        "the coordinator took {took:?} to stop:\n{}",
        env.coordinator.log_tail(30)
    );

    // Nobody was moved and no preparation is left: the preparation and its withdrawal are two
    // audited routing changes.
    let routing = routing_in_etcd(&env).await?;
    assert_eq!(routing.prepare, None, "{routing:?}");
    assert_eq!(routing.action, "prepare-cancel", "{routing:?}");
    assert_eq!(routing.active.version, v1);
    assert_eq!(routing.epoch, epoch_before + 2, "{routing:?}");
    let log = env.coordinator.process().log();
    assert!(
        log.contains("synchronized flip's preparation withdrawn"),
        "{}",
        env.coordinator.log_tail(30)
    );
    // sbctl was answered with the reason, not cut off.
    sbctl.wait(DEADLINE).await?;
    let answer = sbctl.log();
    assert!(answer.contains("shutting down"), "{answer}");
    Ok(())
}

/// Issue 13: a sidecar's switch scheduled for an activation point belongs to its sync loop. A
/// sidecar told to stop while a switch waits for its point (a minute ahead) exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_stopped_before_an_activation_point_exits_at_once() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let (sidecars, _v1, _v2, _dir) = two_versions(&env, 1).await?;
    let sidecar = sidecars.first().context("no sidecar")?;
    let sbctl = env.sbctl().spawn(&[
        "flip",
        NS,
        "--sync",
        "--sync-lead",
        "60000",
        "--timeout",
        "120",
    ])?;
    wait_until(DEADLINE, "the switch pending on the sidecar", async || {
        let status = sidecar.status().await?;
        Ok(status["namespaces"][NS]["pending"]["epoch"].is_u64())
    })
    .await?;
    let stopping = Instant::now();
    let stopped = sidecar.terminate(Duration::from_secs(20)).await?;
    let took = stopping.elapsed();
    eprintln!("the sidecar stopped {took:?} after SIGTERM, with a switch pending");
    assert!(stopped.success(), "{stopped:?}:\n{}", sidecar.log_tail(30));
    assert!(
        took < Duration::from_secs(3),
        "the sidecar took {took:?} to stop:\n{}",
        sidecar.log_tail(30)
    );
    assert!(
        sidecar.process().log().contains("sidecar stopped"),
        "{}",
        sidecar.log_tail(30)
    );
    sbctl.kill()?;
    Ok(())
}

//! Faults on a 3-member etcd cluster on loopback (issue 5): the sidecars are the reason no
//! application fails, whatever happens to etcd.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use switchboard_tests::{Coordinator, EtcdCluster, Sidecar, unique_prefix, wait_until};

const NS: &str = "catalog";
const OUTAGE: Duration = Duration::from_secs(30);

/// Reads through the sidecar for `period` (or `count` reads), one after another; returns the
/// latencies of the good answers and the failures seen.
async fn read_for(
    sidecar: &Sidecar,
    version: &str,
    period: Duration,
    count: usize,
) -> Result<(Vec<Duration>, Vec<String>)> {
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let until = Instant::now() + period;
    let mut n = 0usize;
    while Instant::now() < until || n < count {
        let key = format!("items/k{:05}", n % 50);
        let consumer = format!("c{n}");
        let started = Instant::now();
        match sidecar.get_item(NS, &key, Some(&consumer)).await {
            Ok(answer) if answer.status == 200 && answer.version.as_deref() == Some(version) => {
                latencies.push(started.elapsed());
            }
            Ok(answer) => failures.push(format!("{} {:?}", answer.status, answer.version)),
            Err(error) => failures.push(format!("{error:#}")),
        }
        n += 1;
        if period.is_zero() && n >= count {
            break;
        }
    }
    Ok((latencies, failures))
}

/// A 3-member etcd cluster on a fresh prefix, with a coordinator and a sidecar (named `id`)
/// that know all three members.
async fn cluster_stack(id: &str) -> Result<(EtcdCluster, String, Coordinator, Sidecar)> {
    let cluster = EtcdCluster::start(3).await?;
    let endpoints = cluster.endpoints_csv();
    let prefix = unique_prefix();
    let coordinator = Coordinator::start(&endpoints, &prefix).await?;
    let sidecar = Sidecar::start(&endpoints, &prefix, id, &[NS]).await?;
    Ok((cluster, prefix, coordinator, sidecar))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Acceptance 1: with every etcd member stopped for 30 s, the sidecar answers every read
/// (0 errors) at the latency it had before, a flip is refused clearly, and after the members
/// restart everything converges: the next flip is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_serve_through_a_30_second_loss_of_every_etcd_member() -> Result<()> {
    let (cluster, _, coordinator, sidecar) = cluster_stack("through-the-outage").await?;
    let sbctl = coordinator.sbctl();
    let dir = tempfile::tempdir()?;
    let v1 = release(&sbctl, NS, dir.path(), "g1", (50, 200)).await?;
    let epoch1 = epoch(&sbctl, NS).await?;
    sidecar.wait_for_epoch(NS, epoch1, DEADLINE).await?;
    let v2 = stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "g2", 50, 200)?.display().to_string(),
    )
    .await?;

    let (mut baseline, failures) = read_for(&sidecar, &v1, Duration::ZERO, 3000).await?;
    ensure!(
        failures.is_empty(),
        "failures before the outage: {failures:?}"
    );

    for member in cluster.members() {
        member.kill()?;
    }
    wait_until(DEADLINE, "the sidecar to see etcd gone", async || {
        let status = sidecar.status().await?;
        Ok(status["namespaces"][NS]["etcd_reachable"] == Value::Bool(false))
    })
    .await?;
    let outage_started = Instant::now();
    let refused = sbctl.run(&["flip", NS]).await?;
    ensure!(
        !refused.success(),
        "a flip went through without etcd:\n{refused}"
    );
    ensure!(refused.stderr.contains("cannot reach etcd"), "{refused}");
    let remaining = OUTAGE.saturating_sub(outage_started.elapsed());
    let (mut during, failures) = read_for(&sidecar, &v1, remaining, 0).await?;
    ensure!(
        failures.is_empty(),
        "{} failed reads during the outage, first: {:?}",
        failures.len(),
        failures.first()
    );
    let seen = sidecar.status().await?;
    assert_eq!(seen["namespaces"][NS]["etcd_reachable"], false, "{seen}");

    baseline.sort();
    during.sort();
    let (base99, out99) = (percentile(&baseline, 99.0), percentile(&during, 99.0));
    println!(
        "reads before: {} p50 {:?} p99 {:?}; during {:.0?} without etcd: {} reads, 0 errors, p50 {:?} p99 {:?} ({:+.1}%)",
        baseline.len(),
        percentile(&baseline, 50.0),
        base99,
        OUTAGE,
        during.len(),
        percentile(&during, 50.0),
        out99,
        (out99.as_secs_f64() / base99.as_secs_f64() - 1.0) * 100.0
    );
    // The 10% criterion is measured and reported (docs/RELIABILITY.md), not asserted: on a
    // shared 2-core machine the noise alone can exceed it. A read path that waited on etcd
    // would take seconds, which this bound catches.
    ensure!(
        out99 < base99 * 3 + Duration::from_millis(5),
        "p99 went from {base99:?} to {out99:?} without etcd"
    );

    for member in cluster.members() {
        member.respawn()?;
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    wait_until(
        Duration::from_secs(30),
        "the coordinator to reach etcd again",
        async || Ok(sbctl.run(&["status", NS]).await?.success()),
    )
    .await?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let epoch2 = epoch(&sbctl, NS).await?;
    sidecar
        .wait_for_epoch(NS, epoch2, Duration::from_secs(30))
        .await?;
    let answer = sidecar.get_item(NS, "items/k00001", None).await?;
    assert_eq!(answer.version.as_deref(), Some(v2.as_str()));
    wait_until(
        DEADLINE,
        "the sidecar to report etcd reachable",
        async || {
            let status = sidecar.status().await?;
            Ok(status["namespaces"][NS]["etcd_reachable"] == Value::Bool(true))
        },
    )
    .await?;
    // Its health record follows at its next attempt, which after 30 s of failures comes a few
    // seconds later (the retries back off).
    wait_until(
        DEADLINE,
        "the sidecar's record on the new epoch",
        async || {
            let shown = status(&sbctl, NS).await?;
            let sidecars = shown["sidecars"].as_array().context("sidecars")?;
            Ok(sidecars
                .iter()
                .any(|s| s["id"] == "through-the-outage" && s["epoch"] == epoch2))
        },
    )
    .await
}

/// Acceptance 4, the write itself: a leader whose election key is gone (its lease lapsed while
/// it was paused) has its queued write refused by etcd, because every write of the leader
/// compares that key; the same write under a standing key goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_queued_write_fails() -> Result<()> {
    use switchboard_coordinator::release::{Actor, Releases};
    use switchboard_coordinator::routing::{ChangeRequest, Fence};
    use switchboard_coordinator::store::Store;

    let cluster = EtcdCluster::start(1).await?;
    let prefix = unique_prefix();
    let coordinator = Coordinator::start(&cluster.endpoints_csv(), &prefix).await?;
    let sbctl = coordinator.sbctl();
    let dir = tempfile::tempdir()?;
    let versions = release_generations(&sbctl, NS, dir.path(), &["g1"], (10, 10)).await?;
    // Put the bake time back, then flip to a second version: the bake runs, and with the
    // coordinator gone nobody ends it.
    sbctl
        .run(&["policy", "set", NS, "--bake", "1"])
        .await?
        .ensure_success()?;
    let v2 = release(&sbctl, NS, dir.path(), "g2", (10, 10)).await?;
    coordinator.kill()?;
    let mut client = cluster.client().await?;
    let keys = switchboard_proto::Keys::new(&prefix);
    let routing_key = keys.routing(NS);
    let bake_over = async |client: &mut etcd_client::Client| -> Result<bool> {
        let response = client.get(routing_key.as_str(), None).await?;
        let routing: Value =
            serde_json::from_slice(response.kvs().first().context("routing")?.value())?;
        Ok(routing["bake_until_ms"]
            .as_u64()
            .is_some_and(|until| until < switchboard_proto::time::now_ms()))
    };
    wait_until(DEADLINE, "the bake time to pass", async || {
        bake_over(&mut client).await
    })
    .await?;

    let releases = Releases::new(Store::new(client.clone(), keys.clone()));
    let actor = Actor {
        name: "old-leader".into(),
    };
    let campaign = async |client: &mut etcd_client::Client, name: &str| -> Result<(Fence, i64)> {
        let lease = client.lease_grant(5, None).await?.id();
        let won = client.campaign(keys.leader(), name, lease).await?;
        let leader = won.leader().context("no leader key")?;
        Ok((
            Fence {
                key: leader.key().to_vec(),
                revision: leader.rev(),
            },
            lease,
        ))
    };
    let response = client.get(routing_key.as_str(), None).await?;
    let routing: Value =
        serde_json::from_slice(response.kvs().first().context("routing")?.value())?;
    let epoch_now = routing["epoch"].as_u64().context("epoch")?;
    let (old_fence, old_lease) = campaign(&mut client, "old-leader").await?;
    // The lease lapses (as it does for a leader paused past its TTL): the key goes with it.
    client.lease_revoke(old_lease).await?;
    let request = |actor, fence| ChangeRequest {
        ns: NS,
        expected_epoch: epoch_now,
        action: "bake-complete",
        reason: "queued before the pause",
        actor,
        fence: Some(fence),
    };
    let refused = releases
        .complete_bake(request(&actor, &old_fence))
        .await
        .err()
        .context("the deposed leader's write went through")?;
    ensure!(
        refused.to_string().contains("no longer the leader"),
        "{refused}"
    );
    ensure!(
        bake_over(&mut client).await?,
        "routing changed under a deposed leader"
    );

    let (new_fence, _) = campaign(&mut client, "new-leader").await?;
    let new_actor = Actor {
        name: "new-leader".into(),
    };
    let change = releases
        .complete_bake(request(&new_actor, &new_fence))
        .await?;
    assert_eq!(change.routing.bake_until_ms, None);
    assert_eq!(change.routing.active.version, v2);
    assert_ne!(versions[0], v2);
    Ok(())
}

/// Acceptance 4, the terms: a leader paused (SIGSTOP) past its lease is replaced, and when it
/// resumes it steps down instead of acting as a second leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_steps_down_when_it_resumes() -> Result<()> {
    let cluster = EtcdCluster::start(1).await?;
    let prefix = unique_prefix();
    let endpoints = cluster.endpoints_csv();
    let a = Coordinator::start_with(&endpoints, &prefix, &["--id", "replica-a"]).await?;
    let b = Coordinator::start_with(&endpoints, &prefix, &["--id", "replica-b"]).await?;
    wait_until(DEADLINE, "exactly one leader", async || {
        Ok(is_leader(&a).await? != is_leader(&b).await?)
    })
    .await?;
    let (leader, follower) = if is_leader(&a).await? {
        (&a, &b)
    } else {
        (&b, &a)
    };

    leader.pause()?;
    wait_until(DEADLINE, "the follower to take over", async || {
        is_leader(follower).await
    })
    .await?;
    leader.resume()?;
    wait_until(DEADLINE, "the resumed leader to step down", async || {
        Ok(!is_leader(leader).await?)
    })
    .await?;
    ensure!(is_leader(follower).await?, "the new leader lost its term");
    let shown = status(&follower.sbctl(), NS).await?;
    let follower_id = if std::ptr::eq(follower, &a) {
        "replica-a"
    } else {
        "replica-b"
    };
    assert_eq!(shown["leader"], follower_id, "{shown}");
    Ok(())
}

/// A leader cut off from etcd (its connection blackholed: no error, no answer) stops acting
/// before its election lease can expire, so that when another replica is elected it is the
/// only leader. A keep-alive answered late is tolerated; one never answered ends the term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_stops_before_another_is_elected() -> Result<()> {
    let cluster = EtcdCluster::start(1).await?;
    let prefix = unique_prefix();
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.members()[0].client_port()));
    let proxy = switchboard_tests::TcpProxy::start(upstream).await?;
    let a = Coordinator::start_with(&proxy.url(), &prefix, &["--id", "replica-a"]).await?;
    wait_until(DEADLINE, "replica-a to lead", async || is_leader(&a).await).await?;
    let b =
        Coordinator::start_with(&cluster.endpoints_csv(), &prefix, &["--id", "replica-b"]).await?;
    proxy.blackhole(true);
    wait_until(DEADLINE, "replica-b to lead", async || is_leader(&b).await).await?;
    ensure!(
        !is_leader(&a).await?,
        "replica-a, cut off from etcd, still acts as the leader beside replica-b"
    );
    proxy.blackhole(false);
    Ok(())
}

/// A sidecar whose etcd connection goes through a proxy that blackholes it, then delays it:
/// reads never fail, the sidecar reports etcd unreachable, and it catches up with the flips
/// made meanwhile once traffic flows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_cut_off_from_etcd_keeps_serving_and_catches_up() -> Result<()> {
    let env = switchboard_tests::TestEnv::start(&[NS]).await?;
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], env.etcd.client_port()));
    let proxy = switchboard_tests::TcpProxy::start(upstream).await?;
    let sidecar = Sidecar::start(&proxy.url(), env.prefix(), "behind-a-proxy", &[NS]).await?;
    // No bake time, so that each stage may follow a flip at once.
    env.sbctl()
        .run(&["policy", "set", NS, "--bake", "0"])
        .await?
        .ensure_success()?;
    let dir = tempfile::tempdir()?;
    let set = |g: &str| -> Result<String> {
        Ok(write_set(dir.path(), g, 50, 100)?.display().to_string())
    };
    let (v1, epoch1) = stage_and_flip(&env, NS, &set("g1")?).await?;
    sidecar.wait_for_epoch(NS, epoch1, DEADLINE).await?;

    proxy.blackhole(true);
    wait_until(
        Duration::from_secs(30),
        "the sidecar to notice the black hole",
        async || {
            let seen = sidecar.status().await?;
            Ok(seen["namespaces"][NS]["etcd_reachable"] == Value::Bool(false))
        },
    )
    .await?;
    let (v2, epoch2) = stage_and_flip(&env, NS, &set("g2")?).await?;
    let (good, failures) = read_for(&sidecar, &v1, Duration::ZERO, 200).await?;
    ensure!(
        failures.is_empty() && good.len() == 200,
        "reads failed while cut off: {failures:?}"
    );

    proxy.blackhole(false);
    sidecar
        .wait_for_epoch(NS, epoch2, Duration::from_secs(30))
        .await?;
    assert_eq!(
        sidecar
            .get_item(NS, "items/k00001", None)
            .await?
            .version
            .as_deref(),
        Some(v2.as_str())
    );

    // 300 ms each way to etcd: flips arrive later, reads stay as fast (they never touch etcd).
    proxy.set_delay(Duration::from_millis(300));
    let (v3, epoch3) = stage_and_flip(&env, NS, &set("g3")?).await?;
    sidecar
        .wait_for_epoch(NS, epoch3, Duration::from_secs(30))
        .await?;
    let (mut latencies, failures) = read_for(&sidecar, &v3, Duration::ZERO, 500).await?;
    ensure!(failures.is_empty(), "{failures:?}");
    latencies.sort();
    let p99 = percentile(&latencies, 99.0);
    println!("reads with etcd 300 ms away: p99 {p99:?}");
    ensure!(
        p99 < Duration::from_millis(300),
        "a read waited on etcd: p99 {p99:?}"
    );
    Ok(())
}

/// A sidecar paused (SIGSTOP) while routing moves on twice and etcd compacts past everything
/// it has seen: when it resumes it converges on the newest routing. (After any break in its
/// watch a sidecar reads routing afresh and watches from that read's revision, so a
/// compaction never leaves it waiting for events that are gone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_stopped_across_a_compaction_converges() -> Result<()> {
    let env = switchboard_tests::TestEnv::start(&[NS]).await?;
    let sidecar = env.start_sidecar("sleeper").await?;
    let dir = tempfile::tempdir()?;
    let set = |g: &str| -> Result<String> {
        Ok(write_set(dir.path(), g, 50, 100)?.display().to_string())
    };
    let (_, epoch1) = stage_and_flip(&env, NS, &set("g1")?).await?;
    sidecar.wait_for_epoch(NS, epoch1, DEADLINE).await?;

    sidecar.pause()?;
    env.sbctl()
        .run(&["policy", "set", NS, "--bake", "0"])
        .await?
        .ensure_success()?;
    stage_and_flip(&env, NS, &set("g2")?).await?;
    let (v3, epoch3) = stage_and_flip(&env, NS, &set("g3")?).await?;
    let mut client = env.etcd_client().await?;
    let revision = client
        .get(env.keys().routing(NS), None)
        .await?
        .header()
        .context("header")?
        .revision();
    client.compact(revision, None).await?;
    sidecar.resume()?;

    sidecar
        .wait_for_epoch(NS, epoch3, Duration::from_secs(30))
        .await?;
    let answer = sidecar.get_item(NS, "items/k00001", None).await?;
    assert_eq!(answer.version.as_deref(), Some(v3.as_str()));
    assert_eq!(answer.body["generation"], "g3");
    Ok(())
}

/// What happens to the etcd leader.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `kill -9`, and a restart afterwards.
    Kill,
    /// `SIGSTOP`, and `SIGCONT` afterwards.
    Pause,
}

fn inflict(member: &switchboard_tests::EtcdServer, fault: Fault) -> Result<()> {
    match fault {
        Fault::Kill => member.kill(),
        Fault::Pause => member.pause(),
    }
}

fn heal(member: &switchboard_tests::EtcdServer, fault: Fault) -> Result<()> {
    match fault {
        Fault::Kill => member.respawn(),
        Fault::Pause => member.resume(),
    }
}

/// The etcd leader killed (kill -9) during a stage, and the new leader paused (SIGSTOP) during
/// a flip: each operation either completes or fails cleanly and completes when retried, the
/// audit trail stays in step with routing, and the sidecar serves the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_leader_killed_during_a_stage_and_paused_during_a_flip() -> Result<()> {
    leader_faults_during_a_stage_and_a_flip(Fault::Kill, Fault::Pause).await
}

/// The same with the faults the other way round: paused during a stage, killed during a flip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_leader_paused_during_a_stage_and_killed_during_a_flip() -> Result<()> {
    leader_faults_during_a_stage_and_a_flip(Fault::Pause, Fault::Kill).await
}

async fn leader_faults_during_a_stage_and_a_flip(
    during_stage: Fault,
    during_flip: Fault,
) -> Result<()> {
    let (cluster, prefix, coordinator, sidecar) = cluster_stack("beside-the-cluster").await?;
    let sbctl = coordinator.sbctl();
    let dir = tempfile::tempdir()?;
    let v1 = release(&sbctl, NS, dir.path(), "g1", (20, 50)).await?;

    // About 3 MB: several upload batches, so the kill lands in the middle.
    let big = write_set(dir.path(), "g2", 3000, 1000)?
        .display()
        .to_string();
    let staging = sbctl.spawn(&["stage", NS, &big])?;
    let mut client = cluster.client().await?;
    let chunks = format!("{prefix}/ns/{NS}/chunks/");
    wait_until(DEADLINE, "the first chunks in etcd", async || {
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        Ok(client.get(chunks.as_str(), Some(options)).await?.count() > 1)
    })
    .await?;
    let struck = cluster.leader_index().await?;
    inflict(cluster.member(struck), during_stage)?;
    let first_try = staging.wait(Duration::from_secs(60)).await?;
    println!("the stage during the leader's {during_stage:?} exited with {first_try:?}");
    let v2 = wait_for_success(&sbctl, &["stage", NS, &big]).await?;
    let shown = status(&sbctl, NS).await?;
    assert_eq!(shown["slots"]["green"]["state"], "sealed", "{shown}");
    assert_eq!(shown["slots"]["green"]["version"], v2.as_str(), "{shown}");
    heal(cluster.member(struck), during_stage)?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;

    let epoch_before = epoch(&sbctl, NS).await?;
    let struck = cluster.leader_index().await?;
    inflict(cluster.member(struck), during_flip)?;
    // Pinned to the epoch and version decided on: a retry after a flip that committed but
    // whose answer was lost is a conflict (3), never a second flip.
    let epoch_text = epoch_before.to_string();
    let flip = [
        "flip",
        NS,
        "--expect-epoch",
        &epoch_text,
        "--expect-version",
        &v2,
    ];
    let outcome = wait_for_flip(&sbctl, &flip).await;
    heal(cluster.member(struck), during_flip)?;
    outcome?;
    let after = status(&sbctl, NS).await?;
    assert_eq!(
        after["epoch"],
        epoch_before + 1,
        "exactly one flip: {after}"
    );
    assert_eq!(after["active"]["version"], v2.as_str(), "{after}");
    sidecar
        .wait_for_epoch(NS, epoch_before + 1, Duration::from_secs(30))
        .await?;
    let answer = sidecar.get_item(NS, "items/k00001", None).await?;
    assert_eq!(answer.version.as_deref(), Some(v2.as_str()));
    assert_ne!(v1, v2);

    let trail = sbctl.run_json(&["audit", NS]).await?;
    let routing_records = trail["records"]
        .as_array()
        .context("records")?
        .iter()
        .filter(|r| r["detail"]["epoch"].is_u64())
        .count();
    assert_eq!(routing_records as u64, epoch_before + 1, "{trail:#}");
    sbctl
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;
    Ok(())
}

/// Runs a stage until it succeeds (the cluster may still be electing); returns the version.
async fn wait_for_success(sbctl: &switchboard_tests::SbctlRunner, args: &[&str]) -> Result<String> {
    let mut last = String::new();
    for _ in 0..20 {
        let output = sbctl.run(args).await?;
        if output.success() {
            return Ok(output
                .stdout
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string());
        }
        last = output.to_string();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("{args:?} never succeeded; last:\n{last}")
}

/// Runs a pinned flip until it succeeds, or until a retry finds it already made (exit 3 with
/// the epoch moved on by exactly this flip).
async fn wait_for_flip(sbctl: &switchboard_tests::SbctlRunner, args: &[&str]) -> Result<()> {
    let mut last = String::new();
    for _ in 0..40 {
        let output = sbctl.run(args).await?;
        if output.success() || (output.code == 3 && !last.is_empty()) {
            return Ok(());
        }
        last = output.to_string();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("the flip never went through; last:\n{last}")
}

/// Least privilege (issue 5, acceptance 6, first half): after `deploy/etcd/setup-auth.sh`, the
/// coordinator and a sidecar work under their own etcd users, and the sidecar's credentials
/// can neither write outside its health records nor read another namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_auth_gives_sidecars_read_only_access_to_their_namespace() -> Result<()> {
    let cluster = EtcdCluster::start(1).await?;
    let endpoints = cluster.endpoints_csv();
    let prefix = unique_prefix();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/etcd/setup-auth.sh");
    let setup = tokio::process::Command::new("bash")
        .arg(&script)
        .args([
            "--endpoints",
            &endpoints,
            "--prefix",
            &prefix,
            NS,
            "billing",
        ])
        .env("ETCD_ROOT_PASSWORD", "root-secret")
        .env("SWITCHBOARD_COORDINATOR_PASSWORD", "coordinator-secret")
        .env("SWITCHBOARD_SIDECAR_PASSWORD", "sidecar-secret")
        .output()
        .await?;
    ensure!(
        setup.status.success(),
        "setup-auth.sh failed: {}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    let output = String::from_utf8_lossy(&setup.stdout).into_owned();
    ensure!(
        !output.contains("secret"),
        "the script printed a given password: {output}"
    );

    let coordinator = Coordinator::start_with_env(
        &endpoints,
        &prefix,
        &["--etcd-user", "coordinator"],
        &[("SWITCHBOARD_ETCD_PASSWORD", "coordinator-secret")],
    )
    .await?;
    let user = format!("sidecar-{NS}");
    let sidecar = Sidecar::start_with_env(
        &endpoints,
        &prefix,
        "least-privilege",
        &[NS],
        &["--etcd-user", &user],
        &[("SWITCHBOARD_ETCD_PASSWORD", "sidecar-secret")],
    )
    .await?;
    let sbctl = coordinator.sbctl();
    let dir = tempfile::tempdir()?;
    let v1 = release(&sbctl, NS, dir.path(), "g1", (20, 50)).await?;
    release(&sbctl, "billing", dir.path(), "b1", (5, 10)).await?;
    let epoch = epoch(&sbctl, NS).await?;
    sidecar.wait_for_epoch(NS, epoch, DEADLINE).await?;
    assert_eq!(
        sidecar
            .get_item(NS, "items/k00001", None)
            .await?
            .version
            .as_deref(),
        Some(v1.as_str())
    );
    // Its health record is published under its own user, and it finds the leader with it:
    // the outcomes it takes reach the leader's judge.
    let (code, body) = sidecar.report(NS, &v1, 5, 1).await?;
    ensure!(code == 202, "the report answered {code}: {body}");
    wait_until(
        DEADLINE,
        "the sidecar's record and its outcomes",
        async || {
            let shown = status(&sbctl, NS).await?;
            Ok(shown["sidecars"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["id"] == "least-privilege" && s["reports"][0]["ok"] == 5)
            }))
        },
    )
    .await?;

    // The sidecar's credentials, used directly.
    let options = etcd_client::ConnectOptions::new().with_user(user.as_str(), "sidecar-secret");
    let mut as_sidecar = etcd_client::Client::connect([endpoints.as_str()], Some(options)).await?;
    let keys = switchboard_proto::Keys::new(&prefix);
    let denied = |result: Result<(), etcd_client::Error>, what: &str| -> Result<()> {
        match result {
            Err(error) if error.to_string().contains("permission denied") => Ok(()),
            other => anyhow::bail!("{what} was not denied: {other:?}"),
        }
    };
    denied(
        as_sidecar.put(keys.routing(NS), "{}", None).await.map(drop),
        "writing its namespace's routing",
    )?;
    denied(
        as_sidecar
            .put(keys.chunk(NS, &"0".repeat(64)), "x", None)
            .await
            .map(drop),
        "writing a chunk",
    )?;
    denied(
        as_sidecar
            .get(keys.routing("billing"), None)
            .await
            .map(drop),
        "reading another namespace",
    )?;
    denied(
        as_sidecar
            .put(format!("{prefix}/coordinator/leader/x"), "x", None)
            .await
            .map(drop),
        "writing the leader key",
    )?;
    let own = as_sidecar.get(keys.routing(NS), None).await?;
    ensure!(
        own.kvs().len() == 1,
        "the sidecar cannot read its own routing"
    );
    // Without a user, nothing at all.
    let mut anonymous = etcd_client::Client::connect([endpoints.as_str()], None).await?;
    ensure!(
        anonymous.get(keys.routing(NS), None).await.is_err(),
        "anonymous read allowed"
    );

    // No password reaches a log (the harness's own line shows the environment it set).
    for log in [coordinator.log_tail(100_000), sidecar.log_tail(100_000)] {
        let leaked = log
            .lines()
            .filter(|l| !l.starts_with("===== harness"))
            .any(|l| l.contains("secret"));
        ensure!(!leaked, "a password in a log:\n{log}");
    }

    // With a user, connecting needs etcd; the sidecar serves its disk copy meanwhile.
    cluster.member(0).kill()?;
    sidecar.restart().await?;
    sidecar.wait_ready(DEADLINE).await?;
    assert_eq!(
        sidecar
            .get_item(NS, "items/k00001", None)
            .await?
            .version
            .as_deref(),
        Some(v1.as_str())
    );
    Ok(())
}

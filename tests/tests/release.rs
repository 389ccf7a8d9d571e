//! End-to-end tests of the release flow against a real etcd: stage, canary, flip, rollback,
//! served by real sidecars and driven by the real sbctl.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use switchboard_tests::{TestEnv, wait_until};

const NS: &str = "catalog";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tour_stage_canary_flip_rollback_through_a_sidecar() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = env.start_sidecar("sidecar-1").await?;

    // Before anything is routed the namespace is not loaded.
    let answer = sidecar.get_item(NS, "schema_version", None).await?;
    assert_eq!(answer.status, 503, "unloaded namespace: {answer:?}");

    let (v1, epoch1) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    sidecar.wait_for_epoch(NS, epoch1, DEADLINE).await?;
    sidecar.wait_ready(DEADLINE).await?;
    let answer = sidecar
        .get_item(NS, "schema_version", Some("app-1"))
        .await?;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["version"], 191);
    assert_eq!(answer.version.as_deref(), Some(v1.as_str()));
    assert_eq!(answer.epoch, Some(epoch1));

    let plan = sbctl
        .run_json(&["plan", NS, &example("catalog-v2")])
        .await?;
    assert_eq!(plan["added"].as_array().map(Vec::len), Some(5), "{plan}");
    assert_eq!(plan["removed"].as_array().map(Vec::len), Some(2), "{plan}");
    assert_eq!(plan["changed"].as_array().map(Vec::len), Some(14), "{plan}");

    let v2 = stage_with(&sbctl, NS, &example("catalog-v2"), &["--allow-destructive"]).await?;
    assert_ne!(v1, v2);
    // `canary --wait` returns once every live sidecar serves the canary's epoch, so the reads
    // right after it see the new weight without waiting themselves (issue 15).
    let canary = sbctl.run_json(&["canary", NS, "10", "--wait"]).await?;
    let canary_epoch = canary["routing"]["epoch"]
        .as_u64()
        .context("no epoch in the change")?;
    ensure!(
        canary["wait"]["converged"] == true
            && canary["wait"]["sidecars"] == 1
            && canary["wait"]["epoch"] == canary_epoch,
        "canary --wait: {canary}"
    );

    // Some consumers get v2, the rest v1, and each answer's header matches its content.
    let mut seen = HashSet::new();
    for n in 0..200 {
        let answer = sidecar
            .get_item(NS, "schema_version", Some(&format!("app-{n}")))
            .await?;
        let expected = if answer.version.as_deref() == Some(v2.as_str()) {
            192
        } else {
            191
        };
        assert_eq!(answer.body["version"], expected, "app-{n}: {answer:?}");
        seen.insert(answer.version.context("no version header")?);
    }
    assert_eq!(
        seen.len(),
        2,
        "10% canary over 200 consumers should show both versions"
    );

    let status = status(&sbctl, NS).await?;
    assert_eq!(status["canary"]["percent"], 10.0, "{status}");
    assert_eq!(status["canary"]["version"], v2.as_str());
    assert_eq!(status["active"]["version"], v1.as_str());
    assert!(status["slots"]["blue"].is_object() && status["slots"]["green"].is_object());
    let sidecars = status["sidecars"].as_array().context("sidecars")?;
    assert_eq!(sidecars.len(), 1, "{status}");
    assert_eq!(sidecars[0]["id"], "sidecar-1");

    sbctl
        .run(&["flip", NS, "--wait", "--timeout", "20"])
        .await?
        .ensure_success()?;
    let flipped = epoch(&sbctl, NS).await?;
    assert_eq!(
        sidecar.epoch(NS).await?,
        flipped,
        "flip --wait returned before the sidecar served"
    );
    let answer = sidecar
        .get_item(NS, "schema_version", Some("app-1"))
        .await?;
    assert_eq!(
        (answer.body["version"].clone(), answer.version),
        (192.into(), Some(v2.clone()))
    );

    sbctl.run(&["rollback", NS]).await?.ensure_success()?;
    let rolled_back = epoch(&sbctl, NS).await?;
    sidecar.wait_for_epoch(NS, rolled_back, DEADLINE).await?;
    let answer = sidecar
        .get_item(NS, "schema_version", Some("app-1"))
        .await?;
    assert_eq!(
        (answer.body["version"].clone(), answer.version),
        (191.into(), Some(v1.clone()))
    );

    // Unknown keys are 404 and still say where the answer came from.
    let missing = sidecar.get_item(NS, "tables/no/such", None).await?;
    assert_eq!(missing.status, 404);
    assert!(missing.body["error"].is_string(), "{missing:?}");

    let audit = sbctl
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;
    assert!(audit.stdout.contains("intact"), "{audit}");
    let actions = audit_actions(&sbctl, NS).await?;
    assert_eq!(
        actions,
        ["stage", "flip", "stage", "canary", "flip", "rollback"]
    );
    Ok(())
}

/// Acceptance 2: the canary share, stickiness when the weight rises, and agreement between
/// two sidecars, over 10,000 consumer ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_assignment_is_proportional_sticky_and_the_same_on_every_sidecar() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let first = env.start_sidecar("sidecar-a").await?;
    let second = env.start_sidecar("sidecar-b").await?;
    let dir = tempfile::tempdir()?;
    let a = write_set(dir.path(), "a", 20, 10)?;
    let b = write_set(dir.path(), "b", 20, 10)?;
    stage_and_flip(&env, NS, &a.display().to_string()).await?;
    let canary_version = stage(&sbctl, NS, &b.display().to_string()).await?;

    let on_canary = async |weight: &str| -> Result<(HashSet<usize>, HashSet<usize>)> {
        sbctl.run(&["canary", NS, weight]).await?.ensure_success()?;
        let epoch = epoch(&sbctl, NS).await?;
        first.wait_for_epoch(NS, epoch, DEADLINE).await?;
        second.wait_for_epoch(NS, epoch, DEADLINE).await?;
        let mut sets = (HashSet::new(), HashSet::new());
        for n in 0..10_000 {
            let consumer = format!("consumer-{n}");
            for (sidecar, set) in [(&first, &mut sets.0), (&second, &mut sets.1)] {
                let answer = sidecar
                    .get_item(NS, "items/k00000", Some(&consumer))
                    .await?;
                ensure!(answer.epoch == Some(epoch), "{consumer}: {answer:?}");
                if answer.version.as_deref() == Some(canary_version.as_str()) {
                    ensure!(
                        answer.body["generation"] == "b",
                        "{consumer}: header and body disagree"
                    );
                    set.insert(n);
                }
            }
        }
        Ok(sets)
    };
    let (at_10, at_10_other) = on_canary("10").await?;
    assert_eq!(at_10, at_10_other, "two sidecars disagree at 10%");
    let share = at_10.len() as f64 / 100.0;
    assert!(
        (9.0..=11.0).contains(&share),
        "10% canary served {share}% of 10,000 consumers"
    );

    let (at_30, at_30_other) = on_canary("30").await?;
    assert_eq!(at_30, at_30_other, "two sidecars disagree at 30%");
    let left: Vec<_> = at_10.difference(&at_30).collect();
    eprintln!(
        "canary share of 10,000 consumers: {} at 10%, {} at 30%; {} left the canary when it rose",
        at_10.len(),
        at_30.len(),
        left.len()
    );
    assert!(
        left.is_empty(),
        "{} consumers left the canary when it rose to 30%",
        left.len()
    );
    let share = at_30.len() as f64 / 100.0;
    assert!((29.0..=31.0).contains(&share), "30% canary served {share}%");
    Ok(())
}

/// Acceptance 3: while 20 flips and rollbacks run, prefix reads never mix versions and their
/// headers always match their content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_reads_never_mix_versions_during_flips() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = Arc::new(env.start_sidecar("sidecar-1").await?);
    let dir = tempfile::tempdir()?;
    let a = write_set(dir.path(), "a", 400, 200)?;
    let b = write_set(dir.path(), "b", 400, 200)?;
    let (version_a, _) = stage_and_flip(&env, NS, &a.display().to_string()).await?;
    let version_b = stage(&sbctl, NS, &b.display().to_string()).await?;
    sidecar.wait_ready(DEADLINE).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for reader in 0..3 {
        let (sidecar, stop, answers) = (sidecar.clone(), stop.clone(), answers.clone());
        let (version_a, version_b) = (version_a.clone(), version_b.clone());
        readers.push(tokio::spawn(async move {
            let mut mixed = Vec::new();
            let mut seen = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let (code, body) = sidecar
                    .list_items(NS, "items/", Some(&format!("reader-{reader}")))
                    .await?;
                ensure!(code == 200, "prefix read answered {code}: {body}");
                let items = body["items"].as_object().context("items")?;
                ensure!(items.len() == 400, "{} items in one answer", items.len());
                let generations: HashSet<&str> = items
                    .values()
                    .filter_map(|v| v["generation"].as_str())
                    .collect();
                let version = body["version"].as_str().unwrap_or_default();
                let expected = if version == version_a {
                    "a"
                } else if version == version_b {
                    "b"
                } else {
                    "?"
                };
                if generations.len() != 1 || !generations.contains(expected) {
                    mixed.push(format!("version {version}, generations {generations:?}"));
                }
                seen.insert(version.to_string());
                answers.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>((mixed, seen))
        }));
    }
    for round in 0..10 {
        for command in ["flip", "rollback"] {
            sbctl.run(&[command, NS]).await?.ensure_success()?;
            let epoch = epoch(&sbctl, NS).await?;
            sidecar
                .wait_for_epoch(NS, epoch, DEADLINE)
                .await
                .with_context(|| format!("round {round} {command}"))?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut versions_seen = HashSet::new();
    for reader in readers {
        let (mixed, seen) = reader.await??;
        assert!(
            mixed.is_empty(),
            "{} mixed answers, first: {}",
            mixed.len(),
            mixed[0]
        );
        versions_seen.extend(seen);
    }
    eprintln!(
        "{} prefix answers of 400 items checked during 20 flips and rollbacks",
        answers.load(Ordering::Relaxed)
    );
    assert!(
        answers.load(Ordering::Relaxed) > 20,
        "readers made too few reads to mean anything"
    );
    assert_eq!(
        versions_seen.len(),
        2,
        "readers should have seen both versions: {versions_seen:?}"
    );
    Ok(())
}

/// Acceptance 4: two routing changes decided on the same state; exactly one wins and the
/// other sbctl exits 3 saying what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_routing_changes_exactly_one_wins() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 10, 10)?.display().to_string(),
    )
    .await?;
    stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 10, 10)?.display().to_string(),
    )
    .await?;

    // Both commands of a pair are valid on the state they start from, so whichever the
    // coordinator decides first wins, and the other must lose with a conflict. The last pair
    // has something to roll back to, because the pair before it flipped.
    for (first, second) in [
        (["flip"], ["canary"]),
        (["canary"], ["canary"]),
        (["flip"], ["flip"]),
        (["rollback"], ["flip"]),
    ] {
        let epoch = epoch(&sbctl, NS).await?.to_string();
        let command = |words: [&str; 1]| -> Vec<String> {
            let mut args = vec![words[0].to_string(), NS.to_string()];
            if words[0] == "canary" {
                args.push("25".into());
            }
            args.extend([
                "--expect-epoch".into(),
                epoch.clone(),
                "-m".into(),
                "race".into(),
            ]);
            args
        };
        let (a, b) = (command(first), command(second));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        let (one, two) = tokio::join!(sbctl.run(&a), sbctl.run(&b));
        let (one, two) = (one?, two?);
        let codes = [one.code, two.code];
        assert!(codes.contains(&0) && codes.contains(&3), "{one}\n{two}");
        let loser = if one.code == 3 { &one } else { &two };
        assert!(
            loser.stderr.contains("changed underneath")
                && loser.stderr.contains(&format!("expected epoch {epoch}")),
            "the loser should say what changed: {loser}"
        );
        assert_eq!(
            crate::epoch(&sbctl, NS).await?,
            epoch.parse::<u64>()? + 1,
            "exactly one change"
        );
        // Leave a state where every command applies again: no canary, green staged.
        let status = status(&sbctl, NS).await?;
        if !status["canary"].is_null() {
            sbctl.run(&["canary", NS, "0"]).await?.ensure_success()?;
        }
    }
    let verify = sbctl
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;
    assert!(verify.stdout.contains("intact"), "{verify}");
    Ok(())
}

/// Acceptance 5: staging identical content again prints the same version and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_identical_content_is_a_no_op() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let path = example("catalog-v1");
    let version = stage(&sbctl, NS, &path).await?;
    let (chunks, revision) = chunk_stats(&env, NS).await?;
    assert!(chunks > 0);
    let slots_before = status(&sbctl, NS).await?["slots"].clone();

    assert_eq!(stage(&sbctl, NS, &path).await?, version);
    assert_eq!(
        chunk_stats(&env, NS).await?,
        (chunks, revision),
        "re-staging wrote chunks"
    );
    assert_eq!(
        status(&sbctl, NS).await?["slots"],
        slots_before,
        "re-staging changed a slot"
    );

    // Once active, staging it again is still a no-op.
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let again = sbctl.run(&["stage", NS, &path]).await?.ensure_success()?;
    assert_eq!(
        again.stdout.lines().last(),
        Some(version.as_str()),
        "{again}"
    );
    assert_eq!(chunk_stats(&env, NS).await?, (chunks, revision));

    // A one-item change uploads only the chunk that holds it.
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("catalog");
    copy_dir(std::path::Path::new(&path), &copy)?;
    // A valid, additive-only change: the version number moves, nothing is removed.
    std::fs::write(
        copy.join("schema_version.json"),
        r#"{"version": 999, "migrations_in_progress": false, "updated_at": "2024-05-14T09:30:00Z"}"#,
    )?;
    let staged = sbctl
        .run_json(&["stage", NS, &copy.display().to_string()])
        .await?;
    assert_eq!(staged["chunks_uploaded"], 1, "{staged}");
    Ok(())
}

/// A set whose chunk list spans many manifest pages: a change scattered over 1% of the items
/// uploads only the chunks and the manifest pages that hold them, and the sidecar serves the
/// new version whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scattered_change_re_uploads_only_the_chunks_and_pages_it_touches() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let (first_dir, second_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let first = write_set(first_dir.path(), "a", 3000, 1000)?;
    let second = write_set(second_dir.path(), "a", 3000, 1000)?;
    // Every 100th item changes, keeping its length, so no chunk boundary moves.
    let changed: Vec<usize> = (7..3000).step_by(100).collect();
    for &i in &changed {
        let value = serde_json::json!({"generation": "b", "i": i, "pad": "x".repeat(1000)});
        std::fs::write(
            second.join(format!("items/k{i:05}.json")),
            value.to_string(),
        )?;
    }

    let staged = sbctl
        .run_json(&["stage", NS, &first.display().to_string()])
        .await?;
    let pages_total = staged["pages_total"].as_u64().context("pages_total")?;
    ensure!(pages_total > 20, "the set spans few pages: {staged}");
    assert_eq!(staged["pages_uploaded"], pages_total, "{staged}");
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    sidecar
        .wait_for_epoch(NS, epoch(&sbctl, NS).await?, DEADLINE)
        .await?;

    let restaged = sbctl
        .run_json(&["stage", NS, &second.display().to_string()])
        .await?;
    let field = |name: &str| restaged[name].as_u64().context(name.to_string());
    ensure!(
        field("chunks_uploaded")? <= changed.len() as u64,
        "{} items changed: {restaged}",
        changed.len()
    );
    ensure!(
        field("pages_uploaded")? <= changed.len() as u64 && field("pages_uploaded")? > 0,
        "{restaged}"
    );
    let uploaded = field("chunk_bytes_uploaded")? + field("manifest_bytes_uploaded")?;
    ensure!(
        uploaded * 100 < field("chunk_bytes_total")? * 5,
        "a 1% change sent {uploaded} bytes: {restaged}"
    );

    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    sidecar
        .wait_for_epoch(NS, epoch(&sbctl, NS).await?, DEADLINE)
        .await?;
    let changed_item = sidecar.get_item(NS, "items/k00107", None).await?;
    assert_eq!(changed_item.body["generation"], "b");
    let unchanged_item = sidecar.get_item(NS, "items/k00108", None).await?;
    assert_eq!(unchanged_item.body["generation"], "a");
    let status = sidecar.status().await?;
    assert_eq!(
        status["namespaces"][NS]["loaded"][0]["items"], 3000,
        "the sidecar holds the whole set: {status}"
    );
    Ok(())
}

/// Bad input at the coordinator's stage entry, on real etcd: a head whose pages etcd lacks is
/// answered with the missing pages and nothing written; a page that the head does not list is
/// refused, naming it; with its pages, the stage begins and the pages are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_stage_asks_for_missing_pages_and_refuses_pages_it_did_not_list() -> Result<()> {
    use switchboard_coordinator::error::CoordinatorError;
    use switchboard_coordinator::release::{Actor, BeginStage, Releases};
    use switchboard_coordinator::store::Store;

    const PAGED: &str = "paged";
    let env = TestEnv::start(&[NS]).await?;
    let client = env.etcd_client().await?;
    let releases = Releases::new(Store::new(client.clone(), env.keys().clone()));
    let actor = Actor {
        name: "tester".into(),
    };
    let mut set = switchboard_proto::ItemSet::new();
    for i in 0..2000 {
        let value = serde_json::json!({"i": i, "pad": "x".repeat(1000)});
        set.insert_value(&format!("items/k{i:05}"), &value)?;
    }
    let (manifest, _) = set.to_chunks();
    let (head, pages) = manifest.to_pages();
    ensure!(pages.len() > 10, "{} pages", pages.len());
    let head_json = head.to_canonical_json();
    let namespace_keys = async || -> Result<usize> {
        let mut client = client.clone();
        let prefix = format!("{}/ns/{PAGED}/", env.prefix());
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        Ok(client.get(prefix.as_str(), Some(options)).await?.count() as usize)
    };

    let begun = releases
        .begin_stage(PAGED, &head_json, Vec::new(), "m", &actor)
        .await?;
    let BeginStage::PagesNeeded { missing_pages, .. } = begun else {
        anyhow::bail!("expected pages_needed, got {begun:?}");
    };
    let unique: HashSet<&str> = pages.iter().map(|p| p.hash.as_str()).collect();
    assert_eq!(missing_pages.len(), unique.len());
    assert_eq!(namespace_keys().await?, 0, "pages_needed wrote something");

    let mut foreign = pages[0].data.clone();
    foreign[10] ^= 1;
    let refused = releases
        .begin_stage(PAGED, &head_json, vec![foreign], "m", &actor)
        .await;
    match refused {
        Err(CoordinatorError::InvalidInput(reason)) => {
            ensure!(reason.contains("not one of the pages"), "{reason}")
        }
        other => anyhow::bail!("a foreign page was not refused: {other:?}"),
    }
    assert_eq!(
        namespace_keys().await?,
        0,
        "a refused stage wrote something"
    );

    let all: Vec<Vec<u8>> = pages.iter().map(|p| p.data.clone()).collect();
    let begun = releases
        .begin_stage(PAGED, &head_json, all, "m", &actor)
        .await?;
    let BeginStage::Staging { missing_chunks, .. } = begun else {
        anyhow::bail!("expected staging, got {begun:?}");
    };
    assert_eq!(missing_chunks.len(), manifest.chunks.len());
    let stored = releases
        .store()
        .read_manifest(PAGED, &head.hash())
        .await?
        .context("the manifest is stored")?;
    assert_eq!(stored, manifest);
    Ok(())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Acceptance 8: sidecars keep serving with the coordinator down, and after etcd restarts they
/// resume watching and pick up the next flip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_outlive_the_coordinator_and_resume_after_etcd_restarts() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let dir = tempfile::tempdir()?;
    let (version_a, epoch_a) = stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 50, 100)?.display().to_string(),
    )
    .await?;
    sidecar.wait_for_epoch(NS, epoch_a, DEADLINE).await?;

    env.coordinator.kill()?;
    for n in 0..50 {
        let answer = sidecar
            .get_item(NS, "items/k00001", Some(&format!("c{n}")))
            .await?;
        assert_eq!(
            (answer.status, answer.version.as_deref()),
            (200, Some(version_a.as_str()))
        );
    }
    env.coordinator.restart().await?;

    env.etcd.kill()?;
    wait_until(DEADLINE, "the sidecar notices etcd is gone", async || {
        let status = sidecar.status().await?;
        Ok(status["namespaces"][NS]["etcd_reachable"] == Value::Bool(false))
    })
    .await?;
    for n in 0..50 {
        let answer = sidecar
            .get_item(NS, "items/k00001", Some(&format!("c{n}")))
            .await?;
        assert_eq!(
            (answer.status, answer.version.as_deref()),
            (200, Some(version_a.as_str()))
        );
    }
    env.etcd.restart().await?;

    let version_b = stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 50, 100)?.display().to_string(),
    )
    .await?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let epoch_b = epoch(&sbctl, NS).await?;
    sidecar.wait_for_epoch(NS, epoch_b, DEADLINE).await?;
    let answer = sidecar.get_item(NS, "items/k00001", None).await?;
    assert_eq!(answer.version.as_deref(), Some(version_b.as_str()));
    assert_eq!(answer.body["generation"], "b");
    Ok(())
}

/// A flip decided on one staged version never moves consumers to another that was staged into
/// the same slot in between (staging does not change the epoch, so the epoch alone cannot
/// tell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_never_moves_consumers_to_a_version_restaged_since_it_was_decided() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 10, 10)?.display().to_string(),
    )
    .await?;
    let seen = stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 10, 10)?.display().to_string(),
    )
    .await?;
    let epoch_seen = epoch(&sbctl, NS).await?.to_string();

    // Someone else restages the idle slot; sbctl says what it replaced.
    let other = sbctl
        .run(&[
            "stage",
            NS,
            &write_set(dir.path(), "c", 10, 10)?.display().to_string(),
        ])
        .await?
        .ensure_success()?;
    assert!(
        other.stderr.contains(&seen),
        "stage should name the version it replaced: {other}"
    );

    for command in [vec!["flip", NS], vec!["canary", NS, "10"]] {
        let mut args = command.clone();
        args.extend(["--expect-epoch", &epoch_seen, "--expect-version", &seen]);
        let output = sbctl.run(&args).await?;
        assert_eq!(output.code, 3, "{output}");
        assert!(
            output.stderr.contains("changed underneath") && output.stderr.contains(&seen),
            "{output}"
        );
    }
    assert_eq!(
        epoch(&sbctl, NS).await?.to_string(),
        epoch_seen,
        "nothing may have changed"
    );
    Ok(())
}

/// Invariant 8: audit records are never overwritten. With the audit head removed behind the
/// coordinator's back, changes are refused and verification names the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_audit_head_blocks_changes_instead_of_overwriting_records() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 10, 10)?.display().to_string(),
    )
    .await?;
    stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 10, 10)?.display().to_string(),
    )
    .await?;
    let before = sbctl.run_json(&["audit", NS]).await?;

    let mut client = env.etcd_client().await?;
    client.delete(env.keys().audit_head(NS), None).await?;
    let flip = sbctl.run(&["flip", NS]).await?;
    assert_eq!(flip.code, 1, "{flip}");
    assert!(flip.stderr.contains("audit-head"), "{flip}");
    let verify = sbctl.run(&["audit", NS, "--verify"]).await?;
    assert_eq!(verify.code, 1, "{verify}");
    assert_eq!(
        sbctl.run_json(&["audit", NS]).await?["records"],
        before["records"],
        "records changed"
    );
    Ok(())
}

/// Issue 4, acceptance 5: changing one byte of one audit record directly in etcd makes
/// `audit --verify` fail, naming that record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_changed_byte_in_an_audit_record_is_caught_and_named() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 10, 10)?.display().to_string(),
    )
    .await?;
    stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 10, 10)?.display().to_string(),
    )
    .await?;
    sbctl
        .run(&["canary", NS, "5", "-m", "look"])
        .await?
        .ensure_success()?;
    sbctl
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;

    // Record 3 (the second stage): change one byte of its reason, behind everyone's back.
    let mut client = env.etcd_client().await?;
    let key = env.keys().audit(NS, 3);
    let response = client.get(key.as_str(), None).await?;
    let mut value = response.kvs().first().context("record 3")?.value().to_vec();
    let position = value
        .windows(10)
        .position(|w| w == b"test stage")
        .context("reason")?;
    value[position] = b'T';
    client.put(key.as_str(), value, None).await?;

    let verify = sbctl.run(&["audit", NS, "--verify"]).await?;
    assert_eq!(verify.code, 1, "{verify}");
    let said = format!("{}{}", verify.stdout, verify.stderr);
    assert!(
        said.contains("record 3"),
        "the broken record must be named: {verify}"
    );
    let json = sbctl.run(&["--json", "audit", NS, "--verify"]).await?;
    let trail: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(trail["verified"]["first_bad_seq"], 3, "{trail}");
    Ok(())
}

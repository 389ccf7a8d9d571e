//! etcd's space against a real etcd: a stage that would not fit in the quota is refused before
//! any chunk is written (and rollbacks still work), and the leader collects what nothing needs
//! and compacts old revisions.

mod common;

use anyhow::{Context, Result, ensure};
use common::*;
use switchboard_tests::{Coordinator, EtcdServer, TestEnv, unique_prefix, wait_until};

const NS: &str = "catalog";
const MIB: u64 = 1024 * 1024;

async fn db_in_use(etcd: &EtcdServer) -> Result<u64> {
    let status = etcd.client().await?.status().await?;
    Ok(u64::try_from(status.raft_used_db_size())?)
}

async fn chunk_count(etcd: &EtcdServer, prefix: &str) -> Result<usize> {
    let mut client = etcd.client().await?;
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let response = client
        .get(format!("{prefix}/ns/{NS}/chunks/"), Some(options))
        .await?;
    Ok(usize::try_from(response.count())?)
}

/// Acceptance 5: staging into an etcd with too little quota headroom is refused before any
/// chunk is written, and a rollback still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_beyond_the_quota_is_refused_before_any_write_and_rollback_still_works()
-> Result<()> {
    let quota = 24 * MIB;
    let etcd = EtcdServer::start_with(&[&format!("--quota-backend-bytes={quota}")]).await?;
    let prefix = unique_prefix();
    let coordinator = Coordinator::start_with(
        &etcd.endpoint(),
        &prefix,
        &["--etcd-quota-bytes", &quota.to_string()],
    )
    .await?;
    let sbctl = coordinator.sbctl();
    sbctl
        .run(&["policy", "set", NS, "--bake", "0"])
        .await?
        .ensure_success()?;
    let dir = tempfile::tempdir()?;
    let small1 = write_set(dir.path(), "g1", 20, 100)?.display().to_string();
    let v1 = stage(&sbctl, NS, &small1).await?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;

    // A set of about 2 MB: how much etcd's database grows for it.
    let medium = write_set(dir.path(), "g2", 2000, 1000)?
        .display()
        .to_string();
    let before = db_in_use(&etcd).await?;
    let v2 = stage(&sbctl, NS, &medium).await?;
    let grown = db_in_use(&etcd).await?.saturating_sub(before);
    let shown = status(&sbctl, NS).await?;
    let bytes = shown["slots"]["green"]["bytes"].as_u64().context("bytes")?;
    println!(
        "etcd's database grew by {grown} bytes for a set of {bytes} bytes ({:.2}x)",
        grown as f64 / bytes as f64
    );
    sbctl.run(&["flip", NS]).await?.ensure_success()?;

    // About 15 MB, which with etcd's overhead does not fit under 90% of 24 MiB.
    let big = write_set(dir.path(), "g3", 3000, 5000)?
        .display()
        .to_string();
    let chunks_before = chunk_count(&etcd, &prefix).await?;
    let slots_before = status(&sbctl, NS).await?["slots"].clone();
    let refused = sbctl.run(&["stage", NS, &big]).await?.ensure_code(4)?;
    for says in ["needs about", "quota", "nothing was written"] {
        ensure!(refused.stderr.contains(says), "{says:?} not in:\n{refused}");
    }
    assert_eq!(
        chunk_count(&etcd, &prefix).await?,
        chunks_before,
        "chunks were written"
    );
    assert_eq!(status(&sbctl, NS).await?["slots"], slots_before);

    sbctl
        .run(&["rollback", NS, "-m", "after the refusal"])
        .await?
        .ensure_success()?;
    let after = status(&sbctl, NS).await?;
    assert_eq!(after["active"]["version"], v1.as_str(), "{after}");
    assert_ne!(v1, v2);
    Ok(())
}

/// The leader collects the manifests and chunks of versions that nothing names (beyond the
/// retained history), a collected version can no longer be rolled back to, and old revisions
/// are compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_collects_what_nothing_needs_and_compacts() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let janitor = Coordinator::start_with(
        &env.etcd_endpoints(),
        env.prefix(),
        &[
            "--gc-interval",
            "1",
            "--retain-versions",
            "0",
            "--compact-after",
            "1",
        ],
    )
    .await?;
    // The environment's own coordinator may hold the leadership; stop it so the janitor's
    // settings apply.
    env.coordinator.kill()?;
    let sbctl = janitor.sbctl();
    let dir = tempfile::tempdir()?;
    let versions =
        release_generations(&sbctl, NS, dir.path(), &["g1", "g2", "g3"], (200, 300)).await?;
    // v1 is in no slot and not routing's previous: its manifest and chunks go.
    wait_until(DEADLINE, "version 1 to be collected", async || {
        let history = sbctl.run_json(&["history", NS]).await?;
        let oldest = history["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["version"] == versions[0].as_str()))
            .cloned()
            .context("v1 in the history")?;
        Ok(oldest["retained"] == false)
    })
    .await?;
    let mut client = env.etcd_client().await?;
    let chunk_prefix = format!("{}/ns/{NS}/chunks/", env.prefix());
    let left = client
        .get(
            chunk_prefix.as_str(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await?
        .kvs()
        .len();
    ensure!(
        left > 0,
        "the chunks of the versions in the slots must stay"
    );
    // Pages go with their manifests: every page left is listed by a manifest that is left.
    let store = switchboard_coordinator::store::Store::new(client.clone(), env.keys().clone());
    let mut listed = std::collections::HashSet::new();
    for (_, raw) in store.get_prefix(&env.keys().manifests_prefix(NS)).await? {
        let head = switchboard_proto::ManifestHead::from_json(&raw)?;
        listed.extend(head.pages.into_iter().map(|p| env.keys().page(NS, &p.hash)));
    }
    let pages = store.keys_under(&env.keys().page(NS, "")).await?;
    ensure!(
        !pages.is_empty(),
        "the pages of the kept manifests must stay"
    );
    for key in &pages {
        ensure!(listed.contains(key), "{key} is listed by no manifest left");
    }
    // Both versions in service still load: a new sidecar serves the active one.
    let sidecar = env.start_sidecar("after-gc").await?;
    sidecar.wait_ready(DEADLINE).await?;
    let refused = sbctl
        .run(&["rollback", NS, "--to", &versions[0]])
        .await?
        .ensure_code(4)?;
    ensure!(refused.stderr.contains("no longer retained"), "{refused}");
    sbctl.run(&["rollback", NS]).await?.ensure_success()?;
    assert_eq!(
        status(&sbctl, NS).await?["active"]["version"],
        versions[1].as_str()
    );

    wait_until(DEADLINE, "old revisions to be compacted", async || {
        let old = client
            .get(
                env.keys().routing(NS),
                Some(etcd_client::GetOptions::new().with_revision(2)),
            )
            .await;
        Ok(old.is_err_and(|e| e.to_string().contains("compacted")))
    })
    .await?;
    Ok(())
}

/// The waits of `flip --wait` read every health record of a namespace before they watch them:
/// 10,000 sidecars' records are about 5 MB, past gRPC's 4 MiB answer. Read in one answer, this
/// failed with "decoded message length too large"; read in pages at one revision, every record
/// is there, and the watch follows from that revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_records_under_a_prefix_are_read_past_one_answers_limit() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let mut client = env.etcd_client().await?;
    let prefix = format!("{}/records/", env.prefix());
    // 8,000 records of 600 bytes, as many sidecars' health records: 4.8 MB in all.
    const RECORDS: usize = 8_000;
    let value = vec![b'x'; 600];
    let keys: Vec<String> = (0..RECORDS).map(|i| format!("{prefix}r{i:05}")).collect();
    // etcd takes at most 128 operations in one transaction.
    for batch in keys.chunks(128) {
        let puts: Vec<etcd_client::TxnOp> = batch
            .iter()
            .map(|key| etcd_client::TxnOp::put(key.as_str(), value.clone(), None))
            .collect();
        client.txn(etcd_client::Txn::new().and_then(puts)).await?;
    }
    let store = switchboard_coordinator::store::Store::new(client.clone(), env.keys().clone());
    let mut records = store.watch_records(&prefix, true).await?;
    let read: Vec<&str> = records.values().map(|(key, _)| key).collect();
    assert_eq!(read, keys);
    ensure!(records.values().all(|(_, read)| read == value.as_slice()));
    // The watch starts right after the revision the pages were read at: the next put is the
    // next change, nothing before it is seen twice.
    let next = format!("{prefix}r{RECORDS:05}");
    client.put(next.as_str(), "new", None).await?;
    // The first message of a watch may be etcd's confirmation that it was created, which
    // changes nothing.
    let changed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let changed = records.changed().await?;
            if !changed.is_empty() {
                return anyhow::Ok(changed);
            }
        }
    })
    .await
    .context("the watch of the records")??;
    assert_eq!(changed, vec![next]);
    assert_eq!(records.values().count(), RECORDS + 1);
    Ok(())
}

/// The janitor and the stage list a namespace's chunk keys, and status and audit read records
/// under a prefix, which can be more than one gRPC answer holds: both read in pages, in order,
/// and stop at the end of the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_listings_are_read_in_pages_and_end_at_the_prefix() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let mut client = env.etcd_client().await?;
    let prefix = format!("{}/listing/", env.prefix());
    let mut expected = Vec::new();
    for i in 0..25 {
        let key = format!("{prefix}k{i:03}");
        client.put(key.as_str(), format!("value {i}"), None).await?;
        expected.push(key);
    }
    // Just past the prefix range, and just before it.
    client
        .put(format!("{}/listing0", env.prefix()), "v", None)
        .await?;
    client
        .put(format!("{}/listing.", env.prefix()), "v", None)
        .await?;
    let store = switchboard_coordinator::store::Store::new(client.clone(), env.keys().clone());
    for per_read in [1, 4, 25, 1000] {
        let keys = store.keys_under_in_pages(&prefix, per_read).await?;
        assert_eq!(keys, expected, "{per_read} keys per read");
        let pairs = store.get_prefix_in_pages(&prefix, per_read).await?;
        let values: Vec<(String, Vec<u8>)> = expected
            .iter()
            .enumerate()
            .map(|(i, key)| (key.clone(), format!("value {i}").into_bytes()))
            .collect();
        assert_eq!(pairs, values, "{per_read} values per read");
    }
    Ok(())
}

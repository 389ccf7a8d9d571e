//! End-to-end tests of the sidecar's other faces: its gRPC API, its reports, the coordinator's
//! HTTP status, and corrupt data in etcd, which must never be served.

mod common;

use anyhow::{Context, Result};
use common::*;
use switchboard_proto::pb::{self, reader_client::ReaderClient};
use switchboard_tests::{TestEnv, wait_until};
use tokio_stream::StreamExt;

const NS: &str = "catalog";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_reads_announce_version_changes_and_take_reports() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let (v1, epoch1) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    sidecar.wait_for_epoch(NS, epoch1, DEADLINE).await?;

    let mut reader = ReaderClient::connect(sidecar.grpc_url()).await?;
    let get = reader
        .get(pb::GetRequest {
            namespace: NS.into(),
            key: "schema_version".into(),
            consumer: "app-1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let served = get.served.context("no served")?;
    assert_eq!(
        (served.version.as_str(), served.epoch, served.slot.as_str()),
        (v1.as_str(), epoch1, "blue")
    );
    let value: serde_json::Value = serde_json::from_str(&get.value_json)?;
    assert_eq!(value["version"], 191);

    let list = reader
        .list(pb::ListRequest {
            namespace: NS.into(),
            prefix: "owners/".into(),
            consumer: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(!list.items.is_empty() && list.items.iter().all(|i| i.key.starts_with("owners/")));

    let missing = reader
        .get(pb::GetRequest {
            namespace: NS.into(),
            key: "no/such/key".into(),
            consumer: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("unknown key");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let mut versions = reader
        .watch_versions(pb::WatchVersionsRequest {
            namespace: NS.into(),
            consumer: "app-1".into(),
        })
        .await?
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, versions.next())
        .await?
        .context("stream ended")??;
    assert_eq!(first.version, v1);
    let v2 = stage_with(&sbctl, NS, &example("catalog-v2"), &["--allow-destructive"]).await?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let next = tokio::time::timeout(DEADLINE, versions.next())
        .await?
        .context("stream ended")??;
    assert_eq!(
        (next.version.as_str(), next.slot.as_str()),
        (v2.as_str(), "green")
    );

    let accepted = reader
        .report(pb::ReportRequest {
            namespace: NS.into(),
            version: v2.clone(),
            ok: 10,
            errors: 1,
        })
        .await?
        .into_inner();
    assert!(accepted.accepted);
    let (code, _) = sidecar.report(NS, &v2, 5, 0).await?;
    assert_eq!(code, 202);

    // The coordinator's HTTP API serves the same status document as sbctl --json.
    let (code, status) = env
        .coordinator
        .get_json(&format!("/v1/ns/{NS}/status"))
        .await?;
    assert_eq!(code, 200);
    assert_eq!(status["active"]["version"], v2.as_str());
    assert_eq!(status["sidecars"][0]["id"], "sidecar-1");
    Ok(())
}

/// Invariants 1 and 7: a corrupt chunk or garbage routing in etcd is refused by the sidecar,
/// which keeps serving its last verified snapshot and says why in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_data_in_etcd_is_never_served() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let dir = tempfile::tempdir()?;
    let (version_a, epoch_a) = stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 100, 100)?.display().to_string(),
    )
    .await?;
    sidecar.wait_for_epoch(NS, epoch_a, DEADLINE).await?;
    stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 100, 100)?.display().to_string(),
    )
    .await?;

    // Flip one byte of one chunk of the staged set, behind the coordinator's back.
    let mut client = env.etcd_client().await?;
    let manifest = sbctl.run_json(&["status", NS]).await?["slots"]["green"]["manifest"]
        .as_str()
        .context("green manifest")?
        .to_string();
    let manifest = switchboard_coordinator::store::Store::new(client.clone(), env.keys().clone())
        .read_manifest(NS, &manifest)
        .await?
        .context("manifest missing")?;
    let chunk_key = env.keys().chunk(NS, &manifest.chunks[0].hash);
    let mut chunk = client
        .get(chunk_key.as_str(), None)
        .await?
        .kvs()
        .first()
        .context("chunk")?
        .value()
        .to_vec();
    let last = chunk.len() - 2;
    chunk[last] ^= 0x01;
    client.put(chunk_key.as_str(), chunk, None).await?;

    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let bad_epoch = epoch(&sbctl, NS).await?;
    wait_until(
        DEADLINE,
        "the sidecar reports the corrupt chunk",
        async || {
            let status = sidecar.status().await?;
            let error = status["namespaces"][NS]["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Ok(error.contains(&manifest.chunks[0].hash))
        },
    )
    .await?;
    let answer = sidecar.get_item(NS, "items/k00001", None).await?;
    assert_eq!(
        answer.version.as_deref(),
        Some(version_a.as_str()),
        "served a corrupt set"
    );
    assert_eq!(
        (answer.epoch, answer.body["generation"].as_str()),
        (Some(epoch_a), Some("a"))
    );
    assert!(sidecar.epoch(NS).await? < bad_epoch);

    // Garbage routing: refused the same way.
    client
        .put(env.keys().routing(NS), b"{not json".to_vec(), None)
        .await?;
    wait_until(
        DEADLINE,
        "the sidecar reports unparsable routing",
        async || {
            let status = sidecar.status().await?;
            Ok(status["namespaces"][NS]["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("does not parse"))
        },
    )
    .await?;
    let answer = sidecar.get_item(NS, "items/k00001", None).await?;
    assert_eq!(
        (answer.status, answer.version.as_deref()),
        (200, Some(version_a.as_str()))
    );
    assert!(
        sidecar.process().is_running(),
        "the sidecar must not die on bad input"
    );

    // The coordinator names the corrupt record instead of failing obscurely.
    let status = sbctl.run(&["status", NS]).await?;
    assert_eq!(status.code, 1, "{status}");
    assert!(status.stderr.contains("routing"), "{status}");
    Ok(())
}

/// Invariant 5: a sidecar restarted while etcd is down serves its verified last-known-good
/// copy; a corrupted copy is refused and the namespace answers 503 until etcd returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restarted_without_etcd_serves_its_verified_disk_copy() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let dir = tempfile::tempdir()?;
    let (version_a, _) = stage_and_flip(
        &env,
        NS,
        &write_set(dir.path(), "a", 300, 500)?.display().to_string(),
    )
    .await?;
    let version_b = stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 300, 500)?.display().to_string(),
    )
    .await?;
    sbctl.run(&["canary", NS, "50"]).await?.ensure_success()?;
    let epoch = epoch(&sbctl, NS).await?;
    sidecar.wait_for_epoch(NS, epoch, DEADLINE).await?;
    wait_until(
        DEADLINE,
        "the disk copy holds the current epoch",
        async || Ok(sidecar.status().await?["namespaces"][NS]["disk_copy_epoch"] == epoch),
    )
    .await?;
    let mut before = Vec::new();
    for n in 0..40 {
        before.push(
            sidecar
                .get_item(NS, "items/k00007", Some(&format!("c{n}")))
                .await?
                .version,
        );
    }
    assert!(before.contains(&Some(version_a.clone())) && before.contains(&Some(version_b.clone())));

    env.etcd.kill()?;
    sidecar.kill()?;
    let restarted = std::time::Instant::now();
    sidecar.restart().await?;
    sidecar.wait_ready(DEADLINE).await?;
    let ready_after = restarted.elapsed();
    for (n, expected) in before.iter().enumerate() {
        let answer = sidecar
            .get_item(NS, "items/k00007", Some(&format!("c{n}")))
            .await?;
        assert_eq!(
            (answer.status, &answer.version, answer.epoch),
            (200, expected, Some(epoch))
        );
    }
    let status = sidecar.status().await?;
    assert_eq!(status["namespaces"][NS]["source"], "disk", "{status}");
    eprintln!("sidecar restarted without etcd was ready from its disk copy after {ready_after:?}");

    // One flipped byte in the copy: refused, and nothing is served until etcd returns.
    sidecar.kill()?;
    let path = sidecar.cache_dir().join(format!("{NS}.lkg"));
    let mut bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes)?;
    sidecar.restart().await?;
    let answer = sidecar.get_item(NS, "items/k00007", None).await?;
    assert_eq!(
        answer.status, 503,
        "a corrupt copy must not be served: {answer:?}"
    );
    let status = sidecar.status().await?;
    let error = status["namespaces"][NS]["disk_copy_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("corrupt"), "{status}");

    env.etcd.restart().await?;
    sidecar.wait_for_epoch(NS, epoch, DEADLINE).await?;
    let answer = sidecar.get_item(NS, "items/k00007", Some("c0")).await?;
    assert_eq!((answer.status, &answer.version), (200, &before[0]));
    Ok(())
}

/// With `SWITCHBOARD_SIDECAR_TOKEN` set, reads and reports over HTTP and gRPC need the bearer
/// token; the probes and the metrics stay open; the token is never logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_a_token_refuses_reads_without_it() -> Result<()> {
    const TOKEN: &str = "local-api-token-0123456789";
    let env = TestEnv::start(&[NS]).await?;
    let sidecar = switchboard_tests::Sidecar::start_with_env(
        &env.etcd_endpoints(),
        env.prefix(),
        "guarded",
        &[NS],
        &[],
        &[("SWITCHBOARD_SIDECAR_TOKEN", TOKEN)],
    )
    .await?;
    let (v1, _) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    sidecar.wait_ready(DEADLINE).await?;
    let http = reqwest::Client::new();
    let item = format!("{}/v1/ns/{NS}/items/schema_version", sidecar.http_url());
    let refused = http.get(&item).send().await?;
    assert_eq!(refused.status().as_u16(), 401);
    let body: serde_json::Value = refused.json().await?;
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("bearer token")),
        "{body}"
    );
    let wrong = http.get(&item).bearer_auth("not-it").send().await?;
    assert_eq!(wrong.status().as_u16(), 401);
    let answer = http.get(&item).bearer_auth(TOKEN).send().await?;
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(
        answer
            .headers()
            .get("x-switchboard-version")
            .and_then(|v| v.to_str().ok()),
        Some(v1.as_str())
    );
    for open in ["/healthz", "/readyz", "/metrics"] {
        let url = format!("{}{open}", sidecar.http_url());
        assert_eq!(
            http.get(&url).send().await?.status().as_u16(),
            200,
            "{open}"
        );
    }
    let status = format!("{}/v1/status", sidecar.http_url());
    assert_eq!(http.get(&status).send().await?.status().as_u16(), 401);

    let mut reader = ReaderClient::connect(sidecar.grpc_url()).await?;
    let get = || pb::GetRequest {
        namespace: NS.into(),
        key: "schema_version".into(),
        consumer: "app-1".into(),
        ..Default::default()
    };
    let refused = reader
        .get(get())
        .await
        .err()
        .context("a gRPC read without the token")?;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut request = tonic::Request::new(get());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    let answer = reader.get(request).await?.into_inner();
    assert_eq!(answer.served.context("served")?.version, v1);

    // The harness's own line shows the environment it started the sidecar with; the
    // sidecar's lines must not show the token.
    let log = sidecar.log_tail(100_000);
    let own: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("===== harness"))
        .collect();
    assert!(!own.is_empty());
    assert!(
        own.iter().all(|l| !l.contains(TOKEN)),
        "the token in the log:\n{log}"
    );
    Ok(())
}

/// Each new version draws a new canary population (the design's invariant 4, end to end: the
/// coordinator seeds each staged version from its checksum, routing carries the seed, the
/// sidecar draws with it): the consumers a 20% canary of v2 takes first are mostly not the ones
/// a 20% canary of v3 takes first, while within v2 raising the canary keeps everyone it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_sends_its_own_consumers_to_the_canary_first() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let dir = tempfile::tempdir()?;
    let set = |generation: &str| -> Result<String> {
        Ok(write_set(dir.path(), generation, 5, 10)?
            .display()
            .to_string())
    };
    sbctl
        .run(&["policy", "set", NS, "--bake", "0"])
        .await?
        .ensure_success()?;
    stage_and_flip(&env, NS, &set("d1")?).await?;
    let consumers: Vec<String> = (0..300).map(|n| format!("consumer-{n}")).collect();
    // The consumers a canary of `percent` sends to `version`.
    let canary_of = async |version: &str, percent: &str| -> Result<Vec<String>> {
        sbctl
            .run(&["canary", NS, percent])
            .await?
            .ensure_success()?;
        sidecar
            .wait_for_epoch(NS, epoch(&sbctl, NS).await?, DEADLINE)
            .await?;
        let mut on_canary = Vec::new();
        for consumer in &consumers {
            let answer = sidecar.get_item(NS, "items/k00001", Some(consumer)).await?;
            if answer.version.as_deref() == Some(version) {
                on_canary.push(consumer.clone());
            }
        }
        Ok(on_canary)
    };

    let v2 = stage(&sbctl, NS, &set("d2")?).await?;
    let first_on_v2 = canary_of(&v2, "20").await?;
    let more_on_v2 = canary_of(&v2, "40").await?;
    anyhow::ensure!(
        first_on_v2.iter().all(|c| more_on_v2.contains(c)),
        "raising v2's canary moved consumers off it"
    );
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let v3 = stage(&sbctl, NS, &set("d3")?).await?;
    let first_on_v3 = canary_of(&v3, "20").await?;
    let in_both = first_on_v2
        .iter()
        .filter(|c| first_on_v3.contains(c))
        .count();
    // Independent draws of 20% share about a fifth; one population for every version would
    // share all of them.
    anyhow::ensure!(
        !first_on_v2.is_empty() && in_both * 2 < first_on_v2.len(),
        "{in_both} of the {} consumers first on v2 were first on v3 too",
        first_on_v2.len()
    );
    Ok(())
}

/// A health publisher whose lease etcd has forgotten (it expired while an attempt failed, as
/// under a fleet's start when etcd answers late) takes a new lease and writes its record; one
/// that kept asking etcd to keep the dead lease alive would never be seen again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_publisher_whose_lease_etcd_forgot_takes_a_new_one() -> Result<()> {
    use std::sync::Arc;

    use switchboard_proto::Keys;
    use switchboard_sidecar::health::HealthPublisher;
    use switchboard_sidecar::namespace::Namespace;
    use tokio_util::sync::CancellationToken;

    let etcd = switchboard_tests::EtcdServer::start().await?;
    let mut client = switchboard_tests::etcd::connect(&[etcd.endpoint()]).await?;
    let keys = Keys::new(&switchboard_tests::unique_prefix());
    let forgotten = client.lease_grant(10, None).await?.id();
    client.lease_revoke(forgotten).await?;

    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let publisher = HealthPublisher {
        client: client.clone(),
        keys: keys.clone(),
        id: "sidecar-1".into(),
        namespaces: vec![Namespace::new(NS)],
        started_at_ms: switchboard_proto::time::now_ms(),
        dirty: Arc::new(tokio::sync::Notify::new()),
        lease_ttl_seconds: switchboard_sidecar::health::LEASE_TTL_SECONDS,
    };
    tokio::spawn(publisher.run_from_lease(Some(forgotten), stop.clone()));
    let key = keys.health(NS, "sidecar-1");
    wait_until(
        DEADLINE,
        "the health record under a new lease",
        async || {
            let response = client.get(key.as_str(), None).await?;
            Ok(response
                .kvs()
                .first()
                .is_some_and(|kv| kv.lease() != 0 && kv.lease() != forgotten))
        },
    )
    .await
}

//! The `stage` scenario: a large set staged through sbctl and the coordinator, beside raw etcd
//! puts of the same chunk bytes (and of the items one key each) in the same run; the bytes
//! uploaded again after 1% of the items change, scattered and clustered; a sidecar's cold load
//! of the set and its memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use etcd_client::GetOptions;
use serde::{Deserialize, Serialize};
use switchboard_proto::{Keys, SealTimings};
use switchboard_tests::TestEnv;
use tokio::sync::Semaphore;

use crate::catalog::{self, ChangePattern};
use crate::stats;

pub const NAMESPACE: &str = "bench";
/// The namespace where the same set is staged under a contract: a strict schema for every
/// table and the example Rego rules.
pub const CONTRACT_NAMESPACE: &str = "bench-contract";
/// The namespace where the same set is staged under the schema alone: what validation and
/// classification cost without rules.
pub const SCHEMA_NAMESPACE: &str = "bench-schema";

#[derive(Clone, Debug)]
pub struct StageConfig {
    pub items: usize,
    pub change_percent: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageReport {
    pub items: usize,
    pub json_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// `sbctl stage` from start to exit: reading, validating, chunking, uploading, sealing.
    pub stage_seconds: f64,
    /// `sbctl plan` of the same set before anything is staged: the client's share of staging
    /// (reading, validating, canonicalising, chunking, hashing), without the upload.
    pub prepare_seconds: f64,
    /// The same chunk bytes put into etcd directly, 8 requests in flight.
    pub raw_chunk_put_seconds: f64,
    /// The same bytes packed into values of 64 KB, 8 requests in flight: etcd's best case for
    /// these bytes, whatever keys a store would give them.
    #[serde(default)]
    pub raw_packed_put_seconds: f64,
    /// Every item as its own key, 64 requests in flight: what a store without chunks does.
    pub raw_item_put_seconds: f64,
    pub restage: Vec<Restage>,
    /// From the sidecar's start to its readiness with the set loaded.
    pub cold_load_seconds: f64,
    pub sidecar_rss_bytes: u64,
    /// Where the first stage's seal spent its time (no contract: reading and verifying).
    #[serde(default)]
    pub seal: Option<SealTimings>,
    /// The same stages in a namespace with a contract.
    #[serde(default)]
    pub contract: Option<ContractStage>,
}

/// The set staged into a namespace whose contract holds a strict schema for every table and
/// the example rules: first the whole set (every item validated, the rules over all of it),
/// then the scattered 1% change (the rules over the changed items only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContractStage {
    /// Under the schema alone.
    #[serde(default)]
    pub schema_stage_seconds: f64,
    #[serde(default)]
    pub schema_seal: SealTimings,
    /// Under the schema and the rules.
    pub stage_seconds: f64,
    pub seal: SealTimings,
    pub restage_seconds: f64,
    pub restage_seal: SealTimings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Restage {
    pub pattern: ChangePattern,
    pub percent_items_changed: f64,
    pub seconds: f64,
    pub chunks_uploaded: u64,
    pub chunks_total: u64,
    /// Chunk bytes uploaded, and the bytes of all the set's chunks.
    pub bytes_uploaded: u64,
    pub bytes_total: u64,
    /// The manifest's share of the upload: its head, sent with each request, and the pages of
    /// its chunk list that etcd lacked.
    #[serde(default)]
    pub manifest_bytes_uploaded: u64,
    #[serde(default)]
    pub pages_uploaded: u64,
    #[serde(default)]
    pub pages_total: u64,
}

impl Restage {
    /// Everything this re-stage sent, chunks and manifest, as a share of the set's chunk bytes.
    pub fn percent_uploaded(&self) -> f64 {
        stats::percent(
            (self.bytes_uploaded + self.manifest_bytes_uploaded) as f64,
            self.bytes_total as f64,
        )
    }
}

impl StageReport {
    pub fn stage_mb_per_s(&self) -> f64 {
        self.chunk_bytes as f64 / 1e6 / self.stage_seconds
    }

    pub fn raw_chunk_mb_per_s(&self) -> f64 {
        self.chunk_bytes as f64 / 1e6 / self.raw_chunk_put_seconds
    }

    pub fn raw_packed_mb_per_s(&self) -> f64 {
        self.chunk_bytes as f64 / 1e6 / self.raw_packed_put_seconds
    }
}

/// The value size of the packed baseline.
const PACKED_VALUE_BYTES: usize = 64 * 1024;

pub async fn run(config: &StageConfig, work: &std::path::Path) -> Result<StageReport> {
    let env = TestEnv::start(&[NAMESPACE]).await?;
    let contract_dir = work.join("stage-contract");
    catalog::write_contract(&contract_dir, true)?;
    let schema_dir = work.join("stage-schema");
    catalog::write_contract(&schema_dir, false)?;
    let sbctl = env.sbctl().timeout(Duration::from_secs(600));
    eprintln!("stage: generating {} items", config.items);
    let v1 = work.join("stage-v1.json");
    let json_bytes = catalog::write(&v1, config.items, None)?;
    let mut variants = Vec::new();
    for (pattern, seed) in [
        (ChangePattern::Scattered, 11),
        (ChangePattern::Clustered, 12),
    ] {
        let path = work.join(format!("stage-{pattern:?}.json").to_lowercase());
        let changed = catalog::changed_items(config.items, config.change_percent, pattern, seed);
        catalog::write(&path, config.items, Some(&changed))?;
        variants.push((pattern, path));
    }

    eprintln!("stage: planning {} MB of JSON", json_bytes / 1_000_000);
    let started = Instant::now();
    sbctl
        .run(&["plan", NAMESPACE, &v1.display().to_string()])
        .await?
        .ensure_success()?;
    let prepare_seconds = started.elapsed().as_secs_f64();
    eprintln!("stage: staging {} MB of JSON", json_bytes / 1_000_000);
    let started = Instant::now();
    let first = catalog::stage(&sbctl, NAMESPACE, &v1, "stage benchmark").await?;
    let stage_seconds = started.elapsed().as_secs_f64();
    let chunks = field(&first, "chunks_total")?;
    let chunk_bytes = field(&first, "chunk_bytes_total")?;
    let seal = seal_timings(&first).ok();
    sbctl.run(&["flip", NAMESPACE]).await?.ensure_success()?;

    // The same set under a contract, right after the stage without one, so that all three
    // find etcd in nearly the same state; each namespace has its own chunks.
    for (namespace, dir) in [
        (SCHEMA_NAMESPACE, &schema_dir),
        (CONTRACT_NAMESPACE, &contract_dir),
    ] {
        sbctl
            .run(&[
                "contract",
                "set",
                namespace,
                &dir.display().to_string(),
                "-m",
                "stage benchmark contract",
            ])
            .await?
            .ensure_success()?;
    }
    eprintln!("stage: staging the same set under the schema alone");
    let started = Instant::now();
    let under_schema = catalog::stage(&sbctl, SCHEMA_NAMESPACE, &v1, "stage benchmark").await?;
    let schema_stage_seconds = started.elapsed().as_secs_f64();
    let schema_seal = seal_timings(&under_schema)?;
    eprintln!("stage: staging the same set under the schema and the example rules");
    let started = Instant::now();
    let under_contract = catalog::stage(&sbctl, CONTRACT_NAMESPACE, &v1, "stage benchmark").await?;
    let contract_stage_seconds = started.elapsed().as_secs_f64();
    let contract_seal = seal_timings(&under_contract)?;
    sbctl
        .run(&["flip", CONTRACT_NAMESPACE])
        .await?
        .ensure_success()?;

    eprintln!("stage: raw etcd puts of the same chunks");
    let (raw_chunk_put_seconds, raw_packed_put_seconds) = raw_chunk_puts(&env).await?;
    eprintln!("stage: raw etcd puts of the items, one key each");
    let raw_item_put_seconds = raw_item_puts(&env, config.items).await?;

    eprintln!("stage: sidecar cold load");
    let started = Instant::now();
    let sidecar = env.start_sidecar("bench-stage").await?;
    sidecar.wait_ready(Duration::from_secs(120)).await?;
    let cold_load_seconds = started.elapsed().as_secs_f64();
    let sidecar_rss_bytes = rss_bytes(sidecar.pid())?;

    let mut restage = Vec::new();
    for (pattern, path) in variants {
        eprintln!("stage: re-staging after a {pattern:?} change");
        let started = Instant::now();
        let report = catalog::stage(&sbctl, NAMESPACE, &path, "restage").await?;
        restage.push(Restage {
            pattern,
            percent_items_changed: config.change_percent,
            seconds: started.elapsed().as_secs_f64(),
            chunks_uploaded: field(&report, "chunks_uploaded")?,
            chunks_total: field(&report, "chunks_total")?,
            bytes_uploaded: field(&report, "chunk_bytes_uploaded")?,
            bytes_total: field(&report, "chunk_bytes_total")?,
            manifest_bytes_uploaded: field(&report, "manifest_bytes_uploaded")?,
            pages_uploaded: field(&report, "pages_uploaded")?,
            pages_total: field(&report, "pages_total")?,
        });
    }
    drop(sidecar);

    eprintln!("stage: re-staging the scattered change under the contract");
    let scattered = work.join(format!("stage-{:?}.json", ChangePattern::Scattered).to_lowercase());
    let started = Instant::now();
    let restaged = catalog::stage(&sbctl, CONTRACT_NAMESPACE, &scattered, "restage").await?;
    let contract = ContractStage {
        schema_stage_seconds,
        schema_seal,
        stage_seconds: contract_stage_seconds,
        seal: contract_seal,
        restage_seconds: started.elapsed().as_secs_f64(),
        restage_seal: seal_timings(&restaged)?,
    };
    Ok(StageReport {
        items: config.items,
        json_bytes,
        chunks,
        chunk_bytes,
        stage_seconds,
        prepare_seconds,
        raw_chunk_put_seconds,
        raw_packed_put_seconds,
        raw_item_put_seconds,
        restage,
        cold_load_seconds,
        sidecar_rss_bytes,
        seal,
        contract: Some(contract),
    })
}

fn seal_timings(report: &serde_json::Value) -> Result<SealTimings> {
    serde_json::from_value(report["seal_timings"].clone())
        .with_context(|| format!("sbctl stage --json gave no seal_timings: {report}"))
}

fn field(report: &serde_json::Value, name: &str) -> Result<u64> {
    report[name]
        .as_u64()
        .with_context(|| format!("sbctl stage --json gave no {name}: {report}"))
}

/// Copies every chunk of the namespace (only the first set's exist yet) to other keys with
/// plain puts, and times the puts alone; then the same bytes packed into values of 64 KB.
async fn raw_chunk_puts(env: &TestEnv) -> Result<(f64, f64)> {
    let keys = Keys::new(env.prefix());
    let prefix = keys.chunk(NAMESPACE, "");
    let mut client = env.etcd_client().await?;
    // Read in pages: the whole set is far over gRPC's 4 MiB message limit.
    let mut values: Vec<Vec<u8>> = Vec::new();
    let mut from = prefix.clone().into_bytes();
    let mut end = prefix.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    loop {
        let options = GetOptions::new().with_range(end.clone()).with_limit(32);
        let response = client.get(from.clone(), Some(options)).await?;
        let Some(last) = response.kvs().last() else {
            break;
        };
        from = last.key().to_vec();
        from.push(0);
        values.extend(response.kvs().iter().map(|kv| kv.value().to_vec()));
        if !response.more() {
            break;
        }
    }
    if values.is_empty() {
        bail!("no chunks under {prefix}");
    }
    let mut packed: Vec<Vec<u8>> = vec![Vec::new()];
    for value in &values {
        if packed.last().is_some_and(|p| p.len() >= PACKED_VALUE_BYTES) {
            packed.push(Vec::new());
        }
        if let Some(last) = packed.last_mut() {
            last.extend_from_slice(value);
        }
    }
    let target = format!("{}/bench-raw-chunks/", env.prefix());
    let chunks = timed_puts(
        &client,
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("{target}{i:08}"), v))
            .collect(),
        8,
    )
    .await?;
    let target = format!("{}/bench-raw-packed/", env.prefix());
    let packed = timed_puts(
        &client,
        packed
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("{target}{i:08}"), v))
            .collect(),
        8,
    )
    .await?;
    Ok((chunks, packed))
}

async fn raw_item_puts(env: &TestEnv, items: usize) -> Result<f64> {
    let client = env.etcd_client().await?;
    let target = format!("{}/bench-raw-items/", env.prefix());
    let puts = (0..items)
        .map(|i| {
            let value = serde_json::to_vec(&catalog::value(i, 1)).unwrap_or_default();
            (format!("{target}{}", catalog::key(i)), value)
        })
        .collect();
    timed_puts(&client, puts, 64).await
}

async fn timed_puts(
    client: &etcd_client::Client,
    puts: Vec<(String, Vec<u8>)>,
    in_flight: usize,
) -> Result<f64> {
    let permits = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (key, value) in puts {
        let permit = permits.clone().acquire_owned().await?;
        let mut client = client.kv_client();
        tasks.spawn(async move {
            let result = client.put(key, value, None).await;
            drop(permit);
            result
        });
        while let Some(done) = tasks.try_join_next() {
            done.context("a put task panicked")??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a put task panicked")??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A process's resident memory, from /proc.
pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kb * 1024)
}

pub fn render(report: &StageReport) -> String {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let mut out = format!(
        "stage: {} items, {:.1} MB of JSON, {} chunks of {:.1} MB\n\n\
         | measure | value |\n|---|---:|\n\
         | sbctl stage (read, validate, chunk, upload, seal) | {:.2} s, {:.1} MB/s |\n\
         | of which preparing the set in sbctl (sbctl plan: read, validate, chunk, hash) | {:.2} s |\n\
         | of which uploading and sealing (the rest) | {:.2} s, {:.1} MB/s |\n\
         | raw etcd puts of the same chunks, one key each (8 in flight) | {:.2} s, {:.1} MB/s |\n\
         | staging throughput vs raw puts of the same chunks | {:.0}% |\n\
         | raw etcd puts of the same bytes in 64 KB values (8 in flight) | {:.2} s, {:.1} MB/s |\n\
         | staging throughput vs raw puts of 64 KB values | {:.0}% |\n\
         | raw etcd puts of the items, one key each (64 in flight) | {:.2} s, {:.1} MB/s |\n\
         | sidecar cold load (start to ready) | {:.2} s |\n\
         | sidecar RSS with the set loaded | {:.1} MB ({:.2}x the chunk bytes) |\n",
        report.items,
        mb(report.json_bytes),
        report.chunks,
        mb(report.chunk_bytes),
        report.stage_seconds,
        report.stage_mb_per_s(),
        report.prepare_seconds,
        report.stage_seconds - report.prepare_seconds,
        mb(report.chunk_bytes) / (report.stage_seconds - report.prepare_seconds).max(1e-3),
        report.raw_chunk_put_seconds,
        report.raw_chunk_mb_per_s(),
        stats::percent(report.stage_mb_per_s(), report.raw_chunk_mb_per_s()),
        report.raw_packed_put_seconds,
        report.raw_packed_mb_per_s(),
        stats::percent(report.stage_mb_per_s(), report.raw_packed_mb_per_s()),
        report.raw_item_put_seconds,
        mb(report.chunk_bytes) / report.raw_item_put_seconds,
        report.cold_load_seconds,
        mb(report.sidecar_rss_bytes),
        report.sidecar_rss_bytes as f64 / report.chunk_bytes.max(1) as f64,
    );
    for restage in &report.restage {
        out.push_str(&format!(
            "| re-stage after {}% of items changed, {:?} | {} of {} chunks and {} of {} manifest pages; {:.2} MB of chunks and {:.2} MB of manifest, of {:.1} MB ({:.1}% of the bytes); {:.2} s |\n",
            restage.percent_items_changed,
            restage.pattern,
            restage.chunks_uploaded,
            restage.chunks_total,
            restage.pages_uploaded,
            restage.pages_total,
            mb(restage.bytes_uploaded),
            mb(restage.manifest_bytes_uploaded),
            mb(restage.bytes_total),
            restage.percent_uploaded(),
            restage.seconds,
        ));
    }
    if let Some(seal) = &report.seal {
        out.push_str(&format!(
            "| the first stage's seal, no contract: reading back and verifying every chunk | {:.2} s |\n",
            seal.judge_ms / 1000.0
        ));
    }
    if let Some(contract) = &report.contract {
        let seal = &contract.seal;
        out.push_str(&format!(
            "| sbctl stage under a schema for every table, no rules | {:.2} s, {:+.0}% against {:.2} s without (the seal's validation and classification {:.2} s) |\n",
            contract.schema_stage_seconds,
            stats::percent(
                contract.schema_stage_seconds - report.stage_seconds,
                report.stage_seconds
            ),
            report.stage_seconds,
            contract.schema_seal.check_ms / 1000.0,
        ));
        out.push_str(&format!(
            "| sbctl stage under a contract (schema for every table, 3 example rules) | {:.2} s, {:+.0}% against {:.2} s without |\n\
             | of which the seal's schema validation and classification | {:.2} s ({:.1}% of staging without a contract) |\n\
             | of which waiting for the example rules over all {} items after the read | {:.2} s (evaluation {:.2} s, the input parsed while the set was read) |\n\
             | re-stage of the scattered 1% change under the contract | {:.2} s ({:.2} s checks, {:.2} s rules over the changed items) |\n",
            contract.stage_seconds,
            stats::percent(contract.stage_seconds - report.stage_seconds, report.stage_seconds),
            report.stage_seconds,
            seal.check_ms / 1000.0,
            stats::percent(seal.check_ms / 1000.0, report.stage_seconds),
            report.items,
            seal.rules_ms / 1000.0,
            seal.rules_evaluate_ms / 1000.0,
            contract.restage_seconds,
            contract.restage_seal.check_ms / 1000.0,
            contract.restage_seal.rules_ms / 1000.0,
        ));
    }
    out
}

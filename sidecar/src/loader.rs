//! Loads a set from etcd by its manifest hash and verifies it before anyone may see it.
//!
//! Manifest heads, pages and chunks are content-addressed and never change once written, so they need no
//! revision pinning: what routing names at revision R is exactly what is read here.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp, TxnOpResponse};
use futures::StreamExt;
use switchboard_proto::set::{SetVerifier, read_batches};
use switchboard_proto::{ContractError, Keys, Manifest, ManifestHead, Page};

use crate::snapshot::LoadedSet;

/// Chunk read batches in flight at once.
const READS_IN_FLIGHT: usize = 3;

/// How long one etcd request may take.
pub const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {ETCD_REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("{key} is missing from etcd")]
    Missing { key: String },
    #[error("{key} does not verify: {reason}")]
    Invalid { key: String, reason: String },
}

pub async fn with_timeout<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, LoadError> {
    match tokio::time::timeout(ETCD_REQUEST_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LoadError::Timeout),
    }
}

/// Reads the manifest named `manifest_hash` and every chunk it lists, and verifies item count,
/// bytes and checksum.
pub async fn load_set(
    client: &Client,
    keys: &Keys,
    ns: &str,
    manifest_hash: &str,
) -> Result<LoadedSet, LoadError> {
    let mut client = client.clone();
    let manifest_key = keys.manifest(ns, manifest_hash);
    let response = with_timeout(client.get(manifest_key.as_str(), None)).await?;
    let raw = response
        .kvs()
        .first()
        .map(|kv| kv.value().to_vec())
        .ok_or_else(|| LoadError::Missing {
            key: manifest_key.clone(),
        })?;
    let invalid = |reason: String| LoadError::Invalid {
        key: manifest_key.clone(),
        reason,
    };
    let head = ManifestHead::from_json(&raw).map_err(|e| invalid(e.to_string()))?;
    if head.hash() != manifest_hash {
        return Err(invalid("content does not match its hash".into()));
    }
    let manifest = read_pages(&mut client, keys, ns, &head)
        .await?
        .map_err(|e| invalid(e.to_string()))?;

    let mut verifier = SetVerifier::new(&manifest);
    let chunks = &manifest.chunks;
    let sizes: Vec<u64> = chunks.iter().map(|c| c.stored_len()).collect();
    // A few batches in flight at once, handed over in order: etcd answers a batch of small
    // chunks in about the time it takes to verify one, so reading ahead halves the wait.
    let mut batches = futures::stream::iter(read_batches(&sizes).into_iter().map(|range| {
        let batch = &chunks[range];
        let reads: Vec<TxnOp> = batch
            .iter()
            .map(|c| TxnOp::get(keys.chunk(ns, &c.hash), None))
            .collect();
        let mut client = client.clone();
        async move {
            (
                batch,
                with_timeout(client.txn(Txn::new().and_then(reads))).await,
            )
        }
    }))
    .buffered(READS_IN_FLIGHT);
    while let Some((batch, response)) = batches.next().await {
        let response = response?;
        for (chunk, op) in batch.iter().zip(response.op_responses()) {
            let key = keys.chunk(ns, &chunk.hash);
            let data = match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            }
            .ok_or_else(|| LoadError::Missing { key: key.clone() })?;
            verifier.add_chunk(&data).map_err(|e| LoadError::Invalid {
                key,
                reason: e.to_string(),
            })?;
        }
    }
    let items = verifier.finish().map_err(|e| invalid(e.to_string()))?;
    Ok(LoadedSet {
        manifest_hash: manifest_hash.to_string(),
        version: manifest.version,
        checksum: manifest.checksum,
        items,
    })
}

/// Reads the pages of a manifest head and assembles the manifest; the inner error is a page
/// that does not verify against the head.
async fn read_pages(
    client: &mut Client,
    keys: &Keys,
    ns: &str,
    head: &ManifestHead,
) -> Result<Result<Manifest, ContractError>, LoadError> {
    let sizes: Vec<u64> = head
        .pages
        .iter()
        .map(|p| Page::stored_len(p.chunks))
        .collect();
    let mut pages = Vec::with_capacity(sizes.len());
    for range in read_batches(&sizes) {
        let batch = &head.pages[range];
        let reads: Vec<TxnOp> = batch
            .iter()
            .map(|p| TxnOp::get(keys.page(ns, &p.hash), None))
            .collect();
        let response = with_timeout(client.txn(Txn::new().and_then(reads))).await?;
        for (page, op) in batch.iter().zip(response.op_responses()) {
            let data = match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            }
            .ok_or_else(|| LoadError::Missing {
                key: keys.page(ns, &page.hash),
            })?;
            pages.push(data);
        }
    }
    Ok(head.assemble(pages.iter().map(Vec::as_slice)))
}

/// Keeps loaded sets by manifest hash, so that a routing change that only moves the canary
/// weight reuses what is already in memory.
#[derive(Default)]
pub struct SetCache {
    sets: std::collections::HashMap<String, Arc<LoadedSet>>,
}

impl SetCache {
    pub async fn get_or_load(
        &mut self,
        client: &Client,
        keys: &Keys,
        ns: &str,
        manifest_hash: &str,
    ) -> Result<Arc<LoadedSet>, LoadError> {
        if let Some(set) = self.sets.get(manifest_hash) {
            return Ok(set.clone());
        }
        let started = std::time::Instant::now();
        let set = Arc::new(load_set(client, keys, ns, manifest_hash).await?);
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(ns, version = %set.version, items = set.items.len(), bytes = set.items.bytes(), seconds, "set loaded and verified");
        metrics::histogram!(crate::telemetry::SET_LOAD_SECONDS).record(seconds);
        self.sets.insert(manifest_hash.to_string(), set.clone());
        Ok(set)
    }

    /// The set with this manifest hash, if it is held.
    pub fn get(&self, manifest_hash: &str) -> Option<Arc<LoadedSet>> {
        self.sets.get(manifest_hash).cloned()
    }

    /// Drops every set not in `keep`, so that memory holds only what is served or kept hot for
    /// a flip back.
    pub fn retain(&mut self, keep: &[&str]) {
        self.sets.retain(|hash, _| keep.contains(&hash.as_str()));
    }

    /// Puts a set in as if it had been loaded, so that tests need no etcd.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, set: Arc<LoadedSet>) {
        self.sets.insert(set.manifest_hash.clone(), set);
    }

    #[cfg(test)]
    pub(crate) fn holds(&self, manifest_hash: &str) -> bool {
        self.sets.contains_key(manifest_hash)
    }
}

//! Loads a set from etcd by its manifest hash and verifies it before anyone may see it.
//!
//! Manifest heads, pages and chunks are content-addressed and never change once written, so they need no
//! revision pinning: what routing names at revision R is exactly what is read here.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Txn, TxnResponse};
use futures::StreamExt;
use switchboard_proto::set::SetVerifier;
use switchboard_proto::{ContractError, Keys, Manifest, ManifestHead, Page};
use switchboard_runtime::get_in_batches;

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
    let manifest = read_pages(&client, keys, ns, &head)
        .await?
        .map_err(|e| invalid(e.to_string()))?;

    let mut verifier = SetVerifier::new(&manifest);
    let chunks = &manifest.chunks;
    let chunk_keys: Vec<String> = chunks.iter().map(|c| keys.chunk(ns, &c.hash)).collect();
    let sizes: Vec<u64> = chunks.iter().map(|c| c.stored_len()).collect();
    // A few batches in flight at once, handed over in order: etcd answers a batch of small
    // chunks in about the time it takes to verify one, so reading ahead halves the wait.
    let mut batches = get_in_batches(&chunk_keys, &sizes, READS_IN_FLIGHT, |txn| {
        txn_of(&client, txn)
    });
    while let Some((range, values)) = batches.next().await.transpose()? {
        for (key, data) in chunk_keys[range].iter().zip(values) {
            let data = data.ok_or_else(|| LoadError::Missing { key: key.clone() })?;
            verifier.add_chunk(&data).map_err(|e| LoadError::Invalid {
                key: key.clone(),
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
    client: &Client,
    keys: &Keys,
    ns: &str,
    head: &ManifestHead,
) -> Result<Result<Manifest, ContractError>, LoadError> {
    let page_keys: Vec<String> = head.pages.iter().map(|p| keys.page(ns, &p.hash)).collect();
    let sizes: Vec<u64> = head
        .pages
        .iter()
        .map(|p| Page::stored_len(p.chunks))
        .collect();
    let mut pages = Vec::with_capacity(page_keys.len());
    let mut batches = get_in_batches(&page_keys, &sizes, READS_IN_FLIGHT, |txn| {
        txn_of(client, txn)
    });
    while let Some((range, values)) = batches.next().await.transpose()? {
        for (key, data) in page_keys[range].iter().zip(values) {
            pages.push(data.ok_or_else(|| LoadError::Missing { key: key.clone() })?);
        }
    }
    Ok(head.assemble(pages.iter().map(Vec::as_slice)))
}

/// One transaction on `client`, under the request timeout.
async fn txn_of(client: &Client, txn: Txn) -> Result<TxnResponse, LoadError> {
    with_timeout(client.clone().txn(txn)).await
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

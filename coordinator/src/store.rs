//! Typed access to one namespace's records in etcd: reads at one revision, the transactions
//! that change them, and chunk transfer in batches that respect etcd's request limits.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchStream,
};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use switchboard_proto::{
    Approval, AuditHead, HealthRecord, Keys, Manifest, ManifestHead, Page, PageRef, Policy,
    Rollout, Routing, Slot, SlotRef,
};
use switchboard_runtime::get_in_batches;

use crate::error::{CoordinatorError, Result};

/// Most operations one transaction may carry; etcd refuses more than 128.
pub const MAX_TXN_OPS: usize = 100;
/// Most chunk bytes one request may carry; etcd refuses requests over 1.5 MiB.
pub const MAX_TXN_BYTES: usize = 1024 * 1024 + 64 * 1024;
/// Read batches in flight at once (`for_each_chunk`, `read_pages`).
const READS_IN_FLIGHT: usize = 3;
/// Most keys one listing request returns (`keys_under`).
const KEYS_PER_READ: i64 = 10_000;
/// Most values one prefix read returns (`get_prefix`): records of a few KB at most.
const VALUES_PER_READ: i64 = 500;
/// Above this many chunk hashes, `missing_chunks` lists the namespace's chunks instead of
/// looking each one up.
const LOOKUPS_BEFORE_LISTING: usize = 1_000;
/// How long one etcd request may take before the caller gives up.
pub const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A record and the revision at which it was last written (0: absent).
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub value: Option<T>,
    pub mod_revision: i64,
}

impl<T> Versioned<T> {
    fn absent() -> Self {
        Self {
            value: None,
            mod_revision: 0,
        }
    }
}

/// Everything a routing or staging decision looks at, read at one etcd revision.
#[derive(Clone, Debug)]
pub struct NamespaceState {
    pub routing: Versioned<Routing>,
    pub slots: [Versioned<SlotRef>; 2],
    pub audit_head: Versioned<AuditHead>,
    pub policy: Versioned<Policy>,
    pub rollout: Versioned<Rollout>,
    /// Every approval given in the namespace, with its key. Approvals are written once and
    /// never changed, so a change that relies on one compares only that its key still exists.
    pub approvals: Vec<(String, Approval)>,
}

impl NamespaceState {
    pub fn slot(&self, slot: Slot) -> &Versioned<SlotRef> {
        &self.slots[slot.index()]
    }

    pub fn epoch(&self) -> u64 {
        self.routing.value.as_ref().map_or(0, |r| r.epoch)
    }

    /// The namespace's policy, or the defaults when none was set.
    pub fn policy(&self) -> Policy {
        self.policy.value.clone().unwrap_or_default()
    }

    /// The approval of `manifest` by someone other than `staged_by`, with its key.
    pub fn approval_of(&self, manifest: &str, staged_by: &str) -> Option<&(String, Approval)> {
        self.approvals
            .iter()
            .find(|(_, a)| a.manifest == manifest && a.approved_by != staged_by)
    }

    /// The rollout while it is running or paused.
    pub fn active_rollout(&self) -> Option<&Rollout> {
        self.rollout.value.as_ref().filter(|r| r.is_active())
    }
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
}

/// Runs an etcd request under `ETCD_REQUEST_TIMEOUT`, so that a cut-off etcd becomes an error
/// instead of a hung request.
pub async fn with_timeout<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(ETCD_REQUEST_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CoordinatorError::EtcdTimeout(ETCD_REQUEST_TIMEOUT)),
    }
}

impl Store {
    pub fn new(client: Client, keys: Keys) -> Self {
        Self { client, keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse> {
        let mut client = self.client.clone();
        with_timeout(client.txn(txn)).await
    }

    /// Reads routing, both slots and the audit head in one transaction, so that they are
    /// consistent with each other.
    pub async fn read_namespace(&self, ns: &str) -> Result<NamespaceState> {
        let keys = [
            self.keys.routing(ns),
            self.keys.slot(ns, Slot::Blue),
            self.keys.slot(ns, Slot::Green),
            self.keys.audit_head(ns),
            self.keys.policy(ns),
            self.keys.rollout(ns),
        ];
        let mut reads: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        reads.push(TxnOp::get(
            self.keys.approvals_prefix(ns),
            Some(GetOptions::new().with_prefix()),
        ));
        let response = self.txn(Txn::new().and_then(reads)).await?;
        let mut responses = response.op_responses().into_iter();
        let mut found: Vec<Option<etcd_client::KeyValue>> = responses
            .by_ref()
            .take(keys.len())
            .map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            })
            .collect();
        found.resize(keys.len(), None);
        let mut approvals = Vec::new();
        if let Some(TxnOpResponse::Get(get)) = responses.next() {
            for kv in get.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                // A bad approval counts for nothing, and must not block a rollback: it is
                // logged here and skipped.
                match parse_record::<Approval>(&key, kv.value()) {
                    Ok(approval) => approvals.push((key, approval)),
                    Err(error) => tracing::warn!(%error, "approval record skipped"),
                }
            }
        }
        let mut next = found.into_iter().zip(keys.iter());
        let mut take = || {
            next.next()
                .map(|(kv, key)| (kv, key.clone()))
                .unwrap_or((None, String::new()))
        };
        Ok(NamespaceState {
            routing: parse_versioned(take())?,
            slots: [parse_versioned(take())?, parse_versioned(take())?],
            audit_head: parse_versioned(take())?,
            policy: parse_versioned(take())?,
            rollout: parse_versioned(take())?,
            approvals,
        })
    }

    /// One record with its revision (0 when absent), for a change that compares it.
    pub async fn get_versioned<T: DeserializeOwned>(&self, key: &str) -> Result<Versioned<T>> {
        let mut client = self.client.clone();
        let response = with_timeout(client.get(key, None)).await?;
        parse_versioned((response.kvs().first().cloned(), key.to_string()))
    }

    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let mut client = self.client.clone();
        let response = with_timeout(client.get(key, None)).await?;
        match response.kvs().first() {
            Some(kv) => parse_record(key, kv.value()).map(Some),
            None => Ok(None),
        }
    }

    pub async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut client = self.client.clone();
        let response = with_timeout(client.get(key, None)).await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// All values under a prefix, in key order, as of one revision.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.get_prefix_in_pages(prefix, VALUES_PER_READ).await
    }

    /// `get_prefix`, reading at most `per_read` values per request.
    pub async fn get_prefix_in_pages(
        &self,
        prefix: &str,
        per_read: i64,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self.range_in_pages(prefix, per_read, false).await?.0)
    }

    /// The keys under a prefix, without their values, in key order.
    pub async fn keys_under(&self, prefix: &str) -> Result<Vec<String>> {
        self.keys_under_in_pages(prefix, KEYS_PER_READ).await
    }

    /// `keys_under`, reading at most `per_read` keys per request.
    pub async fn keys_under_in_pages(&self, prefix: &str, per_read: i64) -> Result<Vec<String>> {
        let (pairs, _) = self.range_in_pages(prefix, per_read, true).await?;
        Ok(pairs.into_iter().map(|(key, _)| key).collect())
    }

    /// The keys (and values, unless `keys_only`) under a prefix, at most `per_read` per
    /// request, every request at the revision of the first: one consistent answer, however
    /// large. One answer for all could pass gRPC's 4 MiB message limit: the keys of a large
    /// set's chunks alone (about 100 bytes each), a long audit trail, or the health records of
    /// 10,000 sidecars. Returns the pairs and the revision they were read at.
    async fn range_in_pages(
        &self,
        prefix: &str,
        per_read: i64,
        keys_only: bool,
    ) -> Result<(Vec<(String, Vec<u8>)>, i64)> {
        let mut client = self.client.clone();
        let mut end = prefix.as_bytes().to_vec();
        // The end of the prefix range: its last byte incremented ("a/" ends before "a0").
        if let Some(last) = end.last_mut() {
            *last = last.saturating_add(1);
        }
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut pairs = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(per_read)
                .with_revision(revision);
            if keys_only {
                options = options.with_keys_only();
            }
            let response = with_timeout(client.get(from.clone(), Some(options))).await?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            pairs.extend(response.kvs().iter().map(owned_pair));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((pairs, revision)),
            }
        }
    }

    /// The id of the coordinator replica currently elected leader, if any.
    pub async fn leader_name(&self) -> Option<String> {
        let mut client = self.client.clone();
        let response = with_timeout(client.leader(self.keys.leader())).await.ok()?;
        response
            .kv()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }

    /// The namespaces that were ever staged into.
    pub async fn namespaces(&self) -> Result<Vec<String>> {
        let prefix = self.keys.namespaces_prefix();
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix().with_keys_only();
        let response = with_timeout(client.get(prefix.as_str(), Some(options))).await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(kv.key())
                    .ok()?
                    .strip_prefix(&prefix)
                    .map(str::to_string)
            })
            .collect())
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether any key exists under `prefix`.
    pub async fn has_any(&self, prefix: &str) -> Result<bool> {
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix().with_count_only();
        Ok(with_timeout(client.get(prefix, Some(options)))
            .await?
            .count()
            > 0)
    }

    pub async fn health_records(&self, ns: &str) -> Result<Vec<HealthRecord>> {
        let raw = self.get_prefix(&self.keys.health_prefix(ns)).await?;
        Ok(parse_health_records(
            raw.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        ))
    }

    /// The values under `key` (or under the prefix `key`) now, kept current by a watch from
    /// the revision they were read at: for waits that would otherwise poll etcd.
    /// A prefix is read in pages (`range_in_pages`): the health records of 10,000 sidecars are
    /// about 5 MB, past what one gRPC answer may hold.
    pub async fn watch_records(&self, key: &str, prefix: bool) -> Result<WatchedRecords> {
        let mut client = self.client.clone();
        // A watch on a member cut off from the others may stay silent; the caller bounds its
        // wait with a deadline.
        let mut watch_options = WatchOptions::new();
        let (values, revision): (BTreeMap<String, Vec<u8>>, i64) = if prefix {
            watch_options = watch_options.with_prefix();
            let (pairs, revision) = self.range_in_pages(key, VALUES_PER_READ, false).await?;
            (pairs.into_iter().collect(), revision)
        } else {
            let response = with_timeout(client.get(key, None)).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            let values = response.kvs().iter().map(owned_pair).collect();
            (values, revision)
        };
        let stream =
            with_timeout(client.watch(key, Some(watch_options.with_start_revision(revision + 1))))
                .await?;
        Ok(WatchedRecords { values, stream })
    }

    /// Which of `hashes` have no chunk in etcd yet. Many hashes are looked up in the listing of
    /// the namespace's chunk keys, which is one range read per 10,000 keys instead of one
    /// lookup per hash; a few are looked up one by one.
    pub async fn missing_chunks(&self, ns: &str, hashes: &[String]) -> Result<Vec<String>> {
        if hashes.len() > LOOKUPS_BEFORE_LISTING {
            let prefix = self.keys.chunk(ns, "");
            let present: HashSet<String> = self
                .keys_under(&prefix)
                .await?
                .into_iter()
                .filter_map(|key| key.strip_prefix(&prefix).map(str::to_string))
                .collect();
            return Ok(hashes
                .iter()
                .filter(|h| !present.contains(*h))
                .cloned()
                .collect());
        }
        let mut missing = Vec::new();
        for batch in hashes.chunks(MAX_TXN_OPS) {
            let reads: Vec<TxnOp> = batch
                .iter()
                .map(|h| {
                    let options = GetOptions::new().with_count_only();
                    TxnOp::get(self.keys.chunk(ns, h), Some(options))
                })
                .collect();
            let response = self.txn(Txn::new().and_then(reads)).await?;
            for (hash, op) in batch.iter().zip(response.op_responses()) {
                if let TxnOpResponse::Get(get) = op
                    && get.count() == 0
                {
                    missing.push(hash.clone());
                }
            }
        }
        Ok(missing)
    }

    /// Writes chunks in as few requests as etcd's limits allow. Chunks are content-addressed,
    /// so writing one that exists already changes nothing but its revision.
    pub async fn put_chunks(&self, ns: &str, chunks: &[(String, Vec<u8>)]) -> Result<()> {
        self.put_content(chunks, |hash| self.keys.chunk(ns, hash))
            .await
    }

    /// Writes manifest pages, as `put_chunks` writes chunks.
    pub async fn put_pages(&self, ns: &str, pages: &[(String, Vec<u8>)]) -> Result<()> {
        self.put_content(pages, |hash| self.keys.page(ns, hash))
            .await
    }

    async fn put_content(
        &self,
        blobs: &[(String, Vec<u8>)],
        key: impl Fn(&str) -> String,
    ) -> Result<()> {
        let mut batch: Vec<TxnOp> = Vec::new();
        let mut batch_bytes = 0;
        for (hash, data) in blobs {
            if !batch.is_empty()
                && (batch.len() == MAX_TXN_OPS || batch_bytes + data.len() > MAX_TXN_BYTES)
            {
                self.txn(Txn::new().and_then(std::mem::take(&mut batch)))
                    .await?;
                batch_bytes = 0;
            }
            batch.push(TxnOp::put(key(hash), data.clone(), None));
            batch_bytes += data.len();
        }
        if !batch.is_empty() {
            self.txn(Txn::new().and_then(batch)).await?;
        }
        Ok(())
    }

    /// The manifest head stored under `hash`, checked against its name; `None` when absent.
    pub async fn read_head(&self, ns: &str, hash: &str) -> Result<Option<ManifestHead>> {
        let key = self.keys.manifest(ns, hash);
        let Some(raw) = self.get_raw(&key).await? else {
            return Ok(None);
        };
        let head = ManifestHead::from_json(&raw).map_err(|e| CoordinatorError::CorruptRecord {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        if head.hash() != hash {
            return Err(CoordinatorError::CorruptRecord {
                key,
                reason: "content does not match its hash".into(),
            });
        }
        Ok(Some(head))
    }

    /// The pages named, in the order given; `None` for each page etcd lacks.
    pub async fn read_pages(&self, ns: &str, pages: &[PageRef]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<String> = pages.iter().map(|p| self.keys.page(ns, &p.hash)).collect();
        let sizes: Vec<u64> = pages.iter().map(|p| Page::stored_len(p.chunks)).collect();
        let mut found = Vec::with_capacity(keys.len());
        let mut batches = get_in_batches(&keys, &sizes, READS_IN_FLIGHT, |txn| self.txn(txn));
        while let Some((_, values)) = batches.next().await.transpose()? {
            found.extend(values);
        }
        Ok(found)
    }

    /// The whole manifest named `hash`: its head and every page, verified against the name.
    /// `None` when there is no such manifest; a missing page is an error naming it.
    pub async fn read_manifest(&self, ns: &str, hash: &str) -> Result<Option<Manifest>> {
        let Some(head) = self.read_head(ns, hash).await? else {
            return Ok(None);
        };
        let pages = self.read_pages(ns, &head.pages).await?;
        self.assemble_manifest(ns, hash, &head, &pages).map(Some)
    }

    /// Builds the manifest from its head and pages read from etcd.
    pub fn assemble_manifest(
        &self,
        ns: &str,
        hash: &str,
        head: &ManifestHead,
        pages: &[Option<Vec<u8>>],
    ) -> Result<Manifest> {
        let mut data = Vec::with_capacity(pages.len());
        for (page_ref, page) in head.pages.iter().zip(pages) {
            let page = page.as_deref().ok_or_else(|| {
                CoordinatorError::Refused(format!(
                    "page {} of manifest {hash} in namespace {ns} is missing from etcd; run sbctl stage again to upload it",
                    page_ref.hash
                ))
            })?;
            data.push(page);
        }
        head.assemble(data)
            .map_err(|e| CoordinatorError::CorruptRecord {
                key: self.keys.manifest(ns, hash),
                reason: e.to_string(),
            })
    }

    /// Reads chunks in batches of bounded size; `sizes` are the expected byte counts from the
    /// manifest, used only to size the batches. Calls `each` in the order given. A missing
    /// chunk is an error naming it.
    pub async fn for_each_chunk(
        &self,
        ns: &str,
        hashes: &[(String, u64)],
        mut each: impl FnMut(&str, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let keys: Vec<String> = hashes.iter().map(|(h, _)| self.keys.chunk(ns, h)).collect();
        let sizes: Vec<u64> = hashes.iter().map(|(_, size)| *size).collect();
        // A few batches in flight at once, handed over in order: etcd answers a batch of small
        // chunks in about the time it takes to verify one, so reading ahead halves the wait.
        let mut batches = get_in_batches(&keys, &sizes, READS_IN_FLIGHT, |txn| self.txn(txn));
        while let Some((range, values)) = batches.next().await.transpose()? {
            for ((hash, _), data) in hashes[range].iter().zip(values) {
                let data = data.ok_or_else(|| {
                    CoordinatorError::Refused(format!(
                        "chunk {hash} of namespace {ns} is missing from etcd; run sbctl stage again to upload it"
                    ))
                })?;
                each(hash, &data)?;
            }
        }
        Ok(())
    }
}

/// Health records parsed from etcd's key-value pairs. A malformed one is a broken sidecar, not a
/// reason to fail the caller: it is logged and left out.
pub fn parse_health_records<'a>(
    raw: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Vec<HealthRecord> {
    raw.into_iter()
        .filter_map(|(key, value)| parse_health_record(key, value))
        .collect()
}

/// One health record; a malformed one is logged and `None`.
pub fn parse_health_record(key: &str, value: &[u8]) -> Option<HealthRecord> {
    serde_json::from_slice(value)
        .inspect_err(|error| tracing::warn!(%key, %error, "ignoring malformed health record"))
        .ok()
}

/// Records under a key or prefix as of the last change seen: see [`Store::watch_records`].
pub struct WatchedRecords {
    values: BTreeMap<String, Vec<u8>>,
    stream: WatchStream,
}

impl WatchedRecords {
    /// The keys and values as of the last change applied.
    pub fn values(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Waits for the next changes and applies them; returns the keys they put or deleted. A
    /// watch that etcd ends or cancels is an error: the caller cannot know what it missed.
    pub async fn changed(&mut self) -> Result<Vec<String>> {
        let message =
            self.stream.message().await?.ok_or_else(|| {
                CoordinatorError::Conflict("etcd ended a watch; try again".into())
            })?;
        if message.canceled() {
            return Err(CoordinatorError::Conflict(format!(
                "etcd cancelled a watch ({}); try again",
                message.cancel_reason()
            )));
        }
        let mut changed = Vec::with_capacity(message.events().len());
        for event in message.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match event.event_type() {
                EventType::Put => {
                    self.values.insert(key.clone(), kv.value().to_vec());
                }
                EventType::Delete => {
                    self.values.remove(&key);
                }
            }
            changed.push(key);
        }
        Ok(changed)
    }

    /// The value of `key` as of the last change applied.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }
}

/// A key and value as read, owned.
fn owned_pair(kv: &etcd_client::KeyValue) -> (String, Vec<u8>) {
    (
        String::from_utf8_lossy(kv.key()).into_owned(),
        kv.value().to_vec(),
    )
}

/// Compares that a key does not exist: records that must never be overwritten.
pub fn absent(key: String) -> Compare {
    Compare::version(key, CompareOp::Equal, 0)
}

/// Compares that a key is still at the revision it was read at (0: still absent).
pub fn unchanged(key: String, mod_revision: i64) -> Compare {
    Compare::mod_revision(key, CompareOp::Equal, mod_revision)
}

fn parse_versioned<T: DeserializeOwned>(
    (kv, key): (Option<etcd_client::KeyValue>, String),
) -> Result<Versioned<T>> {
    match kv {
        None => Ok(Versioned::absent()),
        Some(kv) => Ok(Versioned {
            value: Some(parse_record(&key, kv.value())?),
            mod_revision: kv.mod_revision(),
        }),
    }
}

pub fn parse_record<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| CoordinatorError::CorruptRecord {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

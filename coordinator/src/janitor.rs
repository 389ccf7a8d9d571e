//! The leader's housekeeping: collecting manifests and chunks that nothing needs any more, and
//! compacting etcd's old revisions, so that etcd's space goes to what serves.
//!
//! A manifest is kept while a slot or routing (active, canary, previous) names it, or while it
//! is among the newest `retain_versions` of the history (for `rollback --to` and `snapshot save
//! --version`). A page is kept while a kept manifest's head lists it, a chunk while a kept
//! manifest's pages list it, and an approval while its manifest is kept. When a page of a kept
//! manifest is missing (a stage writes its pages just after the slot names the manifest), the
//! chunks that page lists are unknown, so that round collects no chunk. Every delete is a transaction
//! that compares routing and both slot records with what the round read, and the leader's
//! fence: a stage that begins meanwhile (and may count on a chunk being present) makes the
//! round stop, and the next round sees it.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};
use switchboard_runtime::Every;

use etcd_client::{Compare, Txn, TxnOp};
use switchboard_proto::{HistoryEntry, Slot};
use tokio_util::sync::CancellationToken;

use crate::crash;
use crate::error::{CoordinatorError, Result};
use crate::release::Releases;
use crate::routing::Fence;
use crate::store::{MAX_TXN_OPS, parse_record, unchanged, with_timeout};
use crate::telemetry;

/// How the janitor works; the coordinator's `--gc-interval`, `--retain-versions` and
/// `--compact-after`.
#[derive(Clone, Copy, Debug)]
pub struct JanitorSettings {
    pub interval: Duration,
    /// Versions of the history kept besides those routing and the slots name.
    pub retain_versions: usize,
    /// Revisions older than this are compacted; a sidecar that was away longer reloads whole.
    pub compact_after: Duration,
}

impl Default for JanitorSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            retain_versions: 10,
            compact_after: Duration::from_secs(300),
        }
    }
}

/// What one collection of a namespace removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub manifests: usize,
    pub pages: usize,
    pub chunks: usize,
}

pub struct Janitor {
    releases: Releases,
    fence: Fence,
    settings: JanitorSettings,
    /// Revisions seen by earlier rounds, oldest first, to compact once they are old enough.
    revisions: VecDeque<(Instant, i64)>,
}

impl Janitor {
    pub fn new(releases: Releases, fence: Fence, settings: JanitorSettings) -> Self {
        Self {
            releases,
            fence,
            settings,
            revisions: VecDeque::new(),
        }
    }

    /// Runs a round every interval until `term` ends. Failures are logged here and retried
    /// next round.
    pub async fn run(mut self, term: CancellationToken) {
        let mut every = Every::new(self.settings.interval);
        while every.tick(&term).await {
            if let Err(error) = self.round(&term).await {
                tracing::warn!(%error, "housekeeping round failed; trying again next round");
            }
        }
    }

    async fn round(&mut self, term: &CancellationToken) -> Result<()> {
        let namespaces = self.releases.store().namespaces().await?;
        for ns in namespaces {
            if term.is_cancelled() {
                return Ok(());
            }
            match collect(
                &self.releases,
                &ns,
                self.settings.retain_versions,
                Some(&self.fence),
            )
            .await
            {
                Ok(collected) if collected != Collected::default() => {
                    tracing::info!(
                        ns,
                        manifests = collected.manifests,
                        pages = collected.pages,
                        chunks = collected.chunks,
                        "collected what nothing needs"
                    );
                }
                Ok(_) => {}
                // A stage or routing change began meanwhile; the next round sees it.
                Err(CoordinatorError::Conflict(reason)) => {
                    tracing::debug!(ns, reason, "collection stopped")
                }
                Err(error) => tracing::warn!(ns, %error, "collection failed"),
            }
        }
        self.compact().await
    }

    /// Compacts to the newest revision seen at least `compact_after` ago.
    async fn compact(&mut self) -> Result<()> {
        let store = self.releases.store();
        let mut client = store.client().clone();
        let response = with_timeout(client.get(store.keys().leader(), None)).await?;
        let now = Instant::now();
        if let Some(header) = response.header() {
            self.revisions.push_back((now, header.revision()));
        }
        let mut target = None;
        while let Some((seen, revision)) = self.revisions.front().copied() {
            if now.duration_since(seen) < self.settings.compact_after {
                break;
            }
            target = Some(revision);
            self.revisions.pop_front();
        }
        let Some(revision) = target else {
            return Ok(());
        };
        match with_timeout(client.compact(revision, None)).await {
            Ok(_) => {
                tracing::info!(revision, "compacted etcd's revisions");
                metrics::gauge!(telemetry::ETCD_COMPACTED_REVISION).set(revision as f64);
                Ok(())
            }
            // Another compaction (an operator's, or etcd's own) already went further.
            Err(CoordinatorError::Etcd(etcd_client::Error::GRpcStatus(status)))
                if status.message().contains("compacted") =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// Deletes the manifests and chunks of `ns` that nothing needs (see the module comment).
/// `fence` is the leader's; tests and tools may collect without one.
pub async fn collect(
    releases: &Releases,
    ns: &str,
    retain_versions: usize,
    fence: Option<&Fence>,
) -> Result<Collected> {
    let store = releases.store();
    let keys = store.keys();
    let state = store.read_namespace(ns).await?;
    let mut keep: HashSet<String> = HashSet::new();
    for slot in Slot::BOTH {
        if let Some(slot_ref) = &state.slot(slot).value {
            keep.insert(slot_ref.manifest.clone());
        }
    }
    if let Some(routing) = &state.routing.value {
        keep.insert(routing.active.manifest.clone());
        keep.extend(routing.canary.iter().map(|c| c.manifest.clone()));
        keep.extend(routing.previous.iter().map(|p| p.manifest.clone()));
    }
    let mut history: Vec<HistoryEntry> = Vec::new();
    for (key, value) in store.get_prefix(&keys.history_prefix(ns)).await? {
        history.push(parse_record(&key, &value)?);
    }
    history.sort_by_key(|h| std::cmp::Reverse(h.at_ms));
    keep.extend(
        history
            .iter()
            .take(retain_versions)
            .map(|h| h.manifest.clone()),
    );

    let manifests_prefix = keys.manifests_prefix(ns);
    let mut doomed: Vec<String> = Vec::new();
    let mut kept_pages: HashSet<String> = HashSet::new();
    let mut kept_chunks: HashSet<String> = HashSet::new();
    let mut chunks_unknown = false;
    // Keys first, then each kept manifest on its own: all of them in one answer could pass
    // gRPC's message limit.
    for key in store.keys_under(&manifests_prefix).await? {
        let hash = key.strip_prefix(&manifests_prefix).unwrap_or_default();
        if !keep.contains(hash) {
            doomed.push(key);
            continue;
        }
        let Some(head) = store.read_head(ns, hash).await? else {
            continue;
        };
        kept_pages.extend(head.pages.iter().map(|p| p.hash.clone()));
        let pages = store.read_pages(ns, &head.pages).await?;
        if pages.iter().any(Option::is_none) {
            tracing::info!(
                ns,
                manifest = hash,
                "a page of a kept manifest is not written yet: no chunk is collected this round"
            );
            chunks_unknown = true;
            continue;
        }
        let manifest = store.assemble_manifest(ns, hash, &head, &pages)?;
        kept_chunks.extend(manifest.chunks.into_iter().map(|c| c.hash));
    }
    let manifests = doomed.len();
    // Approvals go with their manifest.
    let approvals_prefix = keys.approvals_prefix(ns);
    for key in store.keys_under(&approvals_prefix).await? {
        let manifest = key
            .strip_prefix(&approvals_prefix)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        if !keep.contains(manifest) {
            doomed.push(key);
        }
    }
    let page_prefix = keys.page(ns, "");
    let mut pages = 0;
    for key in store.keys_under(&page_prefix).await? {
        let hash = key.strip_prefix(&page_prefix).unwrap_or_default();
        if !kept_pages.contains(hash) {
            doomed.push(key);
            pages += 1;
        }
    }
    let mut chunks = 0;
    if !chunks_unknown {
        let chunk_prefix = keys.chunk(ns, "");
        for key in store.keys_under(&chunk_prefix).await? {
            let hash = key.strip_prefix(&chunk_prefix).unwrap_or_default();
            if !kept_chunks.contains(hash) {
                doomed.push(key);
                chunks += 1;
            }
        }
    }

    let mut compares: Vec<Compare> = vec![
        unchanged(keys.routing(ns), state.routing.mod_revision),
        unchanged(
            keys.slot(ns, Slot::Blue),
            state.slot(Slot::Blue).mod_revision,
        ),
        unchanged(
            keys.slot(ns, Slot::Green),
            state.slot(Slot::Green).mod_revision,
        ),
    ];
    compares.extend(fence.map(Fence::compare));
    if !doomed.is_empty() {
        crash::pause_point(crash::JANITOR_PAUSE).await;
    }
    for batch in doomed.chunks(MAX_TXN_OPS) {
        let deletes: Vec<TxnOp> = batch
            .iter()
            .map(|k| TxnOp::delete(k.as_str(), None))
            .collect();
        let txn = Txn::new().when(compares.clone()).and_then(deletes);
        if !store.txn(txn).await?.succeeded() {
            return Err(CoordinatorError::Conflict(format!(
                "{ns} changed while its garbage was collected"
            )));
        }
    }
    let namespace = || ("namespace", ns.to_string());
    metrics::counter!(telemetry::GC_MANIFESTS_DELETED, &[namespace()]).increment(manifests as u64);
    metrics::counter!(telemetry::GC_PAGES_DELETED, &[namespace()]).increment(pages as u64);
    metrics::counter!(telemetry::GC_CHUNKS_DELETED, &[namespace()]).increment(chunks as u64);
    Ok(Collected {
        manifests,
        pages,
        chunks,
    })
}

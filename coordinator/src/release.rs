//! The release operations: staging into the idle slot, sealing, canary, flip, rollback, status
//! and the audit trail. Each change is one etcd transaction that compares the revisions it
//! decided on (invariant 2) and writes its audit record (invariant 8).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};
use serde_json::json;
use switchboard_proto::bucket::percent;
use switchboard_proto::set::{MAX_CHUNK_BYTES, decode_chunk, sha256_hex};
use switchboard_proto::time::{now_ms, rfc3339_ms};
use switchboard_proto::{
    Approval, AuditHead, AuditRecord, AuditTrail, History, HistoryEntry, HistoryVersion, Manifest,
    ManifestHead, NamespaceStatus, PageRef, Routing, SealOutcome, Slot, SlotRef, SlotState,
    SlotVersion, StatusCanary, StatusChange, StatusSidecar, StatusSlotVersion, StatusSlots,
    keys::validate_namespace,
};

use crate::audit;
use crate::capacity::Capacity;
use crate::crash;
use crate::error::{CoordinatorError, Result};
use crate::gates::GateChecker;
use crate::limits::{KeyedBuckets, QuietLog, Rate};
use crate::store::{NamespaceState, Store, absent, unchanged};
use crate::telemetry;

/// How often a change is retried when only the audit head moved underneath it (another change
/// to the same namespace that did not touch what this one decided on).
pub(crate) const MAX_ATTEMPTS: usize = 8;
/// How many of one user's denials are written to audit trails at most, per minute (and at
/// once). A user refused over and over, such as a script run with a viewer's token, would
/// otherwise grow the audit trail and etcd by a record per request; the rest are counted in
/// `switchboard_denials_unaudited_total`.
pub const AUDITED_DENIALS_PER_USER_PER_MINUTE: u32 = 5;
/// The most users whose allowance of audited denials is remembered.
pub const MAX_DENIED_USERS: usize = 10_000;
/// How long writing a denial's audit record may hold up the denial.
pub const DENIAL_AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who asks, and why: recorded in the audit trail.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
}

/// The outcome of `begin_stage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeginStage {
    Staging {
        slot: Slot,
        version: String,
        missing_chunks: Vec<String>,
        slot_revision: i64,
        /// The sealed version overwritten in the idle slot (after a flip, the rollback target).
        replaced_version: Option<String>,
    },
    AlreadyStaged {
        slot: Slot,
        version: String,
    },
    AlreadyActive {
        slot: Slot,
        version: String,
    },
    /// Etcd lacks these pages of the manifest, and the request did not bring them. Nothing was
    /// written; the caller sends them with the next request.
    PagesNeeded {
        version: String,
        missing_pages: Vec<String>,
    },
}

/// The audit record of a change: who, what, why, and the evidence.
pub(crate) struct AuditedChange<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub reason: &'a str,
    pub detail: serde_json::Value,
}

/// What became of a known user's denial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialAudit {
    /// Written to the namespace's audit trail as record `seq`.
    Audited(u64),
    /// Counted only, for the reason given (one of `telemetry::UNAUDITED_REASONS`).
    Unaudited(&'static str),
}

/// Each user's allowance of audited denials, and the log of those not audited.
#[derive(Debug)]
struct DenialAudits {
    allowance: KeyedBuckets<String>,
    unaudited_log: QuietLog,
}

#[derive(Clone)]
pub struct Releases {
    store: Store,
    gates: GateChecker,
    capacity: Capacity,
    compiled_contracts: crate::contract::CompiledContracts,
    rule_runner: crate::rule_worker::RuleRunner,
    denials: Arc<DenialAudits>,
    outcomes: crate::outcomes::Outcomes,
    /// The acknowledgements of a routing change a second a fleet is asked to keep to
    /// (`routing::acknowledgement_spread_ms`).
    acknowledgements_per_second: u64,
}

impl Releases {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            gates: GateChecker::new(),
            capacity: Capacity::default(),
            compiled_contracts: Default::default(),
            rule_runner: Default::default(),
            outcomes: crate::outcomes::Outcomes::new(),
            acknowledgements_per_second: crate::routing::ACKNOWLEDGEMENTS_PER_SECOND,
            denials: Arc::new(DenialAudits {
                allowance: KeyedBuckets::new(
                    Rate::per(AUDITED_DENIALS_PER_USER_PER_MINUTE, Duration::from_secs(60)),
                    MAX_DENIED_USERS,
                ),
                unaudited_log: QuietLog::new(Duration::from_secs(1)),
            }),
        }
    }

    /// The same, evaluating contract rules with `runner`.
    pub fn with_rule_runner(self, rule_runner: crate::rule_worker::RuleRunner) -> Self {
        Self {
            rule_runner,
            ..self
        }
    }

    pub(crate) fn compiled_contracts(&self) -> &crate::contract::CompiledContracts {
        &self.compiled_contracts
    }

    pub(crate) fn rule_runner(&self) -> &crate::rule_worker::RuleRunner {
        &self.rule_runner
    }

    /// The same, asking a fleet to spread the acknowledgements of a routing change to `rate` a
    /// second (at least 1).
    pub fn with_acknowledgements_per_second(self, rate: u64) -> Self {
        Self {
            acknowledgements_per_second: rate.max(1),
            ..self
        }
    }

    pub(crate) fn acknowledgements_per_second(&self) -> u64 {
        self.acknowledgements_per_second
    }

    /// The same, checking stages against `capacity` instead of etcd's default quota.
    pub fn with_capacity(self, capacity: Capacity) -> Self {
        Self { capacity, ..self }
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// The outcomes sidecars stream to this coordinator while it leads.
    pub fn outcomes(&self) -> &crate::outcomes::Outcomes {
        &self.outcomes
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn gate_checker(&self) -> &GateChecker {
        &self.gates
    }

    /// Announces a set by the head of its paged manifest: picks the idle slot, marks it staging
    /// with this manifest, writes the pages the request brings, and returns the chunks that
    /// etcd does not hold yet. When etcd lacks pages that the request does not bring, nothing
    /// is written and the reply names them.
    ///
    /// The pages are written after the slot names the manifest, never before: an unreferenced
    /// page could be collected by the janitor between its write and the slot's. A page read
    /// here and collected before the slot's write (a page of a version that was just dropped)
    /// makes the seal fail, naming it, and the next stage sends it.
    pub async fn begin_stage(
        &self,
        ns: &str,
        head_json: &[u8],
        pages: Vec<Vec<u8>>,
        message: &str,
        actor: &Actor,
    ) -> Result<BeginStage> {
        check_namespace(ns)?;
        let head = ManifestHead::from_json(head_json)
            .map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
        let manifest_hash = head.hash();
        let listed: HashSet<&str> = head.pages.iter().map(|p| p.hash.as_str()).collect();
        let mut sent: HashMap<String, Vec<u8>> = HashMap::new();
        for data in pages {
            let hash = sha256_hex(&data);
            if !listed.contains(hash.as_str()) {
                return Err(CoordinatorError::InvalidInput(format!(
                    "page {hash} is not one of the pages the manifest lists"
                )));
            }
            sent.insert(hash, data);
        }
        let unsent: Vec<PageRef> = head
            .pages
            .iter()
            .filter(|p| !sent.contains_key(&p.hash))
            .cloned()
            .collect();
        let fetched = self.store.read_pages(ns, &unsent).await?;
        let mut stored: HashMap<&str, Vec<u8>> = HashMap::new();
        let mut missing_pages = Vec::new();
        for (page_ref, data) in unsent.iter().zip(fetched) {
            match data {
                Some(data) => {
                    stored.insert(page_ref.hash.as_str(), data);
                }
                None if !missing_pages.contains(&page_ref.hash) => {
                    missing_pages.push(page_ref.hash.clone());
                }
                None => {}
            }
        }
        if !missing_pages.is_empty() {
            return Ok(BeginStage::PagesNeeded {
                version: head.version,
                missing_pages,
            });
        }
        let page_data = head.pages.iter().map(|p| {
            sent.get(&p.hash)
                .or_else(|| stored.get(p.hash.as_str()))
                .map_or(&[][..], Vec::as_slice)
        });
        let manifest = head
            .assemble(page_data)
            .map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
        let sent: Vec<(String, Vec<u8>)> = sent.into_iter().collect();
        let record_bytes =
            head_json.len() as u64 + sent.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
        let keys = self.store.keys().clone();
        for _ in 0..MAX_ATTEMPTS {
            let state = self.store.read_namespace(ns).await?;
            let slot = match &state.routing.value {
                Some(routing) => {
                    if routing.active.manifest == manifest_hash {
                        return Ok(BeginStage::AlreadyActive {
                            slot: routing.active.slot,
                            version: manifest.version,
                        });
                    }
                    let idle = routing.active.slot.other();
                    if let Some(canary) = routing.live_canary() {
                        if canary.manifest == manifest_hash {
                            return Ok(BeginStage::AlreadyStaged {
                                slot: idle,
                                version: manifest.version,
                            });
                        }
                        return Err(CoordinatorError::Refused(format!(
                            "slot {idle} of {ns} serves a {}% canary of version {}; set the canary to 0 or flip before staging",
                            percent(canary.weight_bp),
                            canary.version
                        )));
                    }
                    if let (Some(previous), Some(until)) = (routing.baking(), routing.bake_until_ms)
                        && previous.slot == idle
                    {
                        return Err(CoordinatorError::Refused(format!(
                            "slot {idle} of {ns} holds version {}, kept hot for an automatic flip-back until the bake time ends at {}; stage after that, or end it now with `sbctl rollback {ns}` or a shorter `sbctl policy set {ns} --bake`",
                            previous.version,
                            rfc3339_ms(until)
                        )));
                    }
                    idle
                }
                // Nothing serves yet: blue is the first slot.
                None => Slot::Blue,
            };
            let current = state.slot(slot);
            if let Some(slot_ref) = &current.value
                && slot_ref.manifest == manifest_hash
                && slot_ref.state == SlotState::Sealed
            {
                return Ok(BeginStage::AlreadyStaged {
                    slot,
                    version: manifest.version,
                });
            }
            let slot_ref = SlotRef {
                version: manifest.version.clone(),
                manifest: manifest_hash.clone(),
                state: SlotState::Staging,
                item_count: manifest.item_count,
                bytes: manifest.bytes,
                checksum: manifest.checksum.clone(),
                seed: switchboard_proto::bucket::seed_for_checksum(&manifest.checksum),
                staged_by: actor.name.clone(),
                message: message.to_string(),
                at_ms: now_ms(),
                contract: None,
                approval_reasons: Vec::new(),
            };
            // Refuse before anything is written when etcd would not hold the new chunks.
            self.check_capacity(ns, &manifest, record_bytes).await?;
            // The slot must still be idle (routing unchanged) and nobody else may have begun
            // staging into it since we read it.
            let txn = Txn::new()
                .when(vec![
                    unchanged(keys.routing(ns), state.routing.mod_revision),
                    unchanged(keys.slot(ns, slot), current.mod_revision),
                ])
                .and_then(vec![
                    TxnOp::put(keys.manifest(ns, &manifest_hash), head_json.to_vec(), None),
                    TxnOp::put(keys.slot(ns, slot), to_json(&slot_ref), None),
                    // Registers the namespace for the leader's loops.
                    TxnOp::put(keys.namespace_marker(ns), Vec::new(), None),
                ]);
            crash::pause_point(crash::STAGE_PAUSE).await;
            let response = self.store.txn(txn).await?;
            if !response.succeeded() {
                continue;
            }
            let slot_revision = response.header().map_or(0, |h| h.revision());
            self.store.put_pages(ns, &sent).await?;
            let hashes: Vec<String> = unique(manifest.chunks.iter().map(|c| c.hash.clone()));
            let missing_chunks = self.store.missing_chunks(ns, &hashes).await?;
            tracing::info!(ns, %slot, version = %manifest.version, missing = missing_chunks.len(), total = hashes.len(), "staging begun");
            let replaced_version = current
                .value
                .as_ref()
                .filter(|s| s.state == SlotState::Sealed)
                .map(|s| s.version.clone());
            return Ok(BeginStage::Staging {
                slot,
                version: manifest.version,
                missing_chunks,
                slot_revision,
                replaced_version,
            });
        }
        Err(busy(ns))
    }

    /// Refuses a stage whose chunks that etcd lacks would not fit in etcd's quota.
    async fn check_capacity(&self, ns: &str, manifest: &Manifest, record_bytes: u64) -> Result<()> {
        let hashes: Vec<String> = unique(manifest.chunks.iter().map(|c| c.hash.clone()));
        let missing: HashSet<String> = self
            .store
            .missing_chunks(ns, &hashes)
            .await?
            .into_iter()
            .collect();
        let mut counted = HashSet::new();
        let chunk_bytes: u64 = manifest
            .chunks
            .iter()
            .filter(|c| missing.contains(&c.hash) && counted.insert(c.hash.as_str()))
            .map(|c| c.stored_len())
            .sum();
        if chunk_bytes == 0 {
            return Ok(());
        }
        self.capacity
            .check_stage(
                &self.store,
                ns,
                &manifest.version,
                chunk_bytes + record_bytes,
            )
            .await
    }

    /// Verifies and writes uploaded chunks. Each must hash to its name and decode cleanly.
    pub async fn put_chunks(&self, ns: &str, chunks: Vec<(String, Vec<u8>)>) -> Result<u64> {
        check_namespace(ns)?;
        let mut bytes = 0;
        for (hash, data) in &chunks {
            if data.len() > MAX_CHUNK_BYTES {
                return Err(CoordinatorError::InvalidInput(format!(
                    "chunk {hash} is {} bytes, over the limit of {MAX_CHUNK_BYTES}",
                    data.len()
                )));
            }
            decode_chunk(hash, data).map_err(|e| CoordinatorError::InvalidInput(e.to_string()))?;
            bytes += data.len() as u64;
        }
        self.store.put_chunks(ns, &chunks).await?;
        metrics::counter!("switchboard_chunks_uploaded_total").increment(chunks.len() as u64);
        metrics::counter!("switchboard_chunk_bytes_uploaded_total").increment(bytes);
        Ok(bytes)
    }

    /// Reads the whole set back from etcd, verifies it against its manifest, and seals the
    /// slot together with its audit record.
    pub async fn seal(
        &self,
        ns: &str,
        slot: Slot,
        manifest_hash: &str,
        slot_revision: i64,
        allow_destructive: bool,
        actor: &Actor,
    ) -> Result<SealOutcome> {
        check_namespace(ns)?;
        let keys = self.store.keys().clone();
        let manifest = self
            .store
            .read_manifest(ns, manifest_hash)
            .await?
            .ok_or_else(|| {
                CoordinatorError::Refused(format!("manifest {manifest_hash} is not staged in {ns}"))
            })?;
        // The set is verified against its manifest and judged against the namespace's
        // contract before anything is written: a refusal leaves the slot staging, which no
        // sidecar ever reads.
        let judgement = self
            .judge_set(ns, &manifest, actor, allow_destructive)
            .await?;
        tracing::info!(
            ns,
            %slot,
            version = %manifest.version,
            contract = judgement.contract.as_deref().unwrap_or("none"),
            destructive = judgement.destructive.len(),
            warnings = judgement.warnings.len(),
            judge_ms = judgement.timings.judge_ms as u64,
            check_ms = judgement.timings.check_ms as u64,
            rules_ms = judgement.timings.rules_ms as u64,
            "staged set checked against the contract"
        );
        crash::delay_point(crash::SEAL_AFTER_CHECK).await;

        for _ in 0..MAX_ATTEMPTS {
            let state = self.store.read_namespace(ns).await?;
            let current = state.slot(slot);
            let Some(slot_ref) = current.value.clone() else {
                return Err(CoordinatorError::Conflict(format!(
                    "slot {slot} of {ns} holds nothing to seal; run sbctl stage again"
                )));
            };
            if current.mod_revision != slot_revision {
                return Err(CoordinatorError::Conflict(format!(
                    "slot {slot} of {ns} changed while staging: it now holds version {} ({:?}, staged by {} at {}); run sbctl stage again",
                    slot_ref.version,
                    slot_ref.state,
                    slot_ref.staged_by,
                    rfc3339_ms(slot_ref.at_ms)
                )));
            }
            if slot_ref.manifest != manifest_hash {
                return Err(CoordinatorError::Conflict(format!(
                    "slot {slot} of {ns} is staging another manifest; run sbctl stage again"
                )));
            }
            if let Some(routing) = &state.routing.value
                && serves(routing, slot)
            {
                return Err(CoordinatorError::Refused(format!(
                    "slot {slot} of {ns} serves traffic and cannot be sealed"
                )));
            }
            let sealed = SlotRef {
                state: SlotState::Sealed,
                at_ms: now_ms(),
                contract: judgement.contract.clone(),
                approval_reasons: judgement.approval_reasons.clone(),
                ..slot_ref
            };
            let head = self.audit_head(ns, &state).await?;
            let record = audit::next_record(
                &head,
                ns,
                &actor.name,
                "stage",
                &sealed.message,
                json!({
                    "slot": slot,
                    "version": sealed.version,
                    "manifest": manifest_hash,
                    "checksum": sealed.checksum,
                    "items": sealed.item_count,
                    "bytes": sealed.bytes,
                    "allow_destructive": allow_destructive,
                    "judgement": judgement.audit_detail(),
                }),
            )?;
            let history = HistoryEntry::of_sealed(&sealed);
            let mut compares = vec![
                unchanged(keys.routing(ns), state.routing.mod_revision),
                unchanged(keys.slot(ns, slot), current.mod_revision),
                // The contract that judged the set is still the one in force.
                unchanged(keys.contract(ns), judgement.contract_revision),
            ];
            let mut operations = vec![
                TxnOp::put(keys.slot(ns, slot), to_json(&sealed), None),
                TxnOp::put(keys.history(ns, &sealed.version), to_json(&history), None),
            ];
            append_audit_record(&keys, ns, &record, &mut compares, &mut operations);
            let txn = Txn::new().when(compares).and_then(operations);
            crash::pause_point(crash::SEAL_PAUSE).await;
            crash::point(crash::SEAL_BEFORE_TXN, "stage");
            let committed = self.store.txn(txn).await?.succeeded();
            crash::point(crash::SEAL_AFTER_TXN, "stage");
            if committed {
                tracing::info!(ns, %slot, version = %sealed.version, actor = %actor.name, "slot sealed");
                metrics::counter!("switchboard_stages_sealed_total").increment(1);
                return Ok(SealOutcome {
                    namespace: ns.to_string(),
                    slot,
                    version: sealed.version,
                    item_count: sealed.item_count,
                    bytes: sealed.bytes,
                    contract: judgement.contract,
                    destructive: judgement.destructive,
                    warnings: judgement.warnings,
                    approval_reasons: judgement.approval_reasons,
                    timings: Some(judgement.timings),
                });
            }
            // A contract changed since the check will not be the one that judged this set
            // however often the seal is retried.
            let contract_now = self
                .store
                .get_versioned::<serde_json::Value>(&keys.contract(ns))
                .await?;
            if contract_now.mod_revision != judgement.contract_revision {
                return Err(CoordinatorError::Conflict(format!(
                    "the contract of {ns} changed while the staged set was being checked; run sbctl stage again"
                )));
            }
        }
        Err(busy(ns))
    }

    #[allow(clippy::too_many_arguments)]
    /// The head the next audit record follows. A missing head with records present means the
    /// trail was tampered with or half restored: no record may be written until it is repaired,
    /// or the next one would overwrite evidence.
    pub(crate) async fn audit_head(&self, ns: &str, state: &NamespaceState) -> Result<AuditHead> {
        if let Some(head) = &state.audit_head.value {
            return Ok(head.clone());
        }
        if self
            .store
            .has_any(&self.store.keys().audit_prefix(ns))
            .await?
        {
            return Err(CoordinatorError::CorruptRecord {
                key: self.store.keys().audit_head(ns),
                reason: "missing while the audit trail has records; restore it before any change"
                    .into(),
            });
        }
        Ok(AuditHead::default())
    }

    pub async fn status(&self, ns: &str) -> Result<NamespaceStatus> {
        check_namespace(ns)?;
        let state = self.store.read_namespace(ns).await?;
        let health = self.store.health_records(ns).await?;
        let routing = state.routing.value.as_ref();
        // The leader holds the counts; a replica that does not lead has none.
        let mut reports = self.outcomes.reports_by_sidecar(ns);
        let mut sidecars: Vec<StatusSidecar> = health
            .into_iter()
            .map(|h| StatusSidecar {
                drift: routing.and_then(|r| drift(&state, r, h.epoch, &h.serving)),
                reports: reports.remove(&h.id).unwrap_or_default(),
                id: h.id,
                epoch: h.epoch,
                serving: h.serving,
                etcd_reachable: h.etcd_reachable,
                at_ms: h.at_ms,
                prepared: h.prepared,
                activated_epoch: h.activated_epoch,
                activated_at_us: h.activated_at_us,
            })
            .collect();
        let slot_manifests: Vec<&str> = Slot::BOTH
            .iter()
            .filter_map(|slot| state.slot(*slot).value.as_ref())
            .map(|s| s.manifest.as_str())
            .collect();
        let approvals: Vec<Approval> = state
            .approvals
            .iter()
            .filter(|(_, a)| slot_manifests.contains(&a.manifest.as_str()))
            .map(|(_, a)| a.clone())
            .collect();
        sidecars.sort_by(|a, b| a.id.cmp(&b.id));
        let slot_version = |sv: &SlotVersion| StatusSlotVersion {
            slot: sv.slot,
            version: sv.version.clone(),
        };
        Ok(NamespaceStatus {
            namespace: ns.to_string(),
            epoch: state.epoch(),
            active: routing.map(|r| slot_version(&r.active)),
            canary: routing
                .and_then(|r| r.canary.as_ref())
                .map(|c| StatusCanary {
                    slot: c.slot,
                    version: c.version.clone(),
                    percent: percent(c.weight_bp),
                    weight_bp: c.weight_bp,
                }),
            previous: routing.and_then(|r| r.previous.as_ref()).map(slot_version),
            slots: StatusSlots {
                blue: state.slot(Slot::Blue).value.clone(),
                green: state.slot(Slot::Green).value.clone(),
            },
            sidecars,
            last_change: routing.map(|r| StatusChange {
                action: r.action.clone(),
                by: r.by.clone(),
                reason: r.reason.clone(),
                at_ms: r.at_ms,
            }),
            bake_until_ms: routing.and_then(|r| r.bake_until_ms),
            policy: state.policy(),
            rollout: state.rollout.value.clone(),
            leader: self.store.leader_name().await,
            approvals,
        })
    }

    /// The manifest of the active set, of one slot, or of a retained version.
    pub async fn manifest(
        &self,
        ns: &str,
        slot: Option<Slot>,
        version: Option<&str>,
    ) -> Result<Manifest> {
        check_namespace(ns)?;
        let hash = match version {
            Some(version) => self.history_entry(ns, version).await?.manifest,
            None => {
                let state = self.store.read_namespace(ns).await?;
                let hash = match slot {
                    None => state.routing.value.map(|r| r.active.manifest),
                    Some(slot) => state.slot(slot).value.clone().map(|s| s.manifest),
                };
                hash.ok_or_else(|| match slot {
                    None => CoordinatorError::NotFound(format!("nothing is active in {ns} yet")),
                    Some(slot) => {
                        CoordinatorError::NotFound(format!("slot {slot} of {ns} is empty"))
                    }
                })?
            }
        };
        self.store
            .read_manifest(ns, &hash)
            .await?
            .ok_or_else(|| match version {
                Some(version) => CoordinatorError::Refused(format!(
                    "version {version} of {ns} is no longer retained: its manifest was collected"
                )),
                None => CoordinatorError::CorruptRecord {
                    key: self.store.keys().manifest(ns, &hash),
                    reason: "missing".into(),
                },
            })
    }

    /// The history record of `version`: NotFound when it was never sealed in `ns`.
    pub async fn history_entry(&self, ns: &str, version: &str) -> Result<HistoryEntry> {
        if version.is_empty()
            || version.len() > 128
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(CoordinatorError::InvalidInput(format!(
                "{version:?} is not a version id"
            )));
        }
        self.store
            .get_json(&self.store.keys().history(ns, version))
            .await?
            .ok_or_else(|| {
                CoordinatorError::Refused(format!(
                    "version {version} was never staged in {ns}; `sbctl history {ns}` lists the versions"
                ))
            })
    }

    /// Every version ever sealed in `ns`, newest first, with where it is now and whether it
    /// is retained.
    pub async fn history(&self, ns: &str) -> Result<History> {
        check_namespace(ns)?;
        let keys = self.store.keys();
        let state = self.store.read_namespace(ns).await?;
        let raw = self.store.get_prefix(&keys.history_prefix(ns)).await?;
        let manifests: HashSet<String> = self
            .store
            .keys_under(&keys.manifests_prefix(ns))
            .await?
            .into_iter()
            .filter_map(|key| key.rsplit('/').next().map(str::to_string))
            .collect();
        let routing = state.routing.value.as_ref();
        let mut versions = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            let entry: HistoryEntry = crate::store::parse_record(&key, &value)?;
            let role = role_of(&state, routing, &entry);
            let approved_by = state
                .approvals
                .iter()
                .filter(|(_, a)| a.manifest == entry.manifest)
                .map(|(_, a)| a.approved_by.clone())
                .collect();
            versions.push(HistoryVersion {
                retained: manifests.contains(&entry.manifest),
                entry,
                role,
                approved_by,
            });
        }
        versions.sort_by_key(|v| std::cmp::Reverse(v.entry.at_ms));
        Ok(History {
            namespace: ns.to_string(),
            versions,
        })
    }

    /// Records `actor`'s approval of `version`, which must be in a slot or retained. Whoever
    /// staged it may not approve it. Approving twice is a no-op.
    pub async fn approve(
        &self,
        ns: &str,
        version: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<Approval> {
        check_namespace(ns)?;
        let state = self.store.read_namespace(ns).await?;
        let in_slot = Slot::BOTH
            .iter()
            .filter_map(|slot| state.slot(*slot).value.as_ref())
            .find(|s| s.version == version && s.state == SlotState::Sealed)
            .map(|s| (s.manifest.clone(), s.staged_by.clone()));
        let (manifest, staged_by) = match in_slot {
            Some(found) => found,
            None => {
                let entry = self.history_entry(ns, version).await?;
                (entry.manifest, entry.staged_by)
            }
        };
        if staged_by == actor.name {
            let message = format!(
                "{} staged version {version} of {ns} and may not approve it: another approver must",
                actor.name
            );
            // A self-approval is a denial like any other, and lands in the audit trail within
            // the user's allowance of audited denials.
            self.audit_denial(
                ns,
                &actor.name,
                "Approve",
                &message,
                json!({"rpc": "Approve", "code": "permission_denied", "version": version, "manifest": manifest}),
            )
            .await;
            return Err(CoordinatorError::PermissionDenied(message));
        }
        if let Some((_, existing)) = state
            .approvals
            .iter()
            .find(|(_, a)| a.manifest == manifest && a.approved_by == actor.name)
        {
            return Ok(existing.clone());
        }
        let approval = Approval {
            namespace: ns.to_string(),
            version: version.to_string(),
            manifest: manifest.clone(),
            approved_by: actor.name.clone(),
            staged_by,
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        let key = self.store.keys().approval(ns, &manifest, &actor.name);
        self.change_record(ns, "approve", reason, actor, |_| {
            Ok((
                key.clone(),
                0,
                to_json(&approval),
                json!({"version": version, "manifest": manifest, "staged_by": approval.staged_by}),
                approval.clone(),
            ))
        })
        .await
    }

    /// Whether `ns` exists: something was staged into it (its marker), or something was
    /// recorded in it (its audit head, such as a policy set before the first stage). Two reads
    /// of one key each at most; nothing is written.
    pub async fn namespace_exists(&self, ns: &str) -> Result<bool> {
        check_namespace(ns)?;
        let keys = self.store.keys();
        if self
            .store
            .get_raw(&keys.namespace_marker(ns))
            .await?
            .is_some()
        {
            return Ok(true);
        }
        Ok(self.store.get_raw(&keys.audit_head(ns)).await?.is_some())
    }

    /// Audits a known user's denial of `rpc` in `ns` (action `denied`), if the namespace
    /// exists and the user has not used up the allowance of
    /// [`AUDITED_DENIALS_PER_USER_PER_MINUTE`]; otherwise it is only counted in
    /// `switchboard_denials_unaudited_total`. The allowance is taken before etcd is read, so
    /// that a user's flood of denials costs etcd a few reads a minute, whatever it names.
    /// Never fails: the denial is answered whatever becomes of its record.
    pub async fn audit_denial(
        &self,
        ns: &str,
        actor: &str,
        rpc: &'static str,
        reason: &str,
        detail: serde_json::Value,
    ) -> DenialAudit {
        let outcome = if validate_namespace(ns).is_err() {
            DenialAudit::Unaudited("unknown_namespace")
        } else if self
            .denials
            .allowance
            .take(&actor.to_string(), Instant::now())
            .is_err()
        {
            DenialAudit::Unaudited("rate_limited")
        } else {
            let write = async {
                if !self.namespace_exists(ns).await? {
                    return Ok(None);
                }
                self.append_audit(ns, actor, "denied", reason, detail)
                    .await
                    .map(Some)
            };
            match tokio::time::timeout(DENIAL_AUDIT_TIMEOUT, write).await {
                Ok(Ok(Some(seq))) => DenialAudit::Audited(seq),
                Ok(Ok(None)) => DenialAudit::Unaudited("unknown_namespace"),
                Ok(Err(error)) => {
                    tracing::error!(ns, rpc, actor, %error, "request denied, but its audit record cannot be written");
                    DenialAudit::Unaudited("etcd_error")
                }
                Err(_) => {
                    tracing::error!(
                        ns,
                        rpc,
                        actor,
                        "request denied, but its audit record was not written within {DENIAL_AUDIT_TIMEOUT:?}"
                    );
                    DenialAudit::Unaudited("etcd_error")
                }
            }
        };
        match outcome {
            DenialAudit::Audited(seq) => {
                tracing::info!(ns, rpc, actor, seq, reason, "request denied and audited");
            }
            DenialAudit::Unaudited(why) => {
                metrics::counter!(telemetry::DENIALS_UNAUDITED, "rpc" => rpc, "reason" => why)
                    .increment(1);
                if let Some(suppressed) = self.denials.unaudited_log.allow(Instant::now()) {
                    tracing::info!(
                        rpc,
                        actor,
                        why,
                        reason,
                        suppressed,
                        "request denied, not audited (switchboard_denials_unaudited_total counts these; `suppressed` is how many such lines were left out since the last)"
                    );
                }
            }
        }
        outcome
    }

    /// Appends an audit record that describes no change (a denied request), through the same
    /// audit-head compare as every change. Returns its seq.
    pub async fn append_audit(
        &self,
        ns: &str,
        actor: &str,
        action: &str,
        reason: &str,
        detail: serde_json::Value,
    ) -> Result<u64> {
        check_namespace(ns)?;
        for _ in 0..MAX_ATTEMPTS {
            let state = self.store.read_namespace(ns).await?;
            let audited = AuditedChange {
                actor,
                action,
                reason,
                detail: detail.clone(),
            };
            if let Some(seq) = self
                .commit_audited(ns, &state, audited, Vec::new(), Vec::new())
                .await?
            {
                return Ok(seq);
            }
        }
        Err(busy(ns))
    }

    /// Commits `operations` under `compares` together with the audit record of `audited`,
    /// which follows the audit head of `state`: the transaction also compares that head and
    /// that the record's key is free, so two changes never fork the chain. `None` when a
    /// compare failed (the caller reads again and retries); the record's seq when committed.
    pub(crate) async fn commit_audited(
        &self,
        ns: &str,
        state: &NamespaceState,
        audited: AuditedChange<'_>,
        mut compares: Vec<etcd_client::Compare>,
        mut operations: Vec<TxnOp>,
    ) -> Result<Option<u64>> {
        let keys = self.store.keys();
        let head = self.audit_head(ns, state).await?;
        let record = audit::next_record(
            &head,
            ns,
            audited.actor,
            audited.action,
            audited.reason,
            audited.detail,
        )?;
        append_audit_record(keys, ns, &record, &mut compares, &mut operations);
        crash::pause_point(crash::AUDITED_PAUSE).await;
        let committed = self
            .store
            .txn(Txn::new().when(compares).and_then(operations))
            .await?
            .succeeded();
        Ok(committed.then_some(record.seq))
    }

    pub async fn audit_trail(&self, ns: &str, verify: bool) -> Result<AuditTrail> {
        check_namespace(ns)?;
        let keys = self.store.keys();
        let raw = self.store.get_prefix(&keys.audit_prefix(ns)).await?;
        let head: Option<AuditHead> = self.store.get_json(&keys.audit_head(ns)).await?;
        let (records, verification) = audit::verify_chain(&raw, head.as_ref());
        Ok(AuditTrail {
            namespace: ns.to_string(),
            records,
            verified: verify.then_some(verification),
        })
    }
}

/// Where a version of the history is now: "active", "canary", "previous" (kept for a
/// rollback), "staged" (sealed in the idle slot) or "".
fn role_of(state: &NamespaceState, routing: Option<&Routing>, entry: &HistoryEntry) -> String {
    let role = match routing {
        Some(r) if r.active.manifest == entry.manifest => "active",
        Some(r)
            if r.live_canary()
                .is_some_and(|c| c.manifest == entry.manifest) =>
        {
            "canary"
        }
        Some(r)
            if r.previous
                .as_ref()
                .is_some_and(|p| p.manifest == entry.manifest) =>
        {
            "previous"
        }
        _ if Slot::BOTH.iter().any(|slot| {
            state
                .slot(*slot)
                .value
                .as_ref()
                .is_some_and(|s| s.manifest == entry.manifest && s.state == SlotState::Sealed)
        }) =>
        {
            "staged"
        }
        _ => "",
    };
    role.to_string()
}

/// Adds the audit record to a transaction: the record under its sequence number, the head
/// moved to it, and the compare that the record's key is still free. That compare is the
/// audit chain's whole guard: every append moves the head and creates the next record in one
/// transaction, so two changes that read the same head race for the same key, and the loser
/// reads again; and a head that fell behind its records (restored from an older copy) makes
/// every change fail instead of overwriting a record. (Comparing the head's revision as well
/// guarded nothing more, and no test could tell it was there: it was removed.)
pub(crate) fn append_audit_record(
    keys: &switchboard_proto::Keys,
    ns: &str,
    record: &AuditRecord,
    compares: &mut Vec<etcd_client::Compare>,
    operations: &mut Vec<TxnOp>,
) {
    let head = AuditHead {
        seq: record.seq,
        hash: record.hash.clone(),
    };
    compares.push(absent(keys.audit(ns, record.seq)));
    operations.push(TxnOp::put(
        keys.audit(ns, record.seq),
        to_json(record),
        None,
    ));
    operations.push(TxnOp::put(keys.audit_head(ns), to_json(&head), None));
}

pub(crate) fn check_namespace(ns: &str) -> Result<()> {
    validate_namespace(ns).map_err(CoordinatorError::InvalidInput)
}

/// Whether routing sends any consumer to `slot`.
pub(crate) fn serves(routing: &Routing, slot: Slot) -> bool {
    routing.active.slot == slot || routing.live_canary().is_some_and(|c| c.slot == slot)
}

pub(crate) fn busy(ns: &str) -> CoordinatorError {
    CoordinatorError::Conflict(format!(
        "{ns} kept changing underneath this request; read `sbctl status {ns}` and retry"
    ))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // The records are plain data; serialising them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    items.filter(|i| seen.insert(i.clone())).collect()
}

/// What a sidecar on the current epoch serves that routing does not say it should, in words;
/// `None` when it matches, and for a sidecar on another epoch (still converging, which the
/// epoch column shows).
pub(crate) fn drift(
    state: &NamespaceState,
    routing: &Routing,
    epoch: u64,
    serving: &[switchboard_proto::ServedSet],
) -> Option<String> {
    if epoch != routing.epoch {
        return None;
    }
    let mut expected = routing.in_service();
    let required = expected.len();
    expected.extend(routing.baking().cloned());
    let checksum_of = |set: &SlotVersion| {
        state
            .slot(set.slot)
            .value
            .as_ref()
            .filter(|s| s.manifest == set.manifest)
            .map(|s| s.checksum.clone())
    };
    let mut problems = Vec::new();
    for served in serving {
        match expected
            .iter()
            .find(|e| e.slot == served.slot && e.version == served.version)
        {
            None => problems.push(format!(
                "serves version {} from slot {}, which routing does not put in service",
                served.version, served.slot
            )),
            Some(set) => {
                if let Some(checksum) = checksum_of(set)
                    && checksum != served.checksum
                {
                    problems.push(format!(
                        "serves version {} with checksum {}, but slot {} holds checksum {}",
                        served.version,
                        short(&served.checksum),
                        served.slot,
                        short(&checksum)
                    ));
                }
            }
        }
    }
    for set in &expected[..required] {
        if !serving
            .iter()
            .any(|s| s.slot == set.slot && s.version == set.version)
        {
            problems.push(format!(
                "does not serve version {} from slot {}",
                set.version, set.slot
            ));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

//! The namespace's contract on the server: reading, setting and approving it, and judging a
//! set against it at seal. The checks are the `switchboard-contract` crate's, the same code
//! sbctl previews them with; here they run where no caller can skip them.
//!
//! - The contract lives at `ns/<ns>/contract`, set by an admin. When the policy requires
//!   approval, a new contract waits at `ns/<ns>/contract-proposal` until someone other than its
//!   proposer approves exactly that hash. Every change is audited in the same transaction.
//! - A seal reads every chunk of the set anyway; it also checks each item against the schemas,
//!   classifies the plan against the active set (fetching only the active chunks the set does
//!   not share), and runs the Rego rules in a limited child process (`rule_worker.rs`). The
//!   seal's transaction compares the contract key's revision, so a contract changed meanwhile
//!   cannot have judged a set it never saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::TxnOp;
use serde_json::json;
use switchboard_contract::check::{RuleScope, SealCheck, Subject, Verdict};
use switchboard_contract::diff::{ActiveOnlyItems, chunks_to_fetch, decode_fetched};
use switchboard_contract::{CompiledContract, Contract, ContractRecord, ContractView};
use switchboard_proto::Manifest;
use switchboard_proto::set::SetVerifier;
use switchboard_proto::time::now_ms;

use crate::error::{CoordinatorError, Result};
use crate::release::{
    Actor, AuditedChange, MAX_ATTEMPTS, Releases, busy, check_namespace, to_json,
};
use crate::store::{NamespaceState, Versioned, unchanged};

/// Compiled contracts kept, by hash. A contract is immutable under its hash, so this is a
/// cache of derived data and never a second source of truth.
const COMPILED_KEPT: usize = 64;
/// The most destructive changes and warnings an audit record lists; the rest are counted.
const LISTED_IN_AUDIT: usize = 100;

/// Compiled contracts by hash, shared by the requests of one coordinator.
#[derive(Clone, Default)]
pub struct CompiledContracts(Arc<Mutex<HashMap<String, Arc<CompiledContract>>>>);

impl CompiledContracts {
    fn get_or_compile(&self, key: &str, record: &ContractRecord) -> Result<Arc<CompiledContract>> {
        if let Ok(cache) = self.0.lock()
            && let Some(found) = cache.get(&record.hash)
        {
            return Ok(found.clone());
        }
        let compiled =
            Arc::new(
                record
                    .contract
                    .compile()
                    .map_err(|e| CoordinatorError::CorruptRecord {
                        key: key.to_string(),
                        reason: e.to_string(),
                    })?,
            );
        if let Ok(mut cache) = self.0.lock() {
            if cache.len() >= COMPILED_KEPT {
                cache.clear();
            }
            cache.insert(record.hash.clone(), compiled.clone());
        }
        Ok(compiled)
    }
}

/// What a seal learned from the contract, for the slot and the audit record.
#[derive(Debug, Default)]
pub struct Judgement {
    /// The contract's hash, when the namespace has one.
    pub contract: Option<String>,
    /// The contract key's revision when it was read (0: absent), compared by the seal.
    pub contract_revision: i64,
    pub destructive: Vec<String>,
    pub warnings: Vec<String>,
    pub approval_reasons: Vec<String>,
    pub classes: switchboard_contract::compat::ClassCounts,
    pub timings: switchboard_proto::SealTimings,
}

impl Judgement {
    /// The audit record's part of it.
    pub fn audit_detail(&self) -> serde_json::Value {
        json!({
            "contract": self.contract,
            "classes": self.classes,
            "destructive": listed(&self.destructive),
            "destructive_count": self.destructive.len(),
            "warnings": listed(&self.warnings),
            "approval_reasons": listed(&self.approval_reasons),
        })
    }
}

fn listed(lines: &[String]) -> &[String] {
    &lines[..lines.len().min(LISTED_IN_AUDIT)]
}

/// What a contract change reads: the namespace (its policy and audit head), the contract in
/// force and the proposal, each with the revision the change compares.
struct ContractState {
    namespace: NamespaceState,
    active: Versioned<ContractRecord>,
    proposal: Versioned<ContractRecord>,
}

impl ContractState {
    /// The view of this state as `contract show` prints it.
    fn view(self, ns: &str) -> ContractView {
        ContractView {
            namespace: ns.to_string(),
            requires_approval: self.namespace.policy().require_approval,
            active: self.active.value,
            proposal: self.proposal.value,
        }
    }
}

impl Releases {
    async fn read_contract_state(&self, ns: &str) -> Result<ContractState> {
        let keys = self.store().keys();
        Ok(ContractState {
            namespace: self.store().read_namespace(ns).await?,
            active: self.store().get_versioned(&keys.contract(ns)).await?,
            proposal: self
                .store()
                .get_versioned(&keys.contract_proposal(ns))
                .await?,
        })
    }

    /// The contract in force and any proposal.
    pub async fn contract_view(&self, ns: &str) -> Result<ContractView> {
        check_namespace(ns)?;
        Ok(self.read_contract_state(ns).await?.view(ns))
    }

    /// Sets the contract, or proposes it when the policy requires approval. The contract is
    /// compiled first: one that does not compile is refused, naming the file.
    pub async fn set_contract(
        &self,
        ns: &str,
        contract: Contract,
        expected_hash: Option<&str>,
        reason: &str,
        actor: &Actor,
    ) -> Result<ContractView> {
        check_namespace(ns)?;
        contract
            .compile()
            .map_err(|e| CoordinatorError::InvalidInput(format!("the contract is refused: {e}")))?;
        let keys = self.store().keys().clone();
        let hash = contract.hash();
        let record = ContractRecord {
            hash: hash.clone(),
            contract,
            set_by: actor.name.clone(),
            reason: reason.to_string(),
            at_ms: now_ms(),
            approved_by: None,
            approved_at_ms: None,
        };
        for _ in 0..MAX_ATTEMPTS {
            let mut read = self.read_contract_state(ns).await?;
            let active_hash = read.active.value.as_ref().map(|r| r.hash.clone());
            if let Some(expected) = expected_hash
                && active_hash.as_deref().unwrap_or("") != expected
            {
                return Err(CoordinatorError::Conflict(format!(
                    "the contract of {ns} changed underneath; read it again with `sbctl contract show {ns}` and retry"
                )));
            }
            if active_hash.as_deref() == Some(hash.as_str()) {
                return Ok(read.view(ns));
            }
            let requires_approval = read.namespace.policy().require_approval;
            let (action, target_key) = if requires_approval {
                ("contract-proposed", keys.contract_proposal(ns))
            } else {
                ("contract", keys.contract(ns))
            };
            let audited = AuditedChange {
                actor: &actor.name,
                action,
                reason,
                detail: json!({
                    "hash": hash,
                    "previous": active_hash,
                    "schemas": record.contract.schemas.len(),
                    "rules": record.contract.rules.keys().collect::<Vec<_>>(),
                    "requires_approval": requires_approval,
                }),
            };
            let compares = vec![
                unchanged(keys.contract(ns), read.active.mod_revision),
                unchanged(keys.contract_proposal(ns), read.proposal.mod_revision),
                unchanged(keys.policy(ns), read.namespace.policy.mod_revision),
            ];
            let mut operations = vec![TxnOp::put(target_key, to_json(&record), None)];
            // A contract put in force directly replaces any proposal waiting.
            if !requires_approval && read.proposal.value.is_some() {
                operations.push(TxnOp::delete(keys.contract_proposal(ns), None));
            }
            if self
                .commit_audited(ns, &read.namespace, audited, compares, operations)
                .await?
                .is_some()
            {
                tracing::info!(ns, actor = %actor.name, hash = %hash, action, "contract changed");
                if requires_approval {
                    read.proposal.value = Some(record);
                } else {
                    read.active.value = Some(record);
                    read.proposal.value = None;
                }
                return Ok(read.view(ns));
            }
        }
        Err(busy(ns))
    }

    /// Puts the proposed contract in force. `hash` names it (at least 12 hex digits); the
    /// approver must not be its proposer.
    pub async fn approve_contract(
        &self,
        ns: &str,
        hash: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<ContractView> {
        check_namespace(ns)?;
        if hash.len() < 12 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CoordinatorError::InvalidInput(
                "name the proposed contract by at least the first 12 hex digits of its hash".into(),
            ));
        }
        let keys = self.store().keys().clone();
        for _ in 0..MAX_ATTEMPTS {
            let mut read = self.read_contract_state(ns).await?;
            let Some(proposed) = read.proposal.value.clone() else {
                return Err(CoordinatorError::Refused(format!(
                    "no contract of {ns} is waiting for approval"
                )));
            };
            if !proposed.hash.starts_with(&hash.to_ascii_lowercase()) {
                return Err(CoordinatorError::Conflict(format!(
                    "the contract waiting for approval in {ns} is {}, not {hash}; read it with `sbctl contract show {ns}`",
                    proposed.short_hash()
                )));
            }
            if proposed.set_by == actor.name {
                let message = format!(
                    "{} proposed contract {} of {ns} and may not approve it: another approver must",
                    actor.name,
                    proposed.short_hash()
                );
                // A self-approval is a denial like any other: audited within the user's
                // allowance of audited denials, as `approve` does.
                self.audit_denial(
                    ns,
                    &actor.name,
                    "ApproveContract",
                    &message,
                    json!({"rpc": "ApproveContract", "code": "permission_denied", "hash": proposed.hash}),
                )
                .await;
                return Err(CoordinatorError::PermissionDenied(message));
            }
            let in_force = ContractRecord {
                approved_by: Some(actor.name.clone()),
                approved_at_ms: Some(now_ms()),
                ..proposed.clone()
            };
            let audited = AuditedChange {
                actor: &actor.name,
                action: "contract-approved",
                reason,
                detail: json!({
                    "hash": proposed.hash,
                    "proposed_by": proposed.set_by,
                    "previous": read.active.value.as_ref().map(|r| r.hash.clone()),
                }),
            };
            let compares = vec![
                unchanged(keys.contract(ns), read.active.mod_revision),
                unchanged(keys.contract_proposal(ns), read.proposal.mod_revision),
            ];
            let operations = vec![
                TxnOp::put(keys.contract(ns), to_json(&in_force), None),
                TxnOp::delete(keys.contract_proposal(ns), None),
            ];
            if self
                .commit_audited(ns, &read.namespace, audited, compares, operations)
                .await?
                .is_some()
            {
                tracing::info!(ns, actor = %actor.name, hash = %proposed.hash, "contract approved and in force");
                read.active.value = Some(in_force);
                read.proposal.value = None;
                return Ok(read.view(ns));
            }
        }
        Err(busy(ns))
    }

    /// Verifies the staged set against its manifest and judges it against the contract:
    /// schemas, destructive changes, rules. Refuses (exit 4) with the words sbctl's preview
    /// uses; otherwise returns what the seal records.
    pub(crate) async fn judge_set(
        &self,
        ns: &str,
        manifest: &Manifest,
        actor: &Actor,
        allow_destructive: bool,
    ) -> Result<Judgement> {
        let judge_started = Instant::now();
        // Time spent in the contract's own checks, apart from reading and verifying chunks.
        let mut check_time = Duration::ZERO;
        let keys = self.store().keys().clone();
        let contract: Versioned<ContractRecord> =
            self.store().get_versioned(&keys.contract(ns)).await?;
        let compiled = match &contract.value {
            Some(record) => self
                .compiled_contracts()
                .get_or_compile(&keys.contract(ns), record)?,
            None => Arc::new(CompiledContract::empty()),
        };
        let state = self.store().read_namespace(ns).await?;
        let policy = state.policy();
        // The set that serves now is what the plan compares with. It cannot change before the
        // seal commits: with two slots, a new active set would have to come from the slot being
        // sealed (refused while it is not sealed) or be restaged into it (which moves the slot's
        // revision, and the seal compares that).
        let active = match &state.routing.value {
            Some(routing) => {
                let active_slot = state.slot(routing.active.slot).value.clone();
                let head = self
                    .store()
                    .read_manifest(ns, &routing.active.manifest)
                    .await?;
                head.map(|m| (m, routing.active.version.clone(), active_slot))
            }
            None => None,
        };
        let scope = match (&active, &contract.value) {
            (Some((_, _, Some(slot_ref))), Some(record))
                if slot_ref.contract.as_deref() == Some(record.hash.as_str()) =>
            {
                RuleScope::Changed
            }
            _ => RuleScope::All,
        };
        let shared: std::collections::HashSet<String> = active
            .as_ref()
            .map(|(m, _, _)| m.chunks.iter().map(|c| c.hash.clone()).collect())
            .unwrap_or_default();

        // Rules that see every item get them while the set is read back, so that the worker
        // parses them while etcd is still sending the rest.
        let streams_items = scope == RuleScope::All;
        let mut check = SealCheck::new(&compiled, active.is_some(), scope);
        if streams_items {
            check = check.with_items_streamed();
        }
        let mut rules = if compiled.rules.is_empty() {
            None
        } else {
            Some(self.rule_runner().start(&compiled.rules).map_err(|e| {
                CoordinatorError::Refused(format!("the seal of {ns} is refused: {e}"))
            })?)
        };
        let chunks: Vec<(String, u64)> = manifest
            .chunks
            .iter()
            .map(|c| (c.hash.clone(), c.stored_len()))
            .collect();
        let mut verifier = SetVerifier::verify_only(manifest);
        let invalid = |e: switchboard_proto::ContractError| {
            CoordinatorError::Refused(format!("the staged set of {ns} does not verify: {e}"))
        };
        self.store()
            .for_each_chunk(ns, &chunks, |hash, data| {
                let in_shared = shared.contains(hash);
                let items = verifier.add_chunk_items(data).map_err(invalid)?;
                let started = Instant::now();
                for (key, value) in items {
                    check.add_item(&key, &value, in_shared);
                    if streams_items && let Some(rules) = rules.as_mut() {
                        rules.add_item(&key, &value);
                    }
                }
                check_time += started.elapsed();
                Ok(())
            })
            .await?;
        verifier.finish().map_err(invalid)?;

        let active_only: ActiveOnlyItems = match &active {
            Some((active_manifest, _, _)) => {
                let wanted = chunks_to_fetch(manifest, active_manifest);
                let sizes: HashMap<&str, u64> = active_manifest
                    .chunks
                    .iter()
                    .map(|c| (c.hash.as_str(), c.stored_len()))
                    .collect();
                let wanted_sized: Vec<(String, u64)> = wanted
                    .iter()
                    .map(|h| (h.clone(), sizes.get(h.as_str()).copied().unwrap_or(0)))
                    .collect();
                let mut fetched = Vec::with_capacity(wanted.len());
                self.store()
                    .for_each_chunk(ns, &wanted_sized, |hash, data| {
                        fetched.push((hash.to_string(), data.to_vec()));
                        Ok(())
                    })
                    .await?;
                decode_fetched(active_manifest, &wanted, fetched).map_err(|problem| {
                    CoordinatorError::CorruptRecord {
                        key: format!("the active set of {ns}"),
                        reason: problem,
                    }
                })?
            }
            None => ActiveOnlyItems::new(),
        };
        let subject = Subject {
            namespace: ns,
            actor: &actor.name,
            version: &manifest.version,
        };
        let started = Instant::now();
        let checked = check.finish(&active_only, &subject);
        check_time += started.elapsed();
        let checked = checked.map_err(|problem| CoordinatorError::CorruptRecord {
            key: format!("the active set of {ns}"),
            reason: problem,
        })?;
        let short = contract
            .value
            .as_ref()
            .map(|r| r.short_hash().to_string())
            .unwrap_or_default();
        let no_rules = switchboard_contract::rules::RuleOutcome::default();
        let verdict = Verdict {
            namespace: ns,
            contract: &short,
            checked: &checked,
            rules: &no_rules,
        };
        if let Some(refusal) = verdict.violation_refusal() {
            return Err(CoordinatorError::Refused(refusal));
        }
        let active_version = active.as_ref().map_or("none", |(_, v, _)| v.as_str());
        if let Some(refusal) = verdict.destructive_refusal(
            allow_destructive,
            active_version,
            &format!("sbctl plan {ns} PATH"),
        ) {
            return Err(CoordinatorError::Refused(refusal));
        }
        // What the seal waits for after the read: the evaluation, and the parse of items that
        // were not streamed.
        let rules_waited = Instant::now();
        let mut rules_evaluate = Duration::ZERO;
        let outcome = match rules {
            None => no_rules.clone(),
            Some(session) => {
                // The changed items, when the rules see only those; none when every item was
                // streamed.
                let evaluated = session
                    .finish(&checked.rule_input.context, &checked.rule_input.items)
                    .await
                    .map_err(|e| {
                        CoordinatorError::Refused(format!("the seal of {ns} is refused: {e}"))
                    })?;
                rules_evaluate = evaluated.evaluate;
                evaluated.outcome
            }
        };
        let rules_wait_time = rules_waited.elapsed();
        if let Some(refusal) =
            switchboard_contract::check::refusal_for_denies(ns, &short, &outcome.deny)
        {
            return Err(CoordinatorError::Refused(refusal));
        }
        let destructive = switchboard_contract::compat::destructive_lines(&checked.plan);
        let mut approval_reasons: Vec<String> =
            outcome.approval.iter().map(ToString::to_string).collect();
        if policy.destructive_requires_approval && !destructive.is_empty() {
            approval_reasons.insert(
                0,
                format!(
                    "{} destructive change(s), and the policy requires approval of those",
                    destructive.len()
                ),
            );
        }
        Ok(Judgement {
            contract: contract.value.as_ref().map(|r| r.hash.clone()),
            contract_revision: contract.mod_revision,
            destructive,
            warnings: outcome.warn.iter().map(ToString::to_string).collect(),
            approval_reasons,
            classes: checked.classes,
            timings: switchboard_proto::SealTimings {
                judge_ms: millis(judge_started.elapsed()),
                check_ms: millis(check_time),
                rules_ms: millis(rules_wait_time),
                rules_evaluate_ms: millis(rules_evaluate),
            },
        })
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

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

mod audited;
mod reading;
mod staging;

pub(crate) use audited::append_audit_record;

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

//! The documents stored in etcd and exchanged as JSON: routing, slot records, manifests, sidecar
//! health records, audit records and the status document that sbctl prints.

use serde::{Deserialize, Serialize};

/// One of the two full metadata sets a namespace keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    pub const BOTH: [Slot; 2] = [Slot::Blue, Slot::Green];

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Slot::Blue => 0,
            Slot::Green => 1,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Slot::Blue),
            "green" => Ok(Slot::Green),
            other => Err(format!("slot {other:?} is neither blue nor green")),
        }
    }
}

/// A slot and the exact set it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVersion {
    pub slot: Slot,
    pub version: String,
    /// SHA-256 of the manifest document: what a sidecar loads and verifies.
    pub manifest: String,
}

/// The canary: a share of consumers, chosen by bucket, served the other slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub slot: Slot,
    pub version: String,
    pub manifest: String,
    /// Basis points of consumers on the canary, 0 to 10000.
    pub weight_bp: u32,
    /// The bucket seed of the staged version (invariant 4).
    pub seed: u64,
}

/// Which set each consumer is served. Changed only by a transaction that compares its
/// mod_revision and writes an audit record (invariant 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// Incremented by every routing change; every read answer names it.
    pub epoch: u64,
    pub active: SlotVersion,
    pub canary: Option<Canary>,
    /// What was active before the last flip, kept for rollback.
    pub previous: Option<SlotVersion>,
    /// Until when (Unix ms) the previous set stays loaded and hot after a flip, while the judge
    /// watches the new version; cleared by the leader when the bake time is over.
    #[serde(default)]
    pub bake_until_ms: Option<u64>,
    /// A synchronized flip's target while its sidecars prepare: every sidecar loads and
    /// verifies this set and holds it without serving it, then acknowledges it in its health
    /// record (`HealthRecord::prepared`). Any other routing change clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare: Option<SlotVersion>,
    /// When (Unix ms) sidecars switch to this routing. Absent means at once, as every routing
    /// change but the commit of a synchronized flip does. Until then a sidecar keeps serving
    /// the routing it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate_at_ms: Option<u64>,
    /// Over how long (ms) sidecars spread the health-record writes that acknowledge this
    /// routing, each waiting a random part of it. Set by the leader for a fleet larger than
    /// etcd should take acknowledgements from at one instant (a second of them for each 1,000
    /// sidecars streaming to it); absent means at once. The leader hears each sidecar's epoch
    /// through its outcome stream at once either way: only the record in etcd waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge_within_ms: Option<u64>,
    /// The action that made this routing: flip, canary, rollback.
    pub action: String,
    pub by: String,
    pub reason: String,
    pub at_ms: u64,
}

impl Routing {
    /// The sets in service: the active one, and the canary's while its weight is above zero.
    pub fn in_service(&self) -> Vec<SlotVersion> {
        let mut sets = vec![self.active.clone()];
        if let Some(canary) = self.live_canary() {
            sets.push(SlotVersion {
                slot: canary.slot,
                version: canary.version.clone(),
                manifest: canary.manifest.clone(),
            });
        }
        sets
    }

    /// The previous set while the bake time runs: sidecars keep it loaded for a fast flip back.
    pub fn baking(&self) -> Option<&SlotVersion> {
        self.bake_until_ms.and(self.previous.as_ref())
    }

    /// The canary with a weight above zero, if any.
    pub fn live_canary(&self) -> Option<&Canary> {
        self.canary.as_ref().filter(|c| c.weight_bp > 0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Chunks are being uploaded: invisible to sidecars, and routing refuses to point at it.
    Staging,
    /// Every chunk was verified against the manifest from etcd itself.
    Sealed,
}

/// What a slot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRef {
    pub version: String,
    pub manifest: String,
    pub state: SlotState,
    pub item_count: u64,
    pub bytes: u64,
    pub checksum: String,
    /// The bucket seed of this version (`bucket::seed_for_checksum`).
    pub seed: u64,
    pub staged_by: String,
    pub message: String,
    pub at_ms: u64,
    /// The contract the set was sealed under (its hash); absent before the seal, or when the
    /// namespace had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Why this version needs a second person's approval before a canary or a flip, whatever
    /// the policy says otherwise: its destructive changes (with `destructive_requires_approval`)
    /// or the contract rules' `approval` messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval_reasons: Vec<String>,
}

/// One chunk of a set: consecutive items in key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: String,
    pub items: u64,
    pub bytes: u64,
}

/// The complete description of a set. A pure function of its content, so the same items
/// always give the same manifest, the same manifest hash and the same version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Derived from the checksum.
    pub version: String,
    pub item_count: u64,
    /// Bytes of keys and values, as stored.
    pub bytes: u64,
    /// SHA-256 over the canonical form of the sorted items.
    pub checksum: String,
    pub chunks: Vec<ChunkRef>,
}

/// How the health judge decides for one namespace. The defaults were chosen with the judge
/// simulation (`switchboard-loadtest judge`): at 50 and at 500 requests per second with a 10%
/// canary, 200 outcomes in a 120 s window gave no false rollback in 2,000 runs of 30 minutes of
/// healthy noise (1% errors on both versions), caught a canary at 30% errors in every run
/// (within 50 s at 50 req/s, 6 s at 500 req/s), and never leaves the judge starved of data at
/// 50 req/s, which 500 outcomes in 60 s did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Highest tolerated error rate of a new version, 0 to 1 (0.05: 5%).
    pub max_error_rate: f64,
    /// Fewest outcomes of the new version in the window before any verdict but "insufficient".
    pub min_requests: u64,
    /// The window the judge sums outcomes over.
    pub window_seconds: u64,
    /// How long after a flip the previous set stays hot and the judge can flip back.
    pub bake_seconds: u64,
    /// Whether a canary above 0% or a flip of a version needs `sbctl approve` by an approver
    /// who did not stage it.
    pub require_approval: bool,
    /// Whether a version that makes destructive changes (allowed at staging) needs an approval
    /// by someone who did not stage it before a canary above 0% or a flip.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub destructive_requires_approval: bool,
    /// Whether sidecars answer preview reads (`X-Switchboard-Preview: staged`) from the sealed
    /// staged set, for test traffic before any canary. Off by default; turning it on is a
    /// policy change, audited as every one is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preview_reads: bool,
    /// Preconditions checked before a canary step above 0% or a flip (not before a rollback).
    pub gates: Vec<crate::gate::Gate>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_error_rate: 0.05,
            min_requests: 200,
            window_seconds: 120,
            bake_seconds: 300,
            require_approval: false,
            destructive_requires_approval: false,
            preview_reads: false,
            gates: Vec::new(),
        }
    }
}

impl Policy {
    /// Checks the ranges; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_error_rate) || self.max_error_rate.is_nan() {
            return Err(format!(
                "max-error-rate {} must be between 0 and 1",
                self.max_error_rate
            ));
        }
        if self.min_requests == 0 {
            return Err("min-requests must be at least 1: too little data is never a pass".into());
        }
        if !(1..=86_400).contains(&self.window_seconds) {
            return Err(format!(
                "window {} s must be 1 to 86400",
                self.window_seconds
            ));
        }
        if self.bake_seconds > 7 * 86_400 {
            return Err(format!(
                "bake {} s must be at most 7 days",
                self.bake_seconds
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Paused,
    /// The last step (100%) was taken: the version was flipped to.
    Done,
    Aborted,
    /// The judge found a breach and moved everyone back.
    RolledBack,
}

/// A canary that the leader raises step by step while the judge passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub slot: Slot,
    pub version: String,
    /// Weights in basis points, ascending; 10000 means a flip.
    pub steps_bp: Vec<u32>,
    pub interval_seconds: u64,
    /// Index of the step currently applied.
    pub step: usize,
    pub state: RolloutState,
    pub started_by: String,
    pub started_at_ms: u64,
    /// When the current step was applied; the next one is due an interval later.
    pub step_at_ms: u64,
    /// Why the rollout is where it is (the last verdict, or who paused it).
    pub note: String,
}

impl Rollout {
    pub fn is_active(&self) -> bool {
        matches!(self.state, RolloutState::Running | RolloutState::Paused)
    }

    /// The weight of the step after the current one, if any.
    pub fn next_weight_bp(&self) -> Option<u32> {
        self.steps_bp.get(self.step + 1).copied()
    }
}

/// Outcomes an application reported for one version through a sidecar, counted since the
/// sidecar started (the judge takes differences between samples).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReports {
    pub version: String,
    pub ok: u64,
    pub errors: u64,
}

/// A sidecar's report of what it serves, bound to its lease so that it vanishes with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub id: String,
    pub namespace: String,
    /// The routing epoch the sidecar serves; 0 before its first load.
    pub epoch: u64,
    pub serving: Vec<ServedSet>,
    pub etcd_reachable: bool,
    pub at_ms: u64,
    /// When this sidecar process started: a new value means its report counters restarted.
    #[serde(default)]
    pub started_at_ms: u64,
    /// Cumulative outcomes per version since `started_at_ms`.
    #[serde(default)]
    pub reports: Vec<VersionReports>,
    /// The manifest hash of the set routing asks to prepare (`Routing::prepare`), once this
    /// sidecar holds it loaded and verified: its acknowledgement of a synchronized flip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<String>,
    /// The epoch of the last routing this sidecar switched to, and when it switched (Unix
    /// microseconds by its own clock): the measure of a synchronized flip's spread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at_us: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedSet {
    pub slot: Slot,
    pub version: String,
    pub checksum: String,
}

/// The last record of a namespace's audit chain, compared in every audited transaction so that
/// the chain never forks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// Who did what, when, why, with the evidence (invariant 8). `hash` covers every other field
/// and the previous record's hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub namespace: String,
    pub actor: String,
    pub action: String,
    pub reason: String,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The hash this record must carry: SHA-256 over the previous hash and the canonical JSON
    /// of every field but `hash`.
    pub fn compute_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let body = serde_json::json!({
            "seq": self.seq,
            "at_ms": self.at_ms,
            "namespace": self.namespace,
            "actor": self.actor,
            "action": self.action,
            "reason": self.reason,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
        });
        let mut hasher = Sha256::new();
        hasher.update(self.prev_hash.as_bytes());
        hasher.update(crate::set::canonical_json(&body));
        hex::encode(hasher.finalize())
    }
}

/// The status document: `sbctl status --json` prints it, the coordinator's HTTP API serves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamespaceStatus {
    pub namespace: String,
    pub epoch: u64,
    pub active: Option<StatusSlotVersion>,
    pub canary: Option<StatusCanary>,
    pub previous: Option<StatusSlotVersion>,
    pub slots: StatusSlots,
    pub sidecars: Vec<StatusSidecar>,
    pub last_change: Option<StatusChange>,
    /// Until when the previous set stays hot after a flip.
    #[serde(default)]
    pub bake_until_ms: Option<u64>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// The coordinator replica that runs the judge and rollouts, if one is elected.
    #[serde(default)]
    pub leader: Option<String>,
    /// The approvals of the versions the two slots hold.
    #[serde(default)]
    pub approvals: Vec<Approval>,
}

/// An approver's consent to serve one exact version: void for any other manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub namespace: String,
    pub version: String,
    /// The hash of the manifest approved; a canary or flip checks this, not the version name.
    pub manifest: String,
    pub approved_by: String,
    /// Who staged the version, who therefore could not approve it.
    pub staged_by: String,
    pub reason: String,
    pub at_ms: u64,
}

/// A version as it was sealed, kept while its manifest is retained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: String,
    pub manifest: String,
    pub checksum: String,
    pub item_count: u64,
    pub bytes: u64,
    pub staged_by: String,
    pub message: String,
    /// When it was sealed (the last time, if it was staged more than once).
    pub at_ms: u64,
    /// The contract the set was sealed under, as its slot recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Why the version needs a second person's approval before a canary or a flip, as its
    /// seal decided: a version restaged from the history (`rollback --to`) needs it as much as
    /// it did the first time. Records written before this field have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval_reasons: Vec<String>,
}

impl HistoryEntry {
    /// The history record of a sealed slot.
    pub fn of_sealed(slot: &SlotRef) -> Self {
        Self {
            version: slot.version.clone(),
            manifest: slot.manifest.clone(),
            checksum: slot.checksum.clone(),
            item_count: slot.item_count,
            bytes: slot.bytes,
            staged_by: slot.staged_by.clone(),
            message: slot.message.clone(),
            at_ms: slot.at_ms,
            contract: slot.contract.clone(),
            approval_reasons: slot.approval_reasons.clone(),
        }
    }

    /// The record of a slot sealed with this version, as its last staging left it.
    pub fn sealed_slot(&self) -> SlotRef {
        SlotRef {
            version: self.version.clone(),
            manifest: self.manifest.clone(),
            state: SlotState::Sealed,
            item_count: self.item_count,
            bytes: self.bytes,
            checksum: self.checksum.clone(),
            seed: crate::bucket::seed_for_checksum(&self.checksum),
            staged_by: self.staged_by.clone(),
            message: self.message.clone(),
            at_ms: self.at_ms,
            contract: self.contract.clone(),
            approval_reasons: self.approval_reasons.clone(),
        }
    }
}

/// `sbctl history`: the versions of a namespace, newest first, with where each is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub namespace: String,
    pub versions: Vec<HistoryVersion>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryVersion {
    #[serde(flatten)]
    pub entry: HistoryEntry,
    /// Whether its manifest is still in etcd, so that `rollback --to` and `snapshot save
    /// --version` can use it.
    pub retained: bool,
    /// "active", "canary", "previous", "staged" (in the idle slot) or "" (in no slot).
    pub role: String,
    /// Who approved it.
    pub approved_by: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSlotVersion {
    pub slot: Slot,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusCanary {
    pub slot: Slot,
    pub version: String,
    pub percent: f64,
    pub weight_bp: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSlots {
    pub blue: Option<SlotRef>,
    pub green: Option<SlotRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSidecar {
    pub id: String,
    pub epoch: u64,
    pub serving: Vec<ServedSet>,
    pub etcd_reachable: bool,
    pub at_ms: u64,
    /// Cumulative outcomes per version that applications reported through this sidecar.
    #[serde(default)]
    pub reports: Vec<VersionReports>,
    /// Set when the sidecar, on the current epoch, serves something other than routing says
    /// (another version or another checksum): what differs.
    #[serde(default)]
    pub drift: Option<String>,
    /// The manifest hash of the prepared set this sidecar acknowledged, during a
    /// synchronized flip's preparation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<String>,
    /// The epoch this sidecar last switched to, and when (Unix microseconds, its clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at_us: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub action: String,
    pub by: String,
    pub reason: String,
    pub at_ms: u64,
}

/// The outcome of a routing change, returned to sbctl.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingChange {
    pub namespace: String,
    pub routing: Routing,
    pub audit_seq: u64,
    /// How a synchronized flip's preparation went; absent for every other change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncPrepared>,
}

/// The preparation of a synchronized flip, as the coordinator saw it before the commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPrepared {
    /// The epoch of the routing that asked the sidecars to prepare.
    pub prepare_epoch: u64,
    /// The live sidecars that acknowledged the prepared set, sorted: every live one did.
    pub acknowledged: Vec<String>,
    /// From the prepare write to the last acknowledgement.
    pub ack_wait_ms: u64,
    /// How far after the commit the activation point was set.
    pub lead_ms: u64,
    /// The activation point, Unix ms: `routing.activate_at_ms`.
    pub activate_at_ms: u64,
}

/// The outcome of sealing a slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SealOutcome {
    pub namespace: String,
    pub slot: Slot,
    pub version: String,
    pub item_count: u64,
    pub bytes: u64,
    /// The contract that judged the set (its hash), when the namespace has one.
    #[serde(default)]
    pub contract: Option<String>,
    /// The destructive changes the caller allowed.
    #[serde(default)]
    pub destructive: Vec<String>,
    /// The contract rules' `warn` messages.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why the version needs an approval before a canary or a flip.
    #[serde(default)]
    pub approval_reasons: Vec<String>,
    /// Where the seal's time went, so that a release manager (and the benchmark) can see what
    /// the contract costs. Absent from coordinators older than the contract.
    #[serde(default)]
    pub timings: Option<SealTimings>,
}

/// The seal's judgement of a staged set, timed in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SealTimings {
    /// Reading every chunk back from etcd, verifying it, and checking it against the contract:
    /// the whole judgement, rules included.
    pub judge_ms: f64,
    /// Of that, validating items against the contract's schemas and classifying the changes
    /// against the active set (the work the contract adds to the verification).
    pub check_ms: f64,
    /// Of that, what the seal waited for the contract's Rego rules once the set was read and
    /// checked. When the rules see every item, the rule worker has parsed most of them while
    /// the rest were being read.
    pub rules_ms: f64,
    /// Of that, the rules' evaluation itself, their input parsed.
    #[serde(default)]
    pub rules_evaluate_ms: f64,
}

/// The audit trail and, when asked, the result of checking its chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditTrail {
    pub namespace: String,
    pub records: Vec<AuditRecord>,
    pub verified: Option<AuditVerification>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerification {
    pub intact: bool,
    /// The first record that does not match, with what is wrong with it.
    pub first_bad_seq: Option<u64>,
    pub problem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A routing record written before synchronized flips existed.
    const OLD_ROUTING: &str = r#"{"epoch":7,"active":{"slot":"blue","version":"v1","manifest":"m1"},
        "canary":null,"previous":null,"bake_until_ms":null,"action":"flip","by":"alice",
        "reason":"","at_ms":1}"#;

    /// A version restaged from the history keeps what its seal decided: without the approval
    /// reasons, `rollback --to` a version that needed a second person's approval would flip to
    /// it without one.
    #[test]
    fn a_version_restaged_from_the_history_keeps_its_seal_s_judgement() {
        let sealed = SlotRef {
            version: "abcdef0123456789".into(),
            manifest: "m".repeat(64),
            state: SlotState::Sealed,
            item_count: 3,
            bytes: 300,
            checksum: "c".repeat(64),
            seed: 7,
            staged_by: "alice".into(),
            message: "drop a column".into(),
            at_ms: 1,
            contract: Some("contract-hash".into()),
            approval_reasons: vec!["destructive: tables/orders: field removed".into()],
        };
        let entry = HistoryEntry::of_sealed(&sealed);
        let stored: HistoryEntry =
            serde_json::from_str(&serde_json::to_string(&entry).expect("encodes"))
                .expect("decodes");
        let restaged = stored.sealed_slot();
        assert_eq!(restaged.approval_reasons, sealed.approval_reasons);
        assert_eq!(restaged.contract, sealed.contract);
        assert_eq!(
            restaged.seed,
            crate::bucket::seed_for_checksum(&sealed.checksum)
        );
        // A record written before the fields existed reads as none.
        let old = r#"{"version":"v","manifest":"m","checksum":"c","item_count":1,"bytes":1,"staged_by":"a","message":"","at_ms":1}"#;
        let old: HistoryEntry = serde_json::from_str(old).expect("an old record parses");
        assert!(old.sealed_slot().approval_reasons.is_empty());
    }

    #[test]
    fn old_routing_parses_without_the_sync_fields() {
        let routing: Routing = serde_json::from_str(OLD_ROUTING).expect("old routing parses");
        assert_eq!(routing.epoch, 7);
        assert_eq!(routing.prepare, None);
        assert_eq!(routing.activate_at_ms, None);
    }

    #[test]
    fn absent_sync_fields_are_not_written() {
        let routing: Routing = serde_json::from_str(OLD_ROUTING).expect("old routing parses");
        let json = serde_json::to_string(&routing).expect("serializes");
        assert!(!json.contains("prepare"), "{json}");
        assert!(!json.contains("activate_at_ms"), "{json}");
        let synced = Routing {
            prepare: Some(routing.active.clone()),
            activate_at_ms: Some(42),
            ..routing
        };
        let back: Routing =
            serde_json::from_str(&serde_json::to_string(&synced).expect("serializes"))
                .expect("parses");
        assert_eq!(back, synced);
    }

    #[test]
    fn old_health_record_and_change_parse() {
        let health: HealthRecord = serde_json::from_str(
            r#"{"id":"s1","namespace":"cat","epoch":3,"serving":[],"etcd_reachable":true,"at_ms":5}"#,
        )
        .expect("old health record parses");
        assert_eq!(health.prepared, None);
        assert_eq!(health.activated_epoch, None);
        assert_eq!(health.activated_at_us, None);
        let change: RoutingChange = serde_json::from_str(&format!(
            r#"{{"namespace":"cat","routing":{OLD_ROUTING},"audit_seq":2}}"#
        ))
        .expect("old change parses");
        assert_eq!(change.sync, None);
    }
}

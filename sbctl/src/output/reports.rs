//! The reports sbctl builds and prints, and the `--json` documents made of them: the wait
//! for sidecars, the synchronized flip, the stage and the plan.

use super::*;

/// How `flip --wait` ended; the `wait` member of its `--json` document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WaitReport {
    pub epoch: u64,
    /// Every live sidecar serves `epoch` or a later one.
    pub converged: bool,
    /// Live sidecars at the last status read.
    pub sidecars: usize,
    /// The ids of those not on `epoch` yet.
    pub behind: Vec<String>,
}

/// The one `--json` document of `flip --wait`: the coordinator's routing change as it came,
/// plus `"wait"`.
pub fn flip_wait_document(change: &serde_json::Value, wait: &WaitReport) -> serde_json::Value {
    let wait = serde_json::json!({
        "epoch": wait.epoch,
        "converged": wait.converged,
        "sidecars": wait.sidecars,
        "behind": wait.behind,
    });
    match change {
        serde_json::Value::Object(map) => {
            let mut map = map.clone();
            map.insert("wait".to_string(), wait);
            serde_json::Value::Object(map)
        }
        other => serde_json::json!({ "change": other, "wait": wait }),
    }
}

/// What `flip --sync` measured: when each acknowledged sidecar switched to the flip's epoch,
/// against the activation point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub epoch: u64,
    pub prepare_epoch: u64,
    pub acknowledged: usize,
    pub ack_wait_ms: u64,
    pub lead_ms: u64,
    pub activate_at_ms: u64,
    /// Every acknowledged sidecar reported a switch to `epoch`, moved past it, or left.
    pub converged: bool,
    /// Each sidecar that reported its switch to `epoch`, by id.
    pub sidecars: Vec<SyncSidecar>,
    /// Acknowledged sidecars not switched yet.
    pub behind: Vec<String>,
    /// Acknowledged sidecars that are no longer live (their health record went).
    pub gone: Vec<String>,
    /// Acknowledged sidecars already on a later epoch, whose switch to `epoch` is not known.
    pub moved_on: Vec<String>,
    /// Latest switch minus earliest, over `sidecars`; `None` without any.
    pub spread_us: Option<u64>,
    /// The earliest and the latest switch relative to the activation point (negative: early).
    pub min_late_us: Option<i64>,
    pub max_late_us: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncSidecar {
    pub id: String,
    pub activated_at_us: u64,
    pub late_us: i64,
}

impl SyncReport {
    /// Reads from `status` how far the acknowledged sidecars are with `epoch`.
    pub fn measure(
        status: &NamespaceStatus,
        epoch: u64,
        prepared: &switchboard_proto::SyncPrepared,
    ) -> SyncReport {
        let point_us = i128::from(prepared.activate_at_ms) * 1000;
        let mut report = SyncReport {
            epoch,
            prepare_epoch: prepared.prepare_epoch,
            acknowledged: prepared.acknowledged.len(),
            ack_wait_ms: prepared.ack_wait_ms,
            lead_ms: prepared.lead_ms,
            activate_at_ms: prepared.activate_at_ms,
            converged: false,
            sidecars: Vec::new(),
            behind: Vec::new(),
            gone: Vec::new(),
            moved_on: Vec::new(),
            spread_us: None,
            min_late_us: None,
            max_late_us: None,
        };
        for id in &prepared.acknowledged {
            let Some(sidecar) = status.sidecars.iter().find(|s| &s.id == id) else {
                report.gone.push(id.clone());
                continue;
            };
            match (sidecar.activated_epoch, sidecar.activated_at_us) {
                (Some(e), Some(at_us)) if e == epoch => {
                    let late = i128::from(at_us) - point_us;
                    report.sidecars.push(SyncSidecar {
                        id: id.clone(),
                        activated_at_us: at_us,
                        late_us: i64::try_from(late).unwrap_or(i64::MAX),
                    });
                }
                (Some(e), _) if e > epoch => report.moved_on.push(id.clone()),
                _ => report.behind.push(id.clone()),
            }
        }
        report.converged = report.behind.is_empty();
        let times = report.sidecars.iter().map(|s| s.activated_at_us);
        if let (Some(min), Some(max)) = (times.clone().min(), times.max()) {
            report.spread_us = Some(max - min);
        }
        report.min_late_us = report.sidecars.iter().map(|s| s.late_us).min();
        report.max_late_us = report.sidecars.iter().map(|s| s.late_us).max();
        report
    }
}

/// The one `--json` document of `flip --sync`: the coordinator's routing change as it came,
/// with the measurements added to its `sync` member.
pub fn sync_flip_document(change: &serde_json::Value, report: &SyncReport) -> serde_json::Value {
    let mut document = change.clone();
    let measured = serde_json::to_value(report).unwrap_or_default();
    if let (Some(sync), serde_json::Value::Object(measured)) = (
        document.get_mut("sync").and_then(|s| s.as_object_mut()),
        measured,
    ) {
        for (name, value) in measured {
            // The coordinator's list of acknowledging sidecars stays; the count is `acknowledged`
            // there already.
            if name != "acknowledged" {
                sync.insert(name, value);
            }
        }
    }
    document
}

/// What `sbctl stage` did; its `--json` document.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageReport {
    pub namespace: String,
    pub slot: Slot,
    pub version: String,
    /// `staged`, `already_staged` or `already_active`.
    pub outcome: String,
    pub items: u64,
    pub bytes: u64,
    pub chunks_total: u64,
    pub chunks_uploaded: u64,
    /// Bytes of all the set's chunks, and of the chunks this stage had to upload (those etcd
    /// did not hold already).
    #[serde(default)]
    pub chunk_bytes_total: u64,
    #[serde(default)]
    pub chunk_bytes_uploaded: u64,
    /// Pages of the manifest's chunk list, and those this stage had to upload.
    #[serde(default)]
    pub pages_total: u64,
    #[serde(default)]
    pub pages_uploaded: u64,
    /// Bytes of manifest sent to the coordinator: the head (once per request) and the pages
    /// uploaded.
    #[serde(default)]
    pub manifest_bytes_uploaded: u64,
    /// The sealed version the idle slot held before this stage overwrote it.
    pub replaced_version: Option<String>,
    /// The contract rules' `warn` messages at the seal.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why the version needs an approval before a canary or a flip.
    #[serde(default)]
    pub approval_reasons: Vec<String>,
    /// Where the seal's time went: reading the set back, the contract's checks, the rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_timings: Option<switchboard_proto::SealTimings>,
}

/// What `sbctl plan` found; its `--json` document. `classes` counts the changes of each class
/// and `items` holds every added, changed or removed item with its changes
/// ([`crate::compat`]), sensitive values redacted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanReport {
    pub namespace: String,
    pub active_version: Option<String>,
    pub new_version: String,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: u64,
    pub classes: crate::compat::ClassCounts,
    pub items: Vec<crate::compat::ItemPlan>,
    /// What the namespace's contract would say at the seal (`sbctl plan` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractPreview>,
}

/// The verdict of the namespace's contract on a set, judged before staging by the code the
/// coordinator runs at the seal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContractPreview {
    /// The contract's short hash.
    pub contract: String,
    pub violation_total: u64,
    /// The first violations, each naming the item and the path.
    pub violations: Vec<String>,
    pub deny: Vec<String>,
    pub warn: Vec<String>,
    pub approval: Vec<String>,
    /// The seal's refusal, word for word, if the seal would refuse the set.
    pub refusal: Option<String>,
}

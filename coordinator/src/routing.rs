//! Routing changes: canary, flip, rollback, rollouts, the judge policy, and the leader's
//! automatic actions (flip-back on a breach, rollout steps, the end of the bake time).
//!
//! Every change is one etcd transaction (invariant 2). It compares, against the state it was
//! decided on, the routing key, the slots it moves consumers to, the rollout record and the
//! audit head, and that the next audit record's key does not exist yet. It writes the new
//! routing, the rollout record and the audit record together (invariant 8). Changes made by
//! the leader also compare the leader's election key, so a deposed leader's queued writes fail.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::json;
use switchboard_proto::bucket::percent;
use switchboard_proto::judge::Verdict;
use switchboard_proto::time::{now_ms, rfc3339_ms};
use switchboard_proto::{
    BUCKETS, Canary, HealthRecord, Policy, Rollout, RolloutState, Routing, RoutingChange, Slot,
    SlotRef, SlotState, SlotVersion, SyncPrepared,
};
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::convergence::HealthView;
use crate::crash;
use crate::error::{CoordinatorError, Result};
use crate::release::{
    Actor, AuditedChange, BeginStage, MAX_ATTEMPTS, Releases, append_audit_record, busy,
    check_namespace, to_json, unique,
};
use crate::store::{NamespaceState, parse_record, unchanged};

/// The leader's claim: its key under the election name, and the revision that created it. A
/// leader whose lease expired has lost that key, and every write fenced with it fails.
#[derive(Clone, Debug)]
pub struct Fence {
    pub key: Vec<u8>,
    pub revision: i64,
}

impl Fence {
    pub(crate) fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }
}

/// Who changes what, decided against which epoch.
#[derive(Clone, Copy)]
pub struct ChangeRequest<'a> {
    pub ns: &'a str,
    pub expected_epoch: u64,
    pub action: &'a str,
    pub reason: &'a str,
    pub actor: &'a Actor,
    pub fence: Option<&'a Fence>,
}

impl<'a> ChangeRequest<'a> {
    /// A change asked for by a person (through sbctl or the dashboard): no leader's fence.
    pub fn by_person(
        ns: &'a str,
        expected_epoch: u64,
        action: &'a str,
        reason: &'a str,
        actor: &'a Actor,
    ) -> Self {
        Self {
            ns,
            expected_epoch,
            action,
            reason,
            actor,
            fence: None,
        }
    }
}

/// What happens to the rollout record with a routing change.
enum RolloutAfter {
    /// A change made by hand ends a running or paused rollout: people and automation must not
    /// fight over the canary weight.
    EndActive,
    /// The change does not concern the rollout (the end of the bake time).
    Keep,
    Put(Rollout),
}

/// The longest activation lead a synchronized flip accepts.
pub const MAX_SYNC_LEAD_MS: u64 = 60_000;
/// The longest a synchronized flip waits for its sidecars' acknowledgements.
pub const MAX_SYNC_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// The defaults when the request leaves them at 0.
pub const DEFAULT_SYNC_LEAD_MS: u64 = 250;
/// How old a synchronized flip's preparation is when the leader withdraws it: no coordinator
/// waits for acknowledgements longer than [`MAX_SYNC_ACK_TIMEOUT`], so an older one was left by
/// a coordinator that died between the preparation and the commit.
pub const STALE_PREPARATION_MS: u64 = MAX_SYNC_ACK_TIMEOUT.as_secs() * 1000 + 10_000;
pub const DEFAULT_SYNC_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a routing change does with the fields of a synchronized flip.
#[derive(Clone, Copy, Debug)]
enum SyncStep {
    /// Not a step of a synchronized flip: both fields are cleared.
    None,
    /// The preparation: the decision's `prepare` is written, `activate_at_ms` cleared.
    Prepare,
    /// The commit: `prepare` is cleared, and sidecars switch `lead_ms` after the commit.
    Activate { lead_ms: u64 },
}

/// A routing change decided on one consistent read.
struct Decision {
    routing: Routing,
    compare_slots: Vec<Slot>,
    detail: serde_json::Value,
    rollout: RolloutAfter,
    /// The set the change moves consumers to, when it moves any there (a canary above 0% or
    /// a flip): the namespace's gates must hold for it, and its approval when required.
    target: Option<Target>,
}

/// What a change moves consumers to, and whether it needs an approval when the policy asks
/// for one. Rollout steps taken by the leader do not: the rollout's start needed it.
struct Target {
    slot_ref: SlotRef,
    needs_approval: bool,
}

impl Target {
    fn approved(slot_ref: &SlotRef) -> Option<Target> {
        Some(Target {
            slot_ref: slot_ref.clone(),
            needs_approval: true,
        })
    }
}

/// Where a rollout moves consumers: the canary at a weight, or everyone (a flip).
fn apply_weight(
    routing: &Routing,
    target: &SlotRef,
    slot: Slot,
    weight_bp: u32,
    policy: &Policy,
) -> Routing {
    if weight_bp >= BUCKETS {
        return flipped(routing, target, slot, policy);
    }
    Routing {
        canary: canary_of(target, slot, weight_bp),
        ..routing.clone()
    }
}

/// A canary of `weight_bp` for the set in `slot`; none at 0, which frees the slot again.
fn canary_of(target: &SlotRef, slot: Slot, weight_bp: u32) -> Option<Canary> {
    (weight_bp > 0).then(|| Canary {
        slot,
        version: target.version.clone(),
        manifest: target.manifest.clone(),
        weight_bp,
        seed: target.seed,
    })
}

/// The acknowledgements of a routing change a second that a fleet is asked to keep to, by
/// default (`--acknowledgements-per-second`): each sidecar writes its health record when what
/// it serves changes, and 10,000 of them writing within the same second put etcd (one member
/// on two cores) seconds behind on applying writes, during which etcd 3.4 renews no lease, and
/// the leader's 3 s election lease expired (BENCHMARKS.md, "fleet"). A fleet of up to this many
/// acknowledges at once, as before.
pub const ACKNOWLEDGEMENTS_PER_SECOND: u64 = 1_000;

/// The longest spread asked for, whatever the fleet: `status` shows a record's epoch this late
/// at most.
const MOST_ACKNOWLEDGEMENT_SPREAD_MS: u64 = 30_000;

/// Over how long (ms) the `streaming` sidecars of a namespace should spread their
/// acknowledgements of a routing change to keep etcd to `per_second` of them: none up to that
/// many sidecars, then a second for each as many. Only the leader counts the streams; a change
/// made elsewhere asks for no spread.
fn acknowledgement_spread_ms(streaming: usize, per_second: u64) -> Option<u64> {
    let streaming = u64::try_from(streaming).unwrap_or(u64::MAX);
    let per_second = per_second.max(1);
    (streaming > per_second)
        .then(|| (streaming.saturating_mul(1000) / per_second).min(MOST_ACKNOWLEDGEMENT_SPREAD_MS))
}

/// Everyone to `slot`; the old active set stays hot for the bake time.
fn flipped(routing: &Routing, target: &SlotRef, slot: Slot, policy: &Policy) -> Routing {
    let active = SlotVersion {
        slot,
        version: target.version.clone(),
        manifest: target.manifest.clone(),
    };
    let bake_until_ms =
        (policy.bake_seconds > 0).then(|| now_ms().saturating_add(policy.bake_seconds * 1000));
    Routing {
        active,
        canary: None,
        previous: Some(routing.active.clone()),
        bake_until_ms,
        ..routing.clone()
    }
}

impl Releases {
    pub async fn set_canary(
        &self,
        request: ChangeRequest<'_>,
        weight_bp: u32,
        expected_version: &str,
    ) -> Result<RoutingChange> {
        if weight_bp > BUCKETS {
            return Err(CoordinatorError::InvalidInput(format!(
                "canary weight {weight_bp} basis points is over {BUCKETS} (100%)"
            )));
        }
        let ns = request.ns;
        self.change_routing(request, |state, routing| {
            let routing = routing.ok_or_else(|| nothing_active(ns))?;
            let slot = routing.active.slot.other();
            let target = sealed_target(ns, state, slot, &routing.active)?;
            check_expected_version(ns, slot, &target, expected_version)?;
            let canary = canary_of(&target, slot, weight_bp);
            // Only raising the share of consumers on a version needs its approval and gates:
            // lowering it is a step back, like a rollback.
            let live_weight = routing
                .live_canary()
                .filter(|c| c.manifest == target.manifest)
                .map_or(0, |c| c.weight_bp);
            let gated = if weight_bp > live_weight {
                Target::approved(&target)
            } else {
                None
            };
            Ok(Decision {
                target: gated,
                detail: json!({
                    "slot": slot,
                    "version": target.version,
                    "from_percent": routing.live_canary().map_or(0.0, |c| percent(c.weight_bp)),
                    "to_percent": percent(weight_bp),
                }),
                routing: Routing {
                    canary,
                    ..routing.clone()
                },
                compare_slots: vec![slot],
                rollout: RolloutAfter::EndActive,
            })
        })
        .await
    }

    pub async fn flip(
        &self,
        request: ChangeRequest<'_>,
        expected_version: &str,
    ) -> Result<RoutingChange> {
        let ns = request.ns;
        self.change_routing(request, |state, routing| {
            let Some(routing) = routing else {
                return first_flip(ns, state, expected_version);
            };
            flip_decision(ns, state, routing, expected_version)
        })
        .await
    }

    /// A synchronized flip: the sidecars load and acknowledge the target first, then the flip
    /// commits with an activation point `lead` ahead, at which every sidecar switches.
    ///
    /// 1. The preparation is a routing change of its own (action `prepare`, audited), made only
    ///    if the flip itself could be made now: the same target, expected version, approval and
    ///    gates. It names the target in `prepare` and serves nothing new.
    /// 2. Every live sidecar (every health record) must acknowledge it within `ack_timeout`.
    ///    Otherwise the preparation is withdrawn (action `prepare-cancel`) and the flip refused,
    ///    naming the sidecars that did not acknowledge.
    /// 3. The flip commits exactly as a plain flip does, compared against the preparation's
    ///    epoch, so that any change in between makes it a conflict.
    pub async fn sync_flip(
        &self,
        request: ChangeRequest<'_>,
        expected_version: &str,
        lead: std::time::Duration,
        ack_timeout: std::time::Duration,
        stop: &CancellationToken,
    ) -> Result<RoutingChange> {
        let ns = request.ns;
        check_namespace(ns)?;
        let lead_ms = u64::try_from(lead.as_millis()).unwrap_or(u64::MAX);
        if lead_ms == 0 || lead_ms > MAX_SYNC_LEAD_MS {
            return Err(CoordinatorError::InvalidInput(format!(
                "a synchronized flip's lead of {lead_ms} ms must be 1 to {MAX_SYNC_LEAD_MS} ms"
            )));
        }
        if ack_timeout.is_zero() || ack_timeout > MAX_SYNC_ACK_TIMEOUT {
            return Err(CoordinatorError::InvalidInput(format!(
                "a synchronized flip's acknowledgement timeout of {ack_timeout:?} must be above 0 and at most {MAX_SYNC_ACK_TIMEOUT:?}"
            )));
        }
        let prepare_request = ChangeRequest {
            action: "prepare",
            ..request
        };
        let prepared = self
            .change_routing_with(prepare_request, SyncStep::Prepare, |state, routing| {
                let routing = routing.ok_or_else(|| {
                    CoordinatorError::Refused(format!(
                        "nothing is active in {ns} yet, so no sidecar serves anything to switch from: make the first flip without --sync"
                    ))
                })?;
                let flip = flip_decision(ns, state, routing, expected_version)?;
                let target = flip.routing.active.clone();
                Ok(Decision {
                    detail: json!({
                        "prepare": {"slot": target.slot, "version": target.version},
                        "lead_ms": lead_ms,
                    }),
                    routing: Routing {
                        prepare: Some(target),
                        ..routing.clone()
                    },
                    compare_slots: flip.compare_slots,
                    // Preparing moves nobody: a running rollout goes on until the commit.
                    rollout: RolloutAfter::Keep,
                    target: flip.target,
                })
            })
            .await?;
        let prepare_epoch = prepared.routing.epoch;
        let target =
            prepared
                .routing
                .prepare
                .clone()
                .ok_or_else(|| CoordinatorError::CorruptRecord {
                    key: self.store().keys().routing(ns),
                    reason: "the preparation was written without its target".into(),
                })?;
        let started = std::time::Instant::now();
        let acknowledged = match self
            .await_acknowledgements(ns, prepare_epoch, &target, ack_timeout, stop)
            .await
        {
            Ok(acknowledged) => acknowledged,
            Err(error) => {
                self.cancel_prepare(&request, prepare_epoch, &error).await;
                return Err(error);
            }
        };
        let ack_wait_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let sync_detail = json!({
            "prepare_epoch": prepare_epoch,
            "acknowledged": acknowledged.len(),
            "ack_wait_ms": ack_wait_ms,
            "lead_ms": lead_ms,
        });
        let commit_request = ChangeRequest {
            expected_epoch: prepare_epoch,
            ..request
        };
        let committed = self
            .change_routing_with(
                commit_request,
                SyncStep::Activate { lead_ms },
                |state, routing| {
                    let routing = routing.ok_or_else(|| nothing_active(ns))?;
                    let mut decision = flip_decision(ns, state, routing, &target.version)?;
                    if let Some(detail) = decision.detail.as_object_mut() {
                        detail.insert("sync".into(), sync_detail.clone());
                    }
                    Ok(decision)
                },
            )
            .await;
        match committed {
            Ok(mut change) => {
                let activate_at_ms = change
                    .routing
                    .activate_at_ms
                    .unwrap_or(change.routing.at_ms);
                change.sync = Some(SyncPrepared {
                    prepare_epoch,
                    acknowledged,
                    ack_wait_ms,
                    lead_ms,
                    activate_at_ms,
                });
                Ok(change)
            }
            Err(error) => {
                self.cancel_prepare(&request, prepare_epoch, &error).await;
                Err(error)
            }
        }
    }

    /// Waits until every live sidecar of `ns` holds the prepared set: its health record is on
    /// the preparation's epoch or later and names the prepared manifest. Returns their ids, or
    /// a refusal naming those that did not acknowledge in time. A routing change meanwhile is
    /// a conflict at once, since the sidecars then drop the preparation. `stop` (the
    /// coordinator's shutdown) ends the wait with a refusal, so that the preparation is
    /// withdrawn before the coordinator exits rather than left in routing.
    async fn await_acknowledgements(
        &self,
        ns: &str,
        prepare_epoch: u64,
        target: &SlotVersion,
        timeout: std::time::Duration,
        stop: &CancellationToken,
    ) -> Result<Vec<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Watched, not polled: each acknowledgement wakes the wait as etcd delivers it, and
        // etcd is not asked for every health record again and again while a fleet loads.
        let keys = self.store().keys();
        let mut health = HealthView::open(self.store(), ns).await?;
        let mut routing_key = self.store().watch_records(&keys.routing(ns), false).await?;
        let acknowledged = |record: &HealthRecord| {
            record.epoch >= prepare_epoch
                && record.prepared.as_deref() == Some(target.manifest.as_str())
        };
        loop {
            let waiting = health.records().filter(|r| !acknowledged(r)).count();
            if waiting == 0 {
                let mut ids: Vec<String> = health.records().map(|r| r.id.clone()).collect();
                ids.sort();
                return Ok(ids);
            }
            let live = health.len();
            let routing: Option<Routing> = routing_key
                .values()
                .next()
                .map(|(key, value)| parse_record(key, value))
                .transpose()?;
            let epoch = routing.as_ref().map_or(0, |r| r.epoch);
            if epoch != prepare_epoch {
                return Err(conflict(ns, prepare_epoch, routing.as_ref()));
            }
            let timed_out = tokio::select! {
                changed = health.changed() => { changed?; false }
                changed = routing_key.changed() => { changed?; false }
                () = tokio::time::sleep_until(deadline) => true,
                () = stop.cancelled() => {
                    return Err(CoordinatorError::Refused(format!(
                        "the synchronized flip of {ns} to version {} is stopped: this coordinator is shutting down while {waiting} of {live} live sidecars have not acknowledged the prepared set; the preparation was withdrawn and nobody was moved; flip again through another coordinator",
                        target.version,
                    )));
                }
            };
            if timed_out {
                let mut names: Vec<(&str, u64)> = health
                    .records()
                    .filter(|r| !acknowledged(r))
                    .map(|r| (r.id.as_str(), r.epoch))
                    .collect();
                names.sort();
                let names: Vec<String> = names
                    .iter()
                    .map(|(id, epoch)| format!("{id} (epoch {epoch})"))
                    .collect();
                return Err(CoordinatorError::Refused(format!(
                    "the synchronized flip of {ns} to version {} is refused: {waiting} of {live} live sidecars did not acknowledge the prepared set within {timeout:?}: {}; the preparation was withdrawn and nobody was moved",
                    target.version,
                    names.join(", ")
                )));
            }
        }
    }

    /// Withdraws a preparation that will not be committed, so that sidecars stop holding the
    /// set. A routing change made meanwhile has cleared it already (every change but a
    /// synchronized flip's clears it), so a conflict here is not a failure; any failure is
    /// logged and the flip's own error is what the caller gets.
    async fn cancel_prepare(
        &self,
        request: &ChangeRequest<'_>,
        prepare_epoch: u64,
        why: &CoordinatorError,
    ) {
        let ns = request.ns;
        let reason = format!("synchronized flip not made: {why}");
        let cancel = ChangeRequest {
            ns,
            expected_epoch: prepare_epoch,
            action: "prepare-cancel",
            reason: &reason,
            actor: request.actor,
            fence: request.fence,
        };
        let cancelled = self
            .change_routing(cancel, |_, routing| {
                let routing = routing.ok_or_else(|| nothing_active(ns))?;
                let prepare = routing.prepare.as_ref().ok_or_else(|| {
                    CoordinatorError::Conflict(format!("{ns} has no preparation to withdraw"))
                })?;
                Ok(Decision {
                    detail: json!({"prepare": {"slot": prepare.slot, "version": prepare.version}}),
                    routing: routing.clone(),
                    compare_slots: vec![],
                    rollout: RolloutAfter::Keep,
                    target: None,
                })
            })
            .await;
        match cancelled {
            Ok(change) => {
                tracing::info!(
                    ns,
                    epoch = change.routing.epoch,
                    "synchronized flip's preparation withdrawn"
                )
            }
            Err(CoordinatorError::Conflict(message)) => {
                tracing::info!(ns, %message, "synchronized flip's preparation already superseded")
            }
            Err(error) => {
                tracing::error!(ns, %error, "synchronized flip's preparation could not be withdrawn; the next routing change clears it")
            }
        }
    }

    pub async fn rollback(&self, request: ChangeRequest<'_>) -> Result<RoutingChange> {
        let ns = request.ns;
        self.change_routing(request, |state, routing| {
            let routing = routing.ok_or_else(|| nothing_active(ns))?;
            if let Some(canary) = routing.live_canary() {
                return Ok(Decision {
                    detail: json!({
                        "kind": "canary",
                        "canary": {"slot": canary.slot, "version": canary.version, "percent": percent(canary.weight_bp)},
                        "to": {"slot": routing.active.slot, "version": routing.active.version},
                    }),
                    routing: Routing { canary: None, ..routing.clone() },
                    compare_slots: vec![],
                    rollout: RolloutAfter::EndActive,
                    target: None,
                });
            }
            flip_back(ns, state, routing, RolloutAfter::EndActive)
        })
        .await
    }

    /// Everyone to a retained version: restaged from what etcd still holds into the idle slot
    /// when no slot has it (the stage and its seal are audited as usual), then flipped to, with
    /// the approval and gates a flip needs. The previous set stays hot for the bake time, so
    /// the judge can flip back from this too.
    pub async fn rollback_to(
        &self,
        request: ChangeRequest<'_>,
        version: &str,
    ) -> Result<RoutingChange> {
        let ns = request.ns;
        check_namespace(ns)?;
        let state = self.store().read_namespace(ns).await?;
        let routing = state
            .routing
            .value
            .as_ref()
            .ok_or_else(|| nothing_active(ns))?;
        if state.epoch() != request.expected_epoch {
            return Err(conflict(ns, request.expected_epoch, Some(routing)));
        }
        if routing.active.version == version {
            return Err(CoordinatorError::Refused(format!(
                "version {version} is already active in {ns}"
            )));
        }
        let idle = routing.active.slot.other();
        let in_idle = state
            .slot(idle)
            .value
            .as_ref()
            .is_some_and(|s| s.version == version && s.state == SlotState::Sealed);
        if !in_idle {
            // Approval and gates are checked before the idle slot is touched: a refused
            // `--to` must not have replaced what that slot held (often the previous version,
            // which a plain rollback needs). The flip checks them again in its transaction.
            let entry = self.history_entry(ns, version).await?;
            let target = Target {
                slot_ref: SlotRef {
                    // Restaged by this actor, so that is whom an approval must not come from.
                    staged_by: request.actor.name.clone(),
                    ..entry.sealed_slot()
                },
                needs_approval: true,
            };
            self.check_preconditions(ns, request.action, &state, &target)
                .await?;
            self.restage_retained(ns, version, request.reason, request.actor)
                .await
                .map_err(|e| match e {
                    CoordinatorError::NotFound(message) => CoordinatorError::Refused(message),
                    other => other,
                })?;
        }
        self.flip(request, version).await
    }

    /// Stages a retained version again from the manifest and chunks etcd still holds.
    async fn restage_retained(
        &self,
        ns: &str,
        version: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<()> {
        let manifest = self.manifest(ns, None, Some(version)).await?;
        let hashes = unique(manifest.chunks.iter().map(|c| c.hash.clone()));
        let missing = self.store().missing_chunks(ns, &hashes).await?;
        if !missing.is_empty() {
            return Err(CoordinatorError::Refused(format!(
                "version {version} of {ns} is no longer retained: {} of its {} chunks were collected; restore it from a snapshot with `sbctl snapshot restore`",
                missing.len(),
                hashes.len()
            )));
        }
        let message = if reason.is_empty() {
            format!("rollback to {version}")
        } else {
            format!("rollback to {version}: {reason}")
        };
        let head = manifest.to_pages().0;
        let begun = self
            .begin_stage(ns, &head.to_canonical_json(), Vec::new(), &message, actor)
            .await?;
        match begun {
            BeginStage::Staging {
                slot,
                slot_revision,
                missing_chunks,
                ..
            } => {
                if !missing_chunks.is_empty() {
                    return Err(CoordinatorError::Conflict(format!(
                        "chunks of version {version} of {ns} vanished while it was restaged; retry"
                    )));
                }
                // Going back to a retained version undoes what came after it, so its
                // destructive changes are the point; the contract still judges it.
                self.seal(ns, slot, &manifest.hash(), slot_revision, true, actor)
                    .await?;
                Ok(())
            }
            BeginStage::AlreadyStaged { .. } => Ok(()),
            BeginStage::AlreadyActive { .. } => Err(CoordinatorError::Refused(format!(
                "version {version} is already active in {ns}"
            ))),
            BeginStage::PagesNeeded { missing_pages, .. } => {
                Err(CoordinatorError::Conflict(format!(
                    "{} pages of the manifest of version {version} of {ns} vanished while it was restaged; retry",
                    missing_pages.len()
                )))
            }
        }
    }

    /// Starts a rollout: the canary goes to the first step now, and the leader takes the next
    /// ones while the judge passes.
    pub async fn start_rollout(
        &self,
        request: ChangeRequest<'_>,
        steps_bp: &[u32],
        interval_seconds: u64,
        expected_version: &str,
    ) -> Result<RoutingChange> {
        check_steps(steps_bp, interval_seconds)?;
        let ns = request.ns;
        let by = request.actor.name.clone();
        self.change_routing(request, |state, routing| {
            let routing = routing.ok_or_else(|| nothing_active(ns))?;
            if let Some(running) = state.active_rollout() {
                return Err(CoordinatorError::Refused(format!(
                    "a rollout of version {} is {:?} in {ns}; abort it first with `sbctl rollout {ns} --abort`",
                    running.version, running.state
                )));
            }
            let slot = routing.active.slot.other();
            let target = sealed_target(ns, state, slot, &routing.active)?;
            check_expected_version(ns, slot, &target, expected_version)?;
            let first = steps_bp.first().copied().unwrap_or(BUCKETS);
            let now = now_ms();
            let rollout = Rollout {
                slot,
                version: target.version.clone(),
                steps_bp: steps_bp.to_vec(),
                interval_seconds,
                step: 0,
                state: if first >= BUCKETS { RolloutState::Done } else { RolloutState::Running },
                started_by: by.clone(),
                started_at_ms: now,
                step_at_ms: now,
                note: "started".into(),
            };
            Ok(Decision {
                detail: json!({
                    "slot": slot,
                    "version": target.version,
                    "steps_percent": steps_bp.iter().map(|w| percent(*w)).collect::<Vec<_>>(),
                    "interval_seconds": interval_seconds,
                }),
                routing: apply_weight(routing, &target, slot, first, &state.policy()),
                compare_slots: vec![slot],
                rollout: RolloutAfter::Put(rollout),
                target: Target::approved(&target),
            })
        })
        .await
    }

    /// Aborts a rollout: the canary goes back to 0, and the rollout is recorded as aborted.
    pub async fn abort_rollout(&self, request: ChangeRequest<'_>) -> Result<RoutingChange> {
        let ns = request.ns;
        let by = request.actor.name.clone();
        self.change_routing(request, |state, routing| {
            let routing = routing.ok_or_else(|| nothing_active(ns))?;
            let rollout = state.active_rollout().ok_or_else(|| no_rollout(ns))?;
            Ok(Decision {
                detail: json!({"version": rollout.version, "step_percent": current_percent(rollout)}),
                routing: Routing { canary: None, ..routing.clone() },
                compare_slots: vec![],
                target: None,
                rollout: RolloutAfter::Put(Rollout {
                    state: RolloutState::Aborted,
                    note: format!("aborted by {by}"),
                    ..rollout.clone()
                }),
            })
        })
        .await
    }

    /// Pauses (`pause: true`) or resumes a rollout; routing stays as it is.
    pub async fn pause_rollout(
        &self,
        ns: &str,
        pause: bool,
        reason: &str,
        actor: &Actor,
    ) -> Result<Rollout> {
        let action = if pause {
            "rollout-pause"
        } else {
            "rollout-resume"
        };
        self.change_record(ns, action, reason, actor, |state| {
            let rollout = state.active_rollout().ok_or_else(|| no_rollout(ns))?;
            let wanted = if pause {
                RolloutState::Paused
            } else {
                RolloutState::Running
            };
            if rollout.state == wanted {
                return Err(CoordinatorError::Refused(format!(
                    "the rollout of {ns} is already {wanted:?}"
                )));
            }
            let updated = Rollout {
                state: wanted,
                // Resuming starts the interval again, so that a step is never taken at once
                // on data gathered while nobody was watching.
                step_at_ms: if pause { rollout.step_at_ms } else { now_ms() },
                note: format!(
                    "{} by {}",
                    if pause { "paused" } else { "resumed" },
                    actor.name
                ),
                ..rollout.clone()
            };
            let detail =
                json!({"version": rollout.version, "step_percent": current_percent(rollout)});
            Ok((
                self.store().keys().rollout(ns),
                state.rollout.mod_revision,
                to_json(&updated),
                detail,
                updated,
            ))
        })
        .await
    }

    /// The rollout record, whatever its state.
    pub async fn current_rollout(&self, ns: &str) -> Result<Rollout> {
        check_namespace(ns)?;
        self.store()
            .read_namespace(ns)
            .await?
            .rollout
            .value
            .ok_or_else(|| no_rollout(ns))
    }

    /// Every gate of `ns` evaluated now against `version`, or against the version a canary or
    /// flip would move consumers to; changes nothing.
    pub async fn check_gates(
        &self,
        ns: &str,
        version: Option<&str>,
    ) -> Result<switchboard_proto::GateReport> {
        check_namespace(ns)?;
        let state = self.store().read_namespace(ns).await?;
        let target = match version {
            Some(version) => self.history_entry(ns, version).await?.sealed_slot(),
            None => match &state.routing.value {
                Some(routing) => sealed(ns, &state, routing.active.slot.other())?,
                None => sealed(ns, &state, first_slot_to_flip(ns, &state)?)?,
            },
        };
        let evaluation = self
            .gate_checker()
            .evaluate(self.store(), ns, &state.policy().gates, &target)
            .await?;
        Ok(switchboard_proto::GateReport {
            namespace: ns.to_string(),
            version: target.version,
            passed: evaluation.passed(),
            gates: evaluation.outcomes,
        })
    }

    pub async fn policy(&self, ns: &str) -> Result<Policy> {
        check_namespace(ns)?;
        Ok(self.store().read_namespace(ns).await?.policy())
    }

    pub async fn set_policy(
        &self,
        ns: &str,
        policy: Policy,
        expected: Option<&Policy>,
        reason: &str,
        actor: &Actor,
    ) -> Result<Policy> {
        policy.validate().map_err(CoordinatorError::InvalidInput)?;
        switchboard_proto::gate::validate_gates(&policy.gates, self.store().keys().prefix())
            .map_err(CoordinatorError::InvalidInput)?;
        self.change_record(ns, "policy", reason, actor, |state| {
            if let Some(expected) = expected
                && *expected != state.policy()
            {
                return Err(CoordinatorError::Conflict(format!(
                    "the policy of {ns} changed underneath; read it again with `sbctl policy show {ns}` and retry"
                )));
            }
            let detail = json!({"from": state.policy(), "to": policy});
            Ok((
                self.store().keys().policy(ns),
                state.policy.mod_revision,
                to_json(&policy),
                detail,
                policy.clone(),
            ))
        })
        .await
    }

    /// The judge's flip-back: the canary to 0, or, during the bake time, everyone back to the
    /// previous set. `candidate` is the version judged; if routing moved on, nothing happens.
    pub async fn automatic_rollback(
        &self,
        request: ChangeRequest<'_>,
        candidate: &str,
        verdict: &Verdict,
        policy: &Policy,
    ) -> Result<RoutingChange> {
        let ns = request.ns;
        let evidence =
            json!({"verdict": verdict, "policy": policy, "window_seconds": policy.window_seconds});
        self.change_routing(request, |state, routing| {
            let routing = routing.ok_or_else(|| nothing_active(ns))?;
            let rolled_back = |note: String| match state.active_rollout() {
                Some(rollout) => RolloutAfter::Put(Rollout {
                    state: RolloutState::RolledBack,
                    note,
                    ..rollout.clone()
                }),
                None => RolloutAfter::EndActive,
            };
            if let Some(canary) = routing.live_canary().filter(|c| c.version == candidate) {
                return Ok(Decision {
                    detail: json!({
                        "kind": "canary",
                        "canary": {"slot": canary.slot, "version": canary.version, "percent": percent(canary.weight_bp)},
                        "to": {"slot": routing.active.slot, "version": routing.active.version},
                        "evidence": evidence,
                    }),
                    routing: Routing { canary: None, ..routing.clone() },
                    compare_slots: vec![],
                    rollout: rolled_back(verdict.reason.clone()),
                    target: None,
                });
            }
            if routing.baking().is_some() && routing.active.version == candidate {
                let mut decision = flip_back(ns, state, routing, rolled_back(verdict.reason.clone()))?;
                if let Some(detail) = decision.detail.as_object_mut() {
                    detail.insert("evidence".into(), evidence.clone());
                }
                return Ok(decision);
            }
            Err(CoordinatorError::Conflict(format!(
                "version {candidate} of {ns} is no longer a canary or baking; nothing to roll back"
            )))
        })
        .await
    }

    /// Takes the rollout's next step, once: the transaction compares the rollout record it
    /// was decided on, so a step is never taken twice, whoever leads.
    pub async fn advance_rollout(
        &self,
        request: ChangeRequest<'_>,
        from_step: usize,
        verdict: &Verdict,
    ) -> Result<RoutingChange> {
        let ns = request.ns;
        self.change_routing(request, |state, routing| {
            let routing = routing.ok_or_else(|| nothing_active(ns))?;
            let rollout = state
                .active_rollout()
                .filter(|r| r.state == RolloutState::Running && r.step == from_step)
                .ok_or_else(|| {
                    CoordinatorError::Conflict(format!("the rollout of {ns} moved on"))
                })?;
            let next = rollout.next_weight_bp().ok_or_else(|| {
                CoordinatorError::Conflict(format!("the rollout of {ns} has no next step"))
            })?;
            let target = sealed_target(ns, state, rollout.slot, &routing.active)?;
            check_expected_version(ns, rollout.slot, &target, &rollout.version)?;
            // The rollout is done at a flip, or at its last step if that holds a canary.
            let done = next >= BUCKETS || from_step + 2 >= rollout.steps_bp.len();
            let updated = Rollout {
                step: from_step + 1,
                step_at_ms: now_ms(),
                state: if done {
                    RolloutState::Done
                } else {
                    RolloutState::Running
                },
                note: verdict.reason.clone(),
                ..rollout.clone()
            };
            Ok(Decision {
                detail: json!({
                    "version": rollout.version,
                    "from_percent": current_percent(rollout),
                    "to_percent": percent(next),
                    "evidence": verdict,
                }),
                routing: apply_weight(routing, &target, rollout.slot, next, &state.policy()),
                compare_slots: vec![rollout.slot],
                rollout: RolloutAfter::Put(updated),
                target: Some(Target {
                    slot_ref: target.clone(),
                    needs_approval: false,
                }),
            })
        })
        .await
    }

    /// Withdraws a preparation older than [`STALE_PREPARATION_MS`], so that sidecars stop
    /// holding a set that no synchronized flip will commit.
    pub async fn withdraw_stale_preparation(
        &self,
        request: ChangeRequest<'_>,
    ) -> Result<RoutingChange> {
        let ns = request.ns;
        self.change_routing(request, |_, routing| {
            let routing = routing.ok_or_else(|| nothing_active(ns))?;
            let prepare = routing.prepare.as_ref().ok_or_else(|| {
                CoordinatorError::Conflict(format!("{ns} has no preparation to withdraw"))
            })?;
            if now_ms() < routing.at_ms.saturating_add(STALE_PREPARATION_MS) {
                return Err(CoordinatorError::Conflict(format!(
                    "the preparation of {ns} may still be committed"
                )));
            }
            // Any routing change but a synchronized flip's clears the preparation.
            Ok(Decision {
                detail: json!({
                    "prepare": {"slot": prepare.slot, "version": prepare.version},
                    "prepared_at": rfc3339_ms(routing.at_ms),
                }),
                routing: routing.clone(),
                compare_slots: vec![],
                rollout: RolloutAfter::Keep,
                target: None,
            })
        })
        .await
    }

    /// Ends the bake time: the previous set no longer needs to stay hot.
    pub async fn complete_bake(&self, request: ChangeRequest<'_>) -> Result<RoutingChange> {
        let ns = request.ns;
        self.change_routing(request, |_, routing| {
            let routing = routing.ok_or_else(|| nothing_active(ns))?;
            let until = routing
                .bake_until_ms
                .ok_or_else(|| CoordinatorError::Conflict(format!("{ns} is not baking")))?;
            if now_ms() < until {
                return Err(CoordinatorError::Conflict(format!(
                    "the bake of {ns} is not over"
                )));
            }
            Ok(Decision {
                detail: json!({"version": routing.active.version, "bake_until": rfc3339_ms(until)}),
                routing: Routing {
                    bake_until_ms: None,
                    ..routing.clone()
                },
                compare_slots: vec![],
                rollout: RolloutAfter::Keep,
                target: None,
            })
        })
        .await
    }

    async fn change_routing(
        &self,
        request: ChangeRequest<'_>,
        decide: impl Fn(&NamespaceState, Option<&Routing>) -> Result<Decision>,
    ) -> Result<RoutingChange> {
        self.change_routing_with(request, SyncStep::None, decide)
            .await
    }

    /// `change_routing` for every step of a synchronized flip too: `sync` says what becomes
    /// of the routing's `prepare` and `activate_at_ms`.
    async fn change_routing_with(
        &self,
        request: ChangeRequest<'_>,
        sync: SyncStep,
        decide: impl Fn(&NamespaceState, Option<&Routing>) -> Result<Decision>,
    ) -> Result<RoutingChange> {
        let ChangeRequest {
            ns,
            expected_epoch,
            action,
            reason,
            actor,
            fence,
        } = request;
        check_namespace(ns)?;
        let keys = self.store().keys().clone();
        for _ in 0..MAX_ATTEMPTS {
            let state = self.store().read_namespace(ns).await?;
            if state.epoch() != expected_epoch {
                return Err(conflict(ns, expected_epoch, state.routing.value.as_ref()));
            }
            let decision = decide(&state, state.routing.value.as_ref())?;
            let epoch =
                state
                    .epoch()
                    .checked_add(1)
                    .ok_or_else(|| CoordinatorError::CorruptRecord {
                        key: keys.routing(ns),
                        reason: "the epoch cannot grow any further".into(),
                    })?;
            let now = now_ms();
            // Both fields belong to one routing change only: a change that is not a step of a
            // synchronized flip clears them, so that no later change inherits a preparation or
            // an activation point that was meant for another.
            let (prepare, activate_at_ms) = match sync {
                SyncStep::None => (None, None),
                SyncStep::Prepare => (decision.routing.prepare.clone(), None),
                // Set again just before the transaction, after the gates have been evaluated.
                SyncStep::Activate { lead_ms } => (None, Some(now.saturating_add(lead_ms))),
            };
            let mut routing = Routing {
                epoch,
                action: action.to_string(),
                by: actor.name.clone(),
                reason: reason.to_string(),
                at_ms: now,
                prepare,
                activate_at_ms,
                ..decision.routing
            };
            let rollout_after = match decision.rollout {
                RolloutAfter::Keep => None,
                RolloutAfter::Put(rollout) => Some(rollout),
                RolloutAfter::EndActive => state.active_rollout().map(|r| Rollout {
                    state: RolloutState::Aborted,
                    note: format!("ended by a {action} of {}", actor.name),
                    ..r.clone()
                }),
            };
            let mut detail = decision.detail;
            let mut preconditions = Vec::new();
            if let Some(target) = &decision.target {
                let (compares, evidence) =
                    self.check_preconditions(ns, action, &state, target).await?;
                preconditions = compares;
                if let (Some(object), Some(evidence)) = (detail.as_object_mut(), evidence) {
                    for (name, value) in evidence {
                        object.insert(name, value);
                    }
                }
            }
            if let SyncStep::Activate { lead_ms } = sync {
                // The lead counts from the commit, not from the decision: an HTTP gate may
                // take seconds to answer, and a point already passed is no synchronization.
                let activate_at_ms = now_ms().saturating_add(lead_ms);
                routing.activate_at_ms = Some(activate_at_ms);
                if let Some(object) = detail.as_object_mut() {
                    object.insert("activate_at".into(), json!(rfc3339_ms(activate_at_ms)));
                }
            }
            if let Some(object) = detail.as_object_mut() {
                object.insert("epoch".into(), json!(routing.epoch));
                if let Some(rollout) = &rollout_after {
                    object.insert(
                        "rollout".into(),
                        json!({"state": rollout.state, "step": rollout.step}),
                    );
                }
            }
            let head = self.audit_head(ns, &state).await?;
            let record = audit::next_record(&head, ns, &actor.name, action, reason, detail)?;
            let mut compares = vec![
                unchanged(keys.routing(ns), state.routing.mod_revision),
                unchanged(keys.rollout(ns), state.rollout.mod_revision),
                // The approval requirement and the gates were read with the policy.
                unchanged(keys.policy(ns), state.policy.mod_revision),
            ];
            compares.extend(preconditions);
            for slot in decision.compare_slots {
                compares.push(unchanged(
                    keys.slot(ns, slot),
                    state.slot(slot).mod_revision,
                ));
            }
            compares.extend(fence.map(Fence::compare));
            // Stamped after the checks and reads above, right before the transaction, so that
            // `at_ms` is the commit time to within the transaction's own latency: sidecars and
            // the propagation benchmark measure from it.
            let streaming = self.outcomes().streaming_sidecars(ns);
            let routing = Routing {
                at_ms: now_ms(),
                acknowledge_within_ms: acknowledgement_spread_ms(
                    streaming,
                    self.acknowledgements_per_second(),
                ),
                ..routing
            };
            let mut operations = vec![TxnOp::put(keys.routing(ns), to_json(&routing), None)];
            append_audit_record(&keys, ns, &record, &mut compares, &mut operations);
            if let Some(rollout) = &rollout_after {
                operations.push(TxnOp::put(keys.rollout(ns), to_json(rollout), None));
            }
            crash::pause_point(crash::ROUTING_PAUSE).await;
            crash::point(crash::ROUTING_BEFORE_TXN, action);
            let committed = self
                .store()
                .txn(Txn::new().when(compares).and_then(operations))
                .await?
                .succeeded();
            crash::point(crash::ROUTING_AFTER_TXN, action);
            if committed {
                tracing::info!(ns, action, epoch = routing.epoch, actor = %actor.name, reason, "routing changed");
                metrics::counter!(crate::telemetry::ROUTING_CHANGES, "namespace" => ns.to_string(), "action" => action.to_string())
                    .increment(1);
                return Ok(RoutingChange {
                    namespace: ns.to_string(),
                    routing,
                    audit_seq: record.seq,
                    sync: None,
                });
            }
            if fence.is_some() && !self.still_leader(fence).await? {
                return Err(CoordinatorError::Conflict(
                    "this coordinator is no longer the leader; its write was refused".into(),
                ));
            }
        }
        Err(busy(ns))
    }

    /// Checks what must hold before consumers move to `target`: its approval when the policy
    /// requires one, and every gate. Returns the comparisons the change's transaction must
    /// carry (the approval still exists, the etcd keys the gates read are unchanged) and the
    /// evidence for its audit record.
    async fn check_preconditions(
        &self,
        ns: &str,
        action: &str,
        state: &NamespaceState,
        target: &Target,
    ) -> Result<(
        Vec<Compare>,
        Option<serde_json::Map<String, serde_json::Value>>,
    )> {
        let policy = state.policy();
        let slot_ref = &target.slot_ref;
        let mut compares = Vec::new();
        let mut evidence = serde_json::Map::new();
        // The policy may require approval of every version; the seal may require it of one
        // version, for its destructive changes or a contract rule's `approval` message.
        let required_by_seal = !slot_ref.approval_reasons.is_empty();
        if target.needs_approval && (policy.require_approval || required_by_seal) {
            let Some((key, approval)) = state.approval_of(&slot_ref.manifest, &slot_ref.staged_by)
            else {
                let why = if policy.require_approval {
                    format!("the policy of {ns} requires one")
                } else {
                    format!(
                        "its seal requires one ({})",
                        slot_ref.approval_reasons.join("; ")
                    )
                };
                return Err(CoordinatorError::Refused(format!(
                    "version {} of {ns} needs an approval before this {action}: {why}; an approver other than {}, who staged it, runs `sbctl approve {ns} {}`",
                    slot_ref.version, slot_ref.staged_by, slot_ref.version
                )));
            };
            compares.push(Compare::version(key.clone(), CompareOp::Greater, 0));
            evidence.insert(
                "approved_by".into(),
                json!({"approver": approval.approved_by, "at": rfc3339_ms(approval.at_ms)}),
            );
        }
        if !policy.gates.is_empty() {
            let evaluation = self
                .gate_checker()
                .evaluate(self.store(), ns, &policy.gates, slot_ref)
                .await?;
            if !evaluation.passed() {
                return Err(CoordinatorError::GateBlocked(format!(
                    "the {action} of {ns} to version {} is blocked: {}",
                    slot_ref.version,
                    evaluation.blocking()
                )));
            }
            compares.extend(evaluation.compares);
            evidence.insert("gates".into(), json!(evaluation.outcomes));
        }
        Ok((compares, (!evidence.is_empty()).then_some(evidence)))
    }

    /// Whether the fence's election key still stands.
    async fn still_leader(&self, fence: Option<&Fence>) -> Result<bool> {
        let Some(fence) = fence else { return Ok(true) };
        let txn = Txn::new().when(vec![fence.compare()]);
        Ok(self.store().txn(txn).await?.succeeded())
    }

    /// An audited change of one record that is not routing (the policy, a rollout's pause).
    /// `decide` returns the key, the revision it was read at, the new value, the audit detail
    /// and what to return.
    pub(crate) async fn change_record<T>(
        &self,
        ns: &str,
        action: &str,
        reason: &str,
        actor: &Actor,
        decide: impl Fn(&NamespaceState) -> Result<(String, i64, Vec<u8>, serde_json::Value, T)>,
    ) -> Result<T> {
        check_namespace(ns)?;
        for _ in 0..MAX_ATTEMPTS {
            let state = self.store().read_namespace(ns).await?;
            let (key, revision, value, detail, outcome) = decide(&state)?;
            let audited = AuditedChange {
                actor: &actor.name,
                action,
                reason,
                detail,
            };
            let compares = vec![unchanged(key.clone(), revision)];
            let operations = vec![TxnOp::put(key, value, None)];
            if self
                .commit_audited(ns, &state, audited, compares, operations)
                .await?
                .is_some()
            {
                tracing::info!(ns, action, actor = %actor.name, reason, "record changed");
                return Ok(outcome);
            }
        }
        Err(busy(ns))
    }
}

/// Everyone to the staged slot, when something is active: the decision of a flip, and what a
/// synchronized flip checks before it asks the sidecars to prepare.
fn flip_decision(
    ns: &str,
    state: &NamespaceState,
    routing: &Routing,
    expected_version: &str,
) -> Result<Decision> {
    let slot = routing.active.slot.other();
    let target = sealed_target(ns, state, slot, &routing.active)?;
    check_expected_version(ns, slot, &target, expected_version)?;
    Ok(Decision {
        detail: json!({
            "from": {"slot": routing.active.slot, "version": routing.active.version},
            "to": {"slot": slot, "version": target.version},
            "bake_seconds": state.policy().bake_seconds,
        }),
        routing: flipped(routing, &target, slot, &state.policy()),
        compare_slots: vec![slot],
        rollout: RolloutAfter::EndActive,
        target: Target::approved(&target),
    })
}

/// Everyone back to the previous set (a rollback after a flip).
fn flip_back(
    ns: &str,
    state: &NamespaceState,
    routing: &Routing,
    rollout: RolloutAfter,
) -> Result<Decision> {
    let previous = routing.previous.clone().ok_or_else(|| {
        CoordinatorError::Refused(format!(
            "nothing to roll back to in {ns}: no canary is live and no earlier version was active"
        ))
    })?;
    let slot_ref = sealed(ns, state, previous.slot)?;
    if slot_ref.manifest != previous.manifest {
        return Err(CoordinatorError::Refused(format!(
            "cannot roll back {ns}: slot {} no longer holds the previous version {} but version {} (staged by {} at {}); flip to it or stage the previous version again",
            previous.slot,
            previous.version,
            slot_ref.version,
            slot_ref.staged_by,
            rfc3339_ms(slot_ref.at_ms)
        )));
    }
    Ok(Decision {
        detail: json!({
            "kind": "flip",
            "from": {"slot": routing.active.slot, "version": routing.active.version},
            "to": {"slot": previous.slot, "version": previous.version},
        }),
        routing: Routing {
            active: previous.clone(),
            canary: None,
            previous: Some(routing.active.clone()),
            bake_until_ms: None,
            ..routing.clone()
        },
        compare_slots: vec![previous.slot],
        rollout,
        target: None,
    })
}

/// The first flip of a namespace: nothing is active, so there is nothing to bake.
fn first_flip(ns: &str, state: &NamespaceState, expected_version: &str) -> Result<Decision> {
    let slot = first_slot_to_flip(ns, state)?;
    let target = sealed(ns, state, slot)?;
    check_expected_version(ns, slot, &target, expected_version)?;
    let active = SlotVersion {
        slot,
        version: target.version.clone(),
        manifest: target.manifest.clone(),
    };
    Ok(Decision {
        detail: json!({"from": null, "to": {"slot": slot, "version": target.version}}),
        routing: Routing {
            epoch: 0,
            active,
            canary: None,
            previous: None,
            bake_until_ms: None,
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            action: String::new(),
            by: String::new(),
            reason: String::new(),
            at_ms: 0,
        },
        compare_slots: vec![slot],
        rollout: RolloutAfter::EndActive,
        target: Target::approved(&target),
    })
}

fn check_steps(steps_bp: &[u32], interval_seconds: u64) -> Result<()> {
    let invalid = |m: String| Err(CoordinatorError::InvalidInput(m));
    if steps_bp.is_empty() || steps_bp.len() > 20 {
        return invalid(format!(
            "a rollout needs 1 to 20 steps, not {}",
            steps_bp.len()
        ));
    }
    if steps_bp.iter().any(|w| *w == 0 || *w > BUCKETS) {
        return invalid("every step must be above 0% and at most 100%".into());
    }
    if steps_bp.windows(2).any(|pair| pair[0] >= pair[1]) {
        return invalid("rollout steps must ascend".into());
    }
    if !(1..=86_400).contains(&interval_seconds) {
        return invalid(format!("interval {interval_seconds} s must be 1 to 86400"));
    }
    Ok(())
}

fn current_percent(rollout: &Rollout) -> f64 {
    percent(rollout.steps_bp.get(rollout.step).copied().unwrap_or(0))
}

fn no_rollout(ns: &str) -> CoordinatorError {
    CoordinatorError::Refused(format!("no rollout is running or paused in {ns}"))
}

pub(crate) fn sealed(ns: &str, state: &NamespaceState, slot: Slot) -> Result<SlotRef> {
    match &state.slot(slot).value {
        Some(slot_ref) if slot_ref.state == SlotState::Sealed => Ok(slot_ref.clone()),
        Some(slot_ref) => Err(CoordinatorError::Refused(format!(
            "slot {slot} of {ns} is not sealed: staging of version {} by {} began at {} and did not complete; run sbctl stage again",
            slot_ref.version,
            slot_ref.staged_by,
            rfc3339_ms(slot_ref.at_ms)
        ))),
        None => Err(CoordinatorError::Refused(format!(
            "slot {slot} of {ns} is empty; stage a version first"
        ))),
    }
}

/// The sealed slot a canary or flip would move consumers to, which must hold something other
/// than the active version.
fn sealed_target(
    ns: &str,
    state: &NamespaceState,
    slot: Slot,
    active: &SlotVersion,
) -> Result<SlotRef> {
    let slot_ref = sealed(ns, state, slot)?;
    if slot_ref.manifest == active.manifest {
        return Err(CoordinatorError::Refused(format!(
            "slot {slot} of {ns} holds the active version {}; stage a new version first",
            slot_ref.version
        )));
    }
    Ok(slot_ref)
}

/// Refuses a change whose caller decided on another version than the target slot now holds.
fn check_expected_version(ns: &str, slot: Slot, target: &SlotRef, expected: &str) -> Result<()> {
    if expected.is_empty() || target.version == expected {
        return Ok(());
    }
    Err(CoordinatorError::Conflict(format!(
        "slot {slot} of {ns} changed underneath: it now holds version {} (staged by {} at {}), not the version {expected} this change was decided on; read `sbctl status {ns}` and retry",
        target.version,
        target.staged_by,
        rfc3339_ms(target.at_ms)
    )))
}

/// Before anything is active, the first flip goes to the most recently sealed slot.
fn first_slot_to_flip(ns: &str, state: &NamespaceState) -> Result<Slot> {
    Slot::BOTH
        .into_iter()
        .filter(|slot| state.slot(*slot).value.is_some())
        .max_by_key(|slot| {
            let sealed = state
                .slot(*slot)
                .value
                .as_ref()
                .is_some_and(|s| s.state == SlotState::Sealed);
            (sealed, state.slot(*slot).mod_revision)
        })
        .ok_or_else(|| {
            CoordinatorError::Refused(format!("nothing is staged in {ns}; stage a version first"))
        })
}

fn nothing_active(ns: &str) -> CoordinatorError {
    CoordinatorError::Refused(format!(
        "nothing is active in {ns} yet: stage a version and flip to make it live"
    ))
}

fn conflict(ns: &str, expected_epoch: u64, routing: Option<&Routing>) -> CoordinatorError {
    let now = match routing {
        Some(r) => format!(
            "epoch {} ({} by {} at {}{})",
            r.epoch,
            r.action,
            r.by,
            rfc3339_ms(r.at_ms),
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {:?}", r.reason)
            }
        ),
        None => "epoch 0 (nothing active)".to_string(),
    };
    CoordinatorError::Conflict(format!(
        "routing of {ns} changed underneath: expected epoch {expected_epoch}, now {now}; read `sbctl status {ns}` and retry"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_acknowledges_at_once_up_to_the_rate_and_spreads_beyond_it() {
        let rate = ACKNOWLEDGEMENTS_PER_SECOND;
        assert_eq!(acknowledgement_spread_ms(0, rate), None);
        assert_eq!(acknowledgement_spread_ms(1_000, rate), None);
        assert_eq!(acknowledgement_spread_ms(1_001, rate), Some(1_001));
        assert_eq!(acknowledgement_spread_ms(10_000, rate), Some(10_000));
        assert_eq!(
            acknowledgement_spread_ms(1_000_000, rate),
            Some(MOST_ACKNOWLEDGEMENT_SPREAD_MS)
        );
        assert_eq!(acknowledgement_spread_ms(3, 1), Some(3_000));
        // A rate of 0 is taken as 1, not divided by.
        assert_eq!(acknowledgement_spread_ms(3, 0), Some(3_000));
    }
}

//! The changes a person asks for: canary, flip, rollback (to the previous version or an
//! older retained one), and the judge policy and gates they are checked against.

use super::*;

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
    pub(super) async fn restage_retained(
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
}

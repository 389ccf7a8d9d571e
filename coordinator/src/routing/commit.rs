//! The commit engine: every routing change reads the namespace at one revision, lets its
//! decision decide, checks approvals and gates, and commits in one transaction with compares
//! (invariant 2) and the audit record (invariant 8). Records that are not routing (policy,
//! approvals) go through `change_record`.

use super::*;

impl Releases {
    pub(super) async fn change_routing(
        &self,
        request: ChangeRequest<'_>,
        decide: impl Fn(&NamespaceState, Option<&Routing>) -> Result<Decision>,
    ) -> Result<RoutingChange> {
        self.change_routing_with(request, SyncStep::None, decide)
            .await
    }

    /// `change_routing` for every step of a synchronized flip too: `sync` says what becomes
    /// of the routing's `prepare` and `activate_at_ms`.
    pub(super) async fn change_routing_with(
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
    pub(super) async fn check_preconditions(
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
    pub(super) async fn still_leader(&self, fence: Option<&Fence>) -> Result<bool> {
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

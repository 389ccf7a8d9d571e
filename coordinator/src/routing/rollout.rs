//! Rollouts: a canary raised step by step, started, paused, resumed and aborted by people and
//! advanced by the leader on healthy data.

use super::*;

impl Releases {
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
}

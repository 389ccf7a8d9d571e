//! The leader's automatic actions: the flip back on a breach and the end of the bake time.

use super::*;

impl Releases {
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
}

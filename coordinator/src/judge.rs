//! The health judge, run by the leader: it sums the outcome counters that sidecars stream to
//! the leader ([`crate::outcomes`]) per version over the policy's window, and acts on the
//! verdict of `switchboard_proto::judge::judge`:
//! - during a canary, a breach sets the canary to 0, and a rollout takes its next step only on
//!   a pass once its interval is over (too little data holds it);
//! - during the bake time after a flip, a breach flips everyone back to the previous set, and
//!   the end of the bake time releases the previous set.
//!
//! The counters live in memory: a new leader receives them again, with their recent history,
//! as the sidecars reconnect to it, and holds until it has enough (too little data is never a
//! pass). Every action is a fenced routing transaction with the verdict and the policy in its
//! audit record.

use std::collections::{HashMap, HashSet};
use std::time::Duration;
use switchboard_runtime::Every;

use switchboard_proto::judge::{Outcome, Verdict, judge};
use switchboard_proto::time::now_ms;
use switchboard_proto::{HealthRecord, Policy, RolloutState, Routing};
use tokio_util::sync::CancellationToken;

use crate::error::CoordinatorError;
use crate::release::{Actor, Releases};
use crate::routing::{ChangeRequest, Fence};
use crate::store::NamespaceState;
use crate::telemetry;

/// How often the judge looks.
pub const TICK: Duration = Duration::from_millis(500);

pub struct Judge {
    releases: Releases,
    actor: Actor,
    fence: Fence,
    /// The namespaces judged this term, whose gauges go down with it.
    judged: HashSet<String>,
    /// When the convergence gauges of each namespace were last set (Unix ms).
    convergence_sampled: HashMap<String, u64>,
}

/// How often the convergence gauges are set from the health records.
const CONVERGENCE_EVERY_MS: u64 = 5_000;

/// A judge that ends, by returning at the end of its term, by a panic or by being aborted,
/// takes the gauges that only the leader keeps down to 0: a former leader must not go on
/// exporting the last values it saw, and after a panic no code after the loop would run.
impl Drop for Judge {
    fn drop(&mut self) {
        telemetry::leader_gauges_off(self.judged.iter());
    }
}

impl Judge {
    pub fn new(releases: Releases, leader_id: &str, fence: Fence) -> Self {
        Self {
            releases,
            actor: Actor {
                name: format!("switchboard-judge@{leader_id}"),
            },
            fence,
            judged: HashSet::new(),
            convergence_sampled: HashMap::new(),
        }
    }

    /// Judges every namespace each `TICK` until `term` ends.
    pub async fn run(mut self, term: CancellationToken) {
        let mut every = Every::new(TICK);
        while every.tick(&term).await {
            let namespaces = match self.releases.store().namespaces().await {
                Ok(namespaces) => namespaces,
                Err(error) => {
                    tracing::warn!(%error, "judge cannot list namespaces");
                    continue;
                }
            };
            for ns in namespaces {
                if term.is_cancelled() {
                    break;
                }
                if let Err(error) = self.judge_namespace(&ns).await {
                    match error {
                        // Routing moved on since the judge looked; the next tick sees it.
                        CoordinatorError::Conflict(_) => {
                            tracing::debug!(ns, %error, "judge action skipped")
                        }
                        // A rollout step waits for its gates; the next tick checks them again.
                        CoordinatorError::GateBlocked(_) => {
                            metrics::counter!("switchboard_rollout_steps_gated_total", "namespace" => ns.clone())
                                .increment(1);
                            tracing::debug!(ns, %error, "rollout step waits for gates")
                        }
                        _ => tracing::warn!(ns, %error, "judge failed"),
                    }
                }
            }
        }
    }

    async fn judge_namespace(&mut self, ns: &str) -> Result<(), CoordinatorError> {
        let store = self.releases.store();
        let state = store.read_namespace(ns).await?;
        let now = now_ms();
        if self.judged.insert(ns.to_string()) {
            telemetry::register_namespace(ns);
        }
        let outcomes = self.releases.outcomes();
        let window = |version: &str, since: u64| outcomes.window(ns, version, since, now);
        let Some(routing) = state.routing.value.clone() else {
            return Ok(());
        };
        if routing.prepare.is_some()
            && now
                >= routing
                    .at_ms
                    .saturating_add(crate::routing::STALE_PREPARATION_MS)
        {
            let request = self.request(
                ns,
                &state,
                "prepare-withdraw",
                "no coordinator finished this synchronized flip",
            );
            self.releases.withdraw_stale_preparation(request).await?;
            return Ok(());
        }
        // The convergence gauges read every health record: at 10,000 sidecars that is
        // megabytes, too much for every tick, and nothing the verdict needs.
        let due = self
            .convergence_sampled
            .get(ns)
            .is_none_or(|at| now.saturating_sub(*at) >= CONVERGENCE_EVERY_MS);
        if due {
            let records = store.health_records(ns).await?;
            record_convergence(ns, &routing, &records);
            self.convergence_sampled.insert(ns.to_string(), now);
        }
        let policy = state.policy();
        let since = now.saturating_sub(policy.window_seconds.saturating_mul(1000));
        metrics::gauge!(telemetry::JUDGE_MIN_REQUESTS, "namespace" => ns.to_string())
            .set(policy.min_requests as f64);
        // The starved gauge is set once per tick (here or by `count_verdict`), never reset and
        // set again: a scrape between the two would restart the `for` of the alert on it.
        let judging = routing.live_canary().is_some()
            || (routing.baking().is_some() && routing.bake_until_ms.is_some_and(|u| now < u));
        if !judging {
            telemetry::judging_nothing(ns);
        }

        if let Some(canary) = routing.live_canary() {
            // The tests of the leader's supervision make the judge panic here, once there is a
            // canary to judge: a moment the test chooses, before this leader could act on it.
            crate::crash::panic_point(crate::crash::JUDGE_LOOP_PANIC);
            let candidate = window(&canary.version, since);
            let baseline = window(&routing.active.version, since);
            let verdict = judge(&policy, candidate, baseline);
            count_verdict(ns, &verdict);
            if verdict.outcome == Outcome::Breach {
                return self
                    .roll_back(ns, &state, &canary.version, &verdict, &policy)
                    .await;
            }
            return self
                .maybe_advance(ns, &state, &canary.version, &verdict, now)
                .await;
        }
        if let (Some(previous), Some(until)) = (routing.baking(), routing.bake_until_ms) {
            if now >= until {
                let request = self.request(ns, &state, "bake-complete", "the bake time is over");
                self.releases.complete_bake(request).await?;
                return Ok(());
            }
            let candidate = window(&routing.active.version, since);
            let baseline = window(&previous.version, since);
            let verdict = judge(&policy, candidate, baseline);
            count_verdict(ns, &verdict);
            if verdict.outcome == Outcome::Breach {
                let version = routing.active.version.clone();
                return self
                    .roll_back(ns, &state, &version, &verdict, &policy)
                    .await;
            }
        }
        Ok(())
    }

    async fn roll_back(
        &self,
        ns: &str,
        state: &NamespaceState,
        version: &str,
        verdict: &Verdict,
        policy: &Policy,
    ) -> Result<(), CoordinatorError> {
        let request = self.request(ns, state, "auto-rollback", &verdict.reason);
        let change = self
            .releases
            .automatic_rollback(request, version, verdict, policy)
            .await?;
        tracing::warn!(ns, version, epoch = change.routing.epoch, reason = %verdict.reason, "automatic rollback");
        // A rollback during a canary ends the canary; during the bake time it flips everyone back.
        let canary = state.routing.value.as_ref().and_then(Routing::live_canary);
        let phase = if canary.is_some() { "canary" } else { "bake" };
        metrics::counter!(telemetry::AUTOMATIC_ROLLBACKS, "namespace" => ns.to_string(), "phase" => phase)
            .increment(1);
        Ok(())
    }

    /// Takes a running rollout's next step once its interval is over and the judge passes.
    async fn maybe_advance(
        &self,
        ns: &str,
        state: &NamespaceState,
        canary_version: &str,
        verdict: &Verdict,
        now: u64,
    ) -> Result<(), CoordinatorError> {
        let Some(rollout) = state.active_rollout() else {
            return Ok(());
        };
        let due = rollout
            .step_at_ms
            .saturating_add(rollout.interval_seconds.saturating_mul(1000));
        if rollout.state != RolloutState::Running
            || rollout.version != canary_version
            || now < due
            || rollout.next_weight_bp().is_none()
            || verdict.outcome != Outcome::Pass
        {
            return Ok(());
        }
        let request = self.request(ns, state, "rollout-step", &verdict.reason);
        let change = self
            .releases
            .advance_rollout(request, rollout.step, verdict)
            .await?;
        tracing::info!(
            ns,
            version = canary_version,
            epoch = change.routing.epoch,
            "rollout step taken"
        );
        metrics::counter!("switchboard_rollout_steps_total", "namespace" => ns.to_string())
            .increment(1);
        Ok(())
    }

    fn request<'a>(
        &'a self,
        ns: &'a str,
        state: &NamespaceState,
        action: &'a str,
        reason: &'a str,
    ) -> ChangeRequest<'a> {
        ChangeRequest {
            ns,
            expected_epoch: state.epoch(),
            action,
            reason,
            actor: &self.actor,
            fence: Some(&self.fence),
        }
    }
}

fn count_verdict(ns: &str, verdict: &Verdict) {
    let outcome = match verdict.outcome {
        Outcome::Insufficient => "insufficient",
        Outcome::Pass => "pass",
        Outcome::Breach => "breach",
    };
    metrics::counter!("switchboard_judge_verdicts_total", "namespace" => ns.to_string(), "outcome" => outcome)
        .increment(1);
    metrics::gauge!("switchboard_judge_window_requests", "namespace" => ns.to_string(), "role" => "candidate")
        .set(verdict.candidate.requests() as f64);
    metrics::gauge!("switchboard_judge_window_requests", "namespace" => ns.to_string(), "role" => "baseline")
        .set(verdict.baseline.requests() as f64);
    let starved = verdict.outcome == Outcome::Insufficient;
    metrics::gauge!(telemetry::JUDGE_STARVED, "namespace" => ns.to_string()).set(if starved {
        1.0
    } else {
        0.0
    });
}

/// The share of live sidecars that serve the current epoch.
fn record_convergence(ns: &str, routing: &Routing, records: &[HealthRecord]) {
    let on_epoch = records.iter().filter(|r| r.epoch >= routing.epoch).count();
    metrics::gauge!("switchboard_sidecars_live", "namespace" => ns.to_string())
        .set(records.len() as f64);
    metrics::gauge!("switchboard_sidecars_on_current_epoch", "namespace" => ns.to_string())
        .set(on_epoch as f64);
}

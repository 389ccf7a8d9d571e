//! The health judge, run by the leader: it samples the outcome counters that sidecars publish,
//! sums them per version over the policy's window, and acts on the verdict of
//! `switchboard_proto::judge::judge`:
//! - during a canary, a breach sets the canary to 0, and a rollout takes its next step only on
//!   a pass once its interval is over (too little data holds it);
//! - during the bake time after a flip, a breach flips everyone back to the previous set, and
//!   the end of the bake time releases the previous set.
//!
//! The samples live in memory: a new leader starts with empty windows, so it holds until it has
//! seen enough (too little data is never a pass). Every action is a fenced routing transaction
//! with the verdict and the policy in its audit record.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use switchboard_runtime::Every;

use switchboard_proto::judge::{Counts, Outcome, Verdict, judge};
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

/// One sidecar's cumulative counters for one version, as observed over time.
#[derive(Default)]
struct Series {
    started_at_ms: u64,
    /// (observed at, ok, errors), oldest first.
    points: VecDeque<(u64, u64, u64)>,
}

impl Series {
    fn observe(&mut self, started_at_ms: u64, at_ms: u64, ok: u64, errors: u64) {
        let restarted = started_at_ms != self.started_at_ms
            || self
                .points
                .back()
                .is_some_and(|&(_, o, e)| ok < o || errors < e);
        if restarted {
            self.started_at_ms = started_at_ms;
            self.points.clear();
        }
        self.points.push_back((at_ms, ok, errors));
    }

    /// Outcomes counted since `since_ms`: the newest point minus a base. The base is the newest
    /// point at or before `since_ms`; failing that, zero if the sidecar started inside the
    /// window (its counters were zero then), else the oldest point, so that outcomes from
    /// before the window are never counted in it.
    fn since(&self, since_ms: u64) -> Counts {
        let Some(&(_, ok, errors)) = self.points.back() else {
            return Counts::default();
        };
        let base = match self.points.iter().rev().find(|(at, _, _)| *at <= since_ms) {
            Some(&(_, base_ok, base_errors)) => (base_ok, base_errors),
            None if self.started_at_ms >= since_ms => (0, 0),
            None => self
                .points
                .front()
                .map_or((ok, errors), |&(_, o, e)| (o, e)),
        };
        Counts {
            ok: ok.saturating_sub(base.0),
            errors: errors.saturating_sub(base.1),
        }
    }

    /// Drops points that no window will need again, keeping one at or before the window.
    fn prune(&mut self, since_ms: u64) {
        while self.points.len() > 1 && self.points.get(1).is_some_and(|(at, _, _)| *at <= since_ms)
        {
            self.points.pop_front();
        }
    }
}

/// The samples of one namespace, per (sidecar, version).
#[derive(Default)]
struct NamespaceSamples {
    series: HashMap<(String, String), Series>,
    /// Per sidecar: the start time it reported and when the judge last saw its record.
    sidecars: HashMap<String, (u64, u64)>,
}

impl NamespaceSamples {
    fn observe(&mut self, records: &[HealthRecord], at_ms: u64) {
        for record in records {
            let seen = self
                .sidecars
                .insert(record.id.clone(), (record.started_at_ms, at_ms));
            for report in &record.reports {
                let key = (record.id.clone(), report.version.clone());
                let series = self.series.entry(key).or_insert_with(|| {
                    let mut series = Series {
                        started_at_ms: record.started_at_ms,
                        ..Series::default()
                    };
                    // A version that appears in the record of a sidecar seen before (same
                    // process) had no outcomes then: its counters start from zero, and its
                    // first outcomes count.
                    if let Some((started_at_ms, last_seen_ms)) = seen
                        && started_at_ms == record.started_at_ms
                    {
                        series.points.push_back((last_seen_ms, 0, 0));
                    }
                    series
                });
                series.observe(record.started_at_ms, at_ms, report.ok, report.errors);
            }
        }
    }

    fn window(&mut self, version: &str, since_ms: u64) -> Counts {
        let mut total = Counts::default();
        for ((_, v), series) in &mut self.series {
            series.prune(since_ms);
            if v == version {
                total = total.plus(series.since(since_ms));
            }
        }
        total
    }
}

pub struct Judge {
    releases: Releases,
    actor: Actor,
    fence: Fence,
    samples: HashMap<String, NamespaceSamples>,
}

/// A judge that ends, by returning at the end of its term, by a panic or by being aborted,
/// takes the gauges that only the leader keeps down to 0: a former leader must not go on
/// exporting the last values it saw, and after a panic no code after the loop would run.
impl Drop for Judge {
    fn drop(&mut self) {
        telemetry::leader_gauges_off(self.samples.keys());
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
            samples: HashMap::new(),
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
        let records = store.health_records(ns).await?;
        let now = now_ms();
        if !self.samples.contains_key(ns) {
            telemetry::register_namespace(ns);
        }
        let samples = self.samples.entry(ns.to_string()).or_default();
        samples.observe(&records, now);
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
        record_convergence(ns, &routing, &records);
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
            let candidate = samples.window(&canary.version, since);
            let baseline = samples.window(&routing.active.version, since);
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
            let candidate = samples.window(&routing.active.version, since);
            let baseline = samples.window(&previous.version, since);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_only_what_happened_inside_it() {
        let mut series = Series::default();
        series.observe(1_000, 10_000, 100, 1);
        series.observe(1_000, 20_000, 150, 2);
        series.observe(1_000, 30_000, 400, 10);
        assert_eq!(series.since(20_000), Counts { ok: 250, errors: 8 });
        assert_eq!(series.since(25_000), Counts { ok: 250, errors: 8 });
        // The sidecar started inside the window: everything it counted is in the window.
        assert_eq!(
            series.since(500),
            Counts {
                ok: 400,
                errors: 10
            }
        );
    }

    #[test]
    fn outcomes_from_before_the_window_are_never_counted() {
        // A new leader first sees a sidecar that started long ago with 500 outcomes counted.
        let mut series = Series::default();
        series.observe(1_000, 100_000, 500, 50);
        series.observe(1_000, 101_000, 510, 51);
        assert_eq!(series.since(90_000), Counts { ok: 10, errors: 1 });
    }

    #[test]
    fn a_restarted_sidecar_counts_from_zero() {
        let mut series = Series::default();
        series.observe(1_000, 10_000, 500, 50);
        series.observe(9_000, 12_000, 20, 5);
        assert_eq!(series.since(5_000), Counts { ok: 20, errors: 5 });
    }

    fn record(id: &str, started_at_ms: u64, reports: &[(&str, u64, u64)]) -> HealthRecord {
        HealthRecord {
            id: id.into(),
            namespace: "ns".into(),
            epoch: 1,
            serving: vec![],
            etcd_reachable: true,
            at_ms: 0,
            started_at_ms,
            reports: reports
                .iter()
                .map(|(v, ok, errors)| switchboard_proto::VersionReports {
                    version: (*v).into(),
                    ok: *ok,
                    errors: *errors,
                })
                .collect(),
            prepared: None,
            activated_epoch: None,
            activated_at_us: None,
        }
    }

    #[test]
    fn the_first_outcomes_of_a_new_version_count() {
        let mut samples = NamespaceSamples::default();
        // A sidecar that started long before the window, first seen serving only version a.
        samples.observe(&[record("s1", 1_000, &[("a", 900, 9)])], 100_000);
        // Half a second later it reports version b for the first time, with 30 outcomes.
        samples.observe(
            &[record("s1", 1_000, &[("a", 950, 9), ("b", 20, 10)])],
            100_500,
        );
        assert_eq!(samples.window("b", 90_000), Counts { ok: 20, errors: 10 });
        // Version a's history from before the leader saw it is not counted.
        assert_eq!(samples.window("a", 90_000), Counts { ok: 50, errors: 0 });
    }

    #[test]
    fn pruning_keeps_the_base_of_the_window() {
        let mut series = Series::default();
        for second in 1..=100u64 {
            series.observe(0, second * 1_000, second * 10, second);
        }
        series.prune(90_000);
        assert_eq!(
            series.since(90_000),
            Counts {
                ok: 100,
                errors: 10
            }
        );
        assert!(series.points.len() <= 11);
    }
}

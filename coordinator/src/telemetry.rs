//! The coordinator's Prometheus metrics: their names, their `# HELP` lines, and the zero values
//! registered before anything happens.
//!
//! A counter that first appears at 1 hides its first increase from `rate()` and `increase()`,
//! and a series that does not exist yet cannot be told apart from a coordinator that does not
//! export it. So process-wide metrics are registered at start-up, and each namespace's
//! counters when the judge first sees the namespace. `deploy/observability/` holds the alert
//! rules and the dashboard built on these names; `tests/tests/observability.rs` checks that
//! every name they use is exported.
//!
//! Every label value is bounded: namespaces are those in etcd, and the other labels take a few
//! fixed values (`action`, `outcome`, `role`, `phase`, `rpc`, `code`, `reason`, `caller`,
//! `result`, `loop`).

/// Routing changes committed: `namespace`, `action` (flip, canary, rollback, auto-rollback...).
pub const ROUTING_CHANGES: &str = "switchboard_routing_changes_total";
/// Automatic rollbacks by the health judge: `namespace`, `phase` (`canary` or `bake`).
pub const AUTOMATIC_ROLLBACKS: &str = "switchboard_automatic_rollbacks_total";
/// The judge's verdicts: `namespace`, `outcome` (`pass`, `breach`, `insufficient`).
pub const JUDGE_VERDICTS: &str = "switchboard_judge_verdicts_total";
/// Outcomes in the judge's window: `namespace`, `role` (`candidate`, `baseline`).
pub const JUDGE_WINDOW_REQUESTS: &str = "switchboard_judge_window_requests";
/// The policy's `min_requests`: `namespace`.
pub const JUDGE_MIN_REQUESTS: &str = "switchboard_judge_min_requests";
/// 1 while the judge evaluates a candidate whose window holds fewer outcomes than the policy's
/// minimum: `namespace`.
pub const JUDGE_STARVED: &str = "switchboard_judge_starved";
/// Rollout steps taken, and steps that waited for their gates: `namespace`.
pub const ROLLOUT_STEPS: &str = "switchboard_rollout_steps_total";
pub const ROLLOUT_STEPS_GATED: &str = "switchboard_rollout_steps_gated_total";
/// Live sidecars (health records), and those serving the current routing epoch: `namespace`.
pub const SIDECARS_LIVE: &str = "switchboard_sidecars_live";
pub const SIDECARS_ON_CURRENT_EPOCH: &str = "switchboard_sidecars_on_current_epoch";
/// 1 on the replica that is the leader, 0 on the others.
pub const IS_LEADER: &str = "switchboard_coordinator_is_leader";
/// Sidecars' outcome streams open on this replica (the leader's judge reads them).
pub const OUTCOME_STREAMS: &str = "switchboard_outcome_streams";
/// Loops of the leader that ended before their term, by returning or panicking: `loop`
/// (`judge`, `janitor`, `capacity-sampler`). Each one ended the term and released the lease.
pub const LEADER_LOOP_FAILURES: &str = "switchboard_leader_loop_failures_total";
/// Terms that ended because the election lease could no longer be kept alive.
pub const LEADERSHIP_LOST: &str = "switchboard_leadership_lost_total";
/// etcd's database size, the part in use, and the quota it is checked against.
pub const ETCD_DB_BYTES: &str = "switchboard_etcd_db_bytes";
pub const ETCD_DB_IN_USE_BYTES: &str = "switchboard_etcd_db_in_use_bytes";
pub const ETCD_QUOTA_BYTES: &str = "switchboard_etcd_quota_bytes";
pub const ETCD_COMPACTED_REVISION: &str = "switchboard_etcd_compacted_revision";
pub const ETCD_ENDPOINTS_IN_SERVICE: &str = "switchboard_etcd_endpoints_in_service";
/// Staging: sets sealed, chunks and chunk bytes uploaded.
pub const STAGES_SEALED: &str = "switchboard_stages_sealed_total";
pub const CHUNKS_UPLOADED: &str = "switchboard_chunks_uploaded_total";
pub const CHUNK_BYTES_UPLOADED: &str = "switchboard_chunk_bytes_uploaded_total";
/// Garbage collection by the janitor: `namespace`.
pub const GC_MANIFESTS_DELETED: &str = "switchboard_gc_manifests_deleted_total";
pub const GC_PAGES_DELETED: &str = "switchboard_gc_pages_deleted_total";
pub const GC_CHUNKS_DELETED: &str = "switchboard_gc_chunks_deleted_total";
/// Requests refused by authentication or authorization: `rpc`, `code` (`unauthenticated`,
/// `permission_denied`), `reason` ([`DENIAL_REASONS`]).
pub const REQUESTS_DENIED: &str = "switchboard_requests_denied_total";
/// Known users' denials that were not written to an audit trail: `rpc`, `reason`
/// ([`UNAUDITED_REASONS`]).
pub const DENIALS_UNAUDITED: &str = "switchboard_denials_unaudited_total";
/// Requests refused for the caller's rate limit: `caller` (`user`, `token`, `peer`).
pub const REQUESTS_RATE_LIMITED: &str = "switchboard_requests_rate_limited_total";
/// Reloads of the `--auth` file on SIGHUP: `result` (`ok`, `error`).
pub const AUTH_RELOADS: &str = "switchboard_auth_reloads_total";
/// Users of the `--auth` file in force (0 without `--auth`).
pub const AUTH_USERS: &str = "switchboard_auth_users";
/// TLS handshakes on the HTTP listener that did not complete, by `reason`: `refused`,
/// `timeout`, or `too_many` (closed at once: too many handshakes were under way).
pub const TLS_HANDSHAKES_FAILED: &str = "switchboard_tls_handshakes_failed_total";

/// The `code` and `reason` of a denial: no token, a token of nobody, or a user without the
/// role.
pub const DENIAL_REASONS: [(&str, &str); 3] = [
    ("unauthenticated", "missing_token"),
    ("unauthenticated", "unknown_token"),
    ("permission_denied", "role"),
];
/// Why a known user's denial was not audited: the user's allowance of audited denials was
/// used up, the namespace does not exist (or is not a valid name), or etcd did not take the
/// record.
pub const UNAUDITED_REASONS: [&str; 3] = ["rate_limited", "unknown_namespace", "etcd_error"];
/// Who a rate limit counts requests against.
pub const RATE_LIMITED_CALLERS: [&str; 3] = ["user", "token", "peer"];

/// The `# HELP` lines. Needs the recorder installed first.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        ROUTING_CHANGES,
        "Routing changes committed, by namespace and action."
    );
    describe_counter!(
        AUTOMATIC_ROLLBACKS,
        "Automatic rollbacks by the health judge, by namespace and phase (canary: the canary set to 0; bake: everyone back to the previous set)."
    );
    describe_counter!(
        JUDGE_VERDICTS,
        "Verdicts of the health judge, by namespace and outcome (pass, breach, insufficient)."
    );
    describe_gauge!(
        JUDGE_WINDOW_REQUESTS,
        "Outcomes in the judge's window, by namespace and role (candidate, baseline); 0 while nothing is judged."
    );
    describe_gauge!(
        JUDGE_MIN_REQUESTS,
        "The policy's minimum of candidate outcomes in the window for a verdict other than insufficient."
    );
    describe_gauge!(
        JUDGE_STARVED,
        "1 while the judge evaluates a candidate whose window holds fewer outcomes than the policy's minimum, else 0."
    );
    describe_counter!(
        ROLLOUT_STEPS,
        "Rollout steps taken by the leader, by namespace."
    );
    describe_counter!(
        ROLLOUT_STEPS_GATED,
        "Rollout steps that waited for their gates, by namespace."
    );
    describe_gauge!(
        SIDECARS_LIVE,
        "Sidecars with a live health record, by namespace (set by the leader)."
    );
    describe_gauge!(
        SIDECARS_ON_CURRENT_EPOCH,
        "Live sidecars serving the current routing epoch or a newer one, by namespace (set by the leader)."
    );
    describe_gauge!(
        IS_LEADER,
        "1 while this replica is the elected leader that runs the judge, rollouts and housekeeping."
    );
    describe_gauge!(
        OUTCOME_STREAMS,
        "Sidecars' outcome streams open on this replica; the leader takes them, the others refuse them."
    );
    describe_counter!(
        LEADERSHIP_LOST,
        "Terms of this replica that ended because its election lease could no longer be kept alive (etcd unreachable, or too slow to answer before the lease might expire)."
    );
    describe_counter!(
        LEADER_LOOP_FAILURES,
        "Loops of the leader (judge, janitor, capacity-sampler) that ended before their term by returning or panicking; each ended the term and released the lease, by loop."
    );
    describe_gauge!(
        ETCD_DB_BYTES,
        Unit::Bytes,
        "Size of etcd's database file, compared with its quota (sampled by the leader)."
    );
    describe_gauge!(
        ETCD_DB_IN_USE_BYTES,
        Unit::Bytes,
        "Part of etcd's database in use (sampled by the leader)."
    );
    describe_gauge!(
        ETCD_QUOTA_BYTES,
        Unit::Bytes,
        "etcd's quota (--quota-backend-bytes, or what etcd reports)."
    );
    describe_gauge!(
        ETCD_COMPACTED_REVISION,
        "The revision to which the leader last compacted etcd."
    );
    describe_gauge!(
        ETCD_ENDPOINTS_IN_SERVICE,
        "etcd endpoints the client uses, after taking out members that do not answer."
    );
    describe_counter!(STAGES_SEALED, "Staged sets sealed.");
    describe_counter!(CHUNKS_UPLOADED, "Chunks written to etcd by stages.");
    describe_counter!(
        CHUNK_BYTES_UPLOADED,
        Unit::Bytes,
        "Bytes of chunks written to etcd by stages."
    );
    describe_counter!(
        GC_MANIFESTS_DELETED,
        "Manifests deleted by the janitor, by namespace."
    );
    describe_counter!(
        GC_PAGES_DELETED,
        "Manifest pages deleted by the janitor, by namespace."
    );
    describe_counter!(
        GC_CHUNKS_DELETED,
        "Chunks deleted by the janitor, by namespace."
    );
    describe_counter!(
        REQUESTS_DENIED,
        "Requests refused for a missing or unknown token or a missing role, by rpc, code and reason (missing_token, unknown_token, role)."
    );
    describe_counter!(
        DENIALS_UNAUDITED,
        "Known users' denials not written to an audit trail, by rpc and reason (rate_limited: over the user's few per minute; unknown_namespace; etcd_error)."
    );
    describe_counter!(
        REQUESTS_RATE_LIMITED,
        "Requests refused for the caller's rate limit (--rate-limit-per-second), by the kind of caller they were counted against (user, token, peer)."
    );
    describe_counter!(
        AUTH_RELOADS,
        "Reloads of the --auth file on SIGHUP, by result (ok, error: the previous users stay in force)."
    );
    describe_gauge!(
        AUTH_USERS,
        "Users of the --auth file in force (0 without --auth)."
    );
    describe_counter!(
        TLS_HANDSHAKES_FAILED,
        "TLS handshakes on the HTTP listener that did not complete, by reason (refused, timeout, too_many: closed at once while too many were under way)."
    );
}

/// Registers the process-wide metrics with their zero values.
pub fn register() {
    metrics::gauge!(IS_LEADER).set(0.0);
    for counter in [STAGES_SEALED, CHUNKS_UPLOADED, CHUNK_BYTES_UPLOADED] {
        metrics::counter!(counter).absolute(0);
    }
    for rpc in crate::auth::Rpc::ALL {
        for (code, reason) in DENIAL_REASONS {
            metrics::counter!(REQUESTS_DENIED, "rpc" => rpc.name(), "code" => code, "reason" => reason)
                .increment(0);
        }
        for reason in UNAUDITED_REASONS {
            metrics::counter!(DENIALS_UNAUDITED, "rpc" => rpc.name(), "reason" => reason)
                .increment(0);
        }
    }
    for caller in RATE_LIMITED_CALLERS {
        metrics::counter!(REQUESTS_RATE_LIMITED, "caller" => caller).increment(0);
    }
    for result in ["ok", "error"] {
        metrics::counter!(AUTH_RELOADS, "result" => result).increment(0);
    }
    metrics::gauge!(AUTH_USERS).set(0.0);
    for reason in ["refused", "timeout", "too_many"] {
        metrics::counter!(TLS_HANDSHAKES_FAILED, "reason" => reason).increment(0);
    }
    for leader_loop in crate::leader::LEADER_LOOPS {
        metrics::counter!(LEADER_LOOP_FAILURES, "loop" => leader_loop).absolute(0);
    }
    metrics::counter!(LEADERSHIP_LOST).absolute(0);
}

/// Registers a namespace's counters with their zero values; the judge calls it when it first
/// sees the namespace.
pub fn register_namespace(ns: &str) {
    let label = || ("namespace", ns.to_string());
    for phase in ["canary", "bake"] {
        metrics::counter!(
            AUTOMATIC_ROLLBACKS,
            &[label(), ("phase", phase.to_string())]
        )
        .increment(0);
    }
    for outcome in ["pass", "breach", "insufficient"] {
        metrics::counter!(JUDGE_VERDICTS, &[label(), ("outcome", outcome.to_string())])
            .increment(0);
    }
    for counter in [
        ROLLOUT_STEPS,
        ROLLOUT_STEPS_GATED,
        GC_MANIFESTS_DELETED,
        GC_PAGES_DELETED,
        GC_CHUNKS_DELETED,
    ] {
        metrics::counter!(counter, &[label()]).increment(0);
    }
    metrics::gauge!(JUDGE_STARVED, &[label()]).set(0.0);
}

/// Sets the gauges that only the leader keeps to 0 for `namespaces`, when its term ends: a
/// former leader must not go on exporting the last values it saw, which dashboards and alerts
/// would take for the present.
pub fn leader_gauges_off<'a>(namespaces: impl IntoIterator<Item = &'a String>) {
    for ns in namespaces {
        judging_nothing(ns);
        metrics::gauge!(SIDECARS_LIVE, "namespace" => ns.clone()).set(0.0);
        metrics::gauge!(SIDECARS_ON_CURRENT_EPOCH, "namespace" => ns.clone()).set(0.0);
    }
}

/// The judge's gauges while it judges nothing in `ns` (no canary and no bake time): no window,
/// so not starved either.
pub fn judging_nothing(ns: &str) {
    metrics::gauge!(JUDGE_WINDOW_REQUESTS, "namespace" => ns.to_string(), "role" => "candidate")
        .set(0.0);
    metrics::gauge!(JUDGE_WINDOW_REQUESTS, "namespace" => ns.to_string(), "role" => "baseline")
        .set(0.0);
    metrics::gauge!(JUDGE_STARVED, "namespace" => ns.to_string()).set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(f: impl FnOnce()) -> String {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    #[test]
    fn a_namespace_is_registered_with_zeros_and_every_name_has_help() {
        let text = render(|| {
            describe();
            register();
            register_namespace("catalog");
        });
        for line in [
            "switchboard_coordinator_is_leader 0",
            "switchboard_stages_sealed_total 0",
            r#"switchboard_leader_loop_failures_total{loop="judge"} 0"#,
            r#"switchboard_leader_loop_failures_total{loop="janitor"} 0"#,
            r#"switchboard_leader_loop_failures_total{loop="capacity-sampler"} 0"#,
            r#"switchboard_automatic_rollbacks_total{namespace="catalog",phase="canary"} 0"#,
            r#"switchboard_automatic_rollbacks_total{namespace="catalog",phase="bake"} 0"#,
            r#"switchboard_judge_verdicts_total{namespace="catalog",outcome="insufficient"} 0"#,
            r#"switchboard_gc_chunks_deleted_total{namespace="catalog"} 0"#,
            r#"switchboard_judge_starved{namespace="catalog"} 0"#,
            r#"switchboard_requests_denied_total{rpc="Flip",code="unauthenticated",reason="unknown_token"} 0"#,
            r#"switchboard_denials_unaudited_total{rpc="Flip",reason="rate_limited"} 0"#,
            r#"switchboard_requests_rate_limited_total{caller="peer"} 0"#,
            r#"switchboard_auth_reloads_total{result="error"} 0"#,
            "switchboard_auth_users 0",
            "# HELP switchboard_automatic_rollbacks_total Automatic rollbacks",
            "# HELP switchboard_auth_reloads_total Reloads of the --auth file",
            "# HELP switchboard_judge_starved 1 while the judge evaluates",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn a_former_leader_exports_zeros_not_its_last_view() {
        let namespaces = vec!["catalog".to_string()];
        let text = render(|| {
            metrics::gauge!(SIDECARS_LIVE, "namespace" => "catalog").set(3.0);
            metrics::gauge!(JUDGE_STARVED, "namespace" => "catalog").set(1.0);
            leader_gauges_off(&namespaces);
        });
        for line in [
            r#"switchboard_sidecars_live{namespace="catalog"} 0"#,
            r#"switchboard_sidecars_on_current_epoch{namespace="catalog"} 0"#,
            r#"switchboard_judge_starved{namespace="catalog"} 0"#,
            r#"switchboard_judge_window_requests{namespace="catalog",role="candidate"} 0"#,
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }
}

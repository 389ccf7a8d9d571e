//! The human text of the judge policy, gates, approvals and rollouts.

use super::*;

/// The settings of a policy, as `(flag name, value text)`, in [`crate::cli::POLICY_FLAGS`]
/// order.
pub(super) fn policy_settings(policy: &Policy) -> [(&'static str, String); 7] {
    [
        ("max-error-rate", rate(policy.max_error_rate)),
        ("min-requests", policy.min_requests.to_string()),
        ("window", seconds_text(policy.window_seconds)),
        ("bake", seconds_text(policy.bake_seconds)),
        ("require-approval", policy.require_approval.to_string()),
        (
            "destructive-requires-approval",
            policy.destructive_requires_approval.to_string(),
        ),
        ("preview-reads", policy.preview_reads.to_string()),
    ]
}

/// A policy on one line, for `sbctl status`: the settings, then which differ from the
/// defaults.
pub fn render_policy_line(policy: &Policy) -> String {
    let settings = policy_settings(policy);
    let defaults = policy_settings(&Policy::default());
    // The switches that are off by default are named only when on, to keep the line short.
    let line = settings
        .iter()
        .zip(&defaults)
        .filter(|(setting, default)| {
            !(setting.1 == default.1
                && matches!(setting.0, "destructive-requires-approval" | "preview-reads"))
        })
        .map(|((name, value), _)| format!("{name} {value}"))
        .collect::<Vec<_>>()
        .join("  ");
    let changed: Vec<&str> = settings
        .iter()
        .zip(&defaults)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect();
    if changed.is_empty() {
        format!("{line}  (the defaults)")
    } else {
        format!("{line}  (not default: {})", changed.join(", "))
    }
}

/// The human text of `sbctl policy show` and `policy set`: each setting with its value and
/// whether it is the default; with `previous`, what each changed setting was.
pub fn render_policy(namespace: &str, policy: &Policy, previous: Option<&Policy>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "policy of {namespace}");
    let settings = policy_settings(policy);
    let defaults = policy_settings(&Policy::default());
    let before = previous.map(policy_settings);
    for (i, (name, value)) in settings.iter().enumerate() {
        let default = &defaults[i].1;
        let mut line = if value == default {
            format!("  {name:<31}{value:<14}default")
        } else {
            format!("  {name:<31}{value:<14}not the default ({default})")
        };
        if let Some((_, was)) = before.as_ref().map(|b| &b[i]).filter(|b| &b.1 != value) {
            let _ = write!(line, ", was {was}");
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = write!(out, "{}", render_gates(namespace, &policy.gates));
    out
}

/// The gates of a namespace, one per line: name, what it looks at, what it needs.
pub fn render_gates(namespace: &str, gates: &[Gate]) -> String {
    if gates.is_empty() {
        return format!("gates of {namespace}: none\n");
    }
    let mut out = format!("gates of {namespace}\n");
    for gate in gates {
        let _ = writeln!(
            out,
            "  {:<16}{}  needs {}",
            gate.name,
            gate.target(),
            gate.wanted()
        );
    }
    out
}

/// `sbctl gate check`: each gate with what it saw.
pub fn render_gate_report(report: &GateReport) -> String {
    let mut out = format!(
        "gates of {} for version {}: {}\n",
        report.namespace,
        report.version,
        if report.passed { "all pass" } else { "BLOCKED" }
    );
    if report.gates.is_empty() {
        out.push_str("  none\n");
    }
    for gate in &report.gates {
        let _ = writeln!(
            out,
            "  {:<6}{:<16}saw {}, needs {}",
            if gate.passed { "pass" } else { "BLOCK" },
            gate.name,
            gate.saw,
            gate.wanted
        );
    }
    out
}

/// `sbctl approve`
pub fn render_approval(approval: &Approval) -> String {
    let mut out = format!(
        "version {} of {} approved by {} at {} (staged by {}; manifest {})",
        approval.version,
        approval.namespace,
        approval.approved_by,
        time(approval.at_ms),
        approval.staged_by,
        approval.manifest.get(..12).unwrap_or(&approval.manifest)
    );
    if !approval.reason.is_empty() {
        let _ = write!(out, "  {:?}", approval.reason);
    }
    out.push('\n');
    out
}

pub(super) fn state_text(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Done => "done",
        RolloutState::Aborted => "aborted",
        RolloutState::RolledBack => "rolled back",
    }
}

/// `2/5: 1%  [5%]  25%  50%  100%`, the current step in brackets.
pub(super) fn render_steps(rollout: &Rollout) -> String {
    let steps = rollout
        .steps_bp
        .iter()
        .enumerate()
        .map(|(i, &bp)| {
            if i == rollout.step {
                format!("[{}]", percent(bp))
            } else {
                percent(bp)
            }
        })
        .collect::<Vec<_>>()
        .join("  ");
    format!(
        "{}/{}: {steps}",
        rollout.step.saturating_add(1),
        rollout.steps_bp.len()
    )
}

/// The next step and when it is due (an interval after the current one was applied).
pub(super) fn render_next(rollout: &Rollout, now_ms: u64) -> String {
    let Some(next) = rollout.next_weight_bp() else {
        return match rollout.state {
            RolloutState::Running | RolloutState::Paused => "none: this is the last step".into(),
            state => format!("none: the rollout is {}", state_text(state)),
        };
    };
    let next = if next >= 10_000 {
        format!("{} (flip)", percent(next))
    } else {
        percent(next)
    };
    match rollout.state {
        RolloutState::Running => {
            let due = rollout
                .step_at_ms
                .saturating_add(rollout.interval_seconds.saturating_mul(1000));
            format!("{next} due {} ({})", time(due), relative(due, now_ms))
        }
        RolloutState::Paused => format!("{next} once resumed"),
        state => format!("none: the rollout is {}", state_text(state)),
    }
}

/// The human text of `sbctl rollout`: state, version, the steps with the current one marked,
/// the next step and when it is due, and the note.
pub fn render_rollout(namespace: &str, rollout: &Rollout, now_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rollout of {namespace}: {}", state_text(rollout.state));
    let _ = writeln!(
        out,
        "version    {}",
        slot_version(rollout.slot, &rollout.version)
    );
    let _ = writeln!(out, "step       {}", render_steps(rollout));
    let _ = writeln!(out, "interval   {}", seconds_text(rollout.interval_seconds));
    let _ = writeln!(out, "next       {}", render_next(rollout, now_ms));
    let _ = writeln!(
        out,
        "started    by {} at {}",
        if rollout.started_by.is_empty() {
            "-"
        } else {
            &rollout.started_by
        },
        time(rollout.started_at_ms)
    );
    if !rollout.note.is_empty() {
        let _ = writeln!(out, "note       {}", rollout.note);
    }
    out
}

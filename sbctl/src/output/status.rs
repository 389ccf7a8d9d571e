//! The human text of a namespace's status, its sidecars and reports, a routing change, and
//! the history of versions.

use super::*;

pub(super) fn slot_version(slot: Slot, version: &str) -> String {
    format!("{slot} {version}")
}

/// The human text of `sbctl status`; `now_ms` places the bake's end and the next rollout step.
pub fn render_status(status: &NamespaceStatus, now_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "namespace  {}", status.namespace);
    let _ = writeln!(out, "epoch      {}", status.epoch);
    let active = status
        .active
        .as_ref()
        .map(|a| slot_version(a.slot, &a.version));
    let _ = writeln!(out, "active     {}", active.as_deref().unwrap_or("none"));
    let canary = status.canary.as_ref().map(|c| {
        format!(
            "{}  {} of consumers",
            slot_version(c.slot, &c.version),
            percent(c.weight_bp)
        )
    });
    let _ = writeln!(out, "canary     {}", canary.as_deref().unwrap_or("none"));
    let previous = status
        .previous
        .as_ref()
        .map(|p| slot_version(p.slot, &p.version));
    let _ = writeln!(out, "previous   {}", previous.as_deref().unwrap_or("none"));
    if let Some(until) = status.bake_until_ms {
        let _ = writeln!(
            out,
            "bake until {} ({}): the previous set stays hot and the judge can flip back",
            time(until),
            relative(until, now_ms)
        );
    }
    let _ = writeln!(out, "policy     {}", render_policy_line(&status.policy));
    if let Some(rollout) = &status.rollout {
        let _ = writeln!(
            out,
            "rollout    {}  {}  step {}",
            state_text(rollout.state),
            slot_version(rollout.slot, &rollout.version),
            render_steps(rollout)
        );
        let _ = writeln!(out, "           next {}", render_next(rollout, now_ms));
        if !rollout.note.is_empty() {
            let _ = writeln!(out, "           note: {}", rollout.note);
        }
    }
    let _ = writeln!(
        out,
        "leader     {}",
        status.leader.as_deref().unwrap_or("none elected")
    );

    let _ = writeln!(out, "\nslots");
    for slot in Slot::BOTH {
        let record = match slot {
            Slot::Blue => status.slots.blue.as_ref(),
            Slot::Green => status.slots.green.as_ref(),
        };
        let role = if status.active.as_ref().is_some_and(|a| a.slot == slot) {
            "  (active)".to_string()
        } else if let Some(c) = status.canary.as_ref().filter(|c| c.slot == slot) {
            format!("  (canary, {})", percent(c.weight_bp))
        } else {
            String::new()
        };
        match record {
            None => {
                let _ = writeln!(out, "  {:<5}  empty{role}", slot.as_str());
            }
            Some(r) => {
                let _ = writeln!(out, "  {:<5}  {}{role}", slot.as_str(), render_slot_ref(r));
            }
        }
    }

    for approval in &status.approvals {
        let _ = writeln!(
            out,
            "  approved {} by {} at {}",
            approval.version,
            approval.approved_by,
            time(approval.at_ms)
        );
    }

    let live = status.sidecars.len();
    let _ = writeln!(out, "\nsidecars ({live} live)");
    if live == 0 {
        let _ = writeln!(out, "  none");
    }
    for sidecar in &status.sidecars {
        let _ = writeln!(out, "  {}", render_sidecar(sidecar, status.epoch));
        if !sidecar.reports.is_empty() {
            let _ = writeln!(out, "    reports  {}", render_reports(&sidecar.reports));
        }
    }

    match &status.last_change {
        Some(change) => {
            let _ = write!(
                out,
                "\nlast change  {} by {} at {}",
                change.action,
                change.by,
                time(change.at_ms)
            );
            if !change.reason.is_empty() {
                let _ = write!(out, ": {}", change.reason);
            }
            out.push('\n');
        }
        None => out.push_str("\nlast change  none\n"),
    }
    out
}

/// What applications reported through a sidecar, per version: `aaaa: 1200 ok/3 errors
/// (0.25%)`.
pub fn render_reports(reports: &[VersionReports]) -> String {
    reports
        .iter()
        .map(|r| {
            let counts = Counts {
                ok: r.ok,
                errors: r.errors,
            };
            format!(
                "{}: {} ok/{} errors ({})",
                r.version,
                r.ok,
                r.errors,
                observed_rate(counts.error_rate())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn render_slot_ref(r: &SlotRef) -> String {
    let state = match r.state {
        SlotState::Staging => "staging",
        SlotState::Sealed => "sealed",
    };
    let mut line = format!(
        "{state:<7}  {}  {} items  {}  staged by {} at {}",
        r.version,
        r.item_count,
        human_bytes(r.bytes),
        if r.staged_by.is_empty() {
            "-"
        } else {
            &r.staged_by
        },
        time(r.at_ms),
    );
    if !r.message.is_empty() {
        let _ = write!(line, "  {:?}", r.message);
    }
    line
}

pub(super) fn render_sidecar(sidecar: &StatusSidecar, current_epoch: u64) -> String {
    let on_epoch = if sidecar.epoch >= current_epoch {
        "current"
    } else {
        "behind"
    };
    let serving = if sidecar.serving.is_empty() {
        "nothing".to_string()
    } else {
        sidecar
            .serving
            .iter()
            .map(|s| slot_version(s.slot, &s.version))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let etcd = if sidecar.etcd_reachable {
        "etcd reachable"
    } else {
        "etcd UNREACHABLE"
    };
    let mut line = format!(
        "{}  epoch {} ({on_epoch})  serving {serving}  {etcd}  reported {}",
        sidecar.id,
        sidecar.epoch,
        time(sidecar.at_ms)
    );
    if let Some(drift) = &sidecar.drift {
        let _ = write!(line, "  DRIFT: {drift}");
    }
    line
}

pub(super) fn render_slot_version(sv: Option<&SlotVersion>) -> String {
    sv.map(|s| slot_version(s.slot, &s.version))
        .unwrap_or_else(|| "none".to_string())
}

/// The human text of a routing change (canary, flip, rollback).
pub fn render_routing_change(change: &RoutingChange) -> String {
    let routing = &change.routing;
    let mut out = String::new();
    let action = if routing.action.is_empty() {
        "routing change"
    } else {
        &routing.action
    };
    let _ = writeln!(
        out,
        "{action} done in {}: now at epoch {}",
        change.namespace, routing.epoch
    );
    let _ = writeln!(
        out,
        "active     {}",
        render_slot_version(Some(&routing.active))
    );
    let canary = match &routing.canary {
        Some(c) => format!(
            "{}  {} of consumers",
            slot_version(c.slot, &c.version),
            percent(c.weight_bp)
        ),
        None => "none".to_string(),
    };
    let _ = writeln!(out, "canary     {canary}");
    let _ = writeln!(
        out,
        "previous   {}",
        render_slot_version(routing.previous.as_ref())
    );
    let _ = writeln!(out, "audit      record {}", change.audit_seq);
    out
}

/// `sbctl history`: one version per line, newest first.
pub fn render_history(history: &History) -> String {
    let mut out = format!("history of {}\n", history.namespace);
    if history.versions.is_empty() {
        out.push_str("  nothing was staged yet\n");
    }
    for version in &history.versions {
        let entry = &version.entry;
        let mut line = format!(
            "  {:<20}  {:<8}  {} items  {}  staged by {} at {}",
            entry.version,
            if version.role.is_empty() {
                "-"
            } else {
                &version.role
            },
            entry.item_count,
            human_bytes(entry.bytes),
            entry.staged_by,
            time(entry.at_ms)
        );
        if !version.approved_by.is_empty() {
            let _ = write!(line, "  approved by {}", version.approved_by.join(", "));
        }
        if !version.retained {
            line.push_str("  (not retained)");
        }
        if !entry.message.is_empty() {
            let _ = write!(line, "  {:?}", entry.message);
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

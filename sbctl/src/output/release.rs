//! The human text of a release's steps: a stage, a plan or diff, a contract, the wait for
//! the sidecars, a synchronized flip's measurements, and the audit trail.

use super::*;

/// Microseconds as milliseconds with three decimals.
pub(super) fn micros(us: i64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// The human text after `flip --sync`.
pub fn render_sync_report(report: &SyncReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "prepared   {} sidecar(s) acknowledged in {} ms (epoch {})",
        report.acknowledged, report.ack_wait_ms, report.prepare_epoch
    );
    let _ = writeln!(
        out,
        "activation {} (lead {} ms)",
        rfc3339_ms(report.activate_at_ms),
        report.lead_ms
    );
    match (report.spread_us, report.max_late_us) {
        (Some(spread), Some(late)) => {
            let _ = writeln!(
                out,
                "spread     {} across {} sidecar(s); the latest switched {} after the activation point",
                micros(i64::try_from(spread).unwrap_or(i64::MAX)),
                report.sidecars.len(),
                micros(late)
            );
        }
        _ => {
            let _ = writeln!(out, "spread     no sidecar reported its switch");
        }
    }
    for (what, ids) in [
        ("not yet", &report.behind),
        ("gone", &report.gone),
        ("moved on", &report.moved_on),
    ] {
        if !ids.is_empty() {
            let _ = writeln!(out, "{what:<10} {}", ids.join(", "));
        }
    }
    out
}

/// The human line after `flip --wait` converged.
pub fn render_wait(wait: &WaitReport) -> String {
    match wait.sidecars {
        0 => format!("no live sidecars to wait for at epoch {}", wait.epoch),
        1 => format!("the one live sidecar serves epoch {}", wait.epoch),
        n => format!("all {n} live sidecars serve epoch {}", wait.epoch),
    }
}

/// One line of `sbctl audit`: seq, time, actor, action, reason, detail.
pub fn render_audit_record(record: &AuditRecord) -> String {
    let reason = if record.reason.is_empty() {
        "-".to_string()
    } else {
        format!("{:?}", record.reason)
    };
    let mut line = format!(
        "{:>5}  {}  {}  {}  {reason}",
        record.seq,
        time(record.at_ms),
        record.actor,
        record.action
    );
    let detail = render_detail(&record.detail);
    if !detail.is_empty() {
        line.push_str("  ");
        line.push_str(&detail);
    }
    line
}

/// A compact rendering of an audit record's detail: an object as `key=value` pairs in key
/// order (strings unquoted when they are one plain word), anything else as compact JSON.
pub fn render_detail(detail: &serde_json::Value) -> String {
    use serde_json::Value;
    let compact = |v: &Value| {
        String::from_utf8_lossy(&switchboard_proto::set::canonical_json(v)).into_owned()
    };
    match detail {
        Value::Null => String::new(),
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            entries
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s)
                        if !s.is_empty()
                            && s.chars()
                                .all(|c| !c.is_whitespace() && !c.is_control() && c != '"') =>
                    {
                        format!("{k}={s}")
                    }
                    other => format!("{k}={}", compact(other)),
                })
                .collect::<Vec<_>>()
                .join(" ")
        }
        other => compact(other),
    }
}

/// The human text of `sbctl audit`, without the verification line.
pub fn render_audit(trail: &AuditTrail) -> String {
    let mut out = String::new();
    if trail.records.is_empty() {
        let _ = writeln!(out, "no audit records in {}", trail.namespace);
    }
    for record in &trail.records {
        out.push_str(&render_audit_record(record));
        out.push('\n');
    }
    out
}

/// The human text of `sbctl contract show|set|approve`.
pub fn render_contract(view: &switchboard_contract::ContractView) -> String {
    let mut text = String::new();
    let describe = |record: &switchboard_contract::ContractRecord| {
        let mut line = format!(
            "{} ({} schema rule(s), {} Rego rule file(s)), set by {} at {}",
            record.short_hash(),
            record.contract.schemas.len(),
            record.contract.rules.len(),
            record.set_by,
            switchboard_proto::time::rfc3339_ms(record.at_ms)
        );
        if let Some(approver) = &record.approved_by {
            line.push_str(&format!(", approved by {approver}"));
        }
        if !record.reason.is_empty() {
            line.push_str(&format!(": {}", record.reason));
        }
        let mut out = line;
        for rule in &record.contract.schemas {
            out.push_str(&format!("\n  schema {} for {}", rule.schema, rule.pattern));
        }
        for name in record.contract.rules.keys() {
            out.push_str(&format!("\n  rules  {name}"));
        }
        out
    };
    match &view.active {
        Some(record) => text.push_str(&format!(
            "contract of {} in force: {}\n",
            view.namespace,
            describe(record)
        )),
        None => text.push_str(&format!(
            "{} has no contract: seals check no schema and no rule (destructive changes still need --allow-destructive)\n",
            view.namespace
        )),
    }
    if let Some(proposal) = &view.proposal {
        text.push_str(&format!(
            "waiting for approval: {}\nanother approver runs `sbctl contract approve {} {}`\n",
            describe(proposal),
            view.namespace,
            proposal.short_hash()
        ));
    }
    text
}

/// The human text of `sbctl stage`; the version id is the last line.
pub fn render_stage(report: &StageReport) -> String {
    let first = match report.outcome.as_str() {
        "already_active" => format!(
            "version {} is already active in slot {}; nothing to stage",
            report.version, report.slot
        ),
        "already_staged" => format!(
            "version {} is already staged in slot {}; nothing to stage",
            report.version, report.slot
        ),
        _ => format!(
            "staged {} items ({}, {} of {} chunks uploaded) into slot {}",
            report.items,
            human_bytes(report.bytes),
            report.chunks_uploaded,
            report.chunks_total,
            report.slot
        ),
    };
    let mut text = format!("{first}\n");
    for warning in &report.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    for reason in &report.approval_reasons {
        text.push_str(&format!("needs approval: {reason}\n"));
    }
    text.push_str(&report.version);
    text.push('\n');
    text
}

/// The lines `sbctl plan` adds for the contract's preview.
pub fn render_contract_preview(namespace: &str, preview: &ContractPreview) -> String {
    let mut out = String::new();
    let verdict = if preview.refusal.is_some() {
        "the seal would refuse this set"
    } else {
        "the seal would accept this set"
    };
    let _ = writeln!(
        out,
        "contract {} of {namespace}: {verdict} ({} schema violation(s), {} deny, {} warn, {} approval message(s))",
        preview.contract,
        preview.violation_total,
        preview.deny.len(),
        preview.warn.len(),
        preview.approval.len()
    );
    for warning in &preview.warn {
        let _ = writeln!(out, "warning: {warning}");
    }
    for reason in &preview.approval {
        let _ = writeln!(out, "needs approval: {reason}");
    }
    out
}

/// The human text of `sbctl plan`: a summary line, then the keys under `+`, `~` and `-`, each
/// changed key with its changes; then the count of each class and every destructive change.
pub fn render_plan(plan: &PlanReport) -> String {
    render_report(plan, "plan")
}

/// A plan under the heading `title` ("plan", or "diff" for `sbctl diff`).
pub(super) fn render_report(plan: &PlanReport, title: &str) -> String {
    let mut out = String::new();
    let active = plan.active_version.as_deref().unwrap_or("none");
    if plan.active_version.as_deref() == Some(plan.new_version.as_str()) {
        let _ = writeln!(
            out,
            "{title} for {}: no changes ({} items unchanged, version {active} is active)",
            plan.namespace, plan.unchanged
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{title} for {}: {} added, {} changed, {} removed, {} unchanged (active {active} -> new {})",
        plan.namespace,
        plan.added.len(),
        plan.changed.len(),
        plan.removed.len(),
        plan.unchanged,
        plan.new_version
    );
    if plan.added.is_empty() && plan.changed.is_empty() && plan.removed.is_empty() {
        let _ = writeln!(out, "no changes");
    }
    let details: std::collections::HashMap<&str, &crate::compat::ItemPlan> =
        plan.items.iter().map(|i| (i.key.as_str(), i)).collect();
    for (mark, keys) in [
        ('+', &plan.added),
        ('~', &plan.changed),
        ('-', &plan.removed),
    ] {
        for key in keys {
            let _ = writeln!(out, "  {mark} {key}");
            if mark == '~'
                && let Some(item) = details.get(key.as_str())
            {
                crate::compat::render_item_changes(item, "      ", &mut out);
            }
        }
    }
    if plan.items.is_empty() {
        return out;
    }
    let _ = writeln!(out, "{}", crate::compat::render_counts(&plan.classes));
    let destructive = crate::compat::destructive_lines(&plan.items);
    if !destructive.is_empty() {
        let _ = writeln!(
            out,
            "destructive ({}), so `sbctl stage` needs --allow-destructive:",
            destructive.len()
        );
        for line in destructive {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// `sbctl diff`: the plan's text, headed as a diff.
pub fn render_diff(plan: &PlanReport) -> String {
    render_report(plan, "diff")
}

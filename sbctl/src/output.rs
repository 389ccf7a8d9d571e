//! What sbctl prints: the human text of every document and report, the `--json` documents, and
//! the writers. Data goes to stdout, progress and notes to stderr. A closed stdout (`sbctl
//! audit NS | head`) ends the output quietly instead of panicking.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;
use switchboard_proto::time::rfc3339_ms;
use switchboard_proto::{
    AuditRecord, AuditTrail, NamespaceStatus, RoutingChange, Slot, SlotRef, SlotState, SlotVersion,
    StatusSidecar,
};

use crate::exit::CliError;

/// Writes `text` and a final newline to stdout.
pub fn print_text(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    let result = out.write_all(text.as_bytes()).and_then(|()| {
        if text.ends_with('\n') {
            Ok(())
        } else {
            out.write_all(b"\n")
        }
    });
    finish_write(result.and_then(|()| out.flush()))
}

/// Writes a document as pretty JSON to stdout.
pub fn print_json<T: Serialize + ?Sized>(document: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(document)
        .map_err(|e| CliError::Failed(format!("cannot write JSON: {e}")))?;
    print_text(&text)
}

fn finish_write(result: io::Result<()>) -> Result<(), CliError> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Failed(format!("cannot write to stdout: {e}"))),
        Ok(()) => Ok(()),
    }
}

/// A note or progress line on stderr.
pub fn note(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// Bytes in decimal units: `512 B`, `1.2 MB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Basis points as a percentage: 1250 is `12.5%`, 25 is `0.25%`, 10000 is `100%`.
pub fn percent(basis_points: u32) -> String {
    let (whole, hundredths) = (basis_points / 100, basis_points % 100);
    match hundredths {
        0 => format!("{whole}%"),
        h if h % 10 == 0 => format!("{whole}.{}%", h / 10),
        h => format!("{whole}.{h:02}%"),
    }
}

/// A timestamp as RFC 3339, `-` when unknown (0).
pub fn time(at_ms: u64) -> String {
    if at_ms == 0 {
        "-".to_string()
    } else {
        rfc3339_ms(at_ms)
    }
}

fn slot_version(slot: Slot, version: &str) -> String {
    format!("{slot} {version}")
}

/// The human text of `sbctl status`.
pub fn render_status(status: &NamespaceStatus) -> String {
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

    let live = status.sidecars.len();
    let _ = writeln!(out, "\nsidecars ({live} live)");
    if live == 0 {
        let _ = writeln!(out, "  none");
    }
    for sidecar in &status.sidecars {
        let _ = writeln!(out, "  {}", render_sidecar(sidecar, status.epoch));
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

fn render_slot_ref(r: &SlotRef) -> String {
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

fn render_sidecar(sidecar: &StatusSidecar, current_epoch: u64) -> String {
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
    format!(
        "{}  epoch {} ({on_epoch})  serving {serving}  {etcd}  reported {}",
        sidecar.id,
        sidecar.epoch,
        time(sidecar.at_ms)
    )
}

fn render_slot_version(sv: Option<&SlotVersion>) -> String {
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

/// What `sbctl stage` did; its `--json` document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageReport {
    pub namespace: String,
    pub slot: Slot,
    pub version: String,
    /// `staged`, `already_staged` or `already_active`.
    pub outcome: String,
    pub items: u64,
    pub bytes: u64,
    pub chunks_total: u64,
    pub chunks_uploaded: u64,
    /// The sealed version the idle slot held before this stage overwrote it.
    pub replaced_version: Option<String>,
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
    format!("{first}\n{}\n", report.version)
}

/// What `sbctl plan` found; its `--json` document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanReport {
    pub namespace: String,
    pub active_version: Option<String>,
    pub new_version: String,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: u64,
}

/// The human text of `sbctl plan`: a summary line, then the keys under `+`, `~` and `-`.
pub fn render_plan(plan: &PlanReport) -> String {
    let mut out = String::new();
    let active = plan.active_version.as_deref().unwrap_or("none");
    if plan.active_version.as_deref() == Some(plan.new_version.as_str()) {
        let _ = writeln!(
            out,
            "plan for {}: no changes ({} items unchanged, version {active} is active)",
            plan.namespace, plan.unchanged
        );
        return out;
    }
    let _ = writeln!(
        out,
        "plan for {}: {} added, {} changed, {} removed, {} unchanged (active {active} -> new {})",
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
    for (mark, keys) in [
        ('+', &plan.added),
        ('~', &plan.changed),
        ('-', &plan.removed),
    ] {
        for key in keys {
            let _ = writeln!(out, "  {mark} {key}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_proto::{
        Canary, Routing, ServedSet, StatusCanary, StatusChange, StatusSlotVersion, StatusSlots,
    };

    #[test]
    fn sizes_and_percentages_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_000), "1.0 kB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        assert_eq!(human_bytes(999_960), "1.0 MB");
        assert_eq!(human_bytes(3_000_000_000), "3.0 GB");
        assert_eq!(human_bytes(u64::MAX), "18446.7 PB");
        assert_eq!(percent(0), "0%");
        assert_eq!(percent(25), "0.25%");
        assert_eq!(percent(1250), "12.5%");
        assert_eq!(percent(1234), "12.34%");
        assert_eq!(percent(10_000), "100%");
        assert_eq!(percent(5), "0.05%");
    }

    fn slot_ref(version: &str, state: SlotState) -> SlotRef {
        SlotRef {
            version: version.into(),
            manifest: "m".into(),
            state,
            item_count: 1200,
            bytes: 1_234_567,
            checksum: "c".into(),
            seed: 1,
            staged_by: "alice".into(),
            message: "v2 schemas".into(),
            at_ms: 1_795_000_000_000,
        }
    }

    #[test]
    fn status_shows_routing_slots_and_sidecars() {
        let status = NamespaceStatus {
            namespace: "catalog".into(),
            epoch: 7,
            active: Some(StatusSlotVersion {
                slot: Slot::Blue,
                version: "aaaa".into(),
            }),
            canary: Some(StatusCanary {
                slot: Slot::Green,
                version: "bbbb".into(),
                percent: 12.5,
                weight_bp: 1250,
            }),
            previous: None,
            slots: StatusSlots {
                blue: Some(slot_ref("aaaa", SlotState::Sealed)),
                green: Some(slot_ref("bbbb", SlotState::Staging)),
            },
            sidecars: vec![
                StatusSidecar {
                    id: "host-a".into(),
                    epoch: 7,
                    serving: vec![ServedSet {
                        slot: Slot::Blue,
                        version: "aaaa".into(),
                        checksum: "c".into(),
                    }],
                    etcd_reachable: true,
                    at_ms: 1_795_000_000_000,
                },
                StatusSidecar {
                    id: "host-b".into(),
                    epoch: 6,
                    serving: vec![],
                    etcd_reachable: false,
                    at_ms: 0,
                },
            ],
            last_change: Some(StatusChange {
                action: "canary".into(),
                by: "alice".into(),
                reason: "first step".into(),
                at_ms: 1_795_000_000_000,
            }),
        };
        let text = render_status(&status);
        for needle in [
            "namespace  catalog",
            "epoch      7",
            "active     blue aaaa",
            "canary     green bbbb  12.5% of consumers",
            "previous   none",
            "blue   sealed   aaaa  1200 items  1.2 MB  staged by alice at 2026-11-18T11:06:40.000Z",
            "(active)",
            "green  staging  bbbb",
            "(canary, 12.5%)",
            "host-a  epoch 7 (current)  serving blue aaaa  etcd reachable",
            "host-b  epoch 6 (behind)  serving nothing  etcd UNREACHABLE",
            "last change  canary by alice at 2026-11-18T11:06:40.000Z: first step",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn routing_changes_show_the_new_routing() {
        let change = RoutingChange {
            namespace: "catalog".into(),
            routing: Routing {
                epoch: 8,
                active: SlotVersion {
                    slot: Slot::Blue,
                    version: "aaaa".into(),
                    manifest: "m".into(),
                },
                canary: Some(Canary {
                    slot: Slot::Green,
                    version: "bbbb".into(),
                    manifest: "n".into(),
                    weight_bp: 25,
                    seed: 9,
                }),
                previous: None,
                action: "canary".into(),
                by: "alice".into(),
                reason: "".into(),
                at_ms: 1,
            },
            audit_seq: 12,
        };
        let text = render_routing_change(&change);
        assert!(
            text.starts_with("canary done in catalog: now at epoch 8"),
            "{text}"
        );
        assert!(
            text.contains("canary     green bbbb  0.25% of consumers"),
            "{text}"
        );
        assert!(text.contains("audit      record 12"), "{text}");
    }

    #[test]
    fn audit_details_are_compact() {
        assert_eq!(render_detail(&json!(null)), "");
        assert_eq!(
            render_detail(
                &json!({"to": "green", "weight_bp": 500, "why": "two words", "e": {"b": 1, "a": [1]}})
            ),
            r#"e={"a":[1],"b":1} to=green weight_bp=500 why="two words""#
        );
        assert_eq!(render_detail(&json!([1, "x"])), r#"[1,"x"]"#);
        let record = AuditRecord {
            seq: 3,
            at_ms: 1_795_000_000_000,
            namespace: "catalog".into(),
            actor: "alice".into(),
            action: "flip".into(),
            reason: "go".into(),
            detail: json!({"to": "green"}),
            prev_hash: "p".into(),
            hash: "h".into(),
        };
        assert_eq!(
            render_audit_record(&record),
            "    3  2026-11-18T11:06:40.000Z  alice  flip  \"go\"  to=green"
        );
    }

    #[test]
    fn stage_prints_the_version_last() {
        let mut report = StageReport {
            namespace: "catalog".into(),
            slot: Slot::Green,
            version: "0123456789abcdef".into(),
            outcome: "staged".into(),
            items: 1200,
            bytes: 1_234_567,
            chunks_total: 40,
            chunks_uploaded: 3,
            replaced_version: None,
        };
        let text = render_stage(&report);
        assert_eq!(
            text,
            "staged 1200 items (1.2 MB, 3 of 40 chunks uploaded) into slot green\n0123456789abcdef\n"
        );
        report.outcome = "already_active".into();
        let text = render_stage(&report);
        assert!(text.contains("already active in slot green"), "{text}");
        assert_eq!(text.lines().last(), Some("0123456789abcdef"));
    }

    #[test]
    fn plans_group_keys_by_change() {
        let mut plan = PlanReport {
            namespace: "catalog".into(),
            active_version: Some("aaaa".into()),
            new_version: "bbbb".into(),
            added: vec!["t/new".into()],
            changed: vec!["t/changed".into()],
            removed: vec!["t/gone".into()],
            unchanged: 97,
        };
        let text = render_plan(&plan);
        assert_eq!(
            text,
            "plan for catalog: 1 added, 1 changed, 1 removed, 97 unchanged (active aaaa -> new bbbb)\n  + t/new\n  ~ t/changed\n  - t/gone\n"
        );
        plan.new_version = "aaaa".into();
        assert!(render_plan(&plan).contains("no changes"));
        plan.active_version = None;
        assert!(render_plan(&plan).contains("(active none -> new aaaa)"));
    }
}

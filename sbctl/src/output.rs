//! What sbctl prints: the human text of every document and report, the `--json` documents, and
//! the writers. Data goes to stdout, progress and notes to stderr. A closed stdout (`sbctl
//! audit NS | head`) ends the output quietly instead of panicking.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;
use switchboard_proto::judge::Counts;
use switchboard_proto::time::rfc3339_ms;
use switchboard_proto::{
    Approval, AuditRecord, AuditTrail, Gate, GateReport, History, NamespaceStatus, Policy, Rollout,
    RolloutState, RoutingChange, Slot, SlotRef, SlotState, SlotVersion, StatusSidecar,
    VersionReports,
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

/// A note, a progress line or an error on stderr. Characters a terminal would act on are
/// escaped ([`crate::escape::terminal`]), whatever the message carries: names are escaped where
/// they are written, and this catches anything else (an item's JSON key in a violation, an
/// error text from the coordinator).
pub fn note(text: &str) {
    let _ = write_note(&mut io::stderr().lock(), text);
}

fn write_note(out: &mut impl Write, text: &str) -> io::Result<()> {
    writeln!(out, "{}", crate::escape::terminal(text))
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

/// A configured rate as a percentage with at most four decimals: 0.05 is `5%`, 0.0125 is
/// `1.25%`.
pub fn rate(fraction: f64) -> String {
    let text = format!("{:.4}", fraction * 100.0);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}%")
}

/// An observed error rate, to two decimals like the judge's evidence: `0.25%`.
pub fn observed_rate(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}

/// A duration in at most two units: `45s`, `4m 10s`, `1h 2m`, `2d 3h`.
pub fn short_duration(ms: u64) -> String {
    let secs = ms / 1000;
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let Some(first) = parts.iter().position(|(n, _)| *n > 0) else {
        return "0s".to_string();
    };
    parts[first..]
        .iter()
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A number of seconds: `60s`, and beside it the readable form from a minute up: `300s (5m)`.
pub fn seconds_text(seconds: u64) -> String {
    if seconds < 60 {
        format!("{seconds}s")
    } else {
        format!(
            "{seconds}s ({})",
            short_duration(seconds.saturating_mul(1000))
        )
    }
}

/// When `at_ms` is, seen from `now_ms`: `in 4m 10s`, `3s ago`, `now`.
pub fn relative(at_ms: u64, now_ms: u64) -> String {
    if at_ms.abs_diff(now_ms) < 1000 {
        "now".to_string()
    } else if at_ms > now_ms {
        format!("in {}", short_duration(at_ms - now_ms))
    } else {
        format!("{} ago", short_duration(now_ms - at_ms))
    }
}

fn slot_version(slot: Slot, version: &str) -> String {
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

/// The settings of a policy, as `(flag name, value text)`, in [`crate::cli::POLICY_FLAGS`]
/// order.
fn policy_settings(policy: &Policy) -> [(&'static str, String); 7] {
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

/// `sbctl diff`: the plan's text, headed as a diff.
pub fn render_diff(plan: &PlanReport) -> String {
    render_report(plan, "diff")
}

fn state_text(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Done => "done",
        RolloutState::Aborted => "aborted",
        RolloutState::RolledBack => "rolled back",
    }
}

/// `2/5: 1%  [5%]  25%  50%  100%`, the current step in brackets.
fn render_steps(rollout: &Rollout) -> String {
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
fn render_next(rollout: &Rollout, now_ms: u64) -> String {
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

/// How `flip --wait` ended; the `wait` member of its `--json` document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WaitReport {
    pub epoch: u64,
    /// Every live sidecar serves `epoch` or a later one.
    pub converged: bool,
    /// Live sidecars at the last status read.
    pub sidecars: usize,
    /// The ids of those not on `epoch` yet.
    pub behind: Vec<String>,
}

/// The one `--json` document of `flip --wait`: the coordinator's routing change as it came,
/// plus `"wait"`.
pub fn flip_wait_document(change: &serde_json::Value, wait: &WaitReport) -> serde_json::Value {
    let wait = serde_json::json!({
        "epoch": wait.epoch,
        "converged": wait.converged,
        "sidecars": wait.sidecars,
        "behind": wait.behind,
    });
    match change {
        serde_json::Value::Object(map) => {
            let mut map = map.clone();
            map.insert("wait".to_string(), wait);
            serde_json::Value::Object(map)
        }
        other => serde_json::json!({ "change": other, "wait": wait }),
    }
}

/// What `flip --sync` measured: when each acknowledged sidecar switched to the flip's epoch,
/// against the activation point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub epoch: u64,
    pub prepare_epoch: u64,
    pub acknowledged: usize,
    pub ack_wait_ms: u64,
    pub lead_ms: u64,
    pub activate_at_ms: u64,
    /// Every acknowledged sidecar reported a switch to `epoch`, moved past it, or left.
    pub converged: bool,
    /// Each sidecar that reported its switch to `epoch`, by id.
    pub sidecars: Vec<SyncSidecar>,
    /// Acknowledged sidecars not switched yet.
    pub behind: Vec<String>,
    /// Acknowledged sidecars that are no longer live (their health record went).
    pub gone: Vec<String>,
    /// Acknowledged sidecars already on a later epoch, whose switch to `epoch` is not known.
    pub moved_on: Vec<String>,
    /// Latest switch minus earliest, over `sidecars`; `None` without any.
    pub spread_us: Option<u64>,
    /// The earliest and the latest switch relative to the activation point (negative: early).
    pub min_late_us: Option<i64>,
    pub max_late_us: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncSidecar {
    pub id: String,
    pub activated_at_us: u64,
    pub late_us: i64,
}

impl SyncReport {
    /// Reads from `status` how far the acknowledged sidecars are with `epoch`.
    pub fn measure(
        status: &NamespaceStatus,
        epoch: u64,
        prepared: &switchboard_proto::SyncPrepared,
    ) -> SyncReport {
        let point_us = i128::from(prepared.activate_at_ms) * 1000;
        let mut report = SyncReport {
            epoch,
            prepare_epoch: prepared.prepare_epoch,
            acknowledged: prepared.acknowledged.len(),
            ack_wait_ms: prepared.ack_wait_ms,
            lead_ms: prepared.lead_ms,
            activate_at_ms: prepared.activate_at_ms,
            converged: false,
            sidecars: Vec::new(),
            behind: Vec::new(),
            gone: Vec::new(),
            moved_on: Vec::new(),
            spread_us: None,
            min_late_us: None,
            max_late_us: None,
        };
        for id in &prepared.acknowledged {
            let Some(sidecar) = status.sidecars.iter().find(|s| &s.id == id) else {
                report.gone.push(id.clone());
                continue;
            };
            match (sidecar.activated_epoch, sidecar.activated_at_us) {
                (Some(e), Some(at_us)) if e == epoch => {
                    let late = i128::from(at_us) - point_us;
                    report.sidecars.push(SyncSidecar {
                        id: id.clone(),
                        activated_at_us: at_us,
                        late_us: i64::try_from(late).unwrap_or(i64::MAX),
                    });
                }
                (Some(e), _) if e > epoch => report.moved_on.push(id.clone()),
                _ => report.behind.push(id.clone()),
            }
        }
        report.converged = report.behind.is_empty();
        let times = report.sidecars.iter().map(|s| s.activated_at_us);
        if let (Some(min), Some(max)) = (times.clone().min(), times.max()) {
            report.spread_us = Some(max - min);
        }
        report.min_late_us = report.sidecars.iter().map(|s| s.late_us).min();
        report.max_late_us = report.sidecars.iter().map(|s| s.late_us).max();
        report
    }
}

/// The one `--json` document of `flip --sync`: the coordinator's routing change as it came,
/// with the measurements added to its `sync` member.
pub fn sync_flip_document(change: &serde_json::Value, report: &SyncReport) -> serde_json::Value {
    let mut document = change.clone();
    let measured = serde_json::to_value(report).unwrap_or_default();
    if let (Some(sync), serde_json::Value::Object(measured)) = (
        document.get_mut("sync").and_then(|s| s.as_object_mut()),
        measured,
    ) {
        for (name, value) in measured {
            // The coordinator's list of acknowledging sidecars stays; the count is `acknowledged`
            // there already.
            if name != "acknowledged" {
                sync.insert(name, value);
            }
        }
    }
    document
}

/// Microseconds as milliseconds with three decimals.
fn micros(us: i64) -> String {
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

/// What `sbctl stage` did; its `--json` document.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// Bytes of all the set's chunks, and of the chunks this stage had to upload (those etcd
    /// did not hold already).
    #[serde(default)]
    pub chunk_bytes_total: u64,
    #[serde(default)]
    pub chunk_bytes_uploaded: u64,
    /// Pages of the manifest's chunk list, and those this stage had to upload.
    #[serde(default)]
    pub pages_total: u64,
    #[serde(default)]
    pub pages_uploaded: u64,
    /// Bytes of manifest sent to the coordinator: the head (once per request) and the pages
    /// uploaded.
    #[serde(default)]
    pub manifest_bytes_uploaded: u64,
    /// The sealed version the idle slot held before this stage overwrote it.
    pub replaced_version: Option<String>,
    /// The contract rules' `warn` messages at the seal.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why the version needs an approval before a canary or a flip.
    #[serde(default)]
    pub approval_reasons: Vec<String>,
    /// Where the seal's time went: reading the set back, the contract's checks, the rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_timings: Option<switchboard_proto::SealTimings>,
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

/// What `sbctl plan` found; its `--json` document. `classes` counts the changes of each class
/// and `items` holds every added, changed or removed item with its changes
/// ([`crate::compat`]), sensitive values redacted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanReport {
    pub namespace: String,
    pub active_version: Option<String>,
    pub new_version: String,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: u64,
    pub classes: crate::compat::ClassCounts,
    pub items: Vec<crate::compat::ItemPlan>,
    /// What the namespace's contract would say at the seal (`sbctl plan` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractPreview>,
}

/// The verdict of the namespace's contract on a set, judged before staging by the code the
/// coordinator runs at the seal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContractPreview {
    /// The contract's short hash.
    pub contract: String,
    pub violation_total: u64,
    /// The first violations, each naming the item and the path.
    pub violations: Vec<String>,
    pub deny: Vec<String>,
    pub warn: Vec<String>,
    pub approval: Vec<String>,
    /// The seal's refusal, word for word, if the seal would refuse the set.
    pub refusal: Option<String>,
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
fn render_report(plan: &PlanReport, title: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_proto::{
        Canary, Routing, ServedSet, StatusCanary, StatusChange, StatusSlotVersion, StatusSlots,
    };

    #[test]
    fn notes_reach_the_terminal_without_control_characters() {
        let mut out = Vec::new();
        write_note(
            &mut out,
            "error: the coordinator says \x1b[2J\x1b]0;owned\x07\n  and more\ton two lines",
        )
        .expect("write");
        let text = String::from_utf8(out).expect("UTF-8");
        assert_eq!(
            text,
            "error: the coordinator says \\u{1b}[2J\\u{1b}]0;owned\\u{7}\n  and more\ton two lines\n"
        );
    }

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
            contract: None,
            approval_reasons: Vec::new(),
        }
    }

    const T0: u64 = 1_795_000_000_000;

    fn status() -> NamespaceStatus {
        NamespaceStatus {
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
                    reports: vec![],
                    drift: None,
                    prepared: None,
                    activated_epoch: None,
                    activated_at_us: None,
                },
                StatusSidecar {
                    id: "host-b".into(),
                    epoch: 6,
                    serving: vec![],
                    etcd_reachable: false,
                    at_ms: 0,
                    reports: vec![],
                    drift: None,
                    prepared: None,
                    activated_epoch: None,
                    activated_at_us: None,
                },
            ],
            last_change: Some(StatusChange {
                action: "canary".into(),
                by: "alice".into(),
                reason: "first step".into(),
                at_ms: 1_795_000_000_000,
            }),
            bake_until_ms: None,
            policy: Policy::default(),
            rollout: None,
            leader: None,
            approvals: vec![],
        }
    }

    #[test]
    fn status_shows_routing_slots_and_sidecars() {
        let text = render_status(&status(), T0);
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
        // Absent: no bake, no rollout, no reports; the policy and the leader always show.
        for needle in [
            "policy     max-error-rate 5%  min-requests 200  window 120s (2m)  bake 300s (5m)  require-approval false  (the defaults)",
            "leader     none elected",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        for absent in ["bake until", "rollout", "reports"] {
            assert!(!text.contains(absent), "{absent:?} in\n{text}");
        }
    }

    fn rollout(state: RolloutState, step: usize) -> Rollout {
        Rollout {
            slot: Slot::Green,
            version: "bbbb".into(),
            steps_bp: vec![100, 500, 2500, 5000, 10_000],
            interval_seconds: 300,
            step,
            state,
            started_by: "alice".into(),
            started_at_ms: T0 - 600_000,
            step_at_ms: T0 - 50_000,
            note: "judge: error rate 0.10% is within the policy's 5.00%".into(),
        }
    }

    #[test]
    fn status_shows_bake_policy_rollout_leader_and_reports() {
        let mut status = status();
        status.bake_until_ms = Some(T0 + 250_000);
        status.policy = Policy {
            min_requests: 1000,
            bake_seconds: 600,
            ..Policy::default()
        };
        status.rollout = Some(rollout(RolloutState::Running, 1));
        status.leader = Some("coordinator-2".into());
        status.sidecars[0].reports = vec![
            VersionReports {
                version: "aaaa".into(),
                ok: 1197,
                errors: 3,
            },
            VersionReports {
                version: "bbbb".into(),
                ok: 0,
                errors: 0,
            },
        ];
        let text = render_status(&status, T0);
        for needle in [
            "bake until 2026-11-18T11:10:50.000Z (in 4m 10s)",
            "policy     max-error-rate 5%  min-requests 1000  window 120s (2m)  bake 600s (10m)  require-approval false  (not default: min-requests, bake)",
            "rollout    running  green bbbb  step 2/5: 1%  [5%]  25%  50%  100%",
            "           next 25% due 2026-11-18T11:10:50.000Z (in 4m 10s)",
            "           note: judge: error rate 0.10% is within the policy's 5.00%",
            "leader     coordinator-2",
            "  host-a  epoch 7 (current)",
            "    reports  aaaa: 1197 ok/3 errors (0.25%), bbbb: 0 ok/0 errors (0.00%)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // Reports belong to the sidecar above them; host-b reported nothing.
        let host_a = text.find("host-a").expect("host-a");
        let reports = text.find("    reports").expect("reports");
        let host_b = text.find("host-b").expect("host-b");
        assert!(host_a < reports && reports < host_b, "{text}");
        assert_eq!(text.matches("reports").count(), 1, "{text}");
    }

    #[test]
    fn rollouts_mark_the_current_step_and_when_the_next_is_due() {
        let text = render_rollout("catalog", &rollout(RolloutState::Running, 1), T0);
        assert_eq!(
            text,
            "rollout of catalog: running\n\
             version    green bbbb\n\
             step       2/5: 1%  [5%]  25%  50%  100%\n\
             interval   300s (5m)\n\
             next       25% due 2026-11-18T11:10:50.000Z (in 4m 10s)\n\
             started    by alice at 2026-11-18T10:56:40.000Z\n\
             note       judge: error rate 0.10% is within the policy's 5.00%\n"
        );
        // The step before the flip: the next one is the flip, overdue by now.
        let late = render_rollout("catalog", &rollout(RolloutState::Running, 3), T0 + 400_000);
        assert!(
            late.contains("step       4/5: 1%  5%  25%  [50%]  100%"),
            "{late}"
        );
        assert!(
            late.contains("next       100% (flip) due 2026-11-18T11:10:50.000Z (2m 30s ago)"),
            "{late}"
        );
        let paused = render_rollout("catalog", &rollout(RolloutState::Paused, 0), T0);
        assert!(
            paused.starts_with("rollout of catalog: paused\n"),
            "{paused}"
        );
        assert!(paused.contains("[1%]  5%"), "{paused}");
        assert!(paused.contains("next       5% once resumed"), "{paused}");
        let done = render_rollout("catalog", &rollout(RolloutState::Done, 4), T0);
        assert!(done.contains("[100%]"), "{done}");
        assert!(
            done.contains("next       none: the rollout is done"),
            "{done}"
        );
        let rolled_back = render_rollout("catalog", &rollout(RolloutState::RolledBack, 2), T0);
        assert!(
            rolled_back.starts_with("rollout of catalog: rolled back"),
            "{rolled_back}"
        );
        assert!(rolled_back.contains("next       none: the rollout is rolled back"));
        let mut last = rollout(RolloutState::Running, 1);
        last.steps_bp = vec![100, 500];
        last.note = String::new();
        let text = render_rollout("catalog", &last, T0);
        assert!(
            text.contains("next       none: this is the last step"),
            "{text}"
        );
        assert!(!text.contains("note"), "{text}");
    }

    #[test]
    fn policies_say_which_settings_are_defaults() {
        let policy = Policy {
            max_error_rate: 0.025,
            bake_seconds: 600,
            ..Policy::default()
        };
        assert_eq!(
            render_policy("catalog", &policy, None),
            "policy of catalog\n  \
             max-error-rate                 2.5%          not the default (5%)\n  \
             min-requests                   200           default\n  \
             window                         120s (2m)     default\n  \
             bake                           600s (10m)    not the default (300s (5m))\n  \
             require-approval               false         default\n  \
             destructive-requires-approval  false         default\n  \
             preview-reads                  false         default\n\
             gates of catalog: none\n"
        );
        let text = render_policy("catalog", &policy, Some(&Policy::default()));
        assert!(
            text.contains(
                "max-error-rate                 2.5%          not the default (5%), was 5%\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("min-requests                   200           default\n"),
            "{text}"
        );
        let defaults = render_policy("catalog", &Policy::default(), None);
        assert_eq!(defaults.matches("  default\n").count(), 7, "{defaults}");
    }

    #[test]
    fn durations_and_rates_read_well() {
        assert_eq!(short_duration(0), "0s");
        assert_eq!(short_duration(999), "0s");
        assert_eq!(short_duration(45_000), "45s");
        assert_eq!(short_duration(250_000), "4m 10s");
        assert_eq!(short_duration(300_000), "5m");
        assert_eq!(short_duration(3_720_000), "1h 2m");
        assert_eq!(short_duration(3_605_000), "1h");
        assert_eq!(
            short_duration(2 * 86_400_000 + 3 * 3_600_000 + 5_000),
            "2d 3h"
        );
        assert_eq!(relative(T0 + 500, T0), "now");
        assert_eq!(relative(T0 + 90_000, T0), "in 1m 30s");
        assert_eq!(relative(T0, T0 + 3_000), "3s ago");
        assert_eq!(seconds_text(59), "59s");
        assert_eq!(seconds_text(86_400), "86400s (1d)");
        assert_eq!(rate(0.05), "5%");
        assert_eq!(rate(0.07), "7%");
        assert_eq!(rate(0.0125), "1.25%");
        assert_eq!(rate(0.0), "0%");
        assert_eq!(rate(1.0), "100%");
        assert_eq!(rate(0.000_01), "0.001%");
        assert_eq!(observed_rate(1.0 / 3.0), "33.33%");
    }

    #[test]
    fn sync_report_measures_the_acknowledged_sidecars_against_the_point() {
        let mut status = status();
        let point_ms = 1_795_000_000_000;
        let switched = |id: &str, epoch: u64, at_us: Option<u64>| StatusSidecar {
            id: id.into(),
            epoch,
            serving: vec![],
            etcd_reachable: true,
            at_ms: 0,
            reports: vec![],
            drift: None,
            prepared: None,
            activated_epoch: at_us.map(|_| epoch),
            activated_at_us: at_us,
        };
        status.sidecars = vec![
            switched("a", 9, Some(point_ms * 1000 + 300)),
            switched("b", 9, Some(point_ms * 1000 + 1_200)),
            switched("c", 8, None),
            switched("d", 10, Some(point_ms * 1000 + 90_000)),
            // Live, but it was not there to acknowledge: not measured.
            switched("new", 9, Some(point_ms * 1000 + 50_000)),
        ];
        let prepared = switchboard_proto::SyncPrepared {
            prepare_epoch: 8,
            acknowledged: ["a", "b", "c", "d", "gone"].map(String::from).to_vec(),
            ack_wait_ms: 40,
            lead_ms: 250,
            activate_at_ms: point_ms,
        };
        let report = SyncReport::measure(&status, 9, &prepared);
        assert!(!report.converged);
        assert_eq!(report.behind, vec!["c".to_string()]);
        assert_eq!(report.gone, vec!["gone".to_string()]);
        assert_eq!(report.moved_on, vec!["d".to_string()]);
        assert_eq!(report.spread_us, Some(900));
        assert_eq!(
            (report.min_late_us, report.max_late_us),
            (Some(300), Some(1_200))
        );
        let text = render_sync_report(&report);
        assert!(
            text.contains(
                "spread     0.900 ms across 2 sidecar(s); the latest switched 1.200 ms after"
            ),
            "{text}"
        );

        // The --json document is the change with the measurements added to its `sync`.
        let change = serde_json::json!({"routing": {"epoch": 9}, "sync": {"acknowledged": ["a"], "ack_wait_ms": 40}});
        let document = sync_flip_document(&change, &report);
        assert_eq!(document["sync"]["acknowledged"], serde_json::json!(["a"]));
        assert_eq!(document["sync"]["spread_us"], 900);
        assert_eq!(document["sync"]["converged"], false);
        assert_eq!(document["routing"]["epoch"], 9);
    }

    #[test]
    fn flip_wait_json_is_the_change_plus_wait() {
        let change = json!({"namespace": "catalog", "routing": {"epoch": 8}, "audit_seq": 12});
        let wait = WaitReport {
            epoch: 8,
            converged: false,
            sidecars: 3,
            behind: vec!["host-b".into(), "host-c".into()],
        };
        assert_eq!(
            flip_wait_document(&change, &wait),
            json!({
                "namespace": "catalog",
                "routing": {"epoch": 8},
                "audit_seq": 12,
                "wait": {"epoch": 8, "converged": false, "sidecars": 3, "behind": ["host-b", "host-c"]}
            })
        );
        let done = WaitReport {
            epoch: 8,
            converged: true,
            sidecars: 3,
            behind: vec![],
        };
        let document = flip_wait_document(&change, &done);
        assert_eq!(
            document["wait"],
            json!({"epoch": 8, "converged": true, "sidecars": 3, "behind": []})
        );
        assert_eq!(render_wait(&done), "all 3 live sidecars serve epoch 8");
        let one = WaitReport {
            sidecars: 1,
            ..done.clone()
        };
        assert_eq!(render_wait(&one), "the one live sidecar serves epoch 8");
        let nobody = WaitReport {
            sidecars: 0,
            ..done
        };
        assert_eq!(
            render_wait(&nobody),
            "no live sidecars to wait for at epoch 8"
        );
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
                bake_until_ms: None,
                prepare: None,
                activate_at_ms: None,
                acknowledge_within_ms: None,
                action: "canary".into(),
                by: "alice".into(),
                reason: "".into(),
                at_ms: 1,
            },
            audit_seq: 12,
            sync: None,
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
            chunk_bytes_total: 1_300_000,
            chunk_bytes_uploaded: 97_000,
            pages_total: 4,
            pages_uploaded: 1,
            manifest_bytes_uploaded: 2_000,
            replaced_version: None,
            warnings: Vec::new(),
            approval_reasons: Vec::new(),
            seal_timings: None,
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
        use crate::compat::{ClassCounts, item_added, item_changed, item_removed};
        use crate::validate::Cursor;
        let items = vec![
            item_added("t/new"),
            item_changed(
                "t/changed",
                &json!({"type": "int32", "tags": ["a", "b"]}),
                &json!({"type": "int64", "tags": ["a"]}),
                &Cursor::none(),
            ),
            item_removed("t/gone"),
        ];
        let mut plan = PlanReport {
            namespace: "catalog".into(),
            active_version: Some("aaaa".into()),
            new_version: "bbbb".into(),
            added: vec!["t/new".into()],
            changed: vec!["t/changed".into()],
            removed: vec!["t/gone".into()],
            unchanged: 97,
            classes: ClassCounts::of(&items),
            items,
            contract: None,
        };
        let text = render_plan(&plan);
        assert_eq!(
            text,
            "plan for catalog: 1 added, 1 changed, 1 removed, 97 unchanged (active aaaa -> new bbbb)\n\
             \x20 + t/new\n\
             \x20 ~ t/changed\n\
             \x20     - /tags/1: \"b\" (destructive: value removed from a list (narrowed))\n\
             \x20     ~ /type: \"int32\" -> \"int64\" (modifying)\n\
             \x20 - t/gone\n\
             changes: 1 additive, 1 modifying, 2 destructive\n\
             destructive (2), so `sbctl stage` needs --allow-destructive:\n\
             \x20 t/changed /tags/1: value removed from a list (narrowed): \"b\"\n\
             \x20 t/gone: item removed\n"
        );
        plan.new_version = "aaaa".into();
        assert!(render_plan(&plan).contains("no changes"));
        plan.active_version = None;
        assert!(render_plan(&plan).contains("(active none -> new aaaa)"));
    }
}

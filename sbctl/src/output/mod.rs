//! What sbctl prints: the human text of every document and report, the `--json` documents, and
//! the writers. Data goes to stdout, progress and notes to stderr. A closed stdout (`sbctl
//! audit NS | head`) ends the output quietly instead of panicking.
//!
//! This module holds the writers and the small formatters every text uses; the report models
//! and their `--json` documents are in `reports.rs`, and the renderers by subject in
//! `status.rs`, `policy.rs` (policy, gates, approvals, rollouts) and `release.rs` (stage, plan,
//! contract, waits, audit).

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

mod policy;
mod release;
mod reports;
mod status;
#[cfg(test)]
mod tests;

pub use policy::*;
pub use release::*;
pub use reports::*;
pub use status::*;

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

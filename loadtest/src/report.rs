//! Turns a directory of scenario results (`<scenario>.json` and its table `<scenario>.md`)
//! into one markdown document with SVG charts, ready for `BENCHMARKS.md`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::chart::{self, Series};
use crate::propagation::PropagationReport;
use crate::read::ReadReport;

/// The scenarios in the order the document shows them.
pub const SCENARIOS: [&str; 8] = [
    "read",
    "propagation",
    "sync",
    "feed",
    "stage",
    "rollback",
    "fleet",
    "judge",
];

/// Writes the charts into `dir` and returns the markdown that shows them with every table found.
pub fn write(dir: &Path) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(out, "{}", machine());
    for scenario in SCENARIOS {
        let table = dir.join(format!("{scenario}.md"));
        let Ok(text) = std::fs::read_to_string(&table) else {
            let _ = writeln!(out, "## {scenario}\n\nnot run\n");
            continue;
        };
        if scenario == "judge" {
            // The judge's table is aligned text, not markdown.
            let _ = writeln!(out, "## {scenario}\n\n```text\n{}\n```", text.trim_end());
        } else {
            let _ = writeln!(out, "## {scenario}\n\n{}", text.trim_end());
        }
        match scenario {
            "read" => {
                let report: ReadReport = read_json(&dir.join("read.json"))?;
                let file = "read-latency.svg";
                std::fs::write(dir.join(file), read_chart(&report))?;
                let _ = writeln!(out, "\n![read latency at the common rate]({file})");
                let file = "read-light.svg";
                std::fs::write(dir.join(file), light_chart(&report))?;
                let _ = writeln!(out, "\n![read latency at light load]({file})");
            }
            "propagation" => {
                let report: PropagationReport = read_json(&dir.join("propagation.json"))?;
                let file = "propagation.svg";
                std::fs::write(dir.join(file), propagation_chart(&report))?;
                let _ = writeln!(
                    out,
                    "\n![flip propagation beside raw etcd watch delivery]({file})"
                );
            }
            _ => {}
        }
        out.push('\n');
    }
    Ok(out)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} does not parse", path.display()))
}

fn read_chart(report: &ReadReport) -> String {
    let series: Vec<Series> = report
        .targets
        .iter()
        .filter_map(|t| {
            t.common_rate
                .as_ref()
                .map(|run| chart::series(&t.name, &run.latency))
        })
        .collect();
    chart::percentile_chart(
        &format!(
            "read latency at {:.0} req/s (half the sidecar's HTTP saturation)",
            report.common_rate
        ),
        &series,
    )
}

fn light_chart(report: &ReadReport) -> String {
    let series: Vec<Series> = report
        .targets
        .iter()
        .map(|t| chart::series(&t.name, &t.light.latency))
        .collect();
    chart::percentile_chart(
        &format!(
            "read latency at {:.0} req/s (light load)",
            report.light_rate
        ),
        &series,
    )
}

fn propagation_chart(report: &PropagationReport) -> String {
    let mut series = Vec::new();
    for row in &report.rows {
        series.push(chart::series(
            &format!("flip, {} sidecars", row.sidecars),
            &row.flip,
        ));
        series.push(chart::series(
            &format!("raw watch, {}", row.sidecars),
            &row.raw_watch,
        ));
    }
    chart::percentile_chart("commit to serving, per sidecar and flip", &series)
}

/// The machine the numbers come from.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let etcd = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.lines().next().map(str::to_string))
        .unwrap_or_else(|| "etcd not found".to_string());
    format!(
        "Machine: {cores} cores ({cpu}), {memory_gb:.0} GiB, Linux {}, {etcd}. Client, servers and etcd share the machine.\n",
        kernel.trim()
    )
}

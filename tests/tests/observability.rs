//! The alert rules and the Grafana dashboard of `deploy/observability/` against what the
//! coordinator and the sidecar really export.
//!
//! A rule or panel that names a metric nobody exports never fires and never draws, silently.
//! So this test reads every PromQL expression in `alerts.yml` and `grafana-dashboard.json`,
//! extracts the metric names and the label names each selector and grouping uses, starts real
//! etcd, a coordinator (with `--auth`, for the denied-requests panel) and a sidecar, takes them
//! through a canary that the judge rolls back, and checks each name against both `/metrics`
//! pages. It also checks the structure of both files, and that the checker does flag a metric
//! nobody exports, so that it can fail at all.
//!
//! Along the way it checks the behaviour the alerts rely on: the judge's starved gauge rises
//! while a canary has no data and falls when nothing is judged, the automatic rollback counter
//! moves, and a sidecar's staleness gauge stays low on a quiet but healthy watch and grows
//! while etcd does not answer it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;
use serde_json::Value;
use switchboard_tests::{Coordinator, EtcdServer, Sidecar, TcpProxy, unique_prefix, wait_for};

const NS: &str = "catalog";
/// The judge's window in this test: short, so the rollback comes quickly.
const WINDOW_SECONDS: u64 = 4;
/// The sidecar's `--etcd-progress-seconds` in this test (20 s by default, shorter here so that
/// the quiet period observed stays short): after at most this long without a watch message it
/// asks etcd for progress, which bounds its staleness gauge on a healthy connection.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

fn observability_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability")
}

// ---------------------------------------------------------------------------------------------
// PromQL: the metric names and label names an expression uses.

/// PromQL's functions (Prometheus 2 and 3). An identifier followed by `(` must be one of these
/// or an aggregation: a misspelt function is reported, not taken for a metric.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "end",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "info",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "start",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

const AGGREGATIONS: &[&str] = &[
    "avg",
    "bottomk",
    "count",
    "count_values",
    "group",
    "limit_ratio",
    "limitk",
    "max",
    "min",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
];

/// Keywords followed by a parenthesised list of label names (optional for `group_left` and
/// `group_right`).
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Keywords that are neither metrics nor functions.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];

/// What one expression names.
#[derive(Debug, Default, PartialEq, Eq)]
struct Names {
    /// Each metric name, with the label names its selectors match on (`{label="..."}`).
    metrics: BTreeMap<String, BTreeSet<String>>,
    /// Label names of `by (...)` and `on (...)`: they must exist on the series aggregated or
    /// matched, or the grouping silently lumps everything together.
    grouping: BTreeSet<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small PromQL tokenizer: identifiers that are not functions, aggregations or keywords are
/// metric names. Skipped: string literals, numbers and durations, range and subquery brackets,
/// Grafana variables (`$x`, `${x}`, `[[x]]`), comments. Label matchers inside `{...}` and label
/// lists after `by`, `on` and the like are collected as label names, never as metrics.
fn promql_names(expr: &str) -> Result<Names> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let ident_at = |i: usize| {
        let mut end = i;
        while end < chars.len() && is_ident_char(chars[end]) {
            end += 1;
        }
        (chars[i..end].iter().collect::<String>(), end)
    };
    // The metric most recently read, while nothing else has come since: a `{` then holds its
    // label matchers.
    let mut last_metric: Option<String> = None;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i)?;
            last_metric = None;
            continue;
        }
        if c == '{' {
            let Some(metric) = last_metric.take() else {
                bail!(
                    "a selector without a metric name at character {i} of `{expr}`: name the metric, so that it can be checked"
                );
            };
            let (labels, end) = label_matchers(&chars, i, expr)?;
            names.metrics.entry(metric).or_default().extend(labels);
            i = end;
            continue;
        }
        if c == '[' {
            i = skip_brackets(&chars, i, expr)?;
            last_metric = None;
            continue;
        }
        if c == '$' {
            // A Grafana variable: `$name` or `${name...}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
            }
            last_metric = None;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number, hex number, exponent or duration (5m, 1h30m).
            while i < chars.len() && (is_ident_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
            last_metric = None;
            continue;
        }
        if is_ident_start(c) {
            let (word, end) = ident_at(i);
            i = end;
            last_metric = None;
            let next = skip_space(i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    let close = matching(&chars, next, '(', ')', expr)?;
                    let list: String = chars[next + 1..close].iter().collect();
                    for label in list.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                        ensure!(
                            label.chars().all(is_ident_char),
                            "`{label}` in {word}(...) of `{expr}` is not a label name"
                        );
                        if word == "by" || word == "on" {
                            names.grouping.insert(label.to_string());
                        }
                    }
                    i = close + 1;
                }
                continue;
            }
            if KEYWORDS.contains(&word.as_str())
                || AGGREGATIONS.contains(&word.as_str())
                || lower == "inf"
                || lower == "nan"
            {
                continue;
            }
            if chars.get(next) == Some(&'(') {
                ensure!(
                    FUNCTIONS.contains(&word.as_str()),
                    "`{word}(` in `{expr}` is not a PromQL function"
                );
                continue;
            }
            names.metrics.entry(word.clone()).or_default();
            last_metric = Some(word);
            continue;
        }
        if "()+-*/%^=!<>,@".contains(c) {
            i += 1;
            last_metric = None;
            continue;
        }
        bail!("unexpected character {c:?} at {i} of `{expr}`");
    }
    Ok(names)
}

/// The index after the string literal that starts at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    bail!("an unterminated string literal")
}

/// The index of the bracket that closes the one at `open`, skipping string literals.
fn matching(chars: &[char], open: usize, left: char, right: char, expr: &str) -> Result<usize> {
    let mut depth = 0;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i)?;
                continue;
            }
            c if c == left => depth += 1,
            c if c == right => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    bail!("`{left}` at character {open} of `{expr}` is never closed")
}

fn skip_brackets(chars: &[char], open: usize, expr: &str) -> Result<usize> {
    Ok(matching(chars, open, '[', ']', expr)? + 1)
}

/// The label names of the matchers in `{...}` starting at `open`, and the index after `}`.
fn label_matchers(chars: &[char], open: usize, expr: &str) -> Result<(Vec<String>, usize)> {
    let close = matching(chars, open, '{', '}', expr)?;
    let mut labels = Vec::new();
    let mut i = open + 1;
    while i < close {
        let c = chars[i];
        if c.is_whitespace() || c == ',' {
            i += 1;
            continue;
        }
        ensure!(
            is_ident_start(c),
            "a label matcher at character {i} of `{expr}` does not start with a label name"
        );
        let start = i;
        while i < close && is_ident_char(chars[i]) {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        ensure!(
            label != "__name__",
            "`{expr}` matches __name__: name the metric, so that it can be checked"
        );
        while i < close && chars[i].is_whitespace() {
            i += 1;
        }
        let op: String = chars[i..close.min(i + 2)].iter().collect();
        let op_len = if op.starts_with("=~") || op.starts_with("!=") || op.starts_with("!~") {
            2
        } else if op.starts_with('=') {
            1
        } else {
            bail!("label {label} in `{expr}` has no matcher (=, !=, =~, !~)");
        };
        i += op_len;
        while i < close && chars[i].is_whitespace() {
            i += 1;
        }
        ensure!(
            i < close && matches!(chars[i], '"' | '\'' | '`'),
            "label {label} in `{expr}` is not compared with a string"
        );
        i = skip_string(chars, i)?;
        labels.push(label);
    }
    Ok((labels, close + 1))
}

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition: what a /metrics page exports.

#[derive(Debug, Default)]
struct Exported {
    /// Sample names (histograms as `_bucket`, `_sum`, `_count`) and their label names.
    samples: BTreeMap<String, BTreeSet<String>>,
    /// Metric families from `# TYPE` lines and their types.
    types: BTreeMap<String, String>,
    /// Families with a `# HELP` line.
    helped: BTreeSet<String>,
    /// Sample lines as written, for messages and values.
    lines: Vec<String>,
}

impl Exported {
    fn parse(text: &str) -> Result<Self> {
        let mut exported = Self::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    exported.types.insert(name.into(), kind.into());
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                if let Some(name) = rest.split_whitespace().next() {
                    exported.helped.insert(name.into());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .with_context(|| format!("a sample line without a value: {line}"))?;
            let name = &line[..end];
            let labels = exported.samples.entry(name.to_string()).or_default();
            if line[end..].starts_with('{') {
                let chars: Vec<char> = line[end..].chars().collect();
                let (names, _) = label_matchers(&chars, 0, line)?;
                labels.extend(names);
            }
            exported.lines.push(line.to_string());
        }
        Ok(exported)
    }

    fn merge(mut self, other: Self) -> Self {
        for (name, labels) in other.samples {
            self.samples.entry(name).or_default().extend(labels);
        }
        self.types.extend(other.types);
        self.helped.extend(other.helped);
        self.lines.extend(other.lines);
        self
    }

    /// The value of the sample written exactly as `series` (`name{labels}`), if exported.
    fn value(&self, series: &str) -> Option<f64> {
        self.lines.iter().find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.starts_with(' ')
                .then(|| rest.split_whitespace().next()?.parse().ok())?
        })
    }

    /// The family a sample name belongs to: a histogram's or summary's `_bucket`, `_sum` and
    /// `_count` belong to the base name.
    fn family<'a>(&self, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && matches!(
                    self.types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                )
            {
                return base;
            }
        }
        sample
    }
}

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Every problem with `names` (from `source`) against `exported`; empty when all is exported.
fn check_names(source: &str, names: &Names, exported: &Exported) -> Vec<String> {
    let mut problems = Vec::new();
    let mut available: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for (metric, labels) in &names.metrics {
        let Some(sample_labels) = exported.samples.get(metric) else {
            let hint = match exported.types.get(metric).map(String::as_str) {
                Some(kind @ ("histogram" | "summary")) => {
                    format!(" (a {kind}: name its _bucket, _sum or _count)")
                }
                _ => String::new(),
            };
            problems.push(format!("{source}: {metric} is not exported{hint}"));
            continue;
        };
        available.extend(sample_labels.iter().map(String::as_str));
        for label in labels {
            if !sample_labels.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "{source}: {metric} has no label {label} (it has: {})",
                    sample_labels.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let family = exported.family(metric);
        if !exported.helped.contains(family) {
            problems.push(format!("{source}: {family} has no # HELP line"));
        }
    }
    for label in &names.grouping {
        if !available.contains(label.as_str()) {
            problems.push(format!(
                "{source}: groups by {label}, which none of its metrics has"
            ));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The files: their structure, and every expression in them with where it came from.

/// Every PromQL expression of the alert rules, named by its alert. Fails on a rule that lacks
/// what an alert needs.
fn alert_expressions(text: &str) -> Result<Vec<(String, String)>> {
    let doc: Value =
        serde_saphyr::from_str(text).context("alerts.yml is not valid YAML of the rule format")?;
    let groups = doc["groups"]
        .as_array()
        .context("alerts.yml has no list `groups`")?;
    ensure!(!groups.is_empty(), "alerts.yml has no group");
    let mut problems = Vec::new();
    let mut expressions = Vec::new();
    let mut alerts = BTreeSet::new();
    for (g, group) in groups.iter().enumerate() {
        let group_name = group["name"].as_str().unwrap_or("");
        if group_name.is_empty() {
            problems.push(format!("group {g} has no name"));
        }
        let Some(rules) = group["rules"].as_array().filter(|r| !r.is_empty()) else {
            problems.push(format!("group {group_name:?} has no rules"));
            continue;
        };
        for (r, rule) in rules.iter().enumerate() {
            let Some(alert) = rule["alert"].as_str().filter(|a| !a.is_empty()) else {
                problems.push(format!(
                    "rule {r} of group {group_name:?} is not an alert (no `alert`)"
                ));
                continue;
            };
            if !alerts.insert(alert.to_string()) {
                problems.push(format!("{alert}: defined twice"));
            }
            let field = |path: &[&str]| {
                let mut value = rule;
                for key in path {
                    value = &value[*key];
                }
                value.as_str().map(str::trim).filter(|s| !s.is_empty())
            };
            let Some(expr) = field(&["expr"]) else {
                problems.push(format!("{alert}: no expr"));
                continue;
            };
            match field(&["for"]) {
                Some(duration) if is_duration(duration) => {}
                Some(duration) => problems.push(format!(
                    "{alert}: `for: {duration}` is not a Prometheus duration"
                )),
                None => problems.push(format!("{alert}: no `for`")),
            }
            match field(&["labels", "severity"]) {
                Some("critical" | "warning" | "info") => {}
                Some(other) => problems.push(format!(
                    "{alert}: severity {other:?} is not critical, warning or info"
                )),
                None => problems.push(format!("{alert}: no labels.severity")),
            }
            let summary = field(&["annotations", "summary"]);
            let description = field(&["annotations", "description"]);
            if summary.is_none() {
                problems.push(format!("{alert}: no annotations.summary"));
            }
            if description.is_none() {
                problems.push(format!("{alert}: no annotations.description"));
            }
            // An alert per namespace must say which namespace.
            let per_namespace = promql_names(expr)
                .map(|n| n.grouping.contains("namespace"))
                .unwrap_or(false);
            let text = format!("{} {}", summary.unwrap_or(""), description.unwrap_or(""));
            if per_namespace && !text.contains("$labels.namespace") {
                problems.push(format!(
                    "{alert}: groups by namespace, but its annotations do not name {{{{ $labels.namespace }}}}"
                ));
            }
            if let Err(error) = check_balanced(expr) {
                problems.push(format!("{alert}: {error:#}"));
            }
            expressions.push((format!("alert {alert}"), expr.to_string()));
        }
    }
    ensure!(
        problems.is_empty(),
        "alerts.yml:\n  {}",
        problems.join("\n  ")
    );
    Ok(expressions)
}

/// A Prometheus duration: one or more of a number and a unit (`0s`, `5m`, `1h30m`).
fn is_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// Parentheses, brackets and braces are balanced, outside string literals.
fn check_balanced(expr: &str) -> Result<()> {
    let chars: Vec<char> = expr.chars().collect();
    let mut stack = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(&chars, i)?;
                continue;
            }
            c @ ('(' | '[' | '{') => stack.push(c),
            c @ (')' | ']' | '}') => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                ensure!(
                    stack.pop() == Some(open),
                    "`{c}` at character {i} closes nothing in `{expr}`"
                );
            }
            _ => {}
        }
        i += 1;
    }
    ensure!(stack.is_empty(), "unclosed {stack:?} in `{expr}`");
    Ok(())
}

/// Every PromQL expression of the dashboard: each panel target's, named by panel and target,
/// and the metric selector of each `label_values` variable. Fails on a panel without targets,
/// a target without an expression, or a dashboard without the `namespace` variable.
fn dashboard_expressions(text: &str) -> Result<Vec<(String, String)>> {
    let doc: Value =
        serde_json::from_str(text).context("grafana-dashboard.json is not valid JSON")?;
    let mut problems = Vec::new();
    ensure!(
        doc["title"].as_str().is_some_and(|t| !t.is_empty()),
        "the dashboard has no title"
    );
    ensure!(
        doc["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "the dashboard's schemaVersion is missing or older than 36: {}",
        doc["schemaVersion"]
    );
    let variables = doc["templating"]["list"]
        .as_array()
        .context("the dashboard has no templating.list")?;
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
    match variable("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => problems.push("no `datasource` variable of type datasource for prometheus".into()),
    }
    let mut expressions = Vec::new();
    match variable("namespace") {
        Some(v) => {
            let query = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or("");
            match query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.rsplit_once(','))
            {
                Some((selector, label)) if label.trim() == "namespace" => expressions.push((
                    "variable namespace".to_string(),
                    format!("max by (namespace) ({})", selector.trim()),
                )),
                _ => problems.push(format!(
                    "the namespace variable's query is not label_values(METRIC, namespace): {query:?}"
                )),
            }
        }
        None => problems.push("no `namespace` variable".into()),
    }
    let panels = doc["panels"]
        .as_array()
        .context("the dashboard has no panels")?;
    let mut flat: Vec<&Value> = Vec::new();
    for panel in panels {
        flat.push(panel);
        // A collapsed row holds its panels.
        if let Some(inner) = panel["panels"].as_array() {
            flat.extend(inner);
        }
    }
    let mut ids = BTreeSet::new();
    for panel in flat {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if !ids.insert(panel["id"].as_u64().unwrap_or(0)) {
            problems.push(format!("panel {title:?}: no id, or an id used twice"));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["gridPos"]["w"].as_u64().is_none() || panel["gridPos"]["h"].as_u64().is_none() {
            problems.push(format!("panel {title:?}: no gridPos"));
        }
        let Some(targets) = panel["targets"].as_array().filter(|t| !t.is_empty()) else {
            problems.push(format!("panel {title:?}: no targets"));
            continue;
        };
        for target in targets {
            let ref_id = target["refId"].as_str().unwrap_or("?");
            match target["expr"].as_str().map(str::trim) {
                Some(expr) if !expr.is_empty() => {
                    if let Err(error) = check_balanced(expr) {
                        problems.push(format!("panel {title:?} target {ref_id}: {error:#}"));
                    }
                    expressions
                        .push((format!("panel {title:?} target {ref_id}"), expr.to_string()));
                }
                _ => problems.push(format!("panel {title:?} target {ref_id}: no expr")),
            }
        }
    }
    ensure!(
        problems.is_empty(),
        "grafana-dashboard.json:\n  {}",
        problems.join("\n  ")
    );
    Ok(expressions)
}

/// The names every expression uses; fails listing every expression the tokenizer refuses.
fn names_of(expressions: &[(String, String)]) -> Result<Vec<(String, Names)>> {
    let mut all = Vec::new();
    let mut problems = Vec::new();
    for (source, expr) in expressions {
        match promql_names(expr) {
            Ok(names) if names.metrics.is_empty() => {
                problems.push(format!("{source}: names no metric: {expr}"))
            }
            Ok(names) => all.push((source.clone(), names)),
            Err(error) => problems.push(format!("{source}: {error:#}")),
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(all)
}

fn read(name: &str) -> Result<String> {
    let path = observability_dir().join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Tests without processes.

#[test]
fn the_tokenizer_finds_metrics_and_labels_and_nothing_else() -> Result<()> {
    let names = promql_names(
        r#"sum by (namespace, le) (rate(foo_seconds_bucket{namespace=~"$namespace", a!="x{y}"}[$__rate_interval]))
           / on (instance) group_left (role) bar_total offset 5m > bool 0.5e3
           or vector(0) and ignoring(z) Baz:recorded{b="1"} unless absent(qux) # a comment naming nope"#,
    )?;
    let metrics: Vec<&str> = names.metrics.keys().map(String::as_str).collect();
    assert_eq!(
        metrics,
        ["Baz:recorded", "bar_total", "foo_seconds_bucket", "qux"]
    );
    assert_eq!(
        names.metrics["foo_seconds_bucket"],
        BTreeSet::from(["namespace".to_string(), "a".to_string()])
    );
    assert_eq!(
        names.grouping,
        BTreeSet::from(["namespace", "le", "instance"].map(String::from))
    );
    // A misspelt function, a selector without a metric and a broken matcher are refused.
    assert!(promql_names("rates(foo[5m])").is_err());
    assert!(promql_names(r#"{__name__="foo"}"#).is_err());
    assert!(promql_names(r#"foo{a}"#).is_err());
    assert!(check_balanced("sum(rate(foo[5m])").is_err());
    assert!(is_duration("1h30m") && is_duration("0s") && !is_duration("5 m") && !is_duration(""));
    Ok(())
}

#[test]
fn the_checker_flags_an_invented_metric_and_a_missing_label() -> Result<()> {
    let exported = Exported::parse(
        "# HELP real_total Real.\n# TYPE real_total counter\nreal_total{namespace=\"a\"} 1\n\
         # HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n\
         lat_seconds_bucket{le=\"1\"} 1\nlat_seconds_sum 0.5\nlat_seconds_count 1\n",
    )?;
    let good = promql_names(
        "sum by (namespace) (rate(real_total[5m])) + histogram_quantile(0.9, sum by (le) (rate(lat_seconds_bucket[5m])))",
    )?;
    assert_eq!(check_names("good", &good, &exported), Vec::<String>::new());
    let invented = promql_names(
        r#"rate(switchboard_invented_metric_total[5m]) + real_total{role="x"} + lat_seconds"#,
    )?;
    let problems = check_names("bad", &invented, &exported);
    let text = problems.join("\n");
    assert!(
        text.contains("switchboard_invented_metric_total is not exported"),
        "{text}"
    );
    assert!(text.contains("real_total has no label role"), "{text}");
    assert!(
        text.contains("lat_seconds is not exported (a histogram"),
        "{text}"
    );
    let grouped = promql_names("sum by (phase) (real_total)")?;
    assert!(
        check_names("grouped", &grouped, &exported)
            .join("\n")
            .contains("groups by phase"),
        "a grouping label no metric has is flagged"
    );
    Ok(())
}

#[test]
fn the_alert_rules_and_the_dashboard_are_well_formed() -> Result<()> {
    let alerts = alert_expressions(&read("alerts.yml")?)?;
    let panels = dashboard_expressions(&read("grafana-dashboard.json")?)?;
    names_of(&alerts)?;
    names_of(&panels)?;
    let alert_names: Vec<&str> = alerts.iter().map(|(a, _)| a.as_str()).collect();
    for required in [
        "SwitchboardAutomaticRollback",
        "SwitchboardSidecarStale",
        "SwitchboardConvergenceStuck",
        "SwitchboardJudgeStarved",
        "SwitchboardEtcdQuotaHeadroomLow",
        "SwitchboardNoLeader",
    ] {
        assert!(
            alert_names.contains(&format!("alert {required}").as_str()),
            "alerts.yml has no {required}: {alert_names:?}"
        );
    }
    // The runbook names every alert.
    let readme = read("README.md")?;
    for (alert, _) in &alerts {
        let name = alert.trim_start_matches("alert ");
        assert!(
            readme.contains(name),
            "deploy/observability/README.md does not explain {name}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Against real processes.

async fn scrape(url: &str) -> Result<Exported> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .with_context(|| format!("GET {url}/metrics"))?
        .error_for_status()?
        .text()
        .await?;
    Exported::parse(&text).with_context(|| format!("parsing {url}/metrics"))
}

/// Polls `url`'s `/metrics` until `series` has a value that `want` accepts; returns it.
async fn wait_for_value(
    url: &str,
    series: &str,
    what: &str,
    want: impl Fn(f64) -> bool,
) -> Result<f64> {
    wait_for(DEADLINE, what, async || {
        let exported = scrape(url).await?;
        match exported.value(series) {
            Some(value) if want(value) => Ok(value),
            Some(value) => bail!("{series} is {value}"),
            None => bail!("{series} is not exported"),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported() -> Result<()> {
    let started = Instant::now();
    let alerts = names_of(&alert_expressions(&read("alerts.yml")?)?)?;
    let panels = names_of(&dashboard_expressions(&read("grafana-dashboard.json")?)?)?;

    // A coordinator with --auth, so that a request can be denied; the sidecar reaches etcd
    // through a proxy, so that etcd can stop answering it alone.
    let etcd = EtcdServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = new_user("ada", &["admin"]).await?;
    // The sidecar's credential, with which its outcomes reach the judge.
    let reporter = new_user("sidecar-1", &["reporter"]).await?;
    let auth = write_auth_file(dir.path(), &[&admin, &reporter])?;
    let prefix = unique_prefix();
    let coordinator =
        Coordinator::start_with(&etcd.endpoint(), &prefix, &["--auth", &auth]).await?;
    let sbctl = coordinator.sbctl().env("SWITCHBOARD_TOKEN", &admin.token);
    let proxy =
        TcpProxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, etcd.client_port()))).await?;
    let sidecar = Sidecar::start_with_env(
        &proxy.url(),
        &prefix,
        "sidecar-1",
        &[NS],
        &[
            "--etcd-progress-seconds",
            &PROGRESS_EVERY.as_secs().to_string(),
        ],
        &[("SWITCHBOARD_REPORT_TOKEN", reporter.token.as_str())],
    )
    .await?;
    let coordinator_url = coordinator.http_url();
    let sidecar_url = sidecar.http_url();

    // Two versions, a canary of the second, and the judge's policy.
    sbctl
        .run(&[
            "policy",
            "set",
            NS,
            "--max-error-rate",
            "0.05",
            "--min-requests",
            "50",
            "--window",
            &WINDOW_SECONDS.to_string(),
        ])
        .await?
        .ensure_success()?;
    let a = stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "a", 20, 10)?.display().to_string(),
    )
    .await?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let b = stage(
        &sbctl,
        NS,
        &write_set(dir.path(), "b", 20, 10)?.display().to_string(),
    )
    .await?;
    sbctl.run(&["canary", NS, "20"]).await?.ensure_success()?;
    sidecar
        .wait_for_epoch(NS, epoch(&sbctl, NS).await?, DEADLINE)
        .await?;

    // No outcome reported yet: the judge is starved, and says what it needs.
    let ns_label = format!("{{namespace=\"{NS}\"}}");
    wait_for_value(
        &coordinator_url,
        &format!("switchboard_judge_starved{ns_label}"),
        "the judge to be starved of data for the canary",
        |v| v == 1.0,
    )
    .await?;
    wait_for_value(
        &coordinator_url,
        &format!("switchboard_judge_min_requests{ns_label}"),
        "the policy's minimum",
        |v| v == 50.0,
    )
    .await?;

    // Reads on both sides of the canary, then outcomes: the canary errs, the judge rolls back.
    for n in 0..40 {
        let answer = sidecar
            .get_item(NS, "items/k00001", Some(&format!("consumer-{n}")))
            .await?;
        ensure!(answer.status == 200, "a read answered {answer:?}");
    }
    let rollbacks =
        format!("switchboard_automatic_rollbacks_total{{namespace=\"{NS}\",phase=\"canary\"}}");
    let reported = wait_for(
        DEADLINE,
        "the judge to roll the erring canary back",
        async || {
            for (version, ok, errors) in [(&b, 7, 3), (&a, 40, 0)] {
                let (code, body) = sidecar.report(NS, version, ok, errors).await?;
                ensure!(code == 202, "report of {version} answered {code}: {body}");
            }
            match scrape(&coordinator_url).await?.value(&rollbacks) {
                Some(value) if value >= 1.0 => Ok(value),
                other => bail!("{rollbacks} is {other:?}"),
            }
        },
    )
    .await?;
    assert_eq!(reported, 1.0, "one automatic rollback");
    // Nothing is judged any more: not starved.
    wait_for_value(
        &coordinator_url,
        &format!("switchboard_judge_starved{ns_label}"),
        "the starved gauge to fall once nothing is judged",
        |v| v == 0.0,
    )
    .await?;
    let live = wait_for_value(
        &coordinator_url,
        &format!("switchboard_sidecars_live{ns_label}"),
        "the leader to count the sidecar",
        |v| v == 1.0,
    )
    .await?;
    assert_eq!(live, 1.0);

    // A request without a token is denied, for the denied-requests panel.
    let denied = coordinator.sbctl().run(&["status", NS]).await?;
    assert_eq!(denied.code, 5, "no token is not permitted: {denied:?}");

    // The staleness gauge on a quiet, healthy watch stays bounded by the progress requests:
    // without them it would climb for as long as routing does not change.
    let age_series = format!("switchboard_sidecar_last_etcd_event_age_seconds{ns_label}");
    let quiet_since = Instant::now();
    let bound = (PROGRESS_EVERY + Duration::from_secs(3)).as_secs_f64();
    let mut highest: f64 = 0.0;
    while quiet_since.elapsed() < PROGRESS_EVERY * 2 {
        let age = scrape(&sidecar_url)
            .await?
            .value(&age_series)
            .with_context(|| format!("{age_series} is not exported"))?;
        highest = highest.max(age);
        ensure!(
            age <= bound,
            "{age_series} is {age} s on a healthy connection; progress requests should keep it under {bound} s"
        );
        // An observation window of fixed length, not a synchronisation: nothing is awaited.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("staleness on a quiet, healthy watch: at most {highest:.1} s");
    assert_eq!(
        scrape(&sidecar_url)
            .await?
            .value(&format!("switchboard_sidecar_etcd_reachable{ns_label}")),
        Some(1.0)
    );

    // Scrape both and check every name, listing all that are missing.
    let exported = scrape(&coordinator_url)
        .await?
        .merge(scrape(&sidecar_url).await?);
    let mut problems = Vec::new();
    for (source, names) in alerts.iter().chain(&panels) {
        problems.extend(check_names(source, names, &exported));
    }
    assert!(
        problems.is_empty(),
        "the observability files name what is not exported:\n  {}",
        problems.join("\n  ")
    );
    // The same check does fail for a name nobody exports.
    let invented = promql_names("rate(switchboard_invented_total[5m])")?;
    assert!(!check_names("invented", &invented, &exported).is_empty());

    // etcd stops answering the sidecar: the staleness gauge grows past the alert's bound.
    proxy.blackhole(true);
    let stale = wait_for_value(
        &sidecar_url,
        &age_series,
        "the staleness gauge to grow while etcd does not answer",
        |v| v > bound,
    )
    .await?;
    proxy.blackhole(false);
    wait_for_value(
        &sidecar_url,
        &age_series,
        "the staleness gauge to fall once etcd answers again",
        |v| v < stale,
    )
    .await?;
    eprintln!(
        "{} alert and {} panel expressions checked in {:.1?}",
        alerts.len(),
        panels.len(),
        started.elapsed()
    );
    Ok(())
}

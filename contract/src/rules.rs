//! Policy as code: a contract's Rego rules, evaluated with `regorus` (an interpreter of Open
//! Policy Agent's language) against the set being sealed.
//!
//! Each rule file declares its own package and may define three sets of messages:
//! - `deny`: every message refuses the seal;
//! - `warn`: shown in the plan and recorded, never refusing;
//! - `approval`: the version needs a second person's approval before a canary or a flip.
//!
//! A message is a string, or an object `{"msg": "...", "item": "KEY"}` that names the item.
//! The input is built by [`crate::check`]: the namespace, the actor, the version, the items
//! (changed ones, or all), their previous values, and the classified plan.
//!
//! Evaluation runs under a time limit that regorus checks as it works. A rule that builds an
//! unbounded value can exhaust memory faster than any clock notices, so the coordinator runs
//! evaluation in a child process with an address-space limit (`rule_worker.rs`); this module
//! is the evaluation itself, the same in that child and in sbctl's preview.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::document::ContractError;

/// The most messages of one kind a rule file may return; more are refused, naming the rule.
pub const MAX_FINDINGS_PER_RULE: usize = 1000;
/// The longest message kept; longer ones are cut.
pub const MAX_MESSAGE_CHARS: usize = 500;
/// The time limit when the caller does not choose one.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(5);
/// How many units of work regorus does between two looks at the clock.
const CLOCK_CHECK_EVERY: u32 = 64;

/// A contract's rule files, each parsed once to check it and learn its package.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    files: Vec<RuleFile>,
}

#[derive(Clone, Debug)]
struct RuleFile {
    name: String,
    source: String,
    /// `data.<package>`, as regorus names it.
    package: String,
}

impl RuleSet {
    /// Parses every rule file; the error names the file that does not parse.
    pub fn parse(files: &BTreeMap<String, String>) -> Result<RuleSet, ContractError> {
        let mut set = RuleSet::default();
        for (name, source) in files {
            let mut engine = regorus::Engine::new();
            let package = engine
                .add_policy(name.clone(), source.clone())
                .map_err(|e| ContractError::Rule {
                    rule: name.clone(),
                    reason: first_line(&e.to_string()),
                })?;
            set.files.push(RuleFile {
                name: name.clone(),
                source: source.clone(),
                package,
            });
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The rule files by name, as the contract holds them.
    pub fn sources(&self) -> BTreeMap<String, String> {
        self.files
            .iter()
            .map(|f| (f.name.clone(), f.source.clone()))
            .collect()
    }

    /// Evaluates every rule file against `input` in this process, each under `time_limit`.
    pub fn evaluate(
        &self,
        input: &serde_json::Value,
        time_limit: Duration,
    ) -> Result<RuleOutcome, RuleError> {
        let input = regorus::Value::from(input.clone());
        let mut outcome = RuleOutcome::default();
        for file in &self.files {
            let mut engine = regorus::Engine::new();
            engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
                limit: time_limit,
                check_interval: NonZeroU32::new(CLOCK_CHECK_EVERY).unwrap_or(NonZeroU32::MIN),
            });
            engine
                .add_policy(file.name.clone(), file.source.clone())
                .map_err(|e| RuleError::Failed {
                    rule: file.name.clone(),
                    reason: first_line(&e.to_string()),
                })?;
            engine.set_input(input.clone());
            for (kind, into) in [
                ("deny", &mut outcome.deny),
                ("warn", &mut outcome.warn),
                ("approval", &mut outcome.approval),
            ] {
                let found = eval_messages(&mut engine, file, kind, time_limit)?;
                into.extend(found);
            }
        }
        Ok(outcome)
    }
}

fn eval_messages(
    engine: &mut regorus::Engine,
    file: &RuleFile,
    kind: &str,
    time_limit: Duration,
) -> Result<Vec<Finding>, RuleError> {
    let path = format!("{}.{kind}", file.package);
    let value = match engine.eval_rule(path) {
        Ok(value) => value,
        Err(error) => {
            let text = error.to_string();
            // A rule file need not define all three kinds.
            if text.contains("not a valid rule path") || text.contains("not found") {
                return Ok(Vec::new());
            }
            if text.contains("time limit") || text.contains("execution time") {
                return Err(RuleError::TimeLimit {
                    rule: file.name.clone(),
                    limit_ms: time_limit.as_millis() as u64,
                });
            }
            return Err(RuleError::Failed {
                rule: file.name.clone(),
                reason: first_line(&text),
            });
        }
    };
    let elements: Vec<regorus::Value> = match &value {
        regorus::Value::Undefined | regorus::Value::Null => return Ok(Vec::new()),
        regorus::Value::Set(set) => set.iter().cloned().collect(),
        regorus::Value::Array(array) => array.iter().cloned().collect(),
        other => {
            return Err(RuleError::Failed {
                rule: file.name.clone(),
                reason: format!("{kind} must be a set of messages, not {}", type_of(other)),
            });
        }
    };
    if elements.len() > MAX_FINDINGS_PER_RULE {
        return Err(RuleError::Failed {
            rule: file.name.clone(),
            reason: format!(
                "{kind} holds {} messages, more than {MAX_FINDINGS_PER_RULE}",
                elements.len()
            ),
        });
    }
    let mut findings = Vec::with_capacity(elements.len());
    for element in elements {
        findings.push(finding(&file.name, kind, &element)?);
    }
    Ok(findings)
}

fn finding(rule: &str, kind: &str, element: &regorus::Value) -> Result<Finding, RuleError> {
    let bad = || RuleError::Failed {
        rule: rule.to_string(),
        reason: format!(
            "a {kind} message must be a string or {{\"msg\": \"...\", \"item\": \"KEY\"}}"
        ),
    };
    match element {
        regorus::Value::String(text) => Ok(Finding {
            rule: rule.to_string(),
            item: None,
            message: shorten(text),
        }),
        regorus::Value::Object(object) => {
            let field = |name: &str| object.get(&regorus::Value::from(name)).cloned();
            let message = match field("msg") {
                Some(regorus::Value::String(text)) => shorten(&text),
                _ => return Err(bad()),
            };
            let item = match field("item") {
                None => None,
                Some(regorus::Value::String(text)) => Some(shorten(&text)),
                Some(_) => return Err(bad()),
            };
            Ok(Finding {
                rule: rule.to_string(),
                item,
                message,
            })
        }
        _ => Err(bad()),
    }
}

fn type_of(value: &regorus::Value) -> &'static str {
    match value {
        regorus::Value::Null => "null",
        regorus::Value::Bool(_) => "a boolean",
        regorus::Value::Number(_) => "a number",
        regorus::Value::String(_) => "a string",
        regorus::Value::Array(_) => "an array",
        regorus::Value::Set(_) => "a set",
        regorus::Value::Object(_) => "an object",
        regorus::Value::Undefined => "undefined",
    }
}

fn shorten(text: &str) -> String {
    crate::schema::shorten(text, MAX_MESSAGE_CHARS)
}

fn first_line(text: &str) -> String {
    shorten(
        text.lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(text)
            .trim(),
    )
}

/// One message of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule file.
    pub rule: String,
    /// The item it names, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.item {
            Some(item) => write!(f, "rule {}: {item}: {}", self.rule, self.message),
            None => write!(f, "rule {}: {}", self.rule, self.message),
        }
    }
}

/// What the rules said.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleOutcome {
    pub deny: Vec<Finding>,
    pub warn: Vec<Finding>,
    pub approval: Vec<Finding>,
}

/// A rule that could not be evaluated: the seal is refused, naming it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RuleError {
    #[error(
        "rule {rule} did not finish within its time limit of {limit_ms} ms; fix the rule (`sbctl contract set`)"
    )]
    TimeLimit { rule: String, limit_ms: u64 },
    #[error(
        "the rules used more than their memory limit of {limit_mb} MiB; fix the rule that builds large values (`sbctl contract set`)"
    )]
    MemoryLimit { limit_mb: u64 },
    #[error("rule {rule} failed: {reason}")]
    Failed { rule: String, reason: String },
    #[error("the rules could not be evaluated: {0}")]
    Worker(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(files: &[(&str, &str)]) -> RuleSet {
        let map = files
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        RuleSet::parse(&map).expect("parses")
    }

    const OWNERS: &str = r#"package switchboard.owners
import rego.v1

deny contains {"msg": "every table needs an owner", "item": key} if {
    some key, item in input.items
    startswith(key, "tables/")
    not item.owner
}

warn contains "no description" if {
    some key, item in input.items
    not item.description
}
"#;

    #[test]
    fn deny_and_warn_messages_name_the_rule_and_item() {
        let set = rules(&[("owners.rego", OWNERS)]);
        let outcome = set
            .evaluate(
                &json!({"items": {"tables/a": {"owner": "x", "description": "d"}, "tables/b": {}}}),
                DEFAULT_TIME_LIMIT,
            )
            .expect("evaluates");
        assert_eq!(
            outcome.deny,
            vec![Finding {
                rule: "owners.rego".into(),
                item: Some("tables/b".into()),
                message: "every table needs an owner".into()
            }]
        );
        assert_eq!(
            outcome.deny[0].to_string(),
            "rule owners.rego: tables/b: every table needs an owner"
        );
        assert_eq!(outcome.warn.len(), 1);
        assert!(outcome.approval.is_empty());
        let clean = set
            .evaluate(
                &json!({"items": {"tables/a": {"owner": "x", "description": "d"}}}),
                DEFAULT_TIME_LIMIT,
            )
            .expect("evaluates");
        assert_eq!(clean, RuleOutcome::default());
    }

    /// The example rules of `deploy/examples/rules`, on small inputs shaped like the sample
    /// catalog's.
    #[test]
    fn the_example_rules_deny_and_ask_for_approval() {
        let set = rules(&[
            (
                "owners.rego",
                include_str!("../../deploy/examples/rules/owners.rego"),
            ),
            (
                "grants.rego",
                include_str!("../../deploy/examples/rules/grants.rego"),
            ),
            (
                "pii.rego",
                include_str!("../../deploy/examples/rules/pii.rego"),
            ),
        ]);
        let input = json!({
            "items": {
                "tables/sales/orders": {"name": "orders", "owner": "sales"},
                "tables/sales/nobody": {"name": "nobody"},
                "policies/open": {"effect": "allow", "principals": ["group:a", "*"]},
                "policies/mask": {"effect": "mask", "principals": ["*"]},
            },
            "previous": {
                "tables/sales/customers": {"tags": ["pii"], "columns": [{"name": "id"}, {"name": "email"}]},
                "tables/sales/gone": {"tags": ["pii"]},
            },
            "plan": {
                "removed": ["tables/sales/gone"],
                "changes": [{
                    "key": "tables/sales/customers",
                    "changes": [{"path": "/columns/1", "kind": "element_removed", "old": {"name": "email"}}],
                }],
            },
        });
        let outcome = set.evaluate(&input, DEFAULT_TIME_LIMIT).expect("evaluates");
        let denied: Vec<String> = outcome.deny.iter().map(ToString::to_string).collect();
        assert_eq!(
            denied,
            [
                "rule grants.rego: policies/open: an allowing access policy may not grant to *",
                "rule owners.rego: tables/sales/nobody: a table must name its owner",
            ],
            "{outcome:?}"
        );
        let approvals: Vec<String> = outcome.approval.iter().map(ToString::to_string).collect();
        assert_eq!(approvals.len(), 2, "{approvals:?}");
        assert!(
            approvals
                .iter()
                .any(|a| a.contains("column email is removed")),
            "{approvals:?}"
        );
        assert!(
            approvals.iter().any(|a| a.contains("tables/sales/gone")),
            "{approvals:?}"
        );
    }

    #[test]
    fn a_rule_that_runs_too_long_is_stopped() {
        let set = rules(&[(
            "slow.rego",
            "package slow\nimport rego.v1\ndeny contains \"x\" if {\n  some i in numbers.range(1, 100000000)\n  i < 0\n}\n",
        )]);
        let started = std::time::Instant::now();
        let error = set
            .evaluate(&json!({}), Duration::from_millis(200))
            .expect_err("stopped");
        assert!(
            matches!(
                error,
                RuleError::TimeLimit { .. } | RuleError::Failed { .. }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("slow.rego"), "{error}");
        // Evaluated in a debug build this can take a while, so only the order of magnitude.
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn bad_messages_are_refused_naming_the_rule() {
        let set = rules(&[(
            "bad.rego",
            "package bad\nimport rego.v1\ndeny contains 42 if { true }\n",
        )]);
        let error = set
            .evaluate(&json!({}), DEFAULT_TIME_LIMIT)
            .expect_err("refused");
        assert!(
            error.to_string().starts_with("rule bad.rego failed: "),
            "{error}"
        );
        let set = rules(&[("scalar.rego", "package scalar\nimport rego.v1\ndeny := 3\n")]);
        let error = set
            .evaluate(&json!({}), DEFAULT_TIME_LIMIT)
            .expect_err("refused");
        assert!(error.to_string().contains("must be a set"), "{error}");
    }
}

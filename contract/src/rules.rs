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
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::document::ContractError;

/// A value as the rules see it (regorus's own), for callers that build the input themselves.
pub use regorus::Value as RegoValue;

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
        input: &RuleInput,
        time_limit: Duration,
    ) -> Result<RuleOutcome, RuleError> {
        let input = input.to_regorus()?;
        self.evaluate_value(&input, time_limit)
    }

    /// [`Self::evaluate`] of an input already made into regorus's values.
    pub fn evaluate_value(
        &self,
        input: &regorus::Value,
        time_limit: Duration,
    ) -> Result<RuleOutcome, RuleError> {
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
            // regorus's values share their contents: this clone copies no item.
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

/// The most items one thread parses when the rules' input is made; more are split over the
/// machine's cores, since parsing a large set is most of the rules' time.
pub const ITEMS_PER_PARSER: usize = 4096;

/// The input of the rules: the items they see as their JSON text (as the set holds them), and
/// the rest (namespace, actor, version, scope, previous values, plan) as a JSON object.
///
/// Items stay text until regorus reads them: a seal that shows the rules 100,000 items neither
/// keeps a second parsed copy of the set nor encodes it again for the rule worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleInput {
    pub context: serde_json::Map<String, serde_json::Value>,
    /// In key order, each value the JSON text of one item.
    pub items: Vec<(String, Arc<[u8]>)>,
}

impl RuleInput {
    /// The input of a JSON object whose `items` member, if any, maps keys to items (tests and
    /// small callers).
    pub fn from_json(value: serde_json::Value) -> RuleInput {
        let mut context = match value {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let items = match context.remove("items") {
            Some(serde_json::Value::Object(items)) => items
                .into_iter()
                .map(|(key, value)| (key, Arc::from(value.to_string().into_bytes())))
                .collect(),
            _ => Vec::new(),
        };
        RuleInput { context, items }
    }

    /// The whole input as one regorus value: the context, and `items` as an object from key
    /// to item. Large sets are parsed on several threads.
    pub fn to_regorus(&self) -> Result<regorus::Value, RuleError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(self.items.len().div_ceil(ITEMS_PER_PARSER))
            .max(1);
        let parts: Vec<Result<Vec<_>, RuleError>> = if threads == 1 {
            vec![parse_items(&self.items)]
        } else {
            let per_thread = self.items.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .items
                    .chunks(per_thread)
                    .map(|part| scope.spawn(move || parse_items(part)))
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| {
                        handle.join().unwrap_or_else(|_| {
                            Err(RuleError::Worker(
                                "a parser of the rules' input panicked".into(),
                            ))
                        })
                    })
                    .collect()
            })
        };
        let mut items = BTreeMap::new();
        for part in parts {
            items.extend(part?);
        }
        input_value(&self.context, items)
    }
}

/// Parses items (a key and its JSON text each) into regorus's values.
pub fn parse_items<K: AsRef<str>, V: AsRef<[u8]>>(
    items: &[(K, V)],
) -> Result<Vec<(regorus::Value, regorus::Value)>, RuleError> {
    items
        .iter()
        .map(|(key, value)| {
            let key = key.as_ref();
            let text = std::str::from_utf8(value.as_ref()).map_err(|e| bad_item(key, &e))?;
            let parsed = regorus::Value::from_json_str(text).map_err(|e| bad_item(key, &e))?;
            Ok((regorus::Value::from(key), parsed))
        })
        .collect()
}

/// The rules' input: the context with `items` set to the parsed items.
pub fn input_value(
    context: &serde_json::Map<String, serde_json::Value>,
    items: BTreeMap<regorus::Value, regorus::Value>,
) -> Result<regorus::Value, RuleError> {
    let context = serde_json::to_string(context)
        .map_err(|e| RuleError::Worker(format!("cannot encode the rules' input: {e}")))?;
    let mut input = regorus::Value::from_json_str(&context)
        .map_err(|e| RuleError::Worker(format!("cannot read the rules' input: {e}")))?;
    let object = input
        .as_object_mut()
        .map_err(|e| RuleError::Worker(format!("the rules' input is not an object: {e}")))?;
    object.insert(regorus::Value::from("items"), regorus::Value::from(items));
    Ok(input)
}

fn bad_item(key: &str, error: &dyn std::fmt::Display) -> RuleError {
    RuleError::Worker(format!(
        "item {key:?} of the rules' input is not JSON: {error}"
    ))
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
    fn a_large_input_parsed_on_several_threads_keeps_every_item_in_key_order() {
        let items: Vec<(String, Arc<[u8]>)> = (0..3 * ITEMS_PER_PARSER + 7)
            .map(|i| {
                let text = format!("{{\"owner\": \"team-{i}\"}}");
                (format!("tables/t{i:06}"), Arc::from(text.into_bytes()))
            })
            .collect();
        let input = RuleInput {
            context: serde_json::Map::new(),
            items,
        };
        let value = input.to_regorus().expect("parses");
        let items = value["items"].as_object().expect("an object");
        assert_eq!(items.len(), 3 * ITEMS_PER_PARSER + 7);
        let last = items
            .get(&regorus::Value::from("tables/t012294"))
            .expect("the last item");
        assert_eq!(last["owner"], regorus::Value::from("team-12294"));
    }

    #[test]
    fn an_item_that_is_not_json_is_named() {
        let input = RuleInput {
            context: serde_json::Map::new(),
            items: vec![("tables/broken".into(), Arc::from(&b"{not json"[..]))],
        };
        let error = input.to_regorus().expect_err("refused");
        assert!(error.to_string().contains("\"tables/broken\""), "{error}");
    }

    #[test]
    fn deny_and_warn_messages_name_the_rule_and_item() {
        let set = rules(&[("owners.rego", OWNERS)]);
        let outcome = set
            .evaluate(
                &RuleInput::from_json(
                    json!({"items": {"tables/a": {"owner": "x", "description": "d"}, "tables/b": {}}}),
                ),
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
                &RuleInput::from_json(
                    json!({"items": {"tables/a": {"owner": "x", "description": "d"}}}),
                ),
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
        let outcome = set
            .evaluate(&RuleInput::from_json(input), DEFAULT_TIME_LIMIT)
            .expect("evaluates");
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
            .evaluate(&RuleInput::default(), Duration::from_millis(200))
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
            .evaluate(&RuleInput::default(), DEFAULT_TIME_LIMIT)
            .expect_err("refused");
        assert!(
            error.to_string().starts_with("rule bad.rego failed: "),
            "{error}"
        );
        let set = rules(&[("scalar.rego", "package scalar\nimport rego.v1\ndeny := 3\n")]);
        let error = set
            .evaluate(&RuleInput::default(), DEFAULT_TIME_LIMIT)
            .expect_err("refused");
        assert!(error.to_string().contains("must be a set"), "{error}");
    }
}

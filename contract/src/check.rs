//! The verdict on a set under a contract, computed while the set is read chunk by chunk: every
//! item checked against its schemas, the plan against the active set classified, and the input
//! of the Rego rules built. The coordinator runs this at seal over the chunks in etcd; sbctl
//! runs it over the local set for `plan` and `stage`, so both say the same words.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::compat::{self, ClassCounts, ItemChange, ItemPlan};
use crate::diff::{ActiveOnlyItems, Diff, diff_unshared};
use crate::document::CompiledContract;
use crate::pointer_or_root;
use crate::rules::{Finding, RuleInput, RuleOutcome};

/// The most violations kept for a message; the rest are counted.
pub const MAX_VIOLATIONS_KEPT: usize = 1000;
/// The most lines of one kind a refusal shows.
const SHOWN: usize = 10;

/// Which items the contract judges. Every item, when the active set was not judged by this
/// same contract (or there is none); otherwise only what changed: an item in a chunk the active
/// set shares is the same bytes, and it already passed these schemas and rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleScope {
    All,
    Changed,
}

/// One item's violation of a schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ItemViolation {
    pub key: String,
    /// JSON pointer into the item.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ItemViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.key,
            pointer_or_root(&self.path),
            self.message
        )
    }
}

/// A check of one set, fed its items in key order.
pub struct SealCheck<'c> {
    contract: &'c CompiledContract,
    scope: RuleScope,
    /// Whether there is an active set to compare with (else every item is added).
    has_active: bool,
    violations: Vec<ItemViolation>,
    violation_total: u64,
    /// The new set's items in chunks the active set does not share.
    new_only: BTreeMap<String, Arc<[u8]>>,
    shared_items: u64,
    /// Every item's JSON text, for rules that see all items, unless the caller streams them
    /// to the rules itself.
    all_items: Vec<(String, Arc<[u8]>)>,
    keeps_all_items: bool,
    keys_without_active: Vec<String>,
}

impl<'c> SealCheck<'c> {
    pub fn new(contract: &'c CompiledContract, has_active: bool, scope: RuleScope) -> Self {
        SealCheck {
            contract,
            scope,
            has_active,
            violations: Vec::new(),
            violation_total: 0,
            new_only: BTreeMap::new(),
            shared_items: 0,
            all_items: Vec::new(),
            keeps_all_items: true,
            keys_without_active: Vec::new(),
        }
    }

    /// A check whose caller hands every item to the rules as it adds it (the coordinator's
    /// seal, which streams them to the rule worker): the rules' input then leaves every item
    /// out, instead of holding a second list of them.
    pub fn with_items_streamed(mut self) -> Self {
        self.keeps_all_items = false;
        self
    }

    /// Adds the next item of the new set. `in_shared_chunk`: the item's chunk is also one of
    /// the active set's, so the item is unchanged. Values are JSON (the set was verified).
    pub fn add_item(&mut self, key: &str, value: &Arc<[u8]>, in_shared_chunk: bool) {
        let wants_value =
            self.keeps_all_items && self.scope == RuleScope::All && !self.contract.rules.is_empty();
        let schemas = &self.contract.schemas;
        let judged_before = in_shared_chunk && self.scope == RuleScope::Changed;
        if !judged_before && !schemas.for_key(key).is_empty() {
            let parsed: Value = serde_json::from_slice(value).unwrap_or(Value::Null);
            for violation in schemas.violations(key, &parsed) {
                self.violation_total += 1;
                if self.violations.len() < MAX_VIOLATIONS_KEPT {
                    self.violations.push(ItemViolation {
                        key: key.to_string(),
                        path: violation.path,
                        message: violation.message,
                    });
                }
            }
        }
        if wants_value {
            self.all_items.push((key.to_string(), value.clone()));
        }
        if !self.has_active {
            self.keys_without_active.push(key.to_string());
        } else if in_shared_chunk {
            self.shared_items += 1;
        } else {
            self.new_only.insert(key.to_string(), value.clone());
        }
    }

    /// The violations found so far, and how many there were in all.
    pub fn violations(&self) -> (&[ItemViolation], u64) {
        (&self.violations, self.violation_total)
    }

    /// The plan against the active set, whose items in chunks the new set does not share are
    /// `active_only` (empty when nothing is active), and the rules' input.
    pub fn finish(
        self,
        active_only: &ActiveOnlyItems,
        subject: &Subject<'_>,
    ) -> Result<Checked, String> {
        let diff = if self.has_active {
            diff_unshared(&self.new_only, self.shared_items, active_only)
        } else {
            Diff {
                added: self.keys_without_active,
                ..Diff::default()
            }
        };
        let new_only = &self.new_only;
        let plan = compat::plan_items(
            &diff,
            |key| new_only.get(key).map(|v| &v[..]),
            active_only,
            &self.contract.schemas,
        )?;
        let classes = ClassCounts::of(&plan);
        let rule_input = if self.contract.rules.is_empty() {
            RuleInput::default()
        } else {
            let items = match self.scope {
                RuleScope::All => self.all_items,
                RuleScope::Changed => {
                    let mut items: Vec<(String, Arc<[u8]>)> = diff
                        .added
                        .iter()
                        .chain(&diff.changed)
                        .filter_map(|key| Some((key.clone(), self.new_only.get(key)?.clone())))
                        .collect();
                    items.sort_by(|a, b| a.0.cmp(&b.0));
                    items
                }
            };
            let mut previous = serde_json::Map::new();
            for key in diff.changed.iter().chain(&diff.removed) {
                if let Some(value) = active_only.get(key) {
                    previous.insert(
                        key.clone(),
                        serde_json::from_slice(value).unwrap_or(Value::Null),
                    );
                }
            }
            let changes: Vec<&ItemPlan> = plan
                .iter()
                .filter(|p| p.change != ItemChange::Added)
                .collect();
            let mut context = serde_json::Map::new();
            context.insert("namespace".into(), json!(subject.namespace));
            context.insert("actor".into(), json!(subject.actor));
            context.insert("version".into(), json!(subject.version));
            context.insert("scope".into(), json!(self.scope));
            context.insert("previous".into(), Value::Object(previous));
            context.insert(
                "plan".into(),
                json!({
                    "added": diff.added,
                    "changed": diff.changed,
                    "removed": diff.removed,
                    "classes": classes,
                    "changes": changes,
                }),
            );
            RuleInput { context, items }
        };
        Ok(Checked {
            violations: self.violations,
            violation_total: self.violation_total,
            plan,
            classes,
            rule_input,
        })
    }
}

/// Who stages what where, for the rules' input.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub namespace: &'a str,
    pub actor: &'a str,
    pub version: &'a str,
}

/// A set checked: its schema violations, its classified plan, and the rules' input (empty
/// when the contract has no rules).
#[derive(Debug)]
pub struct Checked {
    pub violations: Vec<ItemViolation>,
    pub violation_total: u64,
    pub plan: Vec<ItemPlan>,
    pub classes: ClassCounts,
    pub rule_input: RuleInput,
}

/// The whole verdict, once the rules have run.
#[derive(Debug)]
pub struct Verdict<'a> {
    pub namespace: &'a str,
    /// The contract's short hash, for messages; empty when the namespace has none.
    pub contract: &'a str,
    pub checked: &'a Checked,
    pub rules: &'a RuleOutcome,
}

impl Verdict<'_> {
    /// The refusal for schema violations, if there are any.
    pub fn violation_refusal(&self) -> Option<String> {
        let checked = self.checked;
        if checked.violation_total == 0 {
            return None;
        }
        let mut message = format!(
            "refused: {} violation(s) of the contract of {}{}:",
            checked.violation_total,
            self.namespace,
            contract_suffix(self.contract)
        );
        push_lines(
            &mut message,
            checked.violations.iter().map(ToString::to_string),
            checked.violation_total as usize,
        );
        message.push_str(&format!(
            "\nfix the items, or change the contract with `sbctl contract set {} DIR`",
            self.namespace
        ));
        Some(message)
    }

    /// The refusal for destructive changes that are not allowed, if there are any.
    /// `review` is the command that shows the plan.
    pub fn destructive_refusal(
        &self,
        allow_destructive: bool,
        active_version: &str,
        review: &str,
    ) -> Option<String> {
        compat::check_destructive(
            &self.checked.plan,
            allow_destructive,
            active_version,
            review,
        )
        .err()
    }

    /// The refusal for the rules' `deny` messages, if there are any.
    pub fn rule_refusal(&self) -> Option<String> {
        refusal_for_denies(self.namespace, self.contract, &self.rules.deny)
    }
}

/// The refusal for `deny` messages, if there are any.
pub fn refusal_for_denies(namespace: &str, contract: &str, deny: &[Finding]) -> Option<String> {
    if deny.is_empty() {
        return None;
    }
    let mut message = format!(
        "refused by {} rule message(s) of the contract of {namespace}{}:",
        deny.len(),
        contract_suffix(contract)
    );
    push_lines(
        &mut message,
        deny.iter().map(ToString::to_string),
        deny.len(),
    );
    message.push_str(&format!(
        "\nfix the items, or change the rules with `sbctl contract set {namespace} DIR`"
    ));
    Some(message)
}

fn contract_suffix(contract: &str) -> String {
    if contract.is_empty() {
        String::new()
    } else {
        format!(" (contract {contract})")
    }
}

fn push_lines(message: &mut String, lines: impl Iterator<Item = String>, total: usize) {
    let mut shown = 0;
    for line in lines.take(SHOWN) {
        message.push_str("\n  ");
        message.push_str(&line);
        shown += 1;
    }
    if total > shown {
        message.push_str(&format!("\n  and {} more", total - shown));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{Contract, FORMAT, SchemaRule};
    use crate::rules::DEFAULT_TIME_LIMIT;

    fn contract() -> CompiledContract {
        Contract {
            format: FORMAT,
            schemas: vec![SchemaRule {
                pattern: "tables/*".into(),
                schema: "table.json".into(),
            }],
            schema_documents: BTreeMap::from([(
                "table.json".to_string(),
                json!({"type": "object", "required": ["owner"], "properties": {"columns": {"type": "array"}}}),
            )]),
            rules: BTreeMap::from([(
                "pii.rego".to_string(),
                r#"package switchboard.pii
import rego.v1
approval contains {"msg": "a column of a pii table is removed", "item": change.key} if {
    some change in input.plan.changes
    some c in change.changes
    c.kind == "element_removed"
    startswith(c.path, "/columns/")
    "pii" in input.previous[change.key].tags
}
"#
                .to_string(),
            )]),
        }
        .compile()
        .expect("compiles")
    }

    fn value(v: Value) -> Arc<[u8]> {
        Arc::from(serde_json::to_vec(&v).expect("json"))
    }

    const SUBJECT: Subject<'static> = Subject {
        namespace: "catalog",
        actor: "alice",
        version: "v2",
    };

    #[test]
    fn violations_name_the_item_and_path() {
        let contract = contract();
        let mut check = SealCheck::new(&contract, false, RuleScope::All);
        check.add_item("tables/a", &value(json!({"owner": "x"})), false);
        check.add_item("tables/b", &value(json!({"columns": 3})), false);
        check.add_item("notes/n", &value(json!(1)), false);
        let checked = check
            .finish(&ActiveOnlyItems::new(), &SUBJECT)
            .expect("checks");
        assert_eq!(checked.violation_total, 2);
        let rules = RuleOutcome::default();
        let verdict = Verdict {
            namespace: "catalog",
            contract: "abc",
            checked: &checked,
            rules: &rules,
        };
        let message = verdict.violation_refusal().expect("refused");
        assert!(
            message
                .starts_with("refused: 2 violation(s) of the contract of catalog (contract abc):"),
            "{message}"
        );
        assert!(
            message.contains("\n  tables/b: (root): \"owner\" is a required property"),
            "{message}"
        );
        assert!(
            message.contains("\n  tables/b: /columns: 3 is not of type \"array\""),
            "{message}"
        );
        // With no active set, everything is added and the rules see every item.
        assert_eq!(checked.plan.len(), 3);
        assert_eq!(checked.rule_input.items.len(), 3);
    }

    #[test]
    fn streamed_items_are_not_kept_again_but_still_validated() {
        let contract = contract();
        let mut check = SealCheck::new(&contract, false, RuleScope::All).with_items_streamed();
        check.add_item(
            "tables/a",
            &value(json!({"owner": "x", "columns": []})),
            false,
        );
        check.add_item("tables/b", &value(json!({"columns": 3})), false);
        assert_eq!(check.violations().1, 2);
        let checked = check
            .finish(&ActiveOnlyItems::new(), &SUBJECT)
            .expect("checks");
        assert!(checked.rule_input.items.is_empty());
        assert_eq!(checked.plan.len(), 2);
    }

    #[test]
    fn items_the_same_contract_judged_before_are_not_validated_again() {
        let contract = contract();
        // Under the contract that judged the active set, an item in a shared chunk passed it.
        let mut check = SealCheck::new(&contract, true, RuleScope::Changed);
        check.add_item("tables/old", &value(json!({"columns": 3})), true);
        assert_eq!(check.violations().1, 0);
        // Under another contract, it is judged like any other.
        let mut check = SealCheck::new(&contract, true, RuleScope::All);
        check.add_item("tables/old", &value(json!({"columns": 3})), true);
        assert_eq!(check.violations().1, 2);
        // A changed item is always judged.
        let mut check = SealCheck::new(&contract, true, RuleScope::Changed);
        check.add_item("tables/new", &value(json!({"columns": 3})), false);
        assert_eq!(check.violations().1, 2);
    }

    #[test]
    fn the_plan_and_the_rules_see_what_changed() {
        let contract = contract();
        let mut check = SealCheck::new(&contract, true, RuleScope::Changed);
        check.add_item(
            "tables/people",
            &value(json!({"owner": "x", "tags": ["pii"], "columns": [{"name": "id"}]})),
            false,
        );
        check.add_item("tables/same", &value(json!({"owner": "y"})), true);
        let active_only = ActiveOnlyItems::from([
            (
                "tables/people".to_string(),
                value(
                    json!({"owner": "x", "tags": ["pii"], "columns": [{"name": "id"}, {"name": "ssn"}]}),
                ),
            ),
            ("tables/gone".to_string(), value(json!({"owner": "z"}))),
        ]);
        let checked = check.finish(&active_only, &SUBJECT).expect("checks");
        assert_eq!(checked.violation_total, 0);
        assert_eq!(checked.classes.destructive, 2, "{:?}", checked.plan);
        let rules = contract
            .rules
            .evaluate(&checked.rule_input, DEFAULT_TIME_LIMIT)
            .expect("evaluates");
        assert_eq!(rules.approval.len(), 1, "{rules:?}");
        assert_eq!(rules.approval[0].item.as_deref(), Some("tables/people"));
        let verdict = Verdict {
            namespace: "catalog",
            contract: "abc",
            checked: &checked,
            rules: &rules,
        };
        let refusal = verdict
            .destructive_refusal(false, "v1", "sbctl plan catalog DIR")
            .expect("refused");
        assert!(refusal.contains("tables/gone: item removed"), "{refusal}");
        assert!(
            refusal.contains("tables/people /columns/1: element removed"),
            "{refusal}"
        );
        assert!(verdict.destructive_refusal(true, "v1", "x").is_none());
        assert!(verdict.rule_refusal().is_none());
        // Only what changed is in the rules' input.
        let keys: Vec<&str> = checked
            .rule_input
            .items
            .iter()
            .map(|(key, _)| key.as_str())
            .collect();
        assert_eq!(keys, ["tables/people"]);
    }
}

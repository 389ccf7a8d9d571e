//! The contract of a namespace as it is stored in etcd and sent over the admin API: JSON Schemas
//! by key pattern, and Rego rules. It is written by an admin (`sbctl contract set NS DIR`, from
//! the directory's `switchboard.yaml`), never by staging, so a set cannot bring the rules that
//! judge it. Its name is the SHA-256 of its canonical JSON: the same contract always has the
//! same hash, and an approval names exactly one contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_proto::set::{canonical_json, sha256_hex};

use crate::schema::{Pattern, Schemas, compile_rules};

/// The contract format this code writes and reads.
pub const FORMAT: u32 = 1;
/// The largest contract, as canonical JSON: it is one etcd value, under etcd's 1.5 MiB.
pub const MAX_CONTRACT_BYTES: usize = 1024 * 1024;
/// The most schema rules (pattern to schema) a contract holds.
pub const MAX_SCHEMA_RULES: usize = 256;
/// The most Rego rule files a contract holds.
pub const MAX_RULE_FILES: usize = 64;
/// The longest name of a schema or rule file.
pub const MAX_FILE_NAME: usize = 256;

/// One `schemas:` entry: items whose keys match `pattern` are checked against the schema
/// document named `schema`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRule {
    pub pattern: String,
    pub schema: String,
}

/// A namespace's contract.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub format: u32,
    /// Which schema applies to which keys, in order.
    #[serde(default)]
    pub schemas: Vec<SchemaRule>,
    /// The schema documents by file name (relative to the directory they came from).
    #[serde(default)]
    pub schema_documents: BTreeMap<String, Value>,
    /// Rego rule files by name, each its source text.
    #[serde(default)]
    pub rules: BTreeMap<String, String>,
}

impl Contract {
    /// The canonical JSON every hash and comparison uses.
    pub fn canonical(&self) -> Vec<u8> {
        canonical_json(&serde_json::to_value(self).unwrap_or(Value::Null))
    }

    /// The contract's name: the SHA-256 of its canonical JSON.
    pub fn hash(&self) -> String {
        sha256_hex(&self.canonical())
    }

    /// Whether the contract checks nothing.
    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty() && self.rules.is_empty()
    }

    /// Parses a contract sent by a caller or read from etcd, with its limits checked.
    pub fn from_json(data: &[u8]) -> Result<Contract, ContractError> {
        if data.len() > MAX_CONTRACT_BYTES * 2 {
            return Err(ContractError::TooLarge(data.len()));
        }
        let contract: Contract = serde_json::from_slice(data)
            .map_err(|e| ContractError::Invalid(format!("not a contract document: {e}")))?;
        contract.check_limits()?;
        Ok(contract)
    }

    fn check_limits(&self) -> Result<(), ContractError> {
        if self.format != FORMAT {
            return Err(ContractError::Invalid(format!(
                "contract format {} is not {FORMAT}; upgrade sbctl, or the coordinator",
                self.format
            )));
        }
        let size = self.canonical().len();
        if size > MAX_CONTRACT_BYTES {
            return Err(ContractError::TooLarge(size));
        }
        if self.schemas.len() > MAX_SCHEMA_RULES {
            return Err(ContractError::Invalid(format!(
                "{} schema rules, more than {MAX_SCHEMA_RULES}",
                self.schemas.len()
            )));
        }
        if self.rules.len() > MAX_RULE_FILES {
            return Err(ContractError::Invalid(format!(
                "{} rule files, more than {MAX_RULE_FILES}",
                self.rules.len()
            )));
        }
        for name in self.schema_documents.keys().chain(self.rules.keys()) {
            if name.is_empty() || name.len() > MAX_FILE_NAME || name.chars().any(|c| c.is_control())
            {
                return Err(ContractError::Invalid(format!(
                    "file name {:?} must be 1 to {MAX_FILE_NAME} bytes without control characters",
                    name.chars().take(64).collect::<String>()
                )));
            }
        }
        Ok(())
    }

    /// Compiles the contract: every pattern parsed, every schema compiled, every rule parsed.
    /// The error names the file and what is wrong.
    pub fn compile(&self) -> Result<CompiledContract, ContractError> {
        self.check_limits()?;
        let mut patterns = Vec::with_capacity(self.schemas.len());
        for (position, rule) in self.schemas.iter().enumerate() {
            let pattern = Pattern::parse(&rule.pattern)
                .map_err(|e| ContractError::Invalid(format!("schemas[{position}]: {e}")))?;
            if !self.schema_documents.contains_key(&rule.schema) {
                return Err(ContractError::Invalid(format!(
                    "schemas[{position}]: the schema {:?} of pattern {:?} is not in the contract",
                    rule.schema, rule.pattern
                )));
            }
            patterns.push((pattern, rule.schema.as_str()));
        }
        let schemas =
            compile_rules(patterns, &self.schema_documents, str::to_string).map_err(|errors| {
                ContractError::Invalid(errors.first().map(ToString::to_string).unwrap_or_default())
            })?;
        let rules = crate::rules::RuleSet::parse(&self.rules)?;
        Ok(CompiledContract {
            hash: self.hash(),
            schemas,
            rules,
        })
    }
}

/// A contract ready to judge sets.
#[derive(Debug)]
pub struct CompiledContract {
    pub hash: String,
    pub schemas: Schemas,
    pub rules: crate::rules::RuleSet,
}

impl CompiledContract {
    /// The contract that checks nothing (a namespace that has none).
    pub fn empty() -> Self {
        CompiledContract {
            hash: String::new(),
            schemas: Schemas::default(),
            rules: crate::rules::RuleSet::default(),
        }
    }
}

/// A contract as it is stored in a namespace: the document and who set it, why and when; and,
/// once it is in force, who approved it (when the policy requires approval).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContractRecord {
    /// [`Contract::hash`] of `contract`.
    pub hash: String,
    pub contract: Contract,
    pub set_by: String,
    pub reason: String,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at_ms: Option<u64>,
}

impl ContractRecord {
    /// The short form people type: the first 12 hex digits of the hash.
    pub fn short_hash(&self) -> &str {
        self.hash.get(..12).unwrap_or(&self.hash)
    }
}

/// A namespace's contract as `sbctl contract show` prints it: the one in force, and a proposal
/// waiting for another person's approval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContractView {
    pub namespace: String,
    #[serde(default)]
    pub active: Option<ContractRecord>,
    #[serde(default)]
    pub proposal: Option<ContractRecord>,
    /// Whether a change needs another person's approval (the policy's `require_approval`).
    #[serde(default)]
    pub requires_approval: bool,
}

/// What is wrong with a contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("the contract is {0} bytes as canonical JSON, over the limit of {MAX_CONTRACT_BYTES}")]
    TooLarge(usize),
    #[error("{0}")]
    Invalid(String),
    /// A Rego rule file that does not parse.
    #[error("rule {rule}: {reason}")]
    Rule { rule: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Contract {
        Contract {
            format: FORMAT,
            schemas: vec![SchemaRule {
                pattern: "tables/**".into(),
                schema: "schemas/table.json".into(),
            }],
            schema_documents: BTreeMap::from([(
                "schemas/table.json".to_string(),
                json!({"type": "object", "required": ["owner"]}),
            )]),
            rules: BTreeMap::from([(
                "rules/owners.rego".to_string(),
                "package switchboard.owners\nimport rego.v1\ndeny contains msg if { false; msg := \"x\" }\n".to_string(),
            )]),
        }
    }

    #[test]
    fn the_hash_is_a_function_of_the_content() {
        let a = sample();
        let round_trip = Contract::from_json(&a.canonical()).expect("parses");
        assert_eq!(round_trip.hash(), a.hash());
        let mut b = sample();
        b.schemas[0].pattern = "tables/*".into();
        assert_ne!(b.hash(), a.hash());
    }

    #[test]
    fn a_contract_compiles_and_checks_items() {
        let compiled = sample().compile().expect("compiles");
        assert!(
            compiled
                .schemas
                .violations("tables/t", &json!({"owner": "x"}))
                .is_empty()
        );
        assert_eq!(compiled.schemas.violations("tables/t", &json!({})).len(), 1);
        assert!(
            compiled
                .schemas
                .violations("owners/o", &json!({}))
                .is_empty()
        );
        assert_eq!(compiled.rules.len(), 1);
    }

    #[test]
    fn bad_contracts_are_refused_naming_the_file() {
        let mut missing = sample();
        missing.schemas[0].schema = "schemas/nope.json".into();
        let error = missing.compile().expect_err("missing schema").to_string();
        assert!(error.contains("schemas/nope.json"), "{error}");

        let mut bad_schema = sample();
        bad_schema
            .schema_documents
            .insert("schemas/table.json".into(), json!({"type": "no-such-type"}));
        let error = bad_schema.compile().expect_err("bad schema").to_string();
        assert!(
            error.starts_with("schemas/table.json: not a valid JSON Schema"),
            "{error}"
        );

        let mut bad_rule = sample();
        bad_rule.rules.insert(
            "rules/broken.rego".into(),
            "package x\ndeny contains if {".into(),
        );
        let error = bad_rule.compile().expect_err("bad rule").to_string();
        assert!(error.starts_with("rule rules/broken.rego: "), "{error}");

        let mut bad_pattern = sample();
        bad_pattern.schemas[0].pattern = "a//b".into();
        assert!(bad_pattern.compile().is_err());

        assert!(Contract::from_json(b"{\"format\": 2}").is_err());
        assert!(Contract::from_json(b"{\"format\": 1, \"extra\": 1}").is_err());
        assert!(Contract::from_json(b"[").is_err());
    }
}

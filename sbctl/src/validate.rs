//! Validation of a source directory: the `switchboard.yaml` at its root maps key patterns to
//! JSON Schemas kept in the same tree, and every item whose key matches a pattern is checked
//! against that schema (against each, when several patterns match). The checks themselves are
//! the contract crate's ([`switchboard_contract::schema`]), which the coordinator enforces at
//! seal; this module reads the files.
//!
//! ```yaml
//! schemas:
//!   - pattern: "tables/**"          # `*` is any text within one segment, `**` any segments
//!     schema: schemas/table.json    # relative to the set's directory, JSON or YAML
//!   - pattern: "owners/*"
//!     schema: schemas/owner.json
//! rules:                            # optional: Rego rule files, enforced at seal
//!   - rules/owners.rego
//! environments_dir: environments    # optional; where `--env NAME` finds NAME.yaml
//! ```
//!
//! - Files named as schemas or rules are not items, and neither is the environments directory.
//! - Items under no pattern are not checked.
//! - Every violation is reported as `FILE: JSON_PATH: message`; a schema that is not a valid
//!   JSON Schema is an error naming the schema file.
//! - A single-file set has no `switchboard.yaml`: it is not validated.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;
use serde_json::Value;
pub use switchboard_contract::schema::{
    Cursor, Pattern, REDACTED, SENSITIVE_KEYWORD, Schema, Schemas, redact, touches_sensitive,
};

use crate::source::{self, CONFIG_FILE, Problem, SourceItem};

/// Where `--env NAME` looks for NAME.yaml unless `switchboard.yaml` says otherwise.
pub const DEFAULT_ENVIRONMENTS_DIR: &str = "environments";

/// One `schemas:` entry of `switchboard.yaml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub pattern: Pattern,
    /// The schema file as written, relative to the set's directory.
    pub schema: String,
}

/// The configuration of a source directory, from its `switchboard.yaml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub rules: Vec<Rule>,
    /// Rego rule files, relative to the set's directory.
    pub rule_files: Vec<String>,
    /// Relative to the set's directory.
    pub environments_dir: String,
    /// Settings this sbctl does not know, named for a warning.
    pub unknown: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rules: Vec::new(),
            rule_files: Vec::new(),
            environments_dir: DEFAULT_ENVIRONMENTS_DIR.into(),
            unknown: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    schemas: Vec<RawRule>,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    environments_dir: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    pattern: String,
    schema: String,
}

/// Reads `switchboard.yaml` at the root of `dir`; without one, the defaults.
pub fn load_config(dir: &Path) -> Result<Config, Vec<Problem>> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Ok(Config::default());
    }
    let file = crate::escape::path(&path);
    let document = source::read_document(dir, &path).map_err(|p| vec![p])?;
    parse_config(&file, document)
}

/// The configuration in a parsed `switchboard.yaml`, every problem named.
pub fn parse_config(file: &str, document: Value) -> Result<Config, Vec<Problem>> {
    let problem = |reason: String| Problem::Config {
        file: file.to_string(),
        reason,
    };
    if document.is_null() {
        return Ok(Config::default());
    }
    let raw: RawConfig = serde_json::from_value(document)
        .map_err(|e| vec![problem(format!("not a valid configuration: {e}"))])?;
    let mut problems = Vec::new();
    let mut rules = Vec::new();
    for (i, rule) in raw.schemas.into_iter().enumerate() {
        let pattern = match Pattern::parse(&rule.pattern) {
            Ok(pattern) => pattern,
            Err(e) => {
                problems.push(problem(format!("schemas[{i}]: {e}")));
                continue;
            }
        };
        if relative_inside(&rule.schema).is_none() {
            problems.push(problem(format!(
                "schemas[{i}]: the schema {:?} must be a relative path inside the set's \
                 directory",
                rule.schema
            )));
            continue;
        }
        rules.push(Rule {
            pattern,
            schema: rule.schema,
        });
    }
    let mut rule_files = Vec::new();
    for (i, file) in raw.rules.into_iter().enumerate() {
        match relative_inside(&file) {
            Some(relative) if !relative.is_empty() && relative.ends_with(".rego") => {
                rule_files.push(relative)
            }
            _ => problems.push(problem(format!(
                "rules[{i}]: the rule file {file:?} must be a relative path to a .rego file inside the set's directory"
            ))),
        }
    }
    let environments_dir = raw
        .environments_dir
        .unwrap_or_else(|| DEFAULT_ENVIRONMENTS_DIR.into());
    if relative_inside(&environments_dir).is_none_or(|r| r.is_empty()) {
        problems.push(problem(format!(
            "environments_dir {environments_dir:?} must be a relative path inside the set's \
             directory"
        )));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        rules,
        rule_files,
        environments_dir,
        unknown: raw.other.into_keys().collect(),
    })
}

/// `path` relative to a set's directory with `.` and `..` resolved, `/`-separated; `None` for
/// an absolute path or one that leaves the directory.
pub fn relative_inside(path: &str) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}
/// Reads and compiles the schema of every rule of `config`, relative to `dir`; a schema named
/// by several rules is compiled once. Every problem names its file.
pub fn compile(dir: &Path, config: &Config) -> Result<Schemas, Vec<Problem>> {
    let documents = read_schema_documents(dir, config)?;
    let relatives: Vec<(Pattern, String)> = config
        .rules
        .iter()
        .map(|rule| {
            let relative = relative_inside(&rule.schema).unwrap_or_default();
            (rule.pattern.clone(), relative)
        })
        .collect();
    switchboard_contract::schema::compile_rules(
        relatives.iter().map(|(p, r)| (p.clone(), r.as_str())),
        &documents,
        |relative| crate::escape::path(&dir.join(relative)),
    )
    .map_err(|errors| {
        errors
            .into_iter()
            .map(|error| Problem::Config {
                file: error.file,
                reason: error.reason,
            })
            .collect()
    })
}

/// The schema documents `config` names, by their path relative to `dir`.
fn read_schema_documents(
    dir: &Path,
    config: &Config,
) -> Result<BTreeMap<String, Value>, Vec<Problem>> {
    let mut documents = BTreeMap::new();
    let mut problems = Vec::new();
    let config_file = crate::escape::path(&dir.join(CONFIG_FILE));
    for rule in &config.rules {
        let relative = relative_inside(&rule.schema).unwrap_or_default();
        if documents.contains_key(&relative) {
            continue;
        }
        let path = dir.join(&relative);
        if !path.is_file() {
            problems.push(Problem::Config {
                file: config_file.clone(),
                reason: format!(
                    "the schema {} of pattern {:?} does not exist",
                    crate::escape::path(&path),
                    rule.pattern.as_str()
                ),
            });
            continue;
        }
        match source::read_document(dir, &path) {
            Ok(document) => {
                documents.insert(relative, document);
            }
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(documents)
    } else {
        Err(problems)
    }
}

/// Checks every item against the schemas of its key: one problem per violation, naming the
/// item's file and the JSON path of the violation. Values of sensitive fields are not quoted.
pub fn validate_items(schemas: &Schemas, items: &[SourceItem]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for item in items {
        for violation in schemas.violations(&item.key, &item.value) {
            problems.push(Problem::At {
                file: item.location(),
                path: violation.path,
                message: violation.message,
            });
        }
    }
    problems
}

/// The contract that `config` in `dir` describes: the schemas with their documents and the
/// Rego rule files, as `sbctl contract set` sends it. Names are relative to `dir`.
pub fn read_contract(
    dir: &Path,
    config: &Config,
) -> Result<switchboard_contract::Contract, Vec<Problem>> {
    let schema_documents = read_schema_documents(dir, config)?;
    let mut rules = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &config.rule_files {
        let path = dir.join(file);
        match source::read_text(dir, &path) {
            Ok(text) => {
                rules.insert(file.clone(), text);
            }
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(switchboard_contract::Contract {
        format: switchboard_contract::document::FORMAT,
        schemas: config
            .rules
            .iter()
            .map(|rule| switchboard_contract::document::SchemaRule {
                pattern: rule.pattern.as_str().to_string(),
                schema: relative_inside(&rule.schema).unwrap_or_default(),
            })
            .collect(),
        schema_documents,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(
            relative_inside("schemas/t.json").as_deref(),
            Some("schemas/t.json")
        );
        assert_eq!(
            relative_inside("./schemas/../s/t.json").as_deref(),
            Some("s/t.json")
        );
        assert_eq!(relative_inside("../t.json"), None);
        assert_eq!(relative_inside("/etc/t.json"), None);
    }

    #[test]
    fn configuration_is_checked() {
        let config = parse_config(
            "switchboard.yaml",
            json!({
                "schemas": [{"pattern": "tables/**", "schema": "schemas/table.json"}],
                "environments_dir": "config/envs",
                "gates": []
            }),
        )
        .expect("valid");
        assert_eq!(config.rules.len(), 1);
        assert_eq!(config.environments_dir, "config/envs");
        assert_eq!(config.unknown, ["gates"]);
        assert_eq!(
            parse_config("switchboard.yaml", Value::Null).expect("empty"),
            Config::default()
        );

        let problems = parse_config(
            "switchboard.yaml",
            json!({"schemas": [
                {"pattern": "a//b", "schema": "s.json"},
                {"pattern": "ok", "schema": "../outside.json"},
            ], "environments_dir": "/abs"}),
        )
        .expect_err("invalid");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0]
                .to_string()
                .starts_with("switchboard.yaml: schemas[0]"),
            "{}",
            problems[0]
        );

        let typo = parse_config(
            "switchboard.yaml",
            json!({"schemas": [{"patern": "a", "schema": "s.json"}]}),
        )
        .expect_err("typo");
        assert!(typo[0].to_string().contains("patern"), "{}", typo[0]);
    }

    fn table_schema() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["name", "columns"],
            "properties": {
                "name": {"type": "string"},
                "columns": {"type": "array", "items": {"$ref": "#/$defs/column"}},
                "contact": {
                    "type": "object",
                    "properties": {
                        "phone": {"type": "string", "pattern": "^\\+", "x-switchboard-sensitive": true}
                    }
                }
            },
            "$defs": {
                "column": {
                    "type": "object",
                    "required": ["name", "type"],
                    "properties": {
                        "name": {"type": "string"},
                        "type": {"enum": ["int32", "int64", "string"]}
                    }
                }
            }
        })
    }

    fn item(key: &str, value: Value) -> SourceItem {
        SourceItem {
            key: key.into(),
            file: format!("set/{key}.yaml"),
            in_set_file: false,
            value,
        }
    }

    fn schemas_with(documents: &[(&str, &str, Value)]) -> Schemas {
        let mut schemas = Schemas::default();
        for (pattern, file, document) in documents {
            let schema = switchboard_contract::schema::compile_schema(file, document.clone())
                .expect("compiles");
            let index = schemas.add_schema(schema);
            schemas.add_rule(Pattern::parse(pattern).expect("pattern"), index);
        }
        schemas
    }

    #[test]
    fn violations_name_file_and_json_path() {
        let schemas = schemas_with(&[("tables/**", "schemas/table.json", table_schema())]);
        let items = vec![
            item(
                "tables/orders",
                json!({"name": "orders", "columns": [
                    {"name": "id", "type": "int64"},
                    {"name": "total", "type": "float"},
                    {"type": "string"}
                ]}),
            ),
            item("tables/good", json!({"name": "g", "columns": []})),
            item("owners/x", json!("not checked: no pattern")),
        ];
        let problems = validate_items(&schemas, &items);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.starts_with("set/tables/orders.yaml: /columns/1/type: ")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("set/tables/orders.yaml: /columns/2: ")
                    && t.contains("\"name\"")),
            "{text:?}"
        );

        let whole = validate_items(&schemas, &[item("tables/x", json!([1]))]);
        assert_eq!(
            whole.iter().map(ToString::to_string).next().as_deref(),
            Some("set/tables/x.yaml: (root): [1] is not of type \"object\"")
        );
    }

    #[test]
    fn every_matching_schema_is_checked() {
        let schemas = schemas_with(&[
            ("tables/**", "schemas/table.json", table_schema()),
            (
                "tables/sales/*",
                "schemas/sales.json",
                json!({"required": ["owner"]}),
            ),
        ]);
        let problems = validate_items(
            &schemas,
            &[item("tables/sales/o", json!({"name": "o", "columns": []}))],
        );
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(
            text[0].contains("\"owner\"") && text[0].ends_with("(schema schemas/sales.json)"),
            "{text:?}"
        );
    }

    #[test]
    fn a_schema_that_does_not_compile_names_its_file() {
        let problem = switchboard_contract::schema::compile_schema(
            "schemas/bad.json",
            json!({"type": "no-such-type"}),
        )
        .expect_err("bad");
        let text = problem.to_string();
        assert!(
            text.starts_with("schemas/bad.json: not a valid JSON Schema"),
            "{text}"
        );
    }

    #[test]
    fn schema_files_are_read_from_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("schemas")).expect("mkdir");
        std::fs::write(
            dir.path().join("schemas/table.json"),
            table_schema().to_string(),
        )
        .expect("write");
        std::fs::write(dir.path().join("schemas/broken.yaml"), "type: [").expect("write");
        let config = |schema: &str| Config {
            rules: vec![Rule {
                pattern: Pattern::parse("tables/**").expect("pattern"),
                schema: schema.into(),
            }],
            ..Config::default()
        };
        let schemas = compile(dir.path(), &config("./schemas/table.json")).expect("ok");
        assert_eq!(schemas.for_key("tables/a").len(), 1);
        assert!(schemas.for_key("owners/a").is_empty());

        let missing = compile(dir.path(), &config("schemas/nope.json")).expect_err("no");
        let text = missing[0].to_string();
        assert!(
            text.contains("switchboard.yaml")
                && text.contains("nope.json")
                && text.contains("does not exist"),
            "{text}"
        );
        let broken = compile(dir.path(), &config("schemas/broken.yaml")).expect_err("bad");
        assert!(
            broken[0].to_string().contains("broken.yaml"),
            "{}",
            broken[0]
        );
    }
}

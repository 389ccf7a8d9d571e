//! Validation: the `switchboard.yaml` at the root of a source directory maps key patterns to
//! JSON Schemas kept in the same tree, and every item whose key matches a pattern is checked
//! against that schema (against each, when several patterns match).
//!
//! ```yaml
//! schemas:
//!   - pattern: "tables/**"          # `*` is any text within one segment, `**` any segments
//!     schema: schemas/table.json    # relative to the set's directory, JSON or YAML
//!   - pattern: "owners/*"
//!     schema: schemas/owner.json
//! environments_dir: environments    # optional; where `--env NAME` finds NAME.yaml
//! ```
//!
//! - Files named as schemas are not items, and neither is the environments directory.
//! - Items under no pattern are not checked.
//! - Every violation is reported as `FILE: JSON_PATH: message`; a schema that is not a valid
//!   JSON Schema is an error naming the schema file. Schemas must be self-contained: `$ref`
//!   works within a schema (`#/$defs/...`); nothing is fetched from files or the network.
//! - A property whose schema has `"x-switchboard-sensitive": true` is sensitive: plans show
//!   its values, and everything under it, as `"<redacted>"`, and violation messages do not
//!   quote it. [`Cursor`] follows a schema down an item to tell.
//! - A single-file set has no `switchboard.yaml`: it is not validated.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path};

use serde::Deserialize;
use serde_json::Value;

use crate::source::{self, CONFIG_FILE, Problem, SourceItem};

/// Where `--env NAME` looks for NAME.yaml unless `switchboard.yaml` says otherwise.
pub const DEFAULT_ENVIRONMENTS_DIR: &str = "environments";
/// The schema keyword that marks a property sensitive.
pub const SENSITIVE_KEYWORD: &str = "x-switchboard-sensitive";
/// What a sensitive value is shown as.
pub const REDACTED: &str = "<redacted>";
/// Longest violation message printed; longer ones are cut.
const MAX_MESSAGE_CHARS: usize = 300;
/// Deepest chain of `$ref`, `allOf`, `anyOf`... followed when looking for sensitive fields.
const MAX_SCHEMA_DEPTH: usize = 32;

/// A key pattern: segments separated by `/`; `*` matches any text within a segment (`raw_*`),
/// `?` one character, and a `**` segment any number of segments, none included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    AnyDepth,
    Glob(Vec<char>),
}

impl Pattern {
    /// Parses a pattern, refusing what could never match a key.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a pattern cannot be empty".into());
        }
        if let Some(bad) = text.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '*' | '?'))
        }) {
            return Err(format!(
                "pattern {text:?}: {bad:?} is not allowed (keys use A-Z a-z 0-9 . _ - /, \
                 patterns also * ? and **)"
            ));
        }
        let mut segments = Vec::new();
        for part in text.split('/') {
            if part.is_empty() {
                return Err(format!(
                    "pattern {text:?} has an empty segment (a leading, trailing or double /)"
                ));
            }
            if part == "**" {
                if segments.last() != Some(&Segment::AnyDepth) {
                    segments.push(Segment::AnyDepth);
                }
            } else if part.contains("**") {
                return Err(format!(
                    "pattern {text:?}: ** must be a whole segment, as in tables/**/orders"
                ));
            } else {
                segments.push(Segment::Glob(part.chars().collect()));
            }
        }
        Ok(Pattern {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `key` matches the pattern.
    pub fn matches(&self, key: &str) -> bool {
        let parts: Vec<&str> = key.split('/').collect();
        match_segments(&self.segments, &parts)
    }
}

fn match_segments(pattern: &[Segment], parts: &[&str]) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            (0..=parts.len()).any(|skip| match_segments(rest, &parts[skip..]))
        }
        Some((Segment::Glob(glob), rest)) => match parts.split_first() {
            Some((part, more)) => glob_matches(glob, part) && match_segments(rest, more),
            None => false,
        },
    }
}

/// `*` and `?` within one segment, by the usual backtracking over the last `*`.
fn glob_matches(glob: &[char], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some('*') => {
                star = Some((g, t));
                g += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some((star_g, star_t)) => {
                    g = star_g + 1;
                    t = star_t + 1;
                    star = Some((star_g, star_t + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

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
    /// Relative to the set's directory.
    pub environments_dir: String,
    /// Settings this sbctl does not know, named for a warning.
    pub unknown: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rules: Vec::new(),
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
    let file = path.display().to_string();
    let document = source::read_document(&path).map_err(|p| vec![p])?;
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

/// A compiled schema and the document it came from (for sensitive fields).
pub struct Schema {
    /// The schema file, as messages name it.
    pub file: String,
    pub document: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("file", &self.file).finish()
    }
}

/// The schemas of a set with the patterns that select them.
#[derive(Debug, Default)]
pub struct Schemas {
    rules: Vec<(Pattern, usize)>,
    schemas: Vec<Schema>,
}

impl Schemas {
    /// Reads and compiles the schema of every rule, relative to `dir`; a schema named by
    /// several rules is compiled once.
    pub fn compile(dir: &Path, config: &Config) -> Result<Self, Vec<Problem>> {
        let mut schemas = Schemas::default();
        let mut by_path: HashMap<String, usize> = HashMap::new();
        let mut problems = Vec::new();
        let config_file = dir.join(CONFIG_FILE).display().to_string();
        for rule in &config.rules {
            let relative = relative_inside(&rule.schema).unwrap_or_default();
            if let Some(&index) = by_path.get(&relative) {
                schemas.rules.push((rule.pattern.clone(), index));
                continue;
            }
            let path = dir.join(&relative);
            if !path.is_file() {
                problems.push(Problem::Config {
                    file: config_file.clone(),
                    reason: format!(
                        "the schema {} of pattern {:?} does not exist",
                        path.display(),
                        rule.pattern.as_str()
                    ),
                });
                continue;
            }
            let file = path.display().to_string();
            let document = match source::read_document(&path) {
                Ok(document) => document,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            match compile_schema(&file, document) {
                Ok(schema) => {
                    by_path.insert(relative, schemas.schemas.len());
                    schemas
                        .rules
                        .push((rule.pattern.clone(), schemas.schemas.len()));
                    schemas.schemas.push(schema);
                }
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            Ok(schemas)
        } else {
            Err(problems)
        }
    }

    /// Whether there is any schema at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The schemas whose patterns match `key`, each once, in the order of the rules.
    pub fn for_key(&self, key: &str) -> Vec<&Schema> {
        let mut seen = Vec::new();
        for (pattern, index) in &self.rules {
            if pattern.matches(key) && !seen.contains(index) {
                seen.push(*index);
            }
        }
        seen.into_iter().map(|i| &self.schemas[i]).collect()
    }

    /// A cursor at the root of the item `key`, over every schema that applies to it.
    pub fn cursor(&self, key: &str) -> Cursor<'_> {
        let documents: Vec<&Value> = self.for_key(key).iter().map(|s| &s.document).collect();
        Cursor::new(&documents)
    }

    /// Checks every item against the schemas of its key: one problem per violation, naming
    /// the item's file and the JSON path of the violation. Values of sensitive fields are not
    /// quoted.
    pub fn validate(&self, items: &[SourceItem]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for item in items {
            let schemas = self.for_key(&item.key);
            let several = schemas.len() > 1;
            let cursor = self.cursor(&item.key);
            for schema in schemas {
                for error in schema.validator.iter_errors(&item.value) {
                    let path = error.instance_path().as_str().to_string();
                    let mut message = if touches_sensitive(&item.value, &cursor, &path) {
                        error.masked_with("the value").to_string()
                    } else {
                        error.to_string()
                    };
                    message = shorten(&message, MAX_MESSAGE_CHARS);
                    if several {
                        message.push_str(&format!(" (schema {})", schema.file));
                    }
                    problems.push(Problem::At {
                        file: item.location(),
                        path,
                        message,
                    });
                }
            }
        }
        problems
    }
}

/// Compiles one schema document, or names its file with what is wrong.
pub fn compile_schema(file: &str, document: Value) -> Result<Schema, Problem> {
    match jsonschema::validator_for(&document) {
        Ok(validator) => Ok(Schema {
            file: file.to_string(),
            document,
            validator,
        }),
        Err(e) => Err(Problem::Config {
            file: file.to_string(),
            reason: format!(
                "not a valid JSON Schema: {}",
                shorten(&e.to_string(), MAX_MESSAGE_CHARS)
            ),
        }),
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// A place in an item, seen through its schemas: the subschemas that apply there. Following
/// a key or an index uses `properties`, `additionalProperties`, `prefixItems` and `items`, and
/// looks through `$ref` (within the schema), `allOf`, `anyOf`, `oneOf`, `then` and `else`.
/// A place is sensitive when a subschema that applies there, or above it, says
/// `"x-switchboard-sensitive": true`. (`patternProperties` are not followed.)
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    /// (schema document, subschema) pairs, expanded.
    nodes: Vec<(&'a Value, &'a Value)>,
    sensitive: bool,
}

impl<'a> Cursor<'a> {
    /// A cursor at the root of the given schema documents.
    pub fn new(documents: &[&'a Value]) -> Self {
        let mut cursor = Cursor {
            nodes: Vec::new(),
            sensitive: false,
        };
        for document in documents {
            cursor.add(document, document, 0);
        }
        cursor
    }

    /// A cursor with no schema: nothing is sensitive.
    pub fn none() -> Self {
        Cursor {
            nodes: Vec::new(),
            sensitive: false,
        }
    }

    fn add(&mut self, document: &'a Value, node: &'a Value, depth: usize) {
        if depth > MAX_SCHEMA_DEPTH
            || !node.is_object()
            || self.nodes.iter().any(|(_, seen)| std::ptr::eq(*seen, node))
        {
            return;
        }
        if node.get(SENSITIVE_KEYWORD) == Some(&Value::Bool(true)) {
            self.sensitive = true;
        }
        self.nodes.push((document, node));
        if let Some(target) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| document.pointer(pointer))
        {
            self.add(document, target, depth + 1);
        }
        for keyword in ["allOf", "anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = node.get(keyword) {
                for branch in branches {
                    self.add(document, branch, depth + 1);
                }
            }
        }
        for keyword in ["then", "else"] {
            if let Some(branch) = node.get(keyword) {
                self.add(document, branch, depth + 1);
            }
        }
    }

    /// Whether the value here is sensitive.
    pub fn is_sensitive(&self) -> bool {
        self.sensitive
    }

    /// Whether no schema says anything about this place or below.
    pub fn is_blind(&self) -> bool {
        self.nodes.is_empty() && !self.sensitive
    }

    fn child(&self, pick: impl Fn(&'a Value) -> Option<&'a Value>) -> Cursor<'a> {
        let mut next = Cursor {
            nodes: Vec::new(),
            sensitive: self.sensitive,
        };
        for (document, node) in &self.nodes {
            if let Some(sub) = pick(node) {
                next.add(document, sub, 0);
            }
        }
        next
    }

    /// The cursor at the member `key` of an object here.
    pub fn key(&self, key: &str) -> Cursor<'a> {
        self.child(|node| {
            node.get("properties")
                .and_then(|p| p.get(key))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))
        })
    }

    /// The cursor at element `index` of an array here.
    pub fn index(&self, index: usize) -> Cursor<'a> {
        self.child(|node| {
            if let Some(tuple) = node.get("prefixItems").and_then(Value::as_array) {
                if let Some(sub) = tuple.get(index) {
                    return Some(sub);
                }
                return node.get("items").filter(|i| i.is_object());
            }
            match node.get("items") {
                Some(Value::Array(tuple)) => tuple
                    .get(index)
                    .or_else(|| node.get("additionalItems").filter(|a| a.is_object())),
                Some(items) if items.is_object() => Some(items),
                _ => None,
            }
        })
    }
}

/// `value` with every sensitive part, as `cursor` sees them, replaced by `"<redacted>"`.
pub fn redact(value: &Value, cursor: &Cursor<'_>) -> Value {
    if cursor.is_sensitive() {
        return Value::String(REDACTED.into());
    }
    if cursor.is_blind() {
        return value.clone();
    }
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), redact(v, &cursor.key(k))))
                .collect(),
        ),
        Value::Array(elements) => Value::Array(
            elements
                .iter()
                .enumerate()
                .map(|(i, v)| redact(v, &cursor.index(i)))
                .collect(),
        ),
        scalar => scalar.clone(),
    }
}

/// Whether the value at JSON pointer `pointer` of `item` is sensitive or holds a sensitive part.
pub fn touches_sensitive(item: &Value, cursor: &Cursor<'_>, pointer: &str) -> bool {
    let mut value = item;
    let mut cursor = cursor.clone();
    if !pointer.is_empty() {
        for raw in pointer.trim_start_matches('/').split('/') {
            if cursor.is_sensitive() {
                return true;
            }
            let token = raw.replace("~1", "/").replace("~0", "~");
            match value {
                Value::Array(elements) => {
                    let Some((i, element)) = token
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| elements.get(i).map(|e| (i, e)))
                    else {
                        break;
                    };
                    cursor = cursor.index(i);
                    value = element;
                }
                Value::Object(map) => {
                    cursor = cursor.key(&token);
                    match map.get(&token) {
                        Some(member) => value = member,
                        None => break,
                    }
                }
                _ => break,
            }
        }
    }
    cursor.is_sensitive() || redact(value, &cursor) != *value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_match_segments() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "tables/**",
                &["tables/a", "tables/sales/orders", "tables"],
                &["tablesx/a", "owners/a", "x/tables/a"],
            ),
            (
                "tables/*",
                &["tables/a"],
                &["tables/sales/orders", "tables", "owners/a"],
            ),
            (
                "tables/*/raw_*",
                &["tables/sales/raw_orders", "tables/hr/raw_"],
                &[
                    "tables/sales/stg_orders",
                    "tables/raw_x",
                    "tables/a/b/raw_x",
                ],
            ),
            (
                "**/orders",
                &["orders", "tables/orders", "tables/sales/orders"],
                &["tables/sales/orders2", "orders/x"],
            ),
            (
                "a/**/b/**/c",
                &["a/b/c", "a/x/b/y/z/c", "a/b/b/c"],
                &["a/c", "a/b/x"],
            ),
            (
                "schema_version",
                &["schema_version"],
                &["schema_versions", "x/schema_version"],
            ),
            ("t?b", &["tab", "tbb"], &["tb", "taab"]),
            ("*", &["a", "schema_version"], &["a/b"]),
            ("**", &["a", "a/b/c"], &[]),
            ("*a*b*", &["ab", "xaxbx", "aab"], &["ba", "a"]),
        ];
        for (text, yes, no) in cases {
            let pattern = Pattern::parse(text).expect(text);
            for key in *yes {
                assert!(pattern.matches(key), "{text} should match {key}");
            }
            for key in *no {
                assert!(!pattern.matches(key), "{text} should not match {key}");
            }
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for text in [
            "",
            "/tables",
            "tables/",
            "a//b",
            "a**",
            "a/**b",
            "a b",
            "tables/[ab]",
        ] {
            assert!(Pattern::parse(text).is_err(), "{text:?}");
        }
    }

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
            let schema = compile_schema(file, document.clone()).expect("compiles");
            schemas.rules.push((
                Pattern::parse(pattern).expect("pattern"),
                schemas.schemas.len(),
            ));
            schemas.schemas.push(schema);
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
        let problems = schemas.validate(&items);
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

        let whole = schemas.validate(&[item("tables/x", json!([1]))]);
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
        let problems =
            schemas.validate(&[item("tables/sales/o", json!({"name": "o", "columns": []}))]);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(
            text[0].contains("\"owner\"") && text[0].ends_with("(schema schemas/sales.json)"),
            "{text:?}"
        );
    }

    #[test]
    fn a_schema_that_does_not_compile_names_its_file() {
        let problem =
            compile_schema("schemas/bad.json", json!({"type": "no-such-type"})).expect_err("bad");
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
        let schemas = Schemas::compile(dir.path(), &config("./schemas/table.json")).expect("ok");
        assert_eq!(schemas.for_key("tables/a").len(), 1);
        assert!(schemas.for_key("owners/a").is_empty());

        let missing = Schemas::compile(dir.path(), &config("schemas/nope.json")).expect_err("no");
        let text = missing[0].to_string();
        assert!(
            text.contains("switchboard.yaml")
                && text.contains("nope.json")
                && text.contains("does not exist"),
            "{text}"
        );
        let broken = Schemas::compile(dir.path(), &config("schemas/broken.yaml")).expect_err("bad");
        assert!(
            broken[0].to_string().contains("broken.yaml"),
            "{}",
            broken[0]
        );
    }

    #[test]
    fn sensitive_fields_are_redacted_and_not_quoted_in_violations() {
        let schema = table_schema();
        let cursor = Cursor::new(&[&schema]);
        let value =
            json!({"name": "t", "columns": [], "contact": {"phone": "+1 555 0100", "team": "x"}});
        assert_eq!(
            redact(&value, &cursor),
            json!({"name": "t", "columns": [], "contact": {"phone": "<redacted>", "team": "x"}})
        );
        assert!(cursor.key("contact").key("phone").is_sensitive());
        assert!(!cursor.key("contact").is_sensitive());
        assert!(touches_sensitive(&value, &cursor, "/contact"));
        assert!(touches_sensitive(&value, &cursor, "/contact/phone"));
        assert!(!touches_sensitive(&value, &cursor, "/name"));

        let schemas = schemas_with(&[("tables/**", "schemas/table.json", schema.clone())]);
        let bad = item(
            "tables/t",
            json!({"name": "t", "columns": [], "contact": {"phone": "555-SECRET"}}),
        );
        let problems = schemas.validate(&[bad]);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(
            text[0].starts_with("set/tables/t.yaml: /contact/phone: "),
            "{text:?}"
        );
        assert!(!text[0].contains("SECRET"), "{text:?}");
    }

    #[test]
    fn sensitivity_follows_refs_combinators_and_arrays() {
        let schema = json!({
            "$defs": {"secret": {"type": "string", "x-switchboard-sensitive": true}},
            "properties": {
                "a": {"$ref": "#/$defs/secret"},
                "list": {"items": {"properties": {"token": {"$ref": "#/$defs/secret"}}}},
                "tuple": {"prefixItems": [{}, {"x-switchboard-sensitive": true}]},
                "either": {"anyOf": [{"type": "null"}, {"properties": {"key": {"x-switchboard-sensitive": true}}}]},
                "whole": {"x-switchboard-sensitive": true}
            },
            "additionalProperties": {"properties": {"pin": {"x-switchboard-sensitive": true}}}
        });
        let cursor = Cursor::new(&[&schema]);
        let value = json!({
            "a": "s1",
            "list": [{"token": "s2", "name": "n"}, {"token": "s3"}],
            "tuple": ["open", "s4"],
            "either": {"key": "s5", "other": 1},
            "whole": {"deep": ["s6"]},
            "extra": {"pin": "s7", "x": 2}
        });
        assert_eq!(
            redact(&value, &cursor),
            json!({
                "a": "<redacted>",
                "list": [{"token": "<redacted>", "name": "n"}, {"token": "<redacted>"}],
                "tuple": ["open", "<redacted>"],
                "either": {"key": "<redacted>", "other": 1},
                "whole": "<redacted>",
                "extra": {"pin": "<redacted>", "x": 2}
            })
        );
        // A schema that refers to itself does not loop.
        let looping = json!({"$ref": "#", "properties": {"a": {"$ref": "#"}}});
        let cursor = Cursor::new(&[&looping]);
        assert_eq!(
            redact(&json!({"a": {"a": 1}}), &cursor),
            json!({"a": {"a": 1}})
        );
        assert!(Cursor::none().is_blind());
    }
}

//! JSON Schemas by key pattern: which schema applies to which item, the violations of an item,
//! and which of its fields are sensitive. The coordinator checks every item of a set at seal
//! with this code, and sbctl previews the same checks in `plan` and `stage`.
//!
//! - A pattern has segments separated by `/`; `*` is any text within one segment, `?` one
//!   character, and a `**` segment any number of segments.
//! - Items under no pattern are not checked; an item under several is checked against each.
//! - A violation names the item's JSON path. Schemas are self-contained: `$ref` works within a
//!   schema (`#/$defs/...`); nothing is fetched from files or the network.
//! - A property whose schema has `"x-switchboard-sensitive": true` is sensitive: plans show its
//!   values, and everything under it, as `"<redacted>"`, and violation messages do not quote
//!   it. [`Cursor`] follows a schema down an item to tell.

use serde_json::Value;

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
    /// Adds a compiled schema; rules refer to it by the index returned.
    pub fn add_schema(&mut self, schema: Schema) -> usize {
        self.schemas.push(schema);
        self.schemas.len() - 1
    }

    /// Adds a rule: items whose keys match `pattern` are checked against schema `index`.
    pub fn add_rule(&mut self, pattern: Pattern, index: usize) {
        self.rules.push((pattern, index));
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

    /// Checks one item against the schemas of its key: one violation per problem, with the
    /// JSON path. Values of sensitive fields are not quoted.
    pub fn violations(&self, key: &str, value: &Value) -> Vec<Violation> {
        let schemas = self.for_key(key);
        if schemas.is_empty() {
            return Vec::new();
        }
        // Most items are valid: the validator's quick yes/no comes first, and the errors (with
        // the walk of the schemas for sensitive fields) only for an item that fails.
        if schemas
            .iter()
            .all(|schema| schema.validator.is_valid(value))
        {
            return Vec::new();
        }
        let several = schemas.len() > 1;
        let cursor = self.cursor(key);
        let mut violations = Vec::new();
        for schema in schemas {
            for error in schema.validator.iter_errors(value) {
                let path = error.instance_path().as_str().to_string();
                let mut message = if touches_sensitive(value, &cursor, &path) {
                    error.masked_with("the value").to_string()
                } else {
                    error.to_string()
                };
                message = shorten(&message, MAX_MESSAGE_CHARS);
                if several {
                    message.push_str(&format!(" (schema {})", schema.file));
                }
                violations.push(Violation { path, message });
            }
        }
        violations
    }
}

/// Compiles the schemas that `rules` name (a pattern and a schema's name each), every document
/// once, taking the documents from `documents` by name. `file_of` gives the name that messages
/// show for a schema. Every schema that does not compile is reported, and so is a name without
/// a document.
pub fn compile_rules<'a>(
    rules: impl IntoIterator<Item = (Pattern, &'a str)>,
    documents: &std::collections::BTreeMap<String, Value>,
    file_of: impl Fn(&str) -> String,
) -> Result<Schemas, Vec<SchemaError>> {
    let mut schemas = Schemas::default();
    let mut index_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut errors = Vec::new();
    for (pattern, name) in rules {
        if let Some(&index) = index_of.get(name) {
            schemas.add_rule(pattern, index);
            continue;
        }
        let Some(document) = documents.get(name) else {
            errors.push(SchemaError {
                file: file_of(name),
                reason: format!("no schema document for pattern {:?}", pattern.as_str()),
            });
            continue;
        };
        match compile_schema(&file_of(name), document.clone()) {
            Ok(schema) => {
                let index = schemas.add_schema(schema);
                index_of.insert(name, index);
                schemas.add_rule(pattern, index);
            }
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(schemas)
    } else {
        Err(errors)
    }
}

/// A schema that does not compile, named by its file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct SchemaError {
    pub file: String,
    pub reason: String,
}

/// One problem of an item against a schema.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    /// JSON pointer into the item; empty for the whole item.
    pub path: String,
    pub message: String,
}

/// Compiles one schema document, or names its file with what is wrong.
pub fn compile_schema(file: &str, document: Value) -> Result<Schema, SchemaError> {
    match jsonschema::validator_for(&document) {
        Ok(validator) => Ok(Schema {
            file: file.to_string(),
            document,
            validator,
        }),
        Err(e) => Err(SchemaError {
            file: file.to_string(),
            reason: format!(
                "not a valid JSON Schema: {}",
                shorten(&e.to_string(), MAX_MESSAGE_CHARS)
            ),
        }),
    }
}

pub fn shorten(text: &str, max_chars: usize) -> String {
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

    fn schemas_with(documents: &[(&str, &str, Value)]) -> Schemas {
        let mut schemas = Schemas::default();
        for (pattern, file, document) in documents {
            let schema = compile_schema(file, document.clone()).expect("compiles");
            let index = schemas.add_schema(schema);
            schemas.add_rule(Pattern::parse(pattern).expect("pattern"), index);
        }
        schemas
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
        let violations = schemas.violations(
            "tables/t",
            &json!({"name": "t", "columns": [], "contact": {"phone": "555-SECRET"}}),
        );
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].path, "/contact/phone");
        assert!(!violations[0].message.contains("SECRET"), "{violations:?}");
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

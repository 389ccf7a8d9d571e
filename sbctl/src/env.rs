//! Environments: `plan` and `stage --env NAME` substitute `${var}` placeholders in the items
//! from `environments/NAME.yaml` (the directory is `environments_dir` of `switchboard.yaml`).
//!
//! - An environment file is a map from variable name to a scalar (string, number or boolean).
//!   Names are `A-Z a-z 0-9 _ . -`, starting with a letter or `_`.
//! - Placeholders are replaced inside string values only, anywhere in the string
//!   (`"jdbc:${db_host}:5432"`), never in map keys, numbers or booleans. The result is always a
//!   string: a number substituted into `"${replicas}"` gives `"3"`.
//! - `$${` is a literal `${`. A `${` that does not open a valid placeholder (`${}`, `${a b}`,
//!   `${x` without its `}`) is an error, so that a typo is not released as text.
//! - A placeholder whose variable the file does not define is an error naming the item's file,
//!   the JSON path of the string and the variable.
//! - A substituted value is not scanned again.
//!
//! Without `--env` nothing is substituted: items are released as written, and the command warns
//! on stderr when they hold placeholders.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::source::{self, Problem, SourceItem};

/// Variables from one environment file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    /// The file, as messages name it.
    pub file: String,
    pub vars: BTreeMap<String, String>,
}

/// Why an environment cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum EnvError {
    /// The name given to `--env` or its file is not there: a usage error.
    Usage(String),
    /// The file exists but is not a valid environment.
    Invalid(Vec<Problem>),
}

/// Whether `name` may name a variable.
pub fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The file of environment `name` under `dir`: `dir/NAME.yaml`. A name that could leave the
/// directory, or is empty, is a usage error.
pub fn env_file(dir: &Path, name: &str) -> Result<PathBuf, EnvError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(EnvError::Usage(format!(
            "--env {name:?}: an environment name uses A-Z a-z 0-9 _ . - and does not start with \
             a dot"
        )));
    }
    Ok(dir.join(format!("{name}.yaml")))
}

/// Reads environment `name` from `dir`. The file must lead inside `root`, the set's directory
/// (for a single-file set, the directory holding it), with symbolic links resolved.
pub fn load(root: &Path, dir: &Path, name: &str) -> Result<Environment, EnvError> {
    let path = env_file(dir, name)?;
    if !path.is_file() {
        return Err(EnvError::Usage(format!(
            "--env {name}: {} does not exist",
            crate::escape::path(&path)
        )));
    }
    let file = crate::escape::path(&path);
    let document = source::read_document(root, &path).map_err(|p| EnvError::Invalid(vec![p]))?;
    parse(&file, &document).map_err(EnvError::Invalid)
}

/// An environment from its parsed file: a map from variable to scalar. Every problem is named.
pub fn parse(file: &str, document: &Value) -> Result<Environment, Vec<Problem>> {
    let problem = |reason: String| Problem::Config {
        file: file.to_string(),
        reason,
    };
    let map = match document {
        Value::Object(map) => map,
        // An empty file defines nothing.
        Value::Null => return Ok(Environment::new(file)),
        _ => {
            return Err(vec![problem(
                "an environment is a map from variable name to value".into(),
            )]);
        }
    };
    let mut vars = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, value) in map {
        if !valid_var_name(name) {
            problems.push(problem(format!(
                "{name:?} is not a variable name (A-Z a-z 0-9 _ . -, starting with a letter or _)"
            )));
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => {
                problems.push(problem(format!(
                    "{name} has no value; give it a string, a number or a boolean"
                )));
                continue;
            }
            Value::Array(_) | Value::Object(_) => {
                problems.push(problem(format!(
                    "{name} is a list or a map; a variable holds a string, a number or a boolean"
                )));
                continue;
            }
        };
        vars.insert(name.clone(), text);
    }
    if problems.is_empty() {
        Ok(Environment {
            file: file.to_string(),
            vars,
        })
    } else {
        Err(problems)
    }
}

impl Environment {
    fn new(file: &str) -> Self {
        Environment {
            file: file.to_string(),
            vars: BTreeMap::new(),
        }
    }
}

/// What is wrong with one string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// `${name}` with no such variable.
    Missing(String),
    /// `${` that does not open a valid placeholder; holds the text from `${` on (shortened).
    Malformed(String),
}

/// One string with its placeholders replaced from `vars`, or every problem in it.
pub fn substitute_str(
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, Vec<Unresolved>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            match placeholder(after) {
                Some((name, after_close)) => {
                    match vars.get(name) {
                        Some(value) => out.push_str(value),
                        None => problems.push(Unresolved::Missing(name.to_string())),
                    }
                    rest = after_close;
                }
                None => {
                    problems.push(Unresolved::Malformed(shorten(tail, 24)));
                    out.push_str("${");
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The variable name of a placeholder whose `${` came just before `text`, and the text after
/// its `}`; `None` when it is not a valid placeholder.
fn placeholder(text: &str) -> Option<(&str, &str)> {
    let close = text.find('}')?;
    let name = &text[..close];
    valid_var_name(name).then(|| (name, &text[close + 1..]))
}

/// The variables that `${...}` placeholders in `text` name (escaped ones, `$${`, excepted).
pub fn placeholders_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            if let Some((name, after_close)) = placeholder(after) {
                names.push(name.to_string());
                rest = after_close;
            } else {
                rest = after;
            }
        } else {
            rest = &tail[1..];
        }
    }
    names
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Replaces the placeholders in every string of every item, collecting a problem for each
/// unresolved or malformed one, named by the item's file and JSON path.
pub fn substitute_items(items: &mut [SourceItem], env: &Environment) -> Vec<Problem> {
    let mut problems = Vec::new();
    for item in items.iter_mut() {
        let location = item.location();
        let mut found = Vec::new();
        substitute_value(&mut item.value, &env.vars, &mut String::new(), &mut found);
        for (path, unresolved) in found {
            let message = match unresolved {
                Unresolved::Missing(name) => format!(
                    "unresolved placeholder ${{{name}}}: {} does not define {name}",
                    env.file
                ),
                Unresolved::Malformed(text) => format!(
                    "malformed placeholder {text:?}: write ${{name}} with a name of A-Z a-z 0-9 \
                     _ . -, or $${{ for a literal ${{"
                ),
            };
            problems.push(Problem::At {
                file: location.clone(),
                path,
                message,
            });
        }
    }
    problems
}

fn substitute_value(
    value: &mut Value,
    vars: &BTreeMap<String, String>,
    path: &mut String,
    found: &mut Vec<(String, Unresolved)>,
) {
    match value {
        Value::String(text) => match substitute_str(text, vars) {
            Ok(replaced) => *text = replaced,
            Err(problems) => found.extend(problems.into_iter().map(|p| (path.clone(), p))),
        },
        Value::Array(elements) => {
            for (i, element) in elements.iter_mut().enumerate() {
                let len = path.len();
                let _ = write!(path, "/{i}");
                substitute_value(element, vars, path, found);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, element) in map.iter_mut() {
                let len = path.len();
                path.push('/');
                push_pointer_token(path, key);
                substitute_value(element, vars, path, found);
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Appends `token` escaped as a JSON pointer token (`~` is `~0`, `/` is `~1`).
pub use switchboard_contract::push_pointer_token;

/// Where placeholders are, for the warning printed when `--env` is not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlaceholderScan {
    /// Items holding at least one placeholder.
    pub items: usize,
    /// The first one found: location, JSON path, variable.
    pub first: Option<(String, String, String)>,
}

/// Finds the placeholders in the items (in item order).
pub fn scan(items: &[SourceItem]) -> PlaceholderScan {
    let mut scan = PlaceholderScan::default();
    for item in items {
        let mut first = None;
        // Most sets have no placeholder at all: a plain walk finds that without building the
        // JSON pointer of every value on the way.
        if has_placeholder(&item.value) {
            find_first(&item.value, &mut String::new(), &mut first);
        }
        if let Some((path, name)) = first {
            scan.items += 1;
            if scan.first.is_none() {
                scan.first = Some((item.location(), path, name));
            }
        }
    }
    scan
}

fn has_placeholder(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains("${") && !placeholders_in(text).is_empty(),
        Value::Array(elements) => elements.iter().any(has_placeholder),
        Value::Object(map) => map.values().any(has_placeholder),
        _ => false,
    }
}

fn find_first(value: &Value, path: &mut String, first: &mut Option<(String, String)>) {
    if first.is_some() {
        return;
    }
    match value {
        Value::String(text) => {
            if let Some(name) = placeholders_in(text).into_iter().next() {
                *first = Some((path.clone(), name));
            }
        }
        Value::Array(elements) => {
            for (i, element) in elements.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "/{i}");
                find_first(element, path, first);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, element) in map {
                let len = path.len();
                path.push('/');
                push_pointer_token(path, key);
                find_first(element, path, first);
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The warning for placeholders left as written, if there are any.
pub fn warning(scan: &PlaceholderScan) -> Option<String> {
    let (location, path, name) = scan.first.as_ref()?;
    Some(format!(
        "warning: {} item(s) hold ${{...}} placeholders (the first: {location}: {}: ${{{name}}}) \
         and no --env was given: they are used as written",
        scan.items,
        source::pointer_or_root(path)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn placeholders_are_replaced_whole_or_embedded() {
        let v = vars(&[("host", "db.prod"), ("port", "5432"), ("a.b-c_1", "x")]);
        assert_eq!(substitute_str("${host}", &v), Ok("db.prod".into()));
        assert_eq!(
            substitute_str("jdbc://${host}:${port}/app", &v),
            Ok("jdbc://db.prod:5432/app".into())
        );
        assert_eq!(substitute_str("${a.b-c_1}${a.b-c_1}", &v), Ok("xx".into()));
        assert_eq!(
            substitute_str("no placeholders $5 $", &v),
            Ok("no placeholders $5 $".into())
        );
        assert_eq!(substitute_str("", &v), Ok(String::new()));
        assert_eq!(substitute_str("€${host}€", &v), Ok("€db.prod€".into()));
    }

    #[test]
    fn a_substituted_value_is_not_scanned_again() {
        let v = vars(&[("a", "${b}"), ("b", "no")]);
        assert_eq!(substitute_str("${a}", &v), Ok("${b}".into()));
    }

    #[test]
    fn a_doubled_dollar_escapes_a_placeholder() {
        let v = vars(&[("host", "db")]);
        assert_eq!(substitute_str("$${host}", &v), Ok("${host}".into()));
        assert_eq!(
            substitute_str("$${host} ${host}", &v),
            Ok("${host} db".into())
        );
        assert_eq!(substitute_str("$${missing}", &v), Ok("${missing}".into()));
        assert!(placeholders_in("$${host}").is_empty());
        assert_eq!(placeholders_in("$${a} ${b} ${c}"), ["b", "c"]);
    }

    #[test]
    fn unresolved_and_malformed_placeholders_are_all_reported() {
        let v = vars(&[("host", "db")]);
        assert_eq!(
            substitute_str("${host} ${nope} ${also}", &v),
            Err(vec![
                Unresolved::Missing("nope".into()),
                Unresolved::Missing("also".into())
            ])
        );
        for text in ["${}", "${a b}", "${unclosed", "x ${9lives}"] {
            let problems = substitute_str(text, &v).expect_err(text);
            assert!(
                matches!(problems.as_slice(), [Unresolved::Malformed(_)]),
                "{text}: {problems:?}"
            );
        }
    }

    fn item(key: &str, value: Value) -> SourceItem {
        SourceItem {
            key: key.into(),
            file: format!("set/{key}.yaml"),
            in_set_file: false,
            value,
        }
    }

    #[test]
    fn every_string_of_every_item_is_substituted_and_problems_name_file_and_path() {
        let env = Environment {
            file: "set/environments/prod.yaml".into(),
            vars: vars(&[("lake", "s3://prod"), ("team", "data")]),
        };
        let mut items = vec![
            item(
                "tables/orders",
                json!({
                    "location": "${lake}/orders/",
                    "owner": "${team}",
                    "columns": [{"name": "id", "note": "${missing}"}],
                    "n": 3,
                    "${lake}": "keys are not substituted"
                }),
            ),
            item("plain", json!("${team}")),
        ];
        let problems = substitute_items(&mut items, &env);
        assert_eq!(
            problems,
            vec![Problem::At {
                file: "set/tables/orders.yaml".into(),
                path: "/columns/0/note".into(),
                message: "unresolved placeholder ${missing}: set/environments/prod.yaml does \
                          not define missing"
                    .into()
            }]
        );
        assert_eq!(
            problems[0].to_string(),
            "set/tables/orders.yaml: /columns/0/note: unresolved placeholder ${missing}: \
             set/environments/prod.yaml does not define missing"
        );
        assert_eq!(items[0].value["location"], "s3://prod/orders/");
        assert_eq!(items[0].value["owner"], "data");
        assert_eq!(items[0].value["n"], 3);
        assert_eq!(items[0].value["${lake}"], "keys are not substituted");
        assert_eq!(items[1].value, json!("data"));
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        let env = Environment::new("e.yaml");
        let mut items = vec![item("k", json!({"a/b": {"c~d": ["${x}"]}}))];
        let problems = substitute_items(&mut items, &env);
        match &problems[..] {
            [Problem::At { path, .. }] => assert_eq!(path, "/a~1b/c~0d/0"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn environment_files_hold_scalars() {
        let env = parse(
            "e.yaml",
            &json!({"host": "db", "port": 5432, "ratio": 0.5, "on": true}),
        )
        .expect("valid");
        assert_eq!(
            env.vars,
            vars(&[
                ("host", "db"),
                ("port", "5432"),
                ("ratio", "0.5"),
                ("on", "true")
            ])
        );
        assert!(
            parse("e.yaml", &Value::Null)
                .expect("empty")
                .vars
                .is_empty()
        );
        let problems = parse(
            "e.yaml",
            &json!({"list": [1], "map": {}, "none": null, "bad name": "x", "ok": "y"}),
        )
        .expect_err("invalid");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems
                .iter()
                .all(|p| p.to_string().starts_with("e.yaml: "))
        );
        assert!(parse("e.yaml", &json!([1, 2])).is_err());
    }

    #[test]
    fn a_missing_environment_file_is_a_usage_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        match load(dir.path(), dir.path(), "prod") {
            Err(EnvError::Usage(message)) => {
                assert!(message.contains("prod.yaml"), "{message}");
                assert!(message.contains("does not exist"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        for bad in ["", "../prod", "a/b", ".hidden"] {
            assert!(
                matches!(load(dir.path(), dir.path(), bad), Err(EnvError::Usage(_))),
                "{bad:?}"
            );
        }
        std::fs::write(dir.path().join("prod.yaml"), "host: db\nport: 5432\n").expect("write");
        let env = load(dir.path(), dir.path(), "prod").expect("loads");
        assert_eq!(env.vars, vars(&[("host", "db"), ("port", "5432")]));
        std::fs::write(dir.path().join("broken.yaml"), "host: [\n").expect("write");
        assert!(matches!(
            load(dir.path(), dir.path(), "broken"),
            Err(EnvError::Invalid(_))
        ));
    }

    #[test]
    fn the_scan_finds_placeholders_for_the_warning() {
        let items = vec![
            item("a", json!({"x": 1})),
            item("b", json!({"y": ["$${escaped}", "${first}"]})),
            item("c", json!("${second}")),
        ];
        let scan = scan(&items);
        assert_eq!(scan.items, 2);
        let text = warning(&scan).expect("a warning");
        assert!(
            text.contains("set/b.yaml: /y/1: ${first}") && text.contains("--env"),
            "{text}"
        );
        assert_eq!(warning(&super::scan(&items[..1])), None);
    }
}

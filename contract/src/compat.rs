//! Compatibility of a change: the field-level diff of an item between the active set and the
//! new one, and its class. Pure functions on `serde_json::Value`s.
//!
//! | change | kind | class |
//! |---|---|---|
//! | an item added | `item_added` | additive |
//! | an item removed | `item_removed` | destructive |
//! | a field added to an object | `added` | additive |
//! | a field removed from an object | `removed` | destructive |
//! | an element added to a list of objects or lists | `element_added` | additive |
//! | an element removed from a list of objects or lists | `element_removed` | destructive |
//! | a value added to a list of scalars | `value_added` | additive |
//! | a value removed from a list of scalars (the list is narrowed, as an enum would be) | `value_removed` | destructive |
//! | a value changed, same JSON type | `changed` | modifying |
//! | a value whose JSON type changed (string, number, boolean, null, list, object) | `type_changed` | destructive |
//! | the same elements in another order | `reordered` | modifying |
//!
//! Lists are compared in one of three ways. A list of scalars is compared as a set of values
//! (with repeats), so a value that is gone is reported as the list narrowing: this is how an
//! enum narrowing shows, since the schema the active set was validated with is not at hand.
//! A list of objects that all have a unique `name` (else `id`, else `key`) is matched by that
//! field, so inserting a column reports one added element, not a change of every column after
//! it. Any other list is aligned on equal elements (a longest common subsequence), and what
//! remains between them is paired by position.
//!
//! Paths are JSON pointers into the item. A removed element's index is its index in the active
//! version; every other index is in the new version. Values of sensitive fields (see
//! [`crate::schema`]) are `"<redacted>"` in `old` and `new`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::schema::{Cursor, REDACTED, redact};
use crate::{pointer_or_root, push_pointer_token};

/// The class of a change, from harmless to dangerous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Additive,
    Modifying,
    Destructive,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Additive => "additive",
            Class::Modifying => "modifying",
            Class::Destructive => "destructive",
        }
    }
}

/// What happened at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ItemAdded,
    ItemRemoved,
    Added,
    Removed,
    ElementAdded,
    ElementRemoved,
    ValueAdded,
    ValueRemoved,
    Changed,
    TypeChanged,
    Reordered,
}

impl Kind {
    /// The class of every change of this kind.
    pub fn class(self) -> Class {
        match self {
            Kind::ItemAdded | Kind::Added | Kind::ElementAdded | Kind::ValueAdded => {
                Class::Additive
            }
            Kind::Changed | Kind::Reordered => Class::Modifying,
            Kind::ItemRemoved
            | Kind::Removed
            | Kind::ElementRemoved
            | Kind::ValueRemoved
            | Kind::TypeChanged => Class::Destructive,
        }
    }
}

/// One change at one path of an item.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    /// JSON pointer into the item; empty for the whole item.
    pub path: String,
    pub kind: Kind,
    pub class: Class,
    /// The active set's value; absent for what was added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// The new set's value; absent for what was removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

impl Change {
    fn new(path: &str, kind: Kind, old: Option<Value>, new: Option<Value>) -> Self {
        Change {
            path: path.to_string(),
            kind,
            class: kind.class(),
            old,
            new,
        }
    }

    /// Why the change has its class, in a few words.
    pub fn why(&self) -> String {
        match self.kind {
            Kind::ItemAdded => "item added".into(),
            Kind::ItemRemoved => "item removed".into(),
            Kind::Added => "field added".into(),
            Kind::Removed => "field removed".into(),
            Kind::ElementAdded => "element added".into(),
            Kind::ElementRemoved => "element removed".into(),
            Kind::ValueAdded => "value added to a list".into(),
            Kind::ValueRemoved => "value removed from a list (narrowed)".into(),
            Kind::Changed => "value changed".into(),
            Kind::Reordered => "order changed".into(),
            Kind::TypeChanged => format!(
                "type changed from {} to {}",
                self.old.as_ref().map_or("?", type_name),
                self.new.as_ref().map_or("?", type_name)
            ),
        }
    }
}

/// Whether an item is added, changed or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemChange {
    Added,
    Changed,
    Removed,
}

/// The changes of one item and its class, the highest of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ItemPlan {
    pub key: String,
    pub change: ItemChange,
    pub class: Class,
    pub changes: Vec<Change>,
}

/// How many changes of each class a plan makes (an added or removed item counts once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    pub additive: u64,
    pub modifying: u64,
    pub destructive: u64,
}

impl ClassCounts {
    pub fn of(items: &[ItemPlan]) -> Self {
        let mut counts = ClassCounts::default();
        for change in items.iter().flat_map(|i| &i.changes) {
            match change.class {
                Class::Additive => counts.additive += 1,
                Class::Modifying => counts.modifying += 1,
                Class::Destructive => counts.destructive += 1,
            }
        }
        counts
    }
}

/// The plan of an item only the new set has.
pub fn item_added(key: &str) -> ItemPlan {
    ItemPlan {
        key: key.to_string(),
        change: ItemChange::Added,
        class: Class::Additive,
        changes: vec![Change::new("", Kind::ItemAdded, None, None)],
    }
}

/// The plan of an item only the active set has.
pub fn item_removed(key: &str) -> ItemPlan {
    ItemPlan {
        key: key.to_string(),
        change: ItemChange::Removed,
        class: Class::Destructive,
        changes: vec![Change::new("", Kind::ItemRemoved, None, None)],
    }
}

/// The plan of an item both sets have with different values; `cursor` tells its sensitive
/// fields.
pub fn item_changed(key: &str, old: &Value, new: &Value, cursor: &Cursor<'_>) -> ItemPlan {
    let mut changes = diff(old, new, cursor);
    if changes.is_empty() {
        // Equal values that were stored differently: call it a change of the whole item.
        changes.push(Change::new(
            "",
            Kind::Changed,
            Some(redact(old, cursor)),
            Some(redact(new, cursor)),
        ));
    }
    let class = changes
        .iter()
        .map(|c| c.class)
        .max()
        .unwrap_or(Class::Modifying);
    ItemPlan {
        key: key.to_string(),
        change: ItemChange::Changed,
        class,
        changes,
    }
}

/// Every change from `old` to `new`.
pub fn diff(old: &Value, new: &Value, cursor: &Cursor<'_>) -> Vec<Change> {
    let mut out = Vec::new();
    diff_at(old, new, &mut String::new(), cursor, &mut out);
    out
}

/// The JSON type of a value, as messages name it.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

fn join_key(path: &str, key: &str) -> String {
    let mut joined = path.to_string();
    joined.push('/');
    push_pointer_token(&mut joined, key);
    joined
}

fn join_index(path: &str, index: usize) -> String {
    format!("{path}/{index}")
}

fn diff_at(
    old: &Value,
    new: &Value,
    path: &mut String,
    cursor: &Cursor<'_>,
    out: &mut Vec<Change>,
) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let sub = cursor.key(key);
                match (a.get(key), b.get(key)) {
                    (Some(o), Some(n)) => {
                        let len = path.len();
                        path.push('/');
                        push_pointer_token(path, key);
                        diff_at(o, n, path, &sub, out);
                        path.truncate(len);
                    }
                    (Some(o), None) => out.push(Change::new(
                        &join_key(path, key),
                        Kind::Removed,
                        Some(redact(o, &sub)),
                        None,
                    )),
                    (None, Some(n)) => out.push(Change::new(
                        &join_key(path, key),
                        Kind::Added,
                        None,
                        Some(redact(n, &sub)),
                    )),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => diff_array(a, b, path, cursor, out),
        _ => {
            let kind = if type_name(old) == type_name(new) {
                Kind::Changed
            } else {
                Kind::TypeChanged
            };
            out.push(Change::new(
                path,
                kind,
                Some(redact(old, cursor)),
                Some(redact(new, cursor)),
            ));
        }
    }
}

fn diff_array(
    a: &[Value],
    b: &[Value],
    path: &mut String,
    cursor: &Cursor<'_>,
    out: &mut Vec<Change>,
) {
    if a.iter().chain(b).all(is_scalar) {
        diff_scalar_list(a, b, path, cursor, out);
    } else if let Some(field) = identity_field(a, b) {
        diff_by_identity(a, b, field, path, cursor, out);
    } else {
        diff_aligned(a, b, path, cursor, out);
    }
}

/// Scalars compared as a set with repeats; nothing added or removed means reordered.
fn diff_scalar_list(
    a: &[Value],
    b: &[Value],
    path: &str,
    cursor: &Cursor<'_>,
    out: &mut Vec<Change>,
) {
    let mut unmatched_new: HashMap<String, Vec<usize>> = HashMap::new();
    for (j, value) in b.iter().enumerate().rev() {
        unmatched_new.entry(value.to_string()).or_default().push(j);
    }
    let mut matched_new = vec![false; b.len()];
    let before = out.len();
    for (i, value) in a.iter().enumerate() {
        match unmatched_new.get_mut(&value.to_string()).and_then(Vec::pop) {
            Some(j) => matched_new[j] = true,
            None => out.push(Change::new(
                &join_index(path, i),
                Kind::ValueRemoved,
                Some(redact(value, &cursor.index(i))),
                None,
            )),
        }
    }
    for (j, value) in b.iter().enumerate() {
        if !matched_new[j] {
            out.push(Change::new(
                &join_index(path, j),
                Kind::ValueAdded,
                None,
                Some(redact(value, &cursor.index(j))),
            ));
        }
    }
    if out.len() == before {
        out.push(Change::new(
            path,
            Kind::Reordered,
            Some(redact(&Value::Array(a.to_vec()), cursor)),
            Some(redact(&Value::Array(b.to_vec()), cursor)),
        ));
    }
}

/// Fields that may identify the objects of a list, in order of preference.
const IDENTITY_FIELDS: [&str; 3] = ["name", "id", "key"];

/// The field that identifies the objects of both lists: every element an object with that
/// field a string or number, unique within each list.
fn identity_field(a: &[Value], b: &[Value]) -> Option<&'static str> {
    IDENTITY_FIELDS.into_iter().find(|field| {
        [a, b].iter().all(|list| {
            let mut seen = BTreeSet::new();
            list.iter().all(|element| {
                matches!(
                    element.get(field),
                    Some(id @ (Value::String(_) | Value::Number(_))) if seen.insert(id.to_string())
                )
            })
        })
    })
}

fn diff_by_identity(
    a: &[Value],
    b: &[Value],
    field: &str,
    path: &mut String,
    cursor: &Cursor<'_>,
    out: &mut Vec<Change>,
) {
    let id = |v: &Value| v.get(field).map(Value::to_string).unwrap_or_default();
    let old_by_id: HashMap<String, usize> = a.iter().enumerate().map(|(i, v)| (id(v), i)).collect();
    let new_ids: BTreeSet<String> = b.iter().map(id).collect();
    for (i, element) in a.iter().enumerate() {
        if !new_ids.contains(&id(element)) {
            out.push(Change::new(
                &join_index(path, i),
                Kind::ElementRemoved,
                Some(redact(element, &cursor.index(i))),
                None,
            ));
        }
    }
    let mut matched_order = Vec::new();
    for (j, element) in b.iter().enumerate() {
        let sub = cursor.index(j);
        match old_by_id.get(&id(element)) {
            Some(&i) => {
                matched_order.push(i);
                let len = path.len();
                let _ = write!(path, "/{j}");
                diff_at(&a[i], element, path, &sub, out);
                path.truncate(len);
            }
            None => out.push(Change::new(
                &join_index(path, j),
                Kind::ElementAdded,
                None,
                Some(redact(element, &sub)),
            )),
        }
    }
    if matched_order.windows(2).any(|w| w[0] > w[1]) {
        let ids = |list: &[Value]| -> Value {
            Value::Array(
                list.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let at = cursor.index(i).key(field);
                        match v.get(field) {
                            _ if at.is_sensitive() => Value::String(REDACTED.into()),
                            Some(value) => value.clone(),
                            None => Value::Null,
                        }
                    })
                    .collect(),
            )
        };
        out.push(Change::new(
            path,
            Kind::Reordered,
            Some(ids(a)),
            Some(ids(b)),
        ));
    }
}

/// Largest middle part (old elements times new elements) aligned by a longest common
/// subsequence; longer lists are paired by position.
const MAX_ALIGNMENT_CELLS: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Same,
    Delete(usize),
    Insert(usize),
}

/// Aligns `a` and `b` on equal elements.
fn align(a: &[Value], b: &[Value]) -> Vec<Step> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let mid_a = &a[prefix..a.len() - suffix];
    let mid_b = &b[prefix..b.len() - suffix];
    let mut steps = vec![Step::Same; prefix];
    if mid_a.len().saturating_mul(mid_b.len()) > MAX_ALIGNMENT_CELLS {
        steps.extend((0..mid_a.len()).map(|i| Step::Delete(prefix + i)));
        steps.extend((0..mid_b.len()).map(|j| Step::Insert(prefix + j)));
    } else {
        let (n, m) = (mid_a.len(), mid_b.len());
        // lcs[i][j]: the longest common subsequence of mid_a[i..] and mid_b[j..].
        let mut lcs = vec![0u32; (n + 1) * (m + 1)];
        let at = |i: usize, j: usize| i * (m + 1) + j;
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[at(i, j)] = if mid_a[i] == mid_b[j] {
                    lcs[at(i + 1, j + 1)] + 1
                } else {
                    lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && mid_a[i] == mid_b[j] {
                steps.push(Step::Same);
                i += 1;
                j += 1;
            } else if j < m && (i == n || lcs[at(i, j + 1)] >= lcs[at(i + 1, j)]) {
                steps.push(Step::Insert(prefix + j));
                j += 1;
            } else {
                steps.push(Step::Delete(prefix + i));
                i += 1;
            }
        }
    }
    steps.extend(std::iter::repeat_n(Step::Same, suffix));
    steps
}

fn diff_aligned(
    a: &[Value],
    b: &[Value],
    path: &mut String,
    cursor: &Cursor<'_>,
    out: &mut Vec<Change>,
) {
    let steps = align(a, b);
    let mut deleted = Vec::new();
    let mut inserted = Vec::new();
    let mut flush = |deleted: &mut Vec<usize>, inserted: &mut Vec<usize>, out: &mut Vec<Change>| {
        let paired = deleted.len().min(inserted.len());
        for (&i, &j) in deleted.iter().zip(inserted.iter()) {
            let len = path.len();
            let _ = write!(path, "/{j}");
            diff_at(&a[i], &b[j], path, &cursor.index(j), out);
            path.truncate(len);
        }
        for &i in &deleted[paired..] {
            out.push(Change::new(
                &join_index(path, i),
                Kind::ElementRemoved,
                Some(redact(&a[i], &cursor.index(i))),
                None,
            ));
        }
        for &j in &inserted[paired..] {
            out.push(Change::new(
                &join_index(path, j),
                Kind::ElementAdded,
                None,
                Some(redact(&b[j], &cursor.index(j))),
            ));
        }
        deleted.clear();
        inserted.clear();
    };
    for step in steps {
        match step {
            Step::Same => flush(&mut deleted, &mut inserted, out),
            Step::Delete(i) => deleted.push(i),
            Step::Insert(j) => inserted.push(j),
        }
    }
    flush(&mut deleted, &mut inserted, out);
}

/// Changes shown under one item before "... and N more".
pub const MAX_CHANGES_SHOWN: usize = 20;
/// Characters of a value shown before it is cut with "...".
const MAX_VALUE_CHARS: usize = 72;

/// A value as one short line of JSON. An object's `name`, `id` or `key` comes first, so that
/// a cut object still says which one it is.
pub fn short_value(value: &Value) -> String {
    let text = match value {
        Value::Object(map) if IDENTITY_FIELDS.iter().any(|f| map.contains_key(*f)) => {
            let first = IDENTITY_FIELDS.iter().filter_map(|f| map.get_key_value(*f));
            let rest = map
                .iter()
                .filter(|(k, _)| !IDENTITY_FIELDS.contains(&k.as_str()));
            let members: Vec<String> = first
                .chain(rest)
                .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        other => other.to_string(),
    };
    match text.char_indices().nth(MAX_VALUE_CHARS) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

/// Characters of context kept around the difference of two long strings.
const STRING_CONTEXT: usize = 24;

/// Two strings as JSON for a change line. When they are too long to show whole, only the part
/// that differs is shown, with some context: `"...reporting curency (USD)..."`.
pub fn string_change(old: &str, new: &str) -> (String, String) {
    let quoted = |s: &str| Value::String(s.to_string()).to_string();
    let (a, b): (Vec<char>, Vec<char>) = (old.chars().collect(), new.chars().collect());
    if a.len().max(b.len()) + 2 <= MAX_VALUE_CHARS {
        return (quoted(old), quoted(new));
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let room = a.len().min(b.len()) - prefix;
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
        .min(room);
    let start = prefix.saturating_sub(STRING_CONTEXT);
    let window = |chars: &[char]| {
        let end = (chars.len() - suffix + STRING_CONTEXT).min(chars.len());
        let text: String = chars[start..end].iter().collect();
        let inner = quoted(&text);
        let inner = &inner[1..inner.len() - 1];
        let inner = match inner.char_indices().nth(MAX_VALUE_CHARS) {
            Some((at, _)) => &inner[..at],
            None => inner,
        };
        let cut_end = end < chars.len() || inner.len() + 2 < quoted(&text).len();
        format!(
            "\"{}{inner}{}\"",
            if start > 0 { "..." } else { "" },
            if cut_end { "..." } else { "" }
        )
    };
    (window(&a), window(&b))
}

/// The line of one change under its item, without indentation:
/// `~ /columns/9/type: "int32" -> "int64" (modifying)`.
pub fn render_change(change: &Change) -> String {
    let path = pointer_or_root(&change.path);
    let (mark, body) = match (&change.old, &change.new) {
        (Some(old), Some(new)) if change.kind == Kind::Reordered => (
            '~',
            format!("{path}: order {} -> {}", short_value(old), short_value(new)),
        ),
        (Some(Value::String(old)), Some(Value::String(new))) => {
            let (old, new) = string_change(old, new);
            ('~', format!("{path}: {old} -> {new}"))
        }
        (Some(old), Some(new)) => (
            '~',
            format!("{path}: {} -> {}", short_value(old), short_value(new)),
        ),
        (None, Some(new)) => ('+', format!("{path}: {}", short_value(new))),
        (Some(old), None) => ('-', format!("{path}: {}", short_value(old))),
        (None, None) => match change.class {
            Class::Additive => ('+', path.to_string()),
            _ => ('-', path.to_string()),
        },
    };
    let class = match change.class {
        Class::Destructive => format!("destructive: {}", change.why()),
        other => other.as_str().to_string(),
    };
    format!("{mark} {body} ({class})")
}

/// The lines under a changed item, at most [`MAX_CHANGES_SHOWN`], each indented by `indent`.
pub fn render_item_changes(item: &ItemPlan, indent: &str, out: &mut String) {
    for change in item.changes.iter().take(MAX_CHANGES_SHOWN) {
        let _ = writeln!(out, "{indent}{}", render_change(change));
    }
    if item.changes.len() > MAX_CHANGES_SHOWN {
        let _ = writeln!(
            out,
            "{indent}... and {} more",
            item.changes.len() - MAX_CHANGES_SHOWN
        );
    }
}

/// The plan of a diff: every added, changed and removed item with its changes classified, in
/// the order added, changed, removed. `new_value` gives the new set's value of a key, and
/// `active_only` holds the active values of the changed and removed keys. This is the one
/// classification: sbctl's plan prints it and the coordinator's seal enforces it.
pub fn plan_items<'a>(
    diff: &crate::diff::Diff,
    new_value: impl Fn(&str) -> Option<&'a [u8]>,
    active_only: &crate::diff::ActiveOnlyItems,
    schemas: &crate::schema::Schemas,
) -> Result<Vec<ItemPlan>, String> {
    let mut items: Vec<ItemPlan> = Vec::new();
    items.extend(diff.added.iter().map(|key| item_added(key)));
    for key in &diff.changed {
        let old = active_only
            .get(key)
            .ok_or_else(|| format!("the active value of {key} is missing"))?;
        let old: Value = serde_json::from_slice(old)
            .map_err(|e| format!("the active item {key} is not JSON: {e}"))?;
        let new = new_value(key).ok_or_else(|| format!("the new value of {key} is missing"))?;
        let new: Value = serde_json::from_slice(new)
            .map_err(|e| format!("the new item {key} is not JSON: {e}"))?;
        let cursor = schemas.cursor(key);
        items.push(item_changed(key, &old, &new, &cursor));
    }
    items.extend(diff.removed.iter().map(|key| item_removed(key)));
    Ok(items)
}

/// `changes: 12 additive, 3 modifying, 2 destructive`
pub fn render_counts(counts: &ClassCounts) -> String {
    format!(
        "changes: {} additive, {} modifying, {} destructive",
        counts.additive, counts.modifying, counts.destructive
    )
}

/// Every destructive change as `KEY: why` or `KEY PATH: why`, in item order.
pub fn destructive_lines(items: &[ItemPlan]) -> Vec<String> {
    let mut lines = Vec::new();
    for item in items {
        for change in item
            .changes
            .iter()
            .filter(|c| c.class == Class::Destructive)
        {
            let what = match (&change.old, &change.new) {
                (Some(old), None) => format!("{}: {}", change.why(), short_value(old)),
                (Some(old), Some(new)) => format!(
                    "{}: {} -> {}",
                    change.why(),
                    short_value(old),
                    short_value(new)
                ),
                _ => change.why(),
            };
            if change.path.is_empty() {
                lines.push(format!("{}: {what}", item.key));
            } else {
                lines.push(format!("{} {}: {what}", item.key, change.path));
            }
        }
    }
    lines
}

/// Whether a plan may be staged: `Err` with the message of the refusal when it makes
/// destructive changes and they are not allowed. `review` is the command to see the plan.
pub fn check_destructive(
    items: &[ItemPlan],
    allow_destructive: bool,
    active_version: &str,
    review: &str,
) -> Result<usize, String> {
    let lines = destructive_lines(items);
    if lines.is_empty() || allow_destructive {
        return Ok(lines.len());
    }
    const SHOWN: usize = 10;
    let mut message = format!(
        "refused: this set makes {} destructive change(s) to the active version {active_version}:",
        lines.len()
    );
    for line in lines.iter().take(SHOWN) {
        message.push_str("\n  ");
        message.push_str(line);
    }
    if lines.len() > SHOWN {
        message.push_str(&format!("\n  and {} more", lines.len() - SHOWN));
    }
    message.push_str(&format!(
        "\nreview them with `{review}`, and stage with --allow-destructive if they are intended"
    ));
    Err(message)
}

#[cfg(test)]
mod tests;

//! Gates: preconditions that must hold before consumers move to a version (a canary step above
//! 0% or a flip). Their definitions live in the namespace policy; this module holds the types
//! and the pure part of evaluating them (reading a JSON pointer, comparing with the wanted
//! value), so that the coordinator only fetches what a gate looks at.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most gates one namespace may have.
pub const MAX_GATES: usize = 16;

/// One precondition, named so that a refusal can say which one blocked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub name: String,
    #[serde(flatten)]
    pub check: GateCheck,
}

/// What a gate looks at. Every kind may narrow the document it reads with a JSON pointer
/// (RFC 6901, `""` for the whole document) before comparing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GateCheck {
    /// A field of an item in the set consumers would move to.
    Item {
        key: String,
        #[serde(default)]
        pointer: String,
        op: GateOp,
        value: Value,
    },
    /// A key in etcd outside the switchboard's prefix, read as JSON when it parses as JSON and
    /// as a string otherwise; an absent key reads as `null`. The change's transaction compares
    /// the key's revision, so the key cannot change between the check and the change.
    Etcd {
        key: String,
        #[serde(default)]
        pointer: String,
        op: GateOp,
        value: Value,
    },
    /// An HTTP GET that must answer 2xx within the timeout and, when `op` is given, carry a
    /// JSON body whose field at `pointer` compares with `value`.
    Http {
        url: String,
        #[serde(default)]
        pointer: String,
        #[serde(default)]
        op: Option<GateOp>,
        #[serde(default)]
        value: Value,
    },
}

/// How the value seen compares with the wanted one. Ordering needs two numbers (a string
/// holding a number counts as that number); equality compares JSON values, with the same
/// allowance for numbers in strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateOp {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl GateOp {
    pub const ALL: [GateOp; 6] = [
        GateOp::Eq,
        GateOp::Ne,
        GateOp::Gt,
        GateOp::Ge,
        GateOp::Lt,
        GateOp::Le,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GateOp::Eq => "==",
            GateOp::Ne => "!=",
            GateOp::Gt => ">",
            GateOp::Ge => ">=",
            GateOp::Lt => "<",
            GateOp::Le => "<=",
        }
    }

    pub fn parse(text: &str) -> Option<GateOp> {
        GateOp::ALL.into_iter().find(|op| op.as_str() == text)
    }
}

impl std::fmt::Display for GateOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one gate: whether it holds, and what it saw, for the refusal message and
/// the audit record's evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateOutcome {
    pub name: String,
    pub passed: bool,
    /// What the gate read, as a short text ("\"migration in progress\"", "HTTP 503").
    pub saw: String,
    /// What it needed (">= 192", "a 2xx answer").
    pub wanted: String,
    /// Where it looked ("etcd key /apps/migration").
    #[serde(default)]
    pub target: String,
}

/// What `sbctl gate check` prints: every gate of a namespace evaluated against one version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    pub namespace: String,
    pub version: String,
    pub passed: bool,
    pub gates: Vec<GateOutcome>,
}

/// The gates that do not hold, in words: `gate a saw …, needs … (where); gate b …`. The
/// coordinator's refusal and `sbctl gate check` say it alike.
pub fn blocking(outcomes: &[GateOutcome]) -> String {
    outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| {
            format!(
                "gate {} saw {}, needs {} ({})",
                o.name, o.saw, o.wanted, o.target
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Gate {
    /// Checks a definition; the message names the gate and the problem. `switchboard_prefix`
    /// is the coordinator's etcd prefix, which an etcd gate may not look into.
    pub fn validate(&self, switchboard_prefix: &str) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "gate name {name:?} must be 1 to 64 of A-Z a-z 0-9 . _ -"
            ));
        }
        let pointer = match &self.check {
            GateCheck::Item { key, pointer, .. } => {
                crate::set::validate_key(key).map_err(|e| format!("gate {name}: {e}"))?;
                pointer
            }
            GateCheck::Etcd { key, pointer, .. } => {
                if key.is_empty() || key.len() > 1024 {
                    return Err(format!("gate {name}: the etcd key must be 1 to 1024 bytes"));
                }
                let inside = switchboard_prefix.trim_end_matches('/');
                if !inside.is_empty() && (key == inside || key.starts_with(&format!("{inside}/"))) {
                    return Err(format!(
                        "gate {name}: etcd key {key} is inside the switchboard's own prefix {inside}; a gate reads a key outside it"
                    ));
                }
                pointer
            }
            GateCheck::Http {
                url, pointer, op, ..
            } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048
                {
                    return Err(format!(
                        "gate {name}: url {url:?} must start with http:// or https://"
                    ));
                }
                if op.is_none() && !pointer.is_empty() {
                    return Err(format!(
                        "gate {name}: a pointer needs --op and --value to compare with"
                    ));
                }
                pointer
            }
        };
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(format!(
                "gate {name}: pointer {pointer:?} must be empty or start with / (RFC 6901)"
            ));
        }
        Ok(())
    }

    /// What the gate needs, in words: `">= 192"`, `"== \"done\""`, `"a 2xx answer"`.
    pub fn wanted(&self) -> String {
        match &self.check {
            GateCheck::Item { op, value, .. } | GateCheck::Etcd { op, value, .. } => {
                format!("{op} {value}")
            }
            GateCheck::Http {
                op: Some(op),
                value,
                ..
            } => format!("a 2xx answer with {op} {value}"),
            GateCheck::Http { op: None, .. } => "a 2xx answer".to_string(),
        }
    }

    /// Where the gate looks, in words: `item schema/version at /version`.
    pub fn target(&self) -> String {
        let at = |pointer: &str| {
            if pointer.is_empty() {
                String::new()
            } else {
                format!(" at {pointer}")
            }
        };
        match &self.check {
            GateCheck::Item { key, pointer, .. } => format!("item {key}{}", at(pointer)),
            GateCheck::Etcd { key, pointer, .. } => format!("etcd key {key}{}", at(pointer)),
            GateCheck::Http { url, pointer, .. } => format!("GET {url}{}", at(pointer)),
        }
    }
}

/// Validates a namespace's gates: each one, unique names, at most [`MAX_GATES`].
pub fn validate_gates(gates: &[Gate], switchboard_prefix: &str) -> Result<(), String> {
    if gates.len() > MAX_GATES {
        return Err(format!(
            "{} gates; a namespace may have at most {MAX_GATES}",
            gates.len()
        ));
    }
    let mut names = std::collections::HashSet::new();
    for gate in gates {
        gate.validate(switchboard_prefix)?;
        if !names.insert(gate.name.as_str()) {
            return Err(format!("two gates are named {}", gate.name));
        }
    }
    Ok(())
}

/// An etcd value as a gate reads it: JSON when it parses as JSON, else the text itself.
pub fn etcd_value(raw: Option<&[u8]>) -> Value {
    match raw {
        None => Value::Null,
        Some(bytes) => serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
    }
}

/// The part of `document` a pointer names; `None` when there is nothing there.
pub fn select<'a>(document: &'a Value, pointer: &str) -> Option<&'a Value> {
    document.pointer(pointer)
}

/// Whether `seen op wanted` holds. `None` for `seen` (nothing at the pointer) holds only for
/// `!=` of a non-null value and for `== null`.
pub fn compare(seen: Option<&Value>, op: GateOp, wanted: &Value) -> bool {
    let seen = seen.unwrap_or(&Value::Null);
    match op {
        GateOp::Eq => equal(seen, wanted),
        GateOp::Ne => !equal(seen, wanted),
        _ => match (number(seen), number(wanted)) {
            (Some(a), Some(b)) => match op {
                GateOp::Gt => a > b,
                GateOp::Ge => a >= b,
                GateOp::Lt => a < b,
                GateOp::Le => a <= b,
                GateOp::Eq | GateOp::Ne => false,
            },
            _ => false,
        },
    }
}

fn equal(seen: &Value, wanted: &Value) -> bool {
    if seen == wanted {
        return true;
    }
    match (number(seen), number(wanted)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A number, or a string that holds one ("192" from an etcd key).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// A value seen, as a short text for messages: JSON, cut at 200 characters.
pub fn shown(value: Option<&Value>) -> String {
    let text = match value {
        None => "nothing".to_string(),
        Some(value) => value.to_string(),
    };
    if text.chars().count() > 200 {
        let cut: String = text.chars().take(200).collect();
        format!("{cut}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_as_numbers_even_inside_strings() {
        assert!(compare(Some(&json!(192)), GateOp::Ge, &json!(192)));
        assert!(compare(Some(&json!("1000")), GateOp::Ge, &json!(192)));
        assert!(!compare(Some(&json!("191")), GateOp::Ge, &json!(192)));
        assert!(compare(Some(&json!(191.5)), GateOp::Lt, &json!("192")));
        assert!(compare(Some(&json!("192")), GateOp::Eq, &json!(192)));
        assert!(!compare(Some(&json!("abc")), GateOp::Gt, &json!(1)));
    }

    #[test]
    fn equality_compares_json_and_absence_is_null() {
        assert!(compare(Some(&json!("done")), GateOp::Eq, &json!("done")));
        assert!(compare(
            Some(&json!("migration in progress")),
            GateOp::Ne,
            &json!("done")
        ));
        assert!(compare(None, GateOp::Eq, &Value::Null));
        assert!(!compare(None, GateOp::Eq, &json!("done")));
        assert!(compare(None, GateOp::Ne, &json!("done")));
        assert!(!compare(None, GateOp::Ge, &json!(0)));
    }

    #[test]
    fn etcd_values_read_as_json_or_text() {
        assert_eq!(etcd_value(None), Value::Null);
        assert_eq!(etcd_value(Some(b"192")), json!(192));
        assert_eq!(etcd_value(Some(b"{\"a\":1}")), json!({"a": 1}));
        assert_eq!(
            etcd_value(Some(b"migration in progress")),
            json!("migration in progress")
        );
        assert_eq!(etcd_value(Some(&[0xff, b'a'])), json!("\u{fffd}a"));
    }

    #[test]
    fn gates_round_trip_through_json() {
        let gate: Gate = serde_json::from_value(json!({
            "name": "schema", "kind": "item", "key": "schema/version",
            "pointer": "/version", "op": ">=", "value": 192
        }))
        .expect("parses");
        assert_eq!(
            gate.check,
            GateCheck::Item {
                key: "schema/version".into(),
                pointer: "/version".into(),
                op: GateOp::Ge,
                value: json!(192)
            }
        );
        let back: Gate =
            serde_json::from_value(serde_json::to_value(&gate).expect("serialises")).expect("back");
        assert_eq!(back, gate);
        assert_eq!(gate.wanted(), ">= 192");
        assert_eq!(gate.target(), "item schema/version at /version");
    }

    #[test]
    fn bad_definitions_are_refused_naming_the_gate() {
        let etcd = |key: &str| Gate {
            name: "migration".into(),
            check: GateCheck::Etcd {
                key: key.into(),
                pointer: String::new(),
                op: GateOp::Eq,
                value: json!("done"),
            },
        };
        assert!(etcd("/app/migration").validate("/switchboard").is_ok());
        let inside = etcd("/switchboard/ns/x/routing")
            .validate("/switchboard")
            .expect_err("inside");
        assert!(
            inside.contains("migration") && inside.contains("prefix"),
            "{inside}"
        );
        assert!(etcd("").validate("/switchboard").is_err());
        let mut bad_name = etcd("/a");
        bad_name.name = "has space".into();
        assert!(bad_name.validate("/switchboard").is_err());
        let http = Gate {
            name: "ready".into(),
            check: GateCheck::Http {
                url: "ftp://x".into(),
                pointer: String::new(),
                op: None,
                value: Value::Null,
            },
        };
        assert!(http.validate("/switchboard").is_err());
        let twice = validate_gates(&[etcd("/a"), etcd("/b")], "/switchboard").expect_err("dup");
        assert!(twice.contains("two gates"), "{twice}");
    }
}

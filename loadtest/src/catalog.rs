//! The benchmark's metadata set: table definitions of about 1 KB each, generated from a seed,
//! so that every run stages the same bytes.

use std::path::Path;

use anyhow::{Context as _, Result};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

const DOMAINS: [&str; 8] = [
    "orders",
    "customers",
    "payments",
    "events",
    "sessions",
    "invoices",
    "items",
    "stock",
];

/// How the changed items of a second version are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangePattern {
    /// Items spread at random over the whole key space: the worst case for chunk reuse.
    Scattered,
    /// One contiguous run of keys, as when one team changes its own tables.
    Clustered,
}

/// The key of item `index`.
pub fn key(index: usize) -> String {
    format!("tables/{}/t{index:06}", DOMAINS[index % DOMAINS.len()])
}

/// The value of item `index` at `revision`: a table definition of about 1 KB of JSON.
pub fn value(index: usize, revision: u32) -> Value {
    let mut rng = StdRng::seed_from_u64(index as u64);
    let domain = DOMAINS[index % DOMAINS.len()];
    let types = ["string", "int64", "timestamp", "decimal(18,2)"];
    let columns: Vec<Value> = (0..12)
        .map(|c| {
            json!({
                "name": format!("col_{c}"),
                "type": types[rng.random_range(0..types.len())],
                "nullable": rng.random_bool(0.3),
            })
        })
        .collect();
    json!({
        "name": format!("{domain}_{index:06}"),
        "domain": domain,
        "owner": format!("team-{}", index % 37),
        "columns": columns,
        "tags": [format!("tag-{}", (index * 7) % 19), format!("tag-{}", (index * 3) % 23)],
        "retention_days": 30 + index % 365,
        "description": format!("{domain} table {index} of the benchmark catalog, owned by team-{}; ", index % 37).repeat(3),
        "revision": revision,
    })
}

/// Which of `count` items a `percent` change touches, by `pattern`.
pub fn changed_items(count: usize, percent: f64, pattern: ChangePattern, seed: u64) -> Vec<bool> {
    let changes = ((count as f64) * percent / 100.0).round() as usize;
    let mut changed = vec![false; count];
    match pattern {
        ChangePattern::Scattered => {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut left = changes.min(count);
            while left > 0 {
                let index = rng.random_range(0..count);
                if !changed[index] {
                    changed[index] = true;
                    left -= 1;
                }
            }
        }
        ChangePattern::Clustered => {
            // The run is contiguous in key order, which is the order the set is chunked in.
            let mut order: Vec<usize> = (0..count).collect();
            order.sort_by_key(|&index| key(index));
            let start = count / 3;
            for &index in order.iter().skip(start).take(changes) {
                changed[index] = true;
            }
        }
    }
    changed
}

/// Writes `count` items as one JSON document (a map from key to value), the items marked in
/// `changed` at revision 2. Returns the bytes written.
pub fn write(path: &Path, count: usize, changed: Option<&[bool]>) -> Result<u64> {
    let mut items = serde_json::Map::with_capacity(count);
    for index in 0..count {
        let revision = match changed {
            Some(changed) if changed.get(index).copied().unwrap_or(false) => 2,
            _ => 1,
        };
        items.insert(key(index), value(index, revision));
    }
    let bytes = serde_json::to_vec(&Value::Object(items)).context("encoding the catalog")?;
    std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes.len() as u64)
}

/// Writes `count` unchanged items plus an item `generation` holding `generation`, so that each
/// generation is a version of its own that shares every chunk but one with the others.
pub fn write_generation(path: &Path, count: usize, generation: usize) -> Result<u64> {
    let mut items = serde_json::Map::with_capacity(count + 1);
    for index in 0..count {
        items.insert(key(index), value(index, 1));
    }
    items.insert("generation".into(), json!(generation));
    let bytes = serde_json::to_vec(&Value::Object(items)).context("encoding the catalog")?;
    std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes.len() as u64)
}

/// The example Rego rules of `deploy/examples/rules`, which the benchmark's contract enforces.
const EXAMPLE_RULES: [(&str, &str); 3] = [
    (
        "rules/owners.rego",
        include_str!("../../deploy/examples/rules/owners.rego"),
    ),
    (
        "rules/grants.rego",
        include_str!("../../deploy/examples/rules/grants.rego"),
    ),
    (
        "rules/pii.rego",
        include_str!("../../deploy/examples/rules/pii.rego"),
    ),
];

/// Writes a contract for the catalog into `dir`, as `sbctl contract set NS DIR` reads it: a
/// strict JSON Schema for every table (no field beyond those the generator writes) and, with
/// `rules`, the example rules.
pub fn write_contract(dir: &Path, rules: bool) -> Result<()> {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["name", "domain", "owner", "columns", "tags", "retention_days", "revision"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z]+_[0-9]{6}$"},
            "domain": {"enum": DOMAINS},
            "owner": {"type": "string", "minLength": 1},
            "columns": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "type", "nullable"],
                    "additionalProperties": false,
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
                        "type": {"type": "string"},
                        "nullable": {"type": "boolean"},
                    },
                },
            },
            "tags": {"type": "array", "items": {"type": "string"}},
            "retention_days": {"type": "integer", "minimum": 1},
            "description": {"type": "string", "maxLength": 4096},
            "revision": {"type": "integer", "minimum": 1},
        },
    });
    let mut yaml =
        String::from("schemas:\n  - pattern: \"tables/**\"\n    schema: schemas/table.json\n");
    std::fs::create_dir_all(dir.join("schemas"))
        .and_then(|()| std::fs::create_dir_all(dir.join("rules")))
        .with_context(|| format!("creating {}", dir.display()))?;
    let schema_bytes = serde_json::to_vec_pretty(&schema).context("encoding the table schema")?;
    std::fs::write(dir.join("schemas/table.json"), schema_bytes)
        .with_context(|| format!("writing {}/schemas/table.json", dir.display()))?;
    if rules {
        yaml.push_str("rules:\n");
    }
    for (name, source) in EXAMPLE_RULES.iter().filter(|_| rules) {
        std::fs::write(dir.join(name), source)
            .with_context(|| format!("writing {}/{name}", dir.display()))?;
        yaml.push_str(&format!("  - {name}\n"));
    }
    std::fs::write(dir.join("switchboard.yaml"), yaml)
        .with_context(|| format!("writing {}/switchboard.yaml", dir.display()))?;
    Ok(())
}

/// `sbctl --json stage NS PATH -m MESSAGE`: its report (version, chunks and bytes uploaded).
pub async fn stage(
    sbctl: &switchboard_tests::SbctlRunner,
    namespace: &str,
    path: &Path,
    message: &str,
) -> Result<Value> {
    sbctl
        .run_json(&[
            "stage",
            namespace,
            &path.display().to_string(),
            "-m",
            message,
        ])
        .await
}

/// The routing epoch of `namespace`, from `sbctl --json status`.
pub async fn epoch(sbctl: &switchboard_tests::SbctlRunner, namespace: &str) -> Result<u64> {
    let status = sbctl.run_json(&["status", namespace]).await?;
    status["epoch"]
        .as_u64()
        .with_context(|| format!("status of {namespace} has no epoch: {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_about_a_kilobyte_and_reproducible() {
        let text = serde_json::to_string(&value(42, 1)).expect("encodes");
        assert!((800..1400).contains(&text.len()), "{} bytes", text.len());
        assert_eq!(value(42, 1), value(42, 1));
        assert_ne!(value(42, 1), value(42, 2));
    }

    #[test]
    fn a_change_touches_the_asked_share_of_items() {
        for pattern in [ChangePattern::Scattered, ChangePattern::Clustered] {
            let changed = changed_items(10_000, 1.0, pattern, 3);
            assert_eq!(changed.iter().filter(|&&c| c).count(), 100, "{pattern:?}");
        }
    }
}

//! What `plan` and `stage` do with PATH before anything is sent: read `switchboard.yaml`, parse
//! the items (without schema files and the environments directory), substitute `--env`,
//! validate against the schemas, and build the set; then the plan against the active set with
//! every change classified ([`crate::compat`]).

use std::collections::HashSet;
use std::path::Path;

use switchboard_contract::check::{RuleScope, SealCheck, Subject, Verdict};
use switchboard_contract::diff::ActiveOnlyItems;
use switchboard_contract::rules::{DEFAULT_TIME_LIMIT, RuleOutcome};
use switchboard_proto::set::Chunk;
use switchboard_proto::{ItemSet, Manifest};

use crate::client::Coordinator;
use crate::compat::{self, ClassCounts, ItemPlan};
use crate::env::{self, EnvError};
use crate::exit::CliError;
use crate::output::{self, ContractPreview, PlanReport};
use crate::source::{self, Exclusions, Problem, SourceError};
use crate::validate::{self, Config, Schemas};

/// A source read, substituted and validated, ready to plan or stage.
#[derive(Debug)]
pub struct Prepared {
    pub set: ItemSet,
    /// The schemas, which tell the sensitive fields of each item.
    pub schemas: Schemas,
}

fn invalid(path: &Path, problems: Vec<Problem>) -> CliError {
    CliError::Source(SourceError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Reads PATH as `plan` and `stage` do. `env` is the name given to `--env`.
///
/// Usage errors (exit 2): PATH or the environment file does not exist. Everything wrong with
/// the content (exit 4) is collected into one report: malformed files, bad keys, unresolved
/// placeholders, schema violations, schemas that do not compile.
pub fn prepare(path: &Path, env: Option<&str>) -> Result<Prepared, CliError> {
    let is_dir = path.is_dir();
    let mut problems = Vec::new();
    let (config, schemas, exclusions) = if is_dir {
        let config = validate::load_config(path).map_err(|p| invalid(path, p))?;
        for setting in &config.unknown {
            output::note(&format!(
                "warning: {}: unknown setting {setting:?} is ignored",
                crate::escape::path(&path.join(source::CONFIG_FILE))
            ));
        }
        let schemas = match validate::compile(path, &config) {
            Ok(schemas) => schemas,
            Err(found) => {
                problems.extend(found);
                Schemas::default()
            }
        };
        let exclusions = exclusions(&config);
        (config, schemas, exclusions)
    } else {
        (Config::default(), Schemas::default(), Exclusions::default())
    };

    let mut read = source::read(path, &exclusions)?;
    read.problems.extend(problems);
    match env {
        Some(name) => {
            let root = if is_dir {
                path
            } else {
                match path.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent,
                    _ => Path::new("."),
                }
            };
            let dir = if is_dir {
                path.join(&config.environments_dir)
            } else {
                root.join(validate::DEFAULT_ENVIRONMENTS_DIR)
            };
            let environment = match env::load(root, &dir, name) {
                Ok(environment) => environment,
                Err(EnvError::Usage(message)) => return Err(CliError::Usage(message)),
                Err(EnvError::Invalid(found)) => return Err(invalid(path, found)),
            };
            let unresolved = env::substitute_items(&mut read.items, &environment);
            read.problems.extend(unresolved);
        }
        None => {
            if let Some(warning) = env::warning(&env::scan(&read.items)) {
                output::note(&warning);
            }
        }
    }
    let violations = validate::validate_items(&schemas, &read.items);
    read.problems.extend(violations);
    let set = source::build(path, read)?;
    Ok(Prepared { set, schemas })
}

/// What a directory's configuration keeps out of its items: the schema files and the
/// environments directory.
pub fn exclusions(config: &Config) -> Exclusions {
    let mut exclusions = Exclusions::default();
    for rule in &config.rules {
        if let Some(relative) = validate::relative_inside(&rule.schema) {
            exclusions.file(&relative);
        }
    }
    if let Some(relative) = validate::relative_inside(&config.environments_dir) {
        exclusions.dir(&relative);
    }
    exclusions
}

/// The plan of the prepared set (whose manifest is `manifest`) against the namespace's active
/// set: the keys added, changed and removed, and every change classified. Only the active
/// chunks the new set does not share are fetched.
pub async fn plan_report(
    coordinator: &mut Coordinator,
    namespace: &str,
    manifest: &Manifest,
    prepared: &Prepared,
) -> Result<PlanReport, CliError> {
    Ok(plan_with_active(coordinator, namespace, manifest, prepared)
        .await?
        .0)
}

/// [`plan_report`], and the active set's manifest and the active items the new set does not
/// share, for a preview of the contract.
async fn plan_with_active(
    coordinator: &mut Coordinator,
    namespace: &str,
    manifest: &Manifest,
    prepared: &Prepared,
) -> Result<(PlanReport, Option<Manifest>, ActiveOnlyItems), CliError> {
    let set = &prepared.set;
    let active = coordinator.get_manifest(namespace, "").await?;
    let (diff, active_only) = match &active {
        None => (crate::plan::diff(manifest, set, None), Default::default()),
        Some(active) => {
            let wanted = crate::plan::chunks_to_fetch(manifest, active);
            let fetched = if wanted.is_empty() {
                Vec::new()
            } else {
                coordinator.get_chunks(namespace, &wanted).await?
            };
            let active_only =
                crate::plan::decode_fetched(active, &wanted, fetched).map_err(|problem| {
                    CliError::BadReply {
                        rpc: "GetChunks",
                        problem,
                    }
                })?;
            let diff = crate::plan::diff(manifest, set, Some((active, &active_only)));
            (diff, active_only)
        }
    };

    let items: Vec<ItemPlan> = compat::plan_items(
        &diff,
        |key| set.get(key).map(|v| &v[..]),
        &active_only,
        &prepared.schemas,
    )
    .map_err(|problem| CliError::BadReply {
        rpc: "GetChunks",
        problem,
    })?;

    let report = PlanReport {
        namespace: namespace.to_string(),
        active_version: active.as_ref().map(|m| m.version.clone()),
        new_version: manifest.version.clone(),
        added: diff.added,
        changed: diff.changed,
        removed: diff.removed,
        unchanged: diff.unchanged,
        classes: ClassCounts::of(&items),
        items,
        contract: None,
    };
    Ok((report, active, active_only))
}

/// `sbctl plan`: the plan, and what the namespace's contract on the coordinator would say at
/// the seal, judged here by the same code the coordinator runs (`switchboard_contract::check`):
/// schema violations, and the Rego rules' deny, warn and approval messages. The rules see every
/// item, as at a seal under a contract that did not judge the active set. `manifest` and
/// `chunks` are the prepared set's, as `ItemSet::to_chunks` made them.
pub async fn plan_with_contract(
    coordinator: &mut Coordinator,
    namespace: &str,
    (manifest, chunks): (&Manifest, &[Chunk]),
    prepared: &Prepared,
    actor: &str,
) -> Result<PlanReport, CliError> {
    let (mut report, active, active_only) =
        plan_with_active(coordinator, namespace, manifest, prepared).await?;
    let view = coordinator.get_contract(namespace).await?.document;
    let Some(record) = view.active else {
        return Ok(report);
    };
    let compiled = record.contract.compile().map_err(|e| CliError::BadReply {
        rpc: "GetContract",
        problem: format!("its contract does not compile: {e}"),
    })?;
    let shared: HashSet<&str> = active
        .as_ref()
        .map(|m| m.chunks.iter().map(|c| c.hash.as_str()).collect())
        .unwrap_or_default();
    let mut check = SealCheck::new(&compiled, active.is_some(), RuleScope::All);
    // The chunks hold the set's items in key order, so the items are taken from the set
    // itself, each chunk's count in turn, rather than decoded from the chunks again.
    let mut items = prepared.set.iter();
    for chunk in chunks {
        let in_shared = shared.contains(chunk.hash.as_str());
        let count = usize::try_from(chunk.items).unwrap_or(usize::MAX);
        for (key, value) in items.by_ref().take(count) {
            check.add_item(key, value, in_shared);
        }
    }
    let subject = Subject {
        namespace,
        actor,
        version: &manifest.version,
    };
    let checked = check
        .finish(&active_only, &subject)
        .map_err(|problem| CliError::BadReply {
            rpc: "GetChunks",
            problem,
        })?;
    let (outcome, rule_error) = if compiled.rules.is_empty() {
        (RuleOutcome::default(), None)
    } else {
        match compiled
            .rules
            .evaluate(&checked.rule_input, DEFAULT_TIME_LIMIT)
        {
            Ok(outcome) => (outcome, None),
            Err(e) => (RuleOutcome::default(), Some(e)),
        }
    };
    let short = record.short_hash().to_string();
    let verdict = Verdict {
        namespace,
        contract: &short,
        checked: &checked,
        rules: &outcome,
    };
    let refusal = verdict
        .violation_refusal()
        .or_else(|| {
            rule_error
                .as_ref()
                .map(|e| format!("the seal of {namespace} would be refused: {e}"))
        })
        .or_else(|| verdict.rule_refusal());
    let lines = |findings: &[switchboard_contract::rules::Finding]| {
        findings.iter().map(ToString::to_string).collect()
    };
    report.contract = Some(ContractPreview {
        contract: short,
        violation_total: checked.violation_total,
        violations: checked.violations.iter().map(ToString::to_string).collect(),
        deny: lines(&outcome.deny),
        warn: lines(&outcome.warn),
        approval: lines(&outcome.approval),
        refusal,
    });
    Ok(report)
}

/// Before staging: refuses (exit 4) a set that makes destructive changes to the active set,
/// unless they are allowed. When they are, nothing is fetched to find them.
pub async fn check_destructive(
    coordinator: &mut Coordinator,
    namespace: &str,
    path: &Path,
    manifest: &Manifest,
    prepared: &Prepared,
    allow_destructive: bool,
) -> Result<(), CliError> {
    if allow_destructive {
        return Ok(());
    }
    let report = plan_report(coordinator, namespace, manifest, prepared).await?;
    let active = report.active_version.as_deref().unwrap_or("none");
    let review = format!("sbctl plan {namespace} {}", crate::escape::path(path));
    compat::check_destructive(&report.items, false, active, &review)
        .map(|_| ())
        .map_err(CliError::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }

    const TABLE_SCHEMA: &str = r#"{
        "type": "object",
        "required": ["name", "columns"],
        "properties": {
            "name": {"type": "string"},
            "columns": {"type": "array", "items": {
                "type": "object",
                "required": ["name", "type"],
                "properties": {"type": {"enum": ["int32", "int64", "string"]}}
            }},
            "contact": {"type": "string", "x-switchboard-sensitive": true}
        }
    }"#;

    fn sample(root: &Path) {
        write(
            root,
            "switchboard.yaml",
            "schemas:\n  - pattern: \"tables/**\"\n    schema: schemas/table.json\n",
        );
        write(root, "schemas/table.json", TABLE_SCHEMA);
        write(
            root,
            "tables/orders.yaml",
            "name: orders\nlocation: \"${lake}/orders\"\ncolumns:\n  - {name: id, type: int64}\n",
        );
        write(root, "environments/prod.yaml", "lake: s3://prod\n");
        write(root, "environments/dev.yaml", "other: x\n");
        write(root, "notes/readme.json", "\"not a table\"");
    }

    fn value(set: &ItemSet, key: &str) -> Value {
        serde_json::from_slice(set.get(key).expect("item")).expect("json")
    }

    #[test]
    fn schema_files_and_environments_are_not_items_and_env_substitutes() {
        let dir = tempfile::tempdir().expect("tempdir");
        sample(dir.path());
        let prepared = prepare(dir.path(), Some("prod")).expect("valid");
        let keys: Vec<&str> = prepared.set.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["notes/readme", "tables/orders"]);
        assert_eq!(
            value(&prepared.set, "tables/orders")["location"],
            "s3://prod/orders"
        );
        // Without --env the placeholder stays as written.
        let plain = prepare(dir.path(), None).expect("valid");
        assert_eq!(
            value(&plain.set, "tables/orders")["location"],
            "${lake}/orders"
        );
    }

    #[test]
    fn unresolved_placeholders_and_missing_environments() {
        let dir = tempfile::tempdir().expect("tempdir");
        sample(dir.path());
        let err = prepare(dir.path(), Some("dev")).expect_err("unresolved");
        assert_eq!(err.exit_code(), crate::exit::REFUSED);
        let text = err.to_string();
        assert!(
            text.contains("orders.yaml: /location: unresolved placeholder ${lake}")
                && text.contains("dev.yaml"),
            "{text}"
        );
        let err = prepare(dir.path(), Some("staging")).expect_err("missing");
        assert_eq!(err.exit_code(), crate::exit::USAGE);
        assert!(err.to_string().contains("staging.yaml"), "{err}");
    }

    #[test]
    fn invalid_items_are_refused_with_file_and_json_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        sample(dir.path());
        write(
            dir.path(),
            "tables/bad.yaml",
            "name: bad\ncolumns:\n  - {name: id, type: int64}\n  - {name: x, type: float}\ncontact: \"+1 555 SECRET\"\nextra: 1\n",
        );
        write(dir.path(), "tables/broken.json", "{");
        let err = prepare(dir.path(), Some("prod")).expect_err("invalid");
        assert_eq!(err.exit_code(), crate::exit::REFUSED);
        let text = err.to_string();
        assert!(text.contains("bad.yaml: /columns/1/type: "), "{text}");
        assert!(text.contains("broken.json: malformed JSON"), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
    }

    #[test]
    fn a_schema_that_does_not_compile_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        sample(dir.path());
        write(dir.path(), "schemas/table.json", r#"{"type": 12}"#);
        let err = prepare(dir.path(), Some("prod")).expect_err("bad schema");
        assert_eq!(err.exit_code(), crate::exit::REFUSED);
        assert!(
            err.to_string()
                .contains("table.json: not a valid JSON Schema"),
            "{err}"
        );
        write(
            dir.path(),
            "switchboard.yaml",
            "schemas: [{pattern: \"a//b\", schema: s.json}]\n",
        );
        let err = prepare(dir.path(), None).expect_err("bad config");
        assert!(err.to_string().contains("switchboard.yaml"), "{err}");
    }

    fn example(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples")
            .join(name)
    }

    /// The plan of `new` against `active` as `plan_report` makes it, without a coordinator.
    fn offline_plan(new: &Prepared, active: &ItemSet) -> Vec<ItemPlan> {
        let (manifest, _) = new.set.to_chunks();
        let (active_manifest, chunks) = active.to_chunks();
        let wanted = crate::plan::chunks_to_fetch(&manifest, &active_manifest);
        let fetched = chunks
            .into_iter()
            .filter(|c| wanted.contains(&c.hash))
            .map(|c| (c.hash, c.data));
        let active_only =
            crate::plan::decode_fetched(&active_manifest, &wanted, fetched).expect("decodes");
        let diff = crate::plan::diff(&manifest, &new.set, Some((&active_manifest, &active_only)));
        let mut items: Vec<ItemPlan> = diff.added.iter().map(|k| compat::item_added(k)).collect();
        for key in &diff.changed {
            let old: Value = serde_json::from_slice(&active_only[key]).expect("json");
            let new_value: Value =
                serde_json::from_slice(new.set.get(key).expect("new")).expect("json");
            items.push(compat::item_changed(
                key,
                &old,
                &new_value,
                &new.schemas.cursor(key),
            ));
        }
        items.extend(diff.removed.iter().map(|k| compat::item_removed(k)));
        items
    }

    #[test]
    fn the_sample_sets_validate_and_v2_is_destructive_for_the_documented_reasons() {
        let v1 = prepare(&example("catalog-v1"), None).expect("catalog-v1 is valid");
        let v2 = prepare(&example("catalog-v2"), None).expect("catalog-v2 is valid");
        assert_eq!((v1.set.len(), v2.set.len()), (330, 333));
        assert!(v1.set.iter().all(|(k, _)| !k.starts_with("schemas/")));

        let items = offline_plan(&v2, &v1.set);
        let count = |change| items.iter().filter(|i| i.change == change).count();
        assert_eq!(
            (
                count(compat::ItemChange::Added),
                count(compat::ItemChange::Changed),
                count(compat::ItemChange::Removed)
            ),
            (5, 14, 2)
        );
        let destructive = compat::destructive_lines(&items);
        let has = |needle: &str| destructive.iter().any(|l| l.contains(needle));
        assert!(
            has("tables/support/agg_ticket_backlog_legacy: item removed"),
            "{destructive:#?}"
        );
        assert!(
            has("lineage/support/agg_ticket_backlog_legacy: item removed"),
            "{destructive:#?}"
        );
        assert!(
            has("tables/hr/dim_employees /columns/12: element removed"),
            "{destructive:#?}"
        );
        assert!(
            has("policies/finance-read /principals/1"),
            "{destructive:#?}"
        );
        // The on-call phone is sensitive: its change shows, its values do not.
        let owner = items
            .iter()
            .find(|i| i.key == "owners/marketing-analytics")
            .expect("owner changed");
        let text = serde_json::to_string(owner).expect("json");
        assert!(
            text.contains("/oncall/phone") && text.contains("<redacted>"),
            "{text}"
        );
        assert!(!text.contains("555"), "{text}");
        // A type that stays a string is a modifying change.
        let shipments = items
            .iter()
            .find(|i| i.key == "tables/logistics/stg_shipments")
            .expect("shipments changed");
        assert_eq!(shipments.class, compat::Class::Modifying);
    }

    #[test]
    fn a_single_file_set_finds_environments_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "set.yaml", "a: \"${x}\"\nb: 1\n");
        write(dir.path(), "environments/e.yaml", "x: 5\n");
        let prepared = prepare(&dir.path().join("set.yaml"), Some("e")).expect("valid");
        assert_eq!(value(&prepared.set, "a"), "5");
        write(dir.path(), "environments/f.yaml", "y: 5\n");
        let err = prepare(&dir.path().join("set.yaml"), Some("f")).expect_err("unresolved");
        assert!(
            err.to_string()
                .contains("set.yaml (item a): (root): unresolved"),
            "{err}"
        );
    }
}

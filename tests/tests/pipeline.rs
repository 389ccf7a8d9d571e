//! End-to-end tests of the release pipeline in sbctl against a real etcd and coordinator:
//! schema validation, the classified plan and the refusal of destructive changes, and
//! environments.

mod common;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use switchboard_tests::{SbctlRunner, TestEnv};

const NS: &str = "catalog";

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// What a refused command must leave alone: routing and both slots.
async fn routing_and_slots(sbctl: &SbctlRunner) -> Result<(Value, Value, Value)> {
    let status = status(sbctl, NS).await?;
    Ok((
        status["epoch"].clone(),
        status["active"].clone(),
        status["slots"].clone(),
    ))
}

/// Acceptance 1, first half: an invalid item is refused by `stage` (and by `plan`) with its
/// file and the JSON path of each violation, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_item_is_refused_naming_file_and_json_path() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let before = routing_and_slots(&sbctl).await?;

    let dir = tempfile::tempdir()?;
    let set = dir.path().join("catalog");
    copy_dir(Path::new(&example("catalog-v1")), &set)?;
    // A column type outside the schema's types, and a version that is a string.
    let table = set.join("tables/logistics/stg_shipments.yaml");
    let text = std::fs::read_to_string(&table)?;
    let at = text
        .find("- name: \"package_count\"\n    type: \"int32\"")
        .context("package_count is not where the test expects it")?;
    let broken = format!(
        "{}{}",
        &text[..at],
        text[at..].replacen("type: \"int32\"", "type: \"integer\"", 1)
    );
    std::fs::write(&table, broken)?;
    std::fs::write(
        set.join("schema_version.json"),
        r#"{"version": "192", "migrations_in_progress": false, "updated_at": "2024-06-04T10:00:00Z"}"#,
    )?;
    let path = set.display().to_string();

    for command in ["stage", "plan"] {
        let output = sbctl.run(&[command, NS, &path]).await?;
        assert_eq!(output.code, 4, "{command}: {output}");
        for expected in [
            "tables/logistics/stg_shipments.yaml: /columns/7/type: ",
            "schema_version.json: /version: ",
            "2 problems",
        ] {
            assert!(
                output.stderr.contains(expected),
                "{command} should say {expected:?}: {output}"
            );
        }
    }
    assert_eq!(
        routing_and_slots(&sbctl).await?,
        before,
        "a refused stage changed the namespace"
    );

    // A schema that is not a schema is named too.
    std::fs::write(set.join("schemas/tag.json"), r#"{"type": "tag"}"#)?;
    let output = sbctl.run(&["stage", NS, &path]).await?;
    assert_eq!(output.code, 4, "{output}");
    assert!(
        output
            .stderr
            .contains("schemas/tag.json: not a valid JSON Schema"),
        "{output}"
    );
    assert_eq!(routing_and_slots(&sbctl).await?, before);
    Ok(())
}

/// Acceptance 1, second half: the sample's second version removes items, a column, list
/// values; `stage` refuses it without --allow-destructive, `plan` shows why, and with the flag
/// it is staged. The on-call phone, marked sensitive, is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destructive_change_needs_allow_destructive_and_plan_shows_why() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    // Nothing is active yet: the first stage is additive only.
    let (v1, _) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let before = routing_and_slots(&sbctl).await?;
    let v2_path = example("catalog-v2");

    let plan = sbctl.run(&["plan", NS, &v2_path]).await?.ensure_success()?;
    eprintln!("{}", plan.stdout);
    for expected in [
        "plan for catalog: 5 added, 14 changed, 2 removed",
        "  ~ tables/hr/dim_employees\n",
        "(destructive: element removed)",
        "~ /columns/7/type: \"int32\" -> \"int64\" (modifying)",
        "~ /oncall/phone: \"<redacted>\" -> \"<redacted>\" (modifying)",
        "destructive (6), so `sbctl stage` needs --allow-destructive:",
        "  tables/support/agg_ticket_backlog_legacy: item removed",
        "  tables/hr/dim_employees /columns/12: element removed: {\"name\":\"legacy_employee_code\"",
        "  policies/finance-read /principals/1: value removed from a list (narrowed): \"role:bi-service\"",
    ] {
        assert!(
            plan.stdout.contains(expected),
            "plan should show {expected:?}:\n{plan}"
        );
    }
    ensure!(!plan.stdout.contains("555 01"), "the phone leaked:\n{plan}");

    let json = sbctl.run_json(&["plan", NS, &v2_path]).await?;
    assert_eq!(json["classes"]["destructive"], 6, "{json}");
    assert!(json["classes"]["additive"].as_u64() > Some(0), "{json}");
    assert_eq!(json["changed"].as_array().map(Vec::len), Some(14));
    let items = json["items"].as_array().context("items")?;
    let removed = items
        .iter()
        .find(|i| i["key"] == "tables/support/agg_ticket_backlog_legacy")
        .context("removed item")?;
    assert_eq!(removed["change"], "removed");
    assert_eq!(removed["class"], "destructive");
    let owner = items
        .iter()
        .find(|i| i["key"] == "owners/marketing-analytics")
        .context("owner")?;
    assert_eq!(
        owner["changes"][0],
        serde_json::json!({"path": "/oncall/phone", "kind": "changed", "class": "modifying",
                           "old": "<redacted>", "new": "<redacted>"})
    );
    ensure!(
        !json.to_string().contains("555 01"),
        "the phone leaked: {json}"
    );

    let refused = sbctl.run(&["stage", NS, &v2_path, "-m", "v2"]).await?;
    assert_eq!(refused.code, 4, "{refused}");
    for expected in [
        "6 destructive change(s) to the active version",
        "tables/support/agg_ticket_backlog_legacy: item removed",
        "sbctl plan catalog",
        "--allow-destructive",
    ] {
        assert!(refused.stderr.contains(expected), "{expected:?}: {refused}");
    }
    assert!(
        refused.stderr.contains(&v1),
        "names the active version: {refused}"
    );
    assert_eq!(
        routing_and_slots(&sbctl).await?,
        before,
        "a refused stage changed the namespace"
    );

    let staged = sbctl
        .run(&["stage", NS, &v2_path, "-m", "v2", "--allow-destructive"])
        .await?
        .ensure_success()?;
    let v2 = staged.stdout.lines().last().unwrap_or_default().trim();
    assert_eq!(v2.len(), 16, "{staged}");
    assert_ne!(v2, v1);
    let status = status(&sbctl, NS).await?;
    let slots = [&status["slots"]["blue"], &status["slots"]["green"]];
    assert!(
        slots.iter().any(|s| s["version"] == v2),
        "v2 is not staged: {status}"
    );
    Ok(())
}

/// `--env NAME` substitutes placeholders from environments/NAME.yaml, which is not an item;
/// an unresolved placeholder is refused, a missing environment is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_fill_placeholders_and_unresolved_ones_are_refused() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = env.start_sidecar("sidecar-1").await?;
    let dir = tempfile::tempdir()?;
    let set = dir.path().join("set");
    std::fs::create_dir_all(set.join("services"))?;
    std::fs::create_dir_all(set.join("environments"))?;
    std::fs::write(
        set.join("services/db.yaml"),
        "host: \"${db_host}\"\nurl: \"postgres://${db_host}:5432/app\"\nliteral: \"$${not_a_var}\"\nport: 5432\n",
    )?;
    std::fs::write(
        set.join("environments/prod.yaml"),
        "db_host: db.prod.internal\n",
    )?;
    std::fs::write(set.join("environments/dev.yaml"), "other: 1\n")?;
    let path = set.display().to_string();

    let missing = sbctl.run(&["plan", NS, &path, "--env", "staging"]).await?;
    assert_eq!(missing.code, 2, "{missing}");
    assert!(
        missing.stderr.contains("environments/staging.yaml"),
        "{missing}"
    );

    let unresolved = sbctl.run(&["stage", NS, &path, "--env", "dev"]).await?;
    assert_eq!(unresolved.code, 4, "{unresolved}");
    for expected in [
        "services/db.yaml: /host: unresolved placeholder ${db_host}",
        "services/db.yaml: /url: unresolved placeholder ${db_host}",
        "dev.yaml does not define db_host",
    ] {
        assert!(
            unresolved.stderr.contains(expected),
            "{expected:?}: {unresolved}"
        );
    }
    let nothing = status(&sbctl, NS).await?;
    assert!(
        nothing["slots"]["blue"].is_null() && nothing["slots"]["green"].is_null(),
        "{nothing}"
    );

    // Without --env the placeholders are kept, with a warning.
    let plain = sbctl.run(&["plan", NS, &path]).await?.ensure_success()?;
    assert!(
        plain.stderr.contains("placeholders") && plain.stderr.contains("--env"),
        "{plain}"
    );

    let output = sbctl
        .run(&["stage", NS, &path, "--env", "prod"])
        .await?
        .ensure_success()?;
    ensure!(
        !output.stderr.contains("placeholders"),
        "no warning with --env: {output}"
    );
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let epoch = epoch(&sbctl, NS).await?;
    sidecar.wait_for_epoch(NS, epoch, DEADLINE).await?;
    let answer = sidecar.get_item(NS, "services/db", None).await?;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.body,
        serde_json::json!({
            "host": "db.prod.internal",
            "url": "postgres://db.prod.internal:5432/app",
            "literal": "${not_a_var}",
            "port": 5432
        })
    );
    let env_file = sidecar.get_item(NS, "environments/prod", None).await?;
    assert_eq!(
        env_file.status, 404,
        "the environment is not an item: {env_file:?}"
    );

    // The same content again is the same version: nothing to stage.
    let plan = sbctl
        .run(&["plan", NS, &path, "--env", "prod"])
        .await?
        .ensure_success()?;
    assert!(plan.stdout.contains("no changes"), "{plan}");
    Ok(())
}

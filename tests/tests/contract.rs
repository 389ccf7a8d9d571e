//! The server is the boundary: the namespace's contract (schemas and Rego rules) and the
//! refusal of destructive changes are enforced by the coordinator at seal, against a real
//! etcd. The first test speaks the admin gRPC API with the generated client alone, no sbctl
//! code; the same cases through sbctl exit 4 with the same words.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use switchboard_proto::pb::admin_client::AdminClient;
use switchboard_proto::pb::{
    BeginStageRequest, ChunkData, SealRequest, SetContractRequest, SetPolicyRequest, StatusRequest,
};
use switchboard_proto::{ItemSet, Policy};
use switchboard_tests::{Coordinator, EtcdServer, TestEnv, unique_prefix};
use tonic::transport::Channel;

const NS: &str = "catalog";

const TABLE_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["owner"],
    "properties": {"owner": {"type": "string"}, "grants": {"type": "array"}}
}"#;

const GRANTS_RULE: &str = r#"package switchboard.grants
import rego.v1

deny contains {"msg": "an access policy grants to everyone; name the groups", "item": key} if {
    some key, item in input.items
    "*" in item.grants
}
"#;

fn contract(rules: &[(&str, &str)]) -> switchboard_contract::Contract {
    switchboard_contract::Contract {
        format: switchboard_contract::document::FORMAT,
        schemas: vec![switchboard_contract::document::SchemaRule {
            pattern: "tables/*".into(),
            schema: "schemas/table.json".into(),
        }],
        schema_documents: BTreeMap::from([(
            "schemas/table.json".to_string(),
            serde_json::from_str(TABLE_SCHEMA).unwrap_or(Value::Null),
        )]),
        rules: rules
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect(),
    }
}

async fn set_contract(
    admin: &mut AdminClient<Channel>,
    contract: &switchboard_contract::Contract,
) -> Result<()> {
    admin
        .set_contract(SetContractRequest {
            namespace: NS.into(),
            contract_json: String::from_utf8(contract.canonical())?,
            reason: "the catalog's rules".into(),
            expected_hash: String::new(),
        })
        .await?;
    Ok(())
}

fn set_of(items: &[(&str, Value)]) -> Result<ItemSet> {
    let mut set = ItemSet::new();
    for (key, value) in items {
        set.insert_value(key, value)?;
    }
    Ok(set)
}

/// Stages `set` the way any client of the admin API can, and asks for the seal. Returns the
/// seal's answer: `Ok` with its JSON, or the refusal.
async fn stage_directly(
    admin: &mut AdminClient<Channel>,
    set: &ItemSet,
    allow_destructive: bool,
) -> Result<Result<Value, tonic::Status>> {
    let (manifest, chunks) = set.to_chunks();
    let (head, pages) = manifest.to_pages();
    let begun = admin
        .begin_stage(BeginStageRequest {
            namespace: NS.into(),
            manifest_json: String::from_utf8(head.to_canonical_json())?,
            message: "direct".into(),
            pages: pages.iter().map(|p| p.data.clone()).collect(),
        })
        .await?
        .into_inner();
    ensure!(begun.outcome == "staging", "begin stage: {begun:?}");
    let wanted: std::collections::HashSet<&str> =
        begun.missing_chunks.iter().map(String::as_str).collect();
    let uploads: Vec<ChunkData> = chunks
        .iter()
        .filter(|c| wanted.contains(c.hash.as_str()))
        .map(|c| ChunkData {
            namespace: NS.into(),
            hash: c.hash.clone(),
            data: c.data.clone(),
        })
        .collect();
    admin.upload_chunks(tokio_stream::iter(uploads)).await?;
    let sealed = admin
        .seal(SealRequest {
            namespace: NS.into(),
            slot: begun.slot,
            manifest_hash: head.hash(),
            slot_revision: begun.slot_revision,
            allow_destructive,
        })
        .await;
    Ok(match sealed {
        Ok(reply) => Ok(serde_json::from_str(&reply.into_inner().json)?),
        Err(status) => Err(status),
    })
}

async fn status_json(admin: &mut AdminClient<Channel>) -> Result<Value> {
    let reply = admin
        .status(StatusRequest {
            namespace: NS.into(),
        })
        .await?;
    Ok(serde_json::from_str(&reply.into_inner().json)?)
}

/// The states of both slots, as status reports them.
async fn slot_states(admin: &mut AdminClient<Channel>) -> Result<Value> {
    let status = status_json(admin).await?;
    Ok(json!({
        "blue": status["slots"]["blue"]["state"],
        "green": status["slots"]["green"]["state"],
        "epoch": status["epoch"],
    }))
}

fn refused(result: Result<Value, tonic::Status>, what: &str) -> Result<String> {
    match result {
        Ok(sealed) => bail!("{what}: sealed {sealed}"),
        Err(status) => {
            ensure!(
                status.code() == tonic::Code::FailedPrecondition,
                "{what}: {status:?}"
            );
            Ok(status.message().to_string())
        }
    }
}

/// Acceptance 2: a client of the admin gRPC API cannot seal a set that violates the schema,
/// that a Rego rule denies, or that makes a destructive change without the allowance. Each
/// refusal names the item and the path or rule, and says what to do; the slot stays unsealed
/// and nothing is served from it. The same through sbctl exits 4 with the same words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_refuses_what_the_contract_forbids_from_any_client() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let mut admin = AdminClient::connect(env.coordinator.grpc_url()).await?;
    set_contract(&mut admin, &contract(&[("rules/grants.rego", GRANTS_RULE)])).await?;

    let v1 = set_of(&[
        (
            "tables/orders",
            json!({"owner": "sales", "grants": ["analysts"]}),
        ),
        ("tables/people", json!({"owner": "hr", "grants": ["hr"]})),
    ])?;
    if let Err(status) = stage_directly(&mut admin, &v1, false).await? {
        bail!("a valid set was refused: {}", status.message());
    }
    let sbctl = env.sbctl();
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let live = slot_states(&mut admin).await?;

    // A schema violation.
    let bad_schema = set_of(&[
        ("tables/extra", json!({"owner": 7})),
        (
            "tables/orders",
            json!({"owner": "sales", "grants": ["analysts"]}),
        ),
        ("tables/people", json!({"owner": "hr", "grants": ["hr"]})),
    ])?;
    let message = refused(
        stage_directly(&mut admin, &bad_schema, false).await?,
        "schema",
    )?;
    for expected in [
        "refused: 1 violation(s) of the contract of catalog",
        "tables/extra: /owner: 7 is not of type \"string\"",
        "sbctl contract set catalog DIR",
    ] {
        ensure!(message.contains(expected), "{expected:?} in {message}");
    }
    let after = slot_states(&mut admin).await?;
    ensure!(after["epoch"] == live["epoch"], "{after} vs {live}");
    ensure!(
        after["blue"] == "staging" || after["green"] == "staging",
        "the refused slot is not left staging: {after}"
    );
    // Nothing is served from it: a canary to the unsealed slot is refused.
    let canary = sbctl.run(&["canary", NS, "50"]).await?;
    ensure!(canary.code == 4, "{canary}");

    // The same set through sbctl: exit 4 with the same words. The directory has no
    // switchboard.yaml, so sbctl's own preview passes and the coordinator decides.
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("tables"))?;
    std::fs::write(dir.path().join("tables/extra.json"), r#"{"owner": 7}"#)?;
    std::fs::write(
        dir.path().join("tables/orders.json"),
        r#"{"owner": "sales", "grants": ["analysts"]}"#,
    )?;
    std::fs::write(
        dir.path().join("tables/people.json"),
        r#"{"owner": "hr", "grants": ["hr"]}"#,
    )?;
    let path = dir.path().display().to_string();
    let through_sbctl = sbctl.run(&["stage", NS, &path]).await?;
    ensure!(through_sbctl.code == 4, "{through_sbctl}");
    ensure!(
        through_sbctl.stderr.contains(&message),
        "sbctl said {:?}, the API said {message:?}",
        through_sbctl.stderr
    );
    // `sbctl plan` judges the set by the server's contract with the seal's code, before
    // anything is staged: the same exit and the same words.
    let planned = sbctl.run(&["plan", NS, &path]).await?;
    ensure!(planned.code == 4, "{planned}");
    ensure!(
        planned.stderr.contains(&message),
        "sbctl plan said {:?}, the API said {message:?}",
        planned.stderr
    );

    // A set a Rego rule denies.
    let denied = set_of(&[
        ("tables/open", json!({"owner": "ops", "grants": ["*"]})),
        (
            "tables/orders",
            json!({"owner": "sales", "grants": ["analysts"]}),
        ),
        ("tables/people", json!({"owner": "hr", "grants": ["hr"]})),
    ])?;
    let message = refused(stage_directly(&mut admin, &denied, false).await?, "rule")?;
    for expected in [
        "refused by 1 rule message(s) of the contract of catalog",
        "rule rules/grants.rego: tables/open: an access policy grants to everyone",
        "sbctl contract set catalog DIR",
    ] {
        ensure!(message.contains(expected), "{expected:?} in {message}");
    }
    std::fs::remove_file(dir.path().join("tables/extra.json"))?;
    std::fs::write(
        dir.path().join("tables/open.json"),
        r#"{"owner": "ops", "grants": ["*"]}"#,
    )?;
    let planned = sbctl.run(&["--json", "plan", NS, &path]).await?;
    ensure!(planned.code == 4, "{planned}");
    ensure!(
        planned.stderr.contains(&message),
        "sbctl plan said {:?}, the API said {message:?}",
        planned.stderr
    );
    let preview: Value = serde_json::from_str(&planned.stdout)?;
    ensure!(
        preview["contract"]["deny"]
            == json!([
                "rule rules/grants.rego: tables/open: an access policy grants to everyone; name the groups"
            ]),
        "{preview}"
    );

    // A destructive change without the allowance, then with it.
    let smaller = set_of(&[(
        "tables/orders",
        json!({"owner": "sales", "grants": ["analysts"]}),
    )])?;
    let message = refused(
        stage_directly(&mut admin, &smaller, false).await?,
        "destructive",
    )?;
    for expected in [
        "destructive change(s) to the active version",
        "tables/people: item removed",
        "--allow-destructive",
    ] {
        ensure!(message.contains(expected), "{expected:?} in {message}");
    }
    let sealed = match stage_directly(&mut admin, &smaller, true).await? {
        Ok(sealed) => sealed,
        Err(status) => bail!("allowed destructive change refused: {status:?}"),
    };
    ensure!(
        sealed["destructive"] == json!(["tables/people: item removed"]),
        "{sealed}"
    );
    let audit = sbctl.run_json(&["audit", NS, "--json"]).await?;
    let stage_record = audit["records"]
        .as_array()
        .and_then(|records| records.iter().rev().find(|r| r["action"] == "stage"))
        .context("no stage record")?;
    ensure!(
        stage_record["detail"]["judgement"]["destructive"]
            == json!(["tables/people: item removed"])
            && stage_record["detail"]["allow_destructive"] == json!(true),
        "{stage_record}"
    );
    Ok(())
}

/// Acceptance 4: a change of the contract is audited with who and why; when the policy
/// requires approval it takes effect only after another person approves that contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_change_waits_for_another_persons_approval() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let mut admin = AdminClient::connect(env.coordinator.grpc_url()).await?;
    let policy = Policy {
        require_approval: true,
        ..Policy::default()
    };
    admin
        .set_policy(SetPolicyRequest {
            namespace: NS.into(),
            policy_json: serde_json::to_string(&policy)?,
            reason: "two people".into(),
            expected_policy_json: serde_json::to_string(&Policy::default())?,
        })
        .await?;

    // The contract is written as a directory's switchboard.yaml.
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("schemas"))?;
    std::fs::create_dir_all(dir.path().join("rules"))?;
    std::fs::write(
        dir.path().join("switchboard.yaml"),
        "schemas:\n  - pattern: \"tables/*\"\n    schema: schemas/table.json\nrules:\n  - rules/grants.rego\n",
    )?;
    std::fs::write(dir.path().join("schemas/table.json"), TABLE_SCHEMA)?;
    std::fs::write(dir.path().join("rules/grants.rego"), GRANTS_RULE)?;
    let contract_dir = dir.path().display().to_string();
    let proposed = sbctl
        .run_json(&[
            "--as",
            "alice",
            "contract",
            "set",
            NS,
            &contract_dir,
            "-m",
            "owners are required",
            "--json",
        ])
        .await?;
    ensure!(proposed["active"].is_null(), "{proposed}");
    let hash = proposed["proposal"]["hash"]
        .as_str()
        .context("no proposal")?
        .to_string();

    // Not in force yet: a set without owners still seals.
    let set = tempfile::tempdir()?;
    std::fs::create_dir_all(set.path().join("tables"))?;
    std::fs::write(
        set.path().join("tables/orders.json"),
        r#"{"name": "orders"}"#,
    )?;
    let set_path = set.path().display().to_string();
    sbctl
        .run(&["stage", NS, &set_path])
        .await?
        .ensure_success()?;

    // The proposer cannot approve it; another person can.
    let own = sbctl
        .run(&["--as", "alice", "contract", "approve", NS, &hash[..12]])
        .await?;
    ensure!(own.code == 5, "{own}");
    let approved = sbctl
        .run_json(&[
            "--as",
            "bob",
            "contract",
            "approve",
            NS,
            &hash[..12],
            "-m",
            "reviewed",
            "--json",
        ])
        .await?;
    ensure!(
        approved["active"]["hash"] == json!(hash)
            && approved["active"]["approved_by"] == json!("bob")
            && approved["proposal"].is_null(),
        "{approved}"
    );

    // In force now: a new set without owners is refused at seal.
    std::fs::write(
        set.path().join("tables/orders.json"),
        r#"{"name": "orders", "v": 2}"#,
    )?;
    let refused = sbctl.run(&["stage", NS, &set_path]).await?;
    ensure!(refused.code == 4, "{refused}");
    ensure!(
        refused
            .stderr
            .contains("tables/orders: (root): \"owner\" is a required property"),
        "{refused}"
    );

    let audit = sbctl.run_json(&["audit", NS, "--json"]).await?;
    let records = audit["records"].as_array().context("records")?;
    let find = |action: &str| records.iter().find(|r| r["action"] == action).cloned();
    let proposal = find("contract-proposed").context("no contract-proposed record")?;
    ensure!(
        proposal["actor"] == "alice" && proposal["reason"] == "owners are required",
        "{proposal}"
    );
    let approval = find("contract-approved").context("no contract-approved record")?;
    ensure!(
        approval["actor"] == "bob" && approval["detail"]["hash"] == json!(hash),
        "{approval}"
    );
    ensure!(
        records
            .iter()
            .any(|r| r["action"] == "denied" && r["actor"] == "alice"),
        "the self-approval is not audited"
    );
    Ok(())
}

/// Acceptance 5: a rule that never ends, or that builds an unbounded value, is stopped at its
/// limit and the seal is refused with a clear message, while the coordinator keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_rule_is_stopped_at_its_limit_and_the_coordinator_keeps_serving() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let prefix = unique_prefix();
    let coordinator = Coordinator::start_with(
        &etcd.endpoint(),
        &prefix,
        &["--rule-time-limit-ms", "1000", "--rule-memory-mb", "256"],
    )
    .await?;
    let mut admin = AdminClient::connect(coordinator.grpc_url()).await?;
    let set = set_of(&[("tables/orders", json!({"owner": "sales", "grants": ["x"]}))])?;
    // Under the same limits an ordinary rule passes, so a refusal below is the rule's doing.
    set_contract(&mut admin, &contract(&[("rules/grants.rego", GRANTS_RULE)])).await?;
    if let Err(status) = stage_directly(&mut admin, &set, false).await? {
        bail!(
            "an ordinary rule failed under the limits: {}",
            status.message()
        );
    }
    let set = set_of(&[("tables/orders", json!({"owner": "sales", "grants": ["y"]}))])?;
    let cases = [
        (
            "rules/forever.rego",
            "time limit",
            "package forever\nimport rego.v1\ndeny contains \"never\" if {\n  some i in numbers.range(1, 3000)\n  some j in numbers.range(1, 3000)\n  some k in numbers.range(1, 3000)\n  i + j + k < 0\n}\n",
        ),
        (
            "rules/grow.rego",
            "memory limit",
            "package grow\nimport rego.v1\ndeny contains \"never\" if {\n  big := [concat(\"\", [\"x\", format_int(i, 10)]) | some i in numbers.range(1, 1000000000)]\n  count(big) < 0\n}\n",
        ),
    ];
    for (name, limit, source) in cases {
        set_contract(&mut admin, &contract(&[(name, source)])).await?;
        let started = Instant::now();
        let mut seal_client = admin.clone();
        let seal_set = set.clone();
        let seal =
            tokio::spawn(async move { stage_directly(&mut seal_client, &seal_set, false).await });
        // The coordinator answers other requests while the rule runs.
        let mut answered = 0;
        while !seal.is_finished() {
            status_json(&mut admin).await?;
            answered += 1;
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{name}: the seal did not end within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let message = refused(seal.await??, name)?;
        ensure!(message.contains(limit), "{name}: {message}");
        ensure!(message.contains("sbctl contract set"), "{name}: {message}");
        println!(
            "{name}: refused after {:.2} s ({message}); status answered {answered} times meanwhile",
            started.elapsed().as_secs_f64()
        );
        ensure!(answered > 0, "{name}: status was never asked");
    }
    coordinator.wait_healthy(Duration::from_secs(5)).await?;
    Ok(())
}

/// The seal commits only under the contract that checked the set: a contract set between the
/// check and the seal's transaction makes the seal a conflict (run stage again), never a seal
/// that the contract in force did not judge. A delay point holds the seal open for 4 s after
/// the check has been logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_changed_while_a_set_is_checked_makes_the_seal_a_conflict() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    let prefix = unique_prefix();
    let coordinator = Coordinator::start_with_env(
        &etcd.endpoint(),
        &prefix,
        &[],
        &[("FAILPOINTS", "seal-after-check=return(4000)")],
    )
    .await?;
    let mut admin = AdminClient::connect(coordinator.grpc_url()).await?;
    set_contract(&mut admin, &contract(&[])).await?;
    let set = set_of(&[("tables/orders", json!({"owner": "sales", "grants": ["*"]}))])?;
    let mut seal_client = admin.clone();
    let seal = tokio::spawn(async move { stage_directly(&mut seal_client, &set, false).await });
    switchboard_tests::wait_until(
        Duration::from_secs(20),
        "the set checked against the contract",
        async || {
            Ok(coordinator
                .log_tail(200)
                .contains("staged set checked against the contract"))
        },
    )
    .await?;
    // A stricter contract while the seal waits: this set would break its rule.
    set_contract(&mut admin, &contract(&[("rules/grants.rego", GRANTS_RULE)])).await?;
    match seal.await?? {
        Ok(sealed) => bail!(
            "sealed under a contract that no longer holds: {sealed}\n{}",
            coordinator.log_tail(30)
        ),
        Err(status) => {
            ensure!(status.code() == tonic::Code::Aborted, "{status:?}");
            ensure!(
                status.message().contains("the contract of catalog changed"),
                "{status:?}"
            );
        }
    }
    let states = slot_states(&mut admin).await?;
    ensure!(
        states["blue"] != "sealed" && states["green"] != "sealed",
        "a slot was sealed: {states}"
    );
    Ok(())
}

/// With `destructive-requires-approval`, a version whose seal allowed destructive changes
/// needs another person's approval before a canary: the seal records why, routing refuses
/// until the approval exists, and the approval by someone else lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destructive_changes_need_an_approval_when_the_policy_says_so() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    sbctl
        .run(&[
            "policy",
            "set",
            NS,
            "--destructive-requires-approval",
            "true",
        ])
        .await?
        .ensure_success()?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("tables"))?;
    std::fs::write(dir.path().join("tables/a.json"), r#"{"owner": "x"}"#)?;
    std::fs::write(dir.path().join("tables/b.json"), r#"{"owner": "y"}"#)?;
    let path = dir.path().display().to_string();
    sbctl
        .run(&["--as", "alice", "stage", NS, &path])
        .await?
        .ensure_success()?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;

    std::fs::remove_file(dir.path().join("tables/b.json"))?;
    let staged = sbctl
        .run_json(&[
            "--as",
            "alice",
            "stage",
            NS,
            &path,
            "--allow-destructive",
            "--json",
        ])
        .await?;
    let reasons = staged["approval_reasons"].to_string();
    ensure!(reasons.contains("1 destructive change(s)"), "{staged}");
    let version = staged["version"]
        .as_str()
        .context("no version")?
        .to_string();

    let refused = sbctl.run(&["canary", NS, "10"]).await?;
    ensure!(refused.code == 4, "{refused}");
    ensure!(
        refused.stderr.contains("needs an approval")
            && refused.stderr.contains("its seal requires one"),
        "{refused}"
    );
    sbctl
        .run(&["--as", "bob", "approve", NS, &version])
        .await?
        .ensure_success()?;
    sbctl.run(&["canary", NS, "10"]).await?.ensure_success()?;
    Ok(())
}

//! End-to-end tests of the release pipeline's safety against a real etcd and coordinator:
//! approvals by a second person, gates (etcd key, item, HTTP), history and `rollback --to`,
//! snapshots, drift and `sbctl diff`.

mod common;

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::{Value, json};
use switchboard_proto::time::now_ms;
use switchboard_tests::{Coordinator, EtcdServer, SbctlRunner, TestEnv, unique_prefix, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "catalog";
const REFUSED: i32 = 4;
const NOT_PERMITTED: i32 = 5;

/// Runs sbctl expecting exit `code` and `says` on stderr; returns stderr.
async fn expect_exit(runner: &SbctlRunner, args: &[&str], code: i32, says: &str) -> Result<String> {
    let output = runner.run(args).await?.ensure_code(code)?;
    ensure!(
        output.stderr.contains(says),
        "expected {says:?} on stderr of {args:?}:\n{output}"
    );
    Ok(output.stderr)
}

fn records(trail: &Value) -> Vec<Value> {
    trail["records"].as_array().cloned().unwrap_or_default()
}

/// Acceptance 2: with approval required, the stager's own approval is refused (5), an
/// approval of another version does not count, and the flip goes through after a proper one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_needs_the_approval_of_a_second_person_for_its_exact_version() -> Result<()> {
    let otto = new_user("otto", &["operator"]).await?;
    let alice = new_user("alice", &["approver"]).await?;
    let ada = new_user("ada", &["admin"]).await?;
    let dir = tempfile::tempdir()?;
    let auth = write_auth_file(dir.path(), &[&otto, &alice, &ada])?;
    let etcd = EtcdServer::start().await?;
    let coordinator =
        Coordinator::start_with(&etcd.endpoint(), &unique_prefix(), &["--auth", &auth]).await?;
    let as_user = |user: &User| coordinator.sbctl().env("SWITCHBOARD_TOKEN", &user.token);
    let (operator, approver, admin) = (as_user(&otto), as_user(&alice), as_user(&ada));
    let sets: Vec<String> = ["g1", "g2", "g3"]
        .iter()
        .map(|g| write_set(dir.path(), g, 20, 50).map(|p| p.display().to_string()))
        .collect::<Result<_>>()?;

    admin
        .run(&[
            "policy",
            "set",
            NS,
            "--require-approval",
            "true",
            "-m",
            "two people",
        ])
        .await?
        .ensure_success()?;
    let v1 = stage(&operator, NS, &sets[0]).await?;
    let approved = approver
        .run_json(&["approve", NS, &v1, "-m", "looks right"])
        .await?;
    assert_eq!(approved["approved_by"], "alice", "{approved}");
    assert_eq!(approved["staged_by"], "otto", "{approved}");

    // Restaging replaces v1 in the slot: the approval of v1 does not count for v2.
    let v2 = stage(&operator, NS, &sets[1]).await?;
    expect_exit(
        &operator,
        &["flip", NS],
        REFUSED,
        &format!("version {v2} of catalog needs an approval"),
    )
    .await?;
    assert!(status(&admin, NS).await?["active"].is_null());

    approver
        .run(&["approve", NS, &v2])
        .await?
        .ensure_success()?;
    let shown = status(&admin, NS).await?;
    assert_eq!(shown["approvals"][0]["version"], v2.as_str(), "{shown}");
    operator
        .run(&["flip", NS, "-m", "approved"])
        .await?
        .ensure_success()?;
    assert_eq!(status(&admin, NS).await?["active"]["version"], v2.as_str());

    // Whoever staged a version may not approve it, even an admin; the denial is audited.
    let v3 = stage(&admin, NS, &sets[2]).await?;
    expect_exit(
        &admin,
        &["approve", NS, &v3],
        NOT_PERMITTED,
        &format!("ada staged version {v3} of catalog and may not approve it"),
    )
    .await?;
    expect_exit(
        &admin,
        &["canary", NS, "10"],
        REFUSED,
        "an approver other than ada",
    )
    .await?;
    approver
        .run(&["approve", NS, &v3])
        .await?
        .ensure_success()?;
    admin.run(&["canary", NS, "10"]).await?.ensure_success()?;
    // A rollback never waits for anyone.
    operator.run(&["rollback", NS]).await?.ensure_success()?;

    let trail = admin.run_json(&["audit", NS]).await?;
    let all = records(&trail);
    let flip = all
        .iter()
        .find(|r| r["action"] == "flip")
        .context("the flip's record")?;
    assert_eq!(flip["detail"]["approved_by"]["approver"], "alice", "{flip}");
    let approvals: Vec<&Value> = all.iter().filter(|r| r["action"] == "approve").collect();
    assert_eq!(approvals.len(), 3, "{trail:#}");
    assert!(
        all.iter().any(|r| r["action"] == "denied"
            && r["actor"] == "ada"
            && r["detail"]["rpc"] == "Approve"),
        "the self-approval is audited: {trail:#}"
    );
    admin
        .run(&["audit", NS, "--verify"])
        .await?
        .ensure_success()?;
    Ok(())
}

/// Acceptance 4: an etcd-key gate that reads "migration in progress" blocks a flip (exit 4
/// naming the gate and the value); with `--wait-for-gates` the flip happens as soon as the key
/// changes, and its commit comes after the key's change in etcd's own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_key_gate_holds_a_flip_until_the_key_changes() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    let set1 = write_set(dir.path(), "g1", 20, 50)?.display().to_string();
    let set2 = write_set(dir.path(), "g2", 20, 50)?.display().to_string();
    stage_and_flip(&env, NS, &set1).await?;
    let mut client = env.etcd_client().await?;
    let gate_key = format!("/apps{}/migration", env.prefix());
    client
        .put(gate_key.as_str(), "migration in progress", None)
        .await?;
    set_etcd_key_gate(&sbctl, NS, "migration", &gate_key, "done").await?;
    let v2 = stage(&sbctl, NS, &set2).await?;
    let epoch_before = epoch(&sbctl, NS).await?;

    let refusal = expect_exit(
        &sbctl,
        &["flip", NS],
        REFUSED,
        "gate migration saw \"migration in progress\", needs == \"done\"",
    )
    .await?;
    assert!(refusal.contains(&v2), "{refusal}");
    expect_exit(&sbctl, &["gate", "check", NS], REFUSED, "blocked").await?;

    let waiter = sbctl.spawn(&[
        "flip",
        NS,
        "--wait-for-gates",
        "--timeout",
        "60",
        "-m",
        "after the migration",
    ])?;
    wait_until(DEADLINE, "sbctl to wait for the gate", async || {
        Ok(waiter.log().contains("waiting for gates: "))
    })
    .await?;
    // The coordinator refuses the waiting flip again and again while the key holds.
    let refusals = |log: &str| log.matches("is blocked: gate migration").count();
    wait_until(DEADLINE, "three refused attempts", async || {
        Ok(refusals(&env.coordinator.log_tail(100_000)) >= 3)
    })
    .await?;
    assert_eq!(
        epoch(&sbctl, NS).await?,
        epoch_before,
        "flipped while blocked"
    );

    let changed_at = now_ms();
    let put = client.put(gate_key.as_str(), "done", None).await?;
    let changed_revision = put.header().context("put header")?.revision();
    let exit = waiter.wait(DEADLINE).await?;
    ensure!(exit.success(), "the waiting flip failed:\n{}", waiter.log());

    let after = status(&sbctl, NS).await?;
    assert_eq!(after["active"]["version"], v2.as_str(), "{after}");
    let routing = client.get(env.keys().routing(NS), None).await?;
    let routing_revision = routing.kvs().first().context("routing")?.mod_revision();
    assert!(
        routing_revision > changed_revision,
        "the flip (revision {routing_revision}) came before the key changed ({changed_revision})"
    );
    let flipped_at = after["last_change"]["at_ms"].as_u64().context("at_ms")?;
    let delay = flipped_at.saturating_sub(changed_at);
    println!("flip committed {delay} ms after the gate key changed");
    assert!(
        delay < 1000,
        "the flip came {delay} ms after the key changed"
    );

    let trail = sbctl.run_json(&["audit", NS]).await?;
    let flip = records(&trail)
        .into_iter()
        .rev()
        .find(|r| r["action"] == "flip")
        .context("the flip's record")?;
    assert_eq!(flip["detail"]["gates"][0]["name"], "migration", "{flip}");
    assert_eq!(flip["detail"]["gates"][0]["saw"], "\"done\"", "{flip}");
    assert_eq!(flip["reason"], "after the migration", "{flip}");
    Ok(())
}

/// A one-route HTTP server whose answer the test changes: (status, body).
async fn answering_server(answer: Arc<Mutex<(u16, String)>>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/ready", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let (code, body) = answer.lock().map(|a| a.clone()).unwrap_or_default();
                let response = format!(
                    "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(url)
}

/// Item gates read the target set; HTTP gates want a 2xx and, if asked, a JSON value; an etcd
/// gate may not look inside the switchboard's own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_and_http_gates_check_the_target_set_and_a_url() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    // Enough items for several chunks, so that the item is found by a search over chunks.
    let set1 = write_set(dir.path(), "g1", 3000, 100)?
        .display()
        .to_string();
    let set2 = write_set(dir.path(), "g2", 3000, 100)?
        .display()
        .to_string();
    stage_and_flip(&env, NS, &set1).await?;
    stage(&sbctl, NS, &set2).await?;

    let item_gate = |value: &str| {
        vec![
            "gate",
            "set",
            NS,
            "schema",
            "--item",
            "items/k02345",
            "--pointer",
            "/generation",
            "--op",
            "==",
            "--value",
        ]
        .into_iter()
        .map(str::to_string)
        .chain([value.to_string()])
        .collect::<Vec<String>>()
    };
    let args = item_gate("g3");
    sbctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await?
        .ensure_success()?;
    expect_exit(
        &sbctl,
        &["flip", NS],
        REFUSED,
        "gate schema saw \"g2\", needs == \"g3\"",
    )
    .await?;
    let args = item_gate("g2");
    sbctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await?
        .ensure_success()?;
    let report = sbctl.run_json(&["gate", "check", NS]).await?;
    assert_eq!(report["passed"], true, "{report}");
    // A canary is gated when it rises, not when it falls back.
    sbctl.run(&["canary", NS, "20"]).await?.ensure_success()?;
    let args = item_gate("g3");
    sbctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await?
        .ensure_success()?;
    expect_exit(&sbctl, &["canary", NS, "30"], REFUSED, "gate schema saw").await?;
    sbctl.run(&["canary", NS, "10"]).await?.ensure_success()?;
    let args = item_gate("g2");
    sbctl
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await?
        .ensure_success()?;

    let answer = Arc::new(Mutex::new((503u16, String::from("{}"))));
    let url = answering_server(answer.clone()).await?;
    sbctl
        .run(&[
            "gate",
            "set",
            NS,
            "ready",
            "--http",
            &url,
            "--pointer",
            "/ready",
            "--op",
            "==",
            "--value",
            "true",
        ])
        .await?
        .ensure_success()?;
    expect_exit(&sbctl, &["flip", NS], REFUSED, "gate ready saw HTTP 503").await?;
    if let Ok(mut a) = answer.lock() {
        *a = (200, r#"{"ready": false}"#.into());
    }
    expect_exit(
        &sbctl,
        &["flip", NS],
        REFUSED,
        "gate ready saw false, needs a 2xx answer with == true",
    )
    .await?;
    if let Ok(mut a) = answer.lock() {
        *a = (200, r#"{"ready": true}"#.into());
    }
    sbctl.run(&["flip", NS]).await?.ensure_success()?;

    let gates = sbctl.run_json(&["gate", "list", NS]).await?;
    assert_eq!(gates.as_array().map(Vec::len), Some(2), "{gates}");
    sbctl
        .run(&["gate", "remove", NS, "ready"])
        .await?
        .ensure_success()?;
    let gates = sbctl.run_json(&["gate", "list", NS]).await?;
    assert_eq!(gates[0]["name"], "schema", "{gates}");
    assert_eq!(gates.as_array().map(Vec::len), Some(1), "{gates}");
    expect_exit(
        &sbctl,
        &["gate", "remove", NS, "ready"],
        REFUSED,
        "no gate named ready",
    )
    .await?;

    let inside = format!("{}/ns/{NS}/routing", env.prefix());
    expect_exit(
        &sbctl,
        &[
            "gate",
            "set",
            NS,
            "bad",
            "--etcd-key",
            &inside,
            "--op",
            "==",
            "--value",
            "x",
        ],
        REFUSED,
        "inside the switchboard's own prefix",
    )
    .await?;
    Ok(())
}

/// Acceptance 6: snapshot save, wipe the namespace, restore: the same version id and checksum
/// come back. A damaged snapshot is refused, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_the_same_version_after_a_wipe() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let (v1, _) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let before = status(&sbctl, NS).await?;
    let checksum = before["slots"]["blue"]["checksum"].clone();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("catalog.snapshot").display().to_string();
    let saved = sbctl.run_json(&["snapshot", "save", NS, &file]).await?;
    assert_eq!(saved["version"], v1.as_str(), "{saved}");
    assert_eq!(saved["checksum"], checksum, "{saved}");

    let mut client = env.etcd_client().await?;
    let namespace_prefix = format!("{}/ns/{NS}/", env.prefix());
    let deleted = client
        .delete(
            namespace_prefix.as_str(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    ensure!(
        deleted.deleted() > 10,
        "the wipe deleted {}",
        deleted.deleted()
    );
    let wiped = status(&sbctl, NS).await?;
    assert!(
        wiped["slots"]["blue"].is_null() && wiped["active"].is_null(),
        "{wiped}"
    );

    let mut damaged = std::fs::read(&file)?;
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x20;
    let damaged_file = dir.path().join("damaged.snapshot").display().to_string();
    std::fs::write(&damaged_file, damaged)?;
    expect_exit(
        &sbctl,
        &["snapshot", "restore", NS, &damaged_file],
        REFUSED,
        &damaged_file,
    )
    .await?;
    assert!(status(&sbctl, NS).await?["slots"]["blue"].is_null());

    let restored = sbctl.run_json(&["snapshot", "restore", NS, &file]).await?;
    assert_eq!(restored["version"], v1.as_str(), "{restored}");
    let after = status(&sbctl, NS).await?;
    assert_eq!(after["slots"]["blue"]["version"], v1.as_str(), "{after}");
    assert_eq!(after["slots"]["blue"]["checksum"], checksum, "{after}");
    assert_eq!(after["slots"]["blue"]["state"], "sealed", "{after}");
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    assert_eq!(status(&sbctl, NS).await?["active"]["version"], v1.as_str());
    Ok(())
}

/// `sbctl history` lists the versions with who, when and why; `rollback --to` brings back a
/// version no slot holds any more, and a snapshot can be saved of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_versions_and_rollback_to_restages_a_retained_one() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    let versions =
        release_generations(&sbctl, NS, dir.path(), &["g1", "g2", "g3"], (30, 40)).await?;
    let history = sbctl.run_json(&["history", NS]).await?;
    let listed: Vec<(String, String)> = history["versions"]
        .as_array()
        .context("versions")?
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap_or_default().to_string(),
                v["role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = vec![
        (versions[2].clone(), "active".into()),
        (versions[1].clone(), "previous".into()),
        (versions[0].clone(), String::new()),
    ];
    assert_eq!(listed, expected, "{history:#}");
    let oldest = &history["versions"][2];
    assert_eq!(oldest["retained"], true, "{oldest}");
    assert_eq!(oldest["message"], "test stage", "{oldest}");
    assert!(
        oldest["staged_by"].as_str().is_some_and(|s| !s.is_empty()),
        "{oldest}"
    );

    let text = sbctl.run(&["history", NS]).await?.ensure_success()?;
    assert!(text.stdout.contains(&versions[0]), "{text}");

    // A `--to` that a gate refuses changes nothing: the idle slot still holds the previous
    // version, which a plain rollback needs.
    let slots_before = status(&sbctl, NS).await?["slots"].clone();
    let hold = format!("/apps{}/hold", env.prefix());
    sbctl
        .run(&[
            "gate",
            "set",
            NS,
            "hold",
            "--etcd-key",
            &hold,
            "--op",
            "==",
            "--value",
            "go",
        ])
        .await?
        .ensure_success()?;
    expect_exit(
        &sbctl,
        &["rollback", NS, "--to", &versions[0]],
        REFUSED,
        "gate hold saw null",
    )
    .await?;
    assert_eq!(status(&sbctl, NS).await?["slots"], slots_before);
    sbctl
        .run(&["gate", "remove", NS, "hold"])
        .await?
        .ensure_success()?;

    sbctl
        .run(&[
            "rollback",
            NS,
            "--to",
            &versions[0],
            "-m",
            "back to the first",
        ])
        .await?
        .ensure_success()?;
    let after = status(&sbctl, NS).await?;
    assert_eq!(after["active"]["version"], versions[0].as_str(), "{after}");
    let trail = sbctl.run_json(&["audit", NS]).await?;
    let all = records(&trail);
    let last_two: Vec<&str> = all
        .iter()
        .rev()
        .take(2)
        .map(|r| r["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(last_two, ["rollback", "stage"], "{trail:#}");
    let restage = &all[all.len() - 2];
    assert_eq!(
        restage["reason"],
        format!("rollback to {}: back to the first", versions[0])
    );
    expect_exit(
        &sbctl,
        &["rollback", NS, "--to", "0000000000000000"],
        REFUSED,
        "never staged",
    )
    .await?;
    expect_exit(
        &sbctl,
        &["rollback", NS, "--to", &versions[0]],
        REFUSED,
        "already active",
    )
    .await?;

    // A snapshot of a version in no slot: the middle one, which --to just replaced.
    let file = dir.path().join("v2.snapshot").display().to_string();
    let saved = sbctl
        .run_json(&["snapshot", "save", NS, &file, "--version", &versions[1]])
        .await?;
    assert_eq!(saved["version"], versions[1].as_str(), "{saved}");
    Ok(())
}

/// `status` flags a sidecar on the current epoch that serves another checksum; `sbctl diff`
/// exits 0 for the active content and 1 for anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_flagged_and_diff_exits_non_zero_on_a_difference() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let sidecar = env.start_sidecar("honest").await?;
    let dir = tempfile::tempdir()?;
    let set1 = write_set(dir.path(), "g1", 20, 50)?.display().to_string();
    let set2 = write_set(dir.path(), "g2", 20, 50)?.display().to_string();
    let (v1, epoch) = stage_and_flip(&env, NS, &set1).await?;
    sidecar.wait_for_epoch(NS, epoch, DEADLINE).await?;
    wait_until(DEADLINE, "the honest sidecar in status", async || {
        let shown = status(&sbctl, NS).await?;
        Ok(shown["sidecars"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["id"] == "honest" && s["epoch"] == epoch)))
    })
    .await?;

    // A sidecar that serves the right version under a different checksum.
    let forged = json!({
        "id": "forged", "namespace": NS, "epoch": epoch,
        "serving": [{"slot": "blue", "version": v1, "checksum": "0".repeat(64)}],
        "etcd_reachable": true, "at_ms": now_ms(),
    });
    let mut client = env.etcd_client().await?;
    client
        .put(env.keys().health(NS, "forged"), forged.to_string(), None)
        .await?;
    let shown = status(&sbctl, NS).await?;
    let sidecars = shown["sidecars"].as_array().context("sidecars")?;
    let drift = |id: &str| {
        sidecars
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["drift"].clone())
    };
    assert_eq!(drift("honest"), Some(Value::Null), "{shown:#}");
    let forged_drift = drift("forged").context("the forged sidecar")?;
    assert!(
        forged_drift
            .as_str()
            .is_some_and(|d| d.contains("checksum 000000000000")),
        "{shown:#}"
    );
    let text = sbctl.run(&["status", NS]).await?.ensure_success()?;
    assert!(
        text.stdout.contains("forged") && text.stdout.contains("DRIFT"),
        "{text}"
    );

    let same = sbctl.run(&["diff", NS, &set1]).await?.ensure_success()?;
    assert!(same.stdout.contains("no changes"), "{same}");
    expect_exit(
        &sbctl,
        &["diff", NS, &set2],
        1,
        "differs from the active set of catalog",
    )
    .await?;
    let json_diff = sbctl
        .run(&["--json", "diff", NS, &set2])
        .await?
        .ensure_code(1)?;
    let document: Value = serde_json::from_str(&json_diff.stdout)?;
    assert_eq!(document["identical"], false, "{document}");
    assert_eq!(
        document["changed"].as_array().map(Vec::len),
        Some(20),
        "{document}"
    );
    Ok(())
}

/// Gates live in the policy, so a policy change made on a stale read (two admins at once) is a
/// conflict instead of a lost update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_decided_on_a_stale_read_is_a_conflict() -> Result<()> {
    use switchboard_proto::Policy;
    use switchboard_proto::pb::{SetPolicyRequest, admin_client::AdminClient};
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let read_before = Policy::default();
    sbctl
        .run(&[
            "gate",
            "set",
            NS,
            "ready",
            "--http",
            "http://127.0.0.1:1/ready",
        ])
        .await?
        .ensure_success()?;
    let mut client = AdminClient::connect(env.coordinator.grpc_url()).await?;
    let overwrite = SetPolicyRequest {
        namespace: NS.into(),
        policy_json: serde_json::to_string(&Policy {
            bake_seconds: 20,
            ..read_before.clone()
        })?,
        reason: "from a stale read".into(),
        expected_policy_json: serde_json::to_string(&read_before)?,
    };
    // A write that does not say what it was decided on is refused: it could drop the gates.
    let blind = SetPolicyRequest {
        expected_policy_json: String::new(),
        ..overwrite.clone()
    };
    let refused = client
        .set_policy(blind)
        .await
        .err()
        .context("a blind policy write went through")?;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let refused = client
        .set_policy(overwrite)
        .await
        .err()
        .context("a stale policy change went through")?;
    assert_eq!(refused.code(), tonic::Code::Aborted, "{refused:?}");
    assert!(
        refused.message().contains("changed underneath"),
        "{refused:?}"
    );
    let policy = sbctl.run_json(&["policy", "show", NS]).await?;
    assert_eq!(
        policy["gates"][0]["name"], "ready",
        "the gate was lost: {policy}"
    );
    assert_eq!(policy["bake_seconds"], 300, "{policy}");
    Ok(())
}

/// An approval counts only when it comes from someone other than whoever staged the version:
/// a version brought back by `rollback --to` is restaged by whoever asks for it, so an approver
/// who brings back a version they approved themselves is refused (exit 4) until another person
/// approves it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_by_whoever_restages_a_version_does_not_count() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let dir = tempfile::tempdir()?;
    sbctl
        .run(&[
            "policy",
            "set",
            NS,
            "--bake",
            "0",
            "--require-approval",
            "true",
        ])
        .await?
        .ensure_success()?;
    let mut versions = Vec::new();
    for generation in ["r1", "r2", "r3"] {
        let set = write_set(dir.path(), generation, 10, 10)?;
        let version = stage_with(&sbctl, NS, &set.display().to_string(), &["--as", "otto"]).await?;
        sbctl
            .run(&["--as", "alice", "approve", NS, &version])
            .await?
            .ensure_success()?;
        if generation != "r3" {
            sbctl
                .run(&["--as", "otto", "flip", NS])
                .await?
                .ensure_success()?;
        }
        versions.push(version);
    }
    // v1 is in no slot now (v3 replaced it): bringing it back restages it as alice.
    let v1 = &versions[0];
    expect_exit(
        &sbctl,
        &["--as", "alice", "rollback", NS, "--to", v1],
        REFUSED,
        &format!("version {v1} of catalog needs an approval"),
    )
    .await?;
    sbctl
        .run(&["--as", "bob", "approve", NS, v1])
        .await?
        .ensure_success()?;
    sbctl
        .run(&["--as", "alice", "rollback", NS, "--to", v1])
        .await?
        .ensure_success()?;
    ensure!(status(&sbctl, NS).await?["active"]["version"] == v1.as_str());
    Ok(())
}

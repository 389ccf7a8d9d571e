//! Races against the compares in the coordinator's transactions (issue 16), made deterministic
//! with the coordinator's pause points (`crash::pause_point`): a change is held between its
//! reads and its transaction, the competing change is made, and the first change is let go.
//! Each test names the compare it pins; removing that compare makes it fail (`make mutants`
//! removes each in turn and runs its test).
//!
//! Where the API itself can make the competing change, the test makes it through the API. Many
//! compares guard against writers other than this coordinator's API (an operator's `etcdctl`,
//! a restore, a coordinator of another release): every change through the API also appends an
//! audit record, and the compare of that record's key would refuse the race first, hiding the
//! compare under test. Those tests write the competing change into etcd directly, as such a
//! writer would.

mod common;

use std::path::Path;
use std::process::ExitStatus;

use anyhow::{Context, Result, bail, ensure};
use common::*;
use etcd_client::Client;
use serde_json::Value;
use switchboard_coordinator::error::CoordinatorError;
use switchboard_coordinator::janitor;
use switchboard_coordinator::release::{Actor, Releases};
use switchboard_coordinator::routing::{ChangeRequest, Fence};
use switchboard_coordinator::store::Store;
use switchboard_proto::Slot;
use switchboard_tests::{ChildProcess, TestEnv, wait_until};
use tempfile::TempDir;

const NS: &str = "catalog";
const CONFLICT: i32 = 3;
const REFUSED: i32 = 4;

/// The pause point of a routing change, right before its transaction.
const ROUTING_PAUSE: &str = "routing-pause-before-txn";
/// The pause point of a stage's beginning, after it chose the idle slot.
const STAGE_PAUSE: &str = "stage-pause-before-txn";
/// The pause point of a seal, after the contract's judgement.
const SEAL_PAUSE: &str = "seal-pause-before-txn";
/// The pause point of an audited change of one record (policy, approval, contract).
const AUDITED_PAUSE: &str = "audited-pause-before-txn";
/// The pause point of a housekeeping round that decided what to delete.
const JANITOR_PAUSE: &str = "janitor-pause-before-txn";

/// A stack whose coordinator has every pause point, handshaking in a temp dir, and a place
/// for the sets the test stages.
struct Race {
    env: TestEnv,
    dir: TempDir,
    sets: TempDir,
}

impl Race {
    async fn start() -> Result<Self> {
        Self::start_with(&[]).await
    }

    /// With extra coordinator arguments (the janitor's interval and retention).
    async fn start_with(args: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let failpoints = [
            ROUTING_PAUSE,
            STAGE_PAUSE,
            SEAL_PAUSE,
            AUDITED_PAUSE,
            JANITOR_PAUSE,
        ]
        .map(|point| format!("{point}=return({})", dir.path().display()))
        .join(";");
        let env =
            TestEnv::start_with_coordinator(&[NS], args, &[("FAILPOINTS", &failpoints)]).await?;
        Ok(Self {
            env,
            dir,
            sets: tempfile::tempdir()?,
        })
    }

    /// Arms `point`: the next request that reaches it waits there.
    fn arm(&self, point: &str) -> Result<()> {
        std::fs::write(self.dir.path().join(format!("{point}.armed")), b"")
            .context("arming the pause point")
    }

    /// Waits until a request is held at `point`.
    async fn paused(&self, point: &str) -> Result<()> {
        let marker = self.dir.path().join(format!("{point}.paused"));
        wait_until(DEADLINE, &format!("a change held at {point}"), async || {
            Ok(marker.exists())
        })
        .await
    }

    /// Starts `sbctl args` with `point` armed, and waits until the change is held there.
    async fn hold(&self, point: &str, args: &[&str]) -> Result<ChildProcess> {
        self.arm(point)?;
        let change = self.env.sbctl().spawn(args)?;
        self.paused(point).await?;
        Ok(change)
    }

    /// Lets the change held at `point` go on, and waits for its sbctl: how it exited, and
    /// what it printed.
    async fn finish(&self, point: &str, change: ChildProcess) -> Result<(ExitStatus, String)> {
        self.resume(point).await?;
        let exit = change.wait(DEADLINE).await?;
        Ok((exit, change.log()))
    }

    /// `sbctl contract set` of `dir`, held before its transaction.
    async fn set_contract(&self, dir: &Path) -> Result<ChildProcess> {
        let dir = dir.display().to_string();
        self.hold(AUDITED_PAUSE, &["contract", "set", NS, &dir, "-m", "m"])
            .await
    }

    /// dave's `sbctl contract approve` of the proposal `hash`, held before its transaction.
    async fn approve_contract(&self, hash: &str) -> Result<ChildProcess> {
        let short = hash.get(..12).context("a short hash")?;
        let args = ["--as", "dave", "contract", "approve", NS, short, "-m", "m"];
        self.hold(AUDITED_PAUSE, &args).await
    }

    /// Sets the policy's `--require-approval`.
    async fn require_approval(&self, required: bool) -> Result<()> {
        let value = required.to_string();
        self.env
            .sbctl()
            .run(&["policy", "set", NS, "--require-approval", &value, "-m", "m"])
            .await?
            .ensure_success()?;
        Ok(())
    }

    /// Lets the request held at `point` go on.
    async fn resume(&self, point: &str) -> Result<()> {
        let resume = self.dir.path().join(format!("{point}.resume"));
        std::fs::write(&resume, b"").context("resuming")?;
        // The held change takes the file away once it has gone on (its pause marker first):
        // until then the marker of this pause would pass for the next one.
        wait_until(
            DEADLINE,
            &format!("the change held at {point} to go on"),
            async || Ok(!resume.exists()),
        )
        .await
    }

    /// The path of a new set of ten items, all saying `generation`.
    fn set(&self, generation: &str) -> Result<String> {
        Ok(write_set(self.sets.path(), generation, 10, 20)?
            .display()
            .to_string())
    }

    async fn etcd(&self) -> Result<Client> {
        self.env.etcd_client().await
    }

    /// The coordinator's library on the same etcd and prefix, to read what etcd holds.
    async fn releases(&self) -> Result<Releases> {
        Ok(Releases::new(Store::new(
            self.etcd().await?,
            self.env.keys(),
        )))
    }

    /// Stages and flips a set (generation `<name>1`), then stages another (`<name>2`): the
    /// active version, the epoch, and the staged version.
    async fn serving_and_staged(&self, name: &str) -> Result<(String, u64, String)> {
        let (active, epoch) =
            stage_and_flip(&self.env, NS, &self.set(&format!("{name}1"))?).await?;
        let staged = stage(&self.env.sbctl(), NS, &self.set(&format!("{name}2"))?).await?;
        Ok((active, epoch, staged))
    }

    /// Writes a key of garbage that the janitor's next round will find and delete, so that
    /// the round reaches its pause point: a test that holds it knows the round before is over.
    async fn garbage_for_the_next_round(&self) -> Result<()> {
        let key = format!("{}deadbeef", self.env.keys().manifests_prefix(NS));
        self.etcd().await?.put(key, "garbage", None).await?;
        Ok(())
    }

    /// No bake time, so that each stage may follow a flip at once.
    async fn no_bake(&self) -> Result<()> {
        self.env
            .sbctl()
            .run(&["policy", "set", NS, "--bake", "0", "-m", "no bake"])
            .await?
            .ensure_success()?;
        Ok(())
    }
}

/// The change exited 4 (refused), saying `why`.
fn refused(exit: ExitStatus, log: &str, why: &str) -> Result<()> {
    ensure!(
        exit.code() == Some(REFUSED) && log.contains(why),
        "the change was not refused ({exit:?}; expected {why:?}):\n{log}"
    );
    Ok(())
}

/// Routing is still at `epoch` with `version` active.
async fn routing_unchanged(race: &Race, epoch: u64, version: &str) -> Result<()> {
    let after = status(&race.env.sbctl(), NS).await?;
    ensure!(
        after["epoch"] == epoch && after["active"]["version"] == version,
        "routing changed: {after}"
    );
    Ok(())
}

/// The raw value of `key`, if any.
async fn raw(client: &mut Client, key: &str) -> Result<Option<Vec<u8>>> {
    let response = client.get(key, None).await?;
    Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
}

/// The JSON record at `key`, which must exist.
async fn record(client: &mut Client, key: &str) -> Result<Value> {
    let bytes = raw(client, key)
        .await?
        .with_context(|| format!("{key} is missing"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{key} is not JSON"))
}

/// Rewrites the JSON record at `key` with `edit`, as a writer outside the API would.
async fn edit(client: &mut Client, key: &str, edit: impl FnOnce(&mut Value)) -> Result<Value> {
    let mut value = record(client, key).await?;
    edit(&mut value);
    client.put(key, serde_json::to_vec(&value)?, None).await?;
    Ok(value)
}

/// Whether etcd still holds the manifest of `version` and every chunk it names.
async fn retained(releases: &Releases, version: &str) -> Result<bool> {
    let manifest = match releases.manifest(NS, None, Some(version)).await {
        Ok(manifest) => manifest,
        Err(CoordinatorError::Refused(_)) => return Ok(false),
        Err(error) => return Err(error).context(format!("reading the manifest of {version}")),
    };
    let hashes: Vec<String> = manifest.chunks.iter().map(|c| c.hash.clone()).collect();
    Ok(releases
        .store()
        .missing_chunks(NS, &hashes)
        .await?
        .is_empty())
}

// ---------------------------------------------------------------------------------------------
// A routing change's transaction (routing.rs, `change_routing`).
// ---------------------------------------------------------------------------------------------

/// Issue 16, acceptance 2 (the compare of an etcd-key gate's key): a flip whose gate held when
/// it was checked is paused before its transaction; the key changes to a failing value; on
/// resume the transaction's compare of the key fails, the flip is decided again, and the gate
/// refuses it (exit 4, naming the gate and the value it saw). Routing is unchanged. Without the
/// compare, the flip commits on the stale check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_key_that_changes_after_the_check_refuses_the_flip() -> Result<()> {
    let race = Race::start().await?;
    let env = &race.env;
    let sbctl = env.sbctl();
    let (v1, _) = stage_and_flip(env, NS, &race.set("r1")?).await?;
    let mut client = race.etcd().await?;
    let gate_key = format!("/apps{}/migration", env.prefix());
    client.put(gate_key.as_str(), "done", None).await?;
    set_etcd_key_gate(&sbctl, NS, "migration", &gate_key, "done").await?;
    stage(&sbctl, NS, &race.set("r2")?).await?;
    let epoch_before = epoch(&sbctl, NS).await?;

    let flip = race
        .hold(ROUTING_PAUSE, &["flip", NS, "-m", "races the migration"])
        .await?;
    // The gate held when the flip checked it; now the migration starts.
    client
        .put(gate_key.as_str(), "migration in progress", None)
        .await?;
    let (exit, log) = race.finish(ROUTING_PAUSE, flip).await?;
    ensure!(
        exit.code() == Some(REFUSED),
        "the flip was not refused ({exit:?}):\n{log}"
    );
    ensure!(
        log.contains("gate migration saw \"migration in progress\""),
        "the refusal does not name the gate and its value:\n{log}"
    );
    let after = status(&sbctl, NS).await?;
    ensure!(
        epoch(&sbctl, NS).await? == epoch_before && after["active"]["version"] == v1.as_str(),
        "routing changed: {after}"
    );
    Ok(())
}

/// The compare of the routing key: routing written by another writer while a flip is paused
/// (the epoch moved on) makes the flip a conflict (exit 3) when it is decided again, and the
/// routing written meanwhile stands. Without the compare, the flip overwrites it with a routing
/// of the same epoch: two different routings that sidecars cannot tell apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_written_under_a_paused_flip_makes_it_a_conflict() -> Result<()> {
    let race = Race::start().await?;
    race.serving_and_staged("a").await?;
    let key = race.env.keys().routing(NS);
    let mut client = race.etcd().await?;

    let flip = race
        .hold(ROUTING_PAUSE, &["flip", NS, "-m", "races another writer"])
        .await?;
    let written = edit(&mut client, &key, |routing| {
        let epoch = routing["epoch"].as_u64().unwrap_or_default();
        routing["epoch"] = (epoch + 1).into();
        routing["reason"] = "written by another writer".into();
    })
    .await?;
    let (exit, log) = race.finish(ROUTING_PAUSE, flip).await?;
    ensure!(
        exit.code() == Some(CONFLICT),
        "the flip was not a conflict ({exit:?}):\n{}",
        log
    );
    let after = record(&mut client, &key).await?;
    ensure!(
        after == written,
        "the routing written meanwhile was overwritten: {after}"
    );
    Ok(())
}

/// The compare of the rollout record: a canary set by hand ends a running rollout, copying the
/// record it read; the record changes while the canary is paused; decided again, the canary
/// ends the record as it now is. Without the compare, the stale copy overwrites the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_record_changed_under_a_paused_canary_is_read_again() -> Result<()> {
    let race = Race::start().await?;
    let sbctl = race.env.sbctl();
    race.serving_and_staged("o").await?;
    sbctl
        .run(&[
            "rollout",
            NS,
            "--steps",
            "10,50",
            "--interval",
            "3600",
            "-m",
            "slowly",
        ])
        .await?
        .ensure_success()?;
    let key = race.env.keys().rollout(NS);
    let mut client = race.etcd().await?;

    let canary = race
        .hold(ROUTING_PAUSE, &["canary", NS, "20", "-m", "by hand"])
        .await?;
    edit(&mut client, &key, |rollout| {
        rollout["started_by"] = "another writer".into();
    })
    .await?;
    let (exit, log) = race.finish(ROUTING_PAUSE, canary).await?;
    ensure!(exit.success(), "the canary failed:\n{}", log);
    let after = record(&mut client, &key).await?;
    ensure!(
        after["state"] == "aborted" && after["started_by"] == "another writer",
        "the rollout record was overwritten from a stale read: {after}"
    );
    Ok(())
}

/// The compare of the policy: the policy starts requiring approvals while a flip is paused;
/// decided again, the flip is refused for want of one (exit 4). Without the compare, the flip
/// commits under the policy it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_requires_approval_under_a_paused_flip_refuses_it() -> Result<()> {
    let race = Race::start().await?;
    race.no_bake().await?;
    let (v1, epoch_before, _) = race.serving_and_staged("p").await?;
    let mut client = race.etcd().await?;

    let flip = race
        .hold(ROUTING_PAUSE, &["flip", NS, "-m", "races the policy"])
        .await?;
    edit(&mut client, &race.env.keys().policy(NS), |policy| {
        policy["require_approval"] = true.into();
    })
    .await?;
    let (exit, log) = race.finish(ROUTING_PAUSE, flip).await?;
    refused(exit, &log, "needs an approval")?;
    routing_unchanged(&race, epoch_before, &v1).await?;
    Ok(())
}

/// The compare that the approval still exists: it is withdrawn while a flip that needed it is
/// paused; decided again, the flip is refused (exit 4). Without the compare, the flip commits
/// on an approval that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_withdrawn_under_a_paused_flip_refuses_it() -> Result<()> {
    let race = Race::start().await?;
    let sbctl = race.env.sbctl();
    race.no_bake().await?;
    let (v1, epoch_before) = stage_and_flip(&race.env, NS, &race.set("w1")?).await?;
    race.require_approval(true).await?;
    let v2 = stage_with(&sbctl, NS, &race.set("w2")?, &["--as", "alice"]).await?;
    sbctl
        .run(&["--as", "bob", "approve", NS, &v2, "-m", "looks right"])
        .await?
        .ensure_success()?;
    let mut client = race.etcd().await?;

    let flip = race
        .hold(
            ROUTING_PAUSE,
            &["--as", "alice", "flip", NS, "-m", "races the withdrawal"],
        )
        .await?;
    let approvals = race.env.keys().approvals_prefix(NS);
    let deleted = client
        .delete(
            approvals.as_str(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?
        .deleted();
    ensure!(deleted == 1, "{deleted} approvals deleted");
    let (exit, log) = race.finish(ROUTING_PAUSE, flip).await?;
    refused(exit, &log, "needs an approval")?;
    routing_unchanged(&race, epoch_before, &v1).await?;
    Ok(())
}

/// The compare of the target slot: the slot a flip is about to send everyone to starts
/// staging another set while the flip is paused; decided again, the flip finds nothing sealed
/// to flip to and is refused (exit 4). Without the compare, everyone is sent to a slot whose
/// set is half written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_restaged_under_a_paused_flip_is_not_flipped_to() -> Result<()> {
    let race = Race::start().await?;
    let (v1, epoch_before, _) = race.serving_and_staged("t").await?;
    let mut client = race.etcd().await?;

    let flip = race
        .hold(ROUTING_PAUSE, &["flip", NS, "-m", "races a stage"])
        .await?;
    edit(
        &mut client,
        &race.env.keys().slot(NS, Slot::Green),
        |slot| {
            slot["state"] = "staging".into();
            slot["version"] = "another-set".into();
        },
    )
    .await?;
    let (exit, log) = race.finish(ROUTING_PAUSE, flip).await?;
    refused(exit, &log, "")?;
    routing_unchanged(&race, epoch_before, &v1).await?;
    Ok(())
}

/// The fence of the leader's changes (the judge's flip-back, a rollout's step) and of its
/// housekeeping: a coordinator whose election key is gone is no longer the leader, and its
/// writes fail, saying so, and change nothing. With the key standing, the same writes commit.
/// Without the fence's compare, a deposed leader's judge and janitor would act next to the new
/// leader's; without the check of why the write failed, the refusal would read as "busy".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_changes_and_deletions_are_refused() -> Result<()> {
    let race = Race::start().await?;
    let sbctl = race.env.sbctl();
    let (_, _, v2) = race.serving_and_staged("f").await?;
    // v3 replaces v2 in the idle slot: v2 is garbage when no history is retained.
    let v3 = stage(&sbctl, NS, &race.set("f3")?).await?;
    let releases = race.releases().await?;
    ensure!(retained(&releases, &v2).await?, "v2 was collected early");
    let mut client = race.etcd().await?;
    let election_key = format!("{}/test-election/leader", race.env.prefix());
    let elect = async |client: &mut Client| -> Result<Fence> {
        let put = client.put(election_key.as_str(), "leader", None).await?;
        let revision = put.header().context("a put without a header")?.revision();
        Ok(Fence {
            key: election_key.clone().into_bytes(),
            revision,
        })
    };
    let deposed = elect(&mut client).await?;
    client.delete(election_key.as_str(), None).await?;
    let judge = Actor {
        name: "judge".into(),
    };
    let epoch_before = epoch(&sbctl, NS).await?;
    let request = |fence| ChangeRequest {
        ns: NS,
        expected_epoch: epoch_before,
        action: "canary",
        reason: "a step of a rollout",
        actor: &judge,
        fence: Some(fence),
    };

    match releases.set_canary(request(&deposed), 1_000, &v3).await {
        Err(CoordinatorError::Conflict(message)) if message.contains("no longer the leader") => {}
        other => bail!("a deposed leader's canary: {other:?}"),
    }
    ensure!(
        epoch(&sbctl, NS).await? == epoch_before,
        "a deposed leader changed routing"
    );
    match janitor::collect(&releases, NS, 0, Some(&deposed)).await {
        Err(CoordinatorError::Conflict(_)) => {}
        other => bail!("a deposed leader's housekeeping: {other:?}"),
    }
    ensure!(
        retained(&releases, &v2).await?,
        "a deposed leader deleted v2"
    );

    let leader = elect(&mut client).await?;
    releases.set_canary(request(&leader), 1_000, &v3).await?;
    ensure!(epoch(&sbctl, NS).await? == epoch_before + 1);
    janitor::collect(&releases, NS, 0, Some(&leader)).await?;
    ensure!(
        !retained(&releases, &v2).await?,
        "the leader did not collect v2"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The audit trail (release.rs, `append_audit_record`).
// ---------------------------------------------------------------------------------------------

/// The compare that the next audit record's key is free: with the head behind its records (as
/// a restore of an older head leaves it), every change fails and no record is overwritten.
/// Without the compare, the next change rewrites the newest record and forks the chain. (Two
/// changes racing for the same record are refused by the same compare; the tests of concurrent
/// flips show that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_head_behind_its_records_refuses_changes_instead_of_overwriting() -> Result<()> {
    let race = Race::start().await?;
    let sbctl = race.env.sbctl();
    race.serving_and_staged("h").await?;
    let keys = race.env.keys();
    let mut client = race.etcd().await?;
    let head = record(&mut client, &keys.audit_head(NS)).await?;
    let newest = head["seq"].as_u64().context("the head has no seq")?;
    let newest_record = raw(&mut client, &keys.audit(NS, newest)).await?;
    let older = record(&mut client, &keys.audit(NS, newest - 1)).await?;
    edit(&mut client, &keys.audit_head(NS), |head| {
        head["seq"] = (newest - 1).into();
        head["hash"] = older["hash"].clone();
    })
    .await?;
    let epoch_before = epoch(&sbctl, NS).await?;

    for change in [
        vec!["policy", "set", NS, "--bake", "5", "-m", "m"],
        vec!["flip", NS, "-m", "m"],
        vec!["stage", NS, &race.set("h3")?, "-m", "m"],
    ] {
        let output = sbctl.run(&change).await?;
        ensure!(!output.success(), "{} went through:\n{output}", change[0]);
        ensure!(
            raw(&mut client, &keys.audit(NS, newest)).await? == newest_record,
            "{} overwrote audit record {newest}",
            change[0]
        );
    }
    ensure!(epoch(&sbctl, NS).await? == epoch_before, "routing changed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A stage's beginning (release.rs, `begin_stage`) and its seal (`seal`).
// ---------------------------------------------------------------------------------------------

/// Issue 16, acceptance 3 (the routing compare of a stage's beginning): a stage chooses the idle
/// slot, green, which holds a sealed v2, and is paused before the transaction that claims it; a
/// canary then sends consumers to green's v2; on resume the stage's compare of the routing key
/// fails, and decided again, it finds no idle slot and is refused. Green still holds v2, sealed
/// and serving the canary. Without the compare, the stage would overwrite the set the canary
/// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_starts_serving_after_a_stage_chose_it_is_not_staged_into() -> Result<()> {
    let race = Race::start().await?;
    let sbctl = race.env.sbctl();
    let (_, _, v2) = race.serving_and_staged("s").await?;

    let v3_set = race.set("s3")?;
    let staging = race
        .hold(
            STAGE_PAUSE,
            &["stage", NS, &v3_set, "-m", "races the canary"],
        )
        .await?;
    sbctl
        .run(&["canary", NS, "10", "-m", "v2 to a few"])
        .await?
        .ensure_success()?;
    let (exit, log) = race.finish(STAGE_PAUSE, staging).await?;
    ensure!(!exit.success(), "the stage went through:\n{log}");
    let after = status(&sbctl, NS).await?;
    let green = &after["slots"]["green"];
    ensure!(
        green["version"] == v2.as_str() && green["state"] == "sealed",
        "green no longer holds v2 sealed: {after}"
    );
    ensure!(
        after["canary"]["version"] == v2.as_str() && after["canary"]["percent"] == 10.0,
        "the canary moved: {after}"
    );
    Ok(())
}

/// The slot compare of a stage's beginning: two stages of the same set (two CI jobs), the
/// first paused after it read the idle slot while the second stages and seals the set;
/// decided again, the first finds the set already staged and leaves the seal alone: one stage
/// record, the slot sealed throughout. Without the compare, the first unseals the slot and
/// stages the set a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_set_staged_twice_at_once_is_sealed_once() -> Result<()> {
    let race = Race::start().await?;
    let sbctl = race.env.sbctl();
    stage_and_flip(&race.env, NS, &race.set("i1")?).await?;
    let set = race.set("i2")?;

    let first = race
        .hold(STAGE_PAUSE, &["stage", NS, &set, "-m", "the first job"])
        .await?;
    let version = stage(&sbctl, NS, &set).await?;
    let (exit, log) = race.finish(STAGE_PAUSE, first).await?;
    ensure!(exit.success(), "the first stage failed:\n{}", log);
    let stages = audit_actions(&sbctl, NS)
        .await?
        .into_iter()
        .filter(|action| action == "stage")
        .count();
    ensure!(
        stages == 2,
        "{stages} stage records for two versions: {version} was staged twice"
    );
    Ok(())
}

/// The routing compare of a seal: routing starts naming the slot being sealed (written by
/// another writer) while the seal is paused; decided again, the seal is refused, for a slot
/// that serves is never written. Without the compare, the seal writes a serving slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_starts_serving_under_a_paused_seal_is_not_sealed() -> Result<()> {
    let race = Race::start().await?;
    stage_and_flip(&race.env, NS, &race.set("e1")?).await?;
    let mut client = race.etcd().await?;

    let staging = race
        .hold(SEAL_PAUSE, &["stage", NS, &race.set("e2")?, "-m", "m"])
        .await?;
    edit(&mut client, &race.env.keys().routing(NS), |routing| {
        routing["active"]["slot"] = "green".into();
    })
    .await?;
    let (exit, log) = race.finish(SEAL_PAUSE, staging).await?;
    ensure!(
        !exit.success() && log.contains("cannot be sealed"),
        "the seal was not refused ({exit:?}):\n{log}"
    );
    let green = record(&mut client, &race.env.keys().slot(NS, Slot::Green)).await?;
    ensure!(green["state"] == "staging", "green was sealed: {green}");
    Ok(())
}

/// The slot compare of a seal: another stage begins in the slot while the seal is paused;
/// decided again, the seal is a conflict (stage again), and the other stage's claim stands.
/// Without the compare, the seal overwrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_claimed_by_another_stage_under_a_paused_seal_is_not_sealed() -> Result<()> {
    let race = Race::start().await?;
    stage_and_flip(&race.env, NS, &race.set("c1")?).await?;
    let mut client = race.etcd().await?;
    let green_key = race.env.keys().slot(NS, Slot::Green);

    let staging = race
        .hold(SEAL_PAUSE, &["stage", NS, &race.set("c2")?, "-m", "m"])
        .await?;
    let claimed = edit(&mut client, &green_key, |slot| {
        slot["version"] = "another-stage".into();
        slot["staged_by"] = "another job".into();
    })
    .await?;
    let (exit, log) = race.finish(SEAL_PAUSE, staging).await?;
    ensure!(
        exit.code() == Some(CONFLICT) && log.contains("changed while staging"),
        "the seal was not a conflict ({exit:?}):\n{log}"
    );
    let green = record(&mut client, &green_key).await?;
    ensure!(
        green == claimed,
        "the other stage's claim was overwritten: {green}"
    );
    Ok(())
}

/// The contract compare of a seal: the contract is rewritten while the seal is paused after
/// the contract judged the set; the seal is a conflict, for the contract in force did not judge
/// it. Without the compare, the seal commits on the old contract's judgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_rewritten_under_a_paused_seal_makes_it_a_conflict() -> Result<()> {
    let race = Race::start().await?;
    let sbctl = race.env.sbctl();
    let contract_dir = race.sets.path().join("contract");
    write_contract(&contract_dir, "")?;
    sbctl
        .run(&[
            "contract",
            "set",
            NS,
            &contract_dir.display().to_string(),
            "-m",
            "m",
        ])
        .await?
        .ensure_success()?;
    let mut client = race.etcd().await?;
    let key = race.env.keys().contract(NS);

    let staging = race
        .hold(SEAL_PAUSE, &["stage", NS, &race.set("k1")?, "-m", "m"])
        .await?;
    // The same contract written again, as a restore would: a new revision of the key.
    let bytes = raw(&mut client, &key).await?.context("no contract")?;
    client.put(key.as_str(), bytes, None).await?;
    let (exit, log) = race.finish(SEAL_PAUSE, staging).await?;
    ensure!(
        exit.code() == Some(CONFLICT) && log.contains("contract of catalog changed"),
        "the seal was not a conflict ({exit:?}):\n{log}"
    );
    let after = status(&sbctl, NS).await?;
    ensure!(
        after["slots"]["blue"]["state"] != "sealed",
        "the slot was sealed: {after}"
    );
    Ok(())
}

/// A contract directory with one schema for `tables/*` and, when `rule` is not empty, that
/// Rego rule.
fn write_contract(dir: &Path, rule: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("schemas"))?;
    std::fs::write(
        dir.join("schemas/table.json"),
        r#"{"type": "object", "properties": {"owner": {"type": "string"}}}"#,
    )?;
    let mut yaml =
        String::from("schemas:\n  - pattern: \"tables/*\"\n    schema: schemas/table.json\n");
    if !rule.is_empty() {
        std::fs::create_dir_all(dir.join("rules"))?;
        std::fs::write(dir.join("rules/extra.rego"), rule)?;
        yaml.push_str("rules:\n  - rules/extra.rego\n");
    }
    std::fs::write(dir.join("switchboard.yaml"), yaml)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Audited changes of one record (routing.rs `change_record`; contract.rs).
// ---------------------------------------------------------------------------------------------

/// The compare of the record an audited change rewrites: the policy changes while a policy
/// edit is paused; decided again, the edit finds the policy it was made against gone (sbctl
/// sends the policy it read) and is a conflict (exit 3), and the other change stands. Without
/// the compare, the paused edit writes back the policy it read, and the other change is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_is_not_lost_to_a_concurrent_one() -> Result<()> {
    let race = Race::start().await?;
    race.no_bake().await?;
    let mut client = race.etcd().await?;
    let key = race.env.keys().policy(NS);

    let setting = race
        .hold(
            AUDITED_PAUSE,
            &["policy", "set", NS, "--bake", "30", "-m", "bake longer"],
        )
        .await?;
    let changed = edit(&mut client, &key, |policy| {
        policy["require_approval"] = true.into();
    })
    .await?;
    let (exit, log) = race.finish(AUDITED_PAUSE, setting).await?;
    ensure!(
        exit.code() == Some(CONFLICT),
        "the edit was not a conflict ({exit:?}):\n{}",
        log
    );
    let policy = record(&mut client, &key).await?;
    ensure!(policy == changed, "the other change was lost: {policy}");
    Ok(())
}

/// Sets the contract in `dir` through the API, as `actor`; returns the raw record etcd then
/// holds under `key` (the contract in force or the proposal).
async fn contract_record(
    race: &Race,
    dir: &Path,
    actor: &str,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    race.env
        .sbctl()
        .run(&[
            "--as",
            actor,
            "contract",
            "set",
            NS,
            &dir.display().to_string(),
            "-m",
            "m",
        ])
        .await?
        .ensure_success()?;
    raw(&mut race.etcd().await?, key).await
}

/// The hash a contract record names.
fn hash_of(record: &[u8]) -> Result<String> {
    let value: Value = serde_json::from_slice(record)?;
    value["hash"]
        .as_str()
        .map(str::to_string)
        .context("a contract record without a hash")
}

/// Three contracts that differ by a rule.
fn three_contracts(race: &Race) -> Result<[std::path::PathBuf; 3]> {
    let dirs = ["ca", "cb", "cc"].map(|name| race.sets.path().join(name));
    for (n, dir) in dirs.iter().enumerate() {
        write_contract(
            dir,
            &format!(
                "package switchboard.extra{n}\nimport rego.v1\n\ndeny contains {{\"msg\": \"never\", \"item\": key}} if {{\n    some key, _ in input.items\n    false\n}}\n"
            ),
        )?;
    }
    Ok(dirs)
}

/// The compare of the contract in force when a contract is set: a client that set a contract
/// only if the one in force is the one it read (`expected_hash`) is paused; another writer puts
/// a different contract in force; decided again, the set is a conflict and the other contract
/// stands. Without the compare, the set replaces a contract its client never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_set_against_a_contract_replaced_meanwhile_is_a_conflict() -> Result<()> {
    let race = Race::start().await?;
    let key = race.env.keys().contract(NS);
    let [first, second, third] = three_contracts(&race)?;
    let other = contract_record(&race, &second, "carol", &key)
        .await?
        .context("no contract")?;
    let read = contract_record(&race, &first, "carol", &key)
        .await?
        .context("no contract")?;
    let mut client = race.etcd().await?;
    ensure!(raw(&mut client, &key).await? == Some(read));

    // sbctl sets a contract only over the one it read (`expected_hash`).
    let setting = race.set_contract(&third).await?;
    client.put(key.as_str(), other.clone(), None).await?;
    let (exit, log) = race.finish(AUDITED_PAUSE, setting).await?;
    ensure!(
        exit.code() == Some(CONFLICT),
        "the set was not a conflict ({exit:?}):\n{}",
        log
    );
    ensure!(
        raw(&mut client, &key).await? == Some(other),
        "the contract put in force meanwhile was replaced"
    );
    Ok(())
}

/// The compare of the proposal when a contract is put in force directly: a proposal appears
/// while the set is paused; decided again, the set withdraws it, as a contract put in force
/// always does. Without the compare, a stale proposal waits next to the new contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_that_appears_under_a_paused_contract_set_is_withdrawn() -> Result<()> {
    let race = Race::start().await?;
    let proposal_key = race.env.keys().contract_proposal(NS);
    let [first, second, _] = three_contracts(&race)?;
    race.require_approval(true).await?;
    let proposal = contract_record(&race, &second, "carol", &proposal_key)
        .await?
        .context("no proposal")?;
    race.require_approval(false).await?;
    contract_record(&race, &first, "carol", &proposal_key).await?;
    let mut client = race.etcd().await?;
    ensure!(raw(&mut client, &proposal_key).await?.is_none());

    let setting = race.set_contract(&race.sets.path().join("cc")).await?;
    client.put(proposal_key.as_str(), proposal, None).await?;
    let (exit, log) = race.finish(AUDITED_PAUSE, setting).await?;
    ensure!(exit.success(), "the set failed:\n{}", log);
    ensure!(
        raw(&mut client, &proposal_key).await?.is_none(),
        "the proposal still waits next to the contract put in force"
    );
    Ok(())
}

/// The compare of the policy when a contract is set: the policy starts requiring approvals
/// while the set is paused; decided again, the contract becomes a proposal and the one in
/// force stays. Without the compare, it goes in force with nobody's approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_set_under_a_policy_that_starts_requiring_approval_is_proposed() -> Result<()> {
    let race = Race::start().await?;
    let keys = race.env.keys();
    let [first, second, _] = three_contracts(&race)?;
    race.no_bake().await?;
    let in_force = contract_record(&race, &first, "carol", &keys.contract(NS))
        .await?
        .context("no contract")?;
    let mut client = race.etcd().await?;

    let setting = race
        .hold(
            AUDITED_PAUSE,
            &[
                "contract",
                "set",
                NS,
                &second.display().to_string(),
                "-m",
                "m",
            ],
        )
        .await?;
    edit(&mut client, &keys.policy(NS), |policy| {
        policy["require_approval"] = true.into();
    })
    .await?;
    let (exit, log) = race.finish(AUDITED_PAUSE, setting).await?;
    ensure!(exit.success(), "the set failed:\n{}", log);
    ensure!(
        raw(&mut client, &keys.contract(NS)).await? == Some(in_force),
        "the contract went in force without an approval"
    );
    ensure!(
        raw(&mut client, &keys.contract_proposal(NS))
            .await?
            .is_some(),
        "the contract was not proposed"
    );
    Ok(())
}

/// Proposes the contract in `dir` as carol with approvals required; returns the raw proposal.
async fn propose(race: &Race, dir: &Path) -> Result<Vec<u8>> {
    contract_record(race, dir, "carol", &race.env.keys().contract_proposal(NS))
        .await?
        .context("no proposal")
}

/// The compare of the proposal when one is approved: the proposal is replaced by another while
/// the approval is paused; decided again, the approval names a proposal that no longer waits
/// and is a conflict (exit 3); the new proposal still waits. Without the compare, the approver
/// puts in force a contract that was withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_replaced_under_a_paused_approval_is_not_put_in_force() -> Result<()> {
    let race = Race::start().await?;
    let keys = race.env.keys();
    let [first, second, _] = three_contracts(&race)?;
    race.require_approval(true).await?;
    let replacement = propose(&race, &second).await?;
    let approved = propose(&race, &first).await?;
    let hash = hash_of(&approved)?;
    let mut client = race.etcd().await?;

    let approving = race.approve_contract(&hash).await?;
    client
        .put(keys.contract_proposal(NS), replacement.clone(), None)
        .await?;
    let (exit, log) = race.finish(AUDITED_PAUSE, approving).await?;
    ensure!(
        exit.code() == Some(CONFLICT),
        "the approval was not a conflict ({exit:?}):\n{}",
        log
    );
    ensure!(
        raw(&mut client, &keys.contract(NS)).await?.is_none(),
        "a contract was put in force"
    );
    ensure!(
        raw(&mut client, &keys.contract_proposal(NS)).await? == Some(replacement),
        "the new proposal no longer waits"
    );
    Ok(())
}

/// The compare of the contract in force when a proposal is approved: another writer puts a
/// contract in force while the approval is paused; decided again, the approval's audit record
/// names the contract it really replaced. Without the compare, the record names the one read
/// before, and the trail lies about what the approval undid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_records_the_contract_it_really_replaced() -> Result<()> {
    let race = Race::start().await?;
    let sbctl = race.env.sbctl();
    let keys = race.env.keys();
    let [first, second, third] = three_contracts(&race)?;
    let replaced = contract_record(&race, &second, "carol", &keys.contract(NS))
        .await?
        .context("no contract")?;
    contract_record(&race, &first, "carol", &keys.contract(NS)).await?;
    race.require_approval(true).await?;
    let proposal = propose(&race, &third).await?;
    let hash = hash_of(&proposal)?;
    let mut client = race.etcd().await?;

    let approving = race.approve_contract(&hash).await?;
    client
        .put(keys.contract(NS), replaced.clone(), None)
        .await?;
    let (exit, log) = race.finish(AUDITED_PAUSE, approving).await?;
    ensure!(exit.success(), "the approval failed:\n{}", log);
    let trail = sbctl.run_json(&["audit", NS]).await?;
    let approval = trail["records"]
        .as_array()
        .and_then(|records| records.iter().rfind(|r| r["action"] == "contract-approved"))
        .with_context(|| format!("no approval record: {trail}"))?;
    ensure!(
        approval["detail"]["previous"] == hash_of(&replaced)?.as_str(),
        "the approval's record names another contract than the one it replaced: {approval}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The janitor's deletions (janitor.rs, `collect`).
// ---------------------------------------------------------------------------------------------

/// Releases the sets of `generations` one after the other, each staged and flipped, and stages
/// `next` without flipping: returns the versions, `next`'s last.
async fn releases_then_stage(race: &Race, generations: &[&str], next: &str) -> Result<Vec<String>> {
    let sbctl = race.env.sbctl();
    race.no_bake().await?;
    let mut versions = Vec::new();
    for generation in generations {
        versions.push(
            stage_and_flip(&race.env, NS, &race.set(generation)?)
                .await?
                .0,
        );
    }
    versions.push(stage(&sbctl, NS, &race.set(next)?).await?);
    Ok(versions)
}

/// How a version the janitor chose to delete is brought back while the round is held.
#[derive(Clone, Copy)]
enum BringBack {
    /// `rollback --to` it: restaged into the idle slot, then flipped to.
    RollbackTo,
    /// Its set staged again: it is sealed in the idle slot, and routing does not change.
    StageAgain,
}

/// With no history retained, a flip makes the version before the previous one garbage, and
/// the housekeeping round that decided to delete it is held; the version is brought back into
/// the idle slot; on resume the round's transaction fails and deletes nothing. A key of garbage
/// written meanwhile makes the next round find something to delete, so it is held too: by then
/// the first round is over, and the version is whole in etcd. Returns the slot it came back in.
async fn a_version_brought_back_while_the_janitor_decides_stays_whole(
    released: &[&str],
    staged: &str,
    how: BringBack,
) -> Result<Slot> {
    let race = Race::start_with(&["--gc-interval", "1", "--retain-versions", "0"]).await?;
    let sbctl = race.env.sbctl();
    let releases = race.releases().await?;
    let versions = releases_then_stage(&race, released, staged).await?;
    // Versions before the previous one are garbage already; wait until they are gone, so that
    // the held round is the one that finds the version this test brings back.
    for old in &versions[..versions.len().saturating_sub(3)] {
        wait_until(DEADLINE, "an old version collected", async || {
            Ok(!retained(&releases, old).await?)
        })
        .await?;
    }
    let doomed_index = versions.len() - 3;
    let doomed = &versions[doomed_index];

    race.arm(JANITOR_PAUSE)?;
    sbctl
        .run(&["flip", NS, "-m", "m"])
        .await?
        .ensure_success()?;
    race.paused(JANITOR_PAUSE).await?;
    let active: Slot = status(&sbctl, NS).await?["active"]["slot"]
        .as_str()
        .context("no active slot")?
        .parse()
        .map_err(|e| anyhow::anyhow!("an unknown slot: {e}"))?;
    let idle = active.other();
    match how {
        BringBack::RollbackTo => sbctl
            .run(&["rollback", NS, "--to", doomed, "-m", "bring it back"])
            .await?
            .ensure_success()
            .map(drop)?,
        BringBack::StageAgain => {
            let set = race.set(released[doomed_index])?;
            ensure!(stage(&sbctl, NS, &set).await? == *doomed);
        }
    }
    race.garbage_for_the_next_round().await?;
    race.arm(JANITOR_PAUSE)?;
    race.resume(JANITOR_PAUSE).await?;
    race.paused(JANITOR_PAUSE).await?;
    let after = status(&sbctl, NS).await?;
    let held = match how {
        BringBack::RollbackTo => &after["active"]["version"],
        BringBack::StageAgain => &after["slots"][idle.to_string()]["version"],
    };
    ensure!(
        held == doomed.as_str(),
        "{doomed} was not brought back: {after}"
    );
    ensure!(
        retained(&releases, doomed).await?,
        "{doomed}, brought back into {idle}, was collected: {after}"
    );
    race.resume(JANITOR_PAUSE).await?;
    Ok(idle)
}

/// Issue 16, acceptance 4: the round is held while a flip (`rollback --to`) makes the version
/// it chose live again; nothing that routing names is deleted. (Routing and the idle slot both
/// change; the janitor compares both.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_rolled_back_to_while_the_janitor_decides_stays_whole() -> Result<()> {
    let idle = a_version_brought_back_while_the_janitor_decides_stays_whole(
        &["g1", "g2"],
        "g3",
        BringBack::RollbackTo,
    )
    .await?;
    ensure!(idle == Slot::Green, "restaged into {idle}");
    Ok(())
}

/// The janitor's compare of the green slot: the version it chose is staged again into green,
/// and routing does not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_staged_again_into_green_while_the_janitor_decides_stays_whole() -> Result<()> {
    let idle = a_version_brought_back_while_the_janitor_decides_stays_whole(
        &["n1", "n2"],
        "n3",
        BringBack::StageAgain,
    )
    .await?;
    ensure!(idle == Slot::Green, "staged into {idle}");
    Ok(())
}

/// The janitor's compare of the blue slot, the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_staged_again_into_blue_while_the_janitor_decides_stays_whole() -> Result<()> {
    let idle = a_version_brought_back_while_the_janitor_decides_stays_whole(
        &["u1", "u2", "u3"],
        "u4",
        BringBack::StageAgain,
    )
    .await?;
    ensure!(idle == Slot::Blue, "staged into {idle}");
    Ok(())
}

/// The janitor's compare of routing: while a round that decided to delete an old version is
/// paused, routing starts naming that version (written by another writer, as a restore of
/// routing would); the round's transaction fails, and the version stays whole. Without the
/// compare, the round deletes a version that routing names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_routing_starts_naming_while_the_janitor_decides_stays_whole() -> Result<()> {
    let race = Race::start_with(&["--gc-interval", "1", "--retain-versions", "0"]).await?;
    let sbctl = race.env.sbctl();
    let releases = race.releases().await?;
    let versions = releases_then_stage(&race, &["j1", "j2"], "j3").await?;
    let doomed = &versions[0];
    let manifest = releases.history_entry(NS, doomed).await?.manifest;
    let mut client = race.etcd().await?;

    race.arm(JANITOR_PAUSE)?;
    sbctl
        .run(&["flip", NS, "-m", "m"])
        .await?
        .ensure_success()?;
    race.paused(JANITOR_PAUSE).await?;
    edit(&mut client, &race.env.keys().routing(NS), |routing| {
        routing["previous"]["version"] = doomed.as_str().into();
        routing["previous"]["manifest"] = manifest.as_str().into();
    })
    .await?;
    race.garbage_for_the_next_round().await?;
    race.arm(JANITOR_PAUSE)?;
    race.resume(JANITOR_PAUSE).await?;
    race.paused(JANITOR_PAUSE).await?;
    ensure!(
        retained(&releases, doomed).await?,
        "{doomed}, which routing names, was collected"
    );
    race.resume(JANITOR_PAUSE).await?;
    Ok(())
}

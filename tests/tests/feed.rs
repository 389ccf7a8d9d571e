//! Issue 15 against real etcd, a real coordinator and real sidecars: the change feed over SSE
//! and gRPC across 20 routing changes (acceptance 1), ETags that are the same on two sidecars
//! (acceptance 2), and reads pinned to a version across flips (acceptance 3).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use switchboard_proto::pb;
use switchboard_tests::{Sidecar, TestEnv, wait_until};

const NS: &str = "catalog";

/// A header of an answer as text; empty when absent.
fn header_text(answer: &reqwest::Response, name: &str) -> String {
    answer
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// One event of a feed: its id and its data.
#[derive(Clone, Debug)]
struct Event {
    id: String,
    data: Value,
}

impl Event {
    fn version(&self) -> &str {
        self.data["version"].as_str().unwrap_or_default()
    }
}

/// A change feed read over HTTP as Server-Sent Events.
struct SseFeed {
    response: reqwest::Response,
    buffer: String,
}

impl SseFeed {
    async fn open(sidecar: &Sidecar, consumer: &str, last_event_id: Option<&str>) -> Result<Self> {
        let url = format!("{}/v1/ns/{NS}/events", sidecar.http_url());
        let mut request = reqwest::Client::new()
            .get(&url)
            .header("x-switchboard-consumer", consumer);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        ensure!(response.status() == 200, "GET {url}: {}", response.status());
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        ensure!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Ok(Self {
            response,
            buffer: String::new(),
        })
    }

    /// The next event (comments, the keep-alives, are skipped).
    async fn next(&mut self) -> Result<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut data) = (None, None);
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().to_string());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(value.trim())?);
                    }
                }
                if let (Some(id), Some(data)) = (id, data) {
                    return Ok(Event { id, data });
                }
                continue;
            }
            let chunk = self.response.chunk().await?.context("the feed ended")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Reads a feed into `events` until the task is aborted (which closes the connection).
fn collect(
    mut feed: SseFeed,
    events: Arc<Mutex<Vec<Event>>>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        loop {
            let event = feed.next().await?;
            events
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(event);
        }
    })
}

fn received(events: &Arc<Mutex<Vec<Event>>>) -> Vec<Event> {
    events.lock().map(|e| e.clone()).unwrap_or_default()
}

/// The keys of a plan's list, or of an event's list, with their classes.
fn keyed(list: &Value, class_field: &str) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            Some((
                entry["key"].as_str()?.to_string(),
                entry[class_field].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// A stack serving the sample catalog's v1, with no bake time (so that flips and rollbacks
/// may follow each other at once); returns it and the version.
async fn serving_v1_without_a_bake() -> Result<(TestEnv, String)> {
    let env = TestEnv::start(&[NS]).await?;
    env.sbctl()
        .run(&["policy", "set", NS, "--bake", "0"])
        .await?
        .ensure_success()?;
    let (v1, _) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    Ok((env, v1))
}

/// Issue 15, acceptance 1: eight consumers subscribe to the feed (one over gRPC as well), and
/// 20 changes are made: canary moves up and down, flips and rollbacks. Each consumer gets
/// exactly one event per change that moves it (none for a canary move that leaves it), whose
/// keys and classes are those of `sbctl plan` between the two sets. One consumer's connection
/// is cut after the tenth change and resumed with `Last-Event-ID` after two more: its events
/// have no gap and no repeat. A last flip to a third set, which moves everyone, marks the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_sees_exactly_the_changes_that_move_it() -> Result<()> {
    let (env, v1) = serving_v1_without_a_bake().await?;
    let sbctl = env.sbctl();
    let plan = sbctl
        .run_json(&["plan", NS, &example("catalog-v2")])
        .await?;
    let plan_items: BTreeMap<String, (String, String)> = plan["items"]
        .as_array()
        .context("no items in the plan")?
        .iter()
        .filter_map(|item| {
            Some((
                item["key"].as_str()?.to_string(),
                (
                    item["change"].as_str()?.to_string(),
                    item["class"].as_str()?.to_string(),
                ),
            ))
        })
        .collect();
    let v2 = stage_with(&sbctl, NS, &example("catalog-v2"), &["--allow-destructive"]).await?;
    let sidecar = env.start_sidecar("feed").await?;
    sidecar.wait_ready(DEADLINE).await?;

    let consumers: Vec<String> = (0..8).map(|n| format!("app-{n}")).collect();
    let mut logs = BTreeMap::new();
    let mut tasks = BTreeMap::new();
    for consumer in &consumers {
        let events = Arc::new(Mutex::new(Vec::new()));
        let feed = SseFeed::open(&sidecar, consumer, None).await?;
        tasks.insert(consumer.clone(), collect(feed, events.clone()));
        logs.insert(consumer.clone(), events);
    }
    // app-1 over gRPC too.
    let mut reader = pb::reader_client::ReaderClient::connect(sidecar.grpc_url()).await?;
    let mut grpc_feed = reader
        .watch_changes(pb::WatchChangesRequest {
            namespace: NS.into(),
            consumer: "app-1".into(),
            last_event_id: String::new(),
        })
        .await?
        .into_inner();

    // What each consumer is served after each change, by reading as it.
    let mut expected: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    let epoch_now = sidecar.epoch(NS).await?;
    for consumer in &consumers {
        expected.insert(consumer.clone(), vec![(epoch_now, v1.clone())]);
    }
    let changes: [&[&str]; 20] = [
        &["canary", "10"],
        &["canary", "30"],
        &["canary", "60"],
        &["flip"],
        &["rollback"],
        &["canary", "20"],
        &["canary", "50"],
        &["canary", "0"],
        &["canary", "70"],
        &["flip"],
        &["rollback"],
        &["canary", "40"],
        &["canary", "90"],
        &["flip"],
        &["rollback"],
        &["canary", "25"],
        &["canary", "5"],
        &["canary", "95"],
        &["flip"],
        &["rollback"],
    ];
    let mut resume_from = None;
    for (n, change) in changes.iter().enumerate() {
        let mut args = vec![change[0], NS];
        args.extend_from_slice(&change[1..]);
        args.extend_from_slice(&["-m", "feed test"]);
        sbctl.run(&args).await?.ensure_success()?;
        let epoch = epoch(&sbctl, NS).await?;
        sidecar.wait_for_epoch(NS, epoch, DEADLINE).await?;
        for consumer in &consumers {
            let answer = sidecar
                .get_item(NS, "schema_version", Some(consumer))
                .await?;
            let version = answer.version.context("no version header")?;
            let seen = expected.entry(consumer.clone()).or_default();
            if seen.last().map(|(_, v)| v) != Some(&version) {
                seen.push((epoch, version));
            }
        }
        if n == 9 {
            // Cut app-0's connection; it comes back after two more changes.
            if let Some(task) = tasks.remove("app-0") {
                task.abort();
                let _ = task.await;
            }
            let log = &logs["app-0"];
            resume_from = received(log).last().map(|e| e.id.clone());
        }
        if n == 11 {
            let feed = SseFeed::open(&sidecar, "app-0", resume_from.as_deref()).await?;
            tasks.insert("app-0".into(), collect(feed, logs["app-0"].clone()));
        }
    }
    ensure!(
        resume_from.is_some(),
        "app-0 had received nothing before the cut"
    );

    // The end marker: a third set, to which everyone moves.
    let dir = tempfile::tempdir()?;
    let end = write_set(dir.path(), "end", 3, 10)?.display().to_string();
    let v3 = stage_with(&sbctl, NS, &end, &["--allow-destructive"]).await?;
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let final_epoch = epoch(&sbctl, NS).await?;
    for consumer in &consumers {
        if let Some(seen) = expected.get_mut(consumer) {
            seen.push((final_epoch, v3.clone()));
        }
    }
    wait_until(DEADLINE, "every feed to reach the third set", async || {
        Ok(logs
            .values()
            .all(|log| received(log).last().is_some_and(|e| e.version() == v3)))
    })
    .await?;
    for task in tasks.values() {
        task.abort();
    }

    let mut moved_by_canary_only = 0;
    for consumer in &consumers {
        let events = received(&logs[consumer]);
        let got: Vec<(u64, String)> = events
            .iter()
            .map(|e| {
                (
                    e.data["epoch"].as_u64().unwrap_or(0),
                    e.version().to_string(),
                )
            })
            .collect();
        ensure!(
            got == expected[consumer],
            "{consumer}: events {got:?}, expected {:?}",
            expected[consumer]
        );
        eprintln!("{consumer}: {} events", events.len());
        // Ids follow EPOCH:VERSION and never repeat.
        let ids: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        ensure!(ids.len() == events.len(), "{consumer}: a repeated event id");
        ensure!(
            events[0].data["initial"] == true,
            "{consumer}: {:?}",
            events[0]
        );
        for event in &events[1..] {
            let data = &event.data;
            ensure!(data["reset"] == false, "{consumer}: {data}");
            ensure!(
                event.id == format!("{}:{}", data["epoch"], event.version()),
                "{consumer}: id {} for {data}",
                event.id
            );
            if data["canary"] == true {
                moved_by_canary_only += 1;
            }
            let (added, modified, removed) = (
                keyed(&data["added"], "class"),
                keyed(&data["modified"], "class"),
                keyed(&data["removed"], "class"),
            );
            let forward = data["previous_version"] == v1.as_str() && event.version() == v2;
            let backward = data["previous_version"] == v2.as_str() && event.version() == v1;
            if !(forward || backward) {
                continue;
            }
            // Checked against the plan from v1 to v2 (backwards: added and removed swap).
            let plan_of = |change: &str| -> BTreeSet<String> {
                plan_items
                    .iter()
                    .filter(|(_, (c, _))| c == change)
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            let keys =
                |map: &BTreeMap<String, String>| map.keys().cloned().collect::<BTreeSet<_>>();
            let (plan_added, plan_removed) = (plan_of("added"), plan_of("removed"));
            let (want_added, want_removed) = if forward {
                (plan_added, plan_removed)
            } else {
                (plan_removed, plan_added)
            };
            ensure!(keys(&added) == want_added, "{consumer} {data}");
            ensure!(keys(&removed) == want_removed, "{consumer} {data}");
            ensure!(keys(&modified) == plan_of("changed"), "{consumer} {data}");
            if forward {
                for (key, class) in modified.iter().chain(&added).chain(&removed) {
                    let planned = &plan_items[key].1;
                    ensure!(
                        class == planned,
                        "{key}: {class} in the feed, {planned} in the plan"
                    );
                }
            }
        }
    }
    ensure!(
        moved_by_canary_only > 0,
        "no consumer was moved by a canary step"
    );

    // The gRPC feed of app-1 carries the same events as its SSE feed.
    let sse_ids: Vec<String> = received(&logs["app-1"])
        .iter()
        .map(|e| e.id.clone())
        .collect();
    let mut grpc_ids = Vec::new();
    while grpc_ids.len() < sse_ids.len() {
        let change = tokio::time::timeout(DEADLINE, grpc_feed.message())
            .await
            .context("the gRPC feed stalled")??
            .context("the gRPC feed ended")?;
        grpc_ids.push(change.id);
    }
    ensure!(
        grpc_ids == sse_ids,
        "gRPC {grpc_ids:?} against SSE {sse_ids:?}"
    );
    Ok(())
}

/// Issue 15, acceptance 2 (the part that needs two processes): two sidecars give the same
/// item and the same list the same ETag, and each answers 304 to the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_give_the_same_content_the_same_etag() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let first = env.start_sidecar("etag-1").await?;
    let second = env.start_sidecar("etag-2").await?;
    first.wait_ready(DEADLINE).await?;
    second.wait_ready(DEADLINE).await?;
    let client = reqwest::Client::new();
    for path in [
        "/v1/ns/catalog/items/schema_version",
        "/v1/ns/catalog/items?prefix=tables/",
    ] {
        let mut tags = Vec::new();
        for sidecar in [&first, &second] {
            let answer = client
                .get(format!("{}{path}", sidecar.http_url()))
                .send()
                .await?;
            ensure!(answer.status() == 200, "{path}: {}", answer.status());
            let tag = header_text(&answer, "etag");
            ensure!(!tag.is_empty(), "{path}: no ETag");
            tags.push(tag);
        }
        ensure!(tags[0] == tags[1], "{path}: {tags:?}");
        for sidecar in [&second, &first] {
            let answer = client
                .get(format!("{}{path}", sidecar.http_url()))
                .header("if-none-match", &tags[0])
                .send()
                .await?;
            ensure!(answer.status() == 304, "{path}: {}", answer.status());
        }
    }
    Ok(())
}

/// Issue 15, acceptance 3: a client reads the version once and pins the rest of its reads to
/// it. Across 20 flips between v1 and v2, all of its 1,000 reads come from that version (the
/// sidecar holds a replaced set for a minute). A sidecar that keeps no replaced set answers
/// 409 naming the version it would serve now, once the pinned one is no longer served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_pinned_to_a_version_stay_on_it_while_it_is_held() -> Result<()> {
    let (env, v1) = serving_v1_without_a_bake().await?;
    let sbctl = env.sbctl();
    stage_with(&sbctl, NS, &example("catalog-v2"), &["--allow-destructive"]).await?;
    let holding = env.start_sidecar("pinned").await?;
    let forgetting = env
        .start_sidecar_with("forgetful", &[NS], &["--keep-replaced-seconds", "0"])
        .await?;
    holding.wait_ready(DEADLINE).await?;
    forgetting.wait_ready(DEADLINE).await?;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/ns/{NS}/items/schema_version", holding.http_url());

    // The version is read once...
    let first = holding.get_item(NS, "schema_version", Some("app")).await?;
    let pinned = first.version.context("no version")?;
    ensure!(pinned == v1, "{pinned}");
    let mut reads = 0;
    for flip in 0..20 {
        let command = if flip % 2 == 0 { "flip" } else { "rollback" };
        sbctl.run(&[command, NS]).await?.ensure_success()?;
        // ...and every other read names it, during the flip and after.
        for _ in 0..50 {
            let answer = client
                .get(&url)
                .header("x-switchboard-consumer", "app")
                .header("x-switchboard-version", &pinned)
                .send()
                .await?;
            ensure!(answer.status() == 200, "read {reads}: {}", answer.status());
            let version = header_text(&answer, "x-switchboard-version");
            let body: Value = answer.json().await?;
            ensure!(
                version == pinned && body["version"] == 191,
                "read {reads}: {version} {body}"
            );
            reads += 1;
        }
    }
    ensure!(reads == 1_000);

    // Twenty flips end on v1; one more goes to v2, and the forgetful sidecar lets v1 go.
    sbctl.run(&["flip", NS]).await?.ensure_success()?;
    let epoch = epoch(&sbctl, NS).await?;
    forgetting.wait_for_epoch(NS, epoch, DEADLINE).await?;
    let answer = client
        .get(format!(
            "{}/v1/ns/{NS}/items/schema_version",
            forgetting.http_url()
        ))
        .header("x-switchboard-version", &pinned)
        .send()
        .await?;
    ensure!(answer.status() == 409, "{}", answer.status());
    let now = header_text(&answer, "x-switchboard-version");
    let body: Value = answer.json().await?;
    ensure!(
        now != pinned
            && body["current_version"] == now.as_str()
            && body["version"] == pinned.as_str(),
        "{now} {body}"
    );
    Ok(())
}

/// A preview read of one item: the status, the version header and the JSON body.
async fn preview(sidecar: &Sidecar, key: &str) -> Result<(u16, String, Value)> {
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/ns/{NS}/items/{key}", sidecar.http_url()))
        .header("x-switchboard-preview", "staged")
        .send()
        .await?;
    let status = answer.status().as_u16();
    let version = header_text(&answer, "x-switchboard-version");
    let preview = header_text(&answer, "x-switchboard-preview");
    ensure!(
        status != 200 || preview == "staged",
        "a preview answer without its header"
    );
    Ok((status, version, answer.json().await?))
}

/// Issue 15, acceptance 4: preview reads (`X-Switchboard-Preview: staged`) are refused while the
/// namespace's policy does not allow them, with a message that says how to allow them; once an
/// admin allows them (an audited policy change) they are served from the sealed staged set at
/// a 0% canary, over HTTP and gRPC, while every other read stays on the active set; turned off
/// again, they are refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_reads_serve_the_staged_set_only_when_the_policy_allows_them() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let (v1, _) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let v2 = stage_with(&sbctl, NS, &example("catalog-v2"), &["--allow-destructive"]).await?;
    let sidecar = env.start_sidecar("preview").await?;
    sidecar.wait_ready(DEADLINE).await?;

    let (code, _, body) = preview(&sidecar, "schema_version").await?;
    ensure!(code == 403, "{code} {body}");
    let error = body["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("sbctl policy set catalog --preview-reads true"),
        "{error}"
    );

    sbctl
        .run(&[
            "policy",
            "set",
            NS,
            "--preview-reads",
            "true",
            "-m",
            "test traffic",
        ])
        .await?
        .ensure_success()?;
    let trail = sbctl.run_json(&["audit", NS]).await?;
    let last = trail["records"]
        .as_array()
        .and_then(|records| records.last())
        .context("no audit record")?;
    ensure!(
        last["action"] == "policy"
            && last["detail"]["to"]["preview_reads"] == true
            && last["detail"]["from"]["preview_reads"].is_null(),
        "{last}"
    );
    // The sidecar asks etcd at most once a second.
    wait_until(DEADLINE, "preview reads to be allowed", async || {
        Ok(preview(&sidecar, "schema_version").await?.0 == 200)
    })
    .await?;
    let (_, version, body) = preview(&sidecar, "schema_version").await?;
    ensure!(version == v2 && body["version"] == 192, "{version} {body}");
    // Everyone else still reads the active set, and there is no canary.
    let answer = sidecar
        .get_item(NS, "schema_version", Some("anyone"))
        .await?;
    ensure!(answer.version.as_deref() == Some(v1.as_str()), "{answer:?}");
    let routing = status(&sbctl, NS).await?;
    ensure!(routing["canary"].is_null(), "{routing}");

    let mut reader = pb::reader_client::ReaderClient::connect(sidecar.grpc_url()).await?;
    let reply = reader
        .get(pb::GetRequest {
            namespace: NS.into(),
            key: "schema_version".into(),
            preview: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        reply.served.map(|s| s.version) == Some(v2.clone()),
        "gRPC preview"
    );

    sbctl
        .run(&["policy", "set", NS, "--preview-reads", "false"])
        .await?
        .ensure_success()?;
    wait_until(DEADLINE, "preview reads to be refused again", async || {
        Ok(preview(&sidecar, "schema_version").await?.0 == 403)
    })
    .await?;
    Ok(())
}

//! End-to-end tests of the release dashboard and the JSON API behind its buttons: a real etcd,
//! coordinator and sidecar, and the page driven in Debian's headless Chromium through
//! chromedriver (see `dashboard/webdriver.rs`).

mod common;
#[path = "dashboard/webdriver.rs"]
mod webdriver;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;
use serde_json::{Value, json};
use switchboard_tests::{Coordinator, EtcdServer, Sidecar, TestEnv, unique_prefix, wait_until};
use webdriver::Browser;

const NS: &str = "catalog";
/// A stage message that is markup: the page must show it as text.
const MARKUP: &str = "<img id=\"injected\" src=\"x\"> v2";

/// A JSON client of the coordinator's HTTP API, with or without a bearer token.
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(coordinator: &Coordinator, token: Option<&str>) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
            base: coordinator.http_url(),
            token: token.map(str::to_string),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value)> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST path` with `body` as JSON.
    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    /// `POST path` with a raw body and content type.
    async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Result<(u16, Value)> {
        let mut request = self
            .request(reqwest::Method::POST, path)
            .body(body.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        self.send(request).await
    }

    /// `GET path`, which must answer 200.
    async fn ok(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path).await?;
        ensure!(status == 200, "GET {path} answered {status}: {body}");
        Ok(body)
    }

    async fn status(&self) -> Result<Value> {
        self.ok(&format!("/v1/ns/{NS}/status")).await
    }

    async fn audit(&self) -> Result<Vec<Value>> {
        let trail = self.ok(&format!("/v1/ns/{NS}/audit")).await?;
        Ok(trail["records"].as_array().cloned().unwrap_or_default())
    }
}

/// Expects `answer` to have `status` and an error naming `says`.
fn expect_error(answer: (u16, Value), status: u16, says: &str, what: &str) -> Result<()> {
    let (got, body) = answer;
    let message = body["error"].as_str().unwrap_or_default();
    ensure!(
        got == status && message.contains(says),
        "{what}: expected {status} with an error saying {says:?}, got {got}: {body}"
    );
    Ok(())
}

/// The newest audit record, which must have `action` and `actor`.
async fn last_record_is(api: &Api, action: &str, actor: &str) -> Result<Value> {
    let records = api.audit().await?;
    let last = records
        .last()
        .cloned()
        .context("the audit trail is empty")?;
    ensure!(
        last["action"] == action && last["actor"] == actor,
        "the newest audit record should be {action} by {actor}: {last}"
    );
    Ok(last)
}

/// Reports outcomes for both versions through the sidecar (at most every 400 ms) until the
/// coordinator's error samples have a point for each: the sampler's first look at a sidecar
/// only sets its baseline, so one report may fall before it.
async fn report_until_sampled(api: &Api, sidecar: &Sidecar, versions: &[&str]) -> Result<()> {
    let mut last_report: Option<Instant> = None;
    wait_until(
        Duration::from_secs(30),
        "error samples for every version",
        async || {
            if last_report.is_none_or(|at| at.elapsed() > Duration::from_millis(400)) {
                for (index, version) in versions.iter().enumerate() {
                    // Low error rates (1% and 2%), so that the judge never rolls the canary
                    // back under the test.
                    let errors = 1 + index as u64;
                    let (status, body) = sidecar.report(NS, version, 100, errors).await?;
                    ensure!(status == 202, "report answered {status}: {body}");
                }
                last_report = Some(Instant::now());
            }
            let series = api.ok(&format!("/v1/ns/{NS}/errors")).await?;
            let sampled = |version: &str| {
                series["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| {
                        v["version"] == version
                            && v["points"].as_array().is_some_and(|p| !p.is_empty())
                    })
            };
            if versions.iter().all(|v| sampled(v)) {
                Ok(true)
            } else {
                bail!("samples so far: {series}")
            }
        },
    )
    .await
}

/// Where a failing browser test leaves its last screenshot.
fn failure_screenshot() -> std::path::PathBuf {
    std::env::temp_dir().join("switchboard-dashboard-failure.png")
}

/// Runs `steps` with the browser; on failure saves a screenshot and says where.
async fn with_screenshot_on_failure(
    browser: &Browser,
    steps: impl AsyncFnOnce() -> Result<()>,
) -> Result<()> {
    match steps().await {
        Ok(()) => Ok(()),
        Err(error) => {
            let path = failure_screenshot();
            let saved = match browser.screenshot(&path).await {
                Ok(()) => format!("the page as it was: {}", path.display()),
                Err(shot) => format!("no screenshot: {shot:#}"),
            };
            Err(error.context(saved))
        }
    }
}

async fn page_flag(browser: &Browser, script: &str) -> Result<bool> {
    Ok(browser.eval(script, vec![]).await? == Value::Bool(true))
}

/// Arms a change in the page and confirms it; returns what the page reports.
async fn click_change(browser: &Browser, button: &str, says: &str) -> Result<String> {
    browser.click(button).await?;
    wait_until(DEADLINE, "the confirmation to show", async || {
        page_flag(browser, "return !document.getElementById('confirm').hidden").await
    })
    .await?;
    browser.click("#confirm-yes").await?;
    browser
        .wait_text(
            "#result",
            &format!("the page to report {says:?}"),
            DEADLINE,
            |t| t.contains(says),
        )
        .await
}

/// Waits until the page shows `epoch`, so that the next change is decided on it.
async fn wait_page_epoch(browser: &Browser, epoch: u64) -> Result<()> {
    let epoch = epoch.to_string();
    browser
        .wait_text(
            "#epoch",
            &format!("the page to show epoch {epoch}"),
            DEADLINE,
            |t| t == epoch,
        )
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_release_and_its_buttons_pass_the_same_gate_as_sbctl() -> Result<()> {
    let olga = new_user("olga", &["operator"]).await?;
    let vera = new_user("vera", &["viewer"]).await?;
    let dir = tempfile::tempdir()?;
    // The sidecar's credential: its outcomes reach the leader's judge and the chart.
    let reporter = new_user("sc-1", &["reporter"]).await?;
    let auth = write_auth_file(dir.path(), &[&olga, &vera, &reporter])?;
    let etcd = EtcdServer::start().await?;
    let prefix = unique_prefix();
    let coordinator =
        Coordinator::start_with(&etcd.endpoint(), &prefix, &["--auth", &auth]).await?;
    let operator = coordinator.sbctl().env("SWITCHBOARD_TOKEN", &olga.token);
    let set1 = write_set(dir.path(), "g1", 20, 50)?.display().to_string();
    let set2 = write_set(dir.path(), "g2", 20, 50)?.display().to_string();
    let v1 = stage(&operator, NS, &set1).await?;
    operator
        .run(&["flip", NS, "-m", "go live"])
        .await?
        .ensure_success()?;
    // A message that would be an element if the page rendered values as markup.
    let staged = operator
        .run(&["stage", NS, &set2, "-m", MARKUP])
        .await?
        .ensure_success()?;
    let v2 = staged
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    ensure!(v2.len() == 16, "stage printed no version last:\n{staged}");
    operator
        .run(&["canary", NS, "10", "-m", "first look"])
        .await?
        .ensure_success()?;
    let sidecar = Sidecar::start_with_env(
        &etcd.endpoint(),
        &prefix,
        "sc-1",
        &[NS],
        &[],
        &[("SWITCHBOARD_REPORT_TOKEN", reporter.token.as_str())],
    )
    .await?;
    sidecar.wait_for_epoch(NS, 2, DEADLINE).await?;

    // The JSON API needs a token, and a viewer's token reads but changes nothing.
    let anonymous = Api::new(&coordinator, None)?;
    let viewer = Api::new(&coordinator, Some(&vera.token))?;
    let op = Api::new(&coordinator, Some(&olga.token))?;
    expect_error(
        anonymous.get("/v1/ns").await?,
        401,
        "missing or unknown token",
        "no token",
    )?;
    expect_error(
        viewer
            .post(&format!("/v1/ns/{NS}/flip"), json!({"expected_epoch": 2}))
            .await?,
        403,
        "vera (viewer) may not flip catalog: it needs operator or admin",
        "a viewer's flip",
    )?;
    let denial = last_record_is(&viewer, "denied", "vera").await?;
    assert_eq!(denial["detail"]["rpc"], "Flip", "{denial}");
    expect_error(
        op.post_raw(
            &format!("/v1/ns/{NS}/canary"),
            Some("application/json"),
            "{10%",
        )
        .await?,
        400,
        "not a valid canary request",
        "bad JSON",
    )?;
    assert_eq!(viewer.status().await?["epoch"], 2);
    report_until_sampled(&viewer, &sidecar, &[&v1, &v2]).await?;
    let status = viewer.status().await?;
    let active_slot = status["active"]["slot"]
        .as_str()
        .context("no active slot")?
        .to_string();
    let idle_slot = if active_slot == "blue" {
        "green"
    } else {
        "blue"
    };

    let browser = Browser::start().await?;
    let started = Instant::now();
    with_screenshot_on_failure(&browser, async || {
        browser.goto(&format!("{}/", coordinator.http_url())).await?;
        // Without a token the page asks for one.
        wait_until(DEADLINE, "the page to ask for a token", async || {
            page_flag(&browser, "return !document.getElementById('auth-needed').hidden").await
        })
        .await?;

        // A viewer sees the release.
        browser.type_into("#token", &vera.token).await?;
        browser.click("#token-use").await?;
        browser
            .wait_text("#ns-name", "the namespace", DEADLINE, |t| t == NS)
            .await?;
        browser
            .wait_text("a[data-ns='catalog']", "the namespace list", DEADLINE, |t| t == NS)
            .await?;
        let active_version = browser.text(&format!("#slot-{active_slot} .version")).await?;
        assert_eq!(active_version, v1);
        assert_eq!(browser.text(&format!("#slot-{idle_slot} .version")).await?, v2);
        assert_eq!(browser.text(&format!("#slot-{active_slot} [data-role]")).await?, "active");
        assert_eq!(browser.text(&format!("#slot-{idle_slot} [data-role]")).await?, "canary");
        let checksum = browser.text(&format!("#slot-{active_slot} .checksum")).await?;
        ensure!(
            status["slots"][&active_slot]["checksum"]
                .as_str()
                .is_some_and(|c| c.starts_with(&checksum) && !checksum.is_empty()),
            "checksum {checksum:?} is not the slot's: {status}"
        );
        let canary = browser.text("#canary").await?;
        ensure!(canary.contains("10%") && canary.contains(&v2), "canary shows {canary:?}");
        // Values are text, never markup.
        let message = browser.text(&format!("#slot-{idle_slot} .message")).await?;
        assert_eq!(message, MARKUP);
        ensure!(
            page_flag(&browser, "return document.getElementById('injected') === null").await?,
            "the stage message became an element"
        );
        // The sidecar serves the current epoch, both versions.
        browser
            .wait_text("tr[data-sidecar='sc-1'] .converged", "sc-1 converged", DEADLINE, |t| {
                t.starts_with("yes")
            })
            .await?;
        assert_eq!(browser.text("tr[data-sidecar='sc-1'] .epoch").await?, "2");
        let serving = browser.text("tr[data-sidecar='sc-1'] .serving").await?;
        ensure!(serving.contains(&v1) && serving.contains(&v2), "sc-1 serves {serving:?}");
        // The audit trail, newest first, with the viewer's denied flip.
        assert_eq!(browser.text("#audit-table tbody tr[data-action='canary'] .actor").await?, "olga");
        assert_eq!(browser.text("#audit-table tbody tr[data-action='denied'] .actor").await?, "vera");
        assert_eq!(browser.text("#audit-verified").await?, "Hash chain verified: intact.");
        // The chart has points for both versions, and a legend naming them.
        wait_until(DEADLINE, "chart points for both versions", async || {
            let script = "return Array.from(document.querySelectorAll('#chart g[data-version]'))\
                .map(g => [g.getAttribute('data-version'), g.querySelectorAll('circle.point').length]);";
            let groups = browser.eval(script, vec![]).await?;
            let points = |version: &str| {
                groups.as_array().into_iter().flatten().find(|g| g[0] == version).and_then(|g| g[1].as_u64()).unwrap_or(0)
            };
            if points(&v1) >= 1 && points(&v2) >= 1 {
                Ok(true)
            } else {
                bail!("chart groups: {groups}")
            }
        })
        .await?;
        let legend = browser.text("#chart-legend").await?;
        ensure!(legend.contains(&v1) && legend.contains(&v2), "legend: {legend:?}");

        // The viewer's click is refused by the coordinator, shown, and audited; nothing moves.
        browser.type_into("#reason", "viewer tries").await?;
        let refused = click_change(&browser, "#do-flip", "refused").await?;
        ensure!(
            refused.contains("403") && refused.contains("vera (viewer) may not flip catalog"),
            "the page shows {refused:?}"
        );
        assert_eq!(viewer.status().await?["epoch"], 2);
        assert_eq!(viewer.status().await?["active"]["version"], v1.as_str());
        last_record_is(&viewer, "denied", "vera").await?;

        // The operator's clicks go through: canary to 25%, flip, rollback.
        browser.type_into("#token", &olga.token).await?;
        browser.click("#token-use").await?;
        browser.type_into("#canary-percent", "25").await?;
        browser.type_into("#reason", "from the dashboard").await?;
        click_change(&browser, "#do-canary", "canary done").await?;
        let status = viewer.status().await?;
        assert_eq!(status["epoch"], 3, "{status}");
        assert_eq!(status["canary"]["weight_bp"], 2500, "{status}");
        let record = last_record_is(&viewer, "canary", "olga").await?;
        assert_eq!(record["reason"], "from the dashboard", "{record}");
        assert_eq!(record["detail"]["to_percent"], 25.0, "{record}");
        wait_page_epoch(&browser, 3).await?;
        let canary = browser.text("#canary").await?;
        ensure!(canary.contains("25%"), "canary shows {canary:?}");

        click_change(&browser, "#do-flip", "flip done").await?;
        let status = viewer.status().await?;
        assert_eq!(status["active"]["version"], v2.as_str(), "{status}");
        assert_eq!(status["epoch"], 4, "{status}");
        last_record_is(&viewer, "flip", "olga").await?;
        sidecar.wait_for_epoch(NS, 4, DEADLINE).await?;
        wait_page_epoch(&browser, 4).await?;
        browser
            .wait_text("tr[data-sidecar='sc-1'] .epoch", "sc-1 on epoch 4", DEADLINE, |t| t == "4")
            .await?;
        browser
            .wait_text("tr[data-sidecar='sc-1'] .serving", "sc-1 serving v2", DEADLINE, |t| {
                t.contains(&v2)
            })
            .await?;
        assert_eq!(browser.text(&format!("#slot-{idle_slot} [data-role]")).await?, "active");

        click_change(&browser, "#do-rollback", "rollback done").await?;
        let status = viewer.status().await?;
        assert_eq!(status["active"]["version"], v1.as_str(), "{status}");
        last_record_is(&viewer, "rollback", "olga").await?;
        wait_page_epoch(&browser, 5).await?;
        browser
            .wait_text(
                "#audit-table tbody tr:first-child .action",
                "the rollback at the top of the audit trail",
                DEADLINE,
                |t| t == "rollback",
            )
            .await?;
        Ok(())
    })
    .await?;
    eprintln!("browser part took {:.1?}", started.elapsed());
    browser.quit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_changes_routing_like_sbctl_and_refuses_bad_input() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let api = Api::new(&env.coordinator, None)?;
    let dir = tempfile::tempdir()?;
    let path = |kind: &str| format!("/v1/ns/{NS}/{kind}");

    // Nothing staged yet: no namespaces, and the namespace is unknown (404), not refused.
    assert_eq!(api.ok("/v1/ns").await?, json!({"namespaces": []}));
    expect_error(
        api.post(&path("flip"), json!({"expected_epoch": 0}))
            .await?,
        404,
        "namespace catalog is unknown",
        "flip of an unknown namespace",
    )?;
    expect_error(
        api.get(&path("errors")).await?,
        404,
        "unknown",
        "errors of an unknown namespace",
    )?;

    let set1 = write_set(dir.path(), "g1", 20, 50)?.display().to_string();
    let set2 = write_set(dir.path(), "g2", 20, 50)?.display().to_string();
    let v1 = stage(&sbctl, NS, &set1).await?;
    assert_eq!(api.ok("/v1/ns").await?, json!({"namespaces": [NS]}));
    // The first flip, as sbctl makes it, with the claimed name recorded (no --auth).
    let (code, change) = api
        .send(
            api.request(reqwest::Method::POST, &path("flip"))
                .header("x-switchboard-actor", "api-user")
                .json(&json!({"expected_epoch": 0, "expected_version": v1, "reason": "first"})),
        )
        .await?;
    ensure!(code == 200, "first flip answered {code}: {change}");
    assert_eq!(change["routing"]["active"]["version"], v1.as_str());
    assert_eq!(change["routing"]["epoch"], 1);
    last_record_is(&api, "flip", "api-user").await?;
    let v2 = stage(&sbctl, NS, &set2).await?;
    let records_before = api.audit().await?.len();

    // Bad input: a clear JSON error, and nothing changes.
    let canary = path("canary");
    let cases: Vec<((u16, Value), u16, &str, &str)> =
        vec![
        (
            api.post_raw(&canary, None, r#"{"percent": 10, "expected_epoch": 1}"#).await?,
            400,
            "Content-Type: application/json",
            "no content type",
        ),
        (
            api.post_raw(&canary, Some("text/plain"), r#"{"percent": 10, "expected_epoch": 1}"#)
                .await?,
            400,
            "Content-Type: application/json",
            "a text/plain body (what a cross-site form can send)",
        ),
        (
            api.post_raw(&canary, Some("application/json"), "{not json").await?,
            400,
            "not a valid canary request",
            "bad JSON",
        ),
        (
            api.post(&canary, json!({"percent": 150, "expected_epoch": 1})).await?,
            400,
            "canary percent 150 must be 0 to 100",
            "percent over 100",
        ),
        (
            api.post(&canary, json!({"percent": -1, "expected_epoch": 1})).await?,
            400,
            "must be 0 to 100",
            "negative percent",
        ),
        (
            api.post(&canary, json!({"weight_bp": 10001, "expected_epoch": 1})).await?,
            400,
            "over 10000",
            "weight over 10000",
        ),
        (
            api.post(&canary, json!({"percent": 1.234, "expected_epoch": 1})).await?,
            400,
            "more than two decimals",
            "three decimals",
        ),
        (
            api.post(&canary, json!({"percent": 10})).await?,
            400,
            "expected_epoch is required",
            "no epoch",
        ),
        (
            api.post(&canary, json!({"percent": 10, "expected_epoch": 1, "sync": true}))
                .await?,
            400,
            "unknown field `sync`",
            "an unknown field",
        ),
        (
            api.post(&canary, json!({"percent": 10, "expected_epoch": 0})).await?,
            409,
            "changed underneath",
            "a stale epoch",
        ),
        (
            api.post(
                &canary,
                json!({"percent": 10, "expected_epoch": 1, "expected_version": "0000000000000000"}),
            )
            .await?,
            409,
            "not the version 0000000000000000",
            "another staged version",
        ),
        (
            api.post("/v1/ns/BAD/flip", json!({"expected_epoch": 1})).await?,
            400,
            "namespace \"BAD\"",
            "an invalid namespace name",
        ),
        (
            api.post("/v1/ns/nowhere/rollback", json!({"expected_epoch": 1})).await?,
            404,
            "namespace nowhere is unknown",
            "an unknown namespace",
        ),
        (
            api.get(&format!("{}?limit=0", path("audit"))).await?,
            400,
            "limit 0 must be 1 to",
            "an audit limit of 0",
        ),
        (
            api.get(&format!("{}?page=2", path("audit"))).await?,
            400,
            "takes only limit=N",
            "an unknown audit parameter",
        ),
    ];
    for (answer, status, says, what) in cases {
        expect_error(answer, status, says, what)?;
    }
    // The namespace's gates hold for the dashboard as for sbctl: a blocking gate is 422.
    set_etcd_key_gate(&sbctl, NS, "migration", "/dashboard-test/migration", "done").await?;
    expect_error(
        api.post(&canary, json!({"percent": 10, "expected_epoch": 1}))
            .await?,
        422,
        "gate migration saw",
        "a blocking gate",
    )?;
    sbctl
        .run(&["gate", "remove", NS, "migration"])
        .await?
        .ensure_success()?;
    let status = api.status().await?;
    assert_eq!(status["epoch"], 1, "{status}");
    assert!(status["canary"].is_null(), "{status}");
    // Only the two gate changes were audited meanwhile.
    assert_eq!(api.audit().await?.len(), records_before + 2);

    // Canary, flip and rollback, each decided on the epoch before it.
    let (code, change) = api
        .post(
            &canary,
            json!({"percent": 12.5, "expected_epoch": 1, "expected_version": v2, "reason": "api"}),
        )
        .await?;
    ensure!(code == 200, "canary answered {code}: {change}");
    assert_eq!(change["routing"]["canary"]["weight_bp"], 1250);
    let record = last_record_is(&api, "canary", "anonymous").await?;
    assert_eq!(record["seq"], change["audit_seq"]);
    let (code, change) = api
        .post(
            &path("flip"),
            json!({"expected_epoch": 2, "expected_version": v2}),
        )
        .await?;
    ensure!(code == 200, "flip answered {code}: {change}");
    assert_eq!(change["routing"]["active"]["version"], v2.as_str());
    let (code, change) = api
        .post(
            &path("rollback"),
            json!({"expected_epoch": 3, "reason": "back"}),
        )
        .await?;
    ensure!(code == 200, "rollback answered {code}: {change}");
    assert_eq!(change["routing"]["active"]["version"], v1.as_str());
    // sbctl sees the same routing, and the API's latest audit records.
    let seen = common::status(&sbctl, NS).await?;
    assert_eq!(seen["active"]["version"], v1.as_str(), "{seen}");
    let trail = api.ok(&format!("{}?limit=2", path("audit"))).await?;
    let actions: Vec<&str> = trail["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(actions, ["flip", "rollback"]);
    assert_eq!(trail["verified"]["intact"], true, "{trail}");

    // The page and its files, with a policy that allows nothing from elsewhere.
    let http = reqwest::Client::builder().no_proxy().build()?;
    for (file, content_type) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let response = http
            .get(format!("{}{file}", env.coordinator.http_url()))
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 200, "{file}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        ensure!(
            header("content-type").starts_with(content_type),
            "{file}: {}",
            header("content-type")
        );
        ensure!(
            header("content-security-policy").contains("default-src 'none'"),
            "{file}: {}",
            header("content-security-policy")
        );
    }

    // A rollout, for the page to show its steps; the judge holds it at its first step for
    // want of data.
    sbctl
        .run(&["rollout", NS, "--steps", "10,50,100", "--interval", "3600"])
        .await?
        .ensure_success()?;

    // Without --auth the page reads without a token.
    let browser = Browser::start().await?;
    with_screenshot_on_failure(&browser, async || {
        browser
            .goto(&format!("{}/#ns={NS}", env.coordinator.http_url()))
            .await?;
        browser
            .wait_text("#ns-name", "the namespace", DEADLINE, |t| t == NS)
            .await?;
        ensure!(
            page_flag(
                &browser,
                "return document.getElementById('auth-needed').hidden"
            )
            .await?,
            "the page asks for a token from an open coordinator"
        );
        assert_eq!(browser.text("#token-state").await?, "no token");
        browser
            .wait_text("#rollout-state", "the rollout", DEADLINE, |t| {
                t.starts_with("running")
            })
            .await?;
        let steps = browser
            .eval(
                "return Array.from(document.querySelectorAll('#rollout-steps li'))\
                 .map(li => [li.textContent, li.className]);",
                vec![],
            )
            .await?;
        assert_eq!(
            steps,
            json!([["10%", "current"], ["50%", ""], ["100%", ""]]),
            "rollout steps"
        );
        assert_eq!(
            browser.text("#active").await?,
            format!(
                "{} · {v1}",
                status["active"]["slot"].as_str().unwrap_or_default()
            )
        );
        Ok(())
    })
    .await?;
    browser.quit().await
}

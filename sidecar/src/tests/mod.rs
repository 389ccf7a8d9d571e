//! Unit tests of the sidecar's serving side: snapshots and the sticky canary choice, the HTTP
//! router and the gRPC reader service, all in process, without etcd or sockets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};
use switchboard_proto::ItemSet;
use switchboard_proto::bucket::on_canary;
use switchboard_proto::set::canonical_json;
use switchboard_proto::types::{Canary, Routing, Slot, SlotVersion};

use tokio::sync::Notify;

use crate::namespace::Namespace;
use crate::serve::Served;
use crate::snapshot::{LoadedSet, Snapshot};

const NS: &str = "catalog";
const UNLOADED_NS: &str = "pending";
const SEED: u64 = 0x5eed_1234_abcd_0042;
const V1: &str = "1111aaaa2222bbbb";
const V2: &str = "3333cccc4444dddd";

/// A value whose JSON text needs escaping: quotes, backslashes, control characters, non-ASCII.
fn tricky_value() -> Value {
    json!({
        "note": "say \"hi\" \\ back\\slash\nnew line\ttab",
        "unicode": "ünïcødé – 中文 – 🚀",
        "nested": {"z": [1, 2.5, -3, null, true], "a": "\u{0001}"},
    })
}

/// The active set (v1) served from blue.
fn v1_items() -> Vec<(&'static str, Value)> {
    vec![
        (
            "tables/sales/orders",
            json!({"columns": ["id", "total"], "owner": "sales", "v": 1}),
        ),
        (
            "tables/sales/customers",
            json!({"columns": ["id", "name"], "v": 1}),
        ),
        ("tables/hr/people", tricky_value()),
        ("tables-archive/old", json!({"archived": true})),
        ("tags/pii", json!(["email", "phone"])),
        ("policies/retention", json!(365)),
    ]
}

/// The canary set (v2) served from green: changed values and one new item.
fn v2_items() -> Vec<(&'static str, Value)> {
    vec![
        (
            "tables/sales/orders",
            json!({"columns": ["id", "total", "currency"], "owner": "sales", "v": 2}),
        ),
        (
            "tables/sales/customers",
            json!({"columns": ["id", "name"], "v": 2}),
        ),
        ("tables/sales/returns", json!({"columns": ["id"], "v": 2})),
        ("tables/hr/people", tricky_value()),
        ("tags/pii", json!(["email"])),
    ]
}

fn loaded(version: &str, items: &[(&str, Value)]) -> Arc<LoadedSet> {
    let mut set = ItemSet::new();
    for (key, value) in items {
        set.insert_value(key, value).expect("test items are valid");
    }
    Arc::new(LoadedSet {
        manifest_hash: format!("manifest-of-{version}"),
        version: version.to_string(),
        checksum: format!("checksum-of-{version}"),
        items: set,
    })
}

fn routing(epoch: u64, active: (Slot, &str), canary: Option<(Slot, &str, u32)>) -> Routing {
    Routing {
        epoch,
        active: SlotVersion {
            slot: active.0,
            version: active.1.to_string(),
            manifest: format!("manifest-of-{}", active.1),
        },
        canary: canary.map(|(slot, version, weight_bp)| Canary {
            slot,
            version: version.to_string(),
            manifest: format!("manifest-of-{version}"),
            weight_bp,
            seed: SEED,
        }),
        previous: None,
        bake_until_ms: None,
        prepare: None,
        activate_at_ms: None,
        acknowledge_within_ms: None,
        action: "canary".to_string(),
        by: "test".to_string(),
        reason: "unit test".to_string(),
        at_ms: 0,
    }
}

/// v1 active on blue, v2 on green as a canary of `weight_bp` (the canary set is loaded even at
/// weight 0, to check that the weight alone decides).
fn canary_snapshot(epoch: u64, weight_bp: u32) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        routing: routing(epoch, (Slot::Blue, V1), Some((Slot::Green, V2, weight_bp))),
        active: loaded(V1, &v1_items()),
        canary: Some(loaded(V2, &v2_items())),
        previous: None,
    })
}

/// After a flip: v2 active on green, no canary.
fn flipped_snapshot(epoch: u64) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        routing: routing(epoch, (Slot::Green, V2), None),
        active: loaded(V2, &v2_items()),
        canary: None,
        previous: None,
    })
}

const BAKE_UNTIL_MS: u64 = 1_800_000_000_000;

/// After a flip from v1 (blue) to v2 (green), while the bake time runs.
fn baking_routing(epoch: u64) -> Routing {
    Routing {
        previous: Some(SlotVersion {
            slot: Slot::Blue,
            version: V1.to_string(),
            manifest: format!("manifest-of-{V1}"),
        }),
        bake_until_ms: Some(BAKE_UNTIL_MS),
        prepare: None,
        activate_at_ms: None,
        acknowledge_within_ms: None,
        action: "flip".to_string(),
        ..routing(epoch, (Slot::Green, V2), None)
    }
}

/// v2 served from green, v1 held for a flip back.
fn baking_snapshot(epoch: u64) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        routing: baking_routing(epoch),
        active: loaded(V2, &v2_items()),
        canary: None,
        previous: Some(loaded(V1, &v1_items())),
    })
}

fn consumers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("consumer-{i}")).collect()
}

/// The first name `{stem}-{i}` whose canary membership at `weight_bp` is `want`.
fn find_consumer(stem: &str, weight_bp: u32, want: bool) -> String {
    (0..100_000)
        .map(|i| format!("{stem}-{i}"))
        .find(|c| on_canary(c, SEED, weight_bp) == want)
        .expect("a 50% canary has consumers on both sides")
}

const WEIGHT: u32 = 5000;
const EPOCH: u64 = 7;
const STARTED_AT_MS: u64 = 1_700_000_000_000;

/// A sidecar serving `NS` (loaded with a live 50% canary) and `UNLOADED_NS` (never loaded).
fn served_with_id(id: &str) -> Arc<Served> {
    let loaded_ns = Namespace::new(NS);
    loaded_ns.publish(canary_snapshot(EPOCH, WEIGHT));
    let unloaded_ns = Namespace::new(UNLOADED_NS);
    let namespaces: HashMap<String, Arc<Namespace>> = [loaded_ns, unloaded_ns]
        .into_iter()
        .map(|ns| (ns.name.clone(), ns))
        .collect();
    Arc::new(Served {
        api_token_sha256: None,
        id: id.to_string(),
        namespaces,
        started_at_ms: STARTED_AT_MS,
        reports_changed: Arc::new(Notify::new()),
        metrics: None,
        shutdown: tokio_util::sync::CancellationToken::new(),
    })
}

fn served() -> Arc<Served> {
    served_with_id("sidecar-test")
}

/// What a consumer should be served from `canary_snapshot(EPOCH, WEIGHT)`.
fn expected_for(consumer: &str) -> (Slot, &'static str, Vec<(&'static str, Value)>) {
    if on_canary(consumer, SEED, WEIGHT) {
        (Slot::Green, V2, v2_items())
    } else {
        (Slot::Blue, V1, v1_items())
    }
}

mod snapshot {
    use super::*;

    #[test]
    fn without_a_canary_everyone_gets_the_active_set() {
        let snapshot = flipped_snapshot(3);
        for consumer in consumers(2000) {
            let choice = snapshot.choose(&consumer);
            assert_eq!(choice.slot, Slot::Green, "{consumer}");
            assert_eq!(choice.epoch, 3);
            assert!(Arc::ptr_eq(choice.set, &snapshot.active), "{consumer}");
        }
        // The empty consumer too.
        assert!(Arc::ptr_eq(snapshot.choose("").set, &snapshot.active));
    }

    #[test]
    fn a_live_canary_takes_exactly_the_consumers_in_its_buckets() {
        for weight_bp in [1, 100, 2500, 5000, 9999] {
            let snapshot = canary_snapshot(9, weight_bp);
            let canary_set = snapshot.canary.as_ref().expect("canary loaded");
            let mut on = 0;
            for consumer in consumers(4000) {
                let choice = snapshot.choose(&consumer);
                assert_eq!(choice.epoch, 9);
                if on_canary(&consumer, SEED, weight_bp) {
                    on += 1;
                    assert_eq!(choice.slot, Slot::Green, "{consumer} at {weight_bp}");
                    assert!(Arc::ptr_eq(choice.set, canary_set), "{consumer}");
                    assert_eq!(choice.set.version, V2);
                } else {
                    assert_eq!(choice.slot, Slot::Blue, "{consumer} at {weight_bp}");
                    assert!(Arc::ptr_eq(choice.set, &snapshot.active), "{consumer}");
                    assert_eq!(choice.set.version, V1);
                }
            }
            if (2500..=5000).contains(&weight_bp) {
                // Not a vacuous comparison: both sides are populated.
                assert!(
                    on > 0 && on < 4000,
                    "{on} of 4000 on a {weight_bp} bp canary"
                );
            }
        }
    }

    #[test]
    fn a_full_canary_takes_everyone() {
        let snapshot = canary_snapshot(2, 10_000);
        for consumer in consumers(2000) {
            assert_eq!(snapshot.choose(&consumer).slot, Slot::Green, "{consumer}");
        }
    }

    #[test]
    fn raising_the_weight_only_adds_consumers() {
        let low = canary_snapshot(1, 1000);
        let high = canary_snapshot(2, 4000);
        for consumer in consumers(4000) {
            if low.choose(&consumer).slot == Slot::Green {
                assert_eq!(high.choose(&consumer).slot, Slot::Green, "{consumer}");
            }
        }
    }

    #[test]
    fn at_weight_zero_nobody_is_on_the_canary() {
        // A canary of weight 0 in routing, even with its set loaded.
        let zero = canary_snapshot(4, 0);
        // No canary in routing, but a stale canary set in the snapshot.
        let none = Arc::new(Snapshot {
            routing: routing(4, (Slot::Blue, V1), None),
            active: loaded(V1, &v1_items()),
            canary: Some(loaded(V2, &v2_items())),
            previous: None,
        });
        for snapshot in [&zero, &none] {
            for consumer in consumers(2000) {
                let choice = snapshot.choose(&consumer);
                assert_eq!(choice.slot, Slot::Blue, "{consumer}");
                assert!(Arc::ptr_eq(choice.set, &snapshot.active), "{consumer}");
            }
        }
    }

    #[test]
    fn a_live_canary_without_its_set_serves_the_active_set() {
        let snapshot = Snapshot {
            routing: routing(5, (Slot::Blue, V1), Some((Slot::Green, V2, 10_000))),
            active: loaded(V1, &v1_items()),
            canary: None,
            previous: None,
        };
        for consumer in consumers(500) {
            assert_eq!(snapshot.choose(&consumer).slot, Slot::Blue, "{consumer}");
        }
        assert_eq!(snapshot.served_sets().len(), 1);
    }

    #[test]
    fn served_sets_list_the_canary_only_while_it_is_live() {
        let summary = |snapshot: &Snapshot| -> Vec<(Slot, String)> {
            snapshot
                .served_sets()
                .into_iter()
                .map(|(slot, set)| (slot, set.version.clone()))
                .collect()
        };
        assert_eq!(
            summary(&canary_snapshot(1, 250)),
            vec![(Slot::Blue, V1.to_string()), (Slot::Green, V2.to_string())]
        );
        assert_eq!(
            summary(&canary_snapshot(1, 0)),
            vec![(Slot::Blue, V1.to_string())]
        );
        assert_eq!(
            summary(&flipped_snapshot(2)),
            vec![(Slot::Green, V2.to_string())]
        );
        let live = canary_snapshot(1, 250);
        let sets = live.served_sets();
        assert!(Arc::ptr_eq(sets[0].1, &live.active));
        assert!(Arc::ptr_eq(
            sets[1].1,
            live.canary.as_ref().expect("canary loaded")
        ));
    }
}

/// The counts reported for `version` in namespace `ns`, as the health record publishes them.
fn counts(served: &Served, ns: &str, version: &str) -> Option<(u64, u64)> {
    served.namespaces[ns]
        .reports()
        .into_iter()
        .find(|r| r.version == version)
        .map(|r| (r.ok, r.errors))
}

/// Whether no namespace has counted anything.
fn no_reports(served: &Served) -> bool {
    served.namespaces.values().all(|ns| ns.reports().is_empty())
}

mod reports {
    use super::*;

    use std::time::{Duration, Instant};

    use switchboard_proto::VersionReports;

    use crate::reports::{ACCEPT_FOR, RECENT_VERSIONS, Refused, Reports};

    fn published(reports: &Reports) -> Vec<(String, u64, u64)> {
        reports
            .published()
            .into_iter()
            .map(
                |VersionReports {
                     version,
                     ok,
                     errors,
                 }| (version, ok, errors),
            )
            .collect()
    }

    #[test]
    fn counts_add_up_per_version_for_the_versions_served() {
        let now = Instant::now();
        let mut reports = Reports::default();
        reports.note_served(&["v1", "v2"], now);
        assert_eq!(reports.add("v1", 3, 1, now), Ok(true));
        assert_eq!(reports.add("v1", 2, 0, now), Ok(true));
        assert_eq!(reports.add("v2", 0, 4, now), Ok(true));
        assert_eq!(
            published(&reports),
            vec![("v1".into(), 5, 1), ("v2".into(), 0, 4)]
        );
    }

    #[test]
    fn only_versions_with_outcomes_are_published() {
        let now = Instant::now();
        let mut reports = Reports::default();
        reports.note_served(&["v1", "v2"], now);
        let generation = reports.generation();
        // An empty report is accepted but changes nothing, so nothing needs writing.
        assert_eq!(reports.add("v2", 0, 0, now), Ok(false));
        assert_eq!(reports.generation(), generation);
        assert!(published(&reports).is_empty());
        assert_eq!(reports.add("v2", 1, 0, now), Ok(true));
        assert_ne!(reports.generation(), generation);
        assert_eq!(published(&reports), vec![("v2".into(), 1, 0)]);
    }

    #[test]
    fn a_report_that_would_overflow_a_count_is_refused_whole() {
        let now = Instant::now();
        let mut reports = Reports::default();
        reports.note_served(&["v1"], now);
        assert_eq!(reports.add("v1", u64::MAX, u64::MAX - 1, now), Ok(true));
        // u64::MAX + 1 would saturate or wrap: refused, and neither count moves.
        assert_eq!(reports.add("v1", 1, 0, now), Err(Refused::CountsFull));
        assert_eq!(reports.add("v1", 0, 2, now), Err(Refused::CountsFull));
        assert_eq!(
            published(&reports),
            vec![("v1".into(), u64::MAX, u64::MAX - 1)]
        );
        assert_eq!(reports.add("v1", 0, 1, now), Ok(true));
    }

    /// Report sizes that reach the edges: zero, small, huge, near and at `u64::MAX`.
    fn report_count() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            Just(0u64),
            0..5u64,
            0..1_000_000u64,
            any::<u64>(),
            (u64::MAX - 3)..=u64::MAX,
        ]
    }

    proptest::proptest! {
        /// No sequence of reports makes an accepted one count short: each accepted report moves
        /// the counts by exactly what it carried, so the judge cannot miss a later error or
        /// success, and a refused one moves nothing.
        #[test]
        fn every_accepted_report_counts_exactly_whatever_came_before(
            sequence in proptest::collection::vec((report_count(), report_count()), 0..60)
        ) {
            let now = Instant::now();
            let mut reports = Reports::default();
            reports.note_served(&["v1"], now);
            let (mut ok, mut errors) = (0u128, 0u128);
            for (add_ok, add_errors) in sequence {
                let fits = ok + u128::from(add_ok) <= u128::from(u64::MAX)
                    && errors + u128::from(add_errors) <= u128::from(u64::MAX);
                match reports.add("v1", add_ok, add_errors, now) {
                    Ok(_) => {
                        proptest::prop_assert!(fits, "a report past the limit was accepted");
                        ok += u128::from(add_ok);
                        errors += u128::from(add_errors);
                    }
                    Err(refused) => {
                        proptest::prop_assert_eq!(refused, Refused::CountsFull);
                        proptest::prop_assert!(!fits, "a report that fits was refused");
                    }
                }
                let counted = published(&reports)
                    .first()
                    .map_or((0, 0), |(_, ok, errors)| (*ok, *errors));
                proptest::prop_assert_eq!(
                    (u128::from(counted.0), u128::from(counted.1)),
                    (ok, errors)
                );
            }
        }
    }

    #[test]
    fn a_version_never_served_is_refused_with_the_accepted_versions() {
        let now = Instant::now();
        let mut reports = Reports::default();
        assert_eq!(
            reports.add("v1", 1, 0, now),
            Err(Refused::UnknownVersion { accepted: vec![] })
        );
        reports.note_served(&["v1"], now);
        reports.note_served(&["v2", "v3"], now + Duration::from_secs(1));
        assert_eq!(
            reports.add("nope", 1, 0, now + Duration::from_secs(2)),
            Err(Refused::UnknownVersion {
                accepted: vec!["v2".into(), "v3".into(), "v1".into()]
            }),
            "the versions served first, then the most recent"
        );
        assert!(published(&reports).is_empty());
    }

    #[test]
    fn a_version_stays_accepted_for_ten_minutes_after_it_stops_being_served() {
        let start = Instant::now();
        let mut reports = Reports::default();
        reports.note_served(&["v1"], start);
        // Served for an hour: accepted all along.
        let flip = start + Duration::from_secs(3600);
        assert!(reports.accepts("v1", flip));
        reports.note_served(&["v2"], flip);
        // Right after the flip, and until ten minutes later.
        assert_eq!(reports.add("v1", 1, 0, flip), Ok(true));
        assert_eq!(reports.add("v1", 1, 0, flip + ACCEPT_FOR), Ok(true));
        let later = flip + ACCEPT_FOR + Duration::from_millis(1);
        assert!(!reports.accepts("v1", later));
        assert_eq!(
            reports.add("v1", 1, 0, later),
            Err(Refused::UnknownVersion {
                accepted: vec!["v2".into()]
            })
        );
        // The version served now stays accepted however long it is served.
        assert!(reports.accepts("v2", later + Duration::from_secs(86_400)));
        // Its counts stay published.
        assert_eq!(published(&reports), vec![("v1".into(), 2, 0)]);

        // Served again (a flip back): accepted again, and counting on from where it was.
        reports.note_served(&["v1"], later);
        assert_eq!(reports.add("v1", 1, 0, later), Ok(true));
        assert_eq!(published(&reports), vec![("v1".into(), 3, 0)]);
    }

    #[test]
    fn only_the_most_recent_versions_are_remembered() {
        let start = Instant::now();
        let mut reports = Reports::default();
        let versions: Vec<String> = (0..RECENT_VERSIONS + 3).map(|i| format!("v{i}")).collect();
        for (i, version) in versions.iter().enumerate() {
            let at = start + Duration::from_secs(i as u64);
            // Always served alongside the first version, as a long-lived baseline.
            reports.note_served(&[versions[0].as_str(), version.as_str()], at);
            assert_eq!(reports.add(version, 1, 0, at), Ok(true));
        }
        let now = start + Duration::from_secs(versions.len() as u64);
        let accepted = reports.accepted_versions(now);
        assert_eq!(accepted.len(), RECENT_VERSIONS, "{accepted:?}");
        // The version served all along is never forgotten; the oldest of the others are, with
        // their counts, and reports for them are refused.
        assert!(reports.accepts("v0", now));
        for forgotten in ["v1", "v2", "v3"] {
            assert!(!reports.accepts(forgotten, now), "{forgotten}");
            assert!(reports.add(forgotten, 1, 0, now).is_err(), "{forgotten}");
        }
        let counted: Vec<String> = published(&reports).into_iter().map(|r| r.0).collect();
        assert_eq!(counted.len(), RECENT_VERSIONS);
        assert!(
            !counted
                .iter()
                .any(|v| ["v1", "v2", "v3"].contains(&v.as_str()))
        );
    }

    #[test]
    fn publishing_a_snapshot_notes_its_served_versions() {
        let ns = Namespace::new(NS);
        assert!(ns.report(V1, 1, 0).is_err(), "nothing served yet");
        // A canary at weight 0 is not served: reports for it are refused.
        ns.publish(canary_snapshot(1, 0));
        assert_eq!(ns.report(V1, 1, 0), Ok(true));
        assert_eq!(
            ns.report(V2, 1, 0),
            Err(Refused::UnknownVersion {
                accepted: vec![V1.to_string()]
            })
        );
        ns.publish(canary_snapshot(2, 100));
        assert_eq!(ns.report(V2, 1, 0), Ok(true));
        // After the flip to v2, v1 is no longer served but still accepted.
        ns.publish(flipped_snapshot(3));
        assert_eq!(ns.report(V1, 0, 1), Ok(true));
        let reports: Vec<(String, u64, u64)> = ns
            .reports()
            .into_iter()
            .map(|r| (r.version, r.ok, r.errors))
            .collect();
        assert_eq!(
            reports,
            vec![(V1.to_string(), 1, 1), (V2.to_string(), 1, 0)]
        );
    }
}

mod feed;

mod http {
    use super::*;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{HeaderMap, Method, Request, StatusCode, header};
    use tower::ServiceExt;

    use crate::http::CONSUMER_HEADER;

    /// The router with the default host allowlist (loopback names and IP addresses).
    fn router(served: Arc<Served>) -> Router {
        crate::http::router(served, switchboard_runtime::host::HostAllowlist::default())
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                panic!(
                    "body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&self.body)
                )
            })
        }

        fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
                .to_str()
                .expect("header is text")
        }

        /// The slot, version and epoch headers.
        fn served(&self) -> (String, String, String) {
            (
                self.header("x-switchboard-slot").to_string(),
                self.header("x-switchboard-version").to_string(),
                self.header("x-switchboard-epoch").to_string(),
            )
        }

        fn error_text(&self) -> String {
            self.json()["error"]
                .as_str()
                .unwrap_or_else(|| panic!("no error text in {}", self.json()))
                .to_string()
        }
    }

    async fn call(app: &Router, request: Request<Body>) -> Answer {
        let response = app
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body is readable")
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(app: &Router, uri: &str) -> Answer {
        call(
            app,
            Request::get(uri)
                .body(Body::empty())
                .expect("valid request"),
        )
        .await
    }

    async fn get_as(app: &Router, uri: &str, consumer: &str) -> Answer {
        let request = Request::get(uri)
            .header(CONSUMER_HEADER, consumer)
            .body(Body::empty())
            .expect("valid request");
        call(app, request).await
    }

    async fn post(app: &Router, uri: &str, body: impl Into<Body>) -> Answer {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .expect("valid request");
        call(app, request).await
    }

    fn value_of(items: &[(&str, Value)], key: &str) -> Value {
        items
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {key} in the fixture"))
    }

    fn expected_headers(consumer: &str) -> (String, String, String) {
        let (slot, version, _) = expected_for(consumer);
        (
            slot.as_str().to_string(),
            version.to_string(),
            EPOCH.to_string(),
        )
    }

    #[tokio::test]
    async fn item_read_returns_canonical_json_and_the_served_headers() {
        let app = router(served());
        let consumer = find_consumer("app", WEIGHT, false);
        let answer = get_as(&app, "/v1/ns/catalog/items/tables/sales/orders", &consumer).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.body,
            canonical_json(&value_of(&v1_items(), "tables/sales/orders"))
        );
        assert_eq!(answer.header("content-type"), "application/json");
        assert_eq!(
            answer.served(),
            ("blue".to_string(), V1.to_string(), EPOCH.to_string())
        );

        // A value that needs escaping comes back byte for byte, and parses to the original.
        let answer = get_as(&app, "/v1/ns/catalog/items/tables/hr/people", &consumer).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, canonical_json(&tricky_value()));
        assert_eq!(answer.json(), tricky_value());
    }

    #[tokio::test]
    async fn the_consumer_header_and_query_parameter_choose_canary_or_baseline() {
        let app = router(served());
        let on = find_consumer("app", WEIGHT, true);
        let off = find_consumer("app", WEIGHT, false);
        for consumer in [&on, &off] {
            let (slot, version, items) = expected_for(consumer);
            let expected_value = canonical_json(&value_of(&items, "tables/sales/orders"));
            let by_header =
                get_as(&app, "/v1/ns/catalog/items/tables/sales/orders", consumer).await;
            let by_query = get(
                &app,
                &format!("/v1/ns/catalog/items/tables/sales/orders?consumer={consumer}"),
            )
            .await;
            for answer in [&by_header, &by_query] {
                assert_eq!(answer.status, StatusCode::OK, "{consumer}");
                assert_eq!(answer.served(), expected_headers(consumer), "{consumer}");
                assert_eq!(answer.header("x-switchboard-slot"), slot.as_str());
                assert_eq!(answer.header("x-switchboard-version"), version);
                assert_eq!(answer.body, expected_value, "{consumer}");
            }
        }
        // The canary-only item exists for a canary consumer and not for the others.
        let answer = get_as(&app, "/v1/ns/catalog/items/tables/sales/returns", &on).await;
        assert_eq!(answer.status, StatusCode::OK);
        let answer = get_as(&app, "/v1/ns/catalog/items/tables/sales/returns", &off).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.served(), expected_headers(&off));

        // Many consumers, each consistent with the bucket hash.
        for consumer in consumers(64) {
            let answer = get_as(&app, "/v1/ns/catalog/items/tags/pii", &consumer).await;
            assert_eq!(answer.served(), expected_headers(&consumer), "{consumer}");
        }
    }

    #[tokio::test]
    async fn without_a_consumer_the_sidecar_id_is_the_consumer() {
        for want in [true, false] {
            let id = find_consumer("sidecar", WEIGHT, want);
            let app = router(served_with_id(&id));
            let answer = get(&app, "/v1/ns/catalog/items/tables/sales/orders").await;
            assert_eq!(answer.status, StatusCode::OK);
            let expected_slot = if want { "green" } else { "blue" };
            assert_eq!(answer.header("x-switchboard-slot"), expected_slot, "{id}");
            assert_eq!(answer.served(), expected_headers(&id));
            // An empty consumer is no consumer.
            let answer = get_as(&app, "/v1/ns/catalog/items/tables/sales/orders", "").await;
            assert_eq!(answer.header("x-switchboard-slot"), expected_slot, "{id}");
            let answer = get(&app, "/v1/ns/catalog/items/tables/sales/orders?consumer=").await;
            assert_eq!(answer.header("x-switchboard-slot"), expected_slot, "{id}");
        }
    }

    #[tokio::test]
    async fn unknown_keys_and_namespaces_are_404_with_a_json_error() {
        let app = router(served());
        let answer = get(&app, "/v1/ns/catalog/items/tables/sales/nope").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert!(answer.error_text().contains("tables/sales/nope"));
        assert_eq!(answer.header("content-type"), "application/json");

        let answer = get(&app, "/v1/ns/elsewhere/items/tables/sales/orders").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert!(answer.error_text().contains("elsewhere"));

        let answer = get(&app, "/v1/ns/elsewhere/items?prefix=tables/").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert!(answer.error_text().contains("elsewhere"));
    }

    #[tokio::test]
    async fn an_unloaded_namespace_is_503_until_its_first_snapshot() {
        let served = served();
        let app = router(served.clone());
        for uri in [
            "/v1/ns/pending/items/tables/sales/orders",
            "/v1/ns/pending/items?prefix=tables/",
            "/v1/ns/pending/items",
        ] {
            let answer = get(&app, uri).await;
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            assert!(answer.error_text().contains(UNLOADED_NS), "{uri}");
        }
        served.namespaces[UNLOADED_NS].publish(flipped_snapshot(1));
        let answer = get(&app, "/v1/ns/pending/items/tables/sales/orders").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.served(),
            ("green".to_string(), V2.to_string(), "1".to_string())
        );
    }

    /// Checks a list answer against the set the consumer should get.
    fn check_list(answer: &Answer, consumer: &str, prefix: &str) {
        assert_eq!(answer.status, StatusCode::OK, "{consumer} {prefix:?}");
        assert_eq!(answer.header("content-type"), "application/json");
        let (slot, version, items) = expected_for(consumer);
        let body = answer.json();
        assert_eq!(body["slot"], json!(slot.as_str()));
        assert_eq!(body["version"], json!(version));
        assert_eq!(body["epoch"], json!(EPOCH));
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(4),
            "exactly slot, version, epoch, items: {body}"
        );
        assert_eq!(answer.served(), expected_headers(consumer));
        let expected: serde_json::Map<String, Value> = items
            .into_iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.to_string(), value))
            .collect();
        assert!(
            !expected.is_empty(),
            "the fixture has items under {prefix:?}"
        );
        assert_eq!(
            body["items"],
            Value::Object(expected),
            "{consumer} {prefix:?}"
        );
    }

    #[tokio::test]
    async fn prefix_reads_return_exactly_the_prefixed_items_from_one_set() {
        let app = router(served());
        let on = find_consumer("app", WEIGHT, true);
        let off = find_consumer("app", WEIGHT, false);
        for consumer in [&on, &off] {
            let answer = get_as(&app, "/v1/ns/catalog/items?prefix=tables/", consumer).await;
            check_list(&answer, consumer, "tables/");
            // "tables-archive/old" shares the letters but not the prefix.
            assert!(answer.json()["items"].get("tables-archive/old").is_none());
            // The value that needs escaping survives the assembly of the answer.
            assert_eq!(answer.json()["items"]["tables/hr/people"], tricky_value());

            let answer = get(
                &app,
                &format!("/v1/ns/catalog/items?prefix=tables/sales/&consumer={consumer}"),
            )
            .await;
            check_list(&answer, consumer, "tables/sales/");

            // Empty and missing prefixes return everything.
            let answer = get_as(&app, "/v1/ns/catalog/items?prefix=", consumer).await;
            check_list(&answer, consumer, "");
            let answer = get_as(&app, "/v1/ns/catalog/items", consumer).await;
            check_list(&answer, consumer, "");
        }
        // A prefix matching nothing gives an empty object, still valid JSON.
        let answer = get_as(&app, "/v1/ns/catalog/items?prefix=nothing/", &off).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["items"], json!({}));
    }

    #[tokio::test]
    async fn readiness_waits_for_every_namespace_and_health_is_always_ok() {
        let served = served();
        let app = router(served.clone());
        let answer = get(&app, "/healthz").await;
        assert_eq!(answer.status, StatusCode::OK);

        let answer = get(&app, "/readyz").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.json()["not_loaded"], json!([UNLOADED_NS]));
        assert_eq!(answer.json()["ready"], json!(false));

        served.namespaces[UNLOADED_NS].publish(flipped_snapshot(1));
        let answer = get(&app, "/readyz").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["ready"], json!(true));
        let answer = get(&app, "/healthz").await;
        assert_eq!(answer.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn status_names_the_sidecar_and_each_namespace_epoch_and_sets() {
        let app = router(served_with_id("sidecar-status"));
        let answer = get(&app, "/v1/status").await;
        assert_eq!(answer.status, StatusCode::OK);
        let body = answer.json();
        assert_eq!(body["id"], json!("sidecar-status"));

        let catalog = &body["namespaces"][NS];
        assert_eq!(catalog["epoch"], json!(EPOCH));
        let loaded: Vec<(Value, Value, Value)> = catalog["loaded"]
            .as_array()
            .expect("loaded is a list")
            .iter()
            .map(|s| {
                (
                    s["slot"].clone(),
                    s["version"].clone(),
                    s["checksum"].clone(),
                )
            })
            .collect();
        assert_eq!(
            loaded,
            vec![
                (json!("blue"), json!(V1), json!(format!("checksum-of-{V1}"))),
                (
                    json!("green"),
                    json!(V2),
                    json!(format!("checksum-of-{V2}"))
                ),
            ]
        );
        assert_eq!(catalog["loaded"][0]["items"], json!(v1_items().len()));
        assert_eq!(catalog["canary"]["percent"], json!(50.0));

        let pending = &body["namespaces"][UNLOADED_NS];
        assert_eq!(pending["epoch"], json!(0));
        assert_eq!(pending["loaded"], json!([]));
    }

    #[tokio::test]
    async fn reports_are_accepted_and_counted() {
        let served = served();
        let app = router(served.clone());
        let answer = post(
            &app,
            "/v1/ns/catalog/report",
            r#"{"version": "1111aaaa2222bbbb", "ok": 5, "errors": 2}"#,
        )
        .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
        let answer = post(
            &app,
            "/v1/ns/catalog/report",
            r#"{"version": "1111aaaa2222bbbb", "ok": 1}"#,
        )
        .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
        assert_eq!(counts(&served, NS, V1), Some((6, 2)));
    }

    #[tokio::test]
    async fn bad_reports_are_refused_and_not_counted() {
        let served = served();
        let app = router(served.clone());

        for body in [
            "not json",
            r#"{"ok": 1}"#,
            r#"{"version": "v", "ok": -1}"#,
            r#"{"version": 7}"#,
        ] {
            let answer = post(&app, "/v1/ns/catalog/report", body).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
            let error = answer.error_text();
            assert!(
                error.contains(r#"{"version": V, "ok": N, "errors": M}"#),
                "the error names the expected shape: {error}"
            );
        }

        let answer = post(
            &app,
            "/v1/ns/catalog/report",
            r#"{"version": "", "ok": 1, "errors": 0}"#,
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer.error_text().contains("version"));

        let answer = post(
            &app,
            "/v1/ns/catalog/report",
            format!(r#"{{"version": "{}", "ok": 1}}"#, "v".repeat(65)),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);

        let answer = post(
            &app,
            "/v1/ns/elsewhere/report",
            r#"{"version": "v1", "ok": 1, "errors": 0}"#,
        )
        .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert!(answer.error_text().contains("elsewhere"));

        assert!(no_reports(&served));
    }

    #[tokio::test]
    async fn reports_out_of_bounds_unknown_fields_and_other_types_are_refused() {
        let served = served();
        let app = router(served.clone());
        let over = r#"{"version": "1111aaaa2222bbbb", "ok": 1000001}"#;
        let answer = post(&app, "/v1/ns/catalog/report", over).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(
            answer.error_text().starts_with("ok is 1000001"),
            "{}",
            answer.error_text()
        );
        let over = r#"{"version": "1111aaaa2222bbbb", "ok": 0, "errors": 18446744073709551615}"#;
        let answer = post(&app, "/v1/ns/catalog/report", over).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(
            answer.error_text().starts_with("errors is "),
            "{}",
            answer.error_text()
        );
        // `error` for `errors` would count nothing and say nothing.
        let misspelt = r#"{"version": "1111aaaa2222bbbb", "error": 5}"#;
        let answer = post(&app, "/v1/ns/catalog/report", misspelt).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(
            answer.error_text().contains("unknown field `error`"),
            "{}",
            answer.error_text()
        );
        for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
            let mut request = Request::builder()
                .method(Method::POST)
                .uri("/v1/ns/catalog/report");
            if !content_type.is_empty() {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            let request = request
                .body(Body::from(r#"{"version": "1111aaaa2222bbbb", "ok": 1}"#))
                .expect("valid request");
            let answer = call(&app, request).await;
            assert_eq!(
                answer.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}"
            );
            assert!(answer.error_text().contains("application/json"));
        }
        // The media type is read in any case and with parameters.
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/ns/catalog/report")
            .header(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")
            .body(Body::from(
                r#"{"version": "1111aaaa2222bbbb", "ok": 1000000}"#,
            ))
            .expect("valid request");
        assert_eq!(call(&app, request).await.status, StatusCode::ACCEPTED);
        assert_eq!(counts(&served, NS, V1), Some((1_000_000, 0)));
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        use sha2::Digest;
        let mut served = Arc::into_inner(served()).expect("one owner");
        served.api_token_sha256 = Some(sha2::Sha256::digest(b"s3cret").to_vec());
        for good in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
            assert!(served.authorized(Some(good.as_bytes())), "{good}");
        }
        for bad in [
            "Bearer s3cre",
            "Bearers3cret",
            "Basic s3cret",
            "s3cret",
            "Bearer",
            "",
        ] {
            assert!(!served.authorized(Some(bad.as_bytes())), "{bad}");
        }
        assert!(!served.authorized(None));
    }

    /// A valid report for v1 padded with spaces to exactly `len` bytes.
    fn padded_report(len: usize) -> Vec<u8> {
        let mut body = format!(r#"{{"version": "{V1}", "ok": 1, "errors": 0"#).into_bytes();
        body.resize(len - 1, b' ');
        body.push(b'}');
        body
    }

    #[tokio::test]
    async fn report_bodies_over_64_kib_are_413() {
        let served = served();
        let app = router(served.clone());
        let limit = 64 * 1024;

        let answer = post(&app, "/v1/ns/catalog/report", padded_report(limit + 1)).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(no_reports(&served));

        // Without a known length up front (a streamed body), the limit still holds.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = padded_report(limit + 1)
            .chunks(4096)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let streamed = Body::from_stream(futures::stream::iter(chunks));
        let answer = post(&app, "/v1/ns/catalog/report", streamed).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(no_reports(&served));

        // Exactly at the limit is accepted.
        let answer = post(&app, "/v1/ns/catalog/report", padded_report(limit)).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
        assert_eq!(counts(&served, NS, V1), Some((1, 0)));
    }

    #[tokio::test]
    async fn reports_for_a_version_not_served_are_422_naming_the_accepted_versions() {
        let served = served();
        let app = router(served.clone());
        let answer = post(
            &app,
            "/v1/ns/catalog/report",
            r#"{"version": "0000ffff0000ffff", "ok": 1, "errors": 0}"#,
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(answer.header("content-type"), "application/json");
        let body = answer.json();
        assert_eq!(body["version"], json!("0000ffff0000ffff"));
        assert_eq!(body["accepted_versions"], json!([V1, V2]));
        let error = answer.error_text();
        assert!(
            error.contains("0000ffff0000ffff") && error.contains(V1) && error.contains(V2),
            "the error names the version and the accepted ones: {error}"
        );

        // A namespace never loaded accepts none.
        let answer = post(
            &app,
            "/v1/ns/pending/report",
            format!(r#"{{"version": "{V1}", "ok": 1}}"#),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(answer.json()["accepted_versions"], json!([]));

        assert!(no_reports(&served));
        // Nothing changed, so the health publisher was not told.
        let told = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            served.reports_changed.notified(),
        )
        .await;
        assert!(told.is_err(), "refused reports wake nobody");
    }

    #[tokio::test]
    async fn right_after_a_flip_the_version_served_before_is_still_accepted() {
        let served = served();
        let app = router(served.clone());
        // v1 was active and v2 the canary; now everyone is on v2.
        served.namespaces[NS].publish(flipped_snapshot(EPOCH + 1));
        for (version, ok, errors) in [(V1, 4, 1), (V2, 7, 0)] {
            let answer = post(
                &app,
                "/v1/ns/catalog/report",
                format!(r#"{{"version": "{version}", "ok": {ok}, "errors": {errors}}}"#),
            )
            .await;
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{version}");
        }
        assert_eq!(counts(&served, NS, V1), Some((4, 1)));
        assert_eq!(counts(&served, NS, V2), Some((7, 0)));
    }

    #[tokio::test]
    async fn reports_appear_in_the_health_record() {
        let served = served();
        let app = router(served.clone());
        for body in [
            format!(r#"{{"version": "{V1}", "ok": 5, "errors": 2}}"#),
            format!(r#"{{"version": "{V2}", "ok": 3}}"#),
            format!(r#"{{"version": "{V1}", "ok": 1}}"#),
        ] {
            let answer = post(&app, "/v1/ns/catalog/report", body).await;
            assert_eq!(answer.status, StatusCode::ACCEPTED);
        }
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            served.reports_changed.notified(),
        )
        .await
        .expect("the health publisher is told that counts changed");

        let record =
            crate::health::health_record("sidecar-test", &served.namespaces[NS], STARTED_AT_MS, 42);
        assert_eq!(
            record,
            switchboard_proto::HealthRecord {
                id: "sidecar-test".into(),
                namespace: NS.into(),
                epoch: EPOCH,
                serving: vec![
                    switchboard_proto::ServedSet {
                        slot: Slot::Blue,
                        version: V1.into(),
                        checksum: format!("checksum-of-{V1}"),
                    },
                    switchboard_proto::ServedSet {
                        slot: Slot::Green,
                        version: V2.into(),
                        checksum: format!("checksum-of-{V2}"),
                    },
                ],
                etcd_reachable: false,
                at_ms: 42,
                started_at_ms: STARTED_AT_MS,
                reports: vec![
                    switchboard_proto::VersionReports {
                        version: V1.into(),
                        ok: 6,
                        errors: 2,
                    },
                    switchboard_proto::VersionReports {
                        version: V2.into(),
                        ok: 3,
                        errors: 0,
                    },
                ],
                prepared: None,
                activated_epoch: None,
                activated_at_us: None,
            }
        );
        // As JSON, the record carries them under the names the coordinator reads.
        let json = serde_json::to_value(&record).expect("record encodes");
        assert_eq!(json["started_at_ms"], json!(STARTED_AT_MS));
        assert_eq!(
            json["reports"][0],
            json!({"version": V1, "ok": 6, "errors": 2})
        );

        // The status shows the same counts.
        let status = get(&app, "/v1/status").await.json();
        assert_eq!(status["started_at_ms"], json!(STARTED_AT_MS));
        assert_eq!(
            status["namespaces"][NS]["reports"],
            json!([{"version": V1, "ok": 6, "errors": 2}, {"version": V2, "ok": 3, "errors": 0}])
        );

        // A namespace with no reports publishes none.
        let pending = crate::health::health_record(
            "sidecar-test",
            &served.namespaces[UNLOADED_NS],
            STARTED_AT_MS,
            42,
        );
        assert!(pending.reports.is_empty() && pending.serving.is_empty());
        assert_eq!(pending.epoch, 0);
    }

    #[tokio::test]
    async fn status_shows_the_previous_set_held_during_the_bake() {
        let served = served();
        let app = router(served.clone());
        assert_eq!(
            get(&app, "/v1/status").await.json()["namespaces"][NS]["baking"],
            Value::Null
        );

        served.namespaces[NS].publish(baking_snapshot(EPOCH + 1));
        let body = get(&app, "/v1/status").await.json();
        let catalog = &body["namespaces"][NS];
        assert_eq!(
            catalog["baking"],
            json!({"slot": "blue", "version": V1, "until_ms": BAKE_UNTIL_MS, "loaded": true})
        );
        // Held, not served.
        let loaded: Vec<&Value> = catalog["loaded"]
            .as_array()
            .expect("loaded is a list")
            .iter()
            .map(|s| &s["version"])
            .collect();
        assert_eq!(loaded, vec![&json!(V2)]);
        assert_eq!(catalog["active"], json!({"slot": "green", "version": V2}));

        // The bake named by routing, but the set not held (a disk copy, or it did not load).
        let not_held = Arc::new(Snapshot {
            previous: None,
            routing: baking_routing(EPOCH + 2),
            active: loaded_v2(),
            canary: None,
        });
        served.namespaces[NS].publish(not_held);
        let body = get(&app, "/v1/status").await.json();
        assert_eq!(body["namespaces"][NS]["baking"]["loaded"], json!(false));

        // The bake is over.
        served.namespaces[NS].publish(flipped_snapshot(EPOCH + 3));
        let body = get(&app, "/v1/status").await.json();
        assert_eq!(body["namespaces"][NS]["baking"], Value::Null);
    }

    fn loaded_v2() -> Arc<LoadedSet> {
        loaded(V2, &v2_items())
    }
}

mod grpc {
    use super::*;

    use std::time::Duration;

    use switchboard_proto::pb::{self, reader_server::Reader};
    use tokio_stream::StreamExt;
    use tonic::{Code, Request};

    use crate::grpc::ReaderService;

    const DEADLINE: Duration = Duration::from_secs(5);

    /// The stream of `WatchVersions` for `consumer` of `namespace`, which must be served.
    async fn watch(
        service: &ReaderService,
        namespace: &str,
        consumer: &str,
    ) -> <ReaderService as Reader>::WatchVersionsStream {
        service
            .watch_versions(Request::new(pb::WatchVersionsRequest {
                namespace: namespace.to_string(),
                consumer: consumer.to_string(),
            }))
            .await
            .expect("known namespace")
            .into_inner()
    }

    /// The stream's next announcement, which must come within the deadline; `what` says which.
    async fn next_served(
        stream: &mut <ReaderService as Reader>::WatchVersionsStream,
        what: &str,
    ) -> pb::Served {
        tokio::time::timeout(DEADLINE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
            .expect("stream open")
            .expect("no error")
    }

    fn pb_served(slot: Slot, version: &str, epoch: u64) -> pb::Served {
        pb::Served {
            namespace: NS.to_string(),
            slot: slot.as_str().to_string(),
            version: version.to_string(),
            epoch,
        }
    }

    fn get_request(namespace: &str, key: &str, consumer: &str) -> Request<pb::GetRequest> {
        Request::new(pb::GetRequest {
            namespace: namespace.to_string(),
            key: key.to_string(),
            consumer: consumer.to_string(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn get_returns_the_value_and_where_it_came_from() {
        let service = ReaderService::unwrapped(served());
        for want in [true, false] {
            let consumer = find_consumer("app", WEIGHT, want);
            let (slot, version, items) = expected_for(&consumer);
            let reply = service
                .get(get_request(NS, "tables/hr/people", &consumer))
                .await
                .expect("the item exists")
                .into_inner();
            assert_eq!(reply.served, Some(pb_served(slot, version, EPOCH)));
            let expected = items
                .iter()
                .find(|(k, _)| *k == "tables/hr/people")
                .map(|(_, v)| v.clone())
                .expect("in the fixture");
            assert_eq!(
                reply.value_json.as_bytes(),
                canonical_json(&expected).as_slice()
            );
            let parsed: Value = serde_json::from_str(&reply.value_json).expect("value is JSON");
            assert_eq!(parsed, expected);
        }
        // An empty consumer is the sidecar's id.
        for want in [true, false] {
            let id = find_consumer("sidecar", WEIGHT, want);
            let service = ReaderService::unwrapped(served_with_id(&id));
            let reply = service
                .get(get_request(NS, "tags/pii", ""))
                .await
                .expect("the item exists")
                .into_inner();
            let (slot, version, _) = expected_for(&id);
            assert_eq!(reply.served, Some(pb_served(slot, version, EPOCH)), "{id}");
        }
    }

    #[tokio::test]
    async fn get_maps_read_errors_to_status_codes() {
        let service = ReaderService::unwrapped(served());
        let status = service
            .get(get_request(NS, "tables/sales/nope", "a"))
            .await
            .expect_err("unknown key");
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("tables/sales/nope"));

        let status = service
            .get(get_request("elsewhere", "tags/pii", "a"))
            .await
            .expect_err("unknown namespace");
        assert_eq!(status.code(), Code::NotFound);

        let status = service
            .get(get_request(UNLOADED_NS, "tags/pii", "a"))
            .await
            .expect_err("not loaded");
        assert_eq!(status.code(), Code::Unavailable);

        let status = service
            .list(Request::new(pb::ListRequest {
                namespace: UNLOADED_NS.to_string(),
                prefix: String::new(),
                consumer: String::new(),
                ..Default::default()
            }))
            .await
            .expect_err("not loaded");
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn list_returns_the_prefixed_items_in_key_order() {
        let service = ReaderService::unwrapped(served());
        for want in [true, false] {
            let consumer = find_consumer("app", WEIGHT, want);
            let (slot, version, items) = expected_for(&consumer);
            for prefix in ["tables/", "tables/sales/", ""] {
                let reply = service
                    .list(Request::new(pb::ListRequest {
                        namespace: NS.to_string(),
                        prefix: prefix.to_string(),
                        consumer: consumer.clone(),
                        ..Default::default()
                    }))
                    .await
                    .expect("loaded namespace")
                    .into_inner();
                assert_eq!(reply.served, Some(pb_served(slot, version, EPOCH)));
                let expected: BTreeMap<String, Value> = items
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect();
                let got_keys: Vec<&str> = reply.items.iter().map(|i| i.key.as_str()).collect();
                let expected_keys: Vec<&str> = expected.keys().map(String::as_str).collect();
                assert_eq!(got_keys, expected_keys, "{consumer} {prefix:?}");
                for item in &reply.items {
                    let parsed: Value =
                        serde_json::from_str(&item.value_json).expect("value is JSON");
                    assert_eq!(Some(&parsed), expected.get(&item.key), "{}", item.key);
                }
            }
        }
    }

    #[tokio::test]
    async fn watch_versions_announces_the_current_version_then_each_change() {
        let served = served();
        let service = ReaderService::unwrapped(served.clone());
        let consumer = find_consumer("app", WEIGHT, false);
        let mut stream = watch(&service, NS, &consumer).await;
        let first = next_served(&mut stream, "the current version comes at once").await;
        assert_eq!(first, pb_served(Slot::Blue, V1, EPOCH));

        served.namespaces[NS].publish(flipped_snapshot(EPOCH + 1));
        let second = next_served(&mut stream, "the flip is announced").await;
        assert_eq!(second, pb_served(Slot::Green, V2, EPOCH + 1));
    }

    #[tokio::test]
    async fn watch_versions_ends_at_shutdown() {
        let served = served();
        let service = ReaderService::unwrapped(served.clone());
        let mut stream = watch(&service, NS, "").await;
        next_served(&mut stream, "the current version comes at once").await;
        served.shutdown.cancel();
        let end = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("the stream ends at shutdown, without waiting for a change");
        assert!(end.is_none(), "{end:?}");
    }

    #[tokio::test]
    async fn watch_versions_on_an_unloaded_namespace_starts_at_the_first_load() {
        let served = served();
        let service = ReaderService::unwrapped(served.clone());
        let mut stream = watch(&service, UNLOADED_NS, "").await;
        served.namespaces[UNLOADED_NS].publish(flipped_snapshot(3));
        let first = next_served(&mut stream, "the first load is announced").await;
        assert_eq!(
            first,
            pb::Served {
                namespace: UNLOADED_NS.to_string(),
                slot: "green".to_string(),
                version: V2.to_string(),
                epoch: 3,
            }
        );

        let status = service
            .watch_versions(Request::new(pb::WatchVersionsRequest {
                namespace: "elsewhere".to_string(),
                consumer: String::new(),
            }))
            .await
            .err()
            .expect("unknown namespace");
        assert_eq!(status.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn reports_are_accepted_and_counted() {
        let served = served();
        let service = ReaderService::unwrapped(served.clone());
        let reply = service
            .report(Request::new(pb::ReportRequest {
                namespace: NS.to_string(),
                version: V2.to_string(),
                ok: 10,
                errors: 3,
            }))
            .await
            .expect("accepted")
            .into_inner();
        assert!(reply.accepted);
        assert_eq!(counts(&served, NS, V2), Some((10, 3)));

        let status = service
            .report(Request::new(pb::ReportRequest {
                namespace: NS.to_string(),
                version: String::new(),
                ok: 1,
                errors: 0,
            }))
            .await
            .expect_err("empty version");
        assert_eq!(status.code(), Code::InvalidArgument);

        let status = service
            .report(Request::new(pb::ReportRequest {
                namespace: "elsewhere".to_string(),
                version: V2.to_string(),
                ok: 1,
                errors: 0,
            }))
            .await
            .expect_err("unknown namespace");
        assert_eq!(status.code(), Code::NotFound);

        let status = service
            .report(Request::new(pb::ReportRequest {
                namespace: NS.to_string(),
                version: "0000ffff0000ffff".to_string(),
                ok: 1,
                errors: 0,
            }))
            .await
            .expect_err("a version never served");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("0000ffff0000ffff")
                && status.message().contains(V1)
                && status.message().contains(V2),
            "names the version and the accepted ones: {}",
            status.message()
        );
        assert_eq!(served.namespaces[NS].reports().len(), 1);
        assert!(served.namespaces[UNLOADED_NS].reports().is_empty());
    }
}

mod bake {
    use super::*;

    use switchboard_proto::Keys;
    use tokio_util::sync::CancellationToken;

    use crate::loader::SetCache;
    use crate::sync::NamespaceSync;

    #[test]
    fn a_baking_snapshot_holds_the_previous_set_but_never_serves_it() {
        let snapshot = baking_snapshot(8);
        let previous = snapshot.previous.as_ref().expect("held");
        for consumer in consumers(4000).iter().map(String::as_str).chain([""]) {
            let choice = snapshot.choose(consumer);
            assert_eq!((choice.slot, choice.epoch), (Slot::Green, 8), "{consumer}");
            assert!(Arc::ptr_eq(choice.set, &snapshot.active), "{consumer}");
            assert!(!Arc::ptr_eq(choice.set, previous), "{consumer}");
        }
        let served: Vec<(Slot, &str)> = snapshot
            .served_sets()
            .into_iter()
            .map(|(slot, set)| (slot, set.version.as_str()))
            .collect();
        assert_eq!(served, vec![(Slot::Green, V2)]);
        let (baking, until_ms, held) = snapshot.baking().expect("routing names a bake");
        assert_eq!((baking.slot, baking.version.as_str()), (Slot::Blue, V1));
        assert_eq!(until_ms, BAKE_UNTIL_MS);
        assert!(held.is_some_and(|set| Arc::ptr_eq(set, previous)));

        // The health record names only what consumers are served.
        let ns = Namespace::new(NS);
        ns.publish(snapshot.clone());
        let record = crate::health::health_record("s", &ns, 1, 2);
        let serving: Vec<&str> = record.serving.iter().map(|s| s.version.as_str()).collect();
        assert_eq!(serving, vec![V2]);
        // Reports for the held version stop being accepted like any version no longer served:
        // here it was never served by this sidecar at all.
        assert!(ns.report(V1, 1, 0).is_err());
    }

    #[test]
    fn without_a_bake_time_the_previous_slot_is_not_baking() {
        let routing = Routing {
            bake_until_ms: None,
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            ..baking_routing(3)
        };
        assert!(routing.baking().is_none());
        let snapshot = Snapshot {
            routing,
            active: loaded(V2, &v2_items()),
            canary: None,
            previous: Some(loaded(V1, &v1_items())),
        };
        assert!(snapshot.baking().is_none());
    }

    /// A sync loop whose etcd client points nowhere: the client connects lazily, so every set
    /// the tests need must already be in the `SetCache`, and a test that passes shows that
    /// nothing was read from etcd.
    async fn offline_sync(namespace: &Arc<Namespace>) -> NamespaceSync {
        let client = crate::connect_etcd(&["http://127.0.0.1:9".to_string()])
            .await
            .expect("the client connects lazily");
        NamespaceSync::new(
            client,
            Keys::new("/unit"),
            namespace.clone(),
            Arc::new(Notify::new()),
        )
    }

    fn raw(routing: &Routing) -> Vec<u8> {
        serde_json::to_vec(routing).expect("routing encodes")
    }

    fn manifest_of(version: &str) -> String {
        format!("manifest-of-{version}")
    }

    #[tokio::test]
    async fn the_sync_loop_holds_the_previous_set_during_the_bake_for_an_instant_flip_back() {
        let ns = Namespace::new(NS);
        let sync = offline_sync(&ns).await;
        let (v1, v2) = (loaded(V1, &v1_items()), loaded(V2, &v2_items()));
        let mut cache = SetCache::default();
        cache.insert(v1.clone());
        cache.insert(v2.clone());

        // A canary of v2, then the flip to it with a bake time.
        let canary = routing(1, (Slot::Blue, V1), Some((Slot::Green, V2, 1000)));
        sync.apply(&mut cache, &raw(&canary))
            .await
            .expect("both sets are in memory");
        let flip = baking_routing(2);
        sync.apply(&mut cache, &raw(&flip))
            .await
            .expect("both sets are in memory");
        let snapshot = ns.current().expect("published");
        assert_eq!(snapshot.routing, flip);
        assert!(Arc::ptr_eq(&snapshot.active, &v2));
        assert!(snapshot.canary.is_none());
        assert!(
            snapshot
                .previous
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, &v1))
        );
        for consumer in consumers(2000) {
            assert!(
                Arc::ptr_eq(snapshot.choose(&consumer).set, &v2),
                "{consumer}"
            );
        }
        assert!(cache.holds(&manifest_of(V1)) && cache.holds(&manifest_of(V2)));

        // The flip back: v1 is served from memory, without etcd.
        let back = Routing {
            epoch: 3,
            previous: Some(flip.active.clone()),
            bake_until_ms: None,
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            action: "rollback".to_string(),
            ..routing(3, (Slot::Blue, V1), None)
        };
        sync.apply(&mut cache, &raw(&back))
            .await
            .expect("the held set serves the flip back at once");
        let snapshot = ns.current().expect("published");
        assert_eq!(snapshot.routing.epoch, 3);
        assert!(Arc::ptr_eq(&snapshot.active, &v1));
        assert!(snapshot.previous.is_none());
        assert!(Arc::ptr_eq(snapshot.choose("anyone").set, &v1));
    }

    #[tokio::test]
    async fn when_the_bake_ends_the_previous_set_is_let_go() {
        let ns = Namespace::new(NS);
        let sync = offline_sync(&ns).await;
        let (v1, v2) = (loaded(V1, &v1_items()), loaded(V2, &v2_items()));
        let mut cache = SetCache::default();
        cache.insert(v1.clone());
        cache.insert(v2.clone());
        sync.apply(&mut cache, &raw(&baking_routing(2)))
            .await
            .expect("both sets are in memory");
        assert!(ns.current().is_some_and(|s| s.previous.is_some()));

        let baked = Routing {
            epoch: 3,
            bake_until_ms: None,
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            ..baking_routing(3)
        };
        sync.apply(&mut cache, &raw(&baked))
            .await
            .expect("the active set is in memory");
        let snapshot = ns.current().expect("published");
        assert_eq!(snapshot.routing.epoch, 3);
        assert!(Arc::ptr_eq(&snapshot.active, &v2));
        assert!(snapshot.previous.is_none());
        assert!(
            !cache.holds(&manifest_of(V1)),
            "memory holds only what is needed"
        );
        assert!(cache.holds(&manifest_of(V2)));
    }

    #[tokio::test]
    async fn a_disk_copy_during_the_bake_gets_its_previous_set_when_etcd_confirms_routing() {
        let ns = Namespace::new(NS);
        // The disk copy: the same routing, without the previous set.
        let from_disk = Arc::new(Snapshot {
            routing: baking_routing(5),
            active: loaded(V2, &v2_items()),
            canary: None,
            previous: None,
        });
        ns.publish(from_disk.clone());
        ns.update_sync(|s| s.source = crate::namespace::Source::Disk);
        let sync = offline_sync(&ns).await;
        let v1 = loaded(V1, &v1_items());
        let mut cache = SetCache::default();
        cache.insert(v1.clone());

        sync.apply(&mut cache, &raw(&baking_routing(5)))
            .await
            .expect("the previous set is in memory");
        let snapshot = ns.current().expect("published");
        assert!(!Arc::ptr_eq(&snapshot, &from_disk), "a new snapshot");
        // What is served is exactly what was served: the very same set, not a reload.
        assert!(Arc::ptr_eq(&snapshot.active, &from_disk.active));
        assert!(
            snapshot
                .previous
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, &v1))
        );
        assert_eq!(ns.sync_state().source, crate::namespace::Source::Etcd);

        // Confirmed again: nothing changes.
        sync.apply(&mut cache, &raw(&baking_routing(5)))
            .await
            .expect("nothing to load");
        assert!(Arc::ptr_eq(&ns.current().expect("published"), &snapshot));
    }

    #[tokio::test]
    async fn a_previous_set_that_cannot_be_loaded_does_not_hold_up_the_flip() {
        let ns = Namespace::new(NS);
        let sync = offline_sync(&ns).await;
        let v2 = loaded(V2, &v2_items());
        let mut cache = SetCache::default();
        cache.insert(v2.clone());
        // v1 is not in memory and etcd does not answer.
        let result = sync.apply(&mut cache, &raw(&baking_routing(2))).await;
        assert!(result.is_err(), "the reconnect will try again");
        let snapshot = ns.current().expect("the flip is served all the same");
        assert_eq!(snapshot.routing.epoch, 2);
        assert!(Arc::ptr_eq(&snapshot.active, &v2));
        assert!(snapshot.previous.is_none());
    }

    /// Polls `condition` every millisecond until it holds, for at most `deadline`.
    async fn eventually(deadline: std::time::Duration, mut condition: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + deadline;
        while !condition() {
            assert!(
                std::time::Instant::now() < end,
                "the condition did not hold within {deadline:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// v1 served at epoch 1, then v2 put in memory: where a synchronized flip starts.
    async fn serving_v1(ns: &Arc<Namespace>) -> (NamespaceSync, SetCache, Arc<LoadedSet>) {
        let sync = offline_sync(ns).await;
        let (v1, v2) = (loaded(V1, &v1_items()), loaded(V2, &v2_items()));
        let mut cache = SetCache::default();
        cache.insert(v1);
        sync.apply(&mut cache, &raw(&routing(1, (Slot::Blue, V1), None)))
            .await
            .expect("v1 is in memory");
        // As if loaded from etcd by a preparation: the sync loop points nowhere.
        cache.insert(v2.clone());
        (sync, cache, v2)
    }

    fn prepare_v2(epoch: u64) -> Routing {
        Routing {
            prepare: Some(SlotVersion {
                slot: Slot::Green,
                version: V2.into(),
                manifest: manifest_of(V2),
            }),
            ..routing(epoch, (Slot::Blue, V1), None)
        }
    }

    fn commit_v2(epoch: u64, activate_at_ms: u64) -> Routing {
        Routing {
            activate_at_ms: Some(activate_at_ms),
            ..routing(epoch, (Slot::Green, V2), None)
        }
    }

    #[tokio::test]
    async fn a_prepared_set_is_held_and_acknowledged_but_not_served() {
        let ns = Namespace::new(NS);
        let (sync, mut cache, _) = serving_v1(&ns).await;
        sync.apply(&mut cache, &raw(&prepare_v2(2)))
            .await
            .expect("v2 is in memory");
        let snapshot = ns.current().expect("published");
        assert_eq!(snapshot.routing.epoch, 2);
        assert_eq!(
            snapshot.active.version, V1,
            "the prepared set is not served"
        );
        assert!(cache.holds(&manifest_of(V2)), "the prepared set is held");
        assert_eq!(ns.sync_state().prepared, Some(manifest_of(V2)));
        let record = crate::health::health_record("s", &ns, 0, 0);
        assert_eq!(record.prepared, Some(manifest_of(V2)));

        // Withdrawn: the acknowledgement goes, and so does the set.
        sync.apply(&mut cache, &raw(&routing(3, (Slot::Blue, V1), None)))
            .await
            .expect("v1 is in memory");
        assert_eq!(ns.sync_state().prepared, None);
        assert!(!cache.holds(&manifest_of(V2)));
    }

    #[tokio::test]
    async fn a_commit_is_served_from_its_activation_point_and_not_before() {
        let ns = Namespace::new(NS);
        let (sync, mut cache, v2) = serving_v1(&ns).await;
        sync.apply(&mut cache, &raw(&prepare_v2(2)))
            .await
            .expect("v2 is in memory");
        let point_ms = switchboard_proto::time::now_ms() + 150;
        sync.apply(&mut cache, &raw(&commit_v2(3, point_ms)))
            .await
            .expect("v2 is in memory");
        // Until the point the old routing serves, and the pending switch shows.
        let state = ns.sync_state();
        assert_eq!(state.pending_epoch, Some(3));
        assert_eq!(state.pending_activate_at_ms, Some(point_ms));
        assert_eq!(ns.current().expect("published").active.version, V1);

        eventually(std::time::Duration::from_secs(5), || {
            ns.current().is_some_and(|s| s.routing.epoch == 3)
        })
        .await;
        let switched_us = switchboard_proto::time::now_us();
        let snapshot = ns.current().expect("published");
        assert!(Arc::ptr_eq(&snapshot.active, &v2));
        let state = ns.sync_state();
        assert_eq!(state.activated_epoch, Some(3));
        let at_us = state.activated_at_us.expect("the switch time is recorded");
        assert!(
            at_us >= point_ms * 1000,
            "switched {} µs early",
            point_ms * 1000 - at_us
        );
        assert!(at_us <= switched_us);
        assert_eq!(state.pending_epoch, None);
    }

    #[tokio::test]
    async fn a_newer_routing_wins_over_a_pending_activation() {
        let ns = Namespace::new(NS);
        let (sync, mut cache, _) = serving_v1(&ns).await;
        let point_ms = switchboard_proto::time::now_ms() + 100;
        sync.apply(&mut cache, &raw(&commit_v2(2, point_ms)))
            .await
            .expect("v2 is in memory");
        // A rollback before the point, served at once.
        let rollback = routing(3, (Slot::Blue, V1), None);
        sync.apply(&mut cache, &raw(&rollback))
            .await
            .expect("v1 is in memory");
        assert_eq!(ns.current().expect("published").routing, rollback);
        assert_eq!(ns.sync_state().pending_epoch, None);
        // Well past the point, the rollback still serves: the pending switch was dropped.
        eventually(std::time::Duration::from_secs(5), || {
            switchboard_proto::time::now_ms() > point_ms + 50
        })
        .await;
        assert_eq!(ns.current().expect("published").routing, rollback);
        assert_eq!(ns.sync_state().activated_epoch, Some(3));
    }

    #[tokio::test]
    async fn the_end_of_the_sync_loop_ends_a_pending_switch() {
        let ns = Namespace::new(NS);
        let (sync, mut cache, _) = serving_v1(&ns).await;
        // A commit whose activation point is a minute away: its switch waits on a task.
        let point_ms = switchboard_proto::time::now_ms() + 60_000;
        sync.apply(&mut cache, &raw(&commit_v2(2, point_ms)))
            .await
            .expect("v2 is in memory");
        assert_eq!(ns.sync_state().pending_epoch, Some(2));
        let switches = sync.switch_tasks();
        assert_eq!(switches.len(), 1, "the pending switch is the loop's task");

        // The loop ends at once (its shutdown has come), and takes the pending switch with it.
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(1), sync.run(shutdown))
            .await
            .expect("the loop does not wait for the activation point");
        assert!(
            switches.is_closed() && switches.is_empty(),
            "no task is left"
        );
        assert_eq!(
            ns.current().expect("published").routing.epoch,
            1,
            "the dropped switch never happened"
        );
    }

    #[tokio::test]
    async fn dropping_a_sync_loop_ends_its_pending_switch() {
        let ns = Namespace::new(NS);
        let (sync, mut cache, _) = serving_v1(&ns).await;
        let point_ms = switchboard_proto::time::now_ms() + 60_000;
        sync.apply(&mut cache, &raw(&commit_v2(2, point_ms)))
            .await
            .expect("v2 is in memory");
        let switches = sync.switch_tasks();
        assert_eq!(switches.len(), 1);
        drop(sync);
        eventually(std::time::Duration::from_secs(1), || switches.is_empty()).await;
        assert_eq!(ns.current().expect("published").routing.epoch, 1);
    }

    #[tokio::test]
    async fn a_commit_whose_point_has_passed_is_served_at_once() {
        let ns = Namespace::new(NS);
        let (sync, mut cache, v2) = serving_v1(&ns).await;
        let past = switchboard_proto::time::now_ms().saturating_sub(1_000);
        sync.apply(&mut cache, &raw(&commit_v2(2, past)))
            .await
            .expect("v2 is in memory");
        assert!(Arc::ptr_eq(&ns.current().expect("published").active, &v2));
    }
}

mod outcomes {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::outcomes::{HISTORY, History};
    use switchboard_proto::pb;

    fn head() -> pb::OutcomeReport {
        pb::OutcomeReport {
            sidecar: "s1".into(),
            started_at_ms: 1,
            uptime_ms: 0,
            series: Vec::new(),
            epochs: Vec::new(),
        }
    }

    /// (age_ms, ok, errors) of each sample of a series.
    type Samples = Vec<(u64, u64, u64)>;

    /// (version, samples) of every series in `messages`.
    fn samples(messages: &[pb::OutcomeReport]) -> Vec<(String, Samples)> {
        let mut all: Vec<_> = messages
            .iter()
            .flat_map(|m| m.series.iter())
            .map(|s| {
                let points = s
                    .samples
                    .iter()
                    .map(|p| (p.age_ms, p.ok, p.errors))
                    .collect();
                (s.version.clone(), points)
            })
            .collect();
        all.sort();
        all
    }

    /// A version first seen gets a zero point at the sample before; each change is a point;
    /// the history sent again is whole, and what follows carries only what is new.
    #[test]
    fn each_change_is_a_point_and_a_stream_starts_with_the_history() {
        let ns = Namespace::new(NS);
        ns.publish(canary_snapshot(1, 0));
        let namespaces = vec![ns.clone()];
        let start = Instant::now();
        let mut history = History::default();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(ns.report(V1, 10, 1), Ok(true));
        history.sample(&namespaces, start, at(500));
        // Nothing changed: no point.
        history.sample(&namespaces, at(500), at(1_000));
        assert_eq!(ns.report(V1, 5, 0), Ok(true));
        history.sample(&namespaces, at(1_000), at(1_500));
        let all = history.messages(&head(), None, at(2_000));
        assert_eq!(
            samples(&all),
            vec![(
                V1.to_string(),
                vec![(2_000, 0, 0), (1_500, 10, 1), (500, 15, 1)]
            )]
        );
        let after = history.messages(&head(), Some(at(500)), at(2_000));
        assert_eq!(samples(&after), vec![(V1.to_string(), vec![(500, 15, 1)])]);
        assert!(
            history
                .messages(&head(), Some(at(1_500)), at(2_000))
                .is_empty()
        );
    }

    /// Points older than the history go, but the last one before it stays: it is the base of
    /// the oldest window, and the counters' value since.
    #[test]
    fn the_history_keeps_its_base() {
        let ns = Namespace::new(NS);
        ns.publish(canary_snapshot(1, 0));
        let namespaces = vec![ns.clone()];
        let start = Instant::now();
        let mut history = History::default();
        let mut previous = start;
        for second in 1..=400u64 {
            assert_eq!(ns.report(V1, 1, 0), Ok(true));
            let now = start + Duration::from_secs(second);
            history.sample(&namespaces, previous, now);
            previous = now;
        }
        let all = history.messages(&head(), None, previous);
        let points = &samples(&all)[0].1;
        assert_eq!(points.len() as u64, HISTORY.as_secs() + 1, "{points:?}");
        assert_eq!(points[0], (HISTORY.as_secs() * 1_000, 100, 0));
        assert_eq!(points.last(), Some(&(0, 400, 0)));
    }
}

mod telemetry {
    use super::*;

    use metrics::with_local_recorder;

    use crate::telemetry::{
        ETCD_REACHABLE, LAST_ETCD_EVENT_AGE, NAMESPACE_LOADED, READ_SECONDS, SERVING_FROM_DISK,
        SNAPSHOT_SWAPS, prometheus_builder, record_report, update_gauges,
    };

    #[test]
    fn read_latency_is_a_histogram_with_sub_millisecond_buckets() {
        let recorder = prometheus_builder()
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        with_local_recorder(&recorder, || {
            metrics::histogram!(READ_SECONDS).record(0.000_07);
            metrics::histogram!(READ_SECONDS).record(0.003);
        });
        let text = handle.render();
        assert!(
            text.contains(&format!(r#"{READ_SECONDS}_bucket{{le="0.00005"}} 0"#)),
            "{text}"
        );
        assert!(
            text.contains(&format!(r#"{READ_SECONDS}_bucket{{le="0.0001"}} 1"#)),
            "{text}"
        );
        assert!(
            text.contains(&format!(r#"{READ_SECONDS}_bucket{{le="0.1"}} 2"#)),
            "{text}"
        );
        assert!(text.contains(&format!("{READ_SECONDS}_count 2")), "{text}");
    }

    #[test]
    fn reports_swaps_and_derived_gauges_are_rendered() {
        let recorder = prometheus_builder()
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        let served = served();
        served.namespaces[NS].update_sync(|s| {
            s.last_sync_ms = STARTED_AT_MS + 1_000;
            s.source = crate::namespace::Source::Disk;
            s.etcd_reachable = true;
        });
        with_local_recorder(&recorder, || {
            record_report(NS, V1, 3, 1);
            served.namespaces[NS].publish(flipped_snapshot(EPOCH + 1));
            update_gauges(&served, STARTED_AT_MS + 3_500);
        });
        let text = handle.render();
        for line in [
            format!(
                r#"switchboard_sidecar_reports_total{{namespace="{NS}",version="{V1}",outcome="ok"}} 3"#
            ),
            format!(
                r#"switchboard_sidecar_reports_total{{namespace="{NS}",version="{V1}",outcome="error"}} 1"#
            ),
            format!(r#"{SNAPSHOT_SWAPS}{{namespace="{NS}"}} 1"#),
            format!(r#"{LAST_ETCD_EVENT_AGE}{{namespace="{NS}"}} 2.5"#),
            format!(r#"{SERVING_FROM_DISK}{{namespace="{NS}"}} 1"#),
            // Never synced: the age counts from the sidecar's start.
            format!(r#"{LAST_ETCD_EVENT_AGE}{{namespace="{UNLOADED_NS}"}} 3.5"#),
            format!(r#"{SERVING_FROM_DISK}{{namespace="{UNLOADED_NS}"}} 0"#),
            format!(r#"{ETCD_REACHABLE}{{namespace="{NS}"}} 1"#),
            format!(r#"{ETCD_REACHABLE}{{namespace="{UNLOADED_NS}"}} 0"#),
            format!(r#"{NAMESPACE_LOADED}{{namespace="{NS}"}} 1"#),
            format!(r#"{NAMESPACE_LOADED}{{namespace="{UNLOADED_NS}"}} 0"#),
        ] {
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
    }
}

//! Unit tests of what issue 15 gives applications: the change feed (its events, their keys and
//! classes, resuming), conditional reads and long polls, and reads pinned to a version.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use switchboard_contract::compat::Class;
use tower::ServiceExt;

use super::*;
use crate::changes::{Change, Feed, LastEventId, diff_sets};

fn keys(list: &[crate::changes::KeyChange]) -> Vec<(&str, Class)> {
    list.iter().map(|c| (c.key.as_str(), c.class)).collect()
}

#[test]
fn a_diff_names_every_key_that_changed_with_its_class() {
    let diff = diff_sets(&loaded(V1, &v1_items()), &loaded(V2, &v2_items()));
    assert_eq!((diff.from.as_str(), diff.to.as_str()), (V1, V2));
    assert_eq!(
        keys(&diff.added),
        vec![("tables/sales/returns", Class::Additive)]
    );
    assert_eq!(
        keys(&diff.removed),
        vec![
            ("policies/retention", Class::Destructive),
            ("tables-archive/old", Class::Destructive),
        ]
    );
    // A column added and a number changed: modifying. A value removed from a list of
    // scalars (the list narrowed): destructive. The unchanged item is not named.
    assert_eq!(
        keys(&diff.modified),
        vec![
            ("tables/sales/customers", Class::Modifying),
            ("tables/sales/orders", Class::Modifying),
            ("tags/pii", Class::Destructive),
        ]
    );
    let back = diff_sets(&loaded(V2, &v2_items()), &loaded(V1, &v1_items()));
    assert_eq!(keys(&back.added).len(), 2);
    assert_eq!(
        keys(&back.removed),
        vec![("tables/sales/returns", Class::Destructive)]
    );
    assert!(
        keys(&back.modified).contains(&("tags/pii", Class::Additive)),
        "{back:?}"
    );
}

/// A namespace serving v1 alone on blue, at epoch 1.
fn serving_v1() -> Arc<Namespace> {
    let ns = Namespace::new(NS);
    ns.publish(Arc::new(Snapshot {
        routing: routing(1, (Slot::Blue, V1), None),
        active: loaded(V1, &v1_items()),
        canary: None,
        previous: None,
    }));
    ns
}

/// The next event of `feed`, which must come at once.
async fn next(feed: &mut Feed) -> Change {
    tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("an event")
        .expect("the feed goes on")
}

/// Whether `feed` has no event to send now.
async fn quiet(feed: &mut Feed) -> bool {
    tokio::time::timeout(Duration::from_millis(50), feed.next())
        .await
        .is_err()
}

fn feed(ns: &Arc<Namespace>, consumer: &str, resume: Option<&str>) -> Feed {
    let resume = resume.map(|id| LastEventId::parse(id).expect("a valid id"));
    Feed::new(
        ns.clone(),
        consumer.to_string(),
        resume,
        tokio_util::sync::CancellationToken::new(),
    )
}

#[tokio::test]
async fn a_feed_sends_the_view_then_one_event_per_change_that_moves_its_consumer() {
    let ns = serving_v1();
    let on = find_consumer("on", WEIGHT, true);
    let off = find_consumer("off", WEIGHT, false);
    let mut on_feed = feed(&ns, &on, None);
    let mut off_feed = feed(&ns, &off, None);
    for (feed, name) in [(&mut on_feed, &on), (&mut off_feed, &off)] {
        let view = next(feed).await;
        assert!(view.initial && !view.reset, "{view:?}");
        assert_eq!((view.epoch, view.version.as_str()), (1, V1));
        assert_eq!(view.consumer, *name);
        assert_eq!(view.id(), format!("1:{V1}"));
        assert!(view.diff.is_none());
        assert!(quiet(feed).await, "nothing else before a change");
    }

    // A 50% canary moves `on` to v2 and leaves `off` where it was.
    ns.publish(canary_snapshot(2, WEIGHT));
    let moved = next(&mut on_feed).await;
    assert!(!moved.initial && !moved.reset && moved.canary, "{moved:?}");
    assert_eq!(
        (moved.epoch, moved.version.as_str(), moved.slot),
        (2, V2, Slot::Green)
    );
    assert_eq!(moved.previous_version.as_deref(), Some(V1));
    let diff = moved.diff.as_ref().expect("the keys that changed");
    assert_eq!(
        keys(&diff.added),
        vec![("tables/sales/returns", Class::Additive)]
    );
    assert!(quiet(&mut off_feed).await, "a canary move that leaves it");

    // The flip moves `off`; `on` stays on v2.
    ns.publish(flipped_snapshot(3));
    let flipped = next(&mut off_feed).await;
    assert_eq!((flipped.epoch, flipped.version.as_str()), (3, V2));
    assert!(!flipped.canary);
    assert!(quiet(&mut on_feed).await, "already on v2");

    // The event's JSON carries the same, the key lists with their classes.
    let json: Value = serde_json::from_str(&flipped.to_json()).expect("JSON");
    assert_eq!(json["id"], format!("3:{V2}"));
    assert_eq!(json["previous_version"], V1);
    assert_eq!(json["slot"], "green");
    assert_eq!(
        json["removed"],
        json!([{"key": "policies/retention", "class": "destructive"}, {"key": "tables-archive/old", "class": "destructive"}])
    );
    assert_eq!(json["modified"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn a_feed_resumes_after_its_last_event_without_a_gap_or_a_repeat() {
    let ns = serving_v1();
    let consumer = "app-1";
    let mut first = feed(&ns, consumer, None);
    let view = next(&mut first).await;
    drop(first);

    // While it is away: a flip to v2, then a rollback to v1, then a flip to v2 again.
    ns.publish(flipped_snapshot(2));
    ns.publish(Arc::new(Snapshot {
        routing: routing(3, (Slot::Blue, V1), None),
        active: loaded(V1, &v1_items()),
        canary: None,
        previous: None,
    }));
    ns.publish(flipped_snapshot(4));

    let mut resumed = feed(&ns, consumer, Some(&view.id()));
    let seen: Vec<(u64, String, Option<String>)> = [
        next(&mut resumed).await,
        next(&mut resumed).await,
        next(&mut resumed).await,
    ]
    .into_iter()
    .map(|c| {
        assert!(!c.initial && !c.reset, "{c:?}");
        (c.epoch, c.version, c.previous_version)
    })
    .collect();
    assert_eq!(
        seen,
        vec![
            (2, V2.to_string(), Some(V1.to_string())),
            (3, V1.to_string(), Some(V2.to_string())),
            (4, V2.to_string(), Some(V1.to_string())),
        ]
    );
    assert!(quiet(&mut resumed).await);

    // Resuming at the last event sends nothing until the next change.
    let mut current = feed(&ns, consumer, Some(&format!("4:{V2}")));
    assert!(quiet(&mut current).await, "a repeat of the last event");
    // A full canary of v2 leaves it on v2; back to v1 at weight 0 moves it.
    ns.publish(canary_snapshot(5, 10_000));
    assert!(quiet(&mut current).await, "still v2");
    ns.publish(canary_snapshot(6, 0));
    let change = next(&mut current).await;
    assert_eq!((change.epoch, change.version.as_str()), (6, V1));
}

#[tokio::test]
async fn a_feed_from_before_the_log_gets_one_event_to_the_version_served_now() {
    let ns = serving_v1();
    ns.publish(flipped_snapshot(2));
    // Epoch 0 is older than anything the log holds: one event from the version it names.
    let mut resumed = feed(&ns, "app-1", Some(&format!("0:{V1}")));
    let change = next(&mut resumed).await;
    assert_eq!(
        (
            change.epoch,
            change.version.as_str(),
            change.previous_version.as_deref()
        ),
        (2, V2, Some(V1))
    );
    assert!(!change.reset, "v1 is still held, so its keys are known");
    assert!(quiet(&mut resumed).await);

    // A version this sidecar does not hold: the keys cannot be worked out.
    let mut stranger = feed(&ns, "app-1", Some("0:feedfacefeedface"));
    let change = next(&mut stranger).await;
    assert!(change.reset && change.diff.is_none(), "{change:?}");
    assert_eq!(change.version, V2);
}

#[test]
fn last_event_ids_are_read_strictly() {
    assert_eq!(
        LastEventId::parse("12:abc123").expect("valid"),
        LastEventId {
            epoch: 12,
            version: "abc123".into()
        }
    );
    for bad in ["", "12", ":abc", "x:abc", "12:", "12:a/b", "-1:abc"] {
        assert!(LastEventId::parse(bad).is_err(), "{bad:?}");
    }
}

async fn call(
    app: &Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("a body")
        .to_vec();
    (parts.status, parts.headers, body)
}

fn read(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).expect("a request")
}

fn served_namespace(ns: Arc<Namespace>) -> Arc<Served> {
    Arc::new(Served {
        api_token_sha256: None,
        id: "sidecar-test".into(),
        namespaces: [(ns.name.clone(), ns)].into_iter().collect(),
        started_at_ms: STARTED_AT_MS,
        reports_changed: Arc::new(Notify::new()),
        metrics: None,
        shutdown: tokio_util::sync::CancellationToken::new(),
    })
}

fn app(served: Arc<Served>) -> Router {
    crate::http::router(served, switchboard_runtime::host::HostAllowlist::default())
}

#[tokio::test]
async fn unchanged_items_and_lists_are_304_and_their_etags_follow_the_content() {
    let ns = serving_v1();
    let app = app(served_namespace(ns.clone()));
    let item = "/v1/ns/catalog/items/tables/hr/people";
    let list = "/v1/ns/catalog/items?prefix=tables/";
    let (status, headers, _) = call(&app, read(item, &[])).await;
    assert_eq!(status, StatusCode::OK);
    let item_tag = headers[header::ETAG].to_str().expect("text").to_string();
    let (_, headers, _) = call(&app, read(list, &[])).await;
    let list_tag = headers[header::ETAG].to_str().expect("text").to_string();
    assert!(list_tag.starts_with("W/\""), "{list_tag}");

    for (uri, tag) in [(item, &item_tag), (list, &list_tag)] {
        let (status, headers, body) = call(&app, read(uri, &[("if-none-match", tag)])).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{uri}");
        assert!(body.is_empty());
        assert_eq!(headers[header::ETAG], tag.as_str());
        assert_eq!(headers["x-switchboard-version"], V1);
        let (status, _, _) = call(&app, read(uri, &[("if-none-match", "\"other\", \"x\"")])).await;
        assert_eq!(status, StatusCode::OK, "{uri} with other tags");
    }

    // After the flip to v2 the item (unchanged in v2) keeps its tag; the list changed.
    ns.publish(flipped_snapshot(2));
    let (status, _, _) = call(&app, read(item, &[("if-none-match", &item_tag)])).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    let (status, headers, _) = call(&app, read(list, &[("if-none-match", &list_tag)])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-switchboard-version"], V2);
    // The tag is the content's: another sidecar's item with the same value has the same.
    assert_eq!(
        item_tag,
        crate::serve::item_etag(&canonical_json(&tricky_value()))
    );
}

#[tokio::test]
async fn a_long_poll_answers_when_the_answer_changes_or_304_when_the_wait_ends() {
    let ns = serving_v1();
    let app = app(served_namespace(ns.clone()));
    let uri = "/v1/ns/catalog/items/tables/sales/orders";
    let (_, headers, _) = call(&app, read(uri, &[])).await;
    let tag = headers[header::ETAG].to_str().expect("text").to_string();

    let wait = format!("{uri}?wait=0.2");
    let started = std::time::Instant::now();
    let (status, _, _) = call(&app, read(&wait, &[("if-none-match", &tag)])).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let polling = {
        let (app, wait, tag) = (app.clone(), format!("{uri}?wait=30"), tag.clone());
        tokio::spawn(async move { call(&app, read(&wait, &[("if-none-match", &tag)])).await })
    };
    // A change that leaves the item as it was does not end the poll...
    ns.publish(Arc::new(Snapshot {
        routing: routing(2, (Slot::Blue, V1), None),
        active: loaded(V1, &v1_items()),
        canary: None,
        previous: None,
    }));
    tokio::task::yield_now().await;
    assert!(!polling.is_finished());
    // ...the flip that changes it does.
    ns.publish(flipped_snapshot(3));
    let (status, headers, body) = tokio::time::timeout(Duration::from_secs(5), polling)
        .await
        .expect("the poll ends")
        .expect("no panic");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-switchboard-version"], V2);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("JSON")["v"],
        2
    );

    for bad in ["-1", "soon", "NaN"] {
        let (status, _, body) = call(
            &app,
            read(&format!("{uri}?wait={bad}"), &[("if-none-match", &tag)]),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "wait={bad}");
        assert!(String::from_utf8_lossy(&body).contains("wait must be a number of seconds"));
    }
}

#[tokio::test]
async fn a_pinned_read_is_served_from_its_version_while_it_is_held_then_409() {
    let ns = serving_v1();
    let app = app(served_namespace(ns.clone()));
    let uri = "/v1/ns/catalog/items/tables/sales/orders";
    ns.publish(flipped_snapshot(2));
    // v1 is no longer served, but held: pinned reads still get it.
    let (status, headers, body) = call(&app, read(uri, &[("x-switchboard-version", V1)])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-switchboard-version"], V1);
    assert_eq!(headers["x-switchboard-slot"], "blue");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("JSON")["v"],
        1
    );

    // A sidecar that keeps nothing replaced: the pin is refused, naming the version served now.
    let forgetful = Namespace::keeping_replaced_sets(NS, Duration::ZERO);
    forgetful.publish(canary_snapshot(1, 0));
    forgetful.publish(flipped_snapshot(2));
    let app = self::app(served_namespace(forgetful));
    let (status, headers, body) = call(&app, read(uri, &[("x-switchboard-version", V1)])).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(headers["x-switchboard-version"], V2);
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        (body["version"].as_str(), body["current_version"].as_str()),
        (Some(V1), Some(V2))
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no longer held"))
    );

    let (status, _, _) = call(&app, read(uri, &[("x-switchboard-version", "v1/../x")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A pinned read looks for its set while flips and rollbacks swap the snapshot under it: a
/// set on its way back into the snapshot leaves the replaced sets right after the swap, and a
/// look at the old snapshot, then at the replaced sets, could miss it in both (a 409 seen once
/// in the end-to-end test during a rollback). Many swaps against many looks, on two threads:
/// with the snapshot read outside the lock of the replaced sets this fails within a few
/// thousand looks here (and a second look at the snapshot, tried first, still failed once
/// under load, when two swaps fell between the looks).
#[test]
fn a_held_set_is_found_at_every_instant_of_flips_and_rollbacks() {
    let ns = serving_v1();
    let v1_active = ns.current().expect("a snapshot");
    let v2_active = flipped_snapshot(2);
    // Both versions held before the looks begin: v2 among the replaced, v1 served.
    ns.publish(v2_active.clone());
    ns.publish(v1_active.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapping = {
        let (ns, stop) = (ns.clone(), stop.clone());
        std::thread::spawn(move || {
            for _ in 0..20_000 {
                ns.publish(v2_active.clone());
                ns.publish(v1_active.clone());
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let mut looks = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for version in [V1, V2] {
            assert!(
                ns.held_set(version).is_some(),
                "{version} not found at look {looks}"
            );
            looks += 1;
        }
    }
    swapping.join().expect("the swapping thread");
    assert!(looks > 0);
}

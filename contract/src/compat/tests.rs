//! The unit tests of `compat`.

use super::*;
use serde_json::json;

fn changes(old: Value, new: Value) -> Vec<(String, Kind)> {
    diff(&old, &new, &Cursor::none())
        .into_iter()
        .map(|c| (c.path, c.kind))
        .collect()
}

fn kinds(list: &[(&str, Kind)]) -> Vec<(String, Kind)> {
    list.iter().map(|(p, k)| (p.to_string(), *k)).collect()
}

#[test]
fn each_kind_has_its_class() {
    assert_eq!(Kind::Added.class(), Class::Additive);
    assert_eq!(Kind::ValueAdded.class(), Class::Additive);
    assert_eq!(Kind::ElementAdded.class(), Class::Additive);
    assert_eq!(Kind::ItemAdded.class(), Class::Additive);
    assert_eq!(Kind::Changed.class(), Class::Modifying);
    assert_eq!(Kind::Reordered.class(), Class::Modifying);
    for kind in [
        Kind::Removed,
        Kind::ElementRemoved,
        Kind::ValueRemoved,
        Kind::TypeChanged,
        Kind::ItemRemoved,
    ] {
        assert_eq!(kind.class(), Class::Destructive, "{kind:?}");
    }
}

#[test]
fn fields_added_changed_and_removed() {
    assert_eq!(
        changes(
            json!({"a": 1, "b": "x", "c": {"d": true, "gone": null}, "old": 1}),
            json!({"a": 2, "b": "x", "c": {"d": true, "e": [1]}, "new": {"x": 1}})
        ),
        kinds(&[
            ("/a", Kind::Changed),
            ("/c/e", Kind::Added),
            ("/c/gone", Kind::Removed),
            ("/new", Kind::Added),
            ("/old", Kind::Removed),
        ])
    );
    assert!(changes(json!({"a": [1, {"b": 2}]}), json!({"a": [1, {"b": 2}]})).is_empty());
}

#[test]
fn a_changed_json_type_is_destructive() {
    let found = diff(
        &json!({"n": 1, "s": "1", "o": {}, "z": null, "l": [1]}),
        &json!({"n": "1", "s": "2", "o": [], "z": 0, "l": {"0": 1}}),
        &Cursor::none(),
    );
    let summary: Vec<(&str, Kind)> = found.iter().map(|c| (c.path.as_str(), c.kind)).collect();
    assert_eq!(
        summary,
        [
            ("/l", Kind::TypeChanged),
            ("/n", Kind::TypeChanged),
            ("/o", Kind::TypeChanged),
            ("/s", Kind::Changed),
            ("/z", Kind::TypeChanged),
        ]
    );
    assert_eq!(found[1].why(), "type changed from number to string");
    // The whole item.
    assert_eq!(
        changes(json!(191), json!(192)),
        kinds(&[("", Kind::Changed)])
    );
    assert_eq!(
        changes(json!(191), json!("192")),
        kinds(&[("", Kind::TypeChanged)])
    );
}

#[test]
fn lists_of_scalars_are_sets_and_narrowing_is_destructive() {
    assert_eq!(
        changes(
            json!({"tags": ["mart", "tier-2", "internal"]}),
            json!({"tags": ["mart", "tier-1", "internal", "certified"]})
        ),
        kinds(&[
            ("/tags/1", Kind::ValueRemoved),
            ("/tags/1", Kind::ValueAdded),
            ("/tags/3", Kind::ValueAdded),
        ])
    );
    assert_eq!(
        changes(json!(["a", "b", "a"]), json!(["a", "b"])),
        kinds(&[("/2", Kind::ValueRemoved)])
    );
    assert_eq!(
        changes(json!(["a", "b"]), json!(["b", "a"])),
        kinds(&[("", Kind::Reordered)])
    );
    assert_eq!(
        changes(json!([]), json!([1])),
        kinds(&[("/0", Kind::ValueAdded)])
    );
}

fn col(name: &str, ty: &str) -> Value {
    json!({"name": name, "type": ty, "nullable": true})
}

#[test]
fn lists_of_named_objects_are_matched_by_name() {
    let old = json!({"columns": [col("id", "string"), col("qty", "int32"), col("legacy", "string"), col("at", "timestamp")]});
    let new = json!({"columns": [col("id", "string"), col("promo", "string"), col("qty", "int64"), col("at", "timestamp")]});
    let found = diff(&old, &new, &Cursor::none());
    let summary: Vec<(&str, Kind)> = found.iter().map(|c| (c.path.as_str(), c.kind)).collect();
    assert_eq!(
        summary,
        [
            ("/columns/2", Kind::ElementRemoved),
            ("/columns/1", Kind::ElementAdded),
            ("/columns/2/type", Kind::Changed),
        ]
    );
    assert_eq!(found[0].old, Some(col("legacy", "string")));
    assert_eq!(found[2].old, Some(json!("int32")));
    assert_eq!(found[2].new, Some(json!("int64")));

    let swapped = json!({"columns": [col("qty", "int32"), col("id", "string"), col("legacy", "string"), col("at", "timestamp")]});
    assert_eq!(
        changes(old, swapped),
        kinds(&[("/columns", Kind::Reordered)])
    );
}

#[test]
fn other_lists_are_aligned_on_equal_elements() {
    // No unique name: aligned, so one insertion is one added element.
    let old = json!([{"v": 1}, {"v": 2}, {"v": 3}]);
    let new = json!([{"v": 1}, {"v": 9}, {"v": 2}, {"v": 3}]);
    assert_eq!(changes(old, new), kinds(&[("/1", Kind::ElementAdded)]));
    // A replaced element is paired and diffed.
    assert_eq!(
        changes(json!([[1], {"v": 2}, [3]]), json!([[1], {"v": 5}, [3]])),
        kinds(&[("/1/v", Kind::Changed)])
    );
    // Removed at the end, and from the middle.
    assert_eq!(
        changes(json!([[1], [2], [3]]), json!([[1], [3]])),
        kinds(&[("/1", Kind::ElementRemoved)])
    );
    // Duplicate names fall back to alignment.
    assert_eq!(
        changes(
            json!([{"name": "a", "x": 1}, {"name": "a", "x": 2}]),
            json!([{"name": "a", "x": 1}])
        ),
        kinds(&[("/1", Kind::ElementRemoved)])
    );
}

#[test]
fn long_lists_fall_back_to_position() {
    let old: Vec<Value> = (0..1500).map(|i| json!({"v": i})).collect();
    let mut new = old.clone();
    new.reverse();
    let found = diff(&Value::Array(old), &Value::Array(new), &Cursor::none());
    assert!(!found.is_empty());
    assert!(
        found.iter().all(|c| c.kind == Kind::Changed),
        "{:?}",
        &found[..3]
    );
}

#[test]
fn items_and_counts() {
    let cursor = Cursor::none();
    let items = vec![
        item_added("owners/new"),
        item_changed(
            "tables/t",
            &json!({"columns": [col("a", "string"), col("b", "string")], "tags": ["x"]}),
            &json!({"columns": [col("a", "int64"), col("c", "string")], "tags": ["x", "y"]}),
            &cursor,
        ),
        item_removed("tables/old"),
    ];
    assert_eq!(items[0].class, Class::Additive);
    assert_eq!(items[1].class, Class::Destructive);
    assert_eq!(items[2].class, Class::Destructive);
    assert_eq!(
        ClassCounts::of(&items),
        ClassCounts {
            additive: 3,
            modifying: 1,
            destructive: 2
        }
    );
    let modifying = item_changed("k", &json!({"a": 1}), &json!({"a": 2}), &cursor);
    assert_eq!(modifying.class, Class::Modifying);
    assert_eq!(
        destructive_lines(&items),
        [
            "tables/t /columns/1: element removed: {\"name\":\"b\",\"nullable\":true,\"type\":\"string\"}",
            "tables/old: item removed"
        ]
    );
    let json = serde_json::to_value(&items[1]).expect("serializes");
    assert_eq!(json["class"], "destructive");
    assert_eq!(json["change"], "changed");
    assert_eq!(
        json["changes"][0],
        json!({"path": "/columns/1", "kind": "element_removed", "class": "destructive",
               "old": {"name": "b", "type": "string", "nullable": true}})
    );
}

#[test]
fn sensitive_values_are_redacted_old_and_new() {
    let schema = json!({"properties": {
        "oncall": {"properties": {"phone": {"type": "string", "x-switchboard-sensitive": true}}},
        "secrets": {"x-switchboard-sensitive": true}
    }});
    let cursor = Cursor::new(&[&schema]);
    let plan = item_changed(
        "owners/a",
        &json!({"oncall": {"phone": "+1 555 0100", "hours": "24x7"}, "secrets": ["s1"]}),
        &json!({"oncall": {"phone": "+1 555 0199", "hours": "business"}, "secrets": ["s2"], "extra": {"x": 1}}),
        &cursor,
    );
    let text = serde_json::to_string(&plan).expect("serializes");
    for secret in ["0100", "0199", "s1", "s2"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let phone = plan
        .changes
        .iter()
        .find(|c| c.path == "/oncall/phone")
        .expect("the phone change");
    assert_eq!(phone.old, Some(json!("<redacted>")));
    assert_eq!(phone.new, Some(json!("<redacted>")));
    assert_eq!(phone.class, Class::Modifying);
    assert_eq!(
        render_change(phone),
        "~ /oncall/phone: \"<redacted>\" -> \"<redacted>\" (modifying)"
    );
    // A sensitive field inside an added object is redacted too.
    let added = item_changed(
        "owners/a",
        &json!({}),
        &json!({"oncall": {"phone": "+1 555 0100", "hours": "x"}}),
        &cursor,
    );
    assert_eq!(
        added.changes[0].new,
        Some(json!({"phone": "<redacted>", "hours": "x"}))
    );
}

#[test]
fn rendering_is_readable_and_capped() {
    let change = Change::new(
        "/columns/9/type",
        Kind::Changed,
        Some(json!("int32")),
        Some(json!("int64")),
    );
    assert_eq!(
        render_change(&change),
        "~ /columns/9/type: \"int32\" -> \"int64\" (modifying)"
    );
    let removed = Change::new(
        "/columns/2",
        Kind::ElementRemoved,
        Some(json!({"name": "x"})),
        None,
    );
    assert_eq!(
        render_change(&removed),
        "- /columns/2: {\"name\":\"x\"} (destructive: element removed)"
    );
    let added = Change::new("/tags/3", Kind::ValueAdded, None, Some(json!("certified")));
    assert_eq!(render_change(&added), "+ /tags/3: \"certified\" (additive)");
    let (old, new) = string_change(
        "Posted general ledger lines converted to the reporting curency (USD) at the posting-date rate.",
        "Posted general ledger lines converted to the reporting currency (USD) at the posting-date rate.",
    );
    assert_eq!(
        old,
        "\"...ted to the reporting curency (USD) at the postin...\""
    );
    assert_eq!(
        new,
        "\"...ted to the reporting currency (USD) at the postin...\""
    );
    assert_eq!(string_change("a", "b"), ("\"a\"".into(), "\"b\"".into()));
    let (old, new) = string_change(&"x".repeat(100), &format!("{}y", "x".repeat(100)));
    assert_eq!(old, format!("\"...{}\"", "x".repeat(24)));
    assert_eq!(new, format!("\"...{}y\"", "x".repeat(24)));
    let long = short_value(&json!("x".repeat(500)));
    assert!(long.ends_with("...") && long.chars().count() < 80, "{long}");

    let old: Value = (0..30)
        .map(|i| (format!("f{i:02}"), json!(i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let plan = item_changed("k", &old, &json!({}), &Cursor::none());
    let mut text = String::new();
    render_item_changes(&plan, "    ", &mut text);
    assert_eq!(text.lines().count(), MAX_CHANGES_SHOWN + 1);
    assert!(text.ends_with("    ... and 10 more\n"), "{text}");
}

#[test]
fn staging_refuses_destructive_changes_unless_allowed() {
    let cursor = Cursor::none();
    let additive = vec![
        item_added("a"),
        item_changed("b", &json!({"x": 1}), &json!({"x": 2, "y": 1}), &cursor),
    ];
    assert_eq!(
        check_destructive(&additive, false, "v1", "sbctl plan ns dir"),
        Ok(0)
    );

    let mut destructive = additive.clone();
    destructive.push(item_removed("gone"));
    destructive.push(item_changed(
        "c",
        &json!({"t": 1}),
        &json!({"t": "1"}),
        &cursor,
    ));
    let message =
        check_destructive(&destructive, false, "v1", "sbctl plan ns dir").expect_err("refused");
    assert!(
        message.contains("2 destructive change(s) to the active version v1"),
        "{message}"
    );
    assert!(message.contains("gone: item removed"), "{message}");
    assert!(
        message.contains("c /t: type changed from number to string: 1 -> \"1\""),
        "{message}"
    );
    assert!(
        message.contains("`sbctl plan ns dir`") && message.contains("--allow-destructive"),
        "{message}"
    );
    assert_eq!(
        check_destructive(&destructive, true, "v1", "sbctl plan ns dir"),
        Ok(2)
    );

    let many: Vec<ItemPlan> = (0..15).map(|i| item_removed(&format!("k{i}"))).collect();
    let message = check_destructive(&many, false, "v1", "x").expect_err("refused");
    assert!(message.contains("and 5 more"), "{message}");
}

//! The text and documents of `output`, checked line by line.

use super::*;
use serde_json::json;
use switchboard_proto::{
    Canary, Routing, ServedSet, StatusCanary, StatusChange, StatusSlotVersion, StatusSlots,
};

#[test]
fn notes_reach_the_terminal_without_control_characters() {
    let mut out = Vec::new();
    write_note(
        &mut out,
        "error: the coordinator says \x1b[2J\x1b]0;owned\x07\n  and more\ton two lines",
    )
    .expect("write");
    let text = String::from_utf8(out).expect("UTF-8");
    assert_eq!(
        text,
        "error: the coordinator says \\u{1b}[2J\\u{1b}]0;owned\\u{7}\n  and more\ton two lines\n"
    );
}

#[test]
fn sizes_and_percentages_read_well() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(999), "999 B");
    assert_eq!(human_bytes(1_000), "1.0 kB");
    assert_eq!(human_bytes(1_234_567), "1.2 MB");
    assert_eq!(human_bytes(999_960), "1.0 MB");
    assert_eq!(human_bytes(3_000_000_000), "3.0 GB");
    assert_eq!(human_bytes(u64::MAX), "18446.7 PB");
    assert_eq!(percent(0), "0%");
    assert_eq!(percent(25), "0.25%");
    assert_eq!(percent(1250), "12.5%");
    assert_eq!(percent(1234), "12.34%");
    assert_eq!(percent(10_000), "100%");
    assert_eq!(percent(5), "0.05%");
}

fn slot_ref(version: &str, state: SlotState) -> SlotRef {
    SlotRef {
        version: version.into(),
        manifest: "m".into(),
        state,
        item_count: 1200,
        bytes: 1_234_567,
        checksum: "c".into(),
        seed: 1,
        staged_by: "alice".into(),
        message: "v2 schemas".into(),
        at_ms: 1_795_000_000_000,
        contract: None,
        approval_reasons: Vec::new(),
    }
}

const T0: u64 = 1_795_000_000_000;

fn status() -> NamespaceStatus {
    NamespaceStatus {
        namespace: "catalog".into(),
        epoch: 7,
        active: Some(StatusSlotVersion {
            slot: Slot::Blue,
            version: "aaaa".into(),
        }),
        canary: Some(StatusCanary {
            slot: Slot::Green,
            version: "bbbb".into(),
            percent: 12.5,
            weight_bp: 1250,
        }),
        previous: None,
        slots: StatusSlots {
            blue: Some(slot_ref("aaaa", SlotState::Sealed)),
            green: Some(slot_ref("bbbb", SlotState::Staging)),
        },
        sidecars: vec![
            StatusSidecar {
                id: "host-a".into(),
                epoch: 7,
                serving: vec![ServedSet {
                    slot: Slot::Blue,
                    version: "aaaa".into(),
                    checksum: "c".into(),
                }],
                etcd_reachable: true,
                at_ms: 1_795_000_000_000,
                reports: vec![],
                drift: None,
                prepared: None,
                activated_epoch: None,
                activated_at_us: None,
            },
            StatusSidecar {
                id: "host-b".into(),
                epoch: 6,
                serving: vec![],
                etcd_reachable: false,
                at_ms: 0,
                reports: vec![],
                drift: None,
                prepared: None,
                activated_epoch: None,
                activated_at_us: None,
            },
        ],
        last_change: Some(StatusChange {
            action: "canary".into(),
            by: "alice".into(),
            reason: "first step".into(),
            at_ms: 1_795_000_000_000,
        }),
        bake_until_ms: None,
        policy: Policy::default(),
        rollout: None,
        leader: None,
        approvals: vec![],
    }
}

#[test]
fn status_shows_routing_slots_and_sidecars() {
    let text = render_status(&status(), T0);
    for needle in [
        "namespace  catalog",
        "epoch      7",
        "active     blue aaaa",
        "canary     green bbbb  12.5% of consumers",
        "previous   none",
        "blue   sealed   aaaa  1200 items  1.2 MB  staged by alice at 2026-11-18T11:06:40.000Z",
        "(active)",
        "green  staging  bbbb",
        "(canary, 12.5%)",
        "host-a  epoch 7 (current)  serving blue aaaa  etcd reachable",
        "host-b  epoch 6 (behind)  serving nothing  etcd UNREACHABLE",
        "last change  canary by alice at 2026-11-18T11:06:40.000Z: first step",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // Absent: no bake, no rollout, no reports; the policy and the leader always show.
    for needle in [
        "policy     max-error-rate 5%  min-requests 200  window 120s (2m)  bake 300s (5m)  require-approval false  (the defaults)",
        "leader     none elected",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    for absent in ["bake until", "rollout", "reports"] {
        assert!(!text.contains(absent), "{absent:?} in\n{text}");
    }
}

fn rollout(state: RolloutState, step: usize) -> Rollout {
    Rollout {
        slot: Slot::Green,
        version: "bbbb".into(),
        steps_bp: vec![100, 500, 2500, 5000, 10_000],
        interval_seconds: 300,
        step,
        state,
        started_by: "alice".into(),
        started_at_ms: T0 - 600_000,
        step_at_ms: T0 - 50_000,
        note: "judge: error rate 0.10% is within the policy's 5.00%".into(),
    }
}

#[test]
fn status_shows_bake_policy_rollout_leader_and_reports() {
    let mut status = status();
    status.bake_until_ms = Some(T0 + 250_000);
    status.policy = Policy {
        min_requests: 1000,
        bake_seconds: 600,
        ..Policy::default()
    };
    status.rollout = Some(rollout(RolloutState::Running, 1));
    status.leader = Some("coordinator-2".into());
    status.sidecars[0].reports = vec![
        VersionReports {
            version: "aaaa".into(),
            ok: 1197,
            errors: 3,
        },
        VersionReports {
            version: "bbbb".into(),
            ok: 0,
            errors: 0,
        },
    ];
    let text = render_status(&status, T0);
    for needle in [
        "bake until 2026-11-18T11:10:50.000Z (in 4m 10s)",
        "policy     max-error-rate 5%  min-requests 1000  window 120s (2m)  bake 600s (10m)  require-approval false  (not default: min-requests, bake)",
        "rollout    running  green bbbb  step 2/5: 1%  [5%]  25%  50%  100%",
        "           next 25% due 2026-11-18T11:10:50.000Z (in 4m 10s)",
        "           note: judge: error rate 0.10% is within the policy's 5.00%",
        "leader     coordinator-2",
        "  host-a  epoch 7 (current)",
        "    reports  aaaa: 1197 ok/3 errors (0.25%), bbbb: 0 ok/0 errors (0.00%)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // Reports belong to the sidecar above them; host-b reported nothing.
    let host_a = text.find("host-a").expect("host-a");
    let reports = text.find("    reports").expect("reports");
    let host_b = text.find("host-b").expect("host-b");
    assert!(host_a < reports && reports < host_b, "{text}");
    assert_eq!(text.matches("reports").count(), 1, "{text}");
}

#[test]
fn rollouts_mark_the_current_step_and_when_the_next_is_due() {
    let text = render_rollout("catalog", &rollout(RolloutState::Running, 1), T0);
    assert_eq!(
        text,
        "rollout of catalog: running\n\
         version    green bbbb\n\
         step       2/5: 1%  [5%]  25%  50%  100%\n\
         interval   300s (5m)\n\
         next       25% due 2026-11-18T11:10:50.000Z (in 4m 10s)\n\
         started    by alice at 2026-11-18T10:56:40.000Z\n\
         note       judge: error rate 0.10% is within the policy's 5.00%\n"
    );
    // The step before the flip: the next one is the flip, overdue by now.
    let late = render_rollout("catalog", &rollout(RolloutState::Running, 3), T0 + 400_000);
    assert!(
        late.contains("step       4/5: 1%  5%  25%  [50%]  100%"),
        "{late}"
    );
    assert!(
        late.contains("next       100% (flip) due 2026-11-18T11:10:50.000Z (2m 30s ago)"),
        "{late}"
    );
    let paused = render_rollout("catalog", &rollout(RolloutState::Paused, 0), T0);
    assert!(
        paused.starts_with("rollout of catalog: paused\n"),
        "{paused}"
    );
    assert!(paused.contains("[1%]  5%"), "{paused}");
    assert!(paused.contains("next       5% once resumed"), "{paused}");
    let done = render_rollout("catalog", &rollout(RolloutState::Done, 4), T0);
    assert!(done.contains("[100%]"), "{done}");
    assert!(
        done.contains("next       none: the rollout is done"),
        "{done}"
    );
    let rolled_back = render_rollout("catalog", &rollout(RolloutState::RolledBack, 2), T0);
    assert!(
        rolled_back.starts_with("rollout of catalog: rolled back"),
        "{rolled_back}"
    );
    assert!(rolled_back.contains("next       none: the rollout is rolled back"));
    let mut last = rollout(RolloutState::Running, 1);
    last.steps_bp = vec![100, 500];
    last.note = String::new();
    let text = render_rollout("catalog", &last, T0);
    assert!(
        text.contains("next       none: this is the last step"),
        "{text}"
    );
    assert!(!text.contains("note"), "{text}");
}

#[test]
fn policies_say_which_settings_are_defaults() {
    let policy = Policy {
        max_error_rate: 0.025,
        bake_seconds: 600,
        ..Policy::default()
    };
    assert_eq!(
        render_policy("catalog", &policy, None),
        "policy of catalog\n  \
         max-error-rate                 2.5%          not the default (5%)\n  \
         min-requests                   200           default\n  \
         window                         120s (2m)     default\n  \
         bake                           600s (10m)    not the default (300s (5m))\n  \
         require-approval               false         default\n  \
         destructive-requires-approval  false         default\n  \
         preview-reads                  false         default\n\
         gates of catalog: none\n"
    );
    let text = render_policy("catalog", &policy, Some(&Policy::default()));
    assert!(
        text.contains(
            "max-error-rate                 2.5%          not the default (5%), was 5%\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("min-requests                   200           default\n"),
        "{text}"
    );
    let defaults = render_policy("catalog", &Policy::default(), None);
    assert_eq!(defaults.matches("  default\n").count(), 7, "{defaults}");
}

#[test]
fn durations_and_rates_read_well() {
    assert_eq!(short_duration(0), "0s");
    assert_eq!(short_duration(999), "0s");
    assert_eq!(short_duration(45_000), "45s");
    assert_eq!(short_duration(250_000), "4m 10s");
    assert_eq!(short_duration(300_000), "5m");
    assert_eq!(short_duration(3_720_000), "1h 2m");
    assert_eq!(short_duration(3_605_000), "1h");
    assert_eq!(
        short_duration(2 * 86_400_000 + 3 * 3_600_000 + 5_000),
        "2d 3h"
    );
    assert_eq!(relative(T0 + 500, T0), "now");
    assert_eq!(relative(T0 + 90_000, T0), "in 1m 30s");
    assert_eq!(relative(T0, T0 + 3_000), "3s ago");
    assert_eq!(seconds_text(59), "59s");
    assert_eq!(seconds_text(86_400), "86400s (1d)");
    assert_eq!(rate(0.05), "5%");
    assert_eq!(rate(0.07), "7%");
    assert_eq!(rate(0.0125), "1.25%");
    assert_eq!(rate(0.0), "0%");
    assert_eq!(rate(1.0), "100%");
    assert_eq!(rate(0.000_01), "0.001%");
    assert_eq!(observed_rate(1.0 / 3.0), "33.33%");
}

#[test]
fn sync_report_measures_the_acknowledged_sidecars_against_the_point() {
    let mut status = status();
    let point_ms = 1_795_000_000_000;
    let switched = |id: &str, epoch: u64, at_us: Option<u64>| StatusSidecar {
        id: id.into(),
        epoch,
        serving: vec![],
        etcd_reachable: true,
        at_ms: 0,
        reports: vec![],
        drift: None,
        prepared: None,
        activated_epoch: at_us.map(|_| epoch),
        activated_at_us: at_us,
    };
    status.sidecars = vec![
        switched("a", 9, Some(point_ms * 1000 + 300)),
        switched("b", 9, Some(point_ms * 1000 + 1_200)),
        switched("c", 8, None),
        switched("d", 10, Some(point_ms * 1000 + 90_000)),
        // Live, but it was not there to acknowledge: not measured.
        switched("new", 9, Some(point_ms * 1000 + 50_000)),
    ];
    let prepared = switchboard_proto::SyncPrepared {
        prepare_epoch: 8,
        acknowledged: ["a", "b", "c", "d", "gone"].map(String::from).to_vec(),
        ack_wait_ms: 40,
        lead_ms: 250,
        activate_at_ms: point_ms,
    };
    let report = SyncReport::measure(&status, 9, &prepared);
    assert!(!report.converged);
    assert_eq!(report.behind, vec!["c".to_string()]);
    assert_eq!(report.gone, vec!["gone".to_string()]);
    assert_eq!(report.moved_on, vec!["d".to_string()]);
    assert_eq!(report.spread_us, Some(900));
    assert_eq!(
        (report.min_late_us, report.max_late_us),
        (Some(300), Some(1_200))
    );
    let text = render_sync_report(&report);
    assert!(
        text.contains(
            "spread     0.900 ms across 2 sidecar(s); the latest switched 1.200 ms after"
        ),
        "{text}"
    );

    // The --json document is the change with the measurements added to its `sync`.
    let change = serde_json::json!({"routing": {"epoch": 9}, "sync": {"acknowledged": ["a"], "ack_wait_ms": 40}});
    let document = sync_flip_document(&change, &report);
    assert_eq!(document["sync"]["acknowledged"], serde_json::json!(["a"]));
    assert_eq!(document["sync"]["spread_us"], 900);
    assert_eq!(document["sync"]["converged"], false);
    assert_eq!(document["routing"]["epoch"], 9);
}

#[test]
fn flip_wait_json_is_the_change_plus_wait() {
    let change = json!({"namespace": "catalog", "routing": {"epoch": 8}, "audit_seq": 12});
    let wait = WaitReport {
        epoch: 8,
        converged: false,
        sidecars: 3,
        behind: vec!["host-b".into(), "host-c".into()],
    };
    assert_eq!(
        flip_wait_document(&change, &wait),
        json!({
            "namespace": "catalog",
            "routing": {"epoch": 8},
            "audit_seq": 12,
            "wait": {"epoch": 8, "converged": false, "sidecars": 3, "behind": ["host-b", "host-c"]}
        })
    );
    let done = WaitReport {
        epoch: 8,
        converged: true,
        sidecars: 3,
        behind: vec![],
    };
    let document = flip_wait_document(&change, &done);
    assert_eq!(
        document["wait"],
        json!({"epoch": 8, "converged": true, "sidecars": 3, "behind": []})
    );
    assert_eq!(render_wait(&done), "all 3 live sidecars serve epoch 8");
    let one = WaitReport {
        sidecars: 1,
        ..done.clone()
    };
    assert_eq!(render_wait(&one), "the one live sidecar serves epoch 8");
    let nobody = WaitReport {
        sidecars: 0,
        ..done
    };
    assert_eq!(
        render_wait(&nobody),
        "no live sidecars to wait for at epoch 8"
    );
}

#[test]
fn routing_changes_show_the_new_routing() {
    let change = RoutingChange {
        namespace: "catalog".into(),
        routing: Routing {
            epoch: 8,
            active: SlotVersion {
                slot: Slot::Blue,
                version: "aaaa".into(),
                manifest: "m".into(),
            },
            canary: Some(Canary {
                slot: Slot::Green,
                version: "bbbb".into(),
                manifest: "n".into(),
                weight_bp: 25,
                seed: 9,
            }),
            previous: None,
            bake_until_ms: None,
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            action: "canary".into(),
            by: "alice".into(),
            reason: "".into(),
            at_ms: 1,
        },
        audit_seq: 12,
        sync: None,
    };
    let text = render_routing_change(&change);
    assert!(
        text.starts_with("canary done in catalog: now at epoch 8"),
        "{text}"
    );
    assert!(
        text.contains("canary     green bbbb  0.25% of consumers"),
        "{text}"
    );
    assert!(text.contains("audit      record 12"), "{text}");
}

#[test]
fn audit_details_are_compact() {
    assert_eq!(render_detail(&json!(null)), "");
    assert_eq!(
        render_detail(
            &json!({"to": "green", "weight_bp": 500, "why": "two words", "e": {"b": 1, "a": [1]}})
        ),
        r#"e={"a":[1],"b":1} to=green weight_bp=500 why="two words""#
    );
    assert_eq!(render_detail(&json!([1, "x"])), r#"[1,"x"]"#);
    let record = AuditRecord {
        seq: 3,
        at_ms: 1_795_000_000_000,
        namespace: "catalog".into(),
        actor: "alice".into(),
        action: "flip".into(),
        reason: "go".into(),
        detail: json!({"to": "green"}),
        prev_hash: "p".into(),
        hash: "h".into(),
    };
    assert_eq!(
        render_audit_record(&record),
        "    3  2026-11-18T11:06:40.000Z  alice  flip  \"go\"  to=green"
    );
}

#[test]
fn stage_prints_the_version_last() {
    let mut report = StageReport {
        namespace: "catalog".into(),
        slot: Slot::Green,
        version: "0123456789abcdef".into(),
        outcome: "staged".into(),
        items: 1200,
        bytes: 1_234_567,
        chunks_total: 40,
        chunks_uploaded: 3,
        chunk_bytes_total: 1_300_000,
        chunk_bytes_uploaded: 97_000,
        pages_total: 4,
        pages_uploaded: 1,
        manifest_bytes_uploaded: 2_000,
        replaced_version: None,
        warnings: Vec::new(),
        approval_reasons: Vec::new(),
        seal_timings: None,
    };
    let text = render_stage(&report);
    assert_eq!(
        text,
        "staged 1200 items (1.2 MB, 3 of 40 chunks uploaded) into slot green\n0123456789abcdef\n"
    );
    report.outcome = "already_active".into();
    let text = render_stage(&report);
    assert!(text.contains("already active in slot green"), "{text}");
    assert_eq!(text.lines().last(), Some("0123456789abcdef"));
}

#[test]
fn plans_group_keys_by_change() {
    use crate::compat::{ClassCounts, item_added, item_changed, item_removed};
    use crate::validate::Cursor;
    let items = vec![
        item_added("t/new"),
        item_changed(
            "t/changed",
            &json!({"type": "int32", "tags": ["a", "b"]}),
            &json!({"type": "int64", "tags": ["a"]}),
            &Cursor::none(),
        ),
        item_removed("t/gone"),
    ];
    let mut plan = PlanReport {
        namespace: "catalog".into(),
        active_version: Some("aaaa".into()),
        new_version: "bbbb".into(),
        added: vec!["t/new".into()],
        changed: vec!["t/changed".into()],
        removed: vec!["t/gone".into()],
        unchanged: 97,
        classes: ClassCounts::of(&items),
        items,
        contract: None,
    };
    let text = render_plan(&plan);
    assert_eq!(
        text,
        "plan for catalog: 1 added, 1 changed, 1 removed, 97 unchanged (active aaaa -> new bbbb)\n\
         \x20 + t/new\n\
         \x20 ~ t/changed\n\
         \x20     - /tags/1: \"b\" (destructive: value removed from a list (narrowed))\n\
         \x20     ~ /type: \"int32\" -> \"int64\" (modifying)\n\
         \x20 - t/gone\n\
         changes: 1 additive, 1 modifying, 2 destructive\n\
         destructive (2), so `sbctl stage` needs --allow-destructive:\n\
         \x20 t/changed /tags/1: value removed from a list (narrowed): \"b\"\n\
         \x20 t/gone: item removed\n"
    );
    plan.new_version = "aaaa".into();
    assert!(render_plan(&plan).contains("no changes"));
    plan.active_version = None;
    assert!(render_plan(&plan).contains("(active none -> new aaaa)"));
}

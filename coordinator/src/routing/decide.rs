//! The pure decisions of routing changes: from the namespace's state at one revision and a
//! request, the routing to write, or why not. Nothing here reads or writes etcd.

use super::*;

/// Where a rollout moves consumers: the canary at a weight, or everyone (a flip).
pub(super) fn apply_weight(
    routing: &Routing,
    target: &SlotRef,
    slot: Slot,
    weight_bp: u32,
    policy: &Policy,
) -> Routing {
    if weight_bp >= BUCKETS {
        return flipped(routing, target, slot, policy);
    }
    Routing {
        canary: canary_of(target, slot, weight_bp),
        ..routing.clone()
    }
}

/// A canary of `weight_bp` for the set in `slot`; none at 0, which frees the slot again.
pub(super) fn canary_of(target: &SlotRef, slot: Slot, weight_bp: u32) -> Option<Canary> {
    (weight_bp > 0).then(|| Canary {
        slot,
        version: target.version.clone(),
        manifest: target.manifest.clone(),
        weight_bp,
        seed: target.seed,
    })
}

/// The acknowledgements of a routing change a second that a fleet is asked to keep to, by
/// default (`--acknowledgements-per-second`): each sidecar writes its health record when what
/// it serves changes, and 10,000 of them writing within the same second put etcd (one member
/// on two cores) seconds behind on applying writes, during which etcd 3.4 renews no lease, and
/// the leader's 3 s election lease expired (BENCHMARKS.md, "fleet"). A fleet of up to this many
/// acknowledges at once, as before.
pub const ACKNOWLEDGEMENTS_PER_SECOND: u64 = 1_000;

/// The longest spread asked for, whatever the fleet: `status` shows a record's epoch this late
/// at most.
const MOST_ACKNOWLEDGEMENT_SPREAD_MS: u64 = 30_000;

/// Over how long (ms) the `streaming` sidecars of a namespace should spread their
/// acknowledgements of a routing change to keep etcd to `per_second` of them: none up to that
/// many sidecars, then a second for each as many. Only the leader counts the streams; a change
/// made elsewhere asks for no spread.
pub(super) fn acknowledgement_spread_ms(streaming: usize, per_second: u64) -> Option<u64> {
    let streaming = u64::try_from(streaming).unwrap_or(u64::MAX);
    let per_second = per_second.max(1);
    (streaming > per_second)
        .then(|| (streaming.saturating_mul(1000) / per_second).min(MOST_ACKNOWLEDGEMENT_SPREAD_MS))
}

/// Everyone to `slot`; the old active set stays hot for the bake time.
pub(super) fn flipped(routing: &Routing, target: &SlotRef, slot: Slot, policy: &Policy) -> Routing {
    let active = SlotVersion {
        slot,
        version: target.version.clone(),
        manifest: target.manifest.clone(),
    };
    let bake_until_ms =
        (policy.bake_seconds > 0).then(|| now_ms().saturating_add(policy.bake_seconds * 1000));
    Routing {
        active,
        canary: None,
        previous: Some(routing.active.clone()),
        bake_until_ms,
        ..routing.clone()
    }
}

/// Everyone to the staged slot, when something is active: the decision of a flip, and what a
/// synchronized flip checks before it asks the sidecars to prepare.
pub(super) fn flip_decision(
    ns: &str,
    state: &NamespaceState,
    routing: &Routing,
    expected_version: &str,
) -> Result<Decision> {
    let slot = routing.active.slot.other();
    let target = sealed_target(ns, state, slot, &routing.active)?;
    check_expected_version(ns, slot, &target, expected_version)?;
    Ok(Decision {
        detail: json!({
            "from": {"slot": routing.active.slot, "version": routing.active.version},
            "to": {"slot": slot, "version": target.version},
            "bake_seconds": state.policy().bake_seconds,
        }),
        routing: flipped(routing, &target, slot, &state.policy()),
        compare_slots: vec![slot],
        rollout: RolloutAfter::EndActive,
        target: Target::approved(&target),
    })
}

/// Everyone back to the previous set (a rollback after a flip).
pub(super) fn flip_back(
    ns: &str,
    state: &NamespaceState,
    routing: &Routing,
    rollout: RolloutAfter,
) -> Result<Decision> {
    let previous = routing.previous.clone().ok_or_else(|| {
        CoordinatorError::Refused(format!(
            "nothing to roll back to in {ns}: no canary is live and no earlier version was active"
        ))
    })?;
    let slot_ref = sealed(ns, state, previous.slot)?;
    if slot_ref.manifest != previous.manifest {
        return Err(CoordinatorError::Refused(format!(
            "cannot roll back {ns}: slot {} no longer holds the previous version {} but version {} (staged by {} at {}); flip to it or stage the previous version again",
            previous.slot,
            previous.version,
            slot_ref.version,
            slot_ref.staged_by,
            rfc3339_ms(slot_ref.at_ms)
        )));
    }
    Ok(Decision {
        detail: json!({
            "kind": "flip",
            "from": {"slot": routing.active.slot, "version": routing.active.version},
            "to": {"slot": previous.slot, "version": previous.version},
        }),
        routing: Routing {
            active: previous.clone(),
            canary: None,
            previous: Some(routing.active.clone()),
            bake_until_ms: None,
            ..routing.clone()
        },
        compare_slots: vec![previous.slot],
        rollout,
        target: None,
    })
}

/// The first flip of a namespace: nothing is active, so there is nothing to bake.
pub(super) fn first_flip(
    ns: &str,
    state: &NamespaceState,
    expected_version: &str,
) -> Result<Decision> {
    let slot = first_slot_to_flip(ns, state)?;
    let target = sealed(ns, state, slot)?;
    check_expected_version(ns, slot, &target, expected_version)?;
    let active = SlotVersion {
        slot,
        version: target.version.clone(),
        manifest: target.manifest.clone(),
    };
    Ok(Decision {
        detail: json!({"from": null, "to": {"slot": slot, "version": target.version}}),
        routing: Routing {
            epoch: 0,
            active,
            canary: None,
            previous: None,
            bake_until_ms: None,
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            action: String::new(),
            by: String::new(),
            reason: String::new(),
            at_ms: 0,
        },
        compare_slots: vec![slot],
        rollout: RolloutAfter::EndActive,
        target: Target::approved(&target),
    })
}

pub(super) fn check_steps(steps_bp: &[u32], interval_seconds: u64) -> Result<()> {
    let invalid = |m: String| Err(CoordinatorError::InvalidInput(m));
    if steps_bp.is_empty() || steps_bp.len() > 20 {
        return invalid(format!(
            "a rollout needs 1 to 20 steps, not {}",
            steps_bp.len()
        ));
    }
    if steps_bp.iter().any(|w| *w == 0 || *w > BUCKETS) {
        return invalid("every step must be above 0% and at most 100%".into());
    }
    if steps_bp.windows(2).any(|pair| pair[0] >= pair[1]) {
        return invalid("rollout steps must ascend".into());
    }
    if !(1..=86_400).contains(&interval_seconds) {
        return invalid(format!("interval {interval_seconds} s must be 1 to 86400"));
    }
    Ok(())
}

pub(super) fn current_percent(rollout: &Rollout) -> f64 {
    percent(rollout.steps_bp.get(rollout.step).copied().unwrap_or(0))
}

pub(super) fn no_rollout(ns: &str) -> CoordinatorError {
    CoordinatorError::Refused(format!("no rollout is running or paused in {ns}"))
}

pub(crate) fn sealed(ns: &str, state: &NamespaceState, slot: Slot) -> Result<SlotRef> {
    match &state.slot(slot).value {
        Some(slot_ref) if slot_ref.state == SlotState::Sealed => Ok(slot_ref.clone()),
        Some(slot_ref) => Err(CoordinatorError::Refused(format!(
            "slot {slot} of {ns} is not sealed: staging of version {} by {} began at {} and did not complete; run sbctl stage again",
            slot_ref.version,
            slot_ref.staged_by,
            rfc3339_ms(slot_ref.at_ms)
        ))),
        None => Err(CoordinatorError::Refused(format!(
            "slot {slot} of {ns} is empty; stage a version first"
        ))),
    }
}

/// The sealed slot a canary or flip would move consumers to, which must hold something other
/// than the active version.
pub(super) fn sealed_target(
    ns: &str,
    state: &NamespaceState,
    slot: Slot,
    active: &SlotVersion,
) -> Result<SlotRef> {
    let slot_ref = sealed(ns, state, slot)?;
    if slot_ref.manifest == active.manifest {
        return Err(CoordinatorError::Refused(format!(
            "slot {slot} of {ns} holds the active version {}; stage a new version first",
            slot_ref.version
        )));
    }
    Ok(slot_ref)
}

/// Refuses a change whose caller decided on another version than the target slot now holds.
pub(super) fn check_expected_version(
    ns: &str,
    slot: Slot,
    target: &SlotRef,
    expected: &str,
) -> Result<()> {
    if expected.is_empty() || target.version == expected {
        return Ok(());
    }
    Err(CoordinatorError::Conflict(format!(
        "slot {slot} of {ns} changed underneath: it now holds version {} (staged by {} at {}), not the version {expected} this change was decided on; read `sbctl status {ns}` and retry",
        target.version,
        target.staged_by,
        rfc3339_ms(target.at_ms)
    )))
}

/// Before anything is active, the first flip goes to the most recently sealed slot.
pub(super) fn first_slot_to_flip(ns: &str, state: &NamespaceState) -> Result<Slot> {
    Slot::BOTH
        .into_iter()
        .filter(|slot| state.slot(*slot).value.is_some())
        .max_by_key(|slot| {
            let sealed = state
                .slot(*slot)
                .value
                .as_ref()
                .is_some_and(|s| s.state == SlotState::Sealed);
            (sealed, state.slot(*slot).mod_revision)
        })
        .ok_or_else(|| {
            CoordinatorError::Refused(format!("nothing is staged in {ns}; stage a version first"))
        })
}

pub(super) fn nothing_active(ns: &str) -> CoordinatorError {
    CoordinatorError::Refused(format!(
        "nothing is active in {ns} yet: stage a version and flip to make it live"
    ))
}

pub(super) fn conflict(
    ns: &str,
    expected_epoch: u64,
    routing: Option<&Routing>,
) -> CoordinatorError {
    let now = match routing {
        Some(r) => format!(
            "epoch {} ({} by {} at {}{})",
            r.epoch,
            r.action,
            r.by,
            rfc3339_ms(r.at_ms),
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {:?}", r.reason)
            }
        ),
        None => "epoch 0 (nothing active)".to_string(),
    };
    CoordinatorError::Conflict(format!(
        "routing of {ns} changed underneath: expected epoch {expected_epoch}, now {now}; read `sbctl status {ns}` and retry"
    ))
}

/// The unit tier of the pure decisions: states built in memory, no etcd, a few milliseconds in
/// all. The end-to-end tests (`tests/tests/release.rs`, `races.rs`) check the same decisions
/// through real etcd and the transactions around them.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Versioned;
    use switchboard_proto::AuditHead;

    const NS: &str = "catalog";

    fn slot_ref(version: &str, state: SlotState) -> SlotRef {
        SlotRef {
            version: version.into(),
            manifest: format!("manifest-{version}"),
            state,
            item_count: 1,
            bytes: 1,
            checksum: format!("checksum-{version}"),
            seed: 7,
            staged_by: "alice".into(),
            message: String::new(),
            at_ms: 1,
            contract: None,
            approval_reasons: Vec::new(),
        }
    }

    fn versioned<T>(value: Option<T>, mod_revision: i64) -> Versioned<T> {
        Versioned {
            value,
            mod_revision,
        }
    }

    /// A namespace whose blue and green slots hold what is given, at revisions 10 and 20.
    fn state(blue: Option<SlotRef>, green: Option<SlotRef>, bake_seconds: u64) -> NamespaceState {
        NamespaceState {
            routing: versioned(None, 0),
            slots: [versioned(blue, 10), versioned(green, 20)],
            audit_head: versioned(Some(AuditHead::default()), 1),
            policy: versioned(
                Some(Policy {
                    bake_seconds,
                    ..Policy::default()
                }),
                2,
            ),
            rollout: versioned(None, 0),
            approvals: Vec::new(),
        }
    }

    fn active(slot: Slot, of: &SlotRef) -> SlotVersion {
        SlotVersion {
            slot,
            version: of.version.clone(),
            manifest: of.manifest.clone(),
        }
    }

    fn routing_on(active: SlotVersion, previous: Option<SlotVersion>) -> Routing {
        Routing {
            epoch: 4,
            active,
            canary: None,
            previous,
            bake_until_ms: None,
            prepare: None,
            activate_at_ms: None,
            acknowledge_within_ms: None,
            action: "flip".into(),
            by: "alice".into(),
            reason: String::new(),
            at_ms: 1,
        }
    }

    fn refusal(result: Result<Decision>) -> String {
        match result {
            Ok(decision) => panic!("decided {:?}", decision.routing),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_flip_moves_everyone_to_the_other_sealed_slot_and_keeps_the_old_one_baking() {
        let (a, b) = (
            slot_ref("a", SlotState::Sealed),
            slot_ref("b", SlotState::Sealed),
        );
        let state = state(Some(a.clone()), Some(b.clone()), 60);
        let routing = routing_on(active(Slot::Blue, &a), None);
        for expected in ["", "b"] {
            let decision = flip_decision(NS, &state, &routing, expected).expect("a flip");
            assert_eq!(decision.routing.active, active(Slot::Green, &b));
            assert_eq!(decision.routing.previous, Some(active(Slot::Blue, &a)));
            assert!(decision.routing.bake_until_ms.is_some());
            assert_eq!(decision.compare_slots, vec![Slot::Green]);
            assert!(decision.target.is_some_and(|t| t.needs_approval));
        }
    }

    #[test]
    fn a_flip_is_refused_for_what_it_cannot_move_consumers_to() {
        let a = slot_ref("a", SlotState::Sealed);
        let routing = routing_on(active(Slot::Blue, &a), None);
        // (green slot, expected version, what the refusal says)
        let cases = [
            (None, "", "slot green of catalog is empty"),
            (
                Some(slot_ref("b", SlotState::Staging)),
                "",
                "slot green of catalog is not sealed",
            ),
            (Some(a.clone()), "", "holds the active version a"),
            (
                Some(slot_ref("b", SlotState::Sealed)),
                "c",
                "now holds version b",
            ),
        ];
        for (green, expected, says) in cases {
            let state = state(Some(a.clone()), green, 0);
            let message = refusal(flip_decision(NS, &state, &routing, expected));
            assert!(message.contains(says), "{message}");
        }
    }

    #[test]
    fn a_rollback_returns_to_the_previous_set_only_while_its_slot_holds_it() {
        let (a, b) = (
            slot_ref("a", SlotState::Sealed),
            slot_ref("b", SlotState::Sealed),
        );
        let routing = routing_on(active(Slot::Green, &b), Some(active(Slot::Blue, &a)));
        let decision = flip_back(
            NS,
            &state(Some(a.clone()), Some(b.clone()), 60),
            &routing,
            RolloutAfter::Keep,
        )
        .expect("a rollback");
        assert_eq!(decision.routing.active, active(Slot::Blue, &a));
        assert_eq!(decision.routing.previous, Some(active(Slot::Green, &b)));
        // A rollback is the way out: no bake, no approval, no gate.
        assert_eq!(decision.routing.bake_until_ms, None);
        assert!(decision.target.is_none());

        let restaged = slot_ref("c", SlotState::Sealed);
        let message = refusal(flip_back(
            NS,
            &state(Some(restaged), Some(b.clone()), 0),
            &routing,
            RolloutAfter::Keep,
        ));
        assert!(
            message.contains("no longer holds the previous version a"),
            "{message}"
        );
        let message = refusal(flip_back(
            NS,
            &state(Some(a), Some(b.clone()), 0),
            &routing_on(active(Slot::Green, &b), None),
            RolloutAfter::Keep,
        ));
        assert!(message.contains("nothing to roll back to"), "{message}");
    }

    #[test]
    fn the_first_flip_goes_to_the_most_recently_sealed_slot() {
        let (a, b) = (
            slot_ref("a", SlotState::Sealed),
            slot_ref("b", SlotState::Sealed),
        );
        // (blue, green, the slot flipped to); green was written at the later revision.
        let cases = [
            (Some(a.clone()), Some(b.clone()), Slot::Green),
            (Some(a.clone()), None, Slot::Blue),
            (
                Some(a.clone()),
                Some(slot_ref("b", SlotState::Staging)),
                Slot::Blue,
            ),
        ];
        for (blue, green, slot) in cases {
            let decision = first_flip(NS, &state(blue, green, 60), "").expect("a first flip");
            assert_eq!(decision.routing.active.slot, slot);
            assert_eq!(decision.routing.previous, None);
            assert_eq!(decision.routing.bake_until_ms, None);
        }
        let message = refusal(first_flip(NS, &state(None, None, 0), ""));
        assert!(message.contains("nothing is staged"), "{message}");
    }

    #[test]
    fn a_weight_below_all_is_a_canary_and_all_is_a_flip() {
        let (a, b) = (
            slot_ref("a", SlotState::Sealed),
            slot_ref("b", SlotState::Sealed),
        );
        let routing = routing_on(active(Slot::Blue, &a), None);
        let policy = Policy::default();
        let canary = apply_weight(&routing, &b, Slot::Green, 500, &policy);
        assert_eq!(canary.active, routing.active);
        let live = canary.live_canary().expect("a canary");
        assert_eq!((live.weight_bp, live.seed), (500, b.seed));
        let none = apply_weight(&routing, &b, Slot::Green, 0, &policy);
        assert!(none.canary.is_none());
        let all = apply_weight(&routing, &b, Slot::Green, BUCKETS, &policy);
        assert_eq!(all.active, active(Slot::Green, &b));
        assert!(all.canary.is_none());
    }

    #[test]
    fn rollout_steps_must_ascend_within_bounds() {
        // (steps, interval, accepted)
        let cases: [(&[u32], u64, bool); 8] = [
            (&[100, 500, 10_000], 60, true),
            (&[10_000], 1, true),
            (&[], 60, false),
            (&[0, 500], 60, false),
            (&[500, 10_001], 60, false),
            (&[500, 500], 60, false),
            (&[500, 100], 60, false),
            (&[500], 0, false),
        ];
        for (steps, interval, accepted) in cases {
            assert_eq!(
                check_steps(steps, interval).is_ok(),
                accepted,
                "{steps:?} every {interval} s"
            );
        }
        assert!(check_steps(&[1; 21], 60).is_err(), "21 steps");
    }

    #[test]
    fn a_conflict_names_the_change_that_won() {
        let a = slot_ref("a", SlotState::Sealed);
        let routing = Routing {
            reason: "hotfix".into(),
            ..routing_on(active(Slot::Blue, &a), None)
        };
        let message = conflict(NS, 3, Some(&routing)).to_string();
        assert!(
            message.contains("expected epoch 3, now epoch 4 (flip by alice")
                && message.contains("\"hotfix\""),
            "{message}"
        );
        let message = conflict(NS, 3, None).to_string();
        assert!(message.contains("epoch 0 (nothing active)"), "{message}");
    }

    #[test]
    fn a_fleet_acknowledges_at_once_up_to_the_rate_and_spreads_beyond_it() {
        let rate = ACKNOWLEDGEMENTS_PER_SECOND;
        assert_eq!(acknowledgement_spread_ms(0, rate), None);
        assert_eq!(acknowledgement_spread_ms(1_000, rate), None);
        assert_eq!(acknowledgement_spread_ms(1_001, rate), Some(1_001));
        assert_eq!(acknowledgement_spread_ms(10_000, rate), Some(10_000));
        assert_eq!(
            acknowledgement_spread_ms(1_000_000, rate),
            Some(MOST_ACKNOWLEDGEMENT_SPREAD_MS)
        );
        assert_eq!(acknowledgement_spread_ms(3, 1), Some(3_000));
        // A rate of 0 is taken as 1, not divided by.
        assert_eq!(acknowledgement_spread_ms(3, 0), Some(3_000));
    }
}

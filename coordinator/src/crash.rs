//! Crash points for the crash-safety tests: at the moments that matter (between chunk batches,
//! around the seal's and every routing change's transaction), a coordinator built with the
//! `failpoints` feature and started with `FAILPOINTS=<point>=return` aborts, as a `kill -9`
//! would stop it there. `<point>=return(<action>)` aborts only in that action (`flip`,
//! `rollback`, ...). Without the feature, or without `FAILPOINTS`, nothing happens.
//!
//! One point panics instead of aborting: `judge-loop-panic` (`FAILPOINTS=judge-loop-panic=panic`)
//! panics the leader's judge loop when it judges a live canary, for the test that a panicking
//! loop ends the leader's term and another replica takes over.

/// The points, as `FAILPOINTS` names them.
pub const STAGE_BETWEEN_BATCHES: &str = "stage-between-chunk-batches";
pub const SEAL_BEFORE_TXN: &str = "seal-before-txn";
pub const SEAL_AFTER_TXN: &str = "seal-after-txn";
pub const ROUTING_BEFORE_TXN: &str = "routing-before-txn";
pub const ROUTING_AFTER_TXN: &str = "routing-after-txn";
/// A panic point, not a crash point (see [`panic_point`]).
pub const JUDGE_LOOP_PANIC: &str = "judge-loop-panic";
/// A delay point: between a seal's contract check and its transaction
/// (`seal-after-check=return(MS)` waits MS milliseconds there).
pub const SEAL_AFTER_CHECK: &str = "seal-after-check";
/// A pause point (see [`pause_point`]): a routing change after its reads and checks (the
/// gates, the approval), right before its transaction.
pub const ROUTING_PAUSE: &str = "routing-pause-before-txn";
/// A pause point: a stage's beginning, after it chose the idle slot, right before the
/// transaction that claims it.
pub const STAGE_PAUSE: &str = "stage-pause-before-txn";
/// A pause point: a seal, after its reads and the contract's judgement, right before its
/// transaction.
pub const SEAL_PAUSE: &str = "seal-pause-before-txn";
/// A pause point: an audited change of one record (the policy, an approval, a rollout's
/// pause, the contract, an audit note), right before its transaction.
pub const AUDITED_PAUSE: &str = "audited-pause-before-txn";
/// A pause point: a housekeeping round that found something to delete, after it decided what,
/// right before its first delete.
pub const JANITOR_PAUSE: &str = "janitor-pause-before-txn";

/// Keeps the failpoint configuration read from `FAILPOINTS` for as long as it lives.
pub struct Scenario {
    #[cfg(feature = "failpoints")]
    _scenario: fail::FailScenario<'static>,
}

/// Reads `FAILPOINTS`; hold the result for the life of the process.
pub fn setup() -> Scenario {
    Scenario {
        #[cfg(feature = "failpoints")]
        _scenario: fail::FailScenario::setup(),
    }
}

/// Aborts the process when the point is configured to `return`, or to `return(action)`.
#[cfg(feature = "failpoints")]
pub fn point(name: &str, action: &str) {
    if let Some(only) = fail::eval(name, |only| only)
        && only.as_deref().is_none_or(|only| only == action)
    {
        eprintln!("switchboard-coordinator: crash point {name} reached ({action}); aborting");
        std::process::abort();
    }
}

/// Without the `failpoints` feature, crash points are nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_name: &str, _action: &str) {}

/// Panics when the point is configured: `<point>=panic` (the `fail` crate panics itself) or
/// `<point>=return`. The process goes on, as it would after a bug in one task.
/// Waits as long as the failpoint `name` says (`name=return(MS)`), without holding up the
/// runtime: a window in which a test changes something under a request in flight.
#[cfg(feature = "failpoints")]
pub async fn delay_point(name: &str) {
    let millis = fail::eval(name, |value| value.and_then(|v| v.parse::<u64>().ok())).flatten();
    if let Some(millis) = millis {
        eprintln!("switchboard-coordinator: delay point {name} reached; waiting {millis} ms");
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn delay_point(_name: &str) {}

/// Holds a request at the point, for the race tests: with `<point>=return(DIR)`, a request
/// that reaches it while the file `DIR/<point>.armed` exists removes that file, creates
/// `DIR/<point>.paused`, and waits until `DIR/<point>.resume` exists (which it removes, with
/// the paused marker). A test arms the point, starts the change, waits for the marker, makes
/// the competing change, and lets the first one go: the order is fixed, not left to timing.
/// Each arming pauses one request; the others pass.
#[cfg(feature = "failpoints")]
pub async fn pause_point(name: &str) {
    let Some(dir) = fail::eval(name, |value| value).flatten() else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    if std::fs::remove_file(dir.join(format!("{name}.armed"))).is_err() {
        return;
    }
    let paused = dir.join(format!("{name}.paused"));
    let resume = dir.join(format!("{name}.resume"));
    if let Err(error) = std::fs::write(&paused, b"") {
        eprintln!("switchboard-coordinator: pause point {name}: cannot write its marker: {error}");
        return;
    }
    eprintln!(
        "switchboard-coordinator: pause point {name} reached; waiting for {}",
        resume.display()
    );
    while !resume.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The marker goes first: a test that sees the resume file gone knows that this pause is
    // over, and a marker it sees after that is the next pause's.
    let _ = std::fs::remove_file(&paused);
    let _ = std::fs::remove_file(&resume);
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn pause_point(_name: &str) {}

#[cfg(feature = "failpoints")]
pub fn panic_point(name: &str) {
    if fail::eval(name, |_| ()).is_some() {
        panic!("panic point {name} reached");
    }
}

/// Without the `failpoints` feature, panic points are nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn panic_point(_name: &str) {}

//! Waiting for a condition with a deadline: the harness's only way to synchronise with processes.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// How long to pause between two checks of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// An error that stops [`wait_until`] / [`wait_for`] at once instead of retrying until the
/// deadline: the thing waited for can no longer happen (for example, the process exited).
#[derive(Debug)]
pub struct GiveUp(pub anyhow::Error);

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for GiveUp {}

/// Wraps an error so that returning it from a condition stops the wait at once.
pub fn give_up(error: impl Into<anyhow::Error>) -> anyhow::Error {
    GiveUp(error.into()).into()
}

fn is_give_up(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<GiveUp>())
}

/// Polls `condition` every [`POLL_INTERVAL`] until it returns `Ok(true)`, for at most `deadline`
/// (a check still running at the deadline is abandoned). `Ok(false)` and `Err(_)` both mean "not
/// yet"; an error wrapped with [`give_up`] ends the wait at once. On timeout the error names
/// `what`, the number of checks and the last error observed, so return errors that describe the
/// state seen (`bail!("epoch is {epoch}")`) rather than a bare `false` when the state matters.
pub async fn wait_until(
    deadline: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    poll(deadline, what, async || {
        Ok(if condition().await? { Some(()) } else { None })
    })
    .await
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok(value)`, for at most `deadline`,
/// and returns that value. Every `Err(_)` means "not yet" and is remembered as the last observed
/// state for the timeout error; an error wrapped with [`give_up`] ends the wait at once.
pub async fn wait_for<T>(
    deadline: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    poll(deadline, what, async || probe().await.map(Some)).await
}

async fn poll<T>(
    deadline: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut checks = 0u32;
    let mut last = String::from("no check finished");
    loop {
        let remaining = deadline.saturating_sub(start.elapsed());
        checks += 1;
        match tokio::time::timeout(remaining, probe()).await {
            Ok(Ok(Some(value))) => return Ok(value),
            Ok(Ok(None)) => last = String::from("the condition was false"),
            Ok(Err(error)) if is_give_up(&error) => {
                return Err(error.context(format!(
                    "gave up waiting for {what} after {:.1?}",
                    start.elapsed()
                )));
            }
            Ok(Err(error)) => last = format!("{error:#}"),
            Err(_) => last = format!("the last check was still running at the deadline ({last})"),
        }
        let remaining = deadline.saturating_sub(start.elapsed());
        if remaining.is_zero() {
            return Err(anyhow!(
                "timed out after {:.1?} waiting for {what} ({checks} checks); last observed: {last}",
                start.elapsed()
            ));
        }
        tokio::time::sleep(POLL_INTERVAL.min(remaining)).await;
    }
}

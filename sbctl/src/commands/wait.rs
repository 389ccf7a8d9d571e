//! The wait for the sidecars to serve an epoch, as the coordinator streams it
//! (`WaitForEpoch`), with a progress bar on a terminal.

use super::*;

/// Waits until every live sidecar serves `epoch` or later, showing a progress bar on stderr
/// (hidden, and silent, when stderr is not a terminal). Returns where the wait ended, and the
/// error if it did not converge. The coordinator watches the sidecars for us and streams what
/// it sees (`WaitForEpoch`): sbctl computes no convergence of its own and reads no status. A
/// coordinator that predates the stream is refused as older than this sbctl (exit.rs); a
/// stream cut short (a failover) is followed again after [`WAIT_RETRY`], until the deadline.
pub(super) async fn wait_for_epoch(
    coordinator: &mut Coordinator,
    namespace: &str,
    epoch: u64,
    timeout: Duration,
) -> (WaitReport, Result<(), CliError>) {
    let deadline = Instant::now() + timeout;
    let bar = epoch_bar(epoch);
    let mut report = WaitReport {
        epoch,
        converged: false,
        sidecars: 0,
        behind: Vec::new(),
    };
    let result = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match follow_epoch_wait(coordinator, namespace, epoch, remaining, &bar, &mut report).await {
            Ok(Some(last)) if last.converged => break Ok(()),
            Ok(Some(last)) => {
                let behind = last.behind.iter().map(|b| (b.id.as_str(), b.epoch));
                break Err(timed_out(namespace, epoch, timeout, behind));
            }
            // The stream ended without its last message: the coordinator went away.
            Ok(None) if Instant::now() < deadline => {}
            // The coordinator may be failing over; keep trying until the deadline.
            Err(e) if e.grpc_code() == Some(Code::Unavailable) && Instant::now() < deadline => {}
            Ok(None) => {
                break Err(CliError::Failed(format!(
                    "the coordinator ended the wait for the sidecars of {namespace} before \
                     they served epoch {epoch}"
                )));
            }
            Err(e) => break Err(e),
        }
        tokio::time::sleep(WAIT_RETRY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    };
    bar.finish_and_clear();
    (report, result)
}

/// Follows one `WaitForEpoch` stream into `report` and the bar: its last message, or `None` if
/// it ended before that.
pub(super) async fn follow_epoch_wait(
    coordinator: &mut Coordinator,
    namespace: &str,
    epoch: u64,
    timeout: Duration,
    bar: &ProgressBar,
    report: &mut WaitReport,
) -> Result<Option<EpochWaitProgress>, CliError> {
    let mut stream = coordinator
        .wait_for_epoch(namespace, epoch, timeout)
        .await?;
    while let Some(progress) = stream.next().await? {
        report.sidecars = usize::try_from(progress.sidecars).unwrap_or(usize::MAX);
        report.converged = progress.converged;
        bar.set_length(progress.sidecars);
        bar.set_position(progress.on_epoch);
        if progress.done {
            report.behind = progress.behind.iter().map(|b| b.id.clone()).collect();
            return Ok(Some(progress));
        }
    }
    Ok(None)
}

/// The error of a wait that ended with live sidecars (`(id, epoch)`) not on `epoch` yet.
pub(super) fn timed_out<'a>(
    namespace: &str,
    epoch: u64,
    timeout: Duration,
    behind: impl Iterator<Item = (&'a str, u64)>,
) -> CliError {
    let behind: Vec<String> = behind
        .map(|(id, epoch)| format!("{id} (epoch {epoch})"))
        .collect();
    CliError::Failed(format!(
        "timed out after {} waiting for the sidecars of {namespace} to serve epoch {epoch}; \
         not yet: {}",
        seconds(timeout),
        behind.join(", ")
    ))
}

/// A `k/n` bar of the sidecars on `epoch`, on stderr; hidden when stderr is not a terminal.
pub(super) fn epoch_bar(epoch: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("sidecars on epoch {prefix} {bar:40} {pos}/{len}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(epoch.to_string());
    bar
}

pub(super) fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}

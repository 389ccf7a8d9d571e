//! The judge policy: show it, and set only the settings given, merged into the current one.

use super::*;

/// `sbctl policy show NS`
pub async fn policy_show(ctx: &Context, namespace: &str) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply = coordinator.get_policy(namespace).await?;
    ctx.print(&reply, |policy| {
        output::render_policy(namespace, policy, None)
    })
}

/// `sbctl policy set NS [--max-error-rate F] [--min-requests N] [--window SECONDS] [--bake
/// SECONDS] [-m REASON]`: reads the current policy, changes only the settings given, and
/// stores the result.
pub async fn policy_set(
    ctx: &Context,
    namespace: &str,
    settings: &PolicySettings,
    reason: &str,
) -> Result<(), CliError> {
    check_policy_settings(settings)?;
    let mut coordinator = ctx.coordinator().await?;
    let current = coordinator.get_policy(namespace).await?.document;
    let policy = merge_policy(&current, settings)?;
    let reply = coordinator
        .set_policy(namespace, &current, &policy, reason)
        .await?;
    ctx.print(&reply, |stored| {
        output::render_policy(namespace, stored, Some(&current))
    })
}

/// The settings given on the command line, applied to `base`.
pub(super) fn apply_settings(base: &Policy, settings: &PolicySettings) -> Policy {
    Policy {
        max_error_rate: settings.max_error_rate.unwrap_or(base.max_error_rate),
        min_requests: settings.min_requests.unwrap_or(base.min_requests),
        window_seconds: settings.window_seconds.unwrap_or(base.window_seconds),
        bake_seconds: settings.bake_seconds.unwrap_or(base.bake_seconds),
        require_approval: settings.require_approval.unwrap_or(base.require_approval),
        destructive_requires_approval: settings
            .destructive_requires_approval
            .unwrap_or(base.destructive_requires_approval),
        preview_reads: settings.preview_reads.unwrap_or(base.preview_reads),
        gates: base.gates.clone(),
    }
}

/// `base` with the one setting of `flag` taken from `from`.
pub(super) fn with_setting(base: &Policy, from: &Policy, flag: &str) -> Policy {
    let mut policy = base.clone();
    match flag {
        "--max-error-rate" => policy.max_error_rate = from.max_error_rate,
        "--min-requests" => policy.min_requests = from.min_requests,
        "--window" => policy.window_seconds = from.window_seconds,
        "--require-approval" => policy.require_approval = from.require_approval,
        "--destructive-requires-approval" => {
            policy.destructive_requires_approval = from.destructive_requires_approval
        }
        "--preview-reads" => policy.preview_reads = from.preview_reads,
        _ => policy.bake_seconds = from.bake_seconds,
    }
    policy
}

/// The flags of the settings given.
pub(super) fn given_flags(settings: &PolicySettings) -> Vec<&'static str> {
    let given = [
        settings.max_error_rate.is_some(),
        settings.min_requests.is_some(),
        settings.window_seconds.is_some(),
        settings.bake_seconds.is_some(),
        settings.require_approval.is_some(),
        settings.destructive_requires_approval.is_some(),
        settings.preview_reads.is_some(),
    ];
    POLICY_FLAGS
        .iter()
        .zip(given)
        .filter(|(_, given)| *given)
        .map(|(flag, _)| *flag)
        .collect()
}

/// Checks the command line of `policy set` before anything is asked: at least one setting,
/// and each value valid (`Policy::validate`). Either failure is a usage error naming the flag.
pub fn check_policy_settings(settings: &PolicySettings) -> Result<(), CliError> {
    let given = given_flags(settings);
    if given.is_empty() {
        return Err(CliError::Usage(format!(
            "policy set needs at least one setting to change: {}",
            POLICY_FLAGS.join(", ")
        )));
    }
    let defaults = Policy::default();
    let wanted = apply_settings(&defaults, settings);
    for flag in given {
        // Each setting alone among the defaults, so that the error belongs to this flag.
        if let Err(problem) = with_setting(&defaults, &wanted, flag).validate() {
            let hint = match settings.max_error_rate {
                Some(r) if flag == "--max-error-rate" && r > 1.0 && r <= 100.0 => {
                    format!(" (for a percentage, write {r}%)")
                }
                _ => String::new(),
            };
            return Err(CliError::Usage(format!("{flag}: {problem}{hint}")));
        }
    }
    Ok(())
}

/// The current policy with the settings given changed, checked whole. A setting that was
/// not given and is out of range in the stored policy is the coordinator's fault, named
/// with the flag that replaces it.
pub fn merge_policy(current: &Policy, settings: &PolicySettings) -> Result<Policy, CliError> {
    check_policy_settings(settings)?;
    let merged = apply_settings(current, settings);
    if let Err(problem) = merged.validate() {
        let defaults = Policy::default();
        let flag = POLICY_FLAGS
            .iter()
            .find(|flag| with_setting(&defaults, &merged, flag).validate().is_err());
        let fix = match flag {
            Some(flag) => format!("; give {flag} as well to replace it"),
            None => String::new(),
        };
        return Err(CliError::BadReply {
            rpc: "GetPolicy",
            problem: format!("the current policy is not valid: {problem}{fix}"),
        });
    }
    Ok(merged)
}

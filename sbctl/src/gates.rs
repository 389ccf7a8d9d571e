//! Gates from the command line: `sbctl gate set|remove|list|check`, and `--wait-for-gates`,
//! which holds a canary, flip or rollout while a gate blocks it and makes it as soon as the
//! gates pass.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use switchboard_proto::pb::CheckGatesRequest;
use switchboard_proto::{Gate, GateCheck, GateOp, Policy};

use crate::client::{Coordinator, Reply};
use crate::commands::Context;
use crate::exit::CliError;
use crate::output;

/// How soon `--wait-for-gates` first asks again while a gate blocks; each wait is half as long
/// again, up to [`GATE_POLL_MAX`], so that a long wait does not run slow HTTP gates in a tight
/// loop and a change still follows its gates within a second.
pub const GATE_POLL: Duration = Duration::from_millis(100);
pub const GATE_POLL_MAX: Duration = Duration::from_millis(500);

/// One attempt at a gated change.
pub type Attempt<'a, T> = Pin<Box<dyn Future<Output = Result<T, CliError>> + Send + 'a>>;

/// Makes a change; with `wait`, while a gate refuses it, says which on stderr and tries again
/// (after [`GATE_POLL`], backing off to [`GATE_POLL_MAX`]) until the gates pass or `wait` is
/// over. The coordinator checks the
/// gates inside the change's own transaction, so the change happens only when they hold.
pub async fn gated<R: Clone, T>(
    coordinator: &mut Coordinator,
    request: R,
    wait: Option<Duration>,
    call: for<'a> fn(&'a mut Coordinator, R) -> Attempt<'a, T>,
) -> Result<T, CliError> {
    let Some(wait) = wait else {
        return call(coordinator, request).await;
    };
    let deadline = Instant::now() + wait;
    let mut shown = String::new();
    let mut pause = GATE_POLL;
    loop {
        match call(coordinator, request.clone()).await {
            Err(error) if error.is_gate_refusal() => {
                let message = error.to_string();
                if Instant::now() >= deadline {
                    return Err(CliError::Refused(format!(
                        "still blocked after waiting {}s for the gates: {message}",
                        wait.as_secs_f64()
                    )));
                }
                if message != shown {
                    output::note(&format!("waiting for gates: {message}"));
                    shown = message;
                }
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                pause = (pause * 3 / 2).min(GATE_POLL_MAX);
            }
            other => return other,
        }
    }
}

/// What `sbctl gate set` was given, before it becomes a [`Gate`].
#[derive(Clone, Debug, Default)]
pub struct GateSpec {
    pub name: String,
    pub item: Option<String>,
    pub etcd_key: Option<String>,
    pub http: Option<String>,
    pub pointer: String,
    pub op: Option<GateOp>,
    pub value: Option<serde_json::Value>,
}

impl GateSpec {
    /// The gate, or a usage error naming the flag that is missing or out of place.
    pub fn to_gate(&self) -> Result<Gate, CliError> {
        let usage = |m: &str| Err(CliError::Usage(m.to_string()));
        let compared = |kind: &str| match (self.op, &self.value) {
            (Some(op), Some(value)) => Ok((op, value.clone())),
            _ => Err(CliError::Usage(format!(
                "a gate on {kind} needs --op and --value"
            ))),
        };
        let check = match (&self.item, &self.etcd_key, &self.http) {
            (Some(key), None, None) => {
                let (op, value) = compared("an item")?;
                GateCheck::Item {
                    key: key.clone(),
                    pointer: self.pointer.clone(),
                    op,
                    value,
                }
            }
            (None, Some(key), None) => {
                let (op, value) = compared("an etcd key")?;
                GateCheck::Etcd {
                    key: key.clone(),
                    pointer: self.pointer.clone(),
                    op,
                    value,
                }
            }
            (None, None, Some(url)) => {
                if self.op.is_some() != self.value.is_some() {
                    return usage("--op and --value go together");
                }
                GateCheck::Http {
                    url: url.clone(),
                    pointer: self.pointer.clone(),
                    op: self.op,
                    value: self.value.clone().unwrap_or_default(),
                }
            }
            _ => return usage("give exactly one of --item, --etcd-key or --http"),
        };
        let gate = Gate {
            name: self.name.clone(),
            check,
        };
        // The prefix check is the coordinator's; here only the shape is checked.
        gate.validate("").map_err(CliError::Usage)?;
        Ok(gate)
    }
}

/// `sbctl gate set NS NAME ...`: adds the gate, or replaces the one of the same name.
pub async fn set(
    ctx: &Context,
    namespace: &str,
    spec: &GateSpec,
    reason: &str,
) -> Result<(), CliError> {
    let gate = spec.to_gate()?;
    change_gates(ctx, namespace, reason, |gates| {
        match gates.iter_mut().find(|g| g.name == gate.name) {
            Some(existing) => *existing = gate.clone(),
            None => gates.push(gate.clone()),
        }
        Ok(())
    })
    .await
}

/// `sbctl gate remove NS NAME`
pub async fn remove(
    ctx: &Context,
    namespace: &str,
    name: &str,
    reason: &str,
) -> Result<(), CliError> {
    change_gates(ctx, namespace, reason, |gates| {
        let before = gates.len();
        gates.retain(|g| g.name != name);
        if gates.len() == before {
            return Err(CliError::Refused(format!(
                "{namespace} has no gate named {name}"
            )));
        }
        Ok(())
    })
    .await
}

/// `sbctl gate list NS`
pub async fn list(ctx: &Context, namespace: &str) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let policy = coordinator.get_policy(namespace).await?.document;
    if ctx.json {
        return output::print_json(&policy.gates);
    }
    output::print_text(&output::render_gates(namespace, &policy.gates))
}

/// `sbctl gate check NS [--version V]`: exits 4 when a gate blocks.
pub async fn check(ctx: &Context, namespace: &str, version: Option<&str>) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let reply: Reply<_> = coordinator
        .check_gates(CheckGatesRequest {
            namespace: namespace.to_string(),
            version: version.unwrap_or_default().to_string(),
        })
        .await?;
    ctx.print(&reply, output::render_gate_report)?;
    if reply.document.passed {
        Ok(())
    } else {
        Err(CliError::Refused(format!(
            "version {} of {namespace} is blocked: {}",
            reply.document.version,
            switchboard_proto::gate::blocking(&reply.document.gates)
        )))
    }
}

/// Reads the policy, changes its gates with `edit`, and stores it.
async fn change_gates(
    ctx: &Context,
    namespace: &str,
    reason: &str,
    edit: impl FnOnce(&mut Vec<Gate>) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let mut coordinator = ctx.coordinator().await?;
    let current = coordinator.get_policy(namespace).await?.document;
    let mut gates = current.gates.clone();
    edit(&mut gates)?;
    let policy = Policy {
        gates,
        ..current.clone()
    };
    let reply = coordinator
        .set_policy(namespace, &current, &policy, reason)
        .await?;
    if ctx.json {
        return output::print_json(&reply.document.gates);
    }
    output::print_text(&output::render_gates(namespace, &reply.document.gates))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> GateSpec {
        GateSpec {
            name: "migration".into(),
            ..GateSpec::default()
        }
    }

    #[test]
    fn each_kind_becomes_its_gate() {
        let etcd = GateSpec {
            etcd_key: Some("/app/migration".into()),
            op: Some(GateOp::Eq),
            value: Some(json!("done")),
            ..spec()
        }
        .to_gate()
        .expect("etcd gate");
        assert_eq!(etcd.target(), "etcd key /app/migration");
        let http = GateSpec {
            http: Some("http://127.0.0.1:1/ready".into()),
            ..spec()
        }
        .to_gate()
        .expect("http gate");
        assert_eq!(http.wanted(), "a 2xx answer");
        let item = GateSpec {
            item: Some("schema/version".into()),
            pointer: "/version".into(),
            op: Some(GateOp::Ge),
            value: Some(json!(192)),
            ..spec()
        }
        .to_gate()
        .expect("item gate");
        assert_eq!(item.wanted(), ">= 192");
    }

    #[test]
    fn missing_or_stray_flags_are_usage_errors() {
        let no_op = GateSpec {
            etcd_key: Some("/a".into()),
            ..spec()
        }
        .to_gate()
        .expect_err("needs --op");
        assert_eq!(no_op.exit_code(), crate::exit::USAGE);
        let both = GateSpec {
            etcd_key: Some("/a".into()),
            item: Some("a".into()),
            op: Some(GateOp::Eq),
            value: Some(json!(1)),
            ..spec()
        }
        .to_gate()
        .expect_err("two kinds");
        assert!(both.to_string().contains("exactly one"), "{both}");
        let half = GateSpec {
            http: Some("http://x".into()),
            op: Some(GateOp::Eq),
            ..spec()
        }
        .to_gate()
        .expect_err("op without value");
        assert!(half.to_string().contains("together"), "{half}");
    }
}

//! The one place that decides sbctl's exit codes: every error a command can meet becomes a
//! [`CliError`], and [`CliError::exit_code`] maps it to the contract's codes.
//!
//! 0 done; 1 failed; 2 usage error; 3 conflict (routing changed underneath: read status and
//! retry); 4 refused by validation, a gate or policy; 5 not permitted. A request over the
//! caller's rate limit failed (1): it is worth retrying after the time the coordinator names.

use tonic::Code;

use crate::source::SourceError;

/// The command did what it was asked.
pub const OK: u8 = 0;
/// It failed: the coordinator is unreachable, a reply made no sense, a wait timed out.
pub const FAILED: u8 = 1;
/// The command line is wrong (clap exits with this code too).
pub const USAGE: u8 = 2;
/// Routing changed underneath: read status and retry.
pub const CONFLICT: u8 = 3;
/// Refused by validation, a gate or policy.
pub const REFUSED: u8 = 4;
/// Not permitted: authentication or role.
pub const NOT_PERMITTED: u8 = 5;

/// The gRPC metadata by which the coordinator marks a refusal by a gate.
pub const GATE_REFUSAL_METADATA: &str = "x-switchboard-refusal";
/// The gRPC metadata of a rate-limited answer: whole seconds until a retry may pass. etcd's
/// full quota is `ResourceExhausted` too, but without it.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line cannot be carried out as given.
    #[error("{0}")]
    Usage(String),
    /// Refused by validation before anything was asked of the coordinator.
    #[error("{0}")]
    Refused(String),
    /// The local set could not be read or is invalid.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The coordinator answered an RPC with an error status.
    #[error("{}", rpc_message(.rpc, .status, .coordinator))]
    Rpc {
        rpc: &'static str,
        coordinator: String,
        status: tonic::Status,
    },
    /// No connection to the coordinator could be made.
    #[error("cannot reach the coordinator at {coordinator}: {reason}")]
    Unreachable { coordinator: String, reason: String },
    /// The coordinator's reply to an RPC does not make sense.
    #[error("the coordinator's reply to {rpc} is not valid: {problem}")]
    BadReply { rpc: &'static str, problem: String },
    /// Anything else that failed (a wait that timed out, a broken audit chain, an I/O error).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => USAGE,
            CliError::Source(e) if e.is_usage() => USAGE,
            CliError::Source(_) | CliError::Refused(_) => REFUSED,
            CliError::Rpc { status, .. } if retry_after(status).is_some() => FAILED,
            CliError::Rpc { status, .. } => exit_code_for_grpc(status.code()),
            CliError::Unreachable { .. } | CliError::BadReply { .. } | CliError::Failed(_) => {
                FAILED
            }
        }
    }

    /// Wraps an error status of the RPC `rpc`.
    pub fn rpc(rpc: &'static str, coordinator: &str, status: tonic::Status) -> Self {
        CliError::Rpc {
            rpc,
            coordinator: coordinator.to_string(),
            status,
        }
    }

    /// Whether the coordinator refused the change because a gate does not hold (the status
    /// carries `x-switchboard-refusal: gate`), which `--wait-for-gates` waits out.
    pub fn is_gate_refusal(&self) -> bool {
        match self {
            CliError::Rpc { status, .. } => status
                .metadata()
                .get(GATE_REFUSAL_METADATA)
                .is_some_and(|v| v.as_bytes() == b"gate"),
            _ => false,
        }
    }

    /// Whole seconds to wait, when the coordinator refused the request for the caller's rate
    /// limit.
    pub fn rate_limited_for(&self) -> Option<u64> {
        match self {
            CliError::Rpc { status, .. } => retry_after(status),
            _ => None,
        }
    }

    /// The gRPC code, when the coordinator answered with an error status.
    pub fn grpc_code(&self) -> Option<Code> {
        match self {
            CliError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// The exit code for a gRPC status code.
pub fn exit_code_for_grpc(code: Code) -> u8 {
    match code {
        Code::Ok => OK,
        Code::Aborted => CONFLICT,
        Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::ResourceExhausted
        | Code::OutOfRange => REFUSED,
        Code::PermissionDenied | Code::Unauthenticated => NOT_PERMITTED,
        _ => FAILED,
    }
}

/// The seconds of a rate-limited answer's retry-after metadata.
fn retry_after(status: &tonic::Status) -> Option<u64> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    status
        .metadata()
        .get(RETRY_AFTER_METADATA)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The HTTP status of an answer that was HTTP but not gRPC, as tonic words it; `None` for any
/// other message.
fn http_not_grpc(message: &str) -> Option<&str> {
    if let Some((_, code)) = message.split_once("mapped from HTTP status code ") {
        return Some(code.trim());
    }
    let (_, status) = message.split_once("while receiving response with status: ")?;
    (!status.starts_with("200")).then(|| status.trim())
}

/// The coordinator's status message is already a full sentence; print it as is. Transport
/// failures get a sentence naming the coordinator.
fn rpc_message(rpc: &str, status: &tonic::Status, coordinator: &str) -> String {
    let message = status.message().trim();
    if let Some(seconds) = retry_after(status) {
        return format!(
            "rate limited; retry after {seconds} s (the coordinator at {coordinator}: {message})"
        );
    }
    match status.code() {
        Code::Unavailable if message.starts_with("the coordinator ") => message.to_string(),
        Code::Unavailable => {
            let reason = if message.is_empty() {
                "unavailable"
            } else {
                message
            };
            format!("cannot reach the coordinator at {coordinator}: {reason}")
        }
        // A server that answers HTTP but not gRPC (the coordinator's JSON API, a sidecar, a
        // proxy) makes tonic report the HTTP status, or its failure to read the HTTP body as
        // a gRPC message, as a gRPC error.
        _ if http_not_grpc(message).is_some() => {
            let http = http_not_grpc(message)
                .filter(|code| !code.is_empty())
                .map(|code| format!(" (it answered HTTP {code})"))
                .unwrap_or_default();
            format!(
                "{coordinator} answers HTTP but is not the coordinator's gRPC API{http}: is it \
                 the coordinator's HTTP port? sbctl talks to the address of its --listen flag \
                 (default 127.0.0.1:7100)"
            )
        }
        // An older coordinator answers RPCs it does not know with Unimplemented.
        Code::Unimplemented => {
            let detail = if message.is_empty() {
                String::new()
            } else {
                format!(" ({message})")
            };
            format!(
                "the coordinator at {coordinator} does not implement {rpc}{detail}: it is older \
                 than this sbctl"
            )
        }
        Code::DeadlineExceeded if message.is_empty() => {
            format!("the coordinator at {coordinator} did not answer {rpc} in time")
        }
        code if message.is_empty() => format!("{rpc} failed: {code}"),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_port_is_named_as_such() {
        let status = tonic::Status::unimplemented(
            "grpc-status header missing, mapped from HTTP status code 404",
        );
        let message = rpc_message("Status", &status, "http://127.0.0.1:7101");
        assert_eq!(
            message,
            "http://127.0.0.1:7101 answers HTTP but is not the coordinator's gRPC API (it answered \
             HTTP 404): is it the coordinator's HTTP port? sbctl talks to the address of its \
             --listen flag (default 127.0.0.1:7100)"
        );
        assert!(!message.contains("older"));
        let status = tonic::Status::internal(
            "protocol error: received message with invalid compression flag: 123 (valid flags are 0 and 1) while receiving response with status: 404 Not Found",
        );
        let message = rpc_message("Status", &status, "http://127.0.0.1:7101");
        assert!(
            message
                .contains("(it answered HTTP 404 Not Found): is it the coordinator's HTTP port?"),
            "{message}"
        );
    }

    #[test]
    fn grpc_codes_map_to_the_contract() {
        let cases = [
            (Code::Ok, 0),
            (Code::Aborted, 3),
            (Code::FailedPrecondition, 4),
            (Code::InvalidArgument, 4),
            (Code::ResourceExhausted, 4),
            (Code::OutOfRange, 4),
            (Code::PermissionDenied, 5),
            (Code::Unauthenticated, 5),
            (Code::Unavailable, 1),
            (Code::NotFound, 1),
            (Code::AlreadyExists, 1),
            (Code::Internal, 1),
            (Code::Unknown, 1),
            (Code::Cancelled, 1),
            (Code::DeadlineExceeded, 1),
            (Code::Unimplemented, 1),
            (Code::DataLoss, 1),
        ];
        for (code, expected) in cases {
            assert_eq!(exit_code_for_grpc(code), expected, "{code:?}");
            let err = CliError::rpc("Flip", "http://c:7100", tonic::Status::new(code, "x"));
            if code != Code::Ok {
                assert_eq!(err.exit_code(), expected, "{code:?}");
            }
        }
    }

    #[test]
    fn the_policy_and_rollout_rpcs_map_like_the_others() {
        let cases = [
            // A rollout already running, no sealed version staged, a policy out of range.
            (Code::FailedPrecondition, REFUSED),
            (Code::InvalidArgument, REFUSED),
            // Routing changed between the status read and the start.
            (Code::Aborted, CONFLICT),
            (Code::PermissionDenied, NOT_PERMITTED),
            (Code::NotFound, FAILED),
            (Code::Unavailable, FAILED),
        ];
        for rpc in ["GetPolicy", "SetPolicy", "Rollout"] {
            for (code, expected) in cases {
                let err = CliError::rpc(rpc, "http://c:7100", tonic::Status::new(code, "why"));
                assert_eq!(err.exit_code(), expected, "{rpc} {code:?}");
            }
        }
    }

    #[test]
    fn a_rate_limit_says_when_to_retry_and_fails() {
        let mut status = tonic::Status::resource_exhausted(
            "rate limited: user alice sent more than 5 requests a second (bursts of 10); retry after 3 s",
        );
        status
            .metadata_mut()
            .insert(RETRY_AFTER_METADATA, "3".parse().expect("metadata"));
        let err = CliError::rpc("Status", "http://c:7100", status);
        assert_eq!(err.exit_code(), FAILED);
        assert_eq!(err.rate_limited_for(), Some(3));
        let message = err.to_string();
        assert!(
            message
                .starts_with("rate limited; retry after 3 s (the coordinator at http://c:7100: "),
            "{message}"
        );
        // etcd's full quota is ResourceExhausted without the metadata: still a refusal.
        let full = CliError::rpc(
            "BeginStage",
            "http://c:7100",
            tonic::Status::resource_exhausted("etcd: database space exceeded"),
        );
        assert_eq!(full.exit_code(), REFUSED);
        assert_eq!(full.rate_limited_for(), None);
        assert_eq!(full.to_string(), "etcd: database space exceeded");
    }

    #[test]
    fn an_older_coordinator_is_named_as_such() {
        let err = CliError::rpc("Rollout", "http://c:7100", tonic::Status::unimplemented(""));
        assert_eq!(
            err.to_string(),
            "the coordinator at http://c:7100 does not implement Rollout: it is older than this \
             sbctl"
        );
        assert_eq!(err.exit_code(), FAILED);
    }

    #[test]
    fn coordinator_messages_are_printed_as_is() {
        let status = tonic::Status::aborted("Routing changed: epoch is 8, not 7.");
        let err = CliError::rpc("Flip", "http://c:7100", status);
        assert_eq!(err.to_string(), "Routing changed: epoch is 8, not 7.");
        assert_eq!(err.exit_code(), CONFLICT);
    }

    #[test]
    fn unavailable_names_the_coordinator() {
        let status = tonic::Status::unavailable("tcp connect error");
        let err = CliError::rpc("Status", "http://127.0.0.1:9", status);
        assert_eq!(
            err.to_string(),
            "cannot reach the coordinator at http://127.0.0.1:9: tcp connect error"
        );
        assert_eq!(err.exit_code(), FAILED);
    }

    #[test]
    fn local_errors_have_their_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), USAGE);
        assert_eq!(CliError::Failed("x".into()).exit_code(), FAILED);
        assert_eq!(CliError::Refused("x".into()).exit_code(), REFUSED);
        let bad = CliError::BadReply {
            rpc: "Status",
            problem: "x".into(),
        };
        assert_eq!(bad.exit_code(), FAILED);
        let unreachable = CliError::Unreachable {
            coordinator: "u".into(),
            reason: "r".into(),
        };
        assert_eq!(unreachable.exit_code(), FAILED);
        let missing = SourceError::NotFound {
            path: "/nope".into(),
        };
        assert_eq!(CliError::from(missing).exit_code(), USAGE);
        let invalid = SourceError::Invalid {
            path: "/x".into(),
            problems: vec![],
        };
        assert_eq!(CliError::from(invalid).exit_code(), REFUSED);
    }
}

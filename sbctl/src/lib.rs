//! sbctl: the release manager's command line for Switchboard. It talks to the coordinator's
//! admin gRPC API only, never to etcd.
//!
//! `main.rs` calls [`main`]; everything else is here so that it can be tested: [`cli`] is the
//! command line, [`source`] reads a release from disk, [`plan`] diffs it against the active
//! set, [`client`] talks to the coordinator, [`commands`] carries out each command, [`output`]
//! prints, and [`exit`] decides every exit code. Before a plan or a stage, [`pipeline`] reads
//! `switchboard.yaml`, substitutes `--env` ([`env`]), validates against the schemas
//! ([`validate`]), and classifies every change ([`compat`]). [`gates`] edits gates and waits
//! for them, [`versions`] approves, lists history and diffs, [`snapshot`] saves and restores
//! whole sets.

pub mod cli;
pub mod client;
pub mod commands;
/// The change classes, from the contract crate the coordinator enforces them with.
pub use switchboard_contract::compat;
pub mod env;
pub mod escape;
pub mod exit;
pub mod gates;
pub mod output;
pub mod pipeline;
/// The plan diff, from the contract crate the coordinator enforces it with.
pub use switchboard_contract::diff as plan;
pub mod snapshot;
pub mod source;
pub mod token;
pub mod validate;
pub mod versions;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

pub use cli::{
    Cli, Command, ContractCommand, GateCommand, PolicyCommand, RolloutAction, SnapshotCommand,
    TokenCommand,
};
pub use exit::CliError;

/// Parses the command line, runs the command and returns its exit code. Usage errors are
/// reported by clap (exit 2); every other error is printed as `error: <message>` on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(run_to_exit_code(cli))
}

/// Runs a parsed command line on a fresh runtime, prints the error if any, and returns the
/// exit code.
pub fn run_to_exit_code(cli: Cli) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            output::note(&format!("error: cannot start the async runtime: {e}"));
            return exit::FAILED;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => exit::OK,
        Err(e) => {
            output::note(&format!("error: {e}"));
            e.exit_code()
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let ctx = commands::Context {
        connect: client::ConnectOptions {
            coordinator: cli.coordinator,
            token: cli.token,
            actor: client::actor_name(cli.actor.as_deref()),
            tls: (cli.tls_ca.is_some() || cli.tls_cert.is_some() || cli.tls_key.is_some()).then(
                || client::ClientTls {
                    ca: cli.tls_ca.clone(),
                    cert: cli.tls_cert.clone(),
                    key: cli.tls_key.clone(),
                },
            ),
        },
        json: cli.json,
    };
    if let Some(namespace) = cli.command.namespace() {
        switchboard_proto::keys::validate_namespace(namespace).map_err(CliError::Refused)?;
    }
    match cli.command {
        Command::Status { namespace } => commands::status(&ctx, &namespace).await,
        Command::Stage {
            namespace,
            path,
            message,
            env,
            allow_destructive,
        } => {
            let source = commands::SourceOptions {
                env,
                allow_destructive,
            };
            commands::stage(&ctx, &namespace, &path, &message, &source).await
        }
        Command::Plan {
            namespace,
            path,
            env,
        } => {
            let source = commands::SourceOptions {
                env,
                allow_destructive: false,
            };
            commands::plan(&ctx, &namespace, &path, &source).await
        }
        Command::Canary {
            namespace,
            weight_bp,
            wait,
            change,
        } => {
            let wait = wait.then_some(change.timeout);
            commands::canary(&ctx, &namespace, weight_bp, wait, &change).await
        }
        Command::Flip {
            namespace,
            sync: true,
            sync_lead,
            sync_timeout,
            change,
            ..
        } => {
            let options = commands::SyncOptions {
                lead_ms: sync_lead.unwrap_or(0),
                ack_timeout: sync_timeout.unwrap_or(Duration::ZERO),
            };
            commands::sync_flip(&ctx, &namespace, &options, &change).await
        }
        Command::Flip {
            namespace,
            wait,
            change,
            ..
        } => commands::flip(&ctx, &namespace, wait.then_some(change.timeout), &change).await,
        Command::Rollback {
            namespace,
            to_version,
            change,
        } => commands::rollback(&ctx, &namespace, to_version.as_deref(), &change).await,
        Command::Approve {
            namespace,
            version,
            why,
        } => versions::approve(&ctx, &namespace, &version, &why.reason).await,
        Command::History { namespace } => versions::history(&ctx, &namespace).await,
        Command::Diff {
            namespace,
            path,
            env,
        } => {
            let source = commands::SourceOptions {
                env,
                allow_destructive: false,
            };
            versions::diff(&ctx, &namespace, &path, &source).await
        }
        Command::Gate { command } => match command {
            GateCommand::Set {
                namespace,
                name,
                item,
                etcd_key,
                http,
                pointer,
                op,
                value,
                why,
            } => {
                let spec = gates::GateSpec {
                    name,
                    item,
                    etcd_key,
                    http,
                    pointer,
                    op,
                    value,
                };
                gates::set(&ctx, &namespace, &spec, &why.reason).await
            }
            GateCommand::Remove {
                namespace,
                name,
                why,
            } => gates::remove(&ctx, &namespace, &name, &why.reason).await,
            GateCommand::List { namespace } => gates::list(&ctx, &namespace).await,
            GateCommand::Check { namespace, version } => {
                gates::check(&ctx, &namespace, version.as_deref()).await
            }
        },
        Command::Snapshot { command } => match command {
            SnapshotCommand::Save {
                namespace,
                file,
                version,
            } => snapshot::save(&ctx, &namespace, &file, version.as_deref()).await,
            SnapshotCommand::Restore {
                namespace,
                file,
                message,
            } => snapshot::restore(&ctx, &namespace, &file, &message).await,
        },
        Command::Audit { namespace, verify } => commands::audit(&ctx, &namespace, verify).await,
        Command::Token {
            command: TokenCommand::New { name, roles },
        } => token::new(&name, &roles, ctx.json),
        Command::Contract {
            command: ContractCommand::Show { namespace },
        } => commands::contract_show(&ctx, &namespace).await,
        Command::Contract {
            command:
                ContractCommand::Set {
                    namespace,
                    dir,
                    why,
                },
        } => commands::contract_set(&ctx, &namespace, &dir, &why.reason).await,
        Command::Contract {
            command:
                ContractCommand::Approve {
                    namespace,
                    hash,
                    why,
                },
        } => commands::contract_approve(&ctx, &namespace, &hash, &why.reason).await,
        Command::Policy {
            command: PolicyCommand::Show { namespace },
        } => commands::policy_show(&ctx, &namespace).await,
        Command::Policy {
            command:
                PolicyCommand::Set {
                    namespace,
                    settings,
                    why,
                },
        } => commands::policy_set(&ctx, &namespace, &settings, &why.reason).await,
        Command::Rollout {
            namespace,
            steps,
            interval,
            pause,
            resume,
            abort,
            why,
            expect_epoch,
            expect_version,
            wait_for_gates,
            timeout,
        } => {
            let action = RolloutAction::from_flags(steps, interval, pause, resume, abort)
                .map_err(CliError::Usage)?;
            let change = cli::ChangeArgs {
                why,
                expect_epoch,
                expect_version,
                wait_for_gates,
                timeout,
            };
            commands::rollout(&ctx, &namespace, &action, &change).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut all = vec!["sbctl", "--coordinator", "http://127.0.0.1:1"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parses")
    }

    // Each of these fails before anything is sent: no coordinator is needed.

    #[tokio::test]
    async fn a_namespace_outside_the_contract_is_refused() {
        let err = run(parse(&["status", "Bad/NS"]))
            .await
            .expect_err("refused");
        assert_eq!(err.exit_code(), exit::REFUSED);
        assert!(err.to_string().contains("namespace"), "{err}");
    }

    #[tokio::test]
    async fn policy_set_checks_its_settings_first() {
        let err = run(parse(&["policy", "set", "cat"]))
            .await
            .expect_err("no setting");
        assert_eq!(err.exit_code(), exit::USAGE, "{err}");
        let err = run(parse(&["policy", "set", "cat", "--bake", "999999999"]))
            .await
            .expect_err("bake too long");
        assert_eq!(err.exit_code(), exit::USAGE, "{err}");
        assert!(err.to_string().starts_with("--bake: "), "{err}");
        let err = run(parse(&["policy", "show", "Bad/NS"]))
            .await
            .expect_err("namespace");
        assert_eq!(err.exit_code(), exit::REFUSED, "{err}");
    }

    #[tokio::test]
    async fn stage_and_plan_check_the_source_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing").display().to_string();
        std::fs::write(dir.path().join("broken.json"), "{").expect("write");
        let broken = dir.path().display().to_string();
        for command in ["stage", "plan"] {
            let err = run(parse(&[command, "cat", &missing]))
                .await
                .expect_err("missing");
            assert_eq!(err.exit_code(), exit::USAGE, "{err}");
            let err = run(parse(&[command, "cat", &broken]))
                .await
                .expect_err("broken");
            assert_eq!(err.exit_code(), exit::REFUSED, "{err}");
            assert!(err.to_string().contains("broken.json"), "{err}");
        }
    }
}

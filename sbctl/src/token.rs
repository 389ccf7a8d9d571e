//! `sbctl token new NAME [--role ROLE ...]`: a fresh bearer token for a user of the
//! coordinator's `--auth` file, and the line to add to that file. The file holds only the
//! token's SHA-256 (lowercase hex of the SHA-256 of the token's text), so the token is shown
//! once, here, and nowhere else. Nothing is sent anywhere.

use clap::ValueEnum;
use serde::Serialize;
use switchboard_proto::set::sha256_hex;

use crate::exit::CliError;
use crate::output;

/// Random bytes in a token: 256 bits.
pub const TOKEN_BYTES: usize = 32;

/// The roles of the coordinator's permission table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: status, plan, audit, policy.
    Viewer,
    /// A viewer who also stages, sets canaries, flips, rolls back and runs rollouts.
    Operator,
    /// A viewer who also approves releases.
    Approver,
    /// Everything, including the judge's policy.
    Admin,
    /// A sidecar, which streams its applications' outcomes to the judge and does nothing else.
    Reporter,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Reporter => "reporter",
        }
    }
}

/// Checks a user name as the coordinator does (`keys::validate_user_name`). A clap value
/// parser, so a bad name is a usage error (exit 2).
pub fn parse_user_name(name: &str) -> Result<String, String> {
    switchboard_proto::keys::validate_user_name(name)?;
    Ok(name.to_string())
}

/// A new token and the auth-file line that admits it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewToken {
    pub name: String,
    pub roles: Vec<Role>,
    pub token: String,
    pub token_sha256: String,
    /// The line to add under `users:` in the `--auth` file.
    pub line: String,
}

impl NewToken {
    /// The token's document for `name` with `roles` (operator when none), from its random bytes.
    pub fn from_bytes(name: &str, roles: &[Role], bytes: &[u8; TOKEN_BYTES]) -> Self {
        let mut roles = roles.to_vec();
        if roles.is_empty() {
            roles.push(Role::Operator);
        }
        roles.sort();
        roles.dedup();
        let token = hex::encode(bytes);
        let token_sha256 = sha256_hex(token.as_bytes());
        let role_list: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        // The name is quoted: `@` cannot begin a plain YAML scalar, and "123" or "true" would
        // not be strings unquoted. The checked name needs no escapes.
        let line = format!(
            "- {{name: \"{name}\", roles: [{}], token_sha256: \"{token_sha256}\"}}",
            role_list.join(", ")
        );
        NewToken {
            name: name.to_string(),
            roles,
            token,
            token_sha256,
            line,
        }
    }
}

/// 32 bytes from the operating system's random source.
fn random_bytes() -> Result<[u8; TOKEN_BYTES], CliError> {
    use rand::TryRngCore;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| CliError::Failed(format!("cannot read the system's random source: {e}")))?;
    Ok(bytes)
}

/// `sbctl token new`: prints the token and its line; the note on stderr says it is shown once.
pub fn new(name: &str, roles: &[Role], json: bool) -> Result<(), CliError> {
    let name = parse_user_name(name).map_err(CliError::Usage)?;
    let token = NewToken::from_bytes(&name, roles, &random_bytes()?);
    output::note(&format!(
        "The token of {name} is shown once, here: hand it over privately (sbctl reads it from \
         --token or SWITCHBOARD_TOKEN). The coordinator's --auth file keeps only its SHA-256: \
         add the line under `users:` and restart the coordinator."
    ));
    if json {
        return output::print_json(&token);
    }
    output::print_text(&format!(
        "token: {}\nauth file line:\n  {}",
        token.token, token.line
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_coordinator_does() {
        for good in [
            "alice",
            "bob.smith@example.com",
            "ci-bot_2",
            &"x".repeat(64),
        ] {
            assert_eq!(parse_user_name(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "a b",
            "alice!",
            "ünïcode",
            "unauthenticated",
            &"x".repeat(65),
        ] {
            assert!(parse_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_line_holds_the_hash_of_the_token_and_not_the_token() {
        let token = NewToken::from_bytes("alice", &[], &[7; TOKEN_BYTES]);
        assert_eq!(token.token, "07".repeat(32));
        assert_eq!(token.roles, vec![Role::Operator]);
        assert_eq!(token.token_sha256, sha256_hex(token.token.as_bytes()));
        assert_eq!(
            token.line,
            format!(
                "- {{name: \"alice\", roles: [operator], token_sha256: \"{}\"}}",
                token.token_sha256
            )
        );
        assert!(!token.line.contains(&token.token));
    }

    #[test]
    fn roles_are_listed_once_in_table_order() {
        let token = NewToken::from_bytes(
            "@bob",
            &[Role::Admin, Role::Viewer, Role::Admin],
            &[1; TOKEN_BYTES],
        );
        assert_eq!(token.roles, vec![Role::Viewer, Role::Admin]);
        assert!(
            token
                .line
                .starts_with("- {name: \"@bob\", roles: [viewer, admin], ")
        );
        let json = serde_json::to_value(&token).expect("json");
        assert_eq!(json["roles"], serde_json::json!(["viewer", "admin"]));
        for field in ["name", "token", "token_sha256", "line"] {
            assert!(json[field].is_string(), "{field}: {json}");
        }
    }

    #[test]
    fn the_command_line_checks_the_name_and_the_roles() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let mut all = vec!["sbctl", "token", "new"];
            all.extend_from_slice(args);
            crate::Cli::try_parse_from(all)
        };
        let cli =
            parse(&["alice", "--role", "viewer,approver", "--role", "admin"]).expect("parses");
        assert_eq!(cli.command.namespace(), None);
        match cli.command {
            crate::Command::Token {
                command: crate::TokenCommand::New { name, roles },
            } => {
                assert_eq!(name, "alice");
                assert_eq!(roles, vec![Role::Viewer, Role::Approver, Role::Admin]);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &["a b"][..],
            &["unauthenticated"],
            &["alice", "--role", "root"],
            &["alice", "--role"],
            &[],
        ] {
            let err = parse(bad).expect_err("usage error");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_fresh() {
        let a = random_bytes().expect("random");
        let b = random_bytes().expect("random");
        assert_ne!(a, b);
    }
}

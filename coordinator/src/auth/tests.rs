//! The unit tests of `auth`.

use super::*;

const ALICE_TOKEN: &str = "alice-token";
const BOB_TOKEN: &str = "bob-token";

fn file(users: &[(&str, &str, &str)]) -> String {
    let mut text = String::from("users:\n");
    for (name, roles, token) in users {
        text.push_str(&format!(
            "  - {{name: \"{name}\", roles: [{roles}], token_sha256: \"{}\"}}\n",
            sha256_hex(token.as_bytes())
        ));
    }
    text
}

fn users() -> Users {
    Users::parse(&file(&[
        ("alice", "viewer", ALICE_TOKEN),
        ("bob", "operator", BOB_TOKEN),
    ]))
    .expect("parses")
}

fn bearer(token: &str) -> Credentials {
    Credentials {
        authorization: Some(format!("Bearer {token}")),
        claimed_actor: Some("mallory".into()),
        peer: None,
    }
}

/// The permission table, one RPC at a time: which of viewer, operator, approver, admin
/// may call it.
fn allowed(rpc: Rpc) -> [bool; 4] {
    [Role::Viewer, Role::Operator, Role::Approver, Role::Admin].map(|role| role_permits(role, rpc))
}

/// A sidecar's credential feeds the judge and does nothing else, not even read.
#[test]
fn the_reporter_may_only_report_outcomes() {
    for rpc in Rpc::ALL {
        assert_eq!(
            role_permits(Role::Reporter, rpc),
            rpc == Rpc::ReportOutcomes,
            "{rpc:?}"
        );
    }
    assert_eq!(allowed(Rpc::ReportOutcomes), [false, false, false, true]);
}

/// The permission table, row by row: for each RPC, whether a viewer, an operator, an approver
/// and an admin may call it. Every RPC has its row, so a new RPC cannot pass unexamined.
#[test]
fn the_permission_table_row_by_row() {
    const EVERY_ROLE: [bool; 4] = [true, true, true, true];
    const OPERATORS: [bool; 4] = [false, true, false, true];
    const APPROVERS: [bool; 4] = [false, false, true, true];
    const ADMINS: [bool; 4] = [false, false, false, true];
    let table = [
        (Rpc::Status, EVERY_ROLE),
        (Rpc::WaitForEpoch, EVERY_ROLE),
        (Rpc::GetManifest, EVERY_ROLE),
        (Rpc::GetChunks, EVERY_ROLE),
        (Rpc::Audit, EVERY_ROLE),
        (Rpc::GetPolicy, EVERY_ROLE),
        (Rpc::History, EVERY_ROLE),
        (Rpc::CheckGates, EVERY_ROLE),
        (Rpc::GetContract, EVERY_ROLE),
        (Rpc::BeginStage, OPERATORS),
        (Rpc::UploadChunks, OPERATORS),
        (Rpc::Seal, OPERATORS),
        (Rpc::SetCanary, OPERATORS),
        (Rpc::Flip, OPERATORS),
        (Rpc::Rollback, OPERATORS),
        (Rpc::Rollout, OPERATORS),
        (Rpc::Approve, APPROVERS),
        (Rpc::ApproveContract, APPROVERS),
        (Rpc::SetPolicy, ADMINS),
        (Rpc::SetContract, ADMINS),
        (Rpc::ReportOutcomes, ADMINS),
    ];
    for (rpc, roles) in table {
        assert_eq!(allowed(rpc), roles, "{rpc:?}");
    }
    let rows: std::collections::HashSet<Rpc> = table.iter().map(|(rpc, _)| *rpc).collect();
    for rpc in Rpc::ALL {
        assert!(rows.contains(&rpc), "{rpc:?} has no row in the table");
    }
}

#[test]
fn every_rpc_is_in_the_table_and_admins_may_do_everything() {
    assert_eq!(Rpc::ALL.len(), 21);
    for rpc in Rpc::ALL {
        assert!(role_permits(Role::Admin, rpc), "{rpc:?}");
        assert!(!roles_that_permit(rpc).is_empty());
    }
    assert!(permitted(&[Role::Viewer, Role::Approver], Rpc::Approve));
    assert!(!permitted(&[Role::Viewer, Role::Approver], Rpc::Flip));
    assert!(!permitted(&[], Rpc::Status));
    // Reading history and checking gates change nothing: every role of a person may.
    for role in [Role::Viewer, Role::Operator, Role::Approver, Role::Admin] {
        assert!(role_permits(role, Rpc::History) && role_permits(role, Rpc::CheckGates));
    }
    assert!(!permitted(&[Role::Operator], Rpc::Approve));
}

#[test]
fn a_valid_file_parses() {
    let users = Users::parse(&file(&[
        ("alice", "viewer, approver, viewer", ALICE_TOKEN),
        ("bob.smith@example-1_x", "admin", BOB_TOKEN),
    ]))
    .expect("parses");
    assert_eq!(users.users().len(), 2);
    assert_eq!(users.users()[0].roles, vec![Role::Viewer, Role::Approver]);
    assert_eq!(users.users()[0].roles_text(), "viewer, approver");
    // Block style, an uppercase hash and a byte order mark are fine too, and so is one
    // role without a list.
    let text = format!(
        "\u{feff}users:\n  - name: carol\n    roles:\n      - operator\n    token_sha256: {}\n  - name: dave\n    roles: viewer\n    token_sha256: {}\n",
        sha256_hex(b"carol").to_uppercase(),
        sha256_hex(b"dave"),
    );
    let users = Users::parse(&text).expect("parses");
    assert_eq!(
        users.authenticate("carol").map(|u| u.roles.clone()),
        Some(vec![Role::Operator])
    );
    assert_eq!(
        users.authenticate("dave").map(|u| u.roles.clone()),
        Some(vec![Role::Viewer])
    );
}

fn problem(text: &str) -> String {
    Users::parse(text).expect_err("refused")
}

#[test]
fn a_bad_file_is_refused_naming_the_user_and_the_problem() {
    let hash = sha256_hex(b"t");
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "no `users:` list"),
        ("users: []\n".into(), "empty"),
        ("users: [\n".into(), "line"),
        ("groups: []\n".into(), "unknown field"),
        (
            format!("users:\n  - {{roles: [viewer], token_sha256: {hash}}}\n"),
            "user 1 (counting from 1) has no name",
        ),
        (
            format!("users:\n  - {{name: \"a b\", roles: [viewer], token_sha256: {hash}}}\n"),
            "' '",
        ),
        (
            format!(
                "users:\n  - {{name: {}, roles: [viewer], token_sha256: {hash}}}\n",
                "x".repeat(65)
            ),
            "1 to 64",
        ),
        (
            format!(
                "users:\n  - {{name: unauthenticated, roles: [viewer], token_sha256: {hash}}}\n"
            ),
            "reserved",
        ),
        (
            format!("users:\n  - {{name: alice, roles: [superuser], token_sha256: {hash}}}\n"),
            "user alice: role \"superuser\" is not viewer, operator, approver or admin",
        ),
        (
            format!("users:\n  - {{name: alice, roles: [], token_sha256: {hash}}}\n"),
            "user alice has no roles",
        ),
        (
            "users:\n  - {name: alice, roles: [viewer]}\n".into(),
            "user alice has no token_sha256",
        ),
        (
            "users:\n  - {name: alice, roles: [viewer], token_sha256: abc}\n".into(),
            "user alice: token_sha256 must be 64 hex digits",
        ),
        (
            format!(
                "users:\n  - {{name: alice, roles: [viewer], token_sha256: {}}}\n",
                "g".repeat(64)
            ),
            "other characters than hex digits",
        ),
        (
            format!(
                "users:\n  - {{name: alice, roles: [viewer], token_sha256: {}}}\n",
                sha256_hex(b"")
            ),
            "empty token",
        ),
        (
            "users:\n  - {name: alice, roles: [viewer], token: s3cret}\n".into(),
            "unknown field",
        ),
        (
            file(&[("alice", "viewer", "a"), ("alice", "admin", "b")]),
            "user alice is listed twice",
        ),
        (
            file(&[("alice", "viewer", "same"), ("bob", "admin", "same")]),
            "users alice and bob have the same token_sha256",
        ),
    ];
    for (text, expected) in cases {
        let problem = problem(&text);
        assert!(problem.contains(expected), "{text:?}: {problem}");
        // A plaintext token put in the file by mistake is never echoed.
        assert!(!problem.contains("s3cret"), "{problem}");
    }
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auth.yaml");
    let missing = Users::load(&path).expect_err("missing");
    assert!(format!("{missing:#}").contains("auth.yaml"), "{missing:#}");
    std::fs::write(&path, "users:\n  - {name: alice, roles: [root]}\n").expect("write");
    let bad = format!("{:#}", Users::load(&path).expect_err("bad role"));
    assert!(
        bad.contains("auth.yaml") && bad.contains("user alice"),
        "{bad}"
    );
    std::fs::write(&path, file(&[("alice", "viewer", ALICE_TOKEN)])).expect("write");
    assert_eq!(Users::load(&path).expect("loads").users().len(), 1);
}

#[test]
fn tokens_are_matched_by_their_sha256() {
    let users = users();
    assert_eq!(
        users.authenticate(ALICE_TOKEN).map(|u| u.name.as_str()),
        Some("alice")
    );
    assert_eq!(
        users.authenticate(BOB_TOKEN).map(|u| u.name.as_str()),
        Some("bob")
    );
    assert!(users.authenticate("alice-token ").is_none());
    assert!(users.authenticate("ALICE-TOKEN").is_none());
    assert!(users.authenticate("").is_none());
    // The stored hash is not a token.
    assert!(
        users
            .authenticate(&sha256_hex(ALICE_TOKEN.as_bytes()))
            .is_none()
    );
}

#[test]
fn the_bearer_scheme_is_read_and_anything_else_is_no_token() {
    let with = |value: &str| Credentials {
        authorization: Some(value.to_string()),
        claimed_actor: None,
        peer: None,
    };
    assert_eq!(with("Bearer abc").bearer(), Some("abc"));
    assert_eq!(with("bearer  abc ").bearer(), Some("abc"));
    assert_eq!(with("Basic abc").bearer(), None);
    assert_eq!(with("Bearer ").bearer(), None);
    assert_eq!(with("abc").bearer(), None);
    assert_eq!(Credentials::default().bearer(), None);
}

#[test]
fn check_names_the_user_and_ignores_the_claimed_name() {
    let users = users();
    let actor = check(&users, &bearer(BOB_TOKEN), Rpc::Flip, "catalog").expect("allowed");
    assert_eq!(actor.name, "bob");
    let actor = check(&users, &bearer(ALICE_TOKEN), Rpc::Status, "catalog").expect("allowed");
    assert_eq!(actor.name, "alice");
}

#[test]
fn check_refuses_a_role_without_the_permission() {
    let denial = check(&users(), &bearer(ALICE_TOKEN), Rpc::Flip, "catalog").expect_err("denied");
    assert_eq!(denial.actor, "alice");
    assert_eq!(denial.error.grpc_code(), tonic::Code::PermissionDenied);
    assert_eq!(
        denial.error.to_string(),
        "alice (viewer) may not flip catalog: it needs operator or admin"
    );
    let denial =
        check(&users(), &bearer(ALICE_TOKEN), Rpc::UploadChunks, "Bad\nNS").expect_err("denied");
    assert_eq!(
        denial.error.to_string(),
        "alice (viewer) may not stage into \"Bad\\nNS\": it needs operator or admin"
    );
    let denial =
        check(&users(), &bearer(BOB_TOKEN), Rpc::SetPolicy, "catalog").expect_err("denied");
    assert_eq!(
        denial.error.to_string(),
        "bob (operator) may not set the policy of catalog: it needs admin"
    );
}

#[test]
fn check_refuses_a_missing_or_unknown_token_alike() {
    let users = users();
    let no_token = Credentials {
        authorization: None,
        claimed_actor: Some("alice".into()),
        peer: None,
    };
    for credentials in [
        no_token,
        bearer("guess"),
        bearer(&sha256_hex(b"alice-token")),
    ] {
        let denial = check(&users, &credentials, Rpc::Status, "catalog").expect_err("denied");
        assert_eq!(denial.actor, UNAUTHENTICATED);
        assert_eq!(denial.error.grpc_code(), tonic::Code::Unauthenticated);
        assert_eq!(denial.error.to_string(), UNKNOWN_TOKEN);
    }
}

#[test]
fn the_claimed_name_is_cleaned() {
    let claimed = |name: &str| {
        Credentials {
            authorization: None,
            claimed_actor: Some(name.to_string()),
            peer: None,
        }
        .claimed()
    };
    assert_eq!(claimed("alice"), Some("alice".into()));
    assert_eq!(claimed("al\nice\u{7}"), Some("alice".into()));
    assert_eq!(claimed(" \t"), None);
    assert_eq!(claimed(&"x".repeat(100)).map(|s| s.len()), Some(64));
}

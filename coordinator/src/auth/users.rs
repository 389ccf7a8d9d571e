//! The `--auth` file: users with roles and the SHA-256 of their token, checked whole before
//! any of it is used, and what a reload changed.

use super::*;

/// One user of the auth file, checked.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// Distinct, in the order of [`Role::ALL`].
    pub roles: Vec<Role>,
    /// Lowercase hex.
    token_sha256: String,
}

impl User {
    /// The roles as "viewer, approver".
    pub fn roles_text(&self) -> String {
        let names: Vec<&str> = self.roles.iter().map(|r| r.as_str()).collect();
        names.join(", ")
    }
}

/// The users of an auth file.
#[derive(Clone, Debug)]
pub struct Users {
    users: Vec<User>,
}

/// The file as written; every field is optional here so that a missing one is reported with
/// the user it belongs to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    users: Option<Vec<RawUser>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Option<String>,
    roles: Option<RawRoles>,
    token_sha256: Option<String>,
}

/// `roles: [viewer, approver]`, or one role as `roles: viewer`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRoles {
    One(String),
    Many(Vec<String>),
}

impl Users {
    /// Reads and checks an auth file. The error names the file and, where it can, the user.
    pub fn load(path: &Path) -> anyhow::Result<Users> {
        let context = || format!("--auth {}", path.display());
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))
            .with_context(context)?;
        anyhow::ensure!(
            metadata.len() <= MAX_FILE_BYTES,
            "{}: the file is {} bytes, over the limit of {MAX_FILE_BYTES}",
            context(),
            metadata.len()
        );
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read {}", path.display()))
            .with_context(context)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| anyhow::anyhow!("not UTF-8 text (at byte {})", e.valid_up_to()))
            .with_context(context)?;
        Users::parse(text).map_err(|problem| anyhow::anyhow!("{}: {problem}", context()))
    }

    /// Parses and checks the text of an auth file.
    pub fn parse(text: &str) -> Result<Users, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut options = serde_saphyr::Options::default();
        // A snippet of the file could show a line of it; the location is enough.
        options.with_snippet = false;
        options.strict_booleans = true;
        let raw: Option<RawFile> =
            serde_saphyr::from_str_with_options(text, options).map_err(|e| yaml_problem(&e))?;
        let raw_users = raw
            .and_then(|r| r.users)
            .ok_or("it has no `users:` list; see the README, \"Identities and roles\"")?;
        if raw_users.is_empty() {
            return Err("its `users:` list is empty: nobody could do anything".into());
        }
        let mut users: Vec<User> = Vec::with_capacity(raw_users.len());
        for (index, raw) in raw_users.into_iter().enumerate() {
            let user = check_user(index, raw)?;
            if let Some(other) = users.iter().find(|u| u.name == user.name) {
                return Err(format!("user {} is listed twice", other.name));
            }
            if let Some(other) = users.iter().find(|u| u.token_sha256 == user.token_sha256) {
                return Err(format!(
                    "users {} and {} have the same token_sha256; give each user a token of their own (`sbctl token new NAME`)",
                    other.name, user.name
                ));
            }
            users.push(user);
        }
        Ok(Users { users })
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// The user whose token this is. The token's SHA-256 is compared with every user's in
    /// constant time, without stopping at a match, so the answer's timing tells nothing about
    /// the stored hashes.
    pub fn authenticate(&self, token: &str) -> Option<&User> {
        if token.is_empty() {
            return None;
        }
        let presented = sha256_hex(token.as_bytes());
        let mut found = None;
        for user in &self.users {
            let matches: bool = user
                .token_sha256
                .as_bytes()
                .ct_eq(presented.as_bytes())
                .into();
            if matches {
                found = Some(user);
            }
        }
        found
    }
}

fn check_user(index: usize, raw: RawUser) -> Result<User, String> {
    let entry = index + 1;
    let name = raw
        .name
        .ok_or_else(|| format!("user {entry} (counting from 1) has no name"))?;
    validate_user_name(&name).map_err(|e| format!("user {entry} (counting from 1): {e}"))?;
    let raw_roles = match raw.roles {
        None => Vec::new(),
        Some(RawRoles::One(role)) => vec![role],
        Some(RawRoles::Many(roles)) => roles,
    };
    if raw_roles.is_empty() {
        return Err(format!(
            "user {name} has no roles; give one or more of viewer, operator, approver, admin"
        ));
    }
    let mut roles = Vec::with_capacity(raw_roles.len());
    for role in &raw_roles {
        let role = Role::parse(role).ok_or_else(|| {
            format!("user {name}: role {role:?} is not viewer, operator, approver or admin")
        })?;
        roles.push(role);
    }
    roles.sort();
    roles.dedup();
    let hash = raw.token_sha256.ok_or_else(|| {
        format!(
            "user {name} has no token_sha256; `sbctl token new {name}` makes a token and its line"
        )
    })?;
    let hash = hash.trim().to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "user {name}: token_sha256 must be 64 hex digits (the SHA-256 of the token), not {} characters{}",
            hash.len(),
            if hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                ""
            } else {
                " with other characters than hex digits"
            }
        ));
    }
    if hash == sha256_hex(b"") {
        return Err(format!(
            "user {name}: token_sha256 is the SHA-256 of an empty token"
        ));
    }
    Ok(User {
        name,
        roles,
        token_sha256: hash,
    })
}

pub(super) fn yaml_problem(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default().trim();
    let first = if first.is_empty() {
        "cannot be parsed"
    } else {
        first
    };
    match error.location().filter(|l| l.line() > 0) {
        Some(location) if !first.contains("line") => {
            format!("line {}: {first}", location.line())
        }
        _ => first.to_string(),
    }
}

/// The most user names a reload's log line lists in each of added, removed and changed.
const NAMES_LISTED: usize = 20;

/// What a reload changed, as "added carol; removed bob; changed alice" (a user changes when
/// their roles or token do), or "no change".
pub(super) fn describe_change(before: &Users, after: &Users) -> String {
    let find = |users: &Users, name: &str| users.users().iter().find(|u| u.name == name).cloned();
    let added: Vec<&str> = after
        .users()
        .iter()
        .filter(|u| find(before, &u.name).is_none())
        .map(|u| u.name.as_str())
        .collect();
    let removed: Vec<&str> = before
        .users()
        .iter()
        .filter(|u| find(after, &u.name).is_none())
        .map(|u| u.name.as_str())
        .collect();
    let changed: Vec<&str> = after
        .users()
        .iter()
        .filter(|u| {
            find(before, &u.name)
                .is_some_and(|old| old.roles != u.roles || old.token_sha256 != u.token_sha256)
        })
        .map(|u| u.name.as_str())
        .collect();
    let list = |names: &[&str]| {
        let mut text = names
            .iter()
            .take(NAMES_LISTED)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > NAMES_LISTED {
            text.push_str(&format!(" and {} more", names.len() - NAMES_LISTED));
        }
        text
    };
    let parts: Vec<String> = [
        ("added", &added),
        ("removed", &removed),
        ("changed", &changed),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(what, names)| format!("{what} {}", list(names)))
    .collect();
    if parts.is_empty() {
        "no change".to_string()
    } else {
        parts.join("; ")
    }
}

//! A namespace's contract: the rules a set must keep to be sealed, in one implementation that
//! the coordinator enforces at seal and sbctl previews in `plan` and `stage`.
//!
//! - [`schema`]: JSON Schemas by key pattern, violations with JSON paths, sensitive fields.
//! - [`diff`] and [`compat`]: what a new set adds, changes and removes against the active set,
//!   computed from chunks that differ, and the class of every change (additive, modifying,
//!   destructive).
//! - [`document`]: the contract as stored in etcd (schemas, Rego rules), its hash and checks.
//! - [`rules`]: Rego rules (Open Policy Agent's language) evaluated with `regorus` under a
//!   time limit; their input and their `deny`, `warn` and `approval` messages.
//! - [`check`]: the verdict on a set: violations, destructive changes, rule findings.
//!
//! The crate does no I/O: callers read sets and contracts, and hand items in.

pub mod check;
pub mod compat;
pub mod diff;
pub mod document;
pub mod rules;
pub mod schema;

pub use check::{SealCheck, Verdict};
pub use document::{CompiledContract, Contract, ContractError, ContractRecord, ContractView};

/// `token` appended to a JSON pointer, escaped (`~` as `~0`, `/` as `~1`).
pub fn push_pointer_token(path: &mut String, token: &str) {
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// A JSON pointer as messages show it: the empty pointer is `(root)`.
pub fn pointer_or_root(pointer: &str) -> &str {
    if pointer.is_empty() {
        "(root)"
    } else {
        pointer
    }
}

//! Which `Host` a request to an HTTP API may name, against DNS rebinding: a web page whose name
//! an attacker rebinds to 127.0.0.1 counts as same-site to the browser, which then lets it
//! drive a server on loopback. The browser still sends the page's name as the `Host`, so a
//! server that answers only the names it knows is out of the page's reach.
//!
//! Always allowed: IP literals (a rebinding page has a name, not an address), `localhost` and
//! names under `.localhost` (RFC 6761 keeps them on loopback), and a request without a `Host`
//! (browsers always send one). Other names only when given with `--allowed-host`; `*` allows
//! every name.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// `--allowed-host`, as both servers take it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct HostArgs {
    /// A host name the HTTP API (and the coordinator's dashboard) answers to, besides IP
    /// addresses and localhost (against DNS rebinding); repeat, or comma-separate. `*` allows
    /// every name.
    #[arg(
        long = "allowed-host",
        env = "SWITCHBOARD_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub allowed_hosts: Vec<String>,
}

impl HostArgs {
    pub fn allowlist(&self) -> HostAllowlist {
        HostAllowlist::new(&self.allowed_hosts)
    }
}

/// Middleware of both HTTP APIs: refuses a request that names a host outside the allowlist
/// (DNS rebinding) with 403 and a JSON error, before anything else looks at it.
pub async fn refuse_other_hosts(
    State(allowlist): State<Arc<HostAllowlist>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request_host(&request);
    if allowlist.allows(host.as_deref()) {
        return next.run(request).await;
    }
    let message = allowlist.refusal(host.as_deref().unwrap_or_default());
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// The names a server answers besides IP literals and loopback names.
#[derive(Clone, Debug, Default)]
pub struct HostAllowlist {
    names: Vec<String>,
    any: bool,
}

impl HostAllowlist {
    /// The allowlist of `--allowed-host` values (case does not matter; `*` is every name).
    pub fn new(names: &[String]) -> Self {
        let any = names.iter().any(|name| name.trim() == "*");
        let names = names
            .iter()
            .map(|name| normalise(name.trim()))
            .filter(|name| !name.is_empty() && name != "*")
            .collect();
        HostAllowlist { names, any }
    }

    /// Whether a request whose `Host` (or HTTP/2 authority) is `host` may be answered.
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            return true;
        };
        if self.any {
            return true;
        }
        let Some(name) = host_name(host) else {
            return false;
        };
        if name.parse::<Ipv4Addr>().is_ok() || name.parse::<Ipv6Addr>().is_ok() {
            return true;
        }
        let name = normalise(name);
        name == "localhost" || name.ends_with(".localhost") || self.names.contains(&name)
    }

    /// The error a refused request gets: what was refused and how to allow it.
    pub fn refusal(&self, host: &str) -> String {
        let shown: String = host
            .chars()
            .take(100)
            .flat_map(char::escape_debug)
            .collect();
        format!(
            "this server does not answer requests for host \"{shown}\": it answers IP addresses, localhost, and the names given with --allowed-host"
        )
    }
}

/// The host a request names: its `Host` header, else (HTTP/2) the authority of its URI. A
/// header that is not text counts as a host nobody allows.
pub fn request_host<B>(request: &axum::http::Request<B>) -> Option<String> {
    match request.headers().get(axum::http::header::HOST) {
        Some(value) => Some(value.to_str().unwrap_or("\u{fffd}").to_string()),
        None => request.uri().authority().map(|a| a.as_str().to_string()),
    }
}

/// The name part of a `Host` value: without the port, and without the brackets of an IPv6
/// literal. `None` when the value is not a host at all.
fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        return (after.is_empty() || is_port(after.strip_prefix(':')?)).then_some(address);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return None,
        None => host,
    };
    (!name.is_empty()).then_some(name)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_and_loopback_names_are_allowed_by_default() {
        let allowlist = HostAllowlist::default();
        for host in [
            "127.0.0.1",
            "127.0.0.1:7101",
            "10.1.2.3:80",
            "[::1]:7101",
            "[::1]",
            "localhost",
            "LOCALHOST:7070",
            "localhost.",
            "app.localhost:8080",
        ] {
            assert!(allowlist.allows(Some(host)), "{host}");
        }
        assert!(allowlist.allows(None), "no Host: not a browser");
    }

    #[test]
    fn other_names_are_refused_unless_allowed() {
        let allowlist = HostAllowlist::default();
        for host in [
            "attacker.example",
            "attacker.example:7101",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "",
            ":7101",
            "[::1",
            "[::1]x",
            "localhost:port",
        ] {
            assert!(!allowlist.allows(Some(host)), "{host:?}");
        }
        let allowlist = HostAllowlist::new(&["Coordinator.Internal".to_string(), " ".to_string()]);
        assert!(allowlist.allows(Some("coordinator.internal:7101")));
        assert!(allowlist.allows(Some("COORDINATOR.INTERNAL.")));
        assert!(!allowlist.allows(Some("other.internal")));
        let everything = HostAllowlist::new(&["*".to_string()]);
        assert!(everything.allows(Some("anything.example")));
    }

    #[test]
    fn the_refusal_names_the_host_escaped_and_the_flag() {
        let message = HostAllowlist::default().refusal("evil\u{1b}[31m.example");
        assert!(message.contains("evil\\u{1b}[31m.example"), "{message}");
        assert!(message.contains("--allowed-host"), "{message}");
    }
}

//! Free loopback TCP ports, never the same one twice in one test binary.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{LazyLock, Mutex, PoisonError};

use anyhow::{Context, Result, bail};

/// Every port handed out by [`free_port`] in this process.
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// A TCP port on 127.0.0.1 that was free a moment ago: binds `127.0.0.1:0`, reads the port the
/// kernel chose and closes the socket. A port is never handed out twice in one process, so tests
/// running in parallel in one test binary do not collide. (Another process can still take it
/// before it is used; the harness retries a start that fails with "address already in use".)
pub fn free_port() -> Result<u16> {
    for _ in 0..200 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener
            .local_addr()
            .context("reading the address of a bound socket")?
            .port();
        drop(listener);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 that was not already handed out, after 200 tries")
}

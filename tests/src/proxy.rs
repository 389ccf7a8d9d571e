//! A TCP proxy for fault tests: forwards both ways between 127.0.0.1:<free> and an upstream, and
//! can add latency, black-hole traffic, or cut every connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy's tasks share with its handle.
#[derive(Debug)]
struct Control {
    upstream: SocketAddr,
    delay: Mutex<Duration>,
    /// `true` while black-holed.
    blackhole: watch::Sender<bool>,
    /// One task per proxied connection; aborting a task closes both of its sockets.
    connections: Mutex<JoinSet<()>>,
}

impl Control {
    fn delay(&self) -> Duration {
        *self.delay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once traffic may flow.
    async fn wait_open(&self) {
        let mut open = self.blackhole.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = open.wait_for(|blackholed| !*blackholed).await;
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A TCP proxy on 127.0.0.1:<free port> to one upstream address. Its tasks run on the tokio
/// runtime that started it and stop when the proxy is dropped (every proxied connection is then
/// closed). Must be started and dropped inside a tokio runtime.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    control: Arc<Control>,
    accept_task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the proxy's listening socket on 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("reading the proxy's address")?;
        let (blackhole, _) = watch::channel(false);
        let control = Arc::new(Control {
            upstream,
            delay: Mutex::new(Duration::ZERO),
            blackhole,
            connections: Mutex::new(JoinSet::new()),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&control)));
        Ok(Self {
            addr,
            control,
            accept_task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn upstream(&self) -> SocketAddr {
        self.control.upstream
    }

    /// Latency added before every chunk is forwarded, in both directions (zero to remove it).
    pub fn set_delay(&self, delay: Duration) {
        *self
            .control
            .delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// `true`: stop forwarding bytes, keeping the connections open (bytes in flight are held and
    /// delivered once lifted, as TCP would after a partition heals); new connections are accepted
    /// but not connected upstream until lifted. `false`: lift it.
    pub fn blackhole(&self, on: bool) {
        self.control.blackhole.send_replace(on);
    }

    pub fn is_blackholed(&self) -> bool {
        *self.control.blackhole.borrow()
    }

    /// Closes every current connection (both sides). New connections are still accepted.
    pub fn cut(&self) {
        self.control.connections().abort_all();
    }

    /// How many connections the proxy is forwarding now.
    pub fn connection_count(&self) -> usize {
        let mut connections = self.control.connections();
        while connections.try_join_next().is_some() {}
        connections.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.control.connections().abort_all();
    }
}

async fn accept_loop(listener: TcpListener, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors, or similar: let the client retry.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut connections = control.connections();
        while connections.try_join_next().is_some() {}
        connections.spawn(proxy_connection(client, Arc::clone(&control)));
    }
}

async fn proxy_connection(client: TcpStream, control: Arc<Control>) {
    control.wait_open().await;
    let Ok(upstream) = TcpStream::connect(control.upstream).await else {
        return; // Dropping the client socket tells the client the upstream is unreachable.
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let to_upstream = pump(client_read, upstream_write, &control);
    let to_client = pump(upstream_read, client_write, &control);
    tokio::pin!(to_upstream, to_client);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        // A clean end of one direction half-closes the other side; an error ends both.
        tokio::select! {
            clean = &mut to_upstream, if !up_done => {
                if !clean { return; }
                up_done = true;
            }
            clean = &mut to_client, if !down_done => {
                if !clean { return; }
                down_done = true;
            }
        }
    }
}

/// Copies `from` to `to` chunk by chunk, honouring the black hole and the delay. Returns `true`
/// after a clean end of stream (the write side is then shut down), `false` on an error.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, control: &Control) -> bool {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        control.wait_open().await;
        let n = match from.read(&mut buffer).await {
            Ok(0) => return to.shutdown().await.is_ok(),
            Ok(n) => n,
            Err(_) => return false,
        };
        let delay = control.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Black-holed while reading or sleeping: hold the bytes until it is lifted.
        control.wait_open().await;
        if to.write_all(&buffer[..n]).await.is_err() {
            return false;
        }
    }
}

//! What a stranger on the network, or a web page in an operator's browser, can do to the
//! servers (issue 14): requests are raw HTTP over TCP, so that the test says exactly which
//! bytes reach the server.

mod common;

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use common::*;
use serde_json::Value;
use switchboard_tests::{Coordinator, EtcdServer, TestEnv, unique_prefix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "catalog";

/// Sends `request` (a whole HTTP/1.1 request; it should ask to close the connection) and
/// returns the status and the body as JSON (a string when the body is not JSON).
async fn raw_http(address: SocketAddr, request: &str) -> Result<(u16, Value)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .context("the server did not close the connection")??;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    Ok((status, body))
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

fn post(path: &str, host: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Issue 14, acceptance 4: a request naming a host outside the allowlist (a page whose name
/// was rebound to 127.0.0.1) is refused with a JSON error on the coordinator's HTTP API and on
/// the sidecar's, and changes nothing; IP addresses and localhost keep working, and a name
/// given with --allowed-host is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_another_host_are_refused_on_both_http_apis() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    let sbctl = env.sbctl();
    let (v1, _) = stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let epoch_before = epoch(&sbctl, NS).await?;
    let coordinator = env.coordinator.http_addr();
    let sidecar = env.start_sidecar("exposure").await?;
    sidecar.wait_ready(DEADLINE).await?;
    let sidecar_address = sidecar.http_addr();

    let rebound = "attacker.example:7101";
    let (code, body) = raw_http(
        coordinator,
        &post(
            &format!("/v1/ns/{NS}/canary"),
            rebound,
            r#"{"percent": 50}"#,
        ),
    )
    .await?;
    ensure!(code == 403, "{code} {body}");
    let error = body["error"].as_str().context("no JSON error")?;
    ensure!(
        error.contains("attacker.example") && error.contains("--allowed-host"),
        "{error}"
    );
    ensure!(
        epoch(&sbctl, NS).await? == epoch_before,
        "the refused canary changed routing"
    );
    for path in ["/healthz", "/", "/v1/ns", "/no/such/path"] {
        let (code, body) = raw_http(coordinator, &get(path, rebound)).await?;
        ensure!(
            code == 403 && body["error"].is_string(),
            "{path}: {code} {body}"
        );
    }
    let read = format!("/v1/ns/{NS}/items/schema_version");
    let (code, body) = raw_http(sidecar_address, &get(&read, "attacker.example")).await?;
    ensure!(code == 403 && body["error"].is_string(), "{code} {body}");
    let report = format!(r#"{{"version": "{v1}", "errors": 1000}}"#);
    let (code, body) = raw_http(
        sidecar_address,
        &post(&format!("/v1/ns/{NS}/report"), "attacker.example", &report),
    )
    .await?;
    ensure!(code == 403 && body["error"].is_string(), "{code} {body}");

    // IP addresses and localhost, as the README's tour uses them, still work.
    for host in [
        coordinator.to_string(),
        format!("localhost:{}", coordinator.port()),
    ] {
        let (code, body) =
            raw_http(coordinator, &get(&format!("/v1/ns/{NS}/status"), &host)).await?;
        ensure!(code == 200, "{host}: {code} {body}");
    }
    let (code, body) = raw_http(sidecar_address, &get(&read, "localhost")).await?;
    ensure!(code == 200, "{code} {body}");

    // sbctl pointed at the HTTP port says so, instead of calling the coordinator old.
    let wrong_port = switchboard_tests::SbctlRunner::new(&format!("http://{coordinator}"))
        .run(&["status", NS])
        .await?;
    ensure!(
        !wrong_port.success() && wrong_port.stderr.contains("the coordinator's HTTP port"),
        "{wrong_port}"
    );

    // A name the operator allows is answered.
    let named = Coordinator::start_with(
        &env.etcd_endpoints(),
        env.prefix(),
        &["--allowed-host", "switchboard.internal"],
    )
    .await?;
    let (code, body) = raw_http(
        named.http_addr(),
        &get("/healthz", "Switchboard.Internal:7101"),
    )
    .await?;
    ensure!(code == 200, "{code} {body}");
    let (code, _) = raw_http(named.http_addr(), &get("/healthz", rebound)).await?;
    ensure!(code == 403, "{code}");
    Ok(())
}

/// A memory figure of process `pid` from /proc (`VmRSS`: resident now; `VmHWM`: the peak of
/// resident memory), in bytes.
fn memory_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// Opens an HTTP/2 stream to `rpc` with `token`, sends `message` (a gRPC message: its 5-byte
/// header and body) as far as flow control lets it, and waits for the answer's headers.
/// Returns the grpc-status they carry, and the stream's send half, which the caller keeps so
/// that the stream stays open.
async fn send_message(
    client: h2::client::SendRequest<bytes::Bytes>,
    address: SocketAddr,
    rpc: &str,
    token: &str,
    message: bytes::Bytes,
) -> Result<(Option<String>, h2::SendStream<bytes::Bytes>)> {
    let mut client = client.ready().await?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}/switchboard.v1.Admin/{rpc}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())?;
    let (response, mut send) = client.send_request(request, false)?;
    // A server that answers from the headers may have closed the stream already.
    let _ = send.send_data(message, false);
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .context("no answer before the body was sent: the server waits to read it")??;
    let status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((status, send))
}

/// Issue 14, acceptance 2: 200 gRPC streams without a known token, each sending a 16 MiB
/// message, are refused from their headers before their body is read: each is answered
/// UNAUTHENTICATED, and the coordinator's memory barely moves (flow control holds the rest of
/// each message at the sender). They call unary RPCs (BeginStage, SetContract, Seal), whose handlers see only
/// a whole message: before the check moved in front of the body, each waited for its 16 MiB.
/// An operator's upload of a large item still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_a_known_token_are_refused_before_their_bodies_are_read() -> Result<()> {
    let olga = new_user("olga", &["operator"]).await?;
    let dir = tempfile::tempdir()?;
    let auth = write_auth_file(dir.path(), &[&olga])?;
    let etcd = EtcdServer::start().await?;
    let coordinator = Coordinator::start_with(
        &etcd.endpoint(),
        &unique_prefix(),
        &["--auth", &auth, "--rate-limit-per-second", "0"],
    )
    .await?;
    let address = coordinator.grpc_addr();
    let before = memory_bytes(coordinator.pid(), "VmHWM")?;

    let mut connections = tokio::task::JoinSet::new();
    let mut open_streams = Vec::new();
    let made_up = "0123456789abcdef".repeat(4);
    // One 16 MiB message, shared by every stream: a header announcing 16 MiB - 5 bytes of
    // body, and the body.
    let size = 16usize << 20;
    let mut message = vec![0u8];
    message.extend_from_slice(&u32::try_from(size - 5)?.to_be_bytes());
    message.resize(size, 0);
    let message = bytes::Bytes::from(message);
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let (client, connection) = h2::client::handshake(tcp).await?;
        connections.spawn(connection);
        let mut streams = tokio::task::JoinSet::new();
        for stream in 0..50 {
            let (client, token, message) = (client.clone(), made_up.clone(), message.clone());
            let rpc = ["BeginStage", "SetContract", "Seal"][stream % 3];
            streams.spawn(async move { send_message(client, address, rpc, &token, message).await });
        }
        while let Some(done) = streams.join_next().await {
            let (status, send) = done??;
            ensure!(
                status.as_deref() == Some("16"),
                "a stream without a known token was answered {status:?}, not UNAUTHENTICATED (16)"
            );
            open_streams.push(send);
        }
    }
    // The peak, not the memory now: a message buffered and freed again leaves no trace in
    // the resident memory at the end.
    let after = memory_bytes(coordinator.pid(), "VmHWM")?;
    let growth = after.saturating_sub(before);
    eprintln!(
        "200 unauthenticated streams sending 16 MiB each: coordinator peak RSS {:.1} MB -> {:.1} MB (+{:.1} MB)",
        before as f64 / 1e6,
        after as f64 / 1e6,
        growth as f64 / 1e6
    );
    ensure!(
        growth < 50_000_000,
        "the coordinator grew by {growth} bytes"
    );
    drop(open_streams);
    connections.abort_all();

    // An operator's upload of an item close to the 1 MiB limit goes through.
    let operator = coordinator.sbctl().env("SWITCHBOARD_TOKEN", &olga.token);
    let set = write_set(dir.path(), "large", 3, 1_000_000)?
        .display()
        .to_string();
    stage(&operator, NS, &set).await?;
    Ok(())
}

/// Issue 14, acceptance 7: every error of both HTTP APIs is a JSON object with an `error`
/// text, including the router's own answers (no route, a method not allowed, a path that is
/// not UTF-8, a body over the limit, a query that does not parse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_of_both_http_apis_is_json() -> Result<()> {
    let env = TestEnv::start(&[NS]).await?;
    stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let sidecar = env.start_sidecar("errors").await?;
    sidecar.wait_ready(DEADLINE).await?;
    let big = "x".repeat(100 * 1024);
    let request = |method: &str, path: &str, content_type: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let json = "application/json";
    let coordinator_cases = [
        request("GET", "/nowhere", json, ""),
        request("DELETE", "/healthz", json, ""),
        request("PUT", &format!("/v1/ns/{NS}/flip"), json, "{}"),
        request("GET", "/v1/ns/%FF%FE/status", json, ""),
        request("GET", &format!("/v1/ns/{NS}/audit?limit=many"), json, ""),
        request("POST", &format!("/v1/ns/{NS}/canary"), json, "not json"),
        request("POST", &format!("/v1/ns/{NS}/canary"), "text/plain", "{}"),
        request("POST", &format!("/v1/ns/{NS}/flip"), json, &big),
    ];
    let sidecar_cases = [
        request("GET", "/nowhere", json, ""),
        request("PATCH", "/readyz", json, ""),
        request("GET", "/v1/ns/%FF%FE/items/x", json, ""),
        request("GET", &format!("/v1/ns/{NS}/items/%FF"), json, ""),
        request("POST", &format!("/v1/ns/{NS}/report"), "text/plain", "{}"),
        request("POST", &format!("/v1/ns/{NS}/report"), json, "not json"),
        request("POST", &format!("/v1/ns/{NS}/report"), json, &big),
    ];
    for (address, cases) in [
        (env.coordinator.http_addr(), &coordinator_cases[..]),
        (sidecar.http_addr(), &sidecar_cases[..]),
    ] {
        for case in cases {
            let (code, body) = raw_http(address, case).await?;
            let first_line = case.lines().next().unwrap_or_default();
            ensure!(code >= 400, "{address} {first_line}: {code} {body}");
            ensure!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{address} {first_line}: {code} is not a JSON error: {body}"
            );
        }
    }
    Ok(())
}

/// Raises this test process's descriptor limit to its hard limit and checks that it allows
/// `needed` descriptors: the flood below holds thousands of connections.
fn descriptors_for(needed: u64) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // Root (as in CI) may raise the hard limit too.
    let wanted = hard.max(needed);
    if soft < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (now, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    ensure!(
        now >= needed,
        "this test needs {needed} file descriptors; the limit is {now} (hard {hard})"
    );
    Ok(())
}

/// Holds `count` connections to `address`, each with a request head cut off before its end,
/// while a whole request is sent every 100 of them: every whole request must be answered.
/// Returns the half-sent connections and the slowest answer.
async fn flood_with_half_sent_requests(
    address: SocketAddr,
    count: usize,
) -> Result<(Vec<tokio::net::TcpStream>, std::time::Duration)> {
    let mut held = Vec::with_capacity(count);
    let mut slowest = std::time::Duration::ZERO;
    for index in 0..count {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
            .await?;
        held.push(stream);
        if index % 100 == 99 {
            let started = std::time::Instant::now();
            let (code, body) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                raw_http(address, &get("/healthz", "127.0.0.1")),
            )
            .await
            .with_context(|| {
                format!("{address} stopped answering after {index} half-sent requests")
            })??;
            ensure!(code == 200, "{address}: {code} {body}");
            slowest = slowest.max(started.elapsed());
        }
    }
    Ok((held, slowest))
}

/// Waits until the server has closed `stream` (a read ends or fails).
async fn closed_by_the_server(stream: &mut tokio::net::TcpStream) -> Result<()> {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buffer)).await {
            Err(_) => anyhow::bail!("the server kept a half-sent request open past {DEADLINE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            // A 408 or an error page before the close is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Issue 14, acceptance 3: 2,000 half-sent requests against the coordinator and against the
/// sidecar, each with its descriptor limit at 1,024: both keep answering whole requests all
/// the while, and the half-sent ones are closed (the oldest to make room, the rest after the
/// header timeout of 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_the_apis_keep_answering() -> Result<()> {
    descriptors_for(2_500)?;
    let env = TestEnv::start(&[NS]).await?;
    stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let sidecar = env.start_sidecar("half-sent").await?;
    sidecar.wait_ready(DEADLINE).await?;
    for (name, pid, address) in [
        (
            "coordinator",
            env.coordinator.pid(),
            env.coordinator.http_addr(),
        ),
        ("sidecar", sidecar.pid(), sidecar.http_addr()),
    ] {
        let limited = tokio::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), "--nofile=1024:1024"])
            .status()
            .await
            .context("running prlimit (util-linux)")?;
        ensure!(limited.success(), "prlimit failed for the {name}");
        let (mut held, slowest) = flood_with_half_sent_requests(address, 2_000).await?;
        eprintln!(
            "{name}: 2,000 half-sent requests held; the slowest whole request took {slowest:?}"
        );
        // The oldest were closed to make room for newer ones; the newest at their header
        // timeout.
        closed_by_the_server(&mut held[0]).await?;
        let last = held.len() - 1;
        closed_by_the_server(&mut held[last]).await?;
        let (code, _) = raw_http(address, &get("/healthz", "127.0.0.1")).await?;
        ensure!(code == 200, "{name} after the flood: {code}");
    }
    Ok(())
}

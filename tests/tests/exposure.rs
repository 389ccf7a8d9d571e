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

/// The streams of [`two_hundred_large_messages`], open until dropped, with their connections.
struct OpenStreams {
    _streams: Vec<h2::SendStream<bytes::Bytes>>,
    _connections: tokio::task::JoinSet<Result<(), h2::Error>>,
}

/// Opens 200 gRPC streams to `address` with `token` over 4 connections, calling `rpcs` in
/// turn, and sends on each a message of 16 MiB (its header announces 16 MiB less 5 bytes).
/// Returns each stream's RPC and the grpc-status it was answered, and the open streams.
async fn two_hundred_large_messages(
    address: SocketAddr,
    token: &str,
    rpcs: &[&'static str],
) -> Result<(Vec<(&'static str, Option<String>)>, OpenStreams)> {
    let size = 16usize << 20;
    let mut message = vec![0u8];
    message.extend_from_slice(&u32::try_from(size - 5)?.to_be_bytes());
    message.resize(size, 0);
    let message = bytes::Bytes::from(message);
    let mut open = OpenStreams {
        _streams: Vec::new(),
        _connections: tokio::task::JoinSet::new(),
    };
    let mut answers = Vec::new();
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let (client, connection) = h2::client::handshake(tcp).await?;
        open._connections.spawn(connection);
        let mut streams = tokio::task::JoinSet::new();
        for stream in 0..50 {
            let (client, token, message) = (client.clone(), token.to_string(), message.clone());
            let rpc = rpcs[stream % rpcs.len()];
            streams.spawn(async move {
                let (status, send) = send_message(client, address, rpc, &token, message).await?;
                Ok::<_, anyhow::Error>((rpc, status, send))
            });
        }
        while let Some(done) = streams.join_next().await {
            let (rpc, status, send) = done??;
            answers.push((rpc, status));
            open._streams.push(send);
        }
    }
    Ok((answers, open))
}

/// How much the peak resident memory of `pid` grew past `before` (both in bytes); printed
/// with `what` caused it. The peak, not the memory now: a message buffered and freed again
/// leaves no trace in the resident memory at the end.
fn peak_growth(pid: u32, before: u64, what: &str) -> Result<(u64, u64)> {
    let after = memory_bytes(pid, "VmHWM")?;
    let growth = after.saturating_sub(before);
    eprintln!(
        "{what}: coordinator peak RSS {:.1} MB -> {:.1} MB (+{:.1} MB)",
        before as f64 / 1e6,
        after as f64 / 1e6,
        growth as f64 / 1e6
    );
    Ok((growth, after))
}

/// Issue 14, acceptance 2, and its per-RPC message limits ("small by default, large only for
/// the RPCs that carry chunks and only for callers allowed to stage"). 200 gRPC streams without
/// a known token, each sending a 16 MiB message, are refused from their headers before their
/// body is read: each is answered UNAUTHENTICATED, and the coordinator's memory barely moves
/// (flow control holds the rest of each message at the sender). They call unary RPCs
/// (BeginStage, SetContract, Seal), whose handlers see only a whole message: before the check
/// moved in front of the body, each waited for its 16 MiB. Then a viewer's 200 streams
/// announcing 16 MiB (UploadChunks, BeginStage, SetPolicy) are refused by the announced length,
/// and memory barely moves again; an operator's policy of 1 MiB is refused naming the RPC and
/// the limit, while the operator's staging of large items works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_refused_before_they_are_read_unless_the_caller_may_send_them()
-> Result<()> {
    let olga = new_user("olga", &["operator"]).await?;
    let vera = new_user("vera", &["viewer"]).await?;
    let dir = tempfile::tempdir()?;
    let auth = write_auth_file(dir.path(), &[&olga, &vera])?;
    let etcd = EtcdServer::start().await?;
    let coordinator = Coordinator::start_with(
        &etcd.endpoint(),
        &unique_prefix(),
        &["--auth", &auth, "--rate-limit-per-second", "0"],
    )
    .await?;
    let address = coordinator.grpc_addr();
    let before = memory_bytes(coordinator.pid(), "VmHWM")?;

    let made_up = "0123456789abcdef".repeat(4);
    let (answers, open_streams) =
        two_hundred_large_messages(address, &made_up, &["BeginStage", "SetContract", "Seal"])
            .await?;
    for (rpc, status) in answers {
        ensure!(
            status.as_deref() == Some("16"),
            "a {rpc} stream without a known token was answered {status:?}, not UNAUTHENTICATED (16)"
        );
    }
    let (growth, before) = peak_growth(
        coordinator.pid(),
        before,
        "200 unauthenticated streams sending 16 MiB each",
    )?;
    ensure!(
        growth < 50_000_000,
        "the coordinator grew by {growth} bytes"
    );
    drop(open_streams);

    let (answers, open_streams) = two_hundred_large_messages(
        address,
        &vera.token,
        &["UploadChunks", "BeginStage", "SetPolicy"],
    )
    .await?;
    for (rpc, status) in answers {
        // The viewer's upload is refused for its role (its first message, too large to read,
        // names no namespace); the unary RPCs by the size of their message.
        let expected = if rpc == "UploadChunks" { "7" } else { "8" };
        ensure!(
            status.as_deref() == Some(expected),
            "the viewer's {rpc} of 16 MiB was answered {status:?}, not {expected}"
        );
    }
    let (growth, _) = peak_growth(
        coordinator.pid(),
        before,
        "a viewer's 200 streams announcing 16 MiB each",
    )?;
    ensure!(
        growth < 50_000_000,
        "the coordinator grew by {growth} bytes"
    );
    drop(open_streams);

    // An operator may set policies, but not of a megabyte.
    let mut admin =
        switchboard_proto::pb::admin_client::AdminClient::connect(coordinator.grpc_url()).await?;
    let mut request = tonic::Request::new(switchboard_proto::pb::SetPolicyRequest {
        namespace: NS.into(),
        policy_json: format!("{{\"note\": \"{}\"}}", "x".repeat(1 << 20)),
        reason: "a large policy".into(),
        expected_policy_json: String::new(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", olga.token).parse()?);
    let refused = admin
        .set_policy(request)
        .await
        .err()
        .context("a policy of 1 MiB was accepted")?;
    ensure!(
        refused.code() == tonic::Code::ResourceExhausted
            && refused
                .message()
                .contains("SetPolicy takes messages of up to 262144 bytes"),
        "{refused:?}"
    );

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

/// An HTTP/1.1 request head cut off before its end.
const HALF_SENT_HTTP1: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ";

/// A gRPC connection's first bytes that never make a request: the HTTP/2 preface, empty
/// settings, and the first 9 bytes of a HEADERS frame whose payload never comes.
const HALF_SENT_HTTP2: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\x40\x01\x04\0\0\0\x01";

/// Opens `count` connections to `address` that each send `half_request` and nothing more,
/// while `call` makes a whole request on a new connection every 100 of them: every call must
/// be answered. Then waits until the server has closed the oldest of them (to make room) and
/// the newest (at its header timeout). Returns the slowest call.
async fn flood_with_half_sent_requests<F, Fut>(
    address: SocketAddr,
    count: usize,
    half_request: &[u8],
    mut call: F,
) -> Result<std::time::Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut held = Vec::with_capacity(count);
    let mut slowest = std::time::Duration::ZERO;
    for index in 0..count {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(half_request).await?;
        held.push(stream);
        if index % 100 == 99 {
            let started = std::time::Instant::now();
            tokio::time::timeout(std::time::Duration::from_secs(5), call())
                .await
                .with_context(|| {
                    format!("{address} stopped answering after {index} half-sent requests")
                })??;
            slowest = slowest.max(started.elapsed());
        }
    }
    closed_by_the_server(&mut held[0]).await?;
    let last = held.len() - 1;
    closed_by_the_server(&mut held[last]).await?;
    Ok(slowest)
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

/// Issue 14, acceptance 3, and "a connection cap on every HTTP and gRPC listener": with the
/// descriptor limit of the coordinator and of the sidecar at 1,024, 2,000 half-sent requests
/// against each of their four listeners in turn (HTTP/1.1 heads cut off on the HTTP ports;
/// the HTTP/2 preface and half a header block on the gRPC ports). Every listener keeps
/// answering whole requests on new connections all the while, and the half-sent ones are
/// closed (the oldest to make room, the rest after the header timeout of 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_the_apis_keep_answering() -> Result<()> {
    use switchboard_proto::pb;
    descriptors_for(2_500)?;
    let env = TestEnv::start(&[NS]).await?;
    stage_and_flip(&env, NS, &example("catalog-v1")).await?;
    let sidecar = env.start_sidecar("half-sent").await?;
    sidecar.wait_ready(DEADLINE).await?;
    for (name, pid) in [
        ("coordinator", env.coordinator.pid()),
        ("sidecar", sidecar.pid()),
    ] {
        let limited = tokio::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), "--nofile=1024:1024"])
            .status()
            .await
            .context("running prlimit (util-linux)")?;
        ensure!(limited.success(), "prlimit failed for the {name}");
    }

    for (name, address) in [
        ("coordinator", env.coordinator.http_addr()),
        ("sidecar", sidecar.http_addr()),
    ] {
        let healthz = || async move {
            let (code, body) = raw_http(address, &get("/healthz", "127.0.0.1")).await?;
            ensure!(code == 200, "{address}: {code} {body}");
            Ok(())
        };
        let slowest =
            flood_with_half_sent_requests(address, 2_000, HALF_SENT_HTTP1, healthz).await?;
        eprintln!(
            "{name} HTTP: 2,000 half-sent requests; the slowest whole request took {slowest:?}"
        );
    }

    let coordinator_url = env.coordinator.grpc_url();
    let status = || {
        let url = coordinator_url.clone();
        async move {
            let mut admin = pb::admin_client::AdminClient::connect(url).await?;
            let request = pb::StatusRequest {
                namespace: NS.into(),
            };
            admin.status(request).await?;
            Ok(())
        }
    };
    let slowest =
        flood_with_half_sent_requests(env.coordinator.grpc_addr(), 2_000, HALF_SENT_HTTP2, status)
            .await?;
    eprintln!(
        "coordinator gRPC: 2,000 half-sent requests; the slowest Status call took {slowest:?}"
    );

    let sidecar_url = sidecar.grpc_url();
    let read = || {
        let url = sidecar_url.clone();
        async move {
            let mut reader = pb::reader_client::ReaderClient::connect(url).await?;
            let request = pb::GetRequest {
                namespace: NS.into(),
                key: "schema_version".into(),
                consumer: "app-1".into(),
                ..Default::default()
            };
            reader.get(request).await?;
            Ok(())
        }
    };
    let slowest =
        flood_with_half_sent_requests(sidecar.grpc_addr(), 2_000, HALF_SENT_HTTP2, read).await?;
    eprintln!("sidecar gRPC: 2,000 half-sent requests; the slowest Get took {slowest:?}");
    Ok(())
}

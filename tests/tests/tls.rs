//! TLS on the coordinator's listeners (issue 5, acceptance 6, second half): with a client CA,
//! sbctl and HTTP clients get in only with a certificate that CA signed; without one, or with
//! one from another CA, or in plain text, the connection is refused.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switchboard_tests::{
    ChildProcess, EtcdServer, SbctlRunner, Sidecar, bin_path, free_port, unique_prefix, wait_until,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "catalog";

/// Runs openssl; its failure names the step.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (Debian: openssl)")?;
    ensure!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A new P-256 key in `NAME.key` and, with `-x509`, a self-signed certificate in `NAME.pem`,
/// else a request in `NAME.csr`.
fn new_key(dir: &Path, name: &str, self_signed: bool) -> Result<()> {
    let (key, subject) = (format!("{name}.key"), format!("/CN={name}"));
    let out = format!("{name}.{}", if self_signed { "pem" } else { "csr" });
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
    ];
    args.extend(["-nodes", "-keyout", &key, "-out", &out, "-subj", &subject]);
    if self_signed {
        args.extend(["-x509", "-days", "2"]);
    }
    openssl(dir, &args)
}

/// A CA: `CA.key` and `CA.pem`.
fn ca(dir: &Path, ca: &str) -> Result<()> {
    new_key(dir, ca, true)
}

/// A certificate that `ca` signs for `name`, for `usage` (serverAuth or clientAuth).
fn signed(dir: &Path, ca: &str, name: &str, usage: &str) -> Result<()> {
    new_key(dir, name, false)?;
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// One HTTP/1.1 GET over TLS, with a client certificate when given; the status code.
async fn https_get(dir: &Path, port: u16, path: &str, client: Option<&str>) -> Result<u16> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem"))? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))?
                    .collect::<Result<_, _>>()?;
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key")))?;
            builder.with_client_auth_cert(certs, key)?
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text}"))?;
    Ok(code)
}

/// A coordinator with TLS on both listeners (and a client CA when `client_ca`), its log in
/// `dir`; with its gRPC and HTTP ports.
fn start_coordinator(
    dir: &Path,
    etcd: &EtcdServer,
    client_ca: bool,
) -> Result<(ChildProcess, u16, u16)> {
    start_coordinator_on(dir, etcd, client_ca, &unique_prefix())
}

/// [`start_coordinator`] under `prefix`.
fn start_coordinator_on(
    dir: &Path,
    etcd: &EtcdServer,
    client_ca: bool,
    prefix: &str,
) -> Result<(ChildProcess, u16, u16)> {
    let (grpc_port, http_port) = (free_port()?, free_port()?);
    let mut command = std::process::Command::new(bin_path("switchboard-coordinator")?);
    command
        .args(["--etcd", &etcd.endpoint(), "--prefix", prefix])
        .args(["--listen", &format!("127.0.0.1:{grpc_port}")])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args([
            "--tls-cert",
            &file(dir, "server.pem"),
            "--tls-key",
            &file(dir, "server.key"),
        ])
        .current_dir(dir);
    if client_ca {
        command.args(["--tls-client-ca", &file(dir, "ca.pem")]);
    }
    let coordinator =
        ChildProcess::spawn_logged("coordinator", command, &dir.join("coordinator.log"))?;
    Ok((coordinator, grpc_port, http_port))
}

/// Issue 14, acceptance 1: connections that never start their TLS handshake stall nobody.
/// With 100 of them open on the HTTPS port (and 100 on the gRPC port), `/healthz` and `sbctl
/// status` still answer; before handshakes ran side by side, each idle connection held the
/// listener for the 10 s handshake timeout, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_stall_the_tls_listeners() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    ca(dir, "ca")?;
    signed(dir, "ca", "server", "serverAuth")?;
    let etcd = EtcdServer::start().await?;
    let (coordinator, grpc_port, http_port) = start_coordinator(dir, &etcd, false)?;
    let sbctl = SbctlRunner::new(&format!("https://127.0.0.1:{grpc_port}"))
        .timeout(Duration::from_secs(20))
        .env("SWITCHBOARD_TLS_CA", &file(dir, "ca.pem"));
    wait_until(DEADLINE, "the coordinator to answer over TLS", async || {
        Ok(https_get(dir, http_port, "/healthz", None).await? == 200)
    })
    .await
    .with_context(|| coordinator.log_tail(40))?;

    let mut idle = Vec::new();
    for port in [http_port, grpc_port] {
        for _ in 0..100 {
            idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
        }
    }
    // Each answer must come well inside one handshake timeout (10 s): a listener that waited
    // on the idle connections in turn would take 100 of them.
    let bound = Duration::from_secs(5);
    let mut healthz = Vec::new();
    for _ in 0..50 {
        let started = std::time::Instant::now();
        let code = tokio::time::timeout(bound, https_get(dir, http_port, "/healthz", None))
            .await
            .context("/healthz stalled behind idle connections")??;
        ensure!(code == 200, "/healthz answered {code}");
        healthz.push(started.elapsed());
    }
    let mut status = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(bound, sbctl.run(&["status", NS]))
            .await
            .context("sbctl status stalled behind idle connections")??;
        ensure!(answer.success(), "{answer}");
        status.push(started.elapsed());
    }
    healthz.sort();
    status.sort();
    eprintln!(
        "with 200 idle connections: /healthz p50 {:?}, p99 {:?}; sbctl status (a process each) p50 {:?}, max {:?}",
        healthz[healthz.len() / 2],
        healthz[healthz.len() * 99 / 100],
        status[status.len() / 2],
        status[status.len() - 1]
    );
    drop(idle);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_admits_only_clients_with_a_certificate_of_its_ca() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    ca(dir, "ca")?;
    signed(dir, "ca", "server", "serverAuth")?;
    signed(dir, "ca", "operator", "clientAuth")?;
    ca(dir, "rogue-ca")?;
    signed(dir, "rogue-ca", "rogue", "clientAuth")?;

    let etcd = EtcdServer::start().await?;
    let (coordinator, grpc_port, http_port) = start_coordinator(dir, &etcd, true)?;
    let url = format!("https://127.0.0.1:{grpc_port}");
    let with = |client: Option<&str>| {
        let mut runner = SbctlRunner::new(&url)
            .timeout(Duration::from_secs(20))
            .env("SWITCHBOARD_TLS_CA", &file(dir, "ca.pem"));
        if let Some(name) = client {
            runner = runner
                .env("SWITCHBOARD_TLS_CERT", &file(dir, &format!("{name}.pem")))
                .env("SWITCHBOARD_TLS_KEY", &file(dir, &format!("{name}.key")));
        }
        runner
    };
    let operator = with(Some("operator"));
    wait_until(DEADLINE, "the coordinator to answer over TLS", async || {
        Ok(operator.run(&["status", NS]).await?.success())
    })
    .await
    .with_context(|| coordinator.log_tail(40))?;

    let v1 = release(&operator, NS, dir, "g1", (10, 10)).await?;
    assert_eq!(
        status(&operator, NS).await?["active"]["version"],
        v1.as_str()
    );

    for (client, who) in [
        (None, "without a certificate"),
        (Some("rogue"), "with another CA's certificate"),
    ] {
        let refused = with(client).run(&["status", NS]).await?;
        ensure!(!refused.success(), "a client {who} got in:\n{refused}");
    }
    let plain = SbctlRunner::new(&format!("http://127.0.0.1:{grpc_port}"))
        .timeout(Duration::from_secs(20))
        .run(&["status", NS])
        .await?;
    ensure!(!plain.success(), "a plain-text client got in:\n{plain}");

    assert_eq!(
        https_get(dir, http_port, "/healthz", Some("operator")).await?,
        200
    );
    ensure!(
        https_get(dir, http_port, "/healthz", None).await.is_err(),
        "the HTTP listener admitted a client without a certificate"
    );
    ensure!(
        https_get(dir, http_port, "/healthz", Some("rogue"))
            .await
            .is_err(),
        "the HTTP listener admitted another CA's certificate"
    );
    Ok(())
}

/// Every etcd connection can speak TLS with a client certificate: an etcd that requires one
/// serves a coordinator and a sidecar that present theirs, and refuses a client that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_connections_use_tls_with_client_certificates() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    ca(dir, "ca")?;
    signed(dir, "ca", "etcd", "serverAuth")?;
    signed(dir, "ca", "switchboard", "clientAuth")?;
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let endpoint = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut command = std::process::Command::new(switchboard_tests::etcd_binary()?);
    command
        .args(["--name", "m0", "--data-dir", &file(dir, "etcd-data")])
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("m0={peer}")])
        .args([
            "--cert-file",
            &file(dir, "etcd.pem"),
            "--key-file",
            &file(dir, "etcd.key"),
        ])
        .args([
            "--client-cert-auth",
            "--trusted-ca-file",
            &file(dir, "ca.pem"),
        ])
        .args(["--logger", "zap", "--log-outputs", "stderr"]);
    let etcd = ChildProcess::spawn_logged("etcd", command, &dir.join("etcd.log"))?;
    let tls = |with_certificate: bool| -> Result<etcd_client::TlsOptions> {
        let mut options = etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(std::fs::read(dir.join("ca.pem"))?),
        );
        if with_certificate {
            options = options.identity(etcd_client::Identity::from_pem(
                std::fs::read(dir.join("switchboard.pem"))?,
                std::fs::read(dir.join("switchboard.key"))?,
            ));
        }
        Ok(options)
    };
    let connect = async |with_certificate: bool| -> Result<etcd_client::Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_tls(tls(with_certificate)?);
        Ok(etcd_client::Client::connect([endpoint.as_str()], Some(options)).await?)
    };
    wait_until(DEADLINE, "etcd to answer over TLS", async || {
        Ok(connect(true).await?.get("probe", None).await.is_ok())
    })
    .await
    .with_context(|| etcd.log_tail(30))?;
    let refused = match connect(false).await {
        Ok(mut client) => client.get("probe", None).await.is_err(),
        Err(_) => true,
    };
    ensure!(refused, "etcd served a client without a certificate");

    let prefix = unique_prefix();
    let certificate = [
        "--etcd-ca",
        &file(dir, "ca.pem"),
        "--etcd-cert",
        &file(dir, "switchboard.pem"),
        "--etcd-key",
        &file(dir, "switchboard.key"),
    ];
    let coordinator =
        switchboard_tests::Coordinator::start_with(&endpoint, &prefix, &certificate).await?;
    let sidecar =
        switchboard_tests::Sidecar::start_with(&endpoint, &prefix, "over-tls", &[NS], &certificate)
            .await?;
    let sbctl = coordinator.sbctl();
    let v1 = release(&sbctl, NS, dir, "g1", (10, 10)).await?;
    let epoch = epoch(&sbctl, NS).await?;
    sidecar.wait_for_epoch(NS, epoch, DEADLINE).await?;
    let answer = sidecar.get_item(NS, "items/k00001", None).await?;
    assert_eq!(answer.version.as_deref(), Some(v1.as_str()));

    // A coordinator with the CA but no client certificate gets nothing from etcd.
    let without = switchboard_tests::Coordinator::start_with(
        &endpoint,
        &prefix,
        &["--etcd-ca", &file(dir, "ca.pem")],
    )
    .await?;
    let refused = without.sbctl().run(&["status", NS]).await?;
    ensure!(
        !refused.success(),
        "a coordinator without a certificate read etcd:\n{refused}"
    );
    Ok(())
}

/// Issue 17: sidecars stream outcomes to a leader on https. The leader advertises its address
/// (`https://127.0.0.1:PORT`); a sidecar given its CA, and the name its certificate gives
/// (`--coordinator-tls-name localhost`), reaches the judge; a sidecar given another CA does
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_reach_a_leader_on_https_only_with_its_ca() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    ca(dir, "ca")?;
    signed(dir, "ca", "server", "serverAuth")?;
    ca(dir, "rogue-ca")?;
    let etcd = EtcdServer::start().await?;
    let prefix = unique_prefix();
    let (coordinator, grpc_port, _) = start_coordinator_on(dir, &etcd, false, &prefix)?;
    let sbctl = SbctlRunner::new(&format!("https://127.0.0.1:{grpc_port}"))
        .timeout(Duration::from_secs(20))
        .env("SWITCHBOARD_TLS_CA", &file(dir, "ca.pem"));
    wait_until(DEADLINE, "the coordinator to answer over TLS", async || {
        Ok(sbctl.run(&["status", NS]).await?.success())
    })
    .await
    .with_context(|| coordinator.log_tail(40))?;
    let v1 = release(&sbctl, NS, dir, "g1", (10, 10)).await?;
    let start = async |id: &str, ca: &str, extra: &[&str]| {
        let ca = file(dir, ca);
        let mut args = vec!["--coordinator-ca", ca.as_str()];
        args.extend_from_slice(extra);
        Sidecar::start_with(&etcd.endpoint(), &prefix, id, &[NS], &args).await
    };
    let trusted = start(
        "trusted",
        "ca.pem",
        &["--coordinator-tls-name", "localhost"],
    )
    .await?;
    let rogue = start("rogue", "rogue-ca.pem", &[]).await?;
    let epoch = epoch(&sbctl, NS).await?;
    for sidecar in [&trusted, &rogue] {
        sidecar.wait_for_epoch(NS, epoch, DEADLINE).await?;
        let (code, body) = sidecar.report(NS, &v1, 5, 1).await?;
        ensure!(code == 202, "the report answered {code}: {body}");
    }
    let reports_of = async |id: &str| -> Result<serde_json::Value> {
        let shown = status(&sbctl, NS).await?;
        Ok(shown["sidecars"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == id))
            .map(|s| s["reports"].clone())
            .unwrap_or_default())
    };
    wait_until(
        DEADLINE,
        "the trusted sidecar's outcomes at the leader",
        async || Ok(reports_of("trusted").await?[0]["ok"] == 5),
    )
    .await?;
    let rogue_reports = reports_of("rogue").await?;
    ensure!(
        rogue_reports.as_array().is_none_or(|r| r.is_empty()),
        "a sidecar that trusts another CA streamed to the leader: {rogue_reports}"
    );
    Ok(())
}

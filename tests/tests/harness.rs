//! Tests of the harness itself: ports, waiting, child processes, etcd (one member and a cluster)
//! and the TCP proxy. They need etcd on PATH and none of Switchboard's binaries.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use etcd_client::Client;
use switchboard_tests::etcd::connect;
use switchboard_tests::process::exit_code;
use switchboard_tests::{
    ChildProcess, EtcdCluster, EtcdServer, TcpProxy, bin_path, free_port, give_up, unique_prefix,
    wait_for, wait_until,
};

const SHORT: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(20);

/// The value of `key`, or `None`, with a 2 s timeout.
async fn get_value(client: &mut Client, key: &str) -> Result<Option<String>> {
    let response = tokio::time::timeout(Duration::from_secs(2), client.get(key, None))
        .await
        .with_context(|| format!("get {key} took over 2 s"))?
        .with_context(|| format!("get {key}"))?;
    match response.kvs().first() {
        Some(kv) => Ok(Some(
            kv.value_str().context("value is not UTF-8")?.to_string(),
        )),
        None => Ok(None),
    }
}

async fn put(client: &mut Client, key: &str, value: &str) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(2), client.put(key, value, None))
        .await
        .with_context(|| format!("put {key} took over 2 s"))?
        .with_context(|| format!("put {key}"))?;
    Ok(())
}

#[test]
fn free_ports_are_never_handed_out_twice() {
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let port = free_port().expect("a free port");
        assert!(port > 0);
        assert!(seen.insert(port), "port {port} was handed out twice");
    }
}

#[test]
fn a_missing_binary_names_the_build_command() {
    let error = bin_path("switchboard-no-such-binary").expect_err("no such binary");
    let message = format!("{error:#}");
    assert!(
        message.contains("binary switchboard-no-such-binary not found at"),
        "{message}"
    );
    assert!(
        message.contains("cargo build --workspace --bins"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_times_out_naming_what_and_the_last_state() {
    let mut checks = 0;
    let start = Instant::now();
    let error = wait_until(
        Duration::from_millis(300),
        "the moon to turn blue",
        async || {
            checks += 1;
            bail!("the moon is grey (check {checks})")
        },
    )
    .await
    .expect_err("the condition never holds");
    let message = format!("{error:#}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(message.contains("the moon to turn blue"), "{message}");
    assert!(message.contains("the moon is grey"), "{message}");
    assert!(checks > 2, "polled only {checks} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_abandons_a_check_that_hangs_at_the_deadline() {
    let start = Instant::now();
    let error = wait_until(Duration::from_millis(200), "a hanging check", async || {
        std::future::pending::<()>().await;
        Ok(true)
    })
    .await
    .expect_err("the check never finishes");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        format!("{error:#}").contains("still running at the deadline"),
        "{error:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn give_up_ends_a_wait_at_once_and_wait_for_returns_the_value() {
    let start = Instant::now();
    let error = wait_until(DEADLINE, "something impossible", async || {
        Err(give_up(anyhow!("the process exited")))
    })
    .await
    .expect_err("gave up");
    assert!(start.elapsed() < Duration::from_secs(5));
    let message = format!("{error:#}");
    assert!(message.contains("the process exited"), "{message}");
    assert!(
        message.contains("gave up waiting for something impossible"),
        "{message}"
    );

    let mut n = 0u32;
    let value = wait_for(DEADLINE, "n to reach 3", async || {
        n += 1;
        if n >= 3 {
            Ok(n * 10)
        } else {
            bail!("n is {n}")
        }
    })
    .await
    .expect("n reaches 3");
    assert_eq!(value, 30);
}

/// The state letter of a process from /proc (R, S, T for stopped, ...).
fn proc_state(pid: u32) -> Result<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(") ").context("malformed stat")?.1;
    after_name.chars().next().context("empty stat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_logs_pauses_terminates_and_dies_on_drop() {
    let mut command = Command::new("sh");
    command.args(["-c", "echo to-stdout; echo to-stderr >&2; exec sleep 60"]);
    let child = ChildProcess::spawn("sleeper", command).expect("sh starts");
    let pid = child.pid();
    wait_until(DEADLINE, "both lines in the log", async || {
        let log = child.log();
        Ok(log.contains("to-stdout") && log.contains("to-stderr"))
    })
    .await
    .expect("the output reaches the log");
    assert!(child.log_tail(2).contains("to-stderr"));

    child.pause().expect("SIGSTOP");
    wait_until(DEADLINE, "the process to be stopped", async || {
        Ok(proc_state(pid)? == 'T')
    })
    .await
    .expect("stopped");
    child.resume().expect("SIGCONT");
    wait_until(DEADLINE, "the process to run again", async || {
        Ok(proc_state(pid)? != 'T')
    })
    .await
    .expect("continued");

    // A paused process is terminated too (SIGTERM comes with SIGCONT).
    child.pause().expect("SIGSTOP");
    let status = child
        .terminate(DEADLINE)
        .await
        .expect("sleep exits on SIGTERM");
    assert_eq!(exit_code(status), 128 + 15);
    assert!(!child.is_running());
    assert!(
        child.pause().is_err(),
        "no signal goes to an exited process"
    );
    child
        .kill()
        .expect("killing an exited process does nothing");

    let mut command = Command::new("sleep");
    command.arg("60");
    let child = ChildProcess::spawn("sleeper-2", command).expect("sleep starts");
    let pid = child.pid();
    drop(child);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the process survived the drop of its handle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keeps_its_data_across_kill_stop_and_restart() {
    let etcd = EtcdServer::start().await.expect("etcd starts");
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    let key = format!("{}/survivor", unique_prefix());
    let mut client = etcd.client().await.expect("client");
    put(&mut client, &key, "v1").await.expect("put");
    assert_eq!(
        get_value(&mut client, &key).await.expect("get").as_deref(),
        Some("v1")
    );

    let first_pid = etcd.pid();
    etcd.kill().expect("SIGKILL");
    assert!(!etcd.process().is_running());
    etcd.restart()
        .await
        .expect("etcd restarts on the same ports and data dir");
    assert_ne!(etcd.pid(), first_pid);
    let mut client = etcd.client().await.expect("client");
    assert_eq!(
        get_value(&mut client, &key).await.expect("get").as_deref(),
        Some("v1")
    );

    put(&mut client, &key, "v2").await.expect("put");
    etcd.stop().await.expect("etcd exits on SIGTERM");
    assert!(!etcd.process().is_running());
    etcd.restart().await.expect("etcd restarts after a stop");
    let mut client = etcd.client().await.expect("client");
    assert_eq!(
        get_value(&mut client, &key).await.expect("get").as_deref(),
        Some("v2")
    );
    assert!(
        etcd.log_tail(1000)
            .contains("===== harness: starting etcd m0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_etcd_does_not_answer_until_resumed() {
    let etcd = EtcdServer::start().await.expect("etcd starts");
    let key = format!("{}/paused", unique_prefix());
    let mut client = etcd.client().await.expect("client");
    put(&mut client, &key, "here").await.expect("put");

    etcd.pause().expect("SIGSTOP");
    let answer = tokio::time::timeout(SHORT, client.get(key.as_str(), None)).await;
    assert!(answer.is_err(), "a paused etcd answered: {answer:?}");

    etcd.resume().expect("SIGCONT");
    let value = wait_for(DEADLINE, "a get after resume", async || {
        get_value(&mut client, &key).await
    })
    .await
    .expect("etcd answers again");
    assert_eq!(value.as_deref(), Some("here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_survives_the_loss_of_its_leader() {
    let cluster = EtcdCluster::start(3).await.expect("the cluster starts");
    assert_eq!(cluster.endpoints().len(), 3);
    assert_eq!(cluster.endpoints_csv().split(',').count(), 3);
    let key = format!("{}/quorum", unique_prefix());
    let mut client = cluster.client().await.expect("client");
    put(&mut client, &key, "before").await.expect("put");

    let leader = cluster.leader_index().await.expect("a leader");
    cluster.member(leader).kill().expect("SIGKILL the leader");
    wait_until(
        DEADLINE,
        "a put to succeed without the old leader",
        async || put(&mut client, &key, "after").await.map(|()| true),
    )
    .await
    .expect("the two others elect a leader and take writes");

    cluster
        .member(leader)
        .restart()
        .await
        .expect("the old leader rejoins");
    let mut rejoined = cluster.member(leader).client().await.expect("client");
    let value = wait_for(
        DEADLINE,
        "the rejoined member to read the new value",
        async || match get_value(&mut rejoined, &key).await? {
            Some(value) if value == "after" => Ok(value),
            other => bail!("read {other:?}"),
        },
    )
    .await
    .expect("the rejoined member catches up");
    assert_eq!(value, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_delays_blackholes_and_cuts_etcd_traffic() {
    let etcd = EtcdServer::start().await.expect("etcd starts");
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, etcd.client_port()));
    let proxy = TcpProxy::start(upstream).await.expect("the proxy starts");
    assert_eq!(proxy.upstream(), upstream);
    assert_eq!(proxy.url(), format!("http://{}", proxy.addr()));
    let key = format!("{}/proxied", unique_prefix());
    let mut client = connect(&[proxy.url()])
        .await
        .expect("client through the proxy");
    put(&mut client, &key, "through")
        .await
        .expect("put through the proxy");
    assert_eq!(
        get_value(&mut client, &key).await.expect("get").as_deref(),
        Some("through")
    );
    assert!(proxy.connection_count() >= 1);

    // Latency: a request and its answer cross the proxy at least once each.
    proxy.set_delay(Duration::from_millis(150));
    let start = Instant::now();
    get_value(&mut client, &key)
        .await
        .expect("get with latency");
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "took {:?}",
        start.elapsed()
    );
    proxy.set_delay(Duration::ZERO);

    // A black hole: requests hang, connections stay open; lifting it recovers.
    proxy.blackhole(true);
    assert!(proxy.is_blackholed());
    let answer = tokio::time::timeout(SHORT, client.get(key.as_str(), None)).await;
    assert!(answer.is_err(), "a get crossed the black hole: {answer:?}");
    assert!(
        proxy.connection_count() >= 1,
        "the black hole closed the connection"
    );
    proxy.blackhole(false);
    let value = wait_for(DEADLINE, "a get after lifting the black hole", async || {
        get_value(&mut client, &key).await
    })
    .await
    .expect("the proxy forwards again");
    assert_eq!(value.as_deref(), Some("through"));

    // A cut closes the connections; the client reconnects through the proxy.
    proxy.cut();
    wait_until(DEADLINE, "a get after the cut", async || {
        Ok(get_value(&mut client, &key).await?.as_deref() == Some("through"))
    })
    .await
    .expect("the client reconnects");

    // Dropping the proxy stops it: nothing reaches etcd through that address any more.
    drop(proxy);
    wait_until(
        DEADLINE,
        "gets to fail once the proxy is gone",
        async || Ok(get_value(&mut client, &key).await.is_err()),
    )
    .await
    .expect("the proxy's tasks stopped");
    let mut direct = etcd.client().await.expect("direct client");
    assert_eq!(
        get_value(&mut direct, &key)
            .await
            .expect("direct get")
            .as_deref(),
        Some("through")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_wait_in_the_black_hole() {
    let etcd = EtcdServer::start().await.expect("etcd starts");
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, etcd.client_port()));
    let proxy = TcpProxy::start(upstream).await.expect("the proxy starts");
    proxy.blackhole(true);
    let key = format!("{}/late", unique_prefix());
    let mut client = connect(&[proxy.url()])
        .await
        .expect("client through the proxy");
    let answer = tokio::time::timeout(SHORT, client.put(key.as_str(), "late", None)).await;
    assert!(answer.is_err(), "a put crossed the black hole: {answer:?}");
    proxy.blackhole(false);
    wait_until(DEADLINE, "a put after lifting the black hole", async || {
        put(&mut client, &key, "late").await.map(|()| true)
    })
    .await
    .expect("the held connection goes through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_that_exits_early_fails_at_once_with_its_log() {
    let start = Instant::now();
    let error = EtcdServer::start_with(&["--no-such-flag"])
        .await
        .expect_err("etcd refuses the flag");
    let message = format!("{error:#}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(message.contains("exited"), "{message}");
    assert!(
        message.contains("no-such-flag"),
        "the log tail is missing: {message}"
    );
}

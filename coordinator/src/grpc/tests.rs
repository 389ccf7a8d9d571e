//! The unit tests of `grpc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{Layer, Service, ServiceExt};

use super::*;

/// gRPC messages (a compression flag, the length, the body) of these lengths, one after
/// the other.
fn messages(lengths: &[u32]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for &length in lengths {
        bytes.push(0);
        bytes.extend(length.to_be_bytes());
        bytes.resize(bytes.len() + length as usize, 7);
    }
    bytes
}

#[test]
fn messages_are_refused_by_the_length_they_announce() {
    let within = messages(&[0, 10, 3, 10]);
    let mut over = within.clone();
    over.extend(messages(&[11]));
    for piece in [1, 2, 4, 5, 6, 15, 100] {
        let mut body = LimitedMessages::new((), Rpc::SetPolicy, 10);
        for data in within.chunks(piece) {
            body.read(data).expect("messages within the limit pass");
        }
        let mut body = LimitedMessages::new((), Rpc::SetPolicy, 10);
        // The refusal comes with the piece that completes the long message's prefix,
        // before any of its body.
        let refused_at = over
            .chunks(piece)
            .position(|data| body.read(data).is_err())
            .expect("a message over the limit is refused");
        assert_eq!(
            refused_at,
            (within.len() + 5).div_ceil(piece) - 1,
            "in pieces of {piece}"
        );
    }
    let mut body = LimitedMessages::new((), Rpc::SetPolicy, 10);
    let refused = body.read(&over).expect_err("too large");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "SetPolicy takes messages of up to 10 bytes from this caller; this one announces 11 bytes"
    );
}

#[test]
fn only_the_rpcs_that_carry_sets_take_large_messages_and_only_from_their_callers() {
    for rpc in Rpc::ALL {
        assert_eq!(message_limit(rpc, false), SMALL_MESSAGE_BYTES, "{rpc:?}");
        let allowed = message_limit(rpc, true);
        match rpc {
            Rpc::BeginStage | Rpc::UploadChunks => assert_eq!(allowed, MAX_MESSAGE_BYTES),
            Rpc::SetContract | Rpc::GetChunks => {
                assert!(allowed > SMALL_MESSAGE_BYTES && allowed < 2 * 1024 * 1024)
            }
            _ => assert_eq!(allowed, SMALL_MESSAGE_BYTES, "{rpc:?}"),
        }
    }
}

/// An admission with `--auth` and one operator, bob, whose token is "bob-token". Its store
/// points at no etcd: the first look at a request touches none.
async fn admission() -> Admission {
    let text = format!(
        "users:\n  - {{name: bob, roles: [operator], token_sha256: \"{}\"}}\n",
        switchboard_proto::set::sha256_hex(b"bob-token")
    );
    let users = crate::auth::Users::parse(&text).expect("parses");
    let client = switchboard_runtime::connect_etcd(&["http://127.0.0.1:9".to_string()])
        .await
        .expect("a lazy client");
    let store = crate::store::Store::new(client, switchboard_proto::Keys::new("/t"));
    Admission::new(Some(users), Releases::new(store))
}

/// Thousands of sidecars share one reporter credential: their outcome streams are counted
/// by each sidecar's address, so that a fleet that reconnects to a new leader at once is
/// not refused as one caller. Every other RPC is counted by the user, from wherever.
#[tokio::test]
async fn outcome_streams_are_rate_limited_by_address_and_the_rest_by_user() {
    use crate::limits::{Rate, RateLimiter};
    let admission = admission().await.with_rate_limit(RateLimiter::new(Rate {
        per_second: 0.001,
        burst: 1.0,
    }));
    let from = |host: u8| crate::auth::Credentials {
        authorization: Some("Bearer bob-token".into()),
        claimed_actor: None,
        peer: Some(std::net::IpAddr::from([10, 0, 0, host])),
    };
    admission
        .limit(&from(1), Rpc::ReportOutcomes)
        .expect("the first stream from 10.0.0.1");
    admission
        .limit(&from(2), Rpc::ReportOutcomes)
        .expect("a stream from another sidecar, with the same credential");
    assert!(
        admission.limit(&from(1), Rpc::ReportOutcomes).is_err(),
        "a second stream from 10.0.0.1 within the allowance"
    );
    admission
        .limit(&from(3), Rpc::Status)
        .expect("bob's first status");
    assert!(
        admission.limit(&from(4), Rpc::Status).is_err(),
        "bob's second status, from another address"
    );
}

/// The service behind the layer counts the requests that reach it; it never reads a body.
fn counted(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    axum::http::Request<tonic::body::Body>,
    Response = axum::http::Response<tonic::body::Body>,
    Error = std::convert::Infallible,
    Future = futures::future::Ready<
        Result<axum::http::Response<tonic::body::Body>, std::convert::Infallible>,
    >,
> + Clone {
    tower::service_fn(move |_request: axum::http::Request<tonic::body::Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        futures::future::ready(Ok(axum::http::Response::new(tonic::body::Body::empty())))
    })
}

fn request(path: &str, token: Option<&str>) -> axum::http::Request<tonic::body::Body> {
    let mut builder = axum::http::Request::builder().uri(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(tonic::body::Body::empty()).expect("a request")
}

#[tokio::test]
async fn a_caller_without_a_known_token_never_reaches_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = AuthenticateFirstLayer::new(admission().await, InFlight::default())
        .layer(counted(calls.clone()));
    for token in [None, Some("made-up"), Some("BOB-TOKEN")] {
        let answer = ServiceExt::<axum::http::Request<tonic::body::Body>>::ready(&mut service)
            .await
            .expect("ready")
            .call(request("/switchboard.v1.Admin/BeginStage", token))
            .await
            .expect("an answer");
        let status = answer
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok());
        assert_eq!(status, Some("16"), "{token:?}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a refused request reached the service"
    );
    // A known token, and paths outside the admin service, go on to the service.
    for (path, token) in [
        ("/switchboard.v1.Admin/BeginStage", Some("bob-token")),
        ("/grpc.health.v1.Health/Check", None),
    ] {
        let answer = ServiceExt::<axum::http::Request<tonic::body::Body>>::ready(&mut service)
            .await
            .expect("ready")
            .call(request(path, token))
            .await
            .expect("an answer");
        assert!(answer.headers().get("grpc-status").is_none(), "{path}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn every_admin_rpc_is_known_by_its_path() {
    for rpc in Rpc::ALL {
        let path = format!("/switchboard.v1.Admin/{}", rpc.name());
        assert_eq!(rpc_of_path(&path), Some(rpc));
    }
    assert_eq!(rpc_of_path("/switchboard.v1.Reader/Get"), None);
    assert_eq!(rpc_of_path("/switchboard.v1.Admin/Nothing"), None);
}

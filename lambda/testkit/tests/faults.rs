//! [`FaultProxy`]'s contract, spoken to in plain HTTP/1.1: it forwards to moto unchanged,
//! fails exactly the requests its rules name (without reaching moto), counts them, and
//! is gone once dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use peerless_testkit::faults::{Fault, FaultError, FaultProxy, FaultRule, Method};
use peerless_testkit::moto::MotoServer;

fn addr(endpoint: &str) -> SocketAddr {
    endpoint.strip_prefix("http://").unwrap().parse().unwrap()
}

/// A signature-shaped `Authorization` header: moto serves private objects to any signed
/// request without checking the signature, and refuses anonymous reads (403).
const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
    SignedHeaders=host, Signature=0";

/// One request over a fresh connection: `Ok((status, body))`, or the I/O error when the
/// connection ends without an answer.
fn http(endpoint: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let addr = addr(endpoint);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\
         Authorization: {AUTHORIZATION}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

#[test]
fn the_proxy_forwards_to_moto_and_injects_exactly_what_its_rules_say() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    let proxy = FaultProxy::start(moto.endpoint()).unwrap_or_else(|e| panic!("{e}"));
    let p = proxy.endpoint();
    assert_ne!(p, moto.endpoint());
    assert_eq!(proxy.upstream(), moto.endpoint());

    // Unchanged forwarding.
    assert_eq!(http(p, "PUT", "/proxied", "").unwrap().0, 200);
    assert_eq!(
        http(p, "PUT", "/proxied/a/key.bin", "hello").unwrap().0,
        200
    );
    assert_eq!(
        http(p, "GET", "/proxied/a/key.bin", "").unwrap(),
        (200, "hello".to_owned())
    );
    assert_eq!(proxy.requests(), 3);
    assert_eq!(proxy.injected(), 0);

    // Two throttled GETs of that key, then it passes again; other requests pass all along.
    let slow = proxy.fail_next(
        FaultRule::status(503, 2)
            .method(Method::GET)
            .path_contains("a/key.bin"),
    );
    assert_eq!(slow.remaining(), 2);
    assert_eq!(http(p, "HEAD", "/proxied/a/key.bin", "").unwrap().0, 200);
    for _ in 0..2 {
        let (status, body) = http(p, "GET", "/proxied/a/key.bin", "").unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
        assert!(body.contains("/proxied/a/key.bin"), "{body}");
    }
    assert_eq!(
        http(p, "GET", "/proxied/a/key.bin", "").unwrap(),
        (200, "hello".to_owned())
    );
    assert_eq!((slow.injected(), slow.remaining()), (2, 0));

    // An injected 500 on a PUT never reaches moto: the old object stays.
    let put = proxy.fail_next(FaultRule::status(500, 1).method(Method::PUT));
    let (status, body) = http(p, "PUT", "/proxied/a/key.bin", "replaced").unwrap();
    assert_eq!(status, 500);
    assert!(body.contains("<Code>InternalError</Code>"), "{body}");
    assert_eq!(
        http(moto.endpoint(), "GET", "/proxied/a/key.bin", "").unwrap(),
        (200, "hello".to_owned())
    );
    assert_eq!(put.injected(), 1);

    // A dropped connection: no answer at all.
    let drop_one = proxy.fail_next(FaultRule::new(Fault::Disconnect, 1));
    let err = http(p, "GET", "/proxied/a/key.bin", "");
    assert!(err.is_err(), "{err:?}");
    assert_eq!(drop_one.injected(), 1);

    // A delay holds the request, then forwards it.
    proxy.fail_next(FaultRule::new(Fault::Delay(Duration::from_millis(400)), 1));
    let start = Instant::now();
    assert_eq!(http(p, "GET", "/proxied/a/key.bin", "").unwrap().0, 200);
    assert!(start.elapsed() >= Duration::from_millis(400));

    // Cleared rules inject nothing more.
    let unused = proxy.fail_next(FaultRule::status(503, 5));
    proxy.clear_rules();
    assert_eq!(http(p, "GET", "/proxied/a/key.bin", "").unwrap().0, 200);
    assert_eq!(unused.injected(), 0);

    // The log holds every request with its outcome.
    let log = proxy.log();
    let statuses: Vec<(Option<u16>, bool)> = log.iter().map(|s| (s.status, s.injected)).collect();
    assert_eq!(
        statuses,
        [
            (Some(200), false),
            (Some(200), false),
            (Some(200), false),
            (Some(200), false),
            (Some(503), true),
            (Some(503), true),
            (Some(200), false),
            (Some(500), true),
            (None, true),
            (Some(200), true),
            (Some(200), false),
        ]
    );
    assert_eq!(log[4].method, Method::GET);
    assert_eq!(log[4].path, "/proxied/a/key.bin");
    assert_eq!(proxy.injected(), 5);

    let proxy_addr = addr(p);
    drop(proxy);
    assert!(TcpStream::connect_timeout(&proxy_addr, Duration::from_secs(1)).is_err());
}

#[test]
fn bad_upstreams_are_refused_and_a_dead_upstream_answers_502() {
    for (upstream, reason) in [
        ("ftp://127.0.0.1:21", "only http://"),
        ("http://127.0.0.1:9/some/path", "no path"),
        ("not a url", "not a URL"),
    ] {
        let err = FaultProxy::start(upstream).unwrap_err();
        assert!(matches!(err, FaultError::InvalidUpstream { .. }), "{err}");
        assert!(err.to_string().contains(reason), "{upstream}: {err}");
    }
    // Nothing listens on the upstream: the proxy answers 502 naming it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = FaultProxy::start(&format!("http://127.0.0.1:{port}")).unwrap();
    let (status, body) = http(proxy.endpoint(), "GET", "/x", "").unwrap();
    assert_eq!(status, 502);
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
}

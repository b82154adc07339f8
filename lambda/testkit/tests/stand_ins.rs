//! The stand-ins' own contract: each starts on a free loopback port, answers there, and is
//! gone once the value is dropped (so a test that panics leaves no server behind).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use peerless_testkit::emulator::{Emulator, EmulatorError, FunctionConfig};
use peerless_testkit::moto::MotoServer;

/// The `127.0.0.1:PORT` of an `http://127.0.0.1:PORT` endpoint.
fn addr(endpoint: &str) -> SocketAddr {
    let addr = endpoint
        .strip_prefix("http://")
        .expect("an http:// endpoint");
    addr.parse().expect("an IP address and port")
}

fn listens(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[test]
fn moto_serves_control_requests_and_stops_on_drop() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    let addr = addr(moto.endpoint());
    assert!(addr.ip().is_loopback(), "{addr}");
    moto.enable_stepfunctions_execution()
        .unwrap_or_else(|e| panic!("{e}\n{}", moto.log()));
    moto.create_bucket("peerless-testkit")
        .unwrap_or_else(|e| panic!("{e}\n{}", moto.log()));
    moto.reset()
        .unwrap_or_else(|e| panic!("{e}\n{}", moto.log()));
    assert!(moto.log().contains("/moto-api/reset"), "{}", moto.log());
    drop(moto);
    assert!(!listens(addr), "moto still listens on {addr} after drop");
}

#[test]
fn emulator_names_its_urls_rejects_bad_names_and_stops_on_drop() {
    let mut emulator = Emulator::start().unwrap_or_else(|e| panic!("{e}"));
    let addr = addr(emulator.endpoint());
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(
        emulator.invocation_url("f"),
        format!("http://{addr}/2015-03-31/functions/f/invocations")
    );
    assert_eq!(emulator.runtime_api("f"), format!("http://{addr}/.rt/f"));
    for name in ["", "a/b", "a b", &"x".repeat(65)] {
        let config = FunctionConfig::new(name, "/nonexistent");
        match emulator.start_function(&config) {
            Err(EmulatorError::InvalidName(n)) => assert_eq!(n, name),
            other => panic!("{name:?}: expected InvalidName, got {other:?}"),
        }
    }
    assert!(listens(addr), "{}", emulator.logs());
    drop(emulator);
    assert!(
        !listens(addr),
        "the emulator still listens on {addr} after drop"
    );
}

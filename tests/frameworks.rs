//! The framework examples (`examples/axum.rs`, `examples/tower.rs`): an axum `Router` with state
//! and a plain tower service, served by octopus, answer, shut down and upgrade gracefully. The
//! axum example needs the `axum` feature: `cargo test --features axum` runs its tests.

mod support;

use rustix::process::Signal;
use support::*;

fn start(example: &str, extra: &[&str]) -> Hello {
    let mut args = vec!["-h", "127.0.0.1", "-p", "0"];
    args.extend_from_slice(extra);
    Hello::start_example(example, &args)
}

fn answer(port: u16, path: &str) -> (u16, String) {
    let reply = get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (reply.status, reply.body)
}

/// SIGHUP: a new process serves the same port, the old one exits 0.
fn hup_upgrades(example: &str) {
    let mut server = start(example, &[]);
    let port = server.port();
    let old = server.first_pid();
    assert_eq!(pid_answering(port), old);
    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    assert!(
        server.wait_first_exit().success(),
        "the old process exits 0"
    );
    assert_eq!(pid_answering(port), new);
    assert_eq!(answer(port, "/ping"), (200, "pong\n".into()));
}

#[cfg(feature = "axum")]
#[test]
fn axum_routes_answer_with_shared_state() {
    let server = start("axum", &[]);
    let port = server.port();
    assert_eq!(answer(port, "/ping"), (200, "pong\n".into()));
    assert_eq!(pid_answering(port), server.first_pid());
    assert_eq!(answer(port, "/ready"), (200, "ready\n".into()));
    // Every request so far went through the counting middleware, each on its own connection.
    let (status, hits) = answer(port, "/hits");
    assert_eq!((status, hits.trim()), (200, "4"));
    assert_eq!(answer(port, "/hits").1.trim(), "5");
    assert_eq!(answer(port, "/nowhere").0, 404);
}

#[cfg(feature = "axum")]
#[test]
fn axum_pre_drain_reports_draining_while_still_serving_then_exits_0() {
    // Two seconds of pre-drain: room for the requests below on a loaded machine.
    let mut server = start("axum", &["--pre-drain", "2"]);
    let port = server.port();
    assert_eq!(answer(port, "/ready").0, 200);

    let asked = std::time::Instant::now();
    signal(server.first_pid(), Signal::TERM);
    server.wait_for(&["graceful shutdown started; still accepting"]);
    assert_eq!(answer(port, "/ready"), (503, "draining\n".into()));
    assert_eq!(
        answer(port, "/ping"),
        (200, "pong\n".into()),
        "new connections are still served during the pre-drain"
    );
    // The pre-drain starts after the signal, so it was still on for the requests above; the log
    // could not tell, as its "pre-drain over" line may not have been read yet.
    assert!(
        asked.elapsed().as_secs_f64() < 2.0,
        "the requests above must fall within the pre-drain for this test to mean anything"
    );

    assert!(server.wait_first_exit().success());
    assert!(
        asked.elapsed().as_secs_f64() >= 2.0,
        "exited before the pre-drain ended"
    );
    server.wait_for(&["pre-drain over"]);
    assert!(get(port, "/ping").is_err(), "the listener is closed");
}

#[cfg(feature = "axum")]
#[test]
fn axum_connect_info_answers_the_client_address() {
    let server = start("axum", &[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let client = stream.local_addr().unwrap();
    let reply = get_on(&mut stream, "/ip").unwrap();
    assert_eq!(
        (reply.status, reply.body),
        (200, format!("{client}\n")),
        "a plain Router's ConnectInfo<SocketAddr> extractor gets the client's address"
    );
}

#[cfg(feature = "axum")]
#[test]
fn axum_hup_upgrades_on_the_same_port() {
    hup_upgrades("axum");
}

#[test]
fn tower_service_answers() {
    let server = start("tower", &[]);
    let port = server.port();
    assert_eq!(answer(port, "/ping"), (200, "pong\n".into()));
    assert_eq!(pid_answering(port), server.first_pid());
    assert_eq!(answer(port, "/nowhere").0, 404);
}

#[test]
fn tower_hup_upgrades_on_the_same_port() {
    hup_upgrades("tower");
}

#[test]
fn tower_term_exits_0() {
    let mut server = start("tower", &[]);
    let port = server.port();
    assert_eq!(answer(port, "/ping").0, 200);
    signal(server.first_pid(), Signal::TERM);
    assert!(server.wait_first_exit().success());
    server.wait_for(&["server shut down"]);
}

//! The library used in-process: an axum `Router` served as is, driven by a `Handle`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use octopus::{Config, Octopus, Server};

fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_router_is_served_as_is_and_shut_down_by_a_handle() {
    let config = Config::new()
        .handle_signals(false)
        .drain_timeout(Duration::from_secs(2));
    let octopus = Octopus::new(config.clone()).unwrap();
    let listener = octopus.listen_tcp("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = octopus.handle();
    let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong\n" }));
    let server = tokio::spawn(
        Server::new(config)
            .octopus(octopus)
            .listener(listener)
            .serve(app),
    );

    let reply = tokio::task::spawn_blocking(move || get(port, "/ping"))
        .await
        .unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("pong\n"),
        "{reply}"
    );
    assert!(!handle.is_stopping());

    handle.shutdown();
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops after a shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(report.cut, 0);
    assert!(handle.is_stopping());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn a_listener_without_its_octopus_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = axum::Router::new();
    let err = Server::new(Config::new())
        .listener(listener)
        .serve(app)
        .await
        .unwrap_err();
    assert!(
        matches!(err, octopus::Error::ListenerWithoutOctopus),
        "{err}"
    );
}

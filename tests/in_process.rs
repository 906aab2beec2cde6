//! The library used in-process: an axum `Router` served as is, driven by a `Handle`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use octopus::{DrainReport, Handle, HttpService, Octopus, Server};

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

/// A server running in this process on a free port, with signals off, driven by its handle.
struct Running {
    port: u16,
    handle: Handle,
    server: tokio::task::JoinHandle<Result<DrainReport, octopus::Error>>,
}

/// The process's one `Octopus`, once the test running beside this one has dropped its own.
fn only_octopus() -> Octopus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match Octopus::builder().handle_signals(false).build() {
            Err(octopus::Error::SecondInstance) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            made => return made.unwrap(),
        }
    }
}

/// Serves `service` (signals off); `adjust` sets server options.
fn start<S: HttpService>(
    adjust: impl FnOnce(Server<Octopus>) -> Server<Octopus>,
    service: S,
) -> Running {
    let octopus = only_octopus();
    let listener = octopus.listen_tcp("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = octopus.handle();
    let server = adjust(octopus.server().listener(listener));
    Running {
        port,
        handle,
        server: tokio::spawn(server.serve(service)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_router_is_served_as_is_and_shut_down_by_a_handle() {
    let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong\n" }));
    let Running {
        port,
        handle,
        server,
    } = start(|s| s.drain_timeout(Duration::from_secs(2)), app);

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

/// An HTTP upgrade to an echo protocol, as a WebSocket server would do it.
async fn upgrade_to_echo(
    mut request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Empty<bytes::Bytes>>, std::convert::Infallible> {
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let (mut reader, mut writer) = tokio::io::split(io);
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
    });
    let mut response = http::Response::new(http_body_util::Empty::new());
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    response
        .headers_mut()
        .insert("upgrade", "echo".parse().unwrap());
    response
        .headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_are_counted_in_the_drain_and_cut_at_the_deadline() {
    let drain_timeout = Duration::from_millis(700);
    let service = tower::service_fn(upgrade_to_echo);
    let Running {
        port,
        handle,
        server,
    } = start(|s| s.drain_timeout(drain_timeout), service);

    let client = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        stream.write_all(b"hi").unwrap();
        let mut echoed = [0u8; 2];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"hi");
        stream
    });
    let mut stream = client.await.unwrap();

    let started = std::time::Instant::now();
    handle.shutdown();
    let ended = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        let result = stream.read_to_end(&mut rest);
        (
            result.is_err() || rest.is_empty(),
            std::time::Instant::now(),
        )
    });
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (closed, at) = ended.await.unwrap();
    assert!(closed, "the upgraded connection is closed");
    let waited = at.duration_since(started);
    assert!(
        waited >= drain_timeout,
        "the drain waited for the upgraded connection ({waited:?})"
    );
    assert!(
        waited < drain_timeout + Duration::from_millis(500),
        "and cut it at the deadline ({waited:?})"
    );
    assert_eq!(report.cut, 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_closes_a_slow_loris_connection() {
    closed_at_the_header_read_timeout(b"GET /ping HTTP/1.1\r\nHos").await;
}

/// The protocol is not known until the preface is whole or leaves it: the wait is bounded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_closes_a_connection_stalled_in_the_http2_preface() {
    closed_at_the_header_read_timeout(b"PRI * HTTP/2.0\r\n").await;
}

/// Asserts that a client that sends `sent` and then nothing is closed at the header-read
/// timeout (300 ms).
async fn closed_at_the_header_read_timeout(sent: &'static [u8]) {
    let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong\n" }));
    let slow_loris = |s: Server<Octopus>| s.header_read_timeout(Duration::from_millis(300));
    let Running {
        port,
        handle,
        server,
    } = start(slow_loris, app);
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(sent).unwrap();
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(
        closed_after >= Duration::from_millis(250) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
    handle.shutdown();
    server.await.unwrap().unwrap();
}

/// A connection of a raw protocol: writes `hello`, then ends when the drain starts, or never if
/// it is the one that does not listen.
async fn greet(mut socket: tokio::net::TcpStream, draining: octopus::Draining, listens: bool) {
    use tokio::io::AsyncWriteExt;
    socket.write_all(b"hello\n").await.unwrap();
    if listens {
        draining.wait().await;
        let _ = socket.write_all(b"bye\n").await;
    } else {
        std::future::pending::<()>().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_any_protocol_drain_and_report_what_finished_and_what_was_cut() {
    let octopus = only_octopus();
    let listener = octopus.listen_tcp("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = octopus.handle();
    let drain_timeout = Duration::from_millis(500);
    // The first connection listens to the drain; the second does not, and is cut.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn(
        octopus
            .connections(listener)
            .drain_timeout(drain_timeout)
            .serve(move |socket, peer, draining| {
                assert!(peer.ip().is_loopback(), "{peer}");
                let first = accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                greet(socket, draining, first)
            }),
    );
    drop(octopus);
    let connect = |port| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hello = [0u8; 6];
        stream.read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"hello\n");
        stream
    };
    let (mut listening, mut deaf) =
        tokio::task::spawn_blocking(move || (connect(port), connect(port)))
            .await
            .unwrap();

    let started = std::time::Instant::now();
    handle.shutdown();
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the drain ends at its deadline")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= drain_timeout, "{report:?}");
    assert_eq!(
        (report.open_at_start, report.finished, report.cut),
        (2, 1, 1),
        "{report:?}"
    );
    let mut rest = String::new();
    listening.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
    let mut rest = Vec::new();
    let cut = deaf.read_to_end(&mut rest);
    assert!(
        cut.is_err() || rest.is_empty(),
        "cut without a word: {rest:?}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_on_a_unix_socket_are_served_and_drained() {
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let octopus = only_octopus();
    let listener = octopus.listen_unix(&path, None).unwrap();
    let handle = octopus.handle();
    let server = tokio::spawn(octopus.connections(listener).serve(
        |socket, peer: tokio::net::unix::SocketAddr, draining| {
            assert!(peer.is_unnamed(), "a client that did not bind: {peer:?}");
            async move {
                use tokio::io::AsyncWriteExt;
                let mut socket = socket;
                socket.write_all(b"hello\n").await.unwrap();
                draining.wait().await;
                let _ = socket.write_all(b"bye\n").await;
            }
        },
    ));
    drop(octopus);
    let mut client = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            let mut stream = UnixStream::connect(&path).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut hello = [0u8; 6];
            stream.read_exact(&mut hello).unwrap();
            assert_eq!(&hello, b"hello\n");
            stream
        }
    })
    .await
    .unwrap();
    handle.shutdown();
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the drain ends once the connection is done")
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.open_at_start, report.finished, report.cut),
        (1, 1, 0)
    );
    let mut rest = String::new();
    client.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
    assert!(
        UnixStream::connect(&path).is_err(),
        "the socket is closed, though its path stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_future_stops_the_server_and_the_request_in_flight_completes() {
    let (started, mut request_started) = tokio::sync::mpsc::channel::<()>(1);
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    let slow = move || {
        let (started, released) = (started.clone(), released.clone());
        async move {
            started.send(()).await.unwrap();
            released.notified().await;
            "done\n"
        }
    };
    let app = axum::Router::new().route("/slow", axum::routing::get(slow));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let on_stop = |s: Server<Octopus>| {
        s.drain_timeout(Duration::from_secs(10))
            .with_graceful_shutdown(async move {
                stopped.await.ok();
            })
    };
    let Running {
        port,
        handle,
        server,
    } = start(on_stop, app);

    let client = tokio::task::spawn_blocking(move || get(port, "/slow"));
    tokio::time::timeout(Duration::from_secs(10), request_started.recv())
        .await
        .expect("the request reaches the service")
        .unwrap();
    assert!(!handle.is_stopping());

    stop.send(()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !handle.is_stopping() {
        assert!(
            std::time::Instant::now() < deadline,
            "the shutdown future started no shutdown"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!server.is_finished(), "the drain waits for the request");

    release.notify_one();
    let reply = client.await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("done\n"),
        "{reply}"
    );
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once the request is answered")
        .unwrap()
        .unwrap();
    assert_eq!(report.cut, 0);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed"
    );
}

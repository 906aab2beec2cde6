//! TLS and HTTP/2 with real clients (rustls + hyper): ALPN, certificate rotation by upgrade, and
//! GOAWAY on drain for HTTP/2 over TLS and cleartext (h2c).
#![cfg(feature = "tls")]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use octopus::rustls;
use rustix::process::Signal;
use support::*;
use tokio::net::TcpStream;

/// A self-signed certificate for `localhost`, written as PEM files; returns its DER.
fn write_certificate(dir: &Path, tag: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join(format!("{tag}-cert.pem"));
    let key = dir.join(format!("{tag}-key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, certified.cert.der().to_vec())
}

/// Installs `staged` over `live` the way a certificate rotation does.
fn rotate(staged: &Path, live: &Path) {
    std::fs::copy(staged, live.with_extension("new")).unwrap();
    std::fs::rename(live.with_extension("new"), live).unwrap();
}

/// Starts the example with a plain listener and a TLS one, both on free ports.
fn start_with_tls(cert: &Path, key: &Path) -> Hello {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--tls-port",
        "0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ])
}

fn tls_port(server: &Hello) -> u16 {
    server.port_of("scheme=\"https\"")
}

struct Client {
    connector: tokio_rustls::TlsConnector,
}

impl Client {
    /// Trusts the certificates in `trusted` and offers `alpn`.
    fn new(trusted: &[&[u8]], alpn: &[&[u8]]) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for der in trusted {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
                .unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Client {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// Connects, returns the negotiated protocol, the server's certificate and the /pid answer.
    async fn get_pid(&self, port: u16) -> (Vec<u8>, Vec<u8>, u32) {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = self.connector.connect(name, tcp).await.unwrap();
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().unwrap_or_default().to_vec();
        let certificate = session.peer_certificates().unwrap()[0].to_vec();
        let request = http::Request::get("https://localhost/pid")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = if alpn == b"h2" {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        };
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let pid = std::str::from_utf8(&body).unwrap().trim().parse().unwrap();
        (alpn, certificate, pid)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_offers_h2_and_http1_and_a_rotated_certificate_is_served_after_an_upgrade() {
    let certs = tempfile::tempdir().unwrap();
    let (cert_a, key_a, der_a) = write_certificate(certs.path(), "a");
    let (cert_b, key_b, der_b) = write_certificate(certs.path(), "b");
    let live_cert = certs.path().join("live-cert.pem");
    let live_key = certs.path().join("live-key.pem");
    rotate(&cert_a, &live_cert);
    rotate(&key_a, &live_key);
    let server = start_with_tls(&live_cert, &live_key);
    server.port();
    let port = tls_port(&server);
    let first = server.first_pid();

    let both = Client::new(&[&der_a, &der_b], &[b"h2", b"http/1.1"]);
    let (alpn, certificate, pid) = both.get_pid(port).await;
    assert_eq!((alpn.as_slice(), pid), (&b"h2"[..], first));
    assert_eq!(certificate, der_a);
    let http1 = Client::new(&[&der_a, &der_b], &[b"http/1.1"]);
    assert_eq!(http1.get_pid(port).await.0, b"http/1.1");

    rotate(&cert_b, &live_cert);
    rotate(&key_b, &live_key);
    signal(first, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    server.wait_for(&["server shut down", &format!("pid={first}")]);
    let (_, certificate, pid) = both.get_pid(port).await;
    assert_eq!(pid, new, "the TLS listener was handed over");
    assert_eq!(
        certificate, der_b,
        "the new process read the rotated certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_at_upgrade_is_rolled_back() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_certificate(certs.path(), "a");
    let server = start_with_tls(&cert, &key);
    let port = tls_port(&server);
    std::fs::write(&cert, "not a certificate").unwrap();
    signal(server.first_pid(), Signal::HUP);
    let line = server.wait_for(&["upgrade failed"]);
    assert!(line.contains("exited before it was ready"), "{line}");
    server.wait_for(&["cannot use TLS file", cert.to_str().unwrap()]);
    let client = Client::new(&[&der], &[b"h2"]);
    assert_eq!(
        client.get_pid(port).await.2,
        server.first_pid(),
        "the old process keeps serving TLS"
    );
}

/// Sends a slow request on an HTTP/2 connection, drains the server, and checks that the stream
/// finishes while the connection refuses new streams (GOAWAY).
async fn assert_goaway_lets_open_streams_finish<IO>(io: IO, mut server: Hello)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let slow = http::Request::get("http://localhost/sleep?ms=1500")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let in_flight = tokio::spawn(sender.send_request(slow));
    // The stream is open once the server answers another stream on the same connection.
    let ping = http::Request::get("http://localhost/ping")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(ping).await.unwrap().status(), 200);

    signal(server.first_pid(), Signal::TERM);
    server.wait_for(&["draining connections"]);
    let response = in_flight.await.unwrap().expect("the open stream finishes");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"slept 1500\n");
    let after = http::Request::get("http://localhost/ping")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(
        sender.send_request(after).await.is_err(),
        "no new stream after GOAWAY"
    );
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || server.wait_first_exit())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_drain_sends_goaway_and_lets_open_streams_finish() {
    let server = Hello::start(&["-h", "127.0.0.1", "-p", "0"]);
    let port = server.port();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_goaway_lets_open_streams_finish(tcp, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_drain_sends_goaway_and_lets_open_streams_finish() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_certificate(certs.path(), "a");
    let server = start_with_tls(&cert, &key);
    let port = tls_port(&server);
    let client = Client::new(&[&der], &[b"h2"]);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = client.connector.connect(name, tcp).await.unwrap();
    assert_goaway_lets_open_streams_finish(tls, server).await;
}

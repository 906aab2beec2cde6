//! Every request carries its client as `octopus::Peer`: the example server's `/peer` route (a
//! tower service) answers what it reads, on TCP, Unix and TLS listeners.
#![cfg(feature = "tls")]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use octopus::rustls;
use socket2::{Domain, SockAddr, Socket, Type};
use support::*;

/// `GET /peer` on a connected stream: the body, after checking the status.
fn peer_on(stream: &mut (impl Read + Write)) -> String {
    let reply = get_on(stream, "/peer").unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body.trim_end().to_string()
}

#[test]
fn a_service_reads_the_tcp_and_unix_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hello.sock");
    let server = Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--unix",
        socket.to_str().unwrap(),
    ]);
    let port = server.port();

    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let client = tcp.local_addr().unwrap();
    assert_eq!(peer_on(&mut tcp), client.to_string());

    let mut unnamed = UnixStream::connect(&socket).unwrap();
    unnamed.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(peer_on(&mut unnamed), "unix unnamed");

    // A client that binds its end to a path is named by it.
    let bound = dir.path().join("client.sock");
    let named = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    named.bind(&SockAddr::unix(&bound).unwrap()).unwrap();
    named.connect(&SockAddr::unix(&socket).unwrap()).unwrap();
    let mut named = UnixStream::from(named);
    named.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(peer_on(&mut named), format!("unix {}", bound.display()));
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files; returns its
/// DER.
fn write_certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, certified.cert.der().to_vec())
}

/// `GET /peer` over TLS, offering `alpn` and naming the server `name` (an IP address sends no
/// SNI): the negotiated protocol, the client's address and the body.
async fn tls_peer(port: u16, trusted: &[u8], alpn: &[u8], name: &str) -> (Vec<u8>, String, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let client = tcp.local_addr().unwrap().to_string();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let negotiated = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let request = http::Request::get("/peer")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = if negotiated == b"h2" {
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
    let body = String::from_utf8(body.to_vec()).unwrap();
    (negotiated, client, body.trim_end().to_string())
}

#[tokio::test]
async fn a_service_reads_the_tls_protocol_and_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_certificate(dir.path());
    let server = Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--tls-port",
        "0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let port = server.port_of("scheme=\"https\"");

    for (alpn, name, sni) in [
        (&b"h2"[..], "localhost", "localhost"),
        (&b"http/1.1"[..], "localhost", "localhost"),
        (&b"h2"[..], "127.0.0.1", "-"),
    ] {
        let (negotiated, client, body) =
            tokio::time::timeout(TIMEOUT, tls_peer(port, &der, alpn, name))
                .await
                .expect("the server answers /peer over TLS");
        assert_eq!(
            negotiated, alpn,
            "the server agrees to the protocol offered"
        );
        let alpn = String::from_utf8_lossy(alpn);
        assert_eq!(body, format!("{client} tls alpn={alpn} sni={sni}"));
    }
}

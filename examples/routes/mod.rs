//! The routes of `hello`, in one file that `hello` and the benchmark's own servers
//! (`bench/src/routes.rs` includes it by path) both compile, so that every server compared
//! answers the same bytes and the copies cannot drift.
//!
//! `GET /ping` answers `pong`, `GET /pid` the answering process id, `GET /sleep?ms=N` waits N
//! milliseconds and answers `slept N`, `GET /ready` answers `200 ready` while serving and
//! `503 draining` once `draining()` says so, `GET /peer` the client as [`octopus::Peer`] tells
//! it: `ADDRESS` (TCP), `unix PATH` or `unix unnamed` (Unix socket), followed over TLS by
//! `tls alpn=PROTOCOL sni=NAME` (`-` if none); a server that does not run octopus answers it 500.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

/// Answers `request`; `draining` tells `/ready` whether a shutdown or hand-over began. The body
/// type is generic because no route reads the body, so a server whose framework wraps it (axum)
/// serves the very same function.
pub async fn route<B>(
    request: Request<B>,
    draining: fn() -> bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".into(),
        ));
    }
    let response = match request.uri().path() {
        "/ping" => reply(StatusCode::OK, "pong\n".into()),
        "/pid" => reply(StatusCode::OK, format!("{}\n", std::process::id())),
        "/ready" if draining() => reply(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
        "/ready" => reply(StatusCode::OK, "ready\n".into()),
        "/peer" => match request.extensions().get::<octopus::Peer>() {
            Some(peer) => reply(StatusCode::OK, format!("{}\n", describe(peer))),
            None => reply(StatusCode::INTERNAL_SERVER_ERROR, "no peer\n".into()),
        },
        "/sleep" => match sleep_ms(request.uri().query()) {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply(StatusCode::OK, format!("slept {ms}\n"))
            }
            None => reply(StatusCode::BAD_REQUEST, "usage: /sleep?ms=N\n".into()),
        },
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(response)
}

fn describe(peer: &octopus::Peer) -> String {
    let mut text = match (peer.addr(), peer.unix_addr().and_then(|a| a.as_pathname())) {
        (Some(addr), _) => addr.to_string(),
        (None, Some(path)) => format!("unix {}", path.display()),
        (None, None) => "unix unnamed".into(),
    };
    if peer.is_tls() {
        let alpn = peer.alpn().map_or("-".into(), String::from_utf8_lossy);
        let sni = peer.server_name().unwrap_or("-");
        text.push_str(&format!(" tls alpn={alpn} sni={sni}"));
    }
    text
}

fn sleep_ms(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|ms| ms.parse().ok())
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

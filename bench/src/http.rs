//! A minimal HTTP/1.1 client on raw tokio sockets, so that every failure is seen as it
//! happens on the wire (no retry, no pool) and classified.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// `connect` was refused (nobody listening, or the accept queue is gone).
    Refused,
    /// The connection was reset (RST) or the write hit a closed socket.
    Reset,
    /// The server closed the connection before sending any byte of the response.
    EofEmpty,
    /// The server closed the connection in the middle of the response.
    EofPartial,
    /// No full response within the request timeout.
    Timeout,
    /// A response arrived with a status other than 2xx.
    Non2xx,
    /// Anything else (malformed response, unexpected I/O error).
    Other,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 7] = [
        Class::Refused,
        Class::Reset,
        Class::EofEmpty,
        Class::EofPartial,
        Class::Timeout,
        Class::Non2xx,
        Class::Other,
    ];

    /// Stable short name, used in JSON keys and tables.
    pub fn name(self) -> &'static str {
        match self {
            Class::Refused => "refused",
            Class::Reset => "reset",
            Class::EofEmpty => "eof_empty",
            Class::EofPartial => "eof_partial",
            Class::Timeout => "timeout",
            Class::Non2xx => "non_2xx",
            Class::Other => "other",
        }
    }

    /// Index into `ALL`.
    pub fn index(self) -> usize {
        Class::ALL.iter().position(|c| *c == self).unwrap_or(6)
    }

    fn from_io(e: &io::Error, got_bytes: bool) -> Class {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Class::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Class::Reset,
            io::ErrorKind::UnexpectedEof if got_bytes => Class::EofPartial,
            io::ErrorKind::UnexpectedEof => Class::EofEmpty,
            _ => Class::Other,
        }
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    /// The server asked to close the connection (`Connection: close`).
    pub close: bool,
}

/// Opens a connection, classifying a failure.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Class> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(Class::Timeout),
        Ok(Err(e)) => Err(Class::from_io(&e, false)),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// The request bytes for `GET path`.
pub fn request(path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n")
        .into_bytes()
}

/// Whether the server has closed (or reset, or written unasked to) an idle keep-alive
/// connection, seen without blocking. Checked before each reuse, as every pooling client does
/// (hyper-util's pool drops a connection whose idle read saw EOF, Go's `Transport` reads every
/// idle connection in the background, curl peeks before reuse): a request is then only written
/// on a connection the client has no reason to think closed, and what fails is the race itself,
/// a close that crosses a request on the wire, not a close the client had already been told of.
///
/// A system call rather than Tokio's `try_read`: Tokio learns of the close only when a worker
/// next polls the reactor, which a client among 10,000 busy ones may do long after the FIN came.
pub fn closed_while_idle(stream: &TcpStream) -> bool {
    use rustix::net::{RecvFlags, recv};
    match recv(stream, &mut [0u8; 1], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Err(e) => e != rustix::io::Errno::AGAIN,
        Ok(_) => true,
    }
}

/// Sends one request on `stream` and reads the full response, within `timeout`.
pub async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<Response, Class> {
    match tokio::time::timeout(timeout, exchange_inner(stream, request, buf)).await {
        Err(_) => Err(Class::Timeout),
        Ok(result) => result,
    }
}

async fn exchange_inner(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Response, Class> {
    stream
        .write_all(request)
        .await
        .map_err(|e| Class::from_io(&e, false))?;
    buf.clear();
    // Bounded: a response larger than 64 KiB is malformed for these endpoints.
    let mut chunk = [0u8; 4096];
    for _ in 0..16 {
        if let Some(response) = parse(buf)? {
            return Ok(response);
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| Class::from_io(&e, !buf.is_empty()))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Class::EofEmpty
            } else {
                Class::EofPartial
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse(buf)?.ok_or(Class::Other)
}

/// Parses a complete response from `buf`, `Ok(None)` if more bytes are needed.
fn parse(buf: &[u8]) -> Result<Option<Response>, Class> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| Class::Other)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(Class::Other)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(Class::Other)?;
    let mut length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let length = length.ok_or(Class::Other)?;
    let body_start = head_end + 4;
    if buf.len() < body_start + length {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        body: buf[body_start..body_start + length].to_vec(),
        close,
    }))
}

/// One `GET path` on a fresh connection; used for checks, not for load.
pub async fn get_once(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, Class> {
    let mut stream = connect(addr, timeout).await?;
    let mut buf = Vec::with_capacity(512);
    exchange(&mut stream, &request(path, true), &mut buf, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_response_and_waits_for_a_partial_one() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n1234\n";
        let r = parse(full).unwrap().unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.close),
            (200, &b"1234\n"[..], true)
        );
        assert!(parse(&full[..full.len() - 1]).unwrap().is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
    }
}

//! The routes and command line of the example server `hello`, shared by the baseline and the
//! ecdysis peer so that all three servers answer the same bytes.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

/// `-h HOST -p PORT`, as `hello`.
#[derive(Debug, Parser)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// Host to listen on
    #[arg(short = 'h', long = "host", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0: any free port)
    #[arg(short = 'p', long = "port", default_value_t = 8080)]
    pub port: u16,

    /// Seconds in-flight requests get to finish on shutdown or upgrade (ecdysis peer)
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub drain_timeout: f64,

    /// Give hyper a timer (as octopus does), so that its header-read timeout applies
    /// (baseline; for experiments, off by default)
    #[arg(long)]
    pub hyper_timer: bool,

    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl Args {
    /// `HOST:PORT`, bracketing an IPv6 host.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Writes `line` and a newline to stderr in one `write`, so that the lines of several
/// generations sharing one pipe never interleave; a broken stderr is ignored (never a panic).
pub fn log(line: &str) {
    use std::io::Write;
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `log!("...", args)`: [`log`] with `format!` arguments.
macro_rules! log {
    ($($arg:tt)*) => {
        routes::log(&format!($($arg)*))
    };
}

/// `GET /ping`, `GET /pid`, `GET /sleep?ms=N`, as `hello`.
pub async fn route(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".into(),
        ));
    }
    let response = match request.uri().path() {
        "/ping" => reply(StatusCode::OK, "pong\n".into()),
        "/pid" => reply(StatusCode::OK, format!("{}\n", std::process::id())),
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

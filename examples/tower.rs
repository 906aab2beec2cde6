//! A hand-written tower `Service`, no framework, served gracefully in one call with
//! [`octopus::serve`] (the defaults: signals handled, 5 s drain).
//!
//! ```text
//! cargo run --example tower -- -h 127.0.0.1 -p 3001
//! curl http://127.0.0.1:3001/ping       # pong
//! kill -HUP $(curl -s http://127.0.0.1:3001/pid)    # upgrade: no request fails
//! ```
//!
//! Routes: `GET /ping` answers `pong`, `GET /pid` the answering process id, anything else 404.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::process::ExitCode;
use std::task::{Context, Poll};

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

mod logging;

/// A graceful HTTP server built on a plain tower service.
#[derive(Debug, Parser)]
#[command(name = "tower", disable_help_flag = true)]
struct Args {
    /// Host to listen on
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    host: String,

    /// Port to listen on (0: any free port, kept across upgrades)
    #[arg(short = 'p', long = "port", default_value_t = 3001)]
    port: u16,

    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// The whole application. It must be `Clone`: each connection gets its own copy.
#[derive(Clone)]
struct Pong;

impl tower::Service<Request<Incoming>> for Pong {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    // Answers are computed at once, so a ready future does: no boxing, no async block.
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let (status, body) = match request.uri().path() {
            "/ping" => (StatusCode::OK, "pong\n".to_string()),
            "/pid" => (StatusCode::OK, format!("{}\n", std::process::id())),
            _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        ready(Ok(response))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Flushed only once `serve_until_exit` has stopped its runtime, which lets every task finish
    // the step it is in: the last lines of every task are written.
    let _logging = logging::init();
    serve_until_exit(args)
}

#[tokio::main]
async fn serve_until_exit(args: Args) -> ExitCode {
    let address = if args.host.contains(':') {
        format!("[{}]:{}", args.host, args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    match octopus::serve(&address, Pong).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", logging::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

//! An axum application served gracefully: shared state, the client's address through axum's
//! `ConnectInfo` (octopus's `axum` feature), and a `/ready` route for load balancers.
//!
//! ```text
//! cargo run --features axum --example axum -- -h 127.0.0.1 -p 3000 --pre-drain 5
//! curl http://127.0.0.1:3000/ip         # the client's address and port
//! curl http://127.0.0.1:3000/hits       # requests served by this process so far
//! kill -HUP $(curl -s http://127.0.0.1:3000/pid)    # upgrade: no request fails
//! kill -TERM <pid>                      # /ready answers 503 for 5 s while serving, then drain
//! ```
//!
//! Routes: `GET /ping` answers `pong`, `GET /pid` the answering process id, `GET /ip` the
//! client's address (`ConnectInfo<SocketAddr>`), `GET /hits` how many requests this process answered, `GET /ready` `200 ready` while serving and `503 draining` once a
//! shutdown (including its pre-drain delay) or a hand-over began.
//!
//! The state lives in the process: a new generation starts counting from zero.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use clap::Parser;
use octopus::{Handle, Octopus};

mod logging;

/// A graceful axum server: SIGHUP upgrades, SIGINT/SIGTERM shut down gracefully.
#[derive(Debug, Parser)]
#[command(name = "axum", disable_help_flag = true)]
struct Args {
    /// Host to listen on
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    host: String,

    /// Port to listen on (0: any free port, kept across upgrades)
    #[arg(short = 'p', long = "port", default_value_t = 3000)]
    port: u16,

    /// Seconds a shutdown keeps accepting while /ready answers 503, before draining
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = seconds)]
    pre_drain: f64,

    /// Seconds in-flight requests get to finish on shutdown or upgrade
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = seconds)]
    drain_timeout: f64,

    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds")),
    }
}

/// Shared by every request of this process.
#[derive(Clone)]
struct AppState {
    hits: Arc<AtomicU64>,
    /// Tells `/ready` whether this generation is on its way out.
    octopus: Handle,
}

async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    state.hits.fetch_add(1, Ordering::Relaxed);
    next.run(request).await
}

async fn ping() -> &'static str {
    "pong\n"
}

async fn pid() -> String {
    format!("{}\n", std::process::id())
}

/// Octopus gives every TCP and TLS request its `ConnectInfo`: the `Router` is served as is, with
/// no `into_make_service_with_connect_info`.
async fn ip(ConnectInfo(client): ConnectInfo<SocketAddr>) -> String {
    format!("{client}\n")
}

async fn hits(State(state): State<AppState>) -> String {
    format!("{}\n", state.hits.load(Ordering::Relaxed))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.octopus.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

fn app(state: AppState) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/pid", get(pid))
        .route("/ip", get(ip))
        .route("/hits", get(hits))
        .route("/ready", get(ready))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
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
    let served = async {
        // Made here rather than by the server, so the routes can hold its handle.
        let octopus = Octopus::builder()
            .pre_drain(Duration::from_secs_f64(args.pre_drain))
            .build()?;
        let state = AppState {
            hits: Arc::default(),
            octopus: octopus.handle(),
        };
        octopus
            .server()
            .drain_timeout(Duration::from_secs_f64(args.drain_timeout))
            .bind(address)
            .serve(app(state))
            .await
    };
    match served.await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", logging::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

//! The baseline: the routes of `hello` on plain hyper-util (auto builder), no octopus, no
//! graceful anything. SIGTERM/SIGINT exit at once.
//!
//! ```text
//! baseline -h 127.0.0.1 -p 0
//! ```

#[macro_use]
#[path = "../routes.rs"]
mod routes;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> ExitCode {
    let args = routes::Args::parse();
    let listener = match TcpListener::bind(args.address()).await {
        Ok(l) => l,
        Err(e) => {
            log!("ERROR cannot listen on {}: {e}", args.address());
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(local) => log!("listening on {local}"),
        Err(e) => log!("ERROR local address: {e}"),
    }
    log!("server started pid={}", std::process::id());
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let Ok(mut s) = signal(kind) else { continue };
        tokio::spawn(async move {
            s.recv().await;
            std::process::exit(0);
        });
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if args.hyper_timer {
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log!("WARN accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request| {
                routes::route(request, routes::never_draining)
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

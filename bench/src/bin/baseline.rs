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

#[tokio::main]
async fn main() -> ExitCode {
    let args = routes::Args::parse();
    let Some(listener) = routes::listen_until_killed(&args).await else {
        return ExitCode::FAILURE;
    };
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

//! A graceful line echo server on the protocol-agnostic layer ([`Octopus`] and [`Drain`]), no HTTP.
//!
//! ```text
//! cargo run --example echo -- -h 127.0.0.1 -p 7000
//! socat - TCP:127.0.0.1:7000        # or: nc 127.0.0.1 7000
//! hello                             # -> hello
//! pid                               # -> the pid of the process serving this connection
//! kill -HUP <pid>                   # upgrade: new connections go to the new process; this one
//!                                   # finishes its line, gets "bye" and is closed
//! ```
//!
//! Each line is echoed back, except `pid`, answered with the serving process id (so a client can
//! tell generations apart). When the drain starts (shutdown or hand-over), a connection finishes
//! the line in progress, writes `bye` and closes; at the drain deadline the rest are cut.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use octopus::{Config, Drain, DrainReport, Draining, Octopus, Stop};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

mod logging;

/// A graceful line echo server: SIGHUP upgrades, SIGINT/SIGTERM shut down gracefully.
#[derive(Debug, Parser)]
#[command(name = "echo", disable_help_flag = true)]
struct Args {
    /// Host to listen on
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    host: String,

    /// Port to listen on (0: any free port, kept across upgrades)
    #[arg(short = 'p', long = "port", default_value_t = 7000)]
    port: u16,

    /// Seconds open connections get to finish their line on shutdown or upgrade
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    match run(&address, Duration::from_secs_f64(args.drain_timeout)).await {
        Ok(report) => {
            tracing::info!(
                pid = std::process::id(),
                cut = report.cut,
                "server shut down"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{}", logging::error_line(&*e));
            ExitCode::FAILURE
        }
    }
}

/// One generation, from adopting (or creating) the listener to the end of its drain.
async fn run(address: &str, drain_timeout: Duration) -> Result<DrainReport, BoxError> {
    // Adopts the listener of the previous process if this one was started by an upgrade. The
    // drain timeout is not the config's business here: this program runs its own drain.
    let octopus = Octopus::new(Config::new())?;
    let listener = TcpListener::from_std(octopus.listen_tcp(address)?)?;
    tracing::info!("listening on {}", listener.local_addr()?);

    let mut drain = Drain::new();
    // Drains of connections from before a resume go on beside the new generation of connections.
    let mut earlier_drains = Vec::new();
    // Before the first accept: the socket is already listening, so connections made before the
    // loop below first polls wait in the kernel's accept queue, and the previous process may stop
    // accepting now; and whatever fails here fails before this process holds a connection.
    octopus.ready()?;
    let report = loop {
        let stop = accept_until_stopped(&listener, &octopus, &drain).await;
        if stop == Stop::Shutdown {
            // Refuse new connections: close the copies kept for upgrades, then ours, after taking
            // the connections the kernel already queued (their clients were promised an answer).
            octopus.close_listeners();
            accept_queued(listener, &drain);
            break drain.run(drain_timeout).await;
        }
        // Upgraded: the successor accepts on the same socket. Keep it open (no close_listeners):
        // if the successor dies while this process drains, `resumed` fires and this one serves again.
        let mut draining = tokio::spawn({
            let drain = drain.clone();
            async move { drain.run(drain_timeout).await }
        });
        tokio::select! {
            report = &mut draining => break report.unwrap_or_default(),
            () = octopus.resumed() => {
                earlier_drains.push(draining);
                drain = Drain::new();
            }
        }
    };
    let mut report = report;
    for earlier in earlier_drains {
        report = report.merge(earlier.await.unwrap_or_default());
    }
    // An upgrade cancelled by a shutdown may still be killing its new process: wait for it.
    octopus.settle().await;
    Ok(report)
}

/// Accepts connections into `drain` until this generation is told to stop.
async fn accept_until_stopped(listener: &TcpListener, octopus: &Octopus, drain: &Drain) -> Stop {
    let stopped = octopus.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            stop = &mut stopped => return stop,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => drain.spawn(move |draining| serve(socket, draining)),
                // Out of fds or memory: pause instead of spinning; the queue keeps the clients.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Hands the connections already queued on `listener` to `drain`, without waiting for more.
fn accept_queued(listener: TcpListener, drain: &Drain) {
    let Ok(listener) = listener.into_std() else {
        return;
    };
    // `into_std` leaves the socket non-blocking: `accept` ends with WouldBlock once the queue is empty.
    while let Ok((socket, _)) = listener.accept() {
        if let Ok(socket) = socket
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(socket))
        {
            drain.spawn(move |draining| serve(socket, draining));
        }
    }
}

/// Echoes lines until the client leaves or the drain starts.
async fn serve(socket: TcpStream, draining: Draining) {
    if let Err(e) = echo(socket, draining).await {
        tracing::debug!("connection ended with an error: {e}");
    }
}

async fn echo(socket: TcpStream, draining: Draining) -> std::io::Result<()> {
    let mut socket = BufReader::new(socket);
    let mut line = Vec::new();
    loop {
        tokio::select! {
            // The drain wins over a line already complete in the buffer: once it starts, only the
            // line in progress is answered.
            biased;
            () = draining.wait() => {
                // `read_until` keeps what it read when cancelled: a partly received line is in
                // `line`, so finish it before saying goodbye.
                if !line.is_empty() {
                    if socket.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    answer(socket.get_mut(), &line).await?;
                }
                socket.get_mut().write_all(b"bye\n").await?;
                return socket.get_mut().shutdown().await;
            }
            read = socket.read_until(b'\n', &mut line) => {
                if read? == 0 {
                    return Ok(());
                }
                answer(socket.get_mut(), &line).await?;
                line.clear();
            }
        }
    }
}

async fn answer(socket: &mut TcpStream, line: &[u8]) -> std::io::Result<()> {
    if line.trim_ascii() == b"pid" {
        socket
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .await
    } else {
        socket.write_all(line).await
    }
}

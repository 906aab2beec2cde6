//! A graceful line echo server on [`Octopus::connections`], no HTTP (`pid` is answered with the
//! serving pid). When the drain starts (shutdown or hand-over), a connection finishes the line in
//! progress, writes `bye` and closes; at the drain deadline the rest are cut.
//!
//! ```text
//! cargo run --example echo -- -h 127.0.0.1 -p 7000
//! exec 3<>/dev/tcp/127.0.0.1/7000                  # bash alone: a connection on fd 3
//! echo pid >&3; read -r pid <&3; echo "$pid"        # the serving pid; other lines echo
//! kill -HUP $pid; read -r line <&3; echo "$line"    # upgrade: "bye"; new connections go to the new pid
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use octopus::{DrainReport, Draining, Octopus};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod logging;

/// A graceful line echo server: SIGHUP upgrades, SIGINT/SIGTERM shut down gracefully.
#[derive(Debug, Parser)]
#[command(name = "echo", disable_help_flag = true)]
struct Args {
    #[arg(short, long, default_value = "localhost", help = "Host to listen on")]
    host: String,
    /// Port to listen on (0: any free port, kept across upgrades)
    #[arg(short, long, default_value_t = 7000)]
    port: u16,
    /// Seconds open connections get to finish their line on shutdown or upgrade
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    drain_timeout: f64,
    #[arg(long, action = clap::ArgAction::Help, help = "Print help")]
    help: Option<bool>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Flushed once `serve` has stopped its runtime, so the last lines of every task are written.
    let _logging = logging::init();
    if let Err(e) = serve(args) {
        tracing::error!("{}", logging::error_line(&*e));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[tokio::main]
async fn serve(args: Args) -> Result<DrainReport, Box<dyn std::error::Error>> {
    let host = match args.host.contains(':') {
        true => format!("[{}]", args.host), // an IPv6 address
        false => args.host,
    };
    // Adopts the listener of the previous process if this one was started by an upgrade.
    let octopus = Octopus::new()?;
    Ok(octopus
        .connections(octopus.listen_tcp(&format!("{host}:{}", args.port))?)
        .drain_timeout(Duration::try_from_secs_f64(args.drain_timeout)?)
        .serve(|socket, _peer, draining| async move {
            if let Err(e) = echo(socket, draining).await {
                tracing::debug!("connection ended with an error: {e}");
            }
        })
        .await?)
}

/// Echoes lines until the client leaves or the drain starts.
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
    let pid = format!("{}\n", std::process::id());
    let reply = if line.trim_ascii() == b"pid" {
        pid.as_bytes()
    } else {
        line
    };
    socket.write_all(reply).await
}

//! `octopus`: ask a server through its control socket how it is, to upgrade, or to stop; or
//! `octopus run` a server in any language under a supervisor that upgrades and restarts it.
//!
//! Exit status: 0 done; 1 the server refused or rolled back (the reason on stderr and in the
//! JSON); 2 the control socket cannot be reached or its answer is not understood. `octopus run`
//! exits with its instance's status (docs/supervisor.md).

mod client;
mod render;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use client::{Failure, Session};

#[derive(Debug, Parser)]
#[command(
    name = "octopus",
    version,
    about = "Drive a server built with the octopus library through its control socket",
    after_help = "Examples:\n  \
        octopus status  --control /run/app/control.sock\n  \
        octopus upgrade --control /run/app/control.sock || alert \"deploy rolled back\"\n  \
        octopus upgrade --control /run/app/control.sock --keep-old --timeout 60\n  \
        octopus stop    --control /run/app/control.sock --wait\n  \
        octopus run --listen 0.0.0.0:8080 --control /run/app/control.sock -- python3 app.py\n\n\
        Exit status: 0 done, 1 refused or rolled back, 2 control socket unreachable or answer not understood."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The server's control socket (OctopusBuilder::control_socket, `hello --control PATH`)
    #[arg(long, value_name = "PATH")]
    control: PathBuf,

    /// Print the server's answer as one JSON object on stdout, for scripts
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the serving process: state, listeners, connections, last upgrade
    #[command(after_help = "Example:\n  octopus status --control /run/app/control.sock --json")]
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Start the binary now at the server's path and wait until it serves or is rolled back
    #[command(
        after_help = "Exits 0 once the new process is ready and the old one drains (or keeps serving with --keep-old),\n\
                      1 if the upgrade was refused or rolled back (the old process keeps serving).\n\n\
                      Example:\n  octopus upgrade --control /run/app/control.sock || alert \"rolled back\""
    )]
    Upgrade {
        #[command(flatten)]
        common: Common,

        /// Keep the old process serving beside the new one (the SIGUSR1 behaviour)
        #[arg(long)]
        keep_old: bool,

        /// Seconds the new process gets to report ready (default: the server's upgrade timeout)
        #[arg(long, value_name = "SECS", value_parser = seconds)]
        timeout: Option<f64>,

        /// Under `octopus run`: upgrade the supervisor itself (re-exec in place; the instance
        /// keeps serving)
        #[arg(long, conflicts_with_all = ["keep_old", "timeout"])]
        supervisor: bool,
    },
    /// Shut the server down gracefully
    #[command(after_help = "Example:\n  octopus stop --control /run/app/control.sock --wait")]
    Stop {
        #[command(flatten)]
        common: Common,

        /// Return only once the process has exited, saying how many connections finished and were cut
        #[arg(long)]
        wait: bool,
    },
    /// Run PROGRAM on sockets bound once: upgrade it with no refused connection (SIGHUP or
    /// `octopus upgrade`), restart it when it crashes, stop it gracefully (SIGTERM)
    #[command(after_help = "Example:\n  \
        octopus run --listen 127.0.0.1:8080 --control /run/app/control.sock --ready notify -- python3 app.py\n\n\
        PROGRAM gets the sockets as fds 3.. with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (systemd\n\
        socket activation), and a NOTIFY_SOCKET for READY=1. See docs/supervisor.md.")]
    Run(run::RunArgs),
}

fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => Ok(secs),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// How long a command may wait for its answer beyond what the server itself bounds.
const ANSWER_MARGIN: Duration = Duration::from_secs(30);
/// How long `status` may wait for its answer.
const STATUS_LIMIT: Duration = Duration::from_secs(10);
/// How long `upgrade` without `--timeout` and `stop --wait` may wait: past the longest upgrade
/// timeout or drain a server is likely to have, a server that does not answer is stuck.
const LONG_LIMIT: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(args) = cli.command {
        return run::main(args);
    }
    match command(cli.command) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("octopus: {failure}");
            ExitCode::from(2)
        }
    }
}

fn command(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Status { common } => {
            let ask = || {
                Session::open(&common.control, STATUS_LIMIT)?.ask(&json!({"v": 1, "cmd": "status"}))
            };
            // A connection cut before its answer: under `octopus run`, the supervisor was
            // re-executing itself; the socket stays open across that, so asking again reaches
            // the new image. Status only, as it changes nothing.
            let answer = match ask() {
                Err(Failure::Exchange { .. }) => {
                    std::thread::sleep(Duration::from_millis(100));
                    ask()?
                }
                answer => answer?,
            };
            if common.json {
                println!("{answer}");
            }
            if !client::is_ok(&answer) {
                eprintln!("octopus: status refused: {}", client::error(&answer));
                return Ok(ExitCode::from(1));
            }
            if !common.json {
                let colours = render::colours_on_stdout();
                if answer["supervisor"] == true {
                    print!("{}", render::supervisor_status(&answer, colours));
                } else {
                    print!("{}", render::status(&answer, colours));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Upgrade {
            common,
            keep_old,
            timeout,
            supervisor,
        } => {
            if supervisor {
                return upgrade_supervisor(&common);
            }
            let limit = timeout.map_or(LONG_LIMIT, |secs| {
                Duration::from_secs_f64(secs) + ANSWER_MARGIN
            });
            let mut request = json!({"v": 1, "cmd": "upgrade", "keep_old": keep_old});
            if let Some(secs) = timeout {
                request["timeout"] = secs.into();
            }
            let answer = Session::open(&common.control, limit)?.ask(&request)?;
            if common.json {
                println!("{answer}");
            }
            if client::is_ok(&answer) {
                let new = client::number(&answer, "pid")?;
                let ms = client::number(&answer, "duration_ms")?;
                eprintln!("octopus: spawned pid {new}");
                eprintln!("octopus: ready after {ms} ms");
                // Under `octopus run`, an upgrade may start the first instance after a crash.
                match answer.get("old_pid").and_then(Value::as_u64) {
                    None => eprintln!("octopus: no old instance was serving"),
                    Some(old) if keep_old => {
                        eprintln!("octopus: old pid {old} keeps serving beside it")
                    }
                    Some(old) => eprintln!("octopus: old pid {old} draining"),
                }
                if !common.json {
                    println!("{new}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(pid) = answer.get("pid").and_then(Value::as_u64) {
                eprintln!("octopus: spawned pid {pid}");
            }
            let verb = match answer.get("reason").and_then(Value::as_str) {
                Some("in_progress" | "stopping" | "not_ready" | "unsupported") => "refused",
                _ => "rolled back; the old process keeps serving",
            };
            eprintln!("octopus: upgrade {verb}: {}", client::error(&answer));
            Ok(ExitCode::from(1))
        }
        Command::Run(_) => unreachable!("octopus run is dispatched in main"),
        Command::Stop { common, wait } => {
            let limit = if wait { LONG_LIMIT } else { STATUS_LIMIT };
            let answer = Session::open(&common.control, limit)?
                .ask(&json!({"v": 1, "cmd": "stop", "wait": wait}))?;
            if !client::is_ok(&answer) {
                if common.json {
                    println!("{answer}");
                }
                eprintln!("octopus: stop refused: {}", client::error(&answer));
                return Ok(ExitCode::from(1));
            }
            let pid = client::number(&answer, "pid")?;
            if !wait {
                if common.json {
                    println!("{answer}");
                }
                eprintln!("octopus: process {pid} is shutting down gracefully");
                return Ok(ExitCode::SUCCESS);
            }
            client::wait_exit(pid as u32, ANSWER_MARGIN)?;
            if common.json {
                println!("{answer}");
            }
            match (
                answer.get("finished").and_then(Value::as_u64),
                answer.get("cut").and_then(Value::as_u64),
            ) {
                (Some(finished), Some(cut)) => eprintln!(
                    "octopus: process {pid} exited; {finished} connections finished, {cut} cut"
                ),
                _ => eprintln!("octopus: process {pid} exited"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `octopus upgrade --supervisor`: the supervisor answers once the new binary passed its
/// preflight and it is about to re-exec; this waits until the re-executed image answers.
fn upgrade_supervisor(common: &Common) -> Result<ExitCode, Failure> {
    let answer = Session::open(&common.control, LONG_LIMIT)?
        .ask(&json!({"v": 1, "cmd": "upgrade", "supervisor": true}))?;
    if !client::is_ok(&answer) {
        if common.json {
            println!("{answer}");
        }
        eprintln!(
            "octopus: supervisor upgrade refused: {}",
            client::error(&answer)
        );
        return Ok(ExitCode::from(1));
    }
    let pid = client::number(&answer, "pid")?;
    let status = client::wait_status(&common.control, STATUS_LIMIT + ANSWER_MARGIN, |status| {
        status["pid"].as_u64() == Some(pid)
            && status["generation"].as_u64() > answer["generation"].as_u64()
    })?;
    if common.json {
        println!("{status}");
    }
    eprintln!(
        "octopus: supervisor {pid} re-executed {} (generation {}); instance {} kept serving",
        answer["version"].as_str().unwrap_or("?"),
        status["generation"],
        status["instances"][0]["pid"]
    );
    Ok(ExitCode::SUCCESS)
}

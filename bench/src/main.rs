//! `octopus-bench`: the load-and-upgrade benchmark of issue 3.
//!
//! ```text
//! octopus-bench run keepalive              # a preset against its servers, JSON in bench/results
//! octopus-bench run control                # keepalive load, 50 × `octopus upgrade` back to back
//! octopus-bench run overhead               # octopus vs baseline vs ecdysis, rounds A B C
//! octopus-bench run pinned --rounds 10     # server on CPU 0, wrk/h2load on CPU 1: ratio lines
//! octopus-bench run pinned --only h2 --server axum,octopus-axum-nagle   # a subset
//! octopus-bench run curves                 # RSS/conn, drain and hand-over times at scale
//! octopus-bench run curves --only handover --upgrades 8   # only the hand-over points
//! octopus-bench run wrk                    # keepalive load by wrk, for the cross-check
//! octopus-bench run supervisor             # the Go server: `octopus run` vs a naive restart
//! octopus-bench smoke                      # CI: keepalive, new-conn, control: 5 upgrades each, exit 1 on failure
//! octopus-bench report                     # BENCHMARKS.md and the SVG plots from the JSON
//! ```

mod curves;
mod http;
mod load;
mod overhead;
mod pinned;
mod plot;
mod procfs;
mod report;
mod report_scale;
mod results;
mod scenarios;
mod server;
mod supervisor;
mod upgrades;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use scenarios::Overrides;
use server::{Bins, Kind};

/// Load-and-upgrade benchmark of octopus against plain hyper-util and ecdysis.
#[derive(Debug, Parser)]
#[command(name = "octopus-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a scenario: keepalive, control, new-conn, inflight, usr1, shutdown, overhead, pinned,
    /// curves, keepalive-10k, wrk, supervisor.
    Run {
        /// Scenario name.
        scenario: String,
        /// Servers to run it against (default: the scenario's own list).
        #[arg(long, value_delimiter = ',')]
        server: Vec<String>,
        /// Clients of the main group.
        #[arg(long)]
        clients: Option<usize>,
        /// Number of upgrades.
        #[arg(long)]
        upgrades: Option<usize>,
        /// Milliseconds between two upgrades.
        #[arg(long)]
        interval_ms: Option<u64>,
        /// Seconds per run (overhead, wrk).
        #[arg(long)]
        secs: Option<u64>,
        /// Rounds (overhead, pinned).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Parts of the curves to run (default: all): rss, drain, handover. With
        /// `--upgrades N`, each hand-over point is N upgrades (default 3). For pinned: the
        /// workloads (default: all): h1-keepalive, h1-close, h2.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        #[command(flatten)]
        paths: Paths,
    },
    /// The CI smoke run: keepalive, new-conn and control against octopus, 5 upgrades each;
    /// exits 1 on any failed request, zombie, fd leak, unfinished upgrade or `octopus upgrade`
    /// that did not exit 0 with the new pid.
    Smoke {
        #[command(flatten)]
        paths: Paths,
    },
    /// Render BENCHMARKS.md and the SVG plots from the JSON results.
    Report {
        /// Results directory.
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        /// Markdown file to write.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Paths {
    /// Results directory (JSON; server logs go to its `logs/`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The octopus example server (default: examples/hello beside this binary).
    #[arg(long)]
    hello: Option<PathBuf>,
}

impl Paths {
    fn bins(&self) -> Result<Bins, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe.parent().ok_or("no binary directory")?;
        let bins = Bins {
            hello: self
                .hello
                .clone()
                .unwrap_or_else(|| dir.join("examples").join("hello")),
            baseline: dir.join("baseline"),
            ecdysis: dir.join("ecdysis_peer"),
            // Checked only by the scenario that runs it.
            octopus: dir.join("octopus"),
            http1: dir.join("hyper_http1"),
            router: dir.join("router"),
        };
        for p in [
            &bins.hello,
            &bins.baseline,
            &bins.ecdysis,
            &bins.http1,
            &bins.router,
        ] {
            if !p.is_file() {
                return Err(format!(
                    "{} not found: cargo build --release --example hello -p octopus \
                     && cargo build --release -p octopus-bench",
                    p.display()
                ));
            }
        }
        Ok(bins)
    }

    fn out(&self, default: &Path) -> PathBuf {
        self.out.clone().unwrap_or_else(|| default.to_path_buf())
    }
}

fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        *first = "octopus-bench".into();
    }
    args.join(" ")
}

async fn run_cmd(cmd: Cmd) -> Result<bool, String> {
    let command = command_line();
    match cmd {
        Cmd::Report { results, out } => {
            report::write(&results, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(true)
        }
        Cmd::Smoke { paths } => {
            let bins = paths.bins()?;
            let out = paths.out(&std::env::temp_dir().join("octopus-bench-smoke"));
            let mut ok = true;
            for name in ["smoke-keepalive", "smoke-new-conn", "smoke-control"] {
                let preset = scenarios::preset(name, &Overrides::default()).ok_or("preset")?;
                let r = scenarios::run(&preset, Kind::Octopus, &bins, &out.join("logs"), &command)
                    .await?;
                results::write(&out, &r.file_name(), &r)?;
                let problems = scenarios::smoke_problems(&r);
                eprintln!("{}", report::one_line(&r));
                for p in &problems {
                    eprintln!("  FAIL: {p}");
                }
                ok &= problems.is_empty();
            }
            eprintln!("smoke: {}", if ok { "passed" } else { "FAILED" });
            Ok(ok)
        }
        Cmd::Run {
            scenario,
            server,
            clients,
            upgrades,
            interval_ms,
            secs,
            rounds,
            only,
            paths,
        } => {
            let bins = paths.bins()?;
            let out = paths.out(Path::new("bench/results"));
            let logs = out.join("logs");
            match scenario.as_str() {
                "overhead" => {
                    let r = overhead::run(
                        &bins,
                        rounds,
                        secs.unwrap_or(10),
                        clients.unwrap_or(64),
                        &logs,
                        &command,
                    )
                    .await?;
                    results::write(&out, "overhead.json", &r)?;
                    return Ok(true);
                }
                "pinned" => {
                    let selection = pinned::Selection {
                        workloads: only
                            .iter()
                            .map(|w| {
                                pinned::Workload::parse(w)
                                    .ok_or(format!("unknown pinned workload {w:?}"))
                            })
                            .collect::<Result<_, _>>()?,
                        servers: kinds(&server)?,
                    };
                    let r = pinned::run(
                        &bins,
                        &selection,
                        rounds,
                        secs.unwrap_or(3),
                        &logs,
                        &command,
                    )
                    .await?;
                    results::write(&out, "pinned.json", &r)?;
                    for c in pinned::comparisons(&r) {
                        println!("{}", c.line());
                    }
                    return Ok(true);
                }
                "curves" => {
                    let parts = curves::Parts::parse(&only)?;
                    let r = curves::run(&bins, &logs, &command, &parts, upgrades).await?;
                    results::write(&out, &parts.file_name(), &r)?;
                    return Ok(true);
                }
                "wrk" => {
                    let r = wrk::run(
                        &bins,
                        // The keepalive preset's timing: 100 upgrades every 250 ms from 1 s on.
                        secs.unwrap_or(28),
                        upgrades.unwrap_or(100),
                        interval_ms.unwrap_or(250),
                        &logs,
                        &command,
                    )
                    .await?;
                    eprintln!("{}", r.output);
                    results::write(&out, "wrk-keepalive.json", &r)?;
                    return Ok(true);
                }
                "supervisor" => {
                    let o = supervisor::Options {
                        upgrades: upgrades.unwrap_or(20),
                        interval: std::time::Duration::from_millis(interval_ms.unwrap_or(500)),
                        clients: clients.unwrap_or(64),
                    };
                    return supervisor::run(&bins.octopus, &o, &out, &command).await;
                }
                _ => {}
            }
            let o = Overrides {
                clients,
                upgrades,
                interval_ms,
            };
            let preset = scenarios::preset(&scenario, &o)
                .ok_or_else(|| format!("unknown scenario {scenario:?}"))?;
            let kinds = if server.is_empty() {
                preset.servers.clone()
            } else {
                kinds(&server)?
            };
            for kind in kinds {
                let r = scenarios::run(&preset, kind, &bins, &logs, &command).await?;
                eprintln!("{}", report::one_line(&r));
                results::write(&out, &r.file_name(), &r)?;
            }
            Ok(true)
        }
    }
}

/// The servers named by `--server`.
fn kinds(names: &[String]) -> Result<Vec<Kind>, String> {
    names
        .iter()
        .map(|s| Kind::parse(s).ok_or(format!("unknown server {s:?}")))
        .collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = server::become_subreaper() {
        eprintln!("octopus-bench: cannot become a child subreaper: {e}");
        return ExitCode::FAILURE;
    }
    // Thousands of connections in the curves and keepalive-10k, each an fd here and in the
    // server, which inherits the limit.
    curves::raise_nofile();
    let result = tokio::select! {
        r = run_cmd(cli.command) => r,
        _ = tokio::signal::ctrl_c() => {
            // Interrupted: no server of this run may outlive the tool.
            for pid in procfs::descendants_of(std::process::id()) {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
                }
            }
            Err("interrupted; the servers started were sent SIGTERM".into())
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("octopus-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

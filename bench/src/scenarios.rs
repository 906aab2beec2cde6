//! The named presets and how one is run against one server.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::http;
use crate::load::{self, Group, LoadSpec, Mode};
use crate::procfs;
use crate::results::{Checks, Generation, LogFacts, ScenarioResult, Shutdown};
use crate::server::{Bins, Kind, Server};
use crate::upgrades::{self, ControlCli, Plan, Sig};

/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The servers' drain timeout (octopus's default), used to bound the waits.
const DRAIN: Duration = Duration::from_secs(5);
/// Load after the last upgrade: the last old process drains under load.
const TAIL: Duration = Duration::from_millis(1500);
/// The `control` scenario's bound on the time of all its upgrades, per upgrade.
const CONTROL_BOUND_PER_UPGRADE: Duration = Duration::from_secs(2);

/// A named scenario.
#[derive(Debug, Clone)]
pub struct Preset {
    /// Name.
    pub name: String,
    /// Client groups.
    pub groups: Vec<Group>,
    /// Load time.
    pub duration: Duration,
    /// Upgrades, if any.
    pub plan: Option<Plan>,
    /// SIGTERM at t0 + this (shutdown scenario).
    pub shutdown_at: Option<Duration>,
    /// The servers it runs against by default.
    pub servers: Vec<Kind>,
}

/// Command-line overrides of a preset.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Clients of the main group.
    pub clients: Option<usize>,
    /// Upgrades.
    pub upgrades: Option<usize>,
    /// Interval between upgrades.
    pub interval_ms: Option<u64>,
}

fn group(name: &str, path: &str, clients: usize, mode: Mode) -> Group {
    Group {
        name: name.into(),
        path: path.into(),
        clients,
        mode,
        ramp_ms: 0,
    }
}

/// The preset called `name`, with the overrides applied.
pub fn preset(name: &str, o: &Overrides) -> Option<Preset> {
    use Kind::{Baseline, Ecdysis, Octopus};
    let c = |default: usize| o.clients.unwrap_or(default);
    let (groups, sig, count, interval, servers) = match name {
        "keepalive" | "smoke-keepalive" => (
            vec![group("pid", "/pid", c(64), Mode::KeepAlive)],
            Sig::Sighup,
            100,
            250,
            vec![Octopus, Ecdysis],
        ),
        // The keepalive load from 10,000 connections (issue 12: failed requests while
        // upgrading at scale); the upgrades start once they are all open.
        "keepalive-10k" => (
            vec![Group {
                ramp_ms: 3000,
                ..group("pid", "/pid", c(10_000), Mode::KeepAlive)
            }],
            Sig::Sighup,
            10,
            1000,
            vec![Octopus],
        ),
        // The keepalive load, upgraded by `octopus upgrade` back to back (no interval).
        "control" | "smoke-control" => (
            vec![group("pid", "/pid", c(64), Mode::KeepAlive)],
            Sig::Control,
            50,
            0,
            vec![Octopus],
        ),
        "new-conn" | "smoke-new-conn" => (
            vec![group("pid", "/pid", c(64), Mode::NewConn)],
            Sig::Sighup,
            100,
            250,
            vec![Octopus, Ecdysis],
        ),
        "inflight" => (
            vec![
                group("slow", "/sleep?ms=1000", 16, Mode::KeepAlive),
                group("pid", "/pid", c(48), Mode::KeepAlive),
            ],
            Sig::Sighup,
            20,
            500,
            vec![Octopus, Ecdysis],
        ),
        "usr1" => (
            vec![group("pid", "/pid", c(64), Mode::NewConn)],
            Sig::Sigusr1,
            20,
            250,
            vec![Octopus],
        ),
        "shutdown" => {
            let groups = vec![
                group("slow", "/sleep?ms=1000", 16, Mode::KeepAlive),
                group("pid", "/pid", c(48), Mode::KeepAlive),
            ];
            return Some(Preset {
                name: name.into(),
                groups,
                duration: Duration::from_secs(10),
                plan: None,
                // Half-way through the slow requests (1 s each, back to back from t0), so that
                // 16 of them are in flight when the signal comes.
                shutdown_at: Some(Duration::from_millis(3500)),
                servers: vec![Octopus, Ecdysis, Baseline],
            });
        }
        _ => return None,
    };
    let smoke = name.starts_with("smoke-");
    let count = o.upgrades.unwrap_or(if smoke { 5 } else { count });
    let interval = match sig {
        Sig::Control => Duration::ZERO,
        _ => Duration::from_millis(o.interval_ms.unwrap_or(if smoke { 700 } else { interval })),
    };
    let first_at = Duration::from_secs(if name == "keepalive-10k" { 5 } else { 1 });
    let last_before = if sig == Sig::Control {
        // Back to back: a bound, not a schedule; the load ends `TAIL` after the last answer.
        first_at + CONTROL_BOUND_PER_UPGRADE * count as u32
    } else {
        first_at + interval * count as u32
    };
    Some(Preset {
        name: name.into(),
        groups,
        duration: last_before + TAIL,
        plan: Some(Plan {
            sig,
            count,
            interval,
            first_at,
            last_before,
            ready_timeout: Duration::from_secs(10),
        }),
        shutdown_at: None,
        servers: if smoke { vec![Octopus] } else { servers },
    })
}

fn ms_signed(t0: Instant, t: Instant) -> f64 {
    if t >= t0 {
        (t - t0).as_secs_f64() * 1000.0
    } else {
        -((t0 - t).as_secs_f64() * 1000.0)
    }
}

/// Waits (bounded) until the fd count of `pid` is at most `target`; returns the last count.
async fn settle_fds(pid: u32, target: Option<usize>) -> Option<usize> {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut last = procfs::fd_count(pid);
    // Closed client connections are closed by the server asynchronously, with no log line to
    // wait on: poll /proc for at most 3 s.
    for _ in 0..150 {
        last = procfs::fd_count(pid);
        match (last, target) {
            (Some(n), Some(t)) if n <= t => break,
            (None, _) => break,
            _ => {}
        }
        tick.tick().await;
    }
    last
}

/// Runs `preset` against `kind`; the server's log goes to `log_dir`.
pub async fn run(
    preset: &Preset,
    kind: Kind,
    bins: &Bins,
    log_dir: &Path,
    command: &str,
) -> Result<ScenarioResult, String> {
    let _ = std::fs::create_dir_all(log_dir);
    let loadavg_before = procfs::loadavg();
    let log = log_dir.join(format!("{}-{}.log", preset.name, kind.name()));
    let (control, _control_dir) = match &preset.plan {
        Some(plan) if plan.sig == Sig::Control => {
            let (cli, dir) = control_cli(bins, log_dir, &preset.name)?;
            (Some(cli), Some(dir))
        }
        _ => (None, None),
    };
    let extra: Vec<String> = match &control {
        Some(cli) => vec![
            "--control".into(),
            cli.socket.to_string_lossy().into_owned(),
        ],
        None => Vec::new(),
    };
    let server = Server::start(kind, bins, &extra, Some(&log)).await?;
    let first = server.first_pid;
    let mut checks = Checks {
        first_fds: procfs::fd_count(first),
        first_fd_kinds: procfs::fd_kinds(first),
        first_rss_kb: procfs::rss_kb(first),
        ..Checks::default()
    };
    let t0 = Instant::now();
    let spec = LoadSpec {
        addr: server.addr,
        groups: preset.groups.clone(),
        t0,
        stop_at: t0 + preset.duration,
        timeout: REQUEST_TIMEOUT,
        stop_on_refused: preset.shutdown_at.is_some(),
        stop: control.as_ref().map(|_| Arc::new(AtomicBool::new(false))),
    };
    let stop = spec.stop.clone();
    let load = tokio::spawn(load::run(spec));
    let mut ups = match (&preset.plan, &control, &stop) {
        (Some(plan), Some(cli), Some(stop)) => {
            let ups = upgrades::drive_control(&server, t0, plan, cli).await;
            // A fixed stretch of load after the last answer, as the other presets have.
            tokio::time::sleep(TAIL).await;
            stop.store(true, Ordering::Relaxed);
            ups
        }
        (Some(plan), _, _) => upgrades::drive(&server, t0, plan).await,
        _ => Vec::new(),
    };
    let mut shutdown = None;
    if let Some(at) = preset.shutdown_at {
        tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + at)).await;
        let sent = Instant::now();
        server.signal(first, Signal::TERM);
        let exited = server
            .wait_for(DRAIN + Duration::from_secs(5), |s| {
                s.gens.get(&first).and_then(|g| g.exited)
            })
            .await;
        let s = server.state();
        shutdown = Some(Shutdown {
            signal_ms: ms_signed(t0, sent),
            exit_ms: exited.map(|t| ms_signed(t0, t)),
            status: s.gens.get(&first).and_then(|g| g.status.clone()),
            ..Shutdown::default()
        });
    }
    let outcome = load.await.map_err(|e| format!("load task: {e}"))?;
    // RSS of the last generation at the end of the load, as the others just before their signal.
    let newest_rss = server.state().newest_alive().and_then(procfs::rss_kb);
    let secs = preset
        .duration
        .as_secs_f64()
        .min(outcome.elapsed.as_secs_f64());

    // Old generations finish their drain.
    if preset.plan.as_ref().is_some_and(|p| p.sig.old_exits()) {
        server
            .wait_for(DRAIN + Duration::from_secs(2), |s| {
                (s.alive().len() <= 1).then_some(())
            })
            .await;
    }
    upgrades::complete(&mut ups, &server, t0, &outcome.pids);

    let newest = server.state().newest_alive();
    if shutdown.is_none() {
        if let Ok(r) = http::get_once(server.addr, "/pid", REQUEST_TIMEOUT).await {
            checks.answers_after = r.status == 200;
            checks.final_pid = std::str::from_utf8(&r.body)
                .ok()
                .and_then(|b| b.trim().parse().ok());
        }
        if let Some(pid) = newest {
            checks.final_fds = settle_fds(pid, checks.first_fds).await;
            checks.final_fd_kinds = procfs::fd_kinds(pid);
            checks.final_rss_kb = newest_rss;
        }
    }
    let all_pids: Vec<u32> = server.state().gens.keys().copied().collect();
    checks.zombies_before_stop = procfs::zombies_of(&all_pids);
    checks.alive_at_end = server.state().alive().len();
    if let Some(last) = ups.last() {
        checks.answering_after_last_upgrade = outcome
            .pids
            .values()
            .filter(|p| p.last_ms > last.signal_ms)
            .count();
    }
    checks.killed = server.stop_all(DRAIN + Duration::from_secs(5)).await;
    // Every generation reaped: here (the tool is their subreaper) or by its parent.
    server
        .wait_for(Duration::from_secs(5), |s| {
            s.alive().is_empty().then_some(())
        })
        .await;
    let mut parents = all_pids.clone();
    parents.push(std::process::id());
    checks.zombies_after_stop = procfs::zombies_of(&parents);

    let s = server.state();
    let mut generations = Vec::new();
    for pid in &s.order {
        let g = &s.gens[pid];
        let rss_kb = if Some(*pid) == newest && shutdown.is_none() {
            checks.final_rss_kb
        } else {
            ups.iter()
                .find(|u| u.old_pid == *pid)
                .and_then(|u| u.old_rss_kb)
        };
        generations.push(Generation {
            pid: *pid,
            started_ms: g.started.map(|t| ms_signed(t0, t)),
            exited_ms: g.exited.map(|t| ms_signed(t0, t)),
            status: g.status.clone().or_else(|| {
                (!procfs::alive(*pid)).then(|| "reaped by its parent (status not logged)".into())
            }),
            rss_kb,
            responses: outcome.pids.get(pid).map_or(0, |p| p.count),
        });
        // A generation reaped by its own parent (usr1: the parents are stopped at the same
        // time) is gone without a status the tool could see: not a bad exit, unless alive.
        let status = match g.status.as_deref() {
            None if !procfs::alive(*pid) => Some("reaped by its parent (status not logged)"),
            other => other,
        };
        match status {
            Some("exit 0") | Some("reaped by its parent") => {}
            Some("reaped by its parent (status not logged)") => {}
            other => checks
                .bad_exits
                .push((*pid, other.unwrap_or("still running").to_string())),
        }
    }
    if let Some(sd) = shutdown.as_mut() {
        for f in &outcome.failures {
            let map = if f.start_ms < sd.signal_ms {
                &mut sd.failed_before_signal
            } else {
                &mut sd.failed_after_signal
            };
            *map.entry(f.class.name().to_string()).or_insert(0) += 1;
        }
    }
    let mut result = ScenarioResult {
        scenario: preset.name.clone(),
        server: kind.name().into(),
        command: command.into(),
        loadavg_before,
        // The control run's length is the time its upgrades took.
        duration_s: if control.is_some() {
            secs
        } else {
            preset.duration.as_secs_f64()
        },
        groups: preset.groups.clone(),
        upgrades_planned: preset.plan.as_ref().map_or(0, |p| p.count),
        interval_ms: preset
            .plan
            .as_ref()
            .map_or(0, |p| p.interval.as_millis() as u64),
        signal: match (&preset.plan, preset.shutdown_at) {
            (Some(p), _) => format!("{:?}", p.sig).to_uppercase(),
            (None, Some(_)) => "SIGTERM".into(),
            _ => "none".into(),
        },
        upgrades: ups,
        generations,
        checks,
        shutdown,
        log: LogFacts {
            cut: s.cut,
            drains_complete: s.drains_complete,
            notable: s.notable.iter().take(20).cloned().collect(),
        },
        ..ScenarioResult::default()
    };
    result.set_load(&outcome, secs);
    Ok(result)
}

/// The temporary directory of the control socket, removed when the run ends, however it ends.
struct ControlDir(std::path::PathBuf);

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `octopus` command and a control socket path in a fresh temporary directory.
fn control_cli(
    bins: &Bins,
    log_dir: &Path,
    name: &str,
) -> Result<(ControlCli, ControlDir), String> {
    if !bins.octopus.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p octopus-cli",
            bins.octopus.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("octopus-bench-{name}-{}", std::process::id()));
    // A directory left by an earlier run of this pid would hold a stale socket.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stderr_log = log_dir.join(format!("{name}-octopus-upgrade.log"));
    // Appended to by every run: start empty.
    let _ = std::fs::remove_file(&stderr_log);
    let cli = ControlCli {
        program: bins.octopus.clone(),
        socket: dir.join("control.sock"),
        stderr_log,
    };
    Ok((cli, ControlDir(dir)))
}

/// What makes a smoke run fail; empty when it passed.
pub fn smoke_problems(r: &ScenarioResult) -> Vec<String> {
    let mut problems = Vec::new();
    if r.total.failed > 0 {
        problems.push(format!(
            "{} failed requests {:?}",
            r.total.failed, r.total.failed_by_class
        ));
    }
    let completed = r.upgrades.iter().filter(|u| u.new_pid.is_some()).count();
    for u in &r.upgrades {
        if let Some(c) = u
            .control
            .as_ref()
            .filter(|c| !c.succeeded(u.old_pid, u.new_pid))
        {
            problems.push(format!(
                "upgrade {}: octopus upgrade {} after {:.0} ms, answer {:?}",
                u.n,
                c.status,
                c.wall_ms,
                c.answer.as_deref().unwrap_or("ok")
            ));
        }
    }
    if completed < r.upgrades_planned {
        problems.push(format!(
            "{completed} of {} upgrades completed",
            r.upgrades_planned
        ));
    }
    let c = &r.checks;
    if !c.answers_after {
        problems.push("the server did not answer after the run".into());
    }
    if !c.fd_ok() {
        problems.push(format!(
            "fd count: first {:?}, final {:?} ({:?} vs {:?})",
            c.first_fds, c.final_fds, c.first_fd_kinds, c.final_fd_kinds
        ));
    }
    if !c.zombies_before_stop.is_empty() || !c.zombies_after_stop.is_empty() {
        problems.push(format!(
            "zombies: {:?} {:?}",
            c.zombies_before_stop, c.zombies_after_stop
        ));
    }
    if !c.killed.is_empty() || !c.bad_exits.is_empty() {
        problems.push(format!(
            "killed {:?}, bad exits {:?}",
            c.killed, c.bad_exits
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrades::{ControlCall, Upgrade};

    fn one_upgrade(call: ControlCall) -> ScenarioResult {
        ScenarioResult {
            upgrades_planned: 1,
            upgrades: vec![Upgrade {
                n: 1,
                old_pid: 10,
                new_pid: Some(11),
                control: Some(call),
                ..Upgrade::default()
            }],
            checks: Checks {
                answers_after: true,
                first_fds: Some(15),
                final_fds: Some(15),
                ..Checks::default()
            },
            ..ScenarioResult::default()
        }
    }

    #[test]
    fn the_smoke_run_fails_on_an_octopus_upgrade_that_did_not_succeed() {
        let good = ControlCall {
            reported_ms: Some(12),
            pid: Some(11),
            old_pid: Some(10),
            wall_ms: 20.0,
            exit_code: Some(0),
            status: "exit 0".into(),
            answer: None,
        };
        assert_eq!(
            smoke_problems(&one_upgrade(good.clone())),
            Vec::<String>::new()
        );

        let rolled_back = ControlCall {
            reported_ms: None,
            exit_code: Some(1),
            status: "exit 1".into(),
            answer: Some(r#"{"ok":false,"reason":"spawn"}"#.into()),
            ..good.clone()
        };
        let problems = smoke_problems(&one_upgrade(rolled_back));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("octopus upgrade exit 1"),
            "{problems:?}"
        );

        // Exit 0 but a pid the server's log did not start: not a success either.
        let wrong_pid = ControlCall {
            pid: Some(99),
            ..good
        };
        assert_eq!(smoke_problems(&one_upgrade(wrong_pid)).len(), 1);
    }
}

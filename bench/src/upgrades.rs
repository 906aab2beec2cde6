//! The upgrade driver: K signals, one every I ms, each to the generation that serves now,
//! following the pid across generations through the server's log; or K runs of
//! `octopus upgrade` on the control socket, each started when the previous one answered.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde::{Deserialize, Serialize};

use crate::procfs;
use crate::server::Server;

/// The upgrade signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Sig {
    /// Upgrade; the old process drains and exits.
    Sighup,
    /// Upgrade; the old process keeps serving.
    Sigusr1,
    /// No signal: `octopus upgrade --control PATH --json`; the old process drains and exits.
    Control,
}

impl Sig {
    fn signal(self) -> Option<Signal> {
        match self {
            Sig::Sighup => Some(Signal::HUP),
            Sig::Sigusr1 => Some(Signal::USR1),
            Sig::Control => None,
        }
    }

    /// The old process drains and exits after the upgrade.
    pub fn old_exits(self) -> bool {
        matches!(self, Sig::Sighup | Sig::Control)
    }
}

/// The plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Signal to send.
    pub sig: Sig,
    /// Number of upgrades.
    pub count: usize,
    /// Time between two signals.
    pub interval: Duration,
    /// First signal at t0 + this.
    pub first_at: Duration,
    /// No signal at or after t0 + this.
    pub last_before: Duration,
    /// How long a new generation gets to log `server started`.
    pub ready_timeout: Duration,
}

/// One upgrade, times in ms since t0.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Upgrade {
    /// 1-based.
    pub n: usize,
    /// The process signalled.
    pub old_pid: u32,
    /// Its RSS just before the signal, KiB.
    pub old_rss_kb: Option<u64>,
    /// Its open fds just before the signal (connections included).
    pub old_fds: Option<usize>,
    /// When the signal was sent.
    pub signal_ms: f64,
    /// The new generation.
    pub new_pid: Option<u32>,
    /// Old process logged `new process spawned` (octopus only).
    pub spawned_ms: Option<f64>,
    /// New process logged `server started` (after reporting ready).
    pub started_ms: Option<f64>,
    /// Old process logged `new process ready` (octopus only).
    pub parent_saw_ready_ms: Option<f64>,
    /// First response from the new pid (filled after the run).
    pub first_response_ms: Option<f64>,
    /// Old process logged `old process draining` (filled after the run).
    pub drain_start_ms: Option<f64>,
    /// Old process logged `server shut down`: its drain is over (filled after the run).
    pub drain_end_ms: Option<f64>,
    /// Old process exited (filled after the run).
    pub old_exit_ms: Option<f64>,
    /// How the old process exited (filled after the run).
    pub old_status: Option<String>,
    /// The `octopus upgrade` run that made this upgrade (`control` scenario only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlCall>,
}

/// One run of `octopus upgrade --control PATH --json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlCall {
    /// `duration_ms` of its answer: the server's own time from the request to the new process
    /// ready (absent when the answer was not ok or not understood).
    pub reported_ms: Option<u64>,
    /// `pid` of its answer: the new process.
    pub pid: Option<u32>,
    /// `old_pid` of its answer.
    pub old_pid: Option<u32>,
    /// Wall time of the command, from its spawn to its exit (reaped by the tool), ms.
    pub wall_ms: f64,
    /// Its exit code; `None`: killed by a signal, or had not exited within the bound.
    pub exit_code: Option<i32>,
    /// How it exited, e.g. `exit 0`, `signal 9`, `not exited`.
    pub status: String,
    /// Its stdout when it did not exit 0 (the refusal or rollback answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

impl ControlCall {
    /// It exited 0 with an ok answer whose pids are the expected ones.
    pub fn succeeded(&self, old_pid: u32, new_pid: Option<u32>) -> bool {
        self.exit_code == Some(0)
            && self.reported_ms.is_some()
            && self.old_pid == Some(old_pid)
            && self.pid.is_some()
            && self.pid == new_pid
    }
}

/// The `octopus` command and the control socket it drives.
#[derive(Debug, Clone)]
pub struct ControlCli {
    /// The `octopus` binary.
    pub program: PathBuf,
    /// The server's control socket.
    pub socket: PathBuf,
    /// File its stderr is appended to.
    pub stderr_log: PathBuf,
}

impl Upgrade {
    /// Signal to the first response of the new pid.
    pub fn signal_to_first_response(&self) -> Option<f64> {
        Some(self.first_response_ms? - self.signal_ms)
    }

    /// The hand-over proper: the new process ready (its `server started` line) to its first
    /// response; the new binary's own start-up is before it.
    pub fn handover(&self) -> Option<f64> {
        Some(self.first_response_ms? - self.started_ms?)
    }

    /// Signal to the new process's `server started` line.
    pub fn signal_to_started(&self) -> Option<f64> {
        Some(self.started_ms? - self.signal_ms)
    }

    /// New process ready (its `server started` line) to the old one's exit.
    pub fn ready_to_old_exit(&self) -> Option<f64> {
        Some(self.old_exit_ms? - self.started_ms?)
    }

    /// The old process's drain: `old process draining` to `server shut down`.
    pub fn drain(&self) -> Option<f64> {
        Some(self.drain_end_ms? - self.drain_start_ms?)
    }

    /// New process ready to the old one's drain start (the old one still accepts meanwhile).
    pub fn ready_to_drain_start(&self) -> Option<f64> {
        Some(self.drain_start_ms? - self.started_ms?)
    }

    /// How long the old process stayed after the new one was ready, beyond its own drain:
    /// target <= 50 ms.
    pub fn linger(&self) -> Option<f64> {
        Some(self.ready_to_old_exit()? - self.drain()?)
    }

    /// Signal to the old process's exit.
    pub fn signal_to_old_exit(&self) -> Option<f64> {
        Some(self.old_exit_ms? - self.signal_ms)
    }
}

fn ms(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1000.0
}

/// Runs the plan against `server`; returns the upgrades done (a timeout ends the plan early).
pub async fn drive(server: &Server, t0: Instant, plan: &Plan) -> Vec<Upgrade> {
    let mut done = Vec::new();
    let t0_tokio = tokio::time::Instant::from_std(t0);
    for n in 1..=plan.count {
        let at = plan.first_at + plan.interval * (n as u32 - 1);
        if at >= plan.last_before {
            break;
        }
        // A schedule, not a wait for an event: the signal is due at t0 + `at`.
        tokio::time::sleep_until(t0_tokio + at).await;
        if t0.elapsed() >= plan.last_before {
            break;
        }
        let Some(old_pid) = server.state().newest_alive() else {
            break;
        };
        let known_before = server.state().order.len();
        let mut up = Upgrade {
            n,
            old_pid,
            old_rss_kb: procfs::rss_kb(old_pid),
            old_fds: procfs::fd_count(old_pid),
            ..Upgrade::default()
        };
        let Some(signal) = plan.sig.signal() else {
            break;
        };
        let sent = Instant::now();
        if !server.signal(old_pid, signal) {
            break;
        }
        up.signal_ms = ms(t0, sent);
        let new_pid = server
            .wait_for(plan.ready_timeout, |s| s.order.get(known_before).copied())
            .await;
        if let Some(pid) = new_pid {
            let s = server.state();
            let g = &s.gens[&pid];
            up.new_pid = Some(pid);
            up.started_ms = g.started.map(|t| ms(t0, t));
            up.spawned_ms = g.spawned.map(|t| ms(t0, t));
            up.parent_saw_ready_ms = g.ready.map(|t| ms(t0, t));
        }
        let failed = up.new_pid.is_none();
        done.push(up);
        if failed {
            break;
        }
    }
    done
}

/// Runs `octopus upgrade` once; `limit` bounds it (then it is killed).
async fn run_cli(server: &Server, cli: &ControlCli, ready_timeout: Duration) -> ControlCall {
    // The command's own bound, beyond which the tool gives up on it, is a few seconds longer.
    let limit = ready_timeout + Duration::from_secs(10);
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cli.stderr_log)
        .map_or_else(|_| Stdio::null(), Stdio::from);
    let mut cmd = Command::new(&cli.program);
    cmd.arg("upgrade")
        .arg("--control")
        .arg(&cli.socket)
        .arg("--json")
        .arg("--timeout")
        .arg(ready_timeout.as_secs_f64().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let start = Instant::now();
    let mut child = match server.spawn_helper(&mut cmd) {
        Ok(child) => child,
        Err(e) => {
            return ControlCall {
                status: format!("cannot start {}: {e}", cli.program.display()),
                ..ControlCall::default()
            };
        }
    };
    let pid = child.id();
    let stdout = child.stdout.take();
    // Ends at EOF: when the command exits (or is killed below).
    let reader = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        if let Some(mut out) = stdout {
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
        }
        text
    });
    let exit = |s: &crate::server::State| s.helpers.get(&pid).cloned().flatten();
    let mut exited = server.wait_for(limit, exit).await;
    if exited.is_none() {
        // Not reaped yet, so the pid is still this child's.
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
        exited = server.wait_for(Duration::from_secs(5), exit).await;
    }
    let text = reader.await.unwrap_or_default();
    let (ended, status) = match exited {
        Some((t, status)) => (t, status),
        None => (Instant::now(), "not exited".to_string()),
    };
    let exit_code = status.strip_prefix("exit ").and_then(|c| c.parse().ok());
    let answer: Option<serde_json::Value> = serde_json::from_str(text.trim()).ok();
    let field = |name: &str| answer.as_ref().and_then(|a| a.get(name)?.as_u64());
    let ok = answer
        .as_ref()
        .and_then(|a| a.get("ok")?.as_bool())
        .unwrap_or(false);
    ControlCall {
        reported_ms: field("duration_ms").filter(|_| ok),
        pid: field("pid").map(|p| p as u32),
        old_pid: field("old_pid").map(|p| p as u32),
        wall_ms: ended.saturating_duration_since(start).as_secs_f64() * 1000.0,
        answer: (exit_code != Some(0)).then(|| text.trim().to_string()),
        exit_code,
        status,
    }
}

/// Runs `plan.count` upgrades with `octopus upgrade`, from t0 + `plan.first_at` on, each
/// started when the previous command exited; none starts at or after t0 + `plan.last_before`.
/// A failed upgrade is recorded and the next one is tried (the old process still serves).
pub async fn drive_control(
    server: &Server,
    t0: Instant,
    plan: &Plan,
    cli: &ControlCli,
) -> Vec<Upgrade> {
    let mut done = Vec::new();
    // A schedule, not a wait for an event: the load runs alone for `first_at` first.
    tokio::time::sleep_until(tokio::time::Instant::from_std(t0) + plan.first_at).await;
    for n in 1..=plan.count {
        if t0.elapsed() >= plan.last_before {
            break;
        }
        let Some(old_pid) = server.state().newest_alive() else {
            break;
        };
        let mut up = Upgrade {
            n,
            old_pid,
            old_rss_kb: procfs::rss_kb(old_pid),
            old_fds: procfs::fd_count(old_pid),
            signal_ms: ms(t0, Instant::now()),
            ..Upgrade::default()
        };
        let call = run_cli(server, cli, plan.ready_timeout).await;
        if let Some(pid) = call.pid.filter(|_| call.exit_code == Some(0)) {
            // The new process logs `server started` after it reported ready: maybe after the
            // answer.
            let started = server
                .wait_for(plan.ready_timeout, |s| {
                    s.gens.get(&pid).and_then(|g| g.started)
                })
                .await;
            if started.is_some() {
                let s = server.state();
                let g = &s.gens[&pid];
                up.new_pid = Some(pid);
                up.started_ms = g.started.map(|t| ms(t0, t));
                up.spawned_ms = g.spawned.map(|t| ms(t0, t));
                up.parent_saw_ready_ms = g.ready.map(|t| ms(t0, t));
            }
        }
        up.control = Some(call);
        done.push(up);
    }
    done
}

/// Fills in what is known only after the run: first responses and old processes' exits.
pub fn complete(
    upgrades: &mut [Upgrade],
    server: &Server,
    t0: Instant,
    pids: &std::collections::BTreeMap<u32, crate::load::PidSeen>,
) {
    let s = server.state();
    for up in upgrades {
        if let Some(pid) = up.new_pid {
            up.first_response_ms = pids.get(&pid).map(|p| p.first_ms);
            if up.parent_saw_ready_ms.is_none() {
                up.parent_saw_ready_ms = s.gens[&pid].ready.map(|t| ms(t0, t));
            }
        }
        if let Some(g) = s.gens.get(&up.old_pid) {
            up.old_exit_ms = g.exited.map(|t| ms(t0, t));
            up.drain_start_ms = g.draining.map(|t| ms(t0, t));
            up.drain_end_ms = g.shut_down.map(|t| ms(t0, t));
            up.old_status = g.status.clone();
        }
    }
}

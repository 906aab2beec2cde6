//! The upgrade driver: K signals, one every I ms, each to the generation that serves now,
//! following the pid across generations through the server's log.

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
}

impl Sig {
    fn signal(self) -> Signal {
        match self {
            Sig::Sighup => Signal::HUP,
            Sig::Sigusr1 => Signal::USR1,
        }
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
        let sent = Instant::now();
        if !server.signal(old_pid, plan.sig.signal()) {
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

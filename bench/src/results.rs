//! The JSON result of a scenario run, one file per scenario and server.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::http::Class;
use crate::load::{Bucket, Failure, Group, GroupStats, LoadOutcome, PidSeen};
use crate::procfs::Zombie;
use crate::upgrades::Upgrade;

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

/// Counts of one client group (or all).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Group name.
    pub name: String,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub failed: u64,
    /// Failed requests by class.
    pub failed_by_class: BTreeMap<String, u64>,
    /// Successful requests per second over the load time.
    pub rps: f64,
    /// Latency of successful requests.
    pub latency: Latency,
    /// Connections opened.
    pub connections: u64,
    /// Idle connections the client found closed by the server before reusing them.
    #[serde(default)]
    pub closed_while_idle: u64,
}

impl Counts {
    /// From merged stats.
    pub fn from_stats(name: &str, g: &GroupStats, secs: f64) -> Counts {
        let h = &g.latency_us;
        Counts {
            name: name.to_string(),
            ok: g.ok,
            failed: g.failed_total(),
            failed_by_class: Class::ALL
                .iter()
                .filter(|c| g.failed[c.index()] > 0)
                .map(|c| (c.name().to_string(), g.failed[c.index()]))
                .collect(),
            rps: g.ok as f64 / secs.max(1e-9),
            latency: Latency {
                p50_us: h.value_at_quantile(0.5),
                p90_us: h.value_at_quantile(0.9),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
                mean_us: h.mean(),
            },
            connections: g.connections,
            closed_while_idle: g.closed_while_idle,
        }
    }
}

/// One generation of the server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Generation {
    /// Pid.
    pub pid: u32,
    /// Its `server started` line, ms since t0 (negative: before the load).
    pub started_ms: Option<f64>,
    /// Its exit, ms since t0.
    pub exited_ms: Option<f64>,
    /// How it exited.
    pub status: Option<String>,
    /// RSS when it was signalled (or, for the last one, after the load), KiB.
    pub rss_kb: Option<u64>,
    /// Responses it gave.
    pub responses: u64,
}

/// Checks after the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checks {
    /// The newest generation answered `GET /pid` after the load.
    pub answers_after: bool,
    /// Pid that answered it.
    pub final_pid: Option<u32>,
    /// Open fds of the first generation, idle, before the load.
    pub first_fds: Option<usize>,
    /// Open fds of the final generation, idle, after the load.
    pub final_fds: Option<usize>,
    /// fds of the first generation by kind.
    pub first_fd_kinds: BTreeMap<String, usize>,
    /// fds of the final generation by kind.
    pub final_fd_kinds: BTreeMap<String, usize>,
    /// RSS of the first generation, idle, before the load, KiB.
    pub first_rss_kb: Option<u64>,
    /// RSS of the final generation, after the load, KiB.
    pub final_rss_kb: Option<u64>,
    /// Zombies left by a generation (seen after the load, before the stop).
    pub zombies_before_stop: Vec<Zombie>,
    /// Zombies left after the stop (children of the tool or of a generation).
    pub zombies_after_stop: Vec<Zombie>,
    /// Generations that had to be SIGKILLed at the end.
    pub killed: Vec<u32>,
    /// Generations that did not exit with status 0 (pid, status).
    pub bad_exits: Vec<(u32, String)>,
    /// Generations alive when the load ended (usr1: all of them).
    pub alive_at_end: usize,
    /// Generations that answered at least one request after the last upgrade (usr1).
    pub answering_after_last_upgrade: usize,
}

impl Checks {
    /// The fd count of the final generation equals the first one's.
    pub fn fd_ok(&self) -> bool {
        self.first_fds.is_some() && self.first_fds == self.final_fds
    }
}

/// The shutdown scenario's own figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Shutdown {
    /// When SIGTERM was sent, ms since t0.
    pub signal_ms: f64,
    /// When the process exited, ms since t0.
    pub exit_ms: Option<f64>,
    /// Its exit status.
    pub status: Option<String>,
    /// Requests started before the signal that failed, by class (target: none).
    pub failed_before_signal: BTreeMap<String, u64>,
    /// Requests started after the signal that failed, by class (refused is expected).
    pub failed_after_signal: BTreeMap<String, u64>,
    /// Requests started before the signal that were answered after it.
    pub answered_after_signal: u64,
}

/// What the server logged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogFacts {
    /// Connections cut at a drain deadline.
    pub cut: u64,
    /// `drain complete` lines.
    pub drains_complete: u64,
    /// WARN/ERROR lines (first 20).
    pub notable: Vec<String>,
}

/// The result of one scenario against one server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub scenario: String,
    /// Server name.
    pub server: String,
    /// The command that produced it.
    pub command: String,
    /// First three fields of /proc/loadavg before the run (other work on the machine).
    pub loadavg_before: String,
    /// Load duration, s.
    pub duration_s: f64,
    /// Client groups.
    pub groups: Vec<Group>,
    /// Upgrades asked for.
    pub upgrades_planned: usize,
    /// Interval between upgrades, ms.
    pub interval_ms: u64,
    /// Signal.
    pub signal: String,
    /// All groups.
    pub total: Counts,
    /// Per group.
    pub per_group: Vec<Counts>,
    /// Per 100 ms.
    pub buckets: Vec<Bucket>,
    /// Failures with timing (first 500).
    pub failures: Vec<Failure>,
    /// Per answering pid.
    pub pids: BTreeMap<u32, PidSeen>,
    /// Upgrades done.
    pub upgrades: Vec<Upgrade>,
    /// Generations.
    pub generations: Vec<Generation>,
    /// Checks.
    pub checks: Checks,
    /// Shutdown scenario.
    pub shutdown: Option<Shutdown>,
    /// Log facts.
    pub log: LogFacts,
}

impl ScenarioResult {
    /// Fills the load part.
    pub fn set_load(&mut self, outcome: &LoadOutcome, secs: f64) {
        self.total = Counts::from_stats("all", &outcome.total(), secs);
        self.per_group = outcome
            .groups
            .iter()
            .zip(&self.groups)
            .map(|(g, spec)| Counts::from_stats(&spec.name, g, secs))
            .collect();
        self.buckets = outcome.buckets.clone();
        self.failures = outcome.failures.iter().take(500).cloned().collect();
        self.pids = outcome.pids.clone();
    }

    /// File name in the results directory.
    pub fn file_name(&self) -> String {
        format!("{}-{}.json", self.scenario, self.server)
    }
}

/// One run of the overhead scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OverheadRun {
    /// Server.
    pub server: String,
    /// /proc/loadavg before the run.
    #[serde(default)]
    pub loadavg_before: String,
    /// Figures.
    pub counts: Counts,
}

/// One round of the overhead scenario (each server once, back to back).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OverheadRound {
    /// The runs, in the order they ran.
    pub runs: Vec<OverheadRun>,
    /// server -> (rps ratio, p50 ratio, p99 ratio) against the baseline of this round.
    pub ratios: BTreeMap<String, [f64; 3]>,
}

/// The overhead scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OverheadResult {
    /// The command.
    pub command: String,
    /// Seconds per run.
    pub duration_s: f64,
    /// Clients.
    pub clients: usize,
    /// Rounds.
    pub rounds: Vec<OverheadRound>,
}

/// The wrk cross-check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WrkResult {
    /// The command.
    pub command: String,
    /// wrk's command line.
    pub wrk_command: String,
    /// Upgrades done.
    pub upgrades: usize,
    /// Generations seen.
    pub generations: usize,
    /// Requests wrk counted.
    pub requests: u64,
    /// wrk's Requests/sec.
    pub rps: f64,
    /// Socket errors: connect, read, write, timeout.
    pub socket_errors: [u64; 4],
    /// Non-2xx or 3xx responses.
    pub non_2xx: u64,
    /// wrk's latency percentiles 50/99, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile, µs.
    pub p99_us: Option<f64>,
    /// wrk's whole output.
    pub output: String,
}

/// Writes `value` as pretty JSON to `dir/name`.
pub fn write<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads `dir/name` if it exists and parses.
pub fn read<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Option<T> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

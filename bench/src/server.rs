//! The server under test: started as a child of the tool (a child subreaper, so every
//! generation ends up reaped here), its log read line by line from the one stderr pipe all
//! generations share, and its generations tracked by pid.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `examples/hello` of this repository.
    Octopus,
    /// `bench/src/bin/ecdysis_peer.rs`.
    Ecdysis,
    /// `bench/src/bin/baseline.rs`, plain hyper-util.
    Baseline,
    /// `bench/src/bin/hyper_http1.rs`, hyper's http1 builder alone.
    Http1,
    /// `bench/src/bin/router.rs --with axum`: `axum::serve` with graceful shutdown, as is
    /// (Nagle's algorithm on).
    Axum,
    /// `bench/src/bin/router.rs --with octopus`: the same axum router served by octopus, as is
    /// (`TCP_NODELAY` on).
    OctopusAxum,
    /// `Axum` with `TCP_NODELAY` on each connection, like `OctopusAxum`.
    AxumNodelay,
    /// `OctopusAxum` with Nagle's algorithm left on, like `Axum`.
    OctopusAxumNagle,
}

impl Kind {
    /// Name in file names and tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Octopus => "octopus",
            Kind::Ecdysis => "ecdysis",
            Kind::Baseline => "baseline",
            Kind::Http1 => "http1",
            Kind::Axum => "axum",
            Kind::OctopusAxum => "octopus-axum",
            Kind::AxumNodelay => "axum-nodelay",
            Kind::OctopusAxumNagle => "octopus-axum-nagle",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Octopus,
            Kind::Ecdysis,
            Kind::Baseline,
            Kind::Http1,
            Kind::Axum,
            Kind::OctopusAxum,
            Kind::AxumNodelay,
            Kind::OctopusAxumNagle,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }

    /// Arguments that make the binary this server.
    fn own_args(self) -> &'static [&'static str] {
        match self {
            Kind::Axum => &["--with", "axum"],
            Kind::OctopusAxum => &["--with", "octopus"],
            Kind::AxumNodelay => &["--with", "axum", "--nodelay", "true"],
            Kind::OctopusAxumNagle => &["--with", "octopus", "--nodelay", "false"],
            _ => &[],
        }
    }
}

/// Where the server binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `hello`.
    pub hello: PathBuf,
    /// `baseline`.
    pub baseline: PathBuf,
    /// `ecdysis_peer`.
    pub ecdysis: PathBuf,
    /// The `octopus` command (the `control` scenario only).
    pub octopus: PathBuf,
    /// `hyper_http1`.
    pub http1: PathBuf,
    /// `router` (axum, and octopus on the same router).
    pub router: PathBuf,
}

impl Bins {
    fn path(&self, kind: Kind) -> &Path {
        match kind {
            Kind::Octopus => &self.hello,
            Kind::Ecdysis => &self.ecdysis,
            Kind::Baseline => &self.baseline,
            Kind::Http1 => &self.http1,
            Kind::Axum | Kind::OctopusAxum | Kind::AxumNodelay | Kind::OctopusAxumNagle => {
                &self.router
            }
        }
    }
}

/// One process of the server.
#[derive(Debug, Clone, Default)]
pub struct Gen {
    /// Its pid.
    pub pid: u32,
    /// Its `server started pid=N` line.
    pub started: Option<Instant>,
    /// The old process logged `new process spawned pid=N` (octopus).
    pub spawned: Option<Instant>,
    /// The old process logged `new process ready pid=N` (octopus).
    pub ready: Option<Instant>,
    /// It logged `old process draining` (it stopped accepting and drains).
    pub draining: Option<Instant>,
    /// It logged `server shut down` (its drain is over).
    pub shut_down: Option<Instant>,
    /// It exited (reaped here, or reaped by its parent and logged).
    pub exited: Option<Instant>,
    /// How it exited, e.g. `exit 0` or `signal 9`.
    pub status: Option<String>,
}

/// What is known of the server, updated by the log reader and the reaper.
#[derive(Debug, Default)]
pub struct State {
    /// Generations by pid.
    pub gens: BTreeMap<u32, Gen>,
    /// Pids in the order they started.
    pub order: Vec<u32>,
    /// From `listening on 127.0.0.1:PORT`.
    pub port: Option<u16>,
    /// Sum of N over `drain deadline reached; cut N connections`.
    pub cut: u64,
    /// Count of `drain complete` lines.
    pub drains_complete: u64,
    /// WARN/ERROR lines (at most 100).
    pub notable: Vec<String>,
    /// Lines read.
    pub lines: u64,
    /// Other children of the tool (the `octopus` command), by pid: when the reaper reaped
    /// them and how they exited. The reaper takes every child, so their status is only here.
    pub helpers: BTreeMap<u32, Option<(Instant, String)>>,
}

impl State {
    fn generation(&mut self, pid: u32) -> &mut Gen {
        self.gens.entry(pid).or_insert_with(|| Gen {
            pid,
            ..Gen::default()
        })
    }

    /// The newest generation that started and did not exit.
    pub fn newest_alive(&self) -> Option<u32> {
        self.order
            .iter()
            .rev()
            .copied()
            .find(|pid| self.gens.get(pid).is_some_and(|g| g.exited.is_none()))
    }

    /// Generations that did not exit.
    pub fn alive(&self) -> Vec<u32> {
        self.gens
            .values()
            .filter(|g| g.exited.is_none())
            .map(|g| g.pid)
            .collect()
    }
}

/// A running server and what is known of it.
pub struct Server {
    /// Its address.
    pub addr: SocketAddr,
    /// The first generation.
    pub first_pid: u32,
    state: Arc<Mutex<State>>,
    changed: Arc<watch::Sender<u64>>,
}

fn pid_field(line: &str) -> Option<u32> {
    let rest = &line[line.find("pid=")? + 4..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn parse_line(state: &mut State, line: &str, now: Instant) {
    state.lines += 1;
    if line.contains("server started") {
        if let Some(pid) = pid_field(line) {
            let g = state.generation(pid);
            if g.started.is_none() {
                g.started = Some(now);
                state.order.push(pid);
            }
        }
    } else if line.contains("new process spawned") {
        if let Some(pid) = pid_field(line) {
            state.generation(pid).spawned = Some(now);
        }
    } else if line.contains("new process ready") {
        if let Some(pid) = pid_field(line) {
            state.generation(pid).ready = Some(now);
        }
    } else if line.contains("old process draining") {
        if let Some(pid) = pid_field(line) {
            state.generation(pid).draining = Some(now);
        }
    } else if line.contains("server shut down") {
        if let Some(pid) = pid_field(line) {
            state.generation(pid).shut_down = Some(now);
        }
    } else if let Some(i) = line.find("listening on ") {
        let addr = line[i + 13..].split_whitespace().next().unwrap_or("");
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            state.port = Some(addr.port());
        }
    } else if let Some(i) = line.find("cut ") {
        if line.contains("drain deadline reached") {
            let n: String = line[i + 4..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            state.cut += n.parse::<u64>().unwrap_or(0);
        }
    } else if line.contains("drain complete") {
        state.drains_complete += 1;
    } else if let Some(i) = line.find("process ") {
        // octopus: the old process reaped a generation it had spawned (usr1 mode).
        let rest = &line[i + 8..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if rest[digits.len()..].starts_with(" exited") {
            if let Ok(pid) = digits.parse::<u32>() {
                let g = state.generation(pid);
                if g.exited.is_none() {
                    g.exited = Some(now);
                    g.status = Some("reaped by its parent".into());
                }
            }
        }
    }
    if (line.contains(" WARN ") || line.contains(" ERROR ")) && state.notable.len() < 100 {
        state.notable.push(line.to_string());
    }
}

/// Makes this process the reaper of orphaned descendants (the generations of the server).
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// The reaper thread of the previous server, if any: one reaper at a time, so that an exit is
/// never recorded in the state of another server.
static REAPER: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

async fn previous_reaper_done() -> bool {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..500 {
        let finished = REAPER
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|h| h.is_finished());
        if finished {
            return true;
        }
        tick.tick().await;
    }
    false
}

fn spawn_reaper(state: Arc<Mutex<State>>, changed: Arc<watch::Sender<u64>>) {
    let handle = std::thread::spawn(move || {
        // Ends when this process has no child left (ECHILD); bounded in count as well.
        for _ in 0..1_000_000 {
            match rustix::process::wait(WaitOptions::empty()) {
                Ok(Some((pid, status))) => {
                    let now = Instant::now();
                    let text = match (status.exit_status(), status.terminating_signal()) {
                        (Some(code), _) => format!("exit {code}"),
                        (_, Some(sig)) => format!("signal {sig}"),
                        _ => "unknown".into(),
                    };
                    let mut s = lock(&state);
                    let pid = pid.as_raw_nonzero().get() as u32;
                    if let Some(helper) = s.helpers.get_mut(&pid) {
                        *helper = Some((now, text));
                    } else {
                        let g = s.generation(pid);
                        if g.exited.is_none() || g.status.as_deref() == Some("reaped by its parent")
                        {
                            g.exited = g.exited.or(Some(now));
                            g.status = Some(text);
                        }
                    }
                    drop(s);
                    changed.send_modify(|v| *v += 1);
                }
                Ok(None) => {}
                Err(e) if e == rustix::io::Errno::INTR => {}
                Err(_) => break,
            }
        }
    });
    *REAPER.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Picks a free port on 127.0.0.1 (for servers that cannot keep port 0 across upgrades).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    /// Starts `kind` on 127.0.0.1 and waits (bounded) until it serves.
    pub async fn start(
        kind: Kind,
        bins: &Bins,
        extra_args: &[String],
        log: Option<&Path>,
    ) -> Result<Server, String> {
        Server::start_on(kind, bins, extra_args, log, None).await
    }

    /// `start`, the server's threads confined to `cpu` if given (`taskset`, which execs the
    /// server: its pid is the server's, and every thread it makes inherits the mask; tokio
    /// then starts one worker per allowed CPU).
    pub async fn start_on(
        kind: Kind,
        bins: &Bins,
        extra_args: &[String],
        log: Option<&Path>,
        cpu: Option<usize>,
    ) -> Result<Server, String> {
        // ecdysis registers a listener under its bound address, so a child asking for port 0
        // would not find it: it gets a fixed free port.
        let port = match kind {
            Kind::Ecdysis => free_port().map_err(|e| format!("free port: {e}"))?,
            _ => 0,
        };
        if !previous_reaper_done().await {
            return Err("the previous server still has processes running".into());
        }
        let program = bins.path(kind);
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = command
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(kind.own_args())
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let first_pid = child.id();
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, _rx) = watch::channel(0u64);
        let changed = Arc::new(tx);
        spawn_reaper(state.clone(), changed.clone());
        let mut log_file = match log {
            Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
            None => None,
        };
        {
            let (state, changed) = (state.clone(), changed.clone());
            std::thread::spawn(move || {
                // Ends at EOF, when every generation has closed its stderr.
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let now = Instant::now();
                    if let Some(f) = log_file.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                    parse_line(&mut lock(&state), &line, now);
                    changed.send_modify(|v| *v += 1);
                }
            });
        }
        let mut server = Server {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            first_pid,
            state,
            changed,
        };
        let started = server
            .wait_for(Duration::from_secs(15), |s| {
                let g = s.gens.get(&first_pid)?;
                if g.exited.is_some() {
                    return Some(Err(format!("exited at start: {:?}", g.status)));
                }
                Some(Ok(s.port?)).filter(|_| g.started.is_some())
            })
            .await;
        match started {
            Some(Ok(port)) => server.addr.set_port(port),
            Some(Err(e)) => return Err(format!("{}: {e}", kind.name())),
            None => {
                server.kill_all();
                return Err(format!("{} did not start within 15 s", kind.name()));
            }
        }
        Ok(server)
    }

    /// Locks the state.
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Waits until `f` returns `Some`, at most `timeout`, waking on every log line and exit.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.changed.subscribe();
        // Bounded: each turn consumes one change notification or ends at the deadline.
        for _ in 0..10_000_000 {
            rx.borrow_and_update();
            if let Some(v) = f(&self.state()) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return f(&self.state()),
            }
        }
        None
    }

    /// Starts `cmd` as a helper (not a generation): its pid is registered under the state's
    /// lock, which the reaper takes before it records an exit, so even a helper that exits at
    /// once is recorded as one. `wait_for` its entry in `State::helpers` for its exit.
    pub fn spawn_helper(&self, cmd: &mut Command) -> std::io::Result<std::process::Child> {
        let mut s = self.state();
        let child = cmd.spawn()?;
        s.helpers.insert(child.id(), None);
        Ok(child)
    }

    /// Sends `signal` to `pid` (a generation of this server).
    pub fn signal(&self, pid: u32, signal: Signal) -> bool {
        let known = self.state().gens.contains_key(&pid) || pid == self.first_pid;
        match Pid::from_raw(pid as i32) {
            Some(p) if known => rustix::process::kill_process(p, signal).is_ok(),
            _ => false,
        }
    }

    /// Stops every generation still running with SIGTERM and waits (bounded) for all to
    /// exit; what is left after `timeout` is killed. Returns the pids that had to be killed.
    pub async fn stop_all(&self, timeout: Duration) -> Vec<u32> {
        let alive = self.state().alive();
        for pid in alive {
            self.signal(pid, Signal::TERM);
        }
        // Generations the log did not name (a garbled line) are still this tool's children,
        // as their subreaper: stop them too, so that none outlives the tool.
        let me = std::process::id();
        for pid in crate::procfs::children_of(me) {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::TERM);
            }
        }
        let done = self
            .wait_for(timeout, |s| {
                (s.alive().iter().all(|pid| !crate::procfs::alive(*pid))
                    && crate::procfs::children_of(me).is_empty())
                .then_some(())
            })
            .await;
        if done.is_some() {
            return Vec::new();
        }
        self.kill_all()
    }

    /// SIGKILLs every generation not known to have exited (clean-up only).
    pub fn kill_all(&self) -> Vec<u32> {
        let alive: Vec<u32> = self
            .state()
            .alive()
            .into_iter()
            .chain([self.first_pid])
            .chain(crate::procfs::children_of(std::process::id()))
            .filter(|pid| crate::procfs::alive(*pid))
            .collect();
        for pid in &alive {
            if let Some(p) = Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
        alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_log_lines_of_octopus() {
        let mut s = State::default();
        let t = Instant::now();
        let lines = [
            "2026-01-01T00:00:00.000001Z  INFO octopus::serve: listening on 127.0.0.1:4321",
            "2026-01-01T00:00:00.000002Z  INFO octopus::lifecycle: server started pid=10",
            "2026-01-01T00:00:00.000003Z  INFO octopus::upgrade: new process spawned pid=11 program=/x",
            "2026-01-01T00:00:00.000004Z  INFO octopus::upgrade: new process ready pid=11",
            "2026-01-01T00:00:00.000005Z  WARN octopus::drain: drain deadline reached; cut 3 connections elapsed=5s",
            "2026-01-01T00:00:00.000006Z  INFO octopus::lifecycle: process 12 exited (exit status: 0) pid=12",
        ];
        for l in lines {
            parse_line(&mut s, l, t);
        }
        assert_eq!(s.port, Some(4321));
        assert_eq!(s.order, vec![10]);
        assert!(s.gens[&11].spawned.is_some() && s.gens[&11].ready.is_some());
        assert_eq!(s.cut, 3);
        assert!(s.gens[&12].exited.is_some());
        assert_eq!(s.notable.len(), 1);
    }
}

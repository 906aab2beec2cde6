//! The `supervisor` scenario (issue 11): the Go net/http server of `octopus run`'s tests
//! (`cli/tests/servers/go`) upgraded under load by `octopus run` (`octopus upgrade --control`),
//! beside the same server restarted the naive way: SIGTERM, wait for its exit, start it again
//! binding the port itself (`-listen`). One run per load mode (keep-alive, a connection per
//! request) and per way, each a `ScenarioResult` of its own.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::sync::watch;

use crate::http;
use crate::load::{self, Group, LoadSpec, Mode};
use crate::procfs;
use crate::report::spread;
use crate::results::{self, Checks, Generation, ScenarioResult};
use crate::upgrades::{ControlCall, Upgrade};

/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The load runs alone this long before the first upgrade.
const FIRST_AT: Duration = Duration::from_secs(1);
/// Load after the last upgrade: the last old instance drains under load.
const TAIL: Duration = Duration::from_millis(1500);
/// How long a new instance gets to serve (also `octopus run --upgrade-timeout`).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound of `go build` (the first build compiles net/http).
const GO_BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// How the server is upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Under `octopus run`, by `octopus upgrade --control PATH`.
    OctopusRun,
    /// Stopped by SIGTERM and started again once it exited; it binds the port itself.
    Naive,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::OctopusRun => "octopus-run",
            Way::Naive => "naive",
        }
    }
}

/// The load modes, with their names in file names, and the ways, in run order.
const MODES: [(Mode, &str); 2] = [(Mode::KeepAlive, "keepalive"), (Mode::NewConn, "new-conn")];
const WAYS: [Way; 2] = [Way::OctopusRun, Way::Naive];

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Upgrades (or restarts) per run.
    pub upgrades: usize,
    /// Between the starts of two upgrades.
    pub interval: Duration,
    /// Concurrent clients.
    pub clients: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(t0: Instant, t: Instant) -> f64 {
    if t >= t0 {
        (t - t0).as_secs_f64() * 1000.0
    } else {
        -((t0 - t).as_secs_f64() * 1000.0)
    }
}

fn kill(pid: u32, signal: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, signal);
    }
}

/// The stderr lines of the processes of one run, each with the time it was read.
#[derive(Clone)]
struct Lines {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    changed: Arc<watch::Sender<usize>>,
    file: Arc<Mutex<std::fs::File>>,
}

impl Lines {
    fn new(path: &Path) -> Result<Lines, String> {
        let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Lines {
            lines: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            file: Arc::new(Mutex::new(file)),
        })
    }

    fn attach(&self, stderr: Option<ChildStderr>) {
        let Some(stderr) = stderr else { return };
        let me = self.clone();
        std::thread::spawn(move || {
            // Ends at EOF, when every process holding the pipe has exited.
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                let _ = writeln!(lock(&me.file), "{line}");
                let n = {
                    let mut lines = lock(&me.lines);
                    lines.push((now, line));
                    lines.len()
                };
                me.changed.send_replace(n);
            }
        });
    }

    fn len(&self) -> usize {
        lock(&self.lines).len()
    }

    /// The first line from index `from` on that `f` accepts, and when it was read; waits at
    /// most `timeout`.
    async fn wait<T>(
        &self,
        from: usize,
        timeout: Duration,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Option<(Instant, T)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.changed.subscribe();
        let mut next = from;
        // Bounded: each turn consumes a change notification or ends at the deadline.
        for _ in 0..1_000_000 {
            rx.borrow_and_update();
            {
                let lines = lock(&self.lines);
                for (at, line) in &lines[next.min(lines.len())..] {
                    if let Some(v) = f(line) {
                        return Some((*at, v));
                    }
                }
                next = lines.len();
            }
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return None;
            }
        }
        None
    }
}

/// `N` in `…PREFIX N SUFFIX…`.
fn pid_between(line: &str, prefix: &str, suffix: &str) -> Option<u32> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    rest[digits.len()..]
        .starts_with(suffix)
        .then(|| digits.parse().ok())
        .flatten()
}

fn listening_on(line: &str) -> Option<SocketAddr> {
    line.split("listening on ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `exit 0`, `signal 9`, as the other scenarios write it.
fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (_, Some(signal)) => format!("signal {signal}"),
        _ => "unknown".into(),
    }
}

/// How a child of the tool ended.
struct Exited {
    status: String,
    at: Instant,
    stdout: String,
    killed: bool,
}

/// Reaps `child` (reading its stdout if piped); SIGKILL after `limit`.
async fn finish(child: Child, limit: Duration) -> Exited {
    let pid = child.id();
    let mut waiting =
        tokio::task::spawn_blocking(move || (child.wait_with_output(), Instant::now()));
    let (joined, killed) = match tokio::time::timeout(limit, &mut waiting).await {
        Ok(joined) => (joined, false),
        Err(_) => {
            // Its wait has not returned, so it is not reaped and the pid is still its own.
            kill(pid, Signal::KILL);
            (waiting.await, true)
        }
    };
    match joined {
        Ok((Ok(output), at)) => Exited {
            status: status_text(output.status),
            at,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            killed,
        },
        Ok((Err(e), at)) => Exited {
            status: format!("wait failed: {e}"),
            at,
            stdout: String::new(),
            killed,
        },
        Err(e) => Exited {
            status: format!("wait task: {e}"),
            at: Instant::now(),
            stdout: String::new(),
            killed,
        },
    }
}

/// The temporary directory of one scenario run (Go binary, control socket), removed at the end.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process started by the tool; killed and reaped if dropped on an error path.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

/// Builds the Go server into `dir`.
async fn build_go(dir: &Path, log: &Path) -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/servers/go/main.go");
    let binary = dir.join("goserver");
    let stderr = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot run `go` ({e}): install Go (Debian: golang-go)"))?;
    let done = finish(child, GO_BUILD_TIMEOUT).await;
    if done.status != "exit 0" {
        return Err(format!(
            "go build {}: {}; see {}",
            source.display(),
            done.status,
            log.display()
        ));
    }
    Ok(binary)
}

/// The fixed parts of a run.
struct Setup<'a> {
    octopus: &'a Path,
    go: &'a Path,
    control: PathBuf,
    upgrade_log: PathBuf,
}

/// Starts the Go server binding `port` itself; returns it once it logged that it listens.
async fn start_naive(go: &Path, port: u16, lines: &Lines) -> Result<(Proc, Instant), String> {
    let from = lines.len();
    let mut child = Command::new(go)
        .arg("-listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", go.display()))?;
    lines.attach(child.stderr.take());
    let pid = child.id();
    let proc = Proc(Some(child));
    let (at, ()) = lines
        .wait(from, READY_TIMEOUT, |l| {
            (listening_on(l).is_some() && pid_between(l, "pid=", "") == Some(pid)).then_some(())
        })
        .await
        .ok_or(format!(
            "the Go server {pid} did not listen within {READY_TIMEOUT:?}"
        ))?;
    Ok((proc, at))
}

/// Starts `octopus run` with the Go server; returns it, its address and the instance's pid.
async fn start_supervised(s: &Setup<'_>, lines: &Lines) -> Result<(Proc, SocketAddr, u32), String> {
    let mut child = Command::new(s.octopus)
        .args(["run", "--listen", "127.0.0.1:0", "--control"])
        .arg(&s.control)
        .args([
            "--upgrade-timeout",
            &READY_TIMEOUT.as_secs().to_string(),
            "--",
        ])
        .arg(s.go)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", s.octopus.display()))?;
    lines.attach(child.stderr.take());
    let proc = Proc(Some(child));
    let (_, addr) = lines
        .wait(0, READY_TIMEOUT, listening_on)
        .await
        .ok_or("octopus run did not log its address")?;
    let (_, pid) = lines
        .wait(0, READY_TIMEOUT, |l| {
            pid_between(l, ": instance ", " ready after")
        })
        .await
        .ok_or("the Go instance under octopus run was not ready")?;
    Ok((proc, addr, pid))
}

/// One `octopus upgrade --control PATH --json`.
async fn control_upgrade(s: &Setup<'_>) -> ControlCall {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&s.upgrade_log)
        .map_or_else(|_| Stdio::null(), Stdio::from);
    let start = Instant::now();
    let child = Command::new(s.octopus)
        .args([
            "upgrade",
            "--json",
            "--timeout",
            &READY_TIMEOUT.as_secs().to_string(),
        ])
        .arg("--control")
        .arg(&s.control)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            return ControlCall {
                status: format!("cannot start {}: {e}", s.octopus.display()),
                ..ControlCall::default()
            };
        }
    };
    let done = finish(child, READY_TIMEOUT + Duration::from_secs(10)).await;
    let answer: Option<serde_json::Value> = serde_json::from_str(done.stdout.trim()).ok();
    let field = |name: &str| answer.as_ref().and_then(|a| a.get(name)?.as_u64());
    let ok = answer.as_ref().and_then(|a| a.get("ok")?.as_bool()) == Some(true);
    let exit_code = done
        .status
        .strip_prefix("exit ")
        .and_then(|c| c.parse().ok());
    ControlCall {
        reported_ms: field("duration_ms").filter(|_| ok),
        pid: field("pid").map(|p| p as u32),
        old_pid: field("old_pid").map(|p| p as u32),
        wall_ms: ms(start, done.at),
        answer: (exit_code != Some(0)).then(|| done.stdout.trim().to_string()),
        exit_code,
        status: done.status,
    }
}

/// Runs the load against the Go server upgraded `o.upgrades` times the `way` way.
async fn run_one(
    way: Way,
    (mode, mode_name): (Mode, &str),
    s: &Setup<'_>,
    o: &Options,
    log_dir: &Path,
    command: &str,
) -> Result<ScenarioResult, String> {
    let scenario = format!("supervisor-{mode_name}");
    let lines = Lines::new(&log_dir.join(format!("{scenario}-{}.log", way.name())))?;
    let loadavg_before = procfs::loadavg();
    let (mut proc, addr, first) = match way {
        Way::OctopusRun => start_supervised(s, &lines).await?,
        Way::Naive => {
            let port = crate::server::free_port().map_err(|e| format!("free port: {e}"))?;
            let (proc, _) = start_naive(s.go, port, &lines).await?;
            let pid = proc.pid();
            (proc, SocketAddr::from(([127, 0, 0, 1], port)), pid)
        }
    };
    let groups = vec![Group {
        name: "pid".into(),
        path: "/pid".into(),
        clients: o.clients,
        mode,
        ramp_ms: 0,
    }];
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let spec = LoadSpec {
        addr,
        groups: groups.clone(),
        t0,
        // A bound; the load ends `TAIL` after the last upgrade.
        stop_at: t0 + FIRST_AT + (o.interval + READY_TIMEOUT) * o.upgrades as u32 + TAIL,
        timeout: REQUEST_TIMEOUT,
        stop_on_refused: false,
        stop: Some(stop.clone()),
    };
    let load = tokio::spawn(load::run(spec));

    let mut ups = Vec::new();
    let mut serving = first;
    let t0_tokio = tokio::time::Instant::from_std(t0);
    for n in 1..=o.upgrades {
        // A schedule, not a wait for an event: upgrade n is due at this time.
        tokio::time::sleep_until(t0_tokio + FIRST_AT + o.interval * (n as u32 - 1)).await;
        let from = lines.len();
        let mut up = Upgrade {
            n,
            old_pid: serving,
            signal_ms: ms(t0, Instant::now()),
            ..Upgrade::default()
        };
        match way {
            Way::OctopusRun => {
                let call = control_upgrade(s).await;
                if let Some(pid) = call.pid.filter(|_| call.succeeded(serving, call.pid)) {
                    up.new_pid = Some(pid);
                    up.started_ms = lines
                        .wait(from, READY_TIMEOUT, |l| {
                            (pid_between(l, ": new instance ", " ready after") == Some(pid))
                                .then_some(())
                        })
                        .await
                        .map(|(at, ())| ms(t0, at));
                    serving = pid;
                }
                up.control = Some(call);
            }
            Way::Naive => {
                kill(serving, Signal::TERM);
                let old = finish(proc.0.take().ok_or("no server")?, STOP_TIMEOUT).await;
                up.old_exit_ms = Some(ms(t0, old.at));
                up.old_status = Some(old.status);
                let (new, at) = start_naive(s.go, addr.port(), &lines).await?;
                proc = new;
                serving = proc.pid();
                up.new_pid = Some(serving);
                up.started_ms = Some(ms(t0, at));
            }
        }
        let failed = up.new_pid.is_none();
        ups.push(up);
        if failed {
            break;
        }
    }
    tokio::time::sleep(TAIL).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.map_err(|e| format!("load task: {e}"))?;
    let secs = outcome.elapsed.as_secs_f64();

    let mut checks = Checks::default();
    if let Ok(r) = http::get_once(addr, "/pid", REQUEST_TIMEOUT).await {
        checks.answers_after = r.status == 200;
        checks.final_pid = std::str::from_utf8(&r.body)
            .ok()
            .and_then(|b| b.trim().parse().ok());
    }
    let parent = proc.pid();
    checks.zombies_before_stop = procfs::zombies_of(&[parent]);
    let stop_from = lines.len();
    kill(parent, Signal::TERM);
    let last = finish(proc.0.take().ok_or("no server")?, STOP_TIMEOUT).await;
    if last.killed {
        checks.killed.push(parent);
    }
    checks.zombies_after_stop = procfs::zombies_of(&[std::process::id()]);

    // Instances under `octopus run` are the supervisor's children: their exits are in its log.
    let logged_exit = |pid: u32| {
        let prefix = format!("instance {pid} exited (");
        move |l: &str| {
            let rest = &l[l.find(&prefix)? + prefix.len()..];
            let status = rest.rsplit_once(')').map_or(rest, |(s, _)| s);
            Some(
                match status
                    .split_once(' ')
                    .map(|(a, b)| (a, b.rsplit(' ').next()))
                {
                    Some(("exit", Some(code))) => format!("exit {code}"),
                    Some(("killed", Some(sig))) => format!("signal {sig}"),
                    _ => status.to_string(),
                },
            )
        }
    };
    let final_status = match way {
        Way::OctopusRun => lines
            .wait(stop_from, Duration::from_secs(2), logged_exit(serving))
            .await
            .map(|(at, status)| (ms(t0, at), status)),
        Way::Naive => Some((ms(t0, last.at), last.status.clone())),
    };
    for up in &mut ups {
        if way == Way::OctopusRun {
            if let Some((at, status)) = lines.wait(0, STOP_TIMEOUT, logged_exit(up.old_pid)).await {
                up.old_exit_ms = Some(ms(t0, at));
                up.old_status = Some(status);
            }
        }
        if let Some(pid) = up.new_pid {
            up.first_response_ms = outcome.pids.get(&pid).map(|p| p.first_ms);
        }
    }
    let generations: Vec<Generation> = std::iter::once(first)
        .chain(ups.iter().filter_map(|u| u.new_pid))
        .map(|pid| {
            let up = ups.iter().find(|u| u.old_pid == pid);
            let (exited_ms, status) = match up {
                Some(u) => (u.old_exit_ms, u.old_status.clone()),
                None if pid == serving => final_status
                    .clone()
                    .map_or((None, None), |(at, s)| (Some(at), Some(s))),
                None => (None, None),
            };
            Generation {
                pid,
                started_ms: ups
                    .iter()
                    .find(|u| u.new_pid == Some(pid))
                    .and_then(|u| u.started_ms),
                exited_ms,
                status,
                rss_kb: None,
                responses: outcome.pids.get(&pid).map_or(0, |p| p.count),
            }
        })
        .collect();
    checks.bad_exits = generations
        .iter()
        .filter(|g| g.status.as_deref() != Some("exit 0"))
        .map(|g| (g.pid, g.status.clone().unwrap_or("exit not seen".into())))
        .collect();
    if way == Way::OctopusRun && last.status != "exit 0" {
        checks
            .bad_exits
            .push((parent, format!("octopus run: {}", last.status)));
    }
    let mut result = ScenarioResult {
        scenario,
        server: way.name().into(),
        command: command.into(),
        loadavg_before,
        duration_s: secs,
        groups,
        upgrades_planned: o.upgrades,
        interval_ms: o.interval.as_millis() as u64,
        signal: match way {
            Way::OctopusRun => "CONTROL".into(),
            Way::Naive => "SIGTERM, then start".into(),
        },
        upgrades: ups,
        generations,
        checks,
        ..ScenarioResult::default()
    };
    result.set_load(&outcome, secs);
    Ok(result)
}

/// Runs every mode against both ways, writes `supervisor-MODE-WAY.json` into `out`, prints one
/// line per run; `Ok(false)` if an upgrade did not complete.
pub async fn run(octopus: &Path, o: &Options, out: &Path, command: &str) -> Result<bool, String> {
    if !octopus.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p octopus-cli",
            octopus.display()
        ));
    }
    let log_dir = out.join("logs");
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let dir = std::env::temp_dir().join(format!("octopus-bench-supervisor-{}", std::process::id()));
    // A directory left by an earlier run of this pid would hold a stale socket.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let work = WorkDir(dir);
    let go = build_go(&work.0, &log_dir.join("supervisor-go-build.log")).await?;
    let upgrade_log = log_dir.join("supervisor-octopus-upgrade.log");
    // Appended to by every run: start empty.
    let _ = std::fs::remove_file(&upgrade_log);
    let setup = Setup {
        octopus,
        go: &go,
        control: work.0.join("control.sock"),
        upgrade_log,
    };
    let mut complete = true;
    for mode in MODES {
        for way in WAYS {
            let r = run_one(way, mode, &setup, o, &log_dir, command).await?;
            eprintln!("{}", one_line(&r));
            complete &= r.upgrades.iter().filter(|u| u.new_pid.is_some()).count() == o.upgrades;
            results::write(out, &r.file_name(), &r)?;
        }
    }
    Ok(complete)
}

fn refused(r: &ScenarioResult) -> u64 {
    r.total.failed_by_class.get("refused").copied().unwrap_or(0)
}

fn others(r: &ScenarioResult) -> String {
    let rest: Vec<String> = r
        .total
        .failed_by_class
        .iter()
        .filter(|(k, _)| *k != "refused")
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if rest.is_empty() {
        "0".into()
    } else {
        format!("{} ({})", r.total.failed - refused(r), rest.join(", "))
    }
}

fn to_first_answer(r: &ScenarioResult) -> String {
    spread(
        r.upgrades
            .iter()
            .filter_map(|u| u.signal_to_first_response())
            .collect(),
    )
    .map_or("–".into(), |(m, _, max)| format!("{m:.1} / {max:.1}"))
}

/// One line summing up a run, for the terminal.
pub fn one_line(r: &ScenarioResult) -> String {
    format!(
        "{} / {}: upgrades {}/{}, {} ok, {} refused connects, {} other failed requests, \
         {:.0} req/s, upgrade start -> new pid answers median / max {} ms, bad exits {:?}, \
         zombies {}",
        r.scenario,
        r.server,
        r.upgrades.iter().filter(|u| u.new_pid.is_some()).count(),
        r.upgrades_planned,
        r.total.ok,
        refused(r),
        others(r),
        r.total.rps,
        to_first_answer(r),
        r.checks.bad_exits,
        r.checks.zombies_before_stop.len() + r.checks.zombies_after_stop.len()
    )
}

/// The `supervisor` section of BENCHMARKS.md, from the results in `dir`; empty if not run.
pub fn section(dir: &Path) -> String {
    let rs: Vec<ScenarioResult> = MODES
        .iter()
        .flat_map(|(_, m)| {
            WAYS.iter().filter_map(move |w| {
                results::read(dir, &format!("supervisor-{m}-{}.json", w.name()))
            })
        })
        .collect();
    let Some(first) = rs.first() else {
        return String::new();
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## `supervisor`: a Go server under `octopus run`, beside a naive restart\n\n\
         Issue 11. The Go net/http server of `octopus run`'s tests (`cli/tests/servers/go`, \
         standard library only, `http.Server.Shutdown` on SIGTERM), {} clients on `/pid`, \
         {} upgrades one every {} ms from 1 s on, load until 1.5 s after the last. \
         **octopus-run**: under `octopus run --listen 127.0.0.1:0 --ready notify`, upgraded by \
         `octopus upgrade --control PATH` (the new instance is started on the supervisor's \
         socket; once it sent READY=1, the old one gets SIGTERM and drains). **naive**: the same \
         binary with `-listen`, binding the port itself; a restart is SIGTERM, wait for its \
         exit, start it again, wait for its `listening` line. `refused` counts connect attempts \
         (a client tries again 1 ms after a refusal). Conditions: 2 cores shared by the server, \
         the supervisor and the load, on a busy machine (load average before each run: {}); \
         the failure counts are the figures to read, not the throughput. Command: `{}`.\n",
        first.groups.first().map_or(0, |g| g.clients),
        first.upgrades_planned,
        first.interval_ms,
        rs.iter()
            .map(|r| format!("{} {} {}", r.scenario, r.server, r.loadavg_before))
            .collect::<Vec<_>>()
            .join("; "),
        first.command
    );
    md.push_str(
        "| load | server | upgrades | ok | refused connects | other failed requests | req/s | \
         upgrade start → new pid answers, median / max ms | bad exits |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rs {
        let mode = r.groups.first().map_or(Mode::KeepAlive, |g| g.mode);
        let _ = writeln!(
            md,
            "| {} | {} | {}/{} | {} | {} | {} | {:.0} | {} | {} |",
            match mode {
                Mode::KeepAlive => "keep-alive",
                Mode::NewConn => "connection per request",
            },
            r.server,
            r.upgrades.iter().filter(|u| u.new_pid.is_some()).count(),
            r.upgrades_planned,
            r.total.ok,
            refused(r),
            others(r),
            r.total.rps,
            to_first_answer(r),
            r.checks.bad_exits.len()
        );
    }
    md.push_str(
        "\nUnder `octopus run` no connection is refused: the supervisor holds the listening \
         socket throughout and the kernel queues what no instance accepts. What fails there is \
         the Go instance's own drain, on keep-alive connections: `Shutdown` closes at once every \
         connection idle at that instant, and closes one whose response began before it after \
         that response, without `Connection: close` (Go's source: \"such is life with \
         HTTP/1.1\"); a client that has just sent its next request on it reads EOF \
         (`eof_empty`), or a `reset` when its request reached the socket unread. That is the \
         keep-alive race this crate's own drain avoids (0 in `keepalive` above); a supervisor \
         cannot remove it from an instance that does not retire keep-alive connections \
         gracefully. The naive restart refuses connections from the moment the old process \
         closes its listener until the new one listens, resets the connections left in the \
         old listener's accept queue, and has the same keep-alive race.\n",
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_supervisor_and_go_server_lines() {
        let ready = "octopus run[10]: new instance 12 ready after 7 ms; stopping old instance 11 (signal SIGTERM)";
        assert_eq!(
            pid_between(ready, ": new instance ", " ready after"),
            Some(12)
        );
        assert_eq!(pid_between(ready, ": instance ", " ready after"), None);
        assert_eq!(
            listening_on("listening on 127.0.0.1:4321 pid=99"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4321)))
        );
        assert_eq!(
            pid_between("listening on 127.0.0.1:4321 pid=99", "pid=", ""),
            Some(99)
        );
    }
}

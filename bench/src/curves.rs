//! The curves over scale, each point measured: RSS per open idle keep-alive connection, the
//! drain time of 10,000 connections (idle on a shutdown or on an upgrade, or each with a request
//! in flight), and the hand-over time over the number of listeners and open connections.
//! Connections go to 127.0.0.1 only; every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::server::{Bins, Kind, Server};

/// Connections opened at once (below the servers' accept backlog of 1024, so that no SYN is
/// dropped and retried a second later).
const OPEN_BATCH: usize = 256;
/// Bound of one connection's open-and-first-answer.
const IO_BOUND: Duration = Duration::from_secs(10);
/// Measurements per point.
const REPS: usize = 3;

/// One point: x, and the values of its repetitions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Point {
    /// Server.
    pub server: String,
    /// x (connections or listeners).
    pub x: u64,
    /// Second coordinate where a curve has two (open connections of a hand-over point).
    pub conns: u64,
    /// One value per repetition.
    pub values: Vec<f64>,
    /// Extra figures of the point (e.g. responses received), by name.
    pub notes: Vec<(String, f64)>,
}

impl Point {
    /// Median of the values.
    pub fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// The curves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CurvesResult {
    /// The command.
    pub command: String,
    /// /proc/loadavg at the start and the end.
    pub loadavg: (String, String),
    /// Bytes of RSS per open idle keep-alive connection.
    pub rss_per_conn: Vec<Point>,
    /// ms from SIGTERM to exit, 10,000 idle keep-alive connections (`idle_grace` 1 s).
    pub drain_idle: Vec<Point>,
    /// ms from SIGHUP to the old process's exit, 10,000 idle keep-alive connections, which the
    /// old process relays to the new one; notes count the connections the new process answered
    /// after the old one's exit. Absent from results made before the relay.
    #[serde(default)]
    pub drain_idle_relayed: Vec<Point>,
    /// ms from SIGTERM to exit, 10,000 connections each with a `/sleep?ms=N` in flight, and
    /// ms beyond the last request's due time.
    pub drain_inflight: Vec<Point>,
    /// SIGHUP → new process's `server started`, ms, by listeners and open connections.
    pub handover_ready: Vec<Point>,
    /// SIGHUP → old process's `old process draining`, ms.
    pub handover_draining: Vec<Point>,
}

/// Raises this process's open-file limit to its hard limit (children inherit it).
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

async fn read_until(s: &mut TcpStream, end: &[u8], bound: Duration) -> Result<(), String> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let deadline = tokio::time::Instant::now() + bound;
    // Bounded: each turn reads at least one byte or ends.
    for _ in 0..4096 {
        if buf.windows(end.len()).any(|w| w == end) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("eof".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timeout".into()),
        }
    }
    Err("answer too long".into())
}

/// Opens `n` connections to `addr`, each answered one `GET /ping`: idle keep-alive connections
/// the server has served.
pub async fn open_idle(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>, String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = OPEN_BATCH.min(n - out.len());
        let mut set = JoinSet::new();
        for _ in 0..batch {
            set.spawn(async move {
                let mut s = tokio::time::timeout(IO_BOUND, TcpStream::connect(addr))
                    .await
                    .map_err(|_| "connect timeout".to_string())?
                    .map_err(|e| format!("connect: {e}"))?;
                s.write_all(b"GET /ping HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
                read_until(&mut s, b"pong\n", IO_BOUND).await?;
                Ok::<_, String>(s)
            });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.map_err(|e| e.to_string())??);
        }
    }
    Ok(out)
}

/// Takes idle connections out of this process's reactor. Closed by the server, they then wake
/// no thread here: the tool's handling of 10,000 FINs does not compete with the server for the
/// shared cores while it is measured, as clients on other hosts would not.
fn unwatched(conns: Vec<TcpStream>) -> Vec<std::net::TcpStream> {
    conns
        .into_iter()
        .filter_map(|s| s.into_std().ok())
        .collect()
}

async fn wait_exit(server: &Server, pid: u32, bound: Duration) -> Option<Instant> {
    server.wait_for(bound, |s| s.gens.get(&pid)?.exited).await
}

async fn stop(server: Server) {
    server.stop_all(Duration::from_secs(10)).await;
    server
        .wait_for(Duration::from_secs(5), |s| {
            s.alive().is_empty().then_some(())
        })
        .await;
}

async fn rss_point(kind: Kind, n: usize, bins: &Bins, logs: &Path) -> Result<Point, String> {
    let mut p = Point {
        server: kind.name().into(),
        x: n as u64,
        ..Point::default()
    };
    for rep in 0..REPS {
        let log = logs.join(format!("rss-{}-{n}-{rep}.log", kind.name()));
        let server = Server::start(kind, bins, &[], Some(&log)).await?;
        let pid = server.first_pid;
        // One connection first, so that what is allocated once (buffers, the runtime's
        // first task) is in the baseline figure, not in the per-connection one.
        let warm = open_idle(server.addr, 1).await;
        let before = crate::procfs::rss_kb(pid);
        let conns = open_idle(server.addr, n).await;
        let after = crate::procfs::rss_kb(pid);
        let fds = crate::procfs::fd_count(pid);
        let ok = conns.as_ref().map_or(0, Vec::len);
        drop((warm, conns));
        stop(server).await;
        if let (Some(b), Some(a)) = (before, after) {
            p.values.push((a as f64 - b as f64) * 1024.0 / n as f64);
        }
        p.notes.push(("opened".into(), ok as f64));
        p.notes.push(("fds".into(), fds.unwrap_or(0) as f64));
    }
    Ok(p)
}

/// SIGTERM to exit with `n` idle connections.
async fn drain_idle_point(n: usize, bins: &Bins, logs: &Path) -> Result<Point, String> {
    let mut p = Point {
        server: "octopus".into(),
        x: n as u64,
        ..Point::default()
    };
    for rep in 0..REPS {
        let log = logs.join(format!("drain-idle-{n}-{rep}.log"));
        let server = Server::start(Kind::Octopus, bins, &[], Some(&log)).await?;
        let pid = server.first_pid;
        let conns = open_idle(server.addr, n).await.map(unwatched);
        let signal = Instant::now();
        server.signal(pid, Signal::TERM);
        let exited = wait_exit(&server, pid, Duration::from_secs(30)).await;
        drop(conns);
        if let Some(t) = exited {
            p.values.push((t - signal).as_secs_f64() * 1000.0);
        }
        stop(server).await;
    }
    Ok(p)
}

/// What became of the idle connections of an upgrade once the old process was gone: each sent
/// one `GET /pid`.
#[derive(Debug, Default)]
struct Answers {
    /// Closed (or reset) before the request was written, seen without blocking.
    closed: u64,
    /// Answered by the new process.
    new: u64,
    /// Answered by any other process.
    other: u64,
    /// Not answered: the request failed or timed out, or the answer was no pid.
    failed: u64,
}

impl Answers {
    /// Tallies one connection's answer: the pid it named, if any.
    fn count(&mut self, answered: Option<u32>, new_pid: u32) {
        match answered {
            Some(pid) if pid == new_pid => self.new += 1,
            Some(_) => self.other += 1,
            None => self.failed += 1,
        }
    }

    /// The point's notes for one repetition.
    fn notes(&self) -> [(String, f64); 4] {
        [
            ("answered_new".into(), self.new as f64),
            ("answered_other".into(), self.other as f64),
            ("failed".into(), self.failed as f64),
            ("closed_before_request".into(), self.closed as f64),
        ]
    }
}

/// Sends one `GET /pid` on each connection, all at once, and tallies who answered.
async fn ask_pid(conns: Vec<std::net::TcpStream>, new_pid: u32) -> Answers {
    let mut answers = Answers::default();
    let mut set = JoinSet::new();
    for s in conns {
        let Ok(mut s) = TcpStream::from_std(s) else {
            answers.failed += 1;
            continue;
        };
        set.spawn(async move {
            let closed = crate::http::closed_while_idle(&s);
            let mut buf = Vec::with_capacity(256);
            let request = crate::http::request("/pid", false);
            let pid = crate::http::exchange(&mut s, &request, &mut buf, IO_BOUND)
                .await
                .ok()
                .filter(|r| r.status == 200)
                .and_then(|r| {
                    std::str::from_utf8(&r.body)
                        .ok()?
                        .trim()
                        .parse::<u32>()
                        .ok()
                });
            (closed, pid)
        });
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok((closed, pid)) => {
                answers.closed += u64::from(closed);
                answers.count(pid, new_pid);
            }
            Err(_) => answers.failed += 1,
        }
    }
    answers
}

/// SIGHUP to the old process's exit with `n` idle connections, which the old process relays to
/// the new one rather than closing them after `idle_grace`; then one request on each.
async fn drain_relayed_point(n: usize, bins: &Bins, logs: &Path) -> Result<Point, String> {
    let mut p = Point {
        server: "octopus".into(),
        x: n as u64,
        ..Point::default()
    };
    for rep in 0..REPS {
        let log = logs.join(format!("drain-relayed-{n}-{rep}.log"));
        let server = Server::start(Kind::Octopus, bins, &[], Some(&log)).await?;
        let old = server.first_pid;
        let conns = match open_idle(server.addr, n).await {
            Ok(conns) => unwatched(conns),
            Err(e) => {
                stop(server).await;
                return Err(e);
            }
        };
        let signal = Instant::now();
        server.signal(old, Signal::HUP);
        // A repetition whose old process outlives the bound has no value but keeps its
        // answers: the report shows both.
        if let Some(t) = wait_exit(&server, old, Duration::from_secs(30)).await {
            p.values.push((t - signal).as_secs_f64() * 1000.0);
        }
        let started = server
            .wait_for(Duration::from_secs(5), |s| {
                let new = *s.order.last()?;
                Some((new, s.gens.get(&new)?.started?)).filter(|_| new != old)
            })
            .await;
        // No new process: every answer counts against it.
        let new = started.map_or(0, |(pid, _)| pid);
        if let Some((_, t)) = started {
            p.notes
                .push(("new_started_ms".into(), (t - signal).as_secs_f64() * 1000.0));
        }
        let answers = ask_pid(conns, new).await;
        p.notes.extend(answers.notes());
        stop(server).await;
    }
    Ok(p)
}

/// SIGTERM to exit with `n` connections, each with a `/sleep?ms=sleep_ms` in flight.
async fn drain_inflight_point(
    n: usize,
    sleep_ms: u64,
    bins: &Bins,
    logs: &Path,
) -> Result<Point, String> {
    let mut p = Point {
        server: "octopus".into(),
        x: n as u64,
        ..Point::default()
    };
    for rep in 0..REPS {
        let log = logs.join(format!("drain-inflight-{n}-{rep}.log"));
        let server = Server::start(Kind::Octopus, bins, &[], Some(&log)).await?;
        let pid = server.first_pid;
        let conns = open_idle(server.addr, n).await?;
        let request = format!("GET /sleep?ms={sleep_ms} HTTP/1.1\r\nHost: bench\r\n\r\n");
        let expect = format!("slept {sleep_ms}\n");
        let mut set = JoinSet::new();
        let (written_tx, mut written) = tokio::sync::mpsc::unbounded_channel::<()>();
        let first_sent = Instant::now();
        for mut s in conns {
            let (request, expect) = (request.clone(), expect.clone());
            let written_tx = written_tx.clone();
            set.spawn(async move {
                let w = s.write_all(request.as_bytes()).await;
                let sent = Instant::now();
                let _ = written_tx.send(());
                w.map_err(|e| e.to_string())?;
                let bound = Duration::from_millis(sleep_ms) + Duration::from_secs(20);
                read_until(&mut s, expect.as_bytes(), bound).await?;
                Ok::<_, String>(sent)
            });
        }
        drop(written_tx);
        // The signal once every request was written: all are in flight, or queued on their
        // connection. Bounded: each turn takes one message or ends.
        let deadline = tokio::time::Instant::now() + IO_BOUND;
        for _ in 0..n {
            match tokio::time::timeout_at(deadline, written.recv()).await {
                Ok(Some(())) => {}
                _ => break,
            }
        }
        let signal = Instant::now();
        server.signal(pid, Signal::TERM);
        let (mut ok, mut last_sent) = (0u64, first_sent);
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(sent)) = r {
                ok += 1;
                last_sent = last_sent.max(sent);
            }
        }
        let exited = wait_exit(&server, pid, Duration::from_secs(30)).await;
        if let Some(t) = exited {
            p.values.push((t - signal).as_secs_f64() * 1000.0);
            let due = last_sent + Duration::from_millis(sleep_ms);
            let beyond = t.saturating_duration_since(due).as_secs_f64() * 1000.0;
            p.notes.push(("beyond_due_ms".into(), beyond));
        }
        p.notes.push(("answered".into(), ok as f64));
        p.notes.push((
            "signal_after_first_write_ms".into(),
            (signal - first_sent).as_secs_f64() * 1000.0,
        ));
        stop(server).await;
    }
    Ok(p)
}

/// SIGHUP → new `server started` and → old `old process draining`, `reps` upgrades in a row
/// of the router served by octopus with `listeners` listeners and `conns` idle connections
/// open to the serving process at each signal.
async fn handover_point(
    listeners: usize,
    conns: usize,
    reps: usize,
    bins: &Bins,
    logs: &Path,
) -> Result<(Point, Point), String> {
    // Below the kernel's ephemeral range (32768.. by default), so that the server's own `-p 0`
    // listener cannot be given one of them once they are let go (a 01:27 run failed so); all
    // held bound until all are picked, so that none is picked twice.
    let held: Vec<std::net::TcpListener> = (20_000..32_000u16)
        .filter_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .take(listeners - 1)
        .collect();
    if held.len() + 1 < listeners {
        return Err(format!("only {} free ports below 32000", held.len()));
    }
    let ports: Vec<String> = held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("free port: {e}"))?;
    drop(held);
    let mut args = Vec::new();
    if !ports.is_empty() {
        args = vec!["--extra-port".to_string(), ports.join(",")];
    }
    let log = logs.join(format!("handover-{listeners}-{conns}.log"));
    let server = Server::start(Kind::OctopusAxum, bins, &args, Some(&log)).await?;
    let mk = || Point {
        server: "octopus".into(),
        x: listeners as u64,
        conns: conns as u64,
        ..Point::default()
    };
    let (mut ready, mut draining) = (mk(), mk());
    let result = async {
        for _ in 0..reps {
            let old = server.state().newest_alive().ok_or("no serving process")?;
            let open = open_idle(server.addr, conns).await?;
            let signal = Instant::now();
            server.signal(old, Signal::HUP);
            let new = server
                .wait_for(Duration::from_secs(30), |s| {
                    let new = *s.order.last()?;
                    (new != old).then_some(new)
                })
                .await
                .ok_or("no new process within 30 s")?;
            let started = server
                .wait_for(Duration::from_secs(30), |s| s.gens.get(&new)?.started)
                .await;
            let drain = server
                .wait_for(Duration::from_secs(30), |s| s.gens.get(&old)?.draining)
                .await;
            let ms = |t: Instant| (t - signal).as_secs_f64() * 1000.0;
            if let (Some(a), Some(b)) = (started, drain) {
                ready.values.push(ms(a));
                draining.values.push(ms(b));
            }
            // The next hand-over starts from a single process, so that one never overlaps
            // the previous one's drain.
            wait_exit(&server, old, Duration::from_secs(30))
                .await
                .ok_or("the old process did not exit within 30 s")?;
            drop(open);
        }
        Ok::<_, String>(())
    }
    .await;
    stop(server).await;
    result.map(|()| (ready, draining))
}

/// Which parts of the curves a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    rss: bool,
    drain: bool,
    handover: bool,
}

impl Parts {
    /// Every part for an empty list; else the named ones (`rss`, `drain`, `handover`).
    pub fn parse(names: &[String]) -> Result<Parts, String> {
        if names.is_empty() {
            return Ok(Parts::ALL);
        }
        let mut parts = Parts {
            rss: false,
            drain: false,
            handover: false,
        };
        for name in names {
            match name.as_str() {
                "rss" => parts.rss = true,
                "drain" => parts.drain = true,
                "handover" => parts.handover = true,
                other => {
                    return Err(format!(
                        "unknown part of the curves {other:?}: rss, drain or handover"
                    ));
                }
            }
        }
        Ok(parts)
    }

    const ALL: Parts = Parts {
        rss: true,
        drain: true,
        handover: true,
    };

    /// The results file: a partial run never replaces the full run's `curves.json`, which the
    /// report reads.
    pub fn file_name(self) -> String {
        if self == Parts::ALL {
            return "curves.json".into();
        }
        let names = [
            (self.rss, "rss"),
            (self.drain, "drain"),
            (self.handover, "handover"),
        ];
        let named: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        format!("curves-{}.json", named.join("-"))
    }
}

/// Runs the curves of `parts`, each hand-over point `upgrades` upgrades (default `REPS`).
pub async fn run(
    bins: &Bins,
    logs: &Path,
    command: &str,
    parts: &Parts,
    upgrades: Option<usize>,
) -> Result<CurvesResult, String> {
    let _ = std::fs::create_dir_all(logs);
    let limit = raise_nofile();
    if limit < 10_000 + 200 {
        eprintln!("curves: open-file limit {limit}: the 10,000-connection points may fail");
    }
    let mut r = CurvesResult {
        command: command.into(),
        ..CurvesResult::default()
    };
    r.loadavg.0 = crate::procfs::loadavg();
    if parts.rss {
        for kind in [Kind::Octopus, Kind::Baseline] {
            for n in [100, 1_000, 10_000] {
                let p = rss_point(kind, n, bins, logs).await?;
                eprintln!(
                    "curves rss {} {n} conns: {:.0} bytes/conn (reps {:?})",
                    p.server,
                    p.median(),
                    p.values
                );
                r.rss_per_conn.push(p);
            }
        }
    }
    if parts.drain {
        let p = drain_idle_point(10_000, bins, logs).await?;
        eprintln!(
            "curves drain idle 10000: {:.0} ms (reps {:?})",
            p.median(),
            p.values
        );
        r.drain_idle.push(p);
        let p = drain_relayed_point(10_000, bins, logs).await?;
        eprintln!(
            "curves drain idle 10000 on an upgrade (relayed): {:.0} ms (reps {:?}, {:?})",
            p.median(),
            p.values,
            p.notes
        );
        r.drain_idle_relayed.push(p);
        let p = drain_inflight_point(10_000, 2_000, bins, logs).await?;
        eprintln!(
            "curves drain in-flight 10000 (2 s each): {:.0} ms (reps {:?}, {:?})",
            p.median(),
            p.values,
            p.notes
        );
        r.drain_inflight.push(p);
    }
    if parts.handover {
        let reps = upgrades.unwrap_or(REPS).max(1);
        for conns in [0, 10_000] {
            for listeners in [1, 16, 64] {
                let (a, b) = handover_point(listeners, conns, reps, bins, logs).await?;
                eprintln!(
                    "curves hand-over {listeners} listeners {conns} conns: started {:.1} ms, old draining {:.1} ms (reps {:.1?}, {:.1?})",
                    a.median(),
                    b.median(),
                    a.values,
                    b.values
                );
                r.handover_ready.push(a);
                r.handover_draining.push(b);
            }
        }
    }
    r.loadavg.1 = crate::procfs::loadavg();
    eprintln!("curves: load average {} → {}", r.loadavg.0, r.loadavg.1);
    Ok(r)
}

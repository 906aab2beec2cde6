//! The pinned overhead mode: each server confined to CPU 0, the load generator (`wrk` for
//! HTTP/1, `h2load` for HTTP/2) and this tool to CPU 1, so that a ratio measures per-request
//! cost and not how two processes share two cores. Servers alternate within a round in an
//! order that rotates from round to round; each comparison is the median of its per-round
//! ratios, with their min..max.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::results::WrkResult;
use crate::server::{Bins, Kind, Server};

/// The server's CPU.
const SERVER_CPU: usize = 0;
/// The load generator's and this tool's CPU.
const LOAD_CPU: usize = 1;
/// Concurrent HTTP/1 connections (the issue's first pinned measurement: `wrk -t1 -c32`).
const H1_CONNS: usize = 32;
/// HTTP/2: connections and concurrent streams on each (128 requests in flight, as many as
/// keep-alive has in 4 rounds of 32, on few connections).
const H2_CONNS: usize = 4;
const H2_STREAMS: usize = 32;

/// A load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// HTTP/1 keep-alive, `wrk`.
    H1KeepAlive,
    /// HTTP/1, a new connection per request (`Connection: close`), `wrk`.
    H1Close,
    /// HTTP/2, many streams on few connections, `h2load`.
    H2,
}

impl Workload {
    /// All, in run order.
    pub const ALL: [Workload; 3] = [Workload::H1KeepAlive, Workload::H1Close, Workload::H2];

    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Workload::H1KeepAlive => "h1-keepalive",
            Workload::H1Close => "h1-close",
            Workload::H2 => "h2",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// The servers that speak it.
    fn servers(self) -> &'static [Kind] {
        match self {
            Workload::H2 => &[
                Kind::Octopus,
                Kind::Baseline,
                Kind::Axum,
                Kind::OctopusAxum,
                Kind::AxumNodelay,
                Kind::OctopusAxumNagle,
            ],
            _ => &[
                Kind::Octopus,
                Kind::Baseline,
                Kind::Http1,
                Kind::Axum,
                Kind::OctopusAxum,
                Kind::AxumNodelay,
                Kind::OctopusAxumNagle,
            ],
        }
    }
}

/// What a pinned run measures: these workloads against these servers, each empty for all.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Servers (each run on the selected workloads it speaks).
    pub servers: Vec<Kind>,
}

impl Selection {
    /// The servers to run `w` against.
    fn servers(&self, w: Workload) -> Vec<Kind> {
        w.servers()
            .iter()
            .copied()
            .filter(|k| self.servers.is_empty() || self.servers.contains(k))
            .collect()
    }

    /// The workloads to run.
    fn workloads(&self) -> Vec<Workload> {
        Workload::ALL
            .into_iter()
            .filter(|w| self.workloads.is_empty() || self.workloads.contains(w))
            .collect()
    }
}

/// The comparisons reported, `(server, reference)`, and the workloads each applies to.
/// `octopus-axum` / `axum` compares each as a user gets it, `TCP_NODELAY` on the one and
/// Nagle's algorithm on the other; the two pairs after it compare like for like.
pub const COMPARISONS: [(&str, &str, &[Workload]); 7] = [
    ("octopus", "baseline", &Workload::ALL),
    (
        "octopus",
        "http1",
        &[Workload::H1KeepAlive, Workload::H1Close],
    ),
    ("octopus", "axum", &Workload::ALL),
    ("octopus-axum", "axum", &Workload::ALL),
    ("octopus-axum", "axum-nodelay", &Workload::ALL),
    ("octopus-axum-nagle", "axum", &Workload::ALL),
    (
        "baseline",
        "http1",
        &[Workload::H1KeepAlive, Workload::H1Close],
    ),
];

/// One measured run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PinnedRun {
    /// Server.
    pub server: String,
    /// Workload name.
    pub workload: String,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Failed requests or socket errors.
    pub errors: u64,
    /// /proc/loadavg before the run.
    pub loadavg_before: String,
}

/// The pinned mode's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PinnedResult {
    /// The command.
    pub command: String,
    /// Measured seconds per run (after 1 s of warm-up).
    pub secs: u64,
    /// The load generators' command lines (address elided).
    pub tools: Vec<String>,
    /// Runs, by round.
    pub rounds: Vec<Vec<PinnedRun>>,
}

/// Median and min..max of per-round ratios of one comparison.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Workload.
    pub workload: String,
    /// Server.
    pub server: String,
    /// Reference.
    pub reference: String,
    /// Rounds with both.
    pub rounds: usize,
    /// Throughput, p50 and p99 ratios: (median, min, max).
    pub ratios: [(f64, f64, f64); 3],
}

impl Comparison {
    /// The one printed line.
    pub fn line(&self) -> String {
        let targets = self.targets();
        let f = |i: usize| {
            let (m, lo, hi) = self.ratios[i];
            let verdict = targets[i].map_or(String::new(), |t| format!(" [{}]", t.verdict(m)));
            format!("{m:.3} ({lo:.3}..{hi:.3}){verdict}")
        };
        format!(
            "{} {}/{}: throughput {}  p50 {}  p99 {}  [median of {} per-round ratios (min..max)]",
            self.workload,
            self.server,
            self.reference,
            f(0),
            f(1),
            f(2),
            self.rounds
        )
    }

    /// Issue 12's targets for the throughput, p50 and p99 ratios of this comparison, if any.
    pub fn targets(&self) -> [Option<Target>; 3] {
        let w = self.workload.as_str();
        match (self.server.as_str(), self.reference.as_str()) {
            ("octopus", "baseline") if w == "h1-keepalive" || w == "h2" => [
                Some(Target::AtLeast(0.99)),
                Some(Target::AtMost(1.03)),
                Some(Target::AtMost(1.03)),
            ],
            ("octopus", "http1") if w == "h1-keepalive" => [
                Some(Target::AtLeast(0.98)),
                None,
                Some(Target::AtMost(1.05)),
            ],
            // Octopus ahead of or equal to `axum::serve` on the same router, judged with the
            // same Nagle setting on both: with `TCP_NODELAY` on one only, HTTP/2's ratio
            // measures Nagle's algorithm (see `Server::tcp_nodelay`), not the server.
            ("octopus-axum", "axum-nodelay") | ("octopus-axum-nagle", "axum")
                if w == "h1-keepalive" || w == "h2" =>
            {
                [Some(Target::AtLeast(1.0)), None, None]
            }
            _ => [None, None, None],
        }
    }
}

/// A bound a median ratio must meet.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Throughput: at least this ratio.
    AtLeast(f64),
    /// Latency: at most this ratio.
    AtMost(f64),
}

impl Target {
    /// "✅ ≥ 0.99" or "❌ ≤ 1.03" for the median `m`.
    pub fn verdict(self, m: f64) -> String {
        let (met, sign, bound) = match self {
            Target::AtLeast(b) => (m >= b, "≥", b),
            Target::AtMost(b) => (m <= b, "≤", b),
        };
        format!("{} {sign} {bound:.2}", if met { "✅" } else { "❌" })
    }
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// Every comparison of `r` that has at least one round.
pub fn comparisons(r: &PinnedResult) -> Vec<Comparison> {
    let mut out = Vec::new();
    for (server, reference, workloads) in COMPARISONS {
        for w in workloads {
            let mut ratios: [Vec<f64>; 3] = Default::default();
            for round in &r.rounds {
                let find = |s: &str| {
                    round
                        .iter()
                        .find(|x| x.server == s && x.workload == w.name())
                };
                if let (Some(a), Some(b)) = (find(server), find(reference)) {
                    ratios[0].push(a.rps / b.rps.max(1e-9));
                    ratios[1].push(a.p50_us / b.p50_us.max(1.0));
                    ratios[2].push(a.p99_us / b.p99_us.max(1.0));
                }
            }
            if ratios[0].is_empty() {
                continue;
            }
            let rounds = ratios[0].len();
            let [t, p50, p99] = ratios.map(median_min_max);
            out.push(Comparison {
                workload: w.name().into(),
                server: server.into(),
                reference: reference.into(),
                rounds,
                ratios: [t, p50, p99],
            });
        }
    }
    out
}

/// Confines every thread of this process to `cpu` (threads made later inherit it).
fn pin_self(cpu: usize) -> Result<(), String> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("taskset -a -p failed: {status}"))
}

/// Runs `program args` on the load CPU and returns its stdout, read to EOF within `bound`.
/// It is started as a helper of `server`, whose reaper reaps it.
async fn run_tool(
    server: &Server,
    program: &str,
    args: &[String],
    bound: Duration,
) -> Result<String, String> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &LOAD_CPU.to_string(), program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = server.spawn_helper(&mut cmd).map_err(|e| {
        format!("cannot start {program} (apt-get install -y wrk nghttp2-client): {e}")
    })?;
    let pid = child.id();
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let reader = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    match tokio::time::timeout(bound, reader).await {
        Ok(text) => text.map_err(|e| e.to_string()),
        Err(_) => {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            Err(format!("{program} did not finish within {bound:?}"))
        }
    }
}

fn wrk_args(w: Workload, secs: u64, url: &str) -> Vec<String> {
    let mut a = vec![
        "-t1".to_string(),
        format!("-c{H1_CONNS}"),
        format!("-d{secs}s"),
        "--latency".into(),
    ];
    if w == Workload::H1Close {
        a.extend(["-H".into(), "Connection: close".into()]);
    }
    a.push(url.into());
    a
}

fn h2load_args(secs: u64, log: &Path, url: &str) -> Vec<String> {
    vec![
        "-t1".into(),
        format!("-c{H2_CONNS}"),
        format!("-m{H2_STREAMS}"),
        format!("-D{secs}"),
        "--warm-up-time=1".into(),
        format!("--log-file={}", log.display()),
        url.into(),
    ]
}

/// Throughput, p50, p99 and failures from h2load's report and per-request log.
pub fn parse_h2load(stdout: &str, log: &str) -> (f64, f64, f64, u64) {
    let rps = stdout
        .lines()
        .find_map(|l| {
            let l = l.trim().strip_prefix("finished in ")?;
            let i = l.find(" req/s")?;
            l[..i].rsplit(", ").next()?.trim().parse().ok()
        })
        .unwrap_or(0.0);
    let field = |key: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("requests: "))
            .and_then(|l| {
                l.split(", ")
                    .find_map(|p| p.strip_suffix(key)?.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let failed = field(" failed") + field(" errored") + field(" timeout");
    let mut us: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status: i64 = f.nth(1)?.trim().parse().ok()?;
            let d: u64 = f.next()?.trim().parse().ok()?;
            (status == 200).then_some(d)
        })
        .collect();
    us.sort_unstable();
    let pct = |q: f64| {
        us.get(((us.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or(0.0, |v| *v as f64)
    };
    (rps, pct(0.5), pct(0.99), failed)
}

async fn measure(
    w: Workload,
    kind: Kind,
    bins: &Bins,
    secs: u64,
    log_dir: &Path,
    round: usize,
) -> Result<PinnedRun, String> {
    let loadavg_before = crate::procfs::loadavg();
    let log = log_dir.join(format!("pinned-{}-{}-{round}.log", w.name(), kind.name()));
    let server = Server::start_on(kind, bins, &[], Some(&log), Some(SERVER_CPU)).await?;
    let url = format!("http://{}/ping", server.addr);
    let bound = Duration::from_secs(secs + 30);
    let result = async {
        let mut run = PinnedRun {
            server: kind.name().into(),
            workload: w.name().into(),
            loadavg_before,
            ..PinnedRun::default()
        };
        match w {
            Workload::H2 => {
                let log = log_dir.join(format!("h2load-{}-{round}.tsv", kind.name()));
                let out =
                    run_tool(&server, "h2load", &h2load_args(secs, &log, &url), bound).await?;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let _ = std::fs::remove_file(&log);
                (run.rps, run.p50_us, run.p99_us, run.errors) = parse_h2load(&out, &text);
            }
            _ => {
                // wrk has no warm-up of its own: one second, not counted.
                run_tool(&server, "wrk", &wrk_args(w, 1, &url), bound).await?;
                let out = run_tool(&server, "wrk", &wrk_args(w, secs, &url), bound).await?;
                let mut parsed = WrkResult::default();
                crate::wrk::parse(&out, &mut parsed);
                run.rps = parsed.rps;
                run.p50_us = parsed.p50_us.unwrap_or(0.0);
                run.p99_us = parsed.p99_us.unwrap_or(0.0);
                run.errors = parsed.socket_errors.iter().sum::<u64>() + parsed.non_2xx;
            }
        }
        Ok::<_, String>(run)
    }
    .await;
    server.stop_all(Duration::from_secs(10)).await;
    server
        .wait_for(Duration::from_secs(5), |s| {
            s.alive().is_empty().then_some(())
        })
        .await;
    result
}

/// Runs `rounds` rounds of every selected workload against every selected server that speaks
/// it.
pub async fn run(
    bins: &Bins,
    selection: &Selection,
    rounds: usize,
    secs: u64,
    log_dir: &Path,
    command: &str,
) -> Result<PinnedResult, String> {
    let _ = std::fs::create_dir_all(log_dir);
    pin_self(LOAD_CPU)?;
    let url = "http://127.0.0.1:PORT/ping";
    let mut result = PinnedResult {
        command: command.into(),
        secs,
        tools: vec![
            format!(
                "taskset -c {LOAD_CPU} wrk {}",
                wrk_args(Workload::H1KeepAlive, secs, url).join(" ")
            ),
            format!(
                "taskset -c {LOAD_CPU} wrk {}",
                wrk_args(Workload::H1Close, secs, url)
                    .join(" ")
                    .replace("Connection: close", "'Connection: close'")
            ),
            format!(
                "taskset -c {LOAD_CPU} h2load {}",
                h2load_args(secs, Path::new("LOG"), url).join(" ")
            ),
            format!("taskset -c {SERVER_CPU} SERVER -h 127.0.0.1 -p 0"),
        ],
        rounds: Vec::new(),
    };
    for round in 0..rounds {
        let mut runs = Vec::new();
        for w in selection.workloads() {
            let mut order = selection.servers(w);
            let n = order.len().max(1);
            order.rotate_left(round % n);
            for kind in order {
                let run = measure(w, kind, bins, secs, log_dir, round).await?;
                eprintln!(
                    "pinned round {round} {} {}: {:.0} req/s p50 {:.0} us p99 {:.0} us errors {}",
                    w.name(),
                    kind.name(),
                    run.rps,
                    run.p50_us,
                    run.p99_us,
                    run.errors
                );
                runs.push(run);
            }
        }
        result.rounds.push(runs);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_h2load_report_and_log() {
        let out = "finished in 3.00s, 51234.50 req/s, 1.50MB/s\nrequests: 153703 total, 153703 started, 153700 done, 153690 succeeded, 10 failed, 3 errored, 2 timeout\n";
        let log = "1700000000000000\t200\t100\n1700000000000001\t200\t300\n1700000000000002\t-1\t9\n1700000000000003\t200\t200\n";
        let (rps, p50, p99, failed) = parse_h2load(out, log);
        assert!((rps - 51234.5).abs() < 1e-6);
        assert_eq!((p50, p99), (200.0, 300.0));
        assert_eq!(failed, 15);
    }

    #[test]
    fn targets_apply_where_the_issue_sets_them_and_judge_the_median() {
        let c = |server: &str, reference: &str, workload: &str| Comparison {
            workload: workload.into(),
            server: server.into(),
            reference: reference.into(),
            rounds: 1,
            ratios: [(1.0, 1.0, 1.0); 3],
        };
        let t = c("octopus", "baseline", "h1-keepalive").targets();
        assert_eq!(t[0].unwrap().verdict(0.985), "❌ ≥ 0.99");
        assert_eq!(t[2].unwrap().verdict(1.03), "✅ ≤ 1.03");
        assert!(c("octopus", "http1", "h1-keepalive").targets()[1].is_none());
        assert!(c("octopus", "baseline", "h1-close").targets()[0].is_none());
        assert!(c("octopus-axum", "axum-nodelay", "h2").targets()[0].is_some());
        assert!(c("octopus-axum-nagle", "axum", "h1-keepalive").targets()[0].is_some());
        // Unlike Nagle settings: reported, not judged.
        assert!(c("octopus-axum", "axum", "h2").targets()[0].is_none());
    }

    #[test]
    fn a_selection_keeps_the_servers_that_speak_each_workload() {
        let s = Selection {
            workloads: vec![Workload::H2],
            servers: vec![Kind::Http1, Kind::AxumNodelay, Kind::OctopusAxum],
        };
        assert_eq!(s.workloads(), [Workload::H2]);
        assert_eq!(
            s.servers(Workload::H2),
            [Kind::OctopusAxum, Kind::AxumNodelay]
        );
        let all = Selection::default();
        assert_eq!(all.workloads(), Workload::ALL);
        assert_eq!(all.servers(Workload::H1Close), Workload::H1Close.servers());
    }

    #[test]
    fn the_like_for_like_axum_pairs_are_compared() {
        let run = |server: &str, rps: f64| PinnedRun {
            server: server.into(),
            workload: "h2".into(),
            rps,
            p50_us: 100.0,
            p99_us: 200.0,
            ..PinnedRun::default()
        };
        let r = PinnedResult {
            rounds: vec![vec![
                run("axum", 80.0),
                run("octopus-axum", 60.0),
                run("axum-nodelay", 50.0),
                run("octopus-axum-nagle", 88.0),
            ]],
            ..PinnedResult::default()
        };
        let got: Vec<(String, String, f64)> = comparisons(&r)
            .into_iter()
            .map(|c| (c.server, c.reference, c.ratios[0].0))
            .collect();
        let want = [
            ("octopus-axum", "axum", 0.75),
            ("octopus-axum", "axum-nodelay", 1.2),
            ("octopus-axum-nagle", "axum", 1.1),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((s, r, x), (ws, wr, wx)) in got.iter().zip(want) {
            assert_eq!((s.as_str(), r.as_str()), (ws, wr));
            assert!((x - wx).abs() < 1e-9, "{s}/{r}: {x}");
        }
    }

    #[test]
    fn a_comparison_is_the_median_of_per_round_ratios() {
        let run = |server: &str, rps: f64| PinnedRun {
            server: server.into(),
            workload: "h2".into(),
            rps,
            p50_us: 100.0,
            p99_us: 200.0,
            ..PinnedRun::default()
        };
        let r = PinnedResult {
            rounds: [0.9, 1.0, 1.2]
                .iter()
                .map(|x| vec![run("octopus", 100.0 * x), run("baseline", 100.0)])
                .collect(),
            ..PinnedResult::default()
        };
        let c = comparisons(&r);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].rounds, 3);
        let (m, lo, hi) = c[0].ratios[0];
        assert!((m - 1.0).abs() < 1e-9 && (lo - 0.9).abs() < 1e-9 && (hi - 1.2).abs() < 1e-9);
    }
}

//! BENCHMARKS.md, rendered from the JSON results (and the SVG plots beside them).

use std::fmt::Write as _;
use std::path::Path;

use crate::results::{self, OverheadResult, ScenarioResult, WrkResult};

const SCENARIOS: [&str; 7] = [
    "keepalive",
    "keepalive-10k",
    "control",
    "new-conn",
    "inflight",
    "usr1",
    "shutdown",
];
const SERVERS: [&str; 3] = ["octopus", "ecdysis", "baseline"];

/// Median, 90th percentile and maximum of `v` (empty: `None`).
pub fn spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.9), v[v.len() - 1]))
}

fn fmt_spread(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((m, p90, max)) => format!("{m:.1} / {p90:.1} / {max:.1}"),
        None => "–".into(),
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

fn classes(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "–".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the `octopus upgrade` runs of a `control` run say: reported `duration_ms` and wall
/// time (median, p90, max), and how many did not succeed.
pub struct ControlFigures {
    /// `duration_ms` the command reported.
    pub reported: Option<(f64, f64, f64)>,
    /// The command's wall time.
    pub wall: Option<(f64, f64, f64)>,
    /// Runs that exited non-zero (or not at all).
    pub non_zero: usize,
    /// Runs that exited 0 but whose answer or new process did not check out.
    pub bad_answers: usize,
    /// Runs.
    pub runs: usize,
}

/// `None` for a run without `octopus upgrade`.
pub fn control_figures(r: &ScenarioResult) -> Option<ControlFigures> {
    let calls: Vec<_> = r
        .upgrades
        .iter()
        .filter_map(|u| Some((u, u.control.as_ref()?)))
        .collect();
    if calls.is_empty() {
        return None;
    }
    let non_zero = calls.iter().filter(|(_, c)| c.exit_code != Some(0)).count();
    Some(ControlFigures {
        reported: spread(
            calls
                .iter()
                .filter_map(|(_, c)| c.reported_ms.map(|v| v as f64))
                .collect(),
        ),
        wall: spread(calls.iter().map(|(_, c)| c.wall_ms).collect()),
        non_zero,
        bad_answers: calls
            .iter()
            .filter(|(u, c)| !c.succeeded(u.old_pid, u.new_pid))
            .count()
            - non_zero,
        runs: calls.len(),
    })
}

/// One line summing up a run, for the terminal.
pub fn one_line(r: &ScenarioResult) -> String {
    let done = r.upgrades.iter().filter(|u| u.new_pid.is_some()).count();
    let control = control_figures(r).map_or(String::new(), |c| {
        format!(
            ", octopus upgrade: reported duration_ms median/p90/max {}, wall {} ms, {} of {} \
             exited non-zero, {} bad answers",
            fmt_spread(c.reported),
            fmt_spread(c.wall),
            c.non_zero,
            c.runs,
            c.bad_answers
        )
    });
    format!(
        "{} / {}: {} ok, {} failed {:?}, {:.0} req/s, p99 {} us, upgrades {}/{}, \
         signal->new pid median {} ms, fds {:?}->{:?}, zombies {}{}",
        r.scenario,
        r.server,
        r.total.ok,
        r.total.failed,
        r.total.failed_by_class,
        r.total.rps,
        r.total.latency.p99_us,
        done,
        r.upgrades_planned,
        spread(
            r.upgrades
                .iter()
                .filter_map(|u| u.signal_to_first_response())
                .collect()
        )
        .map_or("–".into(), |s| format!("{:.1}", s.0)),
        r.checks.first_fds,
        r.checks.final_fds,
        r.checks.zombies_before_stop.len() + r.checks.zombies_after_stop.len(),
        control
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

fn scenario_table(out: &mut String, rs: &[&ScenarioResult]) {
    out.push_str(
        "| server | ok | failed (by class) | idle conns found closed | req/s | p50 / p99 µs | upgrades | \
         signal→new pid answers | signal→new started | new ready→old exit | signal→old exit | \
         new ready→old drains | old's drain | linger (ready→exit − drain) | \
         fds first→final | zombies | RSS KiB gen 1→last | bad exits | cut |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rs {
        let u = &r.upgrades;
        let done = u.iter().filter(|u| u.new_pid.is_some()).count();
        let rss_first = r.generations.first().and_then(|g| g.rss_kb);
        let rss_last = r.generations.last().and_then(|g| g.rss_kb);
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} | {:.0} | {} / {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {}→{} | {} | {}→{} | {} | {} |",
            r.server,
            r.total.ok,
            r.total.failed,
            classes(&r.total.failed_by_class),
            r.total.closed_while_idle,
            r.total.rps,
            r.total.latency.p50_us,
            r.total.latency.p99_us,
            done,
            r.upgrades_planned,
            fmt_spread(spread(u.iter().filter_map(|u| u.signal_to_first_response()).collect())),
            fmt_spread(spread(u.iter().filter_map(|u| u.signal_to_started()).collect())),
            fmt_spread(spread(u.iter().filter_map(|u| u.ready_to_old_exit()).collect())),
            fmt_spread(spread(u.iter().filter_map(|u| u.signal_to_old_exit()).collect())),
            fmt_spread(spread(u.iter().filter_map(|u| u.ready_to_drain_start()).collect())),
            fmt_spread(spread(u.iter().filter_map(|u| u.drain()).collect())),
            fmt_spread(spread(u.iter().filter_map(|u| u.linger()).collect())),
            opt(r.checks.first_fds),
            opt(r.checks.final_fds),
            r.checks.zombies_before_stop.len() + r.checks.zombies_after_stop.len(),
            opt(rss_first),
            opt(rss_last),
            r.checks.bad_exits.len() + r.checks.killed.len(),
            r.log.cut,
        )
        .map(|_| ());
    }
    for r in rs {
        if r.groups.len() > 1 {
            let _ = writeln!(out, "\nPer client group, {}:\n", r.server);
            out.push_str(
                "| group | ok | failed (by class) | p50 / p99 / max µs |\n|---|---|---|---|\n",
            );
            for g in &r.per_group {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} ({}) | {} / {} / {} |",
                    g.name,
                    g.ok,
                    g.failed,
                    classes(&g.failed_by_class),
                    g.latency.p50_us,
                    g.latency.p99_us,
                    g.latency.max_us
                );
            }
        }
    }
}

fn control_table(out: &mut String, rs: &[&ScenarioResult]) {
    out.push_str(
        "\n`duration_ms` is what `octopus upgrade --json` answered: the server's own time from \
         the request to the new process ready. Wall time is the command's, spawn to exit \
         (process start, connect, the upgrade, the answer). The machine is shared (other \
         builds ran, see the load average) and has 2 cores; nothing is pinned (the tool pins \
         no scenario). Reproduce: `cargo build --release --example hello -p octopus && cargo \
         build --release -p octopus-bench -p octopus-cli && target/release/octopus-bench run \
         control && target/release/octopus-bench report`.\n\n| server | `octopus upgrade` runs | exited non-zero | exited 0, answer \
         wrong | reported `duration_ms` median / p90 / max | wall time ms median / p90 / max | \
         failed requests (by class) |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rs {
        if let Some(c) = control_figures(r) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} ({}) |",
                r.server,
                c.runs,
                c.non_zero,
                c.bad_answers,
                fmt_spread(c.reported),
                fmt_spread(c.wall),
                r.total.failed,
                classes(&r.total.failed_by_class)
            );
        }
    }
    for r in rs {
        for u in &r.upgrades {
            if let Some(c) = u.control.as_ref().filter(|c| c.exit_code != Some(0)) {
                let _ = writeln!(
                    out,
                    "\n{} upgrade {}: `octopus upgrade` {} after {:.1} ms: `{}`",
                    r.server,
                    u.n,
                    c.status,
                    c.wall_ms,
                    c.answer.as_deref().unwrap_or("")
                );
            }
        }
    }
}

fn failures_detail(out: &mut String, r: &ScenarioResult) {
    if r.failures.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nFirst failures of {} / {} (ms since the start; `reused`: requests already answered on \
         the connection; `conn pid`: the process that answered last on it; `vs its drain`: ms \
         since that process logged `old process draining` (negative: before), or else since \
         the last signal):\n",
        r.scenario, r.server
    );
    out.push_str(
        "| class | start | seen | reused | conn pid | vs its drain |\n|---|---|---|---|---|---|\n",
    );
    for f in r.failures.iter().take(12) {
        let drain = f
            .conn_pid
            .and_then(|pid| r.upgrades.iter().find(|u| u.old_pid == pid))
            .and_then(|u| Some((u.n, u.drain_start_ms?)));
        let after = match drain {
            Some((n, d)) => format!("{:.1} (upgrade {n})", f.end_ms - d),
            None => r
                .upgrades
                .iter()
                .rev()
                .find(|u| u.signal_ms <= f.start_ms)
                .map_or("–".into(), |u| {
                    format!("{:.1} after signal {}", f.start_ms - u.signal_ms, u.n)
                }),
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {} | {} | {} |",
            f.class.name(),
            f.start_ms,
            f.end_ms,
            f.reused,
            f.conn_pid.map_or("–".into(), |p| p.to_string()),
            after
        );
    }
}

/// Renders `out` from the results in `dir`, and the SVG plots into `dir`.
pub fn write(dir: &Path, out: &Path) -> Result<(), String> {
    let mut all: Vec<ScenarioResult> = Vec::new();
    for s in SCENARIOS {
        for k in SERVERS {
            if let Some(r) = results::read::<ScenarioResult>(dir, &format!("{s}-{k}.json")) {
                all.push(r);
            }
        }
    }
    let overhead: Option<OverheadResult> = results::read(dir, "overhead.json");
    let wrk: Option<WrkResult> = results::read(dir, "wrk-keepalive.json");
    let rel = |name: &str| {
        let d = dir.to_string_lossy();
        format!("{}/{name}", d.trim_end_matches('/'))
    };
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Generated by `octopus-bench report` from the JSON results in `bench/results/` \
         (do not edit by hand; hand-written notes live in `bench/NOTES.md` and are copied in \
         below). Issue 3: no request fails while the server is upgraded or shut down, measured \
         under load, beside plain hyper-util and the ecdysis peer.\n\n",
    );
    let _ = writeln!(
        md,
        "Machine: {}. Everything (servers, load, wrk) runs on this one machine, over 127.0.0.1.\n",
        machine()
    );
    md.push_str(
        "Reproduce all of it: `bash bench/run.sh` (builds in release, runs every scenario and \
         wrk, rewrites this file). One scenario: `target/release/octopus-bench run keepalive`; \
         CI's smoke run: `target/release/octopus-bench smoke`.\n\n",
    );
    md.push_str(
        "How it measures: C client tasks on raw tokio sockets (no retry) send `GET /pid` \
         (or `/sleep?ms=1000`) back to back, on one keep-alive connection each or on a new \
         connection per request. Before reusing a keep-alive connection a client checks, as every \
         pooling client does, whether the server has closed it (a non-blocking `recv` with \
         `MSG_PEEK`), and if so opens a new one: the column \"idle conns found closed\" counts \
         those, and a failure is a request written on a connection the client had no sign was \
         closed. Every failure is classified: `refused` (connect refused), \
         `reset` (RST or write on a closed socket), `eof_empty` (closed before any byte of the \
         response: the HTTP/1 keep-alive race), `eof_partial` (closed mid-response), `timeout` \
         (5 s), `non_2xx`. The tool is the child subreaper of the server, reads the log of every \
         generation from the one stderr pipe, follows the serving pid from `server started pid=N` \
         lines, sends the upgrade signal to the newest generation, and reaps each exit itself \
         (exit time = `waitpid` return). Times in ms since the signal unless said otherwise; \
         \"new ready\" is the new process's `server started` line, written after it reported ready. \
         fds are counted in `/proc/PID/fd` with the server idle (before the load for generation 1, \
         after it for the last one); RSS is `VmRSS`, read just before each generation is signalled.\n\n",
    );

    md.push_str("## Targets\n\n");
    targets(&mut md, &all, overhead.as_ref());

    for s in SCENARIOS {
        let rs: Vec<&ScenarioResult> = all.iter().filter(|r| r.scenario == s).collect();
        if rs.is_empty() {
            continue;
        }
        let first = rs[0];
        let _ = writeln!(md, "\n## `{s}`\n");
        let groups: Vec<String> = first
            .groups
            .iter()
            .map(|g| format!("{} × `{}` ({:?})", g.clients, g.path, g.mode))
            .collect();
        let signals = match first.shutdown.as_ref() {
            Some(sd) => format!("SIGTERM at {:.1} s", sd.signal_ms / 1000.0),
            None if first.signal == "CONTROL" => format!(
                "{} upgrades by `octopus upgrade --control PATH --json` (the release binary of \
                 `cli/`; `hello` started with `--control PATH` in a temporary directory), each \
                 started when the previous one exited, from 1 s on; \"signal\" in the columns \
                 below is the command's start",
                first.upgrades_planned
            ),
            None => format!(
                "{} {} every {} ms",
                first.upgrades_planned, first.signal, first.interval_ms
            ),
        };
        let _ = writeln!(
            md,
            "{}; {signals}; load {:.1} s. Command: `{}`. Load average before each run: {}. \
             Times in ms, as median / p90 / max over the upgrades.\n",
            groups.join(" + "),
            first.duration_s,
            first.command,
            rs.iter()
                .map(|r| format!("{} {}", r.server, r.loadavg_before))
                .collect::<Vec<_>>()
                .join(", ")
        );
        scenario_table(&mut md, &rs);
        if s == "control" {
            control_table(&mut md, &rs);
        }
        if s == "usr1" {
            for r in &rs {
                let counts: Vec<u64> = r.generations.iter().map(|g| g.responses).collect();
                let _ = writeln!(
                    md,
                    "\n{}: {} generations, {} alive when the load ended, {} answered after the \
                     last upgrade signal; responses per generation: min {}, max {}; all stopped \
                     by SIGTERM at the end: bad exits {:?}, killed {:?}.",
                    r.server,
                    r.generations.len(),
                    r.checks.alive_at_end,
                    r.checks.answering_after_last_upgrade,
                    counts.iter().min().unwrap_or(&0),
                    counts.iter().max().unwrap_or(&0),
                    r.checks.bad_exits,
                    r.checks.killed
                );
            }
        }
        if s == "shutdown" {
            md.push_str("\n| server | SIGTERM at, ms | exit after, ms | status | failed, started before SIGTERM | failed, started after SIGTERM |\n|---|---|---|---|---|---|\n");
            for r in &rs {
                if let Some(sd) = &r.shutdown {
                    let _ = writeln!(
                        md,
                        "| {} | {:.0} | {} | {} | {} | {} |",
                        r.server,
                        sd.signal_ms,
                        sd.exit_ms
                            .map_or("–".into(), |e| format!("{:.1}", e - sd.signal_ms)),
                        sd.status.as_deref().unwrap_or("?"),
                        classes(&sd.failed_before_signal),
                        classes(&sd.failed_after_signal)
                    );
                }
            }
        }
        for r in &rs {
            failures_detail(&mut md, r);
            if !r.log.notable.is_empty() {
                let _ = writeln!(
                    md,
                    "\nWARN/ERROR lines of {} (first {}):\n\n```text",
                    r.server,
                    r.log.notable.len().min(5)
                );
                for l in r.log.notable.iter().take(5) {
                    let _ = writeln!(md, "{l}");
                }
                md.push_str("```\n");
            }
        }
        md.push('\n');
        for r in &rs {
            let svg = format!("{}-{}.svg", r.scenario, r.server);
            crate::plot::draw(r, &dir.join(&svg))?;
            let _ = writeln!(md, "![{} / {}]({})\n", r.scenario, r.server, rel(&svg));
        }
    }

    if let Some(o) = &overhead {
        let _ = writeln!(
            md,
            "\n## `overhead`\n\nNo upgrade; {} keep-alive clients on `/pid`, {} s per run after 1 s of \
             warm-up, the three servers back to back in each round, their order rotating from \
             round to round (octopus baseline ecdysis, then baseline ecdysis octopus, then \
             ecdysis octopus baseline...), ratios against the baseline of the same round; the \
             target rows above take the median of the per-round ratios. Load average before \
             each round: {}. Command: `{}`.\n",
            o.clients,
            o.duration_s,
            o.rounds
                .iter()
                .filter_map(|r| r.runs.first().map(|x| x.loadavg_before.clone()))
                .collect::<Vec<_>>()
                .join("; "),
            o.command
        );
        md.push_str("| round | octopus req/s | baseline req/s | ecdysis req/s | octopus/baseline req/s | p50 | p99 | ecdysis/baseline req/s | p50 | p99 |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for (i, r) in o.rounds.iter().enumerate() {
            let rps = |s: &str| {
                r.runs
                    .iter()
                    .find(|x| x.server == s)
                    .map_or("–".into(), |x| {
                        format!(
                            "{:.0} (p50 {} p99 {} µs)",
                            x.counts.rps, x.counts.latency.p50_us, x.counts.latency.p99_us
                        )
                    })
            };
            let ratio = |s: &str| {
                r.ratios.get(s).map_or("– | – | –".into(), |v| {
                    format!("{:.3} | {:.3} | {:.3}", v[0], v[1], v[2])
                })
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                i + 1,
                rps("octopus"),
                rps("baseline"),
                rps("ecdysis"),
                ratio("octopus"),
                ratio("ecdysis")
            );
        }
    }

    if let Some(w) = &wrk {
        let _ = writeln!(
            md,
            "\n## Cross-check with wrk\n\nCommand: `{}` (runs `{}` against octopus while sending {} SIGHUPs; {} generations served).\n",
            w.command, w.wrk_command, w.upgrades, w.generations
        );
        let errors: u64 = w.socket_errors.iter().sum::<u64>() + w.non_2xx;
        let _ = writeln!(
            md,
            "wrk: {} requests, {:.0} req/s, socket errors connect {} read {} write {} timeout {}, non-2xx {}; latency p50 {} µs, p99 {} µs.\n",
            w.requests,
            w.rps,
            w.socket_errors[0],
            w.socket_errors[1],
            w.socket_errors[2],
            w.socket_errors[3],
            w.non_2xx,
            w.p50_us.map_or("?".into(), |v| format!("{v:.0}")),
            w.p99_us.map_or("?".into(), |v| format!("{v:.0}"))
        );
        if let Some(tool) = all
            .iter()
            .find(|r| r.scenario == "keepalive" && r.server == "octopus")
        {
            let ratio = tool.total.rps / w.rps.max(1e-9);
            let agree = (errors == 0) == (tool.total.failed == 0);
            let _ = writeln!(
                md,
                "The tool's keepalive run against octopus: {} failed requests, {:.0} req/s. \
                 **{}** on failures ({} by wrk, {} by the tool); throughput tool/wrk = {:.2} \
                 (latency p50 {} vs {} µs, p99 {} vs {} µs). The clients share the 2 cores with \
                 the server and with whatever else runs (see the load averages), so throughput \
                 and latency say as much about the client and the machine as about the server; \
                 the failure counts are the comparison that matters.",
                tool.total.failed,
                tool.total.rps,
                if agree { "They agree" } else { "They disagree" },
                errors,
                tool.total.failed,
                ratio,
                tool.total.latency.p50_us,
                w.p50_us.map_or("?".into(), |v| format!("{v:.0}")),
                tool.total.latency.p99_us,
                w.p99_us.map_or("?".into(), |v| format!("{v:.0}"))
            );
        }
    }

    crate::report_scale::write(&mut md, dir, &rel)?;

    md.push_str(&crate::supervisor::section(dir));
    if let Ok(notes) = std::fs::read_to_string("bench/NOTES.md") {
        md.push('\n');
        md.push_str(&notes);
    }
    std::fs::write(out, md).map_err(|e| format!("{}: {e}", out.display()))
}

fn targets(md: &mut String, all: &[ScenarioResult], overhead: Option<&OverheadResult>) {
    md.push_str("| target | octopus | ecdysis peer |\n|---|---|---|\n");
    let find = |s: &str, k: &str| all.iter().find(|r| r.scenario == s && r.server == k);
    for s in ["keepalive", "new-conn", "inflight"] {
        let cell = |k: &str| {
            find(s, k).map_or("not run".into(), |r| {
                format!(
                    "{} {} ({})",
                    if r.total.failed == 0 { "✅" } else { "❌" },
                    r.total.failed,
                    classes(&r.total.failed_by_class)
                )
            })
        };
        let _ = writeln!(
            md,
            "| 0 failed requests in `{s}` | {} | {} |",
            cell("octopus"),
            cell("ecdysis")
        );
    }
    let cell = |k: &str| {
        find("shutdown", k)
            .and_then(|r| r.shutdown.as_ref())
            .map_or("not run".into(), |sd| {
                let n: u64 = sd.failed_before_signal.values().sum();
                format!(
                    "{} {} ({})",
                    if n == 0 { "✅" } else { "❌" },
                    n,
                    classes(&sd.failed_before_signal)
                )
            })
    };
    let _ = writeln!(
        md,
        "| `shutdown`: 0 failed among requests started before SIGTERM | {} | {} |",
        cell("octopus"),
        cell("ecdysis")
    );
    if let Some(o) = overhead {
        let med = |k: &str, i: usize| {
            spread(
                o.rounds
                    .iter()
                    .filter_map(|r| r.ratios.get(k).map(|v| v[i]))
                    .collect(),
            )
            .map(|s| s.0)
        };
        let cell = |k: &str| match (med(k, 0), med(k, 2)) {
            (Some(t), Some(p99)) => format!(
                "{} throughput {:.3} (≥ 0.98), {} p99 {:.3} (≤ 1.05), p50 {:.3}",
                if t >= 0.98 { "✅" } else { "❌" },
                t,
                if p99 <= 1.05 { "✅" } else { "❌" },
                p99,
                med(k, 1).unwrap_or(0.0)
            ),
            _ => "not run".into(),
        };
        let _ = writeln!(
            md,
            "| `overhead` vs baseline (median of the per-round ratios) | {} | {} |",
            cell("octopus"),
            cell("ecdysis")
        );
    }
    let upgrade_cells = |f: &dyn Fn(&ScenarioResult) -> String| {
        let cell = |k: &str| find("keepalive", k).map_or("not run".into(), f);
        (cell("octopus"), cell("ecdysis"))
    };
    let (a, b) = upgrade_cells(&|r| {
        let s = spread(
            r.upgrades
                .iter()
                .filter_map(|u| u.signal_to_first_response())
                .collect(),
        );
        let st = spread(
            r.upgrades
                .iter()
                .filter_map(|u| u.signal_to_started())
                .collect(),
        );
        let h = spread(r.upgrades.iter().filter_map(|u| u.handover()).collect());
        format!(
            "{} ms (new process ready after {} ms; hand-over, ready → first response: {} \
             median, {} max, target < 10 ms)",
            s.map_or("–".into(), |s| format!("{:.1}", s.0)),
            st.map_or("–".into(), |s| format!("{:.1}", s.0)),
            h.map_or("–".into(), |h| format!(
                "{} {:.1} ms",
                if h.0 < 10.0 { "✅" } else { "❌" },
                h.0
            )),
            h.map_or("–".into(), |h| format!("{:.1} ms", h.2))
        )
    });
    let _ = writeln!(
        md,
        "| median signal → first response from the new pid (`keepalive`) | {a} | {b} |"
    );
    let control = find("control", "octopus").and_then(|r| Some((r, control_figures(r)?)));
    let cell = control.map_or("not run".into(), |(r, c)| {
        format!(
            "{} {} of {} exited non-zero, {} failed requests; reported `duration_ms` {} \
             (median / p90 / max), wall time {} ms",
            if c.non_zero + c.bad_answers == 0 && r.total.failed == 0 {
                "✅"
            } else {
                "❌"
            },
            c.non_zero,
            c.runs,
            r.total.failed,
            fmt_spread(c.reported),
            fmt_spread(c.wall)
        )
    });
    let _ = writeln!(
        md,
        "| `octopus upgrade` under the keep-alive load (`control`): 0 exited non-zero, 0 failed \
         requests | {cell} | n/a (no control socket) |"
    );
    let (a, b) = upgrade_cells(&|r| {
        let linger = spread(r.upgrades.iter().filter_map(|u| u.linger()).collect());
        let gone = spread(
            r.upgrades
                .iter()
                .filter_map(|u| u.ready_to_old_exit())
                .collect(),
        );
        let drain = spread(r.upgrades.iter().filter_map(|u| u.drain()).collect());
        match (linger, gone, drain) {
            (Some(l), Some(g), Some(d)) => format!(
                "{} gone {:.1} ms after the new one was ready (median; max {:.1}); its drain \
                 took {:.1} ms (median; max {:.1}); beyond the drain: {:.1} ms (median; max {:.1})",
                if l.2 <= 50.0 { "✅" } else { "❌" },
                g.0,
                g.2,
                d.0,
                d.2,
                l.0,
                l.2
            ),
            _ => "–".into(),
        }
    });
    let _ = writeln!(
        md,
        "| old process gone within its drain time + 50 ms of the new one being ready \
         (`keepalive`, every upgrade) | {a} | {b} |"
    );
    let (a, b) = upgrade_cells(&|r| {
        let c = &r.checks;
        format!(
            "{} {} → {} after {} upgrades",
            if c.fd_ok() { "✅" } else { "❌" },
            opt(c.first_fds),
            opt(c.final_fds),
            r.upgrades.len()
        )
    });
    let _ = writeln!(
        md,
        "| final generation's fds == first's (`keepalive`) | {a} | {b} |"
    );
    let zombies = |k: &str| {
        let n: usize = all
            .iter()
            .filter(|r| r.server == k)
            .map(|r| r.checks.zombies_before_stop.len() + r.checks.zombies_after_stop.len())
            .sum();
        format!("{} {n}", if n == 0 { "✅" } else { "❌" })
    };
    let _ = writeln!(
        md,
        "| zero zombies (all scenarios) | {} | {} |",
        zombies("octopus"),
        zombies("ecdysis")
    );
    let (a, b) = upgrade_cells(&|r| {
        let rss: Vec<u64> = r.generations.iter().filter_map(|g| g.rss_kb).collect();
        match (rss.first(), rss.iter().max(), rss.last()) {
            (Some(f), Some(m), Some(l)) => format!(
                "{} gen 1 {f} KiB, max {m}, last {l} ({} generations)",
                if (*l as f64) <= *f as f64 * 1.2 {
                    "✅"
                } else {
                    "❌"
                },
                rss.len()
            ),
            _ => "–".into(),
        }
    });
    let _ = writeln!(
        md,
        "| RSS per generation flat (last ≤ 1.2 × first, `keepalive`) | {a} | {b} |"
    );
}

//! The sections of BENCHMARKS.md for issue 12: the pinned overhead comparisons and the curves
//! over scale, with their SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use crate::curves::{CurvesResult, Point};
use crate::pinned::{self, PinnedResult};
use crate::plot::{self, Curve};
use crate::results;

fn fmt_values(p: &Point) -> String {
    p.values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn note(p: &Point, name: &str) -> Vec<f64> {
    p.notes
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .collect()
}

/// The relayed point's answers: per repetition, how many of the `x` connections the new process
/// answered, ✅ only if all did in each of them; what else happened, when anything did.
fn relayed_answers(p: &Point) -> String {
    let new = note(p, "answered_new");
    // A repetition whose old process did not exit within the tool's bound has no value.
    let exited = p.values.len() == new.len();
    let all = exited && !new.is_empty() && new.iter().all(|&v| v == p.x as f64);
    let counts = |v: &[f64]| {
        v.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "{} of {} by the new process {}",
        counts(&new),
        p.x,
        if all { "✅" } else { "❌" }
    );
    for (name, label) in [
        ("answered_other", "by another process"),
        ("failed", "not answered"),
        ("closed_before_request", "found closed"),
    ] {
        let v = note(p, name);
        if v.iter().any(|&v| v > 0.0) {
            let _ = write!(text, "; {label}: {}", counts(&v));
        }
    }
    if !exited {
        let _ = write!(
            text,
            "; the old process exited in {} of {} repetitions",
            p.values.len(),
            new.len()
        );
    }
    text
}

fn curve(label: &str, points: &[&Point]) -> Curve {
    Curve {
        label: label.into(),
        points: points.iter().map(|p| (p.x as f64, p.median())).collect(),
    }
}

/// Appends the pinned and the curves sections, if their results exist.
pub fn write(md: &mut String, dir: &Path, rel: &dyn Fn(&str) -> String) -> Result<(), String> {
    if let Some(p) = results::read::<PinnedResult>(dir, "pinned.json") {
        pinned_section(md, &p);
    }
    if let Some(c) = results::read::<CurvesResult>(dir, "curves.json") {
        curves_section(md, &c, dir, rel)?;
    }
    Ok(())
}

fn pinned_section(md: &mut String, p: &PinnedResult) {
    let busy: Vec<String> = p
        .rounds
        .iter()
        .filter_map(|r| r.first().map(|x| x.loadavg_before.clone()))
        .collect();
    let _ = writeln!(
        md,
        "\n## `pinned`: overhead with the server on CPU 0 and the load on CPU 1\n\n\
         {} rounds; in each, every workload against every server that speaks it, {} s measured \
         after 1 s of warm-up, a fresh server per run, the servers' order rotating from round to \
         round. A ratio is server / reference within one round; the table gives the median of \
         the per-round ratios and their min..max. Throughput: higher is better; p50, p99 \
         latency: lower is better. Command: `{}`. Load generators (on CPU 1, like this tool):\n",
        p.rounds.len(),
        p.secs,
        p.command
    );
    for t in &p.tools {
        let _ = writeln!(md, "- `{t}`");
    }
    let _ = writeln!(
        md,
        "\nServers: `octopus` = `examples/hello`; `baseline` = hyper-util's auto builder \
         (`bench/src/bin/baseline.rs`); `http1` = hyper's http1 builder only \
         (`bench/src/bin/hyper_http1.rs`); `axum` = `axum::serve(..).with_graceful_shutdown(..)` \
         and `octopus-axum` = the same axum `Router` served by octopus \
         (`bench/src/bin/router.rs`), each with its own default: Nagle's algorithm on for \
         `axum`, `TCP_NODELAY` for `octopus-axum`; `axum-nodelay` and `octopus-axum-nagle` \
         swap them, so that `octopus-axum / axum-nodelay` and `octopus-axum-nagle / axum` \
         compare like for like (the target is judged on these). Load average (1/5/15 min) before each round: {}.\n",
        busy.join("; ")
    );
    md.push_str(
        "| workload | server / reference | throughput | p50 | p99 | rounds |\n|---|---|---|---|---|---|\n",
    );
    for c in pinned::comparisons(p) {
        let targets = c.targets();
        let f = |i: usize| {
            let (m, lo, hi) = c.ratios[i];
            let verdict = targets[i].map_or(String::new(), |t| format!(" {}", t.verdict(m)));
            format!("**{m:.3}** ({lo:.3}..{hi:.3}){verdict}")
        };
        let _ = writeln!(
            md,
            "| {} | {} / {} | {} | {} | {} | {} |",
            c.workload,
            c.server,
            c.reference,
            f(0),
            f(1),
            f(2),
            c.rounds
        );
    }
    md.push_str(
        "
Targets (issue 12) are judged on the median; a min..max that straddles the bound \
         says the rounds disagree, and only a whole min..max on one side is a clear result on \
         this shared machine.\n",
    );
    md.push_str(
        "\nAbsolute figures, median over the rounds (req/s, p50 µs, p99 µs, errors summed):\n\n\
         | workload | server | req/s | p50 µs | p99 µs | errors |\n|---|---|---|---|---|---|\n",
    );
    let mut keys: Vec<(String, String)> = p
        .rounds
        .iter()
        .flatten()
        .map(|r| (r.workload.clone(), r.server.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    for (w, s) in keys {
        let runs: Vec<_> = p
            .rounds
            .iter()
            .flatten()
            .filter(|r| r.workload == w && r.server == s)
            .collect();
        let med = |f: &dyn Fn(&pinned::PinnedRun) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(|r| f(r)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let _ = writeln!(
            md,
            "| {w} | {s} | {:.0} | {:.0} | {:.0} | {} |",
            med(&|r| r.rps),
            med(&|r| r.p50_us),
            med(&|r| r.p99_us),
            runs.iter().map(|r| r.errors).sum::<u64>()
        );
    }
}

fn curves_section(
    md: &mut String,
    c: &CurvesResult,
    dir: &Path,
    rel: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let _ = writeln!(
        md,
        "\n## Curves over scale\n\nEach point measured ({} repetitions, median; every value \
         listed). Connections are opened 256 at a time, each served one `GET /ping` first, then \
         left idle. Command: `{}`. Load average at the start: {}; at the end: {}.\n",
        c.rss_per_conn.first().map_or(0, |p| p.values.len()),
        c.command,
        c.loadavg.0,
        c.loadavg.1
    );

    md.push_str(
        "### RSS per open idle keep-alive connection\n\n`VmRSS` after opening N connections \
         minus `VmRSS` with one open, divided by N, in bytes.\n\n\
         | server | connections | bytes per connection | values | connections opened |\n\
         |---|---|---|---|---|\n",
    );
    for p in &c.rss_per_conn {
        let _ = writeln!(
            md,
            "| {} | {} | **{:.0}** | {} | {:?} |",
            p.server,
            p.x,
            p.median(),
            fmt_values(p),
            note(p, "opened")
        );
    }
    let by = |s: &str| -> Vec<&Point> { c.rss_per_conn.iter().filter(|p| p.server == s).collect() };
    let svg = "curve-rss.svg";
    plot::draw_curves(
        &dir.join(svg),
        "RSS per idle keep-alive connection",
        "open connections (log)",
        "bytes per connection",
        &[
            curve("octopus (hello)", &by("octopus")),
            curve("baseline (hyper-util)", &by("baseline")),
        ],
    )?;
    let over: Vec<String> = by("octopus")
        .iter()
        .filter_map(|o| {
            let b = by("baseline").into_iter().find(|b| b.x == o.x)?;
            Some(format!("{:+.0} at {}", o.median() - b.median(), o.x))
        })
        .collect();
    if !over.is_empty() {
        let _ = writeln!(
            md,
            "\noctopus − baseline, bytes per connection: {} connections.",
            over.join(", ")
        );
    }
    let _ = writeln!(md, "\n![RSS per connection]({})\n", rel(svg));

    md.push_str(
        "### Drain time of 10,000 connections\n\nDefault `idle_grace` 1 s and drain timeout 5 s; \
         the exit is seen by the tool (its reaper). Idle, shutdown: SIGTERM to the exit of \
         `hello`; target ≤ idle_grace + 100 ms = 1,100 ms. Idle, upgrade: SIGHUP to the old \
         process's exit, which hands each idle connection to the new process (`SCM_RIGHTS`) \
         instead of closing it after `idle_grace`, so the time includes starting the new \
         process; after the exit each connection sends one `GET /pid`, and \"answered\" is, per \
         repetition, how many of them the new process answered (✅ only if all, in every \
         repetition). The target is judged on the shutdown row, where no successor exists and \
         `idle_grace` applies. In flight: each connection has a `GET /sleep?ms=2000` written \
         before the signal; \"beyond due\" is exit minus (last request written + 2 s).\n\n\
         | connections | state | signal → exit, ms (median) | values | beyond due, ms | answered |\n\
         |---|---|---|---|---|---|\n",
    );
    for p in &c.drain_idle {
        let _ = writeln!(
            md,
            "| {} | idle, shutdown (SIGTERM) | **{:.0}** {} | {} | – | – |",
            p.x,
            p.median(),
            if p.median() <= 1100.0 { "✅" } else { "❌" },
            fmt_values(p)
        );
    }
    for p in &c.drain_idle_relayed {
        let _ = writeln!(
            md,
            "| {} | idle, upgrade (SIGHUP, relayed) | **{:.0}** | {} | – | {} |",
            p.x,
            p.median(),
            fmt_values(p),
            relayed_answers(p)
        );
    }
    for p in &c.drain_inflight {
        let _ = writeln!(
            md,
            "| {} | request in flight | **{:.0}** | {} | {:?} | {:?} |",
            p.x,
            p.median(),
            fmt_values(p),
            note(p, "beyond_due_ms")
                .iter()
                .map(|v| v.round())
                .collect::<Vec<_>>(),
            note(p, "answered")
        );
    }

    md.push_str(
        "\n### Hand-over time over listeners and open connections\n\nThe axum router served \
         by octopus (`router --with octopus`, N TCP listeners on 127.0.0.1), SIGHUP to the \
         serving process; \"new ready\" is the new process's `server started` line (written \
         once it reported ready), \"old draining\" the old one's `old process draining` line. \
         Before each signal, C idle keep-alive connections are opened to the serving process; \
         the next upgrade waits for the old process's exit. Target: flat within noise.\n\n\
         | listeners | open connections | signal → new ready, ms | values | signal → old draining, ms | values |\n\
         |---|---|---|---|---|---|\n",
    );
    for (a, b) in c.handover_ready.iter().zip(&c.handover_draining) {
        let _ = writeln!(
            md,
            "| {} | {} | **{:.1}** | {} | **{:.1}** | {} |",
            a.x,
            a.conns,
            a.median(),
            a.values
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            b.median(),
            b.values
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let flat: Vec<String> = c
        .handover_draining
        .iter()
        .filter(|p| p.conns == 10_000)
        .filter_map(|many| {
            let none = c
                .handover_draining
                .iter()
                .find(|p| p.conns == 0 && p.x == many.x)?;
            Some(format!(
                "{:+.1} ms at {} listener{}",
                many.median() - none.median(),
                many.x,
                if many.x == 1 { "" } else { "s" }
            ))
        })
        .collect();
    if !flat.is_empty() {
        let _ = writeln!(
            md,
            "\nSignal → old draining, 10,000 open connections against none: {}.",
            flat.join(", ")
        );
    }
    let mut curves = Vec::new();
    for conns in [0u64, 10_000] {
        for (label, points) in [
            ("new ready", &c.handover_ready),
            ("old draining", &c.handover_draining),
        ] {
            let pts: Vec<&Point> = points.iter().filter(|p| p.conns == conns).collect();
            if !pts.is_empty() {
                curves.push(curve(&format!("{label}, {conns} connections"), &pts));
            }
        }
    }
    let svg = "curve-handover.svg";
    plot::draw_curves(
        &dir.join(svg),
        "Hand-over time: SIGHUP → new ready / old draining",
        "listeners (log)",
        "ms since SIGHUP",
        &curves,
    )?;
    let _ = writeln!(md, "\n![hand-over time]({})\n", rel(svg));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relayed(reps: &[[f64; 4]]) -> Point {
        let names = [
            "answered_new",
            "answered_other",
            "failed",
            "closed_before_request",
        ];
        Point {
            server: "octopus".into(),
            x: 10_000,
            values: vec![245.0; reps.len()],
            notes: reps
                .iter()
                .flat_map(|r| names.iter().zip(r).map(|(n, v)| (n.to_string(), *v)))
                .collect(),
            ..Point::default()
        }
    }

    #[test]
    fn relayed_answers_flag_a_repetition_not_all_answered_by_the_new_process() {
        let good = relayed(&[[10_000.0, 0.0, 0.0, 0.0]; 3]);
        assert_eq!(
            relayed_answers(&good),
            "10000, 10000, 10000 of 10000 by the new process ✅"
        );
        let bad = relayed(&[
            [10_000.0, 0.0, 0.0, 0.0],
            [9_998.0, 0.0, 2.0, 1.0],
            [10_000.0, 0.0, 0.0, 0.0],
        ]);
        assert_eq!(
            relayed_answers(&bad),
            "10000, 9998, 10000 of 10000 by the new process ❌; not answered: 0, 2, 0; \
             found closed: 0, 1, 0"
        );
        assert!(relayed_answers(&relayed(&[])).contains('❌'));
        let mut stuck = good.clone();
        stuck.values.pop();
        assert_eq!(
            relayed_answers(&stuck),
            "10000, 10000, 10000 of 10000 by the new process ❌; the old process exited in 2 of 3 \
             repetitions"
        );
    }

    #[test]
    fn curves_made_before_the_relayed_point_still_load() {
        let old = r#"{"command":"c","loadavg":["a","b"],"rss_per_conn":[],
            "drain_idle":[{"server":"octopus","x":10000,"conns":0,"values":[1237.0],"notes":[]}],
            "drain_inflight":[],"handover_ready":[],"handover_draining":[]}"#;
        let c: CurvesResult = serde_json::from_str(old).unwrap();
        assert_eq!((c.drain_idle.len(), c.drain_idle_relayed.len()), (1, 0));
    }
}

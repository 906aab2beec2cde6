//! The `overhead` scenario: no upgrade, the same keep-alive load against octopus, the plain
//! hyper-util baseline and the ecdysis peer, alternated in rounds (A B C, A B C...) so that
//! machine drift cancels out in the per-round ratios.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::load::{self, Group, LoadSpec, Mode};
use crate::results::{Counts, OverheadResult, OverheadRound, OverheadRun};
use crate::server::{Bins, Kind, Server};

/// Runs `rounds` rounds of `secs` seconds per server.
pub async fn run(
    bins: &Bins,
    rounds: usize,
    secs: u64,
    clients: usize,
    log_dir: &Path,
    command: &str,
) -> Result<OverheadResult, String> {
    let _ = std::fs::create_dir_all(log_dir);
    let mut result = OverheadResult {
        command: command.into(),
        duration_s: secs as f64,
        clients,
        rounds: Vec::new(),
    };
    let groups = vec![Group {
        name: "pid".into(),
        path: "/pid".into(),
        clients,
        mode: Mode::KeepAlive,
        ramp_ms: 0,
    }];
    for round in 0..rounds {
        let mut r = OverheadRound::default();
        // The order rotates from round to round (O B E, B E O, E O B...), so that no server
        // always runs first or last.
        let mut order = [Kind::Octopus, Kind::Baseline, Kind::Ecdysis];
        order.rotate_left(round % 3);
        for kind in order {
            let log = log_dir.join(format!("overhead-{}-{round}.log", kind.name()));
            let loadavg_before = crate::procfs::loadavg();
            let server = Server::start(kind, bins, &[], Some(&log)).await?;
            let run = |d: Duration| {
                let t0 = Instant::now();
                load::run(LoadSpec {
                    addr: server.addr,
                    groups: groups.clone(),
                    t0,
                    stop_at: t0 + d,
                    timeout: Duration::from_secs(5),
                    stop_on_refused: false,
                    stop: None,
                })
            };
            run(Duration::from_secs(1)).await; // warm-up, not counted
            let outcome = run(Duration::from_secs(secs)).await;
            let counts = Counts::from_stats("pid", &outcome.total(), secs as f64);
            eprintln!(
                "overhead round {round} {}: {:.0} req/s p50 {} us p99 {} us failed {}",
                kind.name(),
                counts.rps,
                counts.latency.p50_us,
                counts.latency.p99_us,
                counts.failed
            );
            server.stop_all(Duration::from_secs(10)).await;
            server
                .wait_for(Duration::from_secs(5), |s| {
                    s.alive().is_empty().then_some(())
                })
                .await;
            r.runs.push(OverheadRun {
                server: kind.name().into(),
                loadavg_before,
                counts,
            });
        }
        if let Some(base) = r.runs.iter().find(|x| x.server == "baseline").cloned() {
            for run in r.runs.iter().filter(|x| x.server != "baseline") {
                let b = &base.counts;
                let c = &run.counts;
                r.ratios.insert(
                    run.server.clone(),
                    [
                        c.rps / b.rps.max(1e-9),
                        c.latency.p50_us as f64 / (b.latency.p50_us as f64).max(1.0),
                        c.latency.p99_us as f64 / (b.latency.p99_us as f64).max(1.0),
                    ],
                );
            }
        }
        result.rounds.push(r);
    }
    Ok(result)
}

//! The cross-check: the keep-alive scenario's load made by `wrk` instead of this tool, with the
//! same upgrade driver, so the two counts of errors and throughput can be compared.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::results::WrkResult;
use crate::server::{Bins, Kind, Server};
use crate::upgrades::{self, Plan, Sig};

fn number_before(text: &str, suffix: &str) -> Option<f64> {
    let i = text.find(suffix)?;
    text[..i].split_whitespace().last()?.parse().ok()
}

fn micros(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1000.0,
        "s" => n * 1_000_000.0,
        _ => return None,
    })
}

/// Parses wrk's report.
pub fn parse(output: &str, into: &mut WrkResult) {
    into.requests = number_before(output, " requests in").unwrap_or(0.0) as u64;
    into.rps = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    if let Some(line) = output.lines().find(|l| l.contains("Socket errors:")) {
        for (i, key) in ["connect", "read", "write", "timeout"].iter().enumerate() {
            if let Some(pos) = line.find(key) {
                let rest = &line[pos + key.len()..];
                let n: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                into.socket_errors[i] = n.parse().unwrap_or(0);
            }
        }
    }
    into.non_2xx = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let pct = |p: &str| {
        output.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(p)).then(|| f.next().and_then(micros))?
        })
    };
    into.p50_us = pct("50%");
    into.p99_us = pct("99%");
}

/// Runs wrk for `secs` against octopus while `upgrades` SIGHUPs are sent.
pub async fn run(
    bins: &Bins,
    secs: u64,
    upgrades: usize,
    interval_ms: u64,
    log_dir: &Path,
    command: &str,
) -> Result<WrkResult, String> {
    let _ = std::fs::create_dir_all(log_dir);
    let server = Server::start(
        Kind::Octopus,
        bins,
        &[],
        Some(&log_dir.join("wrk-octopus.log")),
    )
    .await?;
    let url = format!("http://{}/pid", server.addr);
    let args = ["-t2", "-c64", &format!("-d{secs}s"), "--latency", &url];
    let mut wrk = Command::new("wrk")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start wrk (apt-get install -y wrk): {e}"))?;
    let t0 = Instant::now();
    let mut stdout = wrk.stdout.take().ok_or("no wrk stdout")?;
    // wrk is reaped by the tool's reaper like the servers; its report is read to EOF.
    let reader = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let interval = Duration::from_millis(interval_ms);
    let plan = Plan {
        sig: Sig::Sighup,
        count: upgrades,
        interval,
        first_at: Duration::from_secs(1),
        last_before: Duration::from_secs(secs.saturating_sub(1)),
        ready_timeout: Duration::from_secs(10),
    };
    let ups = upgrades::drive(&server, t0, &plan).await;
    let output = tokio::time::timeout(Duration::from_secs(secs + 30), reader)
        .await
        .map_err(|_| "wrk did not finish".to_string())?
        .map_err(|e| e.to_string())?;
    let generations = server.state().order.len();
    server.stop_all(Duration::from_secs(10)).await;
    let mut result = WrkResult {
        command: command.into(),
        wrk_command: format!("wrk {}", args.join(" ")),
        upgrades: ups.iter().filter(|u| u.new_pid.is_some()).count(),
        generations,
        output: output.clone(),
        ..WrkResult::default()
    };
    parse(&output, &mut result);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wrk_report() {
        let out = "Running 20s test @ http://127.0.0.1:1/pid\n  2 threads and 64 connections\n  Latency Distribution\n     50%  806.00us\n     75%    1.02ms\n     99%    2.50ms\n  1480000 requests in 20.00s, 150.00MB read\n  Socket errors: connect 0, read 3, write 0, timeout 1\n  Non-2xx or 3xx responses: 2\nRequests/sec:  74000.12\n";
        let mut r = WrkResult::default();
        parse(out, &mut r);
        assert_eq!(r.requests, 1_480_000);
        assert_eq!(r.socket_errors, [0, 3, 0, 1]);
        assert_eq!(r.non_2xx, 2);
        assert_eq!(r.p50_us, Some(806.0));
        assert_eq!(r.p99_us, Some(2500.0));
        assert!((r.rps - 74000.12).abs() < 1e-6);
    }
}

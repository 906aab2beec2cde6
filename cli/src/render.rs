//! The `status` table for a person: short, aligned, coloured only on a terminal.

use std::fmt::Write;
use std::io::IsTerminal;

use serde_json::Value;

pub fn colours_on_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(text: &str, code: &str, colours: bool) -> String {
    if colours {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

pub fn status(answer: &Value, colours: bool) -> String {
    let mut out = String::new();
    let state = text(&answer["state"]);
    let state_colour = match state.as_str() {
        "serving" => "32",
        "upgrading" | "starting" => "33",
        _ => "31",
    };
    let last_upgrade = match &answer["last_upgrade"] {
        Value::Null => "none".to_string(),
        record if record["ok"] == true => format!(
            "{} (new pid {}, {}, at {})",
            paint("succeeded", "32", colours),
            text(&record["pid"]),
            duration(record["duration_ms"].as_u64().unwrap_or(0)),
            text(&record["at"]),
        ),
        record => format!(
            "{} after {}: {}",
            paint("rolled back", "31", colours),
            duration(record["duration_ms"].as_u64().unwrap_or(0)),
            text(&record["error"]),
        ),
    };
    let rows = [
        ("pid", text(&answer["pid"])),
        ("state", paint(&state, state_colour, colours)),
        ("generation", text(&answer["generation"])),
        (
            "uptime",
            duration(answer["uptime_ms"].as_u64().unwrap_or(0)),
        ),
        ("parent pid", text(&answer["parent_pid"])),
        ("beside pid", text(&answer["beside_pid"])),
        ("last upgrade", last_upgrade),
        ("drain deadline", text(&answer["drain_deadline"])),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "{name:<15} {value}");
    }
    let listeners = answer["listeners"].as_array().cloned().unwrap_or_default();
    let table: Vec<[String; 4]> = listeners
        .iter()
        .map(|l| {
            [
                text(&l["key"]),
                text(&l["address"]),
                text(&l["connections"]),
                text(&l["in_flight"]),
            ]
        })
        .collect();
    let header = ["LISTENER", "ADDRESS", "CONNECTIONS", "IN FLIGHT"];
    let width = |i: usize| {
        table
            .iter()
            .map(|row| row[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let _ = writeln!(out);
    let head = format!(
        "{:<w0$}  {:<w1$}  {:>w2$}  {}",
        header[0], header[1], header[2], header[3]
    );
    let _ = writeln!(out, "{}", paint(&head, "1", colours));
    for row in &table {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>9}",
            row[0], row[1], row[2], row[3]
        );
    }
    out
}

/// The `status` of an `octopus run` supervisor.
pub fn supervisor_status(answer: &Value, colours: bool) -> String {
    let mut out = String::new();
    let state = text(&answer["state"]);
    let state_colour = match state.as_str() {
        "serving" => "32",
        "upgrading" | "starting" => "33",
        _ => "31",
    };
    let program: Vec<String> = answer["program"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let last_exit = match &answer["last_exit"] {
        Value::Null => "none".to_string(),
        exit => match (&exit["exit_code"], &exit["signal"]) {
            (Value::Number(code), _) => format!(
                "pid {} exit code {code} at {}",
                text(&exit["pid"]),
                text(&exit["at"])
            ),
            (_, signal) => format!(
                "pid {} killed by signal {} at {}",
                text(&exit["pid"]),
                text(signal),
                text(&exit["at"])
            ),
        },
    };
    let last_upgrade = match &answer["last_upgrade"] {
        Value::Null => "none".to_string(),
        record if record["ok"] == true => format!(
            "{} (new pid {}, {})",
            paint("succeeded", "32", colours),
            text(&record["pid"]),
            duration(record["duration_ms"].as_u64().unwrap_or(0)),
        ),
        record => format!(
            "{}: {}",
            paint("rolled back", "31", colours),
            text(&record["error"])
        ),
    };
    let restarts = match answer["failures_in_a_row"].as_u64().unwrap_or(0) {
        0 => text(&answer["restarts"]),
        n => format!(
            "{} ({})",
            text(&answer["restarts"]),
            paint(&format!("{n} failures in a row"), "31", colours)
        ),
    };
    let rows = [
        ("supervisor pid", text(&answer["pid"])),
        ("state", paint(&state, state_colour, colours)),
        ("generation", text(&answer["generation"])),
        (
            "uptime",
            duration(answer["uptime_ms"].as_u64().unwrap_or(0)),
        ),
        ("program", program.join(" ")),
        ("restarts", restarts),
        ("last exit", last_exit),
        ("last upgrade", last_upgrade),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "{name:<15} {value}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{}",
        paint(
            &format!(
                "{:<10} {:<8} {:<6} {}",
                "INSTANCE", "ROLE", "READY", "UPTIME"
            ),
            "1",
            colours
        )
    );
    for instance in answer["instances"].as_array().into_iter().flatten() {
        let ready = if instance["ready"] == true {
            "yes"
        } else {
            "no"
        };
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:<6} {}",
            text(&instance["pid"]),
            text(&instance["role"]),
            ready,
            duration(instance["uptime_ms"].as_u64().unwrap_or(0))
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{}",
        paint(
            &format!("{:<4} {:<24} {}", "FD", "LISTENER", "ADDRESS"),
            "1",
            colours
        )
    );
    for listener in answer["listeners"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<4} {:<24} {}",
            text(&listener["fd"]),
            text(&listener["key"]),
            text(&listener["address"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_aligned_and_plain_without_colours() {
        let answer = serde_json::json!({
            "v": 1, "ok": true, "pid": 12, "state": "serving", "generation": 3,
            "uptime_ms": 61_000, "parent_pid": null, "beside_pid": null,
            "last_upgrade": {"ok": true, "pid": 12, "duration_ms": 420, "at": "2025-01-01T00:00:00.000Z"},
            "drain_deadline": null,
            "listeners": [
                {"key": "tcp:127.0.0.1:0", "address": "127.0.0.1:40000", "connections": 20, "in_flight": 1},
                {"key": "unix:/run/a.sock", "address": "/run/a.sock", "connections": 0, "in_flight": 0}
            ]
        });
        let shown = status(&answer, false);
        assert!(!shown.contains('\x1b'), "{shown}");
        assert!(shown.contains("state           serving"), "{shown}");
        assert!(shown.contains("uptime          1m01s"), "{shown}");
        assert!(shown.contains("succeeded (new pid 12, 420 ms"), "{shown}");
        let rows: Vec<&str> = shown
            .lines()
            .skip_while(|l| !l.starts_with("LISTENER"))
            .collect();
        assert_eq!(rows.len(), 3, "{shown}");
        // The address column: the last match, as a Unix key also contains its path.
        let column = |row: &str| {
            ["127.0.0.1:40000", "/run/a.sock", "ADDRESS"]
                .iter()
                .find_map(|needle| row.rfind(needle))
        };
        assert!(
            rows.iter().all(|row| column(row) == column(rows[0])),
            "{shown}"
        );
        assert!(status(&answer, true).contains("\x1b[32mserving"));
    }

    #[test]
    fn the_supervisor_table_shows_instances_restarts_and_listeners() {
        let answer = serde_json::json!({
            "v": 1, "ok": true, "supervisor": true, "pid": 10, "state": "serving", "generation": 1,
            "uptime_ms": 5_000, "program": ["python3", "app.py"], "restarts": 2, "failures_in_a_row": 1,
            "last_exit": {"pid": 11, "exit_code": 3, "signal": null, "at": "2025-01-01T00:00:00.000Z"},
            "last_upgrade": null,
            "instances": [{"pid": 12, "role": "serving", "ready": true, "uptime_ms": 900}],
            "listeners": [{"fd": 3, "key": "web", "address": "127.0.0.1:8080"}]
        });
        let shown = supervisor_status(&answer, false);
        assert!(shown.contains("program         python3 app.py"), "{shown}");
        assert!(
            shown.contains("restarts        2 (1 failures in a row)"),
            "{shown}"
        );
        assert!(shown.contains("pid 11 exit code 3"), "{shown}");
        assert!(
            shown.contains("12         serving  yes    900 ms"),
            "{shown}"
        );
        assert!(
            shown.contains("3    web                      127.0.0.1:8080"),
            "{shown}"
        );
    }
}

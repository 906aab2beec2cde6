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
}

//! The control protocol, version 1: one JSON object per line, each way (see the crate docs).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{UpgradeError, WithCauses};

/// The protocol version this server speaks, sent in every answer as `"v"`.
pub(crate) const VERSION: u64 = 1;
/// The longest command line read; a longer one is answered with an error and the connection
/// closed, since the rest of it cannot be told apart from a next command.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// A command, as parsed from one line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    Status,
    Upgrade {
        keep_old: bool,
        timeout: Option<Duration>,
    },
    Stop {
        wait: bool,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    v: u64,
    cmd: String,
    #[serde(default)]
    keep_old: bool,
    timeout: Option<f64>,
    #[serde(default)]
    wait: bool,
}

/// Parses one line (without its newline). The error is the message sent back.
pub(crate) fn parse(line: &[u8]) -> Result<Command, String> {
    let line: Line = serde_json::from_slice(line).map_err(|e| {
        format!(
            "not a command ({e}); send one JSON object per line, e.g. {{\"v\":1,\"cmd\":\"status\"}}"
        )
    })?;
    if line.v != VERSION {
        return Err(format!(
            "protocol version {} is not spoken here; this server speaks \"v\":{VERSION}",
            line.v
        ));
    }
    let only = |allowed: &str| {
        let extra = ((line.keep_old || line.timeout.is_some()) && allowed != "upgrade")
            || (line.wait && allowed != "stop");
        if extra {
            Err(format!(
                "option not valid for {:?}: keep_old and timeout go with upgrade, wait with stop",
                line.cmd
            ))
        } else {
            Ok(())
        }
    };
    match line.cmd.as_str() {
        "status" => only("status").map(|()| Command::Status),
        "upgrade" => {
            only("upgrade")?;
            let timeout = match line.timeout {
                None => None,
                Some(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
                    Some(Duration::from_secs_f64(secs))
                }
                Some(secs) => {
                    return Err(format!(
                        "timeout {secs} is not a number of seconds between 0 and 86400"
                    ));
                }
            };
            Ok(Command::Upgrade {
                keep_old: line.keep_old,
                timeout,
            })
        }
        "stop" => only("stop").map(|()| Command::Stop { wait: line.wait }),
        other => Err(format!(
            "unknown command {other:?}; the commands are status, upgrade and stop"
        )),
    }
}

/// `{"v":1,"ok":true,...fields}` and a newline.
pub(crate) fn ok(fields: Value) -> Vec<u8> {
    answer(true, fields)
}

/// `{"v":1,"ok":false,...fields}` and a newline; `fields` has at least `error`.
pub(crate) fn failed(fields: Value) -> Vec<u8> {
    answer(false, fields)
}

/// `{"v":1,"ok":false,"error":MESSAGE}` and a newline.
pub(crate) fn error(message: &str) -> Vec<u8> {
    answer(false, json!({ "error": message }))
}

fn answer(ok: bool, fields: Value) -> Vec<u8> {
    let mut object = Map::new();
    object.insert("v".into(), VERSION.into());
    object.insert("ok".into(), ok.into());
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    let mut line = serde_json::to_vec(&Value::Object(object)).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The fields of a failed upgrade's answer: `error` (the message), `reason` (a stable code a
/// script can test) and what else is known (`pid`, `exit_code`, `signal`).
pub(crate) fn upgrade_error(e: &UpgradeError) -> Value {
    use std::os::unix::process::ExitStatusExt;
    let mut fields = json!({ "error": WithCauses(e).to_string(), "reason": e.reason() });
    let extra = match e {
        UpgradeError::Exited { pid, status } => {
            json!({ "pid": pid, "exit_code": status.code(), "signal": status.signal() })
        }
        UpgradeError::Timeout { pid, .. }
        | UpgradeError::ClosedWithoutReady { pid }
        | UpgradeError::Cancelled { pid }
        | UpgradeError::Watch { pid, .. } => json!({ "pid": pid }),
        _ => json!({}),
    };
    if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
        fields.extend(extra);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command_and_option() {
        let cases = [
            (r#"{"v":1,"cmd":"status"}"#, Command::Status),
            (
                r#"{"v":1,"cmd":"upgrade"}"#,
                Command::Upgrade {
                    keep_old: false,
                    timeout: None,
                },
            ),
            (
                r#"{"v":1,"cmd":"upgrade","keep_old":true,"timeout":2.5}"#,
                Command::Upgrade {
                    keep_old: true,
                    timeout: Some(Duration::from_millis(2500)),
                },
            ),
            (
                r#"{"v":1,"cmd":"stop","wait":true}"#,
                Command::Stop { wait: true },
            ),
        ];
        for (line, command) in cases {
            assert_eq!(parse(line.as_bytes()), Ok(command), "{line}");
        }
    }

    #[test]
    fn rejects_bad_lines_saying_why() {
        let cases = [
            ("hello", "not a command"),
            ("", "not a command"),
            (r#"{"cmd":"status"}"#, "missing field `v`"),
            (r#"{"v":2,"cmd":"status"}"#, "version 2"),
            (r#"{"v":1,"cmd":"reboot"}"#, "unknown command \"reboot\""),
            (r#"{"v":1,"cmd":"status","keep-old":true}"#, "unknown field"),
            (
                r#"{"v":1,"cmd":"stop","keep_old":true}"#,
                "not valid for \"stop\"",
            ),
            (r#"{"v":1,"cmd":"upgrade","timeout":-1}"#, "timeout -1"),
            (r#"[1,2]"#, "not a command"),
        ];
        for (line, expected) in cases {
            let err = parse(line.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn answers_are_one_versioned_line() {
        for (line, expected) in [
            (error("no"), json!({"v": 1, "ok": false, "error": "no"})),
            (ok(json!({"pid": 7})), json!({"v": 1, "ok": true, "pid": 7})),
        ] {
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            assert!(line.ends_with(b"\n"));
            assert_eq!(serde_json::from_slice::<Value>(&line).unwrap(), expected);
        }
    }

    #[test]
    fn a_failed_upgrade_names_its_reason_and_status() {
        use std::os::unix::process::ExitStatusExt;
        let e = UpgradeError::Exited {
            pid: 12,
            status: std::process::ExitStatus::from_raw(3 << 8),
        };
        let fields = upgrade_error(&e);
        assert_eq!(fields["reason"], "exited");
        assert_eq!(fields["exit_code"], 3);
        assert_eq!(fields["pid"], 12);
        assert!(fields["error"].as_str().unwrap().contains("exited"));
    }
}

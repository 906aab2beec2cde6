//! The supervisor's control socket: the protocol of the library's control socket (version 1,
//! one JSON object per line each way), answered by the supervisor for its instances, so the
//! `octopus status|upgrade|stop` commands drive both alike. Only the supervisor's user and root
//! are served.

use std::os::unix::net::UnixListener as StdListener;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::log::log;
use super::supervisor::Event;

const MAX_CLIENTS: usize = 64;
const MAX_LINE: u64 = 64 * 1024;
const IDLE_LIMIT: Duration = Duration::from_secs(10);
const WRITE_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq)]
pub enum Request {
    Status,
    Upgrade { timeout: Option<Duration> },
    UpgradeSupervisor,
    Stop { wait: bool },
}

/// An answer line; `written` is told once it has been written to the client.
pub struct Answer {
    pub ok: bool,
    pub fields: Value,
    pub written: Option<oneshot::Sender<()>>,
}

impl Answer {
    pub fn ok(fields: Value) -> Answer {
        Answer {
            ok: true,
            fields,
            written: None,
        }
    }

    pub fn failed(fields: Value) -> Answer {
        Answer {
            ok: false,
            fields,
            written: None,
        }
    }
}

fn answer_line(ok: bool, fields: Value) -> Vec<u8> {
    let mut object = serde_json::Map::new();
    object.insert("v".into(), 1.into());
    object.insert("ok".into(), ok.into());
    if let Value::Object(fields) = fields {
        object.extend(fields.into_iter().filter(|(k, _)| k != "ok"));
    }
    let mut line = serde_json::to_vec(&Value::Object(object)).unwrap_or_default();
    line.push(b'\n');
    line
}

fn error(message: &str) -> Vec<u8> {
    answer_line(false, json!({ "error": message }))
}

pub fn parse(line: &[u8]) -> Result<Request, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("v").and_then(Value::as_u64) != Some(1) {
        return Err("protocol version 1 only: send \"v\":1".into());
    }
    let flag = |name| value.get(name).and_then(Value::as_bool).unwrap_or(false);
    match value.get("cmd").and_then(Value::as_str) {
        Some("status") => Ok(Request::Status),
        Some("upgrade") if flag("keep_old") => Err("keep_old is not supported by octopus run: the old instance is always stopped once the new one is ready".into()),
        Some("upgrade") if flag("supervisor") => Ok(Request::UpgradeSupervisor),
        Some("upgrade") => {
            let timeout = match value.get("timeout") {
                None | Some(Value::Null) => None,
                Some(t) => match t.as_f64() {
                    Some(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => Some(Duration::from_secs_f64(secs)),
                    _ => return Err("timeout must be a number of seconds between 0 and 86400".into()),
                },
            };
            Ok(Request::Upgrade { timeout })
        }
        Some("stop") => Ok(Request::Stop { wait: flag("wait") }),
        Some(other) => Err(format!("unknown command {other:?}: status, upgrade or stop")),
        None => Err("no \"cmd\": status, upgrade or stop".into()),
    }
}

/// Serves `listener` from a task, passing commands to the event loop.
pub fn serve(listener: StdListener, events: mpsc::UnboundedSender<Event>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    tokio::spawn(async move {
        let limit = Arc::new(Semaphore::new(MAX_CLIENTS));
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == me || peer.uid() == 0 => {}
                Ok(peer) => {
                    log!(
                        "control connection refused: user {} is neither the supervisor's user ({me}) nor root",
                        peer.uid()
                    );
                    let _ = stream.try_write(&error(&format!(
                        "permission denied: run as user {me} or root"
                    )));
                    continue;
                }
                Err(_) => continue,
            }
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                let _ =
                    stream.try_write(&error("busy: too many control clients; try again shortly"));
                continue;
            };
            let events = events.clone();
            tokio::spawn(async move {
                client(stream, events).await;
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn client(stream: UnixStream, events: mpsc::UnboundedSender<Event>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            IDLE_LIMIT,
            (&mut reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        match read {
            Err(_) => {
                send(&mut write, &error("no command within 10s; closing")).await;
                return;
            }
            Ok(Err(_) | Ok(0)) => return,
            Ok(Ok(_)) => {}
        }
        if line.last() != Some(&b'\n') && line.len() as u64 > MAX_LINE {
            send(
                &mut write,
                &error("command line longer than 64 KiB; closing"),
            )
            .await;
            return;
        }
        let request = match parse(line.trim_ascii_end()) {
            Ok(request) => request,
            Err(message) => {
                if !send(&mut write, &error(&message)).await {
                    return;
                }
                continue;
            }
        };
        let (reply, answer) = oneshot::channel();
        if events.send(Event::Control(request, reply)).is_err() {
            return;
        }
        let Ok(answer) = answer.await else {
            send(&mut write, &error("the supervisor is exiting")).await;
            return;
        };
        let sent = send(&mut write, &answer_line(answer.ok, answer.fields)).await;
        if let Some(written) = answer.written {
            let _ = written.send(());
        }
        if !sent {
            return;
        }
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, line: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_LIMIT, write.write_all(line)).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse(br#"{"v":1,"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse(br#"{"v":1,"cmd":"upgrade","timeout":2}"#),
            Ok(Request::Upgrade {
                timeout: Some(Duration::from_secs(2))
            })
        );
        assert_eq!(
            parse(br#"{"v":1,"cmd":"upgrade","supervisor":true}"#),
            Ok(Request::UpgradeSupervisor)
        );
        assert_eq!(
            parse(br#"{"v":1,"cmd":"stop","wait":true}"#),
            Ok(Request::Stop { wait: true })
        );
        assert!(parse(br#"{"v":1,"cmd":"upgrade","keep_old":true}"#).is_err());
        assert!(parse(br#"{"v":2,"cmd":"status"}"#).is_err());
        assert!(parse(b"status").is_err());
    }
}

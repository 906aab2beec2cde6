//! The command line of `octopus run`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// `octopus run`: bind the sockets once, run PROGRAM on them, upgrade it without a refused
/// connection and restart it when it crashes.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A socket to listen on: `HOST:PORT`, `[V6]:PORT` or `unix:PATH`, optionally `NAME=ADDR`;
    /// given to PROGRAM as fds 3.. in this order (port 0 picks a free port, kept for good)
    #[arg(long = "listen", value_name = "[NAME=]ADDR", value_parser = listen, required = true)]
    pub listen: Vec<Listen>,

    /// A control socket for `octopus status|upgrade|stop --control PATH`
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// When a new instance is ready: `notify` (READY=1 on NOTIFY_SOCKET), `http:PATH` (a 2xx),
    /// `tcp` (it polls or accepts on a listener), `delay:SECS`
    #[arg(long, value_name = "MODE", default_value = "notify", value_parser = ready)]
    pub ready: Ready,

    /// Seconds a new instance gets to become ready before it is killed and the upgrade rolled back
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    pub upgrade_timeout: Duration,

    /// The signal that asks an instance to stop gracefully
    #[arg(long, value_name = "SIG", default_value = "SIGTERM", value_parser = signal)]
    pub stop_signal: i32,

    /// Seconds an instance gets to exit after the stop signal before SIGKILL
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    pub stop_timeout: Duration,

    /// When an instance that exits on its own is started again
    #[arg(long, value_name = "POLICY", default_value = "on-failure", value_enum)]
    pub restart: Restart,

    /// A file to write the supervisor's pid to (removed at exit)
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// The program to run, looked up on PATH at each start, and its arguments
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The name in `LISTEN_FDNAMES`.
    pub name: String,
    pub address: Address,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(String),
    Unix(PathBuf),
}

impl Address {
    /// The address as asked for: what the socket is matched by when it is adopted.
    pub fn asked(&self) -> String {
        match self {
            Address::Tcp(address) => address.clone(),
            Address::Unix(path) => path.display().to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    /// Restart after a non-zero exit or a signal; a clean exit ends the supervisor
    OnFailure,
    /// Restart after any exit
    Always,
    /// Never restart; the supervisor exits with the instance's status
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ready {
    Notify,
    Http(String),
    Tcp,
    Delay(Duration),
}

fn listen(text: &str) -> Result<Listen, String> {
    let (name, address) = match text.split_once('=') {
        Some((name, address)) if !name.is_empty() && !name.contains(':') => {
            (Some(name.to_string()), address)
        }
        _ => (None, text),
    };
    let address = if let Some(path) = address.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a path, e.g. unix:/run/app.sock".into());
        }
        Address::Unix(PathBuf::from(path))
    } else {
        address.parse::<std::net::SocketAddr>().map_err(|_| {
            format!("{address:?} is not HOST:PORT, [V6]:PORT or unix:PATH (a host must be an IP address)")
        })?;
        Address::Tcp(address.to_string())
    };
    if name.as_deref().is_some_and(|n| n.len() > 255) {
        return Err("a listener name is at most 255 characters".into());
    }
    let name = name.unwrap_or_else(|| address.asked());
    Ok(Listen { name, address })
}

fn ready(text: &str) -> Result<Ready, String> {
    match text {
        "notify" => Ok(Ready::Notify),
        "tcp" => Ok(Ready::Tcp),
        _ => {
            if let Some(path) = text.strip_prefix("http:") {
                if path.starts_with('/') {
                    return Ok(Ready::Http(path.to_string()));
                }
                Err(format!(
                    "http:PATH needs an absolute path, e.g. http:/healthz, not {text:?}"
                ))
            } else if let Some(secs) = text.strip_prefix("delay:") {
                seconds(secs).map(Ready::Delay)
            } else {
                Err(format!(
                    "{text:?} is not notify, http:PATH, tcp or delay:SECS"
                ))
            }
        }
    }
}

pub fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

fn signal(text: &str) -> Result<i32, String> {
    let name = text.trim_start_matches("SIG");
    let number = match name {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        "KILL" => libc::SIGKILL,
        _ => match name.parse::<i32>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                return Err(format!(
                    "{text:?} is not a signal name (SIGTERM, SIGQUIT, ...) or number"
                ));
            }
        },
    };
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_and_names() {
        assert_eq!(
            listen("127.0.0.1:0").unwrap(),
            Listen {
                name: "127.0.0.1:0".into(),
                address: Address::Tcp("127.0.0.1:0".into())
            }
        );
        assert_eq!(listen("web=[::1]:80").unwrap().name, "web");
        assert_eq!(
            listen("admin=unix:/run/a.sock").unwrap().address,
            Address::Unix("/run/a.sock".into())
        );
        assert!(listen("localhost:80").is_err());
        assert!(listen("unix:").is_err());
    }

    #[test]
    fn ready_modes_and_signals() {
        assert_eq!(
            ready("http:/healthz").unwrap(),
            Ready::Http("/healthz".into())
        );
        assert_eq!(
            ready("delay:1.5").unwrap(),
            Ready::Delay(Duration::from_millis(1500))
        );
        assert!(ready("http:healthz").is_err());
        assert!(ready("soon").is_err());
        assert_eq!(signal("SIGQUIT").unwrap(), libc::SIGQUIT);
        assert_eq!(signal("TERM").unwrap(), libc::SIGTERM);
        assert!(signal("SIGNOPE").is_err());
    }
}

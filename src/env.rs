//! The hand-over protocol: what an old process tells its successor through the environment.
//! `docs/handover.md` (part of the crate docs) describes the variables and their values.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use crate::error::InheritError;
use crate::key::ListenerKey;

/// Names the inherited listening sockets and the keys they were asked for with.
pub const LISTENERS_VAR: &str = "OCTOPUS_LISTENERS";
/// Names the pipe on which the new process reports ready.
pub const READY_FD_VAR: &str = "OCTOPUS_READY_FD";
/// The pid of the process that started this one.
pub const PARENT_PID_VAR: &str = "OCTOPUS_PARENT_PID";

/// Names the new process's end of the channel on which the old process relays its idle
/// keep-alive connections (see `relay`); optional.
pub const RELAY_FD_VAR: &str = "OCTOPUS_RELAY_FD";

/// The pid of the process the hand-over is for: the new process itself.
pub const PID_VAR: &str = "OCTOPUS_PID";

/// The variables of the protocol that are always set together.
pub const VARS: [&str; 3] = [LISTENERS_VAR, READY_FD_VAR, PARENT_PID_VAR];
/// The generation number of the new process; informative only.
pub const GENERATION_VAR: &str = "OCTOPUS_GENERATION";

/// Every variable an old process sets for its successor: stripped from the environment a
/// successor inherits, before the fresh ones are set.
pub const ALL_VARS: [&str; 7] = [
    LISTENERS_VAR,
    READY_FD_VAR,
    RELAY_FD_VAR,
    PARENT_PID_VAR,
    PID_VAR,
    GENERATION_VAR,
    UPGRADE_STARTED_VAR,
];

/// This process's generation number: 1 for a first start, its parent's plus one after an upgrade.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Sets this process's generation from [`GENERATION_VAR`], read only by a process started by an
/// upgrade; one whose parent did not set it counts as the second generation.
pub(crate) fn inherit_generation(upgraded: bool) -> u64 {
    let inherited = upgraded
        .then(|| std::env::var(GENERATION_VAR).ok())
        .flatten()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 1);
    let generation = match (upgraded, inherited) {
        (false, _) => 1,
        (true, Some(n)) => n,
        (true, None) => 2,
    };
    GENERATION.store(generation, std::sync::atomic::Ordering::Relaxed);
    generation
}

/// When the parent started the upgrade that started this process (milliseconds since the Unix
/// epoch, wall clock); informative only.
pub const UPGRADE_STARTED_VAR: &str = "OCTOPUS_UPGRADE_STARTED";

/// Reads [`UPGRADE_STARTED_VAR`], in a process started by an upgrade only.
pub(crate) fn inherited_upgrade_started(upgraded: bool) -> Option<std::time::SystemTime> {
    let millis = upgraded
        .then(|| std::env::var(UPGRADE_STARTED_VAR).ok())
        .flatten()
        .and_then(|n| n.parse::<u64>().ok());
    millis.map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// The value of [`UPGRADE_STARTED_VAR`] for a process started now.
pub(crate) fn upgrade_started_now() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string()
}

/// This process's generation number.
pub(crate) fn generation() -> u64 {
    GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

/// What one process hands to its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handover {
    pub listeners: Vec<(RawFd, ListenerKey)>,
    pub ready_fd: RawFd,
    /// The successor's end of the relay channel, if the old process made one.
    pub relay_fd: Option<RawFd>,
    pub parent_pid: u32,
}

impl Handover {
    /// The hand-over of this process's `listeners`, the readiness pipe's write end and the relay
    /// channel's end, to a successor that finds them at the same fd numbers.
    pub fn from_this_process(
        listeners: &[(ListenerKey, BorrowedFd<'_>)],
        ready: BorrowedFd<'_>,
        relay: Option<BorrowedFd<'_>>,
    ) -> Handover {
        Handover {
            listeners: listeners
                .iter()
                .map(|(key, fd)| (fd.as_raw_fd(), key.clone()))
                .collect(),
            ready_fd: ready.as_raw_fd(),
            relay_fd: relay.map(|fd| fd.as_raw_fd()),
            parent_pid: std::process::id(),
        }
    }

    /// The variables to set in the successor's environment.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let listeners = self
            .listeners
            .iter()
            .map(|(fd, key)| format!("{fd}={}", escape(&key.to_string())))
            .collect::<Vec<_>>()
            .join(";");
        let mut vars = vec![
            (LISTENERS_VAR, listeners),
            (READY_FD_VAR, self.ready_fd.to_string()),
            (PARENT_PID_VAR, self.parent_pid.to_string()),
        ];
        if let Some(fd) = self.relay_fd {
            vars.push((RELAY_FD_VAR, fd.to_string()));
        }
        vars
    }

    /// Reads the protocol through `lookup` (the process environment in production), as the
    /// process `me`.
    ///
    /// `Ok(None)` means this is a first start: none of the variables is set, or they are meant
    /// for another process (see [`Identity::is_meant_for`]), which is logged at debug level.
    /// Malformed variables are an error either way.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<OsString>,
        me: Identity,
    ) -> Result<Option<Handover>, InheritError> {
        let values = VARS.map(&lookup);
        let Some(present) = VARS
            .iter()
            .zip(&values)
            .find(|(_, v)| v.is_some())
            .map(|(var, _)| *var)
        else {
            return Ok(None);
        };
        let mut text = Vec::with_capacity(VARS.len());
        for (var, value) in VARS.into_iter().zip(&values) {
            let value = value.as_ref().ok_or(InheritError::Missing {
                present,
                missing: var,
            })?;
            let value = value.to_str().ok_or_else(|| InheritError::Malformed {
                var,
                value: value.to_string_lossy().into_owned(),
                reason: "not valid UTF-8".into(),
            })?;
            text.push(value);
        }
        let ready_fd = parse_fd(READY_FD_VAR, text[1], text[1])?;
        let parent_pid = text[2]
            .parse::<u32>()
            .ok()
            .filter(|pid| *pid > 0)
            .ok_or_else(|| malformed(PARENT_PID_VAR, text[2], "not a process id"))?;
        let listeners = parse_listeners(text[0], ready_fd)?;
        let relay_fd = match lookup(RELAY_FD_VAR) {
            None => None,
            Some(value) => {
                let text = value.to_string_lossy();
                let fd = parse_fd(RELAY_FD_VAR, &text, &text)?;
                if fd == ready_fd || listeners.iter().any(|(l, _)| *l == fd) {
                    return Err(malformed(
                        RELAY_FD_VAR,
                        &text,
                        &format!("fd {fd} is also {READY_FD_VAR} or a listener's"),
                    ));
                }
                Some(fd)
            }
        };
        let meant_for = match lookup(PID_VAR) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .filter(|pid| *pid > 0)
                    .ok_or_else(|| {
                        malformed(PID_VAR, &value.to_string_lossy(), "not a process id")
                    })?,
            ),
        };
        if let Err(why) = me.is_meant_for(meant_for, parent_pid) {
            tracing::debug!("ignoring the hand-over variables in the environment: {why}");
            return Ok(None);
        }
        Ok(Some(Handover {
            listeners,
            ready_fd,
            relay_fd,
            parent_pid,
        }))
    }
}

/// Whether [`Handover::inherited`] ran in this process: the variables stay set, and the fds they
/// name must be taken once, by one owner.
static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Handover {
    /// The hand-over in this process's environment, if it is meant for this process; the first
    /// call only (a later one, by an `Octopus` made after the first was dropped, is a first start).
    pub fn inherited() -> Result<Option<Handover>, InheritError> {
        if TAKEN.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(None);
        }
        Handover::from_env(|var| std::env::var_os(var), Identity::current())
    }
}

/// Who this process is, for telling whether a hand-over is meant for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub pid: u32,
    /// `None` when the parent is outside this pid namespace.
    pub parent: Option<u32>,
}

impl Identity {
    pub fn current() -> Identity {
        Identity {
            pid: std::process::id(),
            parent: rustix::process::getppid().map(|p| p.as_raw_nonzero().get().unsigned_abs()),
        }
    }

    /// Whether a hand-over for `meant_for` ([`PID_VAR`]) from `parent_pid` is this process's:
    /// the one the old process started, which keeps its pid even if the old process dies and it
    /// is re-parented. Without [`PID_VAR`], it is the child of `parent_pid`. Otherwise the
    /// reason it is not, for the log.
    pub fn is_meant_for(self, meant_for: Option<u32>, parent_pid: u32) -> Result<(), String> {
        match meant_for {
            Some(pid) if pid == self.pid => Ok(()),
            Some(pid) => Err(format!(
                "{PID_VAR}={pid} names another process than this one ({}), so they were \
                 inherited from an ancestor (an application that runs other programs passes them on)",
                self.pid
            )),
            None if self.parent == Some(parent_pid) => Ok(()),
            None => Err(format!(
                "{PARENT_PID_VAR}={parent_pid} is not this process's parent ({}), so they were \
                 inherited from an ancestor (an application that runs other programs passes them on)",
                self.parent
                    .map_or("outside this pid namespace".into(), |p| p.to_string())
            )),
        }
    }
}

fn parse_listeners(
    value: &str,
    ready_fd: RawFd,
) -> Result<Vec<(RawFd, ListenerKey)>, InheritError> {
    let mut fds = HashSet::from([ready_fd]);
    let mut keys = HashSet::new();
    let mut listeners = Vec::new();
    for entry in value.split(';').filter(|entry| !entry.is_empty()) {
        let (fd, key) = entry.split_once('=').ok_or_else(|| {
            malformed(
                LISTENERS_VAR,
                value,
                &format!("entry {entry:?} is not FD=KEY"),
            )
        })?;
        let fd = parse_fd(LISTENERS_VAR, value, fd)?;
        let key = unescape(key)
            .and_then(|key| key.parse::<ListenerKey>().ok())
            .ok_or_else(|| {
                malformed(
                    LISTENERS_VAR,
                    value,
                    &format!("entry {entry:?} has no valid NETWORK:ADDRESS key"),
                )
            })?;
        if !fds.insert(fd) {
            return Err(malformed(
                LISTENERS_VAR,
                value,
                &format!("fd {fd} is named twice (or is also {READY_FD_VAR})"),
            ));
        }
        if !keys.insert(key.clone()) {
            return Err(malformed(
                LISTENERS_VAR,
                value,
                &format!("listener {key} is named twice"),
            ));
        }
        listeners.push((fd, key));
    }
    Ok(listeners)
}

fn parse_fd(var: &'static str, value: &str, fd: &str) -> Result<RawFd, InheritError> {
    match fd.parse::<RawFd>() {
        Ok(fd) if fd > 2 => Ok(fd),
        Ok(fd) if fd >= 0 => Err(malformed(
            var,
            value,
            &format!("fd {fd} is standard input, output or error"),
        )),
        _ => Err(malformed(
            var,
            value,
            &format!("{fd:?} is not a file descriptor number"),
        )),
    }
}

fn malformed(var: &'static str, value: &str, reason: &str) -> InheritError {
    InheritError::Malformed {
        var,
        value: value.into(),
        reason: reason.into(),
    }
}

pub(crate) fn escape(key: &str) -> String {
    key.replace('%', "%25").replace(';', "%3B")
}

pub(crate) fn unescape(key: &str) -> Option<String> {
    let mut out = String::with_capacity(key.len());
    let mut rest = key;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("%25") => out.push('%'),
            Some("%3B") => out.push(';'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// A process started by the process that `vars` names as the parent.
    fn child_of_named_parent(vars: &[(&str, &str)]) -> Identity {
        let parent = vars
            .iter()
            .find(|(k, _)| *k == PARENT_PID_VAR)
            .and_then(|(_, v)| v.parse().ok());
        Identity {
            pid: 1_000_001,
            parent,
        }
    }

    fn parse(vars: &[(&str, &str)]) -> Result<Option<Handover>, InheritError> {
        Handover::from_env(lookup(vars), child_of_named_parent(vars))
    }

    fn sample() -> Handover {
        Handover {
            listeners: vec![
                (3, ListenerKey::tcp("127.0.0.1:0")),
                (4, ListenerKey::unix("/tmp/a;b%c.sock")),
                (7, ListenerKey::tcp("[::1]:8080")),
            ],
            ready_fd: 5,
            relay_fd: Some(6),
            parent_pid: 4242,
        }
    }

    #[test]
    fn first_start_has_no_variables() {
        assert_eq!(parse(&[]), Ok(None));
    }

    #[test]
    fn round_trips_through_the_environment() {
        let handover = sample();
        let env = handover.to_env();
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(parse(&vars), Ok(Some(handover)));
    }

    #[test]
    fn a_relay_fd_that_is_also_another_fd_is_malformed() {
        let err = parse(&[
            (LISTENERS_VAR, "3=tcp:127.0.0.1:0"),
            (READY_FD_VAR, "5"),
            (PARENT_PID_VAR, "4242"),
            (RELAY_FD_VAR, "3"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains(RELAY_FD_VAR), "{err}");
        let without = parse(&[
            (LISTENERS_VAR, "3=tcp:127.0.0.1:0"),
            (READY_FD_VAR, "5"),
            (PARENT_PID_VAR, "4242"),
        ]);
        assert_eq!(without.unwrap().unwrap().relay_fd, None);
    }

    #[test]
    fn encodes_reserved_characters_in_keys() {
        let env = sample().to_env();
        assert_eq!(
            env[0].1,
            "3=tcp:127.0.0.1:0;4=unix:/tmp/a%3Bb%25c.sock;7=tcp:[::1]:8080"
        );
    }

    /// The variables as an application's own child process inherits them from a generation,
    /// in a full hand-over written by [`Handover::to_env`] and stamped with the successor's pid.
    fn inherited(successor: u32) -> Vec<(&'static str, String)> {
        let mut vars = sample().to_env().to_vec();
        vars.push((PID_VAR, successor.to_string()));
        vars
    }

    fn parse_as(vars: &[(&'static str, String)], me: Identity) -> Option<Handover> {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Handover::from_env(lookup(&vars), me).expect("well-formed")
    }

    #[test]
    fn only_the_process_the_old_one_started_honours_the_variables() {
        let vars = inherited(5000);
        let successor = Identity {
            pid: 5000,
            parent: Some(4242),
        };
        assert_eq!(parse_as(&vars, successor), Some(sample()));
        let reparented = Identity {
            pid: 5000,
            parent: Some(1),
        };
        assert_eq!(
            parse_as(&vars, reparented),
            Some(sample()),
            "the successor of an old process that died keeps its hand-over"
        );
        let applications_child = Identity {
            pid: 5001,
            parent: Some(5000),
        };
        assert_eq!(parse_as(&vars, applications_child), None);
    }

    #[test]
    fn without_a_pid_only_a_child_of_the_named_parent_honours_the_variables() {
        let vars = sample().to_env().to_vec();
        let child = Identity {
            pid: 5000,
            parent: Some(4242),
        };
        assert_eq!(parse_as(&vars, child), Some(sample()));
        for parent in [Some(5000), Some(1), None] {
            let other = Identity { pid: 5001, parent };
            assert_eq!(parse_as(&vars, other), None, "{parent:?}");
        }
    }

    #[test]
    fn a_malformed_pid_is_refused() {
        let mut vars = inherited(5000);
        vars.last_mut().unwrap().1 = "me".into();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let err = parse(&vars).unwrap_err();
        assert!(err.to_string().starts_with(PID_VAR), "{err}");
    }

    #[test]
    fn zero_listeners_is_valid() {
        let parsed = parse(&[
            (LISTENERS_VAR, ""),
            (READY_FD_VAR, "3"),
            (PARENT_PID_VAR, "9"),
        ]);
        assert_eq!(parsed.unwrap().unwrap().listeners, vec![]);
    }

    #[test]
    fn a_lone_variable_names_the_missing_one() {
        let err = parse(&[(LISTENERS_VAR, "3=tcp:127.0.0.1:1")]).unwrap_err();
        assert_eq!(
            err,
            InheritError::Missing {
                present: LISTENERS_VAR,
                missing: READY_FD_VAR
            }
        );
        assert!(err.to_string().contains("OCTOPUS_READY_FD"));
    }

    #[test]
    fn rejects_bad_values_naming_the_variable() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("3=tcp:a:1", "", "1", READY_FD_VAR),
            ("3=tcp:a:1", "x", "1", READY_FD_VAR),
            ("3=tcp:a:1", "-4", "1", READY_FD_VAR),
            ("3=tcp:a:1", "99999999999", "1", READY_FD_VAR),
            ("3=tcp:a:1", "1", "1", READY_FD_VAR),
            ("3=tcp:a:1", "5", "0", PARENT_PID_VAR),
            ("3=tcp:a:1", "5", "me", PARENT_PID_VAR),
            ("x=tcp:a:1", "5", "1", LISTENERS_VAR),
            ("3", "5", "1", LISTENERS_VAR),
            ("3=nocolon", "5", "1", LISTENERS_VAR),
            ("3=tcp:a:1;3=tcp:b:1", "5", "1", LISTENERS_VAR),
            ("3=tcp:a:1;4=tcp:a:1", "5", "1", LISTENERS_VAR),
            ("5=tcp:a:1", "5", "1", LISTENERS_VAR),
            ("3=tcp:a%zz", "5", "1", LISTENERS_VAR),
            ("-3=tcp:a:1", "5", "1", LISTENERS_VAR),
        ];
        for (listeners, ready, parent, bad) in cases {
            let err = parse(&[
                (LISTENERS_VAR, listeners),
                (READY_FD_VAR, ready),
                (PARENT_PID_VAR, parent),
            ])
            .expect_err(&format!(
                "{listeners:?} {ready:?} {parent:?} must be rejected"
            ));
            match &err {
                InheritError::Malformed { var, .. } => assert_eq!(var, bad, "{err}"),
                other => panic!("unexpected {other:?}"),
            }
            assert!(err.to_string().starts_with(bad), "{err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn rejects_non_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let err = Handover::from_env(
            |name| match name {
                LISTENERS_VAR => Some(OsString::from_vec(vec![0xff, b'='])),
                READY_FD_VAR => Some("5".into()),
                PARENT_PID_VAR => Some("1".into()),
                _ => None,
            },
            Identity {
                pid: 2,
                parent: Some(1),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = ListenerKey> {
        prop_oneof![
            "[a-z0-9.:\\[\\]]{1,20}".prop_map(ListenerKey::tcp),
            "/[ -~]{1,30}".prop_map(ListenerKey::unix),
            "[ -~]{1,20}".prop_map(ListenerKey::named),
        ]
    }

    fn handover() -> impl Strategy<Value = Handover> {
        (
            proptest::collection::btree_map(3..1_000_000i32, key(), 0..6),
            1..u32::MAX,
        )
            .prop_filter_map(
                "ready fd distinct and keys unique",
                |(listeners, parent_pid)| {
                    let ready_fd = 2_000_000;
                    let mut keys = HashSet::new();
                    listeners
                        .values()
                        .all(|k| keys.insert(k.clone()))
                        .then(|| Handover {
                            listeners: listeners.into_iter().collect(),
                            ready_fd,
                            relay_fd: (parent_pid % 2 == 0).then_some(2_000_001),
                            parent_pid,
                        })
                },
            )
    }

    proptest! {
        #[test]
        fn every_handover_round_trips(handover in handover()) {
            let env = handover.to_env();
            let me = Identity { pid: 1_000_001, parent: Some(handover.parent_pid) };
            let parsed = Handover::from_env(
                |var| env.iter().find(|(k, _)| *k == var).map(|(_, v)| v.into()),
                me,
            );
            prop_assert_eq!(parsed, Ok(Some(handover)));
        }

        #[test]
        fn arbitrary_values_never_panic_and_accepted_ones_are_sound(
            listeners in "[ -~]{0,60}",
            ready in "[ -~]{0,12}",
            parent in "[ -~]{0,12}",
        ) {
            let values = [listeners, ready, parent];
            let me = Identity { pid: 1_000_001, parent: values[2].parse().ok() };
            let parsed = Handover::from_env(
                |var| VARS.iter().position(|v| *v == var).map(|i| values[i].clone().into()),
                me,
            );
            if let Ok(Some(handover)) = parsed {
                let mut fds = HashSet::from([handover.ready_fd]);
                prop_assert!(handover.ready_fd > 2);
                prop_assert!(handover.parent_pid > 0);
                for (fd, _) in &handover.listeners {
                    prop_assert!(*fd > 2);
                    prop_assert!(fds.insert(*fd), "fd {} accepted twice", fd);
                }
            }
        }

        #[test]
        fn well_formed_entries_with_random_keys_parse(fd in 3..100_000i32, key in key()) {
            let listeners = format!("{fd}={}", escape(&key.to_string()));
            let parsed = Handover::from_env(
                |var| match var {
                    LISTENERS_VAR => Some(listeners.clone().into()),
                    READY_FD_VAR => Some("200000".into()),
                    PARENT_PID_VAR => Some("7".into()),
                    _ => None,
                },
                Identity { pid: 8, parent: Some(7) },
            );
            prop_assert_eq!(parsed.unwrap().unwrap().listeners, vec![(fd, key)]);
        }
    }
}

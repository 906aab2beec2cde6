//! Starting the new process, behind a small interface so the upgrade logic is tested without
//! spawning anything.

use std::ffi::{CString, OsString};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;

#[cfg(not(target_os = "linux"))]
use rustix::io::FdFlags;

use crate::env::{ALL_VARS, GENERATION_VAR, Handover, PID_VAR, UPGRADE_STARTED_VAR};
use crate::error::Error;
use crate::key::ListenerKey;
use crate::readiness;

#[cfg(target_os = "linux")]
mod low_slot;
#[cfg(target_os = "linux")]
mod vfork;

/// How this process was started, captured once at start-up so that a successor is started the
/// same way even if the application later changes its working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StartInfo {
    /// The file to execute: the path the program was started from, made absolute.
    pub program: PathBuf,
    pub argv0: OsString,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
}

impl StartInfo {
    pub fn capture() -> Result<Self, Error> {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().ok_or_else(|| Error::StartInfo {
            what: "argv[0] is empty",
            source: io::ErrorKind::NotFound.into(),
        })?;
        let cwd = std::env::current_dir().map_err(|source| Error::StartInfo {
            what: "working directory",
            source,
        })?;
        let program = match resolve_program(&argv0, &cwd, std::env::var_os("PATH")) {
            Some(program) => program,
            None => std::env::current_exe().map_err(|source| Error::StartInfo {
                what: "path of the executable",
                source,
            })?,
        };
        Ok(StartInfo {
            program,
            argv0,
            args: argv.collect(),
            cwd,
        })
    }
}

/// The path a program named `argv0` was started from, the way a shell found it.
///
/// Deliberately not `/proc/self/exe`: that names the running inode, which after a deploy is the
/// old, deleted binary, while the path names the new one.
pub(crate) fn resolve_program(
    argv0: &OsString,
    cwd: &Path,
    path: Option<OsString>,
) -> Option<PathBuf> {
    let as_path = Path::new(argv0);
    if as_path.as_os_str().is_empty() {
        return None;
    }
    if as_path.components().count() > 1 || as_path.is_absolute() {
        return Some(cwd.join(as_path));
    }
    std::env::split_paths(&path?)
        .map(|dir| cwd.join(dir).join(as_path))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves `true` once the new process reported ready, `false` if it closed the pipe first.
pub(crate) type ReadyFuture = Pin<Box<dyn Future<Output = io::Result<bool>> + Send>>;

/// A started successor and its readiness report.
pub(crate) struct Spawned<C> {
    pub child: C,
    pub ready: ReadyFuture,
    /// This process's end of the relay channel, if one was made.
    pub relay: Option<OwnedFd>,
}

/// A running successor process.
pub(crate) trait ChildProcess: Send + 'static {
    fn pid(&self) -> u32;
    /// Waits for the process to exit and reaps it.
    fn wait(&mut self) -> impl Future<Output = io::Result<ExitStatus>> + Send;
    /// Sends SIGKILL; the caller still waits to reap.
    fn start_kill(&mut self) -> io::Result<()>;
    /// Sends SIGTERM, asking the process to shut down gracefully; the caller still waits to reap.
    fn terminate(&mut self) -> io::Result<()>;
}

/// Starts successors.
pub(crate) trait Spawner: Send + Sync + 'static {
    type Child: ChildProcess;
    fn spawn(
        &self,
        start: &StartInfo,
        listeners: &[(ListenerKey, BorrowedFd<'_>)],
    ) -> io::Result<Spawned<Self::Child>>;
}

/// Starts real processes: `clone(CLONE_VM | CLONE_VFORK)` + `execve` on Linux (see
/// [`vfork`]), `fork` + `execve` elsewhere.
#[derive(Debug, Default)]
pub(crate) struct OsSpawner {
    /// Where the readiness pipe and the relay channel go, below the connections' fds
    /// ([`low_slot`]).
    #[cfg(target_os = "linux")]
    low_slots: Option<[low_slot::LowSlot; 2]>,
}

impl OsSpawner {
    /// A spawner with the low fds of the readiness pipe and the relay channel reserved now:
    /// called when the process has opened few fds yet. Without them (no fd to spare) upgrades
    /// work the same, only slower from a process with many open connections.
    pub(crate) fn reserving() -> OsSpawner {
        OsSpawner {
            #[cfg(target_os = "linux")]
            low_slots: low_slot::LowSlot::reserve()
                .inspect_err(|e| tracing::debug!("no low fds kept for the upgrade's fds: {e}"))
                .ok(),
        }
    }
}

/// A real child process.
///
/// Waited for through a pidfd on Linux rather than Tokio's process driver: that driver checks for
/// orphans every time a runtime thread parks, a cost every server would pay on every request for
/// the sake of a process started once per deploy.
pub(crate) struct OsChild {
    pid: u32,
    /// Set once reaped: from then on the pid may name another process, never to be signalled.
    status: Option<ExitStatus>,
    exit: ExitWatch,
}

impl OsChild {
    /// The exit status if the process has exited, reaping it.
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        if self.status.is_some() {
            return Ok(self.status);
        }
        let pid = rustix::process::Pid::from_raw(self.pid as i32)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let options = rustix::process::WaitOptions::NOHANG;
        let waited = rustix::io::retry_on_intr(|| rustix::process::waitpid(Some(pid), options))?;
        self.status = waited.map(|(_, status)| ExitStatus::from_raw(status.as_raw()));
        Ok(self.status)
    }

    /// Sends `signal` unless the process was reaped (an exited, unreaped one ignores it).
    fn signal(&mut self, signal: rustix::process::Signal) -> io::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = rustix::process::Pid::from_raw(self.pid as i32)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }
}

/// Tells when a child may have exited.
enum ExitWatch {
    /// Readable once the process has exited.
    #[cfg(target_os = "linux")]
    Pidfd(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>),
    /// No pidfd (not Linux, or a kernel before 5.3): look again after a pause.
    Poll,
}

/// How often a child without a pidfd is checked.
const EXIT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

impl ExitWatch {
    fn new(pid: u32) -> ExitWatch {
        #[cfg(target_os = "linux")]
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let flags = rustix::process::PidfdFlags::NONBLOCK;
            if let Ok(pidfd) = rustix::process::pidfd_open(pid, flags) {
                // SAFETY: the AsyncFd owns the pidfd, which stays open, with the same number,
                // until the AsyncFd is dropped.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        pidfd,
                        tokio::io::Interest::READABLE,
                    )
                };
                if let Ok(watch) = registered {
                    return ExitWatch::Pidfd(watch);
                }
            }
        }
        let _ = pid;
        ExitWatch::Poll
    }

    async fn changed(&self) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            ExitWatch::Pidfd(fd) => {
                let mut ready = fd.readable().await?;
                ready.clear_ready();
                Ok(())
            }
            ExitWatch::Poll => {
                tokio::time::sleep(EXIT_POLL).await;
                Ok(())
            }
        }
    }
}

impl ChildProcess for OsChild {
    fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            self.exit.changed().await?;
        }
    }

    fn start_kill(&mut self) -> io::Result<()> {
        self.signal(rustix::process::Signal::KILL)
    }

    fn terminate(&mut self) -> io::Result<()> {
        self.signal(rustix::process::Signal::TERM)
    }
}

/// The signals that ask a process to upgrade. Their default action terminates, and a successor
/// cannot catch them before its handlers are installed: it starts with them ignored instead
/// (dispositions set to "ignore" survive `exec`; the handlers replace them). An upgrade asked of
/// a process that is not serving yet is refused anyway, so nothing is lost.
pub(crate) const UPGRADE_SIGNALS: [i32; 3] = [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];

impl Spawner for OsSpawner {
    type Child = OsChild;

    fn spawn(
        &self,
        start: &StartInfo,
        listeners: &[(ListenerKey, BorrowedFd<'_>)],
    ) -> io::Result<Spawned<OsChild>> {
        let (ready_read, ready_write) = readiness::pipe()?;
        // Without a channel the successor still serves; only its predecessor's idle connections
        // are closed instead of relayed.
        let relay = crate::relay::channel()
            .inspect_err(|e| tracing::debug!("no relay channel for this upgrade: {e}"))
            .ok();
        #[cfg(target_os = "linux")]
        let held = match &self.low_slots {
            Some([ready_slot, relay_slot]) => Some((
                ready_slot.hold(ready_write.as_fd())?,
                match &relay {
                    Some((_, theirs)) => Some(relay_slot.hold(theirs.as_fd())?),
                    None => None,
                },
            )),
            None => None,
        };
        #[cfg(target_os = "linux")]
        let (ready_fd, relay_fd) = match &held {
            Some((ready, relay)) => (ready.as_fd(), relay.as_ref().map(|held| held.as_fd())),
            None => (
                ready_write.as_fd(),
                relay.as_ref().map(|(_, theirs)| theirs.as_fd()),
            ),
        };
        #[cfg(not(target_os = "linux"))]
        let (ready_fd, relay_fd) = (
            ready_write.as_fd(),
            relay.as_ref().map(|(_, theirs)| theirs.as_fd()),
        );
        let handover = Handover::from_this_process(listeners, ready_fd, relay_fd);
        let inherit: Vec<RawFd> = handover
            .listeners
            .iter()
            .map(|(fd, _)| *fd)
            .chain([handover.ready_fd])
            .chain(handover.relay_fd)
            .collect();
        let environment = successor_environment(std::env::vars_os(), &handover);
        let exec = Exec::new(start, environment)?;
        let pid = start_successor(exec, start, inherit)?;
        #[cfg(target_os = "linux")]
        drop(held);
        drop(ready_write);
        Ok(Spawned {
            child: OsChild {
                pid,
                status: None,
                exit: ExitWatch::new(pid),
            },
            ready: Box::pin(readiness::wait_ready(ready_read)),
            relay: relay.map(|(mine, _)| mine),
        })
    }
}

/// Starts `exec` in the start directory with the `inherit` fds handed over; its pid.
#[cfg(target_os = "linux")]
fn start_successor(mut exec: Exec, start: &StartInfo, inherit: Vec<RawFd>) -> io::Result<u32> {
    use std::os::unix::ffi::OsStrExt;
    let cwd = CString::new(start.cwd.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in the working directory",
        )
    })?;
    vfork::spawn(&mut exec, &cwd, &inherit)
}

/// Starts `exec` in the start directory with the `inherit` fds handed over; its pid.
///
/// With `fork`, through std's `Command`, where there is no `clone`.
#[cfg(not(target_os = "linux"))]
fn start_successor(mut exec: Exec, start: &StartInfo, inherit: Vec<RawFd>) -> io::Result<u32> {
    use std::os::unix::process::CommandExt;
    // Only for what std does before the hook: the working directory, stdio, signals reset.
    let mut command = std::process::Command::new(&start.program);
    command.current_dir(&start.cwd);
    // SAFETY: the closure runs in the forked child before exec and only makes raw fcntl,
    // signal and execve system calls (async-signal-safe, no allocation) on fds the parent
    // keeps open until `spawn` returns and on C strings `exec` owns.
    unsafe {
        command.pre_exec(move || {
            for fd in &inherit {
                rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(*fd), FdFlags::empty())?;
            }
            for signal in UPGRADE_SIGNALS {
                if libc::signal(signal, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
            }
            exec.stamp_pid(std::process::id());
            Err(exec.exec())
        });
    }
    // Reaped by pid through `OsChild`; std's handle owns nothing else (stdio is inherited).
    Ok(command.spawn()?.id())
}

/// The environment of a successor: this process's `current` one without any variable of an
/// earlier hand-over or of systemd socket activation (this process read them, or ignored them as
/// not its own; its successor must not see them), plus the fresh hand-over. [`PID_VAR`] is added
/// by [`Exec`], which alone knows the successor's pid.
pub(crate) fn successor_environment(
    current: impl Iterator<Item = (OsString, OsString)>,
    handover: &Handover,
) -> Vec<(OsString, OsString)> {
    let stale = |name: &OsString| {
        ALL_VARS
            .iter()
            .chain(&crate::activation::VARS)
            .any(|var| name == var)
    };
    let fresh = handover.to_env().into_iter().chain([
        (GENERATION_VAR, (crate::env::generation() + 1).to_string()),
        (UPGRADE_STARTED_VAR, crate::env::upgrade_started_now()),
    ]);
    current
        .filter(|(name, _)| !stale(name))
        .chain(fresh.map(|(name, value)| (name.into(), value.into())))
        .collect()
}

/// `OCTOPUS_PID=` and room for any pid, NUL-terminated.
const PID_ENTRY: usize = PID_VAR.len() + 1 + 10 + 1;

/// The program, its arguments and its environment as `execve` takes them, made before the child
/// is started: the child may not allocate.
///
/// The successor is started with `execve` itself rather than std's `execvp`: for a file the
/// kernel refuses with ENOEXEC (a text file, a truncated binary, one built for another
/// architecture), the C library's `execvp` runs it through `/bin/sh` instead, and a shell then
/// interprets the file's bytes as commands. With `execve` the kernel's refusal is the error.
struct Exec {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// `OCTOPUS_PID=PID`, written in the child by [`Exec::stamp_pid`]; the last entry of `envp`.
    pid_entry: [u8; PID_ENTRY],
    /// Owns what `argv` and `envp` point to.
    _strings: Vec<CString>,
}

// SAFETY: the pointers point into the heap buffers of `_strings` (and `program`), which `Exec`
// owns and never changes, so they stay valid wherever it is sent or shared.
unsafe impl Send for Exec {}
// SAFETY: as above; `Exec` is only read.
unsafe impl Sync for Exec {}

impl Exec {
    fn new(start: &StartInfo, environment: Vec<(OsString, OsString)>) -> io::Result<Exec> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let c_string = |bytes: Vec<u8>| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a NUL byte in an argument or variable",
                )
            })
        };
        let args: Vec<CString> = std::iter::once(&start.argv0)
            .chain(&start.args)
            .map(|arg| c_string(arg.as_bytes().to_vec()))
            .collect::<io::Result<_>>()?;
        let env: Vec<CString> = environment
            .into_iter()
            .map(|(name, value)| {
                let mut pair = name.into_vec();
                pair.push(b'=');
                pair.extend(value.into_vec());
                c_string(pair)
            })
            .collect::<io::Result<_>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain([std::ptr::null()])
                .collect::<Vec<_>>()
        };
        let mut envp = pointers(&env);
        // Room for the pid entry, before the final null pointer.
        envp.insert(envp.len() - 1, std::ptr::null());
        Ok(Exec {
            program: c_string(start.program.as_os_str().as_bytes().to_vec())?,
            argv: pointers(&args),
            envp,
            pid_entry: [0; PID_ENTRY],
            _strings: args.into_iter().chain(env).collect(),
        })
    }

    /// Names `pid` in [`PID_VAR`]: called in the child before `execve`, so it may not allocate.
    fn stamp_pid(&mut self, pid: u32) {
        let mut digits = [0u8; 10];
        let mut rest = pid;
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let digits = &digits[start..];
        let name = PID_VAR.len();
        self.pid_entry[..name].copy_from_slice(PID_VAR.as_bytes());
        self.pid_entry[name] = b'=';
        self.pid_entry[name + 1..name + 1 + digits.len()].copy_from_slice(digits);
        self.pid_entry[name + 1 + digits.len()] = 0;
        let slot = self.envp.len() - 2;
        self.envp[slot] = self.pid_entry.as_ptr().cast();
    }

    /// Replaces the process image; returns only the reason it could not.
    fn exec(&self) -> io::Error {
        // SAFETY: every pointer is to a NUL-terminated string owned by `self`, and both arrays
        // end with a null pointer.
        unsafe {
            libc::execve(
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            )
        };
        io::Error::last_os_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// `/bin/sh -c script`, started in `/`.
    fn shell(script: String) -> StartInfo {
        StartInfo {
            program: "/bin/sh".into(),
            argv0: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: "/".into(),
        }
    }

    #[test]
    fn relative_paths_are_made_absolute_against_the_start_directory() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            resolve_program(&"./bin/server".into(), cwd, None),
            Some(PathBuf::from("/srv/app/./bin/server"))
        );
        assert_eq!(
            resolve_program(&"/usr/bin/server".into(), cwd, None),
            Some(PathBuf::from("/usr/bin/server"))
        );
    }

    #[test]
    fn bare_names_are_found_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("server");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(
            resolve_program(&"server".into(), Path::new("/"), Some(path.clone())),
            None
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve_program(&"server".into(), Path::new("/"), Some(path)),
            Some(program)
        );
    }

    #[tokio::test]
    async fn files_the_kernel_cannot_run_are_an_error_never_a_shell_script() {
        let dir = tempfile::tempdir().unwrap();
        // Were it run by /bin/sh, as execvp does with such files, this would leave a mark.
        let mark = dir.path().join("ran-as-a-script");
        let truncated_elf = std::fs::read("/proc/self/exe").unwrap()[..64].to_vec();
        let text = format!("touch {}\n", mark.display()).into_bytes();
        for (name, content) in [
            ("empty", Vec::new()),
            ("text", text),
            ("truncated", truncated_elf),
        ] {
            let program = dir.path().join(name);
            std::fs::write(&program, content).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
            let start = StartInfo {
                program: program.clone(),
                argv0: name.into(),
                args: vec![],
                cwd: "/".into(),
            };
            let err = match OsSpawner::default().spawn(&start, &[]) {
                Err(err) => err,
                Ok(mut spawned) => {
                    let status = spawned.child.wait().await;
                    panic!("{name} was started ({status:?}); the kernel refuses it");
                }
            };
            assert_eq!(
                err.raw_os_error(),
                Some(rustix::io::Errno::NOEXEC.raw_os_error()),
                "{name}: {err}"
            );
        }
        assert!(
            !mark.exists(),
            "a file the kernel refused was run by a shell"
        );
    }

    #[test]
    fn a_successor_never_inherits_a_stale_hand_over_or_systemd_variable() {
        let stale = [
            ("OCTOPUS_LISTENERS", "9=tcp:127.0.0.1:1"),
            ("OCTOPUS_READY_FD", "10"),
            ("OCTOPUS_PARENT_PID", "1"),
            ("OCTOPUS_PID", "2"),
            ("OCTOPUS_GENERATION", "77"),
            ("OCTOPUS_UPGRADE_STARTED", "3"),
            ("LISTEN_PID", "2"),
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "web"),
            ("APP_SETTING", "kept"),
        ];
        let handover = Handover {
            listeners: vec![(3, ListenerKey::udp("[::1]:0"))],
            ready_fd: 4,
            relay_fd: None,
            parent_pid: 500,
        };
        let current = stale.iter().map(|(k, v)| (k.into(), v.into()));
        let env = successor_environment(current, &handover);
        let values = |name: &str| -> Vec<String> {
            env.iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.to_string_lossy().into_owned())
                .collect()
        };
        for var in crate::activation::VARS.iter().chain([&PID_VAR]) {
            assert_eq!(values(var), Vec::<String>::new(), "{var}");
        }
        assert_eq!(values("OCTOPUS_LISTENERS"), ["3=udp:[::1]:0"]);
        assert_eq!(values("OCTOPUS_READY_FD"), ["4"]);
        assert_eq!(values("OCTOPUS_PARENT_PID"), ["500"]);
        assert_eq!(
            values("OCTOPUS_GENERATION"),
            [(crate::env::generation() + 1).to_string()]
        );
        assert_ne!(values("OCTOPUS_UPGRADE_STARTED"), ["3"]);
        assert_eq!(values("APP_SETTING"), ["kept"]);
    }

    /// The signal mask of this thread, and the handler of SIGHUP.
    #[cfg(target_os = "linux")]
    fn signal_state() -> ([u8; 8], libc::sighandler_t) {
        // SAFETY: sigset_t and sigaction are plain data, only read and filled by the calls.
        unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut mask);
            let mut hup: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut hup);
            let bits = std::slice::from_raw_parts((&raw const mask).cast::<u8>(), 8);
            (bits.try_into().unwrap(), hup.sa_sigaction)
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "current_thread")]
    async fn a_successor_starts_in_its_directory_with_upgrade_signals_ignored_and_the_mask_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        // SAFETY: blocks one signal in this thread only; restored below.
        let previous = unsafe {
            let mut winch: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut winch);
            libc::sigaddset(&mut winch, libc::SIGWINCH);
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &winch, &mut previous);
            previous
        };
        // SIGHUP, SIGUSR1, SIGUSR2 ignored; SIGPIPE (which Rust programs ignore) back to its
        // default, as std's Command does; this thread's mask, which blocks SIGWINCH, as std's
        // Command gives it. Read with builtins before the shell forks anything: around a fork
        // it blocks signals itself.
        let mask = u64::from_le_bytes(signal_state().0);
        assert_ne!(mask & 1 << (libc::SIGWINCH - 1), 0, "SIGWINCH not blocked");
        let script = format!(
            "while read -r name value rest; do case $name in SigIgn:) ign=$value;; \
             SigBlk:) blk=$value;; esac; done < /proc/$$/status; \
             test $(( 0x$ign & 0xa01 )) -eq $(( 0xa01 )) && test $(( 0x$ign & 0x1000 )) -eq 0 \
             && test $(( 0x$blk )) -eq {mask} && test \"$(pwd -P)\" = '{}' \
             && printf R > /dev/fd/$OCTOPUS_READY_FD",
            dir.display()
        );
        let start = StartInfo {
            cwd: dir.clone(),
            ..shell(script)
        };
        let before = signal_state();
        let spawned = OsSpawner::default().spawn(&start, &[]);
        let after = signal_state();
        // SAFETY: restores the mask read above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
        assert_eq!(
            before, after,
            "spawning changed this thread's mask or SIGHUP handler"
        );
        let mut spawned = spawned.unwrap();
        assert!(
            spawned.ready.await.unwrap(),
            "the child did not start in its directory with the expected signal state"
        );
        assert!(spawned.child.wait().await.unwrap().success());
    }

    #[test]
    fn a_missing_working_directory_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let start = StartInfo {
            program: "/bin/true".into(),
            argv0: "true".into(),
            args: vec![],
            cwd: dir.path().join("removed"),
        };
        let err = OsSpawner::default()
            .spawn(&start, &[])
            .err()
            .expect("spawned");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[tokio::test]
    async fn spawned_process_receives_only_the_handed_over_fds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stray = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let script = format!(
            "test -n \"$OCTOPUS_READY_FD\" && test -e /proc/self/fd/{fd} && ! test -e /proc/self/fd/{stray} \
             && test \"$OCTOPUS_LISTENERS\" = \"{fd}=tcp:127.0.0.1:0\" && test \"$OCTOPUS_PID\" = $$ \
             && printf R > /dev/fd/$OCTOPUS_READY_FD",
            stray = stray.as_raw_fd()
        );
        let start = shell(script);
        let borrowed = std::os::fd::AsFd::as_fd(&listener);
        let mut spawned = OsSpawner::default()
            .spawn(&start, &[(ListenerKey::tcp("127.0.0.1:0"), borrowed)])
            .unwrap();
        assert!(
            spawned.ready.await.unwrap(),
            "the child did not see exactly the handed-over fds"
        );
        assert!(spawned.child.wait().await.unwrap().success());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_successor_gets_no_inheritable_fd_of_its_parent() {
        let spawner = OsSpawner::reserving();
        // Numbers chosen, so that other tests' fds cannot reorder them: an inheritable fd on
        // each side of the listener.
        let (pipe, _) = rustix::pipe::pipe().unwrap();
        // An inheritable copy of the pipe's read end at `min` or above.
        let inheritable = |min: RawFd| {
            // SAFETY: F_DUPFD makes a new fd, owned by the OwnedFd alone.
            unsafe {
                let fd = libc::fcntl(pipe.as_raw_fd(), libc::F_DUPFD, min);
                assert!(fd >= 0, "{}", io::Error::last_os_error());
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
            }
        };
        let below = inheritable(200);
        let listener = std::net::TcpListener::from(
            rustix::io::fcntl_dupfd_cloexec(
                std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
                300,
            )
            .unwrap(),
        );
        let above = inheritable(400);
        let fd = listener.as_raw_fd();
        let script = format!(
            "! test -e /proc/self/fd/{below} && ! test -e /proc/self/fd/{above} \
             && test -e /proc/self/fd/{fd} && printf R > /dev/fd/$OCTOPUS_READY_FD",
            below = below.as_raw_fd(),
            above = above.as_raw_fd(),
        );
        let start = shell(script);
        let borrowed = std::os::fd::AsFd::as_fd(&listener);
        let mut spawned = spawner
            .spawn(&start, &[(ListenerKey::tcp("127.0.0.1:0"), borrowed)])
            .unwrap();
        assert!(
            spawned.ready.await.unwrap(),
            "the child saw an inheritable fd of its parent"
        );
        assert!(spawned.child.wait().await.unwrap().success());
    }
}

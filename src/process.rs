//! Starting the new process, behind a small interface so the upgrade logic is tested without
//! spawning anything.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;

use rustix::io::FdFlags;

use crate::env::{Handover, GENERATION_VAR, UPGRADE_STARTED_VAR, VARS};
use crate::error::Error;
use crate::listeners::ListenerKey;
use crate::readiness;

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

/// Starts real processes with `fork` + `exec`.
#[derive(Debug, Default)]
pub(crate) struct OsSpawner;

/// A real child process.
///
/// Waited for through a pidfd on Linux rather than Tokio's process driver: that driver checks for
/// orphans every time a runtime thread parks, a cost every server would pay on every request for
/// the sake of a process started once per deploy.
pub(crate) struct OsChild {
    pid: u32,
    child: std::process::Child,
    exit: ExitWatch,
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
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            self.exit.changed().await?;
        }
    }

    fn start_kill(&mut self) -> io::Result<()> {
        match self.child.kill() {
            // Already exited (not yet reaped): nothing to kill.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
            other => other,
        }
    }

    fn terminate(&mut self) -> io::Result<()> {
        // Not yet reaped (`try_wait` never saw it exit), so the pid is still this child's.
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = rustix::process::Pid::from_raw(self.pid as i32)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        Ok(())
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
        check_executable(&start.program)?;
        let (ready_read, ready_write) = readiness::pipe()?;
        let handover = Handover {
            listeners: listeners
                .iter()
                .map(|(key, fd)| (fd.as_raw_fd(), key.clone()))
                .collect(),
            ready_fd: ready_write.as_raw_fd(),
            parent_pid: std::process::id(),
        };
        let inherit: Vec<RawFd> = handover
            .listeners
            .iter()
            .map(|(fd, _)| *fd)
            .chain([handover.ready_fd])
            .collect();
        let mut command = std::process::Command::new(&start.program);
        command
            .arg0(&start.argv0)
            .args(&start.args)
            .current_dir(&start.cwd);
        for var in VARS {
            command.env_remove(var);
        }
        command.envs(handover.to_env());
        command.env(GENERATION_VAR, (crate::env::generation() + 1).to_string());
        command.env(UPGRADE_STARTED_VAR, crate::env::upgrade_started_now());
        // SAFETY: the closure runs in the forked child before exec and only makes raw fcntl and
        // signal system calls (async-signal-safe, no allocation) on fds the parent keeps open
        // until `spawn` returns.
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
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(ready_write);
        let pid = child.id();
        Ok(Spawned {
            child: OsChild {
                pid,
                child,
                exit: ExitWatch::new(pid),
            },
            ready: Box::pin(readiness::wait_ready(ready_read)),
        })
    }
}

/// Refuses a file the kernel would refuse with ENOEXEC, before forking: otherwise the C library's
/// `execvp` hands such a file to `/bin/sh`, and the real error is lost in a shell's complaint.
#[cfg(target_os = "linux")]
fn check_executable(program: &Path) -> io::Result<()> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let read = match std::fs::File::open(program) {
        Ok(file) => file.take(4).read(&mut magic)?,
        // An execute-only file cannot be read: leave the verdict to exec.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(()),
        Err(e) => return Err(e),
    };
    if magic[..read].starts_with(b"#!") || magic[..read] == *b"\x7fELF" {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(
            rustix::io::Errno::NOEXEC.raw_os_error(),
        ))
    }
}

#[cfg(not(target_os = "linux"))]
fn check_executable(_program: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[cfg(target_os = "linux")]
    #[test]
    fn files_that_are_not_programs_are_refused_with_enoexec() {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [
            ("empty", &b""[..]),
            ("text", b"hello"),
            ("script", b"#!/bin/sh\n"),
        ] {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        for name in ["empty", "text"] {
            let err = check_executable(&dir.path().join(name)).unwrap_err();
            assert!(err.to_string().contains("Exec format error"), "{err}");
        }
        check_executable(&dir.path().join("script")).unwrap();
        check_executable(Path::new("/bin/sh")).unwrap();
        assert_eq!(
            check_executable(&dir.path().join("missing"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn spawned_process_receives_only_the_handed_over_fds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stray = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let script = format!(
            "test -n \"$OCTOPUS_READY_FD\" && test -e /proc/self/fd/{fd} && ! test -e /proc/self/fd/{stray} \
             && test \"$OCTOPUS_LISTENERS\" = \"{fd}=tcp:127.0.0.1:0\" && printf R > /dev/fd/$OCTOPUS_READY_FD",
            stray = stray.as_raw_fd()
        );
        let start = StartInfo {
            program: "/bin/sh".into(),
            argv0: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: "/".into(),
        };
        let borrowed = std::os::fd::AsFd::as_fd(&listener);
        let mut spawned = OsSpawner
            .spawn(&start, &[(ListenerKey::tcp("127.0.0.1:0"), borrowed)])
            .unwrap();
        assert!(
            spawned.ready.await.unwrap(),
            "the child did not see exactly the handed-over fds"
        );
        assert!(spawned.child.wait().await.unwrap().success());
    }
}

//! The pid file: names the process that is ready and serving, for `PIDFile=` and scripts.
//!
//! As nginx does: while an older generation keeps serving beside a newer one (SIGUSR1/SIGUSR2),
//! `FILE.oldbin` names the older one and `FILE` the newer. A generation that exits leaves `FILE`
//! naming whoever still serves: the older generation if it is alive, nobody otherwise.

use std::io;
use std::path::{Path, PathBuf};

/// Writes `pid` to `path` atomically: readers see the old content or the new, never a partial one.
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    let staged = staging_path(path, pid);
    std::fs::write(&staged, format!("{pid}\n"))?;
    std::fs::rename(&staged, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&staged);
    })
}

/// Names `pid` in `FILE.oldbin`: it keeps serving beside the generation `FILE` names.
pub(crate) fn write_old(path: &Path, pid: u32) -> io::Result<()> {
    write(&old_path(path), pid)
}

/// Called by generation `pid` as it exits: if `FILE` names it, `FILE` goes back to the older
/// generation of `FILE.oldbin` when that one still runs, and is removed otherwise; a
/// `FILE.oldbin` naming `pid` is removed.
pub(crate) fn release(path: &Path, pid: u32) {
    let old = old_path(path);
    if names(path, pid) {
        let older_serves = read_pid(&old).is_some_and(|older| older != pid && is_alive(older));
        let done = if older_serves {
            std::fs::rename(&old, path)
        } else {
            std::fs::remove_file(path)
        };
        if let Err(e) = done {
            tracing::warn!(path = %path.display(), "cannot update the pid file: {e}");
        }
    }
    remove_if_names(&old, pid);
}

/// Removes the pid file if it still names `pid` (after a hand-over it names the successor).
pub(crate) fn remove_if_names(path: &Path, pid: u32) {
    if names(path, pid) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "cannot remove the pid file: {e}");
        }
    }
}

/// The pid in the file at `path`; `None` for anything but a regular file holding one, which is
/// opened without blocking so that a FIFO put there cannot hang the process.
pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut content = String::new();
    file.read_to_string(&mut content).ok()?;
    content.trim().parse().ok()
}

fn names(path: &Path, pid: u32) -> bool {
    read_pid(path) == Some(pid)
}

/// Whether process `pid` exists (a zombie counts: it is gone only once reaped).
pub(crate) fn is_alive(pid: u32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

fn old_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".oldbin");
    PathBuf::from(name)
}

fn staging_path(path: &Path, pid: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pid".into());
    path.with_file_name(format!(".{name}.{pid}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_removes_only_its_own_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        write(&path, 10).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "10\n");
        write(&path, 11).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "11\n");
        remove_if_names(&path, 10);
        assert!(
            path.exists(),
            "a process never removes its successor's pid file"
        );
        remove_if_names(&path, 11);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no staging file left"
        );
    }

    #[test]
    fn the_file_names_whoever_serves_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        let old = dir.path().join("app.pid.oldbin");
        let me = std::process::id();
        // This test process plays the older generation that keeps serving; a pid that is not
        // running plays the newer one.
        let gone = u32::MAX / 2;
        write(&path, gone).unwrap();
        write_old(&path, me).unwrap();
        release(&path, gone);
        assert_eq!(
            read_pid(&path),
            Some(me),
            "the older generation still serves"
        );
        assert!(!old.exists());

        write(&path, me).unwrap();
        write_old(&path, gone).unwrap();
        release(&path, me);
        assert!(!path.exists(), "no generation that runs is left to name");
        assert!(
            old.exists(),
            "another generation's entry is not ours to remove"
        );
        release(&path, gone);
        assert!(!old.exists());

        write(&path, gone).unwrap();
        write_old(&path, me).unwrap();
        release(&path, me);
        assert_eq!(
            read_pid(&path),
            Some(gone),
            "the newer generation keeps the file"
        );
        assert!(!old.exists());
    }

    #[test]
    fn a_fifo_at_the_path_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        rustix::fs::mkfifoat(rustix::fs::CWD, &path, rustix::fs::Mode::from(0o600)).unwrap();
        assert_eq!(read_pid(&path), None);
        release(&path, std::process::id());
        assert!(path.exists(), "not ours: left alone");
    }

    #[test]
    fn an_unwritable_directory_is_an_error() {
        let err = write(Path::new("/nonexistent/dir/app.pid"), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}

//! The pid file: names the process that is ready and serving, for `PIDFile=` and scripts.

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

/// Removes the pid file if it still names `pid` (after a hand-over it names the successor).
pub(crate) fn remove_if_names(path: &Path, pid: u32) {
    let names_us = std::fs::read_to_string(path)
        .map(|content| content.trim() == pid.to_string())
        .unwrap_or(false);
    if names_us {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "cannot remove the pid file: {e}");
        }
    }
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
    fn an_unwritable_directory_is_an_error() {
        let err = write(Path::new("/nonexistent/dir/app.pid"), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}

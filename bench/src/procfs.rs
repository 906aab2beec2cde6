//! What /proc says about a process: open fds, resident memory, liveness, zombies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The fds `pid` holds of its own: stdio and its close-on-exec fds. An fd its starter left
/// inheritable (this tool's parent shell's, say) is held by a first generation only, since
/// octopus gives a successor nothing but its listeners and readiness pipe: counting it would
/// make a generation look like it leaked, or the first like it held more.
fn own_fds(pid: u32) -> Option<Vec<std::fs::DirEntry>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.flatten()
            .filter(|entry| {
                let Some(fd) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    return false;
                };
                fd <= 2
                    || std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).is_ok_and(
                        |info| {
                            info.lines()
                                .find_map(|line| line.strip_prefix("flags:"))
                                .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
                                .is_some_and(|flags| flags & O_CLOEXEC != 0)
                        },
                    )
            })
            .collect(),
    )
}

/// `O_CLOEXEC` in the `flags:` of `/proc/PID/fdinfo/FD` (octal), on Linux.
const O_CLOEXEC: u32 = 0o2000000;

/// Number of fds `pid` holds of its own (see [`own_fds`]).
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(own_fds(pid)?.len())
}

/// The fds `pid` holds of its own by kind (`socket`, `pipe`, `anon_inode:[eventpoll]`, a path...).
pub fn fd_kinds(pid: u32) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for entry in own_fds(pid).unwrap_or_default() {
        let target = std::fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".into());
        let kind = match target.split_once(":[") {
            Some((k, _)) if k == "socket" || k == "pipe" => k.to_string(),
            _ => target,
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The 1, 5 and 15 minute load averages, as in `/proc/loadavg`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// State letter and parent pid of `pid`, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Live (non-zombie) children of `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(
            |pid| matches!(stat(*pid), Some((s, ppid)) if ppid == parent && s != 'Z' && s != 'X'),
        )
        .collect()
}

/// Live descendants of `root` (children first, then theirs), at most 10 000.
pub fn descendants_of(root: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut frontier = vec![root];
    for _ in 0..64 {
        let Some(parent) = frontier.pop() else { break };
        for child in children_of(parent) {
            if found.len() < 10_000 && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// A zombie process and its parent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Zombie {
    /// The zombie.
    pub pid: u32,
    /// Its parent, which has not reaped it.
    pub ppid: u32,
}

/// Zombies whose parent is one of `parents`.
pub fn zombies_of(parents: &[u32]) -> Vec<Zombie> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(('Z', ppid)) = stat(pid) {
            if parents.contains(&ppid) {
                found.push(Zombie { pid, ppid });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(fd_count(me).unwrap() >= 3);
        assert!(rss_kb(me).unwrap() > 0);
        assert!(alive(me));
        assert!(zombies_of(&[me]).is_empty());
    }
}

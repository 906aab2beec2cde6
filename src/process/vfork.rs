//! Starting the successor on Linux without `fork`: `clone(CLONE_VM | CLONE_VFORK)` on a stack of
//! its own, the way glibc's `posix_spawn` and Go's `forkExec` start processes.
//!
//! `fork` copies the page tables of the whole process; until the child has exec'd, every page the
//! parent writes is a copy-on-write fault; and the child's `exec` then tears the copied address
//! space down. All of it scales with the parent's memory, which grows with its open connections:
//! with 10,000 idle keep-alive connections (~200 MB) it added ~25 ms to every hand-over. A child
//! that shares the parent's memory copies nothing and tears nothing down. The parent's calling
//! thread is suspended by the kernel until the child has exec'd or exited (`CLONE_VFORK`), so
//! the child may use the parent's data as long as that thread would; its other threads keep
//! serving meanwhile, so the child touches nothing they use, takes no lock and allocates nothing.
//!
//! The child starts on the parent's fd table too (`CLONE_FILES`) and copies only the part below
//! the fds it is handed (`close_range` with `CLOSE_RANGE_UNSHARE`): the copy of a 10,000-entry
//! table, and its closing in `execve`, cost as much as the old process has connections. The
//! readiness pipe is kept low for that ([`super::low_slot`]).
//!
//! No `posix_spawn`: the successor needs its own pid in its environment ([`super::Exec`]), which
//! only code running in the child knows, and it must start with the upgrade signals ignored.

use std::ffi::{CStr, c_int, c_void};
use std::io;
use std::os::fd::RawFd;

use super::{Exec, UPGRADE_SIGNALS};

/// The child's stack: it only resets signals, changes directory, clears a few fd flags and
/// calls `execve`.
const STACK_SIZE: usize = 64 * 1024;
/// Exit status of a child whose `execve` failed (the error itself goes back through memory).
const EXEC_FAILED: c_int = 127;
/// Signals are numbered 1 to 64 on Linux.
const SIGNALS: c_int = 64;

/// What the child reads, and writes back, in the memory it shares with the parent.
struct Shared<'a> {
    exec: &'a mut Exec,
    cwd: &'a CStr,
    inherit: &'a [RawFd],
    /// The child keeps the fds below this: every fd it is handed, and what lies between them.
    keep_below: libc::c_uint,
    /// The spawning thread's signal mask, which the successor starts with, as it did when
    /// started by std's `Command`.
    mask: libc::sigset_t,
    /// The errno of the step that failed in the child; 0 if it exec'd.
    error: c_int,
}

/// Starts `exec` in `cwd` with the `inherit` fds handed over (their close-on-exec flag cleared in
/// the child only), and returns its pid once it has exec'd. A failure before or in `execve` is
/// this call's error, as it was with std's `Command::spawn`; the failed child is reaped.
pub(super) fn spawn(exec: &mut Exec, cwd: &CStr, inherit: &[RawFd]) -> io::Result<u32> {
    let stack = Stack::new()?;
    let blocked = SignalsBlocked::new()?;
    let keep_below = inherit.iter().copied().max().map_or(3, |fd| fd + 1).max(3);
    let mut shared = Shared {
        exec,
        cwd,
        inherit,
        keep_below: libc::c_uint::try_from(keep_below).unwrap_or(libc::c_uint::MAX),
        mask: blocked.previous,
        error: 0,
    };
    // SAFETY: `child` runs on `stack`, which stays mapped until this function returns, and only
    // after this thread is resumed, that is once the child has exec'd or exited (CLONE_VFORK);
    // `shared` lives on this thread's stack, which nothing else touches meanwhile. Every signal
    // is blocked in this thread, so no handler of this process runs in the child before it has
    // reset them all.
    let pid = unsafe {
        libc::clone(
            child,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD,
            (&raw mut shared).cast::<c_void>(),
        )
    };
    let clone_error = io::Error::last_os_error();
    drop(blocked);
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: the child has exec'd or exited, so it no longer writes `shared.error`; volatile so
    // that the read is not folded into the 0 written above.
    let error = unsafe { std::ptr::read_volatile(&raw const shared.error) };
    if error != 0 {
        let pid = rustix::process::Pid::from_raw(pid);
        // The child has exited or is exiting: reap it, as std did for a failed spawn.
        let _ = rustix::io::retry_on_intr(|| {
            rustix::process::waitpid(pid, rustix::process::WaitOptions::empty())
        });
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(pid as u32)
}

/// The child: runs on its own stack in the parent's memory, with every signal blocked.
extern "C" fn child(shared: *mut c_void) -> c_int {
    // SAFETY: `spawn` passed a `Shared` that outlives this child's use of the memory.
    let shared = unsafe { &mut *shared.cast::<Shared<'_>>() };
    let error = prepare_and_exec(shared);
    // SAFETY: a volatile write of a plain integer to memory the suspended parent reads after.
    unsafe { std::ptr::write_volatile(&raw mut shared.error, error) };
    // SAFETY: `_exit` ends the child without running anything of the parent's (no atexit, no
    // stdio flush) in the shared memory.
    unsafe { libc::_exit(EXEC_FAILED) }
}

/// Everything the child does before `execve`, the same as std's `Command` with the former
/// `pre_exec` hook: the working directory, signals reset (SIGPIPE to its default, as std does;
/// the upgrade signals ignored), the handed-over fds kept across `exec`, the pid stamped, the
/// spawning thread's mask back, then `execve`. Returns the errno of what failed.
fn prepare_and_exec(shared: &mut Shared<'_>) -> c_int {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
    };
    // SAFETY: only system calls on values this child owns or that the suspended parent keeps
    // alive; the C library wrappers used take no lock and do not allocate.
    unsafe {
        // Started on the parent's fd table (CLONE_FILES), the child takes a copy of only the
        // part below the fds it is handed: copying the whole table, and closing it again in
        // `execve`, would cost as much as the old process has connections. Without
        // `close_range` (Linux before 5.9) it copies it all, as `fork` would. Nothing before this
        // touches an fd: the parent's other threads go on using the shared table meanwhile.
        let unshared = libc::syscall(
            libc::SYS_close_range,
            shared.keep_below,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        ) == 0
            || libc::unshare(libc::CLONE_FILES) == 0;
        if !unshared {
            return errno();
        }
        // A handler of the parent's would run here in the parent's memory: every caught signal
        // goes back to its default before any is unblocked. Ignored ones stay ignored, as
        // across `fork` and `exec`.
        for signal in 1..=SIGNALS {
            let mut action: libc::sigaction = std::mem::zeroed();
            // Numbers the C library keeps for itself are refused (EINVAL): never caught here.
            if libc::sigaction(signal, std::ptr::null(), &mut action) != 0 {
                continue;
            }
            let handler = action.sa_sigaction;
            let wanted = if UPGRADE_SIGNALS.contains(&signal) {
                libc::SIG_IGN
            } else if signal == libc::SIGPIPE || handler != libc::SIG_IGN {
                libc::SIG_DFL
            } else {
                continue;
            };
            if handler != wanted && libc::signal(signal, wanted) == libc::SIG_ERR {
                return errno();
            }
        }
        if libc::chdir(shared.cwd.as_ptr()) != 0 {
            return errno();
        }
        // The successor gets stdio, its listeners and the readiness pipe, nothing else, whatever
        // number another inheritable fd has: one its first generation's starter leaked (a
        // shell's, a CI runner's) is not carried through every upgrade after. Those above
        // `keep_below` were left out of the copy; the few below are marked here.
        for fd in 3..shared.keep_below as c_int {
            let _ = libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        for fd in shared.inherit {
            if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                return errno();
            }
        }
        shared.exec.stamp_pid(libc::getpid() as u32);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &shared.mask, std::ptr::null_mut()) != 0 {
            return errno();
        }
    }
    shared.exec.exec().raw_os_error().unwrap_or(libc::EINVAL)
}

/// The child's stack, with a guard page below it: an overflow faults instead of writing over
/// the parent's memory.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let guard = usize::try_from(page).unwrap_or(4096).max(4096);
        let len = guard + STACK_SIZE.next_multiple_of(guard);
        // SAFETY: a fresh anonymous mapping, owned by the returned `Stack`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the first page of the mapping just made.
        if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The stack grows down from here.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which is what `clone` takes.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Stack::new`, no longer used by any child.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Every signal blocked in this thread, the previous mask restored on drop. The C library keeps
/// its own two (thread cancellation, set-id broadcast) unblocked; it sends them with `tgkill` to
/// this process's threads only, never to the child, which is another process.
struct SignalsBlocked {
    previous: libc::sigset_t,
}

impl SignalsBlocked {
    fn new() -> io::Result<SignalsBlocked> {
        // SAFETY: sigset_t is plain data; the calls only fill and read the sets given.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let mut previous: libc::sigset_t = std::mem::zeroed();
            let r = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            Ok(SignalsBlocked { previous })
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut()) };
    }
}

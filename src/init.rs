//! PID 1 of the sandbox: reap every process, relay the supervisor's signals to the program,
//! and report how the program ended. When the program ends, init exits, and the kernel kills
//! whatever else is left in the PID namespace (a daemon that double-forked, called setsid
//! and ignores SIGTERM included): nothing outlives a run.
//!
//! By now init is unprivileged (the same uid as the program, no capabilities, no_new_privs)
//! and holds no fd but its pipes. The kernel protects a namespace's init from signals sent
//! inside it unless a handler is installed, so the program can't kill it with SIGKILL; it
//! can send the relayed signals, which come straight back to itself.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::sync::atomic::{AtomicI32, Ordering};

static PROGRAM: AtomicI32 = AtomicI32::new(0);

/// Signals relayed from the supervisor (its SIGINT is nbgrader's cell-timeout interrupt).
pub const RELAYED: &[Signal] =
    &[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

extern "C" fn relay(sig: libc::c_int) {
    let pid = PROGRAM.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; pid is our own child.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The wait status as 8 bytes: kind (1 exited, 2 signaled) and value.
pub fn encode(status: WaitStatus) -> Option<[u8; 8]> {
    let (kind, value): (i32, i32) = match status {
        WaitStatus::Exited(_, code) => (1, code),
        WaitStatus::Signaled(_, sig, _) => (2, sig as i32),
        _ => return None,
    };
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&kind.to_ne_bytes());
    out[4..].copy_from_slice(&value.to_ne_bytes());
    Some(out)
}

pub fn decode(bytes: &[u8]) -> Option<crate::report::Ended> {
    let b: [u8; 8] = bytes.try_into().ok()?;
    let kind = i32::from_ne_bytes(b[..4].try_into().ok()?);
    let value = i32::from_ne_bytes(b[4..].try_into().ok()?);
    match kind {
        1 => Some(crate::report::Ended::Exited(value)),
        2 => Some(crate::report::Ended::Signaled(value)),
        _ => None,
    }
}

/// Never returns: exits once the program has ended.
pub fn run(program: Pid, status_fd: i32) -> ! {
    PROGRAM.store(program.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(SigHandler::Handler(relay), SaFlags::SA_RESTART, SigSet::empty());
    let mut relayed = SigSet::empty();
    for &sig in RELAYED {
        // SAFETY: the handler only calls kill(2), which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
        relayed.add(sig);
    }
    // Blocked since before the clone: what arrived during setup is delivered now, and relayed.
    let _ = relayed.thread_unblock();
    loop {
        match waitpid(None, None) {
            Ok(status) if status.pid() == Some(program) => {
                if let Some(bytes) = encode(status) {
                    crate::sys::raw::write_fd(status_fd, &bytes);
                }
                crate::sys::raw::exit_now(0);
            }
            Ok(_) => {} // an orphan reparented to us: reaped
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => crate::sys::raw::exit_now(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Ended;

    #[test]
    fn status_round_trips() {
        let p = Pid::from_raw(5);
        assert_eq!(decode(&encode(WaitStatus::Exited(p, 3)).unwrap()), Some(Ended::Exited(3)));
        assert_eq!(
            decode(&encode(WaitStatus::Signaled(p, Signal::SIGSYS, false)).unwrap()),
            Some(Ended::Signaled(libc::SIGSYS))
        );
        assert_eq!(decode(&[1, 2, 3]), None);
    }
}

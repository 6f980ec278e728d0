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

/// What init reports: the size of [`encode`]'s record.
pub const STATUS_LEN: usize = 16;

/// The wait status and the CPU time of the processes init reaped (the program and the orphans
/// before it), as counted by the kernel for `RLIMIT_CPU`: kind (1 exited, 2 signaled), value,
/// microseconds.
pub fn encode(status: WaitStatus, cpu: std::time::Duration) -> Option<[u8; STATUS_LEN]> {
    let (kind, value): (i32, i32) = match status {
        WaitStatus::Exited(_, code) => (1, code),
        WaitStatus::Signaled(_, sig, _) => (2, sig as i32),
        _ => return None,
    };
    let mut out = [0u8; STATUS_LEN];
    out[..4].copy_from_slice(&kind.to_ne_bytes());
    out[4..8].copy_from_slice(&value.to_ne_bytes());
    out[8..].copy_from_slice(&(cpu.as_micros().min(u64::MAX as u128) as u64).to_ne_bytes());
    Some(out)
}

pub fn decode(bytes: &[u8]) -> Option<(crate::report::Ended, std::time::Duration)> {
    let b: [u8; STATUS_LEN] = bytes.try_into().ok()?;
    let kind = i32::from_ne_bytes(b[..4].try_into().ok()?);
    let value = i32::from_ne_bytes(b[4..8].try_into().ok()?);
    let cpu = std::time::Duration::from_micros(u64::from_ne_bytes(b[8..].try_into().ok()?));
    match kind {
        1 => Some((crate::report::Ended::Exited(value), cpu)),
        2 => Some((crate::report::Ended::Signaled(value), cpu)),
        _ => None,
    }
}

/// CPU time (user and system) of the children this process has reaped.
fn reaped_cpu() -> std::time::Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                std::time::Duration::from_secs(tv.tv_sec().max(0) as u64)
                    + std::time::Duration::from_micros(tv.tv_usec().max(0) as u64)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => std::time::Duration::ZERO,
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
                if let Some(bytes) = encode(status, reaped_cpu()) {
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
        let cpu = std::time::Duration::from_micros(61_000_123);
        assert_eq!(decode(&encode(WaitStatus::Exited(p, 3), cpu).unwrap()), Some((Ended::Exited(3), cpu)));
        assert_eq!(
            decode(&encode(WaitStatus::Signaled(p, Signal::SIGSYS, false), cpu).unwrap()),
            Some((Ended::Signaled(libc::SIGSYS), cpu))
        );
        assert_eq!(decode(&[1, 2, 3]), None);
    }
}

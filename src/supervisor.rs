//! The supervisor: starts the sandbox with `clone3`, lets it go once its cgroup is in place,
//! relays SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2, enforces the wall-clock and total
//! CPU-time limits, and reaps it. Synchronous and single-threaded on purpose: the sandbox is
//! forked from this process, so no thread or async runtime may exist here (STYLE.md §4).
//!
//! Killing is by SIGKILL to the sandbox's init through its pidfd (never a recycled pid): when
//! the init of a PID namespace dies, the kernel kills every other process in it before the
//! init can be reaped, so once `waitpid` returns, nothing of the run is left running.

use crate::cgroup::{CgroupError, RunCgroup};
use crate::init::RELAYED;
use crate::plan::{enter_sandbox, Channels, Plan};
use crate::report::Facts;
use crate::sys::linux::LinuxSys;
use crate::sys::raw::{self, Cloned};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{pipe2, read, Pid};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{what}: {errno}")]
    Sys { what: &'static str, errno: Errno },
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
}

fn sys(what: &'static str) -> impl Fn(Errno) -> SupervisorError {
    move |errno| SupervisorError::Sys { what, errno }
}

/// What the sandbox reported about its own setup, if it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupFailure {
    pub step: String,
    pub message: String,
}

pub struct Outcome {
    pub facts: Facts,
    pub setup_failure: Option<SetupFailure>,
}

/// Namespaces the sandbox is born in. The cgroup namespace comes later, from inside
/// (plan step 2), once it is in its cgroup on v1 too (plan step 1).
pub const NAMESPACES: u64 =
    (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) as u64;

/// The report lists the first signals relayed; a caller signalling in a loop can't grow it.
const MAX_RELAYED_RECORDED: usize = 16;

#[allow(clippy::too_many_arguments)] // until the host side is one typed request (#14)
pub fn supervise(
    mut plan: Plan,
    cgroup: RunCgroup,
    wall_limit: Duration,
    cpu_limit: Duration,
    millicores: u64,
    relay: Option<crate::relay::RelaySpec>,
    watch: Option<OwnedFd>,
    stdio: crate::stdio::Spec,
) -> Result<Outcome, SupervisorError> {
    // The sandbox's fds 0-2: pipes of ours, never the caller's (unless `run --tty`).
    let piped = match stdio {
        crate::stdio::Spec::Piped(piped) => {
            let pipes = crate::stdio::pipes().map_err(sys("pipe2"))?;
            plan.stdio = Some(pipes.sandbox);
            Some((piped, pipes.host))
        }
        crate::stdio::Spec::Inherit => None,
    };
    let (alive_r, alive_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
    let (status_r, status_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
    let (error_r, error_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
    let mut relayed = SigSet::empty();
    for &s in RELAYED {
        relayed.add(s);
    }
    // Blocked before the clone (normally already, since `run` started) so none is lost: the
    // sandbox keeps them blocked, hence pending, until its init can relay them, and the
    // program starts with an empty mask (plan step 19).
    let old_mask = relayed.thread_swap_mask(SigmaskHow::SIG_BLOCK).map_err(sys("sigprocmask"))?;
    let started = Instant::now();

    let (pid, pidfd) = match raw::clone3(NAMESPACES, cgroup.clone_into_fd()).map_err(sys("clone3"))? {
        Cloned::Child => {
            drop((alive_w, status_r, error_r));
            child(
                plan,
                Channels { alive: alive_r.as_raw_fd(), status: status_w.as_raw_fd(), error: error_w.as_raw_fd() },
            )
        }
        Cloned::Parent { pid, pidfd } => (Pid::from_raw(pid), pidfd),
    };
    drop((alive_r, status_w, error_w));
    tracing::debug!(pid = pid.as_raw(), "sandbox cloned");
    drop(plan); // our copies of the bind source fds and of the sandbox's stdio ends

    // From here on, an early return (an error of ours) must not leave the sandbox running.
    let mut sandbox = Sandbox { pid, pidfd, reaped: false };
    // A kernel's protocol, relayed on a thread of its own: no fork happens here any more.
    // Declared after `sandbox`, so it stops (on any return) before the pidfd it uses closes.
    let mut relay = match relay {
        Some(spec) => Some(crate::relay::start(spec, sandbox.pidfd.as_raw_fd()).map_err(|e| SupervisorError::Sys {
            what: "relay",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?),
        None => None,
    };
    // stdout and stderr passed on and counted, stdin copied in: threads too, from here on.
    let pumps = match piped {
        Some((piped, ends)) => Some(crate::stdio::start(piped, ends, sandbox.pidfd.as_raw_fd()).map_err(|e| {
            SupervisorError::Sys { what: "stdio", errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)) }
        })?),
        None => None,
    };
    let sfd =
        SignalFd::with_flags(&relayed, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).map_err(sys("signalfd"))?;
    let mut facts = Facts::default();
    let mut error_text = Vec::new();
    let mut error_open = true;
    let deadline = started + wall_limit;
    loop {
        let now = Instant::now();
        let killed = facts.killed_for_wall || facts.killed_for_cpu || facts.client_gone;
        let mut timeout = if killed { Duration::from_millis(100) } else { deadline.saturating_duration_since(now) };
        if !killed {
            if now >= deadline {
                facts.killed_for_wall = true;
                sandbox.kill();
                tracing::debug!(?wall_limit, "wall-clock limit: killed");
                continue;
            }
            let used = cgroup.cpu_usage()?;
            if used >= cpu_limit {
                facts.killed_for_cpu = true;
                sandbox.kill();
                tracing::debug!(?used, "cpu-time limit: killed");
                continue;
            }
            // The soonest the limit could be reached, at full quota, but at least every 100 ms.
            let soonest = (cpu_limit - used).mul_f64(1000.0 / millicores.max(1) as f64);
            timeout = timeout.min(soonest.clamp(Duration::from_millis(5), Duration::from_millis(100)));
        }
        let mut fds =
            vec![PollFd::new(sandbox.pidfd.as_fd(), PollFlags::POLLIN), PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if error_open {
            fds.push(PollFd::new(error_r.as_fd(), PollFlags::POLLIN));
        }
        let watch_at = fds.len();
        if let Some(w) = watch.as_ref().filter(|_| !facts.client_gone) {
            fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
        }
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(sys("poll")(e)),
        }
        let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        let (exited, signalled, error_ready) = (ready(0), ready(1), error_open && ready(2));
        let gone = watch.is_some() && !facts.client_gone && ready(watch_at);
        drop(fds);
        if gone {
            // Nobody is left to talk to the program: it must not run on unattended.
            facts.client_gone = true;
            sandbox.kill();
            tracing::warn!("the client is gone: sandbox killed");
        }
        if signalled {
            while let Ok(Some(info)) = sfd.read_signal() {
                tracing::debug!(signal = info.ssi_signo, "relaying");
                let _ = raw::pidfd_send_signal(sandbox.pidfd.as_raw_fd(), info.ssi_signo as i32);
                if facts.relayed.len() < MAX_RELAYED_RECORDED {
                    facts.relayed.push(info.ssi_signo as i32);
                }
            }
        }
        if error_ready {
            let mut buf = [0u8; 4096];
            match read(&error_r, &mut buf) {
                Ok(0) | Err(_) => {
                    error_open = false;
                    tracing::debug!("setup done: program started (or setup ended)");
                }
                Ok(n) => error_text.extend_from_slice(&buf[..n]),
            }
        }
        if exited {
            // The relay's last bytes (and its output count) are in before the verdict; it
            // stops while the sandbox is still a zombie of ours.
            if let Some(relay) = relay.take() {
                let seen = relay.stop();
                facts.output_bytes = Some(seen.output);
                facts.killed_for_output = seen.exceeded;
                facts.shutdown_requested = seen.shutdown_requested;
            }
            nix::sys::wait::waitpid(pid, None).map_err(sys("waitpid"))?;
            sandbox.reaped = true;
            tracing::debug!("sandbox reaped");
            break;
        }
    }
    facts.wall = started.elapsed();
    // Every process of the sandbox is gone, so its stdout and stderr are at end-of-file: the
    // last of them is passed on before the verdict.
    if let Some(pumps) = pumps {
        let (bytes, exceeded) = pumps.finish();
        facts.output_bytes = Some(facts.output_bytes.unwrap_or(0) + bytes);
        facts.killed_for_output |= exceeded;
    }
    // The rest of a setup error, if the child wrote one and died before we read it all.
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = read(&error_r, &mut buf) {
        error_text.extend_from_slice(&buf[..n]);
    }
    let mut status = [0u8; crate::init::STATUS_LEN];
    if let Ok(crate::init::STATUS_LEN) = read(&status_r, &mut status) {
        if let Some((ended, cpu)) = crate::init::decode(&status) {
            facts.ended = Some(ended);
            facts.reaped_cpu = cpu;
        }
    }
    if facts.ended.is_none()
        && (facts.killed_for_wall || facts.killed_for_cpu || facts.client_gone || facts.killed_for_output)
    {
        facts.ended = Some(crate::report::Ended::Signaled(libc::SIGKILL)); // by us, through init
    }
    drop(alive_w);
    let _ = old_mask.thread_set_mask();
    facts.usage = cgroup.finish()?;
    tracing::debug!(cpu = ?facts.usage.cpu, peak = ?facts.usage.peak_memory, "cgroup finished");
    let setup_failure = (!error_text.is_empty()).then(|| {
        let text = String::from_utf8_lossy(&error_text).into_owned();
        let (step, message) = text.split_once('\x1f').unwrap_or(("setup", &text));
        SetupFailure { step: step.to_string(), message: message.to_string() }
    });
    Ok(Outcome { facts, setup_failure })
}

/// The sandbox's init, killed and reaped when dropped before it was reaped normally.
struct Sandbox {
    pid: Pid,
    pidfd: OwnedFd,
    reaped: bool,
}

impl Sandbox {
    /// SIGKILL through the pidfd: never a recycled pid. Killing a PID namespace's init kills
    /// the whole namespace.
    fn kill(&self) {
        let _ = raw::pidfd_send_signal(self.pidfd.as_raw_fd(), libc::SIGKILL);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
    }
}

/// The sandbox's side of the clone: [`enter_sandbox`]. Never returns.
fn child(plan: Plan, ch: Channels) -> ! {
    match enter_sandbox(&LinuxSys, plan, ch) {
        Ok(program) => {
            // Our copy of the error pipe: once the program's copy closes on execve, the
            // supervisor sees end-of-file and knows the program started.
            raw::close_fd(ch.error);
            crate::init::run(program, ch.status)
        }
        Err(e) => {
            let msg = format!("{}\x1f{}", e.step, e.message);
            raw::write_fd(ch.error, msg.as_bytes());
            raw::exit_now(126)
        }
    }
}

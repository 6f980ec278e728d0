//! The supervisor: starts the sandbox with `clone3`, lets it go once its cgroup is in place,
//! relays SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2, enforces the wall-clock and total
//! CPU-time limits, and reaps it. Synchronous and single-threaded on purpose: the sandbox is
//! forked from this process, so no thread or async runtime may exist here (STYLE.md §4).
//!
//! Killing is by SIGKILL to the sandbox's init through its pidfd (never a recycled pid): when
//! the init of a PID namespace dies, the kernel kills every other process in it before the
//! init can be reaped, so once `waitpid` returns, nothing of the run is left running.

use crate::cgroup::RunCgroup;
use crate::fault::{Fault, HostStep};
use crate::init::RELAYED;
use crate::plan::{enter_sandbox, Channels, Plan};
use crate::policy::Limits;
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

/// What to supervise: the sandbox's plan and everything around it on the host.
pub struct Supervision {
    pub plan: Plan,
    /// The run's cgroup, limited; the sandbox is cloned into it (v2) or joins it (v1).
    pub cgroup: RunCgroup,
    /// The wall-clock and total CPU-time limits (and the CPU quota, to pace the CPU checks).
    pub limits: Limits,
    /// A kernel's protocol, relayed on a thread once the sandbox is cloned.
    pub relay: Option<crate::relay::RelaySpec>,
    /// A kernel's client: when it ends (readable or hung up), the sandbox is killed.
    pub watch: Option<OwnedFd>,
    pub stdio: crate::stdio::Spec,
}

pub struct Outcome {
    pub facts: Facts,
    /// The sandbox's report of its own failed setup, if it failed.
    pub setup_failure: Option<Fault>,
}

/// Namespaces the sandbox is born in. The cgroup namespace comes later, from inside
/// ([`crate::plan::Step::CgroupNamespace`]), once it is in its cgroup on v1 too
/// ([`crate::plan::Step::Cgroup`]).
pub const NAMESPACES: u64 =
    (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) as u64;

/// The report lists the first signals relayed; a caller signalling in a loop can't grow it.
const MAX_RELAYED_RECORDED: usize = 16;

/// How long a program may outlive the caller's SIGTERM (relayed to it) before the sandbox is
/// killed: a caller's SIGTERM means "end", and a program that ignores it must not make the
/// caller escalate. jupyter_client's own escalation is a SIGKILL to the supervisor's process
/// group 2.5 s after its SIGTERM, which would leave no report: this grace ends well before.
pub const END_GRACE: Duration = Duration::from_secs(1);

/// Clone the sandbox, watch it until its init is reaped, and say what happened.
pub fn supervise(s: Supervision) -> Result<Outcome, Fault> {
    let Supervision { mut plan, cgroup, limits, relay, watch, stdio } = s;
    // The sandbox's fds 0-2: pipes of ours, never the caller's (unless `run --tty`).
    let piped = match stdio {
        crate::stdio::Spec::Piped(piped) => {
            let pipes = crate::stdio::pipes().map_err(|e| Fault::errno(HostStep::Pipes, e))?;
            plan.stdio = Some(pipes.sandbox);
            Some((piped, pipes.host))
        }
        crate::stdio::Spec::Inherit => None,
    };
    let pipe = || pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Fault::errno(HostStep::Pipes, e));
    let ((alive_r, alive_w), (status_r, status_w), (error_r, error_w)) = (pipe()?, pipe()?, pipe()?);
    let mut relayed = SigSet::empty();
    for &s in RELAYED {
        relayed.add(s);
    }
    // Blocked before the clone (normally already, since `run` started) so none is lost: the
    // sandbox keeps them blocked, hence pending, until its init can relay them, and the
    // program starts with an empty mask (the plan's `Session` step).
    let old_mask =
        relayed.thread_swap_mask(SigmaskHow::SIG_BLOCK).map_err(|e| Fault::errno(HostStep::SignalMask, e))?;
    let started = Instant::now();

    // Rootless: a user namespace too, created first by the kernel and owning the others, in
    // which the sandbox maps itself (plan step 1).
    let rootless = plan.rootless.is_some();
    let flags = NAMESPACES | if rootless { libc::CLONE_NEWUSER as u64 } else { 0 };
    // Rootless, a relay's sockets inside come from a connector, which takes the sandbox's
    // namespaces from it over this socket (crate::connector).
    let namespaces = match (rootless, relay.is_some()) {
        (true, true) => {
            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
            let (send, receive) = socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::SOCK_CLOEXEC)
                .map_err(|e| Fault::errno(HostStep::Relay, e))?;
            plan.namespaces = Some(send);
            Some(receive)
        }
        _ => None,
    };
    let cloned = raw::clone3(flags, cgroup.clone_into_fd()).map_err(|e| Fault::errno(HostStep::Clone, e))?;
    let (pid, pidfd) = match cloned {
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
    let sandbox = Sandbox { pid, pidfd, reaped: false };
    // A kernel's protocol, relayed on a thread of its own: no fork happens here any more.
    // Declared after `sandbox`, so it stops (on any return) before the pidfd it uses closes.
    // Rootless, its sockets inside come from the connector, forked now, while we have one thread.
    let relay = match relay {
        Some(spec) => {
            let pidfd = sandbox.pidfd.as_raw_fd();
            let connector = match namespaces {
                Some(ns) => Some(crate::connector::Connector::start(ns).map_err(|e| Fault::io(HostStep::Relay, &e))?),
                None => None,
            };
            Some(crate::relay::start(spec, pidfd, connector).map_err(|e| Fault::io(HostStep::Relay, &e))?)
        }
        None => None,
    };
    // stdout and stderr passed on and counted, stdin copied in: threads too, from here on.
    let pumps = match piped {
        Some((piped, ends)) => Some(
            crate::stdio::start(piped, ends, sandbox.pidfd.as_raw_fd()).map_err(|e| Fault::io(HostStep::Stdio, &e))?,
        ),
        None => None,
    };
    let signals = SignalFd::with_flags(&relayed, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Fault::errno(HostStep::Signals, e))?;
    let mut watcher = Watcher {
        relay,
        sandbox,
        signals,
        error: ErrorPipe { fd: error_r, text: Vec::new() },
        watch,
        cgroup: &cgroup,
        deadline: started + limits.wall_time,
        end_by: None,
        limits: &limits,
        facts: Facts::default(),
    };
    watcher.run()?;
    // The sandbox (its pidfd) stays ours until we return: the pumps below still use it.
    let Watcher { mut facts, mut error, sandbox: _sandbox, .. } = watcher;
    facts.wall = started.elapsed();
    // Every process of the sandbox is gone, so its stdout and stderr are at end-of-file: the
    // last of them is passed on before the verdict.
    if let Some(pumps) = pumps {
        let (bytes, exceeded) = pumps.finish();
        facts.output_bytes = Some(facts.output_bytes.unwrap_or(0) + bytes);
        facts.killed_for_output |= exceeded;
    }
    // A setup error, if the child wrote one before it died: every writer is gone now, so this
    // reads to end-of-file without blocking.
    error.drain();
    read_status(&status_r, &mut facts);
    drop(alive_w);
    let _ = old_mask.thread_set_mask();
    facts.usage = cgroup.finish().map_err(|e| Fault::text(HostStep::Accounting, e))?;
    tracing::debug!(cpu = ?facts.usage.cpu, peak = ?facts.usage.peak_memory, "cgroup finished");
    let setup_failure = (!error.text.is_empty()).then(|| Fault::decode(&error.text));
    Ok(Outcome { facts, setup_failure })
}

/// How the program ended, from init's status pipe; a SIGKILL of ours if init could not say.
fn read_status(status_r: &OwnedFd, facts: &mut Facts) {
    let mut status = [0u8; crate::init::STATUS_LEN];
    if let Ok(crate::init::STATUS_LEN) = read(status_r, &mut status) {
        if let Some((ended, cpu)) = crate::init::decode(&status) {
            facts.ended = Some(ended);
            facts.reaped_cpu = cpu;
        }
    }
    if facts.ended.is_none()
        && (facts.killed_for_wall
            || facts.killed_for_cpu
            || facts.client_gone
            || facts.ended_by_caller
            || facts.killed_for_output)
    {
        facts.ended = Some(crate::report::Ended::Signaled(libc::SIGKILL)); // by us, through init
    }
}

/// The sandbox's error pipe: a setup fault, a small record the sandbox writes just before it
/// exits (it fits in the pipe, so the writer never waits for us). Read once the sandbox is
/// reaped, not polled: waking the supervisor when the program starts (end-of-file at its
/// execve) only took a core from the program.
struct ErrorPipe {
    fd: OwnedFd,
    text: Vec<u8>,
}

impl ErrorPipe {
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = read(&self.fd, &mut buf) {
            self.text.extend_from_slice(&buf[..n]);
        }
    }
}

/// What `poll` watches, each fd by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The client went away: kill the sandbox.
    Client,
    /// A signal to relay.
    Signal,
    /// The sandbox's init ended (its pidfd).
    Exit,
}

/// The supervisor's loop: its fds, the limits it enforces, and what it has seen so far.
struct Watcher<'a> {
    /// Declared before `sandbox`: stops (on any return) before the pidfd it uses closes.
    relay: Option<crate::relay::Relay>,
    sandbox: Sandbox,
    signals: SignalFd,
    error: ErrorPipe,
    watch: Option<OwnedFd>,
    cgroup: &'a RunCgroup,
    limits: &'a Limits,
    deadline: Instant,
    /// Set by the caller's first SIGTERM: the program must have ended by then.
    end_by: Option<Instant>,
    facts: Facts,
}

impl Watcher<'_> {
    /// Until the sandbox's init is reaped.
    fn run(&mut self) -> Result<(), Fault> {
        loop {
            let Some(timeout) = self.enforce_limits()? else { continue };
            let ready = self.wait(timeout)?;
            // The order of the handlers is the order of the sources' variants.
            for source in [Source::Client, Source::Signal, Source::Exit] {
                if !ready.contains(&source) {
                    continue;
                }
                match source {
                    Source::Client => self.on_client_gone(),
                    Source::Signal => self.on_signals(),
                    Source::Exit => {
                        self.on_exit()?;
                        return Ok(());
                    }
                }
            }
        }
    }

    fn killed(&self) -> bool {
        self.facts.killed_for_wall || self.facts.killed_for_cpu || self.facts.client_gone || self.facts.ended_by_caller
    }

    /// Kill on the wall-clock or the CPU-time limit; `None` when it just killed, else how
    /// long to wait: until the deadline, and at most as long as the CPU limit could take.
    fn enforce_limits(&mut self) -> Result<Option<Duration>, Fault> {
        if self.killed() {
            return Ok(Some(Duration::from_millis(100)));
        }
        let now = Instant::now();
        if now >= self.deadline {
            self.facts.killed_for_wall = true;
            self.sandbox.kill();
            tracing::debug!(wall_limit = ?self.limits.wall_time, "wall-clock limit: killed");
            return Ok(None);
        }
        if self.end_by.is_some_and(|end_by| now >= end_by) {
            self.facts.ended_by_caller = true;
            self.sandbox.kill();
            tracing::debug!(grace = ?END_GRACE, "outlived the caller's SIGTERM: killed");
            return Ok(None);
        }
        let used = self.cpu_used()?;
        let cpu_limit = self.limits.cpu_time;
        if used >= cpu_limit {
            self.facts.killed_for_cpu = true;
            self.sandbox.kill();
            tracing::debug!(?used, "cpu-time limit: killed");
            return Ok(None);
        }
        // The soonest the limit could be reached, at full quota, but at least every 100 ms.
        let soonest = (cpu_limit - used).mul_f64(1000.0 / self.limits.cpu_quota_millicores.max(1) as f64);
        let wait = self.end_by.unwrap_or(self.deadline).min(self.deadline).saturating_duration_since(now);
        Ok(Some(wait.min(soonest.clamp(Duration::from_millis(5), Duration::from_millis(100)))))
    }

    /// The sandbox's CPU time so far: its cgroup's count, or without one (rootless with
    /// best-effort limits) the sum over its process tree, whose largest reading the report keeps.
    fn cpu_used(&mut self) -> Result<Duration, Fault> {
        if !matches!(self.cgroup, RunCgroup::Absent) {
            return self.cgroup.cpu_usage().map_err(|e| Fault::text(HostStep::Accounting, e));
        }
        let init = self.sandbox.pid.as_raw();
        let used = crate::proctree::cpu_time(std::path::Path::new("/proc"), init)
            .map_err(|e| Fault::text(HostStep::Accounting, format!("/proc/{init}/stat: {e}")))?;
        self.facts.tree_cpu = self.facts.tree_cpu.max(used);
        Ok(self.facts.tree_cpu)
    }

    /// `poll` the sources that are still open; the ones that are ready.
    fn wait(&self, timeout: Duration) -> Result<Vec<Source>, Fault> {
        let mut sources = vec![(Source::Exit, self.sandbox.pidfd.as_fd()), (Source::Signal, self.signals.as_fd())];
        if let Some(w) = self.watch.as_ref().filter(|_| !self.facts.client_gone) {
            sources.push((Source::Client, w.as_fd()));
        }
        let mut fds: Vec<PollFd> = sources.iter().map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)).collect();
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Fault::errno(HostStep::Poll, e)),
        }
        Ok(sources
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|((source, _), _)| *source)
            .collect())
    }

    fn on_client_gone(&mut self) {
        // Nobody is left to talk to the program: it must not run on unattended.
        self.facts.client_gone = true;
        self.sandbox.kill();
        tracing::warn!("the client is gone: sandbox killed");
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            tracing::debug!(signal = info.ssi_signo, "relaying");
            let _ = raw::pidfd_send_signal(self.sandbox.pidfd.as_raw_fd(), info.ssi_signo as i32);
            if info.ssi_signo as i32 == libc::SIGTERM && self.end_by.is_none() {
                self.end_by = Some(Instant::now() + END_GRACE);
            }
            if self.facts.relayed.len() < MAX_RELAYED_RECORDED {
                self.facts.relayed.push(info.ssi_signo as i32);
            }
        }
    }

    fn on_exit(&mut self) -> Result<(), Fault> {
        // The relay's last bytes (and its output count) are in before the verdict; it
        // stops while the sandbox is still a zombie of ours.
        if let Some(relay) = self.relay.take() {
            let seen = relay.stop();
            self.facts.output_bytes = Some(seen.output);
            self.facts.killed_for_output = seen.exceeded;
            self.facts.shutdown_requested = seen.shutdown_requested;
        }
        if matches!(self.cgroup, RunCgroup::Absent) {
            // The last reading: the init is a zombie now, its count holding every process
            // the namespace's end reaped.
            let _ = self.cpu_used();
        }
        nix::sys::wait::waitpid(self.sandbox.pid, None).map_err(|e| Fault::errno(HostStep::Reap, e))?;
        self.sandbox.reaped = true;
        tracing::debug!("sandbox reaped");
        Ok(())
    }
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
        Err(fault) => {
            raw::write_fd(ch.error, &fault.encode());
            raw::exit_now(126) // read by nobody: the fault itself is on the pipe
        }
    }
}

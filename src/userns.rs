//! Which mode the sandbox is built in, and, for rootless mode (issue #17), whether this caller
//! may create user namespaces here, and if not, why not.
//!
//! - **Privileged**: we hold `CAP_SYS_ADMIN` in the initial user namespace (root, sudo, or a
//!   setuid-root install on a host that grants it): real slot uids, the config's cgroups.
//! - **Rootless**: anyone else, e.g. an instructor's server in a container. The sandbox would
//!   be built inside a user namespace that maps one unprivileged uid to the caller; this
//!   module only finds out whether that is possible and, when it is not, names the cause
//!   (the kernel's switch, Debian's or Ubuntu's, or a seccomp filter such as Docker's).
//!
//! The probe forks a child that tries what the sandbox would do (a user namespace with its
//! map, then mount and PID namespaces, a tmpfs, and a fresh procfs in a grandchild that is PID
//! 1 of the new PID namespace) and reports each step's errno over a pipe. It must run before
//! any thread exists (the child uses only raw syscalls, and exits with `_exit`).

use nix::errno::Errno;
use nix::sys::signal::Signal;
use std::ffi::CString;
use std::fmt;
use std::path::Path;

/// How the sandbox is built for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Privileged,
    Rootless,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Privileged => "privileged",
            Mode::Rootless => "rootless",
        }
    }
}

/// The mode, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub mode: Mode,
    pub why: String,
}

/// Privileged only with `CAP_SYS_ADMIN` in the initial user namespace: root inside a container
/// whose runtime dropped it, or inside a user namespace, has no more power over the host than
/// any user, so it is rootless too.
/// Read once per process: what we hold doesn't change while we run (a setuid or sudo
/// caller's own switches of the effective uid come later and are temporary).
pub fn choose() -> Choice {
    static CHOSEN: std::sync::OnceLock<Choice> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            choose_from(
                &std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default(),
                &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
                nix::unistd::geteuid().as_raw(),
            )
        })
        .clone()
}

fn choose_from(uid_map: &str, status: &str, euid: u32) -> Choice {
    const CAP_SYS_ADMIN: u32 = 21;
    let initial = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let admin = cap_eff & (1 << CAP_SYS_ADMIN) != 0;
    let (mode, why) = match (initial, admin) {
        (true, true) => {
            (Mode::Privileged, format!("effective uid {euid} with CAP_SYS_ADMIN in the host's user namespace"))
        }
        (true, false) => (Mode::Rootless, format!("effective uid {euid} without CAP_SYS_ADMIN")),
        (false, _) => (
            Mode::Rootless,
            format!("effective uid {euid} inside a user namespace (its capabilities do not reach the host)"),
        ),
    };
    Choice { mode, why }
}

/// Why this caller can't create a user namespace, or can't use one to build the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forbidden {
    /// `user.max_user_namespaces` is 0 (here, or in an enclosing user namespace): ENOSPC.
    MaxUserNamespaces,
    /// Debian's and older Ubuntus' `kernel.unprivileged_userns_clone = 0`.
    UnprivilegedClone,
    /// Ubuntu 24.04's AppArmor restriction (`kernel.apparmor_restrict_unprivileged_userns`):
    /// the namespace is made, but it grants no capability, so nothing can be mounted in it.
    AppArmor { step: ProbeStep, errno: Errno },
    /// A seccomp filter refuses `unshare(CLONE_NEWUSER)` (Docker's default profile does, with
    /// EPERM) or kills the process that tries (isolate-grade's own sandbox does).
    Seccomp(Refusal),
    /// Something else refused a step.
    Other { step: ProbeStep, errno: Errno },
    /// The probe was killed at a step (not by a seccomp filter we can see).
    Killed { step: ProbeStep, signal: Signal },
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forbidden::MaxUserNamespaces => {
                write!(f, "user namespaces are switched off: user.max_user_namespaces is 0 (here or in an enclosing namespace)")
            }
            Forbidden::UnprivilegedClone => {
                write!(f, "unprivileged user namespaces are switched off: kernel.unprivileged_userns_clone is 0")
            }
            Forbidden::AppArmor { step, errno } => write!(
                f,
                "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1): \
                 {step} failed in one ({errno})"
            ),
            Forbidden::Seccomp(how) => write!(
                f,
                "a seccomp filter on this process refuses to create a user namespace ({how}); Docker's default \
                 profile does this"
            ),
            Forbidden::Other { step, errno } => write!(f, "{step} failed: {errno}"),
            Forbidden::Killed { step, signal } => write!(f, "{step}: the process was killed ({signal})"),
        }
    }
}

/// How a step was refused: an errno, or the process killed by a signal (seccomp's `kill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Errno(Errno),
    Killed(Signal),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Errno(e) => write!(f, "{e}"),
            Refusal::Killed(s) => write!(f, "the process was killed by {s}"),
        }
    }
}

/// What the admin can do about a [`Forbidden`], and the ways that need none of it.
pub const ALTERNATIVES: &str = "run the privileged helper on a grading host instead (as root, through sudo, or \
     installed setuid), grade in a Kubernetes Job (deploy/kubernetes/, with the batch's --external-tasks), or ask \
     the admin to allow unprivileged user namespaces for this container or host";

/// The probe's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProbeStep {
    UserNamespace = 1,
    Map = 2,
    Namespaces = 3,
    Fork = 4,
    Tmpfs = 5,
    Proc = 6,
}

impl ProbeStep {
    fn from_u8(n: u8) -> Option<ProbeStep> {
        [Self::UserNamespace, Self::Map, Self::Namespaces, Self::Fork, Self::Tmpfs, Self::Proc]
            .into_iter()
            .find(|s| *s as u8 == n)
    }
}

impl fmt::Display for ProbeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeStep::UserNamespace => "creating a user namespace",
            ProbeStep::Map => "mapping the caller's uid and gid into it",
            ProbeStep::Namespaces => "creating mount and PID namespaces in it",
            ProbeStep::Fork => "starting PID 1 of the new PID namespace",
            ProbeStep::Tmpfs => "mounting a tmpfs in it",
            ProbeStep::Proc => "mounting a fresh procfs in it",
        })
    }
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Whether a user namespace with a mount namespace and a tmpfs of its own can be made.
    pub userns: Result<(), Forbidden>,
    /// Whether a fresh procfs can be mounted there: `EPERM` where the caller's `/proc` has
    /// masked or read-only paths (a container's), the kernel's "too revealing" check.
    pub proc: Result<(), Errno>,
}

/// The kernel switches that can forbid unprivileged user namespaces, read where they exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switches {
    pub max_user_namespaces: Option<u64>,
    pub unprivileged_userns_clone: Option<u64>,
    pub apparmor_restrict: Option<u64>,
    /// `Seccomp:` of /proc/self/status: 2 when a filter is installed.
    pub seccomp_filter: bool,
}

impl Switches {
    pub fn read() -> Switches {
        let num = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Switches {
            max_user_namespaces: num("/proc/sys/user/max_user_namespaces"),
            unprivileged_userns_clone: num("/proc/sys/kernel/unprivileged_userns_clone"),
            apparmor_restrict: num("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
            seccomp_filter: status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"]),
        }
    }
}

/// Why a step failed, from its errno and the switches: the cause an admin can act on.
fn diagnose(step: ProbeStep, errno: Errno, sw: &Switches) -> Forbidden {
    match (step, errno) {
        (ProbeStep::UserNamespace, Errno::ENOSPC) => Forbidden::MaxUserNamespaces,
        (ProbeStep::UserNamespace, _) if sw.max_user_namespaces == Some(0) => Forbidden::MaxUserNamespaces,
        (ProbeStep::UserNamespace, _) if sw.unprivileged_userns_clone == Some(0) => Forbidden::UnprivilegedClone,
        (ProbeStep::UserNamespace, Errno::EPERM | Errno::ENOSYS | Errno::EACCES) if sw.seccomp_filter => {
            Forbidden::Seccomp(Refusal::Errno(errno))
        }
        (_, Errno::EPERM | Errno::EACCES) if step != ProbeStep::UserNamespace && sw.apparmor_restrict == Some(1) => {
            Forbidden::AppArmor { step, errno }
        }
        _ => Forbidden::Other { step, errno },
    }
}

/// Try it, in a child (see the module's doc). Must be called before any thread exists.
pub fn probe() -> Probe {
    let sw = Switches::read();
    let (found, killed) = match run_probe() {
        Ok(f) => f,
        Err((step, errno)) => return Probe { userns: Err(Forbidden::Other { step, errno }), proc: Err(errno) },
    };
    Probe { userns: judge(&found, killed, &sw), proc: judge_proc(&found, killed, &sw) }
}

/// The first failed step decides (the procfs is judged on its own); a child killed before
/// it reported a step was killed at that step, by a seccomp filter if the signal is SIGSYS.
fn judge(found: &[(ProbeStep, i32)], killed: Option<Signal>, sw: &Switches) -> Result<(), Forbidden> {
    if let Some((step, e)) = found.iter().find(|(s, e)| *s != ProbeStep::Proc && *e != 0) {
        return Err(diagnose(*step, Errno::from_raw(*e), sw));
    }
    if found.iter().any(|(s, _)| *s == ProbeStep::Tmpfs) {
        return Ok(());
    }
    let next = found.last().map_or(Some(ProbeStep::UserNamespace), |(s, _)| ProbeStep::from_u8(*s as u8 + 1));
    let step = next.unwrap_or(ProbeStep::Tmpfs);
    Err(match killed {
        Some(sig @ Signal::SIGSYS) if sw.seccomp_filter => Forbidden::Seccomp(Refusal::Killed(sig)),
        Some(signal) => Forbidden::Killed { step, signal },
        // the grandchild (PID 1 of the namespace) ended without a word
        None => Forbidden::Killed { step, signal: Signal::SIGKILL },
    })
}

fn judge_proc(found: &[(ProbeStep, i32)], killed: Option<Signal>, sw: &Switches) -> Result<(), Errno> {
    match (judge(found, killed, sw), found.iter().find(|(s, _)| *s == ProbeStep::Proc)) {
        (Ok(()), Some((_, 0))) => Ok(()),
        (Ok(()), Some((_, e))) => Err(Errno::from_raw(*e)),
        _ => Err(Errno::EPERM),
    }
}

/// Each step reached, with its errno (0: it worked), and the signal that killed the child if one did.
#[allow(clippy::type_complexity)]
fn run_probe() -> Result<(Vec<(ProbeStep, i32)>, Option<Signal>), (ProbeStep, Errno)> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    // Everything the child needs, made before the fork: it must not allocate.
    let uid = nix::unistd::getuid().as_raw();
    let euid_root = nix::unistd::geteuid().is_root();
    let gid = nix::unistd::getgid().as_raw();
    let uid_map = CString::new(format!("{uid} {uid} 1")).expect("no NUL");
    let gid_map = CString::new(format!("{gid} {gid} 1")).expect("no NUL");
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (setgroups, uid_map_path, gid_map_path) =
        (c("/proc/self/setgroups"), c("/proc/self/uid_map"), c("/proc/self/gid_map"));
    let (deny, tmp, root, tmpfs, proc, target) = (c("deny"), c("/tmp"), c("/"), c("tmpfs"), c("proc"), c("/proc"));
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| (ProbeStep::UserNamespace, e))?;
    // SAFETY: single-threaded (the caller's contract), so the child is a copy of this thread;
    // it only makes raw syscalls on data prepared above, and leaves with _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            let w = w.as_raw_fd();
            let report = |step: ProbeStep, rc: libc::c_int| -> bool {
                let errno = if rc == -1 { Errno::last_raw() } else { 0 };
                let msg = [step as u8, errno as u8];
                // SAFETY: writes two bytes from a live stack array to our own pipe.
                unsafe { libc::write(w, msg.as_ptr().cast(), 2) };
                rc != -1
            };
            let write_file = |path: &CString, text: &CString| -> libc::c_int {
                // SAFETY: open/write/close on NUL-terminated strings that outlive the calls.
                unsafe {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return -1;
                    }
                    let n = libc::write(fd, text.as_ptr().cast(), text.as_bytes().len());
                    libc::close(fd);
                    if n < 0 {
                        -1
                    } else {
                        0
                    }
                }
            };
            // SAFETY: raw syscalls on NUL-terminated strings prepared before the fork, and on
            // nothing else; no allocation, and the child leaves by _exit.
            unsafe {
                // main.rs made us not dumpable, which makes /proc/self/* root's: an unprivileged
                // child's own map files would be closed to it (EACCES). It exits in a moment.
                // Root needs no such thing, and a setuid process is never made dumpable.
                if !euid_root {
                    libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
                }
                if !report(ProbeStep::UserNamespace, libc::unshare(libc::CLONE_NEWUSER)) {
                    libc::_exit(0);
                }
                let mapped = write_file(&setgroups, &deny) == 0
                    && write_file(&uid_map_path, &uid_map) == 0
                    && write_file(&gid_map_path, &gid_map) == 0;
                if !report(ProbeStep::Map, if mapped { 0 } else { -1 }) {
                    libc::_exit(0);
                }
                if !report(ProbeStep::Namespaces, libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID)) {
                    libc::_exit(0);
                }
                let pid = libc::fork();
                if pid == 0 {
                    // PID 1 of the new PID namespace
                    let private = libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    );
                    let rc = if private == 0 {
                        libc::mount(tmpfs.as_ptr(), tmp.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null())
                    } else {
                        private
                    };
                    if report(ProbeStep::Tmpfs, rc) {
                        report(
                            ProbeStep::Proc,
                            libc::mount(
                                proc.as_ptr(),
                                target.as_ptr(),
                                proc.as_ptr(),
                                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                                std::ptr::null(),
                            ),
                        );
                    }
                    libc::_exit(0);
                }
                if !report(ProbeStep::Fork, if pid < 0 { -1 } else { 0 }) {
                    libc::_exit(0);
                }
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                libc::_exit(0);
            }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            let mut bytes = Vec::new();
            let mut file = std::fs::File::from(r);
            let _ = file.read_to_end(&mut bytes);
            let killed = match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => Some(sig),
                _ => None,
            };
            let found =
                bytes.chunks_exact(2).filter_map(|m| ProbeStep::from_u8(m[0]).map(|s| (s, i32::from(m[1])))).collect();
            Ok((found, killed))
        }
        Err(e) => Err((ProbeStep::UserNamespace, e)),
    }
}

/// The caller's cgroup v2 directory, if its process is in a v2 hierarchy (`0::/path` in
/// /proc/self/cgroup) mounted at `mount`.
pub fn own_cgroup(mount: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tx\nCapEff:\t000001ffffffffff\nSeccomp:\t0\n";

    #[test]
    fn privileged_only_with_cap_sys_admin_in_the_initial_user_namespace() {
        let host = "         0          0 4294967295\n";
        assert_eq!(choose_from(host, STATUS, 0).mode, Mode::Privileged);
        // root without CAP_SYS_ADMIN (a container's runtime dropped it)
        let no_admin = STATUS.replace("000001ffffffffff", "00000000a80425fb");
        let c = choose_from(host, &no_admin, 0);
        assert_eq!(c.mode, Mode::Rootless);
        assert!(c.why.contains("without CAP_SYS_ADMIN"), "{}", c.why);
        // every capability, but in a user namespace of its own
        let c = choose_from("         0       1000          1\n", STATUS, 0);
        assert_eq!(c.mode, Mode::Rootless);
        assert!(c.why.contains("inside a user namespace"), "{}", c.why);
        // a user
        assert_eq!(
            choose_from(host, &STATUS.replace("000001ffffffffff", "0000000000000000"), 1000).mode,
            Mode::Rootless
        );
    }

    #[test]
    fn a_probe_killed_before_its_report_is_judged_at_the_step_it_was_on() {
        let filtered = Switches { seccomp_filter: true, ..Default::default() };
        // killed by SIGSYS at the very first step, under a filter: seccomp's kill action
        assert_eq!(
            judge(&[], Some(Signal::SIGSYS), &filtered),
            Err(Forbidden::Seccomp(Refusal::Killed(Signal::SIGSYS)))
        );
        // another signal, or no filter to blame: the step it was on
        assert_eq!(
            judge(&[(ProbeStep::UserNamespace, 0)], Some(Signal::SIGKILL), &filtered),
            Err(Forbidden::Killed { step: ProbeStep::Map, signal: Signal::SIGKILL })
        );
        let ok = [(ProbeStep::UserNamespace, 0), (ProbeStep::Map, 0), (ProbeStep::Namespaces, 0), (ProbeStep::Fork, 0)];
        assert_eq!(
            judge(&ok, None, &Switches::default()),
            Err(Forbidden::Killed { step: ProbeStep::Tmpfs, signal: Signal::SIGKILL })
        );
        // every step: fine, and the procfs judged alone
        let mut all = ok.to_vec();
        all.push((ProbeStep::Tmpfs, 0));
        all.push((ProbeStep::Proc, libc::EPERM));
        assert_eq!(judge(&all, None, &Switches::default()), Ok(()));
        assert_eq!(judge_proc(&all, None, &Switches::default()), Err(Errno::EPERM));
        all.pop();
        all.push((ProbeStep::Proc, 0));
        assert_eq!(judge_proc(&all, None, &Switches::default()), Ok(()));
    }

    #[test]
    fn each_cause_is_named_from_the_errno_and_the_switches() {
        let none = Switches::default();
        assert_eq!(diagnose(ProbeStep::UserNamespace, Errno::ENOSPC, &none), Forbidden::MaxUserNamespaces);
        let debian = Switches { unprivileged_userns_clone: Some(0), ..Default::default() };
        assert_eq!(diagnose(ProbeStep::UserNamespace, Errno::EPERM, &debian), Forbidden::UnprivilegedClone);
        let docker = Switches { seccomp_filter: true, ..Default::default() };
        assert_eq!(
            diagnose(ProbeStep::UserNamespace, Errno::EPERM, &docker),
            Forbidden::Seccomp(Refusal::Errno(Errno::EPERM))
        );
        let ubuntu = Switches { apparmor_restrict: Some(1), ..Default::default() };
        assert_eq!(
            diagnose(ProbeStep::Tmpfs, Errno::EPERM, &ubuntu),
            Forbidden::AppArmor { step: ProbeStep::Tmpfs, errno: Errno::EPERM }
        );
        // without a switch to blame, the step and errno as they are
        assert_eq!(
            diagnose(ProbeStep::Map, Errno::EPERM, &none),
            Forbidden::Other { step: ProbeStep::Map, errno: Errno::EPERM }
        );
        for f in [
            Forbidden::MaxUserNamespaces,
            Forbidden::UnprivilegedClone,
            Forbidden::Seccomp(Refusal::Errno(Errno::EPERM)),
        ] {
            assert!(!f.to_string().is_empty());
        }
    }
}

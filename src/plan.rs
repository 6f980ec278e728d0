//! THE ordered privileged steps, in one function: [`enter_sandbox`].
//!
//! It runs in the sandbox's first process, which the supervisor created with `clone3` in new
//! mount, PID, network, IPC and UTS namespaces (and, on cgroup v2, directly inside the run's
//! cgroup), single-threaded and still root. Each step says why it sits where it does. Every
//! syscall goes through [`Sys`], so `tests` below check this order without root.

use crate::fault::{Cause, Fault};
use crate::mounts::{PreparedBind, PreparedOverlay, Root, RuntimeDir, NOSUID_NODEV};
use crate::policy::{LandlockMode, Limits, ProcMode};
use crate::sys::{Forked, LandlockOutcome, LandlockRules, Pid, Sys, SysError};
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use std::ffi::CString;
use std::fmt;
use std::path::PathBuf;

/// Rootless mode: whom the sandbox's user namespace maps its one uid and gid to (the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outside {
    pub uid: u32,
    pub gid: u32,
}

/// Everything the sandbox needs, prepared (and validated) by the supervisor beforehand.
pub struct Plan {
    /// Empty host directory the new root tmpfs is mounted on (in our mount namespace only).
    pub root_dir: PathBuf,
    /// cgroup v1 `tasks` files of the slot, open for writing (empty on v2).
    pub cgroup_join: Vec<std::os::fd::OwnedFd>,
    pub binds: Vec<PreparedBind>,
    /// A kernel's working directory: the submission beneath a scratch.
    pub overlay: Option<PreparedOverlay>,
    /// A kernel's runtime directory: its connection file and sockets.
    pub runtime: Option<RuntimeDir>,
    pub limits: Limits,
    /// The program's rlimits, (resource, soft, hard): [`rlimits`], and rootless within the
    /// hard limits we were given (only `CAP_SYS_RESOURCE` on the host may raise those).
    pub rlimits: Vec<(Resource, u64, u64)>,
    /// Rootless: the sandbox is in a user namespace of its own, to be mapped to the caller.
    pub rootless: Option<Outside>,
    /// Rootless with a relay: where the sandbox sends its user and network namespaces, for
    /// the relay's [`crate::connector::Connector`] (set by the supervisor).
    pub namespaces: Option<std::os::fd::OwnedFd>,
    pub hostname: String,
    pub workdir: PathBuf,
    pub proc: ProcMode,
    /// Pseudo-terminals in a devpts of the sandbox's own (0: none).
    pub ptys: u32,
    pub uid: u32,
    pub landlock: LandlockMode,
    pub landlock_rules: LandlockRules,
    pub seccomp: Vec<seccompiler::BpfProgram>,
    /// The program, resolved against `PATH` inside the sandbox when it has no `/`.
    pub program: PathBuf,
    pub search_path: Vec<PathBuf>,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// The program's fds 0, 1, 2: the supervisor's pipes ([`crate::stdio`]); `None` only for
    /// `run --tty`, which hands over the caller's.
    pub stdio: Option<[std::os::fd::OwnedFd; 3]>,
}

/// Pipes to the supervisor that survive setup.
#[derive(Debug, Clone, Copy)]
pub struct Channels {
    /// Held open by the supervisor; end-of-file means it died.
    pub alive: i32,
    /// init writes the program's wait status here.
    pub status: i32,
    /// A setup failure is written here; close-on-exec, so end-of-file means `execve` worked.
    pub error: i32,
}

/// The step that failed, for the report's `sandbox_error.step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    UserNamespace,
    Cgroup,
    CgroupNamespace,
    RootFs,
    Tmp,
    Dev,
    Proc,
    Bind(PathBuf),
    Overlay,
    Runtime,
    Seal,
    PivotRoot,
    Hostname,
    Loopback,
    Rlimits,
    Stdio,
    CloseFds,
    Capabilities,
    Identity,
    NoNewPrivs,
    ParentDeath,
    Workdir,
    Fork,
    Session,
    Landlock,
    Seccomp,
    Exec,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Bind(t) => write!(f, "bind {}", t.display()),
            other => write!(f, "{}", format!("{other:?}").to_lowercase()),
        }
    }
}

impl Step {
    /// Every step but [`Step::Bind`], in the order of their tags.
    pub const ALL: [Step; 26] = [
        Step::UserNamespace,
        Step::Cgroup,
        Step::CgroupNamespace,
        Step::RootFs,
        Step::Tmp,
        Step::Dev,
        Step::Proc,
        Step::Overlay,
        Step::Runtime,
        Step::Seal,
        Step::PivotRoot,
        Step::Hostname,
        Step::Loopback,
        Step::Rlimits,
        Step::Stdio,
        Step::CloseFds,
        Step::Capabilities,
        Step::Identity,
        Step::NoNewPrivs,
        Step::ParentDeath,
        Step::Workdir,
        Step::Fork,
        Step::Session,
        Step::Landlock,
        Step::Seccomp,
        Step::Exec,
    ];
    const BIND_TAG: u8 = Step::ALL.len() as u8;

    /// Its number on the error pipe ([`crate::fault::Fault::encode`]).
    pub fn tag(&self) -> u8 {
        match self {
            Step::Bind(_) => Step::BIND_TAG,
            s => Step::ALL.iter().position(|a| a == s).expect("every other step is in ALL") as u8,
        }
    }

    /// The path of a bind step.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Step::Bind(p) => Some(p),
            _ => None,
        }
    }

    pub fn from_tag(tag: u8, path: Option<PathBuf>) -> Option<Step> {
        match (tag, path) {
            (Step::BIND_TAG, Some(p)) => Some(Step::Bind(p)),
            (t, None) => Step::ALL.get(usize::from(t)).cloned(),
            _ => None,
        }
    }
}

trait At<T> {
    fn at(self, step: Step) -> Result<T, Fault>;
}

impl<T, E: Cause> At<T> for Result<T, E> {
    fn at(self, step: Step) -> Result<T, Fault> {
        match self {
            Ok(v) => {
                tracing::trace!(%step, "sandbox step done");
                Ok(v)
            }
            Err(e) => {
                tracing::error!(%step, error = %e, "sandbox step failed");
                Err(Fault::new(step, &e))
            }
        }
    }
}

/// Whether what Landlock managed is enough for the policy: `required` refuses a kernel that
/// enforces none of it; `auto` carries on without (the mount tree still holds).
pub fn landlock_enough(mode: LandlockMode, got: &LandlockOutcome) -> Result<(), SysError> {
    if mode == LandlockMode::Required && *got == LandlockOutcome::Unsupported {
        return Err(SysError::new(
            "landlock",
            "the policy requires Landlock and this kernel does not enforce it",
            Errno::EOPNOTSUPP,
        ));
    }
    Ok(())
}

/// Build the sandbox around ourselves and start the program. Returns `Ok(pid)` in the
/// sandbox's init (PID 1), which then reaps and relays signals ([`crate::init`]); the
/// program's side never returns unless a step failed.
pub fn enter_sandbox<S: Sys>(sys: &S, mut p: Plan, ch: Channels) -> Result<Pid, Fault> {
    use Step::*;
    // 1. Rootless: our user namespace's map, before anything, since until it is written we
    //    are nobody in it: the slot's uid and gid inside, the caller's outside, one each
    //    (setgroups denied first, as the kernel requires of an unprivileged map).
    //    Then, for a kernel's relay, our user and network namespaces to the supervisor: our
    //    own, opened before anything of the submission runs.
    if let Some(outside) = p.rootless {
        sys.map_user_namespace(p.uid, outside).at(UserNamespace)?;
    }
    if let Some(socket) = p.namespaces.take() {
        sys.send_namespaces(std::os::fd::AsRawFd::as_raw_fd(&socket)).at(UserNamespace)?;
    }
    // 2. Into the slot's cgroups (v1; on v2 we were born inside), before anything else runs
    //    and before step 3. Still single-threaded, so moving our thread moves the process.
    for tasks in std::mem::take(&mut p.cgroup_join) {
        sys.join_cgroup(std::os::fd::AsRawFd::as_raw_fd(&tasks)).at(Cgroup)?;
    }
    // 3. A cgroup namespace rooted at the run's cgroup: the host's tree stays hidden.
    sys.unshare(CloneFlags::CLONE_NEWCGROUP).at(CgroupNamespace)?;
    // 4. All mounts private, then a fresh tmpfs root: nothing leaks out to the host, and only
    //    what we mount next is visible.
    let mut root = Root::create(sys, &p.root_dir).at(RootFs)?;
    // 5. The sandbox's own filesystems before the binds, so binds may target beneath /tmp.
    //    Rootless, the devices are the host's, bound: a user namespace can't make any.
    root.tmpfs(sys, "/tmp", p.limits.tmp_size, "1777", NOSUID_NODEV).at(Tmp)?;
    root.dev(sys, p.limits.shm_size, p.ptys, p.rootless.is_some()).at(Dev)?;
    // 6. procfs of our own PID namespace: we are PID 1 here, so it shows only the sandbox.
    root.proc(sys, p.proc).at(Proc)?;
    // 7. The policy's binds, parents first, from fds opened as the caller (rootless: by path,
    //    as the caller we are); then those fds are closed: a host directory fd would outlive
    //    pivot_root as a way back out.
    for b in std::mem::take(&mut p.binds) {
        root.bind(sys, &b).at(Bind(b.target.clone()))?;
    }
    // 8. A kernel's working directory, the submission under a scratch that takes its writes,
    //    and its runtime directory, which only it and the relay can reach.
    if let Some(ov) = p.overlay.take() {
        root.overlay(sys, &ov, p.uid).at(Overlay)?;
    }
    if let Some(rt) = p.runtime.take() {
        root.runtime(sys, &rt, p.uid).at(Runtime)?;
    }
    // 9. Every mount point exists now: make the root itself read-only.
    root.seal(sys).at(Seal)?;
    // Its fds now: step 13 closes everything, and an owned fd must not be closed twice.
    drop(root);
    // 10. Switch to the new root and detach the old one entirely.
    sys.pivot_root(&p.root_dir).at(PivotRoot)?;
    // 11. Network and UTS namespaces are empty: a hostname of ours, and only `lo`, up.
    sys.sethostname(&p.hostname).at(Hostname)?;
    sys.loopback_up().at(Loopback)?;
    // 12. rlimits while we are still root (hard limits can only be lowered afterwards).
    for &(resource, soft, hard) in &p.rlimits {
        sys.setrlimit(resource, soft, hard).at(Rlimits)?;
    }
    // 13. stdio: the supervisor's pipes, never the caller's terminal or files, then close every
    //     other fd but our pipes (the pipes' originals, cgroup dir, slot lock, report file...).
    if let Some(stdio) = p.stdio.take() {
        sys.set_stdio(std::array::from_fn(|i| std::os::fd::AsRawFd::as_raw_fd(&stdio[i]))).at(Stdio)?;
        for original in stdio {
            // closed by the step below, not twice
            let _ = std::os::fd::IntoRawFd::into_raw_fd(original);
        }
    }
    sys.close_fds_except(&[ch.alive, ch.status, ch.error]).at(CloseFds)?;
    // 14. Empty the bounding, ambient and inheritable sets: needs CAP_SETPCAP, so before the
    //     uid change, which then clears the permitted and effective sets.
    sys.drop_capability_bounds().at(Capabilities)?;
    // 15. The slot's own unprivileged uid and gid, real on the host; no supplementary groups.
    //     Rootless: the same ids inside, the caller's outside, whose groups stay (an
    //     unprivileged map can't drop them), and the capabilities the user namespace gave us
    //     are cleared here, since no uid change from 0 clears them.
    if p.rootless.is_none() {
        sys.setgroups_empty().at(Identity)?;
    }
    sys.setresgid(p.uid).at(Identity)?;
    sys.setresuid(p.uid).at(Identity)?;
    if p.rootless.is_some() {
        sys.clear_capabilities().at(Identity)?;
    }
    // 16. Trust, but verify: not one capability left in any set.
    sys.verify_no_capabilities().at(Capabilities)?;
    // 17. No setuid binary or file capability can give anything back.
    sys.set_no_new_privs().at(NoNewPrivs)?;
    // 18. Die with the supervisor. Credential changes clear this, hence only now.
    sys.set_parent_death_kill(ch.alive).at(ParentDeath)?;
    // 19. The working directory, entered as the sandbox user (so it must be accessible).
    sys.chdir(&p.workdir).at(Workdir)?;
    // 20. We stay PID 1 (reaper and signal relay); the child becomes the program.
    if let Forked::Parent(pid) = sys.fork().at(Fork)? {
        return Ok(pid);
    }
    // 21. A new session: no controlling terminal, so no TIOCSTI into the caller's. Default
    //     signal actions and an empty mask: nothing ignored or blocked carries into the program.
    sys.setsid().at(Session)?;
    sys.reset_signals().at(Session)?;
    // 22. Landlock on top of the mount tree (where the kernel has it, or required).
    if p.landlock != LandlockMode::Off {
        let got = sys.landlock(&p.landlock_rules).at(Landlock)?;
        landlock_enough(p.landlock, &got).at(Landlock)?;
    }
    // 23. seccomp last: the filter then only has to allow the program itself, and execve.
    let program = resolve(&p.program, &p.search_path);
    sys.seccomp(&p.seccomp).at(Seccomp)?;
    // 24. Run it.
    Err(sys.execve(&program, &p.argv, &p.env)).at(Exec)
}

/// rlimits for the program, every one of them (soft, hard): none of the caller's carries in,
/// raised or lowered (an nbgrader worker's address-space cap would starve the kernel). NPROC
/// counts per uid, and the uid is the slot's own: a second fence for fork bombs, one above the
/// pids cgroup so that the cgroup (which the report can see) is the one that fires. Memory is
/// the memory cgroup's to limit, so the address space itself is not.
pub fn rlimits(l: &Limits) -> Vec<(Resource, u64, u64)> {
    let same = |r, v| (r, v, v);
    const INFINITY: u64 = libc::RLIM_INFINITY;
    vec![
        same(Resource::RLIMIT_CORE, 0),
        same(Resource::RLIMIT_FSIZE, l.file_size),
        same(Resource::RLIMIT_NOFILE, l.open_files),
        same(Resource::RLIMIT_STACK, l.stack),
        same(Resource::RLIMIT_NPROC, l.pids + 1),
        // Per process, a fence behind the supervisor's cgroup-wide CPU accounting: SIGXCPU a
        // second past the limit, SIGKILL a second later. Either way the verdict is
        // `timeout-cpu` (init reports the CPU its processes used, see report::classify).
        (Resource::RLIMIT_CPU, l.cpu_time.as_secs() + 1, l.cpu_time.as_secs() + 2),
        same(Resource::RLIMIT_AS, INFINITY),
        same(Resource::RLIMIT_DATA, INFINITY),
        same(Resource::RLIMIT_RSS, INFINITY),
        same(Resource::RLIMIT_LOCKS, INFINITY),
        same(Resource::RLIMIT_MEMLOCK, 8 << 20),
        same(Resource::RLIMIT_MSGQUEUE, 819_200),
        same(Resource::RLIMIT_SIGPENDING, 16_384),
        same(Resource::RLIMIT_NICE, 0),
        same(Resource::RLIMIT_RTPRIO, 0),
        same(Resource::RLIMIT_RTTIME, INFINITY),
    ]
}

/// Rootless: each of `wanted` within the hard limit we have (`current(resource)`), since
/// raising one takes `CAP_SYS_RESOURCE` on the host. Lowering is always possible, so every
/// fence still holds; only a limit the policy wanted higher than the caller's stays the
/// caller's.
pub fn within_hard_limits(
    wanted: Vec<(Resource, u64, u64)>,
    current: impl Fn(Resource) -> u64,
) -> Vec<(Resource, u64, u64)> {
    wanted
        .into_iter()
        .map(|(r, soft, hard)| {
            let ceiling = current(r);
            (r, soft.min(ceiling), hard.min(ceiling))
        })
        .collect()
}

/// `execvp`'s search, done ourselves so the path and the error are ours to report.
fn resolve(program: &std::path::Path, search: &[PathBuf]) -> PathBuf {
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return program.to_path_buf();
    }
    for dir in search {
        let candidate = dir.join(program);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
            return candidate;
        }
    }
    program.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    fn plan(root: &std::path::Path) -> Plan {
        let policy = crate::policy::Policy::builtin("default").unwrap();
        Plan {
            root_dir: root.to_path_buf(),
            cgroup_join: vec![],
            binds: vec![],
            overlay: None,
            runtime: None,
            rlimits: rlimits(&policy.limits),
            rootless: None,
            namespaces: None,
            limits: policy.limits,
            hostname: "sandbox".into(),
            workdir: "/tmp".into(),
            proc: ProcMode::PidsOnly,
            ptys: 0,
            uid: 60007,
            landlock: LandlockMode::Auto,
            landlock_rules: LandlockRules::default(),
            seccomp: vec![vec![]],
            program: "/bin/true".into(),
            search_path: vec![],
            argv: vec![CString::new("true").unwrap()],
            env: vec![],
            stdio: None,
        }
    }

    const CH: Channels = Channels { alive: 5, status: 6, error: 7 };

    fn position(calls: &[String], prefix: &str) -> usize {
        calls.iter().position(|c| c.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} in {calls:#?}"))
    }

    /// Rootless: the map before anything, the host's devices bound (no mknod), no setgroups
    /// (denied in the namespace, the caller's groups stay), and the capabilities the user
    /// namespace gave cleared after the uid is set and before they are verified gone.
    #[test]
    fn rootless_steps_map_first_and_clear_the_namespaces_capabilities() {
        let root = tempfile::tempdir().unwrap();
        let sys = FakeSys { root: Some(root.path().into()), ..Default::default() };
        let mut p = plan(root.path());
        p.rootless = Some(Outside { uid: 1000, gid: 1001 });
        let err = enter_sandbox(&sys, p, CH).unwrap_err();
        assert_eq!(err.step, Step::Exec, "{err}");
        let calls = sys.calls();
        assert_eq!(calls[0], "map user namespace 60007 -> 1000:1001", "{calls:#?}");
        assert!(!calls.iter().any(|c| c.starts_with("mknod") || c.starts_with("setgroups")), "{calls:#?}");
        for d in ["null", "zero", "full", "random", "urandom"] {
            assert!(calls.iter().any(|c| c == &format!("bind device /dev/{d} -> /dev/{d}")), "{d}: {calls:#?}");
        }
        for (a, b) in [
            ("setresuid", "clear capabilities"),
            ("clear capabilities", "verify no capabilities"),
            ("drop bounding", "clear capabilities"),
        ] {
            assert!(position(&calls, a) < position(&calls, b), "{a:?} must come before {b:?}:\n{calls:#?}");
        }
        // a failed map stops everything: nothing is mounted as nobody
        let sys = FakeSys { root: Some(root.path().into()), fail_on: Some("map user".into()), ..Default::default() };
        let mut p = plan(root.path());
        p.rootless = Some(Outside { uid: 1000, gid: 1001 });
        assert_eq!(enter_sandbox(&sys, p, CH).unwrap_err().step, Step::UserNamespace);
        assert_eq!(sys.calls().len(), 1);
    }

    /// A rootless kernel: its namespaces go to the supervisor right after the map (before
    /// any mount), and its scratch is made in the sandbox, sent out, then attached beneath
    /// the submission bound by path; nothing of the scratch is sent after the overlay.
    #[test]
    fn a_rootless_kernel_sends_its_namespaces_first_and_makes_its_own_scratch() {
        use crate::mounts::{Lower, PreparedOverlay, Scratch};
        let root = tempfile::tempdir().unwrap();
        let sys = FakeSys { root: Some(root.path().into()), ..Default::default() };
        let mut p = plan(root.path());
        p.rootless = Some(Outside { uid: 1000, gid: 1001 });
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        p.namespaces = Some(a.into());
        p.overlay = Some(PreparedOverlay {
            lower: Lower::Path("/course/submitted/alice/ps1".into()),
            target: "/course/submitted/alice/ps1".into(),
            scratch: Scratch::InSandbox { options: crate::mounts::scratch_options(1 << 20), send: b.into() },
            hide: vec!["problem1.ipynb".into()],
        });
        enter_sandbox(&sys, p, CH).unwrap_err();
        let calls = sys.calls();
        assert_eq!(calls[0], "map user namespace 60007 -> 1000:1001", "{calls:#?}");
        assert_eq!(calls[1], "send our user and network namespaces", "{calls:#?}");
        let made = position(&calls, "make tmpfs size=1048576");
        assert_eq!(calls[made + 1], "send the scratch", "{calls:#?}");
        let lower = position(&calls, "attach /course/submitted/alice/ps1 -> /.overlay/lower ro");
        let whiteout = position(&calls, "mknod /.overlay/upper/problem1.ipynb c 0:0");
        assert!(made < lower && lower < whiteout, "{calls:#?}");
        assert!(position(&calls, "mount overlay") > whiteout, "{calls:#?}");
    }

    #[test]
    fn rootless_rlimits_stay_within_the_hard_limits_given() {
        let wanted = rlimits(&crate::policy::Policy::builtin("default").unwrap().limits);
        let nofile = |v: &[(Resource, u64, u64)]| *v.iter().find(|(r, ..)| *r == Resource::RLIMIT_NOFILE).unwrap();
        let (_, soft, hard) = nofile(&wanted);
        // a caller allowed more keeps the policy's fence, one allowed less keeps theirs
        let roomy = within_hard_limits(wanted.clone(), |_| u64::MAX);
        assert_eq!(nofile(&roomy), (Resource::RLIMIT_NOFILE, soft, hard));
        let tight = within_hard_limits(wanted, |_| 64);
        assert_eq!(nofile(&tight), (Resource::RLIMIT_NOFILE, soft.min(64), 64));
        assert!(tight.iter().all(|&(_, s, h)| s <= 64 && h <= 64));
    }

    /// The documented order holds: each pair is (earlier, later).
    #[test]
    fn privileged_steps_run_in_order() {
        let root = tempfile::tempdir().unwrap();
        let sys = FakeSys { root: Some(root.path().into()), ..Default::default() };
        let mut p = plan(root.path());
        let tasks = tempfile::NamedTempFile::new().unwrap();
        p.cgroup_join = vec![std::fs::File::open(tasks.path()).unwrap().into()];
        let pipes = crate::stdio::pipes().unwrap();
        p.stdio = Some(pipes.sandbox);
        let err = enter_sandbox(&sys, p, CH).unwrap_err();
        assert_eq!(err.step, Step::Exec, "{err}");
        let calls = sys.calls();
        // every rlimit is the sandbox's own, none of the caller's
        for r in [
            "CORE",
            "FSIZE",
            "NOFILE",
            "STACK",
            "NPROC",
            "CPU",
            "AS",
            "DATA",
            "RSS",
            "LOCKS",
            "MEMLOCK",
            "MSGQUEUE",
            "SIGPENDING",
            "NICE",
            "RTPRIO",
            "RTTIME",
        ] {
            assert!(calls.iter().any(|c| c.starts_with(&format!("setrlimit RLIMIT_{r} "))), "RLIMIT_{r}: {calls:#?}");
        }
        let order = [
            ("join cgroup", "unshare CLONE_NEWCGROUP"),
            ("unshare CLONE_NEWCGROUP", "mount none / - [rec,private]"),
            ("mount none / - [rec,private]", "mount tmpfs / tmpfs"),
            ("mount tmpfs /tmp", "mount proc /proc"),
            ("mount proc /proc", "mount none / - [remount,bind,ro"),
            ("mount none / - [remount,bind,ro", "pivot_root"),
            ("pivot_root", "sethostname"),
            ("pivot_root", "loopback up"),
            ("loopback up", "setrlimit"),
            ("setrlimit RLIMIT_NPROC", "setresuid"),
            ("setrlimit", "dup2 stdio"),
            ("dup2 stdio", "close fds"),
            ("close fds", "setresuid"),
            ("drop bounding", "setgroups"),
            ("setgroups", "setresgid"),
            ("setresgid", "setresuid"),
            ("setresuid", "verify no capabilities"),
            ("verify no capabilities", "no_new_privs"),
            ("setresuid", "pdeathsig"),
            ("setresuid", "chdir /tmp"),
            ("pdeathsig", "fork"),
            ("fork", "setsid"),
            ("setsid", "reset signals"),
            ("reset signals", "seccomp"),
            ("setsid", "landlock"),
            ("landlock", "seccomp"),
            ("seccomp", "execve"),
        ];
        for (a, b) in order {
            assert!(position(&calls, a) < position(&calls, b), "{a:?} must come before {b:?}:\n{calls:#?}");
        }
        assert_eq!(calls.last().unwrap(), "execve /bin/true argc=1");
        assert!(
            calls.iter().any(|c| c == "mount proc /proc proc [nosuid,nodev,noexec] hidepid=2,subset=pid"),
            "{calls:#?}"
        );
    }

    /// A policy's ptys: a devpts instance of the sandbox's own under the read-only /dev, capped;
    /// none at all by default.
    #[test]
    fn ptys_are_a_devpts_of_the_sandboxs_own() {
        let devpts = "mount devpts /dev/pts devpts [nosuid,noexec] newinstance,ptmxmode=0666,mode=0600,max=8";
        for ptys in [0, 8] {
            let root = tempfile::tempdir().unwrap();
            let sys = FakeSys { root: Some(root.path().into()), ..Default::default() };
            let mut p = plan(root.path());
            p.ptys = ptys;
            let _ = enter_sandbox(&sys, p, CH);
            let calls = sys.calls();
            if ptys == 0 {
                assert!(!calls.iter().any(|c| c.contains("devpts")), "{calls:#?}");
                continue;
            }
            let at = calls.iter().position(|c| c == devpts).unwrap_or_else(|| panic!("{calls:#?}"));
            assert!(position(&calls, "mount tmpfs /dev/shm") < at, "{calls:#?}");
            assert!(at < position(&calls, "mount none /dev - [remount,bind,ro"), "{calls:#?}");
        }
    }

    #[test]
    fn init_returns_after_fork_without_seccomp() {
        let root = tempfile::tempdir().unwrap();
        let sys = FakeSys { root: Some(root.path().into()), fork_parent: true, ..Default::default() };
        assert!(enter_sandbox(&sys, plan(root.path()), CH).is_ok());
        let calls = sys.calls();
        assert_eq!(calls.last().unwrap(), "fork");
        assert!(!calls.iter().any(|c| c.starts_with("seccomp") || c.starts_with("execve")));
    }

    /// Fail closed: any failing step stops everything after it, and is named.
    #[test]
    fn a_failing_step_stops_the_run_and_is_named() {
        for (fail, step) in [
            ("setresuid", Step::Identity),
            ("drop bounding", Step::Capabilities),
            ("seccomp", Step::Seccomp),
            ("pivot_root", Step::PivotRoot),
            ("mount proc", Step::Proc),
            ("loopback", Step::Loopback),
        ] {
            let root = tempfile::tempdir().unwrap();
            let sys = FakeSys { root: Some(root.path().into()), fail_on: Some(fail.into()), ..Default::default() };
            let err = enter_sandbox(&sys, plan(root.path()), CH).unwrap_err();
            assert_eq!(err.step, step, "{err}");
            assert!(!sys.calls().iter().any(|c| c.starts_with("execve")), "{fail}: {:#?}", sys.calls());
        }
    }

    #[test]
    fn landlock_required_but_missing_refuses() {
        let root = tempfile::tempdir().unwrap();
        let sys = FakeSys {
            root: Some(root.path().into()),
            landlock: Some(LandlockOutcome::Unsupported),
            ..Default::default()
        };
        let mut p = plan(root.path());
        p.landlock = LandlockMode::Required;
        assert_eq!(enter_sandbox(&sys, p, CH).unwrap_err().step, Step::Landlock);
        // auto: carries on without it
        let sys = FakeSys {
            root: Some(root.path().into()),
            landlock: Some(LandlockOutcome::Unsupported),
            ..Default::default()
        };
        let root2 = tempfile::tempdir().unwrap();
        assert_eq!(enter_sandbox(&sys, plan(root2.path()), CH).unwrap_err().step, Step::Exec);
    }

    /// `required` refuses a kernel that enforces none of the rules; `auto` carries on; partial
    /// enforcement (an older ABI) is enough for both.
    #[test]
    fn landlock_is_required_only_where_the_policy_says() {
        use LandlockOutcome::*;
        for (mode, got, ok) in [
            (LandlockMode::Required, Unsupported, false),
            (LandlockMode::Required, Partial, true),
            (LandlockMode::Required, Full, true),
            (LandlockMode::Auto, Unsupported, true),
            (LandlockMode::Auto, Partial, true),
            (LandlockMode::Auto, Full, true),
        ] {
            let r = landlock_enough(mode, &got);
            assert_eq!(r.is_ok(), ok, "{mode:?} {got:?}");
            if let Err(e) = r {
                assert_eq!(e.errno, Errno::EOPNOTSUPP);
            }
        }
        // off: Landlock is not even asked
        let root = tempfile::tempdir().unwrap();
        let sys = FakeSys { root: Some(root.path().into()), ..Default::default() };
        let mut p = plan(root.path());
        p.landlock = LandlockMode::Off;
        let _ = enter_sandbox(&sys, p, CH);
        assert!(!sys.calls().iter().any(|c| c.starts_with("landlock")), "{:#?}", sys.calls());
    }

    /// Every step has its own tag on the error pipe, and comes back from it.
    #[test]
    fn steps_have_distinct_tags() {
        let mut steps = Step::ALL.to_vec();
        steps.push(Step::Bind("/usr".into()));
        let mut tags: Vec<u8> = steps.iter().map(Step::tag).collect();
        for s in &steps {
            assert_eq!(Step::from_tag(s.tag(), s.path().map(Into::into)).as_ref(), Some(s));
        }
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), steps.len());
        assert_eq!(Step::from_tag(Step::BIND_TAG, None), None);
        assert_eq!(Step::from_tag(0, Some("/x".into())), None);
    }

    /// Where another module quotes a step by its number ("plan step 12"), the step of that
    /// number is still the one it means: (file, number, a word of that step's text). A new
    /// quote must be added here.
    #[test]
    fn step_numbers_quoted_elsewhere_still_match() {
        let meant =
            [("src/stdio.rs", 13, "stdio"), ("src/cgroup/mod.rs", 2, "cgroup"), ("src/supervisor.rs", 1, "map")];
        let steps = steps_of_the_code();
        let mut dirs = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        let mut found = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("plan.rs") {
                    continue;
                }
                // comments joined across lines: "(plan\n/// step 12)"
                let text = std::fs::read_to_string(&path).unwrap();
                let words: Vec<&str> =
                    text.split_whitespace().filter(|w| !w.chars().all(|c| c == '/' || c == '!')).collect();
                for w in words.windows(3) {
                    if w[0].ends_with("plan") && w[1] == "step" {
                        let n: usize = w[2].trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0);
                        let rel = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display().to_string();
                        found.push((rel, n));
                    }
                }
            }
        }
        found.sort();
        let mut listed: Vec<(String, usize)> = meant.iter().map(|(f, n, _)| (f.to_string(), *n)).collect();
        listed.sort();
        assert_eq!(found, listed, "a quote of a plan step by number: add it to `meant`, with a word of its step");
        for (file, n, word) in meant {
            let step = steps.get(n - 1).unwrap_or_else(|| panic!("{file}: there is no step {n}"));
            assert!(step.to_lowercase().contains(word), "{file} quotes step {n} for {word:?}, but it is now: {step}");
        }
    }

    /// The numbered steps of [`enter_sandbox`], from its comments.
    fn steps_of_the_code() -> Vec<String> {
        let src = include_str!("plan.rs");
        let body = &src[src.find("pub fn enter_sandbox").unwrap()..src.find("/// rlimits for the program").unwrap()];
        crate::host::tests::numbered_steps(body)
    }

    /// The README's list of steps is generated from the comments above (STYLE: document the
    /// order once, in the code); this fails when they drift apart, and prints the new list.
    #[test]
    fn readme_lists_the_steps_of_the_code() {
        let expected = steps_of_the_code().join("\n");
        let listed = crate::host::tests::readme_list("plan");
        assert_eq!(listed, expected, "update README.md's list of steps to:\n{expected}");
    }
}

//! cgroup v2: one fresh cgroup per run, entered at birth through `CLONE_INTO_CGROUP`.

use super::{
    host_has_swap, kill_listed, mkdir, procs, read, read_key, read_u64, write, CgroupError, CgroupLimits, Result,
    Usage, CONTROLLERS, CPU_PERIOD_US,
};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct RunCgroup {
    pub dir: PathBuf,
    fd: OwnedFd,
}

impl RunCgroup {
    /// `mount/root/name`, limits written, before anything runs in it.
    pub fn create(mount: &Path, root: &Path, name: &str, limits: CgroupLimits) -> Result<RunCgroup> {
        let base = mount.join(root);
        // Our subtree's parent must offer the controllers. We write to no cgroup we did not
        // create, except the one delegated to us: the cgroup this process itself runs in.
        let parent = base.parent().unwrap_or(mount).to_path_buf();
        let missing = not_enabled(&parent)?;
        if !missing.is_empty() {
            if !runs_us(mount, &parent)? {
                return Err(CgroupError::NotDelegated { path: base, parent, missing });
            }
            enable_in_delegated(&parent, missing)?;
        }
        create_below(base, name, limits)
    }

    /// Rootless: `dir/isolate-grade/name` in `dir`, the cgroup delegated to the caller
    /// ([`super::delegation::find`] said so): its controllers enabled by us if they aren't
    /// yet, its own processes moved into its leaf first.
    pub fn create_delegated(dir: &Path, name: &str, limits: CgroupLimits) -> Result<RunCgroup> {
        let missing = not_enabled(dir)?;
        if !missing.is_empty() {
            enable_in_delegated(dir, missing)?;
        }
        create_below(dir.join(RUNS_DIR), name, limits)
    }

    pub fn dir_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn cpu_usage(&self) -> Result<Duration> {
        Ok(Duration::from_micros(read_key(&self.dir.join("cpu.stat"), "usage_usec")?))
    }

    pub fn finish(self) -> Result<Usage> {
        kill(&self.dir)?;
        let usage = usage(&self.dir)?;
        drop(self.fd);
        remove(&self.dir)?;
        Ok(usage)
    }
}

/// `base/name` with its limits written, `base`'s parent enabling the controllers for it.
fn create_below(base: PathBuf, name: &str, limits: CgroupLimits) -> Result<RunCgroup> {
    mkdir(&base)?;
    if !not_enabled(&base)?.is_empty() {
        write(&base.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
    }
    let dir = base.join(name);
    if dir.exists() {
        // Left by a supervisor that was killed: nothing of it may survive.
        tracing::warn!(dir = %dir.display(), "removing a stale cgroup");
        kill(&dir)?;
        remove(&dir)?;
    }
    mkdir(&dir)?;
    let set = || -> Result<()> {
        write(&dir.join("memory.max"), &limits.memory.to_string())?;
        no_swap(&dir, Path::new("/proc/meminfo"))?;
        // memory.oom.group stays 0, as on v1: the OOM killer takes the process that used
        // the memory, and the sandbox's init lives to report how its program ended (with
        // 1 it took init too, and the report had no signal: issue #13). Init ends what is
        // left when the program ends, as on every run.
        write(&dir.join("pids.max"), &limits.pids.to_string())?;
        write(&dir.join("cpu.max"), &format!("{} {CPU_PERIOD_US}", limits.cpu_millicores * CPU_PERIOD_US / 1000))
    };
    if let Err(e) = set() {
        let _ = remove(&dir);
        return Err(e);
    }
    let fd = nix::fcntl::open(
        &dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| CgroupError::Io { path: dir.clone(), source: e.into() })?;
    Ok(RunCgroup { dir, fd })
}

/// Swap off for the run. Where the kernel doesn't account swap there is no `memory.swap.max`:
/// fine on a host without swap, refused on one with it (the memory limit would not hold).
fn no_swap(dir: &Path, meminfo: &Path) -> Result<()> {
    match write(&dir.join("memory.swap.max"), "0") {
        Err(e) if host_has_swap(meminfo) => {
            tracing::error!(error = %e, "memory.swap.max");
            Err(CgroupError::SwapUncontrolled { path: dir.join("memory.swap.max") })
        }
        _ => Ok(()),
    }
}

/// The controllers we need that `dir` does not enable for its children.
fn not_enabled(dir: &Path) -> Result<Vec<String>> {
    let enabled = read(&dir.join("cgroup.subtree_control"))?;
    Ok(CONTROLLERS.iter().filter(|c| !enabled.split_whitespace().any(|e| e == **c)).map(|c| c.to_string()).collect())
}

/// Whether `dir` is the (non-root) cgroup delegated to us: the one this process runs in, or
/// whose `supervisor` leaf it runs in (after an earlier run took it over, or where systemd's
/// `DelegateSubgroup=supervisor` put it).
fn runs_us(mount: &Path, dir: &Path) -> Result<bool> {
    let Some(own) = own_cgroup(&read(Path::new("/proc/self/cgroup"))?).map(|p| mount.join(p)) else {
        return Ok(false);
    };
    Ok(dir != mount && (own == dir || own == dir.join(SUPERVISOR_LEAF)))
}

/// What `create` will find for `root`, read only (for `check`): who enables the controllers,
/// and whether swap can be turned off. An error is what a run would refuse with.
pub fn diagnose(mount: &Path, root: &Path) -> Result<String> {
    let base = mount.join(root);
    let parent = base.parent().unwrap_or(mount).to_path_buf();
    let missing = not_enabled(&parent)?;
    let mut detail = if missing.is_empty() {
        format!("{} enables {CONTROLLERS:?} for {}", parent.display(), base.display())
    } else if runs_us(mount, &parent)? {
        all_offered(&parent, &missing)?;
        format!(
            "{} is the cgroup we run in, delegated to us: the first run moves its processes into {SUPERVISOR_LEAF}/ and enables {missing:?} in it",
            parent.display()
        )
    } else {
        return Err(CgroupError::NotDelegated { path: base, parent, missing });
    };
    // memory.swap.max exists in every non-root cgroup when swap is accounted.
    if host_has_swap(Path::new("/proc/meminfo")) {
        let probe = if parent != mount { parent.clone() } else { base.clone() };
        if probe.is_dir() && !probe.join("memory.swap.max").exists() {
            return Err(CgroupError::SwapUncontrolled { path: probe.join("memory.swap.max") });
        }
        detail.push_str("; the host has swap, turned off for each run (memory.swap.max)");
    }
    Ok(detail)
}

/// `dir`'s parent offers it every one of `wanted` (`cgroup.controllers`); else the refusal
/// naming those it doesn't.
fn all_offered(dir: &Path, wanted: &[String]) -> Result<()> {
    let offered = read(&dir.join("cgroup.controllers"))?;
    let missing: Vec<String> =
        wanted.iter().filter(|c| !offered.split_whitespace().any(|o| o == *c)).cloned().collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CgroupError::NotDelegated { path: dir.into(), parent: dir.parent().unwrap_or(dir).to_path_buf(), missing })
}

/// Our cgroup, relative to the v2 mount, from `/proc/self/cgroup`'s `0::` line.
pub fn own_cgroup(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(|p| PathBuf::from(p.trim_start_matches('/')))
}

/// Where a delegated cgroup's own processes go, so that its controllers can be enabled for its
/// children: systemd's `DelegateSubgroup=supervisor` puts a service's processes there itself.
pub const SUPERVISOR_LEAF: &str = "supervisor";

/// Rootless: the runs' cgroups in the delegated cgroup, beside [`SUPERVISOR_LEAF`].
pub const RUNS_DIR: &str = "isolate-grade";

/// The cgroup we run in was delegated to us (systemd's `Delegate=yes`): its parent offers the
/// controllers, its own `subtree_control` is empty, and it holds our processes, which v2's
/// "no internal processes" rule forbids once controllers are enabled below it. As container
/// runtimes do: move every process of it into a leaf, `supervisor`, then enable the
/// controllers. Nothing above `dir` is written.
fn enable_in_delegated(dir: &Path, missing: Vec<String>) -> Result<()> {
    all_offered(dir, &missing)?;
    let leaf = dir.join(SUPERVISOR_LEAF);
    mkdir(&leaf)?;
    let want: String = missing.iter().map(|c| format!("+{c} ")).collect();
    // Processes forked meanwhile are born in `dir` until their parent has moved: retry.
    let mut last = None;
    for _ in 0..50 {
        for pid in procs(dir)? {
            match write(&leaf.join("cgroup.procs"), &pid.to_string()) {
                // gone meanwhile
                Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {}
                other => other?,
            }
        }
        match write(&dir.join("cgroup.subtree_control"), want.trim_end()) {
            Ok(()) => {
                tracing::info!(cgroup = %dir.display(), leaf = %leaf.display(), "moved the delegated cgroup's processes into a leaf and enabled its controllers");
                return Ok(());
            }
            Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => last = Some(source),
            Err(e) => return Err(e),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(CgroupError::Io { path: dir.join("cgroup.subtree_control"), source: last.expect("set in loop") })
}

fn usage(dir: &Path) -> Result<Usage> {
    Ok(Usage {
        cpu: Duration::from_micros(read_key(&dir.join("cpu.stat"), "usage_usec")?),
        // memory.peak exists since Linux 5.19
        peak_memory: read_u64(&dir.join("memory.peak")).ok(),
        oom_kills: read_key(&dir.join("memory.events"), "oom_kill")?,
        pids_limit_hits: read_key(&dir.join("pids.events"), "max")?,
    })
}

/// `cgroup.kill` (Linux 5.14+) kills atomically, forks included; then wait until empty.
fn kill(dir: &Path) -> Result<()> {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        write(&kill_file, "1")?;
    }
    kill_listed(dir)
}

/// rmdir; the kernel may take a moment to release a cgroup whose last process just died.
fn remove(dir: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(CgroupError::Io { path: dir.into(), source: last.expect("set in loop") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_mount(controllers: &str) -> tempfile::TempDir {
        let m = tempfile::tempdir().unwrap();
        std::fs::write(m.path().join("cgroup.subtree_control"), controllers).unwrap();
        m
    }

    const LIMITS: CgroupLimits = CgroupLimits { memory: 256 << 20, pids: 32, cpu_millicores: 500 };

    #[test]
    fn writes_limits_into_a_fresh_cgroup() {
        let m = fake_mount("cpuset cpu io memory pids\n");
        std::fs::create_dir(m.path().join("ig")).unwrap();
        std::fs::write(m.path().join("ig/cgroup.subtree_control"), "").unwrap();
        let c = RunCgroup::create(m.path(), Path::new("ig"), "slot-3", LIMITS).unwrap();
        let d = m.path().join("ig/slot-3");
        let get = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(get("memory.max"), "268435456");
        assert_eq!(get("memory.swap.max"), "0");
        assert!(!d.join("memory.oom.group").exists(), "memory.oom.group is left at 0");
        assert_eq!(get("pids.max"), "32");
        assert_eq!(get("cpu.max"), "50000 100000");
        assert_eq!(std::fs::read_to_string(m.path().join("ig/cgroup.subtree_control")).unwrap(), "+memory +pids +cpu");
        assert_eq!(c.dir, d);
    }

    #[test]
    fn refuses_when_controllers_are_not_delegated_and_touches_nothing() {
        let m = fake_mount("cpu io\n");
        let e = match RunCgroup::create(m.path(), Path::new("ig"), "slot-0", LIMITS) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        };
        assert!(matches!(&e, CgroupError::NotDelegated { missing, .. } if missing == &["memory", "pids"]), "{e}");
        assert!(!m.path().join("ig").exists());
        assert_eq!(std::fs::read_to_string(m.path().join("cgroup.subtree_control")).unwrap(), "cpu io\n");
    }

    #[test]
    fn own_cgroup_is_the_unified_line() {
        assert_eq!(own_cgroup("0::/system.slice/grader.service\n"), Some(PathBuf::from("system.slice/grader.service")));
        assert_eq!(own_cgroup("12:memory:/x\n0::/\n"), Some(PathBuf::from("")));
        assert_eq!(own_cgroup("12:memory:/x\n"), None);
    }

    /// A delegated cgroup (offered the controllers by its parent, none enabled by itself):
    /// a leaf is made for its processes and the controllers are enabled, in it and below only.
    #[test]
    fn a_delegated_cgroup_gets_a_leaf_and_its_controllers() {
        let m = fake_mount("cpu io memory pids\n");
        let svc = m.path().join("svc");
        std::fs::create_dir(&svc).unwrap();
        for (f, v) in
            [("cgroup.subtree_control", ""), ("cgroup.controllers", "cpu io memory pids\n"), ("cgroup.procs", "")]
        {
            std::fs::write(svc.join(f), v).unwrap();
        }
        enable_in_delegated(&svc, not_enabled(&svc).unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(svc.join("cgroup.subtree_control")).unwrap(), "+memory +pids +cpu");
        assert!(svc.join("supervisor").is_dir());
        assert_eq!(std::fs::read_to_string(m.path().join("cgroup.subtree_control")).unwrap(), "cpu io memory pids\n");
        // a parent that does not offer them: refused, with the parent named
        std::fs::write(svc.join("cgroup.controllers"), "cpu io\n").unwrap();
        std::fs::write(svc.join("cgroup.subtree_control"), "").unwrap();
        let e = enable_in_delegated(&svc, not_enabled(&svc).unwrap()).unwrap_err();
        assert!(matches!(&e, CgroupError::NotDelegated { missing, .. } if missing == &["memory", "pids"]), "{e}");
    }

    /// Rootless, in the delegated cgroup: controllers enabled there (its processes in the
    /// leaf) and in `isolate-grade`, the run's limits written in `isolate-grade/slot-N`.
    #[test]
    fn a_delegated_cgroup_takes_the_run_below_its_runs_dir() {
        let m = fake_mount("cpu io memory pids\n");
        let d = m.path().join("user@1000.service/app.slice/run-u7.service");
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in
            [("cgroup.subtree_control", ""), ("cgroup.controllers", "cpu memory pids\n"), ("cgroup.procs", "")]
        {
            std::fs::write(d.join(f), v).unwrap();
        }
        std::fs::create_dir(d.join(RUNS_DIR)).unwrap();
        std::fs::write(d.join(RUNS_DIR).join("cgroup.subtree_control"), "").unwrap();
        let c = RunCgroup::create_delegated(&d, "slot-1", LIMITS).unwrap();
        assert_eq!(c.dir, d.join("isolate-grade/slot-1"));
        assert_eq!(std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap(), "+memory +pids +cpu");
        assert!(d.join(SUPERVISOR_LEAF).is_dir());
        assert_eq!(std::fs::read_to_string(c.dir.join("memory.max")).unwrap(), "268435456");
        assert_eq!(std::fs::read_to_string(c.dir.join("pids.max")).unwrap(), "32");
        assert_eq!(std::fs::read_to_string(c.dir.join("cpu.max")).unwrap(), "50000 100000");
    }

    /// A kernel that doesn't account swap has no `memory.swap.max` (here: it can't be
    /// written): on a host with swap the run is refused; without swap it goes on. (Debian's 6.1
    /// ignores `swapaccount=0`, so this can't be staged in the VM.)
    #[test]
    fn refuses_when_swap_cannot_be_turned_off_on_a_host_with_swap() {
        let d = tempfile::tempdir().unwrap();
        let (with_swap, without) = (d.path().join("meminfo"), d.path().join("meminfo-noswap"));
        std::fs::write(&with_swap, "MemTotal: 1000 kB\nSwapTotal: 524284 kB\n").unwrap();
        std::fs::write(&without, "MemTotal: 1000 kB\nSwapTotal: 0 kB\n").unwrap();
        let cg = d.path().join("slot-0");
        std::fs::create_dir_all(cg.join("memory.swap.max")).unwrap(); // unwritable
        assert!(matches!(no_swap(&cg, &with_swap), Err(CgroupError::SwapUncontrolled { .. })));
        no_swap(&cg, &without).unwrap();
        std::fs::remove_dir(cg.join("memory.swap.max")).unwrap();
        no_swap(&cg, &with_swap).unwrap();
        assert_eq!(std::fs::read_to_string(cg.join("memory.swap.max")).unwrap(), "0");
    }

    /// `check`'s reading: fine where the parent enables the controllers, refused (with what
    /// a run would say) where it doesn't and it is not the cgroup we run in.
    #[test]
    fn diagnose_says_what_a_run_would_find() {
        let m = fake_mount("cpu memory pids\n");
        let d = diagnose(m.path(), Path::new("ig")).unwrap();
        assert!(d.contains("enables [\"memory\", \"pids\", \"cpu\"]"), "{d}");
        let m = fake_mount("cpu\n");
        std::fs::create_dir(m.path().join("svc")).unwrap();
        std::fs::write(m.path().join("svc/cgroup.subtree_control"), "").unwrap();
        let e = diagnose(m.path(), Path::new("svc/ig")).unwrap_err();
        assert!(matches!(&e, CgroupError::NotDelegated { missing, .. } if missing.len() == 3), "{e}");
        assert!(!m.path().join("svc/ig").exists() && !m.path().join("svc/supervisor").exists());
    }

    #[test]
    fn reads_usage_counters() {
        let d = tempfile::tempdir().unwrap();
        for (f, v) in [
            ("cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n"),
            ("memory.peak", "1048576\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("pids.events", "max 7\n"),
        ] {
            std::fs::write(d.path().join(f), v).unwrap();
        }
        let u = usage(d.path()).unwrap();
        assert_eq!(
            u,
            Usage { cpu: Duration::from_millis(1500), peak_memory: Some(1 << 20), oom_kills: 1, pids_limit_hits: 7 }
        );
        std::fs::write(d.path().join("pids.events"), "garbage").unwrap();
        assert!(matches!(usage(d.path()), Err(CgroupError::Parse { .. })));
    }

    /// The real, empty cgroup2 mount of a hybrid host (as on the CI machine): the v2 backend
    /// must refuse, with the missing controllers named, and leave nothing behind.
    #[test]
    fn real_empty_v2_mount_is_refused() {
        let h = super::super::Hierarchies::read(Path::new("/proc/self/mountinfo")).unwrap();
        let Some(mount) = h.v2.clone() else { return };
        if !h.v2_controllers().is_empty() {
            return; // a real v2 host: covered by the integration tests
        }
        let root = PathBuf::from(format!("isolate-grade-test-{}", std::process::id()));
        let e = match RunCgroup::create(&mount, &root, "slot-0", LIMITS) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        };
        assert!(matches!(&e, CgroupError::NotDelegated { missing, .. } if missing.len() == 3), "{e}");
        assert!(!mount.join(&root).exists());
    }
}

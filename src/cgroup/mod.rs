//! Cgroup limits for one run: memory (swap off), CPU bandwidth, pids, and the counters the
//! report needs (CPU time, peak memory, OOM kills, pids-limit hits), on cgroup v2 or v1.
//!
//! - **v2**: a fresh `<root>/slot-N` per run, created before the program starts and removed
//!   after; the sandbox is born inside it with `clone3(CLONE_INTO_CGROUP)`, so no
//!   `cgroup.procs` write (and no RCU-grace-period stall) is on the per-run path.
//! - **v1**: `<hierarchy>/<root>/slot-N` in the memory, pids, cpu and cpuacct hierarchies,
//!   kept per slot and reused: counters are reset and the group is checked empty between runs.
//!   v1 has no clone-into, and a write of a pid to `cgroup.procs` takes the global
//!   threadgroup rwsem, whose RCU grace period stalls it 6-15 ms on the CI host. Instead, the
//!   sandbox's first process, still single-threaded, writes `0` to each hierarchy's `tasks`
//!   (plan step 2): a thread moving itself skips that lock (measured: 0.6 ms for all four
//!   hierarchies, against 9 ms), and with one thread, the thread is the whole process.
//!
//! Rootless mode (no privilege) has a cgroup only in a cgroup v2 subtree delegated to the
//! caller: [`delegation`] finds it, [`RunCgroup::create_delegated`] makes the run's there.
//!
//! We write only inside our own subtree: controllers must already be enabled for it by its
//! parent (v2), otherwise we refuse with a message saying which are missing. The cgroups-rs
//! crate was not used because it fixes the hierarchy paths (no fake cgroupfs in tests) and
//! enables controllers in ancestors it did not create.

pub mod delegation;
pub mod detect;
pub mod v1;
pub mod v2;

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use detect::{Backend, Hierarchies, CONTROLLERS};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: unexpected content {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    #[error("cgroup v2 at {path}: controllers {missing:?} are not enabled for it (enable them in {parent}/cgroup.subtree_control; or run isolate-grade in a systemd service with Delegate=yes and set cgroup_root below the service's own cgroup: isolate-grade then moves the service's processes into a leaf, supervisor, and enables them itself)")]
    NotDelegated { path: PathBuf, parent: PathBuf, missing: Vec<String> },
    #[error("swap cannot be disabled for the sandbox ({path} is not available) and this host has swap")]
    SwapUncontrolled { path: PathBuf },
    #[error("{path}: processes of an earlier run are still there after being killed")]
    NotEmpty { path: PathBuf },
    #[error(
        "rootless: no cgroup v2 subtree is delegated to this caller (uid {uid}): {}",
        tried.iter().map(|t| t.to_string()).collect::<Vec<_>>().join("; ")
    )]
    NoDelegation { uid: u32, tried: Vec<delegation::Tried> },
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// What a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory: u64,
    pub pids: u64,
    pub cpu_millicores: u64,
}

/// What a run used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu: Duration,
    pub peak_memory: Option<u64>,
    pub oom_kills: u64,
    pub pids_limit_hits: u64,
}

/// The CFS period for CPU bandwidth: 100 ms, the kernel default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The cgroup of one run.
pub enum RunCgroup {
    V1(v1::SlotCgroup),
    V2(v2::RunCgroup),
    /// None at all: rootless mode without a delegated cgroup, where the policy accepted
    /// best-effort limits (`[sandbox] limits = "best-effort"`). Memory and pids are then not
    /// capped, and CPU time is counted and limited per process (`RLIMIT_CPU`), from what the
    /// sandbox's init reaped; the report says so.
    Absent,
}

impl RunCgroup {
    pub fn create(backend: &Backend, root: &Path, slot: u32, limits: CgroupLimits) -> Result<RunCgroup> {
        let name = format!("slot-{slot}");
        Ok(match backend {
            Backend::V2 { mount } => RunCgroup::V2(v2::RunCgroup::create(mount, root, &name, limits)?),
            Backend::V1 { mounts } => RunCgroup::V1(v1::SlotCgroup::create(mounts, root, &name, limits)?),
        })
    }

    /// Rootless: in the subtree delegated to the caller, `dir/isolate-grade/slot-N`
    /// ([`delegation`]); v2 only.
    pub fn create_delegated(d: &delegation::Delegation, slot: u32, limits: CgroupLimits) -> Result<RunCgroup> {
        Ok(RunCgroup::V2(v2::RunCgroup::create_delegated(&d.dir, &format!("slot-{slot}"), limits)?))
    }

    /// The directory fd for `clone3(CLONE_INTO_CGROUP)` (v2 only).
    pub fn clone_into_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            RunCgroup::V2(c) => Some(c.dir_fd()),
            RunCgroup::V1(_) | RunCgroup::Absent => None,
        }
    }

    /// Files the sandbox writes `0` to, to join (v1 only; on v2 it is born inside).
    pub fn join_files(&self) -> Result<Vec<std::os::fd::OwnedFd>> {
        match self {
            RunCgroup::V1(c) => c.join_files(),
            RunCgroup::V2(_) | RunCgroup::Absent => Ok(vec![]),
        }
    }

    pub fn cpu_usage(&self) -> Result<Duration> {
        match self {
            RunCgroup::V1(c) => c.cpu_usage(),
            RunCgroup::V2(c) => c.cpu_usage(),
            RunCgroup::Absent => Ok(Duration::ZERO),
        }
    }

    /// Kill everything inside, wait until it is empty, read the counters and clean up.
    pub fn finish(self) -> Result<Usage> {
        match self {
            RunCgroup::V1(c) => c.finish(),
            RunCgroup::V2(c) => c.finish(),
            // the PID namespace's end (its init reaped) ended everything in it
            RunCgroup::Absent => Ok(Usage::default()),
        }
    }

    pub fn version(&self) -> &'static str {
        match self {
            RunCgroup::V1(_) => "v1",
            RunCgroup::V2(_) => "v2",
            RunCgroup::Absent => "none",
        }
    }
}

// ---- small file helpers shared by v1 and v2; every error carries its path ----

pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    tracing::trace!(path = %path.display(), value, "cgroup write");
    std::fs::write(path, value).map_err(|source| CgroupError::Io { path: path.into(), source })
}

pub(crate) fn read(path: &Path) -> Result<String> {
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|source| CgroupError::Io { path: path.into(), source })?;
    Ok(s)
}

pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let s = read(path)?;
    s.trim().parse().map_err(|_| CgroupError::Parse { path: path.into(), content: s })
}

/// The value of `key` in a flat-keyed file (`memory.events`, `cpu.stat`, `pids.events`).
pub(crate) fn read_key(path: &Path, key: &str) -> Result<u64> {
    let s = read(path)?;
    for line in s.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            if let Some(v) = it.next().and_then(|v| v.parse().ok()) {
                return Ok(v);
            }
        }
    }
    Err(CgroupError::Parse { path: path.into(), content: s })
}

pub(crate) fn mkdir(path: &Path) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Io { path: path.into(), source }),
    }
}

pub(crate) fn procs(dir: &Path) -> Result<Vec<i32>> {
    Ok(read(&dir.join("cgroup.procs"))?.split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

/// SIGKILL every process listed until none is left (bounded: 2 s).
pub(crate) fn kill_listed(dir: &Path) -> Result<()> {
    for _ in 0..200 {
        let pids = procs(dir)?;
        if pids.is_empty() {
            return Ok(());
        }
        // A pid read from the list may die and be reused by a stranger before we signal it: pin
        // each process with a pidfd first, then signal only those the list still names.
        let pinned: Vec<(i32, std::os::fd::OwnedFd)> =
            pids.into_iter().filter_map(|pid| crate::sys::raw::pidfd_open(pid).ok().map(|fd| (pid, fd))).collect();
        let still = procs(dir)?;
        for (pid, fd) in &pinned {
            if still.contains(pid) {
                let _ = crate::sys::raw::pidfd_send_signal(std::os::fd::AsRawFd::as_raw_fd(fd), libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(CgroupError::NotEmpty { path: dir.into() })
}

/// Whether the host has swap (then the sandbox must be able to turn it off).
pub(crate) fn host_has_swap(meminfo: &Path) -> bool {
    std::fs::read_to_string(meminfo)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("SwapTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .is_none_or(|kb| kb > 0)
}

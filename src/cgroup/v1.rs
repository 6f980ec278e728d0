//! cgroup v1: a per-slot cgroup in each of the memory, pids, cpu and cpuacct hierarchies,
//! reused between runs of that slot (its counters reset, and checked empty, each time).

use super::{
    host_has_swap, kill_listed, mkdir, procs, read, read_key, read_u64, write, CgroupError, CgroupLimits, Result,
    Usage, CPU_PERIOD_US,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct SlotCgroup {
    /// controller → this slot's directory in that controller's hierarchy
    dirs: BTreeMap<String, PathBuf>,
    /// counters that cannot be reset, as they were before the run
    oom_kills_before: u64,
    pids_max_before: u64,
}

impl SlotCgroup {
    pub fn create(
        mounts: &BTreeMap<String, PathBuf>,
        root: &Path,
        name: &str,
        limits: CgroupLimits,
    ) -> Result<SlotCgroup> {
        let mut dirs = BTreeMap::new();
        for (controller, mount) in mounts {
            let base = mount.join(root);
            mkdir(&base)?;
            let dir = base.join(name);
            mkdir(&dir)?;
            dirs.insert(controller.clone(), dir);
        }
        let c = SlotCgroup { dirs, oom_kills_before: 0, pids_max_before: 0 };
        // A supervisor killed mid-run may have left processes here: none may survive.
        for dir in c.distinct_dirs() {
            if !procs(&dir)?.is_empty() {
                tracing::warn!(dir = %dir.display(), "killing processes left by an earlier run");
                kill_listed(&dir)?;
            }
        }
        let mem = c.dir("memory");
        // Raising: memsw first (it must stay >= the limit); lowering: the limit first.
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        let limit = limits.memory.to_string();
        if memsw.exists() {
            if write(&memsw, &limit).is_err() {
                write(&mem.join("memory.limit_in_bytes"), &limit)?;
                write(&memsw, &limit)?;
            }
            write(&mem.join("memory.limit_in_bytes"), &limit)?;
        } else {
            if host_has_swap(Path::new("/proc/meminfo")) {
                return Err(CgroupError::SwapUncontrolled { path: memsw });
            }
            write(&mem.join("memory.limit_in_bytes"), &limit)?;
        }
        write(&mem.join("memory.max_usage_in_bytes"), "0")?;
        write(&c.dir("pids").join("pids.max"), &limits.pids.to_string())?;
        let cpu = c.dir("cpu");
        write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write(&cpu.join("cpu.cfs_quota_us"), &(limits.cpu_millicores * CPU_PERIOD_US / 1000).to_string())?;
        write(&c.dir("cpuacct").join("cpuacct.usage"), "0")?;
        Ok(SlotCgroup {
            oom_kills_before: oom_kills(&mem)?,
            pids_max_before: read_key(&c.dir("pids").join("pids.events"), "max")?,
            ..c
        })
    }

    fn dir(&self, controller: &str) -> PathBuf {
        self.dirs[controller].clone()
    }

    /// cpu and cpuacct are often one hierarchy: each directory once.
    fn distinct_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.dirs.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    /// Each hierarchy's `tasks`, opened for writing here (by root, before the clone), for the
    /// sandbox to write `0` to: see the module docs of [`super`].
    pub fn join_files(&self) -> Result<Vec<std::os::fd::OwnedFd>> {
        self.distinct_dirs()
            .into_iter()
            .map(|dir| {
                let path = dir.join("tasks");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(|source| CgroupError::Io { path, source })
            })
            .collect()
    }

    pub fn cpu_usage(&self) -> Result<Duration> {
        Ok(Duration::from_nanos(read_u64(&self.dir("cpuacct").join("cpuacct.usage"))?))
    }

    pub fn finish(self) -> Result<Usage> {
        for dir in self.distinct_dirs() {
            kill_listed(&dir)?;
        }
        let mem = self.dir("memory");
        Ok(Usage {
            cpu: self.cpu_usage()?,
            peak_memory: read_u64(&mem.join("memory.max_usage_in_bytes")).ok(),
            oom_kills: oom_kills(&mem)?.saturating_sub(self.oom_kills_before),
            pids_limit_hits: read_key(&self.dir("pids").join("pids.events"), "max")?
                .saturating_sub(self.pids_max_before),
        })
    }
}

/// `oom_kill` in `memory.oom_control` (Linux 4.13+); 0 where the kernel does not count.
fn oom_kills(mem: &Path) -> Result<u64> {
    let f = mem.join("memory.oom_control");
    let text = read(&f)?;
    Ok(text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok())).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake v1 cgroupfs with separate cpu and cpuacct hierarchies, as on the CI host.
    fn fake() -> (tempfile::TempDir, BTreeMap<String, PathBuf>) {
        let t = tempfile::tempdir().unwrap();
        let mut mounts = BTreeMap::new();
        for c in ["memory", "pids", "cpu", "cpuacct"] {
            let dir = t.path().join(c).join("ig/slot-2");
            std::fs::create_dir_all(&dir).unwrap();
            let files: &[(&str, &str)] = match c {
                "memory" => &[
                    ("memory.memsw.limit_in_bytes", "9223372036854771712"),
                    ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
                ],
                "pids" => &[("pids.events", "max 5\n")],
                _ => &[],
            };
            for (f, v) in files.iter().chain(&[("cgroup.procs", "")]) {
                std::fs::write(dir.join(f), v).unwrap();
            }
            mounts.insert(c.to_string(), t.path().join(c));
        }
        (t, mounts)
    }

    const LIMITS: CgroupLimits = CgroupLimits { memory: 512 << 20, pids: 64, cpu_millicores: 1500 };

    #[test]
    fn writes_limits_and_resets_counters() {
        let (t, mounts) = fake();
        let c = SlotCgroup::create(&mounts, Path::new("ig"), "slot-2", LIMITS).unwrap();
        let get = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap();
        assert_eq!(get("memory/ig/slot-2/memory.limit_in_bytes"), "536870912");
        assert_eq!(get("memory/ig/slot-2/memory.memsw.limit_in_bytes"), "536870912");
        assert_eq!(get("memory/ig/slot-2/memory.max_usage_in_bytes"), "0");
        assert_eq!(get("pids/ig/slot-2/pids.max"), "64");
        assert_eq!(get("cpu/ig/slot-2/cpu.cfs_quota_us"), "150000");
        assert_eq!(get("cpu/ig/slot-2/cpu.cfs_period_us"), "100000");
        assert_eq!(get("cpuacct/ig/slot-2/cpuacct.usage"), "0");
        for h in ["memory", "pids", "cpu", "cpuacct"] {
            std::fs::write(t.path().join(format!("{h}/ig/slot-2/tasks")), "").unwrap();
        }
        let files = c.join_files().unwrap();
        assert_eq!(files.len(), 4, "one per distinct hierarchy");
    }

    #[test]
    fn usage_is_relative_to_the_start_of_the_run() {
        let (t, mounts) = fake();
        let c = SlotCgroup::create(&mounts, Path::new("ig"), "slot-2", LIMITS).unwrap();
        let put = |f: &str, v: &str| std::fs::write(t.path().join(f), v).unwrap();
        // the run: counters move, the group empties
        put("memory/ig/slot-2/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
        put("memory/ig/slot-2/memory.max_usage_in_bytes", "1234");
        put("pids/ig/slot-2/pids.events", "max 5\n");
        put("cpuacct/ig/slot-2/cpuacct.usage", "2500000000");
        for h in ["memory", "pids", "cpu", "cpuacct"] {
            put(&format!("{h}/ig/slot-2/cgroup.procs"), "");
        }
        let u = c.finish().unwrap();
        assert_eq!(
            u,
            Usage { cpu: Duration::from_millis(2500), peak_memory: Some(1234), oom_kills: 1, pids_limit_hits: 0 }
        );
    }
}

//! Which cgroup hierarchies this host has, read from `/proc/self/mountinfo` (injectable).

use super::{CgroupError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Controllers a run needs.
pub const CONTROLLERS: &[&str] = &["memory", "pids", "cpu"];
/// v1 keeps CPU accounting in a controller of its own.
pub const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuacct"];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hierarchies {
    /// Mount point of the cgroup2 filesystem, if any.
    pub v2: Option<PathBuf>,
    /// v1 controller name → mount point of its hierarchy.
    pub v1: BTreeMap<String, PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    V2 { mount: PathBuf },
    V1 { mounts: BTreeMap<String, PathBuf> },
}

impl Hierarchies {
    pub fn from_mountinfo(text: &str) -> Hierarchies {
        let mut h = Hierarchies::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).map(unescape);
            let mut r = right.split(' ');
            let (fstype, _source, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
            let Some(mp) = mount_point else { continue };
            match fstype {
                Some("cgroup2") if h.v2.is_none() => h.v2 = Some(PathBuf::from(mp)),
                Some("cgroup") => {
                    for o in opts.split(',') {
                        if V1_CONTROLLERS.contains(&o) {
                            h.v1.entry(o.to_string()).or_insert_with(|| PathBuf::from(&mp));
                        }
                    }
                }
                _ => {}
            }
        }
        h
    }

    pub fn read(mountinfo: &Path) -> Result<Hierarchies> {
        let text =
            std::fs::read_to_string(mountinfo).map_err(|source| CgroupError::Io { path: mountinfo.into(), source })?;
        Ok(Hierarchies::from_mountinfo(&text))
    }

    /// Controllers the cgroup2 root offers (empty when v1 holds them, as on a hybrid host).
    pub fn v2_controllers(&self) -> Vec<String> {
        self.v2
            .as_ref()
            .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok())
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    }

    /// v2 when it has every controller we need; otherwise v1 when it does; otherwise why not.
    pub fn choose(&self) -> Result<Backend> {
        if let Some(mount) = &self.v2 {
            let have = self.v2_controllers();
            if CONTROLLERS.iter().all(|c| have.iter().any(|h| h == c)) {
                return Ok(Backend::V2 { mount: mount.clone() });
            }
        }
        let missing: Vec<_> = V1_CONTROLLERS.iter().filter(|c| !self.v1.contains_key(**c)).collect();
        if missing.is_empty() {
            return Ok(Backend::V1 { mounts: self.v1.clone() });
        }
        Err(CgroupError::NoHierarchy(format!(
            "cgroup v2 {} and cgroup v1 lacks {missing:?}",
            match &self.v2 {
                Some(m) => format!("at {} offers only {:?}", m.display(), self.v2_controllers()),
                None => "is not mounted".into(),
            }
        )))
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu
28 25 0:26 / /sys/fs/cgroup/cpuacct rw,relatime shared:12 - cgroup cgroup rw,cpuacct
29 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
30 25 0:28 / /sys/fs/cgroup/pids rw,relatime shared:14 - cgroup cgroup rw,pids
31 25 0:29 / /sys/fs/cgroup/systemd rw,relatime shared:15 - cgroup cgroup rw,xattr,name=systemd
";
    const COMOUNTED: &str = "\
27 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
29 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_host_uses_v1_when_v2_is_empty() {
        let h = Hierarchies::from_mountinfo(HYBRID);
        assert_eq!(h.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(h.v1["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(h.v1["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpuacct"));
        assert!(!h.v1.contains_key("name=systemd"));
    }

    #[test]
    fn comounted_cpu_cpuacct() {
        let h = Hierarchies::from_mountinfo(COMOUNTED);
        assert_eq!(h.v1["cpu"], h.v1["cpuacct"]);
        let e = h.choose().unwrap_err().to_string();
        assert!(e.contains("v2 is not mounted") && e.contains("\"pids\""), "{e}");
    }

    #[test]
    fn v2_with_controllers_is_preferred() {
        let fake = tempfile::tempdir().unwrap();
        std::fs::write(fake.path().join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n")
            .unwrap();
        let text = format!("26 25 0:24 / {} rw shared:10 - cgroup2 cgroup2 rw\n{HYBRID}", fake.path().display());
        let h = Hierarchies::from_mountinfo(&text);
        assert_eq!(h.choose().unwrap(), Backend::V2 { mount: fake.path().into() });
    }
}

//! Rootless mode's cgroup: a cgroup v2 subtree delegated to the caller, found without
//! privilege and read only ([`find`]); the run's cgroup is then made in it by
//! [`super::v2::RunCgroup::create_delegated`].
//!
//! Where an unprivileged caller may put the run's cgroup, and why each rule is there:
//!
//! - **Which directory.** The one the system config names (`rootless_cgroup_root`, relative to
//!   the cgroup2 mount: a subtree the admin chowned to the caller), and only it; else the
//!   cgroup the caller itself runs in (`/proc/self/cgroup`), as systemd's user delegation
//!   (`systemd-run --user -p Delegate=yes`, `user@UID.service`) or a container runtime that
//!   delegates its cgroup namespace's root leaves it; or that cgroup's parent when the caller
//!   is already in its `supervisor` leaf (a run before ours moved it there).
//! - **Owned by the caller.** The directory and its `cgroup.procs` and `cgroup.subtree_control`
//!   belong to the caller's uid (what systemd's `Delegate=yes` and `chown -R` do) and are
//!   writable (not a read-only mount, as a container's `/sys/fs/cgroup` often is). A
//!   subtree merely writable through a group or mode bits is shared, and is refused: another
//!   user could then kill or starve our runs there.
//! - **Offered the controllers.** Its `cgroup.controllers` (what its parent enables for it)
//!   lists memory, pids and cpu. The caller can't enable them above its subtree; on a v1 or
//!   hybrid host they are bound to v1 hierarchies and v2 has none.
//! - **The caller inside it.** The kernel lets a process move into a cgroup (and
//!   `clone3(CLONE_INTO_CGROUP)` place a child there) only by a writer who may write the
//!   `cgroup.procs` of the source's and destination's common ancestor (the "delegation
//!   containment" rule of cgroup-v2.rst). The caller runs in its own cgroup; that ancestor is
//!   the delegated directory only when the caller is inside it. A subtree the caller runs
//!   outside of (an admin chowned one, but the server was started elsewhere) can't take the
//!   sandbox, and is refused with that said.
//! - **No internal processes.** A non-root cgroup with controllers enabled for its children
//!   may hold no process itself. Where the caller's processes are in the delegated directory
//!   itself, the first run moves them into its leaf `supervisor` (as systemd's
//!   `DelegateSubgroup=` and container runtimes do), then enables the controllers; the runs'
//!   cgroups are `isolate-grade/slot-N` beside it. Nothing above the directory is written.

use super::v2::{own_cgroup, SUPERVISOR_LEAF};
use super::{read, CgroupError, Hierarchies, Result, CONTROLLERS};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// A subtree delegated to the caller: the run's cgroups go to `dir/isolate-grade/slot-N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The delegated cgroup (absolute, under the cgroup2 mount).
    pub dir: PathBuf,
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The system config's `rootless_cgroup_root`.
    Config,
    /// The cgroup the caller runs in (or its parent, the caller being in its leaf).
    Own,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "named by the config's rootless_cgroup_root",
            Source::Own => "the cgroup this process runs in",
        }
    }
}

/// Why one place can't hold a rootless run's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("cgroup v2 is not mounted (a cgroup v1 host: delegation needs cgroup v2)")]
    NoV2,
    #[error("this process has no cgroup v2 entry (0::) in /proc/self/cgroup")]
    NoOwnCgroup,
    #[error("this process's cgroup ({own}) lies outside the cgroup2 mount's namespace")]
    OutsideNamespace { own: String },
    #[error("does not exist")]
    Missing,
    #[error("owned by uid {owner}, not by the caller: not delegated to it")]
    NotOwned { owner: u32 },
    #[error("{file} is owned by uid {owner}, not by the caller: not delegated to it")]
    FileNotOwned { file: &'static str, owner: u32 },
    #[error("{file} is not writable by the caller ({errno})")]
    NotWritable { file: &'static str, errno: nix::errno::Errno },
    #[error(
        "controllers {missing:?} are not enabled for it by its parent ({parent}/cgroup.subtree_control){}",
        if on_v1.is_empty() { String::new() } else { format!("; {on_v1:?} are bound to cgroup v1 hierarchies on this host, so cgroup v2 can't offer them") }
    )]
    NotOffered { parent: PathBuf, missing: Vec<String>, on_v1: Vec<String> },
    #[error(
        "the caller runs in {own}, outside it: moving a process into it needs write access to their common ancestor's \
         cgroup.procs (the kernel's delegation containment rule); start the caller inside it"
    )]
    CallerOutside { own: PathBuf },
    #[error("{0}")]
    Unreadable(String),
}

/// One place looked at and why it can't be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub path: PathBuf,
    pub why: Unusable,
}

impl std::fmt::Display for Tried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.why)
    }
}

/// The subtree delegated to `uid` on this host, read only: from the cgroup2 mount of `h`, the
/// configured path (relative to that mount) if any, and this process's `/proc/self/cgroup`
/// text. The error names every place looked at and why it is unusable.
pub fn find(h: &Hierarchies, configured: Option<&Path>, self_cgroup: &str, uid: u32) -> Result<Delegation> {
    let refuse = |tried: Vec<Tried>| CgroupError::NoDelegation { uid, tried };
    let Some(mount) = &h.v2 else {
        return Err(refuse(vec![Tried { path: "/sys/fs/cgroup".into(), why: Unusable::NoV2 }]));
    };
    let Some(own_rel) = own_cgroup(self_cgroup) else {
        return Err(refuse(vec![Tried { path: mount.clone(), why: Unusable::NoOwnCgroup }]));
    };
    // `/..` when the mount was made in another cgroup namespace than ours: our path would
    // name some other directory of it.
    if own_rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        let why = Unusable::OutsideNamespace { own: format!("/{}", own_rel.display()) };
        return Err(refuse(vec![Tried { path: mount.clone(), why }]));
    }
    // (joined as is, "" would leave a trailing slash: the mount named otherwise)
    let own = if own_rel.as_os_str().is_empty() { mount.clone() } else { mount.join(&own_rel) };
    let candidates: Vec<(PathBuf, Source)> = match configured {
        Some(p) => vec![(mount.join(p), Source::Config)],
        None => {
            let mut c = Vec::new();
            if own.file_name().is_some_and(|n| n == SUPERVISOR_LEAF) && own != *mount {
                c.push((own.parent().expect("below the mount").to_path_buf(), Source::Own));
            }
            c.push((own.clone(), Source::Own));
            c
        }
    };
    let on_v1: Vec<String> = CONTROLLERS.iter().filter(|c| h.v1.contains_key(**c)).map(|c| c.to_string()).collect();
    let mut tried = Vec::new();
    for (dir, source) in candidates {
        match usable(&dir, &own, uid, &on_v1) {
            Ok(()) => return Ok(Delegation { dir, source }),
            Err(why) => tried.push(Tried { path: dir, why }),
        }
    }
    Err(refuse(tried))
}

/// Whether `dir` may hold `uid`'s run cgroups, the caller running in `own`.
fn usable(dir: &Path, own: &Path, uid: u32, on_v1: &[String]) -> std::result::Result<(), Unusable> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unusable::Missing),
        Err(e) => return Err(Unusable::Unreadable(e.to_string())),
    };
    if meta.uid() != uid {
        return Err(Unusable::NotOwned { owner: meta.uid() });
    }
    for file in ["cgroup.procs", "cgroup.subtree_control"] {
        let path = dir.join(file);
        let owner =
            std::fs::metadata(&path).map_err(|e| Unusable::Unreadable(format!("{}: {e}", path.display())))?.uid();
        if owner != uid {
            return Err(Unusable::FileNotOwned { file, owner });
        }
    }
    // Ownership is not enough: a read-only mount (a container's /sys/fs/cgroup) or mode bits.
    for (file, path) in [
        (".", dir.to_path_buf()),
        ("cgroup.procs", dir.join("cgroup.procs")),
        ("cgroup.subtree_control", dir.join("cgroup.subtree_control")),
    ] {
        nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK)
            .map_err(|errno| Unusable::NotWritable { file: if file == "." { "the directory" } else { file }, errno })?;
    }
    if !own.starts_with(dir) {
        return Err(Unusable::CallerOutside { own: own.to_path_buf() });
    }
    let offered = read(&dir.join("cgroup.controllers")).map_err(|e| Unusable::Unreadable(e.to_string()))?;
    let missing: Vec<String> =
        CONTROLLERS.iter().filter(|c| !offered.split_whitespace().any(|o| o == **c)).map(|c| c.to_string()).collect();
    if !missing.is_empty() {
        let on_v1 = missing.iter().filter(|m| on_v1.contains(m)).cloned().collect();
        return Err(Unusable::NotOffered { parent: dir.parent().unwrap_or(dir).to_path_buf(), missing, on_v1 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A fake cgroup2 mount with `dir` in it, as a delegation leaves it: the directory and
    /// its files owned by whoever runs the test (the "caller").
    struct Fake {
        mount: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            let mount = tempfile::tempdir().unwrap();
            std::fs::write(mount.path().join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
            Fake { mount }
        }
        fn cgroup(&self, rel: &str, controllers: &str) -> PathBuf {
            let d = self.mount.path().join(rel);
            std::fs::create_dir_all(&d).unwrap();
            for (f, v) in [("cgroup.controllers", controllers), ("cgroup.subtree_control", ""), ("cgroup.procs", "")] {
                std::fs::write(d.join(f), v).unwrap();
            }
            d
        }
        fn hierarchies(&self) -> Hierarchies {
            Hierarchies { v2: Some(self.mount.path().into()), v1: BTreeMap::new() }
        }
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn tried(e: CgroupError) -> Vec<Tried> {
        match e {
            CgroupError::NoDelegation { tried, .. } => tried,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_callers_own_delegated_cgroup_is_found() {
        let f = Fake::new();
        let d = f.cgroup("user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.service", "cpu memory pids\n");
        let own = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.service\n";
        let got = find(&f.hierarchies(), None, own, me()).unwrap();
        assert_eq!(got, Delegation { dir: d.clone(), source: Source::Own });
        // after a first run moved the caller into the leaf: the delegated cgroup, not the leaf
        f.cgroup(
            "user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.service/supervisor",
            "cpu memory pids\n",
        );
        let own = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.service/supervisor\n";
        assert_eq!(find(&f.hierarchies(), None, own, me()).unwrap().dir, d);
    }

    /// The ownership check: a cgroup (or its cgroup.procs) the caller doesn't own is refused,
    /// even where mode bits would let it write (as root running this test can).
    #[test]
    fn a_cgroup_not_owned_by_the_caller_is_refused() {
        let f = Fake::new();
        f.cgroup("svc", "cpu memory pids\n");
        let t = tried(find(&f.hierarchies(), None, "0::/svc\n", me() + 1).unwrap_err());
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].why, Unusable::NotOwned { owner: me() });
        if me() == 0 {
            // root can hand a file away: the directory ours, cgroup.procs not
            let d = f.mount.path().join("svc");
            std::os::unix::fs::chown(d.join("cgroup.procs"), Some(4242), None).unwrap();
            let e = find(&f.hierarchies(), None, "0::/svc\n", 0).unwrap_err();
            let msg = e.to_string();
            assert_eq!(tried(e)[0].why, Unusable::FileNotOwned { file: "cgroup.procs", owner: 4242 }, "{msg}");
        }
    }

    /// The controller check: what the parent doesn't enable for it is named, with its parent,
    /// and on a hybrid host the v1 hierarchies that hold them.
    #[test]
    fn a_cgroup_without_the_controllers_is_refused_naming_them() {
        let f = Fake::new();
        f.cgroup("svc", "cpu memory\n");
        let mut h = f.hierarchies();
        let e = find(&h, None, "0::/svc\n", me()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("controllers [\"pids\"] are not enabled for it by its parent"), "{msg}");
        assert!(msg.contains(&format!("({}/cgroup.subtree_control)", f.mount.path().display())), "{msg}");
        assert!(!msg.contains("cgroup v1"), "{msg}");
        f.cgroup("svc", "");
        h.v1.insert("memory".into(), "/sys/fs/cgroup/memory".into());
        h.v1.insert("pids".into(), "/sys/fs/cgroup/pids".into());
        let msg = find(&h, None, "0::/svc\n", me()).unwrap_err().to_string();
        assert!(msg.contains("[\"memory\", \"pids\"] are bound to cgroup v1"), "{msg}");
        assert!(
            msg.starts_with(&format!("rootless: no cgroup v2 subtree is delegated to this caller (uid {})", me())),
            "{msg}"
        );
    }

    /// The configured subtree, and only it: fine with the caller inside, refused (containment)
    /// with the caller elsewhere, though the caller's own cgroup would do.
    #[test]
    fn the_configured_subtree_needs_the_caller_inside_it() {
        let f = Fake::new();
        let d = f.cgroup("grading/alice", "cpu memory pids\n");
        f.cgroup("grading/alice/jupyter", "cpu memory pids\n");
        f.cgroup("elsewhere", "cpu memory pids\n");
        let h = f.hierarchies();
        let conf = Path::new("grading/alice");
        let got = find(&h, Some(conf), "0::/grading/alice/jupyter\n", me()).unwrap();
        assert_eq!(got, Delegation { dir: d.clone(), source: Source::Config });
        let t = tried(find(&h, Some(conf), "0::/elsewhere\n", me()).unwrap_err());
        assert_eq!(t, [Tried { path: d, why: Unusable::CallerOutside { own: f.mount.path().join("elsewhere") } }]);
        let t = tried(find(&h, Some(Path::new("nope")), "0::/elsewhere\n", me()).unwrap_err());
        assert_eq!(t[0].why, Unusable::Missing);
    }

    #[test]
    fn no_v2_and_foreign_namespaces_are_named() {
        let h = Hierarchies::default();
        let msg = find(&h, None, "0::/x\n", 1000).unwrap_err().to_string();
        assert!(msg.contains("cgroup v2 is not mounted"), "{msg}");
        let f = Fake::new();
        let msg = find(&f.hierarchies(), None, "0::/../../x\n", me()).unwrap_err().to_string();
        assert!(msg.contains("outside the cgroup2 mount's namespace"), "{msg}");
        let msg = find(&f.hierarchies(), None, "12:memory:/x\n", me()).unwrap_err().to_string();
        assert!(msg.contains("no cgroup v2 entry"), "{msg}");
    }

    /// This host's own cgroup2 mount, as an unprivileged caller would find it: never usable
    /// by a uid that owns nothing there (a hybrid host: no controllers either).
    #[test]
    fn the_real_mount_is_refused_for_a_stranger() {
        let h = Hierarchies::read(Path::new("/proc/self/mountinfo")).unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert!(find(&h, None, &own, 4_000_000).is_err());
    }
}

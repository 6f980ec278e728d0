//! The sandbox's filesystem: a fresh tmpfs root with only what the policy lists.
//!
//! Lessons taken from isolate's `rules.c`, bubblewrap and runc:
//! - every mount point is created by us, inside a tmpfs of ours, walking one component at a
//!   time with `O_NOFOLLOW`: a bind target never passes through a symlink, and we never
//!   create a directory on a host filesystem (a target beneath a bind must already exist);
//! - mounts go through `/proc/self/fd/N` of the fd we resolved, never a path re-walked later;
//! - bind sources are fds opened earlier *with the caller's credentials*
//!   ([`crate::identity`]), so the helper mounts nothing its caller could not read;
//! - binds are not recursive (no host submount with other flags comes along), and each is
//!   remounted, because `ro`, `nosuid` and `nodev` only take effect on a bind after a remount.

use crate::policy::ProcMode;
use crate::sys::{Sys, SysError};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::mount::MsFlags;
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{target}: {source}")]
    Sys { target: PathBuf, source: SysError },
    #[error("{target}: component {component:?} is a symlink or not a directory; bind targets are never followed through symlinks")]
    NotADirectory { target: PathBuf, component: String },
    #[error("{target}: would create {component:?} on a host filesystem (beneath another bind); create it there first or choose another target")]
    OnHostFilesystem { target: PathBuf, component: String },
    #[error("{target}: already exists as a different kind of file")]
    WrongKind { target: PathBuf },
}

/// A bind whose source was opened (as the caller) before any privileged step.
#[derive(Debug)]
pub struct PreparedBind {
    pub source: BindSource,
    pub target: PathBuf,
    pub writable: bool,
}

/// A kernel's working directory: the submission (opened as the caller) read-only beneath, a
/// size-capped scratch on top that takes every write and vanishes with the sandbox, and the
/// listed files (the notebooks, which carry the hidden tests) whited out.
#[derive(Debug)]
pub struct PreparedOverlay {
    pub lower: Lower,
    pub target: PathBuf,
    pub scratch: Scratch,
    pub hide: Vec<String>,
}

/// The submission beneath a kernel's scratch.
#[derive(Debug)]
pub enum Lower {
    /// A detached copy of its mount, made as the caller checked it (privileged).
    Tree(OwnedFd),
    /// Its path, bound from the sandbox's own mount namespace (rootless: the sandbox is the
    /// caller, with nothing more than the caller could open).
    Path(PathBuf),
}

/// The tmpfs that holds a kernel's upper and work layers; the kernel's supervisor keeps a copy
/// of it, to copy the files the kernel made out once it has ended ([`crate::copyout`]).
#[derive(Debug)]
pub enum Scratch {
    /// Made by the host, detached ([`crate::sys::raw::tmpfs_detached`]).
    Detached(OwnedFd),
    /// Rootless: the host can't make a tmpfs (no `CAP_SYS_ADMIN` where it is), so the sandbox
    /// makes it in its own user namespace with these options and sends a copy of it over
    /// `send` (a unix socket whose other end the supervisor keeps) before anything of the
    /// submission runs.
    InSandbox { options: Vec<(&'static str, String)>, send: OwnedFd },
}

/// The options of a kernel's scratch: `size` bytes, inodes in proportion, only its owner in.
pub fn scratch_options(size: u64) -> Vec<(&'static str, String)> {
    vec![("size", size.to_string()), ("nr_inodes", tmpfs_inodes(size).to_string()), ("mode", "0700".into())]
}

/// A private tmpfs owned by the sandbox user, for a kernel's connection file and sockets.
#[derive(Debug)]
pub struct RuntimeDir {
    pub target: PathBuf,
    /// (name, content), written mode 0400 and owned by the sandbox user.
    pub files: Vec<(String, Vec<u8>)>,
}

#[derive(Debug)]
pub enum BindSource {
    /// A detached copy (`open_tree`) of the mount at an fd that was opened with the caller's
    /// credentials (for reading, which checks read permission on the object itself).
    Tree { fd: OwnedFd, is_dir: bool },
    /// The source was a symlink and the policy said `symlink = "copy"`.
    Symlink(PathBuf),
    /// Rootless: the path, checked as the caller (who we are), copied from inside the
    /// sandbox's mount namespace (its own copy of the caller's), since `open_tree` here needs
    /// `CAP_SYS_ADMIN` and a mount copied in one namespace can't be attached in another.
    Path { path: PathBuf, is_dir: bool },
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Dir,
    File,
}

fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The inode cap of a tmpfs of `size` bytes: it stops "millions of empty files" long before
/// memory runs out. For `/tmp`, `/dev/shm` and a kernel's scratch alike.
pub fn tmpfs_inodes(size: u64) -> u64 {
    (size / 4096).clamp(1024, 1 << 20)
}

pub(crate) const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// Files of a full procfs covered with `/dev/null` (as Docker's masked paths).
pub const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "sysrq-trigger",
    "kallsyms",
    "kpagecount",
    "kpageflags",
];

/// The devices in the sandbox's `/dev`: (name, major, minor).
pub const DEVICES: &[(&str, u64, u64)] =
    &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9)];

/// The new root under construction, at `dir` on the host (inside our private mount
/// namespace only).
pub struct Root {
    pub dir: PathBuf,
    fd: OwnedFd,
    /// Filesystems of ours where mount points may be created.
    own_devs: Vec<u64>,
}

impl Root {
    /// Make every mount private (nothing we do propagates to the host and nothing the host
    /// mounts appears here), then mount the root tmpfs.
    pub fn create(sys: &impl Sys, dir: &Path) -> Result<Root, MountError> {
        let e = |source| MountError::Sys { target: dir.to_path_buf(), source };
        sys.mount(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None).map_err(e)?;
        sys.mount(Some(Path::new("tmpfs")), dir, Some("tmpfs"), NOSUID_NODEV, Some("size=1m,nr_inodes=4096,mode=0755"))
            .map_err(e)?;
        let fd = open_dir(None, dir).map_err(|errno| e(SysError::new("open", dir.display().to_string(), errno)))?;
        let dev = fstat(&fd).map_err(|errno| e(SysError::new("fstat", dir.display().to_string(), errno)))?.st_dev;
        Ok(Root { dir: dir.to_path_buf(), fd, own_devs: vec![dev] })
    }

    /// A tmpfs of ours at `target` (`/tmp`, `/dev/shm`, `/dev`), capped in size and inodes.
    pub fn tmpfs(
        &mut self,
        sys: &impl Sys,
        target: &str,
        size: u64,
        mode: &str,
        flags: MsFlags,
    ) -> Result<(), MountError> {
        let target_p = Path::new(target);
        let (parent, name) = self.mount_point(target_p, Kind::Dir)?;
        let data = format!("size={size},nr_inodes={},mode={mode}", tmpfs_inodes(size));
        let at = reopen(&parent, &name, target_p)?;
        sys.mount(Some(Path::new("tmpfs")), &fd_path(&at), Some("tmpfs"), flags, Some(&data))
            .map_err(|source| MountError::Sys { target: target_p.into(), source })?;
        self.record_own(&parent, &name, target_p)
    }

    /// The filesystem just mounted at `parent/name` is ours: mount points may be made on it.
    fn record_own(&mut self, parent: &OwnedFd, name: &str, target: &Path) -> Result<(), MountError> {
        if let Ok(st) = fstat(&reopen(parent, name, target)?) {
            self.own_devs.push(st.st_dev);
        }
        Ok(())
    }

    /// The kernel's working directory (see [`PreparedOverlay`]). The layers sit on the
    /// scratch tmpfs, attached as a staging mount that is detached again once the overlay is
    /// mounted: the overlay keeps its own references, and the sandbox never sees the layers.
    pub fn overlay(&mut self, sys: &impl Sys, ov: &PreparedOverlay, uid: u32) -> Result<(), MountError> {
        let err = |target: &Path| {
            let target = target.to_path_buf();
            move |source| MountError::Sys { target: target.clone(), source }
        };
        let stage = Path::new("/.overlay");
        let (parent, name) = self.mount_point(stage, Kind::Dir)?;
        let at = reopen(&parent, &name, stage)?;
        let made;
        let scratch = match &ov.scratch {
            Scratch::Detached(fd) => fd.as_raw_fd(),
            Scratch::InSandbox { options, send } => {
                made = sys.make_tmpfs(options).map_err(err(stage))?;
                sys.send_fd(send.as_raw_fd(), made.as_raw_fd()).map_err(err(stage))?;
                made.as_raw_fd()
            }
        };
        sys.attach_tree(scratch, at.as_raw_fd(), true).map_err(err(stage))?;
        self.record_own(&parent, &name, stage)?;
        let lower = Path::new("/.overlay/lower");
        let (parent, name) = self.mount_point(lower, Kind::Dir)?;
        let at = reopen(&parent, &name, lower)?;
        match &ov.lower {
            Lower::Tree(fd) => sys.attach_tree(fd.as_raw_fd(), at.as_raw_fd(), false),
            Lower::Path(path) => sys.attach_path(path, at.as_raw_fd(), false),
        }
        .map_err(err(lower))?;
        for layer in ["/.overlay/upper", "/.overlay/work"] {
            self.mount_point(Path::new(layer), Kind::Dir)?;
        }
        // The merged root takes the upper's owner: the sandbox user may create files in its
        // working directory, as the kernel could without the sandbox.
        let (stage_parent, stage_name) = self.mount_point(stage, Kind::Dir)?;
        let staged = reopen_dir(&stage_parent, &stage_name, stage)?;
        sys.chown_at(staged.as_raw_fd(), "upper", uid).map_err(err(stage))?;
        let upper = reopen_dir(&staged, "upper", stage)?;
        for name in &ov.hide {
            // a whiteout: a 0/0 character device in the upper layer hides the lower file
            sys.mknod_char(upper.as_raw_fd(), name, 0, 0).map_err(err(&ov.target.join(name)))?;
        }
        let (parent, name) = self.mount_point(&ov.target, Kind::Dir)?;
        let at = reopen(&parent, &name, &ov.target)?;
        let root = self.dir.display();
        let data =
            format!("lowerdir={root}/.overlay/lower,upperdir={root}/.overlay/upper,workdir={root}/.overlay/work");
        sys.mount(Some(Path::new("overlay")), &fd_path(&at), Some("overlay"), NOSUID_NODEV, Some(&data))
            .map_err(err(&ov.target))?;
        sys.umount_detach(&self.dir.join(".overlay")).map_err(err(stage))
    }

    /// A kernel's runtime directory (see [`RuntimeDir`]).
    pub fn runtime(&mut self, sys: &impl Sys, rt: &RuntimeDir, uid: u32) -> Result<(), MountError> {
        let target = rt.target.to_string_lossy().into_owned();
        self.tmpfs(sys, &target, 1 << 20, &format!("0700,uid={uid},gid={uid}"), NOSUID_NODEV)?;
        let (parent, name) = self.mount_point(&rt.target, Kind::Dir)?;
        let dir = reopen_dir(&parent, &name, &rt.target)?;
        for (file, content) in &rt.files {
            sys.write_file(dir.as_raw_fd(), file, content, uid)
                .map_err(|source| MountError::Sys { target: rt.target.join(file), source })?;
        }
        Ok(())
    }

    /// `/dev`: a read-only tmpfs holding only the harmless character devices (made with
    /// mknod, as Docker does: five syscalls instead of ten mounts), the usual `/dev/fd`
    /// symlinks, no tty, and a size-capped `/dev/shm`. This one mount can't be `nodev`, or its
    /// devices would not work; it is read-only and `noexec`, and the program can't mknod.
    /// With `ptys > 0`, a devpts instance of the sandbox's own at `/dev/pts` (`newinstance`:
    /// none of the host's terminals are in it; at most `ptys` of them) and `/dev/ptmx` to it.
    pub fn dev(&mut self, sys: &impl Sys, shm_size: u64, ptys: u32, bound: bool) -> Result<(), MountError> {
        let dev = Path::new("/dev");
        self.tmpfs(sys, "/dev", 64 << 10, "0755", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)?;
        let (parent, name) = self.mount_point(dev, Kind::Dir)?;
        let dir = reopen_dir(&parent, &name, dev)?;
        for &(node, major, minor) in DEVICES {
            let target = PathBuf::from(format!("/dev/{node}"));
            let made = if bound {
                // the host's own node (a user namespace may not make one), on an empty file
                let (at_parent, at_name) = self.mount_point(&target, Kind::File)?;
                let at = reopen(&at_parent, &at_name, &target)?;
                sys.bind_device(&target, at.as_raw_fd())
            } else {
                sys.mknod_char(dir.as_raw_fd(), node, major, minor)
            };
            made.map_err(|source| MountError::Sys { target, source })?;
        }
        for (link, to) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            self.symlink(Path::new(link), Path::new(to))?;
        }
        self.tmpfs(sys, "/dev/shm", shm_size, "1777", NOSUID_NODEV)?;
        if ptys > 0 {
            let pts = Path::new("/dev/pts");
            let (pts_parent, pts_name) = self.mount_point(pts, Kind::Dir)?;
            let at = reopen(&pts_parent, &pts_name, pts)?;
            // Slaves belong to whoever opens /dev/ptmx (the sandbox's uid), mode 0600.
            let data = format!("newinstance,ptmxmode=0666,mode=0600,max={ptys}");
            sys.mount(
                Some(Path::new("devpts")),
                &fd_path(&at),
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some(&data),
            )
            .map_err(|source| MountError::Sys { target: pts.into(), source })?;
            self.symlink(Path::new("/dev/ptmx"), Path::new("pts/ptmx"))?;
        }
        let at = reopen(&parent, &name, dev)?;
        sys.mount(
            None,
            &fd_path(&at),
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            None,
        )
        .map_err(|source| MountError::Sys { target: dev.into(), source })
    }

    /// A procfs of the sandbox's own PID namespace: other users' processes hidden, and with
    /// `pids-only` nothing but the process directories (no `/proc/sys`, `kcore`, ...).
    pub fn proc(&mut self, sys: &impl Sys, mode: ProcMode) -> Result<(), MountError> {
        let target = Path::new("/proc");
        let (parent, name) = self.mount_point(target, Kind::Dir)?;
        let data = match mode {
            ProcMode::PidsOnly => "hidepid=2,subset=pid",
            ProcMode::Full => "hidepid=2",
            // the empty directory, in the root made read-only at step 9
            ProcMode::None => return Ok(()),
        };
        let at = reopen(&parent, &name, target)?;
        sys.mount(Some(Path::new("proc")), &fd_path(&at), Some("proc"), NOSUID_NODEV | MsFlags::MS_NOEXEC, Some(data))
            .map_err(|source| MountError::Sys { target: target.into(), source })?;
        if mode == ProcMode::Full {
            self.mask_proc(sys)?;
        }
        Ok(())
    }

    /// In a full procfs, what Docker masks too: files that leak kernel state are covered by
    /// the sandbox's own `/dev/null` (read-only), and `/proc/sys` is made read-only. The user
    /// could not write most of them anyway; this is the second fence.
    fn mask_proc(&mut self, sys: &impl Sys) -> Result<(), MountError> {
        let null = self.dir.join("dev/null");
        let null = nix::fcntl::open(&null, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|errno| sys_err(Path::new("/dev/null"), "open", errno))?;
        let proc_dir = self.dir_fd(Path::new("/proc"), Path::new("proc"), false)?;
        for file in MASKED_PROC_FILES {
            let target = PathBuf::from(format!("/proc/{file}"));
            let Ok(at) = openat(&proc_dir, *file, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            else {
                continue; // not on this kernel
            };
            let err = |source| MountError::Sys { target: target.clone(), source };
            sys.mount(Some(&fd_path(&null)), &fd_path(&at), None, MsFlags::MS_BIND, None).map_err(err)?;
            let mounted = reopen(&proc_dir, file, &target)?;
            let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | NOSUID_NODEV | MsFlags::MS_NOEXEC;
            sys.mount(None, &fd_path(&mounted), None, ro, None).map_err(err)?;
        }
        let target = Path::new("/proc/sys");
        let err = |source| MountError::Sys { target: target.into(), source };
        let at = reopen_dir(&proc_dir, "sys", target)?;
        sys.mount(Some(&fd_path(&at)), &fd_path(&at), None, MsFlags::MS_BIND, None).map_err(err)?;
        let mounted = reopen_dir(&proc_dir, "sys", target)?;
        let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | NOSUID_NODEV | MsFlags::MS_NOEXEC;
        sys.mount(None, &fd_path(&mounted), None, ro, None).map_err(err)
    }

    /// One bind from the policy or the command line.
    pub fn bind(&mut self, sys: &impl Sys, b: &PreparedBind) -> Result<(), MountError> {
        match &b.source {
            BindSource::Symlink(to) => self.symlink(&b.target, to),
            BindSource::Tree { fd, is_dir } => {
                let kind = if *is_dir { Kind::Dir } else { Kind::File };
                let (parent, name) = self.mount_point(&b.target, kind)?;
                let at = reopen(&parent, &name, &b.target)?;
                sys.attach_tree(fd.as_raw_fd(), at.as_raw_fd(), b.writable)
                    .map_err(|source| MountError::Sys { target: b.target.clone(), source })
            }
            BindSource::Path { path, is_dir } => {
                let kind = if *is_dir { Kind::Dir } else { Kind::File };
                let (parent, name) = self.mount_point(&b.target, kind)?;
                let at = reopen(&parent, &name, &b.target)?;
                sys.attach_path(path, at.as_raw_fd(), b.writable)
                    .map_err(|source| MountError::Sys { target: b.target.clone(), source })
            }
        }
    }

    /// Everything is mounted: make the root tmpfs itself read-only.
    pub fn seal(&self, sys: &impl Sys) -> Result<(), MountError> {
        sys.mount(
            None,
            &fd_path(&self.fd),
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | NOSUID_NODEV,
            None,
        )
        .map_err(|source| MountError::Sys { target: "/".into(), source })
    }

    fn symlink(&mut self, link: &Path, to: &Path) -> Result<(), MountError> {
        let (parent_path, name) = split(link);
        let parent = self.dir_fd(link, &parent_path, true)?;
        self.check_own(&parent, link, &name)?;
        nix::unistd::symlinkat(to, &parent, name.as_str()).map_err(|errno| MountError::Sys {
            target: link.into(),
            source: SysError::new("symlinkat", to.display().to_string(), errno),
        })
    }

    /// Create (or find) the mount point for `target`; returns its parent and its name.
    fn mount_point(&mut self, target: &Path, kind: Kind) -> Result<(OwnedFd, String), MountError> {
        let (parent_path, name) = split(target);
        let parent = self.dir_fd(target, &parent_path, true)?;
        match openat(&parent, name.as_str(), OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(existing) => {
                let st = fstat(&existing).map_err(|errno| sys_err(target, "fstat", errno))?;
                let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                let ok = match kind {
                    Kind::Dir => fmt == SFlag::S_IFDIR,
                    Kind::File => fmt == SFlag::S_IFREG,
                };
                if !ok {
                    return Err(MountError::WrongKind { target: target.into() });
                }
            }
            Err(Errno::ENOENT) => {
                self.check_own(&parent, target, &name)?;
                match kind {
                    Kind::Dir => mkdirat(&parent, name.as_str(), Mode::from_bits_truncate(0o755))
                        .map_err(|errno| sys_err(target, "mkdirat", errno))?,
                    Kind::File => drop(
                        openat(
                            &parent,
                            name.as_str(),
                            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                            Mode::from_bits_truncate(0o644),
                        )
                        .map_err(|errno| sys_err(target, "openat", errno))?,
                    ),
                }
            }
            Err(errno) => return Err(sys_err(target, "openat", errno)),
        }
        Ok((parent, name))
    }

    /// Walk `path` (inside the new root) one directory at a time without following symlinks,
    /// creating missing directories only on our own tmpfs.
    fn dir_fd(&self, target: &Path, path: &Path, create: bool) -> Result<OwnedFd, MountError> {
        let mut cur = open_dir(Some(&self.fd), Path::new(".")).map_err(|errno| sys_err(target, "openat", errno))?;
        for comp in path.components() {
            let Component::Normal(c) = comp else { continue };
            let name = c.to_string_lossy().into_owned();
            let next = match open_dir(Some(&cur), Path::new(&name)) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    self.check_own(&cur, target, &name)?;
                    mkdirat(&cur, name.as_str(), Mode::from_bits_truncate(0o755))
                        .map_err(|errno| sys_err(target, "mkdirat", errno))?;
                    open_dir(Some(&cur), Path::new(&name)).map_err(|errno| sys_err(target, "openat", errno))?
                }
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    return Err(MountError::NotADirectory { target: target.into(), component: name })
                }
                Err(errno) => return Err(sys_err(target, "openat", errno)),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn check_own(&self, dir: &OwnedFd, target: &Path, name: &str) -> Result<(), MountError> {
        let st = fstat(dir).map_err(|errno| sys_err(target, "fstat", errno))?;
        if self.own_devs.contains(&st.st_dev) {
            Ok(())
        } else {
            Err(MountError::OnHostFilesystem { target: target.into(), component: name.to_string() })
        }
    }
}

fn sys_err(target: &Path, call: &'static str, errno: Errno) -> MountError {
    MountError::Sys { target: target.into(), source: SysError::new(call, target.display().to_string(), errno) }
}

fn open_dir(at: Option<&OwnedFd>, path: &Path) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match at {
        Some(fd) => openat(fd.as_fd(), path, flags, Mode::empty()),
        None => nix::fcntl::open(path, flags, Mode::empty()),
    }
}

fn reopen_dir(parent: &OwnedFd, name: &str, target: &Path) -> Result<OwnedFd, MountError> {
    open_dir(Some(parent), Path::new(name)).map_err(|errno| sys_err(target, "openat", errno))
}

fn reopen(parent: &OwnedFd, name: &str, target: &Path) -> Result<OwnedFd, MountError> {
    openat(parent, name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|errno| sys_err(target, "openat", errno))
}

/// `/a/b/c` → (`a/b`, `c`). Targets are validated absolute paths other than `/`.
fn split(target: &Path) -> (PathBuf, String) {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = target.parent().unwrap_or(Path::new("/")).strip_prefix("/").unwrap_or(Path::new("")).to_path_buf();
    (parent, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    fn fake(dir: &Path) -> FakeSys {
        FakeSys { root: Some(dir.to_path_buf()), ..Default::default() }
    }

    fn dir_bind(src: &Path, target: &str, writable: bool) -> PreparedBind {
        let fd = nix::fcntl::open(src, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        PreparedBind { source: BindSource::Tree { fd, is_dir: true }, target: target.into(), writable }
    }

    #[test]
    fn binds_are_remounted_with_their_flags() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let sys = fake(root.path());
        let mut r = Root::create(&sys, root.path()).unwrap();
        r.bind(&sys, &dir_bind(src.path(), "/usr/lib", false)).unwrap();
        r.bind(&sys, &dir_bind(src.path(), "/work", true)).unwrap();
        r.seal(&sys).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "mount none / - [rec,private]".to_string(),
                "mount tmpfs / tmpfs [nosuid,nodev] size=1m,nr_inodes=4096,mode=0755".into(),
                "attach /usr/lib [ro,nosuid,nodev]".into(),
                "attach /work [nosuid,nodev]".into(),
                "mount none / - [remount,bind,ro,nosuid,nodev]".into(),
            ]
        );
        assert!(root.path().join("usr/lib").is_dir());
    }

    #[test]
    fn targets_never_pass_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let sys = fake(root.path());
        let mut r = Root::create(&sys, root.path()).unwrap();
        // e.g. a copied `/lib -> usr/lib`, or anything pointing outside
        std::os::unix::fs::symlink(outside.path(), root.path().join("lib")).unwrap();
        let e = r.bind(&sys, &dir_bind(outside.path(), "/lib/x", false)).unwrap_err();
        assert!(matches!(e, MountError::NotADirectory { ref component, .. } if component == "lib"), "{e}");
        // and the final component too
        let e = r.bind(&sys, &dir_bind(outside.path(), "/lib", false)).unwrap_err();
        assert!(matches!(e, MountError::WrongKind { .. }), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing created outside");
        assert!(!sys.calls().iter().any(|c| c.starts_with("attach")), "nothing mounted: {:?}", sys.calls());
    }

    #[test]
    fn never_creates_on_a_host_filesystem() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let sys = fake(root.path());
        let mut r = Root::create(&sys, root.path()).unwrap();
        // Pretend the root is not ours: what a directory inside a host bind looks like.
        r.own_devs = vec![u64::MAX];
        let e = r.bind(&sys, &dir_bind(src.path(), "/usr/x", false)).unwrap_err();
        assert!(matches!(e, MountError::OnHostFilesystem { .. }), "{e}");
        assert!(!root.path().join("usr").exists());
    }

    #[test]
    fn symlink_copies_are_created_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let sys = fake(root.path());
        let mut r = Root::create(&sys, root.path()).unwrap();
        let b = PreparedBind { source: BindSource::Symlink("usr/lib".into()), target: "/lib".into(), writable: false };
        r.bind(&sys, &b).unwrap();
        assert_eq!(std::fs::read_link(root.path().join("lib")).unwrap(), Path::new("usr/lib"));
    }
}

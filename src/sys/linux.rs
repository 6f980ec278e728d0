//! The real [`Sys`]: nix, caps, landlock and seccompiler calls, plus [`super::raw`].

use super::raw::{check, close_range, prctl};
use super::{Forked, LandlockOutcome, LandlockRules, Sys, SysError};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::unistd::{Gid, Uid};
use std::ffi::CString;
use std::path::Path;

/// A detached copy of the mount at `source` (`open_tree`), with the mounts beneath it where
/// they are locked there (a user namespace's copy of the host's).
fn detached_copy(source: &Path) -> Result<std::os::fd::OwnedFd, SysError> {
    use nix::fcntl::{open, OFlag};
    use std::os::fd::AsRawFd;
    let fd = open(source, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(|e| SysError::new("open", disp(source), e))?;
    match super::raw::open_tree_clone(fd.as_raw_fd()) {
        // mounts from the host beneath it, locked in a user namespace: copied along
        Err(Errno::EINVAL) => super::raw::open_tree_clone_recursive(fd.as_raw_fd()),
        other => other,
    }
    .map_err(|e| SysError::new("open_tree", disp(source), e))
}

/// Set `attrs` on the detached `tree`, then attach it on the empty file or directory open at
/// `target`.
fn attach_with(tree: std::os::fd::RawFd, target: std::os::fd::RawFd, attrs: u64) -> Result<(), SysError> {
    use super::raw::{mount_setattr, move_mount};
    mount_setattr(tree, attrs).map_err(|e| SysError::new("mount_setattr", format!("fd {tree}"), e))?;
    move_mount(tree, target).map_err(|e| SysError::new("move_mount", format!("fd {target}"), e))
}

pub struct LinuxSys;

fn disp(p: &Path) -> String {
    p.display().to_string()
}

impl Sys for LinuxSys {
    fn join_cgroup(&self, tasks: std::os::fd::RawFd) -> Result<(), SysError> {
        // SAFETY: the fd is an open cgroup file owned by the plan for the whole call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(tasks) };
        match nix::unistd::write(fd, b"0") {
            Ok(1) => Ok(()),
            Ok(_) => Err(SysError::new("write", "cgroup tasks", Errno::EIO)),
            Err(e) => Err(SysError::new("write", "cgroup tasks", e)),
        }
    }

    fn unshare(&self, flags: CloneFlags) -> Result<(), SysError> {
        nix::sched::unshare(flags).map_err(|e| SysError::new("unshare", format!("{flags:?}"), e))
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SysError> {
        tracing::debug!(?source, ?target, ?fstype, ?flags, ?data, "mount");
        nix::mount::mount(source, target, fstype, flags, data).map_err(|e| SysError::new("mount", disp(target), e))
    }

    fn attach_tree(
        &self,
        tree: std::os::fd::RawFd,
        target: std::os::fd::RawFd,
        writable: bool,
    ) -> Result<(), SysError> {
        use super::raw::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
        attach_with(tree, target, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | if writable { 0 } else { MOUNT_ATTR_RDONLY })
    }

    fn attach_path(&self, source: &Path, target: std::os::fd::RawFd, writable: bool) -> Result<(), SysError> {
        use std::os::fd::AsRawFd;
        self.attach_tree(detached_copy(source)?.as_raw_fd(), target, writable)
    }

    fn chown_at(&self, dir: std::os::fd::RawFd, name: &str, uid: u32) -> Result<(), SysError> {
        // SAFETY: `dir` is an open directory fd owned by the caller for the whole call.
        let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir) };
        nix::unistd::fchownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(uid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| SysError::new("fchownat", name, e))
    }

    fn write_file(&self, dir: std::os::fd::RawFd, name: &str, content: &[u8], uid: u32) -> Result<(), SysError> {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::Mode;
        // SAFETY: `dir` is an open directory fd owned by the caller for the whole call.
        let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir) };
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd =
            openat(dir, name, flags, Mode::from_bits_truncate(0o400)).map_err(|e| SysError::new("openat", name, e))?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, content)
            .map_err(|e| SysError::new("write", name, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
        nix::unistd::fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)))
            .map_err(|e| SysError::new("fchown", name, e))
    }

    fn mknod_char(&self, dir: std::os::fd::RawFd, name: &str, major: u64, minor: u64) -> Result<(), SysError> {
        use nix::sys::stat::{fchmodat, makedev, mknodat, FchmodatFlags, Mode, SFlag};
        // SAFETY: `dir` is an open directory fd owned by the caller for the whole call.
        let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir) };
        let mode = Mode::from_bits_truncate(0o666);
        mknodat(dir, name, SFlag::S_IFCHR, mode, makedev(major, minor))
            .map_err(|e| SysError::new("mknodat", name, e))?;
        fchmodat(dir, name, mode, FchmodatFlags::NoFollowSymlink).map_err(|e| SysError::new("fchmodat", name, e))
    }

    fn umount_detach(&self, target: &Path) -> Result<(), SysError> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|e| SysError::new("umount2", disp(target), e))
    }

    fn pivot_root(&self, new_root: &Path) -> Result<(), SysError> {
        // pivot_root(".", ".") stacks the old root on top of the new one at "/"; unmounting
        // "." then detaches it, with no directory for put_old needed (as runc and bwrap do).
        self.chdir(new_root)?;
        nix::unistd::pivot_root(".", ".").map_err(|e| SysError::new("pivot_root", disp(new_root), e))?;
        self.umount_detach(Path::new("."))?;
        self.chdir(Path::new("/"))
    }

    fn chdir(&self, path: &Path) -> Result<(), SysError> {
        nix::unistd::chdir(path).map_err(|e| SysError::new("chdir", disp(path), e))
    }

    fn sethostname(&self, name: &str) -> Result<(), SysError> {
        nix::unistd::sethostname(name).map_err(|e| SysError::new("sethostname", name, e))
    }

    fn loopback_up(&self) -> Result<(), SysError> {
        let err = |e| SysError::new("ioctl", "lo SIOCSIFFLAGS", e);
        // SAFETY: socket() with constant arguments; the fd is closed below.
        let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into())
            .map_err(err)? as libc::c_int;
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: `req` is a valid ifreq naming "lo"; the kernel reads and writes only it.
        let r = check(unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) }.into()).and_then(|_| {
            // SAFETY: the union member ifru_flags is the one SIOCGIFFLAGS filled in.
            unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
            // SAFETY: as above, with the flags to set.
            check(unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) }.into())
        });
        // SAFETY: closing the fd we opened above.
        unsafe { libc::close(fd) };
        r.map(drop).map_err(err)
    }

    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<(), SysError> {
        nix::sys::resource::setrlimit(resource, soft, hard)
            .map_err(|e| SysError::new("setrlimit", format!("{resource:?}={soft}"), e))
    }

    fn set_stdio(&self, fds: [std::os::fd::RawFd; 3]) -> Result<(), SysError> {
        for (target, fd) in fds.into_iter().enumerate() {
            if fd <= 2 {
                // main keeps 0-2 open, so no pipe of ours can be one of them
                return Err(SysError::new("dup2", format!("{fd} onto {target}"), Errno::EBADF));
            }
            // SAFETY: dup2 only changes this process's fd table; `target` (0-2) is replaced.
            check(unsafe { libc::dup2(fd, target as libc::c_int) }.into())
                .map_err(|e| SysError::new("dup2", format!("{fd} onto {target}"), e))?;
        }
        Ok(())
    }

    fn close_fds_except(&self, keep: &[i32]) -> Result<(), SysError> {
        let mut keep: Vec<u32> = keep.iter().filter(|&&fd| fd > 2).map(|&fd| fd as u32).collect();
        keep.sort_unstable();
        let mut from = 3u32;
        for fd in keep {
            if fd > from {
                close_range(from, fd - 1, 0)
                    .map_err(|e| SysError::new("close_range", format!("{from}..{}", fd - 1), e))?;
            }
            from = fd + 1;
        }
        close_range(from, u32::MAX, 0).map_err(|e| SysError::new("close_range", format!("{from}.."), e))
    }

    fn drop_capability_bounds(&self) -> Result<(), SysError> {
        // Bounding: every capability the kernel knows, including ones newer than our caps
        // crate, until the kernel says the number is out of range.
        for cap in 0..64 {
            match prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) {
                Ok(_) => {}
                Err(Errno::EINVAL) if cap > 0 => break,
                Err(e) => return Err(SysError::new("prctl", format!("PR_CAPBSET_DROP {cap}"), e)),
            }
        }
        prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong)
            .map_err(|e| SysError::new("prctl", "PR_CAP_AMBIENT_CLEAR_ALL", e))?;
        caps::clear(None, caps::CapSet::Inheritable).map_err(|_| SysError::new("capset", "inheritable", Errno::EPERM))
    }

    fn map_user_namespace(&self, inside: u32, outside: crate::plan::Outside) -> Result<(), SysError> {
        // Our /proc/self files are root's while we are not dumpable (main.rs), and root is
        // not mapped here: dumpable for the three writes, then not again.
        prctl(libc::PR_SET_DUMPABLE, 1).map_err(|e| SysError::new("prctl", "PR_SET_DUMPABLE 1", e))?;
        let write = |file: &str, text: String| {
            std::fs::write(file, &text).map_err(|e| {
                SysError::new(
                    "write",
                    format!("{file}: {text}"),
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                )
            })
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("{inside} {} 1", outside.uid))?;
        write("/proc/self/gid_map", format!("{inside} {} 1", outside.gid))?;
        prctl(libc::PR_SET_DUMPABLE, 0).map_err(|e| SysError::new("prctl", "PR_SET_DUMPABLE 0", e)).map(drop)
    }

    fn clear_capabilities(&self) -> Result<(), SysError> {
        use caps::CapSet::*;
        for set in [Effective, Permitted, Inheritable] {
            caps::clear(None, set).map_err(|_| SysError::new("capset", format!("{set:?}"), Errno::EPERM))?;
        }
        Ok(())
    }

    fn make_tmpfs(&self, options: &[(&'static str, String)]) -> Result<std::os::fd::OwnedFd, SysError> {
        super::raw::tmpfs_detached(options).map_err(|e| SysError::new("fsopen", "tmpfs", e))
    }

    fn send_fd(&self, socket: std::os::fd::RawFd, fd: std::os::fd::RawFd) -> Result<(), SysError> {
        send_fds(socket, &[fd])
    }

    fn send_namespaces(&self, socket: std::os::fd::RawFd) -> Result<(), SysError> {
        use nix::fcntl::{open, OFlag};
        use std::os::fd::AsRawFd;
        let ns = |name: &str| {
            let path = format!("/proc/self/ns/{name}");
            open(path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                .map_err(|e| SysError::new("open", path, e))
        };
        let (user, net) = (ns("user")?, ns("net")?);
        send_fds(socket, &[user.as_raw_fd(), net.as_raw_fd()])
    }

    fn bind_device(&self, source: &Path, target: std::os::fd::RawFd) -> Result<(), SysError> {
        use super::raw::{MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID};
        use std::os::fd::AsRawFd;
        // nosuid and noexec (not nodev: it is a device) on the detached copy: mount_setattr
        // only adds these, where a remount in a user namespace must restate every locked flag
        attach_with(detached_copy(source)?.as_raw_fd(), target, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC)
    }

    fn setgroups_empty(&self) -> Result<(), SysError> {
        nix::unistd::setgroups(&[]).map_err(|e| SysError::new("setgroups", "[]", e))
    }

    fn setresgid(&self, gid: u32) -> Result<(), SysError> {
        let g = Gid::from_raw(gid);
        nix::unistd::setresgid(g, g, g).map_err(|e| SysError::new("setresgid", gid.to_string(), e))
    }

    fn setresuid(&self, uid: u32) -> Result<(), SysError> {
        let u = Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).map_err(|e| SysError::new("setresuid", uid.to_string(), e))
    }

    fn verify_no_capabilities(&self) -> Result<(), SysError> {
        use caps::CapSet::*;
        for set in [Effective, Permitted, Inheritable, Ambient] {
            let held = caps::read(None, set).map_err(|_| SysError::new("capget", format!("{set:?}"), Errno::EIO))?;
            if !held.is_empty() {
                return Err(SysError::new(
                    "verify capabilities",
                    format!("{set:?} still holds {held:?}"),
                    Errno::EPERM,
                ));
            }
        }
        for cap in 0..64 {
            match prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) {
                Ok(0) => {}
                Ok(_) => {
                    return Err(SysError::new(
                        "verify capabilities",
                        format!("bounding set still holds {cap}"),
                        Errno::EPERM,
                    ))
                }
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> Result<(), SysError> {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong)
            .map(drop)
            .map_err(|e| SysError::new("prctl", "PR_SET_NO_NEW_PRIVS", e))
    }

    fn set_parent_death_kill(&self, alive_fd: i32) -> Result<(), SysError> {
        prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
            .map_err(|e| SysError::new("prctl", "PR_SET_PDEATHSIG", e))?;
        // If the supervisor died before the line above, no signal will come: its end of the
        // pipe is closed, so the pipe reads as end-of-file (poll: readable or hung up).
        let mut pfd = libc::pollfd { fd: alive_fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        let n = check(unsafe { libc::poll(&mut pfd, 1, 0) }.into())
            .map_err(|e| SysError::new("poll", "supervisor pipe", e))?;
        if n != 0 {
            return Err(SysError::new("supervisor check", "the supervisor is gone", Errno::ESRCH));
        }
        Ok(())
    }

    fn fork(&self) -> Result<Forked, SysError> {
        // SAFETY: the sandbox's init is single-threaded, so the child may do anything.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child)),
            Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
            Err(e) => Err(SysError::new("fork", "", e)),
        }
    }

    fn setsid(&self) -> Result<(), SysError> {
        nix::unistd::setsid().map(drop).map_err(|e| SysError::new("setsid", "", e))
    }

    fn reset_signals(&self) -> Result<(), SysError> {
        super::raw::reset_all_signal_actions().map_err(|e| SysError::new("rt_sigaction", "SIG_DFL", e))?;
        nix::sys::signal::SigSet::empty().thread_set_mask().map_err(|e| SysError::new("sigprocmask", "empty", e))
    }

    fn landlock(&self, rules: &LandlockRules) -> Result<LandlockOutcome, SysError> {
        super::landlock::restrict_self(rules)
    }

    fn seccomp(&self, filters: &[seccompiler::BpfProgram]) -> Result<(), SysError> {
        for (i, f) in filters.iter().enumerate() {
            seccompiler::apply_filter(f)
                .map_err(|e| SysError::new("seccomp", format!("filter {i}: {e}"), Errno::EINVAL))?;
        }
        Ok(())
    }

    fn execve(&self, path: &Path, argv: &[CString], envp: &[CString]) -> SysError {
        let c = match CString::new(path.as_os_str().as_encoded_bytes()) {
            Ok(c) => c,
            Err(_) => return SysError::new("execve", disp(path), Errno::EINVAL),
        };
        match nix::unistd::execve(&c, argv, envp) {
            Err(e) => SysError::new("execve", disp(path), e),
        }
    }
}

/// `fds` over the unix socket `socket`, with one byte (`SCM_RIGHTS`).
fn send_fds(socket: std::os::fd::RawFd, fds: &[std::os::fd::RawFd]) -> Result<(), SysError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(&[0u8])];
    sendmsg::<()>(socket, &iov, &[ControlMessage::ScmRights(fds)], MsgFlags::empty(), None)
        .map(drop)
        .map_err(|e| SysError::new("sendmsg", "SCM_RIGHTS", e))
}

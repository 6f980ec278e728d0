//! Thin wrappers for the few calls that neither nix nor libc's safe crates cover, each in the
//! shape `check(unsafe { libc::... })` with its `// SAFETY:` justification.

use nix::errno::Errno;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Convert a `-1`-and-errno return into a `Result`.
pub fn check(rc: libc::c_long) -> Result<libc::c_long, Errno> {
    if rc == -1 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

/// `close_range(first, last, flags)`.
pub fn close_range(first: u32, last: u32, flags: u32) -> Result<(), Errno> {
    // SAFETY: close_range only touches this process's fd table; no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) }).map(drop)
}

/// Mark every fd from 3 up close-on-exec, so nothing the caller left open reaches the sandbox
/// (firecracker's jailer does the same at start-up).
pub fn cloexec_inherited_fds() -> Result<(), Errno> {
    close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC)
}

/// The result of [`clone3`].
pub enum Cloned {
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
    Child,
}

/// `clone3` without `CLONE_VM`: a fork whose child starts in new namespaces (and, with
/// `cgroup_fd`, directly inside that cgroup v2, so nothing writes `cgroup.procs`).
///
/// The caller must be single-threaded: the child continues on a copy of this thread only.
pub fn clone3(flags: u64, cgroup_fd: Option<RawFd>) -> Result<Cloned, Errno> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64 | cgroup_fd.map_or(0, |_| CLONE_INTO_CGROUP),
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup_fd.map_or(0, |fd| fd as u64),
    };
    // SAFETY: `args` is a valid clone_args of the size we pass and outlives the call; without
    // CLONE_VM the child gets a copy of our memory and continues on its own copy of this
    // stack, like fork(2). `pidfd` is written by the kernel in the parent only.
    let rc = check(unsafe {
        libc::syscall(libc::SYS_clone3, std::ptr::addr_of_mut!(args), std::mem::size_of::<CloneArgs>())
    })?;
    if rc == 0 {
        Ok(Cloned::Child)
    } else {
        // SAFETY: the kernel returned a fresh pidfd owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        Ok(Cloned::Parent { pid: rc as libc::pid_t, pidfd })
    }
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` (linux/sched.h), version 2 (with `cgroup`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `pidfd_send_signal(pidfd, sig)`: signals exactly the process we started, never a
/// recycled pid.
pub fn pidfd_send_signal(pidfd: RawFd, sig: libc::c_int) -> Result<(), Errno> {
    // SAFETY: no info struct is passed (NULL), flags 0; the fd is ours.
    check(unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, std::ptr::null::<u8>(), 0) }).map(drop)
}

/// `setns(pidfd, CLONE_NEWNET)`: move the calling thread (only it) into the network namespace
/// of the process behind `pidfd`. Sockets it creates afterwards live there.
pub fn enter_netns_of(pidfd: RawFd) -> Result<(), Errno> {
    // SAFETY: integer arguments only; setns for CLONE_NEWNET changes this thread's namespace.
    check(unsafe { libc::setns(pidfd, libc::CLONE_NEWNET) }.into()).map(drop)
}

/// `pidfd_open(pid, 0)`: a handle on a process that becomes readable when it exits.
pub fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall with integer arguments; on success it returns a new fd we own.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `_exit` without running destructors or atexit handlers: for a forked child whose parent
/// owns the real state (buffers, temp files).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// `prctl(PR_SET_DUMPABLE, 0)`: nobody of the same uid may ptrace us or read our memory.
pub fn set_non_dumpable() -> Result<(), Errno> {
    prctl(libc::PR_SET_DUMPABLE, 0).map(drop)
}

/// `setfsuid`/`setfsgid` return the previous id and never fail visibly; we check the result
/// by calling again with -1 (an invalid id, which changes nothing and returns the current).
pub fn set_fs_ids(uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: plain integer syscalls on the calling thread's credentials.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        if libc::setfsgid(u32::MAX) as u32 != gid || libc::setfsuid(u32::MAX) as u32 != uid {
            return Err(Errno::EPERM);
        }
    }
    Ok(())
}

/// Best-effort write of a small message to a pipe we own (one write; pipes take up to 4 KiB
/// atomically). Used where there is nobody left to report a failure to.
pub fn write_fd(fd: RawFd, buf: &[u8]) {
    // SAFETY: `buf` is valid for `buf.len()` bytes; a bad fd only yields EBADF.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// Close an fd that is not owned by any Rust object.
pub fn close_fd(fd: RawFd) {
    // SAFETY: the caller passes an fd it owns and never uses again.
    unsafe { libc::close(fd) };
}

const OPEN_TREE_CLONE: u32 = 1;
const AT_EMPTY_PATH: u32 = 0x1000;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `open_tree(fd, "", OPEN_TREE_CLONE)`: a detached copy of the mount at `fd` (not recursive).
/// Done in the supervisor's mount namespace, where the source lives; the sandbox attaches it
/// in its own with [`move_mount`] (a plain bind across namespaces is refused with EINVAL).
pub fn open_tree_clone(fd: RawFd) -> Result<OwnedFd, Errno> {
    open_tree_clone_with(fd, 0)
}

/// [`open_tree_clone`] with the mounts beneath it too (`AT_RECURSIVE`): in a user namespace,
/// a mount with mounts beneath it that came from the host (locked) can only be copied whole.
pub fn open_tree_clone_recursive(fd: RawFd) -> Result<OwnedFd, Errno> {
    open_tree_clone_with(fd, libc::AT_RECURSIVE as u32)
}

fn open_tree_clone_with(fd: RawFd, extra: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: the path is a valid NUL-terminated empty string; the kernel returns a new fd.
    let rc = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd,
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | AT_EMPTY_PATH | extra,
        )
    })?;
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {attr_set})` on a detached tree (Linux 5.12+).
pub fn mount_setattr(fd: RawFd, attr_set: u64) -> Result<(), Errno> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: `attr` is a valid mount_attr of the size passed, alive during the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            AT_EMPTY_PATH,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

const FSOPEN_CLOEXEC: u32 = 1;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSMOUNT_CLOEXEC: u32 = 1;

/// A new tmpfs as a detached mount (`fsopen`, `fsconfig`, `fsmount`; Linux 5.2+), mounted
/// nowhere: the sandbox attaches it with [`move_mount`], and whoever keeps the returned fd can
/// still read the files on it after the sandbox and its mount namespace are gone. `options`
/// are tmpfs's own (`size`, `nr_inodes`, `mode`).
pub fn tmpfs_detached(options: &[(&str, String)]) -> Result<OwnedFd, Errno> {
    // SAFETY: a valid NUL-terminated file system name; the kernel returns a new fd.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: a fresh fd owned by nobody else.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    for (key, value) in options {
        let key = std::ffi::CString::new(*key).map_err(|_| Errno::EINVAL)?;
        let value = std::ffi::CString::new(value.as_str()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: key and value are valid NUL-terminated strings alive during the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                std::os::fd::AsRawFd::as_raw_fd(&fs),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })?;
    }
    // SAFETY: no pointers are passed with FSCONFIG_CMD_CREATE.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            std::os::fd::AsRawFd::as_raw_fd(&fs),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: integer arguments only; the kernel returns a new fd.
    let mnt = check(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            std::os::fd::AsRawFd::as_raw_fd(&fs),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
    })?;
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

/// `move_mount(fd, "", target_fd, "")`: attach a detached tree on the directory or file
/// `target_fd` refers to. (The kernel refuses a `/proc/self/fd/N` path as the target, so the
/// fd itself is passed.)
pub fn move_mount(fd: RawFd, target_fd: RawFd) -> Result<(), Errno> {
    // SAFETY: both paths are valid empty NUL-terminated strings; the fds are ours.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            target_fd,
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `prctl(option, arg2, 0, 0, 0)`: every prctl we make takes integer arguments only.
pub fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> Result<libc::c_long, Errno> {
    // SAFETY: integer arguments only; no memory is passed to the kernel.
    check(unsafe { libc::prctl(option, arg2, 0, 0, 0) }.into())
}

/// Every signal from 1 to 64 (but SIGKILL and SIGSTOP) back to SIG_DFL, through the raw
/// syscall: glibc refuses to touch the real-time signals it reserves (32, 33), and an ignored
/// disposition of those survives `execve` like any other.
pub fn reset_all_signal_actions() -> Result<(), Errno> {
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a valid kernel sigaction (SIG_DFL, no restorer needed) that outlives the call;
        // no old action is requested; 8 is the kernel's sigset size.
        check(unsafe {
            libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::addr_of!(default), std::ptr::null::<u8>(), 8usize)
        })?;
    }
    Ok(())
}

/// The `N` fds that came with the next message on the unix socket `socket` (`SCM_RIGHTS`),
/// exactly; `wait: false` takes only a message already there.
pub fn receive_fds<const N: usize>(socket: &OwnedFd, wait: bool) -> std::io::Result<[OwnedFd; N]> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | if wait { MsgFlags::empty() } else { MsgFlags::MSG_DONTWAIT };
    let msg = recvmsg::<()>(std::os::fd::AsRawFd::as_raw_fd(socket), &mut iov, Some(&mut space), flags)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these fds in our table; nothing else owns them.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || msg.bytes == 0 {
        return Err(std::io::Error::other("the message was cut short, or the other end closed"));
    }
    let got = fds.len();
    fds.try_into().map_err(|_| std::io::Error::other(format!("expected {N} fds in the message, got {got}")))
}

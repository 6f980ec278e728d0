//! The syscall seam: every privileged or process-changing call of the sandbox setup goes
//! through [`Sys`], so the order of steps in [`crate::plan`] can be checked in unit tests,
//! without root, against [`fake::FakeSys`], which records each call and its arguments.
//!
//! [`linux::LinuxSys`] is the real implementation and, with [`raw`], the only place with
//! `unsafe` in the sandbox setup.

pub mod fake;
pub mod landlock;
pub mod linux;
pub mod raw;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::resource::Resource;
use std::ffi::CString;
use std::path::Path;

pub use nix::unistd::Pid;

/// A failed call: which syscall, on what, and the errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call}({arg}): {errno}")]
pub struct SysError {
    pub call: &'static str,
    pub arg: String,
    pub errno: Errno,
}

impl SysError {
    pub fn new(call: &'static str, arg: impl Into<String>, errno: Errno) -> SysError {
        SysError { call, arg: arg.into(), errno }
    }
}

pub enum Forked {
    Parent(Pid),
    Child,
}

/// What Landlock managed to enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LandlockOutcome {
    Full,
    Partial,
    Unsupported,
}

/// Paths (inside the sandbox) and the access Landlock should allow beneath each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LandlockRules {
    /// Read and execute.
    pub read: Vec<std::path::PathBuf>,
    /// Everything (create, write, remove...).
    pub write: Vec<std::path::PathBuf>,
    /// Files that may be opened for writing but not replaced (`/dev/null`).
    pub write_files: Vec<std::path::PathBuf>,
}

/// The calls the sandbox setup makes, in the vocabulary of the steps rather than of libc.
pub trait Sys {
    /// Rootless: map `inside` (uid and gid) of our new user namespace to `outside`: deny
    /// setgroups, then one line in each of our own `uid_map` and `gid_map`.
    fn map_user_namespace(&self, inside: u32, outside: crate::plan::Outside) -> Result<(), SysError>;
    /// Empty the permitted, effective and inheritable sets (rootless: no uid change from 0
    /// does it for us).
    fn clear_capabilities(&self) -> Result<(), SysError>;
    /// Send our own user and network namespaces (`/proc/self/ns/{user,net}`) over the unix
    /// socket `socket` (rootless: the relay's connector joins them).
    fn send_namespaces(&self, socket: std::os::fd::RawFd) -> Result<(), SysError>;
    /// A new detached tmpfs with these options (rootless: a kernel's scratch, made in the
    /// sandbox's own user namespace).
    fn make_tmpfs(&self, options: &[(&'static str, String)]) -> Result<std::os::fd::OwnedFd, SysError>;
    /// Send `fd` over the unix socket `socket` (`SCM_RIGHTS`).
    fn send_fd(&self, socket: std::os::fd::RawFd, fd: std::os::fd::RawFd) -> Result<(), SysError>;
    /// Bind the host's device `source` (a character device) onto the empty file open at
    /// `target` (rootless: a user namespace can't make device nodes).
    fn bind_device(&self, source: &Path, target: std::os::fd::RawFd) -> Result<(), SysError>;
    /// Write `0` to an open cgroup v1 `tasks` file: the calling thread moves itself.
    fn join_cgroup(&self, tasks: std::os::fd::RawFd) -> Result<(), SysError>;
    fn unshare(&self, flags: nix::sched::CloneFlags) -> Result<(), SysError>;
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SysError>;
    /// Attach a detached mount tree (from `open_tree`) on the mount point open at `target`,
    /// after setting its flags: always nosuid and nodev, read-only unless `writable`.
    fn attach_tree(&self, tree: std::os::fd::RawFd, target: std::os::fd::RawFd, writable: bool)
        -> Result<(), SysError>;
    /// Rootless: copy the mount at `source` (not following a final symlink) as [`Sys::attach_tree`]
    /// attaches a tree, from our own mount namespace.
    fn attach_path(&self, source: &Path, target: std::os::fd::RawFd, writable: bool) -> Result<(), SysError>;
    fn umount_detach(&self, target: &Path) -> Result<(), SysError>;
    /// `fchownat(dir, name, uid, uid)`, not following a symlink.
    fn chown_at(&self, dir: std::os::fd::RawFd, name: &str, uid: u32) -> Result<(), SysError>;
    /// Create `name` in `dir` (it must not exist), write `content`, mode 0400, owned by `uid`.
    fn write_file(&self, dir: std::os::fd::RawFd, name: &str, content: &[u8], uid: u32) -> Result<(), SysError>;
    /// A character device `name` (mode 0666, whatever the umask) in the directory `dir`.
    fn mknod_char(&self, dir: std::os::fd::RawFd, name: &str, major: u64, minor: u64) -> Result<(), SysError>;
    /// `pivot_root(".", ".")` from `new_root`, then detach the old root stacked beneath.
    fn pivot_root(&self, new_root: &Path) -> Result<(), SysError>;
    fn chdir(&self, path: &Path) -> Result<(), SysError>;
    fn sethostname(&self, name: &str) -> Result<(), SysError>;
    fn loopback_up(&self) -> Result<(), SysError>;
    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<(), SysError>;
    /// `dup2` each of `fds` onto 0, 1 and 2 (all of `fds` are above 2).
    fn set_stdio(&self, fds: [std::os::fd::RawFd; 3]) -> Result<(), SysError>;
    /// Close every fd from 3 up except `keep`.
    fn close_fds_except(&self, keep: &[i32]) -> Result<(), SysError>;
    /// Empty the bounding, ambient and inheritable sets (needs `CAP_SETPCAP`).
    fn drop_capability_bounds(&self) -> Result<(), SysError>;
    fn setgroups_empty(&self) -> Result<(), SysError>;
    fn setresgid(&self, gid: u32) -> Result<(), SysError>;
    fn setresuid(&self, uid: u32) -> Result<(), SysError>;
    /// Fail unless every capability set of this process is empty.
    fn verify_no_capabilities(&self) -> Result<(), SysError>;
    fn set_no_new_privs(&self) -> Result<(), SysError>;
    /// Die with SIGKILL when the supervisor dies; `alive_fd` is a pipe the supervisor holds
    /// open, checked afterwards to close the race with a supervisor that died first.
    fn set_parent_death_kill(&self, alive_fd: i32) -> Result<(), SysError>;
    fn fork(&self) -> Result<Forked, SysError>;
    fn setsid(&self) -> Result<(), SysError>;
    /// Every signal back to its default action and an empty mask: ignored signals (the
    /// caller's, and SIGPIPE, which Rust ignores) and the mask survive `execve` otherwise.
    fn reset_signals(&self) -> Result<(), SysError>;
    /// Apply the Landlock rules as far as the kernel supports them, and say how far that was.
    fn landlock(&self, rules: &LandlockRules) -> Result<LandlockOutcome, SysError>;
    /// Install the filters, in order, on this thread (there is only one).
    fn seccomp(&self, filters: &[seccompiler::BpfProgram]) -> Result<(), SysError>;
    /// Only returns on failure.
    fn execve(&self, path: &Path, argv: &[CString], envp: &[CString]) -> SysError;
}

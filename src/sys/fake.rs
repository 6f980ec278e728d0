//! A [`Sys`] that performs nothing and records every call, for checking the order of the
//! sandbox steps without root (youki's `TestHelperSyscall` in spirit).

use super::{Forked, LandlockOutcome, LandlockRules, Sys, SysError};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use std::cell::RefCell;
use std::ffi::CString;
use std::path::{Path, PathBuf};

#[derive(Default)]
pub struct FakeSys {
    pub(crate) calls: RefCell<Vec<String>>,
    /// Prefix stripped from recorded paths (the tempdir standing in for the new root).
    pub root: Option<PathBuf>,
    /// Fail the first call whose recorded text starts with this.
    pub fail_on: Option<String>,
    /// What `landlock` reports.
    pub landlock: Option<LandlockOutcome>,
    /// Take the parent side of `fork` (the sandbox init) instead of the child side.
    pub fork_parent: bool,
}

impl FakeSys {
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// Record `text`; fail if it matches `fail_on`.
    fn rec(&self, call: &'static str, text: String) -> Result<(), SysError> {
        let fail = self.fail_on.as_deref().is_some_and(|f| text.starts_with(f));
        self.calls.borrow_mut().push(text.clone());
        if fail {
            return Err(SysError::new(call, text, Errno::EPERM));
        }
        Ok(())
    }

    /// Show `/proc/self/fd/N` as the path it points to, relative to the fake root.
    fn show(&self, p: &Path) -> String {
        let resolved = if p.starts_with("/proc/self/fd") {
            std::fs::read_link(p).unwrap_or_else(|_| p.to_path_buf())
        } else {
            p.to_path_buf()
        };
        match &self.root {
            Some(root) if resolved.starts_with(root) => {
                format!("/{}", resolved.strip_prefix(root).unwrap().display()).replace("//", "/")
            }
            _ => resolved.display().to_string(),
        }
    }
}

fn flag_names(flags: MsFlags) -> String {
    let mut v: Vec<&str> = Vec::new();
    for (f, n) in [
        (MsFlags::MS_REMOUNT, "remount"),
        (MsFlags::MS_BIND, "bind"),
        (MsFlags::MS_REC, "rec"),
        (MsFlags::MS_PRIVATE, "private"),
        (MsFlags::MS_RDONLY, "ro"),
        (MsFlags::MS_NOSUID, "nosuid"),
        (MsFlags::MS_NODEV, "nodev"),
        (MsFlags::MS_NOEXEC, "noexec"),
    ] {
        if flags.contains(f) {
            v.push(n);
        }
    }
    v.join(",")
}

impl Sys for FakeSys {
    fn join_cgroup(&self, tasks: std::os::fd::RawFd) -> Result<(), SysError> {
        self.rec("write", format!("join cgroup {}", self.show(Path::new(&format!("/proc/self/fd/{tasks}")))))
    }
    fn unshare(&self, flags: CloneFlags) -> Result<(), SysError> {
        self.rec("unshare", format!("unshare {}", flags.iter_names().map(|(n, _)| n).collect::<Vec<_>>().join("|")))
    }
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SysError> {
        let src = source.map(|s| self.show(s)).unwrap_or_else(|| "none".into());
        let mut text = format!("mount {src} {} {} [{}]", self.show(target), fstype.unwrap_or("-"), flag_names(flags));
        if let Some(d) = data {
            text.push_str(&format!(" {d}"));
        }
        self.rec("mount", text)
    }
    fn attach_tree(
        &self,
        _tree: std::os::fd::RawFd,
        target: std::os::fd::RawFd,
        writable: bool,
    ) -> Result<(), SysError> {
        let shown = self.show(Path::new(&format!("/proc/self/fd/{target}")));
        self.rec("move_mount", format!("attach {shown} [{}nosuid,nodev]", if writable { "" } else { "ro," }))
    }
    fn chown_at(&self, dir: std::os::fd::RawFd, name: &str, uid: u32) -> Result<(), SysError> {
        let shown = self.show(Path::new(&format!("/proc/self/fd/{dir}")));
        self.rec("fchownat", format!("chown {shown}/{name} {uid}"))
    }
    fn write_file(&self, dir: std::os::fd::RawFd, name: &str, content: &[u8], uid: u32) -> Result<(), SysError> {
        let shown = self.show(Path::new(&format!("/proc/self/fd/{dir}")));
        self.rec("openat", format!("write {shown}/{name} ({} bytes, owner {uid})", content.len()))
    }
    fn mknod_char(&self, dir: std::os::fd::RawFd, name: &str, major: u64, minor: u64) -> Result<(), SysError> {
        let shown = self.show(Path::new(&format!("/proc/self/fd/{dir}")));
        self.rec("mknodat", format!("mknod {shown}/{name} c {major}:{minor}"))
    }
    fn umount_detach(&self, target: &Path) -> Result<(), SysError> {
        self.rec("umount2", format!("umount {}", self.show(target)))
    }
    fn pivot_root(&self, new_root: &Path) -> Result<(), SysError> {
        self.rec("pivot_root", format!("pivot_root {}", self.show(new_root)))
    }
    fn chdir(&self, path: &Path) -> Result<(), SysError> {
        self.rec("chdir", format!("chdir {}", path.display()))
    }
    fn sethostname(&self, name: &str) -> Result<(), SysError> {
        self.rec("sethostname", format!("sethostname {name}"))
    }
    fn loopback_up(&self) -> Result<(), SysError> {
        self.rec("ioctl", "loopback up".into())
    }
    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<(), SysError> {
        self.rec("setrlimit", format!("setrlimit {resource:?} {soft} {hard}"))
    }
    fn set_stdio(&self, _fds: [std::os::fd::RawFd; 3]) -> Result<(), SysError> {
        self.rec("dup2", "dup2 stdio from the supervisor's pipes".into())
    }
    fn close_fds_except(&self, keep: &[i32]) -> Result<(), SysError> {
        self.rec("close_range", format!("close fds except {}", keep.len()))
    }
    fn drop_capability_bounds(&self) -> Result<(), SysError> {
        self.rec("prctl", "drop bounding ambient inheritable".into())
    }
    fn map_user_namespace(&self, inside: u32, outside: crate::plan::Outside) -> Result<(), SysError> {
        self.rec("write", format!("map user namespace {inside} -> {}:{}", outside.uid, outside.gid))
    }
    fn attach_path(&self, source: &Path, target: std::os::fd::RawFd, writable: bool) -> Result<(), SysError> {
        let shown = self.show(Path::new(&format!("/proc/self/fd/{target}")));
        self.rec("move_mount", format!("attach {} -> {shown} {}", source.display(), if writable { "rw" } else { "ro" }))
    }
    fn clear_capabilities(&self) -> Result<(), SysError> {
        self.rec("capset", "clear capabilities".into())
    }
    fn make_tmpfs(&self, options: &[(&'static str, String)]) -> Result<std::os::fd::OwnedFd, SysError> {
        let shown: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.rec("fsopen", format!("make tmpfs {}", shown.join(",")))?;
        // a directory standing in for the detached tmpfs
        std::fs::File::open(self.root.as_deref().unwrap_or(Path::new("/")))
            .map(Into::into)
            .map_err(|e| SysError::new("open", "fake tmpfs", Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))
    }
    fn send_namespaces(&self, socket: std::os::fd::RawFd) -> Result<(), SysError> {
        let _ = socket;
        self.rec("sendmsg", "send our user and network namespaces".into())
    }
    fn send_fd(&self, socket: std::os::fd::RawFd, fd: std::os::fd::RawFd) -> Result<(), SysError> {
        let _ = (socket, fd);
        self.rec("sendmsg", "send the scratch".into())
    }
    fn bind_device(&self, source: &Path, target: std::os::fd::RawFd) -> Result<(), SysError> {
        let shown = self.show(Path::new(&format!("/proc/self/fd/{target}")));
        self.rec("mount", format!("bind device {} -> {shown}", source.display()))
    }
    fn setgroups_empty(&self) -> Result<(), SysError> {
        self.rec("setgroups", "setgroups []".into())
    }
    fn setresgid(&self, gid: u32) -> Result<(), SysError> {
        self.rec("setresgid", format!("setresgid {gid}"))
    }
    fn setresuid(&self, uid: u32) -> Result<(), SysError> {
        self.rec("setresuid", format!("setresuid {uid}"))
    }
    fn verify_no_capabilities(&self) -> Result<(), SysError> {
        self.rec("capget", "verify no capabilities".into())
    }
    fn set_no_new_privs(&self) -> Result<(), SysError> {
        self.rec("prctl", "no_new_privs".into())
    }
    fn set_parent_death_kill(&self, _alive_fd: i32) -> Result<(), SysError> {
        self.rec("prctl", "pdeathsig kill".into())
    }
    fn fork(&self) -> Result<Forked, SysError> {
        self.rec("fork", "fork".into())?;
        Ok(if self.fork_parent { Forked::Parent(nix::unistd::Pid::from_raw(2)) } else { Forked::Child })
    }
    fn setsid(&self) -> Result<(), SysError> {
        self.rec("setsid", "setsid".into())
    }
    fn reset_signals(&self) -> Result<(), SysError> {
        self.rec("sigaction", "reset signals".into())
    }
    fn landlock(&self, rules: &LandlockRules) -> Result<LandlockOutcome, SysError> {
        self.rec("landlock", format!("landlock read={} write={}", rules.read.len(), rules.write.len()))?;
        Ok(self.landlock.clone().unwrap_or(LandlockOutcome::Full))
    }
    fn seccomp(&self, filters: &[seccompiler::BpfProgram]) -> Result<(), SysError> {
        self.rec("seccomp", format!("seccomp {} filters", filters.len()))
    }
    fn execve(&self, path: &Path, argv: &[CString], _envp: &[CString]) -> SysError {
        let _ = self.rec("execve", format!("execve {} argc={}", path.display(), argv.len()));
        SysError::new("execve", "fake", Errno::ENOSYS)
    }
}

//! Who is calling, and what they may expose.
//!
//! The helper is used three ways: run by root, through a sudo rule, or installed setuid-root.
//! In the last two the caller is untrusted: every bind source and the report file are opened
//! *as the caller* (effective uid, gid and groups switched to theirs for the call), so the
//! helper exposes nothing its caller could not read itself and writes nowhere they could not.

use crate::mounts::BindSource;
use crate::policy::SymlinkMode;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot be used as {what} by uid {uid}: {errno}")]
    Denied { path: PathBuf, what: &'static str, uid: u32, errno: Errno },
    #[error("{path}: is a symlink; bind its target instead (or set symlink = \"copy\" in a policy)")]
    Symlink { path: PathBuf },
    #[error("{path}: not a regular file or directory")]
    Special { path: PathBuf },
    #[error("uid {uid} may not use isolate-grade: {reason}")]
    NotAllowed { uid: u32, reason: String },
    #[error("switching credentials: {0}")]
    Credentials(Errno),
}

/// The person on whose behalf we run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// How they reached us.
    pub via: Via,
}

/// How the caller reached us: only `Root` is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Really root: may choose another config and bind anything.
    Root,
    /// Through a sudo rule (`SUDO_UID`/`SUDO_GID` name the caller).
    Sudo,
    /// The binary is installed setuid-root; the real uid is the caller's.
    Setuid,
    /// No privilege at all (rootless mode): we are the caller, and can do no more than they
    /// can, so there is nothing to protect from them; the sandbox is built in a user
    /// namespace ([`crate::userns`]).
    Unprivileged,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Root => "root",
            Via::Sudo => "sudo",
            Via::Setuid => "setuid",
            Via::Unprivileged => "unprivileged",
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Caller {
    /// Only a real root caller is trusted (can pick another config, bind anything); and an
    /// unprivileged one, whose process has only their own rights to misuse (nothing is done
    /// as anyone else: reading as the caller is reading).
    pub fn trusted(&self) -> bool {
        matches!(self.via, Via::Root | Via::Unprivileged)
    }

    /// Work out the caller from our credentials (and, under sudo, from what sudo recorded:
    /// `SUDO_UID`/`SUDO_GID` are set by sudo itself; a root user who fakes them only
    /// restricts themselves).
    pub fn detect() -> Caller {
        let r = nix::unistd::getresuid().expect("getresuid");
        let g = nix::unistd::getresgid().expect("getresgid");
        if r.real.is_root() {
            let sudo = |k| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
            if let (Some(uid), Some(gid)) = (sudo("SUDO_UID"), sudo("SUDO_GID")) {
                if uid != 0 {
                    let groups = nix::unistd::User::from_uid(Uid::from_raw(uid))
                        .ok()
                        .flatten()
                        .and_then(|u| {
                            let name = std::ffi::CString::new(u.name).ok()?;
                            nix::unistd::getgrouplist(&name, Gid::from_raw(gid)).ok()
                        })
                        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
                        .unwrap_or_else(|| vec![gid]);
                    return Caller { uid, gid, groups, via: Via::Sudo };
                }
            }
            return Caller { uid: 0, gid: 0, groups: vec![], via: Via::Root };
        }
        let groups =
            nix::unistd::getgroups().map(|gs| gs.into_iter().map(|g| g.as_raw()).collect()).unwrap_or_default();
        let via = if r.effective.is_root() { Via::Setuid } else { Via::Unprivileged };
        Caller { uid: r.real.as_raw(), gid: g.real.as_raw(), groups, via }
    }

    /// The system config this caller gets: `requested` only for root; everyone else always
    /// gets the fixed path (a caller's config would be read, and partly printed, as root).
    pub fn config_path(&self, requested: Option<&Path>) -> Result<PathBuf, String> {
        match requested {
            Some(p) if self.trusted() => Ok(p.to_path_buf()),
            Some(_) => Err("only root may choose another system config (--config, ISOLATE_GRADE_CONFIG)".into()),
            None => Ok(PathBuf::from(crate::config::DEFAULT_PATH)),
        }
    }

    /// Untrusted callers must be in the config's `allowed_group`.
    pub fn check_allowed(&self, allowed_group: Option<&str>) -> Result<(), IdentityError> {
        if self.trusted() {
            return Ok(());
        }
        let not = |reason: String| Err(IdentityError::NotAllowed { uid: self.uid, reason });
        let Some(name) = allowed_group else {
            return not("no allowed_group is set in the system config, so only root may".into());
        };
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) if self.gid == g.gid.as_raw() || self.groups.contains(&g.gid.as_raw()) => Ok(()),
            Ok(Some(_)) => not(format!("not a member of group {name:?}")),
            _ => not(format!("group {name:?} (allowed_group) does not exist")),
        }
    }

    /// Become the caller for good (real, effective and saved ids, and groups), for work that
    /// needs no privilege: grading runs nbgrader as the instructor, and only each kernel,
    /// started through the kernelspec, takes the privilege again. A no-op for root.
    pub fn become_caller(&self) -> Result<(), IdentityError> {
        if self.trusted() {
            return Ok(());
        }
        let cred = IdentityError::Credentials;
        let groups: Vec<Gid> = self.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        nix::unistd::setgroups(&groups).map_err(cred)?;
        nix::unistd::setresgid(gid, gid, gid).map_err(cred)?;
        nix::unistd::setresuid(uid, uid, uid).map_err(cred)?;
        let r = nix::unistd::getresuid().map_err(cred)?;
        if (r.real, r.effective, r.saved) != (uid, uid, uid) || nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(IdentityError::Credentials(Errno::EPERM));
        }
        Ok(())
    }

    /// Run `f` with our effective ids and groups switched to the caller's (a no-op for root),
    /// so the kernel checks every path lookup and open against their permissions.
    pub fn as_caller<T>(&self, f: impl FnOnce() -> T) -> Result<T, IdentityError> {
        if self.trusted() {
            return Ok(f());
        }
        let groups: Vec<Gid> = self.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        let cred = IdentityError::Credentials;
        nix::unistd::setgroups(&groups).map_err(cred)?;
        nix::unistd::setegid(Gid::from_raw(self.gid)).map_err(cred)?;
        nix::unistd::seteuid(Uid::from_raw(self.uid)).map_err(cred)?;
        let out = f();
        // Back to root: the saved uid is still 0. Failing here must not continue.
        nix::unistd::seteuid(Uid::from_raw(0)).expect("restore euid 0");
        nix::unistd::setegid(Gid::from_raw(0)).expect("restore egid 0");
        nix::unistd::setgroups(&[]).expect("clear groups");
        Ok(out)
    }

    /// Open a bind source as the caller: read permission on the object itself is checked
    /// (`O_RDONLY`, also for directories), write permission too when `writable`.
    /// `Ok(None)`: optional and missing.
    pub fn open_bind_source(
        &self,
        path: &Path,
        writable: bool,
        optional: bool,
        symlink: SymlinkMode,
    ) -> Result<Option<BindSource>, IdentityError> {
        let uid = self.uid;
        self.as_caller(|| {
            let denied = |what, errno| IdentityError::Denied { path: path.into(), what, uid, errno };
            let md = match std::fs::symlink_metadata(path) {
                Ok(md) => md,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && optional => return Ok(None),
                Err(e) => return Err(denied("a bind source", Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))),
            };
            if md.file_type().is_symlink() {
                return match symlink {
                    SymlinkMode::Copy => std::fs::read_link(path)
                        .map(|to| Some(Err(to)))
                        .map_err(|e| IdentityError::Io { path: path.into(), source: e }),
                    SymlinkMode::Error => Err(IdentityError::Symlink { path: path.into() }),
                };
            }
            let is_dir = md.is_dir();
            if !is_dir && !md.is_file() {
                return Err(IdentityError::Special { path: path.into() });
            }
            let mut flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            if is_dir {
                flags |= OFlag::O_DIRECTORY;
            }
            let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| denied("a bind source", e))?;
            if writable {
                nix::unistd::faccessat(
                    &fd,
                    "",
                    nix::unistd::AccessFlags::W_OK,
                    nix::fcntl::AtFlags::AT_EACCESS | nix::fcntl::AtFlags::AT_EMPTY_PATH,
                )
                .map_err(|e| denied("a writable bind source", e))?;
            }
            Ok(Some(Ok((fd, is_dir))))
        })??
        .map(|found| {
            let (fd, is_dir) = match found {
                Ok(x) => x,
                Err(link) => return Ok(BindSource::Symlink(link)),
            };
            // Rootless, the sandbox copies it from its own mount namespace (no privilege here).
            if crate::userns::choose().mode == crate::userns::Mode::Rootless {
                return Ok(BindSource::Path { path: path.to_path_buf(), is_dir });
            }
            // As root again: a detached copy of the mount, to attach inside the sandbox.
            crate::sys::raw::open_tree_clone(fd.as_raw_fd()).map(|tree| BindSource::Tree { fd: tree, is_dir }).map_err(
                |errno| IdentityError::Denied { path: path.into(), what: "a bind source (open_tree)", uid, errno },
            )
        })
        .transpose()
    }

    /// Create or truncate the report file as the caller, never following a symlink.
    pub fn create_report(&self, path: &Path) -> Result<File, IdentityError> {
        let uid = self.uid;
        self.as_caller(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| IdentityError::Denied {
                    path: path.into(),
                    what: "the report file",
                    uid,
                    errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })
        })?
    }

    /// Read a policy file as the caller.
    pub fn read_file(&self, path: &Path) -> Result<String, IdentityError> {
        self.as_caller(|| {
            std::fs::read_to_string(path).map_err(|source| IdentityError::Io { path: path.into(), source })
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_caller_is_trusted_others_need_the_group() {
        let root = Caller { uid: 0, gid: 0, groups: vec![], via: Via::Root };
        assert!(root.check_allowed(None).is_ok());
        assert_eq!(root.config_path(Some(Path::new("/x.toml"))), Ok(PathBuf::from("/x.toml")));
        assert_eq!(root.config_path(None), Ok(PathBuf::from(crate::config::DEFAULT_PATH)));
        let user = Caller { uid: 1234, gid: 1234, groups: vec![], via: Via::Sudo };
        assert!(user.check_allowed(None).unwrap_err().to_string().contains("no allowed_group"));
        assert!(user.config_path(Some(Path::new("/x.toml"))).unwrap_err().starts_with("only root may choose"));
        assert_eq!(user.config_path(None), Ok(PathBuf::from(crate::config::DEFAULT_PATH)));
        assert!(user.check_allowed(Some("root")).unwrap_err().to_string().contains("not a member"));
        let member = Caller { groups: vec![0], ..user.clone() };
        assert!(member.check_allowed(Some("root")).is_ok());
        assert!(user.check_allowed(Some("no-such-group-xyz")).unwrap_err().to_string().contains("does not exist"));
    }

    #[test]
    fn symlink_sources_are_refused_or_copied() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("l");
        std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
        let root = Caller { uid: 0, gid: 0, groups: vec![], via: Via::Root };
        assert!(matches!(
            root.open_bind_source(&link, false, false, SymlinkMode::Error),
            Err(IdentityError::Symlink { .. })
        ));
        match root.open_bind_source(&link, false, false, SymlinkMode::Copy).unwrap() {
            Some(BindSource::Symlink(to)) => assert_eq!(to, Path::new("/etc/shadow")),
            other => panic!("{other:?}"),
        }
        assert!(root.open_bind_source(&d.path().join("missing"), false, true, SymlinkMode::Error).unwrap().is_none());
        assert!(root.open_bind_source(&d.path().join("missing"), false, false, SymlinkMode::Error).is_err());
        assert!(matches!(
            root.open_bind_source(Path::new("/dev/null"), false, false, SymlinkMode::Error),
            Err(IdentityError::Special { .. })
        ));
    }
}

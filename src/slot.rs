//! The host's state for sandboxes: the state directory (slot locks, the empty mount point
//! of each new root) and the slots, each of which decides a run's uid and cgroup name.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("all {slots} sandbox slots are busy (locks in {dir})")]
    NoSlot { slots: u32, dir: PathBuf },
    #[error("{path}: must be a directory owned by {owner} and writable by nobody else")]
    InsecureStateDir { path: PathBuf, owner: String },
}

/// A sandbox slot, held until dropped: its index decides the uid and the cgroup name.
pub struct Slot {
    pub index: u32,
    _lock: Flock<File>,
}

/// The state directory (slot locks, the empty root mount point), created if missing, never
/// through a symlink: root's (privileged, mode 0755), or in rootless mode the caller's own,
/// open to nobody else (0700), since another user who could write in it could take a slot's
/// lock or put something where a new root is mounted.
pub fn prepare_state_dir(dir: &Path, owner: u32) -> Result<PathBuf, SlotError> {
    let io = |source| SlotError::Io { path: dir.into(), source };
    let insecure = |path: &Path| SlotError::InsecureStateDir {
        path: path.into(),
        owner: if owner == 0 { "root".into() } else { format!("uid {owner} (mode 0700)") },
    };
    let mode = if owner == 0 { 0o755 } else { 0o700 };
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let md = std::fs::symlink_metadata(dir).map_err(io)?;
    let open_to_others = if owner == 0 { md.mode() & 0o022 != 0 } else { md.mode() & 0o077 != 0 };
    if !md.is_dir() || md.uid() != owner || open_to_others {
        return Err(insecure(dir));
    }
    let root = dir.join("root");
    match std::fs::create_dir(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(SlotError::Io { path: root, source }),
    }
    if !root.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(insecure(&root));
    }
    Ok(root)
}

/// Rootless mode's state directory: `$XDG_RUNTIME_DIR/isolate-grade` when the caller has a
/// runtime directory of their own (systemd's, 0700), else `/tmp/isolate-grade-<uid>`, which
/// [`prepare_state_dir`] refuses if someone else made it first.
pub fn rootless_state_dir(uid: u32) -> PathBuf {
    let own = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|d| {
        d.is_absolute()
            && std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
    });
    match own {
        Some(d) => d.join("isolate-grade"),
        None => PathBuf::from(format!("/tmp/isolate-grade-{uid}")),
    }
}

/// The lowest free slot: a lock file per slot, `flock`ed for the whole run (released by the
/// kernel however we exit). A caller cannot choose a slot, so cannot take over a running box.
pub fn acquire_slot(dir: &Path, slots: u32) -> Result<Slot, SlotError> {
    for index in 0..slots {
        let path = dir.join(format!("slot-{index}.lock"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| SlotError::Io { path: path.clone(), source })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Slot { index, _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => continue,
            Err((_, e)) => return Err(SlotError::Io { path, source: e.into() }),
        }
    }
    Err(SlotError::NoSlot { slots, dir: dir.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_released() {
        let d = tempfile::tempdir().unwrap();
        let a = acquire_slot(d.path(), 2).unwrap();
        let b = acquire_slot(d.path(), 2).unwrap();
        assert_eq!((a.index, b.index), (0, 1));
        assert!(matches!(acquire_slot(d.path(), 2), Err(SlotError::NoSlot { .. })));
        drop(a);
        assert_eq!(acquire_slot(d.path(), 2).unwrap().index, 0);
    }
}

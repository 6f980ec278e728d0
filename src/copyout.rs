//! The files a kernel made in its working directory, copied out to where nbgrader expects them
//! once the kernel has ended.
//!
//! Bare nbgrader's kernel writes straight into `autograded/<student>/<assignment>/` (a saved
//! figure or CSV for manual grading, nbgrader's own `test_side_effects`). The sandboxed kernel
//! writes to a scratch layer instead (see [`crate::mounts::PreparedOverlay`]), which we hold as a
//! detached mount. When the sandbox is gone (so nothing can change the scratch any more), its
//! upper layer is read here, as root, and what passes is written into the working directory as
//! the caller: regular files and directories only, never a symlink, a device or a whiteout;
//! never a notebook (the kernel's copy of one would replace the graded notebook), nbgrader's
//! `timestamp.txt` (a forged one could make a later run skip a resubmission), or a file that
//! Python, Jupyter or nbgrader would load as configuration or code (`nbgrader_config.py`,
//! `sitecustomize.py`, `*.pth`, `jupyter_*_config.py`...); never through a
//! symlink on the host (every directory is opened `O_NOFOLLOW`, every file is written to a new
//! name and renamed into place, so no link is ever written through); capped in count, size and
//! depth. Deletions are not copied: a file the kernel removed stays.

use crate::identity::Caller;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CopyOutError {
    #[error("{path}: {errno}")]
    Sys { path: PathBuf, errno: nix::errno::Errno },
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Rootless: the scratch the sandbox should have sent us.
    #[error("the kernel's scratch: {0}")]
    Scratch(std::io::Error),
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_files: usize,
    pub max_bytes: u64,
    pub max_depth: usize,
}

pub const LIMITS: Limits = Limits { max_files: 1000, max_bytes: 64 << 20, max_depth: 16 };

/// What was copied, and what was not and why (names escaped; at most 16 listed).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CopiedOut {
    pub files: usize,
    pub bytes: u64,
    pub not_copied: Vec<String>,
    pub not_copied_count: usize,
}

impl CopiedOut {
    fn skip(&mut self, rel: &Path, why: &str) {
        self.not_copied_count += 1;
        if self.not_copied.len() < 16 {
            self.not_copied.push(format!("{}: {why}", crate::escape::text(&rel.to_string_lossy())));
        }
    }
}

/// What has been read so far, against [`Limits`].
#[derive(Default)]
struct Taken {
    files: usize,
    bytes: u64,
}

enum Entry {
    Dir(PathBuf),
    File { rel: PathBuf, content: Vec<u8>, executable: bool },
}

/// Notebooks (and their checkpoints) are nbgrader's to write.
fn reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".ipynb") || lower == ".ipynb_checkpoints"
}

/// Files that Python, IPython, Jupyter or nbgrader load by themselves as configuration or code
/// when they find them in a working directory or on a path: a student's copy would run as the
/// instructor the next time one of those starts there.
fn runs_as_the_instructor(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let config =
        |prefix: &str| lower.starts_with(prefix) && (lower.ends_with("_config.py") || lower.ends_with("_config.json"));
    matches!(lower.as_str(), "nbgrader_config.py" | "sitecustomize.py" | "usercustomize.py" | ".ipython" | ".jupyter")
        || lower.ends_with(".pth")
        || config("jupyter")
        || config("ipython")
        || config("nbgrader")
}

/// Copy what the kernel made (the `upper` layer of `scratch`) into `dest`, as `caller`.
pub fn copy_out(scratch: &OwnedFd, dest: &Path, caller: &Caller, limits: Limits) -> Result<CopiedOut, CopyOutError> {
    let mut out = CopiedOut::default();
    let upper = match openat_dir(scratch, "upper") {
        Ok(fd) => fd,
        Err(errno) => return Err(CopyOutError::Sys { path: "<scratch>/upper".into(), errno }),
    };
    let mut entries = Vec::new();
    read_tree(&upper, Path::new(""), 0, limits, &mut entries, &mut Taken::default(), &mut out)?;
    caller.as_caller(|| write_tree(dest, entries, &mut out))??;
    Ok(out)
}

fn openat_dir(dir: &impl AsFd, name: &str) -> Result<OwnedFd, nix::errno::Errno> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Read the scratch's tree (as root; the sandbox has ended, nothing changes it any more).
fn read_tree(
    dir: &OwnedFd,
    rel: &Path,
    depth: usize,
    limits: Limits,
    entries: &mut Vec<Entry>,
    taken: &mut Taken,
    out: &mut CopiedOut,
) -> Result<(), CopyOutError> {
    let sys = |errno| CopyOutError::Sys { path: rel.to_path_buf(), errno };
    let mut names = Vec::new();
    let mut listing = nix::dir::Dir::from_fd(nix::unistd::dup(dir).map_err(sys)?).map_err(sys)?;
    for e in listing.iter() {
        let e = e.map_err(sys)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push((name, e.file_name().to_owned()));
        }
    }
    names.sort();
    for (name, raw) in names {
        let here = rel.join(&name);
        if reserved(&name) {
            continue;
        }
        if runs_as_the_instructor(&name) {
            out.skip(&here, "a file Python, Jupyter or nbgrader would load as configuration or code");
            continue;
        }
        if depth == 0 && name == "timestamp.txt" {
            // nbgrader's record of when this was submitted: a forged one could make a later
            // run skip a newer submission
            out.skip(&here, "nbgrader's timestamp");
            continue;
        }
        if name.starts_with(".isolate-grade-copy") {
            out.skip(&here, "a name isolate-grade uses for its own temporary files");
            continue;
        }
        let st = match fstatat(dir, raw.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(errno) => return Err(CopyOutError::Sys { path: here, errno }),
        };
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFCHR && st.st_rdev == 0 {
            continue; // a whiteout: a file the kernel deleted (or a notebook we hid)
        }
        if kind == SFlag::S_IFDIR {
            if depth + 1 >= limits.max_depth {
                out.skip(&here, "nested too deep");
                continue;
            }
            let sub = nix::fcntl::openat(
                dir,
                raw.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|errno| CopyOutError::Sys { path: here.clone(), errno })?;
            entries.push(Entry::Dir(here.clone()));
            read_tree(&sub, &here, depth + 1, limits, entries, taken, out)?;
            continue;
        }
        if kind != SFlag::S_IFREG {
            out.skip(&here, if kind == SFlag::S_IFLNK { "a symlink" } else { "not a regular file" });
            continue;
        }
        if taken.files >= limits.max_files {
            out.skip(&here, "too many files");
            continue;
        }
        if taken.bytes + st.st_size as u64 > limits.max_bytes {
            out.skip(&here, "over the size limit");
            continue;
        }
        // Checked again on the fd (non-blocking: a FIFO put in its place must not hang us).
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(dir, raw.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(_) => {
                out.skip(&here, "changed while it was read");
                continue;
            }
        };
        let is_file =
            nix::sys::stat::fstat(&fd).is_ok_and(|s| s.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits());
        if !is_file {
            out.skip(&here, "changed while it was read");
            continue;
        }
        let mut content = Vec::new();
        // SAFETY: a fresh fd we own, handed to File to read and close.
        let mut f = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
        (&mut f).take(limits.max_bytes - taken.bytes + 1).read_to_end(&mut content).map_err(|e| CopyOutError::Sys {
            path: here.clone(),
            errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        if taken.bytes + content.len() as u64 > limits.max_bytes {
            out.skip(&here, "over the size limit");
            continue;
        }
        taken.files += 1;
        taken.bytes += content.len() as u64;
        entries.push(Entry::File { rel: here, content, executable: st.st_mode & 0o100 != 0 });
    }
    Ok(())
}

/// Write the entries under `dest` (as the caller): directories opened without following
/// symlinks, each file written to a fresh name and renamed over its place.
fn write_tree(dest: &Path, entries: Vec<Entry>, out: &mut CopiedOut) -> Result<(), CopyOutError> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| CopyOutError::Sys { path: dest.to_path_buf(), errno })?;
    // A directory we could not make or open: nothing beneath it is written.
    let mut refused: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let rel = match &entry {
            Entry::Dir(rel) | Entry::File { rel, .. } => rel.clone(),
        };
        if refused.iter().any(|r| rel.starts_with(r)) {
            continue;
        }
        let parent = match open_parent(&root, &rel) {
            Ok(fd) => fd,
            Err(_) => {
                out.skip(&rel, "its directory could not be opened without following a symlink");
                continue;
            }
        };
        let name = rel.file_name().expect("a name").to_owned();
        match entry {
            Entry::Dir(_) => {
                let made = nix::sys::stat::mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o755));
                let opened = openat_dir(&parent, &name.to_string_lossy());
                if !matches!(made, Ok(()) | Err(nix::errno::Errno::EEXIST)) || opened.is_err() {
                    out.skip(&rel, "the directory could not be made here, or is a symlink");
                    refused.push(rel);
                }
            }
            Entry::File { content, executable, .. } => {
                let tmp = format!(".isolate-grade-copy-{}", std::process::id());
                let mode = Mode::from_bits_truncate(if executable { 0o755 } else { 0o644 });
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let written = nix::fcntl::openat(&parent, tmp.as_str(), flags, mode)
                    .map_err(std::io::Error::from)
                    .and_then(|fd| {
                        // SAFETY: a fresh fd we own, handed to File to write and close.
                        let mut f = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
                        f.write_all(&content)
                    });
                let renamed = written.map_err(|_| ()).and_then(|_| {
                    nix::fcntl::renameat(&parent, tmp.as_str(), &parent, name.as_os_str()).map_err(|_| ())
                });
                match renamed {
                    Ok(()) => {
                        out.files += 1;
                        out.bytes += content.len() as u64;
                    }
                    Err(()) => {
                        let _ = nix::unistd::unlinkat(&parent, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
                        out.skip(&rel, "could not be written here");
                    }
                }
            }
        }
    }
    Ok(())
}

/// The directory that holds `rel` under `root`, each component opened `O_NOFOLLOW`.
fn open_parent(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, nix::errno::Errno> {
    let mut fd = nix::unistd::dup(root)?;
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            fd = openat_dir(&fd, &c.as_os_str().to_string_lossy())?;
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller { uid: 0, gid: 0, groups: vec![], via: crate::identity::Via::Root }
    }

    /// A fake scratch: a directory with `upper/` in it, standing in for the tmpfs.
    fn scratch(d: &Path) -> OwnedFd {
        std::fs::create_dir_all(d.join("upper/sub")).unwrap();
        nix::fcntl::open(d, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn regular_files_come_out_and_nothing_else() {
        let s = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let fd = scratch(s.path());
        let up = s.path().join("upper");
        std::fs::write(up.join("figure.png"), "png").unwrap();
        std::fs::write(up.join("sub/data.csv"), "a,b").unwrap();
        std::fs::write(up.join("problem1.ipynb"), "forged").unwrap();
        std::fs::write(up.join("PROBLEM2.IPYNB"), "forged").unwrap();
        std::fs::write(up.join("timestamp.txt"), "2099-01-01 00:00:00").unwrap();
        for planted in ["nbgrader_config.py", "sitecustomize.py", "zz.pth", "jupyter_server_config.py"] {
            std::fs::write(up.join("sub").join(planted), "import os").unwrap();
        }
        std::os::unix::fs::symlink("/etc/shadow", up.join("shadow")).unwrap();
        std::fs::write(dest.path().join("problem1.ipynb"), "graded").unwrap();
        std::fs::write(dest.path().join("figure.png"), "old").unwrap();
        let out = copy_out(&fd, dest.path(), &caller(), LIMITS).unwrap();
        assert_eq!((out.files, out.bytes), (2, 6), "{out:?}");
        assert_eq!(std::fs::read_to_string(dest.path().join("figure.png")).unwrap(), "png");
        assert_eq!(std::fs::read_to_string(dest.path().join("sub/data.csv")).unwrap(), "a,b");
        assert_eq!(std::fs::read_to_string(dest.path().join("problem1.ipynb")).unwrap(), "graded");
        assert!(!dest.path().join("PROBLEM2.IPYNB").exists());
        assert!(std::fs::symlink_metadata(dest.path().join("shadow")).is_err());
        assert!(!dest.path().join("timestamp.txt").exists());
        for why in ["shadow: a symlink", "timestamp.txt: nbgrader's timestamp"] {
            assert!(out.not_copied.iter().any(|n| n == why), "{why}: {out:?}");
        }
        assert_eq!(out.not_copied_count, 6, "{out:?}");
        for planted in ["nbgrader_config.py", "sitecustomize.py", "zz.pth", "jupyter_server_config.py"] {
            assert!(!dest.path().join("sub").join(planted).exists(), "{planted}");
        }
    }

    #[test]
    fn nothing_is_written_through_a_symlink_on_the_host() {
        let s = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let fd = scratch(s.path());
        std::fs::write(s.path().join("upper/sub/x.txt"), "x").unwrap();
        std::fs::write(s.path().join("upper/target.txt"), "new").unwrap();
        // on the host, `sub` is a symlink out, and target.txt a symlink to a file elsewhere
        std::os::unix::fs::symlink(elsewhere.path(), dest.path().join("sub")).unwrap();
        std::fs::write(elsewhere.path().join("victim"), "untouched").unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("victim"), dest.path().join("target.txt")).unwrap();
        let out = copy_out(&fd, dest.path(), &caller(), LIMITS).unwrap();
        assert!(!elsewhere.path().join("x.txt").exists());
        assert_eq!(std::fs::read_to_string(elsewhere.path().join("victim")).unwrap(), "untouched");
        // target.txt's link was replaced by the file, not written through
        assert!(std::fs::symlink_metadata(dest.path().join("target.txt")).unwrap().is_file());
        assert!(out.not_copied.iter().any(|n| n.starts_with("sub")), "{out:?}");
    }

    #[test]
    fn count_and_size_are_capped() {
        let s = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let fd = scratch(s.path());
        for i in 0..5 {
            std::fs::write(s.path().join(format!("upper/f{i}")), "0123456789").unwrap();
        }
        let out = copy_out(&fd, dest.path(), &caller(), Limits { max_files: 3, max_bytes: 25, max_depth: 4 }).unwrap();
        assert_eq!(out.files, 2, "{out:?}");
        assert_eq!(out.not_copied_count, 3);
    }
}

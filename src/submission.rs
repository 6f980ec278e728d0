//! Checking a submission tree before nbgrader touches it (for `isolate-grade ASSIGNMENT`).
//!
//! nbgrader copies a submission's extra files with `shutil.copy`, which follows symlinks, and
//! chmods what it copied, following them again: a submitted `notes.txt ->
//! ../../../source/ps1/problem1.ipynb` would hand the student the solutions, and worse. So
//! every entry is examined with `fstatat(AT_SYMLINK_NOFOLLOW)` from an fd of its own
//! directory, directories are entered with `O_NOFOLLOW | O_DIRECTORY`, and nothing is read or
//! followed. Anything but plain directories and regular files with a single link is rejected,
//! and so is a tree too large (per file, in total, in entries, in depth), with the path and the
//! reason of each problem.

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimits {
    pub max_file: u64,
    pub max_total: u64,
    pub max_entries: u64,
    pub max_depth: usize,
}

impl Default for TreeLimits {
    /// Generous for notebooks and data files; a submission is not a dataset.
    fn default() -> TreeLimits {
        TreeLimits { max_file: 100 << 20, max_total: 500 << 20, max_entries: 10_000, max_depth: 16 }
    }
}

/// Why an entry (or the tree) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Symlink,
    Fifo,
    Socket,
    Device,
    HardLink { links: u64 },
    TooLarge { size: u64, max: u64 },
    TotalTooLarge { max: u64 },
    TooManyEntries { max: u64 },
    TooDeep { max: usize },
    Unreadable(Errno),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Symlink => write!(f, "a symlink (its target is never followed)"),
            Problem::Fifo => write!(f, "a FIFO"),
            Problem::Socket => write!(f, "a socket"),
            Problem::Device => write!(f, "a device node"),
            Problem::HardLink { links } => write!(f, "a hard link ({links} names for one file)"),
            Problem::TooLarge { size, max } => write!(f, "{size} bytes, more than {max}"),
            Problem::TotalTooLarge { max } => write!(f, "the submission is larger than {max} bytes"),
            Problem::TooManyEntries { max } => write!(f, "the submission has more than {max} entries"),
            Problem::TooDeep { max } => write!(f, "nested more than {max} directories deep"),
            Problem::Unreadable(e) => write!(f, "cannot be examined: {e}"),
        }
    }
}

/// The tree's size, or what is wrong with it (relative paths).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub files: u64,
    pub bytes: u64,
    pub problems: Vec<(PathBuf, Problem)>,
}

impl Checked {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Examine the tree at `root` (itself a real directory, not a symlink).
pub fn check(root: &Path, limits: TreeLimits) -> Checked {
    let mut out = Checked::default();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match nix::fcntl::open(root, flags, Mode::empty()) {
        Ok(fd) => walk(fd, PathBuf::new(), 0, &limits, &mut out),
        Err(Errno::ELOOP | Errno::ENOTDIR) => out.problems.push((PathBuf::new(), Problem::Symlink)),
        Err(e) => out.problems.push((PathBuf::new(), Problem::Unreadable(e))),
    }
    out
}

fn walk(dir: OwnedFd, rel: PathBuf, depth: usize, limits: &TreeLimits, out: &mut Checked) {
    if depth > limits.max_depth {
        out.problems.push((rel, Problem::TooDeep { max: limits.max_depth }));
        return;
    }
    let mut names = Vec::new();
    match Dir::from_fd(dir.try_clone().expect("dup a directory fd")) {
        Ok(mut d) => {
            for entry in d.iter() {
                match entry {
                    Ok(e) => {
                        let name = e.file_name().to_bytes();
                        if name != b"." && name != b".." {
                            names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
                        }
                    }
                    Err(e) => out.problems.push((rel.clone(), Problem::Unreadable(e))),
                }
            }
        }
        Err(e) => out.problems.push((rel.clone(), Problem::Unreadable(e))),
    }
    names.sort();
    for name in names {
        let path = rel.join(&name);
        out.files += 1;
        if out.files > limits.max_entries {
            // reported once, by whichever directory got there first; every walk stops
            if out.files == limits.max_entries + 1 {
                out.problems.push((PathBuf::new(), Problem::TooManyEntries { max: limits.max_entries }));
            }
            return;
        }
        let st = match fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => {
                out.problems.push((path, Problem::Unreadable(e)));
                continue;
            }
        };
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let problem = match kind {
            k if k == SFlag::S_IFDIR => {
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                match openat(dir.as_fd(), name.as_os_str(), flags, Mode::empty()) {
                    Ok(sub) => walk(sub, path.clone(), depth + 1, limits, out),
                    // swapped for a symlink since the fstatat: refused all the same
                    Err(Errno::ELOOP | Errno::ENOTDIR) => out.problems.push((path.clone(), Problem::Symlink)),
                    Err(e) => out.problems.push((path.clone(), Problem::Unreadable(e))),
                }
                None
            }
            k if k == SFlag::S_IFREG => {
                let size = st.st_size as u64;
                out.bytes += size;
                if st.st_nlink > 1 {
                    Some(Problem::HardLink { links: st.st_nlink as u64 })
                } else if size > limits.max_file {
                    Some(Problem::TooLarge { size, max: limits.max_file })
                } else {
                    None
                }
            }
            k if k == SFlag::S_IFLNK => Some(Problem::Symlink),
            k if k == SFlag::S_IFIFO => Some(Problem::Fifo),
            k if k == SFlag::S_IFSOCK => Some(Problem::Socket),
            _ => Some(Problem::Device),
        };
        if let Some(p) = problem {
            out.problems.push((path, p));
        }
    }
    if depth == 0 && out.bytes > limits.max_total {
        out.problems.push((PathBuf::new(), Problem::TotalTooLarge { max: limits.max_total }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn problems(c: &Checked) -> Vec<(String, String)> {
        c.problems.iter().map(|(p, why)| (p.display().to_string(), format!("{why:?}"))).collect()
    }

    #[test]
    fn a_plain_submission_passes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("problem1.ipynb"), "{}").unwrap();
        std::fs::create_dir(d.path().join("data")).unwrap();
        std::fs::write(d.path().join("data/x.csv"), "a,b\n").unwrap();
        let c = check(d.path(), TreeLimits::default());
        assert!(c.ok(), "{:?}", c.problems);
        assert_eq!((c.files, c.bytes), (3, 6));
    }

    #[test]
    fn links_fifos_and_hard_links_are_refused_and_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("solution.ipynb");
        std::fs::write(&secret, "the solutions").unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        symlink(&secret, sub.join("notes.txt")).unwrap();
        symlink(outside.path(), sub.join("dir-link")).unwrap();
        // a FIFO: opening it (following) would block the checker
        nix::unistd::mkfifo(&sub.join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
        std::fs::write(sub.join("a"), "x").unwrap();
        std::fs::hard_link(sub.join("a"), sub.join("b")).unwrap();
        let c = check(d.path(), TreeLimits::default());
        assert_eq!(
            problems(&c),
            [
                ("sub/a".to_string(), "HardLink { links: 2 }".to_string()),
                ("sub/b".into(), "HardLink { links: 2 }".into()),
                ("sub/dir-link".into(), "Symlink".into()),
                ("sub/notes.txt".into(), "Symlink".into()),
                ("sub/pipe".into(), "Fifo".into()),
            ]
        );
        // the target was not counted, so not read: only the 2 bytes of a and b
        assert_eq!(c.bytes, 2);
    }

    #[test]
    fn a_symlinked_root_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        symlink(&real, d.path().join("link")).unwrap();
        assert_eq!(problems(&check(&d.path().join("link"), TreeLimits::default())), [("".into(), "Symlink".into())]);
    }

    #[test]
    fn size_count_and_depth_limits() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(d.path().join("big")).unwrap();
        f.set_len(2048).unwrap(); // sparse: nothing written
        let limits = TreeLimits { max_file: 1024, max_total: 100_000, max_entries: 100, max_depth: 2 };
        assert_eq!(problems(&check(d.path(), limits)), [("big".into(), "TooLarge { size: 2048, max: 1024 }".into())]);
        let limits = TreeLimits { max_file: 1 << 20, max_total: 1000, max_entries: 100, max_depth: 2 };
        assert_eq!(problems(&check(d.path(), limits)), [("".into(), "TotalTooLarge { max: 1000 }".into())]);
        std::fs::create_dir_all(d.path().join("a/b/c/d")).unwrap();
        let limits = TreeLimits { max_file: 1 << 20, max_total: 1 << 20, max_entries: 100, max_depth: 2 };
        assert_eq!(problems(&check(d.path(), limits)), [("a/b/c".into(), "TooDeep { max: 2 }".into())]);
        let limits = TreeLimits { max_file: 1 << 20, max_total: 1 << 20, max_entries: 3, max_depth: 8 };
        assert_eq!(problems(&check(d.path(), limits)), [("".into(), "TooManyEntries { max: 3 }".into())]);
    }

    #[test]
    fn device_nodes_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // mknod needs CAP_MKNOD; CI runs as root
        }
        let d = tempfile::tempdir().unwrap();
        nix::sys::stat::mknod(
            &d.path().join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        assert_eq!(problems(&check(d.path(), TreeLimits::default())), [("null".into(), "Device".into())]);
    }
}

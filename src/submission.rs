//! Checking a submission tree, and copying it, before nbgrader touches it (for
//! `isolate-grade ASSIGNMENT`).
//!
//! nbgrader copies a submission's extra files with `shutil.copy`, which follows symlinks, and
//! chmods what it copied, following them again: a submitted `notes.txt ->
//! ../../../source/ps1/problem1.ipynb` would hand the student the solutions, and worse. So
//! every entry is examined with `fstatat(AT_SYMLINK_NOFOLLOW)` from an fd of its own
//! directory, directories are entered with `O_NOFOLLOW | O_DIRECTORY`, and nothing is
//! followed. Anything but plain directories and regular files with a single link is rejected,
//! and so is a tree too large (per file, in total, in entries, in depth), with the path and the
//! reason of each problem.
//!
//! [`stage`] does the same walk and copies each regular file, opened `O_NOFOLLOW` and checked
//! again on its fd, into a fresh directory: nbgrader then grades the copy, so a file swapped
//! for a symlink after the check is never read (there is no second look to race with).

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use std::fs::File;
use std::io::Read;
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

/// Writing the copy failed: a fault of the host (disk full, say), not of the submission.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {errno}")]
pub struct StageError {
    pub path: PathBuf,
    pub errno: Errno,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// Examine the tree at `root` (itself a real directory, not a symlink). Reads no file.
pub fn check(root: &Path, limits: TreeLimits) -> Checked {
    let mut out = Checked::default();
    match nix::fcntl::open(root, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => walk(fd, None, PathBuf::new(), 0, &limits, &mut out).expect("no copy, no write error"),
        Err(e) => out.problems.push((PathBuf::new(), root_problem(e))),
    }
    out
}

/// Examine the tree at `root` and copy it into `dest`, which must not exist (its parent
/// must). Regular files and directories only, modes reduced to 0644/0755. Whatever
/// `Checked` says, `dest` holds only what passed; remove it if the tree is refused.
pub fn stage(root: &Path, dest: &Path, limits: TreeLimits) -> Result<Checked, StageError> {
    let mut out = Checked::default();
    let fail = |errno| StageError { path: dest.to_path_buf(), errno };
    nix::unistd::mkdir(dest, Mode::from_bits_truncate(0o755)).map_err(fail)?;
    let dest_fd = nix::fcntl::open(dest, DIR_FLAGS, Mode::empty()).map_err(fail)?;
    match nix::fcntl::open(root, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => walk(fd, Some((dest_fd, dest)), PathBuf::new(), 0, &limits, &mut out)?,
        Err(e) => out.problems.push((PathBuf::new(), root_problem(e))),
    }
    Ok(out)
}

fn root_problem(e: Errno) -> Problem {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => Problem::Symlink,
        e => Problem::Unreadable(e),
    }
}

type Dest<'a> = Option<(OwnedFd, &'a Path)>;

fn walk(
    dir: OwnedFd,
    dest: Dest,
    rel: PathBuf,
    depth: usize,
    limits: &TreeLimits,
    out: &mut Checked,
) -> Result<(), StageError> {
    if depth > limits.max_depth {
        out.problems.push((rel, Problem::TooDeep { max: limits.max_depth }));
        return Ok(());
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
            return Ok(());
        }
        let st = match fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => {
                out.problems.push((path, Problem::Unreadable(e)));
                continue;
            }
        };
        let problem = match kind_problem(st.st_mode) {
            None if is_dir(st.st_mode) => {
                match openat(dir.as_fd(), name.as_os_str(), DIR_FLAGS, Mode::empty()) {
                    Ok(sub) => {
                        let sub_dest = match &dest {
                            Some((d, base)) => {
                                let fail = |errno| StageError { path: base.join(&path), errno };
                                nix::sys::stat::mkdirat(d.as_fd(), name.as_os_str(), Mode::from_bits_truncate(0o755))
                                    .map_err(fail)?;
                                Some((
                                    openat(d.as_fd(), name.as_os_str(), DIR_FLAGS, Mode::empty()).map_err(fail)?,
                                    *base,
                                ))
                            }
                            None => None,
                        };
                        walk(sub, sub_dest, path.clone(), depth + 1, limits, out)?;
                        None
                    }
                    // swapped for a symlink since the fstatat: refused all the same
                    Err(e) => Some(root_problem(e)),
                }
            }
            None => {
                let size = st.st_size as u64;
                out.bytes += size;
                match file_problem(st.st_nlink as u64, size, limits) {
                    Some(p) => Some(p),
                    None => match &dest {
                        Some((d, base)) => copy_file(&dir, d, &name, base.join(&path), st.st_mode, limits)?,
                        None => None,
                    },
                }
            }
            Some(p) => Some(p),
        };
        if let Some(p) = problem {
            out.problems.push((path, p));
        }
    }
    if depth == 0 && out.bytes > limits.max_total {
        out.problems.push((PathBuf::new(), Problem::TotalTooLarge { max: limits.max_total }));
    }
    Ok(())
}

fn is_dir(mode: u32) -> bool {
    SFlag::from_bits_truncate(mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// `None` for a directory or a regular file; what else it is otherwise.
fn kind_problem(mode: u32) -> Option<Problem> {
    let kind = SFlag::from_bits_truncate(mode) & SFlag::S_IFMT;
    match kind {
        k if k == SFlag::S_IFDIR || k == SFlag::S_IFREG => None,
        k if k == SFlag::S_IFLNK => Some(Problem::Symlink),
        k if k == SFlag::S_IFIFO => Some(Problem::Fifo),
        k if k == SFlag::S_IFSOCK => Some(Problem::Socket),
        _ => Some(Problem::Device),
    }
}

fn file_problem(links: u64, size: u64, limits: &TreeLimits) -> Option<Problem> {
    if links > 1 {
        Some(Problem::HardLink { links })
    } else if size > limits.max_file {
        Some(Problem::TooLarge { size, max: limits.max_file })
    } else {
        None
    }
}

/// Copy one regular file: opened without following, checked again on the open fd (the entry
/// may have been swapped since the fstatat), and read no further than the size limit.
fn copy_file(
    dir: &OwnedFd,
    dest: &OwnedFd,
    name: &std::ffi::OsStr,
    dest_path: PathBuf,
    mode: u32,
    limits: &TreeLimits,
) -> Result<Option<Problem>, StageError> {
    // O_NONBLOCK: a FIFO swapped in must not block us (it is refused below).
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let src = match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return Ok(Some(root_problem(e))),
    };
    let st = match nix::sys::stat::fstat(src.as_fd()) {
        Ok(st) => st,
        Err(e) => return Ok(Some(Problem::Unreadable(e))),
    };
    if let Some(p) = kind_problem(st.st_mode) {
        return Ok(Some(p));
    }
    if is_dir(st.st_mode) {
        return Ok(Some(Problem::Unreadable(Errno::EISDIR)));
    }
    if let Some(p) = file_problem(st.st_nlink as u64, st.st_size as u64, limits) {
        return Ok(Some(p));
    }
    let fail = |errno| StageError { path: dest_path.clone(), errno };
    let perm = if mode & 0o100 != 0 { 0o755 } else { 0o644 };
    let wflags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dst = openat(dest.as_fd(), name, wflags, Mode::from_bits_truncate(perm)).map_err(fail)?;
    let mut reader = File::from(src).take(limits.max_file + 1);
    let copied = std::io::copy(&mut reader, &mut File::from(dst))
        .map_err(|e| fail(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    // grown since the fstat: what was copied is cut off, and the file is refused
    Ok((copied > limits.max_file).then_some(Problem::TooLarge { size: copied, max: limits.max_file }))
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

    #[test]
    fn stage_copies_what_passed_and_nothing_it_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "the solutions").unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir_all(sub.join("data")).unwrap();
        std::fs::write(sub.join("problem1.ipynb"), "{}").unwrap();
        std::fs::write(sub.join("data/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(sub.join("data/run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o4777))
            .unwrap();
        symlink(outside.path().join("secret"), sub.join("notes.txt")).unwrap();
        let dest = d.path().join("copy");
        let c = stage(&sub, &dest, TreeLimits::default()).unwrap();
        assert_eq!(problems(&c), [("notes.txt".to_string(), "Symlink".to_string())]);
        assert_eq!(std::fs::read_to_string(dest.join("problem1.ipynb")).unwrap(), "{}");
        let mode = std::fs::metadata(dest.join("data/run.sh")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777, 0o755, "no setuid bit survives");
        assert!(std::fs::symlink_metadata(dest.join("notes.txt")).is_err(), "the refused entry is not copied");
        // the destination must be new: an existing one (perhaps a symlink planted there) is refused
        assert_eq!(stage(&sub, &dest, TreeLimits::default()).unwrap_err().errno, Errno::EEXIST);
    }

    #[test]
    fn a_file_swapped_for_a_symlink_after_the_check_is_not_followed() {
        // What `walk` does after its fstatat saw a regular file: the entry is now a symlink
        // to a secret. The copy opens it O_NOFOLLOW and checks the fd: the secret is not read.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("secret"), "the solutions").unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        symlink(d.path().join("secret"), src.join("notes.txt")).unwrap();
        let open = |p: &Path| nix::fcntl::open(p, DIR_FLAGS, Mode::empty()).unwrap();
        let (sfd, dfd) = (open(&src), open(&dst));
        let name = std::ffi::OsStr::new("notes.txt");
        let p = copy_file(&sfd, &dfd, name, dst.join("notes.txt"), 0o644, &TreeLimits::default()).unwrap();
        assert_eq!(p, Some(Problem::Symlink));
        assert!(!dst.join("notes.txt").exists());
        // and a FIFO swapped in is refused without blocking
        std::fs::remove_file(src.join("notes.txt")).unwrap();
        nix::unistd::mkfifo(&src.join("notes.txt"), Mode::from_bits_truncate(0o644)).unwrap();
        let p = copy_file(&sfd, &dfd, name, dst.join("notes.txt"), 0o644, &TreeLimits::default()).unwrap();
        assert_eq!(p, Some(Problem::Fifo));
        // a file grown past the limit since it was examined is cut off and refused
        std::fs::remove_file(src.join("notes.txt")).unwrap();
        std::fs::write(src.join("notes.txt"), vec![b'x'; 100]).unwrap();
        let small = TreeLimits { max_file: 10, ..TreeLimits::default() };
        let p = copy_file(&sfd, &dfd, name, dst.join("notes.txt"), 0o644, &small).unwrap();
        assert_eq!(p, Some(Problem::TooLarge { size: 100, max: 10 }));
    }
}

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
//! Names nbgrader can't be trusted with are refused too: one that is not UTF-8 (Python's
//! surrogate escapes then fail somewhere in nbgrader, or in what reports on it) or that holds a
//! control character (shown to the instructor, it could rewrite their terminal).
//!
//! Notebooks (`*.ipynb`) are read as they are copied and refused past [`NotebookLimits`]
//! (size, cells, outputs, nesting depth) before nbgrader parses them: nbgrader runs outside
//! the sandbox, and one notebook of millions of tiny outputs costs it gigabytes; a deeply
//! nested one, Python's recursion limit. Counting needs no tree in memory: a scan for the
//! depth, then serde with [`serde::de::IgnoredAny`] for everything but the counts.
//!
//! [`stage`] does the same walk and copies each regular file, opened `O_NOFOLLOW` and checked
//! again on its fd, into a fresh directory: nbgrader then grades the copy, so a file swapped
//! for a symlink after the check is never read (there is no second look to race with).

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimits {
    pub max_file: u64,
    pub max_total: u64,
    pub max_entries: u64,
    pub max_depth: usize,
    pub notebook: NotebookLimits,
}

impl Default for TreeLimits {
    /// Generous for notebooks and data files; a submission is not a dataset.
    fn default() -> TreeLimits {
        TreeLimits {
            max_file: 100 << 20,
            max_total: 500 << 20,
            max_entries: 10_000,
            max_depth: 16,
            notebook: NotebookLimits::default(),
        }
    }
}

/// What a notebook may be, checked before nbgrader reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotebookLimits {
    pub max_size: u64,
    pub max_cells: u64,
    pub max_outputs: u64,
    pub max_depth: usize,
}

/// serde_json refuses documents nested deeper than 128; a limit at most this keeps our own
/// depth check the one that speaks.
pub const MAX_NOTEBOOK_DEPTH: usize = 120;

impl Default for NotebookLimits {
    /// Far above what a course's notebooks hold (a few MB, hundreds of cells, a few outputs
    /// each), far below what makes nbgrader's memory explode: 1.9 M tiny outputs (95 MB) made
    /// a worker peak at 5.2 GB.
    fn default() -> NotebookLimits {
        NotebookLimits { max_size: 32 << 20, max_cells: 2_000, max_outputs: 10_000, max_depth: 64 }
    }
}

/// The notebook bounds from the command line, validated (`--notebook-max-size: ...` on error).
pub fn notebook_limits(a: &crate::cli::NotebookLimitArgs) -> Result<NotebookLimits, String> {
    use crate::units;
    let bad = |flag: &str, e: units::UnitError| format!("{flag}: {e}");
    Ok(NotebookLimits {
        max_size: units::parse_size(&a.notebook_max_size).map_err(|e| bad("--notebook-max-size", e))?,
        max_cells: units::parse_count(&a.notebook_max_cells, 100_000_000)
            .map_err(|e| bad("--notebook-max-cells", e))?,
        max_outputs: units::parse_count(&a.notebook_max_outputs, 100_000_000)
            .map_err(|e| bad("--notebook-max-outputs", e))?,
        max_depth: units::parse_count(&a.notebook_max_depth, MAX_NOTEBOOK_DEPTH as u64)
            .map_err(|e| bad("--notebook-max-depth", e))? as usize,
    })
}

/// Which notebook bound was passed: the option that raises it is in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotebookBound {
    Size,
    Cells,
    Outputs,
    Depth,
}

impl NotebookBound {
    pub fn option(self) -> &'static str {
        match self {
            NotebookBound::Size => "--notebook-max-size",
            NotebookBound::Cells => "--notebook-max-cells",
            NotebookBound::Outputs => "--notebook-max-outputs",
            NotebookBound::Depth => "--notebook-max-depth",
        }
    }
    fn what(self) -> &'static str {
        match self {
            NotebookBound::Size => "bytes",
            NotebookBound::Cells => "cells",
            NotebookBound::Outputs => "outputs",
            NotebookBound::Depth => "levels of nesting",
        }
    }
}

/// Why an entry (or the tree) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Symlink,
    Fifo,
    Socket,
    Device,
    HardLink {
        links: u64,
    },
    TooLarge {
        size: u64,
        max: u64,
    },
    TotalTooLarge {
        max: u64,
    },
    TooManyEntries {
        max: u64,
    },
    TooDeep {
        max: usize,
    },
    Unreadable(Errno),
    /// Its name is not UTF-8.
    NameNotUtf8,
    /// Its name holds a control character.
    NameControl,
    /// A notebook past one of [`NotebookLimits`] (for the depth, `found` is `max + 1`).
    Notebook {
        bound: NotebookBound,
        found: u64,
        max: u64,
    },
    /// A notebook that can't be read as one (not JSON as serde reads it, duplicate keys,
    /// `cells` not a list...): refused rather than handed to a parser that may read it
    /// differently.
    NotANotebook(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Symlink => write!(f, "a symbolic link (its target is never followed)"),
            Problem::Fifo => write!(f, "a FIFO"),
            Problem::Socket => write!(f, "a socket"),
            Problem::Device => write!(f, "a device node"),
            Problem::HardLink { links } => write!(f, "a hard link ({links} names for one file)"),
            Problem::TooLarge { size, max } => write!(f, "{size} bytes, more than {max}"),
            Problem::TotalTooLarge { max } => write!(f, "the submission is larger than {max} bytes"),
            Problem::TooManyEntries { max } => write!(f, "the submission has more than {max} entries"),
            Problem::TooDeep { max } => write!(f, "nested more than {max} directories deep"),
            Problem::Unreadable(e) => write!(f, "cannot be examined: {e}"),
            Problem::NotANotebook(why) => write!(f, "not a notebook's JSON: {why}"),
            Problem::NameNotUtf8 => write!(f, "a name that is not UTF-8 (rename it)"),
            Problem::NameControl => write!(f, "a name with control characters (rename it)"),
            Problem::Notebook { bound: NotebookBound::Depth, max, .. } => write!(
                f,
                "a notebook nested more than {max} levels deep (the instructor's {} raises the bound)",
                NotebookBound::Depth.option()
            ),
            Problem::Notebook { bound, found, max } => write!(
                f,
                "a notebook of {found} {}, more than {max} (the instructor's {} raises the bound)",
                bound.what(),
                bound.option()
            ),
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

/// What is wrong, in one line: the first five problems (`path: why`), then how many more.
/// `escape_all`: every path escaped (the line goes where nothing else escapes it: nbgrader's
/// log); otherwise only a name that isn't UTF-8 (the terminal and the CSV escape the rest).
pub fn describe(problems: &[(PathBuf, Problem)], escape_all: bool) -> String {
    let mut parts: Vec<String> = problems
        .iter()
        .take(5)
        .map(|(p, why)| {
            let p = match p.to_str() {
                Some("") => ".".to_string(),
                Some(p) if !escape_all => p.to_string(),
                _ => crate::escape::path(p),
            };
            format!("{p}: {why}")
        })
        .collect();
    if problems.len() > 5 {
        parts.push(format!("and {} more", problems.len() - 5));
    }
    parts.join("; ")
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
    match nix::fcntl::open(root, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => stage_from(fd, dest, limits),
        Err(e) => {
            nix::unistd::mkdir(dest, Mode::from_bits_truncate(0o755))
                .map_err(|errno| StageError { path: dest.to_path_buf(), errno })?;
            Ok(Checked { problems: vec![(PathBuf::new(), root_problem(e))], ..Checked::default() })
        }
    }
}

/// Open the directory `rel` beneath `root` one component at a time, following no symlink:
/// `root` is the instructor's (the course), everything beneath may be the student's. A
/// component that is a symlink, or not a directory, is the problem of that prefix.
pub fn open_beneath(root: &Path, rel: &Path) -> Result<OwnedFd, (PathBuf, Problem)> {
    let mut fd = nix::fcntl::open(root, DIR_FLAGS.difference(OFlag::O_NOFOLLOW), Mode::empty())
        .map_err(|e| (PathBuf::new(), Problem::Unreadable(e)))?;
    let mut at = PathBuf::new();
    for part in rel.components() {
        let std::path::Component::Normal(name) = part else {
            return Err((rel.to_path_buf(), Problem::Unreadable(Errno::EINVAL)));
        };
        at.push(name);
        fd = match openat(fd.as_fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(next) => next,
            Err(e) => {
                let link = fstatat(fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK);
                return Err((at, if link { Problem::Symlink } else { Problem::Unreadable(e) }));
            }
        };
    }
    Ok(fd)
}

/// [`stage`] from a directory already opened (by [`open_beneath`]).
pub fn stage_from(root: OwnedFd, dest: &Path, limits: TreeLimits) -> Result<Checked, StageError> {
    let mut out = Checked::default();
    let fail = |errno| StageError { path: dest.to_path_buf(), errno };
    nix::unistd::mkdir(dest, Mode::from_bits_truncate(0o755)).map_err(fail)?;
    let dest_fd = nix::fcntl::open(dest, DIR_FLAGS, Mode::empty()).map_err(fail)?;
    walk(root, Some((dest_fd, dest)), PathBuf::new(), 0, &limits, &mut out)?;
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
        if let Some(p) = name_problem(&name) {
            out.problems.push((path, p));
            continue;
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

/// A name nbgrader (or the instructor's terminal) can't be trusted with.
fn name_problem(name: &std::ffi::OsStr) -> Option<Problem> {
    match name.to_str() {
        None => Some(Problem::NameNotUtf8),
        Some(n) if n.chars().any(char::is_control) => Some(Problem::NameControl),
        Some(_) => None,
    }
}

fn is_notebook(name: &std::ffi::OsStr) -> bool {
    let n = name.as_bytes();
    n.len() >= 6 && n[n.len() - 6..].eq_ignore_ascii_case(b".ipynb")
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
    let io_fail = |e: std::io::Error| fail(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
    let mut src = File::from(src);
    // A notebook is read whole (it is small, or refused unread), checked, then written.
    let notebook = if is_notebook(name) {
        let nb = &limits.notebook;
        if st.st_size as u64 > nb.max_size {
            return Ok(Some(notebook_size(st.st_size as u64, nb)));
        }
        let mut text = Vec::new();
        (&mut src).take(nb.max_size + 1).read_to_end(&mut text).map_err(io_fail)?;
        if let Some(p) = check_notebook(&text, nb) {
            return Ok(Some(p));
        }
        Some(text)
    } else {
        None
    };
    let perm = if mode & 0o100 != 0 { 0o755 } else { 0o644 };
    let wflags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dst = openat(dest.as_fd(), name, wflags, Mode::from_bits_truncate(perm)).map_err(fail)?;
    let copied = match notebook {
        Some(text) => File::from(dst).write_all(&text).map(|_| text.len() as u64).map_err(io_fail)?,
        None => std::io::copy(&mut src.take(limits.max_file + 1), &mut File::from(dst)).map_err(io_fail)?,
    };
    // grown since the fstat: what was copied is cut off, and the file is refused
    Ok((copied > limits.max_file).then_some(Problem::TooLarge { size: copied, max: limits.max_file }))
}

fn notebook_size(size: u64, limits: &NotebookLimits) -> Problem {
    Problem::Notebook { bound: NotebookBound::Size, found: size, max: limits.max_size }
}

/// What is wrong with a notebook's text, if anything: its size, nesting depth, cells and
/// outputs (v4's `cells`, v3's `worksheets[].cells`, each cell's `outputs`), or that it can't
/// be read as a notebook at all.
pub fn check_notebook(text: &[u8], limits: &NotebookLimits) -> Option<Problem> {
    if text.len() as u64 > limits.max_size {
        return Some(notebook_size(text.len() as u64, limits));
    }
    let max_depth = limits.max_depth.min(MAX_NOTEBOOK_DEPTH);
    if json_depth_exceeds(text, max_depth) {
        let found = max_depth as u64 + 1;
        return Some(Problem::Notebook { bound: NotebookBound::Depth, found, max: max_depth as u64 });
    }
    // serde skips what it ignores without checking its UTF-8; Python's reader would refuse it
    // (found by fuzz/fuzz_targets/notebook.rs)
    let text = match std::str::from_utf8(text) {
        Ok(t) => t,
        Err(e) => return Some(Problem::NotANotebook(format!("not UTF-8 (byte {})", e.valid_up_to()))),
    };
    // Nor does it check `\u` escapes; Python reads a lone surrogate into a string nbgrader
    // then fails to write back as UTF-8 (found by the same fuzz target)
    if let Some(escape) = lone_surrogate(text) {
        return Some(Problem::NotANotebook(format!(
            "a string holds a lone surrogate escape (\\u{escape:04x}), not text"
        )));
    }
    let shape: shape::Notebook = match serde_json::from_str(text) {
        Ok(s) => s,
        Err(e) => return Some(Problem::NotANotebook(e.to_string())),
    };
    let (cells, outputs) =
        (shape.cells.0.cells + shape.worksheets.0.cells, shape.cells.0.outputs + shape.worksheets.0.outputs);
    if cells > limits.max_cells {
        Some(Problem::Notebook { bound: NotebookBound::Cells, found: cells, max: limits.max_cells })
    } else if outputs > limits.max_outputs {
        Some(Problem::Notebook { bound: NotebookBound::Outputs, found: outputs, max: limits.max_outputs })
    } else {
        None
    }
}

/// The first `\uD800`-`\uDFFF` escape in a string of JSON text that is not a high surrogate
/// directly followed by a low one. Malformed escapes are left to the parser.
fn lone_surrogate(text: &str) -> Option<u16> {
    let b = text.as_bytes();
    let hex = |i: usize| {
        b.get(i..i + 4).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        match b[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if b.get(i + 1) == Some(&b'u') {
                    if let Some(u) = hex(i + 2) {
                        if (0xDC00..=0xDFFF).contains(&u) {
                            return Some(u);
                        }
                        if (0xD800..=0xDBFF).contains(&u) {
                            let low = (b.get(i + 6..i + 8) == Some(b"\\u")).then(|| hex(i + 8)).flatten();
                            if !low.is_some_and(|l| (0xDC00..=0xDFFF).contains(&l)) {
                                return Some(u);
                            }
                            i += 6; // the pair's low half is skipped with it
                        }
                    }
                }
                i += 2; // the escaped character (a quote, a backslash) is no delimiter
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether JSON text nests (arrays and objects) deeper than `max`; stops at the first level
/// past it. Strings are skipped (with their escapes); anything else is left to the parser.
fn json_depth_exceeds(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A notebook's shape as serde reads it: counts of cells and outputs, nothing else kept (every
/// other value is skipped with `IgnoredAny`, which builds nothing).
mod shape {
    use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
    use serde::Deserialize;

    #[derive(Debug, Default, Clone, Copy)]
    pub struct Counts {
        pub cells: u64,
        pub outputs: u64,
    }

    /// `{"cells": [...], "worksheets": [{"cells": [...]}]}`; other keys skipped.
    #[derive(Deserialize)]
    pub struct Notebook {
        #[serde(default)]
        pub cells: Sum<Cell>,
        #[serde(default)]
        pub worksheets: Sum<Worksheet>,
    }

    #[derive(Deserialize)]
    pub struct Worksheet {
        #[serde(default)]
        cells: Sum<Cell>,
    }

    #[derive(Deserialize)]
    pub struct Cell {
        #[serde(default)]
        outputs: Sum<IgnoredAny>,
    }

    /// What one element of a list adds to the counts.
    pub trait Count {
        fn counts(&self) -> Counts;
    }
    impl Count for IgnoredAny {
        fn counts(&self) -> Counts {
            Counts { cells: 0, outputs: 1 }
        }
    }
    impl Count for Cell {
        fn counts(&self) -> Counts {
            Counts { cells: 1, outputs: self.outputs.0.outputs }
        }
    }
    impl Count for Worksheet {
        fn counts(&self) -> Counts {
            self.cells.0
        }
    }

    /// A list, summed element by element as it is read: never held.
    pub struct Sum<T>(pub Counts, std::marker::PhantomData<T>);

    impl<T> Default for Sum<T> {
        fn default() -> Self {
            Sum(Counts::default(), std::marker::PhantomData)
        }
    }

    impl<'de, T: Deserialize<'de> + Count> Deserialize<'de> for Sum<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(std::marker::PhantomData<T>);
            impl<'de, T: Deserialize<'de> + Count> Visitor<'de> for V<T> {
                type Value = Sum<T>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a list")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sum<T>, A::Error> {
                    let mut sum = Sum::default();
                    while let Some(x) = seq.next_element::<T>()? {
                        let c = x.counts();
                        sum.0.cells += c.cells;
                        sum.0.outputs += c.outputs;
                    }
                    Ok(sum)
                }
            }
            d.deserialize_seq(V(std::marker::PhantomData))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn problems(c: &Checked) -> Vec<(String, String)> {
        c.problems.iter().map(|(p, why)| (p.display().to_string(), format!("{why:?}"))).collect()
    }

    /// A lone surrogate escape is refused (Python reads it, nbgrader can't write it back);
    /// pairs, escaped backslashes and `\u` outside strings are not mistaken for one.
    #[test]
    fn lone_surrogate_escapes_are_found() {
        assert_eq!(lone_surrogate(r#"{"a": "ask$\\\udea2elo"}"#), Some(0xdea2)); // the fuzz case
        assert_eq!(lone_surrogate(r#"["\ud83d"]"#), Some(0xd83d));
        assert_eq!(lone_surrogate(r#"["\ud83dx\ude00"]"#), Some(0xd83d));
        assert_eq!(lone_surrogate(r#"["\ud83d\ude00", "\u00e9", "\\udea2", "\"\\"]"#), None);
        let limits = NotebookLimits { max_size: 1 << 20, max_cells: 8, max_outputs: 16, max_depth: 12 };
        let nb = br#"{"cells": [{"cell_type": "code", "source": "x = '\udea2'", "outputs": []}]}"#;
        assert!(matches!(check_notebook(nb, &limits), Some(Problem::NotANotebook(m)) if m.contains("lone surrogate")));
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
        let limits =
            TreeLimits { max_file: 1024, max_total: 100_000, max_entries: 100, max_depth: 2, ..TreeLimits::default() };
        assert_eq!(problems(&check(d.path(), limits)), [("big".into(), "TooLarge { size: 2048, max: 1024 }".into())]);
        let limits =
            TreeLimits { max_file: 1 << 20, max_total: 1000, max_entries: 100, max_depth: 2, ..TreeLimits::default() };
        assert_eq!(problems(&check(d.path(), limits)), [("".into(), "TotalTooLarge { max: 1000 }".into())]);
        std::fs::create_dir_all(d.path().join("a/b/c/d")).unwrap();
        let limits = TreeLimits {
            max_file: 1 << 20,
            max_total: 1 << 20,
            max_entries: 100,
            max_depth: 2,
            ..TreeLimits::default()
        };
        assert_eq!(problems(&check(d.path(), limits)), [("a/b/c".into(), "TooDeep { max: 2 }".into())]);
        let limits =
            TreeLimits { max_file: 1 << 20, max_total: 1 << 20, max_entries: 3, max_depth: 8, ..TreeLimits::default() };
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

    fn notebook(cells: usize, outputs_each: usize) -> String {
        let cell = serde_json::json!({"cell_type": "code", "source": "print(1)", "metadata": {},
            "outputs": vec![serde_json::json!({"output_type": "stream", "name": "stdout", "text": "1"}); outputs_each]});
        serde_json::json!({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": vec![cell; cells]}).to_string()
    }

    #[test]
    fn notebooks_within_bounds_pass_and_past_them_are_refused_naming_the_bound() {
        let l = NotebookLimits { max_size: 1 << 20, max_cells: 10, max_outputs: 20, max_depth: 8 };
        assert_eq!(check_notebook(notebook(10, 2).as_bytes(), &l), None);
        let p = check_notebook(notebook(11, 0).as_bytes(), &l).unwrap();
        assert_eq!(p, Problem::Notebook { bound: NotebookBound::Cells, found: 11, max: 10 });
        assert!(p.to_string().contains("--notebook-max-cells"), "{p}");
        // many tiny outputs: the finding's 1.9 M, in small
        let p = check_notebook(notebook(3, 7).as_bytes(), &l).unwrap();
        assert_eq!(p, Problem::Notebook { bound: NotebookBound::Outputs, found: 21, max: 20 });
        assert!(p.to_string().contains("--notebook-max-outputs"), "{p}");
        let big = notebook(1, 0).replace("print(1)", &"x".repeat(2 << 20));
        let p = check_notebook(big.as_bytes(), &l).unwrap();
        assert!(
            matches!(p, Problem::Notebook { bound: NotebookBound::Size, .. })
                && p.to_string().contains("--notebook-max-size")
        );
        // nbformat 3: cells in worksheets count the same
        let sheet = serde_json::json!({"cells": vec![serde_json::json!({"outputs": [1, 2, 3]}); 4]});
        let v3 = serde_json::json!({"nbformat": 3, "worksheets": [sheet.clone(), sheet]}).to_string();
        assert_eq!(
            check_notebook(v3.as_bytes(), &l).unwrap(),
            Problem::Notebook { bound: NotebookBound::Outputs, found: 24, max: 20 }
        );
    }

    #[test]
    fn a_deeply_nested_notebook_is_a_clean_refusal_not_a_recursion_error() {
        let l = NotebookLimits::default();
        let deep =
            format!("{{\"cells\": [], \"metadata\": {{\"x\": {}1{}}}}}", "[".repeat(100_000), "]".repeat(100_000));
        let p = check_notebook(deep.as_bytes(), &l).unwrap();
        assert_eq!(p, Problem::Notebook { bound: NotebookBound::Depth, found: 65, max: 64 });
        assert!(p.to_string().contains("--notebook-max-depth"), "{p}");
        // brackets inside strings (escaped quotes included) are not nesting
        let s = format!("{{\"cells\": [], \"metadata\": {{\"x\": \"\\\"{}\"}}}}", "[".repeat(1000));
        assert_eq!(check_notebook(s.as_bytes(), &l), None);
        // a limit above serde_json's own is capped below it, so ours still speaks
        let high = NotebookLimits { max_depth: 10_000, ..l };
        let p = check_notebook(deep.as_bytes(), &high).unwrap();
        assert!(matches!(p, Problem::Notebook { bound: NotebookBound::Depth, .. }), "{p:?}");
    }

    #[test]
    fn what_another_parser_could_read_differently_is_refused() {
        let l = NotebookLimits::default();
        let huge = format!("[{}]", vec!["{}"; 20_000].join(","));
        // a second "cells" key (Python's json keeps the last), NaN (Python reads it), not JSON
        for text in [
            format!("{{\"cells\": [], \"cells\": {huge}}}"),
            format!("{{\"cells\": {huge}, \"x\": NaN}}"),
            "{ this is not a notebook".to_string(),
            "{\"cells\": {}}".to_string(),
        ] {
            assert!(matches!(check_notebook(text.as_bytes(), &l), Some(Problem::NotANotebook(_))), "{text:.40}");
        }
        // bytes that aren't UTF-8 inside a string serde would only skip (the fuzzer's find)
        let text = b"{\"cells\": [], \"metadata\": {\"x\": \"caf\xe9\"}}";
        let p = check_notebook(text, &l).unwrap();
        assert!(matches!(&p, Problem::NotANotebook(m) if m.contains("not UTF-8")), "{p:?}");
    }

    #[test]
    fn notebooks_are_checked_when_staged_and_names_nbgrader_cant_take_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("problem1.ipynb"), notebook(1, 20_000)).unwrap();
        std::fs::write(sub.join("ok.IPYNB"), notebook(1, 1)).unwrap();
        std::fs::write(sub.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")), "x").unwrap();
        std::fs::write(sub.join("x\x1b]0;t\x07\r\x1b[2K eve graded 10"), "x").unwrap();
        std::fs::write(sub.join("=HYPERLINK(x).txt"), "x").unwrap();
        let dest = d.path().join("copy");
        let c = stage(&sub, &dest, TreeLimits::default()).unwrap();
        let got: Vec<(Vec<u8>, String)> =
            c.problems.iter().map(|(p, why)| (p.as_os_str().as_bytes().to_vec(), format!("{why:?}"))).collect();
        assert_eq!(
            got,
            [
                (b"caf\xe9.txt".to_vec(), "NameNotUtf8".to_string()),
                (b"problem1.ipynb".to_vec(), "Notebook { bound: Outputs, found: 20000, max: 10000 }".into()),
                (b"x\x1b]0;t\x07\r\x1b[2K eve graded 10".to_vec(), "NameControl".into()),
            ]
        );
        assert!(!dest.join("problem1.ipynb").exists(), "a refused notebook is not copied");
        assert_eq!(std::fs::read_to_string(dest.join("ok.IPYNB")).unwrap(), notebook(1, 1));
        assert!(dest.join("=HYPERLINK(x).txt").exists(), "a plain name is a plain name");
    }
}

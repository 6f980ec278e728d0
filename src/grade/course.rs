//! The course directory as `isolate-grade ASSIGNMENT` sees it: nbgrader's
//! `submitted/<student>/<assignment>/`, and our own state under `.isolate-grade/`:
//!
//! ```text
//! .isolate-grade/gradebook.lock                 held by a worker while it uses the gradebook
//! .isolate-grade/<assignment>/batch.lock        one batch per assignment at a time
//! .isolate-grade/<assignment>/students/<id>.lock held while that student is graded (batch or formgrader)
//!                            /submitted/<student>/<assignment>/   the checked copies nbgrader grades
//!                            /kernels/<student>/<notebook>/<id>.json   the kernels' verdicts
//!                            /graded/<student>.json   written last, atomically: this student is done
//!                            /logs/<student>.log, /logs/worker-<n>.log
//!                            /jupyter/kernels/isolate-grade-batch/kernel.json
//! ```
//!
//! A student counts as graded only when `graded/<student>.json` exists, was written for the
//! submission's current `timestamp.txt`, and nbgrader's `autograded/<student>/<assignment>`
//! exists. Anything a killed batch left half-done has no marker, so the next run grades it
//! again from scratch (nbgrader's `force`), which ends with the same gradebook.

use super::report::StudentResult;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CourseError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("another isolate-grade is grading {assignment} in this course (lock {path})")]
    Busy { assignment: String, path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CourseError + '_ {
    move |source| CourseError::Io { path: path.to_path_buf(), source }
}

/// An nbgrader id we are willing to use as a path component and to hand to nbgrader (which
/// globs it): no separators, no glob or shell-special characters, not hidden.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with(['.', '-'])
        && id.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '+'));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {id:?}: use letters, digits and _ - . @ + (not first: . or -), at most 200 characters"))
    }
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub course: PathBuf,
    pub assignment: String,
    pub state: PathBuf,
}

/// The notebooks (`*.ipynb`) directly in `dir`, sorted; none if it can't be read.
pub fn notebooks_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ipynb"))
        .collect();
    found.sort();
    found
}

impl Layout {
    /// `course` must be a directory with a `submitted/` directory.
    pub fn new(course: &Path, assignment: &str) -> Result<Layout, CourseError> {
        check_id("assignment", assignment).map_err(CourseError::Invalid)?;
        let course = std::fs::canonicalize(course)
            .map_err(|e| CourseError::Invalid(format!("course directory {}: {e}", course.display())))?;
        let submitted = course.join("submitted");
        match std::fs::symlink_metadata(&submitted) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(CourseError::Invalid(format!("{}: not a directory", submitted.display()))),
            Err(e) => {
                return Err(CourseError::Invalid(format!(
                    "{}: {e} (is {} an nbgrader course directory? give --course)",
                    submitted.display(),
                    course.display()
                )))
            }
        }
        let state = course.join(".isolate-grade").join(assignment);
        Ok(Layout { course, assignment: assignment.to_string(), state })
    }

    pub fn submission(&self, student: &str) -> PathBuf {
        self.course.join("submitted").join(student).join(&self.assignment)
    }
    pub fn autograded(&self, student: &str) -> PathBuf {
        self.course.join("autograded").join(student).join(&self.assignment)
    }
    /// nbgrader's `submitted_directory` for the workers, relative to the course.
    pub fn staged_root_rel(&self) -> PathBuf {
        PathBuf::from(".isolate-grade").join(&self.assignment).join("submitted")
    }
    pub fn staged_student(&self, student: &str) -> PathBuf {
        self.state.join("submitted").join(student)
    }
    pub fn kernel_reports(&self, student: &str) -> PathBuf {
        self.state.join("kernels").join(student)
    }
    pub fn marker(&self, student: &str) -> PathBuf {
        self.state.join("graded").join(format!("{student}.json"))
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.state.join("logs").join(format!("{name}.log"))
    }
    /// Held while a student is graded, by the batch and by formgrader's path (src/route.py):
    /// a click on a student the batch is grading waits for it.
    pub fn student_lock(&self, student: &str) -> Result<Flock<File>, CourseError> {
        let (f, path) = self.student_lock_file(student)?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| CourseError::Io { path, source: e.into() })
    }

    /// The student's lock file, opened (made if need be), and its path.
    fn student_lock_file(&self, student: &str) -> Result<(File, PathBuf), CourseError> {
        let dir = self.state.join("students");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{student}.lock"));
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        Ok((f, path))
    }

    /// The student's lock if no one holds it (a shared batch's claim); `None` if someone does.
    pub fn try_student_lock(&self, student: &str) -> Result<Option<Flock<File>>, CourseError> {
        let (f, path) = self.student_lock_file(student)?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(CourseError::Io { path, source: e.into() }),
        }
    }

    /// Where shared batches (`--slurm`, `--external-tasks`) keep their run directories.
    pub fn runs(&self) -> PathBuf {
        self.state.join("runs")
    }

    pub fn gradebook_lock(&self) -> PathBuf {
        self.course.join(".isolate-grade").join("gradebook.lock")
    }
    pub fn jupyter_path(&self) -> PathBuf {
        self.state.join("jupyter")
    }

    /// The assignment's notebooks as the instructor wrote them (`source/`, else `release/`):
    /// what the preflight reads their imports from.
    pub fn source_notebooks(&self) -> Vec<PathBuf> {
        ["source", "release"]
            .iter()
            .map(|dir| notebooks_in(&self.course.join(dir).join(&self.assignment)))
            .find(|found| !found.is_empty())
            .unwrap_or_default()
    }

    /// Create the state directories and take the batch lock (held until dropped).
    pub fn lock(&self) -> Result<Flock<File>, CourseError> {
        for d in ["submitted", "kernels", "graded", "logs", "jupyter"] {
            let p = self.state.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let autograded = self.course.join("autograded");
        std::fs::create_dir_all(&autograded).map_err(io(&autograded))?;
        let path = self.state.join("batch.lock");
        let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        Flock::lock(f, FlockArg::LockExclusiveNonblock)
            .map_err(|_| CourseError::Busy { assignment: self.assignment.clone(), path })
    }

    /// The students with a submission of this assignment, sorted; each with its problem if its
    /// directory can't be used (a symlink, or a name we won't pass on).
    pub fn students(&self) -> Result<Vec<(String, Option<String>)>, CourseError> {
        let dir = self.course.join("submitted");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ty = entry.file_type().map_err(io(&entry.path()))?;
            let has_submission = std::fs::symlink_metadata(self.submission(&name)).is_ok();
            if !(ty.is_dir() || ty.is_symlink()) || !has_submission {
                continue;
            }
            let problem = if ty.is_symlink() {
                Some("submitted/<student> is a symlink (never followed)".to_string())
            } else {
                check_id("student id", &name).err()
            };
            out.push((name, problem));
        }
        out.sort();
        Ok(out)
    }

    /// The submission's `timestamp.txt`, as nbgrader reads it (trimmed), if it is a plain file.
    pub fn timestamp(&self, student: &str) -> Option<String> {
        timestamp_in(&self.submission(student))
    }

    /// The earlier result that makes this student graded, if it still holds.
    pub fn graded_before(&self, student: &str) -> Option<StudentResult> {
        let text = std::fs::read_to_string(self.marker(student)).ok()?;
        let r: StudentResult = serde_json::from_str(&text).ok()?;
        let current = self.timestamp(student);
        (r.verdict.is_graded() && r.submission_timestamp == current && self.autograded(student).is_dir()).then_some(r)
    }

    /// Forget that a student was graded: before anything of theirs changes.
    pub fn unmark(&self, student: &str) -> Result<(), CourseError> {
        let p = self.marker(student);
        match std::fs::remove_file(&p) {
            Ok(()) => sync_dir(p.parent().expect("in graded/")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CourseError::Io { path: p, source: e }),
        }
    }

    /// Record a graded student: written to a temporary file, synced, renamed over the marker,
    /// directory synced. A kill at any point leaves either no marker or the whole one.
    pub fn mark(&self, r: &StudentResult) -> Result<(), CourseError> {
        let p = self.marker(&r.student);
        let tmp = p.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        let text = serde_json::to_string_pretty(r).expect("serializes") + "\n";
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io(&p))?;
        sync_dir(p.parent().expect("in graded/"))
    }
}

/// A submission directory's `timestamp.txt` (the original or our copy), as nbgrader reads it
/// (trimmed), if it is a plain file of at most 4 KiB.
pub fn timestamp_in(dir: &Path) -> Option<String> {
    let p = dir.join("timestamp.txt");
    let m = std::fs::symlink_metadata(&p).ok()?;
    if !m.is_file() || m.len() > 4096 {
        return None;
    }
    std::fs::read_to_string(p).ok().map(|t| t.trim().to_string())
}

fn sync_dir(dir: &Path) -> Result<(), CourseError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Remove a directory of ours and everything in it (never follows symlinks), if it exists.
pub fn remove_tree(p: &Path) -> Result<(), CourseError> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CourseError::Io { path: p.to_path_buf(), source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_or_glob_are_refused() {
        for good in ["ps1", "alice", "a.b", "s123_x-y", "jane@uni", "Émile"] {
            assert!(check_id("id", good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "-rf", "*", "a?", "[ab]", "a b", "a\0b", "x;y", "$(id)"] {
            assert!(check_id("id", bad).is_err(), "{bad:?}");
        }
        assert!(check_id("id", &"a".repeat(201)).is_err());
    }

    #[test]
    fn students_are_listed_and_symlinked_ones_flagged() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path();
        for s in ["bob", "alice", "carol"] {
            std::fs::create_dir_all(c.join("submitted").join(s).join("ps1")).unwrap();
        }
        std::fs::create_dir_all(c.join("submitted/dave/ps2")).unwrap(); // not this assignment
        std::fs::create_dir_all(c.join("elsewhere/ps1")).unwrap();
        std::os::unix::fs::symlink(c.join("elsewhere"), c.join("submitted/eve")).unwrap();
        std::fs::create_dir_all(c.join("submitted/.x/ps1")).unwrap();
        let l = Layout::new(c, "ps1").unwrap();
        let s = l.students().unwrap();
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [".x", "alice", "bob", "carol", "eve"]);
        assert!(s[0].1.as_ref().unwrap().contains("student id"));
        assert!(s[4].1.as_ref().unwrap().contains("symlink"));
        assert!(s[1].1.is_none());
        assert!(Layout::new(c, "../ps1").is_err());
        assert!(Layout::new(&c.join("nowhere"), "ps1").is_err());
        assert!(Layout::new(&c.join("elsewhere"), "ps1").unwrap_err().to_string().contains("--course"));
    }

    #[test]
    fn a_second_batch_of_the_same_assignment_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("submitted")).unwrap();
        let l = Layout::new(d.path(), "ps1").unwrap();
        let held = l.lock().unwrap();
        assert!(matches!(l.lock(), Err(CourseError::Busy { .. })));
        drop(held);
        assert!(l.lock().is_ok());
    }
}

//! `isolate-grade stage`: the batch's submission check and checked copy, for one submission,
//! as a command. The block `isolate-grade install` writes into nbgrader_config.py runs it for
//! every submission formgrader's button or `nbgrader autograde` is about to grade (src/route.py,
//! `_isolate_grade_guard`), and points nbgrader at the copy: nbgrader never reads the
//! student's tree itself.
//!
//! Runs as the caller, no privilege. The answer is one JSON object on stdout; the exit code says
//! the same: [`Outcome::exit_code`].

use crate::cli::StageArgs;
use crate::exit::StageExit;
use crate::submission::{self, Checked, TreeLimits};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Invalid(String),
    /// Writing the copy failed: the host's doing (disk full), not the submission's.
    #[error("writing the checked copy: {0}")]
    Copy(#[from] submission::StageError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl StageError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StageError::Invalid(_) => StageExit::Usage,
            StageError::Copy(_) | StageError::Io { .. } => StageExit::Fault,
        }
        .code()
    }
}

/// How the submission fared: the copy is complete, or there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Staged,
    Rejected,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Staged => StageExit::Staged,
            Outcome::Rejected => StageExit::Rejected,
        }
        .code()
    }
}

#[derive(Debug, Serialize)]
pub struct Problem {
    /// Relative to the course, escaped.
    pub path: String,
    pub problem: String,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    pub schema: &'static str,
    pub submission: String,
    pub status: Outcome,
    pub files: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
    /// `rejected: PATH: why; ...` (paths escaped), for nbgrader's log and formgrader's modal.
    pub message: Option<String>,
}

/// The arguments, validated: the submission path and the bounds (nothing is read yet).
pub fn validate(a: &StageArgs) -> Result<(PathBuf, TreeLimits), StageError> {
    let notebook = submission::notebook_limits(&a.notebook).map_err(StageError::Invalid)?;
    Ok((checked_relative(&a.submission)?, TreeLimits { notebook, ..TreeLimits::default() }))
}

pub fn execute(a: StageArgs) -> Result<u8, StageError> {
    let (rel, limits) = validate(&a)?;
    let answer = stage(&a.course, &rel, &a.into, limits)?;
    println!("{}", serde_json::to_string(&answer).expect("serializes"));
    Ok(answer.status.exit_code())
}

/// The submission path: relative, plain names nbgrader could have made (no `..`, no glob).
fn checked_relative(p: &Path) -> Result<PathBuf, StageError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => {
                let name =
                    n.to_str().ok_or_else(|| StageError::Invalid(format!("{}: not UTF-8", crate::escape::path(p))))?;
                crate::grade::course::check_id("submission path component", name).map_err(StageError::Invalid)?;
                out.push(n);
            }
            std::path::Component::CurDir => {}
            _ => {
                return Err(StageError::Invalid(format!(
                    "{}: give the submission relative to the course, without ..",
                    crate::escape::path(p)
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(StageError::Invalid("the submission path is empty".into()));
    }
    Ok(out)
}

/// Check `course/rel` and copy it to `into`; on rejection nothing is left at `into`.
pub fn stage(course: &Path, rel: &Path, into: &Path, limits: TreeLimits) -> Result<Answer, StageError> {
    // the tree's problems are relative to the submission, those on the way to it to the course
    let (checked, prefix) = match submission::open_beneath(course, rel) {
        Ok(fd) => (submission::stage_from(fd, into, limits)?, rel),
        Err(problem) => (Checked { problems: vec![problem], ..Checked::default() }, Path::new("")),
    };
    if !checked.ok() {
        if let Err(source) = std::fs::remove_dir_all(into) {
            if source.kind() != std::io::ErrorKind::NotFound {
                return Err(StageError::Io { path: into.to_path_buf(), source });
            }
        }
    }
    let problems: Vec<(PathBuf, submission::Problem)> = checked
        .problems
        .iter()
        .map(|(p, why)| (if p.as_os_str().is_empty() { prefix.to_path_buf() } else { prefix.join(p) }, why.clone()))
        .collect();
    let status = if problems.is_empty() { Outcome::Staged } else { Outcome::Rejected };
    Ok(Answer {
        schema: "isolate-grade.stage/1",
        submission: crate::escape::path(rel),
        status,
        files: checked.files,
        bytes: checked.bytes,
        message: (status == Outcome::Rejected).then(|| format!("rejected: {}", submission::describe(&problems, true))),
        problems: problems
            .iter()
            .map(|(p, why)| Problem { path: crate::escape::path(p), problem: why.to_string() })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_submission_path_is_plain_names_beneath_the_course() {
        assert_eq!(checked_relative(Path::new("submitted/alice/ps1")).unwrap(), Path::new("submitted/alice/ps1"));
        assert_eq!(checked_relative(Path::new("./submitted/alice/ps1")).unwrap(), Path::new("submitted/alice/ps1"));
        for bad in ["../x/ps1", "/srv/course/submitted/a/ps1", "submitted/*/ps1", "submitted/a\nb/ps1", ""] {
            assert!(matches!(checked_relative(Path::new(bad)), Err(StageError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_symlink_on_the_way_or_inside_rejects_the_submission_and_leaves_no_copy() {
        let d = tempfile::tempdir().unwrap();
        let course = d.path().join("course");
        std::fs::create_dir_all(course.join("submitted/alice/ps1")).unwrap();
        std::fs::write(course.join("submitted/alice/ps1/p.ipynb"), r#"{"cells": [], "metadata": {}}"#).unwrap();
        std::fs::write(course.join("secret"), "x").unwrap();
        let into = d.path().join("staged");
        let ok = stage(&course, Path::new("submitted/alice/ps1"), &into, TreeLimits::default()).unwrap();
        assert_eq!(ok.status, Outcome::Staged);
        assert!(into.join("p.ipynb").is_file());

        std::os::unix::fs::symlink("../../../secret", course.join("submitted/alice/ps1/notes.txt")).unwrap();
        let into = d.path().join("staged2");
        let r = stage(&course, Path::new("submitted/alice/ps1"), &into, TreeLimits::default()).unwrap();
        assert_eq!(r.status, Outcome::Rejected);
        assert_eq!(r.problems[0].path, "submitted/alice/ps1/notes.txt");
        assert!(r.message.unwrap().starts_with("rejected: submitted/alice/ps1/notes.txt: a symbolic link"));
        assert!(!into.exists());

        // the student's directory itself a link, to another student's submission
        std::fs::create_dir_all(course.join("submitted/bob/ps1")).unwrap();
        std::os::unix::fs::symlink("bob", course.join("submitted/mallory")).unwrap();
        let into = d.path().join("staged3");
        let r = stage(&course, Path::new("submitted/mallory/ps1"), &into, TreeLimits::default()).unwrap();
        assert_eq!(r.status, Outcome::Rejected);
        assert_eq!(r.problems[0].path, "submitted/mallory");
        assert!(!into.exists());
    }
}

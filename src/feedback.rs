//! Feedback that never reveals hidden tests (issue #18): nbgrader's feedback HTML is made from
//! the autograded notebook, which carries the hidden test regions `ClearHiddenTests` removed
//! from the student version, and their tracebacks (nbgrader#917). `src/feedback_redact.py`
//! removes them; it is the code nbgrader runs, from the block `isolate-grade install` writes
//! into `nbgrader_config.py` (its preprocessor goes first in `GenerateFeedback.preprocessors`,
//! so the formgrader's "Generate feedback" button and `nbgrader generate_feedback` redact).

//!
//! `isolate-grade feedback ASSIGNMENT` ([`execute`]) runs nbgrader's GenerateFeedback itself,
//! with the redaction first, for each graded student, a few nbgrader processes at once, and
//! reports each notebook's redaction.

use crate::cli::{FeedbackArgs, FeedbackErrors};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The redaction nbgrader runs (the config block, and `isolate-grade feedback`).
pub const REDACT_PY: &str = include_str!("feedback_redact.py");
/// `isolate-grade feedback`'s driver, run after [`REDACT_PY`] in one Python.
const RUN_PY: &str = include_str!("feedback_run.py");

#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Python(#[from] crate::python::PythonError),
    #[error("{python}: {why}")]
    Driver { python: PathBuf, why: String },
}

impl FeedbackError {
    /// 2 bad input, 3 nbgrader's Python could not be run (its students got no feedback).
    pub fn exit_code(&self) -> u8 {
        match self {
            FeedbackError::Invalid(_) => crate::exit::USAGE,
            _ => crate::exit::FAULT,
        }
    }
}

/// The graded students of an assignment: `autograded/<student>/<assignment>/` directories.
pub fn graded_students(course: &Path, assignment: &str) -> Result<Vec<String>, FeedbackError> {
    let dir = course.join("autograded");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => return Err(FeedbackError::Io { path: dir, source }),
    };
    let mut out = vec![];
    for e in entries {
        let e = e.map_err(|source| FeedbackError::Io { path: dir.clone(), source })?;
        let name = e.file_name().to_string_lossy().into_owned();
        if crate::grade::course::check_id("student", &name).is_ok() && e.path().join(assignment).is_dir() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// `isolate-grade feedback`: 0 when every student's feedback was written (or was up to date),
/// 1 when some student's was not (a notebook the redaction refused, nbgrader's failure: named
/// in the output and the report, and no feedback file for it), 2 bad input, 3 a fault.
pub fn execute(a: FeedbackArgs) -> Result<u8, FeedbackError> {
    // Nothing here needs privilege (as for `install`): nbgrader, its Python and the files are
    // the instructor's, run and written as the instructor, also from a setuid binary.
    let caller = crate::identity::Caller::detect();
    caller.become_caller().map_err(|e| FeedbackError::Invalid(format!("becoming the caller: {e}")))?;
    if caller.via == crate::identity::Via::Sudo {
        crate::grade::set_home(caller.uid);
    }
    crate::grade::course::check_id("assignment", &a.assignment).map_err(FeedbackError::Invalid)?;
    for s in &a.students {
        crate::grade::course::check_id("--student", s).map_err(FeedbackError::Invalid)?;
    }
    run(&Job {
        course: &a.course,
        assignment: &a.assignment,
        students: &a.students,
        errors: a.errors,
        jobs: a.jobs,
        force: a.force,
        report: a.report.as_deref(),
        python: a.python.as_deref(),
    })
}

/// One feedback run: `isolate-grade feedback`'s, or the batch's after grading (`--feedback`).
pub struct Job<'a> {
    pub course: &'a Path,
    pub assignment: &'a str,
    /// Empty: every graded student.
    pub students: &'a [String],
    pub errors: FeedbackErrors,
    pub jobs: Option<usize>,
    pub force: bool,
    pub report: Option<&'a Path>,
    pub python: Option<&'a Path>,
}

/// Run a feedback job as the caller (the ids already checked): 0 when every student's feedback
/// was written or up to date, 1 when some student's was not.
pub fn run(a: &Job) -> Result<u8, FeedbackError> {
    let course =
        std::fs::canonicalize(a.course).map_err(|source| FeedbackError::Io { path: a.course.to_path_buf(), source })?;
    let graded = graded_students(&course, a.assignment)?;
    let students: Vec<String> = if a.students.is_empty() {
        graded.clone()
    } else {
        if let Some(s) = a.students.iter().find(|s| !graded.contains(s)) {
            return Err(FeedbackError::Invalid(format!(
                "--student {s}: no autograded/{s}/{} in {} (grade it first)",
                a.assignment,
                course.display()
            )));
        }
        a.students.to_vec()
    };
    if students.is_empty() {
        return Err(FeedbackError::Invalid(format!(
            "no graded student of {} in {} (autograded/<student>/{} is empty)",
            a.assignment,
            course.display(),
            a.assignment
        )));
    }
    let python = match a.python {
        Some(p) => p.to_path_buf(),
        None => crate::python::python_of_nbgrader()?,
    };
    let jobs = a.jobs.unwrap_or(4).clamp(1, students.len());
    let script = format!("{REDACT_PY}\n{RUN_PY}");
    // students dealt round-robin to `jobs` nbgrader processes
    let mut children = vec![];
    for j in 0..jobs {
        let mine: Vec<&String> = students.iter().skip(j).step_by(jobs).collect();
        let job = serde_json::json!({"assignment": a.assignment, "students": mine,
                                     "errors": a.errors.as_str(), "force": a.force});
        let child = Command::new(&python)
            .arg("-c")
            .arg(&script)
            .arg(job.to_string())
            .current_dir(&course)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| FeedbackError::Driver { python: python.clone(), why: e.to_string() })?;
        children.push((mine, child));
    }
    let mut results: Vec<Value> = vec![];
    for (mine, child) in children {
        let out = child
            .wait_with_output()
            .map_err(|e| FeedbackError::Driver { python: python.clone(), why: e.to_string() })?;
        let lines: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        for s in mine {
            // a student the driver did not get to (it crashed) is reported as not written
            let r = lines.iter().find(|v| v["student"] == **s).cloned().unwrap_or_else(|| {
                serde_json::json!({"student": s, "ok": false, "notebooks": {},
                                   "error": format!("nbgrader's process ended ({}) before reporting", out.status)})
            });
            results.push(r);
        }
    }
    results.sort_by(|x, y| x["student"].as_str().cmp(&y["student"].as_str()));
    let failed = results.iter().filter(|r| r["ok"] != true).count();
    for r in &results {
        let student = r["student"].as_str().unwrap_or("?");
        let notebooks = r["notebooks"].as_object().cloned().unwrap_or_default();
        let mut parts = vec![];
        for (nb, v) in &notebooks {
            match (&v["summary"], &v["refused"]) {
                (Value::Object(s), _) => parts.push(format!(
                    "{nb}: {} hidden region(s), {} traceback entries, {} outputs, {} messages removed",
                    s["regions"], s["frames"], s["outputs"], s["messages"]
                )),
                (_, Value::String(why)) => parts.push(format!("{nb}: refused ({why})")),
                _ => {}
            }
        }
        let msg = match r["error"].as_str() {
            None if parts.is_empty() => format!("{student}: feedback up to date"),
            None => format!("{student}: feedback written; {}", parts.join("; ")),
            Some(e) => {
                format!("{student}: NO feedback: {e}{}{}", if parts.is_empty() { "" } else { "; " }, parts.join("; "))
            }
        };
        // nbgrader's exceptions and a refusal's reason may quote a submission: one escaped line
        println!("{}", crate::escape::line(&msg));
    }
    println!(
        "{} of {} students' feedback in {} (errors shown: {})",
        results.len() - failed,
        results.len(),
        course.join("feedback").display(),
        a.errors.as_str()
    );
    if let Some(path) = a.report {
        let report = serde_json::json!({"assignment": a.assignment, "errors": a.errors.as_str(), "students": results});
        std::fs::write(path, serde_json::to_vec_pretty(&report).expect("json"))
            .map_err(|source| FeedbackError::Io { path: path.to_path_buf(), source })?;
    }
    Ok(u8::from(failed > 0))
}

/// The part of the config block that makes GenerateFeedback redact, failing closed: if it can't
/// be set up, GenerateFeedback is given a preprocessor that does not exist, so no feedback at
/// all is written rather than one with the hidden tests in it.
pub fn config_block() -> String {
    format!(
        r#"# Feedback without the hidden tests: GenerateFeedback (the formgrader's button, `nbgrader
# generate_feedback`) removes the hidden test regions and every trace of them from the feedback.
# What a failed test's error shows: c.RedactHiddenTests.errors = "full" | "message" | "none".
{redact}

try:
    _isolate_grade_feedback(c)
except Exception as e:  # fail closed: no feedback at all, rather than one that shows the hidden tests
    import sys
    print(f"isolate-grade: the feedback redaction could not be set up ({{e!r}}): no feedback will be generated", file=sys.stderr)
    c.GenerateFeedback.preprocessors = ["isolate_grade_could_not_set_up_the_feedback_redaction_see_nbgrader_config_py"]
"#,
        redact = REDACT_PY.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_calls_the_redaction_and_fails_closed() {
        let b = config_block();
        assert!(b.contains("def _isolate_grade_feedback(c"));
        assert!(b.contains("\ntry:\n    _isolate_grade_feedback(c)\nexcept Exception as e:"));
        assert!(b.contains("c.GenerateFeedback.preprocessors = [\"isolate_grade_could_not"));
        // traitlets compiles config files with `from __future__ import annotations`
        assert!(!REDACT_PY.contains("@dataclass") && !REDACT_PY.contains("import dataclasses"));
    }
}

//! The batch's contract with its grading workers (`worker.py`): every message, both ways, one
//! JSON object a line, tagged by `msg`. `worker.py` has the same messages as dataclasses, and
//! one place that encodes and decodes them; both ends check [`PROTOCOL`].
//!
//! ```text
//! batch → worker   {"msg": "setup", "protocol": 3, ...}       once, first
//! worker → batch   {"msg": "ready", "protocol": 3, ...}       or {"msg": "fatal", "error": "..."}
//! batch → worker   {"msg": "grade", "student": "..."}         then, one at a time
//! worker → batch   {"msg": "answer", "student": "...", ...}   (end of input: the worker exits)
//! ```
//!
//! A `fatal` is the one message whose shape never changes, so that a worker of another
//! protocol can still say so (its optional `fault`, left out when absent, says when it is not
//! bad input: `"gradebook"`, the gradebook can't be reached). Each notebook's kernels are named in the answer
//! ([`Answer::kernel_reports`]): the report file each kernel was told to write (`route.py`
//! gives every kernel of the batch `--report <reports>/<student>/<notebook>/kernel-<uuid>.json`
//! and `--submission`); the batch reads those files and nothing else.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The version of these messages; `worker.py`'s `PROTOCOL` must be the same.
pub const PROTOCOL: u32 = 3;

/// What the batch sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "lowercase")]
pub enum ToWorker {
    Setup(Box<Setup>),
    Grade(Grade),
}

/// What a worker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "lowercase")]
pub enum FromWorker {
    Ready(Ready),
    Fatal(Fatal),
    Answer(Box<Answer>),
}

/// What the worker needs to know once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    pub protocol: u32,
    pub course: PathBuf,
    pub assignment: String,
    /// nbgrader's `submitted_directory`: our checked copies.
    pub submitted: PathBuf,
    /// The routing of `src/route.py`: kernel name to the batch's twin, twin to language.
    pub twins: BTreeMap<String, String>,
    pub languages: BTreeMap<String, String>,
    /// route.py's source.
    pub route: String,
    pub jupyter_path: PathBuf,
    /// The course's gradebook lock file (a SQLite gradebook's; a PostgreSQL gradebook is
    /// locked in its database, route.py's `_gradebook_lock`).
    pub lock: PathBuf,
    /// Where the kernels write their reports: `<reports>/<student>/<notebook>/`.
    pub reports: PathBuf,
    /// `--on-kernel-death`; None: the course's `c.IsolateGrade.on_kernel_death` (route.py).
    pub on_kernel_death: Option<OnKernelDeath>,
    /// `--max-restarts`; None: the course's `c.IsolateGrade.max_kernel_restarts` (route.py).
    pub max_restarts: Option<u32>,
}

/// What is done when the student's code ends a notebook's kernel in a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnKernelDeath {
    /// Mark the cell, start a fresh sandboxed kernel, re-run the cells before it that had
    /// succeeded, and go on with the next cell.
    Restart,
    /// Fail the notebook, as nbgrader does.
    Fail,
}

/// An end of a notebook's kernel its student's code made (route.py's `_KernelDeaths`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelDeath {
    /// The cell's number, from 1.
    pub cell: u32,
    pub grade_id: Option<String>,
    /// The kernel report's cause: `limit` or `program`.
    pub cause: String,
    /// The kernel report's words: "used more than 256 MiB of memory".
    pub words: String,
    /// The cell ended the kernel while being re-run after an earlier end.
    pub replay: bool,
    /// A fresh kernel was started after it (else the cells after it were not run).
    pub restarted: bool,
}

impl KernelDeath {
    /// [`KernelDeath::line`] shorter, for the summary table's note: "kernel restarted after
    /// cell 3 (ex3) of p1: used more than 256 MiB of memory".
    pub fn note(&self, notebook: &str) -> String {
        let gid = self.grade_id.as_deref().map(|g| format!(" ({g})")).unwrap_or_default();
        let what = if self.restarted { "kernel restarted after" } else { "kernel ended, not restarted, in" };
        format!("{what} cell {}{gid} of {notebook}: {}", self.cell, self.words)
    }

    /// One line: "kernel restarted after cell 3 (ex3) of p1: the code used more than 256 MiB
    /// of memory; the sandbox stopped it". The grade id is the notebook's: the caller escapes.
    pub fn line(&self, notebook: &str) -> String {
        let gid = self.grade_id.as_deref().map(|g| format!(" ({g})")).unwrap_or_default();
        let replay = if self.replay { " on replay" } else { "" };
        let at = format!("cell {}{gid} of {notebook}{replay}", self.cell);
        let what = match self.cause.as_str() {
            "limit" => format!("the code {}; the sandbox stopped it", self.words),
            _ => format!("the code {}", self.words),
        };
        if self.restarted {
            format!("kernel restarted after {at}: {what}")
        } else {
            format!("kernel ended in {at}, not restarted (the most restarts), the cells after it not run: {what}")
        }
    }
}

/// Grade one student's checked copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grade {
    pub student: String,
}

/// nbgrader is loaded and the assignment found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub protocol: u32,
    pub pid: u32,
    /// The assignment's notebooks, as the gradebook has them.
    pub notebooks: Vec<String>,
    /// `nbgrader.__version__`.
    pub nbgrader: String,
    /// The gradebook's database as SQLAlchemy names its backend (`sqlite`, `postgresql`...):
    /// a `--slurm` batch needs one the nodes can share.
    pub gradebook: String,
}

/// The worker cannot grade this assignment at all (no nbgrader, an nbgrader it was not tested
/// with, another protocol, not in the gradebook...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fatal {
    pub error: String,
    /// Whose doing it is, when it is not the request's (absent: bad input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FatalFault>,
}

/// A worker's fatal that is a fault, not bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FatalFault {
    /// The gradebook can't be reached: its server is down, refuses the login, or its driver
    /// is not installed.
    Gradebook,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotebookScore {
    pub score: f64,
    pub max_score: f64,
    pub needs_manual_grade: bool,
}

/// nbgrader's result for one submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub student: String,
    pub success: bool,
    pub wall: f64,
    /// Seconds nbgrader spent on each notebook.
    pub notebook_wall: BTreeMap<String, f64>,
    /// nbgrader's log of this submission.
    pub log: String,
    /// nbgrader's error (a traceback), when it failed.
    pub error: Option<String>,
    /// The scores the gradebook has; None when it has no submission.
    pub notebooks: Option<BTreeMap<String, NotebookScore>>,
    pub seconds_late: Option<f64>,
    /// How nbgrader failed, when it did: the facts of the first exception.
    pub failure: Option<Failure>,
    /// Each notebook's kernels' report files, in the order they started.
    pub kernel_reports: BTreeMap<String, Vec<PathBuf>>,
    /// Each notebook's kernel ends its student's code made (with `restart`), in order.
    pub kernel_deaths: BTreeMap<String, Vec<KernelDeath>>,
}

/// The first exception nbgrader raised on a submission, as worker.py records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// `module.Name` (bare for builtins: `KeyError`).
    #[serde(rename = "type")]
    pub kind: String,
    pub errno: Option<i32>,
    pub notebook: Option<String>,
    /// The first line of its message, cut short by the worker.
    pub summary: String,
    /// Raised by a step of the worker's own, not by nbgrader on the submission.
    pub ours: bool,
}

/// Why a worker's line is not a message of ours.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "the grading worker speaks protocol {worker}, this isolate-grade speaks {PROTOCOL} (worker.py and the \
         binary must come from the same build)"
    )]
    Version { worker: u32 },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl ToWorker {
    /// One line, without its newline.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("serializes")
    }
}

impl FromWorker {
    /// A worker's line. A `ready` of another protocol is a [`DecodeError::Version`], whatever
    /// else it holds.
    pub fn decode(line: &str) -> Result<FromWorker, DecodeError> {
        #[derive(Deserialize)]
        struct Versioned {
            msg: Option<String>,
            protocol: Option<u32>,
        }
        if let Ok(Versioned { msg: Some(m), protocol: Some(v) }) = serde_json::from_str(line) {
            if m == "ready" && v != PROTOCOL {
                return Err(DecodeError::Version { worker: v });
            }
        }
        Ok(serde_json::from_str(line)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            protocol: PROTOCOL,
            course: "/c".into(),
            assignment: "ps1".into(),
            submitted: ".isolate-grade/ps1/staged".into(),
            twins: [("python3".to_string(), "isolate-grade-batch-python3".to_string())].into(),
            languages: [("isolate-grade-batch-python3".to_string(), "python".to_string())].into(),
            route: "def _isolate_grade(): pass\n".into(),
            jupyter_path: "/c/.isolate-grade/ps1/jupyter".into(),
            lock: "/c/.isolate-grade/gradebook.lock".into(),
            reports: "/c/.isolate-grade/ps1/kernels".into(),
            on_kernel_death: Some(OnKernelDeath::Restart),
            max_restarts: None,
        }
    }

    #[test]
    fn every_message_round_trips_tagged() {
        for m in [ToWorker::Setup(Box::new(setup())), ToWorker::Grade(Grade { student: "s1".into() })] {
            let line = m.encode();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<ToWorker>(&line).unwrap(), m);
        }
        let grade = ToWorker::Grade(Grade { student: "s1".into() }).encode();
        assert_eq!(grade, r#"{"msg":"grade","student":"s1"}"#);
        let answer = Answer {
            student: "s1".into(),
            success: false,
            wall: 1.5,
            notebook_wall: [("p1".to_string(), 1.0)].into(),
            log: "log".into(),
            error: Some("Traceback".into()),
            notebooks: Some(
                [("p1".to_string(), NotebookScore { score: 1.0, max_score: 2.0, needs_manual_grade: false })].into(),
            ),
            seconds_late: Some(0.0),
            failure: Some(Failure {
                kind: "KeyError".into(),
                errno: None,
                notebook: None,
                summary: "x".into(),
                ours: true,
            }),
            kernel_reports: [("p1".to_string(), vec![PathBuf::from("/r/s1/p1/kernel-1.json")])].into(),
            kernel_deaths: [(
                "p1".to_string(),
                vec![KernelDeath {
                    cell: 3,
                    grade_id: Some("ex3".into()),
                    cause: "limit".into(),
                    words: "used more than 256 MiB of memory".into(),
                    replay: false,
                    restarted: true,
                }],
            )]
            .into(),
        };
        for m in [
            FromWorker::Ready(Ready {
                protocol: PROTOCOL,
                pid: 7,
                notebooks: vec!["p1".into()],
                nbgrader: "0.9.6".into(),
                gradebook: "sqlite".into(),
            }),
            FromWorker::Fatal(Fatal { error: "no nbgrader".into(), fault: None }),
            FromWorker::Fatal(Fatal {
                error: "the gradebook ... cannot be opened".into(),
                fault: Some(FatalFault::Gradebook),
            }),
            FromWorker::Answer(Box::new(answer)),
        ] {
            let line = serde_json::to_string(&m).unwrap();
            assert_eq!(FromWorker::decode(&line).unwrap(), m, "{line}");
        }
        let fatal = serde_json::to_string(&FromWorker::Fatal(Fatal { error: "e".into(), fault: None })).unwrap();
        assert_eq!(fatal, r#"{"msg":"fatal","error":"e"}"#, "a fatal's shape never changes");
        let gradebook = r#"{"msg": "fatal", "error": "e", "fault": "gradebook"}"#;
        let want = Fatal { error: "e".into(), fault: Some(FatalFault::Gradebook) };
        assert_eq!(FromWorker::decode(gradebook).unwrap(), FromWorker::Fatal(want));
        let null = r#"{"msg": "fatal", "error": "e", "fault": null}"#;
        assert_eq!(FromWorker::decode(null).unwrap(), FromWorker::Fatal(Fatal { error: "e".into(), fault: None }));
    }

    #[test]
    fn another_protocol_or_an_unknown_field_is_refused() {
        let ready = r#"{"msg": "ready", "protocol": 999, "pid": 1, "notebooks": [], "nbgrader": "0.9.6"}"#;
        let e = FromWorker::decode(ready).unwrap_err();
        assert!(matches!(e, DecodeError::Version { worker: 999 }), "{e}");
        assert!(e.to_string().contains("protocol 999") && e.to_string().contains(&format!("speaks {PROTOCOL}")));
        // even a ready we could not otherwise read says which protocol it speaks
        let e = FromWorker::decode(r#"{"msg": "ready", "protocol": 0}"#).unwrap_err();
        assert!(matches!(e, DecodeError::Version { worker: 0 }), "{e}");
        let extra = r#"{"msg": "ready", "protocol": 3, "pid": 1, "notebooks": [], "nbgrader": "0.9.6", "gradebook": "sqlite", "x": 1}"#;
        assert!(FromWorker::decode(extra).unwrap_err().to_string().contains("unknown field"));
        assert!(FromWorker::decode(r#"{"student": "s"}"#).is_err(), "untagged");
        assert!(serde_json::from_str::<ToWorker>(r#"{"msg": "grade", "student": "s", "force": true}"#).is_err());
    }
}

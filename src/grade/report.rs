//! What a batch found: a verdict per student and, per notebook, the score and what its kernel
//! used; written as JSON (`--report`) and CSV (next to it), and summed up as a table.
//!
//! Student verdicts keep the two kinds of failure apart, as `isolate-grade run` does:
//! `graded`; outcomes of the submission (`rejected`, a kernel verdict such as `memory-limit`,
//! `error` when nbgrader could not grade it for another reason, `timeout` when the whole
//! submission took longer than `--student-timeout`); faults of ours or of the host
//! (`sandbox-error`); and `interrupted` when the batch was stopped.

use crate::report::Status;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Verdict {
    Graded,
    Rejected,
    /// The submission's code ended its kernel: the kernel's verdict.
    Kernel(Status),
    Error,
    Timeout,
    SandboxError,
    Interrupted,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Graded => "graded",
            Verdict::Rejected => "rejected",
            Verdict::Kernel(s) => s.as_str(),
            Verdict::Error => "error",
            Verdict::Timeout => "timeout",
            Verdict::SandboxError => "sandbox-error",
            Verdict::Interrupted => "interrupted",
        }
    }
    pub fn is_graded(self) -> bool {
        self == Verdict::Graded
    }
    pub fn is_fault(self) -> bool {
        matches!(self, Verdict::SandboxError | Verdict::Kernel(Status::SandboxError))
    }
}

impl From<Verdict> for String {
    fn from(v: Verdict) -> String {
        v.as_str().to_string()
    }
}

impl TryFrom<String> for Verdict {
    type Error = String;
    fn try_from(s: String) -> Result<Verdict, String> {
        Ok(match s.as_str() {
            "graded" => Verdict::Graded,
            "rejected" => Verdict::Rejected,
            "error" => Verdict::Error,
            "timeout" => Verdict::Timeout,
            "sandbox-error" => Verdict::SandboxError,
            "interrupted" => Verdict::Interrupted,
            other => Verdict::Kernel(Status::from_name(other).ok_or_else(|| format!("unknown verdict {other:?}"))?),
        })
    }
}

/// A notebook's verdict: its kernels' (`ok`, `output-limit`, `memory-limit`...), or `not-run`
/// when no kernel ran for it (not submitted, or grading stopped before it). In JSON and CSV, the
/// same words as a kernel's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum NotebookVerdict {
    #[default]
    NotRun,
    Kernel(Status),
}

impl NotebookVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            NotebookVerdict::NotRun => "not-run",
            NotebookVerdict::Kernel(s) => s.as_str(),
        }
    }
}

impl From<NotebookVerdict> for String {
    fn from(v: NotebookVerdict) -> String {
        v.as_str().to_string()
    }
}

impl TryFrom<String> for NotebookVerdict {
    type Error = String;
    fn try_from(s: String) -> Result<NotebookVerdict, String> {
        match s.as_str() {
            "not-run" => Ok(NotebookVerdict::NotRun),
            other => Status::from_name(other)
                .map(NotebookVerdict::Kernel)
                .ok_or_else(|| format!("unknown notebook verdict {other:?}")),
        }
    }
}

/// One notebook of one submission.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NotebookResult {
    pub notebook: String,
    pub verdict: NotebookVerdict,
    pub score: Option<f64>,
    pub max_score: Option<f64>,
    pub needs_manual_grade: bool,
    /// Seconds nbgrader spent on it (sanitizing, executing, saving grades).
    pub wall: Option<f64>,
    /// Its kernels' CPU seconds and peak memory in bytes, from their reports.
    pub cpu: Option<f64>,
    pub peak_memory: Option<u64>,
    pub kernels: u32,
    /// Each end of its kernel the student's code made, when grading went on past it
    /// (`--on-kernel-death restart`): the cell, the limit or crash, whether a fresh kernel
    /// was started.
    #[serde(default)]
    pub kernel_deaths: Vec<crate::grade::protocol::KernelDeath>,
}

/// One student's submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentResult {
    pub student: String,
    pub verdict: Verdict,
    pub score: Option<f64>,
    pub max_score: Option<f64>,
    pub seconds_late: Option<f64>,
    pub wall: f64,
    /// Why it was not graded: the tree's problems, the kernel's verdict, nbgrader's error.
    pub message: Option<String>,
    pub notebooks: Vec<NotebookResult>,
    /// The submission's timestamp.txt when it was graded (a newer submission is regraded).
    pub submission_timestamp: Option<String>,
    /// Graded by an earlier run, not this one.
    #[serde(default)]
    pub from_earlier_run: bool,
}

impl StudentResult {
    pub fn without_grades(student: &str, verdict: Verdict, message: String) -> StudentResult {
        StudentResult {
            student: student.to_string(),
            verdict,
            score: None,
            max_score: None,
            seconds_late: None,
            wall: 0.0,
            message: Some(message),
            notebooks: vec![],
            submission_timestamp: None,
            from_earlier_run: false,
        }
    }
}

/// The subset of a kernel's report (`isolate-grade kernel --report-dir`, `<kernel id>.json`) we add up.
#[derive(Debug, Deserialize)]
pub struct KernelReport {
    pub status: Status,
    pub signal: Option<String>,
    #[serde(default)]
    pub relayed_signals: Vec<String>,
    #[serde(default)]
    pub shutdown_requested: bool,
    /// `caller`: the kernel outlived its client's SIGTERM and its supervisor killed it.
    #[serde(default)]
    pub stopped_by: Option<String>,
    pub wall_time: f64,
    pub cpu_time: f64,
    pub peak_memory: Option<u64>,
    pub sandbox_error: Option<serde_json::Value>,
}

impl KernelReport {
    /// The status that speaks about the submission. A kernel killed by a signal its client
    /// sent was ended by nbgrader, not by the student's code: jupyter_client escalates to
    /// SIGTERM when a kernel does not shut down within 5 s, which an overloaded machine, or
    /// ipykernel itself after an interrupt, can make happen. So was a kernel that exited
    /// non-zero after its client's SIGINT: jupyter_client interrupts every kernel right before
    /// asking it to shut down (a SIGINT for a kernel whose interrupt_mode is `signal`), and
    /// IRkernel then sometimes exits with status 1 (seen in the mixed Python/R batch test). What nbgrader made of
    /// the notebook then decides the verdict.
    pub fn outcome(&self) -> Status {
        match (&self.status, &self.signal) {
            (Status::Signaled, Some(sig)) if self.relayed_signals.contains(sig) => Status::Ok,
            // the student's code ignored the client's SIGTERM: killed after a grace, the
            // client's end all the same
            (Status::Signaled, _) if self.stopped_by.as_deref() == Some("caller") => Status::Ok,
            // ended by a signal while shutting down, as its client asked (ipykernel 7.4's own
            // shutdown race: it aborts in libzmq after its last reply)
            (Status::Signaled, _) if self.shutdown_requested => Status::Ok,
            (Status::ExitNonzero, _) if self.relayed_signals.iter().any(|s| s == "SIGINT") => Status::Ok,
            (status, _) => *status,
        }
    }
}

/// The reports of one notebook's kernels (usually one), as the worker named them (a kernel
/// that never started wrote none: it is left out).
pub fn kernel_reports(files: &[PathBuf]) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    out.sort_by(|a, b| a.wall_time.total_cmp(&b.wall_time));
    out
}

/// Fill a notebook's verdict and usage in from its kernels' reports. The verdict is the
/// first outcome that isn't `ok` (a sandbox error first of all), else `ok`, else `not-run`.
pub fn add_kernels(nb: &mut NotebookResult, reports: &[KernelReport]) {
    nb.kernels = reports.len() as u32;
    if reports.is_empty() {
        nb.verdict = NotebookVerdict::NotRun;
        return;
    }
    let worst = reports
        .iter()
        .find(|r| r.status == Status::SandboxError)
        .or_else(|| reports.iter().find(|r| r.outcome() != Status::Ok))
        .unwrap_or(&reports[0]);
    nb.verdict = NotebookVerdict::Kernel(worst.outcome());
    nb.cpu = Some(reports.iter().map(|r| r.cpu_time).sum());
    nb.peak_memory = reports.iter().filter_map(|r| r.peak_memory).max();
}

/// A CSV cell: a number we formatted, or text, which may come from a student (a message
/// quoting their file names) and so always goes through [`crate::escape::csv_cell`].
#[derive(Debug, Clone, Copy)]
enum Cell<'a> {
    Number(Option<f64>),
    Text(&'a str),
}

/// The one way a row reaches the CSV: no text cell can start a formula.
fn write_row<'a, W: std::io::Write>(
    w: &mut csv::Writer<W>,
    cells: impl IntoIterator<Item = Cell<'a>>,
) -> Result<(), csv::Error> {
    w.write_record(cells.into_iter().map(|c| match c {
        Cell::Number(n) => n.map(|v| format!("{v}")).unwrap_or_default(),
        Cell::Text(t) => crate::escape::csv_cell(t).into_owned(),
    }))
}

/// What the end of a batch keeps of one student: its verdict and its line of the table,
/// a few hundred bytes whatever the submission. The whole result (notebooks, full message),
/// needed only for `--report`, waits in the [`Results`]' spool file, not in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub student: Box<str>,
    pub verdict: Verdict,
    score: Option<f64>,
    max_score: Option<f64>,
    /// The table's time cell: None for a student graded by an earlier run.
    wall: Option<f64>,
    /// The table's note: escaped, one line, at most [`NOTE_CHARS`] characters.
    note: Box<str>,
    /// Its notebooks' kernel ends that grading went on past.
    kernel_deaths: u32,
    stored: Stored,
}

/// Where a student's whole result is.
#[derive(Debug, Clone, PartialEq)]
enum Stored {
    /// Not kept: no report is written.
    Dropped,
    /// A JSON line of the spool: its offset and length.
    Spooled { at: u64, len: u32 },
    /// The spool could not take it (full disk...): kept here, as before the spool.
    Memory(Box<StudentResult>),
}

/// How many characters of a student's note the table shows.
const NOTE_CHARS: usize = 70;

impl Row {
    fn of(s: &StudentResult, stored: Stored) -> Row {
        let mut note = crate::escape::line(s.message.as_deref().unwrap_or("").lines().next().unwrap_or(""));
        let deaths = s.notebooks.iter().flat_map(|nb| nb.kernel_deaths.iter().map(move |d| d.note(&nb.notebook)));
        let kernel_deaths = s.notebooks.iter().map(|nb| nb.kernel_deaths.len() as u32).sum();
        if let (true, Some(first)) = (note.is_empty(), deaths.clone().next()) {
            // a graded student whose kernel ended: what the instructor should look at
            let more = deaths.count() - 1;
            note = crate::escape::line(&first);
            if more > 0 {
                note = format!("(+{more}) {note}");
            }
        }
        if s.from_earlier_run {
            note = "graded by an earlier run".into();
        } else if let Some(late) = s.seconds_late.filter(|l| *l > 0.0) {
            note = format!("late by {:.1} h", late / 3600.0);
        }
        if note.chars().count() > NOTE_CHARS {
            note = note.chars().take(NOTE_CHARS - 1).collect::<String>() + "…";
        }
        Row {
            student: s.student.as_str().into(),
            verdict: s.verdict,
            score: s.score,
            max_score: s.max_score,
            wall: (!s.from_earlier_run).then_some(s.wall),
            note: note.into(),
            kernel_deaths,
            stored,
        }
    }

    /// The table's cells.
    fn cells(&self) -> [String; 5] {
        let score = match (self.score, self.max_score) {
            (Some(a), Some(b)) => format!("{a}/{b}"),
            _ => "-".into(),
        };
        let time = self.wall.map_or_else(|| "-".into(), |w| format!("{w:.1}s"));
        [crate::escape::line(&self.student), self.verdict.as_str().into(), score, time, self.note.to_string()]
    }
}

/// Every student's result as it arrives: a compact [`Row`] in memory and, when a report is to
/// be written, the whole result appended to an unnamed file (one JSON line each), read back
/// one at a time when the report is written. What a batch keeps grows by a row per student,
/// not by what nbgrader said about each.
#[derive(Debug)]
pub struct Results {
    rows: Vec<Row>,
    /// Whole results are kept (a report will be written): in the spool, else in memory.
    keep: bool,
    spool: Option<Spool>,
}

#[derive(Debug)]
struct Spool {
    file: std::fs::File,
    len: u64,
    /// A write failed: it takes nothing more (what it holds stays readable).
    broken: bool,
    /// Where it is (unlinked): for messages.
    dir: PathBuf,
}

impl Results {
    /// Keep only rows: no report will be written.
    pub fn rows_only() -> Results {
        Results { rows: Vec::new(), keep: false, spool: None }
    }

    /// Keep whole results for the report, spooled to an unnamed file in `dir` (in memory if
    /// that file can't be made or written: the report is then written as it always was).
    pub fn spooled(dir: &Path) -> Results {
        let spool = match tempfile::tempfile_in(dir) {
            Ok(file) => Some(Spool { file, len: 0, broken: false, dir: dir.to_path_buf() }),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "no spool for the report: keeping results in memory");
                None
            }
        };
        Results { rows: Vec::new(), keep: true, spool }
    }

    pub fn push(&mut self, r: StudentResult) {
        let mut row = Row::of(&r, Stored::Dropped);
        if self.keep {
            let spooled = self.spool.as_mut().and_then(|s| s.append(&r));
            row.stored = match spooled {
                Some((at, len)) => Stored::Spooled { at, len },
                None => Stored::Memory(Box::new(r)),
            };
        }
        self.rows.push(row);
    }

    /// Room for `more` rows: a batch knows how many students it has.
    pub fn reserve(&mut self, more: usize) {
        self.rows.reserve_exact(more);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// In the report's order: by student (stable, as the report always was).
    pub fn sort(&mut self) {
        self.rows.sort_by(|x, y| x.student.cmp(&y.student));
    }

    /// A student's whole result, back from wherever it was kept.
    fn result(&self, row: &Row) -> Result<StudentResult, ReportError> {
        match (&row.stored, &self.spool) {
            (Stored::Memory(r), _) => Ok((**r).clone()),
            (Stored::Spooled { at, len }, Some(spool)) => spool.read(*at, *len),
            _ => Err(ReportError::Io {
                path: PathBuf::from(&*row.student),
                source: std::io::Error::other("its result was not kept for the report"),
            }),
        }
    }
}

/// The students of the report, each read back from wherever it was kept as it is written: the
/// JSON is what a `Vec<StudentResult>` in the rows' order makes, never whole in memory.
impl Serialize for Results {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = serializer.serialize_seq(Some(self.rows.len()))?;
        for row in &self.rows {
            seq.serialize_element(&self.result(row).map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

impl Spool {
    /// Append one result as a JSON line at its end; None if the file would not take it (a
    /// short write leaves a partial line past the end we know, never read).
    fn append(&mut self, r: &StudentResult) -> Option<(u64, u32)> {
        use std::os::unix::fs::FileExt;
        if self.broken {
            return None;
        }
        let mut line = serde_json::to_vec(r).expect("serializes");
        line.push(b'\n');
        let len = u32::try_from(line.len()).ok()?;
        let at = self.len;
        match self.file.write_all_at(&line, at) {
            Ok(()) => {
                self.len += u64::from(len);
                Some((at, len))
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "the report's spool failed: keeping results in memory");
                self.broken = true;
                None
            }
        }
    }

    fn read(&self, at: u64, len: u32) -> Result<StudentResult, ReportError> {
        use std::os::unix::fs::FileExt;
        let io = |source| ReportError::Io { path: self.dir.clone(), source };
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, at).map_err(io)?;
        serde_json::from_slice(&buf).map_err(|e| io(std::io::Error::other(e)))
    }
}

/// The whole batch.
#[derive(Debug, Serialize)]
pub struct BatchReport {
    pub schema: &'static str,
    pub course: String,
    pub assignment: String,
    pub started: String,
    pub wall: f64,
    pub jobs: usize,
    pub policy: String,
    /// The sandbox the students' kernels ran in, as the preflight's run reported it (absent
    /// when no sandbox ran here: with --slurm, each task's node checks its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxInfo>,
    pub counts: std::collections::BTreeMap<String, usize>,
    pub students: Results,
}

/// The mode of the sandbox (`privileged` or `rootless`) and the policy's limits that it does
/// not enforce (rootless without a cgroup, under `limits = "best-effort"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub mode: String,
    pub not_enforced: Vec<String>,
}

pub const SCHEMA: &str = "isolate-grade/batch/1";

impl BatchReport {
    pub fn count(rows: &[Row]) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for s in rows {
            *m.entry(s.verdict.as_str().to_string()).or_insert(0) += 1;
        }
        m
    }

    /// The JSON at `path` and the CSV beside it (same name, `.csv`): one row per student and
    /// notebook, one row with an empty notebook for a student with none. Both are written a
    /// student at a time; the JSON is what `serde_json::to_string_pretty` makes of the report
    /// with its students in memory, byte for byte.
    pub fn write(&self, path: &Path) -> Result<PathBuf, ReportError> {
        use std::io::Write;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ReportError::Io { path: p, source }
        };
        let mut json = std::io::BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
        serde_json::to_writer_pretty(&mut json, self).map_err(|e| io(path)(std::io::Error::from(e)))?;
        json.write_all(b"\n").map_err(io(path))?;
        json.into_inner().map_err(|e| e.into_error()).map_err(io(path))?;
        let csv_path = path.with_extension("csv");
        let err = |source| ReportError::Csv { path: csv_path.clone(), source };
        let mut w = csv::Writer::from_path(&csv_path).map_err(err)?;
        let header = [
            "student",
            "verdict",
            "notebook",
            "notebook_verdict",
            "score",
            "max_score",
            "wall_seconds",
            "cpu_seconds",
            "peak_memory_bytes",
            "message",
            "kernel_deaths",
        ];
        write_row(&mut w, header.map(Cell::Text)).map_err(err)?;
        for row in self.students.rows() {
            csv_rows(&mut w, &self.students.result(row)?).map_err(err)?;
        }
        w.flush().map_err(|e| ReportError::Io { path: csv_path.clone(), source: e })?;
        Ok(csv_path)
    }

    /// The summary table: a line per student, then the counts, each line handed to `line`.
    /// Every cell is escaped ([`crate::escape::line`]): a note quotes what a student controls.
    pub fn table_lines(&self, mut line: impl FnMut(&str)) {
        let header = ["student", "verdict", "score", "time", "note"].map(String::from);
        let mut widths: Vec<usize> = header.iter().map(|c| c.chars().count()).collect();
        for r in self.students.rows() {
            for (w, c) in widths.iter_mut().zip(r.cells()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let out = |r: &[String; 5]| -> String {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            cells.join("  ").trim_end().to_string()
        };
        line(&out(&header));
        for r in self.students.rows() {
            line(&out(&r.cells()));
        }
        let counts: Vec<String> = self.counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
        let restarted = self.students.rows().iter().filter(|r| r.kernel_deaths > 0).count();
        let restarted = if restarted > 0 {
            format!("; {restarted} with a kernel the student's code ended, graded past it (see the notes)")
        } else {
            String::new()
        };
        line(&format!("{} students: {}{restarted}", self.students.len(), counts.join(", ")));
        if let Some(s) = self.sandbox.as_ref().filter(|s| !s.not_enforced.is_empty()) {
            line(&format!(
                "{} sandbox, the policy's best-effort limits: not enforced: {}",
                crate::escape::line(&s.mode),
                crate::escape::line(&s.not_enforced.join(", "))
            ));
        }
    }

    /// The summary table as one string.
    pub fn table(&self) -> String {
        let mut out = String::new();
        self.table_lines(|l| {
            out += l;
            out.push('\n');
        });
        out
    }
}

/// A student's CSV rows: one per notebook, or one with an empty notebook when there is none.
fn csv_rows<W: std::io::Write>(w: &mut csv::Writer<W>, s: &StudentResult) -> Result<(), csv::Error> {
    let bytes = |m: Option<u64>| Cell::Number(m.map(|m| m as f64));
    let message = s.message.as_deref().unwrap_or("").lines().next().unwrap_or("");
    let student = [Cell::Text(&s.student), Cell::Text(s.verdict.as_str())];
    if s.notebooks.is_empty() {
        let rest = [
            Cell::Text(""),
            Cell::Text(""),
            Cell::Number(s.score),
            Cell::Number(s.max_score),
            Cell::Number(Some(s.wall)),
            Cell::Number(None),
            Cell::Number(None),
            Cell::Text(message),
            Cell::Text(""),
        ];
        write_row(w, student.iter().copied().chain(rest))?;
    }
    for nb in &s.notebooks {
        let deaths: Vec<String> = nb.kernel_deaths.iter().map(|d| d.line(&nb.notebook)).collect();
        let deaths = deaths.join("; ");
        let rest = [
            Cell::Text(&nb.notebook),
            Cell::Text(nb.verdict.as_str()),
            Cell::Number(nb.score),
            Cell::Number(nb.max_score),
            Cell::Number(nb.wall),
            Cell::Number(nb.cpu),
            bytes(nb.peak_memory),
            Cell::Text(message),
            Cell::Text(&deaths),
        ];
        write_row(w, student.iter().copied().chain(rest))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graded(student: &str) -> StudentResult {
        StudentResult {
            student: student.into(),
            verdict: Verdict::Graded,
            score: Some(7.5),
            max_score: Some(10.0),
            seconds_late: Some(0.0),
            wall: 3.25,
            message: None,
            notebooks: vec![NotebookResult {
                notebook: "problem1".into(),
                verdict: NotebookVerdict::Kernel(Status::Ok),
                score: Some(7.5),
                max_score: Some(10.0),
                wall: Some(3.0),
                cpu: Some(0.5),
                peak_memory: Some(1 << 20),
                kernels: 1,
                ..Default::default()
            }],
            submission_timestamp: Some("2026-01-01 10:00:00".into()),
            from_earlier_run: false,
        }
    }

    #[test]
    fn verdicts_round_trip_and_keep_faults_apart() {
        for v in [
            Verdict::Graded,
            Verdict::Rejected,
            Verdict::Kernel(Status::MemoryLimit),
            Verdict::Error,
            Verdict::Timeout,
            Verdict::SandboxError,
            Verdict::Interrupted,
        ] {
            assert_eq!(Verdict::try_from(String::from(v)).unwrap(), v);
        }
        assert!(Verdict::SandboxError.is_fault());
        assert!(!Verdict::Kernel(Status::MemoryLimit).is_fault());
        assert!(!Verdict::Rejected.is_fault());
        assert!(Verdict::try_from("bogus".to_string()).is_err());
        // a notebook's verdict: the kernel report's words, or not-run, in JSON as before
        for v in [NotebookVerdict::NotRun, NotebookVerdict::Kernel(Status::Ok)]
            .into_iter()
            .chain(Status::ALL.into_iter().map(NotebookVerdict::Kernel))
        {
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{}\"", v.as_str()));
            assert_eq!(serde_json::from_str::<NotebookVerdict>(&json).unwrap(), v);
        }
        assert_eq!(serde_json::to_string(&NotebookVerdict::NotRun).unwrap(), "\"not-run\"");
        assert!(serde_json::from_str::<NotebookVerdict>("\"graded\"").is_err());
    }

    fn batch(students: Vec<StudentResult>) -> BatchReport {
        // the spool's directory may go at once: the file is unnamed
        let d = tempfile::tempdir().unwrap();
        let mut results = Results::spooled(d.path());
        for s in students {
            results.push(s);
        }
        results.sort();
        BatchReport {
            schema: SCHEMA,
            course: "/c".into(),
            assignment: "ps1".into(),
            started: "now".into(),
            wall: 1.0,
            jobs: 2,
            policy: "default".into(),
            sandbox: Some(SandboxInfo { mode: "privileged".into(), not_enforced: vec![] }),
            counts: BatchReport::count(results.rows()),
            students: results,
        }
    }

    /// The report as it was written before the spool: the whole thing, students in memory.
    #[derive(Serialize)]
    struct Whole<'a> {
        schema: &'a str,
        course: &'a str,
        assignment: &'a str,
        started: &'a str,
        wall: f64,
        jobs: usize,
        policy: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        sandbox: &'a Option<SandboxInfo>,
        counts: std::collections::BTreeMap<String, usize>,
        students: Vec<StudentResult>,
    }

    fn whole(r: &BatchReport) -> String {
        let students: Vec<StudentResult> =
            r.students.rows().iter().map(|row| r.students.result(row).unwrap()).collect();
        let w = Whole {
            schema: r.schema,
            course: &r.course,
            assignment: &r.assignment,
            started: &r.started,
            wall: r.wall,
            jobs: r.jobs,
            policy: &r.policy,
            sandbox: &r.sandbox,
            counts: r.counts.clone(),
            students,
        };
        serde_json::to_string_pretty(&w).unwrap() + "\n"
    }

    #[test]
    fn the_json_written_a_student_at_a_time_is_the_whole_report_byte_for_byte() {
        let d = tempfile::tempdir().unwrap();
        let mut late = graded("frank");
        late.seconds_late = Some(7200.5);
        late.message = Some("a \"quoted\"\nmessage\twith\u{1b}[2J control characters and ünïcode".into());
        let earlier = StudentResult { from_earlier_run: true, ..graded("bob") };
        let rejected = StudentResult::without_grades("eve", Verdict::Rejected, "notes.txt: a symlink".into());
        for students in [vec![], vec![graded("alice")], vec![late, graded("alice"), earlier, rejected]] {
            let n = students.len();
            let r = batch(students.clone());
            assert_eq!(r.students.len(), n);
            let path = d.path().join("report.json");
            r.write(&path).unwrap();
            let written = std::fs::read_to_string(&path).unwrap();
            assert_eq!(written, whole(&r));
            let json: serde_json::Value = serde_json::from_str(&written).unwrap();
            let mut sorted = students;
            sorted.sort_by(|x, y| x.student.cmp(&y.student));
            let back: Vec<StudentResult> = serde_json::from_value(json["students"].clone()).unwrap();
            assert_eq!(back, sorted, "every result whole, in the student's order");
        }
    }

    #[test]
    fn a_row_keeps_neither_the_message_nor_the_notebooks() {
        // a student whose result is big: a long message, many notebooks
        let mut big = graded("alice");
        big.verdict = Verdict::Error;
        big.message = Some(format!("{}\n{}", "m".repeat(10_000), "log line\n".repeat(10_000)));
        big.notebooks =
            (0..200).map(|i| NotebookResult { notebook: format!("problem{i}"), ..Default::default() }).collect();
        let d = tempfile::tempdir().unwrap();
        for mut results in [Results::spooled(d.path()), Results::rows_only()] {
            results.push(big.clone());
            let row = &results.rows()[0];
            assert!(matches!(row.stored, Stored::Spooled { .. } | Stored::Dropped), "{:?}", row.stored);
            // what a row holds: itself, the student's name and the table's note (cut)
            let held = std::mem::size_of::<Row>() + row.student.len() + row.note.len();
            assert!(held <= 256, "{held} bytes");
            assert_eq!(row.note.chars().count(), NOTE_CHARS);
        }
        // the spooled result comes back whole
        let mut results = Results::spooled(d.path());
        results.push(big.clone());
        assert_eq!(results.result(&results.rows()[0]).unwrap(), big);
    }

    #[test]
    fn a_spool_that_fails_keeps_results_in_memory_and_the_report_whole() {
        let mut r = batch(vec![graded("alice")]);
        // a spool that can take nothing more (as on a full disk): read-only from here on
        let spool = r.students.spool.as_mut().unwrap();
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&spool.file));
        spool.file = std::fs::File::open(path).unwrap();
        r.students.push(graded("bob"));
        r.students.push(graded("carol"));
        assert!(matches!(r.students.rows()[0].stored, Stored::Spooled { .. }));
        assert!(matches!(r.students.rows()[1].stored, Stored::Memory(_)));
        assert!(r.students.spool.as_ref().unwrap().broken);
        r.counts = BatchReport::count(r.students.rows());
        let d = tempfile::tempdir().unwrap();
        r.write(&d.path().join("report.json")).unwrap();
        let written = std::fs::read_to_string(d.path().join("report.json")).unwrap();
        assert_eq!(written, whole(&r));
        assert!(written.contains("\"carol\"") && written.contains("\"alice\""));
    }

    #[test]
    fn json_and_csv_carry_every_notebook() {
        let d = tempfile::tempdir().unwrap();
        let students = vec![
            graded("alice"),
            StudentResult::without_grades("eve", Verdict::Rejected, "notes.txt: a symlink\nmore".into()),
        ];
        let r = batch(students);
        let csv_path = r.write(&d.path().join("report.json")).unwrap();
        let csv = std::fs::read_to_string(csv_path).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert_eq!(lines[1], "alice,graded,problem1,ok,7.5,10,3,0.5,1048576,,");
        assert_eq!(lines[2], "eve,rejected,,,,,0,,,notes.txt: a symlink,");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("report.json")).unwrap()).unwrap();
        assert_eq!(json["counts"]["graded"], 1);
        assert_eq!(json["students"][1]["verdict"], "rejected");
        let table = r.table();
        assert!(table.contains("alice    graded    7.5/10  3.2s"), "{table}");
        assert!(table.ends_with("2 students: 1 graded, 1 rejected\n"), "{table}");
        assert_eq!(json["sandbox"], serde_json::json!({"mode": "privileged", "not_enforced": []}));
    }

    /// A rootless batch under best-effort limits says so under the table and in the JSON.
    #[test]
    fn what_the_sandbox_did_not_enforce_is_said() {
        let d = tempfile::tempdir().unwrap();
        let mut r = batch(vec![graded("alice")]);
        r.sandbox = Some(SandboxInfo { mode: "rootless".into(), not_enforced: vec!["memory".into(), "pids".into()] });
        r.write(&d.path().join("report.json")).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("report.json")).unwrap()).unwrap();
        assert_eq!(json["sandbox"]["not_enforced"], serde_json::json!(["memory", "pids"]));
        let table = r.table();
        assert!(
            table.ends_with("rootless sandbox, the policy's best-effort limits: not enforced: memory, pids\n"),
            "{table}"
        );
    }

    #[test]
    fn a_kernel_the_student_ended_is_flagged_in_the_table_csv_and_json() {
        use crate::grade::protocol::KernelDeath;
        let d = tempfile::tempdir().unwrap();
        let mut alice = graded("alice");
        alice.notebooks[0].verdict = NotebookVerdict::Kernel(Status::MemoryLimit);
        alice.notebooks[0].kernels = 2;
        alice.notebooks[0].kernel_deaths = vec![KernelDeath {
            cell: 5,
            // a grade id is the notebook's: escaped in the table, inert in the CSV
            grade_id: Some("ex3\x1b[2J\u{202e}".into()),
            cause: "limit".into(),
            words: "used more than 64 MiB of memory".into(),
            replay: false,
            restarted: true,
        }];
        let r = batch(vec![alice, graded("bob")]);
        let table = r.table();
        assert!(!table.chars().any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'), "{table:?}");
        assert!(table.contains("graded   7.5/10  3.2s  kernel restarted after cell 5 (ex3"), "{table}");
        assert!(
            table.ends_with(
                "2 students: 2 graded; 1 with a kernel the student's code ended, graded past it (see the notes)\n"
            ),
            "{table}"
        );
        let csv_path = r.write(&d.path().join("report.json")).unwrap();
        let rows: Vec<csv::StringRecord> =
            csv::Reader::from_path(csv_path).unwrap().records().collect::<Result<_, _>>().unwrap();
        assert_eq!(&rows[0][3], "memory-limit");
        assert!(rows[0][10].starts_with("kernel restarted after cell 5 (ex3"), "{:?}", &rows[0][10]);
        assert!(rows[0][10].ends_with("of problem1: the code used more than 64 MiB of memory; the sandbox stopped it"));
        assert_eq!(&rows[1][10], "");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("report.json")).unwrap()).unwrap();
        let death = &json["students"][0]["notebooks"][0]["kernel_deaths"][0];
        assert_eq!((death["cell"].as_u64(), death["restarted"].as_bool()), (Some(5), Some(true)));
        assert_eq!(json["students"][0]["verdict"], "graded");
    }

    #[test]
    fn what_a_student_controls_is_escaped_in_the_table_and_inert_in_the_csv() {
        let d = tempfile::tempdir().unwrap();
        let forged = "x\x1b]0;t\x07\x1b[2J\r\x1b[2Kmallory  graded  10/10\u{202e}: a name with control characters";
        let students = vec![
            StudentResult::without_grades("eve", Verdict::Rejected, "=HYPERLINK(\"http://x\",\"y\"): a symlink".into()),
            StudentResult::without_grades("mallory", Verdict::Rejected, forged.into()),
            StudentResult::without_grades("trudy", Verdict::Error, "-1+1: \tx".into()),
        ];
        let r = batch(students);
        let table = r.table();
        assert!(!table.chars().any(|c| c.is_control() && c != '\n'), "{table:?}");
        assert!(!table.contains('\u{202e}'), "{table:?}");
        assert_eq!(table.lines().count(), 5, "one line per student: {table}");
        let csv_path = r.write(&d.path().join("report.json")).unwrap();
        let rows: Vec<csv::StringRecord> =
            csv::Reader::from_path(csv_path).unwrap().records().map(|r| r.unwrap()).collect();
        assert_eq!(&rows[0][9], "'=HYPERLINK(\"http://x\",\"y\"): a symlink");
        assert_eq!(&rows[2][9], "'-1+1: \tx");
        assert_eq!(&rows[0][6], "0", "numbers stay numbers");
        // the JSON keeps the data as it is (JSON escapes control characters itself)
        let json = std::fs::read_to_string(d.path().join("report.json")).unwrap();
        assert!(!json.contains('\x1b') && json.contains("\\u001b]0;t"), "{json}");
    }

    #[test]
    fn a_notebook_takes_the_worst_kernel_verdict() {
        let k = |status, wall| KernelReport {
            status,
            signal: None,
            relayed_signals: vec![],
            shutdown_requested: false,
            stopped_by: None,
            wall_time: wall,
            cpu_time: 1.0,
            peak_memory: Some(5),
            sandbox_error: None,
        };
        let mut nb = NotebookResult::default();
        add_kernels(&mut nb, &[k(Status::Ok, 1.0), k(Status::MemoryLimit, 2.0)]);
        assert_eq!((nb.verdict.as_str(), nb.cpu, nb.kernels), ("memory-limit", Some(2.0), 2));
        add_kernels(&mut nb, &[k(Status::MemoryLimit, 1.0), k(Status::SandboxError, 2.0)]);
        assert_eq!(nb.verdict.as_str(), "sandbox-error");
        add_kernels(&mut nb, &[]);
        assert_eq!(nb.verdict.as_str(), "not-run");
    }

    #[test]
    fn a_kernel_its_client_ended_is_no_verdict_on_the_submission() {
        let k = |signal: &str, relayed: &[&str]| KernelReport {
            status: Status::Signaled,
            signal: Some(signal.into()),
            relayed_signals: relayed.iter().map(|s| s.to_string()).collect(),
            shutdown_requested: false,
            stopped_by: None,
            wall_time: 1.0,
            cpu_time: 1.0,
            peak_memory: None,
            sandbox_error: None,
        };
        // jupyter_client's SIGTERM after a slow shutdown: nbgrader's result decides
        assert_eq!(k("SIGTERM", &["SIGINT", "SIGTERM"]).outcome(), Status::Ok);
        // the code killed itself, or died of a signal nobody outside sent
        assert_eq!(k("SIGTERM", &[]).outcome(), Status::Signaled);
        // IRkernel's exit status 1 after jupyter_client's interrupt before shutdown
        let exited = |relayed: &[&str]| KernelReport {
            status: Status::ExitNonzero,
            signal: None,
            relayed_signals: relayed.iter().map(|s| s.to_string()).collect(),
            shutdown_requested: false,
            stopped_by: None,
            wall_time: 1.0,
            cpu_time: 1.0,
            peak_memory: None,
            sandbox_error: None,
        };
        assert_eq!(exited(&["SIGINT"]).outcome(), Status::Ok);
        assert_eq!(exited(&[]).outcome(), Status::ExitNonzero);
        assert_eq!(exited(&["SIGTERM"]).outcome(), Status::ExitNonzero);
        assert_eq!(k("SIGSEGV", &["SIGTERM"]).outcome(), Status::Signaled);
        let mut nb = NotebookResult::default();
        add_kernels(&mut nb, &[k("SIGTERM", &["SIGTERM"])]);
        assert_eq!(nb.verdict.as_str(), "ok");
        let old: KernelReport =
            serde_json::from_str(r#"{"status":"signaled","signal":"SIGTERM","wall_time":1,"cpu_time":1}"#).unwrap();
        assert_eq!(old.outcome(), Status::Signaled, "a report without relayed_signals relayed none");
        // ipykernel 7.4 aborting in its own shutdown, after its client asked for it
        let aborted = KernelReport { shutdown_requested: true, ..k("SIGABRT", &[]) };
        assert_eq!(aborted.outcome(), Status::Ok);
        assert_eq!(k("SIGABRT", &[]).outcome(), Status::Signaled, "an abort before any shutdown request");
        // the code ignored the client's SIGTERM and its supervisor killed it after the grace
        let overdue = KernelReport { stopped_by: Some("caller".into()), ..k("SIGKILL", &["SIGTERM"]) };
        assert_eq!(overdue.outcome(), Status::Ok);
        let walled = KernelReport { stopped_by: Some("wall_time".into()), ..k("SIGKILL", &["SIGTERM"]) };
        assert_eq!(walled.outcome(), Status::Signaled, "a limit's kill stays the submission's");
    }
}

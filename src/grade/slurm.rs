//! `isolate-grade ASSIGNMENT --slurm`: the batch's students shared by the tasks of one Slurm
//! job array.
//!
//! The instructor's process does what the local batch does up to the queue (the caller, the
//! options, the kernels' twins written into the course, the batch lock, who to grade), then
//! writes a run directory on the shared filesystem (`<course>/.isolate-grade/<assignment>/
//! slurm/<run>/`: the options, the students to grade) and submits one preflight job, then one
//! job array. Each task (`isolate-grade slurm-task RUN_DIR`, on its node) is the local batch's
//! pool: its own `--jobs` workers, each taking the next student by claiming it, a
//! non-blocking flock on the student's lock file (the one the local batch and formgrader's
//! path hold while grading), so a slow student holds up nobody and a task or node that dies
//! releases its claims (at once locally; on NFS when the dead client's lease expires). The
//! task records each result (`results/<student>.json`, written then renamed) while it still
//! holds the claim, so a student is never graded twice in one run; the instructor's process
//! reads them as they appear for its progress, table and report.
//!
//! Nothing here forks except through `std::process::Command` (sbatch, squeue, scancel).

use super::course::{CourseError, Layout};
use super::report::StudentResult;
use crate::cli::GradeArgs;
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("Slurm is not reachable from here ({command}: {message}), so nothing was graded")]
    Unreachable { command: String, message: String },
    #[error("sbatch refused the job ({message}), so nothing was graded")]
    Submit { message: String },
    #[error("the preflight job on a Slurm node failed, so nothing was graded:\n{0}")]
    Preflight(String),
    #[error("{0}")]
    Task(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlurmError + '_ {
    move |source| SlurmError::Io { path: path.to_path_buf(), source }
}

/// What every task of a run is told: the instructor's options, as validated by the batch.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The system config the batch was given (`--config`).
    pub config: Option<PathBuf>,
    pub args: GradeArgs,
}

/// A run's directory on the shared filesystem.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

const SPEC: &str = "task.json";
const QUEUE: &str = "queue";
const RESULTS: &str = "results";
const JOB: &str = "job";
const PREFLIGHT: &str = "preflight";

impl RunDir {
    /// A new run's directory under `runs` (the batch lock is held: no other run is being
    /// made), with the tasks' options and the students to grade in the queue's order.
    pub fn create(runs: &Path, spec: &TaskSpec, queue: &VecDeque<String>) -> Result<RunDir, SlurmError> {
        std::fs::create_dir_all(runs).map_err(io(runs))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let path = runs.join(format!("{}-{}", stamp.as_secs(), std::process::id()));
        std::fs::create_dir(&path).map_err(io(&path))?;
        let run = RunDir { path };
        std::fs::create_dir(run.path.join(RESULTS)).map_err(io(&run.path))?;
        let spec_path = run.path.join(SPEC);
        let json =
            serde_json::to_vec_pretty(spec).map_err(|e| SlurmError::Json { path: spec_path.clone(), source: e })?;
        std::fs::write(&spec_path, json).map_err(io(&spec_path))?;
        let q = run.path.join(QUEUE);
        let text: String = queue.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(&q, text).map_err(io(&q))?;
        Ok(run)
    }

    pub fn open(path: &Path) -> RunDir {
        RunDir { path: path.to_path_buf() }
    }

    pub fn spec(&self) -> Result<TaskSpec, SlurmError> {
        let p = self.path.join(SPEC);
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        serde_json::from_slice(&bytes).map_err(|e| SlurmError::Json { path: p, source: e })
    }

    pub fn queue(&self) -> Result<Vec<String>, SlurmError> {
        let p = self.path.join(QUEUE);
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
    }

    fn result_path(&self, student: &str) -> PathBuf {
        self.path.join(RESULTS).join(format!("{student}.json"))
    }

    /// Whether this run has a result for the student.
    pub fn has_result(&self, student: &str) -> bool {
        self.result_path(student).exists()
    }

    /// Record a result: written to a temporary file, synced, renamed (a reader sees none or
    /// all of it).
    pub fn write_result(&self, r: &StudentResult) -> Result<(), SlurmError> {
        let dst = self.result_path(&r.student);
        let tmp = dst.with_extension(format!("tmp{}", std::process::id()));
        let json = serde_json::to_vec(r).map_err(|e| SlurmError::Json { path: dst.clone(), source: e })?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dst)
        };
        write().map_err(io(&dst))
    }

    /// The results recorded so far whose students are not in `seen`; a file that can't be
    /// read yet is left for the next look.
    pub fn new_results(&self, seen: &BTreeSet<String>) -> Result<Vec<StudentResult>, SlurmError> {
        let dir = self.path.join(RESULTS);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let Some(student) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if seen.contains(student) {
                continue;
            }
            let p = entry.path();
            let Ok(bytes) = std::fs::read(&p) else { continue };
            match serde_json::from_slice::<StudentResult>(&bytes) {
                Ok(r) if r.student == student => out.push(r),
                Ok(_) => return Err(SlurmError::Task(format!("{}: the result of another student", p.display()))),
                Err(e) => return Err(SlurmError::Json { path: p, source: e }),
            }
        }
        Ok(out)
    }

    pub fn set_job(&self, job: &str) -> Result<(), SlurmError> {
        let p = self.path.join(JOB);
        std::fs::write(&p, job).map_err(io(&p))
    }

    pub fn job(&self) -> Option<String> {
        std::fs::read_to_string(self.path.join(JOB)).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    }

    /// The preflight task's verdict: `None` until it wrote one; `Some(Ok)` or its message.
    pub fn preflight(&self) -> Option<Result<(), String>> {
        let text = std::fs::read_to_string(self.path.join(PREFLIGHT)).ok()?;
        Some(match text.strip_prefix("ok") {
            Some(_) => Ok(()),
            None => Err(text),
        })
    }

    pub fn set_preflight(&self, verdict: &Result<(), String>) -> Result<(), SlurmError> {
        let p = self.path.join(PREFLIGHT);
        let text = match verdict {
            Ok(()) => "ok\n".to_string(),
            Err(m) if m.starts_with("ok") => format!("failed: {m}"),
            Err(m) => m.clone(),
        };
        std::fs::write(&p, text).map_err(io(&p))
    }

    /// The output files of the run's jobs: for messages.
    pub fn outputs(&self) -> String {
        self.path.join("*.out").display().to_string()
    }
}

/// Runs of this assignment that an earlier batch left (the batch lock is held: none is being
/// graded by an instructor's process), each with its job if it had one.
pub fn earlier_runs(runs: &Path) -> Vec<RunDir> {
    let Ok(entries) = std::fs::read_dir(runs) else { return vec![] };
    entries.filter_map(Result::ok).filter(|e| e.path().is_dir()).map(|e| RunDir::open(&e.path())).collect()
}

/// One task's share of the run's queue: each student taken by claiming it, the claim held
/// until its result is recorded. A student another task holds is looked at again later (that
/// task may die); the task's share ends when every student has a result.
pub struct Claims<'a> {
    run: &'a RunDir,
    layout: &'a Layout,
    state: Mutex<ClaimState>,
}

struct ClaimState {
    pending: VecDeque<String>,
    /// Held by another task (or another of our workers) when last tried.
    busy: Vec<String>,
}

/// How long a task waits before trying, again, the students others held.
const RETRY: Duration = Duration::from_millis(500);

impl<'a> Claims<'a> {
    pub fn new(run: &'a RunDir, layout: &'a Layout, queue: Vec<String>) -> Claims<'a> {
        Claims { run, layout, state: Mutex::new(ClaimState { pending: queue.into(), busy: vec![] }) }
    }

    /// The next student no one has graded or holds, claimed; `None` when every student of the
    /// run has a result, or `stop` is set.
    pub fn next(&self, stop: &AtomicBool) -> Result<Option<(String, Flock<File>)>, CourseError> {
        loop {
            let waiting = {
                let mut st = self.state.lock().expect("not poisoned");
                while let Some(student) = st.pending.pop_front() {
                    if self.run.has_result(&student) {
                        continue;
                    }
                    match self.layout.try_student_lock(&student)? {
                        // looked at again after the claim: it may have been recorded in between
                        Some(_) if self.run.has_result(&student) => continue,
                        Some(lock) => return Ok(Some((student, lock))),
                        None => st.busy.push(student),
                    }
                }
                let busy = std::mem::take(&mut st.busy);
                st.pending.extend(busy);
                !st.pending.is_empty()
            };
            if !waiting || stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            std::thread::sleep(RETRY);
        }
    }
}

/// Single-quoted for sh: the job's command line is run by sbatch's shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A job to submit: its array size, its output files, the command each task runs.
pub struct Submission<'a> {
    pub run: &'a RunDir,
    pub course: &'a Path,
    pub assignment: &'a str,
    pub binary: &'a Path,
    /// The instructor's own sbatch options, after ours (so theirs win where they overlap).
    pub extra: &'a [String],
    pub tasks: usize,
    pub preflight: bool,
}

impl Submission<'_> {
    /// sbatch's arguments.
    pub fn args(&self) -> Vec<String> {
        let (name, output) = if self.preflight {
            (format!("isolate-grade-preflight-{}", self.assignment), self.run.path.join("preflight.out"))
        } else {
            (format!("isolate-grade-{}", self.assignment), self.run.path.join("task-%a.out"))
        };
        // the task reads the batch's options, its system config included, from the run
        let mut command = vec![sh_quote(&self.binary.display().to_string())];
        command.extend(["slurm-task".to_string(), sh_quote(&self.run.path.display().to_string())]);
        if self.preflight {
            command.push("--preflight".into());
        }
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={name}"),
            format!("--output={}", output.display()),
            format!("--chdir={}", self.course.display()),
            // a task on a node that fails is run again elsewhere (what it held is released)
            "--requeue".into(),
        ];
        if !self.preflight {
            args.push(format!("--array=0-{}", self.tasks.max(1) - 1));
        }
        args.extend(self.extra.iter().cloned());
        args.push(format!("--wrap=exec {}", command.join(" ")));
        args
    }
}

/// The text a command printed, for messages: escaped, at most a few lines.
fn said(out: &std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(5).collect();
    crate::escape::text(&lines.join("; "))
}

fn run_tool(tool: &str, args: &[String]) -> Result<std::process::Output, SlurmError> {
    Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| SlurmError::Unreachable { command: tool.to_string(), message: e.to_string() })
}

/// sbatch and the controller answer (`sinfo` lists at least one partition).
pub fn check_reachable() -> Result<(), SlurmError> {
    let out = run_tool("sinfo", &["--noheader".into(), "--format=%P %a %D".into()])?;
    if !out.status.success() {
        return Err(SlurmError::Unreachable { command: "sinfo".into(), message: said(&out) });
    }
    if String::from_utf8_lossy(&out.stdout).trim().is_empty() {
        return Err(SlurmError::Unreachable { command: "sinfo".into(), message: "no partition".into() });
    }
    let out = run_tool("sbatch", &["--version".into()])?;
    if !out.status.success() {
        return Err(SlurmError::Unreachable { command: "sbatch --version".into(), message: said(&out) });
    }
    Ok(())
}

/// Submit; the job's id.
pub fn submit(s: &Submission) -> Result<String, SlurmError> {
    let out = run_tool("sbatch", &s.args())?;
    let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_string();
    if !out.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SlurmError::Submit { message: said(&out) });
    }
    tracing::info!(job = %id, tasks = s.tasks, preflight = s.preflight, "submitted");
    Ok(id)
}

/// Whether any task of the job is still pending or running: `None` if the controller did
/// not answer.
pub fn active(job: &str) -> Option<bool> {
    let out = Command::new("squeue").args(["--noheader", "--jobs", job, "--format=%T"]).output().ok()?;
    if out.status.success() {
        return Some(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    }
    // a job the controller has forgotten is over
    String::from_utf8_lossy(&out.stderr).contains("Invalid job id").then_some(false)
}

/// Cancel a job (every task; their students' claims are released as they end).
pub fn cancel(job: &str) {
    match Command::new("scancel").arg(job).output() {
        Ok(out) if out.status.success() => tracing::info!(job = %job, "cancelled"),
        Ok(out) => tracing::warn!(job = %job, said = %said(&out), "scancel failed"),
        Err(e) => tracing::warn!(job = %job, error = %e, "scancel failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub<'a>(run: &'a RunDir, extra: &'a [String], preflight: bool) -> Submission<'a> {
        Submission {
            run,
            course: Path::new("/srv/course it's"),
            assignment: "ps1",
            binary: Path::new("/usr/local/bin/isolate-grade"),
            extra,
            tasks: 3,
            preflight,
        }
    }

    #[test]
    fn the_array_runs_the_task_command_quoted_and_the_instructors_options_come_last() {
        let run = RunDir::open(Path::new("/srv/run"));
        let extra = vec!["--partition=course".to_string()];
        let a = sub(&run, &extra, false).args();
        assert!(a.contains(&"--array=0-2".to_string()), "{a:?}");
        assert!(a.contains(&"--requeue".to_string()));
        assert!(a.contains(&"--chdir=/srv/course it's".to_string()));
        assert!(a.contains(&"--output=/srv/run/task-%a.out".to_string()));
        let part = a.iter().position(|x| x == "--partition=course").unwrap();
        let wrap = a.iter().position(|x| x.starts_with("--wrap=")).unwrap();
        assert!(part < wrap && wrap == a.len() - 1);
        assert_eq!(a[wrap], "--wrap=exec '/usr/local/bin/isolate-grade' slurm-task '/srv/run'");
        let p = sub(&run, &[], true).args();
        assert!(!p.iter().any(|x| x.starts_with("--array")), "{p:?}");
        assert!(p.last().unwrap().ends_with(" --preflight"));
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn claims_share_a_queue_and_skip_what_another_holds_or_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let course = dir.path().join("course");
        std::fs::create_dir_all(course.join("submitted")).unwrap();
        let layout = Layout::new(&course, "ps1").unwrap();
        let queue: VecDeque<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({"config": null, "args": {
            "assignment": "ps1", "course": course, "students": [], "jobs": null, "force": false,
            "report": null, "policy": "default", "python": null, "student_timeout": "30m",
            "notebook": {"notebook_max_size": "32M", "notebook_max_cells": "2000",
                         "notebook_max_outputs": "10000", "notebook_max_depth": "64"},
            "worker_memory": "2G", "worker_cpu_time": "5m", "slurm": false, "slurm_tasks": null, "slurm_args": []}}))
        .unwrap();
        let run = RunDir::create(&dir.path().join("runs"), &spec, &queue).unwrap();
        assert_eq!(run.queue().unwrap(), vec!["a", "b", "c"]);
        assert_eq!(run.spec().unwrap().args.assignment, "ps1");
        // another task holds a, and b is recorded already
        let held = layout.try_student_lock("a").unwrap().unwrap();
        run.write_result(&StudentResult::without_grades("b", super::super::report::Verdict::Graded, String::new()))
            .unwrap();
        let stop = AtomicBool::new(false);
        let claims = Claims::new(&run, &layout, run.queue().unwrap());
        let (first, lock_c) = claims.next(&stop).unwrap().unwrap();
        assert_eq!(first, "c");
        // the holder of a dies (its lock goes): a is taken on the next look
        drop(held);
        let (second, _lock_a) = claims.next(&stop).unwrap().unwrap();
        assert_eq!(second, "a");
        run.write_result(&StudentResult::without_grades("c", super::super::report::Verdict::Graded, String::new()))
            .unwrap();
        drop(lock_c);
        let seen: BTreeSet<String> = ["b".to_string()].into();
        let mut fresh: Vec<String> = run.new_results(&seen).unwrap().into_iter().map(|r| r.student).collect();
        fresh.sort();
        assert_eq!(fresh, vec!["c"]);
        // a is still held by this task's other worker: a second claimer waits, and a stop ends it
        stop.store(true, Ordering::SeqCst);
        let other = Claims::new(&run, &layout, run.queue().unwrap());
        assert!(other.next(&stop).unwrap().is_none());
    }
}

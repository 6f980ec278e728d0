//! A batch shared by tasks on several machines (`--slurm`, `--external-tasks`): the
//! students are a queue in a run directory on the filesystem every machine shares, taken by
//! claims.
//!
//! The instructor's process does what the local batch does up to the queue (the caller, the
//! options, the kernels' twins written into the course, the batch lock, who to grade), then
//! writes a run directory (`<course>/.isolate-grade/<assignment>/runs/<run>/`: the options,
//! the students to grade) and has the tasks started ([`super::slurm`], or by whoever was told
//! the run directory). Each task (`isolate-grade task RUN_DIR`, on its machine) is the local
//! batch's pool: its own `--jobs` workers, each taking the next student by claiming it, a
//! non-blocking flock on the student's lock file (the one the local batch and formgrader's
//! path hold while grading), so a slow student holds up nobody and a task or machine that
//! dies releases its claims (at once locally; on NFS when the dead client's lease expires).
//! The task records each result (`results/<student>.json`, written then renamed) while it
//! still holds the claim, so a student is never graded twice in one run; the instructor's
//! process reads them as they appear for its progress, table and report.

use super::course::{self, CourseError, Layout};
use super::report::{Results, StudentResult, Verdict};
use super::{progress, slurm, worker, Context, Ended, GradeError, GradeExit, Kernels, Request, Selection, Source};
use crate::cli::{GradeArgs, TaskArgs};
use nix::fcntl::Flock;
use nix::sys::signalfd::SignalFd;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{0}: the result of another student")]
    Foreign(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SharedError + '_ {
    move |source| SharedError::Io { path: path.to_path_buf(), source }
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
    pub fn create(runs: &Path, spec: &TaskSpec, queue: &VecDeque<String>) -> Result<RunDir, SharedError> {
        std::fs::create_dir_all(runs).map_err(io(runs))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let path = runs.join(format!("{}-{}", stamp.as_secs(), std::process::id()));
        std::fs::create_dir(&path).map_err(io(&path))?;
        let run = RunDir { path };
        std::fs::create_dir(run.path.join(RESULTS)).map_err(io(&run.path))?;
        let spec_path = run.path.join(SPEC);
        let json =
            serde_json::to_vec_pretty(spec).map_err(|e| SharedError::Json { path: spec_path.clone(), source: e })?;
        std::fs::write(&spec_path, json).map_err(io(&spec_path))?;
        let q = run.path.join(QUEUE);
        let text: String = queue.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(&q, text).map_err(io(&q))?;
        Ok(run)
    }

    pub fn open(path: &Path) -> RunDir {
        RunDir { path: path.to_path_buf() }
    }

    pub fn spec(&self) -> Result<TaskSpec, SharedError> {
        let p = self.path.join(SPEC);
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        serde_json::from_slice(&bytes).map_err(|e| SharedError::Json { path: p, source: e })
    }

    pub fn queue(&self) -> Result<Vec<String>, SharedError> {
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
    pub fn write_result(&self, r: &StudentResult) -> Result<(), SharedError> {
        let dst = self.result_path(&r.student);
        let tmp = dst.with_extension(format!("tmp{}", std::process::id()));
        let json = serde_json::to_vec(r).map_err(|e| SharedError::Json { path: dst.clone(), source: e })?;
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
    pub fn new_results(&self, seen: &BTreeSet<String>) -> Result<Vec<StudentResult>, SharedError> {
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
                Ok(_) => return Err(SharedError::Foreign(p)),
                Err(e) => return Err(SharedError::Json { path: p, source: e }),
            }
        }
        Ok(out)
    }

    pub fn set_job(&self, job: &str) -> Result<(), SharedError> {
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

    pub fn set_preflight(&self, verdict: &Result<(), String>) -> Result<(), SharedError> {
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
                    match self.layout.try_student_lock(&student)? {
                        // Looked at only once claimed: a result is recorded before its claim
                        // is released, so one seen now is final, and none seen now can appear
                        // until we release. (Looking first, unclaimed, would leave a window
                        // where another task records it and lets go just before we claim.)
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

/// Who starts a shared batch's tasks.
pub(super) enum Starter<'a> {
    /// One Slurm job array, after a preflight job (`--slurm`).
    Slurm { extra: &'a [String], tasks: usize },
    /// Something else the instructor or the hub's admin runs (a Kubernetes Job:
    /// `deploy/kubernetes/`), told the run directory (`--external-tasks`).
    External,
}

/// How often the instructor's process looks for new results, and asks Slurm about its job.
const POLL: Duration = Duration::from_millis(500);
const ASK_SLURM: Duration = Duration::from_secs(2);
/// After a cancel, how long the tasks are given to end (and record what they finished).
const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// A shared batch, the instructor's side: the gradebook checked shareable, the run written,
/// its tasks started (with Slurm: a preflight job on a node first, then the job array), and
/// their results read as they are recorded, for the same progress, table and report as a
/// local run.
pub(super) fn grade_all(
    req: &Request,
    kernels: &Kernels,
    setup: worker::Setup,
    selection: Selection,
    mut results: Results,
    signals: &SignalFd,
    starter: Starter,
) -> Result<Ended, GradeError> {
    let started = super::now();
    let l = &req.layout;
    // Before anything is started: a gradebook every machine can share, and Slurm answering.
    let (w, ready) =
        Worker::start(&kernels.maker.client.executable, &setup, &l.log("shared-check")).map_err(|e| match e {
            worker::WorkerError::Gradebook(message) => {
                GradeError::Gradebook { assignment: req.assignment().to_string(), message }
            }
            e => GradeError::Worker { assignment: req.assignment().to_string(), source: e },
        })?;
    w.kill();
    if ready.gradebook == "sqlite" {
        return Err(GradeError::Invalid(
            "--slurm/--external-tasks: the gradebook is SQLite, which other machines cannot share safely (SQLite's \
             locks do not hold across machines on a network filesystem); set c.CourseDirectory.db_url to a \
             PostgreSQL database (README: \"Grading on a Slurm cluster\")"
                .into(),
        ));
    }
    if let Starter::Slurm { .. } = starter {
        slurm::check_reachable()?;
    }
    // An earlier run's job (its instructor's process was killed) is cancelled and its
    // directory removed: only this run's tasks grade from here on.
    for earlier in earlier_runs(&l.runs()) {
        if let Some(job) = earlier.job() {
            slurm::cancel(&job);
        }
        course::remove_tree(&earlier.path)?;
    }
    let Selection { queue, earlier, rejected } = selection;
    let mut progress = super::begin(req, queue.len(), earlier, rejected, &mut results);
    if queue.is_empty() {
        progress.finish();
        return Ok(Ended { results, started, interrupted: false });
    }
    let mut args = req.args.clone();
    args.course = l.course.clone();
    args.policy = req.policy.clone();
    args.python = Some(kernels.maker.client.executable.clone());
    (args.slurm, args.slurm_tasks, args.slurm_args, args.external_tasks, args.report) =
        (false, None, vec![], false, None);
    let run = RunDir::create(&l.runs(), &TaskSpec { config: req.config.clone(), args }, &queue)?;
    let job = match starter {
        Starter::Slurm { extra, tasks } => {
            match start_slurm(req, &run, extra, tasks.min(queue.len()), signals, &mut progress)? {
                Some(job) => Some(job),
                None => {
                    progress.finish();
                    return Ok(ended(&run, queue, results, started, true));
                }
            }
        }
        Starter::External => {
            progress.note(&format!(
                "isolate-grade: --external-tasks: start tasks that run `isolate-grade task {}` where the course is \
                 at this same path (deploy/kubernetes/grade-job.yaml); waiting for their results",
                run.path.display()
            ));
            None
        }
    };
    let mut seen = BTreeSet::new();
    let mut take = |progress: &mut progress::Progress, results: &mut Results| -> Result<bool, GradeError> {
        for r in run.new_results(&seen)? {
            seen.insert(r.student.clone());
            progress.finished(&r);
            results.push(r);
        }
        Ok(seen.len() == queue.len())
    };
    let interrupted = watch(job.as_deref(), signals, || take(&mut progress, &mut results))?;
    match (&job, interrupted) {
        (Some(job), true) => {
            progress.note(&format!(
                "isolate-grade: stopping: job {job} cancelled; graded students stay graded, a rerun does the rest"
            ));
            slurm::cancel(job);
            let until = Instant::now() + CANCEL_WAIT;
            while slurm::active(job) != Some(false) && Instant::now() < until {
                std::thread::sleep(POLL);
            }
        }
        (None, true) => progress.note(
            "isolate-grade: stopping: stop the tasks you started; graded students stay graded, a rerun does the rest",
        ),
        // every student has a result: what is left of the job has nothing to do (a task Slurm
        // requeued after its node failed waits for a node)
        (Some(job), false) if slurm::active(job) == Some(true) => slurm::cancel(job),
        _ => {}
    }
    take(&mut progress, &mut results)?;
    progress.finish();
    let rest = queue.into_iter().filter(|s| !seen.contains(s)).collect();
    Ok(ended(&run, rest, results, started, interrupted))
}

/// The preflight job (a node runs what every task will: the course read at the same path, the
/// sandbox, nbgrader and the gradebook), then the job array; its id, or `None` if a signal
/// stopped the batch first.
fn start_slurm(
    req: &Request,
    run: &RunDir,
    extra: &[String],
    tasks: usize,
    signals: &SignalFd,
    progress: &mut progress::Progress,
) -> Result<Option<String>, GradeError> {
    let binary = std::env::current_exe().map_err(|e| GradeError::Io { path: "/proc/self/exe".into(), source: e })?;
    let submission = |tasks: usize, preflight: bool| slurm::Submission {
        run,
        course: &req.layout.course,
        assignment: req.assignment(),
        binary: &binary,
        sudo: req.sudo,
        extra,
        tasks,
        preflight,
    };
    progress.note("isolate-grade: --slurm: the preflight job is running on a node");
    let job = slurm::submit(&submission(1, true))?;
    run.set_job(&job)?;
    if watch(Some(&job), signals, || Ok(false))? {
        progress.note(&format!("isolate-grade: stopping: the preflight job {job} cancelled; nothing was graded"));
        slurm::cancel(&job);
        return Ok(None);
    }
    match run.preflight() {
        Some(Ok(())) => {}
        Some(Err(m)) => return Err(slurm::SlurmError::Preflight(crate::escape::text(&m)).into()),
        None => {
            return Err(slurm::SlurmError::Preflight(format!(
                "its job ended without a verdict: can the nodes read {} at the same path? (its output: {})",
                run.path.display(),
                run.path.join("preflight.out").display()
            ))
            .into())
        }
    }
    let job = slurm::submit(&submission(tasks, false))?;
    run.set_job(&job)?;
    progress.note(&format!("isolate-grade: --slurm: job {job}, {tasks} tasks; their output: {}", run.outputs()));
    Ok(Some(job))
}

/// Until `done` says all is done, the Slurm job (if any) has left the queue (every task
/// ended), or a signal came (then `true`); `done` is asked every POLL, Slurm every ASK_SLURM.
fn watch(
    job: Option<&str>,
    signals: &SignalFd,
    mut done: impl FnMut() -> Result<bool, GradeError>,
) -> Result<bool, GradeError> {
    let mut asked = Instant::now();
    let mut unanswered = 0;
    loop {
        if let Ok(Some(sig)) = signals.read_signal() {
            tracing::info!(signal = sig.ssi_signo, job = ?job, "stop signal");
            return Ok(true);
        }
        if done()? {
            return Ok(false);
        }
        if let Some(job) = job.filter(|_| asked.elapsed() >= ASK_SLURM) {
            asked = Instant::now();
            match slurm::active(job) {
                Some(true) => unanswered = 0,
                Some(false) => return Ok(false),
                None => {
                    unanswered += 1;
                    if unanswered == 1 {
                        tracing::warn!(job = %job, "squeue does not answer: still waiting for the job");
                    }
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// The end of a shared batch: a student with no result was stopped (a signal), or left by
/// tasks that all ended without grading it (they failed or were cancelled from outside: a
/// fault, whose cause is in the tasks' output).
fn ended(
    run: &RunDir,
    rest: VecDeque<String>,
    mut results: Results,
    started: (Instant, String),
    interrupted: bool,
) -> Ended {
    for student in rest {
        results.push(match interrupted {
            true => StudentResult::without_grades(&student, Verdict::Interrupted, "not graded (stopped)".into()),
            false => StudentResult::without_grades(
                &student,
                Verdict::SandboxError,
                format!("the Slurm job ended without grading this student (its tasks' output: {})", run.outputs()),
            ),
        });
    }
    Ended { results, started, interrupted }
}

/// `isolate-grade task RUN_DIR`, on a node or in a pod: the run read at the path the batch
/// wrote it (the course's filesystem is shared), the caller, options and kernels as the batch
/// had them (the sandbox's own check run here, on this machine), then the local batch's pool
/// taking students by claim until every student of the run has a result. It exits 0 unless a
/// fault (3) or a signal (130) ended it; the instructor's process reads the results.
pub fn task(t: TaskArgs) -> Result<u8, GradeError> {
    let run = RunDir::open(&t.run_dir);
    let spec = run.spec()?;
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let made = || -> Result<(Request, Kernels), GradeError> {
        let req = Request::new(spec.config.clone(), spec.args.clone())?;
        let kernels = Kernels::make(&req)?;
        Ok((req, kernels))
    };
    if t.preflight {
        let verdict = made().and_then(|(req, kernels)| {
            let setup = kernels.setup(&req);
            let (w, _) = Worker::start(&kernels.maker.client.executable, &setup, &req.layout.log("task-preflight"))
                .map_err(|e| GradeError::Worker { assignment: req.assignment().to_string(), source: e })?;
            w.kill();
            Ok(())
        });
        let verdict = verdict.map_err(|e| format!("on {host}: {e}"));
        run.set_preflight(&verdict)?;
        if let Err(m) = &verdict {
            eprintln!("isolate-grade: {}", crate::escape::text(m));
        }
        return Ok(if verdict.is_ok() { GradeExit::AllGraded } else { GradeExit::Fault }.code());
    }
    let (req, kernels) = made()?;
    let signals = super::stop_signals().map_err(GradeError::Signals)?;
    let queue = run.queue()?;
    // this task's workers' logs: the host and its index in the job (Slurm's or Kubernetes')
    let index = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"].iter().find_map(|v| std::env::var(v).ok());
    let log = format!("task-{host}-{}-worker", index.unwrap_or_default());
    let log = log.replace(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)), "_");
    let ctx = Context::new(&req, &kernels, kernels.setup(&req), log, Some(run.clone()));
    let workers = req.jobs.min(queue.len());
    let mut progress = progress::Progress::new(queue.len(), false);
    tracing::info!(run = %run.path.display(), host = %host, workers, "task");
    let source = Source::Shared(Claims::new(&run, &req.layout, queue));
    let mut results = Results::rows_only();
    let (fatal, interrupted) = super::pool(&ctx, &source, workers, None, &signals, &mut progress, &mut results);
    if let Some(e) = fatal {
        return Err(GradeError::Worker { assignment: req.assignment().to_string(), source: e });
    }
    // A student not graded because of their submission is a result like any other (the
    // instructor's report has it): the task failed only on a fault or a stop.
    let verdicts: Vec<Verdict> = results.rows().iter().map(|r| r.verdict).collect();
    Ok(match GradeExit::of(&verdicts, interrupted) {
        GradeExit::NotAllGraded => GradeExit::AllGraded,
        e => e,
    }
    .code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_share_a_queue_and_skip_what_another_holds_or_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let course = dir.path().join("course");
        std::fs::create_dir_all(course.join("submitted")).unwrap();
        let layout = Layout::new(&course, "ps1").unwrap();
        let queue: VecDeque<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let args = <crate::cli::Cli as clap::Parser>::parse_from(["isolate-grade", "grade", "ps1"]);
        let crate::cli::Command::Grade(args) = args.command else { panic!("grade") };
        let run = RunDir::create(&dir.path().join("runs"), &TaskSpec { config: None, args }, &queue).unwrap();
        assert_eq!(run.queue().unwrap(), vec!["a", "b", "c"]);
        assert_eq!(run.spec().unwrap().args.assignment, "ps1");
        // another task holds a, and b is recorded already
        let held = layout.try_student_lock("a").unwrap().unwrap();
        run.write_result(&StudentResult::without_grades("b", Verdict::Graded, String::new())).unwrap();
        let stop = AtomicBool::new(false);
        let claims = Claims::new(&run, &layout, run.queue().unwrap());
        let (first, lock_c) = claims.next(&stop).unwrap().unwrap();
        assert_eq!(first, "c");
        // the holder of a dies (its lock goes): a is taken on the next look
        drop(held);
        let (second, _lock_a) = claims.next(&stop).unwrap().unwrap();
        assert_eq!(second, "a");
        run.write_result(&StudentResult::without_grades("c", Verdict::Graded, String::new())).unwrap();
        drop(lock_c);
        let seen: BTreeSet<String> = ["b".to_string()].into();
        let fresh: Vec<String> = run.new_results(&seen).unwrap().into_iter().map(|r| r.student).collect();
        assert_eq!(fresh, vec!["c"]);
        // a is held by this task's other worker: another claimer waits for it, until a stop
        stop.store(true, Ordering::SeqCst);
        let other = Claims::new(&run, &layout, run.queue().unwrap());
        assert!(other.next(&stop).unwrap().is_none());
    }
}

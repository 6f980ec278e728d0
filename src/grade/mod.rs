//! `isolate-grade ASSIGNMENT`: every submission of an assignment autograded by nbgrader, each
//! notebook in a sandboxed kernel, several submissions at a time, resumably.
//!
//! This process needs no privilege and keeps none: it becomes the caller first thing. It
//! checks and copies each submission ([`crate::submission::stage`]), hands it to one of
//! `--jobs` long-lived Python workers that import nbgrader once ([`worker`]), and records each
//! graded student atomically ([`course`]). Kernels are started by nbgrader through a
//! kernelspec we write, `isolate-grade kernel ...`, which is where the privilege is taken
//! again (setuid, sudo or root) and the sandbox made.
//!
//! Threads: one per worker plus indicatif's ticker. Nothing here forks except through
//! `std::process::Command` (fork + exec, with only `prctl` in between).

pub mod course;
pub mod progress;
pub mod protocol;
pub mod report;
pub mod shared;
pub mod slurm;
pub mod worker;

use crate::cli::GradeArgs;
use crate::identity::{Caller, IdentityError};
use crate::kernelspec::{KernelspecError, Launcher, Maker};
use crate::report::Status;
use crate::submission::{self, TreeLimits};
use crate::units;
use course::{CourseError, Layout};
use nix::fcntl::Flock;
use report::{BatchReport, NotebookResult, NotebookVerdict, ReportError, Results, StudentResult, Verdict};
pub use shared::task;
use std::collections::VecDeque;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};
use worker::{Ready, Worker, WorkerError};

/// How `isolate-grade ASSIGNMENT` ends: every exit status it has, defined here only (README:
/// "Exit codes"; the two every command shares from [`crate::exit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradeExit {
    /// Every student selected was graded.
    AllGraded,
    /// Some students were not graded because of their submissions (rejected, killed, errors).
    NotAllGraded,
    /// A bad request: options, course layout, a refused sandbox request, a worker that cannot
    /// start on this assignment.
    Usage,
    /// A sandbox or grader fault: some students could not be graded through no fault of theirs.
    Fault,
    /// Stopped by SIGINT, SIGTERM or SIGHUP; what was graded stays graded.
    Interrupted,
}

/// The usage status every command shares (the one place this module names it).
const USAGE: u8 = crate::exit::USAGE;

impl GradeExit {
    pub fn code(self) -> u8 {
        match self {
            GradeExit::AllGraded => 0,
            GradeExit::NotAllGraded => 1,
            GradeExit::Usage => USAGE,
            GradeExit::Fault => crate::exit::FAULT,
            GradeExit::Interrupted => 130,
        }
    }

    /// The end of a batch that ran: interrupted, else the worst of its students' verdicts.
    fn of(verdicts: &[Verdict], interrupted: bool) -> GradeExit {
        if interrupted {
            GradeExit::Interrupted
        } else if verdicts.iter().any(|v| v.is_fault()) {
            GradeExit::Fault
        } else if verdicts.iter().any(|v| !v.is_graded()) {
            GradeExit::NotAllGraded
        } else {
            GradeExit::AllGraded
        }
    }
}

/// The batch's twins, in `.isolate-grade/<assignment>/jupyter/kernels`: this + kernel name.
pub const TWIN_PREFIX: &str = "isolate-grade-batch-";

#[derive(Debug, thiserror::Error)]
pub enum GradeError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Course(#[from] CourseError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot grade {assignment}: {source}")]
    Worker { assignment: String, source: WorkerError },
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the sandbox cannot run here, so nothing was graded:\n{0}")]
    Sandbox(String),
    /// The kernels' interpreter or the preflight kernel failed: nothing was graded.
    #[error("the sandboxed kernel cannot grade {assignment}, so nothing was graded:\n{message}")]
    Kernel { assignment: String, message: String },
    #[error("cannot watch for Ctrl-C, SIGTERM and SIGHUP (signalfd: {0}), so nothing was graded")]
    Signals(nix::errno::Errno),
    #[error(transparent)]
    Slurm(#[from] slurm::SlurmError),
    #[error(transparent)]
    Shared(#[from] shared::SharedError),
    /// The gradebook can't be reached (server down, login refused, driver missing): found by
    /// the first worker before any student was touched. The message never holds a password.
    #[error("cannot grade {assignment}, so nothing was graded: {message}")]
    Gradebook { assignment: String, message: String },
}

/// The kernelspec's launcher: its I/O faults stay I/O faults (exit 3); otherwise bad input
/// stays bad input, as `KernelspecError::exit_code` classifies it.
impl From<KernelspecError> for GradeError {
    fn from(e: KernelspecError) -> GradeError {
        match e {
            KernelspecError::Io { path, source } => GradeError::Io { path, source },
            e if e.exit_code() == USAGE => GradeError::Invalid(e.to_string()),
            e => GradeError::Sandbox(e.to_string()),
        }
    }
}

impl GradeError {
    pub fn exit(&self) -> GradeExit {
        match self {
            GradeError::Report(_)
            | GradeError::Io { .. }
            | GradeError::Sandbox(_)
            | GradeError::Kernel { .. }
            | GradeError::Signals(_)
            | GradeError::Gradebook { .. }
            | GradeError::Slurm(_)
            | GradeError::Shared(_) => GradeExit::Fault,
            GradeError::Identity(IdentityError::Credentials(_)) => GradeExit::Fault,
            _ => GradeExit::Usage,
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.exit().code()
    }
}

/// Everything the worker threads share.
struct Context {
    /// Workers' logs are `<logs>/<worker_log>-<i>.log`.
    worker_log: String,
    /// A shared batch's run directory, where each result is recorded while its claim is held.
    record: Option<shared::RunDir>,
    layout: Layout,
    python: PathBuf,
    setup: worker::Setup,
    student_timeout: Duration,
    limits: TreeLimits,
    worker_limits: worker::Limits,
    stop: AtomicBool,
}

/// The smallest `--worker-memory`: a worker with nbgrader imported is resident at about
/// 150 MB before it reads any submission.
const MIN_WORKER_MEMORY: u64 = 256 << 20;

/// The submission check's bounds and the workers' limits, from the options, validated.
fn batch_limits(a: &GradeArgs) -> Result<(TreeLimits, worker::Limits), GradeError> {
    let bad = |flag: &str, e: units::UnitError| GradeError::Invalid(format!("{flag}: {e}"));
    let notebook = submission::notebook_limits(&a.notebook).map_err(GradeError::Invalid)?;
    let memory = units::parse_size(&a.worker_memory).map_err(|e| bad("--worker-memory", e))?;
    if memory < MIN_WORKER_MEMORY {
        return Err(GradeError::Invalid(format!(
            "--worker-memory: {} is less than nbgrader itself needs (at least {})",
            units::format_size(memory),
            units::format_size(MIN_WORKER_MEMORY)
        )));
    }
    let cpu_time = units::parse_duration(&a.worker_cpu_time).map_err(|e| bad("--worker-cpu-time", e))?;
    Ok((TreeLimits { notebook, ..TreeLimits::default() }, worker::Limits { memory, cpu_time }))
}

/// `--slurm-tasks`' default.
const DEFAULT_SLURM_TASKS: usize = 4;

/// Workers per CPU when `--jobs` is not given. A worker spends much of a notebook waiting
/// (for its kernel to start and answer, for a cell that sleeps or runs into its timeout), and
/// with one worker per CPU the CPUs idle then (bench/README.md: the busy fraction and the
/// figures behind this number).
const JOBS_PER_CPU: usize = 4;

/// Memory counted per worker when `--jobs` is not given: nbgrader's (about 200 MB resident)
/// and room for its kernel (the default policy's limit is 1G).
const MEMORY_PER_JOB: u64 = 1536 << 20;

/// `--jobs`' default: JOBS_PER_CPU per CPU this process may use, but no more than the
/// available memory holds at MEMORY_PER_JOB each; at least one.
fn default_jobs(cpus: usize, mem_available: Option<u64>) -> usize {
    let by_cpu = cpus.max(1) * JOBS_PER_CPU;
    let by_memory = mem_available.map_or(by_cpu, |m| (m / MEMORY_PER_JOB) as usize);
    by_cpu.min(by_memory).max(1)
}

/// MemAvailable from /proc/meminfo, in bytes (None if unreadable).
fn mem_available(meminfo: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(meminfo).ok()?;
    let kb = text.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?;
    kb.trim().parse::<u64>().ok().map(|k| k << 10)
}

enum Event {
    Done(StudentResult),
    /// A worker could not start: nothing can be graded.
    Fatal(WorkerError),
}

/// `isolate-grade ASSIGNMENT`, phase by phase. Nothing is written to the course before the
/// lock, and nothing is graded before a sandbox and a kernel of each kind were seen to work.
pub fn execute(config: Option<PathBuf>, a: GradeArgs) -> Result<u8, GradeError> {
    // 1. The caller (privilege dropped for good, before any thread), the options validated,
    //    the course's layout and the students named found.
    let req = Request::new(config, a)?;
    // 2. The kernelspecs: nbgrader's Python and each kernel's runtime asked where they live, a
    //    sandbox started as the kernels will be, a twin made for each kernel the notebooks use.
    let kernels = Kernels::make(&req)?;
    // Without it a Ctrl-C would do nothing (the signals stay blocked): refuse to start instead.
    let signals = stop_signals().map_err(GradeError::Signals)?;
    // 3. The course's batch lock: from here on this run owns the assignment's state.
    let _lock = req.layout.lock()?;
    // 4. Preflight: each twin written and a real kernel of it started as nbgrader will start
    //    it, loading what the notebooks use (else every student would get the same wrong verdict).
    let setup = kernels.install(&req)?;
    // 5. Who to grade: named students always; others unless graded before (or --force). Each
    //    student's result is kept as a compact row, and for --report the whole result spooled
    //    to a file: what the batch holds grows by a row per student, not by a result.
    let mut results = match &req.report_path {
        Some(_) => Results::spooled(&req.layout.state),
        None => Results::rows_only(),
    };
    results.reserve(req.listed.len());
    let selection = select(&req, &mut results);
    // 6. The pool of workers, waited for until the queue is empty, a worker cannot start or a
    //    signal stops the batch; with --slurm (or --external-tasks), the pools of tasks on
    //    other machines, whose results are read as they are recorded. Locally, the first
    //    worker is started before any student is claimed: it loads nbgrader and opens the
    //    gradebook (and takes its lock once), so a gradebook that can't be reached (its server
    //    down, a refused login, a missing driver) or refused stops the batch with every
    //    student as they were (a shared batch's own check worker does the same).
    let (a, tasks) = (&req.args, req.slurm_tasks);
    let ended = match (a.slurm, a.external_tasks) {
        (true, _) => {
            let starter = shared::Starter::Slurm { extra: &a.slurm_args, tasks };
            shared::grade_all(&req, &kernels, setup, selection, results, &signals, starter)?
        }
        (false, true) => {
            shared::grade_all(&req, &kernels, setup, selection, results, &signals, shared::Starter::External)?
        }
        (false, false) => {
            let first = first_worker(&req, &kernels, &setup, &selection)?;
            grade_all(&req, &kernels, setup, selection, first, results, &signals)?
        }
    };
    // 7. The report: the table, and with --report the JSON and CSV.
    let report = report_of(&req, ended.results, ended.started, &kernels.sandbox)?;
    // 8. With --feedback: the graded students' feedback, without the hidden tests.
    let verdicts: Vec<Verdict> = report.students.rows().iter().map(|r| r.verdict).collect();
    let mut feedback_failed = false;
    if req.args.feedback && !ended.interrupted {
        let report = req.report_path.as_ref().map(|p| p.with_extension("feedback.json"));
        let code = crate::feedback::run(&crate::feedback::Job {
            course: &req.layout.course,
            assignment: &req.args.assignment,
            students: &req.args.students,
            errors: req.args.feedback_errors,
            jobs: Some(req.jobs),
            force: false,
            report: report.as_deref(),
            python: Some(&kernels.maker.client.executable),
        })
        .map_err(|e| GradeError::Invalid(format!("--feedback: {e}")))?;
        feedback_failed = code != 0;
    }
    // 9. The exit status (a student whose feedback was not written counts as not graded).
    let code = GradeExit::of(&verdicts, ended.interrupted).code();
    Ok(if feedback_failed && code == 0 { 1 } else { code })
}

/// A batch as asked for, validated, by the caller (nothing privileged is left).
struct Request {
    config: Option<PathBuf>,
    sudo: bool,
    args: GradeArgs,
    jobs: usize,
    /// With --slurm: the job array's tasks.
    slurm_tasks: usize,
    student_timeout: Duration,
    limits: TreeLimits,
    worker_limits: worker::Limits,
    layout: Layout,
    /// Every student with a submission, and why it is refused, if it is.
    listed: Vec<(String, Option<String>)>,
    report_path: Option<PathBuf>,
    /// The kernels' policy (absolute when a path: the kernel starts in the submission).
    policy: String,
}

impl Request {
    fn new(config: Option<PathBuf>, a: GradeArgs) -> Result<Request, GradeError> {
        let caller = Caller::detect();
        caller.become_caller()?;
        let sudo = caller.via == crate::identity::Via::Sudo;
        if sudo {
            set_home(caller.uid);
        }
        let jobs = match &a.jobs {
            Some(j) => units::parse_count(j, 256).map_err(|e| GradeError::Invalid(format!("--jobs: {e}")))? as usize,
            None => default_jobs(
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                mem_available(Path::new("/proc/meminfo")),
            ),
        };
        let slurm_tasks = match &a.slurm_tasks {
            Some(n) => {
                units::parse_count(n, 10_000).map_err(|e| GradeError::Invalid(format!("--slurm-tasks: {e}")))? as usize
            }
            None => DEFAULT_SLURM_TASKS,
        };
        let student_timeout = units::parse_duration(&a.student_timeout)
            .map_err(|e| GradeError::Invalid(format!("--student-timeout: {e}")))?;
        let (limits, worker_limits) = batch_limits(&a)?;
        for s in &a.students {
            course::check_id("--student", s).map_err(GradeError::Invalid)?;
        }
        let layout = Layout::new(&a.course, &a.assignment)?;
        let listed = layout.students()?;
        let missing: Vec<&str> =
            a.students.iter().filter(|s| !listed.iter().any(|(n, _)| n == *s)).map(String::as_str).collect();
        if !missing.is_empty() {
            return Err(GradeError::Invalid(format!(
                "no submission of {} in {} for: {}",
                a.assignment,
                layout.course.join("submitted").display(),
                missing.join(", ")
            )));
        }
        let report_path = match &a.report {
            Some(p) if p.extension().is_some_and(|e| e == "csv") => {
                return Err(GradeError::Invalid("--report: give the JSON file's name; the CSV goes next to it".into()))
            }
            Some(p) => Some(std::path::absolute(p).map_err(|e| GradeError::Io { path: p.clone(), source: e })?),
            None => None,
        };
        let policy = if crate::policy::is_path(&a.policy) {
            let abs =
                std::path::absolute(&a.policy).map_err(|e| GradeError::Io { path: a.policy.clone().into(), source: e });
            abs?.display().to_string()
        } else {
            a.policy.clone()
        };
        Ok(Request {
            config,
            sudo,
            jobs,
            slurm_tasks,
            student_timeout,
            limits,
            worker_limits,
            layout,
            listed,
            report_path,
            policy,
            args: a,
        })
    }

    fn assignment(&self) -> &str {
        &self.args.assignment
    }

    fn kernel_fault(&self, message: String) -> GradeError {
        GradeError::Kernel { assignment: self.assignment().to_string(), message }
    }
}

/// The batch's kernels: made, not yet written.
struct Kernels {
    maker: Maker,
    /// The sandbox the preflight's run was given (its mode, what it does not enforce).
    sandbox: report::SandboxInfo,
    specs: Vec<crate::kernels::Spec>,
    routed: Vec<(PathBuf, String)>,
    twins: Vec<crate::kernels::Twin>,
}

impl Kernels {
    /// nbgrader's Python and each kernel's runtime, asked as the instructor where they live
    /// (nothing of the course may be among what they need); one sandbox run as the kernels
    /// will be; the twin of each kernel the assignment's notebooks name.
    fn make(req: &Request) -> Result<Kernels, GradeError> {
        let config = req.config.as_deref();
        let launcher = Launcher::new(req.sudo, config)?;
        let made = Maker::new(
            req.args.python.as_deref(),
            &req.policy,
            config,
            Some(&req.layout.course),
            launcher.kernel(Some(&req.policy)),
        );
        let maker = match made {
            Ok(m) => m,
            Err(e) if e.exit_code() == USAGE => return Err(e.into()),
            Err(e) => return Err(req.kernel_fault(e.to_string())),
        };
        let sandbox = preflight(&launcher, &req.policy)?;
        let notebooks = crate::kernelspec::read_notebooks(req.layout.source_notebooks());
        let BatchKernels { specs, chosen, routed } =
            batch_kernels(&maker, &notebooks).map_err(|m| req.kernel_fault(m))?;
        let mut twins = maker.twins(&chosen, TWIN_PREFIX).map_err(|e| req.kernel_fault(e.to_string()))?;
        for t in &mut twins {
            t.spec["metadata"]["isolate_grade"]["batch"] = serde_json::json!(req.assignment());
        }
        Ok(Kernels { maker, sandbox, specs, routed, twins })
    }

    /// Write the twins into the assignment's Jupyter path, each started once as nbgrader will
    /// start it; what the workers are told.
    fn install(&self, req: &Request) -> Result<worker::Setup, GradeError> {
        let layout = &req.layout;
        let jupyter = layout.jupyter_path();
        let python = &self.maker.client.executable;
        crate::kernelspec::install_twins(&self.twins, &jupyter.join("kernels"), Some(&jupyter), python, &self.routed)
            .map_err(|e| req.kernel_fault(e.to_string()))?;
        for t in &self.twins {
            tracing::info!(kernel = %t.wraps, twin = %t.name, binds = t.runtime.binds.len(), "sandboxed kernel");
            for note in &t.runtime.notes {
                tracing::info!(kernel = %t.wraps, note = %note, "kernel runtime");
            }
        }
        Ok(self.setup(req))
    }

    /// What the workers are told (a `--slurm` task's twins are the batch's, written already).
    fn setup(&self, req: &Request) -> worker::Setup {
        let layout = &req.layout;
        let jupyter = layout.jupyter_path();
        let (twins, languages) = crate::kernels::tables(&self.twins, &self.specs);
        worker::Setup {
            protocol: protocol::PROTOCOL,
            course: layout.course.clone(),
            assignment: req.assignment().to_string(),
            submitted: layout.staged_root_rel(),
            twins,
            languages,
            route: crate::kernels::ROUTE_PY.into(),
            jupyter_path: jupyter,
            lock: layout.gradebook_lock(),
            reports: layout.state.join("kernels"),
            on_kernel_death: req.args.on_kernel_death,
            max_restarts: req.args.max_restarts,
        }
    }
}

/// Who is graded this run, and who is not.
struct Selection {
    queue: VecDeque<String>,
    /// How many were graded by an earlier run (skipped: their results are recorded already).
    earlier: usize,
    /// Rejected now.
    rejected: Vec<StudentResult>,
}

/// Named students always; others unless graded before (or `--force`), whose earlier results
/// go to `results` as they are read; a submission the tree check refused is rejected here.
fn select(req: &Request, results: &mut Results) -> Selection {
    let a = &req.args;
    let mut s = Selection { queue: VecDeque::new(), earlier: 0, rejected: vec![] };
    for (student, problem) in &req.listed {
        if !a.students.is_empty() && !a.students.contains(student) {
            continue;
        }
        if let Some(p) = problem {
            s.rejected.push(StudentResult::without_grades(student, Verdict::Rejected, p.clone()));
            continue;
        }
        let named = a.students.contains(student);
        match req.layout.graded_before(student) {
            Some(mut earlier) if !named && !a.force => {
                earlier.from_earlier_run = true;
                results.push(earlier);
                s.earlier += 1;
            }
            _ => s.queue.push_back(student.clone()),
        }
    }
    s
}

/// Worker 0, started and ready, when there is anyone to grade.
fn first_worker(
    req: &Request,
    kernels: &Kernels,
    setup: &worker::Setup,
    selection: &Selection,
) -> Result<Option<(Worker, Ready)>, GradeError> {
    if selection.queue.is_empty() {
        return Ok(None);
    }
    let assignment = req.assignment().to_string();
    match Worker::start(&kernels.maker.client.executable, setup, &req.layout.log("worker-0")) {
        Ok(w) => Ok(Some(w)),
        Err(WorkerError::Gradebook(message)) => Err(GradeError::Gradebook { assignment, message }),
        Err(source) => Err(GradeError::Worker { assignment, source }),
    }
}

/// What the pool did.
struct Ended {
    results: Results,
    started: (Instant, String),
    interrupted: bool,
}

/// The progress line, begun: the students rejected before grading counted as finished.
fn begin(
    req: &Request,
    to_grade: usize,
    earlier: usize,
    rejected: Vec<StudentResult>,
    results: &mut Results,
) -> progress::Progress {
    let mut progress = progress::Progress::new(to_grade + rejected.len(), std::io::stderr().is_terminal());
    if earlier > 0 {
        progress.note(&format!("{earlier} students already graded (skipped; --force regrades them)"));
    }
    for r in rejected {
        progress.finished(&r);
        results.push(r);
    }
    tracing::info!(assignment = %req.assignment(), to_grade, jobs = req.jobs, "grading");
    progress
}

fn now() -> (Instant, String) {
    (Instant::now(), humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string())
}

impl Context {
    fn new(
        req: &Request,
        kernels: &Kernels,
        setup: worker::Setup,
        worker_log: String,
        record: Option<shared::RunDir>,
    ) -> Context {
        Context {
            worker_log,
            record,
            setup,
            layout: req.layout.clone(),
            python: kernels.maker.client.executable.clone(),
            student_timeout: req.student_timeout,
            limits: req.limits,
            worker_limits: req.worker_limits,
            stop: AtomicBool::new(false),
        }
    }
}

/// Where the workers take their students from.
enum Source<'a> {
    /// The local batch's own queue.
    Local(Mutex<VecDeque<String>>),
    /// A shared batch's queue, shared with the other tasks by claims.
    Shared(shared::Claims<'a>),
}

impl Source<'_> {
    /// The next student, with the claim that holds it if it is shared; `None` when there is
    /// none left for this process.
    fn next(&self, stop: &AtomicBool) -> Option<(String, Option<Flock<File>>)> {
        match self {
            Source::Local(q) => q.lock().expect("not poisoned").pop_front().map(|s| (s, None)),
            Source::Shared(claims) => match claims.next(stop) {
                Ok(next) => next.map(|(s, lock)| (s, Some(lock))),
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim a student: this task takes no more");
                    None
                }
            },
        }
    }

    /// A student taken but not graded (no worker could start): back to the front of a local
    /// queue; a shared one's claim is simply released.
    fn give_back(&self, student: String) {
        if let Source::Local(q) = self {
            q.lock().expect("not poisoned").push_front(student);
        }
    }

    /// What no worker took (a local queue's rest; a shared queue's rest is other tasks').
    fn rest(self) -> Vec<String> {
        match self {
            Source::Local(q) => q.into_inner().expect("not poisoned").into(),
            Source::Shared(_) => vec![],
        }
    }
}

/// `--jobs` worker threads, each with its own Python worker, take students from the queue;
/// this thread collects their results and watches for a stop signal.
fn grade_all(
    req: &Request,
    kernels: &Kernels,
    setup: worker::Setup,
    selection: Selection,
    mut first: Option<(Worker, Ready)>,
    mut results: Results,
    signals: &nix::sys::signalfd::SignalFd,
) -> Result<Ended, GradeError> {
    let started = now();
    let Selection { queue, earlier, rejected } = selection;
    let mut progress = begin(req, queue.len(), earlier, rejected, &mut results);
    let ctx = Context::new(req, kernels, setup, "worker".into(), None);
    let workers = req.jobs.min(queue.len());
    let source = Source::Local(Mutex::new(queue));
    let (fatal, interrupted) = pool(&ctx, &source, workers, first.take(), signals, &mut progress, &mut results);
    progress.finish();
    if let Some(e) = fatal {
        return Err(GradeError::Worker { assignment: req.assignment().to_string(), source: e });
    }
    for student in source.rest() {
        results.push(StudentResult::without_grades(&student, Verdict::Interrupted, "not started".into()));
    }
    Ok(Ended { results, started, interrupted })
}

/// `workers` threads, each with its own Python worker, grading from `source` until it is
/// empty, a worker cannot start or a signal stops them; the worker's fault and whether a
/// signal came.
fn pool(
    ctx: &Context,
    source: &Source,
    workers: usize,
    mut first: Option<(Worker, Ready)>,
    signals: &nix::sys::signalfd::SignalFd,
    progress: &mut progress::Progress,
    results: &mut Results,
) -> (Option<WorkerError>, bool) {
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for i in 0..workers {
            let tx = tx.clone();
            let started = first.take();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn_scoped(scope, move || work(i, ctx, started, source, &tx))
                .expect("spawn a thread");
        }
        drop(tx);
        wait(&rx, signals, &ctx.stop, progress, results)
    })
}

/// Collect the workers' results until they are all done; the first worker that cannot start,
/// or a stop signal, stops the others (what is being graded ends as it is). The worker's fault,
/// if one failed, and whether a signal came.
fn wait(
    rx: &mpsc::Receiver<Event>,
    signals: &nix::sys::signalfd::SignalFd,
    stop: &AtomicBool,
    progress: &mut progress::Progress,
    results: &mut Results,
) -> (Option<WorkerError>, bool) {
    let mut fatal = None;
    let mut interrupted = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Done(r)) => {
                progress.finished(&r);
                results.push(r);
            }
            Ok(Event::Fatal(e)) => {
                stop.store(true, Ordering::SeqCst);
                fatal.get_or_insert(e);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Ok(Some(sig)) = signals.read_signal() {
            if !interrupted {
                progress.note(&format!(
                    "isolate-grade: signal {}: stopping; graded students stay graded, a rerun does the rest",
                    crate::report::signal_name(sig.ssi_signo as i32)
                ));
            }
            interrupted = true;
            stop.store(true, Ordering::SeqCst);
        }
    }
    (fatal, interrupted)
}

/// The batch's report: printed as a table, and with `--report` written as JSON and CSV.
fn report_of(
    req: &Request,
    mut results: Results,
    (started, started_at): (Instant, String),
    sandbox: &report::SandboxInfo,
) -> Result<BatchReport, GradeError> {
    results.sort();
    let report = BatchReport {
        schema: report::SCHEMA,
        course: req.layout.course.display().to_string(),
        assignment: req.assignment().to_string(),
        started: started_at,
        wall: started.elapsed().as_secs_f64(),
        jobs: req.jobs,
        policy: req.args.policy.clone(),
        sandbox: Some(sandbox.clone()),
        counts: BatchReport::count(results.rows()),
        students: results,
    };
    // a line at a time, as it is made: the table is never whole in memory
    report.table_lines(|line| println!("{line}"));
    if let Some(p) = &req.report_path {
        let csv = report.write(p)?;
        println!("report: {} and {}", p.display(), csv.display());
    }
    Ok(report)
}

/// One worker thread: its own Python worker (`started`: worker 0, already started by the
/// local batch's preflight), students from the source until it is empty or the batch stops. In
/// a `--slurm` task each result is recorded in the run before its claim is released (the next
/// claimer then sees it graded).
fn work(i: usize, ctx: &Context, started: Option<(Worker, Ready)>, source: &Source, tx: &mpsc::Sender<Event>) {
    let mut worker = started;
    while !ctx.stop.load(Ordering::SeqCst) {
        let Some((student, claim)) = source.next(&ctx.stop) else { break };
        match grade_one(i, ctx, &mut worker, &student, claim.is_none()) {
            Ok(r) => {
                if let (Some(run), false) = (&ctx.record, r.verdict == Verdict::Interrupted) {
                    if let Err(e) = run.write_result(&r) {
                        tracing::error!(student = %student, error = %e, "cannot record the result: it is graded again");
                    }
                }
                drop(claim);
                let _ = tx.send(Event::Done(r));
            }
            Err(e) => {
                drop(claim);
                source.give_back(student);
                let _ = tx.send(Event::Fatal(e));
                break;
            }
        }
    }
}

/// Grade one student; `Err` only when no worker can be started at all.
fn grade_one(
    i: usize,
    ctx: &Context,
    slot: &mut Option<(Worker, Ready)>,
    student: &str,
    lock: bool,
) -> Result<StudentResult, WorkerError> {
    let started = Instant::now();
    let fault = |msg: String| {
        let mut r = StudentResult::without_grades(student, Verdict::SandboxError, msg);
        r.wall = started.elapsed().as_secs_f64();
        r
    };
    let l = &ctx.layout;
    // A formgrader click grading this student (src/route.py) finishes first (a --slurm
    // task's claim is this lock, taken already).
    let _graded_by_us = match lock.then(|| l.student_lock(student)).transpose() {
        Ok(lock) => lock,
        Err(e) => return Ok(fault(e.to_string())),
    };
    // Forget the earlier result first: from here on, a kill leaves this student ungraded.
    if let Err(e) = l.unmark(student) {
        return Ok(fault(e.to_string()));
    }
    let staged = l.staged_student(student);
    let checked = course::remove_tree(&staged)
        .and_then(|_| std::fs::create_dir(&staged).map_err(|e| CourseError::Io { path: staged.clone(), source: e }))
        .map_err(|e| e.to_string())
        .and_then(|_| {
            submission::stage(&l.submission(student), &staged.join(&l.assignment), ctx.limits)
                .map_err(|e| e.to_string())
        });
    let checked = match checked {
        Ok(c) => c,
        Err(e) => return Ok(fault(format!("copying the submission: {e}"))),
    };
    if !checked.ok() {
        let _ = course::remove_tree(&staged);
        let mut r =
            StudentResult::without_grades(student, Verdict::Rejected, submission::describe(&checked.problems, false));
        r.wall = started.elapsed().as_secs_f64();
        return Ok(r);
    }
    let timestamp = course::timestamp_in(&staged.join(&l.assignment));
    if let Err(e) = course::remove_tree(&l.kernel_reports(student)) {
        return Ok(fault(e.to_string()));
    }

    if slot.is_none() {
        let log = l.log(&format!("{}-{i}", ctx.worker_log));
        *slot = match Worker::start(&ctx.python, &ctx.setup, &log) {
            Ok(w) => Some(w),
            // lost since the preflight (its server went down): this student's fault verdict;
            // the next student tries again, and a rerun grades those it missed
            Err(WorkerError::Gradebook(m)) => return Ok(fault(m)),
            Err(e) => return Err(e),
        };
        tracing::debug!(worker = i, pid = slot.as_ref().map(|w| w.0.pid()), "worker ready");
    }
    let (w, ready) = slot.as_mut().expect("started");
    let notebooks = ready.notebooks.clone();
    let answer = w.grade(student, ctx.student_timeout, &ctx.worker_limits, &ctx.stop);
    let mut r = match answer {
        Ok(answer) => {
            // nbgrader's log quotes names and messages the student chose: escaped, as on a terminal
            let log = format!("{}{}", answer.log, answer.error.as_deref().unwrap_or_default());
            let _ = std::fs::write(l.log(student), crate::escape::text(&log));
            from_answer(l, &notebooks, answer)
        }
        Err(e) => {
            let (w, _) = slot.take().expect("started");
            w.kill();
            match e {
                _ if ctx.stop.load(Ordering::SeqCst) => {
                    StudentResult::without_grades(student, Verdict::Interrupted, "stopped while grading".into())
                }
                WorkerError::Timeout(t) => StudentResult::without_grades(
                    student,
                    Verdict::Timeout,
                    format!("not graded within --student-timeout ({}s)", t.as_secs()),
                ),
                WorkerError::OverLimit(over) => {
                    StudentResult::without_grades(student, Verdict::Error, over.to_string())
                }
                e => fault(e.to_string()),
            }
        }
    };
    // A worker grown past half its limit between submissions (nbgrader may keep things) is
    // replaced, so that no student is blamed for what others left.
    let grown = slot.as_ref().and_then(|(w, _)| worker::Usage::read(std::path::Path::new("/proc"), w.pid()));
    if grown.is_some_and(|u| u.rss > ctx.worker_limits.memory / 2) {
        tracing::info!(worker = i, rss = grown.map(|u| u.rss), "replacing a grown grading worker");
        drop(slot.take());
    }
    r.wall = started.elapsed().as_secs_f64();
    r.submission_timestamp = timestamp;
    if r.verdict.is_graded() {
        if let Err(e) = l.mark(&r) {
            return Ok(fault(format!("recording the grade: {e}")));
        }
    }
    let _ = course::remove_tree(&staged);
    Ok(r)
}

/// The student's result from nbgrader's answer and the kernels' reports.
fn from_answer(l: &Layout, notebooks: &[String], a: worker::Answer) -> StudentResult {
    let mut nbs = Vec::new();
    for name in notebooks {
        let mut nb = NotebookResult { notebook: name.clone(), ..Default::default() };
        if let Some(s) = a.notebooks.as_ref().and_then(|m| m.get(name)) {
            nb.score = Some(s.score);
            nb.max_score = Some(s.max_score);
            nb.needs_manual_grade = s.needs_manual_grade;
        }
        nb.wall = a.notebook_wall.get(name).copied();
        report::add_kernels(&mut nb, &report::kernel_reports(&kernel_report_files(l, &a, name)));
        nb.kernel_deaths = a.kernel_deaths.get(name).cloned().unwrap_or_default();
        nbs.push(nb);
    }
    let kernel_verdict = |nb: &NotebookResult| match nb.verdict {
        NotebookVerdict::Kernel(s) => Some(s),
        NotebookVerdict::NotRun => None,
    };
    let (verdict, message) = if a.success {
        (Verdict::Graded, None)
    } else if let Some(nb) = nbs.iter().find(|nb| kernel_verdict(nb) == Some(Status::SandboxError)) {
        (Verdict::SandboxError, Some(format!("{}: the sandboxed kernel failed (see its report)", nb.notebook)))
    } else if let Some((nb, st)) = nbs
        .iter()
        .filter_map(|nb| kernel_verdict(nb).map(|s| (nb, s)))
        .find(|(_, s)| !matches!(s, Status::Ok | Status::OutputLimit))
    {
        (Verdict::Kernel(st), Some(format!("{}: its kernel ended with {}", nb.notebook, st.as_str())))
    } else {
        match failure_message(&a, &l.log(&a.student)) {
            (Cause::Submission, message) => (Verdict::Error, Some(message)),
            (Cause::Grader, message) => (Verdict::SandboxError, Some(message)),
        }
    };
    let graded = verdict.is_graded();
    let sum = |f: fn(&NotebookResult) -> Option<f64>| -> Option<f64> {
        graded.then(|| nbs.iter().filter_map(f).sum::<f64>())
    };
    StudentResult {
        student: a.student.clone(),
        verdict,
        score: sum(|n| n.score),
        max_score: sum(|n| n.max_score),
        seconds_late: a.seconds_late,
        wall: a.wall,
        message,
        notebooks: nbs,
        submission_timestamp: None,
        from_earlier_run: false,
    }
}

/// The report files the worker named for a notebook's kernels: only those in the student's
/// own reports directory for that notebook (where the worker told the kernels to write).
fn kernel_report_files(l: &Layout, a: &worker::Answer, notebook: &str) -> Vec<PathBuf> {
    let dir = l.kernel_reports(&a.student).join(notebook);
    let named = a.kernel_reports.get(notebook).map(Vec::as_slice).unwrap_or_default();
    named.iter().filter(|f| f.parent() == Some(dir.as_path())).cloned().collect()
}

/// Who made nbgrader fail on a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The submission: the student's `error` (the default: nbgrader only reads what the
    /// student sent, checked and copied, and the course the instructor set up).
    Submission,
    /// This tool or the host, positively: a step of the worker's own, the gradebook's
    /// database, the disk. A fault (exit 3).
    Grader,
}

/// How many characters of an exception's summary a message quotes.
const SUMMARY_CHARS: usize = 200;

/// Classify nbgrader's failure. Only what is positively ours or the host's is a fault.
pub fn classify(f: &worker::Failure) -> Cause {
    use nix::errno::Errno;
    let host_errno = f.errno.is_some_and(|e| {
        [Errno::ENOSPC, Errno::EDQUOT, Errno::EIO, Errno::EROFS, Errno::ENOMEM].contains(&Errno::from_raw(e))
    });
    if f.ours || host_errno || f.kind.starts_with("sqlalchemy.exc.") {
        Cause::Grader
    } else {
        Cause::Submission
    }
}

/// One short line for a failure: the notebook, the exception's type and the start of its
/// message (never nbgrader's log: it quotes the notebook, hidden tests included), and where
/// the instructor finds the rest.
fn failure_message(a: &worker::Answer, log: &std::path::Path) -> (Cause, String) {
    let fallback;
    let f = match &a.failure {
        Some(f) => f,
        None => {
            // No step raised (nbgrader failed before or after them): the exception that left
            // nbgrader, from the traceback's last line.
            let last = a.error.as_deref().and_then(|e| e.lines().rev().find(|l| !l.trim().is_empty()));
            let (kind, summary) = last.and_then(|l| l.trim().split_once(": ")).unwrap_or(("nbgrader failed", ""));
            fallback = worker::Failure { kind: kind.into(), summary: summary.into(), ..Default::default() };
            &fallback
        }
    };
    // Validation errors quote the offending part of the notebook (a cell, its source) as a
    // Python mapping: the message stops where the quote begins.
    let first = f.summary.lines().next().unwrap_or("");
    let quote = ["{'", "{\"", "['", "[\""].iter().filter_map(|q| first.find(q)).min();
    let first = quote.map_or(first, |at| first[..at].trim_end_matches([' ', ':']));
    let mut summary: String = first.chars().take(SUMMARY_CHARS).collect();
    if summary.chars().count() == SUMMARY_CHARS {
        summary.push('…');
    }
    let what = if summary.is_empty() { f.kind.clone() } else { format!("{}: {summary}", f.kind) };
    let at = f.notebook.as_deref().map(|n| format!("{n}: ")).unwrap_or_default();
    (classify(f), format!("{at}{what} (nbgrader's log: {})", log.display()))
}

/// The kernels of a batch.
struct BatchKernels {
    /// Every kernelspec found (twins included, and `python3` as jupyter_client would start it).
    specs: Vec<crate::kernels::Spec>,
    /// Those the notebooks need (`python3` when there are no source notebooks to read).
    chosen: Vec<crate::kernels::Spec>,
    /// Each source notebook and the kernel it is routed to.
    routed: Vec<(PathBuf, String)>,
}

/// The kernels the notebooks need, or why a notebook could not be graded by any.
fn batch_kernels(maker: &Maker, notebooks: &[(PathBuf, serde_json::Value)]) -> Result<BatchKernels, String> {
    let mut specs = maker.specs().map_err(|e| e.to_string())?;
    if !specs.iter().any(|s| s.name == "python3" && !s.is_twin()) {
        // as jupyter_client would start it, so that its twin says what is missing (ipykernel)
        specs.push(crate::kernels::native_python3(&maker.client));
    }
    let mut needed: Vec<String> = Vec::new();
    let mut routed = Vec::new();
    for (path, nb) in notebooks {
        let k = crate::kernels::route(nb, &specs).map_err(|why| {
            let have: Vec<&str> = specs.iter().filter(|s| !s.is_twin()).map(|s| s.name.as_str()).collect();
            format!(
                "{} can't be graded: {why} (kernelspecs here: {}). Install its kernel, or fix the notebook's \
                 metadata (kernelspec, language_info), then `nbgrader generate_assignment` again",
                path.display(),
                have.join(", ")
            )
        })?;
        if !needed.contains(&k) {
            needed.push(k.clone());
        }
        routed.push((path.clone(), k));
    }
    if needed.is_empty() {
        needed.push("python3".into());
    }
    let chosen = needed.iter().filter_map(|k| specs.iter().find(|s| s.name == *k && !s.is_twin()).cloned()).collect();
    Ok(BatchKernels { specs, chosen, routed })
}

/// Fail closed before touching anything: one sandbox, started the way the kernels will be
/// (same privilege, config and policy), must run `/bin/true`.
fn preflight(launcher: &Launcher, policy: &str) -> Result<report::SandboxInfo, GradeError> {
    let head = &launcher.head;
    // its report says which sandbox the kernels will get (privileged or rootless) and what
    // of the policy it can't enforce; the file is ours, and `run` writes it as us
    let report =
        tempfile::NamedTempFile::new().map_err(|e| GradeError::Io { path: std::env::temp_dir(), source: e })?;
    let out = std::process::Command::new(&head[0])
        .args(&head[1..])
        .args(["run", "--policy", policy, "--report"])
        .arg(report.path())
        .args(["--", "/bin/true"])
        .env_remove("ISOLATE_GRADE_REPORT")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| GradeError::Io { path: PathBuf::from(&head[0]), source: e })?;
    let cmd = || format!("{} run --policy {policy} -- /bin/true", head.join(" "));
    if out.status.success() {
        let read = std::fs::read_to_string(report.path())
            .map_err(|e| GradeError::Io { path: report.path().into(), source: e })?;
        let seen: serde_json::Value = serde_json::from_str(&read).unwrap_or_default();
        let sandbox = &seen["sandbox"];
        // (`not_enforced` is left out when empty)
        let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
            match v {
                serde_json::Value::Null => Some(vec![]),
                v => v.as_array()?.iter().map(|s| s.as_str().map(String::from)).collect(),
            }
        };
        return match (sandbox["mode"].as_str(), strings(&sandbox["not_enforced"])) {
            (Some(mode), Some(not_enforced)) => Ok(report::SandboxInfo { mode: mode.to_string(), not_enforced }),
            _ => Err(GradeError::Sandbox(format!("`{}`: its report does not say which sandbox ran: {read}", cmd()))),
        };
    }
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.code() == Some(i32::from(USAGE)) {
        // the request was refused: a bad --policy or config, or a caller not allowed
        return Err(GradeError::Invalid(text.strip_prefix("isolate-grade: ").unwrap_or(&text).to_string()));
    }
    Err(GradeError::Sandbox(format!("`{}` failed ({}): {text}", cmd(), out.status)))
}

/// SIGINT, SIGTERM and SIGHUP (blocked since `main`) as a file descriptor we poll.
fn stop_signals() -> nix::Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Under sudo, HOME and friends are root's: nbgrader, Jupyter and the kernels' interpreter
/// (whose user site is found through HOME) should see the instructor's.
pub(crate) fn set_home(uid: u32) {
    if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        // Before any thread exists (set_var races with readers in other threads).
        std::env::set_var("HOME", &u.dir);
        std::env::set_var("USER", &u.name);
        std::env::set_var("LOGNAME", &u.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_jobs_are_several_per_cpu_within_the_available_memory() {
        const G: u64 = 1 << 30;
        assert_eq!(default_jobs(2, Some(24 * G)), 2 * JOBS_PER_CPU);
        assert_eq!(default_jobs(64, Some(24 * G)), 16, "memory bounds a big machine");
        assert_eq!(default_jobs(2, Some(3 * G)), 2);
        assert_eq!(default_jobs(2, Some(G)), 1, "at least one");
        assert_eq!(default_jobs(0, None), JOBS_PER_CPU);
        let d = tempfile::tempdir().unwrap();
        let meminfo = d.path().join("meminfo");
        std::fs::write(&meminfo, "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20971520 kB\n").unwrap();
        assert_eq!(mem_available(&meminfo), Some(20 * G));
        std::fs::write(&meminfo, "MemTotal:       24000000 kB\n").unwrap();
        assert_eq!(mem_available(&meminfo), None);
    }

    fn answer(failure: Option<worker::Failure>, error: &str) -> worker::Answer {
        worker::Answer {
            student: "s".into(),
            success: false,
            wall: 0.0,
            notebook_wall: Default::default(),
            log: "[DEBUG] hidden test: assert answer() == 42\n".into(),
            error: Some(error.into()),
            notebooks: None,
            seconds_late: None,
            failure,
            kernel_reports: Default::default(),
            kernel_deaths: Default::default(),
        }
    }

    fn failed(kind: &str, errno: Option<i32>, ours: bool) -> worker::Failure {
        worker::Failure { kind: kind.into(), errno, ours, ..Default::default() }
    }

    #[test]
    fn failures_are_the_students_unless_positively_ours() {
        // whatever nbgrader raises on a submission is the submission's
        for kind in [
            "nbformat.reader.NotJSONError",
            "UnicodeDecodeError",
            "RecursionError",
            "MemoryError",
            "KeyError",
            "nbgrader.preprocessors.execute.UnresponsiveKernelError",
            "nbclient.exceptions.DeadKernelError",
            "jsonschema.exceptions.ValidationError",
            "nbgrader.converters.base.NbGraderException",
        ] {
            assert_eq!(classify(&failed(kind, None, false)), Cause::Submission, "{kind}");
        }
        assert_eq!(classify(&failed("FileNotFoundError", Some(libc::ENOENT), false)), Cause::Submission);
        // ours: the worker's own steps, the gradebook, the disk
        assert_eq!(classify(&failed("PermissionError", Some(libc::EACCES), true)), Cause::Grader);
        assert_eq!(classify(&failed("sqlalchemy.exc.OperationalError", None, false)), Cause::Grader);
        assert_eq!(classify(&failed("OSError", Some(libc::ENOSPC), false)), Cause::Grader);
    }

    #[test]
    fn a_failure_is_one_short_line_that_never_quotes_the_log_or_the_notebook() {
        let log = std::path::Path::new("/c/.isolate-grade/ps1/logs/s.log");
        let f = worker::Failure {
            kind: "nbclient.exceptions.CellExecutionError".into(),
            notebook: Some("problem1".into()),
            summary: format!("An error occurred while executing the following cell:\n{}", "x".repeat(5000)),
            ..Default::default()
        };
        let (cause, m) = failure_message(&answer(Some(f), ""), log);
        assert_eq!(cause, Cause::Submission);
        assert_eq!(
            m,
            "problem1: nbclient.exceptions.CellExecutionError: An error occurred while executing the following \
             cell: (nbgrader's log: /c/.isolate-grade/ps1/logs/s.log)"
        );
        let long = worker::Failure { kind: "KeyError".into(), summary: "y".repeat(1000), ..Default::default() };
        let (_, m) = failure_message(&answer(Some(long), ""), log);
        assert!(m.len() < 300 && m.contains('…'), "{m}");
        // no step raised: the traceback's last line, not the log
        let tb = "Traceback (most recent call last):\n  File \"x\", line 1\n    assert answer() == 42\n\
                  nbgrader.converters.base.NbGraderException: Please see the above traceback\n";
        let (cause, m) = failure_message(&answer(None, tb), log);
        assert_eq!(cause, Cause::Submission);
        assert!(m.starts_with("nbgrader.converters.base.NbGraderException: Please see the above traceback"), "{m}");
        assert!(!m.contains("assert answer()") && !m.contains("hidden"), "{m}");
        let (_, m) = failure_message(&answer(None, ""), log);
        assert!(m.starts_with("nbgrader failed (nbgrader's log:"), "{m}");
        // a validation error quotes the cell it rejects (found by trying hostile notebooks)
        let quoted = worker::Failure {
            kind: "nbformat.validator.NotebookValidationError".into(),
            notebook: Some("problem1".into()),
            summary: "{'cell_type': 'weird', 'source': 'assert answer() == 42'} is not valid under any schema".into(),
            ..Default::default()
        };
        let (cause, m) = failure_message(&answer(Some(quoted), ""), log);
        assert_eq!(cause, Cause::Submission);
        assert!(m.starts_with("problem1: nbformat.validator.NotebookValidationError (nbgrader's log:"), "{m}");
        let listed =
            worker::Failure { kind: "KeyError".into(), summary: "cells: ['assert x']".into(), ..Default::default() };
        assert!(failure_message(&answer(Some(listed), ""), log).1.starts_with("KeyError: cells ("));
        // an errno's brackets are not a quote
        let errno = worker::Failure {
            kind: "IsADirectoryError".into(),
            summary: "[Errno 21] Is a directory".into(),
            ..Default::default()
        };
        assert!(failure_message(&answer(Some(errno), ""), log)
            .1
            .starts_with("IsADirectoryError: [Errno 21] Is a directory ("));
    }

    #[test]
    fn exit_statuses_keep_their_numbers() {
        let codes =
            [GradeExit::AllGraded, GradeExit::NotAllGraded, GradeExit::Usage, GradeExit::Fault, GradeExit::Interrupted]
                .map(GradeExit::code);
        assert_eq!(codes, [0, 1, 2, 3, 130]);
        assert_eq!(GradeExit::of(&[Verdict::Graded], false), GradeExit::AllGraded);
        assert_eq!(GradeExit::of(&[Verdict::Graded, Verdict::Rejected], false), GradeExit::NotAllGraded);
        assert_eq!(GradeExit::of(&[Verdict::Rejected, Verdict::Kernel(Status::SandboxError)], false), GradeExit::Fault);
        assert_eq!(GradeExit::of(&[Verdict::SandboxError], true), GradeExit::Interrupted);
        // a gradebook that can't be reached is a fault; a worker that can't grade it, bad input
        let unreachable = GradeError::Gradebook { assignment: "ps1".into(), message: "down".into() };
        assert_eq!(unreachable.exit_code(), 3);
        let refused = GradeError::Worker { assignment: "ps1".into(), source: WorkerError::Fatal("mysql".into()) };
        assert_eq!(refused.exit_code(), 2);
    }

    #[test]
    fn a_notebooks_kernel_reports_are_the_files_the_worker_named_in_its_directory() {
        let l = Layout { course: "/c".into(), assignment: "ps1".into(), state: "/c/.isolate-grade/ps1".into() };
        let dir = l.kernel_reports("s").join("p1");
        let mut a = answer(None, "");
        a.kernel_reports.insert(
            "p1".into(),
            vec![dir.join("kernel-1.json"), dir.join("kernel-2.json"), "/etc/shadow".into(), dir.join("x/k.json")],
        );
        assert_eq!(kernel_report_files(&l, &a, "p1"), vec![dir.join("kernel-1.json"), dir.join("kernel-2.json")]);
        assert!(kernel_report_files(&l, &a, "p2").is_empty());
    }

    fn args(extra: &[&str]) -> GradeArgs {
        use clap::Parser;
        match crate::cli::Cli::try_parse_from(["isolate-grade", "grade", "ps1"].iter().chain(extra)).unwrap().command {
            crate::cli::Command::Grade(g) => g,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_bounds_and_worker_limits_are_validated() {
        let (tree, w) = batch_limits(&args(&[])).unwrap();
        assert_eq!(tree.notebook, submission::NotebookLimits::default());
        assert_eq!(tree.max_file, TreeLimits::default().max_file);
        assert_eq!(w, worker::Limits { memory: 2 << 30, cpu_time: Duration::from_secs(300) });
        let (tree, w) = batch_limits(&args(&[
            "--notebook-max-size=100M",
            "--notebook-max-cells=5000",
            "--notebook-max-outputs=1000000",
            "--notebook-max-depth=100",
            "--worker-memory=8G",
            "--worker-cpu-time=1h",
        ]))
        .unwrap();
        let want =
            submission::NotebookLimits { max_size: 100 << 20, max_cells: 5000, max_outputs: 1_000_000, max_depth: 100 };
        assert_eq!(tree.notebook, want);
        assert_eq!(w, worker::Limits { memory: 8 << 30, cpu_time: Duration::from_secs(3600) });
        for bad in [
            "--notebook-max-size=0",
            "--notebook-max-size=lots",
            "--notebook-max-cells=-1",
            "--notebook-max-outputs=1.5",
            "--notebook-max-depth=1000",
            "--worker-memory=100M",
            "--worker-memory=0",
            "--worker-cpu-time=0",
            "--worker-cpu-time=soon",
        ] {
            let e = batch_limits(&args(&[bad])).unwrap_err();
            let flag = bad.split('=').next().unwrap();
            assert!(e.to_string().starts_with(flag) && e.exit_code() == USAGE, "{bad}: {e}");
        }
    }
}

//! The command line (clap derive). Doc comments are the `--help` text; every flag has an
//! `ISOLATE_GRADE_*` environment twin.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;

/// `isolate-grade ASSIGNMENT` grades (see [`with_default_command`]); the subcommands are the
/// sandbox's other uses. An assignment named like a subcommand: `isolate-grade grade NAME`.
#[derive(Debug, Parser)]
#[command(
    name = "isolate-grade",
    version,
    about = "A secure sandbox for nbgrader's autograder",
    long_about = None,
    override_usage = "isolate-grade [OPTIONS] ASSIGNMENT   (same as: isolate-grade grade ASSIGNMENT)\n       isolate-grade [OPTIONS] <COMMAND>"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter for stderr (`error`, `warn`, `info`, `debug`, `trace`).
    #[arg(long, global = true, env = "ISOLATE_GRADE_LOG", default_value = "warn")]
    pub log: String,
    /// The system config (root only; others always get /etc/isolate-grade/config.toml).
    #[arg(long, global = true, env = "ISOLATE_GRADE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Grade every submission of an assignment (what `isolate-grade ASSIGNMENT` does).
    Grade(GradeArgs),
    /// Run one program in the sandbox and report how it ended.
    Run(RunArgs),
    /// Run a Jupyter kernel in the sandbox (used as a kernelspec's argv prefix).
    Kernel(KernelArgs),
    /// Install sandboxed twins of the kernelspecs, and make a course's nbgrader use them.
    Install(InstallArgs),
    /// Show what this host supports; exit non-zero if the sandbox cannot run here.
    Check(CheckArgs),
    /// Check one submission and copy what passed (what formgrader's path runs; JSON on stdout).
    Stage(StageArgs),
    /// Write nbgrader's feedback for graded students, without the hidden tests (issue #18).
    Feedback(FeedbackArgs),
    /// One task of a batch shared by several machines: started by `--slurm`'s job array, or by
    /// whatever runs the tasks of `--external-tasks` (a Kubernetes Job: deploy/kubernetes/).
    Task(TaskArgs),
}

/// `isolate-grade [GLOBAL OPTIONS] X ...` with X not a subcommand (an assignment, or a grading
/// option) means `isolate-grade [GLOBAL OPTIONS] grade X ...`: `grade` is inserted before X.
/// `cmd` is `Cli::command()`, built once by the caller, who then parses with it.
pub fn with_default_command(cmd: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let subcommands: Vec<String> =
        cmd.get_subcommands().map(|c| c.get_name().to_string()).chain(["help".to_string()]).collect();
    // global options, and whether each takes a value
    let globals: Vec<(String, bool)> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| (format!("--{l}"), a.get_action().takes_values())))
        .collect();
    let mut i = 1;
    while i < args.len() {
        let t = args[i].to_string_lossy();
        if let Some((_, takes)) = globals.iter().find(|(g, _)| *g == t) {
            i += 1 + usize::from(*takes);
            continue;
        }
        if globals.iter().any(|(g, _)| t.starts_with(&format!("{g}="))) {
            i += 1;
            continue;
        }
        if subcommands.iter().any(|s| *s == t) || ["-h", "--help", "-V", "--version"].contains(&t.as_ref()) {
            return args;
        }
        let mut out = args;
        out.insert(i, "grade".into());
        return out;
    }
    args
}

/// What every sandbox takes: the policy and the flags that adjust it.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Policy: a name (`default`, `strict`, or one in the config's policy_dir) or a .toml path.
    #[arg(long, env = "ISOLATE_GRADE_POLICY", default_value = "default")]
    pub policy: String,
    /// Make a host path visible: SRC[:DST][:ro|:rw] (read-only unless `:rw`). Repeatable.
    #[arg(long = "bind", value_name = "SRC[:DST][:ro|:rw]", env = "ISOLATE_GRADE_BIND")]
    pub binds: Vec<String>,
    /// Working directory inside the sandbox (default: the policy's).
    #[arg(long, env = "ISOLATE_GRADE_WORKDIR")]
    pub workdir: Option<String>,
    /// Memory limit, swap off (`512M`, `2G`).
    #[arg(long, env = "ISOLATE_GRADE_MEMORY")]
    pub memory: Option<String>,
    /// Total CPU time of all processes (`10s`, `1m`).
    #[arg(long, env = "ISOLATE_GRADE_CPU_TIME")]
    pub cpu_time: Option<String>,
    /// Wall-clock limit (`30s`).
    #[arg(long, env = "ISOLATE_GRADE_WALL_TIME")]
    pub wall_time: Option<String>,
    /// Maximum number of processes and threads.
    #[arg(long, env = "ISOLATE_GRADE_PIDS")]
    pub pids: Option<String>,
    /// CPU bandwidth in cores (`0.5`, `2`).
    #[arg(long, env = "ISOLATE_GRADE_CPU_QUOTA")]
    pub cpu_quota: Option<String>,
    /// Size of the private /tmp.
    #[arg(long, env = "ISOLATE_GRADE_TMP_SIZE")]
    pub tmp_size: Option<String>,
    /// Recreate the host's symlink PATH (read as the caller) at the same place inside, so a
    /// path through it resolves as outside (a venv's python into its base). Repeatable.
    #[arg(long = "link", value_name = "PATH", env = "ISOLATE_GRADE_LINK")]
    pub links: Vec<String>,
    /// Add to the environment: NAME=VALUE, or NAME to pass the caller's value. Repeatable.
    #[arg(long = "env", value_name = "NAME[=VALUE]", env = "ISOLATE_GRADE_ENV")]
    pub env: Vec<String>,
}

/// `isolate-grade ASSIGNMENT`: autograde every submission of an assignment with nbgrader, each
/// notebook in a sandboxed kernel, in parallel, resumably.
#[derive(Debug, Clone, Args, serde::Serialize, serde::Deserialize)]
pub struct GradeArgs {
    /// The assignment (nbgrader's name for it, as in `submitted/<student>/<assignment>`).
    pub assignment: String,
    /// The course directory (default: the current one, as for nbgrader).
    #[arg(long, env = "ISOLATE_GRADE_COURSE", default_value = ".")]
    pub course: PathBuf,
    /// Grade only this student (repeatable); they are regraded even if graded before.
    #[arg(long = "student", value_name = "ID")]
    pub students: Vec<String>,
    /// Submissions graded at once (default: 4 per CPU, at most one per 1.5 GiB of available
    /// memory).
    #[arg(long, env = "ISOLATE_GRADE_JOBS")]
    pub jobs: Option<String>,
    /// Regrade students already graded.
    #[arg(long)]
    pub force: bool,
    /// Write the report here as JSON, and as CSV next to it (`.csv`).
    #[arg(long, env = "ISOLATE_GRADE_REPORT")]
    pub report: Option<PathBuf>,
    /// The kernels' policy: a name or a .toml path (see `run --policy`).
    #[arg(long, env = "ISOLATE_GRADE_POLICY", default_value = "default")]
    pub policy: String,
    /// The Python with nbgrader and ipykernel (default: the one that runs `nbgrader`).
    #[arg(long, env = "ISOLATE_GRADE_PYTHON")]
    pub python: Option<PathBuf>,
    /// Give up on one student's submission after this long (`30m`); it is retried next time.
    #[arg(long, env = "ISOLATE_GRADE_STUDENT_TIMEOUT", default_value = "30m")]
    pub student_timeout: String,
    #[command(flatten)]
    pub notebook: NotebookLimitArgs,
    /// When a cell's code ends its kernel (a limit of the sandbox, a crash, an exit): `restart`
    /// marks the cell, starts a fresh sandboxed kernel, re-runs the cells before it that had
    /// succeeded and goes on, so the student keeps the points of every test that passes;
    /// `fail` fails the notebook, as nbgrader does. Default: the course's
    /// `c.IsolateGrade.on_kernel_death` in nbgrader_config.py, else `restart`.
    #[arg(long, value_enum, env = "ISOLATE_GRADE_ON_KERNEL_DEATH")]
    #[serde(default)]
    pub on_kernel_death: Option<crate::grade::protocol::OnKernelDeath>,
    /// With `restart`: at most this many fresh kernels per notebook (0 to 100); past them the
    /// cells left are marked not run. Default: the course's `c.IsolateGrade.max_kernel_restarts`,
    /// else 3.
    #[arg(long, env = "ISOLATE_GRADE_MAX_RESTARTS", value_parser = clap::value_parser!(u32).range(0..=100))]
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// Memory (resident) one grading worker, nbgrader itself, may use for one submission
    /// (`2G`); past it the worker is killed and the student gets `error`. Kernels are apart.
    #[arg(long, env = "ISOLATE_GRADE_WORKER_MEMORY", default_value = "2G")]
    pub worker_memory: String,
    /// CPU time one grading worker, nbgrader itself, may use for one submission (`5m`); past
    /// it the worker is killed and the student gets `error`. Kernels are apart.
    #[arg(long, env = "ISOLATE_GRADE_WORKER_CPU_TIME", default_value = "5m")]
    pub worker_cpu_time: String,
    /// Grade on a Slurm cluster: the students are shared by the tasks of one job array, each
    /// running this batch's workers on its node (the course on a filesystem every node sees at
    /// the same path, the gradebook in PostgreSQL). `--jobs` is then per task.
    #[arg(long, env = "ISOLATE_GRADE_SLURM")]
    pub slurm: bool,
    /// With --slurm: how many tasks the job array has (default: 4, at most one per student).
    #[arg(long, env = "ISOLATE_GRADE_SLURM_TASKS", requires = "slurm")]
    pub slurm_tasks: Option<String>,
    /// With --slurm: an option for sbatch (repeatable), e.g. `--slurm-arg=--partition=course`.
    #[arg(
        long = "slurm-arg",
        value_name = "ARG",
        allow_hyphen_values = true,
        requires = "slurm",
        env = "ISOLATE_GRADE_SLURM_ARG"
    )]
    pub slurm_args: Vec<String>,
    /// Grade with tasks that something else starts on other machines (a Kubernetes Job:
    /// deploy/kubernetes/grade-job.yaml): the run directory is printed, and each task runs
    /// `isolate-grade task RUN_DIR`; as --slurm otherwise (the gradebook in PostgreSQL).
    #[arg(long, env = "ISOLATE_GRADE_EXTERNAL_TASKS", conflicts_with = "slurm")]
    pub external_tasks: bool,
    /// Then write the graded students' feedback without the hidden tests, as `isolate-grade
    /// feedback` does (its report, with --report, next to the batch's: `NAME.feedback.json`).
    #[arg(long, env = "ISOLATE_GRADE_FEEDBACK")]
    #[serde(default)]
    pub feedback: bool,
    /// With --feedback: what a failed test's error shows (`full`, `message`, `none`); without
    /// it, unused (its environment twin is `isolate-grade feedback`'s too).
    #[arg(long = "feedback-errors", value_enum, env = "ISOLATE_GRADE_FEEDBACK_ERRORS", default_value_t = FeedbackErrors::Full)]
    #[serde(default)]
    pub feedback_errors: FeedbackErrors,
}

/// `isolate-grade feedback ASSIGNMENT`: nbgrader's generate_feedback for each graded student
/// (`autograded/<student>/<assignment>`), into `feedback/<student>/<assignment>/` where
/// `nbgrader release_feedback` finds it, with the hidden test regions and every trace of them
/// removed (src/feedback_redact.py); students in parallel, those whose feedback is up to date
/// skipped (nbgrader's own timestamps), so a second run resumes.
#[derive(Debug, Args)]
pub struct FeedbackArgs {
    /// The assignment (nbgrader's name for it).
    pub assignment: String,
    /// The course directory (default: the current one, as for nbgrader).
    #[arg(long, env = "ISOLATE_GRADE_COURSE", default_value = ".")]
    pub course: PathBuf,
    /// Only this student (repeatable); default: every student with an autograded submission.
    #[arg(long = "student", value_name = "ID")]
    pub students: Vec<String>,
    /// What a failed test's error shows: `full` (the frames of the visible code, and the error
    /// line), `message` (the error line), `none` (`failed`). A message that quotes the hidden
    /// tests is hidden in every mode.
    #[arg(long = "feedback-errors", value_enum, env = "ISOLATE_GRADE_FEEDBACK_ERRORS", default_value_t = FeedbackErrors::Full)]
    pub errors: FeedbackErrors,
    /// nbgrader processes at once (default: 4, at most one per student).
    #[arg(long, env = "ISOLATE_GRADE_JOBS")]
    pub jobs: Option<usize>,
    /// Write feedback again even where it is up to date.
    #[arg(long)]
    pub force: bool,
    /// Write the report (each student's outcome, each notebook's redaction counts) here as JSON.
    #[arg(long, env = "ISOLATE_GRADE_REPORT")]
    pub report: Option<PathBuf>,
    /// The Python with nbgrader (default: the one that runs `nbgrader`).
    #[arg(long, env = "ISOLATE_GRADE_PYTHON")]
    pub python: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedbackErrors {
    #[default]
    Full,
    Message,
    None,
}

impl FeedbackErrors {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackErrors::Full => "full",
            FeedbackErrors::Message => "message",
            FeedbackErrors::None => "none",
        }
    }
}

/// `isolate-grade task RUN_DIR`: take students from a shared batch's queue until none is left,
/// grading each as the local batch does, and record each result in the run directory.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The batch's run directory (on the shared filesystem), as the batch wrote it.
    pub run_dir: PathBuf,
    /// Only check that this node can grade (the course at the same path, the sandbox, nbgrader
    /// and the gradebook), then end.
    #[arg(long)]
    pub preflight: bool,
}

/// The bounds a submitted notebook is checked against before nbgrader reads it.
#[derive(Debug, Clone, Args, serde::Serialize, serde::Deserialize)]
pub struct NotebookLimitArgs {
    /// Refuse a submitted notebook larger than this, before nbgrader reads it (`32M`).
    #[arg(long, env = "ISOLATE_GRADE_NOTEBOOK_MAX_SIZE", default_value = "32M")]
    pub notebook_max_size: String,
    /// Refuse a submitted notebook of more cells than this.
    #[arg(long, env = "ISOLATE_GRADE_NOTEBOOK_MAX_CELLS", default_value = "2000")]
    pub notebook_max_cells: String,
    /// Refuse a submitted notebook of more outputs than this, all cells together.
    #[arg(long, env = "ISOLATE_GRADE_NOTEBOOK_MAX_OUTPUTS", default_value = "10000")]
    pub notebook_max_outputs: String,
    /// Refuse a submitted notebook whose JSON nests deeper than this (at most 120).
    #[arg(long, env = "ISOLATE_GRADE_NOTEBOOK_MAX_DEPTH", default_value = "64")]
    pub notebook_max_depth: String,
}

/// `isolate-grade stage`: check a submission and copy what passed, as the batch does before
/// nbgrader sees it. The block `install` writes runs it for formgrader and `nbgrader autograde`.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// The submission directory, relative to --course (`submitted/STUDENT/ASSIGNMENT`): no
    /// component beneath the course may be a symlink.
    pub submission: PathBuf,
    /// The course directory (trusted: the instructor's).
    #[arg(long, env = "ISOLATE_GRADE_COURSE", default_value = ".")]
    pub course: PathBuf,
    /// Where the checked copy goes: a directory that does not exist yet, in one that does.
    #[arg(long)]
    pub into: PathBuf,
    #[command(flatten)]
    pub notebook: NotebookLimitArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Write the JSON report here (`-` for stdout); opened as the caller.
    #[arg(long, env = "ISOLATE_GRADE_REPORT")]
    pub report: Option<PathBuf>,
    /// Stop the program once its stdout and stderr together pass this size (`output-limit`).
    #[arg(long, env = "ISOLATE_GRADE_OUTPUT_LIMIT", default_value = "64M")]
    pub output_limit: String,
    /// Hand the program this process's own stdin, stdout and stderr (a terminal included:
    /// it can then read what is typed there and write escape sequences to it). Default: pipes.
    #[arg(long)]
    pub tty: bool,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]...")]
    pub command: Vec<OsString>,
}

/// A Jupyter kernel in the sandbox: the `argv` prefix of a kernelspec. The kernel sees its
/// working directory (the submission, writable through a scratch that vanishes), its runtime,
/// and talks to the client through a relay of exactly its five ports.
#[derive(Debug, Args)]
pub struct KernelArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Cut a cell's output past this size and interrupt the cell (`output-limit`).
    #[arg(long, env = "ISOLATE_GRADE_OUTPUT_LIMIT", default_value = "16M")]
    pub output_limit: String,
    /// Size of the scratch that takes the kernel's writes to its working directory.
    #[arg(long, env = "ISOLATE_GRADE_SCRATCH_SIZE", default_value = "64M")]
    pub scratch_size: String,
    /// Leave the notebooks in the working directory visible (they carry the hidden tests).
    #[arg(long, env = "ISOLATE_GRADE_SHOW_NOTEBOOKS")]
    pub show_notebooks: bool,
    /// Write the kernel's verdict to DIR/<kernel-id>.json when it ends (opened as the caller).
    #[arg(long, env = "ISOLATE_GRADE_REPORT_DIR")]
    pub report_dir: Option<PathBuf>,
    /// Write the kernel's verdict to FILE when it ends (opened as the caller; replaces
    /// --report-dir).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The submission, the kernel's working directory inside (default: the current
    /// directory, which jupyter_client sets to the notebook's).
    #[arg(long, value_name = "DIR")]
    pub submission: Option<PathBuf>,
    /// The kernel's argv, with the connection file Jupyter substituted for {connection_file}.
    #[arg(last = true, required = true, value_name = "KERNEL ARGV")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The Python that runs `nbgrader` (default: the one on PATH): its Jupyter finds the
    /// kernelspecs, its `python3` kernel is itself, and the twins go into its prefix.
    #[arg(long, env = "ISOLATE_GRADE_PYTHON")]
    pub python: Option<PathBuf>,
    /// Add the block to this course's nbgrader_config.py (idempotently); without it, print it.
    #[arg(long, env = "ISOLATE_GRADE_COURSE")]
    pub course: Option<PathBuf>,
    /// Sandbox this kernelspec (repeatable; default: every kernelspec found).
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Sandbox every kernelspec found (the default, said explicitly).
    #[arg(long, conflicts_with = "kernels")]
    pub all_kernels: bool,
    /// The twin of kernelspec K is named PREFIX + K.
    #[arg(long, env = "ISOLATE_GRADE_TWIN_PREFIX", default_value = "isolate-grade-")]
    pub twin_prefix: String,
    /// The policy the kernel runs under.
    #[arg(long, env = "ISOLATE_GRADE_POLICY")]
    pub policy: Option<String>,
    /// Start it through `sudo -n` (for instructors allowed by a sudo rule).
    #[arg(long)]
    pub sudo: bool,
    /// The isolate-grade the kernelspecs start (default: this one, its real path): an
    /// absolute path to an executable of this same version, e.g. the installed copy.
    #[arg(long, env = "ISOLATE_GRADE_BINARY", value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Remove what install added instead: the twins named with --twin-prefix from nbgrader's
    /// Python, and with --course the block from the course's nbgrader_config.py.
    // (not in conflict with the flags that have an environment twin: one set for install
    // must not make uninstall fail)
    #[arg(long, conflicts_with_all = ["kernels", "all_kernels", "sudo"])]
    pub uninstall: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long, value_enum, default_value_t = Format::Text, env = "ISOLATE_GRADE_FORMAT")]
    pub format: Format,
    /// Also check that this interpreter can run a kernel in the sandbox: what is bound for it,
    /// and a real kernel started, handshaken and shut down (nothing is graded).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The policy the kernel is checked under (with --python).
    #[arg(long, default_value = "default")]
    pub policy: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_after_double_dash_belong_to_the_program() {
        let cli = Cli::try_parse_from([
            "isolate-grade",
            "run",
            "--memory",
            "1G",
            "--",
            "prog",
            "--memory",
            "9G",
            "; rm -rf /",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        assert_eq!(r.sandbox.memory.as_deref(), Some("1G"));
        assert_eq!(r.command, ["prog", "--memory", "9G", "; rm -rf /"].map(OsString::from));
        assert!(Cli::try_parse_from(["isolate-grade", "run", "--memory", "1G"]).is_err(), "a program is required");
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let argv = std::iter::once("isolate-grade").chain(args.iter().copied()).map(OsString::from).collect();
        Cli::try_parse_from(with_default_command(&Cli::command(), argv))
    }

    fn graded(args: &[&str]) -> GradeArgs {
        match parse(args).unwrap().command {
            Command::Grade(g) => g,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn an_assignment_is_graded_and_a_subcommand_name_needs_grade() {
        let g = graded(&["ps1", "--jobs", "3", "--student", "alice", "--student", "bob", "--force"]);
        assert_eq!(g.assignment, "ps1");
        assert_eq!(g.students, ["alice", "bob"]);
        assert_eq!(g.jobs.as_deref(), Some("3"));
        assert!(g.force);
        // options first work too, global ones included
        let g = graded(&["--log", "debug", "--course", "/c", "ps1"]);
        assert_eq!((g.course.to_str(), g.assignment.as_str()), (Some("/c"), "ps1"));
        let cli = parse(&["--config=/x.toml", "ps1"]).unwrap();
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("/x.toml")));
        // a subcommand's name is the subcommand, after global options too ...
        assert!(matches!(parse(&["check"]).unwrap().command, Command::Check(_)));
        assert!(matches!(
            parse(&["--config", "/x.toml", "--log", "info", "check"]).unwrap().command,
            Command::Check(_)
        ));
        let Command::Run(r) = parse(&["--config", "/x", "run", "--", "/bin/true"]).unwrap().command else { panic!() };
        assert_eq!(r.command, ["/bin/true"]);
        // ... and `grade` grades an assignment of any name, as does a grading option first
        for name in ["check", "run", "grade", "kernel", "install", "help"] {
            assert_eq!(graded(&["grade", name, "--jobs", "2"]).assignment, name);
            assert_eq!(graded(&["--jobs", "2", name]).assignment, name);
        }
        assert!(parse(&[]).is_err(), "an assignment or a command is required");
        assert!(parse(&["grade"]).is_err(), "grade needs an assignment");
        assert!(parse(&["--help"]).is_err(), "help is help (clap's error kind DisplayHelp)");
    }
}

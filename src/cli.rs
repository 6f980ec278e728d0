//! The command line (clap derive). Doc comments are the `--help` text; every flag has an
//! `ISOLATE_GRADE_*` environment twin.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "isolate-grade", version, about = "A secure sandbox for nbgrader's autograder", long_about = None)]
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
    /// Run one program in the sandbox and report how it ended.
    Run(RunArgs),
    /// Show what this host supports; exit non-zero if the sandbox cannot run here.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
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
    /// Add to the environment: NAME=VALUE, or NAME to pass the caller's value. Repeatable.
    #[arg(long = "env", value_name = "NAME[=VALUE]", env = "ISOLATE_GRADE_ENV")]
    pub env: Vec<String>,
    /// Write the JSON report here (`-` for stdout); opened as the caller.
    #[arg(long, env = "ISOLATE_GRADE_REPORT")]
    pub report: Option<PathBuf>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]...")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long, value_enum, default_value_t = Format::Text, env = "ISOLATE_GRADE_FORMAT")]
    pub format: Format,
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
        assert_eq!(r.memory.as_deref(), Some("1G"));
        assert_eq!(r.command, ["prog", "--memory", "9G", "; rm -rf /"].map(OsString::from));
        assert!(Cli::try_parse_from(["isolate-grade", "run", "--memory", "1G"]).is_err(), "a program is required");
    }
}

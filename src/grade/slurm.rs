//! `--slurm`: the tasks of a shared batch ([`super::shared`]) started as one Slurm job array,
//! after a preflight job on a node; Slurm asked whether they still run, and cancelled.
//!
//! Nothing here forks except through `std::process::Command` (sinfo, sbatch, squeue, scancel),
//! run as the caller (the batch holds no privilege).

use super::shared::RunDir;
use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("Slurm is not reachable from here ({command}: {message}), so nothing was graded")]
    Unreachable { command: String, message: String },
    #[error("sbatch refused the job ({message}), so nothing was graded")]
    Submit { message: String },
    #[error("the preflight job on a Slurm node failed, so nothing was graded:\n{0}")]
    Preflight(String),
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
    /// The batch was started through sudo: so is each task (`sudo -n`, the same rule on the
    /// nodes), which then makes its kernels' sandboxes as the local batch does.
    pub sudo: bool,
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
        let mut command = if self.sudo { vec!["sudo".to_string(), "-n".to_string()] } else { vec![] };
        command.push(sh_quote(&self.binary.display().to_string()));
        command.extend(["task".to_string(), sh_quote(&self.run.path.display().to_string())]);
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
            sudo: false,
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
        assert_eq!(a[wrap], "--wrap=exec '/usr/local/bin/isolate-grade' task '/srv/run'");
        let through_sudo = Submission { sudo: true, ..sub(&run, &[], false) }.args();
        assert_eq!(through_sudo.last().unwrap(), "--wrap=exec sudo -n '/usr/local/bin/isolate-grade' task '/srv/run'");
        let p = sub(&run, &[], true).args();
        assert!(!p.iter().any(|x| x.starts_with("--array")), "{p:?}");
        assert!(p.last().unwrap().ends_with(" --preflight"));
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}

//! `isolate-grade run`: validate the request (as the caller), then run it in a slot and
//! report. Everything up to the slot is the caller's input: a problem there is a usage error
//! (exit 2, nothing ran, nothing written). From the slot on, a failure is the sandbox's or the
//! host's: a `sandbox-error` report (exit 3).

use crate::cli::RunArgs;
use crate::exit::RunExit;
use crate::report::Report;
use crate::request::{Grounds, Input, Request, RequestError};
use crate::units;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("writing the report: {0}")]
    Report(std::io::Error),
    /// The host could not give what a request needs before the sandbox starts.
    #[error("sandbox error at {0}")]
    Host(crate::fault::Fault),
}

impl From<crate::identity::IdentityError> for RunError {
    fn from(e: crate::identity::IdentityError) -> RunError {
        RunError::Request(e.into())
    }
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Host(_) => RunExit::SandboxError.code(),
            _ => RunExit::Usage.code(),
        }
    }
}

enum Sink {
    Stdout,
    File(std::fs::File),
}

/// Run the request; returns the exit code that follows the report.
pub fn execute(config_override: Option<PathBuf>, a: RunArgs) -> Result<u8, RunError> {
    let grounds = Grounds::load(config_override.as_deref(), &a.sandbox)?;
    let stdio = stdio_spec(&a)?;
    let request = Request::new(grounds, &a.sandbox, &a.command, stdio, None)?;
    // Last of the caller's input: a request refused above must not create or truncate it.
    let sink = match &a.report {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Sink::Stdout),
        Some(p) => Some(Sink::File(request.caller.create_report(p)?)),
    };
    let report = crate::host::run(request);
    emit(&report, sink)?;
    Ok(report.end.exit().code())
}

/// `run`'s stdio: pipes, its stdin the caller's unless that is a terminal; `--tty` hands the
/// caller's fds over as they are.
fn stdio_spec(a: &RunArgs) -> Result<crate::stdio::Spec, RequestError> {
    use crate::stdio::{Escape, OnLimit, Piped, Spec, Stdin};
    if a.tty {
        return Ok(Spec::Inherit);
    }
    let output_limit = units::parse_size(&a.output_limit)
        .map_err(|e| RequestError::invalid(Input::Option("--output-limit"), e.to_string()))?;
    let stdin = if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        // What the instructor types is theirs: the program reads end-of-file.
        eprintln!("isolate-grade: stdin is a terminal; the program gets an empty stdin (--tty hands it the terminal)");
        Stdin::Empty
    } else {
        Stdin::Caller
    };
    Ok(Spec::Piped(Piped { stdin, output_limit, on_limit: OnLimit::Kill, escape: Escape::OnTerminal }))
}

fn emit(report: &Report, sink: Option<Sink>) -> Result<(), RunError> {
    let json = report.to_json() + "\n";
    match sink {
        Some(Sink::Stdout) => std::io::stdout().write_all(json.as_bytes()).map_err(RunError::Report)?,
        Some(Sink::File(mut f)) => f.write_all(json.as_bytes()).map_err(RunError::Report)?,
        None => {}
    }
    if let Some(e) = report.sandbox_error() {
        eprintln!("isolate-grade: sandbox error at {e}");
    } else if report.status() != crate::report::Status::Ok {
        eprintln!(
            "isolate-grade: {} after {:.2}s ({})",
            report.status().as_str(),
            report.wall_time.as_secs_f64(),
            match (&report.exit_code, &report.signal) {
                (Some(c), _) => format!("exit code {c}"),
                (_, Some(s)) => format!("killed by {s}"),
                _ => "no status".into(),
            }
        );
    }
    Ok(())
}

//! The kernel preflight: before `install` says it is done, before a batch grades anyone, and
//! for `check --python`, one kernel is started exactly as nbgrader will start it (the same
//! kernelspec, so the same policy and privilege path), completes a `kernel_info` handshake and
//! imports ipykernel and what the assignment's notebooks import, then is shut down
//! (`src/preflight.py`, run by the kernels' own interpreter as the caller). If anything fails,
//! the message says what was missing inside the sandbox and how to fix it.

use crate::kernels::Check;
use crate::runtime::Runtime;
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = include_str!("preflight.py");

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{python}: {source}")]
    Start { python: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the preflight ({python}) gave no answer: {detail}")]
    NoAnswer { python: PathBuf, detail: String },
    /// The kernel could not start, answer or import what the notebooks need.
    #[error("{0}")]
    Failed(String),
}

/// What to start and what it must import.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Request {
    pub kernel_name: String,
    /// A directory to put first on `JUPYTER_PATH` (the batch's private kernelspecs).
    pub jupyter_path: Option<PathBuf>,
    /// Notebooks whose top-level imports must work (the assignment's source notebooks);
    /// modules shipped beside them are the assignment's own, not the environment's.
    pub notebooks: Vec<PathBuf>,
    /// The kernelspec must be this one, not another of the same name earlier on the path.
    pub expect_resource_dir: Option<PathBuf>,
    /// The language the kernel must say it runs (`kernel_info`).
    pub language: String,
    /// What else to try in it.
    pub check: Check,
}

/// How long the kernel may take to answer `kernel_info`, and then to import the modules.
const TIMEOUT_SECONDS: f64 = 60.0;

#[derive(Debug, Deserialize)]
pub struct FailedImport {
    pub module: String,
    pub inside: String,
    pub outside: Option<String>,
    pub location: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Answer {
    pub ok: bool,
    pub stage: String,
    pub error: Option<String>,
    pub resource_dir: Option<String>,
    #[serde(default)]
    pub modules: Vec<String>,
    #[serde(default)]
    pub failed_imports: Vec<FailedImport>,
    #[serde(default)]
    pub kernel_reports: Vec<serde_json::Value>,
    #[serde(default)]
    pub stderr: String,
    pub seconds: f64,
}

/// Run the preflight with `python` (which must have jupyter_client: it has ipykernel).
pub fn run(python: &Path, req: &Request, runtime: &Runtime) -> Result<Answer, PreflightError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PreflightError::Io { path, source }
    };
    let tmp = std::env::temp_dir();
    let work = tempfile::Builder::new().prefix("isolate-grade-preflight.").tempdir_in(&tmp).map_err(io(&tmp))?;
    let cwd = work.path().join("cwd");
    let reports = work.path().join("reports");
    for d in [&cwd, &reports] {
        std::fs::create_dir(d).map_err(io(d))?;
    }
    let mut arg = serde_json::to_value(req).expect("serializes");
    arg["cwd"] = cwd.display().to_string().into();
    arg["report_dir"] = reports.display().to_string().into();
    arg["timeout"] = TIMEOUT_SECONDS.into();
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(arg.to_string())
        .current_dir(work.path())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| PreflightError::Start { python: python.into(), source })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer: Answer = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).ok_or_else(|| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        PreflightError::NoAnswer { python: python.into(), detail: crate::escape::text(tail(&stderr, 2000)) }
    })?;
    tracing::debug!(ok = answer.ok, stage = %answer.stage, seconds = answer.seconds, "kernel preflight");
    if answer.ok {
        Ok(answer)
    } else {
        Err(PreflightError::Failed(explain(req, &answer, runtime)))
    }
}

fn tail(s: &str, n: usize) -> &str {
    let t = s.trim_end();
    match t.char_indices().rev().nth(n) {
        Some((i, _)) => &t[i..],
        None => t,
    }
}

/// The failure in words: what happened, what the sandbox said, and what to do.
pub fn explain(req: &Request, a: &Answer, rt: &Runtime) -> String {
    let esc = crate::escape::text;
    let mut m = String::new();
    let spec = a.resource_dir.as_deref().unwrap_or("?");
    if !a.failed_imports.is_empty() {
        let (what, fix) = match &req.check {
            Check::R { r } => (
                "attach R packages",
                format!("install it (`install.packages(...)` with {}, or a Debian r-cran-* package)", r.display()),
            ),
            _ => ("import modules", format!("install it (`{} -m pip install ...`)", rt.executable.display())),
        };
        let _ = writeln!(m, "the notebooks {what} that the sandboxed kernel {:?} cannot load:", req.kernel_name);
        for f in &a.failed_imports {
            match &f.outside {
                None => {
                    let at = f.location.as_deref().map(|l| format!(" from {l}")).unwrap_or_default();
                    let _ = writeln!(
                        m,
                        "  - {}: loads outside the sandbox{at}, but not inside: {}. What it needs there is not \
                         visible in the sandbox: install it into the kernel's environment ({}), or bind the \
                         path its error names with a policy ([[bind]]), then run `isolate-grade install` again \
                         (a batch works it out on every run).",
                        esc(&f.module),
                        esc(&f.inside),
                        rt.executable.display()
                    );
                }
                Some(err) => {
                    let _ = writeln!(
                        m,
                        "  - {}: cannot be loaded outside the sandbox either: {}. Every notebook that needs it \
                         would fail, with bare nbgrader too: {fix}.",
                        esc(&f.module),
                        esc(err),
                    );
                }
            }
        }
    } else {
        let what = match a.stage.as_str() {
            "kernelspec" => "its kernelspec is not usable".to_string(),
            "start" => "the kernel could not be started".to_string(),
            "handshake" => "the kernel did not answer kernel_info (it died, or never came up)".to_string(),
            "imports" => "the kernel failed while loading what the notebooks use".to_string(),
            other => format!("the preflight failed ({other})"),
        };
        let _ = writeln!(m, "the sandboxed kernel {:?} ({spec}) cannot run: {what}", req.kernel_name);
        if let Some(e) = &a.error {
            let _ = writeln!(m, "  {}", esc(e));
        }
        for r in &a.kernel_reports {
            if let Some(fault) = r.get("sandbox_error").filter(|f| !f.is_null()) {
                let _ = writeln!(
                    m,
                    "  the sandbox said: step {}: {}",
                    fault.get("step").and_then(|s| s.as_str()).unwrap_or("?"),
                    esc(fault.get("message").and_then(|s| s.as_str()).unwrap_or("?"))
                );
            } else if let Some(st) = r.get("status").and_then(|s| s.as_str()).filter(|s| *s != "ok") {
                let _ = writeln!(m, "  the kernel ended with {st}");
            }
        }
        let stderr = a.stderr.trim();
        if !stderr.is_empty() {
            let _ = writeln!(m, "  what the kernel printed (last lines):");
            for l in tail(stderr, 1500).lines().rev().take(12).collect::<Vec<_>>().into_iter().rev() {
                let _ = writeln!(m, "    {}", esc(l));
            }
        }
    }
    let _ = writeln!(m, "  the kernel's program: {}", rt.executable.display());
    let binds: Vec<String> = rt.binds.iter().map(|b| b.display().to_string()).collect();
    let _ = writeln!(
        m,
        "  bound for it, read-only: {}",
        if binds.is_empty() { "nothing beyond the policy's".into() } else { binds.join(", ") }
    );
    if !rt.links.is_empty() {
        let links: Vec<String> = rt.links.iter().map(|b| b.display().to_string()).collect();
        let _ = writeln!(m, "  symlinks recreated: {}", links.join(", "));
    }
    let _ = write!(
        m,
        "  A policy can bind more ([[bind]] in policies/*.toml, or --bind in the kernelspec's argv); for a Python \
         kernel, `isolate-grade check --python {}` shows what the sandbox gets.",
        rt.executable.display()
    );
    m
}

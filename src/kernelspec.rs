//! Kernelspecs: the sandboxed twins of Jupyter kernels, made and checked the same way for
//! `isolate-grade install` (twins in nbgrader's Python's prefix, [`twin_home`]), for the batch
//! (`isolate-grade ASSIGNMENT`: private twins in the course's state directory) and for `check`.
//! [`Launcher`] is how a kernelspec starts this binary, [`Maker`] asks each kernel's runtime what
//! it needs ([`crate::kernels`]) and makes the twin, [`install_twins`] writes each and starts it
//! as nbgrader will ([`crate::preflight`]).

use crate::kernels::{self, KernelsError, Spec, Twin};
use crate::preflight::PreflightError;
use crate::python::{self, Probe, PythonError};
use crate::runtime::Context;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KernelspecError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Python(#[from] PythonError),
    #[error(transparent)]
    Kernels(#[from] Box<KernelsError>),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("nothing was installed, because {0}")]
    Preflight(#[from] PreflightError),
}

impl KernelspecError {
    /// 3 when a kernel can't run in the sandbox (as in a batch's preflight), 2 for bad input
    /// (a --python that does not run, a bad policy, an unknown --kernel).
    pub fn exit_code(&self) -> u8 {
        use PythonError as P;
        match self {
            KernelspecError::Invalid(_)
            | KernelspecError::Python(P::Start { .. } | P::NoNbgrader | P::NoShebang { .. }) => crate::exit::USAGE,
            _ => crate::exit::FAULT,
        }
    }
}

/// What making twins takes: nbgrader's Python (given, or the one that runs `nbgrader`), asked
/// where it lives; what must never be bound (the caller's home, the course) and what the
/// policy binds already; and the launcher, `[sudo -n] isolate-grade kernel [--policy P]`.
pub struct Maker {
    pub client: Probe,
    pub ctx: Context,
    pub launcher: Vec<String>,
}

impl Maker {
    pub fn new(
        python: Option<&Path>,
        policy: &str,
        config: Option<&Path>,
        course: Option<&Path>,
        launcher: Vec<String>,
    ) -> Result<Maker, KernelspecError> {
        let python = match python {
            // absolute, not resolved: a venv is known by the path its python is started through
            Some(p) => std::path::absolute(p).map_err(|source| KernelspecError::Io { path: p.into(), source })?,
            None => python::python_of_nbgrader()?,
        };
        let client = python::probe_kernel_python(&python, "jupyter_client")?;
        let policy = load_policy(policy, config)?;
        let path_var = policy.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()).unwrap_or_default();
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let ctx = Context {
            home: caller_home().map(|h| real(&h)),
            course: course.map(real),
            covered: policy.binds.iter().map(|b| b.target.clone()).collect(),
            policy_path: path_var,
        };
        Ok(Maker { client, ctx, launcher })
    }

    /// The kernelspecs nbgrader's Jupyter finds, twins included ([`Spec::is_twin`]).
    pub fn specs(&self) -> Result<Vec<Spec>, KernelspecError> {
        kernels::list(&self.client.executable).map_err(|e| KernelspecError::Kernels(Box::new(e)))
    }

    /// The kernelspec `name` names (`python` is `python3`). `python3` is found even when the
    /// interpreter has no ipykernel, as jupyter_client would start it, so that its twin fails
    /// saying what is missing.
    pub fn find(&self, specs: &[Spec], name: &str) -> Option<Spec> {
        let name = if name == "python" { "python3" } else { name };
        match specs.iter().find(|s| s.name == name && !s.is_twin()) {
            Some(s) => Some(s.clone()),
            None if name == "python3" => Some(kernels::native_python3(&self.client)),
            None => None,
        }
    }

    pub fn twin(&self, spec: &Spec, name: &str) -> Result<Twin, KernelspecError> {
        kernels::twin(spec, name, &self.launcher, &self.client, &self.ctx)
            .map_err(|e| KernelspecError::Kernels(Box::new(e)))
    }

    /// The twins of `specs`, named `prefix` + kernel name; every failure is named (exit 3, as
    /// a failed preflight: the runtimes are as they are).
    pub fn twins(&self, specs: &[Spec], prefix: &str) -> Result<Vec<Twin>, KernelspecError> {
        let mut twins = Vec::new();
        let mut failed = Vec::new();
        for spec in specs {
            match self.twin(spec, &format!("{prefix}{}", spec.name)) {
                Ok(t) => twins.push(t),
                Err(e) => failed.push(format!("- {e}")),
            }
        }
        if failed.is_empty() {
            return Ok(twins);
        }
        Err(KernelspecError::Preflight(PreflightError::Failed(format!(
            "these kernels can't be sandboxed:\n{}\n(fix them, or choose the kernels to sandbox with --kernel NAME)",
            failed.join("\n")
        ))))
    }
}

/// Write each twin into `dir/<name>` and start it as nbgrader will (with `jupyter_path` first
/// on `JUPYTER_PATH`), checking what the notebooks routed to it use (`routed`: each notebook
/// and the kernel [`kernels::route`] gave it). If any fails, every kernelspec written is put
/// back as it was.
pub fn install_twins(
    twins: &[Twin],
    dir: &Path,
    jupyter_path: Option<&Path>,
    client: &Path,
    routed: &[(PathBuf, String)],
) -> Result<(), KernelspecError> {
    let mut before = Vec::new();
    let mut result = Ok(());
    for t in twins {
        let spec_dir = dir.join(&t.name);
        before.push((spec_dir.clone(), std::fs::read(spec_dir.join("kernel.json")).ok()));
        if let Err(e) = write_kernelspec(&spec_dir, &t.spec) {
            result = Err(e);
            break;
        }
        let mine: Vec<PathBuf> = routed.iter().filter(|(_, k)| *k == t.wraps).map(|(p, _)| p.clone()).collect();
        let req = crate::preflight::Request {
            kernel_name: t.name.clone(),
            jupyter_path: jupyter_path.map(Path::to_path_buf),
            notebooks: mine,
            expect_resource_dir: Some(spec_dir),
            language: t.language.clone(),
            check: t.check.clone(),
        };
        if let Err(e) = crate::preflight::run(client, &req, &t.runtime) {
            result = Err(e.into());
            break;
        }
    }
    if result.is_err() {
        for (spec_dir, old) in before {
            match old {
                Some(old) => {
                    let _ = std::fs::write(spec_dir.join("kernel.json"), old);
                }
                None => {
                    let _ = std::fs::remove_dir_all(&spec_dir);
                }
            }
        }
    }
    result
}

/// The policy the kernels run under, read as `isolate-grade kernel --policy` will: a path, a
/// name in the system config's policy_dir, or a built-in one.
fn load_policy(spec: &str, config: Option<&Path>) -> Result<crate::policy::Policy, KernelspecError> {
    use crate::policy::{is_path, Policy};
    let bad = |e: crate::policy::PolicyError| KernelspecError::Invalid(format!("--policy {spec}: {e}"));
    if is_path(spec) {
        let text =
            std::fs::read_to_string(spec).map_err(|e| KernelspecError::Invalid(format!("--policy {spec}: {e}")))?;
        return Policy::parse(spec, &text).map_err(bad);
    }
    let config_path = config.unwrap_or(Path::new(crate::config::DEFAULT_PATH));
    let dir = crate::config::Config::load(config_path, false)
        .map(|c| c.policy_dir)
        .unwrap_or_else(|_| crate::config::Config::defaults().policy_dir);
    match std::fs::read_to_string(dir.join(format!("{spec}.toml"))) {
        Ok(text) => Policy::parse(spec, &text).map_err(bad),
        Err(_) => Policy::builtin(spec).map_err(bad),
    }
}

/// The caller's home: `$HOME` (set to the instructor's under sudo), else the password entry.
pub fn caller_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_absolute() && h != Path::new("/"))
        .or_else(|| nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.dir))
}

/// How a kernelspec starts this binary: `[sudo -n] isolate-grade [--config C]`, to which a
/// subcommand is added (`kernel` for the kernelspec; `grade` also runs `run` with it).
#[derive(Debug, Clone)]
pub struct Launcher {
    pub head: Vec<String>,
}

impl Launcher {
    /// `config` is made absolute: a kernel starts in the submission's directory.
    pub fn new(sudo: bool, config: Option<&Path>) -> Result<Launcher, KernelspecError> {
        let exe =
            std::env::current_exe().map_err(|source| KernelspecError::Io { path: "/proc/self/exe".into(), source })?;
        Launcher::with_binary(sudo, config, &exe)
    }

    /// The same, starting `exe` (the binary install records).
    pub fn with_binary(sudo: bool, config: Option<&Path>, exe: &Path) -> Result<Launcher, KernelspecError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KernelspecError::Io { path, source }
        };
        let mut head = Vec::new();
        if sudo {
            head.extend(["sudo".to_string(), "-n".to_string()]);
        }
        head.push(exe.display().to_string());
        if let Some(c) = config {
            head.extend(["--config".into(), std::path::absolute(c).map_err(io(c))?.display().to_string()]);
        }
        Ok(Launcher { head })
    }

    /// The kernelspec's argv prefix: `... kernel [--policy P]`.
    pub fn kernel(&self, policy: Option<&str>) -> Vec<String> {
        let mut argv = self.head.clone();
        argv.push("kernel".into());
        if let Some(p) = policy {
            argv.extend(["--policy".into(), p.into()]);
        }
        argv
    }
}

/// Write `spec` as `dir/kernel.json`, creating `dir`.
pub fn write_kernelspec(dir: &Path, spec: &serde_json::Value) -> Result<(), KernelspecError> {
    std::fs::create_dir_all(dir).map_err(|source| KernelspecError::Io { path: dir.to_path_buf(), source })?;
    let file = dir.join("kernel.json");
    std::fs::write(&file, serde_json::to_string_pretty(spec).expect("json") + "\n")
        .map_err(|source| KernelspecError::Io { path: file, source })
}

/// Each notebook with its JSON (unreadable ones left out).
pub fn read_notebooks(paths: Vec<PathBuf>) -> Vec<(PathBuf, Value)> {
    paths
        .into_iter()
        .filter_map(|p| {
            let nb = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            Some((p, nb))
        })
        .collect()
}

/// Where `install` puts the twins of a Python's kernels: a Jupyter data directory of its own
/// in that Python's prefix (`kernels/<twin>/kernel.json`), not on the Jupyter path, so that
/// JupyterLab's Launcher and kernel picker never offer a sandboxed kernel for everyday work.
/// nbgrader reaches them through the block (`_isolate_grade`'s `kernels`).
pub fn twin_home(prefix: &Path) -> PathBuf {
    prefix.join("share/isolate-grade/jupyter")
}

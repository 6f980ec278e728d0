//! `isolate-grade install`: the sandboxed kernelspec for a Python, and the line that makes
//! nbgrader use it. Runs as the instructor (no privilege needed); asks the interpreter what it
//! needs ([`crate::python`]), writes the kernelspec, starts a kernel through it
//! ([`crate::preflight`]) and only then, with `--course`, the marked block of the course's
//! `nbgrader_config.py`. The batch builds its private kernelspec with the same functions.

use crate::cli::InstallArgs;
use crate::preflight::PreflightError;
use crate::python::{self, Context, Probe, PythonError, Runtime};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Python(#[from] PythonError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the kernelspec was not installed, because {0}")]
    Preflight(#[from] PreflightError),
}

impl InstallError {
    /// 3 when the kernel can't run in the sandbox (as in a batch's preflight), 2 for bad
    /// input (a --python that does not run, a bad policy).
    pub fn exit_code(&self) -> u8 {
        use PythonError as P;
        match self {
            InstallError::Invalid(_) | InstallError::Python(P::Start { .. } | P::NoNbgrader | P::NoShebang { .. }) => {
                crate::report::EXIT_USAGE
            }
            _ => crate::report::Status::SandboxError.exit_code(),
        }
    }
}

const BEGIN: &str = "# >>> isolate-grade >>>";
const END: &str = "# <<< isolate-grade <<<";

/// The kernels' interpreter (given, or the one that runs `nbgrader`), asked where it lives,
/// and what the sandbox must show of it under `policy`. `course` is never exposed.
pub fn kernel_runtime(
    python: Option<&Path>,
    policy: &str,
    config: Option<&Path>,
    course: Option<&Path>,
) -> Result<(Probe, Runtime), InstallError> {
    let python = match python {
        // absolute, not resolved: a venv is known by the path its python is started through
        Some(p) => std::path::absolute(p).map_err(|source| InstallError::Io { path: p.into(), source })?,
        None => python::python_of_nbgrader()?,
    };
    let probe = python::probe_kernel_python(&python)?;
    let policy = load_policy(policy, config)?;
    let path_var = policy.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()).unwrap_or_default();
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let ctx = Context {
        home: caller_home().map(|h| real(&h)),
        course: course.map(real),
        covered: policy.binds.iter().map(|b| b.target.clone()).collect(),
        policy_path: path_var,
    };
    let runtime = python::plan(&probe, &ctx)?;
    for p in runtime.binds.iter().chain(&runtime.links) {
        if p.to_string_lossy().contains(':') {
            return Err(InstallError::Invalid(format!(
                "{} (needed by {}) has a ':' in its path, which a --bind can't name: move the environment",
                p.display(),
                probe.executable.display()
            )));
        }
    }
    Ok((probe, runtime))
}

/// The policy the kernels run under, read as `isolate-grade kernel --policy` will: a path, a
/// name in the system config's policy_dir, or a built-in one.
fn load_policy(spec: &str, config: Option<&Path>) -> Result<crate::policy::Policy, InstallError> {
    use crate::policy::{is_path, Policy};
    let bad = |e: crate::policy::PolicyError| InstallError::Invalid(format!("--policy {spec}: {e}"));
    if is_path(spec) {
        let text = std::fs::read_to_string(spec).map_err(|e| InstallError::Invalid(format!("--policy {spec}: {e}")))?;
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
    pub fn new(sudo: bool, config: Option<&Path>) -> Result<Launcher, InstallError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| InstallError::Io { path, source }
        };
        let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
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
pub fn write_kernelspec(dir: &Path, spec: &serde_json::Value) -> Result<(), InstallError> {
    std::fs::create_dir_all(dir).map_err(|source| InstallError::Io { path: dir.to_path_buf(), source })?;
    let file = dir.join("kernel.json");
    std::fs::write(&file, serde_json::to_string_pretty(spec).expect("json") + "\n")
        .map_err(|source| InstallError::Io { path: file, source })
}

pub fn execute(config: Option<PathBuf>, a: InstallArgs) -> Result<u8, InstallError> {
    // Nothing here needs privilege: the interpreter is asked, and the files written, as the
    // instructor (a no-op when run by root itself).
    let caller = crate::identity::Caller::detect();
    caller.become_caller().map_err(|e| InstallError::Invalid(format!("becoming the caller: {e}")))?;
    if caller.via == "sudo" {
        crate::grade::set_home(caller.uid);
    }
    let policy = a.policy.clone().unwrap_or_else(|| "default".into());
    let (probe, runtime) = kernel_runtime(a.python.as_deref(), &policy, config.as_deref(), a.course.as_deref())?;
    let prefix = Launcher::new(a.sudo, None)?.kernel(a.policy.as_deref());
    let display_name = a.display_name.clone().unwrap_or_else(|| format!("Python 3 (isolate-grade {})", a.name));
    let spec = kernelspec(prefix, &runtime, &display_name);
    let dir = probe.prefix.join("share/jupyter/kernels").join(&a.name);
    let kernel_json = dir.join("kernel.json");
    let before = std::fs::read(&kernel_json).ok();
    write_kernelspec(&dir, &spec)?;
    for note in &runtime.notes {
        println!("note: {note}");
    }
    // Start it as nbgrader will; if it can't run, leave things as they were.
    let notebooks = a.course.as_deref().map(course_notebooks).unwrap_or_default();
    let req = crate::preflight::Request {
        kernel_name: a.name.clone(),
        jupyter_path: None,
        notebooks,
        expect_resource_dir: Some(dir.clone()),
    };
    if let Err(e) = crate::preflight::run(&probe.executable, &req, &runtime) {
        match before {
            Some(old) => {
                let _ = std::fs::write(&kernel_json, old);
            }
            None => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        return Err(e.into());
    }
    println!(
        "installed kernelspec {:?} in {} (checked: it starts in the sandbox and imports ipykernel)",
        a.name,
        dir.display()
    );
    let block = config_block(&a.name);
    match &a.course {
        Some(course) => {
            let cfg = course.join("nbgrader_config.py");
            let old = match std::fs::read_to_string(&cfg) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(source) => return Err(InstallError::Io { path: cfg, source }),
            };
            let new = with_block(&old, &block);
            if new != old {
                std::fs::write(&cfg, &new).map_err(|source| InstallError::Io { path: cfg.clone(), source })?;
                println!("updated {}", cfg.display());
            } else {
                println!("{} already uses it", cfg.display());
            }
        }
        None => println!("add to nbgrader_config.py (the course's, and the one formgrader's server loads):\n{block}"),
    }
    Ok(0)
}

/// The source notebooks of every assignment of a course (`source/*/*.ipynb`).
fn course_notebooks(course: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(course.join("source"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|assignment| crate::grade::course::notebooks_in(&assignment.path()))
        .collect();
    found.sort();
    found
}

/// The kernelspec: `prefix` (`[sudo -n] isolate-grade kernel [options]`) in front of
/// ipykernel, with what the interpreter needs bound read-only, its symlinks recreated and the
/// variables that give it the same `sys.path` inside (see [`crate::python`]).
pub fn kernelspec(prefix: Vec<String>, rt: &Runtime, display_name: &str) -> serde_json::Value {
    let mut argv = prefix;
    for b in &rt.binds {
        argv.extend(["--bind".into(), b.display().to_string()]);
    }
    for l in &rt.links {
        argv.extend(["--link".into(), l.display().to_string()]);
    }
    for (k, v) in &rt.env {
        argv.extend(["--env".into(), format!("{k}={v}")]);
    }
    argv.push("--".into());
    argv.extend([
        rt.executable.display().to_string(),
        "-m".into(),
        "ipykernel_launcher".into(),
        // No history database in the sandbox's HOME. (Not `hist_file=:memory:`: nbclient
        // adds that itself to kernels named python3, and IPython refuses it given twice.)
        "--HistoryManager.enabled=False".into(),
        "-f".into(),
        "{connection_file}".into(),
    ]);
    json!({
        "argv": argv,
        "display_name": display_name,
        "language": "python",
        // Interrupts (nbgrader's cell timeout, and the one jupyter_client sends before every
        // shutdown) go as interrupt_request on the control channel, in order with the
        // shutdown_request behind them; ipykernel then signals itself. As SIGINT to this wrapper
        // they were relayed through the sandbox's init and could land after the shutdown had
        // begun: ipykernel 7.4 then aborted in libzmq ("pfd.revents & POLLIN", signaler.cpp)
        // in 5 of 900 kernels; 0 of 600 with messages, 0 of 300 bare (bench/shutdown.py).
        // Either way about 5% of shutdowns hang until jupyter_client's SIGTERM, bare too.
        "interrupt_mode": "message",
        "metadata": { "isolate_grade": { "version": env!("CARGO_PKG_VERSION") } }
    })
}

/// The marked block for `nbgrader_config.py`. It does not override the kernel
/// (`c.Execute.kernel_name` would run every notebook, whatever its language, in this one):
/// nbgrader's Execute step is replaced by one that starts each notebook in the sandboxed twin
/// of the kernel its own metadata names, and fails a notebook whose kernel has no twin rather
/// than run it unsandboxed. (nbgrader passes its own kernel manager class to Execute, so that
/// can't be configured; its list of autograde preprocessors can.)
fn config_block(name: &str) -> String {
    let twins = format!("{{\"python3\": {name:?}, \"python\": {name:?}}}");
    format!(
        r#"{BEGIN}
# Autograde in the sandbox (written by `isolate-grade install`; run it again to change this).
# Each notebook runs in the sandboxed twin of the kernel its own metadata names; a notebook
# whose kernel has no twin fails with a message, and is never run unsandboxed.
def _isolate_grade(c, twins):
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    class SandboxedExecute(Execute):
        def preprocess(self, nb, resources, *args, **kwargs):
            if self.kernel_name:  # chosen explicitly (`isolate-grade ASSIGNMENT` names its own)
                return super().preprocess(nb, resources, *args, **kwargs)
            name = nb.metadata.get("kernelspec", {{}}).get("name") or "python3"
            if name not in twins:
                raise ValueError(
                    f"the notebook's kernel {{name!r}} has no sandboxed twin (there are {{sorted(twins)}}), "
                    "so it is not run: sandbox it with `isolate-grade install`")
            before, self.kernel_name = self.kernel_name, twins[name]
            try:
                return super().preprocess(nb, resources, *args, **kwargs)
            finally:
                self.kernel_name = before

    steps = c.Autograde.get("autograde_preprocessors") or Autograde.class_traits()["autograde_preprocessors"].default()
    if Execute not in steps:
        raise ValueError(f"nbgrader's Execute step is not among the autograde preprocessors {{steps}}")
    c.Autograde.autograde_preprocessors = [SandboxedExecute if s is Execute else s for s in steps]


try:
    _isolate_grade(c, {twins})
except Exception as e:  # fail closed: no notebook runs at all, rather than unsandboxed
    import sys
    print(f"isolate-grade: the sandbox could not be set up for nbgrader ({{e!r}}): no notebook will run", file=sys.stderr)
    c.Execute.kernel_name = "isolate-grade-could-not-route-kernels-see-nbgrader_config.py"
{END}
"#
    )
}

/// Put `block` into a config file's text, replacing an earlier one: idempotent.
pub fn with_block(old: &str, block: &str) -> String {
    if let (Some(a), Some(b)) = (old.find(BEGIN), old.find(END)) {
        if a < b {
            let mut end = b + END.len();
            if old[end..].starts_with('\n') {
                end += 1;
            }
            return format!("{}{block}{}", &old[..a], &old[end..]);
        }
    }
    let sep = if old.is_empty() || old.ends_with('\n') { "" } else { "\n" };
    format!("{old}{sep}{block}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_block_is_added_once_and_replaced() {
        let block = config_block("ig");
        let once = with_block("c = get_config()\nc.CourseDirectory.course_id = 'x'", &block);
        assert!(once.starts_with("c = get_config()\nc.CourseDirectory.course_id = 'x'\n# >>> isolate-grade"));
        assert_eq!(with_block(&once, &block), once);
        let other = with_block(&once, &config_block("other"));
        assert_eq!(other.matches(BEGIN).count(), 1);
        assert!(other.contains("_isolate_grade(c, {\"python3\": \"other\", \"python\": \"other\"})"));
        assert!(!other.contains("\"ig\""));
        assert_eq!(with_block("", &block), block);
    }
}

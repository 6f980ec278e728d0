//! `isolate-grade install`: sandboxed twins of the kernelspecs nbgrader's Jupyter finds, and
//! the block that makes nbgrader use them. Runs as the instructor (no privilege needed): asks
//! each kernel's runtime what it needs ([`crate::kernels`]), writes the twins into the prefix of
//! nbgrader's Python, starts each through its kernelspec ([`crate::preflight`]) and only then,
//! with `--course`, writes the marked block of the course's `nbgrader_config.py`. The batch
//! makes its private twins with the same [`Maker`]. `--uninstall` removes both again.

use crate::cli::InstallArgs;
use crate::kernels::{self, KernelsError, Spec, Twin};
use crate::preflight::PreflightError;
use crate::python::{self, Probe, PythonError};
use crate::runtime::Context;
use serde_json::Value;
use std::path::{Path, PathBuf};

mod binary;
mod uninstall;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
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

impl InstallError {
    /// 3 when a kernel can't run in the sandbox (as in a batch's preflight), 2 for bad input
    /// (a --python that does not run, a bad policy, an unknown --kernel).
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
    ) -> Result<Maker, InstallError> {
        let python = match python {
            // absolute, not resolved: a venv is known by the path its python is started through
            Some(p) => std::path::absolute(p).map_err(|source| InstallError::Io { path: p.into(), source })?,
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
    pub fn specs(&self) -> Result<Vec<Spec>, InstallError> {
        kernels::list(&self.client.executable).map_err(|e| InstallError::Kernels(Box::new(e)))
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

    pub fn twin(&self, spec: &Spec, name: &str) -> Result<Twin, InstallError> {
        kernels::twin(spec, name, &self.launcher, &self.client, &self.ctx)
            .map_err(|e| InstallError::Kernels(Box::new(e)))
    }

    /// The twins of `specs`, named `prefix` + kernel name; every failure is named (exit 3, as
    /// a failed preflight: the runtimes are as they are).
    pub fn twins(&self, specs: &[Spec], prefix: &str) -> Result<Vec<Twin>, InstallError> {
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
        Err(InstallError::Preflight(PreflightError::Failed(format!(
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
) -> Result<(), InstallError> {
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
        let exe =
            std::env::current_exe().map_err(|source| InstallError::Io { path: "/proc/self/exe".into(), source })?;
        Launcher::with_binary(sudo, config, &exe)
    }

    /// The same, starting `exe` (the binary install records).
    pub fn with_binary(sudo: bool, config: Option<&Path>, exe: &Path) -> Result<Launcher, InstallError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| InstallError::Io { path, source }
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
pub fn write_kernelspec(dir: &Path, spec: &serde_json::Value) -> Result<(), InstallError> {
    std::fs::create_dir_all(dir).map_err(|source| InstallError::Io { path: dir.to_path_buf(), source })?;
    let file = dir.join("kernel.json");
    std::fs::write(&file, serde_json::to_string_pretty(spec).expect("json") + "\n")
        .map_err(|source| InstallError::Io { path: file, source })
}

pub fn execute(config: Option<PathBuf>, a: InstallArgs) -> Result<u8, InstallError> {
    // Nothing here needs privilege: the runtimes are asked, and the files written, as the
    // instructor (a no-op when run by root itself).
    let caller = crate::identity::Caller::detect();
    caller.become_caller().map_err(|e| InstallError::Invalid(format!("becoming the caller: {e}")))?;
    if caller.via == crate::identity::Via::Sudo {
        crate::grade::set_home(caller.uid);
    }
    if a.uninstall {
        return uninstall::execute(&a);
    }
    // the binary the kernelspecs start, checked before anything is written
    let exe = binary::recorded(a.binary.as_deref())?;
    let policy = a.policy.clone().unwrap_or_else(|| "default".into());
    let launcher = Launcher::with_binary(a.sudo, None, &exe)?.kernel(a.policy.as_deref());
    let maker = Maker::new(a.python.as_deref(), &policy, config.as_deref(), a.course.as_deref(), launcher)?;
    let specs = maker.specs()?;
    let kernels: Vec<Spec> = specs.iter().filter(|s| !s.is_twin()).cloned().collect();
    let chosen: Vec<Spec> = if a.kernels.is_empty() && !kernels.is_empty() {
        kernels.clone()
    } else if a.kernels.is_empty() {
        // none at all: python3's twin says why (no ipykernel)
        maker.find(&specs, "python3").into_iter().collect()
    } else {
        let mut chosen: Vec<Spec> = Vec::new();
        for k in &a.kernels {
            match maker.find(&specs, k) {
                Some(s) if !chosen.contains(&s) => chosen.push(s),
                Some(_) => {}
                None => {
                    let names: Vec<&str> = kernels.iter().map(|s| s.name.as_str()).collect();
                    return Err(InstallError::Invalid(format!(
                        "--kernel {k}: {} finds no kernelspec of that name (it has: {})",
                        maker.client.executable.display(),
                        names.join(", ")
                    )));
                }
            }
        }
        chosen
    };
    let twins = maker.twins(&chosen, &a.twin_prefix)?;
    let home = twin_home(&maker.client.prefix);
    let dir = home.join("kernels");
    let notebooks = a.course.as_deref().map(course_notebooks).unwrap_or_default();
    let routes: Vec<(PathBuf, Result<String, String>)> =
        notebooks.iter().map(|(p, nb)| (p.clone(), kernels::route(nb, &specs))).collect();
    let routed: Vec<(PathBuf, String)> =
        routes.iter().filter_map(|(p, k)| Some((p.clone(), k.clone().ok()?))).collect();
    install_twins(&twins, &dir, Some(&home), &maker.client.executable, &routed)?;
    // Twins an earlier version put on the Jupyter path (into every Launcher): gone.
    let names: Vec<&str> = twins.iter().map(|t| t.name.as_str()).collect();
    for (name, old) in uninstall::twins_in(&maker.client.prefix.join("share/jupyter/kernels"), &a.twin_prefix)? {
        if names.contains(&name.as_str()) {
            std::fs::remove_dir_all(&old).map_err(|source| InstallError::Io { path: old.clone(), source })?;
            println!("removed the earlier twin {name:?} from {} (JupyterLab's Launcher showed it)", old.display());
        }
    }
    for t in &twins {
        println!(
            "installed {:?}, the sandboxed twin of {:?} ({}), in {} (checked: it starts in the sandbox and answers)",
            t.name,
            t.wraps,
            t.language,
            dir.join(&t.name).display()
        );
        for note in &t.runtime.notes {
            println!("  note: {note}");
        }
    }
    for (path, route) in &routes {
        match route {
            Ok(k) if twins.iter().any(|t| t.wraps == *k) => {}
            Ok(k) => {
                println!("warning: {} uses kernel {k:?}, which was not sandboxed: it will not be run", path.display())
            }
            Err(why) => println!("warning: {} will not be run: {why}", path.display()),
        }
    }
    println!(
        "the twins are not on the Jupyter path (JupyterLab's Launcher doesn't offer them); nbgrader finds them \
         through the block below. To start one by name: JUPYTER_PATH={}",
        home.display()
    );
    let block = config_block(&twins, &specs, stage_binary(&maker.launcher), &dir);
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
                println!("{} already uses them", cfg.display());
            }
        }
        None => println!("add to nbgrader_config.py (the course's, and the one formgrader's server loads):\n{block}"),
    }
    println!(
        "a running Jupyter server (formgrader) keeps the configuration it started with: restart it to pick up \
         this change"
    );
    let real = std::fs::canonicalize(&exe).unwrap_or_else(|_| exe.clone());
    if let Some(dir) = binary::cargo_build_dir(&real) {
        eprintln!("isolate-grade: {}", binary::build_dir_warning(&exe, dir));
    }
    Ok(0)
}

/// The source notebooks of every assignment of a course (`source/*/*.ipynb`), read (those that
/// are not JSON left out: nbgrader will say so).
fn course_notebooks(course: &Path) -> Vec<(PathBuf, Value)> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(course.join("source"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|assignment| crate::grade::course::notebooks_in(&assignment.path()))
        .collect();
    found.sort();
    read_notebooks(found)
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

/// The marked block for `nbgrader_config.py`. It does not override the kernel
/// (`c.Execute.kernel_name` would run every notebook, whatever its language, in one kernel):
/// nbgrader's Execute step is replaced by one that starts each notebook in the sandboxed twin
/// of the kernel its own metadata names, and fails a notebook whose kernel has no twin rather
/// than run it unsandboxed ([`kernels::ROUTE_PY`]). (nbgrader passes its own kernel manager
/// class to Execute, so that can't be configured; its list of autograde preprocessors can.)
///
/// The block also guards nbgrader's Autograde converter as the batch does (`binary stage`
/// checks and copies each submission first; the batch's locks): `_isolate_grade_guard`.
/// `kernels` is the directory the twins are in (not on the Jupyter path: [`twin_home`]).
pub fn config_block(twins: &[Twin], specs: &[Spec], binary: &str, kernels: &Path) -> String {
    let (names, languages) = kernels::tables(twins, specs);
    let names = serde_json::to_string(&names).expect("json");
    let languages = serde_json::to_string(&languages).expect("json");
    let binary = serde_json::to_string(binary).expect("json");
    let kernels = serde_json::to_string(&kernels.to_string_lossy()).expect("json");
    format!(
        r#"{BEGIN}
# Autograde in the sandbox (written by `isolate-grade install`; run it again to change this).
# Each notebook runs in the sandboxed twin of the kernel its own metadata names; a notebook
# whose kernel has no twin fails with a message, and is never run unsandboxed. Each
# submission is checked and copied by `isolate-grade stage` before nbgrader reads it.
# After removing this block, restart the Jupyter server (formgrader keeps it until then).
{route}

try:
    _isolate_grade(c, {names}, {languages}, {kernels})
    _isolate_grade_guard(c, {binary})
except Exception as e:  # fail closed: no notebook runs at all, rather than unsandboxed
    import sys
    print(f"isolate-grade: the sandbox could not be set up for nbgrader ({{e!r}}): no notebook will run", file=sys.stderr)
    c.Execute.kernel_name = "isolate-grade-could-not-route-kernels-see-nbgrader_config.py"
    # and nbgrader finds no submission to copy files from
    c.CourseDirectory.submitted_directory = "isolate-grade-could-not-set-up-see-nbgrader_config.py"
{END}
"#,
        route = kernels::ROUTE_PY.trim_end()
    )
}

/// Where `install` puts the twins of a Python's kernels: a Jupyter data directory of its own
/// in that Python's prefix (`kernels/<twin>/kernel.json`), not on the Jupyter path, so that
/// JupyterLab's Launcher and kernel picker never offer a sandboxed kernel for everyday work.
/// nbgrader reaches them through the block (`_isolate_grade`'s `kernels`).
pub fn twin_home(prefix: &Path) -> PathBuf {
    prefix.join("share/isolate-grade/jupyter")
}

/// The binary in a launcher (`[sudo -n] BINARY kernel ...`): `stage` runs it as the caller.
fn stage_binary(launcher: &[String]) -> &str {
    let at = launcher.iter().position(|a| a == "kernel").expect("a kernel launcher");
    &launcher[at - 1]
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

/// A config file's text without the blocks [`with_block`] put in (each with the newline after
/// its end marker); the rest stays byte for byte. A begin marker with no end marker after it
/// is left as it is.
pub fn without_block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(a) = rest.find(BEGIN) {
        let Some(b) = rest[a..].find(END) else { break };
        let mut end = a + b + END.len();
        if rest[end..].starts_with('\n') {
            end += 1;
        }
        out.push_str(&rest[..a]);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twin(wraps: &str, name: &str, language: &str) -> Twin {
        Twin {
            name: name.into(),
            wraps: wraps.into(),
            language: language.into(),
            runtime: Default::default(),
            spec: Value::Null,
            check: kernels::Check::Cell,
        }
    }

    #[test]
    fn the_config_block_is_added_once_and_replaced() {
        let block = config_block(
            &[twin("python3", "ig-python3", "python"), twin("ir", "ig-ir", "r")],
            &[],
            "/usr/local/bin/isolate-grade",
            Path::new("/k"),
        );
        assert!(block.contains(r#"_isolate_grade_guard(c, "/usr/local/bin/isolate-grade")"#));
        let once = with_block("c = get_config()\nc.CourseDirectory.course_id = 'x'", &block);
        assert!(once.starts_with("c = get_config()\nc.CourseDirectory.course_id = 'x'\n# >>> isolate-grade"));
        assert_eq!(with_block(&once, &block), once);
        assert!(once.contains(
            r#"_isolate_grade(c, {"ir":"ig-ir","python":"ig-python3","python3":"ig-python3"}, {"ig-ir":"r","ig-python3":"python"}, "/k")"#
        ));
        let other = with_block(
            &once,
            &config_block(&[twin("python3", "other", "python")], &[], "/usr/local/bin/isolate-grade", Path::new("/k")),
        );
        assert_eq!(other.matches(BEGIN).count(), 1);
        assert!(other.contains(r#"_isolate_grade(c, {"python":"other","python3":"other"}, {"other":"python"}, "/k")"#));
        assert!(!other.contains("\"ig-ir\""));
        assert_eq!(with_block("", &block), block);
    }
}

//! What a Python interpreter needs inside the sandbox, found by asking the interpreter.
//!
//! Instructors' Pythons are mostly not under `/usr`: conda and mamba (`/opt/conda`), pyenv
//! (`~/.pyenv/versions/X`), `/usr/local` builds, uv-managed interpreters, venvs made from any
//! of those (whose `bin/python` is a symlink into the base installation), user site-packages
//! and `--system-site-packages`. The interpreter itself says where it lives: we run it as the
//! caller, in a scrubbed environment, and read its executable, prefixes and `sys.path`
//! ([`probe`]); [`needs`] lists those paths and the variables that make `sys.path` the same
//! inside, and [`crate::runtime::plan`] turns them into binds (or refuses).

use crate::runtime::{self, Need, Needs, SEARCH_PATH_ENTRY};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("{python}: {source}")]
    Start { python: PathBuf, source: std::io::Error },
    #[error("{python} failed when asked where it lives:\n{stderr}")]
    Failed { python: PathBuf, stderr: String },
    #[error("{python}: unexpected answer ({reason})")]
    Answer { python: PathBuf, reason: String },
    #[error("{python} has no module {module}, so the kernel can't start: `{python} -m pip install {package}`")]
    NoModule { python: PathBuf, module: String, package: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("nbgrader is not on PATH: give --python")]
    NoNbgrader,
    #[error("{script}: no interpreter line: give --python")]
    NoShebang { script: PathBuf },
}

/// The interpreter's own answer (see `PROBE`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Probe {
    pub executable: PathBuf,
    pub version: String,
    pub prefix: PathBuf,
    pub base_prefix: PathBuf,
    pub exec_prefix: PathBuf,
    pub base_exec_prefix: PathBuf,
    /// `sys.path` entries that exist (the script's own `''` left out).
    pub path: Vec<PathBuf>,
    /// The user site-packages, when it is on `sys.path`.
    pub user_site: Option<PathBuf>,
    pub user_base: Option<PathBuf>,
    /// Whether the module the kernel is started with (`python -m MODULE`) can be imported.
    pub has_module: bool,
    pub runtime_dir: Option<PathBuf>,
    /// Those of [`PATH_VARIABLES`] the interpreter was asked with, and their values.
    #[serde(default)]
    pub path_variables: Vec<(String, String)>,
}

/// Asked with `python -c`: nothing here imports more than the standard library, except
/// jupyter_core for the runtime directory, when it is there.
const PROBE: &str = r#"
import json, os, site, sys
import importlib.util as u
def found(m):
    try:
        return u.find_spec(m) is not None
    except Exception:
        return False
runtime = None
try:
    from jupyter_core.paths import jupyter_runtime_dir
    runtime = jupyter_runtime_dir()
except Exception:
    pass
user_site = None
if getattr(site, "ENABLE_USER_SITE", False):
    s = site.getusersitepackages()
    if s in sys.path:
        user_site = s
print(json.dumps({
    "executable": sys.executable,
    "version": "%d.%d" % sys.version_info[:2],
    "prefix": sys.prefix,
    "base_prefix": getattr(sys, "base_prefix", sys.prefix),
    "exec_prefix": sys.exec_prefix,
    "base_exec_prefix": getattr(sys, "base_exec_prefix", sys.exec_prefix),
    "path": [p for p in sys.path if p and p != os.getcwd() and os.path.exists(p)],
    "user_site": user_site,
    "user_base": site.getuserbase() if user_site else None,
    "has_module": found(sys.argv[1]),
    "runtime_dir": runtime,
    "path_variables": [[k, os.environ[k]] for k in sys.argv[2:] if k in os.environ],
}))
"#;

/// The caller's variables that change `sys.path`: the probe sees them, and the kernel gets
/// the same values (baked into its kernelspec), so it imports what the probe found.
pub const PATH_VARIABLES: &[&str] = &["PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONNOUSERSITE"];

/// Ask `python` where it lives, and whether it has `module`. Runs with our credentials:
/// callers become the instructor first.
pub fn probe(python: &Path, module: &str) -> Result<Probe, PythonError> {
    let mut args = vec!["-c", PROBE, module];
    args.extend(PATH_VARIABLES);
    let out = runtime::ask(python, &args, PATH_VARIABLES)
        .map_err(|source| PythonError::Start { python: python.into(), source })?;
    if !out.status.success() {
        let stderr = crate::escape::text(&String::from_utf8_lossy(&out.stderr));
        return Err(PythonError::Failed { python: python.into(), stderr });
    }
    let p: Probe = serde_json::from_slice(&out.stdout)
        .map_err(|e| PythonError::Answer { python: python.into(), reason: e.to_string() })?;
    if !p.executable.is_absolute() {
        return Err(PythonError::Answer { python: python.into(), reason: "sys.executable is not absolute".into() });
    }
    Ok(p)
}

/// [`probe`], and the interpreter must have `module` (`ipykernel_launcher`: ipykernel).
pub fn probe_kernel_python(python: &Path, module: &str) -> Result<Probe, PythonError> {
    let p = probe(python, module)?;
    if !p.has_module {
        let package = match module {
            "ipykernel_launcher" | "ipykernel" => "ipykernel".to_string(),
            m => m.split('.').next().unwrap_or(m).replace('_', "-"),
        };
        return Err(PythonError::NoModule { python: p.executable, module: module.into(), package });
    }
    Ok(p)
}

/// The paths a probed interpreter uses, and the variables that give it the same `sys.path`.
pub fn needs(p: &Probe) -> Needs {
    let mut paths = vec![Need::new(&p.executable, "the interpreter")];
    for (prefix, role) in [
        (&p.prefix, "sys.prefix"),
        (&p.exec_prefix, "sys.exec_prefix"),
        (&p.base_prefix, "sys.base_prefix, the base installation"),
        (&p.base_exec_prefix, "sys.base_exec_prefix"),
    ] {
        paths.push(Need::new(prefix, role));
    }
    for entry in &p.path {
        if Some(entry) == p.user_site.as_ref() {
            paths.push(Need::new(entry, "the user site-packages").alone());
        } else {
            paths.push(Need::new(entry, SEARCH_PATH_ENTRY));
        }
    }
    // The same values inside as the interpreter was asked with.
    let mut env = p.path_variables.clone();
    if let (Some(_), Some(base)) = (&p.user_site, &p.user_base) {
        // Inside, HOME is the policy's: the user site is found through its base instead.
        env.retain(|(k, _)| k != "PYTHONUSERBASE");
        env.push(("PYTHONUSERBASE".to_string(), base.display().to_string()));
    }
    Needs {
        executable: p.executable.clone(),
        paths,
        bin_dir: p.executable.parent().map(Path::to_path_buf),
        env,
        runtime_dir: p.runtime_dir.clone(),
    }
}

/// The Python that runs `nbgrader`: the interpreter in its script's `#!` line.
pub fn python_of_nbgrader() -> Result<PathBuf, PythonError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let script = std::env::split_paths(&path)
        .map(|d| d.join("nbgrader"))
        .find(|p| p.is_file())
        .ok_or(PythonError::NoNbgrader)?;
    let text = std::fs::read_to_string(&script).map_err(|source| PythonError::Io { path: script.clone(), source })?;
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map(|l| PathBuf::from(l.split_whitespace().next().unwrap_or("")))
        .filter(|p| p.is_absolute())
        .ok_or(PythonError::NoShebang { script })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Context, Runtime, RuntimeError};

    /// What the sandbox must show of a probed interpreter (as kernels.rs plans it).
    fn plan(p: &Probe, ctx: &Context) -> Result<Runtime, RuntimeError> {
        runtime::plan(&needs(p), ctx)
    }
    use std::os::unix::fs::symlink;

    fn probe_at(root: &Path) -> Probe {
        let base = root.join("opt/py");
        let venv = root.join("srv/venv");
        Probe {
            executable: venv.join("bin/python"),
            version: "3.11".into(),
            prefix: venv.clone(),
            exec_prefix: venv.clone(),
            base_prefix: base.clone(),
            base_exec_prefix: base.clone(),
            path: vec![base.join("lib/python3.11"), venv.join("lib/python3.11/site-packages")],
            has_module: true,
            ..Default::default()
        }
    }

    /// A venv whose python is a chain of symlinks into a base installation elsewhere.
    fn layout() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in
            ["opt/py/bin", "opt/py/lib/python3.11", "srv/venv/bin", "srv/venv/lib/python3.11/site-packages", "links"]
        {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::write(r.join("opt/py/bin/python3.11"), "").unwrap();
        symlink("python3.11", r.join("opt/py/bin/python3")).unwrap();
        symlink(r.join("opt/py/bin/python3"), r.join("links/py")).unwrap();
        symlink(r.join("links/py"), r.join("srv/venv/bin/python")).unwrap();
        d
    }

    #[test]
    fn the_real_prefixes_are_bound_and_links_outside_them_recreated() {
        let d = layout();
        let r = d.path().canonicalize().unwrap();
        let ctx = Context { policy_path: "/usr/bin:/bin".into(), ..Default::default() };
        let rt = plan(&probe_at(&r), &ctx).unwrap();
        assert_eq!(rt.binds, [r.join("opt/py"), r.join("srv/venv")]);
        // the venv's own link and python3 -> python3.11 are inside bound trees; links/py is not
        assert_eq!(rt.links, [r.join("links/py")]);
        assert_eq!(rt.executable, r.join("srv/venv/bin/python"));
        assert!(rt.env.contains(&("PATH".into(), format!("{}:/usr/bin:/bin", r.join("srv/venv/bin").display()))));
        // under a policy bind: nothing to add
        let ctx = Context { covered: vec![r.clone()], ..Default::default() };
        let rt = plan(&probe_at(&r), &ctx).unwrap();
        assert!(rt.binds.is_empty() && rt.links.is_empty(), "{rt:?}");
        // a link that is itself a policy target (`/bin` on merged /usr) is the policy's to make
        let ctx = Context { covered: vec![r.join("links/py")], ..Default::default() };
        let rt = plan(&probe_at(&r), &ctx).unwrap();
        assert!(!rt.links.contains(&r.join("links/py")), "{rt:?}");
    }

    #[test]
    fn homes_courses_runtime_dirs_and_top_level_dirs_are_refused() {
        let d = layout();
        let r = d.path().canonicalize().unwrap();
        let refused = |p: &Probe, ctx: &Context| match plan(p, ctx) {
            Err(RuntimeError::Refused { path, why, .. }) => (path, why),
            other => panic!("not refused: {other:?}"),
        };
        // a prefix that is the home itself (`./configure --prefix=$HOME`)
        let ctx = Context { home: Some(r.join("opt/py")), ..Default::default() };
        let (path, why) = refused(&probe_at(&r), &ctx);
        assert_eq!(path, r.join("opt/py"));
        assert!(why.contains("home directory"), "{why}");
        // ... but an installation inside a home is code: bound
        let ctx = Context { home: Some(r.join("opt")), ..Default::default() };
        assert!(plan(&probe_at(&r), &ctx).is_ok());
        // the course on sys.path (PYTHONPATH), or one of its directories
        let mut p = probe_at(&r);
        std::fs::create_dir_all(r.join("course/source")).unwrap();
        for entry in [r.join("course"), r.join("course/source"), r.clone()] {
            p.path.push(entry.clone());
            let ctx = Context { course: Some(r.join("course")), ..Default::default() };
            let (path, why) = refused(&p, &ctx);
            assert_eq!(path, entry);
            assert!(why.contains("course directory"), "{why}");
            p.path.pop();
        }
        // the Jupyter runtime directory, or what holds it
        let mut p = probe_at(&r);
        p.runtime_dir = Some(r.join("srv/venv/lib/runtime"));
        let (path, why) = refused(&p, &Context::default());
        assert_eq!(path, r.join("srv/venv"));
        assert!(why.contains("runtime directory"), "{why}");
        // a top-level directory on sys.path
        let mut p = probe_at(&r);
        p.path.push("/tmp".into());
        let (_, why) = refused(&p, &Context::default());
        assert!(why.contains("top-level"), "{why}");
    }

    #[test]
    fn the_user_site_is_bound_alone_and_found_through_its_base() {
        let d = layout();
        let r = d.path().canonicalize().unwrap();
        let site = r.join("home/inst/.local/lib/python3.11/site-packages");
        std::fs::create_dir_all(&site).unwrap();
        let mut p = probe_at(&r);
        p.path.push(site.clone());
        p.user_site = Some(site.clone());
        p.user_base = Some(r.join("home/inst/.local"));
        let ctx = Context { home: Some(r.join("home/inst")), ..Default::default() };
        let rt = plan(&p, &ctx).unwrap();
        assert!(rt.binds.contains(&site), "{rt:?}");
        assert!(!rt.binds.iter().any(|b| r.join("home/inst").starts_with(b)), "{rt:?}");
        assert!(rt.env.contains(&("PYTHONUSERBASE".into(), r.join("home/inst/.local").display().to_string())));
        assert!(rt.notes.iter().any(|n| n.contains("user site-packages")));
    }
}

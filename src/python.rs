//! What a Python interpreter needs inside the sandbox, found by asking the interpreter.
//!
//! Instructors' Pythons are mostly not under `/usr`: conda and mamba (`/opt/conda`), pyenv
//! (`~/.pyenv/versions/X`), `/usr/local` builds, uv-managed interpreters, venvs made from any
//! of those (whose `bin/python` is a symlink into the base installation), user site-packages
//! and `--system-site-packages`. The interpreter itself says where it lives: we run it as the
//! caller, in a scrubbed environment, and read its executable, prefixes and `sys.path`
//! ([`probe`]); [`plan`] turns that into read-only binds of the real paths, the symlinks to
//! recreate so every path the interpreter uses resolves inside as outside, and the few
//! variables that make `sys.path` the same inside. It refuses to expose what is not code: a
//! home directory, the course, the Jupyter runtime directory (the keys of live kernels), or a
//! top-level directory of the host.

use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("{python}: {source}")]
    Start { python: PathBuf, source: std::io::Error },
    #[error("{python} failed when asked where it lives:\n{stderr}")]
    Failed { python: PathBuf, stderr: String },
    #[error("{python}: unexpected answer ({reason})")]
    Answer { python: PathBuf, reason: String },
    #[error("{python} has no ipykernel, so no kernel can start: `{python} -m pip install ipykernel`")]
    NoIpykernel { python: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: more than 40 symlinks to follow")]
    SymlinkLoop { path: PathBuf },
    #[error("{python} needs {path} ({role}) in the sandbox, but {why}, so it is never bound.\nFix: {fix}")]
    Refused { python: PathBuf, path: PathBuf, role: String, why: String, fix: String },
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
    pub has_ipykernel: bool,
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
    "has_ipykernel": found("ipykernel"),
    "runtime_dir": runtime,
    "path_variables": [[k, os.environ[k]] for k in sys.argv[1:] if k in os.environ],
}))
"#;

/// The caller's variables that change `sys.path`: the probe sees them, and the kernel gets
/// the same values (baked into its kernelspec), so it imports what the probe found.
pub const PATH_VARIABLES: &[&str] = &["PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONNOUSERSITE"];

/// The environment the probe (and the bare import check) runs with: nothing of the caller's
/// but `HOME` (the user site is found through it) and [`PATH_VARIABLES`].
pub fn scrubbed_env() -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    for k in std::iter::once("HOME").chain(PATH_VARIABLES.iter().copied()) {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    env
}

/// Ask `python` where it lives. Runs with our credentials: callers become the instructor first.
pub fn probe(python: &Path) -> Result<Probe, PythonError> {
    let out = Command::new(python)
        .args(["-c", PROBE])
        .args(PATH_VARIABLES)
        .env_clear()
        .envs(scrubbed_env())
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .output()
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

/// [`probe`], and the interpreter must have ipykernel.
pub fn probe_kernel_python(python: &Path) -> Result<Probe, PythonError> {
    let p = probe(python)?;
    if !p.has_ipykernel {
        return Err(PythonError::NoIpykernel { python: p.executable });
    }
    Ok(p)
}

/// What must not be bound, and what the policy shows already.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The caller's home directory.
    pub home: Option<PathBuf>,
    /// The course directory, when known.
    pub course: Option<PathBuf>,
    /// Bind targets of the policy (`/usr`...): paths beneath them are there already.
    pub covered: Vec<PathBuf>,
    /// The policy's `PATH`, to which the interpreter's directory is prepended.
    pub policy_path: String,
}

/// The sandbox's share of an interpreter: read-only binds, symlinks recreated, variables.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Runtime {
    /// The interpreter as the kernelspec names it (`sys.executable`, symlinks and all: a
    /// venv is recognised by the path it was started through).
    pub python: PathBuf,
    pub binds: Vec<PathBuf>,
    pub links: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    /// What was narrowed, said plainly.
    pub notes: Vec<String>,
}

/// Directories of the host that are never bound whole: each holds far more than code.
const NEVER_WHOLE: &[&str] =
    &["/", "/home", "/root", "/tmp", "/var", "/var/tmp", "/srv", "/opt", "/etc", "/run", "/mnt", "/media", "/boot"];

/// What the sandbox must show of a probed interpreter (paths are resolved on this host, as the
/// caller sees them), or why it refuses to.
pub fn plan(p: &Probe, ctx: &Context) -> Result<Runtime, PythonError> {
    let mut needed: Vec<(PathBuf, String)> = vec![(p.executable.clone(), "the interpreter".into())];
    for (prefix, role) in [
        (&p.prefix, "sys.prefix"),
        (&p.exec_prefix, "sys.exec_prefix"),
        (&p.base_prefix, "sys.base_prefix, the base installation"),
        (&p.base_exec_prefix, "sys.base_exec_prefix"),
    ] {
        needed.push((prefix.clone(), role.into()));
    }
    for entry in &p.path {
        let role = if Some(entry) == p.user_site.as_ref() {
            "the user site-packages".to_string()
        } else {
            "a sys.path entry".to_string()
        };
        needed.push((entry.clone(), role));
    }

    let mut reals: Vec<PathBuf> = Vec::new();
    let mut links: Vec<PathBuf> = Vec::new();
    let mut notes = Vec::new();
    for (path, role) in &needed {
        let (real, hops) = resolve(path)?;
        refuse_if_not_code(p, ctx, path, &real, role)?;
        if role == "the user site-packages" {
            notes.push(format!(
                "the user site-packages {} is bound by itself, not the home directory around it",
                real.display()
            ));
        }
        reals.push(real);
        links.extend(hops);
    }
    let binds = outermost(reals.into_iter().filter(|r| !ctx.covered.iter().any(|c| r.starts_with(c))).collect());
    // A link is there already if it lies in a bound tree, or is one of the policy's own
    // targets (`/bin -> usr/bin` on a merged-/usr system, recreated by the policy).
    let shown =
        |l: &Path| binds.iter().any(|b| l.starts_with(b) && l != b) || ctx.covered.iter().any(|c| l.starts_with(c));
    let mut kept_links = Vec::new();
    for l in links {
        if !shown(&l) && !kept_links.contains(&l) {
            kept_links.push(l);
        }
    }

    let mut env = Vec::new();
    let bin = p.executable.parent().map(Path::to_path_buf).unwrap_or_default();
    if !ctx.policy_path.split(':').any(|d| Path::new(d) == bin) {
        let path = if ctx.policy_path.is_empty() {
            bin.display().to_string()
        } else {
            format!("{}:{}", bin.display(), ctx.policy_path)
        };
        env.push(("PATH".to_string(), path));
    }
    // The same values inside as the interpreter was asked with.
    env.extend(p.path_variables.iter().cloned());
    if let (Some(_), Some(base)) = (&p.user_site, &p.user_base) {
        // Inside, HOME is the policy's: the user site is found through its base instead.
        env.retain(|(k, _)| k != "PYTHONUSERBASE");
        env.push(("PYTHONUSERBASE".to_string(), base.display().to_string()));
    }
    Ok(Runtime { python: p.executable.clone(), binds, links: kept_links, env, notes })
}

fn refuse_if_not_code(p: &Probe, ctx: &Context, path: &Path, real: &Path, role: &str) -> Result<(), PythonError> {
    let refuse = |why: String, fix: String| {
        Err(PythonError::Refused {
            python: p.executable.clone(),
            path: path.to_path_buf(),
            role: role.to_string(),
            why,
            fix,
        })
    };
    let shown = if real == path { String::new() } else { format!(" (really {})", real.display()) };
    if NEVER_WHOLE.iter().any(|d| real == Path::new(d)) {
        return refuse(
            format!("{}{shown} is a top-level directory of the host", path.display()),
            "install the interpreter and its packages under a directory of their own (a venv, a conda environment, /opt/<name>)".into(),
        );
    }
    let within = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    if let Some(home) = &ctx.home {
        if home.starts_with(real) {
            return refuse(
                format!("{}{shown} is or holds the home directory {}", path.display(), home.display()),
                "install Python under a directory of its own (e.g. `python3 -m venv ~/venvs/grading`, a pyenv or conda environment) and give that interpreter; only site-packages directories inside a home are ever bound".into(),
            );
        }
    }
    if let Some(course) = &ctx.course {
        if within(real, course) {
            return refuse(
                format!(
                    "{}{shown} is or is inside the course directory {}: a sandbox never sees course files",
                    path.display(),
                    course.display()
                ),
                if role == "a sys.path entry" {
                    "take it off PYTHONPATH (or out of the .pth file that adds it), or move the code it holds out of the course directory".into()
                } else {
                    "make the environment outside the course directory".into()
                },
            );
        }
    }
    if let Some(rt) = &p.runtime_dir {
        if within(real, rt) {
            return refuse(
                format!(
                    "{}{shown} is or holds the Jupyter runtime directory {}, which has the keys of every live kernel",
                    path.display(),
                    rt.display()
                ),
                "install the environment somewhere else".into(),
            );
        }
    }
    Ok(())
}

/// The real path of `path` and every symlink met on the way (absolute, each in a real
/// directory), in order: what must exist inside for `path` to resolve as it does outside.
pub fn resolve(path: &Path) -> Result<(PathBuf, Vec<PathBuf>), PythonError> {
    let mut todo: Vec<PathBuf> = Vec::new();
    push_components(&mut todo, path);
    let mut real = PathBuf::from("/");
    let mut links = Vec::new();
    while let Some(c) = todo.pop() {
        if c.as_os_str() == ".." {
            real.pop();
            continue;
        }
        let next = real.join(&c);
        match std::fs::symlink_metadata(&next) {
            Ok(md) if md.file_type().is_symlink() => {
                if links.len() >= 40 {
                    return Err(PythonError::SymlinkLoop { path: path.into() });
                }
                let to = std::fs::read_link(&next).map_err(|source| PythonError::Io { path: next.clone(), source })?;
                links.push(next);
                if to.is_absolute() {
                    real = PathBuf::from("/");
                }
                push_components(&mut todo, &to);
            }
            Ok(_) => real = next,
            Err(source) => return Err(PythonError::Io { path: next, source }),
        }
    }
    Ok((real, links))
}

/// Push `p`'s components so that they pop in order (`.` dropped, `..` kept).
fn push_components(todo: &mut Vec<PathBuf>, p: &Path) {
    let parts: Vec<PathBuf> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

/// The paths none of the others contains, sorted.
fn outermost(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    out
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
            has_ipykernel: true,
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
    fn symlink_chains_are_followed_and_each_hop_kept() {
        let d = layout();
        let r = d.path().canonicalize().unwrap();
        let (real, hops) = resolve(&r.join("srv/venv/bin/python")).unwrap();
        assert_eq!(real, r.join("opt/py/bin/python3.11"));
        assert_eq!(hops, [r.join("srv/venv/bin/python"), r.join("links/py"), r.join("opt/py/bin/python3")]);
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
        assert_eq!(rt.python, r.join("srv/venv/bin/python"));
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
            Err(PythonError::Refused { path, why, .. }) => (path, why),
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

    #[test]
    fn outermost_paths_only() {
        let o = outermost(vec!["/a/b".into(), "/a".into(), "/c".into(), "/a/b/c".into(), "/ab".into()]);
        assert_eq!(o, [PathBuf::from("/a"), "/ab".into(), "/c".into()]);
    }
}

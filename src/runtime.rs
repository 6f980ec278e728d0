//! What a kernel's runtime needs inside the sandbox, from what the runtime itself said.
//!
//! A probe ([`crate::python`] for interpreters, [`crate::rlang`] for R) asks the runtime, as the
//! caller, where it lives: its executable, installation, library paths. [`plan`] turns that
//! into read-only binds of the real paths, the symlinks to recreate so every path the runtime
//! uses resolves inside as outside, and the few variables that make its search path the same
//! inside. It refuses to expose what is not code: a home directory, the course, the Jupyter
//! runtime directory (the keys of live kernels), or a top-level directory of the host.

use serde::Serialize;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: more than 40 symlinks to follow")]
    SymlinkLoop { path: PathBuf },
    #[error("{runtime} needs {path} ({role}) in the sandbox, but {why}, so it is never bound.\nFix: {fix}")]
    Refused { runtime: PathBuf, path: PathBuf, role: String, why: String, fix: String },
}

/// Run `program args` to ask a runtime about itself: with our credentials (callers become the
/// instructor first), in `/`, stdin empty, and an environment of nothing of the caller's but
/// `HOME` and the variables named in `pass` (those that change where the runtime looks).
pub fn ask(program: &Path, args: &[&str], pass: &[&str]) -> std::io::Result<std::process::Output> {
    std::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(scrubbed_env(pass))
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .output()
}

/// The environment [`ask`] gives: a plain `PATH` and `LANG`, and the caller's `HOME` and
/// `pass` variables, when set.
pub fn scrubbed_env(pass: &[&str]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    for k in std::iter::once("HOME").chain(pass.iter().copied()) {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    env
}

/// The role of an entry of the runtime's search path (`sys.path`, `.libPaths()`).
pub const SEARCH_PATH_ENTRY: &str = "a search path entry";

/// One path the runtime uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub path: PathBuf,
    /// What it is, for messages (`sys.prefix`, `an R library`).
    pub role: String,
    /// A per-user library: bound by itself (and said so), never the home around it.
    pub alone: bool,
}

impl Need {
    pub fn new(path: &Path, role: &str) -> Need {
        Need { path: path.to_path_buf(), role: role.to_string(), alone: false }
    }

    pub fn alone(mut self) -> Need {
        self.alone = true;
        self
    }
}

/// What a runtime said about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    /// The program as the kernelspec will start it.
    pub executable: PathBuf,
    pub paths: Vec<Need>,
    /// Put first on the sandbox's `PATH` (the runtime's own `bin`).
    pub bin_dir: Option<PathBuf>,
    /// Variables baked into the kernelspec (the search path the runtime was asked with).
    pub env: Vec<(String, String)>,
    /// The Jupyter runtime directory (live kernels' keys): never bound.
    pub runtime_dir: Option<PathBuf>,
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

/// The sandbox's share of a kernel's runtime: read-only binds, symlinks recreated, variables.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Runtime {
    /// The program as the kernelspec names it (`sys.executable`, symlinks and all: a venv is
    /// recognised by the path its python was started through).
    pub executable: PathBuf,
    pub binds: Vec<PathBuf>,
    pub links: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    /// What was narrowed, said plainly.
    pub notes: Vec<String>,
}

/// Directories of the host that are never bound whole: each holds far more than code.
const NEVER_WHOLE: &[&str] =
    &["/", "/home", "/root", "/tmp", "/var", "/var/tmp", "/srv", "/opt", "/etc", "/run", "/mnt", "/media", "/boot"];

/// What the sandbox must show of a runtime (paths are resolved on this host, as the caller
/// sees them), or why it refuses to.
pub fn plan(n: &Needs, ctx: &Context) -> Result<Runtime, RuntimeError> {
    let mut reals: Vec<PathBuf> = Vec::new();
    let mut links: Vec<PathBuf> = Vec::new();
    let mut notes = Vec::new();
    for need in &n.paths {
        let (real, hops) = resolve(&need.path)?;
        refuse_if_not_code(n, ctx, need, &real)?;
        if need.alone {
            notes.push(format!(
                "{} {} is bound by itself, not the home directory around it",
                need.role,
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
    if let Some(bin) = &n.bin_dir {
        if !ctx.policy_path.split(':').any(|d| Path::new(d) == bin) {
            let path = if ctx.policy_path.is_empty() {
                bin.display().to_string()
            } else {
                format!("{}:{}", bin.display(), ctx.policy_path)
            };
            env.push(("PATH".to_string(), path));
        }
    }
    env.extend(n.env.iter().cloned());
    Ok(Runtime { executable: n.executable.clone(), binds, links: kept_links, env, notes })
}

fn refuse_if_not_code(n: &Needs, ctx: &Context, need: &Need, real: &Path) -> Result<(), RuntimeError> {
    let (path, role) = (need.path.as_path(), need.role.as_str());
    let refuse = |why: String, fix: String| {
        Err(RuntimeError::Refused {
            runtime: n.executable.clone(),
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
            "install the runtime and its packages under a directory of their own (a venv, a conda environment, /opt/<name>)".into(),
        );
    }
    let within = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    if let Some(home) = &ctx.home {
        if home.starts_with(real) {
            return refuse(
                format!("{}{shown} is or holds the home directory {}", path.display(), home.display()),
                "install the runtime under a directory of its own (e.g. `python3 -m venv ~/venvs/grading`, a pyenv or conda environment) and use that one; only package libraries inside a home are ever bound".into(),
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
                if role == SEARCH_PATH_ENTRY {
                    "take it off the search path (PYTHONPATH or the .pth file that adds it; R_LIBS), or move the code it holds out of the course directory".into()
                } else {
                    "make the environment outside the course directory".into()
                },
            );
        }
    }
    if let Some(rt) = &n.runtime_dir {
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
pub fn resolve(path: &Path) -> Result<(PathBuf, Vec<PathBuf>), RuntimeError> {
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
                    return Err(RuntimeError::SymlinkLoop { path: path.into() });
                }
                let to = std::fs::read_link(&next).map_err(|source| RuntimeError::Io { path: next.clone(), source })?;
                links.push(next);
                if to.is_absolute() {
                    real = PathBuf::from("/");
                }
                push_components(&mut todo, &to);
            }
            Ok(_) => real = next,
            Err(source) => return Err(RuntimeError::Io { path: next, source }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlink_chains_are_followed_and_each_hop_kept() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in ["opt/py/bin", "srv/venv/bin", "links"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::write(r.join("opt/py/bin/python3.11"), "").unwrap();
        symlink("python3.11", r.join("opt/py/bin/python3")).unwrap();
        symlink(r.join("opt/py/bin/python3"), r.join("links/py")).unwrap();
        symlink(r.join("links/py"), r.join("srv/venv/bin/python")).unwrap();
        let r = d.path().canonicalize().unwrap();
        let (real, hops) = resolve(&r.join("srv/venv/bin/python")).unwrap();
        assert_eq!(real, r.join("opt/py/bin/python3.11"));
        assert_eq!(hops, [r.join("srv/venv/bin/python"), r.join("links/py"), r.join("opt/py/bin/python3")]);
    }

    #[test]
    fn outermost_paths_only() {
        let o = outermost(vec!["/a/b".into(), "/a".into(), "/c".into(), "/a/b/c".into(), "/ab".into()]);
        assert_eq!(o, [PathBuf::from("/a"), "/ab".into(), "/c".into()]);
    }
}

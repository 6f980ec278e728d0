//! Kernelspecs, and their sandboxed twins.
//!
//! nbgrader starts each notebook's kernel through jupyter_client, by the kernelspec name the
//! notebook names. A twin is a kernelspec of ours whose argv is `isolate-grade kernel [binds]
//! -- <the original argv>`: the same kernel, started in the sandbox. What a twin binds comes
//! from the kernel's own runtime, asked as the caller: a Python kernel (`python -m MODULE`:
//! ipykernel, xeus-python, octave_kernel...) from its interpreter ([`crate::python`]), IRkernel
//! from R ([`crate::rlang`]); any other program gets its executable only, and whatever else it
//! needs comes from the policy (`[[bind]]`), which the preflight then proves.
//!
//! [`route`] picks a notebook's twin exactly as `src/route.py` does inside nbgrader (that file
//! is the one nbgrader runs; this is for the batch's preflight, before anything is graded).

use crate::python::{self, PythonError};
use crate::rlang::{self, RError};
use crate::runtime::{Context, Need, Runtime, RuntimeError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The routing code nbgrader runs (the config block, and the batch's workers).
pub const ROUTE_PY: &str = include_str!("route.py");

#[derive(Debug, thiserror::Error)]
pub enum KernelsError {
    #[error("{python}: {source}")]
    Start { python: PathBuf, source: std::io::Error },
    #[error("listing the kernelspecs with {python} failed:\n{stderr}")]
    List { python: PathBuf, stderr: String },
    #[error("kernelspec {name:?} ({dir}): {reason}")]
    Unusable { name: String, dir: PathBuf, reason: String },
    #[error("kernelspec {name:?}: {source}")]
    Python { name: String, source: Box<PythonError> },
    #[error("kernelspec {name:?}: {source}")]
    R { name: String, source: Box<RError> },
    #[error("kernelspec {name:?}: {source}")]
    Runtime { name: String, source: Box<RuntimeError> },
}

/// A kernelspec as the Jupyter of nbgrader's Python finds it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Spec {
    #[serde(default)]
    pub name: String,
    pub resource_dir: PathBuf,
    pub argv: Vec<String>,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub language: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub interrupt_mode: Option<String>,
    #[serde(default)]
    pub metadata: Value,
}

impl Spec {
    /// One of ours (a twin, or the batch's): never wrapped again.
    pub fn is_twin(&self) -> bool {
        self.metadata.get("isolate_grade").is_some()
    }

    /// The kernel a twin wraps.
    pub fn wraps(&self) -> Option<&str> {
        self.metadata.get("isolate_grade")?.get("wraps")?.as_str()
    }
}

const LIST: &str = r#"
import json, os, sys
from jupyter_client.kernelspec import KernelSpecManager
out = {}
# the Jupyter path's, then the twins `isolate-grade install` keeps off it (kernelspec::twin_home)
twins = os.path.join(sys.prefix, "share", "isolate-grade", "jupyter", "kernels")
for ksm in (KernelSpecManager(), KernelSpecManager(kernel_dirs=[twins], ensure_native_kernel=False)):
    for name, d in ksm.get_all_specs().items():
        if name not in out:
            s = dict(d["spec"])
            s["name"], s["resource_dir"] = name, d["resource_dir"]
            out[name] = s
print(json.dumps(out))
"#;

/// The variables that change where Jupyter finds kernelspecs: the listing sees the caller's
/// (and those that change the interpreter's `sys.path`, as its probe did).
const JUPYTER_VARIABLES: &[&str] = &["JUPYTER_PATH", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR"];

/// Every kernelspec `python`'s Jupyter finds (as nbgrader run by it would), and the twins
/// `install` made for it ([`Spec::is_twin`]: a notebook may name one, written with it
/// selected in JupyterLab when an earlier version put twins on the Jupyter path, or with
/// `JUPYTER_PATH` pointing at them).
pub fn list(python: &Path) -> Result<Vec<Spec>, KernelsError> {
    let pass: Vec<&str> = JUPYTER_VARIABLES.iter().chain(python::PATH_VARIABLES).copied().collect();
    let out = crate::runtime::ask(python, &["-c", LIST], &pass)
        .map_err(|source| KernelsError::Start { python: python.into(), source })?;
    let stderr = || crate::escape::text(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(KernelsError::List { python: python.into(), stderr: stderr() });
    }
    let found: BTreeMap<String, Spec> = serde_json::from_slice(&out.stdout)
        .map_err(|e| KernelsError::List { python: python.into(), stderr: format!("{e}\n{}", stderr()) })?;
    Ok(found.into_values().collect())
}

/// The kernel jupyter_client starts for `python3` when no kernelspec says otherwise: the
/// client's own interpreter with ipykernel.
pub fn native_python3(client: &python::Probe) -> Spec {
    Spec {
        name: "python3".into(),
        resource_dir: client.prefix.join("share/jupyter/kernels/python3"),
        argv: ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"].map(String::from).into(),
        display_name: "Python 3 (ipykernel)".into(),
        language: "python".into(),
        env: BTreeMap::new(),
        interrupt_mode: None,
        metadata: Value::Null,
    }
}

/// How a kernel is started, read from its argv.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `python -m MODULE ...` (ipykernel_launcher, xpython_launcher, octave_kernel...).
    Python { module: String },
    /// IRkernel: `R --slave -e IRkernel::main() --args {connection_file}`.
    R,
    /// Anything else: its executable, and what the policy binds.
    Program,
}

pub fn kind(argv: &[String]) -> Kind {
    if let Some(i) = module_flag(argv) {
        if let Some(module) = argv.get(i + 1) {
            return Kind::Python { module: module.clone() };
        }
    }
    let base = argv.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());
    match base.as_deref() {
        Some("R") if argv.iter().any(|a| a.contains("IRkernel::main")) => Kind::R,
        _ => Kind::Program,
    }
}

/// Where `-m` is in `python [interpreter options] -m MODULE ...`: `ipykernel install` writes
/// `python -Xfrozen_modules=off -m ipykernel_launcher` (the debugger wants it on 3.11+).
fn module_flag(argv: &[String]) -> Option<usize> {
    let mut i = 1;
    while let Some(a) = argv.get(i) {
        match a.as_str() {
            "-m" => return Some(i),
            "-X" | "-W" => i += 2, // their value is the next argument
            a if a.starts_with('-') && a != "-" && a != "-c" => i += 1,
            _ => return None,
        }
    }
    None
}

/// The program a kernelspec's `argv[0]` names, as jupyter_client will start it: `python`,
/// `python3` and `python3.X` (the client's version) are the client's own interpreter; a bare
/// name is looked up on `PATH`; anything else must be absolute.
pub fn executable(argv0: &str, client: &python::Probe) -> Result<PathBuf, String> {
    let own = ["python".to_string(), "python3".to_string(), format!("python{}", client.version)];
    if own.iter().any(|o| o == argv0) {
        return Ok(client.executable.clone());
    }
    if argv0.contains('/') {
        let p = PathBuf::from(argv0);
        return if p.is_absolute() { Ok(p) } else { Err(format!("argv[0] {argv0:?} is a relative path")) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(argv0))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("argv[0] {argv0:?} is not on PATH"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What the preflight checks in a started twin, besides its `kernel_info` answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "check")]
pub enum Check {
    /// Imports (the kernel's module, the notebooks' top-level imports), compared with `python`
    /// outside the sandbox.
    Python { python: PathBuf, module: Option<String> },
    /// `library()`/`require()` of the notebooks, compared with `r` outside.
    R { r: PathBuf },
    /// An empty cell runs.
    Cell,
}

/// A sandboxed twin: its kernelspec, and what it was made from.
#[derive(Debug, Clone)]
pub struct Twin {
    pub name: String,
    pub wraps: String,
    /// Lower case, as notebooks are matched against it.
    pub language: String,
    pub runtime: Runtime,
    pub spec: Value,
    pub check: Check,
}

/// The twin of `spec` named `name`: `launcher` is `[sudo -n] isolate-grade kernel [--policy P]`.
/// `client` is nbgrader's Python (whose interpreter `python3` means), `ctx` what must never be
/// bound.
pub fn twin(
    spec: &Spec,
    name: &str,
    launcher: &[String],
    client: &python::Probe,
    ctx: &Context,
) -> Result<Twin, KernelsError> {
    let unusable =
        |reason: String| KernelsError::Unusable { name: spec.name.clone(), dir: spec.resource_dir.clone(), reason };
    let Some(argv0) = spec.argv.first() else { return Err(unusable("its argv is empty".into())) };
    if !spec.argv.iter().any(|a| a.contains("{connection_file}")) {
        return Err(unusable("its argv has no {connection_file}".into()));
    }
    if let Some((k, _)) = spec.env.iter().find(|(k, v)| v.contains("${") || k.contains('=') || v.contains('\0')) {
        return Err(unusable(format!("its env {k:?} can't be passed on as it is (a ${{...}} template?)")));
    }
    let exe = executable(argv0, client).map_err(&unusable)?;
    let kind = kind(&spec.argv);
    let (mut needs, check) = ask_runtime(spec, &kind, &exe)?;
    if needs.runtime_dir.is_none() {
        needs.runtime_dir = client.runtime_dir.clone();
    }
    let inner = inner_argv(spec, &kind, &mut needs, client);
    let runtime = crate::runtime::plan(&needs, ctx)
        .map_err(|e| KernelsError::Runtime { name: spec.name.clone(), source: Box::new(e) })?;
    for p in runtime.binds.iter().chain(&runtime.links) {
        if p.to_string_lossy().contains(':') {
            return Err(unusable(format!("{} has a ':' in its path, which a --bind can't name", p.display())));
        }
    }
    let out = kernelspec(spec, launcher, &runtime, inner, is_ipykernel(&kind));
    Ok(Twin {
        name: name.to_string(),
        wraps: spec.name.clone(),
        language: spec.language.to_lowercase(),
        runtime,
        spec: out,
        check,
    })
}

fn is_ipykernel(kind: &Kind) -> bool {
    matches!(kind, Kind::Python { module } if module == "ipykernel_launcher" || module == "ipykernel")
}

/// What the kernel's runtime says it needs, and what the preflight should try in it.
fn ask_runtime(spec: &Spec, kind: &Kind, exe: &Path) -> Result<(crate::runtime::Needs, Check), KernelsError> {
    Ok(match kind {
        Kind::Python { module } => {
            let wrap = |source| KernelsError::Python { name: spec.name.clone(), source: Box::new(source) };
            let p = python::probe_kernel_python(exe, module).map_err(wrap)?;
            // A Python program may run another language (octave_kernel drives Octave).
            let check = if spec.language.eq_ignore_ascii_case("python") {
                Check::Python { python: p.executable.clone(), module: Some(module.clone()) }
            } else {
                Check::Cell
            };
            (python::needs(&p), check)
        }
        Kind::R => {
            let p = rlang::probe(exe).map_err(|e| KernelsError::R { name: spec.name.clone(), source: Box::new(e) })?;
            (rlang::needs(&p), Check::R { r: exe.to_path_buf() })
        }
        Kind::Program => (
            crate::runtime::Needs {
                executable: exe.to_path_buf(),
                paths: vec![Need::new(exe, "the kernel's program")],
                bin_dir: exe.parent().map(Path::to_path_buf),
                ..Default::default()
            },
            Check::Cell,
        ),
    })
}

/// The wrapped argv: `argv[0]` as the runtime named itself, the kernelspec's templates filled
/// in as jupyter_client fills them (but `{connection_file}`, which it fills for the twin); a
/// `{resource_dir}` in use is then needed inside.
fn inner_argv(spec: &Spec, kind: &Kind, needs: &mut crate::runtime::Needs, client: &python::Probe) -> Vec<String> {
    let resource_dir = spec.resource_dir.display().to_string();
    let prefix = client.prefix.display().to_string();
    let mut inner: Vec<String> = spec.argv.clone();
    inner[0] = needs.executable.display().to_string();
    for a in inner.iter_mut().skip(1) {
        if a.contains("{resource_dir}") {
            *a = a.replace("{resource_dir}", &resource_dir);
            if !needs.paths.iter().any(|n| n.path == spec.resource_dir) {
                needs.paths.push(Need::new(&spec.resource_dir, "the kernelspec's resource directory"));
            }
        }
        *a = a.replace("{prefix}", &prefix);
    }
    if let (true, Some(m)) = (is_ipykernel(kind), module_flag(&inner)) {
        // No history database in the sandbox's HOME. (Not `hist_file=:memory:`: nbclient adds
        // that itself to kernels named python3, and IPython refuses it given twice.)
        inner.insert(m + 2, "--HistoryManager.enabled=False".into());
        // ipykernel's own start without its debugger (KERNEL_LAUNCHER_PY says why).
        inner.splice(m..m + 2, ["-c".to_string(), KERNEL_LAUNCHER_PY.to_string()]);
    }
    inner
}

/// What an ipykernel twin runs instead of `-m ipykernel_launcher`: the same, without the
/// Jupyter debugger's 65 ms of CPU per kernel.
pub const KERNEL_LAUNCHER_PY: &str = include_str!("kernel_launcher.py");

/// The twin's kernel.json: the launcher, what the runtime needs, then the wrapped argv.
fn kernelspec(spec: &Spec, launcher: &[String], runtime: &Runtime, inner: Vec<String>, ipykernel: bool) -> Value {
    let mut argv: Vec<String> = launcher.to_vec();
    for b in &runtime.binds {
        argv.extend(["--bind".into(), b.display().to_string()]);
    }
    for l in &runtime.links {
        argv.extend(["--link".into(), l.display().to_string()]);
    }
    // The runtime's variables, then the kernelspec's own (jupyter_client would set those).
    for (k, v) in runtime.env.iter().map(|(k, v)| (k, v)).chain(spec.env.iter()) {
        argv.extend(["--env".into(), format!("{k}={v}")]);
    }
    argv.push("--".into());
    argv.extend(inner);

    let mut metadata = match &spec.metadata {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    metadata["isolate_grade"] = json!({ "version": env!("CARGO_PKG_VERSION"), "wraps": spec.name });
    if ipykernel {
        metadata["debugger"] = json!(false); // src/kernel_launcher.py
    }
    let display = if spec.display_name.is_empty() { spec.name.as_str() } else { spec.display_name.as_str() };
    let mut out = json!({
        "argv": argv,
        "display_name": format!("{display} (sandboxed)"),
        "language": spec.language,
        "metadata": metadata,
    });
    // ipykernel: interrupts (nbgrader's cell timeout, and the one jupyter_client sends before
    // every shutdown) go as interrupt_request on the control channel, in order with the
    // shutdown_request behind them; ipykernel then signals itself. As SIGINT to this wrapper they
    // were relayed through the sandbox's init and could land after the shutdown had begun:
    // ipykernel 7.4 then aborted in libzmq ("pfd.revents & POLLIN", signaler.cpp) in 5 of 900
    // kernels; 0 of 600 with messages, 0 of 300 bare (bench/shutdown.py). Other kernels keep
    // their own mode: SIGINT reaches them through the sandbox's init.
    if ipykernel {
        out["interrupt_mode"] = json!("message");
    } else if let Some(mode) = &spec.interrupt_mode {
        out["interrupt_mode"] = json!(mode);
    }
    out
}

/// The routing tables of [`ROUTE_PY`]: kernel name to twin (`python` is `python3`, as in
/// jupyter_client; another twin of the same kernel among `specs`, install's when these are the
/// batch's, is that kernel), twin to language.
pub fn tables(twins: &[Twin], specs: &[Spec]) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut names: BTreeMap<String, String> = twins.iter().map(|t| (t.wraps.clone(), t.name.clone())).collect();
    if let Some(t) = names.get("python3").cloned() {
        names.entry("python".into()).or_insert(t);
    }
    for s in specs {
        if let Some(t) = s.wraps().and_then(|k| names.get(k)).cloned() {
            names.entry(s.name.clone()).or_insert(t);
        }
    }
    let languages = twins.iter().map(|t| (t.name.clone(), t.language.clone())).collect();
    (names, languages)
}

/// The kernel a notebook is started with (its kernelspec name, else the only kernelspec of its
/// language, else `python3`), as [`ROUTE_PY`] decides it; `Err` says why it would not run.
pub fn route(nb: &Value, specs: &[Spec]) -> Result<String, String> {
    let md = &nb["metadata"];
    let lang = md["kernelspec"]["language"]
        .as_str()
        .or(md["language_info"]["name"].as_str())
        .filter(|l| !l.is_empty())
        .map(str::to_lowercase);
    let kernel = |n: &str| {
        let n = if n == "python" { "python3" } else { n };
        specs.iter().find(|s| s.name == n && !s.is_twin())
    };
    let spec_lang = |n: &str| kernel(n).map(|s| s.language.to_lowercase());
    let name = match md["kernelspec"]["name"].as_str().filter(|n| !n.is_empty()) {
        // a twin stands for the kernel it wraps
        Some(n) => specs.iter().find(|s| s.name == n).and_then(Spec::wraps).unwrap_or(n).to_string(),
        None => match &lang {
            Some(l) if l == "python" && spec_lang("python3").is_some() => "python3".into(),
            Some(l) => {
                let found: Vec<&Spec> =
                    specs.iter().filter(|s| !s.is_twin() && s.language.to_lowercase() == *l).collect();
                match found.as_slice() {
                    [one] => one.name.clone(),
                    _ => return Err(format!("it names no kernel, and {} kernelspecs are for {l:?}", found.len())),
                }
            }
            None => "python3".into(),
        },
    };
    match (spec_lang(&name), &lang) {
        (None, _) => Err(format!("its kernel {name:?} is not a kernelspec here")),
        (Some(have), Some(want)) if have != *want => {
            Err(format!("it is in {want:?}, but its kernel {name:?} runs {have:?}"))
        }
        _ => Ok(if name == "python" { "python3".into() } else { name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, language: &str, argv: &[&str]) -> Spec {
        Spec {
            name: name.into(),
            resource_dir: format!("/k/{name}").into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            display_name: name.into(),
            language: language.into(),
            env: Default::default(),
            interrupt_mode: None,
            metadata: Value::Null,
        }
    }

    #[test]
    fn an_ipykernel_twin_starts_without_the_debugger_and_keeps_its_arguments() {
        let s = spec(
            "python3",
            "python",
            &["python", "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        );
        let mut needs = crate::runtime::Needs { executable: "/v/bin/python3.11".into(), ..Default::default() };
        let inner = inner_argv(&s, &kind(&s.argv), &mut needs, &python::Probe::default());
        assert_eq!(
            inner,
            [
                "/v/bin/python3.11",
                "-Xfrozen_modules=off",
                "-c",
                KERNEL_LAUNCHER_PY,
                "--HistoryManager.enabled=False",
                "-f",
                "{connection_file}"
            ]
        );
        // what the launcher must keep doing as ipykernel_launcher does
        assert!(KERNEL_LAUNCHER_PY.contains("sys.meta_path.remove(hook)"), "debugpy importable after the start");
        assert!(KERNEL_LAUNCHER_PY.contains("app.start()"));
        // not another kind of Python kernel
        let x = spec("xpython", "python", &["python", "-m", "xpython_launcher", "-f", "{connection_file}"]);
        assert_eq!(
            inner_argv(&x, &kind(&x.argv), &mut needs, &python::Probe::default())[1..3],
            ["-m", "xpython_launcher"]
        );
    }

    #[test]
    fn kernels_are_told_apart_by_how_they_start() {
        let k = |argv: &[&str]| kind(&argv.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert_eq!(
            k(&["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]),
            Kind::Python { module: "ipykernel_launcher".into() }
        );
        assert_eq!(
            k(&["python3.11", "-m", "xpython_launcher", "-f", "{connection_file}"]),
            Kind::Python { module: "xpython_launcher".into() }
        );
        // what `ipykernel install` writes on Python 3.11+
        assert_eq!(
            k(&["/v/bin/python", "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]),
            Kind::Python { module: "ipykernel_launcher".into() }
        );
        assert_eq!(
            k(&["python", "-X", "frozen_modules=off", "-E", "-m", "ipykernel", "-f", "{connection_file}"]),
            Kind::Python { module: "ipykernel".into() }
        );
        assert_eq!(k(&["python", "script.py", "-m", "x", "{connection_file}"]), Kind::Program);
        assert_eq!(k(&["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]), Kind::R);
        assert_eq!(k(&["/usr/lib/R/bin/R", "-e", "IRkernel::main()", "{connection_file}"]), Kind::R);
        assert_eq!(k(&["R", "-e", "other::main()", "{connection_file}"]), Kind::Program);
        assert_eq!(k(&["/opt/julia/bin/julia", "-i", "kernel.jl", "{connection_file}"]), Kind::Program);
    }

    #[test]
    fn python_names_are_the_clients_interpreter_as_in_jupyter_client() {
        let client = python::Probe { executable: "/v/bin/python".into(), version: "3.11".into(), ..Default::default() };
        for own in ["python", "python3", "python3.11"] {
            assert_eq!(executable(own, &client).unwrap(), Path::new("/v/bin/python"));
        }
        assert!(executable("python3.12", &client).map_or(true, |p| p != Path::new("/v/bin/python")));
        assert!(executable("bin/R", &client).is_err());
        assert_eq!(executable("/usr/bin/R", &client).unwrap(), Path::new("/usr/bin/R"));
    }

    #[test]
    fn a_program_twin_wraps_its_argv_with_the_kernelspecs_env_and_templates() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().canonicalize().unwrap();
        let exe = dir.join("opt/k/bin/kernel");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        std::fs::write(&exe, "").unwrap();
        let res = dir.join("share/kernels/k");
        std::fs::create_dir_all(&res).unwrap();
        let exe_s = exe.display().to_string();
        let mut s = spec("k", "Julia", &[&exe_s, "{resource_dir}/start.jl", "{connection_file}"]);
        s.resource_dir = res.clone();
        s.env.insert("JULIA_DEPOT_PATH".into(), "/opt/depot".into());
        s.interrupt_mode = Some("signal".into());
        let client = python::Probe::default();
        let t = twin(&s, "ig-k", &["isolate-grade".into(), "kernel".into()], &client, &Context::default()).unwrap();
        let argv: Vec<&str> = t.spec["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let res_s = res.display().to_string();
        let start = format!("{res_s}/start.jl");
        assert_eq!(argv[..2], ["isolate-grade", "kernel"]);
        assert!(argv.windows(2).any(|w| w == ["--bind", exe_s.as_str()]), "{argv:?}");
        assert!(argv.windows(2).any(|w| w == ["--bind", res_s.as_str()]), "{argv:?}");
        assert!(argv.windows(2).any(|w| w == ["--env", "JULIA_DEPOT_PATH=/opt/depot"]), "{argv:?}");
        let dashes = argv.iter().position(|a| *a == "--").unwrap();
        assert_eq!(argv[dashes + 1..], [exe_s.as_str(), start.as_str(), "{connection_file}"]);
        assert_eq!(t.spec["interrupt_mode"], "signal");
        assert_eq!(t.spec["metadata"]["isolate_grade"]["wraps"], "k");
        assert_eq!((t.language.as_str(), &t.check), ("julia", &Check::Cell));
        // what can't be passed on as it is
        let mut bad = s.clone();
        bad.env.insert("X".into(), "${HOME}/x".into());
        assert!(twin(&bad, "b", &[], &client, &Context::default()).is_err());
        let mut bad = s.clone();
        bad.argv.pop();
        let e = twin(&bad, "b", &[], &client, &Context::default()).unwrap_err().to_string();
        assert!(e.contains("{connection_file}"), "{e}");
    }

    #[test]
    fn notebooks_are_routed_by_name_then_language_never_across_languages() {
        let mut twin_of_ir = spec("isolate-grade-ir", "R", &["isolate-grade"]);
        twin_of_ir.metadata = json!({"isolate_grade": {"wraps": "ir"}});
        let specs = [
            spec("python3", "python", &["python"]),
            spec("ir", "R", &["R"]),
            spec("xpython", "python", &["python3.11"]),
            twin_of_ir,
        ];
        let nb = |ks: Value, li: Value| json!({"metadata": {"kernelspec": ks, "language_info": li}});
        let r = |n: &Value| route(n, &specs);
        assert_eq!(r(&nb(json!({"name": "ir", "language": "R"}), Value::Null)).unwrap(), "ir");
        assert_eq!(r(&nb(json!({"name": "xpython"}), json!({"name": "python"}))).unwrap(), "xpython");
        assert_eq!(r(&nb(json!({"name": "python"}), Value::Null)).unwrap(), "python3");
        assert_eq!(r(&nb(Value::Null, json!({"name": "R"}))).unwrap(), "ir");
        // written with install's twin selected: that twin's kernel
        assert_eq!(r(&nb(json!({"name": "isolate-grade-ir", "language": "R"}), Value::Null)).unwrap(), "ir");
        assert_eq!(r(&nb(Value::Null, json!({"name": "python"}))).unwrap(), "python3");
        assert_eq!(r(&json!({"metadata": {}})).unwrap(), "python3");
        let e = r(&nb(json!({"name": "python3", "language": "R"}), Value::Null)).unwrap_err();
        assert!(e.contains("runs \"python\""), "{e}");
        let e = r(&nb(json!({"name": "julia-1.10"}), Value::Null)).unwrap_err();
        assert!(e.contains("not a kernelspec"), "{e}");
        let e = r(&nb(Value::Null, json!({"name": "octave"}))).unwrap_err();
        assert!(e.contains("0 kernelspecs"), "{e}");
    }
}

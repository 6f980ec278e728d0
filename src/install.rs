//! `isolate-grade install`: sandboxed twins of the kernelspecs nbgrader's Jupyter finds, and
//! the block that makes nbgrader use them. Runs as the instructor (no privilege needed): asks
//! each kernel's runtime what it needs ([`crate::kernels`]), writes the twins into the prefix of
//! nbgrader's Python, starts each through its kernelspec ([`crate::preflight`]) and only then,
//! with `--course`, writes the marked block of the course's `nbgrader_config.py`. The batch
//! makes its private twins with the same [`crate::kernelspec`]. `--uninstall` removes both again.

use crate::cli::InstallArgs;
use crate::kernels::{self, Spec, Twin};
// `check` still reaches these through `install` (it is not this module's to change).
use crate::kernelspec::{install_twins, Launcher, Maker};
use crate::kernelspec::{read_notebooks, twin_home, KernelspecError};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod binary;
mod uninstall;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Making the twins: the Python, the kernelspecs found, the preflight.
    #[error(transparent)]
    Kernelspec(#[from] KernelspecError),
}

impl InstallError {
    /// 2 for bad input (a --binary or --python that does not run, a bad policy, an unknown
    /// --kernel), 3 when a kernel can't run in the sandbox (as in a batch's preflight) or
    /// writing fails.
    pub fn exit_code(&self) -> u8 {
        match self {
            InstallError::Invalid(_) => crate::exit::USAGE,
            InstallError::Kernelspec(e) => e.exit_code(),
            InstallError::Io { .. } => crate::exit::FAULT,
        }
    }
}

const BEGIN: &str = "# >>> isolate-grade >>>";
const END: &str = "# <<< isolate-grade <<<";

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
/// And it makes GenerateFeedback remove the hidden tests from the feedback
/// ([`crate::feedback::config_block`]).
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

{feedback}{END}
"#,
        route = kernels::ROUTE_PY.trim_end(),
        feedback = crate::feedback::config_block()
    )
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
        // the feedback redaction, once, inside the markers
        assert_eq!(block.matches("_isolate_grade_feedback(c)\n").count(), 1);
        assert!(block.find("_isolate_grade_feedback(c)").unwrap() < block.find(END).unwrap());
    }
}

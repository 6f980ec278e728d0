//! `isolate-grade install --uninstall`: remove what install added, and nothing else. The twins
//! named with the prefix from the prefix of nbgrader's Python (where install writes them:
//! only a kernelspec whose `kernel.json` says it is a twin, of the kernel its name says), and
//! with `--course` the marked block of the course's `nbgrader_config.py`
//! ([`super::without_block`]). Nothing to remove is no error: it can be run again.

use super::{without_block, InstallError, BEGIN};
use crate::cli::InstallArgs;
use crate::kernelspec::KernelspecError;
use crate::python;
use std::path::{Path, PathBuf};

pub fn execute(a: &InstallArgs) -> Result<u8, InstallError> {
    let python = match &a.python {
        Some(p) => std::path::absolute(p).map_err(|source| InstallError::Io { path: p.clone(), source })?,
        None => python::python_of_nbgrader().map_err(KernelspecError::from)?,
    };
    let client = python::probe_kernel_python(&python, "jupyter_client").map_err(KernelspecError::from)?;
    // where install puts them, and where earlier versions did (on the Jupyter path)
    let dirs =
        [crate::kernelspec::twin_home(&client.prefix).join("kernels"), client.prefix.join("share/jupyter/kernels")];
    let mut twins = Vec::new();
    for dir in &dirs {
        twins.extend(twins_in(dir, &a.twin_prefix)?);
    }
    let dir = &dirs[0];
    let mut removed = !twins.is_empty();
    for (name, spec_dir) in &twins {
        std::fs::remove_dir_all(spec_dir).map_err(|source| InstallError::Io { path: spec_dir.clone(), source })?;
        println!("removed the kernelspec {name:?} ({})", spec_dir.display());
    }
    if twins.is_empty() {
        println!("no kernelspec to remove: no twin named {}* in {}", a.twin_prefix, dir.display());
    }
    if let Some(course) = &a.course {
        let cfg = course.join("nbgrader_config.py");
        match std::fs::read_to_string(&cfg) {
            Ok(old) => {
                let new = without_block(&old);
                if new != old {
                    std::fs::write(&cfg, &new).map_err(|source| InstallError::Io { path: cfg.clone(), source })?;
                    println!("removed the isolate-grade block from {}", cfg.display());
                    removed = true;
                } else {
                    println!("{} has no isolate-grade block", cfg.display());
                }
                if new.contains(BEGIN) {
                    println!(
                        "warning: {} still has a line {BEGIN:?} without its end marker: left as it is",
                        cfg.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("{} does not exist", cfg.display()),
            Err(source) => return Err(InstallError::Io { path: cfg, source }),
        }
    }
    if removed {
        println!("a running Jupyter server (formgrader) keeps the old configuration until it is restarted");
    }
    Ok(0)
}

/// The twins with `prefix` in the kernelspec directory `dir`, by name: each a directory (not
/// a link) `prefix + K` whose `kernel.json` has `metadata.isolate_grade.wraps` K. (So the
/// twins of a longer prefix that starts with this one are not among them.)
pub(super) fn twins_in(dir: &Path, prefix: &str) -> Result<Vec<(String, PathBuf)>, InstallError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(InstallError::Io { path: dir.to_path_buf(), source }),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| InstallError::Io { path: dir.to_path_buf(), source })?;
        let Some(name) = entry.file_name().to_str().map(String::from) else { continue };
        if !name.starts_with(prefix) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let spec: Option<serde_json::Value> =
            std::fs::read(entry.path().join("kernel.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let wraps = spec.as_ref().and_then(|s| s["metadata"]["isolate_grade"]["wraps"].as_str());
        if wraps.is_some_and(|k| name == format!("{prefix}{k}")) {
            found.push((name, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::super::{with_block, END};
    use super::*;

    #[test]
    fn only_the_twins_of_the_prefix_are_found() {
        let t = tempfile::tempdir().unwrap();
        let spec = |name: &str, json: &str| {
            std::fs::create_dir(t.path().join(name)).unwrap();
            std::fs::write(t.path().join(name).join("kernel.json"), json).unwrap();
        };
        let twin = |wraps: &str| format!(r#"{{"argv": [], "metadata": {{"isolate_grade": {{"wraps": "{wraps}"}}}}}}"#);
        spec("ig-python3", &twin("python3"));
        spec("ig-ir", &twin("ir"));
        spec("ig-other-python3", &twin("python3")); // another prefix's twin
        spec("ig-plain", r#"{"argv": [], "metadata": {}}"#); // not a twin
        spec("ig-renamed", &twin("python3")); // a twin, but not named as install names it
        spec("ig-broken", "{");
        spec("python3", r#"{"argv": []}"#);
        spec("other-python3", &twin("python3"));
        spec("x-py2", &twin("py2"));
        std::os::unix::fs::symlink(t.path().join("x-py2"), t.path().join("ig-py2")).unwrap(); // not install's
        let names = |prefix: &str| -> Vec<String> {
            twins_in(t.path(), prefix)
                .unwrap()
                .into_iter()
                .map(|(n, p)| {
                    assert_eq!(p, t.path().join(&n));
                    n
                })
                .collect()
        };
        assert_eq!(names("ig-"), ["ig-ir", "ig-python3"]);
        assert_eq!(names("ig-other-"), ["ig-other-python3"]);
        assert!(names("nope-").is_empty());
        assert!(twins_in(&t.path().join("missing"), "ig-").unwrap().is_empty());
    }

    #[test]
    fn without_block_takes_out_what_with_block_put_in() {
        let block = format!("{BEGIN}\nc.X = 1\n{END}\n");
        for old in ["", "c = get_config()\n", "c = get_config()\n\n# end\n"] {
            assert_eq!(without_block(&with_block(old, &block)), old, "{old:?}");
        }
        // a text that did not end its last line gets the newline with_block added before
        assert_eq!(without_block(&with_block("c = 1", &block)), "c = 1\n");
        // what is after the block, byte for byte
        let around = format!("a = 1\r\n{block}b = 2\n  # x\n");
        assert_eq!(without_block(&around), "a = 1\r\nb = 2\n  # x\n");
        // no newline after the end marker
        assert_eq!(without_block(&format!("a\n{BEGIN}\nx\n{END}")), "a\n");
        // every block, if there are two
        assert_eq!(without_block(&format!("a\n{block}b\n{block}c\n")), "a\nb\nc\n");
    }

    #[test]
    fn without_block_leaves_a_text_without_a_whole_block_as_it_is() {
        for text in [
            "c = get_config()\n".to_string(),
            format!("a\n{BEGIN}\nno end\n"),
            format!("a\n{END}\nb\n{BEGIN}\n"),
            String::new(),
        ] {
            assert_eq!(without_block(&text), text);
        }
    }
}

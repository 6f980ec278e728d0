//! What an R installation needs inside the sandbox (IRkernel's), found by asking R.
//!
//! R's own answers, not guesses: `R.home()` (on Debian `/usr/lib/R`, whose `etc/` files are
//! symlinks into `/etc/R`), the share, include and doc directories its start-up script sets,
//! and `.libPaths()` (site libraries, and a per-user library that may live in the home
//! directory: that one is bound alone and found through `R_LIBS_USER`). Asked as the caller, in
//! the same scrubbed environment as a Python probe, with the caller's `R_LIBS*` variables,
//! which the kernelspec then carries.

use crate::runtime::{Need, Needs, SEARCH_PATH_ENTRY};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RError {
    #[error("{r}: {source}")]
    Start { r: PathBuf, source: std::io::Error },
    #[error("{r} failed when asked where it lives:\n{stderr}")]
    Failed { r: PathBuf, stderr: String },
    #[error("{r}: unexpected answer ({reason})")]
    Answer { r: PathBuf, reason: String },
    #[error("{r} has no IRkernel package, so the kernel can't start: install it (Debian: r-cran-irkernel; or `install.packages(\"IRkernel\")`)")]
    NoIrkernel { r: PathBuf },
}

/// The caller's variables that change `.libPaths()`: R sees them when asked, the kernel gets
/// the same values.
pub const PATH_VARIABLES: &[&str] = &["R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"];

/// Each answer line starts with this, so that whatever a site profile prints is ignored.
const MARK: &str = "ISOLATE_GRADE\t";

const PROBE: &str = r#"local({
  o <- function(k, v) for (x in v) if (!is.na(x) && nzchar(x)) cat("ISOLATE_GRADE\t", k, "\t", x, "\n", sep = "")
  o("home", R.home())
  o("etc", list.files(R.home("etc"), full.names = TRUE))
  for (k in c("R_SHARE_DIR", "R_INCLUDE_DIR", "R_DOC_DIR")) o("dir", Sys.getenv(k))
  o("lib", .libPaths())
  o("user_lib", path.expand(Sys.getenv("R_LIBS_USER")))
  o("irkernel", nzchar(system.file(package = "IRkernel")))
  o("version", paste(R.version$major, R.version$minor, sep = "."))
})"#;

/// R's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    pub r: PathBuf,
    pub version: String,
    pub home: PathBuf,
    /// The files of `R.home("etc")` (Debian: links into /etc/R).
    pub etc: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    pub libs: Vec<PathBuf>,
    pub user_lib: Option<PathBuf>,
    pub has_irkernel: bool,
    /// Those of [`PATH_VARIABLES`] R was asked with.
    pub path_variables: Vec<(String, String)>,
}

/// Ask the R at `r` (absolute) where it lives. Runs with our credentials (the caller's).
pub fn probe(r: &Path) -> Result<Probe, RError> {
    let passed: Vec<(String, String)> =
        PATH_VARIABLES.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
    let out = crate::runtime::ask(r, &["--slave", "--no-save", "--no-restore", "-e", PROBE], PATH_VARIABLES)
        .map_err(|source| RError::Start { r: r.into(), source })?;
    if !out.status.success() {
        let stderr = crate::escape::text(&String::from_utf8_lossy(&out.stderr));
        return Err(RError::Failed { r: r.into(), stderr });
    }
    let mut p = parse(r, &String::from_utf8_lossy(&out.stdout))?;
    p.path_variables = passed;
    if !p.has_irkernel {
        return Err(RError::NoIrkernel { r: r.into() });
    }
    Ok(p)
}

fn parse(r: &Path, text: &str) -> Result<Probe, RError> {
    let mut p = Probe { r: r.to_path_buf(), ..Default::default() };
    for line in text.lines().filter_map(|l| l.strip_prefix(MARK)) {
        let (key, value) = line.split_once('\t').unwrap_or((line, ""));
        let path = PathBuf::from(value);
        match key {
            "home" => p.home = path,
            "etc" => p.etc.push(path),
            "dir" if path.exists() => p.dirs.push(path),
            "lib" => p.libs.push(path),
            "user_lib" => p.user_lib = Some(path),
            "irkernel" => p.has_irkernel = value == "TRUE",
            "version" => p.version = value.to_string(),
            _ => {}
        }
    }
    if !p.home.is_absolute() || p.libs.iter().any(|l| !l.is_absolute()) {
        return Err(RError::Answer { r: r.into(), reason: "R.home() and .libPaths() must be absolute".into() });
    }
    Ok(p)
}

/// The paths R uses, and the variables that give it the same libraries inside.
pub fn needs(p: &Probe) -> Needs {
    let mut paths = vec![Need::new(&p.r, "the R executable"), Need::new(&p.home, "R.home()")];
    paths.extend(p.etc.iter().map(|e| Need::new(e, "R's start-up configuration")));
    paths.extend(p.dirs.iter().map(|d| Need::new(d, "an R share directory")));
    let mut env = p.path_variables.clone();
    for lib in &p.libs {
        if Some(lib) == p.user_lib.as_ref() {
            paths.push(Need::new(lib, "the per-user R library").alone());
            // Inside, HOME is the policy's: the user library is named instead.
            env.retain(|(k, _)| k != "R_LIBS_USER");
            env.push(("R_LIBS_USER".into(), lib.display().to_string()));
        } else {
            paths.push(Need::new(lib, SEARCH_PATH_ENTRY));
        }
    }
    Needs { executable: p.r.clone(), paths, bin_dir: p.r.parent().map(Path::to_path_buf), env, runtime_dir: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_and_what_else_r_prints_ignored() {
        let text = "Welcome from Rprofile.site\nISOLATE_GRADE\thome\t/usr/lib/R\n\
            ISOLATE_GRADE\tetc\t/usr/lib/R/etc/Renviron\nISOLATE_GRADE\tlib\t/home/i/R/lib\n\
            ISOLATE_GRADE\tlib\t/usr/lib/R/library\nISOLATE_GRADE\tuser_lib\t/home/i/R/lib\n\
            ISOLATE_GRADE\tirkernel\tTRUE\nISOLATE_GRADE\tversion\t4.2.2\nhome\t/etc\n";
        let p = parse(Path::new("/usr/bin/R"), text).unwrap();
        assert_eq!(p.home, Path::new("/usr/lib/R"));
        assert_eq!(p.etc, [PathBuf::from("/usr/lib/R/etc/Renviron")]);
        assert!(p.has_irkernel && p.version == "4.2.2");
        let n = needs(&p);
        let user = n.paths.iter().find(|x| x.path == Path::new("/home/i/R/lib")).unwrap();
        assert!(user.alone, "{n:?}");
        assert!(n.env.contains(&("R_LIBS_USER".into(), "/home/i/R/lib".into())));
        assert!(parse(Path::new("/usr/bin/R"), "ISOLATE_GRADE\thome\tlib/R\n").is_err());
    }
}

//! `isolate-grade install`: the sandboxed kernelspec for a Python, and the line that makes
//! nbgrader use it. Runs as the instructor (no privilege needed); writes only the kernelspec
//! directory and, with `--course`, a marked block of the course's `nbgrader_config.py`.

use crate::cli::InstallArgs;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

const BEGIN: &str = "# >>> isolate-grade >>>";
const END: &str = "# <<< isolate-grade <<<";

/// What we learn from the Python itself.
#[derive(Debug, serde::Deserialize)]
pub struct PythonInfo {
    pub executable: String,
    pub prefix: String,
    pub has_ipykernel: bool,
}

/// Ask a Python (given, or the one that runs `nbgrader`) where it lives; it must have ipykernel.
pub fn probe_python(python: Option<&Path>) -> Result<PythonInfo, InstallError> {
    let python = match python {
        Some(p) => p.to_path_buf(),
        None => python_of_nbgrader()?,
    };
    let probe = "import sys, json, importlib.util as u; print(json.dumps({'executable': sys.executable, \
                 'prefix': sys.prefix, 'has_ipykernel': u.find_spec('ipykernel') is not None}))";
    let out = Command::new(&python)
        .args(["-I", "-c", probe])
        .output()
        .map_err(|e| InstallError::Invalid(format!("{}: {e}", python.display())))?;
    if !out.status.success() {
        return Err(InstallError::Invalid(format!("{}: {}", python.display(), String::from_utf8_lossy(&out.stderr))));
    }
    let info: PythonInfo = serde_json::from_slice(&out.stdout)
        .map_err(|e| InstallError::Invalid(format!("{}: unexpected answer: {e}", python.display())))?;
    if !info.has_ipykernel {
        return Err(InstallError::Invalid(format!("{} has no ipykernel: pip install ipykernel", info.executable)));
    }
    Ok(info)
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

pub fn execute(a: InstallArgs) -> Result<u8, InstallError> {
    let info = probe_python(a.python.as_deref())?;
    let prefix = Launcher::new(a.sudo, None)?.kernel(a.policy.as_deref());
    let display_name = a.display_name.clone().unwrap_or_else(|| format!("Python 3 (isolate-grade {})", a.name));
    let spec = kernelspec(prefix, &info, &display_name);
    let dir = Path::new(&info.prefix).join("share/jupyter/kernels").join(&a.name);
    write_kernelspec(&dir, &spec)?;
    println!("installed kernelspec {:?} in {}", a.name, dir.display());
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

/// The kernelspec: `prefix` (`[sudo -n] isolate-grade kernel [options]`) in front of
/// ipykernel, the Python's environment bound read-only (`/usr` is in every policy already).
pub fn kernelspec(prefix: Vec<String>, info: &PythonInfo, display_name: &str) -> serde_json::Value {
    let mut argv = prefix;
    if !Path::new(&info.prefix).starts_with("/usr") {
        argv.extend(["--bind".into(), info.prefix.clone()]);
    }
    argv.push("--".into());
    argv.extend([
        info.executable.clone(),
        "-m".into(),
        "ipykernel_launcher".into(),
        // nbclient only adds this for kernels named python3; without it IPython writes a
        // history database into the sandbox's HOME on every start
        "--HistoryManager.hist_file=:memory:".into(),
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

fn config_block(name: &str) -> String {
    format!(
        "{BEGIN}\n# Autograde in the sandbox: every notebook runs in this kernel (see `isolate-grade install`).\nc.Execute.kernel_name = {name:?}\n{END}\n"
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

/// The Python that runs `nbgrader`: the interpreter in its script's `#!` line.
pub fn python_of_nbgrader() -> Result<PathBuf, InstallError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let script = std::env::split_paths(&path)
        .map(|d| d.join("nbgrader"))
        .find(|p| p.is_file())
        .ok_or_else(|| InstallError::Invalid("nbgrader is not on PATH: give --python".into()))?;
    let text = std::fs::read_to_string(&script).map_err(|source| InstallError::Io { path: script.clone(), source })?;
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map(|l| PathBuf::from(l.split_whitespace().next().unwrap_or("")))
        .filter(|p| p.is_absolute())
        .ok_or_else(|| InstallError::Invalid(format!("{}: no interpreter line: give --python", script.display())))
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
        assert!(other.contains("c.Execute.kernel_name = \"other\""));
        assert!(!other.contains("\"ig\""));
        assert_eq!(with_block("", &block), block);
    }
}

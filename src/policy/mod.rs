//! Policies: what a sandboxed run may see and use.
//!
//! A policy is data (`policies/*.toml`, schema in [`schema`]), parsed, then validated into
//! [`Policy`] before any privileged step; the system config ([`crate::config`]) caps every
//! limit, and a policy or a command-line flag may only stay within those caps.
//!
//! ```
//! let text = include_str!("../../policies/default.toml");
//! let policy = isolate_grade::policy::Policy::parse("default.toml", text).unwrap();
//! assert!(policy.limits.memory >= 64 << 20);
//! ```

pub mod schema;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{check_env, check_env_name, check_memory, sandbox_path, MIN_MEMORY};

/// Policies compiled into the binary, so `--policy default` works on any machine.
pub const BUILTIN: &[(&str, &str)] =
    &[("default", include_str!("../../policies/default.toml")), ("strict", include_str!("../../policies/strict.toml"))];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A value that parsed but is not acceptable: names the file, the key and why.
    #[error("{file}: {key}: {reason}")]
    Invalid { file: String, key: String, reason: String },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("policy {name:?} not found (built-in: {builtin}; or give a path to a .toml file)")]
    NotFound { name: String, builtin: String },
    #[error("cannot read policy {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcMode {
    /// `subset=pid`: only process directories; no `/proc/sys`, `/proc/kcore`, ...
    PidsOnly,
    /// The whole procfs of the sandbox's PID namespace (still `hidepid=2`), with the files
    /// that leak kernel state masked and `/proc/sys` read-only.
    Full,
    /// No procfs: `/proc` is an empty directory. For a container whose own `/proc` has
    /// masked paths, where the kernel refuses a fresh procfs to a user namespace (rootless).
    /// ipykernel runs without it (and numpy, pandas, matplotlib); psutil's process and memory
    /// queries fail, and ipykernel logs one at shutdown.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockMode {
    /// Apply where the kernel supports it, record when it does not.
    Auto,
    /// Refuse to run without it.
    Required,
    Off,
}

/// Whether the cgroup limits (memory, pids, CPU bandwidth, the sandbox's total CPU time) must
/// hold. Only rootless mode can lack them: the privileged helper always has its cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitsMode {
    /// Refuse to run where they can't be enforced (rootless without a delegated cgroup).
    Required,
    /// Run anyway, with what remains: rlimits (open files, file size, stack, processes per
    /// uid in the sandbox's own user namespace) and the supervisor's total CPU time (summed over the
    /// process tree, [`crate::proctree`]) and wall-clock limits; the report says which limits
    /// were not enforced.
    BestEffort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompAction {
    /// A denied syscall kills the process: the report says `seccomp-violation`.
    Kill,
    /// A denied syscall fails with `EPERM` (for debugging a policy).
    Errno,
    /// As `kill` for the deny list, but a syscall outside the allow list is let through and
    /// logged by the kernel (audit type 1326, `dmesg`): for finding what a new library needs.
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SymlinkMode {
    Error,
    Copy,
}

/// Validated limits. Every field is positive and within the system maximum.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Limits {
    pub memory: u64,
    #[serde(serialize_with = "crate::report::secs")]
    pub cpu_time: Duration,
    #[serde(serialize_with = "crate::report::secs")]
    pub wall_time: Duration,
    pub pids: u64,
    /// Thousandths of a core.
    pub cpu_quota_millicores: u64,
    pub open_files: u64,
    pub file_size: u64,
    pub stack: u64,
    pub tmp_size: u64,
    pub shm_size: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    /// Absolute, normalized host path (no `.`, `..` or empty components).
    pub source: PathBuf,
    /// Absolute, normalized path inside the sandbox.
    pub target: PathBuf,
    pub writable: bool,
    pub optional: bool,
    pub symlink: SymlinkMode,
}

/// A policy that passed validation. Only this type reaches the privileged steps.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub description: String,
    pub limits: Limits,
    /// Sorted so that a parent target is mounted before anything beneath it.
    pub binds: Vec<Bind>,
    pub env: Vec<(String, String)>,
    pub hostname: String,
    pub workdir: PathBuf,
    pub proc: ProcMode,
    pub landlock: LandlockMode,
    pub seccomp: SeccompAction,
    /// At most this many pseudo-terminals, in a devpts instance of the sandbox's own (`0`:
    /// no `/dev/ptmx` at all). Kernels that drive a REPL through a pty need them (pexpect:
    /// `octave_kernel` and other metakernel kernels). Never the caller's terminal.
    pub ptys: u32,
    pub limits_mode: LimitsMode,
}

/// The most pseudo-terminals a policy may give.
pub const MAX_PTYS: u32 = 64;

impl Policy {
    /// Parse and validate policy text; `file` is only used in error messages.
    pub fn parse(file: &str, text: &str) -> Result<Policy, PolicyError> {
        let raw: schema::PolicyFile = toml::from_str(text)
            .map_err(|e| PolicyError::Syntax { file: file.to_string(), message: toml_error(text, &e) })?;
        let name =
            Path::new(file).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| file.to_string());
        validate::validate(file, name, raw)
    }

    /// A built-in policy by name.
    pub fn builtin(name: &str) -> Result<Policy, PolicyError> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| PolicyError::NotFound {
            name: name.to_string(),
            builtin: BUILTIN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        })?;
        Policy::parse(&format!("{name}.toml (built-in)"), text)
    }
}

/// Whether `--policy X` names a file rather than a policy by name.
pub fn is_path(spec: &str) -> bool {
    spec.contains('/') || spec.ends_with(".toml")
}

/// toml's errors span several lines with a source excerpt; we promise one line:
/// `line N: message`.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!("line {}: {}", text[..span.start.min(text.len())].matches('\n').count() + 1, e.message()),
        None => e.message().to_string(),
    }
}

/// Check a combined list (policy plus `--bind`) for duplicates and reserved targets, then
/// order it parents-first. The error carries the index of the offending bind.
pub fn validate_binds(binds: &mut [Bind]) -> Result<(), (usize, String)> {
    validate::check_binds(binds)?;
    validate::sort_binds(binds);
    Ok(())
}

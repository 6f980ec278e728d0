//! The policy file as written by people: `policies/*.toml`, parsed with serde and
//! `deny_unknown_fields` so a typo is an error, not a silently ignored key. Nothing here is
//! trusted or checked yet; [`super::validate`] turns it into a [`super::Policy`].

use serde::Deserialize;
use std::collections::BTreeMap;

/// A number or a string with a unit, as TOML allows either: `memory = "1G"` or
/// `pids = 64`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    /// The value as text for the unit parsers; a negative number stays visibly negative.
    pub fn as_text(&self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// One line for `isolate-grade check` and the report.
    pub description: Option<String>,
    pub limits: LimitsFile,
    #[serde(default)]
    pub sandbox: SandboxFile,
    /// Host paths made visible inside, in order; parents are mounted before children.
    #[serde(default)]
    pub bind: Vec<BindFile>,
    /// The whole environment of the program (plus `--env`); nothing is inherited.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Every limit must be given: a policy is a complete statement of what a run may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub memory: Scalar,
    pub cpu_time: Scalar,
    pub wall_time: Scalar,
    pub pids: Scalar,
    /// CPU bandwidth in cores (`1.0` = one full core).
    pub cpu_quota: Scalar,
    pub open_files: Scalar,
    pub file_size: Scalar,
    pub stack: Scalar,
    pub tmp_size: Scalar,
    pub shm_size: Scalar,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SandboxFile {
    pub hostname: Option<String>,
    pub workdir: Option<String>,
    pub proc: Option<String>,
    pub landlock: Option<String>,
    pub seccomp: Option<String>,
    /// Pseudo-terminals the program may open, in a devpts of its own (0: none, no /dev/ptmx).
    pub ptys: Option<u32>,
    /// "required" (default) or "best-effort": whether a rootless run without a delegated
    /// cgroup may go on without the memory and pids caps.
    pub limits: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindFile {
    pub source: String,
    pub target: Option<String>,
    #[serde(default)]
    pub writable: bool,
    /// Skip, rather than fail, when the source does not exist on this host.
    #[serde(default)]
    pub optional: bool,
    /// What to do when the source itself is a symlink: `"error"` (default) or `"copy"`
    /// (create the same symlink inside, as needed for merged-/usr `/lib -> usr/lib`).
    pub symlink: Option<String>,
}

//! The root-owned system configuration, `/etc/isolate-grade/config.toml`.
//!
//! It names the UID range the sandboxes run as, the cgroup subtree they live in, which group
//! of users may call the helper when it is installed setuid or behind sudo, and the maximum of
//! every limit. A policy or a flag may only stay within these maxima. A caller who is not root
//! cannot choose another config file, and the file (and every directory above it) must be
//! owned by root and not writable by anyone else, as isolate requires of its `default.cf`.

use crate::policy::schema::Scalar;
use crate::policy::Limits;
use crate::units::{format_duration, format_size, parse_count, parse_duration, parse_size};
use serde::Deserialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/isolate-grade/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {key}: {reason}")]
    Invalid { path: PathBuf, key: String, reason: String },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} must be owned by root and writable by nobody else (it decides who may use the sandbox)")]
    Insecure { path: PathBuf },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    first_uid: Option<u32>,
    slots: Option<u32>,
    cgroup_root: Option<String>,
    rootless_cgroup_root: Option<String>,
    state_dir: Option<String>,
    policy_dir: Option<String>,
    allowed_group: Option<String>,
    #[serde(default)]
    max: MaxFile,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MaxFile {
    memory: Option<Scalar>,
    cpu_time: Option<Scalar>,
    wall_time: Option<Scalar>,
    pids: Option<Scalar>,
    cpu_quota: Option<Scalar>,
    open_files: Option<Scalar>,
    file_size: Option<Scalar>,
    stack: Option<Scalar>,
    tmp_size: Option<Scalar>,
    shm_size: Option<Scalar>,
}

/// The validated system config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (`None`: the built-in defaults, no file present).
    pub path: Option<PathBuf>,
    /// Slot `n` runs as uid and gid `first_uid + n`.
    pub first_uid: u32,
    pub slots: u32,
    /// Our subtree, relative to each cgroup hierarchy's mount point.
    pub cgroup_root: PathBuf,
    /// Rootless mode: the cgroup v2 subtree delegated to the caller (chowned to them by the
    /// admin), relative to the cgroup2 mount; `None`: the cgroup the caller runs in, if it
    /// is delegated to them ([`crate::cgroup::delegation`]).
    pub rootless_cgroup_root: Option<PathBuf>,
    /// Slot locks and the empty directory the sandbox root is mounted on.
    pub state_dir: PathBuf,
    /// Policies by name are looked up here before the built-in ones.
    pub policy_dir: PathBuf,
    /// Non-root callers must be in this group; `None`: only root may use the helper.
    pub allowed_group: Option<String>,
    pub max: Limits,
}

impl Config {
    /// Built-in defaults: 64 slots from uid 60000, generous maxima.
    pub fn defaults() -> Config {
        Config {
            path: None,
            first_uid: 60000,
            slots: 64,
            cgroup_root: PathBuf::from("isolate-grade"),
            rootless_cgroup_root: None,
            state_dir: PathBuf::from("/run/isolate-grade"),
            policy_dir: PathBuf::from("/etc/isolate-grade/policies"),
            allowed_group: None,
            max: Limits {
                memory: 16 << 30,
                cpu_time: Duration::from_secs(24 * 3600),
                wall_time: Duration::from_secs(24 * 3600),
                pids: 4096,
                cpu_quota_millicores: 64_000,
                open_files: 65536,
                file_size: 16 << 30,
                stack: 1 << 30,
                tmp_size: 16 << 30,
                shm_size: 16 << 30,
            },
        }
    }

    /// Load `path`; a missing file means the defaults. With `require_secure`, the file and
    /// its ancestors must be root-owned and not group/other-writable.
    pub fn load(path: &Path, require_secure: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::defaults()),
            Err(source) => return Err(ConfigError::Io { path: path.to_path_buf(), source }),
        };
        if require_secure {
            check_root_owned(path)?;
        }
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: crate::policy::toml_error(text, &e),
        })?;
        let err =
            |key: &str, reason: String| ConfigError::Invalid { path: path.to_path_buf(), key: key.to_string(), reason };
        let mut c = Config::defaults();
        c.path = Some(path.to_path_buf());
        if let Some(u) = raw.first_uid {
            if u < 1000 {
                return Err(err("first_uid", "must be at least 1000, away from system accounts".into()));
            }
            c.first_uid = u;
        }
        if let Some(s) = raw.slots {
            if s == 0 || s > 4096 {
                return Err(err("slots", "must be between 1 and 4096".into()));
            }
            c.slots = s;
        }
        if c.first_uid.checked_add(c.slots).is_none_or(|end| end > u32::MAX - 2) {
            return Err(err("slots", "first_uid + slots overflows the uid range".into()));
        }
        if let Some(r) = raw.cgroup_root {
            let p = crate::policy::sandbox_path(&format!("/{r}"), true).map_err(|e| err("cgroup_root", e))?;
            c.cgroup_root = p.strip_prefix("/").expect("absolute").to_path_buf();
        }
        if let Some(r) = raw.rootless_cgroup_root {
            let p = crate::policy::sandbox_path(&format!("/{r}"), true).map_err(|e| err("rootless_cgroup_root", e))?;
            c.rootless_cgroup_root = Some(p.strip_prefix("/").expect("absolute").to_path_buf());
        }
        if let Some(d) = raw.state_dir {
            c.state_dir = crate::policy::sandbox_path(&d, true).map_err(|e| err("state_dir", e))?;
        }
        if let Some(d) = raw.policy_dir {
            c.policy_dir = crate::policy::sandbox_path(&d, true).map_err(|e| err("policy_dir", e))?;
        }
        c.allowed_group = raw.allowed_group;
        let m = &raw.max;
        let size = |key: &str, v: &Option<Scalar>, d: u64| match v {
            None => Ok(d),
            Some(v) => parse_size(&v.as_text()).map_err(|e| err(key, e.to_string())),
        };
        let dur = |key: &str, v: &Option<Scalar>, d: Duration| match v {
            None => Ok(d),
            Some(v) => parse_duration(&v.as_text()).map_err(|e| err(key, e.to_string())),
        };
        let count = |key: &str, v: &Option<Scalar>, d: u64| match v {
            None => Ok(d),
            Some(v) => parse_count(&v.as_text(), 1 << 22).map_err(|e| err(key, e.to_string())),
        };
        let d = c.max.clone();
        c.max = Limits {
            memory: size("max.memory", &m.memory, d.memory)?,
            cpu_time: dur("max.cpu_time", &m.cpu_time, d.cpu_time)?,
            wall_time: dur("max.wall_time", &m.wall_time, d.wall_time)?,
            pids: count("max.pids", &m.pids, d.pids)?,
            cpu_quota_millicores: match &m.cpu_quota {
                None => d.cpu_quota_millicores,
                Some(v) => crate::units::parse_cores(&v.as_text()).map_err(|e| err("max.cpu_quota", e.to_string()))?,
            },
            open_files: count("max.open_files", &m.open_files, d.open_files)?,
            file_size: size("max.file_size", &m.file_size, d.file_size)?,
            stack: size("max.stack", &m.stack, d.stack)?,
            tmp_size: size("max.tmp_size", &m.tmp_size, d.tmp_size)?,
            shm_size: size("max.shm_size", &m.shm_size, d.shm_size)?,
        };
        Ok(c)
    }

    /// The slot's unprivileged identity: real on the host, not a user-namespace mapping.
    pub fn slot_uid(&self, slot: u32) -> u32 {
        self.first_uid + slot
    }

    /// Every limit within the system maximum, or a message naming the first one that is not.
    pub fn check_limits(&self, l: &Limits) -> Result<(), String> {
        let m = &self.max;
        let from = self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into());
        let over =
            |key: &str, v: String, max: String| Err(format!("{key} {v} exceeds the system maximum {max} ({from})"));
        let sizes = [
            ("memory", l.memory, m.memory),
            ("file_size", l.file_size, m.file_size),
            ("stack", l.stack, m.stack),
            ("tmp_size", l.tmp_size, m.tmp_size),
            ("shm_size", l.shm_size, m.shm_size),
        ];
        for (k, v, max) in sizes {
            if v > max {
                return over(k, format_size(v), format_size(max));
            }
        }
        for (k, v, max) in [("cpu_time", l.cpu_time, m.cpu_time), ("wall_time", l.wall_time, m.wall_time)] {
            if v > max {
                return over(k, format_duration(v), format_duration(max));
            }
        }
        for (k, v, max) in [
            ("pids", l.pids, m.pids),
            ("open_files", l.open_files, m.open_files),
            ("cpu_quota (millicores)", l.cpu_quota_millicores, m.cpu_quota_millicores),
        ] {
            if v > max {
                return over(k, v.to_string(), max.to_string());
            }
        }
        Ok(())
    }
}

/// The file and each directory above it: owned by root, not writable by group or others
/// (a sticky, root-owned `/tmp`-like parent is still refused).
pub fn check_root_owned(path: &Path) -> Result<(), ConfigError> {
    let mut p = Some(path);
    while let Some(cur) = p {
        let md =
            std::fs::symlink_metadata(cur).map_err(|source| ConfigError::Io { path: cur.to_path_buf(), source })?;
        if md.uid() != 0 || md.mode() & 0o022 != 0 || md.file_type().is_symlink() {
            return Err(ConfigError::Insecure { path: cur.to_path_buf() });
        }
        p = cur.parent().filter(|q| !q.as_os_str().is_empty());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_missing() {
        let c = Config::load(Path::new("/nonexistent/config.toml"), true).unwrap();
        assert!(c.path.is_none());
        assert_eq!(c.slot_uid(3), 60003);
    }

    #[test]
    fn parses_and_caps() {
        let c = Config::parse(
            Path::new("c.toml"),
            "first_uid = 70000\nslots = 4\nallowed_group = \"instructors\"\n[max]\nmemory = \"2G\"\npids = 200\n",
        )
        .unwrap();
        assert_eq!(c.first_uid, 70000);
        assert_eq!(c.max.memory, 2 << 30);
        let mut l = crate::policy::Policy::builtin("default").unwrap().limits;
        assert!(c.check_limits(&l).is_ok());
        l.memory = 3 << 30;
        assert_eq!(c.check_limits(&l).unwrap_err(), "memory 3G exceeds the system maximum 2G (c.toml)");
        l.memory = 1 << 30;
        l.pids = 201;
        assert_eq!(c.check_limits(&l).unwrap_err(), "pids 201 exceeds the system maximum 200 (c.toml)");
    }

    #[test]
    fn rejects_bad_values() {
        for (text, needle) in [
            ("first_uid = 0", "first_uid: must be at least 1000"),
            ("slots = 0", "slots: must be between"),
            ("first_uid = 4294967000\nslots = 4000", "slots: first_uid + slots overflows"),
            ("cgroup_root = \"../x\"", "cgroup_root:"),
            ("rootless_cgroup_root = \"a/../../x\"", "rootless_cgroup_root:"),
            ("state_dir = \"run\"", "state_dir:"),
            ("[max]\nmemory = \"-1G\"", "max.memory: must not be negative"),
            ("[max]\ncpu_quota = 0", "max.cpu_quota"),
            ("bogus = 1", "unknown field"),
        ] {
            let e = Config::parse(Path::new("c.toml"), text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e:?}");
        }
    }

    #[test]
    fn insecure_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        std::fs::write(&f, "slots = 2\n").unwrap();
        // tempdir lives under /tmp, which is world-writable: must be refused.
        let e = Config::load(&f, true).unwrap_err();
        assert!(matches!(e, ConfigError::Insecure { .. }), "{e}");
        // without the requirement (root caller) it loads
        assert_eq!(Config::load(&f, false).unwrap().slots, 2);
    }
}

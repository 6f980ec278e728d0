//! From [`schema::PolicyFile`] (what the file says) to [`Policy`] (what we will do).

use super::schema::{self, Scalar};
use super::{Bind, LandlockMode, Limits, LimitsMode, Policy, PolicyError, ProcMode, SeccompAction, SymlinkMode};
use crate::units::{parse_cores, parse_count, parse_duration, parse_size};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// Paths the sandbox builds itself; a bind may not replace them.
const RESERVED: &[&str] = &["/proc", "/dev", "/tmp", "/dev/shm"];
const MAX_PIDS: u64 = 1 << 22;
const MAX_OPEN_FILES: u64 = 1 << 20;

pub(super) fn validate(file: &str, name: String, raw: schema::PolicyFile) -> Result<Policy, PolicyError> {
    let err = |key: &str, reason: String| PolicyError::Invalid { file: file.to_string(), key: key.to_string(), reason };
    let l = &raw.limits;
    let size = |key: &str, v: &Scalar| parse_size(&v.as_text()).map_err(|e| err(key, e.to_string()));
    let dur = |key: &str, v: &Scalar| parse_duration(&v.as_text()).map_err(|e| err(key, e.to_string()));
    let count = |key: &str, v: &Scalar, max| parse_count(&v.as_text(), max).map_err(|e| err(key, e.to_string()));
    let limits = Limits {
        memory: size("limits.memory", &l.memory)?,
        cpu_time: dur("limits.cpu_time", &l.cpu_time)?,
        wall_time: dur("limits.wall_time", &l.wall_time)?,
        pids: count("limits.pids", &l.pids, MAX_PIDS)?,
        cpu_quota_millicores: parse_cores(&l.cpu_quota.as_text())
            .map_err(|e| err("limits.cpu_quota", e.to_string()))?,
        open_files: count("limits.open_files", &l.open_files, MAX_OPEN_FILES)?,
        file_size: size("limits.file_size", &l.file_size)?,
        stack: size("limits.stack", &l.stack)?,
        tmp_size: size("limits.tmp_size", &l.tmp_size)?,
        shm_size: size("limits.shm_size", &l.shm_size)?,
    };
    check_memory(limits.memory).map_err(|r| err("limits.memory", r))?;

    let s = &raw.sandbox;
    let hostname = s.hostname.clone().unwrap_or_else(|| "sandbox".into());
    if hostname.is_empty()
        || hostname.len() > 64
        || !hostname.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(err("sandbox.hostname", "must be 1-64 characters of [A-Za-z0-9.-]".into()));
    }
    let workdir = sandbox_path(s.workdir.as_deref().unwrap_or("/tmp"), false).map_err(|r| err("sandbox.workdir", r))?;
    let proc = match s.proc.as_deref().unwrap_or("pids-only") {
        "pids-only" => ProcMode::PidsOnly,
        "full" => ProcMode::Full,
        "none" => ProcMode::None,
        o => return Err(err("sandbox.proc", format!("unknown value {o:?} (use \"pids-only\", \"full\" or \"none\")"))),
    };
    let landlock = match s.landlock.as_deref().unwrap_or("auto") {
        "auto" => LandlockMode::Auto,
        "required" => LandlockMode::Required,
        "off" => LandlockMode::Off,
        o => {
            return Err(err("sandbox.landlock", format!("unknown value {o:?} (use \"auto\", \"required\" or \"off\")")))
        }
    };
    let seccomp = match s.seccomp.as_deref().unwrap_or("kill") {
        "kill" => SeccompAction::Kill,
        "errno" => SeccompAction::Errno,
        "log" => SeccompAction::Log,
        o => return Err(err("sandbox.seccomp", format!("unknown value {o:?} (use \"kill\", \"errno\" or \"log\")"))),
    };

    let mut binds = Vec::new();
    for (i, b) in raw.bind.iter().enumerate() {
        let key = format!("bind[{i}]");
        binds.push(bind(b).map_err(|r| err(&key, r))?);
    }
    check_binds(&binds).map_err(|(i, r)| err(&format!("bind[{i}]"), r))?;
    sort_binds(&mut binds);

    let mut env = Vec::new();
    for (k, v) in &raw.env {
        check_env(k, v).map_err(|r| err(&format!("env.{k}"), r))?;
        env.push((k.clone(), v.clone()));
    }

    let limits_mode = match s.limits.as_deref().unwrap_or("required") {
        "required" => LimitsMode::Required,
        "best-effort" => LimitsMode::BestEffort,
        o => return Err(err("sandbox.limits", format!("unknown value {o:?} (use \"required\" or \"best-effort\")"))),
    };
    let ptys = s.ptys.unwrap_or(0);
    if ptys > super::MAX_PTYS {
        return Err(err("sandbox.ptys", format!("{ptys} is more than {}", super::MAX_PTYS)));
    }

    Ok(Policy {
        name,
        description: raw.description.unwrap_or_default(),
        limits,
        binds,
        env,
        hostname,
        workdir,
        proc,
        landlock,
        seccomp,
        ptys,
        limits_mode,
    })
}

fn bind(b: &schema::BindFile) -> Result<Bind, String> {
    let source = sandbox_path(&b.source, false).map_err(|r| format!("source: {r}"))?;
    let target = match &b.target {
        Some(t) => sandbox_path(t, true).map_err(|r| format!("target: {r}"))?,
        None => sandbox_path(&b.source, true).map_err(|r| format!("target: {r}"))?,
    };
    let symlink = match b.symlink.as_deref().unwrap_or("error") {
        "error" => SymlinkMode::Error,
        "copy" => SymlinkMode::Copy,
        o => return Err(format!("symlink: unknown value {o:?} (use \"error\" or \"copy\")")),
    };
    Ok(Bind { source, target, writable: b.writable, optional: b.optional, symlink })
}

/// Targets must be unique and must not replace what the sandbox builds itself.
/// Returns the index of the offending bind.
pub(crate) fn check_binds(binds: &[Bind]) -> Result<(), (usize, String)> {
    let mut seen = BTreeSet::new();
    for (i, b) in binds.iter().enumerate() {
        for r in RESERVED {
            let r = Path::new(r);
            if b.target == r || (b.target.starts_with(r) && r != Path::new("/tmp")) {
                return Err((i, format!("target {} is built by the sandbox itself", b.target.display())));
            }
        }
        if !seen.insert(b.target.clone()) {
            return Err((i, format!("duplicate target {}", b.target.display())));
        }
    }
    Ok(())
}

/// Parents before children (stable, so equal depths keep the file's order).
pub(crate) fn sort_binds(binds: &mut [Bind]) {
    binds.sort_by_key(|b| b.target.components().count());
}

/// Check that `s` is an absolute path with no `.`, `..` or empty components, and is not `/`
/// when `is_target` (nothing may be mounted over the sandbox root).
pub fn sandbox_path(s: &str, is_target: bool) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    if s.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if s.len() > 4000 {
        return Err("path too long".into());
    }
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute path"));
    }
    if s.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..") && s != "/" {
        return Err(format!("{s:?} must not contain empty, '.' or '..' components"));
    }
    let p = PathBuf::from(s);
    debug_assert!(p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
    if is_target && p == Path::new("/") {
        return Err("cannot mount over the sandbox root".into());
    }
    Ok(p)
}

/// The least memory a sandbox may be given (a policy's or the command line's).
pub const MIN_MEMORY: u64 = 4 << 20;

/// A memory limit, from a policy or the command line: at least [`MIN_MEMORY`].
pub fn check_memory(bytes: u64) -> Result<(), String> {
    if bytes < MIN_MEMORY {
        return Err("must be at least 4M".into());
    }
    Ok(())
}

/// A variable for the sandbox's environment, from a policy or the command line: a valid
/// name, a value without NUL (it becomes a C string).
pub fn check_env(k: &str, v: &str) -> Result<(), String> {
    check_env_name(k)?;
    if v.contains('\0') {
        return Err("value contains a NUL byte".into());
    }
    Ok(())
}

pub fn check_env_name(k: &str) -> Result<(), String> {
    let mut chars = k.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !ok_first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{k:?} is not a valid environment variable name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        description = "test"
        [limits]
        memory = "256M"
        cpu_time = "10s"
        wall_time = 20
        pids = 32
        cpu_quota = 1.0
        open_files = 64
        file_size = "16M"
        stack = "8M"
        tmp_size = "64M"
        shm_size = "16M"
        [sandbox]
        workdir = "/work"
        [[bind]]
        source = "/usr/lib/x"
        [[bind]]
        source = "/usr"
        [[bind]]
        source = "/lib"
        symlink = "copy"
        [env]
        PATH = "/usr/bin"
    "#;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse("t.toml", text)
    }

    fn with(key: &str, value: &str) -> String {
        GOOD.lines()
            .map(|l| {
                if l.trim_start().starts_with(&format!("{key} =")) {
                    format!("{key} = {value}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn invalid(text: &str) -> String {
        match parse(text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted:\n{text}"),
        }
    }

    #[test]
    fn good_policy_validates() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name, "t");
        assert_eq!(p.limits.memory, 256 << 20);
        assert_eq!(p.limits.wall_time.as_secs(), 20);
        assert_eq!(p.limits.cpu_quota_millicores, 1000);
        assert_eq!(p.workdir, PathBuf::from("/work"));
        assert_eq!(p.proc, ProcMode::PidsOnly);
        assert_eq!(p.landlock, LandlockMode::Auto);
        assert_eq!(p.seccomp, SeccompAction::Kill);
        // parents first
        let order: Vec<_> = p.binds.iter().map(|b| b.target.to_str().unwrap()).collect();
        assert_eq!(order, ["/usr", "/lib", "/usr/lib/x"]);
        assert_eq!(p.binds[1].symlink, SymlinkMode::Copy);
    }

    #[test]
    fn every_seccomp_mode_parses() {
        for (text, mode) in
            [("kill", SeccompAction::Kill), ("errno", SeccompAction::Errno), ("log", SeccompAction::Log)]
        {
            let p = parse(&GOOD.replace("workdir = \"/work\"", &format!("seccomp = \"{text}\""))).unwrap();
            assert_eq!(p.seccomp, mode, "{text}");
        }
    }

    #[test]
    fn builtin_policies_validate() {
        for (name, _) in super::super::BUILTIN {
            Policy::builtin(name).unwrap();
        }
        assert!(Policy::builtin("nope").unwrap_err().to_string().contains("default, strict"));
    }

    #[test]
    fn bad_limits_name_file_key_and_reason() {
        assert_eq!(invalid(&with("memory", "0")), "t.toml: limits.memory: must be greater than zero");
        assert_eq!(invalid(&with("memory", "-5")), "t.toml: limits.memory: must not be negative");
        assert!(invalid(&with("memory", "\"1GB2\"")).starts_with("t.toml: limits.memory: unknown unit"));
        assert!(invalid(&with("memory", "\"99999999T\"")).starts_with("t.toml: limits.memory: too large"));
        assert_eq!(invalid(&with("memory", "\"1M\"")), "t.toml: limits.memory: must be at least 4M");
        assert!(invalid(&with("cpu_time", "\"5 fortnights\"")).starts_with("t.toml: limits.cpu_time: unknown unit"));
        assert_eq!(invalid(&with("pids", "0")), "t.toml: limits.pids: must be greater than zero");
        assert!(invalid(&with("pids", "9223372036854775807")).starts_with("t.toml: limits.pids: too large"));
        let range = "t.toml: limits.cpu_quota: must be between 0.01 and 1024 cores";
        assert_eq!(invalid(&with("cpu_quota", "-1")), range);
        assert_eq!(invalid(&with("cpu_quota", "0")), range);
        assert_eq!(invalid(&with("cpu_quota", "nan")), range);
    }

    #[test]
    fn unknown_and_missing_keys_are_errors() {
        let e = invalid(&GOOD.replace("pids = 32", "pids = 32\nmemroy = 1"));
        assert!(e.starts_with("t.toml: line 8: unknown field `memroy`, expected one of `memory`"), "{e}");
        assert!(!e.contains('\n'));
        let e = invalid(&GOOD.replace("pids = 32", ""));
        assert!(e.contains("missing field `pids`"), "{e}");
        let e = invalid(&GOOD.replace("memory = \"256M\"", "memory = \"1G\"\nmemory = \"2G\""));
        assert!(e.contains("duplicate key"), "{e}");
    }

    #[test]
    fn bad_paths_are_errors() {
        let e = invalid(&GOOD.replace("source = \"/usr/lib/x\"", "source = \"usr/lib\""));
        assert_eq!(e, "t.toml: bind[0]: source: \"usr/lib\" is not an absolute path");
        let e = invalid(&GOOD.replace("source = \"/usr/lib/x\"", "source = \"/usr/../etc/shadow\""));
        assert!(e.contains("must not contain empty, '.' or '..'"), "{e}");
        let e = invalid(&GOOD.replace("source = \"/usr/lib/x\"", "source = \"/usr//lib\""));
        assert!(e.contains("must not contain empty"), "{e}");
        let e = invalid(&GOOD.replace("source = \"/usr/lib/x\"", "source = \"/usr\""));
        assert_eq!(e, "t.toml: bind[1]: duplicate target /usr");
        for reserved in ["/proc", "/proc/1", "/dev", "/dev/null", "/tmp", "/"] {
            let e =
                invalid(&GOOD.replace("source = \"/usr/lib/x\"", &format!("source = \"/x\"\ntarget = \"{reserved}\"")));
            assert!(e.starts_with("t.toml: bind[0]: "), "{e}");
        }
        // beneath /tmp is fine: it is created inside the sandbox's own tmpfs
        parse(&GOOD.replace("source = \"/usr/lib/x\"", "source = \"/x\"\ntarget = \"/tmp/data\"")).unwrap();
        let e = invalid(&with("workdir", "\"relative\""));
        assert!(e.starts_with("t.toml: sandbox.workdir: "), "{e}");
    }

    #[test]
    fn bad_env_and_modes_are_errors() {
        assert!(invalid(&GOOD.replace("PATH = ", "\"A-B\" = ")).starts_with("t.toml: env.A-B: "));
        assert!(invalid(&GOOD.replace("PATH = ", "\"1A\" = ")).starts_with("t.toml: env.1A: "));
        assert!(invalid(&GOOD.replace("workdir = \"/work\"", "ptys = 65")).contains("sandbox.ptys: 65 is more than 64"));
        assert!(invalid(&GOOD.replace("workdir = \"/work\"", "proc = \"some\""))
            .starts_with("t.toml: sandbox.proc: unknown value"));
        assert!(invalid(&GOOD.replace("workdir = \"/work\"", "landlock = \"yes\""))
            .starts_with("t.toml: sandbox.landlock:"));
        assert!(invalid(&GOOD.replace("workdir = \"/work\"", "seccomp = \"allow\""))
            .starts_with("t.toml: sandbox.seccomp:"));
        assert!(
            invalid(&GOOD.replace("workdir = \"/work\"", "seccomp = \"Log\"")).starts_with("t.toml: sandbox.seccomp:")
        );
        assert!(invalid(&GOOD.replace("workdir = \"/work\"", "hostname = \"a b\""))
            .starts_with("t.toml: sandbox.hostname:"));
    }
}

//! `isolate-grade run`: validate the request (as the caller), then run it in a slot and
//! report. Everything up to the slot is the caller's input: a problem there is a usage error
//! (exit 2, nothing ran, nothing written). From the slot on, a failure is the sandbox's or the
//! host's: a `sandbox-error` report (exit 3).

use crate::cgroup::{CgroupLimits, Hierarchies, RunCgroup};
use crate::cli::{RunArgs, SandboxArgs};
use crate::config::{self, Config, ConfigError};
use crate::identity::{Caller, IdentityError};
use crate::mounts::{PreparedBind, DEVICES};
use crate::plan::Plan;
use crate::policy::{self, Bind, Limits, Policy, PolicyError, SymlinkMode};
use crate::report::{Report, SandboxInfo, EXIT_USAGE};
use crate::seccomp::{self, SeccompError};
use crate::slot;
use crate::supervisor;
use crate::sys::LandlockRules;
use crate::units;
use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error("{0}")]
    Invalid(String),
    #[error("writing the report: {0}")]
    Report(std::io::Error),
    /// The host could not give what a request needs before the sandbox starts.
    #[error("sandbox error at {step}: {errno}")]
    Host { step: &'static str, errno: nix::errno::Errno },
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Host { .. } => crate::report::Status::SandboxError.exit_code(),
            _ => EXIT_USAGE,
        }
    }
}

enum Sink {
    Stdout,
    File(std::fs::File),
}

/// A request checked, and everything it names opened, as the caller: nothing privileged has
/// happened yet, and nothing has been written.
pub struct Prepared {
    pub caller: Caller,
    pub config: Config,
    pub policy: Policy,
    pub limits: Limits,
    pub binds: Vec<PreparedBind>,
    pub landlock_rules: LandlockRules,
    pub filters: Vec<seccompiler::BpfProgram>,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub program: PathBuf,
    pub argv: Vec<CString>,
    pub search_path: Vec<PathBuf>,
    /// A pidfd of a process whose end ends the sandbox (a kernel's client).
    pub watch: Option<std::os::fd::OwnedFd>,
}

/// Validate the request and open what it names, as the caller.
pub fn prepare(config_override: Option<PathBuf>, a: &SandboxArgs, command: &[OsString]) -> Result<Prepared, RunError> {
    let caller = Caller::detect();
    tracing::debug!(uid = caller.uid, via = %caller.via, "caller");
    let config_path = caller.config_path(config_override.as_deref()).map_err(RunError::Invalid)?;
    let config = Config::load(&config_path, !caller.trusted())?;
    caller.check_allowed(config.allowed_group.as_deref())?;
    let policy = load_policy(&a.policy, &caller, &config)?;
    let limits = with_overrides(policy.limits.clone(), a)?;
    config.check_limits(&limits).map_err(RunError::Invalid)?;

    let mut binds = policy.binds.clone();
    for spec in &a.binds {
        binds.push(parse_bind(spec).map_err(|r| RunError::Invalid(format!("--bind {spec}: {r}")))?);
    }
    for spec in &a.links {
        let path = policy::sandbox_path(spec, true).map_err(|r| RunError::Invalid(format!("--link {spec}: {r}")))?;
        binds.push(Bind {
            source: path.clone(),
            target: path,
            writable: false,
            optional: false,
            symlink: SymlinkMode::Copy,
        });
    }
    policy::validate_binds(&mut binds)
        .map_err(|(i, r)| RunError::Invalid(format!("bind {}: {r}", binds[i].target.display())))?;
    let workdir = match &a.workdir {
        Some(w) => policy::sandbox_path(w, false).map_err(|r| RunError::Invalid(format!("--workdir: {r}")))?,
        None => policy.workdir.clone(),
    };
    let env = build_env(&policy.env, &a.env)?;
    let (program, argv) = program(command)?;
    let search_path = env
        .iter()
        .find_map(|(k, v)| {
            (k == "PATH").then(|| v.split(':').filter(|d| d.starts_with('/')).map(PathBuf::from).collect())
        })
        .unwrap_or_default();

    // Opened as the caller: they may only expose what they themselves can read.
    let mut prepared = Vec::new();
    let mut landlock_rules =
        LandlockRules { read: vec!["/".into()], write: vec!["/tmp".into(), "/dev/shm".into()], ..Default::default() };
    landlock_rules.write_files = DEVICES
        .iter()
        .filter(|(d, _, _)| ["null", "zero", "full"].contains(d))
        .map(|(d, _, _)| PathBuf::from(format!("/dev/{d}")))
        .collect();
    if policy.ptys > 0 {
        // opening /dev/ptmx (a link to pts/ptmx) and the slaves it makes
        landlock_rules.write.push("/dev/pts".into());
    }
    for b in &binds {
        if let Some(source) = caller.open_bind_source(&b.source, b.writable, b.optional, b.symlink)? {
            if b.writable {
                landlock_rules.write.push(b.target.clone());
            }
            prepared.push(PreparedBind { source, target: b.target.clone(), writable: b.writable });
        }
    }
    let filters = seccomp::compile(policy.seccomp)?;
    tracing::debug!(binds = prepared.len(), policy = %policy.name, "request validated");
    Ok(Prepared {
        caller,
        config,
        policy,
        limits,
        binds: prepared,
        landlock_rules,
        filters,
        workdir,
        env,
        program,
        argv,
        search_path,
        watch: None,
    })
}

impl Prepared {
    /// What the report says about the sandbox, before a slot is taken.
    pub fn info(&self) -> SandboxInfo {
        SandboxInfo {
            policy: self.policy.name.clone(),
            landlock: match self.policy.landlock {
                policy::LandlockMode::Off => "off".into(),
                _ => match crate::fsaccess::kernel_abi() {
                    0 => "unsupported".into(),
                    abi => format!("abi-{abi}"),
                },
            },
            seccomp: format!("{:?}", self.policy.seccomp).to_lowercase(),
            ..Default::default()
        }
    }

    /// The plan for the slot's uid; `kernel` adds its overlay and runtime directory.
    pub fn into_plan(self, root_dir: PathBuf, uid: u32, cgroup_join: Vec<std::os::fd::OwnedFd>) -> Plan {
        Plan {
            root_dir,
            cgroup_join,
            binds: self.binds,
            overlay: None,
            runtime: None,
            limits: self.limits,
            hostname: self.policy.hostname,
            workdir: self.workdir,
            proc: self.policy.proc,
            ptys: self.policy.ptys,
            uid,
            landlock: self.policy.landlock,
            landlock_rules: self.landlock_rules,
            seccomp: self.filters,
            program: self.program,
            search_path: self.search_path,
            argv: self.argv,
            env: self.env.iter().map(|(k, v)| CString::new(format!("{k}={v}")).expect("validated: no NUL")).collect(),
            stdio: None, // the supervisor's pipes, made just before the clone
        }
    }
}

/// Run the request; returns the exit code that follows the report.
pub fn execute(config_override: Option<PathBuf>, a: RunArgs) -> Result<u8, RunError> {
    let prepared = prepare(config_override, &a.sandbox, &a.command)?;
    // Last of the caller's input: a request refused above must not create or truncate it.
    let sink = match &a.report {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Sink::Stdout),
        Some(p) => Some(Sink::File(prepared.caller.create_report(p)?)),
    };
    let stdio = stdio_spec(&a)?;
    let report = run_prepared(prepared, |plan| plan, None, stdio);
    emit(&report, sink)?;
    Ok(report.status.exit_code())
}

/// Take a slot and run a prepared request in it; `adjust` completes the plan, `relay`
/// carries a kernel's protocol. Always returns a report: faults from here on are the
/// sandbox's, not the caller's.
pub fn run_prepared(
    prepared: Prepared,
    adjust: impl FnOnce(Plan) -> Plan,
    relay: Option<crate::relay::RelaySpec>,
    stdio: crate::stdio::Spec,
) -> Report {
    let mut prepared = prepared;
    let watch = prepared.watch.take();
    let mut info = prepared.info();
    let limits = prepared.limits.clone();
    let config = prepared.config.clone();
    let started = Instant::now();
    let plan = |root_dir, uid, join| adjust(prepared.into_plan(root_dir, uid, join));
    match in_slot(&config, &limits, &mut info, plan, relay, watch, stdio) {
        Ok(outcome) => match outcome.setup_failure {
            Some(f) => Report::fault(&f.step, f.message, &limits, info, outcome.facts.wall),
            None => Report::from_facts(&outcome.facts, &limits, info),
        },
        Err((step, message)) => Report::fault(step, message, &limits, info, started.elapsed()),
    }
}

/// Take a slot, make its cgroup, supervise the sandbox. Errors are (step, message).
fn in_slot(
    config: &Config,
    limits: &Limits,
    info: &mut SandboxInfo,
    plan: impl FnOnce(PathBuf, u32, Vec<std::os::fd::OwnedFd>) -> Plan,
    relay: Option<crate::relay::RelaySpec>,
    watch: Option<std::os::fd::OwnedFd>,
    stdio: crate::stdio::Spec,
) -> Result<supervisor::Outcome, (&'static str, String)> {
    let root_dir = slot::prepare_state_dir(&config.state_dir).map_err(|e| ("state-dir", e.to_string()))?;
    let slot = slot::acquire_slot(&config.state_dir, config.slots).map_err(|e| ("slot", e.to_string()))?;
    let uid = config.slot_uid(slot.index);
    info.slot = Some(slot.index);
    info.uid = Some(uid);
    let backend = Hierarchies::read(Path::new("/proc/self/mountinfo"))
        .and_then(|h| h.choose())
        .map_err(|e| ("cgroup", e.to_string()))?;
    let cg_limits =
        CgroupLimits { memory: limits.memory, pids: limits.pids, cpu_millicores: limits.cpu_quota_millicores };
    let cgroup = RunCgroup::create(&backend, &config.cgroup_root, slot.index, cg_limits)
        .map_err(|e| ("cgroup", e.to_string()))?;
    info.cgroup = Some(cgroup.version());
    tracing::debug!(slot = slot.index, uid, cgroup = cgroup.version(), "cgroup ready");
    tracing::debug!(slot = slot.index, uid, cgroup = cgroup.version(), "starting");
    let join = cgroup.join_files().map_err(|e| ("cgroup", e.to_string()))?;
    let outcome = supervisor::supervise(
        plan(root_dir, uid, join),
        cgroup,
        limits.wall_time,
        limits.cpu_time,
        limits.cpu_quota_millicores,
        relay,
        watch,
        stdio,
    )
    .map_err(|e| ("supervisor", e.to_string()))?;
    drop(slot);
    Ok(outcome)
}

/// `run`'s stdio: pipes, its stdin the caller's unless that is a terminal; `--tty` hands the
/// caller's fds over as they are.
fn stdio_spec(a: &RunArgs) -> Result<crate::stdio::Spec, RunError> {
    use crate::stdio::{Escape, OnLimit, Piped, Spec, Stdin};
    if a.tty {
        return Ok(Spec::Inherit);
    }
    let output_limit =
        units::parse_size(&a.output_limit).map_err(|e| RunError::Invalid(format!("--output-limit: {e}")))?;
    let stdin = if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        // What the instructor types is theirs: the program reads end-of-file.
        eprintln!("isolate-grade: stdin is a terminal; the program gets an empty stdin (--tty hands it the terminal)");
        Stdin::Empty
    } else {
        Stdin::Caller
    };
    Ok(Spec::Piped(Piped { stdin, output_limit, on_limit: OnLimit::Kill, escape: Escape::OnTerminal }))
}

fn emit(report: &Report, sink: Option<Sink>) -> Result<(), RunError> {
    let json = report.to_json() + "\n";
    match sink {
        Some(Sink::Stdout) => std::io::stdout().write_all(json.as_bytes()).map_err(RunError::Report)?,
        Some(Sink::File(mut f)) => f.write_all(json.as_bytes()).map_err(RunError::Report)?,
        None => {}
    }
    if let Some(e) = &report.sandbox_error {
        eprintln!("isolate-grade: sandbox error at {}: {}", e.step, e.message);
    } else if report.status != crate::report::Status::Ok {
        eprintln!(
            "isolate-grade: {} after {:.2}s ({})",
            report.status.as_str(),
            report.wall_time.as_secs_f64(),
            match (&report.exit_code, &report.signal) {
                (Some(c), _) => format!("exit code {c}"),
                (_, Some(s)) => format!("killed by {s}"),
                _ => "no status".into(),
            }
        );
    }
    Ok(())
}

fn load_policy(spec: &str, caller: &Caller, config: &Config) -> Result<Policy, RunError> {
    if policy::is_path(spec) {
        let text = caller.read_file(Path::new(spec))?;
        return Ok(Policy::parse(spec, &text)?);
    }
    if spec.is_empty() || !spec.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(RunError::Invalid(format!(
            "--policy {spec:?}: a name is letters, digits, '-' and '_'; a path contains '/'"
        )));
    }
    let installed = config.policy_dir.join(format!("{spec}.toml"));
    match std::fs::read_to_string(&installed) {
        Ok(text) => {
            if !caller.trusted() {
                config::check_root_owned(&installed)?;
            }
            Ok(Policy::parse(&installed.display().to_string(), &text)?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::builtin(spec)?),
        Err(source) => Err(PolicyError::Io { path: installed, source }.into()),
    }
}

fn with_overrides(mut l: Limits, a: &SandboxArgs) -> Result<Limits, RunError> {
    let bad = |flag: &str, e: units::UnitError| RunError::Invalid(format!("--{flag}: {e}"));
    if let Some(v) = &a.memory {
        l.memory = units::parse_size(v).map_err(|e| bad("memory", e))?;
        if l.memory < 4 << 20 {
            return Err(RunError::Invalid("--memory: must be at least 4M".into()));
        }
    }
    if let Some(v) = &a.cpu_time {
        l.cpu_time = units::parse_duration(v).map_err(|e| bad("cpu-time", e))?;
    }
    if let Some(v) = &a.wall_time {
        l.wall_time = units::parse_duration(v).map_err(|e| bad("wall-time", e))?;
    }
    if let Some(v) = &a.pids {
        l.pids = units::parse_count(v, 1 << 22).map_err(|e| bad("pids", e))?;
    }
    if let Some(v) = &a.tmp_size {
        l.tmp_size = units::parse_size(v).map_err(|e| bad("tmp-size", e))?;
    }
    if let Some(v) = &a.cpu_quota {
        l.cpu_quota_millicores = units::parse_cores(v).map_err(|e| bad("cpu-quota", e))?;
    }
    Ok(l)
}

/// `SRC[:DST][:ro|:rw]`.
pub fn parse_bind(spec: &str) -> Result<Bind, String> {
    let mut parts: Vec<&str> = spec.split(':').collect();
    let writable = match parts.last() {
        Some(&"rw") if parts.len() > 1 => {
            parts.pop();
            true
        }
        Some(&"ro") if parts.len() > 1 => {
            parts.pop();
            false
        }
        _ => false,
    };
    let (src, dst) = match parts.as_slice() {
        [src] => (*src, *src),
        [src, dst] => (*src, *dst),
        _ => return Err("expected SRC[:DST][:ro|:rw]".into()),
    };
    Ok(Bind {
        source: policy::sandbox_path(src, false).map_err(|r| format!("source: {r}"))?,
        target: policy::sandbox_path(dst, true).map_err(|r| format!("target: {r}"))?,
        writable,
        optional: false,
        symlink: SymlinkMode::Error,
    })
}

fn build_env(policy_env: &[(String, String)], extra: &[String]) -> Result<Vec<(String, String)>, RunError> {
    let mut env: Vec<(String, String)> = policy_env.to_vec();
    for spec in extra {
        let (k, v) = match spec.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(spec) {
                Ok(v) => (spec.clone(), v),
                Err(_) => continue, // passing an unset variable passes nothing
            },
        };
        policy::check_env_name(&k).map_err(|r| RunError::Invalid(format!("--env: {r}")))?;
        if v.contains('\0') {
            return Err(RunError::Invalid(format!("--env {k}: value contains a NUL byte")));
        }
        env.retain(|(name, _)| name != &k);
        env.push((k, v));
    }
    Ok(env)
}

fn program(command: &[OsString]) -> Result<(PathBuf, Vec<CString>), RunError> {
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| RunError::Invalid("an argument contains a NUL byte".into())))
        .collect::<Result<_, _>>()?;
    let first = command.first().ok_or_else(|| RunError::Invalid("no program given".into()))?;
    if first.is_empty() {
        return Err(RunError::Invalid("empty program name".into()));
    }
    Ok((PathBuf::from(first), argv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_specs() {
        let b = parse_bind("/data").unwrap();
        assert_eq!((b.source.to_str(), b.target.to_str(), b.writable), (Some("/data"), Some("/data"), false));
        let b = parse_bind("/data:/work:rw").unwrap();
        assert_eq!((b.target.to_str(), b.writable), (Some("/work"), true));
        let b = parse_bind("/data:ro").unwrap();
        assert_eq!((b.target.to_str(), b.writable), (Some("/data"), false));
        assert!(parse_bind("/a:/b:/c:rw").is_err());
        assert!(parse_bind("rel:/b").unwrap_err().contains("not an absolute path"));
        assert!(parse_bind("/a/../etc:/b").unwrap_err().contains("'..'"));
        assert!(parse_bind("/a:/").unwrap_err().contains("sandbox root"));
    }

    #[test]
    fn env_building() {
        let base = vec![("PATH".to_string(), "/usr/bin".to_string())];
        let e = build_env(&base, &["A=1".into(), "PATH=/bin".into(), "ISOLATE_GRADE_SURELY_UNSET".into()]).unwrap();
        assert_eq!(e, vec![("A".to_string(), "1".to_string()), ("PATH".to_string(), "/bin".to_string())]);
        assert!(build_env(&base, &["BAD-NAME=1".into()]).is_err());
        assert!(build_env(&base, &["=1".into()]).is_err());
    }
}

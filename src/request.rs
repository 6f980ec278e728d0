//! One validated request: the command line, the policy, the system config and the caller,
//! checked once into a [`Request`], with every path it names opened *as the caller*. Nothing
//! privileged has happened when it exists, and nothing has been written; everything after it
//! ([`crate::host::run`]) reads only this value. The sandbox's [`Plan`] is built from it in one
//! place, [`Request::into_plan`], and so are its Landlock rules ([`landlock_rules`]).
//!
//! Two kinds: `run`'s program, and a Jupyter kernel ([`KernelParts`]: the submission as an
//! overlay, a runtime directory with the connection file, the relay of its five channels, and
//! the client it lives as long as), which `kernel.rs` prepares before the request is made.

use crate::cli::SandboxArgs;
use crate::config::{self, Config, ConfigError};
use crate::identity::{Caller, IdentityError};
use crate::mounts::{PreparedBind, PreparedOverlay, RuntimeDir, DEVICES};
use crate::plan::Plan;
use crate::policy::{self, Bind, LandlockMode, Limits, Policy, PolicyError, SymlinkMode};
use crate::relay::RelaySpec;
use crate::report::SandboxInfo;
use crate::seccomp::{self, SeccompError};
use crate::sys::LandlockRules;
use crate::units;
use std::ffi::{CString, OsString};
use std::fmt;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
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
    /// A value of the caller's that is not acceptable: which input, and why.
    #[error("{}", invalid(.input, .reason))]
    Invalid { input: Input, reason: String },
}

/// The input a [`RequestError::Invalid`] is about, as the message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A command-line option as a whole: `--memory`.
    Option(&'static str),
    /// One value of a repeatable option: `--bind /a:/b`.
    OptionValue(&'static str, String),
    /// A bind of the combined list (policy and command line), by its target.
    Bind(PathBuf),
    /// The program and its arguments.
    Command,
    /// The system config as a whole (which one, and its caps).
    SystemConfig,
    /// A kernel's connection file.
    ConnectionFile(PathBuf),
    /// A kernel's working directory (the submission).
    WorkingDirectory,
    /// One of the five ports of a kernel's connection file.
    Port { key: &'static str, port: u16, ip: std::net::IpAddr },
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Option(o) => f.write_str(o),
            Input::OptionValue(o, v) => write!(f, "{o} {v}"),
            Input::Bind(t) => write!(f, "bind {}", t.display()),
            Input::Command | Input::SystemConfig => Ok(()),
            Input::ConnectionFile(p) => write!(f, "connection file {}", p.display()),
            Input::WorkingDirectory => f.write_str("working directory"),
            Input::Port { key, port, ip } => write!(f, "{key} {port} on {ip}"),
        }
    }
}

fn invalid(input: &Input, reason: &str) -> String {
    match input {
        Input::Command | Input::SystemConfig => reason.to_string(),
        i => format!("{i}: {reason}"),
    }
}

impl RequestError {
    pub fn invalid(input: Input, reason: impl Into<String>) -> RequestError {
        RequestError::Invalid { input, reason: reason.into() }
    }
}

/// Who asks, and by which rules: the caller, the system config it gets, and the policy with
/// the command line's limits (within the config's caps). Nothing is opened yet.
pub struct Grounds {
    pub caller: Caller,
    pub config: Config,
    /// Its `limits` are the run's: the policy's, overridden by the command line.
    pub policy: Policy,
}

impl Grounds {
    pub fn load(config_override: Option<&Path>, a: &SandboxArgs) -> Result<Grounds, RequestError> {
        let caller = Caller::detect();
        tracing::debug!(uid = caller.uid, via = %caller.via, "caller");
        let config_path =
            caller.config_path(config_override).map_err(|r| RequestError::invalid(Input::SystemConfig, r))?;
        let config = Config::load(&config_path, !caller.trusted())?;
        caller.check_allowed(config.allowed_group.as_deref())?;
        let mut policy = load_policy(&a.policy, &caller, &config)?;
        policy.limits = with_overrides(policy.limits, a)?;
        config.check_limits(&policy.limits).map_err(|r| RequestError::invalid(Input::SystemConfig, r))?;
        Ok(Grounds { caller, config, policy })
    }
}

/// What a kernel adds to a request; `kernel.rs` makes it, as the caller, from the
/// connection file and the working directory.
pub struct KernelParts {
    /// The submission, read-only beneath a scratch; also the kernel's working directory.
    pub overlay: PreparedOverlay,
    /// The connection file, rewritten for the inside.
    pub runtime: RuntimeDir,
    /// The host ends of the five channels.
    pub relay: RelaySpec,
    /// A pidfd of the client: its end ends the sandbox.
    pub client: OwnedFd,
    /// Which argument is the connection file's path (replaced by the inside one).
    pub connection_arg: usize,
    pub connection_inside: PathBuf,
    /// Variables for the kernel beyond the policy's (`JPY_PARENT_PID`, nbgrader's own).
    pub env: Vec<(String, String)>,
}

/// Everything a sandbox needs, validated; only this reaches the privileged steps.
pub struct Request {
    pub caller: Caller,
    pub config: Config,
    pub policy: Policy,
    /// The policy's binds and the command line's, parents first, opened as the caller.
    pub binds: Vec<PreparedBind>,
    pub filters: Vec<seccompiler::BpfProgram>,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub program: PathBuf,
    pub argv: Vec<CString>,
    pub stdio: crate::stdio::Spec,
    pub kernel: Option<KernelParts>,
}

/// The pieces of a request the supervisor keeps (the rest goes into the [`Plan`]).
pub struct Supervised {
    pub limits: Limits,
    pub stdio: crate::stdio::Spec,
    pub relay: Option<RelaySpec>,
    pub watch: Option<OwnedFd>,
}

impl Request {
    /// Validate the rest of the request against its grounds and open what it names, as the
    /// caller. `kernel`: the parts a kernel adds; its working directory is the submission.
    pub fn new(
        g: Grounds,
        a: &SandboxArgs,
        command: &[OsString],
        stdio: crate::stdio::Spec,
        kernel: Option<KernelParts>,
    ) -> Result<Request, RequestError> {
        let Grounds { caller, config, policy } = g;
        let mut binds = policy.binds.clone();
        for spec in &a.binds {
            binds.push(
                parse_bind(spec).map_err(|r| RequestError::invalid(Input::OptionValue("--bind", spec.clone()), r))?,
            );
        }
        for spec in &a.links {
            let path = policy::sandbox_path(spec, true)
                .map_err(|r| RequestError::invalid(Input::OptionValue("--link", spec.clone()), r))?;
            binds.push(Bind {
                source: path.clone(),
                target: path,
                writable: false,
                optional: false,
                symlink: SymlinkMode::Copy,
            });
        }
        policy::validate_binds(&mut binds)
            .map_err(|(i, r)| RequestError::invalid(Input::Bind(binds[i].target.clone()), r))?;
        let workdir = match (&kernel, &a.workdir) {
            (Some(k), _) => k.overlay.target.clone(),
            (None, Some(w)) => {
                policy::sandbox_path(w, false).map_err(|r| RequestError::invalid(Input::Option("--workdir"), r))?
            }
            (None, None) => policy.workdir.clone(),
        };
        let mut env = build_env(&policy.env, &a.env)?;
        let (program, mut argv) = program(command)?;
        if let Some(k) = &kernel {
            for (name, value) in &k.env {
                policy::check_env(name, value).map_err(|r| RequestError::invalid(Input::Command, r))?;
                env.retain(|(n, _)| n != name);
                env.push((name.clone(), value.clone()));
            }
            let inside = CString::new(k.connection_inside.as_os_str().as_bytes())
                .map_err(|_| RequestError::invalid(Input::Command, "an argument contains a NUL byte"))?;
            match argv.get_mut(k.connection_arg) {
                Some(arg) => *arg = inside,
                None => return Err(RequestError::invalid(Input::Command, "no connection file among the arguments")),
            }
        }

        // Opened as the caller: they may only expose what they themselves can read.
        let mut prepared = Vec::new();
        for b in &binds {
            if let Some(source) = caller.open_bind_source(&b.source, b.writable, b.optional, b.symlink)? {
                prepared.push(PreparedBind { source, target: b.target.clone(), writable: b.writable });
            }
        }
        let filters = seccomp::compile(policy.seccomp)?;
        tracing::debug!(binds = prepared.len(), policy = %policy.name, kernel = kernel.is_some(), "request validated");
        Ok(Request { caller, config, policy, binds: prepared, filters, workdir, env, program, argv, stdio, kernel })
    }

    /// What the report says about the sandbox, before a slot is taken.
    pub fn info(&self) -> SandboxInfo {
        SandboxInfo {
            policy: self.policy.name.clone(),
            landlock: match self.policy.landlock {
                LandlockMode::Off => "off".into(),
                _ => match crate::sys::landlock::kernel_abi() {
                    0 => "unsupported".into(),
                    abi => format!("abi-{abi}"),
                },
            },
            seccomp: format!("{:?}", self.policy.seccomp).to_lowercase(),
            ..Default::default()
        }
    }

    /// The one place a [`Plan`] is made: for the slot's uid, its cgroup (v1: the `tasks`
    /// files to join), and the empty directory the new root is mounted on. Also returns what
    /// the supervisor keeps.
    pub fn into_plan(
        self,
        root_dir: PathBuf,
        uid: u32,
        cgroup_join: Vec<OwnedFd>,
        rootless: Option<crate::plan::Outside>,
    ) -> (Plan, Supervised) {
        let landlock_rules = landlock_rules(&self.binds, self.kernel.as_ref().map(|k| &k.overlay), self.policy.ptys);
        let search_path = search_path(&self.env);
        let (overlay, runtime, relay, watch) = match self.kernel {
            Some(k) => (Some(k.overlay), Some(k.runtime), Some(k.relay), Some(k.client)),
            None => (None, None, None, None),
        };
        let p = self.policy;
        let rlimits = match rootless {
            None => crate::plan::rlimits(&p.limits),
            Some(_) => crate::plan::within_hard_limits(crate::plan::rlimits(&p.limits), |r| {
                nix::sys::resource::getrlimit(r).map_or(libc::RLIM_INFINITY, |(_, hard)| hard)
            }),
        };
        let plan = Plan {
            root_dir,
            cgroup_join,
            binds: self.binds,
            overlay,
            runtime,
            limits: p.limits.clone(),
            rlimits,
            rootless,
            namespaces: None,
            hostname: p.hostname,
            workdir: self.workdir,
            proc: p.proc,
            ptys: p.ptys,
            uid,
            landlock: p.landlock,
            landlock_rules,
            seccomp: self.filters,
            program: self.program,
            search_path,
            argv: self.argv,
            env: self.env.iter().map(|(k, v)| CString::new(format!("{k}={v}")).expect("validated: no NUL")).collect(),
            stdio: None, // the supervisor's pipes, made just before the clone
        };
        (plan, Supervised { limits: p.limits, stdio: self.stdio, relay, watch })
    }
}

/// Landlock's rules, from the mount list: everything may be read (the mounts decide what
/// exists); writes only where the sandbox has a writable mount: its own `/tmp` and
/// `/dev/shm`, the harmless devices, `/dev/pts` when it has pseudo-terminals, the writable
/// binds, and a kernel's working directory (the scratch above the submission).
pub fn landlock_rules(binds: &[PreparedBind], overlay: Option<&PreparedOverlay>, ptys: u32) -> LandlockRules {
    let mut write: Vec<PathBuf> = vec!["/tmp".into(), "/dev/shm".into()];
    if ptys > 0 {
        // opening /dev/ptmx (a link to pts/ptmx) and the slaves it makes
        write.push("/dev/pts".into());
    }
    write.extend(binds.iter().filter(|b| b.writable).map(|b| b.target.clone()));
    write.extend(overlay.map(|o| o.target.clone()));
    LandlockRules {
        read: vec!["/".into()],
        write,
        write_files: DEVICES
            .iter()
            .filter(|(d, _, _)| ["null", "zero", "full"].contains(d))
            .map(|(d, _, _)| PathBuf::from(format!("/dev/{d}")))
            .collect(),
    }
}

/// Where a program without `/` is looked up inside: the absolute entries of `PATH`.
fn search_path(env: &[(String, String)]) -> Vec<PathBuf> {
    env.iter()
        .find_map(|(k, v)| {
            (k == "PATH").then(|| v.split(':').filter(|d| d.starts_with('/')).map(PathBuf::from).collect())
        })
        .unwrap_or_default()
}

fn load_policy(spec: &str, caller: &Caller, config: &Config) -> Result<Policy, RequestError> {
    if policy::is_path(spec) {
        let text = caller.read_file(Path::new(spec))?;
        return Ok(Policy::parse(spec, &text)?);
    }
    if spec.is_empty() || !spec.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(RequestError::invalid(
            Input::OptionValue("--policy", format!("{spec:?}")),
            "a name is letters, digits, '-' and '_'; a path contains '/'",
        ));
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

fn with_overrides(mut l: Limits, a: &SandboxArgs) -> Result<Limits, RequestError> {
    let bad = |flag: &'static str, e: units::UnitError| RequestError::invalid(Input::Option(flag), e.to_string());
    if let Some(v) = &a.memory {
        l.memory = units::parse_size(v).map_err(|e| bad("--memory", e))?;
        policy::check_memory(l.memory).map_err(|r| RequestError::invalid(Input::Option("--memory"), r))?;
    }
    if let Some(v) = &a.cpu_time {
        l.cpu_time = units::parse_duration(v).map_err(|e| bad("--cpu-time", e))?;
    }
    if let Some(v) = &a.wall_time {
        l.wall_time = units::parse_duration(v).map_err(|e| bad("--wall-time", e))?;
    }
    if let Some(v) = &a.pids {
        l.pids = units::parse_count(v, 1 << 22).map_err(|e| bad("--pids", e))?;
    }
    if let Some(v) = &a.tmp_size {
        l.tmp_size = units::parse_size(v).map_err(|e| bad("--tmp-size", e))?;
    }
    if let Some(v) = &a.cpu_quota {
        l.cpu_quota_millicores = units::parse_cores(v).map_err(|e| bad("--cpu-quota", e))?;
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

fn build_env(policy_env: &[(String, String)], extra: &[String]) -> Result<Vec<(String, String)>, RequestError> {
    let mut env: Vec<(String, String)> = policy_env.to_vec();
    for spec in extra {
        let (k, v) = match spec.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(spec) {
                Ok(v) => (spec.clone(), v),
                Err(_) => continue, // passing an unset variable passes nothing
            },
        };
        policy::check_env(&k, &v).map_err(|r| RequestError::invalid(Input::OptionValue("--env", k.clone()), r))?;
        env.retain(|(name, _)| name != &k);
        env.push((k, v));
    }
    Ok(env)
}

fn program(command: &[OsString]) -> Result<(PathBuf, Vec<CString>), RequestError> {
    let argv: Vec<CString> = command
        .iter()
        .map(|a| {
            CString::new(a.as_bytes())
                .map_err(|_| RequestError::invalid(Input::Command, "an argument contains a NUL byte"))
        })
        .collect::<Result<_, _>>()?;
    let first = command.first().ok_or_else(|| RequestError::invalid(Input::Command, "no program given"))?;
    if first.is_empty() {
        return Err(RequestError::invalid(Input::Command, "empty program name"));
    }
    Ok((PathBuf::from(first), argv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::BindSource;

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
        assert_eq!(build_env(&base, &["A=x\0y".into()]).unwrap_err().to_string(), "--env A: value contains a NUL byte");
    }

    #[test]
    fn invalid_inputs_name_themselves_as_before() {
        let e = |i, r: &str| RequestError::invalid(i, r).to_string();
        assert_eq!(e(Input::Option("--memory"), "must be at least 4M"), "--memory: must be at least 4M");
        assert_eq!(e(Input::OptionValue("--bind", "a:b".into()), "why"), "--bind a:b: why");
        assert_eq!(e(Input::Bind("/t".into()), "why"), "bind /t: why");
        assert_eq!(e(Input::Command, "no program given"), "no program given");
        assert_eq!(e(Input::SystemConfig, "memory 3G exceeds"), "memory 3G exceeds");
        let port = Input::Port { key: "hb_port", port: 5005, ip: [127, 0, 0, 1].into() };
        assert_eq!(e(port, "in use"), "hb_port 5005 on 127.0.0.1: in use");
    }

    #[test]
    fn landlock_writes_exactly_where_the_mounts_are_writable() {
        let null = || BindSource::Symlink("/x".into());
        let binds = vec![
            PreparedBind { source: null(), target: "/data".into(), writable: false },
            PreparedBind { source: null(), target: "/out".into(), writable: true },
        ];
        let r = landlock_rules(&binds, None, 0);
        assert_eq!(r.read, vec![PathBuf::from("/")]);
        assert_eq!(r.write, ["/tmp", "/dev/shm", "/out"].map(PathBuf::from));
        assert_eq!(r.write_files, ["/dev/null", "/dev/zero", "/dev/full"].map(PathBuf::from));
        let r = landlock_rules(&binds, None, 2);
        assert!(r.write.contains(&PathBuf::from("/dev/pts")));
    }

    #[test]
    fn the_search_path_is_paths_absolute_entries() {
        let env = vec![("PATH".to_string(), "/usr/bin:rel::/bin".to_string())];
        assert_eq!(search_path(&env), ["/usr/bin", "/bin"].map(PathBuf::from));
        assert!(search_path(&[]).is_empty());
    }
}

//! Shared harness for the integration tests: run the real `isolate-grade` binary (as root)
//! and read its report; run the probe inside and read what it saw.
//!
//! With `ISOLATE_GRADE_TEST_ROOTLESS=1` (see [`rootless`]) the same tests run the binary as an
//! unprivileged caller instead: `nobody` with no capabilities in any set (`setpriv`), so in
//! rootless mode, under best-effort variants of the built-in policies (no cgroup is there
//! for nobody on this host, and the built-in policies require limits). The test process itself
//! stays root, to set this up and to look at the whole host afterwards.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// The built-in system config (`--config /dev/null` is an empty one): a verdict must not depend
/// on whatever /etc/isolate-grade/config.toml this host has, whose maxima could refuse a limit
/// outright (exit 2) or change the slot uids.
pub const DEFAULTS: [&str; 2] = ["--config", "/dev/null"];

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_isolate-grade"))
}

pub fn test_config() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/config/test.toml"))
}

pub fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_isolate-grade-probe"))
}

/// The switch: the suites' runs are rootless (as [`NOBODY`]) when this is `1`.
pub const ROOTLESS_SWITCH: &str = "ISOLATE_GRADE_TEST_ROOTLESS";

/// True when the tests run the binary rootless (`ISOLATE_GRADE_TEST_ROOTLESS=1`); any other
/// value but unset or `0` is a mistake, not a quiet privileged run.
pub fn rootless() -> bool {
    match std::env::var(ROOTLESS_SWITCH).as_deref() {
        Ok("1") => true,
        Ok("0") | Err(_) => false,
        Ok(other) => panic!("{ROOTLESS_SWITCH}={other:?}: expected 1 or 0"),
    }
}

/// The unprivileged caller of rootless runs: nobody, no groups, no capability in any set.
pub const NOBODY_UID: u32 = 65534;
pub const NOBODY: &[&str] =
    &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"];

/// The variable that marks every process of one run (see [`command`]).
pub const MARKER_VAR: &str = "ISOLATE_GRADE_TEST_RUN";

/// What rootless runs need, made once per test binary: a directory nobody owns (mode 0755)
/// under the target dir (reachable by nobody, unlike a root-owned 0700 tempdir), holding
/// nobody's runtime dir (0700, as systemd makes it: the state directory goes there) and the
/// best-effort variants of the built-in policies.
fn rootless_home() -> &'static PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rootless-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(home.join("runtime")).unwrap();
        for name in ["default", "strict"] {
            let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies")).join(format!("{name}.toml"));
            let text = std::fs::read_to_string(&path).unwrap();
            // the built-in policy with one change: limits it can't enforce without a cgroup are
            // reported instead of refused
            assert!(!text.contains("\nlimits ="), "{}: already says limits", path.display());
            let text = text.replacen("\n[sandbox]\n", "\n[sandbox]\nlimits = \"best-effort\"\n", 1);
            assert!(text.contains("limits = \"best-effort\""), "{}: no [sandbox] table", path.display());
            std::fs::write(home.join(format!("{name}.toml")), text).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.join("runtime"), std::fs::Permissions::from_mode(0o700)).unwrap();
        for p in [home.clone(), home.join("runtime")] {
            std::os::unix::fs::chown(&p, Some(NOBODY_UID), Some(NOBODY_UID)).unwrap();
        }
        home
    })
}

/// The best-effort variant of built-in policy `name` (`default`, `strict`) rootless runs get.
pub fn best_effort_policy(name: &str) -> PathBuf {
    rootless_home().join(format!("{name}.toml"))
}

/// The arguments of `run` (after the subcommand) as the tests wrote them, adjusted for
/// rootless runs: `--policy default|strict` becomes its best-effort variant, a run without
/// `--policy` gets the default one, and every run passes on [`MARKER_VAR`]. Unchanged
/// otherwise (privileged runs, and a policy given by path or an unknown name, which must fail
/// as it would).
pub fn run_args(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if !rootless() {
        return out;
    }
    let mut given = false;
    let mut i = 0;
    while i < out.len() {
        let (flag, value) = match out[i].split_once('=') {
            Some(("--policy", v)) => (true, Some(v.to_string())),
            _ => (out[i] == "--policy", out.get(i + 1).cloned()),
        };
        if flag {
            given = true;
            if let Some(v) = value.filter(|v| v == "default" || v == "strict") {
                let path = best_effort_policy(&v).display().to_string();
                if out[i].starts_with("--policy=") {
                    out[i] = format!("--policy={path}");
                } else {
                    out[i + 1] = path;
                }
            }
        }
        i += 1;
    }
    if !given {
        out.splice(0..0, ["--policy".to_string(), best_effort_policy("default").display().to_string()]);
    }
    out.splice(0..0, ["--env".to_string(), MARKER_VAR.to_string()]);
    out
}

/// A fresh marker for one run (see [`command`]).
pub fn new_marker() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// The binary, ready for its arguments: privileged, `isolate-grade` itself; rootless, run
/// through [`NOBODY`] (which execs it: the pid is the supervisor's) with nobody's runtime
/// dir. Either way `marker` is in its environment ([`MARKER_VAR`]): the supervisor, the
/// sandbox's init (its clone) and, with [`run_args`]' `--env`, the program and whatever it
/// starts carry it, which is how a rootless test finds the processes of a run (on the host
/// they are all nobody's, as are other callers' sandboxes).
pub fn command(marker: &str) -> Command {
    let mut cmd = if rootless() {
        let mut cmd = Command::new(NOBODY[0]);
        cmd.args(&NOBODY[1..]).arg(bin()).env("XDG_RUNTIME_DIR", rootless_home().join("runtime"));
        cmd
    } else {
        Command::new(bin())
    };
    cmd.env(MARKER_VAR, marker);
    cmd
}

/// A temporary directory the caller of the runs can use: as root's tempdir (0700, root's) for
/// privileged runs; nobody's for rootless ones (a caller's own directory, where it writes its
/// report and whose files it binds).
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if rootless() {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY_UID), Some(NOBODY_UID)).unwrap();
    }
    dir
}

/// Live processes carrying `marker` ([`command`]) in their environment. A zombie has no
/// environment left to read, so it is not seen: a rootless test can't tell its run's zombies
/// from other callers' (all nobody's), where a privileged one sees every process of a slot uid.
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let needle = format!("{MARKER_VAR}={marker}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split_inclusive(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

/// Under the switch, a run that got as far as a sandbox must have been rootless: the harness
/// did drop to nobody (else the rootless expectations would be tested privileged). For a
/// report (a run's or a kernel's) the test read itself.
pub fn assert_mode(report: &Value) {
    if rootless() {
        let mode = &report["sandbox"]["mode"];
        assert!(mode.is_null() || mode == "rootless", "{ROOTLESS_SWITCH}=1 but the run was {mode}: {report}");
    }
}

/// Privileged tests need root. Outside CI they are skipped with a note; in CI (`CI=true`)
/// a missing privilege is a failure, so the suite can never pass by skipping.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test needs root, and CI=true: run the suite as root");
    }
    eprintln!("skipped: needs root");
    false
}

/// One lock per test binary (each compiles its own copy of this module). A test that holds it
/// runs alone among the tests of its file that take it too: a slot is reused as soon as a run
/// ends, so "no process of this uid is left" is only meaningful while no other run of ours can
/// have taken the same slot (and uid) in the meantime.
static SERIAL: Mutex<()> = Mutex::new(());

/// Held for a whole test. A failed test (a poisoned lock) must not fail the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`require_root`], then [`serial`]: the start of a privileged test that runs alone,
/// `let Some(_serial) = root_serial() else { return };` (`None`: skipped, not root).
pub fn root_serial() -> Option<MutexGuard<'static, ()>> {
    require_root().then(serial)
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub report: Value,
    pub stdout: String,
    pub stderr: String,
    /// The run's [`MARKER_VAR`] value.
    pub marker: String,
}

impl Run {
    pub fn status(&self) -> &str {
        self.report["status"].as_str().unwrap_or("<no report>")
    }
}

/// `isolate-grade run --report FILE <args> -- <program>`.
pub fn run(args: &[&str], program: &[&str]) -> Run {
    run_with(args, program, |_| {})
}

/// Like [`run`], with a hook to adjust the command (environment, stdin...).
pub fn run_with(args: &[&str], program: &[&str], adjust: impl FnOnce(&mut Command)) -> Run {
    let dir = tempdir();
    let report = dir.path().join("report.json");
    let marker = new_marker();
    let mut cmd = command(&marker);
    cmd.arg("run").arg("--report").arg(&report).args(run_args(args)).arg("--").args(program);
    cmd.stdin(Stdio::null());
    // Root may choose the config: the tests' own, whatever /etc/isolate-grade holds.
    cmd.env("ISOLATE_GRADE_CONFIG", test_config());
    adjust(&mut cmd);
    let out = cmd.output().expect("run isolate-grade");
    let report =
        std::fs::read_to_string(&report).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        report,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        marker,
    };
    assert_mode(&r.report);
    r
}

/// Run the probe inside the sandbox (bound read-only at /probe) and parse what it printed.
pub fn run_probe(args: &[&str], probe_args: &[&str]) -> (Run, Value) {
    let bind = format!("{}:/probe", probe().display());
    let mut all = vec!["--bind", bind.as_str()];
    all.extend_from_slice(args);
    let mut program = vec!["/probe"];
    program.extend_from_slice(probe_args);
    let r = run(&all, &program);
    let seen = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| {
        panic!("probe output: {e}\nstdout: {}\nstderr: {}\nreport: {}", r.stdout, r.stderr, r.report)
    });
    (r, seen)
}

/// Processes on the host whose real uid is `uid` (there must be none once a run is over).
pub fn processes_of_uid(uid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(status) = std::fs::read_to_string(e.path().join("status")) {
            let real = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse::<u32>().ok());
            if real == Some(uid) {
                pids.push(pid);
            }
        }
    }
    pids
}

//! Shared harness for the integration tests: run the real `isolate-grade` binary (as root)
//! and read its report; run the probe inside and read what it saw.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

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
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut cmd = Command::new(bin());
    cmd.arg("run").arg("--report").arg(&report).args(args).arg("--").args(program);
    cmd.stdin(Stdio::null());
    // Root may choose the config: the tests' own, whatever /etc/isolate-grade holds.
    cmd.env("ISOLATE_GRADE_CONFIG", test_config());
    adjust(&mut cmd);
    let out = cmd.output().expect("run isolate-grade");
    let report =
        std::fs::read_to_string(&report).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
    Run {
        code: out.status.code().unwrap_or(-1),
        report,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
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

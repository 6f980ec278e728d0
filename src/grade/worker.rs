//! A long-lived Python process that imports nbgrader once and autogrades one submission per
//! request (`worker.py`, embedded and run with `python -c`). JSON lines over its stdin and
//! stdout; its stderr, nbgrader's log, goes to a file.
//!
//! It runs as the instructor (the batch dropped any privilege before), in its own process
//! group (the terminal's Ctrl-C is ours to handle), and dies with the thread that started
//! it (`PR_SET_PDEATHSIG`), so a killed batch leaves no worker behind; its kernels follow it
//! (`isolate-grade kernel` ends its sandbox when its parent dies).
//!
//! nbgrader runs outside the sandbox, so each worker has limits of its own for each
//! submission ([`Limits`]): its resident memory and its own CPU time (not its children's: the
//! kernels have their sandbox's), sampled from `/proc/<pid>` while it grades. Past either, the
//! worker is killed and replaced, and the student gets a verdict. Not rlimits: the worker is
//! long-lived (RLIMIT_CPU adds up over every student), and its children, the kernels'
//! supervisors, would inherit an RLIMIT_AS or RLIMIT_DATA and, until the sandbox resets it,
//! their kernels with them. The peak between two samples is not missed: the kernel's
//! high-water mark (`VmHWM`) is reset for each submission (`clear_refs`) and read with the rest.

pub use super::protocol::{Answer, Failure, FatalFault, Ready, Setup};
use super::protocol::{DecodeError, FromWorker, Grade, ToWorker};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const SCRIPT: &str = include_str!("worker.py");

/// How often a grading worker's memory and CPU time are sampled.
const SAMPLE: Duration = Duration::from_millis(100);

/// How long a worker may take to import nbgrader and open the gradebook.
const START_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{python}: {source}")]
    Spawn { python: PathBuf, source: std::io::Error },
    /// The worker cannot grade this assignment at all (no nbgrader, not in the gradebook...).
    #[error("{0}")]
    Fatal(String),
    /// The gradebook can't be reached (the worker's message: its URL without the password).
    #[error("{0}")]
    Gradebook(String),
    #[error("the grading worker died (its log: {log})")]
    Died { log: PathBuf },
    #[error("no answer from the grading worker within {0:?}")]
    Timeout(Duration),
    #[error("the grading worker said something unexpected: {0}")]
    Protocol(String),
    /// worker.py and this binary do not speak the same [`super::protocol::PROTOCOL`].
    #[error("{0}")]
    Version(String),
    #[error("writing to the grading worker: {0}")]
    Write(std::io::Error),
    #[error("the batch is stopping")]
    Stopped,
    /// nbgrader needed more than the worker's limits for this submission: the submission's
    /// outcome, not a fault.
    #[error(transparent)]
    OverLimit(Exceeded),
}

impl WorkerError {
    fn fatal(f: super::protocol::Fatal) -> WorkerError {
        match f.fault {
            None => WorkerError::Fatal(f.error),
            Some(FatalFault::Gradebook) => WorkerError::Gradebook(f.error),
        }
    }
}

/// What one worker may use for one submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Resident memory, bytes.
    pub memory: u64,
    /// The worker's own CPU time (user + system, all its threads, none of its children).
    pub cpu_time: Duration,
}

/// Which limit a worker passed, and by how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error(
        "nbgrader needed more than {} of memory to grade this submission (its worker was stopped; \
         the instructor's --worker-memory raises the limit)",
        crate::units::format_size(*limit)
    )]
    Memory { used: u64, limit: u64 },
    #[error(
        "nbgrader needed more than {} of CPU time to grade this submission (its worker was stopped; \
         the instructor's --worker-cpu-time raises the limit)",
        crate::units::format_duration(*limit)
    )]
    Cpu { used: Duration, limit: Duration },
}

/// A worker's usage as `/proc/<pid>` tells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Resident now, and the high-water mark (since the last reset), bytes.
    pub rss: u64,
    pub peak: u64,
    /// Its own user + system time, all threads, not its children's.
    pub cpu: Duration,
}

impl Usage {
    /// Read `/proc/<pid>/status` and `/proc/<pid>/stat` under `proc` (a fake in tests).
    pub fn read(proc: &Path, pid: u32) -> Option<Usage> {
        let dir = proc.join(pid.to_string());
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let kb = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line[key.len()..].split_whitespace().next()?.parse::<u64>().ok().map(|k| k * 1024)
        };
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // after the command's closing parenthesis (the command may hold any character):
        // field 3 (state) first, so utime (14) and stime (15) are the 12th and 13th
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let hz =
            nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|h| *h > 0).unwrap_or(100);
        let rss = kb("VmRSS:")?;
        Some(Usage { rss, peak: kb("VmHWM:").unwrap_or(rss), cpu: Duration::from_millis(ticks * 1000 / hz as u64) })
    }

    /// What passes `limits`, counting CPU time from `start` (the usage when the submission
    /// was handed over); the peak only when it was reset for this submission.
    pub fn exceeds(&self, start: &Usage, limits: &Limits, peak_is_ours: bool) -> Option<Exceeded> {
        let memory = if peak_is_ours { self.rss.max(self.peak) } else { self.rss };
        let cpu = self.cpu.saturating_sub(start.cpu);
        if memory > limits.memory {
            Some(Exceeded::Memory { used: memory, limit: limits.memory })
        } else if cpu > limits.cpu_time {
            Some(Exceeded::Cpu { used: cpu, limit: limits.cpu_time })
        } else {
            None
        }
    }
}

/// Reset a process's high-water mark of resident memory (`VmHWM`), so that it tells the peak
/// of what comes next; false if the kernel would not.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: PathBuf,
}

impl Worker {
    /// Start a worker and wait until it has nbgrader loaded and has found the assignment.
    pub fn start(python: &Path, setup: &Setup, log: &Path) -> Result<(Worker, Ready), WorkerError> {
        let spawn = |source| WorkerError::Spawn { python: python.to_path_buf(), source };
        let logfile = std::fs::File::options().create(true).append(true).open(log).map_err(spawn)?;
        let mut cmd = Command::new(python);
        cmd.args(["-c", SCRIPT])
            .current_dir(&setup.course)
            .env_remove("ISOLATE_GRADE_REPORT_DIR")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(logfile)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe prctl(2) system call; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                crate::sys::raw::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(spawn)?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Worker { stdin: child.stdin.take(), child, lines, log: log.to_path_buf() };
        w.send(&ToWorker::Setup(Box::new(setup.clone())).encode())?;
        let line = w.receive(START_TIMEOUT)?;
        match FromWorker::decode(&line) {
            Ok(FromWorker::Ready(r)) => Ok((w, r)),
            Ok(FromWorker::Fatal(f)) => Err(WorkerError::fatal(f)),
            Ok(FromWorker::Answer(_)) => Err(WorkerError::Protocol("an answer before it was ready".into())),
            Err(DecodeError::Version { worker }) => {
                Err(WorkerError::Version(DecodeError::Version { worker }.to_string()))
            }
            Err(DecodeError::Json(e)) => Err(w.protocol(&e, &line)),
        }
    }

    /// A line we could not read: what was wrong with it goes into the error, the line itself
    /// (nbgrader's log, which quotes notebooks and their hidden tests) only into the worker's
    /// log, which is the instructor's.
    fn protocol(&self, e: &serde_json::Error, line: &str) -> WorkerError {
        let cut: String = line.chars().take(100_000).collect();
        let note = format!("\n[isolate-grade] unreadable answer ({e}):\n{}\n", crate::escape::text(&cut));
        let _ = std::fs::File::options().append(true).open(&self.log).and_then(|mut f| f.write_all(note.as_bytes()));
        WorkerError::Protocol(format!("{e} (the answer is in {})", self.log.display()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Autograde one student's submission; `Timeout` and `OverLimit` leave the worker to be
    /// killed.
    pub fn grade(
        &mut self,
        student: &str,
        timeout: Duration,
        limits: &Limits,
        stop: &AtomicBool,
    ) -> Result<Answer, WorkerError> {
        let proc = Path::new("/proc");
        let pid = self.pid();
        let peak_is_ours = reset_peak(pid);
        let start = Usage::read(proc, pid).unwrap_or_default();
        self.send(&ToWorker::Grade(Grade { student: student.into() }).encode())?;
        let until = Instant::now() + timeout;
        let line = loop {
            if stop.load(Ordering::SeqCst) {
                return Err(WorkerError::Stopped);
            }
            if let Some(over) = Usage::read(proc, pid).and_then(|u| u.exceeds(&start, limits, peak_is_ours)) {
                tracing::info!(student, worker = pid, ?over, "grading worker past its limit");
                return Err(WorkerError::OverLimit(over));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WorkerError::Timeout(timeout));
            }
            match self.receive(left.min(SAMPLE)) {
                Err(WorkerError::Timeout(_)) => continue,
                other => break other?,
            }
        };
        let a = match FromWorker::decode(&line) {
            Ok(FromWorker::Answer(a)) => *a,
            Ok(FromWorker::Fatal(f)) => return Err(WorkerError::fatal(f)),
            Ok(FromWorker::Ready(_)) => return Err(WorkerError::Protocol("ready again, asked to grade".into())),
            Err(DecodeError::Version { worker }) => {
                return Err(WorkerError::Version(DecodeError::Version { worker }.to_string()))
            }
            Err(DecodeError::Json(e)) => return Err(self.protocol(&e, &line)),
        };
        if a.student != student {
            return Err(WorkerError::Protocol(format!("asked for {student}, got {}", a.student)));
        }
        Ok(a)
    }

    fn send(&mut self, line: &str) -> Result<(), WorkerError> {
        let stdin = self.stdin.as_mut().ok_or(WorkerError::Died { log: self.log.clone() })?;
        match stdin.write_all(format!("{line}\n").as_bytes()).and_then(|_| stdin.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(WorkerError::Died { log: self.log.clone() }),
            Err(e) => Err(WorkerError::Write(e)),
        }
    }

    fn receive(&mut self, timeout: Duration) -> Result<String, WorkerError> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(WorkerError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(WorkerError::Died { log: self.log.clone() }),
        }
    }

    /// Kill it (our own child, not yet reaped: the pid can't have been reused) and reap it.
    pub fn kill(mut self) {
        self.stop(true);
    }

    fn stop(&mut self, kill: bool) {
        drop(self.stdin.take()); // end of input: a worker between submissions exits
        if kill {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            // Finished normally: it exits at end of input, between submissions.
            drop(self.stdin.take());
            match wait_timeout(&mut self.child, Duration::from_secs(10)) {
                Some(_) => {}
                None => self.stop(true),
            }
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup(dir: &Path) -> Setup {
        Setup {
            protocol: super::super::protocol::PROTOCOL,
            course: dir.to_path_buf(),
            assignment: "ps1".into(),
            submitted: dir.into(),
            twins: Default::default(),
            languages: Default::default(),
            route: String::new(),
            jupyter_path: dir.into(),
            lock: dir.join("lock"),
            reports: dir.into(),
            on_kernel_death: None,
            max_restarts: None,
        }
    }

    /// A stand-in for the Python worker (it ignores `-c SCRIPT`): says ready, then runs `then`
    /// when asked to grade.
    fn fake_worker(dir: &Path, then: &str) -> (Worker, Ready) {
        fake_start(dir, super::super::protocol::PROTOCOL, then).unwrap()
    }

    /// The same, saying ready in protocol `version`; the setup it read goes to `setup.json`.
    fn fake_start(dir: &Path, version: u32, then: &str) -> Result<(Worker, Ready), WorkerError> {
        let ready = format!(
            r#"{{"msg": "ready", "protocol": {version}, "pid": 1, "notebooks": [], "nbgrader": "0.9.6", "gradebook": "sqlite"}}"#
        );
        fake_hello(dir, &ready, then)
    }

    /// The same, first saying `ready` (a line).
    fn fake_hello(dir: &Path, ready: &str, then: &str) -> Result<(Worker, Ready), WorkerError> {
        let script = dir.join("fake-python");
        let seen = dir.join("setup.json");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nread setup\necho \"$setup\" > '{}'\necho '{ready}'\nread req\n{then}\n",
                seen.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Worker::start(&script, &setup(dir), &dir.join("worker.log"))
    }

    #[test]
    fn a_workers_fatal_at_setup_is_the_batchs_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let said = "nbgrader 0.8.3 is not a version isolate-grade was tested with (>=0.9,<0.10)";
        let e = fake_hello(d.path(), &format!(r#"{{"msg": "fatal", "error": "{said}"}}"#), "").map(|_| ()).unwrap_err();
        assert!(matches!(&e, WorkerError::Fatal(m) if m == said), "{e}");
        let e = crate::grade::GradeError::Worker { assignment: "ps1".into(), source: e };
        assert_eq!(e.to_string(), format!("cannot grade ps1: {said}"));
        assert_eq!(e.exit(), crate::grade::GradeExit::Usage);
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn a_worker_of_another_protocol_is_refused_clearly() {
        let d = tempfile::tempdir().unwrap();
        let e = fake_start(d.path(), 999, "").map(|_| ()).unwrap_err();
        assert!(matches!(e, WorkerError::Version(_)), "{e}");
        let shown = e.to_string();
        assert!(shown.contains("protocol 999") && shown.contains("same build"), "{shown}");
        // the setup it was sent says which protocol the batch speaks
        let setup: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("setup.json")).unwrap()).unwrap();
        assert_eq!(
            (setup["msg"].as_str(), setup["protocol"].as_u64()),
            (Some("setup"), Some(u64::from(super::super::protocol::PROTOCOL)))
        );
    }

    const ROOMY: Limits = Limits { memory: 1 << 40, cpu_time: Duration::from_secs(3600) };

    #[test]
    fn an_unreadable_answer_is_a_short_error_and_its_text_goes_to_the_log_only() {
        let d = tempfile::tempdir().unwrap();
        // a lone surrogate (what a name that isn't UTF-8 became) in a log quoting hidden tests
        let (mut w, _) = fake_worker(
            d.path(),
            r#"echo '{"msg": "answer", "student": "s", "log": "assert hidden_answer() == 42 \udce9"}'"#,
        );
        let e = w.grade("s", Duration::from_secs(20), &ROOMY, &AtomicBool::new(false)).unwrap_err();
        let shown = e.to_string();
        assert!(matches!(e, WorkerError::Protocol(_)), "{shown}");
        assert!(!shown.contains("hidden_answer") && shown.len() < 300, "{shown}");
        assert!(shown.contains("worker.log"), "{shown}");
        assert!(std::fs::read_to_string(d.path().join("worker.log")).unwrap().contains("hidden_answer"));
        w.kill();
    }

    #[test]
    fn a_worker_past_its_memory_or_cpu_limit_is_stopped_with_the_submissions_verdict() {
        let d = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        // 600 MB touched, then waits: past a 300 MB limit
        let (mut w, _) =
            fake_worker(d.path(), "exec python3 -c 'x = bytearray(600 << 20); import time; time.sleep(60)'");
        let limits = Limits { memory: 300 << 20, ..ROOMY };
        let t = Instant::now();
        match w.grade("s", Duration::from_secs(50), &limits, &stop) {
            Err(WorkerError::OverLimit(Exceeded::Memory { used, limit })) => {
                assert!(used > limit && limit == 300 << 20, "{used}");
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(30));
        w.kill();
        // a busy loop in the worker itself: past a 1 s CPU budget
        let (mut w, _) = fake_worker(d.path(), "exec python3 -c 'while True: pass'");
        let limits = Limits { cpu_time: Duration::from_secs(1), ..ROOMY };
        match w.grade("s", Duration::from_secs(50), &limits, &stop) {
            Err(e @ WorkerError::OverLimit(Exceeded::Cpu { .. })) => {
                assert!(e.to_string().contains("--worker-cpu-time"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        w.kill();
    }

    #[test]
    fn usage_is_read_from_proc_own_cpu_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("42");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("status"), "Name:\tpython\nVmHWM:\t  300000 kB\nVmRSS:\t  200000 kB\n").unwrap();
        // a command with spaces and parentheses; utime 150, stime 50, cutime 9999 (children)
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
        std::fs::write(p.join("stat"), "42 (py (x) y) S 1 42 42 0 -1 0 0 0 0 0 150 50 9999 9999 20 0 1 0").unwrap();
        let u = Usage::read(d.path(), 42).unwrap();
        assert_eq!(u.rss, 200_000 * 1024);
        assert_eq!(u.peak, 300_000 * 1024);
        assert_eq!(u.cpu, Duration::from_millis(200 * 1000 / hz));
        let start = Usage { cpu: Duration::from_millis(100), ..Default::default() };
        let l = Limits { memory: 250_000 * 1024, cpu_time: Duration::from_secs(3600) };
        assert!(matches!(u.exceeds(&start, &l, true), Some(Exceeded::Memory { .. })));
        assert_eq!(u.exceeds(&start, &l, false), None, "a peak from before this submission is not its own");
        // 200 ticks, less the 100 ms used before the submission
        let l = Limits { memory: 1 << 40, cpu_time: u.cpu - Duration::from_millis(150) };
        assert!(matches!(u.exceeds(&start, &l, false), Some(Exceeded::Cpu { .. })));
        let l = Limits { memory: 1 << 40, cpu_time: u.cpu - Duration::from_millis(100) };
        assert_eq!(u.exceeds(&start, &l, false), None, "only the CPU time of this submission counts");
        assert_eq!(Usage::read(d.path(), 43), None);
    }
}

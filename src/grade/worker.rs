//! A long-lived Python process that imports nbgrader once and autogrades one submission per
//! request (`worker.py`, embedded and run with `python -c`). JSON lines over its stdin and
//! stdout; its stderr, nbgrader's log, goes to a file.
//!
//! It runs as the instructor (the batch dropped any privilege before), in its own process
//! group (the terminal's Ctrl-C is ours to handle), and dies with the thread that started
//! it (`PR_SET_PDEATHSIG`), so a killed batch leaves no worker behind; its kernels follow it
//! (`isolate-grade kernel` ends its sandbox when its parent dies).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const SCRIPT: &str = include_str!("worker.py");

/// How long a worker may take to import nbgrader and open the gradebook.
const START_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{python}: {source}")]
    Spawn { python: PathBuf, source: std::io::Error },
    /// The worker cannot grade this assignment at all (no nbgrader, not in the gradebook...).
    #[error("{0}")]
    Fatal(String),
    #[error("the grading worker died (its log: {log})")]
    Died { log: PathBuf },
    #[error("no answer from the grading worker within {0:?}")]
    Timeout(Duration),
    #[error("the grading worker said something unexpected: {0}")]
    Protocol(String),
    #[error("writing to the grading worker: {0}")]
    Write(std::io::Error),
    #[error("the batch is stopping")]
    Stopped,
}

/// What the worker needs to know once.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub course: PathBuf,
    pub assignment: String,
    /// nbgrader's `submitted_directory`: our checked copies.
    pub submitted: PathBuf,
    /// The routing of `src/route.py`: kernel name to the batch's twin, twin to language.
    pub twins: std::collections::BTreeMap<String, String>,
    pub languages: std::collections::BTreeMap<String, String>,
    pub route: String,
    pub jupyter_path: PathBuf,
    pub lock: PathBuf,
    pub reports: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    pub pid: u32,
    pub notebooks: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NotebookScore {
    pub score: f64,
    pub max_score: f64,
    pub needs_manual_grade: bool,
}

/// nbgrader's result for one submission.
#[derive(Debug, Clone, Deserialize)]
pub struct Answer {
    pub student: String,
    pub success: bool,
    #[serde(default)]
    pub wall: f64,
    #[serde(default)]
    pub notebook_wall: BTreeMap<String, f64>,
    #[serde(default)]
    pub log: String,
    pub error: Option<String>,
    pub notebooks: Option<BTreeMap<String, NotebookScore>>,
    pub seconds_late: Option<f64>,
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
        w.send(&serde_json::to_string(setup).expect("serializes"))?;
        let line = w.receive(START_TIMEOUT)?;
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Hello {
            Ready(Ready),
            Fatal(String),
        }
        match serde_json::from_str::<Hello>(&line) {
            Ok(Hello::Ready(r)) => Ok((w, r)),
            Ok(Hello::Fatal(msg)) => Err(WorkerError::Fatal(msg)),
            Err(e) => Err(WorkerError::Protocol(format!("{e}: {line}"))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Autograde one student's submission; `Timeout` leaves the worker to be killed.
    pub fn grade(&mut self, student: &str, timeout: Duration, stop: &AtomicBool) -> Result<Answer, WorkerError> {
        self.send(&serde_json::json!({ "student": student }).to_string())?;
        let until = Instant::now() + timeout;
        let line = loop {
            if stop.load(Ordering::SeqCst) {
                return Err(WorkerError::Stopped);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WorkerError::Timeout(timeout));
            }
            match self.receive(left.min(Duration::from_millis(200))) {
                Err(WorkerError::Timeout(_)) => continue,
                other => break other?,
            }
        };
        let a: Answer = serde_json::from_str(&line).map_err(|e| WorkerError::Protocol(format!("{e}: {line}")))?;
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

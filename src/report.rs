//! The verdict of a run: what the program did, kept apart from faults of the sandbox itself
//! (isolate's `die()` versus `err()`), as JSON and as the process exit code.
//!
//! Schema `isolate-grade.run/1` (see README.md, "The report"):
//! `status`, `exit_code`, `signal`, `wall_time`, `cpu_time`, `peak_memory`, `limits`,
//! `limits_hit`, `sandbox_error` {`step`, `message`}, `sandbox` {`policy`, `slot`, `uid`,
//! `cgroup`, `landlock`, `seccomp`}.

use crate::cgroup::Usage;
use crate::exit::RunExit;
use crate::fault::{Fault, HostStep};
use crate::policy::Limits;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const SCHEMA: &str = "isolate-grade.run/1";

/// The report's `status`: an [`Outcome`], or `sandbox-error` for a [`Fault`] (see [`RunEnd`]).
/// Everything but `SandboxError` is about the submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    ExitNonzero,
    Signaled,
    TimeoutWall,
    TimeoutCpu,
    MemoryLimit,
    PidsLimit,
    SeccompViolation,
    /// A kernel cell's output passed the limit: it was cut and the cell interrupted.
    OutputLimit,
    /// Our fault or the host's: the program did not run, or its result cannot be trusted.
    SandboxError,
}

/// Exit code for bad input (CLI, policy, config, a bind the caller cannot read); nothing ran.
/// [`crate::exit::USAGE`], under the name the batch and install use.
pub const EXIT_USAGE: u8 = crate::exit::USAGE;

impl Status {
    /// The process exit code of `isolate-grade run` ([`RunExit`]).
    pub fn exit_code(self) -> u8 {
        RunExit::from(self).code()
    }

    pub const ALL: [Status; 10] = [
        Status::Ok,
        Status::ExitNonzero,
        Status::Signaled,
        Status::TimeoutWall,
        Status::TimeoutCpu,
        Status::MemoryLimit,
        Status::PidsLimit,
        Status::SeccompViolation,
        Status::OutputLimit,
        Status::SandboxError,
    ];

    pub fn from_name(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::ExitNonzero => "exit-nonzero",
            Status::Signaled => "signaled",
            Status::TimeoutWall => "timeout-wall",
            Status::TimeoutCpu => "timeout-cpu",
            Status::MemoryLimit => "memory-limit",
            Status::PidsLimit => "pids-limit",
            Status::SeccompViolation => "seccomp-violation",
            Status::OutputLimit => "output-limit",
            Status::SandboxError => "sandbox-error",
        }
    }
}

/// How a program that ran ended, as the submission's doing or a limit's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    ExitNonzero,
    Signaled,
    TimeoutWall,
    TimeoutCpu,
    MemoryLimit,
    PidsLimit,
    SeccompViolation,
    /// A kernel cell's output passed the limit: it was cut and the cell interrupted.
    OutputLimit,
}

impl From<Outcome> for Status {
    fn from(o: Outcome) -> Status {
        match o {
            Outcome::Ok => Status::Ok,
            Outcome::ExitNonzero => Status::ExitNonzero,
            Outcome::Signaled => Status::Signaled,
            Outcome::TimeoutWall => Status::TimeoutWall,
            Outcome::TimeoutCpu => Status::TimeoutCpu,
            Outcome::MemoryLimit => Status::MemoryLimit,
            Outcome::PidsLimit => Status::PidsLimit,
            Outcome::SeccompViolation => Status::SeccompViolation,
            Outcome::OutputLimit => Status::OutputLimit,
        }
    }
}

/// A run either finished with an outcome, or failed with a fault of ours or the host's (and
/// then says nothing about the submission). In the report: `status`, and `sandbox_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Finished(Outcome),
    Fault(Fault),
}

impl RunEnd {
    pub fn status(&self) -> Status {
        match self {
            RunEnd::Finished(o) => Status::from(*o),
            RunEnd::Fault(_) => Status::SandboxError,
        }
    }

    pub fn fault(&self) -> Option<&Fault> {
        match self {
            RunEnd::Fault(f) => Some(f),
            RunEnd::Finished(_) => None,
        }
    }

    /// The process exit code of `isolate-grade run` and `kernel`.
    pub fn exit(&self) -> RunExit {
        RunExit::from(self.status())
    }
}

/// How the program ended, as its init saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Everything the supervisor observed, before classification.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub ended: Option<Ended>,
    pub killed_for_wall: bool,
    pub killed_for_cpu: bool,
    /// The process watched for a kernel (its client, jupyter_client) ended: killed with it.
    pub client_gone: bool,
    /// A kernel cell's output passed the limit: the rest was dropped, the cell interrupted.
    pub killed_for_output: bool,
    /// The program outlived the caller's SIGTERM by [`crate::supervisor::END_GRACE`]: killed.
    pub ended_by_caller: bool,
    /// A kernel's client had asked it to shut down (its `shutdown_request`, seen by the relay).
    pub shutdown_requested: bool,
    /// Signals the supervisor received from its caller and passed on to the program, in order.
    pub relayed: Vec<i32>,
    /// Output bytes: stdout and stderr through the supervisor's pipes, and a kernel's iopub.
    pub output_bytes: Option<u64>,
    pub usage: Usage,
    /// CPU time of the processes the sandbox's init reaped (the program among them), as the
    /// kernel counts it for `RLIMIT_CPU`: that limit may fire before the cgroup's count, read
    /// by the supervisor, shows the limit reached.
    pub reaped_cpu: Duration,
    /// Without a cgroup (rootless, best-effort limits): the supervisor's largest reading of the
    /// sandbox's process tree ([`crate::proctree`]).
    pub tree_cpu: Duration,
    pub wall: Duration,
}

impl Facts {
    /// The CPU time the sandbox used: the largest count (the cgroup's, or without one the
    /// process tree's, covers every process, also those still unreaped; the reaped processes'
    /// is the one `RLIMIT_CPU` acts on).
    pub fn cpu(&self) -> Duration {
        self.usage.cpu.max(self.reaped_cpu).max(self.tree_cpu)
    }
}

/// Which limit explains the end of the run. Causes before symptoms: a fork bomb ends in a
/// wall-clock kill, but the report says `pids-limit`. A limit that was only brushed (pids
/// refused once, and handled) with a clean exit is `ok`, and listed in `limits_hit`.
pub fn classify(f: &Facts, limits: &Limits) -> RunEnd {
    let cpu = f.cpu();
    let clean_exit = f.ended == Some(Ended::Exited(0));
    RunEnd::Finished(if f.usage.oom_kills > 0 {
        Outcome::MemoryLimit
    } else if f.usage.pids_limit_hits > 0 && !clean_exit {
        Outcome::PidsLimit
    } else if f.killed_for_output {
        Outcome::OutputLimit
    } else if f.killed_for_cpu || cpu >= limits.cpu_time {
        // Over budget is over budget, even if it ended between two of the supervisor's checks,
        // or by the per-process `RLIMIT_CPU` (SIGXCPU, then SIGKILL) before either count.
        Outcome::TimeoutCpu
    } else if f.killed_for_wall {
        Outcome::TimeoutWall
    } else {
        match f.ended {
            Some(Ended::Exited(0)) => Outcome::Ok,
            Some(Ended::Exited(_)) => Outcome::ExitNonzero,
            Some(Ended::Signaled(s)) if s == libc::SIGSYS => Outcome::SeccompViolation,
            Some(Ended::Signaled(_)) => Outcome::Signaled,
            // init died without telling us how the program ended
            None => {
                return RunEnd::Fault(Fault::text(
                    HostStep::Init,
                    "the sandbox's init ended without reporting the program's status",
                ))
            }
        }
    })
}

/// The report's `sandbox_error`: a [`Fault`] as text.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxFault {
    /// The step that failed, as named in `plan.rs` (`bind /usr`, `setresuid`, `cgroup`...).
    pub step: String,
    pub message: String,
}

impl From<&Fault> for SandboxFault {
    fn from(f: &Fault) -> SandboxFault {
        SandboxFault { step: f.step.to_string(), message: f.message() }
    }
}

/// Whose doing an end was, so that nobody is blamed for another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// A limit of the policy: the sandbox stopped the program.
    Limit,
    /// The program itself: it crashed or exited with an error.
    Program,
    /// The caller ended it (a signal relayed from jupyter_client or Ctrl-C).
    Caller,
    /// Ours or the host's: never the student's.
    SandboxFault,
}

/// An end in words: `words` completes "the code ..." (`used more than 1 GiB of memory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub cause: Cause,
    pub words: String,
}

impl Explanation {
    /// One sentence: "the code used more than 1 GiB of memory; the sandbox stopped it".
    /// `place` ("in cell 4 of problem1") goes after the words when known.
    pub fn sentence(&self, place: Option<&str>) -> String {
        let at = place.map(|p| format!(" {p}")).unwrap_or_default();
        match self.cause {
            Cause::Limit => format!("the code {}{at}; the sandbox stopped it", self.words),
            Cause::Program => format!("the code {}{at}", self.words),
            Cause::Caller => format!("the kernel {}{at}", self.words),
            Cause::SandboxFault => {
                format!("sandbox fault{at}: {}; not the student's doing (tell the course's admin)", self.words)
            }
        }
    }
}

/// Bytes as people say them: `1 GiB`, `1.5 GiB`, `512 MiB`, `4096 bytes`.
pub fn human_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift {
            let v = bytes as f64 / (1u64 << shift) as f64;
            return if (v - v.round()).abs() < 0.05 {
                format!("{} {unit}", v.round())
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes} bytes")
}

/// A duration as people say it: `60 seconds`, `5 minutes`, `1.5 hours`, `250 ms`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    let (v, unit) = match s {
        s if s < 1.0 => return format!("{} ms", d.as_millis()),
        s if s < 120.0 => (s, "seconds"),
        s if s < 7200.0 => (s / 60.0, "minutes"),
        s => (s / 3600.0, "hours"),
    };
    if (v - v.round()).abs() < 0.05 {
        format!("{} {unit}", v.round())
    } else {
        format!("{v:.1} {unit}")
    }
}

/// What a status means, in words, with the limit it ran into.
/// A signal's end the caller's side caused, not the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByCaller {
    /// The client relayed the signal, or asked the kernel to shut down.
    Request,
    /// The client ended and the supervisor stopped the sandbox.
    ClientGone,
    /// The program ignored the caller's SIGTERM; the supervisor killed it after the grace.
    Overdue,
}

pub fn explain(
    end: &RunEnd,
    limits: &Limits,
    signal: Option<&str>,
    exit_code: Option<i32>,
    by_caller: Option<ByCaller>,
) -> Option<Explanation> {
    let outcome = match end {
        RunEnd::Finished(o) => *o,
        RunEnd::Fault(f) => return Some(Explanation { cause: Cause::SandboxFault, words: f.to_string() }),
    };
    let (cause, words) = match outcome {
        Outcome::Ok => return None,
        Outcome::MemoryLimit => (Cause::Limit, format!("used more than {} of memory", human_size(limits.memory))),
        Outcome::TimeoutCpu => {
            (Cause::Limit, format!("used more than {} of CPU time", human_duration(limits.cpu_time)))
        }
        Outcome::TimeoutWall => (Cause::Limit, format!("ran longer than {}", human_duration(limits.wall_time))),
        Outcome::PidsLimit => {
            (Cause::Limit, format!("started more than {} processes and threads at once", limits.pids))
        }
        Outcome::SeccompViolation => (Cause::Limit, "made a system call the sandbox does not allow".to_string()),
        Outcome::OutputLimit => (Cause::Limit, "printed more output than the limit allows".to_string()),
        Outcome::Signaled if by_caller == Some(ByCaller::Request) => {
            (Cause::Caller, format!("ended at its client's request ({})", signal.unwrap_or("a signal")))
        }
        Outcome::Signaled if by_caller == Some(ByCaller::Overdue) => (
            Cause::Caller,
            format!(
                "ignored its client's SIGTERM and was killed {} ms later",
                crate::supervisor::END_GRACE.as_millis()
            ),
        ),
        Outcome::Signaled if by_caller == Some(ByCaller::ClientGone) => {
            (Cause::Caller, format!("was stopped because its client ended ({})", signal.unwrap_or("a signal")))
        }
        Outcome::Signaled => (Cause::Program, format!("crashed ({})", signal.unwrap_or("a signal"))),
        Outcome::ExitNonzero => (Cause::Program, format!("exited with code {}", exit_code.unwrap_or(-1))),
    };
    Some(Explanation { cause, words })
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SandboxInfo {
    pub policy: String,
    pub slot: Option<u32>,
    pub uid: Option<u32>,
    pub cgroup: Option<&'static str>,
    pub landlock: String,
    pub seccomp: String,
    /// Privileged or rootless ([`crate::userns`]), once the host side chose.
    pub mode: Option<crate::userns::Mode>,
    /// The policy's limits this run did not enforce (rootless with best-effort limits).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_enforced: Vec<&'static str>,
}

/// Serialized by [`Wire`], which puts `status` and `sandbox_error` where they always were.
#[derive(Debug, Clone)]
pub struct Report {
    pub schema: &'static str,
    /// `status` and `sandbox_error` in the JSON.
    pub end: RunEnd,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub wall_time: Duration,
    pub cpu_time: Duration,
    pub peak_memory: Option<u64>,
    /// Bytes of output: stdout and stderr, and for a kernel its iopub channel (all counted,
    /// also past the limit, where they were dropped). Absent for `run --tty`.
    pub output_bytes: Option<u64>,
    pub limits: Limits,
    /// Limits the run ran into, even when they are not the reason it ended.
    pub limits_hit: Vec<&'static str>,
    /// Why the supervisor ended the sandbox, if it did (`wall_time`, `cpu_time`, `output`,
    /// `client-gone`: a kernel's client ended first; `caller`: the program outlived the
    /// caller's SIGTERM by [`crate::supervisor::END_GRACE`]). A SIGKILL with none of these came from
    /// the kernel (the OOM killer, `RLIMIT_CPU`) or the program itself.
    pub stopped_by: Option<&'static str>,
    /// Signals the caller sent that were passed on to the program (a `signaled` status with
    /// one of these was the caller's doing: Ctrl-C, or jupyter_client ending a kernel).
    pub relayed_signals: Vec<String>,
    /// A kernel's client had asked it to shut down before it ended: a kernel that then dies
    /// by a signal (ipykernel 7.4 aborting in its own shutdown) ended as asked.
    pub shutdown_requested: bool,
    /// The end in words, for the people reading nbgrader's log and formgrader's modal.
    pub explanation: Option<Explanation>,
    pub sandbox: SandboxInfo,
    /// For `isolate-grade kernel`: its connection and output.
    pub kernel: Option<KernelInfo>,
}

/// The report's JSON (schema `isolate-grade.run/1`), field by field in its order.
#[derive(Serialize)]
struct Wire<'a> {
    schema: &'static str,
    status: Status,
    exit_code: Option<i32>,
    signal: &'a Option<String>,
    #[serde(serialize_with = "secs")]
    wall_time: Duration,
    #[serde(serialize_with = "secs")]
    cpu_time: Duration,
    peak_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_bytes: Option<u64>,
    limits: &'a Limits,
    limits_hit: &'a [&'static str],
    stopped_by: Option<&'static str>,
    relayed_signals: &'a [String],
    shutdown_requested: bool,
    sandbox_error: Option<SandboxFault>,
    explanation: &'a Option<Explanation>,
    sandbox: &'a SandboxInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<&'a KernelInfo>,
}

impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            schema: self.schema,
            status: self.end.status(),
            exit_code: self.exit_code,
            signal: &self.signal,
            wall_time: self.wall_time,
            cpu_time: self.cpu_time,
            peak_memory: self.peak_memory,
            output_bytes: self.output_bytes,
            limits: &self.limits,
            limits_hit: &self.limits_hit,
            stopped_by: self.stopped_by,
            relayed_signals: &self.relayed_signals,
            shutdown_requested: self.shutdown_requested,
            sandbox_error: self.end.fault().map(SandboxFault::from),
            explanation: &self.explanation,
            sandbox: &self.sandbox,
            kernel: self.kernel.as_ref(),
        }
        .serialize(s)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelInfo {
    /// The kernel's id: the connection file's name without `.json`.
    pub id: String,
    pub connection_file: String,
    /// Its working directory (nbgrader: `autograded/<student>/<assignment>`).
    pub workdir: String,
    pub output_limit: u64,
    /// The files the kernel made in its working directory, copied out when it ended.
    pub copied_out: Option<crate::copyout::CopiedOut>,
}

impl Report {
    pub fn from_facts(f: &Facts, limits: &Limits, sandbox: SandboxInfo) -> Report {
        let end = classify(f, limits);
        let mut hit = Vec::new();
        if f.usage.oom_kills > 0 {
            hit.push("memory");
        }
        if f.usage.pids_limit_hits > 0 {
            hit.push("pids");
        }
        if f.killed_for_cpu || f.cpu() >= limits.cpu_time {
            hit.push("cpu_time");
        }
        if f.killed_for_wall {
            hit.push("wall_time");
        }
        if f.killed_for_output {
            hit.push("output");
        }
        let mut r = Report {
            schema: SCHEMA,
            end,
            exit_code: match f.ended {
                Some(Ended::Exited(c)) => Some(c),
                _ => None,
            },
            signal: match f.ended {
                Some(Ended::Signaled(s)) => Some(signal_name(s)),
                _ => None,
            },
            wall_time: f.wall,
            cpu_time: f.cpu(),
            peak_memory: f.usage.peak_memory,
            output_bytes: f.output_bytes,
            limits: limits.clone(),
            limits_hit: hit,
            stopped_by: if f.killed_for_cpu {
                Some("cpu_time")
            } else if f.killed_for_wall {
                Some("wall_time")
            } else if f.client_gone {
                Some("client-gone")
            } else if f.ended_by_caller {
                Some("caller")
            } else if f.killed_for_output && f.ended == Some(Ended::Signaled(libc::SIGKILL)) {
                Some("output")
            } else {
                None
            },
            relayed_signals: f.relayed.iter().map(|&s| signal_name(s)).collect(),
            shutdown_requested: f.shutdown_requested,
            explanation: None,
            sandbox,
            kernel: None,
        };
        r.explanation = explain(
            &r.end,
            limits,
            r.signal.as_deref(),
            r.exit_code,
            if f.ended_by_caller {
                Some(ByCaller::Overdue)
            } else if r.signal.as_ref().is_some_and(|s| r.relayed_signals.contains(s)) || r.shutdown_requested {
                Some(ByCaller::Request)
            } else if f.client_gone {
                Some(ByCaller::ClientGone)
            } else {
                None
            },
        );
        r
    }

    pub fn fault(fault: Fault, limits: &Limits, sandbox: SandboxInfo, wall: Duration) -> Report {
        Report {
            schema: SCHEMA,
            explanation: Some(Explanation { cause: Cause::SandboxFault, words: fault.to_string() }),
            end: RunEnd::Fault(fault),
            exit_code: None,
            signal: None,
            wall_time: wall,
            cpu_time: Duration::ZERO,
            peak_memory: None,
            output_bytes: None,
            limits: limits.clone(),
            limits_hit: vec![],
            stopped_by: None,
            relayed_signals: vec![],
            shutdown_requested: false,
            sandbox,
            kernel: None,
        }
    }

    pub fn status(&self) -> Status {
        self.end.status()
    }

    /// The fault, when the run failed with one (`sandbox_error`).
    pub fn sandbox_error(&self) -> Option<&Fault> {
        self.end.fault()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or_else(|_| sig.to_string())
}

/// Durations as seconds with millisecond precision.
pub fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        crate::policy::Policy::builtin("default").unwrap().limits
    }

    fn facts(ended: Option<Ended>) -> Facts {
        Facts { ended, ..Default::default() }
    }

    #[test]
    fn sizes_and_durations_are_said_as_people_say_them() {
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(256 << 20), "256 MiB");
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(1000), "1000 bytes");
        assert_eq!(human_duration(Duration::from_secs(60)), "60 seconds");
        assert_eq!(human_duration(Duration::from_secs(300)), "5 minutes");
        assert_eq!(human_duration(Duration::from_secs(5400)), "90 minutes");
        assert_eq!(human_duration(Duration::from_secs(9000)), "2.5 hours");
        assert_eq!(human_duration(Duration::from_millis(250)), "250 ms");
    }

    #[test]
    fn every_end_is_explained_and_blames_the_right_one() {
        let l = limits();
        let mut oom = facts(Some(Ended::Signaled(libc::SIGKILL)));
        oom.usage.oom_kills = 1;
        let why = Report::from_facts(&oom, &l, SandboxInfo::default()).explanation.unwrap();
        assert_eq!(why.cause, Cause::Limit);
        assert_eq!(
            why.sentence(Some("in cell 4 of problem1")),
            "the code used more than 1 GiB of memory in cell 4 of problem1; the sandbox stopped it"
        );
        let cpu = Facts { killed_for_cpu: true, ..facts(Some(Ended::Signaled(libc::SIGKILL))) };
        let why = Report::from_facts(&cpu, &l, SandboxInfo::default()).explanation.unwrap();
        assert_eq!(why.words, "used more than 60 seconds of CPU time");
        let segv = Report::from_facts(&facts(Some(Ended::Signaled(libc::SIGSEGV))), &l, SandboxInfo::default());
        assert_eq!(segv.explanation.unwrap().sentence(None), "the code crashed (SIGSEGV)");
        // the client's SIGTERM is the client's doing, not the student's
        let term = Facts { relayed: vec![libc::SIGTERM], ..facts(Some(Ended::Signaled(libc::SIGTERM))) };
        assert_eq!(Report::from_facts(&term, &l, SandboxInfo::default()).explanation.unwrap().cause, Cause::Caller);
        assert!(Report::from_facts(&facts(Some(Ended::Exited(0))), &l, SandboxInfo::default()).explanation.is_none());
        // a fault never blames the student
        let fault = Report::fault(
            Fault::errno(HostStep::Cgroup, nix::errno::Errno::EBUSY),
            &l,
            SandboxInfo::default(),
            Duration::ZERO,
        );
        let said = fault.explanation.unwrap().sentence(Some("in cell 2 of p"));
        assert!(said.starts_with("sandbox fault in cell 2 of p: cgroup: EBUSY"), "{said}");
        assert!(said.contains("not the student's doing") && !said.contains("the code"), "{said}");
    }

    #[test]
    fn program_outcomes() {
        let l = limits();
        assert_eq!(classify(&facts(Some(Ended::Exited(0))), &l).status(), Status::Ok);
        assert_eq!(classify(&facts(Some(Ended::Exited(3))), &l).status(), Status::ExitNonzero);
        assert_eq!(classify(&facts(Some(Ended::Signaled(libc::SIGSEGV))), &l).status(), Status::Signaled);
        assert_eq!(classify(&facts(Some(Ended::Signaled(libc::SIGSYS))), &l).status(), Status::SeccompViolation);
        assert_eq!(classify(&facts(None), &l).status(), Status::SandboxError);
    }

    #[test]
    fn causes_before_symptoms() {
        let l = limits();
        let mut f = facts(Some(Ended::Signaled(libc::SIGKILL)));
        f.killed_for_wall = true;
        assert_eq!(classify(&f, &l).status(), Status::TimeoutWall);
        assert_eq!(Report::from_facts(&f, &l, SandboxInfo::default()).stopped_by, Some("wall_time"));
        let gone = Facts { client_gone: true, ..facts(Some(Ended::Signaled(libc::SIGKILL))) };
        let r = Report::from_facts(&gone, &l, SandboxInfo::default());
        assert_eq!(r.stopped_by, Some("client-gone"));
        // the client's end, not the program's crash
        let e = r.explanation.unwrap();
        assert_eq!((e.cause, e.words.as_str()), (Cause::Caller, "was stopped because its client ended (SIGKILL)"));
        // a program that ignored the caller's SIGTERM: the caller's end, not a crash
        let overdue = Facts {
            relayed: vec![libc::SIGTERM],
            ended_by_caller: true,
            ..facts(Some(Ended::Signaled(libc::SIGKILL)))
        };
        let r = Report::from_facts(&overdue, &l, SandboxInfo::default());
        assert_eq!((r.end.status(), r.stopped_by), (Status::Signaled, Some("caller")));
        let e = r.explanation.unwrap();
        assert_eq!(
            (e.cause, e.words.as_str()),
            (Cause::Caller, "ignored its client's SIGTERM and was killed 1000 ms later")
        );
        f.usage.pids_limit_hits = 100;
        assert_eq!(classify(&f, &l).status(), Status::PidsLimit);
        f.usage.oom_kills = 1;
        assert_eq!(classify(&f, &l).status(), Status::MemoryLimit);
        // a kernel stopped for its output
        let mut f = facts(Some(Ended::Signaled(libc::SIGKILL)));
        f.killed_for_output = true;
        assert_eq!(classify(&f, &l).status(), Status::OutputLimit);
        let mut f = facts(Some(Ended::Signaled(libc::SIGKILL)));
        f.killed_for_cpu = true;
        f.killed_for_wall = true;
        assert_eq!(classify(&f, &l).status(), Status::TimeoutCpu);
        // a program that hit the pids limit but handled it and exited cleanly is ok
        let mut f = facts(Some(Ended::Exited(0)));
        f.usage.pids_limit_hits = 1;
        assert_eq!(classify(&f, &l).status(), Status::Ok);
        let r = Report::from_facts(&f, &l, SandboxInfo::default());
        assert_eq!(r.limits_hit, ["pids"]);
        // RLIMIT_CPU fired (SIGXCPU, or its SIGKILL) before the cgroup's count showed the limit:
        // what the processes used decides, not which count was read first
        for sig in [libc::SIGXCPU, libc::SIGKILL] {
            let mut f = facts(Some(Ended::Signaled(sig)));
            f.usage.cpu = l.cpu_time.mul_f64(0.95);
            f.reaped_cpu = l.cpu_time + Duration::from_secs(1);
            assert_eq!(classify(&f, &l).status(), Status::TimeoutCpu);
            let r = Report::from_facts(&f, &l, SandboxInfo::default());
            assert_eq!((r.limits_hit.as_slice(), r.cpu_time), (&["cpu_time"][..], f.reaped_cpu));
        }
        // a program that sent itself SIGXCPU well inside its budget was just signaled
        let mut f = facts(Some(Ended::Signaled(libc::SIGXCPU)));
        f.reaped_cpu = Duration::from_secs(1);
        assert_eq!(classify(&f, &l).status(), Status::Signaled);
        // but CPU over the limit is a timeout even if the program exited cleanly in time
        let mut f = facts(Some(Ended::Exited(0)));
        f.usage.cpu = l.cpu_time;
        assert_eq!(classify(&f, &l).status(), Status::TimeoutCpu);
    }

    #[test]
    fn exit_codes_are_distinct_and_zero_only_for_ok() {
        use Status::*;
        let all = [
            Ok,
            ExitNonzero,
            Signaled,
            TimeoutWall,
            TimeoutCpu,
            MemoryLimit,
            PidsLimit,
            SeccompViolation,
            SandboxError,
        ];
        let mut codes: Vec<u8> = all.iter().map(|s| s.exit_code()).collect();
        codes.push(EXIT_USAGE);
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
        assert!(all.iter().all(|s| (s.exit_code() == 0) == (*s == Ok)));
        for s in all {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    /// A fault's report: `status` and `sandbox_error` as before the fault was a type, and the
    /// keys in the order they always had.
    #[test]
    fn fault_report_json_is_as_it_was() {
        let fault = Fault::new(
            crate::plan::Step::Bind("/usr".into()),
            &crate::sys::SysError::new("move_mount", "/usr", nix::errno::Errno::EPERM),
        );
        let r = Report::fault(fault, &limits(), SandboxInfo::default(), Duration::from_millis(5));
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["status"], "sandbox-error");
        assert_eq!(v["sandbox_error"]["step"], "bind /usr");
        assert_eq!(v["sandbox_error"]["message"], format!("move_mount(/usr): {}", nix::errno::Errno::EPERM).as_str());
        assert_eq!(v["sandbox_error"].as_object().unwrap().len(), 2);
        assert_eq!(
            v["explanation"]["words"],
            format!("bind /usr: {}", v["sandbox_error"]["message"].as_str().unwrap())
        );
        assert_eq!(r.end.exit().code(), 3);
        let keys = [
            "schema",
            "status",
            "exit_code",
            "signal",
            "wall_time",
            "cpu_time",
            "peak_memory",
            "limits",
            "limits_hit",
            "stopped_by",
            "relayed_signals",
            "shutdown_requested",
            "sandbox_error",
            "explanation",
            "sandbox",
        ];
        let at: Vec<usize> = keys.iter().map(|k| json.find(&format!("\n  \"{k}\":")).expect(k)).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert_eq!(v.as_object().unwrap().len(), keys.len(), "no output_bytes or kernel when absent");
        // init that died without a word is a fault too
        let r = Report::from_facts(&facts(None), &limits(), SandboxInfo::default());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["sandbox_error"]["step"], "init");
        assert_eq!(v["sandbox_error"]["message"], "the sandbox's init ended without reporting the program's status");
    }

    #[test]
    fn report_json_shape() {
        let mut f = facts(Some(Ended::Signaled(9)));
        f.wall = Duration::from_millis(1234);
        let r = Report::from_facts(&f, &limits(), SandboxInfo { policy: "default".into(), ..Default::default() });
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["status"], "signaled");
        assert_eq!(v["signal"], "SIGKILL");
        assert_eq!(v["wall_time"], 1.234);
        assert_eq!(v["limits"]["memory"], 1u64 << 30);
        assert_eq!(v["limits"]["wall_time"], 120.0);
        assert!(v["sandbox_error"].is_null());
        assert!(v["stopped_by"].is_null(), "a SIGKILL the supervisor did not send");
    }
}
